//! Aggregation of refusals that a running lock causes, so that a flood from
//! a locked source does not drown the audit trail: the first refusal from a
//! source is reported at once, the following ones within the same minute
//! are counted, and one event per source per minute carries the count.
//!
//! The table is bounded: beyond [`MAX_TRACKED`] sources, the rest share one
//! entry (reported as source `*`).

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// One report per source per this long.
pub const WINDOW: Duration = Duration::from_secs(60);
/// Sources tracked one by one.
pub const MAX_TRACKED: usize = 4096;

/// What to report: `count` refusals from `source` (`*`: many sources), the
/// last of them for `user` because `subject` is locked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub source: String,
    pub user: String,
    pub subject: String,
    pub count: u64,
}

#[derive(Debug)]
struct Window {
    started: Instant,
    source: String,
    /// Refusals since the last report.
    unreported: u64,
    user: String,
    subject: String,
}

/// Per-source refusal windows.
#[derive(Debug, Default)]
pub struct Refusals {
    windows: HashMap<Option<IpAddr>, Window>,
}

impl Refusals {
    /// Notes one refusal; returns a report when one is due now.
    pub fn refused(
        &mut self,
        source: IpAddr,
        label: &str,
        user: &str,
        subject: &str,
        now: Instant,
    ) -> Option<Report> {
        let mut key = Some(source);
        let mut label = bounded(label);
        if !self.windows.contains_key(&key) && self.windows.len() >= MAX_TRACKED {
            key = None;
            label = "*".into();
        }
        let user = bounded(user);
        match self.windows.get_mut(&key) {
            Some(w) if now.duration_since(w.started) < WINDOW => {
                w.unreported += 1;
                w.user = user;
                subject.clone_into(&mut w.subject);
                None
            }
            Some(w) => {
                let count = w.unreported + 1;
                w.started = now;
                w.unreported = 0;
                Some(Report {
                    source: w.source.clone(),
                    user,
                    subject: subject.to_string(),
                    count,
                })
            }
            None => {
                self.windows.insert(
                    key,
                    Window {
                        started: now,
                        source: label.clone(),
                        unreported: 0,
                        user: user.clone(),
                        subject: subject.to_string(),
                    },
                );
                Some(Report {
                    source: label,
                    user,
                    subject: subject.to_string(),
                    count: 1,
                })
            }
        }
    }

    /// Reports of windows that ended with refusals not yet reported (each
    /// opens a new window), and forgets quiet ones.
    pub fn due(&mut self, now: Instant) -> Vec<Report> {
        let mut out = Vec::new();
        self.windows.retain(|_, w| {
            if now.duration_since(w.started) < WINDOW {
                return true;
            }
            if w.unreported == 0 {
                return false;
            }
            out.push(Report {
                source: w.source.clone(),
                user: w.user.clone(),
                subject: w.subject.clone(),
                count: w.unreported,
            });
            w.started = now;
            w.unreported = 0;
            true
        });
        out
    }
}

/// A name as kept here: at most 64 bytes (on a character boundary).
fn bounded(user: &str) -> String {
    let mut end = user.len().min(64);
    while !user.is_char_boundary(end) {
        end -= 1;
    }
    user.get(..end).unwrap_or_default().to_string()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn one_report_per_source_per_minute_with_the_count() {
        let mut r = Refusals::default();
        let t0 = Instant::now();
        let a: IpAddr = "192.0.2.7".parse().unwrap();
        let b: IpAddr = "192.0.2.8".parse().unwrap();
        let first = r
            .refused(a, "192.0.2.7", "alice", "source:192.0.2.7", t0)
            .unwrap();
        assert_eq!(first.count, 1);
        for i in 1..1000 {
            assert!(r
                .refused(
                    a,
                    "192.0.2.7",
                    "alice",
                    "source:192.0.2.7",
                    t0 + Duration::from_millis(i)
                )
                .is_none());
        }
        assert_eq!(
            r.refused(b, "192.0.2.8", "x", "source:192.0.2.8", t0)
                .unwrap()
                .count,
            1
        );
        assert!(r.due(t0 + Duration::from_secs(59)).is_empty());
        let due = r.due(t0 + Duration::from_secs(61));
        assert_eq!(due.len(), 1, "{due:?}");
        assert_eq!(due[0].count, 999);
        assert_eq!(due[0].source, "192.0.2.7");
        // A new window opened: the next refusal waits for its end.
        assert!(r
            .refused(
                a,
                "192.0.2.7",
                "alice",
                "source:192.0.2.7",
                t0 + Duration::from_secs(62)
            )
            .is_none());
        let next = r
            .refused(
                a,
                "192.0.2.7",
                "alice",
                "source:192.0.2.7",
                t0 + Duration::from_secs(122),
            )
            .unwrap();
        assert_eq!(next.count, 2);
    }

    #[test]
    fn the_table_is_bounded_and_long_names_are_cut() {
        let mut r = Refusals::default();
        let t0 = Instant::now();
        let long = "é".repeat(20_000);
        for i in 0..(MAX_TRACKED as u32 + 500) {
            let a = IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            r.refused(a, "a", &long, "user:alice", t0);
        }
        assert_eq!(r.windows.len(), MAX_TRACKED + 1);
        assert!(r.windows.values().all(|w| w.user.len() <= 64));
    }
}
