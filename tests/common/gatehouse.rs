//! The binary under test: a builder for its TOML config, the CLI subcommands,
//! and the running daemon (`gatehouse run`) with its stderr audit log.

use std::fs::OpenOptions;
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tempfile::TempDir;

use super::keys::key_without_comment;
use super::util::{
    free_port, kill_tree, port_is_listening, run_checked_timeout, run_with_timeout, send_signal,
    wait_until, DEFAULT_COMMAND_TIMEOUT,
};

/// The gatehouse binary cargo built for these tests, or `GATEHOUSE_TEST_BIN`
/// when set (to run the suite against another build, e.g. a release one).
pub fn gatehouse_bin() -> PathBuf {
    std::env::var_os("GATEHOUSE_TEST_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_gatehouse")))
}

/// A command for the gatehouse binary with a predictable environment: audit
/// events go to stderr as JSON lines (never to a host journald, which
/// gatehouse picks when it sees `JOURNAL_STREAM`/`INVOCATION_ID`), at level
/// info (`GATEHOUSE_TEST_RUST_LOG` overrides, e.g. `debug`), and no config
/// comes from `GATEHOUSE_CONFIG`.
pub fn gatehouse_command() -> Command {
    let log = std::env::var("GATEHOUSE_TEST_RUST_LOG").unwrap_or_else(|_| "info,russh=warn".into());
    let mut cmd = Command::new(gatehouse_bin());
    cmd.env_remove("JOURNAL_STREAM")
        .env_remove("INVOCATION_ID")
        .env_remove("GATEHOUSE_CONFIG")
        .env("RUST_LOG", log)
        .env("RUST_BACKTRACE", "1");
    cmd
}

/// How long `start` waits for the listener.
const START_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone)]
struct UserSpec {
    name: String,
    roles: Vec<String>,
    ssh_keys: Vec<String>,
    extra: Vec<String>,
}

#[derive(Debug, Clone)]
struct RoleSpec {
    name: String,
    /// The raw TOML value of `targets`.
    targets: String,
    logins: Vec<String>,
    extra: Vec<String>,
}

#[derive(Debug, Clone)]
struct TargetSpec {
    name: String,
    kind: String,
    address: String,
    host_keys: Vec<String>,
    extra: Vec<String>,
}

/// Builds a gatehouse `config.toml`. Anything not set stays at gatehouse's
/// defaults. Extra lines are raw TOML (`key = value`) appended to the table.
#[derive(Debug, Clone, Default)]
pub struct GatehouseBuilder {
    gateway: Vec<String>,
    auth: Vec<String>,
    /// `[recordings] recipients`; when empty, `build()` generates an
    /// auditor ssh-ed25519 key in the setup dir (see `auditor_key`).
    recipients: Vec<String>,
    /// Extra raw `[recordings]` lines.
    recordings: Vec<String>,
    users: Vec<UserSpec>,
    roles: Vec<RoleSpec>,
    targets: Vec<TargetSpec>,
    raw: Vec<String>,
    /// Extra raw `[control]` lines (the socket is always in the setup dir).
    control: Vec<String>,
}

impl GatehouseBuilder {
    pub fn new() -> Self {
        Self::default()
    }

    /// A `[[users]]` entry; `ssh_keys` are authorized_keys lines.
    pub fn user(mut self, name: &str, roles: &[&str], ssh_keys: &[&str]) -> Self {
        self.users.push(UserSpec {
            name: name.to_string(),
            roles: strings(roles),
            ssh_keys: strings(ssh_keys),
            extra: Vec::new(),
        });
        self
    }

    /// Gives an already added user exactly `roles`.
    pub fn user_roles(mut self, user: &str, roles: &[&str]) -> Self {
        find(&mut self.users, |u| u.name == user, "user", user).roles = strings(roles);
        self
    }

    /// A raw line for an already added user.
    pub fn user_line(mut self, user: &str, line: &str) -> Self {
        find(&mut self.users, |u| u.name == user, "user", user)
            .extra
            .push(line.to_string());
        self
    }

