//! The mailbox engine: per-mailbox logs, the sequencer that orders them,
//! and the UID/MODSEQ index that IMAP reads.
//!
//! It knows nothing of IMAP syntax or of Garage: it speaks operations and
//! outcomes, and reaches storage and other nodes through the [`LogStorage`]
//! and [`Peers`] traits, so the deterministic simulation drives this exact
//! code. docs/consistency.md states the invariants and argues why they hold.

pub mod chain;
pub mod incoming;
pub mod index;
pub mod log;
pub mod mailbox;
pub mod mailboxes;
pub mod cleanup;
pub mod message;
pub mod model;
pub mod recent;
pub mod service;
pub mod usage;

pub use index::{MailboxIndex, Message};
pub use log::{LogError, LogStorage, StoreLog};
pub use mailbox::{EngineConfig, MailError, Mailbox, Mutation, Peers, Submitted};
pub use service::MailService;
pub use model::{Entry, Epoch, FlagMode, MessageId, ModSeq, NodeSlot, Op, OpId, Outcome, Sequenced, Uid};
