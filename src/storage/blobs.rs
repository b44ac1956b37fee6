//! Blobs: opaque byte strings (a few bytes to tens of MiB), scoped by user,
//! stored as Garage S3 objects so Garage replicates, deduplicates, repairs
//! and garbage-collects them like any object of its own.
//!
//! Garage has no public in-process PUT, so this is the S3 PutObject path on
//! the model layer (what garage_api_s3's `save_stream` does), reordered for
//! latency: our keys are unique, so there is no pre-read of the object, and
//! the Uploading object, the version, the block refs and the blocks are
//! written in one concurrent round; then the object is marked Complete.
//! That is 1 round trip for a body under 3 KiB (stored inline in the object
//! table) and 2 above. A failed or cancelled put is cleaned up as Garage
//! does (version Aborted), plus explicit tombstones for the version and its
//! block refs, since with the overlap the Uploading entry may never have
//! landed. Reads fetch blocks by hash, local replica first, streamed with
//! a bounded read-ahead so a reader holds at most a few blocks in memory.
//!
//! This module must not interpret the bytes it stores.

use std::pin::Pin;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures::stream::{FuturesUnordered, Stream, StreamExt, TryStreamExt};
use garage_block::manager::INLINE_THRESHOLD;
use garage_model::garage::Garage;
use garage_model::s3::block_ref_table::BlockRef;
use garage_model::s3::object_table::{
    Object, ObjectVersion, ObjectVersionData, ObjectVersionEncryption, ObjectVersionMeta, ObjectVersionMetaInner,
    ObjectVersionState,
};
use garage_model::s3::version_table::{Version, VersionBacklink, VersionBlock, VersionBlockKey};
use garage_table::EmptyKey;
use garage_util::data::{blake2sum, gen_uuid, Hash, Uuid};
use garage_util::time::now_msec;
use md5::{Digest, Md5};

use super::{Store, StorageError, UserId};

/// A blob being read: its size, then its bytes in order.
pub struct BlobReader {
    pub size: u64,
    pub chunks: Pin<Box<dyn Stream<Item = Result<Bytes, StorageError>> + Send>>,
}

impl BlobReader {
    /// Collects the whole blob (for small blobs and tests; large bodies
    /// should be streamed).
    pub async fn to_vec(self) -> Result<Vec<u8>, StorageError> {
        let mut out = Vec::with_capacity(self.size as usize);
        let mut chunks = self.chunks;
        while let Some(c) = chunks.next().await {
            out.extend_from_slice(&c?);
        }
        if out.len() as u64 != self.size {
            return Err(StorageError::Corrupt(format!("blob is {} bytes, expected {}", out.len(), self.size)));
        }
        Ok(out)
    }
}

/// Blocks written concurrently per put (each one 3 RPCs: block, ref, version).
const PUT_PARALLELISM: usize = 3;
/// Blocks fetched ahead of the reader.
const READ_AHEAD: usize = 2;

fn plain() -> ObjectVersionEncryption {
    ObjectVersionEncryption::Plaintext {
        inner: ObjectVersionMetaInner {
            headers: vec![],
            checksum: None,
            checksum_type: None,
        },
    }
}

/// What a failed put must undo; undone on drop unless disarmed.
struct PutCleanup {
    garage: Arc<Garage>,
    bucket: Uuid,
    key: String,
    version: Uuid,
    timestamp: u64,
    hashes: Vec<Hash>,
    armed: bool,
}

