//! Tools, ports, processes and TOTP: the small pieces every harness part uses.
//!
//! Everything here uses only std (plus the external programs it names) so a
//! failing test points at gatehouse, not at the harness.

use std::io::Read;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How long the `run` style helpers wait for a client before giving up.
pub const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// Where an external program lives: an absolute path that exists, or the
/// first match on `PATH` (then the sbin directories, which a non-root `PATH`
/// often lacks).
pub fn find_tool(name: &str) -> Option<PathBuf> {
    let path = Path::new(name);
    if path.is_absolute() {
        return is_executable(path).then(|| path.to_path_buf());
    }
    let search = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&search)
        .chain(["/usr/local/sbin", "/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    path.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// True when every tool is available. Otherwise: under `CI=true` this panics
/// naming the missing tools (CI must never skip silently); elsewhere it prints
/// `skipping: missing ...` and returns false so the test can `return`.
pub fn require_tools(names: &[&str]) -> bool {
    let missing: Vec<&str> = names
        .iter()
        .copied()
        .filter(|name| find_tool(name).is_none())
        .collect();
    if missing.is_empty() {
        return true;
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!(
            "missing required tools under CI=true: {} (run scripts/install-test-deps.sh)",
            missing.join(", ")
        );
    }
    eprintln!("skipping: missing {}", missing.join(", "));
    false
}

/// True when `python` can import `module` (Debian's `package`). Like
/// [`require_tools`]: under `CI=true` a missing module fails the test;
/// elsewhere the test is skipped with a message.
pub fn require_python_module(python: &str, module: &str, package: &str) -> bool {
    let ok = std::process::Command::new(python)
        .args(["-c", &format!("import {module}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if ok {
        return true;
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{package} is missing under CI=true (run scripts/install-test-deps.sh)");
    }
    eprintln!("skipping: {python} cannot import {module} (install {package})");
    false
}

/// Ports already handed out by this test binary, so two tests running in
/// parallel never get the same one.
static HANDED_OUT: Mutex<Vec<u16>> = Mutex::new(Vec::new());

/// A currently free TCP port on 127.0.0.1 (bind to port 0, read it, drop the
/// socket). Never returns the same port twice within one test binary.
pub fn free_port() -> u16 {
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    for _ in 0..100 {
        let listener =
            TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind 127.0.0.1:0 for a free port");
        let port = listener.local_addr().expect("local_addr").port();
        drop(listener);
        if !handed_out.contains(&port) {
            handed_out.push(port);
            return port;
        }
    }
    panic!("could not find a free port on 127.0.0.1");
}

/// Whether something is listening on TCP `port`. Reads `/proc/net/tcp{,6}` so
/// that waiting for a server does not open (and log) a connection to it; falls
/// back to a connect where /proc is unavailable.
pub fn port_is_listening(port: u16) -> bool {
    let mut read_any = false;
    for file in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(table) = std::fs::read_to_string(file) else {
            continue;
        };
        read_any = true;
        for line in table.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() < 4 || fields[3] != "0A" {
                continue; // 0A = TCP_LISTEN
            }
            let local_port = fields[1]
                .rsplit(':')
                .next()
                .and_then(|hex| u16::from_str_radix(hex, 16).ok());
            if local_port == Some(port) {
                return true;
            }
        }
    }
    if read_any {
        return false;
    }
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
}

/// Waits until something listens on `port`; false on timeout.
pub fn wait_for_port(port: u16, timeout: Duration) -> bool {
    wait_until(timeout, || port_is_listening(port))
}

/// Polls `cond` every 20 ms until it holds (true) or `timeout` passes (false).
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// Sends `sig` (e.g. "TERM", "HUP", "KILL") to each pid; a negative pid names a
/// process group. Uses the shell's `kill` builtin (std has no kill(2)).
/// Returns whether `kill` reported success for all of them.
pub fn send_signal(pids: &[i64], sig: &str) -> bool {
    if pids.is_empty() {
        return true;
    }
    Command::new("sh")
        .arg("-c")
        .arg(r#"sig="$1"; shift; kill -s "$sig" -- "$@""#)
        .arg("sh")
        .arg(sig)
        .args(pids.iter().map(|p| p.to_string()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// All descendants of `pid` (children, grandchildren, ...), found through
/// `/proc/*/stat`. sshd's per-connection processes call setsid(), so killing a
/// process group is not enough to end the sessions of a killed sshd.
pub fn descendants(pid: u32) -> Vec<u32> {
    let mut parents: Vec<(u32, u32)> = Vec::new(); // (pid, ppid)
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Some(child) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
                continue;
            };
            // "pid (comm) state ppid ..." where comm may contain spaces and parens.
            let Some(after) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
                continue;
            };
            if let Some(ppid) = after.split_whitespace().nth(1).and_then(|s| s.parse().ok()) {
                parents.push((child, ppid));
            }
        }
    }
    let mut found = Vec::new();
    let mut frontier = vec![pid];
    while let Some(parent) = frontier.pop() {
        for &(child, ppid) in &parents {
            if ppid == parent && !found.contains(&child) {
                found.push(child);
                frontier.push(child);
            }
        }
    }
    found
}

/// Kills `child`, its process group (when it leads one) and every descendant,
/// then reaps it. Safe to call on an already exited child.
pub fn kill_tree(child: &mut Child) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    let pid = child.id();
    let tree: Vec<i64> = descendants(pid).into_iter().map(i64::from).collect();
    let _ = child.kill();
    send_signal(&[-i64::from(pid)], "KILL"); // group; harmless if there is none
    send_signal(&tree, "KILL");
    let _ = child.wait();
}

/// A child process that is killed (with its whole tree) when dropped. Use it
/// for long-lived clients, e.g. a session that should be cut by a timeout.
pub struct ChildGuard {
    child: Child,
}

impl ChildGuard {
    /// Spawns `cmd` in its own process group.
    pub fn spawn(cmd: &mut Command) -> ChildGuard {
        let child = cmd
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
        ChildGuard { child }
    }

    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Direct access, e.g. to take `stdin`.
    pub fn child(&mut self) -> &mut Child {
        &mut self.child
    }

    /// The exit status if it exited within `timeout`.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let mut status = None;
        wait_until(timeout, || {
            status = self.child.try_wait().ok().flatten();
            status.is_some()
        });
        status
    }

    /// Waits up to `timeout` for exit and collects piped stdout/stderr (empty
    /// when they were not piped). None (after killing it) on timeout.
    pub fn wait_output(mut self, timeout: Duration) -> Option<Output> {
        collect_output(&mut self.child, timeout)
    }

    /// Kills the process tree now.
    pub fn kill(&mut self) {
        kill_tree(&mut self.child);
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        kill_tree(&mut self.child);
    }
}

