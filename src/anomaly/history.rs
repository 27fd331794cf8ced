//! What the login rules learn per user, persisted in the state directory:
//! the source networks a user has logged in from and the hours of the week
//! (UTC) they logged in at during the last 30 days.
//!
//! The file is `anomaly.json` in the state directory (0600, written
//! atomically by a background [`CoalescingWriter`]). It holds user names,
//! networks and times, nothing secret. Memory and the file are bounded:
//! [`MAX_USERS`] users, [`MAX_NETWORKS`] networks per user (the least
//! recently seen is forgotten), 168 hours per user.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::state::{CoalescingWriter, StateError};

/// Users tracked at most; logins of further users are not learned (and
/// a warning says so once).
pub const MAX_USERS: usize = 10_000;
/// Networks remembered per user at most.
pub const MAX_NETWORKS: usize = 64;
/// How far back the hour-of-week rule looks.
pub const HOUR_MEMORY: u64 = 30 * 24 * 3600;
/// The file name in the state directory.
pub const FILE: &str = "anomaly.json";
/// Routine updates (a known network or hour seen again) reach the disk at
/// most this often; a new user or network is written at once. The whole
/// file is rewritten each time, so this bounds the disk work under load.
pub const WRITE_INTERVAL: Duration = Duration::from_secs(10);

/// The persisted form.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistoryFile {
    pub version: u32,
    pub users: BTreeMap<String, UserHistory>,
}

/// One user's learned history.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserHistory {
    /// Unix time of the first login seen.
    pub first_seen: u64,
    /// Network (`10.1.2.0/24`, `2001:db8:1::/48`) -> last login from it.
    #[serde(default)]
    pub networks: BTreeMap<String, u64>,
    /// Hour of the week (0 = Monday 00:00 UTC) -> last login in it.
    #[serde(default)]
    pub hours: BTreeMap<u32, u64>,
}

/// What one login looked like, for the rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finding {
    NewNetwork {
        network: String,
        known: usize,
    },
    UnusualHour {
        hour_of_week: u32,
        active_hours: usize,
    },
}

/// Which rules judge (learning happens either way).
#[derive(Debug, Clone, Copy)]
pub struct Judge {
    pub new_network: bool,
    pub unusual_hour: bool,
    pub learning_period: Duration,
}

struct Inner {
    file: HistoryFile,
    generation: u64,
    warned_full: bool,
}

/// The learned history and its writer.
pub struct History {
    inner: Arc<Mutex<Inner>>,
    writer: CoalescingWriter,
}

fn lock(m: &Mutex<Inner>) -> MutexGuard<'_, Inner> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl History {
    /// Loads `anomaly.json` from `state_dir` (empty when absent) and starts
    /// its writer. A file that does not parse is an error: gatehouse does
    /// not silently forget what it learned.
    pub fn open(state_dir: &Path) -> Result<History, StateError> {
        let path = state_dir.join(FILE);
        let file = load(&path)?;
        let inner = Arc::new(Mutex::new(Inner {
            file,
            generation: 0,
            warned_full: false,
        }));
        let snap = inner.clone();
        let writer = CoalescingWriter::spawn(
            path,
            WRITE_INTERVAL,
            Box::new(move || {
                let st = lock(&snap);
                let bytes = serde_json::to_vec_pretty(&st.file).ok()?;
                Some((st.generation, bytes))
            }),
        )?;
        Ok(History { inner, writer })
    }

    /// Learns one login of `user` at `now` (unix seconds) from `network`
    /// (None when unknown) and returns what the enabled rules find.
    pub fn login(&self, user: &str, network: Option<&str>, now: u64, judge: Judge) -> Vec<Finding> {
        let mut st = lock(&self.inner);
        let users = st.file.users.len();
        let (findings, changed, urgent) = match st.file.users.get_mut(user) {
            Some(h) => observe(h, network, now, judge),
            None if users >= MAX_USERS => {
                if !st.warned_full {
                    st.warned_full = true;
                    tracing::warn!(
                        max = MAX_USERS,
                        "anomaly: the login history is full; new users are not learned"
                    );
                }
                return Vec::new();
            }
            None => {
                let mut h = UserHistory {
                    first_seen: now,
                    ..UserHistory::default()
                };
                // The first login ever only learns.
                observe(
                    &mut h,
                    network,
                    now,
                    Judge {
                        new_network: false,
                        unusual_hour: false,
                        ..judge
                    },
                );
                st.file.users.insert(user.to_string(), h);
                (Vec::new(), true, true)
            }
        };
        if changed {
            st.generation += 1;
            let generation = st.generation;
            drop(st);
            self.writer.changed(generation, urgent);
        }
        findings
    }

    /// Waits (blocking) until everything learned so far is on disk.
    pub fn flush(&self, timeout: Duration) -> bool {
        let generation = lock(&self.inner).generation;
        self.writer.wait_written(generation, timeout)
    }
}

