//! Messages: the body stored once, as a blob sealed with its own random key
//! (COPY shares it), and the parsed metadata IMAP needs — size, internal
//! date, header section, envelope fields, MIME structure with offsets — as
//! a sealed item per mailbox (partition `meta/<mailbox>`, key = message id).
//! MIME parsing is mail-parser's; this module only flattens its tree into
//! what FETCH, SEARCH and SORT read without touching the body.

use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use mail_parser::{MessageParser, MimeHeaders, PartType};
use serde::{Deserialize, Serialize};

use super::model::MessageId;
use crate::accounts::UserKeys;
use crate::crypto::{BlobDecryptor, BlobEncryptor, MasterKey};
use crate::storage::{Store, StorageError};

/// Header section bytes kept in the metadata (HEADER fetches, SEARCH
/// HEADER); longer header sections are read from the body.
const MAX_HEADER: usize = 64 * 1024;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    pub date: Option<String>,
    pub subject: Option<String>,
    pub from: Option<String>,
    pub sender: Option<String>,
    pub reply_to: Option<String>,
    pub to: Option<String>,
    pub cc: Option<String>,
    pub bcc: Option<String>,
    pub in_reply_to: Option<String>,
    pub message_id: Option<String>,
}

/// One MIME part, flattened (parts of nested messages included, with
/// offsets into the whole message).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Part {
    pub ctype: String,
    pub subtype: String,
    pub params: Vec<(String, String)>,
    pub id: Option<String>,
    pub description: Option<String>,
    pub encoding: Option<String>,
    pub disposition: Option<(String, Vec<(String, String)>)>,
    pub offset_header: u64,
    pub offset_body: u64,
    pub offset_end: u64,
    /// Lines of the encoded body (IMAP reports them for text parts).
    pub lines: u64,
    /// Indexes (into `parts`) of the sub-parts of a multipart.
    pub children: Vec<usize>,
    /// For message/rfc822: the index of the nested message's root part.
    pub message: Option<usize>,
    /// For message/rfc822: the nested message's envelope fields.
    #[serde(default)]
    pub envelope: Option<Box<Envelope>>,
    /// Content-Language tags and Content-Location (BODYSTRUCTURE extension data).
    #[serde(default)]
    pub language: Option<Vec<String>>,
    #[serde(default)]
    pub location: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageMeta {
    pub size: u64,
    /// Seconds since the epoch (IMAP INTERNALDATE).
    pub internal_date: i64,
    #[serde(with = "serde_bytes")]
    pub header: Vec<u8>,
    pub envelope: Envelope,
    pub parts: Vec<Part>,
    /// Whether the parser had to guess (malformed MIME).
    pub malformed: bool,
}

#[derive(Serialize, Deserialize)]
struct StoredMeta {
    blob_key: [u8; 32],
    meta: MessageMeta,
}

/// Parses a message's metadata. Never fails: unparsable mail is one
/// text/plain part covering everything, as IMAP servers show it.
pub fn parse_meta(raw: &[u8], internal_date: i64) -> MessageMeta {
    // Mail is hostile input and the parser is not ours: should it panic
    // (it has debug assertions that fuzzing reaches), the message is
    // shown as unparsed text rather than lost or killing its caller.
    match std::panic::catch_unwind(|| parse_meta_inner(raw, internal_date)) {
        Ok(meta) => meta,
        Err(_) => {
            log::error!("the MIME parser panicked on a message of {} bytes; stored as plain text", raw.len());
            unparsed(raw, internal_date)
        }
    }
}

/// The metadata of mail that does not parse: one text/plain part.
fn unparsed(raw: &[u8], internal_date: i64) -> MessageMeta {
    let header_end = find_header_end(raw);
    MessageMeta {
        size: raw.len() as u64,
        internal_date,
        header: raw[..header_end.min(MAX_HEADER)].to_vec(),
        envelope: Envelope::default(),
        parts: vec![Part {
            ctype: "text".into(),
            subtype: "plain".into(),
            offset_body: header_end as u64,
            offset_end: raw.len() as u64,
            lines: count_lines(&raw[header_end.min(raw.len())..]),
            ..Default::default()
        }],
        malformed: true,
    }
}

