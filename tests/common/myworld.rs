//! A MySQL world for the database tests, the MariaDB twin of
//! [`super::pgworld`]: a real MariaDB (see [`super::mariadb`]) with login
//! `app` owning database `app` (table `t`), a gateway with the `kind =
//! "mysql"` target `db-my` (TLS pinned to the test CA, `tunnel_port =
//! 13306`) where alice's role `dba` allows login `app` (not `root`), the
//! sealed credential, alice's `ssh -N -L PORT:db-my:3306 gw`, and bob
//! (role `dba-bob`, also `app` on db-my) whose forward a test opens when it
//! needs a second person.
//!
//! Clients: the stock `mariadb` CLI, a python3 script with
//! mysql-connector-python (pure-Python protocol: server-side prepared
//! statements with typed binary parameters, COM_CHANGE_USER), and
//! [`MyConn`], a small std-only wire client for what neither sends (an
//! execute without types, a raw greeting, any packet).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use tempfile::TempDir;

use super::mariadb::{mariadb_available, MariaDb, MariaOptions};
use super::pgworld::{key, rec, store_credential, tls_ca};
use super::world::{stderr, stdout, World};
use super::{
    free_port, gen_ed25519, require_tools, run_with_timeout, totp, wait_for_port, ChildGuard,
    KeyPair, SshClient,
};

pub use super::pgworld::{export, show};

/// The target's name and its tunnel port.
pub const TARGET: &str = "db-my";
pub const TUNNEL_PORT: u16 = 13306;
/// The database login the roles allow, and its database.
pub const LOGIN: &str = "app";
pub const DATABASE: &str = "app";
/// What the clients send as their password through SSH, where gatehouse
/// ignores it (SSH proved both factors).
pub const IGNORED_PASSWORD: &str = "ignored-by-gatehouse";

/// The tools every MySQL test drives: the server, the `mariadb` client,
/// ssh/sshd/oathtool for the door, python3 with mysql-connector-python.
/// Under `CI=true` anything missing fails the test.
pub fn tools() -> bool {
    require_tools(&["mariadb", "ssh", "sshd", "oathtool", "openssl", "python3"])
        && mariadb_available()
        && connector_available()
}

