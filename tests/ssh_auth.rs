//! Two factors on every login, with the stock OpenSSH client: the personal
//! key first, then a TOTP code (or an MFA lease); wrong keys, wrong and
//! reused codes, unknown users and lockouts are refused and audited, and no
//! code or secret ever reaches the log.

mod common;

use std::time::Duration;

use common::world::{stderr, stdout, World};
use common::*;

const TOOLS: &[&str] = &["ssh", "sshd", "ssh-keygen", "oathtool"];

/// `ssh gw targets` (the gateway's own help command) with one code prompt at most.
fn login(w: &World, extra: &[&str]) -> std::process::Output {
    let mut args = vec!["-o", "NumberOfPasswordPrompts=1"];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["gw", "targets"]);
    w.client.run(&args)
}

fn attempts(w: &World) -> Vec<serde_json::Value> {
    w.gw.events("auth.attempt")
}

fn a_wrong_code(w: &World) -> String {
    let valid = [
        totp_step(&w.secret, -1),
        totp(&w.secret),
        totp_step(&w.secret, 1),
    ];
    (0..1_000_000u32)
        .map(|n| format!("{:06}", (n * 7919 + 123_457) % 1_000_000))
        .find(|c| !valid.contains(c))
        .unwrap()
}

#[test]
fn key_plus_code_logs_in_and_is_audited_without_the_code() {
    if !require_tools(TOOLS) {
        return;
    }
    let w = World::start(|b| b);
    let code = totp(&w.secret);
    let out = login(&w, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("web-1"));
    let prompts = w.client.askpass_prompts();
    assert_eq!(prompts.len(), 1, "{prompts:?}");
    assert!(prompts[0].ends_with("Verification code: "), "{prompts:?}");
    let ev =
        w.gw.wait_for_event_named("login", Duration::from_secs(5))
            .unwrap();
    assert_eq!(ev["user"], "alice");
    assert_eq!(ev["admitted_by"], "code");
    assert!(ev["key_fp"].as_str().unwrap().starts_with("SHA256:"));
    let methods: Vec<_> = attempts(&w)
        .iter()
        .map(|e| e["method"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(methods, vec!["publickey", "keyboard-interactive"]);
    let log = w.gw.stderr();
    assert!(!log.contains(&code), "the TOTP code reached the log");
    assert!(!log.contains(&w.secret), "the TOTP secret reached the log");
}

#[test]
fn wrong_key_is_refused_without_a_code_prompt_and_audited() {
    if !require_tools(TOOLS) {
        return;
    }
    let w = World::start(|b| b);
    let other = gen_ed25519(w.keys.path(), "intruder");
    let intruder = SshClient::new(&other, "alice", &w.gw, &["web-1"]);
    intruder.set_code(&totp(&w.secret));
    let out = intruder.run(&["gw", "targets"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("Permission denied (publickey)"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        intruder.askpass_invocations(),
        0,
        "a key offer alone must never reach the code prompt"
    );
    let ev =
        w.gw.wait_for_event(
            |e| e["event"] == "auth.attempt" && e["result"] == "failure",
            Duration::from_secs(5),
        )
        .unwrap();
    assert_eq!(ev["user"], "alice");
    assert_eq!(ev["reason"], "key not authorized for user");
    assert!(w.gw.events("login").is_empty());
}

#[test]
fn unknown_user_fails_exactly_like_a_wrong_key() {
    if !require_tools(TOOLS) {
        return;
    }
    let w = World::start(|b| b);
    let other = gen_ed25519(w.keys.path(), "other");
    let wrong_key = SshClient::new(&other, "alice", &w.gw, &[]);
    let unknown = SshClient::new(&w.key, "nobody", &w.gw, &[]);
    let a = wrong_key.run(&["gw", "targets"]);
    let b = unknown.run(&["gw", "targets"]);
    assert_eq!(a.status.code(), b.status.code());
    let norm = |s: String, user: &str| s.replace(user, "USER");
    assert_eq!(norm(stderr(&a), "alice"), norm(stderr(&b), "nobody"));
    assert_eq!(wrong_key.askpass_invocations(), 0);
    assert_eq!(unknown.askpass_invocations(), 0);
    let reasons: Vec<_> = attempts(&w).iter().map(|e| e["reason"].clone()).collect();
    assert_eq!(reasons.len(), 2);
    assert_eq!(reasons[0], reasons[1], "audit reasons differ: {reasons:?}");
}

#[test]
fn right_key_wrong_code_is_refused_and_audited() {
    if !require_tools(TOOLS) {
        return;
    }
    let w = World::start(|b| b);
    w.client.set_code(&a_wrong_code(&w));
    let out = login(&w, &[]);
    assert!(!out.status.success());
    assert_eq!(w.client.askpass_invocations(), 1);
    let ev =
        w.gw.wait_for_event(
            |e| e["event"] == "auth.attempt" && e["method"] == "keyboard-interactive",
            Duration::from_secs(5),
        )
        .unwrap();
    assert_eq!(ev["result"], "failure");
    assert_eq!(ev["reason"], "wrong code");
    assert!(w.gw.events("login").is_empty());
}

#[test]
fn totp_code_is_accepted_once_also_after_a_restart() {
    if !require_tools(TOOLS) {
        return;
    }
    let mut w = World::start(|b| b.auth_line("mfa_lease = \"0s\""));
    let code = totp(&w.secret);
    w.client.set_code(&code);
    assert!(login(&w, &[]).status.success());
    let again = login(&w, &[]);
    assert!(!again.status.success(), "a used code was accepted again");
    let ev =
        w.gw.wait_for_event(
            |e| e["reason"] == "code already used",
            Duration::from_secs(5),
        )
        .expect("reuse audited");
    assert_eq!(ev["result"], "failure");
    w.gw.restart();
    let after_restart = login(&w, &[]);
    assert!(
        !after_restart.status.success(),
        "a used code was accepted after a restart"
    );
}

#[test]
fn lockout_after_max_failures_refuses_even_the_right_code_then_expires() {
    if !require_tools(TOOLS) {
        return;
    }
    let w = World::start(|b| {
        b.auth_line("max_failures = 3")
            .auth_line("lockout = \"4s\"")
    });
    w.client.set_code(&a_wrong_code(&w));
    for _ in 0..3 {
        assert!(!login(&w, &[]).status.success());
    }
    let lock =
        w.gw.wait_for_event_named("auth.lockout", Duration::from_secs(5))
            .expect("lockout audited");
    assert!(
        lock["subject"].as_str().unwrap().contains("alice"),
        "{lock}"
    );
    let prompts_before = w.client.askpass_invocations();
    w.client.set_code(&totp(&w.secret));
    let locked = login(&w, &[]);
    assert!(!locked.status.success(), "locked-out user logged in");
    assert_eq!(
        w.client.askpass_invocations(),
        prompts_before,
        "a locked user must not reach the code prompt"
    );
    assert!(w
        .gw
        .wait_for_event(
            |e| e["event"] == "auth.attempt"
                && e["reason"].as_str().unwrap_or("").contains("locked out"),
            Duration::from_secs(5)
        )
        .is_some());
    std::thread::sleep(Duration::from_secs(5));
    let out = login(&w, &[]);
    assert!(
        out.status.success(),
        "lock did not expire: {}",
        stderr(&out)
    );
}

#[test]
fn lockouts_survive_a_restart() {
    if !require_tools(TOOLS) {
        return;
    }
    let mut w = World::start(|b| {
        b.auth_line("max_failures = 2")
            .auth_line("lockout = \"1h\"")
    });
    w.client.set_code(&a_wrong_code(&w));
    for _ in 0..2 {
        assert!(!login(&w, &[]).status.success());
    }
    w.gw.restart();
    w.client.set_code(&totp(&w.secret));
    assert!(
        !login(&w, &[]).status.success(),
        "lockout forgotten by a restart"
    );
}

#[test]
fn a_source_address_with_too_many_failures_is_locked_for_every_user() {
    if !require_tools(TOOLS) {
        return;
    }
    let w = World::start(|b| b.auth_line("max_failures = 3"));
    let other = gen_ed25519(w.keys.path(), "scanner");
    for user in ["root", "admin", "guest"] {
        let scanner = SshClient::new(&other, user, &w.gw, &[]);
        assert!(!scanner
            .run(&["-b", "127.0.0.3", "gw", "targets"])
            .status
            .success());
    }
    let lock =
        w.gw.wait_for_event_named("auth.lockout", Duration::from_secs(5))
            .unwrap();
    assert_eq!(lock["subject"], "source:127.0.0.3");
    // alice, with the right key and code, is refused from that address ...
    assert!(!login(&w, &["-b", "127.0.0.3"]).status.success());
    // ... and admitted from another.
    let ok = login(&w, &["-b", "127.0.0.1"]);
    assert!(ok.status.success(), "{}", stderr(&ok));
}

#[test]
fn mfa_lease_admits_a_second_login_without_a_code() {
    if !require_tools(TOOLS) {
        return;
    }
    let w = World::start(|b| b);
    assert!(login(&w, &[]).status.success());
    assert!(login(&w, &[]).status.success());
    assert_eq!(
        w.client.askpass_invocations(),
        1,
        "the lease should skip the second prompt"
    );
    let logins = w.gw.events("login");
    assert_eq!(logins.len(), 2);
    assert_eq!(logins[0]["admitted_by"], "code");
    assert_eq!(logins[1]["admitted_by"], "lease");
}

#[test]
fn an_expired_lease_asks_for_a_code_again() {
    if !require_tools(TOOLS) {
        return;
    }
    let w = World::start(|b| b.auth_line("mfa_lease = \"2s\""));
    assert!(login(&w, &[]).status.success());
    std::thread::sleep(Duration::from_millis(2500));
    w.client.set_code(&w.next_code());
    assert!(login(&w, &[]).status.success());
    assert_eq!(w.client.askpass_invocations(), 2);
    let logins = w.gw.events("login");
    assert_eq!(logins[1]["admitted_by"], "code");
}

#[test]
fn a_lease_is_bound_to_the_source_address() {
    if !require_tools(TOOLS) {
        return;
    }
    let w = World::start(|b| b);
    assert!(login(&w, &["-b", "127.0.0.1"]).status.success());
    w.client.set_code(&w.next_code());
    assert!(login(&w, &["-b", "127.0.0.2"]).status.success());
    assert_eq!(
        w.client.askpass_invocations(),
        2,
        "a lease from 127.0.0.1 admitted 127.0.0.2"
    );
}

#[test]
fn a_user_without_an_enrolled_secret_is_told_to_ask_an_administrator() {
    if !require_tools(TOOLS) {
        return;
    }
    let keys = tempfile::tempdir().unwrap();
    let bob = gen_ed25519(keys.path(), "bob");
    let w = World::start(|b| b.user("bob", &["web"], &[&bob.public_line]));
    let client = SshClient::new(&bob, "bob", &w.gw, &[]);
    let out = client.run(&["-o", "NumberOfPasswordPrompts=1", "gw", "targets"]);
    assert!(!out.status.success());
    let prompts = client.askpass_prompts().join("\n");
    assert!(
        prompts.contains("ask an administrator") && prompts.contains("gatehouse user enroll bob"),
        "{prompts}"
    );
    assert!(w
        .gw
        .wait_for_event(
            |e| e["reason"] == "user not enrolled",
            Duration::from_secs(5)
        )
        .is_some());
}

#[test]
fn password_authentication_is_not_offered() {
    if !require_tools(TOOLS) {
        return;
    }
    let w = World::start(|b| b);
    let out = w
        .client
        .run(&["-o", "PreferredAuthentications=password", "gw", "targets"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("Permission denied (publickey)"), "{err}");
    assert!(!err.contains("password"), "{err}");
}
