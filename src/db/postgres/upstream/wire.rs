//! The few PostgreSQL wire messages the upstream login writes and reads.
//!
//! Reading is bounded: a message longer than the caller's limit is refused
//! before anything is allocated for it. Parsing never indexes or panics on
//! what the server sent. Messages that carry a password are built in
//! [`Zeroizing`] buffers.

use tokio::io::{AsyncRead, AsyncReadExt};
use zeroize::Zeroizing;

use super::UpstreamError;

/// Protocol version 3.0 in a StartupMessage.
const PROTOCOL_3_0: i32 = 196_608;
/// The code of an SSLRequest.
const SSL_REQUEST_CODE: i32 = 80_877_103;
/// The code of a CancelRequest.
const CANCEL_REQUEST_CODE: i32 = 80_877_102;

/// One backend message: its type byte and body (without the length).
#[derive(Debug)]
pub(super) struct Message {
    pub tag: u8,
    pub body: Vec<u8>,
}

/// Reads one message, refusing a body longer than `max` bytes before
/// allocating it.
pub(super) async fn read_message<S: AsyncRead + Unpin>(
    stream: &mut S,
    max: usize,
) -> Result<Message, UpstreamError> {
    let mut head = [0u8; 5];
    stream.read_exact(&mut head).await.map_err(read_error)?;
    let [tag, a, b, c, d] = head;
    let len = i32::from_be_bytes([a, b, c, d]);
    let body_len = usize::try_from(len)
        .ok()
        .and_then(|l| l.checked_sub(4))
        .ok_or_else(|| {
            UpstreamError::Protocol(format!(
                "message {} with an invalid length {len}",
                tag_name(tag)
            ))
        })?;
    if body_len > max {
        return Err(UpstreamError::Protocol(format!(
            "message {} of {body_len} bytes exceeds the limit of {max} bytes",
            tag_name(tag)
        )));
    }
    let mut body = vec![0u8; body_len];
    stream.read_exact(&mut body).await.map_err(read_error)?;
    Ok(Message { tag, body })
}

fn read_error(e: std::io::Error) -> UpstreamError {
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        UpstreamError::Protocol("the server closed the connection during login".into())
    } else {
        UpstreamError::Connect(format!("reading from the server: {e}"))
    }
}

/// A message type byte for messages: `'R'`, or `0x07` when not printable.
pub(super) fn tag_name(tag: u8) -> String {
    if tag.is_ascii_graphic() {
        format!("'{}'", char::from(tag))
    } else {
        format!("0x{tag:02x}")
    }
}

/// A cursor over a message body; every read is checked.
pub(super) struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    pub fn new(body: &'a [u8]) -> Self {
        Cursor(body)
    }

    pub fn u8(&mut self) -> Option<u8> {
        let (first, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(*first)
    }

    pub fn i32(&mut self) -> Option<i32> {
        let (head, rest) = self.0.split_first_chunk::<4>()?;
        self.0 = rest;
        Some(i32::from_be_bytes(*head))
    }

    /// A NUL-terminated string (without the NUL).
    pub fn cstr(&mut self) -> Option<&'a [u8]> {
        let end = self.0.iter().position(|&b| b == 0)?;
        let (s, rest) = self.0.split_at_checked(end)?;
        self.0 = rest.get(1..)?;
        Some(s)
    }

    pub fn rest(&self) -> &'a [u8] {
        self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The fields of an ErrorResponse that a refusal passes on.
#[derive(Debug, Default)]
pub(super) struct ErrorFields {
    pub severity: String,
    pub code: String,
    pub message: String,
}

/// Parses an ErrorResponse (or NoticeResponse) body. The non-localized
/// severity (`V`) wins over the localized one (`S`).
pub(super) fn error_fields(body: &[u8]) -> ErrorFields {
    let mut out = ErrorFields::default();
    let mut localized = String::new();
    let mut c = Cursor::new(body);
    while let Some(kind) = c.u8() {
        if kind == 0 {
            break;
        }
        let Some(value) = c.cstr() else { break };
        let value = String::from_utf8_lossy(value).into_owned();
        match kind {
            b'V' => out.severity = value,
            b'S' => localized = value,
            b'C' => out.code = value,
            b'M' => out.message = value,
            _ => {}
        }
    }
    if out.severity.is_empty() {
        out.severity = localized;
    }
    out
}

/// `[len][code]` requests (SSLRequest, CancelRequest) have no type byte.
pub(super) fn ssl_request() -> [u8; 8] {
    let mut out = [0u8; 8];
    let (len, code) = out.split_at_mut(4);
    len.copy_from_slice(&8i32.to_be_bytes());
    code.copy_from_slice(&SSL_REQUEST_CODE.to_be_bytes());
    out
}

/// A CancelRequest for backend `pid` with its `secret`.
pub(super) fn cancel_request(pid: i32, secret: i32) -> Vec<u8> {
    let mut out = Vec::with_capacity(16);
    out.extend_from_slice(&16i32.to_be_bytes());
    out.extend_from_slice(&CANCEL_REQUEST_CODE.to_be_bytes());
    out.extend_from_slice(&pid.to_be_bytes());
    out.extend_from_slice(&secret.to_be_bytes());
    out
}

