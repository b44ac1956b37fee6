//! Deterministic simulation of the mailbox engine.
//!
//! One seed drives everything: N nodes (3-5), three of which hold the
//! replicas of the mailbox's log; M IMAP-like clients that hop between
//! nodes, cache UIDNEXT/HIGHESTMODSEQ/flags and resynchronise as CONDSTORE/
//! QRESYNC clients do; message delays (with long stalls), drops, symmetric
//! and asymmetric partitions, node crashes and restarts, and per-node timer
//! skew. The engine under test is the real `estafette::mail::Mailbox`; only
//! its storage (a quorum-replicated register set with read repair, as
//! Garage's K2V provides) and its node-to-node calls are simulated.
//!
//! An oracle checks the six invariants of docs/consistency.md from every
//! client's view after every observation, and convergence plus "nothing
//! acknowledged is lost" after the network heals.
//!
//! `ESTAFETTE_SIM_SEEDS=N` runs N seeds (default 300 in debug builds, 10000
//! in release); `ESTAFETTE_SIM_SEED=S` replays one seed and prints its trace.
//! Run it as `cargo test --release --test simulation`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use estafette::mail::{
    EngineConfig, FlagMode, LogError, LogStorage, MailError, Mailbox, MailboxIndex, Mutation, NodeSlot, Op, OpId,
    Outcome, Peers, Sequenced,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

// ---------------------------------------------------------------- world --

const REPLICAS: usize = 3;

struct World {
    rng: Mutex<StdRng>,
    nodes: usize,
    /// Directed links that are cut (a -> b).
    cut: Mutex<BTreeSet<(usize, usize)>>,
    down: Mutex<Vec<bool>>,
    incarnation: Mutex<Vec<u64>>,
    /// Probability that a message is lost; and of a long stall.
    drop: Mutex<f64>,
    stall: Mutex<f64>,
    /// Replicas (on nodes 0..3): key -> set of sibling values.
    replicas: Vec<Mutex<BTreeMap<String, Vec<Vec<u8>>>>>,
    trace: Mutex<Vec<String>>,
    tracing: bool,
}

impl World {
    fn rand(&self) -> f64 {
        self.rng.lock().unwrap().random::<f64>()
    }
    fn below(&self, n: u64) -> u64 {
        self.rng.lock().unwrap().random_range(0..n.max(1))
    }
    fn delay(&self) -> Duration {
        let stall = *self.stall.lock().unwrap();
        let ms = if self.rand() < stall { 200 + self.below(3000) } else { 1 + self.below(40) };
        Duration::from_millis(ms)
    }
    fn alive(&self, node: usize, incarnation: u64) -> bool {
        !self.down.lock().unwrap()[node] && self.incarnation.lock().unwrap()[node] == incarnation
    }
    /// Whether a message from `a` to `b` gets through right now.
    fn link(&self, a: usize, b: usize) -> bool {
        let down = self.down.lock().unwrap();
        if down[a] || down[b] {
            return false;
        }
        if a == b {
            return true;
        }
        drop(down);
        if self.cut.lock().unwrap().contains(&(a, b)) {
            return false;
        }
        self.rand() >= *self.drop.lock().unwrap()
    }
    fn log(&self, f: impl FnOnce() -> String) {
        if self.tracing {
            let line = f();
            if std::env::var_os("ESTAFETTE_SIM_LIVE").is_some() {
                eprintln!("{line}");
            }
            self.trace.lock().unwrap().push(line);
        }
    }
}

/// The log storage of one node incarnation: quorum writes and (repairing)
/// quorum reads over the three replicas, through the simulated network.
struct SimStorage {
    world: Arc<World>,
    node: usize,
    incarnation: u64,
}

