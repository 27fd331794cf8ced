//! The harness itself, proven against the real peers: sshd takes the keys we
//! give it, the client config reaches `ssh -J`'s jump child, the askpass
//! script answers keyboard-interactive prompts, and TOTP codes follow RFC 6238.
//! None of this needs the gatehouse binary.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A client that trusts `sshd` as `[127.0.0.1]:PORT` (and `gw` points at it).
fn client_for(key: &KeyPair, sshd: &Sshd) -> SshClient {
    SshClient::for_endpoint(key, &sshd.login, sshd.port, &sshd.host_public_key, &[])
}

#[test]
fn sshd_accepts_the_authorized_key_and_runs_a_command() {
    if !require_tools(&["ssh", "sshd", "ssh-keygen"]) {
        return;
    }
    let keys = tempfile::tempdir().unwrap();
    let key = gen_ed25519(keys.path(), "alice");
    let sshd = Sshd::start(&[&key.public_line]);
    let client = client_for(&key, &sshd);

    let port = sshd.port.to_string();
    let dest = format!("{}@127.0.0.1", sshd.login);
    let out = client.run(&["-p", &port, &dest, "echo", "hello"]);

    assert!(
        out.status.success(),
        "ssh failed: {}\nsshd log:\n{}",
        stderr(&out),
        sshd.log()
    );
    assert_eq!(stdout(&out).trim(), "hello");
    assert!(sshd.log().contains("Accepted publickey"), "{}", sshd.log());
    assert_eq!(client.askpass_invocations(), 0);
}

#[test]
fn sshd_refuses_an_unlisted_key() {
    if !require_tools(&["ssh", "sshd", "ssh-keygen"]) {
        return;
    }
    let keys = tempfile::tempdir().unwrap();
    let listed = gen_ed25519(keys.path(), "listed");
    let stranger = gen_ed25519(keys.path(), "stranger");
    let sshd = Sshd::start(&[&listed.public_line]);

    let out = client_for(&stranger, &sshd).run(&["gw", "echo", "hello"]);

    assert!(!out.status.success(), "an unlisted key was accepted");
    assert_eq!(stdout(&out), "");
    assert!(
        stderr(&out).contains("Permission denied"),
        "unexpected ssh error: {}",
        stderr(&out)
    );
}

#[test]
fn sshd_authorized_keys_can_be_replaced() {
    if !require_tools(&["ssh", "sshd", "ssh-keygen"]) {
        return;
    }
    let keys = tempfile::tempdir().unwrap();
    let old = gen_ed25519(keys.path(), "old");
    let new = gen_ed25519(keys.path(), "new");
    let sshd = Sshd::start(&[&old.public_line]);

    sshd.set_authorized_keys(&[&new.public_line]);

    let out = client_for(&new, &sshd).run(&["gw", "echo", "ok"]);
    assert!(out.status.success(), "new key refused: {}", stderr(&out));
    let out = client_for(&old, &sshd).run(&["gw", "echo", "ok"]);
    assert!(!out.status.success(), "removed key still accepted");
}

#[test]
fn jump_child_gets_the_client_config() {
    // `ssh -J` starts a second ssh that only inherits `-F`: if the identity or
    // known_hosts did not reach it, the hop through `gw` would fail.
    if !require_tools(&["ssh", "sshd", "ssh-keygen"]) {
        return;
    }
    let keys = tempfile::tempdir().unwrap();
    let key = gen_ed25519(keys.path(), "alice");
    let sshd = Sshd::start(&[&key.public_line]);
    let client = client_for(&key, &sshd);

    let port = sshd.port.to_string();
    let dest = format!("{}@127.0.0.1", sshd.login);
    let out = client.run(&["-J", "gw", "-p", &port, &dest, "echo", "jumped"]);

    assert!(
        out.status.success(),
        "ssh -J failed: {}\nsshd log:\n{}",
        stderr(&out),
        sshd.log()
    );
    assert_eq!(stdout(&out).trim(), "jumped");
    assert_eq!(sshd.log().matches("Accepted publickey").count(), 2);
}

#[test]
fn askpass_answers_keyboard_interactive_prompts() {
    // sshd with PAM asks "Password:" after the key; our askpass script
    // answers (wrongly) exactly once per connection and logs the prompt.
    if !require_tools(&["ssh", "sshd", "ssh-keygen"]) {
        return;
    }
    if !Path::new("/etc/pam.d/sshd").exists() && !Path::new("/etc/pam.d/other").exists() {
        eprintln!("skipping: no PAM configuration for sshd");
        return;
    }
    let keys = tempfile::tempdir().unwrap();
    let key = gen_ed25519(keys.path(), "alice");
    let sshd = Sshd::start_with(
        &[&key.public_line],
        &[
            "UsePAM yes",
            "KbdInteractiveAuthentication yes",
            "AuthenticationMethods publickey,keyboard-interactive",
        ],
    );
    let client = client_for(&key, &sshd);
    client.set_code("000000");

    let out = client.run(&["gw", "echo", "hello"]);

    assert!(!out.status.success(), "a wrong password was accepted");
    assert_eq!(
        client.askpass_invocations(),
        1,
        "prompts: {:?}\nssh: {}\nsshd log:\n{}",
        client.askpass_prompts(),
        stderr(&out),
        sshd.log()
    );
    assert!(
        client.askpass_prompts()[0].contains("assword"),
        "{:?}",
        client.askpass_prompts()
    );
}

