//! Network namespaces and Debian's `wireguard-go` for WireGuard tests.
//!
//! A WireGuard test runs in two processes. The test function, run by
//! cargo, calls [`enter`]: that creates a gateway namespace and one client
//! namespace per WireGuard client, each client joined to the gateway by its
//! own veth pair (`198.18.N.1` gateway side, `198.18.N.2` client side — the
//! benchmarking range, only ever inside these namespaces), and re-runs the
//! same test function inside the gateway namespace. There `enter` returns
//! the [`Lab`] and the body runs: gatehouse, sshd and everything the
//! harness starts live in the gateway namespace (their loopback is the
//! namespace's own), and clients run in the client namespaces through
//! [`in_ns`]. Nothing is sent to any address outside these namespaces.
//!
//! Cleanup: the parent kills every process left in the namespaces and
//! deletes them on drop, also when the body panicked; namespaces left by a
//! test process that was killed outright are removed by the next run.
//!
//! These tests need root (namespaces, TUN devices). As non-root they print
//! why they are skipped; under `CI=true` they fail instead.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use super::util::{require_tools, run_with_timeout, wait_until, ChildGuard};

/// Environment variable that marks the child run and names the lab.
const LAB_ENV: &str = "GATEHOUSE_WG_LAB";
/// Prefix of every namespace these tests create.
const NS_PREFIX: &str = "ghwg";
/// How long one re-run test may take.
const CHILD_TIMEOUT: Duration = Duration::from_secs(900);

/// The tools a WireGuard test drives.
pub const WG_TOOLS: &[&str] = &["ip", "wireguard-go", "wg", "ssh", "sshd", "oathtool"];

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// The namespaces of one test, as seen from inside the gateway namespace.
#[derive(Debug, Clone)]
pub struct Lab {
    pub gateway_ns: String,
    pub client_ns: Vec<String>,
}

impl Lab {
    /// The gateway's underlay address as client `i` reaches it.
    pub fn gateway_ip(&self, i: usize) -> String {
        format!("198.18.{}.1", i + 1)
    }

    /// Client `i`'s underlay address.
    pub fn client_ip(&self, i: usize) -> String {
        format!("198.18.{}.2", i + 1)
    }

