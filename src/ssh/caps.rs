//! Caps per person: one user (or one script with her key) cannot use up the
//! gateway's connections to targets or its file descriptors.
//!
//! - Jumps (each holds one connection to a target) per client connection:
//!   `gateway.max_jumps_per_connection`, default 32.
//! - Jumps per user, over all her connections:
//!   `gateway.max_jumps_per_user`, default 64.
//! - Channels open at once on one SSH connection (each a channel on the
//!   target): `gateway.max_channels_per_connection`, default 64.
//!
//! The defaults are far above what a person does by hand (a terminal per
//! target, an scp beside it) and stop a loop that opens jumps for ever. A
//! refused channel open carries the reason in its description, which OpenSSH
//! prints ("open failed: resource shortage: gatehouse: ..."), and is audited.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

/// Default cap on concurrent jumps over one client connection.
pub const DEFAULT_JUMPS_PER_CONNECTION: usize = 32;
/// Default cap on concurrent jumps of one user over all connections.
pub const DEFAULT_JUMPS_PER_USER: usize = 64;
/// Default cap on channels open at once on one SSH connection.
pub const DEFAULT_CHANNELS_PER_CONNECTION: usize = 64;

/// The configured caps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CapLimits {
    pub jumps_per_connection: usize,
    pub jumps_per_user: usize,
    pub channels_per_connection: usize,
}

impl Default for CapLimits {
    fn default() -> Self {
        CapLimits {
            jumps_per_connection: DEFAULT_JUMPS_PER_CONNECTION,
            jumps_per_user: DEFAULT_JUMPS_PER_USER,
            channels_per_connection: DEFAULT_CHANNELS_PER_CONNECTION,
        }
    }
}

impl CapLimits {
    /// The caps of a validated config.
    pub fn from_settings(g: &crate::config::Gateway) -> CapLimits {
        CapLimits {
            jumps_per_connection: g.max_jumps_per_connection,
            jumps_per_user: g.max_jumps_per_user,
            channels_per_connection: g.max_channels_per_connection,
        }
    }
}

/// One client connection, as the caps count it: the peer's address and the
/// local address it reached (unique among live connections).
pub type ConnKey = (SocketAddr, Option<SocketAddr>);

/// Why a jump was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CapRefusal {
    JumpsPerConnection(usize),
    JumpsPerUser(usize),
    ChannelsPerConnection(usize),
}

impl CapRefusal {
    /// The reason for the audit log.
    pub fn reason(&self) -> String {
        match self {
            CapRefusal::JumpsPerConnection(n) => format!("jumps per connection cap ({n}) reached"),
            CapRefusal::JumpsPerUser(n) => format!("jumps per user cap ({n}) reached"),
            CapRefusal::ChannelsPerConnection(n) => {
                format!("channels per connection cap ({n}) reached")
            }
        }
    }

    /// What the person is told.
    pub fn message(&self) -> String {
        match self {
            CapRefusal::JumpsPerConnection(n) => format!(
                "gatehouse: too many jumps open on this connection (at most {n}); close some first"
            ),
            CapRefusal::JumpsPerUser(n) => format!(
                "gatehouse: too many jumps open for this user (at most {n}); close some first"
            ),
            CapRefusal::ChannelsPerConnection(n) => format!(
                "gatehouse: too many channels open on this connection (at most {n}); close some first"
            ),
        }
    }
}

/// A channel-open refusal for lack of resources, with `message` as the
/// description the client prints.
pub fn open_failure(message: &str) -> russh::ChannelOpenFailure {
    russh::ChannelOpenFailure::Other {
        // SSH_OPEN_RESOURCE_SHORTAGE
        code: 4,
        reason: message.to_string(),
    }
}

#[derive(Debug, Default)]
struct Counts {
    jumps_by_conn: HashMap<ConnKey, usize>,
    jumps_by_user: HashMap<String, usize>,
    channels_by_conn: HashMap<ConnKey, usize>,
}

/// The live counts, shared by every connection.
#[derive(Debug)]
pub struct Caps {
    limits: CapLimits,
    counts: Mutex<Counts>,
}

fn decrement<K: std::hash::Hash + Eq>(map: &mut HashMap<K, usize>, key: &K) {
    if let Some(n) = map.get_mut(key) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            map.remove(key);
        }
    }
}

impl Caps {
    pub fn new(limits: CapLimits) -> Arc<Caps> {
        Arc::new(Caps {
            limits,
            counts: Mutex::new(Counts::default()),
        })
    }

    pub fn limits(&self) -> CapLimits {
        self.limits
    }

