//! A ready gateway world for gatehouse tests: a real sshd as target `web-1`
//! that trusts gatehouse's client key, a running gatehouse where `alice`
//! (role `web`: web-1 as the sshd login) is enrolled, and alice's stock
//! OpenSSH client with the current TOTP code loaded.

use std::time::Duration;

use tempfile::TempDir;

use super::{gen_ed25519, totp, totp_step, Gatehouse, GatehouseBuilder, KeyPair, SshClient, Sshd};

pub struct World {
    pub sshd: Sshd,
    pub gw: Gatehouse,
    pub key: KeyPair,
    pub secret: String,
    pub client: SshClient,
    /// The login that role `web` grants on web-1 (the user tests run as).
    pub login: String,
    pub keys: TempDir,
}

impl World {
    /// Starts the world; `tweak` may add config to the builder (which already
    /// has alice, role web and target web-1).
    pub fn start(tweak: impl FnOnce(GatehouseBuilder) -> GatehouseBuilder) -> World {
        World::with_roles(&["web"], tweak)
    }

    /// Like [`World::start`], with alice holding exactly `roles`.
    pub fn with_roles(
        roles: &[&str],
        tweak: impl FnOnce(GatehouseBuilder) -> GatehouseBuilder,
    ) -> World {
        let keys = tempfile::Builder::new()
            .prefix("gh-keys-")
            .tempdir()
            .expect("tempdir");
        let key = gen_ed25519(keys.path(), "alice");
        let sshd = Sshd::start(&[]);
        let login = sshd.login.clone();
        let builder = GatehouseBuilder::new()
            .user("alice", roles, &[&key.public_line])
            .role("web", &["web-1"], &[&login])
            .ssh_target("web-1", sshd.port, &[&sshd.host_public_key]);
        let setup = tweak(builder).build();
        sshd.set_authorized_keys(&[&setup.client_pubkey()]);
        let secret = setup.enroll("alice");
        let gw = setup.start();
        let client = SshClient::new(&key, "alice", &gw, &["web-1"]);
        client.set_code(&totp(&secret));
        World {
            sshd,
            gw,
            key,
            secret,
            client,
            login,
            keys,
        }
    }

    /// A code a ±1-step verifier accepts now that is not the current one
    /// (the next step's), for a second code login within one test.
    pub fn next_code(&self) -> String {
        totp_step(&self.secret, 1)
    }

    /// Waits for a `session.end` audit event and returns it.
    pub fn session_end(&self) -> serde_json::Value {
        self.gw
            .wait_for_event_named("session.end", Duration::from_secs(15))
            .expect("a session.end audit event")
    }
}

/// stdout of an Output as a String.
pub fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).to_string()
}

/// stderr of an Output as a String.
pub fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}
