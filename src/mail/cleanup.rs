//! Reclaiming space: deleting a mailbox's log, checkpoints and metadata,
//! and those of its message bodies no other mailbox (nor a queued
//! delivery) refers to (bodies are shared by COPY).
//!
//! These are whole-user scans, for mailbox deletion and maintenance, never
//! on a request path.

use std::collections::HashSet;
use std::sync::Arc;

use crate::accounts::UserKeys;
use crate::storage::{Range, Store, StorageError};

/// Deletes every item of a partition.
async fn clear_partition(store: &Store, keys: &UserKeys, partition: &str) -> Result<usize, StorageError> {
    let items = store.range(&keys.user, partition, &Range::default()).await?;
    store.delete_items(&keys.user, partition, &items).await?;
    Ok(items.len())
}

/// Deletes the stored state of a mailbox (after it left the mailbox list):
/// its log, checkpoints and message metadata; then the bodies nothing else
/// refers to. Returns the number of bodies deleted.
pub async fn delete_mailbox_data(store: &Store, keys: &Arc<UserKeys>, mailbox: &str) -> Result<usize, StorageError> {
    let meta = format!("meta/{mailbox}");
    let bodies: Vec<String> = store
        .range(&keys.user, &meta, &Range::default())
        .await?
        .into_iter()
        .map(|it| format!("msg/{}", it.sort_key))
        .collect();
    clear_partition(store, keys, &format!("log/{mailbox}")).await?;
    clear_partition(store, keys, &meta).await?;
    for snapshot in store.list_blobs(&keys.user, &format!("ckpt/{mailbox}/")).await? {
        store.delete_blob(&keys.user, &snapshot).await?;
    }
    // This mailbox's bodies that nothing else refers to (COPY shares them).
    let referenced = references(store, keys, &[mailbox]).await?;
    let mut deleted = 0;
    for body in bodies {
        if !referenced.contains(&body) {
            store.delete_blob(&keys.user, &body).await?;
            deleted += 1;
        }
    }
    Ok(deleted)
}

/// Every body a mailbox's metadata or a queued delivery refers to.
async fn references(store: &Store, keys: &Arc<UserKeys>, ignore: &[&str]) -> Result<HashSet<String>, StorageError> {
    let mut referenced = HashSet::new();
    for it in store.range(&keys.user, "incoming", &Range::default()).await? {
        referenced.insert(format!("msg/{}", it.sort_key));
    }
    for partition in store.list_partitions(&keys.user).await? {
        let Some(mailbox) = partition.strip_prefix("meta/") else { continue };
        if ignore.contains(&mailbox) {
            continue;
        }
        for it in store.range(&keys.user, &partition, &Range::default()).await? {
            referenced.insert(format!("msg/{}", it.sort_key));
        }
    }
    Ok(referenced)
}
