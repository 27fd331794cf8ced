//! Property tests (proptest) of the parsers that read hostile bytes in the
//! recorder: the SFTP parser (bytes from the user and the target) and the
//! recording reader (bytes from a recordings directory an attacker may have
//! written). Arbitrary bytes never panic, and never make them allocate
//! beyond their bound: a length that the bytes claim (an SFTP packet of
//! 4 GiB, a raw frame of 2^64 bytes) must not turn into an allocation.
//!
//! Memory is measured with a counting global allocator: the high-water
//! mark of live bytes on the test's thread while the parser runs.
//!
//! CI runs 256 cases per property; `PROPTEST_CASES=20000 cargo test --release
//! --test recordings_props` is the long run.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::Write;

use gatehouse::recording::format::{self, ManifestEntry};
use gatehouse::recording::reader::{self, Stored};
use gatehouse::recording::sftp::{Direction, SftpTracker, HEAD_CAP};
use proptest::prelude::*;

// ---- a counting allocator: live bytes and their peak, per thread ----

struct Counting;

thread_local! {
    static LIVE: Cell<i64> = const { Cell::new(0) };
    static PEAK: Cell<i64> = const { Cell::new(0) };
}

fn add(delta: i64) {
    let _ = LIVE.try_with(|live| {
        let v = live.get() + delta;
        live.set(v);
        let _ = PEAK.try_with(|p| {
            if v > p.get() {
                p.set(v)
            }
        });
    });
}

// SAFETY: every call is forwarded unchanged to the system allocator; the
// counters are plain thread-local cells with no destructor (no allocation).
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            add(layout.size() as i64);
        }
        p
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            add(layout.size() as i64);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        add(-(layout.size() as i64));
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            add(new_size as i64 - layout.size() as i64);
        }
        p
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Runs `f` and returns its result and the most bytes it had allocated at
/// once (beyond what was live when it started) on this thread.
fn peak_of<T>(f: impl FnOnce() -> T) -> (T, u64) {
    let base = LIVE.with(Cell::get);
    PEAK.with(|p| p.set(base));
    let out = f();
    let peak = PEAK.with(Cell::get);
    (out, u64::try_from(peak - base).unwrap_or(0))
}

fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    ProptestConfig {
        cases,
        // No regression files in the source tree: failures print the input.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

#[test]
fn the_allocation_meter_sees_what_a_parser_would_allocate() {
    let (v, peak) = peak_of(|| vec![7u8; 3 << 20]);
    assert!(peak >= 3 << 20, "{peak}");
    drop(v);
    let (_, peak) = peak_of(|| ());
    assert!(peak < 1024, "{peak}");
}

// ---- SFTP ----

/// SFTP packet types the parser knows, and a few it does not.
const TYPES: &[u8] = &[
    1, 2, 3, 4, 5, 6, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 101, 102, 103, 104, 105, 200,
    201, 0, 255,
];

/// A string as SFTP writes it (u32 length, bytes), its length sometimes a lie.
fn sftp_string() -> impl Strategy<Value = Vec<u8>> {
    (
        prop::collection::vec(any::<u8>(), 0..64),
        prop_oneof![Just(None), any::<u32>().prop_map(Some)],
    )
        .prop_map(|(bytes, lie)| {
            let len = lie.unwrap_or(bytes.len() as u32);
            let mut out = len.to_be_bytes().to_vec();
            out.extend_from_slice(&bytes);
            out
        })
}

/// A packet: a length (true, or any u32), a type, an id, then strings,
/// numbers and noise.
fn sftp_packet() -> impl Strategy<Value = Vec<u8>> {
    (
        prop::sample::select(TYPES),
        any::<u32>(),
        prop::collection::vec(
            prop_oneof![
                sftp_string(),
                any::<u32>().prop_map(|n| n.to_be_bytes().to_vec()),
                any::<u64>().prop_map(|n| n.to_be_bytes().to_vec()),
                prop::collection::vec(any::<u8>(), 0..16),
            ],
            0..6,
        ),
        prop_oneof![3 => Just(None), 1 => any::<u32>().prop_map(Some)],
    )
        .prop_map(|(t, id, parts, lie)| {
            let mut body = vec![t];
            body.extend_from_slice(&id.to_be_bytes());
            for p in parts {
                body.extend_from_slice(&p);
            }
            let len = lie.unwrap_or(body.len() as u32);
            let mut out = len.to_be_bytes().to_vec();
            out.extend_from_slice(&body);
            out
        })
}

/// What one direction of a channel carries: packets, or arbitrary bytes.
fn sftp_chunk() -> impl Strategy<Value = (bool, Vec<u8>)> {
    (
        any::<bool>(),
        prop_oneof![
            prop::collection::vec(any::<u8>(), 0..2048),
            prop::collection::vec(sftp_packet(), 1..20).prop_map(|ps| ps.concat()),
        ],
    )
}

/// Bytes the tracker may hold beyond what it was fed: a packet head per
/// direction, and the maps' fixed overhead.
const SFTP_FIXED: u64 = 2 * HEAD_CAP as u64 + 64 * 1024;
/// ... plus at most this much per byte fed (operations, paths, map
/// entries: each needs at least a few bytes of input).
const SFTP_PER_BYTE: u64 = 96;

proptest! {
    #![proptest_config(config())]

    #[test]
    fn sftp_parser_never_panics_and_allocates_within_its_bound(
        chunks in prop::collection::vec(sftp_chunk(), 1..24)
    ) {
        let mut tracker = SftpTracker::new();
        let mut fed = 0u64;
        let mut worst = 0u64;
        for (request, data) in &chunks {
            fed += data.len() as u64;
            let dir = if *request { Direction::Request } else { Direction::Reply };
            let (_, peak) = peak_of(|| tracker.feed(dir, data));
            worst = worst.max(peak);
            prop_assert!(
                peak <= SFTP_FIXED + SFTP_PER_BYTE * fed,
                "feeding {} bytes ({} so far) allocated {} bytes", data.len(), fed, peak
            );
        }
        let (_, peak) = peak_of(|| tracker.finish());
        prop_assert!(peak <= SFTP_FIXED + SFTP_PER_BYTE * fed, "finish: {peak}");
    }

    #[test]
    fn a_claimed_sftp_packet_length_never_becomes_an_allocation(
        t in prop::sample::select(TYPES),
        len in 16_000_000u32..,
        body in prop::collection::vec(any::<u8>(), 0..4096),
    ) {
        let mut data = len.to_be_bytes().to_vec();
        data.push(t);
        data.extend_from_slice(&body);
        let mut tracker = SftpTracker::new();
        let (_, peak) = peak_of(|| {
            let _ = tracker.feed(Direction::Request, &data);
            let _ = tracker.feed(Direction::Reply, &data);
        });
        prop_assert!(peak <= SFTP_FIXED + SFTP_PER_BYTE * 2 * data.len() as u64, "{peak}");
    }
}

// ---- the recording reader ----

struct Fixture {
    _tmp: tempfile::TempDir,
    root: std::path::PathBuf,
    recipient: age::x25519::Recipient,
    ids: reader::Identities,
}

fn fixture() -> Fixture {
    use age::secrecy::ExposeSecret;
    let tmp = tempfile::tempdir().expect("tempdir");
    let id = age::x25519::Identity::generate();
    let key = tmp.path().join("auditor.age");
    std::fs::write(&key, format!("{}\n", id.to_string().expose_secret())).expect("key");
    let root = tmp.path().join("recordings");
    std::fs::create_dir(&root).expect("root");
    Fixture {
        ids: reader::load_identities(&key).expect("identity"),
        recipient: id.to_public(),
        root,
        _tmp: tmp,
    }
}

const ID: &str = "20260101T000000Z-0000000000";

fn seal(f: &Fixture, plaintext: &[u8]) -> Vec<u8> {
    let enc = age::Encryptor::with_recipients(std::iter::once(&f.recipient as &dyn age::Recipient))
        .expect("encryptor");
    let mut out = Vec::new();
    let mut w = enc.wrap_output(&mut out).expect("wrap");
    w.write_all(plaintext).expect("write");
    w.finish().expect("finish");
    out
}

/// A segment header line that names this recording, segment 0, prev "p".
fn header_line() -> Vec<u8> {
    let mut line = serde_json::json!({
        "version": 2, "width": 80, "height": 24, "timestamp": 0,
        "gatehouse": {
            "format": format::FORMAT, "recording_id": ID, "session_id": "s",
            "user": "u", "login": "l", "target": "t", "source": "x",
            "kind": "exec", "record_input": true, "segment": 0, "prev_chain": "p",
        }
    })
    .to_string()
    .into_bytes();
    line.push(b'\n');
    line
}

/// Event lines as the writer makes them, with hostile numbers, and noise.
fn event_line() -> impl Strategy<Value = Vec<u8>> {
    let code = prop::sample::select(
        &[
            "o", "ob", "e", "eb", "i", "ib", "r", "sftp", "x", "end", "zz",
        ][..],
    );
    prop_oneof![
        (
            code.clone(),
            any::<u64>(),
            prop::collection::vec(any::<u8>(), 0..64)
        )
            .prop_map(|(c, n, raw)| {
                // A raw frame header claiming n bytes, then some bytes.
                let mut l = format!("[0.5,\"{c}\",{n}]\n").into_bytes();
                l.extend_from_slice(&raw);
                l.push(b'\n');
                l
            }),
        (code, "[ -~]{0,40}").prop_map(|(c, s)| {
            let mut l = serde_json::json!([1.0, c, s]).to_string().into_bytes();
            l.push(b'\n');
            l
        }),
        prop::collection::vec(any::<u8>(), 0..128),
    ]
}

fn segment_plaintext() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..4096),
        prop::collection::vec(event_line(), 0..40).prop_map(|ls| {
            let mut p = header_line();
            p.extend(ls.concat());
            p
        }),
    ]
}

