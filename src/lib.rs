//! gatehouse: the only door into a production network. It authenticates
//! people with their personal SSH key plus a TOTP code and relays the
//! sessions their roles allow to internal hosts, auditing every decision.
//!
//! See `shared/design.md` for the architecture; each module's doc says what
//! it guards.

#![forbid(unsafe_code)]

pub mod anomaly;
pub mod audit;
pub mod auth;
pub mod cli;
mod cli_quickstart;
pub mod config;
pub mod control;
pub mod daemon;
pub mod db;
pub mod dispatch;
pub mod live;
pub mod locks;
pub mod metrics;
pub mod policy;
pub mod recording;
pub mod source;
pub mod ssh;
pub mod state;
pub mod tunnel;
pub mod version;
