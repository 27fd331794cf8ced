//! The shape of the configuration file, read with every position kept.
//!
//! This is the "raw" half of the config pipeline: it checks the *shape* of the
//! TOML document (which keys exist, which types they hold, which are required)
//! and hands `validate.rs` plain structs in which every value still carries its
//! byte span in the source text. It does not judge meaning (addresses, keys,
//! durations, names, cross references); that is `validate.rs`.
//!
//! Why not `#[derive(Deserialize)]` with `#[serde(deny_unknown_fields)]`, as
//! style.md item 3 suggests: serde stops at the first problem, and an operator
//! fixing a file wants *every* unknown key, wrong type and missing field in one
//! run, each with its line and column. So the document is parsed into toml's
//! span-preserving [`DeTable`] and walked against the schema below by hand.
//! The raw structs play the same role the serde structs would: nothing outside
//! the config module sees them.
//!
//! Every problem found here is pushed to a `Vec<Diag>`; a field that is
//! missing or has the wrong type is left `None` (its problem already recorded),
//! so later stages never report it twice.

use std::ops::Range;

use toml::de::{DeTable, DeValue};
use toml::Spanned;

pub(super) mod anomaly;

/// One problem, located by byte span; `validate.rs` turns it into a
/// `ConfigError` with line and column.
#[derive(Debug, Clone)]
pub(super) struct Diag {
    /// Byte range in the source text; `None` when there is no position.
    pub span: Option<Range<usize>>,
    /// Field path such as `users[1].ssh_keys[0]`; empty for the whole file.
    pub path: String,
    pub message: String,
}

impl Diag {
    pub(super) fn new(
        span: Range<usize>,
        path: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Diag {
            span: Some(span),
            path: path.into(),
            message: message.into(),
        }
    }
}

/// A list whose elements keep their position and index; an element of the
/// wrong type is `None` (already reported) so indices in paths stay right.
pub(super) type List<T> = Spanned<Vec<Option<Spanned<T>>>>;

/// A string -> string table in source order of keys (toml sorts them; the
/// order does not matter to anyone). A value of the wrong type is `None`.
pub(super) type StringMap = Spanned<Vec<(Spanned<String>, Option<Spanned<String>>)>>;

/// The whole file.
#[derive(Debug, Default)]
pub(super) struct RawConfig {
    pub gateway: Option<Spanned<RawGateway>>,
    pub auth: Option<Spanned<RawAuth>>,
    pub users: Vec<Option<Spanned<RawUser>>>,
    pub roles: Vec<Option<Spanned<RawRole>>>,
    pub targets: Vec<Option<Spanned<RawTarget>>>,
    pub recordings: Option<Spanned<RawRecordings>>,
    pub wireguard: Option<Spanned<RawWireGuard>>,
    pub control: Option<Spanned<RawControl>>,
    pub metrics: Option<Spanned<RawMetrics>>,
    pub anomaly: Option<Spanned<anomaly::RawAnomaly>>,
}

/// `[control]`
#[derive(Debug)]
pub(super) struct RawControl {
    pub socket: Option<Spanned<String>>,
    pub group: Option<Spanned<String>>,
}

/// `[metrics]`
#[derive(Debug)]
pub(super) struct RawMetrics {
    pub listen: Option<Spanned<String>>,
}

/// `[recordings]`
#[derive(Debug)]
pub(super) struct RawRecordings {
    pub dir: Option<Spanned<String>>,
    pub recipients: Option<List<String>>,
    pub retention: Option<Spanned<String>>,
    pub min_free: Option<Spanned<String>>,
}

/// `[wireguard]`
#[derive(Debug)]
pub(super) struct RawWireGuard {
    pub listen: Option<Spanned<String>>,
    pub address: Option<Spanned<String>>,
    pub endpoint: Option<Spanned<String>>,
    pub max_connections_per_peer: Option<Spanned<i64>>,
    pub max_connections: Option<Spanned<i64>>,
}

/// `users[].wireguard[]`
#[derive(Debug)]
pub(super) struct RawWgPeer {
    pub public_key: Option<Spanned<String>>,
    pub address: Option<Spanned<String>>,
}

