//! The on-disk format shared by the writer (daemon) and the reader (CLI):
//! file names, the plaintext metadata and manifest, the hash chain, and the
//! event lines inside sealed segments. See the module docs of
//! [`crate::recording`] for the layout as a whole.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// Format tag in `meta.json` and every segment header. Format 3 binds
/// `meta.json` into the hash chain (see [`meta_sha256`] and
/// [`genesis_bound`]); format 2 stores binary data as raw frames (see
/// [`code::OUTPUT_BIN`]); format 1 stored it as base64 strings. Readers
/// accept all three; only format 3 recordings have their metadata covered.
pub const FORMAT: &str = "gatehouse-recording/3";
/// Formats whose `meta.json` is bound to the chain.
pub const FORMATS_WITH_BOUND_META: &[&str] = &[FORMAT];
/// Plaintext metadata of one recording (no key needed to read it).
pub const META_FILE: &str = "meta.json";
/// One JSON line per sealed segment: size, SHA-256, chain hash.
pub const MANIFEST_FILE: &str = "manifest.jsonl";
/// Domain separation for the chain hash.
const CHAIN_TAG: &[u8] = b"gatehouse-recording-chain/1\0";
const GENESIS_TAG: &[u8] = b"gatehouse-recording-genesis/1\0";
const GENESIS_BOUND_TAG: &[u8] = b"gatehouse-recording-genesis/2\0";
const META_TAG: &[u8] = b"gatehouse-recording-meta/1\0";
/// Longest recording id accepted from a command line or a directory name.
pub const MAX_ID_LEN: usize = 64;

/// `000003.age`
pub fn segment_file(seq: u64) -> String {
    format!("{seq:06}.age")
}

/// `.000003.age.tmp`: the open segment, renamed to [`segment_file`] once sealed.
pub fn segment_tmp_file(seq: u64) -> String {
    format!(".{seq:06}.age.tmp")
}

/// The sequence number of a sealed segment's file name.
pub fn parse_segment_file(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".age")?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The sequence number of an unsealed (temporary) segment's file name.
pub fn parse_tmp_file(name: &str) -> Option<u64> {
    parse_segment_file(name.strip_prefix('.')?.strip_suffix(".tmp")?)
}

/// Whether `id` can name a recording directory: letters, digits, `-`, `_`,
/// at most [`MAX_ID_LEN`] (so a command-line id cannot walk out of the dir).
pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// SHA-256.
pub fn sha256(data: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, data);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

fn digest_parts(parts: &[&[u8]]) -> [u8; 32] {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    for p in parts {
        ctx.update(p);
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// The chain value before segment 0 of recording `id`.
pub fn genesis(id: &str) -> [u8; 32] {
    digest_parts(&[GENESIS_TAG, id.as_bytes()])
}

/// The chain value before segment 0 of a format 3 recording: it depends
/// on the recording's [`meta_sha256`], so every chain hash (in the
/// manifest, the sealed segments and the audit log) binds who, what, when
/// and where.
pub fn genesis_bound(id: &str, meta_sha256: &[u8; 32]) -> [u8; 32] {
    digest_parts(&[GENESIS_BOUND_TAG, id.as_bytes(), &[0], meta_sha256])
}

/// The digest of a recording's start metadata: SHA-256 over a tag and the
/// compact JSON of `meta.json` without its `end` (which is written when the
/// recording ends, after the chain is complete). Recomputed from the parsed
/// file, so any change to a field — user, login, target, source, kind,
/// start time, recipients — changes it; whitespace does not.
pub fn meta_sha256(meta: &Meta) -> [u8; 32] {
    let start = Meta {
        end: None,
        ..meta.clone()
    };
    let json = serde_json::to_vec(&start).unwrap_or_default();
    digest_parts(&[META_TAG, &json])
}

/// `chain[n] = SHA-256(tag || id || 0 || n (u64 BE) || chain[n-1] || SHA-256(segment file n))`.
pub fn chain_next(id: &str, seq: u64, prev: &[u8; 32], file_sha256: &[u8; 32]) -> [u8; 32] {
    digest_parts(&[
        CHAIN_TAG,
        id.as_bytes(),
        &[0],
        &seq.to_be_bytes(),
        prev,
        file_sha256,
    ])
}

/// 32 bytes from 64 hex digits.
pub fn parse_hash(s: &str) -> Option<[u8; 32]> {
    let v = hex::decode(s).ok()?;
    v.try_into().ok()
}

/// The kind of channel run a recording holds, as written in metadata.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Shell,
    Exec,
    Sftp,
    /// A PostgreSQL session: a query log (see [`crate::recording::query`]).
    Postgres,
    /// A MySQL/MariaDB session: a query log, as for PostgreSQL.
    Mysql,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Shell => "shell",
            Kind::Exec => "exec",
            Kind::Sftp => "sftp",
            Kind::Postgres => "postgres",
            Kind::Mysql => "mysql",
        }
    }

    /// Whether the recording is a database session's query log.
    pub fn is_database(self) -> bool {
        matches!(self, Kind::Postgres | Kind::Mysql)
    }
}

