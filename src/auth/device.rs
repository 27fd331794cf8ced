//! Database logins from a WireGuard device: the device is the first
//! factor (the tunnel verified its key, and the configuration binds it to
//! one user), and the second is a live MFA lease of that device or the
//! user's current TOTP code given as the database password. The result is
//! an [`AuthenticatedUser`] without an SSH key (fingerprint `-`).
//!
//! The code check, replay state and lock rules are the SSH login's own
//! (`Authenticator::check_code`): one TOTP step is spent once for SSH and
//! databases together, and wrong codes from a device count against its
//! user.

use std::time::Instant;

use super::lease::LeaseKey;
use super::lockout::Subject;
use super::{
    lock, AdmittedBy, AuthenticatedUser, Authenticator, CodeCheck, CodeOutcome, NO_KEY_FINGERPRINT,
};
use crate::source::Source;
use crate::state::StateError;

impl Authenticator {
    /// A live MFA lease held by this WireGuard device's user from this
    /// device: `source` is a [`Source::Device`] of a configured user, and a
    /// key + code login (SSH, any of her keys) or a code given as a database
    /// password came from this same device (the lease's source label is
    /// `source.to_string()`) within `auth.mfa_lease`. A lock on the user or
    /// on the device's address refuses. The result has no key.
    ///
    /// Another device of the same user, or a plain TCP source, is never
    /// covered: the device is the first factor here.
    pub fn device_lease(&self, source: &Source) -> Option<AuthenticatedUser> {
        let device = source.device()?;
        if !self.device_is_configured(device) || self.locked(&device.user, source.ip()).is_some() {
            return None;
        }
        let held = lock(&self.leases).held_from(&device.user, &source.to_string(), Instant::now());
        if !held {
            return None;
        }
        self.device_succeeded(&device.user, source);
        Some(self.admit_device(&device.user, source, AdmittedBy::Lease))
    }

    /// The user's TOTP code given as a database password from a WireGuard
    /// device: the first factor is the device (`source` must be a
    /// [`Source::Device`]; its user is the one the code is checked for).
    ///
    /// The same replay state and lock rules as [`Self::verify_code`]: a
    /// step is spent once for SSH and databases together; a wrong or reused
    /// code counts against the device's user; a lock on the user or on the
    /// device's address refuses ([`CodeOutcome::Locked`]). Success clears the
    /// failure counts of the user and the address and grants a lease for
    /// this device, so the device's next connection is admitted by
    /// [`Self::device_lease`]. A source that is not a device, or a device of
    /// a user no longer configured, has no one to check the code for:
    /// [`CodeOutcome::NotEnrolled`], nothing counted.
    ///
    /// Blocking (call in `spawn_blocking`): reads the sealed secret and
    /// writes the replay state.
    pub fn verify_device_code(
        &self,
        source: &Source,
        code: &str,
    ) -> Result<CodeOutcome, StateError> {
        self.verify_device(source, |auth, user| {
            auth.check_code(user, source.ip(), code)
        })
    }

    /// [`Self::verify_device_code`] for a client that proves it knows the
    /// code without sending it: MySQL's `mysql_native_password` and
    /// `caching_sha2_password` scrambles. `matches(code)` says, in constant
    /// time, whether the client's response was made from `code`; it is
    /// asked about each code valid now. Same replay state, counting, locks
    /// and lease as a code given in full.
    ///
    /// Blocking (call in `spawn_blocking`).
    pub fn verify_device_proof(
        &self,
        source: &Source,
        matches: &dyn Fn(&str) -> bool,
    ) -> Result<CodeOutcome, StateError> {
        self.verify_device(source, |auth, user| {
            auth.check_proof(user, source.ip(), matches)
        })
    }

    fn verify_device(
        &self,
        source: &Source,
        check: impl FnOnce(&Self, &str) -> Result<super::CodeCheck, StateError>,
    ) -> Result<CodeOutcome, StateError> {
        let Some(device) = source.device() else {
            return Ok(CodeOutcome::NotEnrolled);
        };
        let user = device.user.as_str();
        if !self.device_is_configured(device) {
            return Ok(CodeOutcome::NotEnrolled);
        }
        match check(self, user)? {
            CodeCheck::Refused(outcome) => Ok(outcome),
            CodeCheck::Accepted => {
                self.device_succeeded(user, source);
                let key = LeaseKey {
                    user: user.to_string(),
                    key_fingerprint: NO_KEY_FINGERPRINT.to_string(),
                    source: source.to_string(),
                };
                lock(&self.leases).grant(key, Instant::now());
                Ok(CodeOutcome::Accepted(Box::new(self.admit_device(
                    user,
                    source,
                    AdmittedBy::Code,
                ))))
            }
        }
    }

