//! Command line: `run`, `check`, `pubkey`, `hostkey`, `user enroll`,
//! `target keyscan`, `target credential`, `quickstart`, and the commands for
//! the running daemon (`sessions`, `lock`, `unlock`, `locks`, `reload`, in
//! `control::cli`).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use zeroize::Zeroizing;

use crate::auth::totp;
use crate::config::{self, Settings, Target};
use crate::state::StateDir;

/// Exit status for a configuration error (EX_CONFIG).
pub const EXIT_CONFIG: u8 = 64;

#[derive(Debug, Parser)]
#[command(
    name = "gatehouse",
    version = crate::version::LONG,
    about = "The only door into a production network: WireGuard, personal SSH key + TOTP, role-approved SSH, PostgreSQL and MySQL sessions, every session recorded and sealed, every decision audited",
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
    /// Run the gateway in the foreground (config is checked first; exit 64 if invalid,
    /// or if its auditor key is still config.example.toml's sample).
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
    /// Live sessions of the running daemon: id, user, source, target,
    /// login, kind, started, idle, bytes, recording. `kill` and `watch` act
    /// on one.
    Sessions {
        /// JSON for scripts.
        #[arg(long)]
        json: bool,
        #[command(subcommand)]
        action: Option<crate::control::cli::SessionsCommand>,
    },
    /// Lock a user, WireGuard device or target out now: their live sessions
    /// end within a second, new logins and sessions are refused with the
    /// reason until the lock expires or `gatehouse unlock`. Survives restarts.
    Lock {
        /// What to lock.
        #[arg(value_enum)]
        what: crate::control::cli::LockWhat,
        /// The user or target name, or the device's public key.
        name: String,
        /// Why: shown to the person refused and written to the audit log.
        #[arg(long)]
        reason: String,
        /// Lift the lock by itself after this long (e.g. `2h`, `30m`).
        #[arg(long = "for", value_parser = config::parse_duration)]
        duration: Option<Duration>,
    },
    /// Lift a lock set by `gatehouse lock`.
    Unlock {
        #[arg(value_enum)]
        what: crate::control::cli::LockWhat,
        name: String,
    },
    /// The locks in force.
    Locks {
        /// JSON for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Make the running daemon re-read its configuration (as SIGHUP does).
    /// An invalid file changes nothing: the errors are printed, exit 64.
    Reload,
    /// Print the manual page gatehouse(8) (roff), generated from this CLI;
    /// with `--dir`, write it and one page per subcommand
    /// (gatehouse-sessions(8), ...) there instead.
    #[command(hide = true)]
    Manpage {
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Print shell completions for SHELL (bash, zsh, fish, elvish,
    /// powershell), e.g. `gatehouse completions bash > /usr/share/bash-completion/completions/gatehouse`.
    #[command(hide = true)]
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
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
    /// Store the password gatehouse uses to log in to a database target as
    /// LOGIN, sealed (AES-256-GCM) in the state directory. Asks on the
    /// terminal without echo; the password is never printed or logged.
    Credential {
        /// Target name (a `kind = "postgres"` or `kind = "mysql"` target in
        /// the config).
        target: String,
        /// Database login (role name on the server).
        login: String,
        /// Read the password as one line from standard input instead of
        /// prompting on the terminal.
        #[arg(long)]
        stdin: bool,
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
            if s.recordings
                .recipients
                .iter()
                .any(|r| config::is_sample_recipient(r))
            {
                eprintln!(
                    "gatehouse: {}: [recordings] recipients still holds config.example.toml's sample auditor key, \
                     whose private key nobody holds; edit the file (your users, roles, targets and auditors' keys), \
                     then `gatehouse check`; nothing was started",
                    cli.config.display()
                );
                return Ok(ExitCode::from(EXIT_CONFIG));
            }
            crate::audit::init_logging();
            runtime()?.block_on(crate::daemon::run(Arc::new(s), shutdown_signal()))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Pubkey => {
            let s = match load(&cli.config) {
                Ok(s) => s,
                Err(code) => return Ok(code),
            };
            let st = StateDir::open_for_keys(&s.gateway.state_dir)?;
            println!("{}", st.client_key()?.public_line());
            Ok(ExitCode::SUCCESS)
        }
        Command::Hostkey => {
            let s = match load(&cli.config) {
                Ok(s) => s,
                Err(code) => return Ok(code),
            };
            let st = StateDir::open_for_keys(&s.gateway.state_dir)?;
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
        Command::Target(TargetCommand::Credential {
            target,
            login,
            stdin,
        }) => {
            let s = match load(&cli.config) {
                Ok(s) => s,
                Err(code) => return Ok(code),
            };
            let t = credential_target(&s.targets, &target, &cli.config)?;
            check_login(&login)?;
            let password = if stdin {
                read_password_line(&mut std::io::stdin().lock())?
            } else {
                prompt_password(&t.name, &login)?
            };
            let st = StateDir::open(&s.gateway.state_dir)?;
            st.store_db_credential(&t.name, &login, &password)?;
            println!(
                "Stored the password for {login} on {} (sealed in {}).",
                t.name,
                st.root().display()
            );
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
        Command::Manpage { dir } => {
            // The plain version in the title line (the long one with the
            // commit and crate versions spans lines).
            let cmd = <Cli as clap::CommandFactory>::command()
                .version(env!("CARGO_PKG_VERSION"))
                .long_version(None::<&str>);
            if let Some(dir) = dir {
                std::fs::create_dir_all(&dir)
                    .with_context(|| format!("cannot create {}", dir.display()))?;
                write_pages(cmd, &dir)
                    .with_context(|| format!("cannot write the pages to {}", dir.display()))?;
                return Ok(ExitCode::SUCCESS);
            }
            let mut page = Vec::new();
            clap_mangen::Man::new(cmd)
                .section("8")
                .render(&mut page)
                .context("cannot render the manual page")?;
            write_stdout(&page)
        }
        Command::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut cmd, "gatehouse", &mut script);
            write_stdout(&script)
        }
        Command::Sessions { json, action } => {
            Ok(crate::control::cli::sessions(&cli.config, json, action))
        }
        Command::Lock {
            what,
            name,
            reason,
            duration,
        } => Ok(crate::control::cli::lock(
            &cli.config,
            what,
            name,
            reason,
            duration,
        )),
        Command::Unlock { what, name } => Ok(crate::control::cli::unlock(&cli.config, what, name)),
        Command::Locks { json } => Ok(crate::control::cli::locks(&cli.config, json)),
        Command::Reload => Ok(crate::control::cli::reload(&cli.config)),
    }
}

/// gatehouse.8 and one page per (visible) subcommand, all in section 8 —
/// as `clap_mangen::generate_to` does for section 1.
fn write_pages(cmd: clap::Command, dir: &Path) -> std::io::Result<()> {
    fn each(cmd: clap::Command, dir: &Path) -> std::io::Result<()> {
        for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()).cloned() {
            each(sub, dir)?;
        }
        clap_mangen::Man::new(cmd).section("8").generate_to(dir)?;
        Ok(())
    }
    let mut cmd = cmd.disable_help_subcommand(true);
    cmd.build();
    each(cmd, dir)
}

/// Writes generated output; a reader that went away (`| head`) is not an error.
fn write_stdout(bytes: &[u8]) -> anyhow::Result<ExitCode> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(ExitCode::SUCCESS),
        Err(e) => Err(e).context("cannot write to standard output"),
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

/// The database target named `name`, or an error saying why it cannot hold
/// a database credential.
fn credential_target<'a>(
    targets: &'a [Target],
    name: &str,
    config: &Path,
) -> anyhow::Result<&'a Target> {
    let Some(t) = targets.iter().find(|t| t.name == name) else {
        bail!(
            "no target named {name:?} in {}; add a [[targets]] entry with kind = \"postgres\" or \"mysql\" first",
            config.display()
        );
    };
    if !t.kind.is_database() {
        bail!(
            "target {name:?} is not a database target (kind = \"ssh\"); \
             credentials are stored only for kind = \"postgres\" and \"mysql\" targets"
        );
    }
    Ok(t)
}

