//! One IMAP session: the state machine of RFC 9051 §3 (not authenticated,
//! authenticated, selected, logout), command dispatch, and the untagged
//! updates that keep the client's view in step with the mailbox (EXISTS,
//! EXPUNGE/VANISHED, FETCH FLAGS) after commands, on NOOP and in IDLE,
//! whichever node made the change.
//!
//! The client's view of a selected mailbox is its own list of UIDs (the
//! sequence-number map) and the MODSEQ up to which it has been told about
//! flag changes; the mailbox engine holds the truth. Expunges are told only
//! when RFC 9051 §7.5.1 allows (not during FETCH, STORE, SEARCH).
//!
//! This file holds the session's state, the reading of commands and the
//! one dispatch; the commands live by RFC area, each file an `impl
//! Session` block: `state.rs` (STARTTLS, LOGIN, ENABLE), `mailboxes.rs`
//! (RFC 9051 §6.3, LIST-EXTENDED, STATUS), `messages.rs` (APPEND, FETCH,
//! STORE, EXPUNGE, COPY/MOVE), `query.rs` (SEARCH, SORT, THREAD), `updates.rs`
//! (untagged updates, IDLE, CONDSTORE enabling), `quota.rs` (RFC 9208).

use std::net::SocketAddr;
use std::sync::Arc;

use base64::Engine;
use imap_codec::decode::Decoder;
use imap_codec::imap_types::IntoStatic;
use imap_codec::imap_types::command::{Command, CommandBody, FetchModifier, SelectParameter, StoreModifier};
use imap_codec::imap_types::core::{AString, Vec1};
use imap_codec::imap_types::extensions::enable::CapabilityEnable;
use imap_codec::imap_types::fetch::{MacroOrMessageDataItemNames, MessageDataItemName};
use imap_codec::imap_types::flag::{Flag, StoreResponse, StoreType};
use imap_codec::imap_types::mailbox::{ListMailbox, Mailbox as ImapMailbox};
use imap_codec::imap_types::search::SearchKey;
use imap_codec::imap_types::sequence::SequenceSet;
use imap_codec::imap_types::status::StatusDataItemName;
use imap_codec::CommandCodec;
use futures::StreamExt;
use tokio::sync::watch;

mod mailboxes;
mod messages;
mod query;
mod quota;
mod state;
mod updates;

use super::sort;
use super::thread;
use super::conn::{Conn, ConnError, Frame};
use super::extended::{preparse, Extras};
use super::fetch::{self, Row};
use super::search::{self, Candidate, Scope};
use super::{render, utf7, Imap};
use crate::accounts::{AccountsError, UserKeys};
use crate::mail::mailboxes::{MailboxInfo, Mailboxes, MailboxesError, SEPARATOR};
use crate::mail::service::EngineMailbox;
use crate::mail::{cleanup, message, FlagMode, MailError, ModSeq, Op, Uid};
use crate::storage::StorageError;

/// How a command ended (the tagged response).
enum Done {
    Ok(String),
    No(String),
    Bad(String),
    /// The tagged response was already written (STARTTLS).
    Silent,
}

impl From<MailError> for Done {
    fn from(e: MailError) -> Self {
        match e {
            MailError::Unavailable(m) | MailError::Contended(m) => Done::No(format!("[UNAVAILABLE] {m}; try again")),
            MailError::Invalid(m) => Done::No(m),
            MailError::Corrupt(m) => Done::No(format!("[SERVERBUG] {m}")),
        }
    }
}

impl From<StorageError> for Done {
    fn from(e: StorageError) -> Self {
        if e.is_transient() {
            Done::No(format!("[UNAVAILABLE] storage: {e}; try again"))
        } else {
            Done::No(format!("[SERVERBUG] storage: {e}"))
        }
    }
}

impl From<MailboxesError> for Done {
    fn from(e: MailboxesError) -> Self {
        match e {
            MailboxesError::Exists(m) => Done::No(format!("[ALREADYEXISTS] mailbox {m} already exists")),
            MailboxesError::NotFound(m) => Done::No(format!("[NONEXISTENT] no mailbox {m}")),
            MailboxesError::Invalid(m) => Done::No(format!("[CANNOT] {m}")),
            MailboxesError::Storage(e) => e.into(),
        }
    }
}

struct User {
    login: String,
    keys: Arc<UserKeys>,
    mailboxes: Mailboxes,
    /// Held for the session's life: while any is, the user counts as
    /// active on this node (LMTP files their mail at once).
    _session: crate::accounts::Session,
}

