//! Telling systemd the truth (`Type=notify`, sd_notify(3)): `READY=1` once
//! every listener is bound, a one-line `STATUS=`, `RELOADING=1` around a
//! reload, `STOPPING=1` on shutdown, and `WATCHDOG=1` pings.
//!
//! The protocol is the `sd-notify` crate's (small, no dependency beyond
//! libc, maintained): one datagram to `$NOTIFY_SOCKET`. Without that
//! variable (not started by systemd) every call here does nothing.
//!
//! The watchdog pings come from a task on the daemon's runtime, the one that
//! serves logins: if that runtime wedges, the pings stop and systemd
//! restarts gatehouse (`WatchdogSec=`).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sd_notify::NotifyState;
use tokio::sync::watch;

use crate::live::{Registry, SessionKind as Kind};

/// How often `STATUS=` is refreshed.
pub const STATUS_EVERY: Duration = Duration::from_secs(5);

/// Sends `states`; a failure is logged once per call, never fatal (a
/// gateway that cannot reach systemd's socket still serves).
fn send(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!(error = %e, "cannot notify systemd (NOTIFY_SOCKET)");
    }
}

/// `READY=1`: startup (or a reload) finished; every listener accepts.
pub fn ready() {
    send(&[NotifyState::Ready]);
}

/// `STOPPING=1`: shutdown began.
pub fn stopping() {
    send(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
}

/// `RELOADING=1` with `MONOTONIC_USEC=` (systemd ≥ 253 requires it for
/// `Type=notify-reload`; 252 ignores it). Keep the returned guard for the
/// whole reload: dropping it sends `READY=1`, whatever the reload's result
/// (a refused reload leaves the old config serving, which is ready too).
#[must_use = "the reload is announced finished (READY=1) when the guard drops"]
pub fn reloading() -> Reloading {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => send(&[NotifyState::Reloading, now]),
        Err(_) => send(&[NotifyState::Reloading]),
    }
    Reloading(())
}

/// A reload in progress; see [`reloading`].
#[derive(Debug)]
pub struct Reloading(());

impl Drop for Reloading {
    fn drop(&mut self) {
        ready();
    }
}

/// A device counts as active when its last handshake is this recent
/// (WireGuard's Reject-After-Time: an older session carries no data).
const DEVICE_ACTIVE: u64 = 180;

/// The one-line summary for `STATUS=`: live sessions by kind, and with
/// `[wireguard]` the devices with a live tunnel, read from the status file
/// the tunnel rewrites every 2 s (`gatehouse peers` shows the same).
pub fn status_line(live: &Registry, wireguard_status: Option<&Path>) -> String {
    let sessions = sessions_summary(live);
    let Some(path) = wireguard_status else {
        return sessions;
    };
    match crate::tunnel::status::read(path).filter(|s| s.pid == std::process::id()) {
        Some(st) => {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            let active = st
                .peers
                .iter()
                .filter(|p| {
                    p.last_handshake_unix
                        .is_some_and(|t| now.saturating_sub(t) < DEVICE_ACTIVE)
                })
                .count();
            format!(
                "{sessions}; WireGuard: {active} of {} devices active",
                st.peers.len()
            )
        }
        None => sessions,
    }
}

fn sessions_summary(live: &Registry) -> String {
    let (mut ssh, mut pg, mut my) = (0usize, 0usize, 0usize);
    for l in live.all() {
        match l.info.kind {
            Kind::Ssh => ssh += 1,
            Kind::Postgres => pg += 1,
            Kind::Mysql => my += 1,
        }
    }
    let total = ssh + pg + my;
    let noun = if total == 1 { "session" } else { "sessions" };
    format!("serving: {total} live {noun} (ssh {ssh}, postgres {pg}, mysql {my})")
}

/// Called once everything is bound and serving: sends `READY=1` with the
/// first `STATUS=`, starts the status and watchdog task on the current
/// runtime, and returns `shutdown` wrapped so that `STOPPING=1` goes out the
/// moment it resolves.
pub fn serving<F>(
    live: Arc<Registry>,
    wireguard_status: Option<PathBuf>,
    stop: watch::Receiver<bool>,
    shutdown: F,
) -> impl std::future::Future<Output = ()>
where
    F: std::future::Future<Output = ()>,
{
    send(&[
        NotifyState::Ready,
        NotifyState::Status(&status_line(&live, wireguard_status.as_deref())),
    ]);
    // WATCHDOG_USEC, honoured only when WATCHDOG_PID is unset or ours.
    let watchdog = sd_notify::watchdog_enabled().filter(|d| !d.is_zero());
    if let Some(d) = watchdog {
        tracing::info!(interval = ?d, "systemd watchdog enabled; pinging at half the interval");
    }
    tokio::spawn(keepalive(live, wireguard_status, stop, watchdog));
    async move {
        shutdown.await;
        stopping();
    }
}

/// Refreshes `STATUS=` every [`STATUS_EVERY`] and pings the watchdog at half
/// its interval. Runs until the runtime ends (pings go on while sessions
/// drain after shutdown, which can take the grace periods).
async fn keepalive(
    live: Arc<Registry>,
    wireguard_status: Option<PathBuf>,
    stop: watch::Receiver<bool>,
    watchdog: Option<Duration>,
) {
    let mut status = tokio::time::interval(STATUS_EVERY);
    status.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    status.tick().await; // the first tick is immediate: READY carried it
    let mut ping = watchdog.map(|d| {
        let mut i = tokio::time::interval(d / 2);
        i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        i
    });
    loop {
        tokio::select! {
            _ = status.tick() => {
                let line = if *stop.borrow() {
                    format!("stopping: {} live sessions draining", live.len())
                } else {
                    status_line(&live, wireguard_status.as_deref())
                };
                send(&[NotifyState::Status(&line)]);
            }
            _ = async {
                match ping.as_mut() {
                    Some(p) => { p.tick().await; }
                    None => std::future::pending::<()>().await,
                }
            } => send(&[NotifyState::Watchdog]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_line_counts_no_sessions() {
        let r = Registry::new();
        assert_eq!(
            status_line(&r, None),
            "serving: 0 live sessions (ssh 0, postgres 0, mysql 0)"
        );
    }

    #[test]
    fn status_line_counts_devices_with_a_recent_handshake() {
        use crate::tunnel::status::{PeerStatus, Status};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wireguard-status.json");
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let peer = |handshake: Option<u64>| PeerStatus {
            last_handshake_unix: handshake,
            ..PeerStatus::default()
        };
        let mut st = Status {
            pid: std::process::id(),
            peers: vec![peer(Some(now - 5)), peer(Some(now - 600)), peer(None)],
            ..Status::default()
        };
        crate::tunnel::status::write(&path, &st).unwrap();
        let r = Registry::new();
        assert_eq!(
            status_line(&r, Some(&path)),
            "serving: 0 live sessions (ssh 0, postgres 0, mysql 0); WireGuard: 1 of 3 devices active"
        );
        // A file left by an earlier process says nothing about this one.
        st.pid = st.pid.wrapping_add(1);
        crate::tunnel::status::write(&path, &st).unwrap();
        assert_eq!(
            status_line(&r, Some(&path)),
            "serving: 0 live sessions (ssh 0, postgres 0, mysql 0)"
        );
    }
}