/// Whether `python3` imports `mysql.connector` (installed by
/// scripts/install-test-deps.sh). Same contract as [`require_tools`].
pub fn connector_available() -> bool {
    let ok = Command::new("python3")
        .args(["-c", "import mysql.connector"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if ok {
        return true;
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("python3 cannot import mysql.connector under CI=true (run scripts/install-test-deps.sh)");
    }
    eprintln!("skipping: python3 has no mysql.connector");
    false
}

/// A `[[targets]]` table for a mysql target; `tls` is its TLS line.
pub fn my_target(name: &str, address: &str, tunnel_port: u16, tls: &str) -> String {
    format!(
        "[[targets]]\nname = \"{name}\"\nkind = \"mysql\"\naddress = \"{address}\"\ntunnel_port = {tunnel_port}\n{tls}\nlabels = {{ tier = \"db\" }}\n"
    )
}

/// A second person: bob's SSH key (enrolled by [`MyDb::bob_forward`]).
pub struct Person {
    pub key: KeyPair,
    _dir: TempDir,
}

pub struct MyDb {
    pub w: World,
    pub db: MariaDb,
    /// alice's `ssh -L` port to db-my:3306.
    pub lport: u16,
    /// The password stored with `gatehouse target credential db-my app`.
    pub password: String,
    pub bob: Person,
    _fwd: ChildGuard,
}

/// The world described in the module doc, `password` being `app`'s.
/// `tweak` may add config (it gets the builder and the server).
pub fn start(
    password: &str,
    tweak: impl FnOnce(super::GatehouseBuilder, &MariaDb) -> super::GatehouseBuilder,
) -> MyDb {
    start_with(password, MariaOptions::default(), tweak)
}

/// [`start`] with the server started with `opts`.
pub fn start_with(
    password: &str,
    opts: MariaOptions,
    tweak: impl FnOnce(super::GatehouseBuilder, &MariaDb) -> super::GatehouseBuilder,
) -> MyDb {
    let db = MariaDb::start(opts);
    db.create_user(LOGIN, password);
    db.create_database(DATABASE, LOGIN);
    db.sql(
        "CREATE TABLE app.t (id INT, body LONGTEXT) CHARACTER SET utf8mb4; \
         GRANT ALL PRIVILEGES ON app.* TO app@'%'",
    );
    let dir = tempfile::Builder::new()
        .prefix("gh-bob-")
        .tempdir()
        .expect("tempdir");
    let bob_key = gen_ed25519(dir.path(), "bob");
    let w = World::with_roles(&["web", "dba"], |b| {
        let b = b
            .role("dba", &[TARGET], &[LOGIN])
            .user("bob", &["dba-bob"], &[&bob_key.public_line])
            .role("dba-bob", &[TARGET], &[LOGIN])
            .raw(&my_target(
                TARGET,
                &db.address(),
                TUNNEL_PORT,
                &tls_ca(&db.ca_pem),
            ));
        tweak(b, &db)
    });
    store_credential(w.gw.setup(), TARGET, LOGIN, password);
    let lport = free_port();
    let fwd = forward(&w.client, lport, TARGET, 3306);
    MyDb {
        w,
        db,
        lport,
        password: password.to_string(),
        bob: Person {
            key: bob_key,
            _dir: dir,
        },
        _fwd: fwd,
    }
}

/// `ssh -N -L 127.0.0.1:LPORT:TARGET:PORT gw` as `client`, up once the
/// port listens.
pub fn forward(client: &SshClient, lport: u16, target: &str, port: u16) -> ChildGuard {
    let spec = format!("127.0.0.1:{lport}:{target}:{port}");
    let g = client.spawn(&[
        "-N",
        "-o",
        "ExitOnForwardFailure=yes",
        "-L",
        spec.as_str(),
        "gw",
    ]);
    assert!(
        wait_for_port(lport, Duration::from_secs(30)),
        "the ssh -L forward did not come up"
    );
    g
}

/// The `mariadb` CLI as `user` at `127.0.0.1:lport` over TCP, database
/// `app`, batch output without column names; add `-e SQL` etc.
pub fn mariadb_cmd(lport: u16, user: &str) -> Command {
    let mut c = Command::new("mariadb");
    c.args([
        "--no-defaults",
        "-h",
        "127.0.0.1",
        "-P",
        &lport.to_string(),
        "--protocol=TCP",
        "-u",
        user,
        "--connect-timeout=20",
        "-N",
        "-B",
    ])
    .arg(format!("-p{IGNORED_PASSWORD}"))
    .env_remove("MYSQL_PWD")
    .stdin(Stdio::null());
    c
}

/// The python prelude of [`MyDb::python`]: `connect(**kw)` opens a
/// pure-Python mysql-connector connection to `GH_PORT` as `GH_USER`.
const PY_PRELUDE: &str = r#"
import datetime, json, os, sys
import mysql.connector
def connect(**kw):
    args = dict(host="127.0.0.1", port=int(os.environ["GH_PORT"]),
                user=os.environ.get("GH_USER", "app"),
                password=os.environ.get("GH_PASSWORD", ""), database="app",
                use_pure=True, ssl_disabled=True, connection_timeout=20,
                autocommit=True)
    args.update(kw)
    return mysql.connector.connect(**args)
"#;

/// Runs `script` (after [`PY_PRELUDE`]) with python3 against `lport`.
pub fn python_at(lport: u16, password: &str, script: &str) -> Output {
    let mut c = Command::new("python3");
    c.arg("-c")
        .arg(format!("{PY_PRELUDE}\n{script}"))
        .env("GH_PORT", lport.to_string())
        .env("GH_PASSWORD", password)
        .env("PYTHONIOENCODING", "utf-8")
        .stdin(Stdio::null());
    run_with_timeout(&mut c, Duration::from_secs(120)).expect("python3 finished")
}

impl MyDb {
    /// `mariadb` as `user` through alice's forward; add `-e SQL`.
    pub fn mariadb_cmd(&self, user: &str) -> Command {
        let mut c = mariadb_cmd(self.lport, user);
        c.arg(DATABASE);
        c
    }

    /// `mariadb -e SQL` as `user` through alice's forward.
    pub fn mariadb(&self, user: &str, sql: &str) -> Output {
        let mut c = self.mariadb_cmd(user);
        c.args(["-e", sql]);
        run_with_timeout(&mut c, Duration::from_secs(120)).expect("mariadb finished")
    }

    /// Like [`MyDb::mariadb`] as `app`; panics unless it succeeds and
    /// returns stdout.
    pub fn sql(&self, sql: &str) -> String {
        let out = self.mariadb(LOGIN, sql);
        assert!(
            out.status.success(),
            "mariadb through gatehouse failed on {sql:?}: {}\n{}",
            stderr(&out),
            self.w.gw.stderr()
        );
        stdout(&out)
    }

    /// A python3 script with mysql-connector-python through alice's
    /// forward (see [`PY_PRELUDE`]).
    pub fn python(&self, script: &str) -> Output {
        python_at(self.lport, IGNORED_PASSWORD, script)
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.lport)
    }

    /// A wire login as `app` to `app` through alice's forward; panics
    /// unless it is admitted.
    pub fn login(&self) -> MyConn {
        let mut c = MyConn::connect(&self.addr()).expect("connect to the forward");
        if let Err(e) = c.login(LOGIN, Some(DATABASE), IGNORED_PASSWORD.as_bytes()) {
            panic!(
                "login through gatehouse failed: {e:?}\n{}",
                self.w.gw.stderr()
            );
        }
        c
    }

    /// Enrolls bob, loads his current code, and opens his
    /// `ssh -L LPORT:db-my:3306`; returns his client (hold it), the port,
    /// the forward, and his TOTP secret.
    pub fn bob_forward(&self) -> (SshClient, u16, ChildGuard, String) {
        let secret = self.w.gw.enroll("bob");
        let client = SshClient::new(&self.bob.key, "bob", &self.w.gw, &[TARGET]);
        client.set_code(&totp(&secret));
        let lport = free_port();
        let fwd = forward(&client, lport, TARGET, 3306);
        (client, lport, fwd, secret)
    }
}

/// The id of the newest finished mysql recording (waits for it).
pub fn finished_my_recording(w: &World) -> String {
    let started =
        w.gw.wait_for_event(
            |e| e["event"] == "recording.started" && e["kind"] == "mysql",
            Duration::from_secs(15),
        )
        .unwrap_or_else(|| panic!("no mysql recording started:\n{}", w.gw.stderr()));
    let id = started["recording_id"].as_str().unwrap().to_string();
    w.gw.wait_for_event(
        |e| e["event"] == "recording.finished" && e["recording_id"] == id.as_str(),
        Duration::from_secs(15),
    )
    .unwrap_or_else(|| panic!("recording {id} did not finish:\n{}", w.gw.stderr()));
    id
}

/// Every finished mysql recording's id, waiting until `n` have finished.
pub fn finished_my_recordings(w: &World, n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    super::wait_until(Duration::from_secs(20), || {
        let ev = w.gw.audit_events();
        let started: Vec<String> = ev
            .iter()
            .filter(|e| e["event"] == "recording.started" && e["kind"] == "mysql")
            .filter_map(|e| e["recording_id"].as_str().map(str::to_string))
            .collect();
        ids = started
            .into_iter()
            .filter(|id| {
                ev.iter()
                    .any(|e| e["event"] == "recording.finished" && e["recording_id"] == id.as_str())
            })
            .collect();
        ids.len() >= n
    });
    assert!(
        ids.len() >= n,
        "{} of {n} mysql recordings finished:\n{}",
        ids.len(),
        w.gw.stderr()
    );
    ids
}

/// `recordings export ID` parsed: the header object and the events.
pub fn events(w: &World, id: &str) -> (serde_json::Value, Vec<serde_json::Value>) {
    let text = export(w, id);
    let mut lines = text
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("export line is JSON"));
    let header = lines.next().expect("an export header");
    (header, lines.collect())
}

