//! Region loss and partitions with real clients. Each test starts the
//! shipped binary as `estafette dev --regions 3 --rtt 35` (three node
//! processes, node-to-node traffic through the WAN emulator with 35 ms
//! between regions) and runs `tests/regions/chaos.py`: LMTP deliveries to
//! three users on every node, imaplib clients on every node doing APPEND,
//! STORE and EXPUNGE, IDLE watchers on every node, one fault (SIGKILL,
//! symmetric cut, one-way cut, repeated random SIGKILLs), then the checks
//! of DESIGN.md §3 from the clients' view: every acknowledged message
//! exactly once on every node, no UID rebound, no message missed, no MODSEQ
//! going back, UIDVALIDITY unchanged, and the longest gap without a
//! successful operation on the nodes that should keep serving.
//!
//! The appliance is three debug-build nodes plus the load on two cores, so
//! the tests run one at a time. Each is bounded: the script has deadlines
//! for every wait, and the test kills it past [`SCRIPT_LIMIT`].

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

const SCRIPT_LIMIT: Duration = Duration::from_secs(420);
const RTT_MS: &str = "35";

fn exe() -> &'static str {
    env!("CARGO_BIN_EXE_estafette")
}

fn port() -> u16 {
    estafette::storage::local::free_port().unwrap()
}

/// The dev appliance; everything it started (and whatever the script
/// restarted, found through the PID files) is killed on drop.
struct Appliance {
    supervisor: Child,
    dir: tempfile::TempDir,
    imap: u16,
    lmtp: u16,
}

impl Appliance {
    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn start() -> Appliance {
        let dir = tempfile::tempdir().unwrap();
        let (imap, imaps, lmtp) = (port(), port(), port());
        let log = std::fs::File::create(dir.path().join("dev.log")).unwrap();
        let supervisor = Command::new(exe())
            .args(["dev", "--regions", "3", "--rtt", RTT_MS, "--data-dir"])
            .arg(dir.path())
            .args(["--rpc-port", &port().to_string(), "--wan-port", &port().to_string()])
            .args(["--metrics-port", &port().to_string(), "--lmtp-port", &lmtp.to_string()])
            .args(["--imap-port", &imap.to_string(), "--imaps-port", &imaps.to_string()])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let app = Appliance { supervisor, dir, imap, lmtp };
        // Ready: every node knows the demo user and answers IMAP.
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let knows = |i: u8| {
                let config = app.path().join(format!("node-{i}/estafette.toml"));
                Command::new(exe())
                    .args(["user", "list", "--config"])
                    .arg(config)
                    .output()
                    .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("alice@example.test"))
            };
            let answers = |i: u8| std::net::TcpStream::connect((format!("127.0.0.{i}").as_str(), imap)).is_ok();
            if (1..=3).all(knows) && (1..=3).all(answers) {
                return app;
            }
            assert!(Instant::now() < deadline, "the appliance did not come up:\n{}", app.logs());
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The end of every log, for a failure message.
    fn logs(&self) -> String {
        let mut files: Vec<PathBuf> = vec![self.path().join("dev.log")];
        for i in 1..=3 {
            files.push(self.path().join(format!("node-{i}/restart.log")));
        }
        let mut out = String::new();
        for f in files {
            if let Ok(text) = std::fs::read_to_string(&f) {
                let lines: Vec<&str> = text.lines().collect();
                let tail = &lines[lines.len().saturating_sub(60)..];
                out.push_str(&format!("--- {} (last {} lines)\n{}\n", f.display(), tail.len(), tail.join("\n")));
            }
        }
        out
    }
}

impl Drop for Appliance {
    fn drop(&mut self) {
        let _ = self.supervisor.kill();
        for i in 1..=3 {
            let pid = std::fs::read_to_string(self.path().join(format!("node-{i}/pid")));
            if let Some(pid) = pid.ok().and_then(|p| p.trim().parse::<i32>().ok()) {
                // SAFETY: kill(2) with a PID from our own appliance's PID file.
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                }
            }
        }
        let _ = self.supervisor.wait();
    }
}

/// Runs the chaos script for `scenario` and fails the test on any
/// violation it reports (its summary is printed either way).
fn chaos(scenario: &str, env: &[(&str, &str)]) {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let app = Appliance::start();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/regions/chaos.py");
    let out_path = app.path().join("chaos.out");
    let mut child = Command::new("python3")
        .arg(script)
        .env("ESTAFETTE_BIN", exe())
        .env("DEV_DIR", app.path())
        .env("IMAP_PORT", app.imap.to_string())
        .env("LMTP_PORT", app.lmtp.to_string())
        .env("RTT_MS", RTT_MS)
        .env("SCENARIO", scenario)
        .envs(env.iter().copied())
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + SCRIPT_LIMIT;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break Some(s);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let out = std::fs::read_to_string(&out_path).unwrap_or_default();
    let summary: Vec<&str> = out.lines().filter(|l| l.starts_with("CHAOS-RESULT ")).collect();
    let short: Vec<&str> = out.lines().filter_map(|l| l.strip_prefix("CHAOS-SUMMARY ")).collect();
    // The figures for the record: scripts/test prints this file at the end.
    println!("{}", short.join("\n"));
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(Path::new(env!("CARGO_TARGET_TMPDIR")).join("regions-summary.txt"))
    {
        use std::io::Write;
        let _ = writeln!(f, "{}", short.join(" "));
    }
    match status {
        Some(s) if s.success() => {}
        Some(s) => panic!("chaos {scenario} failed ({s}):\n{out}\n{}", app.logs()),
        None => panic!("chaos {scenario} ran past {SCRIPT_LIMIT:?}:\n{out}\n{}", app.logs()),
    }
    assert_eq!(summary.len(), 1, "no summary from the script:\n{out}");
}

#[test]
fn a_region_killed_and_restarted() {
    chaos("kill", &[]);
}

#[test]
fn a_region_cut_off_and_healed() {
    chaos("cut", &[]);
}

#[test]
fn one_link_cut_in_one_direction() {
    chaos("oneway", &[]);
}

#[test]
fn a_random_node_killed_again_and_again() {
    chaos("random-kills", &[("KILLS", "8")]);
}
