//! The mailbox engine on a real node: mailboxes over the Store API,
//! forwarding to other nodes' sequencers and change notifications over
//! Estafette's node RPC (carried by Garage's network stack).
//!
//! Keys: a mailbox's log is sealed with its owner's master key, so whoever
//! sequences it must hold the keys. The node where the user has a session
//! sends them along with the operations it forwards (over the encrypted,
//! authenticated node RPC); the sequencing node keeps them only while the
//! mailbox engine is open there, i.e. while that user is active. Mail for a
//! user with no session is not sequenced at all: it waits, sealed to the
//! user's public key, in the incoming queue until the next login files it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::log::StoreLog;
use super::mailbox::{EngineConfig, MailError, Mailbox, Peers};
use super::model::{Entry, NodeSlot, Op, OpId, Outcome, Sequenced};
use crate::accounts::UserKeys;
use crate::storage::{PeerEndpoint, PeerId, PeerMessage, PeerRpc, Store, UserId};

pub type EngineMailbox = Mailbox<StoreLog, RpcPeers>;

/// "Sequence these operations": sent to the mailbox's sequencer node.
#[derive(Clone, Serialize, Deserialize)]
pub struct SequenceRequest {
    user: [u8; 32],
    #[serde(with = "serde_bytes")]
    keys: Vec<u8>,
    mailbox: String,
    ops: Vec<(OpId, Op)>,
}

impl PeerMessage for SequenceRequest {
    type Response = Result<Sequenced, MailError>;
    const PATH: &'static str = "estafette/mail/Sequence";
}

/// "This mailbox has new settled entries": pushed after each acknowledged
/// batch to every connected node.
#[derive(Clone, Serialize, Deserialize)]
pub struct Changed {
    user: [u8; 32],
    mailbox: String,
    /// The settled entry that made the change, when small: a node with
    /// the mailbox open shows it without reading the log.
    entry: Option<Entry>,
}

/// How soon a queue scan that failed to file something runs again.
const RETRY_FILING: Duration = Duration::from_secs(3);

/// How long the long-poll waits for a push before it wakes watchers itself.
const PUSH_GRACE: Duration = Duration::from_secs(1);

/// Entries larger than this are announced without their content.
const CHANGED_ENTRY_MAX: usize = 64 * 1024;

impl PeerMessage for Changed {
    type Response = ();
    const PATH: &'static str = "estafette/mail/Changed";
}

/// "Mail was queued for this user": any node holding the user's keys (an
/// open mailbox engine) files it into INBOX.
#[derive(Clone, Serialize, Deserialize)]
pub struct Incoming {
    user: [u8; 32],
}

impl PeerMessage for Incoming {
    type Response = ();
    const PATH: &'static str = "estafette/mail/Incoming";
}

/// What a mailbox's watchers learn. `seq` moves on every change; `stale`
/// only when this node's view may be behind the log (a change sequenced on
/// another node, or found by the long-poll). A change sequenced here is in
/// the shared view already: sessions need to tell it, not to read the log.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Changes {
    pub seq: u64,
    pub stale: u64,
}

