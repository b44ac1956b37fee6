//! LMTP (RFC 2033) command syntax and the pieces of SMTP it reuses
//! (RFC 5321 paths and parameters, RFC 1870 SIZE, RFC 6152 8BITMIME).
//! Pure parsing, no I/O, so every rule is unit-tested.

/// One command line, parsed.
#[derive(Debug, PartialEq, Eq)]
pub enum Command {
    Lhlo(String),
    /// HELO or EHLO: wrong protocol.
    Helo,
    Mail { from: String, size: Option<u64>, body_8bit: bool },
    Rcpt { to: String },
    Data,
    Rset,
    Noop,
    Quit,
    Vrfy,
    Help,
}

/// Why a line is not a command we accept, with the reply to give.
#[derive(Debug, PartialEq, Eq)]
pub struct Reject(pub &'static str, pub String);

fn syntax(msg: impl Into<String>) -> Reject {
    Reject("501 5.5.4", msg.into())
}

/// Splits `<path> params` after `FROM:` or `TO:`.
fn path_and_params(rest: &str) -> Result<(String, Vec<&str>), Reject> {
    let rest = rest.trim_start();
    let Some(after) = rest.strip_prefix('<') else {
        return Err(syntax("the address must be in angle brackets"));
    };
    let Some(end) = after.find('>') else {
        return Err(syntax("missing `>` after the address"));
    };
    let path = &after[..end];
    if path.len() > 256 || path.chars().any(|c| c.is_control() || c == ' ') {
        return Err(syntax("invalid address"));
    }
    // A source route (@a,@b:user@c) is ignored, as RFC 5321 allows.
    let path = path.rsplit_once(':').map_or(path, |(_, p)| p);
    let params = after[end + 1..].split_whitespace().collect();
    Ok((path.to_string(), params))
}

pub fn parse(line: &str) -> Result<Command, Reject> {
    let line = line.trim_end_matches(['\r', '\n']);
    let (verb, rest) = line.split_once(' ').unwrap_or((line, ""));
    match verb.to_ascii_uppercase().as_str() {
        "LHLO" => {
            let host = rest.trim();
            if host.is_empty() {
                return Err(syntax("LHLO needs a host name"));
            }
            Ok(Command::Lhlo(host.to_string()))
        }
        "HELO" | "EHLO" => Ok(Command::Helo),
        "MAIL" => {
            let Some(r) = strip_prefix_ci(rest, "FROM:") else {
                return Err(syntax("expected MAIL FROM:<address>"));
            };
            let (from, params) = path_and_params(r)?;
            let (mut size, mut body_8bit) = (None, false);
            for p in params {
                let (k, v) = p.split_once('=').unwrap_or((p, ""));
                match k.to_ascii_uppercase().as_str() {
                    "SIZE" => size = Some(v.parse::<u64>().map_err(|_| syntax("SIZE must be a number"))?),
                    "BODY" => match v.to_ascii_uppercase().as_str() {
                        "7BIT" => body_8bit = false,
                        "8BITMIME" => body_8bit = true,
                        _ => return Err(Reject("501 5.5.4", format!("unknown BODY type {v}"))),
                    },
                    _ => return Err(Reject("555 5.5.4", format!("unsupported parameter {k}"))),
                }
            }
            Ok(Command::Mail { from, size, body_8bit })
        }
        "RCPT" => {
            let Some(r) = strip_prefix_ci(rest, "TO:") else {
                return Err(syntax("expected RCPT TO:<address>"));
            };
            let (to, params) = path_and_params(r)?;
            if to.is_empty() {
                return Err(syntax("empty recipient"));
            }
            if let Some(p) = params.first() {
                return Err(Reject("555 5.5.4", format!("unsupported parameter {p}")));
            }
            Ok(Command::Rcpt { to })
        }
        "DATA" => Ok(Command::Data),
        "RSET" => Ok(Command::Rset),
        "NOOP" => Ok(Command::Noop),
        "QUIT" => Ok(Command::Quit),
        "VRFY" => Ok(Command::Vrfy),
        "HELP" => Ok(Command::Help),
        _ => Err(Reject("500 5.5.2", "command not recognized".into())),
    }
}

fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let s = s.trim_start();
    // `get` rather than indexing: a multi-byte character at the boundary
    // is simply not a match (indexing would panic).
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix).then(|| &s[prefix.len()..])
}

