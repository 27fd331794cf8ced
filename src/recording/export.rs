//! What auditors get out of a recording: a plain asciicast v2 file (export),
//! a terminal replay (play), and the event log (show, as text or JSON).
//! All of them verify the recording first and refuse a tampered one.

use std::io::Write;
use std::time::Duration;

use base64::Engine;
use serde_json::json;

use super::format::{Kind, Meta};
use super::reader::{
    self, DataStream, Event, Identities, ReadError, Segment, Stored, Verification,
};

/// Turns decoded bytes into text across chunk boundaries (lossy only for
/// bytes that are not UTF-8 at all).
#[derive(Default)]
struct Utf8Stream {
    carry: Vec<u8>,
}

impl Utf8Stream {
    fn push(&mut self, b: &[u8]) -> String {
        let mut joined = std::mem::take(&mut self.carry);
        joined.extend_from_slice(b);
        let mut out = String::new();
        let mut rest: &[u8] = &joined;
        loop {
            match std::str::from_utf8(rest) {
                Ok(s) => {
                    out.push_str(s);
                    break;
                }
                Err(e) => {
                    let (valid, after) = rest
                        .split_at_checked(e.valid_up_to())
                        .unwrap_or((rest, &[]));
                    out.push_str(std::str::from_utf8(valid).unwrap_or_default());
                    match e.error_len() {
                        None => {
                            self.carry = after.to_vec();
                            break;
                        }
                        Some(n) => {
                            out.push('\u{FFFD}');
                            rest = after.get(n..).unwrap_or(&[]);
                        }
                    }
                }
            }
        }
        out
    }

    fn finish(&mut self) -> String {
        if std::mem::take(&mut self.carry).is_empty() {
            String::new()
        } else {
            "\u{FFFD}".into()
        }
    }
}

/// Where rendered asciicast lines go.
trait CastSink {
    fn header(&mut self, header: &serde_json::Value) -> Result<(), ReadError>;
    fn event(&mut self, t: f64, code: &str, data: &str) -> Result<(), ReadError>;
}

pub(super) fn io_err(e: std::io::Error) -> ReadError {
    ReadError::Io(format!("cannot write: {e}"))
}

/// Renders a recording's events as asciicast v2 events.
struct Caster<'a, S: CastSink> {
    sink: &'a mut S,
    meta: Option<Meta>,
    kind: Option<Kind>,
    started: bool,
    streams: [Utf8Stream; 3],
    /// Exec output has no PTY: bare `\n` becomes `\r\n` for a terminal.
    last_cr: bool,
    last_t: f64,
}

impl<'a, S: CastSink> Caster<'a, S> {
    fn new(sink: &'a mut S, stored: &Stored) -> Self {
        Caster {
            sink,
            meta: stored.meta.as_ref().ok().cloned(),
            kind: None,
            started: false,
            streams: Default::default(),
            last_cr: false,
            last_t: 0.0,
        }
    }

    fn emit(&mut self, t: f64, code: &str, data: &str) -> Result<(), ReadError> {
        if data.is_empty() && code == "o" {
            return Ok(());
        }
        self.last_t = self.last_t.max(t);
        self.sink.event(self.last_t, code, data)
    }

    fn text(&mut self, s: &str) -> String {
        if self.kind == Some(Kind::Shell) {
            return s.to_string();
        }
        let mut out = String::with_capacity(s.len() + 8);
        for c in s.chars() {
            if c == '\n' && !self.last_cr {
                out.push('\r');
            }
            self.last_cr = c == '\r';
            out.push(c);
        }
        out
    }

    fn segment(&mut self, seg: &Segment) -> Result<(), ReadError> {
        if !self.started {
            self.started = true;
            let h = &seg.header;
            let g = &h.gatehouse;
            self.kind = Some(g.kind);
            let mut info = serde_json::to_value(g).unwrap_or_default();
            if let Some(obj) = info.as_object_mut() {
                obj.remove("segment");
                obj.remove("prev_chain");
                if let Some(end) = self.meta.as_ref().and_then(|m| m.end.as_ref()) {
                    obj.insert("end".into(), serde_json::to_value(end).unwrap_or_default());
                }
            }
            let mut header = json!({
                "version": 2,
                "width": h.width,
                "height": h.height,
                "timestamp": h.timestamp,
                "title": format!(
                    "{} as {}@{} ({})",
                    safe(&g.user),
                    safe(&g.login),
                    safe(&g.target),
                    g.kind.as_str()
                ),
                "gatehouse": info,
            });
            if let (false, Some(o)) = (h.env.is_empty(), header.as_object_mut()) {
                o.insert("env".into(), json!(h.env));
            }
            self.sink.header(&header)?;
            match (g.kind, &g.command) {
                // Shown escaped: a command's own control characters could
                // otherwise redraw the line (`...#\r\e[2K\e[1A\e[2Kuptime`
                // would show `uptime`). The exact bytes are in the header
                // (`gatehouse.command`, and `command_base64` when not UTF-8).
                (Kind::Exec, Some(cmd)) => {
                    let line = format!("$ {}\r\n", safe(cmd));
                    self.emit(0.0, "o", &line)?;
                }
                (Kind::Sftp, _) => self.emit(0.0, "o", "[sftp session]\r\n")?,
                _ => {}
            }
        }
        for ev in &seg.events {
            self.event(ev)?;
        }
        Ok(())
    }

