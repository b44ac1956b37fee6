//! The mailbox engine on real embedded Garage nodes (three regions, RF 3,
//! in this process): sequencing through another node, change
//! notifications, a sequencer lost and taken over without renumbering, and
//! group commit (a STORE on 10,000 messages is one log write).

use std::sync::Arc;
use std::time::{Duration, Instant};

use estafette::accounts::UserKeys;
use estafette::crypto::KeyBundle;
use estafette::mail::{FlagMode, MailService, Op};
use estafette::storage::local::LocalCluster;
use estafette::storage::{Range, UserId};

fn keys() -> Arc<UserKeys> {
    Arc::new(UserKeys::import(UserId([9; 32]), &KeyBundle::generate().to_bytes()).unwrap())
}

fn services(cluster: &LocalCluster) -> Vec<Arc<MailService>> {
    let slots: Vec<_> = cluster.nodes.iter().map(|n| n.peer_rpc().local_id()).collect();
    cluster
        .nodes
        .iter()
        .enumerate()
        .map(|(i, n)| MailService::new(n.store(), n.peer_rpc().clone(), slots.clone(), i as u8).unwrap())
        .collect()
}

/// Repeats `f` until it succeeds, as a client retries after a NO, for at
/// most a minute.
async fn retry<T, F, Fut>(f: F) -> T
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<T, estafette::mail::MailError>>,
{
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match f().await {
            Ok(v) => return v,
            Err(e) => assert!(Instant::now() < deadline, "still failing after a minute: {e}"),
        }
    }
}

