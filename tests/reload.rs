//! Reloading the configuration without a restart (SIGHUP): an invalid file
//! or a restart-only change changes nothing and says why; a valid file
//! applies to the next login; the sessions it no longer allows end with the
//! reason while every other one, a 1 GiB transfer included, goes on; and
//! WireGuard devices are added and removed without touching the others.

mod common;

use std::io::{Read, Write};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::netns;
use common::world::{stderr, stdout, World};
use common::*;

const TOOLS: &[&str] = &["ssh", "sshd", "ssh-keygen", "oathtool", "sha256sum"];

/// Sends SIGHUP and waits for the reload's audit event (`config.reload`
/// or `config.reload_failed`) that comes after the ones already there.
fn hup(w: &World) -> serde_json::Value {
    hup_gw(&w.gw)
}

fn reload_events(gw: &Gatehouse) -> Vec<serde_json::Value> {
    gw.audit_events()
        .into_iter()
        .filter(|e| e["event"] == "config.reload" || e["event"] == "config.reload_failed")
        .collect()
}

fn hup_gw(gw: &Gatehouse) -> serde_json::Value {
    let before = reload_events(gw).len();
    assert!(gw.signal("HUP"), "cannot signal gatehouse");
    let mut found = None;
    wait_until(Duration::from_secs(15), || {
        found = reload_events(gw).into_iter().nth(before);
        found.is_some()
    });
    found.unwrap_or_else(|| panic!("no reload event after SIGHUP; stderr:\n{}", gw.stderr()))
}

/// The config text without the `[[users]]` block of `name`.
fn without_user(text: &str, name: &str) -> String {
    let blocks: Vec<&str> = text.split("\n\n").collect();
    let header = format!("[[users]]\nname = {}", toml_str(name));
    let kept: Vec<&str> = blocks
        .into_iter()
        .filter(|b| !b.trim_start().starts_with(&header))
        .collect();
    assert!(kept.len() < text.split("\n\n").count(), "no user {name}");
    kept.join("\n\n")
}

/// alice's `echo` through the gateway to web-1 (by lease or code).
fn alice_reaches_web1(w: &World) -> std::process::Output {
    w.client
        .run_jump(&w.login, "web-1", &["echo", "still-here"])
}

/// A second person, bob (role `web`), with his own key and client.
struct Bob {
    client: SshClient,
    key: KeyPair,
    secret: String,
}

fn bob_key(w: &World) -> KeyPair {
    gen_ed25519(w.keys.path(), "bob")
}

/// Adds bob to the config file (not reloaded yet), enrolls him and makes
/// his client.
fn add_bob(w: &World, key: KeyPair) -> Bob {
    let setup = w.gw.setup();
    let b = setup.builder().user("bob", &["web"], &[&key.public_line]);
    setup.rewrite(&b);
    let secret = setup.enroll("bob");
    let client = SshClient::new(&key, "bob", &w.gw, &["web-1"]);
    client.set_code(&totp(&secret));
    Bob {
        client,
        key,
        secret,
    }
}

#[test]
fn an_invalid_file_changes_nothing_and_its_errors_carry_file_line_col() {
    if !require_tools(TOOLS) {
        return;
    }
    let w = World::start(|b| b);
    assert!(alice_reaches_web1(&w).status.success());
    let good = w.gw.setup().config_text();
    // alice removed AND an error: nothing of it may apply.
    let broken = without_user(&good, "alice") + "\n[[roles]]\nname = \"x\"\nlogins = 5\n";
    w.gw.setup().write_config(&broken);
    let ev = hup(&w);
    assert_eq!(ev["event"], "config.reload_failed", "{ev}");
    assert_eq!(ev["reason"], "invalid", "{ev}");
    assert_eq!(ev["by"], "SIGHUP", "{ev}");
    let errors = ev["errors"].as_str().unwrap_or_default();
    let file = w.gw.config_path().display().to_string();
    // file:line:col of the bad `logins`.
    let line = broken
        .lines()
        .position(|l| l.starts_with("logins = 5"))
        .unwrap()
        + 1;
    assert!(
        errors.contains(&format!("{file}:{line}:")),
        "no {file}:{line}:COL in {errors:?}"
    );
    // Still running, on the old file: alice (gone from the new one) works.
    let out = alice_reaches_web1(&w);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("still-here"));
    assert!(w.gw.events("config.reload").is_empty());
    // Putting the good file back is a reload like any other.
    w.gw.setup().write_config(&good);
    assert_eq!(hup(&w)["event"], "config.reload");
}