    pub fn client(&self, i: usize) -> &str {
        self.client_ns
            .get(i)
            .map(String::as_str)
            .expect("no such client namespace")
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// In the child run: `Some(lab)`, run the body. In the parent: builds the
/// namespaces, re-runs `test` inside the gateway namespace, asserts that it
/// passed, cleans up, and returns `None` (the body already ran). Also
/// `None` when the test cannot run here (not root, tools missing), after
/// saying why; under `CI=true` that is a failure instead.
pub fn enter(test: &str, clients: usize) -> Option<Lab> {
    if let Ok(spec) = std::env::var(LAB_ENV) {
        let mut parts = spec.split(',').map(str::to_string);
        let gateway_ns = parts.next().expect("lab spec names the gateway namespace");
        return Some(Lab {
            gateway_ns,
            client_ns: parts.collect(),
        });
    }
    if !is_root() {
        let why = "WireGuard tests need root (network namespaces and TUN devices)";
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("{why}, and CI=true: run the tests as root");
        }
        eprintln!("skipping {test}: {why}; run as root to include them");
        return None;
    }
    if !require_tools(WG_TOOLS) {
        return None;
    }
    remove_stale_namespaces();
    let lab = Namespaces::create(clients);
    let exe = std::env::current_exe().expect("current test executable");
    let spec = std::iter::once(lab.gateway.clone())
        .chain(lab.clients.iter().cloned())
        .collect::<Vec<_>>()
        .join(",");
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &lab.gateway])
        .arg(&exe)
        .args([
            test,
            "--exact",
            "--include-ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(LAB_ENV, spec)
        .stdin(Stdio::null());
    let out = run_with_timeout(&mut cmd, CHILD_TIMEOUT);
    let Some(out) = out else {
        panic!("{test} did not finish within {CHILD_TIMEOUT:?} inside its namespace");
    };
    eprintln!(
        "---- {test} (inside namespace {}) ----\n{}{}",
        lab.gateway,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let ran = String::from_utf8_lossy(&out.stdout).contains("1 passed");
    assert!(
        out.status.success() && ran,
        "{test} failed inside its namespace ({})",
        out.status
    );
    drop(lab);
    None
}

/// The namespaces and veth pairs of one test; deleted on drop.
struct Namespaces {
    gateway: String,
    clients: Vec<String>,
}

impl Namespaces {
    fn create(clients: usize) -> Namespaces {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let base = format!("{NS_PREFIX}-{}-{n}", std::process::id());
        let ns = Namespaces {
            gateway: format!("{base}-gw"),
            clients: (0..clients).map(|i| format!("{base}-c{i}")).collect(),
        };
        ip(&["netns", "add", &ns.gateway]);
        ip(&["-n", &ns.gateway, "link", "set", "lo", "up"]);
        for (i, c) in ns.clients.iter().enumerate() {
            ip(&["netns", "add", c]);
            ip(&["-n", c, "link", "set", "lo", "up"]);
            let (gw_if, cl_if) = (format!("veth{i}"), "veth0".to_string());
            ip(&[
                "link",
                "add",
                &gw_if,
                "netns",
                &ns.gateway,
                "type",
                "veth",
                "peer",
                "name",
                &cl_if,
                "netns",
                c,
            ]);
            let net = i + 1;
            ip(&[
                "-n",
                &ns.gateway,
                "addr",
                "add",
                &format!("198.18.{net}.1/24"),
                "dev",
                &gw_if,
            ]);
            ip(&[
                "-n",
                c,
                "addr",
                "add",
                &format!("198.18.{net}.2/24"),
                "dev",
                &cl_if,
            ]);
            ip(&["-n", &ns.gateway, "link", "set", &gw_if, "up"]);
            ip(&["-n", c, "link", "set", &cl_if, "up"]);
        }
        ns
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for ns in self.clients.iter().chain(std::iter::once(&self.gateway)) {
            delete_namespace(ns);
        }
    }
}

/// Kills what still runs in `ns`, then deletes it.
fn delete_namespace(ns: &str) {
    for _ in 0..3 {
        let pids = Command::new("ip")
            .args(["netns", "pids", ns])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
            .unwrap_or_default();
        let pids: Vec<i64> = pids
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect();
        if pids.is_empty() {
            break;
        }
        super::util::send_signal(&pids, "KILL");
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = Command::new("ip")
        .args(["netns", "del", ns])
        .stderr(Stdio::null())
        .status();
}

/// Namespaces of this harness whose creating test process is gone.
fn remove_stale_namespaces() {
    let list = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
        .unwrap_or_default();
    for line in list.lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        let Some(rest) = name.strip_prefix(&format!("{NS_PREFIX}-")) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            delete_namespace(name);
        }
    }
}

fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run ip {args:?}: {e}"));
    assert!(
        out.status.success(),
        "ip {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `cmd` run inside namespace `ns` (`ip netns exec NS PROGRAM ARGS...`),
/// keeping its environment changes. Its stdin/stdout/stderr settings are
/// not carried over: set them on the result.
pub fn in_ns(ns: &str, cmd: &Command) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns]).arg(cmd.get_program());
    c.args(cmd.get_args());
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => {
                c.env(k, v);
            }
            None => {
                c.env_remove(k);
            }
        }
    }
    if let Some(dir) = cmd.get_current_dir() {
        c.current_dir(dir);
    }
    c
}

/// A wg-quick file split into what `wg setconf` takes and what wg-quick
/// itself does (addresses, and routes for every AllowedIPs).
#[derive(Debug, Clone)]
pub struct ClientConf {
    /// The file without wg-quick-only keys.
    pub setconf: String,
    pub addresses: Vec<String>,
    pub allowed_ips: Vec<String>,
    pub values: HashMap<String, String>,
}

