//! The shipped binary as three processes (`estafette dev --regions 3`):
//! write through node 1, read through node 3; SIGKILL node 2, writes and
//! reads still succeed; restart it, and what was written while it was down
//! is readable through it. Each node is driven through its admin socket.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use estafette::server::admin::{call, Request, Response};

const USER: &str = "0303030303030303030303030303030303030303030303030303030303030303";

fn exe() -> &'static str {
    env!("CARGO_BIN_EXE_estafette")
}

fn sock(dir: &Path, i: u8) -> PathBuf {
    dir.join(format!("node-{i}/meta/admin.sock"))
}

fn free_port() -> u16 {
    estafette::storage::local::free_port().unwrap()
}

/// Kills the whole dev appliance (supervisor and nodes) when the test ends,
/// whatever the outcome.
struct Appliance {
    supervisor: Child,
    dir: PathBuf,
    extra: Vec<Child>,
}

impl Drop for Appliance {
    fn drop(&mut self) {
        let _ = self.supervisor.kill();
        for c in &mut self.extra {
            let _ = c.kill();
            let _ = c.wait();
        }
        for i in 1..=3 {
            if let Some(pid) = pid_of(&self.dir, i) {
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                }
            }
        }
        let _ = self.supervisor.wait();
    }
}

fn pid_of(dir: &Path, i: u8) -> Option<i32> {
    std::fs::read_to_string(dir.join(format!("node-{i}/pid"))).ok()?.trim().parse().ok()
}

async fn status(dir: &Path, i: u8) -> Option<estafette::storage::ClusterStatus> {
    match call(&sock(dir, i), &Request::Status).await {
        Ok(Response::Status(s)) => Some(s),
        _ => None,
    }
}

/// Waits until node `i` sees `up` nodes up and a quorum for every partition.
async fn wait_for(dir: &Path, i: u8, up: usize, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(s) = status(dir, i).await {
            if s.layout_version >= 1
                && s.nodes.iter().filter(|n| n.up).count() == up
                && s.partitions_with_quorum == s.partitions
                && s.read_version == s.layout_version
            {
                return;
            }
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn put(dir: &Path, node: u8, key: &str, value: &[u8]) -> Result<(), String> {
    let req = Request::ItemPut {
        user: USER.into(),
        partition: "test".into(),
        sort_key: key.into(),
        value: hex::encode(value),
    };
    match call(&sock(dir, node), &req).await {
        Ok(Response::Done) => Ok(()),
        other => Err(format!("{other:?}")),
    }
}

async fn get(dir: &Path, node: u8, key: &str) -> Option<Vec<u8>> {
    let req = Request::ItemGet { user: USER.into(), partition: "test".into(), sort_key: key.into() };
    match call(&sock(dir, node), &req).await {
        Ok(Response::Item { values: Some(v) }) => v.first().map(|h| hex::decode(h).unwrap()),
        Ok(Response::Item { values: None }) => None,
        other => panic!("get {key} through node-{node}: {other:?}"),
    }
}

async fn put_blob(dir: &Path, node: u8, key: &str, value: &[u8]) {
    let req = Request::BlobPut { user: USER.into(), key: key.into(), value: hex::encode(value) };
    match call(&sock(dir, node), &req).await {
        Ok(Response::Done) => {}
        other => panic!("blob put {key} through node-{node}: {other:?}"),
    }
}

async fn get_blob(dir: &Path, node: u8, key: &str) -> Option<Vec<u8>> {
    match call(&sock(dir, node), &Request::BlobGet { user: USER.into(), key: key.into() }).await {
        Ok(Response::Blob { value }) => value.map(|h| hex::decode(h).unwrap()),
        other => panic!("blob get {key} through node-{node}: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_and_restart_a_region() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_owned();
    let supervisor = Command::new(exe())
        .args(["dev", "--regions", "3", "--data-dir"])
        .arg(&dir)
        .args(["--rpc-port", &free_port().to_string(), "--metrics-port", &free_port().to_string(), "--lmtp-port", &free_port().to_string()])
        .args(["--wan-port", &free_port().to_string(), "--imap-port", &free_port().to_string(), "--imaps-port", &free_port().to_string()])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut app = Appliance { supervisor, dir: dir.clone(), extra: vec![] };
    wait_for(&dir, 1, 3, "three healthy nodes").await;

    // The CLI shows three healthy nodes in three zones.
    let out = Command::new(exe()).args(["cluster", "status", "--data-dir"]).arg(&dir).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text} {}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("replication factor 3"), "{text}");
    for r in ["region-1", "region-2", "region-3"] {
        assert!(text.contains(r), "{r} missing in:\n{text}");
    }
    assert_eq!(text.matches(" up ").count(), 3, "{text}");

    // Every node declares the demo user; whichever starts first creates it
    // in the replicated directory, and node 3 knows it.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(Response::Users { users, .. }) = call(&sock(&dir, 3), &Request::UserList { cached: false }).await {
            if users.iter().any(|u| u.login == "alice") {
                break;
            }
        }
        assert!(Instant::now() < deadline, "no demo user");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Write through node 1, read through node 3.
    put(&dir, 1, "before", b"written with all up").await.unwrap();
    assert_eq!(get(&dir, 3, "before").await.as_deref(), Some(&b"written with all up"[..]));
    let blob: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    put_blob(&dir, 1, "blob-before", &blob).await;
    assert!(get_blob(&dir, 3, "blob-before").await.unwrap() == blob);

    // SIGKILL node 2: a quorum (2 of 3) remains.
    let pid2 = pid_of(&dir, 2).expect("node-2 pid file");
    unsafe {
        libc::kill(pid2, libc::SIGKILL);
    }
    wait_for(&dir, 1, 2, "node 1 to see node 2 down").await;
    put(&dir, 1, "during", b"written while node 2 was dead").await.unwrap();
    assert_eq!(get(&dir, 3, "during").await.as_deref(), Some(&b"written while node 2 was dead"[..]));
    let blob2: Vec<u8> = (0..1_500_000u32).map(|i| (i % 241) as u8).collect();
    put_blob(&dir, 3, "blob-during", &blob2).await;
    assert!(get_blob(&dir, 1, "blob-during").await.unwrap() == blob2);
    assert_eq!(get(&dir, 1, "before").await.as_deref(), Some(&b"written with all up"[..]));

    // Restart node 2 from its configuration; it rejoins and serves what was
    // written while it was down.
    let restarted = Command::new(exe())
        .args(["server", "--config"])
        .arg(dir.join("node-2/estafette.toml"))
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    app.extra.push(restarted);
    wait_for(&dir, 2, 3, "node 2 to rejoin").await;
    assert_eq!(get(&dir, 2, "during").await.as_deref(), Some(&b"written while node 2 was dead"[..]));
    assert!(get_blob(&dir, 2, "blob-during").await.unwrap() == blob2);
    put(&dir, 2, "after", b"written through the restarted node").await.unwrap();
    assert_eq!(get(&dir, 1, "after").await.as_deref(), Some(&b"written through the restarted node"[..]));
    drop(app);
}
