//! The replicated directory's stored records and the rules that turn what a
//! node has read of them into one directory: which user owns a login, which
//! user an address delivers to, what is reported as a conflict. Pure (no
//! I/O, no clock): the storage protocol in `cluster.rs` and the tests drive
//! it with records.
//!
//! Layout (one partition, `directory`, under an opaque owner id; see
//! docs/storage.md):
//! - `u/<H(login)>/<nonce>`: one incarnation of a user (a `user add` that
//!   may have won or lost), [`UserRecord`];
//! - `a/<H(address)>/<nonce>`: that incarnation's claim on an address,
//!   [`AddressClaim`];
//! - `i/<H(salt)>`: an old-style users file was imported, [`ImportMarker`].
//!
//! `H` is a keyed hash under a key derived from the cluster secret, so the
//! sort keys name no login or address; every value is sealed.
//!
//! Merge rules (every value is a join-semilattice, so siblings and updates
//! arriving in any order converge): the state only moves forward
//! (Pending -> Active -> Deleting); each editable field keeps the value with
//! the highest [`Stamp`] (last writer wins, ties broken by node).

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use super::directory::User;
use crate::storage::UserId;

/// The items partition holding the whole directory.
pub const PARTITION: &str = "directory";
pub const USER_PREFIX: &str = "u/";
pub const ADDRESS_PREFIX: &str = "a/";
pub const IMPORT_PREFIX: &str = "i/";

/// Where an incarnation is in its life. Only moves forward.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum State {
    /// Written by a `user add` that has not yet checked it is alone.
    Pending,
    /// The add won: this is the user.
    Active,
    /// A `user delete` started: no longer a user; its data is being purged.
    Deleting,
}

/// Orders concurrent edits of one field: wall-clock milliseconds made
/// strictly greater than the value it replaces, then the writing node.
/// Only used to pick a winner between concurrent edits, never for safety.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Stamp {
    pub ms: u64,
    pub node: u64,
}

impl Stamp {
    /// A stamp above `prev`, at `now_ms` if the clock is ahead of it.
    pub fn after(prev: Stamp, now_ms: u64, node: u64) -> Stamp {
        Stamp {
            ms: now_ms.max(prev.ms + 1),
            node,
        }
    }
}

/// A field with the stamp of its last write.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Stamped<T> {
    pub value: T,
    pub stamp: Stamp,
}

impl<T: Clone> Stamped<T> {
    pub fn new(value: T, stamp: Stamp) -> Self {
        Stamped { value, stamp }
    }
    fn merge(&mut self, other: &Stamped<T>) {
        if other.stamp > self.stamp {
            *self = other.clone();
        }
    }
}

/// One incarnation of a user.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct UserRecord {
    pub login: String,
    /// The opaque storage id (hex) everything of this user lives under:
    /// random for users created here, the old salted hash for imported ones.
    pub id: String,
    /// Unique per `user add`; part of every key of this incarnation.
    pub nonce: String,
    pub created_ms: u64,
    /// The node that ran the add (reported by `user list`).
    pub origin: String,
    /// Created from the configuration's declared users.
    #[serde(default)]
    pub provisioned: bool,
    /// Addresses as given at creation; ownership is decided by the claims.
    pub addresses: Vec<String>,
    pub state: State,
    pub password: Stamped<String>,
    pub home_region: Stamped<Option<String>>,
    pub quota: Stamped<Option<String>>,
}

impl UserRecord {
    /// Joins two versions (siblings, or a cached and a newly read one) of
    /// the same incarnation.
    pub fn merge(&mut self, other: &UserRecord) {
        self.state = self.state.max(other.state);
        self.password.merge(&other.password);
        self.home_region.merge(&other.home_region);
        self.quota.merge(&other.quota);
        self.provisioned |= other.provisioned;
    }

    pub fn user_id(&self) -> Option<UserId> {
        hex::decode(&self.id).ok().and_then(|b| b.try_into().ok()).map(UserId)
    }

    /// The highest stamp of any field (for the next edit's stamp).
    pub fn last_stamp(&self) -> Stamp {
        self.password.stamp.max(self.home_region.stamp).max(self.quota.stamp)
    }
}

