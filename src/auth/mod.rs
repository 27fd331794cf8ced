//! Authentication: the two factors (personal SSH key, then TOTP), login
//! attempt limits and MFA leases, and the proof type [`AuthenticatedUser`]
//! that only this module can build.
//!
//! The proof chain is: [`Authenticator::verify_key`] yields a [`KeyVerified`]
//! (only for a configured key of a configured, unlocked user), and only a
//! `KeyVerified` plus an accepted code ([`Authenticator::verify_code`]) or a
//! live lease ([`Authenticator::lease`]) yields an [`AuthenticatedUser`].

pub mod lease;
pub mod lockout;
pub mod totp;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use russh::keys::{HashAlg, PublicKey};

use crate::config::Settings;
use crate::state::{LockoutRecords, StateDir, StateError};
use lease::{LeaseKey, Leases};
use lockout::{Lockouts, NewLock, Subject};

/// How the second factor was satisfied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdmittedBy {
    Code,
    Lease,
}

impl AdmittedBy {
    pub fn as_str(self) -> &'static str {
        match self {
            AdmittedBy::Code => "code",
            AdmittedBy::Lease => "lease",
        }
    }
}

/// Proof that a user presented one of their keys (signature verified by the
/// SSH layer) and is not locked out. Not yet a login.
#[derive(Debug, Clone)]
pub struct KeyVerified {
    user: String,
    key: PublicKey,
    fingerprint: String,
    source: String,
    source_ip: IpAddr,
}

impl KeyVerified {
    pub fn user(&self) -> &str {
        &self.user
    }
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }
}

/// Proof of a complete two-factor login. Only this module constructs it.
#[derive(Debug, Clone)]
pub struct AuthenticatedUser {
    name: String,
    roles: Vec<String>,
    key: PublicKey,
    fingerprint: String,
    source: String,
    admitted_by: AdmittedBy,
}

impl AuthenticatedUser {
    pub fn name(&self) -> &str {
        &self.name
    }
    pub fn roles(&self) -> &[String] {
        &self.roles
    }
    /// The key the user logged in with; jump sessions must present it again.
    pub fn key(&self) -> &PublicKey {
        &self.key
    }
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }
    pub fn source(&self) -> &str {
        &self.source
    }
    pub fn admitted_by(&self) -> AdmittedBy {
        self.admitted_by
    }

    /// Test-only constructor for pure policy tests.
    #[cfg(test)]
    pub(crate) fn for_tests(name: &str, roles: &[&str]) -> AuthenticatedUser {
        let key =
            russh::keys::PrivateKey::random(&mut rand::rng(), russh::keys::Algorithm::Ed25519)
                .unwrap()
                .public_key()
                .clone();
        AuthenticatedUser {
            name: name.into(),
            roles: roles.iter().map(|s| s.to_string()).collect(),
            fingerprint: key.fingerprint(HashAlg::Sha256).to_string(),
            key,
            source: "127.0.0.1".into(),
            admitted_by: AdmittedBy::Code,
        }
    }
}

/// Why a key was not accepted. Callers show the user the same message for
/// all of these: whether a user exists is never revealed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyRefusal {
    /// Unknown user or a key that is not theirs (deliberately one variant).
    NotAuthorized,
    /// The user or the source address is locked out until this unix time.
    Locked { subject: String, until: u64 },
}

/// The outcome of a verification code.
#[derive(Debug)]
pub enum CodeOutcome {
    Accepted(Box<AuthenticatedUser>),
    NotEnrolled,
    Wrong,
    /// Correct code for a step already used.
    Reused,
    Locked {
        until: u64,
    },
}