    fn event(&mut self, ev: &Event) -> Result<(), ReadError> {
        match ev {
            Event::Data {
                t, stream, bytes, ..
            } => {
                let idx = *stream as usize;
                let decoded = match self.streams.get_mut(idx) {
                    Some(d) => d.push(bytes),
                    None => String::from_utf8_lossy(bytes).into_owned(),
                };
                match stream {
                    DataStream::Input => self.emit(*t, "i", &decoded),
                    _ => {
                        let text = self.text(&decoded);
                        self.emit(*t, "o", &text)
                    }
                }
            }
            Event::Resize { t, cols, rows } => self.emit(*t, "r", &format!("{cols}x{rows}")),
            Event::Sftp { t, op } => {
                let line = self.text(&format!("[sftp] {}\n", terminal_safe(&op.describe())));
                self.emit(*t, "o", &line)
            }
            Event::Exit { t, status } if self.kind != Some(Kind::Shell) => {
                let line = self.text(&format!("\n[exit status {status}]\n"));
                self.emit(*t, "o", &line)
            }
            _ => Ok(()),
        }
    }

    fn finish(&mut self) -> Result<(), ReadError> {
        let t = self.last_t;
        for i in 0..3 {
            let tail = self
                .streams
                .get_mut(i)
                .map(Utf8Stream::finish)
                .unwrap_or_default();
            if !tail.is_empty() {
                self.emit(t, "o", &tail)?;
            }
        }
        Ok(())
    }
}

struct FileSink<'a> {
    out: &'a mut dyn Write,
}

impl CastSink for FileSink<'_> {
    fn header(&mut self, header: &serde_json::Value) -> Result<(), ReadError> {
        serde_json::to_writer(&mut *self.out, header).map_err(|e| ReadError::Io(e.to_string()))?;
        self.out.write_all(b"\n").map_err(io_err)
    }
    fn event(&mut self, t: f64, code: &str, data: &str) -> Result<(), ReadError> {
        let line = json!([t, code, data]);
        serde_json::to_writer(&mut *self.out, &line).map_err(|e| ReadError::Io(e.to_string()))?;
        self.out.write_all(b"\n").map_err(io_err)
    }
}

/// Whether `stored` is a database session (its `meta.json` says so; that
/// it matches the sealed header is checked as it is read).
fn is_database(stored: &Stored) -> bool {
    matches!(&stored.meta, Ok(m) if m.kind.is_database())
}

/// Writes recording `stored` as one asciicast v2 file: header (width,
/// height, timestamp, env.TERM, title, gatehouse metadata) and `o`/`i`/`r`
/// events. Exec recordings start with `$ command` and end with the exit
/// status; sftp operations appear as `[sftp] ...` lines. A database
/// session has no terminal: it is written as JSON lines instead (see
/// [`super::transcript::json_lines`]).
pub fn export(
    stored: &Stored,
    ids: &Identities,
    out: &mut dyn Write,
) -> Result<Verification, ReadError> {
    if is_database(stored) {
        super::transcript::json_lines(stored, ids, out)?;
        return Ok(reader::verify(stored));
    }
    let mut sink = FileSink { out };
    let mut caster = Caster::new(&mut sink, stored);
    let v = reader::read_all(stored, ids, |seg| caster.segment(seg))?;
    caster.finish()?;
    out_flush(caster.sink.out)?;
    Ok(v)
}

fn out_flush(out: &mut dyn Write) -> Result<(), ReadError> {
    out.flush().map_err(io_err)
}

struct PlaySink<'a> {
    out: &'a mut dyn Write,
    speed: f64,
    idle_limit: f64,
    last: f64,
}

