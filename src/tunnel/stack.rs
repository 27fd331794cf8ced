//! The userspace TCP/IP stack (smoltcp) and its connection table.
//!
//! smoltcp has no listen backlog, so a socket is allocated when a SYN for a
//! service port arrives — if the sending peer is under its connection cap
//! and the total is under the gateway's — and fed that one SYN. A SYN that
//! gets no socket (cap reached, or a port no service listens on) is answered
//! with a RST by smoltcp; a packet for any other address never gets here.
//! Once the handshake completes the connection is handed to the service as a
//! [`super::TunnelStream`].
//!
//! The stack lives behind one mutex shared by the tunnel thread (which feeds
//! packets in and takes packets out) and the streams (which read and write
//! the sockets' buffers directly: the socket buffers are the only buffers).
//! Each connection's buffers are sized from a global budget so that the
//! data in flight stays bounded however many connections are open.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use smoltcp::iface::{Config, Interface, PollIngressSingleResult, SocketHandle, SocketSet};
use smoltcp::socket::tcp;
use smoltcp::time::Instant as SInstant;
use smoltcp::wire::{HardwareAddress, IpAddress, IpCidr, IpListenEndpoint};
use tokio::sync::Notify;

use super::device::Device;

/// Largest per-direction TCP buffer of one connection (window scaling lets
/// the peer keep this much in flight).
pub const TCP_BUFFER_MAX: usize = 256 * 1024;
/// Smallest per-direction buffer, when many connections share the budget.
pub const TCP_BUFFER_MIN: usize = 16 * 1024;
/// The elastic part of all connections' buffers (both directions): beyond
/// it every connection gets [`TCP_BUFFER_MIN`], so the total stays below
/// this plus `2 * TCP_BUFFER_MIN` per connection (256 MiB at the default
/// cap of 4096 connections).
pub const TCP_BUFFER_BUDGET: usize = 128 * 1024 * 1024;

/// A connection that has not finished its TCP handshake by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Keepalive probes on idle connections, and the time after which an
/// unanswered connection is aborted (a laptop that went away).
const KEEPALIVE: Duration = Duration::from_secs(30);
const USER_TIMEOUT: Duration = Duration::from_secs(120);
/// After the service drops its stream, the peer has this long to finish
/// the close before the connection is reset.
const LINGER: Duration = Duration::from_secs(20);

/// Where a connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// SYN received, handshake not complete.
    Pending,
    /// Handed to the service.
    Open,
    /// The service dropped its stream at this time; closing.
    Released(SInstant),
}

/// One TCP connection of a peer.
#[derive(Debug)]
struct Conn {
    peer: usize,
    remote: SocketAddr,
    port: u16,
    phase: Phase,
    opened: std::time::Instant,
    bytes_in: u64,
    bytes_out: u64,
    /// Reset by us after the linger time.
    reset: bool,
    /// Its buffers' size (both directions).
    buffers: usize,
}

/// A connection that completed its handshake: to be handed to the service.
#[derive(Debug)]
pub struct Accepted {
    pub handle: SocketHandle,
    pub peer: usize,
    pub remote: SocketAddr,
    pub local: SocketAddr,
}

/// A connection that is gone: to be audited.
#[derive(Debug)]
pub struct Closed {
    pub peer: usize,
    pub remote: SocketAddr,
    pub port: u16,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub duration: Duration,
    pub reason: &'static str,
}

/// Why a SYN got no socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    PeerCap,
    TotalCap,
    ShuttingDown,
}

impl Refusal {
    pub fn reason(self) -> &'static str {
        match self {
            Refusal::PeerCap => "the device's connection limit is reached",
            Refusal::TotalCap => "the gateway's tunnel connection limit is reached",
            Refusal::ShuttingDown => "gatehouse is shutting down",
        }
    }
}

/// The stack and its connections.
pub struct Stack {
    iface: Interface,
    sockets: SocketSet<'static>,
    conns: HashMap<SocketHandle, Conn>,
    by_tuple: HashMap<(IpAddr, u16, u16), SocketHandle>,
    per_peer: HashMap<usize, usize>,
    pending: Vec<SocketHandle>,
    released: Vec<SocketHandle>,
    gateway: IpAddr,
    ports: Vec<u16>,
    max_per_peer: usize,
    max_total: usize,
    accepting: bool,
    /// Connections dropped by the 4-tuple check before being handed on.
    mismatched: u64,
    /// Bytes of socket buffers allocated (both directions, all sockets).
    allocated: usize,
    epoch: std::time::Instant,
}

/// What the tunnel thread and the streams share.
pub struct Shared {
    stack: Mutex<Stack>,
    /// Wakes the tunnel thread: a stream wrote data, read enough to open
    /// the window, or was dropped.
    pub wake: Notify,
}

/// Settings of the stack.
pub struct StackConfig {
    pub gateway: IpAddr,
    pub prefix_len: u8,
    pub ports: Vec<u16>,
    pub max_per_peer: usize,
    pub max_total: usize,
    pub random_seed: u64,
}

