//! The PostgreSQL wire protocol (v3), as far as the proxy needs it: the
//! startup phase's packets, message framing, the few messages gatehouse
//! writes itself (authentication requests, errors, its own cancel key), and
//! decoders for the messages it records (Query, Parse, Bind,
//! CommandComplete, ErrorResponse).
//!
//! Every decoder takes bytes from a peer: no panic, no indexing, no
//! allocation by a length the peer chose beyond the caller's bound.

use bytes::{BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

/// The largest startup-phase packet accepted (PostgreSQL's own limit is
/// 10,000 bytes).
pub const MAX_STARTUP: usize = 10_000;

/// Startup-phase request codes (in place of a protocol version).
pub const SSL_REQUEST: u32 = 80_877_103;
pub const GSSENC_REQUEST: u32 = 80_877_104;
pub const CANCEL_REQUEST: u32 = 80_877_102;
/// Protocol 3.0.
pub const PROTOCOL_3_0: u32 = 196_608;

/// Why a peer's bytes were not understood.
#[derive(Debug, thiserror::Error)]
pub enum ProtoError {
    #[error("connection closed")]
    Closed,
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    #[error("malformed message: {0}")]
    Malformed(&'static str),
    #[error("message too large ({0} bytes)")]
    TooLarge(usize),
}

/// One packet of the startup phase.
#[derive(Debug, PartialEq, Eq)]
pub enum StartupPacket {
    Ssl,
    GssEnc,
    Cancel {
        pid: i32,
        secret: i32,
    },
    Startup(Startup),
    /// A protocol version gatehouse does not speak (major version not 3).
    Unsupported(u32),
}

/// A StartupMessage: the protocol version and its parameters, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Startup {
    pub minor: u16,
    pub params: Vec<(String, String)>,
}

impl Startup {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Reads one startup-phase packet (length, code, body), at most
/// [`MAX_STARTUP`] bytes.
pub async fn read_startup<R: AsyncRead + Unpin>(r: &mut R) -> Result<StartupPacket, ProtoError> {
    let mut head = [0u8; 8];
    match r.read_exact(&mut head).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Err(ProtoError::Closed),
        Err(e) => return Err(e.into()),
    }
    let [l0, l1, l2, l3, c0, c1, c2, c3] = head;
    let len = u32::from_be_bytes([l0, l1, l2, l3]) as usize;
    let code = u32::from_be_bytes([c0, c1, c2, c3]);
    if len < 8 {
        return Err(ProtoError::Malformed(
            "startup packet shorter than its header",
        ));
    }
    if len > MAX_STARTUP {
        return Err(ProtoError::TooLarge(len));
    }
    let mut body = vec![0u8; len - 8];
    r.read_exact(&mut body).await?;
    parse_startup(code, &body)
}

/// Parses a startup-phase packet's code and body.
pub fn parse_startup(code: u32, body: &[u8]) -> Result<StartupPacket, ProtoError> {
    match code {
        SSL_REQUEST => Ok(StartupPacket::Ssl),
        GSSENC_REQUEST => Ok(StartupPacket::GssEnc),
        CANCEL_REQUEST => {
            let mut c = Cursor::new(body);
            let pid = c.i32()?;
            let secret = c.i32()?;
            Ok(StartupPacket::Cancel { pid, secret })
        }
        v if v >> 16 == 3 => {
            let mut c = Cursor::new(body);
            let mut params = Vec::new();
            loop {
                let k = c.cstr()?;
                if k.is_empty() {
                    break;
                }
                let v = c.cstr()?;
                let k = String::from_utf8(k.to_vec())
                    .map_err(|_| ProtoError::Malformed("parameter name is not UTF-8"))?;
                let v = String::from_utf8(v.to_vec())
                    .map_err(|_| ProtoError::Malformed("parameter value is not UTF-8"))?;
                if params.iter().any(|(p, _)| *p == k) {
                    return Err(ProtoError::Malformed("a startup parameter is given twice"));
                }
                params.push((k, v));
            }
            Ok(StartupPacket::Startup(Startup {
                minor: (v & 0xffff) as u16,
                params,
            }))
        }
        v => Ok(StartupPacket::Unsupported(v)),
    }
}

/// A bounded reader over a message body.
pub struct Cursor<'a> {
    buf: &'a [u8],
}

