//! Attacks on the control socket and what it acts on, with the real binary,
//! a real sshd, OpenSSH and PostgreSQL: a lock set while a login is in
//! progress, watches that hold every slot, a watched session that tries to
//! make the watcher's terminal answer, a lock reason that reorders text.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::process::Stdio;
use std::time::Duration;

use common::pgwire::{query, PgConn};
use common::world::World;
use common::*;
use serde_json::Value;

const TOOLS: &[&str] = &["ssh", "sshd", "ssh-keygen", "oathtool"];

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).to_string()
}

/// A jump session running `script` on web-1 with a terminal.
fn jump(w: &World, script: &str) -> ChildGuard {
    let mut cmd = w.client.jump_with(&["-tt"], &w.login, "web-1", &[script]);
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    ChildGuard::spawn(&mut cmd)
}

/// The id of the one live session, once it is listed with its recording.
fn one_session(w: &World) -> String {
    let mut got = Vec::new();
    let ok = wait_until(Duration::from_secs(20), || {
        let out = w.gw.setup().cli(&["sessions", "--json"]);
        got = serde_json::from_slice::<Vec<Value>>(&out.stdout).unwrap_or_default();
        got.len() == 1 && got[0]["recording"].is_string()
    });
    assert!(ok, "expected one live session, got {got:?}");
    got[0]["id"].as_str().unwrap().to_string()
}

/// A lock checked at admission and a session listed later leave a gap: a
/// PostgreSQL client behind `ssh -L` connects (admission passes), the
/// administrator locks the user, then the client logs in. The session must
/// not run.
#[test]
fn a_lock_set_while_a_database_login_is_in_progress_ends_that_session() {
    if !common::pgworld::tools() {
        return;
    }
    let db = common::pgworld::start("pg-secret-2", |b, _| b);
    // Connected: the gateway has opened the channel and admitted alice.
    let mut conn = PgConn::connect(&db.addr()).unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let out =
        db.w.gw
            .setup()
            .cli(&["lock", "user", "alice", "--reason", "incident 7"]);
    assert!(out.status.success(), "lock: {}", text(&out.stderr));
    // Now the startup packet, then a query.
    let hello = conn.login(&[("user", "app_ro"), ("database", "app")], None);
    let mut seen = hello;
    if seen.last().map(|m| m.tag) == Some(b'Z') {
        let _ = conn.send(&query("select 'ran-' || 'anyway'"));
        for _ in 0..20 {
            match conn.recv() {
                Ok(m) => {
                    let z = m.tag == b'Z';
                    seen.push(m);
                    if z {
                        break;
                    }
                }
                Err(_) => break,
            }
        }
    }
    let ran = seen
        .iter()
        .any(|m| m.tag == b'D' && text(&m.body).contains("ran-anyway"));
    assert!(
        !ran,
        "a query ran in a session of a user locked during its login"
    );
    let errors: Vec<String> = seen
        .iter()
        .filter(|m| m.tag == b'E')
        .filter_map(|m| m.field(b'M'))
        .collect();
    assert!(
        errors
            .iter()
            .any(|e| e.contains("alice is locked by an administrator: incident 7")),
        "the client was not told why: {errors:?}"
    );
}

/// Watches last as long as the session: 16 of them must not leave the
/// administrator unable to lock (the control socket serves 16 commands at
/// once).
#[test]
fn open_watches_never_leave_the_administrator_unable_to_lock() {
    if !require_tools(TOOLS) {
        return;
    }
    let w = World::start(|b| b);
    let mut s = jump(
        &w,
        "for i in $(seq 1 600); do echo tick-$i; sleep 0.2; done",
    );
    let id = one_session(&w);
    let mut watchers = Vec::new();
    for _ in 0..16 {
        let mut sock = UnixStream::connect(w.gw.setup().control_socket()).unwrap();
        sock.write_all(format!("{{\"cmd\":\"watch\",\"id\":\"{id}\"}}\n").as_bytes())
            .unwrap();
        let mut r = BufReader::new(sock.try_clone().unwrap());
        let mut reply = String::new();
        r.read_line(&mut reply).unwrap();
        assert!(reply.contains("\"ok\":true"), "watch: {reply}");
        // Kept open, never read again.
        watchers.push(sock);
    }
    let out =
        w.gw.setup()
            .cli(&["lock", "user", "alice", "--reason", "now"]);
    assert!(
        out.status.success(),
        "lock refused while watches were open: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert!(
        s.wait_timeout(Duration::from_secs(5)).is_some(),
        "the locked user's session went on"
    );
    drop(watchers);
}

