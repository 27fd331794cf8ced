//! The connection phase packets: the server's initial handshake (protocol
//! 10), the SSLRequest and HandshakeResponse41 gatehouse sends, and which
//! capabilities it asks for.
//!
//! Parsing never indexes or panics on what the server sent; a truncated or
//! inconsistent handshake is a [`UpstreamError::Protocol`].

use zeroize::Zeroizing;

use super::super::packet::{caps, parse_err, Reader};
use super::UpstreamError;

/// What a server says before any login.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerHello {
    /// Always 10.
    pub protocol: u8,
    /// e.g. `10.11.19-MariaDB-0+deb12u1` or `8.0.40`.
    pub server_version: String,
    /// The thread id of this connection (what `KILL` names).
    pub connection_id: u32,
    /// The server's capability flags ([`caps`]).
    pub capabilities: u32,
    /// MariaDB's extended capabilities (the last 4 reserved bytes), 0 when
    /// the server is MySQL (it sets `CLIENT_LONG_PASSWORD`, a.k.a.
    /// `CLIENT_MYSQL`).
    pub mariadb_capabilities: u32,
    /// The server's default collation id.
    pub charset: u8,
    /// Server status flags.
    pub status: u16,
    /// The default authentication plugin (`mysql_native_password` when the
    /// server names none).
    pub auth_plugin: String,
    /// The authentication nonce (20 bytes for the usual plugins). Not a
    /// secret, but of no use to anyone but this connection's login.
    pub nonce: Vec<u8>,
}

impl ServerHello {
    /// Whether the server is MariaDB (it clears `CLIENT_MYSQL`).
    pub fn is_mariadb(&self) -> bool {
        self.capabilities & caps::LONG_PASSWORD == 0 || self.server_version.contains("MariaDB")
    }
}

/// Parses the server's first packet: an initial handshake, or an ERR packet
/// (too many connections, host blocked, ...) which becomes
/// [`UpstreamError::Server`].
pub fn parse_hello(payload: &[u8]) -> Result<ServerHello, UpstreamError> {
    if let Some(err) = parse_err(payload) {
        return Err(UpstreamError::Server {
            code: err.code,
            sqlstate: err.sqlstate,
            message: err.message,
        });
    }
    let bad = |what: &str| UpstreamError::Protocol(format!("malformed server handshake: {what}"));
    let mut r = Reader::new(payload);
    let protocol = r.u8().ok_or_else(|| bad("empty"))?;
    if protocol != 10 {
        return Err(UpstreamError::Protocol(format!(
            "unsupported handshake protocol version {protocol} (expected 10)"
        )));
    }
    let version = r.cstr().ok_or_else(|| bad("no version string"))?;
    let connection_id = r.u32().ok_or_else(|| bad("no thread id"))?;
    let part1 = r.bytes(8).ok_or_else(|| bad("short nonce"))?;
    let _filler = r.u8().ok_or_else(|| bad("truncated"))?;
    let lower = r.u16().ok_or_else(|| bad("no capabilities"))?;
    let mut hello = ServerHello {
        protocol,
        server_version: String::from_utf8_lossy(version).into_owned(),
        connection_id,
        capabilities: u32::from(lower),
        mariadb_capabilities: 0,
        charset: 0,
        status: 0,
        auth_plugin: super::auth::NATIVE.to_string(),
        nonce: part1.to_vec(),
    };
    if r.is_empty() {
        return Ok(hello);
    }
    hello.charset = r.u8().ok_or_else(|| bad("truncated"))?;
    hello.status = r.u16().ok_or_else(|| bad("no status"))?;
    let upper = r.u16().ok_or_else(|| bad("no upper capabilities"))?;
    hello.capabilities |= u32::from(upper) << 16;
    let auth_len = r.u8().ok_or_else(|| bad("truncated"))?;
    let _reserved = r.bytes(6).ok_or_else(|| bad("truncated reserved bytes"))?;
    let ext = r.u32().ok_or_else(|| bad("truncated reserved bytes"))?;
    if hello.capabilities & caps::LONG_PASSWORD == 0 {
        hello.mariadb_capabilities = ext;
    }
    if hello.capabilities & caps::SECURE_CONNECTION != 0 {
        let want = usize::from(auth_len).saturating_sub(8).max(13);
        let part2 = r.bytes(want).ok_or_else(|| bad("short nonce part 2"))?;
        let part2 = match part2.split_last() {
            Some((0, head)) => head,
            _ => part2,
        };
        hello.nonce.extend_from_slice(part2);
    }
    if hello.capabilities & caps::PLUGIN_AUTH != 0 {
        let name = r.cstr_or_rest();
        if !name.is_empty() {
            hello.auth_plugin = String::from_utf8_lossy(name).into_owned();
        }
    }
    Ok(hello)
}

