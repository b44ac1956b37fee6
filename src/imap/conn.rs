//! One IMAP connection's bytes: the socket (plain, upgraded by STARTTLS,
//! or TLS from the first byte), framing of client messages with
//! imap-codec's Fragmentizer (lines and literals, with the limits
//! enforced as they arrive), and buffered writes. No IMAP semantics.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use imap_codec::fragmentizer::{FragmentInfo, Fragmentizer, LiteralAnnouncement};
use imap_codec::imap_types::core::LiteralMode;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufWriter, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

/// The socket, in whichever state TLS has it.
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
    /// Only during a STARTTLS handshake.
    Gone,
}

impl AsyncRead for Stream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Stream::Gone => Poll::Ready(Err(std::io::ErrorKind::NotConnected.into())),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Stream::Gone => Poll::Ready(Err(std::io::ErrorKind::NotConnected.into())),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Stream::Gone => Poll::Ready(Ok(())),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Stream::Gone => Poll::Ready(Ok(())),
        }
    }
}

/// Limits on what a client may send.
#[derive(Clone, Copy, Debug)]
pub struct FrameLimits {
    /// A command line (without literals).
    pub line: usize,
    /// A literal in any command but APPEND.
    pub literal: u32,
    /// The message literal of APPEND (APPENDLIMIT).
    pub append: u32,
}

/// What the next client message turned out to be.
pub enum Frame {
    /// A complete message (command, SASL response, DONE), literals inline.
    Message(Vec<u8>),
    /// A message that broke a limit; already answered if it had a tag.
    Refused { tag: Option<String>, reason: &'static str },
}

#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    #[error("connection closed")]
    Closed,
    #[error("idle for too long")]
    Timeout,
    #[error("command line longer than the limit")]
    LineTooLong,
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

pub struct Conn {
    io: BufWriter<Stream>,
    frag: Fragmentizer,
    limits: FrameLimits,
    /// Bytes fed to the fragmentizer since it last found a fragment while
    /// reading a line: the length of the line so far.
    line_so_far: usize,
    in_literal: bool,
    buf: Box<[u8]>,
    pub tls: bool,
}

impl Conn {
    pub fn new(stream: Stream, limits: FrameLimits) -> Self {
        let tls = matches!(stream, Stream::Tls(_));
        Conn {
            // Small buffers: most connections sit idle (memory per idle
            // connection is what 1000s of clients cost); bulk writes (FETCH
            // bodies) bypass the buffer anyway.
            io: BufWriter::with_capacity(8 * 1024, stream),
            frag: Fragmentizer::new(limits.append.saturating_add(limits.line as u32)),
            limits,
            line_so_far: 0,
            in_literal: false,
            buf: vec![0; 4 * 1024].into_boxed_slice(),
            tls,
        }
    }

    pub async fn write(&mut self, bytes: &[u8]) -> Result<(), ConnError> {
        Ok(self.io.write_all(bytes).await?)
    }

    pub async fn flush(&mut self) -> Result<(), ConnError> {
        Ok(self.io.flush().await?)
    }

    /// Upgrades the plain socket to TLS (STARTTLS). Bytes the client sent
    /// after the STARTTLS line are dropped, as RFC 3501 §6.2.1 requires
    /// (they would otherwise be an injection into the TLS session).
    pub async fn start_tls(&mut self, config: Arc<rustls::ServerConfig>) -> Result<(), ConnError> {
        self.io.flush().await?;
        let stream = std::mem::replace(self.io.get_mut(), Stream::Gone);
        let Stream::Plain(tcp) = stream else {
            *self.io.get_mut() = stream;
            return Err(ConnError::Io(std::io::Error::other("TLS is already active")));
        };
        let tls = tokio_rustls::TlsAcceptor::from(config).accept(tcp).await?;
        *self.io.get_mut() = Stream::Tls(Box::new(tls));
        self.frag = Fragmentizer::new(self.limits.append.saturating_add(self.limits.line as u32));
        self.line_so_far = 0;
        self.in_literal = false;
        self.tls = true;
        Ok(())
    }