    /// Whether the configuration in force still gives this device (its key
    /// at its address) to its user: a reload that removed or moved it
    /// admits nothing through it, even before the tunnel drops it.
    fn device_is_configured(&self, device: &crate::source::Device) -> bool {
        self.settings.get().users.iter().any(|u| {
            u.name == device.user
                && u.wireguard.iter().any(|d| {
                    d.public_key == device.public_key && d.address == device.tunnel_address
                })
        })
    }

    /// A complete device login clears the failure counts of its user and
    /// the device's address.
    fn device_succeeded(&self, user: &str, source: &Source) {
        self.lockouts
            .success(&[Subject::User(user), Subject::Source(source.ip())]);
    }

    /// A login without an SSH key, by a WireGuard device of `user`.
    fn admit_device(&self, user: &str, source: &Source, by: AdmittedBy) -> AuthenticatedUser {
        AuthenticatedUser {
            name: user.to_string(),
            roles: self.roles_of(user),
            key: None,
            fingerprint: NO_KEY_FINGERPRINT.to_string(),
            source: source.clone(),
            source_label: source.to_string(),
            admitted_by: by,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use std::net::{IpAddr, SocketAddr};
    use std::path::Path;
    use std::sync::Arc;

    use russh::keys::{Algorithm, PrivateKey, PublicKey};

    use super::super::{totp, unix_now, AdmittedBy, Authenticator, CodeOutcome};
    use crate::config;
    use crate::source::{Device, Source};
    use crate::state::StateDir;

    const SECRET: &[u8] = b"0123456789abcdefghij";

    /// An authenticator for users alice (enrolled, one key) and bob (not
    /// enrolled) with `max_failures` and `mfa_lease`, in its own state dir.
    struct Fixture {
        auth: Authenticator,
        alice_key: PublicKey,
        _tmp: tempfile::TempDir,
    }

    fn key() -> PublicKey {
        PrivateKey::random(&mut rand::rng(), Algorithm::Ed25519)
            .unwrap()
            .public_key()
            .clone()
    }

    fn fixture(max_failures: u32, mfa_lease: &str) -> Fixture {
        let tmp = tempfile::tempdir().unwrap();
        let state_dir = tmp.path().join("state");
        let alice_key = key();
        // alice's devices are numbers 2, 3 and 4 (see `device`); bob's is 5.
        let dev = |n: u8| {
            use base64::Engine as _;
            format!(
                "{{ public_key = \"{}\", address = \"10.77.0.{n}\" }}",
                base64::engine::general_purpose::STANDARD.encode([n; 32])
            )
        };
        let text = format!(
            "[gateway]\nstate_dir = \"{}\"\nssh_listen = [\"127.0.0.1:2222\"]\n\n\
             [wireguard]\nlisten = \"127.0.0.1:51820\"\naddress = \"10.77.0.1/24\"\n\n\
             [auth]\nmax_failures = {max_failures}\nmfa_lease = \"{mfa_lease}\"\n\n\
             [[targets]]\nname = \"db-1\"\nkind = \"postgres\"\naddress = \"127.0.0.1\"\ntunnel_port = 15432\ntls = \"disable\"\n\n\
             [[roles]]\nname = \"dba\"\ntargets = {{ names = [\"db-1\"] }}\nlogins = [\"app_ro\"]\n\n\
             [[users]]\nname = \"alice\"\nroles = [\"dba\"]\nssh_keys = [\"{}\"]\nwireguard = [{}, {}, {}]\n\n\
             [[users]]\nname = \"bob\"\nroles = [\"dba\"]\nssh_keys = [\"{}\"]\nwireguard = [{}]\n\n\
             [recordings]\nrecipients = [\"age1zvkyg2lqzraa2lnjvqej32nkuu0ues2s82hzrye869xeexvn73equnujwj\"]\n",
            state_dir.display(),
            alice_key.to_openssh().unwrap(),
            dev(2),
            dev(3),
            dev(4),
            key().to_openssh().unwrap(),
            dev(5),
        );
        let settings = config::load_str(&text, Path::new("g.toml")).unwrap();
        let state = StateDir::open(&state_dir).unwrap();
        state.store_totp_secret("alice", SECRET).unwrap();
        let auth = Authenticator::new(Arc::new(settings), Arc::new(state)).unwrap();
        Fixture {
            auth,
            alice_key,
            _tmp: tmp,
        }
    }

    /// A connection from `user`'s WireGuard device number `n`.
    fn device(user: &str, n: u8, port: u16) -> Source {
        Source::Device(Device {
            user: user.into(),
            public_key: [n; 32],
            tunnel_address: IpAddr::from([10, 77, 0, n]),
            port,
            endpoint: Some(SocketAddr::from(([192, 0, 2, n], 51820))),
        })
    }

    /// The code of the current step (`ahead` steps later).
    fn code(ahead: u64) -> String {
        totp::code_at(SECRET, unix_now() + 30 * ahead).unwrap()
    }

    /// A six-digit code that is none of the codes accepted right now.
    fn wrong_code() -> String {
        let now = unix_now();
        let valid: Vec<String> = [now - 30, now, now + 30, now + 60]
            .iter()
            .map(|&t| totp::code_at(SECRET, t).unwrap())
            .collect();
        (0..10u32)
            .map(|d| format!("{d}{d}{d}{d}{d}{d}"))
            .find(|c| !valid.contains(c))
            .unwrap()
    }

    fn accepted(outcome: CodeOutcome) -> super::AuthenticatedUser {
        match outcome {
            CodeOutcome::Accepted(u) => *u,
            other => panic!("not accepted: {other:?}"),
        }
    }

    #[test]
    fn an_ssh_key_and_code_login_from_a_device_gives_that_device_a_lease() {
        let f = fixture(5, "1h");
        let dev = device("alice", 2, 40000);
        assert!(
            f.auth.device_lease(&dev).is_none(),
            "a lease before any login"
        );
        let kv = f.auth.verify_key("alice", &f.alice_key, &dev).unwrap();
        accepted(f.auth.verify_code(&kv, &code(0)).unwrap());
        // A later connection (another source port) from the same device.
        let u = f
            .auth
            .device_lease(&device("alice", 2, 40001))
            .expect("the device's lease admits it");
        assert_eq!(u.name(), "alice");
        assert_eq!(u.roles(), ["dba"]);
        assert_eq!(u.admitted_by(), AdmittedBy::Lease);
        assert!(u.key().is_none());
        assert_eq!(u.fingerprint(), "-");
        assert_eq!(u.source(), dev.to_string());
    }

    #[test]
    fn a_lease_does_not_admit_another_device_or_address_of_the_same_user() {
        let f = fixture(5, "1h");
        let dev = device("alice", 2, 40000);
        let kv = f.auth.verify_key("alice", &f.alice_key, &dev).unwrap();
        accepted(f.auth.verify_code(&kv, &code(0)).unwrap());
        assert!(f.auth.device_lease(&dev).is_some());
        assert!(
            f.auth.device_lease(&device("alice", 3, 40000)).is_none(),
            "another device of the same user"
        );
        assert!(
            f.auth.device_lease(&device("bob", 2, 40000)).is_none(),
            "the same label for another user"
        );
        let plain = Source::Address(SocketAddr::from(([10, 77, 0, 2], 40000)));
        assert!(f.auth.device_lease(&plain).is_none(), "a plain address");
    }

    #[test]
    fn a_device_code_is_accepted_once_and_a_reused_code_is_refused_and_counted() {
        let f = fixture(2, "1h");
        let dev = device("alice", 2, 40000);
        let c = code(0);
        let u = accepted(f.auth.verify_device_code(&dev, &c).unwrap());
        assert_eq!((u.name(), u.admitted_by()), ("alice", AdmittedBy::Code));
        assert!(u.key().is_none());
        assert_eq!(u.fingerprint(), "-");
        // The step is spent for SSH too: one replay state.
        let other = device("alice", 3, 40000);
        let kv = f.auth.verify_key("alice", &f.alice_key, &other).unwrap();
        match f.auth.verify_code(&kv, &c).unwrap() {
            CodeOutcome::Reused { lock: None } => {}
            o => panic!("the same code over SSH: {o:?}"),
        }
        // The second reuse reaches max_failures = 2: both were counted.
        match f.auth.verify_device_code(&dev, &c).unwrap() {
            CodeOutcome::Reused { lock: Some(lock) } => assert_eq!(lock.subject, "user:alice"),
            o => panic!("reused code: {o:?}"),
        }
    }

    #[test]
    fn wrong_device_codes_lock_the_user_after_max_failures() {
        let f = fixture(3, "1h");
        let dev = device("alice", 2, 40000);
        let bad = wrong_code();
        for _ in 0..2 {
            match f.auth.verify_device_code(&dev, &bad).unwrap() {
                CodeOutcome::Wrong { lock: None } => {}
                o => panic!("wrong code: {o:?}"),
            }
        }
        match f.auth.verify_device_code(&dev, &bad).unwrap() {
            CodeOutcome::Wrong { lock: Some(lock) } => assert_eq!(lock.subject, "user:alice"),
            o => panic!("third wrong code: {o:?}"),
        }
        // Locked: the right code is refused, from this device and any other
        // source, and the user's SSH logins too.
        assert!(matches!(
            f.auth.verify_device_code(&dev, &code(0)).unwrap(),
            CodeOutcome::Locked { .. }
        ));
        assert!(matches!(
            f.auth
                .verify_device_code(&device("alice", 3, 1), &code(0))
                .unwrap(),
            CodeOutcome::Locked { .. }
        ));
        let plain = Source::Address(SocketAddr::from(([192, 0, 2, 50], 50000)));
        assert!(f.auth.verify_key("alice", &f.alice_key, &plain).is_err());
    }

    #[test]
    fn a_device_code_success_grants_a_lease_for_that_device_only() {
        let f = fixture(5, "1h");
        let dev = device("alice", 2, 40000);
        assert!(f.auth.device_lease(&dev).is_none());
        accepted(f.auth.verify_device_code(&dev, &code(0)).unwrap());
        let u = f
            .auth
            .device_lease(&device("alice", 2, 40001))
            .expect("the next connection from the device");
        assert_eq!(u.admitted_by(), AdmittedBy::Lease);
        assert!(f.auth.device_lease(&device("alice", 3, 40000)).is_none());
        // It stands in for no SSH key: an SSH login still needs a code.
        let kv = f.auth.verify_key("alice", &f.alice_key, &dev).unwrap();
        assert!(f.auth.lease(&kv).is_none());
    }

    #[test]
    fn a_lock_on_the_device_address_refuses_its_lease_and_its_code() {
        let f = fixture(2, "1h");
        let dev = device("alice", 2, 40000);
        accepted(f.auth.verify_device_code(&dev, &code(0)).unwrap());
        assert!(f.auth.device_lease(&dev).is_some());
        for _ in 0..2 {
            f.auth.unproven_failure(dev.ip());
        }
        assert!(
            f.auth.device_lease(&dev).is_none(),
            "a lease despite a lock"
        );
        assert!(matches!(
            f.auth.verify_device_code(&dev, &code(1)).unwrap(),
            CodeOutcome::Locked { .. }
        ));
    }

    #[test]
    fn a_plain_source_or_an_unknown_user_is_not_checked_and_nothing_is_counted() {
        let f = fixture(1, "1h");
        let plain = Source::Address(SocketAddr::from(([10, 77, 0, 2], 40000)));
        let bad = wrong_code();
        for source in [plain, device("mallory", 9, 1)] {
            assert!(matches!(
                f.auth.verify_device_code(&source, &bad).unwrap(),
                CodeOutcome::NotEnrolled
            ));
        }
        // max_failures = 1: had anything counted against alice or the
        // address, this would be locked.
        accepted(
            f.auth
                .verify_device_code(&device("alice", 2, 1), &code(0))
                .unwrap(),
        );
    }

    #[test]
    fn a_zero_mfa_lease_gives_devices_no_lease() {
        let f = fixture(5, "0s");
        let dev = device("alice", 2, 40000);
        accepted(f.auth.verify_device_code(&dev, &code(0)).unwrap());
        assert!(f.auth.device_lease(&dev).is_none());
    }

    /// A client's proof of a code, as MySQL's native scramble makes it.
    fn proof(code: &str, nonce: &[u8]) -> Vec<u8> {
        crate::db::mysql::upstream::auth::native_scramble(code.as_bytes(), nonce).to_vec()
    }

    #[test]
    fn a_scrambled_code_is_accepted_once_and_a_wrong_or_reused_one_counts_against_the_user() {
        let f = fixture(3, "1h");
        let dev = device("alice", 4, 40000);
        let nonce = [0x2Au8; 20];
        let check = |answer: Vec<u8>| {
            f.auth
                .verify_device_proof(&dev, &|c: &str| proof(c, &nonce) == answer)
                .unwrap()
        };
        let wrong = check(proof(&wrong_code(), &nonce));
        assert!(matches!(wrong, CodeOutcome::Wrong { .. }), "{wrong:?}");
        let right = proof(&code(0), &nonce);
        let u = accepted(check(right.clone()));
        assert_eq!(u.admitted_by(), AdmittedBy::Code);
        assert!(
            f.auth.device_lease(&device("alice", 4, 40001)).is_some(),
            "a lease after the code"
        );
        // The same step again (another connection replaying the scramble).
        let again = check(right);
        assert!(matches!(again, CodeOutcome::Reused { .. }), "{again:?}");
        // Bytes that are no scramble of any code at all count too (the
        // success cleared the count: reused, junk, junk is three).
        let junk = check(vec![0; 20]);
        assert!(
            matches!(junk, CodeOutcome::Wrong { lock: None }),
            "{junk:?}"
        );
        let junk = check(vec![1; 20]);
        assert!(
            matches!(junk, CodeOutcome::Wrong { lock: Some(_) }),
            "third failure locks: {junk:?}"
        );
        let locked = check(proof(&code(1), &nonce));
        assert!(matches!(locked, CodeOutcome::Locked { .. }), "{locked:?}");
    }
}
