//! One mailbox as one node serves it: the settled view (what clients may
//! see), and, on the node that sequences it, the sequencer.
//!
//! The protocol (docs/consistency.md argues it):
//! - **Sequencing**: the sequencer of epoch E writes entry (E, n) with a
//!   quorum write, then reads the announcements; only if none is above E
//!   does it acknowledge (group commit: one entry carries every op queued
//!   meanwhile).
//! - **Takeover**: announce E' (quorum write), then read the log with read
//!   repair, then write Start(E', prev = (head, last contiguous entry)),
//!   then check the announcements again.
//! - **Reading**: a node makes entries visible only after reading them with
//!   read repair *and then* finding no announcement above the head without
//!   its start.
//!
//! Together: whatever was acknowledged or shown is on a quorum before any
//! later takeover reads the log, so every later fence includes it; what a
//! deposed sequencer wrote afterwards lies beyond the fence and is void for
//! everyone. The chain is never forked, so UIDs are never renumbered and
//! no clock is trusted.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::{oneshot, Mutex};

use super::chain::{encode, is_prefix, Link, Records};
use super::index::MailboxIndex;
use super::log::{LogError, LogStorage};
use super::model::{keys, Announcement, Checkpoint, Entry, Epoch, NodeSlot, Op, OpId, Outcome, Sequenced, Start};

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum MailError {
    /// Retry later: no quorum, a node unreachable.
    #[error("mailbox temporarily unavailable: {0}")]
    Unavailable(String),
    /// Another node sequences this mailbox, or is taking it over: retry
    /// through it (taking over in turn would only prolong the duel).
    #[error("mailbox temporarily unavailable: {0}")]
    Contended(String),
    /// The operation itself is refused (e.g. too many keywords).
    #[error("{0}")]
    Invalid(String),
    #[error("mailbox damaged: {0}")]
    Corrupt(String),
}

impl From<LogError> for MailError {
    fn from(e: LogError) -> Self {
        match e {
            LogError::Unavailable(m) => MailError::Unavailable(m),
            LogError::Corrupt(m) => MailError::Corrupt(m),
        }
    }
}

impl From<super::chain::ChainError> for MailError {
    fn from(e: super::chain::ChainError) -> Self {
        MailError::Corrupt(e.to_string())
    }
}

/// Deliberate protocol bugs, for showing that the simulation's oracle
/// catches them. Never set outside tests.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Mutation {
    /// Acknowledge without checking for a newer announcement.
    SkipAnnouncementCheck,
    /// Read without read repair.
    NoReadRepair,
    /// Show entries even while a takeover is pending.
    IgnorePending,
    /// Fence one entry short of what was read.
    EarlyFence,
    /// Read the checkpoints before the entries (a trim in between hides
    /// entries behind a checkpoint the reader does not know yet).
    CheckpointsFirst,
}

#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// This node's slot (its epochs carry it).
    pub node: NodeSlot,
    /// Bound on each storage call and forwarded request.
    pub timeout: Duration,
    /// Forwarding attempts before taking over.
    pub forward_attempts: u32,
    /// UIDVALIDITY for mailboxes this node creates.
    pub uidvalidity: u32,
    /// The sequencer writes a checkpoint every this many entries (0: never)
    /// and trims the entries the previous checkpoint covers.
    pub checkpoint_every: u64,
    pub mutation: Option<Mutation>,
}

/// How many times [`Mailbox::submit_here`] follows "another node sequences
/// this mailbox" before giving up, and the pause that grows between tries.
const CONTENDED_RETRIES: u32 = 6;
const CONTENDED_PAUSE: Duration = Duration::from_millis(25);

/// What [`Mailbox::submit_here`] did.
pub struct Submitted {
    pub sequenced: Sequenced,
    /// Sequenced by this node (else forwarded to the sequencer, which told
    /// the other nodes itself).
    pub here: bool,
    /// This node's view shows the operations already.
    pub shown: bool,
}

/// How a node reaches another node's sequencer.
#[async_trait]
pub trait Peers: Send + Sync + 'static {
    /// Asks `node` to sequence `ops` in `mailbox`.
    async fn forward(&self, node: NodeSlot, mailbox: &str, ops: Vec<(OpId, Op)>) -> Result<Sequenced, MailError>;
}