#[test]
fn a_restart_only_change_is_refused_naming_the_fields_and_changes_nothing() {
    if !require_tools(TOOLS) {
        return;
    }
    let w = World::start(|b| b);
    let setup = w.gw.setup();
    let good = setup.config_text();
    let port = setup.port();
    let other = free_port();
    // A new listen address and recordings directory, and alice removed.
    let text = without_user(&good, "alice")
        .replace(&format!("127.0.0.1:{port}"), &format!("127.0.0.1:{other}"))
        .replace(
            "[recordings]\n",
            &format!(
                "[recordings]\ndir = {}\n",
                toml_str(&setup.dir().join("elsewhere").display().to_string())
            ),
        );
    setup.write_config(&text);
    let ev = hup(&w);
    assert_eq!(ev["event"], "config.reload_failed", "{ev}");
    assert_eq!(ev["reason"], "restart_required", "{ev}");
    let fields = ev["fields"].as_str().unwrap_or_default();
    assert!(fields.contains("gateway.ssh_listen"), "{ev}");
    assert!(fields.contains("recordings.dir"), "{ev}");
    assert!(
        ev["errors"]
            .as_str()
            .unwrap_or_default()
            .contains("restart"),
        "{ev}"
    );
    // Nothing applied: the old port still answers, alice still gets in.
    assert!(port_is_listening(port));
    assert!(!port_is_listening(other));
    let out = alice_reaches_web1(&w);
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn an_added_user_logs_in_after_sighup_without_a_restart() {
    if !require_tools(TOOLS) {
        return;
    }
    let w = World::start(|b| b);
    let pid = w.gw.pid();
    let bob = add_bob(&w, bob_key(&w));
    // In the file, not yet in force: refused.
    let out = bob.client.run_jump(&w.login, "web-1", &["echo", "bob-in"]);
    assert!(!out.status.success(), "bob got in before the reload");
    let ev = hup(&w);
    assert_eq!(ev["event"], "config.reload", "{ev}");
    assert_eq!(ev["users"], 2, "{ev}");
    assert_eq!(ev["roles"], 1, "{ev}");
    assert_eq!(ev["targets"], 1, "{ev}");
    // A new code step: the refused try above may have spent none, but a
    // code is accepted once.
    bob.client.set_code(&totp_step(&bob.secret, 1));
    let out = bob.client.run_jump(&w.login, "web-1", &["echo", "bob-in"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("bob-in"));
    assert_eq!(w.gw.pid(), pid, "the same process");
    let _ = &bob.key;
}

/// Starts `ssh -J` to web-1 running a loop that prints a line per 100 ms
/// for a minute; returns the child with stdout piped.
fn ticking_session(client: &SshClient, login: &str) -> ChildGuard {
    let mut cmd = client.jump(
        login,
        "web-1",
        &["sh -c 'i=0; while [ $i -lt 600 ]; do echo tick-$i; i=$((i+1)); sleep 0.1; done'"],
    );
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    ChildGuard::spawn(&mut cmd)
}

/// Reads `child`'s stdout until `needle` shows up (or `t` passes).
fn read_until(child: &mut ChildGuard, needle: &str, t: Duration) -> bool {
    let Some(mut out) = child.child().stdout.take() else {
        return false;
    };
    let (tx, rx) = std::sync::mpsc::channel();
    let needle = needle.to_string();
    std::thread::spawn(move || {
        let mut seen = String::new();
        let mut buf = [0u8; 4096];
        loop {
            match out.read(&mut buf) {
                Ok(0) | Err(_) => {
                    let _ = tx.send(false);
                    return;
                }
                Ok(n) => {
                    seen.push_str(&String::from_utf8_lossy(&buf[..n]));
                    if seen.contains(&needle) {
                        let _ = tx.send(true);
                        // Keep draining so the session never blocks.
                        while matches!(out.read(&mut buf), Ok(n) if n > 0) {}
                        return;
                    }
                }
            }
        }
    });
    rx.recv_timeout(t).unwrap_or(false)
}

#[test]
fn removing_a_user_ends_her_session_with_the_reason_and_no_other() {
    if !require_tools(TOOLS) {
        return;
    }
    let w = World::start(|b| b);
    let bob = add_bob(&w, bob_key(&w));
    assert_eq!(hup(&w)["event"], "config.reload");
    let mut alice = ticking_session(&w.client, &w.login);
    assert!(read_until(&mut alice, "tick-3", Duration::from_secs(30)));
    let mut bobs = ticking_session(&bob.client, &w.login);
    // bob's output must keep flowing while we wait for his end.
    let bob_out = bobs.child().stdout.take().expect("stdout");
    let drain = std::thread::spawn(move || {
        let mut s = String::new();
        let mut r = bob_out;
        let _ = r.read_to_string(&mut s);
        s
    });
    let bob_err = bobs.child().stderr.take().expect("stderr");
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let mut r = bob_err;
        let _ = r.read_to_string(&mut s);
        s
    });
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        bobs.child().try_wait().ok().flatten().is_none(),
        "bob's session ended by itself"
    );
    // bob leaves the file.
    let text = without_user(&w.gw.setup().config_text(), "bob");
    w.gw.setup().write_config(&text);
    let t0 = Instant::now();
    let ev = hup(&w);
    assert_eq!(ev["event"], "config.reload", "{ev}");
    assert_eq!(ev["sessions_ended"], 1, "{ev}");
    let status = bobs.wait_timeout(Duration::from_secs(5));
    let took = t0.elapsed();
    assert!(status.is_some(), "bob's session outlived the reload");
    assert!(took < Duration::from_secs(3), "bob's session took {took:?}");
    let said = err.join().unwrap_or_default();
    assert!(
        said.contains("bob was removed by a configuration reload"),
        "bob was not told why: {said:?}"
    );
    let _ = drain.join();
    // alice's session goes on.
    assert!(
        alice.child().try_wait().ok().flatten().is_none(),
        "alice's session ended too"
    );
    let out = alice_reaches_web1(&w);
    assert!(out.status.success(), "{}", stderr(&out));
}

