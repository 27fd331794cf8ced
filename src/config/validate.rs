//! Raw configuration -> validated [`Settings`], with every error reported.
//!
//! `raw.rs` has already checked the shape of the file (keys, types, required
//! fields). This module checks meaning: socket addresses, target addresses,
//! OpenSSH keys, durations, names, duplicates and cross references (a role
//! must select at least one target, a user may only name defined roles, no two
//! users may share a key). It keeps going after a problem so that one run
//! reports all of them, each as `file:line:column: field.path: message`, and
//! it returns a [`Settings`] only when there were none: nothing downstream
//! ever sees a half-checked configuration.
//!
//! Messages quote short values (names, addresses, durations) so the operator
//! can find them, but never the raw file and never key material: a public key
//! is shown by its SHA-256 fingerprint at most, and something that looks like
//! a private key is called out without being echoed.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use russh::keys::{Algorithm, HashAlg, PublicKey};
use toml::Spanned;

use super::raw::{
    self, index_path, key_path, Diag, List, RawAuth, RawConfig, RawGateway, RawRole, RawSelector,
    RawTarget, RawUser, StringMap,
};
use super::{
    AuthSettings, ControlSettings, Gateway, MetricsSettings, RecordInput, Role, Settings, Target,
    TargetKind, TargetSelector, User,
};

mod anomaly;
mod db;
mod extra;
mod limits;
mod ops;
pub use extra::{in_range, parse_cidr, parse_recipient, parse_size};
pub use limits::MAX_DURATION;

const DEFAULT_MAX_CONNECTIONS: usize = 1024;
const DEFAULT_AUTH_TIMEOUT: Duration = Duration::from_secs(60);
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const DEFAULT_MAX_FAILURES: u32 = 5;
const DEFAULT_FAILURE_WINDOW: Duration = Duration::from_secs(10 * 60);
const DEFAULT_LOCKOUT: Duration = Duration::from_secs(15 * 60);
const DEFAULT_MFA_LEASE: Duration = Duration::from_secs(60 * 60);
const DEFAULT_MAX_SESSION: Duration = Duration::from_secs(8 * 60 * 60);
const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(30 * 60);
const DEFAULT_ALLOW_ENV: [&str; 3] = ["LANG", "LC_*", "TERM"];
const DEFAULT_SSH_PORT: u16 = 22;

/// Key types accepted for user keys and pinned host keys: the ones this build
/// of russh can verify signatures for (it is built without RSA support), so a
/// key that could never authenticate is refused here rather than at login.
const SUPPORTED_KEY_TYPES: &str =
    "ssh-ed25519, ecdsa-sha2-nistp256, ecdsa-sha2-nistp384, ecdsa-sha2-nistp521";

/// Longest role or target name accepted.
const MAX_OBJECT_NAME: usize = 128;
/// Longest user or login name accepted (the usual Unix limit).
const MAX_LOGIN_NAME: usize = 32;

/// One problem in the configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file the problem is in.
    pub file: PathBuf,
    /// 1-based line; 0 when the problem has no position (the file could not
    /// be read at all).
    pub line: usize,
    /// 1-based column, in characters; 0 when `line` is 0.
    pub column: usize,
    /// Field path such as `users[1].ssh_keys[0]`; empty for the whole file.
    pub path: String,
    /// What is wrong. Never contains key material or the raw file.
    pub message: String,
}

impl fmt::Display for ConfigError {
    /// `FILE:LINE:COL: PATH: MESSAGE`, leaving out `:LINE:COL` when there is
    /// no position and `PATH: ` when the path is empty.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if self.line > 0 {
            write!(f, ":{}:{}", self.line, self.column)?;
        }
        f.write_str(": ")?;
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        f.write_str(&self.message)
    }
}

impl std::error::Error for ConfigError {}

/// Every problem found in one configuration file, in file order. Never empty
/// when returned by [`load`] or [`load_str`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    /// One error per line, no trailing newline.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Reads and validates the configuration file at `path`.
///
/// A file that cannot be read is a single [`ConfigError`] naming the file,
/// without a position. Nothing is returned unless the whole file is valid.
///
/// # Errors
///
/// Every problem in the file (see [`load_str`]), or the read error.
pub fn load(path: &Path) -> Result<Settings, ConfigErrors> {
    match std::fs::read_to_string(path) {
        Ok(text) => load_str(&text, path),
        Err(e) => Err(ConfigErrors(vec![ConfigError {
            file: path.to_owned(),
            line: 0,
            column: 0,
            path: String::new(),
            message: format!("cannot read the configuration file: {e}"),
        }])),
    }
}

/// Validates configuration `text`; `source` names it in errors and in
/// [`Settings::source`].
///
/// Reports every problem at once (a TOML syntax error is reported alone, as
/// nothing after it can be trusted). Returns [`Settings`] only when there are
/// no problems at all.
///
/// # Errors
///
/// Every problem found, sorted by position; never an empty list.
pub fn load_str(text: &str, source: &Path) -> Result<Settings, ConfigErrors> {
    let lines = LineIndex::new(text);
    let diags = match raw::parse(text) {
        Err(diag) => vec![diag],
        Ok(doc) => {
            let mut diags = Vec::new();
            let raw = raw::read(&doc, &mut diags);
            let mut checker = Checker {
                lines: &lines,
                diags,
                warnings: Vec::new(),
                base_dir: source.parent().map(Path::to_path_buf).unwrap_or_default(),
            };
            let settings = checker.settings(&raw, source);
            match settings {
                Some(mut settings) if checker.diags.is_empty() => {
                    let warnings = std::mem::take(&mut checker.warnings);
                    settings.warnings = lines
                        .errors(warnings, source)
                        .0
                        .iter()
                        .map(ToString::to_string)
                        .collect();
                    return Ok(settings);
                }
                // Fail closed: a missing piece always comes with a reported
                // problem, but if that invariant ever broke, refuse the file.
                None if checker.diags.is_empty() => vec![Diag {
                    span: None,
                    path: String::new(),
                    message: "internal error: the configuration could not be assembled".into(),
                }],
                _ => checker.diags,
            }
        }
    };
    Err(lines.errors(diags, source))
}

/// Parses a duration such as `0s`, `30s`, `10m`, `1h`, `400d` or `1h30m`.
///
/// Units are `d`, `h`, `m` and `s`; a duration is one or more `<number><unit>`
/// parts with no spaces, largest unit first, each unit at most once. At most
/// [`MAX_DURATION`] (10 years): every duration is added to clocks at run
/// time, and a bound here means none of those can overflow.
///
/// # Errors
///
/// A message saying what is wrong (it may quote part of `s`).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    const HELP: &str = "write a number and a unit (s, m, h or d), e.g. `30s`, `10m` or `1h30m`";
    if s.is_empty() {
        return Err(format!("empty duration; {HELP}"));
    }
    let mut rest = s;
    let mut total: u64 = 0;
    let mut previous_rank: Option<u8> = None;
    while !rest.is_empty() {
        // `find` returns a char boundary, so the splits cannot panic.
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        let (number, after) = rest.split_at(digits);
        if number.is_empty() {
            return Err(format!("expected a number at `{rest}`; {HELP}"));
        }
        if after.starts_with(['.', ',']) {
            return Err(format!("fractions are not supported; {HELP}"));
        }
        let unit_len = after
            .find(|c: char| !c.is_ascii_alphabetic())
            .unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_len);
        let (seconds, rank) = match unit {
            "d" => (86_400, 0),
            "h" => (3_600, 1),
            "m" => (60, 2),
            "s" => (1, 3),
            "" => return Err(format!("missing unit after `{number}`; {HELP}")),
            other => return Err(format!("unknown unit `{other}`; {HELP}")),
        };
        if previous_rank.is_some_and(|previous| rank <= previous) {
            return Err(format!(
                "units must go from largest to smallest, each at most once; {HELP}"
            ));
        }
        previous_rank = Some(rank);
        let part = number
            .parse::<u64>()
            .ok()
            .and_then(|n| n.checked_mul(seconds));
        total = part
            .and_then(|part| total.checked_add(part))
            .ok_or_else(limits::too_long)?;
        rest = after;
    }
    let total = Duration::from_secs(total);
    if total > MAX_DURATION {
        return Err(limits::too_long());
    }
    Ok(total)
}

/// Byte offset -> 1-based line and column.
struct LineIndex<'t> {
    text: &'t str,
    /// Byte offset where each line starts.
    starts: Vec<usize>,
}

impl<'t> LineIndex<'t> {
    fn new(text: &'t str) -> Self {
        let starts = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        LineIndex { text, starts }
    }

    /// 1-based (line, column); the column counts characters.
    fn position(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let line = self.starts.partition_point(|&start| start <= offset).max(1);
        let start = self.starts.get(line - 1).copied().unwrap_or(0);
        let column = self
            .text
            .get(start..offset)
            .map_or(offset - start, |s| s.chars().count());
        (line, column + 1)
    }

