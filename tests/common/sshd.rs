//! A real OpenSSH `sshd` as a target host, on a free loopback port, with its
//! own host key and authorized_keys in a temporary directory.

use std::fs::OpenOptions;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use tempfile::TempDir;

use super::keys::key_without_comment;
use super::util::{current_user, find_tool, free_port, kill_tree, port_is_listening, wait_until};

/// A running sshd; killed (with all its session processes) on drop.
pub struct Sshd {
    pub port: u16,
    /// `ssh-ed25519 AAAA...` without a comment: what a target's `host_keys`
    /// pins.
    pub host_public_key: String,
    /// The account to log into (the user the tests run as).
    pub login: String,
    dir: TempDir,
    extra_config: Vec<String>,
    child: Option<Child>,
}

impl Sshd {
    /// Starts sshd accepting exactly `authorized_keys` (authorized_keys lines).
    pub fn start(authorized_keys: &[&str]) -> Sshd {
        Sshd::start_with(authorized_keys, &[])
    }

    /// Like [`Sshd::start`], with extra sshd_config lines placed before the
    /// defaults (sshd uses the first value it reads; no `Match` blocks).
    pub fn start_with(authorized_keys: &[&str], extra_config: &[&str]) -> Sshd {
        let dir = tempfile::Builder::new()
            .prefix("gh-sshd-")
            .tempdir()
            .expect("sshd temp dir");
        let key_path = dir.path().join("ssh_host_ed25519_key");
        let out = Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", "test-sshd", "-f"])
            .arg(&key_path)
            .output()
            .unwrap_or_else(|e| panic!("run ssh-keygen: {e}"));
        assert!(
            out.status.success(),
            "ssh-keygen (sshd host key) failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let host_public_key = key_without_comment(
            &std::fs::read_to_string(dir.path().join("ssh_host_ed25519_key.pub"))
                .expect("read sshd host public key"),
        );
        // sshd running as root insists on its privilege separation directory.
        let _ = std::fs::create_dir_all("/run/sshd");
        let mut sshd = Sshd {
            port: 0,
            host_public_key,
            login: current_user(),
            dir,
            extra_config: extra_config.iter().map(|s| s.to_string()).collect(),
            child: None,
        };
        sshd.set_authorized_keys(authorized_keys);
        sshd.spawn_on_a_free_port();
        sshd
    }

    /// The temp dir holding the config, host key, authorized_keys and log.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// sshd's own log (`-e`, LogLevel VERBOSE): accepted/refused keys etc.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Replaces authorized_keys; sshd reads it on every login.
    pub fn set_authorized_keys(&self, keys: &[&str]) {
        let mut text = keys.join("\n");
        text.push('\n');
        let tmp = self.dir.path().join("authorized_keys.tmp");
        std::fs::write(&tmp, text).expect("write authorized_keys");
        std::fs::rename(&tmp, self.authorized_keys_path()).expect("replace authorized_keys");
    }

    /// `[127.0.0.1]:PORT ssh-ed25519 AAAA...` for a known_hosts file.
    pub fn known_hosts_line(&self) -> String {
        format!("[127.0.0.1]:{} {}", self.port, self.host_public_key)
    }

