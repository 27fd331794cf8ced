//! MySQL packet framing, capability flags and the generic OK/ERR packets.
//!
//! A packet is `[3-byte little-endian length][sequence id][payload]`. A
//! payload of 0xFFFFFF bytes or more is split into 0xFFFFFF-byte chunks and
//! ends with a shorter chunk (an empty one when the length is a multiple of
//! 0xFFFFFF). Sequence ids count up (wrapping) across the chunks and across
//! the packets of one exchange.
//!
//! Reading is bounded: a logical packet longer than the caller's limit is
//! refused before anything is allocated for it, and the sequence id of every
//! chunk is checked. Nothing here indexes or panics on what the peer sent.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The largest chunk of one packet on the wire.
pub const MAX_CHUNK: usize = 0xFF_FFFF;

/// Capability flags (the lower and upper 16 bits of the handshake).
pub mod caps {
    /// MySQL: new password hashing. MariaDB servers clear it (`CLIENT_MYSQL`).
    pub const LONG_PASSWORD: u32 = 1;
    pub const FOUND_ROWS: u32 = 1 << 1;
    pub const LONG_FLAG: u32 = 1 << 2;
    pub const CONNECT_WITH_DB: u32 = 1 << 3;
    pub const NO_SCHEMA: u32 = 1 << 4;
    pub const COMPRESS: u32 = 1 << 5;
    pub const ODBC: u32 = 1 << 6;
    pub const LOCAL_FILES: u32 = 1 << 7;
    pub const IGNORE_SPACE: u32 = 1 << 8;
    pub const PROTOCOL_41: u32 = 1 << 9;
    pub const INTERACTIVE: u32 = 1 << 10;
    pub const SSL: u32 = 1 << 11;
    pub const IGNORE_SIGPIPE: u32 = 1 << 12;
    pub const TRANSACTIONS: u32 = 1 << 13;
    pub const RESERVED: u32 = 1 << 14;
    pub const SECURE_CONNECTION: u32 = 1 << 15;
    pub const MULTI_STATEMENTS: u32 = 1 << 16;
    pub const MULTI_RESULTS: u32 = 1 << 17;
    pub const PS_MULTI_RESULTS: u32 = 1 << 18;
    pub const PLUGIN_AUTH: u32 = 1 << 19;
    pub const CONNECT_ATTRS: u32 = 1 << 20;
    pub const PLUGIN_AUTH_LENENC_CLIENT_DATA: u32 = 1 << 21;
    pub const CAN_HANDLE_EXPIRED_PASSWORDS: u32 = 1 << 22;
    pub const SESSION_TRACK: u32 = 1 << 23;
    pub const DEPRECATE_EOF: u32 = 1 << 24;
    pub const OPTIONAL_RESULTSET_METADATA: u32 = 1 << 25;
    pub const ZSTD_COMPRESSION: u32 = 1 << 26;
    pub const QUERY_ATTRIBUTES: u32 = 1 << 27;
    pub const MULTI_FACTOR_AUTHENTICATION: u32 = 1 << 28;
    pub const CAPABILITY_EXTENSION: u32 = 1 << 29;
    pub const SSL_VERIFY_SERVER_CERT: u32 = 1 << 30;
    pub const REMEMBER_OPTIONS: u32 = 1 << 31;
}

/// Why a packet could not be read.
#[derive(Debug, thiserror::Error)]
pub enum PacketError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("the peer closed the connection")]
    Closed,
    #[error("packet of {len} bytes or more exceeds the limit of {max} bytes")]
    TooLong { len: usize, max: usize },
    #[error("packet sequence id {got}, expected {expected}")]
    Sequence { expected: u8, got: u8 },
}

/// Appends `payload` framed as one logical packet starting at sequence id
/// `*seq`, split into [`MAX_CHUNK`] chunks; `*seq` is advanced past it.
pub fn frame_into(out: &mut Vec<u8>, seq: &mut u8, payload: &[u8]) {
    let mut rest = payload;
    loop {
        let (chunk, after) = rest.split_at(rest.len().min(MAX_CHUNK));
        let len = u32::try_from(chunk.len()).unwrap_or(0).to_le_bytes();
        let [a, b, c, _] = len;
        out.extend_from_slice(&[a, b, c, *seq]);
        out.extend_from_slice(chunk);
        *seq = seq.wrapping_add(1);
        rest = after;
        if chunk.len() < MAX_CHUNK {
            return;
        }
    }
}