impl<'a> Cursor<'a> {
    pub fn new(buf: &'a [u8]) -> Cursor<'a> {
        Cursor { buf }
    }
    pub fn rest(&self) -> &'a [u8] {
        self.buf
    }
    pub fn take(&mut self, n: usize) -> Result<&'a [u8], ProtoError> {
        if n > self.buf.len() {
            return Err(ProtoError::Malformed("field runs past the message end"));
        }
        let (a, b) = self.buf.split_at(n);
        self.buf = b;
        Ok(a)
    }
    pub fn u8(&mut self) -> Result<u8, ProtoError> {
        let b = self.take(1)?;
        b.first()
            .copied()
            .ok_or(ProtoError::Malformed("missing byte"))
    }
    pub fn i16(&mut self) -> Result<i16, ProtoError> {
        let b = self.take(2)?;
        let a: [u8; 2] = b
            .try_into()
            .map_err(|_| ProtoError::Malformed("short int16"))?;
        Ok(i16::from_be_bytes(a))
    }
    pub fn i32(&mut self) -> Result<i32, ProtoError> {
        let b = self.take(4)?;
        let a: [u8; 4] = b
            .try_into()
            .map_err(|_| ProtoError::Malformed("short int32"))?;
        Ok(i32::from_be_bytes(a))
    }
    /// A NUL-terminated string (without its NUL).
    pub fn cstr(&mut self) -> Result<&'a [u8], ProtoError> {
        let end = self
            .buf
            .iter()
            .position(|&b| b == 0)
            .ok_or(ProtoError::Malformed("string without its terminating NUL"))?;
        let s = self.take(end)?;
        self.take(1)?;
        Ok(s)
    }
}

/// A message's header: its type byte and the length of its body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub tag: u8,
    pub body_len: usize,
}

impl Header {
    pub fn parse(raw: [u8; 5]) -> Result<Header, ProtoError> {
        let [tag, l0, l1, l2, l3] = raw;
        let len = u32::from_be_bytes([l0, l1, l2, l3]) as usize;
        if len < 4 {
            return Err(ProtoError::Malformed("message length below 4"));
        }
        Ok(Header {
            tag,
            body_len: len - 4,
        })
    }
    pub fn bytes(&self) -> [u8; 5] {
        let len = (self.body_len + 4) as u32;
        let l = len.to_be_bytes();
        let [l0, l1, l2, l3] = l;
        [self.tag, l0, l1, l2, l3]
    }
}

fn message(tag: u8, body: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(body.len() + 5);
    b.put_u8(tag);
    b.put_u32((body.len() + 4) as u32);
    b.put_slice(body);
    b.freeze()
}

/// `AuthenticationOk`.
pub fn auth_ok() -> Bytes {
    message(b'R', &0i32.to_be_bytes())
}

/// `AuthenticationCleartextPassword`: the client sends its password (here:
/// the person's current TOTP code) in the clear, inside the tunnel.
pub fn auth_cleartext() -> Bytes {
    message(b'R', &3i32.to_be_bytes())
}

/// `ParameterStatus`.
pub fn parameter_status(name: &str, value: &str) -> Bytes {
    let mut body = Vec::with_capacity(name.len() + value.len() + 2);
    body.extend_from_slice(name.as_bytes());
    body.push(0);
    body.extend_from_slice(value.as_bytes());
    body.push(0);
    message(b'S', &body)
}

/// `BackendKeyData` (gatehouse's own key, not the server's).
pub fn backend_key(pid: i32, secret: i32) -> Bytes {
    let mut body = Vec::with_capacity(8);
    body.extend_from_slice(&pid.to_be_bytes());
    body.extend_from_slice(&secret.to_be_bytes());
    message(b'K', &body)
}

/// `Terminate`.
pub fn terminate() -> Bytes {
    message(b'X', &[])
}

/// `ReadyForQuery` with transaction status `status` (`I`, `T`, `E`).
pub fn ready(status: u8) -> Bytes {
    message(b'Z', &[status])
}

/// `NegotiateProtocolVersion`: gatehouse speaks 3.0 and none of `unknown`.
pub fn negotiate(unknown: &[String]) -> Bytes {
    let mut body = Vec::new();
    body.extend_from_slice(&(PROTOCOL_3_0 as i32).to_be_bytes());
    body.extend_from_slice(&(unknown.len() as i32).to_be_bytes());
    for u in unknown {
        body.extend_from_slice(u.as_bytes());
        body.push(0);
    }
    message(b'v', &body)
}

/// Severity of an error gatehouse sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Error,
    Fatal,
}

/// An `ErrorResponse` written by gatehouse: psql prints
/// `FATAL:  <message>` (and the detail/hint lines).
pub fn error(severity: Severity, code: &str, message_text: &str, hint: Option<&str>) -> Bytes {
    let sev = match severity {
        Severity::Error => "ERROR",
        Severity::Fatal => "FATAL",
    };
    let mut body = Vec::new();
    for (field, value) in [(b'S', sev), (b'V', sev), (b'C', code), (b'M', message_text)] {
        body.push(field);
        body.extend_from_slice(&cstring_safe(value));
        body.push(0);
    }
    if let Some(h) = hint {
        body.push(b'H');
        body.extend_from_slice(&cstring_safe(h));
        body.push(0);
    }
    body.push(0);
    message(b'E', &body)
}

