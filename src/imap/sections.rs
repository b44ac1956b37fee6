//! BODY[section] addressing: which bytes of the raw message a section
//! names (RFC 3501 §6.4.5 / RFC 9051 §6.4.5), from the stored MIME
//! structure, and the header filtering of HEADER.FIELDS (.NOT). Pure.

use crate::mail::message::{MessageMeta, Part};

/// What a section resolves to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Spec {
    /// These bytes of the raw message.
    Range(u64, u64),
    /// The header in this byte range, filtered by field names.
    Fields { start: u64, end: u64, names: Vec<String>, not: bool },
    /// No such part (sent as an empty string, as Dovecot does).
    Missing,
}

/// The part kinds a section text names after the part numbers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    All,
    Header,
    Fields(Vec<String>, bool),
    Text,
    Mime,
}

fn is_message(p: &Part) -> bool {
    p.ctype == "message" && (p.subtype == "rfc822" || p.subtype == "global")
}

/// Part `n` (1-based) inside `base`: a multipart's child, or the part
/// itself for part 1 of a single-part message.
fn step(meta: &MessageMeta, base: usize, n: u32) -> Option<usize> {
    let p = meta.parts.get(base)?;
    if p.ctype == "multipart" {
        // (No children: a multipart without a boundary has no parts.)
        p.children.get((n as usize).checked_sub(1)?).copied()
    } else if n == 1 {
        Some(base)
    } else {
        None
    }
}

/// The part at a path of part numbers (empty path: the whole message).
pub fn find_part(meta: &MessageMeta, path: &[u32]) -> Option<usize> {
    let mut cur = 0usize;
    for (depth, n) in path.iter().enumerate() {
        let base = if depth == 0 {
            0
        } else {
            let p = meta.parts.get(cur)?;
            if is_message(p) {
                p.message?
            } else {
                cur
            }
        };
        // Part 1 of a leaf inside a multipart is the leaf itself (as
        // Dovecot answers BODY[2.1] of a text part 2); a single-part
        // message's part 1 has no sub-parts, unless the message itself is
        // a message/rfc822 (then 1.1 is the embedded message's part 1).
        if depth > 0 && cur == 0 && !meta.parts.first().is_some_and(is_message) {
            return None;
        }
        cur = step(meta, base, *n)?;
    }
    Some(cur)
}

pub fn resolve(meta: &MessageMeta, path: &[u32], kind: &Kind) -> Spec {
    let root = match meta.parts.first() {
        Some(r) => r,
        None => return Spec::Range(0, meta.size),
    };
    // The message whose header/text is meant: the top one, or the nested
    // one of a message/rfc822 part.
    let message_bounds = |part: Option<usize>| -> Option<(u64, u64, u64)> {
        match part {
            None => Some((0, root.offset_body.min(meta.size), meta.size)),
            Some(i) => {
                let p = meta.parts.get(i)?;
                let nested = meta.parts.get(p.message?)?;
                // The embedded message ends where its enclosing part does
                // (a multipart's epilogue belongs to its TEXT).
                let end = p.offset_end.max(nested.offset_end).max(nested.offset_body);
                Some((nested.offset_header, nested.offset_body, end))
            }
        }
    };
    let part = if path.is_empty() {
        None
    } else {
        match find_part(meta, path) {
            Some(p) => Some(p),
            None => return Spec::Missing,
        }
    };
    match kind {
        Kind::All => match part {
            None => Spec::Range(0, meta.size),
            Some(i) => {
                let p = &meta.parts[i];
                Spec::Range(p.offset_body, p.offset_end.max(p.offset_body))
            }
        },
        Kind::Mime => match part {
            None => Spec::Missing,
            Some(i) => {
                let p = &meta.parts[i];
                if path.len() == 1 && meta.parts[0].ctype != "multipart" {
                    // The MIME header of part 1 of a single-part message is
                    // the message header.
                    return Spec::Range(0, root.offset_body);
                }
                Spec::Range(p.offset_header, p.offset_body)
            }
        },
        Kind::Header | Kind::Text | Kind::Fields(..) => match message_bounds(part) {
            None => Spec::Missing,
            Some((h, b, e)) => match kind {
                Kind::Header => Spec::Range(h, b),
                Kind::Text => Spec::Range(b, e),
                Kind::Fields(names, not) => Spec::Fields {
                    start: h,
                    end: b,
                    names: names.clone(),
                    not: *not,
                },
                _ => Spec::Missing,
            },
        },
    }
}

