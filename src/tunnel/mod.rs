//! WireGuard terminated in the process: boringtun's Noise sessions feed a
//! userspace TCP/IP stack (smoltcp), and each accepted TCP connection is
//! handed to the [`Dispatch`] the daemon gave [`start`], as an ordinary
//! async byte stream plus a [`Source::Device`] naming the device it came
//! through and the local address it reached. The tunnel imports no service:
//! which service answers which port is the dispatch's business.
//!
//! Security behaviour:
//! - One UDP socket serves every configured device. A handshake from a key
//!   that is no configured device gets no answer. A flood of handshake
//!   initiations is answered with cookies (one rate limiter shared by all
//!   peers), not with Diffie-Hellman; initiations that carry a valid
//!   cookie are then held to 20/s per source address (burst 5) and 200/s
//!   in total (burst 50), so handshake work never starves the data of
//!   established devices (`budget`).
//! - A device's tunnel address is bound to its key: a decrypted packet whose
//!   source is not that address is dropped, counted and audited. The source
//!   of a tunnelled connection is therefore cryptographic identity.
//! - Only TCP to the gateway's own tunnel address (and ICMP echo to it) is
//!   accepted. Only the dispatch's ports have listeners — SSH on
//!   [`SSH_PORT`] — and a connection to any other port is reset. Nothing is
//!   routed onward:
//!   there is no TUN device, no route, no forwarding, and no root needed.
//! - Connections are capped per device and in total; buffers come from a
//!   fixed budget, and a slow reader slows the peer instead of growing
//!   memory.
//! - Handshakes, endpoint changes, and connection opens and closes (with
//!   byte counts) are audit events.
//!
//! Layout: [`packet`] (the filter), `device` (queues and buffer pool),
//! `stack` (smoltcp and the connection table), [`TunnelStream`], `peers`
//! (sessions and lookups), `udp` (the socket), `engine` (the loop),
//! [`status`] (the file `gatehouse peers` reads), [`cli`].

#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod budget;
pub mod cli;
mod device;
mod engine;
pub mod keys;
pub mod packet;
mod peers;
mod reconfigure;
mod recovery;
mod stack;
pub mod status;
mod stream;
mod udp;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::x25519::PublicKey;
use tokio::sync::watch;
use tracing::Instrument;

use crate::config::Settings;
use crate::dispatch::{Connection, Dispatch};
use crate::source::{Device, Source};
use crate::state::{StateDir, StateError};

pub use engine::HANDSHAKE_RATE_LIMIT;
pub use keys::PrivateKey;
pub use reconfigure::{NotRunning, PeerChanges, PeerControl};
pub use stream::TunnelStream;

/// The port gatehouse's SSH server listens on at the gateway's tunnel
/// address. Fixed at the standard port (whatever the plain TCP listeners
/// use) so that `ssh -J alice@10.77.0.1 ...` needs no `-p`: the tunnel
/// address belongs to gatehouse alone.
pub const SSH_PORT: u16 = 22;

/// Errors starting the tunnel.
#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    #[error("cannot listen for WireGuard on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start the WireGuard tunnel thread: {0}")]
    Start(#[source] std::io::Error),
    #[error(transparent)]
    State(#[from] StateError),
    #[error("no system randomness")]
    Random,
}

/// One configured device.
#[derive(Clone)]
pub struct PeerConfig {
    /// The user the device belongs to.
    pub user: String,
    pub public_key: [u8; 32],
    /// Its tunnel address (bound to the key).
    pub address: IpAddr,
    /// From the state directory when `gatehouse peer add` made the device.
    pub preshared_key: Option<keys::PresharedKey>,
}

impl std::fmt::Debug for PeerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerConfig")
            .field("user", &self.user)
            .field("public_key", &keys::b64(&self.public_key))
            .field("address", &self.address)
            .field("preshared_key", &self.preshared_key.as_ref().map(|_| "***"))
            .finish()
    }
}

