//! A slow recorder slows the session instead of growing memory or dropping
//! data. Its own test binary: the throttle is the test-only environment
//! variable `GATEHOUSE_TEST_RECORDER_THROTTLE_BPS`, which the daemon
//! inherits from this process.

mod common;

use std::io::Read;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::world::{stderr, stdout, World};
use common::*;

const TOOLS: &[&str] = &["ssh", "sshd", "ssh-keygen", "oathtool"];

#[test]
fn a_slow_recorder_slows_a_large_transfer_and_bounds_memory() {
    if !require_tools(TOOLS) {
        return;
    }
    const SIZE: u64 = 32 << 20;
    /// Plaintext bytes per second the recorder may write: 32 MiB of output
    /// is ~43 MiB of base64 events, so about 5 s at least.
    const BPS: u64 = 8 << 20;
    const RSS_BOUND_KIB: u64 = 64 * 1024;
    // This binary runs only this test, so the variable affects nothing else.
    std::env::set_var("GATEHOUSE_TEST_RECORDER_THROTTLE_BPS", BPS.to_string());
    let w = World::start(|b| b);
    std::env::remove_var("GATEHOUSE_TEST_RECORDER_THROTTLE_BPS");
    assert!(
        w.gw.stderr().contains("throttled"),
        "the daemon did not see the throttle"
    );
    let pid = w.gw.pid();
    let done = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(AtomicU64::new(0));
    let sampler = {
        let (done, peak) = (done.clone(), peak.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                if let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
                    if let Some(kib) = s
                        .lines()
                        .find(|l| l.starts_with("VmRSS:"))
                        .and_then(|l| l.split_whitespace().nth(1))
                        .and_then(|v| v.parse::<u64>().ok())
                    {
                        peak.fetch_max(kib, Ordering::Relaxed);
                    }
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    let mut child = w
        .client
        .jump(&w.login, "web-1", &[&format!("head -c {SIZE} /dev/zero")])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut so = child.stdout.take().unwrap();
    let t0 = Instant::now();
    let mut total = 0u64;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = so.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        total += n as u64;
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "stalled at {total}"
        );
    }
    let status = child.wait().unwrap();
    let elapsed = t0.elapsed();
    done.store(true, Ordering::Relaxed);
    sampler.join().unwrap();
    assert!(status.success());
    assert_eq!(total, SIZE, "nothing lost on the way");
    let peak = peak.load(Ordering::Relaxed);
    eprintln!("{SIZE} bytes in {elapsed:?} with the recorder at {BPS} B/s; peak RSS {peak} KiB");
    assert!(
        elapsed >= Duration::from_secs(3),
        "the session was not slowed by the recorder ({elapsed:?})"
    );
    assert!(
        peak > 0 && peak < RSS_BOUND_KIB,
        "gateway RSS peaked at {peak} KiB"
    );

    // Everything is in the recording.
    let started =
        w.gw.wait_for_event_named("recording.started", Duration::from_secs(5))
            .unwrap();
    let id = started["recording_id"].as_str().unwrap().to_string();
    w.gw.wait_for_event(
        |e| e["event"] == "recording.finished" && e["recording_id"] == id.as_str(),
        Duration::from_secs(30),
    )
    .expect("recording finished");
    let key = w.gw.setup().auditor_key().display().to_string();
    let out =
        w.gw.setup()
            .cli(&["recordings", "show", &id, "-i", &key, "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    use base64::Engine;
    let mut recorded = 0u64;
    for line in stdout(&out).lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        if v["type"] == "stdout" {
            recorded += match (v["text"].as_str(), v["base64"].as_str()) {
                (Some(t), _) => t.len() as u64,
                (_, Some(b)) => base64::engine::general_purpose::STANDARD
                    .decode(b)
                    .unwrap()
                    .len() as u64,
                _ => 0,
            };
        }
    }
    assert_eq!(recorded, SIZE, "every byte recorded");
}
