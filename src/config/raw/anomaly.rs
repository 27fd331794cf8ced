//! `[anomaly]` as written in the file (checked in `validate/anomaly.rs`).

use toml::Spanned;

use super::{Diag, Table};

/// Every key `[anomaly]` accepts.
const KEYS: &[&str] = &[
    "webhook",
    "new_network",
    "unusual_hour",
    "learning_period",
    "target_spread",
    "max_targets",
    "target_window",
    "bulk_transfer",
    "max_bytes_down",
    "failed_logins",
    "max_failed_sources",
    "max_failed_users",
    "failed_window",
];

/// `[anomaly]`
#[derive(Debug, Default)]
pub(in crate::config) struct RawAnomaly {
    pub webhook: Option<Spanned<String>>,
    pub new_network: Option<Spanned<bool>>,
    pub unusual_hour: Option<Spanned<bool>>,
    pub learning_period: Option<Spanned<String>>,
    pub target_spread: Option<Spanned<bool>>,
    pub max_targets: Option<Spanned<i64>>,
    pub target_window: Option<Spanned<String>>,
    pub bulk_transfer: Option<Spanned<bool>>,
    pub max_bytes_down: Option<Spanned<String>>,
    pub failed_logins: Option<Spanned<bool>>,
    pub max_failed_sources: Option<Spanned<i64>>,
    pub max_failed_users: Option<Spanned<i64>>,
    pub failed_window: Option<Spanned<String>>,
}

pub(super) fn parse(t: &Table<'_, '_>, diags: &mut Vec<Diag>) -> RawAnomaly {
    t.deny_unknown(KEYS, diags);
    RawAnomaly {
        webhook: t.string("webhook", false, diags),
        new_network: t.boolean("new_network", diags),
        unusual_hour: t.boolean("unusual_hour", diags),
        learning_period: t.string("learning_period", false, diags),
        target_spread: t.boolean("target_spread", diags),
        max_targets: t.integer("max_targets", diags),
        target_window: t.string("target_window", false, diags),
        bulk_transfer: t.boolean("bulk_transfer", diags),
        max_bytes_down: t.string("max_bytes_down", false, diags),
        failed_logins: t.boolean("failed_logins", diags),
        max_failed_sources: t.integer("max_failed_sources", diags),
        max_failed_users: t.integer("max_failed_users", diags),
        failed_window: t.string("failed_window", false, diags),
    }
}
