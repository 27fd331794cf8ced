//! The SSH server users log in to: publickey first, then a
//! keyboard-interactive `Verification code: ` prompt (or a live MFA lease),
//! then either a jump (`direct-tcpip` to an approved target, answered by
//! [`super::jump`]) or the gateway's own menu/help on a session channel.
//!
//! Everything else — `direct-tcpip` to anything that is not an approved
//! target, remote forwarding, agent and X11 forwarding — is refused and
//! audited. Failure messages never reveal whether a user exists: an unknown
//! user fails exactly like a wrong key.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use russh::server::{Auth, Handler, Msg, Response, Session};
use russh::{Channel, ChannelId, MethodKind, MethodSet, Pty, Sig};

use super::jump::{self, begin_session};
use super::record;
use super::relay::{Bridge, SessionGuard, Stats};
use super::upstream::Upstream;
use super::{Gateway, SshError};
use crate::audit;
use crate::auth::{fingerprint, AuthenticatedUser, CodeOutcome, KeyRefusal, KeyVerified};
use crate::recording::RecordingKind;
use crate::source::Source;

const PROMPT: &str = "Verification code: ";

#[derive(Clone)]
struct PtyReq {
    term: String,
    cols: u32,
    rows: u32,
    pw: u32,
    ph: u32,
    modes: Vec<(Pty, u32)>,
}

/// A relay started from the menu.
struct MenuRelay {
    bridge: Bridge,
    _upstream: Upstream,
    _guard: SessionGuard,
}

#[derive(Default)]
struct OuterChan {
    pty: Option<PtyReq>,
    /// Some while the menu is waiting for a choice: the typed input.
    menu_input: Option<String>,
    choices: Vec<(String, String)>,
    relay: Option<MenuRelay>,
    /// This channel's place under `max_channels_per_connection`.
    _permit: Option<super::caps::ChannelPermit>,
}

/// One user connection.
pub struct Outer {
    gw: Arc<Gateway>,
    peer: SocketAddr,
    local: Option<SocketAddr>,
    source: Source,
    /// `source` as the audit log names it.
    source_label: String,
    authenticated: Arc<AtomicBool>,
    /// A key that is not the user's (or an unknown user, or another user's
    /// WireGuard device) was offered on this connection.
    unproven_failure: bool,
    /// One of the user's keys was proven (signature verified) on this
    /// connection: offers of other keys before it were the agent's routine.
    key_proven: bool,
    verified: Option<KeyVerified>,
    user: Option<AuthenticatedUser>,
    chans: HashMap<ChannelId, OuterChan>,
    /// Set when a user who must use WireGuard proved their key on a plain
    /// listener: shown once as keyboard-interactive instructions.
    tunnel_only_notice: Option<String>,
}

fn methods(kinds: &[MethodKind]) -> Option<MethodSet> {
    Some(MethodSet::from(kinds))
}

impl Outer {
    /// A connection from `source` that reached `local`.
    pub fn new(
        gw: Arc<Gateway>,
        source: Source,
        local: Option<SocketAddr>,
        authenticated: Arc<AtomicBool>,
    ) -> Outer {
        Outer {
            gw,
            peer: source.addr(),
            local,
            source_label: source.to_string(),
            source,
            authenticated,
            unproven_failure: false,
            key_proven: false,
            verified: None,
            user: None,
            chans: HashMap::new(),
            tunnel_only_notice: None,
        }
    }

    /// What the audit log and MFA leases name as the source: the WireGuard
    /// device (`wg:KEY@ADDR`) for tunnelled connections, else the address.
    fn source(&self) -> &str {
        &self.source_label
    }

    /// Audits one authentication attempt from this connection.
    fn attempt(&self, user: &str, method: &str, key_fp: &str, result: &str, reason: &str) {
        audit::auth_attempt(user, method, key_fp, self.source(), result, reason);
        crate::anomaly::auth_attempt(user, &self.source, result);
    }

    /// Refuses an attempt because of a running lock: audited, aggregated per
    /// source per minute.
    fn refuse_locked(&self, user: &str, subject: &str) -> Auth {
        crate::anomaly::auth_attempt(user, &self.source, "failure");
        self.gw
            .auth
            .refused_while_locked(user, self.peer.ip(), self.source(), subject);
        Auth::reject()
    }

    /// A WireGuard device belongs to one user: nobody else logs in through it.
    fn device_refuses(&self, user: &str) -> bool {
        self.source.device_user().is_some_and(|owner| owner != user)
    }

