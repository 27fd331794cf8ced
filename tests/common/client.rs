//! The stock OpenSSH client (`ssh`, `scp`, `sftp`, `rsync`), driven without a
//! terminal.
//!
//! `ssh -J` starts a second ssh for the jump host which does not inherit `-i`
//! or `-o` options but does get `-F`, so everything lives in a generated
//! ssh_config passed with `-F`. The TOTP answer comes from an `SSH_ASKPASS`
//! script that prints the code a test set (and counts its invocations).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use tempfile::TempDir;

use super::gatehouse::Gatehouse;
use super::keys::{key_without_comment, KeyPair};
use super::util::{run_checked_timeout, run_with_timeout, ChildGuard, DEFAULT_COMMAND_TIMEOUT};

/// One person's OpenSSH client setup: key, known_hosts, config, askpass.
pub struct SshClient {
    dir: TempDir,
    user: String,
    port: u16,
    key_path: PathBuf,
    /// Options set with `set_option`, placed before everything else.
    options: Mutex<Vec<(String, String)>>,
}

impl SshClient {
    /// A client for `user` with `key`, where `gw` (the Host alias) is the
    /// running gatehouse and each of `target_names` is trusted with the
    /// gateway's host key (gatehouse itself answers the inner `-J`
    /// connection).
    pub fn new(key: &KeyPair, user: &str, gw: &Gatehouse, target_names: &[&str]) -> SshClient {
        SshClient::for_endpoint(key, user, gw.port, &gw.hostkey(), target_names)
    }

    /// Like [`SshClient::new`] for any SSH server on `127.0.0.1:port` with
    /// host key `host_key` (e.g. a plain [`super::Sshd`]).
    pub fn for_endpoint(
        key: &KeyPair,
        user: &str,
        port: u16,
        host_key: &str,
        target_names: &[&str],
    ) -> SshClient {
        let dir = tempfile::Builder::new()
            .prefix("gh-client-")
            .tempdir()
            .expect("client temp dir");
        let client = SshClient {
            dir,
            user: user.to_string(),
            port,
            key_path: key.private_path.clone(),
            options: Mutex::new(Vec::new()),
        };
        let host_key = key_without_comment(host_key);
        let mut known = vec![format!("[127.0.0.1]:{port} {host_key}")];
        known.extend(target_names.iter().map(|t| format!("{t} {host_key}")));
        std::fs::write(client.known_hosts_path(), known.join("\n") + "\n")
            .expect("write known_hosts");
        client.write_askpass();
        client.set_code("");
        client.write_config();
        client
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir().join("ssh_config")
    }

    pub fn known_hosts_path(&self) -> PathBuf {
        self.dir().join("known_hosts")
    }

    /// The gatehouse user name this client logs in as (`User` of `gw`).
    pub fn user(&self) -> &str {
        &self.user
    }

    /// Adds a known_hosts line, e.g. `("[web-1]:2222", key)`.
    pub fn add_known_host(&self, host_pattern: &str, host_key: &str) {
        let mut text = std::fs::read_to_string(self.known_hosts_path()).unwrap_or_default();
        text.push_str(&format!(
            "{host_pattern} {}\n",
            key_without_comment(host_key)
        ));
        std::fs::write(self.known_hosts_path(), text).expect("write known_hosts");
    }

    /// Sets an ssh_config option for every host, overriding the defaults,
    /// also for the jump child (e.g. `("NumberOfPasswordPrompts", "3")`).
    pub fn set_option(&self, key: &str, value: &str) {
        {
            let mut options = self.options.lock().unwrap_or_else(|e| e.into_inner());
            options.retain(|(k, _)| !k.eq_ignore_ascii_case(key));
            options.push((key.to_string(), value.to_string()));
        }
        self.write_config();
    }

    /// The answer to every following `Verification code:` prompt.
    pub fn set_code(&self, code: &str) {
        self.set_codes(&[code]);
    }

    /// Answers for the next prompts in order; the last one repeats.
    pub fn set_codes(&self, codes: &[&str]) {
        let mut text = codes.join("\n");
        text.push('\n');
        std::fs::write(self.dir().join("codes"), text).expect("write codes");
    }

    /// How many times ssh asked for a code (keyboard-interactive prompt).
    pub fn askpass_invocations(&self) -> usize {
        self.askpass_prompts().len()
    }