struct Open {
    mailbox: Arc<EngineMailbox>,
    /// The owner's keys, held while the engine is open.
    keys: Arc<UserKeys>,
    changes: watch::Sender<Changes>,
    /// The storage long-poll, while anyone watches.
    poller: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for Open {
    fn drop(&mut self) {
        // A long-poll holds an RPC open for up to a minute; closing the
        // mailbox (or the service) must not leave it running.
        if let Some(p) = self.poller.take() {
            p.abort();
        }
    }
}

/// The UIDVALIDITY a mailbox's first epoch records (later epochs copy it).
/// Every CREATE makes a new random id, so a mailbox created again under a
/// deleted one's name gets another value (RFC 9051 §2.3.1.1), and every
/// node racing to start the mailbox proposes the same one. Kept below 2^31
/// for clients that store it signed. INBOX is never recreated: it keeps
/// the node's start time, as before.
fn initial_uidvalidity(mailbox: &str, inbox: u32) -> u32 {
    if mailbox == super::mailboxes::INBOX_ID {
        return inbox;
    }
    let h = crate::crypto::keyed_hash(&[0; 32], &[b"estafette uidvalidity v1\0", mailbox.as_bytes()]);
    (u32::from_le_bytes([h[0], h[1], h[2], h[3]]) & 0x7fff_ffff).max(1)
}

/// A user's filing task: whether to scan once more when this scan ends,
/// with `all` (deliveries other nodes file included), and who waits for
/// that next scan.
#[derive(Default)]
struct Filing {
    again: bool,
    all_next: bool,
    waiting_next: Vec<tokio::sync::oneshot::Sender<()>>,
}

pub struct MailService {
    /// Storage usage per user (quotas).
    pub usage: Arc<super::usage::Usage>,
    /// Which messages IMAP4rev1 sessions on this node have seen as \Recent.
    pub recent: super::recent::RecentTracker,
    store: Store,
    rpc: PeerRpc,
    /// Node slot -> peer id, in the layout's order (slots are stable).
    slots: Vec<PeerId>,
    cfg: EngineConfig,
    open: Mutex<HashMap<(UserId, String), Open>>,
    /// Users whose queue is being scanned here, and what comes after.
    filing: Mutex<HashMap<UserId, Filing>>,
    /// Deliveries this node failed to file itself.
    direct_failed: Mutex<std::collections::HashSet<(UserId, super::model::MessageId)>>,
    /// Users with a later queue scan scheduled.
    rescans: Mutex<std::collections::HashSet<UserId>>,
    /// Messages recently filed by this node, per user: the queue scan
    /// only deletes their items.
    filed: Mutex<HashMap<UserId, std::collections::VecDeque<super::model::MessageId>>>,
    // Always Some once `new` returned Ok.
    sequence_ep: Option<PeerEndpoint<SequenceRequest>>,
    changed_ep: Option<PeerEndpoint<Changed>>,
    incoming_ep: Option<PeerEndpoint<Incoming>>,
}

/// Forwarding over the node RPC, for one user's mailboxes.
pub struct RpcPeers {
    service: Weak<MailService>,
    keys: Arc<UserKeys>,
}

#[async_trait]
impl Peers for RpcPeers {
    async fn forward(&self, node: NodeSlot, mailbox: &str, ops: Vec<(OpId, Op)>) -> Result<Sequenced, MailError> {
        let service = self.service.upgrade().ok_or_else(|| MailError::Unavailable("shutting down".into()))?;
        let peer = *service
            .slots
            .get(usize::from(node))
            .ok_or_else(|| MailError::Unavailable(format!("no node in slot {node}")))?;
        let req = SequenceRequest {
            user: self.keys.user.0,
            keys: self.keys.export().to_vec(),
            mailbox: mailbox.to_string(),
            ops,
        };
        let ep = service.sequence_ep.as_ref().ok_or_else(|| MailError::Unavailable("no RPC endpoint".into()))?;
        match ep.call(peer, req, service.cfg.timeout).await {
            Ok(r) => r,
            Err(e) => Err(MailError::Unavailable(e.to_string())),
        }
    }
}

impl MailService {
    /// Starts the engine on a node: `slot` is this node's index in `slots`.
    /// One per node (its RPC endpoints can be registered once).
    pub fn new(
        store: Store,
        rpc: PeerRpc,
        slots: Vec<PeerId>,
        slot: NodeSlot,
    ) -> Result<Arc<MailService>, crate::storage::StorageError> {
        let cfg = EngineConfig {
            node: slot,
            timeout: Duration::from_secs(10),
            forward_attempts: 2,
            uidvalidity: (std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_secs()) as u32)
                .max(1),
            checkpoint_every: 256,
            mutation: None,
        };
        let mut failed = None;
        let service = Arc::new_cyclic(|me: &Weak<MailService>| {
            let w = me.clone();
            let sequence_ep = rpc.register::<SequenceRequest, _>(move |_from, req| {
                let w = w.clone();
                Box::pin(async move {
                    let Some(service) = w.upgrade() else {
                        return Ok(Err(MailError::Unavailable("shutting down".into())));
                    };
                    Ok(service.handle_sequence(req).await)
                })
            });
            let w = me.clone();
            let changed_ep = rpc.register::<Changed, _>(move |_from, msg| {
                let w = w.clone();
                Box::pin(async move {
                    if let Some(service) = w.upgrade() {
                        service.changed_elsewhere(msg).await;
                    }
                    Ok(())
                })
            });
            let w = me.clone();
            let incoming_ep = rpc.register::<Incoming, _>(move |_from, msg| {
                let w = w.clone();
                Box::pin(async move {
                    if let Some(service) = w.upgrade() {
                        service.file_if_holding(&UserId(msg.user));
                    }
                    Ok(())
                })
            });
            let (sequence_ep, changed_ep, incoming_ep) = match (sequence_ep, changed_ep, incoming_ep) {
                (Ok(s), Ok(c), Ok(i)) => (Some(s), Some(c), Some(i)),
                (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => {
                    failed = Some(e);
                    (None, None, None)
                }
            };
            MailService {
                usage: super::usage::Usage::new(store.clone(), hex::encode(rpc.local_id())),
                recent: super::recent::RecentTracker::new(store.clone()),
                store,
                rpc,
                slots,
                cfg,
                open: Mutex::new(HashMap::new()),
                filing: Mutex::new(HashMap::new()),
                rescans: Mutex::new(Default::default()),
                direct_failed: Mutex::new(Default::default()),
                filed: Mutex::new(HashMap::new()),
                sequence_ep,
                changed_ep,
                incoming_ep,
            }
        });
        match failed {
            Some(e) => Err(e),
            None => Ok(service),
        }
    }

