//! Attacks on the MySQL proxy: what a hostile or unlucky client (or a
//! hostile server) sends, and what must still hold. The worlds are
//! `tests/common/myworld.rs`'s (a real MariaDB behind gatehouse, reached by
//! alice's `ssh -L`), or a fake server on loopback for what a real one
//! never sends.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

use common::myworld::{self, MyConn, MyDb, Outcome, LOGIN};
use common::world::World;

const APP_PASSWORD: &str = "Pw-my-attack-91c4e2d5-never-shown";

fn start(
    tweak: impl FnOnce(common::GatehouseBuilder, &common::mariadb::MariaDb) -> common::GatehouseBuilder,
) -> MyDb {
    myworld::start(APP_PASSWORD, tweak)
}

/// The server's own thread id of a connection through gatehouse.
fn server_thread(c: &mut MyConn) -> String {
    let a = c.query("SELECT CONNECTION_ID()").unwrap();
    match a.results.first() {
        Some(Outcome::Rows(r)) => r[0][0].clone().unwrap(),
        other => panic!("{other:?} {:?}", a.error),
    }
}

/// Whether `c` still answers a query.
fn alive(c: &mut MyConn) -> bool {
    match c.query("SELECT 'alive'") {
        Ok(a) => matches!(a.results.first(), Some(Outcome::Rows(_))),
        Err(_) => false,
    }
}

