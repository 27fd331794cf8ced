//! The control socket: `gatehouse sessions`, `sessions kill`, `sessions
//! watch`, `lock`, `unlock`, `locks` and `reload` talk to the running daemon
//! through a Unix socket (`[control] socket`, 0600, or 0660 for
//! `[control] group`). Every command is audited with the local user who
//! ran it (`SO_PEERCRED`).
//!
//! The protocol is one JSON request line from the client, then one JSON
//! reply line; `watch` goes on with one JSON frame per line until the
//! session ends or the client hangs up. Requests are bounded (64 KiB) and
//! have a deadline; the socket serves a few clients at a time.

use std::future::Future;
use std::pin::Pin;

use serde::{Deserialize, Serialize};

use crate::live::Snapshot;
use crate::locks::{Lock, LockKind};

pub mod cli;
pub mod client;
pub mod server;
pub mod termfilter;

/// What the daemon's reload does, for the control socket's `reload`
/// command (implemented in `daemon::reload`). `by` names who asked
/// (`uid 0 (root)` or `SIGHUP`).
pub trait Reload: Send + Sync {
    /// Re-reads and applies the configuration. `Ok(summary)` when applied;
    /// `Err(text)` (every error, `file:line:col`, or the fields that need a
    /// restart) when nothing changed: the CLI prints it and exits 64.
    fn reload(&self, by: String) -> Pin<Box<dyn Future<Output = Result<String, String>> + Send>>;
}

/// One request line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    Sessions,
    Kill {
        id: String,
        reason: Option<String>,
    },
    Watch {
        id: String,
    },
    Lock {
        kind: LockKind,
        name: String,
        reason: String,
        /// Seconds; `None`: until unlocked.
        for_secs: Option<u64>,
    },
    Unlock {
        kind: LockKind,
        name: String,
    },
    Locks,
    Reload,
}

impl Request {
    /// The command's name in the audit log.
    pub fn name(&self) -> &'static str {
        match self {
            Request::Sessions => "sessions",
            Request::Kill { .. } => "sessions kill",
            Request::Watch { .. } => "sessions watch",
            Request::Lock { .. } => "lock",
            Request::Unlock { .. } => "unlock",
            Request::Locks => "locks",
            Request::Reload => "reload",
        }
    }
}

/// The reply line.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Reply {
    pub ok: bool,
    /// Why the command failed (`ok == false`), for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Set when a failed `reload` found the configuration invalid or
    /// needing a restart (the CLI exits 64).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub config_error: bool,
    /// What happened, for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sessions: Option<Vec<Snapshot>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locks: Option<Vec<Lock>>,
    /// Sessions a `kill` or `lock` ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended: Option<Vec<String>>,
}

impl Reply {
    pub fn ok() -> Reply {
        Reply {
            ok: true,
            ..Reply::default()
        }
    }
    pub fn error(text: impl Into<String>) -> Reply {
        Reply {
            ok: false,
            error: Some(text.into()),
            ..Reply::default()
        }
    }
    pub fn message(mut self, text: impl Into<String>) -> Reply {
        self.message = Some(text.into());
        self
    }
}

/// One line of a `watch` stream after the reply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub enum Frame {
    /// Terminal output, base64.
    Output { data: String },
    /// The watcher fell behind: this many chunks were skipped.
    Lost { chunks: u64 },
    /// The session ended.
    End,
}

/// Longest request line.
pub const MAX_REQUEST: usize = 64 << 10;
