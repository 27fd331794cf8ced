//! Deny by default, with the real client and target: targets and logins no
//! role grants, forwarding nobody approved, pinned host keys, unreachable
//! targets, and the session limits — each refused (or ended) with a clear
//! message and an audit event.

mod common;

use std::net::TcpListener;
use std::time::{Duration, Instant};

use common::world::{stderr, stdout, World};
use common::*;

const TOOLS: &[&str] = &["ssh", "sshd", "ssh-keygen", "oathtool"];

/// What OpenSSH prints when the gateway refuses a `direct-tcpip` channel:
/// "channel N: open failed: administratively prohibited" (-v) or, for the
/// `-W` stdio forward that `-J` uses, "stdio forwarding failed".
fn refused_by_gateway(stderr: &str) -> bool {
    stderr.contains("administratively prohibited") || stderr.contains("stdio forwarding failed")
}

#[test]
fn role_without_the_target_is_refused_and_audited() {
    if !require_tools(TOOLS) {
        return;
    }
    let w = World::start(|b| b.ssh_target("web-2", 22, &[]));
    let out = w.client.run_jump(&w.login, "web-2", &["true"]);
    assert!(!out.status.success());
    assert!(refused_by_gateway(&stderr(&out)), "{}", stderr(&out));
    let ev =
        w.gw.wait_for_event_named("channel.refused", Duration::from_secs(5))
            .unwrap();
    assert_eq!(ev["host"], "web-2");
    assert_eq!(ev["kind"], "direct-tcpip");
    assert_eq!(ev["reason"], "no role grants the target");
    assert!(w.gw.events("session.start").is_empty());
}

