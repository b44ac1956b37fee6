//! LMTP front end (RFC 2033): what Postfix (or any MTA) delivers to.
//!
//! Per-recipient replies after DATA; 250 only once the message is in a
//! write quorum (sealed to the recipient, in the incoming queue); 451 on
//! any transient storage error, never 5xx for those; 550 5.1.1 for unknown
//! recipients at RCPT; 552 for oversized mail; over quota 452 4.2.2
//! (552 5.2.2 for a message larger than the whole quota). Lines, messages, recipients
//! per transaction, connections and idle time are all bounded. This module
//! turns protocol into calls on the accounts and mail layers and must not
//! know how mail is stored.

pub mod protocol;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::accounts::{keys as account_keys, Accounts};
use crate::mail::{incoming, MailService};
use crate::storage::{Store, UserId};
use protocol::{parse, Command};

#[derive(Clone, Debug)]
pub struct LmtpLimits {
    pub max_message: u64,
    pub max_line: usize,
    pub max_recipients: usize,
    pub max_connections: usize,
    pub idle_timeout: Duration,
}

impl Default for LmtpLimits {
    fn default() -> Self {
        LmtpLimits {
            max_message: 50 * 1024 * 1024,
            max_line: 4096,
            max_recipients: 100,
            max_connections: 200,
            idle_timeout: Duration::from_secs(300),
        }
    }
}

pub struct Lmtp {
    pub accounts: Arc<Accounts>,
    pub mail: Arc<MailService>,
    pub store: Store,
    pub hostname: String,
    pub limits: LmtpLimits,
}

struct Recipient {
    address: String,
    login: String,
    user: UserId,
    public: crate::crypto::PublicKey,
    quota: Option<u64>,
}

impl Lmtp {
    /// Accepts connections until the task is dropped.
    pub fn serve(self: Arc<Self>, listener: TcpListener) -> tokio::task::JoinHandle<()> {
        let slots = Arc::new(Semaphore::new(self.limits.max_connections));
        tokio::spawn(async move {
            loop {
                let Ok((mut stream, peer)) = listener.accept().await else { continue };
                let _ = stream.set_nodelay(true);
                let Ok(permit) = slots.clone().try_acquire_owned() else {
                    let _ = stream.write_all(b"421 4.3.2 too many connections, try again later\r\n").await;
                    continue;
                };
                let me = self.clone();
                tokio::spawn(async move {
                    // A panic in one session must not take the listener down.
                    let task = tokio::spawn(async move { me.session(stream, peer).await });
                    if let Err(e) = task.await {
                        log::error!("LMTP session from {peer} ended abnormally: {e}");
                    }
                    drop(permit);
                });
            }
        })
    }

