//! The upstream side of a PostgreSQL session: gatehouse logs in to the
//! database target with the credential it holds, and hands the ready
//! connection to the relay.
//!
//! Security behaviour:
//! - TLS (`DbTls::Verify`): SSLRequest, then a handshake verified against
//!   the CA pinned for the target and `tls_server_name` (verify-full). A
//!   server that answers `N`, or a certificate that does not verify, ends
//!   the attempt with [`UpstreamError::Tls`] naming the problem. Nothing but
//!   the SSLRequest is sent before the handshake.
//! - Authentication per [`auth`]: SCRAM-SHA-256-PLUS over TLS when
//!   offered, SCRAM-SHA-256 otherwise, MD5 only with `auth = "md5"`,
//!   cleartext only over TLS.
//! - Bounded: the whole login (connect, TLS, authentication, startup
//!   messages) has [`LOGIN_TIMEOUT`]; each message is at most
//!   [`MAX_MESSAGE`] bytes and the whole login at most [`MAX_LOGIN_BYTES`].
//! - The password is never in an error or a log line. A server error that
//!   quotes it (it should not) has it replaced by `***`.

#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod auth;
mod wire;

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use crate::db::tls;

use crate::config::{DbAuth, DbTarget, DbTls, Target};

/// The whole login (or a cancel request) must finish within this.
pub const LOGIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest message body accepted from the server during the login.
pub const MAX_MESSAGE: usize = 1 << 20;
/// Largest total of message bodies accepted during the login.
pub const MAX_LOGIN_BYTES: usize = 4 << 20;
/// Most ParameterStatus messages kept from one login.
const MAX_PARAMETERS: usize = 1024;

/// Why a login to the database server failed. `Display` is safe to show to
/// the client: it never contains the password.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// TCP connect, resolution, or the login did not finish in time.
    #[error("cannot reach the database server: {0}")]
    Connect(String),
    /// TLS refused or not verified (certificate, name, CA file).
    #[error("TLS to the database server failed: {0}")]
    Tls(String),
    /// The server's own ErrorResponse.
    #[error("{severity} {code}: {message}")]
    Server {
        severity: String,
        code: String,
        message: String,
    },
    /// gatehouse holds no password for this target and login.
    #[error("gatehouse holds no password for this database login")]
    NoCredential,
    /// The server broke the protocol.
    #[error("database server protocol error: {0}")]
    Protocol(String),
    /// The server asked for an authentication method gatehouse refuses.
    #[error("database authentication method refused: {0}")]
    AuthMethod(String),
}

/// How gatehouse authenticated to the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMechanism {
    /// The server asked for no password.
    Trust,
    /// Cleartext password (only ever over TLS).
    Cleartext,
    /// MD5 (only with `auth = "md5"`).
    Md5,
    ScramSha256,
    /// SCRAM with `tls-server-end-point` channel binding.
    ScramSha256Plus,
}

/// The connection to the server: plain TCP or TLS.
pub enum UpstreamStream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl std::fmt::Debug for UpstreamStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            UpstreamStream::Plain(_) => "UpstreamStream::Plain",
            UpstreamStream::Tls(_) => "UpstreamStream::Tls",
        })
    }
}

impl AsyncRead for UpstreamStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            UpstreamStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for UpstreamStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            UpstreamStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            UpstreamStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            UpstreamStream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            UpstreamStream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            UpstreamStream::Plain(s) => s.is_write_vectored(),
            UpstreamStream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamStream::Plain(s) => Pin::new(s).poll_flush(cx),
            UpstreamStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            UpstreamStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// A logged-in connection, at its first ReadyForQuery.
#[derive(Debug)]
pub struct Upstream {
    pub stream: UpstreamStream,
    /// From BackendKeyData (0 when the server sent none): what a
    /// CancelRequest must name.
    pub backend_pid: i32,
    pub backend_secret: i32,
    /// Every ParameterStatus the server sent, in order.
    pub parameters: Vec<(String, String)>,
    /// Whether the connection is TLS.
    pub tls: bool,
    /// How gatehouse authenticated.
    pub auth: AuthMechanism,
}

