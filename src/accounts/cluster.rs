//! The replicated user directory: users, their addresses and password
//! hashes as items in the cluster (replicated like mail), a copy in memory
//! on every node, and the protocols that change it from any node.
//!
//! - **Reading**: every node loads the whole directory at start (one quorum
//!   range read) and follows it: a writer pushes what it wrote to every
//!   connected node over our node RPC (half a round trip), and a K2V
//!   long-poll on the partition catches whatever a push missed (a node
//!   that was cut off, a restart). A lookup that misses the memory copy is
//!   confirmed by a quorum read before anyone is told "no such user".
//! - **Adding** (no consensus in Garage, so claim, then check): write the
//!   user and its address claims as `Pending` under a fresh nonce, read
//!   them back at quorum, and make them `Active` only if no other live
//!   claim on the login or an address was seen; otherwise withdraw and, if
//!   the other was only pending too, retry after a random pause. Of two
//!   concurrent adds at least one sees the other (each reads after its own
//!   quorum write; quorums intersect), so at most one becomes active.
//! - **Editing** (password, quota, home region): field-wise last writer
//!   wins by stamp, merged identically on every node (`records.rs`).
//! - **Deleting**: mark `Deleting` (gone for LMTP and logins at once),
//!   purge the user's data, then remove the records.
//!
//! This module must not know about passwords (it stores hashes it is
//! given), mailboxes or protocols; docs/storage.md has the layout and costs.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::directory::{Directory, DirectoryError, User};
use super::records::{
    address_key, base_address, AddressClaim, ImportMarker, Record, Stamp, Stamped, State, UserRecord, View,
    ADDRESS_PREFIX, IMPORT_PREFIX, PARTITION, USER_PREFIX,
};
use super::users_file::UsersFile;
use super::AccountsError;
use crate::crypto::{self, MasterKey};
use crate::storage::{CausalityToken, HandlerFuture, Item, ItemWrite, PeerEndpoint, PeerMessage, PeerRpc, Range, Store, StorageError, UserId};

/// A pending add older than this (by its own creation stamp) was
/// abandoned (its node crashed mid-add) and no longer blocks anyone.
const PENDING_STALE_MS: u64 = 10 * 60 * 1000;
/// An add that takes longer than this between its claim and its commit
/// gives up, so that it can never commit a claim others consider stale
/// (a bound on clock skew between nodes of 9 minutes; see docs/storage.md).
const ADD_DEADLINE: Duration = Duration::from_secs(60);
/// Attempts of an add that meets another node's pending add.
const ADD_ATTEMPTS: u32 = 6;
/// How long a writer waits for the nodes it pushes a change to.
const PUSH_TIMEOUT: Duration = Duration::from_secs(2);
/// Full reloads, in case a tombstone or a push was missed.
const RELOAD_EVERY: Duration = Duration::from_secs(600);

/// The keys of the directory, derived from the cluster (RPC) secret: every
/// node holds them, an attacker with only the data directories does not.
pub struct DirectoryKeys {
    seal: MasterKey,
    index: [u8; 32],
    owner: UserId,
}

impl DirectoryKeys {
    /// `secret` is the cluster secret as configured (hex).
    pub fn from_secret(secret: &str) -> DirectoryKeys {
        let bytes = hex::decode(secret.trim()).unwrap_or_else(|_| secret.as_bytes().to_vec());
        let root = crypto::keyed_hash(&[0; 32], &[b"estafette cluster secret v1\0", &bytes]);
        DirectoryKeys {
            seal: MasterKey::from_bytes(crypto::keyed_hash(&root, &[b"directory seal"])),
            index: crypto::keyed_hash(&root, &[b"directory index"]),
            owner: UserId(crypto::keyed_hash(&root, &[b"directory owner"])),
        }
    }

