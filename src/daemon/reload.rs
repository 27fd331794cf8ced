//! Reloading the configuration without a restart: `SIGHUP` and `gatehouse
//! reload` (the control socket calls [`Reloader`] through
//! [`crate::control::Reload`]).
//!
//! A reload, one at a time:
//! 1. re-reads the file the daemon was started with and validates all of
//!    it, as `gatehouse check` does. **An invalid file changes nothing**:
//!    every error (`file:line:col: path: message`) goes out in a
//!    `config.reload_failed` event and back to the caller;
//! 2. compares it with the configuration in force. A setting that is only
//!    read when gatehouse starts ([`restart_required`]: listeners, the
//!    state and recordings directories, sizes of things built at start)
//!    **refuses the whole reload**, naming the fields: nothing is half
//!    applied;
//! 3. puts the new file in force ([`Current::store`]): every later login,
//!    channel and database login reads it;
//! 4. ends the live sessions the new file no longer allows (their user,
//!    the key or WireGuard device they came with, or their role's grant of
//!    that target and login is gone), each with a message saying why, and
//!    leaves every other session alone;
//! 5. hands the new device list to the WireGuard tunnel, which starts the
//!    added devices and stops the removed ones without touching the others;
//! 6. audits `config.reload` with what changed and who asked.
//!
//! Sessions already running keep the limits they started with
//! (`max_session`, `idle_timeout`, recording settings); only their right
//! to exist at all is checked again.

use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::{watch, Mutex};

use crate::audit::{self, ReloadSummary};
use crate::auth;
use crate::config::{self, Current, Settings};
use crate::live::{Registry, SessionInfo};
use crate::policy::Policy;
use crate::state::StateDir;
use crate::tunnel::{self, PeerControl};

/// Every setting that is read only when gatehouse starts, as the file
/// spells it. A reload that changes any of them is refused, naming them;
/// restart gatehouse to apply them.
pub const RESTART_ONLY: &[&str] = &[
    "gateway.state_dir",
    "gateway.ssh_listen",
    "gateway.max_connections",
    "gateway.max_startups",
    "gateway.max_startups_per_source",
    "gateway.max_jumps_per_connection",
    "gateway.max_jumps_per_user",
    "gateway.max_channels_per_connection",
    "auth.max_failures",
    "auth.failure_window",
    "auth.lockout",
    "auth.mfa_lease",
    "recordings.dir",
    "recordings.recipients",
    "recordings.retention",
    "recordings.min_free",
    "wireguard",
    "wireguard.listen",
    "wireguard.address",
    "wireguard.max_connections_per_peer",
    "wireguard.max_connections",
    "targets[].tunnel_port",
    "control.socket",
    "control.group",
    "metrics.listen",
    "anomaly",
];