    fn user_name(&self) -> &str {
        self.user.as_ref().map(|u| u.name()).unwrap_or("-")
    }

    /// ctlattack: an administrator's lock set while the code was being
    /// typed (the key was proven before it): refused like one found at the
    /// key, with the lock's message. True if locked.
    fn locked_meanwhile(&mut self, user: &str, fp: &str) -> bool {
        let device = self.source.device().map(|d| d.public_key_b64());
        let Some(lock) = self.gw.locks.login(user, device.as_deref()) else {
            return false;
        };
        let reason = format!("{} is locked by an administrator", lock.subject());
        self.attempt(user, "keyboard-interactive", fp, "failure", &reason);
        crate::metrics::refusal("locked by an administrator");
        self.tunnel_only_notice = Some(format!("gatehouse: {}", lock.message()));
        true
    }

    fn admitted(&mut self, user: AuthenticatedUser) {
        audit::login(
            user.name(),
            user.fingerprint(),
            user.source(),
            user.admitted_by().as_str(),
        );
        crate::anomaly::login(user.name(), user.origin());
        self.authenticated.store(true, Ordering::SeqCst);
        self.user = Some(user);
    }

    fn gateway_address(&self) -> String {
        match self.local {
            Some(a) if a.port() == 22 => a.ip().to_string(),
            Some(SocketAddr::V6(a)) => format!("[{}]:{}", a.ip(), a.port()),
            Some(a) => a.to_string(),
            None => "GATEWAY".into(),
        }
    }

    /// Whether `target` is a database target (reached through `ssh -L`,
    /// not the menu).
    fn is_database(&self, target: &str) -> bool {
        self.db_kind(target).is_some()
    }

    /// The kind of a database target; None for an SSH target.
    fn db_kind(&self, target: &str) -> Option<crate::config::TargetKind> {
        self.gw
            .policy()
            .target(target)
            .map(|t| t.kind)
            .filter(|k| k.is_database())
    }

    /// The text `ssh alice@gw CMD` prints: how to reach targets, and which.
    fn help_text(&self) -> String {
        let Some(user) = &self.user else {
            return String::new();
        };
        let grants = self.gw.policy().grants(user);
        let mut s = format!(
            "gatehouse is a gateway: it runs no commands itself.\r\n\
             Reach a target with:  ssh -J {}@{} LOGIN@TARGET\r\n\r\n",
            user.name(),
            self.gateway_address()
        );
        if grants.is_empty() {
            s.push_str("Your roles allow no targets. Ask an administrator.\r\n");
        } else {
            s.push_str(&format!("{} may reach:\r\n", user.name()));
            let (mut postgres, mut mysql) = (false, false);
            for g in grants {
                let kind = self.db_kind(&g.target);
                postgres |= kind == Some(crate::config::TargetKind::Postgres);
                mysql |= kind == Some(crate::config::TargetKind::Mysql);
                s.push_str(&format!(
                    "  {:<20} as {}{}\r\n",
                    g.target,
                    g.logins.join(", "),
                    match kind {
                        Some(crate::config::TargetKind::Postgres) => "  (PostgreSQL)",
                        Some(crate::config::TargetKind::Mysql) => "  (MySQL)",
                        _ => "",
                    }
                ));
            }
            if postgres {
                s.push_str(&format!(
                    "\r\nReach a database with:  ssh -N -L 15432:TARGET:5432 {}@{}\r\n                     then:  psql \"host=127.0.0.1 port=15432 user=LOGIN dbname=DB\"\r\n",
                    user.name(),
                    self.gateway_address()
                ));
            }
            if mysql {
                s.push_str(&format!(
                    "\r\nReach a MySQL database with:  ssh -N -L 13306:TARGET:3306 {}@{}\r\n                           then:  mysql -h 127.0.0.1 -P 13306 -u LOGIN DB\r\n",
                    user.name(),
                    self.gateway_address()
                ));
            }
        }
        s
    }

    fn menu_text(&self, choices: &[(String, String)]) -> String {
        let name = self.user_name();
        let mut s = format!("\r\ngatehouse: signed in as {name}\r\n\r\n");
        if choices.is_empty() {
            s.push_str("Your roles allow no targets. Ask an administrator.\r\n");
            return s;
        }
        for (i, (t, l)) in choices.iter().enumerate() {
            s.push_str(&format!("  {:>2}) {l}@{t}\r\n", i + 1));
        }
        s.push_str(&format!(
            "\r\nOr directly: ssh -J {name}@{} LOGIN@TARGET\r\nChoose a number (q to quit): ",
            self.gateway_address()
        ));
        s
    }

