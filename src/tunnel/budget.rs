//! The handshake budget: how many handshake initiations the tunnel thread
//! spends Diffie-Hellman on, per source address and in total.
//!
//! The shared cookie limiter (boringtun's `RateLimiter`) runs first: under
//! load (more than `HANDSHAKE_RATE_LIMIT` initiations a second) an
//! initiation must carry a valid mac2, which proves that its sender
//! receives packets at its source address. The budget applies only then,
//! as kernel WireGuard's rate limiter does: below that load the limiter
//! bounds the work, and a sender forging a device's address cannot use up
//! the device's share. Anyone who knows the
//! gateway's public key can still get a cookie and send initiations with a
//! valid mac2 as fast as they like, and each one costs an X25519 on the one
//! thread that also carries every device's data. After the cookie check:
//!
//! - each source address (IPv4 address, IPv6 /64) gets a token bucket of
//!   [`PER_SOURCE_RATE`] initiations per second with a burst of
//!   [`PER_SOURCE_BURST`], as kernel WireGuard does;
//! - all sources together get [`GLOBAL_RATE`] per second with a burst of
//!   [`GLOBAL_BURST`], so that however many addresses a flood comes from,
//!   handshake work stays a small, fixed share of the thread and the data
//!   of established devices keeps flowing.
//!
//! An initiation over budget is dropped without an answer (its sender
//! retries, as WireGuard does after 5 s). The table of sources is bounded
//! ([`MAX_SOURCES`]); a source that finds it full is held to the global
//! budget alone.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Instant;

/// Initiations per second from one source address (kernel WireGuard: 20).
pub const PER_SOURCE_RATE: f64 = 20.0;
/// Initiations one source may send at once (kernel WireGuard: 5).
pub const PER_SOURCE_BURST: f64 = 5.0;
/// Initiations per second from all sources together.
pub const GLOBAL_RATE: f64 = 200.0;
/// Initiations all sources may send at once.
pub const GLOBAL_BURST: f64 = 50.0;
/// Sources tracked at most.
pub const MAX_SOURCES: usize = 16_384;

/// A token bucket.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn full(burst: f64, now: Instant) -> Bucket {
        Bucket {
            tokens: burst,
            at: now,
        }
    }

    fn refill(&mut self, rate: f64, burst: f64, now: Instant) {
        let dt = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + dt * rate).min(burst);
        self.at = now;
    }

    fn has_token(&self) -> bool {
        self.tokens >= 1.0
    }
}

/// Why an initiation was not given work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limited {
    /// Its source address sent more than its share.
    Source,
    /// All sources together sent more than the gateway spends.
    Global,
}

/// The budget. Owned by the tunnel thread.
#[derive(Debug)]
pub struct HandshakeBudget {
    global: Bucket,
    sources: HashMap<IpAddr, Bucket>,
    swept: Instant,
}

impl Default for HandshakeBudget {
    fn default() -> Self {
        HandshakeBudget::new(Instant::now())
    }
}

/// The key a source is counted under: the IPv4 address (also when it
/// arrives IPv4-mapped on an IPv6 socket), or the IPv6 /64.
fn source_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => {
            let s = v6.segments();
            let [a, b, c, d, ..] = s;
            IpAddr::V6(std::net::Ipv6Addr::new(a, b, c, d, 0, 0, 0, 0))
        }
    }
}

impl HandshakeBudget {
    pub fn new(now: Instant) -> HandshakeBudget {
        HandshakeBudget {
            global: Bucket::full(GLOBAL_BURST, now),
            sources: HashMap::new(),
            swept: now,
        }
    }

    /// Whether an initiation from `from` (that passed the cookie check) may
    /// be processed now; takes a token from its source and the global
    /// bucket if so. A source over its share takes nothing from the global
    /// budget.
    pub fn admit(&mut self, from: IpAddr, now: Instant) -> Result<(), Limited> {
        self.sweep(now);
        let key = source_key(from);
        let tracked = self.sources.len() < MAX_SOURCES || self.sources.contains_key(&key);
        if tracked {
            let b = self
                .sources
                .entry(key)
                .or_insert_with(|| Bucket::full(PER_SOURCE_BURST, now));
            b.refill(PER_SOURCE_RATE, PER_SOURCE_BURST, now);
            if !b.has_token() {
                return Err(Limited::Source);
            }
        }
        self.global.refill(GLOBAL_RATE, GLOBAL_BURST, now);
        if !self.global.has_token() {
            return Err(Limited::Global);
        }
        self.global.tokens -= 1.0;
        if let Some(b) = self.sources.get_mut(&key) {
            b.tokens -= 1.0;
        }
        Ok(())
    }

