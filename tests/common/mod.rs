//! The integration-test harness: real peers in temporary directories on free
//! loopback ports, stopped on drop.
//!
//! - [`Sshd`]: an OpenSSH server as a target host.
//! - [`GatehouseBuilder`] -> [`GatehouseSetup`] -> [`Gatehouse`]: the binary
//!   under test with a generated config, its CLI, and its audit log.
//! - [`SshClient`]: the stock `ssh`/`scp`/`sftp`/`rsync` for one user, with
//!   TOTP codes supplied through `SSH_ASKPASS`.
//! - [`PgServer`]: a real PostgreSQL cluster with TLS and SCRAM logins.
//! - [`mariadb::MariaDb`]: a real MariaDB server with TLS; [`myworld`] the
//!   MySQL world (gateway, ssh -L, clients, recordings) around it.
//! - [`require_tools`], [`free_port`], [`totp`], ...: small helpers.
//!
//! Each test binary includes this with `mod common;` and uses a subset.
#![allow(dead_code, unused_imports)]

pub mod client;
pub mod gatehouse;
pub mod keys;
pub mod mariadb;
pub mod myworld;
pub mod netns;
pub mod pgwire;
pub mod pgworld;
pub mod postgres;
pub mod scripted;
pub mod sshd;
pub mod util;
pub mod world;

pub use client::SshClient;
pub use gatehouse::{
    gatehouse_bin, gatehouse_command, parse_audit_events, toml_array, toml_str, Gatehouse,
    GatehouseBuilder, GatehouseSetup,
};
pub use keys::{gen_ed25519, key_without_comment, KeyPair};
pub use postgres::{pg_available, PgOptions, PgServer};
pub use sshd::Sshd;
pub use util::{
    current_user, descendants, find_tool, free_port, kill_tree, port_is_listening,
    require_python_module, require_tools, run_checked_timeout, run_with_timeout, send_signal, totp,
    totp_at, totp_step, unix_now, wait_for_port, wait_until, ChildGuard, DEFAULT_COMMAND_TIMEOUT,
};
