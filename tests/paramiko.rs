//! Clients other than OpenSSH: Python's paramiko (what Fabric, Ansible's
//! paramiko connection and netmiko use) logs in with key + code and runs a
//! command through the jump, and a wrong code is refused, never left hanging.
//!
//! paramiko sends `SERVICE_REQUEST ssh-userauth` before every auth method
//! (`auth_publickey`, then `auth_interactive`). OpenSSH's sshd answers each
//! one; stock russh answered only the first, so paramiko waited for a
//! `SERVICE_ACCEPT` that never came (see `patches/russh-service-request.diff`).

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::world::{stderr, stdout, World};
use common::*;

const PYTHON: &str = "/usr/bin/python3";
const TOOLS: &[&str] = &["ssh-keygen", "sshd", "oathtool", PYTHON];

/// How long one paramiko run may take. A key + code login, a jump and one
/// command take well under a second on loopback; the auth timeout inside the
/// script (`auth_timeout`, 15 s) is what a hang would run into.
const QUICK: Duration = Duration::from_secs(10);

/// The scripted paramiko client. argv: mode (`jump`, `login`, `client` or
/// `cap`), gateway port, gatehouse user, private key file, code, gateway host
/// key (`type base64`), target name, target login, command (for `cap`: how
/// many key attempts to make). Prints one JSON
/// object on its last line; an unexpected error is a traceback and a
/// non-zero exit.
const CLIENT: &str = r#"
import base64, io, json, socket, sys
import paramiko

mode, port, user, key_path, code, host_key, target, login, command = sys.argv[1:10]
out = {"prompts": []}
key = paramiko.Ed25519Key.from_private_key_file(key_path)

def report():
    # On a line of its own: auth_interactive_dumb leaves its prompt unended.
    print("\n" + json.dumps(out))

def check_host_key(transport, what):
    seen = transport.get_remote_server_key()
    if seen.get_name() + " " + seen.get_base64() != host_key:
        raise SystemExit(what + ": unexpected host key " + seen.get_base64())

def answer(title, instructions, prompts):
    out["prompts"].extend(text for text, _echo in prompts)
    return [code for _ in prompts]

if mode == "client":
    # What Fabric does for a gateway: SSHClient.connect with a key file (the
    # code typed at the prompt auth_interactive_dumb shows), a direct-tcpip
    # channel, and a second SSHClient over it (sock=channel).
    sys.stdin = io.StringIO(code + "\n")
    gw_key = paramiko.Ed25519Key(data=base64.b64decode(host_key.split()[1]))
    def connect(host, port, known_as, username, sock=None):
        client = paramiko.SSHClient()
        client.get_host_keys().add(known_as, "ssh-ed25519", gw_key)
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        client.connect(host, port=port, username=username,
                       key_filename=key_path, allow_agent=False, look_for_keys=False,
                       timeout=10, banner_timeout=10, auth_timeout=15, sock=sock)
        return client
    try:
        gw = connect("127.0.0.1", int(port), "[127.0.0.1]:" + port, user)
    except paramiko.AuthenticationException as e:
        out["refused"] = str(e)
        report()
        raise SystemExit(0)
    out["authenticated"] = gw.get_transport().is_authenticated()
    chan = gw.get_transport().open_channel("direct-tcpip", (target, 22), ("127.0.0.1", 0),
                                           timeout=10)
    inner = connect(target, 22, target, login, sock=chan)
    _stdin, stdout, _stderr = inner.exec_command(command, timeout=10)
    out["stdout"] = stdout.read().decode("utf-8", "replace")
    out["exit_status"] = stdout.channel.recv_exit_status()
    inner.close()
    gw.close()
    report()
    raise SystemExit(0)

sock = socket.create_connection(("127.0.0.1", int(port)), timeout=10)
t = paramiko.Transport(sock)
t.banner_timeout = 10
t.auth_timeout = 15
t.start_client(timeout=10)
check_host_key(t, "gateway")

