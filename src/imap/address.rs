//! RFC 5322 address lists as ENVELOPE wants them: (name adl mailbox host)
//! per address, groups as a start marker (mailbox = group name, host NIL)
//! and an end marker (all NIL). Display names stay as written (encoded
//! words are not decoded, as Dovecot and RFC 3501 have it); a comment
//! stands in for a missing display name. Tolerant: garbage gives what can
//! be salvaged, never an error.

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Address {
    pub name: Option<String>,
    pub adl: Option<String>,
    pub mailbox: Option<String>,
    pub host: Option<String>,
}

#[derive(Debug, PartialEq)]
enum Tok {
    Word(String),
    Quoted(String),
    Comment(String),
    Special(char),
}

fn tokenize(s: &str) -> Vec<Tok> {
    let mut out = vec![];
    let mut it = s.chars().peekable();
    while let Some(&c) = it.peek() {
        match c {
            ' ' | '\t' | '\r' | '\n' => {
                it.next();
            }
            '"' => {
                it.next();
                out.push(Tok::Quoted(delimited(&mut it, '"')));
            }
            '(' => {
                it.next();
                out.push(Tok::Comment(delimited(&mut it, ')')));
            }
            '<' | '>' | '@' | ',' | ';' | ':' | '.' | '[' | ']' => {
                it.next();
                out.push(Tok::Special(c));
            }
            _ => {
                let mut w = String::new();
                while let Some(&c) = it.peek() {
                    if " \t\r\n\"(<>@,;:.[]".contains(c) {
                        break;
                    }
                    w.push(c);
                    it.next();
                }
                out.push(Tok::Word(w));
            }
        }
    }
    out
}

/// The text up to `close` (consumed), with backslash escapes resolved;
/// for comments, nested parentheses are kept and balanced.
fn delimited(it: &mut std::iter::Peekable<std::str::Chars<'_>>, close: char) -> String {
    let mut depth = 1;
    let mut q = String::new();
    while let Some(c) = it.next() {
        match c {
            '\\' => {
                if let Some(n) = it.next() {
                    q.push(n)
                }
            }
            '(' if close == ')' => {
                depth += 1;
                q.push(c)
            }
            c if c == close => {
                depth -= 1;
                if depth == 0 {
                    break;
                }
                q.push(c)
            }
            c => q.push(c),
        }
    }
    q
}

/// Parses an address-list header value (unfolded).
pub fn parse_address_list(value: &str) -> Vec<Address> {
    let toks = tokenize(value);
    let mut out = vec![];
    // Split at top-level commas, keeping groups together.
    let mut i = 0;
    while i < toks.len() {
        // Does a group start here? (phrase ':' ... ';')
        let colon = toks[i..].iter().position(|t| matches!(t, Tok::Special(':' | ',' | '<' | '@')));
        if let Some(off) = colon {
            if toks[i + off] == Tok::Special(':') {
                let name = phrase(&toks[i..i + off]);
                out.push(Address {
                    mailbox: Some(name),
                    ..Default::default()
                });
                i += off + 1;
                let end = toks[i..].iter().position(|t| *t == Tok::Special(';')).map_or(toks.len(), |p| i + p);
                for chunk in toks[i..end].split(|t| *t == Tok::Special(',')) {
                    if let Some(a) = mailbox(chunk) {
                        out.push(a);
                    }
                }
                out.push(Address::default());
                i = end + 1;
                continue;
            }
        }
        let end = toks[i..].iter().position(|t| *t == Tok::Special(',')).map_or(toks.len(), |p| i + p);
        if let Some(a) = mailbox(&toks[i..end]) {
            out.push(a);
        }
        i = end + 1;
    }
    out
}

fn phrase(toks: &[Tok]) -> String {
    let mut words: Vec<String> = vec![];
    for t in toks {
        match t {
            Tok::Word(w) | Tok::Quoted(w) => words.push(w.clone()),
            Tok::Special('.') => words.push(".".into()),
            _ => {}
        }
    }
    words.join(" ").replace(" . ", ".")
}

