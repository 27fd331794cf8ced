//! The upstream side of a MySQL/MariaDB session: gatehouse reads the
//! server's greeting (to greet the person's client with the real version and
//! capabilities), logs in with the credential it holds, and hands the ready
//! connection to the relay; and it sends `KILL QUERY` for a cancel.
//!
//! Security behaviour:
//! - TLS (`DbTls::Verify`): after the server's greeting, an SSLRequest and a
//!   handshake verified against the CA pinned for the target and
//!   `tls_server_name` (verify-full). A server without `CLIENT_SSL`, or a
//!   certificate that does not verify, ends the attempt with
//!   [`UpstreamError::Tls`]. Nothing but the SSLRequest is sent before the
//!   handshake.
//! - Capabilities per [`handshake::client_capabilities`]: never
//!   `CLIENT_LOCAL_FILES` (the server could read files), never compression.
//! - Authentication per [`auth`]: native and caching_sha2 scrambles, MariaDB
//!   ed25519; the password itself only inside verified TLS; the RSA
//!   public-key path of caching_sha2 is refused; one AuthSwitchRequest.
//! - Bounded: the whole login has [`LOGIN_TIMEOUT`]; each packet is at most
//!   [`MAX_PACKET`] bytes, at most [`MAX_AUTH_ROUNDS`] authentication
//!   packets are read.
//! - The password is never in an error or a log line. A server error that
//!   quotes it (it should not) has it replaced by `***`.
//!
//! Operations note: a [`probe`] is a connection that ends before a login.
//! MySQL and MariaDB count those per client host (`max_connect_errors`,
//! loopback exempt) and block the host after that many in a row without a
//! successful login in between. Callers should cache the greeting per target
//! and refresh it from each login ([`Upstream::hello`]) rather than probe on
//! every client connection.

#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

pub mod auth;
pub mod handshake;

use std::io;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::db::tls;

pub use self::auth::AuthPlugin;
pub use self::handshake::{client_capabilities, ServerHello, NEVER, PASS_THROUGH};
use super::packet::{caps, parse_err, read_packet, write_packet, PacketError, Reader};
use crate::config::{DbTls, Target};
/// The same stream type as the PostgreSQL upstream's: plain TCP or TLS.
pub use crate::db::postgres::upstream::UpstreamStream;

/// The whole login (or a probe, or a kill) must finish within this.
pub const LOGIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest packet accepted from the server during the login.
pub const MAX_PACKET: usize = 1 << 24;
/// Most authentication packets read from the server in one login.
pub const MAX_AUTH_ROUNDS: usize = 8;
/// utf8mb4_general_ci, when the server names no default collation.
const DEFAULT_CHARSET: u8 = 45;

/// Where a MySQL/MariaDB server is and how to reach it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
    pub tls: DbTls,
}

impl Endpoint {
    /// The endpoint of a database target; None when it is not one.
    pub fn from_target(target: &Target) -> Option<Endpoint> {
        let db = target.db.as_ref()?;
        Some(Endpoint {
            host: target.host.clone(),
            port: target.port,
            tls: db.tls.clone(),
        })
    }

