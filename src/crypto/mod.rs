//! The key hierarchy and sealing, nothing else.
//!
//! ```text
//! password --Argon2id(salt, params)--> KEK --seals--> bundle { X25519 secret, master key }
//!                                                      public key: stored in the clear
//! values, blobs  --zstd--> XChaCha20-Poly1305 under the master key (or a per-message key)
//! mail for an offline user --> sealed box (X25519 + XSalsa20-Poly1305) to the public key
//! ```
//!
//! All primitives are RustCrypto's pure-Rust, libsodium-compatible crates
//! (argon2, chacha20poly1305, crypto_box, zeroize). Secret keys are zeroised
//! on drop. This module does no I/O and knows nothing of users or storage:
//! callers give it bytes and a context string that binds each ciphertext to
//! where it is stored, so ciphertexts cannot be swapped between places.

mod compress;
mod kdf;
mod keys;
mod stream;
mod value;

pub use kdf::{verify_password as kdf_verify, KdfParams};
pub use keys::{KeyBundle, LockedKeys, MasterKey, PublicKey};
pub use stream::{BlobDecryptor, BlobEncryptor, CHUNK_SIZE};
pub use value::{open_value, seal_value};

/// BLAKE2b-256 keyed with a 32-byte key over the concatenation of `parts`
/// (user ids, derived keys, the login cache's password check).
pub fn keyed_hash(key: &[u8; 32], parts: &[&[u8]]) -> [u8; 32] {
    use blake2::digest::Mac;
    let mut mac = <blake2::Blake2bMac<blake2::digest::consts::U32> as blake2::digest::KeyInit>::new_from_slice(key)
        .unwrap_or_else(|_| unreachable!("32-byte keys are valid BLAKE2b MAC keys"));
    for p in parts {
        mac.update(p);
    }
    mac.finalize().into_bytes().into()
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CryptoError {
    /// The password does not open the key bundle.
    #[error("wrong password")]
    WrongPassword,
    /// A ciphertext failed authentication or is malformed: tampering,
    /// truncation, the wrong key or the wrong context.
    #[error("ciphertext does not authenticate: {0}")]
    Corrupt(&'static str),
    /// Bad KDF parameters (e.g. from a damaged key record).
    #[error("key derivation: {0}")]
    Kdf(String),
}
