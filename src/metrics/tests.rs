//! Unit tests: label values stay in their fixed sets, the request line is
//! classified strictly, and the exposition carries every family.

use super::http::{classify, Request};
use super::*;

#[test]
fn label_values_outside_the_fixed_set_are_other() {
    assert_eq!(pick("ok", LOGIN_RESULTS), "ok");
    assert_eq!(pick("alice", LOGIN_RESULTS), "other");
    assert_eq!(pick("'; DROP TABLE x", REFUSAL_REASONS), "other");
    assert_eq!(
        refusal_reason("no role grants the target", "other"),
        "no_role"
    );
    assert_eq!(
        refusal_reason("recording: disk full at /var/x", "other"),
        "recording"
    );
    assert_eq!(
        refusal_reason("anything a client said", "database"),
        "database"
    );
    assert_eq!(
        refusal_reason("user:alice is locked by an administrator", "other"),
        "admin_lock"
    );
    assert_eq!(refusal_reason("no_descriptors", "other"), "no_descriptors");
}

#[test]
fn request_line_is_classified_strictly() {
    assert_eq!(
        classify(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
        Request::Metrics
    );
    assert_eq!(
        classify(b"GET /metrics?x=1 HTTP/1.0\r\n\r\n"),
        Request::Metrics
    );
    assert_eq!(classify(b"GET / HTTP/1.1\r\n\r\n"), Request::NotFound);
    assert_eq!(
        classify(b"GET /metricsx HTTP/1.1\r\n\r\n"),
        Request::NotFound
    );
    assert_eq!(
        classify(b"POST /metrics HTTP/1.1\r\n\r\n"),
        Request::MethodNotAllowed
    );
    assert_eq!(classify(b"GET /metrics\r\n\r\n"), Request::Malformed);
    assert_eq!(
        classify(b"GET /metrics SSH-2.0\r\n\r\n"),
        Request::Malformed
    );
    assert_eq!(
        classify(b"\xff\xfe /metrics HTTP/1.1\r\n\r\n"),
        Request::Malformed
    );
    assert_eq!(classify(b""), Request::Malformed);
}

#[test]
fn exposition_has_every_family_and_bounded_labels() {
    login("ok", "code");
    auth_attempt("keyboard-interactive", "failure");
    refusal("some free text from a client");
    anomaly("new_network");
    anomaly("Not A Rule Name!");
    session_ended("ssh", Duration::from_secs(3));
    wireguard(WireGuardCounters {
        peers: 2,
        dropped: [1, 0, 0, 0, 5, 0, 0, 0, 0, 0],
        resent: 7,
    });
    let live = crate::live::Registry::new();
    let text = render(&live);
    for family in [
        "gatehouse_logins_total",
        "gatehouse_auth_attempts_total",
        "gatehouse_lockouts_total",
        "gatehouse_refusals_total",
        "gatehouse_live_sessions",
        "gatehouse_session_duration_seconds",
        "gatehouse_bytes_relayed_total",
        "gatehouse_recording_segments_sealed_total",
        "gatehouse_recorder_queue_bytes",
        "gatehouse_recording_failures_total",
        "gatehouse_wireguard_peers",
        "gatehouse_wireguard_handshakes_total",
        "gatehouse_wireguard_dropped_total",
        "gatehouse_wireguard_tcp_resent_total",
        "gatehouse_db_statements_total",
        "gatehouse_db_errors_total",
        "gatehouse_config_reloads_total",
        "gatehouse_locks_in_force",
        "gatehouse_anomalies_total",
    ] {
        assert!(
            text.contains(&format!("# TYPE {family} ")),
            "{family} missing from:\n{text}"
        );
    }
    assert!(text.contains("gatehouse_refusals_total{reason=\"other\"}"));
    assert!(!text.contains("some free text"));
    assert!(text.contains("gatehouse_anomalies_total{rule=\"new_network\"}"));
    assert!(text.contains("gatehouse_anomalies_total{rule=\"other\"}"));
    assert!(!text.contains("Not A Rule"));
    assert!(text.contains("gatehouse_wireguard_dropped_total{reason=\"spoofed\"}"));
    assert!(text.contains("gatehouse_wireguard_peers 2"));
}
