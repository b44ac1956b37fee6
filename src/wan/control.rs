//! The WAN emulator's command language and its control socket.
//!
//! One command per connection, one line each way, so that a test in any
//! language (or `socat`) can drive it:
//!
//! ```text
//! cut 1 3        both directions between regions 1 and 3
//! cut 1>2        only what region 1 sends to region 2
//! heal           every link       heal 1 3 / heal 1>2   one link
//! rtt 35         every link: 17.5 ms each way
//! delay 1>3 80   one direction of one link, one-way milliseconds
//! show
//! ```
//!
//! Answers are `ok <state>` or `error <reason>`. This module only parses
//! and serves; what a command does is [`super::Wan::apply`].

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use super::{Links, Wan, WanError};

#[derive(Clone, Debug, PartialEq)]
pub enum Command {
    Show,
    Cut { a: u8, b: u8, both: bool },
    Heal { pair: Option<(u8, u8)>, both: bool },
    Rtt(Duration),
    Delay { a: u8, b: u8, one_way: Duration },
}

const USAGE: &str = "commands: cut A B | cut A>B | heal [A B | A>B] | rtt MS | delay A>B MS | show";

/// `A B` (both directions) or `A>B` (one).
fn parse_link(words: &[&str]) -> Result<(u8, u8, bool), String> {
    let num = |s: &str| s.trim().parse::<u8>().map_err(|_| format!("`{s}` is not a region number"));
    match words {
        [one] => match one.split_once('>') {
            Some((a, b)) => Ok((num(a)?, num(b)?, false)),
            None => Err(format!("`{one}`: give two regions (`1 3`) or a direction (`1>3`)")),
        },
        [a, b] => Ok((num(a)?, num(b)?, true)),
        _ => Err(format!("expected a link (`1 3` or `1>3`); {USAGE}")),
    }
}

fn parse_ms(s: &str) -> Result<Duration, String> {
    let ms: f64 = s.parse().map_err(|_| format!("`{s}` is not a number of milliseconds"))?;
    if !(0.0..=60_000.0).contains(&ms) {
        return Err(format!("{ms} ms is outside 0..=60000"));
    }
    Ok(Duration::from_secs_f64(ms / 1000.0))
}

/// Parses one command line.
pub fn parse(line: &str) -> Result<Command, String> {
    let words: Vec<&str> = line.split_whitespace().collect();
    match words.as_slice() {
        ["show"] => Ok(Command::Show),
        ["cut", link @ ..] => {
            let (a, b, both) = parse_link(link)?;
            Ok(Command::Cut { a, b, both })
        }
        ["heal"] => Ok(Command::Heal { pair: None, both: true }),
        ["heal", link @ ..] => {
            let (a, b, both) = parse_link(link)?;
            Ok(Command::Heal { pair: Some((a, b)), both })
        }
        ["rtt", ms] => Ok(Command::Rtt(parse_ms(ms)?)),
        ["delay", link, ms] => match parse_link(&[link])? {
            (a, b, false) => Ok(Command::Delay { a, b, one_way: parse_ms(ms)? }),
            _ => Err("delay takes one direction: `delay 1>3 20`".into()),
        },
        ["delay", ..] => Err("delay takes one direction and milliseconds: `delay 1>3 20`".into()),
        [] => Err(format!("empty command; {USAGE}")),
        _ => Err(format!("unknown command `{line}`; {USAGE}")),
    }
}

/// The state in one line: one-way delays that are not the common one, and cuts.
pub fn describe(l: &Links, n: u8) -> String {
    let mut delays = std::collections::BTreeMap::<Duration, Vec<String>>::new();
    let mut cuts = vec![];
    for a in 1..=n {
        for b in 1..=n {
            if a != b {
                delays.entry(l.delay(a, b)).or_default().push(format!("{a}>{b}"));
                if l.is_cut(a, b) {
                    cuts.push(format!("{a}>{b}"));
                }
            }
        }
    }
    let common = delays.iter().max_by_key(|(_, v)| v.len()).map(|(d, _)| *d).unwrap_or_default();
    let mut s = format!("regions={n} one-way={}ms", common.as_secs_f64() * 1000.0);
    for (d, links) in &delays {
        if *d != common {
            s.push_str(&format!(" {}={}ms", links.join(","), d.as_secs_f64() * 1000.0));
        }
    }
    s.push_str(" cut=");
    s.push_str(if cuts.is_empty() { "none" } else { "" });
    s.push_str(&cuts.join(","));
    s
}

