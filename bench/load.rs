//! `bench-load`: the Rust half of the benchmark harness (`scripts/bench.sh`,
//! orchestrated by `bench/run.py`). Two roles:
//!
//! * `target` — a lightweight SSH server standing in for an internal host
//!   when hundreds of sessions are held open: publickey for one key
//!   (gatehouse's client key), and every session channel gets a pty + shell
//!   that echoes its input. It costs a few KiB per session, so the target
//!   side does not dominate the 2-core machine the way 1,000 sshd processes
//!   would.
//! * `sessions` — opens interactive sessions through gatehouse exactly as
//!   `ssh -J bench@gw root@TARGET` does (outer login, `direct-tcpip`, an
//!   inner SSH connection over that channel, pty, shell), in steps up to
//!   each requested level, and holds them. After each step it reports the
//!   setup times of that step's sessions and the gateway's RSS as JSON lines
//!   on stdout.
//!
//! Everything is bounded: each session setup has a timeout, the whole run a
//! deadline, and the target server exits after `--max-lifetime-secs`.
//! Loopback only: the addresses come from the orchestrator.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use clap::{Parser, Subcommand};
use russh::keys::{PrivateKey, PrivateKeyWithHashAlg, PublicKey, PublicKeyOrCertificate};
use russh::server::{Auth, ChannelOpenHandle, Msg, PublicKeyOffer, Session, VerifiedPublicKey};
use russh::{client, server, Channel, ChannelId, ChannelMsg, MethodKind, MethodSet};
use serde_json::json;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

#[derive(Debug, Parser)]
#[command(name = "bench-load", about = "gatehouse benchmark load generator")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// A minimal echoing SSH server (the concurrency row's target).
    Target {
        /// Loopback address to listen on.
        #[arg(long)]
        listen: SocketAddr,
        /// OpenSSH-format private host key.
        #[arg(long)]
        host_key: PathBuf,
        /// The one authorized_keys line accepted (gatehouse's client key).
        #[arg(long)]
        authorized_key: String,
        /// Exit after this long whatever happens.
        #[arg(long, default_value_t = 3600)]
        max_lifetime_secs: u64,
    },
    /// Open interactive sessions through gatehouse in steps and hold them.
    Sessions {
        /// gatehouse's SSH listener.
        #[arg(long)]
        gateway: SocketAddr,
        /// gatehouse's host key (`ssh-ed25519 AAAA...`), pinned on both the
        /// outer and the inner connection.
        #[arg(long)]
        gateway_host_key: String,
        /// gatehouse user (must hold a live MFA lease for this key and source).
        #[arg(long)]
        user: String,
        /// The user's private key.
        #[arg(long)]
        key: PathBuf,
        /// Target name as in gatehouse's config.
        #[arg(long)]
        target: String,
        /// Login on the target.
        #[arg(long)]
        login: String,
        /// Cumulative session counts, e.g. 100,500,1000.
        #[arg(long, value_delimiter = ',', required = true)]
        levels: Vec<usize>,
        /// Session setups in flight at once.
        #[arg(long, default_value_t = 16)]
        parallel: usize,
        /// Process whose RSS is sampled after each step (gatehouse).
        #[arg(long)]
        watch_pid: Option<u32>,
        /// Pause after each step before sampling memory.
        #[arg(long, default_value_t = 2.0)]
        settle_secs: f64,
        /// Give up on one session's setup after this long.
        #[arg(long, default_value_t = 60.0)]
        timeout_secs: f64,
        /// Stop opening sessions after this long in total.
        #[arg(long, default_value_t = 600.0)]
        deadline_secs: f64,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("start the tokio runtime")?;
    match cli.command {
        Command::Target {
            listen,
            host_key,
            authorized_key,
            max_lifetime_secs,
        } => rt.block_on(async {
            let serve = run_target(listen, &host_key, &authorized_key);
            match tokio::time::timeout(Duration::from_secs(max_lifetime_secs), serve).await {
                Ok(r) => r,
                Err(_) => {
                    eprintln!("bench-load target: lifetime over; exiting");
                    Ok(())
                }
            }
        }),
        Command::Sessions {
            gateway,
            gateway_host_key,
            user,
            key,
            target,
            login,
            levels,
            parallel,
            watch_pid,
            settle_secs,
            timeout_secs,
            deadline_secs,
        } => {
            let params = Params {
                gateway,
                gateway_key: parse_public_key(&gateway_host_key)?,
                user,
                key: Arc::new(load_key(&key)?),
                target,
                login,
                config: client_config(),
                timeout: Duration::from_secs_f64(timeout_secs),
            };
            let plan = Plan {
                levels,
                parallel: parallel.max(1),
                watch_pid,
                settle: Duration::from_secs_f64(settle_secs),
                deadline: Duration::from_secs_f64(deadline_secs),
            };
            rt.block_on(run_sessions(Arc::new(params), plan))
        }
    }
}

