//! The user directory: who exists, their password hash, the addresses that
//! deliver to them. A trait, so an LDAP directory can replace the users
//! file without touching callers.

use crate::storage::UserId;

/// One user as the directory knows them.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct User {
    pub login: String,
    /// Argon2id PHC string.
    pub password: String,
    /// Addresses (and aliases) delivering to this user, `local@domain`.
    #[serde(default)]
    pub addresses: Vec<String>,
    /// The region whose nodes should sequence this user's mailboxes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub home_region: Option<String>,
    /// Storage quota, e.g. "10G".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota: Option<String>,
}

impl User {
    /// The quota in bytes (None: unlimited). The users file is validated
    /// when loaded, so a quota that does not parse cannot be here.
    pub fn quota_bytes(&self) -> Option<u64> {
        self.quota.as_deref().and_then(|q| crate::config::parse_capacity(q).ok())
    }
}

pub trait Directory: Send + Sync {
    /// The user with this login (exact match).
    fn user(&self, login: &str) -> Option<User>;
    /// The user an address delivers to: case-insensitive domain,
    /// `local+detail@domain` falls back to `local@domain`.
    fn by_address(&self, address: &str) -> Option<User>;
    fn users(&self) -> Vec<User>;
    /// The opaque storage id of a login (salted hash; no login reaches storage).
    fn user_id(&self, login: &str) -> UserId;
}

/// Normalises an address for lookup: domain lowercased, local part as is.
pub fn normalize_address(address: &str) -> Option<(String, String)> {
    let address = address.trim().trim_start_matches('<').trim_end_matches('>');
    let (local, domain) = address.rsplit_once('@')?;
    if local.is_empty() || domain.is_empty() || domain.contains(char::is_whitespace) {
        return None;
    }
    Some((local.to_string(), domain.to_ascii_lowercase()))
}

/// Finds the user for `address` among `users`: exact (case-insensitive
/// domain, and case-insensitive local part as most servers do), then without
/// a `+detail`.
pub fn find_by_address<'a>(users: impl Iterator<Item = &'a User> + Clone, address: &str) -> Option<&'a User> {
    let (local, domain) = normalize_address(address)?;
    let matches = |l: &str| {
        users.clone().find(|u| {
            u.addresses.iter().any(|a| {
                normalize_address(a).is_some_and(|(al, ad)| ad == domain && al.eq_ignore_ascii_case(l))
            })
        })
    };
    matches(&local).or_else(|| local.split_once('+').and_then(|(base, _)| matches(base)))
}

/// The storage id of `login` under an installation salt.
pub fn user_id(salt: &[u8; 32], login: &str) -> UserId {
    UserId(crate::crypto::keyed_hash(salt, &[b"estafette user id v1\0", login.as_bytes()]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u(login: &str, addrs: &[&str]) -> User {
        User {
            login: login.into(),
            password: String::new(),
            addresses: addrs.iter().map(|s| s.to_string()).collect(),
            home_region: None,
            quota: None,
        }
    }

    #[test]
    fn address_lookup() {
        let users = [u("alice", &["alice@example.test", "postmaster@Example.Test"]), u("bob", &["bob@example.test"])];
        let find = |a: &str| find_by_address(users.iter(), a).map(|u| u.login.clone());
        assert_eq!(find("alice@example.test").as_deref(), Some("alice"));
        assert_eq!(find("<alice@EXAMPLE.test>").as_deref(), Some("alice"));
        assert_eq!(find("Alice@example.test").as_deref(), Some("alice"));
        assert_eq!(find("postmaster@example.TEST").as_deref(), Some("alice"));
        assert_eq!(find("alice+lists@example.test").as_deref(), Some("alice"));
        assert_eq!(find("bob@example.test").as_deref(), Some("bob"));
        assert_eq!(find("carol@example.test"), None);
        assert_eq!(find("alice@other.test"), None);
        assert_eq!(find("not an address"), None);
        assert_eq!(find("@example.test"), None);
    }

    #[test]
    fn user_ids_are_salted() {
        assert_eq!(user_id(&[1; 32], "alice"), user_id(&[1; 32], "alice"));
        assert_ne!(user_id(&[1; 32], "alice"), user_id(&[2; 32], "alice"));
        assert_ne!(user_id(&[1; 32], "alice"), user_id(&[1; 32], "bob"));
    }
}
