//! Jumps: `ssh -J alice@gatehouse deploy@web-1` opens a `direct-tcpip`
//! channel to `web-1:22`. gatehouse does not forward those bytes: it answers
//! them with this in-process SSH server (presenting the gateway's host key),
//! which authenticates the inner login with the *same* public key the user
//! logged in to the gateway with (no second code), asks the policy whether
//! the user may be `deploy` on `web-1`, and only then connects to the target
//! with gatehouse's own key and relays the session.
//!
//! A login the policy refuses is accepted at the SSH layer and then told,
//! on its first shell/exec/subsystem request, exactly what was refused and
//! which logins are allowed — "Permission denied (publickey)" would hide it.
//!
//! Security behaviour of a session channel (each refusal is audited):
//! - Its first `shell`, `exec` or `subsystem` request is its only one. Any
//!   later run request is refused by gatehouse (never forwarded), whether the
//!   first was accepted or refused, with or without `want_reply`; so is a
//!   `pty-req` after it.
//! - Data and EOF sent before the run request are held (up to
//!   [`HELD_MAX`] bytes over all channels of a jump; beyond that the channel
//!   is closed) and reach the
//!   target only after the run request succeeded, so after the recording
//!   exists. Data after a refused run request is dropped.
//! - Forwarding of any kind (X11, agent, TCP and Unix sockets, both ways) is
//!   refused. Unknown channel types and unknown channel requests are refused
//!   by russh itself, which gives gatehouse no callback to audit them.
//! - At most `gateway.max_channels_per_connection` channels are open at once.

use std::collections::HashMap;
use std::sync::Arc;

use russh::keys::PublicKey;
use russh::server::{Auth, Handler, Msg, Session};
use russh::{Channel, ChannelId, MethodKind, MethodSet, Pty, Sig};

use super::caps::{self, JumpPermit};
use super::record;
use super::relay::{self, Bridge, SessionGuard, Stats};
use super::upstream::{self, Upstream};
use super::{Gateway, SshError};
use crate::audit;
use crate::auth::AuthenticatedUser;
use crate::policy::{Authorized, Denied};
use crate::recording::{RecordingKind, RecordingMeta};

/// Most bytes held for the channels of one jump before their run requests;
/// more closes the channel that sent them. Per jump, so that one user's
/// memory use stays bounded (caps x this); OpenSSH sends none.
pub const HELD_MAX: usize = 64 * 1024;

/// Where a session channel stands with its one run request.
#[derive(Default)]
struct RunState {
    /// None until the run request; then whether it runs on the target.
    ran: Option<bool>,
    /// Data (and EOF) sent before the run request, forwarded once it runs.
    held: Vec<u8>,
    held_eof: bool,
    /// gatehouse closed the channel itself (russh reports no close after that).
    closed: bool,
}

enum Chan {
    Bridged(Bridge),
    /// Not relayed; the message is shown on the first request that would run something.
    Refused(String),
}

/// The inner server's handler for one jump.
pub struct JumpHandler {
    gw: Arc<Gateway>,
    user: AuthenticatedUser,
    target: String,
    login: Option<String>,
    authorized: Option<Authorized>,
    refusal: Option<String>,
    upstream: Option<Upstream>,
    stats: Arc<Stats>,
    guard: Option<SessionGuard>,
    runs: HashMap<ChannelId, RunState>,
    channels: HashMap<ChannelId, Chan>,
    /// Allowed environment variables per channel, for its recording.
    env: ChannelEnv,
}

/// The environment variables a role allowed on each channel, kept until
/// the channel's run request so that its recording holds them.
#[derive(Default)]
struct ChannelEnv {
    vars: HashMap<ChannelId, Vec<(String, String)>>,
    /// Channels whose run request came: later env requests are refused.
    started: std::collections::HashSet<ChannelId>,
}

impl ChannelEnv {
    /// Most variables kept (and passed on) per channel.
    const MAX_VARS: usize = 64;
    /// Most bytes of names and values kept per channel.
    const MAX_BYTES: usize = 256 * 1024;

    /// Keeps `name=value` for `channel`; false when it must not be passed
    /// on (the channel already runs something, or the cap is reached).
    fn keep(&mut self, channel: ChannelId, name: &str, value: &str) -> bool {
        if self.started.contains(&channel) {
            return false;
        }
        let vars = self.vars.entry(channel).or_default();
        let bytes: usize = vars.iter().map(|(n, v)| n.len() + v.len()).sum();
        if vars.len() >= Self::MAX_VARS || bytes + name.len() + value.len() > Self::MAX_BYTES {
            return false;
        }
        vars.push((name.to_string(), value.to_string()));
        true
    }