struct Selected {
    info: MailboxInfo,
    read_only: bool,
    mb: Arc<EngineMailbox>,
    changes: watch::Receiver<crate::mail::service::Changes>,
    /// The `stale` mark of `changes` the view was last brought up to date for.
    seen_stale: u64,
    /// The client's sequence-number map.
    uids: Vec<Uid>,
    /// Flag changes up to this MODSEQ have been told.
    told_modseq: ModSeq,
    /// How many flag names (system flags and keywords) the last FLAGS
    /// response listed: a keyword first used since gets a new FLAGS
    /// response before any FETCH shows it (RFC 9051 §7.3.5).
    flags_told: usize,
    /// Messages that are \Recent in this session (IMAP4rev1 only): the
    /// ones it was first to be told about (`mail::recent`).
    recent: std::collections::BTreeSet<Uid>,
}

/// SEARCH and SORT accept UTF-8 and US-ASCII (RFC 9051 §6.4.4).
fn unsupported_charset(charset: Option<&imap_codec::imap_types::core::Charset<'_>>) -> Option<Done> {
    let c = charset?.as_ref().to_ascii_uppercase();
    (c != "UTF-8" && c != "US-ASCII").then(|| Done::No("[BADCHARSET (UTF-8 US-ASCII)] Unsupported charset".into()))
}

/// A message's flag names as this session shows them: with `\Recent`
/// when it is recent here.
fn shown_flags(recent: &std::collections::BTreeSet<Uid>, uid: Uid, mut names: Vec<String>) -> Vec<String> {
    if recent.contains(&uid) {
        names.push("\\Recent".into());
    }
    names
}

/// The FLAGS and PERMANENTFLAGS responses for a mailbox: the system flags
/// and every keyword used in it (new keywords may be created: `\*`).
fn flags_responses(idx: &crate::mail::index::MailboxIndex, read_only: bool) -> (Vec<u8>, usize) {
    let mut flags: Vec<String> = ["\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft"].iter().map(|s| s.to_string()).collect();
    for k in idx.flag_names(u64::MAX) {
        if !flags.contains(&k) {
            flags.push(k);
        }
    }
    let mut out = format!("* FLAGS ({})\r\n", flags.join(" ")).into_bytes();
    if read_only {
        out.extend_from_slice(b"* OK [PERMANENTFLAGS ()] Read-only mailbox\r\n");
    } else {
        out.extend_from_slice(format!("* OK [PERMANENTFLAGS ({} \\*)] Flags permitted\r\n", flags.join(" ")).as_bytes());
    }
    (out, flags.len())
}

#[derive(Default)]
struct Enabled {
    condstore: bool,
    qresync: bool,
    rev2: bool,
}

/// The longest a mailbox command waits for the filing started at login.
const FILING_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

pub struct Session {
    imap: Arc<Imap>,
    conn: Conn,
    peer: SocketAddr,
    user: Option<User>,
    selected: Option<Selected>,
    enabled: Enabled,
    /// SEARCHRES: the last saved result, as UIDs.
    saved: Vec<Uid>,
    logout: bool,
    /// The filing of mail queued before this login, until it has ended:
    /// SELECT, EXAMINE, STATUS and LIST wait for it, so that what LMTP
    /// acknowledged before the login is in what they show.
    filing: Option<tokio::sync::oneshot::Receiver<()>>,
}

fn astr(a: &AString<'_>) -> String {
    String::from_utf8_lossy(AsRef::<[u8]>::as_ref(a)).to_string()
}

fn flag_name(f: &Flag<'_>) -> String {
    f.to_string()
}

/// `\n` not preceded by `\r` becomes `\r\n`.
fn crlf(raw: Vec<u8>) -> Vec<u8> {
    if !raw.windows(2).any(|w| w[1] == b'\n' && w[0] != b'\r') && raw.first() != Some(&b'\n') {
        return raw;
    }
    let mut out = Vec::with_capacity(raw.len() + raw.len() / 32);
    let mut prev = 0u8;
    for &c in &raw {
        if c == b'\n' && prev != b'\r' {
            out.push(b'\r');
        }
        out.push(c);
        prev = c;
    }
    out
}

