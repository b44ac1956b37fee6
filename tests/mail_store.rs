//! Mailbox lists and messages on a real embedded Garage node: create,
//! rename with children, delete, subscriptions, concurrent creation of one
//! name; messages stored once, parsed, streamed back, copied, sequenced.

mod common;

use std::sync::Arc;

use estafette::accounts::UserKeys;
use estafette::crypto::KeyBundle;
use estafette::mail::mailboxes::{Mailboxes, MailboxesError};
use estafette::mail::message::{copy_message, message_meta, read_body, store_message};
use estafette::mail::{MailService, Op};
use estafette::storage::local::LocalCluster;
use estafette::storage::UserId;
use futures::StreamExt;

fn keys() -> Arc<UserKeys> {
    Arc::new(UserKeys::import(UserId([4; 32]), &KeyBundle::generate().to_bytes()).unwrap())
}

fn names(list: &[estafette::mail::mailboxes::MailboxInfo]) -> Vec<String> {
    list.iter().map(|m| m.name.clone()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mailbox_list_operations() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = LocalCluster::start(&dir.path().join("c"), 1).await.unwrap();
    let k = keys();
    let mb = Mailboxes::new(cluster.nodes[0].store(), k.clone());
    assert_eq!(names(&mb.list().await.unwrap()), vec!["INBOX"], "INBOX always exists");

    mb.create("Archives/2026/Secret-Project-Nightjar", None).await.unwrap();
    mb.create("Sent", Some("\\Sent".into())).await.unwrap();
    assert_eq!(
        names(&mb.list().await.unwrap()),
        vec!["INBOX", "Archives", "Archives/2026", "Archives/2026/Secret-Project-Nightjar", "Sent"]
    );
    assert_eq!(mb.find("Sent").await.unwrap().unwrap().special_use.as_deref(), Some("\\Sent"));
    assert!(matches!(mb.create("Sent", None).await, Err(MailboxesError::Exists(_))));
    assert!(matches!(mb.create("inbox", None).await, Err(MailboxesError::Exists(_))));
    assert!(matches!(mb.create("a//b", None).await, Err(MailboxesError::Invalid(_))));

    // Rename moves the children; ids (and so their logs) stay.
    let id_before = mb.find("Archives/2026").await.unwrap().unwrap().id;
    mb.rename("Archives", "Old").await.unwrap();
    assert_eq!(
        names(&mb.list().await.unwrap()),
        vec!["INBOX", "Old", "Old/2026", "Old/2026/Secret-Project-Nightjar", "Sent"]
    );
    assert_eq!(mb.find("Old/2026").await.unwrap().unwrap().id, id_before);
    assert!(matches!(mb.rename("Nope", "X").await, Err(MailboxesError::NotFound(_))));
    assert!(matches!(mb.rename("Old", "Sent").await, Err(MailboxesError::Exists(_))));

    mb.delete("Sent").await.unwrap();
    assert!(mb.find("Sent").await.unwrap().is_none());
    assert!(mb.delete("INBOX").await.is_err());

    // Subscriptions, also to names that do not exist.
    mb.subscribe("Old").await.unwrap();
    mb.subscribe("Shared/Elsewhere").await.unwrap();
    assert_eq!(mb.subscriptions().await.unwrap(), vec!["Old", "Shared/Elsewhere"]);
    mb.unsubscribe("Old").await.unwrap();
    assert_eq!(mb.subscriptions().await.unwrap(), vec!["Shared/Elsewhere"]);
    assert!(mb.unsubscribe("Old").await.is_err());

    // Mailbox names never reach storage in the clear.
    cluster.shutdown().await;
    let hits = common::grep_dir(&dir.path().join("c"), b"Nightjar");
    assert!(hits.is_empty(), "mailbox name found in {hits:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_are_stored_once_parsed_and_streamed() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = LocalCluster::start(dir.path(), 1).await.unwrap();
    let store = cluster.nodes[0].store();
    let slots = vec![cluster.nodes[0].peer_rpc().local_id()];
    let svc = MailService::new(store.clone(), cluster.nodes[0].peer_rpc().clone(), slots, 0).unwrap();
    let k = keys();

    let attachment: String = (0..300_000).map(|i| format!("{:08x}", i * 2_654_435_761u64 as u64 % 0xffff_ffff)).collect::<Vec<_>>().join("\r\n");
    let raw = format!(
        "From: Carol <carol@example.test>\r\nTo: alice@example.test\r\nSubject: Quarterly figures\r\nDate: Thu, 26 Nov 2026 08:00:00 +0000\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=XYZ\r\n\r\n--XYZ\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\nSee attached.\r\n--XYZ\r\nContent-Type: application/octet-stream; name=figures.bin\r\nContent-Disposition: attachment; filename=figures.bin\r\n\r\n{attachment}\r\n--XYZ--\r\n"
    );
    assert!(raw.len() > 2_500_000, "spans several storage blocks");
    let (id, meta) = store_message(&store, &k, "inbox", raw.as_bytes(), 1_764_144_000).await.unwrap();
    assert_eq!(meta.size, raw.len() as u64);
    assert_eq!(meta.envelope.subject.as_deref(), Some("Quarterly figures"));
    let att = &meta.parts[meta.parts[0].children[1]];
    assert_eq!(att.disposition.as_ref().unwrap().0, "attachment");
    assert_eq!(att.params, vec![("name".to_string(), "figures.bin".to_string())]);

    // Sequenced into INBOX.
    let out = svc.submit(&k, "inbox", vec![(1, Op::Append { message: id, flags: vec!["\\Recent".into()] })]).await.unwrap();
    assert_eq!(out[0].uid, Some(1));
    assert_eq!(message_meta(&store, &k, "inbox", id).await.unwrap().unwrap(), meta);

    // The body streams back, in pieces, identical.
    let mut body = read_body(&store, &k, "inbox", id).await.unwrap().expect("body");
    let mut back = vec![];
    let mut pieces = 0;
    while let Some(chunk) = body.next().await {
        back.extend(chunk.unwrap());
        pieces += 1;
    }
    assert_eq!(back, raw.as_bytes());
    assert!(pieces > 1, "streamed, not one buffer");

    // COPY shares the body: one more metadata item, no second blob.
    let blobs_before = store.list_blobs(&k.user, "").await.unwrap().len();
    assert!(copy_message(&store, &k, "inbox", "archive", id).await.unwrap().is_some());
    assert_eq!(store.list_blobs(&k.user, "").await.unwrap().len(), blobs_before);
    let mut copy = read_body(&store, &k, "archive", id).await.unwrap().unwrap();
    let mut n = 0;
    while let Some(c) = copy.next().await {
        n += c.unwrap().len();
    }
    assert_eq!(n, raw.len());
    assert!(message_meta(&store, &k, "nowhere", id).await.unwrap().is_none());

    // Deleting INBOX's data keeps the body: the archive still refers to it.
    let (other, _) = store_message(&store, &k, "inbox", b"Subject: only here\r\n\r\nbye\r\n", 0).await.unwrap();
    let freed = estafette::mail::cleanup::delete_mailbox_data(&store, &k, "inbox").await.unwrap();
    assert_eq!(freed, 1, "only the body no other mailbox uses");
    assert!(read_body(&store, &k, "archive", id).await.unwrap().is_some());
    assert!(message_meta(&store, &k, "inbox", other).await.unwrap().is_none());
    let freed = estafette::mail::cleanup::delete_mailbox_data(&store, &k, "archive").await.unwrap();
    assert_eq!(freed, 1);
    assert!(store.list_blobs(&k.user, "msg/").await.unwrap().is_empty(), "every body reclaimed");
    drop(svc);
    cluster.shutdown().await;
}