impl SimStorage {
    /// Sends `f` to every replica; returns the answers of those that answered.
    async fn round<T: Send + 'static>(
        &self,
        f: impl Fn(&Mutex<BTreeMap<String, Vec<Vec<u8>>>>) -> T + Send + Sync + 'static + Clone,
        quorum: usize,
    ) -> Result<Vec<T>, LogError> {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        for r in 0..REPLICAS {
            let (w, tx, f) = (self.world.clone(), tx.clone(), f.clone());
            let (node, inc) = (self.node, self.incarnation);
            tokio::spawn(async move {
                tokio::time::sleep(w.delay()).await;
                if !w.alive(node, inc) || !w.link(node, r) {
                    return;
                }
                let answer = f(&w.replicas[r]);
                tokio::time::sleep(w.delay()).await;
                if w.alive(node, inc) && w.link(r, node) {
                    let _ = tx.send(answer);
                }
            });
        }
        drop(tx);
        let mut got = vec![];
        while let Some(a) = rx.recv().await {
            got.push(a);
            if got.len() >= quorum {
                return Ok(got);
            }
        }
        Err(LogError::Unavailable(format!("{} of {quorum} replicas answered", got.len())))
    }
}

/// A deleted record: like Garage's tombstones, it wins every merge, so a
/// replica that missed the delete cannot bring the record back.
const TOMBSTONE: &[u8] = b"\0tombstone";

fn full_key(mailbox: &str, key: &str) -> String {
    format!("{mailbox}\0{key}")
}

#[async_trait]
impl LogStorage for SimStorage {
    async fn put(&self, mailbox: &str, key: &str, value: Vec<u8>) -> Result<(), LogError> {
        let k = full_key(mailbox, key);
        self.round(
            move |rep| {
                let mut m = rep.lock().unwrap();
                let vals = m.entry(k.clone()).or_default();
                if !vals.contains(&value) && !vals.iter().any(|v| v == TOMBSTONE) {
                    vals.push(value.clone());
                }
            },
            2,
        )
        .await
        .map(|_| ())
    }

    async fn read(
        &self,
        mailbox: &str,
        prefix: &str,
        from: &str,
        monotonic: bool,
    ) -> Result<Vec<(String, Vec<Vec<u8>>)>, LogError> {
        let (p, f) = (full_key(mailbox, prefix), full_key(mailbox, from.max(prefix)));
        let answers = self
            .round(
                move |rep| {
                    rep.lock()
                        .unwrap()
                        .range(f.clone()..)
                        .take_while(|(k, _)| k.starts_with(&p))
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect::<BTreeMap<_, _>>()
                },
                2,
            )
            .await?;
        let mut merged: BTreeMap<String, Vec<Vec<u8>>> = BTreeMap::new();
        for a in &answers {
            for (k, vs) in a {
                let e = merged.entry(k.clone()).or_default();
                for v in vs {
                    if !e.contains(v) {
                        e.push(v.clone());
                    }
                }
                if e.iter().any(|v| v == TOMBSTONE) {
                    *e = vec![TOMBSTONE.to_vec()];
                }
            }
        }
        if monotonic {
            let differs: Vec<(String, Vec<Vec<u8>>)> = merged
                .iter()
                .filter(|(k, v)| answers.iter().any(|a| a.get(*k) != Some(*v)))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            if !differs.is_empty() {
                // Read repair: what we return is on a quorum before we return it.
                self.round(
                    move |rep| {
                        let mut m = rep.lock().unwrap();
                        for (k, vs) in &differs {
                            let e = m.entry(k.clone()).or_default();
                            for v in vs {
                                if !e.contains(v) {
                                    e.push(v.clone());
                                }
                            }
                            if e.iter().any(|v| v == TOMBSTONE) {
                                *e = vec![TOMBSTONE.to_vec()];
                            }
                        }
                    },
                    2,
                )
                .await?;
            }
        }
        let skip = mailbox.len() + 1;
        Ok(merged
            .into_iter()
            .filter(|(_, v)| !v.iter().any(|v| v == TOMBSTONE))
            .map(|(k, v)| (k[skip..].to_string(), v))
            .collect())
    }