/// Serves commands on a unix socket at `path` (replacing a stale one).
pub async fn serve(wan: Arc<Wan>, path: &Path) -> Result<(), WanError> {
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path)
        .map_err(|e| WanError::Command(format!("cannot listen on {}: {e}", path.display())))?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let wan = wan.clone();
            tokio::spawn(async move {
                let (r, mut w) = stream.into_split();
                let mut line = String::new();
                let mut r = BufReader::new(r.take(4096));
                if r.read_line(&mut line).await.is_err() {
                    return;
                }
                let answer = match parse(&line).map_err(WanError::Command).and_then(|c| {
                    let out = wan.apply(&c);
                    if out.is_ok() && c != Command::Show {
                        log::info!("WAN emulator: {}", line.trim());
                    }
                    out
                }) {
                    Ok(s) => format!("ok {s}\n"),
                    Err(e) => format!("error {e}\n"),
                };
                let _ = w.write_all(answer.as_bytes()).await;
            });
        }
    });
    Ok(())
}

/// Sends one command to the emulator listening at `path`.
pub async fn call(path: &Path, line: &str) -> Result<String, String> {
    let stream = UnixStream::connect(path)
        .await
        .map_err(|e| format!("{}: {e} (is `estafette dev --regions N` running?)", path.display()))?;
    let (r, mut w) = stream.into_split();
    w.write_all(format!("{}\n", line.trim()).as_bytes()).await.map_err(|e| e.to_string())?;
    let mut answer = String::new();
    BufReader::new(r).read_line(&mut answer).await.map_err(|e| e.to_string())?;
    match answer.trim_end().split_once(' ') {
        Some(("ok", s)) => Ok(s.to_string()),
        Some(("error", e)) => Err(e.to_string()),
        _ => Err(format!("unexpected answer `{}`", answer.trim_end())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_parse_and_bad_ones_say_why() {
        assert_eq!(parse("cut 1 3"), Ok(Command::Cut { a: 1, b: 3, both: true }));
        assert_eq!(parse(" cut 1>2 \n"), Ok(Command::Cut { a: 1, b: 2, both: false }));
        assert_eq!(parse("heal"), Ok(Command::Heal { pair: None, both: true }));
        assert_eq!(parse("heal 2>3"), Ok(Command::Heal { pair: Some((2, 3)), both: false }));
        assert_eq!(parse("rtt 35"), Ok(Command::Rtt(Duration::from_millis(35))));
        assert_eq!(parse("delay 1>3 20"), Ok(Command::Delay { a: 1, b: 3, one_way: Duration::from_millis(20) }));
        assert!(parse("delay 1 3 20").unwrap_err().contains("one direction"));
        assert!(parse("cut x 3").unwrap_err().contains("`x` is not a region number"));
        assert!(parse("cut 1").unwrap_err().contains("give two regions"));
        assert!(parse("rtt -4").unwrap_err().contains("outside"));
        assert!(parse("reboot").unwrap_err().contains("unknown command"));
        assert!(parse("").unwrap_err().contains("empty"));
    }

    #[test]
    fn the_state_line_names_cuts_and_odd_delays() {
        let mut l = Links::with_rtt(3, Duration::from_millis(30));
        assert_eq!(describe(&l, 3), "regions=3 one-way=15ms cut=none");
        l.set_cut(1, 3, true);
        l.set_delay(2, 1, Duration::from_millis(40));
        assert_eq!(describe(&l, 3), "regions=3 one-way=15ms 2>1=40ms cut=1>3");
    }
}
