//! `estafette bench store`: Store API throughput and latency on one node
//! and on three local nodes, plus the memory of an idle node.
//!
//! Numbers, not pass/fail: this is run by hand or by scripts/bench, never
//! by the test suite.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Subcommand;
use futures::StreamExt;

use crate::storage::local::LocalCluster;
use crate::storage::{Store, UserId};

#[derive(Subcommand)]
pub enum BenchCommand {
    /// Items and blobs: ops/s and p50/p99 latency.
    Store {
        /// Nodes in the local cluster (RF = min(nodes, 3)).
        #[arg(long, default_value_t = 1)]
        nodes: usize,
        /// Operations per item workload (blob workloads scale this down by size).
        #[arg(long, default_value_t = 2000)]
        ops: usize,
        /// Concurrent operations in the throughput runs.
        #[arg(long, default_value_t = 16)]
        concurrency: usize,
        /// Leave Nagle's algorithm on for RPC connections (shows what the
        /// TCP_NODELAY workaround buys).
        #[arg(long)]
        nagle: bool,
        /// Scratch directory (default: a fresh temporary one).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Resident memory of an idle single-node `estafette dev` process.
    IdleRss,
    /// An LMTP server (ours or any other, e.g. Dovecot's): deliveries per
    /// second and the time from the end of DATA to the reply.
    Lmtp {
        /// host:port of the LMTP server.
        #[arg(long)]
        target: String,
        /// Recipient address (must exist on the target).
        #[arg(long)]
        rcpt: String,
        /// Messages per run.
        #[arg(long, default_value_t = 200)]
        messages: usize,
        /// Label for the output.
        #[arg(long, default_value = "lmtp")]
        label: String,
    },
    /// An IMAP server (ours or Dovecot): APPEND throughput, SELECT+FETCH of
    /// headers, SEARCH BODY, memory per idle connection.
    Imap {
        /// host:port of the IMAP server (plain TCP, loopback).
        #[arg(long)]
        target: String,
        #[arg(long, default_value = "alice")]
        user: String,
        #[arg(long, default_value = "hunter2")]
        password: String,
        /// Messages appended, then fetched and searched.
        #[arg(long, default_value_t = 10_000)]
        messages: usize,
        /// Idle connections for the memory figure.
        #[arg(long, default_value_t = 1000)]
        connections: usize,
        /// Sum the RSS of processes whose command line contains this
        /// (e.g. the server's config path) before and after the idle
        /// connections; no memory figure without it.
        #[arg(long)]
        rss_pattern: Option<String>,
        #[arg(long, default_value = "imap")]
        label: String,
    },
    /// The mailbox engine: appends through the sequencer, SELECT of a big
    /// mailbox cold and warm, bytes per message, notification latency.
    Mail {
        /// Nodes in the local cluster (RF = min(nodes, 3)).
        #[arg(long, default_value_t = 1)]
        nodes: usize,
        /// Appends in the latency/throughput runs.
        #[arg(long, default_value_t = 1000)]
        ops: usize,
        /// Messages in the SELECT run.
        #[arg(long, default_value_t = 100_000)]
        messages: usize,
    },
}

pub async fn run(cmd: BenchCommand) -> Result<(), String> {
    match cmd {
        BenchCommand::Store { nodes, ops, concurrency, nagle, dir } => {
            store(nodes, ops, concurrency, nagle, dir).await
        }
        BenchCommand::IdleRss => idle_rss().await,
        BenchCommand::Mail { nodes, ops, messages } => mail(nodes, ops, messages).await,
        BenchCommand::Lmtp { target, rcpt, messages, label } => lmtp(&target, &rcpt, messages, &label).await,
        BenchCommand::Imap { target, user, password, messages, connections, rss_pattern, label } => {
            super::bench_imap::run(super::bench_imap::Args { target, user, password, messages, connections, rss_pattern, label }).await
        }
    }
}

struct Stats {
    name: String,
    ops: usize,
    elapsed: Duration,
    lat: Vec<Duration>,
    concurrent_ops_per_s: f64,
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

impl Stats {
    fn row(&mut self) -> String {
        self.lat.sort();
        format!(
            "{:<22} {:>7} {:>12.0} {:>12.0} {:>10.3} {:>10.3}",
            self.name,
            self.ops,
            self.ops as f64 / self.elapsed.as_secs_f64(),
            self.concurrent_ops_per_s,
            pct(&self.lat, 0.5),
            pct(&self.lat, 0.99)
        )
    }
}

/// Runs `op(i)` `n` times one after another (latency), then `n` times with
/// `conc` in flight (throughput).
async fn measure<F, Fut>(name: &str, n: usize, conc: usize, op: F) -> Result<Stats, String>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let mut lat = Vec::with_capacity(n);
    let start = Instant::now();
    for i in 0..n {
        let t = Instant::now();
        op(i).await?;
        lat.push(t.elapsed());
    }
    let elapsed = start.elapsed();
    let start = Instant::now();
    let results: Vec<Result<(), String>> = futures::stream::iter((0..n).map(|i| op(n + i)))
        .buffer_unordered(conc.max(1))
        .collect()
        .await;
    let conc_elapsed = start.elapsed();
    results.into_iter().collect::<Result<Vec<_>, _>>()?;
    Ok(Stats {
        name: name.into(),
        ops: n,
        elapsed,
        lat,
        concurrent_ops_per_s: n as f64 / conc_elapsed.as_secs_f64(),
    })
}

async fn store(nodes: usize, ops: usize, conc: usize, nagle: bool, dir: Option<PathBuf>) -> Result<(), String> {
    if nagle {
        crate::storage::nodelay::disable();
    }
    let tmp;
    let dir = match dir {
        Some(d) => d,
        None => {
            tmp = tempfile::tempdir().map_err(|e| e.to_string())?;
            tmp.path().to_owned()
        }
    };
    let cluster = LocalCluster::start(&dir, nodes).await.map_err(|e| e.to_string())?;
    // Write through the first node, read through the last: with 3 nodes
    // every operation crosses the (loopback) network.
    let w: Store = cluster.nodes[0].store();
    let r: Store = cluster.nodes[nodes - 1].store();
    let user = UserId([7; 32]);
    let e = |e: crate::storage::StorageError| e.to_string();

    println!(
        "estafette bench store: {nodes} node(s), RF {}, TCP_NODELAY {}, {ops} ops, concurrency {conc}",
        nodes.min(3),
        if nagle { "OFF (Nagle on)" } else { "on" }
    );
    println!(
        "{:<22} {:>7} {:>12} {:>12} {:>10} {:>10}",
        "workload", "ops", "seq ops/s", "conc ops/s", "p50 ms", "p99 ms"
    );
    let value = vec![0x5au8; 512];
    let mut rows = vec![];
    rows.push(
        measure("item insert 512 B", ops, conc, |i| {
            let (w, v) = (w.clone(), value.clone());
            async move { w.insert(&user, "bench", &format!("k{i:08}"), v, None).await.map_err(e) }
        })
        .await?,
    );
    rows.push(
        measure("item get", ops, conc, |i| {
            let r = r.clone();
            async move {
                let k = format!("k{:08}", i % ops);
                match r.get(&user, "bench", &k).await.map_err(e)? {
                    Some(it) if !it.values.is_empty() => Ok(()),
                    _ => Err(format!("item {k} missing")),
                }
            }
        })
        .await?,
    );
    let range_ops = (ops / 20).max(10);
    rows.push(
        measure("item range 100", range_ops, conc, |i| {
            let r = r.clone();
            async move {
                let start = format!("k{:08}", (i * 100) % ops.saturating_sub(100).max(1));
                let items = r
                    .range(&user, "bench", &crate::storage::Range { start: Some(start), limit: Some(100), ..Default::default() })
                    .await
                    .map_err(e)?;
                if items.len() == 100.min(ops) { Ok(()) } else { Err(format!("range returned {}", items.len())) }
            }
        })
        .await?,
    );
    for (label, size, n) in [("1 KiB", 1024usize, ops / 4), ("100 KiB", 100 * 1024, ops / 20), ("10 MiB", 10 << 20, 10)] {
        let n = n.max(5);
        let body = Bytes::from((0..size).map(|i| (i * 7 + 3) as u8).collect::<Vec<u8>>());
        let prefix = format!("b{size}");
        rows.push(
            measure(&format!("blob put {label}"), n, conc.min(4), |i| {
                let (w, body, k) = (w.clone(), body.clone(), format!("{prefix}/{i}"));
                async move { w.put_blob_bytes(&user, &k, body).await.map(|_| ()).map_err(e) }
            })
            .await?,
        );
        rows.push(
            measure(&format!("blob get {label}"), n, conc.min(4), |i| {
                let (r, k) = (r.clone(), format!("{prefix}/{}", i % n));
                async move {
                    match r.get_blob_bytes(&user, &k).await.map_err(e)? {
                        Some(b) if b.len() == size => Ok(()),
                        _ => Err(format!("blob {k} missing or short")),
                    }
                }
            })
            .await?,
        );
    }
    for row in &mut rows {
        println!("{}", row.row());
    }
    cluster.shutdown().await;
    Ok(())
}

async fn idle_rss() -> Result<(), String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let port = crate::storage::local::free_port().map_err(|e| e.to_string())?;
    let mport = crate::storage::local::free_port().map_err(|e| e.to_string())?;
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut child = std::process::Command::new(exe)
        .args(["dev", "--data-dir"])
        .arg(dir.path())
        .args(["--rpc-port", &port.to_string(), "--metrics-port", &mport.to_string()])
        .args(["--lmtp-port", &crate::storage::local::free_port().map_err(|e| e.to_string())?.to_string()])
        .stdout(std::process::Stdio::null())
        .spawn()
        .map_err(|e| e.to_string())?;
    let sock = dir.path().join("node-1/meta/admin.sock");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(crate::server::admin::Response::Status(s)) =
            crate::server::admin::call(&sock, &crate::server::admin::Request::Status).await
        {
            if s.ready() {
                break;
            }
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            return Err("dev node did not become ready".into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Idle means: ready, then left alone for a while.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let status = std::fs::read_to_string(format!("/proc/{}/status", child.id())).map_err(|e| e.to_string())?;
    let rss = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .map(|l| l.trim_start_matches("VmRSS:").trim().to_string())
        .unwrap_or_default();
    println!("idle single-node RSS: {rss}");
    // SAFETY: kill(2) on our own child.
    unsafe {
        libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
    }
    let _ = child.wait();
    Ok(())
}

async fn mail(nodes: usize, ops: usize, messages: usize) -> Result<(), String> {
    use crate::accounts::UserKeys;
    use crate::crypto::KeyBundle;
    use crate::mail::{MailService, Op};
    use std::sync::Arc;

    let tmp = tempfile::tempdir().map_err(|e| e.to_string())?;
    let cluster = LocalCluster::start(tmp.path(), nodes).await.map_err(|e| e.to_string())?;
    let slots: Vec<_> = cluster.nodes.iter().map(|n| n.peer_rpc().local_id()).collect();
    let svc: Vec<Arc<MailService>> = cluster
        .nodes
        .iter()
        .enumerate()
        .map(|(i, n)| MailService::new(n.store(), n.peer_rpc().clone(), slots.clone(), i as u8).map_err(|e| e.to_string()))
        .collect::<Result<_, _>>()?;
    let keys = Arc::new(UserKeys::import(UserId([5; 32]), &KeyBundle::generate().to_bytes()).map_err(|e| e.to_string())?);
    let e = |e: crate::mail::MailError| e.to_string();
    let append = |id: u64| vec![(id, Op::Append { message: id, flags: vec!["\\Seen".into()] })];
    println!("estafette bench mail: {nodes} node(s), RF {}", nodes.min(3));
    println!("{:<40} {:>8} {:>10} {:>10} {:>10}", "workload", "ops", "ops/s", "p50 ms", "p99 ms");

    let sequencer = &svc[0];
    let other = &svc[nodes - 1];
    let mut next = 1u64;
    for (label, via) in [("append via the sequencer's node", sequencer), ("append via another node", other)] {
        if nodes == 1 && label.contains("another") {
            continue;
        }
        let mut lat = vec![];
        let start = Instant::now();
        for _ in 0..ops {
            let t = Instant::now();
            via.submit(&keys, "inbox", append(next)).await.map_err(e)?;
            lat.push(t.elapsed());
            next += 1;
        }
        let mut s = Stats { name: label.into(), ops, elapsed: start.elapsed(), lat, concurrent_ops_per_s: 0.0 };
        s.lat.sort();
        println!("{:<40} {:>8} {:>10.0} {:>10.3} {:>10.3}", s.name, s.ops, ops as f64 / s.elapsed.as_secs_f64(), pct(&s.lat, 0.5), pct(&s.lat, 0.99));
    }
    // 32 concurrent submitters: group commit shares log entries.
    let start = Instant::now();
    let mut tasks = vec![];
    for t in 0..32u64 {
        let (svc, keys) = (sequencer.clone(), keys.clone());
        let per = (ops / 32).max(1) as u64;
        let base = next + t * per;
        tasks.push(tokio::spawn(async move {
            for i in 0..per {
                svc.submit(&keys, "inbox", vec![(base + i, Op::Append { message: base + i, flags: vec![] })]).await.map_err(|e| e.to_string())?;
            }
            Ok::<_, String>(())
        }));
    }
    for t in tasks {
        t.await.map_err(|e| e.to_string())??;
    }
    let done = (ops / 32).max(1) * 32;
    println!("{:<40} {:>8} {:>10.0}", "append, 32 concurrent submitters", done, done as f64 / start.elapsed().as_secs_f64());

    // A big mailbox, filled in batches of 1000 messages per operation batch.
    let mut id = 10_000_000u64;
    while id < 10_000_000 + messages as u64 {
        let batch: Vec<_> = (id..(id + 1000).min(10_000_000 + messages as u64))
            .map(|i| (i, Op::Append { message: i, flags: vec![] }))
            .collect();
        id += batch.len() as u64;
        sequencer.submit(&keys, "big", batch).await.map_err(e)?;
    }
    // Cold: a node that never opened the mailbox reads the whole log.
    other.close(&keys.user, "big");
    let mb = other.mailbox(&keys, "big");
    let t = Instant::now();
    mb.refresh().await.map_err(e)?;
    let cold = t.elapsed();
    let t = Instant::now();
    mb.refresh().await.map_err(e)?;
    let warm = t.elapsed();
    let (n, bytes) = mb.with_view(|v| v.map_or((0, 0), |v| (v.len(), v.resident_bytes()))).await;
    println!("SELECT {n}-message mailbox: cold {:.1} ms, warm {:.2} ms; index {:.1} bytes/message resident", cold.as_secs_f64() * 1000.0, warm.as_secs_f64() * 1000.0, bytes as f64 / n.max(1) as f64);

    if nodes > 1 {
        // Notification latency: from the start of an append on node 1 to
        // a watcher on the last node waking, next to the time to the ack.
        let mut notified = vec![];
        let mut acked = vec![];
        for i in 0..100u64 {
            let mut watch = other.watch(&keys, "notify");
            let t = Instant::now();
            let waiter = tokio::spawn(async move {
                let _ = tokio::time::timeout(Duration::from_secs(5), watch.changed()).await;
                Instant::now()
            });
            sequencer.submit(&keys, "notify", append(50_000_000 + i)).await.map_err(e)?;
            acked.push(t.elapsed());
            let woke = waiter.await.map_err(|e| e.to_string())?;
            notified.push(woke.duration_since(t));
        }
        notified.sort();
        acked.sort();
        println!(
            "notification: append on node 1 -> watcher on node {nodes} woken: p50 {:.3} ms, p99 {:.3} ms (append acked: p50 {:.3} ms)",
            pct(&notified, 0.5),
            pct(&notified, 0.99),
            pct(&acked, 0.5)
        );
    }
    cluster.shutdown().await;
    Ok(())
}

/// One LMTP connection delivering `n` messages of `size` bytes; returns the
/// time from the end of DATA to the reply, per message.
async fn lmtp_client(target: &str, rcpt: &str, n: usize, size: usize) -> Result<Vec<Duration>, String> {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let stream = tokio::net::TcpStream::connect(target).await.map_err(|e| format!("{target}: {e}"))?;
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    let (r, mut w) = stream.into_split();
    let mut r = BufReader::new(r);
    let mut line = String::new();
    // Reads one reply (possibly multi-line); returns its code.
    async fn reply<R: tokio::io::AsyncBufRead + Unpin>(r: &mut R, line: &mut String) -> Result<String, String> {
        loop {
            line.clear();
            if r.read_line(line).await.map_err(|e| e.to_string())? == 0 {
                return Err("connection closed".into());
            }
            if line.as_bytes().get(3) != Some(&b'-') {
                return Ok(line.get(..3).unwrap_or("").to_string());
            }
        }
    }
    reply(&mut r, &mut line).await?;
    w.write_all(b"LHLO bench.test\r\n").await.map_err(|e| e.to_string())?;
    reply(&mut r, &mut line).await?;
    let filler = "The quick brown fox jumps over the lazy dog. 0123456789 abcdefghij\r\n";
    let mut body = String::from("From: bench@example.test\r\nSubject: benchmark\r\n\r\n");
    while body.len() < size {
        body.push_str(filler);
    }
    let mut lat = Vec::with_capacity(n);
    for _ in 0..n {
        let head = format!("MAIL FROM:<bench@example.test>\r\nRCPT TO:<{rcpt}>\r\nDATA\r\n");
        w.write_all(head.as_bytes()).await.map_err(|e| e.to_string())?;
        for want in ["250", "250", "354"] {
            let got = reply(&mut r, &mut line).await?;
            if got != want {
                return Err(format!("expected {want}, got: {}", line.trim_end()));
            }
        }
        w.write_all(body.as_bytes()).await.map_err(|e| e.to_string())?;
        w.write_all(b".\r\n").await.map_err(|e| e.to_string())?;
        let t = Instant::now();
        let got = reply(&mut r, &mut line).await?;
        lat.push(t.elapsed());
        if got != "250" {
            return Err(format!("delivery refused: {}", line.trim_end()));
        }
    }
    let _ = w.write_all(b"QUIT\r\n").await;
    Ok(lat)
}

async fn lmtp(target: &str, rcpt: &str, messages: usize, label: &str) -> Result<(), String> {
    for size in [5 * 1024, 100 * 1024] {
        for conns in [1usize, 10] {
            let per = (messages / conns).max(1);
            let start = Instant::now();
            let runs = futures::future::join_all((0..conns).map(|_| lmtp_client(target, rcpt, per, size))).await;
            let elapsed = start.elapsed();
            let mut lat: Vec<Duration> = vec![];
            for r in runs {
                lat.extend(r?);
            }
            lat.sort();
            println!(
                "{label:<10} {:>4} KiB x{conns:<3} {:>8.0} msg/s   end of DATA -> 250: p50 {:>7.2} ms  p99 {:>7.2} ms",
                size / 1024,
                lat.len() as f64 / elapsed.as_secs_f64(),
                pct(&lat, 0.5),
                pct(&lat, 0.99)
            );
        }
    }
    Ok(())
}
