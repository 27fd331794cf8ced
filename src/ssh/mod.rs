//! The SSH side of gatehouse: the server users talk to (`server`), the
//! in-process server that answers `direct-tcpip` channels for jumps (`jump`),
//! the client that logs in to targets (`upstream`), and the relay between
//! them (`relay`).
//!
//! SSH is terminated, never passed through: gatehouse is the server the user
//! talks to and the client the target sees, so every byte is plaintext here
//! and can be recorded.
//!
//! Peer-facing code: no `unwrap`, `expect` or indexing here.
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

pub mod caps;
pub mod ending;
pub mod jump;
mod record;
pub mod relay;
pub mod server;
pub mod upstream;

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use russh::keys::{Algorithm, PrivateKey};
use russh::{cipher, compression, kex, mac, MethodKind, MethodSet, Preferred};

use crate::auth::Authenticator;
use crate::config::{Current, Settings};
use crate::policy::Policy;

/// Who is to blame when an SSH session fails: chooses the audit reason and
/// the message the user sees.
#[derive(Debug, thiserror::Error)]
pub enum SshError {
    #[error("ssh protocol: {0}")]
    Protocol(#[from] russh::Error),
    #[error("target {target}: {message}")]
    Target { target: String, message: String },
    #[error("gatehouse: {0}")]
    Internal(String),
}

/// Only modern algorithms: curve25519 / ML-KEM hybrid key exchange, ed25519
/// host keys, AES-GCM and chacha20-poly1305 (AEAD), no compression.
/// aes256-ctr with encrypt-then-MAC SHA-2 comes last, for clients without an
/// AEAD cipher (Debian's paramiko 2.12: Fabric, Ansible, netmiko); a client
/// that offers AEAD gets AEAD, since the client's order decides.
pub fn modern_algorithms() -> Preferred {
    Preferred {
        kex: Cow::Borrowed(&[
            kex::MLKEM768X25519_SHA256,
            kex::CURVE25519,
            kex::CURVE25519_PRE_RFC_8731,
            kex::EXTENSION_SUPPORT_AS_SERVER,
            kex::EXTENSION_SUPPORT_AS_CLIENT,
            kex::EXTENSION_OPENSSH_STRICT_KEX_AS_SERVER,
            kex::EXTENSION_OPENSSH_STRICT_KEX_AS_CLIENT,
        ]),
        key: Cow::Borrowed(&[Algorithm::Ed25519]),
        host_key_certificates: Cow::Borrowed(&[]),
        cipher: Cow::Borrowed(&[
            cipher::AES_256_GCM,
            cipher::CHACHA20_POLY1305,
            cipher::AES_128_GCM,
            cipher::AES_256_CTR,
        ]),
        mac: Cow::Borrowed(&[mac::HMAC_SHA512_ETM, mac::HMAC_SHA256_ETM]),
        compression: Cow::Borrowed(&[compression::NONE]),
    }
}

/// Everything a connection handler needs, shared by all connections.
pub struct Gateway {
    /// The configuration in force (a reload swaps it): read it once per
    /// decision with [`Gateway::settings`] / [`Gateway::policy`].
    pub config: Current,
    /// Shared with the database proxies: one lockout table, one set of
    /// MFA leases.
    pub auth: Arc<Authenticator>,
    /// Config of the server users log in to (publickey + keyboard-interactive).
    pub server_config: Arc<russh::server::Config>,
    /// Config of the in-process server answering jump channels (publickey).
    pub jump_config: Arc<russh::server::Config>,
    /// Config for connections to targets.
    pub client_config: Arc<russh::client::Config>,
    /// The key gatehouse logs in to targets with.
    pub client_key: Arc<PrivateKey>,
    /// Seals every session's recording; sessions do not run without it.
    pub recorder: Arc<crate::recording::Recorder>,
    /// Fires when the daemon shuts down.
    /// Every live session (listing, kill, locks, reload, watch).
    pub live: Arc<crate::live::Registry>,
    /// Administrators' locks (`gatehouse lock`).
    pub locks: Arc<crate::locks::Locks>,
    pub shutdown: tokio::sync::watch::Receiver<bool>,
    /// Live jumps and channels per connection and per user, under their caps.
    pub caps: Arc<caps::Caps>,
    /// The database proxies, by their targets' `tunnel_port`: where an SSH
    /// `direct-tcpip` channel to a database target is answered (never a raw
    /// forward).
    pub databases: Arc<crate::dispatch::Dispatch>,
}

impl Gateway {
    /// A snapshot of the configuration in force.
    pub fn settings(&self) -> Arc<Settings> {
        self.config.get()
    }

    /// The policy of the configuration in force: take it once per decision.
    pub fn policy(&self) -> Policy {
        Policy::new(self.config.get())
    }
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway").finish_non_exhaustive()
    }
}

/// Builds the server configs around the gateway's host key.
pub fn server_configs(
    host_key: PrivateKey,
) -> (Arc<russh::server::Config>, Arc<russh::server::Config>) {
    let base = || russh::server::Config {
        server_id: russh::SshId::Standard(Cow::Borrowed("SSH-2.0-gatehouse")),
        keys: vec![host_key.clone()],
        preferred: modern_algorithms(),
        // No delay on the client's first `none` probe; rejections take a
        // short constant time (the lookup is the same for unknown users and
        // wrong keys, and lockouts bound guessing).
        auth_rejection_time: Duration::from_millis(30),
        auth_rejection_time_initial: Some(Duration::ZERO),
        max_auth_attempts: 6,
        inactivity_timeout: None,
        keepalive_interval: Some(Duration::from_secs(60)),
        keepalive_max: 3,
        nodelay: true,
        window_size: 2 * 1024 * 1024,
        maximum_packet_size: 32768,
        channel_buffer_size: 64,
        event_buffer_size: 64,
        ..Default::default()
    };
    let mut outer = base();
    outer.methods = MethodSet::from(&[MethodKind::PublicKey, MethodKind::KeyboardInteractive][..]);
    let mut inner = base();
    inner.methods = MethodSet::from(&[MethodKind::PublicKey][..]);
    (Arc::new(outer), Arc::new(inner))
}

/// Config for gatehouse as a client of targets.
pub fn client_config() -> Arc<russh::client::Config> {
    let pref = Preferred {
        cipher: Cow::Borrowed(&[
            cipher::AES_256_GCM,
            cipher::CHACHA20_POLY1305,
            cipher::AES_128_GCM,
            cipher::AES_256_CTR,
        ]),
        ..Default::default()
    };
    Arc::new(russh::client::Config {
        preferred: pref,
        inactivity_timeout: None,
        keepalive_interval: Some(Duration::from_secs(60)),
        keepalive_max: 3,
        nodelay: true,
        window_size: 2 * 1024 * 1024,
        channel_buffer_size: 64,
        ..Default::default()
    })
}
