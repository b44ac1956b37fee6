//! Wiring: configuration -> storage node -> accounts, mail engine ->
//! LMTP and IMAP listeners; the admin socket and metrics; signals and
//! graceful shutdown.
//!
//! Nothing here implements a protocol or touches Garage directly; it only
//! starts the layers below in order and stops them in reverse.

pub mod admin;
mod metrics;
pub mod readiness;

use std::sync::Arc;

use crate::accounts::{Accounts, AccountsError, ClusterDirectory, DeclaredUser, DirectoryKeys, UsersFile};
use crate::config::{Config, ConfigError};
use crate::crypto::KdfParams;
use crate::lmtp::{Lmtp, LmtpLimits};
use crate::mail::MailService;
use crate::storage::{Node, StorageError};

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Config(#[from] ConfigError),
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
    pub accounts: Arc<Accounts>,
    /// The mailbox engine on this node.
    pub mail: Arc<MailService>,
    /// The TLS certificate of the IMAP listeners (reloaded on SIGHUP).
    pub certificate: Option<Arc<crate::imap::Certificate>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    admin_socket: std::path::PathBuf,
}

impl Server {
    /// Starts every layer of one node from its configuration.
    pub async fn start(config: &Config) -> Result<Server, ServerError> {
        let declared = declared_users(config)?;
        let node = Arc::new(Node::start(config).await?);
        let mut tasks = vec![];
        let secret = config.rpc_secret().map_err(|e| StorageError::Setup(e.to_string()))?;
        let directory = ClusterDirectory::new(node.store(), DirectoryKeys::from_secret(&secret), &config.node.name);
        directory.attach(node.peer_rpc())?;
        let accounts = Arc::new(Accounts::new(directory, node.store(), KdfParams::default()));
        let probe = readiness::ReadinessProbe::register(node.peer_rpc(), &accounts)?;
        tasks.push(tokio::spawn(bring_up(node.clone(), accounts.clone(), config.users.import_file.clone(), declared)));
        // Node slots are the layout's order: every node numbers them alike.
        let slots: Vec<_> = config.cluster.nodes.iter().map(|n| crate::storage::node_id(&secret, &n.name)).collect();
        let slot = config.cluster.nodes.iter().position(|n| n.name == config.node.name).unwrap_or(0) as u8;
        let mail = MailService::new(node.store(), node.peer_rpc().clone(), slots, slot)?;
        // Unlocked keys leave memory once unused: the login cache after its
        // grace time, mailbox engines (which hold keys) once nobody uses them.
        let (weak_accounts, weak_mail) = (Some(Arc::downgrade(&accounts)), Arc::downgrade(&mail));
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
        // Listeners open now (a port in use fails the start) but answer
        // "try again later" until the node is ready (`bring_up`).
        if let Some(addr) = config.listen.lmtp {
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
        let (imap_tasks, certificate) = start_imap(config, &accounts, &mail, &node).await?;
        tasks.extend(imap_tasks);
        let admin_socket = config.admin_socket();
        tasks.push(admin::serve(admin_socket.clone(), node.clone(), accounts.clone(), probe, mail.clone()).await.map_err(|source| {
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
        Ok(Server { node, accounts, mail, certificate, tasks, admin_socket })
    }

    /// Waits until the node answers for its users (storage ready, the
    /// directory loaded, declared users provisioned), at most `deadline`.
    pub async fn wait_ready(&self, deadline: std::time::Duration) -> Result<(), ServerError> {
        let until = tokio::time::Instant::now() + deadline;
        while !self.accounts.is_ready() {
            if tokio::time::Instant::now() > until {
                return Err(ServerError::Storage(StorageError::Unavailable(format!(
                    "node not ready after {deadline:?} (storage or user directory unreachable)"
                ))));
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        Ok(())
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

/// Keeps a started node running until SIGINT or SIGTERM (SIGHUP reloads
/// the TLS certificate and rereads the user directory), then shuts it down
/// cleanly.
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
                // A renewed certificate: new handshakes get it, sessions
                // stay up.
                if let Some(cert) = &server.certificate {
                    match cert.reload() {
                        Ok(()) => log::info!("SIGHUP: TLS certificate reloaded"),
                        Err(e) => log::error!("SIGHUP: {e}; keeping the certificate in use"),
                    }
                }
                // The directory follows the cluster by itself; a reload
                // only re-reads it in full.
                match server.accounts.cluster_directory().load().await {
                    Ok(n) => log::info!("SIGHUP: user directory reloaded ({n} record(s))"),
                    Err(e) => log::error!("SIGHUP: reloading the user directory: {e}"),
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
) -> Result<(Vec<tokio::task::JoinHandle<()>>, Option<Arc<crate::imap::Certificate>>), ServerError> {
    if config.listen.imap.is_none() && config.listen.imaps.is_none() {
        return Ok((vec![], None));
    }
    let (tls, certificate) = match &config.tls {
        Some(t) => {
            let (cfg, cert) = crate::imap::load_tls(&t.cert, &t.key).map_err(|e| ServerError::Tls(e.to_string()))?;
            (Some(cfg), Some(cert))
        }
        None => (None, None),
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
    Ok((tasks, certificate))
}

/// The declared users of the configuration, checked with the accounts
/// layer's rules (errors name the key).
fn declared_users(config: &Config) -> Result<Vec<(DeclaredUser, std::path::PathBuf)>, ConfigError> {
    let mut out = vec![];
    for (i, d) in config.users.declare.iter().enumerate() {
        let key = |field: &str| format!("users.declare[{i}].{field}");
        crate::accounts::users_file::validate_login(&d.login).map_err(|r| config.invalid(&key("login"), r))?;
        for (j, a) in d.addresses.iter().enumerate() {
            if crate::accounts::directory::normalize_address(a).is_none() {
                return Err(config.invalid(&key(&format!("addresses[{j}]")), format!("`{a}` is not local@domain")));
            }
        }
        let user = DeclaredUser {
            login: d.login.clone(),
            addresses: d.addresses.clone(),
            home_region: d.home_region.clone(),
            quota: d.quota.clone(),
            initial_password: String::new(),
        };
        out.push((user, d.initial_password_file.clone()));
    }
    Ok(out)
}

/// Reads a declared user's initial password file (its first line).
fn read_password_file(path: &std::path::Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let line = text.lines().next().unwrap_or("").trim_end_matches('\r').to_string();
    if line.is_empty() {
        return Err(format!("{}: empty", path.display()));
    }
    Ok(line)
}

/// Brings a node to readiness: storage ready, the directory loaded (and
/// then followed), an old users file imported, declared users created.
/// Transient failures (no quorum yet) are retried until they pass.
async fn bring_up(
    node: Arc<Node>,
    accounts: Arc<Accounts>,
    import: Option<std::path::PathBuf>,
    declared: Vec<(DeclaredUser, std::path::PathBuf)>,
) {
    use std::time::Duration;
    let dir = accounts.cluster_directory().clone();
    let mut complained = false;
    loop {
        let attempt = async {
            node.wait_ready(Duration::from_secs(10)).await?;
            dir.load().await
        };
        match attempt.await {
            Ok(n) => {
                log::info!("user directory loaded: {} user(s) ({n} record(s))", dir.view().users.len());
                break;
            }
            Err(e) => {
                if !complained {
                    log::warn!("not ready yet (LMTP and IMAP answer \"try again later\"): {e}");
                    complained = true;
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    }
    let follow = dir.follow();
    if let Some(path) = import {
        loop {
            let result = match UsersFile::read(&path) {
                Ok(file) => dir.import(&file).await,
                Err(e) => Err(e),
            };
            match result {
                Ok(None) => {
                    log::info!("users file {} was imported before; it is no longer read (remove `users.import_file`)", path.display());
                    break;
                }
                Ok(Some((n, skipped))) => {
                    log::info!("users file {}: {n} user(s) imported into the replicated directory", path.display());
                    for s in skipped {
                        log::warn!("users file {}: not imported: {s}", path.display());
                    }
                    break;
                }
                Err(e) if e.is_transient() => tokio::time::sleep(Duration::from_millis(500)).await,
                Err(e) => {
                    log::error!("importing users file {}: {e}", path.display());
                    break;
                }
            }
        }
    }
    let mut pending = declared;
    while !pending.is_empty() {
        let mut retry = vec![];
        for (mut user, file) in pending {
            if accounts.directory().user(&user.login).is_none() {
                match read_password_file(&file) {
                    Ok(pw) => user.initial_password = pw,
                    Err(e) => {
                        log::error!("declared user `{}`: initial password: {e}", user.login);
                        continue;
                    }
                }
            }
            for (login, e) in accounts.provision(std::slice::from_ref(&user)).await {
                if e.is_transient() {
                    retry.push((user.clone(), file.clone()));
                } else {
                    log::error!("declared user `{login}`: {e}");
                }
            }
        }
        pending = retry;
        if !pending.is_empty() {
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
    accounts.set_ready();
    log::info!("ready: LMTP and IMAP serve users");
    let _ = follow.await;
}
