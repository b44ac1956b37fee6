//! A user's keys as the layers above use them, and their record in storage.
//!
//! Convention (docs/encryption.md): every item value a user owns, except
//! the key record itself, is sealed with the master key and the context
//! `<partition>\0<sort key>`; every blob is sealed with its own random key,
//! kept inside an item. Rotating the master key then re-encrypts items
//! only, never message bodies.

use crate::crypto::{self, CryptoError, KeyBundle, LockedKeys, MasterKey, PublicKey};
use crate::storage::{CausalityToken, Store, StorageError, UserId};

/// Item partition and sort key of the key record (clear: it holds only the
/// public key, KDF parameters and the sealed bundle).
pub const KEYS_PARTITION: &str = "keys";
const BUNDLE_KEY: &str = "bundle";

/// The unlocked keys of one user.
pub struct UserKeys {
    pub user: UserId,
    bundle: KeyBundle,
}

fn item_context(partition: &str, sort_key: &str) -> Vec<u8> {
    let mut c = partition.as_bytes().to_vec();
    c.push(0);
    c.extend_from_slice(sort_key.as_bytes());
    c
}

impl UserKeys {
    pub(super) fn new(user: UserId, bundle: KeyBundle) -> Self {
        UserKeys { user, bundle }
    }

    /// The keys as bytes, to hand them to the node sequencing this user's
    /// mailboxes (over the encrypted node RPC, while the user has sessions).
    pub fn export(&self) -> zeroize::Zeroizing<Vec<u8>> {
        self.bundle.to_bytes()
    }

    /// Keys received from another node.
    pub fn import(user: UserId, bytes: &[u8]) -> Result<UserKeys, CryptoError> {
        Ok(UserKeys { user, bundle: KeyBundle::from_bytes(bytes)? })
    }

    /// Seals an item value for (partition, sort key).
    pub fn seal_item(&self, partition: &str, sort_key: &str, plaintext: &[u8]) -> Vec<u8> {
        crypto::seal_value(&self.bundle.master, &item_context(partition, sort_key), plaintext)
    }

    /// Opens an item value; during a rotation, values still under the
    /// previous master key open too.
    pub fn open_item(&self, partition: &str, sort_key: &str, sealed: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let ctx = item_context(partition, sort_key);
        match crypto::open_value(&self.bundle.master, &ctx, sealed) {
            Ok(p) => Ok(p),
            Err(e) => match &self.bundle.previous {
                Some(prev) => crypto::open_value(prev, &ctx, sealed).map_err(|_| e),
                None => Err(e),
            },
        }
    }

    /// Whether `sealed` is still under the previous master key.
    pub(super) fn needs_reseal(&self, partition: &str, sort_key: &str, sealed: &[u8]) -> bool {
        crypto::open_value(&self.bundle.master, &item_context(partition, sort_key), sealed).is_err()
    }

    /// The key for opaque ids derived from names (stable across rotation).
    pub fn seal_key_for_names(&self) -> [u8; 32] {
        self.bundle.name_key()
    }

    /// The key mailbox snapshots are sealed with (stable across rotation).
    pub fn snapshot_key(&self) -> MasterKey {
        MasterKey::from_bytes(crate::crypto::keyed_hash(&self.bundle.name_key(), &[b"snapshots"]))
    }

    /// A fresh random key for one blob (a message body).
    pub fn new_blob_key() -> MasterKey {
        MasterKey::generate()
    }

    pub fn public(&self) -> PublicKey {
        self.bundle.public()
    }

    /// Opens what was sealed to this user's public key (offline delivery).
    pub fn unseal(&self, sealed: &[u8]) -> Result<Vec<u8>, CryptoError> {
        self.bundle.unseal(sealed)
    }
}

/// The stored key record, with the token to replace it, or None. Several
/// siblings (concurrent password changes) are all returned; the caller
/// keeps the one the password opens.
pub async fn load(store: &Store, user: &UserId) -> Result<Option<(Vec<LockedKeys>, CausalityToken)>, StorageError> {
    let Some(item) = store.get(user, KEYS_PARTITION, BUNDLE_KEY).await? else {
        return Ok(None);
    };
    if item.is_deleted() {
        return Ok(None);
    }
    let mut records = vec![];
    for v in &item.values {
        let r: LockedKeys = serde_json::from_slice(v)
            .map_err(|e| StorageError::Corrupt(format!("key record does not parse: {e}")))?;
        records.push(r);
    }
    Ok(Some((records, item.token)))
}

pub async fn save(
    store: &Store,
    user: &UserId,
    record: &LockedKeys,
    token: Option<&CausalityToken>,
) -> Result<(), StorageError> {
    let bytes = serde_json::to_vec(record).map_err(|e| StorageError::Invalid(e.to_string()))?;
    store.insert(user, KEYS_PARTITION, BUNDLE_KEY, bytes, token).await
}

/// Removes the key record (a withdrawn add, a finished deletion).
pub async fn remove(store: &Store, user: &UserId) -> Result<(), StorageError> {
    if let Some(item) = store.get(user, KEYS_PARTITION, BUNDLE_KEY).await? {
        if !item.is_deleted() {
            store.delete(user, KEYS_PARTITION, BUNDLE_KEY, &item.token).await?;
        }
    }
    Ok(())
}

/// The public key mail is sealed to while the user is offline.
pub async fn public_key(store: &Store, user: &UserId) -> Result<Option<PublicKey>, StorageError> {
    Ok(load(store, user).await?.and_then(|(r, _)| r.first().map(|r| r.public)))
}

/// Tries each record with the password (one Argon2 run each, usually one).
pub fn unlock_any(records: &[LockedKeys], password: &[u8]) -> Result<KeyBundle, CryptoError> {
    let mut last = CryptoError::WrongPassword;
    for r in records {
        match r.unlock(password) {
            Ok(b) => return Ok(b),
            Err(e) => last = e,
        }
    }
    Err(last)
}
