//! Every session is recorded, sealed to the auditors' keys: with the stock
//! OpenSSH client through the gateway to a real sshd, then read back with
//! `gatehouse recordings`, stock `age -d` and stock `asciinema cat`. Covers
//! shell, exec, scp and sftp recordings, `kill -9` of the daemon, tampering,
//! an unwritable recordings directory and a disk that fills mid-session.

mod common;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::world::{stderr, stdout, World};
use common::*;
use serde_json::Value;

const TOOLS: &[&str] = &["ssh", "sshd", "ssh-keygen", "oathtool"];

/// Runs `gatehouse recordings ARGS...` for this gateway's config.
fn rec(gw: &Gatehouse, args: &[&str]) -> Output {
    let mut all = vec!["recordings"];
    all.extend_from_slice(args);
    gw.setup().cli(&all)
}

fn rec_ok(gw: &Gatehouse, args: &[&str]) -> String {
    let out = rec(gw, args);
    assert!(
        out.status.success(),
        "gatehouse recordings {args:?}: {}\n{}",
        stdout(&out),
        stderr(&out)
    );
    stdout(&out)
}

fn key(gw: &Gatehouse) -> String {
    gw.setup().auditor_key().display().to_string()
}

fn recordings_dir(gw: &Gatehouse) -> PathBuf {
    gw.setup().state_dir().join("recordings")
}

/// Waits for a `recording.finished` event of a recording of `kind` and
/// returns the recording id.
fn finished_recording(gw: &Gatehouse, kind: &str) -> String {
    let started = gw
        .wait_for_event(
            |e| e["event"] == "recording.started" && e["kind"] == kind,
            Duration::from_secs(15),
        )
        .unwrap_or_else(|| panic!("no {kind} recording started:\n{}", gw.stderr()));
    let id = started["recording_id"].as_str().unwrap().to_string();
    gw.wait_for_event(
        |e| e["event"] == "recording.finished" && e["recording_id"] == id.as_str(),
        Duration::from_secs(15),
    )
    .unwrap_or_else(|| panic!("recording {id} did not finish:\n{}", gw.stderr()));
    id
}

/// `show --json`: the recording line and the events.
fn show_json(gw: &Gatehouse, id: &str) -> Vec<Value> {
    rec_ok(gw, &["show", id, "-i", &key(gw), "--json"])
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

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

fn sftp_ops(events: &[Value]) -> Vec<Value> {
    events
        .iter()
        .filter(|e| e["type"] == "sftp")
        .cloned()
        .collect()
}

/// `asciinema cat FILE` under script(1) (it needs a terminal).
fn asciinema_cat(file: &Path) -> String {
    let out = run_checked_timeout(
        Command::new("script")
            .args([
                "-qec",
                &format!("asciinema cat '{}'", file.display()),
                "/dev/null",
            ])
            .stdin(Stdio::null()),
        DEFAULT_COMMAND_TIMEOUT,
    );
    assert!(out.status.success(), "asciinema cat: {}", stdout(&out));
    stdout(&out)
}

fn random_file(path: &Path, bytes: usize) {
    let mut buf = vec![0u8; bytes];
    std::fs::File::open("/dev/urandom")
        .unwrap()
        .read_exact(&mut buf)
        .unwrap();
    std::fs::write(path, buf).unwrap();
}

/// Reads a child's stdout on a thread; `wait_for` polls what arrived.
struct Screen {
    rx: std::sync::mpsc::Receiver<Vec<u8>>,
    seen: String,
}

impl Screen {
    fn new(mut out: impl Read + Send + 'static) -> Screen {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = out.read(&mut buf) {
                if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                    break;
                }
            }
        });
        Screen {
            rx,
            seen: String::new(),
        }
    }
    fn wait_for(&mut self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while !self.seen.contains(needle) && Instant::now() < deadline {
            if let Ok(chunk) = self.rx.recv_timeout(Duration::from_millis(100)) {
                self.seen.push_str(&String::from_utf8_lossy(&chunk));
            }
        }
        self.seen.contains(needle)
    }
}

