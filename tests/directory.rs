//! The replicated user directory as operators and MTAs meet it, on the
//! shipped binary: `estafette dev --regions 3 --rtt 35` (three processes,
//! node-to-node traffic through the WAN emulator), users managed with the
//! CLI against any node, LMTP and IMAP spoken over TCP like Postfix and a
//! mail client would.
//!
//! - a user added on node 1 is deliverable on node 3 and can log in on
//!   node 2 the moment the command returns; a password changed on node 2
//!   and a quota set on node 3 are in force everywhere when the command
//!   returns;
//! - with region 2 cut off, adds and quota changes succeed on node 1 and
//!   reach node 2 after the heal;
//! - concurrent adds of one login (or of one address) on two nodes: exactly
//!   one wins, the loser gets an error and leaves nothing behind;
//! - a fresh node never answers 5xx for the demo user, from the instant its
//!   LMTP port accepts connections.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

mod common;

use common::{exe, port};

/// Three node processes per test on two cores: one test at a time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

struct Appliance {
    supervisor: Child,
    dir: tempfile::TempDir,
    regions: u8,
    imap: u16,
    lmtp: u16,
}

impl Drop for Appliance {
    fn drop(&mut self) {
        unsafe {
            libc::kill(self.supervisor.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline && matches!(self.supervisor.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.supervisor.kill();
        let _ = self.supervisor.wait();
        for i in 1..=self.regions {
            let pid = std::fs::read_to_string(self.dir.path().join(format!("node-{i}/pid")));
            if let Some(pid) = pid.ok().and_then(|p| p.trim().parse::<i32>().ok()) {
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                }
            }
        }
    }
}

impl Appliance {
    /// Starts `dev`; returns at once (the caller waits for what it needs).
    fn spawn(regions: u8, rtt: &str) -> Appliance {
        let dir = tempfile::tempdir().unwrap();
        let (imap, imaps, lmtp) = (port(), port(), port());
        let log = std::fs::File::create(dir.path().join("dev.log")).unwrap();
        let out = std::fs::File::create(dir.path().join("dev.out")).unwrap();
        let supervisor = Command::new(exe())
            .args(["dev", "--regions", &regions.to_string(), "--rtt", rtt, "--data-dir"])
            .arg(dir.path())
            .args(["--rpc-port", &port().to_string(), "--wan-port", &port().to_string()])
            .args(["--metrics-port", &port().to_string(), "--lmtp-port", &lmtp.to_string()])
            .args(["--imap-port", &imap.to_string(), "--imaps-port", &imaps.to_string()])
            .stdout(out)
            .stderr(log)
            .spawn()
            .unwrap();
        Appliance { supervisor, dir, regions, imap, lmtp }
    }

    /// Waits for the banner, which `dev` prints once every node serves.
    fn wait_banner(&self) {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let out = std::fs::read_to_string(self.dir.path().join("dev.out")).unwrap_or_default();
            if out.contains("demo user") {
                return;
            }
            assert!(Instant::now() < deadline, "no banner within 120 s; log:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("dev.log")).unwrap_or_default()
    }

    fn config(&self, node: u8) -> PathBuf {
        self.dir.path().join(format!("node-{node}/estafette.toml"))
    }

    fn addr(&self, node: u8, port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, node], port))
    }

    /// Runs `estafette ARGS --config <node's config>` with `stdin`.
    fn cli(&self, node: u8, args: &[&str], stdin: &str) -> (bool, String) {
        let mut child = Command::new(exe())
            .args(args)
            .arg("--config")
            .arg(self.config(node))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
    }

