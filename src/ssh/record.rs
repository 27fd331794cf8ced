//! What a session's recording says about who and what it is of, and the
//! refusal when the recording cannot start. The menu (`server`) and the
//! jump (`jump`) start sessions the same way; this is the one place they
//! share, so the two never drift apart in what the sealed header names or
//! in how a fail-closed refusal is audited and told.

use crate::audit;
use crate::policy::Authorized;
use crate::recording::{RecordingError, RecordingKind, RecordingMeta};

/// The metadata of the recording of one channel of `auth`'s session
/// `session_id`: the user, login and target that were authorized, and
/// where the user logged in from (the WireGuard peer from the typed
/// source, never parsed back out of its string form).
pub fn recording_meta(
    auth: &Authorized,
    session_id: &str,
    kind: RecordingKind,
    pty: bool,
    env: Vec<(String, String)>,
) -> RecordingMeta {
    let user = auth.user();
    RecordingMeta {
        session_id: session_id.to_string(),
        user: user.name().to_string(),
        login: auth.login().to_string(),
        target: auth.target().name.clone(),
        source: user.source().to_string(),
        wireguard_peer: user.origin().wireguard_peer(),
        kind,
        record_input: auth.record_input(),
        pty,
        env,
    }
}

/// Fail closed: the recording of `auth`'s session could not start, so the
/// session does not either. Audits `session_refused` with the cause (paths
/// and OS errors stay in the audit log) and returns the message the user
/// is shown.
pub fn recording_refused(auth: &Authorized, e: &RecordingError) -> String {
    let user = auth.user();
    audit::session_refused(
        user.name(),
        auth.login(),
        &auth.target().name,
        user.source(),
        &format!("recording: {}", e.detail()),
    );
    format!("gatehouse: {e}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::AuthenticatedUser;
    use crate::config::{Target, TargetKind};
    use crate::source::{Device, Source};
    use base64::Engine as _;

    fn authorized(source: Source) -> Authorized {
        let target = Target {
            name: "web-1".into(),
            kind: TargetKind::Ssh,
            host: "127.0.0.1".into(),
            port: 22,
            host_keys: vec![],
            labels: Default::default(),
            db: None,
        };
        let user = AuthenticatedUser::for_tests_from("alice", &["ops"], source);
        Authorized::for_tests(user, target, "deploy")
    }

    #[test]
    fn the_recording_names_the_device_from_the_typed_source() {
        let device = Source::Device(Device {
            user: "alice".into(),
            public_key: [9u8; 32],
            tunnel_address: std::net::IpAddr::from([10, 77, 0, 3]),
            port: 41000,
            endpoint: None,
        });
        let key = base64::engine::general_purpose::STANDARD.encode([9u8; 32]);
        let meta = recording_meta(
            &authorized(device),
            "s-1",
            RecordingKind::Sftp,
            false,
            vec![],
        );
        assert_eq!(meta.source, format!("wg:{key}@10.77.0.3"));
        assert_eq!(meta.wireguard_peer, Some(format!("{key}@10.77.0.3")));
        assert_eq!(
            (
                meta.user.as_str(),
                meta.login.as_str(),
                meta.target.as_str()
            ),
            ("alice", "deploy", "web-1")
        );
        assert_eq!(meta.session_id, "s-1");
    }

    #[test]
    fn a_plain_connection_has_no_wireguard_peer_in_its_recording() {
        let plain = Source::Address(std::net::SocketAddr::from(([192, 0, 2, 5], 50000)));
        let meta = recording_meta(
            &authorized(plain),
            "s-2",
            RecordingKind::Sftp,
            false,
            vec![],
        );
        assert_eq!(meta.source, "192.0.2.5");
        assert_eq!(meta.wireguard_peer, None);
    }
}