/// A deterministic stream of bytes that does not compress (xorshift64*).
struct Noise(u64);

impl Noise {
    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            let v = self.0.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

#[test]
fn a_one_gib_transfer_survives_a_reload_midway_with_every_byte() {
    if !require_tools(TOOLS) {
        return;
    }
    const TOTAL: u64 = 1 << 30;
    const RELOAD_AT: u64 = 256 << 20;
    let w = World::start(|b| b);
    // Log in (code) before the transfer: the transfer's login is by lease.
    assert!(alice_reaches_web1(&w).status.success());
    let bob = add_bob(&w, bob_key(&w));
    // The remote side hashes what arrives.
    let mut cmd = w.client.jump(&w.login, "web-1", &["sha256sum"]);
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = ChildGuard::spawn(&mut cmd);
    let mut stdin = child.child().stdin.take().expect("stdin");
    let mut out = child.child().stdout.take().expect("stdout");
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let started = Instant::now();
    let mut hash = ring::digest::Context::new(&ring::digest::SHA256);
    let mut noise = Noise(0x9e37_79b9_7f4a_7c15);
    let mut buf = vec![0u8; 1 << 16];
    let mut sent = 0u64;
    let mut reload_event = None;
    while sent < TOTAL {
        noise.fill(&mut buf);
        stdin.write_all(&buf).expect("the transfer broke");
        hash.update(&buf);
        sent += buf.len() as u64;
        if sent == RELOAD_AT {
            // A real change (bob added) applied while bytes flow.
            reload_event = Some(hup(&w));
        }
    }
    drop(stdin);
    let status = child.wait_timeout(Duration::from_secs(300));
    let got = reader.join().unwrap_or_default();
    let want = hex(hash.finish().as_ref());
    let ev = reload_event.expect("a reload happened");
    assert_eq!(ev["event"], "config.reload", "{ev}");
    assert_eq!(ev["users"], 2, "{ev}");
    assert!(
        status.is_some_and(|s| s.success()),
        "the transfer failed: {status:?}"
    );
    assert!(
        got.starts_with(&want),
        "the target's sha256 {got:?} is not the sent stream's {want}"
    );
    eprintln!(
        "1 GiB through the gateway with a reload at 256 MiB: {:?}",
        started.elapsed()
    );
    // The reload applied: bob gets in.
    let out = bob.client.run_jump(&w.login, "web-1", &["echo", "bob-in"]);
    assert!(out.status.success(), "{}", stderr(&out));
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// `ssh -J alice@10.77.0.1 LOGIN@web-1 TICKING` through device `i`, stdout
/// and stderr piped.
fn ticking_through_device(w: &netns::WgWorld, i: usize) -> ChildGuard {
    let mut cmd = w.jump(
        i,
        &["sh -c 'i=0; while [ $i -lt 900 ]; do echo tick-$i; i=$((i+1)); sleep 0.1; done'"],
    );
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    ChildGuard::spawn(&mut cmd)
}

/// Reads `child`'s stdout in the background; the returned counter is the
/// number of bytes seen so far.
fn count_output(child: &mut ChildGuard) -> std::sync::Arc<std::sync::atomic::AtomicU64> {
    use std::sync::atomic::{AtomicU64, Ordering};
    let seen = std::sync::Arc::new(AtomicU64::new(0));
    let mut out = child.child().stdout.take().expect("stdout");
    let s = seen.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = out.read(&mut buf) {
            if n == 0 {
                return;
            }
            s.fetch_add(n as u64, Ordering::SeqCst);
        }
    });
    seen
}