    /// A `[[roles]]` entry selecting targets by name:
    /// `targets = { names = [...] }`, `logins = [...]`.
    pub fn role(self, name: &str, target_names: &[&str], logins: &[&str]) -> Self {
        self.role_with(name, target_names, logins, &[])
    }

    /// [`GatehouseBuilder::role`] plus raw lines, e.g. `max_session = "3s"`.
    pub fn role_with(
        mut self,
        name: &str,
        target_names: &[&str],
        logins: &[&str],
        extra: &[&str],
    ) -> Self {
        self.roles.push(RoleSpec {
            name: name.to_string(),
            targets: format!("{{ names = {} }}", toml_array(target_names)),
            logins: strings(logins),
            extra: strings(extra),
        });
        self
    }

    /// A role selecting targets by labels: `targets = { labels = { k = "v" } }`.
    pub fn role_labels(mut self, name: &str, labels: &[(&str, &str)], logins: &[&str]) -> Self {
        let labels: Vec<String> = labels
            .iter()
            .map(|(k, v)| format!("{} = {}", toml_str(k), toml_str(v)))
            .collect();
        self.roles.push(RoleSpec {
            name: name.to_string(),
            targets: format!("{{ labels = {{ {} }} }}", labels.join(", ")),
            logins: strings(logins),
            extra: Vec::new(),
        });
        self
    }

    /// A raw line for an already added role, e.g. `idle_timeout = "2s"`.
    pub fn role_line(mut self, role: &str, line: &str) -> Self {
        find(&mut self.roles, |r| r.name == role, "role", role)
            .extra
            .push(line.to_string());
        self
    }

    /// An SSH target at `127.0.0.1:port` pinning `host_keys`.
    pub fn ssh_target(self, name: &str, port: u16, host_keys: &[&str]) -> Self {
        self.ssh_target_at(name, &format!("127.0.0.1:{port}"), host_keys)
    }

    /// An SSH target at any `address` (e.g. one nothing listens on).
    pub fn ssh_target_at(mut self, name: &str, address: &str, host_keys: &[&str]) -> Self {
        self.targets.push(TargetSpec {
            name: name.to_string(),
            kind: "ssh".to_string(),
            address: address.to_string(),
            host_keys: host_keys.iter().map(|k| key_without_comment(k)).collect(),
            extra: Vec::new(),
        });
        self
    }

    /// A raw line for an already added target, e.g. `labels = { env = "prod" }`.
    pub fn target_line(mut self, target: &str, line: &str) -> Self {
        find(&mut self.targets, |t| t.name == target, "target", target)
            .extra
            .push(line.to_string());
        self
    }

    /// A raw line in `[gateway]`, e.g. `auth_timeout = "5s"`.
    pub fn gateway_line(mut self, line: &str) -> Self {
        self.gateway.push(line.to_string());
        self
    }

    /// A raw line in `[auth]`, e.g. `max_failures = 3`.
    pub fn auth_line(mut self, line: &str) -> Self {
        self.auth.push(line.to_string());
        self
    }

    /// Raw TOML appended at the end of the file (whole extra tables).
    pub fn raw(mut self, toml: &str) -> Self {
        self.raw.push(toml.to_string());
        self
    }

    /// The config text for a given state dir and SSH listener port.
    /// An auditor key the recordings are sealed to (replaces the generated one).
    pub fn recipient(mut self, public_line: &str) -> Self {
        self.recipients.push(public_line.to_string());
        self
    }

    /// A raw `[control]` line, e.g. `group = "adm"`.
    pub fn control_line(mut self, line: &str) -> Self {
        self.control.push(line.to_string());
        self
    }

    /// A raw `[recordings]` line, e.g. `retention = "1s"`.
    pub fn recordings_line(mut self, line: &str) -> Self {
        self.recordings.push(line.to_string());
        self
    }