/// `[gateway]`
#[derive(Debug)]
pub(super) struct RawGateway {
    pub state_dir: Option<Spanned<String>>,
    pub ssh_listen: Option<List<String>>,
    pub max_connections: Option<Spanned<i64>>,
    pub max_jumps_per_connection: Option<Spanned<i64>>,
    pub max_jumps_per_user: Option<Spanned<i64>>,
    pub max_channels_per_connection: Option<Spanned<i64>>,
    pub auth_timeout: Option<Spanned<String>>,
    pub connect_timeout: Option<Spanned<String>>,
    pub max_startups: Option<Spanned<i64>>,
    pub max_startups_per_source: Option<Spanned<i64>>,
}

/// `[auth]`
#[derive(Debug)]
pub(super) struct RawAuth {
    pub max_failures: Option<Spanned<i64>>,
    pub failure_window: Option<Spanned<String>>,
    pub lockout: Option<Spanned<String>>,
    pub mfa_lease: Option<Spanned<String>>,
    pub max_connection_age: Option<Spanned<String>>,
}

/// `[[users]]`
#[derive(Debug)]
pub(super) struct RawUser {
    pub name: Option<Spanned<String>>,
    pub roles: Option<List<String>>,
    pub ssh_keys: Option<List<String>>,
    pub wireguard: Vec<Option<Spanned<RawWgPeer>>>,
    pub require_wireguard: Option<Spanned<bool>>,
}

/// `[[roles]]`
#[derive(Debug)]
pub(super) struct RawRole {
    pub name: Option<Spanned<String>>,
    pub targets: Option<Spanned<RawSelector>>,
    pub logins: Option<List<String>>,
    pub max_session: Option<Spanned<String>>,
    pub idle_timeout: Option<Spanned<String>>,
    pub allow_env: Option<List<String>>,
    pub record_input: Option<Spanned<RawRecordInput>>,
    pub allow_options: Option<Spanned<bool>>,
    pub announce_watch: Option<Spanned<bool>>,
}

/// `roles[].record_input`: `"none"`, `"exec"` or `"all"`; the boolean of
/// older configurations is still read (and warned about by `validate.rs`).
#[derive(Debug)]
pub(super) enum RawRecordInput {
    Mode(String),
    Legacy(bool),
}

/// `roles[].targets`: exactly one of the two must be set (checked later).
#[derive(Debug)]
pub(super) struct RawSelector {
    pub labels: Option<StringMap>,
    pub names: Option<List<String>>,
}

/// `[[targets]]`
#[derive(Debug)]
pub(super) struct RawTarget {
    pub name: Option<Spanned<String>>,
    pub kind: Option<Spanned<String>>,
    pub address: Option<Spanned<String>>,
    pub host_keys: Option<List<String>>,
    pub labels: Option<StringMap>,
    /// Database targets only (checked against `kind` by `validate.rs`).
    pub tunnel_port: Option<Spanned<i64>>,
    pub tls_ca: Option<Spanned<String>>,
    pub tls: Option<Spanned<String>>,
    pub tls_server_name: Option<Spanned<String>>,
    pub auth: Option<Spanned<String>>,
}

/// Parses `text` as TOML. A syntax error is returned alone: nothing after it
/// can be trusted.
pub(super) fn parse(text: &str) -> Result<Spanned<DeTable<'_>>, Diag> {
    DeTable::parse(text).map_err(|e| Diag {
        span: e.span(),
        path: String::new(),
        message: format!("TOML syntax error: {}", e.message()),
    })
}

