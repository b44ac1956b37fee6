//! The command syntax of extensions imap-codec 2.0.0-alpha.10 does not
//! parse yet, taken off the command line before imap-codec sees it:
//! ESEARCH's `SEARCH RETURN (...)`, LIST-EXTENDED's selection and return
//! options, CREATE-SPECIAL-USE's `(USE (...))`, and SEARCHRES's `$`.
//! Only the first line of a message is rewritten (these clauses never
//! follow a literal in practice; if they do, imap-codec answers BAD).
//! Should imap-codec grow these, this module goes away.

/// Options found and removed from a command line.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Extras {
    /// SEARCH RETURN (...) options, upper-case; Some(empty) = RETURN ().
    pub search_return: Option<Vec<String>>,
    /// LIST selection options, upper-case.
    pub list_select: Vec<String>,
    /// LIST RETURN options, upper-case (STATUS's items as `STATUS`, with
    /// the items in `list_status`).
    pub list_return: Vec<String>,
    pub list_status: Vec<String>,
    /// LIST with several patterns `("a" "b")`: the patterns (unquoted);
    /// the line then carries `"*"` in their place.
    pub list_patterns: Vec<String>,
    /// CREATE (USE (...)) attributes, as given.
    pub create_use: Vec<String>,
    /// Whether `$` was used (and replaced).
    pub used_saved: bool,
}

/// A token of the first line with its byte span.
#[derive(Debug)]
struct Tok {
    start: usize,
    end: usize,
}

fn first_line(b: &[u8]) -> usize {
    b.iter().position(|c| *c == b'\n').map_or(b.len(), |p| if p > 0 && b[p - 1] == b'\r' { p - 1 } else { p })
}

/// Tokens of the line: atoms, quoted strings, parenthesised groups
/// (balanced, as one token), a literal announcement ends the scan.
fn tokens(line: &[u8]) -> Vec<Tok> {
    let mut out = vec![];
    let mut i = 0;
    while i < line.len() {
        match line[i] {
            b' ' => i += 1,
            b'"' => {
                let s = i;
                i += 1;
                while i < line.len() && line[i] != b'"' {
                    if line[i] == b'\\' {
                        i += 1;
                    }
                    i += 1;
                }
                i = (i + 1).min(line.len());
                out.push(Tok { start: s, end: i });
            }
            b'(' => {
                let s = i;
                let mut depth = 0;
                let mut quoted = false;
                while i < line.len() {
                    match line[i] {
                        b'\\' if quoted => i += 1,
                        b'"' => quoted = !quoted,
                        b'(' if !quoted => depth += 1,
                        b')' if !quoted => {
                            depth -= 1;
                            if depth == 0 {
                                i += 1;
                                break;
                            }
                        }
                        _ => {}
                    }
                    i += 1;
                }
                out.push(Tok { start: s, end: i.min(line.len()) });
            }
            b'{' => break,
            _ => {
                let s = i;
                while i < line.len() && line[i] != b' ' && line[i] != b'(' {
                    i += 1;
                }
                out.push(Tok { start: s, end: i });
            }
        }
    }
    out
}

fn words_in_parens(g: &[u8]) -> Vec<String> {
    let inner = g.strip_prefix(b"(").and_then(|g| g.strip_suffix(b")")).unwrap_or(g);
    let mut out = vec![];
    for t in tokens(inner) {
        out.push(String::from_utf8_lossy(&inner[t.start..t.end]).to_string());
    }
    out
}

fn upper(s: &[u8]) -> String {
    String::from_utf8_lossy(s).to_ascii_uppercase()
}