    fn at(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

/// Why a connection to the server failed. `Display` is safe to show to the
/// client: it never contains the password.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// TCP connect, resolution, I/O, or the login did not finish in time.
    #[error("cannot reach the database server: {0}")]
    Connect(String),
    /// TLS refused or not verified (certificate, name, CA file).
    #[error("TLS to the database server failed: {0}")]
    Tls(String),
    /// The server's own ERR packet.
    #[error("ERROR {code} ({sqlstate}): {message}")]
    Server {
        code: u16,
        sqlstate: String,
        message: String,
    },
    /// gatehouse holds no password for this database login (never returned
    /// by this module; for the caller).
    #[error("gatehouse holds no password for this database login")]
    NoCredential,
    /// The server broke the protocol.
    #[error("database server protocol error: {0}")]
    Protocol(String),
    /// The server asked for an authentication method gatehouse refuses.
    #[error("database authentication method refused: {0}")]
    AuthMethod(String),
}

impl From<PacketError> for UpstreamError {
    fn from(e: PacketError) -> Self {
        match e {
            PacketError::Io(e) => UpstreamError::Connect(format!("reading from the server: {e}")),
            PacketError::Closed => {
                UpstreamError::Protocol("the server closed the connection during login".into())
            }
            other => UpstreamError::Protocol(other.to_string()),
        }
    }
}

/// A logged-in connection, right after the server's OK: the next packet
/// the client side sends is a command with sequence id 0.
#[derive(Debug)]
pub struct Upstream {
    pub stream: UpstreamStream,
    /// The server's thread id for this connection (what `KILL` names).
    pub connection_id: u32,
    pub server_version: String,
    /// The capabilities in force: those gatehouse sent that the server has.
    pub capabilities: u32,
    /// Whether the connection is TLS.
    pub tls: bool,
    /// How gatehouse authenticated.
    pub auth: AuthPlugin,
    /// This connection's greeting (a fresh probe result, for free).
    pub hello: ServerHello,
}

/// Connects, reads the server's greeting and closes. No credential is sent.
pub async fn probe(ep: &Endpoint) -> Result<ServerHello, UpstreamError> {
    let work = async {
        let mut tcp = tcp(ep).await?;
        let mut seq = 0u8;
        let payload = read_packet(&mut tcp, &mut seq, MAX_PACKET).await?;
        let hello = handshake::parse_hello(&payload)?;
        let _ = tcp.shutdown().await;
        Ok(hello)
    };
    within(ep, work).await
}

/// Logs in to the server at `ep` as `login` (optionally selecting
/// `database`) with `password`, asking for the client's capabilities
/// `client_caps` that gatehouse passes through (see
/// [`handshake::client_capabilities`]), in the server's default character
/// set. At most [`LOGIN_TIMEOUT`].
pub async fn connect(
    ep: &Endpoint,
    login: &str,
    database: Option<&str>,
    password: &[u8],
    client_caps: u32,
) -> Result<Upstream, UpstreamError> {
    connect_with_charset(ep, login, database, password, client_caps, None).await
}

/// [`connect`] with the client's collation id (`charset`) instead of the
/// server's default.
pub async fn connect_with_charset(
    ep: &Endpoint,
    login: &str,
    database: Option<&str>,
    password: &[u8],
    client_caps: u32,
    charset: Option<u8>,
) -> Result<Upstream, UpstreamError> {
    let work = self::login(ep, login, database, password, client_caps, charset);
    within(ep, work).await.map_err(|e| redact(e, password))
}

/// Logs in as `login` and runs `KILL QUERY thread_id`: the statement the
/// thread runs is stopped, the connection stays. The server's refusal (e.g.
/// 1094 unknown thread, 1095 not your thread) is [`UpstreamError::Server`].
pub async fn kill_query(
    ep: &Endpoint,
    login: &str,
    password: &[u8],
    thread_id: u32,
) -> Result<(), UpstreamError> {
    kill(ep, login, password, thread_id, false).await
}

/// [`kill_query`], or with `connection` `KILL CONNECTION thread_id`: the
/// thread's connection is closed.
pub async fn kill(
    ep: &Endpoint,
    login: &str,
    password: &[u8],
    thread_id: u32,
    connection: bool,
) -> Result<(), UpstreamError> {
    let what = if connection { "CONNECTION" } else { "QUERY" };
    let work = async {
        let mut up = self::login(ep, login, None, password, 0, None).await?;
        let mut seq = 0u8;
        let mut command = vec![COM_QUERY];
        command.extend_from_slice(format!("KILL {what} {thread_id}").as_bytes());
        write_packet(&mut up.stream, &mut seq, &command)
            .await
            .map_err(write_error)?;
        let reply = read_packet(&mut up.stream, &mut seq, MAX_PACKET).await?;
        let result = match reply.first() {
            Some(0x00) => Ok(()),
            Some(0xFF) => Err(server_error(&reply)),
            _ => Err(UpstreamError::Protocol(format!(
                "unexpected answer to KILL {what}"
            ))),
        };
        let mut seq = 0u8;
        let _ = write_packet(&mut up.stream, &mut seq, &[COM_QUIT]).await;
        let _ = up.stream.shutdown().await;
        result
    };
    within(ep, work).await.map_err(|e| redact(e, password))
}

const COM_QUIT: u8 = 0x01;
const COM_QUERY: u8 = 0x03;

async fn within<T>(
    ep: &Endpoint,
    work: impl std::future::Future<Output = Result<T, UpstreamError>>,
) -> Result<T, UpstreamError> {
    match tokio::time::timeout(LOGIN_TIMEOUT, work).await {
        Ok(result) => result,
        Err(_) => Err(UpstreamError::Connect(format!(
            "{}: the server did not answer within {} s",
            ep.at(),
            LOGIN_TIMEOUT.as_secs()
        ))),
    }
}

async fn tcp(ep: &Endpoint) -> Result<TcpStream, UpstreamError> {
    let tcp = TcpStream::connect((ep.host.as_str(), ep.port))
        .await
        .map_err(|e| UpstreamError::Connect(format!("{}: {e}", ep.at())))?;
    let _ = tcp.set_nodelay(true);
    Ok(tcp)
}

fn write_error(e: io::Error) -> UpstreamError {
    UpstreamError::Connect(format!("writing to the server: {e}"))
}

fn server_error(payload: &[u8]) -> UpstreamError {
    match parse_err(payload) {
        Some(e) => UpstreamError::Server {
            code: e.code,
            sqlstate: e.sqlstate,
            message: e.message,
        },
        None => UpstreamError::Protocol("malformed ERR packet".into()),
    }
}

/// Where the authentication exchange is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AuthState {
    /// Sent a response for `plugin`; expecting OK, ERR, a switch or more data.
    Sent(AuthPlugin),
    /// Switched to ed25519 without a nonce: the next packet is the nonce.
    Ed25519Nonce,
}

