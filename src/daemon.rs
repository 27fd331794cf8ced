//! The wiring: open state, bind listeners, accept connections, shut down.
//! This is the only module that knows every other one.
//!
//! Connection limits live here: `max_connections` slots, the
//! pre-authentication caps ([`preauth`]), the authentication deadline, the
//! age limit of an authenticated connection (`auth.max_connection_age`), and
//! an accept loop that backs off, and still answers, when the process is out
//! of file descriptors ([`fdlimit`]).

mod fdlimit;
pub mod notify;
mod preauth;
pub mod reload;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tracing::Instrument;

use crate::audit;
use crate::auth::Authenticator;
use crate::config::{Current, DbTls, Settings};
use crate::db::{self, DbGateway, DbService};
use crate::dispatch::{Connection, Dispatch, Service, Serving};
use crate::recording::Recorder;
use crate::source::Source;
use crate::ssh::server::Outer;
use crate::ssh::{self, Gateway};
use crate::state::StateDir;
use crate::tunnel;

/// How long shutdown waits for sessions to finish after telling them.
const GRACE: Duration = Duration::from_secs(10);
/// Refused connections being told why at once, per listener; more are
/// closed without a message.
const MAX_REFUSALS_IN_FLIGHT: usize = 64;
/// How long a refused connection may take to receive its message.
const REFUSAL_TIME: Duration = Duration::from_secs(1);

