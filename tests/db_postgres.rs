//! PostgreSQL through gatehouse's SSH door (`ssh -L PORT:db-1:5432 gw`),
//! against a real PostgreSQL 15 server (initdb in a temp dir, TLS from a CA
//! the test makes, SCRAM logins) with stock `psql` and a raw wire client for
//! what psql cannot send. The tunnel door is in `tests/db_tunnel.rs`.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::pgwire::{self, PgConn};
use common::postgres::PgServer;
use common::world::{stderr, stdout};
use common::{free_port, run_with_timeout, ChildGuard};

/// The database password of `app_ro`: it must never appear anywhere but
/// the sealed credential.
const APP_PASSWORD: &str = "Pw-app_ro-7f3c9a1e-never-shown";
const OTHER_PASSWORD: &str = "Pw-other-55d1e0b2-never-shown";

use common::pgworld::{
    export, finished_pg_recording, forward, pg_target, rec, show, start as start_with,
    store_credential, tls_ca, tools, Db,
};

fn start(
    tweak: impl FnOnce(common::GatehouseBuilder, &PgServer) -> common::GatehouseBuilder,
) -> Db {
    start_with(APP_PASSWORD, tweak)
}

#[test]
fn psql_through_ssh_forward_runs_as_the_role_login_and_every_statement_is_recorded() {
    if !tools() {
        return;
    }
    let db = start(|b, _| b);
    let out = db.psql("app_ro", "select current_user, 6*7 as answer_marker");
    assert!(
        out.status.success(),
        "psql failed: {}\n{}",
        stderr(&out),
        db.w.gw.stderr()
    );
    assert_eq!(stdout(&out).trim(), "app_ro|42");
    let start =
        db.w.gw
            .wait_for_event_named("db.session.start", Duration::from_secs(10))
            .expect("db.session.start");
    assert_eq!(start["user"], "alice");
    assert_eq!(start["login"], "app_ro");
    assert_eq!(start["target"], "db-1");
    let end =
        db.w.gw
            .wait_for_event_named("db.session.end", Duration::from_secs(10))
            .expect("db.session.end");
    assert_eq!(end["session_id"], start["session_id"]);
    let id = finished_pg_recording(&db.w);
    let text = show(&db.w, &id);
    eprintln!("{text}");
    assert!(text.contains("answer_marker"), "{text}");
    assert!(text.contains("SELECT 1"), "{text}");
    // SQL text is only in the sealed recording.
    assert!(!db.w.gw.stderr_all().contains("answer_marker"));
    // verify passes; a tampered segment fails.
    let v = rec(&db.w, &["verify", &id]);
    assert!(v.status.success(), "{}", stdout(&v));
    let seg =
        db.w.gw
            .setup()
            .state_dir()
            .join("recordings")
            .join(&id)
            .join("000001.age");
    let mut bytes = std::fs::read(&seg).expect("segment 1");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    std::fs::write(&seg, bytes).unwrap();
    let v = rec(&db.w, &["verify", &id]);
    assert!(!v.status.success(), "a tampered segment verified");
    assert!(stdout(&v).contains("000001"), "{}", stdout(&v));
}

#[test]
fn a_login_no_role_allows_is_refused_with_a_clear_message_and_audited() {
    if !tools() {
        return;
    }
    let db = start(|b, _| b);
    let authorized = |pg: &PgServer| pg.log().matches("authorized: user=postgres").count();
    let before = authorized(&db.pg);
    let out = db.psql("postgres", "select 1");
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("no role of yours allows login \"postgres\" on db-1"),
        "{}",
        stderr(&out)
    );
    let ev =
        db.w.gw
            .wait_for_event_named("db.session.refused", Duration::from_secs(10))
            .expect("db.session.refused");
    assert_eq!(ev["login"], "postgres");
    assert!(db.w.gw.events("db.session.start").is_empty());
    // Nothing reached the server as postgres through the gateway.
    assert_eq!(authorized(&db.pg), before, "{}", db.pg.log());
}

