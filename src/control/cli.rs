//! `gatehouse sessions [--json]`, `sessions kill`, `sessions watch`, `lock`,
//! `unlock`, `locks [--json]`, `reload`: commands for the running daemon.
//!
//! Exit status: 0 done; 1 the daemon refused (no such session, not
//! locked, ...); 64 `reload` found the configuration invalid (nothing
//! changed); 69 the daemon cannot be reached.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::{Subcommand, ValueEnum};

use super::client::{self, EXIT_UNAVAILABLE};
use super::{Reply, Request};
use crate::locks::LockKind;

/// How long a command waits for the daemon's answer (a reload reads and
/// checks the whole configuration first).
const REPLY_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, Subcommand)]
pub enum SessionsCommand {
    /// End a live session. The user sees
    /// `gatehouse: session ended by an administrator: REASON`.
    Kill {
        /// The session id (first column of `gatehouse sessions`).
        id: String,
        /// Shown to the user and written to the audit log.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Show a live terminal session as it happens, read-only (Ctrl-C stops
    /// watching; the session goes on). Audited as `session.watch`.
    Watch {
        /// The session id.
        id: String,
    },
}

/// What a lock applies to.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LockWhat {
    /// A user, by name.
    User,
    /// A WireGuard device, by public key.
    Device,
    /// A target, by name.
    Target,
}

impl From<LockWhat> for LockKind {
    fn from(w: LockWhat) -> LockKind {
        match w {
            LockWhat::User => LockKind::User,
            LockWhat::Device => LockKind::Device,
            LockWhat::Target => LockKind::Target,
        }
    }
}

fn send(config: &Path, req: &Request) -> Result<client::Connection, ExitCode> {
    let socket = client::socket_path(config);
    client::request(&socket, req, REPLY_TIMEOUT).map_err(|e| {
        eprintln!("gatehouse: {e}");
        match e {
            client::ClientError::NotRunning(_) | client::ClientError::Denied(_) => {
                ExitCode::from(EXIT_UNAVAILABLE)
            }
            _ => ExitCode::FAILURE,
        }
    })
}

/// Sends `req`; the connection when the daemon did what was asked, else
/// the exit status (the reason printed).
fn ask(config: &Path, req: &Request) -> Result<client::Connection, ExitCode> {
    let conn = send(config, req)?;
    if conn.reply.ok {
        Ok(conn)
    } else {
        Err(failed(&conn.reply))
    }
}

/// `--json`: the list, pretty-printed.
fn print_json<T: serde::Serialize>(v: &T) -> ExitCode {
    let mut out = std::io::stdout().lock();
    let _ = serde_json::to_writer_pretty(&mut out, v);
    let _ = writeln!(out);
    ExitCode::SUCCESS
}

/// Prints a failed reply's error; the exit status for it.
fn failed(reply: &Reply) -> ExitCode {
    eprintln!(
        "gatehouse: {}",
        reply.error.as_deref().unwrap_or("the daemon refused")
    );
    if reply.config_error {
        ExitCode::from(crate::cli::EXIT_CONFIG)
    } else {
        ExitCode::FAILURE
    }
}

fn unix_time(secs: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(secs)).to_string()
}

fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = UNITS[0];
    for u in UNITS.iter().skip(1) {
        if v < 1024.0 {
            break;
        }
        v /= 1024.0;
        unit = u;
    }
    if unit == "B" {
        format!("{n}B")
    } else {
        format!("{v:.1}{unit}")
    }
}

fn human_secs(s: u64) -> String {
    humantime::format_duration(Duration::from_secs(s)).to_string()
}

/// Prints rows tab-separated, padded so columns line up.
fn table(out: &mut dyn Write, rows: &[Vec<String>]) -> std::io::Result<()> {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|v| v.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for r in rows {
        let mut line = String::new();
        for (i, v) in r.iter().enumerate() {
            if i + 1 < r.len() {
                let w = widths.get(i).copied().unwrap_or(0);
                line.push_str(&format!("{v:<w$}\t"));
            } else {
                line.push_str(v);
            }
        }
        writeln!(out, "{}", line.trim_end())?;
    }
    Ok(())
}