fn load_key(path: &Path) -> anyhow::Result<PrivateKey> {
    russh::keys::load_secret_key(path, None)
        .with_context(|| format!("load private key {}", path.display()))
}

/// `ssh-ed25519 AAAA... [comment]` -> key.
fn parse_public_key(line: &str) -> anyhow::Result<PublicKey> {
    let b64 = line
        .split_whitespace()
        .nth(1)
        .context("a public key line needs `TYPE BASE64`")?;
    russh::keys::parse_public_key_base64(b64).context("parse public key")
}

// ---------------------------------------------------------------- target ---

async fn run_target(listen: SocketAddr, host_key: &Path, authorized: &str) -> anyhow::Result<()> {
    let config = Arc::new(server::Config {
        keys: vec![load_key(host_key)?],
        methods: MethodSet::from(&[MethodKind::PublicKey][..]),
        auth_rejection_time: Duration::from_millis(10),
        auth_rejection_time_initial: Some(Duration::ZERO),
        inactivity_timeout: None,
        nodelay: true,
        ..Default::default()
    });
    let authorized = parse_public_key(authorized)?;
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("listen on {listen}"))?;
    eprintln!("bench-load target: listening on {listen}");
    loop {
        let (tcp, _) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                // Out of descriptors and the like: back off, keep serving.
                eprintln!("bench-load target: accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let handler = EchoTarget {
            authorized: authorized.clone(),
        };
        let config = config.clone();
        tokio::spawn(async move {
            if let Ok(running) = server::run_stream(config, tcp, handler).await {
                let _ = running.await;
            }
        });
    }
}

/// One connection to the echo target.
struct EchoTarget {
    authorized: PublicKey,
}

impl EchoTarget {
    fn decide(&self, key: &PublicKey) -> Auth {
        if key.key_data() == self.authorized.key_data() {
            Auth::Accept
        } else {
            Auth::reject()
        }
    }
}

impl server::Handler for EchoTarget {
    type Error = russh::Error;

    async fn auth_publickey_offered(
        &mut self,
        _user: &str,
        offer: PublicKeyOffer<'_>,
    ) -> Result<Auth, Self::Error> {
        Ok(self.decide(offer.public_key))
    }

    async fn auth_publickey(
        &mut self,
        _user: &str,
        key: VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        Ok(self.decide(key.public_key))
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        // Served through the callbacks below; the channel object is not read.
        drop(channel);
        reply.accept().await;
        Ok(())
    }

    async fn pty_request(
        &mut self,
        channel: ChannelId,
        _term: &str,
        _cols: u32,
        _rows: u32,
        _pw: u32,
        _ph: u32,
        _modes: &[(russh::Pty, u32)],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_success(channel)
    }

    async fn shell_request(
        &mut self,
        channel: ChannelId,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_success(channel)
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        _command: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_success(channel)?;
        session.exit_status_request(channel, 0)?;
        session.eof(channel)?;
        session.close(channel)
    }

    async fn data(
        &mut self,
        channel: ChannelId,
        data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.data(channel, Bytes::copy_from_slice(data))
    }
}

// -------------------------------------------------------------- sessions ---

struct Params {
    gateway: SocketAddr,
    gateway_key: PublicKey,
    user: String,
    key: Arc<PrivateKey>,
    target: String,
    login: String,
    config: Arc<client::Config>,
    timeout: Duration,
}

