//! SEARCH evaluation (RFC 9051 §6.4.4 plus CONDSTORE's MODSEQ and
//! WITHIN's OLDER/YOUNGER) over one candidate message at a time. What a
//! key needs (flags only, stored metadata, or the decoded text) is worked
//! out first, so a flag search reads nothing from storage and a BODY
//! search decodes each message once. Matching of strings is
//! case-insensitive over Unicode after MIME decoding (RFC 2047 words,
//! base64/QP bodies, charsets), which is mail-parser's work.

use chrono::{NaiveDate, TimeZone, Utc};
use imap_codec::imap_types::core::AString;
use imap_codec::imap_types::search::SearchKey;
use imap_codec::imap_types::sequence::{SeqOrUid, Sequence, SequenceSet};
use mail_parser::{HeaderValue, MessageParser, PartType};

use crate::mail::message::MessageMeta;
use crate::mail::model::{ModSeq, Uid};

/// What evaluating a key needs beyond flags.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Needs {
    pub meta: bool,
    pub text: bool,
    /// With `text`: the decoded header fields too (TEXT, or header keys).
    pub headers: bool,
}

impl Needs {
    fn or(self, o: Needs) -> Needs {
        Needs {
            meta: self.meta || o.meta,
            text: self.text || o.text,
            headers: self.headers || o.headers,
        }
    }
}

pub fn needs(key: &SearchKey<'_>) -> Needs {
    use SearchKey::*;
    match key {
        And(keys) => keys.as_ref().iter().map(needs).fold(Needs::default(), Needs::or),
        Not(k) => needs(k),
        Or(a, b) => needs(a).or(needs(b)),
        Body(_) => Needs { meta: false, text: true, headers: false },
        Text(_) => Needs { meta: false, text: true, headers: true },
        Bcc(_) | Cc(_) | From(_) | To(_) | Subject(_) | Header(..) | Before(_) | On(_) | Since(_) | SentBefore(_)
        | SentOn(_) | SentSince(_) | Larger(_) | Smaller(_) | Older(_) | Younger(_) => Needs { meta: true, text: false, headers: true },
        _ => Needs::default(),
    }
}

/// The decoded text of a message, lower-cased for matching.
#[derive(Default)]
pub struct Decoded {
    /// (lower-case field name, lower-case decoded value)
    pub headers: Vec<(String, String)>,
    pub body: String,
}

fn header_text(v: &HeaderValue<'_>) -> String {
    match v {
        HeaderValue::Text(t) => t.to_string(),
        HeaderValue::TextList(l) => l.join(" "),
        HeaderValue::Address(a) => a
            .iter()
            .map(|x| format!("{} <{}>", x.name().unwrap_or(""), x.address().unwrap_or("")))
            .collect::<Vec<_>>()
            .join(", "),
        HeaderValue::DateTime(d) => d.to_rfc822(),
        HeaderValue::ContentType(c) => format!("{}/{}", c.ctype(), c.subtype().unwrap_or("")),
        _ => String::new(),
    }
}

fn decoded_headers(msg: &mail_parser::Message<'_>, raw: &[u8]) -> Vec<(String, String)> {
    msg.headers()
        .iter()
        .map(|h| {
            let name = h.name.as_str().to_lowercase();
            // Raw value too: HEADER searches must also find what decoding
            // would hide (e.g. an address's angle brackets).
            let rawv = raw
                .get(h.offset_start as usize..h.offset_end as usize)
                .map(|b| String::from_utf8_lossy(b).to_string())
                .unwrap_or_default();
            let value = format!("{} {}", header_text(&h.value), rawv.replace(['\r', '\n'], ""));
            (name, value.to_lowercase())
        })
        .collect()
}

/// Runs a decoder, treating a panic of the MIME parser (hostile input,
/// debug assertions) as "nothing decoded" for this message only.
fn guarded(f: impl FnOnce() -> Decoded) -> Decoded {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|_| {
        log::error!("the MIME parser panicked during SEARCH; that message is searched as nothing");
        Decoded::default()
    })
}

/// Decodes the header section only (for header keys).
pub fn decode_header(header: &[u8]) -> Decoded {
    guarded(|| decode_header_inner(header))
}