/// Connects to `target` (a postgres target), does TLS per its `DbTls`,
/// sends a StartupMessage with `params` exactly as given and in order
/// (`user`, `database`, `options`, `application_name`, ...), authenticates
/// with `password`, and reads until the first ReadyForQuery. At most
/// [`LOGIN_TIMEOUT`] in all.
pub async fn connect(
    target: &Target,
    params: &[(String, String)],
    password: &[u8],
) -> Result<Upstream, UpstreamError> {
    let db = database(target)?;
    match tokio::time::timeout(LOGIN_TIMEOUT, login(target, db, params, password)).await {
        Ok(result) => result.map_err(|e| redact(e, password)),
        Err(_) => Err(UpstreamError::Connect(format!(
            "{}:{}: the login did not finish within {} s",
            target.host,
            target.port,
            LOGIN_TIMEOUT.as_secs()
        ))),
    }
}

/// Sends a CancelRequest for backend (`pid`, `secret`) to `target`, over TLS
/// (verified as for a login) when the target uses TLS, and waits (at most
/// [`LOGIN_TIMEOUT`]) for the server to close the connection, which it does
/// once it has handled the request. The server never says whether a cancel
/// matched anything.
pub async fn cancel(target: &Target, pid: i32, secret: i32) -> io::Result<()> {
    let send = async {
        let db = database(target).map_err(io::Error::other)?;
        let (mut stream, _) = open(target, db).await.map_err(io::Error::other)?;
        stream.write_all(&wire::cancel_request(pid, secret)).await?;
        stream.flush().await?;
        // Wait for the close; a TLS server may close without close_notify.
        let mut sink = [0u8; 256];
        let mut seen = 0usize;
        while let Ok(n) = stream.read(&mut sink).await {
            seen = seen.saturating_add(n);
            if n == 0 || seen > 4096 {
                break;
            }
        }
        let _ = stream.shutdown().await;
        Ok(())
    };
    match tokio::time::timeout(LOGIN_TIMEOUT, send).await {
        Ok(result) => result,
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!(
                "cancel request to {}:{} did not finish within {} s",
                target.host,
                target.port,
                LOGIN_TIMEOUT.as_secs()
            ),
        )),
    }
}

fn database(target: &Target) -> Result<&DbTarget, UpstreamError> {
    target.db.as_ref().ok_or_else(|| {
        UpstreamError::Connect(format!("target {} is not a database target", target.name))
    })
}

/// TCP connect, then TLS when the target asks for it. Returns the stream
/// and, for TLS, the channel binding data of the server's certificate.
async fn open(
    target: &Target,
    db: &DbTarget,
) -> Result<(UpstreamStream, Option<Vec<u8>>), UpstreamError> {
    let mut tcp = TcpStream::connect((target.host.as_str(), target.port))
        .await
        .map_err(|e| UpstreamError::Connect(format!("{}:{}: {e}", target.host, target.port)))?;
    let _ = tcp.set_nodelay(true);
    let (ca, server_name) = match &db.tls {
        DbTls::Disable => return Ok((UpstreamStream::Plain(tcp), None)),
        DbTls::Verify { ca, server_name } => (ca, server_name),
    };
    // Check the local side before the server sees anything.
    let config = tls::client_config(ca).map_err(UpstreamError::Tls)?;
    let name = tls::server_name(server_name).map_err(UpstreamError::Tls)?;
    let io = |e: io::Error| UpstreamError::Connect(format!("{}:{}: {e}", target.host, target.port));
    tcp.write_all(&wire::ssl_request()).await.map_err(io)?;
    let mut answer = [0u8; 1];
    tcp.read_exact(&mut answer).await.map_err(io)?;
    match answer {
        [b'S'] => {}
        [b'N'] => {
            return Err(UpstreamError::Tls(format!(
                "the server at {}:{} does not accept TLS (it answered N to SSLRequest)",
                target.host, target.port
            )))
        }
        [other] => {
            return Err(UpstreamError::Protocol(format!(
                "unexpected answer {} to SSLRequest",
                wire::tag_name(other)
            )))
        }
    }
    let stream = TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .map_err(|e| UpstreamError::Tls(tls::handshake_error(e, ca, server_name)))?;
    let binding = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|certs| certs.first())
        .and_then(|cert| tls::end_point_hash(cert));
    Ok((UpstreamStream::Tls(Box::new(stream)), binding))
}