    fn line(&self, span: &Range<usize>) -> usize {
        self.position(span.start).0
    }

    /// Turns located problems into [`ConfigErrors`], sorted by position.
    fn errors(&self, diags: Vec<Diag>, source: &Path) -> ConfigErrors {
        let mut errors: Vec<ConfigError> = diags
            .into_iter()
            .map(|diag| {
                let (line, column) = diag.span.map_or((0, 0), |span| self.position(span.start));
                ConfigError {
                    file: source.to_owned(),
                    line,
                    column,
                    path: diag.path,
                    message: diag.message,
                }
            })
            .collect();
        errors.sort_by_key(|e| (e.line, e.column));
        ConfigErrors(errors)
    }
}

/// What a target looks like to role selectors: taken from the raw file, so a
/// target with some other error still counts and one mistake does not also
/// produce "selects nothing" errors elsewhere.
struct KnownTarget<'a> {
    name: Option<&'a str>,
    labels: BTreeMap<&'a str, &'a str>,
}

/// Kinds of name, each with its own rule.
#[derive(Clone, Copy)]
enum NameKind {
    User,
    Login,
    Role,
    Target,
}

/// Walks the raw configuration, collecting problems in `diags`. Each check
/// returns `None` exactly when it (or `raw.rs`) recorded a problem.
struct Checker<'l, 't> {
    lines: &'l LineIndex<'t>,
    diags: Vec<Diag>,
    /// Valid but deprecated or unsafe settings (reported, not refused).
    warnings: Vec<Diag>,
    /// The configuration file's directory: relative paths (`tls_ca`) are
    /// resolved against it.
    base_dir: PathBuf,
}

impl Checker<'_, '_> {
    pub(super) fn error(
        &mut self,
        span: Range<usize>,
        path: impl Into<String>,
        message: impl Into<String>,
    ) {
        self.diags.push(Diag::new(span, path, message));
    }

    fn settings(&mut self, raw: &RawConfig, source: &Path) -> Option<Settings> {
        // A missing [gateway] was reported by raw.rs.
        let gateway = raw.gateway.as_ref().and_then(|g| self.gateway(g.get_ref()));
        let auth = match &raw.auth {
            Some(auth) => self.auth(auth.get_ref()),
            None => Some(AuthSettings {
                max_failures: DEFAULT_MAX_FAILURES,
                failure_window: DEFAULT_FAILURE_WINDOW,
                lockout: DEFAULT_LOCKOUT,
                mfa_lease: DEFAULT_MFA_LEASE,
                max_connection_age: limits::default_connection_age(DEFAULT_MFA_LEASE),
            }),
        };
        let known_targets = known_targets(&raw.targets);
        let targets = self.targets(&raw.targets);
        let role_names: HashSet<&str> = raw
            .roles
            .iter()
            .flatten()
            .filter_map(|r| r.get_ref().name.as_ref())
            .map(|n| n.get_ref().as_str())
            .collect();
        let roles = self.roles(&raw.roles, &known_targets);
        let users = self.users(&raw.users, &role_names);
        let state_dir = gateway.as_ref().map(|g| g.state_dir.clone());
        let recordings = raw
            .recordings
            .as_ref()
            .and_then(|r| self.recordings(r.get_ref(), state_dir.as_deref()));
        let wireguard = match &raw.wireguard {
            Some(w) => self.wireguard(w.get_ref()).map(Some),
            None => Some(None),
        };
        let mut users = users;
        let peers = self.wireguard_peers(
            &raw.users,
            wireguard.as_ref().and_then(|w| w.as_ref()),
            raw.wireguard.is_some(),
        );
        if let (Some(users), Some(peers)) = (users.as_mut(), peers) {
            for (user, devices) in users.iter_mut().zip(peers) {
                user.wireguard = devices;
            }
        } else {
            users = None;
        }
        let control = match &raw.control {
            Some(c) => self.control(c.get_ref()),
            None => Some(ControlSettings::default()),
        };
        let metrics = match &raw.metrics {
            Some(m) => self.metrics(m.get_ref()),
            None => Some(MetricsSettings::default()),
        };
        let anomaly = match &raw.anomaly {
            Some(a) => self.anomaly(a.get_ref()).map(Some),
            None => Some(None),
        };
        let tunnel_only_ok = self.tunnel_only(raw, gateway.as_ref(), users.as_deref());
        tunnel_only_ok?;
        Some(Settings {
            source: source.to_owned(),
            gateway: gateway?,
            auth: auth?,
            users: users?,
            roles: roles?,
            targets: targets?,
            recordings: recordings?,
            wireguard: wireguard?,
            control: control?,
            metrics: metrics?,
            anomaly: anomaly?,
            warnings: Vec::new(),
        })
    }

    fn gateway(&mut self, g: &RawGateway) -> Option<Gateway> {
        let state_dir = g.state_dir.as_ref().and_then(|dir| {
            if dir.get_ref().is_empty() {
                self.error(dir.span(), "gateway.state_dir", "must not be empty");
                None
            } else {
                Some(PathBuf::from(dir.get_ref()))
            }
        });
        let ssh_listen = g
            .ssh_listen
            .as_ref()
            .and_then(|list| self.listen_addresses(list));
        let max_connections = self.positive(
            g.max_connections.as_ref(),
            "gateway.max_connections",
            DEFAULT_MAX_CONNECTIONS,
        );
        let max_jumps_per_connection = self.positive(
            g.max_jumps_per_connection.as_ref(),
            "gateway.max_jumps_per_connection",
            crate::ssh::caps::DEFAULT_JUMPS_PER_CONNECTION,
        );
        let max_jumps_per_user = self.positive(
            g.max_jumps_per_user.as_ref(),
            "gateway.max_jumps_per_user",
            crate::ssh::caps::DEFAULT_JUMPS_PER_USER,
        );
        let max_channels_per_connection = self.positive(
            g.max_channels_per_connection.as_ref(),
            "gateway.max_channels_per_connection",
            crate::ssh::caps::DEFAULT_CHANNELS_PER_CONNECTION,
        );
        let auth_timeout = self.duration(
            g.auth_timeout.as_ref(),
            "gateway.auth_timeout",
            DEFAULT_AUTH_TIMEOUT,
            false,
        );
        let connect_timeout = self.duration(
            g.connect_timeout.as_ref(),
            "gateway.connect_timeout",
            DEFAULT_CONNECT_TIMEOUT,
            false,
        );
        let pre_auth = self.pre_auth(g);
        Some(Gateway {
            state_dir: state_dir?,
            ssh_listen: ssh_listen?,
            max_connections: max_connections?,
            max_jumps_per_connection: max_jumps_per_connection?,
            max_jumps_per_user: max_jumps_per_user?,
            max_channels_per_connection: max_channels_per_connection?,
            auth_timeout: auth_timeout?,
            connect_timeout: connect_timeout?,
            pre_auth: pre_auth?,
        })
    }

    fn listen_addresses(&mut self, list: &List<String>) -> Option<Vec<SocketAddr>> {
        const PATH: &str = "gateway.ssh_listen";
        // An empty list is valid with [wireguard]; see `tunnel_only`.
        let mut seen: HashMap<SocketAddr, usize> = HashMap::new();
        self.each(list, PATH, |c, item, path| {
            let Ok(addr) = item.get_ref().parse::<SocketAddr>() else {
                c.error(
                    item.span(),
                    path,
                    format!(
                        "`{}` is not a socket address; write IP:PORT, e.g. \"0.0.0.0:2222\" or \"[::1]:2222\"",
                        item.get_ref()
                    ),
                );
                return None;
            };
            if let Some(line) = seen.get(&addr) {
                c.error(item.span(), path, format!("`{addr}` is already listed on line {line}"));
                return None;
            }
            seen.insert(addr, c.lines.line(&item.span()));
            Some(addr)
        })
    }

    fn auth(&mut self, a: &RawAuth) -> Option<AuthSettings> {
        let max_failures = self.positive(
            a.max_failures.as_ref(),
            "auth.max_failures",
            DEFAULT_MAX_FAILURES,
        );
        let failure_window = self.duration(
            a.failure_window.as_ref(),
            "auth.failure_window",
            DEFAULT_FAILURE_WINDOW,
            false,
        );
        let lockout = self.duration(a.lockout.as_ref(), "auth.lockout", DEFAULT_LOCKOUT, false);
        // Zero disables the lease: database logins then always need a code.
        let mfa_lease = self.duration(
            a.mfa_lease.as_ref(),
            "auth.mfa_lease",
            DEFAULT_MFA_LEASE,
            true,
        );
        let max_connection_age = self.connection_age(a, mfa_lease);
        Some(AuthSettings {
            max_failures: max_failures?,
            failure_window: failure_window?,
            lockout: lockout?,
            mfa_lease: mfa_lease?,
            max_connection_age: max_connection_age?,
        })
    }

