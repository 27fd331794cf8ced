//! Operating the running daemon through its control socket, with the real
//! binary, a real sshd and OpenSSH: list live sessions, end one, watch one
//! read-only, lock a user/target out now (persisted), and the socket's own
//! guards (mode, group, who ran what, a daemon that is not running).

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::world::World;
use common::*;
use serde_json::Value;

const TOOLS: &[&str] = &["ssh", "sshd", "ssh-keygen", "oathtool"];

/// A jump session that runs until killed, printing a line every 200 ms.
fn ticking(w: &World) -> ChildGuard {
    let mut cmd = w.client.jump_with(
        &["-tt"],
        &w.login,
        "web-1",
        &["for i in $(seq 1 600); do echo tick-$i; sleep 0.2; done"],
    );
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    ChildGuard::spawn(&mut cmd)
}

/// Waits until `gatehouse sessions --json` lists `n` sessions; returns them.
fn sessions(w: &World, n: usize) -> Vec<Value> {
    let mut got = Vec::new();
    let ok = wait_until(Duration::from_secs(20), || {
        let out = w.gw.setup().cli(&["sessions", "--json"]);
        assert!(
            out.status.success(),
            "sessions: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        got = serde_json::from_slice::<Vec<Value>>(&out.stdout).expect("sessions --json");
        // Listed once its recording runs.
        got.len() == n && got.iter().all(|s| s["recording"].is_string())
    });
    assert!(ok, "expected {n} live sessions, got {got:?}");
    got
}

fn cli(w: &World, args: &[&str]) -> std::process::Output {
    w.gw.setup().cli(args)
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).to_string()
}

#[test]
fn sessions_lists_a_live_ssh_session_with_who_where_and_its_recording() {
    if !require_tools(TOOLS) {
        return;
    }
    let w = World::start(|b| b);
    let _s = ticking(&w);
    let list = sessions(&w, 1);
    let s = &list[0];
    assert_eq!(s["user"], "alice");
    assert_eq!(s["target"], "web-1");
    assert_eq!(s["login"], w.login.as_str());
    assert_eq!(s["kind"], "ssh");
    assert_eq!(s["source"], "127.0.0.1");
    assert!(s["id"].as_str().is_some_and(|id| id.len() == 32));
    assert!(s["recording"].as_str().is_some(), "{s}");
    // Output flows: the byte counter towards the user grows.
    let down0 = s["bytes_down"].as_u64().unwrap();
    assert!(wait_until(Duration::from_secs(10), || {
        sessions(&w, 1)[0]["bytes_down"].as_u64().unwrap() > down0
    }));
    // The table for people: a header and one row, tab-separated.
    let out = cli(&w, &["sessions"]);
    let table = text(&out.stdout);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 2, "{table}");
    assert!(
        lines[0].starts_with("ID\t") || lines[0].starts_with("ID "),
        "{table}"
    );
    assert!(
        lines[1].contains("alice") && lines[1].contains("web-1"),
        "{table}"
    );
    assert!(lines[1].contains('\t'), "{table}");
    // Listing is audited with the local user who asked.
    let ev =
        w.gw.wait_for_event(
            |e| e["event"] == "control.command" && e["command"] == "sessions",
            Duration::from_secs(5),
        )
        .expect("control.command for sessions");
    assert!(ev["by"].as_str().unwrap().contains("(uid "), "{ev}");
}

