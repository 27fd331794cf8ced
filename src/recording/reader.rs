//! Reading recordings (the auditor's side): listing from plaintext
//! metadata, verifying the hash chain without a key, and decrypting
//! segments with an auditor's identity. Everything read here may have been
//! tampered with: nothing is unwrapped or indexed, and sizes are capped.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::io::{self, BufRead, Read};
use std::path::{Path, PathBuf};

use base64::Engine;

use super::format::{self, code, ManifestEntry, Meta, SegmentHeader};
use super::sftp::SftpOp;

/// Most plaintext one segment may decrypt to (the writer seals at 4 MiB).
const MAX_SEGMENT_PLAIN: u64 = 64 * 1024 * 1024;
/// Most bytes read from meta.json / the manifest / an identity file.
const MAX_META: u64 = 1024 * 1024;
const MAX_MANIFEST: u64 = 64 * 1024 * 1024;

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

fn read_capped(path: &Path, cap: u64) -> io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    fs::File::open(path)?.take(cap).read_to_end(&mut buf)?;
    Ok(buf)
}

fn load_meta(dir: &Path) -> Result<Meta, String> {
    let bytes = read_capped(&dir.join(format::META_FILE), MAX_META)
        .map_err(|e| format!("{}: {e}", format::META_FILE))?;
    serde_json::from_slice(&bytes).map_err(|e| format!("{} is not valid: {e}", format::META_FILE))
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

/// When the last segment was sealed (Unix ms), from the manifest.
pub fn last_sealed_ms(stored: &Stored) -> Option<u64> {
    read_manifest(&stored.dir, &mut Verification::default())
        .last()
        .map(|e| e.sealed_unix_ms)
}

/// The result of checking one recording without a key.
#[derive(Debug, Clone, Default)]
pub struct Verification {
    pub id: String,
    /// Integrity failures, each naming the segment (non-empty: not ok).
    pub problems: Vec<String>,
    /// Facts that are not failures (e.g. unfinished after a crash).
    pub notes: Vec<String>,
    /// Manifest entries whose files verified, in order (what can be read).
    pub good: Vec<ManifestEntry>,
    pub finished: bool,
}

impl Verification {
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

fn seg_name(seq: u64) -> String {
    format!("segment {seq} ({})", format::segment_file(seq))
}

/// Hashes a file: (SHA-256, size).
fn hash_file(path: &Path) -> io::Result<([u8; 32], u64)> {
    let mut f = fs::File::open(path)?;
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; 64 * 1024];
    let mut len = 0u64;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        let part = buf.get(..n).unwrap_or(&[]);
        ctx.update(part);
        len = len.saturating_add(n as u64);
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    Ok((out, len))
}

/// Reads the manifest: entries, plus problems/notes about its lines.
fn read_manifest(dir: &Path, v: &mut Verification) -> Vec<ManifestEntry> {
    let bytes = match read_capped(&dir.join(format::MANIFEST_FILE), MAX_MANIFEST) {
        Ok(b) => b,
        Err(e) => {
            v.problems
                .push(format!("{} cannot be read: {e}", format::MANIFEST_FILE));
            return Vec::new();
        }
    };
    let complete_end = bytes
        .iter()
        .rposition(|b| *b == b'\n')
        .map(|i| i + 1)
        .unwrap_or(0);
    let (complete, partial) = bytes
        .split_at_checked(complete_end)
        .unwrap_or((&bytes, &[]));
    if !partial.is_empty() {
        v.notes.push(format!(
            "{} ends with an incomplete line (a write was cut short); it is ignored",
            format::MANIFEST_FILE
        ));
    }
    let mut out = Vec::new();
    for (i, line) in complete.split(|b| *b == b'\n').enumerate() {
        if line.is_empty() {
            continue;
        }
        match serde_json::from_slice::<ManifestEntry>(line) {
            Ok(e) => out.push(e),
            Err(_) => v.problems.push(format!(
                "{} line {} is not a valid entry (altered)",
                format::MANIFEST_FILE,
                i + 1
            )),
        }
    }
    out
}

/// Checks a recording without a key: the manifest's chain, every segment
/// file against it, and the end recorded in the metadata. Every problem
/// names the segment: missing, reordered/swapped, truncated, altered,
/// replaced, or not in the manifest.
pub fn verify(stored: &Stored) -> Verification {
    let mut v = Verification {
        id: stored.id.clone(),
        ..Verification::default()
    };
    let meta = match &stored.meta {
        Ok(m) => Some(m),
        Err(e) => {
            v.problems.push(format!("metadata: {e}"));
            None
        }
    };
    if let Some(m) = meta {
        if m.id != stored.id {
            v.problems.push(format!(
                "metadata names recording {:?}, not {:?} (replaced)",
                m.id, stored.id
            ));
        }
    }
    let entries = read_manifest(&stored.dir, &mut v);

    // 1. The manifest's own chain.
    let mut prev = format::genesis(&stored.id);
    let mut chain_ok: Vec<bool> = Vec::new();
    for (k, e) in entries.iter().enumerate() {
        let expected_seq = k as u64;
        let mut ok = true;
        if e.seq != expected_seq {
            v.problems.push(format!(
                "manifest entry {} is for segment {} where segment {expected_seq} belongs: {}",
                k + 1,
                e.seq,
                if e.seq > expected_seq {
                    format!(
                        "{} missing (removed from the manifest)",
                        seg_name(expected_seq)
                    )
                } else {
                    "entries reordered or duplicated".to_string()
                }
            ));
            ok = false;
        }
        let recomputed = format::parse_hash(&e.sha256)
            .map(|sha| format::chain_next(&stored.id, e.seq, &prev, &sha));
        match (recomputed, format::parse_hash(&e.chain)) {
            (Some(c), Some(recorded)) if c == recorded => {}
            _ => {
                if ok {
                    v.problems.push(format!(
                        "{}: its manifest entry does not follow the chain (manifest altered)",
                        seg_name(e.seq)
                    ));
                }
                ok = false;
            }
        }
        if let Some(c) = format::parse_hash(&e.chain) {
            prev = c;
        }
        if e.file != format::segment_file(e.seq) {
            v.problems.push(format!(
                "{}: manifest names file {:?} (altered)",
                seg_name(e.seq),
                e.file
            ));
            ok = false;
        }
        chain_ok.push(ok);
    }

    // 2. The files.
    let mut on_disk: BTreeMap<u64, PathBuf> = BTreeMap::new();
    let mut tmp: Vec<u64> = Vec::new();
    if let Ok(rd) = fs::read_dir(&stored.dir) {
        for entry in rd.flatten() {
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if let Some(seq) = format::parse_segment_file(name) {
                on_disk.insert(seq, entry.path());
            } else if let Some(seq) = format::parse_tmp_file(name) {
                tmp.push(seq);
            }
        }
    }
    let mut hashes: BTreeMap<u64, Result<([u8; 32], u64), String>> = BTreeMap::new();
    for (seq, path) in &on_disk {
        hashes.insert(*seq, hash_file(path).map_err(|e| e.to_string()));
    }
    let by_hash: HashMap<String, u64> = entries.iter().map(|e| (e.sha256.clone(), e.seq)).collect();
    let mut good_prefix = true;
    for (k, e) in entries.iter().enumerate() {
        let name = seg_name(e.seq);
        let mut ok = chain_ok.get(k).copied().unwrap_or(false);
        match hashes.get(&e.seq) {
            None => {
                let elsewhere = hashes.iter().find_map(|(seq, h)| {
                    h.as_ref()
                        .ok()
                        .filter(|(sha, _)| hex::encode(sha) == e.sha256)
                        .map(|_| *seq)
                });
                v.problems.push(match elsewhere {
                    Some(other) => format!(
                        "{name}: missing; its content is in {} (renamed)",
                        format::segment_file(other)
                    ),
                    None => format!("{name}: missing (deleted)"),
                });
                ok = false;
            }
            Some(Err(err)) => {
                v.problems.push(format!("{name}: cannot be read: {err}"));
                ok = false;
            }
            Some(Ok((sha, size))) => {
                let sha_hex = hex::encode(sha);
                if sha_hex != e.sha256 || *size != e.size {
                    ok = false;
                    let problem = match by_hash.get(&sha_hex) {
                        Some(other) if *other != e.seq => format!(
                            "{name}: holds the content of segment {other} (segments reordered or swapped)"
                        ),
                        _ if *size < e.size => format!(
                            "{name}: truncated ({size} of {} bytes)",
                            e.size
                        ),
                        _ if *size == e.size => format!(
                            "{name}: altered (content differs from its SHA-256 in the manifest)"
                        ),
                        _ => format!("{name}: replaced ({size} bytes where {} were sealed)", e.size),
                    };
                    v.problems.push(problem);
                }
            }
        }
        if ok && good_prefix {
            v.good.push(e.clone());
        } else {
            good_prefix = false;
        }
    }

    // 3. Files the manifest does not list, and the end.
    let finished = meta.and_then(|m| m.end.as_ref());
    v.finished = finished.is_some();
    let listed = entries.len() as u64;
    for seq in on_disk.keys().filter(|s| **s >= listed) {
        if *seq == listed && finished.is_none() {
            v.notes.push(format!(
                "{} was sealed as the gateway stopped but is not in the manifest; it cannot be verified and is not read",
                seg_name(*seq)
            ));
        } else {
            v.problems
                .push(format!("{}: not in the manifest (added)", seg_name(*seq)));
        }
    }
    for seq in tmp {
        v.notes.push(format!(
            "segment {seq} was still open when the gateway stopped (its last seconds are lost)"
        ));
    }
    if entries.is_empty() {
        v.problems
            .push("no sealed segments (segment 0 missing)".into());
    }
    match finished {
        Some(end) => {
            if end.segments > listed {
                let missing = if end.segments - listed == 1 {
                    seg_name(listed)
                } else {
                    format!("segments {listed} to {}", end.segments - 1)
                };
                v.problems.push(format!(
                    "{missing} missing: the recording ended with {} segments but the manifest lists {listed} (removed with their manifest lines)",
                    end.segments
                ));
            } else if end.segments < listed {
                v.problems.push(format!(
                    "the recording ended with {} segments but the manifest lists {listed} (segments added)",
                    end.segments
                ));
            } else if let Some(last) = entries.last() {
                if last.chain != end.final_chain {
                    v.problems.push(format!(
                        "{}: final chain hash differs from the one recorded at the end (replaced)",
                        seg_name(last.seq)
                    ));
                }
            }
        }
        None => v.notes.push(format!(
            "not finished (session still running, or the gateway stopped): {} sealed segment(s) checked",
            v.good.len()
        )),
    }
    v
}

/// Chain hashes a gatehouse audit log recorded, to check recordings against
/// (JSON lines: gatehouse's stderr, or `journalctl -o json` where field
/// names are upper-case).
#[derive(Debug, Default)]
pub struct AuditIndex {
    segments: HashMap<String, BTreeMap<u64, String>>,
    finished: HashMap<String, (u64, String)>,
    started: BTreeSet<String>,
}

fn field<'a>(v: &'a serde_json::Value, name: &str) -> Option<&'a serde_json::Value> {
    v.get(name)
        .or_else(|| v.get(name.to_ascii_uppercase()))
        .or_else(|| v.get("fields").and_then(|f| f.get(name)))
}

