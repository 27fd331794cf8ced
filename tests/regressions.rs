//! What already holds and must stay so (issue 10 §8), tried the way a hostile
//! client would. Stock OpenSSH cannot send most of these messages, so a
//! scripted client does: russh's own client in this test (arbitrary
//! `direct-tcpip` host strings and 32-bit ports, inner logins with any bytes,
//! three code submissions released at the same moment) and paramiko for a
//! channel opened before authentication.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::world::{stderr, stdout, World};
use common::*;
use russh::client::{self, AuthResult, Handle, KeyboardInteractiveAuthResponse};
use russh::keys::{load_secret_key, PrivateKeyWithHashAlg, PublicKeyOrCertificate};

const TOOLS: &[&str] = &["ssh", "sshd", "ssh-keygen"];

struct AnyHost;

impl client::Handler for AnyHost {
    type Error = russh::Error;

    async fn check_server_key(&mut self, _: &PublicKeyOrCertificate) -> Result<bool, Self::Error> {
        Ok(true)
    }
}

fn config() -> Arc<client::Config> {
    Arc::new(client::Config {
        inactivity_timeout: Some(Duration::from_secs(30)),
        ..Default::default()
    })
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Key proven; the code prompt is pending (not answered yet).
async fn to_code_prompt(port: u16, user: &str, key: &Path) -> Handle<AnyHost> {
    let mut h = client::connect(config(), ("127.0.0.1", port), AnyHost)
        .await
        .expect("connect");
    let key = Arc::new(load_secret_key(key, None).expect("key"));
    let r = h
        .authenticate_publickey(user, PrivateKeyWithHashAlg::new(key, None))
        .await
        .expect("publickey");
    assert!(
        matches!(
            r,
            AuthResult::Failure {
                partial_success: true,
                ..
            } | AuthResult::Success
        ),
        "{r:?}"
    );
    h
}

/// Answers the code prompt; true if the login succeeded.
async fn answer(h: &mut Handle<AnyHost>, user: &str, code: &str) -> bool {
    let mut r = h
        .authenticate_keyboard_interactive_start(user, None)
        .await
        .expect("kbd-int start");
    for _ in 0..3 {
        match r {
            KeyboardInteractiveAuthResponse::Success => return true,
            KeyboardInteractiveAuthResponse::Failure { .. } => return false,
            KeyboardInteractiveAuthResponse::InfoRequest { ref prompts, .. } => {
                let answers = prompts.iter().map(|_| code.to_string()).collect();
                r = h
                    .authenticate_keyboard_interactive_respond(answers)
                    .await
                    .expect("kbd-int respond");
            }
        }
    }
    false
}

/// alice, logged in with key + code.
async fn login(w: &World, code: &str) -> Handle<AnyHost> {
    let mut h = to_code_prompt(w.gw.port, "alice", &w.key.private_path).await;
    assert!(
        answer(&mut h, "alice", code).await,
        "alice could not log in"
    );
    h
}

#[test]
fn direct_tcpip_host_and_port_variants_are_refused() {
    if !require_tools(TOOLS) {
        return;
    }
    let w = World::start(|b| b);
    let target_port = w.sshd.port;
    let rt = runtime();
    rt.block_on(async {
        let h = login(&w, &totp(&w.secret)).await;
        // The real name and port are answered (the control).
        assert!(
            h.channel_open_direct_tcpip("web-1", 22, "127.0.0.1", 5000)
                .await
                .is_ok(),
            "the approved target itself was refused"
        );
        let target_addr = format!("127.0.0.1:{target_port}");
        let variants: Vec<(String, u32)> = vec![
            ("WEB-1".into(), 22),
            ("Web-1".into(), 22),
            ("web-1.".into(), 22),
            (" web-1".into(), 22),
            ("web-1 ".into(), 22),
            ("web-1\0".into(), 22),
            ("web-1\0evil".into(), 22),
            ("web-1\n".into(), 22),
            ("127.0.0.1".into(), target_port.into()),
            ("127.0.0.1".into(), 22),
            (target_addr, 22),
            ("localhost".into(), 22),
            ("localhost".into(), target_port.into()),
            ("::1".into(), 22),
            ("[::1]".into(), 22),
            ("web-1".into(), 2222),
            ("web-1".into(), 23),
            ("web-1".into(), 0),
            ("web-1".into(), 65536 + 22),
            ("web-1".into(), u32::MAX),
            (String::new(), 22),
            (String::new(), 0),
        ];
        for (host, port) in variants {
            let r = h
                .channel_open_direct_tcpip(host.clone(), port, "127.0.0.1", 5000)
                .await;
            assert!(r.is_err(), "direct-tcpip to {host:?}:{port} was answered");
        }
    });
    let refused = w.gw.events("channel.refused");
    assert!(
        refused.len() >= 20,
        "each refusal is audited: {}",
        refused.len()
    );
}

/// Opens a jump channel to web-1 on `outer`, logs in there as `login` with
/// `key` and runs `echo inner-ok`; true only if that ran on the target.
/// (gatehouse's jump server accepts the inner key and then refuses the
/// session with a message, so "refused" means the command never ran.)
async fn inner_runs(outer: &Handle<AnyHost>, login: &str, key: &Path) -> bool {
    let ch = outer
        .channel_open_direct_tcpip("web-1", 22, "127.0.0.1", 5000)
        .await
        .expect("jump channel");
    let Ok(mut inner) = client::connect_stream(config(), ch.into_stream(), AnyHost).await else {
        return false;
    };
    let key = Arc::new(load_secret_key(key, None).expect("key"));
    let auth = tokio::time::timeout(
        Duration::from_secs(20),
        inner.authenticate_publickey(login, PrivateKeyWithHashAlg::new(key, None)),
    )
    .await;
    if !matches!(auth, Ok(Ok(AuthResult::Success))) {
        return false;
    }
    let Ok(mut ch) = inner.channel_open_session().await else {
        return false;
    };
    if ch.exec(true, "echo inner-ok").await.is_err() {
        return false;
    }
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(msg) = ch.wait().await {
            match msg {
                russh::ChannelMsg::Data { data } => out.extend_from_slice(&data),
                russh::ChannelMsg::Eof | russh::ChannelMsg::Close => break,
                _ => {}
            }
        }
    })
    .await;
    String::from_utf8_lossy(&out).contains("inner-ok")
}