    pub fn render(&self, state_dir: &Path, ssh_port: u16) -> String {
        let mut out = String::new();
        let mut line = |s: &str| {
            out.push_str(s);
            out.push('\n');
        };
        line("[gateway]");
        line(&format!(
            "state_dir = {}",
            toml_str(&state_dir.display().to_string())
        ));
        line(&format!("ssh_listen = [\"127.0.0.1:{ssh_port}\"]"));
        self.gateway.iter().for_each(|l| line(l));
        line("");
        line("[auth]");
        self.auth.iter().for_each(|l| line(l));
        line("");
        line("[recordings]");
        line(&format!("recipients = {}", toml_array(&self.recipients)));
        self.recordings.iter().for_each(|l| line(l));
        line("");
        line("[control]");
        // Next to state/, in the test's own directory (not /run).
        let socket = state_dir.parent().unwrap_or(state_dir).join("control.sock");
        if !self
            .control
            .iter()
            .any(|l| l.trim_start().starts_with("socket"))
        {
            line(&format!(
                "socket = {}",
                toml_str(&socket.display().to_string())
            ));
        }
        self.control.iter().for_each(|l| line(l));
        for u in &self.users {
            line("");
            line("[[users]]");
            line(&format!("name = {}", toml_str(&u.name)));
            line(&format!("roles = {}", toml_array(&u.roles)));
            line(&format!("ssh_keys = {}", toml_array(&u.ssh_keys)));
            u.extra.iter().for_each(|l| line(l));
        }
        for r in &self.roles {
            line("");
            line("[[roles]]");
            line(&format!("name = {}", toml_str(&r.name)));
            line(&format!("targets = {}", r.targets));
            line(&format!("logins = {}", toml_array(&r.logins)));
            r.extra.iter().for_each(|l| line(l));
        }
        for t in &self.targets {
            line("");
            line("[[targets]]");
            line(&format!("name = {}", toml_str(&t.name)));
            line(&format!("kind = {}", toml_str(&t.kind)));
            line(&format!("address = {}", toml_str(&t.address)));
            line(&format!("host_keys = {}", toml_array(&t.host_keys)));
            t.extra.iter().for_each(|l| line(l));
        }
        for r in &self.raw {
            line("");
            line(r);
        }
        out
    }

    /// Creates a temp dir with `config.toml` and an empty `state/` (0700) and
    /// picks a free port for the SSH listener. Nothing runs yet.
    pub fn build(&self) -> GatehouseSetup {
        let dir = tempfile::Builder::new()
            .prefix("gh-gatehouse-")
            .tempdir()
            .expect("gatehouse temp dir");
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(dir.path().join("state"))
            .expect("create state dir");
        let mut builder = self.clone();
        if builder.recipients.is_empty() {
            let auditor = super::gen_ed25519(dir.path(), "auditor");
            builder.recipients.push(auditor.public_line);
        }
        let setup = GatehouseSetup {
            inner: Arc::new(SetupInner {
                port: free_port(),
                dir,
                builder: Mutex::new(builder.clone()),
            }),
        };
        setup.rewrite(&builder);
        setup
    }
}

struct SetupInner {
    dir: TempDir,
    port: u16,
    builder: Mutex<GatehouseBuilder>,
}

/// A gatehouse directory (config + state) and its port. Cheap to clone; the
/// directory lives until the last clone and every [`Gatehouse`] started from
/// it are dropped.
#[derive(Clone)]
pub struct GatehouseSetup {
    inner: Arc<SetupInner>,
}

impl GatehouseSetup {
    pub fn dir(&self) -> &Path {
        self.inner.dir.path()
    }

    /// The daemon's control socket (unless a `control_line` moved it).
    pub fn control_socket(&self) -> PathBuf {
        self.dir().join("control.sock")
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir().join("config.toml")
    }

    /// The generated auditor's private key (ssh-ed25519), an identity for
    /// `age -d -i` and `gatehouse recordings ... -i`.
    pub fn auditor_key(&self) -> PathBuf {
        self.dir().join("auditor")
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir().join("state")
    }

