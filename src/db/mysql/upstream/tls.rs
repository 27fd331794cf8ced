//! TLS to a MySQL/MariaDB server: verify-full against the CA pinned for
//! the target (the same rules as the PostgreSQL upstream's `tls` helper,
//! which is private to that module; this is its MySQL twin).
//!
//! Security behaviour:
//! - Only the certificates in the target's `tls_ca` file are trusted (no
//!   system roots). The server's certificate must chain to one of them and
//!   name `tls_server_name` (a DNS name or an IP address) in its
//!   subjectAltName.
//! - rustls with ring, its safe defaults: TLS 1.2 and 1.3 only.
//! - The parsed CA file is cached per path and reloaded when the file's
//!   modification time or size changes.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{CertificateError, ClientConfig, RootCertStore};

use super::UpstreamError;

/// Cached client configurations: CA path -> (mtime, size, config).
type Cache = HashMap<PathBuf, (Option<SystemTime>, u64, Arc<ClientConfig>)>;
static CONFIGS: Mutex<Option<Cache>> = Mutex::new(None);

/// A rustls client configuration trusting exactly the certificates in `ca`.
pub(super) fn client_config(ca: &Path) -> Result<Arc<ClientConfig>, UpstreamError> {
    let meta = std::fs::metadata(ca).map_err(|e| {
        UpstreamError::Tls(format!("cannot read the pinned CA {}: {e}", ca.display()))
    })?;
    let stamp = (meta.modified().ok(), meta.len());
    let mut cache = CONFIGS.lock().unwrap_or_else(|e| e.into_inner());
    let cache = cache.get_or_insert_with(HashMap::new);
    if let Some((mtime, len, config)) = cache.get(ca) {
        if (*mtime, *len) == stamp {
            return Ok(config.clone());
        }
    }
    let config = build(ca)?;
    cache.insert(ca.to_path_buf(), (stamp.0, stamp.1, config.clone()));
    Ok(config)
}

fn build(ca: &Path) -> Result<Arc<ClientConfig>, UpstreamError> {
    let bad = |why: String| UpstreamError::Tls(format!("pinned CA {}: {why}", ca.display()));
    let mut roots = RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(ca).map_err(|e| bad(e.to_string()))?;
    for cert in certs {
        let cert = cert.map_err(|e| bad(e.to_string()))?;
        roots
            .add(cert)
            .map_err(|e| bad(format!("not a usable CA certificate ({e})")))?;
    }
    if roots.is_empty() {
        return Err(bad("holds no PEM certificate".into()));
    }
    // ring is the provider Cargo.toml chose (our AES-GCM/SHA-256 already
    // use it). rustls 0.23.48 deprecates it for lacking post-quantum key
    // exchange; revisit with the move to aws-lc-rs (already russh's).
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// The name the server's certificate must carry: a DNS name or an IP address.
pub(super) fn server_name(name: &str) -> Result<ServerName<'static>, UpstreamError> {
    ServerName::try_from(name.to_string()).map_err(|_| {
        UpstreamError::Tls(format!(
            "{name:?} is neither a DNS name nor an IP address (tls_server_name)"
        ))
    })
}

/// Turns a failed handshake into a message naming the certificate problem.
pub(super) fn handshake_error(e: std::io::Error, ca: &Path, name: &str) -> UpstreamError {
    let inner = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>());
    let why = match inner {
        Some(rustls::Error::InvalidCertificate(cert)) => match cert {
            CertificateError::UnknownIssuer => format!(
                "the server's certificate is not issued by the pinned CA {} (UnknownIssuer)",
                ca.display()
            ),
            CertificateError::NotValidForName => {
                format!("the server's certificate is not valid for name {name:?}")
            }
            other => format!("the server's certificate was refused: {other}"),
        },
        Some(other) => format!("TLS handshake failed: {other}"),
        None => format!("TLS handshake failed: {e}"),
    };
    UpstreamError::Tls(why)
}
