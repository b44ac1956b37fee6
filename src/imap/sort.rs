//! SORT (RFC 5256 §3) and SORT=DISPLAY (RFC 5957): the sort keys of a
//! message, taken from its stored metadata (header section, size, arrival;
//! never the body), and the ordering. Pure: the session loads the metadata
//! and writes the response.
//!
//! Keys follow the RFCs: SUBJECT compares the *base subject* (§2.1: encoded
//! words decoded, `Re:`/`Fwd:`/`[blob]` leaders and `(fwd)` trailers
//! removed), FROM/TO/CC the mailbox (local part) of the first address,
//! DISPLAYFROM/DISPLAYTO its display name (or `mailbox@host` without one),
//! DATE the Date header in UTC (INTERNALDATE when it is missing or does not
//! parse), ARRIVAL the INTERNALDATE, SIZE RFC822.SIZE. Strings compare by
//! i;ascii-casemap (ASCII letters folded to upper case, bytes otherwise);
//! ties keep mailbox order (sequence numbers), so the sort is stable and
//! near-linear: one header parse per message, then O(n log n).

use std::cmp::Ordering;

use imap_codec::imap_types::extensions::sort::{SortCriterion, SortKey};
use mail_parser::{HeaderName, HeaderValue, MessageParser};

use crate::mail::message::MessageMeta;

/// What SORT compares for one message.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Keys {
    pub arrival: i64,
    pub date: i64,
    pub size: u64,
    pub subject: Vec<u8>,
    pub from: Vec<u8>,
    pub to: Vec<u8>,
    pub cc: Vec<u8>,
    pub display_from: Vec<u8>,
    pub display_to: Vec<u8>,
}

/// i;ascii-casemap: ASCII letters upper-cased, everything else as is.
fn casemap(s: &str) -> Vec<u8> {
    s.bytes().map(|b| b.to_ascii_uppercase()).collect()
}

/// Encoded words (RFC 2047) of a display name decoded, by the MIME parser
/// we already trust with headers.
fn decode_words(s: &str) -> String {
    if !s.contains("=?") {
        return s.to_string();
    }
    let header = format!("Subject: {s}\r\n\r\n");
    MessageParser::default()
        .parse_headers(header.as_bytes())
        .and_then(|m| m.subject().map(str::to_string))
        .unwrap_or_else(|| s.to_string())
}

/// (mailbox key, display key) of the first address of a field, as ENVELOPE
/// shows it: a group's first entry is the group (its name in the mailbox
/// place), so that is what sorts, as Dovecot does.
fn address_keys(value: Option<&str>) -> (Vec<u8>, Vec<u8>) {
    let list = value.map(super::address::parse_address_list).unwrap_or_default();
    let Some(first) = list.first() else { return (vec![], vec![]) };
    let mailbox = first.mailbox.clone().unwrap_or_default();
    let display = match (&first.name, &first.host) {
        (Some(n), _) if !n.trim().is_empty() => decode_words(n.trim()),
        // (ENVELOPE's stand-in for a missing domain is no domain here.)
        (_, Some(h)) if h != "MISSING_DOMAIN" => format!("{mailbox}@{h}"),
        (_, Some(_)) => mailbox.clone(),
        (_, None) => mailbox.clone(),
    };
    (casemap(&mailbox), casemap(&display))
}

/// The base subject (RFC 5256 §2.1) of a decoded subject.
pub fn base_subject(subject: &str) -> String {
    // (1) Whitespace runs become one space.
    let mut s: String = subject.split_whitespace().collect::<Vec<_>>().join(" ");
    loop {
        let before = s.clone();
        // (2) Trailers: "(fwd)" and whitespace, repeatedly.
        loop {
            let t = s.trim_end();
            let lower = t.to_ascii_lowercase();
            if lower.ends_with("(fwd)") {
                s = t[..t.len() - 5].to_string();
            } else {
                s = t.to_string();
                break;
            }
        }
        // (3)-(5) Leaders: "re:", "fw:", "fwd:" with optional blobs, and a
        // leading blob if something remains after it.
        loop {
            let t = s.trim_start();
            if let Some(rest) = strip_refwd(t) {
                s = rest.to_string();
                continue;
            }
            if let Some(rest) = strip_blob(t) {
                if !rest.trim().is_empty() {
                    s = rest.to_string();
                    continue;
                }
            }
            s = t.to_string();
            break;
        }
        // (6) "[fwd: ... ]" wraps the whole subject.
        let lower = s.to_ascii_lowercase();
        if lower.starts_with("[fwd:") && s.ends_with(']') {
            s = s[5..s.len() - 1].to_string();
        }
        if s == before {
            return s.trim().to_string();
        }
    }
}

/// `subj-blob = "[" *BLOBCHAR "]" *WSP`: what follows it.
fn strip_blob(s: &str) -> Option<&str> {
    let rest = s.strip_prefix('[')?;
    let end = rest.find(|c| c == ']' || c == '[')?;
    if rest.as_bytes()[end] != b']' {
        return None;
    }
    Some(rest[end + 1..].trim_start())
}

/// `subj-refwd = ("re" / ("fw" ["d"])) *WSP [subj-blob] ":"`: what follows.
fn strip_refwd(s: &str) -> Option<&str> {
    let lower = s.to_ascii_lowercase();
    let n = if lower.starts_with("fwd") {
        3
    } else if lower.starts_with("fw") || lower.starts_with("re") {
        2
    } else {
        return None;
    };
    let mut rest = s[n..].trim_start();
    if let Some(after) = strip_blob(rest) {
        rest = after;
    }
    rest.strip_prefix(':').map(str::trim_start)
}