    /// The channel's variables, at its run request.
    fn start(&mut self, channel: ChannelId) -> Vec<(String, String)> {
        self.started.insert(channel);
        self.vars.remove(&channel).unwrap_or_default()
    }
}

impl JumpHandler {
    pub fn new(gw: Arc<Gateway>, user: AuthenticatedUser, target: String) -> JumpHandler {
        JumpHandler {
            gw,
            user,
            target,
            login: None,
            authorized: None,
            refusal: None,
            upstream: None,
            stats: Arc::new(Stats::default()),
            guard: None,
            runs: HashMap::new(),
            channels: HashMap::new(),
            env: ChannelEnv::default(),
        }
    }

    /// A handler whose session accounting (and end switch) is `stats`.
    pub fn with_stats(
        gw: Arc<Gateway>,
        user: AuthenticatedUser,
        target: String,
        stats: Arc<Stats>,
    ) -> JumpHandler {
        let mut h = JumpHandler::new(gw, user, target);
        h.stats = stats;
        h
    }

    /// True when `key` is the key the user logged in with; a login without
    /// a key matches none.
    fn same_key(&self, key: &PublicKey) -> bool {
        self.user
            .key()
            .is_some_and(|k| k.key_data() == key.key_data())
    }

    /// Connects to the target once per jump; later channels reuse it.
    async fn ensure_upstream(&mut self, handle: russh::server::Handle) -> Result<(), String> {
        if self.upstream.is_some() {
            return Ok(());
        }
        if let Some(r) = &self.refusal {
            return Err(r.clone());
        }
        let Some(auth) = self.authorized.clone() else {
            return Err("gatehouse: not authorized".into());
        };
        match begin_session(&self.gw, &auth, handle, self.stats.clone()).await {
            Ok((up, guard)) => {
                self.guard = Some(guard);
                self.upstream = Some(up);
                Ok(())
            }
            Err(msg) => {
                self.refusal = Some(msg.clone());
                Err(msg)
            }
        }
    }

    /// Tells the user why nothing runs, then ends the channel with status 1.
    fn refuse_channel(
        session: &mut Session,
        channel: ChannelId,
        msg: &str,
    ) -> Result<(), SshError> {
        session.channel_success(channel)?;
        session.extended_data(channel, 1, format!("{msg}\r\n").into_bytes())?;
        session.exit_status_request(channel, 1)?;
        session.eof(channel)?;
        session.close(channel)?;
        Ok(())
    }

    /// Notes that gatehouse closed `channel` itself.
    fn mark_closed(&mut self, channel: ChannelId) {
        if let Some(st) = self.runs.get_mut(&channel) {
            st.closed = true;
            st.held.clear();
        }
    }

    /// Forgets channels that are over. russh calls `channel_close` only when
    /// the client closes first, so channels that gatehouse or the target
    /// closed are found here, before they are counted against the cap.
    async fn prune_closed(&mut self) {
        let over: Vec<ChannelId> = self
            .runs
            .iter()
            .filter(|(id, st)| {
                st.closed
                    || matches!(self.channels.get(id), Some(Chan::Bridged(b)) if b.is_finished())
            })
            .map(|(id, _)| *id)
            .collect();
        for id in over {
            self.runs.remove(&id);
            if let Some(Chan::Bridged(b)) = self.channels.remove(&id) {
                // Closed by gatehouse: the target's channel goes too.
                if !b.is_finished() {
                    b.close().await;
                }
            }
        }
    }

    fn refuse_request(&self, kind: &str, reason: &str) {
        audit::channel_refused(
            self.user.name(),
            kind,
            &self.target,
            0,
            self.user.source(),
            reason,
        );
    }

    /// Refuses a channel open that a jump never allows, with its audit event.
    async fn refuse_open(
        &self,
        reply: russh::server::ChannelOpenHandle,
        kind: &str,
        host: &str,
        port: u32,
        reason: &str,
    ) {
        audit::channel_refused(
            self.user.name(),
            kind,
            host,
            port,
            self.user.source(),
            reason,
        );
        reply
            .reject(russh::ChannelOpenFailure::AdministrativelyProhibited)
            .await;
    }

