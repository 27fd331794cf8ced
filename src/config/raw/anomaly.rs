//! `[anomaly]` as written in the file (checked in `validate/anomaly.rs`).

use super::{Diag, Table};

/// `[anomaly]`
#[derive(Debug, Default)]
pub(in crate::config) struct RawAnomaly {}

pub(super) fn parse(t: &Table<'_, '_>, diags: &mut Vec<Diag>) -> RawAnomaly {
    t.deny_unknown(&[], diags);
    RawAnomaly {}
}
