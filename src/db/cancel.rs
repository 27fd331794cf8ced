//! Cancel keys. A database client gets gatehouse's own key (PostgreSQL's
//! process id and secret), never the server's: the server's key would let
//! anyone who learns it cancel queries behind the gateway's back. A cancel
//! request is forwarded only when its key belongs to a live session of the
//! same person on the same target; anything else is ignored (and audited by
//! the caller).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

/// What a cancel key stands for.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The person whose session it is.
    pub user: String,
    pub target: String,
    /// The database login the session uses (a MySQL `KILL` is sent as it).
    pub login: String,
    /// The server's own key for the session.
    pub server_pid: i32,
    pub server_secret: i32,
    /// The session, for its recording.
    pub session_id: String,
    /// Told when a cancel for this session was tried, and whether it was
    /// forwarded (the session records it).
    pub notify: tokio::sync::mpsc::Sender<bool>,
}

/// Why a cancel request was not forwarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ignored {
    /// No live session has this key.
    UnknownKey,
    /// The key belongs to someone else's session, or another target's.
    NotYours,
}

impl Ignored {
    pub fn reason(self) -> &'static str {
        match self {
            Ignored::UnknownKey => "no live session has this cancel key",
            Ignored::NotYours => "the cancel key belongs to another person's session or target",
        }
    }
}

/// The live sessions' keys.
#[derive(Debug, Default, Clone)]
pub struct Keys {
    inner: Arc<Mutex<HashMap<(i32, i32), Entry>>>,
}

/// Removes its key when the session ends.
#[derive(Debug)]
pub struct Registered {
    keys: Keys,
    key: (i32, i32),
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.keys.lock().remove(&self.key);
    }
}

impl Registered {
    /// The key the client was given.
    pub fn key(&self) -> (i32, i32) {
        self.key
    }

    /// Changes what the key stands for: a MySQL session registers before
    /// its login (its greeting names the id) with an empty `user`, which no
    /// one's cancel matches, and fills the entry in once it is logged in.
    pub fn update(&self, f: impl FnOnce(&mut Entry)) {
        if let Some(e) = self.keys.lock().get_mut(&self.key) {
            f(e);
        }
    }
}

impl Keys {
    fn lock(&self) -> MutexGuard<'_, HashMap<(i32, i32), Entry>> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Gives a session a fresh random key, unique among the live ones.
    pub fn register(&self, entry: Entry) -> Registered {
        let mut map = self.lock();
        loop {
            let mut b = [0u8; 8];
            let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b);
            let [p0, p1, p2, p3, s0, s1, s2, s3] = b;
            // A positive process id, as PostgreSQL's are.
            let pid = (u32::from_be_bytes([p0, p1, p2, p3]) >> 1) as i32;
            let secret = i32::from_be_bytes([s0, s1, s2, s3]);
            let key = (pid.max(1), secret);
            // The process id alone is unique too: it is the connection id
            // a MySQL client names in `KILL`.
            if map.keys().any(|k| k.0 == key.0) {
                continue;
            }
            if let std::collections::hash_map::Entry::Vacant(v) = map.entry(key) {
                v.insert(entry);
                return Registered {
                    keys: self.clone(),
                    key,
                };
            }
        }
    }

    /// The session `key` cancels, if `user` may cancel it on `target`.
    pub fn check(&self, user: &str, target: &str, key: (i32, i32)) -> Result<Entry, Ignored> {
        let map = self.lock();
        let e = map.get(&key).ok_or(Ignored::UnknownKey)?;
        if e.user != user || e.target != target {
            return Err(Ignored::NotYours);
        }
        Ok(e.clone())
    }

    /// The session whose key has process id `id` (a MySQL connection id),
    /// if `user` may cancel it on `target`.
    pub fn check_id(&self, user: &str, target: &str, id: i32) -> Result<Entry, Ignored> {
        let map = self.lock();
        let e = map
            .iter()
            .find(|(k, _)| k.0 == id)
            .map(|(_, e)| e)
            .ok_or(Ignored::UnknownKey)?;
        if e.user.is_empty() {
            return Err(Ignored::UnknownKey);
        }
        if e.user != user || e.target != target {
            return Err(Ignored::NotYours);
        }
        Ok(e.clone())
    }

    /// How many sessions hold a key.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn entry(user: &str) -> Entry {
        let (tx, _rx) = tokio::sync::mpsc::channel(1);
        Entry {
            user: user.into(),
            target: "db-1".into(),
            login: "app".into(),
            server_pid: 4242,
            server_secret: 99,
            session_id: "s".into(),
            notify: tx,
        }
    }

    #[test]
    fn a_key_cancels_only_its_owners_session_on_its_target() {
        let keys = Keys::default();
        let r = keys.register(entry("alice"));
        let e = keys.check("alice", "db-1", r.key()).unwrap();
        assert_eq!((e.server_pid, e.server_secret), (4242, 99));
        assert_eq!(
            keys.check("bob", "db-1", r.key()).unwrap_err(),
            Ignored::NotYours
        );
        assert_eq!(
            keys.check("alice", "db-2", r.key()).unwrap_err(),
            Ignored::NotYours
        );
        let (p, s) = r.key();
        assert_eq!(
            keys.check("alice", "db-1", (p, s.wrapping_add(1)))
                .unwrap_err(),
            Ignored::UnknownKey
        );
    }

    #[test]
    fn a_key_is_gone_when_its_session_ends() {
        let keys = Keys::default();
        let r = keys.register(entry("alice"));
        let k = r.key();
        drop(r);
        assert!(keys.is_empty());
        assert_eq!(
            keys.check("alice", "db-1", k).unwrap_err(),
            Ignored::UnknownKey
        );
    }
}
