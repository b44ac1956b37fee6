//! The records a node has read of one mailbox's log, and the chain they
//! define: which entries, of which epochs, in which order, make up the
//! mailbox. Pure; the rules here are what docs/consistency.md argues about.
//!
//! - Every epoch starts with a [`Start`] record naming the epoch it
//!   continues and the fence: the last entry of that epoch it includes.
//!   Following `prev` from the highest started epoch (the head) gives the
//!   chain; entries of an epoch beyond its fence, and epochs off the chain,
//!   are void.
//! - The head's entries count only as a contiguous run from 1.
//! - An [`Announcement`] above the head without its start means a takeover
//!   is under way: what the head holds beyond what is already settled must
//!   not be shown until the takeover's fence is known (`pending`).

use std::collections::BTreeMap;

use super::model::{keys, Announcement, Checkpoint, Entry, Epoch, Start};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ChainError {
    #[error("log record `{key}` does not decode: {reason}")]
    Decode { key: String, reason: String },
    #[error("log record `{0}` has conflicting versions")]
    Conflict(String),
}

/// Everything read so far of one mailbox's log partition.
#[derive(Default, Clone, Debug)]
pub struct Records {
    pub announcements: BTreeMap<Epoch, Announcement>,
    pub starts: BTreeMap<Epoch, Start>,
    pub entries: BTreeMap<(Epoch, u64), Entry>,
    /// Checkpoints read, by position; the newest is the base: entries up
    /// to it may have been trimmed and are not needed.
    pub checkpoints: BTreeMap<(Epoch, u64), Checkpoint>,
}

/// One link of the chain: an epoch and the last entry of it that counts.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Link {
    pub epoch: Epoch,
    pub upto: u64,
}

fn decode<T: serde::de::DeserializeOwned>(key: &str, values: &[Vec<u8>]) -> Result<T, ChainError> {
    let first = values.first().ok_or_else(|| ChainError::Decode {
        key: key.into(),
        reason: "no value".into(),
    })?;
    // One writer per key, so every copy must be the same bytes; a retried
    // write may leave identical siblings, which is harmless.
    if values.iter().any(|v| v != first) {
        return Err(ChainError::Conflict(key.into()));
    }
    rmp_serde::from_slice(first).map_err(|e| ChainError::Decode {
        key: key.into(),
        reason: e.to_string(),
    })
}

/// Encodes a record for storage.
pub fn encode<T: serde::Serialize>(v: &T) -> Vec<u8> {
    rmp_serde::to_vec_named(v).unwrap_or_default()
}

impl Records {
    /// Adds one record read from storage (key, sibling values).
    pub fn ingest(&mut self, key: &str, values: &[Vec<u8>]) -> Result<(), ChainError> {
        if values.is_empty() {
            return Ok(()); // deleted (trimmed) record
        }
        if key.starts_with(keys::ANNOUNCE) {
            let a: Announcement = decode(key, values)?;
            self.announcements.insert(a.epoch, a);
        } else if key.starts_with(keys::START) {
            let s: Start = decode(key, values)?;
            self.starts.insert(s.epoch, s);
        } else if key.starts_with(keys::CHECKPOINT) {
            let c: Checkpoint = decode(key, values)?;
            self.checkpoints.insert((c.epoch, c.seq), c);
        } else if let Some((e, seq)) = keys::parse_entry(key) {
            let entry: Entry = decode(key, values)?;
            if entry.epoch != e || entry.seq != seq {
                return Err(ChainError::Decode {
                    key: key.into(),
                    reason: "entry does not match its key".into(),
                });
            }
            self.entries.insert((e, seq), entry);
        }
        Ok(())
    }

    /// The highest started epoch.
    pub fn head(&self) -> Option<&Start> {
        self.starts.values().next_back()
    }

    /// The highest epoch counter anyone has announced or started.
    pub fn max_counter(&self) -> u64 {
        let a = self.announcements.keys().next_back().map_or(0, |e| e.counter());
        let s = self.starts.keys().next_back().map_or(0, |e| e.counter());
        a.max(s)
    }

    /// An announcement above the head (or above `than`) with no start yet.
    pub fn pending_above(&self, than: Epoch) -> Option<Epoch> {
        let head = self.head().map_or(Epoch::default(), |h| h.epoch).max(than);
        self.announcements
            .keys()
            .rev()
            .find(|e| **e > head && !self.starts.contains_key(e))
            .copied()
    }

    /// Whether anyone announced an epoch above `epoch`.
    pub fn announced_above(&self, epoch: Epoch) -> bool {
        self.announcements.keys().next_back().is_some_and(|e| *e > epoch)
    }

    /// The newest checkpoint.
    pub fn base(&self) -> Option<&Checkpoint> {
        self.checkpoints.values().next_back()
    }

    /// Entries of `epoch` present contiguously from 1 (entries covered by
    /// the base checkpoint count as present: they may be trimmed).
    pub fn contiguous(&self, epoch: Epoch) -> u64 {
        let mut n = match self.base() {
            Some(b) if b.epoch == epoch => b.seq,
            Some(b) if b.epoch > epoch => return b.links.iter().find(|(e, _)| *e == epoch).map_or(0, |(_, s)| *s),
            _ => 0,
        };
        for ((e, s), _) in self.entries.range((epoch, n + 1)..=(epoch, u64::MAX)) {
            if *e != epoch || *s != n + 1 {
                break;
            }
            n = *s;
        }
        n
    }