/// The watched person chooses every byte the watcher's terminal gets:
/// nothing that makes a terminal answer (identity, status, keyboard flags),
/// leave UTF-8, or send input (mouse, focus, paste) may pass, whether as a
/// 7-bit escape, a raw 8-bit C1 byte or an overlong UTF-8 form.
#[test]
fn a_watched_session_cannot_make_the_watchers_terminal_answer() {
    if !require_tools(TOOLS) {
        return;
    }
    let w = World::start(|b| b);
    // \233 is a raw C1 CSI; \300\233 an overlong ESC; \340\202\233 an
    // overlong U+009B.
    let script = r"for i in $(seq 1 300); do printf 'mark-%s \033Z\2336n\300\233[5n\340\202\233c\033[?u\033[?1000h\033[?2004h\033%%@\005 end\n' $i; sleep 0.2; done";
    let _s = jump(&w, script);
    let id = one_session(&w);
    let mut cmd = w.gw.setup().cli_command(&["sessions", "watch", &id]);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut watcher = ChildGuard::spawn(&mut cmd);
    let mut stdout = watcher.child().stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut all = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 {
                break;
            }
            all.extend_from_slice(&buf[..n]);
            let _ = tx.send(all.clone());
        }
    });
    let mut shown = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while std::time::Instant::now() < deadline {
        if let Ok(v) = rx.recv_timeout(Duration::from_millis(200)) {
            shown = v;
        }
        if text(&shown).matches(" end").count() >= 3 {
            break;
        }
    }
    drop(watcher);
    let t = text(&shown);
    assert!(
        t.matches(" end").count() >= 3,
        "the watcher saw no output: {t:?}"
    );
    for (bad, what) in [
        (&b"\x1bZ"[..], "ESC Z (identify)"),
        (b"\x1b[?u", "CSI ? u (keyboard flags query)"),
        (b"\x1b[?1000h", "mouse reporting"),
        (b"\x1b[?2004h", "bracketed paste"),
        (b"\x1b%@", "leave UTF-8"),
        (b"\x05", "ENQ (answerback)"),
    ] {
        assert!(
            !shown.windows(bad.len()).any(|x| x == bad),
            "{what} reached the watcher's terminal: {t:?}"
        );
    }
    // No raw C1 byte and no overlong form: what is shown is UTF-8 without
    // C1 controls.
    let valid = std::str::from_utf8(&shown).expect("the watcher got bytes that are not UTF-8");
    assert!(
        !valid.chars().any(|c| ('\u{80}'..='\u{9f}').contains(&c)),
        "a C1 control reached the watcher: {valid:?}"
    );
}