    async fn run_request(
        &mut self,
        channel: ChannelId,
        session: &mut Session,
        req: Run<'_>,
    ) -> Result<(), SshError> {
        let Some(state) = self.runs.get_mut(&channel) else {
            return Ok(session.channel_failure(channel)?);
        };
        if state.ran.is_some() {
            // One run request per channel: a second one would run unrecorded
            // (the recording names the first), so gatehouse refuses it itself.
            state.held.clear();
            self.refuse_request(
                req.kind(),
                "a session channel runs one shell/exec/subsystem; a second run request is refused",
            );
            return Ok(session.channel_failure(channel)?);
        }
        // Spent from here on, whatever the outcome.
        state.ran = Some(false);
        if let Run::Subsystem(name) = req {
            if name != "sftp" && matches!(self.channels.get(&channel), Some(Chan::Bridged(_))) {
                self.refuse_request("subsystem", &format!("subsystem {name} is not allowed"));
                session.channel_failure(channel)?;
                return Ok(());
            }
        }
        // Fail closed: the recording exists before anything runs on the target.
        let meta = match self.channels.get(&channel) {
            Some(Chan::Bridged(b)) => {
                let kind = match &req {
                    Run::Shell => {
                        let (term, cols, rows) = b.pty().unwrap_or_default();
                        RecordingKind::Shell { term, cols, rows }
                    }
                    Run::Exec(c) => RecordingKind::Exec {
                        command: c.to_vec(),
                    },
                    Run::Subsystem(_) => RecordingKind::Sftp,
                };
                let env = self.env.start(channel);
                self.recording_meta(kind, b.pty().is_some(), env)
            }
            _ => None,
        };
        match self.channels.get_mut(&channel) {
            Some(Chan::Bridged(b)) => {
                let Some(meta) = meta else {
                    self.mark_closed(channel);
                    return Self::refuse_channel(session, channel, "gatehouse: not authorized");
                };
                if let Err(e) = b.begin_recording(&self.gw.recorder, meta).await {
                    let msg = match &self.authorized {
                        Some(auth) => record::recording_refused(auth, &e),
                        None => format!("gatehouse: {e}"),
                    };
                    self.mark_closed(channel);
                    return Self::refuse_channel(session, channel, &msg);
                }
                let ok = match req {
                    Run::Shell => b.shell().await,
                    Run::Exec(c) => b.exec(c).await,
                    Run::Subsystem(n) => b.subsystem(n).await,
                };
                if ok {
                    session.channel_success(channel)?;
                    // What the client sent early goes now, into the recording.
                    let held = self.runs.get_mut(&channel).map(|st| {
                        st.ran = Some(true);
                        (std::mem::take(&mut st.held), st.held_eof)
                    });
                    if let (Some((data, eof)), Some(Chan::Bridged(b))) =
                        (held, self.channels.get(&channel))
                    {
                        if !data.is_empty() && !b.data(&data).await {
                            session.close(channel)?;
                            self.mark_closed(channel);
                            return Ok(());
                        }
                        if eof {
                            b.eof().await;
                        }
                    }
                } else {
                    if let Some(st) = self.runs.get_mut(&channel) {
                        st.held.clear();
                    }
                    session.channel_failure(channel)?;
                }
                Ok(())
            }
            Some(Chan::Refused(msg)) => {
                let msg = msg.clone();
                self.mark_closed(channel);
                Self::refuse_channel(session, channel, &msg)
            }
            None => Ok(session.channel_failure(channel)?),
        }
    }
}

impl JumpHandler {
    /// Who and what the recording of a channel is of.
    fn recording_meta(
        &self,
        kind: RecordingKind,
        pty: bool,
        env: Vec<(String, String)>,
    ) -> Option<RecordingMeta> {
        let auth = self.authorized.as_ref()?;
        let guard = self.guard.as_ref()?;
        Some(record::recording_meta(auth, &guard.id, kind, pty, env))
    }
}

enum Run<'a> {
    Shell,
    Exec(&'a [u8]),
    Subsystem(&'a str),
}

impl Run<'_> {
    fn kind(&self) -> &'static str {
        match self {
            Run::Shell => "shell",
            Run::Exec(_) => "exec",
            Run::Subsystem(_) => "subsystem",
        }
    }
}

impl Drop for JumpHandler {
    fn drop(&mut self) {
        if let Some(up) = self.upstream.take() {
            tokio::spawn(async move {
                let _ = up
                    .handle
                    .disconnect(russh::Disconnect::ByApplication, "", "en")
                    .await;
            });
        }
    }
}

impl Handler for JumpHandler {
    type Error = SshError;

