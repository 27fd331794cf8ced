//! AES-256-GCM sealing of small secrets at rest (ring).
//!
//! Format: `v1:` + base64(nonce || ciphertext || tag). The associated data
//! binds a sealed blob to its purpose (e.g. the user it belongs to), so a
//! file copied to another user's name does not open.
//!
//! The master key's bytes live in a [`Zeroizing`] buffer, wiped on drop.
//! ring's expanded AES key schedule cannot be wiped by us, so it is built for
//! each seal/open and dropped right after, instead of living as long as the
//! daemon.

use std::fs;
use std::path::Path;

use base64::Engine;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};

use zeroize::Zeroizing;

use super::{write_secret_file, StateError};

/// A blob that does not open: wrong key, wrong purpose, or altered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unsealable;

/// The key that seals enrolled secrets. Never printed: `Debug` is redacted;
/// wiped from memory on drop.
pub struct MasterKey {
    bytes: Zeroizing<[u8; 32]>,
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(***)")
    }
}

impl MasterKey {
    /// Loads a 32-byte key file.
    pub fn load(path: &Path) -> Result<MasterKey, StateError> {
        let bytes = Zeroizing::new(fs::read(path).map_err(|e| StateError::io(path, e))?);
        Self::from_bytes(&bytes).ok_or_else(|| StateError::Corrupt {
            path: path.to_path_buf(),
            message: "a master key must be exactly 32 bytes".into(),
        })
    }

    /// Loads the key, creating a random one (0600) when missing.
    pub fn load_or_create(path: &Path) -> Result<MasterKey, StateError> {
        if !path.exists() {
            let mut bytes = Zeroizing::new([0u8; 32]);
            SystemRandom::new()
                .fill(bytes.as_mut())
                .map_err(|_| StateError::Corrupt {
                    path: path.to_path_buf(),
                    message: "no system randomness".into(),
                })?;
            write_secret_file(path, bytes.as_ref())?;
        }
        Self::load(path)
    }

    fn from_bytes(bytes: &[u8]) -> Option<MasterKey> {
        let mut key = Zeroizing::new([0u8; 32]);
        if bytes.len() != key.len() {
            return None;
        }
        key.copy_from_slice(bytes);
        let master = MasterKey { bytes: key };
        // Refuse a key ring would not take now rather than at first use.
        master.aead().map(|_| master)
    }

    /// ring's key, built for one operation.
    fn aead(&self) -> Option<LessSafeKey> {
        UnboundKey::new(&AES_256_GCM, self.bytes.as_ref())
            .ok()
            .map(LessSafeKey::new)
    }

    /// Seals `plain`, returning the text form.
    pub fn seal(&self, plain: &[u8], aad: &[u8]) -> Result<String, StateError> {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| StateError::Corrupt {
                path: "<random>".into(),
                message: "no system randomness".into(),
            })?;
        let key = self.aead().ok_or_else(|| StateError::Corrupt {
            path: "<seal>".into(),
            message: "unusable master key".into(),
        })?;
        let mut buf = plain.to_vec();
        let sealed = key.seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(aad),
            &mut buf,
        );
        if sealed.is_err() {
            // `buf` may still hold the plaintext.
            zeroize::Zeroize::zeroize(&mut buf);
            return Err(StateError::Corrupt {
                path: "<seal>".into(),
                message: "sealing failed".into(),
            });
        }
        let mut out = nonce.to_vec();
        out.extend_from_slice(&buf);
        Ok(format!(
            "v1:{}",
            base64::engine::general_purpose::STANDARD.encode(out)
        ))
    }

    /// Opens a blob made by [`MasterKey::seal`] with the same `aad`. The
    /// caller owns wiping the result; prefer [`MasterKey::open_secret`].
    pub fn open(&self, text: &str, aad: &[u8]) -> Result<Vec<u8>, Unsealable> {
        self.open_secret(text, aad).map(|plain| plain.to_vec())
    }

    /// Like [`MasterKey::open`]; the plaintext is wiped when dropped.
    pub fn open_secret(&self, text: &str, aad: &[u8]) -> Result<Zeroizing<Vec<u8>>, Unsealable> {
        let b64 = text.strip_prefix("v1:").ok_or(Unsealable)?;
        let data = Zeroizing::new(
            base64::engine::general_purpose::STANDARD
                .decode(b64)
                .map_err(|_| Unsealable)?,
        );
        let (nonce, sealed) = data.split_at_checked(NONCE_LEN).ok_or(Unsealable)?;
        let nonce: [u8; NONCE_LEN] = nonce.try_into().map_err(|_| Unsealable)?;
        let mut rest = Zeroizing::new(sealed.to_vec());
        let key = self.aead().ok_or(Unsealable)?;
        let plain = key
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad),
                rest.as_mut(),
            )
            .map_err(|_| Unsealable)?;
        Ok(Zeroizing::new(plain.to_vec()))
    }
}
