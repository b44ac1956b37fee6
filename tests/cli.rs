//! The command line as an operator meets it: `config check` on good and
//! bad files, and admin commands when no node is running.

mod common;

use std::process::Command;

fn estafette(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_estafette")).args(args).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

const GOOD: &str = r#"
[node]
name = "paris-1"
region = "eu-west"
data_dir = "/var/lib/estafette/data"
metadata_dir = "/var/lib/estafette/meta"

[rpc]
bind = "0.0.0.0:3901"
public_addr = "10.0.0.1:3901"
secret_file = "SECRET"

[cluster]
replication_factor = 3
nodes = [
  { name = "paris-1", region = "eu-west", capacity = "500G", rpc_addr = "10.0.0.1:3901" },
  { name = "montreal-1", region = "ca-east", capacity = "500G", rpc_addr = "10.1.0.1:3901" },
  { name = "tokyo-1", region = "ap-east", capacity = "1T", rpc_addr = "10.2.0.1:3901" },
]

[listen]
imap = "0.0.0.0:143"
imaps = "0.0.0.0:993"
lmtp = "127.0.0.1:24"
metrics = "127.0.0.1:10190"

[tls]
cert = "/etc/estafette/tls/cert.pem"
key = "/etc/estafette/tls/key.pem"

[users]
file = "/etc/estafette/users.toml"
"#;

fn write_config(dir: &std::path::Path, name: &str, text: &str) -> String {
    let secret = dir.join("secret");
    std::fs::write(&secret, "ab".repeat(32)).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, text.replace("SECRET", secret.to_str().unwrap())).unwrap();
    path.to_string_lossy().into_owned()
}

#[test]
fn config_check_accepts_a_three_region_config() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), "good.toml", GOOD);
    let (ok, out) = estafette(&["config", "check", &path]);
    assert!(ok, "{out}");
    assert!(out.contains("node `paris-1` in `eu-west`, 3 node(s)"), "{out}");
}

#[test]
fn config_check_names_file_key_and_problem() {
    let dir = tempfile::tempdir().unwrap();
    let cases: &[(&str, String, &[&str])] = &[
        ("typo.toml", GOOD.replace("[listen]\n", "[listen]\nimapp = \"0.0.0.0:143\"\n"), &["typo.toml", "imapp"]),
        ("syntax.toml", GOOD.replace("[cluster]", "[cluster"), &["syntax.toml", "line"]),
        ("cap.toml", GOOD.replace("\"1T\"", "\"a lot\""), &["cap.toml", "cluster.nodes[2].capacity", "a lot"]),
        ("stranger.toml", GOOD.replace("name = \"paris-1\"\nregion", "name = \"berlin-1\"\nregion"), &["stranger.toml", "cluster.nodes", "berlin-1"]),
        ("rf.toml", GOOD.replace("replication_factor = 3", "replication_factor = 0"), &["rf.toml", "cluster.replication_factor"]),
        ("tls.toml", GOOD.replace("[tls]\ncert = \"/etc/estafette/tls/cert.pem\"\nkey = \"/etc/estafette/tls/key.pem\"\n", ""), &["tls.toml", "`tls`", "imaps"]),
        ("relative.toml", GOOD.replace("\"/var/lib/estafette/meta\"", "\"meta\""), &["relative.toml", "node.metadata_dir", "absolute"]),
        ("nosecret.toml", GOOD.replace("secret_file = \"SECRET\"\n", ""), &["nosecret.toml", "rpc.secret"]),
        ("dupaddr.toml", GOOD.replace("10.1.0.1:3901", "10.0.0.1:3901"), &["dupaddr.toml", "cluster.nodes[1].rpc_addr"]),
    ];
    for (name, text, needles) in cases {
        let path = write_config(dir.path(), name, text);
        let (ok, out) = estafette(&["config", "check", &path]);
        assert!(!ok, "{name} should be refused");
        for n in *needles {
            assert!(out.contains(n), "{name}: `{n}` not in: {out}");
        }
    }
    // A secret file that is not a secret.
    let path = write_config(dir.path(), "badsecret.toml", GOOD);
    std::fs::write(dir.path().join("secret"), "not hex").unwrap();
    let (ok, out) = estafette(&["config", "check", &path]);
    assert!(!ok);
    assert!(out.contains("rpc.secret_file") && out.contains("hex"), "{out}");
    // A file that does not exist.
    let (ok, out) = estafette(&["config", "check", "/nonexistent/estafette.toml"]);
    assert!(!ok);
    assert!(out.contains("/nonexistent/estafette.toml") && out.contains("cannot read"), "{out}");
}

