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

use super::sort;
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

    /// A CONDSTORE enabling command (RFC 7162 §3.1: FETCH or SEARCH with
    /// MODSEQ, STORE UNCHANGEDSINCE, STATUS HIGHESTMODSEQ, ...): from now
    /// on every untagged FETCH carries MODSEQ, and the first one with a
    /// mailbox selected reports its HIGHESTMODSEQ.
    async fn enable_condstore(&mut self) -> Result<(), ConnError> {
        if self.enabled.condstore {
            return Ok(());
        }
        self.enabled.condstore = true;
        if let Some(sel) = &self.selected {
            let line = format!("* OK [HIGHESTMODSEQ {}] Highest\r\n", sel.told_modseq);
            self.conn.write(line.as_bytes()).await?;
        }
        Ok(())
    }

    /// Tells the client about keywords new to the selected mailbox (FLAGS,
    /// PERMANENTFLAGS) before a response that may show them: the view a
    /// command renders from may be newer than the last sync.
    async fn announce_flags(&mut self) -> Result<(), ConnError> {
        let Some(sel) = self.selected.as_mut() else { return Ok(()) };
        let (told, read_only) = (sel.flags_told, sel.read_only);
        let update = sel
            .mb
            .with_view(|v| v.filter(|idx| idx.flag_count() != told).map(|idx| flags_responses(idx, read_only)))
            .await;
        if let Some((lines, n)) = update {
            sel.flags_told = n;
            self.conn.write(&lines).await?;
        }
        Ok(())
    }

    /// Waits for the filing started at login (once; bounded, in case
    /// storage stalls: the mail then arrives as EXISTS later).
    async fn settle_incoming(&mut self) {
        if let Some(rx) = self.filing.take() {
            let _ = tokio::time::timeout(FILING_WAIT, rx).await;
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
            other => Ok(Done::Bad(format!("{} is not supported", other.name()))),
        }
    }

    /// The user's quota in bytes, as the users file has it now.
    fn quota(&self) -> Option<u64> {
        self.imap.accounts.directory().user(&self.user().login).and_then(|u| u.quota_bytes())
    }

    /// `* QUOTA "" (STORAGE used limit)` in KiB, when the user has a quota.
    async fn quota_line(&mut self) -> Result<Done, ConnError> {
        let user = self.user();
        let quota = self.quota();
        if let Some(q) = quota {
            let used = match self.imap.mail.usage.current(&user.keys.user).await {
                Ok(u) => u,
                Err(e) => return Ok(e.into()),
            };
            let line = format!("* QUOTA \"\" (STORAGE {} {})\r\n", used.div_ceil(1024), q / 1024);
            self.conn.write(line.as_bytes()).await?;
        } else {
            self.conn.write(b"* QUOTA \"\" ()\r\n").await?;
        }
        Ok(Done::Ok("GETQUOTA completed".into()))
    }

    /// Refuses `bytes` more if they would take the user over quota.
    async fn check_quota(&self, bytes: u64) -> Option<Done> {
        let user = self.user();
        let quota = self.quota()?;
        match self.imap.mail.usage.current(&user.keys.user).await {
            Ok(used) if used.saturating_add(bytes) > quota => Some(Done::No(format!(
                "[OVERQUOTA] Quota exceeded ({used} of {quota} bytes used)"
            ))),
            Ok(_) => None,
            Err(e) => Some(e.into()),
        }
    }

    fn user(&self) -> &User {
        self.user.as_ref().unwrap_or_else(|| unreachable!("authenticated commands run only with a user"))
    }

    async fn starttls(&mut self, tag: &str) -> Result<Done, ConnError> {
        let Some(cfg) = self.imap.tls.clone() else {
            return Ok(Done::Bad("STARTTLS is not available here".into()));
        };
        if self.conn.tls {
            return Ok(Done::Bad("TLS is already active".into()));
        }
        self.conn.write(format!("{tag} OK Begin TLS negotiation now\r\n").as_bytes()).await?;
        self.conn.start_tls(cfg).await?;
        // The tagged response went out before the handshake; nothing more
        // until the client speaks over TLS.
        Ok(Done::Silent)
    }

    async fn login(&mut self, login: &str, password: &str) -> Done {
        if !self.conn.tls && !self.imap.plaintext_auth {
            return Done::No("[PRIVACYREQUIRED] Use TLS (STARTTLS or port 993) to log in".into());
        }
        match self.imap.accounts.login(login, password, self.peer.ip()).await {
            Ok(s) => {
                let keys = s.keys().clone();
                self.user = Some(User {
                    login: s.login().to_string(),
                    keys: keys.clone(),
                    mailboxes: Mailboxes::new(self.imap.store.clone(), keys.clone()),
                    _session: s,
                });
                // Mail delivered while the user was away goes into INBOX
                // now; the mailbox commands that follow wait for it.
                self.filing = Some(self.imap.mail.file_queued_now(keys));
                log::info!("IMAP login of {} from {}", self.user().login, self.peer);
                Done::Ok(format!("[CAPABILITY {}] Logged in", self.capabilities()))
            }
            Err(AccountsError::AuthFailed) => Done::No("[AUTHENTICATIONFAILED] Authentication failed".into()),
            Err(e) if e.is_transient() => Done::No(format!("[UNAVAILABLE] {e}; try again")),
            Err(e) => {
                log::error!("login of {login}: {e}");
                Done::No("[SERVERBUG] Login failed on the server side".into())
            }
        }
    }

    async fn enable(&mut self, caps: Vec1<CapabilityEnable<'_>>) -> Result<Done, ConnError> {
        let mut on = vec![];
        for c in caps.as_ref() {
            let name = c.to_string().to_ascii_uppercase();
            match name.as_str() {
                "CONDSTORE" => {
                    self.enabled.condstore = true;
                    on.push("CONDSTORE");
                }
                "QRESYNC" => {
                    self.enabled.condstore = true;
                    self.enabled.qresync = true;
                    on.push("QRESYNC");
                }
                "IMAP4REV2" => {
                    self.enabled.rev2 = true;
                    on.push("IMAP4rev2");
                }
                _ => {}
            }
        }
        let line = if on.is_empty() { "* ENABLED\r\n".to_string() } else { format!("* ENABLED {}\r\n", on.join(" ")) };
        self.conn.write(line.as_bytes()).await?;
        Ok(Done::Ok("ENABLE completed".into()))
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

    async fn select(&mut self, mailbox: &ImapMailbox<'_>, params: Vec<SelectParameter>, read_only: bool) -> Result<Done, ConnError> {
        self.settle_incoming().await;
        if self.selected.take().is_some() {
            self.conn.write(b"* OK [CLOSED] Previous mailbox closed\r\n").await?;
        }
        let name = self.name_in(mailbox);
        let info = match self.find(&name).await {
            Ok(Some(i)) => i,
            Ok(None) => return Ok(Done::No(format!("[NONEXISTENT] no mailbox {name}"))),
            Err(d) => return Ok(d),
        };
        // Watch before reading the log: a change announced in between is
        // then either in the read or still marked.
        let keys = self.user().keys.clone();
        let changes = self.imap.mail.watch(&keys, &info.id);
        let seen_stale = changes.borrow().stale;
        let mb = match self.open(&info.id, true).await {
            Ok(mb) => mb,
            Err(d) => return Ok(d),
        };
        let mut qresync = None;
        for p in &params {
            match p {
                SelectParameter::CondStore => self.enabled.condstore = true,
                SelectParameter::QResync { uid_validity, mod_sequence_value, known_uids, .. } => {
                    if !self.enabled.qresync {
                        return Ok(Done::Bad("QRESYNC must be enabled first".into()));
                    }
                    qresync = Some((uid_validity.get(), mod_sequence_value.get(), known_uids.clone()));
                }
            }
        }
        let rev2 = self.enabled.rev2;
        // \Recent (IMAP4rev1): what no session has been told about yet. A
        // read-write SELECT takes it (atomically on this node: two SELECTs
        // never both get a message); EXAMINE only looks.
        let keys = self.user().keys.clone();
        let recent_range = if rev2 {
            Uid::MAX..Uid::MAX
        } else if read_only {
            self.imap.mail.recent.floor(&keys, &info.id).await..Uid::MAX
        } else {
            let uidnext = mb.with_view(|v| v.map_or(1, |i| i.uidnext)).await;
            self.imap.mail.recent.claim(&keys, &info.id, uidnext).await
        };
        let (out, uids, highest, flags_told) = mb
            .with_view(|v| {
                let Some(idx) = v else { return (vec![], vec![], 0, 0) };
                let (mut out, flags_told) = flags_responses(idx, read_only);
                out.extend_from_slice(format!("* {} EXISTS\r\n", idx.len()).as_bytes());
                if !rev2 {
                    let recent = idx.messages().iter().filter(|m| recent_range.contains(&m.uid)).count();
                    out.extend_from_slice(format!("* {recent} RECENT\r\n").as_bytes());
                    if let Some(pos) = idx.messages().iter().position(|m| m.flags & 1 == 0) {
                        out.extend_from_slice(format!("* OK [UNSEEN {}] First unseen\r\n", pos + 1).as_bytes());
                    }
                }
                out.extend_from_slice(format!("* OK [UIDVALIDITY {}] UIDs valid\r\n", idx.uidvalidity).as_bytes());
                out.extend_from_slice(format!("* OK [UIDNEXT {}] Predicted next UID\r\n", idx.uidnext).as_bytes());
                out.extend_from_slice(format!("* OK [HIGHESTMODSEQ {}] Highest\r\n", idx.highestmodseq).as_bytes());
                if let Some((uv, since, known)) = &qresync {
                    if *uv == idx.uidvalidity {
                        let max = idx.uidnext.saturating_sub(1);
                        let known = known.as_ref().map(|k| search::Intervals::new(k, max));
                        let vanished: Vec<Uid> = idx
                            .vanished_since(*since)
                            .filter(|u| known.as_ref().is_none_or(|k| k.contains(*u)))
                            .collect();
                        if !vanished.is_empty() {
                            out.extend_from_slice(format!("* VANISHED (EARLIER) {}\r\n", uid_set(&vanished)).as_bytes());
                        }
                        for m in idx.changed_since(*since) {
                            let seq = idx.seq_of(m.uid).unwrap_or(0);
                            let mut names = idx.flag_names(m.flags);
                            if recent_range.contains(&m.uid) {
                                names.push("\\Recent".into());
                            }
                            out.extend_from_slice(format!("* {seq} FETCH (UID {} FLAGS (", m.uid).as_bytes());
                            out.extend_from_slice(names.join(" ").as_bytes());
                            out.extend_from_slice(format!(") MODSEQ ({}))\r\n", m.modseq).as_bytes());
                        }
                    }
                }
                (out, idx.messages().iter().map(|m| m.uid).collect(), idx.highestmodseq, flags_told)
            })
            .await;
        self.conn.write(&out).await?;
        let recent: std::collections::BTreeSet<Uid> = uids.iter().copied().filter(|u| recent_range.contains(u)).collect();
        self.selected = Some(Selected {
            info,
            read_only,
            mb,
            changes,
            seen_stale,
            uids,
            told_modseq: highest,
            flags_told,
            recent,
        });
        Ok(Done::Ok(if read_only { "[READ-ONLY] EXAMINE completed" } else { "[READ-WRITE] SELECT completed" }.into()))
    }

    /// After this session's own change to the selected mailbox: make the
    /// view show it. Sequenced on this node (`shown`), it does already, and
    /// only a change from elsewhere (a stale mark) calls for a log read.
    /// Marks are taken before the read, so one arriving during it is not lost.
    async fn catch_up(&mut self, shown: bool) {
        let Some(sel) = self.selected.as_mut() else { return };
        let c = *sel.changes.borrow_and_update();
        if shown && c.stale == sel.seen_stale {
            return;
        }
        sel.seen_stale = c.stale;
        if let Err(e) = sel.mb.refresh().await {
            log::debug!("refresh after an operation: {e}");
        }
    }

    /// Tells the client what changed in the selected mailbox. Returns the
    /// UIDs whose flags were told. `skip_modseq`: changes with this MODSEQ
    /// are the client's own STORE .SILENT and are not echoed.
    async fn sync(&mut self, expunges: bool, skip_modseq: Option<ModSeq>) -> Result<Vec<Uid>, ConnError> {
        let rev2 = self.enabled.rev2;
        let condstore = self.enabled.condstore;
        let qresync = self.enabled.qresync;
        let Some(sel) = self.selected.as_mut() else { return Ok(vec![]) };
        // Compared, not `has_changed`: IDLE's wait has consumed the wake-up.
        let c = *sel.changes.borrow_and_update();
        if c.stale != sel.seen_stale {
            sel.seen_stale = c.stale;
            if let Err(e) = sel.mb.refresh().await {
                log::debug!("refresh of a selected mailbox: {e}");
            }
        }
        let told = sel.told_modseq;
        let (flags_told, read_only) = (sel.flags_told, sel.read_only);
        let uids = &mut sel.uids;
        let recent = &sel.recent;
        let (mut out, flagged, highest, flags_now, new) = sel
            .mb
            .with_view(|v| {
                let Some(idx) = v else { return (vec![], vec![], told, flags_told, vec![]) };
                let mut out = vec![];
                // A keyword new to the mailbox: FLAGS first, then the
                // FETCHes that use it.
                let mut flags_now = flags_told;
                if idx.flag_count() != flags_told {
                    let (lines, n) = flags_responses(idx, read_only);
                    out.extend_from_slice(&lines);
                    flags_now = n;
                }
                if expunges {
                    // Reported from the highest sequence number down, so each
                    // number is still right when the client applies it.
                    let mut gone = vec![];
                    for i in (0..uids.len()).rev() {
                        if idx.get(uids[i]).is_none() {
                            if !qresync {
                                out.extend_from_slice(format!("* {} EXPUNGE\r\n", i + 1).as_bytes());
                            }
                            gone.push(uids[i]);
                        }
                    }
                    if !gone.is_empty() {
                        uids.retain(|u| idx.get(*u).is_some());
                    }
                    if qresync && !gone.is_empty() {
                        out.extend_from_slice(format!("* VANISHED {}\r\n", uid_set(&gone)).as_bytes());
                    }
                }
                let mut flagged = vec![];
                for m in idx.changed_since(told) {
                    if Some(m.modseq) == skip_modseq {
                        continue;
                    }
                    if let Ok(pos) = uids.binary_search(&m.uid) {
                        out.extend_from_slice(format!("* {} FETCH (UID {} FLAGS (", pos + 1, m.uid).as_bytes());
                        out.extend_from_slice(shown_flags(recent, m.uid, idx.flag_names(m.flags)).join(" ").as_bytes());
                        out.push(b')');
                        if condstore {
                            out.extend_from_slice(format!(" MODSEQ ({})", m.modseq).as_bytes());
                        }
                        out.extend_from_slice(b")\r\n");
                        flagged.push(m.uid);
                    }
                }
                let last = uids.last().copied().unwrap_or(0);
                let before = uids.len();
                uids.extend(idx.messages().iter().filter(|m| m.uid > last).map(|m| m.uid));
                if uids.len() != before {
                    out.extend_from_slice(format!("* {} EXISTS\r\n", uids.len()).as_bytes());
                }
                (out, flagged, idx.highestmodseq, flags_now, uids[before..].to_vec())
            })
            .await;
        sel.told_modseq = highest;
        sel.flags_told = flags_now;
        // IMAP4rev1: new mail this session is first told about is recent
        // here (a read-write session claims it), and RECENT follows EXISTS.
        if !rev2 && !new.is_empty() {
            let (keys, id) = (self.user.as_ref().map(|u| u.keys.clone()), sel.info.id.clone());
            if let Some(keys) = keys {
                let upto = new.last().map_or(1, |u| u + 1);
                let mine = if read_only {
                    let floor = self.imap.mail.recent.floor(&keys, &id).await;
                    floor..upto
                } else {
                    self.imap.mail.recent.claim(&keys, &id, upto).await
                };
                sel.recent.extend(new.iter().copied().filter(|u| mine.contains(u)));
            }
            let uids = &sel.uids;
            sel.recent.retain(|u| uids.binary_search(u).is_ok());
            out.extend_from_slice(format!("* {} RECENT\r\n", sel.recent.len()).as_bytes());
        }
        self.conn.write(&out).await?;
        Ok(flagged)
    }

    async fn idle(&mut self, tag: &str) -> Result<Done, ConnError> {
        let _ = tag;
        self.sync(true, None).await?;
        self.conn.write(b"+ idling\r\n").await?;
        self.conn.flush().await?;
        let timeout = self.imap.limits.idle_timeout;
        loop {
            enum Event {
                Client(Result<Frame, ConnError>),
                Changed,
            }
            let event = {
                let conn = &mut self.conn;
                match self.selected.as_mut() {
                    Some(sel) => tokio::select! {
                        f = conn.next(timeout) => Event::Client(f),
                        r = sel.changes.changed() => match r {
                            Ok(()) => Event::Changed,
                            // The engine went away; keep idling on the client.
                            Err(_) => Event::Client(conn.next(timeout).await),
                        },
                    },
                    None => Event::Client(conn.next(timeout).await),
                }
            };
            match event {
                Event::Changed => {
                    // sync reads the log if the change came from elsewhere.
                    self.sync(true, None).await?;
                    self.conn.flush().await?;
                }
                Event::Client(Ok(Frame::Message(m))) => {
                    if String::from_utf8_lossy(&m).trim().eq_ignore_ascii_case("DONE") {
                        return Ok(Done::Ok("IDLE terminated".into()));
                    }
                    return Ok(Done::Bad("Expected DONE to end IDLE".into()));
                }
                Event::Client(Ok(Frame::Refused { .. })) => return Ok(Done::Bad("Expected DONE to end IDLE".into())),
                Event::Client(Err(ConnError::Timeout)) => {
                    self.conn.write(b"* BYE Autologout; idle for too long\r\n").await?;
                    self.logout = true;
                    return Ok(Done::No("IDLE timed out".into()));
                }
                Event::Client(Err(e)) => return Err(e),
            }
        }
    }

    async fn create(&mut self, mailbox: &ImapMailbox<'_>, extras: &Extras) -> Result<Done, ConnError> {
        let name = self.name_in(mailbox);
        let special = extras.create_use.first().cloned();
        if let Some(s) = &special {
            const KNOWN: [&str; 7] = ["\\All", "\\Archive", "\\Drafts", "\\Flagged", "\\Junk", "\\Sent", "\\Trash"];
            if !KNOWN.iter().any(|k| k.eq_ignore_ascii_case(s)) {
                return Ok(Done::No(format!("[USEATTR] {s} is not a special-use attribute")));
            }
        }
        Ok(match self.user().mailboxes.create(&name, special).await {
            Ok(_) => Done::Ok("CREATE completed".into()),
            Err(e) => e.into(),
        })
    }

    /// RENAME INBOX (RFC 9051 §6.3.6): every message moves to a new
    /// mailbox of that name; INBOX stays, empty (its inferiors stay too).
    async fn rename_inbox(&mut self, to: &str) -> Result<Done, ConnError> {
        let dest = match self.user().mailboxes.create(to, None).await {
            Ok(d) => d,
            Err(e) => return Ok(e.into()),
        };
        let keys = self.user().keys.clone();
        let inbox = match self.open(crate::mail::mailboxes::INBOX_ID, true).await {
            Ok(mb) => mb,
            Err(d) => return Ok(d),
        };
        let msgs: Vec<(Uid, u64, Vec<String>)> = inbox
            .with_view(|v| v.map(|i| i.messages().iter().map(|m| (m.uid, m.id, i.flag_names(m.flags))).collect()).unwrap_or_default())
            .await;
        if let Err(d) = self.open(&dest.id, true).await {
            return Ok(d);
        }
        // In slices, so a huge INBOX is neither one giant log entry nor
        // left half-moved by a failure: each slice is copied, then removed.
        for chunk in msgs.chunks(500) {
            let mut ops = vec![];
            for (_, id, flags) in chunk {
                match message::copy_message(&self.imap.store, &keys, crate::mail::mailboxes::INBOX_ID, &dest.id, *id).await {
                    Ok(Some(_)) => ops.push((rand::random(), Op::Append { message: *id, flags: flags.clone() })),
                    Ok(None) => {}
                    Err(e) => return Ok(e.into()),
                }
            }
            if let Err(e) = self.imap.mail.submit(&keys, &dest.id, ops).await {
                return Ok(e.into());
            }
            let op = Op::Expunge { uids: chunk.iter().map(|m| m.0).collect() };
            if let Err(e) = self.imap.mail.submit(&keys, crate::mail::mailboxes::INBOX_ID, vec![(rand::random(), op)]).await {
                return Ok(e.into());
            }
        }
        let _ = inbox.refresh().await;
        self.sync(true, None).await?;
        Ok(Done::Ok("RENAME completed; INBOX's messages moved".into()))
    }

    async fn delete(&mut self, mailbox: &ImapMailbox<'_>) -> Result<Done, ConnError> {
        let name = self.name_in(mailbox);
        if self.selected.as_ref().is_some_and(|s| s.info.name == name) {
            self.selected = None;
        }
        match self.user().mailboxes.delete(&name).await {
            Ok(info) => {
                let (store, keys, mail) = (self.imap.store.clone(), self.user().keys.clone(), self.imap.mail.clone());
                mail.close(&keys.user, &info.id);
                // The name is gone at once; the messages are reclaimed in
                // the background (a crash leaves garbage, never a mailbox).
                tokio::spawn(async move {
                    match message::mailbox_size(&store, &keys, &info.id).await {
                        Ok(size) => mail.usage.remove(&keys.user, size),
                        Err(e) => log::warn!("sizing a deleted mailbox: {e}"),
                    }
                    if let Err(e) = cleanup::delete_mailbox_data(&store, &keys, &info.id).await {
                        log::warn!("reclaiming a deleted mailbox: {e}");
                    }
                });
                Ok(Done::Ok("DELETE completed".into()))
            }
            Err(e) => Ok(e.into()),
        }
    }

    async fn list(&mut self, reference: &ImapMailbox<'_>, pattern: &ListMailbox<'_>, extras: &Extras, lsub: bool) -> Result<Done, ConnError> {
        self.settle_incoming().await;
        let reference = match reference {
            ImapMailbox::Inbox => "INBOX".to_string(),
            ImapMailbox::Other(o) => String::from_utf8_lossy(o.as_ref()).to_string(),
        };
        let pattern = match pattern {
            ListMailbox::Token(t) => String::from_utf8_lossy(t.as_ref()).to_string(),
            ListMailbox::String(s) => String::from_utf8_lossy(s.as_ref()).to_string(),
        };
        let decode = |s: String| if self.enabled.rev2 { s.clone() } else { utf7::decode(&s).unwrap_or(s) };
        let (reference, pattern) = (decode(reference), decode(pattern));
        let word = if lsub { "LSUB" } else { "LIST" };
        // RFC 5258 §3: options the server does not know are BAD, and so is
        // RECURSIVEMATCH without another selection option (REMOTE does not
        // count), whatever the pattern.
        if let Some(o) = extras.list_select.iter().find(|o| !["SUBSCRIBED", "REMOTE", "RECURSIVEMATCH", "SPECIAL-USE"].contains(&o.as_str())) {
            return Ok(Done::Bad(format!("unknown LIST selection option {o}")));
        }
        if let Some(o) = extras.list_return.iter().find(|o| !["SUBSCRIBED", "CHILDREN", "STATUS", "SPECIAL-USE"].contains(&o.as_str())) {
            return Ok(Done::Bad(format!("unknown LIST return option {o}")));
        }
        let select = |o: &str| extras.list_select.iter().any(|s| s == o);
        if select("RECURSIVEMATCH") && !select("SUBSCRIBED") && !select("SPECIAL-USE") {
            return Ok(Done::Bad("RECURSIVEMATCH needs another selection option".into()));
        }
        if pattern.is_empty() && !lsub {
            self.conn.write(b"* LIST (\\Noselect) \"/\" \"\"\r\n").await?;
            return Ok(Done::Ok("LIST completed".into()));
        }
        // LIST-EXTENDED may give several patterns; a name matching any is listed.
        let patterns: Vec<String> = if extras.list_patterns.is_empty() {
            vec![pattern]
        } else {
            extras.list_patterns.iter().map(|p| decode(p.clone())).collect()
        };
        let fulls: Vec<Vec<char>> = patterns.iter().map(|p| format!("{reference}{p}").chars().collect()).collect();
        let matches_any = |name: &str| {
            let chars: Vec<char> = name.chars().collect();
            fulls.iter().any(|full| {
                pattern_match(full, &chars)
                    || (name == "INBOX" && pattern_match(&full.iter().map(|c| c.to_ascii_uppercase()).collect::<Vec<_>>(), &chars))
            })
        };
        let list = match self.user().mailboxes.list().await {
            Ok(l) => l,
            Err(e) => return Ok(e.into()),
        };
        let subs = match self.user().mailboxes.subscriptions().await {
            Ok(s) => s,
            Err(e) => return Ok(e.into()),
        };
        let subscribed_only = lsub || select("SUBSCRIBED");
        let special_only = select("SPECIAL-USE");
        let show_subscribed = subscribed_only || extras.list_return.iter().any(|s| s == "SUBSCRIBED");
        let mut out = vec![];
        let mut status_for = vec![];
        let names: Vec<&MailboxInfo> = list.iter().collect();
        let is_sub = |name: &str| subs.iter().any(|s| s == name);
        let selected = |m: &MailboxInfo| (!subscribed_only || is_sub(&m.name)) && (!special_only || m.special_use.is_some());
        for m in &names {
            if !matches_any(&m.name) {
                continue;
            }
            let prefix = format!("{}{SEPARATOR}", m.name);
            // RECURSIVEMATCH: a parent with a selected descendant that the
            // patterns do not match is listed with CHILDINFO even when it is
            // not selected itself (RFC 5258 §3, condition b).
            let child_selected = select("RECURSIVEMATCH")
                && names.iter().any(|o| o.name.starts_with(&prefix) && selected(o) && !matches_any(&o.name));
            if !selected(m) && !child_selected {
                continue;
            }
            let children = names.iter().any(|o| o.name.starts_with(&prefix));
            let mut attrs: Vec<String> = vec![];
            if !lsub {
                attrs.push(if children { "\\HasChildren" } else { "\\HasNoChildren" }.into());
                if let Some(s) = &m.special_use {
                    attrs.push(s.clone());
                }
            }
            if show_subscribed && is_sub(&m.name) && !lsub {
                attrs.push("\\Subscribed".into());
            }
            out.extend_from_slice(format!("* {word} ({}) \"/\" ", attrs.join(" ")).as_bytes());
            out.extend_from_slice(&self.name_out(&m.name));
            if child_selected {
                let why: Vec<&str> = [("SUBSCRIBED", subscribed_only), ("SPECIAL-USE", special_only)]
                    .iter()
                    .filter(|(_, on)| *on)
                    .map(|(w, _)| *w)
                    .collect();
                out.extend_from_slice(format!(" (\"CHILDINFO\" (\"{}\"))", why.join("\" \"")).as_bytes());
            }
            out.extend_from_slice(b"\r\n");
            if !lsub && extras.list_return.iter().any(|s| s == "STATUS") && selected(m) {
                status_for.push((*m).clone());
            }
        }
        // Superior names that are not mailboxes (a hierarchy made by hand
        // or by another client) still show, so `%` can walk down to them.
        if !lsub {
            let mut implied: Vec<String> = vec![];
            for m in &names {
                let parts: Vec<&str> = m.name.split(SEPARATOR).collect();
                for i in 1..parts.len() {
                    let parent = parts[..i].join("/");
                    if !names.iter().any(|o| o.name == parent) && !implied.contains(&parent) {
                        implied.push(parent);
                    }
                }
            }
            implied.sort();
            for p in implied {
                if !matches_any(&p) {
                    continue;
                }
                let prefix = format!("{p}{SEPARATOR}");
                let child_selected = names.iter().any(|o| o.name.starts_with(&prefix) && selected(o));
                if (subscribed_only || special_only) && !(select("RECURSIVEMATCH") && child_selected) {
                    continue;
                }
                out.extend_from_slice(b"* LIST (\\Noselect \\HasChildren) \"/\" ");
                out.extend_from_slice(&self.name_out(&p));
                if select("RECURSIVEMATCH") && child_selected {
                    out.extend_from_slice(b" (\"CHILDINFO\" (\"SUBSCRIBED\"))");
                }
                out.extend_from_slice(b"\r\n");
            }
        }
        // LSUB with `%`: a subscribed name below the level the pattern
        // reaches shows its unsubscribed superior, as \Noselect (RFC 3501
        // §6.3.9).
        if lsub {
            let mut parents: Vec<String> = vec![];
            for s in subs.iter().filter(|s| !matches_any(s)) {
                let parts: Vec<&str> = s.split(SEPARATOR).collect();
                for i in 1..parts.len() {
                    let parent = parts[..i].join("/");
                    if matches_any(&parent) && !is_sub(&parent) && !parents.contains(&parent) {
                        parents.push(parent);
                    }
                }
            }
            parents.sort();
            for p in parents {
                out.extend_from_slice(b"* LSUB (\\Noselect) \"/\" ");
                out.extend_from_slice(&self.name_out(&p));
                out.extend_from_slice(b"\r\n");
            }
        }
        // Subscriptions to mailboxes that no longer exist still show.
        if subscribed_only {
            for s in &subs {
                if names.iter().any(|m| &m.name == s) {
                    continue;
                }
                if matches_any(s) {
                    let attrs = if lsub { "\\Noselect" } else { "\\Subscribed \\NonExistent" };
                    out.extend_from_slice(format!("* {word} ({attrs}) \"/\" ").as_bytes());
                    out.extend_from_slice(&self.name_out(s));
                    out.extend_from_slice(b"\r\n");
                }
            }
        }
        self.conn.write(&out).await?;
        let items: Vec<StatusDataItemName> = extras
            .list_status
            .iter()
            .filter_map(|s| match s.as_str() {
                "MESSAGES" => Some(StatusDataItemName::Messages),
                "UIDNEXT" => Some(StatusDataItemName::UidNext),
                "UIDVALIDITY" => Some(StatusDataItemName::UidValidity),
                "UNSEEN" => Some(StatusDataItemName::Unseen),
                "RECENT" => Some(StatusDataItemName::Recent),
                "SIZE" => Some(StatusDataItemName::Size),
                "DELETED" => Some(StatusDataItemName::Deleted),
                "HIGHESTMODSEQ" => Some(StatusDataItemName::HighestModSeq),
                _ => None,
            })
            .collect();
        for m in status_for {
            if let Ok(line) = self.status_line(&m, &items).await {
                self.conn.write(&line).await?;
            }
        }
        Ok(Done::Ok(format!("{word} completed")))
    }

    async fn status_line(&mut self, info: &MailboxInfo, items: &[StatusDataItemName]) -> Result<Vec<u8>, Done> {
        let mb = self.open(&info.id, true).await?;
        let want_size = items.iter().any(|i| matches!(i, StatusDataItemName::Size));
        // RECENT: what no session has been told about (STATUS only looks).
        let floor = if items.iter().any(|i| matches!(i, StatusDataItemName::Recent)) {
            let keys = self.user().keys.clone();
            self.imap.mail.recent.floor(&keys, &info.id).await
        } else {
            Uid::MAX
        };
        let (parts, ids) = mb
            .with_view(|v| {
                let Some(idx) = v else { return (vec![], vec![]) };
                let mut parts = vec![];
                for i in items {
                    let s = match i {
                        StatusDataItemName::Messages => format!("MESSAGES {}", idx.len()),
                        StatusDataItemName::Recent => format!("RECENT {}", idx.messages().iter().filter(|m| m.uid >= floor).count()),
                        StatusDataItemName::UidNext => format!("UIDNEXT {}", idx.uidnext),
                        StatusDataItemName::UidValidity => format!("UIDVALIDITY {}", idx.uidvalidity),
                        StatusDataItemName::Unseen => format!("UNSEEN {}", idx.messages().iter().filter(|m| m.flags & 1 == 0).count()),
                        StatusDataItemName::Deleted => format!("DELETED {}", idx.messages().iter().filter(|m| m.flags & 8 != 0).count()),
                        StatusDataItemName::HighestModSeq => format!("HIGHESTMODSEQ {}", idx.highestmodseq),
                        _ => continue,
                    };
                    parts.push(s);
                }
                let ids = if want_size { idx.messages().iter().map(|m| m.id).collect() } else { vec![] };
                (parts, ids)
            })
            .await;
        let mut parts = parts;
        if want_size {
            let keys = self.user().keys.clone();
            let mut size = 0u64;
            let mut metas = std::pin::pin!(fetch::metas(self.imap.store.clone(), keys, info.id.clone(), ids, true));
            while let Some(m) = metas.next().await {
                if let Some(m) = m.map_err(Done::from)? {
                    size += m.size;
                }
            }
            parts.push(format!("SIZE {size}"));
        }
        let mut line = b"* STATUS ".to_vec();
        line.extend_from_slice(&self.name_out(&info.name));
        line.extend_from_slice(format!(" ({})\r\n", parts.join(" ")).as_bytes());
        Ok(line)
    }

    async fn append(&mut self, mailbox: &ImapMailbox<'_>, flags: Vec<String>, date: Option<i64>, raw: Vec<u8>) -> Result<Done, ConnError> {
        let name = self.name_in(mailbox);
        let info = match self.find(&name).await {
            Ok(Some(i)) => i,
            Ok(None) => return Ok(Done::No(format!("[TRYCREATE] no mailbox {name}"))),
            Err(d) => return Ok(d),
        };
        if raw.is_empty() {
            return Ok(Done::No("An empty message cannot be appended".into()));
        }
        if flags.iter().any(|f| f.eq_ignore_ascii_case("\\Recent")) {
            return Ok(Done::Bad("\\Recent cannot be set".into()));
        }
        if let Some(refused) = self.check_quota(raw.len() as u64).await {
            return Ok(refused);
        }
        let keys = self.user().keys.clone();
        let mb = match self.open(&info.id, false).await {
            Ok(mb) => mb,
            Err(d) => return Ok(d),
        };
        let date = date.unwrap_or_else(|| chrono::Utc::now().timestamp());
        // Mail is CRLF on the wire: bare LFs become CRLF, as in LMTP (and
        // as Dovecot stores them).
        let raw = crlf(raw);
        let (id, _) = match message::store_message(&self.imap.store, &keys, &info.id, &raw, date).await {
            Ok(x) => x,
            Err(e) => return Ok(e.into()),
        };
        self.imap.mail.usage.add(&keys.user, raw.len() as u64);
        drop(raw);
        let op = (rand::random(), Op::Append { message: id, flags });
        let (outcome, shown) = match self.imap.mail.submit_shown(&keys, &info.id, vec![op]).await {
            Ok(o) => o,
            Err(e) => return Ok(e.into()),
        };
        let uidvalidity = mb.with_view(|v| v.map_or(0, |i| i.uidvalidity)).await;
        if self.selected.as_ref().is_some_and(|s| s.info.id == info.id) {
            self.catch_up(shown).await;
            self.sync(true, None).await?;
        }
        Ok(match outcome.first().and_then(|o| o.uid) {
            Some(uid) => Done::Ok(format!("[APPENDUID {uidvalidity} {uid}] APPEND completed")),
            None => Done::Ok("APPEND completed".into()),
        })
    }

    /// (seq, uid) of the client's view that `set` names.
    fn resolve(&self, set: &SequenceSet, uid: bool) -> Vec<(u32, Uid)> {
        let Some(sel) = &self.selected else { return vec![] };
        let max_uid = sel.uids.last().copied().unwrap_or(0);
        let max_seq = sel.uids.len() as u32;
        let ivs = search::Intervals::new(set, if uid { max_uid } else { max_seq });
        sel.uids
            .iter()
            .enumerate()
            .filter(|(i, u)| if uid { ivs.contains(**u) } else { ivs.contains(*i as u32 + 1) })
            .map(|(i, u)| (i as u32 + 1, *u))
            .collect()
    }

    async fn fetch(
        &mut self,
        set: SequenceSet,
        items: MacroOrMessageDataItemNames<'_>,
        uid: bool,
        modifiers: Vec<FetchModifier>,
    ) -> Result<Done, ConnError> {
        let items: Vec<MessageDataItemName<'_>> = match items {
            MacroOrMessageDataItemNames::Macro(m) => m.expand().into_iter().map(|i| i.into_static()).collect(),
            MacroOrMessageDataItemNames::MessageDataItemNames(v) => v,
        };
        if items.iter().any(|i| matches!(i, MessageDataItemName::Binary { .. } | MessageDataItemName::BinarySize { .. })) {
            return Ok(Done::Bad("BINARY is not supported".into()));
        }
        let mut changed_since = None;
        let mut vanished = false;
        for m in &modifiers {
            match m {
                FetchModifier::ChangedSince(n) => changed_since = Some(n.get()),
                FetchModifier::Vanished => vanished = true,
            }
        }
        if vanished && !(uid && self.enabled.qresync && changed_since.is_some()) {
            return Ok(Done::Bad("VANISHED needs UID FETCH, QRESYNC enabled and CHANGEDSINCE".into()));
        }
        if changed_since.is_some() || items.iter().any(|i| matches!(i, MessageDataItemName::ModSeq)) {
            self.enable_condstore().await?;
        }
        let targets = self.resolve(&set, uid);
        let Some(sel) = self.selected.as_ref() else { return Ok(Done::Bad("No mailbox selected".into())) };
        let (mb, mailbox, read_only) = (sel.mb.clone(), sel.info.id.clone(), sel.read_only);
        let keys = self.user().keys.clone();
        if vanished {
            let since = changed_since.unwrap_or(0);
            let max = sel.uids.last().copied().unwrap_or(0);
            let gone: Vec<Uid> = mb
                .with_view(|v| {
                    let ivs = search::Intervals::new(&set, max);
                    v.map(|i| i.vanished_since(since).filter(|u| ivs.contains(*u)).collect()).unwrap_or_default()
                })
                .await;
            if !gone.is_empty() {
                self.conn.write(format!("* VANISHED (EARLIER) {}\r\n", uid_set(&gone)).as_bytes()).await?;
            }
        }
        // Implicit \Seen first, so the FLAGS shown include it.
        let mut show_flags = false;
        if fetch::sets_seen(&items) && !read_only {
            let unseen: Vec<Uid> = mb
                .with_view(|v| {
                    v.map(|i| targets.iter().filter(|(_, u)| i.get(*u).is_some_and(|m| m.flags & 1 == 0)).map(|(_, u)| *u).collect())
                        .unwrap_or_default()
                })
                .await;
            if !unseen.is_empty() {
                let op = Op::Store { uids: unseen, mode: FlagMode::Add, flags: vec!["\\Seen".into()], unchanged_since: None };
                match self.imap.mail.submit_shown(&keys, &mailbox, vec![(rand::random(), op)]).await {
                    Ok((_, shown)) => self.catch_up(shown).await,
                    Err(e) => return Ok(e.into()),
                }
                show_flags = true;
            }
        }
        let recent = self.selected.as_ref().map(|s| s.recent.clone()).unwrap_or_default();
        let rows: Vec<Row> = mb
            .with_view(|v| {
                let Some(idx) = v else { return vec![] };
                targets
                    .iter()
                    .filter_map(|(seq, u)| {
                        let m = idx.get(*u)?;
                        if changed_since.is_some_and(|c| m.modseq <= c) {
                            return None;
                        }
                        Some(Row { seq: *seq, uid: *u, id: m.id, flags: shown_flags(&recent, *u, idx.flag_names(m.flags)), modseq: m.modseq })
                    })
                    .collect()
            })
            .await;
        self.announce_flags().await?;
        let mut items = items;
        if show_flags && !items.iter().any(|i| matches!(i, MessageDataItemName::Flags)) {
            items.push(MessageDataItemName::Flags);
        }
        // Once CONDSTORE is on, every untagged FETCH carries MODSEQ.
        let opts = fetch::Options { uid, modseq: self.enabled.condstore };
        let mut failed = 0;
        let ids: Vec<u64> = rows.iter().map(|r| r.id).collect();
        let mut metas = std::pin::pin!(fetch::metas(self.imap.store.clone(), keys.clone(), mailbox.clone(), ids, fetch::needs_meta(&items)));
        for row in &rows {
            let meta = match metas.next().await {
                Some(Ok(m)) => m,
                Some(Err(e)) => {
                    log::warn!("FETCH of UID {}: {e}", row.uid);
                    failed += 1;
                    continue;
                }
                None => None,
            };
            match fetch::write_row(&mut self.conn, &self.imap.store, &keys, &mailbox, row, &items, &opts, meta).await {
                Ok(()) => {}
                Err(fetch::FetchError::Storage(e)) => {
                    log::warn!("FETCH of UID {}: {e}", row.uid);
                    failed += 1;
                }
                Err(fetch::FetchError::Conn(e)) => return Err(e),
            }
        }
        if show_flags {
            // The \Seen change was shown in the rows.
            if let Some(sel) = self.selected.as_mut() {
                sel.told_modseq = sel.mb.with_view(|v| v.map_or(0, |i| i.highestmodseq)).await.max(sel.told_modseq);
            }
        }
        self.sync(false, None).await?;
        if failed > 0 {
            return Ok(Done::No(format!("[UNAVAILABLE] {failed} message(s) could not be read; try again")));
        }
        Ok(Done::Ok(if uid { "UID FETCH completed" } else { "FETCH completed" }.into()))
    }

    async fn store(
        &mut self,
        set: SequenceSet,
        kind: StoreType,
        response: StoreResponse,
        flags: Vec<Flag<'_>>,
        uid: bool,
        modifiers: Vec<StoreModifier>,
    ) -> Result<Done, ConnError> {
        let Some(sel) = self.selected.as_ref() else { return Ok(Done::Bad("No mailbox selected".into())) };
        if sel.read_only {
            return Ok(Done::No("[READ-ONLY] Mailbox is read-only".into()));
        }
        let flags: Vec<String> = flags.iter().map(flag_name).collect();
        if flags.iter().any(|f| f.eq_ignore_ascii_case("\\Recent")) {
            return Ok(Done::Bad("\\Recent cannot be changed".into()));
        }
        let unchanged_since = modifiers.iter().map(|StoreModifier::UnchangedSince(n)| *n).next();
        if unchanged_since.is_some() {
            self.enable_condstore().await?;
        }
        let targets = self.resolve(&set, uid);
        let Some(sel) = self.selected.as_ref() else { return Ok(Done::Bad("No mailbox selected".into())) };
        let (mb, mailbox) = (sel.mb.clone(), sel.info.id.clone());
        let keys = self.user().keys.clone();
        let mode = match kind {
            StoreType::Add => FlagMode::Add,
            StoreType::Remove => FlagMode::Remove,
            StoreType::Replace => FlagMode::Replace,
        };
        let uids: Vec<Uid> = targets.iter().map(|(_, u)| *u).collect();
        if uids.is_empty() {
            self.sync(false, None).await?;
            return Ok(Done::Ok("STORE completed".into()));
        }
        let op = Op::Store { uids: uids.clone(), mode, flags, unchanged_since };
        let outcome = match self.imap.mail.submit_shown(&keys, &mailbox, vec![(rand::random(), op)]).await {
            Ok((mut o, shown)) => {
                self.catch_up(shown).await;
                o.pop()
            }
            Err(e) => return Ok(e.into()),
        };
        let silent = matches!(response, StoreResponse::Silent);
        let modified = outcome.as_ref().map(|o| o.modified.clone()).unwrap_or_default();
        let told: std::collections::HashSet<Uid> =
            self.sync(false, if silent { outcome.as_ref().map(|o| o.modseq) } else { None }).await?.into_iter().collect();
        let modified_set: std::collections::HashSet<Uid> = modified.iter().copied().collect();
        if !silent {
            // Messages the STORE targeted but did not change still get
            // their FLAGS (RFC 3501 §6.4.6).
            self.announce_flags().await?;
            let condstore = self.enabled.condstore;
            let recent = self.selected.as_ref().map(|s| s.recent.clone()).unwrap_or_default();
            let rest: Vec<u8> = mb
                .with_view(|v| {
                    let mut out = vec![];
                    let Some(idx) = v else { return out };
                    for (seq, u) in &targets {
                        if told.contains(u) || modified_set.contains(u) {
                            continue;
                        }
                        if let Some(m) = idx.get(*u) {
                            out.extend_from_slice(format!("* {seq} FETCH (UID {u} FLAGS (").as_bytes());
                            out.extend_from_slice(shown_flags(&recent, *u, idx.flag_names(m.flags)).join(" ").as_bytes());
                            out.push(b')');
                            if condstore {
                                out.extend_from_slice(format!(" MODSEQ ({})", m.modseq).as_bytes());
                            }
                            out.extend_from_slice(b")\r\n");
                        }
                    }
                    out
                })
                .await;
            self.conn.write(&rest).await?;
        }
        if !modified.is_empty() {
            let shown: Vec<String> = if uid {
                vec![uid_set(&modified)]
            } else {
                let seqs: Vec<u32> = targets.iter().filter(|(_, u)| modified_set.contains(u)).map(|(s, _)| *s).collect();
                vec![uid_set(&seqs)]
            };
            return Ok(Done::Ok(format!("[MODIFIED {}] Conditional STORE failed for some messages", shown[0])));
        }
        Ok(Done::Ok(if uid { "UID STORE completed" } else { "STORE completed" }.into()))
    }

    async fn expunge_deleted(&mut self, set: Option<SequenceSet>, respond: bool) -> Result<Done, ConnError> {
        let Some(sel) = self.selected.as_ref() else { return Ok(Done::Bad("No mailbox selected".into())) };
        if sel.read_only {
            return Ok(Done::No("[READ-ONLY] Mailbox is read-only".into()));
        }
        let within: Option<std::collections::HashSet<Uid>> =
            set.as_ref().map(|s| self.resolve(s, true).into_iter().map(|(_, u)| u).collect());
        let Some(sel) = self.selected.as_ref() else { return Ok(Done::Bad("No mailbox selected".into())) };
        let (mb, mailbox) = (sel.mb.clone(), sel.info.id.clone());
        let known = sel.uids.clone();
        let keys = self.user().keys.clone();
        let doomed: Vec<Uid> = mb
            .with_view(|v| {
                let Some(idx) = v else { return vec![] };
                known
                    .iter()
                    .filter(|u| within.as_ref().is_none_or(|w| w.contains(u)))
                    .filter(|u| idx.get(**u).is_some_and(|m| m.flags & 8 != 0))
                    .copied()
                    .collect()
            })
            .await;
        if !doomed.is_empty() {
            let ids: Vec<u64> = mb.with_view(|v| v.map(|i| doomed.iter().filter_map(|u| i.get(*u).map(|m| m.id)).collect()).unwrap_or_default()).await;
            let op = Op::Expunge { uids: doomed };
            match self.imap.mail.submit_shown(&keys, &mailbox, vec![(rand::random(), op)]).await {
                Ok((_, shown)) => self.catch_up(shown).await,
                Err(e) => return Ok(e.into()),
            }
            // What they occupied no longer counts against the quota.
            let mut freed = 0u64;
            let mut metas = std::pin::pin!(fetch::metas(self.imap.store.clone(), keys.clone(), mailbox.clone(), ids, true));
            while let Some(m) = metas.next().await {
                freed += m.ok().flatten().map_or(0, |m| m.size);
            }
            self.imap.mail.usage.remove(&keys.user, freed);
        }
        if respond {
            self.sync(true, None).await?;
        }
        Ok(Done::Ok("EXPUNGE completed".into()))
    }

    async fn copy(&mut self, set: SequenceSet, target: &ImapMailbox<'_>, uid: bool, mv: bool) -> Result<Done, ConnError> {
        let word = if mv { "MOVE" } else { "COPY" };
        let name = self.name_in(target);
        let dest = match self.find(&name).await {
            Ok(Some(i)) => i,
            Ok(None) => return Ok(Done::No(format!("[TRYCREATE] no mailbox {name}"))),
            Err(d) => return Ok(d),
        };
        let targets = self.resolve(&set, uid);
        let Some(sel) = self.selected.as_ref() else { return Ok(Done::Bad("No mailbox selected".into())) };
        if mv && sel.read_only {
            return Ok(Done::No("[READ-ONLY] Mailbox is read-only".into()));
        }
        let (mb, source) = (sel.mb.clone(), sel.info.id.clone());
        let keys = self.user().keys.clone();
        let msgs: Vec<(Uid, u64, Vec<String>)> = mb
            .with_view(|v| {
                let Some(idx) = v else { return vec![] };
                targets.iter().filter_map(|(_, u)| idx.get(*u).map(|m| (*u, m.id, idx.flag_names(m.flags)))).collect()
            })
            .await;
        if msgs.is_empty() {
            return Ok(Done::Ok(format!("{word} completed (nothing to do)")));
        }
        let dest_mb = match self.open(&dest.id, false).await {
            Ok(m) => m,
            Err(d) => return Ok(d),
        };
        if !mv && self.quota().is_some() {
            // A copy counts against the quota like the original (as in
            // Dovecot); a move changes nothing. The sizes are known once
            // the metadata is copied, so the check is before, on the sum
            // (read only when there is a quota to check).
            let ids: Vec<u64> = msgs.iter().map(|m| m.1).collect();
            let mut total = 0u64;
            let mut metas = std::pin::pin!(fetch::metas(self.imap.store.clone(), keys.clone(), source.clone(), ids, true));
            while let Some(m) = metas.next().await {
                match m {
                    Ok(m) => total += m.map_or(0, |m| m.size),
                    Err(e) => return Ok(e.into()),
                }
            }
            if let Some(refused) = self.check_quota(total).await {
                return Ok(refused);
            }
        }
        let mut ops = vec![];
        let mut copied = 0u64;
        for (_, id, flags) in &msgs {
            match message::copy_message(&self.imap.store, &keys, &source, &dest.id, *id).await {
                Ok(Some(size)) => {
                    copied += size;
                    ops.push((rand::random(), Op::Append { message: *id, flags: flags.clone() }))
                }
                Ok(None) => {}
                Err(e) => return Ok(e.into()),
            }
        }
        let (outcomes, shown) = match self.imap.mail.submit_shown(&keys, &dest.id, ops).await {
            Ok(o) => o,
            Err(e) => return Ok(e.into()),
        };
        if !mv {
            self.imap.mail.usage.add(&keys.user, copied);
        }
        let uidvalidity = dest_mb.with_view(|v| v.map_or(0, |i| i.uidvalidity)).await;
        let src: Vec<Uid> = msgs.iter().map(|m| m.0).collect();
        let dst: Vec<Uid> = outcomes.iter().filter_map(|o| o.uid).collect();
        // COPYUID lists pairs in order: keep both lists as they came.
        let list = |v: &[Uid]| v.iter().map(|u| u.to_string()).collect::<Vec<_>>().join(",");
        let code = format!("[COPYUID {uidvalidity} {} {}]", list(&src), list(&dst));
        if self.selected.as_ref().is_some_and(|s| s.info.id == dest.id) {
            self.catch_up(shown).await;
        }
        if mv {
            self.conn.write(format!("* OK {code} Moved\r\n").as_bytes()).await?;
            let op = Op::Expunge { uids: src };
            match self.imap.mail.submit_shown(&keys, &source, vec![(rand::random(), op)]).await {
                Ok((_, shown)) => self.catch_up(shown).await,
                Err(e) => {
                    // The copy stands (the client will see it twice, not lose it).
                    self.imap.mail.usage.add(&keys.user, copied);
                    return Ok(e.into());
                }
            }
            self.sync(true, None).await?;
            return Ok(Done::Ok(format!("{word} completed")));
        }
        self.sync(false, None).await?;
        Ok(Done::Ok(format!("{code} {word} completed")))
    }

    /// The selected mailbox's messages that match `key`, in mailbox order:
    /// (sequence number, UID, MODSEQ, message id). SEARCH and SORT share it.
    async fn matching(&mut self, key: &SearchKey<'_>) -> Result<Vec<(u32, Uid, ModSeq, u64)>, Done> {
        let needs = search::needs(key);
        let Some(sel) = self.selected.as_ref() else { return Err(Done::Bad("No mailbox selected".into())) };
        let (mb, mailbox) = (sel.mb.clone(), sel.info.id.clone());
        let known = sel.uids.clone();
        let recent = sel.recent.clone();
        let keys = self.user().keys.clone();
        let rows: Vec<(u32, Uid, u64, Vec<String>, ModSeq)> = mb
            .with_view(|v| {
                let Some(idx) = v else { return vec![] };
                known
                    .iter()
                    .enumerate()
                    .filter_map(|(i, u)| idx.get(*u).map(|m| (i as u32 + 1, *u, m.id, shown_flags(&recent, *u, idx.flag_names(m.flags)), m.modseq)))
                    .collect()
            })
            .await;
        let scope = Scope::new(known.len() as u32, known.last().copied().unwrap_or(0), chrono::Utc::now().timestamp());
        let mut hits: Vec<(u32, Uid, ModSeq, u64)> = vec![];
        // Reads (metadata, and bodies for BODY/TEXT) run ahead of the
        // matching, several at a time; decoding happens on the way.
        let loads = {
            let (store, keys, mailbox) = (self.imap.store.clone(), keys.clone(), mailbox.clone());
            futures::stream::iter(rows.iter().map(|r| r.2).collect::<Vec<_>>())
                .map(move |id| {
                    let (store, keys, mailbox) = (store.clone(), keys.clone(), mailbox.clone());
                    async move {
                        let meta = if needs.meta { message::message_meta(&store, &keys, &mailbox, id).await? } else { None };
                        let header = meta.as_ref().filter(|_| !needs.text).map(|m| search::decode_header(&m.header));
                        let text = if needs.text {
                            fetch::read_all(&store, &keys, &mailbox, id)
                                .await?
                                .map(|raw| search::decode_message(&raw, needs.headers || needs.meta))
                        } else {
                            None
                        };
                        Ok::<_, StorageError>((meta, header, text))
                    }
                })
                .buffered(if needs.text { 8 } else { fetch::PREFETCH })
        };
        let mut loads = std::pin::pin!(loads);
        for (seq, u, id, flags, modseq) in &rows {
            let (meta, header, text) = match loads.next().await {
                Some(Ok(x)) => x,
                Some(Err(e)) => return Err(e.into()),
                None => (None, None, None),
            };
            let c = Candidate {
                seq: *seq,
                uid: *u,
                flags,
                modseq: *modseq,
                meta: meta.as_ref(),
                header: header.as_ref().or(text.as_ref()),
                text: text.as_ref(),
            };
            if search::matches(key, &c, &scope) {
                hits.push((*seq, *u, *modseq, *id));
            }
        }
        Ok(hits)
    }

    /// SORT and UID SORT (RFC 5256, RFC 5957 DISPLAY): the messages SEARCH
    /// would find, ordered by the criteria from their stored metadata.
    async fn sort(
        &mut self,
        criteria: Vec1<imap_codec::imap_types::extensions::sort::SortCriterion>,
        charset: imap_codec::imap_types::core::Charset<'_>,
        search_criteria: Vec1<SearchKey<'_>>,
        uid: bool,
    ) -> Result<Done, ConnError> {
        if let Some(no) = unsupported_charset(Some(&charset)) {
            return Ok(no);
        }
        let key = SearchKey::And(search_criteria);
        let hits = match self.matching(&key).await {
            Ok(h) => h,
            Err(d) => return Ok(d),
        };
        let Some(sel) = self.selected.as_ref() else { return Ok(Done::Bad("No mailbox selected".into())) };
        let mailbox = sel.info.id.clone();
        let keys = self.user().keys.clone();
        let ids: Vec<u64> = hits.iter().map(|h| h.3).collect();
        let mut metas = std::pin::pin!(fetch::metas(self.imap.store.clone(), keys, mailbox, ids, true));
        let mut rows = Vec::with_capacity(hits.len());
        for h in &hits {
            let k = match metas.next().await {
                Some(Ok(Some(m))) => sort::keys(&m),
                Some(Ok(None)) | None => sort::Keys::default(),
                Some(Err(e)) => return Ok(e.into()),
            };
            rows.push((if uid { h.1 } else { h.0 }, k));
        }
        sort::sort(&mut rows, criteria.as_ref());
        let mut line = String::from("* SORT");
        for (n, _) in &rows {
            line.push_str(&format!(" {n}"));
        }
        line.push_str("\r\n");
        self.conn.write(line.as_bytes()).await?;
        self.sync(uid, None).await?;
        Ok(Done::Ok(if uid { "UID SORT completed" } else { "SORT completed" }.into()))
    }

    async fn search(
        &mut self,
        tag: &str,
        charset: Option<imap_codec::imap_types::core::Charset<'_>>,
        criteria: Vec1<SearchKey<'_>>,
        uid: bool,
        extras: &Extras,
    ) -> Result<Done, ConnError> {
        if let Some(no) = unsupported_charset(charset.as_ref()) {
            return Ok(no);
        }
        let key = SearchKey::And(criteria);
        let hits = match self.matching(&key).await {
            Ok(h) => h,
            Err(d) => return Ok(d),
        };
        let uses_modseq = format!("{key:?}").contains("ModSequence");
        if uses_modseq {
            self.enable_condstore().await?;
        }
        let numbers: Vec<u32> = hits.iter().map(|(s, u, _, _)| if uid { *u } else { *s }).collect();
        let max_modseq = hits.iter().map(|h| h.2).max();
        let modseq_of = |n: u32| hits.iter().find(|h| (if uid { h.1 } else { h.0 }) == n).map(|h| h.2);
        // IMAP4rev2 answers SEARCH with ESEARCH (RFC 9051 §6.4.4), ALL
        // when no RETURN options were given.
        let search_return = match &extras.search_return {
            None if self.enabled.rev2 => Some(vec![]),
            other => other.clone(),
        };
        match &search_return {
            Some(opts) => {
                let opts: Vec<&str> = if opts.is_empty() { vec!["ALL"] } else { opts.iter().map(String::as_str).collect() };
                if opts.contains(&"SAVE") {
                    self.saved = hits.iter().map(|h| h.1).collect();
                }
                let mut line = format!("* ESEARCH (TAG \"{tag}\")");
                if uid {
                    line.push_str(" UID");
                }
                if !numbers.is_empty() {
                    for o in &opts {
                        match *o {
                            "MIN" => line.push_str(&format!(" MIN {}", numbers.iter().min().copied().unwrap_or(0))),
                            "MAX" => line.push_str(&format!(" MAX {}", numbers.iter().max().copied().unwrap_or(0))),
                            "ALL" => line.push_str(&format!(" ALL {}", uid_set(&numbers))),
                            _ => {}
                        }
                    }
                }
                if opts.contains(&"COUNT") {
                    line.push_str(&format!(" COUNT {}", numbers.len()));
                }
                if uses_modseq {
                    // RFC 4731 §3.2: with only MIN and/or MAX, the MODSEQ of
                    // the message(s) returned; otherwise the highest of all.
                    let only_ends = !opts.iter().any(|o| matches!(*o, "ALL" | "COUNT"))
                        && opts.iter().any(|o| matches!(*o, "MIN" | "MAX"));
                    let m = if only_ends {
                        let mut ends = vec![];
                        if opts.contains(&"MIN") {
                            ends.extend(numbers.iter().min().and_then(|n| modseq_of(*n)));
                        }
                        if opts.contains(&"MAX") {
                            ends.extend(numbers.iter().max().and_then(|n| modseq_of(*n)));
                        }
                        ends.into_iter().max()
                    } else {
                        max_modseq
                    };
                    if let Some(m) = m {
                        line.push_str(&format!(" MODSEQ {m}"));
                    }
                }
                // SAVE alone gives no ESEARCH response (RFC 5182 §2.4).
                if !(opts.len() == 1 && opts[0] == "SAVE") {
                    line.push_str("\r\n");
                    self.conn.write(line.as_bytes()).await?;
                }
            }
            None => {
                let mut line = "* SEARCH".to_string();
                for n in &numbers {
                    line.push_str(&format!(" {n}"));
                }
                if uses_modseq {
                    if let Some(m) = max_modseq {
                        line.push_str(&format!(" (MODSEQ {m})"));
                    }
                }
                line.push_str("\r\n");
                self.conn.write(line.as_bytes()).await?;
            }
        }
        self.sync(uid, None).await?;
        Ok(Done::Ok(if uid { "UID SEARCH completed" } else { "SEARCH completed" }.into()))
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
