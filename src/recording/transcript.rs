//! What auditors get out of a database recording: a psql- or mysql-like transcript
//! (`show`, `play`) and JSON lines (`export`, `show --json`). Like the
//! terminal tools, both verify the recording first and refuse a tampered
//! one, and every field that came from the session is escaped before it
//! reaches the auditor's terminal.
//!
//! The transcript has one block per statement:
//!
//! ```text
//! 2026-12-06 23:41:30.123 UTC  query
//!   | SELECT * FROM t
//!   |  WHERE id = $1
//! 2026-12-06 23:41:30.124 UTC  bind statement "" portal ""
//!   $1 = '42'
//!   $2 = NULL
//!   $3 = binary (base64) AAEC
//! 2026-12-06 23:41:30.130 UTC  result: SELECT 3 (5.912 ms)
//! ```
//!
//! A MySQL recording (`kind = "mysql"`) reads the same way in MySQL's own
//! terms: prepared statements are named by the id the server assigned,
//! placeholders are `?`, and each parameter shows the type the client
//! bound; results carry the affected or returned row count and the error
//! number:
//!
//! ```text
//! 2026-12-06 23:41:30.123 UTC  prepare
//!   | SELECT * FROM t WHERE id = ? AND name = ?
//! 2026-12-06 23:41:30.124 UTC  result: PREPARE 7 (0.310 ms)
//! 2026-12-06 23:41:30.125 UTC  execute statement 7
//!   ?1 = 42  (LONGLONG)
//!   ?2 = 'x'  (VAR_STRING)
//! 2026-12-06 23:41:30.130 UTC  result: SELECT, 3 rows (5.912 ms)
//! 2026-12-06 23:41:30.140 UTC  result: ERROR 1146 (42S02): Table 'app.nope' doesn't exist (0.200 ms)
//! 2026-12-06 23:41:30.150 UTC  refused by gatehouse: COM_CHANGE_USER
//!   reason: it would switch the database login
//! ```
//!
//! Statement lines always start with `  | `, so text inside a statement
//! cannot pass for a line of gatehouse's own (a forged result, say).

use std::io::Write;

use base64::Engine;
use serde_json::json;

use super::export::{event_json, io_err, safe, summary_lines};
use super::format::Kind;
use super::query::{DbEvent, Param};
use super::reader::{self, Event, Identities, ReadError, Segment, Stored};

/// SQL text safe for the auditor's terminal: escaped as [`safe`] escapes
/// (control and other non-printable characters, and backslashes, so that
/// an escape cannot be faked), except that quotes stay as they are, since
/// SQL is full of them and they cannot start an escape.
pub fn sql_safe(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if c == '\'' || c == '"' {
            out.push(c);
        } else {
            out.extend(c.escape_debug());
        }
    }
    out
}

/// Bytes the client sent as text (lossy only where they are not UTF-8,
/// which the caller marks).
fn lossy(b: &[u8]) -> (String, bool) {
    match std::str::from_utf8(b) {
        Ok(s) => (s.to_string(), true),
        Err(_) => (String::from_utf8_lossy(b).into_owned(), false),
    }
}

fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(b)
}

/// Whose conventions a transcript follows: the placeholders, how a
/// prepared statement is named, what a result's tag holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Dialect {
    /// `$1`, named statements and portals, row counts inside the tag.
    Postgres,
    /// `?1`, statement ids the server assigns, typed parameters, row
    /// counts beside the tag.
    Mysql,
}

impl Dialect {
    /// The dialect of a recording's kind (the sealed header's). A terminal
    /// kind has no database events; PostgreSQL's rendering is the default.
    pub(super) fn of(kind: Kind) -> Dialect {
        match kind {
            Kind::Mysql => Dialect::Mysql,
            Kind::Postgres | Kind::Shell | Kind::Exec | Kind::Sftp => Dialect::Postgres,
        }
    }

