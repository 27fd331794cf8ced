//! A tiny PostgreSQL wire client for the tests that stock clients cannot
//! drive: binary Bind parameters, raw CancelRequests with a chosen key,
//! thousands of pipelined statements whose answers are never read, and
//! messages sent out of order. Blocking std I/O; every read has a timeout.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// One message from the server.
#[derive(Debug, Clone)]
pub struct Msg {
    pub tag: u8,
    pub body: Vec<u8>,
}

impl Msg {
    /// For `E`/`N`: the field `code` (`b'C'` SQLSTATE, `b'M'` message).
    pub fn field(&self, code: u8) -> Option<String> {
        let mut it = self.body.split(|&b| b == 0);
        for f in it.by_ref() {
            if f.is_empty() {
                break;
            }
            if f[0] == code {
                return Some(String::from_utf8_lossy(&f[1..]).into_owned());
            }
        }
        None
    }
}

pub struct PgConn {
    pub s: TcpStream,
    /// The cancel key the gateway gave (BackendKeyData).
    pub key: Option<(i32, i32)>,
}

pub fn startup_packet(params: &[(&str, &str)]) -> Vec<u8> {
    let mut body = 196_608u32.to_be_bytes().to_vec();
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

pub fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    out.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    out.extend_from_slice(body);
    out
}

pub fn query(sql: &str) -> Vec<u8> {
    let mut b = sql.as_bytes().to_vec();
    b.push(0);
    msg(b'Q', &b)
}

pub fn parse(name: &str, sql: &str, types: &[u32]) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(name.as_bytes());
    b.push(0);
    b.extend_from_slice(sql.as_bytes());
    b.push(0);
    b.extend_from_slice(&(types.len() as i16).to_be_bytes());
    for t in types {
        b.extend_from_slice(&t.to_be_bytes());
    }
    msg(b'P', &b)
}

/// Bind with one format code per parameter (0 text, 1 binary); None = NULL.
pub fn bind(portal: &str, stmt: &str, params: &[(i16, Option<&[u8]>)]) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(portal.as_bytes());
    b.push(0);
    b.extend_from_slice(stmt.as_bytes());
    b.push(0);
    b.extend_from_slice(&(params.len() as i16).to_be_bytes());
    for (f, _) in params {
        b.extend_from_slice(&f.to_be_bytes());
    }
    b.extend_from_slice(&(params.len() as i16).to_be_bytes());
    for (_, v) in params {
        match v {
            None => b.extend_from_slice(&(-1i32).to_be_bytes()),
            Some(v) => {
                b.extend_from_slice(&(v.len() as i32).to_be_bytes());
                b.extend_from_slice(v);
            }
        }
    }
    b.extend_from_slice(&0i16.to_be_bytes());
    msg(b'B', &b)
}

pub fn execute(portal: &str) -> Vec<u8> {
    let mut b = portal.as_bytes().to_vec();
    b.push(0);
    b.extend_from_slice(&0i32.to_be_bytes());
    msg(b'E', &b)
}

pub fn sync() -> Vec<u8> {
    msg(b'S', &[])
}

pub fn cancel_request(pid: i32, secret: i32) -> Vec<u8> {
    let mut out = 16u32.to_be_bytes().to_vec();
    out.extend_from_slice(&80_877_102u32.to_be_bytes());
    out.extend_from_slice(&pid.to_be_bytes());
    out.extend_from_slice(&secret.to_be_bytes());
    out
}

impl PgConn {
    pub fn connect(addr: &str) -> std::io::Result<PgConn> {
        let s = TcpStream::connect(addr)?;
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        s.set_nodelay(true)?;
        Ok(PgConn { s, key: None })
    }

    pub fn send(&mut self, b: &[u8]) -> std::io::Result<()> {
        self.s.write_all(b)
    }

    pub fn recv(&mut self) -> std::io::Result<Msg> {
        let mut h = [0u8; 5];
        self.s.read_exact(&mut h)?;
        let len = u32::from_be_bytes([h[1], h[2], h[3], h[4]]) as usize;
        let mut body = vec![0u8; len.saturating_sub(4)];
        self.s.read_exact(&mut body)?;
        Ok(Msg { tag: h[0], body })
    }

    /// Startup; answers a cleartext password request with `password`.
    /// Returns every message up to ReadyForQuery (or the error).
    pub fn login(&mut self, params: &[(&str, &str)], password: Option<&str>) -> Vec<Msg> {
        self.send(&startup_packet(params)).expect("send startup");
        let mut got = Vec::new();
        loop {
            let m = match self.recv() {
                Ok(m) => m,
                Err(_) => return got,
            };
            match m.tag {
                b'R' if m.body == 3i32.to_be_bytes() => {
                    let mut p = password.unwrap_or("").as_bytes().to_vec();
                    p.push(0);
                    self.send(&msg(b'p', &p)).expect("send password");
                }
                b'K' => {
                    let b = &m.body;
                    self.key = Some((
                        i32::from_be_bytes([b[0], b[1], b[2], b[3]]),
                        i32::from_be_bytes([b[4], b[5], b[6], b[7]]),
                    ));
                }
                b'Z' | b'E' => {
                    got.push(m);
                    return got;
                }
                _ => {}
            }
            got.push(m);
        }
    }

    /// Reads messages until ReadyForQuery (inclusive).
    pub fn until_ready(&mut self) -> std::io::Result<Vec<Msg>> {
        let mut got = Vec::new();
        loop {
            let m = self.recv()?;
            let z = m.tag == b'Z';
            got.push(m);
            if z {
                return Ok(got);
            }
        }
    }
}
