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
    /// `[control]`: the daemon's control socket.
    pub control: ControlSettings,
    /// `[metrics]`: the Prometheus endpoint, when configured.
    pub metrics: MetricsSettings,
    /// `[anomaly]`: unusual-activity rules; `None` when the section is absent
    /// (no rule runs).
    pub anomaly: Option<AnomalySettings>,
    /// Things that are valid but deserve a change (`file:line:col: path:
    /// message`), e.g. the old boolean `record_input`; printed by every
    /// command that loads the file, `gatehouse check` included.
    pub warnings: Vec<String>,
}

/// The auditor key in config.example.toml (also the package's shipped
/// /etc/gatehouse/config.toml): a sample whose private key nobody holds.
/// `gatehouse check` warns about it and `gatehouse run` refuses it, so the
/// shipped example never runs and never seals a recording nobody can open.
pub const SAMPLE_RECIPIENT_KEY: &str =
    "AAAAC3NzaC1lZDI1NTE5AAAAIHkWzpKc3ReKq2ByaVuIZTb9iZPOX5Dv0o1bJOSm/ozO";

/// Whether `recipient` (as written in `[recordings] recipients`) is
/// [`SAMPLE_RECIPIENT_KEY`].
pub fn is_sample_recipient(recipient: &str) -> bool {
    recipient.split_whitespace().nth(1) == Some(SAMPLE_RECIPIENT_KEY)
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
    /// Caps on connections that have not finished authenticating.
    pub pre_auth: PreAuthLimits,
}

/// Caps on unauthenticated connections (OpenSSH's `MaxStartups` and
/// `PerSourcePenalties` in spirit): one host cannot take every connection
/// slot by opening connections and never logging in. A connection counts
/// from its accept until its user has given key and code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreAuthLimits {
    /// `gateway.max_startups`: unauthenticated connections in total (default 64).
    pub total: usize,
    /// `gateway.max_startups_per_source`: unauthenticated connections from one
    /// source — the address for IPv4, the /64 for IPv6 (default 8).
    pub per_source: usize,
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
    /// An authenticated connection is closed once it is this old, so a
    /// ControlMaster connection cannot outlive the second factor. Default:
    /// `mfa_lease` (1h when the lease is disabled). Never zero.
    pub max_connection_age: Duration,
}

/// `[[users]]`
#[derive(Debug, Clone)]
pub struct User {
    pub name: String,
    pub roles: Vec<String>,
    pub ssh_keys: Vec<PublicKey>,
    /// WireGuard devices (empty unless `[wireguard]` is configured).
    pub wireguard: Vec<WireGuardPeer>,
    /// Refused on plain TCP listeners: this user logs in only through one
    /// of their WireGuard devices (default false; needs `[wireguard]`).
    pub require_wireguard: bool,
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
    /// Which of the user's input is recorded (default [`RecordInput::Exec`]).
    pub record_input: RecordInput,
    /// Database targets: whether the client's `options` startup parameter
    /// (e.g. `-c search_path=...`, `-c role=...`) is passed to the server.
    /// `options`, and any startup parameter beyond the ones stock clients
    /// send, change server settings for the session, so they are refused
    /// unless every role granting the login says `allow_options = true`.
    /// Default false.
    pub allow_options: bool,
    /// Whether the user's terminal is told when an administrator starts
    /// watching the session live (`gatehouse sessions watch`). True when any
    /// granting role says so (telling is the stricter choice). Default false.
    pub announce_watch: bool,
}

/// Which input (user -> target bytes) a role's sessions record. Output is
/// always recorded, and SFTP channels always record their operations (never
/// file contents), whatever this says. Ordered from least to most recorded:
/// where several roles grant the same access, the most-recording one wins
/// (recording more is the stricter choice).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub enum RecordInput {
    /// No input is recorded.
    None,
    /// The standard input of commands without a PTY (`ssh host sh <
    /// script.sh`, `ssh host < script.sh`, scp -O, rsync uploads).
    /// Keystrokes in a PTY are not recorded: people type passwords there.
    #[default]
    Exec,
    /// Also every keystroke in a PTY (captures what is typed with echo off).
    All,
}

