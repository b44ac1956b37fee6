//! A user's mailbox list: names, ids, special-use attributes, and
//! subscriptions, as replicated items that merge without coordination.
//!
//! Each mailbox is one item (partition `mailboxes`, sort key = its opaque
//! id), so creating two mailboxes on two nodes at once never conflicts.
//! Concurrent renames of one mailbox leave sibling values; the largest wins
//! everywhere, deterministically, until the next write settles it. Two
//! mailboxes created under the same name at once are both kept; the later
//! one (by id) is shown with its id appended, so nothing is lost and every
//! node shows the same names. Names are UTF-8 with `/` as the hierarchy
//! separator and live only inside sealed values. INBOX always exists.
//! Subscriptions are kept apart (partition `subscriptions`, keyed by a
//! keyed hash of the name), since one may subscribe to a name that does
//! not exist.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::accounts::UserKeys;
use crate::storage::{ItemWrite, Range, Store, StorageError};

pub const INBOX_ID: &str = "inbox";
const PARTITION: &str = "mailboxes";
const SUBSCRIPTIONS: &str = "subscriptions";
pub const SEPARATOR: char = '/';

#[derive(Debug, thiserror::Error)]
pub enum MailboxesError {
    #[error("mailbox `{0}` already exists")]
    Exists(String),
    #[error("no mailbox `{0}`")]
    NotFound(String),
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Storage(#[from] StorageError),
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
struct Record {
    name: String,
    special_use: Option<String>,
}

/// One mailbox as listed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MailboxInfo {
    pub id: String,
    pub name: String,
    pub special_use: Option<String>,
}

/// Checks a mailbox name: non-empty UTF-8, no empty hierarchy levels, no
/// control characters, bounded length.
pub fn validate_name(name: &str) -> Result<(), MailboxesError> {
    let bad = |r: &str| Err(MailboxesError::Invalid(format!("invalid mailbox name `{}`: {r}", name.escape_debug())));
    if name.is_empty() || name.len() > 512 {
        return bad("must be 1 to 512 bytes");
    }
    if name.chars().any(char::is_control) {
        return bad("control characters are not allowed");
    }
    if name.split(SEPARATOR).any(str::is_empty) {
        return bad("empty hierarchy level");
    }
    Ok(())
}

fn is_inbox(name: &str) -> bool {
    name.eq_ignore_ascii_case("INBOX")
}

/// Names for the records read: INBOX first (virtual if never written),
/// then by name; when two ids carry one name, the smallest id keeps it and
/// the others get their id appended, the same on every node.
fn resolve(records: Vec<(String, Record)>) -> Vec<MailboxInfo> {
    let mut by_name: BTreeMap<String, Vec<(String, Record)>> = BTreeMap::new();
    for (id, r) in records {
        let key = if is_inbox(&r.name) { "INBOX".to_string() } else { r.name.clone() };
        by_name.entry(key).or_default().push((id, r));
    }
    let mut out = vec![];
    if !by_name.contains_key("INBOX") {
        out.push(MailboxInfo {
            id: INBOX_ID.into(),
            name: "INBOX".into(),
            special_use: None,
        });
    }
    for (name, mut same) in by_name {
        same.sort_by(|a, b| a.0.cmp(&b.0));
        // INBOX's fixed id wins its name.
        same.sort_by_key(|(id, _)| id != INBOX_ID);
        for (i, (id, r)) in same.into_iter().enumerate() {
            let shown = if i == 0 { name.clone() } else { format!("{name}-{}", &id[..id.len().min(8)]) };
            out.push(MailboxInfo {
                id,
                name: shown,
                special_use: r.special_use,
            });
        }
    }
    out.sort_by(|a, b| (a.name != "INBOX", &a.name).cmp(&(b.name != "INBOX", &b.name)));
    out
}

/// The mailbox list of one user on one node.
pub struct Mailboxes {
    store: Store,
    keys: Arc<UserKeys>,
}

impl Mailboxes {
    pub fn new(store: Store, keys: Arc<UserKeys>) -> Self {
        Mailboxes { store, keys }
    }