/// Everything the tunnel needs.
#[derive(Debug)]
pub struct TunnelConfig {
    /// The UDP socket address (`[::]:port` takes IPv4 too).
    pub listen: SocketAddr,
    /// The gateway's tunnel address and the peer range's prefix length.
    pub address: IpAddr,
    pub prefix_len: u8,
    pub private_key: PrivateKey,
    pub peers: Vec<PeerConfig>,
    /// TCP ports with a service behind them.
    pub ports: Vec<u16>,
    pub max_connections_per_peer: usize,
    pub max_connections: usize,
    /// Where the running tunnel writes its status (and finds the previous
    /// run's, to re-initiate sessions after a restart).
    pub status_file: Option<PathBuf>,
}

/// The device a tunnelled connection came through.
#[derive(Debug, Clone)]
pub struct Peer {
    pub user: String,
    pub public_key: [u8; 32],
    /// The device's tunnel address (cryptographically bound to its key).
    pub tunnel_address: IpAddr,
    /// Where its UDP packets came from.
    pub endpoint: Option<SocketAddr>,
    /// The connection's source (tunnel address and port).
    pub remote: SocketAddr,
    /// The connection's destination (gateway tunnel address and port).
    pub local: SocketAddr,
}

/// What is done with an accepted connection. Called on the tunnel thread:
/// it must not block (spawn a task).
pub type Service = Arc<dyn Fn(TunnelStream, Peer) + Send + Sync>;