/// `recordings verify ID`.
pub fn verify(w: &World, id: &str) -> Output {
    rec(w, &["verify", id])
}

/// The auditor key path (for `recordings show -i`).
pub fn auditor_key(w: &World) -> String {
    key(w)
}

/// The peak resident memory of process `pid` in KiB (VmHWM).
pub fn hwm_kib(pid: u32) -> u64 {
    let status =
        std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc/PID/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmHWM in /proc/PID/status")
}

// ---------------------------------------------------------------------
// A small MySQL wire client (std only, blocking).

/// Capability flags the wire client uses.
pub mod caps {
    pub const LONG_PASSWORD: u32 = 1;
    pub const CONNECT_WITH_DB: u32 = 8;
    pub const COMPRESS: u32 = 0x20;
    pub const LOCAL_FILES: u32 = 0x80;
    pub const PROTOCOL_41: u32 = 0x200;
    pub const SSL: u32 = 0x800;
    pub const TRANSACTIONS: u32 = 0x2000;
    pub const SECURE_CONNECTION: u32 = 0x8000;
    pub const MULTI_STATEMENTS: u32 = 1 << 16;
    pub const MULTI_RESULTS: u32 = 1 << 17;
    pub const PS_MULTI_RESULTS: u32 = 1 << 18;
    pub const PLUGIN_AUTH: u32 = 1 << 19;
}