    /// The prompts ssh showed, one per invocation (newlines as spaces).
    pub fn askpass_prompts(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir().join("askpass.log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// `ssh -F cfg ARGS...` with stdin null and the askpass environment.
    pub fn command(&self, args: &[&str]) -> Command {
        self.tool_command("ssh", &["-F", &self.config_arg()], args)
    }

    /// `ssh -F cfg -J gw LOGIN@TARGET REMOTE...`.
    pub fn jump(&self, login: &str, target: &str, remote: &[&str]) -> Command {
        let dest = format!("{login}@{target}");
        let mut args = vec!["-J", "gw", dest.as_str()];
        args.extend_from_slice(remote);
        self.command(&args)
    }

    /// `ssh -F cfg OPTIONS... -J gw LOGIN@TARGET REMOTE...`: options for the
    /// inner (target) connection must come before the destination.
    pub fn jump_with(
        &self,
        options: &[&str],
        login: &str,
        target: &str,
        remote: &[&str],
    ) -> Command {
        let dest = format!("{login}@{target}");
        let mut args: Vec<&str> = options.to_vec();
        args.extend_from_slice(&["-J", "gw", dest.as_str()]);
        args.extend_from_slice(remote);
        self.command(&args)
    }

    /// Runs `ssh -F cfg ARGS...` to completion; panics after 60 s.
    pub fn run(&self, args: &[&str]) -> Output {
        run_checked_timeout(&mut self.command(args), DEFAULT_COMMAND_TIMEOUT)
    }

    /// Like [`SshClient::run`]; None (after killing it) on timeout.
    pub fn run_timeout(&self, args: &[&str], timeout: Duration) -> Option<Output> {
        run_with_timeout(&mut self.command(args), timeout)
    }

    /// Runs [`SshClient::jump`] to completion; panics after 60 s.
    pub fn run_jump(&self, login: &str, target: &str, remote: &[&str]) -> Output {
        run_checked_timeout(
            &mut self.jump(login, target, remote),
            DEFAULT_COMMAND_TIMEOUT,
        )
    }

    /// Starts `ssh -F cfg ARGS...` with piped stdin/stdout/stderr, killed on
    /// drop (for long sessions; take stdin with `guard.child().stdin.take()`).
    pub fn spawn(&self, args: &[&str]) -> ChildGuard {
        let mut cmd = self.command(args);
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        ChildGuard::spawn(&mut cmd)
    }

    /// `scp -F cfg ARGS...` (add `-J gw` yourself).
    pub fn scp_command(&self, args: &[&str]) -> Command {
        self.tool_command("scp", &["-F", &self.config_arg()], args)
    }

    /// `sftp -F cfg -o BatchMode=no ARGS...` (add `-J gw` yourself). sftp's
    /// `-b` would turn BatchMode on, which disables the code prompt; the
    /// earlier `-o BatchMode=no` wins. Commands can also be fed on stdin.
    pub fn sftp_command(&self, args: &[&str]) -> Command {
        self.tool_command(
            "sftp",
            &["-F", &self.config_arg(), "-o", "BatchMode=no"],
            args,
        )
    }

    /// `rsync -e "ssh -F cfg -J gw" ARGS...`.
    pub fn rsync_command(&self, args: &[&str]) -> Command {
        let rsh = format!("ssh -F {} -J gw", self.config_arg());
        self.tool_command("rsync", &["-e", &rsh], args)
    }

    fn config_arg(&self) -> String {
        self.config_path().display().to_string()
    }

    fn tool_command(&self, program: &str, first: &[&str], args: &[&str]) -> Command {
        let mut cmd = Command::new(program);
        cmd.args(first)
            .args(args)
            .stdin(Stdio::null())
            .env("SSH_ASKPASS", self.dir().join("askpass.sh"))
            .env("SSH_ASKPASS_REQUIRE", "force")
            .env("DISPLAY", ":0")
            .env_remove("SSH_AUTH_SOCK");
        cmd
    }

    fn write_askpass(&self) {
        let dir = self.dir().display().to_string();
        let script = format!(
            r#"#!/bin/sh
# ssh's SSH_ASKPASS for tests: log the prompt, print the next code.
dir='{dir}'
{{ printf '%s' "$*" | tr '\n' ' '; echo; }} >> "$dir/askpass.log"
code=$(head -n 1 "$dir/codes" 2>/dev/null)
if [ "$(wc -l < "$dir/codes")" -gt 1 ]; then
  tail -n +2 "$dir/codes" > "$dir/codes.tmp" && mv "$dir/codes.tmp" "$dir/codes"
fi
printf '%s\n' "$code"
"#
        );
        let path = self.dir().join("askpass.sh");
        std::fs::write(&path, script).expect("write askpass.sh");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o700))
            .expect("chmod askpass.sh");
    }

    fn write_config(&self) {
        let q = |p: &Path| format!("\"{}\"", p.display());
        let mut text = String::new();
        let options = self
            .options
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if !options.is_empty() {
            // ssh uses the first value it reads for an option.
            text.push_str("Host *\n");
            for (k, v) in &options {
                text.push_str(&format!("  {k} {v}\n"));
            }
            text.push('\n');
        }
        text.push_str(&format!(
            "Host gw\n  HostName 127.0.0.1\n  Port {}\n  User {}\n\n",
            self.port, self.user
        ));
        let defaults = [
            format!("IdentityFile {}", q(&self.key_path)),
            "IdentitiesOnly yes".to_string(),
            "IdentityAgent none".to_string(),
            format!("UserKnownHostsFile {}", q(&self.known_hosts_path())),
            "GlobalKnownHostsFile /dev/null".to_string(),
            "StrictHostKeyChecking yes".to_string(),
            "UpdateHostKeys no".to_string(),
            "CheckHostIP no".to_string(),
            "PasswordAuthentication no".to_string(),
            "KbdInteractiveAuthentication yes".to_string(),
            "PreferredAuthentications publickey,keyboard-interactive".to_string(),
            // One code attempt per connection, so failures are countable.
            "NumberOfPasswordPrompts 1".to_string(),
            "BatchMode no".to_string(),
            "ConnectTimeout 10".to_string(),
            "LogLevel ERROR".to_string(),
            "ServerAliveInterval 0".to_string(),
            "ControlMaster no".to_string(),
            "ControlPath none".to_string(),
        ];
        text.push_str("Host *\n");
        for line in defaults {
            text.push_str(&format!("  {line}\n"));
        }
        std::fs::write(self.config_path(), text).expect("write ssh_config");
    }
}