#[test]
fn replication_and_options_are_refused_unless_allowed() {
    if !tools() {
        return;
    }
    let db = start(|b, _| b);
    let out = run_with_timeout(
        &mut db.psql_cmd("app_ro", "replication=database", "IDENTIFY_SYSTEM"),
        Duration::from_secs(60),
    )
    .unwrap();
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("replication connections are not allowed"),
        "{}",
        stderr(&out)
    );
    let out = run_with_timeout(
        &mut db.psql_cmd("app_ro", "options='-c work_mem=1MB'", "show work_mem"),
        Duration::from_secs(60),
    )
    .unwrap();
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("options parameter"),
        "{}",
        stderr(&out)
    );
    // Any other startup parameter is a server setting like options.
    let mut s = PgConn::connect(&db.addr()).unwrap();
    let got = s.login(
        &[
            ("user", "app_ro"),
            ("database", "app"),
            ("search_path", "evil"),
        ],
        None,
    );
    let last = got.last().expect("an answer");
    assert_eq!(last.tag, b'E');
    assert!(
        last.field(b'M')
            .unwrap_or_default()
            .contains("startup parameter \"search_path\" is not allowed"),
        "{:?}",
        last.field(b'M')
    );
    let refused = db.w.gw.events("db.session.refused");
    assert!(
        refused.iter().any(|e| e["reason"] == "replication refused")
            && refused.iter().any(|e| e["reason"] == "options refused"),
        "{refused:?}"
    );
}

#[test]
fn options_pass_when_the_role_allows_them() {
    if !tools() {
        return;
    }
    let db = start(|b, _| b.role_line("dba", "allow_options = true"));
    let out = run_with_timeout(
        &mut db.psql_cmd("app_ro", "options='-c work_mem=1234kB'", "show work_mem"),
        Duration::from_secs(60),
    )
    .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), "1234kB");
}

#[test]
fn an_upstream_certificate_from_another_ca_is_refused() {
    if !tools() {
        return;
    }
    let db = start(|b, pg| {
        b.raw(&pg_target(
            "db-2",
            &pg.address(),
            free_port(),
            &tls_ca(&pg.wrong_ca_pem),
        ))
    });
    store_credential(db.w.gw.setup(), "db-2", "app_ro", APP_PASSWORD);
    let lport = free_port();
    let _fwd = forward(&db.w, lport, "db-2", 5432);
    let mut c = Command::new("psql");
    c.arg(format!(
        "host=127.0.0.1 port={lport} user=app_ro dbname=app connect_timeout=20"
    ))
    .args(["-X", "-A", "-t", "-c", "select 1"])
    .stdin(Stdio::null());
    let out = run_with_timeout(&mut c, Duration::from_secs(60)).unwrap();
    assert!(!out.status.success());
    assert!(
        stderr(&out).to_lowercase().contains("certificate"),
        "{}",
        stderr(&out)
    );
    let ev =
        db.w.gw
            .wait_for_event(
                |e| e["event"] == "db.session.refused" && e["target"] == "db-2",
                Duration::from_secs(10),
            )
            .expect("refusal audited");
    assert!(ev["reason"].as_str().unwrap().contains("upstream"), "{ev}");
    // The password was never sent: no login attempt reached the server.
    assert!(!db.pg.log().contains("password authentication failed"));
}