/// `meta.json`: written (fsynced) when the recording starts, replaced
/// atomically with `end` filled in when it ends. Holds what `list` needs and
/// nothing secret: no command line, no content.
///
/// Every field but `end` is hashed into [`meta_sha256`] (as serialized
/// here, in this order): a field added later must be
/// `#[serde(default, skip_serializing_if = ...)]` and absent in old
/// recordings, or their metadata would no longer match their chain.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Meta {
    pub format: String,
    pub id: String,
    pub session_id: String,
    pub user: String,
    pub login: String,
    pub target: String,
    pub source: String,
    #[serde(default)]
    pub wireguard_peer: Option<String>,
    pub kind: Kind,
    /// RFC 3339, UTC.
    pub started: String,
    pub started_unix_ms: u64,
    /// The auditors' public keys the segments are sealed to.
    pub recipients: Vec<String>,
    #[serde(default)]
    pub end: Option<EndInfo>,
}

/// How a recording ended.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct EndInfo {
    /// RFC 3339, UTC.
    pub ended: String,
    pub ended_unix_ms: u64,
    pub duration_ms: u64,
    pub reason: String,
    #[serde(default)]
    pub exit_status: Option<u32>,
    pub bytes_up: u64,
    pub bytes_down: u64,
    /// Number of sealed segments (the manifest must list exactly these).
    pub segments: u64,
    /// Chain hash of the last segment (hex).
    pub final_chain: String,
}

/// One line of `manifest.jsonl`, appended (and fsynced) after segment `seq`
/// was sealed and renamed into place.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ManifestEntry {
    pub seq: u64,
    pub file: String,
    /// Bytes of the sealed file.
    pub size: u64,
    /// SHA-256 of the sealed file (hex).
    pub sha256: String,
    /// [`chain_next`] of this segment (hex).
    pub chain: String,
    /// When it was sealed (Unix ms), for durations of unfinished recordings.
    pub sealed_unix_ms: u64,
    /// Entry 0 of a format 3 recording: [`meta_sha256`] of `meta.json` (hex),
    /// which the chain's genesis ([`genesis_bound`]) depends on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub meta_sha256: Option<String>,
}

/// The gatehouse part of the asciicast header that starts every segment's
/// plaintext (under the key `gatehouse`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SegmentInfo {
    pub format: String,
    pub recording_id: String,
    pub session_id: String,
    pub user: String,
    pub login: String,
    pub target: String,
    pub source: String,
    #[serde(default)]
    pub wireguard_peer: Option<String>,
    pub kind: Kind,
    /// The exec command (exec recordings only), as text (invalid UTF-8
    /// replaced; see `command_base64`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    /// The exact command bytes, base64, when they are not valid UTF-8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command_base64: Option<String>,
    /// The database the client asked for (database recordings only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<String>,
    /// Whether this channel's input (user -> target bytes) is stored.
    pub record_input: bool,
    /// The role's `record_input` setting (`none`, `exec`, `all`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub record_input_mode: Option<String>,
    /// Whether the channel had a PTY.
    #[serde(default)]
    pub pty: bool,
    /// Environment variables the role allowed and that were passed to the
    /// target, in the order the client sent them: `[[name, value], ...]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<(String, String)>,
    /// [`meta_sha256`] of `meta.json` (hex), format 3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub meta_sha256: Option<String>,
    /// This segment's sequence number.
    pub segment: u64,
    /// The chain hash of the previous segment (hex), or [`genesis`] for segment 0.
    pub prev_chain: String,
}