#[test]
fn kill_ends_the_session_at_once_and_the_user_sees_why() {
    if !require_tools(TOOLS) {
        return;
    }
    let w = World::start(|b| b);
    let mut s = ticking(&w);
    let id = sessions(&w, 1)[0]["id"].as_str().unwrap().to_string();
    let t = Instant::now();
    let out = cli(&w, &["sessions", "kill", &id, "--reason", "incident 7"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        s.wait_timeout(Duration::from_secs(3)).is_some(),
        "ssh still running after kill"
    );
    assert!(t.elapsed() < Duration::from_secs(3));
    let mut err = String::new();
    s.child()
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(
        err.contains("gatehouse: session ended by an administrator: incident 7"),
        "stderr: {err}"
    );
    let end = w.session_end();
    assert!(
        end["reason"].as_str().unwrap().contains("incident 7"),
        "{end}"
    );
    sessions(&w, 0);
    let ev =
        w.gw.wait_for_event(
            |e| e["event"] == "control.command" && e["command"] == "sessions kill",
            Duration::from_secs(5),
        )
        .expect("audited");
    assert_eq!(ev["subject"], id.as_str());
    assert_eq!(ev["result"], "ok");
    // A second kill of the same id: no such session, exit 1, audited.
    let again = cli(&w, &["sessions", "kill", &id]);
    assert_eq!(again.status.code(), Some(1));
    assert!(
        text(&again.stderr).contains("no live session"),
        "{}",
        text(&again.stderr)
    );
}

#[test]
fn lock_user_ends_live_sessions_refuses_logins_survives_a_restart_until_unlocked() {
    if !require_tools(TOOLS) {
        return;
    }
    let mut w = World::start(|b| b);
    let mut s = ticking(&w);
    sessions(&w, 1);
    let t = Instant::now();
    let out = cli(
        &w,
        &["lock", "user", "alice", "--reason", "left the company"],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("1 live session(s) ended"),
        "{}",
        text(&out.stdout)
    );
    assert!(
        s.wait_timeout(Duration::from_secs(3)).is_some(),
        "the live session outlived the lock"
    );
    assert!(t.elapsed() < Duration::from_secs(3));
    let mut err = String::new();
    s.child()
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(err.contains("alice is locked by an administrator"), "{err}");
    // A new login is refused with the reason; no code is asked for.
    w.client.set_code(&w.next_code());
    w.client.set_option("LogLevel", "INFO");
    let prompts_before = w.client.askpass_prompts().len();
    let o = w
        .client
        .run_jump(&w.login, "web-1", &["echo", "should-not-run"]);
    assert!(!o.status.success());
    assert!(!text(&o.stdout).contains("should-not-run"));
    assert!(
        text(&o.stderr).contains("locked by an administrator: left the company"),
        "stderr: {}",
        text(&o.stderr)
    );
    assert!(
        w.client
            .askpass_prompts()
            .iter()
            .skip(prompts_before)
            .all(|p| !p.contains("Verification code")),
        "a code was asked of a locked user: {:?}",
        w.client.askpass_prompts()
    );
    // Listed, and persisted across a restart.
    let locks = cli(&w, &["locks", "--json"]);
    let v: Vec<Value> = serde_json::from_slice(&locks.stdout).unwrap();
    assert_eq!(v.len(), 1);
    assert_eq!(v[0]["kind"], "user");
    assert_eq!(v[0]["name"], "alice");
    assert!(v[0]["by"].as_str().unwrap().contains("uid"));
    // Killed (SIGKILL) and started again: the stale socket is replaced.
    w.gw.restart();
    let o = w
        .client
        .run_jump(&w.login, "web-1", &["echo", "still-locked"]);
    assert!(
        !text(&o.stdout).contains("still-locked"),
        "the lock did not survive a restart"
    );
    assert!(w
        .gw
        .audit_events_all()
        .iter()
        .any(|e| e["event"] == "lock.set"));
    // Unlocked: the next login works.
    let out = cli(&w, &["unlock", "user", "alice"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    w.client.set_code(&totp_step(&w.secret, 1));
    let o = w.client.run_jump(&w.login, "web-1", &["echo", "back"]);
    assert!(text(&o.stdout).contains("back"), "{}", text(&o.stderr));
    let again = cli(&w, &["unlock", "user", "alice"]);
    assert_eq!(again.status.code(), Some(1));
}

#[test]
fn a_lock_for_a_while_expires_by_itself() {
    if !require_tools(TOOLS) {
        return;
    }
    let w = World::start(|b| b);
    w.client.set_option("LogLevel", "INFO");
    let out = cli(
        &w,
        &[
            "lock",
            "user",
            "alice",
            "--reason",
            "cool down",
            "--for",
            "2s",
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let o = w.client.run_jump(&w.login, "web-1", &["echo", "early"]);
    assert!(!text(&o.stdout).contains("early"));
    assert!(text(&o.stderr).contains("until"), "{}", text(&o.stderr));
    std::thread::sleep(Duration::from_millis(2500));
    let o = w.client.run_jump(&w.login, "web-1", &["echo", "later"]);
    assert!(text(&o.stdout).contains("later"), "{}", text(&o.stderr));
    let locks = cli(&w, &["locks", "--json"]);
    assert_eq!(
        serde_json::from_slice::<Vec<Value>>(&locks.stdout)
            .unwrap()
            .len(),
        0
    );
}

#[test]
fn a_target_lock_refuses_that_target_only_and_ends_its_sessions() {
    if !require_tools(TOOLS) {
        return;
    }
    let w = World::start(|b| b);
    let mut s = ticking(&w);
    sessions(&w, 1);
    let out = cli(&w, &["lock", "target", "web-1", "--reason", "maintenance"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(s.wait_timeout(Duration::from_secs(3)).is_some());
    let o = w.client.run_jump(&w.login, "web-1", &["echo", "x"]);
    assert!(!text(&o.stdout).contains('x'));
    assert!(
        text(&o.stderr).contains("web-1 is locked by an administrator: maintenance"),
        "{}",
        text(&o.stderr)
    );
    // The user is not locked: the gateway's own menu still answers.
    let o = w.client.run(&["gw", "targets"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let refused =
        w.gw.wait_for_event(|e| e["event"] == "session.refused", Duration::from_secs(5))
            .expect("session.refused");
    assert!(
        refused["reason"].as_str().unwrap().contains("target web-1"),
        "{refused}"
    );
}

#[test]
fn watch_shows_live_output_read_only_is_audited_and_announced() {
    if !require_tools(TOOLS) {
        return;
    }
    let w = World::start(|b| b.role_line("web", "announce_watch = true"));
    let mut s = ticking(&w);
    let id = sessions(&w, 1)[0]["id"].as_str().unwrap().to_string();
    let mut watcher = Command::new(gatehouse_bin());
    watcher
        .args(["--config"])
        .arg(w.gw.config_path())
        .args(["sessions", "watch", &id])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut watcher = ChildGuard::spawn(&mut watcher);
    let mut out = BufReader::new(watcher.child().stdout.take().unwrap());
    let mut seen = String::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline && seen.matches("tick-").count() < 3 {
        let mut line = String::new();
        if out.read_line(&mut line).unwrap() == 0 {
            break;
        }
        seen.push_str(&line);
    }
    assert!(seen.matches("tick-").count() >= 3, "watcher saw: {seen:?}");
    // Whatever the watcher types goes nowhere.
    let mut stdin = watcher.child().stdin.take().unwrap();
    let _ = stdin.write_all(b"echo watcher-typed\n");
    drop(stdin);
    let start =
        w.gw.wait_for_event(
            |e| e["event"] == "session.watch" && e["action"] == "start",
            Duration::from_secs(5),
        )
        .expect("session.watch start");
    assert_eq!(start["session_id"], id.as_str());
    assert_eq!(start["announced"], true);
    // The watched user was told.
    watcher.kill();
    let end =
        w.gw.wait_for_event(
            |e| e["event"] == "session.watch" && e["action"] == "end",
            Duration::from_secs(5),
        )
        .expect("session.watch end");
    assert_eq!(end["session_id"], id.as_str());
    // The session goes on after the watcher left.
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        s.child().try_wait().unwrap().is_none(),
        "the session ended with its watcher"
    );
    s.kill();
    let o = s.wait_output(Duration::from_secs(5)).unwrap();
    let user_saw = format!("{}{}", text(&o.stdout), text(&o.stderr));
    assert!(
        user_saw.contains("is now watching this session"),
        "user saw: {user_saw}"
    );
    assert!(!user_saw.contains("watcher-typed"));
}

#[test]
fn the_watch_stream_ignores_what_the_watcher_sends() {
    if !require_tools(TOOLS) {
        return;
    }
    let w = World::start(|b| b);
    // A pty running cat: anything that reached it would be echoed back.
    let mut cmd = w.client.jump_with(&["-tt"], &w.login, "web-1", &["cat"]);
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut s = ChildGuard::spawn(&mut cmd);
    let id = sessions(&w, 1)[0]["id"].as_str().unwrap().to_string();
    let mut sock = UnixStream::connect(w.gw.setup().control_socket()).unwrap();
    sock.write_all(format!("{{\"cmd\":\"watch\",\"id\":\"{id}\"}}\n").as_bytes())
        .unwrap();
    let mut r = BufReader::new(sock.try_clone().unwrap());
    let mut reply = String::new();
    r.read_line(&mut reply).unwrap();
    assert!(reply.contains("\"ok\":true"), "{reply}");
    // Hostile: requests, raw bytes and a would-be command after the reply.
    sock.write_all(b"{\"cmd\":\"kill\",\"id\":\"x\"}\ninjected-by-watcher\n")
        .unwrap();
    let mut stdin = s.child().stdin.take().unwrap();
    stdin.write_all(b"typed-by-user\n").unwrap();
    stdin.flush().unwrap();
    let mut frames = String::new();
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline && !frames.contains("output") {
        let mut line = String::new();
        if r.read_line(&mut line).unwrap_or(0) == 0 {
            break;
        }
        frames.push_str(&line);
    }
    assert!(frames.contains("\"t\":\"output\""), "{frames}");
    // What the session's terminal shows, read as it comes: the user's
    // line echoed back, never the watcher's.
    let mut out = s.child().stdout.take().unwrap();
    let shown = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let sink = shown.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = out.read(&mut buf) {
            if n == 0 {
                break;
            }
            sink.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    assert!(
        wait_until(Duration::from_secs(10), || shown
            .lock()
            .unwrap()
            .contains("typed-by-user")),
        "the user's own input was not echoed: {}",
        shown.lock().unwrap()
    );
    // Give anything injected the same time to show up.
    std::thread::sleep(Duration::from_millis(500));
    drop(stdin);
    s.kill();
    assert!(
        !shown.lock().unwrap().contains("injected-by-watcher"),
        "the watcher's bytes reached the session"
    );
}

#[test]
fn the_socket_is_0600_and_a_group_makes_it_0660_for_that_group() {
    if !require_tools(TOOLS) {
        return;
    }
    let w = World::start(|b| b);
    let meta = std::fs::metadata(w.gw.setup().control_socket()).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    drop(w);
    // A directory others may enter, so that `nobody` can reach the socket.
    let open = tempfile::Builder::new()
        .prefix("gh-ctl-")
        .tempdir()
        .unwrap();
    std::fs::set_permissions(open.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let socket = open.path().join("control.sock");
    let w = World::start(|b| {
        b.control_line(&format!(
            "socket = {}",
            toml_str(&socket.display().to_string())
        ))
        .control_line("group = \"nogroup\"")
    });
    let meta = std::fs::metadata(&socket).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);
    let nogroup = std::fs::read_to_string("/etc/group")
        .unwrap()
        .lines()
        .find(|l| l.starts_with("nogroup:"))
        .and_then(|l| l.split(':').nth(2))
        .and_then(|g| g.parse::<u32>().ok())
        .expect("nogroup in /etc/group");
    assert_eq!(meta.gid(), nogroup);
    // `nobody` (in nogroup) may use it, and is named in the audit log.
    let cfg = open.path().join("ctl.toml");
    std::fs::write(
        &cfg,
        format!(
            "[control]\nsocket = {}\n",
            toml_str(&socket.display().to_string())
        ),
    )
    .unwrap();
    std::fs::set_permissions(&cfg, std::fs::Permissions::from_mode(0o644)).unwrap();
    if require_tools(&["setpriv"]) {
        let o = Command::new("setpriv")
            .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups"])
            .arg(gatehouse_bin())
            .arg("--config")
            .arg(&cfg)
            .args(["sessions", "--json"])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", text(&o.stderr));
        let ev =
            w.gw.wait_for_event(|e| e["event"] == "control.command", Duration::from_secs(5))
                .expect("audited");
        assert!(
            ev["by"].as_str().unwrap().starts_with("nobody (uid 65534)"),
            "{ev}"
        );
        // Without the group: refused by the kernel, said plainly, exit 69.
        let o = Command::new("setpriv")
            .args(["--reuid=nobody", "--regid=1", "--clear-groups"])
            .arg(gatehouse_bin())
            .arg("--config")
            .arg(&cfg)
            .args(["sessions"])
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(69), "{}", text(&o.stderr));
        assert!(
            text(&o.stderr).contains("permission denied"),
            "{}",
            text(&o.stderr)
        );
    }
}

#[test]
fn commands_say_plainly_when_the_daemon_is_not_running() {
    if !require_tools(TOOLS) {
        return;
    }
    let setup = GatehouseBuilder::new().build();
    for args in [
        vec!["sessions"],
        vec!["locks"],
        vec!["reload"],
        vec!["lock", "user", "alice", "--reason", "x"],
    ] {
        let o = setup.cli(&args);
        assert_eq!(o.status.code(), Some(69), "{args:?}: {}", text(&o.stderr));
        assert!(
            text(&o.stderr).contains("gatehouse is not running"),
            "{}",
            text(&o.stderr)
        );
    }
}

#[test]
fn reload_of_a_file_that_is_not_toml_reports_its_errors_when_no_daemon_answers() {
    if !require_tools(TOOLS) {
        return;
    }
    let setup = GatehouseBuilder::new().build();
    // Its [control] socket is unreadable, so only the default path was
    // asked: the file's own error (line:column, exit 64) is the news.
    setup.write_config("[gateway\nstate_dir = \"/x\"\n");
    let o = setup.cli(&["reload"]);
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(64), "{err}");
    assert!(err.contains("config.toml:1:"), "{err}");
    assert!(
        err.contains("no daemon answers at the default one"),
        "{err}"
    );
}

#[test]
fn a_second_daemon_on_the_same_socket_does_not_start() {
    if !require_tools(TOOLS) {
        return;
    }
    let w = World::start(|b| b);
    // Same config (same socket), another SSH port: refused at start.
    let text_cfg = w.gw.setup().config_text();
    let other = tempfile::Builder::new()
        .prefix("gh-second-")
        .tempdir()
        .unwrap();
    let port = free_port();
    let cfg = other.path().join("config.toml");
    let state = other.path().join("state");
    std::fs::create_dir(&state).unwrap();
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o700)).unwrap();
    let changed = text_cfg
        .replace(
            &format!("127.0.0.1:{}", w.gw.setup().port()),
            &format!("127.0.0.1:{port}"),
        )
        .replace(
            &w.gw.setup().state_dir().display().to_string(),
            &state.display().to_string(),
        );
    std::fs::write(&cfg, changed).unwrap();
    let o = run_with_timeout(
        gatehouse_command().arg("run").arg("--config").arg(&cfg),
        Duration::from_secs(20),
    )
    .expect("the second daemon exits");
    assert!(!o.status.success());
    assert!(
        text(&o.stderr).contains("another gatehouse is running"),
        "{}",
        text(&o.stderr)
    );
    // The first one still answers.
    assert!(cli(&w, &["sessions"]).status.success());
}

#[test]
fn malformed_requests_close_that_connection_and_are_audited() {
    if !require_tools(TOOLS) {
        return;
    }
    let w = World::start(|b| b);
    for bad in [
        &b"not json\n"[..],
        b"{\"cmd\":\"nope\"}\n",
        b"{\"cmd\":\"lock\",\"kind\":\"user\",\"name\":\"../../etc\",\"reason\":\"x\"}\n",
        b"{\"cmd\":\"lock\",\"kind\":\"device\",\"name\":\"not-a-key\",\"reason\":\"x\"}\n",
    ] {
        let mut sock = UnixStream::connect(w.gw.setup().control_socket()).unwrap();
        sock.write_all(bad).unwrap();
        let mut reply = String::new();
        BufReader::new(sock).read_line(&mut reply).unwrap();
        assert!(reply.contains("\"ok\":false"), "{reply}");
    }
    // A request that never ends is cut at 64 KiB.
    let mut sock = UnixStream::connect(w.gw.setup().control_socket()).unwrap();
    let _ = sock.write_all(&vec![b'x'; 200_000]);
    let mut reply = String::new();
    let _ = BufReader::new(sock).read_line(&mut reply);
    assert!(reply.contains("too long") || reply.is_empty(), "{reply}");
    // Nothing was locked, and the daemon still answers.
    let locks = cli(&w, &["locks", "--json"]);
    assert_eq!(
        serde_json::from_slice::<Vec<Value>>(&locks.stdout)
            .unwrap()
            .len(),
        0
    );
    assert!(w
        .gw
        .events("control.command")
        .iter()
        .any(|e| e["command"] == "invalid"));
}

/// Waits until a live session of `kind` is listed; returns it.
fn session_of_kind(w: &World, kind: &str) -> Value {
    let mut found = None;
    let ok = wait_until(Duration::from_secs(30), || {
        let out = w.gw.setup().cli(&["sessions", "--json"]);
        let list: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap_or_default();
        found = list.into_iter().find(|s| s["kind"] == kind);
        found.is_some()
    });
    assert!(ok, "no live {kind} session listed");
    found.unwrap()
}

#[test]
fn a_postgres_session_is_listed_and_a_kill_ends_it_with_a_fatal_naming_the_reason() {
    if !common::pgworld::tools() {
        return;
    }
    let db = common::pgworld::start("pg-secret-1", |b, _| b);
    let mut cmd = db.psql_cmd("app_ro", "", "select pg_sleep(60)");
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut psql = ChildGuard::spawn(&mut cmd);
    let s = session_of_kind(&db.w, "postgres");
    assert_eq!(s["user"], "alice");
    assert_eq!(s["target"], "db-1");
    assert_eq!(s["login"], "app_ro");
    let id = s["id"].as_str().unwrap().to_string();
    let out = cli(
        &db.w,
        &["sessions", "kill", &id, "--reason", "runaway query"],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        psql.wait_timeout(Duration::from_secs(3)).is_some(),
        "psql still running"
    );
    let o = psql.wait_output(Duration::from_secs(5)).unwrap();
    assert!(
        text(&o.stderr).contains("session ended by an administrator: runaway query"),
        "psql: {}",
        text(&o.stderr)
    );
}

#[test]
fn a_target_lock_ends_a_live_mysql_session_and_refuses_new_ones_before_the_greeting() {
    if !common::myworld::tools() {
        return;
    }
    let my = common::myworld::start("my-secret-1", |b, _| b);
    let mut cmd = my.mariadb_cmd("app");
    cmd.args(["-e", "SELECT SLEEP(60)"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut client = ChildGuard::spawn(&mut cmd);
    let s = session_of_kind(&my.w, "mysql");
    assert_eq!(s["target"], "db-my");
    let out = cli(
        &my.w,
        &["lock", "target", "db-my", "--reason", "audit hold"],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        client.wait_timeout(Duration::from_secs(3)).is_some(),
        "mariadb still running"
    );
    let o = client.wait_output(Duration::from_secs(5)).unwrap();
    assert!(
        text(&o.stderr).contains("db-my is locked by an administrator"),
        "mariadb: {}",
        text(&o.stderr)
    );
    // A new connection is refused with the reason, before any login.
    let o = my.mariadb("app", "SELECT 1");
    assert!(!o.status.success());
    assert!(
        text(&o.stderr).contains("locked by an administrator: audit hold"),
        "mariadb: {}",
        text(&o.stderr)
    );
    // Unlocked, it works again through the same forward.
    assert!(cli(&my.w, &["unlock", "target", "db-my"]).status.success());
    assert_eq!(my.sql("SELECT 41+1").trim(), "42");
}

#[test]
fn a_lock_drops_the_users_mfa_lease_so_after_an_unlock_the_code_is_asked_again() {
    if !require_tools(TOOLS) {
        return;
    }
    let w = World::start(|b| b);
    let o = w.client.run_jump(&w.login, "web-1", &["echo", "first"]);
    assert!(text(&o.stdout).contains("first"), "{}", text(&o.stderr));
    // Within mfa_lease the next login needs no code...
    let before = w.client.askpass_prompts().len();
    let o = w.client.run_jump(&w.login, "web-1", &["echo", "leased"]);
    assert!(text(&o.stdout).contains("leased"), "{}", text(&o.stderr));
    assert_eq!(
        w.client.askpass_prompts().len(),
        before,
        "the lease did not hold"
    );
    // ...until a lock: after the unlock a code is asked again.
    assert!(cli(&w, &["lock", "user", "alice", "--reason", "check"])
        .status
        .success());
    assert!(cli(&w, &["unlock", "user", "alice"]).status.success());
    w.client.set_code(&w.next_code());
    let o = w.client.run_jump(&w.login, "web-1", &["echo", "after"]);
    assert!(text(&o.stdout).contains("after"), "{}", text(&o.stderr));
    assert!(
        w.client
            .askpass_prompts()
            .iter()
            .skip(before)
            .any(|p| p.contains("Verification code")),
        "the lease from before the lock skipped the code: {:?}",
        w.client.askpass_prompts()
    );
}
