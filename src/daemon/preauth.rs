//! Pre-authentication limits (OpenSSH's `MaxStartups` and
//! `PerSourcePenalties` in spirit): a cap on connections that have not
//! finished logging in, in total and per source, so that one host opening
//! idle connections cannot take every slot from the people who work there.
//!
//! A source is the address for IPv4 and the /64 for IPv6 (one customer of a
//! provider usually holds a whole /64). A refused connection gets the SSH
//! identification line and an unencrypted `SSH_MSG_DISCONNECT` (which
//! OpenSSH prints as "Received disconnect from ...: too many ..."), then a
//! close. Refusals are audited aggregated: at most one event per source per
//! minute, carrying the count, so a flood cannot drown the audit trail.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::audit;
use crate::config::PreAuthLimits;

/// At most one aggregated refusal event per source per this long.
const AUDIT_EVERY: Duration = Duration::from_secs(60);
/// Sources whose refusals are being counted; beyond this many, new sources
/// are counted under one shared entry so the table stays bounded.
const MAX_COUNTED_SOURCES: usize = 4096;
/// Reason code 12 of RFC 4253 §11.1.
const SSH_DISCONNECT_TOO_MANY_CONNECTIONS: u32 = 12;

/// Where a connection is counted: the address (IPv4) or the /64 (IPv6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SourceKey {
    V4(std::net::Ipv4Addr),
    V6Prefix64(u64),
    /// Every source once the refusal table is full (aggregation only).
    Other,
}

impl SourceKey {
    pub fn of(ip: IpAddr) -> SourceKey {
        match ip {
            IpAddr::V4(a) => SourceKey::V4(a),
            IpAddr::V6(a) => match a.to_ipv4_mapped() {
                Some(v4) => SourceKey::V4(v4),
                None => SourceKey::V6Prefix64((u128::from(a) >> 64) as u64),
            },
        }
    }
}

impl std::fmt::Display for SourceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SourceKey::V4(a) => write!(f, "{a}"),
            SourceKey::V6Prefix64(p) => {
                write!(f, "{}/64", Ipv6Addr::from(u128::from(*p) << 64))
            }
            SourceKey::Other => f.write_str("other sources"),
        }
    }
}

/// Why a connection was refused before authentication.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    PerSource,
    Total,
    NoDescriptors,
}

impl Refusal {
    /// The audit reason.
    pub fn reason(self) -> &'static str {
        match self {
            Refusal::PerSource => {
                "too many unauthenticated connections from this source (gateway.max_startups_per_source)"
            }
            Refusal::Total => {
                "too many unauthenticated connections in total (gateway.max_startups)"
            }
            Refusal::NoDescriptors => "gatehouse is out of file descriptors",
        }
    }

    /// The reason label of `gatehouse_refusals_total`.
    fn metric_reason(self) -> &'static str {
        match self {
            Refusal::PerSource => "max_startups_per_source",
            Refusal::Total => "max_startups",
            Refusal::NoDescriptors => "no_descriptors",
        }
    }

    /// What the person sees.
    fn message(self) -> &'static str {
        match self {
            Refusal::PerSource => {
                "gatehouse: too many unfinished logins from your address; finish or close them and try again"
            }
            Refusal::Total => "gatehouse: too many logins in progress; try again in a moment",
            Refusal::NoDescriptors => "gatehouse: out of resources; try again in a moment",
        }
    }
}

#[derive(Default)]
struct Counts {
    total: usize,
    per_source: HashMap<SourceKey, usize>,
}

/// Refusals not yet audited for one source.
struct Pending {
    count: u64,
    last_event: Option<Instant>,
    reason: Refusal,
}

/// The caps and the live counts. Cheap to share.
pub struct PreAuth {
    limits: PreAuthLimits,
    counts: Mutex<Counts>,
    refused: Mutex<HashMap<SourceKey, Pending>>,
}

/// Held by a connection until it has authenticated (or ends).
pub struct Permit {
    owner: Arc<PreAuth>,
    key: SourceKey,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl PreAuth {
    pub fn new(limits: PreAuthLimits) -> Arc<PreAuth> {
        Arc::new(PreAuth {
            limits,
            counts: Mutex::new(Counts::default()),
            refused: Mutex::new(HashMap::new()),
        })
    }

    /// A permit for one more unauthenticated connection from `ip`, or why not.
    pub fn try_acquire(self: &Arc<Self>, ip: IpAddr) -> Result<Permit, Refusal> {
        let key = SourceKey::of(ip);
        let mut c = lock(&self.counts);
        if c.total >= self.limits.total {
            return Err(Refusal::Total);
        }
        let n = c.per_source.entry(key).or_insert(0);
        if *n >= self.limits.per_source {
            return Err(Refusal::PerSource);
        }
        *n += 1;
        c.total += 1;
        Ok(Permit {
            owner: self.clone(),
            key,
        })
    }

    /// Counts a refusal from `ip` and audits it, aggregated per source.
    pub fn refused(&self, ip: IpAddr, why: Refusal) {
        crate::metrics::refusal(why.metric_reason());
        self.refused_at(SourceKey::of(ip), why, Instant::now());
    }

    fn refused_at(&self, key: SourceKey, why: Refusal, now: Instant) {
        let mut r = lock(&self.refused);
        let key = if r.contains_key(&key) || r.len() < MAX_COUNTED_SOURCES {
            key
        } else {
            SourceKey::Other
        };
        let p = r.entry(key).or_insert(Pending {
            count: 0,
            last_event: None,
            reason: why,
        });
        p.count += 1;
        p.reason = why;
        if p.last_event
            .is_none_or(|t| now.duration_since(t) >= AUDIT_EVERY)
        {
            audit::connection_refused(&key.to_string(), why.reason(), p.count);
            p.count = 0;
            p.last_event = Some(now);
        }
    }

    /// Audits the counts still pending and forgets quiet sources; run about
    /// once a minute.
    pub fn flush(&self) {
        let now = Instant::now();
        let mut r = lock(&self.refused);
        r.retain(|key, p| {
            if p.count > 0
                && p.last_event
                    .is_none_or(|t| now.duration_since(t) >= AUDIT_EVERY)
            {
                audit::connection_refused(&key.to_string(), p.reason.reason(), p.count);
                p.count = 0;
                p.last_event = Some(now);
            }
            p.count > 0
                || p.last_event
                    .is_some_and(|t| now.duration_since(t) < AUDIT_EVERY)
        });
    }

    #[cfg(test)]
    fn live(&self) -> (usize, usize) {
        let c = lock(&self.counts);
        (c.total, c.per_source.len())
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut c = lock(&self.owner.counts);
        c.total = c.total.saturating_sub(1);
        if let Some(n) = c.per_source.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                c.per_source.remove(&self.key);
            }
        }
    }
}