    /// The database's name, for the transcript's header.
    fn product(self) -> &'static str {
        match self {
            Dialect::Postgres => "PostgreSQL",
            Dialect::Mysql => "MySQL",
        }
    }

    /// The placeholder sign of parameter `n` (1-based).
    fn placeholder(self) -> char {
        match self {
            Dialect::Postgres => '$',
            Dialect::Mysql => '?',
        }
    }
}

/// A MySQL statement id or parameter number as recorded: bare when it is
/// digits (as the proxy writes it), else quoted and escaped, so that a
/// stray value cannot pass for more of the line.
fn number_or_quoted(s: &str) -> String {
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        s.to_string()
    } else {
        format!("\"{}\"", safe(s))
    }
}

/// MySQL types whose values the proxy records as decimal text.
fn numeric_type(t: &str) -> bool {
    let t = t.strip_prefix("unsigned ").unwrap_or(t);
    matches!(
        t,
        "TINY"
            | "SHORT"
            | "LONG"
            | "INT24"
            | "LONGLONG"
            | "FLOAT"
            | "DOUBLE"
            | "DECIMAL"
            | "NEWDECIMAL"
            | "YEAR"
    )
}

/// Whether `s` is a plain number (`-12`, `3.5`, `1e-7`): nothing in it can
/// be mistaken for more than one value, so it is shown unquoted.
fn plain_number(s: &[u8]) -> bool {
    s.first().is_some_and(|b| b.is_ascii_digit() || *b == b'-')
        && s.len() <= 64
        && s.iter()
            .all(|b| b.is_ascii_digit() || matches!(b, b'-' | b'+' | b'.' | b'e' | b'E'))
}

/// A parameter of a MySQL execute: a number of a numeric type bare, as the
/// client's statement would have it; anything else as [`param_text`].
fn typed_param_text(p: &Param, ty: Option<&str>) -> String {
    match (p, ty) {
        (Param::Text(b), Some(t)) if numeric_type(t) && plain_number(b) => {
            String::from_utf8_lossy(b).into_owned()
        }
        _ => param_text(p),
    }
}

/// The lines of a Bind: its header, then one line per parameter (with its
/// type when the client sent types), however many of each there are.
fn bind_lines(
    dialect: Dialect,
    at: &str,
    statement: &str,
    portal: &str,
    params: &[Param],
    types: &[String],
) -> Vec<String> {
    let (head, label) = match dialect {
        Dialect::Postgres => (
            format!(
                "bind statement \"{}\" portal \"{}\"",
                safe(statement),
                safe(portal)
            ),
            None,
        ),
        Dialect::Mysql => match portal.strip_prefix("long data ") {
            Some(n) => (
                format!(
                    "long data for parameter {} of statement {}",
                    number_or_quoted(n),
                    number_or_quoted(statement)
                ),
                Some("chunk"),
            ),
            None if portal.is_empty() => (
                format!("execute statement {}", number_or_quoted(statement)),
                None,
            ),
            None => (
                format!(
                    "execute statement {} portal \"{}\"",
                    number_or_quoted(statement),
                    safe(portal)
                ),
                None,
            ),
        },
    };
    let mut out = vec![format!("{at}  {head}")];
    if !types.is_empty() && types.len() != params.len() {
        out.push(format!(
            "  (the client sent {} parameter types for {} values)",
            types.len(),
            params.len()
        ));
    }
    let sign = dialect.placeholder();
    for i in 0..params.len().max(types.len()) {
        let ty = types.get(i).map(String::as_str);
        let name = match label {
            Some(l) => l.to_string(),
            None => format!("{sign}{}", i + 1),
        };
        let value = match (params.get(i), dialect) {
            (Some(p), Dialect::Mysql) => typed_param_text(p, ty),
            (Some(p), Dialect::Postgres) => param_text(p),
            (None, _) => "(no value)".to_string(),
        };
        out.push(match ty {
            Some(t) => format!("  {name} = {value}  ({})", safe(t)),
            None => format!("  {name} = {value}"),
        });
    }
    out
}