    async fn menu_choose(
        &mut self,
        channel: ChannelId,
        n: usize,
        session: &mut Session,
    ) -> Result<(), SshError> {
        let Some(user) = self.user.clone() else {
            return Ok(());
        };
        let Some(ch) = self.chans.get(&channel) else {
            return Ok(());
        };
        let Some((target, login)) = ch.choices.get(n.wrapping_sub(1)).cloned() else {
            session.data(
                channel,
                b"\r\nNo such entry.\r\nChoose a number (q to quit): ".to_vec(),
            )?;
            if let Some(c) = self.chans.get_mut(&channel) {
                c.menu_input = Some(String::new());
            }
            return Ok(());
        };
        let pty = ch.pty.clone();
        session.data(
            channel,
            format!("\r\nConnecting to {login}@{target} ...\r\n").into_bytes(),
        )?;
        let auth = match self.gw.policy().authorize(&user, &target, &login) {
            Ok(a) => a,
            Err(d) => {
                audit::session_refused(user.name(), &login, &target, user.source(), d.reason());
                return self.menu_again(channel, "gatehouse: not allowed", session);
            }
        };
        let stats = Arc::new(Stats::default());
        let (up, guard) =
            match begin_session(&self.gw, &auth, session.handle(), stats.clone()).await {
                Ok(x) => x,
                Err(msg) => return self.menu_again(channel, &msg, session),
            };
        let up_chan = match up.open_session().await {
            Ok(c) => c,
            Err(_) => {
                return self.menu_again(channel, "gatehouse: the target refused a session", session)
            }
        };
        let mut bridge = Bridge::start(channel, up_chan, session.handle(), stats);
        let (term, cols, rows) = pty
            .as_ref()
            .map(|p| (p.term.clone(), p.cols, p.rows))
            .unwrap_or_default();
        if let Some(p) = pty {
            bridge
                .request_pty(&p.term, p.cols, p.rows, p.pw, p.ph, &p.modes)
                .await;
        }
        // The menu refuses every env request (see `env_request`).
        let kind = RecordingKind::Shell { term, cols, rows };
        let meta = record::recording_meta(&auth, &guard.id, kind, true, Vec::new());
        // Fail closed: no recording, no shell.
        if let Err(e) = bridge.begin_recording(&self.gw.recorder, meta).await {
            let msg = record::recording_refused(&auth, &e);
            return self.menu_again(channel, &msg, session);
        }
        if !bridge.shell().await {
            return self.menu_again(channel, "gatehouse: the target refused a shell", session);
        }
        if let Some(c) = self.chans.get_mut(&channel) {
            c.menu_input = None;
            c.relay = Some(MenuRelay {
                bridge,
                _upstream: up,
                _guard: guard,
            });
        }
        Ok(())
    }

    /// Refuses a channel open over a cap per person: audited, and the
    /// client is told which cap (OpenSSH prints the description).
    async fn refuse_cap(
        &self,
        reply: russh::server::ChannelOpenHandle,
        user: &str,
        kind: &str,
        host: &str,
        port: u32,
        cap: &super::caps::CapRefusal,
    ) {
        audit::channel_refused(user, kind, host, port, self.source(), &cap.reason());
        reply
            .reject(super::caps::open_failure(&cap.message()))
            .await;
    }

    fn menu_again(
        &mut self,
        channel: ChannelId,
        msg: &str,
        session: &mut Session,
    ) -> Result<(), SshError> {
        let choices = self
            .chans
            .get(&channel)
            .map(|c| c.choices.clone())
            .unwrap_or_default();
        let text = format!("{msg}\r\n{}", self.menu_text(&choices));
        session.data(channel, text.into_bytes())?;
        if let Some(c) = self.chans.get_mut(&channel) {
            c.menu_input = Some(String::new());
        }
        Ok(())
    }

    /// Ends a channel gatehouse answered itself. Its entry (and its place
    /// under the channel cap) goes now: russh reports no close to us when
    /// the server closed first.
    fn end_channel(
        &mut self,
        session: &mut Session,
        channel: ChannelId,
        status: u32,
    ) -> Result<(), SshError> {
        self.chans.remove(&channel);
        session.exit_status_request(channel, status)?;
        session.eof(channel)?;
        session.close(channel)?;
        Ok(())
    }
}

