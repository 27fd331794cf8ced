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