impl ClientConf {
    pub fn parse(text: &str) -> ClientConf {
        const WG_QUICK_ONLY: &[&str] = &[
            "address",
            "dns",
            "mtu",
            "table",
            "preup",
            "postup",
            "predown",
            "postdown",
            "saveconfig",
        ];
        let mut setconf = String::new();
        let mut addresses = Vec::new();
        let mut allowed_ips = Vec::new();
        let mut values = HashMap::new();
        for line in text.lines() {
            let t = line.trim();
            if let Some((k, v)) = t.split_once('=') {
                let (k, v) = (k.trim(), v.trim());
                let lower = k.to_ascii_lowercase();
                values.insert(k.to_string(), v.to_string());
                if lower == "address" {
                    addresses.extend(v.split(',').map(|a| a.trim().to_string()));
                }
                if lower == "allowedips" {
                    allowed_ips.extend(v.split(',').map(|a| a.trim().to_string()));
                }
                if WG_QUICK_ONLY.contains(&lower.as_str()) {
                    continue;
                }
            }
            setconf.push_str(line);
            setconf.push('\n');
        }
        ClientConf {
            setconf,
            addresses,
            allowed_ips,
            values,
        }
    }

    pub fn get(&self, key: &str) -> &str {
        self.values
            .get(key)
            .map(String::as_str)
            .unwrap_or_else(|| panic!("{key} missing in the client file"))
    }
}

/// A `wireguard-go` interface configured like `wg-quick up FILE` would, in
/// a client namespace. Stopped (and its interface removed) on drop.
pub struct WgClient {
    pub ns: String,
    pub ifname: String,
    pub conf: ClientConf,
    dir: tempfile::TempDir,
    _proc: ChildGuard,
}

impl WgClient {
    /// Starts `wireguard-go` in `ns` with the client file at `path`.
    /// `addresses` overrides the file's Address (e.g. a forged one) and
    /// `extra_routes` are routed into the interface as well (with the
    /// peer's AllowedIPs widened to match).
    pub fn start(
        ns: &str,
        path: &Path,
        addresses: Option<&[&str]>,
        extra_routes: &[&str],
    ) -> WgClient {
        let text = std::fs::read_to_string(path)
            .unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        let mut conf = ClientConf::parse(&text);
        if !extra_routes.is_empty() {
            let widened: Vec<String> = conf
                .allowed_ips
                .iter()
                .cloned()
                .chain(extra_routes.iter().map(|s| s.to_string()))
                .collect();
            conf.setconf = conf
                .setconf
                .lines()
                .map(|l| {
                    if l.trim().to_ascii_lowercase().starts_with("allowedips") {
                        format!("AllowedIPs = {}", widened.join(", "))
                    } else {
                        l.to_string()
                    }
                })
                .collect::<Vec<_>>()
                .join("\n")
                + "\n";
            conf.allowed_ips = widened;
        }
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let ifname = format!("ghw{}x{n}", std::process::id() % 100_000);
        let dir = tempfile::Builder::new()
            .prefix("gh-wgclient-")
            .tempdir()
            .expect("wg client temp dir");
        let setconf = dir.path().join("setconf.conf");
        std::fs::write(&setconf, &conf.setconf).expect("write setconf file");
        let mut go = Command::new("wireguard-go");
        go.args(["-f", &ifname])
            .env("LOG_LEVEL", "error")
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let mut go = in_ns(ns, &go);
        go.stdout(Stdio::null())
            .stderr(Stdio::null())
            .stdin(Stdio::null());
        let proc = ChildGuard::spawn(&mut go);
        let sock = PathBuf::from(format!("/var/run/wireguard/{ifname}.sock"));
        assert!(
            wait_until(Duration::from_secs(10), || sock.exists()),
            "wireguard-go did not create {}",
            sock.display()
        );
        let client = WgClient {
            ns: ns.to_string(),
            ifname: ifname.clone(),
            conf: conf.clone(),
            dir,
            _proc: proc,
        };
        client.wg(&["setconf", &ifname, &setconf.display().to_string()]);
        let own: Vec<String> = match addresses {
            Some(a) => a.iter().map(|s| s.to_string()).collect(),
            None => conf.addresses.clone(),
        };
        for a in &own {
            ip(&["-n", ns, "addr", "add", a, "dev", &ifname]);
        }
        ip(&["-n", ns, "link", "set", &ifname, "up"]);
        for r in &conf.allowed_ips {
            ip(&["-n", ns, "route", "add", r, "dev", &ifname]);
        }
        client
    }

