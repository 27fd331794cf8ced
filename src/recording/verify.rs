//! Integrity without a key: the manifest's hash chain, every segment file
//! against it, the end recorded in the metadata, and (optionally) the chain
//! hashes in gatehouse's audit log. Every problem names the segment.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use super::format::{self, ManifestEntry};
use super::reader::{open_regular, read_regular, Stored};

/// Most bytes read from the manifest.
const MAX_MANIFEST: u64 = 64 * 1024 * 1024;
/// Most bytes read from one segment file, whatever a (hostile) manifest
/// claims: the writer seals at 4 MiB of plaintext, so a real segment is far
/// smaller (the reader's decryption bound is the same).
pub(super) const MAX_SEGMENT_FILE: u64 = 128 * 1024 * 1024;

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
    /// The chain value before segment 0 (hex): bound to `meta.json` in
    /// format 3, the plain genesis before.
    pub genesis: String,
}

impl Verification {
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

pub(super) fn seg_name(seq: u64) -> String {
    format!("segment {seq} ({})", format::segment_file(seq))
}

/// Hashes a regular file (no symlink followed, no FIFO waited on) of at
/// most `bound` bytes: (SHA-256, size). A larger file is not hashed: Ok
/// with its size and an all-zero hash, so the caller reports it as over
/// its bound by name.
fn hash_file(path: &Path, bound: u64) -> io::Result<([u8; 32], u64)> {
    let f = open_regular(path)?;
    let size = f.metadata()?.len();
    if size > bound {
        return Ok(([0u8; 32], size));
    }
    // One byte more than the bound: a file that grows is caught, not followed.
    let mut f = f.take(bound.saturating_add(1));
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
    let bytes = match read_regular(&dir.join(format::MANIFEST_FILE), MAX_MANIFEST) {
        Ok(b) => b,
        Err(e) => {
            v.problems
                .push(format!("{}: cannot be read: {e}", format::MANIFEST_FILE));
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

    // 0. meta.json against the hash that segment 0's entry binds into the
    // chain (format 3): who, what, when and where cannot be edited without
    // breaking the chain that the audit log also holds.
    let bound = entries
        .first()
        .filter(|e| e.seq == 0)
        .and_then(|e| e.meta_sha256.as_deref());
    let genesis = match bound.map(format::parse_hash) {
        Some(Some(h)) => format::genesis_bound(&stored.id, &h),
        Some(None) => {
            v.problems.push(format!(
                "manifest entry 1 holds a malformed {} hash (altered)",
                format::META_FILE
            ));
            format::genesis(&stored.id)
        }
        None => format::genesis(&stored.id),
    };
    v.genesis = hex::encode(genesis);
    match (meta, bound) {
        (Some(m), Some(b)) => {
            if hex::encode(format::meta_sha256(m)) != b {
                v.problems.push(format!(
                    "{}: altered: its who/what/when/where (user {}, login {}, target {}, source {}, started {}) differ from what segment 0's manifest entry binds into the hash chain",
                    format::META_FILE,
                    super::export::safe(&m.user),
                    super::export::safe(&m.login),
                    super::export::safe(&m.target),
                    super::export::safe(&m.source),
                    super::export::safe(&m.started),
                ));
            }
        }
        (Some(m), None) if format::FORMATS_WITH_BOUND_META.contains(&m.format.as_str()) => {
            if !entries.is_empty() {
                v.problems.push(format!(
                    "{}: says {} but segment 0's manifest entry binds no metadata hash (manifest rewritten)",
                    format::META_FILE,
                    super::export::safe(&m.format)
                ));
            }
        }
        (Some(_), None) => v.notes.push(format!(
            "{} is not covered by the hash chain (recorded before gatehouse-recording/3); check it against the audit log with --audit",
            format::META_FILE
        )),
        (None, _) => {}
    }

    // 1. The manifest's own chain.
    let mut prev = genesis;
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
    // No file is read further than the largest size the manifest gives a
    // segment (so that a swapped segment is still recognised by its hash);
    // a larger one is reported by its size, unread.
    for e in entries.iter().filter(|e| e.size > MAX_SEGMENT_FILE) {
        v.problems.push(format!(
            "{}: the manifest claims {} bytes, more than any segment gatehouse writes ({MAX_SEGMENT_FILE}; altered)",
            seg_name(e.seq),
            e.size
        ));
    }
    let largest = entries
        .iter()
        .map(|e| e.size)
        .max()
        .unwrap_or(0)
        .min(MAX_SEGMENT_FILE);
    let mut hashes: BTreeMap<u64, Result<([u8; 32], u64), String>> = BTreeMap::new();
    for (seq, path) in &on_disk {
        hashes.insert(*seq, hash_file(path, largest).map_err(|e| e.to_string()));
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
                v.problems.push(format!("{name}: damaged: {err}"));
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
                        _ if *size > largest => format!("{name}: replaced ({size} bytes where {} were sealed; over its bound, not read)", e.size),
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
/// names are upper-case, `F_`-prefixed, and numbers are strings).
#[derive(Debug, Default)]
pub struct AuditIndex {
    segments: HashMap<String, BTreeMap<u64, String>>,
    finished: HashMap<String, (u64, String)>,
    /// The end reason each `recording.finished` event gave.
    finished_reason: HashMap<String, String>,
    started: BTreeMap<String, Started>,
}

/// What a `recording.started` event said.
#[derive(Debug, Default, Clone)]
struct Started {
    meta_sha256: Option<String>,
    user: Option<String>,
    login: Option<String>,
    target: Option<String>,
}

/// A field of an audit event: `name` in gatehouse's JSON lines; `NAME` or
/// `F_NAME` (tracing-journald's default prefix) in `journalctl -o json`.
fn field<'a>(v: &'a serde_json::Value, name: &str) -> Option<&'a serde_json::Value> {
    let upper = name.to_ascii_uppercase();
    v.get(name)
        .or_else(|| v.get(&upper))
        .or_else(|| v.get(format!("F_{upper}")))
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
            idx.add_line(line.as_bytes());
        }
        idx
    }

    /// Reads an audit log line by line (it may be large; lines that are not
    /// JSON are skipped).
    pub fn from_reader(mut r: impl io::BufRead) -> io::Result<AuditIndex> {
        let mut idx = AuditIndex::default();
        let mut line = Vec::new();
        loop {
            line.clear();
            if r.read_until(b'\n', &mut line)? == 0 {
                return Ok(idx);
            }
            idx.add_line(&line);
        }
    }

    fn add_line(&mut self, line: &[u8]) {
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(line) else {
            return;
        };
        let (Some(event), Some(id)) = (field_str(&v, "event"), field_str(&v, "recording_id"))
        else {
            return;
        };
        match event.as_str() {
            "recording.started" => {
                let started = Started {
                    meta_sha256: field_str(&v, "meta_sha256"),
                    user: field_str(&v, "user"),
                    login: field_str(&v, "login"),
                    target: field_str(&v, "target"),
                };
                self.started.insert(id, started);
            }
            "recording.segment" => {
                if let (Some(seq), Some(chain)) = (field_u64(&v, "seq"), field_str(&v, "chain")) {
                    self.segments.entry(id).or_default().insert(seq, chain);
                }
            }
            "recording.finished" => {
                if let (Some(n), Some(chain)) = (field_u64(&v, "segments"), field_str(&v, "chain"))
                {
                    if let Some(reason) = field_str(&v, "reason") {
                        self.finished_reason.insert(id.clone(), reason);
                    }
                    self.finished.insert(id, (n, chain));
                }
            }
            _ => {}
        }
    }

    /// Recordings the log says were started.
    pub fn started(&self) -> impl Iterator<Item = &String> {
        self.started.keys()
    }

    /// Adds problems where the recording disagrees with the audit log.
    pub fn check(&self, stored: &Stored, v: &mut Verification) {
        let entries = read_manifest(&stored.dir, &mut Verification::default());
        let by_seq: BTreeMap<u64, &ManifestEntry> = entries.iter().map(|e| (e.seq, e)).collect();
        if !self.segments.contains_key(&stored.id) && !self.started.contains_key(&stored.id) {
            v.notes
                .push("the audit log given has no events of this recording".into());
        }
        if let (Some(started), Ok(m)) = (self.started.get(&stored.id), &stored.meta) {
            // Who, what, where as the gateway logged them when it started.
            let safe = super::export::safe;
            let mut diffs = Vec::new();
            for (name, logged, on_disk) in [
                ("user", &started.user, &m.user),
                ("login", &started.login, &m.login),
                ("target", &started.target, &m.target),
            ] {
                if let Some(logged) = logged.as_ref().filter(|l| *l != on_disk) {
                    diffs.push(format!(
                        "{name} {} where the audit log says {}",
                        safe(on_disk),
                        safe(logged)
                    ));
                }
            }
            let digest = hex::encode(format::meta_sha256(m));
            if diffs.is_empty() && started.meta_sha256.as_ref().is_some_and(|h| *h != digest) {
                diffs
                    .push("its SHA-256 differs from the one in the recording.started event".into());
            }
            if !diffs.is_empty() {
                v.problems.push(format!(
                    "{}: differs from the recording.started audit event: {}",
                    format::META_FILE,
                    diffs.join("; ")
                ));
            }
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
        // How it ended: meta.json's end is written after the chain is
        // complete, so the finished event is what binds its reason.
        if let (Some(logged), Ok(m)) = (self.finished_reason.get(&stored.id), &stored.meta) {
            match &m.end {
                Some(end) if end.reason != *logged => v.problems.push(format!(
                    "{}: its end reason {} differs from the recording.finished audit event ({})",
                    format::META_FILE,
                    super::export::safe(&end.reason),
                    super::export::safe(logged)
                )),
                None => v.problems.push(format!(
                    "{}: has no end, but the audit log says the recording finished (end removed)",
                    format::META_FILE
                )),
                _ => {}
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