fn field_str(v: &serde_json::Value, name: &str) -> Option<String> {
    field(v, name).and_then(|x| x.as_str().map(str::to_string))
}

fn field_u64(v: &serde_json::Value, name: &str) -> Option<u64> {
    field(v, name).and_then(|x| {
        x.as_u64()
            .or_else(|| x.as_str().and_then(|s| s.parse().ok()))
    })
}

impl AuditIndex {
    pub fn parse(text: &str) -> AuditIndex {
        let mut idx = AuditIndex::default();
        for line in text.lines() {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(line.trim()) else {
                continue;
            };
            let (Some(event), Some(id)) = (field_str(&v, "event"), field_str(&v, "recording_id"))
            else {
                continue;
            };
            match event.as_str() {
                "recording.started" => {
                    idx.started.insert(id);
                }
                "recording.segment" => {
                    if let (Some(seq), Some(chain)) = (field_u64(&v, "seq"), field_str(&v, "chain"))
                    {
                        idx.segments.entry(id).or_default().insert(seq, chain);
                    }
                }
                "recording.finished" => {
                    if let (Some(n), Some(chain)) =
                        (field_u64(&v, "segments"), field_str(&v, "chain"))
                    {
                        idx.finished.insert(id, (n, chain));
                    }
                }
                _ => {}
            }
        }
        idx
    }