/// What one read of the log found.
enum Pass {
    /// No mailbox yet.
    Empty,
    /// The chain is incomplete (a record is missing or a takeover moved on):
    /// read again.
    Again,
    Chain(Vec<Link>),
}

/// What clients may see: a settled prefix of the chain, applied.
#[derive(Clone, Debug)]
struct View {
    chain: Vec<Link>,
    index: MailboxIndex,
}

struct Active {
    epoch: Epoch,
    next_seq: u64,
    /// Set while an entry is being written and checked. Still set on the
    /// next call means the last call was cancelled midway (its caller went
    /// away): that entry may or may not have landed, so the epoch ends.
    in_flight: bool,
}

struct Inner {
    records: Records,
    view: Option<View>,
    active: Option<Active>,
    /// A takeover seen pending, and since when.
    pending: Option<(Epoch, tokio::time::Instant)>,
}

type Waiter = (Vec<(OpId, Op)>, oneshot::Sender<Result<Sequenced, MailError>>);

pub struct Mailbox<S: LogStorage, P: Peers> {
    id: String,
    cfg: EngineConfig,
    storage: Arc<S>,
    peers: Arc<P>,
    inner: Mutex<Inner>,
    queue: std::sync::Mutex<Vec<Waiter>>,
    /// Times the view had to be rebuilt because it was not a prefix of the
    /// chain: always 0 if the protocol holds (the simulation checks it).
    rebuilds: std::sync::atomic::AtomicU64,
}

/// Entries of `new` not covered by `old` (a prefix of it), in order.
fn entries_after<'a>(records: &'a Records, old: &[Link], new: &[Link]) -> Vec<&'a Entry> {
    let mut out = vec![];
    for (i, link) in new.iter().enumerate() {
        let from = old.get(i).map_or(1, |o| o.upto + 1);
        for s in from..=link.upto {
            if let Some(e) = records.entries.get(&(link.epoch, s)) {
                out.push(e);
            }
        }
    }
    out
}