fn parse_meta_inner(raw: &[u8], internal_date: i64) -> MessageMeta {
    let header_end = find_header_end(raw);
    let header = raw[..header_end.min(MAX_HEADER)].to_vec();
    let Some(msg) = MessageParser::default().parse(raw) else {
        return unparsed(raw, internal_date);
    };
    let envelope = envelope_of(&msg);
    let mut parts = vec![];
    let mut malformed = false;
    flatten(&msg, raw, 0, &mut parts, &mut malformed);
    MessageMeta {
        size: raw.len() as u64,
        internal_date,
        header,
        envelope,
        parts,
        malformed,
    }
}

fn envelope_of(msg: &mail_parser::Message<'_>) -> Envelope {
    // Leading space trimmed only: IMAP renders a value with trailing
    // space differently (as a literal, like Dovecot).
    let raw_header = |name: &str| msg.header_raw(name).map(|v| v.trim_start().trim_end_matches(['\r', '\n']).to_string());
    Envelope {
        date: raw_header("Date"),
        subject: raw_header("Subject"),
        from: raw_header("From"),
        sender: raw_header("Sender"),
        reply_to: raw_header("Reply-To"),
        to: raw_header("To"),
        cc: raw_header("Cc"),
        bcc: raw_header("Bcc"),
        in_reply_to: raw_header("In-Reply-To"),
        message_id: raw_header("Message-ID"),
    }
}

/// Appends the parts of `msg` (offsets shifted by `base` into `whole`) to
/// `out`; returns the index of its root part.
fn flatten(msg: &mail_parser::Message<'_>, whole: &[u8], base: u64, out: &mut Vec<Part>, malformed: &mut bool) -> usize {
    let first = out.len();
    // Reserve one slot per part so sub-part indexes are known up front.
    for _ in &msg.parts {
        out.push(Part::default());
    }
    for (i, p) in msg.parts.iter().enumerate() {
        *malformed |= p.is_encoding_problem;
        let (ctype, subtype) = match p.content_type() {
            Some(ct) => (
                ct.ctype().to_ascii_lowercase(),
                ct.subtype().map(str::to_ascii_lowercase).unwrap_or_default(),
            ),
            None if matches!(p.body, PartType::Message(_)) => ("message".into(), "rfc822".into()),
            None => ("text".into(), "plain".into()),
        };
        let params = p
            .content_type()
            .and_then(|ct| ct.attributes())
            .map(|a| a.iter().map(|a| (a.name.to_string(), a.value.to_string())).collect())
            .unwrap_or_default();
        let disposition = p.content_disposition().map(|d| {
            (
                d.ctype().to_ascii_lowercase(),
                d.attributes()
                    .map(|a| a.iter().map(|a| (a.name.to_string(), a.value.to_string())).collect())
                    .unwrap_or_default(),
            )
        });
        let params = match raw_field(p, whole, base, "Content-Type") {
            Some(v) if v.contains(';') => raw_params(&v),
            _ => params,
        };
        let disposition = match (disposition, raw_field(p, whole, base, "Content-Disposition")) {
            (Some((kind, _)), Some(v)) => Some((kind, raw_params(&v))),
            (d, _) => d,
        };
        let (ob, mut oe) = (base + u64::from(p.offset_body), base + u64::from(p.offset_end));
        if matches!(p.body, PartType::Multipart(_)) && i > 0 {
            // A nested multipart ends after its close delimiter's line
            // break (the next delimiter starts on the following line), as
            // Dovecot counts it.
            let rest = whole.get(oe as usize..).unwrap_or(&[]);
            if rest.starts_with(b"\r\n--") {
                oe += 2;
            } else if rest.starts_with(b"\n--") {
                oe += 1;
            }
        }
        let body = whole.get(ob as usize..(oe as usize).min(whole.len())).unwrap_or(&[]);
        let children = match &p.body {
            PartType::Multipart(ids) => ids.iter().map(|id| first + *id as usize).collect(),
            _ => vec![],
        };
        let message = match &p.body {
            // mail-parser gives a nested message's offsets in the outer
            // buffer already (unless it had to decode it, e.g. base64: then
            // they point into the decoded copy and are only approximate).
            PartType::Message(nested) => Some(flatten(nested, whole, 0, out, malformed)),
            _ => None,
        };
        let envelope = match &p.body {
            PartType::Message(nested) => Some(Box::new(envelope_of(nested))),
            _ => None,
        };
        out[first + i] = Part {
            ctype,
            subtype,
            params,
            id: raw_field(p, whole, base, "Content-ID").or_else(|| p.content_id().map(str::to_string)),
            description: raw_field(p, whole, base, "Content-Description").or_else(|| p.content_description().map(str::to_string)),
            encoding: p.content_transfer_encoding().map(str::to_ascii_lowercase),
            disposition,
            offset_header: base + u64::from(p.offset_header),
            offset_body: ob,
            offset_end: oe,
            lines: count_lines(body),
            children,
            message,
            envelope,
            language: raw_field(p, whole, base, "Content-Language")
                .map(|v| v.split(',').map(|t| t.trim().to_string()).filter(|t| !t.is_empty()).collect()),
            location: raw_field(p, whole, base, "Content-Location"),
        };
    }
    first
}

