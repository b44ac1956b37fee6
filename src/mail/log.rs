//! Where a mailbox's log lives: the storage operations the engine needs,
//! as a trait so the deterministic simulation can drive the same engine
//! over a simulated replicated store, and its implementation over the
//! Store API (Garage K2V), sealed with the user's keys.

use std::sync::Arc;

use async_trait::async_trait;

use crate::accounts::UserKeys;
use crate::storage::{Range, Store, StorageError, UserId};

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum LogError {
    /// No quorum, a timeout, a node down: retry later.
    #[error("mailbox log unavailable: {0}")]
    Unavailable(String),
    /// A record failed to decrypt or decode.
    #[error("mailbox log damaged: {0}")]
    Corrupt(String),
}

impl From<StorageError> for LogError {
    fn from(e: StorageError) -> Self {
        if e.is_transient() {
            LogError::Unavailable(e.to_string())
        } else {
            LogError::Corrupt(e.to_string())
        }
    }
}

/// The log of every mailbox of one user, one partition per mailbox.
/// Each key is written once, by one writer.
#[async_trait]
pub trait LogStorage: Send + Sync + 'static {
    /// Writes one record; Ok once a write quorum holds it.
    async fn put(&self, mailbox: &str, key: &str, value: Vec<u8>) -> Result<(), LogError>;
    /// Reads the records whose key starts with `prefix` and is >= `from`,
    /// in key order, each with its sibling values. With `monotonic`, every
    /// record returned is on a quorum before this returns (read repair), so
    /// any later read sees it.
    async fn read(&self, mailbox: &str, prefix: &str, from: &str, monotonic: bool)
        -> Result<Vec<(String, Vec<Vec<u8>>)>, LogError>;
    /// Deletes the records with key in [from, to) under `prefix` (trimming
    /// entries a checkpoint covers).
    async fn delete_range(&self, mailbox: &str, prefix: &str, from: &str, to: &str) -> Result<(), LogError>;
    /// Stores, reads and deletes a checkpoint's snapshot (large; a blob).
    async fn put_snapshot(&self, mailbox: &str, name: &str, bytes: Vec<u8>) -> Result<(), LogError>;
    async fn get_snapshot(&self, mailbox: &str, name: &str) -> Result<Option<Vec<u8>>, LogError>;
    async fn delete_snapshot(&self, mailbox: &str, name: &str) -> Result<(), LogError>;
}

/// The log on the Store API: partition `log/<mailbox>` of the user, values
/// sealed under the user's master key (context = partition and key).
pub struct StoreLog {
    store: Store,
    keys: Arc<UserKeys>,
}

impl StoreLog {
    pub fn new(store: Store, keys: Arc<UserKeys>) -> Self {
        StoreLog { store, keys }
    }
    fn user(&self) -> &UserId {
        &self.keys.user
    }
}

fn partition(mailbox: &str) -> String {
    format!("log/{mailbox}")
}

fn snapshot_blob(mailbox: &str, name: &str) -> String {
    format!("ckpt/{mailbox}/{name}")
}

#[async_trait]
impl LogStorage for StoreLog {
    async fn put(&self, mailbox: &str, key: &str, value: Vec<u8>) -> Result<(), LogError> {
        let p = partition(mailbox);
        let sealed = self.keys.seal_item(&p, key, &value);
        self.store.insert(self.user(), &p, key, sealed, None).await?;
        Ok(())
    }

    async fn read(
        &self,
        mailbox: &str,
        prefix: &str,
        from: &str,
        monotonic: bool,
    ) -> Result<Vec<(String, Vec<Vec<u8>>)>, LogError> {
        let p = partition(mailbox);
        let range = Range {
            prefix: Some(prefix.to_string()),
            start: Some(if from.starts_with(prefix) { from.to_string() } else { prefix.to_string() }),
            ..Default::default()
        };
        let items = if monotonic {
            self.store.range_monotonic(self.user(), &p, &range).await?
        } else {
            self.store.range(self.user(), &p, &range).await?
        };
        let mut out = Vec::with_capacity(items.len());
        for it in items {
            let mut values = Vec::with_capacity(it.values.len());
            for v in &it.values {
                values.push(
                    self.keys
                        .open_item(&p, &it.sort_key, v)
                        .map_err(|e| LogError::Corrupt(format!("{}: {e}", it.sort_key)))?,
                );
            }
            out.push((it.sort_key, values));
        }
        Ok(out)
    }

    async fn delete_range(&self, mailbox: &str, prefix: &str, from: &str, to: &str) -> Result<(), LogError> {
        let p = partition(mailbox);
        let range = Range {
            prefix: Some(prefix.to_string()),
            start: Some(from.to_string()),
            end: Some(to.to_string()),
            ..Default::default()
        };
        let items = self.store.range(self.user(), &p, &range).await?;
        self.store.delete_items(self.user(), &p, &items).await?;
        Ok(())
    }

    async fn put_snapshot(&self, mailbox: &str, name: &str, bytes: Vec<u8>) -> Result<(), LogError> {
        let key = snapshot_blob(mailbox, name);
        // Sealed under a key derived from the secret key, which survives a
        // master-key rotation (rotation re-encrypts items, not blobs).
        let sealed = crate::crypto::BlobEncryptor::seal_all(&self.keys.snapshot_key(), key.as_bytes(), &bytes);
        self.store.put_blob_bytes(self.user(), &key, sealed.into()).await?;
        Ok(())
    }

    async fn get_snapshot(&self, mailbox: &str, name: &str) -> Result<Option<Vec<u8>>, LogError> {
        let key = snapshot_blob(mailbox, name);
        match self.store.get_blob_bytes(self.user(), &key).await? {
            Some(sealed) => crate::crypto::BlobDecryptor::open_all(&self.keys.snapshot_key(), key.as_bytes(), &sealed)
                .map(Some)
                .map_err(|e| LogError::Corrupt(format!("{key}: {e}"))),
            None => Ok(None),
        }
    }

    async fn delete_snapshot(&self, mailbox: &str, name: &str) -> Result<(), LogError> {
        self.store.delete_blob(self.user(), &snapshot_blob(mailbox, name)).await?;
        Ok(())
    }
}
