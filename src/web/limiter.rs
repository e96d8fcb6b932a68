//! Failed sign-ins: who the client is (behind trusted proxies, the address they name), and how
//! long a client that keeps sending wrong keys waits for each answer.
//!
//! A wrong key is answered later and later once its client has `limit` failures in the last
//! minute (1 s, 2 s, 4 s … at most 30 s), so guessing slows to a crawl. Nothing is refused
//! outright and the right key is never held back: behind one proxy, or one office's NAT, a
//! stranger's wrong keys must not lock the coordinator out. Failures are counted per client
//! address, and within it per key (by the key's hash), so the log can tell one stale key tried
//! again and again from many keys guessed. In-process: each gateway process counts on its own.
//! (Not `governor`: its limiters count every attempt, while only failures should count here.)

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use actix_web::HttpRequest;
use ipnet::IpNet;

const WINDOW: Duration = Duration::from_secs(60);
/// Longest wait before a wrong key's answer.
pub const MAX_DELAY: Duration = Duration::from_secs(30);
/// Failures remembered per address past the limit: enough to reach `MAX_DELAY`.
const REMEMBERED_PAST_LIMIT: usize = 16;
/// Addresses remembered at most; past it, stale ones are forgotten first.
const MAX_CLIENTS: usize = 10_000;
/// Keys remembered per address at most.
const MAX_KEYS: usize = 64;

pub struct SignInLimiter {
    limit: usize,
    clients: Mutex<HashMap<IpAddr, Failures>>,
}

#[derive(Default)]
struct Failures {
    times: VecDeque<Instant>,
    /// Per key (the first bytes of its SHA-256): failures in the window.
    keys: HashMap<String, VecDeque<Instant>>,
}

impl Failures {
    fn forget_before(&mut self, now: Instant) {
        let fresh = |t: &Instant| now.duration_since(*t) < WINDOW;
        self.times.retain(fresh);
        self.keys.retain(|_, times| {
            times.retain(fresh);
            !times.is_empty()
        });
    }
}

/// What a failure left: the client's and this key's failures in the window, and how long the
/// answer waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Failed {
    pub client_failures: usize,
    pub key_failures: usize,
    pub delay: Duration,
}

impl SignInLimiter {
    pub fn new(per_minute: u32) -> Self {
        Self {
            limit: per_minute.max(1) as usize,
            clients: Mutex::new(HashMap::new()),
        }
    }

    /// Records a wrong key from `client` (`key` is the start of its hash).
    pub fn failed(&self, client: IpAddr, key: &str) -> Failed {
        let now = Instant::now();
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        if clients.len() >= MAX_CLIENTS && !clients.contains_key(&client) {
            clients.retain(|_, f| {
                f.forget_before(now);
                !f.times.is_empty()
            });
        }
        let failures = clients.entry(client).or_default();
        failures.forget_before(now);
        let delay = self.delay(failures.times.len());
        let keep = self.limit + REMEMBERED_PAST_LIMIT;
        failures.times.push_back(now);
        if failures.times.len() > keep {
            failures.times.pop_front();
        }
        if failures.keys.len() >= MAX_KEYS && !failures.keys.contains_key(key) {
            failures.keys.clear();
        }
        let times = failures.keys.entry(key.to_owned()).or_default();
        times.push_back(now);
        if times.len() > keep {
            times.pop_front();
        }
        Failed {
            client_failures: failures.times.len(),
            key_failures: times.len(),
            delay,
        }
    }

    /// The wait before answering a failure that comes after `earlier` failures in the window.
    fn delay(&self, earlier: usize) -> Duration {
        match earlier.checked_sub(self.limit) {
            None => Duration::ZERO,
            Some(past) => Duration::from_secs(1u64 << past.min(5)).min(MAX_DELAY),
        }
    }
}

/// The client's address: the TCP peer's, unless the peer is one of `trusted` proxies; then the
/// nearest address in `X-Forwarded-For` that is not a trusted proxy (each proxy appends the
/// address it saw, so entries left of it are the client's own word).
pub fn client_address(req: &HttpRequest, trusted: &[IpNet]) -> IpAddr {
    let peer = req
        .peer_addr()
        .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |a| a.ip());
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    let forwarded: Vec<&str> = req
        .headers()
        .get_all("x-forwarded-for")
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .collect();
    let mut client = peer;
    for entry in forwarded.iter().rev() {
        let Some(ip) = parse_forwarded(entry) else {
            // Garbage from a trusted hop's left: the last address a trusted proxy saw.
            break;
        };
        client = ip;
        if !is_trusted(&ip) {
            break;
        }
    }
    client
}

/// An `X-Forwarded-For` entry: an address, with or without a port.
fn parse_forwarded(entry: &str) -> Option<IpAddr> {
    let entry = entry.trim();
    entry
        .parse::<IpAddr>()
        .ok()
        .or_else(|| entry.parse::<std::net::SocketAddr>().ok().map(|a| a.ip()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::test::TestRequest;

    #[test]
    fn wrong_keys_are_answered_later_and_later_past_the_limit_per_client() {
        let limiter = SignInLimiter::new(2);
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let delays: Vec<u64> = (0..10)
            .map(|i| limiter.failed(a, &format!("k{i}")).delay.as_secs())
            .collect();
        assert_eq!(delays, [0, 0, 1, 2, 4, 8, 16, 30, 30, 30]);
        assert_eq!(
            limiter.failed(b, "k0").delay,
            Duration::ZERO,
            "others are not"
        );
        let again = limiter.failed(a, "k1");
        assert_eq!((again.client_failures, again.key_failures), (11, 2));
    }

    #[test]
    fn what_is_remembered_per_client_is_bounded() {
        let limiter = SignInLimiter::new(1);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        for i in 0..1000 {
            limiter.failed(a, &format!("k{i}"));
        }
        let clients = limiter.clients.lock().unwrap();
        assert_eq!(clients[&a].times.len(), 1 + REMEMBERED_PAST_LIMIT);
        assert!(clients[&a].keys.len() <= MAX_KEYS);
    }

    fn from(peer: &str, forwarded: Option<&str>) -> HttpRequest {
        let mut req = TestRequest::default().peer_addr(peer.parse().unwrap());
        if let Some(f) = forwarded {
            req = req.insert_header(("X-Forwarded-For", f));
        }
        req.to_http_request()
    }

    #[test]
    fn x_forwarded_for_is_believed_only_from_trusted_proxies() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()];
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let client = |peer, fwd| client_address(&from(peer, fwd), &trusted);
        assert_eq!(
            client("203.0.113.5:1", Some("198.51.100.1")),
            ip("203.0.113.5")
        );
        assert_eq!(client("10.0.0.2:1", None), ip("10.0.0.2"));
        assert_eq!(
            client("10.0.0.2:1", Some("198.51.100.1")),
            ip("198.51.100.1")
        );
        // What the client wrote itself is left of the address the proxy saw.
        assert_eq!(
            client("10.0.0.2:1", Some("192.0.2.9, 198.51.100.1, 10.0.0.7")),
            ip("198.51.100.1")
        );
        assert_eq!(
            client("[::1]:1", Some("198.51.100.1:5555")),
            ip("198.51.100.1")
        );
        assert_eq!(client("10.0.0.2:1", Some("nonsense")), ip("10.0.0.2"));
        assert_eq!(
            client("10.0.0.2:1", Some("nonsense, 10.0.0.9")),
            ip("10.0.0.9")
        );
        assert_eq!(
            client_address(&from("10.0.0.2:1", Some("198.51.100.1")), &[]),
            ip("10.0.0.2"),
            "no trusted proxies: the header is ignored"
        );
    }
}
