//! The client side of MySQL/MariaDB authentication with a held password:
//! the scrambles, and which plugin gatehouse agrees to use.
//!
//! - `mysql_native_password`: `SHA1(pw) XOR SHA1(nonce || SHA1(SHA1(pw)))`.
//! - `caching_sha2_password`: `SHA256(pw) XOR SHA256(SHA256(SHA256(pw)) ||
//!   nonce)` (the fast path). When the server asks for full authentication
//!   the cleartext password is sent only inside verified TLS; the RSA
//!   public-key exchange is refused (it would trust a key the server hands
//!   over; a pinned key is not supported yet).
//! - MariaDB `client_ed25519`: an Ed25519 signature of the server's 32-byte
//!   nonce whose secret scalar and nonce prefix come from `SHA512(pw)`.
//! - `mysql_clear_password` and `sha256_password`: the password itself, only
//!   inside verified TLS.
//! - Anything else (`mysql_old_password`, `dialog`, GSSAPI, ...) is refused.
//!
//! Results that derive from the password are in buffers wiped on drop.

use curve25519_dalek::edwards::EdwardsPoint;
use curve25519_dalek::scalar::Scalar;
use ring::digest::{digest, Context, SHA1_FOR_LEGACY_USE_ONLY, SHA256, SHA512};
use zeroize::Zeroizing;

/// How gatehouse authenticated to the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthPlugin {
    /// `mysql_native_password` (SHA-1 scramble).
    NativePassword,
    /// `caching_sha2_password` answered from the server's cache (scramble).
    CachingSha2Fast,
    /// `caching_sha2_password` full authentication: the password inside TLS.
    CachingSha2Full,
    /// MariaDB `client_ed25519` (signature).
    Ed25519,
    /// `mysql_clear_password` inside TLS.
    ClearText,
    /// `sha256_password` inside TLS.
    Sha256Password,
}

impl AuthPlugin {
    /// The plugin's protocol name.
    pub fn name(self) -> &'static str {
        match self {
            AuthPlugin::NativePassword => NATIVE,
            AuthPlugin::CachingSha2Fast | AuthPlugin::CachingSha2Full => CACHING_SHA2,
            AuthPlugin::Ed25519 => ED25519,
            AuthPlugin::ClearText => CLEAR,
            AuthPlugin::Sha256Password => SHA256_PASSWORD,
        }
    }
}

pub const NATIVE: &str = "mysql_native_password";
pub const CACHING_SHA2: &str = "caching_sha2_password";
pub const ED25519: &str = "client_ed25519";
pub const CLEAR: &str = "mysql_clear_password";
pub const SHA256_PASSWORD: &str = "sha256_password";

/// `caching_sha2_password`'s AuthMoreData: the password was in the cache.
pub const FAST_AUTH_SUCCESS: u8 = 3;
/// `caching_sha2_password`'s AuthMoreData: send the password (TLS) or ask
/// for the RSA key.
pub const PERFORM_FULL_AUTH: u8 = 4;

/// The 20-byte nonce of a handshake or AuthSwitchRequest: servers send 20
/// bytes plus a NUL terminator, which is not part of it.
pub fn nonce20(data: &[u8]) -> &[u8] {
    match data.split_last() {
        Some((0, head)) if head.len() == 20 => head,
        _ => data,
    }
}

/// `mysql_native_password`: `SHA1(pw) XOR SHA1(nonce || SHA1(SHA1(pw)))`;
/// empty for an empty password.
pub fn native_scramble(password: &[u8], nonce: &[u8]) -> Zeroizing<Vec<u8>> {
    if password.is_empty() {
        return Zeroizing::new(Vec::new());
    }
    let stage1 = Zeroizing::new(
        digest(&SHA1_FOR_LEGACY_USE_ONLY, password)
            .as_ref()
            .to_vec(),
    );
    let stage2 = digest(&SHA1_FOR_LEGACY_USE_ONLY, &stage1);
    let mut ctx = Context::new(&SHA1_FOR_LEGACY_USE_ONLY);
    ctx.update(nonce);
    ctx.update(stage2.as_ref());
    let mix = ctx.finish();
    Zeroizing::new(xor(&stage1, mix.as_ref()))
}

