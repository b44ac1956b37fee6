//! Accounts: the user directory, authentication, key unlock and caching,
//! failed-login throttling, and the user administration behind
//! `estafette user ...`.
//!
//! This layer turns a (login, password) into a [`Session`] holding the
//! user's unlocked keys; it knows nothing of mailboxes or protocols, and
//! never stores a password or an unlocked key.

mod cache;
pub mod directory;
pub mod keys;
mod throttle;
pub mod users_file;

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

pub use cache::Session;
pub use directory::{Directory, User};
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
}

impl AccountsError {
    /// Whether a retry later may succeed (storage unreachable).
    pub fn is_transient(&self) -> bool {
        matches!(self, AccountsError::Storage(e) if e.is_transient())
    }
}

/// How long unlocked keys stay cached after a user's last session ends.
const CACHE_GRACE: Duration = Duration::from_secs(300);

pub struct Accounts {
    users: Arc<UsersFile>,
    store: Store,
    kdf: KdfParams,
    cache: cache::KeyCache,
    throttle: throttle::Throttle,
    argon2_runs: AtomicU64,
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
    pub fn new(users: Arc<UsersFile>, store: Store, kdf: KdfParams) -> Self {
        Accounts {
            users,
            store,
            kdf,
            cache: cache::KeyCache::new(CACHE_GRACE),
            throttle: throttle::Throttle::default(),
            argon2_runs: AtomicU64::new(0),
        }
    }

    pub fn directory(&self) -> &dyn Directory {
        &*self.users
    }

    pub fn users_file(&self) -> &Arc<UsersFile> {
        &self.users
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
        let Some(user) = self.users.user(login) else {
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
        let uid = self.users.user_id(login);
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
                log::error!("user `{login}`: the password matches the users file but not the key record");
                return Err(AccountsError::AuthFailed);
            }
            Err(e) => return Err(e.into()),
        };
        Ok(self.cache.insert(login, password, &user.password, UserKeys::new(uid, bundle)))
    }

    /// Creates a user: password hash and addresses in the users file, a new
    /// key bundle sealed under the password in storage.
    pub async fn add_user(
        &self,
        login: &str,
        password: &str,
        addresses: &[String],
        home_region: Option<String>,
    ) -> Result<(), AccountsError> {
        users_file::validate_login(login).map_err(AccountsError::Invalid)?;
        check_password_strength(password)?;
        for a in addresses {
            if directory::normalize_address(a).is_none() {
                return Err(AccountsError::Invalid(format!("`{a}` is not an address (local@domain)")));
            }
            if let Some(owner) = self.users.by_address(a) {
                return Err(AccountsError::AddressTaken { address: a.clone(), owner: owner.login });
            }
        }
        if self.users.user(login).is_some() {
            return Err(AccountsError::Exists(login.to_string()));
        }
        let uid = self.users.user_id(login);
        let (kdf, pw) = (self.kdf, password.to_string());
        let (phc, locked) = blocking(move || {
            let bundle = KeyBundle::generate();
            Ok::<_, CryptoError>((kdf.hash_password(pw.as_bytes())?, bundle.lock(pw.as_bytes(), kdf)?))
        })
        .await?;
        // Keys first: a user in the file without keys could not log in.
        keys::save(&self.store, &uid, &locked, None).await?;
        let user = User {
            login: login.to_string(),
            password: phc,
            addresses: addresses.to_vec(),
            home_region,
            quota: None,
        };
        self.users
            .edit(move |users| {
                if users.iter().any(|u| u.login == user.login) {
                    return Err(AccountsError::Exists(user.login.clone()));
                }
                users.push(user);
                Ok(())
            })
            .await?;
        log::info!("user `{login}` created");
        Ok(())
    }

    /// Changes a user's password (the current one is needed: it is the only
    /// way to the keys). With `rotate`, also replaces the master key and
    /// re-encrypts every item it protects.
    pub async fn change_password(&self, login: &str, current: &str, new: &str, rotate: bool) -> Result<(), AccountsError> {
        check_password_strength(new)?;
        let user = self.users.user(login).ok_or_else(|| AccountsError::NoSuchUser(login.to_string()))?;
        let (phc, pw) = (user.password.clone(), current.as_bytes().to_vec());
        if !blocking(move || crate::crypto::kdf_verify(&phc, &pw)).await? {
            return Err(AccountsError::AuthFailed);
        }
        let uid = self.users.user_id(login);
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
        // the users file follows so the new password is also accepted.
        keys::save(&self.store, &uid, &locked, Some(&token)).await?;
        let l = login.to_string();
        self.users
            .edit(move |users| match users.iter_mut().find(|u| u.login == l) {
                Some(u) => {
                    u.password = new_phc;
                    Ok(())
                }
                None => Err(AccountsError::NoSuchUser(l)),
            })
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
        self.users
            .edit(|users| {
                let u = users
                    .iter_mut()
                    .find(|u| u.login == login)
                    .ok_or_else(|| AccountsError::NoSuchUser(login.to_string()))?;
                u.quota = quota;
                Ok(())
            })
            .await
    }

    /// Deletes a user: every item and blob they own, their key record, and
    /// their entry in the users file.
    pub async fn delete_user(&self, login: &str) -> Result<(), AccountsError> {
        if self.users.user(login).is_none() {
            return Err(AccountsError::NoSuchUser(login.to_string()));
        }
        let uid = self.users.user_id(login);
        self.cache.forget(login);
        let (items, blobs) = purge(&self.store, &uid).await?;
        let l = login.to_string();
        self.users
            .edit(move |users| {
                users.retain(|u| u.login != l);
                Ok(())
            })
            .await?;
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