    /// The SSH listener port written into the config.
    pub fn port(&self) -> u16 {
        self.inner.port
    }

    /// The builder the current config came from (to modify and `rewrite`).
    pub fn builder(&self) -> GatehouseBuilder {
        self.inner
            .builder
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Re-renders the config from `builder`, keeping the state dir and port.
    pub fn rewrite(&self, builder: &GatehouseBuilder) {
        self.write_config(&builder.render(&self.state_dir(), self.port()));
        *self.inner.builder.lock().unwrap_or_else(|e| e.into_inner()) = builder.clone();
    }

    /// Replaces config.toml with arbitrary text (e.g. a broken file).
    pub fn write_config(&self, text: &str) {
        std::fs::write(self.config_path(), text).expect("write config.toml");
    }

    pub fn config_text(&self) -> String {
        std::fs::read_to_string(self.config_path()).unwrap_or_default()
    }

    /// A `gatehouse ARGS... --config FILE` command (stdin null).
    pub fn cli_command(&self, args: &[&str]) -> Command {
        let mut cmd = gatehouse_command();
        cmd.args(args)
            .arg("--config")
            .arg(self.config_path())
            .stdin(Stdio::null());
        cmd
    }

    /// Runs `gatehouse ARGS... --config FILE`; panics if it takes over 60 s.
    pub fn cli(&self, args: &[&str]) -> Output {
        run_checked_timeout(&mut self.cli_command(args), DEFAULT_COMMAND_TIMEOUT)
    }

    /// Like [`GatehouseSetup::cli`]; None if it is still running after
    /// `timeout` (it is killed then).
    pub fn cli_timeout(&self, args: &[&str], timeout: Duration) -> Option<Output> {
        run_with_timeout(&mut self.cli_command(args), timeout)
    }

    /// `gatehouse check` (exit 0 ok, 64 on config errors).
    pub fn check(&self) -> Output {
        self.cli(&["check"])
    }

    /// The gateway's SSH host key, `ssh-ed25519 AAAA...` without a comment.
    pub fn hostkey(&self) -> String {
        let out = self.cli_ok(&["hostkey"]);
        key_without_comment(&find_key_line(&out, "hostkey"))
    }

    /// gatehouse's client key for targets, as an authorized_keys line.
    pub fn client_pubkey(&self) -> String {
        let out = self.cli_ok(&["pubkey"]);
        find_key_line(&out, "pubkey")
    }

    /// Enrolls `user` and returns the base32 TOTP secret (from `Secret: ...`).
    pub fn enroll(&self, user: &str) -> String {
        let out = self.cli_ok(&["user", "enroll", user]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        stdout
            .lines()
            .find_map(|l| l.trim().strip_prefix("Secret:"))
            .map(|s| s.split_whitespace().collect::<String>())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| panic!("no `Secret:` line in `user enroll {user}`:\n{stdout}"))
    }

    /// Starts `gatehouse run` and waits for its SSH port; panics with its
    /// stderr if it exits or does not listen within 30 s.
    pub fn start(&self) -> Gatehouse {
        self.try_start().unwrap_or_else(|e| panic!("{e}"))
    }

    /// Like [`GatehouseSetup::start`]; Err(description + stderr) instead of
    /// panicking, for tests that expect gatehouse to refuse to start.
    pub fn try_start(&self) -> Result<Gatehouse, String> {
        let mut gw = Gatehouse {
            port: self.port(),
            setup: self.clone(),
            child: None,
            log_offset: 0,
        };
        gw.spawn()?;
        Ok(gw)
    }

    fn cli_ok(&self, args: &[&str]) -> Output {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "gatehouse {args:?} failed with {}:\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    fn stderr_path(&self) -> PathBuf {
        self.dir().join("gatehouse.stderr")
    }

    fn stdout_path(&self) -> PathBuf {
        self.dir().join("gatehouse.stdout")
    }
}

/// A running `gatehouse run`; killed on drop.
pub struct Gatehouse {
    /// The SSH listener port on 127.0.0.1.
    pub port: u16,
    setup: GatehouseSetup,
    child: Option<Child>,
    /// Where this run's output starts in the (appended) stderr file.
    log_offset: usize,
}

impl Gatehouse {
    pub fn setup(&self) -> &GatehouseSetup {
        &self.setup
    }

