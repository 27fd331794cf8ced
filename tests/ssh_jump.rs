//! `ssh -J alice@gatehouse LOGIN@web-1` with the stock OpenSSH tools: exec,
//! PTY shells, scp, sftp, rsync, large transfers, environment, the gateway's
//! own menu and help — everything relayed to a real sshd target.

mod common;

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::world::{stderr, stdout, World};
use common::*;

const TOOLS: &[&str] = &["ssh", "sshd", "ssh-keygen", "oathtool"];

fn sha256(path: &std::path::Path) -> String {
    let out = Command::new("sha256sum")
        .arg(path)
        .output()
        .expect("sha256sum");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

fn random_file(path: &std::path::Path, bytes: usize) {
    let mut f = std::fs::File::create(path).unwrap();
    let mut rng = std::fs::File::open("/dev/urandom").unwrap();
    let mut buf = vec![0u8; bytes];
    rng.read_exact(&mut buf).unwrap();
    f.write_all(&buf).unwrap();
}

#[test]
fn proxyjump_exec_relays_stdout_stderr_and_exit_status() {
    if !require_tools(TOOLS) {
        return;
    }
    let w = World::start(|b| b);
    let out = w.client.run_jump(
        &w.login,
        "web-1",
        &["echo hello-from-target; echo oops >&2; exit 7"],
    );
    assert_eq!(out.status.code(), Some(7), "stderr: {}", stderr(&out));
    assert_eq!(stdout(&out).trim(), "hello-from-target");
    assert!(stderr(&out).contains("oops"), "stderr: {}", stderr(&out));
    let start =
        w.gw.wait_for_event_named("session.start", Duration::from_secs(5))
            .expect("session.start");
    assert_eq!(start["user"], "alice");
    assert_eq!(start["target"], "web-1");
    assert_eq!(start["login"], w.login.as_str());
    assert_eq!(start["admitted_by"], "code");
    let end = w.session_end();
    assert_eq!(end["exit_status"], 7);
    assert!(end["bytes_down"].as_u64().unwrap() >= "hello-from-target\noops\n".len() as u64);
    assert_eq!(end["session_id"], start["session_id"]);
}

#[test]
fn proxyjump_shell_gets_a_pty_and_window_changes() {
    if !require_tools(&[TOOLS, &["tmux"]].concat()) {
        return;
    }
    let w = World::start(|b| b);
    let sock = format!("gh-{}", std::process::id());
    let ssh_cmd = format!(
        "ssh -F {} -J gw {}@web-1",
        w.client.config_path().display(),
        w.login
    );
    let askpass = w.client.dir().join("askpass.sh");
    let tmux = |args: &[&str]| {
        Command::new("tmux")
            .args(["-L", &sock, "-f", "/dev/null"])
            .args(args)
            .output()
            .expect("tmux")
    };
    let askpass_env = format!("SSH_ASKPASS={}", askpass.display());
    let started = tmux(&[
        "new-session",
        "-d",
        "-x",
        "90",
        "-y",
        "25",
        "-e",
        &askpass_env,
        "-e",
        "SSH_ASKPASS_REQUIRE=force",
        "-e",
        "DISPLAY=:0",
        &ssh_cmd,
    ]);
    assert!(started.status.success(), "{}", stderr(&started));
    struct Kill(String);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = Command::new("tmux")
                .args(["-L", &self.0, "kill-server"])
                .output();
        }
    }
    let _kill = Kill(sock.clone());
    let screen = || stdout(&tmux(&["capture-pane", "-p", "-t", "0"]));
    let shell_ready = wait_until(Duration::from_secs(20), || {
        tmux(&["send-keys", "-t", "0", "echo READY-$((40+2))", "Enter"]);
        std::thread::sleep(Duration::from_millis(300));
        screen().contains("READY-42")
    });
    assert!(
        shell_ready,
        "no shell prompt through the jump:\n{}\n{}",
        screen(),
        w.gw.stderr()
    );
    tmux(&["send-keys", "-t", "0", "clear; tty; stty size", "Enter"]);
    assert!(
        wait_until(Duration::from_secs(10), || screen().contains("25 90")),
        "pty size not relayed:\n{}",
        screen()
    );
    assert!(
        screen().contains("/dev/pts/"),
        "no pty on the target:\n{}",
        screen()
    );
    tmux(&["resize-window", "-t", "0", "-x", "120", "-y", "30"]);
    std::thread::sleep(Duration::from_millis(500));
    tmux(&["send-keys", "-t", "0", "clear; stty size", "Enter"]);
    assert!(
        wait_until(Duration::from_secs(10), || screen().contains("30 120")),
        "window change not relayed:\n{}",
        screen()
    );
    tmux(&["send-keys", "-t", "0", "exit", "Enter"]);
    let end = w.session_end();
    assert_eq!(end["user"], "alice");
}