fn cstring_safe(s: &str) -> Vec<u8> {
    s.bytes().filter(|&b| b != 0).collect()
}

/// The fields of an `ErrorResponse` or `NoticeResponse` that gatehouse
/// records: severity (non-localized when given), SQLSTATE and message.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ErrorFields {
    pub severity: String,
    pub code: String,
    pub message: String,
}

/// Parses an ErrorResponse/NoticeResponse body.
pub fn parse_error(body: &[u8]) -> Result<ErrorFields, ProtoError> {
    let mut c = Cursor::new(body);
    let mut out = ErrorFields::default();
    let mut localized = String::new();
    loop {
        let field = c.u8()?;
        if field == 0 {
            break;
        }
        let v = String::from_utf8_lossy(c.cstr()?).into_owned();
        match field {
            b'V' => out.severity = v,
            b'S' => localized = v,
            b'C' => out.code = v,
            b'M' => out.message = v,
            _ => {}
        }
    }
    if out.severity.is_empty() {
        out.severity = localized;
    }
    Ok(out)
}

/// A `Query` body: the SQL text (without its NUL).
pub fn parse_query(body: &[u8]) -> Result<&[u8], ProtoError> {
    Cursor::new(body).cstr()
}

/// A `Parse` body: statement name and SQL text.
pub fn parse_parse(body: &[u8]) -> Result<(String, &[u8]), ProtoError> {
    let mut c = Cursor::new(body);
    let name = String::from_utf8_lossy(c.cstr()?).into_owned();
    let text = c.cstr()?;
    Ok((name, text))
}

/// A Bind parameter as the client sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BindParam {
    Null,
    Text(Vec<u8>),
    Binary(Vec<u8>),
}

/// A `Bind` body: portal, statement and parameters (with their formats
/// applied: none = all text, one = all that format, else one each).
pub fn parse_bind(body: &[u8]) -> Result<(String, String, Vec<BindParam>), ProtoError> {
    let mut c = Cursor::new(body);
    let portal = String::from_utf8_lossy(c.cstr()?).into_owned();
    let statement = String::from_utf8_lossy(c.cstr()?).into_owned();
    let params = values(&mut c)?;
    Ok((portal, statement, params))
}

/// A `FunctionCall` body: the function's OID and its arguments (formats
/// applied as for Bind).
pub fn parse_function_call(body: &[u8]) -> Result<(u32, Vec<BindParam>), ProtoError> {
    let mut c = Cursor::new(body);
    let oid = c.i32()? as u32;
    let args = values(&mut c)?;
    Ok((oid, args))
}

/// Format codes, then values, as Bind and FunctionCall carry them: no
/// format = all text, one = all that format, else one per value.
fn values(c: &mut Cursor<'_>) -> Result<Vec<BindParam>, ProtoError> {
    let nformats =
        usize::try_from(c.i16()?).map_err(|_| ProtoError::Malformed("negative count"))?;
    let mut formats = Vec::with_capacity(nformats.min(c.rest().len() / 2));
    for _ in 0..nformats {
        formats.push(c.i16()?);
    }
    let n = usize::try_from(c.i16()?).map_err(|_| ProtoError::Malformed("negative count"))?;
    if nformats > 1 && nformats != n {
        return Err(ProtoError::Malformed(
            "format count differs from value count",
        ));
    }
    let mut out = Vec::with_capacity(n.min(c.rest().len() / 4));
    for i in 0..n {
        let len = c.i32()?;
        let format = match formats.len() {
            0 => 0,
            1 => formats.first().copied().unwrap_or(0),
            _ => formats.get(i).copied().unwrap_or(0),
        };
        if len < 0 {
            out.push(BindParam::Null);
            continue;
        }
        let v = c.take(len as usize)?.to_vec();
        out.push(if format == 1 {
            BindParam::Binary(v)
        } else {
            BindParam::Text(v)
        });
    }
    Ok(out)
}