/// A set of UIDs as IMAP's compact form (`1:3,7`).
fn uid_set(uids: &[Uid]) -> String {
    let mut sorted = uids.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let mut out: Vec<String> = vec![];
    let mut i = 0;
    while i < sorted.len() {
        let start = sorted[i];
        let mut end = start;
        while i + 1 < sorted.len() && sorted[i + 1] == end + 1 {
            i += 1;
            end = sorted[i];
        }
        out.push(if start == end { start.to_string() } else { format!("{start}:{end}") });
        i += 1;
    }
    out.join(",")
}

/// Matches a LIST pattern (`*` anything, `%` anything but the separator).
/// Dynamic programming over (pattern, name) prefixes: linear in their
/// product, where naive backtracking is exponential in the number of
/// wildcards (a client could stall a worker with `*a*a*a...`).
fn pattern_match(pat: &[char], name: &[char]) -> bool {
    // row[j]: pat[..i] matches name[..j]
    let mut row = vec![false; name.len() + 1];
    row[0] = true;
    for &p in pat {
        let mut next = vec![false; name.len() + 1];
        match p {
            '*' | '%' => {
                next[0] = row[0];
                for j in 1..=name.len() {
                    let can_extend = p == '*' || name[j - 1] != SEPARATOR;
                    next[j] = row[j] || (next[j - 1] && can_extend);
                }
            }
            c => {
                for j in 1..=name.len() {
                    next[j] = row[j - 1] && name[j - 1] == c;
                }
            }
        }
        row = next;
    }
    row[name.len()]
}

impl Session {
    pub fn new(imap: Arc<Imap>, conn: Conn, peer: SocketAddr) -> Self {
        Session {
            imap,
            conn,
            peer,
            user: None,
            selected: None,
            enabled: Enabled::default(),
            saved: vec![],
            logout: false,
            filing: None,
        }
    }

    pub async fn run(mut self) {
        let greeting = format!("* OK [CAPABILITY {}] Estafette ready\r\n", self.capabilities());
        if self.conn.write(greeting.as_bytes()).await.is_err() || self.conn.flush().await.is_err() {
            return;
        }
        loop {
            let timeout = if self.user.is_some() { self.imap.limits.idle_timeout } else { self.imap.limits.login_timeout };
            let frame = match self.conn.next(timeout).await {
                Ok(f) => f,
                Err(ConnError::Timeout) => {
                    let _ = self.conn.write(b"* BYE Autologout; idle for too long\r\n").await;
                    let _ = self.conn.flush().await;
                    return;
                }
                Err(ConnError::LineTooLong) => {
                    let _ = self.conn.write(b"* BYE [TOOBIG] Command line too long\r\n").await;
                    let _ = self.conn.flush().await;
                    return;
                }
                Err(_) => return,
            };
            let result = match frame {
                Frame::Refused { tag, reason } => {
                    let line = match tag {
                        Some(t) => format!("{t} NO {reason}\r\n"),
                        None => format!("* BAD {reason}\r\n"),
                    };
                    self.conn.write(line.as_bytes()).await
                }
                Frame::Message(bytes) => self.message(bytes).await,
            };
            if result.is_err() || self.conn.flush().await.is_err() || self.logout {
                return;
            }
        }
    }

    fn capabilities(&self) -> String {
        self.imap.capabilities(self.conn.tls, self.user.is_some())
    }

    /// Mailbox names as this client writes them (modified UTF-7 unless it
    /// enabled IMAP4rev2).
    fn name_in(&self, m: &ImapMailbox<'_>) -> String {
        match m {
            ImapMailbox::Inbox => "INBOX".into(),
            ImapMailbox::Other(o) => {
                let raw = String::from_utf8_lossy(o.as_ref()).to_string();
                let name = if self.enabled.rev2 { raw.clone() } else { utf7::decode(&raw).unwrap_or(raw) };
                name.trim_end_matches(SEPARATOR).to_string()
            }
        }
    }

    fn name_out(&self, name: &str) -> Vec<u8> {
        let shown = if self.enabled.rev2 { name.to_string() } else { utf7::encode(name) };
        let mut out = vec![];
        render::astring(&mut out, &shown);
        out
    }

