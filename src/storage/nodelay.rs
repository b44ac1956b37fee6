//! TCP_NODELAY for Garage's RPC connections, set from outside Garage.
//!
//! Garage 2.5.0 never disables Nagle's algorithm on its RPC sockets. Nagle
//! meets delayed ACKs and a small request sits ~40 ms in the kernel (a 2 KiB
//! get between two local nodes took 43.6 ms instead of 0.2 ms). The node runs
//! in our process, so its sockets are our file descriptors: a watcher walks
//! `/proc/self/fd` and sets TCP_NODELAY on every TCP socket whose local or
//! peer port is a registered RPC port. It rescans when the set of connected
//! peers changes (checked every 50 ms) and every few seconds regardless, so a
//! reconnection is covered within one scan period. This is the only place
//! that knows about the workaround; drop it when Garage sets the option.
//!
//! It must not touch sockets other than RPC ones, and never blocks: the scan
//! is a few syscalls per descriptor and runs on a blocking thread.

use std::collections::HashSet;
use std::os::fd::BorrowedFd;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

/// Ports that identify RPC connections, shared by every node in the process.
fn rpc_ports() -> &'static Mutex<HashSet<u16>> {
    static PORTS: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
    PORTS.get_or_init(|| Mutex::new(HashSet::new()))
}

static DISABLED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Turns the workaround off for this process (benchmarks, to show its effect).
pub fn disable() {
    DISABLED.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// Marks these ports as RPC ports (our listener's and our peers').
pub fn register_ports(ports: impl IntoIterator<Item = u16>) {
    if let Ok(mut set) = rpc_ports().lock() {
        set.extend(ports);
    }
}

/// Sets TCP_NODELAY on every RPC socket of this process that lacks it.
/// Returns how many sockets were changed.
pub fn scan_once() -> usize {
    if DISABLED.load(std::sync::atomic::Ordering::Relaxed) {
        return 0;
    }
    let ports = match rpc_ports().lock() {
        Ok(p) if !p.is_empty() => p.clone(),
        _ => return 0,
    };
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return 0;
    };
    let mut changed = 0;
    for entry in dir.flatten() {
        let Some(fd) = entry.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        // Only sockets; the link text is "socket:[inode]".
        match std::fs::read_link(entry.path()) {
            Ok(target) if target.as_os_str().as_encoded_bytes().starts_with(b"socket:") => {}
            _ => continue,
        }
        // SAFETY: the descriptor is open (just listed) and we only borrow it
        // for the duration of a few getsockopt/setsockopt calls. If it was
        // closed and reused meanwhile, the checks below see the new socket,
        // and setting NODELAY on a TCP socket is harmless.
        let fd = unsafe { BorrowedFd::borrow_raw(fd) };
        let sock = socket2::SockRef::from(&fd);
        if !matches!(sock.r#type(), Ok(socket2::Type::STREAM)) {
            continue;
        }
        let (Ok(local), Ok(peer)) = (sock.local_addr(), sock.peer_addr()) else {
            continue; // a listener or an unconnected socket
        };
        let (Some(local), Some(peer)) = (local.as_socket(), peer.as_socket()) else {
            continue; // a unix socket
        };
        if !ports.contains(&local.port()) && !ports.contains(&peer.port()) {
            continue;
        }
        if let Ok(false) = sock.tcp_nodelay() {
            if sock.set_tcp_nodelay(true).is_ok() {
                changed += 1;
            }
        }
    }
    changed
}

/// Starts (once per process) the watcher. `peer_fingerprint` is polled to
/// notice new connections early; it should change when peers (re)connect.
pub fn spawn_watcher(peer_fingerprint: Arc<dyn Fn() -> u64 + Send + Sync>) {
    let fingerprints = watchers();
    let first = {
        let Ok(mut list) = fingerprints.lock() else { return };
        list.push(peer_fingerprint);
        list.len() == 1
    };
    if !first {
        return;
    }
    tokio::spawn(async move {
        let mut last = u64::MAX;
        let mut ticks = 0u32;
        loop {
            let fp = match watchers().lock() {
                Ok(list) => list.iter().fold(0u64, |acc, f| acc.wrapping_mul(31).wrapping_add(f())),
                Err(_) => 0,
            };
            ticks += 1;
            if fp != last || ticks >= 40 {
                last = fp;
                ticks = 0;
                let n = tokio::task::spawn_blocking(scan_once).await.unwrap_or(0);
                if n > 0 {
                    log::debug!("TCP_NODELAY set on {n} RPC socket(s)");
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
}

type Fingerprint = Arc<dyn Fn() -> u64 + Send + Sync>;

fn watchers() -> &'static Mutex<Vec<Fingerprint>> {
    static W: OnceLock<Mutex<Vec<Fingerprint>>> = OnceLock::new();
    W.get_or_init(|| Mutex::new(Vec::new()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sets_nodelay_on_registered_ports_only() {
        let rpc = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let other = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        register_ports([rpc.local_addr().unwrap().port()]);
        let a = std::net::TcpStream::connect(rpc.local_addr().unwrap()).unwrap();
        let (a_srv, _) = rpc.accept().unwrap();
        let b = std::net::TcpStream::connect(other.local_addr().unwrap()).unwrap();
        assert!(!a.nodelay().unwrap());
        scan_once();
        assert!(a.nodelay().unwrap(), "outgoing RPC socket");
        assert!(a_srv.nodelay().unwrap(), "incoming RPC socket");
        assert!(!b.nodelay().unwrap(), "unrelated socket left alone");
    }
}
