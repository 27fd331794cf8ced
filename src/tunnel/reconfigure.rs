//! Devices added and removed while the tunnel runs (a configuration
//! reload), without a restart.
//!
//! The daemon sends the whole wanted list of devices ([`PeerControl::set_peers`]);
//! the tunnel thread compares it with the running one between two turns of
//! its loop:
//! - a device that is no longer wanted (or whose user, address or
//!   preshared key changed) is removed: its TCP connections are aborted
//!   (their services read end-of-stream, the resets are sent to the device
//!   while it still has a session), then no lookup finds it again, so its
//!   handshakes go unanswered and its packets are dropped;
//! - a wanted device that is not running gets a new slot and answers its
//!   first handshake;
//! - every other device keeps its slot, its session keys and its
//!   connections: it sees no new handshake and no reset.

use tokio::sync::{mpsc, oneshot};

use super::engine::Engine;
use super::keys::b64;
use super::PeerConfig;

/// Reconfigurations waiting for the tunnel thread (a reload waits for its
/// answer, so one is the normal depth).
const UPDATES: usize = 4;

/// One request: the devices wanted from now on.
pub struct PeerUpdate {
    peers: Vec<PeerConfig>,
    done: oneshot::Sender<PeerChanges>,
}

/// What a reconfiguration changed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PeerChanges {
    /// Base64 public keys of the devices that now work.
    pub added: Vec<String>,
    /// Base64 public keys of the devices that stopped.
    pub removed: Vec<String>,
    /// Devices that could not be added (the tunnel's index space is used
    /// up: a restart clears it).
    pub failed: Vec<String>,
    /// Tunnel connections of removed devices that were aborted.
    pub connections_closed: usize,
}

/// A handle on a running tunnel's device list.
#[derive(Debug, Clone)]
pub struct PeerControl {
    tx: mpsc::Sender<PeerUpdate>,
}

/// The tunnel thread is gone (the daemon is shutting down).
#[derive(Debug, thiserror::Error)]
#[error("the WireGuard tunnel is not running")]
pub struct NotRunning;

impl PeerControl {
    /// A handle and the receiver the engine polls.
    pub(super) fn channel() -> (PeerControl, mpsc::Receiver<PeerUpdate>) {
        let (tx, rx) = mpsc::channel(UPDATES);
        (PeerControl { tx }, rx)
    }

    /// Makes `peers` the tunnel's devices; returns what changed.
    pub async fn set_peers(&self, peers: Vec<PeerConfig>) -> Result<PeerChanges, NotRunning> {
        let (done, answer) = oneshot::channel();
        self.tx
            .send(PeerUpdate { peers, done })
            .await
            .map_err(|_| NotRunning)?;
        answer.await.map_err(|_| NotRunning)
    }
}

/// Whether a running device is exactly the wanted one.
fn same(a: &PeerConfig, b: &PeerConfig) -> bool {
    a.public_key == b.public_key
        && a.address == b.address
        && a.user == b.user
        && a.preshared_key == b.preshared_key
}

impl Engine {
    /// Applies a reconfiguration and answers it.
    pub(super) fn reconfigure(&mut self, update: PeerUpdate) {
        let PeerUpdate { peers, done } = update;
        let changes = self.set_peers(peers);
        let _ = done.send(changes);
    }

    fn set_peers(&mut self, wanted: Vec<PeerConfig>) -> PeerChanges {
        let mut changes = PeerChanges::default();
        let gone: Vec<[u8; 32]> = self
            .peers
            .iter()
            .filter(|p| !wanted.iter().any(|w| same(w, &p.cfg)))
            .map(|p| p.cfg.public_key)
            .collect();
        // Abort their connections while the devices still have a session,
        // and send the resets out: their clients learn at once that the
        // connection is gone instead of waiting for a timeout.
        let mut slots = Vec::new();
        {
            let mut st = self.shared.lock();
            for key in &gone {
                if let Some(slot) = self.peers.by_key(key) {
                    slots.push((*key, slot, st.abort_peer(slot)));
                }
            }
            st.egress(&mut self.device);
        }
        if !slots.is_empty() {
            let _ = self.transmit();
        }
        for (key, slot, closed) in slots {
            if self.peers.remove(&key).is_none() {
                continue;
            }
            if let Some(p) = self.peers.get(slot) {
                tracing::info!(
                    user = %p.cfg.user,
                    public_key = %p.key_b64,
                    address = %p.cfg.address,
                    connections = closed,
                    "WireGuard: device removed by a configuration reload"
                );
            }
            changes.removed.push(b64(&key));
            changes.connections_closed += closed;
        }
        for w in wanted {
            if self.peers.by_key(&w.public_key).is_some() {
                continue;
            }
            let (key, user, address) = (b64(&w.public_key), w.user.clone(), w.address);
            if self.peers.add(w).is_some() {
                tracing::info!(%user, public_key = %key, %address,
                    "WireGuard: device added by a configuration reload");
                changes.added.push(key);
            } else {
                tracing::warn!(%user, public_key = %key, %address,
                    "WireGuard: cannot add the device until gatehouse restarts");
                changes.failed.push(key);
            }
        }
        if !changes.added.is_empty() || !changes.removed.is_empty() {
            self.write_status(false);
        }
        self.shared.wake.notify_one();
        changes
    }
}