fn find_header_end(raw: &[u8]) -> usize {
    for (i, w) in raw.windows(2).enumerate() {
        if w == b"\n\n" {
            return i + 2;
        }
        if i + 4 <= raw.len() && &raw[i..i + 4] == b"\r\n\r\n" {
            return i + 4;
        }
    }
    raw.len()
}

/// Lines as IMAP servers count them (Dovecot: line feeds; a last line
/// without one, usually the line before a boundary, does not count).
fn count_lines(b: &[u8]) -> u64 {
    b.iter().filter(|c| **c == b'\n').count() as u64
}

/// A header field of a part as written (unfolded, trimmed): IMAP shows
/// Content-ID and Content-Description raw, not decoded.
/// Parameters of a Content-Type/Content-Disposition value as written
/// (RFC 2231 names like `name*` kept; IMAP shows them raw, as Dovecot).
fn raw_params(value: &str) -> Vec<(String, String)> {
    let mut segments = vec![];
    let (mut cur, mut quoted, mut escaped) = (String::new(), false, false);
    for c in value.chars() {
        match c {
            _ if escaped => {
                cur.push(c);
                escaped = false;
            }
            '\\' if quoted => {
                cur.push(c);
                escaped = true;
            }
            '"' => {
                quoted = !quoted;
                cur.push(c);
            }
            ';' if !quoted => segments.push(std::mem::take(&mut cur)),
            _ => cur.push(c),
        }
    }
    segments.push(cur);
    segments
        .iter()
        .skip(1)
        .filter_map(|seg| {
            let (k, v) = seg.split_once('=')?;
            let (k, v) = (k.trim(), v.trim());
            if k.is_empty() {
                return None;
            }
            let v = match v.strip_prefix('"').and_then(|v| v.strip_suffix('"')) {
                Some(q) => {
                    let mut out = String::new();
                    let mut esc = false;
                    for c in q.chars() {
                        if esc || c != '\\' {
                            out.push(c);
                            esc = false;
                        } else {
                            esc = true;
                        }
                    }
                    out
                }
                None => v.to_string(),
            };
            Some((k.to_string(), v))
        })
        .collect()
}

fn raw_field(p: &mail_parser::MessagePart<'_>, whole: &[u8], base: u64, name: &str) -> Option<String> {
    let h = p.headers.iter().find(|h| h.name.as_str().eq_ignore_ascii_case(name))?;
    let (s, e) = ((base + u64::from(h.offset_start)) as usize, (base + u64::from(h.offset_end)) as usize);
    let v = String::from_utf8_lossy(whole.get(s..e)?).replace(['\r', '\n'], "");
    Some(v.trim().to_string())
}

fn meta_partition(mailbox: &str) -> String {
    format!("meta/{mailbox}")
}

fn blob_key(id: MessageId) -> String {
    format!("msg/{id:016x}")
}