/// Runs `cmd` with stdout/stderr captured and a deadline. On timeout the
/// whole process group is killed, the partial output is printed to the test's
/// stderr, and None is returned. stdin is left as configured on `cmd`
/// (inherit by default; the client helpers set null).
pub fn run_with_timeout(cmd: &mut Command, timeout: Duration) -> Option<Output> {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    let out = collect_output(&mut child, timeout);
    if out.is_none() {
        eprintln!("timed out after {timeout:?}: {cmd:?}");
    }
    out
}

/// Like [`run_with_timeout`] but panics on timeout.
pub fn run_checked_timeout(cmd: &mut Command, timeout: Duration) -> Output {
    match run_with_timeout(cmd, timeout) {
        Some(out) => out,
        None => panic!("command did not finish within {timeout:?}: {cmd:?}"),
    }
}

fn collect_output(child: &mut Child, timeout: Duration) -> Option<Output> {
    let deadline = Instant::now() + timeout;
    let stdout = spawn_reader(child.stdout.take());
    let stderr = spawn_reader(child.stderr.take());
    let mut status = None;
    while Instant::now() < deadline {
        if let Ok(Some(s)) = child.try_wait() {
            status = Some(s);
            break;
        }
        thread::sleep(Duration::from_millis(10));
    }
    let timed_out = status.is_none();
    if timed_out {
        kill_tree(child);
    }
    // A grandchild that escaped may hold the pipes open: do not wait forever.
    let grace = deadline.saturating_duration_since(Instant::now()) + Duration::from_secs(5);
    let stdout = stdout.recv_timeout(grace).unwrap_or_default();
    let stderr = stderr
        .recv_timeout(Duration::from_secs(1))
        .unwrap_or_default();
    if timed_out {
        eprintln!(
            "partial stdout: {}\npartial stderr: {}",
            String::from_utf8_lossy(&stdout),
            String::from_utf8_lossy(&stderr)
        );
        return None;
    }
    Some(Output {
        status: status.expect("status is set when not timed out"),
        stdout,
        stderr,
    })
}

fn spawn_reader<R: Read + Send + 'static>(pipe: Option<R>) -> mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut pipe) = pipe {
            let _ = pipe.read_to_end(&mut buf);
        }
        let _ = tx.send(buf);
    });
    rx
}

/// The name of the user the tests run as (`id -un`).
pub fn current_user() -> String {
    let out = Command::new("id")
        .arg("-un")
        .output()
        .expect("run `id -un`");
    assert!(out.status.success(), "`id -un` failed");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

/// The current TOTP code (RFC 6238, SHA1, 6 digits, 30 s) for a base32
/// secret, computed by `oathtool` (an independent implementation).
pub fn totp(secret_b32: &str) -> String {
    oathtool(&["--totp", "-b", secret_b32])
}

/// The TOTP code for the step containing `unix_time`.
pub fn totp_at(secret_b32: &str, unix_time: u64) -> String {
    let now = format!("@{unix_time}");
    oathtool(&["--totp", "-b", "-N", &now, secret_b32])
}

/// The TOTP code `steps` time steps (of 30 s) from now; `totp_step(s, 1)` is
/// a second code a ±1-step verifier accepts right now.
pub fn totp_step(secret_b32: &str, steps: i64) -> String {
    let t = unix_now() as i64 + steps * 30;
    totp_at(secret_b32, t.max(0) as u64)
}

fn oathtool(args: &[&str]) -> String {
    let out = Command::new("oathtool")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run oathtool: {e}"));
    assert!(
        out.status.success(),
        "oathtool {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}
