//! WireGuard keys: Curve25519 key pairs and preshared keys, in the base64
//! form `wg genkey` / `wg pubkey` / `wg genpsk` print.
//!
//! Private keys and preshared keys are never logged; [`PrivateKey`]'s
//! `Debug` is redacted, and it is wiped from memory when dropped (so is
//! [`PresharedKey`]). boringtun's `StaticSecret` wipes itself too.

use base64::Engine;
use boringtun::x25519::{PublicKey, StaticSecret};
use ring::rand::{SecureRandom, SystemRandom};
use zeroize::{Zeroize, ZeroizeOnDrop};

/// 32 random bytes from the system.
pub fn random32() -> Result<[u8; 32], ring::error::Unspecified> {
    let mut b = [0u8; 32];
    SystemRandom::new().fill(&mut b)?;
    Ok(b)
}

/// A Curve25519 private key, clamped as `wg genkey` writes it. Zeroized
/// on drop.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct PrivateKey([u8; 32]);

/// A WireGuard preshared key. Zeroized on drop; `Debug` is redacted.
#[derive(Clone, PartialEq, Eq, Zeroize, ZeroizeOnDrop)]
pub struct PresharedKey([u8; 32]);

impl std::fmt::Debug for PresharedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PresharedKey(***)")
    }
}

impl PresharedKey {
    /// From raw bytes; the caller's copy is wiped.
    pub fn from_bytes(b: &mut [u8; 32]) -> PresharedKey {
        let k = PresharedKey(*b);
        b.zeroize();
        k
    }

    /// The bytes, for boringtun (which keeps its own copy for the session).
    pub fn expose(&self) -> [u8; 32] {
        self.0
    }
}

impl std::fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PrivateKey(***)")
    }
}

impl PrivateKey {
    /// A new random key.
    pub fn generate() -> Result<PrivateKey, ring::error::Unspecified> {
        Ok(PrivateKey::from_bytes(random32()?))
    }

    /// From raw bytes (clamped here, as WireGuard does); the argument's
    /// copy is wiped.
    pub fn from_bytes(mut b: [u8; 32]) -> PrivateKey {
        let mut k = PrivateKey(b);
        b.zeroize();
        if let Some(first) = k.0.first_mut() {
            *first &= 248;
        }
        if let Some(last) = k.0.last_mut() {
            *last &= 127;
            *last |= 64;
        }
        k
    }

    pub fn bytes(&self) -> [u8; 32] {
        self.0
    }

    /// The matching public key.
    pub fn public(&self) -> [u8; 32] {
        PublicKey::from(&StaticSecret::from(self.0)).to_bytes()
    }

    /// The key for boringtun.
    pub fn secret(&self) -> StaticSecret {
        StaticSecret::from(self.0)
    }

    /// Base64, as in `PrivateKey = ...`.
    pub fn to_base64(&self) -> String {
        b64(&self.0)
    }
}

/// Base64 of a key.
pub fn b64(key: &[u8; 32]) -> String {
    base64::engine::general_purpose::STANDARD.encode(key)
}

/// A 32-byte key from base64 (public, private or preshared).
pub fn parse_b64(text: &str) -> Option<[u8; 32]> {
    let v = base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .ok()?;
    v.try_into().ok()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_are_clamped() {
        let k = PrivateKey::generate().unwrap();
        let b = k.bytes();
        assert_eq!(b[0] & 7, 0);
        assert_eq!(b[31] & 0x80, 0);
        assert_eq!(b[31] & 0x40, 0x40);
        assert_eq!(parse_b64(&k.to_base64()), Some(b));
        assert_eq!(format!("{k:?}"), "PrivateKey(***)");
        let mut raw = [7u8; 32];
        let psk = PresharedKey::from_bytes(&mut raw);
        assert_eq!(raw, [0u8; 32], "the caller's copy is wiped");
        assert_eq!(psk.expose(), [7u8; 32]);
        assert_eq!(format!("{psk:?}"), "PresharedKey(***)");
        assert!(parse_b64("not base64").is_none());
        assert!(parse_b64(&b64(&[1; 32])[..20]).is_none());
    }

    #[test]
    fn keys_are_wiped_by_zeroize() {
        // ZeroizeOnDrop runs exactly this on drop.
        let mut k = PrivateKey::from_bytes([9u8; 32]);
        assert_ne!(k.bytes(), [0u8; 32]);
        k.zeroize();
        assert_eq!(k.bytes(), [0u8; 32]);
        let mut p = PresharedKey::from_bytes(&mut [5u8; 32]);
        p.zeroize();
        assert_eq!(p.expose(), [0u8; 32]);
    }

    #[test]
    fn public_key_matches_rfc7748_vector() {
        // RFC 7748 section 6.1: Alice's key pair.
        let sk = hex::decode("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
            .unwrap();
        let pk = hex::decode("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")
            .unwrap();
        let k = PrivateKey::from_bytes(sk.try_into().unwrap());
        assert_eq!(k.public().to_vec(), pk);
    }
}
