//! The embedded Garage node: start it from our configuration, apply the
//! cluster layout the configuration asks for, report status, shut it down.
//!
//! Garage is configured entirely in code (no garage.toml on disk, no garage
//! binary or CLI). This module must not know about users, mail or protocols.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use garage_model::bucket_table::Bucket;
use garage_model::garage::Garage;
use garage_rpc::layout::{NodeRole, NodeRoleV};
use garage_util::background::BackgroundRunner;
use garage_util::data::Uuid;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::peer::{PeerRpc, PingService};
use super::{nodekey, nodelay, Store, StorageError};
use crate::config::{Config, LayoutNode};

/// Bound on every Garage RPC (see `garage_config`).
const RPC_TIMEOUT_MS: i64 = 5_000;

/// Garage's version tag for the RPC handshake; nodes must agree on it.
const GARAGE_VERSION: &str = "v2.5.0-estafette";

/// The one bucket that holds everything of this appliance. Its id is fixed so
/// that every node of every cluster agrees on it without coordination.
pub(super) fn appliance_bucket_id() -> Uuid {
    use blake2::{Blake2b, Digest};
    let mut h = Blake2b::<blake2::digest::consts::U32>::new();
    h.update(b"estafette appliance bucket v1");
    let b: [u8; 32] = h.finalize().into();
    Uuid::from(b)
}

/// A running node. Dropping it without `shutdown` leaves Garage's tasks
/// running until the process ends.
pub struct Node {
    garage: Arc<Garage>,
    // Kept for the node's whole life: dropping it makes Garage's worker loop spin.
    background: Mutex<Option<Arc<BackgroundRunner>>>,
    stop: watch::Sender<bool>,
    run_system: Mutex<Option<JoinHandle<()>>>,
    background_done: Mutex<Option<JoinHandle<()>>>,
    peer_rpc: PeerRpc,
    ping: Arc<PingService>,
    config: Config,
    secret: String,
}

/// One line of `cluster status`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct NodeStatus {
    pub id: String,
    pub name: Option<String>,
    pub region: Option<String>,
    pub capacity: Option<u64>,
    pub addr: Option<String>,
    pub up: bool,
    pub this_node: bool,
    pub rtt_ms: Option<f64>,
    pub last_seen_secs_ago: Option<u64>,
    /// Whether the node serves its users (filled in above this layer:
    /// directory loaded, declared users created); None if unknown.
    #[serde(default)]
    pub ready: Option<bool>,
}

/// What `cluster status` shows.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ClusterStatus {
    pub layout_version: u64,
    pub replication_factor: usize,
    pub health: String,
    pub partitions_with_quorum: usize,
    pub partitions: usize,
    /// The layout version reads are served from (Garage reads from the
    /// oldest version not yet synced everywhere; right after the first
    /// layout that is version 0, which holds nothing).
    #[serde(default)]
    pub read_version: u64,
    pub nodes: Vec<NodeStatus>,
}

impl ClusterStatus {
    /// A layout, quorum for every partition, reads served from the current
    /// layout, and (where known) the node asked serving its users: what
    /// the cluster needs before it can be trusted.
    pub fn ready(&self) -> bool {
        self.layout_version > 0
            && self.partitions > 0
            && self.partitions_with_quorum == self.partitions
            && self.read_version == self.layout_version
            && self.nodes.iter().filter(|n| n.this_node).all(|n| n.ready != Some(false))
    }
}

/// The Garage configuration for this node, built in code.
fn garage_config(config: &Config, secret: &str) -> Result<garage_util::config::Config, StorageError> {
    let peers = bootstrap_peers(config, secret);
    let mut t = toml::Table::new();
    let path = |p: &std::path::Path| toml::Value::String(p.to_string_lossy().into_owned());
    t.insert("metadata_dir".into(), path(&config.node.metadata_dir));
    t.insert("data_dir".into(), path(&config.node.data_dir));
    t.insert("db_engine".into(), "lmdb".into());
    t.insert("metadata_fsync".into(), config.node.fsync.into());
    t.insert("data_fsync".into(), config.node.fsync.into());
    t.insert("replication_factor".into(), (config.cluster.replication_factor as i64).into());
    t.insert("consistency_mode".into(), "consistent".into());
    t.insert("rpc_bind_addr".into(), config.rpc.bind.to_string().into());
    t.insert("rpc_public_addr".into(), config.rpc_public_addr().to_string().into());
    t.insert("rpc_secret".into(), secret.into());
    t.insert("rpc_bind_outgoing".into(), config.rpc.bind_outgoing.into());
    t.insert(
        "bootstrap_peers".into(),
        toml::Value::Array(peers.into_iter().map(toml::Value::String).collect()),
    );
    // Everything we store is compressed and encrypted above us; Garage's own
    // zstd pass would only burn CPU on incompressible bytes.
    t.insert("compression_level".into(), "none".into());
    t.insert("block_size".into(), "1M".into());
    // A request in flight to a peer that went silent (a partition, not a
    // crash) is not failed when that peer's connection is closed: Garage
    // keeps waiting for it, and a quorum read that picked that peer waits
    // with it before trying the next replica. This timeout bounds that
    // stall. Nothing we send needs long: blocks are 1 MiB, and long-polls
    // carry their own timeout.
    t.insert("rpc_timeout_msec".into(), RPC_TIMEOUT_MS.into());
    let mut s3 = toml::Table::new();
    s3.insert("s3_region".into(), "estafette".into());
    t.insert("s3_api".into(), toml::Value::Table(s3));
    let text = toml::to_string(&t).map_err(|e| StorageError::Setup(format!("garage config: {e}")))?;
    toml::from_str(&text).map_err(|e| StorageError::Setup(format!("garage config: {e}")))
}