async fn login(
    target: &Target,
    db: &DbTarget,
    params: &[(String, String)],
    password: &[u8],
) -> Result<Upstream, UpstreamError> {
    let startup = wire::startup(params)?;
    let (mut stream, binding) = open(target, db).await?;
    let tls = matches!(stream, UpstreamStream::Tls(_));
    let write_err = |e: io::Error| UpstreamError::Connect(format!("writing to the server: {e}"));
    stream.write_all(&startup).await.map_err(write_err)?;
    stream.flush().await.map_err(write_err)?;

    let user = params
        .iter()
        .find(|(k, _)| k == "user")
        .map(|(_, v)| v.as_str());
    let mut auth = auth::Login::new(
        &target.name,
        user,
        password,
        db.auth == DbAuth::Md5,
        binding,
        tls,
    );
    let mut budget = MAX_LOGIN_BYTES;

    // Authentication.
    loop {
        let m = wire::read_message(&mut stream, MAX_MESSAGE.min(budget)).await?;
        budget = budget.saturating_sub(m.body.len());
        match m.tag {
            b'R' => match auth.on_request(&m.body)? {
                auth::Step::Send(reply) => {
                    stream.write_all(&reply).await.map_err(write_err)?;
                    stream.flush().await.map_err(write_err)?;
                }
                auth::Step::Wait => {}
                auth::Step::Authenticated => break,
            },
            b'E' => return Err(server_error(&m.body)),
            // NoticeResponse; NegotiateProtocolVersion (unknown options).
            b'N' | b'v' => {}
            other => {
                return Err(UpstreamError::Protocol(format!(
                    "unexpected message {} during authentication",
                    wire::tag_name(other)
                )))
            }
        }
    }

    // Startup: parameters and the cancel key, until ReadyForQuery.
    let mut up = Upstream {
        stream,
        backend_pid: 0,
        backend_secret: 0,
        parameters: Vec::new(),
        tls,
        auth: auth.mechanism,
    };
    loop {
        let m = wire::read_message(&mut up.stream, MAX_MESSAGE.min(budget)).await?;
        budget = budget.saturating_sub(m.body.len());
        match m.tag {
            b'S' => {
                let mut c = wire::Cursor::new(&m.body);
                let (Some(name), Some(value)) = (c.cstr(), c.cstr()) else {
                    return Err(UpstreamError::Protocol("malformed ParameterStatus".into()));
                };
                if up.parameters.len() >= MAX_PARAMETERS {
                    return Err(UpstreamError::Protocol(format!(
                        "more than {MAX_PARAMETERS} ParameterStatus messages"
                    )));
                }
                up.parameters.push((
                    String::from_utf8_lossy(name).into_owned(),
                    String::from_utf8_lossy(value).into_owned(),
                ));
            }
            b'K' => {
                let mut c = wire::Cursor::new(&m.body);
                match (c.i32(), c.i32(), c.is_empty()) {
                    (Some(pid), Some(secret), true) => {
                        up.backend_pid = pid;
                        up.backend_secret = secret;
                    }
                    _ => return Err(UpstreamError::Protocol("malformed BackendKeyData".into())),
                }
            }
            b'Z' => return Ok(up),
            b'E' => return Err(server_error(&m.body)),
            b'N' | b'v' => {}
            other => {
                return Err(UpstreamError::Protocol(format!(
                    "unexpected message {} before ReadyForQuery",
                    wire::tag_name(other)
                )))
            }
        }
    }
}

fn server_error(body: &[u8]) -> UpstreamError {
    let f = wire::error_fields(body);
    UpstreamError::Server {
        severity: f.severity,
        code: f.code,
        message: f.message,
    }
}

/// Replaces the password in an error's text with `***`. Defence in depth:
/// no message gatehouse builds contains it, and servers do not quote it.
/// Passwords shorter than 4 bytes are not searched for (they would match
/// ordinary words).
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
            severity,
            code,
            message,
        } => UpstreamError::Server {
            severity: clean(severity),
            code: clean(code),
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
            severity: "FATAL".into(),
            code: "28P01".into(),
            message: "bad password hunter22 for app".into(),
        };
        let text = redact(e, b"hunter22").to_string();
        assert_eq!(text, "FATAL 28P01: bad password *** for app");
    }
}