fn stored(f: &Fixture) -> Stored {
    Stored {
        id: ID.into(),
        dir: f.root.join(ID),
        meta: Err("not used".into()),
    }
}

fn entry(size: u64) -> ManifestEntry {
    ManifestEntry {
        seq: 0,
        file: format::segment_file(0),
        size,
        sha256: String::new(),
        chain: String::new(),
        sealed_unix_ms: 0,
        meta_sha256: None,
    }
}

/// The reader's own overhead beyond the bytes it reads (age's chunk
/// buffers, the parsed header).
const READER_FIXED: u64 = 1024 * 1024;
/// Per byte of plaintext: the file, the plaintext, and the decoded events.
const READER_PER_BYTE: u64 = 24;

fn write_dir(f: &Fixture, files: &[(&str, &[u8])]) {
    let dir = f.root.join(ID);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir(&dir).expect("dir");
    for (name, bytes) in files {
        std::fs::write(dir.join(name), bytes).expect("write");
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn the_reader_decrypts_arbitrary_segments_without_panic_within_its_bound(
        plaintext in segment_plaintext()
    ) {
        let f = fixture();
        let sealed = seal(&f, &plaintext);
        write_dir(&f, &[(&format::segment_file(0), &sealed)]);
        let s = stored(&f);
        let e = entry(sealed.len() as u64);
        let (_, peak) = peak_of(|| reader::decrypt_segment(&s, &e, "p", &f.ids));
        let bound = READER_FIXED + READER_PER_BYTE * plaintext.len() as u64;
        prop_assert!(peak <= bound, "{} bytes of plaintext: {peak} allocated", plaintext.len());
    }

    #[test]
    fn the_reader_takes_arbitrary_files_for_a_segment_without_panic(
        bytes in prop::collection::vec(any::<u8>(), 0..4096),
        claimed in prop_oneof![Just(None), any::<u64>().prop_map(Some)],
    ) {
        let f = fixture();
        write_dir(&f, &[(&format::segment_file(0), &bytes)]);
        let s = stored(&f);
        // The manifest may claim any size: the read is bounded by it and
        // by the file, never allocated from the claim.
        let e = entry(claimed.unwrap_or(bytes.len() as u64));
        let (_, peak) = peak_of(|| reader::decrypt_segment(&s, &e, "p", &f.ids));
        prop_assert!(peak <= READER_FIXED + READER_PER_BYTE * bytes.len() as u64, "{peak}");
    }

    #[test]
    fn verify_takes_arbitrary_manifests_and_metadata_without_panic(
        manifest in prop_oneof![
            prop::collection::vec(any::<u8>(), 0..4096),
            prop::collection::vec(
                (any::<u64>(), any::<u64>(), "[0-9a-f]{0,64}", prop::option::of("[0-9a-f]{0,64}"))
                    .prop_map(|(seq, size, sha, meta)| {
                        let mut l = serde_json::json!({
                            "seq": seq % 4, "file": format::segment_file(seq % 4), "size": size,
                            "sha256": sha, "chain": sha, "sealed_unix_ms": 0, "meta_sha256": meta,
                        }).to_string();
                        l.push('\n');
                        l.into_bytes()
                    }),
                0..6,
            ).prop_map(|ls| ls.concat()),
        ],
        meta in prop::collection::vec(any::<u8>(), 0..1024),
        segment in prop::collection::vec(any::<u8>(), 0..1024),
    ) {
        let f = fixture();
        write_dir(&f, &[
            (format::MANIFEST_FILE, &manifest),
            (format::META_FILE, &meta),
            (&format::segment_file(0), &segment),
            (&format::segment_file(1), &segment),
        ]);
        let s = reader::open(&f.root, ID).expect("open");
        let input = (manifest.len() + meta.len() + 2 * segment.len()) as u64;
        let (v, peak) = peak_of(|| reader::verify(&s));
        prop_assert!(peak <= READER_FIXED + READER_PER_BYTE * input, "{peak}");
        let _ = v.ok();
        let (_, peak) = peak_of(|| reader::read_all(&s, &f.ids, |_| Ok(())));
        prop_assert!(peak <= READER_FIXED + READER_PER_BYTE * input, "{peak}");
    }
}