    /// Recordings the log says were started.
    pub fn started(&self) -> impl Iterator<Item = &String> {
        self.started.iter()
    }

    /// Adds problems where the recording disagrees with the audit log.
    pub fn check(&self, stored: &Stored, v: &mut Verification) {
        let entries = read_manifest(&stored.dir, &mut Verification::default());
        let by_seq: BTreeMap<u64, &ManifestEntry> = entries.iter().map(|e| (e.seq, e)).collect();
        if !self.segments.contains_key(&stored.id) && !self.started.contains(&stored.id) {
            v.notes
                .push("the audit log given has no events of this recording".into());
        }
        if let Some(logged) = self.segments.get(&stored.id) {
            for (seq, chain) in logged {
                match by_seq.get(seq) {
                    None => v.problems.push(format!(
                        "{}: sealed according to the audit log but not in the manifest (removed)",
                        seg_name(*seq)
                    )),
                    Some(e) if e.chain != *chain => v.problems.push(format!(
                        "{}: chain hash differs from the audit log (replaced and the manifest rewritten)",
                        seg_name(*seq)
                    )),
                    Some(_) => {}
                }
            }
        }
        if let Some((n, chain)) = self.finished.get(&stored.id) {
            let listed = entries.len() as u64;
            if *n != listed {
                v.problems.push(format!(
                    "the audit log says the recording ended with {n} segments; the manifest lists {listed}"
                ));
            } else if entries.last().is_some_and(|e| e.chain != *chain) {
                v.problems
                    .push("final chain hash differs from the audit log (replaced)".into());
            }
        }
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
        /// Stored as text (false: stored as base64, i.e. binary).
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
            | Event::Exit { t, .. }
            | Event::End { t, .. }
            | Event::Other { t, .. } => *t,
        }
    }
}