/// One line of the DATA section, as read (with its line ending): returns
/// None for the terminating ".", else the line dot-unstuffed and ending in
/// CRLF (bare LF accepted, as real MTAs send it).
pub fn data_line(line: &[u8]) -> Option<Vec<u8>> {
    let body = line.strip_suffix(b"\n").unwrap_or(line);
    let body = body.strip_suffix(b"\r").unwrap_or(body);
    if body == b"." {
        return None;
    }
    let body = body.strip_prefix(b".").unwrap_or(body);
    let mut out = Vec::with_capacity(body.len() + 2);
    out.extend_from_slice(body);
    out.extend_from_slice(b"\r\n");
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands() {
        assert_eq!(parse("LHLO mx.example.test\r\n"), Ok(Command::Lhlo("mx.example.test".into())));
        assert_eq!(parse("lhlo x"), Ok(Command::Lhlo("x".into())));
        assert_eq!(parse("EHLO x"), Ok(Command::Helo));
        assert_eq!(
            parse("MAIL FROM:<a@b.test> SIZE=1234 BODY=8BITMIME"),
            Ok(Command::Mail { from: "a@b.test".into(), size: Some(1234), body_8bit: true })
        );
        assert_eq!(parse("mail from:<>"), Ok(Command::Mail { from: "".into(), size: None, body_8bit: false }));
        assert_eq!(parse("RCPT TO:<alice@example.test>"), Ok(Command::Rcpt { to: "alice@example.test".into() }));
        assert_eq!(parse("RCPT TO:<@relay.test:alice@example.test>"), Ok(Command::Rcpt { to: "alice@example.test".into() }));
        assert_eq!(parse("DATA"), Ok(Command::Data));
        assert_eq!(parse("QUIT"), Ok(Command::Quit));
    }

    #[test]
    fn bad_commands_get_the_right_codes() {
        assert_eq!(parse("MAIL FROM:a@b").unwrap_err().0, "501 5.5.4");
        assert_eq!(parse("MAIL FROM:<a@b> SIZE=lots").unwrap_err().0, "501 5.5.4");
        assert_eq!(parse("MAIL FROM:<a@b> AUTH=x").unwrap_err().0, "555 5.5.4");
        assert_eq!(parse("RCPT TO:<>").unwrap_err().0, "501 5.5.4");
        assert_eq!(parse("RCPT TO:<a b@c>").unwrap_err().0, "501 5.5.4");
        assert_eq!(parse("RCPT TO:<a@b> NOTIFY=NEVER").unwrap_err().0, "555 5.5.4");
        assert_eq!(parse("FOO").unwrap_err().0, "500 5.5.2");
        assert_eq!(parse("LHLO").unwrap_err().0, "501 5.5.4");
        // Multi-byte text where an ASCII keyword is expected: an error, not a panic.
        assert_eq!(parse("MAIL ééééé").unwrap_err().0, "501 5.5.4");
        assert_eq!(parse("RCPT TOé:<a@b>").unwrap_err().0, "501 5.5.4");
        assert_eq!(parse("\u{1F600}").unwrap_err().0, "500 5.5.2");
    }

    #[test]
    fn arbitrary_input_never_panics() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let words = ["MAIL FROM:", "RCPT TO:", "LHLO", "<", ">", "@", "é", " ", "SIZE=", "BODY=", "\r\n", ":", "="];
        for _ in 0..20_000 {
            let mut line = String::new();
            for _ in 0..rng.random_range(0..8) {
                if rng.random_bool(0.7) {
                    line.push_str(words[rng.random_range(0..words.len())]);
                } else {
                    line.push(char::from_u32(rng.random_range(0..0x11000)).unwrap_or('x'));
                }
            }
            let _ = parse(&line);
            let _ = data_line(line.as_bytes());
        }
    }

    #[test]
    fn data_lines() {
        assert_eq!(data_line(b".\r\n"), None);
        assert_eq!(data_line(b".\n"), None);
        assert_eq!(data_line(b"..leading dot\r\n").unwrap(), b".leading dot\r\n");
        assert_eq!(data_line(b"bare lf\n").unwrap(), b"bare lf\r\n");
        assert_eq!(data_line(b"8bit \xc3\xa9\r\n").unwrap(), b"8bit \xc3\xa9\r\n");
    }
}