impl Shared {
    pub fn new(cfg: StackConfig, device: &mut Device) -> Arc<Shared> {
        let epoch = std::time::Instant::now();
        let mut config = Config::new(HardwareAddress::Ip);
        config.random_seed = cfg.random_seed;
        let mut iface = Interface::new(config, device, SInstant::from_micros(0));
        iface.update_ip_addrs(|addrs| {
            let _ = addrs.push(IpCidr::new(IpAddress::from(cfg.gateway), cfg.prefix_len));
        });
        Arc::new(Shared {
            stack: Mutex::new(Stack {
                iface,
                sockets: SocketSet::new(Vec::new()),
                conns: HashMap::new(),
                by_tuple: HashMap::new(),
                per_peer: HashMap::new(),
                pending: Vec::new(),
                released: Vec::new(),
                gateway: cfg.gateway,
                ports: cfg.ports,
                max_per_peer: cfg.max_per_peer,
                max_total: cfg.max_total,
                accepting: true,
                mismatched: 0,
                allocated: 0,
                epoch,
            }),
            wake: Notify::new(),
        })
    }

    /// Locks the stack. A panic elsewhere while holding it does not make
    /// the tunnel unusable: the data is plain buffers and counters.
    pub fn lock(&self) -> MutexGuard<'_, Stack> {
        self.stack.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `AsyncRead` for a connection: straight from the socket's buffer.
    pub fn poll_read(
        &self,
        handle: SocketHandle,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let mut st = self.lock();
        let Stack { sockets, conns, .. } = &mut *st;
        let Some(sock) = conn_socket(sockets, conns, handle) else {
            return Poll::Ready(Ok(()));
        };
        if sock.can_recv() {
            let before = sock.recv_queue();
            let cap = sock.recv_capacity();
            match sock.recv_slice(buf.initialize_unfilled()) {
                Ok(n) => {
                    buf.advance(n);
                    if let Some(c) = conns.get_mut(&handle) {
                        c.bytes_in = c.bytes_in.saturating_add(n as u64);
                    }
                    drop(st);
                    // The window the peer sees was at most half open: tell
                    // the tunnel thread so that it advertises the new one.
                    if before.saturating_mul(2) >= cap {
                        self.wake.notify_one();
                    }
                    return Poll::Ready(Ok(()));
                }
                Err(tcp::RecvError::Finished) => return Poll::Ready(Ok(())),
                Err(tcp::RecvError::InvalidState) => {
                    return Poll::Ready(Err(io::ErrorKind::NotConnected.into()))
                }
            }
        }
        if !sock.may_recv() {
            // FIN received, reset, or timed out: end of stream.
            return Poll::Ready(Ok(()));
        }
        sock.register_recv_waker(cx.waker());
        Poll::Pending
    }

    /// `AsyncWrite` for a connection: straight into the socket's buffer.
    pub fn poll_write(
        &self,
        handle: SocketHandle,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let mut st = self.lock();
        let Stack { sockets, conns, .. } = &mut *st;
        let Some(sock) = conn_socket(sockets, conns, handle) else {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        };
        if !sock.may_send() {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        if sock.can_send() {
            let n = sock.send_slice(data).unwrap_or(0);
            if let Some(c) = conns.get_mut(&handle) {
                c.bytes_out = c.bytes_out.saturating_add(n as u64);
            }
            drop(st);
            self.wake.notify_one();
            return Poll::Ready(Ok(n));
        }
        sock.register_send_waker(cx.waker());
        Poll::Pending
    }

    /// `AsyncWrite::poll_shutdown`: FIN after the queued data.
    pub fn shutdown(&self, handle: SocketHandle) {
        let mut st = self.lock();
        let Stack { sockets, conns, .. } = &mut *st;
        if let Some(sock) = conn_socket(sockets, conns, handle) {
            sock.close();
        }
        drop(st);
        self.wake.notify_one();
    }

    /// The service dropped its stream: close, and let the tunnel thread reap.
    pub fn release(&self, handle: SocketHandle) {
        let mut st = self.lock();
        let now = st.now();
        let Stack { sockets, conns, .. } = &mut *st;
        if let Some(c) = conns.get_mut(&handle) {
            c.phase = Phase::Released(now);
        }
        if let Some(sock) = conn_socket(sockets, conns, handle) {
            sock.close();
        }
        st.released.push(handle);
        drop(st);
        self.wake.notify_one();
    }
}

/// The socket of a connection. Every handle in `conns` refers to a TCP
/// socket in `sockets` (they are added and removed together), which is what
/// makes smoltcp's panicking `get_mut` safe to call here.
fn conn_socket<'a>(
    sockets: &'a mut SocketSet<'static>,
    conns: &HashMap<SocketHandle, Conn>,
    handle: SocketHandle,
) -> Option<&'a mut tcp::Socket<'static>> {
    conns
        .contains_key(&handle)
        .then(|| sockets.get_mut::<tcp::Socket>(handle))
}

impl Stack {
    /// smoltcp's clock.
    pub fn now(&self) -> SInstant {
        SInstant::from_micros(i64::try_from(self.epoch.elapsed().as_micros()).unwrap_or(i64::MAX))
    }

    /// Stops allocating sockets for new connections (shutdown).
    pub fn stop_accepting(&mut self) {
        self.accepting = false;
    }

