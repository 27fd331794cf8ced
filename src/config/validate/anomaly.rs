//! `[anomaly]`: which unusual-activity rules run, with their thresholds.
//!
//! The section being present turns every rule on with the defaults of
//! [`AnomalySettings::default`]; `RULE = false` turns one off. Thresholds
//! are bounded (at most [`MAX_THRESHOLD`]) because the rules keep that many
//! entries per user or source in memory.
//!
//! The webhook URL may carry a token (in its path or query), so messages
//! about it never quote it.

use std::net::IpAddr;

use toml::Spanned;

use super::super::raw::anomaly::RawAnomaly;
use super::super::{AnomalySettings, Webhook};
use super::extra::parse_size;
use super::Checker;

/// The largest count threshold accepted (`max_targets`, `max_failed_*`).
pub const MAX_THRESHOLD: usize = 1000;

impl Checker<'_, '_> {
    pub(super) fn anomaly(&mut self, a: &RawAnomaly) -> Option<AnomalySettings> {
        let d = AnomalySettings::default();
        let webhook = match &a.webhook {
            None => Some(None),
            Some(w) => match check_webhook(w.get_ref()) {
                Ok(url) => Some(Some(Webhook { url })),
                Err(message) => {
                    self.error(w.span(), "anomaly.webhook", message);
                    None
                }
            },
        };
        let flag = |v: &Option<Spanned<bool>>| v.as_ref().map(|b| *b.get_ref()).unwrap_or(true);
        let learning_period = self.duration(
            a.learning_period.as_ref(),
            "anomaly.learning_period",
            d.learning_period,
            true,
        );
        let max_targets =
            self.threshold(a.max_targets.as_ref(), "anomaly.max_targets", d.max_targets);
        let target_window = self.duration(
            a.target_window.as_ref(),
            "anomaly.target_window",
            d.target_window,
            false,
        );
        let max_bytes_down = match &a.max_bytes_down {
            None => Some(d.max_bytes_down),
            Some(s) => match parse_size(s.get_ref()) {
                Ok(0) => {
                    self.error(
                        s.span(),
                        "anomaly.max_bytes_down",
                        "must be greater than zero",
                    );
                    None
                }
                Ok(n) => Some(n),
                Err(message) => {
                    self.error(s.span(), "anomaly.max_bytes_down", message);
                    None
                }
            },
        };
        let max_failed_sources = self.threshold(
            a.max_failed_sources.as_ref(),
            "anomaly.max_failed_sources",
            d.max_failed_sources,
        );
        let max_failed_users = self.threshold(
            a.max_failed_users.as_ref(),
            "anomaly.max_failed_users",
            d.max_failed_users,
        );
        let failed_window = self.duration(
            a.failed_window.as_ref(),
            "anomaly.failed_window",
            d.failed_window,
            false,
        );
        Some(AnomalySettings {
            webhook: webhook?,
            new_network: flag(&a.new_network),
            unusual_hour: flag(&a.unusual_hour),
            learning_period: learning_period?,
            target_spread: flag(&a.target_spread),
            max_targets: max_targets?,
            target_window: target_window?,
            bulk_transfer: flag(&a.bulk_transfer),
            max_bytes_down: max_bytes_down?,
            failed_logins: flag(&a.failed_logins),
            max_failed_sources: max_failed_sources?,
            max_failed_users: max_failed_users?,
            failed_window: failed_window?,
        })
    }

    /// A count threshold: 1 to [`MAX_THRESHOLD`].
    fn threshold(
        &mut self,
        value: Option<&Spanned<i64>>,
        path: &str,
        default: usize,
    ) -> Option<usize> {
        let n = self.positive(value, path, default)?;
        if n > MAX_THRESHOLD {
            if let Some(v) = value {
                self.error(v.span(), path, format!("must be at most {MAX_THRESHOLD}"));
            }
            return None;
        }
        Some(n)
    }
}

/// Checks a webhook URL: `https://HOST[:PORT][/PATH]`, or `http://` to a
/// loopback address only (for tests and a local relay). The message never
/// quotes the URL (it may hold a token).
fn check_webhook(url: &str) -> Result<String, String> {
    let (https, rest) = if let Some(rest) = url.strip_prefix("https://") {
        (true, rest)
    } else if let Some(rest) = url.strip_prefix("http://") {
        (false, rest)
    } else {
        return Err("must start with https:// (or http:// to a loopback address)".into());
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if authority.is_empty() {
        return Err("has no host".into());
    }
    if authority.contains('@') {
        return Err(
            "must not carry a user or password before the host; put a token in the path or query"
                .into(),
        );
    }
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("must not contain spaces or control characters".into());
    }
    let host = host_of(authority).ok_or("has a malformed host or port")?;
    if !https {
        let loopback =
            host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
        if !loopback {
            return Err(
                "http:// is allowed only to a loopback address (127.0.0.1, [::1], localhost); use https://"
                    .into(),
            );
        }
    }
    Ok(url.to_string())
}