    /// One LMTP session over any byte stream.
    pub async fn session<S: AsyncRead + AsyncWrite + Unpin>(&self, stream: S, peer: SocketAddr) {
        let (r, mut w) = tokio::io::split(stream);
        let mut r = BufReader::new(r);
        let mut out = Vec::new();
        let _ = w.write_all(format!("220 {} LMTP Estafette ready\r\n", self.hostname).as_bytes()).await;
        let mut lhlo: Option<String> = None;
        let mut from: Option<String> = None;
        let mut rcpts: Vec<Recipient> = vec![];
        let mut line = Vec::new();
        loop {
            // Replies to pipelined commands go out together, once the
            // client has nothing more buffered.
            if r.buffer().is_empty() && !out.is_empty() {
                if w.write_all(&out).await.is_err() {
                    return;
                }
                out.clear();
            }
            line.clear();
            match self.read_line(&mut r, &mut line).await {
                Ok(true) => {}
                Ok(false) => return,
                Err(reply) => {
                    out.extend_from_slice(reply.as_bytes());
                    let _ = w.write_all(&out).await;
                    return;
                }
            }
            let text = String::from_utf8_lossy(&line);
            let cmd = match parse(&text) {
                Ok(c) => c,
                Err(protocol::Reject(code, msg)) => {
                    out.extend_from_slice(format!("{code} {msg}\r\n").as_bytes());
                    continue;
                }
            };
            match cmd {
                Command::Lhlo(host) => {
                    lhlo = Some(host);
                    from = None;
                    rcpts.clear();
                    out.extend_from_slice(
                        format!(
                            "250-{}\r\n250-PIPELINING\r\n250-ENHANCEDSTATUSCODES\r\n250-8BITMIME\r\n250 SIZE {}\r\n",
                            self.hostname, self.limits.max_message
                        )
                        .as_bytes(),
                    );
                }
                Command::Helo => out.extend_from_slice(b"500 5.5.1 this is LMTP: say LHLO\r\n"),
                Command::Mail { from: f, size, .. } => {
                    if lhlo.is_none() {
                        out.extend_from_slice(b"503 5.5.1 LHLO first\r\n");
                    } else if from.is_some() {
                        out.extend_from_slice(b"503 5.5.1 nested MAIL command\r\n");
                    } else if size.is_some_and(|s| s > self.limits.max_message) {
                        out.extend_from_slice(
                            format!("552 5.3.4 message size exceeds the limit of {} bytes\r\n", self.limits.max_message).as_bytes(),
                        );
                    } else {
                        from = Some(f);
                        out.extend_from_slice(b"250 2.1.0 sender OK\r\n");
                    }
                }
                Command::Rcpt { to } => {
                    if from.is_none() {
                        out.extend_from_slice(b"503 5.5.1 MAIL first\r\n");
                    } else if rcpts.len() >= self.limits.max_recipients {
                        out.extend_from_slice(b"452 4.5.3 too many recipients\r\n");
                    } else {
                        out.extend_from_slice(self.recipient(&to, &mut rcpts).await.as_bytes());
                    }
                }
                Command::Data => {
                    if from.is_none() {
                        out.extend_from_slice(b"503 5.5.1 MAIL first\r\n");
                        continue;
                    }
                    if rcpts.is_empty() {
                        out.extend_from_slice(b"503 5.5.1 no valid recipients\r\n");
                        continue;
                    }
                    out.extend_from_slice(b"354 2.0.0 go ahead, end with <CRLF>.<CRLF>\r\n");
                    if w.write_all(&out).await.is_err() {
                        return;
                    }
                    out.clear();
                    let body = match self.read_data(&mut r).await {
                        Ok(b) => b,
                        Err(DataError::Closed) => return,
                        Err(DataError::TooBig) => {
                            for _ in &rcpts {
                                out.extend_from_slice(
                                    format!("552 5.3.4 message size exceeds the limit of {} bytes\r\n", self.limits.max_message)
                                        .as_bytes(),
                                );
                            }
                            from = None;
                            rcpts.clear();
                            continue;
                        }
                    };
                    let helo = lhlo.clone().unwrap_or_default();
                    let replies = self.deliver_all(&rcpts, &body, &helo, peer).await;
                    for reply in replies {
                        out.extend_from_slice(reply.as_bytes());
                    }
                    from = None;
                    rcpts.clear();
                }
                Command::Rset => {
                    from = None;
                    rcpts.clear();
                    out.extend_from_slice(b"250 2.0.0 reset\r\n");
                }
                Command::Noop => out.extend_from_slice(b"250 2.0.0 OK\r\n"),
                Command::Vrfy => out.extend_from_slice(b"252 2.5.0 cannot VRFY; send the mail and see\r\n"),
                Command::Help => out.extend_from_slice(b"214 2.0.0 LHLO MAIL RCPT DATA RSET NOOP QUIT\r\n"),
                Command::Quit => {
                    out.extend_from_slice(format!("221 2.0.0 {} closing\r\n", self.hostname).as_bytes());
                    let _ = w.write_all(&out).await;
                    let _ = w.shutdown().await;
                    return;
                }
            }
        }
    }

    /// Reads one command line; Ok(false) at end of stream; Err(reply) for
    /// an over-long line or an idle timeout (the reply ends the session).
    async fn read_line<R: tokio::io::AsyncBufRead + Unpin>(&self, r: &mut R, line: &mut Vec<u8>) -> Result<bool, String> {
        let limit = self.limits.max_line;
        let read = async {
            loop {
                let buf = r.fill_buf().await.map_err(|_| String::new())?;
                if buf.is_empty() {
                    return Ok(!line.is_empty());
                }
                let (take, done) = match buf.iter().position(|b| *b == b'\n') {
                    Some(i) => (i + 1, true),
                    None => (buf.len(), false),
                };
                line.extend_from_slice(&buf[..take]);
                r.consume(take);
                if line.len() > limit {
                    return Err("500 5.5.6 line too long\r\n".to_string());
                }
                if done {
                    return Ok(true);
                }
            }
        };
        match tokio::time::timeout(self.limits.idle_timeout, read).await {
            Ok(Ok(b)) => Ok(b),
            Ok(Err(reply)) if reply.is_empty() => Ok(false),
            Ok(Err(reply)) => Err(reply),
            Err(_) => Err("421 4.4.2 idle for too long, closing\r\n".into()),
        }
    }