    /// Live connections.
    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    /// Live connections of one peer.
    pub fn peer_connections(&self, peer: usize) -> usize {
        self.per_peer.get(&peer).copied().unwrap_or(0)
    }

    /// A device was removed (a reload): aborts every connection of `peer`.
    /// Their streams read end-of-stream and fail writes at once, so the
    /// services behind them end; each is reaped (and audited) as usual
    /// when its service lets go. Returns how many were aborted.
    pub fn abort_peer(&mut self, peer: usize) -> usize {
        let handles: Vec<SocketHandle> = self
            .conns
            .iter()
            .filter(|(_, c)| c.peer == peer)
            .map(|(h, _)| *h)
            .collect();
        for h in &handles {
            if let Some(s) = conn_socket(&mut self.sockets, &self.conns, *h) {
                s.abort();
            }
        }
        handles.len()
    }

    /// Feeds every queued packet to the stack, allocating a socket for each
    /// acceptable SYN first. Returns the refusals (peer, remote, port, why).
    pub fn ingress(&mut self, device: &mut Device) -> Vec<(usize, SocketAddr, u16, Refusal)> {
        let mut refused = Vec::new();
        let now = self.now();
        while let Some(front) = device.rx.front() {
            // The segment's own 4-tuple (source address, source port,
            // destination port), read from the packet itself.
            let segment =
                super::packet::tcp_segment(front.bytes()).map(|s| (s.src, s.src_port, s.dst_port));
            let mut listener = None;
            if let Some(syn) = front.syn {
                let peer = front.peer;
                let src = super::packet::source(front.bytes());
                if let Some(src) = src {
                    let tuple = (src, syn.src_port, syn.dst_port);
                    if self.ports.contains(&syn.dst_port) && !self.by_tuple.contains_key(&tuple) {
                        match self.admit(peer) {
                            Ok(()) => {
                                listener = self
                                    .listen(syn.dst_port)
                                    .map(|(h, size)| (h, size, peer, tuple));
                            }
                            Err(why) => refused.push((
                                peer,
                                SocketAddr::new(src, syn.src_port),
                                syn.dst_port,
                                why,
                            )),
                        }
                    }
                }
            }
            let r = self
                .iface
                .poll_ingress_single(now, device, &mut self.sockets);
            if let Some((h, size, peer, (ip, sport, dport))) = listener {
                // `h` was added just above and nothing removed it since.
                let sock = self.sockets.get::<tcp::Socket>(h);
                let state = sock.state();
                // Taken by this very SYN: its remote end is the SYN's
                // source. Anything else never becomes a connection.
                let own = sock.remote_endpoint()
                    == Some(smoltcp::wire::IpEndpoint::new(IpAddress::from(ip), sport))
                    && sock.local_endpoint().map(|e| e.port) == Some(dport);
                let taken = state != tcp::State::Listen && state != tcp::State::Closed && own;
                if taken {
                    self.conns.insert(
                        h,
                        Conn {
                            peer,
                            remote: SocketAddr::new(ip, sport),
                            port: dport,
                            phase: Phase::Pending,
                            opened: std::time::Instant::now(),
                            bytes_in: 0,
                            bytes_out: 0,
                            reset: false,
                            buffers: 2 * size,
                        },
                    );
                    self.by_tuple.insert((ip, sport, dport), h);
                    *self.per_peer.entry(peer).or_insert(0) += 1;
                    self.pending.push(h);
                } else {
                    self.sockets.remove(h);
                    self.allocated = self.allocated.saturating_sub(2 * size);
                }
            } else if let Some(tuple) = segment {
                self.settle(tuple);
            }
            if r == PollIngressSingleResult::None {
                break;
            }
        }
        refused
    }

    /// After a segment of `tuple` was processed: a connection that had not
    /// completed its handshake and is no longer bound to its remote end (a
    /// RST in SYN-RECEIVED turns smoltcp's socket back into a listener) is
    /// removed at once. A listener left behind would take the next SYN
    /// from any device while still booked to the device that sent the RST.
    fn settle(&mut self, tuple: (IpAddr, u16, u16)) {
        let Some(&h) = self.by_tuple.get(&tuple) else {
            return;
        };
        let pending = self
            .conns
            .get(&h)
            .is_some_and(|c| c.phase == Phase::Pending);
        if !pending {
            return;
        }
        let bound = conn_socket(&mut self.sockets, &self.conns, h).is_some_and(|s| {
            !matches!(s.state(), tcp::State::Listen | tcp::State::Closed)
                && s.remote_endpoint().is_some()
        });
        if !bound {
            self.pending.retain(|p| *p != h);
            self.remove(h);
        }
    }

    /// Sends what the sockets have to send, until the device queue is full.
    pub fn egress(&mut self, device: &mut Device) {
        let now = self.now();
        self.iface.poll_maintenance(now);
        while device.tx_len() < super::device::TX_QUEUE {
            if self.iface.poll_egress(now, device, &mut self.sockets)
                == smoltcp::iface::PollResult::None
            {
                break;
            }
        }
    }