/// A `KILL` naming the server's own thread id (which `CONNECTION_ID()`
/// tells anyone) never reaches the server, however it is dressed: inside
/// MariaDB's compound statements, as dynamic SQL, or behind a GBK character
/// whose second byte is a backtick or a backslash (a single-byte reading
/// sees a quote there and the KILL inside it), or after a latin1 0xA0 (a
/// space to the server, a letter to gatehouse), or after a quote inside a
/// versioned executable comment the server skips, or inside `[...]` under
/// `sql_mode=MSSQL`. Each was run by the server
/// before the fix (the victim's connection died); now each is refused by
/// gatehouse, the victim lives, and the refusal is audited.
#[test]
fn a_kill_hidden_in_a_compound_statement_dynamic_sql_or_a_gbk_character_never_reaches_the_server() {
    if !myworld::tools() {
        return;
    }
    let db = start(|b, _| b);
    type Make = fn(&str) -> Vec<u8>;
    let attempts: Vec<(&str, Make, u16)> = vec![
        (
            "compound",
            |t| format!("BEGIN NOT ATOMIC KILL {t}; END").into_bytes(),
            1094,
        ),
        (
            "if",
            |t| format!("IF 1 THEN KILL QUERY {t}; END IF").into_bytes(),
            1094,
        ),
        (
            "execute immediate",
            |t| format!("EXECUTE IMMEDIATE 'KILL {t}'").into_bytes(),
            1094,
        ),
        (
            "prepare from",
            |t| format!("PREPARE s FROM 'KILL {t}'; EXECUTE s").into_bytes(),
            1094,
        ),
        (
            "execute immediate concat",
            |t| format!("EXECUTE IMMEDIATE CONCAT('KI', 'LL {t}')").into_bytes(),
            1227,
        ),
        (
            "gbk backtick",
            |t| {
                [
                    &b"SELECT 1 AS a\x81\x60; KILL "[..],
                    t.as_bytes(),
                    b"; -- \x60",
                ]
                .concat()
            },
            1094,
        ),
        (
            "gbk backslash",
            |t| {
                [
                    &b"SELECT 'a\\'b\x81\x5c'; KILL "[..],
                    t.as_bytes(),
                    b"; -- '",
                ]
                .concat()
            },
            1094,
        ),
    ];
    let mut attacker = db.login();
    let a = attacker.query("SET NAMES gbk").unwrap();
    assert!(a.error.is_none(), "{a:?}");
    for (name, make, code) in &attempts {
        let mut victim = db.login();
        let tid = server_thread(&mut victim);
        let mut p = vec![0x03];
        p.extend_from_slice(&make(&tid));
        attacker.command(&p).unwrap();
        let a = attacker.answer(false).unwrap();
        let e = a
            .error
            .unwrap_or_else(|| panic!("{name}: the server ran it: {:?}", a.results));
        assert_eq!(e.code, *code, "{name}: {e:?}");
        assert!(
            alive(&mut victim),
            "{name}: the victim's session was killed"
        );
        assert!(alive(&mut attacker), "{name}: the attacker's session ended");
    }
    // A versioned executable comment the server skips (its version is
    // above the server's): the quote inside it quotes nothing.
    for v in ["/*M!999999", "/*!99999", "/*!99999 /* */"] {
        let mut victim = db.login();
        let tid = server_thread(&mut victim);
        let a = attacker
            .query(&format!("SELECT 1 {v} ' */; KILL {tid}; -- '"))
            .unwrap();
        assert_eq!(a.error.as_ref().map(|e| e.code), Some(1094), "{v}: {a:?}");
        assert!(alive(&mut victim), "{v}: the victim's session was killed");
    }
    // sql_mode=MSSQL quotes identifiers in brackets.
    let a = attacker.query("SET sql_mode = 'MSSQL'").unwrap();
    assert!(a.error.is_none(), "{a:?}");
    let mut victim = db.login();
    let tid = server_thread(&mut victim);
    let a = attacker
        .query(&format!("SELECT 1 AS [']; KILL {tid}; -- ']"))
        .unwrap();
    assert_eq!(a.error.as_ref().map(|e| e.code), Some(1094), "mssql: {a:?}");
    assert!(alive(&mut victim), "mssql: the victim's session was killed");
    let a = attacker.query("SET sql_mode = DEFAULT").unwrap();
    assert!(a.error.is_none(), "{a:?}");
    // latin1 (and cp1250) read 0xA0 as a space, gatehouse as a letter.
    let a = attacker.query("SET NAMES latin1").unwrap();
    assert!(a.error.is_none(), "{a:?}");
    let mut victim = db.login();
    let tid = server_thread(&mut victim);
    let mut p = b"\x03SELECT 1;\xA0KILL ".to_vec();
    p.extend_from_slice(tid.as_bytes());
    attacker.command(&p).unwrap();
    let a = attacker.answer(false).unwrap();
    assert_eq!(
        a.error.as_ref().map(|e| e.code),
        Some(1094),
        "latin1 nbsp: {a:?}"
    );
    assert!(
        alive(&mut victim),
        "latin1 nbsp: the victim's session was killed"
    );
    // The server's status says whether backslashes escape: a statement
    // with an escaped quote before the word kill is data, and runs...
    let a = attacker
        .query("INSERT INTO t (id, body) VALUES (77, 'don\\'t kill me')")
        .unwrap();
    assert!(a.error.is_none(), "{a:?}");
    assert_eq!(
        db.db.sql("SELECT body FROM app.t WHERE id = 77"),
        "don't kill me"
    );
    // ...and with NO_BACKSLASH_ESCAPES the same quote no longer hides one.
    let a = attacker
        .query("SET sql_mode = 'NO_BACKSLASH_ESCAPES'")
        .unwrap();
    assert!(a.error.is_none(), "{a:?}");
    let mut victim = db.login();
    let tid = server_thread(&mut victim);
    let a = attacker
        .query(&format!("SELECT 'a\\'; KILL {tid}; -- '"))
        .unwrap();
    assert_eq!(a.error.as_ref().map(|e| e.code), Some(1094), "nbe: {a:?}");
    assert!(alive(&mut victim), "nbe: the victim's session was killed");
    let a = attacker.query("SET sql_mode = DEFAULT").unwrap();
    assert!(a.error.is_none(), "{a:?}");
    // Dynamic SQL with a literal text still runs.
    let a = attacker
        .query("PREPARE s FROM 'SELECT ?'; EXECUTE s USING 'dyn_ok'")
        .unwrap();
    assert!(a.error.is_none(), "{a:?}");
    assert!(
        matches!(a.results.last(), Some(Outcome::Rows(r)) if r[0][0].as_deref() == Some("dyn_ok")),
        "{a:?}"
    );
    let refused = db.w.gw.events("db.command.refused").len() + db.w.gw.events("db.cancel").len();
    assert!(refused >= attempts.len(), "{refused} refusals audited");
}

// ---------------------------------------------------------------------
// A hostile server.

fn read_packet(s: &mut TcpStream) -> std::io::Result<(u8, Vec<u8>)> {
    let mut h = [0u8; 4];
    s.read_exact(&mut h)?;
    let len = u32::from_le_bytes([h[0], h[1], h[2], 0]) as usize;
    let mut p = vec![0u8; len];
    s.read_exact(&mut p)?;
    Ok((h[3], p))
}

fn packet(seq: u8, p: &[u8]) -> Vec<u8> {
    let mut out = (p.len() as u32).to_le_bytes()[..3].to_vec();
    out.push(seq);
    out.extend_from_slice(p);
    out
}