impl Drop for PutCleanup {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let garage = self.garage.clone();
        let (bucket, key, version, timestamp) = (self.bucket, self.key.clone(), self.version, self.timestamp);
        let hashes = std::mem::take(&mut self.hashes);
        // Drop may run outside a runtime (process exit); then Garage's own
        // repair of incomplete uploads is the fallback.
        let Ok(rt) = tokio::runtime::Handle::try_current() else { return };
        rt.spawn(async move {
            let aborted = Object::new(
                bucket,
                key.clone(),
                vec![ObjectVersion {
                    uuid: version,
                    timestamp,
                    state: ObjectVersionState::Aborted,
                }],
            );
            let dead_version = Version::new(version, VersionBacklink::Object { bucket_id: bucket, key }, true);
            let dead_refs: Vec<BlockRef> = hashes
                .iter()
                .map(|h| BlockRef {
                    block: *h,
                    version,
                    deleted: true.into(),
                })
                .collect();
            let (a, b, c) = futures::join!(
                garage.object_table.insert(&aborted),
                garage.version_table.insert(&dead_version),
                garage.block_ref_table.insert_many(&dead_refs),
            );
            for r in [a, b, c] {
                if let Err(e) = r {
                    log::warn!("cleanup of a failed blob write: {e}");
                }
            }
        });
    }
}

impl Store {
    /// Stores `body` under `key`, replacing any previous blob there. Ok means
    /// a write quorum holds every byte. Memory use is bounded by a few
    /// blocks (1 MiB each), whatever the size.
    pub async fn put_blob<S>(&self, user: &UserId, key: &str, body: S) -> Result<u64, StorageError>
    where
        S: Stream<Item = std::io::Result<Bytes>> + Send + Unpin,
    {
        let key = user.scoped(key);
        let block_size = self.garage.config.block_size;
        let mut body = Chunker {
            body: body.map_err(|e| StorageError::Invalid(format!("reading the blob to store: {e}"))),
            leftover: None,
            block_size,
        };
        let mut md5 = Md5::new();
        let mut size = 0u64;

        let first = body.next_block().await?;
        size += first.len() as u64;
        md5.update(&first);
        if first.len() < INLINE_THRESHOLD {
            // One quorum write: the whole body sits in the object table.
            let version = ObjectVersion {
                uuid: gen_uuid(),
                timestamp: now_msec(),
                state: ObjectVersionState::Complete(ObjectVersionData::Inline(
                    ObjectVersionMeta {
                        size,
                        etag: hex::encode(md5.finalize()),
                        encryption: plain(),
                    },
                    first.to_vec(),
                )),
            };
            self.garage
                .object_table
                .insert(&Object::new(self.bucket, key, vec![version]))
                .await?;
            return Ok(size);
        }

        let version_id = gen_uuid();
        let timestamp = now_msec();
        let mut cleanup = PutCleanup {
            garage: self.garage.clone(),
            bucket: self.bucket,
            key: key.clone(),
            version: version_id,
            timestamp,
            hashes: vec![],
            armed: true,
        };
        let uploading = Object::new(
            self.bucket,
            key.clone(),
            vec![ObjectVersion {
                uuid: version_id,
                timestamp,
                state: ObjectVersionState::Uploading {
                    multipart: false,
                    checksum_algorithm: None,
                    encryption: plain(),
                },
            }],
        );
        let garage = self.garage.clone();
        let mut inflight = FuturesUnordered::new();
        inflight.push(Box::pin(async move { garage.object_table.insert(&uploading).await })
            as Pin<Box<dyn std::future::Future<Output = Result<(), garage_util::error::Error>> + Send>>);

        let first_hash = blake2sum(&first);
        let mut block = Some(first);
        let mut offset = 0u64;
        while let Some(data) = block.take() {
            let hash = blake2sum(&data);
            cleanup.hashes.push(hash);
            inflight.push(Box::pin(write_block(
                self.garage.clone(),
                self.bucket,
                key.clone(),
                version_id,
                offset,
                hash,
                data.clone(),
            )));
            offset += data.len() as u64;
            while inflight.len() > PUT_PARALLELISM {
                if let Some(r) = inflight.next().await {
                    r?;
                }
            }
            let next = body.next_block().await?;
            if !next.is_empty() {
                size += next.len() as u64;
                md5.update(&next);
                block = Some(next);
            }
        }
        while let Some(r) = inflight.next().await {
            r?;
        }

        let complete = Object::new(
            self.bucket,
            key,
            vec![ObjectVersion {
                uuid: version_id,
                timestamp,
                state: ObjectVersionState::Complete(ObjectVersionData::FirstBlock(
                    ObjectVersionMeta {
                        size,
                        etag: hex::encode(md5.finalize()),
                        encryption: plain(),
                    },
                    first_hash,
                )),
            }],
        );
        // If this fails after reaching some replicas, the cleanup's Aborted
        // wins the merge, so no reader ever sees a half-written blob.
        self.garage.object_table.insert(&complete).await?;
        cleanup.armed = false;
        Ok(size)
    }