    fn wan(&self, command: &str) {
        let out = Command::new(exe()).args(["wan", "--data-dir"]).arg(self.dir.path()).args(command.split(' ')).output().unwrap();
        assert!(out.status.success(), "wan {command}: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// This node's own copy of the directory (`user list --cached`).
    fn cached_list(&self, node: u8) -> String {
        let (ok, out) = self.cli(node, &["user", "list", "--cached"], "");
        assert!(ok, "{out}");
        out
    }

    /// One LMTP transaction to `rcpt` through `node`: the RCPT reply and,
    /// if it was accepted, the reply to the message.
    fn deliver(&self, node: u8, rcpt: &str, body_len: usize) -> (String, Option<String>) {
        let s = TcpStream::connect_timeout(&self.addr(node, self.lmtp), Duration::from_secs(5)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut w = s.try_clone().unwrap();
        let mut r = BufReader::new(s);
        let mut line = || {
            let mut l = String::new();
            r.read_line(&mut l).unwrap();
            l
        };
        assert!(line().starts_with("220"));
        w.write_all(b"LHLO test.example\r\n").unwrap();
        while !line().starts_with("250 ") {}
        w.write_all(b"MAIL FROM:<sender@example.org>\r\n").unwrap();
        assert!(line().starts_with("250"));
        w.write_all(format!("RCPT TO:<{rcpt}>\r\n").as_bytes()).unwrap();
        let rcpt_reply = line().trim_end().to_string();
        if !rcpt_reply.starts_with("250") {
            let _ = w.write_all(b"QUIT\r\n");
            return (rcpt_reply, None);
        }
        w.write_all(b"DATA\r\n").unwrap();
        assert!(line().starts_with("354"));
        let body = "x".repeat(body_len);
        w.write_all(format!("Subject: directory test\r\n\r\n{body}\r\n.\r\n").as_bytes()).unwrap();
        let data_reply = line().trim_end().to_string();
        let _ = w.write_all(b"QUIT\r\n");
        (rcpt_reply, Some(data_reply))
    }

    /// IMAP LOGIN on `node`'s loopback STARTTLS port: the tagged reply.
    fn login(&self, node: u8, user: &str, password: &str) -> String {
        let s = TcpStream::connect_timeout(&self.addr(node, self.imap), Duration::from_secs(5)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut w = s.try_clone().unwrap();
        let mut r = BufReader::new(s);
        let mut l = String::new();
        r.read_line(&mut l).unwrap();
        w.write_all(format!("a LOGIN {user} \"{password}\"\r\n").as_bytes()).unwrap();
        loop {
            l.clear();
            r.read_line(&mut l).unwrap();
            if l.starts_with("a ") || l.is_empty() {
                let _ = w.write_all(b"b LOGOUT\r\n");
                return l.trim_end().to_string();
            }
        }
    }
}

fn add_user(app: &Appliance, node: u8, login: &str, address: &str, password: &str) -> (bool, String) {
    app.cli(node, &["user", "add", login, "--address", address, "--password-stdin"], &format!("{password}\n"))
}

#[test]
fn changes_made_on_one_node_are_in_force_everywhere_when_the_command_returns() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let app = Appliance::spawn(3, "35");
    app.wait_banner();

    let (ok, out) = add_user(&app, 1, "bob", "bob@example.test", "bob-first-pw");
    assert!(ok, "{out}");
    // The moment the command returns: node 3 accepts mail for bob ...
    let (rcpt, data) = app.deliver(3, "bob@example.test", 100);
    assert!(rcpt.starts_with("250"), "RCPT on node 3 right after the add: {rcpt}");
    assert!(data.unwrap().starts_with("250"));
    // ... and node 2 lets him log in.
    assert!(app.login(2, "bob", "bob-first-pw").starts_with("a OK"), "login on node 2");
    // Unknown users are still refused for good, after a quorum read.
    assert!(app.deliver(3, "nobody@example.test", 10).0.starts_with("550 5.1.1"));

    // A password changed on node 2 is in force on nodes 1 and 3 at once.
    let (ok, out) = app.cli(2, &["user", "passwd", "bob", "--password-stdin"], "bob-first-pw\nbob-second-pw\n");
    assert!(ok, "{out}");
    for node in [1, 3] {
        assert!(app.login(node, "bob", "bob-second-pw").starts_with("a OK"), "new password on node {node}");
        let old = app.login(node, "bob", "bob-first-pw");
        assert!(old.starts_with("a NO [AUTHENTICATIONFAILED]"), "old password on node {node}: {old}");
    }

    // A quota set on node 3 is enforced by LMTP on node 1.
    let (ok, out) = app.cli(3, &["user", "quota", "bob", "2K"], "");
    assert!(ok, "{out}");
    let (rcpt, data) = app.deliver(1, "bob@example.test", 10_000);
    assert!(rcpt.starts_with("250") || rcpt.starts_with("452"), "{rcpt}");
    if let Some(data) = data {
        assert!(data.starts_with("552 5.2.2"), "a message over the whole quota on node 1: {data}");
    }
    assert!(app.cached_list(1).contains("2K"), "node 1's own copy has the quota");

    // Region 2 cut off: node 1 still adds users and sets quotas ...
    app.wan("cut 1 2");
    app.wan("cut 2 3");
    let (ok, out) = add_user(&app, 1, "carol", "carol@example.test", "carol-pw-1");
    assert!(ok, "add with region 2 cut off: {out}");
    let (ok, out) = app.cli(1, &["user", "quota", "carol", "5M"], "");
    assert!(ok, "quota with region 2 cut off: {out}");
    assert!(!app.cached_list(2).contains("carol"), "node 2 cannot have heard of carol yet");
    // ... and node 2 learns both once the network heals.
    app.wan("heal");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let list = app.cached_list(2);
        if list.lines().any(|l| l.starts_with("carol") && l.contains("5M")) {
            break;
        }
        assert!(Instant::now() < deadline, "node 2 did not learn carol after the heal:\n{list}");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(app.login(2, "carol", "carol-pw-1").starts_with("a OK"));
}

#[test]
fn concurrent_adds_on_two_nodes_have_exactly_one_winner() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let app = Appliance::spawn(3, "35");
    app.wait_banner();
    for round in 0..3 {
        // One login, two nodes, two passwords.
        let login = format!("dave{round}");
        let (a, b) = std::thread::scope(|s| {
            let a = s.spawn(|| add_user(&app, 1, &login, &format!("{login}@one.test"), "password-one"));
            let b = s.spawn(|| add_user(&app, 3, &login, &format!("{login}@three.test"), "password-three"));
            (a.join().unwrap(), b.join().unwrap())
        });
        assert!(a.0 != b.0, "exactly one add of `{login}` succeeds: {a:?} {b:?}");
        let loser = if a.0 { &b.1 } else { &a.1 };
        eprintln!("round {round}: the losing add of `{login}` said: {}", loser.trim());
        assert!(loser.contains("already exists") || loser.contains("right now"), "the loser is told why: {loser}");
        let (winner_pw, winner_addr, loser_addr) = if a.0 {
            ("password-one", format!("{login}@one.test"), format!("{login}@three.test"))
        } else {
            ("password-three", format!("{login}@three.test"), format!("{login}@one.test"))
        };
        // The winner is whole everywhere; nothing of the loser remains.
        for node in [1, 2, 3] {
            assert!(app.login(node, &login, winner_pw).starts_with("a OK"), "winner logs in on node {node}");
            assert!(app.deliver(node, &winner_addr, 10).0.starts_with("250"));
            assert!(app.deliver(node, &loser_addr, 10).0.starts_with("550"), "the loser's address is not half-created");
        }

        // Two logins, one address.
        let shared = format!("shared{round}@example.test");
        let (e, f) = (format!("erin{round}"), format!("frank{round}"));
        let (a, b) = std::thread::scope(|s| {
            let a = s.spawn(|| add_user(&app, 1, &e, &shared, "password-erin"));
            let b = s.spawn(|| add_user(&app, 3, &f, &shared, "password-frank"));
            (a.join().unwrap(), b.join().unwrap())
        });
        assert!(a.0 != b.0, "exactly one claim of {shared} succeeds: {a:?} {b:?}");
        let (winner, loser) = if a.0 { (&e, &f) } else { (&f, &e) };
        let list = app.cli(2, &["user", "list"], "").1;
        assert!(list.lines().any(|l| l.starts_with(winner.as_str()) && l.contains(&shared)), "{list}");
        assert!(!list.lines().any(|l| l.starts_with(loser.as_str())), "no half-created `{loser}`:\n{list}");
        assert!(!list.contains("note:"), "no conflict left to resolve:\n{list}");
    }
}

#[test]
fn a_fresh_node_never_bounces_the_demo_user() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let app = Appliance::spawn(1, "0");
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut replies = vec![];
    // From the instant the port accepts connections until mail is accepted.
    loop {
        assert!(Instant::now() < deadline, "no 250 within 120 s: {replies:?}\n{}", app.log());
        if TcpStream::connect(app.addr(1, app.lmtp)).is_err() {
            std::thread::sleep(Duration::from_millis(5));
            continue;
        }
        let (rcpt, _) = app.deliver(1, "alice@example.test", 10);
        assert!(!rcpt.starts_with('5'), "a 5xx for the demo user: {rcpt} (after {replies:?})");
        let accepted = rcpt.starts_with("250");
        replies.push(rcpt);
        if accepted {
            break;
        }
    }
    // The banner comes once a client can log in and deliver.
    app.wait_banner();
    assert!(app.login(1, "alice", "hunter2").starts_with("a OK"));
}