/// Client capabilities passed through from the person's client (when the
/// server has them too): they shape the session the relay carries.
pub const PASS_THROUGH: u32 = caps::LONG_PASSWORD
    | caps::FOUND_ROWS
    | caps::LONG_FLAG
    | caps::NO_SCHEMA
    | caps::ODBC
    | caps::IGNORE_SPACE
    | caps::INTERACTIVE
    | caps::IGNORE_SIGPIPE
    | caps::TRANSACTIONS
    | caps::MULTI_STATEMENTS
    | caps::MULTI_RESULTS
    | caps::PS_MULTI_RESULTS
    | caps::SESSION_TRACK
    | caps::DEPRECATE_EOF;

/// Never asked for, whatever the client offers: LOCAL INFILE (the server
/// could read the client's files), compression (not offered), attributes
/// and flags that change the command or result formats the relay decodes,
/// and sandbox logins with an expired password.
pub const NEVER: u32 = caps::LOCAL_FILES
    | caps::COMPRESS
    | caps::ZSTD_COMPRESSION
    | caps::CONNECT_ATTRS
    | caps::QUERY_ATTRIBUTES
    | caps::OPTIONAL_RESULTSET_METADATA
    | caps::CAN_HANDLE_EXPIRED_PASSWORDS
    | caps::MULTI_FACTOR_AUTHENTICATION
    | caps::CAPABILITY_EXTENSION
    | caps::SSL_VERIFY_SERVER_CERT
    | caps::REMEMBER_OPTIONS;

/// The capabilities gatehouse sends upstream: the client's pass-through
/// flags the server also has, plus protocol 4.1, secure connection, plugin
/// auth (with length-encoded auth data when the server has it), SSL when
/// TLS is used and CONNECT_WITH_DB when a database is named. Never any of
/// [`NEVER`].
pub fn client_capabilities(client_caps: u32, server_caps: u32, tls: bool, with_db: bool) -> u32 {
    let mut out = client_caps & PASS_THROUGH & server_caps;
    out |= caps::PROTOCOL_41 | caps::SECURE_CONNECTION;
    out |= server_caps & (caps::PLUGIN_AUTH | caps::PLUGIN_AUTH_LENENC_CLIENT_DATA);
    if tls {
        out |= caps::SSL;
    }
    if with_db {
        out |= caps::CONNECT_WITH_DB;
    }
    out & !NEVER
}

/// `max_packet_size` announced to the server.
pub const MAX_PACKET_SIZE: u32 = 1 << 24;

/// The fixed 32-byte head of a HandshakeResponse41, which alone is the
/// SSLRequest.
pub fn ssl_request(capabilities: u32, charset: u8) -> Vec<u8> {
    let mut out = Vec::with_capacity(32);
    out.extend_from_slice(&capabilities.to_le_bytes());
    out.extend_from_slice(&MAX_PACKET_SIZE.to_le_bytes());
    out.push(charset);
    // 19 filler bytes + 4 bytes of MariaDB extended capabilities (none).
    out.extend_from_slice(&[0u8; 23]);
    out
}

/// HandshakeResponse41. `user` and `database` must not hold NUL; the
/// auth response is length-encoded or length-prefixed per `capabilities`.
pub fn handshake_response(
    capabilities: u32,
    charset: u8,
    user: &str,
    auth: &[u8],
    database: Option<&str>,
    plugin: &str,
) -> Result<Zeroizing<Vec<u8>>, UpstreamError> {
    if user.contains('\0') || database.is_some_and(|d| d.contains('\0')) {
        return Err(UpstreamError::Protocol(
            "the login or database name contains a NUL byte".into(),
        ));
    }
    let mut out = Zeroizing::new(ssl_request(capabilities, charset));
    out.extend_from_slice(user.as_bytes());
    out.push(0);
    if capabilities & caps::PLUGIN_AUTH_LENENC_CLIENT_DATA != 0 {
        lenenc_int(&mut out, auth.len() as u64);
    } else {
        let len = u8::try_from(auth.len()).map_err(|_| {
            UpstreamError::Protocol("authentication response too long for the server".into())
        })?;
        out.push(len);
    }
    out.extend_from_slice(auth);
    if capabilities & caps::CONNECT_WITH_DB != 0 {
        out.extend_from_slice(database.unwrap_or_default().as_bytes());
        out.push(0);
    }
    if capabilities & caps::PLUGIN_AUTH != 0 {
        out.extend_from_slice(plugin.as_bytes());
        out.push(0);
    }
    Ok(out)
}