/// The settings of [`RESTART_ONLY`] that differ between `old` and `new`,
/// in that order. Empty: the new file can be applied live.
pub fn restart_required(old: &Settings, new: &Settings) -> Vec<&'static str> {
    let (og, ng) = (&old.gateway, &new.gateway);
    let (oa, na) = (&old.auth, &new.auth);
    let (or, nr) = (&old.recordings, &new.recordings);
    let wg = |s: &Settings| {
        s.wireguard.as_ref().map(|w| {
            (
                w.listen,
                (w.address, w.prefix_len),
                w.max_connections_per_peer,
                w.max_connections,
            )
        })
    };
    let (ow, nw) = (wg(old), wg(new));
    // The database targets' tunnel ports: the tunnel's listeners and the
    // dispatch are built at start.
    let db_ports = |s: &Settings| {
        let mut v: Vec<(String, &'static str, u16)> = s
            .targets
            .iter()
            .filter_map(|t| Some((t.name.clone(), t.kind.as_str(), t.db.as_ref()?.tunnel_port)))
            .collect();
        v.sort();
        v
    };
    let checks: [(&'static str, bool); 26] = [
        ("gateway.state_dir", og.state_dir != ng.state_dir),
        ("gateway.ssh_listen", og.ssh_listen != ng.ssh_listen),
        (
            "gateway.max_connections",
            og.max_connections != ng.max_connections,
        ),
        (
            "gateway.max_startups",
            og.pre_auth.total != ng.pre_auth.total,
        ),
        (
            "gateway.max_startups_per_source",
            og.pre_auth.per_source != ng.pre_auth.per_source,
        ),
        (
            "gateway.max_jumps_per_connection",
            og.max_jumps_per_connection != ng.max_jumps_per_connection,
        ),
        (
            "gateway.max_jumps_per_user",
            og.max_jumps_per_user != ng.max_jumps_per_user,
        ),
        (
            "gateway.max_channels_per_connection",
            og.max_channels_per_connection != ng.max_channels_per_connection,
        ),
        ("auth.max_failures", oa.max_failures != na.max_failures),
        (
            "auth.failure_window",
            oa.failure_window != na.failure_window,
        ),
        ("auth.lockout", oa.lockout != na.lockout),
        ("auth.mfa_lease", oa.mfa_lease != na.mfa_lease),
        ("recordings.dir", or.dir != nr.dir),
        ("recordings.recipients", or.recipients != nr.recipients),
        ("recordings.retention", or.retention != nr.retention),
        (
            "recordings.min_free",
            or.min_free_bytes != nr.min_free_bytes,
        ),
        ("wireguard", ow.is_some() != nw.is_some()),
        (
            "wireguard.listen",
            matches!((ow, nw), (Some(o), Some(n)) if o.0 != n.0),
        ),
        (
            "wireguard.address",
            matches!((ow, nw), (Some(o), Some(n)) if o.1 != n.1),
        ),
        (
            "wireguard.max_connections_per_peer",
            matches!((ow, nw), (Some(o), Some(n)) if o.2 != n.2),
        ),
        (
            "wireguard.max_connections",
            matches!((ow, nw), (Some(o), Some(n)) if o.3 != n.3),
        ),
        ("targets[].tunnel_port", db_ports(old) != db_ports(new)),
        ("control.socket", old.control.socket != new.control.socket),
        ("control.group", old.control.group != new.control.group),
        ("metrics.listen", old.metrics.listen != new.metrics.listen),
        ("anomaly", old.anomaly != new.anomaly),
    ];
    checks
        .into_iter()
        .filter(|(_, changed)| *changed)
        .map(|(name, _)| name)
        .collect()
}

/// Why the configuration `new` no longer allows this live session, as the
/// user is told; None when it still does.
pub fn why_end(s: &SessionInfo, new: &Arc<Settings>) -> Option<String> {
    let Some(user) = new.users.iter().find(|u| u.name == s.user) else {
        return Some(format!(
            "your account {} was removed by a configuration reload",
            s.user
        ));
    };
    if let Some(fp) = s
        .key_fingerprint
        .as_deref()
        .filter(|fp| *fp != auth::NO_KEY_FINGERPRINT)
    {
        if !user.ssh_keys.iter().any(|k| auth::fingerprint(k) == fp) {
            return Some(format!(
                "the SSH key you logged in with ({fp}) was removed from {} by a configuration reload",
                s.user
            ));
        }
    }
    if let Some(device) = s.device.as_deref() {
        let still = user
            .wireguard
            .iter()
            .any(|d| tunnel::keys::b64(&d.public_key) == device);
        if !still {
            return Some(
                "the WireGuard device you connected through was removed by a configuration reload"
                    .to_string(),
            );
        }
    }
    if !Policy::new(new.clone()).allows(&s.user, &s.target, &s.login) {
        return Some(format!(
            "your access to {} as {} was removed by a configuration reload",
            s.target, s.login
        ));
    }
    None
}

/// The daemon's reload. Cheap to clone (one shared state).
#[derive(Clone)]
pub struct Reloader(Arc<Inner>);

struct Inner {
    config: Current,
    path: PathBuf,
    state: Arc<StateDir>,
    live: Arc<Registry>,
    tunnel: Option<PeerControl>,
    /// One reload at a time.
    running: Mutex<()>,
}

impl std::fmt::Debug for Reloader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reloader")
            .field("path", &self.0.path)
            .finish_non_exhaustive()
    }
}

/// The signal stream of `SIGHUP`. Taken as early as possible in the
/// daemon's start: from then on a `SIGHUP` no longer ends the process
/// (its default action) but waits for [`Reloader::serve_hangups`].
pub fn hangups() -> std::io::Result<tokio::signal::unix::Signal> {
    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
}

impl Reloader {
    /// `config` is the handle every service reads; the file is re-read
    /// from `config`'s current `source`. `live` is the registry whose
    /// sessions a reload may end; `tunnel` the running tunnel's device
    /// list (None without `[wireguard]`).
    pub fn new(
        config: Current,
        state: Arc<StateDir>,
        live: Arc<Registry>,
        tunnel: Option<PeerControl>,
    ) -> Reloader {
        let path = config.get().source.clone();
        Reloader(Arc::new(Inner {
            config,
            path,
            state,
            live,
            tunnel,
            running: Mutex::new(()),
        }))
    }