fn decode_header_inner(header: &[u8]) -> Decoded {
    match MessageParser::default().parse_headers(header) {
        Some(m) => Decoded {
            headers: decoded_headers(&m, header),
            body: String::new(),
        },
        None => Decoded::default(),
    }
}

/// Decodes a whole message: every text part, nested ones too, and (with
/// `headers`, for TEXT) the header fields.
pub fn decode_message(raw: &[u8], headers: bool) -> Decoded {
    guarded(|| decode_message_inner(raw, headers))
}

/// Where the top header ends, and whether the body is plain text that
/// needs no decoding at all: one part, text/*, UTF-8 or ASCII, no
/// transfer encoding beyond 7bit/8bit. Most mail is; its body bytes are
/// then searched as they are, without the MIME parser.
fn plain_body(raw: &[u8]) -> Option<usize> {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4)?;
    let header = raw[..end].to_ascii_lowercase();
    let text = String::from_utf8_lossy(&header).replace("\r\n ", " ").replace("\r\n\t", " ");
    let field = |name: &str| {
        text.split("\r\n").find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(':')).map(|v| v.trim().to_string()))
    };
    if let Some(cte) = field("content-transfer-encoding") {
        if !matches!(cte.as_str(), "7bit" | "8bit" | "binary") {
            return None;
        }
    }
    if let Some(ct) = field("content-type") {
        if !ct.starts_with("text/") {
            return None;
        }
        if let Some((_, cs)) = ct.split_once("charset=") {
            let cs = cs.trim_matches(|c: char| c == '"' || c == ' ' || c == ';');
            let cs = cs.split(';').next().unwrap_or("").trim_matches('"');
            if !matches!(cs, "utf-8" | "us-ascii" | "utf8") {
                return None;
            }
        }
    }
    Some(end)
}

fn decode_message_inner(raw: &[u8], headers: bool) -> Decoded {
    if let Some(end) = plain_body(raw) {
        return Decoded {
            headers: if headers { decode_header_inner(&raw[..end]).headers } else { vec![] },
            body: String::from_utf8_lossy(&raw[end..]).to_lowercase(),
        };
    }
    let Some(m) = MessageParser::default().parse(raw) else {
        return Decoded {
            headers: vec![],
            body: String::from_utf8_lossy(raw).to_lowercase(),
        };
    };
    let mut body = String::new();
    collect_text(&m, &mut body, 0);
    Decoded {
        headers: if headers { decoded_headers(&m, raw) } else { vec![] },
        body: body.to_lowercase(),
    }
}

fn collect_text(m: &mail_parser::Message<'_>, out: &mut String, depth: usize) {
    for p in &m.parts {
        match &p.body {
            PartType::Text(t) | PartType::Html(t) => {
                out.push_str(t);
                out.push('\n');
            }
            PartType::Message(inner) if depth < 8 => {
                for h in inner.headers() {
                    out.push_str(&header_text(&h.value));
                    out.push('\n');
                }
                collect_text(inner, out, depth + 1);
            }
            _ => {}
        }
    }
}

/// One message as SEARCH sees it.
pub struct Candidate<'a> {
    pub seq: u32,
    pub uid: Uid,
    pub flags: &'a [String],
    pub modseq: ModSeq,
    pub meta: Option<&'a MessageMeta>,
    pub header: Option<&'a Decoded>,
    pub text: Option<&'a Decoded>,
}

/// What the whole search knows: the mailbox's bounds for `*` and the time
/// for OLDER/YOUNGER. (`$` was replaced by the saved set before parsing.)
pub struct Scope {
    pub max_seq: u32,
    pub max_uid: Uid,
    pub now: i64,
    /// Sets of the key, resolved once per search (by address in the key).
    pub sets: std::cell::RefCell<std::collections::HashMap<usize, Intervals>>,
}

impl Scope {
    pub fn new(max_seq: u32, max_uid: Uid, now: i64) -> Scope {
        Scope { max_seq, max_uid, now, sets: Default::default() }
    }

    fn contains(&self, set: &SequenceSet, value: u32, max: u32) -> bool {
        let mut sets = self.sets.borrow_mut();
        sets.entry(set as *const SequenceSet as usize).or_insert_with(|| Intervals::new(set, max)).contains(value)
    }
}