    async fn message(&mut self, bytes: Vec<u8>) -> Result<(), ConnError> {
        let saved = if self.saved.is_empty() { "4294967295".to_string() } else { uid_set(&self.saved) };
        let (bytes, extras) = preparse(&bytes, &saved);
        let command = match CommandCodec::default().decode(&bytes) {
            Ok((rest, c)) if rest.is_empty() => c,
            _ => {
                let tag = super::conn::tag_of(&bytes);
                let line = match tag {
                    Some(t) => format!("{t} BAD Syntax error in command\r\n"),
                    None => "* BAD Syntax error: no tag\r\n".into(),
                };
                return self.conn.write(line.as_bytes()).await;
            }
        };
        let tag = command.tag.as_ref().to_string();
        let name = command.body.name().to_string();
        let done = self.dispatch(&tag, command, &extras).await?;
        let line = match done {
            Done::Ok(t) => format!("{tag} OK {t}\r\n"),
            Done::No(t) => format!("{tag} NO {t}\r\n"),
            Done::Bad(t) => format!("{tag} BAD {t}\r\n"),
            Done::Silent => return Ok(()),
        };
        log::debug!("IMAP {} {name}: {}", self.peer, line.trim_end());
        self.conn.write(line.as_bytes()).await
    }

    async fn dispatch(&mut self, tag: &str, command: Command<'_>, extras: &Extras) -> Result<Done, ConnError> {
        let authed = self.user.is_some();
        let selected = self.selected.is_some();
        let body = command.body;
        // Commands valid in any state.
        match &body {
            CommandBody::Capability => {
                let line = format!("* CAPABILITY {}\r\n", self.capabilities());
                self.conn.write(line.as_bytes()).await?;
                return Ok(Done::Ok("CAPABILITY completed".into()));
            }
            CommandBody::Noop | CommandBody::Check => {
                // An explicit check reads storage, not only notifications:
                // whatever any session anywhere finished before is seen.
                if let Some(sel) = &self.selected {
                    if let Err(e) = sel.mb.refresh().await {
                        log::debug!("refresh on NOOP: {e}");
                    }
                }
                self.sync(true, None).await?;
                return Ok(Done::Ok(format!("{} completed", body.name())));
            }
            CommandBody::Logout => {
                self.conn.write(b"* BYE Logging out\r\n").await?;
                self.logout = true;
                return Ok(Done::Ok("LOGOUT completed".into()));
            }
            CommandBody::Id { .. } => {
                self.conn.write(b"* ID (\"name\" \"Estafette\" \"vendor\" \"Estafette\")\r\n").await?;
                return Ok(Done::Ok("ID completed".into()));
            }
            _ => {}
        }
        if !authed {
            return Ok(match body {
                CommandBody::StartTLS => self.starttls(tag).await?,
                CommandBody::Login { username, password } => {
                    let user = astr(&username);
                    let pass = astr(password.declassify());
                    self.login(&user, &pass).await
                }
                CommandBody::Authenticate { mechanism, initial_response } => {
                    if !matches!(mechanism, imap_codec::imap_types::auth::AuthMechanism::Plain) {
                        return Ok(Done::No("Unsupported authentication mechanism".into()));
                    }
                    let data = match initial_response {
                        Some(r) => r.declassify().to_vec(),
                        None => {
                            self.conn.write(b"+ \r\n").await?;
                            self.conn.flush().await?;
                            match self.conn.next(self.imap.limits.login_timeout).await? {
                                Frame::Message(line) => {
                                    let text = String::from_utf8_lossy(&line).trim().to_string();
                                    if text == "*" {
                                        return Ok(Done::Bad("Authentication cancelled".into()));
                                    }
                                    match base64::engine::general_purpose::STANDARD.decode(text.as_bytes()) {
                                        Ok(d) => d,
                                        Err(_) => return Ok(Done::Bad("Invalid base64 in SASL response".into())),
                                    }
                                }
                                Frame::Refused { .. } => return Ok(Done::Bad("SASL response too long".into())),
                            }
                        }
                    };
                    let fields: Vec<&[u8]> = data.split(|c| *c == 0).collect();
                    if fields.len() != 3 {
                        return Ok(Done::Bad("Malformed PLAIN response".into()));
                    }
                    let (authz, authc, pass) = (fields[0], fields[1], fields[2]);
                    if !authz.is_empty() && authz != authc {
                        return Ok(Done::No("[AUTHORIZATIONFAILED] Proxy authorization is not supported".into()));
                    }
                    self.login(&String::from_utf8_lossy(authc), &String::from_utf8_lossy(pass)).await
                }
                _ => Done::Bad(format!("{} needs authentication first", body.name())),
            });
        }
        match body {
            CommandBody::StartTLS | CommandBody::Login { .. } | CommandBody::Authenticate { .. } => {
                Ok(Done::Bad("Already authenticated".into()))
            }
            CommandBody::Enable { capabilities } => self.enable(capabilities).await,
            CommandBody::Namespace => {
                self.conn.write(b"* NAMESPACE ((\"\" \"/\")) NIL NIL\r\n").await?;
                Ok(Done::Ok("NAMESPACE completed".into()))
            }
            CommandBody::Select { mailbox, parameters } => self.select(&mailbox, parameters, false).await,
            CommandBody::Examine { mailbox, parameters } => self.select(&mailbox, parameters, true).await,
            CommandBody::Create { mailbox } => self.create(&mailbox, extras).await,
            CommandBody::Delete { mailbox } => self.delete(&mailbox).await,
            CommandBody::Rename { from, to } => {
                let (from, to) = (self.name_in(&from), self.name_in(&to));
                if from.eq_ignore_ascii_case("INBOX") {
                    return self.rename_inbox(&to).await;
                }
                Ok(match self.user().mailboxes.rename(&from, &to).await {
                    Ok(()) => Done::Ok("RENAME completed".into()),
                    Err(e) => e.into(),
                })
            }
            CommandBody::Subscribe { mailbox } => {
                let name = self.name_in(&mailbox);
                Ok(match self.user().mailboxes.subscribe(&name).await {
                    Ok(()) => Done::Ok("SUBSCRIBE completed".into()),
                    Err(e) => e.into(),
                })
            }
            CommandBody::Unsubscribe { mailbox } => {
                let name = self.name_in(&mailbox);
                Ok(match self.user().mailboxes.unsubscribe(&name).await {
                    Ok(()) => Done::Ok("UNSUBSCRIBE completed".into()),
                    Err(e) => e.into(),
                })
            }
            CommandBody::List { reference, mailbox_wildcard } => self.list(&reference, &mailbox_wildcard, extras, false).await,
            CommandBody::Lsub { reference, mailbox_wildcard } => self.list(&reference, &mailbox_wildcard, extras, true).await,
            CommandBody::Status { mailbox, item_names } => {
                self.settle_incoming().await;
                if item_names.iter().any(|i| matches!(i, StatusDataItemName::HighestModSeq)) {
                    self.enable_condstore().await?;
                }
                let name = self.name_in(&mailbox);
                let items: Vec<StatusDataItemName> = item_names.to_vec();
                let info = match self.find(&name).await {
                    Ok(Some(i)) => i,
                    Ok(None) => return Ok(Done::No(format!("[NONEXISTENT] no mailbox {name}"))),
                    Err(d) => return Ok(d),
                };
                match self.status_line(&info, &items).await {
                    Ok(line) => {
                        self.conn.write(&line).await?;
                        Ok(Done::Ok("STATUS completed".into()))
                    }
                    Err(d) => Ok(d),
                }
            }
            CommandBody::Append { mailbox, flags, date, message } => {
                let raw: Vec<u8> = match &message {
                    imap_codec::imap_types::extensions::binary::LiteralOrLiteral8::Literal(l) => l.data().to_vec(),
                    imap_codec::imap_types::extensions::binary::LiteralOrLiteral8::Literal8(l) => l.data.to_vec(),
                };
                let flags: Vec<String> = flags.iter().map(flag_name).collect();
                let date = date.map(|d| d.as_ref().timestamp());
                self.append(&mailbox, flags, date, raw).await
            }
            CommandBody::Idle => self.idle(tag).await,
            // QUOTA (RFC 9208): one root per user, STORAGE only, set by
            // the operator (users file), not by clients.
            CommandBody::GetQuotaRoot { mailbox } => {
                let name = self.name_in(&mailbox);
                match self.find(&name).await {
                    Ok(Some(_)) => {}
                    Ok(None) => return Ok(Done::No(format!("[NONEXISTENT] no mailbox {name}"))),
                    Err(d) => return Ok(d),
                }
                let mut line = b"* QUOTAROOT ".to_vec();
                line.extend_from_slice(&self.name_out(&name));
                line.extend_from_slice(b" \"\"\r\n");
                self.conn.write(&line).await?;
                self.quota_line().await
            }
            CommandBody::GetQuota { root } => {
                if !astr(&root).is_empty() {
                    return Ok(Done::No(format!("[NONEXISTENT] no quota root {}", astr(&root))));
                }
                self.quota_line().await
            }
            CommandBody::SetQuota { .. } => Ok(Done::No("[NOPERM] Quotas are set by the administrator".into())),
            _ if !selected => Ok(Done::Bad(format!("{} needs a selected mailbox", body.name()))),
            CommandBody::Close => {
                if let Some(sel) = &self.selected {
                    if !sel.read_only {
                        let _ = self.expunge_deleted(None, false).await;
                    }
                }
                self.selected = None;
                Ok(Done::Ok("CLOSE completed".into()))
            }
            CommandBody::Unselect => {
                self.selected = None;
                Ok(Done::Ok("UNSELECT completed".into()))
            }
            CommandBody::Expunge => self.expunge_deleted(None, true).await,
            CommandBody::ExpungeUid { sequence_set } => self.expunge_deleted(Some(sequence_set), true).await,
            CommandBody::Fetch { sequence_set, macro_or_item_names, uid, modifiers } => {
                self.fetch(sequence_set, macro_or_item_names, uid, modifiers).await
            }
            CommandBody::Store { sequence_set, kind, response, flags, uid, modifiers } => {
                self.store(sequence_set, kind, response, flags, uid, modifiers).await
            }
            CommandBody::Copy { sequence_set, mailbox, uid } => self.copy(sequence_set, &mailbox, uid, false).await,
            CommandBody::Move { sequence_set, mailbox, uid } => self.copy(sequence_set, &mailbox, uid, true).await,
            CommandBody::Search { charset, criteria, uid } => self.search(tag, charset, criteria, uid, extras).await,
            CommandBody::Sort { sort_criteria, charset, search_criteria, uid } => {
                self.sort(sort_criteria, charset, search_criteria, uid).await
            }
            CommandBody::Thread { algorithm, charset, search_criteria, uid } => {
                self.thread(algorithm, charset, search_criteria, uid).await
            }
            other => Ok(Done::Bad(format!("{} is not supported", other.name()))),
        }
    }