/// `caching_sha2_password` fast path:
/// `SHA256(pw) XOR SHA256(SHA256(SHA256(pw)) || nonce)`; empty for an empty
/// password.
pub fn caching_sha2_scramble(password: &[u8], nonce: &[u8]) -> Zeroizing<Vec<u8>> {
    if password.is_empty() {
        return Zeroizing::new(Vec::new());
    }
    let stage1 = Zeroizing::new(digest(&SHA256, password).as_ref().to_vec());
    let stage2 = digest(&SHA256, &stage1);
    let mut ctx = Context::new(&SHA256);
    ctx.update(stage2.as_ref());
    ctx.update(nonce);
    let mix = ctx.finish();
    Zeroizing::new(xor(&stage1, mix.as_ref()))
}

fn xor(a: &[u8], b: &[u8]) -> Vec<u8> {
    a.iter().zip(b.iter()).map(|(x, y)| x ^ y).collect()
}

/// The secret half of MariaDB's ed25519 key: `SHA512(pw)`, clamped.
fn ed25519_expand(password: &[u8]) -> Zeroizing<[u8; 64]> {
    let mut az = Zeroizing::new([0u8; 64]);
    az.copy_from_slice(digest(&SHA512, password).as_ref());
    if let Some(first) = az.first_mut() {
        *first &= 248;
    }
    if let Some(last) = az.get_mut(31) {
        *last &= 63;
        *last |= 64;
    }
    az
}

fn halves(az: &[u8; 64]) -> ([u8; 32], [u8; 32]) {
    let mut lo = [0u8; 32];
    let mut hi = [0u8; 32];
    let (a, b) = az.split_at(32);
    lo.copy_from_slice(a);
    hi.copy_from_slice(b);
    (lo, hi)
}

/// The ed25519 public key MariaDB stores for `password` (base64 in
/// `mysql.global_priv`).
pub fn ed25519_public_key(password: &[u8]) -> [u8; 32] {
    let az = ed25519_expand(password);
    let (lo, _) = halves(&az);
    let lo = Zeroizing::new(lo);
    EdwardsPoint::mul_base_clamped(*lo).compress().to_bytes()
}

/// MariaDB `client_ed25519`: the 64-byte signature `R || S` of `message`
/// (the server's nonce) with the key derived from `password`.
pub fn ed25519_sign(password: &[u8], message: &[u8]) -> Zeroizing<Vec<u8>> {
    let az = ed25519_expand(password);
    let (lo, hi) = halves(&az);
    let (lo, hi) = (Zeroizing::new(lo), Zeroizing::new(hi));
    let a = Scalar::from_bytes_mod_order(*lo);
    let public = EdwardsPoint::mul_base_clamped(*lo).compress().to_bytes();

    let mut ctx = Context::new(&SHA512);
    ctx.update(hi.as_ref());
    ctx.update(message);
    let r = Scalar::from_bytes_mod_order_wide(&wide(ctx.finish().as_ref()));
    let big_r = EdwardsPoint::mul_base(&r).compress().to_bytes();

    let mut ctx = Context::new(&SHA512);
    ctx.update(&big_r);
    ctx.update(&public);
    ctx.update(message);
    let k = Scalar::from_bytes_mod_order_wide(&wide(ctx.finish().as_ref()));
    let s = k * a + r;

    let mut sig = Zeroizing::new(Vec::with_capacity(64));
    sig.extend_from_slice(&big_r);
    sig.extend_from_slice(s.as_bytes());
    sig
}

fn wide(h: &[u8]) -> [u8; 64] {
    let mut out = [0u8; 64];
    for (o, b) in out.iter_mut().zip(h.iter()) {
        *o = *b;
    }
    out
}

