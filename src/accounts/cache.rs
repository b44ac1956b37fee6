//! Unlocked keys, kept while a user has sessions (and a grace time after),
//! so ten connections cost one Argon2 run. Every login still checks the
//! password: against a keyed hash (BLAKE2b-MAC under a per-process random
//! key) of the password that unlocked the keys, which is cheap to compare
//! and useless to anyone reading memory without that key.
//!
//! An entry is dropped (and its keys zeroised) when its last session ends
//! and the grace time passes, or when the user's password hash in the
//! directory changes.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use subtle::ConstantTimeEq;

use super::keys::UserKeys;

struct Entry {
    keys: Arc<UserKeys>,
    check: [u8; 32],
    /// The directory's password hash when the entry was made.
    phc: String,
    sessions: AtomicUsize,
    idle_since: Mutex<Option<Instant>>,
}

pub struct KeyCache {
    secret: [u8; 32],
    grace: Duration,
    entries: Mutex<HashMap<String, Arc<Entry>>>,
}

/// A logged-in session: the user's keys, held while the session lives.
pub struct Session {
    login: String,
    entry: Arc<Entry>,
}

impl Session {
    pub fn login(&self) -> &str {
        &self.login
    }
    pub fn keys(&self) -> &Arc<UserKeys> {
        &self.entry.keys
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if self.entry.sessions.fetch_sub(1, Ordering::AcqRel) == 1 {
            if let Ok(mut idle) = self.entry.idle_since.lock() {
                *idle = Some(Instant::now());
            }
        }
    }
}

pub enum Lookup {
    /// Cached and the password matches.
    Hit(Session),
    /// Cached, but this is not the password that unlocked the keys.
    WrongPassword,
    /// Not cached (or dropped because the password hash changed).
    Miss,
}

impl KeyCache {
    pub fn new(grace: Duration) -> Self {
        KeyCache {
            secret: rand::random(),
            grace,
            entries: Mutex::new(HashMap::new()),
        }
    }

    fn check(&self, login: &str, password: &[u8]) -> [u8; 32] {
        crate::crypto::keyed_hash(&self.secret, &[login.as_bytes(), b"\0", password])
    }

    fn session(login: &str, entry: &Arc<Entry>) -> Session {
        entry.sessions.fetch_add(1, Ordering::AcqRel);
        if let Ok(mut idle) = entry.idle_since.lock() {
            *idle = None;
        }
        Session {
            login: login.to_string(),
            entry: entry.clone(),
        }
    }

    pub fn lookup(&self, login: &str, password: &[u8], current_phc: &str) -> Lookup {
        self.sweep();
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let Some(entry) = entries.get(login).cloned() else {
            return Lookup::Miss;
        };
        if entry.phc != current_phc {
            entries.remove(login);
            return Lookup::Miss;
        }
        if bool::from(entry.check.ct_eq(&self.check(login, password))) {
            Lookup::Hit(Self::session(login, &entry))
        } else {
            Lookup::WrongPassword
        }
    }

    /// Caches freshly unlocked keys and opens a session on them.
    pub fn insert(&self, login: &str, password: &[u8], phc: &str, keys: UserKeys) -> Session {
        let entry = Arc::new(Entry {
            keys: Arc::new(keys),
            check: self.check(login, password),
            phc: phc.to_string(),
            sessions: AtomicUsize::new(0),
            idle_since: Mutex::new(None),
        });
        let session = Self::session(login, &entry);
        self.entries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(login.to_string(), entry);
        session
    }

    /// The keys of a user who has a live session on this node, if any (for
    /// filing mail delivered to them here; no password involved, so only
    /// keys a session already unlocked).
    pub fn active_keys(&self, login: &str) -> Option<Arc<UserKeys>> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries
            .get(login)
            .filter(|e| e.sessions.load(Ordering::Acquire) > 0)
            .map(|e| e.keys.clone())
    }

    /// Forgets a user's keys (password change, deletion).
    pub fn forget(&self, login: &str) {
        self.entries.lock().unwrap_or_else(|p| p.into_inner()).remove(login);
    }

    /// Drops entries without sessions whose grace time has passed.
    pub fn sweep(&self) {
        let now = Instant::now();
        self.entries.lock().unwrap_or_else(|p| p.into_inner()).retain(|_, e| {
            e.sessions.load(Ordering::Acquire) > 0
                || e
                    .idle_since
                    .lock()
                    .map(|i| i.is_none_or(|t| now.duration_since(t) < self.grace))
                    .unwrap_or(false)
        });
    }

    pub fn len(&self) -> usize {
        self.entries.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}
