//! TLS to a database server (PostgreSQL, MySQL/MariaDB): verify-full
//! against the CA pinned for the target, and the `tls-server-end-point`
//! channel binding for SCRAM-SHA-256-PLUS. Errors are the reason as text;
//! each upstream wraps it in its own `Tls` error.
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

/// Cached client configurations: CA path -> (mtime, size, config).
type Cache = HashMap<PathBuf, (Option<SystemTime>, u64, Arc<ClientConfig>)>;
static CONFIGS: Mutex<Option<Cache>> = Mutex::new(None);

/// A rustls client configuration trusting exactly the certificates in `ca`.
pub(crate) fn client_config(ca: &Path) -> Result<Arc<ClientConfig>, String> {
    let meta = std::fs::metadata(ca)
        .map_err(|e| format!("cannot read the pinned CA {}: {e}", ca.display()))?;
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

fn build(ca: &Path) -> Result<Arc<ClientConfig>, String> {
    let bad = |why: String| format!("pinned CA {}: {why}", ca.display());
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
pub(crate) fn server_name(name: &str) -> Result<ServerName<'static>, String> {
    ServerName::try_from(name.to_string())
        .map_err(|_| format!("{name:?} is neither a DNS name nor an IP address (tls_server_name)"))
}

/// Turns a failed handshake into a message naming the certificate problem.
pub(crate) fn handshake_error(e: std::io::Error, ca: &Path, name: &str) -> String {
    let inner = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>());
    match inner {
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
    }
}

/// `tls-server-end-point` channel binding data (RFC 5929 section 4.1): the
/// hash of the server's certificate, with the certificate's signature hash
/// (SHA-256 for MD5 and SHA-1). None when the signature algorithm names no
/// usable hash (e.g. Ed25519, RSA-PSS): then no -PLUS is attempted.
pub(crate) fn end_point_hash(cert: &[u8]) -> Option<Vec<u8>> {
    let algorithm = match signature_algorithm(cert)? {
        // md5WithRSA, sha1WithRSA, ecdsa-with-SHA1, sha256WithRSA, ecdsa-with-SHA256
        [0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x04 | 0x05 | 0x0b]
        | [0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x01]
        | [0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02] => &ring::digest::SHA256,
        // sha384WithRSA, ecdsa-with-SHA384
        [0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0c]
        | [0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x03] => &ring::digest::SHA384,
        // sha512WithRSA, ecdsa-with-SHA512
        [0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0d]
        | [0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x04] => &ring::digest::SHA512,
        _ => return None,
    };
    Some(ring::digest::digest(algorithm, cert).as_ref().to_vec())
}

/// The OID (content bytes) of a DER certificate's outer signatureAlgorithm.
fn signature_algorithm(cert: &[u8]) -> Option<&[u8]> {
    let (tag, certificate, _) = der_element(cert)?;
    if tag != 0x30 {
        return None;
    }
    let (_tbs_tag, _tbs, rest) = der_element(certificate)?;
    let (tag, algorithm, _) = der_element(rest)?;
    if tag != 0x30 {
        return None;
    }
    let (tag, oid, _) = der_element(algorithm)?;
    (tag == 0x06).then_some(oid)
}

/// One DER element: (tag, contents, what follows). Single-byte tags and
/// definite lengths up to 4 bytes, as certificates use.
fn der_element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, mut rest) = rest.split_first()?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 {
            return None;
        }
        let (bytes, after) = rest.split_at_checked(n)?;
        rest = after;
        bytes
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b))
    };
    let (contents, after) = rest.split_at_checked(len)?;
    Some((tag, contents, after))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn end_point_hash_follows_the_signature_algorithm_and_survives_garbage() {
        // SEQ { SEQ{} (tbs), SEQ { OID sha256WithRSA } , BIT STRING }
        let mut cert = vec![0x30, 0x13, 0x30, 0x00, 0x30, 0x0b, 0x06, 0x09];
        cert.extend_from_slice(&[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0b]);
        cert.extend_from_slice(&[0x03, 0x02, 0x00, 0x00]);
        let h = end_point_hash(&cert).unwrap();
        assert_eq!(
            h,
            ring::digest::digest(&ring::digest::SHA256, &cert).as_ref()
        );
        // sha384WithRSA -> 48 bytes
        cert[16] = 0x0c;
        assert_eq!(end_point_hash(&cert).unwrap().len(), 48);
        // Ed25519 (1.3.101.112): no binding
        let ed = [
            0x30, 0x09, 0x30, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70,
        ];
        assert!(end_point_hash(&ed).is_none());
        for n in 0..cert.len() {
            let _ = end_point_hash(&cert[..n]);
        }
        assert!(end_point_hash(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]).is_none());
        assert!(end_point_hash(&[]).is_none());
    }
}