/// Rewrites `msg` (removing the clauses imap-codec does not know) and says
/// what was removed. `saved` is the SEARCHRES result as an IMAP set.
pub fn preparse(msg: &[u8], saved: &str) -> (Vec<u8>, Extras) {
    let end = first_line(msg);
    let line = &msg[..end];
    let toks = tokens(line);
    let mut extras = Extras::default();
    let word = |i: usize| toks.get(i).map(|t| upper(&line[t.start..t.end]));
    let mut cut: Vec<(usize, usize, Vec<u8>)> = vec![];
    let mut cmd = 1;
    if word(1).as_deref() == Some("UID") {
        cmd = 2;
    }
    match word(cmd).as_deref() {
        Some("SEARCH") => {
            if word(cmd + 1).as_deref() == Some("RETURN") {
                if let Some(g) = toks.get(cmd + 2) {
                    if line[g.start] == b'(' {
                        extras.search_return = Some(words_in_parens(&line[g.start..g.end]).iter().map(|w| w.to_ascii_uppercase()).collect());
                        cut.push((toks[cmd + 1].start, (g.end + 1).min(line.len()), vec![]));
                    }
                }
            }
        }
        Some("LIST") => {
            let mut i = cmd + 1;
            if let Some(g) = toks.get(i) {
                if line[g.start] == b'(' {
                    extras.list_select = words_in_parens(&line[g.start..g.end]).iter().map(|w| w.to_ascii_uppercase()).collect();
                    cut.push((g.start, (g.end + 1).min(line.len()), vec![]));
                    i += 1;
                }
            }
            // reference, pattern (or a list of patterns), then RETURN (...)
            if let Some(g) = toks.get(i + 1) {
                if line[g.start] == b'(' {
                    extras.list_patterns = words_in_parens(&line[g.start..g.end])
                        .iter()
                        .map(|w| w.strip_prefix('"').and_then(|w| w.strip_suffix('"')).unwrap_or(w).replace("\\\"", "\"").replace("\\\\", "\\"))
                        .collect();
                    cut.push((g.start, g.end, b"\"*\"".to_vec()));
                }
            }
            if word(i + 2).as_deref() == Some("RETURN") {
                if let Some(g) = toks.get(i + 3) {
                    let opts = words_in_parens(&line[g.start..g.end]);
                    let mut k = 0;
                    while k < opts.len() {
                        let o = opts[k].to_ascii_uppercase();
                        if o == "STATUS" {
                            if let Some(items) = opts.get(k + 1) {
                                extras.list_status = words_in_parens(items.as_bytes()).iter().map(|w| w.to_ascii_uppercase()).collect();
                                k += 1;
                            }
                        }
                        extras.list_return.push(o);
                        k += 1;
                    }
                    cut.push((toks[i + 1].end, g.end, vec![]));
                }
            }
        }
        Some("CREATE") => {
            if let Some(g) = toks.get(cmd + 2) {
                let inner = words_in_parens(&line[g.start..g.end]);
                if line[g.start] == b'(' && inner.first().is_some_and(|w| w.eq_ignore_ascii_case("USE")) {
                    if let Some(uses) = inner.get(1) {
                        extras.create_use = words_in_parens(uses.as_bytes());
                    }
                    cut.push((toks[cmd + 1].end, g.end, vec![]));
                }
            }
        }
        _ => {}
    }
    // `$` as a whole token (a sequence set) in commands that take one.
    if matches!(word(cmd).as_deref(), Some("FETCH" | "STORE" | "COPY" | "MOVE" | "SEARCH" | "EXPUNGE")) {
        const STRING_KEYS: [&str; 9] = ["SUBJECT", "FROM", "TO", "CC", "BCC", "BODY", "TEXT", "KEYWORD", "UNKEYWORD"];
        for (i, t) in toks.iter().enumerate().skip(cmd) {
            // In SEARCH, `$` after a key that takes a string is that string.
            let string_arg = word(i - 1).is_some_and(|w| STRING_KEYS.contains(&w.as_str()))
                || (i >= 2 && word(i - 2).as_deref() == Some("HEADER"));
            if &line[t.start..t.end] == b"$" && !string_arg {
                extras.used_saved = true;
                cut.push((t.start, t.end, saved.as_bytes().to_vec()));
            }
        }
    }
    if cut.is_empty() {
        return (msg.to_vec(), extras);
    }
    cut.sort_by_key(|c| c.0);
    let mut out = Vec::with_capacity(msg.len());
    let mut at = 0;
    for (s, e, with) in cut {
        if s < at {
            continue;
        }
        out.extend_from_slice(&msg[at..s]);
        out.extend_from_slice(&with);
        at = e;
    }
    out.extend_from_slice(&msg[at..]);
    (out, extras)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pp(s: &str) -> (String, Extras) {
        let (b, e) = preparse(s.as_bytes(), "4:7");
        (String::from_utf8(b).unwrap(), e)
    }

    #[test]
    fn search_return() {
        let (b, e) = pp("a UID SEARCH RETURN (MIN COUNT) UNSEEN\r\n");
        assert_eq!(b, "a UID SEARCH UNSEEN\r\n");
        assert_eq!(e.search_return, Some(vec!["MIN".into(), "COUNT".into()]));
        let (b, e) = pp("a SEARCH RETURN () ALL\r\n");
        assert_eq!(b, "a SEARCH ALL\r\n");
        assert_eq!(e.search_return, Some(vec![]));
        let (b, e) = pp("a SEARCH SUBJECT \"RETURN (x)\"\r\n");
        assert_eq!(b, "a SEARCH SUBJECT \"RETURN (x)\"\r\n");
        assert_eq!(e, Extras::default());
    }

    #[test]
    fn list_extended() {
        let (b, e) = pp("a LIST (SUBSCRIBED RECURSIVEMATCH) \"\" \"*\" RETURN (CHILDREN STATUS (MESSAGES UNSEEN))\r\n");
        assert_eq!(b, "a LIST \"\" \"*\"\r\n");
        assert_eq!(e.list_select, vec!["SUBSCRIBED", "RECURSIVEMATCH"]);
        assert_eq!(e.list_return, vec!["CHILDREN", "STATUS"]);
        assert_eq!(e.list_status, vec!["MESSAGES", "UNSEEN"]);
        let (b, e) = pp("a LIST \"\" (\"INBOX\" \"Sent*\") RETURN (CHILDREN)\r\n");
        assert_eq!(b, "a LIST \"\" \"*\"\r\n");
        assert_eq!(e.list_patterns, vec!["INBOX", "Sent*"]);
        let (b, e) = pp("a LIST \"\" % RETURN (SPECIAL-USE)\r\n");
        assert_eq!(b, "a LIST \"\" %\r\n");
        assert_eq!(e.list_return, vec!["SPECIAL-USE"]);
    }

    #[test]
    fn create_use_and_saved() {
        let (b, e) = pp("a CREATE Sent (USE (\\Sent))\r\n");
        assert_eq!(b, "a CREATE Sent\r\n");
        assert_eq!(e.create_use, vec!["\\Sent"]);
        let (b, e) = pp("a UID FETCH $ (FLAGS)\r\n");
        assert_eq!(b, "a UID FETCH 4:7 (FLAGS)\r\n");
        assert!(e.used_saved);
        let (b, e) = pp("a SEARCH SUBJECT $\r\n");
        assert_eq!(b, "a SEARCH SUBJECT $\r\n", "here `$` is a string to look for");
        assert!(!e.used_saved);
        let (b, _) = pp("a SEARCH $ UNSEEN\r\n");
        assert_eq!(b, "a SEARCH 4:7 UNSEEN\r\n");
    }
}
