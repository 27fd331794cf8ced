//! The configuration in force, swappable by a reload.
//!
//! [`Current`] is a shared handle on an [`arc_swap::ArcSwap`] of the
//! validated [`Settings`]. Readers take a snapshot ([`Current::get`]) once
//! per decision (a login step, a channel, a database login) and keep that
//! `Arc` for the decision: one decision never sees half of an old file and
//! half of a new one. A reload stores the new snapshot in one atomic step
//! ([`Current::store`]); sessions already running keep the `Arc` they took.
//!
//! Why `arc-swap`: reads happen on every login and channel from every
//! worker thread, and a reload is rare. `ArcSwap` makes a read lock-free
//! (no `RwLock` that a reload, or a reader stuck holding it, could stall),
//! it is the well-kept crate for exactly this (used by tokio-console,
//! linkerd, sccache), and it was already in the dependency tree.

use std::sync::Arc;

use arc_swap::ArcSwap;

use super::Settings;

/// A shared, swappable handle on the configuration in force. Cloning it
/// shares the same cell: every clone sees a reload.
#[derive(Clone)]
pub struct Current(Arc<ArcSwap<Settings>>);

impl Current {
    pub fn new(settings: Arc<Settings>) -> Current {
        Current(Arc::new(ArcSwap::new(settings)))
    }

    /// A snapshot of the configuration in force: take it once per decision.
    pub fn get(&self) -> Arc<Settings> {
        self.0.load_full()
    }

    /// Puts `settings` in force for every later [`Current::get`]; returns
    /// the previous configuration.
    pub fn store(&self, settings: Arc<Settings>) -> Arc<Settings> {
        self.0.swap(settings)
    }
}

impl From<Arc<Settings>> for Current {
    fn from(settings: Arc<Settings>) -> Current {
        Current::new(settings)
    }
}

impl std::fmt::Debug for Current {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Current")
            .field("source", &self.get().source)
            .finish_non_exhaustive()
    }
}
