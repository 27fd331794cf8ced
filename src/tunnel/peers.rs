//! The configured devices: one boringtun session state per peer, looked up
//! by static key (handshake initiations), by receiver index (everything
//! after), and by tunnel address (outgoing packets).
//!
//! Security behaviour: a peer's tunnel address comes only from the
//! configuration and is bound to its key; the UDP endpoint is learnt only
//! from packets that authenticated as that peer.
//!
//! A reload adds and removes peers while the tunnel runs ([`Peers::add`],
//! [`Peers::remove`]). A peer's slot, and so its session indices, never
//! moves: the other devices' sessions go on untouched. A removed peer
//! stays as a tombstone that no lookup (key, index, address) finds and no
//! timer runs, so nothing it sends is accepted and nothing is sent to it.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::noise::Tunn;
use boringtun::x25519::{PublicKey, StaticSecret};

use super::keys::b64;
use super::PeerConfig;

/// Spoofed-packet audit events for one peer are at most this frequent.
pub const SPOOF_REPORT_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// One device and its WireGuard state.
pub struct PeerState {
    pub cfg: PeerConfig,
    /// Base64 public key, as audit events and `wg` name it.
    pub key_b64: String,
    pub tunn: Tunn,
    /// Where its authenticated packets last came from.
    pub endpoint: Option<SocketAddr>,
    /// The local address those packets reached (replies leave from it).
    pub local_ip: Option<IpAddr>,
    pub last_handshake: Option<SystemTime>,
    pub spoofed: u64,
    pub spoofed_reported: u64,
    pub spoof_reported_at: Option<Instant>,
    pub refused_reported_at: Option<Instant>,
    /// Sessions opened by an initiation of the device and answered, not
    /// yet confirmed by a data packet: the gateway's session indices.
    pub unconfirmed: Vec<u32>,
    /// Removed by a reload: found by no lookup, runs no timer.
    pub removed: bool,
}

/// All peers.
pub struct Peers {
    list: Vec<PeerState>,
    by_key: HashMap<[u8; 32], usize>,
    by_addr: HashMap<IpAddr, usize>,
    /// `receiver_index >> 8` of the first peer (random per start, so that
    /// stale indices from before a restart mostly match nobody).
    index_base: u32,
    /// For the sessions of peers added later.
    secret: StaticSecret,
    limiter: Arc<RateLimiter>,
}

/// Peer indices are 24 bits: boringtun keeps the low 8 bits of a session
/// index for itself.
const INDEX_SPACE: u32 = 1 << 24;

impl Peers {
    /// Sessions for `configs`, for a gateway with `secret`. `limiter` is
    /// what each session checks handshakes against (the engine checks the
    /// shared limiter before, so this one only verifies MACs).
    pub fn new(
        secret: &StaticSecret,
        configs: Vec<PeerConfig>,
        limiter: Arc<RateLimiter>,
        random: u32,
    ) -> Peers {
        let n = u32::try_from(configs.len()).unwrap_or(INDEX_SPACE);
        let index_base = random % INDEX_SPACE.saturating_sub(n).max(1);
        let mut peers = Peers {
            list: Vec::with_capacity(configs.len()),
            by_key: HashMap::new(),
            by_addr: HashMap::new(),
            index_base,
            secret: secret.clone(),
            limiter,
        };
        for cfg in configs {
            if peers.add(cfg).is_none() {
                break;
            }
        }
        peers
    }

    /// Adds a device (a new key and address: the caller removed any peer
    /// holding either). Its slot is the next one; None when the index space
    /// is used up (then nothing changed).
    pub fn add(&mut self, cfg: PeerConfig) -> Option<usize> {
        let i = self.list.len();
        let index = self.index_base.checked_add(u32::try_from(i).ok()?)?;
        if index >= INDEX_SPACE
            || self.by_key.contains_key(&cfg.public_key)
            || self.by_addr.contains_key(&cfg.address)
        {
            return None;
        }
        let tunn = Tunn::new(
            self.secret.clone(),
            PublicKey::from(cfg.public_key),
            cfg.preshared_key.as_ref().map(|k| k.expose()),
            None,
            index,
            Some(self.limiter.clone()),
        );
        self.by_key.insert(cfg.public_key, i);
        self.by_addr.insert(cfg.address, i);
        self.list.push(PeerState {
            key_b64: b64(&cfg.public_key),
            cfg,
            tunn,
            endpoint: None,
            local_ip: None,
            last_handshake: None,
            spoofed: 0,
            spoofed_reported: 0,
            spoof_reported_at: None,
            refused_reported_at: None,
            unconfirmed: Vec::new(),
            removed: false,
        });
        Some(i)
    }

    /// Removes the device with this key: no lookup finds it again, no
    /// timer runs for it, and its session keys are dropped. Returns its
    /// slot (its connections are the caller's to close).
    pub fn remove(&mut self, key: &[u8; 32]) -> Option<usize> {
        let i = self.by_key.remove(key)?;
        let peer = self.list.get_mut(i)?;
        self.by_addr.remove(&peer.cfg.address);
        peer.removed = true;
        peer.endpoint = None;
        peer.unconfirmed.clear();
        // A fresh session state without any keys: nothing old decrypts.
        peer.tunn = Tunn::new(
            self.secret.clone(),
            PublicKey::from(peer.cfg.public_key),
            None,
            None,
            0,
            Some(self.limiter.clone()),
        );
        Some(i)
    }

    pub fn by_key(&self, key: &[u8; 32]) -> Option<usize> {
        self.by_key.get(key).copied()
    }

    pub fn by_addr(&self, addr: &IpAddr) -> Option<usize> {
        self.by_addr.get(addr).copied()
    }

    /// The peer a receiver index belongs to (never a removed one).
    pub fn by_index(&self, receiver_idx: u32) -> Option<usize> {
        let i = (receiver_idx >> 8).checked_sub(self.index_base)?;
        let i = usize::try_from(i).ok()?;
        self.list.get(i).is_some_and(|p| !p.removed).then_some(i)
    }

    /// The peer in slot `i`, removed ones included (their connections are
    /// still audited when they close).
    pub fn get(&self, i: usize) -> Option<&PeerState> {
        self.list.get(i)
    }

    pub fn get_mut(&mut self, i: usize) -> Option<&mut PeerState> {
        self.list.get_mut(i)
    }

    /// The configured (not removed) peers.
    pub fn iter(&self) -> impl Iterator<Item = &PeerState> {
        self.list.iter().filter(|p| !p.removed)
    }

    /// The configured (not removed) peers, with their slots.
    pub fn iter_indexed(&self) -> impl Iterator<Item = (usize, &PeerState)> {
        self.list.iter().enumerate().filter(|(_, p)| !p.removed)
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut PeerState> {
        self.list.iter_mut().filter(|p| !p.removed)
    }
}
