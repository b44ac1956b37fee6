//! A WAN between the regions of `estafette dev --regions N`, emulated in
//! user space (the kernel here has no netem): every node's RPC traffic to
//! another node crosses a proxy that delays it by the link's one-way delay
//! and, on command, holds it (a cut link, in one direction or both).
//!
//! How links are told apart: node `i` listens for RPC on a private address
//! and announces the proxy's `127.0.0.i:<wan port>` as its public address,
//! so every peer dials the proxy; nodes dial from their own `127.0.0.j`
//! (`rpc.bind_outgoing`), so the proxy knows the source of each connection.
//! Garage answers a request on the connection it came in on, so bytes from
//! the dialer are on link j→i and bytes back are on link i→j.
//!
//! A cut holds bytes rather than closing connections: that is what packet
//! loss looks like to TCP, and it is the hard case for the nodes (a peer
//! that is connected but silent). Held bytes are delivered when the link
//! heals, like retransmissions. Clients (IMAP, LMTP) talk to nodes directly:
//! only node-to-node traffic is delayed.
//!
//! This is a test and demo tool: it must never be on the path of a real
//! deployment, and it knows nothing of Garage beyond "TCP between nodes".

pub mod control;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

/// Regions are numbered 1..=MAX; 0 stands for "not a node" (no delay, never cut).
pub const MAX_REGIONS: usize = 9;

/// The state of every link, indexed `[from][to]`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Links {
    delay: [[Duration; MAX_REGIONS + 1]; MAX_REGIONS + 1],
    cut: [[bool; MAX_REGIONS + 1]; MAX_REGIONS + 1],
}

impl Links {
    /// Every link between two of the `n` regions delayed by half of `rtt`.
    pub fn with_rtt(n: u8, rtt: Duration) -> Links {
        let mut l = Links::default();
        l.set_rtt(n, rtt);
        l
    }

    fn set_rtt(&mut self, n: u8, rtt: Duration) {
        for a in 1..=n {
            for b in 1..=n {
                if a != b {
                    self.delay[usize::from(a)][usize::from(b)] = rtt / 2;
                }
            }
        }
    }

    pub fn delay(&self, from: u8, to: u8) -> Duration {
        self.delay[usize::from(from)][usize::from(to)]
    }

    pub fn is_cut(&self, from: u8, to: u8) -> bool {
        self.cut[usize::from(from)][usize::from(to)]
    }

    fn set_cut(&mut self, from: u8, to: u8, cut: bool) {
        self.cut[usize::from(from)][usize::from(to)] = cut;
    }

    fn set_delay(&mut self, from: u8, to: u8, d: Duration) {
        self.delay[usize::from(from)][usize::from(to)] = d;
    }
}

/// One node behind the emulator.
#[derive(Clone, Copy, Debug)]
pub struct Region {
    /// 1-based region number; nodes dial from `127.0.0.<index>`.
    pub index: u8,
    /// Where peers reach it (the proxy listens here).
    pub public: SocketAddr,
    /// Where the node really listens.
    pub private: SocketAddr,
}

/// A running emulator; dropping it stops nothing (its tasks live as long
/// as the runtime), so keep it for the appliance's lifetime.
pub struct Wan {
    n: u8,
    links: watch::Sender<Links>,
}

#[derive(Debug, thiserror::Error)]
pub enum WanError {
    #[error("the WAN emulator cannot listen on {addr}: {source}")]
    Listen { addr: SocketAddr, source: std::io::Error },
    #[error("{0}")]
    Command(String),
}

impl Wan {
    /// Starts one proxy per region.
    pub async fn start(regions: &[Region], rtt: Duration) -> Result<Wan, WanError> {
        let n = u8::try_from(regions.len()).unwrap_or(u8::MAX).min(MAX_REGIONS as u8);
        let (links, _) = watch::channel(Links::with_rtt(n, rtt));
        for r in regions {
            let listener = TcpListener::bind(r.public)
                .await
                .map_err(|source| WanError::Listen { addr: r.public, source })?;
            tokio::spawn(accept_loop(listener, *r, n, links.subscribe()));
        }
        Ok(Wan { n, links })
    }