/// `id@addr` for every peer we should contact at start.
fn bootstrap_peers(config: &Config, secret: &str) -> Vec<String> {
    let named = |name: &str| {
        config
            .cluster
            .nodes
            .iter()
            .find(|n| n.name == name)
            .map(|n| format!("{}@{}", hex::encode(nodekey::node_id(secret, &n.name)), n.rpc_addr))
    };
    if config.cluster.bootstrap_peers.is_empty() {
        config
            .cluster
            .nodes
            .iter()
            .filter(|n| n.name != config.node.name)
            .filter_map(|n| named(&n.name))
            .collect()
    } else {
        config
            .cluster
            .bootstrap_peers
            .iter()
            .filter_map(|p| named(p).or_else(|| Some(p.clone())))
            .collect()
    }
}

impl Node {
    /// Starts the node: Garage's database, RPC listener, workers; registers
    /// Estafette's own RPC endpoints; applies the layout if this node is the
    /// first of the configured layout and the cluster has none yet.
    pub async fn start(config: &Config) -> Result<Node, StorageError> {
        let secret = config.rpc_secret().map_err(|e| StorageError::Setup(e.to_string()))?;
        nodekey::install_node_key(&config.node.metadata_dir, &secret, &config.node.name)?;
        std::fs::create_dir_all(&config.node.data_dir).map_err(|e| StorageError::io(&config.node.data_dir, e))?;

        garage_util::version::init_version(GARAGE_VERSION);
        let gconf = garage_config(config, &secret)?;
        let garage = Garage::new(gconf).map_err(|e| StorageError::Setup(format!("starting Garage: {e}")))?;

        let (stop, stop_rx) = watch::channel(false);
        let (background, background_done) = BackgroundRunner::new(stop_rx.clone());
        garage
            .spawn_workers(&background)
            .map_err(|e| StorageError::Setup(format!("starting Garage workers: {e}")))?;

        let peer_rpc = PeerRpc::new(garage.system.clone());
        let ping = PingService::register(&peer_rpc)?;
        let run_system = tokio::spawn(garage.system.clone().run(stop_rx.clone()));
        let layout_peers = config
            .cluster
            .nodes
            .iter()
            .filter(|n| n.name != config.node.name)
            .map(|n| (nodekey::node_id(&secret, &n.name), n.rpc_addr))
            .collect();
        super::liveness::spawn(peer_rpc.clone(), ping.clone(), layout_peers, stop_rx);

        let mut ports: Vec<u16> = config.cluster.nodes.iter().map(|n| n.rpc_addr.port()).collect();
        ports.push(config.rpc.bind.port());
        nodelay::register_ports(ports);
        let system = garage.system.clone();
        nodelay::spawn_watcher(Arc::new(move || {
            system
                .get_known_nodes()
                .iter()
                .filter(|n| n.is_up)
                .fold(0u64, |acc, n| acc.wrapping_mul(1_000_003).wrapping_add(u64::from(n.id.as_slice()[0]) + 1))
        }));

        let node = Node {
            garage,
            background: Mutex::new(Some(background)),
            stop,
            run_system: Mutex::new(Some(run_system)),
            background_done: Mutex::new(Some(background_done)),
            peer_rpc,
            ping,
            config: config.clone(),
            secret,
        };
        node.spawn_first_layout();
        node.spawn_bucket_creation();
        Ok(node)
    }

    /// The Store API over this node.
    pub fn store(&self) -> Store {
        Store::new(self.garage.clone())
    }