/// The sort keys of a message from its stored metadata.
pub fn keys(meta: &MessageMeta) -> Keys {
    let mut k = Keys {
        arrival: meta.internal_date,
        date: meta.internal_date,
        size: meta.size,
        ..Keys::default()
    };
    // The parser is not ours and mail is hostile: a panic leaves the
    // header keys empty for this message only.
    let parsed = std::panic::catch_unwind(|| {
        let Some(m) = MessageParser::default().parse_headers(&meta.header) else { return None };
        let get = |name: HeaderName<'static>| m.headers().iter().find(|h| h.name == name).map(|h| h.value.clone());
        let subject = match get(HeaderName::Subject) {
            Some(HeaderValue::Text(t)) => t.to_string(),
            Some(HeaderValue::TextList(l)) => l.join(" "),
            _ => String::new(),
        };
        let date = match get(HeaderName::Date) {
            Some(HeaderValue::DateTime(d)) if d.is_valid() => Some(d.to_timestamp()),
            _ => None,
        };
        Some((subject, date))
    });
    if let Ok(Some((subject, date))) = parsed {
        k.subject = casemap(&base_subject(&subject));
        if let Some(d) = date {
            k.date = d;
        }
    }
    let env = &meta.envelope;
    (k.from, k.display_from) = address_keys(env.from.as_deref());
    (k.to, k.display_to) = address_keys(env.to.as_deref());
    (k.cc, _) = address_keys(env.cc.as_deref());
    k
}

fn compare(a: &Keys, b: &Keys, criteria: &[SortCriterion]) -> Ordering {
    for c in criteria {
        let o = match c.key {
            SortKey::Arrival => a.arrival.cmp(&b.arrival),
            SortKey::Date => a.date.cmp(&b.date),
            SortKey::Size => a.size.cmp(&b.size),
            SortKey::Subject => a.subject.cmp(&b.subject),
            SortKey::From => a.from.cmp(&b.from),
            SortKey::To => a.to.cmp(&b.to),
            SortKey::Cc => a.cc.cmp(&b.cc),
            SortKey::DisplayFrom => a.display_from.cmp(&b.display_from),
            SortKey::DisplayTo => a.display_to.cmp(&b.display_to),
        };
        let o = if c.reverse { o.reverse() } else { o };
        if o != Ordering::Equal {
            return o;
        }
    }
    Ordering::Equal
}

/// Sorts `(number, keys)` rows given in mailbox order; equal rows keep it.
pub fn sort<T>(rows: &mut [(T, Keys)], criteria: &[SortCriterion]) {
    rows.sort_by(|a, b| compare(&a.1, &b.1, criteria));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_subject_follows_rfc5256() {
        for (given, base) in [
            ("Re: hello", "hello"),
            ("RE:  Fwd: [list] hello (fwd)", "hello"),
            ("Fw: [fwd: hello]", "hello"),
            ("[PATCH] fix it", "fix it"),
            ("[only a blob]", "[only a blob]"),
            ("re [tag]: again", "again"),
            ("Reply to all", "Reply to all"),
            ("  spaced\t out  ", "spaced out"),
            ("", ""),
        ] {
            assert_eq!(base_subject(given), base, "{given:?}");
        }
    }

    fn meta(header: &str, internal_date: i64, size: u64) -> MessageMeta {
        let mut m = crate::mail::message::parse_meta(format!("{header}\r\nbody\r\n").as_bytes(), internal_date);
        m.size = size;
        m
    }

    #[test]
    fn keys_come_from_the_header_and_fall_back_to_internaldate() {
        let k = keys(&meta(
            "From: \"Zed\" <alice@x.test>\r\nTo: bob@y.test\r\nSubject: =?UTF-8?Q?Re=3A_caf=C3=A9?=\r\nDate: Mon, 1 Jan 2024 12:00:00 +0200\r\n",
            5,
            10,
        ));
        assert_eq!(k.from, b"ALICE");
        assert_eq!(k.display_from, b"ZED");
        assert_eq!(k.to, b"BOB");
        assert_eq!(k.display_to, b"BOB@Y.TEST", "no display name: the address");
        assert_eq!(k.subject, "CAFé".as_bytes(), "decoded, leader removed, ASCII folded only");
        assert_eq!(k.date, 1704103200, "in UTC");
        let k = keys(&meta("Subject: x\r\nDate: not a date\r\n", 77, 1));
        assert_eq!(k.date, 77);
        assert!(k.from.is_empty());
        // A group sorts by its name; a display name is decoded.
        let k = keys(&meta("To: team: a@x.test, b@x.test;\r\nCc: =?iso-8859-1?q?foo_aar?= <e@f.g>\r\nFrom: d\r\n", 1, 1));
        assert_eq!((k.to.as_slice(), k.display_to.as_slice()), (&b"TEAM"[..], &b"TEAM"[..]));
        assert_eq!(k.cc, b"E");
        assert_eq!(k.display_from, b"D", "no domain, no name: the mailbox");
    }

    #[test]
    fn criteria_apply_in_order_with_reverse_and_ties_in_mailbox_order() {
        let k = |size: u64, subject: &str| Keys { size, subject: subject.as_bytes().to_vec(), ..Keys::default() };
        let mut rows = vec![(1, k(30, "B")), (2, k(10, "A")), (3, k(20, "B")), (4, k(10, "B"))];
        let by = |key, reverse| SortCriterion { reverse, key };
        sort(&mut rows, &[by(SortKey::Subject, false), by(SortKey::Size, true)]);
        assert_eq!(rows.iter().map(|r| r.0).collect::<Vec<_>>(), vec![2, 1, 3, 4]);
        sort(&mut rows, &[by(SortKey::Cc, false)]);
        assert_eq!(rows.iter().map(|r| r.0).collect::<Vec<_>>(), vec![2, 1, 3, 4], "all equal: stable");
    }
}