impl Drop for Outer {
    /// A connection that offered a wrong key (or an unknown user) and never
    /// proved one of the user's keys counts one failure against its source.
    fn drop(&mut self) {
        if self.unproven_failure && !self.key_proven {
            if let Some(lock) = self.gw.auth.unproven_failure(self.peer.ip()) {
                audit::lockout(&lock.subject, lock.until, self.source());
            }
        }
    }
}

impl Handler for Outer {
    type Error = SshError;

    async fn auth_none(&mut self, _user: &str) -> Result<Auth, Self::Error> {
        Ok(Auth::Reject {
            proceed_with_methods: methods(&[MethodKind::PublicKey]),
            partial_success: false,
        })
    }

    async fn auth_publickey_offered(
        &mut self,
        user: &str,
        offer: russh::server::PublicKeyOffer<'_>,
    ) -> Result<Auth, Self::Error> {
        let fp = fingerprint(offer.public_key);
        if let Some(KeyRefusal::Locked { subject, .. }) = self.gw.auth.locked(user, self.peer.ip())
        {
            if !self.gw.auth.key_is_authorized(user, offer.public_key) {
                self.unproven_failure = true;
            }
            return Ok(self.refuse_locked(user, &subject));
        }
        if self.device_refuses(user) {
            self.attempt(
                user,
                "publickey",
                &fp,
                "failure",
                "WireGuard device belongs to another user",
            );
            self.unproven_failure = true;
            return Ok(Auth::reject());
        }
        if self.gw.auth.key_is_authorized(user, offer.public_key) {
            return Ok(Auth::Accept);
        }
        // A wrong key (or unknown user — deliberately the same) never counts
        // against the user named. Clients offer every key they hold, so it
        // counts against the source only if this connection ends without
        // proving a key of the user (see `Drop`).
        self.attempt(
            user,
            "publickey",
            &fp,
            "failure",
            "key not authorized for user",
        );
        self.unproven_failure = true;
        Ok(Auth::reject())
    }

    async fn auth_publickey(
        &mut self,
        user: &str,
        key: russh::server::VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        let fp = fingerprint(key.public_key);
        if self.device_refuses(user) {
            self.attempt(
                user,
                "publickey",
                &fp,
                "failure",
                "WireGuard device belongs to another user",
            );
            return Ok(Auth::reject());
        }
        if let Some(refusal) = self.refuse_plain_listener(user, &fp) {
            return Ok(refusal);
        }
        let kv = match self.gw.auth.verify_key(user, key.public_key, &self.source) {
            Ok(kv) => kv,
            Err(KeyRefusal::Locked { subject, .. }) => {
                return Ok(self.refuse_locked(user, &subject));
            }
            Err(KeyRefusal::NotAuthorized) => {
                self.attempt(
                    user,
                    "publickey",
                    &fp,
                    "failure",
                    "key not authorized for user",
                );
                self.unproven_failure = true;
                return Ok(Auth::reject());
            }
        };
        self.key_proven = true;
        // An administrator's lock, checked once the key is proven (only
        // its holder learns of the lock and its reason) and before any
        // lease or code: a locked person gets no session at all.
        let device = self.source.device().map(|d| d.public_key_b64());
        if let Some(lock) = self.gw.locks.login(user, device.as_deref()) {
            self.attempt(
                user,
                "publickey",
                &fp,
                "failure",
                &format!("{} is locked by an administrator", lock.subject()),
            );
            crate::metrics::refusal("locked by an administrator");
            self.tunnel_only_notice = Some(format!("gatehouse: {}", lock.message()));
            return Ok(Auth::Reject {
                proceed_with_methods: methods(&[MethodKind::KeyboardInteractive]),
                partial_success: false,
            });
        }
        if let Some(u) = self.gw.auth.lease(&kv) {
            self.attempt(
                user,
                "publickey",
                &fp,
                "success",
                "key verified; MFA lease admits",
            );
            self.admitted(u);
            return Ok(Auth::Accept);
        }
        self.attempt(
            user,
            "publickey",
            &fp,
            "partial",
            "key verified; code required",
        );
        self.verified = Some(kv);
        Ok(Auth::Reject {
            proceed_with_methods: methods(&[MethodKind::KeyboardInteractive]),
            partial_success: true,
        })
    }

