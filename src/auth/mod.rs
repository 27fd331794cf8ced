//! Authentication: the two factors (personal SSH key, then TOTP), login
//! attempt limits and MFA leases, and the proof type [`AuthenticatedUser`]
//! that only this module can build.
//!
//! The proof chain is: [`Authenticator::verify_key`] yields a [`KeyVerified`]
//! (only for a configured key of a configured, unlocked user), and only a
//! `KeyVerified` plus an accepted code ([`Authenticator::verify_code`]) or a
//! live lease ([`Authenticator::lease`]) yields an [`AuthenticatedUser`].
//!
//! A database client inside the WireGuard tunnel has no SSH key: its first
//! factor is the device it came through (a [`Source::Device`], whose key the
//! tunnel verified cryptographically), and its second is a live lease of
//! that device ([`Authenticator::device_lease`]) or the user's current code
//! as its password ([`Authenticator::verify_device_code`]). Such an
//! [`AuthenticatedUser`] has no key ([`AuthenticatedUser::key`] is `None`,
//! fingerprint `-`).
//!
//! Locks: the lockout table, the TOTP replay state (one lock per user) and
//! the leases each have their own short lock, and no disk write happens
//! under any of them except the user's replay state under her own replay
//! lock (it must be durable before a code is accepted).
//! [`Authenticator::verify_code`] reads and writes files: call it from a
//! blocking thread (`spawn_blocking`), not from an async worker.

#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod device;
pub mod lease;
pub mod lockout;
pub mod refusals;
pub mod totp;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use russh::keys::{HashAlg, PublicKey};

use crate::audit;
use crate::config::{Current, Settings};
use crate::source::Source;
use crate::state::{StateDir, StateError};
use lease::{LeaseKey, Leases};
pub use lockout::NewLock;
use lockout::{Lockouts, Subject};
use refusals::Refusals;

/// How long a code check waits for a lock it started to reach the disk.
const LOCK_WRITE_WAIT: Duration = Duration::from_secs(2);

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
    source: Source,
    /// `source` as the audit log and MFA leases name it.
    source_label: String,
}

impl KeyVerified {
    pub fn user(&self) -> &str {
        &self.user
    }
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }
}

/// The fingerprint recorded for a login without an SSH key (a database
/// client admitted by its WireGuard device), in the audit log and in leases.
pub const NO_KEY_FINGERPRINT: &str = "-";

/// Proof of a complete two-factor login. Only this module constructs it.
#[derive(Debug, Clone)]
pub struct AuthenticatedUser {
    name: String,
    roles: Vec<String>,
    /// None for a database login by WireGuard device + code or lease.
    key: Option<PublicKey>,
    fingerprint: String,
    source: Source,
    source_label: String,
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
    /// None when the user was admitted without an SSH key (a database client
    /// by its WireGuard device): such a login matches no key.
    pub fn key(&self) -> Option<&PublicKey> {
        self.key.as_ref()
    }
    /// The SHA-256 fingerprint of [`Self::key`], or `-` without a key.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }
    /// Where the user logged in from, as the audit log and MFA leases
    /// name it (`ADDR`, or `wg:KEY@ADDR` for a WireGuard device).
    pub fn source(&self) -> &str {
        &self.source_label
    }
    /// Where the user logged in from, as a type.
    pub fn origin(&self) -> &Source {
        &self.source
    }
    pub fn admitted_by(&self) -> AdmittedBy {
        self.admitted_by
    }

    /// Test-only constructor for pure policy tests.
    #[cfg(test)]
    #[allow(clippy::unwrap_used)]
    pub(crate) fn for_tests(name: &str, roles: &[&str]) -> AuthenticatedUser {
        let source = Source::Address(std::net::SocketAddr::from(([127, 0, 0, 1], 22)));
        AuthenticatedUser::for_tests_from(name, roles, source)
    }

