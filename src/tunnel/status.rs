//! The running tunnel's status file: what `gatehouse peers` shows, and what
//! a restarted gatehouse uses to reach its peers again.
//!
//! The daemon rewrites `wireguard-status.json` in the state directory every
//! [`STATUS_EVERY`] (atomically, mode 0600). It holds no secret: device
//! keys are public keys, plus addresses, endpoints, times and byte counts.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// How often the daemon writes the file.
pub const STATUS_EVERY: Duration = Duration::from_secs(2);

/// The file name in the state directory.
pub const STATUS_FILE: &str = "wireguard-status.json";

/// The status file's path for a state directory.
pub fn path(state_dir: &Path) -> PathBuf {
    state_dir.join(STATUS_FILE)
}

/// The whole file.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Status {
    pub pid: u32,
    pub written_unix: u64,
    pub listen: String,
    pub address: String,
    pub public_key: String,
    pub connections: usize,
    pub counters: Counters,
    pub peers: Vec<PeerStatus>,
}

/// One device.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PeerStatus {
    pub user: String,
    pub public_key: String,
    pub address: String,
    pub endpoint: Option<String>,
    pub last_handshake_unix: Option<u64>,
    /// Inner (IP) bytes received from and sent to the device.
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    pub connections: usize,
    pub spoofed_dropped: u64,
}

/// Tunnel-wide counters since start.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Counters {
    /// Handshake initiations answered with a cookie (under load).
    pub cookies_sent: u64,
    /// Handshake initiations from keys that are no configured device.
    pub unknown_peer: u64,
    /// Datagrams that were not WireGuard, failed a MAC, or matched no session.
    pub invalid: u64,
    /// Decrypted packets whose source was not the sending peer's address.
    pub spoofed: u64,
    /// Decrypted packets for an address other than the gateway's.
    pub not_for_gateway: u64,
    /// Decrypted packets of another protocol than TCP / ICMP echo.
    pub protocol: u64,
    /// Decrypted packets that were not well-formed IP.
    pub malformed: u64,
    /// Datagrams too large for the tunnel's buffers.
    pub oversized: u64,
    /// Connection attempts refused by a cap.
    pub refused: u64,
    /// TCP segments the tunnel sent again on a peer's duplicate or partial
    /// ACKs (loss recovery beside smoltcp's, see `tunnel/recovery.rs`).
    #[serde(default)]
    pub tcp_resent: u64,
    /// Loss recoveries started (three duplicate ACKs).
    #[serde(default)]
    pub tcp_recoveries: u64,
    /// Of `tcp_resent`: segments sent again because no ACK came for twice
    /// the RTT (a lost tail of a burst, or a lost resend).
    #[serde(default)]
    pub tcp_probes: u64,
    /// Connections dropped before reaching a service because the device or
    /// the 4-tuple their packets came from was not the one they were booked
    /// to (a defence in depth; stays 0).
    #[serde(default)]
    pub misbooked: u64,
    /// Handshake initiations dropped by the per-source or global handshake
    /// budget (after the cookie check).
    #[serde(default)]
    pub handshakes_limited: u64,
}

/// Reads the file; None if it is missing or unreadable.
pub fn read(path: &Path) -> Option<Status> {
    let text = std::fs::read_to_string(path).ok()?;
    serde_json::from_str(&text).ok()
}

/// Writes the file atomically, mode 0600.
pub fn write(path: &Path, status: &Status) -> Result<(), crate::state::StateError> {
    let text = serde_json::to_vec_pretty(status).unwrap_or_default();
    crate::state::write_secret_file(path, &text)
}
