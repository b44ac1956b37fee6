//! The plaintext framing shared by values and blob frames: one flags byte,
//! then the body, zstd-compressed when that makes it smaller.
//!
//! Contexts are kept per thread: creating a zstd context costs more than
//! compressing a small value, and FETCH/SEARCH open thousands of values. A
//! compressed body records its size, so decompression allocates exactly
//! that (never the `max` bound, which would be a 64 MiB allocation per
//! value).

use std::cell::RefCell;

use super::CryptoError;

const FLAG_ZSTD: u8 = 1;

thread_local! {
    static COMPRESSOR: RefCell<Option<zstd::bulk::Compressor<'static>>> = const { RefCell::new(None) };
    static DECOMPRESSOR: RefCell<Option<zstd::bulk::Decompressor<'static>>> = const { RefCell::new(None) };
}

fn compress(plaintext: &[u8]) -> Option<Vec<u8>> {
    COMPRESSOR.with(|c| {
        let mut c = c.borrow_mut();
        if c.is_none() {
            *c = zstd::bulk::Compressor::new(3).ok();
        }
        c.as_mut()?.compress(plaintext).ok()
    })
}

/// `flags | body`, compressed when it helps.
pub fn pack(plaintext: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(plaintext.len() + 1);
    match compress(plaintext) {
        Some(c) if c.len() + 8 < plaintext.len() => {
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
    const BAD: CryptoError = CryptoError::Corrupt("bad compressed data");
    match packed.first() {
        Some(&0) => Ok(packed[1..].to_vec()),
        Some(&FLAG_ZSTD) => {
            let body = &packed[1..];
            let size = zstd::zstd_safe::get_frame_content_size(body).ok().flatten().ok_or(BAD)?;
            let size = usize::try_from(size).ok().filter(|s| *s <= max).ok_or(BAD)?;
            let mut out = Vec::with_capacity(size);
            DECOMPRESSOR.with(|d| {
                let mut d = d.borrow_mut();
                if d.is_none() {
                    *d = zstd::bulk::Decompressor::new().ok();
                }
                d.as_mut().ok_or(BAD)?.decompress_to_buffer(body, &mut out).map_err(|_| BAD)
            })?;
            if out.len() != size {
                return Err(BAD);
            }
            Ok(out)
        }
        _ => Err(CryptoError::Corrupt("unknown flags")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_bounds() {
        for data in [vec![], b"short".to_vec(), vec![b'a'; 100_000], (0..50_000u32).flat_map(|i| i.to_le_bytes()).collect()] {
            let p = pack(&data);
            assert_eq!(unpack(&p, 1 << 20).unwrap(), data);
        }
        let big = pack(&vec![0u8; 10_000]);
        assert_eq!(big[0], FLAG_ZSTD);
        assert!(unpack(&big, 9_999).is_err(), "inflating past the bound is refused");
        let mut damaged = big.clone();
        let n = damaged.len();
        damaged[n - 3] ^= 0xff;
        assert!(unpack(&damaged, 1 << 20).is_err() || unpack(&damaged, 1 << 20).unwrap() != vec![0u8; 10_000]);
    }
}
