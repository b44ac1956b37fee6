//! The state of one mailbox as IMAP sees it, computed by applying log
//! entries in order: messages with their UIDs, flags and MODSEQs, UIDNEXT,
//! HIGHESTMODSEQ, and the UIDs expunged since a MODSEQ (for QRESYNC's
//! VANISHED). Pure and deterministic: every node that applies the same
//! entries gets the same state, which is how UIDs are agreed on.
//!
//! Resident size: a message is 24 bytes (UID, message id, flag bits,
//! MODSEQ); an expunged UID 12 bytes. Keywords are interned per mailbox
//! into the flag bits.

use serde::{Deserialize, Serialize};

use super::model::{Entry, FlagMode, MessageId, ModSeq, Op, OpId, Outcome, Uid};

/// System flags take the low bits; keywords the rest.
const SYSTEM_FLAGS: [&str; 5] = ["\\Seen", "\\Answered", "\\Flagged", "\\Deleted", "\\Draft"];
/// At most this many distinct keywords per mailbox (64 flag bits).
pub const MAX_KEYWORDS: usize = 64 - SYSTEM_FLAGS.len();
/// Operation ids remembered to make retried operations idempotent.
const RECENT_OPS: usize = 4096;

#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Message {
    pub uid: Uid,
    pub id: MessageId,
    pub flags: u64,
    pub modseq: ModSeq,
}

#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct MailboxIndex {
    pub uidvalidity: u32,
    pub uidnext: Uid,
    pub highestmodseq: ModSeq,
    messages: Vec<Message>,
    expunged: Vec<(Uid, ModSeq)>,
    keywords: Vec<String>,
    recent: std::collections::VecDeque<(OpId, Outcome)>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IndexError {
    #[error("more than {MAX_KEYWORDS} keywords in this mailbox")]
    TooManyKeywords,
    #[error("the UID space of this mailbox is exhausted")]
    UidsExhausted,
}

impl MailboxIndex {
    pub fn new(uidvalidity: u32) -> Self {
        MailboxIndex {
            uidvalidity,
            uidnext: 1,
            highestmodseq: 1,
            messages: vec![],
            expunged: vec![],
            keywords: vec![],
            recent: Default::default(),
        }
    }

    /// Approximate heap bytes held by this index.
    pub fn resident_bytes(&self) -> usize {
        self.messages.capacity() * std::mem::size_of::<Message>()
            + self.expunged.capacity() * std::mem::size_of::<(Uid, ModSeq)>()
            + self.keywords.iter().map(|k| k.capacity() + 24).sum::<usize>()
            + self.recent.capacity() * (std::mem::size_of::<(OpId, Outcome)>())
            + self.recent.iter().map(|(_, o)| o.modified.capacity() * 4).sum::<usize>()
    }