struct Plan {
    levels: Vec<usize>,
    parallel: usize,
    watch_pid: Option<u32>,
    settle: Duration,
    deadline: Duration,
}

/// Accepts exactly the pinned key (gatehouse presents the same host key on
/// the outer and the inner connection).
struct Pinned(PublicKey);

impl client::Handler for Pinned {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        presented: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        Ok(match presented {
            PublicKeyOrCertificate::PublicKey { key, .. } => key.key_data() == self.0.key_data(),
            PublicKeyOrCertificate::Certificate(_) => false,
        })
    }
}

/// What a stock `ssh` would negotiate with gatehouse for the data path.
fn client_config() -> Arc<client::Config> {
    Arc::new(client::Config {
        preferred: russh::Preferred {
            cipher: std::borrow::Cow::Borrowed(&[russh::cipher::AES_256_GCM]),
            ..Default::default()
        },
        inactivity_timeout: None,
        keepalive_interval: None,
        nodelay: true,
        ..Default::default()
    })
}

/// An open interactive session: dropping it ends both connections.
struct Held {
    _outer: client::Handle<Pinned>,
    _inner: client::Handle<Pinned>,
    chan: Channel<client::Msg>,
}

impl Held {
    /// Sends one byte and waits for the target's echo.
    async fn echo(&mut self, byte: u8) -> Result<(), String> {
        self.chan
            .data_bytes(Bytes::copy_from_slice(&[byte]))
            .await
            .map_err(|e| format!("send: {e}"))?;
        loop {
            match self.chan.wait().await {
                Some(ChannelMsg::Data { data }) if data.contains(&byte) => return Ok(()),
                Some(ChannelMsg::Eof | ChannelMsg::Close) | None => {
                    return Err("channel closed before the echo".into())
                }
                Some(_) => {}
            }
        }
    }
}

async fn expect_reply(chan: &mut Channel<client::Msg>, what: &str) -> Result<(), String> {
    loop {
        match chan.wait().await {
            Some(ChannelMsg::Success) => return Ok(()),
            Some(ChannelMsg::Failure) => return Err(format!("{what} refused")),
            Some(ChannelMsg::Eof | ChannelMsg::Close) | None => {
                return Err(format!("channel closed waiting for {what}"))
            }
            Some(_) => {}
        }
    }
}

/// One `ssh -J user@gw login@target` equivalent with pty + shell; returns
/// the held session and its setup time (TCP connect to shell accepted).
async fn open_session(p: &Params) -> Result<(Held, Duration), String> {
    let t0 = Instant::now();
    let tcp = TcpStream::connect(p.gateway)
        .await
        .map_err(|e| format!("connect: {}", e.kind()))?;
    let _ = tcp.set_nodelay(true);
    let mut outer = client::connect_stream(p.config.clone(), tcp, Pinned(p.gateway_key.clone()))
        .await
        .map_err(|e| format!("outer handshake: {e}"))?;
    let res = outer
        .authenticate_publickey(&p.user, PrivateKeyWithHashAlg::new(p.key.clone(), None))
        .await
        .map_err(|e| format!("outer auth: {e}"))?;
    if !res.success() {
        return Err("outer login not admitted by key alone (no MFA lease?)".into());
    }
    let jump = outer
        .channel_open_direct_tcpip(p.target.as_str(), 22, "127.0.0.1", 0)
        .await
        .map_err(|e| format!("direct-tcpip: {e}"))?;
    let mut inner = client::connect_stream(
        p.config.clone(),
        jump.into_stream(),
        Pinned(p.gateway_key.clone()),
    )
    .await
    .map_err(|e| format!("inner handshake: {e}"))?;
    let res = inner
        .authenticate_publickey(&p.login, PrivateKeyWithHashAlg::new(p.key.clone(), None))
        .await
        .map_err(|e| format!("inner auth: {e}"))?;
    if !res.success() {
        return Err("inner login refused".into());
    }
    let mut chan = inner
        .channel_open_session()
        .await
        .map_err(|e| format!("open session: {e}"))?;
    chan.request_pty(true, "xterm", 80, 24, 0, 0, &[])
        .await
        .map_err(|e| format!("pty: {e}"))?;
    expect_reply(&mut chan, "pty").await?;
    chan.request_shell(true)
        .await
        .map_err(|e| format!("shell: {e}"))?;
    expect_reply(&mut chan, "shell").await?;
    let setup = t0.elapsed();
    let mut held = Held {
        _outer: outer,
        _inner: inner,
        chan,
    };
    // The session counts only if a keystroke makes the round trip.
    held.echo(b'x').await?;
    Ok((held, setup))
}

