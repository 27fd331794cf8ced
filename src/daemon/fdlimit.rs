//! File descriptors: raise the soft `RLIMIT_NOFILE` to the hard limit at
//! start (as OpenSSH and most daemons do), warn when even that is too low
//! for this configuration, and keep one descriptor in reserve so that the
//! accept loop can still answer a client — and take the connection out of
//! the kernel's queue — when the process has run out.

use std::fs::File;

use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};

use crate::config::Settings;

/// Descriptors one client connection may hold: its socket, the upstream
/// connection of a jump, the recording segment, and one spare.
const PER_CONNECTION: u64 = 4;
/// Listeners, the state and recordings directories, journald, the runtime.
const HEADROOM: u64 = 64;

/// Descriptors this configuration may need at its caps.
pub fn needed(settings: &Settings) -> u64 {
    let tunnel = settings
        .wireguard
        .as_ref()
        .map_or(0, |w| w.max_connections as u64);
    (settings.gateway.max_connections as u64)
        .saturating_add(tunnel)
        .saturating_mul(PER_CONNECTION)
        .saturating_add(HEADROOM)
}

/// Raises the soft limit to the hard one and returns the soft limit now in
/// force (`None`: unlimited or unknown).
pub fn raise() -> Option<u64> {
    let now = getrlimit(Resource::Nofile);
    if now.current != now.maximum {
        let raised = Rlimit {
            current: now.maximum,
            maximum: now.maximum,
        };
        if let Err(e) = setrlimit(Resource::Nofile, raised) {
            tracing::debug!(error = %e, "could not raise the open-files limit");
        }
    }
    getrlimit(Resource::Nofile).current
}

/// Raises the limit and warns once if it is below what `settings` needs.
pub fn check(settings: &Settings) {
    let need = needed(settings);
    match raise() {
        Some(limit) if limit < need => tracing::warn!(
            limit,
            needed = need,
            max_connections = settings.gateway.max_connections,
            "the open-files limit (RLIMIT_NOFILE) is too low for this configuration: \
             raise it (LimitNOFILE={need} in the systemd unit, or ulimit -n) or lower \
             gateway.max_connections; at the limit new connections are refused"
        ),
        limit => tracing::debug!(?limit, needed = need, "open-files limit"),
    }
}

/// One descriptor kept open for the moment the process has none left.
pub struct Reserve(Option<File>);

impl Reserve {
    pub fn new() -> Reserve {
        Reserve(File::open("/dev/null").ok())
    }

    /// Frees the reserved descriptor; false if there was none.
    pub fn release(&mut self) -> bool {
        self.0.take().is_some()
    }

    /// Takes a descriptor back into reserve; false if none is free yet.
    pub fn refill(&mut self) -> bool {
        if self.0.is_none() {
            self.0 = File::open("/dev/null").ok();
        }
        self.0.is_some()
    }
}

/// EMFILE or ENFILE: the process or the system is out of descriptors.
pub fn is_out_of_descriptors(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(code) if code == rustix::io::Errno::MFILE.raw_os_error()
            || code == rustix::io::Errno::NFILE.raw_os_error()
    )
}
