//! The incoming queue: mail delivered while its recipient's keys are not
//! at hand, and its filing into INBOX later.
//!
//! Delivery needs only the recipient's public key: the message is sealed
//! with a fresh random key and stored as the body blob it will keep
//! (`msg/<id>`), and an item in partition `incoming` holds that key, the
//! arrival time and the parsed metadata (envelope, structure, size: all the
//! work that needs no secret key, done while the message is at hand),
//! sealed to the public key. Both writes are quorum writes, made
//! concurrently; LMTP answers 250 once both are done. Queue items sort by
//! arrival, so filing in key order gives UIDs in arrival order.
//!
//! Filing (at the recipient's next login, or at once when their keys are
//! unlocked on the delivering node) opens each item, checks the body is
//! there, writes the metadata under the master key, then sequences the
//! Appends of a whole batch in arrival order (one sequencer entry), with
//! operation ids derived from the message ids (so two nodes filing the
//! same message at once apply it once), and deletes the items.
//!
//! When the delivering node holds the recipient's keys (they have a session
//! there), the metadata is written together with the queue item, before
//! 250, and the Append is sequenced straight after: the message reaches
//! INBOX without being read back. The queue item is then only deleted by
//! the next scan.

use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use serde::{Deserialize, Serialize};

use super::mailboxes::INBOX_ID;
use super::message;
use super::model::{MessageId, NodeSlot, Op};
use super::service::MailService;
use crate::accounts::UserKeys;
use crate::crypto::{BlobEncryptor, MasterKey, PublicKey};
use crate::storage::{Range, Store, StorageError, UserId};

const PARTITION: &str = "incoming";
/// A queue entry whose body is still missing after this long is an orphan.
const ORPHAN_AFTER_SECS: i64 = 3600;

#[derive(Serialize, Deserialize)]
struct Envelope {
    message: MessageId,
    blob_key: [u8; 32],
    internal_date: i64,
    /// The node that files this message itself (it held the keys at
    /// delivery); other nodes' scans leave it alone for a while.
    #[serde(default)]
    filer: Option<NodeSlot>,
    /// Parsed at delivery (absent in items from before, and when `filer`
    /// wrote the metadata itself).
    #[serde(default)]
    meta: Option<message::MessageMeta>,
}

/// How long other nodes leave a delivery to the node filing it itself;
/// after that (that node died, or failed), any scan files it.
pub const FILER_GRACE_SECS: i64 = 20;

/// What a queue scan did.
pub struct Scan {
    pub filed: usize,
    /// Deliveries left for later (to the node filing them, or whose body
    /// is still being written): scan again after the grace.
    pub waiting: bool,
    /// Messages that could not be filed (storage or sequencer unavailable):
    /// scan again soon.
    pub failed: usize,
}

/// What [`deliver`] stored.
pub struct Delivered {
    pub message: MessageId,
    /// Its INBOX metadata was written too (the recipient's keys were at
    /// hand): [`file_delivered`] can sequence it at once.
    pub prepared: bool,
}

/// Stores a message for `user`, sealed to `public`. Ok once a quorum holds
/// it: the message can no longer be lost. With `keys` (the recipient's,
/// unlocked on this node) its INBOX metadata is written at the same time,
/// and the result says it is ready for [`file_delivered`].
pub async fn deliver(
    store: &Store,
    user: &UserId,
    public: &PublicKey,
    raw: &[u8],
    internal_date: i64,
    keys: Option<&Arc<UserKeys>>,
    filer: NodeSlot,
) -> Result<Delivered, StorageError> {
    let id: MessageId = rand::random();
    let key = MasterKey::generate();
    let blob_name = format!("msg/{id:016x}");
    let sealed = BlobEncryptor::seal_all(&key, blob_name.as_bytes(), raw);
    let envelope = Envelope {
        message: id,
        blob_key: *key.to_bytes(),
        internal_date,
        filer: keys.map(|_| filer),
        // Without the keys, parse now: filing then needs no body read.
        meta: keys.is_none().then(|| message::parse_meta(raw, internal_date)),
    };
    let env_bytes = rmp_serde::to_vec_named(&envelope).map_err(|e| StorageError::Invalid(e.to_string()))?;
    let item = public.seal(&env_bytes);
    let sk = queue_key(chrono::Utc::now().timestamp_millis(), id);
    // Metadata for a message nobody sequences is never read: harmless if
    // the delivery fails.
    let meta = async {
        match keys {
            Some(k) => message::put_parsed(store, k, INBOX_ID, id, &key, raw, internal_date).await.map(Some),
            None => Ok(None),
        }
    };
    let (blob, queued, meta) = futures::join!(
        store.put_blob_bytes(user, &blob_name, Bytes::from(sealed)),
        store.insert(user, PARTITION, &sk, item, None),
        meta,
    );
    blob?;
    queued?;
    // The delivery stands even if the metadata failed: the scan files it.
    let prepared = match meta {
        Ok(m) => m.is_some(),
        Err(e) => {
            log::warn!("writing the metadata of a delivery: {e}; the queue scan will file it");
            false
        }
    };
    Ok(Delivered { message: id, prepared })
}