#[test]
fn wireguard_devices_are_added_and_removed_live_and_the_others_see_no_new_handshake() {
    use std::sync::atomic::Ordering;
    let Some(lab) = netns::enter(
        "wireguard_devices_are_added_and_removed_live_and_the_others_see_no_new_handshake",
        3,
    ) else {
        return;
    };
    let w = netns::WgWorld::start(lab, 2, |b| b);
    let (d0, d1) = (w.devices[0].clone(), w.devices[1].clone());
    let c0 = w.connect(0);
    let c1 = w.connect(1);
    // A live session through each device (device 1's login spends the
    // next code step: a code is accepted once).
    let mut s0 = ticking_through_device(&w, 0);
    let seen0 = count_output(&mut s0);
    assert!(
        wait_until(Duration::from_secs(60), || seen0.load(Ordering::SeqCst)
            > 20),
        "no session through device 0"
    );
    w.client.set_code(&w.next_code());
    let mut s1 = ticking_through_device(&w, 1);
    let seen1 = count_output(&mut s1);
    assert!(
        wait_until(Duration::from_secs(60), || seen1.load(Ordering::SeqCst)
            > 20),
        "no session through device 1"
    );
    let hs0 = c0.latest_handshake();
    assert!(hs0 > 0, "device 0 has no handshake");
    assert!(c1.latest_handshake() > 0);

    // A third device made while gatehouse runs; the file swaps device 1
    // for it.
    let d2 = netns::peer_add(
        w.gw.setup(),
        "alice",
        2,
        &w.lab.gateway_ip(2),
        w.keys.path(),
    );
    let entry = |d: &netns::Device| {
        format!(
            "{{ public_key = \"{}\", address = \"{}\" }}",
            d.public_key, d.address
        )
    };
    let text = w.gw.setup().config_text();
    let line = text
        .lines()
        .find(|l| l.starts_with("wireguard = ["))
        .expect("alice's devices")
        .to_string();
    let text = text.replace(
        &line,
        &format!("wireguard = [{}, {}]", entry(&d0), entry(&d2)),
    );
    w.gw.setup().write_config(&text);
    let ev = hup_gw(&w.gw);
    assert_eq!(ev["event"], "config.reload", "{ev}");
    assert_eq!(ev["devices_added"], d2.public_key.as_str(), "{ev}");
    assert_eq!(ev["devices_removed"], d1.public_key.as_str(), "{ev}");

    // Device 1 stopped: its session is cut, nothing answers it any more.
    assert!(
        s1.wait_timeout(Duration::from_secs(10)).is_some(),
        "device 1's session outlived its removal"
    );
    assert_eq!(
        netns::tcp_probe(
            w.lab.client(1),
            netns::TUNNEL_GATEWAY,
            22,
            Duration::from_secs(5)
        ),
        Err(()),
        "the removed device still reaches gatehouse"
    );
    // Device 2 works, without a restart.
    let c2 = netns::WgClient::start(w.lab.client(2), &d2.conf, None, &[]);
    assert_eq!(
        netns::tcp_probe(
            w.lab.client(2),
            netns::TUNNEL_GATEWAY,
            22,
            Duration::from_secs(20)
        ),
        Ok(true),
        "the added device does not reach gatehouse"
    );
    assert!(c2.latest_handshake() > 0);
    // Device 0 never noticed: same session (no new handshake), its
    // connection still carrying output.
    let before = seen0.load(Ordering::SeqCst);
    assert!(
        wait_until(Duration::from_secs(5), || seen0.load(Ordering::SeqCst)
            > before + 20),
        "device 0's session stalled"
    );
    assert!(
        s0.child().try_wait().ok().flatten().is_none(),
        "device 0's session ended"
    );
    assert_eq!(c0.latest_handshake(), hs0, "device 0 handshook again");
    let handshakes0 =
        w.gw.events("wg.handshake")
            .into_iter()
            .filter(|e| e["public_key"] == d0.public_key.as_str())
            .count();
    assert_eq!(handshakes0, 1, "device 0 handshook again");
    let _ = &c1;
}

