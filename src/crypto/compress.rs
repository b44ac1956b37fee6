//! The plaintext framing shared by values and blob frames: one flags byte,
//! then the body, zstd-compressed when that makes it smaller.

use super::CryptoError;

const FLAG_ZSTD: u8 = 1;

/// `flags | body`, compressed when it helps.
pub fn pack(plaintext: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(plaintext.len() + 1);
    match zstd::bulk::compress(plaintext, 3) {
        Ok(c) if c.len() + 8 < plaintext.len() => {
            out.push(FLAG_ZSTD);
            out.extend_from_slice(&c);
        }
        _ => {
            out.push(0);
            out.extend_from_slice(plaintext);
        }
    }
    out
}

/// Undoes [`pack`]; refuses to inflate past `max` bytes.
pub fn unpack(packed: &[u8], max: usize) -> Result<Vec<u8>, CryptoError> {
    match packed.first() {
        Some(&0) => Ok(packed[1..].to_vec()),
        Some(&FLAG_ZSTD) => zstd::bulk::decompress(&packed[1..], max).map_err(|_| CryptoError::Corrupt("bad compressed data")),
        _ => Err(CryptoError::Corrupt("unknown flags")),
    }
}