    /// Forgets this node's engine of a mailbox (the next use reopens it
    /// from storage, as after a restart).
    pub fn close(&self, user: &UserId, mailbox: &str) {
        self.open.lock().unwrap_or_else(|p| p.into_inner()).remove(&(*user, mailbox.to_string()));
    }

    async fn handle_sequence(self: &Arc<Self>, req: SequenceRequest) -> Result<Sequenced, MailError> {
        let keys = UserKeys::import(UserId(req.user), &req.keys).map_err(|e| MailError::Invalid(e.to_string()))?;
        let mb = self.mailbox(&Arc::new(keys), &req.mailbox);
        let out = mb.sequence(req.ops).await?;
        self.announce_change(&UserId(req.user), &req.mailbox, true, out.entry.as_ref());
        Ok(out)
    }

    /// Another node changed a mailbox: show its settled entry if the
    /// mailbox is open here and the entry follows the view; otherwise mark
    /// the view stale (watchers then read the log).
    async fn changed_elsewhere(&self, msg: Changed) {
        let user = UserId(msg.user);
        let mb = {
            let open = self.open.lock().unwrap_or_else(|p| p.into_inner());
            open.get(&(user, msg.mailbox.clone())).map(|o| o.mailbox.clone())
        };
        let shown = match (mb, msg.entry) {
            (Some(mb), Some(entry)) => mb.show_settled(entry).await,
            _ => false,
        };
        self.bump(&user, &msg.mailbox, !shown);
    }