/// A result's tag with its row count where the tag does not hold it
/// (MySQL: `OK, 3 rows affected`, `SELECT, 1 row`).
fn tag_text(dialect: Dialect, tag: &str, rows: Option<u64>) -> String {
    let plural = |r: u64| if r == 1 { "row" } else { "rows" };
    match (dialect, rows) {
        (Dialect::Mysql, Some(r)) if tag == "OK" => format!("OK, {r} {} affected", plural(r)),
        (Dialect::Mysql, Some(r)) => format!("{}, {r} {}", safe(tag), plural(r)),
        _ => safe(tag),
    }
}

/// `'text'` with quotes doubled, as an SQL literal; NULL; or the bytes as
/// base64, marked.
fn param_text(p: &Param) -> String {
    match p {
        Param::Null => "NULL".into(),
        Param::Text(b) => match std::str::from_utf8(b) {
            Ok(s) => format!("'{}'", sql_safe(s).replace('\'', "''")),
            Err(_) => format!("text, not UTF-8 (base64) {}", b64(b)),
        },
        Param::Binary(b) => format!("binary (base64) {}", b64(b)),
    }
}

/// UTC wall clock of an event: `2026-12-06 23:41:30.123 UTC`.
fn wall(started_ms: u64, t: f64) -> String {
    let ms = started_ms.saturating_add((t * 1000.0).round() as u64);
    let s = humantime::format_rfc3339_millis(
        std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms),
    )
    .to_string();
    format!("{} UTC", s.replace('T', " ").trim_end_matches('Z'))
}

/// RFC 3339 with milliseconds, for JSON.
fn rfc3339(started_ms: u64, t: f64) -> String {
    let ms = started_ms.saturating_add((t * 1000.0).round() as u64);
    humantime::format_rfc3339_millis(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms))
        .to_string()
}

fn millis(micros: u64) -> String {
    format!("{}.{:03} ms", micros / 1000, micros % 1000)
}