/// The first line of each segment's plaintext: an asciicast v2 header, so a
/// decrypted segment is itself a readable asciicast file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SegmentHeader {
    pub version: u32,
    pub width: u32,
    pub height: u32,
    /// Recording start, Unix seconds (event times are relative to it).
    pub timestamp: u64,
    #[serde(default)]
    pub env: std::collections::BTreeMap<String, String>,
    pub gatehouse: SegmentInfo,
}

/// Event codes inside segments. Each event is a JSON array
/// `[seconds, code, data]` like asciicast v2; `o`, `i` and `r` are asciicast's
/// own, the others are ignored by asciicast players.
///
/// Binary data (bytes that are not tidy UTF-8 text) is a *raw frame*: the
/// line `[seconds, "ob", N]` (data is the byte count), then exactly N bytes
/// as they were relayed, then a newline. A segment with terminal text only
/// is therefore a plain asciicast file; one with binary output is read by
/// `gatehouse recordings` (export turns it into plain asciicast). Format 1
/// segments carry a base64 string instead of the count; readers take both.
pub mod code {
    /// Target -> user output, data is UTF-8 text.
    pub const OUTPUT: &str = "o";
    /// Target -> user output, binary: a raw frame (format 1: base64).
    pub const OUTPUT_BIN: &str = "ob";
    /// Target -> user extended data (stderr), text.
    pub const STDERR: &str = "e";
    /// Stderr, binary: a raw frame.
    pub const STDERR_BIN: &str = "eb";
    /// User -> target input (only with `record_input`), text.
    pub const INPUT: &str = "i";
    /// Input, binary: a raw frame.
    pub const INPUT_BIN: &str = "ib";
    /// Window resize, data `"COLSxROWS"`.
    pub const RESIZE: &str = "r";
    /// An SFTP operation, data is a JSON object.
    pub const SFTP: &str = "sftp";
    /// Exit status of the remote command, data is the number as a string.
    pub const EXIT: &str = "x";
    /// End of the recording, data is a JSON object (reason, bytes, status).
    pub const END: &str = "end";
}

/// Formats seconds with microsecond precision (stable, no float noise).
pub fn fmt_time(d: Duration) -> String {
    format!("{}.{:06}", d.as_secs(), d.subsec_micros())
}

/// Now as Unix milliseconds.
pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// RFC 3339 (UTC, seconds) of Unix milliseconds.
pub fn rfc3339_ms(ms: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_names_round_trip() {
        assert_eq!(segment_file(3), "000003.age");
        assert_eq!(parse_segment_file("000003.age"), Some(3));
        assert_eq!(parse_segment_file("1234567.age"), Some(1_234_567));
        assert_eq!(parse_segment_file("x.age"), None);
        assert_eq!(parse_segment_file(".age"), None);
        assert_eq!(parse_tmp_file(&segment_tmp_file(9)), Some(9));
        assert_eq!(parse_tmp_file("000009.age"), None);
    }

    #[test]
    fn ids_cannot_walk_out() {
        assert!(valid_id("20240101T000000Z-abcdef0123"));
        assert!(!valid_id("../etc"));
        assert!(!valid_id("a/b"));
        assert!(!valid_id(""));
        assert!(!valid_id(&"a".repeat(65)));
    }

    #[test]
    fn chain_depends_on_every_input() {
        let g = genesis("r1");
        let h = sha256(b"x");
        let c = chain_next("r1", 0, &g, &h);
        assert_ne!(c, chain_next("r2", 0, &g, &h));
        assert_ne!(c, chain_next("r1", 1, &g, &h));
        assert_ne!(c, chain_next("r1", 0, &h, &h));
        assert_ne!(c, chain_next("r1", 0, &g, &g));
        assert_eq!(parse_hash(&hex::encode(c)), Some(c));
        assert_eq!(parse_hash("zz"), None);
    }

    #[test]
    fn times_are_formatted_exactly() {
        assert_eq!(fmt_time(Duration::from_micros(1_500_001)), "1.500001");
        assert_eq!(rfc3339_ms(0), "1970-01-01T00:00:00Z");
    }
}
