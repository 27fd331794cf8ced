//! The tunnel thread: UDP in, WireGuard, the stack, WireGuard, UDP out.
//!
//! One loop on its own thread does everything that touches packets:
//!
//! 1. receive a batch of datagrams (recvmmsg, GRO);
//! 2. route each to its peer — handshake initiations by static key, after
//!    the shared rate limiter had its say (cookies under load) and within
//!    the handshake budget (per source and in total, see `budget`);
//!    everything else by receiver index — and decrypt it into a pooled
//!    buffer;
//! 3. filter it ([`super::packet::classify`]) and queue it for the stack;
//! 4. run the stack: ingress (allocating a socket per acceptable SYN),
//!    accepted and closed connections, egress until the queue is full;
//! 5. encrypt queued packets straight into a GSO batch per endpoint and send
//!    it with one system call; a full socket buffer stops the loop from
//!    producing more (backpressure), nothing is dropped;
//! 6. drive timers (keepalive, rekey, expiry), reset the rate limiter, and
//!    write the status file.
//!
//! When nothing is left to do it sleeps until the socket is readable, a
//! stream wakes it, or the next timer is due.

use std::io::{self, IoSliceMut};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use boringtun::noise::handshake::parse_handshake_anon;
use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::noise::{HandshakeInit, Packet, Tunn, TunnResult};
use boringtun::x25519::{PublicKey, StaticSecret};
use quinn_udp::{RecvMeta, Transmit, UdpSocketState};
use tokio::io::Interest;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};

use super::budget::HandshakeBudget;
use super::device::{Device, BUF_SIZE};
use super::keys::b64;
use super::packet::{self, Verdict};
use super::peers::{Peers, SPOOF_REPORT_EVERY};
use super::reconfigure::PeerUpdate;
use super::recovery::Recovery;
use super::stack::{Accepted, Closed, Refusal, Shared};
use super::status::{self, Counters, PeerStatus, Status};
use super::{Peer, Service, TunnelStream};
use crate::audit;

/// Handshake initiations per second before the gateway answers with
/// cookies instead of doing Diffie-Hellman (boringtun's device uses 100).
pub const HANDSHAKE_RATE_LIMIT: u64 = 100;

/// Datagrams per receive call (quinn-udp's recvmmsg batch).
const RX_BATCH: usize = 32;
/// Size of one receive slot: room for a GRO train of datagrams.
const RX_SLOT: usize = 64 * 1024;
/// Receive calls per loop turn before the stack runs.
const RX_ROUNDS: usize = 2;
/// Bytes in one GSO send (the kernel's limit is just under 64 KiB).
const GSO_BYTES: usize = 64_000;
/// How often WireGuard timers run (as boringtun's own device does).
const TIMER_TICK: Duration = Duration::from_millis(250);
/// After a restart, peers that had a session this recently are contacted.
const RESUME_WITHIN: Duration = Duration::from_secs(180);
/// Unknown-key handshake reports are at most this frequent.
const UNKNOWN_REPORT_EVERY: Duration = Duration::from_secs(10);
/// Shutdown waits this long for tunnel connections to close.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(12);
/// How often the loss-recovery probe timer may run.
const RECOVERY_POLL: Duration = Duration::from_millis(1);
/// Size of the smallest WireGuard message the gateway sends in place of a
/// data packet (a handshake initiation).
const HANDSHAKE_INIT_SIZE: usize = 148;

/// Everything the loop owns.
pub struct Engine {
    pub sock: UdpSocket,
    pub udp: UdpSocketState,
    pub secret: StaticSecret,
    pub public: PublicKey,
    pub limiter: Arc<RateLimiter>,
    pub peers: Peers,
    pub shared: Arc<Shared>,
    pub device: Device,
    pub gateway: IpAddr,
    pub service: Service,
    pub status_path: Option<PathBuf>,
    pub listen: SocketAddr,
    pub counters: Counters,
    pub shutdown: watch::Receiver<bool>,
    /// Device lists sent by a reload ([`super::PeerControl`]).
    updates: mpsc::Receiver<PeerUpdate>,
    slots: Vec<Vec<u8>>,
    meta: Vec<RecvMeta>,
    out: Batch,
    scratch: Vec<u8>,
    unknown_unreported: u64,
    unknown_reported_at: Option<Instant>,
    v6_socket: bool,
    /// Resends what smoltcp's own loss recovery would wait a second for.
    recovery: Recovery,
    /// When its probe timer is next due, and when it was last run.
    recovery_due: Option<Instant>,
    recovery_polled: Instant,
    /// Handshake initiations given Diffie-Hellman, per source and in total.
    budget: HandshakeBudget,
    /// Initiations seen since the limiter's count was last reset (mirrors
    /// it: above [`HANDSHAKE_RATE_LIMIT`] the limiter demands cookies).
    inits_this_second: u64,
    inits_reset_at: Instant,
}