/// Writes `payload` as one logical packet (see [`frame_into`]) and flushes.
/// The framed copy is wiped after writing (it may carry a password).
pub async fn write_packet<S: AsyncWrite + Unpin>(
    stream: &mut S,
    seq: &mut u8,
    payload: &[u8],
) -> std::io::Result<()> {
    let mut out = zeroize::Zeroizing::new(Vec::with_capacity(payload.len().saturating_add(8)));
    frame_into(&mut out, seq, payload);
    stream.write_all(&out).await?;
    stream.flush().await
}

/// Reads one logical packet whose first chunk must carry sequence id
/// `*seq`; joins continuation chunks; refuses a total over `max` bytes
/// before allocating it. `*seq` is advanced past the packet.
pub async fn read_packet<S: AsyncRead + Unpin>(
    stream: &mut S,
    seq: &mut u8,
    max: usize,
) -> Result<Vec<u8>, PacketError> {
    let mut payload = Vec::new();
    loop {
        let mut head = [0u8; 4];
        stream.read_exact(&mut head).await.map_err(eof)?;
        let [a, b, c, got] = head;
        let len = usize::from(a) | usize::from(b) << 8 | usize::from(c) << 16;
        if got != *seq {
            return Err(PacketError::Sequence {
                expected: *seq,
                got,
            });
        }
        *seq = seq.wrapping_add(1);
        let total = payload.len().saturating_add(len);
        if total > max {
            return Err(PacketError::TooLong { len: total, max });
        }
        let start = payload.len();
        payload.resize(total, 0);
        let Some(dest) = payload.get_mut(start..) else {
            return Err(PacketError::TooLong { len: total, max });
        };
        stream.read_exact(dest).await.map_err(eof)?;
        if len < MAX_CHUNK {
            return Ok(payload);
        }
    }
}

fn eof(e: std::io::Error) -> PacketError {
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        PacketError::Closed
    } else {
        PacketError::Io(e)
    }
}

/// A checked reader over a packet payload.
#[derive(Debug, Clone)]
pub struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    pub fn new(payload: &'a [u8]) -> Self {
        Reader(payload)
    }

    pub fn u8(&mut self) -> Option<u8> {
        let (first, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(*first)
    }

    pub fn u16(&mut self) -> Option<u16> {
        let (head, rest) = self.0.split_first_chunk::<2>()?;
        self.0 = rest;
        Some(u16::from_le_bytes(*head))
    }

    pub fn u32(&mut self) -> Option<u32> {
        let (head, rest) = self.0.split_first_chunk::<4>()?;
        self.0 = rest;
        Some(u32::from_le_bytes(*head))
    }

    pub fn bytes(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, rest) = self.0.split_at_checked(n)?;
        self.0 = rest;
        Some(head)
    }

    /// A NUL-terminated string (without the NUL).
    pub fn cstr(&mut self) -> Option<&'a [u8]> {
        let end = self.0.iter().position(|&b| b == 0)?;
        let (s, rest) = self.0.split_at_checked(end)?;
        self.0 = rest.get(1..)?;
        Some(s)
    }

    /// A NUL-terminated string, or everything left when there is no NUL
    /// (some servers omit the last terminator).
    pub fn cstr_or_rest(&mut self) -> &'a [u8] {
        match self.cstr() {
            Some(s) => s,
            None => self.rest(),
        }
    }

    /// Everything left (consumed).
    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.0)
    }

    pub fn peek(&self) -> Option<u8> {
        self.0.first().copied()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// An ERR packet: `0xFF`, code, `#` + SQLSTATE (protocol 4.1; absent in
/// errors sent before the handshake), message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrPacket {
    pub code: u16,
    pub sqlstate: String,
    pub message: String,
}