/// Runs the gateway until `shutdown` resolves.
pub async fn run(
    settings: Arc<Settings>,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    // Before anything opens a descriptor: soft limit up to the hard one.
    fdlimit::check(&settings);
    // From here on SIGHUP waits for the reload instead of ending us.
    let hangups = reload::hangups().context("cannot handle SIGHUP")?;
    let state = Arc::new(StateDir::open(&settings.gateway.state_dir)?);
    let host_key = state.host_key()?;
    let client_key = state.client_key()?;
    // The configuration in force: a reload (SIGHUP, `gatehouse reload`)
    // swaps it; every login and channel reads it once.
    let config = Current::new(settings.clone());
    let auth = Arc::new(Authenticator::new(config.clone(), state.clone())?);
    let (stop_tx, stop_rx) = watch::channel(false);
    let live = crate::live::Registry::new();
    // [anomaly]: the login hooks find the rules once installed; the session
    // rules watch the live registry.
    if let Some(a) = &settings.anomaly {
        crate::anomaly::install(a, state.root())?;
        crate::anomaly::watch_sessions(live.clone(), stop_rx.clone());
    }
    let locks = Arc::new(
        crate::locks::Locks::open(&settings.gateway.state_dir)
            .map_err(|e| anyhow::anyhow!("locks: {e}"))?,
    );
    locks.guard(&live); // ctlattack: a lock set mid-login ends the session once listed
    let (server_config, jump_config) = ssh::server_configs(host_key.private.clone());
    // No recorder, no gateway: there is no unrecorded mode.
    let recorder = Arc::new(
        Recorder::new(&settings.recordings)
            .map_err(|e| anyhow::anyhow!("recordings: {}", e.detail()))?,
    );
    recorder.clone().spawn_retention(stop_rx.clone());
    // The database proxies, one per database target, by tunnel_port: the
    // same services inside the tunnel and behind SSH direct-tcpip.
    let db_gw = Arc::new(DbGateway {
        config: config.clone(),
        auth: auth.clone(),
        recorder: recorder.clone(),
        state: state.clone(),
        keys: db::cancel::Keys::default(),
        live: live.clone(),
        locks: locks.clone(),
        shutdown: stop_rx.clone(),
        statement_budget: Arc::new(Semaphore::new(db::postgres::relay::BUDGET_KIB)),
        greetings: Default::default(),
    });
    let mut databases = Dispatch::new();
    for t in &settings.targets {
        if let Some(d) = &t.db {
            if matches!(d.tls, DbTls::Disable) {
                tracing::warn!(
                    target = %t.name,
                    "database target {} has tls = \"disable\": its traffic and login cross the network unencrypted",
                    t.name
                );
            }
            databases = databases.route(
                d.tunnel_port,
                Arc::new(DbService::new(db_gw.clone(), &t.name, t.kind)),
            );
        }
    }
    let databases = Arc::new(databases);
    let gw = Arc::new(Gateway {
        recorder: recorder.clone(),
        auth: auth.clone(),
        databases: databases.clone(),
        server_config,
        jump_config,
        client_config: ssh::client_config(),
        client_key: Arc::new(client_key.private.clone()),
        live: live.clone(),
        locks: locks.clone(),
        shutdown: stop_rx.clone(),
        caps: ssh::caps::Caps::new(ssh::caps::CapLimits::from_settings(&settings.gateway)),
        config: config.clone(),
    });

    let ssh_service: Arc<dyn Service> = Arc::new(SshService(gw.clone()));

    // Bind everything before serving anything: a bad address fails the start.
    let mut listeners = Vec::new();
    let mut plain = Dispatch::new();
    for addr in &settings.gateway.ssh_listen {
        let l = TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr}"))?;
        let port = l
            .local_addr()
            .with_context(|| format!("cannot listen on {addr}"))?
            .port();
        plain = plain.route(port, ssh_service.clone());
        listeners.push(l);
    }
    let plain = Arc::new(plain);
    // WireGuard (when configured): SSH on the tunnel address too. Bound
    // here, so a bad or busy UDP address fails the start like a TCP one.
    let tunnelled = Arc::new(
        databases
            .as_ref()
            .clone()
            .route(tunnel::SSH_PORT, ssh_service),
    );
    let tunnel = tunnel::start(tunnelled, &settings, &state, stop_rx.clone())
        .context("cannot start the WireGuard tunnel")?;
    // Reload: SIGHUP here, `gatehouse reload` through the control socket.
    let reloader = reload::Reloader::new(
        config.clone(),
        state.clone(),
        live.clone(),
        tunnel.as_ref().map(|t| t.control()),
    );
    reloader.serve_hangups(hangups, stop_rx.clone());
    // `[metrics] listen`: off unless configured; bound before anything is
    // served, so a bad or busy address fails the start like the others.
    if let Some(addr) = settings.metrics.listen {
        let l = TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr} ([metrics] listen)"))?;
        tracing::info!(listen = %addr, "metrics listener ready (GET /metrics)");
        tokio::spawn(crate::metrics::serve(l, live.clone(), stop_rx.clone()));
    }
    let max = settings.gateway.max_connections;
    let slots = Arc::new(Semaphore::new(max));
    let pre_auth = preauth::PreAuth::new(settings.gateway.pre_auth.clone());
    {
        let pre_auth = pre_auth.clone();
        let mut stop = stop_rx.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(60));
            loop {
                tokio::select! {
                    _ = tick.tick() => pre_auth.flush(),
                    _ = stop.changed() => { pre_auth.flush(); return; }
                }
            }
        });
    }
    // The control socket, bound with the listeners: a start that cannot
    // be operated (or finds another gatehouse on the socket) fails.
    let control_socket = crate::control::server::bind(&settings.control)
        .context("cannot create the control socket")?;
    tracing::info!(socket = %settings.control.socket.display(), "control socket ready");
    tokio::spawn(crate::control::server::serve(
        control_socket,
        Arc::new(crate::control::server::Control {
            live: live.clone(),
            locks: locks.clone(),
            reload: Some(Arc::new(reloader.clone())),
            auth: Some(auth.clone()),
        }),
        stop_rx.clone(),
    ));
    for l in listeners {
        let addr = l.local_addr().ok();
        tracing::info!(listen = ?addr, host_key = %host_key.fingerprint(), "ssh listener ready");
        tokio::spawn(accept_loop(
            l,
            plain.clone(),
            slots.clone(),
            pre_auth.clone(),
            stop_rx.clone(),
        ));
    }
    // systemd (Type=notify): READY=1 now that the state directory is open
    // and every listener above is bound; STATUS=, watchdog pings, and
    // STOPPING=1 when `shutdown` resolves.
    let wireguard_status = settings
        .wireguard
        .is_some()
        .then(|| tunnel::status::path(state.root()));
    let shutdown = notify::serving(live.clone(), wireguard_status, stop_rx.clone(), shutdown);

    shutdown.await;
    tracing::info!("shutting down: no new connections; telling sessions");
    let _ = stop_tx.send(true);
    // Every connection holds a slot; all slots back means all are done.
    let max_u32 = u32::try_from(max).unwrap_or(u32::MAX);
    if tokio::time::timeout(GRACE, slots.acquire_many(max_u32))
        .await
        .is_err()
    {
        tracing::warn!("sessions still open after the grace period; exiting anyway");
    }
    // Seal what the ended sessions wrote.
    if !recorder.drain(GRACE).await {
        tracing::warn!(
            open = recorder.active(),
            "recordings still open after the grace period"
        );
    }
    Ok(())
}