    /// The chain from the root epoch to the head, each with the last entry
    /// that counts. None if a start record the chain needs is missing.
    pub fn chain(&self) -> Option<Vec<Link>> {
        let head = self.head()?;
        let mut links = vec![Link {
            epoch: head.epoch,
            upto: self.contiguous(head.epoch),
        }];
        let mut cur = head;
        while let Some((prev, fence)) = cur.prev {
            links.push(Link { epoch: prev, upto: fence });
            cur = self.starts.get(&prev)?;
            if links.len() > self.starts.len() + 1 {
                return None; // a loop: damaged records
            }
        }
        links.reverse();
        Some(links)
    }

    /// Whether the chain runs through the base checkpoint (it always
    /// should: checkpoints are made of settled views).
    pub fn base_on(&self, chain: &[Link]) -> Option<&Checkpoint> {
        let b = self.base()?;
        let on = b.links.iter().enumerate().all(|(i, (e, s))| {
            chain.get(i).is_some_and(|l| l.epoch == *e && (l.upto == *s || (i + 1 == b.links.len() && l.upto >= *s)))
        });
        on.then_some(b)
    }

    /// The first entry key the chain needs and this node lacks, if any
    /// (nothing before the base checkpoint is needed).
    pub fn first_missing(&self, chain: &[Link]) -> Option<(Epoch, u64)> {
        let base = self.base_on(chain).map(|b| (b.epoch, b.seq));
        for l in chain {
            if base.is_some_and(|(e, _)| l.epoch < e) {
                continue;
            }
            let from = match base {
                Some((e, s)) if e == l.epoch => s,
                _ => 0,
            };
            let mut have = from;
            while have < l.upto && self.entries.contains_key(&(l.epoch, have + 1)) {
                have += 1;
            }
            if have < l.upto {
                return Some((l.epoch, have + 1));
            }
        }
        None
    }
}

/// Whether chain `a` is a prefix of chain `b` (same epochs, `a`'s last
/// link covering no more than the matching link of `b`).
pub fn is_prefix(a: &[Link], b: &[Link]) -> bool {
    if a.len() > b.len() {
        return false;
    }
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        if x.epoch != y.epoch {
            return false;
        }
        let last = i + 1 == a.len();
        if (last && x.upto > y.upto) || (!last && x.upto != y.upto) {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mail::model::Op;

    fn entry(e: Epoch, seq: u64) -> Entry {
        Entry {
            epoch: e,
            seq,
            ops: vec![(seq, Op::Expunge { uids: vec![] })],
        }
    }

    #[test]
    fn chain_follows_prev_and_fences() {
        let (e1, e2, e3) = (Epoch::new(1, 0), Epoch::new(2, 1), Epoch::new(3, 0));
        let mut r = Records::default();
        r.starts.insert(e1, Start { epoch: e1, node: 0, prev: None, uidvalidity: 9 });
        for s in 1..=5 {
            r.entries.insert((e1, s), entry(e1, s));
        }
        // e2 fenced e1 at 3; entries 4 and 5 of e1 are void.
        r.starts.insert(e2, Start { epoch: e2, node: 1, prev: Some((e1, 3)), uidvalidity: 9 });
        r.entries.insert((e2, 1), entry(e2, 1));
        r.entries.insert((e2, 3), entry(e2, 3)); // a gap at 2: only 1 counts
        assert_eq!(r.chain().unwrap(), vec![Link { epoch: e1, upto: 3 }, Link { epoch: e2, upto: 1 }]);
        assert_eq!(r.first_missing(&r.chain().unwrap()), None);
        // A takeover is announced: pending until its start appears.
        r.announcements.insert(e3, Announcement { epoch: e3, node: 0 });
        assert_eq!(r.pending_above(e2), Some(e3));
        r.starts.insert(e3, Start { epoch: e3, node: 0, prev: Some((e2, 1)), uidvalidity: 9 });
        assert_eq!(r.pending_above(e2), None);
        assert_eq!(r.max_counter(), 3);
    }

    #[test]
    fn prefixes() {
        let (e1, e2) = (Epoch::new(1, 0), Epoch::new(2, 0));
        let a = [Link { epoch: e1, upto: 3 }];
        assert!(is_prefix(&a, &[Link { epoch: e1, upto: 5 }]));
        assert!(is_prefix(&a, &[Link { epoch: e1, upto: 3 }, Link { epoch: e2, upto: 0 }]));
        assert!(!is_prefix(&a, &[Link { epoch: e1, upto: 2 }, Link { epoch: e2, upto: 0 }]));
        assert!(!is_prefix(&[Link { epoch: e1, upto: 3 }, Link { epoch: e2, upto: 1 }], &[Link { epoch: e1, upto: 4 }]));
    }

    #[test]
    fn conflicting_versions_are_an_error() {
        let mut r = Records::default();
        let k = keys::announce(Epoch::new(1, 0));
        let a = encode(&Announcement { epoch: Epoch::new(1, 0), node: 0 });
        r.ingest(&k, &[a.clone(), a.clone()]).unwrap();
        let b = encode(&Announcement { epoch: Epoch::new(1, 0), node: 1 });
        assert!(matches!(r.ingest(&k, &[a, b]), Err(ChainError::Conflict(_))));
    }
}
