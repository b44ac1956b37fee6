//! Argon2id: password -> key-encryption key. The parameters travel with
//! the sealed bundle, so they can be raised later without locking anyone out.

use argon2::{Algorithm, Argon2, Params, Version};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::CryptoError;

/// Argon2id cost parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct KdfParams {
    /// Memory in KiB.
    pub m_kib: u32,
    /// Passes.
    pub t: u32,
    /// Lanes.
    pub p: u32,
}

impl Default for KdfParams {
    /// 64 MiB, 3 passes, 1 lane: about 0.15 s on the 2-core reference
    /// machine in a release build (`estafette bench kdf` measures it).
    fn default() -> Self {
        KdfParams { m_kib: 64 * 1024, t: 3, p: 1 }
    }
}

impl KdfParams {
    /// Cheap parameters for tests only: the code path is the same.
    pub fn insecure_for_tests() -> Self {
        KdfParams { m_kib: 256, t: 1, p: 1 }
    }

    fn argon2(&self) -> Result<Argon2<'static>, CryptoError> {
        let params = Params::new(self.m_kib, self.t, self.p, Some(32)).map_err(|e| CryptoError::Kdf(e.to_string()))?;
        Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
    }

    /// Derives 32 bytes from `password` and `salt` (16+ bytes).
    pub fn derive(&self, password: &[u8], salt: &[u8]) -> Result<Zeroizing<[u8; 32]>, CryptoError> {
        let mut out = Zeroizing::new([0u8; 32]);
        self.argon2()?
            .hash_password_into(password, salt, &mut out[..])
            .map_err(|e| CryptoError::Kdf(e.to_string()))?;
        Ok(out)
    }

    /// A PHC string (`$argon2id$v=19$m=...`) for the users file.
    pub fn hash_password(&self, password: &[u8]) -> Result<String, CryptoError> {
        use argon2::password_hash::{PasswordHasher, SaltString};
        let salt = SaltString::generate(&mut argon2::password_hash::rand_core::OsRng);
        self.argon2()?
            .hash_password(password, &salt)
            .map(|h| h.to_string())
            .map_err(|e| CryptoError::Kdf(e.to_string()))
    }
}

/// Checks `password` against a PHC string (parameters come from the string).
pub fn verify_password(phc: &str, password: &[u8]) -> Result<bool, CryptoError> {
    use argon2::password_hash::{PasswordHash, PasswordVerifier};
    let parsed = PasswordHash::new(phc).map_err(|e| CryptoError::Kdf(format!("bad password hash: {e}")))?;
    match Argon2::default().verify_password(password, &parsed) {
        Ok(()) => Ok(true),
        Err(argon2::password_hash::Error::Password) => Ok(false),
        Err(e) => Err(CryptoError::Kdf(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derive_is_deterministic_and_salted() {
        let p = KdfParams::insecure_for_tests();
        assert_eq!(*p.derive(b"pw", b"0123456789abcdef").unwrap(), *p.derive(b"pw", b"0123456789abcdef").unwrap());
        assert_ne!(*p.derive(b"pw", b"0123456789abcdef").unwrap(), *p.derive(b"pw", b"fedcba9876543210").unwrap());
        assert_ne!(*p.derive(b"pw", b"0123456789abcdef").unwrap(), *p.derive(b"pW", b"0123456789abcdef").unwrap());
    }

    #[test]
    fn phc_round_trip() {
        let p = KdfParams::insecure_for_tests();
        let phc = p.hash_password(b"hunter2").unwrap();
        assert!(phc.starts_with("$argon2id$v=19$m=256,t=1,p=1$"), "{phc}");
        assert!(verify_password(&phc, b"hunter2").unwrap());
        assert!(!verify_password(&phc, b"hunter3").unwrap());
        assert!(verify_password("not a hash", b"x").is_err());
    }

    #[test]
    fn default_is_at_least_64_mib() {
        assert!(KdfParams::default().m_kib >= 64 * 1024);
    }
}