#[test]
fn login_the_role_does_not_allow_is_refused_naming_the_allowed_logins() {
    if !require_tools(TOOLS) {
        return;
    }
    let w = World::start(|b| b);
    let out = w
        .client
        .run_jump("nosuchlogin", "web-1", &["echo should-not-run"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(!stdout(&out).contains("should-not-run"));
    let msg = stderr(&out);
    assert!(
        msg.contains(&format!(
            "may not log in to web-1 as nosuchlogin; allowed: {}",
            w.login
        )),
        "{msg}"
    );
    let ev =
        w.gw.wait_for_event_named("session.refused", Duration::from_secs(5))
            .unwrap();
    assert_eq!(ev["login"], "nosuchlogin");
    assert_eq!(ev["reason"], "login not allowed by any role");
    assert!(
        w.gw.events("session.start").is_empty(),
        "gatehouse connected to the target anyway"
    );
}

#[test]
fn a_target_selected_by_labels_is_reachable() {
    if !require_tools(TOOLS) {
        return;
    }
    let login = current_user();
    let w = World::with_roles(&["prod-web"], |b| {
        b.target_line("web-1", "labels = { env = \"production\", tier = \"web\" }")
            .role_labels("prod-web", &[("env", "production")], &[&login])
    });
    let out = w.client.run_jump(&w.login, "web-1", &["echo via-labels"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), "via-labels");
}

#[test]
fn direct_tcpip_to_an_unapproved_host_or_port_is_refused_and_audited() {
    if !require_tools(TOOLS) {
        return;
    }
    let w = World::start(|b| b);
    // The target's real address, by IP: not an approved target name.
    let by_ip = w
        .client
        .run(&["-W", &format!("127.0.0.1:{}", w.sshd.port), "gw"]);
    assert!(!by_ip.status.success());
    assert!(refused_by_gateway(&stderr(&by_ip)), "{}", stderr(&by_ip));
    // An approved name on a port that is not its SSH port.
    let other_port = w.client.run(&["-W", "web-1:80", "gw"]);
    assert!(!other_port.status.success());
    let refused = w.gw.events("channel.refused");
    assert_eq!(refused.len(), 2, "{refused:?}");
    assert_eq!(refused[0]["host"], "127.0.0.1");
    assert_eq!(refused[1]["port"], 80);
    assert!(
        !w.sshd.log().contains("Accepted publickey"),
        "the target saw a login"
    );
}

#[test]
fn remote_forwarding_is_refused_and_audited() {
    if !require_tools(TOOLS) {
        return;
    }
    let w = World::start(|b| b);
    let out = w.client.run(&[
        "-o",
        "ExitOnForwardFailure=yes",
        "-R",
        "0:127.0.0.1:9",
        "gw",
        "targets",
    ]);
    assert!(!out.status.success(), "remote forwarding was allowed");
    let ev =
        w.gw.wait_for_event_named("channel.refused", Duration::from_secs(5))
            .unwrap();
    assert_eq!(ev["kind"], "tcpip-forward");
    // Through a jump, the inner session refuses it too.
    let inner = run_checked_timeout(
        &mut w.client.jump_with(
            &["-o", "ExitOnForwardFailure=yes", "-R", "0:127.0.0.1:9"],
            &w.login,
            "web-1",
            &["true"],
        ),
        DEFAULT_COMMAND_TIMEOUT,
    );
    assert!(!inner.status.success());
    assert!(
        w.gw.wait_for_event(
            |e| e["event"] == "channel.refused"
                && e["kind"] == "tcpip-forward"
                && e["host"] == "web-1",
            Duration::from_secs(5)
        )
        .is_some(),
        "the inner session did not refuse -R"
    );
}

#[test]
fn agent_forwarding_is_refused_and_audited() {
    if !require_tools(&[TOOLS, &["ssh-agent"]].concat()) {
        return;
    }
    let w = World::start(|b| b);
    let sock = w.client.dir().join("agent.sock");
    let mut agent = ChildGuard::spawn(
        std::process::Command::new("ssh-agent")
            .arg("-D")
            .arg("-a")
            .arg(&sock),
    );
    assert!(wait_until(Duration::from_secs(5), || sock.exists()));
    // The harness config says `IdentityAgent none`; name the agent for the
    // inner (target) connection only.
    let agent_opt = format!("IdentityAgent={}", sock.display());
    let out = run_checked_timeout(
        &mut w.client.jump_with(
            &["-A", "-o", &agent_opt],
            &w.login,
            "web-1",
            &["echo \"agent=${SSH_AUTH_SOCK:-none}\""],
        ),
        DEFAULT_COMMAND_TIMEOUT,
    );
    agent.kill();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), "agent=none");
    let ev =
        w.gw.wait_for_event_named("channel.refused", Duration::from_secs(5))
            .unwrap();
    assert_eq!(ev["kind"], "agent-forwarding");
}

