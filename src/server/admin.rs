//! The admin socket: how the CLI (`estafette cluster ...`) talks to a
//! running node. A Unix socket in the node's metadata directory, one JSON
//! request per line, one JSON answer per line. Access is the socket file's
//! permissions (owner only), like the rest of the node's state.
//!
//! It must not expose anything a local administrator could not already read
//! from the data directory.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use crate::mail::MailService;
use crate::accounts::{Accounts, AccountsError};
use crate::storage::{ClusterStatus, Node, UserId};

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    Status,
    LayoutApply,
    /// Store probes: raw reads and writes through this node, for checking
    /// replication by hand and in tests. Values are hex; `user` is a hex
    /// user id (these are the opaque ids storage sees, not logins).
    ItemPut { user: String, partition: String, sort_key: String, value: String },
    ItemGet { user: String, partition: String, sort_key: String },
    BlobPut { user: String, key: String, value: String },
    BlobGet { user: String, key: String },
    /// User administration (the password travels over this owner-only socket).
    UserAdd { login: String, password: String, addresses: Vec<String>, home_region: Option<String> },
    UserPasswd { login: String, current: String, new: String, rotate: bool },
    UserDelete { login: String },
    /// Sets (or, with None, removes) a user's storage quota.
    UserQuota { login: String, quota: Option<String> },
    UserList,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Response {
    Status(ClusterStatus),
    LayoutApplied { version: Option<u64> },
    Done,
    /// Live sibling values (hex); None if the item does not exist.
    Item { values: Option<Vec<String>> },
    Blob { value: Option<String> },
    Users { users: Vec<UserInfo> },
    Error { message: String },
}

/// What `user list` shows (no password hashes).
#[derive(Debug, Serialize, Deserialize)]
pub struct UserInfo {
    pub login: String,
    pub addresses: Vec<String>,
    pub home_region: Option<String>,
    #[serde(default)]
    pub quota: Option<String>,
    /// Bytes stored (what the quota counts).
    #[serde(default)]
    pub used: Option<u64>,
}

/// Errors of the CLI side.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("no running node answers on {path}: {source} (is `estafette server` or `estafette dev` running?)")]
    Connect { path: PathBuf, source: std::io::Error },
    #[error("talking to the node on {path}: {message}")]
    Protocol { path: PathBuf, message: String },
    #[error("the node says: {0}")]
    Remote(String),
}

/// Serves admin requests until the task is dropped.
pub async fn serve(
    path: PathBuf,
    node: Arc<Node>,
    accounts: Option<Arc<Accounts>>,
    mail: Arc<MailService>,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    // A socket left by a node that died is in the way; a live one answers.
    if path.exists() {
        if UnixStream::connect(&path).await.is_ok() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                format!("{} is in use by another running node", path.display()),
            ));
        }
        std::fs::remove_file(&path)?;
    }
    let listener = UnixListener::bind(&path)?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let node = node.clone();
            let accounts = accounts.clone();
            let mail = mail.clone();
            tokio::spawn(async move {
                if let Err(e) = handle(stream, &node, accounts.as_deref(), &mail).await {
                    log::debug!("admin connection: {e}");
                }
            });
        }
    }))
}

async fn handle(stream: UnixStream, node: &Node, accounts: Option<&Accounts>, mail: &MailService) -> std::io::Result<()> {
    let (r, mut w) = stream.into_split();
    let mut lines = BufReader::new(r).lines();
    while let Some(line) = lines.next_line().await? {
        let resp = match serde_json::from_str::<Request>(&line) {
            Err(e) => Response::Error { message: format!("bad request: {e}") },
            Ok(Request::Status) => Response::Status(node.status().await),
            Ok(Request::LayoutApply) => match node.apply_configured_layout().await {
                Ok(version) => Response::LayoutApplied { version },
                Err(e) => Response::Error { message: e.to_string() },
            },
            Ok(
                req @ (Request::UserAdd { .. }
                | Request::UserPasswd { .. }
                | Request::UserDelete { .. }
                | Request::UserQuota { .. }
                | Request::UserList),
            ) => match accounts {
                Some(a) => user_admin(a, mail, req).await.unwrap_or_else(|e| Response::Error { message: e.to_string() }),
                None => Response::Error {
                    message: "this node has no users file ([users] file in its configuration)".into(),
                },
            },
            Ok(probe) => store_probe(node, probe).await.unwrap_or_else(|message| Response::Error { message }),
        };
        let mut out = serde_json::to_vec(&resp).unwrap_or_default();
        out.push(b'\n');
        w.write_all(&out).await?;
    }
    Ok(())
}