impl CastSink for PlaySink<'_> {
    fn header(&mut self, _header: &serde_json::Value) -> Result<(), ReadError> {
        Ok(())
    }
    fn event(&mut self, t: f64, code: &str, data: &str) -> Result<(), ReadError> {
        if code != "o" {
            return Ok(());
        }
        let gap = (t - self.last).clamp(0.0, self.idle_limit) / self.speed;
        self.last = t;
        if gap > 0.0 {
            std::thread::sleep(Duration::from_secs_f64(gap));
        }
        self.out.write_all(data.as_bytes()).map_err(io_err)?;
        self.out.flush().map_err(io_err)
    }
}

/// Replays the terminal output with the original timing, divided by
/// `speed`, with idle gaps capped at `idle_limit`. A database session is
/// printed as its transcript (as `show`).
pub fn play(
    stored: &Stored,
    ids: &Identities,
    speed: f64,
    idle_limit: Duration,
    out: &mut dyn Write,
) -> Result<(), ReadError> {
    if is_database(stored) {
        return super::transcript::show_text(stored, ids, out);
    }
    let speed = if speed.is_finite() && speed > 0.0 {
        speed
    } else {
        1.0
    };
    let mut sink = PlaySink {
        out,
        speed,
        idle_limit: idle_limit.as_secs_f64(),
        last: 0.0,
    };
    let mut caster = Caster::new(&mut sink, stored);
    reader::read_all(stored, ids, |seg| caster.segment(seg))?;
    caster.finish()
}

/// Text safe for an auditor's terminal: control characters escaped (and
/// quotes and backslashes, so that the escaping cannot be faked).
pub(super) fn safe(s: &str) -> String {
    s.escape_debug().to_string()
}

/// gatehouse's own messages with a recording's text inside: only control
/// characters (C0, DEL, C1) are escaped, so no ESC or CR from a recording
/// reaches the auditor's terminal while the message stays readable.
pub fn terminal_safe(s: &str) -> String {
    if !s.chars().any(char::is_control) {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if c.is_control() {
            // `\r`, `\n`, `\t`, or `\u{1b}`: never the character itself.
            out.extend(c.escape_debug());
        } else {
            out.push(c);
        }
    }
    out
}

pub(super) fn summary_lines(
    stored: &Stored,
    v: &Verification,
    command: Option<&str>,
    env: &[(String, String)],
) -> Vec<String> {
    let mut out = vec![format!("recording {}", stored.id)];
    if let Ok(m) = &stored.meta {
        out.push(format!("  kind:     {}", m.kind.as_str()));
        out.push(format!(
            "  user:     {} as {}@{}",
            safe(&m.user),
            safe(&m.login),
            safe(&m.target)
        ));
        let via = m
            .wireguard_peer
            .as_ref()
            .map(|p| format!(" (WireGuard peer {})", safe(p)))
            .unwrap_or_default();
        out.push(format!("  source:   {}{via}", safe(&m.source)));
        out.push(format!("  session:  {}", safe(&m.session_id)));
        out.push(format!("  started:  {}", safe(&m.started)));
        match &m.end {
            Some(e) => {
                let status = e
                    .exit_status
                    .map(|s| format!("; exit status {s}"))
                    .unwrap_or_default();
                out.push(format!(
                    "  ended:    {} after {:.1}s: {}{status}; {} bytes up, {} bytes down",
                    safe(&e.ended),
                    e.duration_ms as f64 / 1000.0,
                    safe(&e.reason),
                    e.bytes_up,
                    e.bytes_down
                ));
            }
            None => out.push("  ended:    not finished (gateway stopped or still running)".into()),
        }
    }
    out.push(format!("  segments: {} verified", v.good.len()));
    for n in &v.notes {
        out.push(format!("  note:     {}", terminal_safe(n)));
    }
    if let Some(c) = command {
        out.push(format!("  command:  {}", safe(c)));
    }
    for (name, value) in env {
        out.push(format!("  env:      {}={}", safe(name), safe(value)));
    }
    out
}

/// The summary `show` prints, for tests of its escaping.
#[cfg(test)]
pub(super) fn summary_for_tests(stored: &Stored, v: &Verification) -> Vec<String> {
    summary_lines(stored, v, None, &[])
}

