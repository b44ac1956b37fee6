//! Storage: the embedded Garage node and the narrow Store API over it.
//!
//! This is the only part of Estafette that imports Garage crates. Above it,
//! everything speaks [`Store`]: user-scoped **items** (a K2V table: partition
//! key, sort key, concurrent sibling values, causality token, long-poll) and
//! user-scoped **blobs** (opaque byte strings stored as Garage S3 objects, so
//! they are replicated, deduplicated, garbage-collected and repaired by
//! Garage's own machinery).
//!
//! Every key starts with an opaque [`UserId`]; this layer never sees a user
//! name, a mailbox name or plaintext (the layers above encrypt). It must not
//! interpret values, and it must not hide quorum failures: a write returns
//! Ok only once a quorum of replicas holds it.

mod blobs;
mod items;
mod listing;
mod liveness;
pub mod local;
pub mod node;
mod nodekey;
pub mod nodelay;
pub mod peer;

use std::path::Path;
use std::sync::Arc;

use garage_model::garage::Garage;
use garage_util::data::Uuid;

pub use blobs::BlobReader;
pub use items::{CausalityToken, Item, ItemWrite, Range, RangeMarker};
pub use node::{ClusterStatus, Node, NodeStatus};
pub use nodekey::{node_id, NodeId};
pub use peer::{HandlerFuture, PeerEndpoint, PeerId, PeerMessage, PeerRpc};

/// What can go wrong below the Store API.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// A quorum could not be reached, a peer timed out, the layout is not
    /// ready: retrying later may succeed (LMTP answers 4xx, IMAP NO).
    #[error("storage temporarily unavailable: {0}")]
    Unavailable(String),
    /// Stored data failed a check (hash, size, format).
    #[error("corrupt data in storage: {0}")]
    Corrupt(String),
    /// A causality token that this store did not produce.
    #[error("invalid causality token")]
    BadToken,
    /// A caller asked for something the store cannot do (e.g. a bad range).
    #[error("invalid storage request: {0}")]
    Invalid(String),
    /// Starting the node failed (directories, keys, Garage's own setup).
    #[error("{0}")]
    Setup(String),
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

impl StorageError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        StorageError::Io {
            path: path.display().to_string(),
            source,
        }
    }

    /// Whether retrying the same operation later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, StorageError::Unavailable(_))
    }
}

impl From<garage_util::error::Error> for StorageError {
    fn from(e: garage_util::error::Error) -> Self {
        use garage_util::error::Error as G;
        match e {
            G::CorruptData(_) => StorageError::Corrupt(e.to_string()),
            // Everything network- or quorum-shaped is transient; so is a
            // block no reachable replica holds (it may be on a node that is down).
            G::Quorum(..)
            | G::Timeout
            | G::LayoutNotReady
            | G::Net(_)
            | G::RemoteError(_)
            | G::MissingBlock(_)
            | G::TokioSemAcquire(_) => StorageError::Unavailable(e.to_string()),
            other => StorageError::Unavailable(format!("storage error: {other}")),
        }
    }
}

/// An opaque user id: a hash of a per-installation salt and the login,
/// computed by the accounts layer. Only its hex form reaches storage.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, PartialOrd, Ord)]
pub struct UserId(pub [u8; 32]);

impl UserId {
    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }

    /// The storage key for `name` under this user: `<hex uid>/<name>`.
    fn scoped(&self, name: &str) -> String {
        format!("{}/{}", self.hex(), name)
    }
}

/// The Store API: user-scoped items and blobs on the embedded Garage node.
/// Cheap to clone; every clone talks to the same node.
#[derive(Clone)]
pub struct Store {
    garage: Arc<Garage>,
    bucket: Uuid,
}

impl Store {
    fn new(garage: Arc<Garage>) -> Self {
        Store {
            garage,
            bucket: node::appliance_bucket_id(),
        }
    }
}
