//! Accounts and encryption at rest against a real embedded Garage node:
//! login, wrong passwords, password change, key rotation, offline sealing,
//! isolation between users, the key cache, throttling, deletion, and that
//! no plaintext reaches Garage's directories.

mod common;

use std::net::IpAddr;

use bytes::Bytes;
use estafette::accounts::{keys, Accounts, AccountsError, UserKeys};
use estafette::crypto::{BlobDecryptor, BlobEncryptor, KdfParams};
use estafette::storage::local::LocalCluster;

const IP: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 1));

struct Fixture {
    accounts: Accounts,
    cluster: LocalCluster,
    dir: tempfile::TempDir,
}

async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let cluster = LocalCluster::start(&dir.path().join("cluster"), 1).await.unwrap();
    let secret = cluster.configs[0].rpc_secret().unwrap();
    // The real KDF with cheap parameters: same code path, fast tests.
    let accounts = Accounts::open(cluster.nodes[0].store(), Some(cluster.nodes[0].peer_rpc()), &secret, "node-1", KdfParams::insecure_for_tests()).await.unwrap();
    accounts.add_user("alice", "hunter2", &["alice@example.test".into()], Some("region-1".into())).await.unwrap();
    accounts.add_user("bob", "correct horse", &["bob@example.test".into()], None).await.unwrap();
    Fixture { accounts, cluster, dir }
}

/// Writes an encrypted item and a blob (its key kept in an item), the way
/// the mail layer stores messages.
async fn store_mail(a: &Accounts, keys: &UserKeys, id: &str, subject: &str, body: &[u8]) {
    let store = a.store();
    let blob_key = UserKeys::new_blob_key();
    let ctx = format!("msg/{id}");
    let sealed = BlobEncryptor::seal_all(&blob_key, ctx.as_bytes(), body);
    store.put_blob_bytes(&keys.user, &ctx, Bytes::from(sealed)).await.unwrap();
    let mut meta = subject.as_bytes().to_vec();
    meta.push(0);
    meta.extend_from_slice(&serde_json::to_vec(&blob_key_bytes(&blob_key)).unwrap());
    store.insert(&keys.user, "meta", id, keys.seal_item("meta", id, &meta), None).await.unwrap();
}

fn blob_key_bytes(k: &estafette::crypto::MasterKey) -> Vec<u8> {
    k.to_bytes().to_vec()
}

