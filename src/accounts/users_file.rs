//! The users file (TOML): the installation salt and, per user, login,
//! Argon2id password hash, addresses, home region and quota.
//!
//! ```toml
//! salt = "<64 hex digits>"   # per installation; makes user ids opaque
//!
//! [[user]]
//! login = "alice"
//! password = "$argon2id$v=19$m=65536,t=3,p=1$..."
//! addresses = ["alice@example.test"]
//! home_region = "region-1"
//! ```
//!
//! The same file must be on every node (the NixOS module or the operator
//! copies it). It is reread on SIGHUP and when its modification time
//! changes, without dropping sessions; a file that fails to parse is
//! logged and the previous contents stay in force. Edits are written to a
//! temporary file and renamed, so readers never see half a file.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use super::directory::{find_by_address, user_id, Directory, User};
use super::AccountsError;
use crate::storage::UserId;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct UsersFileData {
    salt: String,
    #[serde(default, rename = "user")]
    users: Vec<User>,
}

struct Loaded {
    salt: [u8; 32],
    users: Vec<User>,
    mtime: Option<SystemTime>,
}

/// A [`Directory`] backed by the users file.
pub struct UsersFile {
    path: PathBuf,
    state: RwLock<Arc<Loaded>>,
    // Serialises edits made through this process.
    edit: tokio::sync::Mutex<()>,
}

