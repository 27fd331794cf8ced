//! Reading recordings (the auditor's side): listing from plaintext
//! metadata and decrypting segments with an auditor's identity (after
//! [`super::verify`] found them intact). Everything read here may have been
//! tampered with: nothing is unwrapped or indexed, and sizes are capped.

use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use base64::Engine;

use super::format::{self, code, ManifestEntry, Meta, SegmentHeader};
use super::query::{self, DbEvent};
use super::sftp::SftpOp;
use super::verify::seg_name;
pub use super::verify::{last_sealed_ms, verify, AuditIndex, Verification};

/// Most plaintext one segment may decrypt to (the writer seals at 4 MiB).
const MAX_SEGMENT_PLAIN: u64 = 64 * 1024 * 1024;
/// Most bytes read from meta.json or an identity file.
const MAX_META: u64 = 1024 * 1024;

/// What can go wrong reading a recording. Messages never include decrypted
/// content or key material.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("no recording {0:?} in {1}")]
    UnknownId(String, String),
    #[error("{0:?} matches more than one recording: {1}")]
    Ambiguous(String, String),
    #[error("{0:?} is not a recording id (letters, digits, '-' and '_' only)")]
    BadId(String),
    #[error("recording {id} failed verification: {problem} (run `gatehouse recordings verify {id}` for all problems)")]
    Tampered { id: String, problem: String },
    #[error("the key in {key} cannot open recording {id}; it is sealed to: {recipients}")]
    WrongKey {
        id: String,
        key: String,
        recipients: String,
    },
    #[error("segment {seq} of recording {id} cannot be decrypted: {why}")]
    Damaged { id: String, seq: u64, why: String },
    #[error("identity {0}")]
    Identity(String),
    #[error("{0}")]
    Io(String),
}

/// One recording directory.
#[derive(Debug, Clone)]
pub struct Stored {
    pub id: String,
    pub dir: PathBuf,
    /// The parsed `meta.json`, or why it cannot be read.
    pub meta: Result<Meta, String>,
}

/// Reads at most `cap` bytes of a file the auditor chose (an identity).
pub(super) fn read_capped(path: &Path, cap: u64) -> io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    fs::File::open(path)?.take(cap).read_to_end(&mut buf)?;
    Ok(buf)
}

/// Opens a file of a recording for reading, only if it is a regular file:
/// a symbolic link is not followed (`O_NOFOLLOW`) and a FIFO or device is
/// neither waited on (`O_NONBLOCK`) nor read, so that a hostile recordings
/// directory cannot hang the tools or feed them for ever. The error says
/// what the file is instead.
pub(super) fn open_regular(path: &Path) -> io::Result<fs::File> {
    use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
    let opened = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path);
    let f = match opened {
        Ok(f) => f,
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            return Err(io::Error::other(
                "is a symbolic link (not followed; only regular files are read)",
            ))
        }
        Err(e) => return Err(e),
    };
    let t = f.metadata()?.file_type();
    if t.is_file() {
        return Ok(f);
    }
    let what = if t.is_fifo() {
        "a FIFO"
    } else if t.is_char_device() || t.is_block_device() {
        "a device"
    } else if t.is_dir() {
        "a directory"
    } else if t.is_socket() {
        "a socket"
    } else {
        "not a regular file"
    };
    Err(io::Error::other(format!(
        "is {what}, not a regular file (not read)"
    )))
}

/// Reads a regular file of a recording ([`open_regular`]) that may hold at
/// most `cap` bytes; a larger one is an error, read no further than that.
pub(super) fn read_regular(path: &Path, cap: u64) -> io::Result<Vec<u8>> {
    let f = open_regular(path)?;
    let len = f.metadata()?.len();
    if len > cap {
        return Err(io::Error::other(format!(
            "is {len} bytes, over its bound of {cap} (not read)"
        )));
    }
    let mut buf = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
    f.take(cap.saturating_add(1)).read_to_end(&mut buf)?;
    if buf.len() as u64 > cap {
        return Err(io::Error::other(format!(
            "grew over its bound of {cap} bytes while read (not read)"
        )));
    }
    Ok(buf)
}

