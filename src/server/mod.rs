//! Wiring: configuration -> storage node -> accounts, mail engine ->
//! LMTP and IMAP listeners; the admin socket and metrics; signals and
//! graceful shutdown.
//!
//! Nothing here implements a protocol or touches Garage directly; it only
//! starts the layers below in order and stops them in reverse.

pub mod admin;
mod metrics;

use std::sync::Arc;

use crate::accounts::{Accounts, AccountsError, UsersFile};
use crate::config::Config;
use crate::crypto::KdfParams;
use crate::lmtp::{Lmtp, LmtpLimits};
use crate::mail::MailService;
use crate::storage::{Node, StorageError};

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Accounts(#[from] AccountsError),
    #[error("admin socket {path}: {source}")]
    Admin { path: String, source: std::io::Error },
    #[error("metrics listener {addr}: {source}")]
    Metrics { addr: String, source: std::io::Error },
    #[error("LMTP listener {addr}: {source}")]
    Lmtp { addr: String, source: std::io::Error },
    #[error("IMAP listener {addr}: {source}")]
    Imap { addr: String, source: std::io::Error },
    #[error("TLS: {0}")]
    Tls(String),
    #[error("signal handling: {0}")]
    Signal(std::io::Error),
}

/// A running appliance node; `stop` shuts it down cleanly.
pub struct Server {
    pub node: Arc<Node>,
    /// Present when the configuration names a users file.
    pub accounts: Option<Arc<Accounts>>,
    /// The mailbox engine on this node.
    pub mail: Arc<MailService>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    admin_socket: std::path::PathBuf,
}

impl Server {
    /// Starts every layer of one node from its configuration.
    pub async fn start(config: &Config) -> Result<Server, ServerError> {
        let node = Arc::new(Node::start(config).await?);
        let mut tasks = vec![];
        let accounts = match &config.users.file {
            Some(path) => {
                let users = Arc::new(UsersFile::open(path)?);
                tasks.push(users.spawn_watcher(std::time::Duration::from_secs(2)));
                Some(Arc::new(Accounts::new(users, node.store(), KdfParams::default())))
            }
            None => None,
        };
        // Node slots are the layout's order: every node numbers them alike.
        let secret = config.rpc_secret().map_err(|e| StorageError::Setup(e.to_string()))?;
        let slots: Vec<_> = config.cluster.nodes.iter().map(|n| crate::storage::node_id(&secret, &n.name)).collect();
        let slot = config.cluster.nodes.iter().position(|n| n.name == config.node.name).unwrap_or(0) as u8;
        let mail = MailService::new(node.store(), node.peer_rpc().clone(), slots, slot)?;
        // Unlocked keys leave memory once unused: the login cache after its
        // grace time, mailbox engines (which hold keys) once nobody uses them.
        let (weak_accounts, weak_mail) = (accounts.as_ref().map(Arc::downgrade), Arc::downgrade(&mail));
        tasks.push(tokio::spawn(async move {
            loop {
                tokio::time::sleep(std::time::Duration::from_secs(30)).await;
                let Some(mail) = weak_mail.upgrade() else { return };
                mail.sweep();
                if let Some(a) = weak_accounts.as_ref().and_then(|w| w.upgrade()) {
                    a.sweep_cache();
                }
            }
        }));
        if let (Some(addr), Some(accounts)) = (config.listen.lmtp, &accounts) {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|source| ServerError::Lmtp { addr: addr.to_string(), source })?;
            let lmtp = Arc::new(Lmtp {
                accounts: accounts.clone(),
                mail: mail.clone(),
                store: node.store(),
                hostname: config.lmtp.hostname.clone().unwrap_or_else(|| config.node.name.clone()),
                limits: LmtpLimits {
                    max_message: crate::config::parse_capacity(&config.lmtp.max_message_size).unwrap_or(50 << 20),
                    max_connections: config.lmtp.max_connections,
                    idle_timeout: std::time::Duration::from_secs(config.lmtp.idle_timeout_secs),
                    ..LmtpLimits::default()
                },
            });
            tasks.push(lmtp.serve(listener));
            log::info!("LMTP on {addr}");
        }
        if let Some(accounts) = &accounts {
            tasks.extend(start_imap(config, accounts, &mail, &node).await?);
        }
        let admin_socket = config.admin_socket();
        tasks.push(admin::serve(admin_socket.clone(), node.clone(), accounts.clone(), mail.clone()).await.map_err(|source| {
            ServerError::Admin {
                path: admin_socket.display().to_string(),
                source,
            }
        })?);
        if let Some(addr) = config.listen.metrics {
            tasks.push(metrics::serve(addr, node.clone()).await.map_err(|source| ServerError::Metrics {
                addr: addr.to_string(),
                source,
            })?);
        }
        log::info!(
            "node `{}` (id {}) in region `{}`: RPC on {}, admin socket {}{}",
            config.node.name,
            &node.id()[..16],
            config.node.region,
            config.rpc.bind,
            admin_socket.display(),
            config.listen.metrics.map(|a| format!(", metrics on http://{a}/metrics")).unwrap_or_default(),
        );
        Ok(Server { node, accounts, mail, tasks, admin_socket })
    }

    /// Stops listeners, then the storage node.
    pub async fn stop(self) {
        for t in &self.tasks {
            t.abort();
        }
        drop(self.mail);
        let _ = std::fs::remove_file(&self.admin_socket);
        drop(self.tasks);
        self.node.shutdown().await;
    }
}

