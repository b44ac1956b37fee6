//! Old-style users files (TOML), read once to import them into the
//! replicated directory (`cluster.rs`): the installation salt that made
//! every user id, and per user login, Argon2id password hash, addresses,
//! home region and quota.
//!
//! ```toml
//! salt = "<64 hex digits>"
//!
//! [[user]]
//! login = "alice"
//! password = "$argon2id$v=19$m=65536,t=3,p=1$..."
//! addresses = ["alice@example.test"]
//! home_region = "region-1"
//! ```
//!
//! Imported users keep the id the salt gave them, so their mail stays
//! theirs. This module only reads; after the import the file is no longer
//! the source of truth and nothing writes it.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::directory::user_id;
use super::AccountsError;
use crate::storage::UserId;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct UsersFileData {
    salt: String,
    #[serde(default, rename = "user")]
    users: Vec<FileUser>,
}

/// One user as an old-style users file holds them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileUser {
    pub login: String,
    /// Argon2id PHC string.
    pub password: String,
    #[serde(default)]
    pub addresses: Vec<String>,
    #[serde(default)]
    pub home_region: Option<String>,
    #[serde(default)]
    pub quota: Option<String>,
}

/// A parsed, validated users file.
#[derive(Debug, Clone)]
pub struct UsersFile {
    pub path: PathBuf,
    pub salt: [u8; 32],
    pub users: Vec<FileUser>,
}

impl UsersFile {
    /// Reads and validates the file; errors name the file and the key.
    pub fn read(path: &Path) -> Result<UsersFile, AccountsError> {
        let text = std::fs::read_to_string(path).map_err(|e| AccountsError::UsersFile {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
        parse(path, &text)
    }

    /// The storage id the file's salt gives `login`.
    pub fn user_id(&self, login: &str) -> UserId {
        user_id(&self.salt, login)
    }
}

fn parse(path: &Path, text: &str) -> Result<UsersFile, AccountsError> {
    let bad = |reason: String| AccountsError::UsersFile {
        path: path.to_owned(),
        reason,
    };
    let data: UsersFileData = toml::from_str(text).map_err(|e| bad(e.to_string().trim_end().to_string()))?;
    let salt: [u8; 32] = hex::decode(data.salt.trim())
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| bad("key `salt`: must be 64 hex digits".into()))?;
    let mut seen = std::collections::HashSet::new();
    for (i, u) in data.users.iter().enumerate() {
        validate_login(&u.login).map_err(|r| bad(format!("key `user[{i}].login`: {r}")))?;
        if !seen.insert(u.login.as_str()) {
            return Err(bad(format!("key `user[{i}].login`: `{}` appears twice", u.login)));
        }
        if !u.password.starts_with("$argon2") {
            return Err(bad(format!("key `user[{i}].password`: not an Argon2 PHC string")));
        }
        if let Some(q) = &u.quota {
            crate::config::parse_capacity(q).map_err(|r| bad(format!("key `user[{i}].quota`: {r}")))?;
        }
        for (j, a) in u.addresses.iter().enumerate() {
            if super::directory::normalize_address(a).is_none() {
                return Err(bad(format!("key `user[{i}].addresses[{j}]`: `{a}` is not local@domain")));
            }
        }
    }
    Ok(UsersFile {
        path: path.to_owned(),
        salt,
        users: data.users,
    })
}

/// Logins are used in IMAP (atoms or quoted strings) and in file names of
/// tools; keep them simple.
pub fn validate_login(login: &str) -> Result<(), String> {
    if login.is_empty() || login.len() > 64 {
        return Err("must be 1 to 64 characters".into());
    }
    if !login.chars().all(|c| c.is_ascii_alphanumeric() || "._-@+".contains(c)) {
        return Err(format!("`{login}` may only contain letters, digits and . _ - @ +"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_salt_and_users() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("users.toml");
        let salt = "11".repeat(32);
        std::fs::write(
            &path,
            format!("salt = \"{salt}\"\n[[user]]\nlogin = \"alice\"\npassword = \"$argon2id$x\"\naddresses = [\"alice@example.test\"]\nquota = \"1G\"\n"),
        )
        .unwrap();
        let f = UsersFile::read(&path).unwrap();
        assert_eq!(f.users.len(), 1);
        assert_eq!(f.users[0].quota.as_deref(), Some("1G"));
        assert_eq!(f.user_id("alice"), user_id(&[0x11; 32], "alice"), "ids follow the file's salt");
        let e = UsersFile::read(&d.path().join("missing.toml")).unwrap_err().to_string();
        assert!(e.contains("missing.toml"), "{e}");
    }

    #[test]
    fn bad_entries_name_their_key() {
        let p = Path::new("/etc/estafette/users.toml");
        let salt = "00".repeat(32);
        let e = parse(p, &format!("salt = \"{salt}\"\n[[user]]\nlogin = \"a b\"\npassword = \"$argon2id$x\"\n")).err().unwrap();
        assert!(e.to_string().contains("user[0].login"), "{e}");
        let e = parse(p, &format!("salt = \"{salt}\"\n[[user]]\nlogin = \"a\"\npassword = \"plain\"\n")).err().unwrap();
        assert!(e.to_string().contains("user[0].password"), "{e}");
        let e = parse(p, &format!("salt = \"{salt}\"\n[[user]]\nlogin = \"a\"\npassword = \"$argon2id$x\"\naddresses = [\"nope\"]\n")).err().unwrap();
        assert!(e.to_string().contains("user[0].addresses[0]"), "{e}");
    }
}