/// `gatehouse sessions [--json]`, `sessions kill`, `sessions watch`.
pub fn sessions(config: &Path, json: bool, cmd: Option<SessionsCommand>) -> ExitCode {
    match cmd {
        None => {
            let conn = match ask(config, &Request::Sessions) {
                Ok(c) => c,
                Err(code) => return code,
            };
            let sessions = conn.reply.sessions.unwrap_or_default();
            if json {
                return print_json(&sessions);
            }
            let mut out = std::io::stdout().lock();
            let mut rows = vec![[
                "ID",
                "USER",
                "SOURCE",
                "TARGET",
                "LOGIN",
                "KIND",
                "STARTED",
                "IDLE",
                "UP",
                "DOWN",
                "RECORDING",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>()];
            for s in &sessions {
                let source = match &s.device {
                    Some(d) => format!("{} (wg {})", s.source, d.get(..8).unwrap_or(d)),
                    None => s.source.clone(),
                };
                rows.push(vec![
                    s.id.clone(),
                    s.user.clone(),
                    source,
                    s.target.clone(),
                    s.login.clone(),
                    s.kind.as_str().to_string(),
                    unix_time(s.started),
                    human_secs(s.idle_s),
                    human_bytes(s.bytes_up),
                    human_bytes(s.bytes_down),
                    s.recording.clone().unwrap_or_else(|| "-".into()),
                ]);
            }
            let _ = table(&mut out, &rows);
            if sessions.is_empty() {
                eprintln!("no live sessions");
            }
            ExitCode::SUCCESS
        }
        Some(SessionsCommand::Kill { id, reason }) => {
            let conn = match ask(config, &Request::Kill { id, reason }) {
                Ok(c) => c,
                Err(code) => return code,
            };
            println!("{}", conn.reply.message.unwrap_or_default());
            ExitCode::SUCCESS
        }
        Some(SessionsCommand::Watch { id }) => {
            let conn = match ask(config, &Request::Watch { id: id.clone() }) {
                Ok(c) => c,
                Err(code) => return code,
            };
            if let Some(s) = conn.reply.sessions.as_ref().and_then(|v| v.first()) {
                eprintln!(
                    "gatehouse: watching session {} ({} on {} as {}), read-only; Ctrl-C stops watching\r",
                    s.id, s.user, s.target, s.login
                );
            }
            let mut out = std::io::stdout().lock();
            let mut err = std::io::stderr().lock();
            let ended = conn.follow(&mut out, &mut err);
            // Whatever the session left the terminal in: plain text again
            // (attributes, insert mode, cursor, main screen, margins with
            // the cursor kept, ASCII character set).
            let _ = out.write_all(b"\x1b[0m\x1b[4l\x1b[?25h\x1b[?1047l\x1b7\x1b[r\x1b8\x0f\x1b(B");
            let _ = out.flush();
            match ended {
                Ok(true) => {
                    let _ = writeln!(err, "\r\ngatehouse: session {id} ended\r");
                    ExitCode::SUCCESS
                }
                Ok(false) => {
                    let _ = writeln!(err, "\r\ngatehouse: the daemon went away\r");
                    ExitCode::FAILURE
                }
                Err(e) => {
                    let _ = writeln!(err, "\r\ngatehouse: {e}\r");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// `gatehouse lock KIND NAME --reason TEXT [--for DURATION]`.
pub fn lock(
    config: &Path,
    what: LockWhat,
    name: String,
    reason: String,
    duration: Option<Duration>,
) -> ExitCode {
    let req = Request::Lock {
        kind: what.into(),
        name,
        reason,
        for_secs: duration.map(|d| d.as_secs().max(1)),
    };
    simple(config, &req)
}

/// `gatehouse unlock KIND NAME`.
pub fn unlock(config: &Path, what: LockWhat, name: String) -> ExitCode {
    simple(
        config,
        &Request::Unlock {
            kind: what.into(),
            name,
        },
    )
}

/// `gatehouse reload`.
/// A file that is not TOML names no `[control] socket`, so only the
/// default one was asked; when no daemon answers there, the file's own
/// errors (file:line:column, exit 64) say more than "not running" (69).
pub fn reload(config: &Path) -> ExitCode {
    let code = simple(config, &Request::Reload);
    if code == ExitCode::from(EXIT_UNAVAILABLE) && !client::is_toml(config) {
        if let Err(errs) = crate::config::load(config) {
            eprintln!("{errs}");
            eprintln!(
                "gatehouse: {} error(s) in {}: its [control] socket is unknown, and no daemon answers at the default one",
                errs.0.len(),
                config.display()
            );
            return ExitCode::from(crate::cli::EXIT_CONFIG);
        }
    }
    code
}

fn simple(config: &Path, req: &Request) -> ExitCode {
    let conn = match ask(config, req) {
        Ok(c) => c,
        Err(code) => return code,
    };
    println!("{}", conn.reply.message.unwrap_or_default());
    ExitCode::SUCCESS
}

/// `gatehouse locks [--json]`.
pub fn locks(config: &Path, json: bool) -> ExitCode {
    let conn = match ask(config, &Request::Locks) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let locks = conn.reply.locks.unwrap_or_default();
    if json {
        return print_json(&locks);
    }
    let mut out = std::io::stdout().lock();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut rows = vec![["KIND", "NAME", "UNTIL", "SET", "BY", "REASON"]
        .iter()
        .map(|s| s.to_string())
        .collect::<Vec<_>>()];
    for l in &locks {
        rows.push(vec![
            l.kind.as_str().to_string(),
            l.name.clone(),
            match l.until {
                Some(u) => format!(
                    "{} ({} left)",
                    unix_time(u),
                    human_secs(u.saturating_sub(now))
                ),
                None => "unlocked by hand".into(),
            },
            unix_time(l.created),
            l.by.clone(),
            l.reason.clone(),
        ]);
    }
    let _ = table(&mut out, &rows);
    if locks.is_empty() {
        eprintln!("no locks in force");
    }
    ExitCode::SUCCESS
}