/// Stores a new message: its body (sealed with a fresh key) and its
/// metadata in `mailbox`. The caller then sequences an Append for `id`.
pub async fn store_message(
    store: &Store,
    keys: &Arc<UserKeys>,
    mailbox: &str,
    raw: &[u8],
    internal_date: i64,
) -> Result<(MessageId, MessageMeta), StorageError> {
    let id: MessageId = rand::random();
    let key = UserKeys::new_blob_key();
    let sealed = BlobEncryptor::seal_all(&key, blob_key(id).as_bytes(), raw);
    let meta = parse_meta(raw, internal_date);
    // Both at once (one round trip, not two): nothing refers to either
    // until the caller sequences the Append, which it does only if both
    // are stored.
    let blob_key = blob_key(id);
    let (blob, item) = futures::join!(
        store.put_blob_bytes(&keys.user, &blob_key, Bytes::from(sealed)),
        put_meta(store, keys, mailbox, id, &key, &meta)
    );
    blob?;
    item?;
    Ok((id, meta))
}

/// Writes the metadata of a body already stored (sealed with `key`) as
/// `msg/<id>`: the filing of a queued delivery.
pub async fn put_parsed(
    store: &Store,
    keys: &Arc<UserKeys>,
    mailbox: &str,
    id: MessageId,
    key: &MasterKey,
    raw: &[u8],
    internal_date: i64,
) -> Result<MessageMeta, StorageError> {
    let meta = parse_meta(raw, internal_date);
    put_meta(store, keys, mailbox, id, key, &meta).await?;
    Ok(meta)
}

/// Writes metadata parsed earlier (at delivery, before the keys were at
/// hand) for a message whose body is stored under `key`.
pub async fn put_meta(
    store: &Store,
    keys: &Arc<UserKeys>,
    mailbox: &str,
    id: MessageId,
    key: &MasterKey,
    meta: &MessageMeta,
) -> Result<(), StorageError> {
    let stored = StoredMeta {
        blob_key: *key.to_bytes(),
        meta: meta.clone(),
    };
    let bytes = rmp_serde::to_vec_named(&stored).map_err(|e| StorageError::Invalid(e.to_string()))?;
    let p = meta_partition(mailbox);
    let sk = format!("{id:016x}");
    store.insert(&keys.user, &p, &sk, keys.seal_item(&p, &sk, &bytes), None).await
}

async fn get_stored(store: &Store, keys: &Arc<UserKeys>, mailbox: &str, id: MessageId) -> Result<Option<StoredMeta>, StorageError> {
    let p = meta_partition(mailbox);
    let sk = format!("{id:016x}");
    let Some(item) = store.get(&keys.user, &p, &sk).await? else {
        return Ok(None);
    };
    match item.values.first() {
        Some(v) => open_stored(keys, &p, &sk, v).map(Some),
        None => Ok(None),
    }
}

fn open_stored(keys: &UserKeys, partition: &str, sort_key: &str, sealed: &[u8]) -> Result<StoredMeta, StorageError> {
    let plain = keys.open_item(partition, sort_key, sealed).map_err(|e| StorageError::Corrupt(format!("message metadata: {e}")))?;
    rmp_serde::from_slice(&plain).map_err(|e| StorageError::Corrupt(format!("message metadata: {e}")))
}

/// The metadata of a message in a mailbox.
pub async fn message_meta(store: &Store, keys: &Arc<UserKeys>, mailbox: &str, id: MessageId) -> Result<Option<MessageMeta>, StorageError> {
    Ok(get_stored(store, keys, mailbox, id).await?.map(|s| s.meta))
}

/// COPY: the same body, a metadata item in `to` (the caller sequences the
/// Append in `to`). Returns the message's size, None if it is not in `from`.
pub async fn copy_message(store: &Store, keys: &Arc<UserKeys>, from: &str, to: &str, id: MessageId) -> Result<Option<u64>, StorageError> {
    match get_stored(store, keys, from, id).await? {
        Some(s) => {
            put_meta(store, keys, to, id, &MasterKey::from_bytes(s.blob_key), &s.meta).await?;
            Ok(Some(s.meta.size))
        }
        None => Ok(None),
    }
}

