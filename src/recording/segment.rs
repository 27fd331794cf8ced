//! Sealed segments on disk (blocking I/O; the writer task runs it on the
//! blocking pool). A segment is written to `.NNNNNN.age.tmp` through an age
//! encryptor to every recipient, hashed as it is written, then finished,
//! fsynced, renamed to `NNNNNN.age`, the directory fsynced, and only then
//! appended (fsynced) to the manifest. Plaintext never touches the disk.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use super::format::{self, ManifestEntry, SegmentHeader, SegmentInfo};

/// The auditors' keys, parsed once.
pub struct Recipients {
    keys: Vec<Box<dyn age::Recipient + Send + Sync>>,
    /// As written in the config (public keys, for metadata).
    pub lines: Vec<String>,
}

impl Recipients {
    /// Parses `age1...` and `ssh-ed25519 ...`/`ssh-rsa ...` public keys.
    pub fn parse(lines: &[String]) -> Result<Recipients, String> {
        let mut keys: Vec<Box<dyn age::Recipient + Send + Sync>> = Vec::new();
        for (i, l) in lines.iter().enumerate() {
            let t = l.trim();
            if t.starts_with("age1") {
                let r: age::x25519::Recipient = t
                    .parse()
                    .map_err(|e| format!("recipient {}: not an age X25519 key ({e})", i + 1))?;
                keys.push(Box::new(r));
            } else {
                let r: age::ssh::Recipient = t.parse().map_err(|_| {
                    format!("recipient {}: not an ssh public key age can use", i + 1)
                })?;
                keys.push(Box::new(r));
            }
        }
        if keys.is_empty() {
            return Err("no recipients: there is no unrecorded mode".into());
        }
        Ok(Recipients {
            keys,
            lines: lines.iter().map(|l| l.trim().to_string()).collect(),
        })
    }

    fn encryptor(&self) -> io::Result<age::Encryptor> {
        age::Encryptor::with_recipients(self.keys.iter().map(|k| k.as_ref() as &dyn age::Recipient))
            .map_err(|e| io::Error::other(format!("cannot seal to the recipients: {e}")))
    }
}

/// A file that hashes and counts what is written to it.
struct HashingFile {
    file: File,
    ctx: ring::digest::Context,
    len: u64,
}

impl Write for HashingFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(buf)?;
        let written = buf.get(..n).unwrap_or(buf);
        self.ctx.update(written);
        self.len = self.len.saturating_add(written.len() as u64);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

struct OpenSegment {
    seq: u64,
    tmp: PathBuf,
    w: age::stream::StreamWriter<HashingFile>,
    plain: u64,
}

/// What sealing a segment produced (also the audit event's fields).
#[derive(Debug, Clone)]
pub struct Sealed {
    pub seq: u64,
    pub sha256: String,
    pub chain: String,
}

/// The segments and manifest of one recording.
pub struct SegmentStore {
    dir: PathBuf,
    id: String,
    recipients: Arc<Recipients>,
    manifest: File,
    header: SegmentInfo,
    timestamp: u64,
    term: Option<String>,
    next_seq: u64,
    prev_chain: [u8; 32],
    open: Option<OpenSegment>,
}

/// Creates a file that must not exist yet, 0600.
fn create_new(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
}

/// fsyncs a directory so a rename or create in it is durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Writes `bytes` to `dir/name` atomically: temp file, fsync, rename, fsync dir.
pub fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> io::Result<()> {
    let tmp = dir.join(format!(".{name}.tmp"));
    let _ = std::fs::remove_file(&tmp);
    let mut f = create_new(&tmp)?;
    let res = f
        .write_all(bytes)
        .and_then(|_| f.sync_all())
        .and_then(|_| std::fs::rename(&tmp, dir.join(name)))
        .and_then(|_| sync_dir(dir));
    if res.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    res
}

impl SegmentStore {
    /// Opens the store of a new recording in `dir` (which exists and is empty).
    pub fn create(
        dir: PathBuf,
        recipients: Arc<Recipients>,
        header: SegmentInfo,
        timestamp: u64,
        term: Option<String>,
    ) -> io::Result<SegmentStore> {
        let manifest = OpenOptions::new()
            .append(true)
            .create_new(true)
            .mode(0o600)
            .open(dir.join(format::MANIFEST_FILE))?;
        let genesis = match header.meta_sha256.as_deref().and_then(format::parse_hash) {
            Some(meta) => format::genesis_bound(&header.recording_id, &meta),
            None => format::genesis(&header.recording_id),
        };
        Ok(SegmentStore {
            prev_chain: genesis,
            id: header.recording_id.clone(),
            dir,
            recipients,
            manifest,
            header,
            timestamp,
            term,
            next_seq: 0,
            open: None,
        })
    }