    /// Runs `wg ARGS...` in the namespace; returns stdout.
    pub fn wg(&self, args: &[&str]) -> String {
        let mut c = Command::new("wg");
        c.args(args);
        let out = in_ns(&self.ns, &c).output().expect("run wg");
        assert!(
            out.status.success(),
            "wg {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    }

    /// Unix time of the latest handshake with the gateway (0: none yet).
    pub fn latest_handshake(&self) -> u64 {
        self.wg(&["show", &self.ifname, "latest-handshakes"])
            .split_whitespace()
            .nth(1)
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }

    /// A scratch directory that lives as long as the client.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for WgClient {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["-n", &self.ns, "link", "del", &self.ifname])
            .stderr(Stdio::null())
            .status();
    }
}

/// Tries a TCP connection from namespace `ns` (bash's /dev/tcp). Ok(true):
/// connected; Ok(false): refused or unreachable quickly; Err(()): no answer
/// within `timeout`.
pub fn tcp_probe(ns: &str, host: &str, port: u16, timeout: Duration) -> Result<bool, ()> {
    let mut c = Command::new("timeout");
    c.arg(format!("{}", timeout.as_secs().max(1))).args([
        "bash",
        "-c",
        &format!("exec 3<>/dev/tcp/{host}/{port}"),
    ]);
    let out = in_ns(ns, &c)
        .stdin(Stdio::null())
        .output()
        .expect("run the tcp probe");
    match out.status.code() {
        Some(0) => Ok(true),
        Some(124) => Err(()),
        _ => Ok(false),
    }
}

/// The gateway's tunnel address in these tests, and gatehouse's UDP port.
pub const TUNNEL_GATEWAY: &str = "10.77.0.1";
pub const WG_PORT: u16 = 51820;

/// A device made by `gatehouse peer add` for client namespace `client`.
#[derive(Debug, Clone)]
pub struct Device {
    pub user: String,
    pub conf: PathBuf,
    pub public_key: String,
    pub address: String,
    pub client: usize,
}

/// The [`super::world::World`] of the SSH tests with WireGuard: sshd as
/// `web-1`, gatehouse with `[wireguard]`, alice (role `web`) enrolled, and
/// her devices made with `gatehouse peer add` (device `i` for client
/// namespace `i`), all running in the lab's gateway namespace.
pub struct WgWorld {
    pub lab: Lab,
    pub sshd: super::Sshd,
    pub gw: super::Gatehouse,
    pub key: super::KeyPair,
    pub secret: String,
    pub client: super::SshClient,
    pub login: String,
    pub devices: Vec<Device>,
    pub keys: tempfile::TempDir,
}

impl WgWorld {
    /// Starts the world with `devices` devices of alice; `tweak` may add
    /// config (the `[wireguard]` table is already there).
    pub fn start(
        lab: Lab,
        devices: usize,
        tweak: impl FnOnce(super::GatehouseBuilder) -> super::GatehouseBuilder,
    ) -> WgWorld {
        let keys = tempfile::Builder::new()
            .prefix("gh-keys-")
            .tempdir()
            .expect("tempdir");
        let key = super::gen_ed25519(keys.path(), "alice");
        // Many parallel logins through one device reach sshd at once.
        let sshd = super::Sshd::start_with(&[], &["MaxStartups 200"]);
        let login = sshd.login.clone();
        let builder = super::GatehouseBuilder::new()
            .user("alice", &["web"], &[&key.public_line])
            .role("web", &["web-1"], &[&login])
            .ssh_target("web-1", sshd.port, &[&sshd.host_public_key])
            .raw(&format!(
                "[wireguard]\nlisten = \"0.0.0.0:{WG_PORT}\"\naddress = \"{TUNNEL_GATEWAY}/24\""
            ));
        let setup = tweak(builder).build();
        sshd.set_authorized_keys(&[&setup.client_pubkey()]);
        let made: Vec<Device> = (0..devices)
            .map(|i| peer_add(&setup, "alice", i, &lab.gateway_ip(i), keys.path()))
            .collect();
        let entries: Vec<String> = made
            .iter()
            .map(|d| {
                format!(
                    "{{ public_key = \"{}\", address = \"{}\" }}",
                    d.public_key, d.address
                )
            })
            .collect();
        let builder = setup
            .builder()
            .user_line("alice", &format!("wireguard = [{}]", entries.join(", ")));
        setup.rewrite(&builder);
        let secret = setup.enroll("alice");
        let gw = setup.start();
        let client = super::SshClient::new(&key, "alice", &gw, &["web-1"]);
        client.add_known_host(TUNNEL_GATEWAY, &gw.hostkey());
        client.set_code(&super::totp(&secret));
        WgWorld {
            lab,
            sshd,
            gw,
            key,
            secret,
            client,
            login,
            devices: made,
            keys,
        }
    }

