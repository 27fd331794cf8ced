//! A jump channel's commands are all recorded, or they are refused: one run
//! request per session channel, nothing before it reaches the target, and
//! every forwarding kind refused and audited. Driven by a scripted paramiko
//! client (stock OpenSSH never sends these messages) against a real sshd.

mod common;

use std::path::Path;
use std::time::Duration;

use common::scripted::{grant_lease, run_script};
use common::world::World;
use common::*;

const TOOLS: &[&str] = &["ssh", "sshd", "ssh-keygen", "oathtool"];

fn marks() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("gh-marks-")
        .tempdir()
        .expect("marks dir")
}

fn path_str(p: &Path) -> String {
    p.display().to_string()
}

/// `channel.refused` events of this run whose kind is `kind`.
fn refused(w: &World, kind: &str) -> Vec<serde_json::Value> {
    w.gw.events("channel.refused")
        .into_iter()
        .filter(|e| e["kind"] == kind)
        .collect()
}

#[test]
fn exec_after_a_subsystem_the_target_refused_never_runs() {
    if !require_tools(TOOLS) {
        return;
    }
    let mut w = World::start(|b| b);
    // The target has no sftp: it refuses the subsystem.
    w.sshd.restart_without_sftp();
    grant_lease(&w);
    let m = marks();
    let (m1, m2) = (
        m.path().join("exec-wanting-reply"),
        m.path().join("exec-silent"),
    );
    let run = run_script(
        &w,
        "web-1",
        r#"
t = outer(); i = jump(t)
ch = i.open_session(timeout=10)
raw_request(ch, "subsystem", False, "sftp")
time.sleep(1.0)
raw_request(ch, "exec", True, "touch " + CFG["m1"])
wait_replies(ch, 1)
raw_request(ch, "exec", False, "touch " + CFG["m2"])
time.sleep(1.5)
out(what="replies", replies=replies_for(ch))
"#,
        &[("m1", &path_str(&m1)), ("m2", &path_str(&m2))],
        Duration::from_secs(40),
    );
    let replies = run.line("replies");
    assert_eq!(
        replies["replies"],
        serde_json::json!(["failure"]),
        "{}",
        run.describe()
    );
    std::thread::sleep(Duration::from_millis(500));
    assert!(!m1.exists(), "the exec after a refused subsystem ran");
    assert!(!m2.exists(), "the exec without want_reply ran");
    let ev = refused(&w, "exec");
    assert_eq!(ev.len(), 2, "{ev:?}");
    assert!(ev[0]["reason"]
        .as_str()
        .unwrap()
        .contains("second run request"));
}

#[test]
fn a_second_run_request_after_an_accepted_exec_is_refused_by_gatehouse() {
    if !require_tools(TOOLS) {
        return;
    }
    let w = World::start(|b| b);
    grant_lease(&w);
    let m = marks();
    let (m1, m2) = (m.path().join("second-exec"), m.path().join("shell"));
    let run = run_script(
        &w,
        "web-1",
        r#"
t = outer(); i = jump(t)
ch = i.open_session(timeout=10)
raw_request(ch, "exec", True, "sleep 3")
wait_replies(ch, 1)
raw_request(ch, "exec", True, "touch " + CFG["m1"])
wait_replies(ch, 2)
raw_request(ch, "exec", False, "touch " + CFG["m2"])
raw_request(ch, "shell", True)
wait_replies(ch, 3)
out(what="replies", replies=replies_for(ch))
"#,
        &[("m1", &path_str(&m1)), ("m2", &path_str(&m2))],
        Duration::from_secs(40),
    );
    assert_eq!(
        run.line("replies")["replies"],
        serde_json::json!(["success", "failure", "failure"]),
        "{}",
        run.describe()
    );
    std::thread::sleep(Duration::from_millis(500));
    assert!(!m1.exists() && !m2.exists(), "a second command ran");
    // Refused by gatehouse itself (the target never saw them), audited.
    assert_eq!(refused(&w, "exec").len(), 2);
    assert_eq!(refused(&w, "shell").len(), 1);
}

#[test]
fn data_before_the_run_request_reaches_the_command_only_after_it_runs() {
    if !require_tools(TOOLS) {
        return;
    }
    let w = World::start(|b| b);
    grant_lease(&w);
    let m = marks();
    let early = m.path().join("early");
    let run = run_script(
        &w,
        "web-1",
        r#"
t = outer(); i = jump(t)
ch = i.open_session(timeout=10)
ch.sendall(("echo held > " + CFG["early"] + "\n").encode())
ch.shutdown_write()
time.sleep(0.5)
raw_request(ch, "exec", True, "sh")
wait_replies(ch, 1)
out(what="exit", status=ch.recv_exit_status(), replies=replies_for(ch))
"#,
        &[("early", &path_str(&early))],
        Duration::from_secs(40),
    );
    let exit = run.line("exit");
    assert_eq!(exit["replies"], serde_json::json!(["success"]));
    assert_eq!(exit["status"], 0, "{}", run.describe());
    // Held until the command (and its recording) existed, then delivered
    // with its EOF: the shell read it and ended.
    assert_eq!(
        std::fs::read_to_string(&early).unwrap_or_default(),
        "held\n"
    );
}

