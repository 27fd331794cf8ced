//! Administrators' locks (`gatehouse lock user|device|target NAME`): a
//! locked user, WireGuard device or target gets no new login or session
//! until the lock expires or is lifted, and its live sessions are ended
//! when the lock is set (by the control socket, through the live registry).
//!
//! Locks are persisted in `<state_dir>/locks.json` (0600, written
//! atomically) and survive a restart. Expired locks are dropped when read.
//! A file that cannot be read is an error at start: a lock must never be
//! lifted by a damaged file.

#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::auth::unix_now;
use crate::live::SessionInfo;
use crate::state::{write_secret_file, StateError};

/// What a lock applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LockKind {
    /// A user (by name): every login, every session.
    User,
    /// A WireGuard device (by public key, base64): everything through it.
    Device,
    /// A target (by name): every session to it.
    Target,
}

impl LockKind {
    pub fn as_str(self) -> &'static str {
        match self {
            LockKind::User => "user",
            LockKind::Device => "device",
            LockKind::Target => "target",
        }
    }
}

/// One lock in force.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lock {
    pub kind: LockKind,
    pub name: String,
    pub reason: String,
    /// Unix seconds.
    pub created: u64,
    /// Unix seconds; `None`: until unlocked.
    pub until: Option<u64>,
    /// Who set it (the local user on the control socket).
    pub by: String,
}

impl Lock {
    fn in_force(&self, now: u64) -> bool {
        self.until.is_none_or(|u| now < u)
    }

    /// "user alice" / "device AbC…=" / "target web-1".
    pub fn subject(&self) -> String {
        format!("{} {}", self.kind.as_str(), self.name)
    }

    /// What a refused person is told: the subject, the reason and until when.
    pub fn message(&self) -> String {
        let what = match self.kind {
            LockKind::User => format!("{} is locked by an administrator", self.name),
            LockKind::Device => "this WireGuard device is locked by an administrator".to_string(),
            LockKind::Target => format!("{} is locked by an administrator", self.name),
        };
        let until = match self.until {
            Some(u) => format!(
                " until {}",
                humantime::format_rfc3339_seconds(
                    std::time::UNIX_EPOCH + std::time::Duration::from_secs(u)
                )
            ),
            None => String::new(),
        };
        if self.reason.is_empty() {
            format!("{what}{until}")
        } else {
            format!("{what}{until}: {}", self.reason)
        }
    }