/// The host of `HOST[:PORT]` or `[V6][:PORT]`; None when the port is not a
/// number.
fn host_of(authority: &str) -> Option<&str> {
    if let Some(rest) = authority.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        match after {
            "" => Some(host),
            p => p.strip_prefix(':')?.parse::<u16>().ok().map(|_| host),
        }
    } else {
        match authority.split_once(':') {
            None => Some(authority),
            Some((host, port)) => port.parse::<u16>().ok().map(|_| host),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use std::path::Path;
    use std::time::Duration;

    use super::super::super::{load_str, AnomalySettings, ConfigErrors};
    use super::check_webhook;

    fn config(anomaly: &str) -> String {
        let mut key =
            russh::keys::PrivateKey::random(&mut rand::rng(), russh::keys::Algorithm::Ed25519)
                .unwrap();
        key.set_comment("alice");
        let key = key.public_key().to_openssh().unwrap();
        format!(
            r#"[gateway]
state_dir = "/var/lib/gatehouse"
ssh_listen = ["127.0.0.1:2222"]

[recordings]
recipients = ["age1zvkyg2lqzraa2lnjvqej32nkuu0ues2s82hzrye869xeexvn73equnujwj"]

[[targets]]
name = "web-1"
kind = "ssh"
address = "10.0.1.10"

[[roles]]
name = "web"
targets = {{ names = ["web-1"] }}
logins = ["deploy"]

[[users]]
name = "alice"
roles = ["web"]
ssh_keys = ["{key}"]
{anomaly}"#
        )
    }

    #[test]
    fn no_section_means_no_rules_and_an_empty_one_means_every_rule_with_defaults() {
        let none = load_str(&config(""), Path::new("g.toml")).unwrap();
        assert_eq!(none.anomaly, None);
        let empty = load_str(&config("[anomaly]\n"), Path::new("g.toml")).unwrap();
        let a = empty.anomaly.unwrap();
        assert_eq!(a, AnomalySettings::default());
        assert!(a.new_network && a.unusual_hour && a.target_spread);
        assert!(a.bulk_transfer && a.failed_logins);
        assert_eq!(a.learning_period, Duration::from_secs(14 * 86400));
        assert_eq!(a.max_bytes_down, 1 << 30);
    }

    #[test]
    fn every_key_is_read_and_each_rule_can_be_turned_off() {
        let text = config(
            r#"[anomaly]
webhook = "https://siem.example.com/hook"
new_network = false
unusual_hour = false
learning_period = "0s"
target_spread = false
max_targets = 2
target_window = "1m"
bulk_transfer = false
max_bytes_down = "64KiB"
failed_logins = false
max_failed_sources = 3
max_failed_users = 4
failed_window = "30s"
"#,
        );
        let a = load_str(&text, Path::new("g.toml"))
            .unwrap()
            .anomaly
            .unwrap();
        assert_eq!(
            a.webhook.map(|w| w.url),
            Some("https://siem.example.com/hook".to_string())
        );
        assert!(!a.new_network && !a.unusual_hour && !a.target_spread);
        assert!(!a.bulk_transfer && !a.failed_logins);
        assert_eq!(a.learning_period, Duration::ZERO);
        assert_eq!(
            (a.max_targets, a.target_window),
            (2, Duration::from_secs(60))
        );
        assert_eq!(a.max_bytes_down, 64 << 10);
        assert_eq!((a.max_failed_sources, a.max_failed_users), (3, 4));
        assert_eq!(a.failed_window, Duration::from_secs(30));
    }

    #[test]
    fn bad_values_and_unknown_keys_are_reported_with_file_line_column() {
        let text = config(
            r#"[anomaly]
webhook = "http://siem.example.com/hook?token=SECRET"
max_targets = 0
target_window = "0s"
max_bytes_down = "lots"
max_failed_users = 5000
new_netwrok = true
"#,
        );
        let ConfigErrors(errors) = load_str(&text, Path::new("g.toml")).unwrap_err();
        let shown: Vec<String> = errors.iter().map(ToString::to_string).collect();
        let line_of = |needle: &str| text.lines().position(|l| l.starts_with(needle)).unwrap() + 1;
        for (path, needle) in [
            ("anomaly.webhook", "webhook"),
            ("anomaly.max_targets", "max_targets"),
            ("anomaly.target_window", "target_window"),
            ("anomaly.max_bytes_down", "max_bytes_down"),
            ("anomaly.max_failed_users", "max_failed_users"),
            ("anomaly.new_netwrok", "new_netwrok"),
        ] {
            let e = errors
                .iter()
                .find(|e| e.path == path)
                .unwrap_or_else(|| panic!("no error at {path}: {shown:?}"));
            assert_eq!(e.line, line_of(needle), "{e}");
            assert!(e.column > 0);
            assert!(e.to_string().starts_with(&format!("g.toml:{}:", e.line)));
        }
        assert!(
            shown.iter().all(|s| !s.contains("SECRET")),
            "the webhook URL is never echoed: {shown:?}"
        );
    }

    #[test]
    fn webhook_urls_are_https_or_loopback_http() {
        assert!(check_webhook("https://siem.example.com/hook?t=x").is_ok());
        assert!(check_webhook("http://127.0.0.1:8080/hook").is_ok());
        assert!(check_webhook("http://[::1]:8080/").is_ok());
        assert!(check_webhook("http://localhost/").is_ok());
        assert!(check_webhook("http://siem.example.com/hook").is_err());
        assert!(check_webhook("ftp://siem.example.com/").is_err());
        assert!(check_webhook("https://user:pw@siem.example.com/").is_err());
        assert!(check_webhook("https://siem.example.com:x/").is_err());
        assert!(check_webhook("https:///path").is_err());
    }
}