    /// The engine of one mailbox on this node (opened on first use; kept
    /// while anyone holds it or until `sweep`).
    pub fn mailbox(self: &Arc<Self>, keys: &Arc<UserKeys>, mailbox: &str) -> Arc<EngineMailbox> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let entry = open.entry((keys.user, mailbox.to_string())).or_insert_with(|| {
            let storage = Arc::new(StoreLog::new(self.store.clone(), keys.clone()));
            let peers = Arc::new(RpcPeers {
                service: Arc::downgrade(self),
                keys: keys.clone(),
            });
            let cfg = EngineConfig {
                uidvalidity: initial_uidvalidity(mailbox, self.cfg.uidvalidity),
                ..self.cfg.clone()
            };
            Open {
                mailbox: Arc::new(Mailbox::new(mailbox, cfg, storage, peers)),
                keys: keys.clone(),
                changes: watch::channel(Changes::default()).0,
                poller: None,
            }
        });
        entry.mailbox.clone()
    }

    /// A receiver that changes whenever the mailbox may have new entries;
    /// IDLE waits on it, then refreshes. Changes are pushed by the
    /// sequencer over the node RPC; as a fallback (a push lost with a
    /// connection), the first watcher also long-polls the log in storage.
    pub fn watch(self: &Arc<Self>, keys: &Arc<UserKeys>, mailbox: &str) -> watch::Receiver<Changes> {
        self.mailbox(keys, mailbox);
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        match open.get_mut(&(keys.user, mailbox.to_string())) {
            Some(o) => {
                let rx = o.changes.subscribe();
                if o.poller.as_ref().is_none_or(|p| p.is_finished()) {
                    o.poller = Some(self.spawn_long_poll(keys.clone(), mailbox.to_string()));
                }
                rx
            }
            None => watch::channel(Changes::default()).1,
        }
    }

    fn spawn_long_poll(self: &Arc<Self>, keys: Arc<UserKeys>, mailbox: String) -> tokio::task::JoinHandle<()> {
        let me = Arc::downgrade(self);
        let store = self.store.clone();
        tokio::spawn(async move {
            let partition = format!("log/{mailbox}");
            let mut marker = None;
            loop {
                let watched = match me.upgrade() {
                    Some(s) => {
                        let open = s.open.lock().unwrap_or_else(|p| p.into_inner());
                        open.get(&(keys.user, mailbox.clone())).is_some_and(|o| o.changes.receiver_count() > 0)
                    }
                    None => false,
                };
                if !watched {
                    return;
                }
                match store
                    .poll_range(&keys.user, &partition, Some("e/"), marker.as_ref(), Duration::from_secs(10))
                    .await
                {
                    Ok(Some((items, m))) => {
                        // The first answer is a snapshot: waking on it may be
                        // spurious, which costs one refresh; missing an entry
                        // written just before it would cost a lost wake-up.
                        if let Some(s) = me.upgrade() {
                            let mb = s.mailbox(&keys, &mailbox);
                            // The poll sees an entry as soon as it is written,
                            // before its sequencer has checked it and pushed it
                            // here: give the push a moment, so that only
                            // entries it failed to bring cost a log read.
                            let mut unshown = vec![];
                            for item in &items {
                                if !mb.shows_entry(&item.sort_key).await {
                                    unshown.push(item.sort_key.clone());
                                }
                            }
                            if !unshown.is_empty() {
                                tokio::time::sleep(PUSH_GRACE).await;
                                let mut news = false;
                                for key in &unshown {
                                    if !mb.shows_entry(key).await {
                                        news = true;
                                        break;
                                    }
                                }
                                if news {
                                    s.bump(&keys.user, &mailbox, true);
                                }
                            }
                        }
                        marker = Some(m);
                    }
                    Ok(None) => {}
                    Err(e) => {
                        log::debug!("long-poll of a mailbox log: {e}");
                        tokio::time::sleep(Duration::from_secs(5)).await;
                    }
                }
            }
        })
    }

    /// Wakes the mailbox's watchers; `stale`: their view may be behind.
    fn bump(&self, user: &UserId, mailbox: &str, stale: bool) {
        let open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(o) = open.get(&(*user, mailbox.to_string())) {
            o.changes.send_modify(|c| {
                c.seq += 1;
                if stale {
                    c.stale += 1;
                }
            });
        }
    }