    async fn auth_none(&mut self, _user: &str) -> Result<Auth, Self::Error> {
        Ok(Auth::Reject {
            proceed_with_methods: Some(MethodSet::from(&[MethodKind::PublicKey][..])),
            partial_success: false,
        })
    }

    async fn auth_publickey_offered(
        &mut self,
        _login: &str,
        offer: russh::server::PublicKeyOffer<'_>,
    ) -> Result<Auth, Self::Error> {
        if self.same_key(offer.public_key) {
            Ok(Auth::Accept)
        } else {
            Ok(Auth::reject())
        }
    }

    async fn auth_publickey(
        &mut self,
        login: &str,
        key: russh::server::VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        if !self.same_key(key.public_key) {
            audit::auth_attempt(
                self.user.name(),
                "jump-publickey",
                &crate::auth::fingerprint(key.public_key),
                self.user.source(),
                "failure",
                "jump key differs from the gateway login key",
            );
            return Ok(Auth::reject());
        }
        self.login = Some(login.to_string());
        match self.gw.policy().authorize(&self.user, &self.target, login) {
            Ok(a) => self.authorized = Some(a),
            Err(d) => {
                audit::session_refused(
                    self.user.name(),
                    login,
                    &self.target,
                    self.user.source(),
                    d.reason(),
                );
                let msg = match d {
                    Denied::Login { allowed } => format!(
                        "gatehouse: {} may not log in to {} as {login}; allowed: {}",
                        self.user.name(),
                        self.target,
                        allowed.join(", ")
                    ),
                    _ => format!(
                        "gatehouse: {} may not reach {}",
                        self.user.name(),
                        self.target
                    ),
                };
                self.refusal = Some(msg);
            }
        }
        Ok(Auth::Accept)
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: russh::server::ChannelOpenHandle,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let id = channel.id();
        // We relay through callbacks; the channel object is not read.
        drop(channel);
        if self.stats.ending.input_stopped() {
            // The session was ended (a limit, a shutdown): nothing new opens.
            self.refuse_request("session", "the session has ended");
            reply
                .reject(russh::ChannelOpenFailure::AdministrativelyProhibited)
                .await;
            return Ok(());
        }
        let cap = self.gw.caps.limits().channels_per_connection;
        self.prune_closed().await;
        if self.channels.len() >= cap {
            let reason = format!("channels per connection cap ({cap}) reached");
            self.refuse_request("session", &reason);
            reply
                .reject(caps::open_failure(&format!(
                    "gatehouse: too many channels open on this connection (at most {cap})"
                )))
                .await;
            return Ok(());
        }
        reply.accept().await;
        self.runs.insert(id, RunState::default());
        let chan = match self.ensure_upstream(session.handle()).await {
            Err(msg) => Chan::Refused(msg),
            Ok(()) => {
                let opened = match &self.upstream {
                    Some(up) => up.open_session().await,
                    None => Err(SshError::Internal("no upstream".into())),
                };
                match opened {
                    Ok(up_chan) => Chan::Bridged(Bridge::start(
                        id,
                        up_chan,
                        session.handle(),
                        self.stats.clone(),
                    )),
                    Err(e) => {
                        tracing::warn!(error = %e, target = %self.target, "opening a channel on the target failed");
                        Chan::Refused(format!(
                            "gatehouse: {} refused to open a session",
                            self.target
                        ))
                    }
                }
            }
        };
        self.channels.insert(id, chan);
        Ok(())
    }

    async fn channel_open_direct_tcpip(
        &mut self,
        _channel: Channel<Msg>,
        host: &str,
        port: u32,
        _oa: &str,
        _op: u32,
        reply: russh::server::ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.refuse_open(
            reply,
            "direct-tcpip",
            host,
            port,
            "forwarding through a target session is not allowed",
        )
        .await;
        Ok(())
    }

    async fn channel_open_direct_streamlocal(
        &mut self,
        _channel: Channel<Msg>,
        socket_path: &str,
        reply: russh::server::ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.refuse_open(
            reply,
            "direct-streamlocal",
            socket_path,
            0,
            "unix socket forwarding through a target session is not allowed",
        )
        .await;
        Ok(())
    }

    async fn channel_open_x11(
        &mut self,
        _channel: Channel<Msg>,
        originator_address: &str,
        originator_port: u32,
        reply: russh::server::ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.refuse_open(
            reply,
            "x11",
            originator_address,
            originator_port,
            "X11 channels are not allowed",
        )
        .await;
        Ok(())
    }