    fn targets(&mut self, raw: &[Option<Spanned<RawTarget>>]) -> Option<Vec<Target>> {
        self.unique_names(
            "target",
            raw.iter().enumerate().filter_map(|(i, t)| {
                let name = t.as_ref()?.get_ref().name.as_ref()?;
                Some((key_path(&index_path("targets", i), "name"), name))
            }),
        );
        self.unique_tunnel_ports(raw);
        let targets: Vec<Option<Target>> = raw
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let t = t.as_ref()?;
                self.target(&index_path("targets", i), t.get_ref(), t.span())
            })
            .collect();
        targets.into_iter().collect()
    }

    fn target(&mut self, base: &str, t: &RawTarget, span: Range<usize>) -> Option<Target> {
        let name = t
            .name
            .as_ref()
            .and_then(|n| self.name(n, &key_path(base, "name"), NameKind::Target));
        let kind = t
            .kind
            .as_ref()
            .and_then(|kind| match kind.get_ref().as_str() {
                "ssh" => Some(TargetKind::Ssh),
                "postgres" => Some(TargetKind::Postgres),
                "mysql" => Some(TargetKind::Mysql),
                other => {
                    self.error(
                        kind.span(),
                        key_path(base, "kind"),
                        format!(
                            "unknown target kind `{other}`; accepted kinds: ssh, postgres, mysql"
                        ),
                    );
                    None
                }
            });
        let default_port = kind.map_or(DEFAULT_SSH_PORT, TargetKind::standard_port);
        let address = t.address.as_ref().and_then(|address| {
            match parse_target_address(address.get_ref(), default_port) {
                Ok(host_port) => Some(host_port),
                Err(message) => {
                    self.error(address.span(), key_path(base, "address"), message);
                    None
                }
            }
        });
        if let Some(kind) = kind {
            self.kind_keys(base, t, kind);
        }
        let host_keys = match (&t.host_keys, kind) {
            // Refused on a database target by `kind_keys`.
            (Some(_), Some(k)) if k.is_database() => None,
            (None, _) => Some(Vec::new()),
            (Some(list), _) => self.each(list, &key_path(base, "host_keys"), |c, key, path| {
                c.public_key(key, path)
            }),
        };
        let db = match kind {
            Some(k) if k.is_database() => {
                let host = address.as_ref().map(|(host, _)| host.as_str());
                self.db_target(base, t, span, host, k).map(Some)
            }
            // Database keys on an SSH target were refused by `kind_keys`.
            _ => Some(None),
        };
        let labels = match &t.labels {
            None => Some(BTreeMap::new()),
            Some(map) => self.labels(map, &key_path(base, "labels")),
        };
        let (host, port) = address?;
        Some(Target {
            name: name?,
            kind: kind?,
            host,
            port,
            host_keys: host_keys?,
            labels: labels?,
            db: db?,
        })
    }

    fn roles(
        &mut self,
        raw: &[Option<Spanned<RawRole>>],
        known: &[KnownTarget<'_>],
    ) -> Option<Vec<Role>> {
        self.unique_names(
            "role",
            raw.iter().enumerate().filter_map(|(i, r)| {
                let name = r.as_ref()?.get_ref().name.as_ref()?;
                Some((key_path(&index_path("roles", i), "name"), name))
            }),
        );
        let roles: Vec<Option<Role>> = raw
            .iter()
            .enumerate()
            .map(|(i, r)| self.role(&index_path("roles", i), r.as_ref()?.get_ref(), known))
            .collect();
        roles.into_iter().collect()
    }

    fn role(&mut self, base: &str, r: &RawRole, known: &[KnownTarget<'_>]) -> Option<Role> {
        let name = r
            .name
            .as_ref()
            .and_then(|n| self.name(n, &key_path(base, "name"), NameKind::Role));
        let targets = r
            .targets
            .as_ref()
            .and_then(|s| self.selector(s, &key_path(base, "targets"), known));
        let logins = r.logins.as_ref().and_then(|list| {
            let path = key_path(base, "logins");
            if list.get_ref().is_empty() {
                self.error(list.span(), path, "must list at least one login name");
                return None;
            }
            self.each(list, &path, |c, login, path| {
                c.name(login, &path, NameKind::Login)
            })
        });
        let max_session = self.duration(
            r.max_session.as_ref(),
            &key_path(base, "max_session"),
            DEFAULT_MAX_SESSION,
            false,
        );
        // Zero disables the idle timeout.
        let idle_timeout = self.duration(
            r.idle_timeout.as_ref(),
            &key_path(base, "idle_timeout"),
            DEFAULT_IDLE_TIMEOUT,
            true,
        );
        let allow_env = match &r.allow_env {
            None => Some(DEFAULT_ALLOW_ENV.iter().map(ToString::to_string).collect()),
            Some(list) => self.each(list, &key_path(base, "allow_env"), |c, pattern, path| {
                match check_env_pattern(pattern.get_ref()) {
                    Ok(()) => Some(pattern.get_ref().clone()),
                    Err(message) => {
                        c.error(pattern.span(), path, message);
                        None
                    }
                }
            }),
        };
        let record_input =
            self.record_input(r.record_input.as_ref(), &key_path(base, "record_input"));
        let allow_options = r.allow_options.as_ref().is_some_and(|b| *b.get_ref());
        let announce_watch = r.announce_watch.as_ref().is_some_and(|b| *b.get_ref());
        Some(Role {
            name: name?,
            targets: targets?,
            logins: logins?,
            max_session: max_session?,
            idle_timeout: idle_timeout?,
            allow_env: allow_env?,
            record_input: record_input?,
            allow_options,
            announce_watch,
        })
    }

    /// `roles[].record_input`: `"none"`, `"exec"` (default) or `"all"`. The
    /// boolean of older configurations still loads, with a warning: `true`
    /// meant "record what the user types" and becomes `"all"`; `false` meant
    /// "record no input" and becomes `"none"` (which records less than the
    /// new default: the warning says so).
    fn record_input(
        &mut self,
        value: Option<&Spanned<raw::RawRecordInput>>,
        path: &str,
    ) -> Option<RecordInput> {
        let Some(value) = value else {
            return Some(RecordInput::default());
        };
        match value.get_ref() {
            raw::RawRecordInput::Mode(s) => match RecordInput::parse(s) {
                Some(m) => Some(m),
                None => {
                    self.error(
                        value.span(),
                        path.to_string(),
                        "must be \"none\", \"exec\" or \"all\"",
                    );
                    None
                }
            },
            raw::RawRecordInput::Legacy(b) => {
                let (mode, meaning) = if *b {
                    (
                        RecordInput::All,
                        "input in every session, keystrokes in a PTY included",
                    )
                } else {
                    (RecordInput::None, "no input, not even the stdin of commands without a PTY (the default \"exec\" records that)")
                };
                self.warnings.push(Diag {
                    span: Some(value.span()),
                    path: path.to_string(),
                    message: format!(
                        "the boolean form is deprecated: {b} is read as record_input = \"{}\" ({meaning}); write \"none\", \"exec\" or \"all\"",
                        mode.as_str()
                    ),
                });
                Some(mode)
            }
        }
    }

    /// `roles[].targets`: exactly one of `labels` / `names`, and it must
    /// select at least one defined target.
    fn selector(
        &mut self,
        s: &Spanned<RawSelector>,
        path: &str,
        known: &[KnownTarget<'_>],
    ) -> Option<TargetSelector> {
        match (&s.get_ref().labels, &s.get_ref().names) {
            (Some(_), Some(_)) | (None, None) => {
                self.error(
                    s.span(),
                    path,
                    "set exactly one of `labels` or `names`, e.g. { names = [\"web-1\"] }",
                );
                None
            }
            (Some(labels), None) => {
                let path = key_path(path, "labels");
                let map = self.labels(labels, &path)?;
                if map.is_empty() {
                    self.error(
                        labels.span(),
                        path,
                        "must not be empty (it would select every target); name at least one label",
                    );
                    return None;
                }
                let selects_some = known.iter().any(|t| {
                    map.iter()
                        .all(|(k, v)| t.labels.get(k.as_str()) == Some(&v.as_str()))
                });
                if !selects_some {
                    let wanted: Vec<String> =
                        map.iter().map(|(k, v)| format!("{k} = {v:?}")).collect();
                    self.error(
                        labels.span(),
                        path,
                        format!(
                            "selects no target: no target has all of {}",
                            wanted.join(", ")
                        ),
                    );
                    return None;
                }
                Some(TargetSelector::Labels(map))
            }
            (None, Some(names)) => {
                let path = key_path(path, "names");
                if names.get_ref().is_empty() {
                    self.error(
                        names.span(),
                        path,
                        "selects no target: name at least one target",
                    );
                    return None;
                }
                let names = self.each(names, &path, |c, name, path| {
                    let name = name_if_known(c, name, path, known)?;
                    Some(name.to_owned())
                })?;
                Some(TargetSelector::Names(names))
            }
        }
    }

    fn users(
        &mut self,
        raw: &[Option<Spanned<RawUser>>],
        roles: &HashSet<&str>,
    ) -> Option<Vec<User>> {
        self.unique_names(
            "user",
            raw.iter().enumerate().filter_map(|(i, u)| {
                let name = u.as_ref()?.get_ref().name.as_ref()?;
                Some((key_path(&index_path("users", i), "name"), name))
            }),
        );
        // Key fingerprint -> (user index, user name, line) of its first use.
        let mut key_owners: HashMap<String, (usize, String, usize)> = HashMap::new();
        let users: Vec<Option<User>> = raw
            .iter()
            .enumerate()
            .map(|(i, u)| self.user(i, u.as_ref()?.get_ref(), roles, &mut key_owners))
            .collect();
        users.into_iter().collect()
    }

    fn user(
        &mut self,
        index: usize,
        u: &RawUser,
        roles: &HashSet<&str>,
        key_owners: &mut HashMap<String, (usize, String, usize)>,
    ) -> Option<User> {
        let base = index_path("users", index);
        let name = u
            .name
            .as_ref()
            .and_then(|n| self.name(n, &key_path(&base, "name"), NameKind::User));
        let display_name = u
            .name
            .as_ref()
            .map_or_else(|| base.clone(), |n| n.get_ref().clone());
        let user_roles = match &u.roles {
            None => Some(Vec::new()),
            Some(list) => self.each(list, &key_path(&base, "roles"), |c, role, path| {
                if roles.contains(role.get_ref().as_str()) {
                    Some(role.get_ref().clone())
                } else {
                    c.error(
                        role.span(),
                        path,
                        format!("role `{}` is not defined in [[roles]]", role.get_ref()),
                    );
                    None
                }
            }),
        };
        let ssh_keys = u.ssh_keys.as_ref().and_then(|list| {
            let path = key_path(&base, "ssh_keys");
            if list.get_ref().is_empty() {
                self.error(list.span(), path, "must list at least one OpenSSH public key");
                return None;
            }
            self.each(list, &path, |c, line, path| {
                let key = c.public_key(line, path.clone())?;
                let fingerprint = key.fingerprint(HashAlg::Sha256).to_string();
                match key_owners.get(&fingerprint) {
                    Some((owner, _, first)) if *owner == index => {
                        c.error(
                            line.span(),
                            path,
                            format!("key {fingerprint} is listed twice for this user (first on line {first})"),
                        );
                        None
                    }
                    Some((_, owner_name, first)) => {
                        c.error(
                            line.span(),
                            path,
                            format!(
                                "key {fingerprint} of user `{display_name}` is also a key of user `{owner_name}` (line {first}); two users must never share a key"
                            ),
                        );
                        None
                    }
                    None => {
                        let at = c.lines.line(&line.span());
                        key_owners.insert(fingerprint, (index, display_name.clone(), at));
                        Some(key)
                    }
                }
            })
        });
        Some(User {
            name: name?,
            roles: user_roles?,
            ssh_keys: ssh_keys?,
            // Checked against [wireguard] as a whole in `extra.rs`.
            wireguard: Vec::new(),
            // Checked against [wireguard] in `limits.rs`.
            require_wireguard: u.require_wireguard.as_ref().is_some_and(|b| *b.get_ref()),
        })
    }

    // ---- shared checks ----

    /// Runs `check` on every element of `list`, reporting all problems;
    /// `Some` only if every element passed.
    fn each<T, U>(
        &mut self,
        list: &List<T>,
        path: &str,
        mut check: impl FnMut(&mut Self, &Spanned<T>, String) -> Option<U>,
    ) -> Option<Vec<U>> {
        let mut out = Vec::with_capacity(list.get_ref().len());
        let mut all_ok = true;
        for (i, item) in list.get_ref().iter().enumerate() {
            // `None` elements had the wrong type, already reported.
            match item
                .as_ref()
                .and_then(|item| check(self, item, index_path(path, i)))
            {
                Some(value) => out.push(value),
                None => all_ok = false,
            }
        }
        all_ok.then_some(out)
    }

    /// Reports every name after the first that repeats an earlier one.
    fn unique_names<'a>(
        &mut self,
        what: &str,
        names: impl Iterator<Item = (String, &'a Spanned<String>)>,
    ) {
        let mut first_line: HashMap<&'a str, usize> = HashMap::new();
        for (path, name) in names {
            if let Some(line) = first_line.get(name.get_ref().as_str()) {
                let message = format!(
                    "duplicate {what} name `{}` (first defined on line {line})",
                    name.get_ref()
                );
                self.error(name.span(), path, message);
            } else {
                first_line.insert(name.get_ref(), self.lines.line(&name.span()));
            }
        }
    }

    fn name(&mut self, name: &Spanned<String>, path: &str, kind: NameKind) -> Option<String> {
        match check_name(name.get_ref(), kind) {
            Ok(()) => Some(name.get_ref().clone()),
            Err(message) => {
                self.error(name.span(), path, message);
                None
            }
        }
    }

    fn positive<T: TryFrom<i64>>(
        &mut self,
        value: Option<&Spanned<i64>>,
        path: &str,
        default: T,
    ) -> Option<T> {
        let Some(value) = value else {
            return Some(default);
        };
        if *value.get_ref() <= 0 {
            self.error(value.span(), path, "must be greater than zero");
            return None;
        }
        match T::try_from(*value.get_ref()) {
            Ok(v) => Some(v),
            Err(_) => {
                self.error(value.span(), path, "is too large");
                None
            }
        }
    }

    fn duration(
        &mut self,
        value: Option<&Spanned<String>>,
        path: &str,
        default: Duration,
        zero_allowed: bool,
    ) -> Option<Duration> {
        let Some(value) = value else {
            return Some(default);
        };
        match parse_duration(value.get_ref()) {
            Ok(d) if d.is_zero() && !zero_allowed => {
                self.error(value.span(), path, "must be greater than zero");
                None
            }
            Ok(d) => Some(d),
            Err(message) => {
                self.error(value.span(), path, format!("invalid duration: {message}"));
                None
            }
        }
    }

    /// An OpenSSH public key line, of a type this build can verify. Errors
    /// show at most the key's fingerprint, never its text.
    fn public_key(&mut self, line: &Spanned<String>, path: String) -> Option<PublicKey> {
        let text = line.get_ref().trim();
        if text.contains("PRIVATE KEY") {
            self.error(
                line.span(),
                path,
                "this is a private key, not a public key: remove it from the file and treat it as compromised",
            );
            return None;
        }
        match PublicKey::from_openssh(text) {
            Err(e) => {
                self.error(
                    line.span(),
                    path,
                    format!("not a valid OpenSSH public key ({e}); expected a line like \"ssh-ed25519 AAAA... comment\""),
                );
                None
            }
            Ok(key)
                if !matches!(
                    key.algorithm(),
                    Algorithm::Ed25519 | Algorithm::Ecdsa { .. }
                ) =>
            {
                self.error(
                    line.span(),
                    path,
                    format!(
                        "key type `{}` is not supported; use one of: {SUPPORTED_KEY_TYPES}",
                        key.algorithm()
                    ),
                );
                None
            }
            Ok(key) => Some(key),
        }
    }

    /// A string -> string label table; label names must not be empty.
    fn labels(&mut self, map: &StringMap, path: &str) -> Option<BTreeMap<String, String>> {
        let mut out = BTreeMap::new();
        let mut all_ok = true;
        for (key, value) in map.get_ref() {
            let Some(value) = value else {
                all_ok = false;
                continue;
            };
            if key.get_ref().is_empty() {
                self.error(
                    key.span(),
                    key_path(path, key.get_ref()),
                    "label names must not be empty",
                );
                all_ok = false;
                continue;
            }
            out.insert(key.get_ref().clone(), value.get_ref().clone());
        }
        all_ok.then_some(out)
    }
}

/// Reports `name` unless some target (valid or not) is called that.
fn name_if_known<'n>(
    checker: &mut Checker<'_, '_>,
    name: &'n Spanned<String>,
    path: String,
    known: &[KnownTarget<'_>],
) -> Option<&'n str> {
    if known
        .iter()
        .any(|t| t.name == Some(name.get_ref().as_str()))
    {
        Some(name.get_ref())
    } else {
        checker.error(
            name.span(),
            path,
            format!(
                "no target named `{}` is defined in [[targets]]",
                name.get_ref()
            ),
        );
        None
    }
}

fn known_targets(raw: &[Option<Spanned<RawTarget>>]) -> Vec<KnownTarget<'_>> {
    raw.iter()
        .flatten()
        .map(|t| {
            let t = t.get_ref();
            let labels = t
                .labels
                .iter()
                .flat_map(|map| map.get_ref().iter())
                .filter_map(|(k, v)| Some((k.get_ref().as_str(), v.as_ref()?.get_ref().as_str())))
                .collect();
            KnownTarget {
                name: t.name.as_ref().map(|n| n.get_ref().as_str()),
                labels,
            }
        })
        .collect()
}

