//! Login attempt limits: after `max_failures` failures for a user, or from a
//! source address, within `failure_window`, that user or source is refused
//! for `lockout`. Records are persisted so a restart does not reset them.

use std::net::IpAddr;
use std::time::Duration;

use crate::config::AuthSettings;
use crate::state::{LockoutRecords, StateError};

/// Which subject a lockout applies to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subject<'a> {
    User(&'a str),
    Source(IpAddr),
}

impl Subject<'_> {
    fn key(&self) -> String {
        match self {
            Subject::User(u) => format!("user:{u}"),
            Subject::Source(a) => format!("source:{a}"),
        }
    }
}

/// Lockout bookkeeping over persisted records.
#[derive(Debug)]
pub struct Lockouts {
    max_failures: u32,
    window: u64,
    lockout: u64,
    records: LockoutRecords,
}

/// A lock that a failure just started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewLock {
    pub subject: String,
    pub until: u64,
}

impl Lockouts {
    pub fn new(settings: &AuthSettings, records: LockoutRecords) -> Lockouts {
        Lockouts {
            max_failures: settings.max_failures,
            window: secs(settings.failure_window),
            lockout: secs(settings.lockout),
            records,
        }
    }

    /// Unix seconds until which `subject` is locked, if it is at `now`.
    pub fn locked_until(&self, subject: &Subject<'_>, now: u64) -> Option<u64> {
        self.records
            .records
            .get(&subject.key())
            .and_then(|r| r.locked_until)
            .filter(|&until| until > now)
    }

    /// Records one failure against each subject; returns the locks it started.
    /// Persisted before returning.
    pub fn record_failure(
        &mut self,
        subjects: &[Subject<'_>],
        now: u64,
    ) -> Result<Vec<NewLock>, StateError> {
        let mut locks = Vec::new();
        for s in subjects {
            let key = s.key();
            let rec = self.records.records.entry(key.clone()).or_default();
            rec.failures.retain(|&t| t + self.window > now);
            rec.failures.push(now);
            let already = rec.locked_until.is_some_and(|u| u > now);
            if !already && rec.failures.len() as u32 >= self.max_failures {
                let until = now + self.lockout;
                rec.locked_until = Some(until);
                rec.failures.clear();
                locks.push(NewLock {
                    subject: key,
                    until,
                });
            }
        }
        // Drop records that carry nothing any more, to keep the file small.
        let window = self.window;
        self.records.records.retain(|_, r| {
            r.failures.iter().any(|&t| t + window > now) || r.locked_until.is_some_and(|u| u > now)
        });
        self.records.save()?;
        Ok(locks)
    }

    /// A success clears the user's failure count (not an active lock).
    pub fn record_success(&mut self, user: &str) -> Result<(), StateError> {
        let key = Subject::User(user).key();
        if let Some(r) = self.records.records.get_mut(&key) {
            if !r.failures.is_empty() {
                r.failures.clear();
                self.records.save()?;
            }
        }
        Ok(())
    }
}

fn secs(d: Duration) -> u64 {
    d.as_secs().max(1)
}

#[cfg(test)]
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

    #[test]
    fn max_failures_within_window_locks_and_lock_expires_and_survives_reload() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("lockouts.json");
        let mut l = Lockouts::new(&settings(), LockoutRecords::load(&path).unwrap());
        let u = Subject::User("alice");
        assert!(l
            .record_failure(std::slice::from_ref(&u), 1000)
            .unwrap()
            .is_empty());
        assert!(l
            .record_failure(std::slice::from_ref(&u), 1001)
            .unwrap()
            .is_empty());
        let locks = l.record_failure(std::slice::from_ref(&u), 1002).unwrap();
        assert_eq!(locks.len(), 1);
        assert_eq!(l.locked_until(&u, 1003), Some(1122));
        // reload from disk, as after a restart
        let l2 = Lockouts::new(&settings(), LockoutRecords::load(&path).unwrap());
        assert_eq!(l2.locked_until(&u, 1003), Some(1122));
        assert_eq!(l2.locked_until(&u, 1122), None, "lock must expire");
    }

    #[test]
    fn failures_outside_the_window_do_not_count() {
        let tmp = tempfile::tempdir().unwrap();
        let mut l = Lockouts::new(
            &settings(),
            LockoutRecords::load(&tmp.path().join("l.json")).unwrap(),
        );
        let s = Subject::Source("127.0.0.9".parse().unwrap());
        l.record_failure(std::slice::from_ref(&s), 0).unwrap();
        l.record_failure(std::slice::from_ref(&s), 10).unwrap();
        assert!(l
            .record_failure(std::slice::from_ref(&s), 100)
            .unwrap()
            .is_empty());
        assert_eq!(l.locked_until(&s, 101), None);
    }
}