#[test]
fn scp_upload_and_download_round_trip_with_checksums() {
    if !require_tools(&[TOOLS, &["scp", "sha256sum"]].concat()) {
        return;
    }
    let w = World::start(|b| b);
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("payload.bin");
    random_file(&src, 3 * 1024 * 1024 + 17);
    let remote = dir.path().join("remote.bin");
    let back = dir.path().join("back.bin");
    let up = run_checked_timeout(
        &mut w.client.scp_command(&[
            "-J",
            "gw",
            src.to_str().unwrap(),
            &format!("{}@web-1:{}", w.login, remote.display()),
        ]),
        DEFAULT_COMMAND_TIMEOUT,
    );
    assert!(up.status.success(), "scp upload: {}", stderr(&up));
    let down = run_checked_timeout(
        &mut w.client.scp_command(&[
            "-J",
            "gw",
            &format!("{}@web-1:{}", w.login, remote.display()),
            back.to_str().unwrap(),
        ]),
        DEFAULT_COMMAND_TIMEOUT,
    );
    assert!(down.status.success(), "scp download: {}", stderr(&down));
    assert_eq!(sha256(&src), sha256(&remote));
    assert_eq!(sha256(&src), sha256(&back));
    // The second copy was admitted by the MFA lease, not a second code.
    assert_eq!(w.client.askpass_invocations(), 1);
}

#[test]
fn sftp_put_and_get_round_trip_with_checksums() {
    if !require_tools(&[TOOLS, &["sftp", "sha256sum"]].concat()) {
        return;
    }
    let w = World::start(|b| b);
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("a.bin");
    random_file(&src, 2 * 1024 * 1024 + 5);
    let remote = dir.path().join("remote-sftp.bin");
    let back = dir.path().join("back.bin");
    let batch = format!(
        "put {} {}\nget {} {}\nls -l {}\n",
        src.display(),
        remote.display(),
        remote.display(),
        back.display(),
        remote.display()
    );
    let mut child = w
        .client
        .sftp_command(&["-J", "gw", &format!("{}@web-1", w.login)])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(batch.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "sftp: {}", stderr(&out));
    assert_eq!(sha256(&src), sha256(&remote));
    assert_eq!(sha256(&src), sha256(&back));
}

#[test]
fn rsync_over_the_jump_round_trips_with_checksums() {
    if !require_tools(&[TOOLS, &["rsync", "sha256sum"]].concat()) {
        return;
    }
    let w = World::start(|b| b);
    let dir = tempfile::tempdir().unwrap();
    let srcdir = dir.path().join("src");
    std::fs::create_dir(&srcdir).unwrap();
    for i in 0..5 {
        random_file(&srcdir.join(format!("f{i}")), 100_000 * (i + 1));
    }
    let dest = dir.path().join("dest");
    let out = run_checked_timeout(
        &mut w.client.rsync_command(&[
            "-a",
            &format!("{}/", srcdir.display()),
            &format!("{}@web-1:{}/", w.login, dest.display()),
        ]),
        DEFAULT_COMMAND_TIMEOUT,
    );
    assert!(out.status.success(), "rsync: {}", stderr(&out));
    for i in 0..5 {
        let name = format!("f{i}");
        assert_eq!(
            sha256(&srcdir.join(&name)),
            sha256(&dest.join(&name)),
            "{name}"
        );
    }
}