fn check_name(name: &str, kind: NameKind) -> Result<(), String> {
    let (ok, rule) = match kind {
        NameKind::User => (
            is_login_like(name, false),
            "user names must start with a-z or `_`, continue with a-z, 0-9, `_`, `.` or `-`, and be at most 32 characters",
        ),
        NameKind::Login => (
            is_login_like(name, true),
            "login names must start with a letter or `_`, continue with letters, digits, `_`, `.` or `-`, and be at most 32 characters",
        ),
        NameKind::Role => (
            is_object_name(name),
            "role names must be 1 to 128 letters, digits, `.`, `-` or `_`",
        ),
        NameKind::Target => (
            is_object_name(name),
            "target names must be 1 to 128 letters, digits, `.`, `-` or `_`",
        ),
    };
    if ok {
        Ok(())
    } else {
        Err(format!("invalid name `{name}`: {rule}"))
    }
}

/// `[a-z_][a-z0-9_.-]*` (uppercase letters too if `upper`), at most 32 chars.
fn is_login_like(name: &str, upper: bool) -> bool {
    let letter = |c: char| c.is_ascii_lowercase() || (upper && c.is_ascii_uppercase());
    let mut chars = name.chars();
    let Some(first) = chars.next() else {
        return false;
    };
    name.len() <= MAX_LOGIN_NAME
        && (letter(first) || first == '_')
        && chars.all(|c| letter(c) || c.is_ascii_digit() || matches!(c, '_' | '.' | '-'))
}

