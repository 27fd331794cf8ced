//! Policy: who may reach which target as which login, with which limits.
//!
//! Pure: no I/O, no clocks. Deny by default — a user reaches a target as a
//! login only if one of the user's roles selects that target and lists that
//! login. The only way to get an [`Authorized`] (which the upstream connector
//! requires) is [`Policy::authorize`].

#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::sync::Arc;
use std::time::Duration;

use crate::auth::AuthenticatedUser;
use crate::config::{RecordInput, Role, Settings, Target, TargetSelector};

/// Why policy refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denied {
    /// No such target (reported to users exactly like `NoRole`).
    UnknownTarget,
    /// None of the user's roles selects the target.
    NoRole,
    /// A role selects the target, but not for this login.
    Login { allowed: Vec<String> },
}

impl Denied {
    /// Short reason for the audit log.
    pub fn reason(&self) -> &'static str {
        match self {
            Denied::UnknownTarget => "unknown target",
            Denied::NoRole => "no role grants the target",
            Denied::Login { .. } => "login not allowed by any role",
        }
    }
}

/// Proof that policy allowed `user` to reach `target` as `login`.
#[derive(Debug, Clone)]
pub struct Authorized {
    user: AuthenticatedUser,
    target: Target,
    login: String,
    roles: Vec<String>,
    max_session: Duration,
    idle_timeout: Duration,
    allow_env: Vec<String>,
    record_input: RecordInput,
    /// Whether a granting role lets the database client pass `options`.
    allow_options: bool,
    /// Whether a granting role asks that the user be told of watchers.
    announce_watch: bool,
}

impl Authorized {
    /// Whether the database client may pass server `options` (PGOPTIONS):
    /// true only when every role that grants this login allows it (`options` can
    /// change server settings for the session, so it is off by default).
    pub fn allow_options(&self) -> bool {
        self.allow_options
    }

    /// Whether the user is told when an administrator watches the session
    /// live: true when any granting role says `announce_watch = true`.
    pub fn announce_watch(&self) -> bool {
        self.announce_watch
    }

    /// Which input is recorded: the most-recording `record_input` among the
    /// granting roles (recording more is the stricter choice, as the
    /// shortest limits are for `max_session`).
    pub fn record_input(&self) -> RecordInput {
        self.record_input
    }
    pub fn user(&self) -> &AuthenticatedUser {
        &self.user
    }
    pub fn target(&self) -> &Target {
        &self.target
    }
    pub fn login(&self) -> &str {
        &self.login
    }
    /// The roles that granted this access.
    pub fn roles(&self) -> &[String] {
        &self.roles
    }
    /// Strictest `max_session` among the granting roles.
    pub fn max_session(&self) -> Duration {
        self.max_session
    }
    /// Strictest non-zero `idle_timeout` among the granting roles (zero: none).
    pub fn idle_timeout(&self) -> Duration {
        self.idle_timeout
    }
    /// Whether an environment variable may be passed to the target.
    pub fn env_allowed(&self, name: &str) -> bool {
        self.allow_env.iter().any(|p| match p.strip_suffix('*') {
            Some(prefix) => name.starts_with(prefix),
            None => p == name,
        })
    }

    /// Test-only: `user` as `login` on `target`, with default limits.
    #[cfg(test)]
    pub(crate) fn for_tests(user: AuthenticatedUser, target: Target, login: &str) -> Authorized {
        Authorized {
            roles: user.roles().to_vec(),
            user,
            target,
            login: login.to_string(),
            max_session: Duration::from_secs(3600),
            idle_timeout: Duration::ZERO,
            allow_env: Vec::new(),
            record_input: RecordInput::default(),
            allow_options: false,
            announce_watch: false,
        }
    }
}

/// One entry of "what may I reach".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub target: String,
    pub logins: Vec<String>,
}

/// The policy over a validated configuration.
#[derive(Debug, Clone)]
pub struct Policy {
    settings: Arc<Settings>,
}

fn selects(role: &Role, target: &Target) -> bool {
    match &role.targets {
        TargetSelector::Names(names) => names.contains(&target.name),
        TargetSelector::Labels(labels) => labels
            .iter()
            .all(|(k, v)| target.labels.get(k).is_some_and(|tv| tv == v)),
    }
}

impl Policy {
    pub fn new(settings: Arc<Settings>) -> Policy {
        Policy { settings }
    }

    pub fn target(&self, name: &str) -> Option<&Target> {
        self.settings.targets.iter().find(|t| t.name == name)
    }