    /// Reads the next client message. `is_append` tells, from the start of
    /// the message, whether its literal may be as large as a message.
    /// Synchronising literals within the limits get their "+" here.
    pub async fn next(&mut self, timeout: Duration) -> Result<Frame, ConnError> {
        loop {
            let Some(info) = self.frag.progress() else {
                let n = match tokio::time::timeout(timeout, self.io.read(&mut self.buf)).await {
                    Err(_) => return Err(ConnError::Timeout),
                    Ok(r) => r?,
                };
                if n == 0 {
                    return Err(ConnError::Closed);
                }
                self.frag.enqueue_bytes(&self.buf[..n]);
                if !self.in_literal {
                    self.line_so_far += n;
                    // Twice the limit: the buffer may also hold the start
                    // of the next pipelined command.
                    if self.line_so_far > 2 * self.limits.line {
                        return Err(ConnError::LineTooLong);
                    }
                }
                continue;
            };
            match info {
                FragmentInfo::Line { start, end, announcement, .. } => {
                    if end - start > self.limits.line {
                        return Err(ConnError::LineTooLong);
                    }
                    self.line_so_far = 0;
                    if let Some(LiteralAnnouncement { mode, length }) = announcement {
                        self.in_literal = true;
                        let append = is_append(self.frag.message_bytes());
                        let limit = if append { self.limits.append } else { self.limits.literal };
                        if length > limit {
                            let tag = self.frag.decode_tag().map(|t| t.as_ref().to_string());
                            match mode {
                                LiteralMode::Sync => {
                                    // The client waits for "+": refuse now and
                                    // it will not send the literal.
                                    self.frag.skip_message();
                                    self.in_literal = false;
                                    let reason = if append { "[TOOBIG] message too large" } else { "literal too large" };
                                    return Ok(Frame::Refused { tag, reason });
                                }
                                LiteralMode::NonSync => {
                                    // LITERAL+: the bytes are coming anyway;
                                    // the fragmentizer drops them past the
                                    // message limit and decoding fails.
                                    self.frag.poison_message();
                                }
                            }
                        } else if mode == LiteralMode::Sync {
                            self.io.write_all(b"+ Ready for literal data\r\n").await?;
                            self.io.flush().await?;
                        }
                    }
                }
                FragmentInfo::Literal { .. } => {
                    self.in_literal = false;
                }
            }
            if self.frag.is_message_complete() {
                self.in_literal = false;
                if self.frag.is_max_message_size_exceeded() || self.frag.is_message_poisoned() {
                    let tag = self.frag.decode_tag().map(|t| t.as_ref().to_string());
                    return Ok(Frame::Refused {
                        tag,
                        reason: "[TOOBIG] literal or message too large",
                    });
                }
                return Ok(Frame::Message(self.frag.message_bytes().to_vec()));
            }
        }
    }
}

/// The tag of a message that did not parse, if it has a usable one (so
/// the BAD can be tagged).
pub fn tag_of(msg: &[u8]) -> Option<String> {
    let end = msg.iter().position(|c| *c == b' ' || *c == b'\r' || *c == b'\n')?;
    let tag = &msg[..end];
    let ok = !tag.is_empty() && tag.len() <= 64 && tag.iter().all(|c| c.is_ascii_graphic() && !b"(){%*\"\\+".contains(c));
    ok.then(|| String::from_utf8_lossy(tag).to_string())
}

/// `tag APPEND ...` (or UID-less variants): the one command whose literal
/// is a message.
fn is_append(msg: &[u8]) -> bool {
    let mut words = msg.split(|c| *c == b' ');
    let _tag = words.next();
    words.next().is_some_and(|w| w.eq_ignore_ascii_case(b"APPEND"))
}