fn append(id: u64) -> (u64, Op) {
    (id, Op::Append { message: 1_000_000 + id, flags: vec![] })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_one_history() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = LocalCluster::start(dir.path(), 3).await.unwrap();
    let svc = services(&cluster);
    let k = keys();

    // Appends through node 0; node 0 becomes the sequencer.
    for i in 1..=10u64 {
        let out = svc[0].submit(&k, "inbox", vec![append(i)]).await.unwrap();
        assert_eq!(out[0].uid, Some(i as u32));
    }
    // Node 2 forwards to node 0 and sees the same numbering.
    let mut changes = svc[2].watch(&k, "inbox");
    let out = svc[1].submit(&k, "inbox", vec![append(11)]).await.unwrap();
    assert_eq!(out[0].uid, Some(11));
    // Node 2 is told (pushed over the node RPC) without polling.
    tokio::time::timeout(Duration::from_secs(10), changes.changed()).await.expect("notified").unwrap();
    let mb2 = svc[2].mailbox(&k, "inbox");
    mb2.refresh().await.unwrap();
    let v = mb2.snapshot().await.unwrap();
    assert_eq!(v.len(), 11);
    assert_eq!(v.uidnext, 12);
    let before: Vec<(u32, u64)> = v.messages().iter().map(|m| (m.uid, m.id)).collect();

    // Flags and expunge through node 2.
    let out = svc[2]
        .submit(&k, "inbox", vec![(100, Op::Store { uids: vec![3, 4], mode: FlagMode::Add, flags: vec!["\\Seen".into()], unchanged_since: None })])
        .await
        .unwrap();
    let seen_modseq = out[0].modseq;
    svc[2].submit(&k, "inbox", vec![(101, Op::Expunge { uids: vec![5] })]).await.unwrap();

    // The sequencer's region goes dark: the others take over and go on.
    // Until Garage notices the dead node a call may time out; a client
    // retries (the same op id, so a retry cannot apply twice).
    cluster.nodes[0].shutdown().await;
    let t = Instant::now();
    let out = retry(|| svc[1].submit(&k, "inbox", vec![append(12)])).await;
    println!("takeover after losing the sequencer: {:?}", t.elapsed());
    assert_eq!(out[0].uid, Some(12), "numbering continues, no jump");
    let mb1 = svc[1].mailbox(&k, "inbox");
    retry(|| mb1.refresh()).await;
    let v = mb1.snapshot().await.unwrap();
    assert_eq!(v.len(), 11, "10 + 2 appended - 1 expunged");
    for (uid, id) in before.iter().filter(|(u, _)| *u != 5) {
        assert_eq!(v.get(*uid).map(|m| m.id), Some(*id), "UID {uid} still the same message");
    }
    assert_eq!(v.get(3).unwrap().modseq, seen_modseq);
    assert!(v.highestmodseq > seen_modseq);
    assert_eq!(v.vanished_since(seen_modseq).collect::<Vec<_>>(), vec![5]);
    let mb2 = svc[2].mailbox(&k, "inbox");
    retry(|| mb2.refresh()).await;
    assert_eq!(mb2.snapshot().await.unwrap(), v, "both surviving regions agree");
    drop((changes, mb1, mb2, svc));
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_commit_and_big_store() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = LocalCluster::start(dir.path(), 1).await.unwrap();
    let svc = services(&cluster);
    let k = keys();
    // 10,000 appends from 50 concurrent submitters share log entries.
    let mut tasks = vec![];
    for t in 0..50u64 {
        let (svc, k) = (svc[0].clone(), k.clone());
        tasks.push(tokio::spawn(async move {
            for i in 0..200u64 {
                svc.submit(&k, "big", vec![append(t * 1000 + i)]).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let store = cluster.nodes[0].store();
    let entries = |store: estafette::storage::Store| async move {
        store
            .range(&k_user(), "log/big", &Range { prefix: Some("e/".into()), ..Default::default() })
            .await
            .unwrap()
            .len()
    };
    let n_entries = entries(store.clone()).await;
    assert!(n_entries < 10_000, "{n_entries} log entries for 10,000 appends: no group commit");
    let mb = svc[0].mailbox(&k, "big");
    let uids: Vec<u32> = mb.snapshot().await.unwrap().messages().iter().map(|m| m.uid).collect();
    assert_eq!(uids.len(), 10_000);
    assert_eq!(uids, (1..=10_000).collect::<Vec<u32>>(), "dense UIDs in order");

    // STORE \Seen on all 10,000: one entry.
    svc[0]
        .submit(&k, "big", vec![(99_999, Op::Store { uids: uids.clone(), mode: FlagMode::Add, flags: vec!["\\Seen".into()], unchanged_since: None })])
        .await
        .unwrap();
    assert_eq!(entries(store).await, n_entries + 1);
    let v = mb.snapshot().await.unwrap();
    assert!(v.messages().iter().all(|m| v.flag_names(m.flags) == vec!["\\Seen"]));
    cluster.shutdown().await;
}

fn k_user() -> UserId {
    UserId([9; 32])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoints_trim_the_log_and_cold_opens_read_a_short_tail() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = LocalCluster::start(dir.path(), 1).await.unwrap();
    let svc = services(&cluster);
    let k = keys();
    // One entry per append (no concurrency): 600 entries, checkpoints
    // every 256 (at 256 and 512), entries up to the first one trimmed.
    for i in 1..=600u64 {
        svc[0].submit(&k, "ck", vec![append(i)]).await.unwrap();
    }
    let store = cluster.nodes[0].store();
    let count = |prefix: &'static str| {
        let store = store.clone();
        async move {
            store
                .range(&k_user(), "log/ck", &Range { prefix: Some(prefix.into()), ..Default::default() })
                .await
                .unwrap()
                .len()
        }
    };
    let entries = count("e/").await;
    assert!(entries <= 600 - 256, "{entries} entries left: the log was not trimmed");
    assert!(count("c/").await >= 1, "a checkpoint record exists");
    let warm = svc[0].mailbox(&k, "ck").snapshot().await.unwrap();
    // A node that never opened the mailbox starts from the checkpoint.
    svc[0].close(&k.user, "ck");
    let cold = svc[0].mailbox(&k, "ck");
    cold.refresh().await.unwrap();
    assert_eq!(cold.snapshot().await.unwrap(), warm);
    let out = svc[0].submit(&k, "ck", vec![append(601)]).await.unwrap();
    assert_eq!(out[0].uid, Some(601), "numbering continues after a cold open");
    cluster.shutdown().await;
}

struct NoPeers;

#[async_trait::async_trait]
impl estafette::mail::Peers for NoPeers {
    async fn forward(&self, _: u8, _: &str, _: Vec<(u64, Op)>) -> Result<estafette::mail::Sequenced, estafette::mail::MailError> {
        Err(estafette::mail::MailError::Unavailable("no peers here".into()))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchers_learn_of_changes_even_without_a_push() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = LocalCluster::start(dir.path(), 2).await.unwrap();
    let svc = services(&cluster);
    let k = keys();
    let mut changes = svc[1].watch(&k, "quiet");
    // A writer that pushes nothing: a bare engine on node 0.
    let cfg = estafette::mail::EngineConfig {
        node: 0,
        timeout: Duration::from_secs(10),
        forward_attempts: 1,
        uidvalidity: 7,
        checkpoint_every: 0,
        mutation: None,
    };
    let bare = estafette::mail::Mailbox::new(
        "quiet",
        cfg,
        Arc::new(estafette::mail::StoreLog::new(cluster.nodes[0].store(), k.clone())),
        Arc::new(NoPeers),
    );
    bare.submit(vec![append(1)]).await.unwrap();
    let t = Instant::now();
    tokio::time::timeout(Duration::from_secs(30), changes.changed())
        .await
        .expect("the long-poll noticed the new entry")
        .unwrap();
    let mb = svc[1].mailbox(&k, "quiet");
    mb.refresh().await.unwrap();
    assert_eq!(mb.snapshot().await.unwrap().len(), 1);
    println!("woken after {:?}", t.elapsed());
    // Closing the services ends their long-polls, so the nodes stop at once.
    drop((changes, mb, svc));
    let t = Instant::now();
    cluster.shutdown().await;
    println!("shutdown took {:?}", t.elapsed());
}
