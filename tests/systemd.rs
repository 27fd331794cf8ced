//! Running under systemd, without systemd as PID 1: the real binary talks
//! sd_notify to a datagram socket this test owns (`NOTIFY_SOCKET`), with
//! `WATCHDOG_USEC` set; the unit file is rated by `systemd-analyze security`
//! and checked by `systemd-analyze verify`; `--version` names what an
//! advisory needs.

mod common;

use std::net::TcpStream;
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// One datagram from gatehouse and when it arrived.
#[derive(Debug)]
struct Msg {
    at: Instant,
    text: String,
}

impl Msg {
    fn has(&self, line: &str) -> bool {
        self.text.lines().any(|l| l == line)
    }
    fn status(&self) -> Option<&str> {
        self.text.lines().find_map(|l| l.strip_prefix("STATUS="))
    }
}

/// `gatehouse run` with `NOTIFY_SOCKET` on a socket of ours; killed on drop.
struct Notified {
    setup: GatehouseSetup,
    sock: UnixDatagram,
    child: Child,
}

impl Notified {
    fn start(env: &[(&str, &str)]) -> Notified {
        Self::spawn(GatehouseBuilder::new(), env, false)
    }

    fn start_with(builder: GatehouseBuilder, env: &[(&str, &str)]) -> Notified {
        Self::spawn(builder, env, false)
    }

    /// Through `sh -c 'WATCHDOG_PID=$$ exec gatehouse ...'`.
    fn start_via_shell(env: &[(&str, &str)]) -> Notified {
        Self::spawn(GatehouseBuilder::new(), env, true)
    }

    fn spawn(builder: GatehouseBuilder, env: &[(&str, &str)], shell: bool) -> Notified {
        let setup = builder.build();
        let path = setup.dir().join("notify.sock");
        let sock = UnixDatagram::bind(&path).expect("bind the notify socket");
        let stderr = std::fs::File::create(setup.dir().join("gatehouse.stderr")).unwrap();
        let mut cmd = setup.cli_command(&["run"]);
        cmd.env_remove("WATCHDOG_PID");
        if shell {
            let inner = cmd;
            let mut sh = Command::new("sh");
            sh.arg("-c")
                .arg("WATCHDOG_PID=$$; export WATCHDOG_PID; exec \"$@\"")
                .arg("sh")
                .arg(inner.get_program())
                .args(inner.get_args());
            for (k, v) in inner.get_envs() {
                match v {
                    Some(v) => sh.env(k, v),
                    None => sh.env_remove(k),
                };
            }
            cmd = sh;
        }
        cmd.env("NOTIFY_SOCKET", &path)
            .env_remove("WATCHDOG_USEC")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("spawn gatehouse run");
        Notified { setup, sock, child }
    }

    /// The next datagram within `timeout`, or None.
    fn recv(&self, timeout: Duration) -> Option<Msg> {
        self.sock.set_read_timeout(Some(timeout)).unwrap();
        let mut buf = vec![0u8; 4096];
        match self.sock.recv(&mut buf) {
            Ok(n) => Some(Msg {
                at: Instant::now(),
                text: String::from_utf8_lossy(&buf[..n]).into_owned(),
            }),
            Err(_) => None,
        }
    }

    /// Datagrams until `until` is true for one (included) or `timeout`.
    fn recv_until(&self, timeout: Duration, until: impl Fn(&Msg) -> bool) -> Vec<Msg> {
        let deadline = Instant::now() + timeout;
        let mut out = Vec::new();
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            let Some(m) = self.recv(left.max(Duration::from_millis(1))) else {
                break;
            };
            let done = until(&m);
            out.push(m);
            if done {
                break;
            }
        }
        out
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(self.setup.dir().join("gatehouse.stderr")).unwrap_or_default()
    }

    fn signal(&self, sig: &str) {
        assert!(send_signal(&[i64::from(self.child.id())], sig));
    }
}