/// A password as cleartext plugins send it: NUL-terminated. None when it
/// holds a NUL byte (it could not be sent faithfully).
pub fn cleartext(password: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
    if password.contains(&0) {
        return None;
    }
    let mut out = Zeroizing::new(Vec::with_capacity(password.len() + 1));
    out.extend_from_slice(password);
    out.push(0);
    Some(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use base64::Engine;

    // Vectors published with go-sql-driver/mysql's auth tests.
    const NONCE_A: [u8; 20] = [
        70, 114, 92, 94, 1, 38, 11, 116, 63, 114, 23, 101, 126, 103, 26, 95, 81, 17, 24, 21,
    ];

    #[test]
    fn native_password_scramble_matches_the_published_vector() {
        assert_eq!(
            native_scramble(b"secret", &NONCE_A).as_slice(),
            &[
                53, 177, 140, 159, 251, 189, 127, 53, 109, 252, 172, 50, 211, 192, 240, 164, 26,
                48, 207, 45
            ]
        );
        assert!(native_scramble(b"", &NONCE_A).is_empty());
    }

    #[test]
    fn caching_sha2_scramble_matches_the_published_vectors() {
        let nonce = [
            10, 47, 74, 111, 75, 73, 34, 48, 88, 76, 114, 74, 37, 13, 3, 80, 82, 2, 23, 21,
        ];
        assert_eq!(
            hex::encode(caching_sha2_scramble(b"secret", &nonce).as_slice()),
            "f490e76f66d9d86665ce54d98c78d0acfe2fb0b08b423da807144873d30b312c"
        );
        assert_eq!(
            hex::encode(caching_sha2_scramble(b"secret2", &nonce).as_slice()),
            "abc3934a012cf342e876071c8ee202de51785b430258a7a0138bc79c4d800bc6"
        );
        let nonce = [
            90, 105, 74, 126, 30, 48, 37, 56, 3, 23, 115, 127, 69, 22, 41, 84, 32, 123, 43, 118,
        ];
        assert_eq!(
            caching_sha2_scramble(b"secret", &nonce).as_slice(),
            &[
                102, 32, 5, 35, 143, 161, 140, 241, 171, 232, 56, 139, 43, 14, 107, 196, 249, 170,
                147, 60, 220, 204, 120, 178, 214, 15, 184, 150, 26, 61, 57, 235
            ]
        );
        assert!(caching_sha2_scramble(b"", &nonce).is_empty());
    }

    #[test]
    fn ed25519_key_matches_what_mariadb_stores_and_signatures_verify() {
        // MariaDB 10.11: CREATE USER e IDENTIFIED VIA ed25519 USING
        // PASSWORD('secret') stores this authentication_string.
        let stored = "ZIgUREUg5PVgQ6LskhXmO+eZLS0nC8be6HPjYWR4YJY";
        let public = ed25519_public_key(b"secret");
        assert_eq!(
            base64::engine::general_purpose::STANDARD_NO_PAD.encode(public),
            stored
        );
        let nonce = [0x5au8; 32];
        let sig = ed25519_sign(b"secret", &nonce);
        assert_eq!(sig.len(), 64);
        let key = ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, public);
        key.verify(&nonce, &sig).unwrap();
        assert!(key.verify(&[0u8; 32], &sig).is_err());
        // Deterministic, and a different password signs differently.
        assert_eq!(sig.as_slice(), ed25519_sign(b"secret", &nonce).as_slice());
        assert_ne!(sig.as_slice(), ed25519_sign(b"secret2", &nonce).as_slice());
    }

    #[test]
    fn the_nonce_terminator_is_dropped_only_after_20_bytes() {
        let mut n = NONCE_A.to_vec();
        n.push(0);
        assert_eq!(nonce20(&n), &NONCE_A);
        assert_eq!(nonce20(&NONCE_A), &NONCE_A);
        assert_eq!(nonce20(&[1, 0]), &[1, 0]);
        assert_eq!(nonce20(&[]), &[] as &[u8]);
    }

    #[test]
    fn cleartext_is_nul_terminated_and_refuses_nul() {
        assert_eq!(cleartext(b"pw").unwrap().as_slice(), b"pw\0");
        assert!(cleartext(b"p\0w").is_none());
    }
}