    /// `shown`: the change is in this node's view already. `entry`: the
    /// settled entry, passed on to the other nodes if small.
    fn announce_change(self: &Arc<Self>, user: &UserId, mailbox: &str, shown: bool, entry: Option<&Entry>) {
        self.bump(user, mailbox, !shown);
        let entry = entry.filter(|e| rmp_serde::to_vec(e).is_ok_and(|b| b.len() <= CHANGED_ENTRY_MAX)).cloned();
        let msg = Changed {
            user: user.0,
            mailbox: mailbox.to_string(),
            entry,
        };
        for peer in self.rpc.connected_peers() {
            let (me, msg) = (self.clone(), msg.clone());
            tokio::spawn(async move {
                if let Some(ep) = &me.changed_ep {
                    let _ = ep.call(peer, msg, Duration::from_secs(5)).await;
                }
            });
        }
    }

    /// Runs client operations on a mailbox (through its sequencer, wherever
    /// it is) and tells the other nodes.
    pub async fn submit(
        self: &Arc<Self>,
        keys: &Arc<UserKeys>,
        mailbox: &str,
        ops: Vec<(OpId, Op)>,
    ) -> Result<Vec<Outcome>, MailError> {
        Ok(self.submit_shown(keys, mailbox, ops).await?.0)
    }

    /// [`Self::submit`], also saying whether this node's view of the
    /// mailbox already shows the result (it was sequenced here); if not,
    /// a caller that needs the result in the view refreshes.
    pub async fn submit_shown(
        self: &Arc<Self>,
        keys: &Arc<UserKeys>,
        mailbox: &str,
        ops: Vec<(OpId, Op)>,
    ) -> Result<(Vec<Outcome>, bool), MailError> {
        let mb = self.mailbox(keys, mailbox);
        let s = mb.submit_here(ops).await?;
        if s.here {
            self.announce_change(&keys.user, mailbox, true, s.sequenced.entry.as_ref());
        } else {
            // The sequencer told every node, this one too; but its message
            // may arrive after this node's sessions look.
            self.bump(&keys.user, mailbox, !s.shown);
        }
        Ok((s.sequenced.outcomes, s.shown))
    }

    /// The keys of `user` if an engine of theirs is open on this node.
    pub fn keys_for(&self, user: &UserId) -> Option<Arc<UserKeys>> {
        let open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        open.iter().find(|((u, _), _)| u == user).map(|(_, o)| o.keys.clone())
    }

    /// Files the user's queued mail if this node holds their keys.
    fn file_if_holding(self: &Arc<Self>, user: &UserId) -> bool {
        let Some(keys) = self.keys_for(user) else { return false };
        self.file_queued(keys);
        true
    }

    /// Files the user's queued mail in the background. Scans do not pile
    /// up: while one runs, further requests make it run once more.
    pub fn file_queued(self: &Arc<Self>, keys: Arc<UserKeys>) {
        self.request_filing(keys, false, None);
    }