#[test]
fn too_much_data_before_the_run_request_closes_the_channel() {
    if !require_tools(TOOLS) {
        return;
    }
    let w = World::start(|b| b);
    grant_lease(&w);
    let m = marks();
    let mark = m.path().join("ran");
    let run = run_script(
        &w,
        "web-1",
        r#"
t = outer(); i = jump(t)
ch = i.open_session(timeout=10)
# gatehouse may close the channel while the bytes are still going out.
try:
    ch.sendall(b"x" * 300000)
except OSError:
    pass
end = time.time() + 10
while time.time() < end and not ch.closed and not ch.eof_received:
    time.sleep(0.05)
closed = ch.closed or ch.eof_received
raw_request(ch, "exec", True, "touch " + CFG["mark"])
time.sleep(1.0)
# The connection goes on: a new channel runs.
ch2 = i.open_session(timeout=10)
ch2.exec_command("echo alive")
alive = ch2.recv(100).decode()
out(what="result", closed=closed, replies=replies_for(ch), alive=alive)
"#,
        &[("mark", &path_str(&mark))],
        Duration::from_secs(40),
    );
    let r = run.line("result");
    assert_eq!(r["closed"], true, "{}", run.describe());
    assert!(!r["replies"]
        .as_array()
        .unwrap()
        .iter()
        .any(|x| x == "success"));
    assert_eq!(r["alive"], "alive\n");
    assert!(!mark.exists());
    let ev = refused(&w, "data");
    assert_eq!(ev.len(), 1, "{ev:?}");
}

#[test]
fn forwarding_channels_and_requests_on_a_jump_are_refused_and_audited() {
    if !require_tools(TOOLS) {
        return;
    }
    let w = World::start(|b| b);
    grant_lease(&w);
    let run = run_script(
        &w,
        "web-1",
        r#"
t = outer(); i = jump(t)
res = {}
try:
    i.open_x11_channel(("127.0.0.1", 6010))
    res["x11"] = "opened"
except Exception as e:
    res["x11"] = "refused"
try:
    i.open_forwarded_tcpip_channel(("127.0.0.1", 5555), ("127.0.0.1", 22))
    res["forwarded-tcpip"] = "opened"
except Exception as e:
    res["forwarded-tcpip"] = "refused"
raw_open(i, "direct-streamlocal@openssh.com", "/run/some.sock", "", 0)
try:
    i.request_port_forward("127.0.0.1", 0)
    res["tcpip-forward"] = "granted"
except Exception:
    res["tcpip-forward"] = "refused"
ch = i.open_session(timeout=10)
raw_request(ch, "auth-agent-req@openssh.com", True)
m = Message()
m.add_byte(C.cMSG_CHANNEL_REQUEST); m.add_int(ch.remote_chanid); m.add_string("x11-req")
m.add_boolean(True); m.add_boolean(False); m.add_string("MIT-MAGIC-COOKIE-1"); m.add_string("00ff"); m.add_int(0)
i._send_user_message(m)
raw_request(ch, "frobnicate@example.com", True)
res["session_requests"] = wait_replies(ch, 3)
time.sleep(0.5)
ch2 = i.open_session(timeout=10)
ch2.exec_command("echo alive")
res["alive"] = ch2.recv(100).decode()
res["open_failures"] = OPEN_FAILURES
out(what="result", **res)
"#,
        &[],
        Duration::from_secs(40),
    );
    let r = run.line("result");
    assert_eq!(r["x11"], "refused", "{}", run.describe());
    assert_eq!(r["forwarded-tcpip"], "refused");
    assert_eq!(r["tcpip-forward"], "refused");
    // Agent, X11 and the unknown request: each answered with a failure.
    assert_eq!(
        r["session_requests"],
        serde_json::json!(["failure", "failure", "failure"])
    );
    assert_eq!(r["alive"], "alive\n", "the connection goes on");
    assert_eq!(r["open_failures"].as_array().unwrap().len(), 3);
    for kind in [
        "x11",
        "forwarded-tcpip",
        "direct-streamlocal",
        "tcpip-forward",
        "agent-forwarding",
        "x11-forwarding",
    ] {
        assert_eq!(refused(&w, kind).len(), 1, "audit of {kind}");
    }
}