/// A sequence set resolved against the mailbox (`*` = `max`): sorted,
/// merged intervals, so membership is a binary search however many
/// ranges a client sends.
pub struct Intervals(Vec<(u32, u32)>);

impl Intervals {
    pub fn new(set: &SequenceSet, max: u32) -> Intervals {
        let v = |s: &SeqOrUid| match s {
            SeqOrUid::Value(n) => n.get(),
            SeqOrUid::Asterisk => max,
        };
        let mut iv: Vec<(u32, u32)> = set
            .0
            .as_ref()
            .iter()
            .map(|s| match s {
                Sequence::Single(x) => (v(x), v(x)),
                Sequence::Range(a, b) => {
                    let (a, b) = (v(a), v(b));
                    (a.min(b), a.max(b))
                }
            })
            .collect();
        iv.sort_unstable();
        let mut merged: Vec<(u32, u32)> = Vec::with_capacity(iv.len());
        for (lo, hi) in iv {
            match merged.last_mut() {
                Some(last) if lo <= last.1.saturating_add(1) => last.1 = last.1.max(hi),
                _ => merged.push((lo, hi)),
            }
        }
        Intervals(merged)
    }

    pub fn contains(&self, value: u32) -> bool {
        match self.0.binary_search_by(|(lo, _)| lo.cmp(&value)) {
            Ok(_) => true,
            Err(0) => false,
            Err(i) => self.0[i - 1].1 >= value,
        }
    }
}

fn astr(a: &AString<'_>) -> String {
    let b: &[u8] = a.as_ref();
    String::from_utf8_lossy(b).to_lowercase()
}

fn has_flag(c: &Candidate<'_>, f: &str) -> bool {
    c.flags.iter().any(|x| x.eq_ignore_ascii_case(f))
}

fn naive(d: &imap_codec::imap_types::datetime::NaiveDate) -> NaiveDate {
    *AsRef::<NaiveDate>::as_ref(d)
}

fn internal_day(c: &Candidate<'_>) -> Option<NaiveDate> {
    let m = c.meta?;
    Utc.timestamp_opt(m.internal_date, 0).single().map(|d| d.date_naive())
}

/// The Date: header's calendar date in its own zone (RFC 3501 ignores
/// the time and the zone for SENT* keys).
fn sent_day(c: &Candidate<'_>) -> Option<NaiveDate> {
    let d = c.meta?.envelope.date.as_ref()?;
    let header = format!("Date: {d}\r\n\r\n");
    let parsed = MessageParser::default().parse_headers(header.as_bytes())?;
    let dt = parsed.date()?;
    NaiveDate::from_ymd_opt(i32::from(dt.year), u32::from(dt.month), u32::from(dt.day))
}

fn field_contains(d: Option<&Decoded>, name: &str, needle: &str) -> bool {
    d.is_some_and(|d| d.headers.iter().any(|(n, v)| n == name && v.contains(needle)))
}