/// A tmpfs mounted on a directory, unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, options: &str) -> Tmpfs {
        std::fs::create_dir_all(dir).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", options, "tmpfs"])
            .arg(dir)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "mount tmpfs on {} (these tests run as root): {}",
            dir.display(),
            stderr(&out)
        );
        Tmpfs(dir.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn shell_session_exported_plays_in_asciinema_with_what_the_target_printed() {
    if !require_tools(&[TOOLS, &["asciinema", "script"]].concat()) {
        return;
    }
    let w = World::start(|b| b);
    let dest = format!("{}@web-1", w.login);
    let mut guard = w.client.spawn(&["-tt", "-J", "gw", &dest]);
    let mut stdin = guard.child().stdin.take().unwrap();
    let mut screen = Screen::new(guard.child().stdout.take().unwrap());
    let ready = wait_until(Duration::from_secs(20), || {
        let _ = stdin.write_all(b"echo SHELL-MARK-$((6*7))\r");
        screen.wait_for("SHELL-MARK-42", Duration::from_millis(500))
    });
    assert!(ready, "no shell: {}\n{}", screen.seen, w.gw.stderr());
    stdin.write_all(b"exit\r").unwrap();
    assert!(guard.wait_timeout(Duration::from_secs(15)).is_some());
    let id = finished_recording(&w.gw, "shell");

    let list = rec_ok(&w.gw, &["list"]);
    let row = list
        .lines()
        .find(|l| l.starts_with(&id))
        .unwrap_or_else(|| panic!("{list}"));
    for field in ["alice", w.login.as_str(), "web-1", "shell"] {
        assert!(row.contains(field), "{row}");
    }
    assert!(!rec_ok(&w.gw, &["list", "--user", "bob"]).contains(&id));
    assert!(rec_ok(&w.gw, &["list", "--target", "web-1", "--since", "1h"]).contains(&id));

    let dir = tempfile::tempdir().unwrap();
    let cast = dir.path().join("session.cast");
    rec_ok(
        &w.gw,
        &[
            "export",
            &id,
            "-i",
            &key(&w.gw),
            "-o",
            cast.to_str().unwrap(),
        ],
    );
    let header: Value = serde_json::from_str(
        std::fs::read_to_string(&cast)
            .unwrap()
            .lines()
            .next()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(header["version"], 2);
    assert_eq!(header["gatehouse"]["user"], "alice");
    assert_eq!(header["gatehouse"]["target"], "web-1");
    assert!(header["env"]["TERM"].is_string(), "{header}");
    assert!(asciinema_cat(&cast).contains("SHELL-MARK-42"));

    let played = run_checked_timeout(
        Command::new("script")
            .args([
                "-qec",
                &format!(
                    "{} recordings play {id} -i {} --speed 20 --config {}",
                    gatehouse_bin().display(),
                    key(&w.gw),
                    w.gw.config_path().display()
                ),
                "/dev/null",
            ])
            .stdin(Stdio::null()),
        DEFAULT_COMMAND_TIMEOUT,
    );
    assert!(
        stdout(&played).contains("SHELL-MARK-42"),
        "{}",
        stdout(&played)
    );
    assert!(rec_ok(&w.gw, &["verify", &id]).contains(&format!("{id}: ok")));
}

#[test]
fn exec_is_recorded_with_command_output_stderr_and_exit_status() {
    if !require_tools(&[TOOLS, &["age"]].concat()) {
        return;
    }
    let w = World::start(|b| b);
    let out = w.client.run_jump(
        &w.login,
        "web-1",
        &["echo hello-rec; echo err-rec >&2; sleep 0.2; printf '\\000\\377\\376'; exit 3"],
    );
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let id = finished_recording(&w.gw, "exec");
    let ev = show_json(&w.gw, &id);
    assert_eq!(ev[0]["type"], "recording");
    assert_eq!(
        ev[0]["command"],
        "echo hello-rec; echo err-rec >&2; sleep 0.2; printf '\\000\\377\\376'; exit 3"
    );
    assert_eq!(ev[0]["end"]["exit_status"], 3);
    assert_eq!(ev[0]["user"], "alice");
    let mut want = b"hello-rec\n".to_vec();
    want.extend_from_slice(&[0, 0xff, 0xfe]);
    assert_eq!(
        stream_bytes(&ev, "stdout"),
        want,
        "binary output is lossless"
    );
    assert_eq!(stream_bytes(&ev, "stderr"), b"err-rec\n");
    assert!(ev.iter().any(|e| e["type"] == "exit" && e["status"] == 3));
    let text = rec_ok(&w.gw, &["show", &id, "-i", &key(&w.gw)]);
    assert!(
        text.contains("exit status 3") && text.contains("hello-rec"),
        "{text}"
    );

    // The stock age tool opens a segment with the auditor's ssh-ed25519 key.
    let seg = recordings_dir(&w.gw).join(&id).join("000000.age");
    let out = run_checked_timeout(
        Command::new("age")
            .arg("-d")
            .arg("-i")
            .arg(w.gw.setup().auditor_key())
            .arg(&seg)
            .stdin(Stdio::null()),
        DEFAULT_COMMAND_TIMEOUT,
    );
    assert!(out.status.success(), "age -d: {}", stderr(&out));
    let header: Value = serde_json::from_str(stdout(&out).lines().next().unwrap()).unwrap();
    assert_eq!(header["gatehouse"]["recording_id"], id.as_str());
    assert_eq!(header["gatehouse"]["command"], ev[0]["command"]);
    // Without the key, the gateway's disk has no plaintext of it.
    let on_disk = std::fs::read(&seg).unwrap();
    assert!(!on_disk.windows(9).any(|w| w == b"hello-rec"));
    // The chain hash of each segment is in the audit log.
    let segs: Vec<Value> =
        w.gw.events("recording.segment")
            .into_iter()
            .filter(|e| e["recording_id"] == id.as_str())
            .collect();
    assert!(segs.len() >= 2, "{segs:?}");
    let log = w.gw.setup().dir().join("gatehouse.stderr");
    let verified = rec_ok(&w.gw, &["verify", &id, "--audit", log.to_str().unwrap()]);
    assert!(verified.contains(&format!("{id}: ok")), "{verified}");
    // A recording deleted whole is caught by the audit log.
    std::fs::remove_dir_all(recordings_dir(&w.gw).join(&id)).unwrap();
    let out = rec(&w.gw, &["verify", "--audit", log.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(
        stdout(&out).contains(&id) && stdout(&out).contains("(deleted)"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn scp_upload_is_recorded_with_bytes_and_exit_status() {
    if !require_tools(&[TOOLS, &["scp"]].concat()) {
        return;
    }
    let w = World::start(|b| b);
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("payload.bin");
    random_file(&src, 300_000);
    let remote = dir.path().join("remote.bin");
    // Today's scp speaks SFTP: an sftp recording with the open/close.
    let up = run_checked_timeout(
        &mut w.client.scp_command(&[
            "-J",
            "gw",
            src.to_str().unwrap(),
            &format!("{}@web-1:{}", w.login, remote.display()),
        ]),
        DEFAULT_COMMAND_TIMEOUT,
    );
    assert!(up.status.success(), "scp: {}", stderr(&up));
    let id = finished_recording(&w.gw, "sftp");
    let ev = show_json(&w.gw, &id);
    assert_eq!(ev[0]["end"]["exit_status"], 0, "{:?}", ev[0]);
    let ops = sftp_ops(&ev);
    let remote_s = remote.to_str().unwrap();
    assert!(
        ops.iter().any(|o| o["op"] == "open"
            && o["path"] == remote_s
            && o["flags"].as_array().unwrap().contains(&"write".into())),
        "{ops:?}"
    );
    assert!(
        ops.iter()
            .any(|o| o["op"] == "close" && o["path"] == remote_s && o["bytes_written"] == 300_000),
        "{ops:?}"
    );
    // Legacy scp (-O) runs `scp -t` as a command: an exec recording.
    let remote2 = dir.path().join("remote2.bin");
    let up = run_checked_timeout(
        &mut w.client.scp_command(&[
            "-O",
            "-J",
            "gw",
            src.to_str().unwrap(),
            &format!("{}@web-1:{}", w.login, remote2.display()),
        ]),
        DEFAULT_COMMAND_TIMEOUT,
    );
    assert!(up.status.success(), "scp -O: {}", stderr(&up));
    let id = finished_recording(&w.gw, "exec");
    let ev = show_json(&w.gw, &id);
    assert!(
        ev[0]["command"].as_str().unwrap().starts_with("scp -t"),
        "{:?}",
        ev[0]
    );
    assert_eq!(ev[0]["end"]["exit_status"], 0);
    assert!(ev[0]["end"]["bytes_up"].as_u64().unwrap() >= 300_000);
}

#[test]
fn sftp_session_records_each_file_operation_with_its_path() {
    if !require_tools(&[TOOLS, &["sftp"]].concat()) {
        return;
    }
    let w = World::start(|b| b);
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("a.bin");
    random_file(&src, 100_000);
    let r = |name: &str| dir.path().join(name).display().to_string();
    let batch = [
        format!("put {} {}", src.display(), r("up.bin")),
        format!("rename {} {}", r("up.bin"), r("moved.bin")),
        format!("chmod 600 {}", r("moved.bin")),
        format!("mkdir {}", r("newdir")),
        format!("rmdir {}", r("newdir")),
        format!("get {} {}", r("moved.bin"), r("back.bin")),
        format!("rm {}", r("moved.bin")),
    ]
    .join("\n")
        + "\n";
    let mut child = w
        .client
        .sftp_command(&["-J", "gw", &format!("{}@web-1", w.login)])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(batch.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "sftp: {}", stderr(&out));
    let id = finished_recording(&w.gw, "sftp");
    let ops = sftp_ops(&show_json(&w.gw, &id));
    let find = |op: &str, path: &str| {
        ops.iter()
            .find(|o| o["op"] == op && o["path"] == path && o["status"] == "ok")
            .unwrap_or_else(|| panic!("no {op} {path} in {ops:#?}"))
            .clone()
    };
    find("open", &r("up.bin"));
    assert_eq!(find("close", &r("up.bin"))["bytes_written"], 100_000);
    assert_eq!(find("rename", &r("up.bin"))["target"], r("moved.bin"));
    assert_eq!(find("setstat", &r("moved.bin"))["attrs"]["mode"], "0600");
    find("mkdir", &r("newdir"));
    find("rmdir", &r("newdir"));
    assert_eq!(find("close", &r("moved.bin"))["bytes_read"], 100_000);
    find("remove", &r("moved.bin"));
    // The text log lists them too.
    let text = rec_ok(&w.gw, &["show", &id, "-i", &key(&w.gw)]);
    assert!(
        text.contains(&format!("rename {} -> {}: ok", r("up.bin"), r("moved.bin"))),
        "{text}"
    );
}

#[test]
fn kill_9_during_a_session_leaves_a_recording_that_verifies_and_exports() {
    if !require_tools(&[TOOLS, &["asciinema", "script"]].concat()) {
        return;
    }
    let mut w = World::start(|b| b);
    let mut guard = w.client.spawn(&[
        "-J",
        "gw",
        &format!("{}@web-1", w.login),
        "echo BEFORE-KILL; sleep 60",
    ]);
    let mut screen = Screen::new(guard.child().stdout.take().unwrap());
    assert!(
        screen.wait_for("BEFORE-KILL", Duration::from_secs(20)),
        "{}",
        w.gw.stderr()
    );
    let started =
        w.gw.wait_for_event_named("recording.started", Duration::from_secs(5))
            .unwrap();
    let id = started["recording_id"].as_str().unwrap().to_string();
    // The segment with the output is sealed within 5 s of it.
    let sealed = w.gw.wait_for_event(
        |e| e["event"] == "recording.segment" && e["recording_id"] == id.as_str() && e["seq"] == 1,
        Duration::from_secs(10),
    );
    assert!(sealed.is_some(), "segment 1 not sealed: {}", w.gw.stderr());
    w.gw.kill();
    drop(guard);
    let verified = rec(&w.gw, &["verify", &id]);
    assert!(verified.status.success(), "{}", stdout(&verified));
    let text = stdout(&verified);
    assert!(text.contains("unfinished"), "{text}");
    let list = rec_ok(&w.gw, &["list"]);
    assert!(list.contains(&id), "{list}");
    let dir = tempfile::tempdir().unwrap();
    let cast = dir.path().join("killed.cast");
    rec_ok(
        &w.gw,
        &[
            "export",
            &id,
            "-i",
            &key(&w.gw),
            "-o",
            cast.to_str().unwrap(),
        ],
    );
    assert!(asciinema_cat(&cast).contains("BEFORE-KILL"));
}

#[test]
fn tampering_is_detected_by_verify_naming_the_segment() {
    if !require_tools(TOOLS) {
        return;
    }
    let w = World::start(|b| b);
    // ~20 MB of text: several 4 MiB segments.
    let out = w.client.run_jump(
        &w.login,
        "web-1",
        &["head -c 15000000 /dev/urandom | base64"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let id = finished_recording(&w.gw, "exec");
    let dir = recordings_dir(&w.gw).join(&id);
    let seg = |n: u32| dir.join(format!("{n:06}.age"));
    assert!(seg(4).exists(), "expected at least 5 segments");
    assert!(rec(&w.gw, &["verify", &id]).status.success());
    let backup = tempfile::tempdir().unwrap();
    for n in 0..5 {
        std::fs::copy(seg(n), backup.path().join(n.to_string())).unwrap();
    }
    let restore = || {
        for n in 0..5 {
            std::fs::copy(backup.path().join(n.to_string()), seg(n)).unwrap();
        }
    };
    let expect = |what: &str, needle: &str| {
        let out = rec(&w.gw, &["verify", &id]);
        let text = stdout(&out);
        assert_eq!(out.status.code(), Some(1), "{what} not detected: {text}");
        assert!(text.contains(needle), "{what}: {text}");
        // And a tampered recording is not exported.
        let exp = rec(&w.gw, &["export", &id, "-i", &key(&w.gw)]);
        assert!(!exp.status.success(), "{what}: exported anyway");
        assert!(
            stderr(&exp).contains("failed verification"),
            "{}",
            stderr(&exp)
        );
        restore();
        assert!(rec(&w.gw, &["verify", &id]).status.success());
    };
    // Flip one byte.
    let mut b = std::fs::read(seg(2)).unwrap();
    let i = b.len() / 2;
    b[i] ^= 0x40;
    std::fs::write(seg(2), b).unwrap();
    expect("flip", "segment 2 (000002.age): altered");
    // Delete one.
    std::fs::remove_file(seg(3)).unwrap();
    expect("delete", "segment 3 (000003.age): missing");
    // Swap two.
    std::fs::rename(seg(1), dir.join("x")).unwrap();
    std::fs::rename(seg(2), seg(1)).unwrap();
    std::fs::rename(dir.join("x"), seg(2)).unwrap();
    expect(
        "swap",
        "segment 1 (000001.age): holds the content of segment 2",
    );
    // Truncate one.
    let b = std::fs::read(seg(4)).unwrap();
    std::fs::write(seg(4), &b[..b.len() - 100]).unwrap();
    expect("truncate", "segment 4 (000004.age): truncated");
}

#[test]
fn unwritable_recordings_directory_refuses_new_sessions() {
    if !require_tools(&[TOOLS, &["mount", "umount"]].concat()) {
        return;
    }
    let w = World::start(|b| b);
    let ok = w.client.run_jump(&w.login, "web-1", &["echo first"]);
    assert!(ok.status.success(), "{}", stderr(&ok));
    let first = finished_recording(&w.gw, "exec");
    // The directory turns read-only under the running daemon.
    let _ro = Tmpfs::mount(&recordings_dir(&w.gw), "ro,size=1g");
    let out = w
        .client
        .run_jump(&w.login, "web-1", &["echo SHOULD-NOT-RUN"]);
    assert!(!out.status.success());
    assert!(!stdout(&out).contains("SHOULD-NOT-RUN"));
    assert!(
        stderr(&out).contains("cannot be recorded right now"),
        "{}",
        stderr(&out)
    );
    let failed =
        w.gw.wait_for_event(
            |e| e["event"] == "recording.failed" && e["recording_id"] != first.as_str(),
            Duration::from_secs(5),
        )
        .expect("recording.failed audited");
    assert_eq!(failed["user"], "alice");
    assert!(
        failed["reason"]
            .as_str()
            .unwrap()
            .contains("Read-only file system"),
        "{failed}"
    );
    // The refusal is also the session's audited reason.
    let refused =
        w.gw.wait_for_event_named("session.refused", Duration::from_secs(5))
            .expect("session.refused audited");
    assert!(
        refused["reason"]
            .as_str()
            .unwrap()
            .starts_with("recording:"),
        "{refused}"
    );
}

#[test]
fn a_disk_that_fills_mid_session_ends_it_and_keeps_what_was_written() {
    if !require_tools(&[TOOLS, &["mount", "umount", "asciinema", "script"]].concat()) {
        return;
    }
    let small = tempfile::tempdir().unwrap();
    let mount_point = small.path().join("rec");
    let _fs = Tmpfs::mount(&mount_point, "size=2m,mode=0700");
    let dir_line = format!("dir = {}", toml_str(mount_point.to_str().unwrap()));
    let w = World::start(|b| {
        b.recordings_line(&dir_line)
            .recordings_line("min_free = \"0\"")
    });
    let t0 = Instant::now();
    let out = w.client.run_jump(
        &w.login,
        "web-1",
        &["echo EARLY-MARK; sleep 6; head -c 20000000 /dev/urandom | base64; echo LATE-MARK"],
    );
    assert!(!out.status.success(), "the session was not ended");
    assert!(!stdout(&out).contains("LATE-MARK"));
    assert!(
        stderr(&out).contains("session recording failed"),
        "{}",
        stderr(&out)
    );
    assert!(t0.elapsed() < Duration::from_secs(50));
    let failed =
        w.gw.wait_for_event_named("recording.failed", Duration::from_secs(5))
            .expect("recording.failed audited");
    let id = failed["recording_id"].as_str().unwrap().to_string();
    // What was sealed before the disk filled verifies and exports.
    let verified = stdout(&rec(&w.gw, &["verify", &id]));
    assert!(verified.contains(&format!("{id}: ok")), "{verified}");
    let cast = small.path().join("early.cast");
    rec_ok(
        &w.gw,
        &[
            "export",
            &id,
            "-i",
            &key(&w.gw),
            "-o",
            cast.to_str().unwrap(),
        ],
    );
    assert!(asciinema_cat(&cast).contains("EARLY-MARK"));
}