    /// Files everything queued for the user, deliveries other nodes are
    /// filing themselves included, and resolves the returned receiver once
    /// a scan that started after this call has ended (filed, or failed).
    /// A login calls it: what LMTP acknowledged before the login must be
    /// in the SELECTs that follow it.
    pub fn file_queued_now(self: &Arc<Self>, keys: Arc<UserKeys>) -> tokio::sync::oneshot::Receiver<()> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.request_filing(keys, true, Some(tx));
        rx
    }

    fn request_filing(self: &Arc<Self>, keys: Arc<UserKeys>, all: bool, done: Option<tokio::sync::oneshot::Sender<()>>) {
        {
            let mut f = self.filing.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(running) = f.get_mut(&keys.user) {
                running.again = true;
                running.all_next |= all;
                running.waiting_next.extend(done);
                return;
            }
            f.insert(keys.user, Filing::default());
        }
        let me = self.clone();
        let mut current: Vec<tokio::sync::oneshot::Sender<()>> = done.into_iter().collect();
        let mut all_now = all;
        tokio::spawn(async move {
            // When to look again at what this scan left.
            let mut later: Option<Duration>;
            loop {
                later = match super::incoming::scan(&me, &me.store, &keys, all_now).await {
                    Ok(s) if s.failed > 0 => Some(RETRY_FILING),
                    Ok(s) if s.waiting => Some(Duration::from_secs(super::incoming::FILER_GRACE_SECS as u64 + 1)),
                    Ok(_) => None,
                    Err(e) => {
                        log::warn!("filing queued mail: {e}");
                        Some(RETRY_FILING)
                    }
                };
                for w in current.drain(..) {
                    let _ = w.send(());
                }
                let mut f = me.filing.lock().unwrap_or_else(|p| p.into_inner());
                match f.get_mut(&keys.user) {
                    Some(running) if running.again => {
                        running.again = false;
                        all_now = std::mem::take(&mut running.all_next);
                        current = std::mem::take(&mut running.waiting_next);
                    }
                    _ => {
                        f.remove(&keys.user);
                        break;
                    }
                }
            }
            // Failures are retried, deliveries another node files itself
            // checked, on a timer: a client waiting in IDLE must not depend
            // on the next delivery or login. One pending per user is enough.
            if let Some(after) = later {
                if me.rescans.lock().unwrap_or_else(|p| p.into_inner()).insert(keys.user) {
                    tokio::time::sleep(after).await;
                    me.rescans.lock().unwrap_or_else(|p| p.into_inner()).remove(&keys.user);
                    me.file_queued(keys);
                }
            }
        });
    }

    /// This node's slot in the layout.
    pub fn node_slot(&self) -> NodeSlot {
        self.cfg.node
    }

    /// Marks a delivery this node failed to file itself: scans here take it
    /// over at once (bounded; beyond that, the grace period still applies).
    pub fn note_direct_failure(&self, user: &UserId, message: super::model::MessageId) {
        let mut f = self.direct_failed.lock().unwrap_or_else(|p| p.into_inner());
        if f.len() < 65_536 {
            f.insert((*user, message));
        }
    }

    /// Whether this node failed to file `message` itself (until it is filed).
    pub fn direct_failure(&self, user: &UserId, message: super::model::MessageId) -> bool {
        self.direct_failed.lock().unwrap_or_else(|p| p.into_inner()).contains(&(*user, message))
    }

    /// Remembers that this node filed `message` (bounded per user).
    pub fn note_filed(&self, user: &UserId, message: super::model::MessageId) {
        self.direct_failed.lock().unwrap_or_else(|p| p.into_inner()).remove(&(*user, message));
        let mut f = self.filed.lock().unwrap_or_else(|p| p.into_inner());
        let q = f.entry(*user).or_default();
        q.push_back(message);
        while q.len() > 4096 {
            q.pop_front();
        }
    }

    pub fn was_filed(&self, user: &UserId, message: super::model::MessageId) -> bool {
        let f = self.filed.lock().unwrap_or_else(|p| p.into_inner());
        f.get(user).is_some_and(|q| q.contains(&message))
    }

    /// After a delivery to a user with no session here: file it now if
    /// this node holds their keys, else ask the nodes that might.
    pub fn incoming_for(self: &Arc<Self>, user: &UserId) {
        if self.file_if_holding(user) {
            return;
        }
        let msg = Incoming { user: user.0 };
        for peer in self.rpc.connected_peers() {
            let (me, msg) = (self.clone(), msg.clone());
            tokio::spawn(async move {
                if let Some(ep) = &me.incoming_ep {
                    let _ = ep.call(peer, msg, Duration::from_secs(5)).await;
                }
            });
        }
    }

    /// Closes engines nobody holds (their keys leave memory with them).
    pub fn sweep(&self) {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        open.retain(|_, o| Arc::strong_count(&o.mailbox) > 1 || o.changes.receiver_count() > 0);
    }
}