fn load(path: &Path) -> Result<HistoryFile, StateError> {
    let text = match std::fs::read(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(HistoryFile {
                version: 1,
                users: BTreeMap::new(),
            })
        }
        Err(e) => {
            return Err(StateError::Io {
                path: path.to_path_buf(),
                source: e,
            })
        }
    };
    let mut file: HistoryFile = serde_json::from_slice(&text).map_err(|e| StateError::Corrupt {
        path: path.to_path_buf(),
        message: format!("not a login history: {e}"),
    })?;
    file.version = 1;
    Ok(file)
}

/// Judges and learns one login; returns the findings, whether anything
/// worth writing changed, and whether it should be written at once (a new
/// network: forgetting it in a crash would report it twice).
fn observe(
    h: &mut UserHistory,
    network: Option<&str>,
    now: u64,
    judge: Judge,
) -> (Vec<Finding>, bool, bool) {
    let mut findings = Vec::new();
    let mut changed = false;
    let mut urgent = false;
    if let Some(net) = network {
        match h.networks.get_mut(net) {
            Some(seen) => {
                // At most one write a day for a known network.
                if now.saturating_sub(*seen) >= 24 * 3600 {
                    changed = true;
                }
                *seen = now;
            }
            None => {
                if judge.new_network {
                    findings.push(Finding::NewNetwork {
                        network: net.to_string(),
                        known: h.networks.len(),
                    });
                }
                h.networks.insert(net.to_string(), now);
                while h.networks.len() > MAX_NETWORKS {
                    let oldest = h
                        .networks
                        .iter()
                        .min_by_key(|(_, t)| **t)
                        .map(|(n, _)| n.clone());
                    match oldest {
                        Some(n) => h.networks.remove(&n),
                        None => break,
                    };
                }
                changed = true;
                urgent = true;
            }
        }
    }
    let cutoff = now.saturating_sub(HOUR_MEMORY);
    let before = h.hours.len();
    h.hours.retain(|_, t| *t >= cutoff);
    changed |= h.hours.len() != before;
    let how = hour_of_week(now);
    let learned = now.saturating_sub(h.first_seen) >= judge.learning_period.as_secs();
    match h.hours.get(&how) {
        Some(seen) => {
            // At most one write an hour for a known hour.
            if now.saturating_sub(*seen) >= 3600 {
                changed = true;
            }
        }
        None => {
            if judge.unusual_hour && learned {
                findings.push(Finding::UnusualHour {
                    hour_of_week: how,
                    active_hours: h.hours.len(),
                });
            }
            changed = true;
        }
    }
    h.hours.insert(how, now);
    (findings, changed, urgent)
}

/// The hour of the week of a unix time, 0 = Monday 00:00-01:00 UTC (the
/// epoch was a Thursday, 72 hours after a Monday midnight).
pub fn hour_of_week(unix: u64) -> u32 {
    u32::try_from((unix / 3600 + 72) % 168).unwrap_or(0)
}

/// `Mon 03:00-04:00 UTC` for an hour of the week.
pub fn describe_hour(how: u32) -> String {
    let day = match how / 24 {
        0 => "Mon",
        1 => "Tue",
        2 => "Wed",
        3 => "Thu",
        4 => "Fri",
        5 => "Sat",
        _ => "Sun",
    };
    let h = how % 24;
    format!("{day} {h:02}:00-{:02}:00 UTC", (h + 1) % 24)
}