    /// Every mailbox, INBOX first, then by name.
    pub async fn list(&self) -> Result<Vec<MailboxInfo>, MailboxesError> {
        let items = self.store.range(&self.keys.user, PARTITION, &Range::default()).await?;
        let mut records = vec![];
        for it in items {
            let mut best: Option<Record> = None;
            for v in &it.values {
                let plain = self
                    .keys
                    .open_item(PARTITION, &it.sort_key, v)
                    .map_err(|e| StorageError::Corrupt(format!("mailbox record: {e}")))?;
                let r: Record = rmp_serde::from_slice(&plain)
                    .map_err(|e| StorageError::Corrupt(format!("mailbox record: {e}")))?;
                best = Some(match best {
                    Some(b) if b >= r => b,
                    _ => r,
                });
            }
            if let Some(r) = best {
                records.push((it.sort_key, r));
            }
        }
        Ok(resolve(records))
    }

    /// The mailbox with this name (INBOX case-insensitively).
    pub async fn find(&self, name: &str) -> Result<Option<MailboxInfo>, MailboxesError> {
        let list = self.list().await?;
        Ok(list.into_iter().find(|m| m.name == name || (is_inbox(name) && m.name == "INBOX")))
    }

    async fn write(&self, id: &str, record: &Record, token: Option<&crate::storage::CausalityToken>) -> Result<(), MailboxesError> {
        let bytes = rmp_serde::to_vec_named(record).map_err(|e| MailboxesError::Invalid(e.to_string()))?;
        let sealed = self.keys.seal_item(PARTITION, id, &bytes);
        self.store.insert(&self.keys.user, PARTITION, id, sealed, token).await?;
        Ok(())
    }

    /// Creates a mailbox (and, as IMAP wants, any missing parent levels).
    pub async fn create(&self, name: &str, special_use: Option<String>) -> Result<MailboxInfo, MailboxesError> {
        validate_name(name)?;
        if is_inbox(name) {
            return Err(MailboxesError::Exists("INBOX".into()));
        }
        let list = self.list().await?;
        if list.iter().any(|m| m.name == name) {
            return Err(MailboxesError::Exists(name.into()));
        }
        let parts: Vec<&str> = name.split(SEPARATOR).collect();
        for i in 1..parts.len() {
            let parent = parts[..i].join("/");
            if !is_inbox(&parent) && !list.iter().any(|m| m.name == parent) {
                let id = hex::encode(rand::random::<[u8; 16]>());
                self.write(&id, &Record { name: parent, special_use: None }, None).await?;
            }
        }
        let id = hex::encode(rand::random::<[u8; 16]>());
        let record = Record { name: name.into(), special_use: special_use.clone() };
        self.write(&id, &record, None).await?;
        Ok(MailboxInfo { id, name: name.into(), special_use })
    }

    /// Renames a mailbox and everything under it.
    pub async fn rename(&self, from: &str, to: &str) -> Result<(), MailboxesError> {
        validate_name(to)?;
        if is_inbox(from) {
            return Err(MailboxesError::Invalid("renaming INBOX is not supported".into()));
        }
        let list = self.list().await?;
        if list.iter().any(|m| m.name == to) || is_inbox(to) {
            return Err(MailboxesError::Exists(to.into()));
        }
        let prefix = format!("{from}{SEPARATOR}");
        let moving: Vec<&MailboxInfo> = list.iter().filter(|m| m.name == from || m.name.starts_with(&prefix)).collect();
        if !moving.iter().any(|m| m.name == from) {
            return Err(MailboxesError::NotFound(from.into()));
        }
        let mut writes = vec![];
        for m in moving {
            let new_name = format!("{to}{}", &m.name[from.len()..]);
            let item = self.store.get(&self.keys.user, PARTITION, &m.id).await?;
            let token = item.map(|i| i.token);
            let bytes = rmp_serde::to_vec_named(&Record { name: new_name, special_use: m.special_use.clone() })
                .map_err(|e| MailboxesError::Invalid(e.to_string()))?;
            writes.push(ItemWrite {
                partition: PARTITION.into(),
                sort_key: m.id.clone(),
                value: Some(self.keys.seal_item(PARTITION, &m.id, &bytes)),
                token,
            });
        }
        // Missing superior names are created, as for CREATE (RFC 3501
        // §6.3.5 asks for it), so the new name hangs in the hierarchy.
        let parts: Vec<&str> = to.split(SEPARATOR).collect();
        for i in 1..parts.len() {
            let parent = parts[..i].join("/");
            if !is_inbox(&parent) && !list.iter().any(|m| m.name == parent) {
                let id = hex::encode(rand::random::<[u8; 16]>());
                let bytes = rmp_serde::to_vec_named(&Record { name: parent, special_use: None })
                    .map_err(|e| MailboxesError::Invalid(e.to_string()))?;
                writes.push(ItemWrite {
                    partition: PARTITION.into(),
                    sort_key: id.clone(),
                    value: Some(self.keys.seal_item(PARTITION, &id, &bytes)),
                    token: None,
                });
            }
        }
        self.store.insert_batch(&self.keys.user, writes).await?;
        Ok(())
    }

