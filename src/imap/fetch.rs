//! FETCH responses for one message: the data items rendered from the
//! stored metadata, body sections streamed from the sealed body straight
//! to the client (never whole in memory). Knows nothing of sessions: it
//! gets the message, the items and the connection.

use std::sync::Arc;

use futures::StreamExt;
use imap_codec::imap_types::fetch::{MessageDataItemName, Section};

use super::conn::{Conn, ConnError};
use super::render;
use super::sections::{filter_header, resolve, Kind, Spec};
use crate::accounts::UserKeys;
use crate::mail::message::{self, MessageMeta};
use crate::mail::{MessageId, ModSeq, Uid};
use crate::storage::{Store, StorageError};

/// One message to render.
pub struct Row {
    pub seq: u32,
    pub uid: Uid,
    pub id: MessageId,
    pub flags: Vec<String>,
    pub modseq: ModSeq,
}

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// Nothing was written for this message; the session says NO.
    #[error("{0}")]
    Storage(#[from] StorageError),
    /// The response was cut mid-way: the connection cannot continue.
    #[error(transparent)]
    Conn(#[from] ConnError),
}

pub struct Options {
    /// Add UID (UID FETCH, or QRESYNC).
    pub uid: bool,
    /// Add MODSEQ (CONDSTORE active, or CHANGEDSINCE given).
    pub modseq: bool,
}

/// Whether an item needs the stored metadata (everything but flags, UID,
/// MODSEQ).
pub fn needs_meta(items: &[MessageDataItemName<'_>]) -> bool {
    items.iter().any(|i| {
        !matches!(i, MessageDataItemName::Flags | MessageDataItemName::Uid | MessageDataItemName::ModSeq)
    })
}

/// Whether fetching these items sets \Seen (RFC 3501 §6.4.5).
pub fn sets_seen(items: &[MessageDataItemName<'_>]) -> bool {
    items.iter().any(|i| match i {
        MessageDataItemName::BodyExt { peek, .. } => !peek,
        MessageDataItemName::Rfc822 | MessageDataItemName::Rfc822Text => true,
        _ => false,
    })
}

pub(super) fn section_parts(section: &Option<Section<'_>>) -> (Vec<u32>, Kind, String) {
    let path = |p: &Option<imap_codec::imap_types::fetch::Part>| -> Vec<u32> {
        p.as_ref().map(|p| p.0.as_ref().iter().map(|n| n.get()).collect()).unwrap_or_default()
    };
    let names = |v: &imap_codec::imap_types::core::Vec1<imap_codec::imap_types::core::AString<'_>>| -> Vec<String> {
        v.as_ref().iter().map(|a| String::from_utf8_lossy(AsRef::<[u8]>::as_ref(a)).to_string()).collect()
    };
    let prefix = |p: &[u32]| -> String {
        p.iter().map(|n| n.to_string()).collect::<Vec<_>>().join(".")
    };
    let join = |p: &[u32], s: &str| -> String {
        if p.is_empty() {
            s.to_string()
        } else if s.is_empty() {
            prefix(p)
        } else {
            format!("{}.{s}", prefix(p))
        }
    };
    match section {
        None => (vec![], Kind::All, String::new()),
        Some(Section::Part(p)) => {
            let v = path(&Some(p.clone()));
            let label = prefix(&v);
            (v, Kind::All, label)
        }
        Some(Section::Header(p)) => {
            let v = path(p);
            let label = join(&v, "HEADER");
            (v, Kind::Header, label)
        }
        Some(Section::Text(p)) => {
            let v = path(p);
            let label = join(&v, "TEXT");
            (v, Kind::Text, label)
        }
        Some(Section::Mime(p)) => {
            let v = path(&Some(p.clone()));
            let label = join(&v, "MIME");
            (v, Kind::Mime, label)
        }
        Some(Section::HeaderFields(p, n)) | Some(Section::HeaderFieldsNot(p, n)) => {
            let not = matches!(section, Some(Section::HeaderFieldsNot(..)));
            let v = path(p);
            let names = names(n);
            let kw = if not { "HEADER.FIELDS.NOT" } else { "HEADER.FIELDS" };
            let label = join(&v, &format!("{kw} ({})", names.join(" ").to_ascii_uppercase()));
            (v, Kind::Fields(names, not), label)
        }
    }
}

/// Writes `* seq FETCH (...)` for one message.
pub async fn write_row(
    conn: &mut Conn,
    store: &Store,
    keys: &Arc<UserKeys>,
    mailbox: &str,
    row: &Row,
    items: &[MessageDataItemName<'_>],
    opts: &Options,
    meta: Option<MessageMeta>,
) -> Result<(), FetchError> {
    if meta.is_none() && needs_meta(items) {
        return Err(StorageError::Corrupt(format!("message {} has no metadata", row.uid)).into());
    }
    let mut out = format!("* {} FETCH (", row.seq).into_bytes();
    let mut first = true;
    let mut sep = |out: &mut Vec<u8>| {
        if !first {
            out.push(b' ');
        }
        first = false;
    };
    let asked_uid = items.iter().any(|i| matches!(i, MessageDataItemName::Uid));
    if opts.uid && !asked_uid {
        sep(&mut out);
        out.extend_from_slice(format!("UID {}", row.uid).as_bytes());
    }
    for item in items {
        match item {
            MessageDataItemName::Uid => {
                sep(&mut out);
                out.extend_from_slice(format!("UID {}", row.uid).as_bytes());
            }
            MessageDataItemName::Flags => {
                sep(&mut out);
                out.extend_from_slice(b"FLAGS ");
                render::flag_list(&mut out, &row.flags);
            }
            MessageDataItemName::ModSeq => {}
            MessageDataItemName::InternalDate => {
                let Some(m) = &meta else { continue };
                sep(&mut out);
                out.extend_from_slice(b"INTERNALDATE ");
                out.extend_from_slice(render::internal_date(m.internal_date).as_bytes());
            }
            MessageDataItemName::Rfc822Size => {
                let Some(m) = &meta else { continue };
                sep(&mut out);
                out.extend_from_slice(format!("RFC822.SIZE {}", m.size).as_bytes());
            }
            MessageDataItemName::Envelope => {
                let Some(m) = &meta else { continue };
                sep(&mut out);
                out.extend_from_slice(b"ENVELOPE ");
                render::envelope(&mut out, m);
            }
            MessageDataItemName::Body => {
                let Some(m) = &meta else { continue };
                sep(&mut out);
                out.extend_from_slice(b"BODY ");
                render::body_structure(&mut out, m, 0, false);
            }
            MessageDataItemName::BodyStructure => {
                let Some(m) = &meta else { continue };
                sep(&mut out);
                out.extend_from_slice(b"BODYSTRUCTURE ");
                render::body_structure(&mut out, m, 0, true);
            }
            MessageDataItemName::Rfc822 | MessageDataItemName::Rfc822Header | MessageDataItemName::Rfc822Text => {
                let Some(m) = &meta else { continue };
                let (label, kind) = match item {
                    MessageDataItemName::Rfc822 => ("RFC822", Kind::All),
                    MessageDataItemName::Rfc822Header => ("RFC822.HEADER", Kind::Header),
                    _ => ("RFC822.TEXT", Kind::Text),
                };
                sep(&mut out);
                out.extend_from_slice(label.as_bytes());
                out.push(b' ');
                let spec = resolve(m, &[], &kind);
                section(conn, &mut out, store, keys, mailbox, row, m, spec, None).await?;
            }
            MessageDataItemName::BodyExt { section: s, partial, .. } => {
                let Some(m) = &meta else { continue };
                let (path, kind, label) = section_parts(s);
                sep(&mut out);
                out.extend_from_slice(format!("BODY[{label}]").as_bytes());
                if let Some((origin, _)) = partial {
                    out.extend_from_slice(format!("<{origin}>").as_bytes());
                }
                out.push(b' ');
                let spec = resolve(m, &path, &kind);
                let partial = partial.map(|(o, l)| (u64::from(o), u64::from(l.get())));
                section(conn, &mut out, store, keys, mailbox, row, m, spec, partial).await?;
            }
            // Refused before any row is written (BINARY is not offered).
            MessageDataItemName::Binary { .. } | MessageDataItemName::BinarySize { .. } => {}
        }
    }
    if opts.modseq || items.iter().any(|i| matches!(i, MessageDataItemName::ModSeq)) {
        sep(&mut out);
        out.extend_from_slice(format!("MODSEQ ({})", row.modseq).as_bytes());
    }
    out.extend_from_slice(b")\r\n");
    conn.write(&out).await?;
    Ok(())
}

/// Appends a section's value to `out`; large ones are written to the
/// connection as they stream in (`out` is flushed into it first).
#[allow(clippy::too_many_arguments)]
async fn section(
    conn: &mut Conn,
    out: &mut Vec<u8>,
    store: &Store,
    keys: &Arc<UserKeys>,
    mailbox: &str,
    row: &Row,
    meta: &MessageMeta,
    spec: Spec,
    partial: Option<(u64, u64)>,
) -> Result<(), FetchError> {
    let clip = |s: u64, e: u64| clip(s, e, partial);
    match spec {
        Spec::Missing => {
            out.extend_from_slice(b"{0}\r\n");
            Ok(())
        }
        Spec::Fields { start, end, names, not } => {
            let header = read_range(store, keys, mailbox, row, meta, start, end).await?;
            let filtered = filter_header(&header, &names, not);
            let (s, e) = clip(0, filtered.len() as u64);
            literal(out, &filtered[s as usize..e as usize]);
            Ok(())
        }
        Spec::Range(start, end) => {
            let end = end.min(meta.size);
            let (s, e) = clip(start.min(end), end);
            let (s, e) = (s.min(e), e);
            // Small ranges (headers are kept with the metadata) go inline.
            if e <= meta.header.len() as u64 {
                literal(out, &meta.header[s as usize..e as usize]);
                return Ok(());
            }
            let Some(body) = message::read_body(store, keys, mailbox, row.id).await? else {
                return Err(StorageError::Corrupt(format!("message {} has no body", row.uid)).into());
            };
            out.extend_from_slice(format!("{{{}}}\r\n", e - s).as_bytes());
            conn.write(out).await?;
            out.clear();
            let mut body = std::pin::pin!(body);
            let mut pos = 0u64;
            let mut written = 0u64;
            while let Some(chunk) = body.next().await {
                let chunk = match chunk {
                    Ok(c) => c,
                    Err(e) => {
                        log::error!("reading a message body mid-FETCH: {e}");
                        return Err(ConnError::Io(std::io::Error::other("message body unreadable")).into());
                    }
                };
                let (cs, ce) = (pos, pos + chunk.len() as u64);
                pos = ce;
                let (a, b) = (s.max(cs), e.min(ce));
                if a < b {
                    conn.write(&chunk[(a - cs) as usize..(b - cs) as usize]).await?;
                    written += b - a;
                }
                if pos >= e {
                    break;
                }
            }
            if written < e - s {
                // The literal's length is promised: a short body (damage)
                // is padded rather than desynchronising the client.
                log::error!("message {} shorter than its metadata says", row.uid);
                conn.write(&vec![b' '; (e - s - written) as usize]).await?;
            }
            Ok(())
        }
    }
}

/// The bytes `<origin.length>` selects of `start..end`.
pub(super) fn clip(start: u64, end: u64, partial: Option<(u64, u64)>) -> (u64, u64) {
    match partial {
        Some((o, l)) => {
            let s = start.saturating_add(o).min(end);
            (s, s.saturating_add(l).min(end))
        }
        None => (start, end),
    }
}

fn literal(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(format!("{{{}}}\r\n", bytes.len()).as_bytes());
    out.extend_from_slice(bytes);
}

/// Bytes `start..end` of a message (a header section), from the metadata
/// when it holds them, else from the body.
pub async fn read_range(
    store: &Store,
    keys: &Arc<UserKeys>,
    mailbox: &str,
    row: &Row,
    meta: &MessageMeta,
    start: u64,
    end: u64,
) -> Result<Vec<u8>, StorageError> {
    if end <= meta.header.len() as u64 {
        return Ok(meta.header[start as usize..end as usize].to_vec());
    }
    let Some(body) = message::read_body(store, keys, mailbox, row.id).await? else {
        return Err(StorageError::Corrupt(format!("message {} has no body", row.uid)));
    };
    let mut body = std::pin::pin!(body);
    let mut out = vec![];
    let mut pos = 0u64;
    while let Some(chunk) = body.next().await {
        let chunk = chunk?;
        let (cs, ce) = (pos, pos + chunk.len() as u64);
        pos = ce;
        let (a, b) = (start.max(cs), end.min(ce));
        if a < b {
            out.extend_from_slice(&chunk[(a - cs) as usize..(b - cs) as usize]);
        }
        if pos >= end {
            break;
        }
    }
    Ok(out)
}

/// How many metadata reads are in flight while a FETCH or SEARCH walks
/// a mailbox: each is a quorum read, so across regions one at a time
/// would cost a round trip per message.
pub const PREFETCH: usize = 32;

/// The metadata of `ids`, in order, read `PREFETCH` at a time (`None`
/// for each when `wanted` is false).
pub fn metas(
    store: Store,
    keys: Arc<UserKeys>,
    mailbox: String,
    ids: Vec<MessageId>,
    wanted: bool,
) -> impl futures::Stream<Item = Result<Option<MessageMeta>, StorageError>> {
    futures::stream::iter(ids)
        .map(move |id| {
            let (store, keys, mailbox) = (store.clone(), keys.clone(), mailbox.clone());
            async move {
                if wanted {
                    message::message_meta(&store, &keys, &mailbox, id).await
                } else {
                    Ok(None)
                }
            }
        })
        .buffered(PREFETCH)
}

/// The whole message (SEARCH BODY/TEXT).
pub async fn read_all(store: &Store, keys: &Arc<UserKeys>, mailbox: &str, id: MessageId) -> Result<Option<Vec<u8>>, StorageError> {
    let Some(body) = message::read_body(store, keys, mailbox, id).await? else {
        return Ok(None);
    };
    let mut body = std::pin::pin!(body);
    let mut out = vec![];
    while let Some(chunk) = body.next().await {
        out.extend_from_slice(&chunk?);
    }
    Ok(Some(out))
}
