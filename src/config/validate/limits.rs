//! Validation of the limits that keep one client from owning the gateway:
//! pre-authentication caps (`gateway.max_startups*`), the age limit of an
//! authenticated connection (`auth.max_connection_age`), the upper bound on
//! every duration, and the tunnel-only settings (`ssh_listen = []`,
//! `users[].require_wireguard`), which only make sense with `[wireguard]`.

use std::time::Duration;

use super::super::raw::{index_path, key_path, RawAuth, RawConfig, RawGateway};
use super::super::{Gateway, PreAuthLimits, User};
use super::Checker;

/// The longest duration any field accepts: 10 years (3650 days). Longer
/// values are configuration mistakes, and bounding them here means adding
/// one to a clock at run time can never overflow or wrap.
pub const MAX_DURATION: Duration = Duration::from_secs(3650 * 24 * 3600);

const DEFAULT_MAX_STARTUPS: usize = 64;
const DEFAULT_MAX_STARTUPS_PER_SOURCE: usize = 8;
/// Used for `max_connection_age` when the MFA lease is disabled.
const FALLBACK_CONNECTION_AGE: Duration = Duration::from_secs(3600);

/// The message for a duration over [`MAX_DURATION`].
pub(super) fn too_long() -> String {
    "duration is too long; the maximum is 3650d (10 years)".to_string()
}

/// `auth.max_connection_age` when not set: the MFA lease, so a connection
/// never outlives the code that opened it; 1h when the lease is disabled.
pub(super) fn default_connection_age(mfa_lease: Duration) -> Duration {
    if mfa_lease.is_zero() {
        FALLBACK_CONNECTION_AGE
    } else {
        mfa_lease
    }
}

impl Checker<'_, '_> {
    /// `gateway.max_startups` and `gateway.max_startups_per_source`.
    pub(super) fn pre_auth(&mut self, g: &RawGateway) -> Option<PreAuthLimits> {
        let total = self.positive(
            g.max_startups.as_ref(),
            "gateway.max_startups",
            DEFAULT_MAX_STARTUPS,
        );
        let per_source = self.positive(
            g.max_startups_per_source.as_ref(),
            "gateway.max_startups_per_source",
            DEFAULT_MAX_STARTUPS_PER_SOURCE,
        );
        let (total, per_source) = (total?, per_source?);
        if let Some(raw) = &g.max_startups_per_source {
            if per_source > total {
                self.error(
                    raw.span(),
                    "gateway.max_startups_per_source",
                    format!("must not be larger than gateway.max_startups ({total})"),
                );
                return None;
            }
        }
        // With only the total set below the default per-source cap, the
        // per-source cap follows it down.
        Some(PreAuthLimits {
            total,
            per_source: per_source.min(total),
        })
    }

    /// `auth.max_connection_age`: default the MFA lease; never zero.
    pub(super) fn connection_age(
        &mut self,
        a: &RawAuth,
        mfa_lease: Option<Duration>,
    ) -> Option<Duration> {
        let default = default_connection_age(mfa_lease.unwrap_or_default());
        let value = a.max_connection_age.as_ref();
        if value.is_some_and(|v| super::parse_duration(v.get_ref()).is_ok_and(|d| d.is_zero())) {
            if let Some(v) = value {
                self.error(
                    v.span(),
                    "auth.max_connection_age",
                    "must be greater than zero; leave it out to use auth.mfa_lease",
                );
            }
            return None;
        }
        self.duration(value, "auth.max_connection_age", default, false)
    }

