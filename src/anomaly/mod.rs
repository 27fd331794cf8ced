//! Unusual activity (`[anomaly]`): rules over logins and sessions that emit
//! `anomaly.*` audit events, count in metrics and post to a webhook.
//!
//! The rules (thresholds and defaults in [`AnomalySettings`]):
//! - `new_network`: a login from a /24 (IPv4) or /48 (IPv6) never seen for
//!   the user; for a WireGuard device, the network of its UDP endpoint.
//! - `unusual_hour`: a login at an hour of the week (UTC) at which the user
//!   has not logged in during the last 30 days, once the user's first seen
//!   login is `learning_period` old.
//! - `target_spread`: sessions to more than N distinct targets within M.
//! - `bulk_transfer`: one session moved more than X bytes to the user.
//! - `failed_logins`: failed logins against one user from many sources, or
//!   from one source against many user names, within a window.
//!
//! The first two learn per user, from the first login on, in the state
//! directory ([`history`]); the first login ever only learns.
//!
//! The login hooks ([`login`], [`auth_attempt`]) are called where the audit
//! events are; they cost one atomic load when no `[anomaly]` section is
//! configured, and never wait for the disk or the webhook. The session rules
//! run in one task that the daemon starts with [`watch_sessions`].
//!
//! All memory is bounded: see [`history`], [`bursts`], [`webhook`].

#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

pub mod bursts;
pub mod history;
mod sessions;
pub mod webhook;

use std::net::IpAddr;
use std::path::Path;
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use crate::audit;
use crate::config::AnomalySettings;
use crate::source::Source;
use crate::state::StateError;

pub use sessions::watch_sessions;

use bursts::Windows;
use history::{Finding, History, Judge};
use webhook::Webhook;

static DETECTOR: OnceLock<Detector> = OnceLock::new();

