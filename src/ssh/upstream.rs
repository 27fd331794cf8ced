//! The SSH client side: gatehouse logs in to a target with its own client
//! key, after checking the target's host key against the pinned keys.
//!
//! Security behaviour: there is no trust on first use. A target with no
//! pinned key, or whose key matches none of the pins, is refused before any
//! authentication is attempted. Connecting only accepts an [`Authorized`],
//! which only the policy can produce.

use std::sync::{Arc, Mutex};

use russh::client;
use russh::keys::{HashAlg, PrivateKeyWithHashAlg, PublicKey, PublicKeyOrCertificate};

use super::ending::Ending;
use super::{Gateway, SshError};
use crate::policy::Authorized;

/// Why connecting to a target failed, phrased for the user.
#[derive(Debug, Clone)]
pub enum UpstreamError {
    NoPin,
    HostKeyMismatch { presented: String },
    Unreachable(String),
    Timeout,
    AuthRejected,
    Protocol(String),
}

impl UpstreamError {
    /// Short reason for the audit log.
    pub fn reason(&self) -> String {
        match self {
            UpstreamError::NoPin => "no pinned host key".into(),
            UpstreamError::HostKeyMismatch { presented } => {
                format!("host key mismatch (presented {presented})")
            }
            UpstreamError::Unreachable(e) => format!("unreachable: {e}"),
            UpstreamError::Timeout => "connect timeout".into(),
            UpstreamError::AuthRejected => "target rejected gatehouse's client key".into(),
            UpstreamError::Protocol(e) => format!("ssh error: {e}"),
        }
    }

    /// What the user is told.
    pub fn user_message(&self, target: &str, login: &str) -> String {
        match self {
            UpstreamError::NoPin => format!(
                "gatehouse: {target} has no pinned host key; refusing to connect. \
                 An administrator can pin it with `gatehouse target keyscan`."
            ),
            UpstreamError::HostKeyMismatch { presented } => format!(
                "gatehouse: {target} presented a host key ({presented}) that does not match \
                 its pinned key; refusing to connect. Tell an administrator."
            ),
            UpstreamError::Unreachable(_) => {
                format!("gatehouse: cannot reach {target}; it may be down.")
            }
            UpstreamError::Timeout => {
                format!("gatehouse: timed out connecting to {target}.")
            }
            UpstreamError::AuthRejected => format!(
                "gatehouse: {target} did not accept gatehouse's key for {login}; \
                 an administrator must add `gatehouse pubkey` to its authorized_keys."
            ),
            UpstreamError::Protocol(_) => {
                format!("gatehouse: the SSH connection to {target} failed.")
            }
        }
    }
}

/// Host key checking for one target connection.
pub struct PinnedHost {
    pins: Vec<PublicKey>,
    mismatch: Arc<Mutex<Option<String>>>,
}

impl client::Handler for PinnedHost {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        presented: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        let key = match presented {
            PublicKeyOrCertificate::PublicKey { key, .. } => key,
            PublicKeyOrCertificate::Certificate(_) => {
                if let Ok(mut m) = self.mismatch.lock() {
                    *m = Some("a host certificate".into());
                }
                return Ok(false);
            }
        };
        if self.pins.iter().any(|p| p.key_data() == key.key_data()) {
            return Ok(true);
        }
        if let Ok(mut m) = self.mismatch.lock() {
            *m = Some(key.fingerprint(HashAlg::Sha256).to_string());
        }
        Ok(false)
    }
}

/// A logged-in connection to a target.
pub struct Upstream {
    pub handle: client::Handle<PinnedHost>,
}

impl Upstream {
    /// Opens a session channel on the target.
    pub async fn open_session(&self) -> Result<russh::Channel<client::Msg>, SshError> {
        Ok(self.handle.channel_open_session().await?)
    }
}

