//! The one configuration file (`/etc/estafette/estafette.toml`), typed with
//! serde and validated before anything starts.
//!
//! Every error names the file, the key and what is wrong, so an operator can
//! fix it without reading code. This module only reads and checks; it must
//! not start anything, open sockets or touch the data directories.

use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// A configuration problem, always tied to the file and the key it is about.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: cannot read: {source}")]
    Read {
        file: PathBuf,
        source: std::io::Error,
    },
    #[error("{file}: {message}")]
    Syntax { file: PathBuf, message: String },
    #[error("{file}: key `{key}`: {reason}")]
    Invalid {
        file: PathBuf,
        key: String,
        reason: String,
    },
}

/// The whole configuration of one node.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub node: NodeConfig,
    pub rpc: RpcConfig,
    pub cluster: ClusterConfig,
    #[serde(default)]
    pub listen: ListenConfig,
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    #[serde(default)]
    pub users: UsersConfig,
    #[serde(default)]
    pub lmtp: LmtpConfig,
    #[serde(default)]
    pub imap: ImapConfig,
    /// Where this file was read from, for error messages; not part of the TOML.
    #[serde(skip)]
    pub source: PathBuf,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// This node's name; must appear in `cluster.nodes`.
    pub name: String,
    /// The region (Garage zone) this node lives in.
    pub region: String,
    /// Where message bodies (Garage data blocks) are stored.
    pub data_dir: PathBuf,
    /// Where the metadata database, node state and admin socket live.
    pub metadata_dir: PathBuf,
    /// fsync metadata and data writes (slower, survives power loss).
    #[serde(default = "yes")]
    pub fsync: bool,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RpcConfig {
    /// Address the node-to-node RPC listener binds.
    pub bind: SocketAddr,
    /// Address other nodes use to reach this one (defaults to `bind`).
    #[serde(default)]
    pub public_addr: Option<SocketAddr>,
    /// The cluster secret, 32 bytes in hex. Prefer `secret_file`.
    #[serde(default)]
    pub secret: Option<String>,
    /// A file holding the cluster secret (hex), readable only by us.
    #[serde(default)]
    pub secret_file: Option<PathBuf>,
    /// Dial peers from `bind`'s IP address instead of the one the kernel
    /// picks (Garage's `rpc_bind_outgoing`): for hosts with several
    /// addresses, and for `estafette dev`'s WAN emulator, which tells links
    /// apart by their source address.
    #[serde(default)]
    pub bind_outgoing: bool,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// Copies of every item and block; 3 for three regions, 1 for dev.
    #[serde(default = "three")]
    pub replication_factor: usize,
    /// Peers to contact at start: node names from `nodes`, or `id@host:port`.
    /// Defaults to every other node of `nodes`.
    #[serde(default)]
    pub bootstrap_peers: Vec<String>,
    /// The layout this cluster should have.
    pub nodes: Vec<LayoutNode>,
}

