//! Wiring: configuration -> storage node -> (later: accounts, mail,
//! protocols); the admin socket and metrics; signals and graceful shutdown.
//!
//! Nothing here implements a protocol or touches Garage directly; it only
//! starts the layers below in order and stops them in reverse.

pub mod admin;
mod metrics;

use std::sync::Arc;

use crate::config::Config;
use crate::storage::{Node, StorageError};

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("admin socket {path}: {source}")]
    Admin { path: String, source: std::io::Error },
    #[error("metrics listener {addr}: {source}")]
    Metrics { addr: String, source: std::io::Error },
    #[error("signal handling: {0}")]
    Signal(std::io::Error),
}

/// A running appliance node; `stop` shuts it down cleanly.
pub struct Server {
    pub node: Arc<Node>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    admin_socket: std::path::PathBuf,
}

impl Server {
    /// Starts every layer of one node from its configuration.
    pub async fn start(config: &Config) -> Result<Server, ServerError> {
        let node = Arc::new(Node::start(config).await?);
        let admin_socket = config.admin_socket();
        let mut tasks = vec![];
        tasks.push(admin::serve(admin_socket.clone(), node.clone()).await.map_err(|source| {
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
        Ok(Server { node, tasks, admin_socket })
    }

    /// Stops listeners, then the storage node.
    pub async fn stop(self) {
        for t in &self.tasks {
            t.abort();
        }
        let _ = std::fs::remove_file(&self.admin_socket);
        drop(self.tasks);
        self.node.shutdown().await;
    }
}

/// Runs a node until SIGINT or SIGTERM, then shuts it down cleanly.
pub async fn run(config: Config) -> Result<(), ServerError> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut sigint = signal(SignalKind::interrupt()).map_err(ServerError::Signal)?;
    let mut sigterm = signal(SignalKind::terminate()).map_err(ServerError::Signal)?;
    let mut sighup = signal(SignalKind::hangup()).map_err(ServerError::Signal)?;
    let server = Server::start(&config).await?;
    loop {
        tokio::select! {
            _ = sigint.recv() => { log::info!("SIGINT: shutting down"); break }
            _ = sigterm.recv() => { log::info!("SIGTERM: shutting down"); break }
            _ = sighup.recv() => { log::info!("SIGHUP: nothing to reload yet"); }
        }
    }
    server.stop().await;
    log::info!("stopped");
    Ok(())
}