    /// How long until the stack wants to be polled again.
    pub fn poll_delay(&mut self) -> Option<Duration> {
        let now = self.now();
        self.iface
            .poll_delay(now, &self.sockets)
            .map(|d| Duration::from_micros(d.total_micros()))
    }

    fn admit(&self, peer: usize) -> Result<(), Refusal> {
        if !self.accepting {
            return Err(Refusal::ShuttingDown);
        }
        if self.peer_connections(peer) >= self.max_per_peer {
            return Err(Refusal::PeerCap);
        }
        if self.conns.len() >= self.max_total {
            return Err(Refusal::TotalCap);
        }
        Ok(())
    }

    /// A fresh listening socket for one SYN, with buffers from the budget.
    fn listen(&mut self, port: u16) -> Option<(SocketHandle, usize)> {
        let size = buffer_size(self.allocated);
        let rx = tcp::SocketBuffer::new(vec![0u8; size]);
        let tx = tcp::SocketBuffer::new(vec![0u8; size]);
        let mut s = tcp::Socket::new(rx, tx);
        s.set_nagle_enabled(false);
        s.set_ack_delay(None);
        s.set_congestion_control(congestion());
        s.set_timeout(Some(HANDSHAKE_TIMEOUT.into()));
        let ep = IpListenEndpoint {
            addr: Some(IpAddress::from(self.gateway)),
            port,
        };
        s.listen(ep).ok()?;
        self.allocated += 2 * size;
        Some((self.sockets.add(s), size))
    }

    /// Connections whose handshake completed (to hand to the service), and
    /// connections that are over (to audit), in one pass over the few
    /// pending and released ones.
    pub fn housekeeping(&mut self) -> (Vec<Accepted>, Vec<Closed>) {
        let now = self.now();
        let mut accepted = Vec::new();
        let mut closed = Vec::new();
        let pending = std::mem::take(&mut self.pending);
        for h in pending {
            let state = conn_socket(&mut self.sockets, &self.conns, h).map(|s| s.state());
            match state {
                Some(tcp::State::SynReceived) => {
                    let stale = self
                        .conns
                        .get(&h)
                        .is_some_and(|c| c.opened.elapsed() > HANDSHAKE_TIMEOUT);
                    if stale {
                        self.remove(h);
                    } else {
                        self.pending.push(h);
                    }
                }
                Some(tcp::State::Established) | Some(tcp::State::CloseWait)
                    if !self.matches_its_tuple(h) =>
                {
                    // Its packets came from another 4-tuple than the one it
                    // was booked to: never handed to a service.
                    if let Some(s) = conn_socket(&mut self.sockets, &self.conns, h) {
                        s.abort();
                    }
                    self.mismatched = self.mismatched.saturating_add(1);
                    self.remove(h);
                }
                Some(tcp::State::Established) | Some(tcp::State::CloseWait) => {
                    if let Some(s) = conn_socket(&mut self.sockets, &self.conns, h) {
                        s.set_timeout(Some(USER_TIMEOUT.into()));
                        s.set_keep_alive(Some(KEEPALIVE.into()));
                    }
                    if let Some(c) = self.conns.get_mut(&h) {
                        c.phase = Phase::Open;
                        accepted.push(Accepted {
                            handle: h,
                            peer: c.peer,
                            remote: c.remote,
                            local: SocketAddr::new(self.gateway, c.port),
                        });
                    }
                }
                // Reset, timed out, or back to Listen after a RST: it never
                // became a connection.
                _ => {
                    self.remove(h);
                }
            }
        }
        let released = std::mem::take(&mut self.released);
        for h in released {
            let Some(since) = self.conns.get(&h).map(|c| c.phase) else {
                continue;
            };
            let Some(state) = conn_socket(&mut self.sockets, &self.conns, h).map(|s| s.state())
            else {
                continue;
            };
            let done = matches!(state, tcp::State::Closed | tcp::State::TimeWait);
            let expired = matches!(since, Phase::Released(t) if now - t > LINGER.into());
            if done {
                if let Some(c) = self.remove(h) {
                    closed.push(Closed {
                        peer: c.peer,
                        remote: c.remote,
                        port: c.port,
                        bytes_in: c.bytes_in,
                        bytes_out: c.bytes_out,
                        duration: c.opened.elapsed(),
                        reason: if c.reset {
                            "reset: the peer did not finish closing"
                        } else {
                            "closed"
                        },
                    });
                }
                continue;
            }
            if expired {
                // The next egress sends the RST; the pass after removes it.
                if let Some(s) = conn_socket(&mut self.sockets, &self.conns, h) {
                    s.abort();
                }
                if let Some(c) = self.conns.get_mut(&h) {
                    c.reset = true;
                }
            }
            self.released.push(h);
        }
        (accepted, closed)
    }

    /// Whether connection `h`'s socket is bound to exactly the remote end
    /// and port it was booked with.
    fn matches_its_tuple(&mut self, h: SocketHandle) -> bool {
        let Some((remote, port)) = self.conns.get(&h).map(|c| (c.remote, c.port)) else {
            return false;
        };
        let gateway = self.gateway;
        conn_socket(&mut self.sockets, &self.conns, h).is_some_and(|s| {
            s.remote_endpoint()
                == Some(smoltcp::wire::IpEndpoint::new(
                    IpAddress::from(remote.ip()),
                    remote.port(),
                ))
                && s.local_endpoint()
                    == Some(smoltcp::wire::IpEndpoint::new(
                        IpAddress::from(gateway),
                        port,
                    ))
        })
    }

