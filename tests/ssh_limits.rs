//! Bounded and concurrent: the authentication deadline, the connection cap,
//! and a stalled session that neither stalls another nor grows the gateway.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::world::{stderr, stdout, World};
use common::*;

const TOOLS: &[&str] = &["ssh", "sshd", "ssh-keygen", "oathtool"];

/// Reads the server's SSH identification line (or times out).
fn banner(s: &mut TcpStream, timeout: Duration) -> Option<String> {
    s.set_read_timeout(Some(timeout)).ok()?;
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).ok()?;
    (n > 0).then(|| String::from_utf8_lossy(&buf[..n]).to_string())
}

#[test]
fn an_unauthenticated_connection_is_closed_at_the_deadline() {
    let keys = tempfile::tempdir().unwrap();
    let key = gen_ed25519(keys.path(), "alice");
    let gw = GatehouseBuilder::new()
        .gateway_line("auth_timeout = \"2s\"")
        .user("alice", &[], &[&key.public_line])
        .build()
        .start();
    let mut s = TcpStream::connect(("127.0.0.1", gw.port)).unwrap();
    let b = banner(&mut s, Duration::from_secs(5)).expect("banner");
    assert!(b.starts_with("SSH-2.0-gatehouse"), "{b}");
    // Say nothing more: the gateway must hang up by itself.
    let t0 = Instant::now();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    let took = t0.elapsed();
    assert!(
        took < Duration::from_secs(8),
        "connection held for {took:?}"
    );
    assert!(
        took >= Duration::from_millis(1500),
        "closed too early: {took:?}"
    );
}

#[test]
fn connections_beyond_the_cap_wait_for_a_free_slot() {
    let keys = tempfile::tempdir().unwrap();
    let key = gen_ed25519(keys.path(), "alice");
    let gw = GatehouseBuilder::new()
        .gateway_line("max_connections = 2")
        .user("alice", &[], &[&key.public_line])
        .build()
        .start();
    let mut a = TcpStream::connect(("127.0.0.1", gw.port)).unwrap();
    let mut b = TcpStream::connect(("127.0.0.1", gw.port)).unwrap();
    assert!(banner(&mut a, Duration::from_secs(5)).is_some());
    assert!(banner(&mut b, Duration::from_secs(5)).is_some());
    let mut c = TcpStream::connect(("127.0.0.1", gw.port)).unwrap();
    assert!(
        banner(&mut c, Duration::from_millis(1500)).is_none(),
        "a third connection was served beyond the cap"
    );
    drop(a);
    assert!(
        banner(&mut c, Duration::from_secs(5)).is_some(),
        "the waiting connection was not served after a slot freed"
    );
}

#[test]
fn a_stalled_session_neither_stalls_another_nor_grows_the_gateway() {
    if !require_tools(TOOLS) {
        return;
    }
    let w = World::start(|b| b);
    let baseline = w.gw.rss_kib();
    // Session A: the target writes as fast as it can; the client never reads.
    let mut stalled = w
        .client
        .jump(&w.login, "web-1", &["cat /dev/zero"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(3));
    // Session B, meanwhile: answers at once.
    let t0 = Instant::now();
    let out = w
        .client
        .run_jump(&w.login, "web-1", &["echo still-responsive"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), "still-responsive");
    assert!(
        t0.elapsed() < Duration::from_secs(10),
        "second session took {:?}",
        t0.elapsed()
    );
    let mut peak = 0;
    for _ in 0..10 {
        peak = peak.max(w.gw.rss_kib());
        std::thread::sleep(Duration::from_millis(200));
    }
    let _ = stalled.kill();
    let _ = stalled.wait();
    eprintln!("gateway RSS: baseline {baseline} KiB, peak while stalled {peak} KiB");
    assert!(
        peak < baseline + 32 * 1024,
        "RSS grew from {baseline} to {peak} KiB with a stalled reader"
    );
}

#[test]
fn stdin_eof_reaches_the_target() {
    if !require_tools(TOOLS) {
        return;
    }
    let w = World::start(|b| b);
    let mut child = w
        .client
        .jump(&w.login, "web-1", &["wc -c"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(&vec![b'x'; 100_000]).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), "100000");
}
