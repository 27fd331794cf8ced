//! The client side of the MySQL handshake: the greeting gatehouse sends
//! (the real server's version and capabilities, gatehouse's own connection
//! id and nonce), the client's HandshakeResponse41, and the packets
//! gatehouse answers with (OK, ERR, AuthSwitchRequest).

use super::packet::{caps, Reader};
use super::upstream::handshake::{lenenc_int, ServerHello};
use super::upstream::PASS_THROUGH;

/// Capabilities gatehouse offers a client, of those the server has: the
/// ones passed through to the server, plus the handshake's own. Never TLS
/// (the tunnel or SSH encrypts), compression, LOCAL INFILE, connection
/// attributes or query attributes.
pub const OFFERED: u32 = PASS_THROUGH
    | caps::PROTOCOL_41
    | caps::SECURE_CONNECTION
    | caps::PLUGIN_AUTH
    | caps::PLUGIN_AUTH_LENENC_CLIENT_DATA
    | caps::CONNECT_WITH_DB;

/// Server status flag: autocommit.
pub const STATUS_AUTOCOMMIT: u16 = 0x0002;

/// The greeting for `hello`'s server, with `connection_id` and `nonce` of
/// gatehouse's own, naming `mysql_native_password`.
pub fn greeting(hello: &ServerHello, connection_id: u32, nonce: &[u8; 20]) -> Vec<u8> {
    let capabilities = offered(hello);
    let mut p = Vec::with_capacity(128);
    p.push(10);
    p.extend_from_slice(hello.server_version.as_bytes());
    p.push(0);
    p.extend_from_slice(&connection_id.to_le_bytes());
    p.extend_from_slice(nonce.get(..8).unwrap_or_default());
    p.push(0);
    let [c0, c1, c2, c3] = capabilities.to_le_bytes();
    p.extend_from_slice(&[c0, c1]);
    p.push(hello.charset);
    p.extend_from_slice(&STATUS_AUTOCOMMIT.to_le_bytes());
    p.extend_from_slice(&[c2, c3]);
    p.push(21);
    // Reserved (10 bytes; MariaDB's extended capabilities in the last 4,
    // none offered).
    p.extend_from_slice(&[0; 10]);
    p.extend_from_slice(nonce.get(8..).unwrap_or_default());
    p.push(0);
    p.extend_from_slice(super::upstream::auth::NATIVE.as_bytes());
    p.push(0);
    p
}

/// The capabilities offered for `hello`'s server. `CLIENT_MYSQL`
/// (`LONG_PASSWORD`) is kept as the server has it: MariaDB clears it.
pub fn offered(hello: &ServerHello) -> u32 {
    hello.capabilities & OFFERED
}

/// What the client said in its HandshakeResponse41.
#[derive(Debug, Clone, Default)]
pub struct Response {
    pub capabilities: u32,
    pub charset: u8,
    pub user: Vec<u8>,
    pub auth: Vec<u8>,
    pub database: Option<Vec<u8>>,
    pub plugin: Option<String>,
}

/// Why a handshake response was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResponseError {
    /// Protocol 4.1 is required.
    Old,
    /// The client asked for TLS (an SSLRequest), which is not offered.
    Tls,
    Malformed,
}

/// Parses a HandshakeResponse41.
pub fn parse_response(payload: &[u8]) -> Result<Response, ResponseError> {
    let mut r = Reader::new(payload);
    let capabilities = r.u32().ok_or(ResponseError::Malformed)?;
    if capabilities & caps::PROTOCOL_41 == 0 {
        return Err(ResponseError::Old);
    }
    if capabilities & caps::SSL != 0 {
        return Err(ResponseError::Tls);
    }
    let _max_packet = r.u32().ok_or(ResponseError::Malformed)?;
    let charset = r.u8().ok_or(ResponseError::Malformed)?;
    r.bytes(23).ok_or(ResponseError::Malformed)?;
    let user = r.cstr().ok_or(ResponseError::Malformed)?.to_vec();
    let auth = if capabilities & caps::PLUGIN_AUTH_LENENC_CLIENT_DATA != 0 {
        let n = super::binary::lenenc(&mut r).ok_or(ResponseError::Malformed)?;
        r.bytes(usize::try_from(n).map_err(|_| ResponseError::Malformed)?)
            .ok_or(ResponseError::Malformed)?
            .to_vec()
    } else if capabilities & caps::SECURE_CONNECTION != 0 {
        let n = r.u8().ok_or(ResponseError::Malformed)?;
        r.bytes(usize::from(n))
            .ok_or(ResponseError::Malformed)?
            .to_vec()
    } else {
        r.cstr().ok_or(ResponseError::Malformed)?.to_vec()
    };
    let database = if capabilities & caps::CONNECT_WITH_DB != 0 && !r.is_empty() {
        Some(r.cstr_or_rest().to_vec())
    } else {
        None
    };
    let plugin = if capabilities & caps::PLUGIN_AUTH != 0 && !r.is_empty() {
        Some(String::from_utf8_lossy(r.cstr_or_rest()).into_owned())
    } else {
        None
    };
    Ok(Response {
        capabilities,
        charset,
        user,
        auth,
        database,
        plugin,
    })
}

