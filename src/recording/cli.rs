//! `gatehouse recordings ...`: tools for auditors. `list` and `verify` need
//! no key; `play`, `export` and `show` decrypt with `-i KEY` (an age
//! identity file or an OpenSSH ed25519 private key) and refuse a recording
//! that fails verification.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use clap::Subcommand;

use super::export::terminal_safe;
use super::format;
use super::reader::{self, AuditIndex};

/// Metadata fields in the auditor's terminal: control characters escaped.
fn safe(s: &str) -> String {
    s.escape_debug().to_string()
}
use crate::config::{parse_duration, Settings};

/// `gatehouse recordings` subcommands.
#[derive(Debug, Subcommand)]
pub enum RecordingsCommand {
    /// List recordings from their metadata (needs no key): id, start,
    /// duration, user, login, target, kind.
    List {
        /// Only recordings of this gatehouse user.
        #[arg(long)]
        user: Option<String>,
        /// Only recordings to this target.
        #[arg(long)]
        target: Option<String>,
        /// Only recordings started within this long, e.g. `2d`, `12h`.
        #[arg(long, value_parser = parse_duration)]
        since: Option<Duration>,
        /// One JSON object (the metadata) per line.
        #[arg(long)]
        json: bool,
    },
    /// Replay a recording in this terminal with its original timing.
    Play {
        /// Recording id (or a unique prefix).
        id: String,
        /// Auditor key: age identity file or OpenSSH private key.
        #[arg(short = 'i', long = "identity")]
        identity: PathBuf,
        /// Playback speed factor.
        #[arg(long, default_value_t = 1.0)]
        speed: f64,
        /// Longest pause replayed, however long the user was idle.
        #[arg(long, default_value = "2s", value_parser = parse_duration)]
        idle_limit: Duration,
    },
    /// Write a recording as one plain asciicast v2 file (for `asciinema
    /// play`/`cat`); a database session as JSON lines (one object per event).
    Export {
        /// Recording id (or a unique prefix).
        id: String,
        /// Auditor key: age identity file or OpenSSH private key.
        #[arg(short = 'i', long = "identity")]
        identity: PathBuf,
        /// Output file (created 0600: it is plaintext); default stdout.
        #[arg(short = 'o', long = "output")]
        output: Option<PathBuf>,
    },
    /// Print the event log: output, SFTP operations, exit status; for a
    /// database session a psql- or mysql-like transcript (statements,
    /// parameters with their MySQL types, results, durations, refusals).
    Show {
        /// Recording id (or a unique prefix).
        id: String,
        /// Auditor key: age identity file or OpenSSH private key.
        #[arg(short = 'i', long = "identity")]
        identity: PathBuf,
        /// JSON lines (binary data as base64) instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Check integrity without a key: every segment against the manifest's
    /// hash chain and the recorded end. Exit status 1 on any problem.
    Verify {
        /// Recording ids (default: all).
        ids: Vec<String>,
        /// Also check the chain hashes against gatehouse's audit log (JSON
        /// lines, e.g. `journalctl -o json SYSLOG_IDENTIFIER=gatehouse`).
        #[arg(long)]
        audit: Option<PathBuf>,
    },
}

/// Runs a `recordings` subcommand.
pub fn run(settings: &Settings, cmd: RecordingsCommand) -> anyhow::Result<ExitCode> {
    let root = settings.recordings.dir.clone();
    match cmd {
        RecordingsCommand::List {
            user,
            target,
            since,
            json,
        } => list(&root, user, target, since, json),
        RecordingsCommand::Play {
            id,
            identity,
            speed,
            idle_limit,
        } => {
            anyhow::ensure!(
                speed.is_finite() && speed > 0.0,
                "--speed must be a positive number"
            );
            let stored = reader::open(&root, &id)?;
            let ids = reader::load_identities(&identity)?;
            let stdout = std::io::stdout();
            let mut out = stdout.lock();
            super::export::play(&stored, &ids, speed, idle_limit, &mut out)?;
            Ok(ExitCode::SUCCESS)
        }
        RecordingsCommand::Export {
            id,
            identity,
            output,
        } => {
            let stored = reader::open(&root, &id)?;
            let ids = reader::load_identities(&identity)?;
            match output {
                Some(path) => {
                    // Write next to the target and rename: no half file on error.
                    let tmp = path.with_extension("partial");
                    let mut f = std::fs::OpenOptions::new()
                        .write(true)
                        .create(true)
                        .truncate(true)
                        .mode(0o600)
                        .open(&tmp)
                        .with_context(|| format!("cannot create {}", tmp.display()))?;
                    let mut w = std::io::BufWriter::new(&mut f);
                    let res = super::export::export(&stored, &ids, &mut w);
                    drop(w);
                    if let Err(e) = res {
                        let _ = std::fs::remove_file(&tmp);
                        return Err(e.into());
                    }
                    std::fs::rename(&tmp, &path)
                        .with_context(|| format!("cannot write {}", path.display()))?;
                    eprintln!("exported {} to {}", stored.id, path.display());
                }
                None => {
                    let stdout = std::io::stdout();
                    let mut out = std::io::BufWriter::new(stdout.lock());
                    super::export::export(&stored, &ids, &mut out)?;
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        RecordingsCommand::Show { id, identity, json } => {
            let stored = reader::open(&root, &id)?;
            let ids = reader::load_identities(&identity)?;
            let stdout = std::io::stdout();
            let mut out = std::io::BufWriter::new(stdout.lock());
            super::export::show(&stored, &ids, json, &mut out)?;
            Ok(ExitCode::SUCCESS)
        }
        RecordingsCommand::Verify { ids, audit } => verify(&root, &ids, audit),
    }
}

fn list(
    root: &std::path::Path,
    user: Option<String>,
    target: Option<String>,
    since: Option<Duration>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    list_to(root, user, target, since, json, &mut out)
}

/// `list`, written to `out`.
pub(super) fn list_to(
    root: &std::path::Path,
    user: Option<String>,
    target: Option<String>,
    since: Option<Duration>,
    json: bool,
    out: &mut dyn Write,
) -> anyhow::Result<ExitCode> {
    let all = reader::list(root).with_context(|| format!("cannot read {}", root.display()))?;
    let cutoff =
        since.map(|d| format::unix_ms(SystemTime::now()).saturating_sub(d.as_millis() as u64));
    if !json {
        writeln!(
            out,
            "{:<28} {:<20} {:>9}  {:<12} {:<12} {:<16} KIND",
            "ID", "START", "DURATION", "USER", "LOGIN", "TARGET"
        )?;
    }
    for rec in all {
        let Ok(m) = &rec.meta else {
            if !json {
                writeln!(out, "{:<28} (metadata unreadable: run verify)", rec.id)?;
            }
            continue;
        };
        if user.as_ref().is_some_and(|u| *u != m.user)
            || target.as_ref().is_some_and(|t| *t != m.target)
            || cutoff.is_some_and(|c| m.started_unix_ms < c)
        {
            continue;
        }
        if json {
            writeln!(out, "{}", serde_json::to_string(m)?)?;
            continue;
        }
        let duration = match &m.end {
            Some(e) => format_duration(e.duration_ms),
            // Unfinished (running, or the gateway stopped): at least this long.
            None => reader::last_sealed_ms(&rec)
                .map(|last| {
                    format!(
                        ">{}",
                        format_duration(last.saturating_sub(m.started_unix_ms))
                    )
                })
                .unwrap_or_else(|| "?".into()),
        };
        let start = safe(m.started.replace('T', " ").trim_end_matches('Z'));
        writeln!(
            out,
            "{:<28} {:<20} {:>9}  {:<12} {:<12} {:<16} {}",
            rec.id,
            start,
            duration,
            safe(&m.user),
            safe(&m.login),
            safe(&m.target),
            m.kind.as_str()
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

fn format_duration(ms: u64) -> String {
    let s = ms / 1000;
    if s >= 3600 {
        format!("{}h{:02}m{:02}s", s / 3600, (s / 60) % 60, s % 60)
    } else if s >= 60 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{}.{}s", s, (ms % 1000) / 100)
    }
}

fn verify(
    root: &std::path::Path,
    ids: &[String],
    audit: Option<PathBuf>,
) -> anyhow::Result<ExitCode> {
    let index = match &audit {
        Some(p) => {
            let f =
                std::fs::File::open(p).with_context(|| format!("cannot read {}", p.display()))?;
            Some(
                AuditIndex::from_reader(std::io::BufReader::new(f))
                    .with_context(|| format!("cannot read {}", p.display()))?,
            )
        }
        None => None,
    };
    let stored: Vec<Result<reader::Stored, String>> = if ids.is_empty() {
        reader::list(root)
            .with_context(|| format!("cannot read {}", root.display()))?
            .into_iter()
            .map(Ok)
            .collect()
    } else {
        ids.iter()
            .map(|id| reader::open(root, id).map_err(|e| e.to_string()))
            .collect()
    };
    let mut failed = 0usize;
    let mut checked = 0usize;
    let mut seen = std::collections::BTreeSet::new();
    for s in &stored {
        let s = match s {
            Ok(s) => s,
            Err(e) => {
                println!("{}", terminal_safe(&e.to_string()));
                failed += 1;
                continue;
            }
        };
        checked += 1;
        seen.insert(s.id.clone());
        let mut v = reader::verify(s);
        if let Some(idx) = &index {
            idx.check(s, &mut v);
        }
        if v.ok() {
            let state = if v.finished { "finished" } else { "unfinished" };
            println!("{}: ok ({} segments, {state})", s.id, v.good.len());
        } else {
            failed += 1;
            println!("{}: FAILED", s.id);
            for p in &v.problems {
                println!("  problem: {}", terminal_safe(p));
            }
        }
        for n in &v.notes {
            println!("  note: {}", terminal_safe(n));
        }
    }
    if let (Some(idx), true) = (&index, ids.is_empty()) {
        for id in idx.started().filter(|id| !seen.contains(*id)) {
            failed += 1;
            let id = terminal_safe(id);
            println!("{id}: FAILED\n  problem: started according to the audit log, but missing from {} (deleted)", root.display());
        }
    }
    if failed > 0 {
        println!("{failed} recording(s) failed verification ({checked} checked)");
        Ok(ExitCode::FAILURE)
    } else {
        println!("all {checked} recording(s) verified");
        Ok(ExitCode::SUCCESS)
    }
}