    /// The user's roles as this configuration names them, not as they were
    /// at login: after a reload, a new channel of an old login gets the new
    /// roles, and a user no longer configured has none.
    fn roles_of<'a>(&'a self, user: &'a AuthenticatedUser) -> impl Iterator<Item = &'a Role> + 'a {
        let names: &'a [String] = self
            .settings
            .users
            .iter()
            .find(|u| u.name == user.name())
            .map(|u| u.roles.as_slice())
            .unwrap_or(&[]);
        self.settings
            .roles
            .iter()
            .filter(move |r| names.contains(&r.name))
    }

    /// Whether the user named `user` (as this configuration names her)
    /// may reach `target` as `login`: what a reload asks of every live
    /// session. A user who is not configured may reach nothing.
    pub fn allows(&self, user: &str, target: &str, login: &str) -> bool {
        let Some(u) = self.settings.users.iter().find(|u| u.name == user) else {
            return false;
        };
        let Some(t) = self.target(target) else {
            return false;
        };
        self.settings
            .roles
            .iter()
            .filter(|r| u.roles.contains(&r.name))
            .any(|r| selects(r, t) && r.logins.iter().any(|l| l == login))
    }

    /// Every target the user may reach, with the logins, sorted by name.
    pub fn grants(&self, user: &AuthenticatedUser) -> Vec<Grant> {
        let mut out: Vec<Grant> = Vec::new();
        for t in &self.settings.targets {
            let mut logins: Vec<String> = Vec::new();
            for r in self.roles_of(user).filter(|r| selects(r, t)) {
                for l in &r.logins {
                    if !logins.contains(l) {
                        logins.push(l.clone());
                    }
                }
            }
            if !logins.is_empty() {
                out.push(Grant {
                    target: t.name.clone(),
                    logins,
                });
            }
        }
        out.sort_by(|a, b| a.target.cmp(&b.target));
        out
    }

    /// May the user reach this target at all (with some login)?
    pub fn may_reach(&self, user: &AuthenticatedUser, target: &str) -> Result<&Target, Denied> {
        let t = self.target(target).ok_or(Denied::UnknownTarget)?;
        if self.roles_of(user).any(|r| selects(r, t)) {
            Ok(t)
        } else {
            Err(Denied::NoRole)
        }
    }

    /// The decision: `user` reaches `target` as `login`, with the limits of
    /// the roles that grant it.
    pub fn authorize(
        &self,
        user: &AuthenticatedUser,
        target: &str,
        login: &str,
    ) -> Result<Authorized, Denied> {
        let t = self.may_reach(user, target)?;
        let selecting: Vec<&Role> = self.roles_of(user).filter(|r| selects(r, t)).collect();
        let granting: Vec<&Role> = selecting
            .iter()
            .copied()
            .filter(|r| r.logins.iter().any(|l| l == login))
            .collect();
        if granting.is_empty() {
            let mut allowed: Vec<String> =
                selecting.iter().flat_map(|r| r.logins.clone()).collect();
            allowed.sort();
            allowed.dedup();
            return Err(Denied::Login { allowed });
        }
        // Several roles may grant the same access: apply the strictest limits
        // (as Teleport does), so adding a role never loosens another's limits.
        let max_session = granting
            .iter()
            .map(|r| r.max_session)
            .min()
            .unwrap_or_default();
        let idle_timeout = granting
            .iter()
            .map(|r| r.idle_timeout)
            .filter(|d| !d.is_zero())
            .min()
            .unwrap_or_default();
        let mut allow_env: Vec<String> =
            granting.iter().flat_map(|r| r.allow_env.clone()).collect();
        allow_env.sort();
        allow_env.dedup();
        Ok(Authorized {
            user: user.clone(),
            target: t.clone(),
            login: login.to_string(),
            roles: granting.iter().map(|r| r.name.clone()).collect(),
            max_session,
            idle_timeout,
            allow_env,
            // Strictest wins: the role that records the most.
            record_input: granting
                .iter()
                .map(|r| r.record_input)
                .max()
                .unwrap_or_default(),
            // Strictest wins, like the limits: every granting role must allow it.
            allow_options: granting.iter().all(|r| r.allow_options),
            announce_watch: granting.iter().any(|r| r.announce_watch),
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use crate::config::{AuthSettings, Gateway, TargetKind};
    use std::collections::BTreeMap;

    fn target(name: &str, labels: &[(&str, &str)]) -> Target {
        Target {
            name: name.into(),
            kind: TargetKind::Ssh,
            host: "127.0.0.1".into(),
            port: 22,
            host_keys: vec![],
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            db: None,
        }
    }

    fn role(name: &str, sel: TargetSelector, logins: &[&str], max: u64, idle: u64) -> Role {
        Role {
            name: name.into(),
            targets: sel,
            logins: logins.iter().map(|s| s.to_string()).collect(),
            max_session: Duration::from_secs(max),
            idle_timeout: Duration::from_secs(idle),
            allow_env: vec!["LANG".into(), "LC_*".into(), "TERM".into()],
            record_input: RecordInput::default(),
            allow_options: false,
            announce_watch: false,
        }
    }

    /// The test policy, with `user` configured with the roles it holds.
    fn policy_for(user: &AuthenticatedUser) -> Policy {
        let mut p = policy();
        let mut settings = (*p.settings).clone();
        settings.users.push(crate::config::User {
            name: user.name().to_string(),
            roles: user.roles().to_vec(),
            ssh_keys: vec![],
            wireguard: vec![],
            require_wireguard: false,
        });
        p.settings = Arc::new(settings);
        p
    }

    fn policy() -> Policy {
        let mut prod = BTreeMap::new();
        prod.insert("env".to_string(), "production".to_string());
        prod.insert("tier".to_string(), "web".to_string());
        Policy::new(Arc::new(Settings {
            source: "t.toml".into(),
            gateway: Gateway {
                state_dir: "/nonexistent".into(),
                ssh_listen: vec![],
                max_connections: 1,
                max_jumps_per_connection: 1,
                max_jumps_per_user: 1,
                max_channels_per_connection: 1,
                auth_timeout: Duration::from_secs(1),
                connect_timeout: Duration::from_secs(1),
                pre_auth: crate::config::PreAuthLimits {
                    total: 1,
                    per_source: 1,
                },
            },
            auth: AuthSettings {
                max_failures: 5,
                failure_window: Duration::from_secs(600),
                lockout: Duration::from_secs(900),
                mfa_lease: Duration::from_secs(3600),
                max_connection_age: Duration::from_secs(3600),
            },
            users: vec![],
            roles: vec![
                role(
                    "web-deploy",
                    TargetSelector::Labels(prod),
                    &["deploy"],
                    4 * 3600,
                    1800,
                ),
                role(
                    "db",
                    TargetSelector::Names(vec!["db-1".into()]),
                    &["postgres"],
                    3600,
                    0,
                ),
                Role {
                    record_input: RecordInput::All,
                    ..role(
                        "web-short",
                        TargetSelector::Names(vec!["web-1".into()]),
                        &["deploy", "www"],
                        60,
                        0,
                    )
                },
                Role {
                    record_input: RecordInput::None,
                    ..role(
                        "web-quiet",
                        TargetSelector::Names(vec!["web-1".into()]),
                        &["deploy"],
                        3600,
                        0,
                    )
                },
            ],
            targets: vec![
                target("web-1", &[("env", "production"), ("tier", "web")]),
                target("web-2", &[("env", "staging"), ("tier", "web")]),
                target("db-1", &[("env", "production"), ("tier", "db")]),
            ],
            recordings: crate::config::RecordingSettings {
                dir: "/nonexistent".into(),
                recipients: vec![],
                retention: Duration::from_secs(1),
                min_free_bytes: 0,
            },
            wireguard: None,
            control: Default::default(),
            metrics: Default::default(),
            anomaly: None,
            warnings: vec![],
        }))
    }

    #[test]
    fn label_role_grants_matching_target_and_login() {
        let u = AuthenticatedUser::for_tests("alice", &["web-deploy"]);
        let a = policy_for(&u).authorize(&u, "web-1", "deploy").unwrap();
        assert_eq!(a.target().name, "web-1");
        assert_eq!(a.login(), "deploy");
        assert_eq!(a.max_session(), Duration::from_secs(4 * 3600));
        assert_eq!(a.idle_timeout(), Duration::from_secs(1800));
    }

    #[test]
    fn role_without_the_target_is_refused() {
        let u = AuthenticatedUser::for_tests("alice", &["web-deploy"]);
        assert_eq!(
            policy_for(&u).authorize(&u, "web-2", "deploy").unwrap_err(),
            Denied::NoRole
        );
        assert_eq!(
            policy_for(&u).authorize(&u, "db-1", "deploy").unwrap_err(),
            Denied::NoRole
        );
        assert_eq!(
            policy_for(&u).authorize(&u, "nope", "deploy").unwrap_err(),
            Denied::UnknownTarget
        );
    }

    #[test]
    fn login_the_role_does_not_allow_is_refused_naming_allowed_logins() {
        let u = AuthenticatedUser::for_tests("alice", &["web-deploy"]);
        assert_eq!(
            policy_for(&u).authorize(&u, "web-1", "root").unwrap_err(),
            Denied::Login {
                allowed: vec!["deploy".into()]
            }
        );
    }

    #[test]
    fn user_without_roles_reaches_nothing() {
        let u = AuthenticatedUser::for_tests("mallory", &[]);
        assert!(policy_for(&u).grants(&u).is_empty());
        assert!(policy_for(&u).authorize(&u, "web-1", "deploy").is_err());
    }

    #[test]
    fn roles_come_from_the_configuration_in_force_not_the_login() {
        // alice logged in holding web-deploy; the configuration in force
        // (after a reload) no longer names her: she reaches nothing.
        let u = AuthenticatedUser::for_tests("alice", &["web-deploy"]);
        assert!(policy().grants(&u).is_empty());
        assert_eq!(
            policy().authorize(&u, "web-1", "deploy").unwrap_err(),
            Denied::NoRole
        );
        // Configured with another role now: that role applies.
        let now = AuthenticatedUser::for_tests("alice", &["db"]);
        let p = policy_for(&now);
        assert!(p.authorize(&u, "db-1", "postgres").is_ok());
        assert!(p.authorize(&u, "web-1", "deploy").is_err());
    }

    #[test]
    fn allows_follows_the_configured_roles() {
        let u = AuthenticatedUser::for_tests("alice", &["web-deploy"]);
        let p = policy_for(&u);
        assert!(p.allows("alice", "web-1", "deploy"));
        assert!(!p.allows("alice", "web-1", "root"));
        assert!(!p.allows("alice", "web-2", "deploy"));
        assert!(!p.allows("bob", "web-1", "deploy"));
        assert!(!p.allows("alice", "nope", "deploy"));
    }

    #[test]
    fn strictest_limits_of_granting_roles_apply() {
        let u = AuthenticatedUser::for_tests("alice", &["web-deploy", "web-short"]);
        let a = policy_for(&u).authorize(&u, "web-1", "deploy").unwrap();
        assert_eq!(a.max_session(), Duration::from_secs(60));
        assert_eq!(a.idle_timeout(), Duration::from_secs(1800));
        // only web-short grants www, so only its limits apply
        let b = policy_for(&u).authorize(&u, "web-1", "www").unwrap();
        assert_eq!(b.idle_timeout(), Duration::ZERO);
    }

    #[test]
    fn the_most_recording_record_input_of_granting_roles_applies() {
        let quiet = AuthenticatedUser::for_tests("alice", &["web-quiet"]);
        let a = policy_for(&quiet)
            .authorize(&quiet, "web-1", "deploy")
            .unwrap();
        assert_eq!(a.record_input(), RecordInput::None);
        // web-deploy (default "exec") and web-quiet ("none"): "exec".
        let two = AuthenticatedUser::for_tests("alice", &["web-deploy", "web-quiet"]);
        let a = policy_for(&two).authorize(&two, "web-1", "deploy").unwrap();
        assert_eq!(a.record_input(), RecordInput::Exec);
        // Adding web-short ("all") records keystrokes too.
        let all = AuthenticatedUser::for_tests("alice", &["web-quiet", "web-deploy", "web-short"]);
        let a = policy_for(&all).authorize(&all, "web-1", "deploy").unwrap();
        assert_eq!(a.record_input(), RecordInput::All);
    }

    #[test]
    fn grants_list_targets_and_logins() {
        let u = AuthenticatedUser::for_tests("alice", &["web-deploy", "db"]);
        let g = policy_for(&u).grants(&u);
        assert_eq!(
            g,
            vec![
                Grant {
                    target: "db-1".into(),
                    logins: vec!["postgres".into()]
                },
                Grant {
                    target: "web-1".into(),
                    logins: vec!["deploy".into()]
                },
            ]
        );
    }

    #[test]
    fn env_patterns() {
        let u = AuthenticatedUser::for_tests("alice", &["web-deploy"]);
        let a = policy_for(&u).authorize(&u, "web-1", "deploy").unwrap();
        assert!(a.env_allowed("LANG") && a.env_allowed("LC_ALL") && a.env_allowed("TERM"));
        assert!(!a.env_allowed("LD_PRELOAD") && !a.env_allowed("LANGUAGE"));
    }
}