fn event_text(ev: &Event) -> Option<String> {
    Some(match ev {
        Event::Data {
            t,
            stream,
            bytes,
            text,
        } => {
            let body = match (text, std::str::from_utf8(bytes)) {
                (true, Ok(s)) => safe(s),
                _ => format!("[{} bytes of binary data; --json has them]", bytes.len()),
            };
            format!("{t:>10.3} {:<7} {body}", stream.as_str())
        }
        Event::Resize { t, cols, rows } => format!("{t:>10.3} {:<7} {cols}x{rows}", "resize"),
        Event::Sftp { t, op } => format!("{t:>10.3} {:<7} {}", "sftp", safe(&op.describe())),
        Event::Exit { t, status } => format!("{t:>10.3} {:<7} {status}", "exit"),
        // Database recordings are shown by `transcript`.
        Event::Db { t, ev } => format!("{t:>10.3} {:<7}", ev.name()),
        Event::End { t, info } => {
            let reason = info.get("reason").and_then(|r| r.as_str()).unwrap_or("");
            format!("{t:>10.3} {:<7} {}", "end", safe(reason))
        }
        Event::Other { .. } => return None,
    })
}

pub(super) fn event_json(ev: &Event) -> Option<serde_json::Value> {
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    Some(match ev {
        Event::Data {
            t,
            stream,
            bytes,
            text,
        } => match (text, std::str::from_utf8(bytes)) {
            (true, Ok(s)) => json!({"t": t, "type": stream.as_str(), "text": s}),
            _ => json!({"t": t, "type": stream.as_str(), "base64": b64(bytes)}),
        },
        Event::Resize { t, cols, rows } => {
            json!({"t": t, "type": "resize", "cols": cols, "rows": rows})
        }
        Event::Sftp { t, op } => {
            let mut v = serde_json::to_value(op).unwrap_or_default();
            if let Some(o) = v.as_object_mut() {
                o.insert("t".into(), json!(t));
                o.insert("type".into(), json!("sftp"));
            }
            v
        }
        Event::Exit { t, status } => json!({"t": t, "type": "exit", "status": status}),
        Event::Db { t, ev } => {
            let mut v = ev.to_object();
            if let Some(o) = v.as_object_mut() {
                o.insert("t".into(), json!(t));
                o.insert("code".into(), json!(ev.code()));
                o.insert("type".into(), json!(ev.name()));
            }
            v
        }
        Event::End { t, info } => json!({"t": t, "type": "end", "end": info}),
        Event::Other { .. } => return None,
    })
}

/// The event log: a summary and one line per event (text, with control
/// characters escaped), or JSON lines (`{"type":"recording",...}` first,
/// then one object per event; binary data as base64, so exact bytes can be
/// recovered). A database session is shown as a psql- or mysql-like
/// transcript, or the same JSON lines as its export (see
/// [`super::transcript`]).
pub fn show(
    stored: &Stored,
    ids: &Identities,
    as_json: bool,
    out: &mut dyn Write,
) -> Result<(), ReadError> {
    if is_database(stored) {
        return if as_json {
            super::transcript::json_lines(stored, ids, out)
        } else {
            super::transcript::show_text(stored, ids, out)
        };
    }
    let v0 = reader::verify(stored);
    let mut header_done = false;
    let write_line = |out: &mut dyn Write, s: &str| -> Result<(), ReadError> {
        out.write_all(s.as_bytes()).map_err(io_err)?;
        out.write_all(b"\n").map_err(io_err)
    };
    reader::read_all(stored, ids, |seg| {
        if !header_done {
            header_done = true;
            let command = seg.header.gatehouse.command.as_deref();
            let env = &seg.header.gatehouse.env;
            if as_json {
                let mut v = stored
                    .meta
                    .as_ref()
                    .ok()
                    .and_then(|m| serde_json::to_value(m).ok())
                    .unwrap_or_else(|| json!({}));
                if let Some(o) = v.as_object_mut() {
                    o.insert("type".into(), json!("recording"));
                    o.insert("command".into(), json!(command));
                    o.insert(
                        "command_base64".into(),
                        json!(seg.header.gatehouse.command_base64),
                    );
                    o.insert("env".into(), json!(env));
                    o.insert(
                        "record_input_mode".into(),
                        json!(seg.header.gatehouse.record_input_mode),
                    );
                    o.insert("pty".into(), json!(seg.header.gatehouse.pty));
                    o.insert(
                        "record_input".into(),
                        json!(seg.header.gatehouse.record_input),
                    );
                    o.insert("verified_segments".into(), json!(v0.good.len()));
                    o.insert("notes".into(), json!(v0.notes));
                }
                write_line(out, &v.to_string())?;
            } else {
                for l in summary_lines(stored, &v0, command, env) {
                    write_line(out, &l)?;
                }
                write_line(out, "")?;
            }
        }
        for ev in &seg.events {
            let line = if as_json {
                event_json(ev).map(|v| v.to_string())
            } else {
                event_text(ev)
            };
            if let Some(l) = line {
                write_line(out, &l)?;
            }
        }
        Ok(())
    })?;
    out.flush().map_err(io_err)
}