/// MySQL column/parameter types the tests bind.
pub mod ty {
    pub const TINY: u8 = 1;
    pub const LONG: u8 = 3;
    pub const DOUBLE: u8 = 5;
    pub const NULL: u8 = 6;
    pub const LONGLONG: u8 = 8;
    pub const DATE: u8 = 10;
    pub const BLOB: u8 = 252;
    pub const VAR_STRING: u8 = 253;
    pub const STRING: u8 = 254;
}

/// The server's (or gatehouse's) initial handshake.
#[derive(Debug, Clone)]
pub struct Greeting {
    pub protocol: u8,
    pub version: String,
    pub connection_id: u32,
    pub capabilities: u32,
    pub scramble: Vec<u8>,
    pub plugin: String,
}

impl Greeting {
    /// Parses a HandshakeV10 payload; None when it is not one.
    pub fn parse(p: &[u8]) -> Option<Greeting> {
        let protocol = *p.first()?;
        if protocol != 10 {
            return None;
        }
        let nul = p.iter().skip(1).position(|&b| b == 0)? + 1;
        let version = String::from_utf8_lossy(&p[1..nul]).into_owned();
        let mut at = nul + 1;
        let id = u32::from_le_bytes(p.get(at..at + 4)?.try_into().ok()?);
        at += 4;
        let mut scramble = p.get(at..at + 8)?.to_vec();
        at += 9; // + filler
        let lo = u16::from_le_bytes(p.get(at..at + 2)?.try_into().ok()?) as u32;
        at += 2;
        let mut capabilities = lo;
        let mut plugin = String::new();
        if p.len() > at {
            at += 1; // charset
            at += 2; // status
            let hi = u16::from_le_bytes(p.get(at..at + 2)?.try_into().ok()?) as u32;
            capabilities |= hi << 16;
            at += 2;
            let auth_len = *p.get(at)? as usize;
            at += 1 + 10; // reserved (MariaDB: 6 + 4 extended caps)
            if capabilities & caps::SECURE_CONNECTION != 0 {
                let n = auth_len.saturating_sub(8).max(13);
                let part = p.get(at..(at + n).min(p.len()))?;
                scramble.extend(part.iter().take_while(|&&b| b != 0));
                at += n;
            }
            if capabilities & caps::PLUGIN_AUTH != 0 {
                let rest = p.get(at..).unwrap_or_default();
                let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
                plugin = String::from_utf8_lossy(&rest[..end]).into_owned();
            }
        }
        Some(Greeting {
            protocol,
            version,
            connection_id: id,
            capabilities,
            scramble,
            plugin,
        })
    }
}

