//! The gateway's own ed25519 key pairs (host key, client key for targets),
//! stored in OpenSSH format, private half 0600.

use std::fs;
use std::path::Path;

use russh::keys::ssh_key::LineEnding;
use russh::keys::{Algorithm, HashAlg, PrivateKey, PublicKey};

use super::{write_file_mode, write_secret_file, StateError};

/// A loaded key pair.
#[derive(Clone)]
pub struct KeyPair {
    pub private: PrivateKey,
}

impl std::fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KeyPair({})", self.fingerprint())
    }
}

impl KeyPair {
    /// Loads `path` or generates a new ed25519 key there (and `path.pub`).
    pub fn load_or_create(path: &Path, comment: &str) -> Result<KeyPair, StateError> {
        if path.exists() {
            super::check_mode(path, 0o600)?;
            let text = fs::read_to_string(path).map_err(|e| StateError::io(path, e))?;
            let private = PrivateKey::from_openssh(&text).map_err(|e| StateError::Corrupt {
                path: path.to_path_buf(),
                message: format!("not an OpenSSH private key ({e})"),
            })?;
            return Ok(KeyPair { private });
        }
        let mut private =
            PrivateKey::random(&mut rand::rng(), Algorithm::Ed25519).map_err(|e| {
                StateError::Corrupt {
                    path: path.to_path_buf(),
                    message: format!("key generation failed: {e}"),
                }
            })?;
        private.set_comment(comment);
        let pem = private
            .to_openssh(LineEnding::LF)
            .map_err(|e| StateError::Corrupt {
                path: path.to_path_buf(),
                message: format!("key encoding failed: {e}"),
            })?;
        write_secret_file(path, pem.as_bytes())?;
        let kp = KeyPair { private };
        let mut pub_path = path.as_os_str().to_owned();
        pub_path.push(".pub");
        write_file_mode(
            Path::new(&pub_path),
            format!("{}\n", kp.public_line()).as_bytes(),
            0o644,
        )?;
        Ok(kp)
    }

    pub fn public(&self) -> PublicKey {
        self.private.public_key().clone()
    }

    /// `ssh-ed25519 AAAA... comment`
    pub fn public_line(&self) -> String {
        self.private
            .public_key()
            .to_openssh()
            .unwrap_or_else(|_| String::from("<unencodable key>"))
    }

    pub fn fingerprint(&self) -> String {
        self.private
            .public_key()
            .fingerprint(HashAlg::Sha256)
            .to_string()
    }
}
