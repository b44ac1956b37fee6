//! A user's keys: the secret bundle (X25519 secret key + 256-bit master
//! key), its sealed form as stored, and the public key used to deliver
//! mail while the user is offline.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use super::{CryptoError, KdfParams};

/// The 256-bit key that encrypts a user's values and blobs.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct MasterKey(pub(super) [u8; 32]);

impl MasterKey {
    pub fn generate() -> Self {
        MasterKey(rand::random())
    }
    /// The raw key, e.g. to keep a per-blob key inside a sealed item.
    pub fn to_bytes(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(self.0)
    }
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        MasterKey(bytes)
    }
    /// A key derived for one purpose (e.g. "mailbox names"), so that one
    /// leaked derived key does not open everything.
    pub fn derive(&self, purpose: &str) -> MasterKey {
        MasterKey(super::keyed_hash(&self.0, &[b"estafette derived key v1\0", purpose.as_bytes()]))
    }
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(..)")
    }
}

/// The public half, stored in the clear.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct PublicKey(pub [u8; 32]);

impl PublicKey {
    /// Seals `plaintext` so that only the holder of the matching secret key
    /// opens it (libsodium's crypto_box_seal; anonymous sender).
    pub fn seal(&self, plaintext: &[u8]) -> Vec<u8> {
        let pk = crypto_box::PublicKey::from(self.0);
        // Sealing only fails on allocation-sized inputs the caller controls.
        pk.seal(&mut crypto_box::aead::OsRng, plaintext).unwrap_or_default()
    }
}

/// The unlocked secrets of one user. Zeroised on drop.
#[derive(Clone, ZeroizeOnDrop)]
pub struct KeyBundle {
    secret: [u8; 32],
    pub master: MasterKey,
    /// The master key before the last rotation, kept until the next one:
    /// whatever is still sealed under it (a crash mid-rotation, a session
    /// elsewhere still writing with it) stays readable.
    pub previous: Option<MasterKey>,
}

/// What is stored: KDF parameters and salt, the public key, and the bundle
/// sealed under the password-derived key. Safe to keep anywhere.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockedKeys {
    pub version: u8,
    pub kdf: KdfParams,
    #[serde(with = "serde_bytes")]
    pub salt: Vec<u8>,
    pub public: PublicKey,
    #[serde(with = "serde_bytes")]
    pub nonce: Vec<u8>,
    #[serde(with = "serde_bytes")]
    pub sealed: Vec<u8>,
}

const BUNDLE_AAD: &[u8] = b"estafette key bundle v1";

impl KeyBundle {
    pub fn generate() -> Self {
        let sk = crypto_box::SecretKey::generate(&mut crypto_box::aead::OsRng);
        KeyBundle {
            secret: sk.to_bytes(),
            master: MasterKey::generate(),
            previous: None,
        }
    }

    pub fn public(&self) -> PublicKey {
        PublicKey(*crypto_box::SecretKey::from(self.secret).public_key().as_bytes())
    }

    /// A key for opaque ids derived from names (e.g. subscriptions), from
    /// the secret key, which survives master-key rotation.
    pub fn name_key(&self) -> [u8; 32] {
        super::keyed_hash(&self.secret, &[b"estafette name ids v1"])
    }

    /// Opens what `PublicKey::seal` sealed to us.
    pub fn unseal(&self, sealed: &[u8]) -> Result<Vec<u8>, CryptoError> {
        crypto_box::SecretKey::from(self.secret)
            .unseal(sealed)
            .map_err(|_| CryptoError::Corrupt("sealed box does not open with this key"))
    }

    /// The same secret key with a new master key; the current one becomes
    /// `previous` (the one before is dropped).
    pub fn with_new_master(&self) -> KeyBundle {
        KeyBundle {
            secret: self.secret,
            master: MasterKey::generate(),
            previous: Some(self.master.clone()),
        }
    }

    /// The raw bundle (secret || master [|| previous]), for handing a
    /// user's keys to the node that sequences their mailboxes over the
    /// encrypted node-to-node RPC. Zeroised on drop.
    pub fn to_bytes(&self) -> Zeroizing<Vec<u8>> {
        let mut wire = Zeroizing::new(Vec::with_capacity(96));
        wire.extend_from_slice(&self.secret);
        wire.extend_from_slice(&self.master.0);
        if let Some(p) = &self.previous {
            wire.extend_from_slice(&p.0);
        }
        wire
    }