#[test]
fn ctrl_c_and_pg_cancel_backend_cancel_a_running_query() {
    if !tools() {
        return;
    }
    let db = start(|b, _| b);
    // psql's Ctrl-C: SIGINT makes psql send a CancelRequest with the key
    // gatehouse gave it.
    let mut cmd = db.psql_cmd("app_ro", "", "select pg_sleep(60)");
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut g = ChildGuard::spawn(&mut cmd);
    assert!(db
        .w
        .gw
        .wait_for_event_named("db.session.start", Duration::from_secs(20))
        .is_some());
    std::thread::sleep(Duration::from_millis(800));
    let pid = g.child().id() as i64;
    let t0 = Instant::now();
    assert!(common::send_signal(&[pid], "INT"));
    let out = loop {
        if let Some(_st) = g.child().try_wait().unwrap() {
            let mut e = String::new();
            use std::io::Read;
            g.child()
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut e)
                .unwrap();
            break e;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "psql was not cancelled"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        out.contains("canceling statement due to user request"),
        "{out}"
    );
    let c =
        db.w.gw
            .wait_for_event(
                |e| e["event"] == "db.cancel" && e["outcome"] == "forwarded",
                Duration::from_secs(10),
            )
            .expect("cancel forwarded and audited");
    assert_eq!(c["user"], "alice");

    // pg_cancel_backend from a second session (the server's own pids).
    let mut cmd = db.psql_cmd("app_ro", "", "select pg_sleep(60)");
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut sleeper = ChildGuard::spawn(&mut cmd);
    std::thread::sleep(Duration::from_secs(2));
    let out = db.psql(
        "app_ro",
        "select count(*) from (select pg_cancel_backend(pid) from pg_stat_activity \
         where query = 'select pg_sleep(60)' and pid <> pg_backend_pid()) s",
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), "1");
    let t0 = Instant::now();
    while sleeper.child().try_wait().unwrap().is_none() {
        assert!(
            t0.elapsed() < Duration::from_secs(15),
            "pg_cancel_backend did not cancel"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_cancel_with_a_wrong_key_is_ignored_and_audited() {
    if !tools() {
        return;
    }
    let db = start(|b, _| b);
    let mut s = PgConn::connect(&db.addr()).unwrap();
    let hello = s.login(&[("user", "app_ro"), ("database", "app")], None);
    assert_eq!(hello.last().map(|m| m.tag), Some(b'Z'), "login failed");
    let (pid, secret) = s.key.expect("a cancel key");
    s.send(&pgwire::query("select pg_sleep(2), 'slept'"))
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    // A wrong secret, and the server's own pid style guess: both ignored.
    for k in [(pid, secret.wrapping_add(1)), (1, 1)] {
        let mut c = std::net::TcpStream::connect(db.addr()).unwrap();
        c.write_all(&pgwire::cancel_request(k.0, k.1)).unwrap();
        drop(c);
    }
    let got = s.until_ready().unwrap();
    assert!(
        got.iter().any(|m| m.tag == b'C'),
        "the query was cancelled by a foreign key: {:?}",
        got.iter().map(|m| m.field(b'M')).collect::<Vec<_>>()
    );
    assert!(db
        .w
        .gw
        .wait_for_event(
            |e| e["event"] == "db.cancel.ignored"
                && e["outcome"]
                    .as_str()
                    .unwrap_or_default()
                    .contains("no live session"),
            Duration::from_secs(10),
        )
        .is_some());
    // The right key works on the same path.
    s.send(&pgwire::query("select pg_sleep(30)")).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let mut c = std::net::TcpStream::connect(db.addr()).unwrap();
    c.write_all(&pgwire::cancel_request(pid, secret)).unwrap();
    drop(c);
    let got = s.until_ready().unwrap();
    assert!(
        got.iter()
            .any(|m| m.tag == b'E' && m.field(b'C').as_deref() == Some("57014")),
        "not cancelled"
    );
}

#[test]
fn extended_protocol_binary_parameters_are_recorded_exactly() {
    if !tools() {
        return;
    }
    let db = start(|b, _| b);
    let mut s = PgConn::connect(&db.addr()).unwrap();
    let hello = s.login(&[("user", "app_ro"), ("database", "app")], None);
    assert_eq!(hello.last().map(|m| m.tag), Some(b'Z'));
    let blob: Vec<u8> = (0u8..=255).chain([0x1b, b'[', b'2', b'J']).collect();
    let mut batch = Vec::new();
    batch.extend(pgwire::parse(
        "s1",
        "select length($1::bytea), $2::int4 + 1, $3::text",
        &[17, 23, 25],
    ));
    batch.extend(pgwire::bind(
        "",
        "s1",
        &[(1, Some(&blob)), (1, Some(&41i32.to_be_bytes())), (0, None)],
    ));
    batch.extend(pgwire::execute(""));
    // Pipelined: a second execution before the one Sync.
    batch.extend(pgwire::bind(
        "",
        "s1",
        &[
            (1, Some(b"xy")),
            (1, Some(&1i32.to_be_bytes())),
            (0, Some(b"t\xc3\xa9xt")),
        ],
    ));
    batch.extend(pgwire::execute(""));
    batch.extend(pgwire::sync());
    s.send(&batch).unwrap();
    let got = s.until_ready().unwrap();
    let rows: Vec<&pgwire::Msg> = got.iter().filter(|m| m.tag == b'D').collect();
    assert_eq!(rows.len(), 2, "both executions answered");
    // The fast-path FunctionCall (int4pl, OID 177) is recorded too.
    let mut f = 177i32.to_be_bytes().to_vec();
    f.extend_from_slice(&1i16.to_be_bytes());
    f.extend_from_slice(&1i16.to_be_bytes());
    f.extend_from_slice(&2i16.to_be_bytes());
    for v in [40i32, 2] {
        f.extend_from_slice(&4i32.to_be_bytes());
        f.extend_from_slice(&v.to_be_bytes());
    }
    f.extend_from_slice(&1i16.to_be_bytes());
    s.send(&pgwire::msg(b'F', &f)).unwrap();
    let got = s.until_ready().unwrap();
    let v = got
        .iter()
        .find(|m| m.tag == b'V')
        .expect("FunctionCallResponse");
    assert_eq!(&v.body[4..8], &42i32.to_be_bytes());
    s.send(&pgwire::msg(b'X', &[])).unwrap();
    drop(s);
    let id = finished_pg_recording(&db.w);
    let text = export(&db.w, &id);
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(&blob);
    assert!(
        text.contains(&b64),
        "binary parameter not recorded exactly:\n{text}"
    );
    let b64_41 = base64::engine::general_purpose::STANDARD.encode(41i32.to_be_bytes());
    assert!(text.contains(&b64_41), "{text}");
    assert!(text.contains("select length($1::bytea)"), "{text}");
    assert!(
        text.contains("oid 177"),
        "the function call was not recorded: {text}"
    );
    let b64_40 = base64::engine::general_purpose::STANDARD.encode(40i32.to_be_bytes());
    assert!(text.contains(&b64_40), "{text}");
    // The auditor's screen is safe from the recorded escape sequence.
    let shown = show(&db.w, &id);
    assert!(!shown.contains('\u{1b}'), "raw ESC reached the transcript");
}

#[test]
fn copy_in_and_out_of_100_mib_keeps_every_byte_with_bounded_memory() {
    if !tools() {
        return;
    }
    let db = start(|b, _| b);
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("in.txt");
    {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&src).unwrap());
        let line = "x".repeat(1000);
        for i in 0..104_858u32 {
            writeln!(f, "{i}\t{line}").unwrap();
        }
    }
    let size_in = std::fs::metadata(&src).unwrap().len();
    assert!(size_in >= 100 << 20);
    let rss0 = db.w.gw.rss_kib();
    let out = db.psql(
        "app_ro",
        &format!("\\copy t (id, body) from '{}'", src.display()),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let dst = dir.path().join("out.txt");
    let out = db.psql(
        "app_ro",
        &format!(
            "\\copy (select id, body from t order by id) to '{}'",
            dst.display()
        ),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let rss1 = db.w.gw.rss_kib();
    let a = std::fs::read(&src).unwrap();
    let b = std::fs::read(&dst).unwrap();
    assert!(
        a == b,
        "COPY out differs from COPY in ({} vs {} bytes)",
        a.len(),
        b.len()
    );
    eprintln!("gatehouse RSS {rss0} KiB -> {rss1} KiB over 2 x {size_in} bytes of COPY");
    assert!(
        rss1 < rss0 + 64 * 1024,
        "RSS grew by {} KiB over a 100 MiB COPY",
        rss1 - rss0
    );
    let id = finished_pg_recording(&db.w);
    let shown = show(&db.w, &id);
    assert!(shown.to_lowercase().contains("copy"), "{shown}");
}

#[test]
fn thousands_of_pipelined_statements_whose_answers_are_never_read_keep_memory_bounded() {
    if !tools() {
        return;
    }
    let db = start(|b, _| b);
    let rss0 = db.w.gw.rss_kib();
    let mut s = PgConn::connect(&db.addr()).unwrap();
    let hello = s.login(&[("user", "app_ro"), ("database", "app")], None);
    assert_eq!(hello.last().map(|m| m.tag), Some(b'Z'));
    s.s.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
    let one = [
        pgwire::parse("", "select repeat('y', 4000)", &[]),
        pgwire::bind("", "", &[]),
        pgwire::execute(""),
    ]
    .concat();
    // Never read: the writes stall once every buffer is full.
    let mut sent = 0;
    for _ in 0..50_000 {
        if s.send(&one).is_err() {
            break;
        }
        sent += 1;
    }
    let rss1 = db.w.gw.rss_kib();
    eprintln!("sent {sent} statements unread; RSS {rss0} -> {rss1} KiB");
    assert!(rss1 < rss0 + 96 * 1024, "RSS grew by {} KiB", rss1 - rss0);
    drop(s);
    // The gateway still serves others.
    let out = db.psql("app_ro", "select 'still-serving'");
    assert!(stdout(&out).contains("still-serving"), "{}", stderr(&out));
}

#[test]
fn max_session_ends_a_database_session_with_a_fatal() {
    if !tools() {
        return;
    }
    let db = start(|b, _| b.role_line("dba", "max_session = \"3s\""));
    let t0 = Instant::now();
    let out = db.psql("app_ro", "select pg_sleep(30)");
    let took = t0.elapsed();
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("FATAL") && stderr(&out).contains("max_session"),
        "{}",
        stderr(&out)
    );
    assert!(took < Duration::from_secs(15), "took {took:?}");
    let end =
        db.w.gw
            .wait_for_event_named("db.session.end", Duration::from_secs(10))
            .unwrap();
    assert_eq!(end["reason"], "max_session reached");
}

#[test]
fn hostile_startups_close_that_connection_only() {
    if !tools() {
        return;
    }
    let db = start(|b, _| b);
    // Garbage, an oversized startup, SSLRequest three times, a password
    // message before any startup: each closes only its own connection.
    let attempts: Vec<Vec<u8>> = vec![
        b"GET / HTTP/1.1\r\n\r\n".to_vec(),
        [&100_000u32.to_be_bytes()[..], &196_608u32.to_be_bytes()].concat(),
        [
            &8u32.to_be_bytes()[..],
            &80_877_103u32.to_be_bytes(),
            &8u32.to_be_bytes(),
            &80_877_103u32.to_be_bytes(),
            &8u32.to_be_bytes(),
            &80_877_103u32.to_be_bytes(),
        ]
        .concat(),
        pgwire::msg(b'p', b"123456\0"),
    ];
    for a in attempts {
        let mut c = std::net::TcpStream::connect(db.addr()).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let _ = c.write_all(&a);
        let mut buf = Vec::new();
        use std::io::Read;
        let _ = c.read_to_end(&mut buf);
        assert!(buf.len() < 4096);
    }
    let out = db.psql("app_ro", "select 'alive'");
    assert!(stdout(&out).contains("alive"), "{}", stderr(&out));
    assert!(db.w.gw.events("db.session.start").len() == 1);
}

#[test]
fn the_database_password_is_never_in_a_log_or_recording() {
    if !tools() {
        return;
    }
    let db = start(|b, _| b);
    // A wrong stored password too: the server's refusal must not carry it.
    db.pg.create_role("other", OTHER_PASSWORD);
    let out = db.psql("app_ro", "select 'password-check'");
    assert!(out.status.success(), "{}", stderr(&out));
    let id = finished_pg_recording(&db.w);
    let text = export(&db.w, &id) + &show(&db.w, &id);
    let logs = db.w.gw.stderr_all();
    for secret in [APP_PASSWORD] {
        assert!(!text.contains(secret), "password in the recording");
        assert!(!logs.contains(secret), "password in gatehouse's log");
        assert!(
            !db.pg.log().contains(secret),
            "password in the server's log"
        );
        // Nothing in the state directory holds it in the clear.
        for entry in walk(&db.w.gw.setup().state_dir()) {
            let bytes = std::fs::read(&entry).unwrap_or_default();
            assert!(
                !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "password in the clear in {}",
                entry.display()
            );
        }
    }
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else if p.is_file() {
                out.push(p);
            }
        }
    }
    out
}

