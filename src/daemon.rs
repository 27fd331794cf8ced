//! The wiring: open state, bind listeners, accept connections, shut down.
//! This is the only module that knows every other one.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tracing::Instrument;

use crate::auth::Authenticator;
use crate::config::Settings;
use crate::policy::Policy;
use crate::recording::Recorder;
use crate::ssh::server::{Origin, Outer};
use crate::ssh::{self, Gateway};
use crate::state::StateDir;

/// How long shutdown waits for sessions to finish after telling them.
const GRACE: Duration = Duration::from_secs(10);

/// Runs the gateway until `shutdown` resolves.
pub async fn run(
    settings: Arc<Settings>,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let state = Arc::new(StateDir::open(&settings.gateway.state_dir)?);
    let host_key = state.host_key()?;
    let client_key = state.client_key()?;
    let auth = Authenticator::new(settings.clone(), state.clone())?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let (server_config, jump_config) = ssh::server_configs(host_key.private.clone());
    // No recorder, no gateway: there is no unrecorded mode.
    let recorder = Arc::new(
        Recorder::new(&settings.recordings)
            .map_err(|e| anyhow::anyhow!("recordings: {}", e.detail()))?,
    );
    recorder.clone().spawn_retention(stop_rx.clone());
    let gw = Arc::new(Gateway {
        recorder: recorder.clone(),
        policy: Policy::new(settings.clone()),
        auth,
        server_config,
        jump_config,
        client_config: ssh::client_config(),
        client_key: Arc::new(client_key.private.clone()),
        shutdown: stop_rx.clone(),
        caps: ssh::caps::Caps::new(ssh::caps::CapLimits::from_settings(&settings.gateway)),
        settings: settings.clone(),
    });

    // Bind everything before serving anything: a bad address fails the start.
    let mut listeners = Vec::new();
    for addr in &settings.gateway.ssh_listen {
        let l = TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr}"))?;
        listeners.push(l);
    }
    // WireGuard (when configured): SSH on the tunnel address too. Bound
    // here, so a bad or busy UDP address fails the start like a TCP one.
    let _tunnel = crate::tunnel::start(gw.clone(), &settings, &state, stop_rx.clone())
        .context("cannot start the WireGuard tunnel")?;
    let max = settings.gateway.max_connections;
    let slots = Arc::new(Semaphore::new(max));
    for l in listeners {
        let addr = l.local_addr().ok();
        tracing::info!(listen = ?addr, host_key = %host_key.fingerprint(), "ssh listener ready");
        tokio::spawn(accept_loop(l, gw.clone(), slots.clone(), stop_rx.clone()));
    }

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
/// the semaphore caps concurrent connections.
async fn accept_loop(
    l: TcpListener,
    gw: Arc<Gateway>,
    slots: Arc<Semaphore>,
    mut stop: watch::Receiver<bool>,
) {
    let mut backoff = Duration::from_millis(5);
    loop {
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
            _ = stop.changed() => return,
        };
        let (stream, peer) = tokio::select! {
            r = l.accept() => match r {
                Ok(x) => { backoff = Duration::from_millis(5); x }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed; backing off");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                    continue;
                }
            },
            _ = stop.changed() => return,
        };
        let span = tracing::info_span!("conn", %peer);
        let gw = gw.clone();
        let origin = Origin::tcp(peer, stream.local_addr().ok());
        let _ = stream.set_nodelay(true);
        tokio::spawn(
            async move {
                serve_connection(gw, stream, origin).await;
                drop(permit);
            }
            .instrument(span),
        );
    }
}

/// One client connection, from any listener (TCP or the WireGuard tunnel):
/// SSH with an authentication deadline.
pub async fn serve_connection<S>(gw: Arc<Gateway>, stream: S, origin: Origin)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let authenticated = Arc::new(AtomicBool::new(false));
    let handler = Outer::new(gw.clone(), origin, authenticated.clone());
    let deadline = gw.settings.gateway.auth_timeout;
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
    let timer = {
        let handle = handle.clone();
        let authenticated = authenticated.clone();
        tokio::spawn(async move {
            tokio::time::sleep(deadline).await;
            if !authenticated.load(Ordering::SeqCst) {
                tracing::info!("authentication deadline passed; disconnecting");
                let _ = handle
                    .disconnect(
                        russh::Disconnect::ByApplication,
                        "authentication timed out".into(),
                        "en".into(),
                    )
                    .await;
            }
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
        _ = stop.changed() => {
            let _ = handle
                .disconnect(russh::Disconnect::ByApplication, "gatehouse is shutting down".into(), "en".into())
                .await;
            let _ = tokio::time::timeout(GRACE, session).await;
        }
    }
    timer.abort();
}