if mode == "cap":
    # An attacker's loop: SERVICE_REQUEST + a key that is not the user's,
    # again and again on one connection. The repeated requests must not
    # reset the server's cap on attempts.
    out["answered"] = 0
    for _ in range(int(command)):
        try:
            t.auth_publickey(user, key)
            out["accepted"] = True
            break
        except paramiko.AuthenticationException as e:
            if "timeout" in str(e).lower():
                out["ended_by"] = "timeout"
                break
            out["answered"] += 1
        except Exception as e:
            out["ended_by"] = type(e).__name__ + ": " + str(e)
            break
    out["still_active"] = t.is_active()
    t.close()
    report()
    raise SystemExit(0)

# Partial success: the key is right, a code is still needed.
out["after_key"] = t.auth_publickey(user, key)
try:
    out["after_code"] = t.auth_interactive(user, answer)
except paramiko.AuthenticationException as e:
    out["refused"] = str(e)
out["authenticated"] = t.is_authenticated()

if mode == "jump" and t.is_authenticated():
    chan = t.open_channel("direct-tcpip", (target, 22), ("127.0.0.1", 0), timeout=10)
    inner = paramiko.Transport(chan)
    inner.banner_timeout = 10
    inner.auth_timeout = 15
    inner.start_client(timeout=10)
    check_host_key(inner, "jump")
    inner.auth_publickey(login, key)
    out["inner_authenticated"] = inner.is_authenticated()
    session = inner.open_session(timeout=10)
    session.settimeout(10)
    session.exec_command(command)
    data = b""
    while True:
        chunk = session.recv(65536)
        if not chunk:
            break
        data += chunk
    out["stdout"] = data.decode("utf-8", "replace")
    if not session.status_event.wait(10):
        raise SystemExit("no exit status within 10 s")
    out["exit_status"] = session.recv_exit_status()
    inner.close()

t.close()
report()
"#;

/// True when `/usr/bin/python3` can import paramiko. Like [`require_tools`]:
/// under `CI=true` a missing paramiko fails the test; elsewhere the test is
/// skipped with a message.
fn require_paramiko() -> bool {
    if !require_tools(TOOLS) {
        return false;
    }
    require_python_module(PYTHON, "paramiko", "python3-paramiko")
}

/// What one paramiko run reported, how long it took, and what it printed
/// before the report (the prompts `SSHClient` shows a person).
struct Run {
    report: serde_json::Value,
    took: Duration,
    printed: String,
}

/// One paramiko run as alice with `code`. Panics (with paramiko's traceback)
/// if the script fails or is still running after 60 s.
fn paramiko(w: &World, mode: &str, code: &str, command: &str) -> Run {
    paramiko_with_key(w, &w.key, mode, code, command)
}

/// Like [`paramiko`], logging in as alice with `key`.
fn paramiko_with_key(w: &World, key: &KeyPair, mode: &str, code: &str, command: &str) -> Run {
    let script = w.keys.path().join("paramiko_client.py");
    if !Path::new(&script).exists() {
        std::fs::write(&script, CLIENT).expect("write the paramiko client script");
    }
    let key = key.private_path.display().to_string();
    let port = w.gw.port.to_string();
    let host_key = w.gw.hostkey();
    let mut cmd = Command::new(PYTHON);
    cmd.arg(&script)
        .args([mode, &port, "alice", &key, code, &host_key, "web-1"])
        .args([w.login.as_str(), command])
        .stdin(std::process::Stdio::null());
    let started = Instant::now();
    let out = run_with_timeout(&mut cmd, DEFAULT_COMMAND_TIMEOUT)
        .unwrap_or_else(|| panic!("paramiko still running after {DEFAULT_COMMAND_TIMEOUT:?}"));
    let took = started.elapsed();
    assert!(
        out.status.success(),
        "paramiko client failed ({}) after {took:?}:\nstdout: {}\nstderr: {}",
        out.status,
        stdout(&out),
        stderr(&out)
    );
    let text = stdout(&out);
    let (printed, last) = text.trim_end().rsplit_once('\n').unwrap_or(("", &text));
    let report = serde_json::from_str(last).unwrap_or_else(|e| {
        panic!(
            "paramiko report is not JSON ({e}):\n{text}\n{}",
            stderr(&out)
        )
    });
    Run {
        report,
        took,
        printed: printed.to_string(),
    }
}