fn is_object_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_OBJECT_NAME
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
}

/// An environment variable name, or a prefix of one followed by `*`.
fn check_env_pattern(pattern: &str) -> Result<(), String> {
    let name = pattern.strip_suffix('*').unwrap_or(pattern);
    if name.is_empty() {
        return Err("a bare `*` would pass every variable (LD_PRELOAD too); list names or prefixes such as \"LC_*\"".into());
    }
    let mut chars = name.chars();
    let valid = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    if valid {
        Ok(())
    } else {
        Err(format!(
            "`{pattern}` is not an environment variable name (letters, digits, `_`) with an optional trailing `*`"
        ))
    }
}

/// `host:port`, `host`, `[v6]:port` or `[v6]`; the port defaults to
/// `default_port` (22 for SSH, 5432 for PostgreSQL) and the host may be an
/// IPv4 literal, a bracketed IPv6 literal or a DNS name. Returns the host
/// without brackets.
fn parse_target_address(address: &str, default_port: u16) -> Result<(String, u16), String> {
    let help = format!("write \"host:port\", \"host\" (port {default_port}) or \"[IPv6]:port\"");

    if let Some(rest) = address.strip_prefix('[') {
        let Some((host, after)) = rest.split_once(']') else {
            return Err(format!("missing `]` after the IPv6 address; {help}"));
        };
        let ip: Ipv6Addr = host
            .parse()
            .map_err(|_| format!("`{host}` is not an IPv6 address; {help}"))?;
        let port = match after {
            "" => default_port,
            _ => match after.strip_prefix(':') {
                Some(port) => parse_port(port)?,
                None => return Err(format!("unexpected text after `]`; {help}")),
            },
        };
        return Ok((ip.to_string(), port));
    }
    let (host, port) = match address.split_once(':') {
        Some((host, port)) if !port.contains(':') => (host, parse_port(port)?),
        Some(_) => {
            return Err(format!(
                "an IPv6 address must be in brackets, e.g. \"[2001:db8::1]:22\"; {help}"
            ))
        }
        None => (address, default_port),
    };
    if host.is_empty() {
        return Err(format!("the host is missing; {help}"));
    }
    if host.chars().all(|c| c.is_ascii_digit() || c == '.') {
        return match host.parse::<Ipv4Addr>() {
            Ok(_) => Ok((host.to_owned(), port)),
            Err(_) => Err(format!("`{host}` is not a valid IPv4 address")),
        };
    }
    if !is_dns_name(host) {
        return Err(format!(
            "`{host}` is not a valid host name or IP address; {help}"
        ));
    }
    Ok((host.to_owned(), port))
}

fn parse_port(port: &str) -> Result<u16, String> {
    match port.parse::<u16>() {
        Ok(0) | Err(_) => Err(format!("`{port}` is not a port number (1-65535)")),
        Ok(port) => Ok(port),
    }
}