/// Connects to the authorized target and logs in as the authorized login.
/// The connection is cut at once when `ending` is killed (a limit or a
/// shutdown), without waiting on the target's windows.
pub async fn connect(
    gw: &Gateway,
    auth: &Authorized,
    ending: &Ending,
) -> Result<Upstream, UpstreamError> {
    let target = auth.target();
    if target.host_keys.is_empty() {
        return Err(UpstreamError::NoPin);
    }
    let mismatch = Arc::new(Mutex::new(None));
    let handler = PinnedHost {
        pins: target.host_keys.clone(),
        mismatch: mismatch.clone(),
    };
    let addr = (target.host.clone(), target.port);
    let connecting = async {
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| UpstreamError::Unreachable(e.kind().to_string()))?;
        let _ = tcp.set_nodelay(true);
        client::connect_stream(gw.client_config.clone(), ending.wrap(tcp), handler)
            .await
            .map_err(|e| {
                if let Ok(Some(presented)) = mismatch.lock().map(|m| m.clone()) {
                    UpstreamError::HostKeyMismatch { presented }
                } else {
                    UpstreamError::Protocol(e.to_string())
                }
            })
    };
    let mut handle = tokio::time::timeout(gw.settings().gateway.connect_timeout, connecting)
        .await
        .map_err(|_| UpstreamError::Timeout)??;
    let key = PrivateKeyWithHashAlg::new(gw.client_key.clone(), None);
    let res = tokio::time::timeout(
        gw.settings().gateway.connect_timeout,
        handle.authenticate_publickey(auth.login(), key),
    )
    .await
    .map_err(|_| UpstreamError::Timeout)?
    .map_err(|e| UpstreamError::Protocol(e.to_string()))?;
    if !res.success() {
        return Err(UpstreamError::AuthRejected);
    }
    Ok(Upstream { handle })
}

/// Fetches the host keys a target presents (for `gatehouse target keyscan`).
/// Trust nothing: this only reports what was presented.
pub async fn keyscan(addr: &str, timeout: std::time::Duration) -> Result<Vec<PublicKey>, String> {
    struct Scan(Arc<Mutex<Vec<PublicKey>>>);
    impl client::Handler for Scan {
        type Error = russh::Error;
        async fn check_server_key(
            &mut self,
            presented: &PublicKeyOrCertificate,
        ) -> Result<bool, Self::Error> {
            if let PublicKeyOrCertificate::PublicKey { key, .. } = presented {
                if let Ok(mut v) = self.0.lock() {
                    v.push(key.clone());
                }
            }
            Ok(false)
        }
    }
    let mut found = Vec::new();
    // Ask once per host key algorithm so every key the target has is listed.
    for alg in [
        russh::keys::Algorithm::Ed25519,
        russh::keys::Algorithm::Ecdsa {
            curve: russh::keys::EcdsaCurve::NistP256,
        },
        russh::keys::Algorithm::Rsa {
            hash: Some(russh::keys::HashAlg::Sha512),
        },
    ] {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let pref = russh::Preferred {
            key: std::borrow::Cow::Owned(vec![alg]),
            ..Default::default()
        };
        let cfg = Arc::new(client::Config {
            preferred: pref,
            ..Default::default()
        });
        let attempt = async {
            let tcp = tokio::net::TcpStream::connect(addr)
                .await
                .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
            let _ = client::connect_stream(cfg, tcp, Scan(seen.clone())).await;
            Ok::<(), String>(())
        };
        tokio::time::timeout(timeout, attempt)
            .await
            .map_err(|_| format!("timed out connecting to {addr}"))??;
        let keys: Vec<PublicKey> = seen.lock().map(|v| v.clone()).unwrap_or_default();
        for k in keys {
            if !found
                .iter()
                .any(|f: &PublicKey| f.key_data() == k.key_data())
            {
                found.push(k);
            }
        }
    }
    if found.is_empty() {
        return Err(format!("{addr} presented no usable host key"));
    }
    Ok(found)
}