impl RecordInput {
    /// The config spelling: `"none"`, `"exec"`, `"all"`.
    pub fn as_str(self) -> &'static str {
        match self {
            RecordInput::None => "none",
            RecordInput::Exec => "exec",
            RecordInput::All => "all",
        }
    }

    /// Parses the config spelling.
    pub fn parse(s: &str) -> Option<RecordInput> {
        match s {
            "none" => Some(RecordInput::None),
            "exec" => Some(RecordInput::Exec),
            "all" => Some(RecordInput::All),
            _ => None,
        }
    }
}

/// The kinds of target gatehouse can relay to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetKind {
    /// `kind = "ssh"`: reached by `ssh -J`; pinned host keys.
    Ssh,
    /// `kind = "postgres"`: a PostgreSQL server, reached through the
    /// in-process proxy on its `tunnel_port` or by `ssh -L`; never a raw
    /// forward.
    Postgres,
    /// `kind = "mysql"`: a MySQL or MariaDB server, reached the same ways.
    Mysql,
}

impl TargetKind {
    /// The config spelling: `"ssh"`, `"postgres"`, `"mysql"`.
    pub fn as_str(self) -> &'static str {
        match self {
            TargetKind::Ssh => "ssh",
            TargetKind::Postgres => "postgres",
            TargetKind::Mysql => "mysql",
        }
    }

    /// The protocol's standard port: what an `address` without one means,
    /// and what `ssh -L PORT:db-1:PORT` may name besides the target's own.
    pub fn standard_port(self) -> u16 {
        match self {
            TargetKind::Ssh => 22,
            TargetKind::Postgres => 5432,
            TargetKind::Mysql => 3306,
        }
    }

    /// Whether the target is a database (its proxy answers, never a raw
    /// forward).
    pub fn is_database(self) -> bool {
        !matches!(self, TargetKind::Ssh)
    }
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
    /// Always empty for a database target (`host_keys` is refused there).
    pub host_keys: Vec<PublicKey>,
    pub labels: BTreeMap<String, String>,
    /// How a database target is reached: `Some` exactly when `kind` is a
    /// database kind ([`TargetKind::is_database`]), `None` for SSH targets.
    pub db: Option<DbTarget>,
}

impl Target {
    /// True for a database target whose upstream connection is not
    /// encrypted (`tls = "disable"` written out): the daemon warns at start.
    pub fn tls_disabled(&self) -> bool {
        matches!(
            self.db,
            Some(DbTarget {
                tls: DbTls::Disable,
                ..
            })
        )
    }
}

impl Settings {
    /// The database targets reached without TLS (`tls = "disable"`), in
    /// file order: each one is named in a start-up warning.
    pub fn targets_without_tls(&self) -> impl Iterator<Item = &Target> + '_ {
        self.targets.iter().filter(|t| t.tls_disabled())
    }
}

/// The database part of a `[[targets]]` entry of a database kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DbTarget {
    /// The TCP port on the gateway's tunnel address where WireGuard devices
    /// reach this target (`tunnel_port`): the port names the target, the
    /// device names the person. Required; 1-65535, unique among targets,
    /// never 22 (the tunnel's SSH server).
    pub tunnel_port: u16,
    /// TLS to the server.
    pub tls: DbTls,
    /// How gatehouse logs in to the server.
    pub auth: DbAuth,
}

/// TLS from gatehouse to a database server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DbTls {
    /// verify-full against the pinned CA (`tls_ca`, a PEM file that may hold
    /// several certificates): the chain must lead to one of them and the
    /// certificate must name `server_name`.
    Verify {
        /// The CA file, absolute (a relative `tls_ca` is resolved against
        /// the configuration file's directory). Checked readable and holding
        /// a PEM certificate when the file is loaded.
        ca: PathBuf,
        /// `tls_server_name`; default: the host of `address`.
        server_name: String,
    },
    /// No TLS: only when written out as `tls = "disable"`; warned about by
    /// `gatehouse check` and at start.
    Disable,
}

/// How gatehouse authenticates to a database server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DbAuth {
    /// SCRAM-SHA-256 (SCRAM-SHA-256-PLUS with channel binding over TLS).
    /// The default.
    #[default]
    Scram,
    /// MD5, only when written out as `auth = "md5"`.
    Md5,
}

impl DbAuth {
    /// The config spelling: `"scram"`, `"md5"`.
    pub fn as_str(self) -> &'static str {
        match self {
            DbAuth::Scram => "scram",
            DbAuth::Md5 => "md5",
        }
    }
}

