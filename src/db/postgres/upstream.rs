//! STUB (up owns this; dropped at merge)
use crate::config::Target;
pub type UpstreamStream = tokio::net::TcpStream;
pub struct Upstream {
    pub stream: UpstreamStream,
    pub backend_pid: i32,
    pub backend_secret: i32,
    pub parameters: Vec<(String, String)>,
    pub tls: bool,
}
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("connect: {0}")]
    Connect(String),
    #[error("tls: {0}")]
    Tls(String),
    #[error("{severity} {code} {message}")]
    Server {
        severity: String,
        code: String,
        message: String,
    },
    #[error("no credential")]
    NoCredential,
    #[error("protocol: {0}")]
    Protocol(String),
    #[error("auth method: {0}")]
    AuthMethod(String),
}
pub async fn connect(
    _t: &Target,
    _p: &[(String, String)],
    _pw: &[u8],
) -> Result<Upstream, UpstreamError> {
    Err(UpstreamError::NoCredential)
}
pub async fn cancel(_t: &Target, _pid: i32, _secret: i32) -> std::io::Result<()> {
    Ok(())
}