#[test]
fn stopping_sshd_ends_its_sessions() {
    // sshd's per-connection processes setsid(); the harness must still end
    // them, or "target goes down" tests would keep talking to a dead target.
    if !require_tools(&["ssh", "sshd", "ssh-keygen"]) {
        return;
    }
    let keys = tempfile::tempdir().unwrap();
    let key = gen_ed25519(keys.path(), "alice");
    let mut sshd = Sshd::start(&[&key.public_line]);
    let client = client_for(&key, &sshd);
    let mut session = client.spawn(&["gw", "sleep", "60"]);
    assert!(
        wait_until(Duration::from_secs(20), || sshd
            .log()
            .contains("Starting session")),
        "session never started:\n{}",
        sshd.log()
    );

    sshd.stop();

    assert!(
        session.wait_timeout(Duration::from_secs(15)).is_some(),
        "the client session outlived sshd"
    );
    assert!(!port_is_listening(sshd.port));
}

#[test]
fn totp_matches_oathtool_time_steps() {
    if !require_tools(&["oathtool"]) {
        return;
    }
    // RFC 6238 appendix B, SHA1 seed "12345678901234567890", last 6 digits.
    let rfc_secret = "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ";
    assert_eq!(totp_at(rfc_secret, 59), "287082");
    assert_eq!(totp_at(rfc_secret, 1_111_111_109), "081804");

    let secret = "JBSWY3DPEHPK3PXP";
    let step_start = 1_700_000_010; // a multiple of 30
    let code = totp_at(secret, step_start);
    assert_eq!(code.len(), 6);
    assert!(code.chars().all(|c| c.is_ascii_digit()));
    assert_eq!(
        totp_at(secret, step_start + 29),
        code,
        "same step, same code"
    );
    assert_ne!(
        totp_at(secret, step_start + 30),
        code,
        "next step, new code"
    );
    assert_ne!(
        totp_at(secret, step_start - 1),
        code,
        "previous step, new code"
    );

    let now = totp(secret);
    let t = unix_now();
    assert!(
        now == totp_at(secret, t) || now == totp_at(secret, t - 1),
        "totp() is the code for now"
    );
}

#[test]
fn builder_renders_the_documented_config() {
    let b = GatehouseBuilder::new()
        .auth_line("max_failures = 5")
        .user("alice", &["web"], &["ssh-ed25519 AAAAC3Nza alice@laptop"])
        .role_with("web", &["web-1"], &["root"], &["idle_timeout = \"2s\""])
        .role_line("web", "max_session = \"3s\"")
        .ssh_target("web-1", 40002, &["ssh-ed25519 AAAAC3Nzb comment"])
        .target_line("web-1", "labels = { env = \"prod\" }");

    let text = b.render(Path::new("/tmp/x/state"), 40001);
    let v: toml::Value = toml::from_str(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));

    assert_eq!(v["gateway"]["state_dir"].as_str(), Some("/tmp/x/state"));
    assert_eq!(
        v["gateway"]["ssh_listen"][0].as_str(),
        Some("127.0.0.1:40001")
    );
    assert_eq!(v["auth"]["max_failures"].as_integer(), Some(5));
    let user = &v["users"][0];
    assert_eq!(user["name"].as_str(), Some("alice"));
    assert_eq!(user["roles"][0].as_str(), Some("web"));
    assert_eq!(
        user["ssh_keys"][0].as_str(),
        Some("ssh-ed25519 AAAAC3Nza alice@laptop")
    );
    let role = &v["roles"][0];
    assert_eq!(role["targets"]["names"][0].as_str(), Some("web-1"));
    assert_eq!(role["logins"][0].as_str(), Some("root"));
    assert_eq!(role["idle_timeout"].as_str(), Some("2s"));
    assert_eq!(role["max_session"].as_str(), Some("3s"));
    let target = &v["targets"][0];
    assert_eq!(target["kind"].as_str(), Some("ssh"));
    assert_eq!(target["address"].as_str(), Some("127.0.0.1:40002"));
    assert_eq!(
        target["host_keys"][0].as_str(),
        Some("ssh-ed25519 AAAAC3Nzb")
    );
    assert_eq!(target["labels"]["env"].as_str(), Some("prod"));
}

#[test]
fn audit_events_are_the_json_lines_with_an_event_field() {
    let text = concat!(
        "{\"level\":\"INFO\",\"event\":\"auth.attempt\",\"user\":\"alice\",\"result\":\"failure\"}\n",
        "{\"level\":\"INFO\",\"message\":\"listening\"}\n",
        "not json at all\n",
        "{\"level\":\"WARN\",\"fields\":{\"event\":\"auth.lockout\",\"user\":\"bob\"}}\n",
    );
    let events = parse_audit_events(text);
    assert_eq!(events.len(), 2);
    assert_eq!(events[0]["event"], "auth.attempt");
    assert_eq!(events[0]["reason"], serde_json::Value::Null);
    assert_eq!(events[1]["event"], "auth.lockout");
    assert_eq!(events[1]["user"], "bob");
}