fn parse(path: &Path, text: &str) -> Result<Loaded, AccountsError> {
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
    Ok(Loaded {
        salt,
        users: data.users,
        mtime: None,
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

impl UsersFile {
    /// Opens the users file, creating it (with a fresh salt) if missing.
    pub fn open(path: &Path) -> Result<UsersFile, AccountsError> {
        if !path.exists() {
            let data = UsersFileData {
                salt: hex::encode(rand::random::<[u8; 32]>()),
                users: vec![],
            };
            // Several nodes may share one users file and start at once:
            // only the first creation counts, or each would hold its own
            // salt (and compute other user ids) until the next reload.
            write_atomically(path, &data, false)?;
        }
        let file = UsersFile {
            path: path.to_owned(),
            state: RwLock::new(Arc::new(Loaded {
                salt: [0; 32],
                users: vec![],
                mtime: None,
            })),
            edit: tokio::sync::Mutex::new(()),
        };
        file.reload()?;
        Ok(file)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn current(&self) -> Arc<Loaded> {
        match self.state.read() {
            Ok(s) => s.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Rereads the file. On error the previous contents stay in force.
    pub fn reload(&self) -> Result<(), AccountsError> {
        let io = |e: std::io::Error| AccountsError::UsersFile {
            path: self.path.clone(),
            reason: e.to_string(),
        };
        let mtime = std::fs::metadata(&self.path).and_then(|m| m.modified()).ok();
        let text = std::fs::read_to_string(&self.path).map_err(io)?;
        let mut loaded = parse(&self.path, &text)?;
        loaded.mtime = mtime;
        let n = loaded.users.len();
        if let Ok(mut s) = self.state.write() {
            *s = Arc::new(loaded);
        }
        log::debug!("users file {}: {n} user(s)", self.path.display());
        Ok(())
    }

    /// Rereads the file if its modification time changed.
    pub fn reload_if_changed(&self) {
        let mtime = std::fs::metadata(&self.path).and_then(|m| m.modified()).ok();
        if mtime != self.current().mtime {
            match self.reload() {
                Ok(()) => log::info!("users file {} reloaded", self.path.display()),
                Err(e) => log::error!("{e}; keeping the previous users"),
            }
        }
    }

    /// Polls the modification time every `period` until the task is dropped.
    pub fn spawn_watcher(self: &Arc<Self>, period: Duration) -> tokio::task::JoinHandle<()> {
        let me = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(period).await;
                match me.upgrade() {
                    Some(f) => f.reload_if_changed(),
                    None => return,
                }
            }
        })
    }

    /// Applies `change` to the file's contents and writes it back.
    pub async fn edit<T>(
        &self,
        change: impl FnOnce(&mut Vec<User>) -> Result<T, AccountsError>,
    ) -> Result<T, AccountsError> {
        let _guard = self.edit.lock().await;
        // Start from what is on disk, in case someone edited it by hand.
        self.reload()?;
        let cur = self.current();
        let mut users = cur.users.clone();
        let out = change(&mut users)?;
        write_atomically(
            &self.path,
            &UsersFileData {
                salt: hex::encode(cur.salt),
                users,
            },
            true,
        )?;
        self.reload()?;
        Ok(out)
    }
}

/// Writes the file whole (temporary file, then rename). With `replace`
/// false, an existing file is kept (the creation of another process won).
fn write_atomically(path: &Path, data: &UsersFileData, replace: bool) -> Result<(), AccountsError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let err = |e: std::io::Error| AccountsError::UsersFile {
        path: path.to_owned(),
        reason: e.to_string(),
    };
    let text = toml::to_string_pretty(data).map_err(|e| AccountsError::UsersFile {
        path: path.to_owned(),
        reason: e.to_string(),
    })?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    let tmp = path.with_extension(format!("tmp{}-{:08x}", std::process::id(), rand::random::<u32>()));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(err)?;
    f.write_all(b"# Estafette users: edit with `estafette user ...` (hand edits are reloaded too).\n")
        .and_then(|_| f.write_all(text.as_bytes()))
        .and_then(|_| f.sync_all())
        .map_err(err)?;
    if replace {
        return std::fs::rename(&tmp, path).map_err(err);
    }
    let linked = std::fs::hard_link(&tmp, path);
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => Err(err(e)),
        _ => Ok(()),
    }
}

impl Directory for UsersFile {
    fn user(&self, login: &str) -> Option<User> {
        self.current().users.iter().find(|u| u.login == login).cloned()
    }

    fn by_address(&self, address: &str) -> Option<User> {
        let cur = self.current();
        find_by_address(cur.users.iter(), address).cloned()
    }

    fn users(&self) -> Vec<User> {
        self.current().users.clone()
    }

    fn user_id(&self, login: &str) -> UserId {
        user_id(&self.current().salt, login)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alice() -> User {
        User {
            login: "alice".into(),
            password: "$argon2id$v=19$m=256,t=1,p=1$c2FsdHNhbHQ$aGFzaA".into(),
            addresses: vec!["alice@example.test".into()],
            home_region: Some("region-1".into()),
            quota: None,
        }
    }

    #[tokio::test]
    async fn create_edit_reload() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users.toml");
        let f = UsersFile::open(&path).unwrap();
        assert!(f.users().is_empty());
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "password hashes are readable by the owner only");
        let id_before = f.user_id("alice");
        f.edit(|u| {
            u.push(alice());
            Ok(())
        })
        .await
        .unwrap();
        assert_eq!(f.user("alice").unwrap().addresses, vec!["alice@example.test"]);
        assert_eq!(f.by_address("alice+x@EXAMPLE.test").unwrap().login, "alice");
        assert_eq!(f.user_id("alice"), id_before, "the salt survives edits");

        // Another process (or a human) edits the file: picked up on reload.
        let reopened = UsersFile::open(&path).unwrap();
        assert_eq!(reopened.user_id("alice"), id_before);
        let text = std::fs::read_to_string(&path).unwrap().replace("alice@example.test", "alice@other.test");
        std::fs::write(&path, text).unwrap();
        f.reload().unwrap();
        assert!(f.by_address("alice@example.test").is_none());
        assert!(f.by_address("alice@other.test").is_some());

        // A broken file is refused and the previous users stay.
        std::fs::write(&path, "salt = \"zz\"").unwrap();
        let e = f.reload().unwrap_err().to_string();
        assert!(e.contains("users.toml") && e.contains("salt"), "{e}");
        assert!(f.user("alice").is_some());
    }

    #[test]
    fn concurrent_creation_yields_one_salt() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("users.toml");
        let files: Vec<UsersFile> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..8).map(|_| s.spawn(|| UsersFile::open(&path).unwrap())).collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let ids: std::collections::HashSet<_> = files.iter().map(|f| f.user_id("alice")).collect();
        assert_eq!(ids.len(), 1, "every opener sees the same salt");
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