    /// Removes a mailbox from the list (its children stay). The caller
    /// deletes its log and messages.
    pub async fn delete(&self, name: &str) -> Result<MailboxInfo, MailboxesError> {
        if is_inbox(name) {
            return Err(MailboxesError::Invalid("INBOX cannot be deleted".into()));
        }
        let m = self.find(name).await?.ok_or_else(|| MailboxesError::NotFound(name.into()))?;
        if let Some(item) = self.store.get(&self.keys.user, PARTITION, &m.id).await? {
            self.store.delete(&self.keys.user, PARTITION, &m.id, &item.token).await?;
        }
        Ok(m)
    }

    fn subscription_key(&self, name: &str) -> String {
        let k = self.keys.seal_key_for_names();
        hex::encode(crate::crypto::keyed_hash(&k, &[name.as_bytes()]))
    }

    pub async fn subscribe(&self, name: &str) -> Result<(), MailboxesError> {
        validate_name(name)?;
        let key = self.subscription_key(name);
        let sealed = self.keys.seal_item(SUBSCRIPTIONS, &key, name.as_bytes());
        let token = self.store.get(&self.keys.user, SUBSCRIPTIONS, &key).await?.map(|i| i.token);
        self.store.insert(&self.keys.user, SUBSCRIPTIONS, &key, sealed, token.as_ref()).await?;
        Ok(())
    }

    pub async fn unsubscribe(&self, name: &str) -> Result<(), MailboxesError> {
        let key = self.subscription_key(name);
        match self.store.get(&self.keys.user, SUBSCRIPTIONS, &key).await? {
            Some(item) if !item.is_deleted() => {
                self.store.delete(&self.keys.user, SUBSCRIPTIONS, &key, &item.token).await?;
                Ok(())
            }
            _ => Err(MailboxesError::NotFound(name.into())),
        }
    }

    pub async fn subscriptions(&self) -> Result<Vec<String>, MailboxesError> {
        let items = self.store.range(&self.keys.user, SUBSCRIPTIONS, &Range::default()).await?;
        let mut out = vec![];
        for it in items {
            if let Some(v) = it.values.first() {
                let plain = self
                    .keys
                    .open_item(SUBSCRIPTIONS, &it.sort_key, v)
                    .map_err(|e| StorageError::Corrupt(format!("subscription: {e}")))?;
                out.push(String::from_utf8_lossy(&plain).into_owned());
            }
        }
        out.sort();
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(name: &str) -> Record {
        Record { name: name.into(), special_use: None }
    }

    #[test]
    fn duplicate_names_are_kept_apart_deterministically() {
        let a = vec![("bbbb0000".to_string(), rec("Twin")), ("aaaa0000".to_string(), rec("Twin")), ("cc".to_string(), rec("Work"))];
        let mut b = a.clone();
        b.reverse();
        let (ra, rb) = (resolve(a), resolve(b));
        assert_eq!(ra, rb, "same names on every node whatever the read order");
        let names: Vec<_> = ra.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, vec!["INBOX", "Twin", "Twin-bbbb0000", "Work"]);
        assert_eq!(ra[1].id, "aaaa0000");
    }

    #[test]
    fn names_are_checked() {
        assert!(validate_name("a/b").is_ok());
        assert!(validate_name("Entwürfe").is_ok());
        for bad in ["", "/a", "a/", "a//b", "a\nb"] {
            assert!(validate_name(bad).is_err(), "{bad:?}");
        }
    }
}
