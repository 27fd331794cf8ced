//! SSH key pairs for test users, made by the stock `ssh-keygen`.

use std::path::{Path, PathBuf};
use std::process::Command;

/// An unencrypted key pair on disk.
#[derive(Debug, Clone)]
pub struct KeyPair {
    /// The private key file (0600, as ssh requires).
    pub private_path: PathBuf,
    /// The authorized_keys line: `ssh-ed25519 AAAA... <name>`.
    pub public_line: String,
}

impl KeyPair {
    /// `type base64` without the comment.
    pub fn public_key(&self) -> String {
        key_without_comment(&self.public_line)
    }
}

/// Generates `dir/name` and `dir/name.pub` (ed25519, no passphrase, comment
/// `name`).
pub fn gen_ed25519(dir: &Path, name: &str) -> KeyPair {
    let private_path = dir.join(name);
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", name, "-f"])
        .arg(&private_path)
        .output()
        .unwrap_or_else(|e| panic!("run ssh-keygen: {e}"));
    assert!(
        out.status.success(),
        "ssh-keygen failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let public_line = std::fs::read_to_string(format!("{}.pub", private_path.display()))
        .expect("read the generated .pub file")
        .trim()
        .to_string();
    KeyPair {
        private_path,
        public_line,
    }
}

/// The first two fields (`type base64`) of a public key line.
pub fn key_without_comment(line: &str) -> String {
    line.split_whitespace()
        .take(2)
        .collect::<Vec<_>>()
        .join(" ")
}