/// A MySQL ERR packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MyErr {
    pub code: u16,
    pub state: String,
    pub message: String,
}

impl MyErr {
    fn parse(p: &[u8]) -> MyErr {
        let code = u16::from_le_bytes([p[1], p[2]]);
        let (state, msg) = if p.get(3) == Some(&b'#') && p.len() >= 9 {
            (String::from_utf8_lossy(&p[4..9]).into_owned(), &p[9..])
        } else {
            (String::new(), &p[3..])
        };
        MyErr {
            code,
            state,
            message: String::from_utf8_lossy(msg).into_owned(),
        }
    }
}

/// What one command answered.
#[derive(Debug, Clone, Default)]
pub struct Answer {
    /// One entry per result: an OK's affected rows, or a result set's rows
    /// (text protocol: each column as text or NULL; binary rows raw).
    pub results: Vec<Outcome>,
    /// The ERR that ended the answer, if any.
    pub error: Option<MyErr>,
    /// The file name of a LOCAL INFILE request (0xFB) the client got: the
    /// server asking for one of the client's files. Answered with no data.
    pub local_infile_request: Option<String>,
}

#[derive(Debug, Clone)]
pub enum Outcome {
    Ok { affected: u64 },
    Rows(Vec<Vec<Option<String>>>),
    BinaryRows(Vec<Vec<u8>>),
}

const SERVER_MORE_RESULTS_EXISTS: u16 = 0x0008;

/// A blocking wire connection (no TLS, no compression, EOF packets, as a
/// pre-5.7 client).
pub struct MyConn {
    pub s: TcpStream,
    seq: u8,
    pub greeting: Greeting,
}