/// One node of the wanted cluster layout.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct LayoutNode {
    pub name: String,
    pub region: String,
    /// Storage capacity, e.g. "100G" or "1TiB".
    pub capacity: String,
    /// The node's public RPC address.
    pub rpc_addr: SocketAddr,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ListenConfig {
    pub imap: Option<SocketAddr>,
    pub imaps: Option<SocketAddr>,
    pub lmtp: Option<SocketAddr>,
    pub metrics: Option<SocketAddr>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UsersConfig {
    /// An old-style users file (TOML) to import into the replicated
    /// directory once (its salt kept, so user ids and mail stay); after
    /// that it is no longer read. (`file` was its name when it was the
    /// directory itself.)
    #[serde(default, alias = "file", skip_serializing_if = "Option::is_none")]
    pub import_file: Option<PathBuf>,
    /// Users created at start if missing (never overwriting a password).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub declare: Vec<DeclaredUserConfig>,
}

/// One declared user (`[[users.declare]]`).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct DeclaredUserConfig {
    pub login: String,
    #[serde(default)]
    pub addresses: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub home_region: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota: Option<String>,
    /// A file holding the initial password (first line), e.g. a systemd
    /// credential; read only when the user is created.
    pub initial_password_file: PathBuf,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LmtpConfig {
    /// Largest message accepted (advertised as SIZE), e.g. "50M".
    #[serde(default = "default_max_message")]
    pub max_message_size: String,
    /// Concurrent LMTP connections.
    #[serde(default = "default_lmtp_connections")]
    pub max_connections: usize,
    /// Seconds a connection may stay silent.
    #[serde(default = "default_lmtp_idle")]
    pub idle_timeout_secs: u64,
    /// Host name in greetings and Received lines (default: the node name).
    #[serde(default)]
    pub hostname: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ImapConfig {
    /// Largest message APPEND accepts (advertised as APPENDLIMIT), e.g. "50M".
    #[serde(default = "default_max_message")]
    pub max_message_size: String,
    /// Concurrent IMAP connections (both listeners together).
    #[serde(default = "default_imap_connections")]
    pub max_connections: usize,
    /// Allow LOGIN/AUTHENTICATE on `listen.imap` before STARTTLS. Off by
    /// default; a loopback listener always allows it.
    #[serde(default)]
    pub allow_plaintext_auth: bool,
}

impl Default for ImapConfig {
    fn default() -> Self {
        ImapConfig {
            max_message_size: default_max_message(),
            max_connections: default_imap_connections(),
            allow_plaintext_auth: false,
        }
    }
}

fn default_imap_connections() -> usize {
    5000
}

impl Default for LmtpConfig {
    fn default() -> Self {
        LmtpConfig {
            max_message_size: default_max_message(),
            max_connections: default_lmtp_connections(),
            idle_timeout_secs: default_lmtp_idle(),
            hostname: None,
        }
    }
}

fn default_max_message() -> String {
    "50MiB".into()
}
fn default_lmtp_connections() -> usize {
    200
}
fn default_lmtp_idle() -> u64 {
    300
}

fn yes() -> bool {
    true
}
fn three() -> usize {
    3
}

impl LayoutNode {
    /// Capacity in bytes (validated at load, so this cannot fail afterwards).
    pub fn capacity_bytes(&self) -> u64 {
        parse_capacity(&self.capacity).unwrap_or(0)
    }
}

/// Parses "100G", "1TiB", "500000000" into bytes.
pub fn parse_capacity(s: &str) -> Result<u64, String> {
    s.trim()
        .parse::<bytesize::ByteSize>()
        .map(|b| b.as_u64())
        .map_err(|e| format!("`{s}` is not a size like \"100G\" or \"1TiB\": {e}"))
}

impl Config {
    /// Reads, parses and validates a configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            file: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses and validates configuration text; `path` is only used in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let mut config: Config = toml::from_str(text).map_err(|e| ConfigError::Syntax {
            file: path.to_owned(),
            message: e.to_string().trim_end().replace('\n', "\n    "),
        })?;
        config.source = path.to_owned();
        config.validate()?;
        Ok(config)
    }

    /// An error about `key` of this configuration file.
    pub fn invalid(&self, key: &str, reason: impl fmt::Display) -> ConfigError {
        ConfigError::Invalid {
            file: self.source.clone(),
            key: key.to_string(),
            reason: reason.to_string(),
        }
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.node.name.is_empty() {
            return Err(self.invalid("node.name", "must not be empty"));
        }
        if self.node.region.is_empty() {
            return Err(self.invalid("node.region", "must not be empty"));
        }
        for (key, dir) in [
            ("node.data_dir", &self.node.data_dir),
            ("node.metadata_dir", &self.node.metadata_dir),
        ] {
            if !dir.is_absolute() {
                return Err(self.invalid(key, format!("`{}` must be an absolute path", dir.display())));
            }
        }
        match (&self.rpc.secret, &self.rpc.secret_file) {
            (None, None) => {
                return Err(self.invalid("rpc.secret_file", "one of rpc.secret or rpc.secret_file is required"))
            }
            (Some(_), Some(_)) => {
                return Err(self.invalid("rpc.secret", "give rpc.secret or rpc.secret_file, not both"))
            }
            (Some(s), None) => {
                check_secret(s).map_err(|r| self.invalid("rpc.secret", r))?;
            }
            (None, Some(_)) => {}
        }
        let rf = self.cluster.replication_factor;
        if !(1..=7).contains(&rf) {
            return Err(self.invalid("cluster.replication_factor", format!("{rf} is not between 1 and 7")));
        }
        if self.cluster.nodes.is_empty() {
            return Err(self.invalid("cluster.nodes", "the layout needs at least this node"));
        }
        let mut names = HashSet::new();
        let mut addrs = HashSet::new();
        let mut regions = HashSet::new();
        for (i, n) in self.cluster.nodes.iter().enumerate() {
            let key = |field: &str| format!("cluster.nodes[{i}].{field}");
            if n.name.is_empty() {
                return Err(self.invalid(&key("name"), "must not be empty"));
            }
            if !names.insert(n.name.as_str()) {
                return Err(self.invalid(&key("name"), format!("node `{}` is listed twice", n.name)));
            }
            if !addrs.insert(n.rpc_addr) {
                return Err(self.invalid(&key("rpc_addr"), format!("{} is used by two nodes", n.rpc_addr)));
            }
            if n.region.is_empty() {
                return Err(self.invalid(&key("region"), "must not be empty"));
            }
            match parse_capacity(&n.capacity) {
                Ok(0) => return Err(self.invalid(&key("capacity"), "must be more than 0")),
                Ok(_) => {}
                Err(r) => return Err(self.invalid(&key("capacity"), r)),
            }
            regions.insert(n.region.as_str());
        }
        let me = self
            .cluster
            .nodes
            .iter()
            .find(|n| n.name == self.node.name)
            .ok_or_else(|| {
                self.invalid(
                    "cluster.nodes",
                    format!("this node (`{}`, from node.name) is not in the layout", self.node.name),
                )
            })?;
        if me.region != self.node.region {
            return Err(self.invalid(
                "node.region",
                format!("`{}` differs from the layout's region `{}` for this node", self.node.region, me.region),
            ));
        }
        if me.rpc_addr != self.rpc_public_addr() {
            return Err(self.invalid(
                "rpc.public_addr",
                format!(
                    "{} differs from the layout's rpc_addr {} for this node",
                    self.rpc_public_addr(),
                    me.rpc_addr
                ),
            ));
        }
        if rf > self.cluster.nodes.len() {
            return Err(self.invalid(
                "cluster.replication_factor",
                format!("{rf} copies need at least {rf} nodes, the layout has {}", self.cluster.nodes.len()),
            ));
        }
        for (i, p) in self.cluster.bootstrap_peers.iter().enumerate() {
            if !names.contains(p.as_str()) && parse_id_at_addr(p).is_none() {
                return Err(self.invalid(
                    &format!("cluster.bootstrap_peers[{i}]"),
                    format!("`{p}` is neither a node name from cluster.nodes nor `<64 hex id>@host:port`"),
                ));
            }
        }
        let mut seen = HashSet::new();
        for (key, addr) in [
            ("listen.imap", self.listen.imap),
            ("listen.imaps", self.listen.imaps),
            ("listen.lmtp", self.listen.lmtp),
            ("listen.metrics", self.listen.metrics),
            ("rpc.bind", Some(self.rpc.bind)),
        ] {
            if let Some(a) = addr {
                if !seen.insert(a) {
                    return Err(self.invalid(key, format!("{a} is already used by another listener")));
                }
            }
        }
        match parse_capacity(&self.lmtp.max_message_size) {
            Ok(0) | Err(_) => {
                return Err(self.invalid("lmtp.max_message_size", format!("`{}` is not a size like \"50M\"", self.lmtp.max_message_size)))
            }
            Ok(_) => {}
        }
        if self.lmtp.max_connections == 0 {
            return Err(self.invalid("lmtp.max_connections", "must be at least 1"));
        }
        match parse_capacity(&self.imap.max_message_size) {
            Ok(n) if n > 0 && n < u64::from(u32::MAX) => {}
            _ => {
                return Err(self.invalid(
                    "imap.max_message_size",
                    format!("`{}` is not a size like \"50M\" below 4G", self.imap.max_message_size),
                ))
            }
        }
        if self.imap.max_connections == 0 {
            return Err(self.invalid("imap.max_connections", "must be at least 1"));
        }
        let mut declared = HashSet::new();
        for (i, d) in self.users.declare.iter().enumerate() {
            let key = |field: &str| format!("users.declare[{i}].{field}");
            // Login and address syntax are the accounts layer's rules,
            // checked when the server starts (`server::declared_users`).
            if !declared.insert(d.login.as_str()) {
                return Err(self.invalid(&key("login"), format!("`{}` is declared twice", d.login)));
            }
            if let Some(q) = &d.quota {
                parse_capacity(q).map_err(|r| self.invalid(&key("quota"), r))?;
            }
            if !d.initial_password_file.is_absolute() {
                return Err(self.invalid(
                    &key("initial_password_file"),
                    format!("`{}` must be an absolute path", d.initial_password_file.display()),
                ));
            }
        }
        if self.listen.imaps.is_some() && self.tls.is_none() {
            return Err(self.invalid("tls", "listen.imaps needs [tls] cert and key"));
        }
        Ok(())
    }

    /// The address other nodes reach us at.
    pub fn rpc_public_addr(&self) -> SocketAddr {
        self.rpc.public_addr.unwrap_or(self.rpc.bind)
    }

    /// The RPC secret, read from the file if needed and checked.
    pub fn rpc_secret(&self) -> Result<String, ConfigError> {
        match (&self.rpc.secret, &self.rpc.secret_file) {
            (Some(s), _) => Ok(s.trim().to_string()),
            (None, Some(f)) => {
                let s = std::fs::read_to_string(f).map_err(|e| {
                    self.invalid("rpc.secret_file", format!("cannot read `{}`: {e}", f.display()))
                })?;
                let s = s.trim().to_string();
                check_secret(&s).map_err(|r| self.invalid("rpc.secret_file", format!("`{}`: {r}", f.display())))?;
                Ok(s)
            }
            (None, None) => Err(self.invalid("rpc.secret_file", "missing")),
        }
    }

    /// Our own entry in the layout (checked to exist at load).
    pub fn this_node(&self) -> &LayoutNode {
        self.cluster
            .nodes
            .iter()
            .find(|n| n.name == self.node.name)
            .unwrap_or(&self.cluster.nodes[0])
    }

    /// The admin socket the CLI uses to talk to this node.
    pub fn admin_socket(&self) -> PathBuf {
        self.node.metadata_dir.join("admin.sock")
    }

    /// Renders the configuration back to TOML (used by `estafette dev`).
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_default()
    }
}

