//! IMAP against a real `estafette dev` node (the shipped binary, embedded
//! Garage, self-signed TLS), with Python's imaplib and a raw line client
//! as the peers. Each RFC area is one script under tests/imap/; each
//! script asserts on full responses and exits non-zero on the first
//! mismatch, which fails the test with the script's output.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

struct Dev {
    child: std::process::Child,
    dir: tempfile::TempDir,
    imap: u16,
    imaps: u16,
    lmtp: u16,
}

impl Drop for Dev {
    fn drop(&mut self) {
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let _ = self.child.wait();
    }
}

fn port() -> u16 {
    estafette::storage::local::free_port().unwrap()
}

fn dev() -> Dev {
    dev_regions(1)
}

/// `estafette dev --regions N`: N processes on 127.0.0.1..N, same ports.
fn dev_regions(n: u8) -> Dev {
    let dir = tempfile::tempdir().unwrap();
    let (imap, imaps, lmtp) = (port(), port(), port());
    let d = dir.path().to_str().unwrap().to_string();
    let log = std::fs::File::create(dir.path().join("dev.log")).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_estafette"))
        .args(["dev", "--data-dir", &d, "--regions", &n.to_string()])
        .args(["--rpc-port", &port().to_string(), "--metrics-port", &port().to_string(), "--wan-port", &port().to_string()])
        .args(["--lmtp-port", &lmtp.to_string(), "--imap-port", &imap.to_string(), "--imaps-port", &imaps.to_string()])
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    // Killed on drop, even if it never gets ready.
    let dev = Dev { child, dir, imap, imaps, lmtp };
    // Ready once the demo user is listed and the IMAP port answers.
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        // Every node knows the demo user (from the replicated directory)
        // and answers IMAP.
        let knows = |i: u8| {
            let config = dev.dir.path().join(format!("node-{i}")).join("estafette.toml");
            Command::new(env!("CARGO_BIN_EXE_estafette"))
                .args(["user", "list", "--config", config.to_str().unwrap()])
                .output()
                .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("alice@example.test"))
        };
        if (1..=n).all(knows) && (1..=n).all(|i| std::net::TcpStream::connect((format!("127.0.0.{i}").as_str(), imap)).is_ok()) {
            break;
        }
        assert!(Instant::now() < deadline, "dev node did not come up");
        std::thread::sleep(Duration::from_millis(200));
    }
    dev
}

fn script(dev: &Dev, name: &str) {
    script_env(dev, name, &[]);
}

fn script_env(dev: &Dev, name: &str, env: &[(&str, &str)]) {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/imap");
    let out = Command::new("python3")
        .arg(format!("{dir}/{name}"))
        .current_dir(dir)
        .env("IMAP_PORT", dev.imap.to_string())
        .env("IMAPS_PORT", dev.imaps.to_string())
        .env("LMTP_PORT", dev.lmtp.to_string())
        .env("DEV_CERT", dev.dir.path().join("tls-cert.pem"))
        .env("DEV_DIR", dev.dir.path())
        .env("ESTAFETTE_BIN", env!("CARGO_BIN_EXE_estafette"))
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .envs(env.iter().copied())
        .output()
        .expect("python3 runs");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    if !(out.status.success() && text.contains("ok")) {
        let log = std::fs::read_to_string(dev.dir.path().join("dev.log")).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(40).collect::<Vec<_>>().into_iter().rev().collect();
        panic!("{name} failed:\n{text}\n--- dev node log (tail) ---\n{}", tail.join("\n"));
    }
}

#[test]
fn rfc9051_session_states_tls_and_authentication() {
    script(&dev(), "test_rfc9051_session.py");
}

#[test]
fn rfc9051_messages_fetch_store_copy_move_expunge() {
    script(&dev(), "test_rfc9051_messages.py");
}

#[test]
fn rfc9051_mailboxes_list_status_special_use() {
    script(&dev(), "test_rfc9051_mailboxes.py");
}

#[test]
fn rfc9051_search_esearch_searchres_within() {
    script(&dev(), "test_rfc9051_search.py");
}

#[test]
fn rfc3501_recent_and_new_keywords_told_to_other_sessions() {
    script(&dev(), "test_rfc3501_recent.py");
}

#[test]
fn rfc5256_sort_and_rfc5957_display_sort() {
    script(&dev(), "test_rfc5256_sort.py");
}

#[test]
fn rfc7162_condstore_and_qresync() {
    script(&dev(), "test_rfc7162_condstore_qresync.py");
}

#[test]
fn rfc2177_idle_sees_other_sessions_and_lmtp() {
    script(&dev(), "test_rfc2177_idle.py");
}

#[test]
fn a_renewed_certificate_is_served_after_sighup_without_dropping_sessions() {
    script(&dev(), "test_tls_reload.py");
}

#[test]
fn bad_input_is_answered_and_bounded() {
    script(&dev(), "test_robustness.py");
}

#[test]
fn fetch_rendering_matches_dovecot() {
    script(&dev(), "test_fetch_vs_dovecot.py");
}

#[test]
fn isync_two_way_sync_of_500_messages() {
    script(&dev(), "test_mbsync.py");
}

#[test]
fn three_regions_append_on_one_node_idle_on_another() {
    let dev = dev_regions(3);
    script_env(&dev, "test_cluster_idle.py", &[("IMAP_HOST1", "127.0.0.1"), ("IMAP_HOST3", "127.0.0.3")]);
}

#[test]
fn mail_acknowledged_before_a_login_is_in_its_first_select_on_another_node() {
    let dev = dev_regions(3);
    script_env(&dev, "test_queued_delivery.py", &[("IMAP_HOST1", "127.0.0.1"), ("IMAP_HOST3", "127.0.0.3")]);
}

#[test]
fn rfc9208_quota_append_copy_expunge_and_lmtp() {
    script(&dev(), "test_rfc9208_quota.py");
}
