//! Estafette's own node-to-node messages, carried by Garage's RPC layer.
//!
//! Upper layers (the sequencer, change notifications) define a message type,
//! implement [`PeerMessage`] for it and register a handler; they never see a
//! Garage type. The messages travel on the same authenticated, encrypted
//! connections as Garage's own RPCs, so there is no second network stack to
//! secure or to open in a firewall.
//!
//! This module must not interpret the messages it carries.

use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use garage_net::endpoint::{Endpoint, EndpointHandler};
use garage_net::message::{Message, PRIO_HIGH};
use garage_net::NodeID;
use garage_rpc::rpc_helper::RequestStrategy;
use garage_rpc::system::System;
use garage_util::data::Uuid;
use garage_util::error::Error as GarageError;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::StorageError;

/// A peer's node id (its public key).
pub type PeerId = [u8; 32];

/// A message type of ours. `PATH` must be unique per type and stable across
/// versions (it names the endpoint on the wire).
pub trait PeerMessage: Serialize + DeserializeOwned + Clone + Send + Sync + 'static {
    type Response: Serialize + DeserializeOwned + Send + Sync + 'static;
    const PATH: &'static str;
}

/// What a handler returns: the response, or an error text for the caller.
pub type HandlerFuture<R> = Pin<Box<dyn Future<Output = Result<R, String>> + Send>>;
type HandlerFn<M> = dyn Fn(PeerId, M) -> HandlerFuture<<M as PeerMessage>::Response> + Send + Sync;

/// The wire form of a [`PeerMessage`].
#[derive(Serialize, Deserialize)]
#[serde(bound = "")]
struct Wire<M: PeerMessage>(M);

impl<M: PeerMessage> Message for Wire<M> {
    type Response = Result<M::Response, GarageError>;
}

struct Handler<M: PeerMessage> {
    f: Option<Arc<HandlerFn<M>>>,
}

impl<M: PeerMessage> EndpointHandler<Wire<M>> for Handler<M> {
    async fn handle(self: &Arc<Self>, m: &Wire<M>, from: NodeID) -> Result<M::Response, GarageError> {
        let Some(f) = self.f.clone() else {
            return Err(GarageError::Message(format!("{}: no handler on this node", M::PATH)));
        };
        let mut from_id = [0u8; 32];
        from_id.copy_from_slice(&from[..]);
        f(from_id, m.0.clone()).await.map_err(GarageError::Message)
    }
}

/// Access to the RPC layer of one node.
#[derive(Clone)]
pub struct PeerRpc {
    system: Arc<System>,
    // Garage panics on a path registered twice; we refuse instead.
    registered: Arc<std::sync::Mutex<std::collections::HashSet<&'static str>>>,
}

/// A registered endpoint through which messages of type `M` are sent.
pub struct PeerEndpoint<M: PeerMessage> {
    endpoint: Arc<Endpoint<Wire<M>, Handler<M>>>,
    system: Arc<System>,
    _m: PhantomData<M>,
}

impl PeerRpc {
    pub(super) fn new(system: Arc<System>) -> Self {
        PeerRpc {
            system,
            registered: Default::default(),
        }
    }

    /// This node's id.
    pub fn local_id(&self) -> PeerId {
        let mut id = [0u8; 32];
        id.copy_from_slice(self.system.id.as_slice());
        id
    }

    /// Peers currently connected (not counting this node).
    pub fn connected_peers(&self) -> Vec<PeerId> {
        let me = self.system.id;
        self.system
            .get_known_nodes()
            .into_iter()
            .filter(|n| n.is_up && n.id != me)
            .map(|n| {
                let mut id = [0u8; 32];
                id.copy_from_slice(n.id.as_slice());
                id
            })
            .collect()
    }

    /// Closes our outgoing connection to `peer` (Garage's peering dials it
    /// again by itself). Requests to it fail at once until it is back.
    pub fn disconnect(&self, peer: PeerId) {
        if let Some(id) = NodeID::from_slice(&peer) {
            self.system.netapp.disconnect(&id);
        }
    }

    /// Dials `peer` at `addr` unless already connected; Ok once connected.
    pub async fn dial(&self, peer: PeerId, addr: std::net::SocketAddr) -> Result<(), StorageError> {
        let id = NodeID::from_slice(&peer).ok_or_else(|| StorageError::Invalid("not a node id".into()))?;
        self.system.netapp.clone().try_connect(addr, id).await.map_err(|e| StorageError::Unavailable(e.to_string()))
    }

    /// Registers the handler for `M` on this node (once per type and node)
    /// and returns the endpoint to send `M` to peers.
    pub fn register<M, F>(&self, handler: F) -> Result<PeerEndpoint<M>, StorageError>
    where
        M: PeerMessage,
        F: Fn(PeerId, M) -> HandlerFuture<M::Response> + Send + Sync + 'static,
    {
        let fresh = self.registered.lock().map(|mut r| r.insert(M::PATH)).unwrap_or(false);
        if !fresh {
            return Err(StorageError::Invalid(format!("{} is already registered on this node", M::PATH)));
        }
        let endpoint = self.system.netapp.endpoint::<Wire<M>, Handler<M>>(M::PATH.to_string());
        endpoint.set_handler(Arc::new(Handler { f: Some(Arc::new(handler)) }));
        Ok(PeerEndpoint {
            endpoint,
            system: self.system.clone(),
            _m: PhantomData,
        })
    }
}

impl<M: PeerMessage> PeerEndpoint<M> {
    /// Sends `msg` to `peer` and waits for its answer, at most `timeout`.
    pub async fn call(&self, peer: PeerId, msg: M, timeout: Duration) -> Result<M::Response, StorageError> {
        let strategy = RequestStrategy::with_priority(PRIO_HIGH).with_custom_timeout(timeout);
        self.system
            .rpc_helper()
            .call(&self.endpoint, Uuid::from(peer), Wire(msg), strategy)
            .await
            .map_err(StorageError::from)
    }
}

/// `cluster status`'s ping: round-trip time to a peer over our RPC.
#[derive(Clone, Serialize, Deserialize)]
pub struct Ping {
    pub nonce: u64,
}

impl PeerMessage for Ping {
    type Response = u64;
    const PATH: &'static str = "estafette/peer/Ping";
}

pub struct PingService {
    endpoint: PeerEndpoint<Ping>,
}

impl PingService {
    pub(super) fn register(rpc: &PeerRpc) -> Result<Arc<Self>, StorageError> {
        let endpoint = rpc.register::<Ping, _>(|_, p| Box::pin(async move { Ok(p.nonce) }))?;
        Ok(Arc::new(PingService { endpoint }))
    }

    /// Round-trip time to `peer`, checked by echo of a random nonce.
    pub async fn rtt(&self, peer: Uuid) -> Result<Duration, StorageError> {
        let mut id = [0u8; 32];
        id.copy_from_slice(peer.as_slice());
        self.ping(id, Duration::from_secs(5)).await
    }

    /// Round-trip time to `peer`, if it answers within `timeout`.
    pub async fn ping(&self, peer: PeerId, timeout: Duration) -> Result<Duration, StorageError> {
        let nonce: u64 = rand::random();
        let id = peer;
        let start = Instant::now();
        let echoed = self.endpoint.call(id, Ping { nonce }, timeout).await?;
        if echoed != nonce {
            return Err(StorageError::Corrupt("ping answered with a wrong nonce".into()));
        }
        Ok(start.elapsed())
    }
}