    async fn recipient(&self, to: &str, rcpts: &mut Vec<Recipient>) -> String {
        // 5xx only for what the directory, read at quorum, does not have:
        // while this node cannot know, the MTA is told to retry.
        if !self.accounts.is_ready() {
            return format!("451 4.3.0 <{to}>: this node is starting (user directory not loaded yet), try again later\r\n");
        }
        let user = match self.accounts.directory().resolve_address(to).await {
            Ok(Some(user)) => user,
            Ok(None) => return format!("550 5.1.1 <{to}>: no such user here\r\n"),
            Err(e) => {
                log::warn!("LMTP: looking up <{to}>: {e}");
                return format!("451 4.3.0 <{to}>: user directory unavailable, try again later\r\n");
            }
        };
        let uid = user.id;
        let quota = user.quota_bytes();
        if let Some(q) = quota {
            // Already full: RFC 3463 X.2.2 is a persistent transient
            // failure (the user can make room), so 4xx and the MTA retries.
            match self.mail.usage.current(&uid).await {
                Ok(used) if used >= q => return format!("452 4.2.2 <{to}>: mailbox full\r\n"),
                Ok(_) => {}
                Err(e) => {
                    log::warn!("LMTP: reading the usage of <{to}>: {e}");
                    return "451 4.3.0 temporary storage failure, try again later\r\n".into();
                }
            }
        }
        match account_keys::public_key(&self.store, &uid).await {
            Ok(Some(public)) => {
                rcpts.push(Recipient {
                    address: to.to_string(),
                    login: user.login,
                    user: uid,
                    public,
                    quota,
                });
                "250 2.1.5 recipient OK\r\n".into()
            }
            Ok(None) => format!("451 4.3.0 <{to}>: mailbox not ready, try again later\r\n"),
            Err(e) => {
                log::warn!("LMTP: looking up the key of <{to}>: {e}");
                "451 4.3.0 temporary storage failure, try again later\r\n".into()
            }
        }
    }

    async fn read_data<R: tokio::io::AsyncBufRead + Unpin>(&self, r: &mut R) -> Result<Vec<u8>, DataError> {
        let mut body = Vec::new();
        let mut too_big = false;
        let mut line = Vec::new();
        loop {
            line.clear();
            // Data lines may be long (RFC 5321 asks for 1000; real mail
            // breaks it): bound them by the message limit instead.
            let n = tokio::time::timeout(self.limits.idle_timeout, r.read_until(b'\n', &mut line))
                .await
                .map_err(|_| DataError::Closed)?
                .map_err(|_| DataError::Closed)?;
            if n == 0 {
                return Err(DataError::Closed);
            }
            match protocol::data_line(&line) {
                None => break,
                Some(l) => {
                    if too_big || body.len() as u64 + l.len() as u64 > self.limits.max_message {
                        too_big = true; // keep reading to the end, store nothing
                        body = Vec::new();
                    } else {
                        body.extend_from_slice(&l);
                    }
                }
            }
        }
        if too_big {
            Err(DataError::TooBig)
        } else {
            Ok(body)
        }
    }

    /// Delivers to every recipient concurrently; one reply each, in order.
    async fn deliver_all(&self, rcpts: &[Recipient], body: &[u8], helo: &str, peer: SocketAddr) -> Vec<String> {
        let now = chrono::Utc::now();
        let date = &now.to_rfc2822();
        let results = futures::future::join_all(rcpts.iter().map(|r| async move {
            let id: u64 = rand::random();
            let mut msg = format!(
                "Delivered-To: {}\r\nReceived: from {} ({}) by {} (Estafette) with LMTP id {:016x} for <{}>; {}\r\n",
                r.address,
                helo.replace(['\r', '\n'], ""),
                peer.ip(),
                self.hostname,
                id,
                r.address,
                date
            )
            .into_bytes();
            msg.extend_from_slice(body);
            if let Some(q) = r.quota {
                let size = msg.len() as u64;
                if size > q {
                    // It can never fit: a permanent failure.
                    return format!("552 5.2.2 <{}>: message larger than the mailbox quota\r\n", r.address);
                }
                match self.mail.usage.current(&r.user).await {
                    Ok(used) if used + size > q => return format!("452 4.2.2 <{}>: mailbox full\r\n", r.address),
                    Ok(_) => {}
                    Err(e) => {
                        log::warn!("LMTP: reading the usage of <{}>: {e}", r.address);
                        return "451 4.3.0 temporary storage failure, try again later\r\n".to_string();
                    }
                }
            }
            // The recipient has a session here: the message goes into INBOX
            // now, without being read back from the queue.
            let keys = self.accounts.active_keys(&r.login);
            match incoming::deliver(&self.store, &r.user, &r.public, &msg, now.timestamp(), keys.as_ref(), self.mail.node_slot()).await {
                Ok(delivered) => {
                    self.mail.usage.add(&r.user, msg.len() as u64);
                    match keys {
                        Some(keys) => {
                            let mail = self.mail.clone();
                            tokio::spawn(async move {
                                if delivered.prepared {
                                    if let Err(e) = incoming::file_delivered(&mail, &keys, delivered.message).await {
                                        log::warn!("filing a delivery: {e}");
                                    }
                                }
                                mail.file_queued(keys);
                            });
                        }
                        // Else whichever node holds their keys (if any) files it.
                        None => self.mail.incoming_for(&r.user),
                    }
                    "250 2.0.0 delivered\r\n".to_string()
                }
                Err(e) => {
                    log::warn!("LMTP delivery to <{}> failed: {e}", r.address);
                    "451 4.3.0 temporary storage failure, try again later\r\n".to_string()
                }
            }
        }))
        .await;
        results
    }
}

enum DataError {
    Closed,
    TooBig,
}