    /// Reloads on every `SIGHUP` of `signals` until `stop` fires.
    pub fn serve_hangups(
        &self,
        mut signals: tokio::signal::unix::Signal,
        mut stop: watch::Receiver<bool>,
    ) {
        let me = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    s = signals.recv() => {
                        if s.is_none() {
                            return;
                        }
                        match me.reload("SIGHUP").await {
                            Ok(summary) => tracing::info!("SIGHUP: {summary}"),
                            Err(e) => tracing::warn!("SIGHUP: reload refused: {e}"),
                        }
                    }
                    _ = stop.changed() => return,
                }
            }
        });
    }

    /// One reload (see the module documentation). `Ok` is a one-line
    /// summary; `Err` every reason nothing changed.
    pub async fn reload(&self, by: &str) -> Result<String, String> {
        let inner = &self.0;
        let _one = inner.running.lock().await;
        // systemd (Type=notify) is told: RELOADING=1 now, READY=1 when done.
        let _notify = super::notify::reloading();
        let file = inner.path.display().to_string();
        let path = inner.path.clone();
        let loaded = tokio::task::spawn_blocking(move || config::load(&path))
            .await
            .map_err(|e| format!("gatehouse: the reload task failed: {e}"))?;
        let new = match loaded {
            Ok(s) => s,
            Err(errors) => {
                let text = errors.to_string();
                audit::config_reload_failed(&file, by, "invalid", &text, "");
                crate::metrics::reload("invalid");
                return Err(format!(
                    "{text}\ngatehouse: {} error(s) in {file}; still running on the previous configuration",
                    errors.0.len()
                ));
            }
        };
        let old = inner.config.get();
        let fields = restart_required(&old, &new);
        if !fields.is_empty() {
            let list = fields.join(", ");
            let text = format!(
                "{file}: these settings cannot change while gatehouse runs: {list}; \
                 restart gatehouse to apply them (nothing was changed)"
            );
            audit::config_reload_failed(&file, by, "restart_required", &text, &list);
            crate::metrics::reload("restart_required");
            return Err(text);
        }
        // The wanted device list before anything changes: a state
        // directory that cannot be read fails the reload here, whole.
        let peers = match (&inner.tunnel, &new.wireguard) {
            (Some(_), Some(_)) => match tunnel::peer_configs(&new, &inner.state) {
                Ok(p) => Some(p),
                Err(e) => {
                    let text = format!(
                        "{file}: cannot read the WireGuard preshared keys: {e} (nothing was changed)"
                    );
                    audit::config_reload_failed(&file, by, "state", &text, "");
                    crate::metrics::reload("invalid");
                    return Err(text);
                }
            },
            _ => None,
        };
        for w in &new.warnings {
            tracing::warn!("{w}");
        }
        let new = Arc::new(new);
        // Sessions that start while this runs are checked too.
        let mut starts = inner.live.starts();
        inner.config.store(new.clone());
        let mut ended = 0;
        let mut check = |s: &crate::live::Live| {
            if let Some(reason) = why_end(&s.info, &new) {
                if s.end(&reason) {
                    ended += 1;
                    tracing::info!(session = %s.info.id, user = %s.info.user, %reason,
                        "reload: ending a session the new configuration does not allow");
                }
            }
        };
        for s in inner.live.all() {
            check(&s);
        }
        while let Ok(s) = starts.try_recv() {
            check(&s);
        }
        let mut summary = ReloadSummary {
            users: new.users.len(),
            roles: new.roles.len(),
            targets: new.targets.len(),
            sessions_ended: ended,
            ..Default::default()
        };
        if let (Some(control), Some(peers)) = (&inner.tunnel, peers) {
            match control.set_peers(peers).await {
                Ok(changes) => {
                    for k in &changes.failed {
                        tracing::warn!(public_key = %k, "reload: a WireGuard device could not be added until gatehouse restarts");
                    }
                    summary.devices_added = changes.added;
                    summary.devices_removed = changes.removed;
                }
                Err(e) => tracing::warn!("reload: {e}"),
            }
        }
        audit::config_reload(&file, by, &summary);
        crate::metrics::reload("ok");
        Ok(format!(
            "{file}: reloaded ({} users, {} roles, {} targets; {} WireGuard devices added, {} removed; {} sessions ended)",
            summary.users,
            summary.roles,
            summary.targets,
            summary.devices_added.len(),
            summary.devices_removed.len(),
            summary.sessions_ended
        ))
    }
}

