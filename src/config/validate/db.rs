//! Validation of the database part of `[[targets]]` (`kind = "postgres"`):
//! `tunnel_port`, `tls_ca` / `tls`, `tls_server_name` and `auth`, and the
//! rule that SSH-only keys (`host_keys`) and database-only keys never mix.
//!
//! TLS to a database is verify-full against a CA pinned per target, or off
//! only when `tls = "disable"` is written out (then `gatehouse check` and
//! the daemon at start warn). The CA file is read here, once, so a missing,
//! unreadable or malformed file is a configuration error with its line, not
//! a refused session later.

use std::collections::HashMap;
use std::io::Read;
use std::ops::Range;
use std::path::{Path, PathBuf};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use toml::Spanned;

use super::super::raw::{index_path, key_path, RawTarget};
use super::super::{DbAuth, DbTarget, DbTls, TargetKind};
use super::Checker;

/// A CA file larger than this is refused (a bundle of every public CA is
/// about 250 KiB).
const MAX_CA_FILE: u64 = 1024 * 1024;

/// The keys of `[[targets]]` that only database targets take.
const DB_ONLY_KEYS: [&str; 5] = ["tunnel_port", "tls_ca", "tls", "tls_server_name", "auth"];

impl Checker<'_, '_> {
    /// Refuses the keys that do not belong to a target of `kind`: `host_keys`
    /// on a database target, the database keys on an SSH target.
    pub(super) fn kind_keys(&mut self, base: &str, t: &RawTarget, kind: TargetKind) {
        match kind {
            TargetKind::Postgres | TargetKind::Mysql => {
                if let Some(keys) = &t.host_keys {
                    self.error(
                        keys.span(),
                        key_path(base, "host_keys"),
                        format!("host_keys applies only to kind = \"ssh\" targets; a {} target's server is verified by TLS against `tls_ca`", kind.as_str()),
                    );
                }
                if kind == TargetKind::Mysql {
                    if let Some(a) = &t.auth {
                        self.error(
                            a.span(),
                            key_path(base, "auth"),
                            "`auth` applies only to kind = \"postgres\"; for MySQL/MariaDB gatehouse follows the server's plugin (caching_sha2_password, mysql_native_password, ed25519)",
                        );
                    }
                }
            }
            TargetKind::Ssh => {
                for (key, span) in db_keys(t) {
                    self.error(
                        span,
                        key_path(base, key),
                        format!("`{key}` applies only to database targets (kind = \"postgres\" or \"mysql\"), not to kind = \"ssh\""),
                    );
                }
            }
        }
    }

    /// The database settings of a `kind = "postgres"` target whose address
    /// has host `host`; `target_span` locates errors about missing keys.
    pub(super) fn db_target(
        &mut self,
        base: &str,
        t: &RawTarget,
        target_span: Range<usize>,
        host: Option<&str>,
        kind: TargetKind,
    ) -> Option<DbTarget> {
        let tunnel_port = match &t.tunnel_port {
            None => {
                self.error(
                    target_span.clone(),
                    key_path(base, "tunnel_port"),
                    format!("missing required key for kind = \"{}\": the port on the gateway's tunnel address that reaches this target, e.g. tunnel_port = 1{}", kind.as_str(), kind.standard_port()),
                );
                None
            }
            Some(port) => self.tunnel_port(port, &key_path(base, "tunnel_port")),
        };
        let tls = self.db_tls(base, t, target_span, host, kind);
        let auth = match &t.auth {
            None => Some(DbAuth::default()),
            Some(a) => match a.get_ref().as_str() {
                "scram" => Some(DbAuth::Scram),
                "md5" => Some(DbAuth::Md5),
                _ => {
                    self.error(
                        a.span(),
                        key_path(base, "auth"),
                        "must be \"scram\" (the default: SCRAM-SHA-256, with channel binding over TLS) or \"md5\"",
                    );
                    None
                }
            },
        };
        Some(DbTarget {
            tunnel_port: tunnel_port?,
            tls: tls?,
            auth: auth?,
        })
    }