    async fn auth_keyboard_interactive<'a>(
        &'a mut self,
        user: &str,
        _submethods: &str,
        response: Option<Response<'a>>,
    ) -> Result<Auth, Self::Error> {
        if let Some(refusal) = self.tunnel_only_prompt(response.is_none()) {
            return Ok(refusal);
        }
        let Some(kv) = self.verified.clone().filter(|kv| kv.user() == user) else {
            // The code is a second factor only: never without the key.
            return Ok(Auth::Reject {
                proceed_with_methods: methods(&[MethodKind::PublicKey]),
                partial_success: false,
            });
        };
        let enrolled = self.gw.auth.is_enrolled(user);
        let Some(mut response) = response else {
            if !enrolled {
                return Ok(Auth::Partial {
                    name: "gatehouse".into(),
                    instructions: format!(
                        "No verification code is enrolled for {user}.\n\
                         Ask an administrator to run: gatehouse user enroll {user}"
                    )
                    .into(),
                    prompts: vec![(
                        format!(
                            "{user} is not enrolled for two-factor login; ask an administrator \
                             to run `gatehouse user enroll {user}`. Press Enter to close: "
                        )
                        .into(),
                        true,
                    )]
                    .into(),
                });
            }
            return Ok(Auth::Partial {
                name: "".into(),
                instructions: "".into(),
                prompts: vec![(PROMPT.into(), false)].into(),
            });
        };
        if !enrolled {
            self.attempt(
                user,
                "keyboard-interactive",
                kv.fingerprint(),
                "failure",
                "user not enrolled",
            );
            return Ok(Auth::reject());
        }
        let code_bytes = response.next().unwrap_or_default();
        let code = String::from_utf8_lossy(&code_bytes).to_string();
        // Reads the sealed secret and writes the replay state: off the async
        // workers.
        let gw = self.gw.clone();
        let checked = kv.clone();
        let outcome =
            match tokio::task::spawn_blocking(move || gw.auth.verify_code(&checked, &code))
                .await
                .unwrap_or_else(|_| {
                    Err(crate::state::StateError::Corrupt {
                        path: "<code check>".into(),
                        message: "the code check did not finish".into(),
                    })
                }) {
                Ok(o) => o,
                Err(e) => {
                    tracing::error!(error = %e, "state error while checking a code");
                    self.attempt(
                        user,
                        "keyboard-interactive",
                        kv.fingerprint(),
                        "failure",
                        "internal state error",
                    );
                    return Ok(Auth::reject());
                }
            };
        let reused = matches!(outcome, CodeOutcome::Reused { .. });
        match outcome {
            CodeOutcome::Accepted(_) if self.locked_meanwhile(user, kv.fingerprint()) => {
                Ok(Auth::Reject {
                    proceed_with_methods: methods(&[MethodKind::KeyboardInteractive]),
                    partial_success: false,
                })
            }
            CodeOutcome::Accepted(u) => {
                self.attempt(
                    user,
                    "keyboard-interactive",
                    kv.fingerprint(),
                    "success",
                    "code accepted",
                );
                self.admitted(*u);
                Ok(Auth::Accept)
            }
            CodeOutcome::Locked { .. } => {
                self.attempt(
                    user,
                    "keyboard-interactive",
                    kv.fingerprint(),
                    "failure",
                    "locked out",
                );
                Ok(Auth::reject())
            }
            CodeOutcome::NotEnrolled => {
                self.attempt(
                    user,
                    "keyboard-interactive",
                    kv.fingerprint(),
                    "failure",
                    "user not enrolled",
                );
                Ok(Auth::reject())
            }
            CodeOutcome::Wrong { lock } | CodeOutcome::Reused { lock } => {
                let reason = if reused {
                    "code already used"
                } else {
                    "wrong code"
                };
                self.attempt(
                    user,
                    "keyboard-interactive",
                    kv.fingerprint(),
                    "failure",
                    reason,
                );
                if let Some(lock) = lock {
                    audit::lockout(&lock.subject, lock.until, self.source());
                }
                if self.gw.auth.locked(user, self.peer.ip()).is_some() {
                    return Ok(Auth::reject());
                }
                // Not a partial success (RFC 4252 5.1): paramiko would take
                // a wrong code for an accepted one and then wait on a
                // connection that never authenticated.
                Ok(Auth::Reject {
                    proceed_with_methods: methods(&[MethodKind::KeyboardInteractive]),
                    partial_success: false,
                })
            }
        }
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: russh::server::ChannelOpenHandle,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        if !self.recheck_for_channel(session) {
            reply
                .reject(russh::ChannelOpenFailure::AdministrativelyProhibited)
                .await;
            return Ok(());
        }
        // Session channels (menu, help) share the connection's channel cap
        // with its jumps: a script cannot open them without bound.
        let permit = match self.gw.caps.open_channel((self.peer, self.local)) {
            Ok(p) => p,
            Err(cap) => {
                self.refuse_cap(reply, self.user_name(), "session", "-", 0, &cap)
                    .await;
                return Ok(());
            }
        };
        let id = channel.id();
        drop(channel);
        self.chans.insert(
            id,
            OuterChan {
                _permit: Some(permit),
                ..OuterChan::default()
            },
        );
        reply.accept().await;
        Ok(())
    }

    async fn channel_open_direct_tcpip(
        &mut self,
        channel: Channel<Msg>,
        host: &str,
        port: u32,
        _originator_address: &str,
        _originator_port: u32,
        reply: russh::server::ChannelOpenHandle,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        if !self.recheck_for_channel(session) {
            reply
                .reject(russh::ChannelOpenFailure::AdministrativelyProhibited)
                .await;
            return Ok(());
        }
        let Some(user) = self.user.clone() else {
            reply
                .reject(russh::ChannelOpenFailure::AdministrativelyProhibited)
                .await;
            return Ok(());
        };
        let decision = match self.gw.policy().may_reach(&user, host) {
            Ok(t)
                if t.kind == crate::config::TargetKind::Ssh
                    && (port == 22 || port == u32::from(t.port)) =>
            {
                Ok((t.name.clone(), None))
            }
            Ok(t) => match &t.db {
                // A database target: its proxy answers, never a raw forward.
                // Its name with the protocol's standard port, its own port
                // or its tunnel_port (as `web-1:22` for SSH targets).
                Some(d)
                    if port == u32::from(t.kind.standard_port())
                        || port == u32::from(t.port)
                        || port == u32::from(d.tunnel_port) =>
                {
                    Ok((t.name.clone(), Some(d.tunnel_port)))
                }
                Some(_) => Err("port is not the database target's port"),
                None => Err("port is not the target's SSH port"),
            },
            Err(d) => Err(d.reason()),
        };
        match decision {
            Ok((_target, Some(db_port))) => {
                let permit = match self.gw.caps.open_jump(user.name(), (self.peer, self.local)) {
                    Ok(p) => p,
                    Err(cap) => {
                        self.refuse_cap(reply, user.name(), "direct-tcpip", host, port, &cap)
                            .await;
                        return Ok(());
                    }
                };
                let conn = crate::dispatch::Connection {
                    stream: Box::new(channel.into_stream()),
                    source: user.origin().clone(),
                    local: std::net::SocketAddr::from(([0, 0, 0, 0], db_port)),
                    pre_auth: None,
                    admitted: Some(user.clone()),
                };
                match self.gw.databases.serve(conn) {
                    Some(serving) => {
                        reply.accept().await;
                        tokio::spawn(async move {
                            serving.await;
                            drop(permit);
                        });
                    }
                    None => {
                        reply.reject(russh::ChannelOpenFailure::ConnectFailed).await;
                    }
                }
            }
            Ok((target, None)) => {
                // Caps per person: each jump holds a connection to a target.
                let permit = match self.gw.caps.open_jump(user.name(), (self.peer, self.local)) {
                    Ok(p) => p,
                    Err(cap) => {
                        self.refuse_cap(reply, user.name(), "direct-tcpip", host, port, &cap)
                            .await;
                        return Ok(());
                    }
                };
                reply.accept().await;
                let gw = self.gw.clone();
                tokio::spawn(jump::serve(gw, user, target, channel, permit));
            }
            Err(reason) => {
                audit::channel_refused(
                    user.name(),
                    "direct-tcpip",
                    host,
                    port,
                    self.source(),
                    reason,
                );
                reply
                    .reject(russh::ChannelOpenFailure::AdministrativelyProhibited)
                    .await;
            }
        }
        Ok(())
    }

    async fn channel_open_direct_streamlocal(
        &mut self,
        _channel: Channel<Msg>,
        socket_path: &str,
        reply: russh::server::ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        audit::channel_refused(
            self.user_name(),
            "direct-streamlocal",
            socket_path,
            0,
            self.source(),
            "unix socket forwarding is not allowed",
        );
        reply
            .reject(russh::ChannelOpenFailure::AdministrativelyProhibited)
            .await;
        Ok(())
    }

    async fn tcpip_forward(
        &mut self,
        address: &str,
        port: &mut u32,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        audit::channel_refused(
            self.user_name(),
            "tcpip-forward",
            address,
            *port,
            self.source(),
            "remote forwarding is not allowed",
        );
        Ok(false)
    }

    async fn streamlocal_forward(
        &mut self,
        path: &str,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        audit::channel_refused(
            self.user_name(),
            "streamlocal-forward",
            path,
            0,
            self.source(),
            "remote forwarding is not allowed",
        );
        Ok(false)
    }

    async fn agent_request(
        &mut self,
        _channel: ChannelId,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        audit::channel_refused(
            self.user_name(),
            "agent-forwarding",
            "-",
            0,
            self.source(),
            "agent forwarding is not allowed",
        );
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
        audit::channel_refused(
            self.user_name(),
            "x11-forwarding",
            "-",
            0,
            self.source(),
            "X11 forwarding is not allowed",
        );
        session.channel_failure(channel)?;
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
        if let Some(c) = self.chans.get_mut(&channel) {
            c.pty = Some(PtyReq {
                term: term.to_string(),
                cols,
                rows,
                pw,
                ph,
                modes: modes.to_vec(),
            });
            session.channel_success(channel)?;
        } else {
            session.channel_failure(channel)?;
        }
        Ok(())
    }

    async fn env_request(
        &mut self,
        channel: ChannelId,
        _name: &str,
        _value: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_failure(channel)?;
        Ok(())
    }

    async fn shell_request(
        &mut self,
        channel: ChannelId,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_success(channel)?;
        let has_pty = self.chans.get(&channel).is_some_and(|c| c.pty.is_some());
        if !has_pty {
            let text = self.help_text();
            session.data(channel, text.into_bytes())?;
            return self.end_channel(session, channel, 0);
        }
        let choices: Vec<(String, String)> = match &self.user {
            Some(u) => self
                .gw
                .policy()
                .grants(u)
                .into_iter()
                // The menu opens SSH sessions; databases are reached with
                // `ssh -L` (the help text says how).
                .filter(|g| !self.is_database(&g.target))
                .flat_map(|g| g.logins.into_iter().map(move |l| (g.target.clone(), l)))
                .collect(),
            None => Vec::new(),
        };
        let text = self.menu_text(&choices);
        session.data(channel, text.into_bytes())?;
        if choices.is_empty() {
            return self.end_channel(session, channel, 0);
        }
        if let Some(c) = self.chans.get_mut(&channel) {
            c.choices = choices;
            c.menu_input = Some(String::new());
        }
        Ok(())
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_success(channel)?;
        let cmd = String::from_utf8_lossy(data).trim().to_string();
        let text = self.help_text();
        if cmd == "help" || cmd == "targets" {
            session.data(channel, text.into_bytes())?;
            return self.end_channel(session, channel, 0);
        }
        session.extended_data(channel, 1, text.into_bytes())?;
        self.end_channel(session, channel, 2)
    }

    async fn subsystem_request(
        &mut self,
        channel: ChannelId,
        name: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        audit::channel_refused(
            self.user_name(),
            "subsystem",
            name,
            0,
            self.source(),
            "the gateway itself offers no subsystems",
        );
        session.channel_failure(channel)?;
        Ok(())
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
        if let Some(c) = self.chans.get_mut(&channel) {
            if let Some(r) = &c.relay {
                r.bridge.window_change(cols, rows, pw, ph).await;
            } else if let Some(p) = c.pty.as_mut() {
                p.cols = cols;
                p.rows = rows;
            }
        }
        Ok(())
    }

    async fn signal(
        &mut self,
        channel: ChannelId,
        sig: Sig,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        if let Some(r) = self.chans.get(&channel).and_then(|c| c.relay.as_ref()) {
            r.bridge.signal(sig).await;
        }
        Ok(())
    }

    async fn data(
        &mut self,
        channel: ChannelId,
        data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let Some(c) = self.chans.get_mut(&channel) else {
            return Ok(());
        };
        if let Some(r) = &c.relay {
            if !r.bridge.data(data).await {
                session.close(channel)?;
            }
            return Ok(());
        }
        let Some(input) = c.menu_input.as_mut() else {
            return Ok(());
        };
        // A tiny line editor: the pty is ours, so we echo.
        let mut chosen = None;
        let mut echo = Vec::new();
        for &b in data {
            match b {
                b'\r' | b'\n' => {
                    chosen = Some(input.trim().to_string());
                    break;
                }
                3 | 4 => chosen = Some("q".into()),
                8 | 127 if input.pop().is_some() => {
                    echo.extend_from_slice(b"\x08 \x08");
                }
                b if b.is_ascii_graphic() && input.len() < 16 => {
                    input.push(b as char);
                    echo.push(b);
                }
                _ => {}
            }
            if chosen.is_some() {
                break;
            }
        }
        if !echo.is_empty() {
            session.data(channel, echo)?;
        }
        match chosen.as_deref() {
            None => Ok(()),
            Some("q") | Some("quit") | Some("exit") => {
                session.data(channel, b"\r\n".to_vec())?;
                self.end_channel(session, channel, 0)
            }
            Some(s) => {
                let n = s.parse::<usize>().unwrap_or(0);
                self.menu_choose(channel, n, session).await
            }
        }
    }

    async fn channel_eof(
        &mut self,
        channel: ChannelId,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        if let Some(r) = self.chans.get(&channel).and_then(|c| c.relay.as_ref()) {
            r.bridge.eof().await;
        }
        Ok(())
    }

    async fn channel_close(
        &mut self,
        channel: ChannelId,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        if let Some(c) = self.chans.remove(&channel) {
            if let Some(r) = c.relay {
                r.bridge.close().await;
            }
        }
        Ok(())
    }
}