/// A running tunnel. The thread stops after its shutdown receiver fires and
/// its connections closed (or a grace period passed).
#[derive(Debug)]
pub struct Tunnel {
    local_addr: SocketAddr,
    public_key: [u8; 32],
    control: PeerControl,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Tunnel {
    /// Binds the socket (an error here fails the caller's start) and starts
    /// the tunnel thread.
    pub fn spawn(
        cfg: TunnelConfig,
        service: Service,
        shutdown: watch::Receiver<bool>,
    ) -> Result<Tunnel, TunnelError> {
        let std_sock = udp::bind(cfg.listen).map_err(|source| TunnelError::Bind {
            addr: cfg.listen,
            source,
        })?;
        let local_addr = std_sock.local_addr().map_err(TunnelError::Start)?;
        let udp_state =
            quinn_udp::UdpSocketState::new((&std_sock).into()).map_err(TunnelError::Start)?;
        let secret = cfg.private_key.secret();
        let public = PublicKey::from(&secret);
        let random = keys::random32().map_err(|_| TunnelError::Random)?;
        let [a, b, c, d, e, f, g, h, i, j, k, l, ..] = random;
        let seed = u64::from_le_bytes([a, b, c, d, e, f, g, h]);
        let index_random = u32::from_le_bytes([i, j, k, l]);
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (control, updates) = PeerControl::channel();
        let thread = std::thread::Builder::new()
            .name("gatehouse-wg".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                rt.block_on(async move {
                    let sock = match tokio::net::UdpSocket::from_std(std_sock) {
                        Ok(s) => s,
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                            return;
                        }
                    };
                    // The shared limiter: cookies once initiations exceed the
                    // rate. Each session's own limiter only verifies MACs.
                    let limiter = Arc::new(RateLimiter::new(&public, HANDSHAKE_RATE_LIMIT));
                    let per_peer = Arc::new(RateLimiter::new(&public, u64::MAX));
                    let peers = peers::Peers::new(&secret, cfg.peers, per_peer, index_random);
                    let mut device = device::Device::default();
                    let shared = stack::Shared::new(
                        stack::StackConfig {
                            gateway: cfg.address,
                            prefix_len: cfg.prefix_len,
                            ports: cfg.ports,
                            max_per_peer: cfg.max_connections_per_peer,
                            max_total: cfg.max_connections,
                            random_seed: seed,
                        },
                        &mut device,
                    );
                    let engine = match engine::Engine::new(
                        sock,
                        udp_state,
                        secret,
                        limiter,
                        peers,
                        shared,
                        device,
                        cfg.address,
                        service,
                        cfg.status_file,
                        shutdown,
                        updates,
                    ) {
                        Ok(e) => e,
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                            return;
                        }
                    };
                    let _ = ready_tx.send(Ok(()));
                    engine.run().await;
                });
            })
            .map_err(TunnelError::Start)?;
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(TunnelError::Start(e)),
            Err(_) => {
                return Err(TunnelError::Start(std::io::Error::other(
                    "the tunnel thread ended while starting",
                )))
            }
        }
        Ok(Tunnel {
            local_addr,
            public_key: public.to_bytes(),
            control,
            thread: Some(thread),
        })
    }

    /// The bound UDP address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The gateway's WireGuard public key.
    pub fn public_key(&self) -> [u8; 32] {
        self.public_key
    }

    /// A handle that adds and removes devices while the tunnel runs.
    pub fn control(&self) -> PeerControl {
        self.control.clone()
    }

    /// Waits for the tunnel thread to end (after shutdown).
    pub fn join(mut self) {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The devices of `settings`' users, with the preshared keys `gatehouse
/// peer add` left in the state directory: what the tunnel starts with, and
/// what a reload hands to [`PeerControl::set_peers`].
pub fn peer_configs(settings: &Settings, state: &StateDir) -> Result<Vec<PeerConfig>, StateError> {
    let psk = |key: &[u8; 32]| -> Result<Option<keys::PresharedKey>, StateError> {
        Ok(state
            .wireguard_psk(key)?
            .map(|mut raw| keys::PresharedKey::from_bytes(&mut raw)))
    };
    let mut peers = Vec::new();
    for u in &settings.users {
        for d in &u.wireguard {
            peers.push(PeerConfig {
                user: u.name.clone(),
                public_key: d.public_key,
                address: d.address,
                preshared_key: psk(&d.public_key)?,
            });
        }
    }
    Ok(peers)
}

/// Starts the tunnel of `settings` (if `[wireguard]` is configured) with
/// the services of `dispatch` behind its ports, and nothing behind any
/// other port. Each accepted connection is handed to `dispatch` with a
/// [`Source::Device`] naming the device it came through. Must be called
/// inside the daemon's runtime: connections are served there.
pub fn start(
    dispatch: Arc<Dispatch>,
    settings: &Settings,
    state: &StateDir,
    shutdown: watch::Receiver<bool>,
) -> Result<Option<Tunnel>, TunnelError> {
    let Some(wg) = &settings.wireguard else {
        return Ok(None);
    };
    let private_key = PrivateKey::from_bytes(state.wireguard_private_key()?);
    let peers = peer_configs(settings, state)?;
    let devices = peers.len();
    let rt = tokio::runtime::Handle::try_current()
        .map_err(|e| TunnelError::Start(std::io::Error::other(e.to_string())))?;
    let ports = dispatch.ports();
    let service: Service = Arc::new(move |stream: TunnelStream, peer: Peer| {
        let span = tracing::info_span!("conn", peer = %peer.remote, device_user = %peer.user);
        let conn = Connection {
            stream: Box::new(stream),
            source: Source::Device(Device {
                user: peer.user,
                public_key: peer.public_key,
                tunnel_address: peer.tunnel_address,
                port: peer.remote.port(),
                endpoint: peer.endpoint,
            }),
            local: peer.local,
            pre_auth: None,
            admitted: None,
        };
        // Only the dispatch's ports have listeners, so a connection always
        // has a service; one without is dropped, which closes it.
        if let Some(serving) = dispatch.serve(conn) {
            rt.spawn(serving.instrument(span));
        }
    });
    let tunnel = Tunnel::spawn(
        TunnelConfig {
            listen: wg.listen,
            address: wg.address,
            prefix_len: wg.prefix_len,
            private_key,
            peers,
            ports: ports.clone(),
            max_connections_per_peer: wg.max_connections_per_peer,
            max_connections: wg.max_connections,
            status_file: Some(status::path(state.root())),
        },
        service,
        shutdown,
    )?;
    tracing::info!(
        listen = %tunnel.local_addr(),
        address = %wg.address,
        ports = ?ports,
        public_key = %keys::b64(&tunnel.public_key()),
        devices,
        "WireGuard tunnel ready"
    );
    Ok(Some(tunnel))
}