    /// Connections dropped because their socket was not bound to the
    /// 4-tuple they were booked with (should stay 0).
    pub fn mismatched(&self) -> u64 {
        self.mismatched
    }

    fn remove(&mut self, h: SocketHandle) -> Option<Conn> {
        let c = self.conns.remove(&h)?;
        self.sockets.remove(h);
        self.allocated = self.allocated.saturating_sub(c.buffers);
        self.by_tuple
            .remove(&(c.remote.ip(), c.remote.port(), c.port));
        if let Some(n) = self.per_peer.get_mut(&c.peer) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.per_peer.remove(&c.peer);
            }
        }
        Some(c)
    }
}

/// smoltcp has no SACK: a burst that overruns the peer's receive path (a
/// wireguard-go client with default 208 KiB socket buffers drops most of a
/// 256 KiB burst) costs a retransmission timeout per hole, and without a
/// congestion window the connection stalls outright. CUBIC keeps the bursts
/// to what the path delivers.
fn congestion() -> tcp::CongestionControl {
    tcp::CongestionControl::Cubic
}

/// Per-direction buffer size for a new connection when `allocated` bytes
/// of buffers exist: a slice of what is left of the budget, between
/// [`TCP_BUFFER_MIN`] and [`TCP_BUFFER_MAX`]. The first few hundred
/// connections get full-size buffers; after that they shrink, so that the
/// total converges below the budget instead of growing with the count.
pub fn buffer_size(allocated: usize) -> usize {
    let share = TCP_BUFFER_BUDGET.saturating_sub(allocated) / 64;
    share.clamp(TCP_BUFFER_MIN, TCP_BUFFER_MAX) & !4095
}