#[test]
fn inner_login_variants_and_another_key_are_refused() {
    if !require_tools(TOOLS) {
        return;
    }
    let w = World::start(|b| b);
    let other = gen_ed25519(w.keys.path(), "mallory");
    let rt = runtime();
    let login = w.login.clone();
    rt.block_on(async {
        let outer = login_ok(&w).await;
        assert!(
            inner_runs(&outer, &login, &w.key.private_path).await,
            "the approved login itself was refused"
        );
        let variants = [
            login.to_uppercase(),
            format!("{}{}", login[..1].to_uppercase(), &login[1..]),
            format!(" {login}"),
            format!("{login} "),
            format!("{login}\0"),
            format!("{login}\0root"),
            format!("{login}\n"),
            format!("{login}\r\n"),
            format!("{login}@web-1"),
            String::new(),
        ];
        for v in variants {
            if v == login {
                continue;
            }
            assert!(
                !inner_runs(&outer, &v, &w.key.private_path).await,
                "inner login {v:?} was accepted"
            );
        }
        assert!(
            !inner_runs(&outer, &login, &other.private_path).await,
            "an inner login with another key was accepted"
        );
    });
    // Each variant was refused with an audit event naming the reason.
    let refused = w.gw.events("session.refused");
    assert!(refused.len() >= 9, "refusals audited: {}", refused.len());
}

async fn login_ok(w: &World) -> Handle<AnyHost> {
    login(w, &totp(&w.secret)).await
}

