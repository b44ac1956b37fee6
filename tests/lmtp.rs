//! LMTP against real embedded Garage nodes: the protocol edge cases with a
//! scripted client (pipelining, mixed known and unknown recipients,
//! oversized mail, bad commands), delivery sealed to offline users and
//! filed into INBOX at login, a storage outage mid-DATA (451 and nothing
//! half-stored), and Python's smtplib.LMTP as a real peer over TCP.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use estafette::accounts::Accounts;
use estafette::crypto::KdfParams;
use estafette::lmtp::{Lmtp, LmtpLimits};
use estafette::mail::{incoming, message, MailService};
use estafette::storage::local::LocalCluster;
use futures::StreamExt;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

const PEER: SocketAddr = SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 1)), 40000);

struct Fixture {
    lmtp: Arc<Lmtp>,
    accounts: Arc<Accounts>,
    mail: Arc<MailService>,
    cluster: LocalCluster,
    _dir: tempfile::TempDir,
}

async fn fixture(nodes: usize, max_message: u64) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let cluster = LocalCluster::start(&dir.path().join("c"), nodes).await.unwrap();
    let store = cluster.nodes[0].store();
    let secret = cluster.configs[0].rpc_secret().unwrap();
    let accounts = Arc::new(Accounts::open(store.clone(), Some(cluster.nodes[0].peer_rpc()), &secret, "node-1", KdfParams::insecure_for_tests()).await.unwrap());
    accounts.add_user("alice", "alice-pw", &["alice@example.test".into()], None).await.unwrap();
    accounts.add_user("bob", "bob-pw-1", &["bob@example.test".into(), "robert@Example.Test".into()], None).await.unwrap();
    let slots: Vec<_> = cluster.nodes.iter().map(|n| n.peer_rpc().local_id()).collect();
    let mail = MailService::new(store.clone(), cluster.nodes[0].peer_rpc().clone(), slots, 0).unwrap();
    let lmtp = Arc::new(Lmtp {
        accounts: accounts.clone(),
        mail: mail.clone(),
        store,
        hostname: "mx.example.test".into(),
        limits: LmtpLimits { max_message, ..LmtpLimits::default() },
    });
    Fixture { lmtp, accounts, mail, cluster, _dir: dir }
}

/// Runs a session: sends `input` at once (pipelined), returns every reply line.
async fn converse(lmtp: &Arc<Lmtp>, input: &[u8]) -> Vec<String> {
    let (client, server) = tokio::io::duplex(1 << 20);
    let l = lmtp.clone();
    let task = tokio::spawn(async move { l.session(server, PEER).await });
    let (r, mut w) = tokio::io::split(client);
    w.write_all(input).await.unwrap();
    let mut lines = BufReader::new(r).lines();
    let mut out = vec![];
    while let Ok(Ok(Some(line))) = tokio::time::timeout(Duration::from_secs(60), lines.next_line()).await {
        let done = line.starts_with("221 ");
        out.push(line);
        if done {
            break;
        }
    }
    drop(w);
    let _ = task.await;
    out
}

fn codes(replies: &[String]) -> Vec<String> {
    replies.iter().filter(|l| l.as_bytes().get(3) == Some(&b' ')).map(|l| l[..9.min(l.len())].to_string()).collect()
}

async fn inbox_bodies(f: &Fixture, login: &str, password: &str) -> Vec<Vec<u8>> {
    let session = f.accounts.login(login, password, PEER.ip()).await.unwrap();
    let keys = session.keys().clone();
    let store = f.cluster.nodes[0].store();
    incoming::file_incoming(&f.mail, &store, &keys).await.unwrap();
    let mb = f.mail.mailbox(&keys, "inbox");
    mb.refresh().await.unwrap();
    let ids: Vec<u64> = mb.snapshot().await.map(|v| v.messages().iter().map(|m| m.id).collect()).unwrap_or_default();
    let mut out = vec![];
    for id in ids {
        let mut body = message::read_body(&store, &keys, "inbox", id).await.unwrap().unwrap();
        let mut bytes = vec![];
        while let Some(c) = body.next().await {
            bytes.extend(c.unwrap());
        }
        out.push(bytes);
    }
    out
}

