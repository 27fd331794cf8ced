//! `[anomaly]`: which unusual-activity rules run, with their thresholds.

use super::super::raw::anomaly::RawAnomaly;
use super::super::AnomalySettings;
use super::Checker;

impl Checker<'_, '_> {
    pub(super) fn anomaly(&mut self, _a: &RawAnomaly) -> Option<AnomalySettings> {
        Some(AnomalySettings {})
    }
}