fn load_meta(dir: &Path) -> Result<Meta, String> {
    let bytes = read_regular(&dir.join(format::META_FILE), MAX_META)
        .map_err(|e| format!("{}: {e}", format::META_FILE))?;
    serde_json::from_slice(&bytes).map_err(|e| {
        // serde quotes some of the file's text (an unknown `kind`) raw.
        let e = super::export::terminal_safe(&e.to_string());
        format!("{} is not valid: {e}", format::META_FILE)
    })
}

/// Every recording under `root`, sorted by id (= by start time).
pub fn list(root: &Path) -> io::Result<Vec<Stored>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(root)? {
        let entry = entry?;
        let Some(name) = entry.file_name().to_str().map(str::to_string) else {
            continue;
        };
        if !format::valid_id(&name) || !entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            continue;
        }
        let dir = entry.path();
        out.push(Stored {
            meta: load_meta(&dir),
            id: name,
            dir,
        });
    }
    out.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(out)
}

/// The recording named `id`, or the only one whose id starts with it.
pub fn open(root: &Path, id: &str) -> Result<Stored, ReadError> {
    if !format::valid_id(id) {
        return Err(ReadError::BadId(id.to_string()));
    }
    let dir = root.join(id);
    match fs::symlink_metadata(&dir) {
        Ok(m) if m.file_type().is_symlink() => {
            return Err(ReadError::Io(format!(
                "{} is a symbolic link (not followed; a recording is a directory)",
                dir.display()
            )))
        }
        _ => {}
    }
    if dir.is_dir() {
        return Ok(Stored {
            meta: load_meta(&dir),
            id: id.to_string(),
            dir,
        });
    }
    let all = list(root).map_err(|e| ReadError::Io(format!("{}: {e}", root.display())))?;
    let matches: Vec<Stored> = all.into_iter().filter(|s| s.id.starts_with(id)).collect();
    match matches.len() {
        0 => Err(ReadError::UnknownId(id.into(), root.display().to_string())),
        1 => matches
            .into_iter()
            .next()
            .ok_or_else(|| ReadError::UnknownId(id.into(), root.display().to_string())),
        _ => Err(ReadError::Ambiguous(
            id.into(),
            matches
                .iter()
                .map(|s| s.id.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        )),
    }
}

/// Who can decrypt: an age identity file or an OpenSSH private key.
pub struct Identities {
    keys: Vec<Box<dyn age::Identity>>,
    source: String,
}

/// Loads `-i FILE`: age identities (`AGE-SECRET-KEY-1...` lines) or an
/// unencrypted OpenSSH ed25519/RSA private key. Errors never echo the file.
pub fn load_identities(path: &Path) -> Result<Identities, ReadError> {
    let source = path.display().to_string();
    let bytes =
        read_capped(path, MAX_META).map_err(|e| ReadError::Identity(format!("{source}: {e}")))?;
    if let Ok(file) = age::IdentityFile::from_buffer(io::BufReader::new(bytes.as_slice())) {
        if let Ok(keys) = file.into_identities() {
            if !keys.is_empty() {
                return Ok(Identities { keys, source });
            }
        }
    }
    match age::ssh::Identity::from_buffer(io::BufReader::new(bytes.as_slice()), Some(source.clone())) {
        Ok(id @ age::ssh::Identity::Unencrypted(_)) => Ok(Identities {
            keys: vec![Box::new(id)],
            source,
        }),
        Ok(age::ssh::Identity::Encrypted(_)) => Err(ReadError::Identity(format!(
            "{source} is a passphrase-protected SSH key; decrypt a copy with `ssh-keygen -p -N \"\" -f COPY` on a trusted machine, or use `age -d -i {source}` which asks for the passphrase"
        ))),
        Ok(age::ssh::Identity::Unsupported(_)) => Err(ReadError::Identity(format!(
            "{source} is an SSH key type age cannot decrypt with (use ssh-ed25519 or an age key)"
        ))),
        Err(_) => Err(ReadError::Identity(format!(
            "{source} is neither an age identity file nor an OpenSSH private key"
        ))),
    }
}

/// A stream of bytes in an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataStream {
    Output,
    Stderr,
    Input,
}

impl DataStream {
    pub fn as_str(self) -> &'static str {
        match self {
            DataStream::Output => "stdout",
            DataStream::Stderr => "stderr",
            DataStream::Input => "input",
        }
    }
}

