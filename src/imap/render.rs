//! IMAP response syntax: strings (quoted or literal), NIL, flag lists,
//! dates, ENVELOPE and BODYSTRUCTURE from stored metadata. Pure byte
//! building; no I/O and no knowledge of sessions.
//!
//! Responses are rendered here rather than through imap-codec's encoder
//! because FETCH must stream message bodies (a 50 MiB literal is never
//! built in memory) and because ENVELOPE/BODYSTRUCTURE come from our own
//! stored metadata, not from imap-types values.

use chrono::{FixedOffset, TimeZone};

use super::address::{parse_address_list, Address};
use crate::mail::message::{Envelope, MessageMeta, Part};

/// A string as IMAP wants it, chosen as Dovecot chooses (clients see the
/// same bytes from both): quoted unless it holds CR, LF, NUL, 8-bit
/// bytes or more than four characters to escape; a literal otherwise.
pub fn string(out: &mut Vec<u8>, s: &[u8]) {
    let escapes = s.iter().filter(|&&c| c == b'"' || c == b'\\').count();
    let quotable = escapes <= 4 && s.iter().all(|&c| c != b'\r' && c != b'\n' && c != 0 && c < 0x80);
    if quotable {
        out.push(b'"');
        for &c in s {
            if c == b'"' || c == b'\\' {
                out.push(b'\\');
            }
            out.push(c);
        }
        out.push(b'"');
    } else {
        out.extend_from_slice(format!("{{{}}}\r\n", s.len()).as_bytes());
        out.extend_from_slice(s);
    }
}

/// A string or NIL.
pub fn nstring(out: &mut Vec<u8>, s: Option<&[u8]>) {
    match s {
        Some(s) => string(out, s),
        None => out.extend_from_slice(b"NIL"),
    }
}

/// An astring for mailbox names and the like: an atom when possible.
pub fn astring(out: &mut Vec<u8>, s: &str) {
    let atom = !s.is_empty()
        && s.bytes().all(|c| c > 0x20 && c < 0x7f && !b"(){%*\"\\]".contains(&c))
        && !s.eq_ignore_ascii_case("NIL");
    if atom {
        out.extend_from_slice(s.as_bytes());
    } else {
        string(out, s.as_bytes());
    }
}

/// `(\Seen \Flagged ...)`
pub fn flag_list(out: &mut Vec<u8>, flags: &[String]) {
    out.push(b'(');
    out.extend_from_slice(flags.join(" ").as_bytes());
    out.push(b')');
}

/// INTERNALDATE: `"17-Jul-1996 02:44:25 -0700"` (we keep UTC).
pub fn internal_date(secs: i64) -> String {
    let tz = FixedOffset::east_opt(0).unwrap_or_else(|| unreachable!("zero offset is valid"));
    match tz.timestamp_opt(secs, 0).single() {
        Some(d) => d.format("\"%d-%b-%Y %H:%M:%S %z\"").to_string(),
        None => "\"01-Jan-1970 00:00:00 +0000\"".into(),
    }
}

/// Unfolds a header value (CRLF + WSP → WSP) as ENVELOPE shows it.
pub fn unfold(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    let mut chars = v.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\r' if chars.peek() == Some(&'\n') => {}
            '\n' => {}
            c => out.push(c),
        }
    }
    out.trim().to_string()
}

fn addresses(out: &mut Vec<u8>, list: &[Address]) {
    if list.is_empty() {
        out.extend_from_slice(b"NIL");
        return;
    }
    out.push(b'(');
    for a in list {
        out.push(b'(');
        nstring(out, a.name.as_deref().map(str::as_bytes));
        out.push(b' ');
        nstring(out, a.adl.as_deref().map(str::as_bytes));
        out.push(b' ');
        nstring(out, a.mailbox.as_deref().map(str::as_bytes));
        out.push(b' ');
        nstring(out, a.host.as_deref().map(str::as_bytes));
        out.push(b')');
    }
    out.push(b')');
}

fn header_addresses(v: Option<&str>) -> Vec<Address> {
    v.map(|v| parse_address_list(&unfold(v))).unwrap_or_default()
}

/// ENVELOPE from the stored header fields (RFC 3501 §7.4.2: Sender and
/// Reply-To default to From).
pub fn envelope(out: &mut Vec<u8>, meta: &MessageMeta) {
    envelope_fields(out, &meta.envelope)
}

fn envelope_fields(out: &mut Vec<u8>, e: &Envelope) {
    // A folded value, or one with trailing space, goes out as a literal
    // without its line breaks and outer space, as Dovecot sends it.
    let text = |out: &mut Vec<u8>, v: &Option<String>| match v {
        Some(v) if v.contains(['\r', '\n']) || v.ends_with([' ', '\t']) => {
            let u = unfold(v);
            out.extend_from_slice(format!("{{{}}}\r\n", u.len()).as_bytes());
            out.extend_from_slice(u.as_bytes());
        }
        Some(v) => string(out, unfold(v).as_bytes()),
        None => out.extend_from_slice(b"NIL"),
    };
    out.push(b'(');
    text(out, &e.date);
    out.push(b' ');
    text(out, &e.subject);
    let from = header_addresses(e.from.as_deref());
    let sender = match header_addresses(e.sender.as_deref()) {
        s if s.is_empty() => from.clone(),
        s => s,
    };
    let reply_to = match header_addresses(e.reply_to.as_deref()) {
        r if r.is_empty() => from.clone(),
        r => r,
    };
    for list in [&from, &sender, &reply_to] {
        out.push(b' ');
        addresses(out, list);
    }
    for v in [&e.to, &e.cc, &e.bcc] {
        out.push(b' ');
        addresses(out, &header_addresses(v.as_deref()));
    }
    out.push(b' ');
    text(out, &e.in_reply_to);
    out.push(b' ');
    text(out, &e.message_id);
    out.push(b')');
}

