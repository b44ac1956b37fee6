//! Reclaiming space: deleting a mailbox's log, checkpoints and metadata,
//! and collecting message bodies no mailbox refers to any more (bodies are
//! shared by COPY, so they cannot be deleted with one mailbox).
//!
//! These are whole-user scans, for mailbox deletion and maintenance, never
//! on a request path.

use std::collections::HashSet;
use std::sync::Arc;

use crate::accounts::UserKeys;
use crate::storage::{ItemWrite, Range, Store, StorageError};

/// Deletes every item of a partition.
async fn clear_partition(store: &Store, keys: &UserKeys, partition: &str) -> Result<usize, StorageError> {
    let items = store.range(&keys.user, partition, &Range::default()).await?;
    for chunk in items.chunks(500) {
        let writes = chunk
            .iter()
            .map(|it| ItemWrite {
                partition: partition.to_string(),
                sort_key: it.sort_key.clone(),
                value: None,
                token: Some(it.token.clone()),
            })
            .collect();
        store.insert_batch(&keys.user, writes).await?;
    }
    Ok(items.len())
}

/// Deletes the stored state of a mailbox (after it left the mailbox list):
/// its log, checkpoints and message metadata; then the bodies nothing else
/// refers to. Returns the number of bodies deleted.
pub async fn delete_mailbox_data(store: &Store, keys: &Arc<UserKeys>, mailbox: &str) -> Result<usize, StorageError> {
    clear_partition(store, keys, &format!("log/{mailbox}")).await?;
    clear_partition(store, keys, &format!("meta/{mailbox}")).await?;
    for snapshot in store.list_blobs(&keys.user, &format!("ckpt/{mailbox}/")).await? {
        store.delete_blob(&keys.user, &snapshot).await?;
    }
    collect_bodies(store, keys, &[mailbox]).await
}

/// Deletes message bodies that no mailbox's metadata refers to. Mailboxes
/// in `ignore` count as gone even if the partition index still lists them.
pub async fn collect_bodies(store: &Store, keys: &Arc<UserKeys>, ignore: &[&str]) -> Result<usize, StorageError> {
    let mut referenced = HashSet::new();
    for partition in store.list_partitions(&keys.user).await? {
        let Some(mailbox) = partition.strip_prefix("meta/") else { continue };
        if ignore.contains(&mailbox) {
            continue;
        }
        for it in store.range(&keys.user, &partition, &Range::default()).await? {
            referenced.insert(format!("msg/{}", it.sort_key));
        }
    }
    let mut deleted = 0;
    for blob in store.list_blobs(&keys.user, "msg/").await? {
        if !referenced.contains(&blob) {
            store.delete_blob(&keys.user, &blob).await?;
            deleted += 1;
        }
    }
    Ok(deleted)
}