/// A database login as PostgreSQL (startup packet) and MySQL (handshake
/// response) accept it: NUL-terminated there.
fn check_login(login: &str) -> anyhow::Result<()> {
    if login.is_empty() || login.contains('\0') {
        bail!("the login must be a non-empty name without NUL bytes");
    }
    Ok(())
}

/// Longest password accepted (bytes).
const MAX_PASSWORD: usize = 4096;

/// One line (without its `\n` or `\r\n`) from `input`: the password for
/// `--stdin`. Refuses an empty line and one longer than [`MAX_PASSWORD`];
/// the buffer is wiped on drop.
fn read_password_line(input: &mut impl std::io::BufRead) -> anyhow::Result<Zeroizing<Vec<u8>>> {
    use std::io::{BufRead as _, Read as _};
    let mut line = Zeroizing::new(Vec::with_capacity(MAX_PASSWORD + 2));
    input
        .take(MAX_PASSWORD as u64 + 2)
        .read_until(b'\n', &mut line)
        .context("cannot read the password from standard input")?;
    if line.last() == Some(&b'\n') {
        line.pop();
        if line.last() == Some(&b'\r') {
            line.pop();
        }
    }
    check_password(&line)?;
    Ok(line)
}

/// Asks twice on the terminal (no echo) and insists both match.
fn prompt_password(target: &str, login: &str) -> anyhow::Result<Zeroizing<Vec<u8>>> {
    let first = Zeroizing::new(
        rpassword::prompt_password(format!("Password for {login} on {target}: "))
            .context("cannot read the password from the terminal (use --stdin without one)")?
            .into_bytes(),
    );
    check_password(&first)?;
    let again = Zeroizing::new(
        rpassword::prompt_password("Again: ")
            .context("cannot read the password from the terminal")?
            .into_bytes(),
    );
    if *first != *again {
        bail!("the two passwords differ; nothing was stored");
    }
    Ok(first)
}