impl Drop for Notified {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn ready_comes_only_once_the_ports_accept_then_status_watchdog_and_stopping_in_order() {
    // WATCHDOG_USEC = 2 s: pings expected every ~1 s.
    let mut g = Notified::start(&[("WATCHDOG_USEC", "2000000")]);
    let spawned = Instant::now();
    let first = g
        .recv(Duration::from_secs(30))
        .unwrap_or_else(|| panic!("no notification within 30 s; stderr:\n{}", g.stderr()));
    // The very first thing gatehouse says is READY=1 ...
    assert!(
        first.has("READY=1"),
        "first notification is not READY=1: {:?}",
        first.text
    );
    // ... and at that moment the SSH port and the control socket accept.
    let ssh = TcpStream::connect_timeout(
        &format!("127.0.0.1:{}", g.setup.port()).parse().unwrap(),
        Duration::from_millis(500),
    );
    assert!(ssh.is_ok(), "READY=1 but the SSH port refuses: {ssh:?}");
    let control = UnixStream::connect(g.setup.control_socket());
    assert!(
        control.is_ok(),
        "READY=1 but the control socket refuses: {control:?}"
    );
    drop((ssh, control));
    let status = first.status().expect("READY=1 carries a STATUS= line");
    assert!(
        status.starts_with("serving: ") && status.contains("live session"),
        "{status:?}"
    );
    assert!(!status.contains('\n'));
    eprintln!("READY after {:?}", first.at - spawned);

    // 6.5 s of running: STATUS= refreshed (every 5 s), WATCHDOG=1 every ~1 s.
    let running = g.recv_until(Duration::from_millis(6500), |_| false);
    let pings: Vec<Instant> = running
        .iter()
        .filter(|m| m.has("WATCHDOG=1"))
        .map(|m| m.at)
        .collect();
    assert!(
        (5..=8).contains(&pings.len()),
        "expected about 6 watchdog pings in 6.5 s at half of 2 s, got {}: {:?}",
        pings.len(),
        running.iter().map(|m| &m.text).collect::<Vec<_>>()
    );
    for w in pings.windows(2) {
        let gap = w[1] - w[0];
        assert!(
            gap >= Duration::from_millis(700) && gap <= Duration::from_millis(1400),
            "watchdog pings {gap:?} apart, expected ~1 s (half of WATCHDOG_USEC)"
        );
    }
    let statuses: Vec<&str> = running.iter().filter_map(|m| m.status()).collect();
    assert!(
        !statuses.is_empty() && statuses.iter().all(|s| s.starts_with("serving: ")),
        "no STATUS= refresh while running: {statuses:?}"
    );
    assert!(
        running
            .iter()
            .all(|m| !m.has("READY=1") && !m.has("STOPPING=1")),
        "READY/STOPPING while running"
    );

    // SIGTERM: STOPPING=1, then the process exits cleanly.
    g.signal("TERM");
    let stopping = g.recv_until(Duration::from_secs(10), |m| m.has("STOPPING=1"));
    assert!(
        stopping.last().is_some_and(|m| m.has("STOPPING=1")),
        "no STOPPING=1 within 10 s of SIGTERM: {:?}",
        stopping.iter().map(|m| &m.text).collect::<Vec<_>>()
    );
    let exited = wait_until(Duration::from_secs(30), || {
        matches!(g.child.try_wait(), Ok(Some(_)))
    });
    assert!(exited, "gatehouse still running 30 s after SIGTERM");
    let after: Vec<String> = std::iter::from_fn(|| g.recv(Duration::from_millis(50)))
        .take(100)
        .map(|m| m.text)
        .collect();
    assert!(
        after.iter().all(|t| !t.contains("READY=1")),
        "READY=1 after STOPPING=1: {after:?}"
    );
}

#[test]
fn ready_comes_only_once_the_wireguard_udp_port_is_bound() {
    let udp = free_port();
    let g = Notified::start_with(
        GatehouseBuilder::new().raw(&format!(
            "[wireguard]\nlisten = \"127.0.0.1:{udp}\"\naddress = \"10.213.7.1/24\""
        )),
        &[],
    );
    let first = g
        .recv(Duration::from_secs(30))
        .unwrap_or_else(|| panic!("no notification within 30 s; stderr:\n{}", g.stderr()));
    assert!(first.has("READY=1"), "{:?}", first.text);
    // At READY=1 the WireGuard port is taken (by gatehouse) ...
    let taken = std::net::UdpSocket::bind(("127.0.0.1", udp));
    assert!(
        taken
            .as_ref()
            .is_err_and(|e| e.kind() == std::io::ErrorKind::AddrInUse),
        "READY=1 but UDP {udp} is not bound: {taken:?}"
    );
    // ... and so is the SSH port.
    assert!(TcpStream::connect(("127.0.0.1", g.setup.port())).is_ok());
}

#[test]
fn no_watchdog_pings_when_watchdog_pid_names_another_process() {
    // WATCHDOG_PID set to another process (PID 1): the watchdog is not ours.
    let g = Notified::start(&[("WATCHDOG_USEC", "400000"), ("WATCHDOG_PID", "1")]);
    let first = g
        .recv(Duration::from_secs(30))
        .unwrap_or_else(|| panic!("no notification within 30 s; stderr:\n{}", g.stderr()));
    assert!(first.has("READY=1"), "{:?}", first.text);
    let running = g.recv_until(Duration::from_millis(1500), |_| false);
    assert!(
        running.iter().all(|m| !m.has("WATCHDOG=1")),
        "pinged a watchdog that belongs to PID 1"
    );
}

#[test]
fn watchdog_pings_when_watchdog_pid_is_gatehouse_itself() {
    // `exec` keeps the shell's PID, so $$ is gatehouse's own PID.
    let g = Notified::start_via_shell(&[("WATCHDOG_USEC", "400000")]);
    let msgs = g.recv_until(Duration::from_secs(30), |m| m.has("WATCHDOG=1"));
    assert!(
        msgs.first().is_some_and(|m| m.has("READY=1")),
        "first notification not READY=1; stderr:\n{}",
        g.stderr()
    );
    assert!(
        msgs.iter().any(|m| m.has("WATCHDOG=1")),
        "no WATCHDOG=1 with WATCHDOG_PID = gatehouse's PID"
    );
}

fn unit_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd/gatehouse.service")
}