/// A MariaDB-like greeting (mysql_native_password, no TLS) that offers
/// LOCAL INFILE.
fn fake_greeting() -> Vec<u8> {
    let caps: u32 = 0x8 | 0x80 | 0x200 | 0x2000 | 0x8000 | 1 << 16 | 1 << 17 | 1 << 18 | 1 << 19;
    let mut p = vec![10];
    p.extend_from_slice(b"10.11.99-MariaDB-hostile\0");
    p.extend_from_slice(&9u32.to_le_bytes());
    p.extend_from_slice(b"abcdefgh\0");
    p.extend_from_slice(&(caps as u16).to_le_bytes());
    p.push(45);
    p.extend_from_slice(&2u16.to_le_bytes());
    p.extend_from_slice(&((caps >> 16) as u16).to_le_bytes());
    p.push(21);
    p.extend_from_slice(&[0; 10]);
    p.extend_from_slice(b"ijklmnopqrst\0");
    p.extend_from_slice(b"mysql_native_password\0");
    p
}

/// One connection of the hostile server: any login is OK; a query with
/// `infile` is answered by a LOCAL INFILE request for /etc/passwd (after
/// an OK announcing more results when it also has `second`); anything
/// else by OK.
fn hostile_session(mut s: TcpStream) {
    s.set_read_timeout(Some(Duration::from_secs(30))).ok();
    if s.write_all(&packet(0, &fake_greeting())).is_err() || read_packet(&mut s).is_err() {
        return;
    }
    let ok = |status: u16| {
        let mut p = vec![0, 0, 0];
        p.extend_from_slice(&status.to_le_bytes());
        p.extend_from_slice(&[0, 0]);
        p
    };
    if s.write_all(&packet(2, &ok(2))).is_err() {
        return;
    }
    while let Ok((_, p)) = read_packet(&mut s) {
        match p.first() {
            Some(0x01) | None => return,
            Some(0x03) => {
                let text = String::from_utf8_lossy(&p[1..]).into_owned();
                let mut out = Vec::new();
                let mut seq = 1;
                if text.contains("infile") {
                    if text.contains("second") {
                        out.extend(packet(seq, &ok(2 | 0x0008)));
                        seq += 1;
                    }
                    out.extend(packet(seq, b"\xFB/etc/passwd"));
                } else {
                    out.extend(packet(seq, &ok(2)));
                }
                let _ = s.write_all(&out);
            }
            Some(_) => {
                let _ = s.write_all(&packet(1, &ok(2)));
            }
        }
    }
}

/// A server that asks the client for a file (a LOCAL INFILE request, 0xFB,
/// first or after a first result): the client never sees the request, and
/// the session ends. Before the fix the relay passed the request on and
/// only then ended the session: a client with local-infile on would send
/// the file.
#[test]
fn a_local_infile_request_from_a_hostile_server_never_reaches_the_client() {
    if !myworld::tools() {
        return;
    }
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for s in listener.incoming().take(20).flatten() {
            std::thread::spawn(move || hostile_session(s));
        }
    });
    let w = World::with_roles(&["web", "dba"], |b| {
        b.role("dba", &["db-evil"], &[LOGIN])
            .raw(&myworld::my_target(
                "db-evil",
                &addr,
                13307,
                "tls = \"disable\"",
            ))
    });
    common::pgworld::store_credential(w.gw.setup(), "db-evil", LOGIN, APP_PASSWORD);
    let lport = common::free_port();
    let _fwd = myworld::forward(&w.client, lport, "db-evil", 3306);
    for (i, sql) in ["SELECT 'infile'", "SELECT 1; SELECT 'infile second'"]
        .iter()
        .enumerate()
    {
        let mut c = MyConn::connect(&format!("127.0.0.1:{lport}")).unwrap();
        c.login(LOGIN, None, b"x").expect("login through gatehouse");
        assert!(c.query("SELECT 'fine'").unwrap().error.is_none());
        let mut q = vec![0x03];
        q.extend_from_slice(sql.as_bytes());
        c.command(&q).unwrap();
        // Everything the client gets until the session ends.
        let mut got = Vec::new();
        c.s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let _ = c.s.read_to_end(&mut got);
        assert!(
            !got.windows(12).any(|w| w == b"\xFB/etc/passwd"),
            "{sql}: the client was asked for a file: {got:?}"
        );
        common::wait_until(Duration::from_secs(10), || {
            w.gw.events("db.session.end").len() > i
        });
        let ends = w.gw.events("db.session.end");
        assert!(
            ends.get(i)
                .is_some_and(|e| e["reason"].as_str().unwrap_or("").contains("local file")),
            "{ends:?}"
        );
    }
}