async fn user_admin(accounts: &Accounts, mail: &MailService, req: Request) -> Result<Response, AccountsError> {
    match req {
        Request::UserAdd { login, password, addresses, home_region } => {
            accounts.add_user(&login, &password, &addresses, home_region).await?;
            Ok(Response::Done)
        }
        Request::UserPasswd { login, current, new, rotate } => {
            accounts.change_password(&login, &current, &new, rotate).await?;
            Ok(Response::Done)
        }
        Request::UserDelete { login } => {
            accounts.delete_user(&login).await?;
            Ok(Response::Done)
        }
        Request::UserQuota { login, quota } => {
            accounts.set_quota(&login, quota).await?;
            Ok(Response::Done)
        }
        Request::UserList => {
            let mut users = vec![];
            for u in accounts.directory().users() {
                let id = accounts.directory().user_id(&u.login);
                let used = mail.usage.current(&id).await.ok();
                users.push(UserInfo { login: u.login, addresses: u.addresses, home_region: u.home_region, quota: u.quota, used });
            }
            Ok(Response::Users { users })
        }
        _ => Err(AccountsError::Invalid("not a user request".into())),
    }
}

async fn store_probe(node: &Node, req: Request) -> Result<Response, String> {
    let store = node.store();
    let user = |h: &str| -> Result<UserId, String> {
        let b: [u8; 32] = hex::decode(h)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| format!("user `{h}` is not 64 hex digits"))?;
        Ok(UserId(b))
    };
    let unhex = |h: &str| hex::decode(h).map_err(|e| format!("value is not hex: {e}"));
    let e = |e: crate::storage::StorageError| e.to_string();
    match req {
        Request::ItemPut { user: u, partition, sort_key, value } => {
            let u = user(&u)?;
            let token = store.get(&u, &partition, &sort_key).await.map_err(e)?.map(|i| i.token);
            store.insert(&u, &partition, &sort_key, unhex(&value)?, token.as_ref()).await.map_err(e)?;
            Ok(Response::Done)
        }
        Request::ItemGet { user: u, partition, sort_key } => {
            let item = store.get(&user(&u)?, &partition, &sort_key).await.map_err(e)?;
            Ok(Response::Item { values: item.map(|i| i.values.iter().map(hex::encode).collect()) })
        }
        Request::BlobPut { user: u, key, value } => {
            store.put_blob_bytes(&user(&u)?, &key, unhex(&value)?.into()).await.map_err(e)?;
            Ok(Response::Done)
        }
        Request::BlobGet { user: u, key } => {
            let blob = store.get_blob_bytes(&user(&u)?, &key).await.map_err(e)?;
            Ok(Response::Blob { value: blob.map(hex::encode) })
        }
        _ => Err("not a store probe".into()),
    }
}

/// Sends one request to the node behind `path` and returns its answer.
pub async fn call(path: &Path, req: &Request) -> Result<Response, AdminError> {
    let proto = |message: String| AdminError::Protocol { path: path.to_owned(), message };
    let stream = UnixStream::connect(path).await.map_err(|source| AdminError::Connect {
        path: path.to_owned(),
        source,
    })?;
    let (r, mut w) = stream.into_split();
    let mut line = serde_json::to_vec(req).map_err(|e| proto(e.to_string()))?;
    line.push(b'\n');
    w.write_all(&line).await.map_err(|e| proto(e.to_string()))?;
    let mut lines = BufReader::new(r).lines();
    let answer = tokio::time::timeout(Duration::from_secs(600), lines.next_line())
        .await
        .map_err(|_| proto("no answer within 10 minutes".into()))?
        .map_err(|e| proto(e.to_string()))?
        .ok_or_else(|| proto("connection closed without an answer".into()))?;
    match serde_json::from_str(&answer).map_err(|e| proto(e.to_string()))? {
        Response::Error { message } => Err(AdminError::Remote(message)),
        other => Ok(other),
    }
}