impl MyConn {
    /// Connects and reads the greeting.
    pub fn connect(addr: &str) -> std::io::Result<MyConn> {
        let s = TcpStream::connect(addr)?;
        s.set_read_timeout(Some(Duration::from_secs(60)))?;
        s.set_write_timeout(Some(Duration::from_secs(60)))?;
        let mut c = MyConn {
            s,
            seq: 0,
            greeting: Greeting {
                protocol: 0,
                version: String::new(),
                connection_id: 0,
                capabilities: 0,
                scramble: Vec::new(),
                plugin: String::new(),
            },
        };
        let p = c.read()?;
        c.greeting = Greeting::parse(&p).ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("not a greeting: {:?}", String::from_utf8_lossy(&p)),
            )
        })?;
        Ok(c)
    }

    /// Reads one packet (payloads over 16 MiB joined).
    pub fn read(&mut self) -> std::io::Result<Vec<u8>> {
        let mut out = Vec::new();
        loop {
            let mut h = [0u8; 4];
            self.s.read_exact(&mut h)?;
            let len = u32::from_le_bytes([h[0], h[1], h[2], 0]) as usize;
            self.seq = h[3].wrapping_add(1);
            let start = out.len();
            out.resize(start + len, 0);
            self.s.read_exact(&mut out[start..])?;
            if len < 0xff_ffff {
                return Ok(out);
            }
        }
    }

    /// Writes one packet continuing the current sequence.
    pub fn write(&mut self, payload: &[u8]) -> std::io::Result<()> {
        let mut buf = Vec::with_capacity(payload.len() + 8);
        let mut chunks = payload.chunks(0xff_ffff).peekable();
        if payload.is_empty() {
            buf.extend_from_slice(&[0, 0, 0, self.seq]);
            self.seq = self.seq.wrapping_add(1);
        }
        while let Some(chunk) = chunks.next() {
            let n = chunk.len() as u32;
            buf.extend_from_slice(&n.to_le_bytes()[..3]);
            buf.push(self.seq);
            self.seq = self.seq.wrapping_add(1);
            buf.extend_from_slice(chunk);
            if chunks.peek().is_none() && chunk.len() == 0xff_ffff {
                buf.extend_from_slice(&[0, 0, 0, self.seq]);
                self.seq = self.seq.wrapping_add(1);
            }
        }
        self.s.write_all(&buf)
    }

    /// Sends a command packet (sequence 0).
    pub fn command(&mut self, payload: &[u8]) -> std::io::Result<()> {
        self.seq = 0;
        self.write(payload)
    }

    /// The handshake response: `user`, `db`, and `auth` as the
    /// mysql_native_password response (any bytes through SSH). Answers an
    /// auth switch with the same bytes. Err(the ERR) when refused. Offers
    /// CLIENT_LOCAL_FILES, as the stock client does (gatehouse must not
    /// pass it on).
    pub fn login(&mut self, user: &str, db: Option<&str>, auth: &[u8]) -> Result<(), MyErr> {
        let mut flags = caps::LONG_PASSWORD
            | caps::LOCAL_FILES
            | caps::PROTOCOL_41
            | caps::SECURE_CONNECTION
            | caps::PLUGIN_AUTH
            | caps::TRANSACTIONS
            | caps::MULTI_STATEMENTS
            | caps::MULTI_RESULTS
            | caps::PS_MULTI_RESULTS;
        if db.is_some() {
            flags |= caps::CONNECT_WITH_DB;
        }
        let mut p = Vec::new();
        p.extend_from_slice(&flags.to_le_bytes());
        p.extend_from_slice(&(16u32 << 20).to_le_bytes());
        p.push(45); // utf8mb4_general_ci
        p.extend_from_slice(&[0u8; 23]);
        p.extend_from_slice(user.as_bytes());
        p.push(0);
        p.push(auth.len() as u8);
        p.extend_from_slice(auth);
        if let Some(db) = db {
            p.extend_from_slice(db.as_bytes());
            p.push(0);
        }
        p.extend_from_slice(b"mysql_native_password\0");
        let io = |e: std::io::Error| MyErr {
            code: 0,
            state: String::new(),
            message: format!("io: {e}"),
        };
        self.write(&p).map_err(io)?;
        for _ in 0..4 {
            let r = self.read().map_err(io)?;
            match r.first() {
                Some(0x00) => return Ok(()),
                Some(0xff) => return Err(MyErr::parse(&r)),
                Some(0xfe) => self.write(auth).map_err(io)?,
                // caching_sha2 "fast auth ok" (0x01 0x03) then OK.
                Some(0x01) => continue,
                _ => break,
            }
        }
        Err(MyErr {
            code: 0,
            state: String::new(),
            message: "unexpected login exchange".into(),
        })
    }

    /// COM_QUERY and its whole answer (every result set).
    pub fn query(&mut self, sql: &str) -> std::io::Result<Answer> {
        let mut p = vec![0x03];
        p.extend_from_slice(sql.as_bytes());
        self.command(&p)?;
        self.answer(false)
    }

    /// Reads the answer to a command: results until one without
    /// SERVER_MORE_RESULTS_EXISTS, or an ERR. `binary`: result set rows
    /// are binary protocol rows (COM_STMT_EXECUTE).
    pub fn answer(&mut self, binary: bool) -> std::io::Result<Answer> {
        let mut a = Answer::default();
        for _ in 0..1000 {
            let p = self.read()?;
            match p.first() {
                Some(0x00) => {
                    let mut at = 1;
                    let affected = lenenc(&p, &mut at).unwrap_or(0);
                    let _insert_id = lenenc(&p, &mut at);
                    let status = u16::from_le_bytes([p[at], p[at + 1]]);
                    a.results.push(Outcome::Ok { affected });
                    if status & SERVER_MORE_RESULTS_EXISTS == 0 {
                        return Ok(a);
                    }
                }
                Some(0xff) => {
                    a.error = Some(MyErr::parse(&p));
                    return Ok(a);
                }
                Some(0xfb) => {
                    // LOCAL INFILE request: answer with no data.
                    a.local_infile_request = Some(String::from_utf8_lossy(&p[1..]).into_owned());
                    self.write(&[])?;
                }
                _ => {
                    let mut at = 0;
                    let columns = lenenc(&p, &mut at).unwrap_or(0);
                    for _ in 0..columns {
                        self.read()?;
                    }
                    self.read()?; // EOF
                    let mut text_rows = Vec::new();
                    let mut bin_rows = Vec::new();
                    let status = loop {
                        let r = self.read()?;
                        if r.first() == Some(&0xfe) && r.len() < 9 {
                            break u16::from_le_bytes([r[3], r[4]]);
                        }
                        if r.first() == Some(&0xff) {
                            a.error = Some(MyErr::parse(&r));
                            return Ok(a);
                        }
                        if binary {
                            bin_rows.push(r);
                        } else {
                            let mut at = 0;
                            let mut row = Vec::new();
                            for _ in 0..columns {
                                row.push(lenenc(&r, &mut at).map(|n| {
                                    let s = String::from_utf8_lossy(&r[at..at + n as usize])
                                        .into_owned();
                                    at += n as usize;
                                    s
                                }));
                            }
                            text_rows.push(row);
                        }
                    };
                    a.results.push(if binary {
                        Outcome::BinaryRows(bin_rows)
                    } else {
                        Outcome::Rows(text_rows)
                    });
                    if status & SERVER_MORE_RESULTS_EXISTS == 0 {
                        return Ok(a);
                    }
                }
            }
        }
        Ok(a)
    }

    /// COM_STMT_PREPARE: Ok((statement id, parameter count)) or the ERR.
    pub fn prepare(&mut self, sql: &str) -> std::io::Result<Result<(u32, u16), MyErr>> {
        let mut p = vec![0x16];
        p.extend_from_slice(sql.as_bytes());
        self.command(&p)?;
        let r = self.read()?;
        if r.first() == Some(&0xff) {
            return Ok(Err(MyErr::parse(&r)));
        }
        let id = u32::from_le_bytes([r[1], r[2], r[3], r[4]]);
        let columns = u16::from_le_bytes([r[5], r[6]]);
        let params = u16::from_le_bytes([r[7], r[8]]);
        for n in [params, columns] {
            if n > 0 {
                for _ in 0..=n {
                    self.read()?; // definitions + EOF
                }
            }
        }
        Ok(Ok((id, params)))
    }

    /// COM_STMT_EXECUTE of `id` with `params` (type, unsigned, value;
    /// None = NULL, values already in binary form). `send_types`: the
    /// new-params-bound flag (clients send the types with the first
    /// execute only).
    pub fn execute(
        &mut self,
        id: u32,
        params: &[(u8, bool, Option<Vec<u8>>)],
        send_types: bool,
    ) -> std::io::Result<Answer> {
        let mut p = vec![0x17];
        p.extend_from_slice(&id.to_le_bytes());
        p.push(0); // CURSOR_TYPE_NO_CURSOR
        p.extend_from_slice(&1u32.to_le_bytes());
        if !params.is_empty() {
            let mut nulls = vec![0u8; params.len().div_ceil(8)];
            for (i, (_, _, v)) in params.iter().enumerate() {
                if v.is_none() {
                    nulls[i / 8] |= 1 << (i % 8);
                }
            }
            p.extend_from_slice(&nulls);
            p.push(u8::from(send_types));
            if send_types {
                for (t, unsigned, _) in params {
                    p.push(*t);
                    p.push(if *unsigned { 0x80 } else { 0 });
                }
            }
            for (_, _, v) in params {
                if let Some(v) = v {
                    p.extend_from_slice(v);
                }
            }
        }
        self.command(&p)?;
        self.answer(true)
    }

    /// COM_STMT_SEND_LONG_DATA (no answer).
    pub fn send_long_data(&mut self, id: u32, param: u16, data: &[u8]) -> std::io::Result<()> {
        let mut p = vec![0x18];
        p.extend_from_slice(&id.to_le_bytes());
        p.extend_from_slice(&param.to_le_bytes());
        p.extend_from_slice(data);
        self.command(&p)
    }

    /// COM_STMT_CLOSE (no answer).
    pub fn close_statement(&mut self, id: u32) -> std::io::Result<()> {
        let mut p = vec![0x19];
        p.extend_from_slice(&id.to_le_bytes());
        self.command(&p)
    }

    /// A command `cmd` with `body`, and the one packet answering it.
    pub fn simple(&mut self, cmd: u8, body: &[u8]) -> std::io::Result<Vec<u8>> {
        let mut p = vec![cmd];
        p.extend_from_slice(body);
        self.command(&p)?;
        self.read()
    }

    /// COM_CHANGE_USER to `user` (empty auth, database `app`): the answer.
    pub fn change_user(&mut self, user: &str) -> std::io::Result<Vec<u8>> {
        let mut p = vec![0x11];
        p.extend_from_slice(user.as_bytes());
        p.push(0);
        p.push(0); // auth length
        p.extend_from_slice(b"app\0");
        p.extend_from_slice(&45u16.to_le_bytes());
        p.extend_from_slice(b"mysql_native_password\0");
        self.command(&p)?;
        self.read()
    }
}