/// One mailbox: `phrase <addr-spec>` or `addr-spec (comment)`.
fn mailbox(toks: &[Tok]) -> Option<Address> {
    if toks.iter().all(|t| matches!(t, Tok::Comment(_))) {
        return None;
    }
    if let Some(lt) = toks.iter().position(|t| *t == Tok::Special('<')) {
        let gt = toks[lt..].iter().position(|t| *t == Tok::Special('>')).map_or(toks.len(), |p| lt + p);
        let name = phrase(&toks[..lt]);
        let mut inner = &toks[lt + 1..gt];
        // Obsolete source route: <@a,@b:user@host>.
        let mut adl = None;
        if let Some(c) = inner.iter().position(|t| *t == Tok::Special(':')) {
            if inner.first() == Some(&Tok::Special('@')) {
                adl = Some(spec_text(&inner[..c]));
                inner = &inner[c + 1..];
            }
        }
        let (mb, host) = addr_spec(inner);
        return Some(Address {
            name: (!name.is_empty()).then_some(name),
            adl,
            mailbox: mb,
            host,
        });
    }
    let comment = toks.iter().rev().find_map(|t| match t {
        Tok::Comment(c) => Some(c.trim().to_string()),
        _ => None,
    });
    let (mb, host) = addr_spec(toks);
    mb.as_ref()?;
    Some(Address {
        name: comment.filter(|c| !c.is_empty()),
        adl: None,
        mailbox: mb,
        host,
    })
}

fn spec_text(toks: &[Tok]) -> String {
    let mut s = String::new();
    for t in toks {
        match t {
            Tok::Word(w) => s.push_str(w),
            Tok::Quoted(w) => {
                s.push('"');
                s.push_str(w);
                s.push('"');
            }
            Tok::Special(c) => s.push(*c),
            Tok::Comment(_) => {}
        }
    }
    s
}

fn addr_spec(toks: &[Tok]) -> (Option<String>, Option<String>) {
    let toks: Vec<&Tok> = toks.iter().filter(|t| !matches!(t, Tok::Comment(_))).collect();
    let at = toks.iter().rposition(|t| **t == Tok::Special('@'));
    let owned = |ts: &[&Tok]| spec_text(&ts.iter().map(|t| clone_tok(t)).collect::<Vec<_>>());
    // A quoted local part is shown without its quotes, a missing domain
    // as MISSING_DOMAIN (both as Dovecot does).
    let local_of = |ts: &[&Tok]| -> String {
        match ts {
            [Tok::Quoted(q)] => q.clone(),
            _ => owned(ts),
        }
    };
    match at {
        Some(at) => {
            let local = local_of(&toks[..at]);
            let host = owned(&toks[at + 1..]);
            (Some(local), Some(if host.is_empty() { "MISSING_DOMAIN".into() } else { host }))
        }
        None => {
            let local = local_of(&toks);
            let host = (!local.is_empty()).then(|| "MISSING_DOMAIN".to_string());
            ((!local.is_empty()).then_some(local), host)
        }
    }
}

fn clone_tok(t: &Tok) -> Tok {
    match t {
        Tok::Word(w) => Tok::Word(w.clone()),
        Tok::Quoted(w) => Tok::Quoted(w.clone()),
        Tok::Comment(w) => Tok::Comment(w.clone()),
        Tok::Special(c) => Tok::Special(*c),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(name: Option<&str>, mb: &str, host: &str) -> Address {
        Address {
            name: name.map(str::to_string),
            adl: None,
            mailbox: Some(mb.into()),
            host: Some(host.into()),
        }
    }

    #[test]
    fn common_forms() {
        assert_eq!(parse_address_list("alice@example.test"), vec![a(None, "alice", "example.test")]);
        assert_eq!(
            parse_address_list("\"Smith, John\" <john@x.test>, =?utf-8?q?J=C3=B6rg?= <j@y.test>"),
            vec![a(Some("Smith, John"), "john", "x.test"), a(Some("=?utf-8?q?J=C3=B6rg?="), "j", "y.test")]
        );
        assert_eq!(parse_address_list("bob@x.test (Bob B)"), vec![a(Some("Bob B"), "bob", "x.test")]);
        assert_eq!(parse_address_list("Ann Lee <ann.lee@x.test>"), vec![a(Some("Ann Lee"), "ann.lee", "x.test")]);
    }

    #[test]
    fn groups_and_garbage() {
        let g = parse_address_list("undisclosed-recipients:;");
        assert_eq!(g.len(), 2);
        assert_eq!(g[0].mailbox.as_deref(), Some("undisclosed-recipients"));
        assert_eq!(g[1], Address::default());
        let g = parse_address_list("Team: a@x.test, b@x.test;, c@x.test");
        assert_eq!(g.len(), 5);
        assert_eq!(g[4], a(None, "c", "x.test"));
        // Never panics on junk.
        for junk in ["<", ">", "@", "\"", "(", ":;:", "<<@>>", ",,,", "a@", "@b"] {
            let _ = parse_address_list(junk);
        }
    }
}