fn params(out: &mut Vec<u8>, params: &[(String, String)]) {
    if params.is_empty() {
        out.extend_from_slice(b"NIL");
        return;
    }
    out.push(b'(');
    for (i, (k, v)) in params.iter().enumerate() {
        if i > 0 {
            out.push(b' ');
        }
        string(out, k.to_ascii_lowercase().as_bytes());
        out.push(b' ');
        string(out, v.as_bytes());
    }
    out.push(b')');
}

/// BODYSTRUCTURE (`extended`) or BODY of the part at `idx`.
pub fn body_structure(out: &mut Vec<u8>, meta: &MessageMeta, idx: usize, extended: bool) {
    body_structure_depth(out, meta, idx, extended, 0)
}

fn body_structure_depth(out: &mut Vec<u8>, meta: &MessageMeta, idx: usize, extended: bool, depth: usize) {
    let Some(p) = meta.parts.get(idx) else {
        out.extend_from_slice(b"NIL");
        return;
    };
    // Hostile nesting cannot make the answer (or the stack) unbounded.
    if depth > 32 {
        out.extend_from_slice(b"(\"text\" \"plain\" NIL NIL NIL \"7bit\" 0 0)");
        return;
    }
    out.push(b'(');
    if p.ctype == "multipart" {
        if p.children.is_empty() {
            // A multipart whose parts cannot be found (no boundary): one
            // empty text part, as Dovecot shows it.
            out.extend_from_slice(b"(\"text\" \"plain\" (\"charset\" \"us-ascii\") NIL NIL \"7bit\" 0 0");
            if extended {
                out.extend_from_slice(b" NIL NIL NIL NIL");
            }
            out.push(b')');
        }
        for c in &p.children {
            body_structure_depth(out, meta, *c, extended, depth + 1);
        }
        out.push(b' ');
        string(out, p.subtype.as_bytes());
        if extended {
            out.push(b' ');
            params(out, &p.params);
            out.push(b' ');
            disposition(out, p);
            out.push(b' ');
            language_location(out, p);
        }
        out.push(b')');
        return;
    }
    let (ctype, subtype) = (p.ctype.as_str(), p.subtype.as_str());
    string(out, ctype.as_bytes());
    out.push(b' ');
    string(out, subtype.as_bytes());
    out.push(b' ');
    let mut ps = p.params.clone();
    if ctype == "text" && !ps.iter().any(|(k, _)| k.eq_ignore_ascii_case("charset")) {
        ps.push(("charset".into(), "us-ascii".into()));
    }
    params(out, &ps);
    out.push(b' ');
    nstring(out, p.id.as_deref().map(str::as_bytes));
    out.push(b' ');
    nstring(out, p.description.as_deref().map(str::as_bytes));
    out.push(b' ');
    string(out, p.encoding.as_deref().unwrap_or("7bit").as_bytes());
    out.push(b' ');
    let size = p.offset_end.saturating_sub(p.offset_body);
    out.extend_from_slice(size.to_string().as_bytes());
    if ctype == "message" && subtype == "rfc822" {
        out.push(b' ');
        match p.message {
            Some(m) => {
                nested_envelope(out, p);
                out.push(b' ');
                body_structure_depth(out, meta, m, extended, depth + 1);
            }
            None => out.extend_from_slice(b"NIL NIL"),
        }
        out.push(b' ');
        out.extend_from_slice(p.lines.to_string().as_bytes());
    } else if ctype == "text" {
        out.push(b' ');
        out.extend_from_slice(p.lines.to_string().as_bytes());
    }
    if extended {
        out.extend_from_slice(b" NIL ");
        disposition(out, p);
        out.push(b' ');
        language_location(out, p);
    }
    out.push(b')');
}

fn language_location(out: &mut Vec<u8>, p: &Part) {
    match &p.language {
        Some(tags) if !tags.is_empty() => {
            out.push(b'(');
            for (i, t) in tags.iter().enumerate() {
                if i > 0 {
                    out.push(b' ');
                }
                string(out, t.as_bytes());
            }
            out.push(b')');
        }
        _ => out.extend_from_slice(b"NIL"),
    }
    out.push(b' ');
    nstring(out, p.location.as_deref().map(str::as_bytes));
}

fn disposition(out: &mut Vec<u8>, p: &Part) {
    match &p.disposition {
        Some((kind, ps)) => {
            out.push(b'(');
            string(out, kind.as_bytes());
            out.push(b' ');
            params(out, ps);
            out.push(b')');
        }
        None => out.extend_from_slice(b"NIL"),
    }
}

/// The envelope of the message inside a message/rfc822 part.
fn nested_envelope(out: &mut Vec<u8>, p: &Part) {
    match &p.envelope {
        Some(e) => envelope_fields(out, e),
        None => out.extend_from_slice(b"(NIL NIL NIL NIL NIL NIL NIL NIL NIL NIL)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_quote_or_literal() {
        let mut o = vec![];
        string(&mut o, b"a \"b\" \\c");
        assert_eq!(o, b"\"a \\\"b\\\" \\\\c\"");
        let mut o = vec![];
        string(&mut o, "café".as_bytes());
        assert_eq!(o, b"{5}\r\ncaf\xc3\xa9");
        let mut o = vec![];
        astring(&mut o, "INBOX");
        astring(&mut o, " x");
        assert_eq!(o, b"INBOX\" x\"");
    }

    #[test]
    fn dates() {
        assert_eq!(internal_date(0), "\"01-Jan-1970 00:00:00 +0000\"");
        assert_eq!(internal_date(1_700_000_000), "\"14-Nov-2023 22:13:20 +0000\"");
    }
}