/// A length-encoded integer at `at` (None for NULL, 0xfb).
pub fn lenenc(p: &[u8], at: &mut usize) -> Option<u64> {
    let first = p[*at];
    *at += 1;
    let len = match first {
        0xfb => return None,
        0xfc => 2,
        0xfd => 3,
        0xfe => 8,
        n => return Some(n as u64),
    };
    let mut b = [0u8; 8];
    b[..len].copy_from_slice(&p[*at..*at + len]);
    *at += len;
    Some(u64::from_le_bytes(b))
}

/// A length-encoded string.
pub fn lenenc_bytes(v: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let n = v.len();
    if n < 251 {
        out.push(n as u8);
    } else if n < 1 << 16 {
        out.push(0xfc);
        out.extend_from_slice(&(n as u16).to_le_bytes());
    } else if n < 1 << 24 {
        out.push(0xfd);
        out.extend_from_slice(&(n as u32).to_le_bytes()[..3]);
    } else {
        out.push(0xfe);
        out.extend_from_slice(&(n as u64).to_le_bytes());
    }
    out.extend_from_slice(v);
    out
}

/// The first packet `addr` sends (a greeting, or an ERR), read raw: 3-byte
/// length, sequence id, payload.
pub fn raw_greeting(addr: &str) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).expect("connect for the greeting");
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut h = [0u8; 4];
    s.read_exact(&mut h).expect("a packet header");
    let len = u32::from_le_bytes([h[0], h[1], h[2], 0]) as usize;
    assert_eq!(h[3], 0, "the greeting's sequence id");
    let mut p = vec![0u8; len];
    s.read_exact(&mut p).expect("the greeting");
    p
}

/// The tunnel door's world: a MariaDB with login `app` (password
/// `password`) owning database `app`, and a gatehouse with a WireGuard
/// device of alice (`lab`, one device) whose role allows `app` on db-my,
/// the credential stored. `tweak` may add config (e.g. `mfa_lease`).
pub fn tunnel(
    lab: super::netns::Lab,
    password: &str,
    tweak: impl FnOnce(super::GatehouseBuilder) -> super::GatehouseBuilder,
) -> (MariaDb, super::netns::WgWorld) {
    let server = MariaDb::start(MariaOptions::default());
    server.create_user(LOGIN, password);
    server.create_database(DATABASE, LOGIN);
    let w = super::netns::WgWorld::start(lab, 1, |b| {
        tweak(
            b.role("dba", &[TARGET], &[LOGIN])
                .user_roles("alice", &["web", "dba"])
                .raw(&my_target(
                    TARGET,
                    &server.address(),
                    TUNNEL_PORT,
                    &tls_ca(&server.ca_pem),
                )),
        )
    });
    store_credential(w.gw.setup(), TARGET, LOGIN, password);
    (server, w)
}