/// What a refused client is sent: gatehouse's identification line, then an
/// unencrypted `SSH_MSG_DISCONNECT` (allowed before key exchange, RFC 4253
/// §11.1) with `why`'s message.
pub fn refusal_bytes(why: Refusal) -> Vec<u8> {
    let message = why.message().as_bytes();
    let mut payload = vec![1u8]; // SSH_MSG_DISCONNECT
    payload.extend_from_slice(&SSH_DISCONNECT_TOO_MANY_CONNECTIONS.to_be_bytes());
    payload.extend_from_slice(&(message.len() as u32).to_be_bytes());
    payload.extend_from_slice(message);
    payload.extend_from_slice(&2u32.to_be_bytes());
    payload.extend_from_slice(b"en");
    // Block size 8 without a cipher: 4 (length) + 1 (padding length) +
    // payload + padding is a multiple of 8, with at least 4 bytes of padding.
    let mut padding = 8 - (5 + payload.len()) % 8;
    if padding < 4 {
        padding += 8;
    }
    let packet_length = 1 + payload.len() + padding;
    let mut out = b"SSH-2.0-gatehouse\r\n".to_vec();
    out.extend_from_slice(&(packet_length as u32).to_be_bytes());
    out.push(padding as u8);
    out.extend_from_slice(&payload);
    out.extend(std::iter::repeat_n(0u8, padding));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pre_auth(total: usize, per_source: usize) -> Arc<PreAuth> {
        PreAuth::new(PreAuthLimits { total, per_source })
    }

    #[test]
    fn one_source_cannot_take_every_slot() {
        let p = pre_auth(4, 2);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let held: Vec<Permit> = (0..2).map(|_| p.try_acquire(a).unwrap()).collect();
        assert_eq!(p.try_acquire(a).err(), Some(Refusal::PerSource));
        let other = p.try_acquire(b).unwrap();
        drop(held);
        assert_eq!(p.live(), (1, 1));
        drop(other);
        assert_eq!(p.live(), (0, 0));
    }

    #[test]
    fn the_total_cap_holds_across_sources() {
        let p = pre_auth(2, 2);
        let _a = p.try_acquire("192.0.2.1".parse().unwrap()).unwrap();
        let _b = p.try_acquire("192.0.2.2".parse().unwrap()).unwrap();
        assert_eq!(
            p.try_acquire("192.0.2.3".parse().unwrap()).err(),
            Some(Refusal::Total)
        );
    }

    #[test]
    fn ipv6_sources_count_by_their_64() {
        let p = pre_auth(10, 1);
        let _a = p.try_acquire("2001:db8:1:2::1".parse().unwrap()).unwrap();
        assert_eq!(
            p.try_acquire("2001:db8:1:2:ffff::9".parse().unwrap()).err(),
            Some(Refusal::PerSource)
        );
        assert!(p.try_acquire("2001:db8:1:3::1".parse().unwrap()).is_ok());
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(SourceKey::of(mapped).to_string(), "192.0.2.7");
        assert_eq!(
            SourceKey::of("2001:db8:1:2::1".parse().unwrap()).to_string(),
            "2001:db8:1:2::/64"
        );
    }

    #[test]
    fn the_refusal_table_is_bounded() {
        let p = pre_auth(1, 1);
        let now = Instant::now();
        for i in 0..(MAX_COUNTED_SOURCES as u32 + 100) {
            let ip = std::net::Ipv4Addr::from(0x0a00_0000 + i);
            p.refused_at(SourceKey::V4(ip), Refusal::PerSource, now);
        }
        assert!(lock(&p.refused).len() <= MAX_COUNTED_SOURCES + 1);
    }

    #[test]
    fn the_refusal_is_a_well_formed_disconnect_packet() {
        let bytes = refusal_bytes(Refusal::PerSource);
        let rest = bytes.strip_prefix(b"SSH-2.0-gatehouse\r\n").unwrap();
        let len = u32::from_be_bytes(rest[..4].try_into().unwrap()) as usize;
        assert_eq!(rest.len(), 4 + len);
        assert_eq!(rest.len() % 8, 0);
        let padding = rest[4] as usize;
        assert!(padding >= 4);
        assert_eq!(rest[5], 1);
        assert_eq!(&rest[6..10], &12u32.to_be_bytes());
    }
}