/// The running rules (one per process, installed by the daemon).
pub struct Detector {
    settings: AnomalySettings,
    history: History,
    by_user: Mutex<Windows<String>>,
    by_source: Mutex<Windows<IpAddr>>,
    spread: Mutex<Windows<String>>,
    webhook: Option<Webhook>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Why the rules could not start.
#[derive(Debug, thiserror::Error)]
pub enum AnomalyError {
    #[error("anomaly login history: {0}")]
    State(#[from] StateError),
    #[error("anomaly webhook thread: {0}")]
    Thread(#[from] std::io::Error),
}

/// Starts the rules with `settings`, learning into `state_dir`. Called once
/// by the daemon; a second call keeps the first detector (the rules are not
/// reloadable yet).
pub fn install(
    settings: &AnomalySettings,
    state_dir: &Path,
) -> Result<&'static Detector, AnomalyError> {
    if let Some(d) = DETECTOR.get() {
        return Ok(d);
    }
    let detector = Detector::new(settings, state_dir)?;
    Ok(DETECTOR.get_or_init(|| detector))
}

/// The installed detector, if `[anomaly]` is configured.
pub fn detector() -> Option<&'static Detector> {
    DETECTOR.get()
}

/// Hook: a user completed a login (both factors, or a lease) from `source`.
pub fn login(user: &str, source: &Source) {
    if let Some(d) = DETECTOR.get() {
        d.on_login(user, source, unix_now());
    }
}

/// Hook: an authentication attempt with its audited `result`; failures
/// feed the failed-login rule. `user` is the name the client sent.
pub fn auth_attempt(user: &str, source: &Source, result: &str) {
    if result != "failure" {
        return;
    }
    if let Some(d) = DETECTOR.get() {
        d.on_failure(user, source.ip(), Instant::now());
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// One anomaly, with its evidence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Anomaly {
    NewNetwork {
        user: String,
        source: String,
        network: String,
        via: &'static str,
        known: usize,
    },
    UnusualHour {
        user: String,
        source: String,
        hour_of_week: u32,
        active_hours: usize,
    },
    TargetSpread {
        user: String,
        targets: Vec<String>,
        distinct: usize,
        limit: usize,
        window_s: u64,
    },
    BulkTransfer {
        session_id: String,
        user: String,
        target: String,
        source: String,
        bytes_down: u64,
        limit: u64,
    },
    FailedLogins {
        pattern: &'static str,
        user: String,
        source: String,
        distinct: usize,
        limit: usize,
        window_s: u64,
        sample: Vec<String>,
    },
}

impl Anomaly {
    /// The rule's name (`anomaly.RULE` is the audit event).
    pub fn rule(&self) -> &'static str {
        match self {
            Anomaly::NewNetwork { .. } => "new_network",
            Anomaly::UnusualHour { .. } => "unusual_hour",
            Anomaly::TargetSpread { .. } => "target_spread",
            Anomaly::BulkTransfer { .. } => "bulk_transfer",
            Anomaly::FailedLogins { .. } => "failed_logins",
        }
    }

    fn audit(&self) {
        match self {
            Anomaly::NewNetwork {
                user,
                source,
                network,
                via,
                known,
            } => audit::anomaly_new_network(user, source, network, via, *known),
            Anomaly::UnusualHour {
                user,
                source,
                hour_of_week,
                active_hours,
            } => audit::anomaly_unusual_hour(
                user,
                source,
                *hour_of_week,
                &history::describe_hour(*hour_of_week),
                *active_hours,
            ),
            Anomaly::TargetSpread {
                user,
                targets,
                distinct,
                limit,
                window_s,
            } => {
                audit::anomaly_target_spread(user, &targets.join(","), *distinct, *limit, *window_s)
            }
            Anomaly::BulkTransfer {
                session_id,
                user,
                target,
                source,
                bytes_down,
                limit,
            } => {
                audit::anomaly_bulk_transfer(session_id, user, target, source, *bytes_down, *limit)
            }
            Anomaly::FailedLogins {
                pattern,
                user,
                source,
                distinct,
                limit,
                window_s,
                sample,
            } => audit::anomaly_failed_logins(
                pattern,
                user,
                source,
                *distinct,
                *limit,
                *window_s,
                &sample.join(","),
            ),
        }
    }

    /// The webhook body: `event`, `rule`, `time_unix`, `user`, `source`
    /// and the rule's `evidence`.
    pub fn to_json(&self, time_unix: u64) -> Value {
        let (user, source, evidence) = match self {
            Anomaly::NewNetwork {
                user,
                source,
                network,
                via,
                known,
            } => (
                user.as_str(),
                source.as_str(),
                json!({"network": network, "via": via, "known_networks": known}),
            ),
            Anomaly::UnusualHour {
                user,
                source,
                hour_of_week,
                active_hours,
            } => (
                user.as_str(),
                source.as_str(),
                json!({
                    "hour_of_week": hour_of_week,
                    "when": history::describe_hour(*hour_of_week),
                    "active_hours": active_hours,
                }),
            ),
            Anomaly::TargetSpread {
                user,
                targets,
                distinct,
                limit,
                window_s,
            } => (
                user.as_str(),
                "-",
                json!({"targets": targets, "distinct": distinct, "limit": limit, "window_s": window_s}),
            ),
            Anomaly::BulkTransfer {
                session_id,
                user,
                target,
                source,
                bytes_down,
                limit,
            } => (
                user.as_str(),
                source.as_str(),
                json!({"session_id": session_id, "target": target, "bytes_down": bytes_down, "limit": limit}),
            ),
            Anomaly::FailedLogins {
                pattern,
                user,
                source,
                distinct,
                limit,
                window_s,
                sample,
            } => (
                user.as_str(),
                source.as_str(),
                json!({
                    "pattern": pattern,
                    "distinct": distinct,
                    "limit": limit,
                    "window_s": window_s,
                    "sample": sample,
                }),
            ),
        };
        json!({
            "event": format!("anomaly.{}", self.rule()),
            "rule": self.rule(),
            "time_unix": time_unix,
            "user": audit::client_name(user),
            "source": source,
            "evidence": evidence,
        })
    }
}

impl Detector {
    fn new(settings: &AnomalySettings, state_dir: &Path) -> Result<Detector, AnomalyError> {
        let history = History::open(state_dir)?;
        let webhook = match &settings.webhook {
            Some(w) => Some(Webhook::start(w.url.clone())?),
            None => None,
        };
        Ok(Detector {
            settings: settings.clone(),
            history,
            by_user: Mutex::new(Windows::new(
                settings.max_failed_sources,
                settings.failed_window,
            )),
            by_source: Mutex::new(Windows::new(
                settings.max_failed_users,
                settings.failed_window,
            )),
            spread: Mutex::new(Windows::new(settings.max_targets, settings.target_window)),
            webhook,
        })
    }