    /// `127.0.0.1:PORT`.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kills sshd and every session it serves (a target going down).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill_tree(&mut child);
        }
        let port = self.port;
        wait_until(Duration::from_secs(5), || !port_is_listening(port));
    }

    /// Stops (if running) and starts again on the same port with the same
    /// host key and authorized_keys.
    pub fn restart(&mut self) {
        self.stop();
        self.write_config();
        if let Err(log) = self.spawn_and_wait() {
            panic!("sshd did not come back on port {}:\n{log}", self.port);
        }
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("sshd.log")
    }

    fn authorized_keys_path(&self) -> PathBuf {
        self.dir.path().join("authorized_keys")
    }

    fn config_path(&self) -> PathBuf {
        self.dir.path().join("sshd_config")
    }

    fn spawn_on_a_free_port(&mut self) {
        let mut last_log = String::new();
        for _attempt in 0..3 {
            self.port = free_port();
            self.write_config();
            match self.spawn_and_wait() {
                Ok(()) => return,
                // Another process may have taken the port since we probed it.
                Err(log) if log.contains("Address already in use") => last_log = log,
                Err(log) => panic!("sshd failed to start:\n{log}"),
            }
        }
        panic!("sshd could not bind a free port:\n{last_log}");
    }

    fn write_config(&self) {
        let dir = self.dir.path();
        let mut lines: Vec<String> = self.extra_config.clone();
        lines.extend([
            "ListenAddress 127.0.0.1".to_string(),
            format!("Port {}", self.port),
            format!("HostKey {}", dir.join("ssh_host_ed25519_key").display()),
            "PidFile none".to_string(),
            format!(
                "AuthorizedKeysFile {}",
                self.authorized_keys_path().display()
            ),
            "StrictModes no".to_string(),
            "UsePAM no".to_string(),
            "PasswordAuthentication no".to_string(),
            "KbdInteractiveAuthentication no".to_string(),
            "PubkeyAuthentication yes".to_string(),
            "PermitRootLogin prohibit-password".to_string(),
            "Subsystem sftp /usr/lib/openssh/sftp-server".to_string(),
            "AcceptEnv LANG LC_* TERM GH_TEST_*".to_string(),
            "PrintMotd no".to_string(),
            "PrintLastLog no".to_string(),
            "LogLevel VERBOSE".to_string(),
        ]);
        if supports_per_source_penalties() {
            // OpenSSH >= 9.8 would otherwise refuse 127.0.0.1 for a while
            // after the failed logins that tests provoke on purpose.
            lines.push("PerSourcePenalties no".to_string());
        }
        let mut text = lines.join("\n");
        text.push('\n');
        std::fs::write(self.config_path(), text).expect("write sshd_config");
    }

    /// Spawns `sshd -D -e -f cfg` and waits for its port. Err(log) if it exits
    /// or does not listen within 20 s.
    fn spawn_and_wait(&mut self) -> Result<(), String> {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("open sshd.log");
        let child = Command::new(sshd_path())
            .args(["-D", "-e", "-f"])
            .arg(self.config_path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup sshd.log"))
            .stderr(log)
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn sshd: {e}"));
        let child = self.child.insert(child);
        let port = self.port;
        let mut exited = false;
        let up = wait_until(Duration::from_secs(20), || {
            exited = matches!(child.try_wait(), Ok(Some(_)));
            exited || port_is_listening(port)
        });
        if up && !exited {
            return Ok(());
        }
        if let Some(mut child) = self.child.take() {
            kill_tree(&mut child);
        }
        Err(self.log())
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill_tree(&mut child);
        }
    }
}

fn sshd_path() -> PathBuf {
    // sshd must be started by absolute path (it re-executes itself).
    find_tool("sshd").unwrap_or_else(|| PathBuf::from("/usr/sbin/sshd"))
}

/// Whether this sshd knows `PerSourcePenalties` (OpenSSH 9.8+); older ones
/// reject unknown keywords.
fn supports_per_source_penalties() -> bool {
    static SUPPORTED: OnceLock<bool> = OnceLock::new();
    *SUPPORTED.get_or_init(|| {
        let Ok(dir) = tempfile::tempdir() else {
            return false;
        };
        let key = dir.path().join("k");
        let keygen = Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(&key)
            .output();
        if !keygen.map(|o| o.status.success()).unwrap_or(false) {
            return false;
        }
        let cfg = dir.path().join("cfg");
        let text = format!(
            "HostKey {}\nPidFile none\nUsePAM no\nPerSourcePenalties no\n",
            key.display()
        );
        if std::fs::write(&cfg, text).is_err() {
            return false;
        }
        Command::new(sshd_path())
            .arg("-t")
            .arg("-f")
            .arg(&cfg)
            .stdin(Stdio::null())
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    })
}

impl Sshd {
    /// Restarts sshd (same port, host key and authorized_keys) with no
    /// `sftp` subsystem, so that it refuses `subsystem sftp` requests.
    pub fn restart_without_sftp(&mut self) {
        self.stop();
        self.write_config();
        let text: String = std::fs::read_to_string(self.config_path())
            .expect("read sshd_config")
            .lines()
            .filter(|l| !l.starts_with("Subsystem sftp"))
            .map(|l| format!("{l}\n"))
            .collect();
        std::fs::write(self.config_path(), text).expect("write sshd_config");
        if let Err(log) = self.spawn_and_wait() {
            panic!(
                "sshd did not come back without sftp on port {}:\n{log}",
                self.port
            );
        }
    }
}
