//! Retention: recordings older than `[recordings] retention` are removed by
//! the daemon, at start and every hour, each removal audited. Age counts
//! from the end of a recording (or, for one that never finished, from its
//! last sealed segment), so a long session is kept for the full period.
//! Recordings being written are never touched.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::format::{self, Meta};
use super::RecorderInner;
use crate::audit;

const INTERVAL: Duration = Duration::from_secs(3600);

pub(super) fn spawn(inner: Arc<RecorderInner>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
    tokio::spawn(async move {
        loop {
            if *shutdown.borrow() {
                return;
            }
            let i = inner.clone();
            match tokio::task::spawn_blocking(move || sweep(&i, SystemTime::now())).await {
                Ok(n) if n > 0 => {
                    tracing::info!(removed = n, "retention removed expired recordings")
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "retention sweep failed"),
            }
            tokio::select! {
                _ = tokio::time::sleep(INTERVAL) => {}
                r = shutdown.changed() => {
                    if r.is_err() {
                        return;
                    }
                }
            }
        }
    });
}

/// When a recording last changed: its end, else its last sealed segment,
/// else its start (Unix ms).
fn last_activity_ms(dir: &Path, meta: Option<&Meta>) -> Option<u64> {
    if let Some(end) = meta.and_then(|m| m.end.as_ref()) {
        return Some(end.ended_unix_ms);
    }
    let manifest_mtime = std::fs::metadata(dir.join(format::MANIFEST_FILE))
        .and_then(|m| m.modified())
        .ok()
        .map(format::unix_ms);
    let started = meta.map(|m| m.started_unix_ms);
    match (manifest_mtime, started) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    }
}

/// Removes expired recordings; returns how many.
pub(super) fn sweep(inner: &RecorderInner, now: SystemTime) -> usize {
    if inner.retention.is_zero() {
        return 0;
    }
    let now_ms = format::unix_ms(now);
    let keep_ms = u64::try_from(inner.retention.as_millis()).unwrap_or(u64::MAX);
    let Ok(all) = super::reader::list(&inner.dir) else {
        return 0;
    };
    let mut removed = 0;
    for rec in all {
        if inner.is_active(&rec.id) {
            continue;
        }
        let meta = rec.meta.as_ref().ok();
        let Some(last) = last_activity_ms(&rec.dir, meta) else {
            continue;
        };
        if now_ms.saturating_sub(last) < keep_ms {
            continue;
        }
        let (user, target, started) = meta
            .map(|m| (m.user.clone(), m.target.clone(), m.started.clone()))
            .unwrap_or_else(|| ("?".into(), "?".into(), "?".into()));
        let reason = format!(
            "older than retention ({}; last activity {})",
            humantime::format_duration(inner.retention),
            humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(last))
        );
        match std::fs::remove_dir_all(&rec.dir) {
            Ok(()) => {
                audit::recording_removed(&rec.id, &user, &target, &started, &reason);
                removed += 1;
            }
            Err(e) => {
                tracing::warn!(recording_id = %rec.id, error = %e, "cannot remove an expired recording")
            }
        }
    }
    removed
}