/// `Vm*` fields of /proc/PID/status in KiB.
fn proc_status_kib(pid: u32, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim_start_matches(':').split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

fn open_fds(pid: u32) -> Option<usize> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .ok()
        .map(|d| d.count())
}

/// Nearest-rank percentile of sorted milliseconds.
fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.clamp(1, sorted.len()) - 1).copied()
}

fn memory(pid: Option<u32>) -> serde_json::Value {
    match pid {
        Some(pid) => json!({
            "rss_kib": proc_status_kib(pid, "VmRSS"),
            "hwm_kib": proc_status_kib(pid, "VmHWM"),
            "fds": open_fds(pid),
        }),
        None => serde_json::Value::Null,
    }
}

async fn run_sessions(p: Arc<Params>, plan: Plan) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut held: Vec<Held> = Vec::new();
    println!(
        "{}",
        json!({"event": "baseline", "memory": memory(plan.watch_pid)})
    );
    for &level in &plan.levels {
        let want = level.saturating_sub(held.len());
        let step_start = Instant::now();
        let slots = Arc::new(Semaphore::new(plan.parallel));
        let mut tasks = JoinSet::new();
        let mut spawned = 0usize;
        for _ in 0..want {
            if started.elapsed() > plan.deadline {
                break;
            }
            let permit = slots.clone().acquire_owned().await?;
            let p = p.clone();
            tasks.spawn(async move {
                let r = match tokio::time::timeout(p.timeout, open_session(&p)).await {
                    Ok(r) => r,
                    Err(_) => Err("setup timed out".into()),
                };
                drop(permit);
                r
            });
            spawned += 1;
        }
        let mut setup_ms = Vec::new();
        let mut errors: BTreeMap<String, usize> = BTreeMap::new();
        while let Some(joined) = tasks.join_next().await {
            match joined {
                Ok(Ok((h, d))) => {
                    held.push(h);
                    setup_ms.push(d.as_secs_f64() * 1000.0);
                }
                Ok(Err(e)) => *errors.entry(e).or_default() += 1,
                Err(e) => *errors.entry(format!("task: {e}")).or_default() += 1,
            }
        }
        let step_secs = step_start.elapsed().as_secs_f64();
        setup_ms.sort_by(f64::total_cmp);
        tokio::time::sleep(plan.settle).await;
        println!(
            "{}",
            json!({
                "event": "level",
                "level": level,
                "attempted": spawned,
                "ok": setup_ms.len(),
                "held": held.len(),
                "errors": errors,
                "step_secs": step_secs,
                "setup_ms": {
                    "p50": percentile(&setup_ms, 50.0),
                    "p95": percentile(&setup_ms, 95.0),
                    "p99": percentile(&setup_ms, 99.0),
                    "max": setup_ms.last(),
                },
                "memory": memory(plan.watch_pid),
            })
        );
    }
    // Every held session must still answer a keystroke.
    let check_start = Instant::now();
    let mut alive = 0usize;
    for h in held.iter_mut() {
        if check_start.elapsed() > Duration::from_secs(120) {
            break;
        }
        if let Ok(Ok(())) = tokio::time::timeout(Duration::from_secs(10), h.echo(b'y')).await {
            alive += 1;
        }
    }
    let total = held.len();
    drop(held);
    tokio::time::sleep(plan.settle).await;
    println!(
        "{}",
        json!({
            "event": "done",
            "held": total,
            "alive": alive,
            "check_secs": check_start.elapsed().as_secs_f64(),
            "memory_after_close": memory(plan.watch_pid),
        })
    );
    Ok(())
}