/// A protocol 3.0 StartupMessage with `params` in the given order. A name or
/// value with a NUL byte cannot be encoded and is refused.
pub(super) fn startup(params: &[(String, String)]) -> Result<Vec<u8>, UpstreamError> {
    let mut body = Vec::new();
    body.extend_from_slice(&PROTOCOL_3_0.to_be_bytes());
    for (name, value) in params {
        if name.is_empty() || name.contains('\0') || value.contains('\0') {
            return Err(UpstreamError::Protocol(format!(
                "startup parameter {name:?} cannot be sent (empty name or NUL byte)"
            )));
        }
        body.extend_from_slice(name.as_bytes());
        body.push(0);
        body.extend_from_slice(value.as_bytes());
        body.push(0);
    }
    body.push(0);
    let len = length(body.len())?;
    let mut out = Vec::with_capacity(body.len() + 4);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&body);
    Ok(out)
}

/// A typed frontend message `tag` with `body`, in a buffer wiped on drop
/// (password messages, SCRAM proofs).
pub(super) fn message(tag: u8, body: &[u8]) -> Result<Zeroizing<Vec<u8>>, UpstreamError> {
    let len = length(body.len())?;
    let mut out = Zeroizing::new(Vec::with_capacity(body.len() + 5));
    out.push(tag);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(body);
    Ok(out)
}

/// PasswordMessage: cleartext password or MD5 hash, NUL-terminated.
pub(super) fn password_message(password: &[u8]) -> Result<Zeroizing<Vec<u8>>, UpstreamError> {
    if password.contains(&0) {
        return Err(UpstreamError::AuthMethod(
            "the stored password contains a NUL byte and cannot be sent".into(),
        ));
    }
    let mut body = Zeroizing::new(Vec::with_capacity(password.len() + 1));
    body.extend_from_slice(password);
    body.push(0);
    message(b'p', &body)
}

/// SASLInitialResponse: mechanism name and the client-first message.
pub(super) fn sasl_initial_response(
    mechanism: &str,
    data: &[u8],
) -> Result<Zeroizing<Vec<u8>>, UpstreamError> {
    let mut body = Zeroizing::new(Vec::with_capacity(mechanism.len() + data.len() + 5));
    body.extend_from_slice(mechanism.as_bytes());
    body.push(0);
    let data_len = i32::try_from(data.len())
        .map_err(|_| UpstreamError::Protocol("SASL message too long to send".into()))?;
    body.extend_from_slice(&data_len.to_be_bytes());
    body.extend_from_slice(data);
    message(b'p', &body)
}

/// The length field for a body of `body_len` bytes (itself included).
fn length(body_len: usize) -> Result<i32, UpstreamError> {
    body_len
        .checked_add(4)
        .and_then(|l| i32::try_from(l).ok())
        .ok_or_else(|| UpstreamError::Protocol("message too long to send".into()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_oversized_message_is_refused_before_it_is_read() {
        let mut data: &[u8] = &[b'S', 0x7f, 0xff, 0xff, 0xff];
        let err = read_message(&mut data, 1 << 20).await.unwrap_err();
        assert!(err.to_string().contains("exceeds the limit"), "{err}");
        let mut data: &[u8] = &[b'S', 0, 0, 0, 3];
        let err = read_message(&mut data, 1 << 20).await.unwrap_err();
        assert!(err.to_string().contains("invalid length"), "{err}");
        let mut data: &[u8] = &[b'Z', 0, 0, 0, 5, b'I', b'x'];
        let m = read_message(&mut data, 16).await.unwrap();
        assert_eq!((m.tag, m.body.as_slice()), (b'Z', &b"I"[..]));
        assert_eq!(data, b"x", "read past the message");
    }

    #[test]
    fn error_fields_prefer_the_unlocalized_severity_and_survive_garbage() {
        let body = b"SFATAL-fr\0VFATAL\0C28P01\0Mpassword authentication failed\0\0";
        let f = error_fields(body);
        assert_eq!(
            (f.severity.as_str(), f.code.as_str(), f.message.as_str()),
            ("FATAL", "28P01", "password authentication failed")
        );
        let f = error_fields(b"SERROR\0Mtrunc");
        assert_eq!(f.severity, "ERROR");
        assert_eq!(f.message, "");
        error_fields(b"");
        error_fields(b"\xff");
    }

    #[test]
    fn sasl_initial_response_frames_the_data_with_its_own_length() {
        let m = sasl_initial_response("SCRAM-SHA-256", b"n,,n=,r=abc").unwrap();
        assert_eq!(m[0], b'p');
        assert_eq!(&m[1..5], &((m.len() - 1) as i32).to_be_bytes());
        assert_eq!(&m[5..19], b"SCRAM-SHA-256\0");
        assert_eq!(&m[19..23], &11i32.to_be_bytes());
        assert_eq!(&m[23..], b"n,,n=,r=abc");
    }

    #[test]
    fn startup_keeps_parameter_order_and_refuses_nul() {
        let params = vec![
            ("user".to_string(), "app".to_string()),
            ("database".to_string(), "db".to_string()),
        ];
        let m = startup(&params).unwrap();
        assert_eq!(&m[..4], &(m.len() as i32).to_be_bytes());
        assert_eq!(&m[4..8], &PROTOCOL_3_0.to_be_bytes());
        assert_eq!(&m[8..], b"user\0app\0database\0db\0\0");
        assert!(startup(&[("user".into(), "a\0b".into())]).is_err());
    }
}