/// Encrypted datagrams for one endpoint, back to back, sent with one GSO
/// system call: every segment `seg` bytes except possibly the last.
struct Batch {
    buf: Vec<u8>,
    len: usize,
    seg: usize,
    count: usize,
    /// A shorter last segment was added: nothing more fits.
    closed: bool,
    dest: Option<SocketAddr>,
    src_ip: Option<IpAddr>,
}

impl Batch {
    fn new() -> Batch {
        Batch {
            buf: vec![0u8; GSO_BYTES + BUF_SIZE + 64],
            len: 0,
            seg: 0,
            count: 0,
            closed: false,
            dest: None,
            src_ip: None,
        }
    }

    fn clear(&mut self) {
        self.len = 0;
        self.seg = 0;
        self.count = 0;
        self.closed = false;
        self.dest = None;
    }

    /// Whether a datagram of `size` bytes to `dest` can be appended.
    fn fits(&self, dest: SocketAddr, size: usize, max_segments: usize) -> bool {
        if self.count == 0 {
            return true;
        }
        !self.closed
            && self.dest == Some(dest)
            && self.count < max_segments
            && size <= self.seg
            && self.len.saturating_add(size) <= GSO_BYTES
    }
}

/// A peer-facing send that is not part of a data batch (handshake
/// messages, cookies, keepalives): best effort, a full socket drops it and
/// WireGuard's timers retry.
fn send_to(
    sock: &UdpSocket,
    udp: &UdpSocketState,
    dest: SocketAddr,
    src_ip: Option<IpAddr>,
    data: &[u8],
) {
    let t = Transmit {
        destination: dest,
        ecn: None,
        contents: data,
        segment_size: None,
        src_ip,
    };
    let _ = sock.try_io(Interest::WRITABLE, || udp.send(sock.into(), &t));
}

/// Queues a copy of a packet the stack sent before, ahead of new data
/// (loss recovery). Skipped when the queue is full: the next duplicate
/// ACK or probe asks again.
fn send_again(device: &mut Device, pkt: &[u8]) {
    if device.tx_len() >= super::device::TX_QUEUE {
        return;
    }
    let mut copy = device.take();
    match copy.space().get_mut(..pkt.len()) {
        Some(dst) => {
            dst.copy_from_slice(pkt);
            copy.set_len(pkt.len());
            device.unpop_tx(copy);
        }
        None => device.give(copy),
    }
}

/// Handshakes answered but not yet confirmed by a data packet, kept per
/// device (the newest; a device retries every 5 s).
const UNCONFIRMED_KEEP: usize = 4;

/// The gateway's session index in a handshake response it wrote (what the
/// device's data packets on that session carry as receiver index).
fn response_sender_index(reply: &[u8]) -> Option<u32> {
    // Type 2, three reserved bytes, then the sender index (little endian).
    if !matches!(
        Tunn::parse_incoming_packet(reply),
        Ok(Packet::HandshakeResponse(_))
    ) {
        return None;
    }
    let b: [u8; 4] = reply.get(4..8)?.try_into().ok()?;
    Some(u32::from_le_bytes(b))
}

/// An address as people write it (IPv4 rather than `::ffff:a.b.c.d`).
pub fn display_addr(a: SocketAddr) -> SocketAddr {
    SocketAddr::new(a.ip().to_canonical(), a.port())
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// What kind of message a peer sent, for what follows a good decryption.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Init,
    Response,
    /// A data packet (or keepalive) for the session of this receiver index.
    Data(u32),
    Other,
}