#[test]
fn one_gib_transfer_completes_with_gateway_rss_bounded() {
    if !require_tools(TOOLS) {
        return;
    }
    const GIB: u64 = 1 << 30;
    // The relay keeps at most a few channel windows (2 MiB each) and bounded
    // queues per session; 64 MiB leaves room for the allocator and runtime.
    const RSS_BOUND_KIB: u64 = 64 * 1024;
    let w = World::start(|b| b);
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
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    let mut child = w
        .client
        .jump(&w.login, "web-1", &[&format!("head -c {GIB} /dev/zero")])
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
        assert!(buf[..n].iter().all(|&b| b == 0), "corrupted data");
        total += n as u64;
        assert!(
            t0.elapsed() < Duration::from_secs(240),
            "transfer too slow: {total} bytes"
        );
    }
    let status = child.wait().unwrap();
    done.store(true, Ordering::Relaxed);
    sampler.join().unwrap();
    assert!(status.success());
    assert_eq!(total, GIB);
    let peak = peak.load(Ordering::Relaxed);
    eprintln!("1 GiB in {:?}, gateway peak RSS {peak} KiB", t0.elapsed());
    assert!(
        peak > 0 && peak < RSS_BOUND_KIB,
        "gateway RSS peaked at {peak} KiB"
    );
    let end = w.session_end();
    assert!(end["bytes_down"].as_u64().unwrap() >= GIB);
}

#[test]
fn environment_passes_only_what_the_role_allows() {
    if !require_tools(TOOLS) {
        return;
    }
    let w = World::start(|b| b);
    let out = run_checked_timeout(
        w.client
            .jump_with(
                &["-o", "SendEnv=LANG", "-o", "SendEnv=GH_TEST_SECRET"],
                &w.login,
                "web-1",
                &["echo \"lang=$LANG secret=$GH_TEST_SECRET\""],
            )
            .env("LANG", "C.UTF-8")
            .env("GH_TEST_SECRET", "leaked"),
        DEFAULT_COMMAND_TIMEOUT,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    // sshd accepts GH_TEST_* (see the harness), so only gatehouse can stop it.
    assert_eq!(stdout(&out).trim(), "lang=C.UTF-8 secret=");
}

#[test]
fn gateway_command_prints_how_to_reach_targets() {
    if !require_tools(TOOLS) {
        return;
    }
    let w = World::start(|b| b);
    let out = w.client.run(&["gw", "targets"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("ssh -J alice@"), "{text}");
    assert!(text.contains("web-1") && text.contains(&w.login), "{text}");
    let other = w.client.run(&["gw", "uptime"]);
    assert_eq!(other.status.code(), Some(2));
    assert!(
        stderr(&other).contains("runs no commands"),
        "{}",
        stderr(&other)
    );
}

#[test]
fn gateway_menu_lists_targets_and_connects_to_the_choice() {
    if !require_tools(TOOLS) {
        return;
    }
    let w = World::start(|b| b);
    let mut guard = w.client.spawn(&["-tt", "gw"]);
    let mut stdin = guard.child().stdin.take().unwrap();
    let mut out = guard.child().stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<Vec<u8>>();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = out.read(&mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let mut seen = String::new();
    let wait_for = |needle: &str, seen: &mut String| {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !seen.contains(needle) && Instant::now() < deadline {
            if let Ok(chunk) = rx.recv_timeout(Duration::from_millis(200)) {
                seen.push_str(&String::from_utf8_lossy(&chunk));
            }
        }
        seen.contains(needle)
    };
    assert!(wait_for("Choose a number", &mut seen), "no menu: {seen}");
    assert!(
        seen.contains(&format!("1) {}@web-1", w.login)),
        "menu: {seen}"
    );
    stdin.write_all(b"1\r").unwrap();
    assert!(wait_for("Connecting to", &mut seen), "{seen}");
    std::thread::sleep(Duration::from_millis(500));
    stdin.write_all(b"echo MENU-$((6*7))\r").unwrap();
    assert!(
        wait_for("MENU-42", &mut seen),
        "no shell after choosing: {seen}\n{}",
        w.gw.stderr()
    );
    stdin.write_all(b"exit\r").unwrap();
    let start =
        w.gw.wait_for_event_named("session.start", Duration::from_secs(5))
            .unwrap();
    assert_eq!(start["target"], "web-1");
}