    pub fn config_path(&self) -> PathBuf {
        self.setup.config_path()
    }

    /// See [`GatehouseSetup::hostkey`].
    pub fn hostkey(&self) -> String {
        self.setup.hostkey()
    }

    /// See [`GatehouseSetup::client_pubkey`].
    pub fn client_pubkey(&self) -> String {
        self.setup.client_pubkey()
    }

    /// See [`GatehouseSetup::enroll`].
    pub fn enroll(&self, user: &str) -> String {
        self.setup.enroll(user)
    }

    pub fn pid(&self) -> u32 {
        self.child
            .as_ref()
            .map(Child::id)
            .expect("gatehouse is not running")
    }

    /// Resident memory in KiB (VmRSS from /proc/PID/status).
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("read /proc/PID/status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .expect("VmRSS in /proc/PID/status")
    }

    /// This run's stderr (logs and audit events as JSON lines).
    pub fn stderr(&self) -> String {
        let bytes = std::fs::read(self.setup.stderr_path()).unwrap_or_default();
        String::from_utf8_lossy(bytes.get(self.log_offset..).unwrap_or_default()).into_owned()
    }

    /// stderr of every run from this setup, including before restarts.
    pub fn stderr_all(&self) -> String {
        let bytes = std::fs::read(self.setup.stderr_path()).unwrap_or_default();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// This run's audit events: JSON objects with a string `"event"` field.
    pub fn audit_events(&self) -> Vec<Value> {
        parse_audit_events(&self.stderr())
    }

    /// Audit events of every run from this setup.
    pub fn audit_events_all(&self) -> Vec<Value> {
        parse_audit_events(&self.stderr_all())
    }

    /// This run's audit events named `name` (e.g. "auth.attempt").
    pub fn events(&self, name: &str) -> Vec<Value> {
        self.audit_events()
            .into_iter()
            .filter(|e| e["event"] == name)
            .collect()
    }

    /// Polls until an audit event of this run satisfies `pred`.
    pub fn wait_for_event(
        &self,
        pred: impl Fn(&Value) -> bool,
        timeout: Duration,
    ) -> Option<Value> {
        let mut found = None;
        wait_until(timeout, || {
            found = self.audit_events().into_iter().find(|e| pred(e));
            found.is_some()
        });
        found
    }

    /// Polls until an audit event named `name` appears in this run.
    pub fn wait_for_event_named(&self, name: &str, timeout: Duration) -> Option<Value> {
        self.wait_for_event(|e| e["event"] == name, timeout)
    }

    /// Polls until this run's stderr contains `needle`.
    pub fn wait_for_stderr(&self, needle: &str, timeout: Duration) -> bool {
        wait_until(timeout, || self.stderr().contains(needle))
    }

    /// Sends a signal by name ("TERM", "HUP", ...).
    pub fn signal(&self, sig: &str) -> bool {
        send_signal(&[i64::from(self.pid())], sig)
    }

    /// SIGTERM, then waits up to `timeout` for a clean exit. None (after a
    /// kill) if it did not exit in time.
    pub fn terminate(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        if let Ok(Some(status)) = child.try_wait() {
            self.child = None;
            return Some(status);
        }
        send_signal(&[i64::from(child.id())], "TERM");
        let mut status = None;
        wait_until(timeout, || {
            status = child.try_wait().ok().flatten();
            status.is_some()
        });
        self.kill();
        status
    }

    /// The exit status if the daemon has exited (it should not on its own).
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// Kills the daemon (SIGKILL: no graceful shutdown) and waits for its
    /// port to close.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill_tree(&mut child);
        }
        let port = self.port;
        wait_until(Duration::from_secs(5), || !port_is_listening(port));
    }

