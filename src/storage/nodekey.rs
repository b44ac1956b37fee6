//! Node identities derived from the cluster secret and the node's name.
//!
//! Garage identifies a node by an ed25519 public key that it normally
//! generates at random on first start; a new cluster then needs a human to
//! copy ids around before the layout can be written. We instead derive each
//! node's key pair from `(rpc secret, node name)`, so every node can compute
//! every peer's id from the configuration alone and apply the layout without
//! a human. This gives away nothing new: whoever holds the RPC secret can
//! already join the cluster as a full peer.
//!
//! This module only computes keys and writes Garage's `node_key` files; it
//! must not start anything.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use blake2::{Blake2b, Digest};
use sodiumoxide::crypto::sign::ed25519;

use super::StorageError;

/// A node's public id (ed25519 public key), as Garage sees it.
pub type NodeId = [u8; 32];

fn derived_keypair(secret_hex: &str, node_name: &str) -> (ed25519::PublicKey, ed25519::SecretKey) {
    let mut h = Blake2b::<blake2::digest::consts::U32>::new();
    h.update(b"estafette node key v1\0");
    h.update(secret_hex.trim().as_bytes());
    h.update(b"\0");
    h.update(node_name.as_bytes());
    let seed_bytes: [u8; 32] = h.finalize().into();
    // libsodium wants its one-time init before first use; it is idempotent.
    let _ = sodiumoxide::init();
    let seed = ed25519::Seed(seed_bytes);
    ed25519::keypair_from_seed(&seed)
}

/// The id the node called `node_name` has in a cluster with this secret.
pub fn node_id(secret_hex: &str, node_name: &str) -> NodeId {
    let (pk, _) = derived_keypair(secret_hex, node_name);
    pk.0
}

/// Makes sure `metadata_dir/node_key` holds this node's derived key.
///
/// An existing key that differs means the directory belongs to another node
/// or another cluster: refuse rather than silently change identity.
pub fn install_node_key(metadata_dir: &Path, secret_hex: &str, node_name: &str) -> Result<(), StorageError> {
    let (pk, sk) = derived_keypair(secret_hex, node_name);
    std::fs::create_dir_all(metadata_dir).map_err(|e| StorageError::io(metadata_dir, e))?;
    let key_file = metadata_dir.join("node_key");
    match std::fs::read(&key_file) {
        Ok(existing) if existing == sk.0[..] => return Ok(()),
        Ok(_) => {
            return Err(StorageError::Setup(format!(
                "{} holds another node's key: this metadata directory belongs to a node other than `{node_name}` \
                 or to a cluster with another RPC secret",
                key_file.display()
            )))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(StorageError::io(&key_file, e)),
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&key_file)
        .map_err(|e| StorageError::io(&key_file, e))?;
    f.write_all(&sk.0[..]).map_err(|e| StorageError::io(&key_file, e))?;
    let pub_file = metadata_dir.join("node_key.pub");
    std::fs::write(&pub_file, pk.0).map_err(|e| StorageError::io(&pub_file, e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_stable_and_distinct() {
        let s = "11".repeat(32);
        assert_eq!(node_id(&s, "a"), node_id(&s, "a"));
        assert_ne!(node_id(&s, "a"), node_id(&s, "b"));
        assert_ne!(node_id(&s, "a"), node_id(&"22".repeat(32), "a"));
    }

    #[test]
    fn refuses_a_foreign_key() {
        let dir = tempfile::tempdir().unwrap();
        let s = "11".repeat(32);
        install_node_key(dir.path(), &s, "a").unwrap();
        install_node_key(dir.path(), &s, "a").unwrap();
        let e = install_node_key(dir.path(), &s, "b").unwrap_err().to_string();
        assert!(e.contains("node_key"), "{e}");
    }
}
