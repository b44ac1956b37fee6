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

use super::readiness::ReadinessProbe;
use crate::accounts::{Accounts, AccountsError};
use crate::mail::MailService;
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
    /// With `cached`, this node's copy of the directory as it is, without
    /// asking the cluster (to see whether a change has reached it).
    UserList {
        #[serde(default)]
        cached: bool,
    },
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
    Users {
        users: Vec<UserInfo>,
        /// Conflicts the directory resolved by its rules, and unfinished
        /// deletions: things an operator should look at.
        #[serde(default)]
        notes: Vec<String>,
    },
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
    accounts: Arc<Accounts>,
    probe: Arc<ReadinessProbe>,
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
            let probe = probe.clone();
            let mail = mail.clone();
            tokio::spawn(async move {
                if let Err(e) = handle(stream, &node, &accounts, &probe, &mail).await {
                    log::debug!("admin connection: {e}");
                }
            });
        }
    }))
}

async fn handle(
    stream: UnixStream,
    node: &Node,
    accounts: &Accounts,
    probe: &ReadinessProbe,
    mail: &MailService,
) -> std::io::Result<()> {
    let (r, mut w) = stream.into_split();
    let mut lines = BufReader::new(r).lines();
    while let Some(line) = lines.next_line().await? {
        let resp = match serde_json::from_str::<Request>(&line) {
            Err(e) => Response::Error { message: format!("bad request: {e}") },
            Ok(Request::Status) => Response::Status(status(node, accounts, probe).await),
            Ok(Request::LayoutApply) => match node.apply_configured_layout().await {
                Ok(version) => Response::LayoutApplied { version },
                Err(e) => Response::Error { message: e.to_string() },
            },
            Ok(
                req @ (Request::UserAdd { .. }
                | Request::UserPasswd { .. }
                | Request::UserDelete { .. }
                | Request::UserQuota { .. }
                | Request::UserList { .. }),
            ) => user_admin(accounts, mail, req).await.unwrap_or_else(|e| Response::Error { message: e.to_string() }),
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
        Request::UserList { cached } => {
            let dir = accounts.cluster_directory();
            if !cached {
                if !accounts.is_ready() {
                    return Err(crate::accounts::DirectoryError::NotReady.into());
                }
                // What a quorum holds now, not only what reached this node.
                dir.load().await?;
            }
            let view = dir.view();
            let mut users = vec![];
            for (u, _) in view.users.values() {
                // The cached view is for watching propagation: no reads.
                let used = if cached { None } else { mail.usage.current(&u.id).await.ok() };
                users.push(UserInfo {
                    login: u.login.clone(),
                    addresses: u.addresses.clone(),
                    home_region: u.home_region.clone(),
                    quota: u.quota.clone(),
                    used,
                });
            }
            let mut notes: Vec<String> = view.conflicts.iter().map(|c| c.to_string()).collect();
            notes.extend(view.deleting.iter().map(|l| {
                format!("deletion of `{l}` did not finish (a node stopped mid-way?): run `estafette user delete {l}` again")
            }));
            Ok(Response::Users { users, notes })
        }
        _ => Err(AccountsError::Invalid("not a user request".into())),
    }
}

/// The cluster's status with each node's readiness (asked over the node RPC).
async fn status(node: &Node, accounts: &Accounts, probe: &ReadinessProbe) -> ClusterStatus {
    let mut status = node.status().await;
    let asks = status.nodes.iter().map(|n| {
        let id: Option<[u8; 32]> = hex::decode(&n.id).ok().and_then(|b| b.try_into().ok());
        let (this, up) = (n.this_node, n.up);
        async move {
            match id {
                _ if this => Some(accounts.is_ready()),
                Some(id) if up => probe.ask(id).await,
                _ => None,
            }
        }
    });
    let answers = futures::future::join_all(asks).await;
    for (n, ready) in status.nodes.iter_mut().zip(answers) {
        n.ready = ready;
    }
    status
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
