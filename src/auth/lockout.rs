//! Login attempt limits.
//!
//! - A *source* is an IPv4 address, or the /64 network of an IPv6 address
//!   (one host usually holds a whole /64). Failures before a key is proven
//!   count against the source: a connection that offered only keys that are
//!   not the user's, or named a user that does not exist.
//! - A *user* collects only wrong and reused codes, which can only come from
//!   someone who holds one of her keys. A stranger can therefore never lock
//!   a user out.
//! - After `max_failures` failures within `failure_window`, the user or
//!   source is refused for `lockout`. A success clears the failure count of
//!   the user and of the source (not a running lock).
//!
//! The table is bounded: only configured users get a record (and their
//! names are bounded in length), so names of users that do not exist are
//! never stored, in memory or on disk. Sources are capped at
//! [`MAX_SOURCES`]; when full, the record that matters least is evicted:
//! first any record with nothing live in it, then the source whose last
//! failure is oldest among those not locked, and only then the lock that
//! ends soonest. User records are never evicted (there are only as many as
//! configured users).
//!
//! The table lives in memory behind its own short lock; a background writer
//! ([`crate::state::CoalescingWriter`]) stores it at most once a second, and
//! at once when a lock starts, so locks survive a restart.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use crate::config::AuthSettings;
use crate::state::{CoalescingWriter, LockoutRecords, Record, StateError};

/// Longest user name that is ever stored (configured names are shorter).
pub const MAX_USER_NAME: usize = 64;
/// Most source records kept; the least relevant is evicted beyond this.
pub const MAX_SOURCES: usize = 4096;
/// Ordinary changes reach the disk at most this often.
pub const WRITE_INTERVAL: Duration = Duration::from_secs(1);

/// Which subject a failure or lock applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subject<'a> {
    User(&'a str),
    Source(IpAddr),
}

impl Subject<'_> {
    /// The name used in audit events and in the file: `user:NAME`,
    /// `source:ADDR` (IPv4) or `source:PREFIX/64` (IPv6).
    pub fn label(&self) -> String {
        match self {
            Subject::User(u) => format!("user:{u}"),
            Subject::Source(a) => match source_key(*a) {
                IpAddr::V4(v4) => format!("source:{v4}"),
                IpAddr::V6(v6) => format!("source:{v6}/64"),
            },
        }
    }
}

/// The key a source address is counted under: the address for IPv4 (also
/// when written as an IPv4-mapped IPv6 address), the /64 for IPv6.
pub fn source_key(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V4(_) => addr,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let bits = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(Ipv6Addr::from(bits))
            }
        },
    }
}

/// A lock that a failure just started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewLock {
    /// `user:NAME` or `source:ADDR`.
    pub subject: String,
    pub until: u64,
}

#[derive(Debug, Clone, Copy)]
struct Limits {
    max_failures: usize,
    window: u64,
    lockout: u64,
    max_sources: usize,
}

#[derive(Debug, Default)]
struct Table {
    users: HashMap<String, Record>,
    sources: HashMap<IpAddr, Record>,
    /// Bumped on every change; the writer reports which one is on disk.
    generation: u64,
}

impl Table {
    fn record(&self, s: &Subject<'_>) -> Option<&Record> {
        match s {
            Subject::User(u) => self.users.get(*u),
            Subject::Source(a) => self.sources.get(&source_key(*a)),
        }
    }

    fn to_records(&self) -> LockoutRecords {
        let users = self
            .users
            .iter()
            .map(|(u, r)| (Subject::User(u).label(), r.clone()));
        let sources = self
            .sources
            .iter()
            .map(|(a, r)| (Subject::Source(*a).label(), r.clone()));
        LockoutRecords {
            records: users.chain(sources).collect(),
        }
    }