async fn login(
    ep: &Endpoint,
    login: &str,
    database: Option<&str>,
    password: &[u8],
    client_caps: u32,
    charset: Option<u8>,
) -> Result<Upstream, UpstreamError> {
    let mut tcp = tcp(ep).await?;
    let mut seq = 0u8;
    let payload = read_packet(&mut tcp, &mut seq, MAX_PACKET).await?;
    let hello = handshake::parse_hello(&payload)?;
    let need = caps::PROTOCOL_41 | caps::SECURE_CONNECTION;
    if hello.capabilities & need != need {
        return Err(UpstreamError::Protocol(format!(
            "the server ({}) does not speak protocol 4.1 with secure authentication",
            hello.server_version
        )));
    }
    let use_tls = matches!(ep.tls, DbTls::Verify { .. });
    let capabilities =
        client_capabilities(client_caps, hello.capabilities, use_tls, database.is_some());
    let charset = charset
        .or(Some(hello.charset).filter(|c| *c != 0))
        .unwrap_or(DEFAULT_CHARSET);

    let mut stream = match &ep.tls {
        DbTls::Disable => UpstreamStream::Plain(tcp),
        DbTls::Verify { ca, server_name } => {
            // Check the local side before the server sees anything.
            let config = tls::client_config(ca).map_err(UpstreamError::Tls)?;
            let name = tls::server_name(server_name).map_err(UpstreamError::Tls)?;
            if hello.capabilities & caps::SSL == 0 {
                return Err(UpstreamError::Tls(format!(
                    "the server at {} does not offer TLS (no CLIENT_SSL in its greeting)",
                    ep.at()
                )));
            }
            write_packet(
                &mut tcp,
                &mut seq,
                &handshake::ssl_request(capabilities, charset),
            )
            .await
            .map_err(write_error)?;
            let stream = TlsConnector::from(config)
                .connect(name, tcp)
                .await
                .map_err(|e| UpstreamError::Tls(tls::handshake_error(e, ca, server_name)))?;
            UpstreamStream::Tls(Box::new(stream))
        }
    };

    // The first response: the server's plugin when we speak it, else
    // native (the server then switches to the login's plugin).
    let nonce = auth::nonce20(&hello.nonce);
    let (plugin, response) = match hello.auth_plugin.as_str() {
        auth::CACHING_SHA2 => (
            AuthPlugin::CachingSha2Fast,
            auth::caching_sha2_scramble(password, nonce),
        ),
        _ => (
            AuthPlugin::NativePassword,
            auth::native_scramble(password, nonce),
        ),
    };
    let first = handshake::handshake_response(
        capabilities,
        charset,
        login,
        &response,
        database,
        plugin.name(),
    )?;
    write_packet(&mut stream, &mut seq, &first)
        .await
        .map_err(write_error)?;

    let mut state = AuthState::Sent(plugin);
    let mut switched = false;
    for _round in 0..MAX_AUTH_ROUNDS {
        let packet = read_packet(&mut stream, &mut seq, MAX_PACKET).await?;
        let mut r = Reader::new(&packet);
        let head = r.u8();
        let reply = match (state, head) {
            (_, Some(0xFF)) => return Err(server_error(&packet)),
            (_, Some(0xFE)) if !switched => {
                switched = true;
                let step = switch(r, password, use_tls)?;
                state = step.0;
                step.1
            }
            (_, Some(0xFE)) => {
                return Err(UpstreamError::Protocol(
                    "the server asked to switch the authentication plugin twice".into(),
                ))
            }
            (AuthState::Ed25519Nonce, Some(_)) => {
                // Sent raw, or escaped with 0x01 when it starts with 1/254/255.
                let data = if head == Some(0x01) {
                    r.rest()
                } else {
                    &packet
                };
                state = AuthState::Sent(AuthPlugin::Ed25519);
                Some(ed25519_reply(password, data)?)
            }
            (AuthState::Sent(plugin), Some(0x00)) => {
                let capabilities = capabilities & hello.capabilities;
                return Ok(Upstream {
                    stream,
                    connection_id: hello.connection_id,
                    server_version: hello.server_version.clone(),
                    capabilities,
                    tls: use_tls,
                    auth: plugin,
                    hello,
                });
            }
            (AuthState::Sent(plugin), Some(0x01)) => {
                let (next, reply) = more_data(plugin, r.rest(), password, use_tls)?;
                state = AuthState::Sent(next);
                reply
            }
            (AuthState::Sent(_), _) => {
                return Err(UpstreamError::Protocol(format!(
                    "unexpected packet 0x{:02x} during authentication",
                    head.unwrap_or(0)
                )))
            }
            (AuthState::Ed25519Nonce, None) => {
                return Err(UpstreamError::Protocol("empty ed25519 nonce packet".into()))
            }
        };
        if let Some(reply) = reply {
            write_packet(&mut stream, &mut seq, &reply)
                .await
                .map_err(write_error)?;
        }
    }
    Err(UpstreamError::Protocol(format!(
        "authentication did not finish within {MAX_AUTH_ROUNDS} packets"
    )))
}