    fn tunnel_port(&mut self, port: &Spanned<i64>, path: &str) -> Option<u16> {
        match u16::try_from(*port.get_ref()) {
            Ok(0) | Err(_) => {
                self.error(port.span(), path, "must be a port number (1-65535)");
                None
            }
            Ok(p) if p == crate::tunnel::SSH_PORT => {
                self.error(
                    port.span(),
                    path,
                    format!("port {p} is the SSH server's port on the tunnel address; choose another, e.g. 15432"),
                );
                None
            }
            Ok(p) => Some(p),
        }
    }

    /// `tls_ca` xor `tls = "disable"` (`tls = "verify-full"` with `tls_ca`
    /// is fine), and `tls_server_name` only with TLS.
    fn db_tls(
        &mut self,
        base: &str,
        t: &RawTarget,
        target_span: Range<usize>,
        host: Option<&str>,
        kind: TargetKind,
    ) -> Option<DbTls> {
        let mode = match &t.tls {
            None => None,
            Some(mode) => match mode.get_ref().as_str() {
                "verify-full" => Some((mode, true)),
                "disable" => Some((mode, false)),
                _ => {
                    self.error(
                        mode.span(),
                        key_path(base, "tls"),
                        "must be \"verify-full\" (with `tls_ca`) or \"disable\"",
                    );
                    return None;
                }
            },
        };
        match (&t.tls_ca, mode) {
            (Some(_), Some((mode, false))) => {
                self.error(
                    mode.span(),
                    key_path(base, "tls"),
                    "`tls = \"disable\"` contradicts `tls_ca`: set one of them",
                );
                None
            }
            (None, Some((mode, false))) => {
                if let Some(name) = &t.tls_server_name {
                    self.error(
                        name.span(),
                        key_path(base, "tls_server_name"),
                        "has no effect with tls = \"disable\"",
                    );
                    return None;
                }
                self.warnings.push(super::Diag::new(
                    mode.span(),
                    key_path(base, "tls"),
                    "TLS to this database is disabled: the login exchange and every query cross the network unencrypted; set tls_ca to verify the server instead",
                ));
                Some(DbTls::Disable)
            }
            (None, Some((mode, true))) => {
                self.error(
                    mode.span(),
                    key_path(base, "tls"),
                    "verify-full needs the CA to verify against: add tls_ca = \"/path/to/ca.pem\"",
                );
                None
            }
            (None, None) => {
                self.error(
                    target_span,
                    key_path(base, "tls_ca"),
                    format!("missing required key for kind = \"{}\": the CA to verify the server against (tls_ca = \"/path/to/ca.pem\"), or tls = \"disable\" written out", kind.as_str()),
                );
                None
            }
            (Some(ca), _) => {
                let ca = self.ca_file(ca, &key_path(base, "tls_ca"));
                let server_name = self.server_name(base, t, host);
                Some(DbTls::Verify {
                    ca: ca?,
                    server_name: server_name?,
                })
            }
        }
    }

    /// `tls_server_name`, or the host of `address`: a name (or IP literal)
    /// a certificate can be checked against.
    fn server_name(&mut self, base: &str, t: &RawTarget, host: Option<&str>) -> Option<String> {
        if let Some(name) = &t.tls_server_name {
            return match ServerName::try_from(name.get_ref().as_str()) {
                Ok(_) => Some(name.get_ref().clone()),
                Err(_) => {
                    self.error(
                        name.span(),
                        key_path(base, "tls_server_name"),
                        format!(
                            "`{}` is not a DNS name or IP address a certificate can name",
                            name.get_ref()
                        ),
                    );
                    None
                }
            };
        }
        // An invalid address was reported already.
        let host = host?;
        match ServerName::try_from(host) {
            Ok(_) => Some(host.to_owned()),
            Err(_) => {
                if let Some(address) = &t.address {
                    self.error(
                        address.span(),
                        key_path(base, "address"),
                        format!("the host `{host}` cannot be checked against a certificate; set tls_server_name to the name the server's certificate holds"),
                    );
                }
                None
            }
        }
    }