    async fn delete_range(&self, mailbox: &str, prefix: &str, from: &str, to: &str) -> Result<(), LogError> {
        let (p, f, t) = (full_key(mailbox, prefix), full_key(mailbox, from), full_key(mailbox, to));
        self.round(
            move |rep| {
                for (k, v) in rep.lock().unwrap().iter_mut() {
                    if k.starts_with(&p) && *k >= f && *k < t {
                        *v = vec![TOMBSTONE.to_vec()];
                    }
                }
            },
            2,
        )
        .await
        .map(|_| ())
    }

    async fn put_snapshot(&self, mailbox: &str, name: &str, bytes: Vec<u8>) -> Result<(), LogError> {
        self.put(mailbox, &format!("z/{name}"), bytes).await
    }

    async fn get_snapshot(&self, mailbox: &str, name: &str) -> Result<Option<Vec<u8>>, LogError> {
        let key = format!("z/{name}");
        let recs = self.read(mailbox, &key, &key, true).await?;
        Ok(recs.into_iter().find(|(k, _)| *k == key).and_then(|(_, v)| v.into_iter().next()))
    }

    async fn delete_snapshot(&self, mailbox: &str, name: &str) -> Result<(), LogError> {
        let key = format!("z/{name}");
        let end = format!("z/{name}\u{1}");
        self.delete_range(mailbox, "z/", &key, &end).await
    }
}

type SimMailbox = Mailbox<SimStorage, SimPeers>;

struct Nodes {
    mailboxes: Mutex<Vec<Arc<SimMailbox>>>,
}

impl Nodes {
    fn get(&self, n: usize) -> Arc<SimMailbox> {
        self.mailboxes.lock().unwrap()[n].clone()
    }
}

/// Forwarding to another node's sequencer over the simulated network.
struct SimPeers {
    world: Arc<World>,
    nodes: Arc<Nodes>,
    node: usize,
    incarnation: u64,
}

#[async_trait]
impl Peers for SimPeers {
    async fn forward(&self, node: NodeSlot, _mailbox: &str, ops: Vec<(OpId, Op)>) -> Result<Sequenced, MailError> {
        let target = usize::from(node);
        tokio::time::sleep(self.world.delay()).await;
        if !self.world.alive(self.node, self.incarnation) || !self.world.link(self.node, target) {
            return Err(MailError::Unavailable("unreachable".into()));
        }
        // The remote node handles the request on its own; the caller giving
        // up (a timeout) does not cancel it, as with a real RPC.
        let remote = self.nodes.get(target);
        let result = tokio::spawn(async move { remote.sequence(ops).await })
            .await
            .unwrap_or_else(|_| Err(MailError::Unavailable("remote task failed".into())));
        tokio::time::sleep(self.world.delay()).await;
        if !self.world.alive(self.node, self.incarnation) || !self.world.link(target, self.node) {
            return Err(MailError::Unavailable("answer lost".into()));
        }
        result
    }
}

struct Sim {
    world: Arc<World>,
    nodes: Arc<Nodes>,
    mutation: Option<Mutation>,
    skew: Vec<f64>,
    /// Small intervals, so checkpoints, trimming and reloading happen often.
    checkpoint_every: u64,
}

impl Sim {
    fn mailbox(&self, n: usize) -> Arc<SimMailbox> {
        let inc = self.world.incarnation.lock().unwrap()[n];
        let cfg = EngineConfig {
            node: n as NodeSlot,
            // Per-node timer skew: timeouts run fast or slow. Safety must
            // not depend on it.
            timeout: Duration::from_millis((2000.0 * self.skew[n]) as u64),
            forward_attempts: 2,
            uidvalidity: 1_700_000_000,
            checkpoint_every: self.checkpoint_every,
            mutation: self.mutation,
        };
        let storage = Arc::new(SimStorage { world: self.world.clone(), node: n, incarnation: inc });
        let peers = Arc::new(SimPeers { world: self.world.clone(), nodes: self.nodes.clone(), node: n, incarnation: inc });
        Arc::new(Mailbox::new("mbox", cfg, storage, peers))
    }
}

// --------------------------------------------------------------- oracle --

#[derive(Default)]
struct ClientView {
    selected: bool,
    uidvalidity: u32,
    uidnext: u32,
    hms: u64,
    known: BTreeMap<u32, (u64, u64, u64)>, // uid -> (message, flags, modseq)
    ever_seen: BTreeSet<u32>,
    gone: BTreeSet<u32>,
}