/// Parses an ERR packet; None when `payload` is not one. A missing SQLSTATE
/// is reported as `HY000`.
pub fn parse_err(payload: &[u8]) -> Option<ErrPacket> {
    let mut r = Reader::new(payload);
    if r.u8()? != 0xFF {
        return None;
    }
    let code = r.u16()?;
    let mut sqlstate = "HY000".to_string();
    if r.peek() == Some(b'#') {
        let mut look = r.clone();
        let _ = look.u8();
        if let Some(state) = look.bytes(5) {
            sqlstate = String::from_utf8_lossy(state).into_owned();
            r = look;
        }
    }
    Some(ErrPacket {
        code,
        sqlstate,
        message: String::from_utf8_lossy(r.rest()).into_owned(),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn small_packets_carry_length_and_sequence() {
        let mut out = Vec::new();
        let mut seq = 3;
        frame_into(&mut out, &mut seq, b"abc");
        frame_into(&mut out, &mut seq, b"");
        assert_eq!(out, [3, 0, 0, 3, b'a', b'b', b'c', 0, 0, 0, 4]);
        assert_eq!(seq, 5);
        let mut seq = 255;
        let mut out = Vec::new();
        frame_into(&mut out, &mut seq, b"x");
        assert_eq!((out[3], seq), (255, 0), "sequence ids wrap");
    }

    #[test]
    fn a_16_mib_payload_is_split_with_an_empty_trailer() {
        let payload = vec![7u8; MAX_CHUNK];
        let mut out = Vec::new();
        let mut seq = 0;
        frame_into(&mut out, &mut seq, &payload);
        assert_eq!(out.len(), MAX_CHUNK + 8);
        assert_eq!(&out[..4], &[0xff, 0xff, 0xff, 0]);
        assert_eq!(&out[MAX_CHUNK + 4..], &[0, 0, 0, 1]);
        assert_eq!(seq, 2);

        let payload = vec![9u8; MAX_CHUNK + 10];
        let mut out = Vec::new();
        let mut seq = 0;
        frame_into(&mut out, &mut seq, &payload);
        assert_eq!(&out[MAX_CHUNK + 4..MAX_CHUNK + 8], &[10, 0, 0, 1]);
        assert_eq!(out.len(), MAX_CHUNK + 10 + 8);
    }

    #[tokio::test]
    async fn split_packets_read_back_whole_and_bounded() {
        let payload: Vec<u8> = (0..MAX_CHUNK + 5).map(|i| i as u8).collect();
        let mut out = Vec::new();
        let mut seq = 1;
        frame_into(&mut out, &mut seq, &payload);
        frame_into(&mut out, &mut seq, b"next");
        let mut data = out.as_slice();
        let mut rseq = 1;
        let got = read_packet(&mut data, &mut rseq, 1 << 25).await.unwrap();
        assert_eq!(got, payload);
        assert_eq!(rseq, 3);
        assert_eq!(
            read_packet(&mut data, &mut rseq, 16).await.unwrap(),
            b"next"
        );
        assert!(data.is_empty());

        // Over the limit: refused at the header, nothing allocated.
        let mut data = out.as_slice();
        let mut rseq = 1;
        let err = read_packet(&mut data, &mut rseq, 1 << 20)
            .await
            .unwrap_err();
        assert!(matches!(err, PacketError::TooLong { .. }), "{err}");
        // Wrong sequence id.
        let mut data: &[u8] = &[1, 0, 0, 7, 0];
        let mut rseq = 2;
        let err = read_packet(&mut data, &mut rseq, 16).await.unwrap_err();
        assert!(matches!(
            err,
            PacketError::Sequence {
                expected: 2,
                got: 7
            }
        ));
        // Truncated.
        let mut data: &[u8] = &[5, 0, 0, 0, 1];
        let mut rseq = 0;
        let err = read_packet(&mut data, &mut rseq, 16).await.unwrap_err();
        assert!(matches!(err, PacketError::Closed));
    }

    #[test]
    fn err_packets_with_and_without_sqlstate() {
        let mut p = vec![0xff, 0x15, 0x04, b'#'];
        p.extend_from_slice(b"28000Access denied");
        assert_eq!(
            parse_err(&p).unwrap(),
            ErrPacket {
                code: 1045,
                sqlstate: "28000".into(),
                message: "Access denied".into()
            }
        );
        let e = parse_err(&[0xff, 0x10, 0x04, b'T', b'o', b'o']).unwrap();
        assert_eq!(
            (e.code, e.sqlstate.as_str(), e.message.as_str()),
            (1040, "HY000", "Too")
        );
        assert!(parse_err(&[0xff, 1]).is_none());
        assert!(parse_err(&[0x00]).is_none());
        let e = parse_err(&[0xff, 1, 0, b'#', b'1']).unwrap();
        assert_eq!(e.sqlstate, "HY000");
    }
}