    pub fn len(&self) -> usize {
        self.messages.len()
    }
    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }
    pub fn messages(&self) -> &[Message] {
        &self.messages
    }

    /// 1-based sequence number of a UID.
    pub fn seq_of(&self, uid: Uid) -> Option<u32> {
        self.messages.binary_search_by_key(&uid, |m| m.uid).ok().map(|i| i as u32 + 1)
    }
    pub fn by_seq(&self, seq: u32) -> Option<&Message> {
        self.messages.get((seq as usize).checked_sub(1)?)
    }
    pub fn get(&self, uid: Uid) -> Option<&Message> {
        self.messages.binary_search_by_key(&uid, |m| m.uid).ok().map(|i| &self.messages[i])
    }

    /// Messages changed (or added) after `modseq` (CONDSTORE CHANGEDSINCE).
    pub fn changed_since(&self, modseq: ModSeq) -> impl Iterator<Item = &Message> {
        self.messages.iter().filter(move |m| m.modseq > modseq)
    }
    /// UIDs expunged after `modseq` (QRESYNC VANISHED (EARLIER)).
    pub fn vanished_since(&self, modseq: ModSeq) -> impl Iterator<Item = Uid> + '_ {
        self.expunged.iter().filter(move |(_, m)| *m > modseq).map(|(u, _)| *u)
    }

    /// How many flag names the mailbox has: the system flags and every
    /// keyword used in it (keywords are only ever added).
    pub fn flag_count(&self) -> usize {
        SYSTEM_FLAGS.len() + self.keywords.len()
    }

    /// Flag names of a bit set.
    pub fn flag_names(&self, bits: u64) -> Vec<String> {
        let mut out = vec![];
        for (i, f) in SYSTEM_FLAGS.iter().enumerate() {
            if bits & (1 << i) != 0 {
                out.push(f.to_string());
            }
        }
        for (i, k) in self.keywords.iter().enumerate() {
            if bits & (1 << (i + SYSTEM_FLAGS.len())) != 0 {
                out.push(k.clone());
            }
        }
        out
    }

    fn bits(&mut self, flags: &[String]) -> Result<u64, IndexError> {
        let mut bits = 0u64;
        for f in flags {
            if let Some(i) = SYSTEM_FLAGS.iter().position(|s| s.eq_ignore_ascii_case(f)) {
                bits |= 1 << i;
                continue;
            }
            let i = match self.keywords.iter().position(|k| k.eq_ignore_ascii_case(f)) {
                Some(i) => i,
                None => {
                    if self.keywords.len() >= MAX_KEYWORDS {
                        return Err(IndexError::TooManyKeywords);
                    }
                    self.keywords.push(f.clone());
                    self.keywords.len() - 1
                }
            };
            bits |= 1 << (i + SYSTEM_FLAGS.len());
        }
        Ok(bits)
    }

    /// The outcome an earlier application of this operation id had.
    pub fn outcome_of(&self, op: OpId) -> Option<&Outcome> {
        self.recent.iter().find(|(id, _)| *id == op).map(|(_, o)| o)
    }

    /// Whether an op can be applied (checked by the sequencer before it
    /// writes, so that every logged op applies everywhere).
    pub fn check(&self, op: &Op) -> Result<(), IndexError> {
        match op {
            Op::Append { flags, .. } | Op::Store { flags, .. } => {
                let new = flags
                    .iter()
                    .filter(|f| !SYSTEM_FLAGS.iter().any(|s| s.eq_ignore_ascii_case(f)))
                    .filter(|f| !self.keywords.iter().any(|k| k.eq_ignore_ascii_case(f)))
                    .count();
                if self.keywords.len() + new > MAX_KEYWORDS {
                    return Err(IndexError::TooManyKeywords);
                }
            }
            Op::Expunge { .. } => {}
        }
        if matches!(op, Op::Append { .. }) && self.uidnext == Uid::MAX {
            return Err(IndexError::UidsExhausted);
        }
        Ok(())
    }

    /// Applies one operation; each op that is not a replay gets the next
    /// MODSEQ. Replays (an op id seen recently) change nothing.
    pub fn apply_op(&mut self, op_id: OpId, op: &Op) -> Outcome {
        if let Some(o) = self.outcome_of(op_id) {
            return o.clone();
        }
        let modseq = self.highestmodseq + 1;
        let mut outcome = Outcome {
            uid: None,
            modseq,
            modified: vec![],
        };
        match op {
            Op::Append { message, flags } => {
                // `check` ran before logging; a keyword overflow here can only
                // come from a damaged log, and then the flags are dropped.
                let bits = self.bits(flags).unwrap_or(0);
                let uid = self.uidnext;
                self.messages.push(Message {
                    uid,
                    id: *message,
                    flags: bits,
                    modseq,
                });
                self.uidnext = uid.saturating_add(1);
                outcome.uid = Some(uid);
            }
            Op::Store { uids, mode, flags, unchanged_since } => {
                let bits = self.bits(flags).unwrap_or(0);
                for uid in uids {
                    let Ok(i) = self.messages.binary_search_by_key(uid, |m| m.uid) else { continue };
                    let m = &mut self.messages[i];
                    if unchanged_since.is_some_and(|u| m.modseq > u) {
                        outcome.modified.push(*uid);
                        continue;
                    }
                    let new = match mode {
                        FlagMode::Add => m.flags | bits,
                        FlagMode::Remove => m.flags & !bits,
                        FlagMode::Replace => bits,
                    };
                    if new != m.flags {
                        m.flags = new;
                        m.modseq = modseq;
                    }
                }
            }
            Op::Expunge { uids } => {
                // Sorted once: expunging many of many messages stays
                // n log n, not n times m.
                let mut doomed = uids.clone();
                doomed.sort_unstable();
                let expunged = &mut self.expunged;
                self.messages.retain(|m| {
                    let gone = doomed.binary_search(&m.uid).is_ok();
                    if gone {
                        expunged.push((m.uid, modseq));
                    }
                    !gone
                });
            }
        }
        self.highestmodseq = modseq;
        self.recent.push_back((op_id, outcome.clone()));
        if self.recent.len() > RECENT_OPS {
            self.recent.pop_front();
        }
        outcome
    }

    /// Applies a whole log entry; returns each op's outcome.
    pub fn apply(&mut self, entry: &Entry) -> Vec<(OpId, Outcome)> {
        entry.ops.iter().map(|(id, op)| (*id, self.apply_op(*id, op))).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn append(ix: &mut MailboxIndex, op: OpId, msg: MessageId) -> Outcome {
        ix.apply_op(op, &Op::Append { message: msg, flags: vec![] })
    }

    #[test]
    fn uids_and_modseqs_increase() {
        let mut ix = MailboxIndex::new(7);
        assert_eq!(append(&mut ix, 1, 100).uid, Some(1));
        assert_eq!(append(&mut ix, 2, 101).uid, Some(2));
        assert_eq!(ix.uidnext, 3);
        assert_eq!(ix.highestmodseq, 3);
        let o = ix.apply_op(3, &Op::Store { uids: vec![1], mode: FlagMode::Add, flags: vec!["\\Seen".into()], unchanged_since: None });
        assert_eq!(o.modseq, 4);
        assert_eq!(ix.get(1).unwrap().modseq, 4);
        assert_eq!(ix.get(2).unwrap().modseq, 3);
        assert_eq!(ix.flag_names(ix.get(1).unwrap().flags), vec!["\\Seen"]);
        assert_eq!(ix.changed_since(3).map(|m| m.uid).collect::<Vec<_>>(), vec![1]);
    }

    #[test]
    fn expunge_is_remembered_for_vanished() {
        let mut ix = MailboxIndex::new(7);
        for i in 0..5 {
            append(&mut ix, i, 100 + i);
        }
        let hms = ix.highestmodseq;
        ix.apply_op(10, &Op::Expunge { uids: vec![2, 4, 99] });
        assert_eq!(ix.len(), 3);
        assert_eq!(ix.vanished_since(hms).collect::<Vec<_>>(), vec![2, 4], "only UIDs that existed");
        assert_eq!(ix.seq_of(3), Some(2));
        assert_eq!(ix.by_seq(3).unwrap().uid, 5);
        // UIDs are never reused after an expunge.
        assert_eq!(append(&mut ix, 11, 200).uid, Some(6));
    }

    #[test]
    fn unchanged_since_reports_modified() {
        let mut ix = MailboxIndex::new(7);
        append(&mut ix, 1, 100);
        append(&mut ix, 2, 101);
        ix.apply_op(3, &Op::Store { uids: vec![2], mode: FlagMode::Add, flags: vec!["$Junk".into()], unchanged_since: None });
        let o = ix.apply_op(4, &Op::Store { uids: vec![1, 2], mode: FlagMode::Add, flags: vec!["\\Flagged".into()], unchanged_since: Some(3) });
        assert_eq!(o.modified, vec![2]);
        assert_eq!(ix.flag_names(ix.get(2).unwrap().flags), vec!["$Junk"]);
    }

    #[test]
    fn replayed_ops_change_nothing() {
        let mut ix = MailboxIndex::new(7);
        let a = append(&mut ix, 1, 100);
        let b = append(&mut ix, 1, 100);
        assert_eq!(a, b);
        assert_eq!(ix.len(), 1);
        assert_eq!(ix.highestmodseq, 2);
    }

    #[test]
    fn keyword_limit() {
        let ix = MailboxIndex::new(7);
        let many: Vec<String> = (0..=MAX_KEYWORDS).map(|i| format!("k{i}")).collect();
        assert_eq!(ix.check(&Op::Append { message: 1, flags: many }), Err(IndexError::TooManyKeywords));
        assert!(ix.check(&Op::Append { message: 1, flags: vec!["k".into()] }).is_ok());
    }
}
