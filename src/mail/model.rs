//! The vocabulary of the mailbox engine: identifiers, operations, log
//! records. Plain data, serialisable, no behaviour beyond ordering.

use serde::{Deserialize, Serialize};

pub type Uid = u32;
pub type ModSeq = u64;
/// A message's identity, independent of mailbox and UID (COPY shares it).
pub type MessageId = u64;
/// A client operation's identity, so a retried operation is applied once.
pub type OpId = u64;
/// A node's position in the cluster (stable; from the layout order).
pub type NodeSlot = u8;

/// A sequencer's term. Ordered by counter, then by node, so two nodes that
/// claim the same counter still get distinct, ordered epochs.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize, Deserialize, Default)]
pub struct Epoch(pub u64);

impl Epoch {
    pub fn new(counter: u64, node: NodeSlot) -> Self {
        Epoch((counter << 8) | u64::from(node))
    }
    pub fn counter(self) -> u64 {
        self.0 >> 8
    }
    pub fn node(self) -> NodeSlot {
        (self.0 & 0xff) as NodeSlot
    }
    /// Fixed-width hex, so storage sort order is epoch order.
    pub fn key(self) -> String {
        format!("{:016x}", self.0)
    }
    pub fn parse(s: &str) -> Option<Self> {
        u64::from_str_radix(s, 16).ok().map(Epoch)
    }
}

/// How a STORE changes flags.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum FlagMode {
    Add,
    Remove,
    Replace,
}

/// A state change a client asks for. UIDs and MODSEQs are assigned by the
/// sequencer, not chosen by the client.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum Op {
    /// A new message (APPEND, delivery, the target side of COPY/MOVE).
    Append { message: MessageId, flags: Vec<String> },
    /// STORE: change flags of the listed UIDs (those that still exist and,
    /// with `unchanged_since`, have not changed since that MODSEQ).
    Store {
        uids: Vec<Uid>,
        mode: FlagMode,
        flags: Vec<String>,
        unchanged_since: Option<ModSeq>,
    },
    /// EXPUNGE (or the source side of MOVE) of the listed UIDs.
    Expunge { uids: Vec<Uid> },
}

/// What the sequencer decided for one operation.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Outcome {
    /// The UID given to an appended message.
    pub uid: Option<Uid>,
    /// The MODSEQ of the change (every op gets one, even if it changed nothing).
    pub modseq: ModSeq,
    /// UIDs a STORE did not change because of UNCHANGEDSINCE.
    pub modified: Vec<Uid>,
}

/// What a sequencer answers: the outcomes of the operations asked for, and
/// the entry that holds them, settled (written, then checked), so that the
/// asking node can show it without reading the log back.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Sequenced {
    pub outcomes: Vec<Outcome>,
    pub entry: Option<Entry>,
}

/// One record of a mailbox's log: a batch of operations the sequencer of
/// `epoch` ordered at position `seq` (group commit: one write, many ops).
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Entry {
    pub epoch: Epoch,
    pub seq: u64,
    pub ops: Vec<(OpId, Op)>,
}

/// "Node `node` is about to sequence this mailbox in `epoch`": written
/// before the new sequencer reads the log, so that the old one, which
/// checks for announcements after each write, stops in time.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Announcement {
    pub epoch: Epoch,
    pub node: NodeSlot,
}

/// The start of an epoch: which epoch it continues and up to which entry
/// of it (the fence). Entries of `prev` after the fence are void forever.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Start {
    pub epoch: Epoch,
    pub node: NodeSlot,
    pub prev: Option<(Epoch, u64)>,
    pub uidvalidity: u32,
}

/// A snapshot of the settled view at entry (epoch, seq): the chain up to
/// there and the index, stored as a blob named `snapshot`. Opening a
/// mailbox reads the newest one and the entries after it; older entries
/// are trimmed.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Checkpoint {
    pub epoch: Epoch,
    pub seq: u64,
    /// The chain up to this point: (epoch, last entry) per link.
    pub links: Vec<(Epoch, u64)>,
    pub snapshot: String,
}

/// Storage keys of the records, all in one partition per mailbox so that
/// one range read sees them. Fixed-width hex keeps sort order = log order.
pub mod keys {
    use super::Epoch;
    pub const ANNOUNCE: &str = "a/";
    pub const START: &str = "s/";
    pub const ENTRY: &str = "e/";
    pub const CHECKPOINT: &str = "c/";
    pub fn announce(e: Epoch) -> String {
        format!("{ANNOUNCE}{}", e.key())
    }
    pub fn start(e: Epoch) -> String {
        format!("{START}{}", e.key())
    }
    pub fn entry(e: Epoch, seq: u64) -> String {
        format!("{ENTRY}{}/{:016x}", e.key(), seq)
    }
    pub fn entries_of(e: Epoch) -> String {
        format!("{ENTRY}{}/", e.key())
    }
    pub fn checkpoint(e: Epoch, seq: u64) -> String {
        format!("{CHECKPOINT}{}/{:016x}", e.key(), seq)
    }
    /// Parses `e/<epoch>/<seq>`.
    pub fn parse_entry(k: &str) -> Option<(Epoch, u64)> {
        let rest = k.strip_prefix(ENTRY)?;
        let (e, s) = rest.split_once('/')?;
        Some((Epoch::parse(e)?, u64::from_str_radix(s, 16).ok()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epochs_order_by_counter_then_node() {
        assert!(Epoch::new(1, 9) < Epoch::new(2, 0));
        assert!(Epoch::new(2, 0) < Epoch::new(2, 1));
        assert_eq!(Epoch::new(5, 3).counter(), 5);
        assert_eq!(Epoch::new(5, 3).node(), 3);
        assert!(keys::entry(Epoch::new(1, 2), 15) < keys::entry(Epoch::new(1, 2), 16));
        assert!(keys::entry(Epoch::new(1, 2), 0xffff) < keys::entry(Epoch::new(2, 0), 0));
        assert_eq!(keys::parse_entry(&keys::entry(Epoch::new(7, 1), 42)), Some((Epoch::new(7, 1), 42)));
    }
}