#[cfg(test)]
#[allow(clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::tunnel::packet::{classify, Verdict};
    use smoltcp::phy;
    use std::collections::VecDeque;

    const GW: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 77, 0, 1));
    const PEER: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 77, 0, 10));
    /// A second device (peer index 1).
    const PEER2: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 77, 0, 11));

    /// A client-side device: what the client stack sends is collected in
    /// `out`; what is pushed to `inq` it receives.
    #[derive(Default)]
    struct Pipe {
        inq: VecDeque<Vec<u8>>,
        out: VecDeque<Vec<u8>>,
    }
    struct PRx(Vec<u8>);
    struct PTx<'a>(&'a mut VecDeque<Vec<u8>>);
    impl phy::RxToken for PRx {
        fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
            f(&self.0)
        }
    }
    impl phy::TxToken for PTx<'_> {
        fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
            let mut v = vec![0; len];
            let r = f(&mut v);
            self.0.push_back(v);
            r
        }
    }
    impl phy::Device for Pipe {
        type RxToken<'a> = PRx;
        type TxToken<'a> = PTx<'a>;
        fn receive(&mut self, _: SInstant) -> Option<(PRx, PTx<'_>)> {
            let p = self.inq.pop_front()?;
            Some((PRx(p), PTx(&mut self.out)))
        }
        fn transmit(&mut self, _: SInstant) -> Option<PTx<'_>> {
            Some(PTx(&mut self.out))
        }
        fn capabilities(&self) -> phy::DeviceCapabilities {
            let mut c = phy::DeviceCapabilities::default();
            c.medium = phy::Medium::Ip;
            c.max_transmission_unit = 1420;
            c
        }
    }

    struct Net {
        shared: Arc<Shared>,
        dev: Device,
        client: Interface,
        pipe: Pipe,
        sockets: SocketSet<'static>,
        accepted: Vec<Accepted>,
        t: i64,
    }

    impl Net {
        fn new(max_per_peer: usize) -> Net {
            let mut dev = Device::default();
            let shared = Shared::new(
                StackConfig {
                    gateway: GW,
                    prefix_len: 24,
                    ports: vec![22],
                    max_per_peer,
                    max_total: 100,
                    random_seed: 1,
                },
                &mut dev,
            );
            let mut pipe = Pipe::default();
            let mut cfg = Config::new(HardwareAddress::Ip);
            cfg.random_seed = 2;
            let mut client = Interface::new(cfg, &mut pipe, SInstant::from_millis(0));
            client.update_ip_addrs(|a| {
                let _ = a.push(IpCidr::new(IpAddress::from(PEER), 24));
                let _ = a.push(IpCidr::new(IpAddress::from(PEER2), 24));
            });
            Net {
                shared,
                dev,
                client,
                pipe,
                sockets: SocketSet::new(Vec::new()),
                accepted: Vec::new(),
                t: 0,
            }
        }

        /// Hands a packet to the gateway the way the engine does.
        fn deliver(&mut self, p: &[u8]) {
            // The device is the one whose address the packet comes from
            // (the engine's filter drops anything else).
            let (peer, addr) = match crate::tunnel::packet::source(p) {
                Some(a) if a == PEER2 => (1, PEER2),
                _ => (0, PEER),
            };
            if let Verdict::Accept(a) = classify(p, addr, GW) {
                let mut b = self.dev.take();
                b.space()[..p.len()].copy_from_slice(p);
                b.set_len(p.len());
                b.peer = peer;
                b.syn = a.syn;
                self.dev.rx.push_back(b);
            }
        }

        fn run(&mut self, rounds: usize) {
            for _ in 0..rounds {
                self.t += 10;
                let now = SInstant::from_millis(self.t);
                self.client.poll(now, &mut self.pipe, &mut self.sockets);
                while let Some(p) = self.pipe.out.pop_front() {
                    self.deliver(&p);
                }
                {
                    let mut st = self.shared.lock();
                    st.ingress(&mut self.dev);
                    let (acc, _) = st.housekeeping();
                    self.accepted.extend(acc);
                    st.egress(&mut self.dev);
                }
                while let Some(b) = self.dev.pop_tx() {
                    self.pipe.inq.push_back(b.bytes().to_vec());
                    self.dev.give(b);
                }
            }
        }

        fn connect(&mut self, port: u16) -> SocketHandle {
            self.connect_from(PEER, port)
        }

        fn connect_from(&mut self, addr: IpAddr, port: u16) -> SocketHandle {
            let mut s = tcp::Socket::new(
                tcp::SocketBuffer::new(vec![0; 65536]),
                tcp::SocketBuffer::new(vec![0; 65536]),
            );
            s.connect(
                self.client.context(),
                (IpAddress::from(GW), 22),
                (IpAddress::from(addr), port),
            )
            .unwrap();
            self.sockets.add(s)
        }
    }

    fn read_all(shared: &Shared, h: SocketHandle) -> Vec<u8> {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let mut rb = tokio::io::ReadBuf::new(&mut buf);
            match shared.poll_read(h, &mut cx, &mut rb) {
                Poll::Ready(Ok(())) if !rb.filled().is_empty() => {
                    out.extend_from_slice(rb.filled())
                }
                _ => return out,
            }
        }
    }

    /// A hand-made IPv4/TCP packet from the peer to the gateway.
    fn tcp_packet(sport: u16, dport: u16, seq: u32, ack: u32, flags: u8) -> Vec<u8> {
        let mut t = Vec::new();
        t.extend_from_slice(&sport.to_be_bytes());
        t.extend_from_slice(&dport.to_be_bytes());
        t.extend_from_slice(&seq.to_be_bytes());
        t.extend_from_slice(&ack.to_be_bytes());
        t.extend_from_slice(&[5 << 4, flags, 0x10, 0, 0, 0, 0, 0]);
        let mut p = vec![
            0x45, 0, 0, 40, 0, 0, 0x40, 0, 64, 6, 0, 0, 10, 77, 0, 10, 10, 77, 0, 1,
        ];
        p.extend_from_slice(&t);
        p
    }

    #[test]
    fn a_connection_survives_hostile_packets_and_other_ports_are_reset() {
        let mut net = Net::new(8);
        let h = net.connect(40000);
        net.run(20);
        assert_eq!(net.accepted.len(), 1, "the connection was accepted once");
        let gw_handle = net.accepted[0].handle;
        assert_eq!(net.accepted[0].remote, SocketAddr::new(PEER, 40000));

        // Hostile or broken packets on the same tuple and beside it.
        let junk: Vec<Vec<u8>> = vec![
            tcp_packet(40000, 22, 12345, 999, 0x04), // RST, sequence out of window
            tcp_packet(40000, 22, 1, 0, 0x02),       // SYN again on a live tuple
            tcp_packet(40000, 22, 7, 7, 0x3f),       // every flag
            tcp_packet(40000, 22, 7, 7, 0x10)[..30].to_vec(), // truncated
            vec![0x45; 3],
            tcp_packet(40001, 23, 1, 0, 0x02), // SYN to a port nobody serves
        ];
        for p in &junk {
            net.deliver(p);
        }
        net.run(5);
        assert_eq!(net.accepted.len(), 1, "no second connection from junk");
        // A SYN to another port got a RST, not a socket.
        assert!(net.shared.lock().connections() == 1);

        // The real connection still carries data both ways.
        net.sockets
            .get_mut::<tcp::Socket>(h)
            .send_slice(b"still here")
            .unwrap();
        net.run(10);
        assert_eq!(read_all(&net.shared, gw_handle), b"still here");
        let mut cx = Context::from_waker(std::task::Waker::noop());
        assert!(matches!(
            net.shared.poll_write(gw_handle, &mut cx, b"and back"),
            Poll::Ready(Ok(8))
        ));
        net.run(10);
        let mut buf = [0u8; 64];
        let n = net
            .sockets
            .get_mut::<tcp::Socket>(h)
            .recv_slice(&mut buf)
            .unwrap();
        assert_eq!(&buf[..n], b"and back");
    }

    /// One device sends a SYN and then a RST for it; in the same batch
    /// another device's SYN arrives. The RST turned smoltcp's socket back
    /// into a listener: it must not take the other device's connection
    /// while still booked to the first.
    #[test]
    fn a_syn_after_another_devices_syn_rst_is_booked_to_its_own_device() {
        for rounds in [1usize, 3, 10] {
            let mut net = Net::new(64);
            for i in 0..rounds {
                let sport = 50000 + i as u16;
                net.deliver(&tcp_packet(sport, 22, 1000, 0, 0x02));
                net.deliver(&tcp_packet(sport, 22, 1001, 0, 0x04));
            }
            let h = net.connect_from(PEER2, 41000);
            net.run(20);
            assert_eq!(
                net.sockets.get::<tcp::Socket>(h).state(),
                tcp::State::Established,
                "the second device connected"
            );
            assert_eq!(net.accepted.len(), 1, "{:?}", net.accepted);
            let a = &net.accepted[0];
            assert_eq!(a.peer, 1, "booked to the device that sent it: {a:?}");
            assert_eq!(a.remote, SocketAddr::new(PEER2, 41000));
            let st = net.shared.lock();
            assert_eq!(st.peer_connections(0), 0, "nothing left for the first");
            assert_eq!(st.connections(), 1);
            assert_eq!(st.mismatched(), 0);
        }
    }

    /// A SYN, its RST and the same SYN again from one device: the second
    /// SYN gets a fresh connection on the same tuple, booked to it.
    #[test]
    fn a_tuple_reset_in_syn_received_can_connect_again() {
        let mut net = Net::new(8);
        net.deliver(&tcp_packet(41000, 22, 1000, 0, 0x02));
        net.deliver(&tcp_packet(41000, 22, 1001, 0, 0x04));
        net.run(2);
        assert_eq!(net.shared.lock().connections(), 0);
        let h = net.connect(41000);
        net.run(20);
        assert_eq!(
            net.sockets.get::<tcp::Socket>(h).state(),
            tcp::State::Established
        );
        assert_eq!(net.accepted.len(), 1);
        assert_eq!(net.accepted[0].remote, SocketAddr::new(PEER, 41000));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(48))]
        /// Whatever segments one device sends (SYN, RST, anything, on few
        /// ports so that tuples collide), interleaved with another device's
        /// connection attempt, every connection handed on is booked to the
        /// device and 4-tuple it came from, and the other device connects.
        #[test]
        fn hostile_segments_of_one_device_never_book_a_connection_to_it(
            segs in proptest::collection::vec(
                (0u16..4, proptest::prelude::any::<u32>(), proptest::prelude::any::<u32>(),
                 proptest::prelude::any::<u8>(), 0usize..4, proptest::prelude::any::<bool>()),
                0..40,
            ),
            split in 0usize..40,
        ) {
            let mut net = Net::new(64);
            let (before, after) = segs.split_at(split.min(segs.len()));
            // A segment with arbitrary flags, or a SYN and its RST back to
            // back (the RST turns smoltcp's socket back into a listener).
            let send = |net: &mut Net, (sport, seq, ack, flags, rounds, pair): (u16, u32, u32, u8, usize, bool)| {
                if pair {
                    net.deliver(&tcp_packet(50000 + sport, 22, seq, 0, 0x02));
                    net.deliver(&tcp_packet(50000 + sport, 22, seq.wrapping_add(1), 0, 0x04));
                } else {
                    net.deliver(&tcp_packet(50000 + sport, 22, seq, ack, flags));
                }
                net.run(rounds);
            };
            for &seg in before {
                send(&mut net, seg);
            }
            let h = net.connect_from(PEER2, 41000);
            for &seg in after {
                send(&mut net, seg);
            }
            net.run(20);
            proptest::prop_assert_eq!(
                net.sockets.get::<tcp::Socket>(h).state(),
                tcp::State::Established
            );
            for a in &net.accepted {
                let want = if a.peer == 1 { PEER2 } else { PEER };
                proptest::prop_assert_eq!(a.remote.ip(), want, "{:?}", a);
            }
            proptest::prop_assert!(net
                .accepted
                .iter()
                .any(|a| a.peer == 1 && a.remote == SocketAddr::new(PEER2, 41000)));
        }
    }

    /// One's-complement checksum over `b` (IPv4 header, ICMP).
    fn inet_checksum(b: &[u8]) -> u16 {
        let mut sum: u32 = 0;
        for c in b.chunks(2) {
            let w = u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]);
            sum += u32::from(w);
        }
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        !(sum as u16)
    }

    /// An echo request from the device to the gateway's tunnel address is
    /// answered with an echo reply carrying the same identifier, sequence
    /// and data, with valid IPv4 and ICMP checksums (the device's kernel
    /// checks them), addressed back to the device.
    #[test]
    fn an_echo_request_to_the_gateway_is_answered() {
        let mut net = Net::new(8);
        for size in [0usize, 56, 1392] {
            let mut icmp = vec![8, 0, 0, 0, 0x12, 0x34, 0, 7];
            icmp.extend((0..size).map(|i| i as u8));
            let ck = inet_checksum(&icmp);
            icmp[2..4].copy_from_slice(&ck.to_be_bytes());
            let total = (20 + icmp.len()) as u16;
            let mut p = vec![0x45, 0];
            p.extend_from_slice(&total.to_be_bytes());
            p.extend_from_slice(&[0, 1, 0x40, 0, 64, 1, 0, 0, 10, 77, 0, 10, 10, 77, 0, 1]);
            let ck = inet_checksum(&p);
            p[10..12].copy_from_slice(&ck.to_be_bytes());
            p.extend_from_slice(&icmp);
            net.deliver(&p);
            {
                let mut st = net.shared.lock();
                st.ingress(&mut net.dev);
                st.egress(&mut net.dev);
            }
            let reply = net.dev.pop_tx().expect("an echo reply");
            let r = reply.bytes().to_vec();
            net.dev.give(reply);
            assert_eq!(crate::tunnel::packet::destination(&r), Some(PEER));
            assert_eq!(crate::tunnel::packet::source(&r), Some(GW));
            assert_eq!(r[9], 1, "ICMP");
            assert_eq!(inet_checksum(&r[..20]), 0, "IPv4 header checksum");
            let body = &r[20..];
            assert_eq!(body[0], 0, "echo reply");
            assert_eq!(&body[4..8], &[0x12, 0x34, 0, 7], "identifier and sequence");
            assert_eq!(&body[8..], &icmp[8..], "the same data");
            assert_eq!(inet_checksum(body), 0, "ICMP checksum");
        }
    }

    /// The same over IPv6 (a tunnel range such as `fd00::1/64`).
    #[test]
    fn an_icmpv6_echo_request_to_the_gateway_is_answered() {
        let gw: std::net::Ipv6Addr = "fd00::1".parse().unwrap();
        let peer: std::net::Ipv6Addr = "fd00::10".parse().unwrap();
        let mut dev = Device::default();
        let shared = Shared::new(
            StackConfig {
                gateway: IpAddr::V6(gw),
                prefix_len: 64,
                ports: vec![22],
                max_per_peer: 8,
                max_total: 100,
                random_seed: 1,
            },
            &mut dev,
        );
        let mut icmp = vec![128, 0, 0, 0, 0x12, 0x34, 0, 7];
        icmp.extend_from_slice(b"gatehouse");
        // ICMPv6 checksum over the pseudo-header.
        let mut pseudo = Vec::new();
        pseudo.extend_from_slice(&peer.octets());
        pseudo.extend_from_slice(&gw.octets());
        pseudo.extend_from_slice(&(icmp.len() as u32).to_be_bytes());
        pseudo.extend_from_slice(&[0, 0, 0, 58]);
        pseudo.extend_from_slice(&icmp);
        let ck = inet_checksum(&pseudo);
        icmp[2..4].copy_from_slice(&ck.to_be_bytes());
        let mut p = vec![0x60, 0, 0, 0];
        p.extend_from_slice(&(icmp.len() as u16).to_be_bytes());
        p.extend_from_slice(&[58, 64]);
        p.extend_from_slice(&peer.octets());
        p.extend_from_slice(&gw.octets());
        p.extend_from_slice(&icmp);
        assert!(matches!(
            classify(&p, IpAddr::V6(peer), IpAddr::V6(gw)),
            Verdict::Accept(_)
        ));
        let mut b = dev.take();
        b.space()[..p.len()].copy_from_slice(&p);
        b.set_len(p.len());
        dev.rx.push_back(b);
        {
            let mut st = shared.lock();
            st.ingress(&mut dev);
            st.egress(&mut dev);
        }
        let reply = dev.pop_tx().expect("an echo reply");
        let r = reply.bytes().to_vec();
        assert_eq!(
            crate::tunnel::packet::destination(&r),
            Some(IpAddr::V6(peer))
        );
        assert_eq!(r[6], 58, "ICMPv6");
        assert_eq!(r[40], 129, "echo reply");
        assert_eq!(&r[44..], &icmp[4..], "identifier, sequence and data");
    }

    #[test]
    fn the_per_peer_cap_refuses_further_connections() {
        let mut net = Net::new(2);
        let hs: Vec<_> = (0..3).map(|i| net.connect(41000 + i)).collect();
        net.run(30);
        assert_eq!(net.accepted.len(), 2);
        let refused = hs
            .iter()
            .filter(|h| net.sockets.get::<tcp::Socket>(**h).state() == tcp::State::Closed)
            .count();
        assert_eq!(refused, 1, "the third connection was reset");
    }

    #[test]
    fn buffers_shrink_with_many_connections_but_stay_usable() {
        assert_eq!(buffer_size(0), TCP_BUFFER_MAX);
        let mut allocated = 0;
        let mut sizes = Vec::new();
        for _ in 0..4096 {
            let s = buffer_size(allocated);
            sizes.push(s);
            allocated += 2 * s;
        }
        assert!(sizes[..200].iter().all(|&s| s == TCP_BUFFER_MAX));
        assert!(sizes.iter().all(|&s| s >= TCP_BUFFER_MIN));
        // At the default total cap, the buffers stay within the budget
        // plus the floor.
        assert!(
            allocated <= TCP_BUFFER_BUDGET + 4096 * 2 * TCP_BUFFER_MIN,
            "{allocated}"
        );
        assert!(allocated <= 256 << 20);
    }
}
