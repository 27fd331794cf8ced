//! MFA leases: after a key + TOTP login, further logins by the same user with
//! the same key from the same source (WireGuard peer or, on plain TCP, source
//! address) skip the code prompt until the lease ends. Leases live in memory
//! only: a restart asks everyone for a code again, which is the safe side.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// What a lease is bound to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LeaseKey {
    pub user: String,
    pub key_fingerprint: String,
    pub source: String,
}

/// The table of live leases.
#[derive(Debug, Default)]
pub struct Leases {
    lifetime: Duration,
    leases: HashMap<LeaseKey, Instant>,
}

impl Leases {
    pub fn new(lifetime: Duration) -> Leases {
        Leases {
            lifetime,
            leases: HashMap::new(),
        }
    }

    /// Records that a code was given now. No-op when leases are disabled.
    pub fn grant(&mut self, key: LeaseKey, now: Instant) {
        if self.lifetime.is_zero() {
            return;
        }
        self.leases
            .retain(|_, &mut t| now.duration_since(t) < self.lifetime);
        self.leases.insert(key, now);
    }

    /// True when a code given less than the lifetime ago covers `key`.
    pub fn is_valid(&self, key: &LeaseKey, now: Instant) -> bool {
        !self.lifetime.is_zero()
            && self
                .leases
                .get(key)
                .is_some_and(|&t| now.duration_since(t) < self.lifetime)
    }

    /// Forgets every lease `pred` selects (an administrator's lock: a lease
    /// from before it must not skip the code after an unlock). Returns how
    /// many were dropped.
    pub fn revoke(&mut self, pred: impl Fn(&LeaseKey) -> bool) -> usize {
        let before = self.leases.len();
        self.leases.retain(|k, _| !pred(k));
        before - self.leases.len()
    }

    /// True when a live lease of `user` from `source` exists, whatever key
    /// it was granted for: a WireGuard device is its own first factor.
    pub fn held_from(&self, user: &str, source: &str, now: Instant) -> bool {
        !self.lifetime.is_zero()
            && self.leases.iter().any(|(k, &t)| {
                k.user == user && k.source == source && now.duration_since(t) < self.lifetime
            })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn key(src: &str) -> LeaseKey {
        LeaseKey {
            user: "alice".into(),
            key_fingerprint: "SHA256:x".into(),
            source: src.into(),
        }
    }

    #[test]
    fn revoked_leases_no_longer_cover_anything() {
        let mut l = Leases::new(Duration::from_secs(60));
        let now = Instant::now();
        l.grant(key("1.2.3.4"), now);
        l.grant(key("wg:KEY@10.0.0.2"), now);
        assert_eq!(l.revoke(|k| k.source.starts_with("wg:KEY@")), 1);
        assert!(!l.is_valid(&key("wg:KEY@10.0.0.2"), now));
        assert!(l.is_valid(&key("1.2.3.4"), now));
        assert_eq!(l.revoke(|k| k.user == "alice"), 1);
        assert!(!l.is_valid(&key("1.2.3.4"), now));
    }

    #[test]
    fn lease_covers_same_user_key_source_until_it_expires() {
        let mut l = Leases::new(Duration::from_secs(60));
        let t0 = Instant::now();
        l.grant(key("127.0.0.1"), t0);
        assert!(l.is_valid(&key("127.0.0.1"), t0 + Duration::from_secs(59)));
        assert!(!l.is_valid(&key("127.0.0.1"), t0 + Duration::from_secs(60)));
        assert!(!l.is_valid(&key("127.0.0.2"), t0));
    }

    #[test]
    fn held_from_matches_user_and_source_with_any_key_until_it_expires() {
        let mut l = Leases::new(Duration::from_secs(60));
        let t0 = Instant::now();
        l.grant(key("wg:K@10.77.0.2"), t0);
        assert!(l.held_from("alice", "wg:K@10.77.0.2", t0 + Duration::from_secs(59)));
        assert!(!l.held_from("alice", "wg:K@10.77.0.2", t0 + Duration::from_secs(60)));
        assert!(!l.held_from("alice", "wg:J@10.77.0.3", t0));
        assert!(!l.held_from("bob", "wg:K@10.77.0.2", t0));
        let mut off = Leases::new(Duration::ZERO);
        off.grant(key("a"), t0);
        assert!(!off.held_from("alice", "a", t0));
    }

    #[test]
    fn zero_lifetime_disables_leases() {
        let mut l = Leases::new(Duration::ZERO);
        let t0 = Instant::now();
        l.grant(key("a"), t0);
        assert!(!l.is_valid(&key("a"), t0));
    }
}
