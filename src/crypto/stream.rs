//! Blobs (message bodies, up to tens of MiB): encrypted in independent
//! chunks so they can be written and read as streams, never whole.
//!
//! Layout: `version (1) | base nonce (16)`, then frames
//! `length (u32 BE) | ciphertext of (flags (1) | body)`, each frame holding
//! [`CHUNK_SIZE`] bytes of plaintext (the last one fewer, possibly none).
//! Frame i uses nonce `base || i (u64 BE)`; its associated data holds the
//! context, i and whether it is the last frame, so frames cannot be
//! reordered, dropped, moved between blobs, or the blob truncated.
//! Each chunk is zstd-compressed on its own when that helps.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};

use super::{CryptoError, MasterKey};

/// Plaintext bytes per frame.
pub const CHUNK_SIZE: usize = 256 * 1024;
const VERSION: u8 = 1;
const HEADER: usize = 17;
const MAX_FRAME: usize = CHUNK_SIZE + 1024;

struct Frames {
    cipher: XChaCha20Poly1305,
    base: [u8; 16],
    context: Vec<u8>,
    index: u64,
}

impl Frames {
    fn new(key: &MasterKey, context: &[u8], base: [u8; 16]) -> Self {
        Frames {
            cipher: XChaCha20Poly1305::new((&key.0).into()),
            base,
            context: context.to_vec(),
            index: 0,
        }
    }
    fn nonce_aad(&self, last: bool) -> ([u8; 24], Vec<u8>) {
        let mut nonce = [0u8; 24];
        nonce[..16].copy_from_slice(&self.base);
        nonce[16..].copy_from_slice(&self.index.to_be_bytes());
        let mut aad = b"estafette blob v1\0".to_vec();
        aad.extend_from_slice(&self.index.to_be_bytes());
        aad.push(u8::from(last));
        aad.extend_from_slice(&self.context);
        (nonce, aad)
    }
}

/// Turns plaintext, pushed in pieces of any size, into the blob format.
pub struct BlobEncryptor {
    frames: Frames,
    pending: Vec<u8>,
    header_sent: bool,
}

impl BlobEncryptor {
    pub fn new(key: &MasterKey, context: &[u8]) -> Self {
        BlobEncryptor {
            frames: Frames::new(key, context, rand::random()),
            pending: Vec::with_capacity(CHUNK_SIZE),
            header_sent: false,
        }
    }

    fn header(&mut self, out: &mut Vec<u8>) {
        if !self.header_sent {
            out.push(VERSION);
            out.extend_from_slice(&self.frames.base);
            self.header_sent = true;
        }
    }

    fn frame(&mut self, chunk: &[u8], last: bool, out: &mut Vec<u8>) {
        let body = super::compress::pack(chunk);
        let (nonce, aad) = self.frames.nonce_aad(last);
        let ct = self
            .frames
            .cipher
            .encrypt(XNonce::from_slice(&nonce), Payload { msg: &body, aad: &aad })
            .unwrap_or_default();
        out.extend_from_slice(&(ct.len() as u32).to_be_bytes());
        out.extend_from_slice(&ct);
        self.frames.index += 1;
    }

    /// Adds plaintext; returns the ciphertext bytes ready so far.
    pub fn push(&mut self, mut data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        self.header(&mut out);
        while !data.is_empty() {
            let take = (CHUNK_SIZE - self.pending.len()).min(data.len());
            self.pending.extend_from_slice(&data[..take]);
            data = &data[take..];
            // A full chunk is only flushed once more data proves it is not
            // the last one, so the last frame always carries the last flag.
            if self.pending.len() == CHUNK_SIZE && !data.is_empty() {
                let chunk = std::mem::take(&mut self.pending);
                self.frame(&chunk, false, &mut out);
                self.pending = Vec::with_capacity(CHUNK_SIZE);
            }
        }
        out
    }

    /// Ends the blob; returns the last bytes.
    pub fn finish(mut self) -> Vec<u8> {
        let mut out = Vec::new();
        self.header(&mut out);
        let chunk = std::mem::take(&mut self.pending);
        self.frame(&chunk, true, &mut out);
        out
    }

    /// Encrypts a whole blob at once.
    pub fn seal_all(key: &MasterKey, context: &[u8], plaintext: &[u8]) -> Vec<u8> {
        let mut e = BlobEncryptor::new(key, context);
        let mut out = e.push(plaintext);
        out.extend(e.finish());
        out
    }
}

/// Turns the blob format back into plaintext, fed in pieces of any size.
pub struct BlobDecryptor {
    key: MasterKey,
    context: Vec<u8>,
    frames: Option<Frames>,
    buf: Vec<u8>,
    done: bool,
}

impl BlobDecryptor {
    pub fn new(key: &MasterKey, context: &[u8]) -> Self {
        BlobDecryptor {
            key: key.clone(),
            context: context.to_vec(),
            frames: None,
            buf: Vec::new(),
            done: false,
        }
    }