#[test]
fn one_code_sent_on_three_connections_at_once_is_accepted_once() {
    if !require_tools(TOOLS) {
        return;
    }
    // No lease: each connection must give the code itself.
    let w = World::start(|b| b.auth_line("mfa_lease = \"0s\""));
    let rt = runtime();
    let code = totp(&w.secret);
    let accepted = rt.block_on(async {
        let mut handles = Vec::new();
        for _ in 0..3 {
            handles.push(to_code_prompt(w.gw.port, "alice", &w.key.private_path).await);
        }
        let barrier = Arc::new(tokio::sync::Barrier::new(3));
        let tasks: Vec<_> = handles
            .into_iter()
            .map(|mut h| {
                let barrier = barrier.clone();
                let code = code.clone();
                tokio::spawn(async move {
                    barrier.wait().await;
                    let ok = answer(&mut h, "alice", &code).await;
                    (ok, h)
                })
            })
            .collect();
        let mut n = 0;
        let mut keep = Vec::new();
        for t in tasks {
            let (ok, h) = t.await.unwrap();
            n += usize::from(ok);
            keep.push(h);
        }
        n
    });
    assert_eq!(accepted, 1, "one code admitted {accepted} connections");
    assert_eq!(w.gw.events("login").len(), 1);
}

// Debian's paramiko 2.12 has no AEAD cipher: it talks to gatehouse through
// the aes256-ctr that the server offers last.
#[test]
fn a_channel_opened_before_authentication_is_never_answered() {
    // Debian's python3-paramiko (the brief's peer; not the pyenv python3).
    assert!(
        Path::new("/usr/bin/python3").exists(),
        "/usr/bin/python3 is missing"
    );
    let w = World::start(|b| b);
    let script = r#"
import socket, sys, paramiko
port = int(sys.argv[1])
s = socket.create_connection(("127.0.0.1", port))
t = paramiko.Transport(s)
t.start_client(timeout=10)
results = []
for kind, dest in (("session", None), ("direct-tcpip", ("web-1", 22))):
    try:
        ch = t.open_channel(kind, dest_addr=dest, src_addr=("127.0.0.1", 5000) if dest else None, timeout=3)
        results.append(kind + ":answered")
    except Exception as e:
        results.append(kind + ":unanswered")
print(" ".join(results))
"#;
    let out = run_checked_timeout(
        std::process::Command::new("/usr/bin/python3")
            .arg("-c")
            .arg(script)
            .arg(w.gw.port.to_string()),
        Duration::from_secs(60),
    );
    let text = stdout(&out);
    assert!(
        text.contains("session:unanswered") && text.contains("direct-tcpip:unanswered"),
        "stdout: {text}\nstderr: {}",
        stderr(&out)
    );
    assert!(w.gw.events("login").is_empty());
    assert!(w.gw.events("session.start").is_empty());
}

#[test]
fn a_client_killed_mid_session_leaves_a_finished_recording_that_verifies() {
    if !require_tools(TOOLS) {
        return;
    }
    let w = World::start(|b| b);
    let mut child = w.client.spawn(&[
        "-J",
        "gw",
        &format!("{}@web-1", w.login),
        "echo started; sleep 60",
    ]);
    let started =
        w.gw.wait_for_event_named("recording.started", Duration::from_secs(20))
            .expect("recording.started");
    let id = started["recording_id"].as_str().unwrap().to_string();
    std::thread::sleep(Duration::from_millis(500));
    // SIGKILL the client and its jump child: no goodbye of any kind.
    child.kill();
    let finished = w.gw.wait_for_event(
        |e| e["event"] == "recording.finished" && e["recording_id"] == id.as_str(),
        Duration::from_secs(30),
    );
    assert!(finished.is_some(), "the recording was never finished");
    let out = w.gw.setup().cli(&["recordings", "verify", &id]);
    assert!(
        out.status.success() && stdout(&out).contains(&format!("{id}: ok")),
        "verify: {}\n{}",
        stdout(&out),
        stderr(&out)
    );
}
