//! Closing connections to peers that stopped answering.
//!
//! Garage gives up on a silent peer after four failed pings 15 s apart: for
//! about a minute its connection looks up, and every read or forwarded
//! operation routed there waits for a timeout. Packet loss on a WAN (a
//! partition, one direction of a link gone) is exactly that: the connection
//! is not closed, it goes quiet. So each connected peer is pinged every
//! [`INTERVAL`]; after [`MISSES`] pings in a row went unanswered for
//! [`TIMEOUT`], our outgoing connection to it is closed. Requests to it then
//! fail at once and Garage's quorum calls move on to the next replica (it
//! starts another request when one fails). Garage's peering dials the peer
//! again by itself: while the path is dead the handshake just waits, and
//! the connection is back as soon as the path heals.
//!
//! The other half: Garage waits 30 s (then longer) before dialling a peer
//! it failed to reach again, so a node restarted after a crash would be
//! shunned by its peers for that long, and a second failure in that window
//! would leave them without a quorum. Every [`INTERVAL`], the layout's
//! nodes that are not connected are dialled (one attempt at a time each,
//! bounded by [`TIMEOUT`]).
//!
//! This must not decide anything else (layout, quorum, sequencing): it only
//! closes, sooner, a connection Garage would close itself, and dials,
//! sooner, a peer Garage would dial itself.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

use super::peer::{PeerId, PeerRpc, PingService};

/// How often each peer is pinged.
pub const INTERVAL: Duration = Duration::from_millis(500);
/// How long a ping may take before it counts as missed. Far above any WAN
/// round trip, so that a slow but working link is left alone.
pub const TIMEOUT: Duration = Duration::from_secs(2);
/// Missed pings in a row before the connection is closed: with the values
/// above a silent peer is cut off about 3 s after it went quiet.
pub const MISSES: u32 = 3;

/// Runs until `stop` turns true. `layout_peers`: the other nodes of the
/// configured layout and their RPC addresses.
pub fn spawn(rpc: PeerRpc, ping: Arc<PingService>, layout_peers: Vec<(PeerId, SocketAddr)>, mut stop: watch::Receiver<bool>) {
    let missed: Arc<Mutex<HashMap<PeerId, u32>>> = Default::default();
    let dialling: Arc<Mutex<HashSet<PeerId>>> = Default::default();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.changed() => {}
            }
            if *stop.borrow() {
                return;
            }
            let peers = rpc.connected_peers();
            for (peer, addr) in &layout_peers {
                if peers.contains(peer) || !dialling.lock().is_ok_and(|mut d| d.insert(*peer)) {
                    continue;
                }
                let (rpc, dialling, peer, addr) = (rpc.clone(), dialling.clone(), *peer, *addr);
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(TIMEOUT, rpc.dial(peer, addr)).await;
                    if let Ok(mut d) = dialling.lock() {
                        d.remove(&peer);
                    }
                });
            }
            if let Ok(mut m) = missed.lock() {
                // Forget peers that are gone: a new connection starts afresh.
                m.retain(|p, _| peers.contains(p));
            }
            for peer in peers {
                let (rpc, ping, missed) = (rpc.clone(), ping.clone(), missed.clone());
                // Pings overlap: one stuck ping must not delay the next.
                tokio::spawn(async move {
                    let answered = ping.ping(peer, TIMEOUT).await.is_ok();
                    let close = match missed.lock() {
                        Ok(mut m) => {
                            let n = m.entry(peer).or_insert(0);
                            *n = if answered { 0 } else { *n + 1 };
                            let close = *n >= MISSES;
                            if close {
                                m.remove(&peer);
                            }
                            close
                        }
                        Err(_) => false,
                    };
                    if close {
                        log::warn!(
                            "peer {} has not answered {MISSES} pings in a row: closing our connection to it",
                            hex::encode(&peer[..8])
                        );
                        rpc.disconnect(peer);
                    }
                });
            }
        }
    });
}