fn check_password(p: &[u8]) -> anyhow::Result<()> {
    if p.is_empty() {
        bail!("empty password; nothing was stored");
    }
    if p.len() > MAX_PASSWORD {
        bail!("password longer than {MAX_PASSWORD} bytes; nothing was stored");
    }
    if p.contains(&0) {
        bail!("the password contains a NUL byte, which PostgreSQL cannot take; nothing was stored");
    }
    Ok(())
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

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use crate::config::TargetKind;

    fn target(name: &str, kind: TargetKind) -> Target {
        Target {
            name: name.into(),
            kind,
            host: "127.0.0.1".into(),
            port: 5432,
            host_keys: vec![],
            labels: Default::default(),
            db: None,
        }
    }

    #[test]
    fn credential_refuses_an_unknown_or_non_database_target() {
        let targets = vec![
            target("web-1", TargetKind::Ssh),
            target("db-1", TargetKind::Postgres),
        ];
        let cfg = Path::new("/etc/gatehouse/config.toml");
        let err = credential_target(&targets, "db-9", cfg).unwrap_err();
        assert!(
            err.to_string().contains("no target named \"db-9\""),
            "{err}"
        );
        let err = credential_target(&targets, "web-1", cfg).unwrap_err();
        assert!(err.to_string().contains("not a database target"), "{err}");
        assert_eq!(
            credential_target(&targets, "db-1", cfg).unwrap().name,
            "db-1"
        );
    }

    #[test]
    fn credential_from_stdin_is_one_line_without_its_newline() {
        let mut input = std::io::Cursor::new(b"pa ss\r\nsecond line\n".to_vec());
        assert_eq!(read_password_line(&mut input).unwrap().as_slice(), b"pa ss");
        let mut input = std::io::Cursor::new(b"no-newline".to_vec());
        assert_eq!(
            read_password_line(&mut input).unwrap().as_slice(),
            b"no-newline"
        );
        for bad in [&b"\n"[..], b"", b"a\0b\n"] {
            let mut input = std::io::Cursor::new(bad.to_vec());
            let err = read_password_line(&mut input).unwrap_err().to_string();
            assert!(err.contains("nothing was stored"), "{err}");
        }
        let mut input = std::io::Cursor::new(vec![b'x'; MAX_PASSWORD + 10]);
        let err = read_password_line(&mut input).unwrap_err().to_string();
        assert!(err.contains("longer than"), "{err}");
        assert!(!err.contains("xxxx"), "{err}");
    }
}