/// The network a login is judged by: /24 for IPv4, /48 for IPv6 (an
/// IPv4-mapped IPv6 address counts as IPv4).
pub fn network_of(ip: IpAddr) -> String {
    match ip.to_canonical() {
        IpAddr::V4(a) => {
            let [a, b, c, _] = a.octets();
            format!("{}/24", Ipv4Addr::new(a, b, c, 0))
        }
        IpAddr::V6(a) => {
            let [s0, s1, s2, ..] = a.segments();
            format!("{}/48", Ipv6Addr::new(s0, s1, s2, 0, 0, 0, 0, 0))
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    const JUDGE: Judge = Judge {
        new_network: true,
        unusual_hour: true,
        learning_period: Duration::from_secs(14 * 24 * 3600),
    };
    const DAY: u64 = 24 * 3600;
    /// A Monday, 00:00 UTC (2026-12-07).
    const MONDAY: u64 = 1_796_601_600;

    #[test]
    fn networks_are_slash_24_and_slash_48() {
        assert_eq!(network_of("192.0.2.77".parse().unwrap()), "192.0.2.0/24");
        assert_eq!(
            network_of("2001:db8:1:2::9".parse().unwrap()),
            "2001:db8:1::/48"
        );
        assert_eq!(
            network_of("::ffff:10.1.2.3".parse().unwrap()),
            "10.1.2.0/24"
        );
    }

    #[test]
    fn hours_of_the_week_start_on_monday_utc() {
        assert_eq!(hour_of_week(MONDAY), 0);
        assert_eq!(hour_of_week(MONDAY + 3 * 3600 + 59), 3);
        assert_eq!(hour_of_week(MONDAY + 6 * DAY + 23 * 3600), 167);
        assert_eq!(hour_of_week(MONDAY + 7 * DAY), 0);
        assert_eq!(describe_hour(3), "Mon 03:00-04:00 UTC");
        assert_eq!(describe_hour(167), "Sun 23:00-00:00 UTC");
    }

    #[test]
    fn the_first_login_only_learns_then_a_new_network_is_found_once() {
        let dir = tempfile::tempdir().unwrap();
        let h = History::open(dir.path()).unwrap();
        assert!(h
            .login("alice", Some("192.0.2.0/24"), MONDAY, JUDGE)
            .is_empty());
        assert!(h
            .login("alice", Some("192.0.2.0/24"), MONDAY + 60, JUDGE)
            .is_empty());
        let f = h.login("alice", Some("198.51.100.0/24"), MONDAY + 120, JUDGE);
        assert_eq!(
            f,
            vec![Finding::NewNetwork {
                network: "198.51.100.0/24".into(),
                known: 1
            }]
        );
        assert!(h
            .login("alice", Some("198.51.100.0/24"), MONDAY + 180, JUDGE)
            .is_empty());
        // Learned per user: bob's first login from there only learns.
        assert!(h
            .login("bob", Some("198.51.100.0/24"), MONDAY, JUDGE)
            .is_empty());
    }

    #[test]
    fn an_unseen_hour_is_found_only_after_the_learning_period() {
        let dir = tempfile::tempdir().unwrap();
        let h = History::open(dir.path()).unwrap();
        let net = Some("192.0.2.0/24");
        assert!(h.login("alice", net, MONDAY + 9 * 3600, JUDGE).is_empty());
        // Day 1 at 03:00: unseen, but still learning.
        assert!(h
            .login("alice", net, MONDAY + DAY + 3 * 3600, JUDGE)
            .is_empty());
        // Day 15 (a Tuesday) at 03:00: seen on day 1 (within 30 days).
        assert!(h
            .login("alice", net, MONDAY + 15 * DAY + 3 * 3600, JUDGE)
            .is_empty());
        // Day 16 at 04:00: never seen, after learning.
        let f = h.login("alice", net, MONDAY + 16 * DAY + 4 * 3600, JUDGE);
        assert!(
            matches!(f.as_slice(), [Finding::UnusualHour { hour_of_week, .. }] if *hour_of_week == 2 * 24 + 4)
        );
        // Day 60 (a Saturday) at 09:00: Monday 09:00 was seen, but Sat 09:00 never.
        let f = h.login("alice", net, MONDAY + 61 * DAY + 9 * 3600, JUDGE);
        assert_eq!(f.len(), 1);
        // Day 75, Monday 09:00: seen on day 0, but more than 30 days ago.
        let f = h.login("alice", net, MONDAY + 77 * DAY + 9 * 3600, JUDGE);
        assert_eq!(f.len(), 1, "{f:?}");
    }

    #[test]
    fn rules_turned_off_find_nothing_but_still_learn() {
        let dir = tempfile::tempdir().unwrap();
        let h = History::open(dir.path()).unwrap();
        let off = Judge {
            new_network: false,
            unusual_hour: false,
            learning_period: Duration::ZERO,
        };
        h.login("alice", Some("192.0.2.0/24"), MONDAY, off);
        assert!(h
            .login("alice", Some("10.0.0.0/24"), MONDAY + 5 * 3600, off)
            .is_empty());
        assert!(h
            .login("alice", Some("10.0.0.0/24"), MONDAY + 5 * 3600, JUDGE)
            .is_empty());
    }

    #[test]
    fn the_history_is_persisted_0600_and_read_back() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        {
            let h = History::open(dir.path()).unwrap();
            h.login("alice", Some("192.0.2.0/24"), MONDAY, JUDGE);
            assert!(h.flush(Duration::from_secs(5)));
        }
        let path = dir.path().join(FILE);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let h = History::open(dir.path()).unwrap();
        assert!(h
            .login("alice", Some("192.0.2.0/24"), MONDAY + 60, JUDGE)
            .is_empty());
        assert_eq!(
            h.login("alice", Some("192.0.3.0/24"), MONDAY + 90, JUDGE)
                .len(),
            1
        );
    }

    #[test]
    fn networks_per_user_are_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let h = History::open(dir.path()).unwrap();
        for i in 0..(MAX_NETWORKS as u64 + 10) {
            h.login("alice", Some(&format!("10.0.{i}.0/24")), MONDAY + i, JUDGE);
        }
        let st = lock(&h.inner);
        assert_eq!(st.file.users["alice"].networks.len(), MAX_NETWORKS);
        assert!(!st.file.users["alice"].networks.contains_key("10.0.0.0/24"));
    }
}