    /// A readable PEM file of at least one CA certificate and nothing
    /// secret; relative paths are resolved against the configuration
    /// file's directory.
    fn ca_file(&mut self, ca: &Spanned<String>, path: &str) -> Option<PathBuf> {
        if ca.get_ref().is_empty() {
            self.error(ca.span(), path, "must not be empty");
            return None;
        }
        let file = resolve(&self.base_dir, Path::new(ca.get_ref()));
        match check_ca_file(&file) {
            Ok(()) => Some(file),
            Err(message) => {
                self.error(ca.span(), path, format!("`{}`: {message}", file.display()));
                None
            }
        }
    }

    /// Reports every `tunnel_port` after the first that repeats an earlier
    /// one, naming the target and line that has it.
    pub(super) fn unique_tunnel_ports(&mut self, raw: &[Option<Spanned<RawTarget>>]) {
        let mut first: HashMap<i64, (String, usize)> = HashMap::new();
        for (i, t) in raw.iter().enumerate() {
            let Some(t) = t.as_ref().map(Spanned::get_ref) else {
                continue;
            };
            let Some(port) = &t.tunnel_port else { continue };
            let name = t
                .name
                .as_ref()
                .map_or_else(|| index_path("targets", i), |n| n.get_ref().clone());
            match first.get(port.get_ref()) {
                Some((owner, line)) => {
                    let message = format!(
                        "tunnel_port {} is already the port of target `{owner}` (line {line}); each database target needs its own",
                        port.get_ref()
                    );
                    self.error(
                        port.span(),
                        key_path(&index_path("targets", i), "tunnel_port"),
                        message,
                    );
                }
                None => {
                    let line = self.lines.line(&port.span());
                    first.insert(*port.get_ref(), (name, line));
                }
            }
        }
    }
}

/// The database-only keys present on `t`, with their spans.
fn db_keys(t: &RawTarget) -> Vec<(&'static str, Range<usize>)> {
    let spans = [
        t.tunnel_port.as_ref().map(Spanned::span),
        t.tls_ca.as_ref().map(Spanned::span),
        t.tls.as_ref().map(Spanned::span),
        t.tls_server_name.as_ref().map(Spanned::span),
        t.auth.as_ref().map(Spanned::span),
    ];
    DB_ONLY_KEYS
        .into_iter()
        .zip(spans)
        .filter_map(|(key, span)| Some((key, span?)))
        .collect()
}

/// `path` as is when absolute, else under `base`; made absolute against
/// the working directory so that a later `chdir` cannot change its meaning.
fn resolve(base: &Path, path: &Path) -> PathBuf {
    let joined = if path.is_absolute() {
        path.to_path_buf()
    } else {
        base.join(path)
    };
    std::path::absolute(&joined).unwrap_or(joined)
}