async fn read_mail(a: &Accounts, keys: &UserKeys, id: &str) -> (String, Vec<u8>) {
    let store = a.store();
    let item = store.get(&keys.user, "meta", id).await.unwrap().unwrap();
    let meta = keys.open_item("meta", id, &item.values[0]).unwrap();
    let split = meta.iter().position(|b| *b == 0).unwrap();
    let subject = String::from_utf8(meta[..split].to_vec()).unwrap();
    let key_bytes: Vec<u8> = serde_json::from_slice(&meta[split + 1..]).unwrap();
    let blob_key = estafette::crypto::MasterKey::from_bytes(key_bytes.try_into().unwrap());
    let sealed = store.get_blob_bytes(&keys.user, &format!("msg/{id}")).await.unwrap().unwrap();
    let body = BlobDecryptor::open_all(&blob_key, format!("msg/{id}").as_bytes(), &sealed).unwrap();
    (subject, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_and_unknown_user_are_rejected() {
    let f = fixture().await;
    let s = f.accounts.login("alice", "hunter2", IP).await.expect("right password");
    assert_eq!(s.login(), "alice");
    drop(s);
    assert!(matches!(f.accounts.login("alice", "hunter3", IP).await, Err(AccountsError::AuthFailed)));
    assert!(matches!(f.accounts.login("mallory", "hunter2", IP).await, Err(AccountsError::AuthFailed)));
    assert!(matches!(f.accounts.login("bob", "hunter2", IP).await, Err(AccountsError::AuthFailed)), "alice's password is not bob's");
    // Adding twice, or stealing an address, is refused.
    assert!(matches!(f.accounts.add_user("alice", "whatever1", &[], None).await, Err(AccountsError::Exists(_))));
    assert!(matches!(
        f.accounts.add_user("carol", "whatever1", &["ALICE@example.test".into()], None).await,
        Err(AccountsError::AddressTaken { .. })
    ));
    f.cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_change_keeps_data_and_retires_the_old_password() {
    let f = fixture().await;
    let s = f.accounts.login("alice", "hunter2", IP).await.unwrap();
    store_mail(&f.accounts, s.keys(), "1", "before the change", b"body one").await;
    drop(s);
    assert!(matches!(f.accounts.change_password("alice", "wrong", "new-secret", false).await, Err(AccountsError::AuthFailed)));
    f.accounts.change_password("alice", "hunter2", "new-secret", false).await.unwrap();
    assert!(f.accounts.login("alice", "hunter2", IP).await.is_err(), "old password no longer works");
    let s = f.accounts.login("alice", "new-secret", IP).await.unwrap();
    assert_eq!(read_mail(&f.accounts, s.keys(), "1").await, ("before the change".into(), b"body one".to_vec()));
    f.cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_reencrypts_items_and_keeps_everything_readable() {
    let f = fixture().await;
    let s = f.accounts.login("alice", "hunter2", IP).await.unwrap();
    for i in 0..30 {
        store_mail(&f.accounts, s.keys(), &format!("{i:03}"), &format!("subject {i}"), format!("body {i}").as_bytes()).await;
    }
    let uid = s.keys().user;
    let before = f.accounts.store().get(&uid, "meta", "007").await.unwrap().unwrap().values[0].clone();
    let old_keys = s;
    f.accounts.change_password("alice", "hunter2", "rotated-pw", true).await.unwrap();

    let after = f.accounts.store().get(&uid, "meta", "007").await.unwrap().unwrap().values[0].clone();
    assert_ne!(before, after, "the item was re-encrypted");
    assert!(old_keys.keys().open_item("meta", "007", &after).is_err(), "the old master key no longer opens it");
    // A session elsewhere still holding the old key writes after the
    // rotation: what it writes stays readable (the old key is kept as
    // `previous` until the next rotation, which moves such stragglers).
    let late = old_keys.keys().seal_item("meta", "late", b"written with the old key");
    f.accounts.store().insert(&uid, "meta", "late", late, None).await.unwrap();
    drop(old_keys);

    let s = f.accounts.login("alice", "rotated-pw", IP).await.unwrap();
    for i in [0, 7, 29] {
        let (subject, body) = read_mail(&f.accounts, s.keys(), &format!("{i:03}")).await;
        assert_eq!(subject, format!("subject {i}"));
        assert_eq!(body, format!("body {i}").into_bytes());
    }
    let late = f.accounts.store().get(&uid, "meta", "late").await.unwrap().unwrap().values[0].clone();
    assert_eq!(s.keys().open_item("meta", "late", &late).unwrap(), b"written with the old key");
    // The delivery key does not change with the master key.
    assert_eq!(keys::public_key(f.accounts.store(), &uid).await.unwrap().unwrap(), s.keys().public());
    drop(s);
    // A second rotation moves the straggler first, then drops the oldest key.
    f.accounts.change_password("alice", "rotated-pw", "rotated-twice", true).await.unwrap();
    let s = f.accounts.login("alice", "rotated-twice", IP).await.unwrap();
    let late = f.accounts.store().get(&uid, "meta", "late").await.unwrap().unwrap().values[0].clone();
    assert_eq!(s.keys().open_item("meta", "late", &late).unwrap(), b"written with the old key");
    assert_eq!(read_mail(&f.accounts, s.keys(), "029").await.0, "subject 29");
    f.cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mail_sealed_for_an_offline_user_opens_after_login() {
    let f = fixture().await;
    let uid = f.accounts.directory().user_id("bob").unwrap();
    // No session, no password: only the public key from storage.
    let pk = keys::public_key(f.accounts.store(), &uid).await.unwrap().expect("bob has a public key");
    let sealed = pk.seal(b"Subject: delivered while you slept\r\n\r\nhello");
    f.accounts.store().put_blob_bytes(&uid, "incoming/1", Bytes::from(sealed)).await.unwrap();

    let s = f.accounts.login("bob", "correct horse", IP).await.unwrap();
    let sealed = f.accounts.store().get_blob_bytes(&uid, "incoming/1").await.unwrap().unwrap();
    assert_eq!(s.keys().unseal(&sealed).unwrap(), b"Subject: delivered while you slept\r\n\r\nhello");
    let alice = f.accounts.login("alice", "hunter2", IP).await.unwrap();
    assert!(alice.keys().unseal(&sealed).is_err(), "alice cannot open bob's mail");
    f.cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_cannot_open_each_others_data() {
    let f = fixture().await;
    let alice = f.accounts.login("alice", "hunter2", IP).await.unwrap();
    let bob = f.accounts.login("bob", "correct horse", IP).await.unwrap();
    assert_ne!(alice.keys().user, bob.keys().user, "different key prefixes");
    store_mail(&f.accounts, alice.keys(), "1", "alice's secret", b"alice's body").await;
    // Bob's prefix has nothing there.
    assert!(f.accounts.store().get(&bob.keys().user, "meta", "1").await.unwrap().is_none());
    // Given alice's ciphertext, bob's keys do not open it.
    let sealed = f.accounts.store().get(&alice.keys().user, "meta", "1").await.unwrap().unwrap().values[0].clone();
    assert!(bob.keys().open_item("meta", "1", &sealed).is_err());
    // Nor does alice's key open it under another context (moved ciphertext).
    assert!(alice.keys().open_item("meta", "2", &sealed).is_err());
    f.cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_connections_cost_one_unlock_and_still_check_the_password() {
    let f = fixture().await;
    let before = f.accounts.argon2_runs();
    let sessions: Vec<_> = futures::future::join_all((0..10).map(|_| f.accounts.login("alice", "hunter2", IP)))
        .await
        .into_iter()
        .map(|r| r.unwrap())
        .collect();
    // One cold login (hash check + unlock, 2 runs); the other nine hit the cache.
    assert_eq!(f.accounts.argon2_runs() - before, 2);
    assert_eq!(f.accounts.cached_users(), 1);
    // The cache does not accept a wrong password.
    assert!(f.accounts.login("alice", "nope!!", IP).await.is_err());
    drop(sessions);
    f.cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttle_engages_on_failures_and_releases_on_success() {
    let f = fixture().await;
    let other: IpAddr = "192.0.2.9".parse().unwrap();
    let start = std::time::Instant::now();
    assert!(f.accounts.login("alice", "bad-one", other).await.is_err());
    // The failure itself is answered after the first penalty (2 s).
    assert!(start.elapsed() >= std::time::Duration::from_secs(2));
    assert_eq!(f.accounts.recent_failures(other, "alice"), 1);
    // Meanwhile a correct password from elsewhere is not held back.
    let t = std::time::Instant::now();
    f.accounts.login("alice", "hunter2", IP).await.unwrap();
    assert!(t.elapsed() < std::time::Duration::from_secs(2), "no penalty for a correct password from another IP");
    // A success from the failing IP clears its record for that login.
    f.accounts.login("alice", "hunter2", other).await.unwrap();
    assert_eq!(f.accounts.recent_failures(other, "alice"), 0);
    f.cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_user_removes_their_data() {
    let f = fixture().await;
    let s = f.accounts.login("bob", "correct horse", IP).await.unwrap();
    let uid = s.keys().user;
    for i in 0..5 {
        store_mail(&f.accounts, s.keys(), &i.to_string(), "x", b"y").await;
    }
    drop(s);
    f.accounts.delete_user("bob").await.unwrap();
    assert!(f.accounts.directory().user("bob").is_none());
    assert!(f.accounts.login("bob", "correct horse", IP).await.is_err());
    assert!(f.accounts.store().get_blob(&uid, "msg/1").await.unwrap().is_none());
    let meta = f.accounts.store().get(&uid, "meta", "1").await.unwrap();
    assert!(meta.is_none_or(|i| i.is_deleted()));
    assert!(keys::public_key(f.accounts.store(), &uid).await.unwrap().is_none(), "key record gone");
    // alice is untouched.
    f.accounts.login("alice", "hunter2", IP).await.unwrap();
    f.cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_plaintext_reaches_garage() {
    let f = fixture().await;
    // The directory lives in the same storage: logins, addresses and
    // password hashes must not be readable there either.
    f.accounts.add_user("canarylogin", "canary-password", &["canary-address@canary-domain.test".into()], Some("canary-region".into())).await.unwrap();
    f.accounts.set_quota("canarylogin", Some("7G".into())).await.unwrap();
    let s = f.accounts.login("alice", "hunter2", IP).await.unwrap();
    let subject = "Subject: PLAINTEXT-CANARY-SUBJECT";
    let body = "PLAINTEXT-CANARY-BODY ".repeat(50_000); // ~1 MiB: stored as blocks, not inline
    store_mail(&f.accounts, s.keys(), "1", subject, body.as_bytes()).await;
    store_mail(&f.accounts, s.keys(), "2", subject, b"PLAINTEXT-CANARY-BODY short").await;
    let mbox = "PLAINTEXT-CANARY-MAILBOX";
    f.accounts.store().insert(&s.keys().user, "mailboxes", "list", s.keys().seal_item("mailboxes", "list", mbox.as_bytes()), None).await.unwrap();
    let pk = keys::public_key(f.accounts.store(), &s.keys().user).await.unwrap().unwrap();
    f.accounts
        .store()
        .put_blob_bytes(&s.keys().user, "incoming/1", Bytes::from(pk.seal(b"From: PLAINTEXT-CANARY-ADDRESS@example.test")))
        .await
        .unwrap();
    // Flush what the node holds by stopping it, then look at every byte it wrote.
    f.cluster.shutdown().await;
    let garage_dir = f.dir.path().join("cluster");
    for needle in ["PLAINTEXT-CANARY", "alice@example.test", "alice", "hunter2", "canarylogin", "canary-address", "canary-domain", "canary-region", "$argon2"] {
        let hits = common::grep_dir(&garage_dir, needle.as_bytes());
        assert!(hits.is_empty(), "`{needle}` found in {hits:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_users_file_is_imported_once_with_its_ids_and_mail() {
    use estafette::accounts::{ClusterDirectory, DirectoryKeys, UsersFile};
    use estafette::crypto::KeyBundle;
    let dir = tempfile::tempdir().unwrap();
    let cluster = LocalCluster::start(&dir.path().join("cluster"), 1).await.unwrap();
    let store = cluster.nodes[0].store();
    let secret = cluster.configs[0].rpc_secret().unwrap();
    // What a node before the replicated directory left behind: a users file
    // (salt, hash) and, in storage, keys and mail under the salted id.
    let kdf = KdfParams::insecure_for_tests();
    let salt = [7u8; 32];
    let old_id = estafette::accounts::directory::user_id(&salt, "olduser");
    let bundle = KeyBundle::generate();
    keys::save(&store, &old_id, &bundle.lock(b"old-password", kdf).unwrap(), None).await.unwrap();
    let path = dir.path().join("users.toml");
    std::fs::write(
        &path,
        format!(
            "salt = \"{}\"\n[[user]]\nlogin = \"olduser\"\npassword = \"{}\"\naddresses = [\"old@example.test\"]\nquota = \"3G\"\n",
            hex::encode(salt),
            kdf.hash_password(b"old-password").unwrap()
        ),
    )
    .unwrap();
    let file = UsersFile::read(&path).unwrap();
    let directory = ClusterDirectory::new(store.clone(), DirectoryKeys::from_secret(&secret), "node-1");
    directory.load().await.unwrap();
    assert_eq!(directory.import(&file).await.unwrap().map(|(n, _)| n), Some(1));

    let accounts = Accounts::open(store.clone(), None, &secret, "node-1", kdf).await.unwrap();
    let user = accounts.directory().user("olduser").expect("imported");
    assert_eq!(user.id, old_id, "the user id the old salt gave is kept");
    assert_eq!(user.quota.as_deref(), Some("3G"));
    let s = accounts.login("olduser", "old-password", IP).await.unwrap();
    assert_eq!(s.keys().user, old_id);
    store_mail(&accounts, s.keys(), "1", "from before", b"old body").await;
    assert_eq!(read_mail(&accounts, s.keys(), "1").await, ("from before".into(), b"old body".to_vec()));
    drop(s);

    // Imported once: a user deleted afterwards does not come back when a
    // node starts again with the same file.
    accounts.delete_user("olduser").await.unwrap();
    assert_eq!(directory.import(&file).await.unwrap(), None, "the file is no longer the source of truth");
    let fresh = Accounts::open(store.clone(), None, &secret, "node-1", kdf).await.unwrap();
    assert!(fresh.directory().user("olduser").is_none());
    cluster.shutdown().await;
}