/// Accepts until shutdown. Errors back off instead of ending the server;
/// the semaphore caps concurrent connections; the pre-authentication caps
/// refuse, with a message, what one source or a crowd of half-open logins
/// would take. Out of descriptors, one kept in reserve lets the loop take a
/// waiting connection off the queue with a message instead of spinning.
async fn accept_loop(
    l: TcpListener,
    dispatch: Arc<Dispatch>,
    slots: Arc<Semaphore>,
    pre_auth: Arc<preauth::PreAuth>,
    mut stop: watch::Receiver<bool>,
) {
    const MIN_BACKOFF: Duration = Duration::from_millis(5);
    const MAX_BACKOFF: Duration = Duration::from_secs(1);
    let mut backoff = MIN_BACKOFF;
    let mut reserve = fdlimit::Reserve::new();
    let mut last_warning: Option<Instant> = None;
    let refusers = Arc::new(Semaphore::new(MAX_REFUSALS_IN_FLIGHT));
    loop {
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
            _ = stop.changed() => return,
        };
        let (stream, peer) = tokio::select! {
            r = l.accept() => match r {
                Ok(x) => { backoff = MIN_BACKOFF; x }
                Err(e) => {
                    let out_of_fds = fdlimit::is_out_of_descriptors(&e);
                    if last_warning.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
                        last_warning = Some(Instant::now());
                        tracing::warn!(error = %e, "accept failed; backing off");
                    }
                    if out_of_fds && refuse_with_reserve(&l, &mut reserve, &pre_auth).await {
                        // One waiting connection was answered and closed:
                        // progress, not a spin. Go on with the queue.
                        continue;
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = stop.changed() => return,
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    continue;
                }
            },
            _ = stop.changed() => return,
        };
        // Keep (or get back) the reserve while descriptors are free.
        reserve.refill();
        let _ = stream.set_nodelay(true);
        let pre = match pre_auth.try_acquire(peer.ip()) {
            Ok(p) => p,
            Err(why) => {
                pre_auth.refused(peer.ip(), why);
                // A refusal never holds a connection slot (a flood of
                // refused connections must not fill them); the tasks that
                // write refusals are capped on their own, and past that cap
                // a refused connection is simply closed.
                drop(permit);
                if let Ok(writer) = refusers.clone().try_acquire_owned() {
                    tokio::spawn(async move {
                        refuse(stream, why).await;
                        drop(writer);
                    });
                }
                continue;
            }
        };
        let span = tracing::info_span!("conn", %peer);
        let Some(local) = stream.local_addr().ok().or_else(|| l.local_addr().ok()) else {
            continue;
        };
        let conn = Connection {
            stream: Box::new(stream),
            source: Source::Address(peer),
            local,
            pre_auth: Some(Box::new(pre)),
            admitted: None,
        };
        let Some(serving) = dispatch.serve(conn) else {
            continue;
        };
        tokio::spawn(
            async move {
                serving.await;
                drop(permit);
            }
            .instrument(span),
        );
    }
}

/// Out of descriptors: frees the reserve, accepts one waiting connection,
/// tells it why and closes it, then takes the reserve back. True if a
/// connection was answered.
async fn refuse_with_reserve(
    l: &TcpListener,
    reserve: &mut fdlimit::Reserve,
    pre_auth: &preauth::PreAuth,
) -> bool {
    if !reserve.release() {
        reserve.refill();
        return false;
    }
    let answered = match tokio::time::timeout(Duration::from_millis(20), l.accept()).await {
        Ok(Ok((stream, peer))) => {
            let why = preauth::Refusal::NoDescriptors;
            pre_auth.refused(peer.ip(), why);
            // No waiting here: the descriptor must come back at once.
            let _ = stream.try_write(&preauth::refusal_bytes(why));
            let mut sink = [0u8; 512];
            let _ = stream.try_read(&mut sink);
            true
        }
        _ => false,
    };
    reserve.refill();
    answered
}