/// A six-digit code no ±1-step verifier accepts now.
fn a_wrong_code(secret: &str) -> String {
    let valid = [totp_step(secret, -1), totp(secret), totp_step(secret, 1)];
    (0..1_000_000u32)
        .map(|n| format!("{:06}", (n * 7919 + 123_457) % 1_000_000))
        .find(|c| !valid.contains(c))
        .unwrap_or_else(|| "000000".to_string())
}

/// The command run on web-1 and what it must print there (exit status 7).
const COMMAND: &str = "echo paramiko-through-the-jump; id -un; exit 7";

fn assert_ran_on_the_target(w: &World, run: &Run) {
    let report = &run.report;
    assert_eq!(
        report["stdout"],
        format!("paramiko-through-the-jump\n{}\n", w.login),
        "{report}"
    );
    assert_eq!(report["exit_status"], 7, "{report}");
    assert!(
        run.took < QUICK,
        "login + jump + command took {:?} (a hang waiting for SERVICE_ACCEPT?)",
        run.took
    );
    let login =
        w.gw.wait_for_event_named("login", Duration::from_secs(5))
            .expect("a login audit event");
    assert_eq!(login["user"], "alice");
    assert_eq!(login["admitted_by"], "code");
    let end = w.session_end();
    assert_eq!(end["user"], "alice", "{end}");
}

/// The wrong code was refused by gatehouse (audited, nobody logged in) and
/// paramiko said so quickly, not after its auth timeout.
fn assert_wrong_code_refused(w: &World, run: &Run, wrong: &str) {
    let report = &run.report;
    let refused = report["refused"].as_str().unwrap_or_default();
    assert!(
        !refused.is_empty() && !refused.to_lowercase().contains("timeout"),
        "expected paramiko to report a refusal, not a timeout or a success: {report}"
    );
    assert_ne!(report["authenticated"], true, "{report}");
    assert!(run.took < QUICK, "the refusal took {:?}", run.took);
    let ev =
        w.gw.wait_for_event(
            |e| e["event"] == "auth.attempt" && e["method"] == "keyboard-interactive",
            Duration::from_secs(5),
        )
        .expect("the wrong code is audited");
    assert_eq!(ev["result"], "failure", "{ev}");
    assert_eq!(ev["reason"], "wrong code", "{ev}");
    assert!(w.gw.events("login").is_empty());
    assert!(
        !w.gw.stderr().contains(wrong),
        "the wrong code reached the log"
    );
}

#[test]
fn paramiko_logs_in_with_key_and_code_and_runs_a_command_through_the_jump() {
    if !require_paramiko() {
        return;
    }
    let w = World::start(|b| b);
    let code = totp(&w.secret);
    let run = paramiko(&w, "jump", &code, COMMAND);
    let report = &run.report;
    assert_eq!(
        report["after_key"],
        serde_json::json!(["keyboard-interactive"]),
        "the key alone is a partial success that asks for the code: {report}"
    );
    assert_eq!(
        report["prompts"],
        serde_json::json!(["Verification code: "]),
        "{report}"
    );
    assert_eq!(
        report["authenticated"], true,
        "key + code did not log in: {report}"
    );
    assert_eq!(report["inner_authenticated"], true, "{report}");
    assert_ran_on_the_target(&w, &run);
    assert!(
        !w.gw.stderr().contains(&code),
        "the TOTP code reached the log"
    );
}

