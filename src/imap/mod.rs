//! IMAP front end (IMAP4rev1 and IMAP4rev2 with the first wave of
//! extensions of DESIGN §5): listeners, TLS, one task per connection.
//!
//! Commands are parsed by imap-codec (framing by its Fragmentizer, with
//! our limits); responses are rendered here so that bodies stream from
//! storage. Everything a session does goes through the mail and accounts
//! layers: this module must not touch storage partitions, keys or the
//! log format itself.

mod address;
mod conn;
mod extended;
mod fetch;
#[doc(hidden)]
pub mod fuzzing;
mod render;
mod search;
mod sections;
mod session;
mod sort;
mod thread;
mod tls;
mod utf7;

pub use tls::{ensure_self_signed, load as load_tls, Certificate, TlsError};

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::accounts::Accounts;
use crate::mail::MailService;
use crate::storage::Store;
use conn::{Conn, FrameLimits, Stream};

#[derive(Clone, Debug)]
pub struct ImapLimits {
    /// APPENDLIMIT: the largest message APPEND accepts.
    pub max_message: u32,
    pub max_line: usize,
    /// Literals of other commands (mailbox names, search strings).
    pub max_literal: u32,
    pub max_connections: usize,
    /// Before authentication.
    pub login_timeout: Duration,
    /// Authenticated, including IDLE (RFC 9051 asks for at least 30 min).
    pub idle_timeout: Duration,
}

impl Default for ImapLimits {
    fn default() -> Self {
        ImapLimits {
            max_message: 50 * 1024 * 1024,
            max_line: 64 * 1024,
            max_literal: 64 * 1024,
            max_connections: 5000,
            login_timeout: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(30 * 60),
        }
    }
}

pub struct Imap {
    pub accounts: Arc<Accounts>,
    pub mail: Arc<MailService>,
    pub store: Store,
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Accept LOGIN/AUTHENTICATE without TLS (loopback listeners).
    pub plaintext_auth: bool,
    pub limits: ImapLimits,
}

impl Imap {
    /// Accepts connections until the task is dropped. `implicit_tls`: the
    /// listener is IMAPS (TLS from the first byte).
    pub fn serve(self: Arc<Self>, listener: TcpListener, implicit_tls: bool) -> tokio::task::JoinHandle<()> {
        let slots = Arc::new(Semaphore::new(self.limits.max_connections));
        tokio::spawn(async move {
            loop {
                let (sock, peer) = match listener.accept().await {
                    Ok(x) => x,
                    Err(e) => {
                        log::warn!("IMAP accept: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let _ = sock.set_nodelay(true);
                let Ok(permit) = slots.clone().try_acquire_owned() else {
                    // Over the limit: say so and close, costing nothing more.
                    tokio::spawn(async move {
                        use tokio::io::AsyncWriteExt;
                        let mut sock = sock;
                        let _ = sock.write_all(b"* BYE [UNAVAILABLE] Too many connections, try again later\r\n").await;
                    });
                    continue;
                };
                let me = self.clone();
                tokio::spawn(async move {
                    let _permit = permit;
                    // A panic in a session ends that session only: it is
                    // caught here, logged, and the connection dropped.
                    let run = std::panic::AssertUnwindSafe(me.connection(sock, peer, implicit_tls)).catch_unwind();
                    if run.await.is_err() {
                        log::error!("IMAP session from {peer} panicked; connection closed");
                    }
                });
            }
        })
    }

    async fn connection(self: Arc<Self>, sock: tokio::net::TcpStream, peer: SocketAddr, implicit_tls: bool) {
        let stream = if implicit_tls {
            let Some(cfg) = self.tls.clone() else { return };
            let accept = tokio_rustls::TlsAcceptor::from(cfg).accept(sock);
            match tokio::time::timeout(self.limits.login_timeout, accept).await {
                Ok(Ok(s)) => Stream::Tls(Box::new(s)),
                Ok(Err(e)) => {
                    log::debug!("TLS handshake with {peer}: {e}");
                    return;
                }
                Err(_) => return,
            }
        } else {
            Stream::Plain(sock)
        };
        let limits = FrameLimits {
            line: self.limits.max_line,
            literal: self.limits.max_literal,
            append: self.limits.max_message,
        };
        let conn = Conn::new(stream, limits);
        session::Session::new(self, conn, peer).run().await;
    }

    /// The capabilities a session can use now.
    fn capabilities(&self, tls: bool, authenticated: bool) -> String {
        let mut c = vec!["IMAP4rev1", "IMAP4rev2"];
        if !authenticated {
            if !tls && self.tls.is_some() {
                c.push("STARTTLS");
            }
            if tls || self.plaintext_auth {
                c.extend(["AUTH=PLAIN", "SASL-IR"]);
            } else {
                c.push("LOGINDISABLED");
            }
        }
        c.extend([
            "LITERAL+",
            "ENABLE",
            "ID",
            "IDLE",
            "NAMESPACE",
            "UNSELECT",
            "UIDPLUS",
            "MOVE",
            "CHILDREN",
            "SPECIAL-USE",
            "CREATE-SPECIAL-USE",
            "LIST-EXTENDED",
            "LIST-STATUS",
            "STATUS=SIZE",
            "CONDSTORE",
            "QRESYNC",
            "ESEARCH",
            "SEARCHRES",
            "SORT",
            "SORT=DISPLAY",
            "THREAD=ORDEREDSUBJECT",
            "WITHIN",
            "QUOTA",
            "QUOTA=RES-STORAGE",
        ]);
        let mut s = c.join(" ");
        s.push_str(&format!(" APPENDLIMIT={}", self.limits.max_message));
        s
    }
}