pub fn matches(key: &SearchKey<'_>, c: &Candidate<'_>, s: &Scope) -> bool {
    use SearchKey::*;
    match key {
        And(keys) => keys.as_ref().iter().all(|k| matches(k, c, s)),
        Not(k) => !matches(k, c, s),
        Or(a, b) => matches(a, c, s) || matches(b, c, s),
        SequenceSet(set) => s.contains(set, c.seq, s.max_seq),
        Uid(set) => s.contains(set, c.uid, s.max_uid),
        All => true,
        Answered => has_flag(c, "\\Answered"),
        Deleted => has_flag(c, "\\Deleted"),
        Draft => has_flag(c, "\\Draft"),
        Flagged => has_flag(c, "\\Flagged"),
        Seen => has_flag(c, "\\Seen"),
        Unanswered => !has_flag(c, "\\Answered"),
        Undeleted => !has_flag(c, "\\Deleted"),
        Undraft => !has_flag(c, "\\Draft"),
        Unflagged => !has_flag(c, "\\Flagged"),
        Unseen => !has_flag(c, "\\Seen"),
        Keyword(k) => has_flag(c, k.as_ref()),
        Unkeyword(k) => !has_flag(c, k.as_ref()),
        // \Recent is in the flags of IMAP4rev1 sessions only (IMAP4rev2
        // dropped it): there NEW and RECENT match nothing, OLD everything.
        Recent => has_flag(c, "\\Recent"),
        New => has_flag(c, "\\Recent") && !has_flag(c, "\\Seen"),
        Old => !has_flag(c, "\\Recent"),
        Larger(n) => c.meta.is_some_and(|m| m.size > u64::from(*n)),
        Smaller(n) => c.meta.is_some_and(|m| m.size < u64::from(*n)),
        Before(d) => internal_day(c).is_some_and(|x| x < naive(d)),
        On(d) => internal_day(c).is_some_and(|x| x == naive(d)),
        Since(d) => internal_day(c).is_some_and(|x| x >= naive(d)),
        SentBefore(d) => sent_day(c).is_some_and(|x| x < naive(d)),
        SentOn(d) => sent_day(c).is_some_and(|x| x == naive(d)),
        SentSince(d) => sent_day(c).is_some_and(|x| x >= naive(d)),
        Older(n) => c.meta.is_some_and(|m| m.internal_date <= s.now - i64::from(n.get())),
        Younger(n) => c.meta.is_some_and(|m| m.internal_date >= s.now - i64::from(n.get())),
        From(v) => field_contains(c.header, "from", &astr(v)),
        To(v) => field_contains(c.header, "to", &astr(v)),
        Cc(v) => field_contains(c.header, "cc", &astr(v)),
        Bcc(v) => field_contains(c.header, "bcc", &astr(v)),
        Subject(v) => field_contains(c.header, "subject", &astr(v)),
        Header(name, v) => {
            let (name, v) = (astr(name), astr(v));
            match c.header {
                // An empty value matches every message that has the field.
                Some(d) => d.headers.iter().any(|(n, x)| *n == name && x.contains(&v)),
                None => false,
            }
        }
        Body(v) => c.text.is_some_and(|t| t.body.contains(&astr(v))),
        Text(v) => {
            let v = astr(v);
            c.text.is_some_and(|t| t.body.contains(&v) || t.headers.iter().any(|(_, x)| x.contains(&v)))
        }
        ModSequence { modseq, .. } => c.modseq >= *modseq,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use imap_codec::imap_types::sequence::SequenceSet;

    #[test]
    fn plain_mail_is_searched_without_the_parser_and_finds_the_same() {
        let plain = "Subject: Grüße\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nZÜRICH café\r\n".as_bytes();
        assert!(plain_body(plain).is_some());
        let fast = decode_message(plain, true);
        let slow = decode_message_inner_parsed(plain);
        assert_eq!(fast.body.trim(), slow.body.trim());
        assert!(fast.body.contains("zürich café"));
        assert!(fast.headers.iter().any(|(n, v)| n == "subject" && v.contains("grüße")));
        // Anything encoded goes through the parser.
        for encoded in [
            &b"Content-Transfer-Encoding: base64\r\n\r\nWsOccmljaA==\r\n"[..],
            b"Content-Type: text/plain; charset=iso-8859-1\r\n\r\nZ\xfcrich\r\n",
            b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n\r\nx\r\n--b--\r\n",
        ] {
            assert!(plain_body(encoded).is_none());
            assert!(decode_message(encoded, false).body.contains("z\u{fc}rich") || encoded.starts_with(b"Content-Type: multipart"));
        }
    }

    fn decode_message_inner_parsed(raw: &[u8]) -> Decoded {
        let m = MessageParser::default().parse(raw).unwrap();
        let mut body = String::new();
        collect_text(&m, &mut body, 0);
        Decoded { headers: vec![], body: body.to_lowercase() }
    }

    #[test]
    fn intervals_merge_and_answer_by_binary_search() {
        let set: SequenceSet = "7,1:3,5,4,10:*,2".try_into().unwrap();
        let iv = Intervals::new(&set, 12);
        assert_eq!(iv.0, vec![(1, 5), (7, 7), (10, 12)]);
        for (v, want) in [(0, false), (1, true), (5, true), (6, false), (7, true), (9, false), (12, true), (13, false)] {
            assert_eq!(iv.contains(v), want, "{v}");
        }
        // `*` below the other end: a range is unordered.
        let set: SequenceSet = "5:*".try_into().unwrap();
        assert_eq!(Intervals::new(&set, 3).0, vec![(3, 5)]);
    }
}