/// An incarnation's claim on one address.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct AddressClaim {
    /// Normalised (see [`address_key`]).
    pub address: String,
    pub login: String,
    pub nonce: String,
    pub created_ms: u64,
    pub state: State,
}

impl AddressClaim {
    pub fn merge(&mut self, other: &AddressClaim) {
        self.state = self.state.max(other.state);
    }
}

/// An old-style users file, imported once.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ImportMarker {
    pub path: String,
    pub imported_ms: u64,
    pub users: usize,
    pub by: String,
}

/// Any directory record, as stored.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum Record {
    User(UserRecord),
    Address(AddressClaim),
    Import(ImportMarker),
}

impl Record {
    /// Joins two versions of the record stored under one key. Records of
    /// different kinds under one key cannot come from us: keep the first.
    pub fn merge(&mut self, other: &Record) {
        match (self, other) {
            (Record::User(a), Record::User(b)) => a.merge(b),
            (Record::Address(a), Record::Address(b)) => a.merge(b),
            (Record::Import(a), Record::Import(b)) => {
                if b.imported_ms < a.imported_ms {
                    *a = b.clone();
                }
            }
            _ => {}
        }
    }

    /// Merges a list of sibling values (already decoded) into one record.
    pub fn merge_all(mut records: impl Iterator<Item = Record>) -> Option<Record> {
        let mut first = records.next()?;
        for r in records {
            first.merge(&r);
        }
        Some(first)
    }
}

/// The normalised form of an address used as its identity: both parts
/// lowercased (local parts are matched case-insensitively, as most servers
/// do), angle brackets and spaces around it removed. None if not local@domain.
pub fn address_key(address: &str) -> Option<String> {
    let (local, domain) = super::directory::normalize_address(address)?;
    Some(format!("{}@{}", local.to_lowercase(), domain))
}

/// A conflict the rules resolved, reported by `user list`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Conflict {
    /// Two incarnations of one login are both active (only possible if a
    /// pending add outlived the staleness bound; see docs/storage.md).
    Login { login: String, kept: String, others: Vec<String> },
    /// Several users claim one address; it delivers to `owner`.
    Address { address: String, owner: String, others: Vec<String> },
}

impl std::fmt::Display for Conflict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Conflict::Login { login, kept, others } => write!(
                f,
                "login `{login}` was created twice at once; the earlier ({kept}) is the user, later ones ({}) are ignored: delete and recreate if that is wrong",
                others.join(", ")
            ),
            Conflict::Address { address, owner, others } => write!(
                f,
                "address {address} is claimed by {owner} and {}; it delivers to `{owner}` (the earliest claim)",
                others.iter().map(|o| format!("`{o}`")).collect::<Vec<_>>().join(", ")
            ),
        }
    }
}

/// The directory as one node sees it: built from every record it has read.
#[derive(Default, Debug, Clone)]
pub struct View {
    /// login -> the active user.
    pub users: BTreeMap<String, (User, UserRecord)>,
    /// normalised address -> login.
    pub addresses: HashMap<String, String>,
    pub conflicts: Vec<Conflict>,
    /// Logins whose deletion was started but not finished.
    pub deleting: Vec<String>,
    pub imports: Vec<ImportMarker>,
}

