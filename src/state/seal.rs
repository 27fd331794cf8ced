//! AES-256-GCM sealing of small secrets at rest (ring).
//!
//! Format: `v1:` + base64(nonce || ciphertext || tag). The associated data
//! binds a sealed blob to its purpose (e.g. the user it belongs to), so a
//! file copied to another user's name does not open.

use std::fs;
use std::path::Path;

use base64::Engine;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};

use super::{write_secret_file, StateError};

/// A blob that does not open: wrong key, wrong purpose, or altered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unsealable;

/// The key that seals enrolled secrets. Never printed: `Debug` is redacted.
pub struct MasterKey {
    key: LessSafeKey,
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(***)")
    }
}

impl MasterKey {
    /// Loads a 32-byte key file.
    pub fn load(path: &Path) -> Result<MasterKey, StateError> {
        let bytes = fs::read(path).map_err(|e| StateError::io(path, e))?;
        Self::from_bytes(&bytes).ok_or_else(|| StateError::Corrupt {
            path: path.to_path_buf(),
            message: "a master key must be exactly 32 bytes".into(),
        })
    }

    /// Loads the key, creating a random one (0600) when missing.
    pub fn load_or_create(path: &Path) -> Result<MasterKey, StateError> {
        if !path.exists() {
            let mut bytes = [0u8; 32];
            SystemRandom::new()
                .fill(&mut bytes)
                .map_err(|_| StateError::Corrupt {
                    path: path.to_path_buf(),
                    message: "no system randomness".into(),
                })?;
            write_secret_file(path, &bytes)?;
        }
        Self::load(path)
    }

    fn from_bytes(bytes: &[u8]) -> Option<MasterKey> {
        let unbound = UnboundKey::new(&AES_256_GCM, bytes).ok()?;
        Some(MasterKey {
            key: LessSafeKey::new(unbound),
        })
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
        let mut buf = plain.to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad),
                &mut buf,
            )
            .map_err(|_| StateError::Corrupt {
                path: "<seal>".into(),
                message: "sealing failed".into(),
            })?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&buf);
        Ok(format!(
            "v1:{}",
            base64::engine::general_purpose::STANDARD.encode(out)
        ))
    }

    /// Opens a blob made by [`MasterKey::seal`] with the same `aad`.
    pub fn open(&self, text: &str, aad: &[u8]) -> Result<Vec<u8>, Unsealable> {
        let b64 = text.strip_prefix("v1:").ok_or(Unsealable)?;
        let mut data = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|_| Unsealable)?;
        if data.len() < NONCE_LEN {
            return Err(Unsealable);
        }
        let rest = data.split_off(NONCE_LEN);
        let nonce: [u8; NONCE_LEN] = data.as_slice().try_into().map_err(|_| Unsealable)?;
        let mut rest = rest;
        let plain = self
            .key
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad),
                &mut rest,
            )
            .map_err(|_| Unsealable)?;
        Ok(plain.to_vec())
    }
}