/// One decoded event.
#[derive(Debug, Clone)]
pub enum Event {
    Data {
        t: f64,
        stream: DataStream,
        bytes: Vec<u8>,
        /// Stored as text (false: stored as binary, raw or base64).
        text: bool,
    },
    Resize {
        t: f64,
        cols: u32,
        rows: u32,
    },
    Sftp {
        t: f64,
        op: Box<SftpOp>,
    },
    /// A database session's event (see [`super::query`]).
    Db {
        t: f64,
        ev: Box<DbEvent>,
    },
    Exit {
        t: f64,
        status: u32,
    },
    End {
        t: f64,
        info: serde_json::Value,
    },
    Other {
        t: f64,
        code: String,
    },
}

impl Event {
    pub fn time(&self) -> f64 {
        match self {
            Event::Data { t, .. }
            | Event::Resize { t, .. }
            | Event::Sftp { t, .. }
            | Event::Db { t, .. }
            | Event::Exit { t, .. }
            | Event::End { t, .. }
            | Event::Other { t, .. } => *t,
        }
    }
}

/// One event line: a complete event, or the header of a raw frame whose
/// bytes follow the line.
enum Parsed {
    Event(Event),
    Frame {
        t: f64,
        stream: DataStream,
        len: usize,
    },
}

fn parse_event(line: &[u8]) -> Option<Parsed> {
    let (t, c, data): (f64, String, serde_json::Value) = serde_json::from_slice(line).ok()?;
    let t = if t.is_finite() && t >= 0.0 { t } else { 0.0 };
    let text = |d: &serde_json::Value| d.as_str().map(|s| s.as_bytes().to_vec());
    let data_ev = |stream, bytes: Option<Vec<u8>>, is_text| {
        bytes.map(|bytes| {
            Parsed::Event(Event::Data {
                t,
                stream,
                bytes,
                text: is_text,
            })
        })
    };
    // Binary data: a raw frame (format 2: the byte count) or base64 (format 1).
    let binary = |stream, d: &serde_json::Value| match d {
        serde_json::Value::Number(n) => Some(Parsed::Frame {
            t,
            stream,
            len: usize::try_from(n.as_u64()?).ok()?,
        }),
        _ => data_ev(
            stream,
            d.as_str()
                .and_then(|s| base64::engine::general_purpose::STANDARD.decode(s).ok()),
            false,
        ),
    };
    let ev = match c.as_str() {
        code::OUTPUT => return data_ev(DataStream::Output, text(&data), true),
        code::OUTPUT_BIN => return binary(DataStream::Output, &data),
        code::STDERR => return data_ev(DataStream::Stderr, text(&data), true),
        code::STDERR_BIN => return binary(DataStream::Stderr, &data),
        code::INPUT => return data_ev(DataStream::Input, text(&data), true),
        code::INPUT_BIN => return binary(DataStream::Input, &data),
        // A database result shares asciicast's resize code; its data is
        // an object, a resize's a string.
        query::code::RESULT if data.is_object() => Event::Db {
            t,
            ev: Box::new(DbEvent::from_line(&c, data)?),
        },
        code::RESIZE => {
            let s = data.as_str()?;
            let (c, r) = s.split_once('x')?;
            Event::Resize {
                t,
                cols: c.parse().ok()?,
                rows: r.parse().ok()?,
            }
        }
        code::SFTP => Event::Sftp {
            t,
            op: Box::new(serde_json::from_value::<SftpOp>(data).ok()?),
        },
        code::EXIT => Event::Exit {
            t,
            status: data.as_str()?.parse().ok()?,
        },
        code::END => Event::End { t, info: data },
        query::code::STATEMENT
        | query::code::BIND
        | query::code::COPY
        | query::code::CANCEL
        | query::code::NOTICE
        | query::code::REFUSED => Event::Db {
            t,
            ev: Box::new(DbEvent::from_line(&c, data)?),
        },
        other => Event::Other {
            t,
            code: other.to_string(),
        },
    };
    Some(Parsed::Event(ev))
}