    async fn channel_open_forwarded_tcpip(
        &mut self,
        _channel: Channel<Msg>,
        host: &str,
        port: u32,
        _oa: &str,
        _op: u32,
        reply: russh::server::ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.refuse_open(
            reply,
            "forwarded-tcpip",
            host,
            port,
            "a client cannot open forwarded-tcpip channels",
        )
        .await;
        Ok(())
    }

    async fn pty_request(
        &mut self,
        channel: ChannelId,
        term: &str,
        cols: u32,
        rows: u32,
        pw: u32,
        ph: u32,
        modes: &[(Pty, u32)],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        if self.runs.get(&channel).is_some_and(|st| st.ran.is_some()) {
            self.refuse_request("pty-req", "a pty is requested before the run request");
            session.channel_failure(channel)?;
            return Ok(());
        }
        let ok = match self.channels.get_mut(&channel) {
            Some(Chan::Bridged(b)) => b.request_pty(term, cols, rows, pw, ph, modes).await,
            Some(Chan::Refused(_)) => true,
            None => false,
        };
        if ok {
            session.channel_success(channel)?;
        } else {
            session.channel_failure(channel)?;
        }
        Ok(())
    }

    async fn env_request(
        &mut self,
        channel: ChannelId,
        name: &str,
        value: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let allowed = self
            .authorized
            .as_ref()
            .is_some_and(|a| a.env_allowed(name));
        match self.channels.get(&channel) {
            // Kept for the recording's header (names and values) and its
            // audit event (names): a variable that reaches the target is
            // recorded. Refused once the channel runs something (it would
            // not be in the header) or beyond the per-channel cap.
            Some(Chan::Bridged(b)) if allowed && self.env.keep(channel, name, value) => {
                b.env(name, value).await;
                session.channel_success(channel)?;
            }
            _ => {
                tracing::debug!(
                    variable = name,
                    "environment variable not allowed by role, too many, or sent after the channel started"
                );
                session.channel_failure(channel)?;
            }
        }
        Ok(())
    }

    async fn shell_request(
        &mut self,
        channel: ChannelId,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.run_request(channel, session, Run::Shell).await
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.run_request(channel, session, Run::Exec(data)).await
    }

    async fn subsystem_request(
        &mut self,
        channel: ChannelId,
        name: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.run_request(channel, session, Run::Subsystem(name))
            .await
    }

    async fn window_change_request(
        &mut self,
        channel: ChannelId,
        cols: u32,
        rows: u32,
        pw: u32,
        ph: u32,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        if let Some(Chan::Bridged(b)) = self.channels.get(&channel) {
            b.window_change(cols, rows, pw, ph).await;
        }
        Ok(())
    }

    async fn signal(
        &mut self,
        channel: ChannelId,
        sig: Sig,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        if let Some(Chan::Bridged(b)) = self.channels.get(&channel) {
            b.signal(sig).await;
        }
        Ok(())
    }

    async fn data(
        &mut self,
        channel: ChannelId,
        data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let held_total: usize = self.runs.values().map(|st| st.held.len()).sum();
        let Some(state) = self.runs.get_mut(&channel) else {
            return Ok(());
        };
        match state.ran {
            // Before the run request: held until the recording exists.
            None => {
                if held_total + data.len() > HELD_MAX {
                    state.held.clear();
                    state.ran = Some(false);
                    self.refuse_request(
                        "data",
                        &format!("more than {HELD_MAX} bytes sent before the run request"),
                    );
                    session.extended_data(
                        channel,
                        1,
                        b"gatehouse: too much data before the command; closing.\r\n".to_vec(),
                    )?;
                    session.close(channel)?;
                    self.mark_closed(channel);
                } else {
                    state.held.extend_from_slice(data);
                }
            }
            // The run request was refused: nothing runs that could read it.
            Some(false) => {}
            Some(true) => {
                if let Some(Chan::Bridged(b)) = self.channels.get(&channel) {
                    if !b.data(data).await {
                        session.close(channel)?;
                        self.mark_closed(channel);
                    }
                }
            }
        }
        Ok(())
    }

    async fn channel_eof(
        &mut self,
        channel: ChannelId,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        match self.runs.get_mut(&channel).map(|st| (st.ran, st)) {
            Some((None, st)) => st.held_eof = true,
            Some((Some(true), _)) => {
                if let Some(Chan::Bridged(b)) = self.channels.get(&channel) {
                    b.eof().await;
                }
            }
            _ => {}
        }
        Ok(())
    }

    async fn channel_close(
        &mut self,
        channel: ChannelId,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.runs.remove(&channel);
        if let Some(Chan::Bridged(b)) = self.channels.remove(&channel) {
            b.close().await;
        }
        Ok(())
    }