/// The queue item's sort key: arrival time first, so a range read lists
/// the queue in the order deliveries were acknowledged.
fn queue_key(arrival_ms: i64, id: MessageId) -> String {
    format!("{:013x}-{id:016x}", arrival_ms.max(0))
}

/// Sequences the Append of a message [`deliver`] prepared. Its queue item
/// stays until the next scan, which sees the message filed and deletes it.
pub async fn file_delivered(service: &Arc<MailService>, keys: &Arc<UserKeys>, message: MessageId) -> Result<(), StorageError> {
    // The op id is the message id: a scan filing it too appends it once.
    let op = (message, Op::Append { message, flags: vec![] });
    match service.submit(keys, INBOX_ID, vec![op]).await {
        Ok(_) => {
            service.note_filed(&keys.user, message);
            Ok(())
        }
        Err(e) => {
            service.note_direct_failure(&keys.user, message);
            Err(StorageError::Unavailable(e.to_string()))
        }
    }
}

/// Files everything queued for the user into INBOX; returns how many
/// messages were filed. Safe to run on several nodes at once.
pub async fn file_incoming(service: &Arc<MailService>, store: &Store, keys: &Arc<UserKeys>) -> Result<usize, StorageError> {
    let s = scan(service, store, keys, true).await?;
    if s.failed > 0 {
        return Err(StorageError::Unavailable(format!("{} queued message(s) could not be filed yet", s.failed)));
    }
    Ok(s.filed)
}

/// [`file_incoming`], also saying what was left for later. Items are
/// prepared several at once, then appended in arrival order in batches
/// (one sequencer entry each); one that fails does not stop the others.
/// With `all`, deliveries another node is filing itself are filed too
/// (a login: what was acknowledged must be in the next SELECT; racing
/// filers append a message once).
pub async fn scan(service: &Arc<MailService>, store: &Store, keys: &Arc<UserKeys>, all: bool) -> Result<Scan, StorageError> {
    let items = store.range(&keys.user, PARTITION, &Range::default()).await?;
    let mut scan = Scan { filed: 0, waiting: false, failed: 0 };
    let mut first_error = None;
    for batch in items.chunks(APPEND_BATCH) {
        // `buffered` keeps the queue's (arrival) order.
        let prepared: Vec<Result<Step, StorageError>> = futures::stream::iter(batch.iter().cloned())
            .map(|it| prepare(service, store, keys, it, all))
            .buffered(PREPARE_AT_ONCE)
            .collect()
            .await;
        let mut ready = vec![];
        for r in prepared {
            match r {
                Ok(Step::Ready(message, item)) => ready.push((message, item)),
                Ok(Step::Waiting) => scan.waiting = true,
                Ok(Step::Done) => {}
                Err(e) => {
                    scan.failed += 1;
                    first_error.get_or_insert(e);
                }
            }
        }
        if ready.is_empty() {
            continue;
        }
        // The op id is the message id: racing filers append each once.
        let ops = ready.iter().map(|(m, _)| (*m, Op::Append { message: *m, flags: vec![] })).collect();
        if let Err(e) = service.submit(keys, INBOX_ID, ops).await {
            scan.failed += ready.len();
            first_error.get_or_insert(StorageError::Unavailable(e.to_string()));
            continue;
        }
        scan.filed += ready.len();
        for (m, _) in &ready {
            service.note_filed(&keys.user, *m);
        }
        let done: Vec<crate::storage::Item> = ready.into_iter().map(|(_, it)| it).collect();
        if let Err(e) = store.delete_items(&keys.user, PARTITION, &done).await {
            // Filed; the next scan sees them filed and deletes the items.
            log::debug!("deleting filed queue items: {e}");
        }
    }
    if let Some(e) = first_error {
        log::warn!("filing queued mail: {} message(s) failed, first: {e}", scan.failed);
    }
    Ok(scan)
}

