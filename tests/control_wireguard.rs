//! `gatehouse lock device KEY` with real wireguard-go devices in network
//! namespaces: the device's live session ends within a second, its new
//! logins are refused with the reason, and the same user's other device is
//! untouched.

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use common::netns::{self, WgWorld};
use common::world::{stderr, stdout};
use common::{run_with_timeout, wait_until, ChildGuard};
use serde_json::Value;

const SSH_TIMEOUT: Duration = Duration::from_secs(90);

#[test]
fn a_device_lock_ends_that_devices_sessions_and_refuses_it_while_another_device_works() {
    let Some(lab) = netns::enter(
        "a_device_lock_ends_that_devices_sessions_and_refuses_it_while_another_device_works",
        2,
    ) else {
        return;
    };
    let w = WgWorld::start(lab, 2, |b| b);
    let _d0 = w.connect(0);
    let _d1 = w.connect(1);
    // `-tt` belongs before the destination.
    let jump = format!("alice@{}", netns::TUNNEL_GATEWAY);
    let dest = format!("{}@web-1", w.login);
    let mut cmd = w.ssh(
        0,
        &[
            "-tt",
            "-J",
            &jump,
            &dest,
            "for i in $(seq 1 600); do echo tick-$i; sleep 0.2; done",
        ],
    );
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut session = ChildGuard::spawn(&mut cmd);
    let key0 = w.devices[0].public_key.clone();
    let mut listed = Vec::new();
    assert!(
        wait_until(Duration::from_secs(60), || {
            let out = w.gw.setup().cli(&["sessions", "--json"]);
            listed = serde_json::from_slice::<Vec<Value>>(&out.stdout).unwrap_or_default();
            listed.len() == 1
        }),
        "the tunnelled session was not listed: {listed:?}"
    );
    assert_eq!(listed[0]["device"], key0.as_str(), "{listed:?}");
    let t = Instant::now();
    let out =
        w.gw.setup()
            .cli(&["lock", "device", &key0, "--reason", "laptop stolen"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        session.wait_timeout(Duration::from_secs(3)).is_some(),
        "the device's session outlived the lock"
    );
    assert!(t.elapsed() < Duration::from_secs(3));
    // Device 0 is refused, with the reason; device 1 (same user) logs in.
    w.client.set_option("LogLevel", "INFO");
    w.client.set_code(&w.next_code());
    let out = run_with_timeout(&mut w.jump(0, &["echo", "from-locked"]), SSH_TIMEOUT)
        .expect("ssh finished");
    assert!(!stdout(&out).contains("from-locked"));
    assert!(
        stderr(&out).contains("this WireGuard device is locked by an administrator: laptop stolen"),
        "{}",
        stderr(&out)
    );
    let out = run_with_timeout(&mut w.jump(1, &["echo", "from-other"]), SSH_TIMEOUT)
        .expect("ssh finished");
    assert!(
        stdout(&out).contains("from-other"),
        "the other device was refused: {}",
        stderr(&out)
    );
}