impl crate::control::Reload for Reloader {
    fn reload(
        &self,
        by: String,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<String, String>> + Send>> {
        let me = self.clone();
        Box::pin(async move { Reloader::reload(&me, &by).await })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use std::path::Path;

    /// alice holds k1 and k2; bob holds k3.
    struct Keys {
        k1: String,
        k2: String,
        k3: String,
    }

    fn keys() -> Keys {
        let k = || {
            russh::keys::PrivateKey::random(&mut rand::rng(), russh::keys::Algorithm::Ed25519)
                .unwrap()
                .public_key()
                .to_openssh()
                .unwrap()
        };
        Keys {
            k1: k(),
            k2: k(),
            k3: k(),
        }
    }

    fn settings(
        k: &Keys,
        extra_gateway: &str,
        alice_keys: &[&str],
        alice_roles: &str,
    ) -> Arc<Settings> {
        let alice_keys: Vec<String> = alice_keys.iter().map(|s| format!("\"{s}\"")).collect();
        let text = format!(
            "[gateway]\nstate_dir = \"/tmp/gh-reload-test\"\nssh_listen = [\"127.0.0.1:2222\"]\n{extra_gateway}\n\
             [[targets]]\nname = \"web-1\"\nkind = \"ssh\"\naddress = \"127.0.0.1:22\"\nhost_keys = [\"{k1}\"]\n\n\
             [[roles]]\nname = \"deploy\"\ntargets = {{ names = [\"web-1\"] }}\nlogins = [\"deploy\"]\n\n\
             [[roles]]\nname = \"other\"\ntargets = {{ names = [\"web-1\"] }}\nlogins = [\"www\"]\n\n\
             [[users]]\nname = \"alice\"\nroles = {alice_roles}\nssh_keys = [{}]\n\n\
             [[users]]\nname = \"bob\"\nroles = [\"deploy\"]\nssh_keys = [\"{k3}\"]\n\n\
             [recordings]\nrecipients = [\"age1zvkyg2lqzraa2lnjvqej32nkuu0ues2s82hzrye869xeexvn73equnujwj\"]\n",
            alice_keys.join(", "),
            k1 = k.k1,
            k3 = k.k3,
        );
        Arc::new(config::load_str(&text, Path::new("g.toml")).unwrap())
    }

    fn base(k: &Keys) -> Arc<Settings> {
        settings(k, "", &[&k.k1, &k.k2], "[\"deploy\"]")
    }

    fn session(user: &str, key: &str, login: &str) -> SessionInfo {
        let fp = auth::fingerprint(&russh::keys::PublicKey::from_openssh(key).unwrap());
        SessionInfo {
            id: "s1".into(),
            kind: crate::live::SessionKind::Ssh,
            user: user.into(),
            source: "127.0.0.1".into(),
            device: None,
            key_fingerprint: Some(fp),
            target: "web-1".into(),
            login: login.into(),
            announce_watch: false,
        }
    }

    #[test]
    fn an_unchanged_file_needs_no_restart_and_a_listener_change_does() {
        let k = keys();
        assert!(restart_required(&base(&k), &base(&k)).is_empty());
        // Users, keys and roles are live; max_connections is not.
        let moved = settings(&k, "max_connections = 7\n", &[&k.k1], "[\"other\"]");
        assert_eq!(
            restart_required(&base(&k), &moved),
            vec!["gateway.max_connections"]
        );
        let mut other = (*base(&k)).clone();
        other.gateway.ssh_listen = vec!["127.0.0.1:2223".parse().unwrap()];
        other.recordings.dir = "/elsewhere".into();
        let fields = restart_required(&base(&k), &other);
        assert_eq!(fields, vec!["gateway.ssh_listen", "recordings.dir"]);
        for f in fields {
            assert!(RESTART_ONLY.contains(&f));
        }
    }

    #[test]
    fn sessions_end_only_for_what_the_new_file_removed() {
        let k = keys();
        let old_ok = session("alice", &k.k1, "deploy");
        assert_eq!(why_end(&old_ok, &base(&k)), None);
        assert_eq!(why_end(&session("bob", &k.k3, "deploy"), &base(&k)), None);

        // alice's second key removed: her session with it ends, not the other.
        let one_key = settings(&k, "", &[&k.k1], "[\"deploy\"]");
        assert_eq!(why_end(&old_ok, &one_key), None);
        let why = why_end(&session("alice", &k.k2, "deploy"), &one_key).unwrap();
        assert!(why.contains("SSH key"), "{why}");

        // alice's role changed: deploy@web-1 ends, www@web-1 is fine.
        let other_role = settings(&k, "", &[&k.k1], "[\"other\"]");
        assert_eq!(
            why_end(&old_ok, &other_role).unwrap(),
            "your access to web-1 as deploy was removed by a configuration reload"
        );
        assert_eq!(why_end(&session("alice", &k.k1, "www"), &other_role), None);

        // A removed user.
        let why = why_end(&session("carol", &k.k1, "deploy"), &base(&k)).unwrap();
        assert!(why.contains("carol was removed"), "{why}");
    }
}