    /// Applies a parsed command; returns what to tell the operator.
    pub fn apply(&self, cmd: &control::Command) -> Result<String, WanError> {
        use control::Command;
        let check = |a: u8| {
            if a == 0 || a > self.n {
                Err(WanError::Command(format!("no region {a}: regions are 1 to {}", self.n)))
            } else {
                Ok(())
            }
        };
        match cmd {
            Command::Show => {}
            Command::Cut { a, b, both } | Command::Heal { pair: Some((a, b)), both } => {
                check(*a)?;
                check(*b)?;
                if a == b {
                    return Err(WanError::Command("a region has no link to itself".into()));
                }
                let cut = matches!(cmd, Command::Cut { .. });
                self.links.send_modify(|l| {
                    l.set_cut(*a, *b, cut);
                    if *both {
                        l.set_cut(*b, *a, cut);
                    }
                });
            }
            Command::Heal { pair: None, .. } => self.links.send_modify(|l| l.cut = Default::default()),
            Command::Rtt(rtt) => self.links.send_modify(|l| l.set_rtt(self.n, *rtt)),
            Command::Delay { a, b, one_way } => {
                check(*a)?;
                check(*b)?;
                self.links.send_modify(|l| l.set_delay(*a, *b, *one_way));
            }
        }
        Ok(control::describe(&self.links.borrow(), self.n))
    }
}

/// The region a connection comes from, by its source address.
fn region_of(addr: IpAddr, n: u8) -> u8 {
    match addr {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            if o[0] == 127 && o[1] == 0 && o[2] == 0 && (1..=n).contains(&o[3]) {
                o[3]
            } else {
                0
            }
        }
        IpAddr::V6(_) => 0,
    }
}

