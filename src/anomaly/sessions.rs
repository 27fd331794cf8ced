//! The session rules: `target_spread` from the live registry's session
//! starts, `bulk_transfer` by looking at every live session's bytes towards
//! the user once a second (each session fires at most once).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::broadcast::error::RecvError;
use tokio::sync::watch;

use super::{Anomaly, DETECTOR};
use crate::live::Registry;

/// How often live sessions' byte counts are looked at.
pub const POLL: Duration = Duration::from_secs(1);

/// Runs the session rules over `registry` until `shutdown` turns true; does
/// nothing when no detector is installed.
pub fn watch_sessions(registry: Arc<Registry>, mut shutdown: watch::Receiver<bool>) {
    let Some(detector) = DETECTOR.get() else {
        return;
    };
    let mut starts = registry.starts();
    tokio::spawn(async move {
        let s = detector.settings();
        let mut fired: HashSet<String> = HashSet::new();
        let mut tick = tokio::time::interval(POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut starts_open = true;
        loop {
            tokio::select! {
                _ = shutdown.changed() => {
                    if *shutdown.borrow() { return; }
                }
                started = starts.recv(), if starts_open => match started {
                    Ok(live) => detector.on_session_start(&live.info.user, &live.info.target, Instant::now()),
                    Err(RecvError::Lagged(n)) => {
                        tracing::warn!(missed = n, "anomaly: missed session starts (too many at once)");
                    }
                    Err(RecvError::Closed) => starts_open = false,
                },
                _ = tick.tick() => {
                    if !s.bulk_transfer {
                        continue;
                    }
                    let live = registry.all();
                    // Forget sessions that ended: bounded by the live ones.
                    fired.retain(|id| live.iter().any(|l| &l.info.id == id));
                    for l in live {
                        let down = l.bytes_down();
                        if down > s.max_bytes_down && !fired.contains(&l.info.id) {
                            fired.insert(l.info.id.clone());
                            detector.fire(Anomaly::BulkTransfer {
                                session_id: l.info.id.clone(),
                                user: l.info.user.clone(),
                                target: l.info.target.clone(),
                                source: l.info.source.clone(),
                                bytes_down: down,
                                limit: s.max_bytes_down,
                            });
                        }
                    }
                }
            }
        }
    });
}