    /// `ssh_listen = []` and `require_wireguard = true` need `[wireguard]`:
    /// without it nobody (or that user) could ever connect. `None` when a
    /// problem was recorded.
    pub(super) fn tunnel_only(
        &mut self,
        raw: &RawConfig,
        gateway: Option<&Gateway>,
        users: Option<&[User]>,
    ) -> Option<()> {
        let mut ok = true;
        let has_wireguard = raw.wireguard.is_some();
        if let (Some(g), Some(list)) = (
            gateway,
            raw.gateway
                .as_ref()
                .and_then(|g| g.get_ref().ssh_listen.as_ref()),
        ) {
            if g.ssh_listen.is_empty() && !has_wireguard {
                self.error(
                    list.span(),
                    "gateway.ssh_listen",
                    "is empty and there is no [wireguard] section, so nobody could connect; \
                     list an address, e.g. \"0.0.0.0:2222\", or configure [wireguard]",
                );
                ok = false;
            }
        }
        for (i, raw_user) in raw.users.iter().enumerate() {
            let Some(raw_user) = raw_user.as_ref() else {
                continue;
            };
            let Some(flag) = raw_user.get_ref().require_wireguard.as_ref() else {
                continue;
            };
            if !*flag.get_ref() {
                continue;
            }
            let path = key_path(&index_path("users", i), "require_wireguard");
            if !has_wireguard {
                self.error(
                    flag.span(),
                    path,
                    "needs a [wireguard] section: this user could never log in; \
                     configure [wireguard] or remove require_wireguard",
                );
                ok = false;
                continue;
            }
            let devices = users
                .and_then(|u| u.get(i))
                .map_or(usize::MAX, |u| u.wireguard.len());
            if devices == 0 {
                self.error(
                    flag.span(),
                    path,
                    "this user has no WireGuard device and could never log in; \
                     add one with `gatehouse peer add USER` or remove require_wireguard",
                );
                ok = false;
            }
        }
        ok.then_some(())
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Duration;

    use proptest::prelude::*;
    use russh::keys::{Algorithm, PrivateKey};

    use super::super::{load_str, parse_duration, ConfigError, ConfigErrors};
    use crate::config::Settings;

    fn key() -> String {
        PrivateKey::random(&mut rand::rng(), Algorithm::Ed25519)
            .expect("generate key")
            .public_key()
            .to_openssh()
            .expect("encode key")
    }

    const RECORDINGS: &str = "\n[recordings]\nrecipients = [\"age1zvkyg2lqzraa2lnjvqej32nkuu0ues2s82hzrye869xeexvn73equnujwj\"]\n";
    const WIREGUARD: &str =
        "\n[wireguard]\nlisten = \"127.0.0.1:51820\"\naddress = \"10.77.0.1/24\"\n";

    /// A valid file with `gateway`, `auth` and `user` lines added in place.
    fn config(gateway: &str, auth: &str, user: &str, tail: &str) -> String {
        format!(
            "[gateway]\nstate_dir = \"/x\"\n{gateway}\n\n[auth]\n{auth}\n\n\
             [[targets]]\nname = \"web-1\"\nkind = \"ssh\"\naddress = \"10.0.1.10\"\n\n\
             [[roles]]\nname = \"web\"\ntargets = {{ names = [\"web-1\"] }}\nlogins = [\"deploy\"]\n\n\
             [[users]]\nname = \"alice\"\nroles = [\"web\"]\nssh_keys = [\"{}\"]\n{user}\n{RECORDINGS}{tail}",
            key()
        )
    }

    fn ok(text: &str) -> Settings {
        load_str(text, Path::new("g.toml")).unwrap_or_else(|e| panic!("{e}\n{text}"))
    }

    fn errs(text: &str) -> Vec<ConfigError> {
        match load_str(text, Path::new("g.toml")) {
            Ok(_) => panic!("expected errors:\n{text}"),
            Err(ConfigErrors(e)) => e,
        }
    }

    fn at<'e>(e: &'e [ConfigError], path: &str) -> &'e ConfigError {
        e.iter()
            .find(|e| e.path == path)
            .unwrap_or_else(|| panic!("no error at {path}: {e:?}"))
    }

    const LISTEN: &str = "ssh_listen = [\"127.0.0.1:2222\"]";

    #[test]
    fn pre_auth_caps_default_to_64_and_8_and_are_checked() {
        let s = ok(&config(LISTEN, "", "", ""));
        assert_eq!(s.gateway.pre_auth.total, 64);
        assert_eq!(s.gateway.pre_auth.per_source, 8);
        let s = ok(&config(
            &format!("{LISTEN}\nmax_startups = 10\nmax_startups_per_source = 3"),
            "",
            "",
            "",
        ));
        assert_eq!(
            (s.gateway.pre_auth.total, s.gateway.pre_auth.per_source),
            (10, 3)
        );
        let e = errs(&config(
            &format!("{LISTEN}\nmax_startups = 4\nmax_startups_per_source = 5"),
            "",
            "",
            "",
        ));
        assert!(at(&e, "gateway.max_startups_per_source")
            .message
            .contains("max_startups"));
        let e = errs(&config(&format!("{LISTEN}\nmax_startups = 0"), "", "", ""));
        assert_eq!(at(&e, "gateway.max_startups").line, 4);
    }

    #[test]
    fn max_connection_age_defaults_to_the_mfa_lease_and_is_never_zero() {
        let s = ok(&config(LISTEN, "mfa_lease = \"20m\"", "", ""));
        assert_eq!(s.auth.max_connection_age, Duration::from_secs(1200));
        let s = ok(&config(LISTEN, "mfa_lease = \"0s\"", "", ""));
        assert_eq!(s.auth.max_connection_age, Duration::from_secs(3600));
        let s = ok(&config(LISTEN, "max_connection_age = \"5s\"", "", ""));
        assert_eq!(s.auth.max_connection_age, Duration::from_secs(5));
        let e = errs(&config(LISTEN, "max_connection_age = \"0s\"", "", ""));
        assert!(at(&e, "auth.max_connection_age")
            .message
            .contains("mfa_lease"));
    }

    #[test]
    fn an_empty_ssh_listen_needs_wireguard_and_says_so() {
        let e = errs(&config("ssh_listen = []", "", "", ""));
        let err = at(&e, "gateway.ssh_listen");
        assert_eq!((err.line, err.column), (3, 14));
        assert!(err.message.contains("[wireguard]"), "{}", err.message);
        let s = ok(&config("ssh_listen = []", "", "", WIREGUARD));
        assert!(s.gateway.ssh_listen.is_empty());
    }

    #[test]
    fn require_wireguard_needs_wireguard_and_a_device() {
        let e = errs(&config(LISTEN, "", "require_wireguard = true", ""));
        assert!(at(&e, "users[0].require_wireguard")
            .message
            .contains("[wireguard]"));
        let e = errs(&config(LISTEN, "", "require_wireguard = true", WIREGUARD));
        assert!(at(&e, "users[0].require_wireguard")
            .message
            .contains("no WireGuard device"));
        let device = "require_wireguard = true\nwireguard = [{ public_key = \"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\", address = \"10.77.0.10\" }]";
        let s = ok(&config(LISTEN, "", device, WIREGUARD));
        assert!(s.users[0].require_wireguard);
        assert!(!ok(&config(LISTEN, "", "", "")).users[0].require_wireguard);
    }

    #[test]
    fn durations_over_ten_years_are_refused_in_place() {
        assert_eq!(
            parse_duration("3650d").unwrap(),
            Duration::from_secs(3650 * 86_400)
        );
        for huge in ["3651d", "3650d1s", "100000d", "87601h", "99999999999999d"] {
            let m = parse_duration(huge).unwrap_err();
            assert!(m.contains("3650d"), "{huge}: {m}");
        }
        let text = config(LISTEN, "lockout = \"100000d\"", "", "");
        let e = errs(&text);
        let err = at(&e, "auth.lockout");
        assert_eq!((err.line, err.column), (6, 11));
    }

    /// A valid file to cut and splice in the property tests.
    fn sample() -> String {
        config(
            &format!("{LISTEN}\nmax_startups = 10"),
            "max_connection_age = \"1h\"",
            "",
            WIREGUARD,
        )
    }

    proptest! {
        // 256 cases by default; PROPTEST_CASES=100000 for a longer run.
        #[test]
        fn arbitrary_text_never_panics_the_config_reader(text in "\\PC{0,300}") {
            let _ = load_str(&text, Path::new("p.toml"));
        }

        #[test]
        fn a_valid_file_with_bytes_spliced_in_never_panics(
            at in 0usize..2000,
            cut in 0usize..40,
            insert in "[\\[\\]{}=\"',.\\n a-z0-9_#\\\\\\u{0}-\\u{7f}\\u{e9}\\u{1F600}]{0,20}",
        ) {
            let base = sample();
            let mut at = at.min(base.len());
            while !base.is_char_boundary(at) {
                at -= 1;
            }
            let mut end = (at + cut).min(base.len());
            while !base.is_char_boundary(end) {
                end -= 1;
            }
            let text = format!("{}{insert}{}", &base[..at], &base[end..]);
            if let Err(ConfigErrors(errors)) = load_str(&text, Path::new("p.toml")) {
                for e in errors {
                    // Positions point into the file.
                    prop_assert!(e.line <= text.lines().count() + 1);
                }
            }
        }

        #[test]
        fn any_duration_text_parses_or_errs_within_the_bound(text in "[0-9dhms]{0,24}") {
            if let Ok(d) = parse_duration(&text) {
                prop_assert!(d <= super::MAX_DURATION);
            }
        }
    }
}