    /// Whether this lock covers a live session.
    pub fn covers(&self, s: &SessionInfo) -> bool {
        match self.kind {
            LockKind::User => s.user == self.name,
            LockKind::Device => s.device.as_deref() == Some(self.name.as_str()),
            LockKind::Target => s.target == self.name,
        }
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct File {
    locks: Vec<Lock>,
}

/// The locks in force, backed by `locks.json`.
#[derive(Debug)]
pub struct Locks {
    path: PathBuf,
    locks: Mutex<Vec<Lock>>,
}

/// A lock or kill reason fit to show users (on their terminals, in
/// database errors) and the journal: control characters and the invisible
/// format characters that reorder or hide text (bidi overrides, zero-width)
/// become spaces; at most [`MAX_REASON`] characters.
pub fn clean_reason(text: &str) -> String {
    text.chars()
        .map(|c| {
            let invisible = matches!(c,
                '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2060}'..='\u{206f}'
                | '\u{feff}' | '\u{fff9}'..='\u{fffb}' | '\u{061c}');
            if c.is_control() || invisible {
                ' '
            } else {
                c
            }
        })
        .take(MAX_REASON)
        .collect::<String>()
        .trim()
        .to_string()
}

/// Longest reason kept (it is shown to users and written to the journal).
pub const MAX_REASON: usize = 500;

impl Locks {
    /// Reads `<state_dir>/locks.json` (none yet: no locks).
    pub fn open(state_dir: &Path) -> Result<Locks, StateError> {
        let path = state_dir.join("locks.json");
        let locks = match std::fs::read(&path) {
            Ok(bytes) => {
                let f: File = serde_json::from_slice(&bytes).map_err(|e| StateError::Corrupt {
                    path: path.clone(),
                    message: format!("not a locks file: {e}"),
                })?;
                f.locks
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => {
                return Err(StateError::Io {
                    path: path.clone(),
                    source: e,
                })
            }
        };
        let now = unix_now();
        // A file edited by hand may carry anything: the reason reaches
        // users' terminals, so it is cleaned like one typed at the socket.
        let locks = locks
            .into_iter()
            .filter(|l| l.in_force(now))
            .map(|mut l: Lock| {
                l.reason = clean_reason(&l.reason);
                l
            })
            .collect();
        let l = Locks {
            path,
            locks: Mutex::new(locks),
        };
        crate::metrics::locks_in_force(l.list().len());
        Ok(l)
    }

    fn save(&self, locks: &[Lock]) -> Result<(), StateError> {
        let f = File {
            locks: locks.to_vec(),
        };
        let text = serde_json::to_vec_pretty(&f).map_err(|e| StateError::Corrupt {
            path: self.path.clone(),
            message: e.to_string(),
        })?;
        write_secret_file(&self.path, &text)
    }

    /// Sets (or replaces) the lock on `kind name`; persisted before it
    /// returns. On a write error nothing changes.
    pub fn add(&self, lock: Lock) -> Result<(), StateError> {
        let mut g = self.locks.lock().unwrap_or_else(|p| p.into_inner());
        let now = unix_now();
        let mut next: Vec<Lock> = g
            .iter()
            .filter(|l| l.in_force(now) && !(l.kind == lock.kind && l.name == lock.name))
            .cloned()
            .collect();
        next.push(lock);
        self.save(&next)?;
        *g = next;
        crate::metrics::locks_in_force(g.len());
        Ok(())
    }

    /// Lifts the lock on `kind name`; `Ok(None)` if there was none in force.
    pub fn remove(&self, kind: LockKind, name: &str) -> Result<Option<Lock>, StateError> {
        let mut g = self.locks.lock().unwrap_or_else(|p| p.into_inner());
        let now = unix_now();
        let found = g
            .iter()
            .find(|l| l.kind == kind && l.name == name && l.in_force(now))
            .cloned();
        if found.is_none() {
            return Ok(None);
        }
        let next: Vec<Lock> = g
            .iter()
            .filter(|l| l.in_force(now) && !(l.kind == kind && l.name == name))
            .cloned()
            .collect();
        self.save(&next)?;
        *g = next;
        crate::metrics::locks_in_force(g.len());
        Ok(found)
    }

    /// The locks in force now, oldest first.
    pub fn list(&self) -> Vec<Lock> {
        let now = unix_now();
        let g = self.locks.lock().unwrap_or_else(|p| p.into_inner());
        g.iter().filter(|l| l.in_force(now)).cloned().collect()
    }

    fn find(&self, kind: LockKind, name: &str) -> Option<Lock> {
        let now = unix_now();
        let g = self.locks.lock().unwrap_or_else(|p| p.into_inner());
        g.iter()
            .find(|l| l.kind == kind && l.name == name && l.in_force(now))
            .cloned()
    }

    pub fn user(&self, name: &str) -> Option<Lock> {
        self.find(LockKind::User, name)
    }
    /// `key`: the device's public key, base64.
    pub fn device(&self, key: &str) -> Option<Lock> {
        self.find(LockKind::Device, key)
    }
    pub fn target(&self, name: &str) -> Option<Lock> {
        self.find(LockKind::Target, name)
    }

    /// The lock, if any, that refuses a login of `user` (through `device`).
    pub fn login(&self, user: &str, device: Option<&str>) -> Option<Lock> {
        self.user(user)
            .or_else(|| device.and_then(|d| self.device(d)))
    }

    /// Makes `live` end, at once, every session that gets listed while a
    /// lock covers it (a lock set during its login), with the same reason
    /// the lock's `end_matching` gives.
    pub fn guard(self: &std::sync::Arc<Self>, live: &crate::live::Registry) {
        let locks = std::sync::Arc::downgrade(self);
        live.set_gate(std::sync::Arc::new(move |s: &SessionInfo| {
            let locks = locks.upgrade()?;
            let lock = locks.session(&s.user, s.device.as_deref(), &s.target)?;
            Some(format!("session ended: {}", lock.message()))
        }));
    }

    /// The lock, if any, that refuses a session of `user` (through
    /// `device`) to `target`.
    pub fn session(&self, user: &str, device: Option<&str>, target: &str) -> Option<Lock> {
        self.login(user, device).or_else(|| self.target(target))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn lock(kind: LockKind, name: &str, until: Option<u64>) -> Lock {
        Lock {
            kind,
            name: name.into(),
            reason: "incident 42".into(),
            created: unix_now(),
            until,
            by: "root".into(),
        }
    }

    #[test]
    fn locks_survive_a_reopen_and_expired_ones_are_gone() {
        let dir = tempfile::tempdir().unwrap();
        let l = Locks::open(dir.path()).unwrap();
        l.add(lock(LockKind::User, "alice", None)).unwrap();
        l.add(lock(LockKind::Target, "web-1", Some(unix_now() + 3600)))
            .unwrap();
        l.add(lock(LockKind::Device, "old", Some(unix_now() - 1)))
            .unwrap();
        let again = Locks::open(dir.path()).unwrap();
        assert!(again.user("alice").is_some());
        assert!(again.target("web-1").is_some());
        assert!(again.device("old").is_none());
        assert_eq!(again.list().len(), 2);
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(dir.path().join("locks.json"))
                .unwrap()
                .permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn unlock_lifts_only_that_lock_and_a_second_unlock_finds_none() {
        let dir = tempfile::tempdir().unwrap();
        let l = Locks::open(dir.path()).unwrap();
        l.add(lock(LockKind::User, "alice", None)).unwrap();
        l.add(lock(LockKind::User, "bob", None)).unwrap();
        assert!(l.remove(LockKind::User, "alice").unwrap().is_some());
        assert!(l.remove(LockKind::User, "alice").unwrap().is_none());
        assert!(l.user("alice").is_none());
        assert!(Locks::open(dir.path()).unwrap().user("bob").is_some());
    }

    #[test]
    fn a_damaged_locks_file_is_an_error_not_an_unlock() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("locks.json"), b"{not json").unwrap();
        assert!(Locks::open(dir.path()).is_err());
    }

    #[test]
    fn a_lock_covers_the_sessions_of_its_subject_only() {
        let s = SessionInfo {
            id: "x".into(),
            kind: crate::live::SessionKind::Ssh,
            user: "alice".into(),
            source: "10.0.0.2".into(),
            device: Some("KEY=".into()),
            key_fingerprint: None,
            target: "web-1".into(),
            login: "deploy".into(),
            announce_watch: false,
        };
        assert!(lock(LockKind::User, "alice", None).covers(&s));
        assert!(!lock(LockKind::User, "bob", None).covers(&s));
        assert!(lock(LockKind::Device, "KEY=", None).covers(&s));
        assert!(lock(LockKind::Target, "web-1", None).covers(&s));
        assert!(!lock(LockKind::Target, "web-2", None).covers(&s));
    }
}