type Reply = Option<zeroize::Zeroizing<Vec<u8>>>;

/// An AuthSwitchRequest (after its 0xFE): the plugin and its data.
fn switch(
    mut r: Reader<'_>,
    password: &[u8],
    tls: bool,
) -> Result<(AuthState, Reply), UpstreamError> {
    if r.is_empty() {
        return Err(UpstreamError::AuthMethod(
            "the server asked for the pre-4.1 password scramble (mysql_old_password)".into(),
        ));
    }
    let name = String::from_utf8_lossy(r.cstr_or_rest()).into_owned();
    let data = r.rest();
    let sent = |plugin, reply| Ok((AuthState::Sent(plugin), Some(reply)));
    match name.as_str() {
        auth::NATIVE => sent(
            AuthPlugin::NativePassword,
            auth::native_scramble(password, auth::nonce20(data)),
        ),
        auth::CACHING_SHA2 => sent(
            AuthPlugin::CachingSha2Fast,
            auth::caching_sha2_scramble(password, auth::nonce20(data)),
        ),
        auth::ED25519 if data.is_empty() => Ok((AuthState::Ed25519Nonce, None)),
        auth::ED25519 => sent(AuthPlugin::Ed25519, ed25519_reply(password, data)?),
        auth::CLEAR | auth::SHA256_PASSWORD => {
            if !tls {
                return Err(UpstreamError::AuthMethod(format!(
                    "the server asked for {name}, which sends the password itself; \
                     gatehouse does that only over TLS (set tls_ca for this target)"
                )));
            }
            let plugin = if name == auth::CLEAR {
                AuthPlugin::ClearText
            } else {
                AuthPlugin::Sha256Password
            };
            sent(plugin, cleartext(password)?)
        }
        other => Err(UpstreamError::AuthMethod(format!(
            "the server asked for the {other:?} authentication plugin, which gatehouse does not \
             support (use mysql_native_password, caching_sha2_password or ed25519 for this login)"
        ))),
    }
}

