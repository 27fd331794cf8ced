//! RFC 6238 TOTP: SHA-1, 6 digits, 30-second steps, ±1 step of clock skew.
//! Codes are compared in constant time; the caller enforces that a step is
//! accepted at most once per user. Secrets are wiped from memory on drop
//! (ours are [`Zeroizing`]; totp-rs's copies with its `zeroize` feature).

use ring::rand::{SecureRandom, SystemRandom};
use totp_rs::{Algorithm, Builder, Secret, Totp};
use zeroize::Zeroizing;

/// Length of a generated secret: 160 bits, as RFC 4226 recommends.
pub const SECRET_LEN: usize = 20;
/// Seconds per step.
pub const STEP: u64 = 30;

/// A fresh random secret (wiped on drop).
pub fn generate_secret() -> Result<Zeroizing<Vec<u8>>, &'static str> {
    let mut s = Zeroizing::new(vec![0u8; SECRET_LEN]);
    SystemRandom::new()
        .fill(s.as_mut_slice())
        .map_err(|_| "no system randomness")?;
    Ok(s)
}

/// Base32 (RFC 4648, no padding) as authenticator apps and `oathtool -b` take it.
pub fn to_base32(secret: &[u8]) -> String {
    Secret::from(secret.to_vec()).to_base32()
}

fn totp(secret: &[u8], user: &str) -> Option<Totp> {
    Builder::new()
        .with_algorithm(Algorithm::SHA1)
        .with_digits(6)
        .with_skew(1)
        .with_step_duration(STEP)
        .with_secret(secret.to_vec())
        .with_account_name(user)
        .with_issuer(Some("gatehouse"))
        .build()
        .ok()
}

/// Equality that takes the same time wherever the inputs differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// `otpauth://totp/gatehouse:USER?secret=...&issuer=gatehouse`
pub fn otpauth_uri(secret: &[u8], user: &str) -> Option<String> {
    totp(secret, user).and_then(|t| t.to_url().ok())
}

/// The code for the step containing unix time `t`.
pub fn code_at(secret: &[u8], t: u64) -> Option<String> {
    totp(secret, "x").map(|x| x.generate(t).to_string())
}

/// Checks `code` against the steps around `now`; returns the matching step.
/// Only steps strictly greater than `last_step` are considered, so a code
/// (or an older one) is never accepted twice.
pub fn verify(secret: &[u8], code: &str, now: u64, last_step: u64) -> Option<u64> {
    let code = code.trim();
    if code.len() != 6 || !code.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    verify_with(
        secret,
        &|expected: &str| constant_time_eq(expected.as_bytes(), code.as_bytes()),
        now,
        last_step,
    )
}

/// [`verify`] for a client that proves it knows the code without sending
/// it (MySQL's scrambles): `matches` is asked about each code valid around
/// `now` (it must compare in constant time) and says whether the client's
/// proof was made from it.
pub fn verify_with(
    secret: &[u8],
    matches: &dyn Fn(&str) -> bool,
    now: u64,
    last_step: u64,
) -> Option<u64> {
    let t = totp(secret, "x")?;
    let current = now / STEP;
    let mut found = None;
    for step in [current.saturating_sub(1), current, current + 1] {
        let expected = t.generate(step * STEP).to_string();
        // Keep looping so timing does not reveal which step matched.
        if matches(&expected) && step > last_step && found.is_none() {
            found = Some(step);
        }
    }
    found
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    // RFC 6238 appendix B, SHA-1 seed "12345678901234567890", truncated to 6 digits.
    #[test]
    fn rfc6238_test_vectors_match() {
        let seed = b"12345678901234567890";
        assert_eq!(code_at(seed, 59).unwrap(), "287082");
        assert_eq!(code_at(seed, 1111111109).unwrap(), "081804");
        assert_eq!(code_at(seed, 1234567890).unwrap(), "005924");
        assert_eq!(code_at(seed, 2000000000).unwrap(), "279037");
    }

    #[test]
    fn code_within_one_step_is_accepted_and_never_twice() {
        let seed = b"12345678901234567890";
        let now = 1_700_000_000u64;
        let code = code_at(seed, now).unwrap();
        let step = verify(seed, &code, now, 0).unwrap();
        assert_eq!(step, now / STEP);
        assert_eq!(verify(seed, &code, now, step), None, "reused step accepted");
        let prev = code_at(seed, now - STEP).unwrap();
        assert_eq!(verify(seed, &prev, now, 0), Some(now / STEP - 1));
        let old = code_at(seed, now - 2 * STEP).unwrap();
        if old != code && old != prev {
            assert_eq!(verify(seed, &old, now, 0), None, "step -2 accepted");
        }
        assert_eq!(verify(seed, "12345", now, 0), None);
        assert_eq!(verify(seed, "abcdef", now, 0), None);
    }

    #[test]
    fn uri_and_base32_are_what_apps_expect() {
        let s = generate_secret().unwrap();
        assert_eq!(s.len(), 20);
        let b32 = to_base32(&s);
        assert_eq!(b32.len(), 32);
        let uri = otpauth_uri(&s, "alice").unwrap();
        assert!(
            uri.starts_with("otpauth://totp/gatehouse:alice?secret="),
            "{uri}"
        );
        assert!(
            uri.contains(&b32) && uri.contains("issuer=gatehouse"),
            "{uri}"
        );
    }
}