fn parse_event(line: &[u8]) -> Option<Event> {
    let (t, c, data): (f64, String, serde_json::Value) = serde_json::from_slice(line).ok()?;
    let t = if t.is_finite() && t >= 0.0 { t } else { 0.0 };
    let text = |d: &serde_json::Value| d.as_str().map(|s| s.as_bytes().to_vec());
    let b64 = |d: &serde_json::Value| {
        d.as_str()
            .and_then(|s| base64::engine::general_purpose::STANDARD.decode(s).ok())
    };
    let data_ev = |stream, bytes: Option<Vec<u8>>, is_text| {
        bytes.map(|bytes| Event::Data {
            t,
            stream,
            bytes,
            text: is_text,
        })
    };
    match c.as_str() {
        code::OUTPUT => data_ev(DataStream::Output, text(&data), true),
        code::OUTPUT_B64 => data_ev(DataStream::Output, b64(&data), false),
        code::STDERR => data_ev(DataStream::Stderr, text(&data), true),
        code::STDERR_B64 => data_ev(DataStream::Stderr, b64(&data), false),
        code::INPUT => data_ev(DataStream::Input, text(&data), true),
        code::INPUT_B64 => data_ev(DataStream::Input, b64(&data), false),
        code::RESIZE => {
            let s = data.as_str()?;
            let (c, r) = s.split_once('x')?;
            Some(Event::Resize {
                t,
                cols: c.parse().ok()?,
                rows: r.parse().ok()?,
            })
        }
        code::SFTP => Some(Event::Sftp {
            t,
            op: Box::new(serde_json::from_value::<SftpOp>(data).ok()?),
        }),
        code::EXIT => Some(Event::Exit {
            t,
            status: data.as_str()?.parse().ok()?,
        }),
        code::END => Some(Event::End { t, info: data }),
        other => Some(Event::Other {
            t,
            code: other.to_string(),
        }),
    }
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
    let bytes = read_capped(
        &stored.dir.join(format::segment_file(e.seq)),
        MAX_SEGMENT_PLAIN * 2,
    )
    .map_err(|err| damaged(err.to_string()))?;
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
                    .map(|m| m.recipients.join(", "))
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
    let mut lines = plain.as_slice().split(|b| *b == b'\n');
    let header: SegmentHeader = lines
        .next()
        .and_then(|l| serde_json::from_slice(l).ok())
        .ok_or_else(|| damaged("no segment header".into()))?;
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
    let mut events = Vec::new();
    for line in lines {
        if line.is_empty() {
            continue;
        }
        if let Some(ev) = parse_event(line) {
            events.push(ev);
        }
    }
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
            problem: problem.clone(),
        });
    }
    let mut prev = hex::encode(format::genesis(&stored.id));
    for e in &v.good {
        let seg = decrypt_segment(stored, e, &prev, ids)?;
        f(&seg)?;
        prev = e.chain.clone();
    }
    Ok(v)
}

/// Reads a line-oriented file with a cap (for `--audit`).
pub fn read_text_capped(path: &Path, cap: u64) -> io::Result<String> {
    let f = fs::File::open(path)?;
    let mut out = String::new();
    for line in io::BufReader::new(f.take(cap)).lines() {
        out.push_str(&line?);
        out.push('\n');
    }
    Ok(out)
}