/// Queue items prepared at once by one scan.
const PREPARE_AT_ONCE: usize = 8;
/// Appends sequenced together (one sequencer entry).
const APPEND_BATCH: usize = 256;

enum Step {
    /// Metadata written: append it (then delete the queue item).
    Ready(MessageId, crate::storage::Item),
    /// Left to the node filing it, or its body is not there yet.
    Waiting,
    /// Nothing to do, or only the item to delete.
    Done,
}

async fn prepare(
    service: &Arc<MailService>,
    store: &Store,
    keys: &Arc<UserKeys>,
    it: crate::storage::Item,
    all: bool,
) -> Result<Step, StorageError> {
    let Some(sealed) = it.values.first() else { return Ok(Step::Done) };
    let env: Envelope = match keys.unseal(sealed).ok().and_then(|b| rmp_serde::from_slice(&b).ok()) {
        Some(e) => e,
        None => {
            log::error!("an incoming item of a user does not open with their key; left in place");
            return Ok(Step::Done);
        }
    };
    if service.was_filed(&keys.user, env.message) {
        store.delete(&keys.user, PARTITION, &it.sort_key, &it.token).await?;
        return Ok(Step::Done);
    }
    // A delivery its node files itself (this one too, unless it failed) is
    // left alone for a while; a later scan deletes its item.
    let age = chrono::Utc::now().timestamp() - env.internal_date;
    let mine_failed = env.filer == Some(service.node_slot()) && service.direct_failure(&keys.user, env.message);
    if !all && env.filer.is_some() && age < FILER_GRACE_SECS && !mine_failed {
        return Ok(Step::Waiting);
    }
    let key = MasterKey::from_bytes(env.blob_key);
    let blob_name = format!("msg/{:016x}", env.message);
    match env.meta {
        // Parsed at delivery: the body need only be there, not read.
        Some(meta) => {
            if !store.blob_exists(&keys.user, &blob_name).await? {
                return without_body(store, &keys.user, &it, age).await;
            }
            message::put_meta(store, keys, INBOX_ID, env.message, &key, &meta).await?;
        }
        // The metadata was written by the delivering node (or the item is
        // from before metadata travelled with it): it is parsed again
        // from the body, which also checks the body is there.
        None => {
            let Some(reader) = store.get_blob(&keys.user, &blob_name).await? else {
                return without_body(store, &keys.user, &it, age).await;
            };
            let mut dec = crate::crypto::BlobDecryptor::new(&key, blob_name.as_bytes());
            let mut raw = Vec::with_capacity(reader.size as usize);
            let mut chunks = reader.chunks;
            while let Some(c) = chunks.next().await {
                raw.extend(dec.push(&c?).map_err(|e| StorageError::Corrupt(e.to_string()))?);
            }
            dec.finish().map_err(|e| StorageError::Corrupt(e.to_string()))?;
            message::put_parsed(store, keys, INBOX_ID, env.message, &key, &raw, env.internal_date).await?;
        }
    }
    Ok(Step::Ready(env.message, it))
}

/// A queue entry whose body is not there. The body and the entry are
/// written concurrently: a delivery may still be under way (not yet
/// acknowledged). Only an old entry without a body is an orphan (the body
/// write failed, LMTP answered 451 and the sender retried): dropped then.
async fn without_body(store: &Store, user: &UserId, it: &crate::storage::Item, age: i64) -> Result<Step, StorageError> {
    if age > ORPHAN_AFTER_SECS {
        store.delete(user, PARTITION, &it.sort_key, &it.token).await?;
        return Ok(Step::Done);
    }
    Ok(Step::Waiting)
}

/// Messages waiting in the queue (for tests and status).
pub async fn queued(store: &Store, user: &UserId) -> Result<usize, StorageError> {
    Ok(store.range(user, PARTITION, &Range::default()).await?.len())
}
