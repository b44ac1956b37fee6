//! Small values (items): compress, then XChaCha20-Poly1305 under a key,
//! bound to a context (where the value is stored) by the AEAD's associated
//! data.
//!
//! Layout: `version (1) | nonce (24) | ciphertext of (flags (1) | body)`;
//! flag bit 0 = body is zstd-compressed.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};

use super::{CryptoError, MasterKey};

const VERSION: u8 = 1;
/// Values are items: anything that inflates past this was not written by us.
const MAX_PLAINTEXT: usize = 64 << 20;

fn aad(context: &[u8]) -> Vec<u8> {
    let mut a = b"estafette value v1\0".to_vec();
    a.extend_from_slice(context);
    a
}

/// Compresses `plaintext` if that helps, then encrypts it under `key`.
pub fn seal_value(key: &MasterKey, context: &[u8], plaintext: &[u8]) -> Vec<u8> {
    let body = super::compress::pack(plaintext);
    let nonce: [u8; 24] = rand::random();
    let ct = XChaCha20Poly1305::new((&key.0).into())
        .encrypt(XNonce::from_slice(&nonce), Payload { msg: &body, aad: &aad(context) })
        .unwrap_or_default();
    let mut out = Vec::with_capacity(1 + 24 + ct.len());
    out.push(VERSION);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&ct);
    out
}

/// Decrypts and decompresses what `seal_value` produced for this context.
pub fn open_value(key: &MasterKey, context: &[u8], sealed: &[u8]) -> Result<Vec<u8>, CryptoError> {
    if sealed.len() < 1 + 24 + 16 + 1 {
        return Err(CryptoError::Corrupt("value too short"));
    }
    if sealed[0] != VERSION {
        return Err(CryptoError::Corrupt("unknown value format"));
    }
    let body = XChaCha20Poly1305::new((&key.0).into())
        .decrypt(XNonce::from_slice(&sealed[1..25]), Payload { msg: &sealed[25..], aad: &aad(context) })
        .map_err(|_| CryptoError::Corrupt("value does not authenticate"))?;
    super::compress::unpack(&body, MAX_PLAINTEXT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_compressible_and_not() {
        let k = MasterKey::generate();
        let text = b"Subject: hello\r\n".repeat(100);
        let random: Vec<u8> = (0..1000).map(|_| rand::random()).collect();
        for p in [&b""[..], &b"x"[..], &text[..], &random[..]] {
            let s = seal_value(&k, b"ctx", p);
            assert_eq!(open_value(&k, b"ctx", &s).unwrap(), p);
        }
        assert!(seal_value(&k, b"ctx", &text).len() < text.len() / 4, "compressed before encryption");
    }

    #[test]
    fn wrong_key_context_or_tampering_fail() {
        let k = MasterKey::generate();
        let s = seal_value(&k, b"alice/mailboxes", b"INBOX, Sent");
        assert!(open_value(&MasterKey::generate(), b"alice/mailboxes", &s).is_err());
        assert!(open_value(&k, b"bob/mailboxes", &s).is_err(), "bound to its context");
        let mut t = s.clone();
        *t.last_mut().unwrap() ^= 1;
        assert!(open_value(&k, b"alice/mailboxes", &t).is_err());
        assert!(open_value(&k, b"alice/mailboxes", &s[..10]).is_err());
    }

    #[test]
    fn no_plaintext_in_ciphertext() {
        let k = MasterKey::generate();
        let s = seal_value(&k, b"c", b"Subject: secret plans for the heist");
        assert!(!s.windows(6).any(|w| w == b"secret"));
    }
}