impl<S: LogStorage, P: Peers> Mailbox<S, P> {
    pub fn new(id: &str, cfg: EngineConfig, storage: Arc<S>, peers: Arc<P>) -> Self {
        Mailbox {
            id: id.to_string(),
            cfg,
            storage,
            peers,
            inner: Mutex::new(Inner {
                records: Records::default(),
                view: None,
                active: None,
                pending: None,
            }),
            queue: std::sync::Mutex::new(vec![]),
            rebuilds: Default::default(),
        }
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    fn mutated(&self, m: Mutation) -> bool {
        self.cfg.mutation == Some(m)
    }

    async fn timed<T>(&self, f: impl std::future::Future<Output = Result<T, LogError>>) -> Result<T, MailError> {
        match tokio::time::timeout(self.cfg.timeout, f).await {
            Ok(r) => r.map_err(MailError::from),
            Err(_) => Err(MailError::Unavailable("storage did not answer in time".into())),
        }
    }

    async fn read_into(&self, inner: &mut Inner, prefix: &str, from: &str) -> Result<(), MailError> {
        for (k, v) in &self.fetch_all(&[(prefix, from)]).await? {
            inner.records.ingest(k, v)?;
        }
        Ok(())
    }

    /// The first entry key worth reading: the first the chain lacks, or the
    /// one after the head's last.
    fn entry_read_start(records: &Records) -> String {
        match records.chain() {
            Some(chain) => match records.first_missing(&chain) {
                Some((e, s)) => keys::entry(e, s),
                None => {
                    let head = chain.last().map_or(Epoch::default(), |l| l.epoch);
                    keys::entry(head, records.contiguous(head) + 1)
                }
            },
            None => keys::ENTRY.to_string(),
        }
    }

    /// Reads prefixes at once (each from its own start key): one round trip.
    async fn fetch_all(&self, reads: &[(&str, &str)]) -> Result<Vec<(String, Vec<Vec<u8>>)>, MailError> {
        let monotonic = !self.mutated(Mutation::NoReadRepair);
        let all = futures::future::join_all(
            reads.iter().map(|(prefix, from)| self.timed(self.storage.read(&self.id, prefix, from, monotonic))),
        )
        .await;
        let mut out = vec![];
        for recs in all {
            out.extend(recs?);
        }
        Ok(out)
    }

    /// One pass of reading the log: entries from `from` on, then
    /// everything whose read must start after the entry read completed
    /// (checkpoints, starts, announcements), together: their order among
    /// themselves does not matter (concurrent reads are as if issued in
    /// some order, and each order is safe). Two round trips; no lock held,
    /// so a sequencer on this node goes on meanwhile.
    async fn read_records(&self, from: &str) -> Result<Vec<(String, Vec<Vec<u8>>)>, MailError> {
        let mut recs = vec![];
        if self.mutated(Mutation::CheckpointsFirst) {
            recs.extend(self.fetch_all(&[(keys::CHECKPOINT, keys::CHECKPOINT)]).await?);
        }
        recs.extend(self.fetch_all(&[(keys::ENTRY, from)]).await?);
        // Checkpoints after the entries: entries are trimmed only once a
        // newer checkpoint is written, so whatever this entry read found
        // missing, this read finds covered. Starts and announcements after
        // the entries: they decide whether the entries may be shown.
        let after: &[(&str, &str)] = if self.mutated(Mutation::CheckpointsFirst) {
            &[(keys::START, keys::START), (keys::ANNOUNCE, keys::ANNOUNCE)]
        } else {
            &[(keys::CHECKPOINT, keys::CHECKPOINT), (keys::START, keys::START), (keys::ANNOUNCE, keys::ANNOUNCE)]
        };
        recs.extend(self.fetch_all(after).await?);
        Ok(recs)
    }

    /// What a read pass tells about the chain, once its records are in.
    fn settled_chain(records: &Records) -> Pass {
        match records.chain() {
            None if records.starts.is_empty() => Pass::Empty,
            None => Pass::Again,
            Some(chain) if records.first_missing(&chain).is_some() => Pass::Again,
            Some(chain) => Pass::Chain(chain),
        }
    }

    /// Reads the log until the chain it defines is complete. Returns the
    /// chain (None: no mailbox yet). For the sequencer's takeover, which
    /// holds the lock throughout.
    async fn read_log(&self, inner: &mut Inner) -> Result<Option<Vec<Link>>, MailError> {
        for _ in 0..16 {
            let from = Self::entry_read_start(&inner.records);
            for (k, v) in &self.read_records(&from).await? {
                inner.records.ingest(k, v)?;
            }
            match Self::settled_chain(&inner.records) {
                Pass::Empty => return Ok(None),
                Pass::Again => continue,
                Pass::Chain(c) => return Ok(Some(c)),
            }
        }
        Err(MailError::Unavailable("the log did not settle".into()))
    }

    /// Loads the base checkpoint's snapshot as a view.
    async fn load_checkpoint(&self, c: &Checkpoint) -> Result<View, MailError> {
        let bytes = self
            .timed(self.storage.get_snapshot(&self.id, &c.snapshot))
            .await?
            .ok_or_else(|| MailError::Unavailable(format!("checkpoint {} not readable yet", c.snapshot)))?;
        let index: MailboxIndex =
            rmp_serde::from_slice(&bytes).map_err(|e| MailError::Corrupt(format!("checkpoint {}: {e}", c.snapshot)))?;
        Ok(View {
            chain: c.links.iter().map(|(epoch, upto)| Link { epoch: *epoch, upto: *upto }).collect(),
            index,
        })
    }

    /// Moves the view forward to `chain`: from where it is, or from the
    /// base checkpoint when the view is behind it (or absent), since the
    /// entries before the checkpoint may have been trimmed.
    async fn advance(&self, inner: &mut Inner, chain: Vec<Link>) -> Result<(), MailError> {
        let uidvalidity = chain
            .first()
            .and_then(|root| inner.records.starts.get(&root.epoch))
            .map_or(self.cfg.uidvalidity, |s| s.uidvalidity);
        let base = inner.records.base_on(&chain).cloned();
        let behind_base = |v: &View, b: &Checkpoint| {
            let pos = v.chain.last().map_or((Epoch::default(), 0), |l| (l.epoch, l.upto));
            pos < (b.epoch, b.seq)
        };
        let current = match (inner.view.take(), &base) {
            (Some(v), Some(b)) if behind_base(&v, b) => match self.load_checkpoint(b).await {
                Ok(c) => Some(c),
                Err(e) => {
                    inner.view = Some(v); // keep what we had
                    return Err(e);
                }
            },
            (None, Some(b)) => Some(self.load_checkpoint(b).await?),
            (v, _) => v,
        };
        let view = match current {
            Some(mut v) if is_prefix(&v.chain, &chain) => {
                for e in entries_after(&inner.records, &v.chain, &chain) {
                    v.index.apply(e);
                }
                v.chain = chain;
                v
            }
            old => {
                if let Some(o) = &old {
                    // Cannot happen if the protocol holds; rebuild rather than
                    // serve a state that is not the chain's.
                    self.rebuilds.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    log::error!(
                        "mailbox {}: the settled view {:?} is not a prefix of the log's chain {:?}; rebuilding",
                        self.id,
                        o.chain,
                        chain
                    );
                }
                let mut v = match &base {
                    Some(b) => match self.load_checkpoint(b).await {
                        Ok(c) => c,
                        Err(e) => {
                            inner.view = old;
                            return Err(e);
                        }
                    },
                    None => View { chain: vec![], index: MailboxIndex::new(uidvalidity) },
                };
                for e in entries_after(&inner.records, &v.chain, &chain) {
                    v.index.apply(e);
                }
                v.chain = chain;
                v
            }
        };
        if let Some(a) = &inner.active {
            if view.chain.last().map(|l| l.epoch) != Some(a.epoch) {
                inner.active = None; // someone took over
            }
        }
        // Entries the base checkpoint covers are never needed again.
        if let Some(b) = &base {
            let pos = (b.epoch, b.seq);
            inner.records.entries.retain(|k, _| *k > pos);
        }
        inner.view = Some(view);
        Ok(())
    }

    /// On the sequencer, every `checkpoint_every` entries: snapshot the
    /// settled view, point to it, and trim what the previous checkpoint
    /// covered. Failures only delay the next checkpoint.
    async fn maybe_checkpoint(&self, inner: &mut Inner, epoch: Epoch, seq: u64) {
        if self.cfg.checkpoint_every == 0 || seq % self.cfg.checkpoint_every != 0 {
            return;
        }
        let Some(view) = &inner.view else { return };
        let Ok(bytes) = rmp_serde::to_vec_named(&view.index) else { return };
        let c = Checkpoint {
            epoch,
            seq,
            links: view.chain.iter().map(|l| (l.epoch, l.upto)).collect(),
            snapshot: format!("{}-{:016x}", epoch.key(), seq),
        };
        if self.timed(self.storage.put_snapshot(&self.id, &c.snapshot, bytes)).await.is_err() {
            return;
        }
        if self.timed(self.storage.put(&self.id, &keys::checkpoint(epoch, seq), encode(&c))).await.is_err() {
            return;
        }
        let previous = inner.records.base().cloned();
        inner.records.checkpoints.insert((epoch, seq), c);
        // Keep one checkpoint of slack: nodes between the two still find
        // their entries; older ones reload from the newest checkpoint.
        if let Some(p) = previous {
            let older: Vec<Checkpoint> = inner.records.checkpoints.range(..(p.epoch, p.seq)).map(|(_, c)| c.clone()).collect();
            let upto = keys::entry(p.epoch, p.seq + 1);
            if self.timed(self.storage.delete_range(&self.id, keys::ENTRY, keys::ENTRY, &upto)).await.is_ok() {
                inner.records.entries.retain(|k, _| *k > (p.epoch, p.seq));
            }
            for o in older {
                let key = keys::checkpoint(o.epoch, o.seq);
                let next = keys::checkpoint(o.epoch, o.seq + 1);
                if self.timed(self.storage.delete_range(&self.id, keys::CHECKPOINT, &key, &next)).await.is_ok()
                    && self.timed(self.storage.delete_snapshot(&self.id, &o.snapshot)).await.is_ok()
                {
                    inner.records.checkpoints.remove(&(o.epoch, o.seq));
                }
            }
        }
    }

    /// Brings the view up to date with everything settled in storage, so
    /// that it includes whatever any client saw anywhere before this call.
    /// While a takeover is pending that cannot be known: the call fails
    /// (the client retries), and if the takeover stays pending longer than
    /// the timeout (its node died), this node takes over to settle the log.
    pub async fn refresh(&self) -> Result<(), MailError> {
        for _ in 0..16 {
            // Read without the lock (a sequencer here keeps sequencing);
            // ingest and decide under it, from everything known by then.
            let from = Self::entry_read_start(&self.inner.lock().await.records);
            let recs = self.read_records(&from).await?;
            let mut inner = self.inner.lock().await;
            for (k, v) in &recs {
                inner.records.ingest(k, v)?;
            }
            let chain = match Self::settled_chain(&inner.records) {
                Pass::Empty => return Ok(()),
                Pass::Again => continue,
                Pass::Chain(c) => c,
            };
            let head = chain.last().map_or(Epoch::default(), |l| l.epoch);
            return match inner.records.pending_above(head) {
                Some(p) if !self.mutated(Mutation::IgnorePending) => {
                    let now = tokio::time::Instant::now();
                    let since = match inner.pending {
                        Some((e, t)) if e == p => t,
                        _ => {
                            inner.pending = Some((p, now));
                            now
                        }
                    };
                    if now.duration_since(since) < self.cfg.timeout {
                        return Err(MailError::Contended("a takeover of this mailbox is in progress".into()));
                    }
                    inner.active = None;
                    self.take_over(&mut inner).await
                }
                _ => {
                    inner.pending = None;
                    self.advance(&mut inner, chain).await
                }
            };
        }
        Err(MailError::Unavailable("the log did not settle".into()))
    }

    /// How often the view was rebuilt (see `rebuilds`).
    pub fn rebuilds(&self) -> u64 {
        self.rebuilds.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Where the settled view ends: the chain, as (epoch, last entry) links.
    pub async fn position(&self) -> Vec<(Epoch, u64)> {
        let inner = self.inner.lock().await;
        inner.view.as_ref().map(|v| v.chain.iter().map(|l| (l.epoch, l.upto)).collect()).unwrap_or_default()
    }

    /// The settled state (None: the mailbox has no log yet).
    pub async fn snapshot(&self) -> Option<MailboxIndex> {
        self.inner.lock().await.view.as_ref().map(|v| v.index.clone())
    }

    /// Runs `f` on the settled state without copying it.
    pub async fn with_view<T>(&self, f: impl FnOnce(Option<&MailboxIndex>) -> T) -> T {
        let inner = self.inner.lock().await;
        f(inner.view.as_ref().map(|v| &v.index))
    }

    /// Shows an entry its sequencer reports settled (it sends it only after
    /// its announcement check passed), without reading the log: settled
    /// entries are inside every later fence, so appending one to a view
    /// that ends just before it in the same epoch keeps the view a settled
    /// prefix of the chain. Anything else (a gap, another epoch, this node
    /// sequencing itself) is left to `refresh`. True if the view shows the
    /// entry afterwards.
    pub async fn show_settled(&self, entry: Entry) -> bool {
        let mut inner = self.inner.lock().await;
        if inner.active.is_some() {
            return false;
        }
        let Some(view) = inner.view.as_mut() else { return false };
        let Some(last) = view.chain.last_mut() else { return false };
        if last.epoch != entry.epoch || entry.seq > last.upto + 1 {
            return false;
        }
        if entry.seq <= last.upto {
            return true;
        }
        view.index.apply(&entry);
        last.upto = entry.seq;
        inner.records.entries.insert((entry.epoch, entry.seq), entry);
        true
    }

    /// Whether the settled view includes the entry stored under `key`.
    pub async fn shows_entry(&self, key: &str) -> bool {
        let Some((epoch, seq)) = keys::parse_entry(key) else { return false };
        let inner = self.inner.lock().await;
        inner.view.as_ref().is_some_and(|v| v.chain.iter().any(|l| l.epoch == epoch && seq <= l.upto))
    }

    /// The node that sequences this mailbox, as far as this node knows: a
    /// node taking over (announced, not started yet) counts as it already.
    pub async fn sequencer(&self) -> Option<NodeSlot> {
        let inner = self.inner.lock().await;
        if inner.active.is_some() {
            return Some(self.cfg.node);
        }
        let head = inner.records.head();
        match inner.records.pending_above(head.map_or(Epoch::default(), |h| h.epoch)) {
            Some(e) => Some(e.node()),
            None => head.map(|h| h.node),
        }
    }

    /// Becomes the sequencer: announce, read (with repair), start, check.
    async fn take_over(&self, inner: &mut Inner) -> Result<(), MailError> {
        log::debug!("mailbox {}: node {} takes over", self.id, self.cfg.node);
        let _ = self.read_log(inner).await?;
        let epoch = Epoch::new(inner.records.max_counter() + 1, self.cfg.node);
        let ann = Announcement { epoch, node: self.cfg.node };
        self.timed(self.storage.put(&self.id, &keys::announce(epoch), encode(&ann))).await?;
        inner.records.announcements.insert(epoch, ann);

        let chain = self.read_log(inner).await?;
        if inner.records.announced_above(epoch) {
            return Err(MailError::Contended("another node is taking over this mailbox".into()));
        }
        let (prev, uidvalidity) = match &chain {
            Some(chain) => {
                let head = chain.last().copied().unwrap_or(Link { epoch: Epoch::default(), upto: 0 });
                let fence = if self.mutated(Mutation::EarlyFence) { head.upto.saturating_sub(1) } else { head.upto };
                let root = chain.first().and_then(|l| inner.records.starts.get(&l.epoch));
                (Some((head.epoch, fence)), root.map_or(self.cfg.uidvalidity, |s| s.uidvalidity))
            }
            None => (None, self.cfg.uidvalidity),
        };
        let start = Start { epoch, node: self.cfg.node, prev, uidvalidity };
        self.timed(self.storage.put(&self.id, &keys::start(epoch), encode(&start))).await?;
        self.read_into(inner, keys::ANNOUNCE, keys::ANNOUNCE).await?;
        if inner.records.announced_above(epoch) {
            return Err(MailError::Contended("another node is taking over this mailbox".into()));
        }
        inner.records.starts.insert(epoch, start);
        let chain = inner.records.chain().ok_or_else(|| MailError::Corrupt("chain broken after takeover".into()))?;
        self.advance(inner, chain).await?;
        inner.active = Some(Active { epoch, next_seq: 1, in_flight: false });
        log::debug!("mailbox {}: node {} sequences in epoch {:?}", self.id, self.cfg.node, epoch);
        Ok(())
    }

    /// Orders `ops` on this node (taking over if it is not the sequencer).
    /// Concurrent callers share one log entry (group commit).
    pub async fn sequence(&self, ops: Vec<(OpId, Op)>) -> Result<Sequenced, MailError> {
        let (tx, rx) = oneshot::channel();
        if let Ok(mut q) = self.queue.lock() {
            q.push((ops, tx));
        }
        {
            let mut inner = self.inner.lock().await;
            let batch: Vec<Waiter> = match self.queue.lock() {
                Ok(mut q) => std::mem::take(&mut *q),
                Err(_) => vec![],
            };
            if !batch.is_empty() {
                let all: Vec<(OpId, Op)> = batch.iter().flat_map(|(ops, _)| ops.iter().cloned()).collect();
                let result = self.sequence_locked(&mut inner, all).await;
                let mut offset = 0;
                for (ops, tx) in batch {
                    let mine = result
                        .as_ref()
                        .map(|(o, entry)| Sequenced {
                            outcomes: o[offset..offset + ops.len()].to_vec(),
                            entry: Some(entry.clone()),
                        })
                        .map_err(Clone::clone);
                    offset += ops.len();
                    let _ = tx.send(mine);
                }
            }
        }
        rx.await.unwrap_or_else(|_| Err(MailError::Unavailable("sequencer stopped".into())))
    }

    async fn sequence_locked(&self, inner: &mut Inner, ops: Vec<(OpId, Op)>) -> Result<(Vec<Outcome>, Entry), MailError> {
        if inner.active.as_ref().is_some_and(|a| a.in_flight) {
            inner.active = None;
        }
        if inner.active.is_none() {
            self.take_over(inner).await?;
        }
        let epoch = inner.active.as_ref().map(|a| a.epoch).unwrap_or_default();
        let seq = inner.active.as_ref().map_or(1, |a| a.next_seq);
        {
            let Some(view) = inner.view.as_ref() else {
                inner.active = None;
                return Err(MailError::Unavailable("the mailbox state is not loaded yet".into()));
            };
            for (_, op) in &ops {
                view.index.check(op).map_err(|e| MailError::Invalid(e.to_string()))?;
            }
        }
        let entry = Entry { epoch, seq, ops };
        if let Some(a) = inner.active.as_mut() {
            a.in_flight = true;
        }
        if let Err(e) = self.timed(self.storage.put(&self.id, &keys::entry(epoch, seq), encode(&entry))).await {
            // A write in doubt may still land: this epoch cannot go on
            // (its next entry would follow a possible gap).
            inner.active = None;
            return Err(e);
        }
        if !self.mutated(Mutation::SkipAnnouncementCheck) {
            if let Err(e) = self.read_into(inner, keys::ANNOUNCE, keys::ANNOUNCE).await {
                inner.active = None;
                return Err(e);
            }
            if inner.records.announced_above(epoch) {
                inner.active = None;
                return Err(MailError::Contended("this node's sequencer was superseded".into()));
            }
        }
        if let Some(a) = inner.active.as_mut() {
            a.next_seq += 1;
            a.in_flight = false;
        }
        let outcomes: Vec<Outcome> = {
            let view = inner.view.as_mut().ok_or_else(|| MailError::Corrupt("no view".into()))?;
            let out = view.index.apply(&entry).into_iter().map(|(_, o)| o).collect();
            if let Some(last) = view.chain.last_mut() {
                last.upto = seq;
            }
            out
        };
        inner.records.entries.insert((epoch, seq), entry.clone());
        self.maybe_checkpoint(inner, epoch, seq).await;
        Ok((outcomes, entry))
    }

    /// What a client's operation goes through on any node: sent to the
    /// sequencer (this node or another); if that fails, the node catches up
    /// with the log (a takeover may have happened) and tries again; if the
    /// sequencer stays unreachable, this node takes over. Operation ids make
    /// the retries safe: an op already applied is not applied again.
    pub async fn submit(&self, ops: Vec<(OpId, Op)>) -> Result<Vec<Outcome>, MailError> {
        Ok(self.submit_here(ops).await?.sequenced.outcomes)
    }

    /// [`Self::submit`], also saying where the operations were sequenced
    /// and whether this node's view shows them already.
    pub async fn submit_here(&self, ops: Vec<(OpId, Op)>) -> Result<Submitted, MailError> {
        if self.inner.lock().await.records.starts.is_empty() {
            // Never read: learn who sequences before anything else.
            let _ = self.refresh().await;
        }
        // Forwards that failed in transport (the sequencer may be gone): after
        // `forward_attempts` of them this node takes over. Answers that
        // another node sequences or is taking over are followed instead,
        // with a short pause, a bounded number of times.
        let mut unreachable = 0;
        let mut contended = 0;
        let mut last = MailError::Unavailable("no attempt made".into());
        while unreachable <= self.cfg.forward_attempts && contended <= CONTENDED_RETRIES {
            let target = self.sequencer().await;
            let local = match target {
                None => true,
                Some(n) => n == self.cfg.node || unreachable == self.cfg.forward_attempts,
            };
            let result = if local {
                self.sequence(ops.clone()).await
            } else {
                let n = target.unwrap_or(self.cfg.node);
                match tokio::time::timeout(self.cfg.timeout, self.peers.forward(n, &self.id, ops.clone())).await {
                    Ok(r) => r,
                    Err(_) => Err(MailError::Unavailable("the sequencer did not answer in time".into())),
                }
            };
            match result {
                Ok(sequenced) if local => return Ok(Submitted { sequenced, here: true, shown: true }),
                Ok(sequenced) => {
                    let shown = match &sequenced.entry {
                        Some(e) => self.show_settled(e.clone()).await,
                        None => false,
                    };
                    return Ok(Submitted { sequenced, here: false, shown });
                }
                Err(e @ (MailError::Invalid(_) | MailError::Corrupt(_))) => return Err(e),
                Err(e @ MailError::Contended(_)) => {
                    contended += 1;
                    last = e;
                    // Staggered by node, so that duelling nodes fall out of step.
                    let pause = CONTENDED_PAUSE * contended + CONTENDED_PAUSE * u32::from(self.cfg.node) / 4;
                    tokio::time::sleep(pause).await;
                    let _ = self.refresh().await;
                }
                Err(e) => {
                    if local {
                        // No quorum here: taking over again would not help.
                        return Err(e);
                    }
                    unreachable += 1;
                    last = e;
                    let _ = self.refresh().await;
                }
            }
        }
        Err(last)
    }
}