#[test]
fn pinned_host_key_mismatch_refuses_the_session() {
    if !require_tools(TOOLS) {
        return;
    }
    let keys = tempfile::tempdir().unwrap();
    let impostor = gen_ed25519(keys.path(), "impostor");
    let w = World::start(|b| b);
    // Pin web-1 to a key the target does not have, and restart.
    let setup = w.gw.setup().clone();
    let text = setup
        .config_text()
        .replace(&w.sshd.host_public_key, &impostor.public_key());
    setup.write_config(&text);
    let mut gw = w.gw;
    gw.restart();
    let out = w
        .client
        .run_jump(&w.login, "web-1", &["echo should-not-run"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(!stdout(&out).contains("should-not-run"));
    assert!(
        stderr(&out).contains("does not match its pinned key"),
        "{}",
        stderr(&out)
    );
    let ev = gw
        .wait_for_event_named("session.refused", Duration::from_secs(5))
        .unwrap();
    assert!(
        ev["reason"]
            .as_str()
            .unwrap()
            .starts_with("host key mismatch"),
        "{ev}"
    );
    assert!(
        !w.sshd.log().contains("Accepted publickey"),
        "gatehouse logged in to an unverified host"
    );
}

#[test]
fn a_target_without_a_pinned_key_is_refused() {
    if !require_tools(TOOLS) {
        return;
    }
    let login = current_user();
    let w = World::with_roles(&["web", "web3"], |b| {
        b.ssh_target("web-3", 22, &[])
            .role("web3", &["web-3"], &[&login])
    });
    let gw = &w.gw;
    let client = SshClient::new(&w.key, "alice", gw, &["web-3"]);
    client.set_code(&totp(&w.secret));
    let out = client.run_jump(&w.login, "web-3", &["true"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("has no pinned host key"),
        "{}",
        stderr(&out)
    );
    let ev = gw
        .wait_for_event_named("session.refused", Duration::from_secs(5))
        .unwrap();
    assert_eq!(ev["reason"], "no pinned host key");
}

#[test]
fn an_unreachable_target_is_a_clear_message_not_a_hang() {
    if !require_tools(TOOLS) {
        return;
    }
    // Nothing listens on this port.
    let dead = free_port();
    // This one accepts TCP but never speaks SSH.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_port = silent.local_addr().unwrap().port();
    let login = current_user();
    let w = World::with_roles(&["web", "more"], |b| {
        b.gateway_line("connect_timeout = \"2s\"")
            .ssh_target("down", dead, &["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHkWzpKc3ReKq2ByaVuIZTb9iZPOX5Dv0o1bJOSm/ozO"])
            .ssh_target("silent", silent_port, &["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHkWzpKc3ReKq2ByaVuIZTb9iZPOX5Dv0o1bJOSm/ozO"])
            .role("more", &["down", "silent"], &[&login])
    });
    let gw = &w.gw;
    let client = SshClient::new(&w.key, "alice", gw, &["down", "silent"]);
    client.set_code(&totp(&w.secret));
    let t0 = Instant::now();
    let out = client.run_jump(&w.login, "down", &["true"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("cannot reach down"),
        "{}",
        stderr(&out)
    );
    assert!(t0.elapsed() < Duration::from_secs(10));
    let t1 = Instant::now();
    let out = client.run_jump(&w.login, "silent", &["true"]);
    let took = t1.elapsed();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("timed out connecting to silent"),
        "{}",
        stderr(&out)
    );
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(10),
        "took {took:?}"
    );
    let reasons: Vec<_> = gw
        .events("session.refused")
        .iter()
        .map(|e| e["reason"].as_str().unwrap().to_string())
        .collect();
    assert!(reasons[0].starts_with("unreachable"), "{reasons:?}");
    assert_eq!(reasons[1], "connect timeout");
    drop(silent);
}

#[test]
fn idle_timeout_ends_a_quiet_session_with_a_message() {
    if !require_tools(TOOLS) {
        return;
    }
    let w = World::start(|b| b.role_line("web", "idle_timeout = \"2s\""));
    let t0 = Instant::now();
    let out = w.client.run_jump(&w.login, "web-1", &["sleep 30"]);
    let took = t0.elapsed();
    assert!(!out.status.success());
    assert!(took < Duration::from_secs(15), "took {took:?}");
    assert!(stderr(&out).contains("idle for 2s"), "{}", stderr(&out));
    let end = w.session_end();
    assert_eq!(end["reason"], "session idle for 2s");
}

#[test]
fn max_session_ends_a_busy_session_at_its_limit() {
    if !require_tools(TOOLS) {
        return;
    }
    let w = World::start(|b| {
        b.role_line("web", "max_session = \"3s\"")
            .role_line("web", "idle_timeout = \"0s\"")
    });
    let t0 = Instant::now();
    let out = w.client.run_jump(
        &w.login,
        "web-1",
        &["while true; do echo tick; sleep 0.2; done"],
    );
    let took = t0.elapsed();
    assert!(!out.status.success());
    assert!(
        took >= Duration::from_secs(3) && took < Duration::from_secs(15),
        "took {took:?}"
    );
    assert!(stdout(&out).contains("tick"));
    assert!(
        stderr(&out).contains("maximum length (3s)"),
        "{}",
        stderr(&out)
    );
    let end = w.session_end();
    assert_eq!(end["reason"], "session reached its maximum length (3s)");
}