/// A lock reason reaches the locked person's terminal: characters that
/// reorder or hide text (bidi overrides, zero-width) must not.
#[test]
fn a_lock_reason_cannot_reorder_what_the_locked_user_reads() {
    if !require_tools(TOOLS) {
        return;
    }
    let w = World::start(|b| b);
    let reason = "see \u{202e}moc.live\u{202c} \u{200b}now\x1b]0;t\x07";
    let out =
        w.gw.setup()
            .cli(&["lock", "user", "alice", "--reason", reason]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    w.client.set_code(&w.next_code());
    w.client.set_option("LogLevel", "INFO");
    let o = w.client.run_jump(&w.login, "web-1", &["echo", "nope"]);
    let err = text(&o.stderr);
    assert!(err.contains("locked by an administrator: see"), "{err}");
    for c in ['\u{202e}', '\u{202c}', '\u{200b}', '\u{1b}', '\u{7}'] {
        assert!(!err.contains(c), "{c:?} reached the user: {err:?}");
    }
    let locks = w.gw.setup().cli(&["locks", "--json"]);
    let v: Vec<Value> = serde_json::from_slice(&locks.stdout).unwrap();
    let kept = v[0]["reason"].as_str().unwrap();
    assert!(!kept.contains('\u{202e}'), "{kept:?}");
}

/// A control socket in a directory anyone may write to (no sticky bit) can
/// be renamed away and replaced by anyone, who then answers the
/// administrators' `gatehouse lock` ("locked", while nothing is). The
/// daemon refuses to start there, saying why.
#[test]
fn the_daemon_refuses_a_socket_directory_anyone_could_replace_the_socket_in() {
    use std::os::unix::fs::PermissionsExt;
    if !require_tools(TOOLS) {
        return;
    }
    let w = World::start(|b| b);
    let other = tempfile::Builder::new()
        .prefix("gh-open-")
        .tempdir()
        .unwrap();
    let open = other.path().join("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    let state = other.path().join("state");
    std::fs::create_dir(&state).unwrap();
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o700)).unwrap();
    let setup = w.gw.setup();
    let cfg_text = setup
        .config_text()
        .replace(
            &format!("127.0.0.1:{}", setup.port()),
            &format!("127.0.0.1:{}", free_port()),
        )
        .replace(
            &setup.state_dir().display().to_string(),
            &state.display().to_string(),
        )
        .replace(
            &setup.control_socket().display().to_string(),
            &open.join("control.sock").display().to_string(),
        );
    assert!(cfg_text.contains(&open.display().to_string()));
    let cfg = other.path().join("config.toml");
    std::fs::write(&cfg, cfg_text).unwrap();
    let o = run_with_timeout(
        gatehouse_command().arg("run").arg("--config").arg(&cfg),
        Duration::from_secs(15),
    );
    let o = o.expect("the daemon started with a control socket anyone could replace");
    assert!(!o.status.success());
    assert!(
        text(&o.stderr).contains("writable by everyone"),
        "{}",
        text(&o.stderr)
    );
    assert!(!open.join("control.sock").exists());
}

/// Alice's key is proven and she is typing her code when the
/// administrator locks her: the code must not log her in.
#[test]
fn a_lock_set_while_the_user_types_her_code_refuses_that_login() {
    if !require_tools(TOOLS) {
        return;
    }
    let w = World::start(|b| b);
    w.client.set_code(&w.next_code());
    w.client.set_option("LogLevel", "INFO");
    // The code is typed slowly: askpass logs the prompt, then waits 4 s.
    let askpass = w.client.dir().join("askpass.sh");
    let script = std::fs::read_to_string(&askpass).unwrap();
    let slow = script.replacen("code=$(", "sleep 4\ncode=$(", 1);
    assert_ne!(slow, script);
    std::fs::write(&askpass, slow).unwrap();
    let mut s = jump(&w, "echo in-anyway");
    assert!(
        wait_until(Duration::from_secs(20), || w
            .client
            .askpass_prompts()
            .iter()
            .any(|p| p.contains("Verification code"))),
        "no code was asked"
    );
    let out =
        w.gw.setup()
            .cli(&["lock", "user", "alice", "--reason", "mid-login"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        s.wait_timeout(Duration::from_secs(30)).is_some(),
        "ssh still running"
    );
    let logins: Vec<Value> =
        w.gw.audit_events()
            .into_iter()
            .filter(|e| e["event"] == "login")
            .collect();
    assert!(
        logins.is_empty(),
        "a user locked at the code prompt was logged in: {logins:?}"
    );
}