// ---- Connection-level checks (require_wireguard, re-checks on every new
// channel). Kept together so they merge as one block.
impl Outer {
    /// A user with `require_wireguard = true` who proved their key on a
    /// plain TCP listener: audited, refused, and told why (once, as
    /// keyboard-interactive instructions — the only place a stock client
    /// shows a server's words during login). Checked after the signature so
    /// a stranger learns nothing about the user.
    fn refuse_plain_listener(&mut self, user: &str, fp: &str) -> Option<Auth> {
        if self.source.device().is_some() {
            return None;
        }
        let required = self
            .gw
            .settings()
            .users
            .iter()
            .any(|u| u.name == user && u.require_wireguard);
        if !required {
            return None;
        }
        self.attempt(
            user,
            "publickey",
            fp,
            "failure",
            "user must connect through WireGuard (require_wireguard); this is a plain TCP listener",
        );
        self.tunnel_only_notice = Some(format!(
            "gatehouse: {user} may log in only through WireGuard.\n\
             Bring up your tunnel (wg-quick up) and connect to the gateway's tunnel address."
        ));
        Some(Auth::Reject {
            proceed_with_methods: methods(&[MethodKind::KeyboardInteractive]),
            partial_success: false,
        })
    }

    /// The tunnel-only notice as a prompt with no question (first call),
    /// then a refusal; `None` when there is no notice.
    fn tunnel_only_prompt(&mut self, first: bool) -> Option<Auth> {
        let notice = self.tunnel_only_notice.as_ref()?;
        if !first {
            self.tunnel_only_notice = None;
            return Some(Auth::reject());
        }
        Some(Auth::Partial {
            name: "gatehouse".into(),
            instructions: notice.clone().into(),
            prompts: vec![("Press Enter to close: ".into(), true)].into(),
        })
    }