fn check_secret(s: &str) -> Result<(), String> {
    let s = s.trim();
    match hex::decode(s) {
        Ok(b) if b.len() == 32 => Ok(()),
        Ok(b) => Err(format!("must be 32 bytes (64 hex digits), got {} bytes", b.len())),
        Err(_) => Err("must be 64 hex digits (e.g. from `openssl rand -hex 32`)".into()),
    }
}

/// Parses `<64 hex>@host:port`.
pub fn parse_id_at_addr(s: &str) -> Option<([u8; 32], String)> {
    let (id, addr) = s.split_once('@')?;
    let bytes = hex::decode(id).ok()?;
    let id: [u8; 32] = bytes.try_into().ok()?;
    if addr.rsplit_once(':').and_then(|(_, p)| p.parse::<u16>().ok()).is_none() {
        return None;
    }
    Some((id, addr.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[node]
name = "n1"
region = "region-1"
data_dir = "/var/lib/estafette/data"
metadata_dir = "/var/lib/estafette/meta"

[rpc]
bind = "127.0.0.1:3901"
secret = "0000000000000000000000000000000000000000000000000000000000000000"

[cluster]
replication_factor = 1
nodes = [ { name = "n1", region = "region-1", capacity = "1G", rpc_addr = "127.0.0.1:3901" } ]

[listen]
imap = "127.0.0.1:1143"
lmtp = "127.0.0.1:1025"

[users]
import_file = "/etc/estafette/users.toml"

[[users.declare]]
login = "alice"
addresses = ["alice@example.test"]
initial_password_file = "/run/credentials/estafette.service/user-alice"
"#;

    fn err(text: &str) -> String {
        Config::parse(text, Path::new("/etc/estafette/estafette.toml"))
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn good_config_loads() {
        let c = Config::parse(GOOD, Path::new("x.toml")).unwrap();
        assert_eq!(c.this_node().capacity_bytes(), 1_000_000_000);
        assert_eq!(c.rpc_public_addr(), "127.0.0.1:3901".parse().unwrap());
        // what we render parses back to the same thing
        let again = Config::parse(&c.to_toml(), Path::new("y.toml")).unwrap();
        assert_eq!(again.cluster.nodes, c.cluster.nodes);
    }

    #[test]
    fn unknown_key_names_file_and_key() {
        let e = err(&GOOD.replace("[listen]", "[listen]\nimapz = \"1.2.3.4:5\""));
        assert!(e.contains("/etc/estafette/estafette.toml"), "{e}");
        assert!(e.contains("imapz"), "{e}");
    }

    #[test]
    fn bad_values_name_their_key() {
        let cases = [
            (GOOD.replace("\"1G\"", "\"lots\""), "cluster.nodes[0].capacity"),
            (GOOD.replace("secret = \"00", "secret = \"zz"), "rpc.secret"),
            (GOOD.replace("replication_factor = 1", "replication_factor = 3"), "cluster.replication_factor"),
            (GOOD.replace("name = \"n1\"\nregion", "name = \"n2\"\nregion"), "cluster.nodes"),
            (GOOD.replace("\"/var/lib/estafette/data\"", "\"data\""), "node.data_dir"),
            (GOOD.replace("lmtp = \"127.0.0.1:1025\"", "lmtp = \"127.0.0.1:1143\""), "listen.lmtp"),
            (GOOD.replace("[listen]", "[listen]\nimaps = \"127.0.0.1:1993\""), "tls"),
            (GOOD.replace("bind = \"127.0.0.1:3901\"", "bind = \"127.0.0.1:3902\""), "rpc.public_addr"),
            (GOOD.replace("[\"alice@example.test\"]", "[\"a@b\"]\nquota = \"lots\""), "users.declare[0].quota"),
            (GOOD.replace("\"/run/credentials/estafette.service/user-alice\"", "\"pw\""), "users.declare[0].initial_password_file"),
            (format!("{GOOD}\n[lmtp]\nmax_message_size = \"huge\"\n"), "lmtp.max_message_size"),
        ];
        for (text, key) in cases {
            let e = err(&text);
            assert!(e.contains(&format!("key `{key}`")), "expected key {key} in: {e}");
            assert!(e.starts_with("/etc/estafette/estafette.toml"), "{e}");
        }
    }

    #[test]
    fn syntax_error_points_at_line() {
        let e = err("[node\nname=1");
        assert!(e.contains("line 1"), "{e}");
    }

    #[test]
    fn id_at_addr() {
        let id = "ab".repeat(32);
        assert!(parse_id_at_addr(&format!("{id}@10.0.0.1:3901")).is_some());
        assert!(parse_id_at_addr("abc@10.0.0.1:3901").is_none());
        assert!(parse_id_at_addr(&format!("{id}@10.0.0.1")).is_none());
    }
}