    pub fn settings(&self) -> &AnomalySettings {
        &self.settings
    }

    /// Reports one anomaly: audit event, metric, webhook (queued).
    pub fn fire(&self, anomaly: Anomaly) {
        anomaly.audit();
        crate::metrics::anomaly(anomaly.rule());
        if let Some(w) = &self.webhook {
            w.send(anomaly.to_json(unix_now()));
        }
    }

    fn on_login(&self, user: &str, source: &Source, now: u64) {
        for anomaly in self.judge_login(user, source, now) {
            self.fire(anomaly);
        }
    }

    /// Learns one login and returns what the login rules find in it.
    fn judge_login(&self, user: &str, source: &Source, now: u64) -> Vec<Anomaly> {
        let s = &self.settings;
        let (network, via) = match source {
            Source::Address(a) => (Some(history::network_of(a.ip())), "address"),
            Source::Device(d) => (
                d.endpoint.map(|e| history::network_of(e.ip())),
                "wireguard-endpoint",
            ),
        };
        let judge = Judge {
            new_network: s.new_network,
            unusual_hour: s.unusual_hour,
            learning_period: s.learning_period,
        };
        let label = source.to_string();
        let findings = self.history.login(user, network.as_deref(), now, judge);
        findings
            .into_iter()
            .map(|finding| match finding {
                Finding::NewNetwork { network, known } => Anomaly::NewNetwork {
                    user: user.to_string(),
                    source: label.clone(),
                    network,
                    via,
                    known,
                },
                Finding::UnusualHour {
                    hour_of_week,
                    active_hours,
                } => Anomaly::UnusualHour {
                    user: user.to_string(),
                    source: label.clone(),
                    hour_of_week,
                    active_hours,
                },
            })
            .collect()
    }

    fn on_failure(&self, user: &str, ip: IpAddr, now: Instant) {
        let s = &self.settings;
        if !s.failed_logins {
            return;
        }
        let window_s = s.failed_window.as_secs();
        let user = audit::client_name(user).into_owned();
        let ip_text = ip.to_string();
        let many_sources = lock(&self.by_user).record(&user, &ip_text, now);
        if let Some(b) = many_sources {
            self.fire(Anomaly::FailedLogins {
                pattern: "one_user_many_sources",
                user: user.clone(),
                source: "-".into(),
                distinct: b.distinct,
                limit: s.max_failed_sources,
                window_s,
                sample: b.sample,
            });
        }
        let many_users = lock(&self.by_source).record(&ip, &user, now);
        if let Some(b) = many_users {
            self.fire(Anomaly::FailedLogins {
                pattern: "one_source_many_users",
                user: "-".into(),
                source: ip_text,
                distinct: b.distinct,
                limit: s.max_failed_users,
                window_s,
                sample: b.sample,
            });
        }
    }