#[derive(Default)]
struct Oracle {
    violations: Vec<String>,
    uidvalidity: Option<u32>,
    uid_to_msg: HashMap<u32, u64>,
    msg_to_uid: HashMap<u64, u32>,
    acked: Vec<(OpId, Op)>,
    clients: Vec<ClientView>,
    observations: u64,
}

impl Oracle {
    fn fail(&mut self, s: String) {
        if self.violations.len() < 20 {
            self.violations.push(s);
        }
    }

    fn bind(&mut self, who: &str, uid: u32, msg: u64) {
        if let Some(m) = self.uid_to_msg.insert(uid, msg) {
            if m != msg {
                self.fail(format!("inv1 ({who}): UID {uid} bound to message {m} and then {msg}"));
            }
        }
        if let Some(u) = self.msg_to_uid.insert(msg, uid) {
            if u != uid {
                self.fail(format!("inv6 ({who}): message {msg} renumbered from UID {u} to {uid}"));
            }
        }
    }

    /// Client `c` selected and got `v`.
    fn observe(&mut self, c: usize, v: &MailboxIndex) {
        self.observations += 1;
        let who = format!("client {c}");
        match self.uidvalidity {
            None => self.uidvalidity = Some(v.uidvalidity),
            Some(u) if u != v.uidvalidity => self.fail(format!("inv5: UIDVALIDITY changed from {u} to {}", v.uidvalidity)),
            _ => {}
        }
        for m in v.messages() {
            self.bind(&who, m.uid, m.id);
        }
        let mut cv = std::mem::take(&mut self.clients[c]);
        if cv.selected {
            if v.highestmodseq < cv.hms {
                self.fail(format!("inv3 ({who}): HIGHESTMODSEQ went from {} back to {}", cv.hms, v.highestmodseq));
            }
            if v.uidnext < cv.uidnext {
                self.fail(format!("inv2 ({who}): UIDNEXT went from {} back to {}", cv.uidnext, v.uidnext));
            }
            for m in v.messages() {
                match cv.known.get(&m.uid) {
                    None => {
                        if cv.gone.contains(&m.uid) {
                            self.fail(format!("inv1 ({who}): expunged UID {} came back", m.uid));
                        }
                        if m.uid < cv.uidnext {
                            self.fail(format!("inv2 ({who}): new message at UID {} below the UIDNEXT {} it saw", m.uid, cv.uidnext));
                        }
                        if m.modseq <= cv.hms {
                            self.fail(format!("inv3 ({who}): new UID {} has MODSEQ {} <= HIGHESTMODSEQ {} it saw", m.uid, m.modseq, cv.hms));
                        }
                    }
                    Some(&(_, flags, modseq)) => {
                        if m.modseq < modseq {
                            self.fail(format!("inv3 ({who}): UID {} MODSEQ went from {modseq} back to {}", m.uid, m.modseq));
                        }
                        if (m.flags != flags || m.modseq != modseq) && m.modseq <= cv.hms {
                            self.fail(format!("inv3 ({who}): UID {} changed with MODSEQ {} <= {}", m.uid, m.modseq, cv.hms));
                        }
                    }
                }
            }
            // Messages it knew that are gone must be reported as vanished
            // since the HIGHESTMODSEQ it had (QRESYNC).
            let vanished: BTreeSet<u32> = v.vanished_since(cv.hms).collect();
            for uid in cv.known.keys() {
                if v.get(*uid).is_none() && !vanished.contains(uid) {
                    self.fail(format!("inv3 ({who}): UID {uid} disappeared without a VANISHED after MODSEQ {}", cv.hms));
                }
            }
        }
        for uid in cv.known.keys() {
            if v.get(*uid).is_none() {
                cv.gone.insert(*uid);
            }
        }
        cv.selected = true;
        cv.uidvalidity = v.uidvalidity;
        cv.uidnext = v.uidnext;
        cv.hms = v.highestmodseq;
        cv.known = v.messages().iter().map(|m| (m.uid, (m.id, m.flags, m.modseq))).collect();
        cv.ever_seen.extend(v.messages().iter().map(|m| m.uid));
        self.clients[c] = cv;
    }