#[test]
fn unit_exposure_is_at_most_1_5_by_systemd_analyze_security() {
    if !require_tools(&["systemd-analyze"]) {
        return;
    }
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--threshold=15", "--no-pager"])
        .arg(unit_path())
        .output()
        .expect("run systemd-analyze security");
    let text = String::from_utf8_lossy(&out.stdout);
    let overall = text
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or_else(|| panic!("no overall exposure in:\n{text}"));
    let score: f64 = overall
        .split(':')
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("cannot read the score in {overall:?}"));
    assert!(score <= 1.5, "exposure {score} > 1.5:\n{text}");
    assert!(
        out.status.success(),
        "--threshold=15 failed ({}):\n{text}",
        out.status
    );
}

#[test]
fn unit_verifies_and_tells_systemd_the_truth() {
    if !require_tools(&["systemd-analyze"]) {
        return;
    }
    let unit = std::fs::read_to_string(unit_path()).unwrap();
    for line in [
        "Type=notify",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "WatchdogSec=30s",
        "RuntimeDirectory=gatehouse",
        "StateDirectory=gatehouse",
        "LogRateLimitIntervalSec=0",
        "CapabilityBoundingSet=",
    ] {
        assert!(unit.lines().any(|l| l == line), "the unit lacks `{line}`");
    }
    assert!(
        unit.contains("systemd-creds encrypt --name=gatehouse-master-key")
            && unit.contains("LoadCredentialEncrypted=gatehouse-master-key:"),
        "the master key credential is not documented"
    );
    // `verify` wants the ExecStart binary to exist: point it at this build.
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("gatehouse.service");
    let bin = gatehouse_bin();
    std::fs::write(
        &copy,
        unit.replace("/usr/bin/gatehouse", &bin.display().to_string()),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&copy)
        .output()
        .expect("run systemd-analyze verify");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Unknown or misspelt directives are only warnings: any output fails.
    assert!(
        out.status.success() && said.trim().is_empty(),
        "systemd-analyze verify ({}):\n{said}",
        out.status
    );
}

/// Cargo.lock's version(s) of `name`, as `--version` prints them.
fn locked(name: &str) -> String {
    let lock =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.lock")).unwrap();
    let mut versions = Vec::new();
    let mut current = String::new();
    for line in lock.lines() {
        if let Some(n) = line.strip_prefix("name = ") {
            current = n.trim_matches('"').to_string();
        } else if let Some(v) = line.strip_prefix("version = ") {
            if current == name {
                versions.push(v.trim_matches('"').to_string());
            }
        }
    }
    assert!(!versions.is_empty(), "{name} is not in Cargo.lock");
    versions.join(", ")
}