    /// Convenience for bodies already in memory.
    pub async fn put_blob_bytes(&self, user: &UserId, key: &str, body: Bytes) -> Result<u64, StorageError> {
        self.put_blob(user, key, futures::stream::iter([Ok(body)])).await
    }

    /// Opens a blob for reading; None if there is none under `key`.
    /// Whether a complete blob is stored under `key` (one quorum read of
    /// the object; nothing of the body is read).
    pub async fn blob_exists(&self, user: &UserId, key: &str) -> Result<bool, StorageError> {
        let key = user.scoped(key);
        let Some(object) = self.garage.object_table.get(&self.bucket, &key).await? else {
            return Ok(false);
        };
        Ok(object.versions().iter().rev().find(|v| v.is_complete()).is_some_and(|v| {
            matches!(
                v.state,
                ObjectVersionState::Complete(ObjectVersionData::Inline(..) | ObjectVersionData::FirstBlock(..))
            )
        }))
    }

    pub async fn get_blob(&self, user: &UserId, key: &str) -> Result<Option<BlobReader>, StorageError> {
        let key = user.scoped(key);
        let Some(object) = self.garage.object_table.get(&self.bucket, &key).await? else {
            return Ok(None);
        };
        let Some(v) = object.versions().iter().rev().find(|v| v.is_complete()) else {
            return Ok(None);
        };
        let (size, first_hash) = match &v.state {
            ObjectVersionState::Complete(ObjectVersionData::Inline(meta, bytes)) => {
                let chunk = Bytes::from(bytes.clone());
                return Ok(Some(BlobReader {
                    size: meta.size,
                    chunks: Box::pin(futures::stream::iter([Ok(chunk)])),
                }));
            }
            ObjectVersionState::Complete(ObjectVersionData::FirstBlock(meta, h)) => (meta.size, *h),
            _ => return Ok(None), // a delete marker
        };
        // The first block is known from the object: fetch it while the
        // version (the block list) is read, saving a round trip.
        let garage = self.garage.clone();
        let (version, first) = futures::join!(
            self.garage.version_table.get(&v.uuid, &EmptyKey),
            fetch_block(garage.clone(), first_hash, None)
        );
        let version = version?.ok_or_else(|| StorageError::Unavailable("blob version not found yet".into()))?;
        if version.deleted.get() {
            return Err(StorageError::Unavailable("blob replaced while opening it".into()));
        }
        let blocks: Vec<VersionBlock> = version.blocks.items().iter().map(|(_, b)| *b).collect();
        if blocks.first().map(|b| b.hash) != Some(first_hash) {
            return Err(StorageError::Corrupt("blob block list does not start with its first block".into()));
        }
        let first = first?;
        if first.len() as u64 != blocks[0].size {
            return Err(StorageError::Corrupt("first block has the wrong size".into()));
        }
        let rest = futures::stream::iter(blocks.into_iter().skip(1))
            .map(move |b| fetch_block(garage.clone(), b.hash, Some(b.size)))
            .buffered(READ_AHEAD);
        Ok(Some(BlobReader {
            size,
            chunks: Box::pin(futures::stream::iter([Ok(first)]).chain(rest)),
        }))
    }

    /// Convenience: the whole blob in memory.
    pub async fn get_blob_bytes(&self, user: &UserId, key: &str) -> Result<Option<Vec<u8>>, StorageError> {
        match self.get_blob(user, key).await? {
            Some(r) => Ok(Some(r.to_vec().await?)),
            None => Ok(None),
        }
    }

