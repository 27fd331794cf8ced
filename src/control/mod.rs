//! The control socket: `gatehouse sessions`, `sessions kill`, `sessions
//! watch`, `lock`, `unlock`, `locks` and `reload` talk to the running daemon
//! through a Unix socket (`[control] socket`, 0600, or 0660 for
//! `[control] group`). Every command is audited with the local user who
//! ran it (`SO_PEERCRED`).

use std::future::Future;
use std::pin::Pin;

/// What the daemon's reload does, for the control socket's `reload`
/// command (implemented in `daemon::reload`). `by` names who asked
/// (`uid 0 (root)` or `SIGHUP`).
pub trait Reload: Send + Sync {
    /// Re-reads and applies the configuration. `Ok(summary)` when applied;
    /// `Err(text)` (every error, `file:line:col`, or the fields that need a
    /// restart) when nothing changed: the CLI prints it and exits 64.
    fn reload(&self, by: String) -> Pin<Box<dyn Future<Output = Result<String, String>> + Send>>;
}
