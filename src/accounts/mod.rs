//! Accounts: the user directory, authentication, key unlock and caching,
//! failed-login throttling, and the user administration behind
//! `estafette user ...`.
//!
//! This layer turns a (login, password) into a [`Session`] holding the
//! user's unlocked keys; it knows nothing of mailboxes or protocols, and
//! never stores a password or an unlocked key.

mod cache;
pub mod cluster;
pub mod directory;
pub mod keys;
pub mod records;
mod throttle;
pub mod users_file;

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

pub use cache::Session;
pub use cluster::{ClusterDirectory, DirectoryKeys, NewUser};
pub use directory::{Directory, DirectoryError, User};
pub use keys::UserKeys;
pub use users_file::UsersFile;

use crate::crypto::{CryptoError, KdfParams, KeyBundle};
use crate::storage::{Range, Store, StorageError, UserId};

#[derive(Debug, thiserror::Error)]
pub enum AccountsError {
    /// Wrong login or wrong password: deliberately the same answer.
    #[error("authentication failed")]
    AuthFailed,
    #[error("user `{0}` already exists")]
    Exists(String),
    #[error("no user `{0}`")]
    NoSuchUser(String),
    #[error("address `{address}` already delivers to `{owner}`")]
    AddressTaken { address: String, owner: String },
    #[error("{0}")]
    Invalid(String),
    #[error("{path}: {reason}")]
    UsersFile { path: PathBuf, reason: String },
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    #[error("user `{0}` has no key record in storage (created by another installation?)")]
    NoKeys(String),
    /// Another node is changing the same user or address right now.
    #[error("{0}")]
    Busy(String),
    #[error(transparent)]
    Directory(#[from] DirectoryError),
}

impl AccountsError {
    /// Whether a retry later may succeed (storage unreachable, directory
    /// not loaded yet, a concurrent change).
    pub fn is_transient(&self) -> bool {
        match self {
            AccountsError::Storage(e) => e.is_transient(),
            AccountsError::Directory(_) | AccountsError::Busy(_) => true,
            _ => false,
        }
    }
}

/// A user declared in the configuration, created if missing.
#[derive(Debug, Clone)]
pub struct DeclaredUser {
    pub login: String,
    pub addresses: Vec<String>,
    pub home_region: Option<String>,
    pub quota: Option<String>,
    /// The initial password (read from the declared file by the caller).
    pub initial_password: String,
}

/// How long unlocked keys stay cached after a user's last session ends.
const CACHE_GRACE: Duration = Duration::from_secs(300);

pub struct Accounts {
    users: Arc<ClusterDirectory>,
    store: Store,
    kdf: KdfParams,
    cache: cache::KeyCache,
    throttle: throttle::Throttle,
    argon2_runs: AtomicU64,
    ready: AtomicBool,
}

/// A PHC hash no password matches, checked for unknown logins so that they
/// cost the same time as known ones (no user enumeration by timing).
fn decoy_phc(kdf: KdfParams) -> &'static str {
    static DECOY: OnceLock<String> = OnceLock::new();
    DECOY.get_or_init(|| kdf.hash_password(&rand::random::<[u8; 32]>()).unwrap_or_default())
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    match tokio::task::spawn_blocking(f).await {
        Ok(v) => v,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

impl Accounts {
    /// Accounts over a directory; not ready (LMTP and logins answer "try
    /// later") until [`set_ready`](Self::set_ready).
    pub fn new(users: Arc<ClusterDirectory>, store: Store, kdf: KdfParams) -> Self {
        Accounts {
            users,
            store,
            kdf,
            cache: cache::KeyCache::new(CACHE_GRACE),
            throttle: throttle::Throttle::default(),
            argon2_runs: AtomicU64::new(0),
            ready: AtomicBool::new(false),
        }
    }

    /// Accounts over the replicated directory of a started node: loaded,
    /// followed and ready (tests and tools; a server starts them through
    /// `server::Server`, which also imports and provisions first). With
    /// `rpc`, changes are pushed to and from the other nodes at once.
    pub async fn open(
        store: Store,
        rpc: Option<&crate::storage::PeerRpc>,
        secret: &str,
        node_name: &str,
        kdf: KdfParams,
    ) -> Result<Accounts, AccountsError> {
        let dir = ClusterDirectory::new(store.clone(), DirectoryKeys::from_secret(secret), node_name);
        if let Some(rpc) = rpc {
            dir.attach(rpc)?;
        }
        dir.load().await?;
        dir.follow();
        let accounts = Accounts::new(dir, store, kdf);
        accounts.set_ready();
        Ok(accounts)
    }

    pub fn directory(&self) -> &dyn Directory {
        &*self.users
    }

    pub fn cluster_directory(&self) -> &Arc<ClusterDirectory> {
        &self.users
    }

    /// Whether the node may answer for its users: storage ready, the
    /// directory loaded, declared users provisioned.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire) && self.users.is_loaded()
    }

    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Release);
    }

    /// Argon2 derivations run so far by logins (the cache's saving shows here).
    pub fn argon2_runs(&self) -> u64 {
        self.argon2_runs.load(Ordering::Relaxed)
    }

    /// Unlocked-key entries in the cache.
    pub fn cached_users(&self) -> usize {
        self.cache.len()
    }

    /// Failed logins remembered for (ip, login).
    pub fn recent_failures(&self, ip: IpAddr, login: &str) -> u32 {
        self.throttle.failures(ip, login, Instant::now())
    }

    /// Checks the password and returns a session with the user's keys.
    /// Failures are answered after the throttle's penalty; a correct
    /// password is answered at once.
    pub async fn login(&self, login: &str, password: &str, ip: IpAddr) -> Result<Session, AccountsError> {
        let slot = self.throttle.slot(ip);
        let _one_check_per_ip = slot.lock().await;
        match self.check(login, password.as_bytes()).await {
            Ok(s) => {
                self.throttle.succeeded(ip, login);
                Ok(s)
            }
            Err(AccountsError::AuthFailed) => {
                let penalty = self.throttle.failed(ip, login, Instant::now());
                log::warn!(
                    "authentication failed for `{}` from {ip}; next answer in {}s",
                    login.escape_debug(),
                    penalty.as_secs()
                );
                tokio::time::sleep(penalty).await;
                Err(AccountsError::AuthFailed)
            }
            Err(e) => Err(e),
        }
    }

    async fn check(&self, login: &str, password: &[u8]) -> Result<Session, AccountsError> {
        if !self.is_ready() {
            return Err(DirectoryError::NotReady.into());
        }
        let user = self.users.resolve_login(login, false).await?;
        let known = user.is_some();
        match self.check_user(login, password, user).await {
            // The password may have changed on another node moments ago:
            // before refusing, read the user again at quorum. (An unknown
            // login was just read at quorum.)
            Err(AccountsError::AuthFailed) if known => {
                let fresh = self.users.resolve_login(login, true).await?;
                self.check_user(login, password, fresh).await
            }
            other => other,
        }
    }

    async fn check_user(&self, login: &str, password: &[u8], user: Option<User>) -> Result<Session, AccountsError> {
        let Some(user) = user else {
            let (decoy, pw) = (decoy_phc(self.kdf).to_string(), password.to_vec());
            self.argon2_runs.fetch_add(1, Ordering::Relaxed);
            let _ = blocking(move || crate::crypto::kdf_verify(&decoy, &pw)).await;
            return Err(AccountsError::AuthFailed);
        };
        match self.cache.lookup(login, password, &user.password) {
            cache::Lookup::Hit(s) => return Ok(s),
            cache::Lookup::WrongPassword => return Err(AccountsError::AuthFailed),
            cache::Lookup::Miss => {}
        }
        // Cold login: check the directory's hash and unlock the keys at the
        // same time (two Argon2 runs, one on each core).
        let uid = user.id;
        let verify = {
            let (phc, pw) = (user.password.clone(), password.to_vec());
            blocking(move || crate::crypto::kdf_verify(&phc, &pw))
        };
        let unlock = async {
            let (records, _) = keys::load(&self.store, &uid)
                .await?
                .ok_or_else(|| AccountsError::NoKeys(login.to_string()))?;
            let pw = password.to_vec();
            Ok::<_, AccountsError>(blocking(move || keys::unlock_any(&records, &pw)).await)
        };
        self.argon2_runs.fetch_add(2, Ordering::Relaxed);
        let (verified, unlocked) = tokio::join!(verify, unlock);
        if !verified? {
            return Err(AccountsError::AuthFailed);
        }
        let bundle = match unlocked? {
            Ok(b) => b,
            // The directory accepts the password but the keys do not open:
            // the key record is from another password (a password change
            // half-applied on another node). Refuse rather than guess.
            Err(CryptoError::WrongPassword) => {
                log::error!("user `{login}`: the password matches the directory but not the key record");
                return Err(AccountsError::AuthFailed);
            }
            Err(e) => return Err(e.into()),
        };
        Ok(self.cache.insert(login, password, &user.password, UserKeys::new(uid, bundle)))
    }

    /// Creates a user: a new key bundle sealed under the password, then the
    /// directory entry (login, password hash, addresses), from any node.
    pub async fn add_user(
        &self,
        login: &str,
        password: &str,
        addresses: &[String],
        home_region: Option<String>,
    ) -> Result<(), AccountsError> {
        self.create(login, password, addresses, home_region, None, false).await
    }

    async fn create(
        &self,
        login: &str,
        password: &str,
        addresses: &[String],
        home_region: Option<String>,
        quota: Option<String>,
        provisioned: bool,
    ) -> Result<(), AccountsError> {
        users_file::validate_login(login).map_err(AccountsError::Invalid)?;
        check_password_strength(password)?;
        for a in addresses {
            if directory::normalize_address(a).is_none() {
                return Err(AccountsError::Invalid(format!("`{a}` is not an address (local@domain)")));
            }
        }
        if let Some(q) = &quota {
            crate::config::parse_capacity(q).map_err(AccountsError::Invalid)?;
        }
        // Cheap refusals first (the directory checks again at quorum).
        if self.users.resolve_login(login, false).await?.is_some() {
            return Err(AccountsError::Exists(login.to_string()));
        }
        for a in addresses {
            if let Some(owner) = self.users.resolve_address(a).await? {
                return Err(AccountsError::AddressTaken { address: a.clone(), owner: owner.login });
            }
        }
        // A random id: a login deleted and created again starts afresh.
        let uid = UserId(rand::random());
        let (kdf, pw) = (self.kdf, password.to_string());
        let (phc, locked) = blocking(move || {
            let bundle = KeyBundle::generate();
            Ok::<_, CryptoError>((kdf.hash_password(pw.as_bytes())?, bundle.lock(pw.as_bytes(), kdf)?))
        })
        .await?;
        let new = NewUser {
            user: User {
                login: login.to_string(),
                id: uid,
                password: phc,
                addresses: addresses.to_vec(),
                home_region,
                quota,
            },
            provisioned,
        };
        self.users.add(&new, Some(&locked)).await?;
        log::info!("user `{login}` created");
        Ok(())
    }

    /// Creates the declared users that do not exist yet (never touching an
    /// existing user's password); for users created this way, keeps quota
    /// and home region as declared. Returns the users that failed, and why.
    pub async fn provision(&self, declared: &[DeclaredUser]) -> Vec<(String, AccountsError)> {
        let mut problems = vec![];
        for d in declared {
            let existing = match self.users.resolve_login(&d.login, true).await {
                Ok(u) => u,
                Err(e) => {
                    problems.push((d.login.clone(), e.into()));
                    continue;
                }
            };
            let result = match existing {
                None => match self
                    .create(&d.login, &d.initial_password, &d.addresses, d.home_region.clone(), d.quota.clone(), true)
                    .await
                {
                    // Another node provisioned it first.
                    Err(AccountsError::Exists(_)) => Ok(()),
                    r => r,
                },
                Some(u) => {
                    let provisioned = self.users.view().users.get(&d.login).is_some_and(|(_, r)| r.provisioned);
                    if provisioned && (u.quota != d.quota || u.home_region != d.home_region) {
                        let (q, h) = (d.quota.clone(), d.home_region.clone());
                        self.users
                            .update(&d.login, |r, stamp| {
                                if r.quota.value != q {
                                    r.quota = records::Stamped::new(q, stamp);
                                }
                                if r.home_region.value != h {
                                    r.home_region = records::Stamped::new(h, stamp);
                                }
                            })
                            .await
                            .map(|_| ())
                    } else {
                        Ok(())
                    }
                }
            };
            if let Err(e) = result {
                problems.push((d.login.clone(), e));
            }
        }
        problems
    }

    /// Changes a user's password (the current one is needed: it is the only
    /// way to the keys). With `rotate`, also replaces the master key and
    /// re-encrypts every item it protects.
    pub async fn change_password(&self, login: &str, current: &str, new: &str, rotate: bool) -> Result<(), AccountsError> {
        check_password_strength(new)?;
        let user = self
            .users
            .resolve_login(login, true)
            .await?
            .ok_or_else(|| AccountsError::NoSuchUser(login.to_string()))?;
        let (phc, pw) = (user.password.clone(), current.as_bytes().to_vec());
        if !blocking(move || crate::crypto::kdf_verify(&phc, &pw)).await? {
            return Err(AccountsError::AuthFailed);
        }
        let uid = user.id;
        let (records, token) = keys::load(&self.store, &uid)
            .await?
            .ok_or_else(|| AccountsError::NoKeys(login.to_string()))?;
        let pw = current.as_bytes().to_vec();
        let bundle = blocking(move || keys::unlock_any(&records, &pw)).await?;
        if rotate && bundle.previous.is_some() {
            // Stragglers of the rotation before this one move to the current
            // key first, so that dropping the oldest key loses nothing.
            self.reseal_all(&UserKeys::new(uid, bundle.clone())).await?;
        }
        let bundle = if rotate { bundle.with_new_master() } else { bundle };
        let (kdf, new_pw) = (self.kdf, new.to_string());
        let (new_phc, locked, bundle) = blocking(move || {
            let locked = bundle.lock(new_pw.as_bytes(), kdf)?;
            Ok::<_, CryptoError>((kdf.hash_password(new_pw.as_bytes())?, locked, bundle))
        })
        .await?;
        // The key record first: from here the new password opens the keys;
        // the directory follows so the new password is also accepted.
        keys::save(&self.store, &uid, &locked, Some(&token)).await?;
        self.users
            .update(login, |r, stamp| r.password = records::Stamped::new(new_phc, stamp))
            .await?;
        self.cache.forget(login);
        if rotate {
            // The old key stays in the bundle as `previous` until the next
            // rotation: items written meanwhile under it by sessions that
            // still hold it (on other nodes), or in partitions Garage's index
            // has not listed yet, stay readable.
            let n = self.reseal_all(&UserKeys::new(uid, bundle)).await?;
            log::info!("user `{login}`: master key rotated, {n} item(s) re-encrypted");
        } else {
            log::info!("user `{login}`: password changed");
        }
        Ok(())
    }

    /// Re-encrypts every item of the user still under the previous master key.
    async fn reseal_all(&self, keys: &UserKeys) -> Result<usize, AccountsError> {
        let mut count = 0;
        for partition in self.store.list_partitions(&keys.user).await? {
            if partition == keys::KEYS_PARTITION {
                continue;
            }
            for item in self.store.range(&keys.user, &partition, &Range::default()).await? {
                if !item.values.iter().any(|v| keys.needs_reseal(&partition, &item.sort_key, v)) {
                    continue;
                }
                let mut resealed = vec![];
                for v in &item.values {
                    let plain = keys.open_item(&partition, &item.sort_key, v)?;
                    resealed.push(keys.seal_item(&partition, &item.sort_key, &plain));
                }
                // Concurrent siblings stay siblings: the first replaces what
                // was read, the others are added next to it.
                let mut token = Some(item.token.clone());
                for v in resealed {
                    self.store.insert(&keys.user, &partition, &item.sort_key, v, token.take().as_ref()).await?;
                }
                count += 1;
            }
        }
        Ok(count)
    }

    /// Sets or removes a user's storage quota (a size like "10G").
    pub async fn set_quota(&self, login: &str, quota: Option<String>) -> Result<(), AccountsError> {
        if let Some(q) = &quota {
            crate::config::parse_capacity(q).map_err(AccountsError::Invalid)?;
        }
        self.users.update(login, |r, stamp| r.quota = records::Stamped::new(quota, stamp)).await?;
        Ok(())
    }

    /// Deletes a user: gone from the directory on every node at once, then
    /// every item and blob they own (their key record included), then their
    /// directory records. An interrupted deletion is resumed by running it
    /// again.
    pub async fn delete_user(&self, login: &str) -> Result<(), AccountsError> {
        let rec = self.users.begin_delete(login).await?;
        let uid = rec
            .user_id()
            .ok_or_else(|| AccountsError::Invalid(format!("user `{login}` has a malformed id in the directory")))?;
        self.cache.forget(login);
        let (items, blobs) = purge(&self.store, &uid).await?;
        self.users.finish_delete(&rec).await?;
        log::info!("user `{login}` deleted ({items} item(s), {blobs} blob(s))");
        Ok(())
    }

    /// The unlocked keys of a user with a live session on this node.
    pub fn active_keys(&self, login: &str) -> Option<Arc<UserKeys>> {
        self.cache.active_keys(login)
    }

    /// Forgets cached keys of users without sessions past the grace time.
    pub fn sweep_cache(&self) {
        self.cache.sweep();
    }

    /// The node's store (for layers that act for users).
    pub fn store(&self) -> &Store {
        &self.store
    }
}