    fn user(&self) -> &User {
        self.user.as_ref().unwrap_or_else(|| unreachable!("authenticated commands run only with a user"))
    }

    /// The mailbox called `name`, if any. A list that cannot be read is an
    /// error for the client to retry, never a "no such mailbox".
    async fn find(&mut self, name: &str) -> Result<Option<MailboxInfo>, Done> {
        self.user().mailboxes.find(name).await.map_err(Done::from)
    }

    /// The engine of a mailbox, brought up to date; a mailbox never
    /// written gets its first epoch now, so its UIDVALIDITY is fixed
    /// before any client sees it.
    /// `fresh`: read the log even if this node has a view (SELECT, STATUS
    /// need what others did; an APPEND target does not, it goes through
    /// the sequencer anyway).
    async fn open(&self, id: &str, fresh: bool) -> Result<Arc<EngineMailbox>, Done> {
        let keys = self.user().keys.clone();
        let mb = self.imap.mail.mailbox(&keys, id);
        if !fresh && mb.with_view(|v| v.is_some()).await {
            return Ok(mb);
        }
        mb.refresh().await.map_err(Done::from)?;
        if mb.with_view(|v| v.is_none()).await {
            self.imap.mail.submit(&keys, id, vec![]).await.map_err(Done::from)?;
            mb.refresh().await.map_err(Done::from)?;
        }
        Ok(mb)
    }

}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns() {
        let m = |p: &str, n: &str| pattern_match(&p.chars().collect::<Vec<_>>(), &n.chars().collect::<Vec<_>>());
        assert!(m("*", "a/b/c"));
        assert!(m("%", "abc"));
        assert!(!m("%", "a/b"));
        assert!(m("a/%", "a/b"));
        assert!(!m("a/%", "a/b/c"));
        assert!(m("a*c", "a/b/c"));
        assert!(m("INBOX", "INBOX"));
        assert!(!m("a%", "a/b"));
        assert!(m("%/%", "a/b"));
        assert!(!m("", "a"));
        assert!(m("", ""));
        // Many wildcards against a long name: answered at once.
        let hostile = "*a".repeat(200) + "b";
        assert!(!m(&hostile, &"a".repeat(500)));
    }

    #[test]
    fn uid_sets() {
        assert_eq!(uid_set(&[1, 2, 3, 7, 9, 10]), "1:3,7,9:10");
        assert_eq!(uid_set(&[]), "");
        assert_eq!(uid_set(&[5]), "5");
    }
}