/// Walks the parsed document against the schema, recording every unknown key,
/// wrong type and missing required field.
pub(super) fn read(doc: &Spanned<DeTable<'_>>, diags: &mut Vec<Diag>) -> RawConfig {
    let root = Table {
        table: doc.get_ref(),
        span: doc.span(),
        path: String::new(),
    };
    root.deny_unknown(
        &[
            "gateway",
            "auth",
            "users",
            "roles",
            "targets",
            "recordings",
            "wireguard",
            "control",
            "metrics",
            "anomaly",
        ],
        diags,
    );

    let gateway = root.table("gateway", true, diags).map(|t| {
        t.deny_unknown(
            &[
                "state_dir",
                "ssh_listen",
                "max_connections",
                "max_jumps_per_connection",
                "max_jumps_per_user",
                "max_channels_per_connection",
                "auth_timeout",
                "connect_timeout",
                "max_startups",
                "max_startups_per_source",
            ],
            diags,
        );
        Spanned::new(
            t.span.clone(),
            RawGateway {
                state_dir: t.string("state_dir", true, diags),
                ssh_listen: t.string_list("ssh_listen", true, diags),
                max_connections: t.integer("max_connections", diags),
                max_jumps_per_connection: t.integer("max_jumps_per_connection", diags),
                max_jumps_per_user: t.integer("max_jumps_per_user", diags),
                max_channels_per_connection: t.integer("max_channels_per_connection", diags),
                auth_timeout: t.string("auth_timeout", false, diags),
                connect_timeout: t.string("connect_timeout", false, diags),
                max_startups: t.integer("max_startups", diags),
                max_startups_per_source: t.integer("max_startups_per_source", diags),
            },
        )
    });

    let auth = root.table("auth", false, diags).map(|t| {
        t.deny_unknown(
            &[
                "max_failures",
                "failure_window",
                "lockout",
                "mfa_lease",
                "max_connection_age",
            ],
            diags,
        );
        Spanned::new(
            t.span.clone(),
            RawAuth {
                max_failures: t.integer("max_failures", diags),
                failure_window: t.string("failure_window", false, diags),
                lockout: t.string("lockout", false, diags),
                mfa_lease: t.string("mfa_lease", false, diags),
                max_connection_age: t.string("max_connection_age", false, diags),
            },
        )
    });

    let recordings = root.table("recordings", true, diags).map(|t| {
        t.deny_unknown(&["dir", "recipients", "retention", "min_free"], diags);
        Spanned::new(
            t.span.clone(),
            RawRecordings {
                dir: t.string("dir", false, diags),
                recipients: t.string_list("recipients", true, diags),
                retention: t.string("retention", false, diags),
                min_free: t.string("min_free", false, diags),
            },
        )
    });

    let wireguard = root.table("wireguard", false, diags).map(|t| {
        t.deny_unknown(
            &[
                "listen",
                "address",
                "endpoint",
                "max_connections_per_peer",
                "max_connections",
            ],
            diags,
        );
        Spanned::new(
            t.span.clone(),
            RawWireGuard {
                listen: t.string("listen", true, diags),
                address: t.string("address", true, diags),
                endpoint: t.string("endpoint", false, diags),
                max_connections_per_peer: t.integer("max_connections_per_peer", diags),
                max_connections: t.integer("max_connections", diags),
            },
        )
    });

    let control = root.table("control", false, diags).map(|t| {
        t.deny_unknown(&["socket", "group"], diags);
        Spanned::new(
            t.span.clone(),
            RawControl {
                socket: t.string("socket", false, diags),
                group: t.string("group", false, diags),
            },
        )
    });

    let metrics = root.table("metrics", false, diags).map(|t| {
        t.deny_unknown(&["listen"], diags);
        Spanned::new(
            t.span.clone(),
            RawMetrics {
                listen: t.string("listen", false, diags),
            },
        )
    });

    let anomaly = root
        .table("anomaly", false, diags)
        .map(|t| Spanned::new(t.span.clone(), anomaly::parse(&t, diags)));

    let users = root.tables("users", diags, |t, diags| {
        t.deny_unknown(
            &[
                "name",
                "roles",
                "ssh_keys",
                "wireguard",
                "require_wireguard",
            ],
            diags,
        );
        RawUser {
            name: t.string("name", true, diags),
            roles: t.string_list("roles", false, diags),
            ssh_keys: t.string_list("ssh_keys", true, diags),
            wireguard: t.tables("wireguard", diags, |p, diags| {
                p.deny_unknown(&["public_key", "address"], diags);
                RawWgPeer {
                    public_key: p.string("public_key", true, diags),
                    address: p.string("address", true, diags),
                }
            }),
            require_wireguard: t.boolean("require_wireguard", diags),
        }
    });

    let roles = root.tables("roles", diags, |t, diags| {
        t.deny_unknown(
            &[
                "name",
                "targets",
                "logins",
                "max_session",
                "idle_timeout",
                "allow_env",
                "record_input",
                "allow_options",
                "announce_watch",
            ],
            diags,
        );
        let targets = t.table("targets", true, diags).map(|s| {
            s.deny_unknown(&["labels", "names"], diags);
            Spanned::new(
                s.span.clone(),
                RawSelector {
                    labels: s.string_map("labels", diags),
                    names: s.string_list("names", false, diags),
                },
            )
        });
        RawRole {
            name: t.string("name", true, diags),
            targets,
            logins: t.string_list("logins", true, diags),
            max_session: t.string("max_session", false, diags),
            idle_timeout: t.string("idle_timeout", false, diags),
            allow_env: t.string_list("allow_env", false, diags),
            record_input: t.record_input("record_input", diags),
            allow_options: t.boolean("allow_options", diags),
            announce_watch: t.boolean("announce_watch", diags),
        }
    });

    let targets = root.tables("targets", diags, |t, diags| {
        t.deny_unknown(
            &[
                "name",
                "kind",
                "address",
                "host_keys",
                "labels",
                "tunnel_port",
                "tls_ca",
                "tls",
                "tls_server_name",
                "auth",
            ],
            diags,
        );
        RawTarget {
            name: t.string("name", true, diags),
            kind: t.string("kind", true, diags),
            address: t.string("address", true, diags),
            host_keys: t.string_list("host_keys", false, diags),
            labels: t.string_map("labels", diags),
            tunnel_port: t.integer("tunnel_port", diags),
            tls_ca: t.string("tls_ca", false, diags),
            tls: t.string("tls", false, diags),
            tls_server_name: t.string("tls_server_name", false, diags),
            auth: t.string("auth", false, diags),
        }
    });

    RawConfig {
        gateway,
        auth,
        users,
        roles,
        targets,
        recordings,
        wireguard,
        control,
        metrics,
        anomaly,
    }
}