/// Runs a node until SIGINT or SIGTERM, then shuts it down cleanly.
pub async fn run(config: Config) -> Result<(), ServerError> {
    let server = Server::start(&config).await?;
    serve_until_signal(server).await
}

/// Keeps a started node running until SIGINT or SIGTERM (SIGHUP rereads
/// the users file), then shuts it down cleanly.
pub async fn serve_until_signal(server: Server) -> Result<(), ServerError> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut sigint = signal(SignalKind::interrupt()).map_err(ServerError::Signal)?;
    let mut sigterm = signal(SignalKind::terminate()).map_err(ServerError::Signal)?;
    let mut sighup = signal(SignalKind::hangup()).map_err(ServerError::Signal)?;
    loop {
        tokio::select! {
            _ = sigint.recv() => { log::info!("SIGINT: shutting down"); break }
            _ = sigterm.recv() => { log::info!("SIGTERM: shutting down"); break }
            _ = sighup.recv() => {
                match &server.accounts {
                    Some(a) => match a.users_file().reload() {
                        Ok(()) => log::info!("SIGHUP: users file reloaded"),
                        Err(e) => log::error!("SIGHUP: {e}; keeping the previous users"),
                    },
                    None => log::info!("SIGHUP: no users file to reload"),
                }
            }
        }
    }
    server.stop().await;
    log::info!("stopped");
    Ok(())
}

/// The IMAP listeners of the configuration (none, STARTTLS, IMAPS, both).
async fn start_imap(
    config: &Config,
    accounts: &Arc<Accounts>,
    mail: &Arc<MailService>,
    node: &Arc<Node>,
) -> Result<Vec<tokio::task::JoinHandle<()>>, ServerError> {
    if config.listen.imap.is_none() && config.listen.imaps.is_none() {
        return Ok(vec![]);
    }
    let tls = match &config.tls {
        Some(t) => Some(crate::imap::load_tls(&t.cert, &t.key).map_err(|e| ServerError::Tls(e.to_string()))?),
        None => None,
    };
    let loopback = config.listen.imap.is_some_and(|a| a.ip().is_loopback());
    let imap = Arc::new(crate::imap::Imap {
        accounts: accounts.clone(),
        mail: mail.clone(),
        store: node.store(),
        tls,
        plaintext_auth: config.imap.allow_plaintext_auth || loopback,
        limits: crate::imap::ImapLimits {
            max_message: crate::config::parse_capacity(&config.imap.max_message_size).map_or(50 << 20, |n| n as u32),
            max_connections: config.imap.max_connections,
            ..Default::default()
        },
    });
    let mut tasks = vec![];
    for (addr, implicit) in [(config.listen.imap, false), (config.listen.imaps, true)] {
        let Some(addr) = addr else { continue };
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| ServerError::Imap { addr: addr.to_string(), source })?;
        tasks.push(imap.clone().serve(listener, implicit));
        log::info!("IMAP{} on {addr}", if implicit { "S" } else { "" });
    }
    Ok(tasks)
}