/// An OK packet (no rows, no insert id) with `status`; with
/// `CLIENT_SESSION_TRACK` the (empty) info is length-encoded.
pub fn ok(status: u16, capabilities: u32) -> Vec<u8> {
    let mut p = vec![0, 0, 0];
    p.extend_from_slice(&status.to_le_bytes());
    p.extend_from_slice(&[0, 0]);
    if capabilities & caps::SESSION_TRACK != 0 {
        lenenc_int(&mut p, 0);
    }
    p
}

/// An ERR packet.
pub fn err(code: u16, sqlstate: &str, message: &str) -> Vec<u8> {
    let mut p = vec![0xFF];
    p.extend_from_slice(&code.to_le_bytes());
    p.push(b'#');
    let mut state = [b'H', b'Y', b'0', b'0', b'0'];
    for (d, s) in state.iter_mut().zip(sqlstate.bytes()) {
        *d = s;
    }
    p.extend_from_slice(&state);
    p.extend_from_slice(message.as_bytes());
    p
}

/// An AuthSwitchRequest to `mysql_native_password` with `nonce`.
pub fn switch_to_native(nonce: &[u8; 20]) -> Vec<u8> {
    let mut p = vec![0xFE];
    p.extend_from_slice(super::upstream::auth::NATIVE.as_bytes());
    p.push(0);
    p.extend_from_slice(nonce);
    p.push(0);
    p
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use crate::db::mysql::upstream::handshake::parse_hello;

    fn hello() -> ServerHello {
        ServerHello {
            protocol: 10,
            server_version: "10.11.19-MariaDB-0+deb12u1".into(),
            connection_id: 5,
            capabilities: 0xFFFF_FFFE & !caps::REMEMBER_OPTIONS,
            mariadb_capabilities: 0x1F,
            charset: 45,
            status: 2,
            auth_plugin: "mysql_native_password".into(),
            nonce: vec![1; 20],
        }
    }

    #[test]
    fn the_greeting_is_the_servers_version_with_gatehouses_id_and_safe_capabilities() {
        let nonce = [7u8; 20];
        let g = greeting(&hello(), 0x0102_0304, &nonce);
        let parsed = parse_hello(&g).unwrap();
        assert_eq!(parsed.server_version, "10.11.19-MariaDB-0+deb12u1");
        assert_eq!(parsed.connection_id, 0x0102_0304);
        assert_eq!(parsed.nonce.get(..20).unwrap(), &nonce);
        assert_eq!(parsed.auth_plugin, "mysql_native_password");
        assert_eq!(
            parsed.mariadb_capabilities, 0,
            "no MariaDB extension offered"
        );
        for never in [
            caps::SSL,
            caps::COMPRESS,
            caps::LOCAL_FILES,
            caps::CONNECT_ATTRS,
            caps::ZSTD_COMPRESSION,
            caps::QUERY_ATTRIBUTES,
        ] {
            assert_eq!(parsed.capabilities & never, 0, "offered {never:#x}");
        }
        assert_ne!(parsed.capabilities & caps::DEPRECATE_EOF, 0);
        assert_eq!(
            parsed.capabilities & caps::LONG_PASSWORD,
            0,
            "MariaDB's CLIENT_MYSQL kept clear"
        );
    }

    #[test]
    fn a_response_is_parsed_and_an_ssl_request_refused() {
        let mut p = Vec::new();
        let c = caps::PROTOCOL_41
            | caps::SECURE_CONNECTION
            | caps::PLUGIN_AUTH
            | caps::CONNECT_WITH_DB
            | caps::PLUGIN_AUTH_LENENC_CLIENT_DATA;
        p.extend_from_slice(&c.to_le_bytes());
        p.extend_from_slice(&(1u32 << 24).to_le_bytes());
        p.push(33);
        p.extend_from_slice(&[0; 23]);
        p.extend_from_slice(b"app\0");
        p.push(20);
        p.extend_from_slice(&[9; 20]);
        p.extend_from_slice(b"shop\0mysql_native_password\0");
        let r = parse_response(&p).unwrap();
        assert_eq!(r.user, b"app");
        assert_eq!(r.auth, vec![9; 20]);
        assert_eq!(r.database.as_deref(), Some(&b"shop"[..]));
        assert_eq!(r.plugin.as_deref(), Some("mysql_native_password"));
        assert_eq!(r.charset, 33);
        let mut ssl = (c | caps::SSL).to_le_bytes().to_vec();
        ssl.extend_from_slice(&[0; 28]);
        assert_eq!(parse_response(&ssl).unwrap_err(), ResponseError::Tls);
        assert_eq!(
            parse_response(&p[..30]).unwrap_err(),
            ResponseError::Malformed
        );
    }
}