    fn hash(&self, what: &str, name: &str) -> String {
        hex::encode(&crypto::keyed_hash(&self.index, &[what.as_bytes(), b"\0", name.as_bytes()])[..20])
    }
    fn user_prefix(&self, login: &str) -> String {
        format!("{USER_PREFIX}{}/", self.hash("login", login))
    }
    fn address_prefix(&self, address_key: &str) -> String {
        format!("{ADDRESS_PREFIX}{}/", self.hash("address", address_key))
    }
    fn import_key(&self, salt: &[u8; 32]) -> String {
        format!("{IMPORT_PREFIX}{}", self.hash("import", &hex::encode(salt)))
    }
    fn seal(&self, key: &str, r: &Record) -> Vec<u8> {
        let plain = serde_json::to_vec(r).unwrap_or_default();
        crypto::seal_value(&self.seal, key.as_bytes(), &plain)
    }
    fn open(&self, key: &str, sealed: &[u8]) -> Option<Record> {
        let plain = crypto::open_value(&self.seal, key.as_bytes(), sealed).ok()?;
        serde_json::from_slice(&plain).ok()
    }
}

/// What a writer pushes to the other nodes: the items it wrote, sealed as
/// stored (an empty list of values is a deletion).
#[derive(Clone, Serialize, Deserialize)]
pub struct DirectoryChanged {
    pub items: Vec<(String, Vec<Vec<u8>>)>,
}

impl PeerMessage for DirectoryChanged {
    type Response = ();
    const PATH: &'static str = "estafette/accounts/DirectoryChanged";
}

/// A user to create (`user.addresses` as given; ownership is claimed).
pub struct NewUser {
    pub user: User,
    /// Created from the configuration's declared users.
    pub provisioned: bool,
}

pub struct ClusterDirectory {
    store: Store,
    keys: DirectoryKeys,
    node_name: String,
    node_tag: u64,
    records: Mutex<BTreeMap<String, Record>>,
    view: RwLock<Arc<View>>,
    loaded: AtomicBool,
    push: OnceLock<(PeerRpc, PeerEndpoint<DirectoryChanged>)>,
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

fn unavailable(e: StorageError) -> DirectoryError {
    DirectoryError::Unavailable(e.to_string())
}

/// What the reads of an add found.
enum Verdict {
    Free,
    Taken(AccountsError),
    Busy(String),
}

impl ClusterDirectory {
    /// A directory over `store`; empty until [`load`](Self::load).
    pub fn new(store: Store, keys: DirectoryKeys, node_name: &str) -> Arc<ClusterDirectory> {
        let tag = u64::from_le_bytes(crypto::keyed_hash(&[0; 32], &[node_name.as_bytes()])[..8].try_into().unwrap_or([0; 8]));
        Arc::new(ClusterDirectory {
            store,
            keys,
            node_name: node_name.to_string(),
            node_tag: tag,
            records: Mutex::new(BTreeMap::new()),
            view: RwLock::new(Arc::new(View::default())),
            loaded: AtomicBool::new(false),
            push: OnceLock::new(),
        })
    }

    /// Registers the push endpoint on this node's RPC (once).
    pub fn attach(self: &Arc<Self>, rpc: &PeerRpc) -> Result<(), StorageError> {
        let me: Weak<ClusterDirectory> = Arc::downgrade(self);
        let endpoint = rpc.register::<DirectoryChanged, _>(move |_, msg| -> HandlerFuture<()> {
            let me = me.clone();
            Box::pin(async move {
                if let Some(d) = me.upgrade() {
                    d.apply(msg.items);
                }
                Ok(())
            })
        })?;
        let _ = self.push.set((rpc.clone(), endpoint));
        Ok(())
    }

    pub fn is_loaded(&self) -> bool {
        self.loaded.load(Ordering::Acquire)
    }