impl Engine {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        sock: UdpSocket,
        udp: UdpSocketState,
        secret: StaticSecret,
        limiter: Arc<RateLimiter>,
        peers: Peers,
        shared: Arc<Shared>,
        device: Device,
        gateway: IpAddr,
        service: Service,
        status_path: Option<PathBuf>,
        shutdown: watch::Receiver<bool>,
        updates: mpsc::Receiver<PeerUpdate>,
    ) -> io::Result<Engine> {
        let listen = sock.local_addr()?;
        Ok(Engine {
            public: PublicKey::from(&secret),
            v6_socket: listen.is_ipv6(),
            sock,
            udp,
            secret,
            limiter,
            peers,
            shared,
            device,
            gateway,
            service,
            status_path,
            listen,
            counters: Counters::default(),
            shutdown,
            updates,
            slots: (0..RX_BATCH).map(|_| vec![0u8; RX_SLOT]).collect(),
            meta: (0..RX_BATCH).map(|_| RecvMeta::default()).collect(),
            out: Batch::new(),
            scratch: vec![0u8; BUF_SIZE],
            unknown_unreported: 0,
            unknown_reported_at: None,
            recovery: Recovery::default(),
            recovery_due: None,
            recovery_polled: Instant::now(),
            budget: HandshakeBudget::default(),
            inits_this_second: 0,
            inits_reset_at: Instant::now(),
        })
    }

    /// The loop. Returns after shutdown, once tunnel connections closed or
    /// the grace period passed.
    pub async fn run(mut self) {
        // A fresh socket is not known to be writable until the reactor saw
        // it: wait, or the first sends (resumed sessions) would be dropped.
        let _ = tokio::time::timeout(Duration::from_secs(1), self.sock.writable()).await;
        self.resume();
        let mut next_timers = Instant::now();
        let mut next_status = Instant::now();
        let mut stopping: Option<Instant> = None;
        let mut blocked = false;
        loop {
            // A reload's device list, between two turns (never mid-batch).
            while let Ok(update) = self.updates.try_recv() {
                self.reconfigure(update);
            }
            let received = if blocked { 0 } else { self.receive() };
            let (accepted, closed, refused, delay) = {
                let mut st = self.shared.lock();
                let refused = st.ingress(&mut self.device);
                let (accepted, closed) = st.housekeeping();
                if !blocked {
                    st.egress(&mut self.device);
                }
                let delay = st.poll_delay();
                if stopping.is_some() && st.connections() == 0 {
                    drop(st);
                    break;
                }
                (accepted, closed, refused, delay)
            };
            self.connections(accepted, closed, refused);
            self.probe_losses();
            let sent = self.device.tx_len();
            blocked = self.transmit();
            let now = Instant::now();
            if now >= next_timers {
                self.timers();
                next_timers = now + TIMER_TICK;
            }
            if now >= next_status {
                self.write_status(false);
                self.publish_metrics();
                next_status = now + status::STATUS_EVERY;
            }
            if let Some(t) = stopping {
                if t.elapsed() > SHUTDOWN_GRACE {
                    break;
                }
            }
            if received > 0 || (sent > 0 && !blocked) {
                continue;
            }
            let mut wait = delay
                .unwrap_or(TIMER_TICK)
                .min(next_timers.saturating_duration_since(now))
                .min(next_status.saturating_duration_since(now));
            if self.recovery.kept_bytes() > 0 {
                let due = self.recovery_due.unwrap_or(now + RECOVERY_POLL);
                wait = wait.min(due.saturating_duration_since(now).max(RECOVERY_POLL));
            }
            let already_stopping = stopping.is_some();
            let shutdown = &mut self.shutdown;
            let stop_changed = async move {
                if already_stopping {
                    std::future::pending::<()>().await;
                }
                let _ = shutdown.changed().await;
            };
            let (sock, shared, updates) = (&self.sock, &self.shared, &mut self.updates);
            let mut update = None;
            tokio::select! {
                u = updates.recv() => update = u,
                r = sock.readable(), if !blocked => { let _ = r; }
                r = sock.writable(), if blocked => { let _ = r; blocked = false; }
                _ = shared.wake.notified() => {}
                // A floor on the sleep keeps a stack that asks to be polled
                // "now" without progress from spinning the thread.
                _ = tokio::time::sleep(wait.max(Duration::from_micros(100))) => {}
                _ = stop_changed => {
                    if stopping.is_none() {
                        tracing::info!("WireGuard tunnel: shutting down; no new connections");
                        self.shared.lock().stop_accepting();
                        stopping = Some(Instant::now());
                    }
                }
            }
            if let Some(u) = update {
                self.reconfigure(u);
            }
            if self.shutdown.has_changed().is_err() && stopping.is_none() {
                // The sender is gone: the daemon is exiting.
                self.shared.lock().stop_accepting();
                stopping = Some(Instant::now());
            }
        }
        self.write_status(true);
    }

    /// Receives up to a few batches of datagrams and processes each.
    fn receive(&mut self) -> usize {
        let mut slots = std::mem::take(&mut self.slots);
        let mut meta = std::mem::take(&mut self.meta);
        let mut total = 0;
        for _ in 0..RX_ROUNDS {
            let n = {
                let mut it = slots.iter_mut();
                let mut iovs: [IoSliceMut<'_>; RX_BATCH] = std::array::from_fn(|_| {
                    IoSliceMut::new(it.next().map(|s| s.as_mut_slice()).unwrap_or_default())
                });
                let (sock, udp) = (&self.sock, &self.udp);
                match sock.try_io(Interest::READABLE, || {
                    udp.recv(sock.into(), &mut iovs, &mut meta)
                }) {
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
                    Err(e) => {
                        tracing::debug!(error = %e, "WireGuard receive failed");
                        0
                    }
                }
            };
            for (slot, m) in slots.iter().zip(meta.iter()).take(n) {
                let data = slot.get(..m.len).unwrap_or_default();
                for dg in data.chunks(m.stride.max(1)) {
                    self.datagram(dg, m.addr, m.dst_ip);
                }
            }
            total += n;
            if n < RX_BATCH {
                break;
            }
        }
        self.slots = slots;
        self.meta = meta;
        total
    }

    /// One datagram from `from`.
    fn datagram(&mut self, data: &[u8], from: SocketAddr, local: Option<IpAddr>) {
        let (idx, kind) = match Tunn::parse_incoming_packet(data) {
            Err(_) => {
                self.counters.invalid += 1;
                return;
            }
            Ok(Packet::HandshakeInit(init)) => match self.initiator(data, &init, from, local) {
                Some(i) => (Some(i), Kind::Init),
                None => return,
            },
            Ok(Packet::HandshakeResponse(p)) => {
                (self.peers.by_index(p.receiver_idx), Kind::Response)
            }
            Ok(Packet::PacketCookieReply(p)) => (self.peers.by_index(p.receiver_idx), Kind::Other),
            Ok(Packet::PacketData(p)) => (
                self.peers.by_index(p.receiver_idx),
                Kind::Data(p.receiver_idx),
            ),
        };
        match idx {
            Some(i) => self.decapsulate(i, data, from, local, kind),
            None => self.counters.invalid += 1,
        }
    }

    /// The peer behind a handshake initiation, after the shared rate limiter
    /// (which answers with a cookie under load) and the static-key lookup.
    fn initiator(
        &mut self,
        data: &[u8],
        init: &HandshakeInit<'_>,
        from: SocketAddr,
        local: Option<IpAddr>,
    ) -> Option<usize> {
        let mut cookie = [0u8; 64];
        match self
            .limiter
            .verify_packet(Some(from.ip()), data, &mut cookie)
        {
            Ok(_) => {}
            Err(TunnResult::WriteToNetwork(reply)) => {
                send_to(&self.sock, &self.udp, from, local, reply);
                self.counters.cookies_sent += 1;
                return None;
            }
            Err(_) => {
                self.counters.invalid += 1;
                return None;
            }
        }
        // The cookie check passed. Under load (when the limiter demands
        // mac2, so the source address is proven) the per-source and global
        // budget applies too, before any Diffie-Hellman. Below the load
        // threshold the limiter itself bounds the work, and a forged
        // source cannot use up a real device's share, as in kernel
        // WireGuard.
        self.inits_this_second = self.inits_this_second.saturating_add(1);
        let under_load = self.inits_this_second > HANDSHAKE_RATE_LIMIT;
        if under_load && self.budget.admit(from.ip(), Instant::now()).is_err() {
            self.counters.handshakes_limited += 1;
            return None;
        }
        let Ok(half) = parse_handshake_anon(&self.secret, &self.public, init) else {
            self.counters.invalid += 1;
            return None;
        };
        match self.peers.by_key(&half.peer_static_public) {
            Some(i) => Some(i),
            None => {
                self.counters.unknown_peer += 1;
                self.unknown_unreported += 1;
                let due = self
                    .unknown_reported_at
                    .is_none_or(|t| t.elapsed() >= UNKNOWN_REPORT_EVERY);
                if due {
                    audit::wg_unknown_peer(
                        &b64(&half.peer_static_public),
                        &display_addr(from).to_string(),
                        self.unknown_unreported,
                    );
                    self.unknown_unreported = 0;
                    self.unknown_reported_at = Some(Instant::now());
                }
                None
            }
        }
    }

    /// Decrypts a message of peer `idx`; queues an acceptable packet for the
    /// stack; answers handshakes; learns the endpoint.
    fn decapsulate(
        &mut self,
        idx: usize,
        data: &[u8],
        from: SocketAddr,
        local: Option<IpAddr>,
        kind: Kind,
    ) {
        if data.len() > BUF_SIZE {
            self.counters.oversized += 1;
            return;
        }
        let Some(peer) = self.peers.get_mut(idx) else {
            return;
        };
        let mut buf = self.device.take();
        let mut handshake = false;
        let mut answered_init = None;
        let len = match peer.tunn.decapsulate(Some(from.ip()), data, buf.space()) {
            TunnResult::Done => None,
            TunnResult::Err(_) => {
                self.counters.invalid += 1;
                self.device.give(buf);
                return;
            }
            TunnResult::WriteToNetwork(reply) => {
                send_to(&self.sock, &self.udp, from, local, reply);
                match kind {
                    Kind::Response => handshake = true,
                    Kind::Init => answered_init = Some(response_sender_index(reply)),
                    Kind::Data(_) | Kind::Other => {}
                }
                None
            }
            TunnResult::WriteToTunnelV4(p, _) => Some(p.len()),
            TunnResult::WriteToTunnelV6(p, _) => Some(p.len()),
        };
        if handshake || answered_init.is_some() {
            // Packets queued while there was no session go out now.
            while let TunnResult::WriteToNetwork(p) =
                peer.tunn.decapsulate(None, &[], &mut self.scratch)
            {
                send_to(&self.sock, &self.udp, from, local, p);
            }
        }
        if let Some(index) = answered_init {
            // An initiation proves nothing about its sender: a captured one
            // replays perfectly after a restart (the last timestamp is
            // gone). Answered, it is a handshake only once a data packet
            // arrives on the session it opened; until then it moves no
            // endpoint and writes no audit event.
            if let Some(index) = index {
                peer.unconfirmed.retain(|i| *i != index);
                if peer.unconfirmed.len() >= UNCONFIRMED_KEEP {
                    peer.unconfirmed.remove(0);
                }
                peer.unconfirmed.push(index);
            }
            self.device.give(buf);
            return;
        }
        if let Kind::Data(index) = kind {
            if peer.unconfirmed.contains(&index) {
                peer.unconfirmed.clear();
                handshake = true;
            }
        }
        // The message authenticated as this peer (a data packet, or the
        // answer to the gateway's own initiation): that is where it is now.
        peer.local_ip = local;
        if peer.endpoint != Some(from) {
            if let Some(old) = peer.endpoint {
                audit::wg_endpoint_changed(
                    &peer.cfg.user,
                    &peer.key_b64,
                    &peer.cfg.address.to_string(),
                    &display_addr(old).to_string(),
                    &display_addr(from).to_string(),
                );
            }
            peer.endpoint = Some(from);
        }
        if handshake {
            peer.last_handshake = Some(SystemTime::now());
            audit::wg_handshake(
                &peer.cfg.user,
                &peer.key_b64,
                &peer.cfg.address.to_string(),
                &display_addr(from).to_string(),
                if kind == Kind::Response {
                    "gateway"
                } else {
                    "peer"
                },
            );
        }
        let Some(len) = len else {
            self.device.give(buf);
            return;
        };
        buf.set_len(len);
        match packet::classify(buf.bytes(), peer.cfg.address, self.gateway) {
            Verdict::Accept(a) => {
                buf.peer = idx;
                buf.syn = a.syn;
                // The peer's ACKs may say a segment was lost: send it again
                // ahead of new data (see `recovery`).
                if let Some(again) = self.recovery.on_receive(buf.bytes(), Instant::now()) {
                    send_again(&mut self.device, again);
                }
                self.device.rx.push_back(buf);
                return;
            }
            Verdict::Spoofed(claimed) => {
                self.counters.spoofed += 1;
                peer.spoofed += 1;
                let due = peer
                    .spoof_reported_at
                    .is_none_or(|t| t.elapsed() >= SPOOF_REPORT_EVERY);
                if due {
                    audit::wg_spoofed(
                        &peer.cfg.user,
                        &peer.key_b64,
                        &peer.cfg.address.to_string(),
                        &claimed.to_string(),
                        peer.spoofed,
                    );
                    peer.spoof_reported_at = Some(Instant::now());
                    peer.spoofed_reported = peer.spoofed;
                }
            }
            Verdict::NotForGateway(_) => self.counters.not_for_gateway += 1,
            Verdict::Protocol(_) => self.counters.protocol += 1,
            Verdict::Malformed => self.counters.malformed += 1,
        }
        self.device.give(buf);
    }

    /// Hands accepted connections to the service; audits opens, closes and
    /// refusals.
    fn connections(
        &mut self,
        accepted: Vec<Accepted>,
        closed: Vec<Closed>,
        refused: Vec<(usize, SocketAddr, u16, Refusal)>,
    ) {
        for a in accepted {
            // A device removed by a reload while this one was connecting.
            if self.peers.get(a.peer).is_none_or(|p| p.removed) {
                drop(TunnelStream::new(self.shared.clone(), a.handle));
                continue;
            }
            // The device whose key authenticated the connection's packets
            // is the one whose tunnel address is its source: anything else
            // is a connection booked to the wrong device, never handed on.
            if self.peers.by_addr(&a.remote.ip()) != Some(a.peer) {
                self.counters.misbooked += 1;
                if let Some(peer) = self.peers.get(a.peer) {
                    audit::wg_conn_refused(
                        &peer.cfg.user,
                        &peer.key_b64,
                        &a.remote.to_string(),
                        a.local.port(),
                        "the connection's packets came from another device",
                    );
                }
                drop(TunnelStream::new(self.shared.clone(), a.handle));
                continue;
            }
            let Some(peer) = self.peers.get(a.peer) else {
                drop(TunnelStream::new(self.shared.clone(), a.handle));
                continue;
            };
            audit::wg_conn_open(
                &peer.cfg.user,
                &peer.key_b64,
                &a.remote.to_string(),
                a.local.port(),
            );
            let info = Peer {
                user: peer.cfg.user.clone(),
                public_key: peer.cfg.public_key,
                tunnel_address: peer.cfg.address,
                endpoint: peer.endpoint.map(display_addr),
                remote: a.remote,
                local: a.local,
            };
            let stream = TunnelStream::new(self.shared.clone(), a.handle);
            (self.service)(stream, info);
        }
        for c in closed {
            self.recovery
                .forget((c.remote.ip(), c.remote.port(), c.port));
            let Some(peer) = self.peers.get(c.peer) else {
                continue;
            };
            audit::wg_conn_close(
                &peer.cfg.user,
                &peer.key_b64,
                &c.remote.to_string(),
                c.port,
                c.bytes_in,
                c.bytes_out,
                u64::try_from(c.duration.as_millis()).unwrap_or(u64::MAX),
                c.reason,
            );
        }
        for (idx, remote, port, why) in refused {
            self.counters.refused += 1;
            let Some(peer) = self.peers.get_mut(idx) else {
                continue;
            };
            let due = peer
                .refused_reported_at
                .is_none_or(|t| t.elapsed() >= SPOOF_REPORT_EVERY);
            if due {
                peer.refused_reported_at = Some(Instant::now());
                audit::wg_conn_refused(
                    &peer.cfg.user,
                    &peer.key_b64,
                    &remote.to_string(),
                    port,
                    why.reason(),
                );
            }
        }
    }

    /// Runs the loss-recovery probe timer (at most every [`RECOVERY_POLL`],
    /// and only while sent data is unacknowledged).
    fn probe_losses(&mut self) {
        if self.recovery.kept_bytes() == 0 {
            self.recovery_due = None;
            return;
        }
        let now = Instant::now();
        if now.saturating_duration_since(self.recovery_polled) < RECOVERY_POLL
            && self.recovery_due.is_none_or(|d| d > now)
        {
            return;
        }
        self.recovery_polled = now;
        let device = &mut self.device;
        self.recovery_due = self.recovery.poll(now, |p| send_again(device, p));
    }

    /// Encrypts queued packets into GSO batches and sends them. Returns true
    /// when the socket is full (the rest waits for it to drain).
    pub(super) fn transmit(&mut self) -> bool {
        let max_segments = self.udp.max_gso_segments().max(1);
        let now = Instant::now();
        while let Some(pkt) = self.device.pop_tx() {
            let route = packet::destination(pkt.bytes())
                .and_then(|d| self.peers.by_addr(&d))
                .and_then(|i| {
                    let p = self.peers.get(i)?;
                    Some((i, p.endpoint?, p.local_ip))
                });
            let Some((idx, dest, src_ip)) = route else {
                // A peer that never sent anything authenticated has no
                // endpoint: there is nowhere to send to.
                self.device.give(pkt);
                continue;
            };
            let need = pkt.bytes().len() + 32;
            if !self.out.fits(dest, need, max_segments) && !self.flush() {
                self.device.unpop_tx(pkt);
                return true;
            }
            self.recovery.on_send(pkt.bytes(), now);
            let off = self.out.len;
            let room = need.max(HANDSHAKE_INIT_SIZE);
            let Some(peer) = self.peers.get_mut(idx) else {
                self.device.give(pkt);
                continue;
            };
            let Some(region) = self.out.buf.get_mut(off..off + room) else {
                self.device.give(pkt);
                continue;
            };
            let written = match peer.tunn.encapsulate(pkt.bytes(), region) {
                TunnResult::WriteToNetwork(o) => o.len(),
                _ => 0, // queued until a session exists
            };
            self.device.give(pkt);
            if written == 0 {
                continue;
            }
            let b = &mut self.out;
            if b.count == 0 {
                b.dest = Some(dest);
                b.src_ip = src_ip;
                b.seg = written;
                b.count = 1;
                b.len = written;
            } else if written == b.seg {
                b.count += 1;
                b.len += written;
            } else if written < b.seg {
                b.count += 1;
                b.len += written;
                b.closed = true;
            } else {
                // Longer than the batch's segments (a handshake initiation
                // among tiny ACKs): on its own.
                if let Some(d) = b.buf.get(off..off + written) {
                    send_to(&self.sock, &self.udp, dest, src_ip, d);
                }
            }
        }
        !self.flush()
    }

    /// Sends the batch; false if the socket is full (the batch is kept).
    fn flush(&mut self) -> bool {
        let b = &mut self.out;
        if b.count == 0 {
            return true;
        }
        let Some(dest) = b.dest else {
            b.clear();
            return true;
        };
        let Some(contents) = b.buf.get(..b.len) else {
            b.clear();
            return true;
        };
        let t = Transmit {
            destination: dest,
            ecn: None,
            contents,
            segment_size: (b.count > 1).then_some(b.seg),
            src_ip: b.src_ip,
        };
        let (sock, udp) = (&self.sock, &self.udp);
        match sock.try_io(Interest::WRITABLE, || udp.send(sock.into(), &t)) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => false,
            _ => {
                b.clear();
                true
            }
        }
    }

    /// WireGuard timers of every peer that has an endpoint.
    fn timers(&mut self) {
        // boringtun resets its count once a second at most.
        self.limiter.reset_count();
        if self.inits_reset_at.elapsed() >= Duration::from_secs(1) {
            self.inits_this_second = 0;
            self.inits_reset_at = Instant::now();
        }
        for peer in self.peers.iter_mut() {
            let Some(ep) = peer.endpoint else { continue };
            if let TunnResult::WriteToNetwork(p) = peer.tunn.update_timers(&mut self.scratch) {
                send_to(&self.sock, &self.udp, ep, peer.local_ip, p);
            }
        }
    }

    /// After a restart: peers that had a session shortly before are sent a
    /// handshake initiation at their last endpoint, so their clients
    /// recover at once instead of after their own rekey timeout.
    fn resume(&mut self) {
        let Some(path) = &self.status_path else {
            return;
        };
        let Some(old) = status::read(path) else {
            return;
        };
        let now = unix(SystemTime::now());
        for ps in old.peers {
            let (Some(ep), Some(at)) = (ps.endpoint.as_deref(), ps.last_handshake_unix) else {
                continue;
            };
            if now.saturating_sub(at) > RESUME_WITHIN.as_secs() {
                continue;
            }
            let Ok(ep) = ep.parse::<SocketAddr>() else {
                continue;
            };
            let ep = match (ep.ip(), self.v6_socket) {
                (IpAddr::V4(v4), true) => {
                    SocketAddr::new(IpAddr::V6(v4.to_ipv6_mapped()), ep.port())
                }
                _ => ep,
            };
            let Some(key) = super::keys::parse_b64(&ps.public_key) else {
                continue;
            };
            let Some(i) = self.peers.by_key(&key) else {
                continue;
            };
            let Some(peer) = self.peers.get_mut(i) else {
                continue;
            };
            peer.endpoint = Some(ep);
            if let TunnResult::WriteToNetwork(p) = peer
                .tunn
                .format_handshake_initiation(&mut self.scratch, false)
            {
                tracing::info!(user = %peer.cfg.user, address = %peer.cfg.address, endpoint = %display_addr(ep),
                    "WireGuard: re-initiating the session of a device active before the restart");
                send_to(&self.sock, &self.udp, ep, None, p);
            }
        }
    }

    /// Hands the tunnel's counters to the metrics (with the status file).
    fn publish_metrics(&self) {
        let c = &self.counters;
        crate::metrics::wireguard(crate::metrics::WireGuardCounters {
            peers: self.peers.iter().count() as u64,
            dropped: [
                c.invalid,
                c.unknown_peer,
                c.handshakes_limited,
                c.oversized,
                c.spoofed,
                c.not_for_gateway,
                c.protocol,
                c.malformed,
                c.misbooked,
                c.refused,
            ],
            resent: self.recovery.stats.resent,
        });
    }

    /// Writes the status file (in the background unless `now`).
    pub(super) fn write_status(&mut self, now: bool) {
        let Some(path) = self.status_path.clone() else {
            return;
        };
        let (total, per_peer, mismatched): (usize, Vec<usize>, u64) = {
            let st = self.shared.lock();
            (
                st.connections(),
                self.peers
                    .iter_indexed()
                    .map(|(i, _)| st.peer_connections(i))
                    .collect(),
                st.mismatched(),
            )
        };
        let peers = self
            .peers
            .iter()
            .zip(per_peer)
            .map(|(p, conns)| {
                let (_, tx, rx, _, _) = p.tunn.stats();
                PeerStatus {
                    user: p.cfg.user.clone(),
                    public_key: p.key_b64.clone(),
                    address: p.cfg.address.to_string(),
                    endpoint: p.endpoint.map(|e| display_addr(e).to_string()),
                    last_handshake_unix: p.last_handshake.map(unix),
                    rx_bytes: rx as u64,
                    tx_bytes: tx as u64,
                    connections: conns,
                    spoofed_dropped: p.spoofed,
                }
            })
            .collect();
        let s = Status {
            pid: std::process::id(),
            written_unix: unix(SystemTime::now()),
            listen: self.listen.to_string(),
            address: self.gateway.to_string(),
            public_key: b64(self.public.as_bytes()),
            connections: total,
            counters: Counters {
                tcp_resent: self.recovery.stats.resent,
                tcp_recoveries: self.recovery.stats.recoveries,
                tcp_probes: self.recovery.stats.probes,
                misbooked: self.counters.misbooked.saturating_add(mismatched),
                ..self.counters.clone()
            },
            peers,
        };
        let write = move || {
            if let Err(e) = status::write(&path, &s) {
                tracing::warn!(error = %e, "cannot write the WireGuard status file");
            }
        };
        if now {
            write();
        } else {
            drop(tokio::task::spawn_blocking(write));
        }
    }
}