fn sha2_in_tunnel(w: &common::netns::WgWorld, password: &str) -> String {
    const SCRIPT: &str = r#"
import sys
import mysql.connector
try:
    c = mysql.connector.connect(host=sys.argv[1], port=int(sys.argv[2]), user="app",
        password=sys.argv[3], database="app", use_pure=True, ssl_disabled=True,
        auth_plugin="caching_sha2_password", connection_timeout=20)
    cur = c.cursor()
    cur.execute("SELECT 'sha2_ok'")
    print(cur.fetchall()[0][0])
except Exception as e:
    print("ERR", e)
"#;
    let mut c = std::process::Command::new("python3");
    c.args([
        "-c",
        SCRIPT,
        common::netns::TUNNEL_GATEWAY,
        &myworld::TUNNEL_PORT.to_string(),
        password,
    ]);
    let mut c = common::netns::in_ns(w.lab.client(0), &c);
    c.stdin(std::process::Stdio::null());
    let out = common::run_with_timeout(&mut c, Duration::from_secs(60)).expect("python finished");
    common::world::stdout(&out).trim().to_string() + &common::world::stderr(&out)
}

/// Inside the tunnel, mysql-connector-python logging in with
/// `caching_sha2_password` (a 32-byte SHA-256 scramble of the code, the
/// fast path): the current code admits, a wrong one and the same code
/// again are refused with 1045, and gatehouse never asks for the password
/// in the clear (connector would fail with "requires SSL" if it did).
#[test]
fn in_the_tunnel_a_code_through_caching_sha2s_fast_path_admits_once_and_a_wrong_one_never() {
    let Some(lab) = common::netns::enter(
        "in_the_tunnel_a_code_through_caching_sha2s_fast_path_admits_once_and_a_wrong_one_never",
        1,
    ) else {
        return;
    };
    if !myworld::tools() {
        return;
    }
    let (_server, w) = myworld::tunnel(lab, APP_PASSWORD, |b| b.auth_line("mfa_lease = \"0s\""));
    let _device = w.connect(0);
    let code = common::totp(&w.secret);
    let wrong = if code == "000000" { "111111" } else { "000000" };
    let out = sha2_in_tunnel(&w, wrong);
    assert!(out.starts_with("ERR 1045"), "a wrong code: {out}");
    assert!(w.gw.events("db.session.start").is_empty());
    let out = sha2_in_tunnel(&w, &code);
    assert_eq!(out, "sha2_ok", "{}", w.gw.stderr());
    let out = sha2_in_tunnel(&w, &code);
    assert!(
        out.starts_with("ERR 1045") && out.contains("already used"),
        "the same code again: {out}"
    );
    let starts = w.gw.events("db.session.start");
    assert_eq!(starts.len(), 1, "{starts:?}");
    assert_eq!(starts[0]["admitted_by"], "code");
    assert!(!w.gw.stderr_all().contains(&format!("\"{code}\"")));
}

/// A client that sends the header of a 1 MiB command and a few bytes of
/// it, then nothing: that is idleness, and `idle_timeout` ends the session
/// (giving back the share of the gateway-wide budget for large statements
/// the command took). Before the fix only the wait for a command's header
/// was timed, so such a client held its share until `max_session`.
#[test]
fn a_client_stalling_in_the_middle_of_a_large_command_is_idle() {
    if !myworld::tools() {
        return;
    }
    let db = start(|b, _| b.role_line("dba", "idle_timeout = \"2s\""));
    let mut c = db.login();
    let len: u32 = 1 << 20;
    let mut head = len.to_le_bytes()[..3].to_vec();
    head.push(0);
    head.extend_from_slice(b"\x03SELECT '");
    c.s.write_all(&head).unwrap();
    let t0 = std::time::Instant::now();
    let end =
        db.w.gw
            .wait_for_event_named("db.session.end", Duration::from_secs(10));
    let took = t0.elapsed();
    let end = end.unwrap_or_else(|| panic!("the stalled session did not end in 10 s"));
    assert!(
        end["reason"]
            .as_str()
            .unwrap_or("")
            .starts_with("idle_timeout reached"),
        "{end}"
    );
    assert!(took < Duration::from_secs(6), "{took:?}");
    // Nothing of it ran.
    assert_eq!(end["statements"], 0, "{end}");
}