    /// Every new channel re-checks the person behind an existing connection
    /// (a ControlMaster connection can live for hours): the user still
    /// exists, still holds the key, and is not locked. On failure the
    /// channel is refused, the connection closed with a message, and both
    /// audited. True if the channel may proceed.
    fn recheck_for_channel(&mut self, session: &mut Session) -> bool {
        let Some(user) = self.user.as_ref() else {
            // russh answers no channel before authentication; refuse anyway.
            return false;
        };
        // A login without a key (a database client by its device) never
        // holds an SSH connection; if one ever did, it holds no key.
        let holds_key = user
            .key()
            .is_some_and(|key| self.gw.auth.key_is_authorized(user.name(), key));
        let device = self.source.device().map(|d| d.public_key_b64());
        let reason = if !holds_key {
            Some("the user or their key is no longer in the configuration".to_string())
        } else if let Some(lock) = self.gw.locks.login(user.name(), device.as_deref()) {
            Some(lock.message())
        } else {
            self.gw
                .auth
                .locked(user.name(), self.peer.ip())
                .map(|r| match r {
                    KeyRefusal::Locked { subject, .. } => format!("{subject} is locked out"),
                    #[allow(unreachable_patterns)]
                    _ => "the user is locked out".to_string(),
                })
        };
        let Some(reason) = reason else {
            return true;
        };
        let name = user.name().to_string();
        audit::channel_refused(&name, "channel", "-", 0, self.source(), &reason);
        audit::connection_closed(&name, self.source(), &reason);
        let _ = session.disconnect(
            russh::Disconnect::ByApplication,
            &format!("gatehouse: {reason}; the connection is closed"),
            "en",
        );
        false
    }
}