/// The total size of the messages whose metadata is in `mailbox` (what
/// deleting it frees, for quotas).
pub async fn mailbox_size(store: &Store, keys: &Arc<UserKeys>, mailbox: &str) -> Result<u64, StorageError> {
    let p = meta_partition(mailbox);
    let mut total = 0u64;
    for it in store.range(&keys.user, &p, &crate::storage::Range::default()).await? {
        let Some(v) = it.values.first() else { continue };
        total = total.saturating_add(open_stored(keys, &p, &it.sort_key, v)?.meta.size);
    }
    Ok(total)
}

/// The body of a message, decrypted as it streams in (never whole in
/// memory for large mail): chunks of plaintext in order.
pub async fn read_body(
    store: &Store,
    keys: &Arc<UserKeys>,
    mailbox: &str,
    id: MessageId,
) -> Result<Option<impl futures::Stream<Item = Result<Vec<u8>, StorageError>>>, StorageError> {
    let Some(stored) = get_stored(store, keys, mailbox, id).await? else {
        return Ok(None);
    };
    let Some(reader) = store.get_blob(&keys.user, &blob_key(id)).await? else {
        return Ok(None);
    };
    let key = MasterKey::from_bytes(stored.blob_key);
    let ctx = blob_key(id);
    let mut dec = Some(BlobDecryptor::new(&key, ctx.as_bytes()));
    let chunks = reader.chunks.map(Some).chain(futures::stream::iter([None]));
    Ok(Some(chunks.filter_map(move |c| {
        let out = match c {
            Some(Ok(bytes)) => match dec.as_mut().map(|d| d.push(&bytes)) {
                Some(Ok(p)) if p.is_empty() => None,
                Some(Ok(p)) => Some(Ok(p)),
                Some(Err(e)) => Some(Err(StorageError::Corrupt(e.to_string()))),
                None => None,
            },
            Some(Err(e)) => Some(Err(e)),
            // End of the blob: it must have ended with its last frame.
            None => match dec.take().map(BlobDecryptor::finish) {
                Some(Err(e)) => Some(Err(StorageError::Corrupt(e.to_string()))),
                _ => None,
            },
        };
        futures::future::ready(out)
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIME: &[u8] = b"From: Alice <alice@example.test>\r\nTo: bob@example.test\r\nSubject: =?utf-8?q?caf=C3=A9?=\r\nMessage-ID: <1@example.test>\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n--b1\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nhello\r\nworld\r\n--b1\r\nContent-Type: message/rfc822\r\n\r\nSubject: inner\r\n\r\ninner body\r\n--b1--\r\n";

    #[test]
    fn structure_and_envelope() {
        let m = parse_meta(MIME, 1_700_000_000);
        assert_eq!(m.size, MIME.len() as u64);
        assert_eq!(m.envelope.subject.as_deref(), Some("=?utf-8?q?caf=C3=A9?="));
        assert_eq!(m.envelope.message_id.as_deref(), Some("<1@example.test>"));
        assert_eq!((m.parts[0].ctype.as_str(), m.parts[0].subtype.as_str()), ("multipart", "mixed"));
        assert_eq!(m.parts[0].children.len(), 2);
        let text = &m.parts[m.parts[0].children[0]];
        assert_eq!((text.ctype.as_str(), text.subtype.as_str()), ("text", "plain"));
        assert_eq!(&MIME[text.offset_body as usize..text.offset_end as usize], b"hello\r\nworld");
        let inner = &m.parts[m.parts[0].children[1]];
        assert_eq!(inner.subtype, "rfc822");
        let nested_root = &m.parts[inner.message.expect("nested message parsed")];
        assert!(std::str::from_utf8(&MIME[nested_root.offset_body as usize..nested_root.offset_end as usize]).unwrap().contains("inner body"));
        assert!(m.header.ends_with(b"\r\n\r\n"));
    }

    #[test]
    fn garbage_is_one_text_part() {
        let m = parse_meta(b"\xff\xfe not mail at all", 0);
        assert_eq!(m.parts.len(), 1);
        assert_eq!(m.size, 18);
    }
}