    /// Test-only constructor: a login from `source`.
    #[cfg(test)]
    #[allow(clippy::unwrap_used)]
    pub(crate) fn for_tests_from(name: &str, roles: &[&str], source: Source) -> AuthenticatedUser {
        let key =
            russh::keys::PrivateKey::random(&mut rand::rng(), russh::keys::Algorithm::Ed25519)
                .unwrap()
                .public_key()
                .clone();
        AuthenticatedUser {
            name: name.into(),
            roles: roles.iter().map(|s| s.to_string()).collect(),
            fingerprint: key.fingerprint(HashAlg::Sha256).to_string(),
            key: Some(key),
            source_label: source.to_string(),
            source,
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
    /// The user or the source is locked out until this unix time;
    /// `subject` is `user:NAME` or `source:ADDR`.
    Locked { subject: String, until: u64 },
}

/// The outcome of a verification code.
#[derive(Debug)]
pub enum CodeOutcome {
    Accepted(Box<AuthenticatedUser>),
    NotEnrolled,
    /// Counted against the user; `lock` is the lock this failure started.
    Wrong {
        lock: Option<NewLock>,
    },
    /// Correct code for a step already used (counted like a wrong one).
    Reused {
        lock: Option<NewLock>,
    },
    Locked {
        until: u64,
    },
}

/// Shared authentication state for all listeners.
#[derive(Debug)]
pub struct Authenticator {
    /// The configuration in force: users and their keys are read from it
    /// at each check, so a reload applies to the next login.
    settings: Current,
    state: Arc<StateDir>,
    lockouts: Lockouts,
    /// Per configured user (made at her first code check): serialises the
    /// check-and-persist of her TOTP step, so that two connections cannot
    /// both spend one step. Nothing else takes these; one user's code check
    /// never waits for another's. Only names configured at the time get an
    /// entry, so the map is bounded by the users ever configured.
    replay: Mutex<HashMap<String, Arc<Mutex<()>>>>,
    leases: Mutex<Leases>,
    refusals: Arc<Mutex<Refusals>>,
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
    /// Loads the lockout records and starts their background writer. Inside
    /// a tokio runtime, also starts the task that reports aggregated
    /// refusals (see [`refusals`]) when their minute ends.
    ///
    /// `settings` is the configuration in force ([`Current`], or a fixed
    /// `Arc<Settings>`). `[auth]` limits (failures, window, lockout, MFA
    /// lease) are taken now: changing them needs a restart.
    pub fn new(settings: impl Into<Current>, state: Arc<StateDir>) -> Result<Self, StateError> {
        let settings: Current = settings.into();
        let first: Arc<Settings> = settings.get();
        let lockouts = Lockouts::open(&first.auth, state.lockouts_path(), |u| {
            first.users.iter().any(|c| c.name == u)
        })?;
        let refusals = Arc::new(Mutex::new(Refusals::default()));
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let weak = Arc::downgrade(&refusals);
            rt.spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(5));
                loop {
                    tick.tick().await;
                    let Some(r) = weak.upgrade() else { break };
                    let due = lock(&r).due(Instant::now());
                    for rep in due {
                        audit::locked_refusals(&rep.user, &rep.source, &rep.subject, rep.count);
                    }
                }
            });
        }
        Ok(Authenticator {
            lockouts,
            replay: Mutex::new(HashMap::new()),
            leases: Mutex::new(Leases::new(first.auth.mfa_lease)),
            refusals,
            settings,
            state,
        })
    }

    /// Whether `user` is configured now.
    fn is_user(&self, user: &str) -> bool {
        self.settings.get().users.iter().any(|u| u.name == user)
    }

    /// The replay lock of a configured user; None for any other name.
    fn replay_lock(&self, user: &str) -> Option<Arc<Mutex<()>>> {
        if !self.is_user(user) {
            return None;
        }
        let mut map = lock(&self.replay);
        Some(map.entry(user.to_string()).or_default().clone())
    }

    /// The lock, if any, that refuses `user` or `source` right now.
    pub fn locked(&self, user: &str, source: IpAddr) -> Option<KeyRefusal> {
        let now = unix_now();
        let mut subjects = vec![Subject::Source(source)];
        if self.is_user(user) {
            subjects.insert(0, Subject::User(user));
        }
        subjects.into_iter().find_map(|s| {
            self.lockouts
                .locked_until(&s, now)
                .map(|until| KeyRefusal::Locked {
                    subject: s.label(),
                    until,
                })
        })
    }

    /// Audits a refusal caused by a running lock, aggregated: the first
    /// from a source at once, then one event per source per minute with the
    /// number of refusals it stands for.
    pub fn refused_while_locked(
        &self,
        user: &str,
        source: IpAddr,
        source_label: &str,
        subject: &str,
    ) {
        crate::metrics::refused_while_locked();
        let key = lockout::source_key(source);
        // Names that are not configured are not kept, not even here.
        let user = if self.is_user(user) { user } else { "-" };
        let report = lock(&self.refusals).refused(key, source_label, user, subject, Instant::now());
        if let Some(rep) = report {
            audit::locked_refusals(&rep.user, &rep.source, &rep.subject, rep.count);
        }
    }

    /// Would this key be accepted for this user (before signature check)?
    pub fn key_is_authorized(&self, user: &str, key: &PublicKey) -> bool {
        self.settings
            .get()
            .users
            .iter()
            .find(|u| u.name == user)
            .is_some_and(|u| u.ssh_keys.iter().any(|k| k.key_data() == key.key_data()))
    }

    /// First factor, after the SSH layer verified the signature.
    ///
    /// Locks count `source`'s IP address; an MFA lease is bound to
    /// `source` as displayed: the WireGuard device for tunnelled
    /// connections, the source address otherwise.
    pub fn verify_key(
        &self,
        user: &str,
        key: &PublicKey,
        source: &Source,
    ) -> Result<KeyVerified, KeyRefusal> {
        if let Some(locked) = self.locked(user, source.ip()) {
            return Err(locked);
        }
        if !self.key_is_authorized(user, key) {
            return Err(KeyRefusal::NotAuthorized);
        }
        Ok(KeyVerified {
            user: user.to_string(),
            fingerprint: fingerprint(key),
            key: key.clone(),
            source_label: source.to_string(),
            source: source.clone(),
        })
    }

    /// Counts one failure before any key was proven (only keys that are not
    /// the user's, an unknown user, another user's WireGuard device) against
    /// the source: the address for IPv4, the /64 for IPv6. Never against a
    /// user. Returns the lock it started; that lock is written to disk at
    /// once, in the background.
    pub fn unproven_failure(&self, source: IpAddr) -> Option<NewLock> {
        self.lockouts.failure(Subject::Source(source), unix_now()).0
    }

    /// A complete login clears the failure counts of its user and source.
    fn succeeded(&self, kv: &KeyVerified) {
        self.lockouts
            .success(&[Subject::User(&kv.user), Subject::Source(kv.source.ip())]);
    }

    /// Whether the user has an enrolled TOTP secret.
    pub fn is_enrolled(&self, user: &str) -> bool {
        matches!(self.state.totp_secret(user), Ok(Some(_)))
    }

    /// Second factor by lease: a recent code from the same user, key and source.
    pub fn lease(&self, kv: &KeyVerified) -> Option<AuthenticatedUser> {
        let key = lease_key(kv);
        if lock(&self.leases).is_valid(&key, Instant::now()) {
            self.succeeded(kv);
            Some(self.admit(kv, AdmittedBy::Lease))
        } else {
            None
        }
    }

    /// Second factor by code. A step, once accepted for a user, is persisted
    /// before the login proceeds and never accepted again. A wrong or reused
    /// code counts against the user (only a holder of her key gets here);
    /// a lock it starts is on disk before this returns (up to 2 s).
    ///
    /// Blocking: reads the sealed secret and writes the replay state.
    pub fn verify_code(&self, kv: &KeyVerified, code: &str) -> Result<CodeOutcome, StateError> {
        match self.check_code(&kv.user, kv.source.ip(), code)? {
            CodeCheck::Refused(outcome) => Ok(outcome),
            CodeCheck::Accepted => {
                self.succeeded(kv);
                lock(&self.leases).grant(lease_key(kv), Instant::now());
                Ok(CodeOutcome::Accepted(Box::new(
                    self.admit(kv, AdmittedBy::Code),
                )))
            }
        }
    }

    /// The code check shared by SSH and database logins: locks, the
    /// replay state, and counting a wrong or reused code against `user` (a
    /// configured user). An accepted step is on disk before this returns.
    fn check_code(&self, user: &str, ip: IpAddr, code: &str) -> Result<CodeCheck, StateError> {
        let code = code.trim();
        if code.len() != 6 || !code.bytes().all(|b| b.is_ascii_digit()) {
            // Not a code at all: counted like a wrong one.
            return self.check_proof(user, ip, &|_| false);
        }
        self.check_proof(user, ip, &|expected: &str| {
            totp::constant_time_eq(expected.as_bytes(), code.as_bytes())
        })
    }

    /// [`Self::check_code`] for a proof of the code rather than the code
    /// (`matches` says whether the proof was made from a given valid code).
    fn check_proof(
        &self,
        user: &str,
        ip: IpAddr,
        matches: &dyn Fn(&str) -> bool,
    ) -> Result<CodeCheck, StateError> {
        if let Some(KeyRefusal::Locked { until, .. }) = self.locked(user, ip) {
            return Ok(CodeCheck::Refused(CodeOutcome::Locked { until }));
        }
        let Some(secret) = self.state.totp_secret(user)? else {
            return Ok(CodeCheck::Refused(CodeOutcome::NotEnrolled));
        };
        let now = unix_now();
        let Some(replay) = self.replay_lock(user) else {
            return Ok(CodeCheck::Refused(CodeOutcome::NotEnrolled));
        };
        let accepted = {
            let _replay = lock(&replay);
            let last = self.state.last_totp_step(user)?;
            match totp::verify_with(&secret, matches, now, last) {
                Some(step) => {
                    self.state.set_last_totp_step(user, step)?;
                    true
                }
                None => false,
            }
        };
        if accepted {
            return Ok(CodeCheck::Accepted);
        }
        let reused = totp::verify_with(&secret, matches, now, 0).is_some();
        let (new_lock, generation) = self.lockouts.failure(Subject::User(user), now);
        if new_lock.is_some() && !self.lockouts.wait_written(generation, LOCK_WRITE_WAIT) {
            tracing::warn!("a new lockout is not on disk yet");
        }
        Ok(CodeCheck::Refused(if reused {
            CodeOutcome::Reused { lock: new_lock }
        } else {
            CodeOutcome::Wrong { lock: new_lock }
        }))
    }

    fn roles_of(&self, user: &str) -> Vec<String> {
        self.settings
            .get()
            .users
            .iter()
            .find(|u| u.name == user)
            .map(|u| u.roles.clone())
            .unwrap_or_default()
    }

    fn admit(&self, kv: &KeyVerified, by: AdmittedBy) -> AuthenticatedUser {
        AuthenticatedUser {
            name: kv.user.clone(),
            roles: self.roles_of(&kv.user),
            key: Some(kv.key.clone()),
            fingerprint: kv.fingerprint.clone(),
            source: kv.source.clone(),
            source_label: kv.source_label.clone(),
            admitted_by: by,
        }
    }
}

/// What the shared code check found.
enum CodeCheck {
    /// The code was right and its step is now spent.
    Accepted,
    /// Anything else, as the caller reports it.
    Refused(CodeOutcome),
}

fn lease_key(kv: &KeyVerified) -> LeaseKey {
    LeaseKey {
        user: kv.user.clone(),
        key_fingerprint: kv.fingerprint.clone(),
        source: kv.source_label.clone(),
    }
}
