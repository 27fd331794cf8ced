//! Command line: `run`, `check`, `pubkey`, `hostkey`, `user enroll`,
//! `target keyscan`, `quickstart`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};

use crate::auth::totp;
use crate::config::{self, Settings};
use crate::state::StateDir;

/// Exit status for a configuration error (EX_CONFIG).
pub const EXIT_CONFIG: u8 = 64;

#[derive(Debug, Parser)]
#[command(
    name = "gatehouse",
    version,
    about = "SSH gateway: personal key + TOTP, role-approved jumps to internal hosts, every decision audited",
    long_about = None
)]
pub struct Cli {
    /// Configuration file (TOML).
    #[arg(
        long,
        short = 'c',
        global = true,
        env = "GATEHOUSE_CONFIG",
        default_value = "/etc/gatehouse/config.toml"
    )]
    pub config: PathBuf,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway in the foreground (config is checked first; exit 64 if invalid).
    Run,
    /// Check the configuration and exit: 0 if valid, 64 with every error otherwise.
    Check,
    /// Print gatehouse's client key as an authorized_keys line for targets.
    Pubkey,
    /// Print the gateway's SSH host key (for users' known_hosts).
    Hostkey,
    /// Manage users' second factor.
    #[command(subcommand)]
    User(UserCommand),
    /// Work with targets.
    #[command(subcommand)]
    Target(TargetCommand),
    /// Sealed session recordings: list, play, export, show, verify.
    #[command(subcommand)]
    Recordings(crate::recording::cli::RecordingsCommand),
    /// Manage WireGuard devices of users.
    #[command(subcommand)]
    Peer(crate::tunnel::cli::PeerCommand),
    /// List WireGuard peers with last handshake, endpoint and bytes (asks the running daemon).
    Peers,
    /// Start a working demo gateway in DIR with generated keys, a first user
    /// and printed connection instructions. Needs no config file.
    Quickstart {
        /// Where the demo keeps its config, state and keys.
        #[arg(long, default_value = "gatehouse-demo")]
        dir: PathBuf,
        /// Port for the SSH listener (loopback).
        #[arg(long, default_value_t = 2222)]
        port: u16,
    },
}

#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Create (or replace) a user's TOTP secret; prints a QR code, the secret and the otpauth URI.
    Enroll {
        /// User name, as in the config.
        name: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum TargetCommand {
    /// Print the `host_keys` line to pin for a target at HOST:PORT.
    Keyscan {
        /// HOST:PORT (port 22 if omitted).
        address: String,
        /// Give up after this long.
        #[arg(long, default_value = "10s", value_parser = config::parse_duration)]
        timeout: Duration,
    },
}

/// Parses arguments, runs the command, prints the error chain once.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("gatehouse: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn load(path: &Path) -> Result<Settings, ExitCode> {
    let loaded = config::load(path);
    for w in loaded.iter().flat_map(|s| &s.warnings) {
        eprintln!("warning: {w}");
    }
    loaded.map_err(|errs| {
        eprintln!("{errs}");
        eprintln!(
            "gatehouse: {} error(s) in {}; nothing was started",
            errs.0.len(),
            path.display()
        );
        ExitCode::from(EXIT_CONFIG)
    })
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Check => {
            let s = match load(&cli.config) {
                Ok(s) => s,
                Err(code) => return Ok(code),
            };
            println!(
                "{}: ok ({} users, {} roles, {} targets)",
                cli.config.display(),
                s.users.len(),
                s.roles.len(),
                s.targets.len()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Run => {
            let s = match load(&cli.config) {
                Ok(s) => s,
                Err(code) => return Ok(code),
            };
            crate::audit::init_logging();
            runtime()?.block_on(crate::daemon::run(Arc::new(s), shutdown_signal()))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Pubkey => {
            let s = match load(&cli.config) {
                Ok(s) => s,
                Err(code) => return Ok(code),
            };
            let st = StateDir::open(&s.gateway.state_dir)?;
            println!("{}", st.client_key()?.public_line());
            Ok(ExitCode::SUCCESS)
        }
        Command::Hostkey => {
            let s = match load(&cli.config) {
                Ok(s) => s,
                Err(code) => return Ok(code),
            };
            let st = StateDir::open(&s.gateway.state_dir)?;
            println!("{}", st.host_key()?.public_line());
            Ok(ExitCode::SUCCESS)
        }
        Command::User(UserCommand::Enroll { name }) => {
            let s = match load(&cli.config) {
                Ok(s) => s,
                Err(code) => return Ok(code),
            };
            if !s.users.iter().any(|u| u.name == name) {
                bail!(
                    "no user named {name:?} in {}; add a [[users]] entry first",
                    cli.config.display()
                );
            }
            let st = StateDir::open(&s.gateway.state_dir)?;
            enroll(&st, &name)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Target(TargetCommand::Keyscan { address, timeout }) => {
            let addr = if address.contains(':') && !address.ends_with(']') {
                address.clone()
            } else {
                format!("{address}:22")
            };
            let keys = runtime()?
                .block_on(crate::ssh::upstream::keyscan(&addr, timeout))
                .map_err(anyhow::Error::msg)?;
            let lines: Vec<String> = keys
                .iter()
                .filter_map(|k| {
                    let mut k = k.clone();
                    k.set_comment("");
                    k.to_openssh().ok()
                })
                .map(|l| format!("  \"{}\",", l.trim()))
                .collect();
            println!("# {addr}: verify these fingerprints out of band before pinning");
            for k in &keys {
                println!("#   {}", k.fingerprint(russh::keys::HashAlg::Sha256));
            }
            println!("host_keys = [\n{}\n]", lines.join("\n"));
            Ok(ExitCode::SUCCESS)
        }
        Command::Recordings(cmd) => {
            let s = match load(&cli.config) {
                Ok(s) => s,
                Err(code) => return Ok(code),
            };
            crate::recording::cli::run(&s, cmd)
        }
        Command::Peer(cmd) => {
            let s = match load(&cli.config) {
                Ok(s) => s,
                Err(code) => return Ok(code),
            };
            crate::tunnel::cli::run_peer(&s, cmd)
        }
        Command::Peers => {
            let s = match load(&cli.config) {
                Ok(s) => s,
                Err(code) => return Ok(code),
            };
            crate::tunnel::cli::run_peers(&s)
        }
        Command::Quickstart { dir, port } => crate::cli_quickstart::quickstart(&dir, port),
    }
}

/// Enrolls `name`: new secret, sealed at rest; prints QR, secret and URI.
pub fn enroll(st: &StateDir, name: &str) -> anyhow::Result<String> {
    let secret = totp::generate_secret().map_err(anyhow::Error::msg)?;
    st.store_totp_secret(name, &secret)?;
    let b32 = totp::to_base32(&secret);
    let uri = totp::otpauth_uri(&secret, name).context("cannot build the otpauth URI")?;
    println!("Enrolled {name} for two-factor login. Scan this with an authenticator app:\n");
    if let Ok(code) = qrcode::QrCode::new(uri.as_bytes()) {
        let qr = code
            .render::<qrcode::render::unicode::Dense1x2>()
            .dark_color(qrcode::render::unicode::Dense1x2::Light)
            .light_color(qrcode::render::unicode::Dense1x2::Dark)
            .build();
        println!("{qr}\n");
    }
    println!("Secret: {b32}");
    println!("URI:    {uri}");
    println!("\nAny previous secret of {name} no longer works. Give this to {name} over a trusted channel.");
    Ok(b32)
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
