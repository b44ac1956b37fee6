//! The user directory: who exists, their password hash, the addresses that
//! deliver to them. A trait, so an LDAP directory can replace the
//! replicated one (`cluster.rs`) without touching callers.

use crate::storage::UserId;

/// One user as the directory knows them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub login: String,
    /// The opaque id everything the user owns is stored under.
    pub id: UserId,
    /// Argon2id PHC string.
    pub password: String,
    /// Addresses (and aliases) delivering to this user, `local@domain`.
    pub addresses: Vec<String>,
    /// The region whose nodes should sequence this user's mailboxes.
    pub home_region: Option<String>,
    /// Storage quota, e.g. "10G".
    pub quota: Option<String>,
}

impl User {
    /// The quota in bytes (None: unlimited). Quotas are validated before
    /// they are stored, so one that does not parse cannot be here.
    pub fn quota_bytes(&self) -> Option<u64> {
        self.quota.as_deref().and_then(|q| crate::config::parse_capacity(q).ok())
    }
}

/// Why the directory cannot answer (yet): callers answer "try again later"
/// (LMTP 4xx, IMAP `NO [UNAVAILABLE]`), never "no such user".
#[derive(Debug, thiserror::Error)]
pub enum DirectoryError {
    #[error("the user directory is not loaded yet (node starting)")]
    NotReady,
    #[error("the user directory cannot be read: {0}")]
    Unavailable(String),
}

#[async_trait::async_trait]
pub trait Directory: Send + Sync {
    /// The user with this login (exact match), as this node knows it now.
    fn user(&self, login: &str) -> Option<User>;
    /// The user an address delivers to, as this node knows it now:
    /// case-insensitive, `local+detail@domain` falls back to `local@domain`.
    fn by_address(&self, address: &str) -> Option<User>;
    fn users(&self) -> Vec<User>;
    /// The storage id of a known login.
    fn user_id(&self, login: &str) -> Option<UserId> {
        self.user(login).map(|u| u.id)
    }
    /// Like `by_address`, but a miss is confirmed by a quorum read before
    /// it is believed: Ok(None) means the directory has no such address.
    async fn resolve_address(&self, address: &str) -> Result<Option<User>, DirectoryError>;
    /// Like `user`, confirmed (or refreshed, with `refresh`) by a quorum read.
    async fn resolve_login(&self, login: &str, refresh: bool) -> Result<Option<User>, DirectoryError>;
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

/// The storage id of `login` under an installation salt.
pub fn user_id(salt: &[u8; 32], login: &str) -> UserId {
    UserId(crate::crypto::keyed_hash(salt, &[b"estafette user id v1\0", login.as_bytes()]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_ids_are_salted() {
        assert_eq!(user_id(&[1; 32], "alice"), user_id(&[1; 32], "alice"));
        assert_ne!(user_id(&[1; 32], "alice"), user_id(&[2; 32], "alice"));
        assert_ne!(user_id(&[1; 32], "alice"), user_id(&[1; 32], "bob"));
    }
}