fn strip_trace(msg: &[u8]) -> (String, Vec<u8>) {
    // Delivered-To and Received are the first two header lines we add.
    let text = String::from_utf8_lossy(msg);
    let mut lines = text.splitn(3, "\r\n");
    let delivered = lines.next().unwrap().to_string();
    let received = lines.next().unwrap();
    assert!(received.starts_with("Received: from client.test (127.0.0.1) by mx.example.test (Estafette) with LMTP id"), "{received}");
    (delivered, msg[msg.len() - lines.next().unwrap().len()..].to_vec())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_transaction_with_mixed_recipients() {
    let f = fixture(1, 10 << 20).await;
    let body = b"From: carol@example.test\r\nSubject: hi\r\n\r\n..leading dot\r\nbare lf line\n8-bit caf\xc3\xa9\r\n.\r\n";
    let mut input = b"LHLO client.test\r\nMAIL FROM:<carol@example.test> BODY=8BITMIME SIZE=200\r\nRCPT TO:<alice@example.test>\r\nRCPT TO:<nobody@example.test>\r\nRCPT TO:<robert+lists@EXAMPLE.test>\r\nDATA\r\n".to_vec();
    input.extend_from_slice(body);
    input.extend_from_slice(b"QUIT\r\n");
    let replies = converse(&f.lmtp, &input).await;
    assert_eq!(
        codes(&replies),
        vec!["220 mx.ex", "250 SIZE ", "250 2.1.0", "250 2.1.5", "550 5.1.1", "250 2.1.5", "354 2.0.0", "250 2.0.0", "250 2.0.0", "221 2.0.0"],
        "{replies:#?}"
    );
    assert!(replies.iter().any(|l| l == "250-PIPELINING") && replies.iter().any(|l| l == "250-ENHANCEDSTATUSCODES"));
    assert!(replies.iter().any(|l| l == "250-8BITMIME"));

    // Delivered while both were offline; filed at their next login.
    let expected = b"From: carol@example.test\r\nSubject: hi\r\n\r\n.leading dot\r\nbare lf line\r\n8-bit caf\xc3\xa9\r\n".to_vec();
    for (login, pw, rcpt) in [("alice", "alice-pw", "alice@example.test"), ("bob", "bob-pw-1", "robert+lists@EXAMPLE.test")] {
        let bodies = inbox_bodies(&f, login, pw).await;
        assert_eq!(bodies.len(), 1, "{login}");
        let (delivered, rest) = strip_trace(&bodies[0]);
        assert_eq!(delivered, format!("Delivered-To: {rcpt}"));
        assert_eq!(rest, expected, "{login}: body byte-identical after dot-unstuffing and CRLF normalisation");
    }
    // Filing twice files nothing twice.
    assert_eq!(inbox_bodies(&f, "alice", "alice-pw").await.len(), 1);
    f.cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_errors_are_answered_and_cost_nothing() {
    let f = fixture(1, 1000).await;
    let replies = converse(
        &f.lmtp,
        b"EHLO x\r\nMAIL FROM:<a@b>\r\nLHLO x\r\nRCPT TO:<alice@example.test>\r\nDATA\r\nMAIL FROM:<a@b> SIZE=5000\r\nMAIL FROM:<a@b> FOO=1\r\nMAIL FROM:<a@b>\r\nMAIL FROM:<c@d>\r\nDATA\r\nRCPT TO:<alice@example.test>\r\nVRFY alice\r\nNOOP\r\nRSET\r\nBOGUS\r\nQUIT\r\n",
    )
    .await;
    assert_eq!(
        codes(&replies),
        vec![
            "220 mx.ex", "500 5.5.1", "503 5.5.1", "250 SIZE ", "503 5.5.1", "503 5.5.1", "552 5.3.4", "555 5.5.4", "250 2.1.0",
            "503 5.5.1", "503 5.5.1", "250 2.1.5", "252 2.5.0", "250 2.0.0", "250 2.0.0", "500 5.5.2", "221 2.0.0"
        ],
        "{replies:#?}"
    );
    // A message over the limit: every recipient gets 552, nothing stored.
    let mut input = b"LHLO x\r\nMAIL FROM:<a@b>\r\nRCPT TO:<alice@example.test>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\n".to_vec();
    input.extend(std::iter::repeat_n(b"0123456789012345678901234567890123456789\r\n".to_vec(), 100).flatten());
    input.extend_from_slice(b".\r\nQUIT\r\n");
    let replies = converse(&f.lmtp, &input).await;
    assert_eq!(codes(&replies)[5..8], ["354 2.0.0", "552 5.3.4", "552 5.3.4"], "{replies:#?}");
    let uid = f.accounts.directory().user_id("alice").unwrap();
    assert_eq!(incoming::queued(&f.cluster.nodes[0].store(), &uid).await.unwrap(), 0);
    // A line longer than the limit ends the session with a reason.
    let mut long = b"LHLO x\r\nNOOP ".to_vec();
    long.extend(vec![b'x'; 10_000]);
    long.extend_from_slice(b"\r\n");
    let replies = converse(&f.lmtp, &long).await;
    assert_eq!(replies.last().map(|l| &l[..9]), Some("500 5.5.6"), "{replies:#?}");
    f.cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storage_outage_mid_data_gives_451_and_stores_nothing() {
    let f = fixture(3, 10 << 20).await;
    let (client, server) = tokio::io::duplex(1 << 20);
    let l = f.lmtp.clone();
    let task = tokio::spawn(async move { l.session(server, PEER).await });
    let (r, mut w) = tokio::io::split(client);
    let mut lines = BufReader::new(r).lines();
    w.write_all(b"LHLO x\r\nMAIL FROM:<a@b>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n").await.unwrap();
    let mut got = vec![];
    while !got.iter().any(|l: &String| l.starts_with("354")) {
        got.push(lines.next_line().await.unwrap().unwrap());
    }
    // Two of three regions go down while the message is in transit.
    f.cluster.nodes[1].shutdown().await;
    f.cluster.nodes[2].shutdown().await;
    w.write_all(b"Subject: lost?\r\n\r\nbody\r\n.\r\nQUIT\r\n").await.unwrap();
    let reply = lines.next_line().await.unwrap().unwrap();
    assert!(reply.starts_with("451 4.3.0"), "{reply}");
    drop(w);
    let _ = task.await;
    // Nothing half-stored is visible: the queue shows no message.
    let uid = f.accounts.directory().user_id("alice").unwrap();
    let queued = incoming::queued(&f.cluster.nodes[0].store(), &uid).await;
    assert!(queued.is_err() || queued.unwrap() == 0);
    f.cluster.nodes[0].shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_smtplib_delivers_over_tcp() {
    let f = fixture(1, 10 << 20).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let _server = f.lmtp.clone().serve(listener);
    let script = format!(
        r#"
import smtplib
s = smtplib.LMTP("127.0.0.1", {port})
code, caps = s.ehlo("client.test")  # smtplib.LMTP sends LHLO
assert code == 250 and b"PIPELINING" in caps, caps
# smtplib reads a single reply after DATA, so one recipient per message
# (the per-recipient replies are covered by the scripted tests).
for i in range(5):
    msg = "From: p@example.test\r\nTo: alice@example.test\r\nSubject: n%d\r\n\r\nline\r\n.dot\r\n" % i
    for rcpt in ["alice@example.test", "bob@example.test"]:
        refused = s.sendmail("p@example.test", [rcpt], msg)
        assert refused == {{}}, refused
try:
    s.sendmail("p@example.test", ["nobody@example.test"], "Subject: x\r\n\r\ny\r\n")
    raise SystemExit("unknown recipient accepted")
except smtplib.SMTPRecipientsRefused as e:
    assert e.recipients["nobody@example.test"][0] == 550, e.recipients
s.quit()
print("ok")
"#
    );
    let out = tokio::process::Command::new("python3").arg("-c").arg(script).output().await.expect("python3");
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let alice = inbox_bodies(&f, "alice", "alice-pw").await;
    let bob = inbox_bodies(&f, "bob", "bob-pw-1").await;
    assert_eq!((alice.len(), bob.len()), (5, 5));
    let mut subjects: Vec<String> = alice
        .iter()
        .map(|b| String::from_utf8_lossy(b).lines().find(|l| l.starts_with("Subject:")).unwrap().to_string())
        .collect();
    subjects.sort();
    assert_eq!(subjects, (0..5).map(|i| format!("Subject: n{i}")).collect::<Vec<_>>());
    assert!(String::from_utf8_lossy(&alice[0]).ends_with("line\r\n.dot\r\n"), "smtplib's dot-stuffing undone");
    f.cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_20_mib_attachment_arrives_intact() {
    let f = fixture(1, 50 << 20).await;
    // base64 lines of 76 characters, as MUAs send attachments.
    let line = "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNkZWZnaGlqa2xtbm9wcXJzdHV2d3h5ejAxMjM0\r\n";
    let lines = (20 << 20) / line.len();
    let mut body = b"Subject: big\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=B\r\n\r\n--B\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n".to_vec();
    for _ in 0..lines {
        body.extend_from_slice(line.as_bytes());
    }
    body.extend_from_slice(b"--B--\r\n");
    let mut input = b"LHLO client.test\r\nMAIL FROM:<a@b> SIZE=22000000\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n".to_vec();
    input.extend_from_slice(&body);
    input.extend_from_slice(b".\r\nQUIT\r\n");
    let replies = converse(&f.lmtp, &input).await;
    assert_eq!(codes(&replies)[4..6], ["354 2.0.0", "250 2.0.0"], "{replies:#?}");
    let bodies = inbox_bodies(&f, "alice", "alice-pw").await;
    let (_, rest) = strip_trace(&bodies[0]);
    assert_eq!(rest.len(), body.len());
    assert!(rest == body, "20 MiB body byte-identical");
    f.cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_survives_a_dead_region() {
    let f = fixture(3, 10 << 20).await;
    // Region 2 dies; delivery through node 1 still gets a quorum.
    f.cluster.nodes[1].shutdown().await;
    let mut input = b"LHLO client.test\r\nMAIL FROM:<a@b>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n".to_vec();
    input.extend_from_slice(b"Subject: while region 2 was down\r\n\r\nstill here\r\n.\r\nQUIT\r\n");
    let replies = converse(&f.lmtp, &input).await;
    assert_eq!(codes(&replies)[4..6], ["354 2.0.0", "250 2.0.0"], "{replies:#?}");
    // Read through node 3: a login there files and shows it.
    let secret = f.cluster.configs[0].rpc_secret().unwrap();
    let accounts3 = Accounts::open(f.cluster.nodes[2].store(), Some(f.cluster.nodes[2].peer_rpc()), &secret, "node-3", KdfParams::insecure_for_tests()).await.unwrap();
    let session = accounts3.login("alice", "alice-pw", PEER.ip()).await.unwrap();
    let keys = session.keys().clone();
    let slots: Vec<_> = f.cluster.nodes.iter().map(|n| n.peer_rpc().local_id()).collect();
    let mail3 = MailService::new(f.cluster.nodes[2].store(), f.cluster.nodes[2].peer_rpc().clone(), slots, 2).unwrap();
    assert_eq!(incoming::file_incoming(&mail3, &f.cluster.nodes[2].store(), &keys).await.unwrap(), 1);
    let mb = mail3.mailbox(&keys, "inbox");
    mb.refresh().await.unwrap();
    let id = mb.snapshot().await.unwrap().messages()[0].id;
    let mut body = message::read_body(&f.cluster.nodes[2].store(), &keys, "inbox", id).await.unwrap().unwrap();
    let mut bytes = vec![];
    while let Some(c) = body.next().await {
        bytes.extend(c.unwrap());
    }
    assert!(String::from_utf8_lossy(&bytes).ends_with("Subject: while region 2 was down\r\n\r\nstill here\r\n"));
    drop((mb, mail3));
    f.cluster.nodes[0].shutdown().await;
    f.cluster.nodes[2].shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_holding_the_keys_files_mail_delivered_elsewhere() {
    let f = fixture(2, 10 << 20).await;
    // Alice has a session on node 2 (her INBOX open there), none on node 1.
    let secret = f.cluster.configs[0].rpc_secret().unwrap();
    let accounts2 = Accounts::open(f.cluster.nodes[1].store(), Some(f.cluster.nodes[1].peer_rpc()), &secret, "node-2", KdfParams::insecure_for_tests()).await.unwrap();
    let session = accounts2.login("alice", "alice-pw", PEER.ip()).await.unwrap();
    let keys = session.keys().clone();
    let slots: Vec<_> = f.cluster.nodes.iter().map(|n| n.peer_rpc().local_id()).collect();
    let mail2 = MailService::new(f.cluster.nodes[1].store(), f.cluster.nodes[1].peer_rpc().clone(), slots, 1).unwrap();
    let inbox = mail2.mailbox(&keys, "inbox");
    let mut changes = mail2.watch(&keys, "inbox");

    // Delivered through node 1, which has no keys for her.
    let mut input = b"LHLO client.test\r\nMAIL FROM:<a@b>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n".to_vec();
    input.extend_from_slice(b"Subject: filed by the node that holds the keys\r\n\r\nhi\r\n.\r\nQUIT\r\n");
    let replies = converse(&f.lmtp, &input).await;
    assert_eq!(codes(&replies)[4..6], ["354 2.0.0", "250 2.0.0"], "{replies:#?}");

    // Node 2 files it into INBOX without any new login, and empties the queue.
    let uid = f.accounts.directory().user_id("alice").unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        inbox.refresh().await.unwrap();
        let filed = inbox.snapshot().await.is_some_and(|v| v.len() == 1);
        let queued = incoming::queued(&f.cluster.nodes[0].store(), &uid).await.unwrap();
        if filed && queued == 0 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "not filed (filed: {filed}, still queued: {queued})");
        let _ = tokio::time::timeout(Duration::from_millis(500), changes.changed()).await;
    }
    drop((changes, inbox, mail2, session));
    f.cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filing_leaves_a_delivery_whose_body_is_still_being_written() {
    let f = fixture(1, 10 << 20).await;
    let store = f.cluster.nodes[0].store();
    let uid = f.accounts.directory().user_id("alice").unwrap();
    let pk = estafette::accounts::keys::public_key(&store, &uid).await.unwrap().unwrap();
    // The queue entry has landed, the body not yet (they are written
    // concurrently): filing now must neither file nor drop it.
    let id = incoming::deliver(&store, &uid, &pk, b"Subject: slow\r\n\r\nbig body\r\n", chrono::Utc::now().timestamp(), None, 0)
        .await
        .unwrap()
        .message;
    let body_key = format!("msg/{id:016x}");
    let sealed = store.get_blob_bytes(&uid, &body_key).await.unwrap().unwrap();
    store.delete_blob(&uid, &body_key).await.unwrap();
    let session = f.accounts.login("alice", "alice-pw", PEER.ip()).await.unwrap();
    let keys = session.keys().clone();
    assert_eq!(incoming::file_incoming(&f.mail, &store, &keys).await.unwrap(), 0);
    assert_eq!(incoming::queued(&store, &uid).await.unwrap(), 1, "kept for later");
    // The body arrives: the next filing files it.
    store.put_blob_bytes(&uid, &body_key, sealed.into()).await.unwrap();
    assert_eq!(incoming::file_incoming(&f.mail, &store, &keys).await.unwrap(), 1);
    assert_eq!(incoming::queued(&store, &uid).await.unwrap(), 0);
    f.cluster.shutdown().await;
}

/// One LMTP transaction to one recipient; the codes of the replies.
async fn deliver_once(f: &Fixture, rcpt: &str, body_len: usize) -> Vec<String> {
    let mut input = format!("LHLO client.test\r\nMAIL FROM:<carol@example.test>\r\nRCPT TO:<{rcpt}>\r\nDATA\r\n").into_bytes();
    input.extend_from_slice(b"Subject: sized\r\n\r\n");
    input.extend_from_slice(&vec![b'x'; body_len]);
    input.extend_from_slice(b"\r\n.\r\nQUIT\r\n");
    codes(&converse(&f.lmtp, &input).await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_quota_is_a_transient_452_and_too_big_for_the_quota_552() {
    let f = fixture(1, 10 << 20).await;
    f.accounts.set_quota("bob", Some("20 KB".into())).await.unwrap();
    // 8 KB fits, twice; the third would pass 20 KB: 452 4.2.2 at DATA.
    for _ in 0..2 {
        let c = deliver_once(&f, "bob@example.test", 8000).await;
        assert_eq!(c[5], "250 2.0.0", "{c:?}");
    }
    let c = deliver_once(&f, "bob@example.test", 8000).await;
    assert_eq!(c[5], "452 4.2.2", "{c:?}");
    // A message larger than the whole quota can never fit: 552 5.2.2.
    let c = deliver_once(&f, "bob@example.test", 30_000).await;
    assert_eq!(c[5], "552 5.2.2", "{c:?}");
    // Someone else's mail is not affected.
    let c = deliver_once(&f, "alice@example.test", 30_000).await;
    assert_eq!(c[5], "250 2.0.0", "{c:?}");
    // Once the usage says full, RCPT itself answers 452 (the MTA keeps
    // the mail and retries; nothing is bounced).
    f.accounts.set_quota("bob", Some("16 KB".into())).await.unwrap();
    let c = deliver_once(&f, "bob@example.test", 10).await;
    assert_eq!(c[3], "452 4.2.2", "{c:?}");
    // The counters reach storage (another node reads the same usage).
    f.mail.usage.flush().await;
    let uid = f.accounts.directory().user_id("bob").unwrap();
    let used = f.mail.usage.current(&uid).await.unwrap();
    assert!((16_000..20_000).contains(&used), "{used}");
    f.cluster.shutdown().await;
}