/// Shared authentication state for all listeners.
#[derive(Debug)]
pub struct Authenticator {
    settings: Arc<Settings>,
    state: Arc<StateDir>,
    users: HashMap<String, usize>,
    lockouts: Mutex<Lockouts>,
    leases: Mutex<Leases>,
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

pub fn fingerprint(key: &PublicKey) -> String {
    key.fingerprint(HashAlg::Sha256).to_string()
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these locks cannot leave the data in a
    // state worse than "one record not updated"; keep serving.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Authenticator {
    pub fn new(settings: Arc<Settings>, state: Arc<StateDir>) -> Result<Self, StateError> {
        let records = LockoutRecords::load(&state.lockouts_path())?;
        let users = settings
            .users
            .iter()
            .enumerate()
            .map(|(i, u)| (u.name.clone(), i))
            .collect();
        Ok(Authenticator {
            lockouts: Mutex::new(Lockouts::new(&settings.auth, records)),
            leases: Mutex::new(Leases::new(settings.auth.mfa_lease)),
            settings,
            state,
            users,
        })
    }

    /// The lock, if any, that refuses `user` or `source` right now.
    pub fn locked(&self, user: &str, source: IpAddr) -> Option<KeyRefusal> {
        let now = unix_now();
        let l = lock(&self.lockouts);
        for s in [Subject::User(user), Subject::Source(source)] {
            if let Some(until) = l.locked_until(&s, now) {
                let subject = match s {
                    Subject::User(u) => format!("user {u}"),
                    Subject::Source(a) => format!("source {a}"),
                };
                return Some(KeyRefusal::Locked { subject, until });
            }
        }
        None
    }

    /// Would this key be accepted for this user (before signature check)?
    pub fn key_is_authorized(&self, user: &str, key: &PublicKey) -> bool {
        self.users
            .get(user)
            .and_then(|&i| self.settings.users.get(i))
            .is_some_and(|u| u.ssh_keys.iter().any(|k| k.key_data() == key.key_data()))
    }

    /// First factor, after the SSH layer verified the signature.
    ///
    /// `source_label` is what an MFA lease is bound to: the WireGuard device
    /// for tunnelled connections, the source address otherwise.
    pub fn verify_key(
        &self,
        user: &str,
        key: &PublicKey,
        source: IpAddr,
        source_label: &str,
    ) -> Result<KeyVerified, KeyRefusal> {
        if let Some(locked) = self.locked(user, source) {
            return Err(locked);
        }
        if !self.key_is_authorized(user, key) {
            return Err(KeyRefusal::NotAuthorized);
        }
        Ok(KeyVerified {
            user: user.to_string(),
            fingerprint: fingerprint(key),
            key: key.clone(),
            source: source_label.to_string(),
            source_ip: source,
        })
    }

    /// Counts one failed attempt against the user (when named) and the source.
    pub fn record_failure(&self, user: Option<&str>, source: IpAddr) -> Vec<NewLock> {
        let mut subjects = vec![Subject::Source(source)];
        if let Some(u) = user {
            subjects.insert(0, Subject::User(u));
        }
        let mut l = lock(&self.lockouts);
        match l.record_failure(&subjects, unix_now()) {
            Ok(locks) => locks,
            Err(e) => {
                tracing::error!(error = %e, "cannot persist lockout records");
                Vec::new()
            }
        }
    }

    /// Whether the user has an enrolled TOTP secret.
    pub fn is_enrolled(&self, user: &str) -> bool {
        matches!(self.state.totp_secret(user), Ok(Some(_)))
    }

    /// Second factor by lease: a recent code from the same user, key and source.
    pub fn lease(&self, kv: &KeyVerified) -> Option<AuthenticatedUser> {
        let key = lease_key(kv);
        if lock(&self.leases).is_valid(&key, Instant::now()) {
            Some(self.admit(kv, AdmittedBy::Lease))
        } else {
            None
        }
    }

    /// Second factor by code. A step, once accepted for a user, is persisted
    /// before the login proceeds and never accepted again.
    pub fn verify_code(&self, kv: &KeyVerified, code: &str) -> Result<CodeOutcome, StateError> {
        if let Some(KeyRefusal::Locked { until, .. }) = self.locked(&kv.user, kv.source_ip) {
            return Ok(CodeOutcome::Locked { until });
        }
        let Some(secret) = self.state.totp_secret(&kv.user)? else {
            return Ok(CodeOutcome::NotEnrolled);
        };
        // Serialise code checks so two connections cannot both spend one step.
        let _guard = lock(&self.lockouts);
        let last = self.state.last_totp_step(&kv.user)?;
        let now = unix_now();
        match totp::verify(&secret, code, now, last) {
            Some(step) => {
                self.state.set_last_totp_step(&kv.user, step)?;
                drop(_guard);
                if let Err(e) = lock(&self.lockouts).record_success(&kv.user) {
                    tracing::error!(error = %e, "cannot persist lockout records");
                }
                lock(&self.leases).grant(lease_key(kv), Instant::now());
                Ok(CodeOutcome::Accepted(Box::new(
                    self.admit(kv, AdmittedBy::Code),
                )))
            }
            None => {
                if totp::verify(&secret, code, now, 0).is_some() {
                    Ok(CodeOutcome::Reused)
                } else {
                    Ok(CodeOutcome::Wrong)
                }
            }
        }
    }

    fn admit(&self, kv: &KeyVerified, by: AdmittedBy) -> AuthenticatedUser {
        let roles = self
            .users
            .get(&kv.user)
            .and_then(|&i| self.settings.users.get(i))
            .map(|u| u.roles.clone())
            .unwrap_or_default();
        AuthenticatedUser {
            name: kv.user.clone(),
            roles,
            key: kv.key.clone(),
            fingerprint: kv.fingerprint.clone(),
            source: kv.source.clone(),
            admitted_by: by,
        }
    }
}

fn lease_key(kv: &KeyVerified) -> LeaseKey {
    LeaseKey {
        user: kv.user.clone(),
        key_fingerprint: kv.fingerprint.clone(),
        source: kv.source.clone(),
    }
}
