//! What shapes a command is recorded, and the auditor's tools cannot be
//! fooled or hung: a script fed on stdin, allowed environment variables,
//! a command crafted to redraw the auditor's screen, a `meta.json` edited
//! to blame someone else, and a recordings directory with symlinks and
//! FIFOs. Stock OpenSSH through the gateway to a real sshd; the recordings
//! are read back with `gatehouse recordings`.

mod common;

use std::io::Write;
use std::path::PathBuf;
use std::process::{Output, Stdio};
use std::time::Duration;

use common::world::{stderr, stdout, World};
use common::*;
use serde_json::Value;

const TOOLS: &[&str] = &["ssh", "sshd", "ssh-keygen", "oathtool"];
/// A hostile file must not make a tool take longer than this.
const NO_HANG: Duration = Duration::from_secs(20);

fn rec(gw: &Gatehouse, args: &[&str]) -> Output {
    let mut all = vec!["recordings"];
    all.extend_from_slice(args);
    gw.setup()
        .cli_timeout(&all, NO_HANG)
        .unwrap_or_else(|| panic!("gatehouse recordings {args:?} hung"))
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

/// The `recording.started` event of the next finished recording of `kind`
/// that is not in `skip`, once it has finished.
fn finished(gw: &Gatehouse, kind: &str, skip: &[&str]) -> Value {
    let started = gw
        .wait_for_event(
            |e| {
                e["event"] == "recording.started"
                    && e["kind"] == kind
                    && !skip.iter().any(|s| e["recording_id"] == *s)
            },
            Duration::from_secs(15),
        )
        .unwrap_or_else(|| panic!("no {kind} recording started:\n{}", gw.stderr()));
    let id = started["recording_id"].as_str().unwrap().to_string();
    gw.wait_for_event(
        |e| e["event"] == "recording.finished" && e["recording_id"] == id.as_str(),
        Duration::from_secs(15),
    )
    .unwrap_or_else(|| panic!("recording {id} did not finish:\n{}", gw.stderr()));
    started
}

fn id_of(started: &Value) -> String {
    started["recording_id"].as_str().unwrap().to_string()
}

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

/// Neither ESC nor a CR that is not part of CR LF.
fn terminal_clean(s: &str) -> bool {
    !s.contains('\x1b') && !s.replace("\r\n", "\n").contains('\r') && !s.contains('\x07')
}

#[test]
fn script_on_stdin_of_a_ptyless_session_is_recorded_and_pty_keystrokes_are_not_by_default() {
    if !require_tools(&[TOOLS, &["script"]].concat()) {
        return;
    }
    let w = World::start(|b| b);
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("script.sh");
    let text = "echo SCRIPT-RAN-$((40+2))\nrm -f /tmp/gatehouse-test-nonexistent # cleanup\n";
    std::fs::write(&script, text).unwrap();
    // ssh -J gw web-1 sh < script.sh
    let mut cmd = w.client.jump(&w.login, "web-1", &["sh"]);
    cmd.stdin(std::fs::File::open(&script).unwrap());
    let out = run_checked_timeout(&mut cmd, DEFAULT_COMMAND_TIMEOUT);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("SCRIPT-RAN-42"));
    let started = finished(&w.gw, "exec", &[]);
    assert_eq!(started["record_input"], "exec");
    assert_eq!(started["input_recorded"], true);
    let id = id_of(&started);
    let ev = show_json(&w.gw, &id);
    assert_eq!(ev[0]["command"], "sh");
    assert_eq!(
        String::from_utf8(stream_bytes(&ev, "input")).unwrap(),
        text,
        "the script's text is in the recording"
    );
    // And in the exported cast, as input events.
    let cast = dir.path().join("exec.cast");
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
    let exported = std::fs::read_to_string(&cast).unwrap();
    let input: String = exported
        .lines()
        .skip(1)
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|e| e[1] == "i")
        .map(|e| e[2].as_str().unwrap().to_string())
        .collect();
    assert_eq!(input, text);

    // `ssh -J gw web-1 < script.sh`: no command, no PTY: a shell reads it.
    let mut cmd = w.client.jump(&w.login, "web-1", &[]);
    cmd.stdin(std::fs::File::open(&script).unwrap());
    let out = run_checked_timeout(&mut cmd, DEFAULT_COMMAND_TIMEOUT);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("SCRIPT-RAN-42"));
    let started = finished(&w.gw, "shell", &[]);
    assert_eq!(started["input_recorded"], true);
    let ev = show_json(&w.gw, &id_of(&started));
    assert_eq!(ev[0]["pty"], false);
    assert_eq!(String::from_utf8(stream_bytes(&ev, "input")).unwrap(), text);
    let earlier = [id_of(&started)];

    // A PTY shell under the default: what is typed is not recorded.
    let mut guard = w
        .client
        .spawn(&["-tt", "-J", "gw", &format!("{}@web-1", w.login)]);
    let mut stdin = guard.child().stdin.take().unwrap();
    let mut out = guard.child().stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<Vec<u8>>();
    std::thread::spawn(move || {
        use std::io::Read;
        let mut buf = [0u8; 4096];
        while let Ok(n) = out.read(&mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let mut seen = String::new();
    let ready = wait_until(Duration::from_secs(20), || {
        let _ = stdin.write_all(b"echo TYPED-$((6*7))\r");
        while let Ok(c) = rx.recv_timeout(Duration::from_millis(300)) {
            seen.push_str(&String::from_utf8_lossy(&c));
        }
        seen.contains("TYPED-42")
    });
    assert!(ready, "no shell: {seen}\n{}", w.gw.stderr());
    stdin.write_all(b"exit\r").unwrap();
    assert!(guard.wait_timeout(Duration::from_secs(15)).is_some());
    let skip: Vec<&str> = earlier.iter().map(String::as_str).collect();
    let started = finished(&w.gw, "shell", &skip);
    assert_eq!(started["input_recorded"], false);
    let ev = show_json(&w.gw, &id_of(&started));
    assert!(
        stream_bytes(&ev, "input").is_empty(),
        "keystrokes recorded under the default"
    );
    assert_eq!(ev[0]["record_input"], false);
}

#[test]
fn allowed_environment_is_in_the_sealed_recording_with_values_and_named_in_the_audit_event() {
    if !require_tools(TOOLS) {
        return;
    }
    let w = World::start(|b| b.role_line("web", "allow_env = [\"LC_*\"]"));
    let payload = "echo PAYLOAD-RAN-$((7*6))";
    let mut cmd = w.client.jump_with(
        &["-o", "SendEnv=LC_PAYLOAD LANG_NOT_ALLOWED"],
        &w.login,
        "web-1",
        &["sh -c \"$LC_PAYLOAD\""],
    );
    cmd.env("LC_PAYLOAD", payload).env("LANG_NOT_ALLOWED", "x");
    let out = run_checked_timeout(&mut cmd, DEFAULT_COMMAND_TIMEOUT);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("PAYLOAD-RAN-42"),
        "the variable reached the target: {}",
        stdout(&out)
    );
    let started = finished(&w.gw, "exec", &[]);
    // The audit event names it (never its value).
    assert_eq!(started["env"], "LC_PAYLOAD", "{started}");
    assert!(!started.to_string().contains("PAYLOAD-RAN"));
    let id = id_of(&started);
    let ev = show_json(&w.gw, &id);
    assert_eq!(ev[0]["env"], serde_json::json!([["LC_PAYLOAD", payload]]));
    // The sealed segment itself holds it: the stock age tool shows it.
    if require_tools(&["age"]) {
        let seg = recordings_dir(&w.gw).join(&id).join("000000.age");
        let out = run_checked_timeout(
            std::process::Command::new("age")
                .arg("-d")
                .arg("-i")
                .arg(w.gw.setup().auditor_key())
                .arg(&seg)
                .stdin(Stdio::null()),
            DEFAULT_COMMAND_TIMEOUT,
        );
        let header: Value = serde_json::from_str(stdout(&out).lines().next().unwrap()).unwrap();
        assert_eq!(header["gatehouse"]["env"][0][0], "LC_PAYLOAD");
        assert_eq!(header["gatehouse"]["env"][0][1], payload);
    }
    // Not in the plaintext on disk.
    let meta = std::fs::read_to_string(recordings_dir(&w.gw).join(&id).join("meta.json")).unwrap();
    assert!(!meta.contains("PAYLOAD"));
}

#[test]
fn meta_json_edited_to_blame_someone_else_fails_verify_naming_it_also_against_the_audit_log() {
    if !require_tools(TOOLS) {
        return;
    }
    let w = World::start(|b| b);
    let out = w.client.run_jump(&w.login, "web-1", &["echo who-did-this"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let started = finished(&w.gw, "exec", &[]);
    let id = id_of(&started);
    assert_eq!(started["meta_sha256"].as_str().unwrap().len(), 64);
    let log = w.gw.setup().dir().join("gatehouse.stderr");
    let log = log.to_str().unwrap();
    assert!(rec_ok(&w.gw, &["verify", &id, "--audit", log]).contains(&format!("{id}: ok")));
    let path = recordings_dir(&w.gw).join(&id).join("meta.json");
    let original = std::fs::read_to_string(&path).unwrap();
    assert!(original.contains("\"user\": \"alice\""), "{original}");
    std::fs::write(
        &path,
        original.replace("\"user\": \"alice\"", "\"user\": \"bob\""),
    )
    .unwrap();
    let out = rec(&w.gw, &["verify", &id]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(
        stdout(&out).contains("problem: meta.json: altered") && stdout(&out).contains("user bob"),
        "{}",
        stdout(&out)
    );
    let out = rec(&w.gw, &["verify", &id, "--audit", log]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stdout(&out).contains(
            "meta.json: differs from the recording.started audit event: user bob where the audit log says alice"
        ),
        "{}",
        stdout(&out)
    );
    // The key holders' tools refuse it too.
    let out = rec(&w.gw, &["show", &id, "-i", &key(&w.gw)]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("meta.json"), "{}", stderr(&out));
}

#[test]
fn a_command_and_metadata_crafted_to_redraw_the_screen_are_shown_escaped_by_every_tool() {
    if !require_tools(TOOLS) {
        return;
    }
    let w = World::start(|b| b);
    let command = "true #\r\x1b[2K\x1b[1A\x1b[2Kuptime";
    let out = w.client.run_jump(&w.login, "web-1", &[command]);
    assert!(out.status.success(), "{}", stderr(&out));
    let id = id_of(&finished(&w.gw, "exec", &[]));
    let dir = tempfile::tempdir().unwrap();
    let cast = dir.path().join("c.cast");
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
    let text = std::fs::read_to_string(&cast).unwrap();
    let mut lines = text.lines();
    let header: Value = serde_json::from_str(lines.next().unwrap()).unwrap();
    assert_eq!(header["gatehouse"]["command"], command, "exact bytes kept");
    let first: Value = serde_json::from_str(lines.next().unwrap()).unwrap();
    let shown = first[2].as_str().unwrap();
    assert!(terminal_clean(shown), "{shown:?}");
    assert!(shown.starts_with("$ true #\\r\\u{1b}[2K"), "{shown:?}");
    // Every event the cast would draw is clean (the target printed nothing).
    for l in lines {
        let e: Value = serde_json::from_str(l).unwrap();
        assert!(terminal_clean(e[2].as_str().unwrap_or("")), "{l}");
    }
    for args in [
        vec!["play", id.as_str(), "-i", &key(&w.gw), "--speed", "50"],
        vec!["show", id.as_str(), "-i", &key(&w.gw)],
        vec!["export", id.as_str(), "-i", &key(&w.gw)],
    ] {
        let out = rec_ok(&w.gw, &args);
        assert!(terminal_clean(&out), "{args:?}: {out:?}");
        assert!(out.contains("uptime"), "{args:?}: {out:?}");
    }

    // A crafted meta.json: start, end and user with escapes.
    let path = recordings_dir(&w.gw).join(&id).join("meta.json");
    let mut meta: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    meta["started"] = "2026-01-01T00:00:00Z\u{1b}[2J\r".into();
    meta["end"]["ended"] = "\u{1b}]0;owned\u{7}\r".into();
    meta["end"]["reason"] = "\u{1b}[1Aclosed".into();
    meta["user"] = "eve\u{1b}[31m".into();
    std::fs::write(&path, serde_json::to_vec(&meta).unwrap()).unwrap();
    let out = rec_ok(&w.gw, &["list"]);
    assert!(terminal_clean(&out), "list: {out:?}");
    assert!(out.contains("\\u{1b}[2J"), "list shows it escaped: {out}");
    let out = rec_ok(&w.gw, &["list", "--json"]);
    assert!(terminal_clean(&out), "list --json: {out:?}");
    for args in [
        vec!["show", id.as_str(), "-i", &key(&w.gw)],
        vec!["play", id.as_str(), "-i", &key(&w.gw)],
        vec!["export", id.as_str(), "-i", &key(&w.gw)],
        vec!["verify", id.as_str()],
    ] {
        let out = rec(&w.gw, &args);
        assert!(!out.status.success(), "{args:?}: the edit is detected");
        let all = format!("{}{}", stdout(&out), stderr(&out));
        assert!(terminal_clean(&all), "{args:?}: {all:?}");
    }
}

#[test]
fn symlinks_and_fifos_in_the_recordings_directory_are_damage_by_name_and_hang_nothing() {
    if !require_tools(&[TOOLS, &["mkfifo"]].concat()) {
        return;
    }
    let w = World::start(|b| b);
    let mut ids: Vec<String> = Vec::new();
    for n in 0..4 {
        let out = w
            .client
            .run_jump(&w.login, "web-1", &[&format!("echo recording-{n}")]);
        assert!(out.status.success(), "{}", stderr(&out));
        let skip: Vec<&str> = ids.iter().map(String::as_str).collect();
        let id = id_of(&finished(&w.gw, "exec", &skip));
        ids.push(id);
    }
    let dir = |id: &str| recordings_dir(&w.gw).join(id);
    let mkfifo = |p: &std::path::Path| {
        std::fs::remove_file(p).unwrap();
        let st = std::process::Command::new("mkfifo")
            .arg(p)
            .status()
            .unwrap();
        assert!(st.success());
    };
    // 0: a segment that is a symlink to /dev/zero (hashed for ever before).
    let seg = dir(&ids[0]).join("000001.age");
    std::fs::remove_file(&seg).unwrap();
    std::os::unix::fs::symlink("/dev/zero", &seg).unwrap();
    // 1: a segment that is a FIFO; 2: meta.json a FIFO; 3: untouched.
    mkfifo(&dir(&ids[1]).join("000000.age"));
    mkfifo(&dir(&ids[2]).join("meta.json"));

    let out = rec(&w.gw, &["verify"]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains(&format!("{}: FAILED", ids[0])), "{text}");
    assert!(
        text.contains("segment 1 (000001.age): damaged: is a symbolic link"),
        "{text}"
    );
    assert!(text.contains(&format!("{}: FAILED", ids[1])), "{text}");
    assert!(
        text.contains("segment 0 (000000.age): damaged: is a FIFO"),
        "{text}"
    );
    assert!(text.contains(&format!("{}: FAILED", ids[2])), "{text}");
    assert!(text.contains("meta.json: is a FIFO"), "{text}");
    assert!(
        text.contains(&format!("{}: ok", ids[3])),
        "verify went on to the next recording: {text}"
    );
    assert!(
        text.contains("3 recording(s) failed verification (4 checked)"),
        "{text}"
    );
    // One at a time, and the tools that decrypt: none hangs.
    for id in &ids[..3] {
        let out = rec(&w.gw, &["verify", id]);
        assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
        let out = rec(&w.gw, &["show", id, "-i", &key(&w.gw)]);
        assert!(!out.status.success(), "show {id}: {}", stdout(&out));
        assert!(
            stderr(&out).contains("failed verification"),
            "{}",
            stderr(&out)
        );
    }
    let list = rec_ok(&w.gw, &["list"]);
    assert!(
        list.contains(&ids[3]) && list.contains("metadata unreadable"),
        "{list}"
    );
}

/// CPU seconds (user + system) the process has used.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which is in parentheses).
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    let ticks: f64 = f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap();
    ticks / 100.0
}

/// Measurement, not a check: what recording the stdin of PTY-less execs
/// (`record_input = "exec"`, the default) costs an rsync upload, against
/// `"none"`. Run with
/// `CI=true cargo test --test recordings_hostile -- --ignored --nocapture rsync_upload_cost`
/// (`GATEHOUSE_TEST_BIN=target/release/gatehouse` for a release build;
/// `GH_BENCH_MIB` sets the size, default 256).
#[test]
#[ignore = "measurement, not a check: run with --ignored (see the doc comment)"]
fn rsync_upload_cost_of_recording_exec_stdin() {
    if !require_tools(&[TOOLS, &["rsync"]].concat()) {
        return;
    }
    let mib: usize = std::env::var("GH_BENCH_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    let data = tempfile::tempdir().unwrap();
    let src = data.path().join("upload.bin");
    let st = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "head -c {} /dev/urandom > '{}'",
            mib << 20,
            src.display()
        ))
        .status()
        .unwrap();
    assert!(st.success());
    for mode in ["exec", "none"] {
        let w = World::start(|b| b.role_line("web", &format!("record_input = \"{mode}\"")));
        let mut done: Vec<String> = Vec::new();
        for run in 0..3 {
            let dest = data.path().join(format!("dest-{mode}-{run}.bin"));
            let cpu0 = cpu_seconds(w.gw.pid());
            let t0 = std::time::Instant::now();
            let out = run_checked_timeout(
                &mut w.client.rsync_command(&[
                    "--whole-file",
                    src.to_str().unwrap(),
                    &format!("{}@web-1:{}", w.login, dest.display()),
                ]),
                Duration::from_secs(600),
            );
            let secs = t0.elapsed().as_secs_f64();
            assert!(out.status.success(), "rsync: {}", stderr(&out));
            let skip: Vec<&str> = done.iter().map(String::as_str).collect();
            let started = finished(&w.gw, "exec", &skip);
            let cpu = cpu_seconds(w.gw.pid()) - cpu0;
            let id = id_of(&started);
            let rec_dir = recordings_dir(&w.gw).join(&id);
            let on_disk: u64 = std::fs::read_dir(&rec_dir)
                .unwrap()
                .map(|e| e.unwrap().metadata().unwrap().len())
                .sum();
            eprintln!(
                "BENCH rsync upload {mib} MiB record_input={mode} run={run}: {secs:.2} s wall, {:.1} MiB/s, gatehouse CPU {cpu:.2} s, recording {:.1} MiB, input_recorded={}",
                mib as f64 / secs,
                on_disk as f64 / (1 << 20) as f64,
                started["input_recorded"]
            );
            std::fs::remove_file(&dest).unwrap();
            std::fs::remove_dir_all(&rec_dir).unwrap();
            done.push(id);
        }
    }
}

#[test]
fn an_old_boolean_record_input_loads_with_a_warning_from_gatehouse_check() {
    let keys = tempfile::tempdir().unwrap();
    let alice = gen_ed25519(keys.path(), "alice");
    for (old, new) in [("true", "all"), ("false", "none")] {
        let setup = GatehouseBuilder::new()
            .user("alice", &["web"], &[&alice.public_line])
            .role("web", &["web-1"], &["deploy"])
            .role_line("web", &format!("record_input = {old}"))
            .ssh_target("web-1", 22, &[&alice.public_line])
            .build();
        let out = setup.check();
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        let err = stderr(&out);
        assert!(
            err.contains("warning: ")
                && err.contains("roles[0].record_input")
                && err.contains(&format!("record_input = \"{new}\"")),
            "{err}"
        );
    }
    // The new spelling: no warning; a wrong one: refused with its place.
    let setup = GatehouseBuilder::new()
        .user("alice", &["web"], &[&alice.public_line])
        .role("web", &["web-1"], &["deploy"])
        .role_line("web", "record_input = \"keystrokes\"")
        .ssh_target("web-1", 22, &[&alice.public_line])
        .build();
    let out = setup.check();
    assert_eq!(out.status.code(), Some(64));
    assert!(
        stderr(&out).contains("roles[0].record_input: must be \"none\", \"exec\" or \"all\""),
        "{}",
        stderr(&out)
    );
}
