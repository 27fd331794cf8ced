//! Prometheus metrics (`[metrics] listen`): the families operators scrape.
//!
//! STUB: the hooks below are the interface other modules call; they do
//! nothing yet. The metrics helper fills them in (prometheus-client).

use std::time::Duration;

/// A login attempt's outcome: `result` is "ok" or "failed" (or "refused"),
/// `admitted_by` how a successful one was admitted ("code", "lease", ...).
pub fn login(_result: &str, _admitted_by: &str) {}
/// A lockout started.
pub fn lockout() {}
/// Something was refused, by reason (short, fixed strings; never user data).
pub fn refusal(_reason: &str) {}
/// A session ended after `duration`.
pub fn session_ended(_kind: &str, _duration: Duration) {}
/// Bytes relayed: `up` is user -> target.
pub fn bytes_up(_n: u64) {}
pub fn bytes_down(_n: u64) {}
/// A configuration reload: result "ok", "invalid" or "restart_required".
pub fn reload(_result: &str) {}
/// Locks in force now.
pub fn locks_in_force(_n: usize) {}
/// An anomaly rule fired.
pub fn anomaly(_rule: &str) {}