/// The transcript lines of one event of a recording in `dialect`.
pub(super) fn event_lines(started_ms: u64, dialect: Dialect, ev: &Event) -> Vec<String> {
    let at = |t: f64| wall(started_ms, t);
    match ev {
        Event::Db { t, ev } => match ev.as_ref() {
            DbEvent::Statement { text, parse } => {
                let what = match (parse, dialect) {
                    (None, _) => "query".to_string(),
                    (Some(n), Dialect::Postgres) if n.is_empty() => {
                        "parse (unnamed statement)".to_string()
                    }
                    (Some(n), Dialect::Postgres) => format!("parse statement \"{}\"", safe(n)),
                    // The id comes with the result (`PREPARE 7`).
                    (Some(n), Dialect::Mysql) if n.is_empty() => "prepare".to_string(),
                    (Some(n), Dialect::Mysql) => format!("prepare \"{}\"", safe(n)),
                };
                let (s, utf8) = lossy(text);
                let mut out = vec![String::new(), format!("{}  {what}", at(*t))];
                if !utf8 {
                    out.push("  (not UTF-8: shown lossily; export has the exact bytes)".into());
                }
                for line in s.split('\n') {
                    let line = line.strip_suffix('\r').unwrap_or(line);
                    out.push(format!("  | {}", sql_safe(line)));
                }
                out
            }
            DbEvent::Bind {
                statement,
                portal,
                params,
                types,
            } => bind_lines(dialect, &at(*t), statement, portal, params, types),
            DbEvent::Result {
                tag,
                rows,
                sqlstate,
                message,
                micros,
            } => {
                let what = match (tag, sqlstate) {
                    // MySQL: `ERROR 1146 (42S02): ...`, as its client prints it.
                    (Some(tag), Some(code)) => format!(
                        "{} ({}): {}",
                        safe(tag),
                        safe(code),
                        sql_safe(message.as_deref().unwrap_or(""))
                    ),
                    (None, Some(code)) => format!(
                        "ERROR {}: {}",
                        safe(code),
                        sql_safe(message.as_deref().unwrap_or(""))
                    ),
                    (Some(tag), None) => tag_text(dialect, tag, *rows),
                    (None, None) => match rows {
                        Some(r) => format!("{r} rows"),
                        None => "(no command tag)".into(),
                    },
                };
                vec![format!("{}  result: {what} ({})", at(*t), millis(*micros))]
            }
            DbEvent::Copy { direction, bytes } => {
                vec![format!(
                    "{}  COPY {} {bytes} bytes",
                    at(*t),
                    direction.as_str()
                )]
            }
            DbEvent::Cancel { forwarded } => {
                let how = if *forwarded {
                    "forwarded to the server"
                } else {
                    "not forwarded"
                };
                // MySQL's cancel is a KILL from another connection.
                let what = match dialect {
                    Dialect::Postgres => "cancel request",
                    Dialect::Mysql => "kill request",
                };
                vec![format!("{}  {what} ({how})", at(*t))]
            }
            DbEvent::Notice { severity, message } => {
                vec![format!(
                    "{}  {}: {}",
                    at(*t),
                    safe(severity),
                    sql_safe(message)
                )]
            }
            DbEvent::Refused { command, reason } => {
                vec![
                    format!("{}  refused by gatehouse: {}", at(*t), sql_safe(command)),
                    format!("  reason: {}", sql_safe(reason)),
                ]
            }
        },
        Event::End { t, info } => {
            let reason = info.get("reason").and_then(|r| r.as_str()).unwrap_or("");
            vec![String::new(), format!("{}  end: {}", at(*t), safe(reason))]
        }
        Event::Exit { t, status } => vec![format!("{}  exit status {status}", at(*t))],
        // Not written to database recordings; shown if there anyway.
        Event::Data { t, bytes, .. } => {
            vec![format!(
                "{}  [{} bytes of stream data]",
                at(*t),
                bytes.len()
            )]
        }
        Event::Resize { .. } | Event::Sftp { .. } | Event::Other { .. } => Vec::new(),
    }
}

/// One JSON object of an event: `t` (seconds since the start), `time`
/// (UTC, ms), `code`, `type` and the event's fields as stored (bytes as
/// text, or `{"base64": ...}` when they are not UTF-8 text).
pub(super) fn event_object(started_ms: u64, ev: &Event) -> Option<serde_json::Value> {
    let t = ev.time();
    let mut v = match ev {
        Event::Db { ev, .. } => {
            let mut v = ev.to_object();
            if let Some(o) = v.as_object_mut() {
                o.insert("code".into(), json!(ev.code()));
                o.insert("type".into(), json!(ev.name()));
            }
            v
        }
        Event::End { .. } => {
            let mut v = event_json(ev)?;
            if let Some(o) = v.as_object_mut() {
                o.insert("code".into(), json!(super::format::code::END));
            }
            v
        }
        _ => event_json(ev)?,
    };
    if let Some(o) = v.as_object_mut() {
        o.insert("t".into(), json!(t));
        o.insert("time".into(), json!(rfc3339(started_ms, t)));
    }
    Some(v)
}

fn started_ms(stored: &Stored, seg: &Segment) -> u64 {
    stored
        .meta
        .as_ref()
        .map(|m| m.started_unix_ms)
        .unwrap_or(seg.header.timestamp.saturating_mul(1000))
}

fn write_line(out: &mut dyn Write, s: &str) -> Result<(), ReadError> {
    out.write_all(s.as_bytes()).map_err(io_err)?;
    out.write_all(b"\n").map_err(io_err)
}

