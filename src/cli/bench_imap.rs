//! `estafette bench imap`: the IMAP workloads of issue 6 against any IMAP
//! server (ours, or Dovecot for the comparison in scripts/bench): APPEND
//! throughput, SELECT + FETCH of headers, SEARCH BODY, and the memory an
//! idle logged-in connection costs the server. A plain-TCP client on
//! loopback; numbers, not pass/fail.

use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

struct Client {
    r: BufReader<tokio::net::tcp::OwnedReadHalf>,
    w: tokio::net::tcp::OwnedWriteHalf,
    n: u64,
}

impl Client {
    async fn connect(target: &str, user: &str, password: &str) -> Result<Client, String> {
        let s = TcpStream::connect(target).await.map_err(|e| format!("{target}: {e}"))?;
        let _ = s.set_nodelay(true);
        let (r, w) = s.into_split();
        let mut c = Client { r: BufReader::new(r), w, n: 0 };
        c.line().await?;
        c.ok(&format!("LOGIN \"{user}\" \"{password}\"")).await?;
        Ok(c)
    }

    /// One response line with its literals; returns the text length read.
    async fn line(&mut self) -> Result<String, String> {
        let mut out = String::new();
        loop {
            let mut l = String::new();
            let n = self.r.read_line(&mut l).await.map_err(|e| e.to_string())?;
            if n == 0 {
                return Err("connection closed".into());
            }
            let trimmed = l.trim_end();
            out.push_str(trimmed);
            let lit = trimmed.strip_suffix('}').and_then(|t| t.rsplit_once('{')).and_then(|(_, n)| n.parse::<usize>().ok());
            match lit {
                Some(len) => {
                    let mut buf = vec![0; len];
                    self.r.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
                    out.push_str(&String::from_utf8_lossy(&buf));
                }
                None => return Ok(out),
            }
        }
    }

    /// Runs a command; returns the untagged lines.
    async fn ok(&mut self, cmd: &str) -> Result<Vec<String>, String> {
        self.n += 1;
        let tag = format!("b{}", self.n);
        self.w.write_all(format!("{tag} {cmd}\r\n").as_bytes()).await.map_err(|e| e.to_string())?;
        self.finish(&tag, cmd).await
    }

    async fn finish(&mut self, tag: &str, cmd: &str) -> Result<Vec<String>, String> {
        let mut untagged = vec![];
        loop {
            let l = self.line().await?;
            if let Some(rest) = l.strip_prefix(tag) {
                if rest.trim_start().starts_with("OK") {
                    return Ok(untagged);
                }
                return Err(format!("{cmd}: {l}"));
            }
            untagged.push(l);
        }
    }

    async fn append(&mut self, mailbox: &str, msg: &[u8]) -> Result<(), String> {
        self.n += 1;
        let tag = format!("b{}", self.n);
        self.w
            .write_all(format!("{tag} APPEND {mailbox} {{{}}}\r\n", msg.len()).as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let cont = self.line().await?;
        if !cont.starts_with('+') {
            return Err(format!("APPEND: {cont}"));
        }
        self.w.write_all(msg).await.map_err(|e| e.to_string())?;
        self.w.write_all(b"\r\n").await.map_err(|e| e.to_string())?;
        self.finish(&tag, "APPEND").await.map(|_| ())
    }
}

fn message(i: usize) -> Vec<u8> {
    const WORDS: [&str; 12] = ["mail", "region", "replica", "quorum", "garage", "epoch", "flag", "inbox", "relay", "sender", "letter", "folder"];
    let mut body = String::new();
    for k in 0..300 {
        body.push_str(WORDS[(i * 7 + k * 13) % WORDS.len()]);
        body.push(if k % 12 == 11 { '\n' } else { ' ' });
    }
    if i % 100 == 0 {
        body.push_str("the needle is here\n");
    }
    format!(
        "From: Sender {i} <sender{i}@example.test>\r\nTo: alice@example.test\r\nSubject: benchmark message {i}\r\nDate: Thu, 26 Nov 2026 10:00:00 +0000\r\nMessage-ID: <bench{i}@example.test>\r\n\r\n{}",
        body.replace('\n', "\r\n")
    )
    .into_bytes()
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize].as_secs_f64() * 1000.0
}

/// Memory (KiB) of the processes whose command line contains `pattern`
/// (Dovecot runs one process per connection: all of them count), as PSS:
/// pages shared between processes (libraries, Dovecot's shared mappings)
/// are divided among them rather than counted once per process as RSS
/// would. Falls back to RSS where smaps_rollup is missing.
fn rss_kib(pattern: &str) -> u64 {
    let mut total = 0;
    let Ok(dir) = std::fs::read_dir("/proc") else { return 0 };
    let me = std::process::id().to_string();
    for e in dir.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        if !name.chars().all(|c| c.is_ascii_digit()) || name == me {
            continue;
        }
        let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if !cmd.contains(pattern) {
            continue;
        }
        let field = |file: &str, name: &str| -> Option<u64> {
            let text = std::fs::read_to_string(e.path().join(file)).ok()?;
            let l = text.lines().find(|l| l.starts_with(name))?;
            l.split_whitespace().nth(1).and_then(|v| v.parse::<u64>().ok())
        };
        total += field("smaps_rollup", "Pss:").or_else(|| field("status", "VmRSS:")).unwrap_or(0);
    }
    total
}