#[test]
fn paramiko_with_a_wrong_code_is_refused_quickly_not_left_hanging() {
    if !require_paramiko() {
        return;
    }
    let w = World::start(|b| b);
    let wrong = a_wrong_code(&w.secret);
    let run = paramiko(&w, "login", &wrong, "true");
    assert_eq!(
        run.report["prompts"],
        serde_json::json!(["Verification code: "]),
        "paramiko never saw the code prompt: {}",
        run.report
    );
    assert_wrong_code_refused(&w, &run, &wrong);
}

#[test]
fn paramiko_sshclient_logs_in_and_jumps_as_fabric_does() {
    if !require_paramiko() {
        return;
    }
    let w = World::start(|b| b);
    let run = paramiko(&w, "client", &totp(&w.secret), COMMAND);
    assert!(
        run.printed.contains("Verification code:"),
        "SSHClient showed no code prompt: {:?}",
        run.printed
    );
    assert_eq!(run.report["authenticated"], true, "{}", run.report);
    assert_ran_on_the_target(&w, &run);
}

#[test]
fn paramiko_sshclient_with_a_wrong_code_raises_instead_of_hanging() {
    if !require_paramiko() {
        return;
    }
    let w = World::start(|b| b);
    let wrong = a_wrong_code(&w.secret);
    let run = paramiko(&w, "client", &wrong, COMMAND);
    assert!(
        run.printed.contains("Verification code:"),
        "SSHClient showed no code prompt: {:?}",
        run.printed
    );
    assert!(run.report.get("stdout").is_none(), "{}", run.report);
    assert_wrong_code_refused(&w, &run, &wrong);
}

/// Guard for the wrong-code reply (no longer a "partial success"): stock
/// OpenSSH still asks again on the same connection and logs in with the
/// right code.
#[test]
fn openssh_asks_again_after_a_wrong_code_and_logs_in_with_the_right_one() {
    if !require_tools(&["ssh", "sshd", "ssh-keygen", "oathtool"]) {
        return;
    }
    let w = World::start(|b| b);
    let wrong = a_wrong_code(&w.secret);
    w.client.set_codes(&[&wrong, &totp(&w.secret)]);
    let out = w
        .client
        .run(&["-o", "NumberOfPasswordPrompts=2", "gw", "targets"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("web-1"), "{}", stdout(&out));
    assert_eq!(w.client.askpass_invocations(), 2);
    let reasons: Vec<_> =
        w.gw.events("auth.attempt")
            .iter()
            .filter(|e| e["method"] == "keyboard-interactive")
            .map(|e| e["reason"].clone())
            .collect();
    assert_eq!(
        reasons,
        vec![
            serde_json::json!("wrong code"),
            serde_json::json!("code accepted")
        ]
    );
}

/// Attack on the patch: paramiko's SERVICE_REQUEST before every attempt is
/// answered, but it resets nothing. A loop of wrong keys on one connection
/// is still cut off after the server's `max_auth_attempts` (6), quickly.
#[test]
fn repeated_service_requests_do_not_reset_the_cap_on_auth_attempts() {
    if !require_paramiko() {
        return;
    }
    let w = World::start(|b| b);
    let intruder = gen_ed25519(w.keys.path(), "intruder");
    let run = paramiko_with_key(&w, &intruder, "cap", "", "20");
    let report = &run.report;
    assert_ne!(report["accepted"], true, "{report}");
    let answered = report["answered"].as_u64().unwrap_or(u64::MAX);
    // Six refusals; the seventh request ends the connection, which paramiko
    // also reports as an AuthenticationException; the next finds no session.
    assert!(
        (1..=7).contains(&answered),
        "the connection must be cut after 6 refused attempts: {report}"
    );
    let ended_by = report["ended_by"].as_str().unwrap_or_default();
    assert!(
        !ended_by.is_empty() && ended_by != "timeout",
        "the connection must be cut, not left waiting: {report}"
    );
    assert_eq!(report["still_active"], false, "{report}");
    assert!(run.took < QUICK, "took {:?}", run.took);
    assert!(w.gw.events("login").is_empty());
}