/// `show` (text) and `play` of a database recording: the summary, the
/// protocol (PostgreSQL or MySQL) and database name, then the transcript.
pub fn show_text(stored: &Stored, ids: &Identities, out: &mut dyn Write) -> Result<(), ReadError> {
    let v0 = reader::verify(stored);
    let mut start: Option<u64> = None;
    reader::read_all(stored, ids, |seg| {
        // The sealed header's kind (the reader checks that `meta.json`
        // says the same).
        let dialect = Dialect::of(seg.header.gatehouse.kind);
        let started = match start {
            Some(s) => s,
            None => {
                let s = started_ms(stored, seg);
                start = Some(s);
                // `env` holds the client's startup parameters (its
                // client_encoding above all: the server reads the
                // statements' bytes in it).
                for l in summary_lines(stored, &v0, None, &seg.header.gatehouse.env) {
                    write_line(out, &l)?;
                }
                write_line(out, &format!("  protocol: {}", dialect.product()))?;
                match seg.header.gatehouse.database.as_deref() {
                    Some("") => write_line(out, "  database: (none named at login)")?,
                    Some(db) => write_line(out, &format!("  database: {}", safe(db)))?,
                    None => {}
                }
                s
            }
        };
        for ev in &seg.events {
            for l in event_lines(started, dialect, ev) {
                write_line(out, &l)?;
            }
        }
        Ok(())
    })?;
    out.flush().map_err(io_err)
}

/// `export` and `show --json` of a database recording: JSON lines, first
/// `{"type": "recording", ...}` (the metadata, the database, the verified
/// segments), then one [`event_object`] per event.
pub fn json_lines(stored: &Stored, ids: &Identities, out: &mut dyn Write) -> Result<(), ReadError> {
    let v0 = reader::verify(stored);
    let mut start: Option<u64> = None;
    reader::read_all(stored, ids, |seg| {
        let started = match start {
            Some(s) => s,
            None => {
                let s = started_ms(stored, seg);
                start = Some(s);
                let mut v = stored
                    .meta
                    .as_ref()
                    .ok()
                    .and_then(|m| serde_json::to_value(m).ok())
                    .unwrap_or_else(|| json!({}));
                if let Some(o) = v.as_object_mut() {
                    o.insert("type".into(), json!("recording"));
                    o.insert("database".into(), json!(seg.header.gatehouse.database));
                    o.insert("startup".into(), json!(seg.header.gatehouse.env));
                    o.insert("verified_segments".into(), json!(v0.good.len()));
                    o.insert("notes".into(), json!(v0.notes));
                }
                write_line(out, &v.to_string())?;
                s
            }
        };
        for ev in &seg.events {
            if let Some(v) = event_object(started, ev) {
                write_line(out, &v.to_string())?;
            }
        }
        Ok(())
    })?;
    out.flush().map_err(io_err)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn sql_keeps_quotes_and_escapes_controls() {
        assert_eq!(sql_safe("SELECT 'a' AS \"b\""), "SELECT 'a' AS \"b\"");
        assert_eq!(sql_safe("x\x1b[2J\r\\"), "x\\u{1b}[2J\\r\\\\");
        // Bidirectional overrides would reorder what the auditor reads.
        assert!(!sql_safe("a\u{202e}b").contains('\u{202e}'));
    }

    #[test]
    fn params_are_quoted_null_or_marked_base64() {
        assert_eq!(param_text(&Param::Null), "NULL");
        assert_eq!(param_text(&Param::Text(b"O'Brien".to_vec())), "'O''Brien'");
        assert_eq!(
            param_text(&Param::Binary(vec![0, 1, 2])),
            "binary (base64) AAEC"
        );
        assert_eq!(
            param_text(&Param::Text(vec![0xff])),
            "text, not UTF-8 (base64) /w=="
        );
    }

    #[test]
    fn wall_clock_is_utc_with_milliseconds() {
        assert_eq!(wall(1_000, 0.234), "1970-01-01 00:00:01.234 UTC");
        assert_eq!(millis(5_912), "5.912 ms");
    }
}