pub struct Args {
    pub target: String,
    pub user: String,
    pub password: String,
    pub messages: usize,
    pub connections: usize,
    pub rss_pattern: Option<String>,
    pub label: String,
}

pub async fn run(a: Args) -> Result<(), String> {
    let label = &a.label;
    let mut c = Client::connect(&a.target, &a.user, &a.password).await?;
    let _ = c.ok("DELETE Bench").await;
    c.ok("CREATE Bench").await?;

    // APPEND: one connection, then 8 at once.
    let mut lat = vec![];
    let start = Instant::now();
    for i in 0..a.messages {
        let t = Instant::now();
        c.append("Bench", &message(i)).await?;
        lat.push(t.elapsed());
    }
    let seq_rate = a.messages as f64 / start.elapsed().as_secs_f64();
    lat.sort();
    println!(
        "{label:<10} APPEND 1 conn         {:>8.0} msg/s   p50 {:>7.2} ms  p99 {:>7.2} ms",
        seq_rate,
        pct(&lat, 0.5),
        pct(&lat, 0.99)
    );
    let conns = 8;
    let per = (a.messages / 10 / conns).max(1);
    let start = Instant::now();
    let runs = futures::future::join_all((0..conns).map(|k| {
        let (target, user, password) = (a.target.clone(), a.user.clone(), a.password.clone());
        async move {
            let mut c = Client::connect(&target, &user, &password).await?;
            for i in 0..per {
                c.append("INBOX", &message(1_000_000 + k * per + i)).await?;
            }
            Ok::<_, String>(())
        }
    }))
    .await;
    for r in runs {
        r?;
    }
    println!(
        "{label:<10} APPEND {conns} conns        {:>8.0} msg/s",
        (conns * per) as f64 / start.elapsed().as_secs_f64()
    );

    // SELECT + FETCH of the headers clients show in a message list, on a
    // new connection.
    let mut c2 = Client::connect(&a.target, &a.user, &a.password).await?;
    let start = Instant::now();
    c2.ok("SELECT Bench").await?;
    let rows = c2.ok("FETCH 1:* (UID FLAGS RFC822.SIZE BODY.PEEK[HEADER.FIELDS (FROM TO SUBJECT DATE MESSAGE-ID)])").await?;
    let fetch = start.elapsed();
    let fetched = rows.iter().filter(|l| l.contains(" FETCH ")).count();
    println!("{label:<10} SELECT+FETCH headers  {:>8.1} ms for {fetched} messages", fetch.as_secs_f64() * 1000.0);
    let start = Instant::now();
    c2.ok("FETCH 1:* (UID FLAGS RFC822.SIZE BODY.PEEK[HEADER.FIELDS (FROM TO SUBJECT DATE MESSAGE-ID)])").await?;
    println!("{label:<10} FETCH headers again   {:>8.1} ms", start.elapsed().as_secs_f64() * 1000.0);

    // SEARCH BODY over every message.
    let start = Instant::now();
    let hits = c2.ok("SEARCH BODY needle").await?;
    let found = hits.iter().find(|l| l.starts_with("* SEARCH")).map_or(0, |l| l.split_whitespace().count() - 2);
    println!("{label:<10} SEARCH BODY           {:>8.1} ms over {fetched} messages ({found} hits)", start.elapsed().as_secs_f64() * 1000.0);
    let start = Instant::now();
    c2.ok("SEARCH BODY needle").await?;
    println!("{label:<10} SEARCH BODY again     {:>8.1} ms", start.elapsed().as_secs_f64() * 1000.0);
    drop(c2);
    drop(c);

    // Idle connections: logged in, INBOX selected, then nothing.
    if let Some(pattern) = &a.rss_pattern {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let before = rss_kib(pattern);
        let mut idle = Vec::with_capacity(a.connections);
        for _ in 0..a.connections {
            let mut c = Client::connect(&a.target, &a.user, &a.password).await?;
            c.ok("SELECT INBOX").await?;
            idle.push(c);
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        let after = rss_kib(pattern);
        println!(
            "{label:<10} {} idle connections: PSS {:.1} -> {:.1} MiB, {:.1} KiB per connection",
            a.connections,
            before as f64 / 1024.0,
            after as f64 / 1024.0,
            after.saturating_sub(before) as f64 / a.connections.max(1) as f64
        );
        drop(idle);
    }
    Ok(())
}