    /// Makes room for one more source record.
    fn evict_for_one_more(&mut self, limits: &Limits, now: u64) {
        if self.sources.len() < limits.max_sources {
            return;
        }
        self.sources.retain(|_, r| live(r, limits.window, now));
        while self.sources.len() >= limits.max_sources {
            // Not locked before locked; then the oldest last failure, or the
            // lock that ends soonest.
            let victim = self
                .sources
                .iter()
                .min_by_key(|(_, r)| match r.locked_until.filter(|&u| u > now) {
                    None => (false, r.failures.iter().copied().max().unwrap_or(0)),
                    Some(until) => (true, until),
                })
                .map(|(a, _)| *a);
            match victim {
                Some(a) => {
                    self.sources.remove(&a);
                }
                None => break,
            }
        }
    }
}

/// Whether a record still carries anything at `now`.
fn live(r: &Record, window: u64, now: u64) -> bool {
    r.failures.iter().any(|&t| t.saturating_add(window) > now)
        || r.locked_until.is_some_and(|u| u > now)
}

/// Lockout bookkeeping: an in-memory table with a background writer.
#[derive(Debug)]
pub struct Lockouts {
    limits: Limits,
    table: Arc<Mutex<Table>>,
    writer: CoalescingWriter,
}

fn lock(m: &Mutex<Table>) -> MutexGuard<'_, Table> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Lockouts {
    /// Loads the records at `path` and starts their writer. Records of users
    /// for whom `is_user` is false (no longer configured, or never were) are
    /// dropped, as is anything over the bounds.
    pub fn open(
        settings: &AuthSettings,
        path: PathBuf,
        is_user: impl Fn(&str) -> bool,
    ) -> Result<Lockouts, StateError> {
        Self::open_with_cap(settings, path, is_user, MAX_SOURCES)
    }

    pub(crate) fn open_with_cap(
        settings: &AuthSettings,
        path: PathBuf,
        is_user: impl Fn(&str) -> bool,
        max_sources: usize,
    ) -> Result<Lockouts, StateError> {
        let limits = Limits {
            max_failures: usize::try_from(settings.max_failures)
                .unwrap_or(usize::MAX)
                .max(1),
            window: secs(settings.failure_window),
            lockout: secs(settings.lockout),
            max_sources: max_sources.max(1),
        };
        let stored = LockoutRecords::load(&path)?;
        let now = super::unix_now();
        let mut table = Table::default();
        for (key, mut rec) in stored.records {
            if !live(&rec, limits.window, now) {
                continue;
            }
            rec.failures.sort_unstable();
            let excess = rec.failures.len().saturating_sub(limits.max_failures);
            rec.failures.drain(..excess);
            if let Some(name) = key.strip_prefix("user:") {
                if name.len() <= MAX_USER_NAME && is_user(name) {
                    table.users.insert(name.to_string(), rec);
                }
            } else if let Some(addr) = key.strip_prefix("source:") {
                let addr = addr.strip_suffix("/64").unwrap_or(addr);
                if let Ok(ip) = addr.parse::<IpAddr>() {
                    table.evict_for_one_more(&limits, now);
                    table.sources.insert(source_key(ip), rec);
                }
            }
        }
        let table = Arc::new(Mutex::new(table));
        let t = table.clone();
        let writer = CoalescingWriter::spawn(
            path,
            WRITE_INTERVAL,
            Box::new(move || {
                let t = lock(&t);
                Some((t.generation, t.to_records().to_bytes()))
            }),
        )?;
        Ok(Lockouts {
            limits,
            table,
            writer,
        })
    }

    /// Unix seconds until which `subject` is locked, if it is at `now`.
    pub fn locked_until(&self, subject: &Subject<'_>, now: u64) -> Option<u64> {
        lock(&self.table)
            .record(subject)
            .and_then(|r| r.locked_until)
            .filter(|&until| until > now)
    }

    /// Counts one failure against `subject`; returns the lock it started.
    /// The caller must only name configured users. The change reaches the
    /// disk in the background: at once when it starts a lock.
    pub fn failure(&self, subject: Subject<'_>, now: u64) -> (Option<NewLock>, u64) {
        let limits = self.limits;
        let mut t = lock(&self.table);
        let rec = match subject {
            Subject::User(u) if u.len() > MAX_USER_NAME => return (None, t.generation),
            Subject::User(u) => t.users.entry(u.to_string()).or_default(),
            Subject::Source(a) => {
                let key = source_key(a);
                if !t.sources.contains_key(&key) {
                    t.evict_for_one_more(&limits, now);
                }
                t.sources.entry(key).or_default()
            }
        };
        if rec.locked_until.is_some_and(|u| u > now) {
            // Already locked: nothing to count, nothing to grow.
            return (None, t.generation);
        }
        rec.locked_until = None;
        rec.failures
            .retain(|&f| f.saturating_add(limits.window) > now);
        rec.failures.push(now);
        let mut started = None;
        if rec.failures.len() >= limits.max_failures {
            let until = now.saturating_add(limits.lockout);
            rec.locked_until = Some(until);
            rec.failures.clear();
            started = Some(NewLock {
                subject: subject.label(),
                until,
            });
        }
        t.generation += 1;
        let generation = t.generation;
        drop(t);
        self.writer.changed(generation, started.is_some());
        (started, generation)
    }

    /// A successful login: clears the failure counts of these subjects (a
    /// running lock stays).
    pub fn success(&self, subjects: &[Subject<'_>]) {
        let mut t = lock(&self.table);
        let mut changed = false;
        for s in subjects {
            let rec = match s {
                Subject::User(u) => t.users.get_mut(*u),
                Subject::Source(a) => t.sources.get_mut(&source_key(*a)),
            };
            if let Some(r) = rec {
                if !r.failures.is_empty() {
                    r.failures.clear();
                    changed = true;
                }
            }
        }
        if changed {
            t.generation += 1;
            let generation = t.generation;
            drop(t);
            self.writer.changed(generation, false);
        }
    }

    /// Waits (blocking) until `generation` is on disk, at most `timeout`.
    pub fn wait_written(&self, generation: u64, timeout: Duration) -> bool {
        self.writer.wait_written(generation, timeout)
    }

    /// Number of (user, source) records held.
    pub fn len(&self) -> (usize, usize) {
        let t = lock(&self.table);
        (t.users.len(), t.sources.len())
    }
}