    fn acked(&mut self, c: usize, op_id: OpId, op: Op, outcome: &Outcome) {
        if let (Op::Append { message, .. }, Some(uid)) = (&op, outcome.uid) {
            self.bind(&format!("client {c} APPENDUID"), uid, *message);
        }
        self.acked.push((op_id, op));
    }

    /// After healing: every node shows the same state, every acknowledged
    /// operation is in it, and no client misses a message by UIDNEXT.
    fn check_final(&mut self, views: &[MailboxIndex]) {
        let first = &views[0];
        for (i, v) in views.iter().enumerate().skip(1) {
            if v != first {
                self.fail(format!(
                    "inv4: node {i} differs from node 0 after healing (uidnext {} vs {}, hms {} vs {}, {} vs {} messages)",
                    v.uidnext, first.uidnext, v.highestmodseq, first.highestmodseq, v.len(), first.len()
                ));
            }
        }
        let expunged: BTreeSet<u32> = first.vanished_since(0).collect();
        let acked = std::mem::take(&mut self.acked);
        for (id, op) in &acked {
            if first.outcome_of(*id).is_none() {
                self.fail(format!("inv4: acknowledged op {id} ({op:?}) is not in the log"));
            }
            if let Op::Append { message, .. } = op {
                let present = first.messages().iter().filter(|m| m.id == *message).count();
                let uid = self.msg_to_uid.get(message).copied();
                if present > 1 {
                    self.fail(format!("inv4: message {message} appended once, present {present} times"));
                }
                if present == 0 && !uid.is_some_and(|u| expunged.contains(&u)) {
                    self.fail(format!("inv4: acknowledged message {message} is lost"));
                }
            }
        }
        for m in first.messages() {
            self.bind("final state", m.uid, m.id);
        }
        let clients = std::mem::take(&mut self.clients);
        for (c, cv) in clients.iter().enumerate() {
            for m in first.messages() {
                if m.uid < cv.uidnext && !cv.ever_seen.contains(&m.uid) {
                    self.fail(format!("inv2 (client {c}): UID {} below its UIDNEXT {} was never shown to it", m.uid, cv.uidnext));
                }
            }
        }
        self.clients = clients;
    }
}

// ------------------------------------------------------------------ run --

struct Outcome_ {
    checkpoints: u64,
    violations: Vec<String>,
    trace: Vec<String>,
    acked: usize,
    observations: u64,
    takeovers: u64,
}

fn run_seed(seed: u64, mutation: Option<Mutation>, tracing: bool) -> Outcome_ {
    let rt = tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().unwrap();
    rt.block_on(simulate(seed, mutation, tracing))
}

