//! Three nodes in one process (three regions, RF 3): replication across
//! nodes, Estafette's own RPC over Garage's network stack, and the
//! TCP_NODELAY workaround on every RPC connection.

use std::time::{Duration, Instant};

use bytes::Bytes;
use estafette::storage::local::LocalCluster;
use estafette::storage::{PeerMessage, UserId};
use serde::{Deserialize, Serialize};

const U: UserId = UserId([3; 32]);

#[derive(Clone, Serialize, Deserialize)]
struct Shout {
    text: String,
}

impl PeerMessage for Shout {
    type Response = String;
    const PATH: &'static str = "estafette/test/Shout";
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_regions_replicate_and_talk() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = LocalCluster::start(dir.path(), 3).await.expect("three nodes start");
    let (n1, n2, n3) = (&cluster.nodes[0], &cluster.nodes[1], &cluster.nodes[2]);

    // Written through node 1, read through node 3.
    n1.store().insert(&U, "p", "k", b"across".to_vec(), None).await.unwrap();
    let it = n3.store().get(&U, "p", "k").await.unwrap().unwrap();
    assert_eq!(it.values, vec![b"across".to_vec()]);
    let body = Bytes::from(vec![42u8; 2 * 1024 * 1024 + 5]);
    n2.store().put_blob_bytes(&U, "blob", body.clone()).await.unwrap();
    assert!(n1.store().get_blob_bytes(&U, "blob").await.unwrap().unwrap() == body[..]);

    // A long-poll on node 3 wakes when node 1 writes.
    let waiter = {
        let s = n3.store();
        let token = it.token.clone();
        tokio::spawn(async move { s.poll_item(&U, "p", "k", Some(&token), Duration::from_secs(30)).await })
    };
    n1.store().insert(&U, "p", "k", b"changed".to_vec(), Some(&it.token)).await.unwrap();
    assert_eq!(waiter.await.unwrap().unwrap().unwrap().values, vec![b"changed".to_vec()]);

    // Our own message type over Garage's RPC, handled on node 2.
    let ep2 = n2.peer_rpc().register::<Shout, _>(|from, m| {
        Box::pin(async move { Ok(format!("{} from {}", m.text.to_uppercase(), hex::encode(&from[..4]))) })
    }).unwrap();
    assert!(n2.peer_rpc().register::<Shout, _>(|_, _| Box::pin(async { Ok(String::new()) })).is_err(), "one handler per type and node");
    let ep1 = n1.peer_rpc().register::<Shout, _>(|_, _| Box::pin(async { Err("node 1 refuses".to_string()) })).unwrap();
    let n2_id = n2.peer_rpc().local_id();
    let answer = ep1.call(n2_id, Shout { text: "hi".into() }, Duration::from_secs(5)).await.unwrap();
    assert_eq!(answer, format!("HI from {}", hex::encode(&n1.peer_rpc().local_id()[..4])));
    let refused = ep2.call(n1.peer_rpc().local_id(), Shout { text: "x".into() }, Duration::from_secs(5)).await;
    assert!(refused.unwrap_err().to_string().contains("node 1 refuses"));
    assert_eq!(n1.peer_rpc().connected_peers().len(), 2);

    // cluster status: three nodes, three regions, all up, RTTs measured.
    let status = n1.status().await;
    assert_eq!(status.layout_version, 1);
    assert_eq!(status.replication_factor, 3);
    assert_eq!(status.nodes.len(), 3);
    let mut regions: Vec<_> = status.nodes.iter().filter_map(|n| n.region.clone()).collect();
    regions.sort();
    assert_eq!(regions, vec!["region-1", "region-2", "region-3"]);
    assert!(status.nodes.iter().all(|n| n.up));
    assert_eq!(status.nodes.iter().filter(|n| !n.this_node && n.rtt_ms.is_some()).count(), 2);

    // Every RPC connection between the nodes ends up with TCP_NODELAY.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (rpc, with_nodelay) = rpc_sockets(&cluster);
        if rpc > 0 && rpc == with_nodelay {
            break;
        }
        assert!(Instant::now() < deadline, "{with_nodelay} of {rpc} RPC sockets have TCP_NODELAY");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    cluster.shutdown().await;
}

/// Counts this process's TCP connections to or from the cluster's RPC
/// ports, and how many of them have TCP_NODELAY.
fn rpc_sockets(cluster: &LocalCluster) -> (usize, usize) {
    use std::os::fd::BorrowedFd;
    let ports: Vec<u16> = cluster.configs.iter().map(|c| c.rpc.bind.port()).collect();
    let (mut total, mut ok) = (0, 0);
    for e in std::fs::read_dir("/proc/self/fd").unwrap().flatten() {
        let Ok(fd) = e.file_name().to_string_lossy().parse::<i32>() else { continue };
        if !std::fs::read_link(e.path()).map(|t| t.to_string_lossy().starts_with("socket:")).unwrap_or(false) {
            continue;
        }
        let fd = unsafe { BorrowedFd::borrow_raw(fd) };
        let s = socket2::SockRef::from(&fd);
        let (Ok(l), Ok(p)) = (s.local_addr(), s.peer_addr()) else { continue };
        let (Some(l), Some(p)) = (l.as_socket(), p.as_socket()) else { continue };
        if ports.contains(&l.port()) || ports.contains(&p.port()) {
            total += 1;
            if s.tcp_nodelay().unwrap_or(false) {
                ok += 1;
            }
        }
    }
    (total, ok)
}