fn secs(d: Duration) -> u64 {
    d.as_secs().max(1)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn settings() -> AuthSettings {
        AuthSettings {
            max_failures: 3,
            failure_window: Duration::from_secs(60),
            lockout: Duration::from_secs(120),
            mfa_lease: Duration::from_secs(0),
            max_connection_age: Duration::from_secs(3600),
        }
    }

    fn open(path: &std::path::Path) -> Lockouts {
        Lockouts::open(&settings(), path.to_path_buf(), |u| u == "alice").unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn max_failures_within_window_locks_and_lock_expires_and_survives_reload() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("lockouts.json");
        let now = super::super::unix_now();
        let l = open(&path);
        let u = Subject::User("alice");
        assert!(l.failure(u, now).0.is_none());
        assert!(l.failure(u, now + 1).0.is_none());
        let (lock, generation) = l.failure(u, now + 2);
        assert_eq!(lock.unwrap().subject, "user:alice");
        assert_eq!(l.locked_until(&u, now + 3), Some(now + 122));
        // The lock is written at once, not after the write interval.
        assert!(l.wait_written(generation, Duration::from_millis(500)));
        let l2 = open(&path);
        assert_eq!(l2.locked_until(&u, now + 3), Some(now + 122));
        assert_eq!(l2.locked_until(&u, now + 122), None, "lock must expire");
    }

    #[test]
    fn failures_outside_the_window_do_not_count() {
        let tmp = tempfile::tempdir().unwrap();
        let l = open(&tmp.path().join("l.json"));
        let s = Subject::Source(ip("127.0.0.9"));
        l.failure(s, 0);
        l.failure(s, 10);
        assert!(l.failure(s, 100).0.is_none());
        assert_eq!(l.locked_until(&s, 101), None);
    }

    #[test]
    fn ipv6_sources_count_per_64_and_ipv4_per_address() {
        let tmp = tempfile::tempdir().unwrap();
        let l = open(&tmp.path().join("l.json"));
        let now = 1000;
        l.failure(Subject::Source(ip("2001:db8:1:2::1")), now);
        l.failure(Subject::Source(ip("2001:db8:1:2:ffff::9")), now);
        let (lock, _) = l.failure(Subject::Source(ip("2001:db8:1:2:1:2:3:4")), now);
        assert_eq!(lock.unwrap().subject, "source:2001:db8:1:2::/64");
        assert!(l
            .locked_until(&Subject::Source(ip("2001:db8:1:2:abcd::1")), now)
            .is_some());
        assert!(l
            .locked_until(&Subject::Source(ip("2001:db8:1:3::1")), now)
            .is_none());
        for a in ["10.0.0.1", "10.0.0.2", "::ffff:10.0.0.3"] {
            assert!(l.failure(Subject::Source(ip(a)), now).0.is_none());
        }
        assert_eq!(
            Subject::Source(ip("::ffff:10.0.0.3")).label(),
            "source:10.0.0.3"
        );
    }

    #[test]
    fn a_success_clears_failure_counts_but_not_a_running_lock() {
        let tmp = tempfile::tempdir().unwrap();
        let l = open(&tmp.path().join("l.json"));
        let (u, s) = (Subject::User("alice"), Subject::Source(ip("10.1.1.1")));
        for t in 0..2 {
            l.failure(u, t);
            l.failure(s, t);
        }
        l.success(&[u, s]);
        assert!(l.failure(u, 3).0.is_none(), "failures were not cleared");
        assert!(l.failure(s, 3).0.is_none(), "failures were not cleared");
        l.failure(u, 4);
        assert!(l.failure(u, 5).0.is_some());
        l.success(&[u]);
        assert!(l.locked_until(&u, 6).is_some(), "a success ended a lock");
    }

    #[test]
    fn a_locked_subject_does_not_grow_and_the_source_table_is_capped() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("l.json");
        let l = Lockouts::open_with_cap(&settings(), path.clone(), |u| u == "alice", 100).unwrap();
        let now = 10_000;
        let locked = Subject::Source(ip("192.0.2.1"));
        for _ in 0..3 {
            l.failure(locked, now);
        }
        for _ in 0..1000 {
            l.failure(locked, now);
        }
        // Far more sources than the cap, each failing once, after the lock.
        for i in 0..5000u32 {
            let a = IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            l.failure(Subject::Source(a), now + 1);
        }
        let (_, sources) = l.len();
        assert!(sources <= 100, "{sources} source records");
        assert!(
            l.locked_until(&locked, now + 2).is_some(),
            "an unlocked record must be evicted before a lock"
        );
        let (_, generation) = l.failure(Subject::Source(ip("192.0.2.2")), now + 2);
        l.wait_written(generation, Duration::from_secs(3));
        drop(l);
        let size = std::fs::metadata(&path).unwrap().len();
        assert!(size < 100 * 120, "file of {size} bytes for 100 records");
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("\"source:192.0.2.1\""), "{text}");
    }

    #[test]
    fn names_of_users_that_do_not_exist_are_dropped_on_load() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("l.json");
        let long = "x".repeat(30_000);
        let text = format!(
            r#"{{"records":{{"user:{long}":{{"failures":[{n}],"locked_until":null}},
                "user:mallory":{{"failures":[{n}],"locked_until":null}},
                "user:alice":{{"failures":[{n},{n},{n},{n},{n},{n}],"locked_until":null}}}}}}"#,
            n = super::super::unix_now()
        );
        std::fs::write(&path, text).unwrap();
        let l = open(&path);
        assert_eq!(l.len(), (1, 0));
        let (_, generation) = l.failure(Subject::Source(ip("10.9.9.9")), 1);
        assert!(l.wait_written(generation, Duration::from_secs(3)));
        let on_disk = std::fs::read_to_string(&path).unwrap();
        assert!(
            !on_disk.contains("mallory") && !on_disk.contains("xxxx"),
            "{on_disk}"
        );
    }
}