impl View {
    /// Applies the rules to everything read (sort key -> merged record).
    pub fn build(records: &BTreeMap<String, Record>) -> View {
        let mut view = View::default();
        let mut incarnations: BTreeMap<&str, Vec<&UserRecord>> = BTreeMap::new();
        let mut claims: BTreeMap<&str, Vec<&AddressClaim>> = BTreeMap::new();
        for r in records.values() {
            match r {
                Record::User(u) if u.state == State::Active => incarnations.entry(&u.login).or_default().push(u),
                Record::User(u) if u.state == State::Deleting => view.deleting.push(u.login.clone()),
                Record::User(_) => {}
                Record::Address(c) if c.state == State::Active => claims.entry(&c.address).or_default().push(c),
                Record::Address(_) => {}
                Record::Import(m) => view.imports.push(m.clone()),
            }
        }
        for (login, mut incs) in incarnations {
            incs.sort_by(|a, b| (a.created_ms, &a.nonce).cmp(&(b.created_ms, &b.nonce)));
            let winner = incs[0];
            if incs.len() > 1 {
                view.conflicts.push(Conflict::Login {
                    login: login.to_string(),
                    kept: winner.origin.clone(),
                    others: incs[1..].iter().map(|u| u.origin.clone()).collect(),
                });
            }
            let Some(id) = winner.user_id() else { continue };
            let user = User {
                login: winner.login.clone(),
                id,
                password: winner.password.value.clone(),
                addresses: vec![],
                home_region: winner.home_region.value.clone(),
                quota: winner.quota.value.clone(),
            };
            view.users.insert(login.to_string(), (user, winner.clone()));
        }
        for (address, mut cs) in claims {
            // Only claims of the incarnation that is the user count.
            cs.retain(|c| view.users.get(&c.login).is_some_and(|(_, r)| r.nonce == c.nonce));
            cs.sort_by(|a, b| (a.created_ms, &a.login).cmp(&(b.created_ms, &b.login)));
            let Some(owner) = cs.first() else { continue };
            let mut others: Vec<String> = cs[1..].iter().map(|c| c.login.clone()).filter(|l| *l != owner.login).collect();
            others.dedup();
            if !others.is_empty() {
                view.conflicts.push(Conflict::Address {
                    address: address.to_string(),
                    owner: owner.login.clone(),
                    others,
                });
            }
            view.addresses.insert(address.to_string(), owner.login.clone());
        }
        // A user's addresses are those of its record that it owns, in the
        // spelling it was created with.
        for (login, (u, r)) in view.users.iter_mut() {
            u.addresses =
                r.addresses.iter().filter(|a| address_key(a).is_some_and(|k| view.addresses.get(&k) == Some(login))).cloned().collect();
        }
        view.deleting.sort();
        view.deleting.dedup();
        view
    }

    pub fn user(&self, login: &str) -> Option<&User> {
        self.users.get(login).map(|(u, _)| u)
    }

    /// The user `address` delivers to: exact, then without a `+detail`.
    pub fn by_address(&self, address: &str) -> Option<&User> {
        let key = address_key(address)?;
        let find = |k: &str| self.addresses.get(k).and_then(|l| self.user(l));
        find(&key).or_else(|| base_address(&key).and_then(|b| find(&b)))
    }
}