    /// Undoes [`KeyBundle::to_bytes`].
    pub fn from_bytes(plain: &[u8]) -> Result<KeyBundle, CryptoError> {
        if plain.len() != 64 && plain.len() != 96 {
            return Err(CryptoError::Corrupt("bundle has the wrong size"));
        }
        let mut secret = [0u8; 32];
        let mut master = [0u8; 32];
        secret.copy_from_slice(&plain[..32]);
        master.copy_from_slice(&plain[32..64]);
        let previous = (plain.len() == 96).then(|| {
            let mut p = [0u8; 32];
            p.copy_from_slice(&plain[64..]);
            MasterKey(p)
        });
        let bundle = KeyBundle {
            secret,
            master: MasterKey(master),
            previous,
        };
        secret.zeroize();
        master.zeroize();
        Ok(bundle)
    }

    /// Seals the bundle under a key derived from `password` with `kdf`.
    pub fn lock(&self, password: &[u8], kdf: KdfParams) -> Result<LockedKeys, CryptoError> {
        let salt: [u8; 16] = rand::random();
        let kek = kdf.derive(password, &salt)?;
        let nonce: [u8; 24] = rand::random();
        let wire = self.to_bytes();
        let sealed = XChaCha20Poly1305::new(kek.as_ref().into())
            .encrypt(XNonce::from_slice(&nonce), Payload { msg: &wire, aad: BUNDLE_AAD })
            .map_err(|_| CryptoError::Corrupt("sealing the key bundle"))?;
        Ok(LockedKeys {
            version: 1,
            kdf,
            salt: salt.to_vec(),
            public: self.public(),
            nonce: nonce.to_vec(),
            sealed,
        })
    }
}

impl LockedKeys {
    /// Derives the key from `password` (one Argon2 run) and opens the bundle.
    pub fn unlock(&self, password: &[u8]) -> Result<KeyBundle, CryptoError> {
        if self.version != 1 {
            return Err(CryptoError::Corrupt("unknown key record version"));
        }
        if self.nonce.len() != 24 {
            return Err(CryptoError::Corrupt("bad nonce length"));
        }
        let kek = self.kdf.derive(password, &self.salt)?;
        let plain = Zeroizing::new(
            XChaCha20Poly1305::new(kek.as_ref().into())
                .decrypt(XNonce::from_slice(&self.nonce), Payload { msg: &self.sealed, aad: BUNDLE_AAD })
                .map_err(|_| CryptoError::WrongPassword)?,
        );
        let bundle = KeyBundle::from_bytes(&plain)?;
        if bundle.public() != self.public {
            return Err(CryptoError::Corrupt("public key does not match the sealed secret key"));
        }
        Ok(bundle)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_unlock_and_wrong_password() {
        let b = KeyBundle::generate();
        let locked = b.lock(b"correct horse", KdfParams::insecure_for_tests()).unwrap();
        let opened = locked.unlock(b"correct horse").unwrap();
        assert_eq!(opened.master.0, b.master.0);
        assert_eq!(opened.public(), b.public());
        assert_eq!(locked.unlock(b"wrong horse").err(), Some(CryptoError::WrongPassword));
        let rotated = b.with_new_master();
        let relocked = rotated.lock(b"pw", KdfParams::insecure_for_tests()).unwrap().unlock(b"pw").unwrap();
        assert_eq!(relocked.previous.as_ref().unwrap().0, b.master.0);
        assert_ne!(relocked.master.0, b.master.0);
        assert_eq!(relocked.public(), b.public(), "rotation keeps the delivery key");
        let mut tampered = locked.clone();
        tampered.sealed[0] ^= 1;
        assert!(tampered.unlock(b"correct horse").is_err());
    }

    #[test]
    fn sealed_box_to_public_key() {
        let b = KeyBundle::generate();
        let sealed = b.public().seal(b"mail for an offline user");
        assert_eq!(b.unseal(&sealed).unwrap(), b"mail for an offline user");
        let other = KeyBundle::generate();
        assert!(other.unseal(&sealed).is_err());
    }

    #[test]
    fn derived_keys_differ_by_purpose() {
        let m = MasterKey::generate();
        assert_ne!(m.derive("a").0, m.derive("b").0);
        assert_eq!(m.derive("a").0, m.derive("a").0);
        assert_ne!(m.derive("a").0, m.0);
    }
}
