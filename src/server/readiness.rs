//! Whether each node answers for its users: a tiny node-to-node question,
//! so that `estafette cluster status` on any node shows every node's
//! readiness (storage ready, directory loaded, declared users created).
//!
//! It only reports; it must not change what a node does.

use std::sync::{Arc, Weak};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::accounts::Accounts;
use crate::storage::{PeerEndpoint, PeerId, PeerMessage, PeerRpc, StorageError};

#[derive(Clone, Serialize, Deserialize)]
pub struct Readiness;

impl PeerMessage for Readiness {
    type Response = bool;
    const PATH: &'static str = "estafette/server/Readiness";
}

/// Asks peers whether they are ready, and answers for this node.
pub struct ReadinessProbe {
    endpoint: PeerEndpoint<Readiness>,
}

impl ReadinessProbe {
    /// Registers the question on this node's RPC (once per node).
    pub fn register(rpc: &PeerRpc, accounts: &Arc<Accounts>) -> Result<Arc<ReadinessProbe>, StorageError> {
        let weak: Weak<Accounts> = Arc::downgrade(accounts);
        let endpoint = rpc.register::<Readiness, _>(move |_, _| {
            let ready = weak.upgrade().is_some_and(|a| a.is_ready());
            Box::pin(async move { Ok(ready) })
        })?;
        Ok(Arc::new(ReadinessProbe { endpoint }))
    }

    /// Whether `peer` is ready; None if it does not answer within a second.
    pub async fn ask(&self, peer: PeerId) -> Option<bool> {
        self.endpoint.call(peer, Readiness, Duration::from_secs(1)).await.ok()
    }
}