/// Tells a refused client why (identification line + disconnect) and closes.
async fn refuse(mut stream: tokio::net::TcpStream, why: preauth::Refusal) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let bytes = preauth::refusal_bytes(why);
    let _ = tokio::time::timeout(REFUSAL_TIME, async {
        stream.write_all(&bytes).await?;
        stream.shutdown().await?;
        // Read what the client already sent so the close is a FIN, not a
        // reset that could discard the message before the client reads it.
        let mut sink = [0u8; 1024];
        while stream.read(&mut sink).await? > 0 {}
        Ok::<(), std::io::Error>(())
    })
    .await;
}

/// gatehouse's SSH server as a [`Service`] behind a port.
struct SshService(Arc<Gateway>);

impl Service for SshService {
    fn serve(&self, conn: Connection) -> Serving {
        Box::pin(serve(self.0.clone(), conn))
    }
}

/// One client connection, from any listener (TCP or the WireGuard tunnel):
/// SSH with an authentication deadline, closed once it reaches
/// `auth.max_connection_age`; the connection's pre-authentication slot is
/// given back at login.
async fn serve(gw: Arc<Gateway>, conn: Connection) {
    let Connection {
        stream,
        source,
        local,
        pre_auth,
        admitted: _,
    } = conn;
    let opened = tokio::time::Instant::now();
    let authenticated = Arc::new(AtomicBool::new(false));
    let handler = Outer::new(
        gw.clone(),
        source.clone(),
        Some(local),
        authenticated.clone(),
    );
    let source = source.to_string();
    let settings = gw.settings();
    let deadline = settings.gateway.auth_timeout;
    let started = tokio::time::timeout(
        deadline,
        russh::server::run_stream(gw.server_config.clone(), stream, handler),
    )
    .await;
    let session = match started {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "ssh handshake failed");
            return;
        }
        Err(_) => {
            tracing::info!("client sent no SSH identification before the deadline");
            return;
        }
    };
    let handle = session.handle();
    let (close_tx, close_rx) = tokio::sync::oneshot::channel::<()>();
    let timer = {
        let handle = handle.clone();
        let authenticated = authenticated.clone();
        let max_age = settings.auth.max_connection_age;
        tokio::spawn(async move {
            let mut pre_auth = pre_auth;
            // Until login: poll the flag, give the pre-auth slot back the
            // moment it flips, and enforce the deadline.
            let message = loop {
                if authenticated.load(Ordering::SeqCst) {
                    drop(pre_auth.take());
                    break None;
                }
                let elapsed = opened.elapsed();
                if elapsed >= deadline {
                    tracing::info!("authentication deadline passed; disconnecting");
                    break Some("authentication timed out".to_string());
                }
                tokio::time::sleep((deadline - elapsed).min(Duration::from_millis(100))).await;
            };
            let message = match message {
                Some(m) => m,
                None => {
                    tokio::time::sleep_until(opened + max_age).await;
                    let age = humantime::format_duration(max_age);
                    audit::connection_closed(
                        "-",
                        &source,
                        &format!("the connection reached auth.max_connection_age ({age})"),
                    );
                    format!(
                        "gatehouse: this connection is older than {age} (auth.max_connection_age); \
                         connect again"
                    )
                }
            };
            let _ = tokio::time::timeout(
                Duration::from_secs(2),
                handle.disconnect(russh::Disconnect::ByApplication, message, "en".into()),
            )
            .await;
            let _ = close_tx.send(());
        })
    };
    let mut stop = gw.shutdown.clone();
    tokio::pin!(session);
    tokio::select! {
        r = &mut session => {
            if let Err(e) = r {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        }
        _ = close_rx => {
            // Disconnect sent (or timed out): a client that does not read
            // does not keep the connection; dropping the session closes it.
            let _ = tokio::time::timeout(Duration::from_secs(1), &mut session).await;
        }
        _ = stop.changed() => {
            let _ = handle
                .disconnect(russh::Disconnect::ByApplication, "gatehouse is shutting down".into(), "en".into())
                .await;
            let _ = tokio::time::timeout(GRACE, session).await;
        }
    }
    timer.abort();
}