async fn accept_loop(listener: TcpListener, to: Region, n: u8, links: watch::Receiver<Links>) {
    loop {
        let (client, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                log::warn!("WAN emulator, region {}: accept: {e}", to.index);
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let from = region_of(peer.ip(), n);
        let links = links.clone();
        tokio::spawn(async move {
            // A dead node refuses its private port; the dialer sees its
            // connection close, as it would on a reset.
            let Ok(server) = TcpStream::connect(to.private).await else {
                return;
            };
            let _ = client.set_nodelay(true);
            let _ = server.set_nodelay(true);
            let (cr, cw) = client.into_split();
            let (sr, sw) = server.into_split();
            // Either direction failing ends the connection (both sockets
            // are dropped); an orderly close is passed on and waits for
            // the other direction.
            let up = pump(cr, sw, links.clone(), from, to.index);
            let down = pump(sr, cw, links, to.index, from);
            tokio::pin!(up, down);
            tokio::select! {
                r = &mut up => if r.is_ok() { let _ = down.await; },
                r = &mut down => if r.is_ok() { let _ = up.await; },
            }
        });
    }
}

/// Moves bytes one way across link `from`→`to`: each chunk is due one
/// one-way delay after it was read, and waits while the link is cut.
/// Order is kept; a close travels behind the data it follows.
async fn pump(
    mut rd: OwnedReadHalf,
    mut wr: OwnedWriteHalf,
    links: watch::Receiver<Links>,
    from: u8,
    to: u8,
) -> std::io::Result<()> {
    // Bounded: a cut link stops reading once this many chunks wait, so the
    // sender's socket buffer fills as it would on a real stalled path.
    let (tx, mut rx) = mpsc::channel::<(Instant, Option<Vec<u8>>)>(64);
    let read_links = links.clone();
    let reader = async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let chunk = match rd.read(&mut buf).await {
                Ok(0) => None,
                Ok(k) => Some(buf[..k].to_vec()),
                Err(e) => return Err(e),
            };
            let end = chunk.is_none();
            let due = Instant::now() + read_links.borrow().delay(from, to);
            if tx.send((due, chunk)).await.is_err() || end {
                return Ok(());
            }
        }
    };
    let mut links = links;
    let writer = async move {
        while let Some((due, chunk)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            if links.wait_for(|l| !l.is_cut(from, to)).await.is_err() {
                return Ok(());
            }
            match chunk {
                Some(c) => wr.write_all(&c).await?,
                None => {
                    let _ = wr.shutdown().await;
                    return Ok(());
                }
            }
        }
        Ok(())
    };
    let (r, w) = tokio::join!(reader, writer);
    r.and(w)
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn echo_server() -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = l.accept().await.unwrap();
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        addr
    }

    fn free_addr(ip: [u8; 4]) -> SocketAddr {
        let l = std::net::TcpListener::bind((IpAddr::from(ip), 0)).unwrap();
        l.local_addr().unwrap()
    }

    async fn dial_from(ip: [u8; 4], to: SocketAddr) -> TcpStream {
        let s = tokio::net::TcpSocket::new_v4().unwrap();
        s.bind(SocketAddr::new(IpAddr::from(ip), 0)).unwrap();
        s.connect(to).await.unwrap()
    }

    /// Region 2's node is an echo server behind the emulator; region 1 dials it.
    async fn setup(rtt_ms: u64) -> (Wan, Region) {
        let private = echo_server().await;
        let r2 = Region { index: 2, public: free_addr([127, 0, 0, 2]), private };
        let r1 = Region { index: 1, public: free_addr([127, 0, 0, 1]), private: free_addr([127, 0, 0, 1]) };
        let wan = Wan::start(&[r1, r2], Duration::from_millis(rtt_ms)).await.unwrap();
        (wan, r2)
    }

    async fn round_trip(s: &mut TcpStream, msg: &[u8]) -> Duration {
        let t = std::time::Instant::now();
        s.write_all(msg).await.unwrap();
        let mut got = vec![0u8; msg.len()];
        s.read_exact(&mut got).await.unwrap();
        assert_eq!(got, msg);
        t.elapsed()
    }

    #[tokio::test]
    async fn a_round_trip_costs_the_configured_rtt() {
        let (_wan, r2) = setup(60).await;
        let mut s = dial_from([127, 0, 0, 1], r2.public).await;
        let rtt = round_trip(&mut s, b"ping").await;
        assert!(rtt >= Duration::from_millis(60), "{rtt:?}");
        // Delay, not throughput: a large burst arrives whole and in order.
        let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        round_trip(&mut s, &big).await;
    }

    #[tokio::test]
    async fn a_one_way_cut_holds_bytes_until_healed() {
        let (wan, r2) = setup(0).await;
        let mut s = dial_from([127, 0, 0, 1], r2.public).await;
        round_trip(&mut s, b"before").await;
        wan.apply(&control::parse("cut 2>1").unwrap()).unwrap();
        // 1→2 still flows: the echo server gets it, but its answer is held.
        s.write_all(b"during").await.unwrap();
        let mut buf = [0u8; 6];
        let held = tokio::time::timeout(Duration::from_millis(300), s.read_exact(&mut buf)).await;
        assert!(held.is_err(), "the answer crossed a cut link");
        let shown = wan.apply(&control::parse("heal").unwrap()).unwrap();
        assert!(!shown.contains("2>1"), "{shown}");
        s.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"during");
    }

    #[tokio::test]
    async fn unknown_sources_and_bad_commands() {
        let (wan, _) = setup(0).await;
        assert_eq!(region_of("10.0.0.1".parse().unwrap(), 2), 0);
        assert_eq!(region_of("127.0.0.3".parse().unwrap(), 2), 0);
        assert_eq!(region_of("127.0.0.2".parse().unwrap(), 2), 2);
        let e = wan.apply(&control::parse("cut 1 5").unwrap()).unwrap_err();
        assert!(e.to_string().contains("no region 5"), "{e}");
        assert!(wan.apply(&control::parse("cut 1 1").unwrap()).is_err());
    }
}