#[test]
fn pgbench_runs_through_the_ssh_forward() {
    if !tools() {
        return;
    }
    let db = start(|b, _| b);
    let bench = |args: &[&str]| {
        let mut c = Command::new(common::postgres::pg_bindir().unwrap().join("pgbench"));
        c.args(args)
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &db.lport.to_string(),
                "-U",
                "app_ro",
                "app",
            ])
            .env_remove("PGPASSWORD")
            .stdin(Stdio::null());
        run_with_timeout(&mut c, Duration::from_secs(120)).unwrap()
    };
    let out = bench(&["-i", "-s", "1", "-q"]);
    assert!(out.status.success(), "pgbench -i: {}", stderr(&out));
    let out = bench(&["-c", "4", "-T", "3", "-n"]);
    assert!(out.status.success(), "pgbench: {}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("tps = "), "{text}");
    // Every pgbench connection was a recorded session.
    let starts = db.w.gw.events("db.session.start").len();
    assert!(starts >= 5, "{starts} sessions");
}

#[test]
fn the_targets_list_shows_database_targets_with_how_to_reach_them() {
    if !tools() {
        return;
    }
    let db = start(|b, _| b);
    let out = db.w.client.run(&["gw", "targets"]);
    let text = stdout(&out);
    assert!(
        text.contains("db-1") && text.contains("(PostgreSQL)"),
        "{text}"
    );
    assert!(text.contains("ssh -N -L 15432:TARGET:5432"), "{text}");
}

