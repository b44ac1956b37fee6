//! Per-user storage usage, for quotas. Each node keeps, per user, a pair
//! of grow-only counters (bytes added, bytes removed) in one item of
//! partition `usage` whose sort key is the node's id: only that node
//! writes it, so updates from different nodes never conflict, and the
//! usage is the sum over the nodes' items. Siblings of one node's item
//! (a write retried after a crash) merge by taking the larger counters.
//!
//! The counters are plain numbers, not sealed: delivery must read and
//! update them without the user's keys. What that shows the storage
//! operator (a user's total size) the blob sizes show already.
//!
//! Updates are coalesced in memory and written in the background within
//! a fraction of a second; a crash loses the last moment's changes, so a
//! quota can be overrun by that much (quotas are approximate, as
//! Dovecot's are). This module must not decide policy: callers compare
//! with the quota.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use crate::storage::{Range, Store, StorageError, UserId};

const PARTITION: &str = "usage";
const FLUSH_EVERY: Duration = Duration::from_millis(200);

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Counters {
    added: u64,
    removed: u64,
}

impl Counters {
    fn merge(self, o: Counters) -> Counters {
        Counters {
            added: self.added.max(o.added),
            removed: self.removed.max(o.removed),
        }
    }
}

#[derive(Default)]
struct Pending {
    added: u64,
    removed: u64,
}

pub struct Usage {
    store: Store,
    node: String,
    pending: Mutex<HashMap<UserId, Pending>>,
    wake: Notify,
}

fn decode(values: &[Vec<u8>]) -> Counters {
    values
        .iter()
        .filter_map(|v| serde_json::from_slice::<Counters>(v).ok())
        .fold(Counters::default(), Counters::merge)
}

impl Usage {
    /// `node` names this node's counters (its id; stable across restarts).
    pub fn new(store: Store, node: String) -> Arc<Usage> {
        let usage = Arc::new(Usage {
            store,
            node,
            pending: Mutex::new(HashMap::new()),
            wake: Notify::new(),
        });
        let weak = Arc::downgrade(&usage);
        tokio::spawn(flusher(weak));
        usage
    }

    fn with_pending<T>(&self, f: impl FnOnce(&mut HashMap<UserId, Pending>) -> T) -> T {
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut p)
    }

    /// Records bytes stored for `user` (a delivery, an APPEND, a COPY).
    pub fn add(&self, user: &UserId, bytes: u64) {
        self.with_pending(|p| p.entry(*user).or_default().added += bytes);
        self.wake.notify_one();
    }

    /// Records bytes freed for `user` (an EXPUNGE, a deleted mailbox).
    pub fn remove(&self, user: &UserId, bytes: u64) {
        self.with_pending(|p| p.entry(*user).or_default().removed += bytes);
        self.wake.notify_one();
    }

    /// The user's usage in bytes: every node's counters, plus this node's
    /// changes not written yet.
    pub async fn current(&self, user: &UserId) -> Result<u64, StorageError> {
        let items = self.store.range(user, PARTITION, &Range::default()).await?;
        let (mut added, mut removed) = (0u64, 0u64);
        for it in &items {
            let c = decode(&it.values);
            added = added.saturating_add(c.added);
            removed = removed.saturating_add(c.removed);
        }
        self.with_pending(|p| {
            if let Some(x) = p.get(user) {
                added = added.saturating_add(x.added);
                removed = removed.saturating_add(x.removed);
            }
        });
        Ok(added.saturating_sub(removed))
    }

    /// Writes this node's pending changes (also called by the flusher).
    pub async fn flush(&self) {
        let users: Vec<UserId> = self.with_pending(|p| p.keys().copied().collect());
        for user in users {
            let Some(delta) = self.with_pending(|p| p.remove(&user)) else { continue };
            if let Err(e) = self.write(&user, &delta).await {
                log::debug!("usage counters not written yet: {e}");
                // Keep them for the next round.
                self.with_pending(|p| {
                    let e = p.entry(user).or_default();
                    e.added += delta.added;
                    e.removed += delta.removed;
                });
            }
        }
    }

    async fn write(&self, user: &UserId, delta: &Pending) -> Result<(), StorageError> {
        let item = self.store.get(user, PARTITION, &self.node).await?;
        let (old, token) = match &item {
            Some(it) => (decode(&it.values), Some(&it.token)),
            None => (Counters::default(), None),
        };
        let new = Counters {
            added: old.added.saturating_add(delta.added),
            removed: old.removed.saturating_add(delta.removed),
        };
        let bytes = serde_json::to_vec(&new).map_err(|e| StorageError::Invalid(e.to_string()))?;
        self.store.insert(user, PARTITION, &self.node, bytes, token).await
    }
}

async fn flusher(usage: Weak<Usage>) {
    loop {
        // A strong reference only for one round: when the service goes,
        // the flusher ends within a round.
        let Some(u) = usage.upgrade() else { return };
        if u.with_pending(|p| p.is_empty()) {
            let _ = tokio::time::timeout(Duration::from_secs(5), u.wake.notified()).await;
            continue;
        }
        u.flush().await;
        drop(u);
        tokio::time::sleep(FLUSH_EVERY).await;
    }
}