#[test]
fn version_names_the_commit_and_the_security_crates() {
    let out = gatehouse_command().arg("--version").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines.first().copied(),
        Some(format!("gatehouse {}", env!("CARGO_PKG_VERSION")).as_str()),
        "{text}"
    );
    let commit = lines
        .get(1)
        .and_then(|l| l.strip_prefix("commit: "))
        .unwrap_or_else(|| panic!("no `commit:` line second:\n{text}"));
    let head = Command::new("git")
        .args([
            "-C",
            env!("CARGO_MANIFEST_DIR"),
            "rev-parse",
            "--short",
            "HEAD",
        ])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    match (std::env::var("GATEHOUSE_COMMIT").ok(), head) {
        (Some(c), _) if !c.is_empty() => assert_eq!(commit, c),
        (_, Some(h)) => assert_eq!(commit, h, "the commit is not HEAD's"),
        _ => assert_eq!(commit, "unknown"),
    }
    let crates = ["russh", "boringtun", "age", "aws-lc-rs", "ring"];
    for (i, c) in crates.iter().enumerate() {
        assert_eq!(
            lines.get(2 + i).copied(),
            Some(format!("{c}: {}", locked(c)).as_str()),
            "line {} of --version:\n{text}",
            3 + i
        );
    }
    assert_eq!(lines.len(), 2 + crates.len(), "{text}");
    // -V says the same.
    let short = gatehouse_command().arg("-V").output().unwrap();
    assert_eq!(String::from_utf8(short.stdout).unwrap(), text);
}

#[test]
fn reload_guard_sends_reloading_with_monotonic_usec_then_ready() {
    // The helper the reload path calls, in this process: only this test
    // sets NOTIFY_SOCKET in the test binary's own environment (the daemons
    // above get theirs through Command::env).
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    std::env::set_var("NOTIFY_SOCKET", &path);
    let mut buf = vec![0u8; 1024];
    let mut stamps = Vec::new();
    for _ in 0..2 {
        let guard = ::gatehouse::daemon::notify::reloading();
        let n = sock.recv(&mut buf).expect("RELOADING=1 sent at once");
        let text = String::from_utf8_lossy(&buf[..n]).into_owned();
        assert!(text.lines().any(|l| l == "RELOADING=1"), "{text:?}");
        let usec: u64 = text
            .lines()
            .find_map(|l| l.strip_prefix("MONOTONIC_USEC="))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no MONOTONIC_USEC= with RELOADING=1: {text:?}"));
        stamps.push(usec);
        // Nothing more until the reload is over ...
        sock.set_nonblocking(true).unwrap();
        assert!(
            sock.recv(&mut buf).is_err(),
            "READY=1 before the reload ended"
        );
        sock.set_nonblocking(false).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        // ... then READY=1.
        drop(guard);
        let n = sock.recv(&mut buf).expect("READY=1 when the guard drops");
        assert_eq!(String::from_utf8_lossy(&buf[..n]), "READY=1\n");
    }
    std::env::remove_var("NOTIFY_SOCKET");
    assert!(
        stamps[1] >= stamps[0] + 20_000,
        "MONOTONIC_USEC does not follow the clock: {stamps:?}"
    );
}

#[test]
fn sighup_sends_reloading_with_monotonic_usec_then_ready_and_a_bad_file_changes_nothing() {
    let g = Notified::start(&[]);
    let first = g
        .recv(Duration::from_secs(30))
        .unwrap_or_else(|| panic!("no notification within 30 s; stderr:\n{}", g.stderr()));
    assert!(first.has("READY=1"), "{:?}", first.text);
    g.signal("HUP");
    let got = g.recv_until(Duration::from_secs(20), |m| m.has("READY=1"));
    let reloading = got
        .iter()
        .position(|m| m.has("RELOADING=1"))
        .unwrap_or_else(|| panic!("no RELOADING=1 after SIGHUP: {got:?}\n{}", g.stderr()));
    assert!(
        got[reloading].text.lines().any(|l| l
            .strip_prefix("MONOTONIC_USEC=")
            .is_some_and(|v| v.parse::<u64>().is_ok())),
        "{got:?}"
    );
    let ready = got
        .iter()
        .rposition(|m| m.has("READY=1"))
        .expect("READY=1 after the reload");
    assert!(ready > reloading, "{got:?}");
    // A broken file: still RELOADING then READY (the daemon runs on).
    g.setup.write_config("[gateway\n");
    g.signal("HUP");
    let got = g.recv_until(Duration::from_secs(20), |m| m.has("READY=1"));
    assert!(got.iter().any(|m| m.has("RELOADING=1")), "{got:?}");
    assert!(got.last().is_some_and(|m| m.has("READY=1")), "{got:?}");
}