    /// Number of sealed segments.
    pub fn sealed(&self) -> u64 {
        self.next_seq
    }

    /// Chain hash of the last sealed segment (hex; the genesis value before any).
    pub fn last_chain(&self) -> String {
        hex::encode(self.prev_chain)
    }

    fn open_segment(&mut self, cols: u32, rows: u32) -> io::Result<&mut OpenSegment> {
        if self.open.is_none() {
            let seq = self.next_seq;
            let tmp = self.dir.join(format::segment_tmp_file(seq));
            let _ = std::fs::remove_file(&tmp);
            let file = create_new(&tmp)?;
            let hf = HashingFile {
                file,
                ctx: ring::digest::Context::new(&ring::digest::SHA256),
                len: 0,
            };
            let mut info = self.header.clone();
            info.segment = seq;
            info.prev_chain = hex::encode(self.prev_chain);
            let header = SegmentHeader {
                version: 2,
                width: cols,
                height: rows,
                timestamp: self.timestamp,
                env: self
                    .term
                    .iter()
                    .map(|t| ("TERM".to_string(), t.clone()))
                    .collect(),
                gatehouse: info,
            };
            let mut line = serde_json::to_vec(&header).map_err(io::Error::other)?;
            line.push(b'\n');
            let opened = self
                .recipients
                .encryptor()
                .and_then(|e| e.wrap_output(hf))
                .and_then(|mut w| w.write_all(&line).map(|_| w));
            let w = match opened {
                Ok(w) => w,
                Err(e) => {
                    let _ = std::fs::remove_file(&tmp);
                    return Err(e);
                }
            };
            self.open = Some(OpenSegment {
                seq,
                tmp,
                w,
                plain: line.len() as u64,
            });
        }
        self.open
            .as_mut()
            .ok_or_else(|| io::Error::other("no open segment"))
    }

    /// Appends event lines to the open segment (opening one if needed, with
    /// a header of the given terminal size).
    pub fn write(&mut self, data: &[u8], cols: u32, rows: u32) -> io::Result<()> {
        if data.is_empty() && self.open.is_some() {
            return Ok(());
        }
        let seg = self.open_segment(cols, rows)?;
        seg.w.write_all(data)?;
        seg.plain = seg.plain.saturating_add(data.len() as u64);
        Ok(())
    }

    /// Seals the open segment: finish, fsync, rename, fsync dir, manifest.
    /// Nothing to do (Ok(None)) when no segment is open.
    pub fn seal(&mut self) -> io::Result<Option<Sealed>> {
        let Some(seg) = self.open.take() else {
            return Ok(None);
        };
        let tmp = seg.tmp.clone();
        let seq = seg.seq;
        let res = self.seal_inner(seg);
        if res.is_err() {
            // Not in the manifest: the segment does not count, in either name.
            let _ = std::fs::remove_file(&tmp);
            let _ = std::fs::remove_file(self.dir.join(format::segment_file(seq)));
        }
        res.map(Some)
    }

    fn seal_inner(&mut self, seg: OpenSegment) -> io::Result<Sealed> {
        let hf = seg.w.finish()?;
        hf.file.sync_all()?;
        let mut sha = [0u8; 32];
        sha.copy_from_slice(hf.ctx.finish().as_ref());
        let name = format::segment_file(seg.seq);
        std::fs::rename(&seg.tmp, self.dir.join(&name))?;
        sync_dir(&self.dir)?;
        let chain = format::chain_next(&self.id, seg.seq, &self.prev_chain, &sha);
        let entry = ManifestEntry {
            seq: seg.seq,
            file: name,
            size: hf.len,
            sha256: hex::encode(sha),
            chain: hex::encode(chain),
            sealed_unix_ms: format::unix_ms(SystemTime::now()),
            meta_sha256: if seg.seq == 0 {
                self.header.meta_sha256.clone()
            } else {
                None
            },
        };
        let mut line = serde_json::to_vec(&entry).map_err(io::Error::other)?;
        line.push(b'\n');
        self.manifest.write_all(&line)?;
        self.manifest.sync_all()?;
        self.prev_chain = chain;
        self.next_seq = seg.seq.saturating_add(1);
        Ok(Sealed {
            seq: entry.seq,
            sha256: entry.sha256,
            chain: entry.chain,
        })
    }

    /// Drops the open segment's temp file (after a write error).
    pub fn discard_open(&mut self) {
        if let Some(seg) = self.open.take() {
            let tmp = seg.tmp.clone();
            drop(seg);
            let _ = std::fs::remove_file(tmp);
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}
