//! `\Recent` for IMAP4rev1 sessions (RFC 3501 §2.3.2): a message is recent
//! in the first session that is told about it. Per mailbox this is one
//! number, the *floor*: the first UID no session has claimed. A read-write
//! SELECT, or a selected session told of new mail, claims everything below
//! the mailbox's UIDNEXT; EXAMINE and STATUS only look.
//!
//! The floor lives in memory, shared by the sessions of a node, and in an
//! item (partition `recent`, sort key the mailbox id, sealed) so that a
//! restart or another node does not show old mail as recent again. It is
//! not sequenced: two sessions on two nodes claiming at the same moment
//! may both see a message as recent. That is the one relaxation of the
//! RFC's "first session"; IMAP4rev2 dropped `\Recent` for this kind of
//! reason, and no client depends on it for correctness (docs/imap.md).
//!
//! This module must not decide anything about UIDs: it only remembers
//! which ones were claimed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::model::Uid;
use crate::accounts::UserKeys;
use crate::storage::{Store, UserId};

const PARTITION: &str = "recent";

pub struct RecentTracker {
    store: Store,
    floors: Mutex<HashMap<(UserId, String), Uid>>,
}

fn decode(keys: &UserKeys, mailbox: &str, values: &[Vec<u8>]) -> Uid {
    // Concurrent claims leave siblings: the highest floor wins.
    values
        .iter()
        .filter_map(|v| keys.open_item(PARTITION, mailbox, v).ok())
        .filter_map(|b| b.try_into().ok().map(u32::from_le_bytes))
        .max()
        .unwrap_or(1)
}

impl RecentTracker {
    pub fn new(store: Store) -> Self {
        RecentTracker { store, floors: Mutex::new(HashMap::new()) }
    }

    fn cached(&self, user: &UserId, mailbox: &str) -> Option<Uid> {
        self.floors.lock().unwrap_or_else(|p| p.into_inner()).get(&(*user, mailbox.to_string())).copied()
    }

    /// The first UID no session has claimed (1 for a mailbox never
    /// selected). A storage error counts as "nothing claimed": at worst a
    /// message shows as recent twice.
    pub async fn floor(&self, keys: &Arc<UserKeys>, mailbox: &str) -> Uid {
        if let Some(f) = self.cached(&keys.user, mailbox) {
            return f;
        }
        let stored = match self.store.get(&keys.user, PARTITION, mailbox).await {
            Ok(Some(item)) => decode(keys, mailbox, &item.values),
            _ => 1,
        };
        let mut floors = self.floors.lock().unwrap_or_else(|p| p.into_inner());
        let f = floors.entry((keys.user, mailbox.to_string())).or_insert(stored);
        *f = (*f).max(stored);
        *f
    }

    /// Claims every UID below `upto` that no session has claimed yet and
    /// returns them as a range (empty when another session got there
    /// first). The new floor is written in the background.
    pub async fn claim(&self, keys: &Arc<UserKeys>, mailbox: &str, upto: Uid) -> std::ops::Range<Uid> {
        let from = self.floor(keys, mailbox).await;
        let claimed = {
            let mut floors = self.floors.lock().unwrap_or_else(|p| p.into_inner());
            let f = floors.entry((keys.user, mailbox.to_string())).or_insert(from);
            let start = *f;
            if start >= upto {
                return upto..upto;
            }
            *f = upto;
            start..upto
        };
        let (store, keys, mailbox) = (self.store.clone(), keys.clone(), mailbox.to_string());
        tokio::spawn(async move {
            // Never lower what is stored (a later claim may have landed first).
            let (token, stored) = match store.get(&keys.user, PARTITION, &mailbox).await {
                Ok(Some(item)) => {
                    let stored = decode(&keys, &mailbox, &item.values);
                    (Some(item.token), stored)
                }
                _ => (None, 1),
            };
            if stored >= upto {
                return;
            }
            let sealed = keys.seal_item(PARTITION, &mailbox, &upto.to_le_bytes());
            if let Err(e) = store.insert(&keys.user, PARTITION, &mailbox, sealed, token.as_ref()).await {
                log::debug!("remembering the \\Recent floor of a mailbox: {e}");
            }
        });
        claimed
    }

    /// Forgets a deleted mailbox.
    pub fn forget(&self, user: &UserId, mailbox: &str) {
        self.floors.lock().unwrap_or_else(|p| p.into_inner()).remove(&(*user, mailbox.to_string()));
    }
}