#[test]
fn admin_commands_say_when_no_node_runs() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, out) = estafette(&["cluster", "status", "--data-dir", dir.path().to_str().unwrap()]);
    assert!(!ok);
    assert!(out.contains("no running node answers"), "{out}");
}

#[test]
fn dev_refuses_a_directory_made_for_other_regions() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("regions"), "1").unwrap();
    let (ok, out) = estafette(&["dev", "--regions", "3", "--data-dir", dir.path().to_str().unwrap()]);
    assert!(!ok);
    assert!(out.contains("--regions 1"), "{out}");
}

fn estafette_stdin(args: &[&str], input: &str) -> (bool, String) {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_estafette"))
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// Stops the dev node however the test ends.
struct DevNode(std::process::Child);
impl Drop for DevNode {
    fn drop(&mut self) {
        unsafe {
            libc::kill(self.0.id() as i32, libc::SIGTERM);
        }
        let _ = self.0.wait();
    }
}

#[test]
fn dev_has_a_demo_user_and_user_commands_manage_users() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap().to_string();
    let port = |_| estafette::storage::local::free_port().unwrap().to_string();
    let (rpc, metrics) = (port(0), port(1));
    let child = Command::new(env!("CARGO_BIN_EXE_estafette"))
        .args(["dev", "--data-dir", &d, "--rpc-port", &rpc, "--metrics-port", &metrics, "--lmtp-port", &port(2), "--imap-port", &port(3), "--imaps-port", &port(4)])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let _node = DevNode(child);
    // The demo user appears once the node is up.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let (ok, out) = estafette(&["user", "list", "--data-dir", &d]);
        if ok && out.contains("alice@example.test") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no demo user: {out}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }

    let (ok, out) = estafette_stdin(&["user", "add", "bob", "--address", "bob@example.test", "--address", "robert@example.test", "--password-stdin", "--data-dir", &d], "first-pass\n");
    assert!(ok, "{out}");
    let (ok, out) = estafette(&["user", "list", "--data-dir", &d]);
    assert!(ok && out.contains("bob@example.test, robert@example.test"), "{out}");

    // Errors are clear and change nothing.
    let (ok, out) = estafette_stdin(&["user", "add", "bob", "--address", "b2@example.test", "--password-stdin", "--data-dir", &d], "whatever1\n");
    assert!(!ok && out.contains("already exists"), "{out}");
    let (ok, out) = estafette_stdin(&["user", "add", "carol", "--address", "bob@EXAMPLE.test", "--password-stdin", "--data-dir", &d], "whatever1\n");
    assert!(!ok && out.contains("already delivers to `bob`"), "{out}");
    let (ok, out) = estafette_stdin(&["user", "add", "dave", "--address", "dave@example.test", "--password-stdin", "--data-dir", &d], "short\n");
    assert!(!ok && out.contains("at least 6"), "{out}");
    let (ok, out) = estafette_stdin(&["user", "passwd", "bob", "--password-stdin", "--data-dir", &d], "not-the-password\nsecond-pass\n");
    assert!(!ok && out.contains("authentication failed"), "{out}");

    let (ok, out) = estafette_stdin(&["user", "passwd", "bob", "--rotate", "--password-stdin", "--data-dir", &d], "first-pass\nsecond-pass\n");
    assert!(ok && out.contains("master key rotated"), "{out}");
    assert!(!dir.path().join("users.toml").exists(), "users live in the cluster, not in a file");
    let hits = [b"first-pass".as_slice(), b"second-pass", b"bob@example.test", b"$argon2"]
        .iter()
        .filter(|n| !common::grep_dir(dir.path(), n).is_empty())
        .count();
    assert_eq!(hits, 0, "no password, hash or address readable in the dev directory");

    let (ok, out) = estafette_stdin(&["user", "delete", "bob", "--data-dir", &d], "");
    assert!(!ok && out.contains("--yes"), "{out}");
    let (ok, out) = estafette(&["user", "delete", "bob", "--yes", "--data-dir", &d]);
    assert!(ok, "{out}");
    let (_, out) = estafette(&["user", "list", "--data-dir", &d]);
    assert!(!out.contains("bob"), "{out}");
}