/// Letters, digits, `-` and `_` in dot-separated labels of 1-63 characters
/// that do not start or end with `-`; at most 253 characters, optional
/// trailing dot.
fn is_dns_name(host: &str) -> bool {
    let host = host.strip_suffix('.').unwrap_or(host);
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh Ed25519 public key line, as `ssh-keygen` would write it.
    fn new_key(comment: &str) -> String {
        let mut key = russh::keys::PrivateKey::random(&mut rand::rng(), Algorithm::Ed25519)
            .expect("generate key");
        key.set_comment(comment);
        key.public_key().to_openssh().expect("encode key")
    }

    /// Every config needs `[recordings]`; tests that are not about it get a
    /// valid one appended (at the end, so no position before it moves).
    fn with_recordings(text: &str) -> String {
        if text.contains("[recordings]") {
            return text.to_string();
        }
        format!(
            "{text}\n[recordings]\nrecipients = [\"age1zvkyg2lqzraa2lnjvqej32nkuu0ues2s82hzrye869xeexvn73equnujwj\"]\n"
        )
    }

    fn errors(text: &str) -> Vec<ConfigError> {
        let text = &with_recordings(text);
        match load_str(text, Path::new("gatehouse.toml")) {
            Ok(_) => panic!("expected errors for:\n{text}"),
            Err(ConfigErrors(errors)) => {
                assert!(!errors.is_empty());
                errors
            }
        }
    }

    fn settings(text: &str) -> Settings {
        let text = &with_recordings(text);
        match load_str(text, Path::new("gatehouse.toml")) {
            Ok(settings) => settings,
            Err(errors) => panic!("unexpected errors:\n{errors}"),
        }
    }

    /// The error at `path`, failing with the full list if there is none.
    fn at<'e>(errors: &'e [ConfigError], path: &str) -> &'e ConfigError {
        errors.iter().find(|e| e.path == path).unwrap_or_else(|| {
            panic!(
                "no error at {path}; got:\n{}",
                ConfigErrors(errors.to_vec())
            )
        })
    }

    /// 1-based (line, column) of the `nth` (0-based) occurrence of `needle`.
    fn pos(text: &str, needle: &str, nth: usize) -> (usize, usize) {
        let offset = text
            .match_indices(needle)
            .nth(nth)
            .unwrap_or_else(|| panic!("`{needle}` not in text"))
            .0;
        let before = &text[..offset];
        let line = before.matches('\n').count() + 1;
        let column = before.rsplit('\n').next().unwrap_or("").chars().count() + 1;
        (line, column)
    }

    fn line_col(e: &ConfigError) -> (usize, usize) {
        (e.line, e.column)
    }

    /// A small valid configuration to break in one place per test.
    fn minimal(user_key: &str) -> String {
        format!(
            r#"[gateway]
state_dir = "/var/lib/gatehouse"
ssh_listen = ["127.0.0.1:2222"]

[[targets]]
name = "web-1"
kind = "ssh"
address = "10.0.1.10"
labels = {{ env = "production", tier = "web" }}

[[roles]]
name = "web"
targets = {{ names = ["web-1"] }}
logins = ["deploy"]

[[users]]
name = "alice"
roles = ["web"]
ssh_keys = ["{user_key}"]
"#
        )
    }

    #[test]
    fn full_valid_config_parses_with_the_right_values() {
        let alice = new_key("alice@laptop");
        let alice2 = new_key("");
        let bob = new_key("bob@desk");
        let host = new_key("root@web-1");
        // A host key without its comment, as ssh-keyscan prints it.
        let host_bare = host.rsplit_once(' ').expect("comment").0.to_owned();
        let text = format!(
            r#"# gatehouse test configuration
[gateway]
state_dir = "/var/lib/gatehouse"
ssh_listen = ["0.0.0.0:2222", "[::1]:2223"]
max_connections = 50
auth_timeout = "30s"
connect_timeout = "5s"

[auth]
max_failures = 3
failure_window = "5m"
lockout = "1h"
mfa_lease = "0s"

[[users]]
name = "alice"
roles = ["web-deploy", "db-read"]
ssh_keys = ["{alice}", "{alice2}"]

[[users]]
name = "bob_2"
roles = ["db-read"]
ssh_keys = ["{bob}"]

[[roles]]
name = "web-deploy"
targets = {{ labels = {{ env = "production", tier = "web" }} }}
logins = ["deploy", "www-data"]
max_session = "4h"
idle_timeout = "0s"
allow_env = ["LANG", "GIT_*"]

[[roles]]
name = "db-read"
targets = {{ names = ["db-1", "web-1"] }}
logins = ["postgres"]

[[targets]]
name = "web-1"
kind = "ssh"
address = "10.0.1.10:2200"
host_keys = ["{host}", "{host_bare}"]
labels = {{ env = "production", tier = "web" }}

[[targets]]
name = "db-1"
kind = "ssh"
address = "db-1.internal.example"
labels = {{ env = "production" }}

[[targets]]
name = "v6"
kind = "ssh"
address = "[2001:db8::7]:22022"
"#
        );
        let s = settings(&text);
        assert_eq!(s.source, Path::new("gatehouse.toml"));

        assert_eq!(s.gateway.state_dir, Path::new("/var/lib/gatehouse"));
        let listen: Vec<SocketAddr> = vec![
            "0.0.0.0:2222".parse().expect("addr"),
            "[::1]:2223".parse().expect("addr"),
        ];
        assert_eq!(s.gateway.ssh_listen, listen);
        assert_eq!(s.gateway.max_connections, 50);
        assert_eq!(s.gateway.auth_timeout, Duration::from_secs(30));
        assert_eq!(s.gateway.connect_timeout, Duration::from_secs(5));

        assert_eq!(s.auth.max_failures, 3);
        assert_eq!(s.auth.failure_window, Duration::from_secs(300));
        assert_eq!(s.auth.lockout, Duration::from_secs(3600));
        assert_eq!(s.auth.mfa_lease, Duration::ZERO);

        assert_eq!(s.users.len(), 2);
        assert_eq!(s.users[0].name, "alice");
        assert_eq!(s.users[0].roles, ["web-deploy", "db-read"]);
        assert_eq!(s.users[0].ssh_keys.len(), 2);
        assert_eq!(
            s.users[0].ssh_keys[0].key_data(),
            PublicKey::from_openssh(&alice).expect("key").key_data()
        );
        assert_eq!(s.users[1].name, "bob_2");
        assert_eq!(s.users[1].ssh_keys.len(), 1);

        assert_eq!(s.roles.len(), 2);
        let web = &s.roles[0];
        assert_eq!(web.name, "web-deploy");
        let labels: BTreeMap<String, String> = [("env", "production"), ("tier", "web")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(web.targets, TargetSelector::Labels(labels.clone()));
        assert_eq!(web.logins, ["deploy", "www-data"]);
        assert_eq!(web.max_session, Duration::from_secs(4 * 3600));
        assert_eq!(web.idle_timeout, Duration::ZERO);
        assert_eq!(web.allow_env, ["LANG", "GIT_*"]);
        let db = &s.roles[1];
        assert_eq!(
            db.targets,
            TargetSelector::Names(vec!["db-1".into(), "web-1".into()])
        );
        assert_eq!(db.max_session, Duration::from_secs(8 * 3600));
        assert_eq!(db.idle_timeout, Duration::from_secs(30 * 60));
        assert_eq!(db.allow_env, ["LANG", "LC_*", "TERM"]);

        assert_eq!(s.targets.len(), 3);
        let web1 = &s.targets[0];
        assert_eq!(web1.name, "web-1");
        assert_eq!(web1.kind, TargetKind::Ssh);
        assert_eq!((web1.host.as_str(), web1.port), ("10.0.1.10", 2200));
        assert_eq!(web1.host_keys.len(), 2);
        assert_eq!(web1.host_keys[0].key_data(), web1.host_keys[1].key_data());
        assert_eq!(web1.labels, labels);
        let db1 = &s.targets[1];
        assert_eq!((db1.host.as_str(), db1.port), ("db-1.internal.example", 22));
        assert!(db1.host_keys.is_empty());
        let v6 = &s.targets[2];
        assert_eq!((v6.host.as_str(), v6.port), ("2001:db8::7", 22022));
        assert!(v6.labels.is_empty());
    }

    #[test]
    fn defaults_apply_when_optional_fields_are_absent() {
        let s = settings(&minimal(&new_key("alice")));
        assert_eq!(s.gateway.max_connections, 1024);
        assert_eq!(s.gateway.auth_timeout, Duration::from_secs(60));
        assert_eq!(s.gateway.connect_timeout, Duration::from_secs(10));
        assert_eq!(s.auth.max_failures, 5);
        assert_eq!(s.auth.failure_window, Duration::from_secs(10 * 60));
        assert_eq!(s.auth.lockout, Duration::from_secs(15 * 60));
        assert_eq!(s.auth.mfa_lease, Duration::from_secs(3600));
        assert_eq!(s.roles[0].max_session, Duration::from_secs(8 * 3600));
        assert_eq!(s.roles[0].idle_timeout, Duration::from_secs(30 * 60));
        assert_eq!(s.roles[0].allow_env, ["LANG", "LC_*", "TERM"]);
        assert_eq!(s.targets[0].port, 22);
        assert!(s.targets[0].host_keys.is_empty());

        // An empty [auth] table gets the same defaults.
        let text = minimal(&new_key("alice")).replace("[[targets]]", "[auth]\n\n[[targets]]");
        let s = settings(&text);
        assert_eq!(s.auth.max_failures, 5);
        assert_eq!(s.auth.mfa_lease, Duration::from_secs(3600));
    }

    #[test]
    fn every_unknown_key_is_reported_with_its_position() {
        let key = new_key("alice");
        let text = format!(
            r#"[gateway]
state_dir = "/var/lib/gatehouse"
ssh_listen = ["127.0.0.1:2222"]
  listen_backlog = 5

[[users]]
name = "alice"
ssh_keys = ["{key}"]
   password = "x"
shell = "/bin/sh"
"#
        );
        let errors = errors(&text);
        assert_eq!(errors.len(), 3, "{}", ConfigErrors(errors.clone()));
        let backlog = at(&errors, "gateway.listen_backlog");
        assert_eq!(line_col(backlog), (4, 3));
        assert!(backlog.message.contains("unknown key"));
        assert!(
            backlog.message.contains("ssh_listen"),
            "lists the known keys"
        );
        assert_eq!(line_col(at(&errors, "users[0].password")), (9, 4));
        assert_eq!(line_col(at(&errors, "users[0].shell")), (10, 1));
        assert_eq!(
            backlog.to_string(),
            "gatehouse.toml:4:3: gateway.listen_backlog: unknown key; expected one of: \
             state_dir, ssh_listen, max_connections, max_jumps_per_connection, \
             max_jumps_per_user, max_channels_per_connection, auth_timeout, connect_timeout, \
             max_startups, max_startups_per_source"
        );
    }

    #[test]
    fn unknown_keys_are_found_at_every_level() {
        let text = minimal(&new_key("alice"))
            .replace("[gateway]", "colour = \"blue\"\n[gateway]")
            .replace(
                "{ names = [\"web-1\"] }",
                "{ names = [\"web-1\"], all = true }",
            )
            .replace("kind = \"ssh\"", "kind = \"ssh\"\nport = 22");
        let errors = errors(&text);
        assert_eq!(errors.len(), 3, "{}", ConfigErrors(errors.clone()));
        assert_eq!(line_col(at(&errors, "colour")), (1, 1));
        assert_eq!(
            line_col(at(&errors, "targets[0].port")),
            pos(&text, "port", 0)
        );
        assert_eq!(
            line_col(at(&errors, "roles[0].targets.all")),
            pos(&text, "all =", 0)
        );
    }

    #[test]
    fn duplicate_target_names_point_at_the_second_and_name_the_first_line() {
        let text = minimal(&new_key("alice")).replace(
            "[[roles]]",
            "[[targets]]\nname = \"web-1\"\nkind = \"ssh\"\naddress = \"10.0.1.11\"\n\n[[roles]]",
        );
        let errors = errors(&text);
        assert_eq!(errors.len(), 1, "{}", ConfigErrors(errors.clone()));
        let e = at(&errors, "targets[1].name");
        assert_eq!(line_col(e), pos(&text, "\"web-1\"", 1));
        let first_line = pos(&text, "\"web-1\"", 0).0;
        assert!(
            e.message
                .contains(&format!("first defined on line {first_line}")),
            "{e}"
        );
    }

    #[test]
    fn duplicate_user_and_role_names_are_reported() {
        let text = minimal(&new_key("alice"))
            + "\n[[users]]\nname = \"alice\"\nssh_keys = [\""
            + &new_key("other")
            + "\"]\n\n[[roles]]\nname = \"web\"\ntargets = { names = [\"web-1\"] }\nlogins = [\"x\"]\n";
        let errors = errors(&text);
        assert_eq!(errors.len(), 2, "{}", ConfigErrors(errors.clone()));
        assert_eq!(
            line_col(at(&errors, "users[1].name")),
            pos(&text, "\"alice\"", 1)
        );
        assert_eq!(
            line_col(at(&errors, "roles[1].name")),
            pos(&text, "\"web\"", 3)
        );
    }

    #[test]
    fn a_user_naming_an_undefined_role_is_refused() {
        let text =
            minimal(&new_key("alice")).replace("roles = [\"web\"]", "roles = [\"web\", \"admin\"]");
        let errors = errors(&text);
        assert_eq!(errors.len(), 1, "{}", ConfigErrors(errors.clone()));
        let e = at(&errors, "users[0].roles[1]");
        assert_eq!(line_col(e), pos(&text, "\"admin\"", 0));
        assert!(e.message.contains("role `admin` is not defined"), "{e}");
    }

    #[test]
    fn a_role_whose_labels_select_no_target_is_refused() {
        let text = minimal(&new_key("alice")).replace(
            "{ names = [\"web-1\"] }",
            "{ labels = { env = \"staging\", tier = \"web\" } }",
        );
        let errors = errors(&text);
        assert_eq!(errors.len(), 1, "{}", ConfigErrors(errors.clone()));
        let e = at(&errors, "roles[0].targets.labels");
        assert_eq!(line_col(e), pos(&text, "{ env = \"staging\"", 0));
        assert!(e.message.contains("selects no target"), "{e}");

        // A label set that matches is fine.
        let text = minimal(&new_key("alice"))
            .replace("{ names = [\"web-1\"] }", "{ labels = { tier = \"web\" } }");
        settings(&text);
    }

    #[test]
    fn each_unknown_target_name_in_a_role_is_its_own_error() {
        let text = minimal(&new_key("alice")).replace(
            "{ names = [\"web-1\"] }",
            "{ names = [\"web-9\", \"web-1\", \"db-9\"] }",
        );
        let errors = errors(&text);
        assert_eq!(errors.len(), 2, "{}", ConfigErrors(errors.clone()));
        assert_eq!(
            line_col(at(&errors, "roles[0].targets.names[0]")),
            pos(&text, "\"web-9\"", 0)
        );
        assert_eq!(
            line_col(at(&errors, "roles[0].targets.names[2]")),
            pos(&text, "\"db-9\"", 0)
        );
    }

    #[test]
    fn a_selector_must_set_exactly_one_of_labels_or_names() {
        let both = minimal(&new_key("a")).replace(
            "{ names = [\"web-1\"] }",
            "{ names = [\"web-1\"], labels = { tier = \"web\" } }",
        );
        assert!(at(&errors(&both), "roles[0].targets")
            .message
            .contains("exactly one"));
        let neither = minimal(&new_key("a")).replace("{ names = [\"web-1\"] }", "{}");
        assert!(at(&errors(&neither), "roles[0].targets")
            .message
            .contains("exactly one"));
        let empty = minimal(&new_key("a")).replace("{ names = [\"web-1\"] }", "{ labels = {} }");
        assert!(at(&errors(&empty), "roles[0].targets.labels")
            .message
            .contains("every target"));
    }

    #[test]
    fn bad_addresses_and_bad_keys_report_their_own_lines() {
        let good = new_key("alice");
        let text = minimal(&good)
            .replace(
                "\"127.0.0.1:2222\"",
                "\"127.0.0.1:2222\", \"localhost:2222\"",
            )
            .replace("\"10.0.1.10\"", "\"10.0.1.300:22\"")
            .replace(
                &format!("[\"{good}\"]"),
                &format!("[\n  \"{good}\",\n  \"ssh-ed25519 AAAAnotbase64!!\",\n]"),
            );
        let errors = errors(&text);
        assert_eq!(errors.len(), 3, "{}", ConfigErrors(errors.clone()));

        let listen = at(&errors, "gateway.ssh_listen[1]");
        assert_eq!(line_col(listen), (3, 33));
        assert!(listen.message.contains("not a socket address"), "{listen}");

        let address = at(&errors, "targets[0].address");
        assert_eq!(line_col(address), (8, 11));
        assert!(
            address.message.contains("not a valid IPv4 address"),
            "{address}"
        );

        let key = at(&errors, "users[0].ssh_keys[1]");
        assert_eq!(line_col(key), (21, 3));
        assert!(
            key.message.contains("not a valid OpenSSH public key"),
            "{key}"
        );
        assert!(
            !key.message.contains("AAAAnotbase64"),
            "never echoes key text: {key}"
        );
    }

    #[test]
    fn target_addresses_accept_the_documented_forms_only() {
        let ok = |s: &str| parse_target_address(s, 22).expect(s);
        assert_eq!(ok("10.0.1.10:22"), ("10.0.1.10".into(), 22));
        assert_eq!(ok("10.0.1.10"), ("10.0.1.10".into(), 22));
        assert_eq!(ok("web-1.internal:2200"), ("web-1.internal".into(), 2200));
        assert_eq!(ok("[::1]:2222"), ("::1".into(), 2222));
        assert_eq!(ok("[fe80::1]"), ("fe80::1".into(), 22));
        for bad in [
            "",
            ":22",
            "web-1:",
            "web-1:0",
            "web-1:65536",
            "web-1:ssh",
            "::1",
            "[::1",
            "[::1]x",
            "[10.0.0.1]:22",
            "-web:22",
            "web 1:22",
            "1.2.3:22",
            "a..b",
        ] {
            assert!(parse_target_address(bad, 22).is_err(), "accepted {bad:?}");
        }
    }

    #[test]
    fn two_users_sharing_a_key_are_both_named() {
        let shared = new_key("shared");
        let text =
            minimal(&shared) + "\n[[users]]\nname = \"bob\"\nssh_keys = [\"" + &shared + "\"]\n";
        let errors = errors(&text);
        assert_eq!(errors.len(), 1, "{}", ConfigErrors(errors.clone()));
        let e = at(&errors, "users[1].ssh_keys[0]");
        assert_eq!(e.line, pos(&text, &shared, 1).0);
        assert!(
            e.message.contains("`bob`") && e.message.contains("`alice`"),
            "{e}"
        );
        let fingerprint = PublicKey::from_openssh(&shared)
            .expect("key")
            .fingerprint(HashAlg::Sha256)
            .to_string();
        assert!(e.message.contains(&fingerprint), "{e}");
        let base64 = shared.split(' ').nth(1).expect("base64");
        assert!(!e.message.contains(base64), "never echoes the key: {e}");
    }

    #[test]
    fn unsupported_and_private_keys_are_refused_without_echo() {
        let rsa = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAAAgQDOn6pRk3ZWgOaXhkGdQDTd7Bq/ME5pxXCxWG4ePbdBAVBqDvKQhiy+Eo47aEQDbKsTJDpHFAuLRUNjJXr0HRO11VUoWqkf3OaYihdLFeBU/AXLCaM5LDDDiTCiGSVRWEtAq+rOLBNCJ8Xrd1prL+V21BrRGtKgJFpUkcLhMDVEQw== rsa";
        let private = "-----BEGIN OPENSSH PRIVATE KEY-----\\nb3BlbnNzaC1rZXktdjEAAAAA\\n-----END OPENSSH PRIVATE KEY-----";
        let text = minimal(&new_key("a")).replace(
            "ssh_keys = [",
            &format!("ssh_keys = [\"{rsa}\", \"{private}\", "),
        );
        let errors = errors(&text);
        assert_eq!(errors.len(), 2, "{}", ConfigErrors(errors.clone()));
        assert!(at(&errors, "users[0].ssh_keys[0]")
            .message
            .contains("`ssh-rsa` is not supported"));
        let e = at(&errors, "users[0].ssh_keys[1]");
        assert!(e.message.contains("private key"), "{e}");
        assert!(!e.message.contains("b3BlbnNzaC1rZXktdjEAAAAA"), "{e}");
    }

    #[test]
    fn wrong_types_and_missing_fields_are_all_reported() {
        let text = r#"[gateway]
ssh_listen = "0.0.0.0:2222"
max_connections = "many"

[[users]]
roles = ["x", 7]

[[targets]]
name = "t"
kind = "telnet"
address = "t:23"
"#;
        let errors = errors(text);
        let show = ConfigErrors(errors.clone()).to_string();
        let missing_state_dir = at(&errors, "gateway.state_dir");
        assert_eq!(line_col(missing_state_dir), (1, 1), "points at [gateway]");
        assert!(missing_state_dir.message.contains("missing required key"));
        assert_eq!(line_col(at(&errors, "gateway.ssh_listen")), (2, 14));
        assert!(at(&errors, "gateway.ssh_listen")
            .message
            .contains("expected an array of strings, found a string"));
        assert_eq!(line_col(at(&errors, "gateway.max_connections")), (3, 19));
        assert_eq!(line_col(at(&errors, "users[0].name")), (5, 1));
        assert_eq!(line_col(at(&errors, "users[0].ssh_keys")), (5, 1));
        assert_eq!(line_col(at(&errors, "users[0].roles[1]")), (6, 15));
        assert_eq!(
            line_col(at(&errors, "users[0].roles[0]")),
            (6, 10),
            "undefined role `x`"
        );
        let kind = at(&errors, "targets[0].kind");
        assert!(kind.message.contains("accepted kinds: ssh"), "{kind}");
        assert_eq!(errors.len(), 8, "{show}");
        // Sorted by position.
        let positions: Vec<_> = errors.iter().map(line_col).collect();
        let mut sorted = positions.clone();
        sorted.sort();
        assert_eq!(positions, sorted);
    }

    #[test]
    fn a_missing_gateway_table_is_reported() {
        let errors = errors("");
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].path, "gateway");
        assert_eq!(line_col(&errors[0]), (1, 1));
    }

    #[test]
    fn names_and_numbers_are_checked() {
        let text = minimal(&new_key("a"))
            .replace("name = \"alice\"", "name = \"Alice\"")
            .replace("name = \"web-1\"", "name = \"web 1\"")
            .replace("[\"deploy\"]", "[\"-deploy\"]")
            .replace("ssh_listen", "max_connections = 0\nssh_listen");
        let errors = errors(&text);
        assert!(at(&errors, "users[0].name")
            .message
            .contains("invalid name `Alice`"));
        assert!(at(&errors, "targets[0].name")
            .message
            .contains("invalid name `web 1`"));
        assert!(at(&errors, "roles[0].logins[0]")
            .message
            .contains("invalid name `-deploy`"));
        assert!(at(&errors, "gateway.max_connections")
            .message
            .contains("greater than zero"));
        // `web-1` no longer exists, so the role's reference is reported too.
        at(&errors, "roles[0].targets.names[0]");
        assert_eq!(errors.len(), 5, "{}", ConfigErrors(errors.clone()));
    }

    #[test]
    fn durations_and_env_patterns_are_checked_in_place() {
        let text = minimal(&new_key("a")).replace(
            "logins = [\"deploy\"]",
            "logins = [\"deploy\"]\nmax_session = \"0s\"\nidle_timeout = \"10 minutes\"\nallow_env = [\"*\", \"LC_*\", \"A-B\"]",
        );
        let errors = errors(&text);
        assert_eq!(errors.len(), 4, "{}", ConfigErrors(errors.clone()));
        assert!(at(&errors, "roles[0].max_session")
            .message
            .contains("greater than zero"));
        let idle = at(&errors, "roles[0].idle_timeout");
        assert_eq!(line_col(idle), pos(&text, "\"10 minutes\"", 0));
        assert!(idle.message.starts_with("invalid duration"), "{idle}");
        assert!(at(&errors, "roles[0].allow_env[0]")
            .message
            .contains("every variable"));
        at(&errors, "roles[0].allow_env[2]");
    }

    #[test]
    fn a_syntax_error_reports_line_and_column() {
        let text = "[gateway]\nstate_dir = \"/x\"\nssh_listen = [\"127.0.0.1:22\"\n\n[[users]]\n";
        let errors = errors(text);
        assert_eq!(errors.len(), 1, "{}", ConfigErrors(errors.clone()));
        // The parser notices the unclosed array where the next table starts.
        assert_eq!(line_col(&errors[0]), (5, 1), "{}", errors[0]);
        assert!(
            errors[0].message.starts_with("TOML syntax error"),
            "{}",
            errors[0]
        );
        assert_eq!(errors[0].path, "");

        let errors = self::errors("[gateway]\nstate_dir = \"/x\" x\n");
        assert_eq!(errors.len(), 1);
        assert_eq!(line_col(&errors[0]), (2, 18), "{}", errors[0]);

        // A repeated key is a syntax error too, pointing at the repeat.
        let errors = self::errors("[gateway]\nstate_dir = \"/a\"\nstate_dir = \"/b\"\n");
        assert_eq!(errors.len(), 1);
        assert_eq!(line_col(&errors[0]), (3, 1), "{}", errors[0]);
    }

    #[test]
    fn durations_parse() {
        let ok = |s: &str| parse_duration(s).expect(s);
        assert_eq!(ok("0s"), Duration::ZERO);
        assert_eq!(ok("30s"), Duration::from_secs(30));
        assert_eq!(ok("10m"), Duration::from_secs(600));
        assert_eq!(ok("1h"), Duration::from_secs(3600));
        assert_eq!(ok("4h"), Duration::from_secs(4 * 3600));
        assert_eq!(ok("400d"), Duration::from_secs(400 * 86_400));
        assert_eq!(ok("1h30m"), Duration::from_secs(5400));
        assert_eq!(ok("1d2h3m4s"), Duration::from_secs(93_784));
        for bad in [
            "",
            "30",
            "s",
            "10 m",
            " 10m",
            "10x",
            "10ms",
            "1.5h",
            "-1s",
            "30m1h",
            "1h1h",
            "99999999999999999999s",
            "999999999999999d",
        ] {
            assert!(parse_duration(bad).is_err(), "accepted {bad:?}");
        }
    }

    #[test]
    fn record_input_takes_none_exec_all_defaults_to_exec_and_reads_old_booleans_with_a_warning() {
        let key = new_key("alice");
        let with = |line: &str| {
            minimal(&key).replace(
                "logins = [\"deploy\"]\n",
                &format!("logins = [\"deploy\"]\n{line}\n"),
            )
        };
        let s = settings(&minimal(&key));
        assert_eq!(s.roles[0].record_input, RecordInput::Exec);
        assert!(s.warnings.is_empty(), "{:?}", s.warnings);
        for (value, want) in [
            ("\"none\"", RecordInput::None),
            ("\"exec\"", RecordInput::Exec),
            ("\"all\"", RecordInput::All),
        ] {
            let s = settings(&with(&format!("record_input = {value}")));
            assert_eq!(s.roles[0].record_input, want);
            assert!(s.warnings.is_empty());
        }
        for (value, want) in [("true", RecordInput::All), ("false", RecordInput::None)] {
            let s = settings(&with(&format!("record_input = {value}")));
            assert_eq!(s.roles[0].record_input, want);
            assert_eq!(s.warnings.len(), 1, "{:?}", s.warnings);
            let w = &s.warnings[0];
            assert!(
                w.contains("roles[0].record_input")
                    && w.contains("deprecated")
                    && w.contains(&format!("\"{}\"", want.as_str())),
                "{w}"
            );
            assert!(w.starts_with("gatehouse.toml:"), "file:line:col: {w}");
        }
        let bad = errors(&with("record_input = \"keys\""));
        assert!(at(&bad, "roles[0].record_input")
            .message
            .contains("\"none\", \"exec\" or \"all\""));
        let bad = errors(&with("record_input = 1"));
        at(&bad, "roles[0].record_input");
    }

    #[test]
    fn errors_display_as_file_line_column_path_message() {
        let e = ConfigError {
            file: PathBuf::from("/etc/gatehouse.toml"),
            line: 3,
            column: 7,
            path: "users[1].ssh_keys[0]".into(),
            message: "bad".into(),
        };
        assert_eq!(
            e.to_string(),
            "/etc/gatehouse.toml:3:7: users[1].ssh_keys[0]: bad"
        );
        let whole = ConfigError {
            path: String::new(),
            ..e.clone()
        };
        assert_eq!(whole.to_string(), "/etc/gatehouse.toml:3:7: bad");
        let both = ConfigErrors(vec![e, whole]);
        assert_eq!(both.to_string().lines().count(), 2);
    }

    #[test]
    fn load_reads_the_file_and_names_it_when_it_cannot() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("gatehouse.toml");
        std::fs::write(&path, with_recordings(&minimal(&new_key("alice")))).expect("write");
        let s = load(&path).expect("valid file");
        assert_eq!(s.source, path);

        let missing = dir.path().join("missing.toml");
        let ConfigErrors(errors) = load(&missing).expect_err("missing file");
        assert_eq!(errors.len(), 1);
        assert_eq!((errors[0].line, errors[0].column), (0, 0));
        assert!(errors[0]
            .to_string()
            .starts_with(&format!("{}: cannot read", missing.display())));
    }

    #[test]
    fn columns_count_characters_not_bytes() {
        // Same error, same column, whether the key before it is ASCII or
        // Cyrillic (two bytes a letter).
        let ascii = errors("[gateway]\n\"kluc\" = \"/x\" x\n");
        let cyrillic = errors("[gateway]\n\"ключ\" = \"/x\" x\n");
        assert_eq!(line_col(&ascii[0]), (2, 15), "{}", ascii[0]);
        assert_eq!(line_col(&cyrillic[0]), (2, 15), "{}", cyrillic[0]);
    }
}
