//! Local clusters: several nodes in this process, on loopback ports, in a
//! directory of the caller's choosing. For tests, benchmarks and the
//! simulation harness; production nodes start from a configuration file.

use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::time::Duration;

use super::{Node, StorageError};
use crate::config::{ClusterConfig, Config, LayoutNode, ListenConfig, NodeConfig, RpcConfig, UsersConfig};

/// A free TCP port on 127.0.0.1 (free when asked; good enough for tests).
pub fn free_port() -> Result<u16, StorageError> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| StorageError::Setup(format!("finding a free port: {e}")))?;
    l.local_addr()
        .map(|a| a.port())
        .map_err(|e| StorageError::Setup(format!("finding a free port: {e}")))
}

/// Configurations for `n` nodes in `n` regions under `dir`, replication
/// factor `rf`, RPC on the given ports of 127.0.0.1.
pub fn configs(dir: &Path, ports: &[u16], rf: usize) -> Vec<Config> {
    let secret = hex::encode(blake2_of(dir.to_string_lossy().as_bytes()));
    let addr = |p: u16| SocketAddr::from(([127, 0, 0, 1], p));
    let nodes: Vec<LayoutNode> = ports
        .iter()
        .enumerate()
        .map(|(i, p)| LayoutNode {
            name: format!("node-{}", i + 1),
            region: format!("region-{}", i + 1),
            capacity: "10G".into(),
            rpc_addr: addr(*p),
        })
        .collect();
    nodes
        .iter()
        .map(|n| {
            let nd = dir.join(&n.name);
            Config {
                node: NodeConfig {
                    name: n.name.clone(),
                    region: n.region.clone(),
                    data_dir: nd.join("data"),
                    metadata_dir: nd.join("meta"),
                    fsync: false,
                },
                rpc: RpcConfig {
                    bind: n.rpc_addr,
                    public_addr: None,
                    secret: Some(secret.clone()),
                    secret_file: None,
                    bind_outgoing: false,
                },
                cluster: ClusterConfig {
                    replication_factor: rf,
                    bootstrap_peers: vec![],
                    nodes: nodes.clone(),
                },
                listen: ListenConfig::default(),
                tls: None,
                lmtp: Default::default(),
                imap: Default::default(),
                users: UsersConfig::default(),
                source: nd.join("estafette.toml"),
            }
        })
        .collect()
}

fn blake2_of(data: &[u8]) -> [u8; 32] {
    use blake2::{Blake2b, Digest};
    let mut h = Blake2b::<blake2::digest::consts::U32>::new();
    h.update(data);
    h.finalize().into()
}

/// Nodes running in this process.
pub struct LocalCluster {
    pub nodes: Vec<Node>,
    pub configs: Vec<Config>,
}

impl LocalCluster {
    /// Starts `n` nodes (RF = min(n, 3)) under `dir` and waits until every
    /// one of them has the layout and a quorum for every partition.
    pub async fn start(dir: &Path, n: usize) -> Result<LocalCluster, StorageError> {
        let ports = (0..n).map(|_| free_port()).collect::<Result<Vec<_>, _>>()?;
        let configs = configs(dir, &ports, n.min(3));
        let mut nodes = vec![];
        for c in &configs {
            nodes.push(Node::start(c).await?);
        }
        for node in &nodes {
            node.wait_ready(Duration::from_secs(60)).await?;
        }
        // Ready means a quorum per partition; tests also want the full mesh
        // (every node connected to every other), so that losing one node
        // later leaves the others talking.
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while nodes.iter().any(|n| n.peer_rpc().connected_peers().len() + 1 < nodes.len()) {
            if std::time::Instant::now() > deadline {
                return Err(StorageError::Unavailable("local cluster did not fully connect".into()));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(LocalCluster { nodes, configs })
    }

    pub async fn shutdown(self) {
        futures::future::join_all(self.nodes.iter().map(Node::shutdown)).await;
    }
}
