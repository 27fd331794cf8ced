//! The CLI's side of the control socket (`gatehouse sessions`, `lock`,
//! `reload`, ...): plain blocking I/O, one request, one reply.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;

use super::termfilter::TermFilter;
use super::{Frame, Reply, Request};
use crate::config::DEFAULT_CONTROL_SOCKET;

/// Exit status when the daemon cannot be reached (EX_UNAVAILABLE).
pub const EXIT_UNAVAILABLE: u8 = 69;

/// Why a command did not get a reply.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("gatehouse is not running (no control socket at {0})")]
    NotRunning(PathBuf),
    #[error(
        "permission denied on {0}: run as the daemon's user, or as a member of its [control] group"
    )]
    Denied(PathBuf),
    #[error("{0}: {1}")]
    Io(PathBuf, std::io::Error),
    #[error("the daemon's answer could not be read: {0}")]
    Protocol(String),
}

/// The control socket named by the config file, read without validating
/// the rest of it: `gatehouse reload` must reach the daemon to report the
/// errors of a broken file. Falls back to the default path.
pub fn socket_path(config: &Path) -> PathBuf {
    let from_file = std::fs::read_to_string(config)
        .ok()
        .and_then(|text| text.parse::<toml::Table>().ok())
        .and_then(|t| t.get("control")?.get("socket")?.as_str().map(PathBuf::from));
    from_file.unwrap_or_else(|| PathBuf::from(DEFAULT_CONTROL_SOCKET))
}

/// Whether `config` is readable TOML (whatever its contents mean).
pub fn is_toml(config: &Path) -> bool {
    std::fs::read_to_string(config).is_ok_and(|text| text.parse::<toml::Table>().is_ok())
}

/// A connection that has sent its request and read the reply.
pub struct Connection {
    pub reply: Reply,
    reader: BufReader<UnixStream>,
}

/// Sends `req`, reads the reply. `timeout` bounds the wait for it.
pub fn request(socket: &Path, req: &Request, timeout: Duration) -> Result<Connection, ClientError> {
    let stream = UnixStream::connect(socket).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
            ClientError::NotRunning(socket.to_path_buf())
        }
        std::io::ErrorKind::PermissionDenied => ClientError::Denied(socket.to_path_buf()),
        _ => ClientError::Io(socket.to_path_buf(), e),
    })?;
    let io = |e| ClientError::Io(socket.to_path_buf(), e);
    stream.set_read_timeout(Some(timeout)).map_err(io)?;
    let mut line = serde_json::to_vec(req).map_err(|e| ClientError::Protocol(e.to_string()))?;
    line.push(b'\n');
    (&stream).write_all(&line).map_err(io)?;
    let mut reader = BufReader::new(stream);
    let mut answer = String::new();
    reader.read_line(&mut answer).map_err(io)?;
    if answer.is_empty() {
        return Err(ClientError::Protocol(
            "the daemon closed the connection".into(),
        ));
    }
    let reply: Reply =
        serde_json::from_str(&answer).map_err(|e| ClientError::Protocol(e.to_string()))?;
    Ok(Connection { reply, reader })
}

impl Connection {
    /// Copies a watch stream to `out` (filtered for a terminal) until the
    /// session ends. Returns true if it ended, false if the daemon went away.
    pub fn follow(mut self, out: &mut dyn Write, err: &mut dyn Write) -> std::io::Result<bool> {
        let _ = self.reader.get_ref().set_read_timeout(None);
        let mut filter = TermFilter::new();
        let mut shown = Vec::new();
        let mut line = String::new();
        loop {
            line.clear();
            if self.reader.read_line(&mut line)? == 0 {
                return Ok(false);
            }
            let frame: Frame = serde_json::from_str(&line)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
            match frame {
                Frame::Output { data } => {
                    let bytes = base64::engine::general_purpose::STANDARD
                        .decode(data)
                        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
                    shown.clear();
                    filter.push(&bytes, &mut shown);
                    out.write_all(&shown)?;
                    out.flush()?;
                }
                Frame::Lost { chunks } => {
                    writeln!(err, "\r\n[gatehouse: {chunks} chunk(s) of output skipped: this terminal fell behind]\r")?;
                }
                Frame::End => return Ok(true),
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn the_socket_is_found_in_a_config_that_does_not_validate() {
        let dir = tempfile::tempdir().unwrap();
        let c = dir.path().join("c.toml");
        std::fs::write(
            &c,
            "[control]\nsocket = \"/x/c.sock\"\n[gateway]\nnonsense = 1\n",
        )
        .unwrap();
        assert_eq!(socket_path(&c), PathBuf::from("/x/c.sock"));
        std::fs::write(&c, "[gateway\n").unwrap();
        assert_eq!(socket_path(&c), PathBuf::from(DEFAULT_CONTROL_SOCKET));
    }

    #[test]
    fn requests_have_a_stable_wire_form() {
        let r = Request::Lock {
            kind: crate::locks::LockKind::User,
            name: "alice".into(),
            reason: "leaver".into(),
            for_secs: Some(7200),
        };
        let text = serde_json::to_string(&r).unwrap();
        assert_eq!(
            text,
            r#"{"cmd":"lock","kind":"user","name":"alice","reason":"leaver","for_secs":7200}"#
        );
        assert_eq!(serde_json::from_str::<Request>(&text).unwrap(), r);
    }
}