    /// Deletes the blob under `key` (nothing happens if there is none). Its
    /// blocks are freed by Garage's GC once no other object refers to them.
    pub async fn delete_blob(&self, user: &UserId, key: &str) -> Result<(), StorageError> {
        let key = user.scoped(key);
        let Some(object) = self.garage.object_table.get(&self.bucket, &key).await? else {
            return Ok(());
        };
        if !object.versions().iter().any(|v| v.is_data()) {
            return Ok(());
        }
        let after = object.versions().iter().map(|v| v.timestamp).max().unwrap_or(0) + 1;
        let marker = Object::new(
            self.bucket,
            key,
            vec![ObjectVersion {
                uuid: gen_uuid(),
                timestamp: after.max(now_msec()),
                state: ObjectVersionState::Complete(ObjectVersionData::DeleteMarker),
            }],
        );
        self.garage.object_table.insert(&marker).await?;
        Ok(())
    }
}

/// Cuts the incoming body into blocks of exactly `block_size` bytes (the
/// last one shorter), whatever the sizes of the chunks it arrives in.
struct Chunker<S> {
    body: S,
    leftover: Option<Bytes>,
    block_size: usize,
}

impl<S> Chunker<S>
where
    S: Stream<Item = Result<Bytes, StorageError>> + Unpin,
{
    /// The next block; empty at the end of the body.
    async fn next_block(&mut self) -> Result<Bytes, StorageError> {
        let mut buf = BytesMut::new();
        loop {
            let chunk = match self.leftover.take() {
                Some(c) => c,
                None => match self.body.next().await {
                    Some(c) => c?,
                    None => return Ok(buf.freeze()),
                },
            };
            let room = self.block_size - buf.len();
            if chunk.len() > room {
                buf.extend_from_slice(&chunk[..room]);
                self.leftover = Some(chunk.slice(room..));
                return Ok(buf.freeze());
            }
            if buf.is_empty() && chunk.len() == self.block_size {
                return Ok(chunk); // no copy for well-sized chunks
            }
            buf.extend_from_slice(&chunk);
            if buf.len() == self.block_size {
                return Ok(buf.freeze());
            }
        }
    }
}

/// Writes one block with its ref and its entry in the version, concurrently.
async fn write_block(
    garage: Arc<Garage>,
    bucket: Uuid,
    key: String,
    version_id: Uuid,
    offset: u64,
    hash: Hash,
    data: Bytes,
) -> Result<(), garage_util::error::Error> {
    let mut version = Version::new(version_id, VersionBacklink::Object { bucket_id: bucket, key }, false);
    version.blocks.put(
        VersionBlockKey { part_number: 1, offset },
        VersionBlock {
            hash,
            size: data.len() as u64,
        },
    );
    let block_ref = BlockRef {
        block: hash,
        version: version_id,
        deleted: false.into(),
    };
    futures::try_join!(
        garage.block_manager.rpc_put_block(hash, data, true, None),
        garage.version_table.insert(&version),
        garage.block_ref_table.insert(&block_ref),
    )?;
    Ok(())
}

/// Fetches one block (local replica first) and checks its size.
async fn fetch_block(garage: Arc<Garage>, hash: Hash, size: Option<u64>) -> Result<Bytes, StorageError> {
    let mut stream = garage.block_manager.rpc_get_block_streaming(&hash, None).await?;
    let mut buf = BytesMut::with_capacity(size.unwrap_or(0) as usize);
    while let Some(part) = stream.next().await {
        let part = part.map_err(|e| StorageError::Unavailable(format!("reading block {hash:?}: {e}")))?;
        buf.extend_from_slice(&part);
    }
    if let Some(s) = size {
        if buf.len() as u64 != s {
            return Err(StorageError::Corrupt(format!("block {hash:?} is {} bytes, expected {s}", buf.len())));
        }
    }
    Ok(buf.freeze())
}