/// A length-encoded integer.
pub fn lenenc_int(out: &mut Vec<u8>, n: u64) {
    if n < 251 {
        out.push(n as u8);
    } else if n < 1 << 16 {
        out.push(0xfc);
        out.extend_from_slice(&(n as u16).to_le_bytes());
    } else if n < 1 << 24 {
        let [a, b, c, _] = (n as u32).to_le_bytes();
        out.extend_from_slice(&[0xfd, a, b, c]);
    } else {
        out.push(0xfe);
        out.extend_from_slice(&n.to_le_bytes());
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A MariaDB 10.11 greeting, as the server sends it.
    pub(crate) fn mariadb_hello() -> Vec<u8> {
        let mut p = vec![10];
        p.extend_from_slice(b"5.5.5-10.11.19-MariaDB-0+deb12u1\0");
        p.extend_from_slice(&42u32.to_le_bytes());
        p.extend_from_slice(b"abcdefgh");
        p.push(0);
        let caps: u32 = 0xf7fe_fffe & !1;
        p.extend_from_slice(&(caps as u16).to_le_bytes());
        p.push(45);
        p.extend_from_slice(&2u16.to_le_bytes());
        p.extend_from_slice(&((caps >> 16) as u16).to_le_bytes());
        p.push(21);
        p.extend_from_slice(&[0; 6]);
        p.extend_from_slice(&0x1du32.to_le_bytes());
        p.extend_from_slice(b"ijklmnopqrst\0");
        p.extend_from_slice(b"mysql_native_password\0");
        p
    }

    #[test]
    fn a_mariadb_greeting_is_parsed() {
        let h = parse_hello(&mariadb_hello()).unwrap();
        assert_eq!(h.server_version, "5.5.5-10.11.19-MariaDB-0+deb12u1");
        assert_eq!(h.connection_id, 42);
        assert_eq!(h.nonce, b"abcdefghijklmnopqrst");
        assert_eq!(h.charset, 45);
        assert_eq!(h.status, 2);
        assert_eq!(h.auth_plugin, "mysql_native_password");
        assert_eq!(h.mariadb_capabilities, 0x1d);
        assert!(h.is_mariadb());
        assert_ne!(h.capabilities & caps::PLUGIN_AUTH, 0);
    }

    #[test]
    fn a_plugin_name_without_terminator_and_an_err_greeting() {
        let mut p = mariadb_hello();
        p.pop();
        assert_eq!(
            parse_hello(&p).unwrap().auth_plugin,
            "mysql_native_password"
        );
        let mut err = vec![0xff, 0x10, 0x04];
        err.extend_from_slice(b"Too many connections");
        match parse_hello(&err) {
            Err(UpstreamError::Server { code, message, .. }) => {
                assert_eq!((code, message.as_str()), (1040, "Too many connections"))
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            parse_hello(&[9, b'x', 0]),
            Err(UpstreamError::Protocol(_))
        ));
    }

    #[test]
    fn local_files_and_compression_are_never_asked_for() {
        for tls in [false, true] {
            let c = client_capabilities(u32::MAX, u32::MAX, tls, true);
            assert_eq!(c & caps::LOCAL_FILES, 0);
            assert_eq!(c & caps::COMPRESS, 0);
            assert_eq!(c & caps::ZSTD_COMPRESSION, 0);
            assert_eq!(c & caps::SSL != 0, tls);
        }
        let c = client_capabilities(caps::DEPRECATE_EOF, !caps::DEPRECATE_EOF, false, false);
        assert_eq!(c & caps::DEPRECATE_EOF, 0, "only what the server has too");
        assert_eq!(c & caps::CONNECT_WITH_DB, 0);
        // The response carries them: no LOCAL_FILES bit on the wire.
        let r = handshake_response(c, 45, "app", b"x", None, "mysql_native_password").unwrap();
        let sent = u32::from_le_bytes(r[..4].try_into().unwrap());
        assert_eq!(sent & caps::LOCAL_FILES, 0);
    }

    #[test]
    fn handshake_response_layout() {
        let c =
            caps::PROTOCOL_41 | caps::SECURE_CONNECTION | caps::PLUGIN_AUTH | caps::CONNECT_WITH_DB;
        let r = handshake_response(c, 45, "app", &[1, 2, 3], Some("db"), "p").unwrap();
        assert_eq!(&r[..4], &c.to_le_bytes());
        assert_eq!(&r[4..8], &MAX_PACKET_SIZE.to_le_bytes());
        assert_eq!(r[8], 45);
        assert_eq!(&r[9..32], &[0; 23]);
        assert_eq!(&r[32..], b"app\0\x03\x01\x02\x03db\0p\0");
        let r = handshake_response(
            c | caps::PLUGIN_AUTH_LENENC_CLIENT_DATA,
            45,
            "a",
            &[9; 300],
            None,
            "p",
        )
        .unwrap();
        assert_eq!(&r[32..37], b"a\0\xfc\x2c\x01");
        assert!(handshake_response(c, 45, "a\0b", &[], None, "p").is_err());
        assert_eq!(ssl_request(c, 8).len(), 32);
    }

    proptest! {
        #[test]
        fn malformed_greetings_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = parse_hello(&bytes);
        }

        #[test]
        fn truncated_or_mutated_greetings_never_panic(cut in 0usize..120, at in 0usize..120, v in any::<u8>()) {
            let mut p = mariadb_hello();
            if at < p.len() { p[at] = v; }
            p.truncate(cut);
            let _ = parse_hello(&p);
        }
    }
}
