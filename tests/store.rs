//! The Store API against a real embedded Garage node (single node, in this
//! process, in a temp dir): every call, siblings, long-polls waking on
//! writes, blob sizes across the inline and block boundaries, user scoping.

use std::time::{Duration, Instant};

use bytes::Bytes;
use estafette::storage::local::LocalCluster;
use estafette::storage::{ItemWrite, Range, Store, UserId};

const ALICE: UserId = UserId([1; 32]);
const BOB: UserId = UserId([2; 32]);

async fn node() -> (LocalCluster, Store, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let cluster = LocalCluster::start(dir.path(), 1).await.expect("node starts");
    let store = cluster.nodes[0].store();
    (cluster, store, dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn items_insert_get_overwrite_delete() {
    let (cluster, s, _dir) = node().await;
    assert!(s.get(&ALICE, "p", "a").await.unwrap().is_none(), "never written");

    s.insert(&ALICE, "p", "a", b"one".to_vec(), None).await.unwrap();
    let it = s.get(&ALICE, "p", "a").await.unwrap().unwrap();
    assert_eq!(it.values, vec![b"one".to_vec()]);

    // With the token of a read, a write replaces what was read.
    s.insert(&ALICE, "p", "a", b"two".to_vec(), Some(&it.token)).await.unwrap();
    let it = s.get(&ALICE, "p", "a").await.unwrap().unwrap();
    assert_eq!(it.values, vec![b"two".to_vec()]);

    s.delete(&ALICE, "p", "a", &it.token).await.unwrap();
    let it = s.get(&ALICE, "p", "a").await.unwrap().unwrap();
    assert!(it.is_deleted(), "deleted item has no values: {:?}", it.values);
    assert!(s.range(&ALICE, "p", &Range::default()).await.unwrap().is_empty(), "range skips deleted items");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_become_siblings_and_merge() {
    let (cluster, s, _dir) = node().await;
    s.insert(&ALICE, "p", "k", b"base".to_vec(), None).await.unwrap();
    let base = s.get(&ALICE, "p", "k").await.unwrap().unwrap();
    // Two writers that both read `base` and write without seeing each other.
    let (a, b) = tokio::join!(
        s.insert(&ALICE, "p", "k", b"left".to_vec(), Some(&base.token)),
        s.insert(&ALICE, "p", "k", b"right".to_vec(), Some(&base.token)),
    );
    a.unwrap();
    b.unwrap();
    let it = s.get(&ALICE, "p", "k").await.unwrap().unwrap();
    let mut vals = it.values.clone();
    vals.sort();
    assert_eq!(vals, vec![b"left".to_vec(), b"right".to_vec()], "both concurrent values kept");
    // A write with the token covering both resolves the conflict.
    s.insert(&ALICE, "p", "k", b"merged".to_vec(), Some(&it.token)).await.unwrap();
    assert_eq!(s.get(&ALICE, "p", "k").await.unwrap().unwrap().values, vec![b"merged".to_vec()]);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_and_range_with_prefix_bounds_limit_and_paging() {
    let (cluster, s, _dir) = node().await;
    // 2500 items: more than one page (1000) of Garage range reads.
    let mut writes = vec![];
    for i in 0..2500 {
        writes.push(ItemWrite {
            partition: "log".into(),
            sort_key: format!("m/{i:05}"),
            value: Some(i.to_string().into_bytes()),
            token: None,
        });
    }
    writes.push(ItemWrite { partition: "log".into(), sort_key: "a-before".into(), value: Some(b"x".to_vec()), token: None });
    writes.push(ItemWrite { partition: "log".into(), sort_key: "z-after".into(), value: Some(b"x".to_vec()), token: None });
    for chunk in writes.chunks(500) {
        s.insert_batch(&ALICE, chunk.to_vec()).await.unwrap();
    }

    let all = s.range(&ALICE, "log", &Range::default()).await.unwrap();
    assert_eq!(all.len(), 2502);
    assert!(all.windows(2).all(|w| w[0].sort_key < w[1].sort_key), "sorted");

    let m = s.range(&ALICE, "log", &Range { prefix: Some("m/".into()), ..Default::default() }).await.unwrap();
    assert_eq!(m.len(), 2500);
    assert_eq!(m[1234].values, vec![b"1234".to_vec()]);

    let window = Range { start: Some("m/00100".into()), end: Some("m/00200".into()), ..Default::default() };
    let w = s.range(&ALICE, "log", &window).await.unwrap();
    assert_eq!(w.len(), 100);
    assert_eq!(w.first().unwrap().sort_key, "m/00100");
    assert_eq!(w.last().unwrap().sort_key, "m/00199");

    let limited = s
        .range(&ALICE, "log", &Range { prefix: Some("m/".into()), start: Some("m/01990".into()), limit: Some(25), ..Default::default() })
        .await
        .unwrap();
    assert_eq!(limited.len(), 25);
    assert_eq!(limited[0].sort_key, "m/01990");

    // A batch can delete too.
    let victim = s.get(&ALICE, "log", "z-after").await.unwrap().unwrap();
    s.insert_batch(&ALICE, vec![ItemWrite { partition: "log".into(), sort_key: "z-after".into(), value: None, token: Some(victim.token) }])
        .await
        .unwrap();
    assert_eq!(s.range(&ALICE, "log", &Range::default()).await.unwrap().len(), 2501);

    let bad = Range { prefix: Some("m/".into()), start: Some("a".into()), ..Default::default() };
    assert!(s.range(&ALICE, "log", &bad).await.is_err(), "start outside prefix is refused");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poll_item_wakes_on_write() {
    let (cluster, s, _dir) = node().await;
    s.insert(&ALICE, "p", "watched", b"v1".to_vec(), None).await.unwrap();
    let seen = s.get(&ALICE, "p", "watched").await.unwrap().unwrap();

    // Nothing changes: the poll times out with None.
    let t = Instant::now();
    let none = s.poll_item(&ALICE, "p", "watched", Some(&seen.token), Duration::from_millis(300)).await.unwrap();
    assert!(none.is_none());
    assert!(t.elapsed() >= Duration::from_millis(250));

    let waiter = {
        let s = s.clone();
        let token = seen.token.clone();
        tokio::spawn(async move { s.poll_item(&ALICE, "p", "watched", Some(&token), Duration::from_secs(30)).await })
    };
    // The poll answers as soon as the item moves past the token, whether
    // the write lands before or after the poll reaches the node.
    let written = Instant::now();
    s.insert(&ALICE, "p", "watched", b"v2".to_vec(), Some(&seen.token)).await.unwrap();
    let woke = waiter.await.unwrap().unwrap().expect("poll returns the new item");
    assert_eq!(woke.values, vec![b"v2".to_vec()]);
    assert!(written.elapsed() < Duration::from_secs(5), "woke on the write, not the timeout");

    // Without a token, a poll on a missing item waits for its creation.
    let creator = {
        let s = s.clone();
        tokio::spawn(async move { s.poll_item(&ALICE, "p", "new", None, Duration::from_secs(30)).await })
    };
    s.insert(&ALICE, "p", "new", b"hello".to_vec(), None).await.unwrap();
    assert_eq!(creator.await.unwrap().unwrap().unwrap().values, vec![b"hello".to_vec()]);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poll_range_returns_snapshot_then_changes() {
    let (cluster, s, _dir) = node().await;
    s.insert(&ALICE, "ev", "0001", b"a".to_vec(), None).await.unwrap();
    s.insert(&ALICE, "ev", "0002", b"b".to_vec(), None).await.unwrap();
    s.insert(&ALICE, "other", "0001", b"elsewhere".to_vec(), None).await.unwrap();

    let (snapshot, marker) = s.poll_range(&ALICE, "ev", None, None, Duration::from_secs(1)).await.unwrap().unwrap();
    assert_eq!(snapshot.iter().map(|i| i.sort_key.as_str()).collect::<Vec<_>>(), vec!["0001", "0002"]);

    let quiet = s.poll_range(&ALICE, "ev", None, Some(&marker), Duration::from_millis(300)).await.unwrap();
    assert!(quiet.is_none(), "no change, timeout");

    let waiter = {
        let (s, marker) = (s.clone(), marker.clone());
        tokio::spawn(async move { s.poll_range(&ALICE, "ev", None, Some(&marker), Duration::from_secs(30)).await })
    };
    s.insert(&ALICE, "ev", "0003", b"c".to_vec(), None).await.unwrap();
    let (changed, marker2) = waiter.await.unwrap().unwrap().expect("woken by the insert");
    assert_eq!(changed.len(), 1);
    assert_eq!(changed[0].sort_key, "0003");
    assert_eq!(changed[0].values, vec![b"c".to_vec()]);
    assert_ne!(marker2, marker);

    // A prefix restricts what wakes the poll.
    let (_, pm) = s.poll_range(&ALICE, "ev", Some("1"), None, Duration::from_secs(1)).await.unwrap().unwrap();
    let waiter = {
        let s = s.clone();
        tokio::spawn(async move { s.poll_range(&ALICE, "ev", Some("1"), Some(&pm), Duration::from_secs(30)).await })
    };
    s.insert(&ALICE, "ev", "0004", b"not under prefix".to_vec(), None).await.unwrap();
    s.insert(&ALICE, "ev", "1000", b"under prefix".to_vec(), None).await.unwrap();
    let (changed, _) = waiter.await.unwrap().unwrap().unwrap();
    assert!(changed.iter().all(|i| i.sort_key.starts_with('1')), "{changed:?}");
    cluster.shutdown().await;
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[1] ^ seed).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blobs_of_every_size_round_trip() {
    let (cluster, s, _dir) = node().await;
    // Around the inline threshold (3072) and the block size (1 MiB).
    for (i, len) in [0usize, 1, 3071, 3072, 100 * 1024, 1 << 20, (1 << 20) + 1, 3 * (1 << 20) + 17].into_iter().enumerate() {
        let body = pattern(len, i as u8);
        let key = format!("msg/{len}");
        let n = s.put_blob_bytes(&ALICE, &key, Bytes::from(body.clone())).await.unwrap();
        assert_eq!(n, len as u64);
        let back = s.get_blob_bytes(&ALICE, &key).await.unwrap().expect("blob exists");
        assert_eq!(back.len(), len);
        assert!(back == body, "blob of {len} bytes differs after the round trip");
    }
    assert!(s.get_blob(&ALICE, "msg/none").await.unwrap().is_none());
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_50_mib_blob_streams_in_odd_chunks() {
    let (cluster, s, _dir) = node().await;
    let len = 50 << 20;
    let body = Bytes::from(pattern(len, 9));
    // Arrives in chunks that never line up with the 1 MiB blocks.
    let chunks: Vec<std::io::Result<Bytes>> = (0..len).step_by(777_777).map(|o| Ok(body.slice(o..(o + 777_777).min(len)))).collect();
    let n = s.put_blob(&ALICE, "big", futures::stream::iter(chunks)).await.unwrap();
    assert_eq!(n, len as u64);

    let reader = s.get_blob(&ALICE, "big").await.unwrap().unwrap();
    assert_eq!(reader.size, len as u64);
    use futures::StreamExt;
    let mut chunks = reader.chunks;
    let mut offset = 0;
    let mut largest = 0;
    while let Some(c) = chunks.next().await {
        let c = c.unwrap();
        assert!(c[..] == body[offset..offset + c.len()], "bytes at {offset} differ");
        offset += c.len();
        largest = largest.max(c.len());
    }
    assert_eq!(offset, len);
    assert!(largest <= 1 << 20, "read in blocks, not as one buffer");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blob_overwrite_and_delete() {
    let (cluster, s, _dir) = node().await;
    s.put_blob_bytes(&ALICE, "k", Bytes::from(pattern(200_000, 1))).await.unwrap();
    s.put_blob_bytes(&ALICE, "k", Bytes::from_static(b"small now")).await.unwrap();
    assert_eq!(s.get_blob_bytes(&ALICE, "k").await.unwrap().unwrap(), b"small now");
    s.delete_blob(&ALICE, "k").await.unwrap();
    assert!(s.get_blob_bytes(&ALICE, "k").await.unwrap().is_none());
    s.delete_blob(&ALICE, "k").await.unwrap(); // deleting nothing is fine
    s.delete_blob(&ALICE, "never").await.unwrap();
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_do_not_see_each_other() {
    let (cluster, s, _dir) = node().await;
    s.insert(&ALICE, "mailboxes", "list", b"alice's".to_vec(), None).await.unwrap();
    s.put_blob_bytes(&ALICE, "msg/1", Bytes::from_static(b"alice's mail")).await.unwrap();
    assert!(s.get(&BOB, "mailboxes", "list").await.unwrap().is_none());
    assert!(s.range(&BOB, "mailboxes", &Range::default()).await.unwrap().is_empty());
    assert!(s.get_blob(&BOB, "msg/1").await.unwrap().is_none());
    s.insert(&BOB, "mailboxes", "list", b"bob's".to_vec(), None).await.unwrap();
    assert_eq!(s.get(&ALICE, "mailboxes", "list").await.unwrap().unwrap().values, vec![b"alice's".to_vec()]);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_token_is_an_error_not_a_panic() {
    let (cluster, s, _dir) = node().await;
    assert!(estafette::storage::CausalityToken::parse("not a token!").is_err());
    s.insert(&ALICE, "p", "k", b"v".to_vec(), None).await.unwrap();
    // A token that parses is still checked by Garage's checksum.
    let forged = estafette::storage::CausalityToken::parse("AAAAAAAAAAE");
    assert!(forged.is_err(), "a token without a valid checksum is refused");
    cluster.shutdown().await;
}