    pub fn view(&self) -> Arc<View> {
        match self.view.read() {
            Ok(v) => v.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// Reads the whole directory at quorum and replaces the memory copy.
    pub async fn load(&self) -> Result<usize, StorageError> {
        let items = self.store.range(&self.keys.owner, PARTITION, &Range::default()).await?;
        let n = items.len();
        let mut fresh = BTreeMap::new();
        for it in items {
            if let Some(r) = self.decode(&it.sort_key, &it.values) {
                fresh.insert(it.sort_key, r);
            }
        }
        if let Ok(mut recs) = self.records.lock() {
            *recs = fresh;
        }
        self.rebuild();
        self.loaded.store(true, Ordering::Release);
        Ok(n)
    }

    /// Follows changes until the directory is dropped: a long-poll on the
    /// partition (pushes are the fast path; this catches what they miss),
    /// and a full reload now and then.
    pub fn follow(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let me = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut marker = None;
            let mut last_reload = Instant::now();
            let mut failing = false;
            loop {
                let Some(d) = me.upgrade() else { return };
                let (store, owner) = (d.store.clone(), d.keys.owner);
                drop(d);
                let polled = store.poll_range(&owner, PARTITION, None, marker.as_ref(), Duration::from_secs(10)).await;
                let Some(d) = me.upgrade() else { return };
                match polled {
                    Ok(Some((items, m))) => {
                        d.apply(items.into_iter().map(|i| (i.sort_key, i.values)));
                        marker = Some(m);
                        failing = false;
                    }
                    Ok(None) => failing = false,
                    Err(e) => {
                        if !failing {
                            log::warn!("following the user directory: {e}; retrying");
                        }
                        failing = true;
                        if matches!(e, StorageError::Invalid(_)) {
                            marker = None;
                        }
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                }
                if last_reload.elapsed() > RELOAD_EVERY {
                    last_reload = Instant::now();
                    if let Err(e) = d.load().await {
                        log::warn!("reloading the user directory: {e}");
                    }
                }
            }
        })
    }

    fn decode(&self, key: &str, values: &[Vec<u8>]) -> Option<Record> {
        let decoded: Vec<Record> = values
            .iter()
            .filter_map(|v| {
                let r = self.keys.open(key, v);
                if r.is_none() {
                    log::warn!("directory record `{key}` does not open (another cluster secret?); ignored");
                }
                r
            })
            .collect();
        Record::merge_all(decoded.into_iter())
    }

    /// Merges items read or pushed into the memory copy (the merge is
    /// order-free, so pushes and reads may arrive in any order). An item
    /// with no values was deleted.
    fn apply(&self, items: impl IntoIterator<Item = (String, Vec<Vec<u8>>)>) {
        let mut changed = false;
        if let Ok(mut recs) = self.records.lock() {
            for (key, values) in items {
                if values.is_empty() {
                    changed |= recs.remove(&key).is_some();
                    continue;
                }
                let Some(r) = self.decode(&key, &values) else { continue };
                match recs.get_mut(&key) {
                    Some(old) => {
                        let before = old.clone();
                        old.merge(&r);
                        changed |= *old != before;
                    }
                    None => {
                        recs.insert(key, r);
                        changed = true;
                    }
                }
            }
        }
        if changed {
            self.rebuild();
        }
    }

    fn rebuild(&self) {
        let view = match self.records.lock() {
            Ok(recs) => View::build(&recs),
            Err(_) => return,
        };
        if let Ok(mut v) = self.view.write() {
            *v = Arc::new(view);
        }
    }

    fn cached(&self, key: &str) -> Option<Record> {
        self.records.lock().ok().and_then(|r| r.get(key).cloned())
    }

    /// Quorum range reads of several prefixes at once; applied to the
    /// memory copy; returns the items with their tokens.
    async fn read_prefixes(&self, prefixes: &[String]) -> Result<Vec<Item>, StorageError> {
        let ranges: Vec<Range> = prefixes
            .iter()
            .map(|p| Range {
                prefix: Some(p.clone()),
                ..Range::default()
            })
            .collect();
        let reads = ranges.iter().map(|r| self.store.range(&self.keys.owner, PARTITION, r));
        let mut out = vec![];
        for r in futures::future::join_all(reads).await {
            out.extend(r?);
        }
        self.apply(out.iter().map(|i| (i.sort_key.clone(), i.values.clone())));
        Ok(out)
    }

    /// Sends what was written to every connected node, waiting briefly.
    async fn notify(&self, items: Vec<(String, Vec<Vec<u8>>)>) {
        let Some((rpc, endpoint)) = self.push.get() else { return };
        let msg = DirectoryChanged { items };
        let calls = rpc.connected_peers().into_iter().map(|p| endpoint.call(p, msg.clone(), PUSH_TIMEOUT));
        for r in futures::future::join_all(calls).await {
            if let Err(e) = r {
                log::debug!("pushing a directory change: {e}");
            }
        }
    }

    /// Writes items (each with the token it replaces), applies and pushes them.
    async fn write(&self, writes: Vec<(String, Option<Record>, Option<CausalityToken>)>) -> Result<(), StorageError> {
        let mut batch = vec![];
        let mut pushed = vec![];
        for (key, rec, token) in writes {
            let value = rec.as_ref().map(|r| self.keys.seal(&key, r));
            pushed.push((key.clone(), value.iter().cloned().collect::<Vec<_>>()));
            batch.push(ItemWrite {
                partition: PARTITION.into(),
                sort_key: key,
                value,
                token,
            });
        }
        if batch.is_empty() {
            return Ok(());
        }
        self.store.insert_batch(&self.keys.owner, batch).await?;
        self.apply(pushed.clone());
        self.notify(pushed).await;
        Ok(())
    }

    /// Adds a user: claims the login and addresses, checks, commits.
    /// `locked`: the user's new key record, written under `new.user.id` first
    /// (None when importing users whose keys already exist).
    pub async fn add(&self, new: &NewUser, locked: Option<&crate::crypto::LockedKeys>) -> Result<(), AccountsError> {
        let mut addrs = vec![];
        for a in &new.user.addresses {
            let k = address_key(a).ok_or_else(|| AccountsError::Invalid(format!("`{a}` is not an address (local@domain)")))?;
            if !addrs.contains(&k) {
                addrs.push(k);
            }
        }
        let prefixes: Vec<String> = std::iter::once(self.keys.user_prefix(&new.user.login))
            .chain(addrs.iter().map(|a| self.keys.address_prefix(a)))
            .collect();
        let mut busy = String::new();
        for attempt in 0..ADD_ATTEMPTS {
            if attempt > 0 {
                // Two adds that saw each other both withdrew: random pauses
                // let one of them go alone next time.
                let pause = rand::random_range(50..250u64) * u64::from(attempt);
                tokio::time::sleep(Duration::from_millis(pause)).await;
            }
            let seen = self.read_prefixes(&prefixes).await?;
            match self.verdict(new, &addrs, &seen, None) {
                Verdict::Free => {}
                Verdict::Taken(e) => return Err(e),
                Verdict::Busy(why) => {
                    busy = why;
                    continue;
                }
            }
            self.clear_stale(&seen).await;
            if let Some(l) = locked {
                super::keys::save(&self.store, &new.user.id, l, None).await?;
            }
            let nonce = hex::encode(rand::random::<[u8; 12]>());
            let created = now_ms();
            let stamp = Stamp { ms: created, node: self.node_tag };
            let mut user = UserRecord {
                login: new.user.login.clone(),
                id: hex::encode(new.user.id.0),
                nonce: nonce.clone(),
                created_ms: created,
                origin: self.node_name.clone(),
                provisioned: new.provisioned,
                addresses: new.user.addresses.clone(),
                state: State::Pending,
                password: Stamped::new(new.user.password.clone(), stamp),
                home_region: Stamped::new(new.user.home_region.clone(), stamp),
                quota: Stamped::new(new.user.quota.clone(), stamp),
            };
            let claim = |a: &String, state| AddressClaim {
                address: a.clone(),
                login: new.user.login.clone(),
                nonce: nonce.clone(),
                created_ms: created,
                state,
            };
            let user_key = format!("{}{nonce}", self.keys.user_prefix(&new.user.login));
            let claim_keys: Vec<String> = addrs.iter().map(|a| format!("{}{nonce}", self.keys.address_prefix(a))).collect();
            let mut pending = vec![(user_key.clone(), Some(Record::User(user.clone())), None)];
            for (a, k) in addrs.iter().zip(&claim_keys) {
                pending.push((k.clone(), Some(Record::Address(claim(a, State::Pending))), None));
            }
            let started = Instant::now();
            if let Err(e) = self.write(pending).await {
                self.withdraw(&user_key, &claim_keys, new, locked.is_some()).await;
                return Err(e.into());
            }
            let seen = match self.read_prefixes(&prefixes).await {
                Ok(s) => s,
                Err(e) => {
                    self.withdraw(&user_key, &claim_keys, new, locked.is_some()).await;
                    return Err(e.into());
                }
            };
            let verdict = self.verdict(new, &addrs, &seen, Some(&nonce));
            let verdict = match verdict {
                Verdict::Free if started.elapsed() > ADD_DEADLINE => {
                    Verdict::Busy("the add took too long between its claim and its commit".into())
                }
                v => v,
            };
            match verdict {
                Verdict::Free => {
                    let token = |k: &str| seen.iter().find(|i| i.sort_key == k).map(|i| i.token.clone());
                    user.state = State::Active;
                    let mut commit = vec![(user_key.clone(), Some(Record::User(user.clone())), token(&user_key))];
                    for (a, k) in addrs.iter().zip(&claim_keys) {
                        commit.push((k.clone(), Some(Record::Address(claim(a, State::Active))), token(k)));
                    }
                    // A failed commit may still have reached a replica: the
                    // user may exist. Not withdrawn (that could leave half a
                    // user); the operator sees it in `user list`.
                    self.write(commit).await.map_err(|e| {
                        AccountsError::Storage(StorageError::Unavailable(format!(
                            "{e}; the user may or may not have been created: check `estafette user list`"
                        )))
                    })?;
                    return Ok(());
                }
                Verdict::Taken(e) => {
                    self.withdraw(&user_key, &claim_keys, new, locked.is_some()).await;
                    return Err(e);
                }
                Verdict::Busy(why) => {
                    self.withdraw(&user_key, &claim_keys, new, locked.is_some()).await;
                    busy = why;
                }
            }
        }
        Err(AccountsError::Busy(format!("{busy}; try again")))
    }

    /// Decides an add from what a quorum read found (`own`: our nonce,
    /// once our claims are written).
    fn verdict(&self, new: &NewUser, addrs: &[String], seen: &[Item], own: Option<&str>) -> Verdict {
        let now = now_ms();
        let fresh = |created: u64| now.saturating_sub(created) < PENDING_STALE_MS;
        let mut recs = vec![];
        for it in seen {
            if let Some(r) = self.decode(&it.sort_key, &it.values) {
                recs.push(r);
            }
        }
        let mut ours_present = own.is_none();
        for r in &recs {
            match r {
                Record::User(u) if u.login == new.user.login => {
                    if Some(u.nonce.as_str()) == own {
                        ours_present = true;
                        continue;
                    }
                    match u.state {
                        State::Active => return Verdict::Taken(AccountsError::Exists(new.user.login.clone())),
                        State::Pending if fresh(u.created_ms) => {
                            return Verdict::Busy(format!("another node ({}) is adding `{}` right now", u.origin, new.user.login))
                        }
                        _ => {}
                    }
                }
                Record::Address(c) if addrs.contains(&c.address) && Some(c.nonce.as_str()) != own => match c.state {
                    State::Active if self.claim_is_live(c) => {
                        return Verdict::Taken(AccountsError::AddressTaken {
                            address: c.address.clone(),
                            owner: c.login.clone(),
                        })
                    }
                    State::Pending if fresh(c.created_ms) => {
                        return Verdict::Busy(format!("another node is giving {} to `{}` right now", c.address, c.login))
                    }
                    _ => {}
                },
                _ => {}
            }
        }
        if !ours_present {
            // Our claim was removed (taken for stale by another node).
            return Verdict::Busy("our claim disappeared".into());
        }
        Verdict::Free
    }

    /// Whether an active claim's user still exists. Unknown counts as yes:
    /// refusing an add is safe, giving one address to two users is not.
    fn claim_is_live(&self, c: &AddressClaim) -> bool {
        let key = format!("{}{}", self.keys.user_prefix(&c.login), c.nonce);
        !matches!(self.cached(&key), Some(Record::User(u)) if u.state == State::Deleting)
    }

    /// Removes pending claims abandoned by crashed adds (and their keys).
    async fn clear_stale(&self, seen: &[Item]) {
        let now = now_ms();
        for it in seen {
            let stale = match self.decode(&it.sort_key, &it.values) {
                Some(Record::User(u)) if u.state == State::Pending && now.saturating_sub(u.created_ms) >= PENDING_STALE_MS => {
                    if let Some(id) = u.user_id() {
                        let _ = super::keys::remove(&self.store, &id).await;
                    }
                    true
                }
                Some(Record::Address(c)) => c.state == State::Pending && now.saturating_sub(c.created_ms) >= PENDING_STALE_MS,
                _ => false,
            };
            if stale {
                log::info!("directory: removing `{}`, left pending by an add that never finished", it.sort_key);
                let _ = self.write(vec![(it.sort_key.clone(), None, Some(it.token.clone()))]).await;
            }
        }
    }

    /// Withdraws our pending claims (best effort: a leftover pending claim
    /// blocks nobody once stale) and the key record written for them.
    async fn withdraw(&self, user_key: &str, claim_keys: &[String], new: &NewUser, had_keys: bool) {
        let keys: Vec<String> = std::iter::once(user_key.to_string()).chain(claim_keys.iter().cloned()).collect();
        let mut writes = vec![];
        for k in keys {
            if let Ok(Some(item)) = self.store.get(&self.keys.owner, PARTITION, &k).await {
                writes.push((k, None, Some(item.token)));
            }
        }
        if let Err(e) = self.write(writes).await {
            log::warn!("withdrawing the claims of `{}`: {e}", new.user.login);
        }
        if had_keys {
            if let Err(e) = super::keys::remove(&self.store, &new.user.id).await {
                log::warn!("removing the key record of a withdrawn `{}`: {e}", new.user.login);
            }
        }
    }

    /// The active incarnation of `login` at quorum, with its item token.
    async fn active(&self, login: &str) -> Result<Option<(String, UserRecord, CausalityToken)>, AccountsError> {
        let seen = self.read_prefixes(&[self.keys.user_prefix(login)]).await?;
        let mut best: Option<(String, UserRecord, CausalityToken)> = None;
        for it in seen {
            if let Some(Record::User(u)) = self.decode(&it.sort_key, &it.values) {
                if u.login == login
                    && u.state == State::Active
                    && best.as_ref().is_none_or(|(_, b, _)| (u.created_ms, &u.nonce) < (b.created_ms, &b.nonce))
                {
                    best = Some((it.sort_key, u, it.token));
                }
            }
        }
        Ok(best)
    }

    /// Edits a user's record (password, quota, home region): `edit` gets
    /// the record and the stamp to put on the fields it changes.
    pub async fn update(&self, login: &str, edit: impl FnOnce(&mut UserRecord, Stamp)) -> Result<UserRecord, AccountsError> {
        let (key, mut rec, token) = self.active(login).await?.ok_or_else(|| AccountsError::NoSuchUser(login.into()))?;
        let stamp = Stamp::after(rec.last_stamp(), now_ms(), self.node_tag);
        edit(&mut rec, stamp);
        self.write(vec![(key, Some(Record::User(rec.clone())), Some(token))]).await?;
        Ok(rec)
    }

    /// First step of a deletion: the user disappears from every node (and
    /// LMTP, logins) at once. Returns the record (its id is what to purge).
    /// A deletion that was interrupted is resumed.
    pub async fn begin_delete(&self, login: &str) -> Result<UserRecord, AccountsError> {
        if let Some((key, mut rec, token)) = self.active(login).await? {
            rec.state = State::Deleting;
            self.write(vec![(key, Some(Record::User(rec.clone())), Some(token))]).await?;
            return Ok(rec);
        }
        let seen = self.read_prefixes(&[self.keys.user_prefix(login)]).await?;
        for it in seen {
            if let Some(Record::User(u)) = self.decode(&it.sort_key, &it.values) {
                if u.login == login && u.state == State::Deleting {
                    return Ok(u);
                }
            }
        }
        Err(AccountsError::NoSuchUser(login.into()))
    }

    /// Last step of a deletion: removes the incarnation's records.
    pub async fn finish_delete(&self, rec: &UserRecord) -> Result<(), AccountsError> {
        let mut prefixes = vec![self.keys.user_prefix(&rec.login)];
        prefixes.extend(rec.addresses.iter().filter_map(|a| address_key(a)).map(|a| self.keys.address_prefix(&a)));
        let seen = self.read_prefixes(&prefixes).await?;
        let mut writes = vec![];
        for it in seen {
            let mine = match self.decode(&it.sort_key, &it.values) {
                Some(Record::User(u)) => u.login == rec.login && u.nonce == rec.nonce,
                Some(Record::Address(c)) => c.login == rec.login && c.nonce == rec.nonce,
                _ => false,
            };
            if mine {
                writes.push((it.sort_key, None, Some(it.token)));
            }
        }
        self.write(writes).await?;
        Ok(())
    }

    /// Imports an old-style users file once (keyed by its salt): every user
    /// not already in the directory is added with the id the salt gave
    /// them. Returns None if this file was imported before.
    pub async fn import(&self, file: &UsersFile) -> Result<Option<(usize, Vec<String>)>, AccountsError> {
        let key = self.keys.import_key(&file.salt);
        let existing = self.store.get(&self.keys.owner, PARTITION, &key).await?;
        if existing.as_ref().is_some_and(|m| !m.is_deleted()) {
            return Ok(None);
        }
        let (mut imported, mut skipped) = (0, vec![]);
        for u in &file.users {
            if let Some(q) = &u.quota {
                crate::config::parse_capacity(q).map_err(AccountsError::Invalid)?;
            }
            let new = NewUser {
                user: User {
                    login: u.login.clone(),
                    id: file.user_id(&u.login),
                    password: u.password.clone(),
                    addresses: u.addresses.clone(),
                    home_region: u.home_region.clone(),
                    quota: u.quota.clone(),
                },
                provisioned: false,
            };
            match self.add(&new, None).await {
                Ok(()) => imported += 1,
                Err(e @ (AccountsError::Exists(_) | AccountsError::AddressTaken { .. })) => {
                    skipped.push(format!("`{}`: {e}", u.login));
                }
                Err(e) => return Err(e),
            }
            if super::keys::load(&self.store, &new.user.id).await?.is_none() {
                log::warn!("imported user `{}` has no key record in this cluster (from another installation?)", u.login);
            }
        }
        let marker = Record::Import(ImportMarker {
            path: file.path.display().to_string(),
            imported_ms: now_ms(),
            users: imported,
            by: self.node_name.clone(),
        });
        self.write(vec![(key, Some(marker), existing.map(|i| i.token))]).await?;
        Ok(Some((imported, skipped)))
    }
}

#[async_trait::async_trait]
impl Directory for ClusterDirectory {
    fn user(&self, login: &str) -> Option<User> {
        self.view().user(login).cloned()
    }