    /// Kills and starts again with the same directory, state and port.
    /// `stderr`/`audit_events` then cover only the new run.
    pub fn restart(&mut self) {
        self.kill();
        if let Err(e) = self.spawn() {
            panic!("restart: {e}");
        }
    }

    fn spawn(&mut self) -> Result<(), String> {
        let stderr_path = self.setup.stderr_path();
        let stderr = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&stderr_path)
            .expect("open gatehouse.stderr");
        let stdout = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.setup.stdout_path())
            .expect("open gatehouse.stdout");
        self.log_offset = std::fs::metadata(&stderr_path)
            .map(|m| m.len() as usize)
            .unwrap_or(0);
        let child = gatehouse_command()
            .arg("run")
            .arg("--config")
            .arg(self.setup.config_path())
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", gatehouse_bin().display()));
        let child = self.child.insert(child);
        let port = self.port;
        let mut exit = None;
        let up = wait_until(START_TIMEOUT, || {
            exit = child.try_wait().ok().flatten();
            exit.is_some() || port_is_listening(port)
        });
        if let Some(status) = exit {
            self.child = None;
            return Err(format!(
                "gatehouse run exited early with {status}; stderr:\n{}",
                self.stderr()
            ));
        }
        if !up {
            self.kill();
            return Err(format!(
                "gatehouse did not listen on 127.0.0.1:{port} within {START_TIMEOUT:?}; stderr:\n{}",
                self.stderr()
            ));
        }
        // The SSH port is bound before the rest of the start (tunnel,
        // control socket): a test that talks to the control socket right
        // away must not find it missing.
        let socket = self.setup.control_socket();
        if self
            .setup
            .config_text()
            .contains(&socket.display().to_string())
        {
            wait_until(START_TIMEOUT, || {
                socket.exists()
                    || self
                        .child
                        .as_mut()
                        .is_some_and(|c| c.try_wait().ok().flatten().is_some())
            });
        }
        Ok(())
    }
}

impl Drop for Gatehouse {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill_tree(&mut child);
        }
    }
}

/// Audit events from JSON-lines text: objects with a string `"event"` field.
/// Tolerates tracing's unflattened layout (`{"fields": {"event": ...}}`) by
/// lifting `fields` to the top level.
pub fn parse_audit_events(text: &str) -> Vec<Value> {
    text.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l.trim()).ok())
        .filter_map(|mut v| {
            if v.get("event").is_some_and(Value::is_string) {
                return Some(v);
            }
            let fields = v.get("fields")?.as_object()?.clone();
            if !fields.get("event").is_some_and(Value::is_string) {
                return None;
            }
            let obj = v.as_object_mut()?;
            obj.remove("fields");
            for (k, val) in fields {
                obj.entry(k).or_insert(val);
            }
            Some(v)
        })
        .collect()
}

fn find_key_line(out: &Output, what: &str) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout);
    stdout
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("ssh-") || l.contains(" ssh-") || l.starts_with("ecdsa-"))
        .map(str::to_string)
        .unwrap_or_else(|| panic!("no key line in `gatehouse {what}` output:\n{stdout}"))
}

fn find<'a, T>(items: &'a mut [T], pred: impl Fn(&T) -> bool, kind: &str, name: &str) -> &'a mut T {
    items
        .iter_mut()
        .find(|i| pred(i))
        .unwrap_or_else(|| panic!("no {kind} named {name:?} in the builder"))
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// A TOML basic string (JSON string escapes are valid TOML).
pub fn toml_str(s: &str) -> String {
    serde_json::to_string(s).expect("serialize a string")
}

/// A TOML array of strings.
pub fn toml_array<S: AsRef<str>>(items: &[S]) -> String {
    let items: Vec<String> = items.iter().map(|s| toml_str(s.as_ref())).collect();
    format!("[{}]", items.join(", "))
}