async fn simulate(seed: u64, mutation: Option<Mutation>, tracing: bool) -> Outcome_ {
    let mut rng = StdRng::seed_from_u64(seed);
    let n_nodes = rng.random_range(3..=5usize);
    let n_clients = rng.random_range(2..=5usize);
    let steps = rng.random_range(10..=40usize);
    let world = Arc::new(World {
        rng: Mutex::new(StdRng::seed_from_u64(seed ^ 0x5eed)),
        nodes: n_nodes,
        cut: Mutex::new(BTreeSet::new()),
        down: Mutex::new(vec![false; n_nodes]),
        incarnation: Mutex::new(vec![0; n_nodes]),
        drop: Mutex::new(if rng.random_bool(0.5) { rng.random_range(0.0..0.1) } else { 0.0 }),
        stall: Mutex::new(rng.random_range(0.0..0.05)),
        replicas: (0..REPLICAS).map(|_| Mutex::new(BTreeMap::new())).collect(),
        trace: Mutex::new(vec![]),
        tracing,
    });
    let skew: Vec<f64> = (0..n_nodes).map(|_| rng.random_range(0.5..2.0)).collect();
    let nodes = Arc::new(Nodes { mailboxes: Mutex::new(vec![]) });
    let checkpoint_every = [0, 2, 3, 5][rng.random_range(0..4usize)];
    let sim = Arc::new(Sim { world: world.clone(), nodes: nodes.clone(), mutation, skew, checkpoint_every });
    for n in 0..n_nodes {
        let mb = sim.mailbox(n);
        nodes.mailboxes.lock().unwrap().push(mb);
    }
    let oracle = Arc::new(Mutex::new(Oracle { clients: (0..n_clients).map(|_| ClientView::default()).collect(), ..Default::default() }));
    world.log(|| format!("seed {seed}: {n_nodes} nodes, {n_clients} clients, {steps} steps, checkpoint every {checkpoint_every}, skew {:?}", sim.skew));

    // Chaos: faults at random times while the clients run.
    let chaos = {
        let (sim, world) = (sim.clone(), world.clone());
        let faults = rng.random_range(0..=12u32);
        tokio::spawn(async move {
            for _ in 0..faults {
                tokio::time::sleep(Duration::from_millis(50 + world.below(2000))).await;
                let n = world.below(world.nodes as u64) as usize;
                let m = (n + 1 + world.below(world.nodes as u64 - 1) as usize) % world.nodes;
                match world.below(7) {
                    0 => {
                        world.log(|| format!("partition: node {n} cut off"));
                        let mut cut = world.cut.lock().unwrap();
                        for o in 0..world.nodes {
                            if o != n {
                                cut.insert((n, o));
                                cut.insert((o, n));
                            }
                        }
                    }
                    1 => {
                        world.log(|| format!("asymmetric: link {n} -> {m} cut"));
                        world.cut.lock().unwrap().insert((n, m));
                    }
                    2 => {
                        world.log(|| format!("link {n} <-> {m} cut"));
                        world.cut.lock().unwrap().insert((n, m));
                        world.cut.lock().unwrap().insert((m, n));
                    }
                    3 => {
                        world.log(|| format!("crash: node {n}"));
                        world.down.lock().unwrap()[n] = true;
                        world.incarnation.lock().unwrap()[n] += 1;
                    }
                    4 => {
                        let was_down = std::mem::replace(&mut world.down.lock().unwrap()[n], false);
                        if was_down {
                            world.log(|| format!("restart: node {n}"));
                            let mb = sim.mailbox(n);
                            sim.nodes.mailboxes.lock().unwrap()[n] = mb;
                        }
                    }
                    5 => {
                        world.log(|| "heal links".into());
                        world.cut.lock().unwrap().clear();
                    }
                    _ => {
                        let s = world.rand() * 0.2;
                        world.log(|| format!("stall probability {s:.2}"));
                        *world.stall.lock().unwrap() = s;
                    }
                }
            }
        })
    };

    let mut clients = vec![];
    for c in 0..n_clients {
        let (world, nodes, oracle) = (world.clone(), nodes.clone(), oracle.clone());
        let hop = rng.random_range(0.1..0.9);
        clients.push(tokio::spawn(async move {
            let mut node = c % world.nodes;
            for step in 0..steps {
                tokio::time::sleep(Duration::from_millis(1 + world.below(300))).await;
                if world.rand() < hop {
                    node = world.below(world.nodes as u64) as usize;
                }
                if world.down.lock().unwrap()[node] {
                    continue; // connection refused
                }
                let inc = world.incarnation.lock().unwrap()[node];
                let mb = nodes.get(node);
                // SELECT: the node catches up with the log before answering.
                if mb.refresh().await.is_err() || !world.alive(node, inc) {
                    continue;
                }
                if let Some(v) = mb.snapshot().await {
                    let pos = if world.tracing { format!("{:?}", mb.position().await) } else { String::new() };
                    world.log(|| format!("client {c} @node {node}: uidnext {} hms {} n {} at {pos}", v.uidnext, v.highestmodseq, v.len()));
                    if mb.rebuilds() > 0 {
                        oracle.lock().unwrap().fail(format!("node {node} rebuilt its view: the chain forked"));
                    }
                    oracle.lock().unwrap().observe(c, &v);
                }
                let known: Vec<u32> = oracle.lock().unwrap().clients[c].known.keys().copied().collect();
                let op_id: OpId = ((c as u64) << 32) | step as u64;
                let pick = |w: &World| known[w.below(known.len() as u64) as usize];
                let op = match world.below(10) {
                    0..=4 => Op::Append { message: op_id ^ 0xabcd_0000_0000_0000, flags: vec![] },
                    5..=7 if !known.is_empty() => Op::Store {
                        uids: (0..1 + world.below(3)).map(|_| pick(&world)).collect(),
                        mode: [FlagMode::Add, FlagMode::Remove, FlagMode::Replace][world.below(3) as usize],
                        flags: vec![["\\Seen", "\\Flagged", "$Label1"][world.below(3) as usize].to_string()],
                        unchanged_since: None,
                    },
                    8 if !known.is_empty() => Op::Expunge { uids: vec![pick(&world)] },
                    _ => continue,
                };
                world.log(|| format!("client {c} @node {node}: submit {op_id} {op:?}"));
                let r = mb.submit(vec![(op_id, op.clone())]).await;
                // Acknowledged only if the client's connection survived.
                if let Ok(outcomes) = r {
                    if world.alive(node, inc) {
                        world.log(|| format!("client {c}: ack {op_id} {:?}", outcomes[0]));
                        oracle.lock().unwrap().acked(c, op_id, op, &outcomes[0]);
                    }
                } else {
                    world.log(|| format!("client {c}: op {op_id} failed: {}", r.unwrap_err()));
                }
            }
        }));
    }
    for c in clients {
        let _ = c.await;
    }
    let _ = chaos.await;

    // Heal: every node up, every link back, no loss, no stalls.
    world.log(|| "heal everything".into());
    world.cut.lock().unwrap().clear();
    *world.drop.lock().unwrap() = 0.0;
    *world.stall.lock().unwrap() = 0.0;
    for n in 0..n_nodes {
        if std::mem::replace(&mut world.down.lock().unwrap()[n], false) {
            let mb = sim.mailbox(n);
            nodes.mailboxes.lock().unwrap()[n] = mb;
        }
    }
    // One more operation settles any takeover left half done.
    let mut settled = false;
    for attempt in 0..20u64 {
        let mb = nodes.get((attempt as usize) % n_nodes);
        match mb.submit(vec![(u64::MAX - attempt, Op::Expunge { uids: vec![] })]).await {
            Ok(_) => {
                settled = true;
                break;
            }
            Err(e) => world.log(|| format!("settling op failed: {e}")),
        }
    }
    // Requests still in flight (a forwarded batch whose caller gave up)
    // finish meanwhile; converged means every node shows the same state.
    let mut views = vec![];
    for _round in 0..10 {
        tokio::time::sleep(Duration::from_secs(10)).await;
        views.clear();
        for n in 0..n_nodes {
            let mb = nodes.get(n);
            // A takeover may still be settling: a client would retry SELECT.
            let mut r = mb.refresh().await;
            for _ in 0..50 {
                if r.is_ok() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
                r = mb.refresh().await;
            }
            world.log(|| format!("final refresh node {n}: {r:?}"));
            views.push(mb.snapshot().await.unwrap_or_else(|| MailboxIndex::new(0)));
        }
        if views.iter().all(|v| *v == views[0]) {
            break;
        }
    }
    let mut o = oracle.lock().unwrap();
    let acked_total = o.acked.len();
    if !settled {
        o.fail("liveness: no operation succeeded after healing".into());
    }
    o.check_final(&views);
    let takeovers = world.replicas[0].lock().unwrap().keys().filter(|k| k.contains("\0s/")).count() as u64;
    let checkpoints = world.replicas[0]
        .lock()
        .unwrap()
        .iter()
        .filter(|(k, v)| k.contains("\0c/") && !v.iter().any(|v| v == TOMBSTONE))
        .count() as u64;
    let trace = world.trace.lock().unwrap().clone();
    Outcome_ {
        checkpoints,
        violations: o.violations.clone(),
        trace,
        acked: acked_total,
        observations: o.observations,
        takeovers,
    }
}