/// Reads `file` and checks that it holds PEM certificates usable as trust
/// anchors, and no private key.
fn check_ca_file(file: &Path) -> Result<(), String> {
    let mut bytes = Vec::new();
    std::fs::File::open(file)
        .and_then(|f| f.take(MAX_CA_FILE + 1).read_to_end(&mut bytes))
        .map_err(|e| format!("cannot read the CA file: {e}"))?;
    if bytes.len() as u64 > MAX_CA_FILE {
        return Err(format!(
            "larger than {} KiB: not a CA file",
            MAX_CA_FILE / 1024
        ));
    }
    if bytes
        .windows(b"PRIVATE KEY-----".len())
        .any(|w| w == b"PRIVATE KEY-----")
    {
        return Err(
            "holds a private key: a CA file holds only certificates; remove the key and treat it as compromised"
                .into(),
        );
    }
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&bytes) {
        let cert = cert.map_err(|e| format!("not a valid PEM file ({e})"))?;
        roots
            .add(cert)
            .map_err(|e| format!("holds a certificate that cannot be a CA ({e})"))?;
    }
    if roots.is_empty() {
        return Err("holds no PEM certificate (-----BEGIN CERTIFICATE-----)".into());
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use russh::keys::{Algorithm, PrivateKey};

    use super::super::{load_str, ConfigError, ConfigErrors};
    use crate::config::{DbAuth, DbTarget, DbTls, Settings, TargetKind};

    /// A self-signed CA certificate (P-256, made with `openssl req -x509`).
    const CA_PEM: &str = "-----BEGIN CERTIFICATE-----
MIIBjzCCATWgAwIBAgIUcZM9TwOp8SfHv2VgLoLthuYKMvEwCgYIKoZIzj0EAwIw
HDEaMBgGA1UEAwwRZ2F0ZWhvdXNlLXRlc3QtY2EwIBcNMjYxMjA2MjM0MzI2WhgP
MjEyNjExMTIyMzQzMjZaMBwxGjAYBgNVBAMMEWdhdGVob3VzZS10ZXN0LWNhMFkw
EwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEyGOmId4OImbEsjjKEG+16Z40KRZgL/dE
vYbc9XfQGdSRr0ClbZ856heRWfR8gAcIIisPwvSXYJ8gOXb0/ycCa6NTMFEwHQYD
VR0OBBYEFGU7OUpx3TEh5UVsiId0efFODw/1MB8GA1UdIwQYMBaAFGU7OUpx3TEh
5UVsiId0efFODw/1MA8GA1UdEwEB/wQFMAMBAf8wCgYIKoZIzj0EAwIDSAAwRQIg
fU8WExqTR5TCJmCR6i+0uqfhbPOHR8feeikGeEjTE+MCIQDZo3l4n7WcXkxk1XiX
9Y5hFztsWUP/aEUMbqv7l3B80w==
-----END CERTIFICATE-----
";

    fn key() -> String {
        PrivateKey::random(&mut rand::rng(), Algorithm::Ed25519)
            .expect("generate key")
            .public_key()
            .to_openssh()
            .expect("encode key")
    }

    /// A directory holding `ca.pem`; configs are loaded as `DIR/g.toml`.
    struct Dir {
        tmp: tempfile::TempDir,
    }

    impl Dir {
        fn new() -> Dir {
            let tmp = tempfile::tempdir().unwrap();
            std::fs::write(tmp.path().join("ca.pem"), CA_PEM).unwrap();
            Dir { tmp }
        }

        fn ca(&self) -> String {
            self.tmp.path().join("ca.pem").display().to_string()
        }

        fn source(&self) -> std::path::PathBuf {
            self.tmp.path().join("g.toml")
        }

        /// A valid file with an SSH target, then `targets` (TOML for more
        /// `[[targets]]`), a role `dba` with `role` lines selecting
        /// `tier = "db"`, and a user.
        fn config(&self, targets: &str, role: &str) -> String {
            format!(
                "[gateway]\nstate_dir = \"/x\"\nssh_listen = [\"127.0.0.1:2222\"]\n\n\
                 [[targets]]\nname = \"web-1\"\nkind = \"ssh\"\naddress = \"10.0.1.10\"\n\n\
                 {targets}\n\n\
                 [[roles]]\nname = \"dba\"\ntargets = {{ labels = {{ tier = \"db\" }} }}\nlogins = [\"app_ro\"]\n{role}\n\n\
                 [[users]]\nname = \"alice\"\nroles = [\"dba\"]\nssh_keys = [\"{}\"]\n\n\
                 [recordings]\nrecipients = [\"age1zvkyg2lqzraa2lnjvqej32nkuu0ues2s82hzrye869xeexvn73equnujwj\"]\n",
                key()
            )
        }

        /// `[[targets]]` for a postgres target named `name` at
        /// `db.internal` with `extra` lines.
        fn pg(name: &str, extra: &str) -> String {
            Dir::pg_at(name, "db.internal", extra)
        }

        fn pg_at(name: &str, address: &str, extra: &str) -> String {
            format!(
                "[[targets]]\nname = \"{name}\"\nkind = \"postgres\"\naddress = \"{address}\"\nlabels = {{ tier = \"db\" }}\n{extra}\n"
            )
        }

        fn ok(&self, text: &str) -> Settings {
            load_str(text, &self.source()).unwrap_or_else(|e| panic!("{e}\n{text}"))
        }

        fn errs(&self, text: &str) -> Vec<ConfigError> {
            match load_str(text, &self.source()) {
                Ok(_) => panic!("expected errors:\n{text}"),
                Err(ConfigErrors(e)) => e,
            }
        }
    }

    fn at<'e>(e: &'e [ConfigError], path: &str) -> &'e ConfigError {
        e.iter()
            .find(|e| e.path == path)
            .unwrap_or_else(|| panic!("no error at {path}: {}", ConfigErrors(e.to_vec())))
    }

    /// 1-based (line, column) of the `nth` (0-based) occurrence of `needle`.
    fn pos(text: &str, needle: &str, nth: usize) -> (usize, usize) {
        let offset = text
            .match_indices(needle)
            .nth(nth)
            .unwrap_or_else(|| panic!("`{needle}` not in text"))
            .0;
        let before = &text[..offset];
        let line = before.matches('\n').count() + 1;
        let column = before.rsplit('\n').next().unwrap_or("").chars().count() + 1;
        (line, column)
    }

    fn line_col(e: &ConfigError) -> (usize, usize) {
        (e.line, e.column)
    }

    #[test]
    fn a_postgres_target_is_read_with_its_tls_auth_and_port_defaults() {
        let d = Dir::new();
        let text = d.config(
            &format!(
                "{}{}",
                Dir::pg(
                    "db-1",
                    &format!("tunnel_port = 15432\ntls_ca = \"{}\"", d.ca())
                ),
                Dir::pg_at(
                    "db-2",
                    "10.0.2.21:6432",
                    &format!(
                        "tunnel_port = 15433\ntls = \"verify-full\"\ntls_ca = \"{}\"\ntls_server_name = \"pg.example.org\"\nauth = \"md5\"",
                        d.ca()
                    )
                )
            ),
            "allow_options = true",
        );
        let s = d.ok(&text);
        assert!(s.warnings.is_empty(), "{:?}", s.warnings);
        let web = &s.targets[0];
        assert_eq!(
            (web.kind, web.port, web.db.clone()),
            (TargetKind::Ssh, 22, None)
        );
        let db1 = &s.targets[1];
        assert_eq!(db1.kind, TargetKind::Postgres);
        assert_eq!((db1.host.as_str(), db1.port), ("db.internal", 5432));
        assert!(db1.host_keys.is_empty());
        assert_eq!(
            db1.db,
            Some(DbTarget {
                tunnel_port: 15432,
                tls: DbTls::Verify {
                    ca: d.tmp.path().join("ca.pem"),
                    server_name: "db.internal".into(),
                },
                auth: DbAuth::Scram,
            })
        );
        let db2 = &s.targets[2];
        assert_eq!((db2.host.as_str(), db2.port), ("10.0.2.21", 6432));
        assert_eq!(
            db2.db,
            Some(DbTarget {
                tunnel_port: 15433,
                tls: DbTls::Verify {
                    ca: d.tmp.path().join("ca.pem"),
                    server_name: "pg.example.org".into(),
                },
                auth: DbAuth::Md5,
            })
        );
        assert!(s.roles[0].allow_options);
        assert_eq!(s.targets_without_tls().count(), 0);
    }

    #[test]
    fn allow_options_defaults_to_false_and_must_be_a_boolean() {
        let d = Dir::new();
        let pg = Dir::pg(
            "db-1",
            &format!("tunnel_port = 15432\ntls_ca = \"{}\"", d.ca()),
        );
        assert!(!d.ok(&d.config(&pg, "")).roles[0].allow_options);
        let text = d.config(&pg, "allow_options = \"yes\"");
        let e = d.errs(&text);
        let e = at(&e, "roles[0].allow_options");
        assert_eq!(line_col(e), pos(&text, "\"yes\"", 0));
    }

    #[test]
    fn a_relative_tls_ca_is_resolved_against_the_config_directory() {
        let d = Dir::new();
        let text = d.config(
            &Dir::pg("db-1", "tunnel_port = 15432\ntls_ca = \"ca.pem\""),
            "",
        );
        let s = d.ok(&text);
        let Some(DbTls::Verify { ca, .. }) = s.targets[1].db.as_ref().map(|db| db.tls.clone())
        else {
            panic!("not verify: {:?}", s.targets[1].db);
        };
        assert_eq!(ca, d.tmp.path().join("ca.pem"));
        assert!(ca.is_absolute());
        // The same file name next to another config is another file.
        let other = tempfile::tempdir().unwrap();
        let e = match load_str(&text, &other.path().join("g.toml")) {
            Ok(_) => panic!("a CA next to another config was found"),
            Err(ConfigErrors(e)) => e,
        };
        let e = at(&e, "targets[1].tls_ca");
        assert_eq!(line_col(e), pos(&text, "\"ca.pem\"", 0));
        assert!(e.message.contains("cannot read"), "{e}");
    }

    #[test]
    fn tls_disable_written_out_loads_with_a_warning_naming_its_line() {
        let d = Dir::new();
        let text = d.config(
            &Dir::pg("db-1", "tunnel_port = 15432\ntls = \"disable\""),
            "",
        );
        let s = d.ok(&text);
        assert_eq!(
            s.targets[1].db.as_ref().map(|db| db.tls.clone()),
            Some(DbTls::Disable)
        );
        assert!(s.targets[1].tls_disabled());
        let names: Vec<&str> = s.targets_without_tls().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["db-1"]);
        assert_eq!(s.warnings.len(), 1, "{:?}", s.warnings);
        let (line, col) = pos(&text, "\"disable\"", 0);
        let w = &s.warnings[0];
        assert!(
            w.starts_with(&format!(
                "{}:{line}:{col}: targets[1].tls: ",
                d.source().display()
            )),
            "{w}"
        );
        assert!(w.contains("disabled"), "{w}");
    }

    #[test]
    fn a_postgres_target_needs_exactly_one_of_tls_ca_and_tls_disable() {
        let d = Dir::new();
        // Neither: reported at the target's header, under tls_ca.
        let text = d.config(&Dir::pg("db-1", "tunnel_port = 15432"), "");
        let e = d.errs(&text);
        let e = at(&e, "targets[1].tls_ca");
        assert_eq!(line_col(e), pos(&text, "[[targets]]", 1));
        assert!(e.message.contains("tls = \"disable\""), "{e}");
        // Both.
        let text = d.config(
            &Dir::pg(
                "db-1",
                &format!(
                    "tunnel_port = 15432\ntls_ca = \"{}\"\ntls = \"disable\"",
                    d.ca()
                ),
            ),
            "",
        );
        let e = d.errs(&text);
        let e = at(&e, "targets[1].tls");
        assert_eq!(line_col(e), pos(&text, "\"disable\"", 0));
        assert!(e.message.contains("contradicts"), "{e}");
        // verify-full without a CA.
        let text = d.config(
            &Dir::pg("db-1", "tunnel_port = 15432\ntls = \"verify-full\""),
            "",
        );
        let e = d.errs(&text);
        assert_eq!(
            line_col(at(&e, "targets[1].tls")),
            pos(&text, "\"verify-full\"", 0)
        );
        // Anything else.
        let text = d.config(
            &Dir::pg("db-1", "tunnel_port = 15432\ntls = \"prefer\""),
            "",
        );
        let e = d.errs(&text);
        let e = at(&e, "targets[1].tls");
        assert_eq!(line_col(e), pos(&text, "\"prefer\"", 0));
        assert!(
            e.message.contains("verify-full") && e.message.contains("disable"),
            "{e}"
        );
    }

    #[test]
    fn tls_server_name_is_checked_and_refused_without_tls() {
        let d = Dir::new();
        let text = d.config(
            &Dir::pg(
                "db-1",
                "tunnel_port = 15432\ntls = \"disable\"\ntls_server_name = \"db.example.org\"",
            ),
            "",
        );
        let e = d.errs(&text);
        assert_eq!(
            line_col(at(&e, "targets[1].tls_server_name")),
            pos(&text, "\"db.example.org\"", 0)
        );
        let text = d.config(
            &Dir::pg(
                "db-1",
                &format!(
                    "tunnel_port = 15432\ntls_ca = \"{}\"\ntls_server_name = \"not a name\"",
                    d.ca()
                ),
            ),
            "",
        );
        let e = d.errs(&text);
        assert_eq!(
            line_col(at(&e, "targets[1].tls_server_name")),
            pos(&text, "\"not a name\"", 0)
        );
    }

    #[test]
    fn the_ca_file_must_be_readable_pem_certificates_and_hold_no_key() {
        let d = Dir::new();
        let dir = d.tmp.path();
        std::fs::write(dir.join("empty.pem"), "").unwrap();
        std::fs::write(dir.join("text.pem"), "hello\n").unwrap();
        std::fs::write(
            dir.join("bad.pem"),
            "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        std::fs::write(
            dir.join("key.pem"),
            format!("{CA_PEM}-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"),
        )
        .unwrap();
        std::fs::write(dir.join("big.pem"), vec![b'a'; 2 * 1024 * 1024]).unwrap();
        for (file, says) in [
            ("missing.pem", "cannot read"),
            ("empty.pem", "no PEM certificate"),
            ("text.pem", "no PEM certificate"),
            ("bad.pem", "PEM"),
            ("key.pem", "private key"),
            ("big.pem", "larger than"),
            (".", "cannot read"),
        ] {
            let text = d.config(
                &Dir::pg("db-1", &format!("tunnel_port = 15432\ntls_ca = \"{file}\"")),
                "",
            );
            let e = d.errs(&text);
            let e = at(&e, "targets[1].tls_ca");
            assert_eq!(line_col(e), pos(&text, &format!("\"{file}\""), 0), "{file}");
            assert!(e.message.contains(says), "{file}: {e}");
            assert!(!e.message.contains("AAAA"), "never echoes the file: {e}");
        }
        // Several certificates (a bundle) are fine.
        std::fs::write(dir.join("two.pem"), format!("{CA_PEM}{CA_PEM}")).unwrap();
        let text = d.config(
            &Dir::pg("db-1", "tunnel_port = 15432\ntls_ca = \"two.pem\""),
            "",
        );
        d.ok(&text);
    }

    #[test]
    fn tunnel_port_is_required_in_range_not_22_and_unique() {
        let d = Dir::new();
        let tls = format!("tls_ca = \"{}\"", d.ca());
        let text = d.config(&Dir::pg("db-1", &tls), "");
        let e = d.errs(&text);
        let e = at(&e, "targets[1].tunnel_port");
        assert_eq!(line_col(e), pos(&text, "[[targets]]", 1));
        assert!(e.message.contains("missing required key"), "{e}");
        for bad in ["0", "65536", "-1", "22"] {
            let text = d.config(&Dir::pg("db-1", &format!("tunnel_port = {bad}\n{tls}")), "");
            let e = d.errs(&text);
            let e = at(&e, "targets[1].tunnel_port");
            let (l, c) = pos(&text, &format!("tunnel_port = {bad}"), 0);
            assert_eq!(line_col(e), (l, c + "tunnel_port = ".len()), "{bad}: {e}");
        }
        let text = d.config(
            &format!(
                "{}{}",
                Dir::pg("db-1", &format!("tunnel_port = 15432\n{tls}")),
                Dir::pg("db-2", &format!("tunnel_port = 15432\n{tls}"))
            ),
            "",
        );
        let e = d.errs(&text);
        assert_eq!(e.len(), 1, "{}", ConfigErrors(e.clone()));
        let e = at(&e, "targets[2].tunnel_port");
        let (first_line, _) = pos(&text, "tunnel_port = 15432", 0);
        let (l, c) = pos(&text, "tunnel_port = 15432", 1);
        assert_eq!(line_col(e), (l, c + "tunnel_port = ".len()));
        assert!(
            e.message.contains(&format!("`db-1` (line {first_line})")),
            "{e}"
        );
    }

    #[test]
    fn ssh_and_database_keys_are_refused_on_the_other_kind() {
        let d = Dir::new();
        let host_key = key();
        let text = d.config(
            &Dir::pg(
                "db-1",
                &format!("tunnel_port = 15432\ntls = \"disable\"\nhost_keys = [\"{host_key}\"]"),
            ),
            "",
        )
        .replace(
            "address = \"10.0.1.10\"",
            "address = \"10.0.1.10\"\ntunnel_port = 2200\ntls_ca = \"ca.pem\"\ntls = \"disable\"\ntls_server_name = \"x\"\nauth = \"md5\"",
        );
        let e = d.errs(&text);
        let hk = at(&e, "targets[1].host_keys");
        assert_eq!(line_col(hk), pos(&text, "[\"ssh-ed25519", 0));
        assert!(hk.message.contains("only to kind = \"ssh\""), "{hk}");
        for (key, value) in [
            ("tunnel_port", "2200"),
            ("tls_ca", "\"ca.pem\""),
            ("tls", "\"disable\""),
            ("tls_server_name", "\"x\""),
            ("auth", "\"md5\""),
        ] {
            let e = at(&e, &format!("targets[0].{key}"));
            let (l, c) = pos(&text, &format!("{key} = {value}"), 0);
            assert_eq!(line_col(e), (l, c + key.len() + 3), "{key}");
            assert!(e.message.contains("only to database targets"), "{e}");
        }
        // All of them at once, and nothing else.
        assert_eq!(e.len(), 6, "{}", ConfigErrors(e.clone()));
    }

    #[test]
    fn auth_is_scram_or_md5_and_kind_names_postgres() {
        let d = Dir::new();
        let text = d.config(
            &Dir::pg(
                "db-1",
                "tunnel_port = 15432\ntls = \"disable\"\nauth = \"password\"",
            ),
            "",
        );
        let e = d.errs(&text);
        let e = at(&e, "targets[1].auth");
        assert_eq!(line_col(e), pos(&text, "\"password\"", 0));
        assert!(
            e.message.contains("\"scram\"") && e.message.contains("\"md5\""),
            "{e}"
        );
        let text = d
            .config(
                &Dir::pg("db-1", "tunnel_port = 15432\ntls = \"disable\""),
                "",
            )
            .replace("kind = \"postgres\"", "kind = \"oracle\"");
        let e = d.errs(&text);
        let e = at(&e, "targets[1].kind");
        assert!(e.message.contains("ssh, postgres, mysql"), "{e}");
    }

    #[test]
    fn every_database_target_problem_is_reported_in_one_run() {
        let d = Dir::new();
        let text = d.config(
            &format!(
                "{}{}",
                Dir::pg(
                    "db-1",
                    "tunnel_port = 22\ntls_ca = \"missing.pem\"\nauth = \"md4\""
                ),
                Dir::pg("db-2", "tls = \"verify-full\"")
            ),
            "",
        );
        let e = d.errs(&text);
        for path in [
            "targets[1].tunnel_port",
            "targets[1].tls_ca",
            "targets[1].auth",
            "targets[2].tunnel_port",
            "targets[2].tls",
        ] {
            at(&e, path);
        }
        assert!(e
            .windows(2)
            .all(|w| (w[0].line, w[0].column) <= (w[1].line, w[1].column)));
    }
}