    /// Adds ciphertext; returns the plaintext it completes.
    pub fn push(&mut self, data: &[u8]) -> Result<Vec<u8>, CryptoError> {
        self.buf.extend_from_slice(data);
        let mut out = Vec::new();
        loop {
            if self.frames.is_none() {
                if self.buf.len() < HEADER {
                    return Ok(out);
                }
                if self.buf[0] != VERSION {
                    return Err(CryptoError::Corrupt("unknown blob format"));
                }
                let mut base = [0u8; 16];
                base.copy_from_slice(&self.buf[1..HEADER]);
                self.frames = Some(Frames::new(&self.key, &self.context, base));
                self.buf.drain(..HEADER);
            }
            if self.buf.len() < 4 {
                return Ok(out);
            }
            let len = u32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]) as usize;
            if len > MAX_FRAME {
                return Err(CryptoError::Corrupt("frame too large"));
            }
            if self.buf.len() < 4 + len {
                return Ok(out);
            }
            if self.done {
                return Err(CryptoError::Corrupt("data after the last frame"));
            }
            let frame: Vec<u8> = self.buf.drain(..4 + len).skip(4).collect();
            let Some(frames) = self.frames.as_mut() else {
                return Err(CryptoError::Corrupt("missing header"));
            };
            // The frame says nothing about being last; try "not last" first,
            // then "last": only the right guess authenticates.
            let mut opened = None;
            for last in [false, true] {
                let (nonce, aad) = frames.nonce_aad(last);
                if let Ok(p) = frames.cipher.decrypt(XNonce::from_slice(&nonce), Payload { msg: &frame, aad: &aad }) {
                    opened = Some((p, last));
                    break;
                }
            }
            let (body, last) = opened.ok_or(CryptoError::Corrupt("blob frame does not authenticate"))?;
            frames.index += 1;
            self.done = last;
            out.extend(super::compress::unpack(&body, CHUNK_SIZE)?);
        }
    }

    /// Checks the blob ended with its last frame (not truncated).
    pub fn finish(self) -> Result<(), CryptoError> {
        if self.done && self.buf.is_empty() {
            Ok(())
        } else {
            Err(CryptoError::Corrupt("blob truncated"))
        }
    }

    /// Decrypts a whole blob at once.
    pub fn open_all(key: &MasterKey, context: &[u8], sealed: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let mut d = BlobDecryptor::new(key, context);
        let out = d.push(sealed)?;
        d.finish()?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(n: usize) -> Vec<u8> {
        (0..n).map(|i| ((i * 31) % 251) as u8).collect()
    }

    #[test]
    fn round_trip_across_chunk_boundaries() {
        let k = MasterKey::generate();
        for n in [0, 1, CHUNK_SIZE - 1, CHUNK_SIZE, CHUNK_SIZE + 1, 3 * CHUNK_SIZE + 5] {
            let p = data(n);
            let s = BlobEncryptor::seal_all(&k, b"msg/1", &p);
            assert_eq!(BlobDecryptor::open_all(&k, b"msg/1", &s).unwrap(), p, "size {n}");
        }
    }

    #[test]
    fn streaming_in_odd_pieces() {
        let k = MasterKey::generate();
        let p: Vec<u8> = (0..700_000).map(|_| rand::random()).collect();
        let mut e = BlobEncryptor::new(&k, b"c");
        let mut sealed = vec![];
        for piece in p.chunks(9_999) {
            sealed.extend(e.push(piece));
        }
        sealed.extend(e.finish());
        let mut d = BlobDecryptor::new(&k, b"c");
        let mut back = vec![];
        for piece in sealed.chunks(4_321) {
            back.extend(d.push(piece).unwrap());
        }
        d.finish().unwrap();
        assert!(back == p);
    }

    #[test]
    fn truncation_reordering_and_context_are_caught() {
        let k = MasterKey::generate();
        let p = data(3 * CHUNK_SIZE);
        let s = BlobEncryptor::seal_all(&k, b"msg/1", &p);
        assert!(BlobDecryptor::open_all(&k, b"msg/2", &s).is_err(), "other context");
        // Drop the last frame: what remains authenticates but is truncated.
        let mut d = BlobDecryptor::new(&k, b"msg/1");
        let frame_len = |at: usize| 4 + u32::from_be_bytes(s[at..at + 4].try_into().unwrap()) as usize;
        let mut cut = HEADER;
        for _ in 0..2 {
            cut += frame_len(cut);
        }
        d.push(&s[..cut]).unwrap();
        assert!(d.finish().is_err(), "truncation detected");
        let mut flipped = s.clone();
        flipped[HEADER + 10] ^= 0x40;
        assert!(BlobDecryptor::open_all(&k, b"msg/1", &flipped).is_err());
    }
}