#[test]
fn gatehouse_reload_prints_the_errors_and_exits_64_then_applies_a_good_file() {
    if !require_tools(TOOLS) {
        return;
    }
    let w = World::start(|b| b);
    let setup = w.gw.setup();
    let good = setup.config_text();
    let bad = good.clone() + "\n[[roles]]\nname = \"x\"\nlogins = 5\n";
    setup.write_config(&bad);
    let out = setup.cli(&["reload"]);
    assert_eq!(out.status.code(), Some(64), "{}", stderr(&out));
    let line = bad
        .lines()
        .position(|l| l.starts_with("logins = 5"))
        .unwrap()
        + 1;
    let file = setup.config_path().display().to_string();
    assert!(
        stderr(&out).contains(&format!("{file}:{line}:")),
        "{}",
        stderr(&out)
    );
    let ev =
        w.gw.wait_for_event_named("config.reload_failed", Duration::from_secs(5));
    let ev = ev.expect("a config.reload_failed event");
    assert!(
        ev["by"].as_str().unwrap_or_default().contains("uid"),
        "{ev}"
    );
    // A good file: applied, summarised, audited with who asked.
    let bob = add_bob(&w, bob_key(&w));
    let out = setup.cli(&["reload"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("2 users"), "{}", stdout(&out));
    let ev =
        w.gw.wait_for_event_named("config.reload", Duration::from_secs(5));
    let ev = ev.expect("a config.reload event");
    assert!(
        ev["by"].as_str().unwrap_or_default().contains("uid"),
        "{ev}"
    );
    let out = bob.client.run_jump(&w.login, "web-1", &["echo", "bob-in"]);
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn a_role_that_no_longer_grants_the_login_ends_that_session_with_the_reason() {
    if !require_tools(TOOLS) {
        return;
    }
    let w = World::start(|b| b);
    let mut s = ticking_session(&w.client, &w.login);
    let err = s.child().stderr.take().expect("stderr");
    let said = std::thread::spawn(move || {
        let mut t = String::new();
        let mut r = err;
        let _ = r.read_to_string(&mut t);
        t
    });
    assert!(read_until(&mut s, "tick-3", Duration::from_secs(30)));
    // Role `web` now grants another login on web-1: alice stays a user
    // with the same key, only this login is gone.
    let text = w.gw.setup().config_text().replace(
        &format!("logins = [{}]", toml_str(&w.login)),
        "logins = [\"nobody-else\"]",
    );
    assert_ne!(text, w.gw.setup().config_text());
    w.gw.setup().write_config(&text);
    let ev = hup(&w);
    assert_eq!(ev["event"], "config.reload", "{ev}");
    assert_eq!(ev["sessions_ended"], 1, "{ev}");
    assert!(
        s.wait_timeout(Duration::from_secs(5)).is_some(),
        "the session outlived the reload"
    );
    let said = said.join().unwrap_or_default();
    let want = format!(
        "your access to web-1 as {} was removed by a configuration reload",
        w.login
    );
    assert!(said.contains(&want), "not told why: {said:?}");
}