    fn by_address(&self, address: &str) -> Option<User> {
        self.view().by_address(address).cloned()
    }

    fn users(&self) -> Vec<User> {
        self.view().users.values().map(|(u, _)| u.clone()).collect()
    }

    async fn resolve_address(&self, address: &str) -> Result<Option<User>, DirectoryError> {
        if !self.is_loaded() {
            return Err(DirectoryError::NotReady);
        }
        if let Some(u) = self.by_address(address) {
            return Ok(Some(u));
        }
        let Some(key) = address_key(address) else { return Ok(None) };
        let mut prefixes = vec![self.keys.address_prefix(&key)];
        if let Some(base) = base_address(&key) {
            prefixes.push(self.keys.address_prefix(&base));
        }
        let seen = self.read_prefixes(&prefixes).await.map_err(unavailable)?;
        // The claims' users, if this node had not seen them either.
        let mut logins: Vec<String> = seen
            .iter()
            .filter_map(|i| match self.decode(&i.sort_key, &i.values) {
                Some(Record::Address(c)) if c.state == State::Active => Some(c.login),
                _ => None,
            })
            .filter(|l| self.user(l).is_none())
            .collect();
        logins.dedup();
        if !logins.is_empty() {
            let prefixes: Vec<String> = logins.iter().map(|l| self.keys.user_prefix(l)).collect();
            self.read_prefixes(&prefixes).await.map_err(unavailable)?;
        }
        Ok(self.by_address(address))
    }

    async fn resolve_login(&self, login: &str, refresh: bool) -> Result<Option<User>, DirectoryError> {
        if !self.is_loaded() {
            return Err(DirectoryError::NotReady);
        }
        if !refresh {
            if let Some(u) = self.user(login) {
                return Ok(Some(u));
            }
        }
        self.read_prefixes(&[self.keys.user_prefix(login)]).await.map_err(unavailable)?;
        Ok(self.user(login))
    }
}