/// The fields of a header section whose names are (or, with `not`, are
/// not) in `names`, in their original order and form, followed by the
/// blank line that ends a header.
pub fn filter_header(header: &[u8], names: &[String], not: bool) -> Vec<u8> {
    let mut out = vec![];
    let mut keep = false;
    let mut ended = false;
    for line in header.split_inclusive(|c| *c == b'\n') {
        let blank = line == b"\r\n" || line == b"\n";
        if blank {
            ended = true;
            break;
        }
        let continuation = line.first().is_some_and(|c| *c == b' ' || *c == b'\t');
        if !continuation {
            let name = line.split(|c| *c == b':').next().unwrap_or(b"");
            let name = String::from_utf8_lossy(name).trim().to_string();
            let listed = names.iter().any(|n| n.eq_ignore_ascii_case(&name));
            keep = listed != not;
        }
        if keep {
            out.extend_from_slice(line);
            if !line.ends_with(b"\n") {
                out.extend_from_slice(b"\r\n");
            }
        }
    }
    // The blank line that ends a header, if this one had it (a message
    // that is all header has none, and Dovecot adds none).
    if ended {
        out.extend_from_slice(b"\r\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mail::message::parse_meta;

    const MSG: &[u8] = b"From: a@x.test\r\nSubject: hi\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\none\r\n--b\r\nContent-Type: message/rfc822\r\n\r\nSubject: inner\r\nContent-Type: multipart/alternative; boundary=c\r\n\r\n--c\r\n\r\ninner-a\r\n--c\r\nContent-Type: text/html\r\n\r\n<b>inner-b</b>\r\n--c--\r\n\r\n--b--\r\n";

    fn bytes(meta: &MessageMeta, path: &[u32], kind: Kind) -> Vec<u8> {
        match resolve(meta, path, &kind) {
            Spec::Range(s, e) => MSG[s as usize..e as usize].to_vec(),
            Spec::Fields { start, end, names, not } => filter_header(&MSG[start as usize..end as usize], &names, not),
            Spec::Missing => b"NIL".to_vec(),
        }
    }

    #[test]
    fn sections_of_a_nested_message() {
        let m = parse_meta(MSG, 0);
        assert_eq!(bytes(&m, &[1], Kind::All), b"one");
        assert_eq!(bytes(&m, &[1], Kind::Mime), b"Content-Type: text/plain\r\n\r\n");
        assert!(bytes(&m, &[], Kind::Header).starts_with(b"From: a@x.test\r\n"));
        assert!(bytes(&m, &[], Kind::Header).ends_with(b"\r\n\r\n"));
        assert_eq!(bytes(&m, &[2], Kind::Header), b"Subject: inner\r\nContent-Type: multipart/alternative; boundary=c\r\n\r\n");
        assert_eq!(bytes(&m, &[2, 1], Kind::All), b"inner-a");
        assert_eq!(bytes(&m, &[2, 2], Kind::All), b"<b>inner-b</b>");
        assert!(bytes(&m, &[2, 2], Kind::Mime).starts_with(b"Content-Type: text/html"));
        assert_eq!(bytes(&m, &[3], Kind::All), b"NIL");
        assert_eq!(bytes(&m, &[1, 1], Kind::All), b"one", "part 1 of a leaf is the leaf");
        assert_eq!(bytes(&m, &[], Kind::Fields(vec!["subject".into()], false)), b"Subject: hi\r\n\r\n");
        assert_eq!(bytes(&m, &[2], Kind::Fields(vec!["SUBJECT".into()], false)), b"Subject: inner\r\n\r\n");
        let not = bytes(&m, &[], Kind::Fields(vec!["subject".into(), "content-type".into()], true));
        assert_eq!(not, b"From: a@x.test\r\n\r\n");
    }

    #[test]
    fn single_part() {
        let raw = b"Subject: s\r\n\r\nbody\r\n";
        let m = parse_meta(raw, 0);
        assert_eq!(resolve(&m, &[1], &Kind::All), Spec::Range(14, 20));
        assert_eq!(resolve(&m, &[], &Kind::Text), Spec::Range(14, 20));
        assert_eq!(resolve(&m, &[2], &Kind::All), Spec::Missing);
    }
}