    /// A session to `target` started for `user` (from the live registry).
    fn on_session_start(&self, user: &str, target: &str, now: Instant) {
        let s = &self.settings;
        if !s.target_spread {
            return;
        }
        let burst = lock(&self.spread).record(&user.to_string(), target, now);
        if let Some(b) = burst {
            self.fire(Anomaly::TargetSpread {
                user: user.to_string(),
                targets: b.sample,
                distinct: b.distinct,
                limit: s.max_targets,
                window_s: s.target_window.as_secs(),
            });
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn the_webhook_body_names_the_rule_and_carries_evidence_only() {
        let a = Anomaly::FailedLogins {
            pattern: "one_source_many_users",
            user: "-".into(),
            source: "192.0.2.7".into(),
            distinct: 11,
            limit: 10,
            window_s: 300,
            sample: vec!["bob".into(), "carol".into()],
        };
        let v = a.to_json(1_796_601_600);
        assert_eq!(v["event"], "anomaly.failed_logins");
        assert_eq!(v["rule"], "failed_logins");
        assert_eq!(v["source"], "192.0.2.7");
        assert_eq!(v["evidence"]["distinct"], 11);
        assert_eq!(v["evidence"]["sample"][1], "carol");
        assert_eq!(v["time_unix"], 1_796_601_600u64);
    }

    #[test]
    fn every_audit_event_type_has_its_own_message_id() {
        let text = include_str!("../audit.rs");
        let ids: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("const ID_"))
            .filter_map(|l| l.split('"').nth(1))
            .collect();
        assert!(ids.len() >= 5);
        let unique: std::collections::HashSet<&str> = ids.iter().copied().collect();
        assert_eq!(
            unique.len(),
            ids.len(),
            "a MESSAGE_ID is used twice: {ids:?}"
        );
    }

    #[test]
    fn a_wireguard_login_is_judged_by_the_network_of_the_device_endpoint() {
        use crate::source::Device;
        let dir = tempfile::tempdir().unwrap();
        let d = Detector::new(&AnomalySettings::default(), dir.path()).unwrap();
        let device = |endpoint: &str| {
            Source::Device(Device {
                user: "alice".into(),
                public_key: [7u8; 32],
                tunnel_address: "10.77.0.2".parse().unwrap(),
                port: 40000,
                endpoint: Some(endpoint.parse().unwrap()),
            })
        };
        let now = 1_796_601_600;
        assert!(d
            .judge_login("alice", &device("192.0.2.10:51820"), now)
            .is_empty());
        // Same tunnel address, same /24 of endpoints: usual.
        assert!(d
            .judge_login("alice", &device("192.0.2.99:40001"), now + 60)
            .is_empty());
        // The device roamed to another network.
        let found = d.judge_login("alice", &device("[2001:db8:5:6::1]:51820"), now + 120);
        match found.as_slice() {
            [Anomaly::NewNetwork {
                network,
                via,
                known,
                ..
            }] => {
                assert_eq!(network, "2001:db8:5::/48");
                assert_eq!(*via, "wireguard-endpoint");
                assert_eq!(*known, 1);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn failures_fire_per_user_and_per_source_once_per_burst() {
        let dir = tempfile::tempdir().unwrap();
        let settings = AnomalySettings {
            max_failed_sources: 2,
            max_failed_users: 2,
            ..AnomalySettings::default()
        };
        let d = Detector::new(&settings, dir.path()).unwrap();
        let t0 = Instant::now();
        for i in 1..=3u8 {
            d.on_failure("alice", IpAddr::from([10, 0, 0, i]), t0);
        }
        let b = lock(&d.by_user).record(&"alice".to_string(), "10.0.0.9", t0);
        assert_eq!(b, None, "fired already in this burst");
        for u in ["bob", "carol", "dave"] {
            d.on_failure(u, IpAddr::from([10, 9, 9, 9]), t0);
        }
        let b = lock(&d.by_source).record(&IpAddr::from([10, 9, 9, 9]), "erin", t0);
        assert_eq!(b, None, "fired already in this burst");
    }
}