/// AuthMoreData (after its 0x01) for the plugin in use.
fn more_data(
    plugin: AuthPlugin,
    data: &[u8],
    password: &[u8],
    tls: bool,
) -> Result<(AuthPlugin, Reply), UpstreamError> {
    match (plugin, data) {
        (AuthPlugin::CachingSha2Fast, [auth::FAST_AUTH_SUCCESS]) => Ok((plugin, None)),
        (AuthPlugin::CachingSha2Fast, [auth::PERFORM_FULL_AUTH]) if tls => {
            Ok((AuthPlugin::CachingSha2Full, Some(cleartext(password)?)))
        }
        (AuthPlugin::CachingSha2Fast, [auth::PERFORM_FULL_AUTH]) => Err(UpstreamError::AuthMethod(
            "caching_sha2_password wants full authentication, which without TLS needs the \
                 server's RSA public key; gatehouse does not trust a key the server hands over \
                 and pinned keys are not supported yet: set tls_ca for this target"
                .into(),
        )),
        (plugin, _) => Err(UpstreamError::Protocol(format!(
            "unexpected AuthMoreData for {}",
            plugin.name()
        ))),
    }
}

fn ed25519_reply(
    password: &[u8],
    nonce: &[u8],
) -> Result<zeroize::Zeroizing<Vec<u8>>, UpstreamError> {
    if nonce.len() != 32 {
        return Err(UpstreamError::Protocol(format!(
            "ed25519 nonce of {} bytes (expected 32)",
            nonce.len()
        )));
    }
    Ok(auth::ed25519_sign(password, nonce))
}

fn cleartext(password: &[u8]) -> Result<zeroize::Zeroizing<Vec<u8>>, UpstreamError> {
    auth::cleartext(password).ok_or_else(|| {
        UpstreamError::AuthMethod(
            "the stored password contains a NUL byte and cannot be sent".into(),
        )
    })
}