    /// Sources tracked now.
    #[cfg(test)]
    pub fn sources(&self) -> usize {
        self.sources.len()
    }

    /// Once a second: forgets sources whose bucket has refilled (they are
    /// as if never seen), which keeps the table to recent senders.
    fn sweep(&mut self, now: Instant) {
        if now.saturating_duration_since(self.swept).as_secs() < 1 {
            return;
        }
        self.swept = now;
        self.sources.retain(|_, b| {
            let mut b = *b;
            b.refill(PER_SOURCE_RATE, PER_SOURCE_BURST, now);
            b.tokens < PER_SOURCE_BURST
        });
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn one_source_gets_its_burst_then_twenty_a_second() {
        let t0 = Instant::now();
        let mut b = HandshakeBudget::new(t0);
        let a = ip("198.51.100.7");
        let ok = (0..100).filter(|_| b.admit(a, t0).is_ok()).count();
        assert_eq!(ok, PER_SOURCE_BURST as usize);
        assert_eq!(b.admit(a, t0), Err(Limited::Source));
        // Over ten seconds at 1000/s, about 20/s get through.
        let mut ok = 0;
        for ms in 1..=10_000u64 {
            if b.admit(a, t0 + Duration::from_millis(ms)).is_ok() {
                ok += 1;
            }
        }
        assert!((195..=206).contains(&ok), "{ok}");
        // Another source is not affected by the first one's flood.
        assert!(b
            .admit(ip("198.51.100.8"), t0 + Duration::from_secs(10))
            .is_ok());
    }

    #[test]
    fn many_sources_together_are_held_to_the_global_budget() {
        let t0 = Instant::now();
        let mut b = HandshakeBudget::new(t0);
        let mut ok = 0;
        let mut global = 0;
        // 1000 sources, each within its own share, for 5 seconds.
        for ms in 0..5000u64 {
            for k in 0..2u32 {
                let n = (ms as u32 * 2 + k) % 1000;
                let src = IpAddr::V4(std::net::Ipv4Addr::from(0xc633_6400 + n));
                match b.admit(src, t0 + Duration::from_millis(ms)) {
                    Ok(()) => ok += 1,
                    Err(Limited::Global) => global += 1,
                    Err(Limited::Source) => {}
                }
            }
        }
        let max = (GLOBAL_BURST + 5.0 * GLOBAL_RATE) as usize + 1;
        assert!(ok <= max && ok >= max - 10, "{ok}");
        assert!(global > 0);
    }

    #[test]
    fn ipv6_sources_count_per_64_and_mapped_ipv4_as_ipv4() {
        let t0 = Instant::now();
        let mut b = HandshakeBudget::new(t0);
        for i in 0..PER_SOURCE_BURST as u16 {
            let a = IpAddr::V6(std::net::Ipv6Addr::new(0x2001, 0xdb8, 1, 2, 0, 0, 0, i + 1));
            assert!(b.admit(a, t0).is_ok());
        }
        assert_eq!(b.admit(ip("2001:db8:1:2::ffff"), t0), Err(Limited::Source));
        assert!(b.admit(ip("2001:db8:1:3::1"), t0).is_ok());
        for _ in 0..PER_SOURCE_BURST as usize {
            assert!(b.admit(ip("::ffff:192.0.2.1"), t0).is_ok());
        }
        assert_eq!(b.admit(ip("192.0.2.1"), t0), Err(Limited::Source));
    }

    #[test]
    fn the_source_table_is_bounded_and_forgets_idle_sources() {
        let t0 = Instant::now();
        let mut b = HandshakeBudget::new(t0);
        for n in 0..(MAX_SOURCES as u32 + 500) {
            let src = IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + n));
            let _ = b.admit(src, t0 + Duration::from_micros(u64::from(n)));
        }
        assert!(b.sources() <= MAX_SOURCES);
        let _ = b.admit(ip("192.0.2.9"), t0 + Duration::from_secs(5));
        assert_eq!(b.sources(), 1, "idle sources are forgotten");
    }
}