    async fn agent_request(
        &mut self,
        _channel: ChannelId,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        self.refuse_request("agent-forwarding", "agent forwarding is not allowed");
        Ok(false)
    }

    async fn x11_request(
        &mut self,
        channel: ChannelId,
        _single: bool,
        _proto: &str,
        _cookie: &str,
        _screen: u32,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.refuse_request("x11-forwarding", "X11 forwarding is not allowed");
        session.channel_failure(channel)?;
        Ok(())
    }

    async fn tcpip_forward(
        &mut self,
        address: &str,
        port: &mut u32,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        // Audited against the target the session is for; the requested
        // listen address goes in the reason.
        audit::channel_refused(
            self.user.name(),
            "tcpip-forward",
            &self.target,
            *port,
            self.user.source(),
            &format!("remote forwarding (listen on {address:?}) is not allowed"),
        );
        Ok(false)
    }

    async fn streamlocal_forward(
        &mut self,
        path: &str,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        audit::channel_refused(
            self.user.name(),
            "streamlocal-forward",
            path,
            0,
            self.user.source(),
            "remote forwarding is not allowed",
        );
        Ok(false)
    }
}

/// Connects to an authorized target and starts the session's accounting and
/// limits: `session.start` now, `session.end` when the guard drops. On
/// failure the refusal is audited and the user's message returned.
pub(crate) async fn begin_session(
    gw: &Gateway,
    auth: &Authorized,
    handle: russh::server::Handle,
    stats: Arc<Stats>,
) -> Result<(Upstream, SessionGuard), String> {
    let user = auth.user();
    let target = &auth.target().name;
    let device = user.origin().device().map(|d| d.public_key_b64());
    if let Some(lock) = gw.locks.session(user.name(), device.as_deref(), target) {
        let reason = format!("{} is locked by an administrator", lock.subject());
        audit::session_refused(user.name(), auth.login(), target, user.source(), &reason);
        return Err(format!("gatehouse: {}", lock.message()));
    }
    match upstream::connect(gw, auth, &stats.ending).await {
        Ok(up) => {
            let id = relay::new_session_id();
            audit::session_start(
                &id,
                user.name(),
                auth.login(),
                target,
                user.source(),
                user.admitted_by().as_str(),
            );
            let registration = gw.live.register(crate::live::SessionInfo {
                id: id.clone(),
                kind: crate::live::SessionKind::Ssh,
                user: user.name().to_string(),
                source: user.origin().ip().to_string(),
                device: user.origin().device().map(|d| d.public_key_b64()),
                key_fingerprint: Some(user.fingerprint().to_string()),
                target: target.clone(),
                login: auth.login().to_string(),
                announce_watch: auth.announce_watch(),
            });
            stats.set_live(registration.live().clone());
            let guard = SessionGuard {
                id,
                user: user.name().to_string(),
                login: auth.login().to_string(),
                target: target.clone(),
                stats: stats.clone(),
                registration: Some(registration),
            };
            relay::spawn_limits(
                stats,
                handle,
                auth.max_session(),
                auth.idle_timeout(),
                gw.shutdown.clone(),
            );
            Ok((up, guard))
        }
        Err(e) => {
            audit::session_refused(
                user.name(),
                auth.login(),
                target,
                user.source(),
                &e.reason(),
            );
            Err(e.user_message(target, auth.login()))
        }
    }
}

/// Serves a jump on an accepted `direct-tcpip` channel until it ends.
/// `permit` holds the jump's place under the per-connection and per-user
/// caps until the jump ends.
pub async fn serve(
    gw: Arc<Gateway>,
    user: AuthenticatedUser,
    target: String,
    channel: Channel<Msg>,
    permit: JumpPermit,
) {
    let stats = Arc::new(Stats::default());
    let ending = stats.ending.clone();
    // A limit cuts this stream at once: the inner session ends (and the
    // outer channel closes) without waiting on the client's window.
    let stream = ending.wrap(channel.into_stream());
    let handler = JumpHandler::with_stats(gw.clone(), user, target, stats);
    match russh::server::run_stream(gw.jump_config.clone(), stream, handler).await {
        Ok(running) => {
            if let Err(e) = running.await {
                tracing::debug!(error = %e, "jump session ended with an error");
            }
        }
        Err(e) => tracing::debug!(error = %e, "jump session setup failed"),
    }
    ending.set_finished();
    drop(permit);
}
