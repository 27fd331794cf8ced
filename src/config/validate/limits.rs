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