/// `local+detail@domain` -> `local@domain` (None without a detail).
pub fn base_address(key: &str) -> Option<String> {
    let (local, domain) = key.rsplit_once('@')?;
    let (base, _) = local.split_once('+')?;
    (!base.is_empty()).then(|| format!("{base}@{domain}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(login: &str, nonce: &str, created: u64, state: State) -> UserRecord {
        UserRecord {
            login: login.into(),
            id: hex::encode([created as u8; 32]),
            nonce: nonce.into(),
            created_ms: created,
            origin: format!("node-{nonce}"),
            provisioned: false,
            addresses: vec![format!("{login}@Example.test")],
            state,
            password: Stamped::new("$argon2id$old".into(), Stamp { ms: created, node: 1 }),
            home_region: Stamped::new(None, Stamp { ms: created, node: 1 }),
            quota: Stamped::new(None, Stamp { ms: created, node: 1 }),
        }
    }

    fn claim(address: &str, login: &str, nonce: &str, created: u64, state: State) -> AddressClaim {
        AddressClaim {
            address: address_key(address).unwrap(),
            login: login.into(),
            nonce: nonce.into(),
            created_ms: created,
            state,
        }
    }

    fn build(records: Vec<Record>) -> View {
        let map = records.into_iter().enumerate().map(|(i, r)| (format!("{i:04}"), r)).collect();
        View::build(&map)
    }

    #[test]
    fn concurrent_field_edits_both_survive_and_merge_is_order_free() {
        let base = user("bob", "n1", 10, State::Active);
        let mut passwd = base.clone();
        passwd.password = Stamped::new("$argon2id$new".into(), Stamp::after(base.last_stamp(), 20, 2));
        let mut quota = base.clone();
        quota.quota = Stamped::new(Some("1G".into()), Stamp::after(base.last_stamp(), 15, 3));
        let mut a = passwd.clone();
        a.merge(&quota);
        let mut b = quota.clone();
        b.merge(&passwd);
        assert_eq!(a, b, "merge is commutative");
        assert_eq!(a.password.value, "$argon2id$new");
        assert_eq!(a.quota.value.as_deref(), Some("1G"));
        // Two password changes at once: the higher stamp wins, everywhere.
        let mut other = base.clone();
        other.password = Stamped::new("$argon2id$other".into(), Stamp { ms: 20, node: 1 });
        let mut x = a.clone();
        x.merge(&other);
        let mut y = other.clone();
        y.merge(&a);
        assert_eq!(x.password.value, "$argon2id$new", "same ms: node 2 beats node 1");
        assert_eq!(x, y);
    }

    #[test]
    fn state_only_moves_forward() {
        let mut a = user("bob", "n1", 10, State::Deleting);
        a.merge(&user("bob", "n1", 10, State::Active));
        assert_eq!(a.state, State::Deleting);
        let mut p = user("bob", "n1", 10, State::Pending);
        p.merge(&user("bob", "n1", 10, State::Active));
        assert_eq!(p.state, State::Active);
    }

    #[test]
    fn pending_and_deleting_incarnations_are_not_users() {
        let v = build(vec![
            Record::User(user("bob", "n1", 10, State::Pending)),
            Record::Address(claim("bob@example.test", "bob", "n1", 10, State::Pending)),
            Record::User(user("carol", "n2", 10, State::Deleting)),
            Record::Address(claim("carol@example.test", "carol", "n2", 10, State::Active)),
        ]);
        assert!(v.user("bob").is_none());
        assert!(v.by_address("bob@example.test").is_none());
        assert!(v.by_address("carol@example.test").is_none(), "a claim of a deleted user delivers nothing");
        assert_eq!(v.deleting, vec!["carol".to_string()]);
    }

    #[test]
    fn addresses_resolve_case_insensitively_and_with_detail() {
        let v = build(vec![
            Record::User(user("bob", "n1", 10, State::Active)),
            Record::Address(claim("bob@Example.test", "bob", "n1", 10, State::Active)),
        ]);
        assert_eq!(v.by_address("<BOB@example.TEST>").unwrap().login, "bob");
        assert_eq!(v.by_address("bob+lists@example.test").unwrap().login, "bob");
        assert!(v.by_address("bob@other.test").is_none());
        assert!(v.by_address("nope").is_none());
        assert_eq!(v.user("bob").unwrap().addresses, vec!["bob@Example.test".to_string()]);
    }

    #[test]
    fn races_found_after_the_fact_resolve_to_the_earliest_and_are_reported() {
        let v = build(vec![
            Record::User(user("bob", "n1", 10, State::Active)),
            Record::User(user("bob", "n2", 12, State::Active)),
            Record::User(user("carol", "n3", 11, State::Active)),
            Record::Address(claim("shared@example.test", "carol", "n3", 11, State::Active)),
            Record::Address(claim("shared@example.test", "bob", "n1", 13, State::Active)),
            // A claim of the losing incarnation counts for nothing.
            Record::Address(claim("other@example.test", "bob", "n2", 12, State::Active)),
        ]);
        assert_eq!(v.user("bob").unwrap().id, user("bob", "n1", 10, State::Active).user_id().unwrap());
        assert_eq!(v.by_address("shared@example.test").unwrap().login, "carol", "earliest claim owns it");
        assert!(v.by_address("other@example.test").is_none());
        assert_eq!(v.conflicts.len(), 2, "{:?}", v.conflicts);
        let text: Vec<String> = v.conflicts.iter().map(|c| c.to_string()).collect();
        assert!(text.iter().any(|t| t.contains("login `bob`")), "{text:?}");
        assert!(text.iter().any(|t| t.contains("shared@example.test") && t.contains("delivers to `carol`")), "{text:?}");
    }
}