/// Replaces the password in an error's text with `***`. Defence in depth:
/// no message gatehouse builds contains it, and servers do not quote it.
/// Passwords shorter than 4 bytes are not searched for.
fn redact(e: UpstreamError, password: &[u8]) -> UpstreamError {
    let Some(clean) = crate::db::redactor(password) else {
        return e;
    };
    match e {
        UpstreamError::Connect(s) => UpstreamError::Connect(clean(s)),
        UpstreamError::Tls(s) => UpstreamError::Tls(clean(s)),
        UpstreamError::Protocol(s) => UpstreamError::Protocol(clean(s)),
        UpstreamError::AuthMethod(s) => UpstreamError::AuthMethod(clean(s)),
        UpstreamError::Server {
            code,
            sqlstate,
            message,
        } => UpstreamError::Server {
            code,
            sqlstate: clean(sqlstate),
            message: clean(message),
        },
        UpstreamError::NoCredential => UpstreamError::NoCredential,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn a_server_error_quoting_the_password_is_redacted() {
        let e = UpstreamError::Server {
            code: 1045,
            sqlstate: "28000".into(),
            message: "bad password hunter22 for app".into(),
        };
        assert_eq!(
            redact(e, b"hunter22").to_string(),
            "ERROR 1045 (28000): bad password *** for app"
        );
    }

    #[test]
    fn switches_pick_the_plugin_and_refuse_what_is_unsafe() {
        let mut data = b"mysql_native_password\0".to_vec();
        data.extend_from_slice(&[7u8; 20]);
        data.push(0);
        let (state, reply) = switch(Reader::new(&data), b"pw", false).unwrap();
        assert_eq!(state, AuthState::Sent(AuthPlugin::NativePassword));
        assert_eq!(
            reply.unwrap().as_slice(),
            auth::native_scramble(b"pw", &[7u8; 20]).as_slice()
        );

        let mut data = b"client_ed25519\0".to_vec();
        data.extend_from_slice(&[1u8; 32]);
        let (state, reply) = switch(Reader::new(&data), b"pw", false).unwrap();
        assert_eq!(state, AuthState::Sent(AuthPlugin::Ed25519));
        assert_eq!(reply.unwrap().len(), 64);

        for plugin in ["mysql_clear_password", "sha256_password"] {
            let data = format!("{plugin}\0");
            let e = switch(Reader::new(data.as_bytes()), b"secret-pw", false).unwrap_err();
            assert!(matches!(e, UpstreamError::AuthMethod(_)), "{e}");
            assert!(!e.to_string().contains("secret-pw"));
            let (_, reply) = switch(Reader::new(data.as_bytes()), b"secret-pw", true).unwrap();
            assert_eq!(reply.unwrap().as_slice(), b"secret-pw\0");
        }
        let e = switch(Reader::new(b""), b"pw", true).unwrap_err();
        assert!(e.to_string().contains("mysql_old_password"), "{e}");
        let e = switch(Reader::new(b"dialog\0x"), b"pw", true).unwrap_err();
        assert!(matches!(e, UpstreamError::AuthMethod(_)));
    }

    #[test]
    fn caching_sha2_full_auth_needs_tls_and_never_the_rsa_path() {
        let (p, reply) = more_data(AuthPlugin::CachingSha2Fast, &[3], b"secret-pw", false).unwrap();
        assert_eq!(p, AuthPlugin::CachingSha2Fast);
        assert!(reply.is_none());
        let e = more_data(AuthPlugin::CachingSha2Fast, &[4], b"secret-pw", false).unwrap_err();
        assert!(matches!(e, UpstreamError::AuthMethod(_)), "{e}");
        assert!(e.to_string().contains("RSA"), "{e}");
        let (p, reply) = more_data(AuthPlugin::CachingSha2Fast, &[4], b"secret-pw", true).unwrap();
        assert_eq!(p, AuthPlugin::CachingSha2Full);
        assert_eq!(reply.unwrap().as_slice(), b"secret-pw\0");
        // A PEM key the server volunteers is not accepted.
        assert!(more_data(
            AuthPlugin::CachingSha2Fast,
            b"-----BEGIN PUBLIC KEY-----",
            b"pw",
            false
        )
        .is_err());
        assert!(more_data(AuthPlugin::NativePassword, &[3], b"pw", true).is_err());
    }
}