/// `parent.key`, quoting the key when it is not a bare TOML key.
pub(super) fn key_path(parent: &str, key: &str) -> String {
    let bare = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    let key = if bare {
        key.to_owned()
    } else {
        format!("{key:?}")
    };
    if parent.is_empty() {
        key
    } else {
        format!("{parent}.{key}")
    }
}

/// `parent[index]`
pub(super) fn index_path(parent: &str, index: usize) -> String {
    format!("{parent}[{index}]")
}

/// "a string", "an integer", ... for messages.
fn a(value: &DeValue<'_>) -> &'static str {
    match value {
        DeValue::String(_) => "a string",
        DeValue::Integer(_) => "an integer",
        DeValue::Float(_) => "a float",
        DeValue::Boolean(_) => "a boolean",
        DeValue::Datetime(_) => "a date-time",
        DeValue::Array(_) => "an array",
        DeValue::Table(_) => "a table",
    }
}

fn wrong_type(value: &Spanned<DeValue<'_>>, path: String, expected: &str) -> Diag {
    Diag::new(
        value.span(),
        path,
        format!("expected {expected}, found {}", a(value.get_ref())),
    )
}

/// One TOML table being read, with its span (the `[header]` or `{ ... }`) and
/// field path.
struct Table<'a, 'i> {
    table: &'a DeTable<'i>,
    span: Range<usize>,
    path: String,
}

impl<'a, 'i> Table<'a, 'i> {
    /// Views `value` as a table, or records a type error.
    fn of(value: &'a Spanned<DeValue<'i>>, path: String, diags: &mut Vec<Diag>) -> Option<Self> {
        match value.get_ref() {
            DeValue::Table(table) => Some(Table {
                table,
                span: value.span(),
                path,
            }),
            _ => {
                diags.push(wrong_type(value, path, "a table"));
                None
            }
        }
    }

    /// Reports every key of this table that is not in `known`.
    fn deny_unknown(&self, known: &[&str], diags: &mut Vec<Diag>) {
        for (key, _) in self.table.iter() {
            let name: &str = key.get_ref();
            if !known.contains(&name) {
                diags.push(Diag::new(
                    key.span(),
                    key_path(&self.path, name),
                    format!("unknown key; expected one of: {}", known.join(", ")),
                ));
            }
        }
    }

    fn child(&self, key: &str) -> String {
        key_path(&self.path, key)
    }

    /// The value under `key`; records a missing-key error if `required`.
    fn get(
        &self,
        key: &str,
        required: bool,
        diags: &mut Vec<Diag>,
    ) -> Option<&'a Spanned<DeValue<'i>>> {
        let value = self.table.get(key);
        if value.is_none() && required {
            diags.push(Diag::new(
                self.span.clone(),
                self.child(key),
                "missing required key",
            ));
        }
        value
    }

    fn string(&self, key: &str, required: bool, diags: &mut Vec<Diag>) -> Option<Spanned<String>> {
        let value = self.get(key, required, diags)?;
        as_string(value, self.child(key), diags)
    }

    fn integer(&self, key: &str, diags: &mut Vec<Diag>) -> Option<Spanned<i64>> {
        let value = self.get(key, false, diags)?;
        match value.get_ref() {
            DeValue::Integer(int) => match i64::from_str_radix(int.as_str(), int.radix()) {
                Ok(n) => Some(Spanned::new(value.span(), n)),
                Err(_) => {
                    diags.push(Diag::new(
                        value.span(),
                        self.child(key),
                        "integer out of range",
                    ));
                    None
                }
            },
            _ => {
                diags.push(wrong_type(value, self.child(key), "an integer"));
                None
            }
        }
    }

    fn boolean(&self, key: &str, diags: &mut Vec<Diag>) -> Option<Spanned<bool>> {
        let value = self.get(key, false, diags)?;
        match value.get_ref() {
            DeValue::Boolean(b) => Some(Spanned::new(value.span(), *b)),
            _ => {
                diags.push(wrong_type(
                    value,
                    self.child(key),
                    "a boolean (true or false)",
                ));
                None
            }
        }
    }

    /// A string, or (older configurations) a boolean.
    fn record_input(&self, key: &str, diags: &mut Vec<Diag>) -> Option<Spanned<RawRecordInput>> {
        let value = self.get(key, false, diags)?;
        match value.get_ref() {
            DeValue::String(s) => Some(Spanned::new(
                value.span(),
                RawRecordInput::Mode(s.to_string()),
            )),
            DeValue::Boolean(b) => Some(Spanned::new(value.span(), RawRecordInput::Legacy(*b))),
            _ => {
                diags.push(wrong_type(
                    value,
                    self.child(key),
                    "one of \"none\", \"exec\", \"all\"",
                ));
                None
            }
        }
    }

    fn string_list(
        &self,
        key: &str,
        required: bool,
        diags: &mut Vec<Diag>,
    ) -> Option<List<String>> {
        let value = self.get(key, required, diags)?;
        let path = self.child(key);
        let DeValue::Array(items) = value.get_ref() else {
            diags.push(wrong_type(value, path, "an array of strings"));
            return None;
        };
        let list = items
            .iter()
            .enumerate()
            .map(|(i, item)| as_string(item, index_path(&path, i), diags))
            .collect();
        Some(Spanned::new(value.span(), list))
    }

    fn string_map(&self, key: &str, diags: &mut Vec<Diag>) -> Option<StringMap> {
        let value = self.get(key, false, diags)?;
        let map = Table::of(value, self.child(key), diags)?;
        let entries = map
            .table
            .iter()
            .map(|(k, v)| {
                let name = Spanned::new(k.span(), k.get_ref().to_string());
                let v = as_string(v, map.child(k.get_ref()), diags);
                (name, v)
            })
            .collect();
        Some(Spanned::new(value.span(), entries))
    }

    fn table(&self, key: &str, required: bool, diags: &mut Vec<Diag>) -> Option<Table<'a, 'i>> {
        let value = self.get(key, required, diags)?;
        Table::of(value, self.child(key), diags)
    }

    /// An array of tables (`[[key]]`), each read by `each`. Absent means empty.
    fn tables<T>(
        &self,
        key: &str,
        diags: &mut Vec<Diag>,
        mut each: impl FnMut(&Table<'a, 'i>, &mut Vec<Diag>) -> T,
    ) -> Vec<Option<Spanned<T>>> {
        let Some(value) = self.get(key, false, diags) else {
            return Vec::new();
        };
        let path = self.child(key);
        let DeValue::Array(items) = value.get_ref() else {
            diags.push(wrong_type(value, path, "an array of tables (`[[...]]`)"));
            return Vec::new();
        };
        items
            .iter()
            .enumerate()
            .map(|(i, item)| {
                let table = Table::of(item, index_path(&path, i), diags)?;
                let raw = each(&table, diags);
                Some(Spanned::new(table.span.clone(), raw))
            })
            .collect()
    }
}

fn as_string(
    value: &Spanned<DeValue<'_>>,
    path: String,
    diags: &mut Vec<Diag>,
) -> Option<Spanned<String>> {
    match value.get_ref() {
        DeValue::String(s) => Some(Spanned::new(value.span(), s.to_string())),
        _ => {
            diags.push(wrong_type(value, path, "a string"));
            None
        }
    }
}
