//! Database access: protocol-aware proxies for database targets, behind the
//! same doors as SSH (see `design.md`, "Database access").
//!
//! A connection reaches a proxy through the [`crate::dispatch`]: either
//! inside the WireGuard tunnel, on the target's `tunnel_port` (the device
//! names the person, the port names the target), or through an SSH
//! `direct-tcpip` channel (`ssh -L`, `-W`) of a person who has already
//! logged in with key + code. There is no plain TCP listener for a database:
//! its parsers would face the network before any login.
//!
//! This module never imports `ssh` or `tunnel`; `daemon` wires it.

#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

pub mod cancel;
pub mod mysql;
pub mod postgres;
mod tls;

use std::sync::Arc;

use crate::auth::Authenticator;
use crate::config::{Current, Settings, TargetKind};
use crate::dispatch::{Connection, Service, Serving};
use crate::policy::Policy;
use crate::recording::Recorder;
use crate::state::StateDir;

/// What every database session needs: who may log in, what they may reach,
/// the recorder, the sealed credentials and the live sessions' cancel keys.
pub struct DbGateway {
    /// The configuration in force (a reload swaps it): read it once per
    /// login with [`DbGateway::policy`].
    pub config: Current,
    /// Shared with the SSH server: one lockout table, one set of MFA leases.
    pub auth: Arc<Authenticator>,
    pub recorder: Arc<Recorder>,
    pub state: Arc<StateDir>,
    pub keys: cancel::Keys,
    /// Fires when the daemon shuts down.
    /// Every live session (listing, kill, locks, reload).
    pub live: Arc<crate::live::Registry>,
    /// Administrators' locks (`gatehouse lock`).
    pub locks: Arc<crate::locks::Locks>,
    pub shutdown: tokio::sync::watch::Receiver<bool>,
    /// Gateway-wide budget (KiB) for large statements read whole to be
    /// recorded: see [`postgres::relay`].
    pub statement_budget: Arc<tokio::sync::Semaphore>,
    /// The last greeting of each MySQL target's server (by target name),
    /// refreshed by every login: a MySQL client is greeted with it before
    /// any login (see [`mysql`]).
    pub greetings:
        std::sync::Mutex<std::collections::HashMap<String, mysql::upstream::ServerHello>>,
}

impl DbGateway {
    /// A snapshot of the configuration in force.
    pub fn settings(&self) -> Arc<Settings> {
        self.config.get()
    }

    /// The policy of the configuration in force: take it once per decision.
    pub fn policy(&self) -> Policy {
        Policy::new(self.config.get())
    }
}

impl std::fmt::Debug for DbGateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DbGateway")
            .field("live_sessions", &self.keys.len())
            .finish_non_exhaustive()
    }
}

/// The proxy of one database target (the dispatch routes its
/// `tunnel_port` here).
#[derive(Debug)]
pub struct DbService {
    gw: Arc<DbGateway>,
    target: String,
    kind: TargetKind,
}

impl DbService {
    pub fn new(gw: Arc<DbGateway>, target: &str, kind: TargetKind) -> DbService {
        DbService {
            gw,
            target: target.to_string(),
            kind,
        }
    }
}

impl Service for DbService {
    fn serve(&self, conn: Connection) -> Serving {
        match self.kind {
            TargetKind::Mysql => Box::pin(mysql::serve(self.gw.clone(), self.target.clone(), conn)),
            _ => Box::pin(postgres::serve(self.gw.clone(), self.target.clone(), conn)),
        }
    }
}

/// Who a database session is, for its audit events.
pub(crate) fn who<'a>(
    user: &'a str,
    login: &'a str,
    target: &'a str,
    database: &'a str,
    source: &'a str,
) -> crate::audit::DbWho<'a> {
    crate::audit::DbWho {
        user,
        login,
        target,
        database,
        source,
    }
}

/// The live-registry entry of a database session that is starting.
pub fn live_info(
    session_id: &str,
    kind: crate::live::SessionKind,
    authorized: &crate::policy::Authorized,
) -> crate::live::SessionInfo {
    let user = authorized.user();
    crate::live::SessionInfo {
        id: session_id.to_string(),
        kind,
        user: user.name().to_string(),
        source: user.origin().ip().to_string(),
        device: user.origin().device().map(|d| d.public_key_b64()),
        key_fingerprint: user.key().map(|_| user.fingerprint().to_string()),
        target: authorized.target().name.clone(),
        login: authorized.login().to_string(),
        announce_watch: authorized.announce_watch(),
    }
}

/// A random session id (hex, 16 bytes), like the SSH sessions'.
pub fn new_session_id() -> String {
    let mut b = [0u8; 16];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b);
    hex::encode(b)
}

/// A cleaner that replaces `password` in an error's text with `***`, for
/// the upstreams' errors. Defence in depth: no message gatehouse builds
/// contains it, and servers do not quote it. None (nothing to search for)
/// when the password is not UTF-8 or shorter than 4 bytes (it would match
/// ordinary words).
pub(crate) fn redactor(password: &[u8]) -> Option<impl Fn(String) -> String + '_> {
    let pw = std::str::from_utf8(password)
        .ok()
        .filter(|p| p.len() >= 4)?;
    Some(move |s: String| {
        if s.contains(pw) {
            s.replace(pw, "***")
        } else {
            s
        }
    })
}