/// A `CommandComplete` tag and the row count it carries (`SELECT 3`,
/// `INSERT 0 5`, `COPY 10`, ...), if any.
pub fn parse_command_complete(body: &[u8]) -> Result<(String, Option<u64>), ProtoError> {
    let tag = String::from_utf8_lossy(Cursor::new(body).cstr()?).into_owned();
    let rows = match tag.split(' ').collect::<Vec<_>>().as_slice() {
        [_, n] | [_, _, n] => n.parse().ok(),
        _ => None,
    };
    Ok((tag, rows))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn startup_bytes(params: &[(&str, &str)]) -> Vec<u8> {
        let mut body = Vec::new();
        body.extend_from_slice(&PROTOCOL_3_0.to_be_bytes());
        for (k, v) in params {
            body.extend_from_slice(k.as_bytes());
            body.push(0);
            body.extend_from_slice(v.as_bytes());
            body.push(0);
        }
        body.push(0);
        let mut out = ((body.len() + 4) as u32).to_be_bytes().to_vec();
        out.extend(body);
        out
    }

    #[tokio::test]
    async fn startup_parameters_are_read_in_order() {
        let b = startup_bytes(&[("user", "app_ro"), ("database", "app")]);
        let p = read_startup(&mut b.as_slice()).await.unwrap();
        let StartupPacket::Startup(s) = p else {
            panic!()
        };
        assert_eq!(s.get("user"), Some("app_ro"));
        assert_eq!(s.params[1].0, "database");
    }

    #[tokio::test]
    async fn a_startup_parameter_given_twice_is_refused() {
        let b = startup_bytes(&[("user", "app_ro"), ("user", "postgres")]);
        assert!(read_startup(&mut b.as_slice()).await.is_err());
    }

    #[tokio::test]
    async fn an_oversized_or_undersized_startup_packet_is_refused_before_reading_it() {
        let mut big = 20_000u32.to_be_bytes().to_vec();
        big.extend_from_slice(&PROTOCOL_3_0.to_be_bytes());
        assert!(matches!(
            read_startup(&mut big.as_slice()).await,
            Err(ProtoError::TooLarge(20_000))
        ));
        let mut small = 4u32.to_be_bytes().to_vec();
        small.extend_from_slice(&PROTOCOL_3_0.to_be_bytes());
        assert!(read_startup(&mut small.as_slice()).await.is_err());
    }

    #[test]
    fn bind_keeps_binary_parameters_exact_and_nulls() {
        let mut body = Vec::new();
        body.extend_from_slice(b"p1\0s1\0");
        body.extend_from_slice(&2i16.to_be_bytes());
        body.extend_from_slice(&0i16.to_be_bytes());
        body.extend_from_slice(&1i16.to_be_bytes());
        body.extend_from_slice(&2i16.to_be_bytes());
        body.extend_from_slice(&2i32.to_be_bytes());
        body.extend_from_slice(b"hi");
        body.extend_from_slice(&(-1i32).to_be_bytes());
        body.extend_from_slice(&0i16.to_be_bytes());
        let (portal, stmt, params) = parse_bind(&body).unwrap();
        assert_eq!((portal.as_str(), stmt.as_str()), ("p1", "s1"));
        assert_eq!(
            params,
            vec![BindParam::Text(b"hi".to_vec()), BindParam::Null]
        );
        // One format code applies to all.
        let mut body = Vec::new();
        body.extend_from_slice(b"\0\0");
        body.extend_from_slice(&1i16.to_be_bytes());
        body.extend_from_slice(&1i16.to_be_bytes());
        body.extend_from_slice(&1i16.to_be_bytes());
        body.extend_from_slice(&3i32.to_be_bytes());
        body.extend_from_slice(&[0, 0xff, 0x1b]);
        let (_, _, params) = parse_bind(&body).unwrap();
        assert_eq!(params, vec![BindParam::Binary(vec![0, 0xff, 0x1b])]);
    }

    #[test]
    fn truncated_bind_is_an_error_not_a_panic() {
        let mut body = Vec::new();
        body.extend_from_slice(b"\0\0");
        body.extend_from_slice(&0i16.to_be_bytes());
        body.extend_from_slice(&1i16.to_be_bytes());
        body.extend_from_slice(&1000i32.to_be_bytes());
        body.extend_from_slice(b"short");
        assert!(parse_bind(&body).is_err());
        for n in 0..body.len() {
            let _ = parse_bind(&body[..n]);
        }
    }

    #[test]
    fn command_complete_gives_the_row_count() {
        assert_eq!(
            parse_command_complete(b"SELECT 3\0").unwrap(),
            ("SELECT 3".to_string(), Some(3))
        );
        assert_eq!(
            parse_command_complete(b"INSERT 0 5\0").unwrap(),
            ("INSERT 0 5".to_string(), Some(5))
        );
        assert_eq!(
            parse_command_complete(b"BEGIN\0").unwrap(),
            ("BEGIN".to_string(), None)
        );
    }

    #[test]
    fn error_response_round_trips_through_the_parser() {
        let e = error(Severity::Fatal, "28P01", "no\0pe", Some("hint"));
        let f = parse_error(&e[5..]).unwrap();
        assert_eq!(f.severity, "FATAL");
        assert_eq!(f.code, "28P01");
        assert_eq!(f.message, "nope");
    }
}