#[test]
fn idle_timeout_ends_an_idle_database_session_with_a_fatal() {
    if !tools() {
        return;
    }
    let db = start(|b, _| b.role_line("dba", "idle_timeout = \"2s\""));
    let mut s = PgConn::connect(&db.addr()).unwrap();
    let hello = s.login(&[("user", "app_ro"), ("database", "app")], None);
    assert_eq!(hello.last().map(|m| m.tag), Some(b'Z'));
    let t0 = Instant::now();
    let m = s.recv().expect("a FATAL before the connection closes");
    assert_eq!(m.tag, b'E');
    assert_eq!(m.field(b'C').as_deref(), Some("57P05"));
    assert!(m.field(b'M').unwrap_or_default().contains("idle"));
    assert!(t0.elapsed() < Duration::from_secs(6), "{:?}", t0.elapsed());
}

#[test]
fn max_session_ends_a_session_whose_client_stops_reading() {
    if !tools() {
        return;
    }
    let db = start(|b, _| b.role_line("dba", "max_session = \"3s\""));
    let mut s = PgConn::connect(&db.addr()).unwrap();
    let hello = s.login(&[("user", "app_ro"), ("database", "app")], None);
    assert_eq!(hello.last().map(|m| m.tag), Some(b'Z'));
    let t0 = Instant::now();
    // Far more output than any buffer holds, never read.
    s.send(&pgwire::query(
        "select repeat('x', 100000) from generate_series(1, 100000)",
    ))
    .unwrap();
    let end =
        db.w.gw
            .wait_for_event_named("db.session.end", Duration::from_secs(15))
            .expect("the session ended although its client does not read");
    assert_eq!(end["reason"], "max_session reached");
    assert!(t0.elapsed() < Duration::from_secs(8), "{:?}", t0.elapsed());
}