fn seeds_wanted() -> u64 {
    std::env::var("ESTAFETTE_SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(if cfg!(debug_assertions) { 300 } else { 10_000 })
}

/// Runs `count` seeds from `first` on two threads; returns the failures.
fn run_many(first: u64, count: u64, mutation: Option<Mutation>, stop_at_first: bool) -> (Vec<(u64, Vec<String>)>, u64, u64, u64) {
    let failures = Arc::new(Mutex::new(vec![]));
    let stats = Arc::new(Mutex::new((0u64, 0u64, 0u64)));
    let next = Arc::new(std::sync::atomic::AtomicU64::new(first));
    let threads: Vec<_> = (0..2)
        .map(|_| {
            let (failures, stats, next) = (failures.clone(), stats.clone(), next.clone());
            std::thread::spawn(move || loop {
                let seed = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if seed >= first + count || (stop_at_first && !failures.lock().unwrap().is_empty()) {
                    return;
                }
                let out = run_seed(seed, mutation, false);
                {
                    let mut s = stats.lock().unwrap();
                    s.0 += out.acked as u64;
                    s.1 += out.takeovers;
                    s.2 += out.checkpoints;
                }
                if !out.violations.is_empty() {
                    failures.lock().unwrap().push((seed, out.violations));
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let f = failures.lock().unwrap().clone();
    let s = *stats.lock().unwrap();
    (f, s.0, s.1, s.2)
}

#[test]
fn invariants_hold_over_many_seeds() {
    if let Some(seed) = std::env::var("ESTAFETTE_SIM_SEED").ok().and_then(|s| s.parse::<u64>().ok()) {
        let out = run_seed(seed, None, true);
        for line in &out.trace {
            println!("{line}");
        }
        assert!(out.violations.is_empty(), "seed {seed}: {:#?}", out.violations);
        return;
    }
    let count = seeds_wanted();
    let started = std::time::Instant::now();
    let (failures, acked, takeovers, checkpoints) = run_many(0, count, None, false);
    println!(
        "simulation: {count} seeds in {:.1}s, {acked} acknowledged ops, {takeovers} epochs started, {checkpoints} checkpoints left, {} failing seeds; renumbered messages: 0 by construction (checked)",
        started.elapsed().as_secs_f64(),
        failures.len()
    );
    assert!(checkpoints > 0, "checkpoints were exercised");
    assert!(failures.is_empty(), "failing seeds (replay with ESTAFETTE_SIM_SEED=S): {:#?}", &failures[..failures.len().min(5)]);
}

#[test]
fn a_seed_replays_identically() {
    // The first seed from 4242 on whose clients observed something (some
    // seeds fail every operation: a crash and a cut in the first steps).
    let (seed, a) = (4242..4262)
        .map(|seed| (seed, run_seed(seed, None, true)))
        .find(|(_, a)| a.observations > 0)
        .expect("a seed with observations");
    let b = run_seed(seed, None, true);
    assert!(a.trace.len() > 10, "the run did something");
    assert_eq!(a.trace, b.trace, "same seed, same run");
}

#[test]
fn the_oracle_catches_broken_engines() {
    // Each deliberate bug must be found within this many seeds.
    let budget = std::env::var("ESTAFETTE_SIM_MUTATION_SEEDS").ok().and_then(|s| s.parse().ok()).unwrap_or(20_000);
    for m in [
        Mutation::SkipAnnouncementCheck,
        Mutation::NoReadRepair,
        Mutation::IgnorePending,
        Mutation::EarlyFence,
        Mutation::CheckpointsFirst,
    ] {
        let (failures, _, _, _) = run_many(1_000_000, budget, Some(m), true);
        assert!(!failures.is_empty(), "mutation {m:?} went unnoticed over {budget} seeds");
        println!("mutation {m:?}: caught by seed {} ({})", failures[0].0, failures[0].1[0]);
    }
}