/// Deletes everything stored under a user id; returns (items, blobs).
/// Garage's partition index is updated in the background, so a partition
/// written moments ago may not be listed yet (seconds, under load): passes
/// repeat, a second apart, until five in a row find nothing.
async fn purge(store: &Store, uid: &UserId) -> Result<(usize, usize), AccountsError> {
    let (mut items, mut blobs) = (0, 0);
    let mut empty_passes = 0;
    for pass in 0..60 {
        if pass > 0 {
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        }
        let mut found = 0;
        for key in store.list_blobs(uid, "").await? {
            store.delete_blob(uid, &key).await?;
            blobs += 1;
            found += 1;
        }
        for partition in store.list_partitions(uid).await? {
            let live = store.range(uid, &partition, &Range::default()).await?;
            store.delete_items(uid, &partition, &live).await?;
            items += live.len();
            found += live.len();
        }
        empty_passes = if found == 0 { empty_passes + 1 } else { 0 };
        if empty_passes == 5 {
            break;
        }
    }
    Ok((items, blobs))
}

fn check_password_strength(password: &str) -> Result<(), AccountsError> {
    if password.chars().count() < 6 {
        return Err(AccountsError::Invalid("the password must have at least 6 characters".into()));
    }
    if password.len() > 1024 {
        return Err(AccountsError::Invalid("the password is longer than 1024 bytes".into()));
    }
    Ok(())
}