/// `[control]`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlSettings {
    /// The control socket (`gatehouse sessions`, `lock`, `reload`, ...).
    /// Default `/run/gatehouse/control.sock` (systemd's
    /// `RuntimeDirectory=gatehouse`). Created 0600 for the daemon's user.
    pub socket: PathBuf,
    /// A group whose members may use the socket too (the socket becomes
    /// 0660 with that group). Default: none.
    pub group: Option<String>,
}

/// Where the control socket is when `[control] socket` is not given.
pub const DEFAULT_CONTROL_SOCKET: &str = "/run/gatehouse/control.sock";

impl Default for ControlSettings {
    fn default() -> Self {
        ControlSettings {
            socket: PathBuf::from(DEFAULT_CONTROL_SOCKET),
            group: None,
        }
    }
}

/// `[metrics]`
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MetricsSettings {
    /// Where `/metrics` (Prometheus text format) is served. Off unless set.
    pub listen: Option<SocketAddr>,
}

/// `[anomaly]`: which unusual-activity rules run (`src/anomaly`). The
/// section being present turns every rule on with the defaults below; each
/// rule has its own `false` switch. Every rule emits an `anomaly.*` audit
/// event, counts in `metrics::anomaly` and, with `webhook`, is POSTed as JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnomalySettings {
    /// Where each anomaly is POSTed (https; http only to a loopback address).
    pub webhook: Option<Webhook>,
    /// A login from a network (/24, /48; a device's endpoint network) never
    /// seen for the user. Default on.
    pub new_network: bool,
    /// A login at an hour of the week (UTC) the user has not logged in at
    /// during the last 30 days. Default on.
    pub unusual_hour: bool,
    /// How long after a user's first seen login `unusual_hour` starts
    /// judging. Default 14 days.
    pub learning_period: Duration,
    /// More than `max_targets` distinct targets within `target_window`.
    /// Default on, 5 targets in 10 minutes.
    pub target_spread: bool,
    pub max_targets: usize,
    pub target_window: Duration,
    /// One session moves more than `max_bytes_down` towards the user.
    /// Default on, 1 GiB.
    pub bulk_transfer: bool,
    pub max_bytes_down: u64,
    /// Failed logins against one user from more than `max_failed_sources`
    /// sources, or from one source against more than `max_failed_users`
    /// user names, within `failed_window`. Default on, 10 and 10 in 5
    /// minutes.
    pub failed_logins: bool,
    pub max_failed_sources: usize,
    pub max_failed_users: usize,
    pub failed_window: Duration,
}

/// `anomaly.webhook`: a checked URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Webhook {
    /// The URL as written (https, or http to a loopback address).
    pub url: String,
}

impl AnomalySettings {
    pub const DEFAULT_LEARNING_PERIOD: Duration = Duration::from_secs(14 * 24 * 3600);
    pub const DEFAULT_MAX_TARGETS: usize = 5;
    pub const DEFAULT_TARGET_WINDOW: Duration = Duration::from_secs(10 * 60);
    pub const DEFAULT_MAX_BYTES_DOWN: u64 = 1 << 30;
    pub const DEFAULT_MAX_FAILED_SOURCES: usize = 10;
    pub const DEFAULT_MAX_FAILED_USERS: usize = 10;
    pub const DEFAULT_FAILED_WINDOW: Duration = Duration::from_secs(5 * 60);
}

impl Default for AnomalySettings {
    /// What an empty `[anomaly]` section means: every rule on.
    fn default() -> Self {
        AnomalySettings {
            webhook: None,
            new_network: true,
            unusual_hour: true,
            learning_period: Self::DEFAULT_LEARNING_PERIOD,
            target_spread: true,
            max_targets: Self::DEFAULT_MAX_TARGETS,
            target_window: Self::DEFAULT_TARGET_WINDOW,
            bulk_transfer: true,
            max_bytes_down: Self::DEFAULT_MAX_BYTES_DOWN,
            failed_logins: true,
            max_failed_sources: Self::DEFAULT_MAX_FAILED_SOURCES,
            max_failed_users: Self::DEFAULT_MAX_FAILED_USERS,
            failed_window: Self::DEFAULT_FAILED_WINDOW,
        }
    }
}

mod current;
mod raw;
mod validate;

pub use current::Current;

pub use validate::{
    in_range, load, load_str, parse_cidr, parse_duration, parse_recipient, parse_size, ConfigError,
    ConfigErrors,
};
