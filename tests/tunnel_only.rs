//! A user with `require_wireguard = true`, both ways, with a real
//! wireguard-go device in network namespaces: through the tunnel they log in
//! and jump; on the plain TCP listener they are refused with an audit event.
//! (`tests/preauth.rs` checks the refusal's message without namespaces.)

mod common;

use std::time::Duration;

use common::netns::{self, WgWorld};
use common::run_with_timeout;
use common::world::{stderr, stdout};

const SSH_TIMEOUT: Duration = Duration::from_secs(90);

#[test]
fn a_tunnel_only_user_logs_in_through_wireguard_and_not_on_the_plain_listener() {
    let Some(lab) = netns::enter(
        "a_tunnel_only_user_logs_in_through_wireguard_and_not_on_the_plain_listener",
        1,
    ) else {
        return;
    };
    let mut w = WgWorld::start(lab, 1, |b| b);
    // The device exists now (peer add needs a valid file first): require it.
    let setup = w.gw.setup().clone();
    setup.rewrite(
        &setup
            .builder()
            .user_line("alice", "require_wireguard = true"),
    );
    w.gw.restart();
    let _device = w.connect(0);
    let out = run_with_timeout(&mut w.jump(0, &["echo", "through-the-tunnel"]), SSH_TIMEOUT)
        .expect("ssh finished");
    assert!(
        out.status.success() && stdout(&out).contains("through-the-tunnel"),
        "the tunnel login of a tunnel-only user failed: {}",
        stderr(&out)
    );
    // The plain listener of the same gateway refuses her.
    w.client.set_code(&w.next_code());
    let out = w.client.run_jump(&w.login, "web-1", &["echo", "plain"]);
    assert!(!out.status.success() && !stdout(&out).contains("plain"));
    assert!(w
        .gw
        .wait_for_event(
            |e| e["event"] == "auth.attempt"
                && e["reason"]
                    .as_str()
                    .unwrap_or_default()
                    .contains("require_wireguard"),
            Duration::from_secs(5),
        )
        .is_some());
    assert_eq!(w.gw.events("login").len(), 1, "only the tunnel login");
}
