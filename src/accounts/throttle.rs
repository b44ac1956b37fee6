//! Failed-login throttling, after Dovecot's auth penalty: each failure from
//! an (IP, login) pair, and failures from an IP across logins, make the
//! next failure answer later, doubling from 2 s up to 15 s. Only failures
//! are delayed, so a correct password is answered at once and never pays
//! for someone else's mistakes; and since one IP has at most one login
//! check in flight, an attacker behind it waits out each penalty. Records
//! are forgotten 15 minutes after the last failure.
//!
//! Pure bookkeeping with an injected clock, so it is tested without sleeping.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const FIRST: Duration = Duration::from_secs(2);
const MAX: Duration = Duration::from_secs(15);
const FORGET_AFTER: Duration = Duration::from_secs(15 * 60);
/// Failures across logins from one IP count this much less than failures
/// on one login (a user mistyping vs. a sweep over many accounts).
const IP_WEIGHT: u32 = 3;

#[derive(Clone, Copy)]
struct Record {
    failures: u32,
    last: Instant,
}

/// IPv6 clients are throttled per /64: one host usually owns a whole /64.
fn bucket(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
        v4 => v4,
    }
}

#[derive(Default)]
struct Tables {
    pairs: HashMap<(IpAddr, String), Record>,
    ips: HashMap<IpAddr, Record>,
}

#[derive(Default)]
pub struct Throttle {
    tables: Mutex<Tables>,
    // One check in flight per IP.
    slots: Mutex<HashMap<IpAddr, Arc<tokio::sync::Mutex<()>>>>,
}

fn penalty_for(failures: u32) -> Duration {
    if failures == 0 {
        return Duration::ZERO;
    }
    let d = FIRST.saturating_mul(1u32 << (failures - 1).min(8));
    d.min(MAX)
}

impl Throttle {
    /// The per-IP slot to hold while checking a login from `ip`.
    pub fn slot(&self, ip: IpAddr) -> Arc<tokio::sync::Mutex<()>> {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        if slots.len() > 10_000 {
            slots.retain(|_, s| Arc::strong_count(s) > 1);
        }
        slots.entry(bucket(ip)).or_default().clone()
    }

    /// Records a failure and returns how long to wait before answering it.
    pub fn failed(&self, ip: IpAddr, login: &str, now: Instant) -> Duration {
        let ip = bucket(ip);
        let mut t = self.tables.lock().unwrap_or_else(|p| p.into_inner());
        t.pairs.retain(|_, r| now.duration_since(r.last) < FORGET_AFTER);
        t.ips.retain(|_, r| now.duration_since(r.last) < FORGET_AFTER);
        let pair = t.pairs.entry((ip, login.to_string())).or_insert(Record { failures: 0, last: now });
        pair.failures += 1;
        pair.last = now;
        let pair_failures = pair.failures;
        let per_ip = t.ips.entry(ip).or_insert(Record { failures: 0, last: now });
        per_ip.failures += 1;
        per_ip.last = now;
        let n = pair_failures.max(per_ip.failures.div_ceil(IP_WEIGHT));
        penalty_for(n)
    }

    /// A correct password clears that pair's record (not the IP's).
    pub fn succeeded(&self, ip: IpAddr, login: &str) {
        let mut t = self.tables.lock().unwrap_or_else(|p| p.into_inner());
        t.pairs.remove(&(bucket(ip), login.to_string()));
    }

    /// Failures currently remembered for a pair (for logs and tests).
    pub fn failures(&self, ip: IpAddr, login: &str, now: Instant) -> u32 {
        let t = self.tables.lock().unwrap_or_else(|p| p.into_inner());
        t.pairs
            .get(&(bucket(ip), login.to_string()))
            .filter(|r| now.duration_since(r.last) < FORGET_AFTER)
            .map_or(0, |r| r.failures)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 2));

    #[test]
    fn engages_exponentially_and_caps() {
        let t = Throttle::default();
        let now = Instant::now();
        let d: Vec<u64> = (0..6).map(|_| t.failed(A, "alice", now).as_secs()).collect();
        assert_eq!(d, vec![2, 4, 8, 15, 15, 15]);
    }

    #[test]
    fn success_releases_the_pair_only() {
        let t = Throttle::default();
        let now = Instant::now();
        for _ in 0..3 {
            t.failed(A, "alice", now);
        }
        t.succeeded(A, "alice");
        assert_eq!(t.failures(A, "alice", now), 0);
        // The IP's record remains: its 4th failure (on another login) waits
        // longer than a first failure would.
        assert_eq!(t.failed(A, "bob", now), Duration::from_secs(4));
        // Another IP is not affected by A's failures at all.
        assert_eq!(t.failed(B, "alice", now), Duration::from_secs(2));
    }

    #[test]
    fn sweeps_over_many_logins_slow_down() {
        let t = Throttle::default();
        let now = Instant::now();
        let last = (0..12).map(|i| t.failed(A, &format!("user{i}"), now)).last().unwrap();
        assert_eq!(last, Duration::from_secs(15), "12 different logins from one IP");
    }

    #[test]
    fn forgotten_after_quiet_period() {
        let t = Throttle::default();
        let now = Instant::now();
        for _ in 0..4 {
            t.failed(A, "alice", now);
        }
        let later = now + FORGET_AFTER + Duration::from_secs(1);
        assert_eq!(t.failures(A, "alice", later), 0);
        assert_eq!(t.failed(A, "alice", later), Duration::from_secs(2));
    }

    #[test]
    fn ipv6_per_64() {
        let t = Throttle::default();
        let now = Instant::now();
        let a: IpAddr = "2001:db8::1".parse().unwrap();
        let b: IpAddr = "2001:db8::2".parse().unwrap();
        t.failed(a, "alice", now);
        assert_eq!(t.failed(b, "alice", now), Duration::from_secs(4));
    }
}
