//! The command line as an operator meets it: `config check` on good and
//! bad files, and admin commands when no node is running.

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
metrics = "127.0.0.1:9187"

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
