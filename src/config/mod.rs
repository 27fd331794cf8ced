//! Configuration: raw TOML -> validated, immutable [`Settings`].
//!
//! The file is read into raw serde structs (`raw.rs`) with unknown fields
//! denied, then converted into the typed [`Settings`] the rest of gatehouse
//! trusts (`validate.rs`). Every problem is collected and reported at once as
//! `file:line:column: field.path: message`; nothing binds or starts until the
//! whole file is valid. The configuration never holds secrets.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use russh::keys::PublicKey;

/// A fully validated configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The file this was loaded from (for messages only).
    pub source: PathBuf,
    pub gateway: Gateway,
    pub auth: AuthSettings,
    pub users: Vec<User>,
    pub roles: Vec<Role>,
    pub targets: Vec<Target>,
    pub recordings: RecordingSettings,
    /// `[wireguard]`, when the gateway terminates WireGuard itself.
    pub wireguard: Option<WireGuardSettings>,
}

/// `[recordings]` (required: there is no unrecorded mode).
#[derive(Debug, Clone)]
pub struct RecordingSettings {
    /// Where sealed recordings are written. Default: `<state_dir>/recordings`.
    pub dir: PathBuf,
    /// The auditors' public keys, as written in the file: age X25519
    /// recipients (`age1...`) and `ssh-ed25519 AAAA...` keys. Validated to
    /// parse as age recipients; at least one.
    pub recipients: Vec<String>,
    /// Recordings older than this are removed by the daemon (audited). Default 400d.
    pub retention: Duration,
    /// New sessions are refused when the recordings filesystem has less free
    /// space than this (`min_free = "256MiB"`; units B, KiB, MiB, GiB). Default 256 MiB.
    pub min_free_bytes: u64,
}

/// `[wireguard]`
#[derive(Debug, Clone)]
pub struct WireGuardSettings {
    /// UDP socket address (IPv4 or IPv6; `[::]:51820` takes both).
    pub listen: SocketAddr,
    /// The gateway's tunnel address (IPv4 or IPv6).
    pub address: IpAddr,
    /// Prefix length of the peer range around `address` (the `/24` in `10.77.0.1/24`).
    pub prefix_len: u8,
    /// What client configs point at (`host:port`); default: the listen address.
    pub endpoint: Option<String>,
    /// Cap on concurrent TCP connections per peer (default 64).
    pub max_connections_per_peer: usize,
    /// Cap on concurrent TCP connections over all peers (default 4096).
    pub max_connections: usize,
}

/// One WireGuard device of a user: `wireguard = [{ public_key, address }]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireGuardPeer {
    /// Curve25519 public key (32 bytes, from the base64 `wg pubkey` prints).
    pub public_key: [u8; 32],
    /// The peer's tunnel address: inside the range, unique, not the gateway's.
    pub address: IpAddr,
}

/// `[gateway]`
#[derive(Debug, Clone)]
pub struct Gateway {
    /// Where keys, enrolled secrets and lockout records live (created 0700).
    pub state_dir: PathBuf,
    /// Plain TCP listeners for the SSH server.
    pub ssh_listen: Vec<SocketAddr>,
    /// Cap on concurrent client connections (default 1024).
    pub max_connections: usize,
    /// Cap on concurrent jumps over one client connection (default 32).
    pub max_jumps_per_connection: usize,
    /// Cap on concurrent jumps of one user over all connections (default 64).
    pub max_jumps_per_user: usize,
    /// Cap on channels open at once on one SSH connection (default 64).
    pub max_channels_per_connection: usize,
    /// A client must finish authenticating within this (default 60s).
    pub auth_timeout: Duration,
    /// Timeout for connecting to a target (default 10s).
    pub connect_timeout: Duration,
}

/// `[auth]`
#[derive(Debug, Clone)]
pub struct AuthSettings {
    /// Failures per user and per source address within `failure_window` (default 5).
    pub max_failures: u32,
    /// Default 10m.
    pub failure_window: Duration,
    /// Default 15m.
    pub lockout: Duration,
    /// Default 1h; zero disables the lease.
    pub mfa_lease: Duration,
}

/// `[[users]]`
#[derive(Debug, Clone)]
pub struct User {
    pub name: String,
    pub roles: Vec<String>,
    pub ssh_keys: Vec<PublicKey>,
    /// WireGuard devices (empty unless `[wireguard]` is configured).
    pub wireguard: Vec<WireGuardPeer>,
}

/// How a role selects targets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetSelector {
    Names(Vec<String>),
    Labels(BTreeMap<String, String>),
}

/// `[[roles]]`
#[derive(Debug, Clone)]
pub struct Role {
    pub name: String,
    pub targets: TargetSelector,
    pub logins: Vec<String>,
    /// Default 8h.
    pub max_session: Duration,
    /// Default 30m. Zero disables it.
    pub idle_timeout: Duration,
    /// Environment variable names (a trailing `*` is a prefix match) passed to
    /// the target. Default: LANG, LC_*, TERM.
    pub allow_env: Vec<String>,
    /// Record what the user types (off by default: it captures passwords
    /// typed with echo off).
    pub record_input: bool,
}

/// The kinds of target gatehouse can relay to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetKind {
    Ssh,
}

/// `[[targets]]`
#[derive(Debug, Clone)]
pub struct Target {
    pub name: String,
    pub kind: TargetKind,
    /// Host (name or IP literal) of the target.
    pub host: String,
    pub port: u16,
    /// Pinned host keys; empty means every session to it is refused.
    pub host_keys: Vec<PublicKey>,
    pub labels: BTreeMap<String, String>,
}

mod raw;
mod validate;

pub use validate::{
    in_range, load, load_str, parse_cidr, parse_duration, parse_recipient, parse_size, ConfigError,
    ConfigErrors,
};