    /// Estafette's node-to-node RPC on this node's network stack.
    pub fn peer_rpc(&self) -> &PeerRpc {
        &self.peer_rpc
    }

    /// This node's id, hex.
    pub fn id(&self) -> String {
        hex::encode(self.garage.system.id.as_slice())
    }

    pub fn layout_version(&self) -> u64 {
        self.garage.system.cluster_layout().inner().current().version
    }

    /// The layout version reads are served from (see ClusterStatus).
    pub fn read_version(&self) -> u64 {
        self.garage.system.cluster_layout().sync_map_min()
    }

    /// Waits until the cluster has a layout, this node can reach a quorum
    /// for every partition and reads are served from the current layout
    /// (before that, a value just written may read as missing), or the
    /// deadline passes.
    pub async fn wait_ready(&self, deadline: Duration) -> Result<(), StorageError> {
        let start = std::time::Instant::now();
        loop {
            let h = self.garage.system.health();
            let version = self.layout_version();
            if version > 0 && h.partitions > 0 && h.partitions_quorum == h.partitions && self.read_version() >= version {
                return Ok(());
            }
            if start.elapsed() > deadline {
                return Err(StorageError::Unavailable(format!(
                    "cluster not ready after {deadline:?}: layout version {} (reads from {}), {}/{} partitions with quorum",
                    self.layout_version(),
                    self.read_version(),
                    h.partitions_quorum,
                    h.partitions
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The first node of the configured layout writes layout version 1 when
    /// it finds none, once its peers are connected (a layout applied before
    /// the peers connect takes ~10 s to spread instead of ~0.1 s).
    fn spawn_first_layout(&self) {
        let first = self.config.cluster.nodes.first().map(|n| n.name.as_str());
        if first != Some(self.config.node.name.as_str()) || self.layout_version() > 0 {
            return;
        }
        let garage = self.garage.clone();
        let wanted = self.config.cluster.nodes.clone();
        let secret = self.secret.clone();
        let mut stop = self.stop.subscribe();
        tokio::spawn(async move {
            let ids: Vec<Uuid> = wanted.iter().map(|n| Uuid::from(nodekey::node_id(&secret, &n.name))).collect();
            let started = std::time::Instant::now();
            loop {
                let up: Vec<Uuid> = garage.system.get_known_nodes().iter().filter(|n| n.is_up).map(|n| n.id).collect();
                if ids.iter().all(|id| up.contains(id)) || started.elapsed() > Duration::from_secs(20) {
                    break;
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                    _ = stop.changed() => return,
                }
            }
            if garage.system.cluster_layout().inner().current().version > 0 {
                return; // someone else applied it meanwhile
            }
            match apply_layout(&garage, &secret, &wanted).await {
                Ok(Some(v)) => log::info!("applied initial cluster layout, version {v}"),
                Ok(None) => {}
                Err(e) => log::error!("could not apply the initial cluster layout: {e}"),
            }
        });
    }

    /// Inserts the appliance bucket once the layout allows writes, so that
    /// Garage's own tools see a valid bucket. Items and blobs do not need it
    /// to work, hence in the background.
    fn spawn_bucket_creation(&self) {
        let garage = self.garage.clone();
        let mut stop = self.stop.subscribe();
        tokio::spawn(async move {
            let id = appliance_bucket_id();
            loop {
                if let Ok(Some(_)) = garage.bucket_table.get_local(&garage_table::EmptyKey, &id) {
                    return;
                }
                if garage.system.cluster_layout().inner().current().version > 0 {
                    let bucket = Bucket::present(id, garage_model::bucket_table::BucketParams::default());
                    if garage.bucket_table.insert(&bucket).await.is_ok() {
                        return;
                    }
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                    _ = stop.changed() => return,
                }
            }
        });
    }

    /// Applies the layout of our configuration (`cluster layout apply`).
    /// Returns the new version, or None if the layout already matches.
    pub async fn apply_configured_layout(&self) -> Result<Option<u64>, StorageError> {
        apply_layout(&self.garage, &self.secret, &self.config.cluster.nodes).await
    }

    /// Nodes, regions, capacities, who is up, and the layout version; pings
    /// every reachable peer over Estafette's RPC for its round-trip time.
    pub async fn status(&self) -> ClusterStatus {
        let known = self.garage.system.get_known_nodes();
        let health = self.garage.system.health();
        let (layout_version, replication_factor, roles) = {
            let layout = self.garage.system.cluster_layout();
            let cur = layout.inner().current();
            let roles: Vec<(Uuid, NodeRole)> = cur
                .roles
                .items()
                .iter()
                .filter_map(|(id, _, r)| r.0.clone().map(|r| (*id, r)))
                .collect();
            (cur.version, cur.replication_factor, roles)
        };
        let mut ids: Vec<Uuid> = roles.iter().map(|(id, _)| *id).collect();
        for n in &known {
            if !ids.contains(&n.id) {
                ids.push(n.id);
            }
        }
        let me = self.garage.system.id;
        let pings = futures::future::join_all(ids.iter().map(|id| {
            let up = known.iter().any(|k| k.id == *id && k.is_up);
            let ping = self.ping.clone();
            let id = *id;
            async move {
                if up && id != me {
                    ping.rtt(id).await.ok()
                } else {
                    None
                }
            }
        }))
        .await;
        let nodes = ids
            .iter()
            .zip(pings)
            .map(|(id, rtt)| {
                let role = roles.iter().find(|(r, _)| r == id).map(|(_, r)| r);
                let k = known.iter().find(|k| k.id == *id);
                NodeStatus {
                    id: hex::encode(id.as_slice()),
                    name: role.and_then(|r| r.tags.first().cloned()),
                    region: role.map(|r| r.zone.clone()),
                    capacity: role.and_then(|r| r.capacity),
                    addr: k.and_then(|k| k.addr).map(|a| a.to_string()),
                    up: k.is_some_and(|k| k.is_up),
                    this_node: *id == me,
                    rtt_ms: rtt.map(|d| d.as_secs_f64() * 1000.0),
                    last_seen_secs_ago: k.and_then(|k| k.last_seen_secs_ago),
                    ready: None,
                }
            })
            .collect();
        ClusterStatus {
            layout_version,
            replication_factor,
            health: format!("{:?}", health.status),
            partitions_with_quorum: health.partitions_quorum,
            partitions: health.partitions,
            read_version: self.read_version(),
            nodes,
        }
    }

    /// Stops the node the way Garage's own server does: signal, drop the RPC
    /// handlers (they hold reference cycles), wait for the network loop, then
    /// release the background runner and wait for the workers. Idempotent;
    /// the Store handles of this node fail afterwards.
    pub async fn shutdown(&self) {
        let _ = self.stop.send(true);
        self.garage.system.netapp.drop_all_handlers();
        let run_system = self.run_system.lock().ok().and_then(|mut h| h.take());
        if let Some(h) = run_system {
            // The network loop waits for requests in flight, and a peer's
            // long-poll can hold one for its whole timeout: do not wait that long.
            let _ = tokio::time::timeout(Duration::from_secs(3), h).await;
        }
        self.garage.system.cleanup();
        if let Ok(mut b) = self.background.lock() {
            b.take();
        }
        let done = self.background_done.lock().ok().and_then(|mut h| h.take());
        if let Some(h) = done {
            // Garage's workers have an 8 s deadline of their own; do not hang longer.
            let _ = tokio::time::timeout(Duration::from_secs(10), h).await;
        }
    }
}

/// Stages the wanted roles (adding, changing and removing nodes) and applies
/// them as the next layout version, if anything differs.
async fn apply_layout(garage: &Arc<Garage>, secret: &str, wanted: &[LayoutNode]) -> Result<Option<u64>, StorageError> {
    let (history, next) = {
        let layout = garage.system.cluster_layout();
        let mut history = layout.inner().clone();
        let current = history.current().clone();
        let mut changed = false;
        let staging = &mut history.staging.get_mut().roles;
        for n in wanted {
            let id = Uuid::from(nodekey::node_id(secret, &n.name));
            let role = NodeRole {
                zone: n.region.clone(),
                capacity: Some(n.capacity_bytes()),
                tags: vec![n.name.clone()],
            };
            if current.roles.get(&id).and_then(|r| r.0.as_ref()) != Some(&role) {
                staging.update_in_place(id, NodeRoleV(Some(role)));
                changed = true;
            }
        }
        for (id, _, role) in current.roles.items() {
            let still_wanted = wanted.iter().any(|n| Uuid::from(nodekey::node_id(secret, &n.name)) == *id);
            if role.0.is_some() && !still_wanted {
                staging.update_in_place(*id, NodeRoleV(None));
                changed = true;
            }
        }
        if !changed {
            return Ok(None);
        }
        (history, current.version + 1)
    };
    let (history, stat) = history
        .apply_staged_changes(next)
        .map_err(|e| StorageError::Setup(format!("computing layout v{next}: {e}")))?;
    log::debug!("layout v{next}:\n{}", stat.to_message().join("\n"));
    garage
        .system
        .layout_manager
        .update_cluster_layout(&history)
        .await
        .map_err(|e| StorageError::Unavailable(format!("publishing layout v{next}: {e}")))?;
    Ok(Some(next))
}
