//! `[control]` and `[metrics]`: how operators reach the running daemon.

use std::net::SocketAddr;
use std::path::PathBuf;

use super::super::raw::{RawControl, RawMetrics};
use super::super::{ControlSettings, MetricsSettings};
use super::Checker;

impl Checker<'_, '_> {
    pub(super) fn control(&mut self, c: &RawControl) -> Option<ControlSettings> {
        let socket = match &c.socket {
            None => Some(ControlSettings::default().socket),
            Some(s) if s.get_ref().is_empty() => {
                self.error(s.span(), "control.socket", "must not be empty");
                None
            }
            Some(s) if !s.get_ref().starts_with('/') => {
                self.error(
                    s.span(),
                    "control.socket",
                    "must be an absolute path, e.g. \"/run/gatehouse/control.sock\"",
                );
                None
            }
            Some(s) => Some(PathBuf::from(s.get_ref())),
        };
        let group = match &c.group {
            None => Some(None),
            Some(g) => {
                let name = g.get_ref();
                let valid = !name.is_empty()
                    && name.len() <= 32
                    && name
                        .chars()
                        .all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '_' | '-' | '.'));
                if valid {
                    Some(Some(name.clone()))
                } else {
                    self.error(
                        g.span(),
                        "control.group",
                        "must be a group name (letters, digits, `_`, `-`, `.`; at most 32)",
                    );
                    None
                }
            }
        };
        Some(ControlSettings {
            socket: socket?,
            group: group?,
        })
    }

    pub(super) fn metrics(&mut self, m: &RawMetrics) -> Option<MetricsSettings> {
        let listen = match &m.listen {
            None => None,
            Some(l) => match l.get_ref().parse::<SocketAddr>() {
                Ok(a) => Some(a),
                Err(_) => {
                    self.error(
                        l.span(),
                        "metrics.listen",
                        format!(
                            "`{}` is not a socket address; write e.g. \"127.0.0.1:9469\"",
                            l.get_ref()
                        ),
                    );
                    return None;
                }
            },
        };
        Some(MetricsSettings { listen })
    }
}