/// The events after a segment's header line: JSON lines, each raw frame's
/// bytes right after its line. Err names what is wrong.
fn parse_events(mut rest: &[u8]) -> Result<Vec<Event>, String> {
    let mut events = Vec::new();
    while !rest.is_empty() {
        let (line, after) = match rest.iter().position(|b| *b == b'\n') {
            Some(i) => {
                let (l, a) = rest.split_at(i);
                (l, a.get(1..).unwrap_or_default())
            }
            None => (rest, &[][..]),
        };
        rest = after;
        if line.is_empty() {
            continue;
        }
        match parse_event(line) {
            Some(Parsed::Event(ev)) => events.push(ev),
            Some(Parsed::Frame { t, stream, len }) => {
                let (bytes, after) = rest
                    .split_at_checked(len)
                    .ok_or_else(|| format!("a binary frame of {len} bytes is cut short"))?;
                events.push(Event::Data {
                    t,
                    stream,
                    bytes: bytes.to_vec(),
                    text: false,
                });
                rest = after.strip_prefix(b"\n").unwrap_or(after);
            }
            // An unreadable line (a newer writer's event): skipped.
            None => {}
        }
    }
    Ok(events)
}

/// One decrypted segment.
#[derive(Debug, Clone)]
pub struct Segment {
    pub header: SegmentHeader,
    pub events: Vec<Event>,
}

/// Decrypts and parses segment `e`, checking that its sealed header names
/// this recording, this segment and the previous chain hash.
pub fn decrypt_segment(
    stored: &Stored,
    e: &ManifestEntry,
    prev_chain: &str,
    ids: &Identities,
) -> Result<Segment, ReadError> {
    let damaged = |why: String| ReadError::Damaged {
        id: stored.id.clone(),
        seq: e.seq,
        why,
    };
    // Bounded by the size the manifest says (verified just before).
    let bytes = read_regular(
        &stored.dir.join(format::segment_file(e.seq)),
        e.size.min(super::verify::MAX_SEGMENT_FILE),
    )
    .map_err(|err| damaged(format!("{}: {err}", format::segment_file(e.seq))))?;
    let decryptor = age::Decryptor::new_buffered(bytes.as_slice())
        .map_err(|err| damaged(format!("not an age file ({err})")))?;
    let reader = match decryptor.decrypt(ids.keys.iter().map(|k| k.as_ref() as &dyn age::Identity))
    {
        Ok(r) => r,
        Err(age::DecryptError::NoMatchingKeys) => {
            return Err(ReadError::WrongKey {
                id: stored.id.clone(),
                key: ids.source.clone(),
                recipients: stored
                    .meta
                    .as_ref()
                    .map(|m| super::export::terminal_safe(&m.recipients.join(", ")))
                    .unwrap_or_else(|_| "(metadata unreadable)".into()),
            })
        }
        Err(err) => return Err(damaged(err.to_string())),
    };
    let mut plain = Vec::new();
    reader
        .take(MAX_SEGMENT_PLAIN + 1)
        .read_to_end(&mut plain)
        .map_err(|err| damaged(format!("authentication failed ({err})")))?;
    if plain.len() as u64 > MAX_SEGMENT_PLAIN {
        return Err(damaged("larger than any segment gatehouse writes".into()));
    }
    let (first, body) = match plain.iter().position(|b| *b == b'\n') {
        Some(i) => {
            let (l, b) = plain.split_at(i);
            (l, b.get(1..).unwrap_or_default())
        }
        None => (plain.as_slice(), &[][..]),
    };
    let header: SegmentHeader =
        serde_json::from_slice(first).map_err(|_| damaged("no segment header".into()))?;
    let g = &header.gatehouse;
    if g.recording_id != stored.id || g.segment != e.seq || g.prev_chain != prev_chain {
        return Err(ReadError::Tampered {
            id: stored.id.clone(),
            problem: format!(
                "{}: its sealed header says segment {} of recording {} (replaced)",
                seg_name(e.seq),
                g.segment,
                g.recording_id
            ),
        });
    }
    let events = parse_events(body).map_err(damaged)?;
    Ok(Segment { header, events })
}