    /// Brings up device `i`'s client file in its namespace.
    pub fn connect(&self, i: usize) -> WgClient {
        let d = self.devices.get(i).expect("no such device");
        WgClient::start(self.lab.client(d.client), &d.conf, None, &[])
    }

    /// `ssh -F cfg ARGS...` in client namespace `client`.
    pub fn ssh(&self, client: usize, args: &[&str]) -> Command {
        let mut c = in_ns(self.lab.client(client), &self.client.command(args));
        c.stdin(Stdio::null());
        c
    }

    /// `ssh -J alice@10.77.0.1 LOGIN@web-1 REMOTE...` in client namespace
    /// `client`: through the tunnel to gatehouse, then to the target.
    pub fn jump(&self, client: usize, remote: &[&str]) -> Command {
        let jump = format!("alice@{TUNNEL_GATEWAY}");
        let dest = format!("{}@web-1", self.login);
        let mut args = vec!["-J", jump.as_str(), dest.as_str()];
        args.extend_from_slice(remote);
        self.ssh(client, &args)
    }

    /// The code a ±1-step verifier accepts now besides the current one.
    pub fn next_code(&self) -> String {
        super::totp_step(&self.secret, 1)
    }
}

/// Runs `gatehouse peer add USER --out DIR/deviceN.conf --endpoint
/// GATEWAY:PORT` and reads the key and address it printed.
pub fn peer_add(
    setup: &super::GatehouseSetup,
    user: &str,
    n: usize,
    gateway_ip: &str,
    dir: &Path,
) -> Device {
    let conf = dir.join(format!("device{n}.conf"));
    let endpoint = format!("{gateway_ip}:{WG_PORT}");
    let out = setup.cli(&[
        "peer",
        "add",
        user,
        "--out",
        &conf.display().to_string(),
        "--endpoint",
        &endpoint,
        "--no-qr",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "gatehouse peer add failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let field = |name: &str| {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_string())
            .unwrap_or_else(|| panic!("no `{name}` in peer add output:\n{stdout}"))
    };
    Device {
        user: user.to_string(),
        conf,
        public_key: field("Public key:"),
        address: field("Address:"),
        client: n,
    }
}

/// `wg pubkey` of a base64 private key.
pub fn wg_pubkey(private: &str) -> String {
    use std::io::Write;
    let mut p = Command::new("wg")
        .arg("pubkey")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("wg pubkey");
    p.stdin
        .take()
        .expect("stdin")
        .write_all(private.as_bytes())
        .expect("write key");
    let out = p.wait_with_output().expect("wg pubkey");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A fresh key pair from `wg genkey` / `wg pubkey`: (private, public).
pub fn wg_genkey() -> (String, String) {
    let out = Command::new("wg")
        .arg("genkey")
        .output()
        .expect("wg genkey");
    let private = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let public = wg_pubkey(&private);
    (private, public)
}