    fn counts(&self) -> std::sync::MutexGuard<'_, Counts> {
        // A panic elsewhere while holding this lock leaves plain counters.
        self.counts.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes a place for one jump of `user` on connection `conn` (which is
    /// also one channel of that connection), or says which cap refuses it.
    pub fn open_jump(
        self: &Arc<Self>,
        user: &str,
        conn: ConnKey,
    ) -> Result<JumpPermit, CapRefusal> {
        let mut c = self.counts();
        let on_conn = c.jumps_by_conn.get(&conn).copied().unwrap_or(0);
        if on_conn >= self.limits.jumps_per_connection {
            return Err(CapRefusal::JumpsPerConnection(
                self.limits.jumps_per_connection,
            ));
        }
        let chans = c.channels_by_conn.get(&conn).copied().unwrap_or(0);
        if chans >= self.limits.channels_per_connection {
            return Err(CapRefusal::ChannelsPerConnection(
                self.limits.channels_per_connection,
            ));
        }
        let of_user = c.jumps_by_user.get(user).copied().unwrap_or(0);
        if of_user >= self.limits.jumps_per_user {
            return Err(CapRefusal::JumpsPerUser(self.limits.jumps_per_user));
        }
        *c.jumps_by_conn.entry(conn).or_insert(0) += 1;
        *c.channels_by_conn.entry(conn).or_insert(0) += 1;
        *c.jumps_by_user.entry(user.to_string()).or_insert(0) += 1;
        Ok(JumpPermit {
            caps: self.clone(),
            user: user.to_string(),
            conn,
        })
    }

    /// Takes a place for one other channel (a session channel, say) on
    /// connection `conn`, under the channels-per-connection cap.
    pub fn open_channel(self: &Arc<Self>, conn: ConnKey) -> Result<ChannelPermit, CapRefusal> {
        let mut c = self.counts();
        let chans = c.channels_by_conn.get(&conn).copied().unwrap_or(0);
        if chans >= self.limits.channels_per_connection {
            return Err(CapRefusal::ChannelsPerConnection(
                self.limits.channels_per_connection,
            ));
        }
        *c.channels_by_conn.entry(conn).or_insert(0) += 1;
        Ok(ChannelPermit {
            caps: self.clone(),
            conn,
        })
    }

    /// Live jumps of `user` (for tests and status).
    pub fn jumps_of(&self, user: &str) -> usize {
        self.counts().jumps_by_user.get(user).copied().unwrap_or(0)
    }
}

/// A jump's place under the caps; given back on drop.
#[derive(Debug)]
pub struct JumpPermit {
    caps: Arc<Caps>,
    user: String,
    conn: ConnKey,
}

impl Drop for JumpPermit {
    fn drop(&mut self) {
        let mut c = self.caps.counts();
        decrement(&mut c.jumps_by_conn, &self.conn);
        decrement(&mut c.channels_by_conn, &self.conn);
        decrement(&mut c.jumps_by_user, &self.user);
    }
}

/// A channel's place under the channels-per-connection cap; given back on drop.
#[derive(Debug)]
pub struct ChannelPermit {
    caps: Arc<Caps>,
    conn: ConnKey,
}

impl Drop for ChannelPermit {
    fn drop(&mut self) {
        let mut c = self.caps.counts();
        decrement(&mut c.channels_by_conn, &self.conn);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn conn(port: u16) -> ConnKey {
        (SocketAddr::from(([127, 0, 0, 1], port)), None)
    }

    #[test]
    fn caps_refuse_beyond_their_limit_and_free_on_drop() {
        let caps = Caps::new(CapLimits {
            jumps_per_connection: 2,
            jumps_per_user: 3,
            channels_per_connection: 10,
        });
        let a1 = caps.open_jump("alice", conn(1)).expect("first");
        let a2 = caps.open_jump("alice", conn(1)).expect("second");
        assert_eq!(
            caps.open_jump("alice", conn(1)).err(),
            Some(CapRefusal::JumpsPerConnection(2))
        );
        let _b1 = caps.open_jump("alice", conn(2)).expect("other connection");
        assert_eq!(
            caps.open_jump("alice", conn(3)).err(),
            Some(CapRefusal::JumpsPerUser(3))
        );
        // Another user is not affected.
        let _c = caps.open_jump("bob", conn(4)).expect("bob");
        drop(a1);
        drop(a2);
        assert_eq!(caps.jumps_of("alice"), 1);
        let _again = caps.open_jump("alice", conn(1)).expect("freed");
        drop(_again);
        drop(_b1);
        assert_eq!(caps.jumps_of("alice"), 0);
        assert!(!caps.counts().jumps_by_conn.contains_key(&conn(1)));
    }

    #[test]
    fn channels_and_jumps_share_the_channel_cap_of_a_connection() {
        let caps = Caps::new(CapLimits {
            jumps_per_connection: 10,
            jumps_per_user: 10,
            channels_per_connection: 2,
        });
        let s = caps.open_channel(conn(1)).expect("session channel");
        let j = caps.open_jump("alice", conn(1)).expect("jump");
        assert_eq!(
            caps.open_jump("alice", conn(1)).err(),
            Some(CapRefusal::ChannelsPerConnection(2))
        );
        assert!(caps.open_channel(conn(1)).is_err());
        drop(s);
        let _s2 = caps.open_channel(conn(1)).expect("freed");
        drop(j);
    }
}