/// Verifies `stored` (an error names the first problem), then decrypts the
/// verified segments in order, passing each to `f`.
pub fn read_all(
    stored: &Stored,
    ids: &Identities,
    mut f: impl FnMut(&Segment) -> Result<(), ReadError>,
) -> Result<Verification, ReadError> {
    let v = verify(stored);
    if let Some(problem) = v.problems.first() {
        return Err(ReadError::Tampered {
            id: stored.id.clone(),
            problem: super::export::terminal_safe(problem),
        });
    }
    let mut prev = v.genesis.clone();
    for e in &v.good {
        let seg = decrypt_segment(stored, e, &prev, ids)?;
        if e.seq == 0 {
            check_meta_against_sealed(stored, &seg.header.gatehouse)?;
        }
        f(&seg)?;
        prev = e.chain.clone();
    }
    Ok(v)
}

/// With a key, `meta.json` is also compared with the sealed header of
/// segment 0, which the gateway wrote and nobody can alter without the
/// auditors' keys... or rewrite without it showing in the chain: this
/// catches an edited `meta.json` even in recordings whose format does not
/// bind it to the chain (1 and 2).
fn check_meta_against_sealed(
    stored: &Stored,
    sealed: &format::SegmentInfo,
) -> Result<(), ReadError> {
    let Ok(m) = &stored.meta else {
        return Ok(());
    };
    let fields: [(&str, &str, &str); 6] = [
        ("user", &m.user, &sealed.user),
        ("login", &m.login, &sealed.login),
        ("target", &m.target, &sealed.target),
        ("source", &m.source, &sealed.source),
        ("session_id", &m.session_id, &sealed.session_id),
        ("kind", m.kind.as_str(), sealed.kind.as_str()),
    ];
    let mut diffs: Vec<String> = fields
        .iter()
        .filter(|(_, a, b)| a != b)
        .map(|(name, a, b)| {
            format!(
                "{name} {} where the sealed recording says {}",
                super::export::safe(a),
                super::export::safe(b)
            )
        })
        .collect();
    if m.wireguard_peer != sealed.wireguard_peer {
        diffs.push("wireguard_peer differs from the sealed recording".into());
    }
    if let Some(bound) = &sealed.meta_sha256 {
        if diffs.is_empty() && *bound != hex::encode(format::meta_sha256(m)) {
            diffs.push("its SHA-256 differs from the one in the sealed header".into());
        }
    }
    if diffs.is_empty() {
        return Ok(());
    }
    Err(ReadError::Tampered {
        id: stored.id.clone(),
        problem: format!("{} altered: {}", format::META_FILE, diffs.join("; ")),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn stdout_of(events: &[Event]) -> Vec<u8> {
        let mut out = Vec::new();
        for e in events {
            if let Event::Data {
                stream: DataStream::Output,
                bytes,
                ..
            } = e
            {
                out.extend_from_slice(bytes);
            }
        }
        out
    }

    #[test]
    fn raw_frames_are_read_exactly_even_when_they_hold_newlines() {
        let mut body =
            b"[0.1,\"o\",\"text\\n\"]\n[0.2,\"ob\",5]\n\n[\"x\n\n[0.3,\"x\",\"0\"]\n".to_vec();
        body.extend_from_slice(b"[0.4,\"ob\",0]\n\n");
        let events = parse_events(&body).unwrap();
        assert_eq!(stdout_of(&events), b"text\n\n[\"x\n");
        assert!(matches!(events.get(2), Some(Event::Exit { status: 0, .. })));
        assert!(matches!(
            events.get(1),
            Some(Event::Data { text: false, .. })
        ));
    }

    #[test]
    fn format_1_base64_events_still_read() {
        let body = b"[0.1,\"ob\",\"AP/+\"]\n[0.2,\"eb\",\"AQ==\"]\n";
        let events = parse_events(body).unwrap();
        assert_eq!(stdout_of(&events), [0, 255, 254]);
        assert!(matches!(
            events.get(1),
            Some(Event::Data { stream: DataStream::Stderr, bytes, text: false, .. }) if bytes == &[1]
        ));
    }

    #[test]
    fn a_frame_longer_than_the_segment_is_damage_not_a_panic() {
        let body = b"[0.1,\"ob\",1000000000000]\nshort";
        let err = parse_events(body).unwrap_err();
        assert!(err.contains("cut short"), "{err}");
        let huge = b"[0.1,\"ob\",18446744073709551615]\n";
        assert!(parse_events(huge).is_err());
    }
}
