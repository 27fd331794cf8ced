//! MySQL/MariaDB through gatehouse's SSH door (`ssh -L PORT:db-my:3306
//! gw`), against a real MariaDB 10.11 (mariadb-install-db in a temp dir,
//! TLS from a CA the test makes), with the stock `mariadb` client,
//! mysql-connector-python (server-side prepared statements) and a raw
//! wire client for what neither sends. The world is
//! `tests/common/myworld.rs`.

mod common;

use std::io::Write;
use std::process::Stdio;
use std::time::{Duration, Instant};

use base64::Engine;
use common::myworld::{
    self, caps, events, finished_my_recording, finished_my_recordings, lenenc_bytes, raw_greeting,
    show, ty, verify, Greeting, MyConn, MyDb, Outcome, LOGIN,
};
use common::world::{stderr, stdout};
use common::{run_with_timeout, ChildGuard};
use serde_json::Value;

/// The database password of `app`: it must never appear anywhere but the
/// sealed credential.
const APP_PASSWORD: &str = "Pw-my-app-5e2d91c4-never-shown";

fn start(
    tweak: impl FnOnce(common::GatehouseBuilder, &common::mariadb::MariaDb) -> common::GatehouseBuilder,
) -> MyDb {
    myworld::start(APP_PASSWORD, tweak)
}

/// Events of one `type` (statement, bind, result, refused, cancel...).
fn of_type<'a>(evs: &'a [Value], t: &str) -> Vec<&'a Value> {
    evs.iter().filter(|e| e["type"] == t).collect()
}

/// The bytes of a recorded value: a JSON string, `{"base64": ...}`, or
/// either of those under `{"text": ...}` (a text parameter).
fn bytes_of(v: &Value) -> Option<Vec<u8>> {
    if let Some(s) = v.as_str() {
        return Some(s.as_bytes().to_vec());
    }
    if let Some(b) = v.get("base64").and_then(Value::as_str) {
        return base64::engine::general_purpose::STANDARD.decode(b).ok();
    }
    v.get("text").and_then(bytes_of)
}

/// A parameter as text for comparisons (None for NULL).
fn param_text(v: &Value) -> Option<String> {
    if v.is_null() {
        return None;
    }
    Some(String::from_utf8_lossy(&bytes_of(v).unwrap_or_else(|| panic!("param {v}"))).into_owned())
}

/// The recording whose statements include one containing `needle`.
fn recording_with(db: &MyDb, n: usize, needle: &str) -> (String, Vec<Value>) {
    for id in finished_my_recordings(&db.w, n) {
        let (_, evs) = events(&db.w, &id);
        if of_type(&evs, "statement").iter().any(|e| {
            bytes_of(&e["text"]).is_some_and(|t| String::from_utf8_lossy(&t).contains(needle))
        }) {
            return (id, evs);
        }
    }
    panic!("no mysql recording has a statement with {needle:?}");
}

#[test]
fn statements_through_the_mariadb_client_are_recorded_as_mysql_and_tampering_fails_verify() {
    if !myworld::tools() {
        return;
    }
    let db = start(|b, _| b);
    let out = db.sql("SELECT CURRENT_USER(), 6*7 AS answer_marker");
    assert_eq!(out.trim(), "app@%\t42");
    let start =
        db.w.gw
            .wait_for_event_named("db.session.start", Duration::from_secs(10))
            .expect("db.session.start");
    assert_eq!(start["user"], "alice");
    assert_eq!(start["login"], "app");
    assert_eq!(start["target"], "db-my");
    let end =
        db.w.gw
            .wait_for_event_named("db.session.end", Duration::from_secs(10))
            .expect("db.session.end");
    assert_eq!(end["session_id"], start["session_id"]);
    let id = finished_my_recording(&db.w);
    let (header, evs) = events(&db.w, &id);
    assert_eq!(header["kind"], "mysql", "{header}");
    let stmt = evs
        .iter()
        .position(|e| {
            e["type"] == "statement"
                && bytes_of(&e["text"]).as_deref()
                    == Some(b"SELECT CURRENT_USER(), 6*7 AS answer_marker".as_slice())
        })
        .unwrap_or_else(|| panic!("statement not recorded: {evs:?}"));
    let result = evs[stmt + 1..]
        .iter()
        .find(|e| e["type"] == "result")
        .expect("its result");
    assert_eq!(result["tag"], "SELECT", "{result}");
    assert_eq!(result["rows"], 1, "{result}");
    let text = show(&db.w, &id);
    assert!(text.contains("answer_marker"), "{text}");
    // SQL text is only in the sealed recording.
    assert!(!db.w.gw.stderr_all().contains("answer_marker"));
    // verify passes; a tampered segment fails.
    let v = verify(&db.w, &id);
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
    let v = verify(&db.w, &id);
    assert!(!v.status.success(), "a tampered segment verified");
    assert!(stdout(&v).contains("000001"), "{}", stdout(&v));
}

#[test]
fn the_client_sees_the_servers_version_with_a_connection_id_of_gatehouses_own() {
    if !myworld::tools() {
        return;
    }
    let db = start(|b, _| b);
    let direct = Greeting::parse(&raw_greeting(&db.db.address())).expect("server greeting");
    let via = Greeting::parse(&raw_greeting(&db.addr()))
        .unwrap_or_else(|| panic!("gatehouse sent no HandshakeV10\n{}", db.w.gw.stderr()));
    assert_eq!(via.protocol, 10);
    assert_eq!(via.version, direct.version, "the version string differs");
    assert!(via.version.contains("MariaDB"), "{}", via.version);
    // A scramble plugin: the client never sends a password in the clear.
    assert!(
        ["mysql_native_password", "caching_sha2_password"].contains(&via.plugin.as_str()),
        "{}",
        via.plugin
    );
    assert_eq!(via.scramble.len(), 20, "{:?}", via.scramble);
    assert_ne!(via.scramble, direct.scramble);
    // The id in the greeting is gatehouse's, not the server thread's.
    let mut c = db.login();
    assert_ne!(c.greeting.connection_id, 0);
    let a = c.query("SELECT CONNECTION_ID()").unwrap();
    let Some(Outcome::Rows(rows)) = a.results.first() else {
        panic!("{a:?}");
    };
    let thread: u32 = rows[0][0].as_deref().unwrap().parse().unwrap();
    assert_ne!(
        c.greeting.connection_id, thread,
        "the greeting carries the server's thread id"
    );
    // Each session gets its own.
    let c2 = db.login();
    assert_ne!(c.greeting.connection_id, c2.greeting.connection_id);
}

#[test]
fn the_greeting_offers_neither_tls_nor_compression_nor_local_files() {
    if !myworld::tools() {
        return;
    }
    let db = start(|b, _| b);
    let direct = Greeting::parse(&raw_greeting(&db.db.address())).expect("server greeting");
    // The server itself offers TLS (it has a certificate) and compression.
    assert_ne!(direct.capabilities & caps::SSL, 0);
    let via = Greeting::parse(&raw_greeting(&db.addr())).expect("a greeting");
    assert_eq!(via.capabilities & caps::SSL, 0, "SSL offered");
    assert_eq!(via.capabilities & caps::COMPRESS, 0, "compression offered");
    assert_eq!(
        via.capabilities & caps::LOCAL_FILES,
        0,
        "LOCAL_FILES offered"
    );
    assert_ne!(via.capabilities & caps::PROTOCOL_41, 0);
}

#[test]
fn a_login_no_role_allows_is_refused_with_1045_and_audited_and_nothing_is_recorded() {
    if !myworld::tools() {
        return;
    }
    let db = start(|b, _| b);
    let out = db.mariadb("root", "SELECT 'root_marker'");
    assert!(!out.status.success(), "root was admitted");
    let err = stderr(&out);
    assert!(err.contains("1045"), "{err}");
    assert!(
        err.contains("no role of yours allows login \"root\" on db-my"),
        "{err}"
    );
    let ev =
        db.w.gw
            .wait_for_event_named("db.session.refused", Duration::from_secs(10))
            .expect("db.session.refused");
    assert_eq!(ev["login"], "root");
    assert_eq!(ev["user"], "alice");
    assert_eq!(ev["target"], "db-my");
    std::thread::sleep(Duration::from_millis(500));
    assert!(db.w.gw.events("db.session.start").is_empty());
    assert!(
        !db.w
            .gw
            .audit_events()
            .iter()
            .any(|e| e["event"] == "recording.started" && e["kind"] == "mysql"),
        "a refused login was recorded"
    );
    assert!(!db.w.gw.stderr_all().contains("root_marker"));
}

#[test]
fn com_change_user_is_refused_with_1227_and_the_session_goes_on() {
    if !myworld::tools() {
        return;
    }
    let db = start(|b, _| b);
    // mysql-connector-python's cmd_change_user.
    let out = db.python(
        r#"
cnx = connect()
try:
    cnx.cmd_change_user(username="root", password="", database="app")
    print("CHANGED")
except mysql.connector.Error as e:
    print("ERR", e.errno, e.sqlstate, e.msg)
cur = cnx.cursor()
cur.execute("SELECT CURRENT_USER(), 'after_change_user'")
print(json.dumps(cur.fetchall()))
"#,
    );
    let text = stdout(&out);
    assert!(out.status.success(), "{text}\n{}", stderr(&out));
    assert!(text.contains("ERR 1227 42000"), "{text}");
    assert!(text.contains("COM_CHANGE_USER"), "{text}");
    assert!(!text.contains("CHANGED"), "{text}");
    assert!(
        text.contains(r#"[["app@%", "after_change_user"]]"#),
        "{text}"
    );
    // The raw packet (0x11), then the same session still answers as app.
    let mut c = db.login();
    let r = c.change_user("root").unwrap();
    assert_eq!(r[0], 0xff, "not an ERR: {r:?}");
    assert_eq!(u16::from_le_bytes([r[1], r[2]]), 1227);
    let a = c.query("SELECT CURRENT_USER(), 'raw_after'").unwrap();
    match a.results.first() {
        Some(Outcome::Rows(rows)) => assert_eq!(rows[0][0].as_deref(), Some("app@%")),
        other => panic!("{other:?} {:?}", a.error),
    }
    let refused =
        db.w.gw
            .wait_for_event_named("db.command.refused", Duration::from_secs(10))
            .expect("db.command.refused");
    assert_eq!(refused["user"], "alice");
    assert!(
        refused["command"]
            .as_str()
            .unwrap_or_default()
            .to_uppercase()
            .contains("CHANGE_USER"),
        "{refused}"
    );
    drop(c);
    // Each session's recording has its refusal.
    let mut missing = Vec::new();
    for marker in ["after_change_user", "raw_after"] {
        let (_, evs) = recording_with(&db, 2, marker);
        let refused = of_type(&evs, "refused");
        if !refused.iter().any(|e| {
            e["command"]
                .as_str()
                .unwrap_or_default()
                .to_uppercase()
                .contains("CHANGE_USER")
        }) {
            missing.push(format!("{marker}: {evs:?}"));
        }
    }
    assert!(missing.is_empty(), "no refused event in {missing:#?}");
}

#[test]
fn load_data_local_infile_is_refused_and_nothing_is_loaded() {
    if !myworld::tools() {
        return;
    }
    let db = start(|b, _| b);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("rows.tsv");
    std::fs::write(&file, "1\tlocal_secret_a\n2\tlocal_secret_b\n").unwrap();
    let sql = format!(
        "LOAD DATA LOCAL INFILE '{}' INTO TABLE t (id, body)",
        file.display()
    );
    let mut cmd = db.mariadb_cmd(LOGIN);
    cmd.args(["--local-infile=1", "-e", &sql]);
    let out = run_with_timeout(&mut cmd, Duration::from_secs(60)).unwrap();
    assert!(
        !out.status.success(),
        "LOAD DATA LOCAL ran: {}",
        stdout(&out)
    );
    assert!(stderr(&out).contains("1148"), "{}", stderr(&out));
    assert_eq!(db.db.sql("SELECT COUNT(*) FROM app.t"), "0");
    let ev =
        db.w.gw
            .wait_for_event_named("db.command.refused", Duration::from_secs(10))
            .expect("db.command.refused");
    assert_eq!(ev["user"], "alice");
    // A raw client that would send the file gets the ERR, never a request
    // for it, and its session goes on.
    let mut c = db.login();
    let a = c.query(&sql).unwrap();
    let e = a.error.expect("an ERR");
    assert_eq!(e.code, 1148, "{e:?}");
    assert!(e.message.contains("LOAD DATA LOCAL INFILE"), "{e:?}");
    let a = c.query("SELECT 'still_here'").unwrap();
    assert!(a.error.is_none(), "{a:?}");
    assert_eq!(db.db.sql("SELECT COUNT(*) FROM app.t"), "0");
    drop(c);
    // The file's content went nowhere, and the statement (SQL text) is not
    // in the audit log or the daemon's logs.
    assert!(!db.w.gw.stderr_all().contains("local_secret"));
    assert!(!db.w.gw.stderr_all().contains("rows.tsv"));
    // The refusal is in the session's recording.
    let (_, evs) = recording_with(&db, 2, "still_here");
    assert!(
        of_type(&evs, "refused")
            .iter()
            .any(|e| e["command"] == "LOAD DATA LOCAL INFILE"),
        "no refused event: {evs:?}"
    );
}

#[test]
fn prepared_statements_from_mysql_connector_are_recorded_with_exact_typed_parameters() {
    if !myworld::tools() {
        return;
    }
    let db = start(|b, _| b);
    let s1 = "O'Brien \"quoted\" caf\u{e9} \u{2603} back\\slash";
    let out = db.python(
        r#"
cnx = connect()
cur = cnx.cursor()
cur.execute("CREATE TABLE p (i BIGINT, s VARCHAR(200), n INT, f DOUBLE, d DATE) CHARACTER SET utf8mb4")
cur = cnx.cursor(prepared=True)
q = "INSERT INTO p (i, s, n, f, d) VALUES (%s, %s, %s, %s, %s)"
S1 = "O'Brien \"quoted\" caf\u00e9 \u2603 back\\slash"
cur.execute(q, (42, S1, None, 2.5, datetime.date(2024, 2, 29)))
cur.execute(q, (-7, "second", 3, -0.125, datetime.date(1999, 12, 31)))
cur.execute("SELECT i, s FROM p WHERE i > %s ORDER BY i", (-100,))
print(json.dumps([[r[0], r[1]] for r in cur.fetchall()]))
"#,
    );
    assert!(
        out.status.success(),
        "{}\n{}\n{}",
        stdout(&out),
        stderr(&out),
        db.w.gw.stderr()
    );
    let rows: Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(rows, serde_json::json!([[-7, "second"], [42, s1]]));
    // Rows right at the server (HEX: exact bytes).
    let hex = |s: &str| hex::encode_upper(s.as_bytes());
    assert_eq!(
        db.db
            .sql("SELECT i, HEX(s), IFNULL(n, 'NULL'), f, d FROM app.p ORDER BY i"),
        format!(
            "-7\t{}\t3\t-0.125\t1999-12-31\n42\t{}\tNULL\t2.5\t2024-02-29",
            hex("second"),
            hex(s1)
        )
    );
    let (id, evs) = recording_with(&db, 1, "INSERT INTO p");
    let prepared = evs
        .iter()
        .find(|e| {
            e["type"] == "statement"
                && bytes_of(&e["text"]).as_deref()
                    == Some(b"INSERT INTO p (i, s, n, f, d) VALUES (?, ?, ?, ?, ?)".as_slice())
        })
        .unwrap_or_else(|| panic!("the prepared text is not recorded: {evs:?}"));
    assert!(
        !prepared["parse"].is_null(),
        "not marked prepared: {prepared}"
    );
    let prepare_tag = evs
        .iter()
        .filter_map(|e| e["tag"].as_str())
        .find(|t| t.starts_with("PREPARE "))
        .expect("a PREPARE result");
    let stmt_id = prepare_tag.trim_start_matches("PREPARE ").to_string();
    let binds: Vec<&Value> = of_type(&evs, "bind")
        .into_iter()
        .filter(|e| e["statement"] == stmt_id.as_str())
        .collect();
    assert_eq!(binds.len(), 2, "two executes: {evs:?}");
    let params = |b: &Value| -> Vec<Option<String>> {
        b["params"]
            .as_array()
            .unwrap()
            .iter()
            .map(param_text)
            .collect()
    };
    assert_eq!(
        params(binds[0]),
        vec![
            Some("42".into()),
            Some(s1.into()),
            None,
            Some("2.5".into()),
            Some("2024-02-29".into())
        ]
    );
    assert_eq!(
        params(binds[1]),
        vec![
            Some("-7".into()),
            Some("second".into()),
            Some("3".into()),
            Some("-0.125".into()),
            Some("1999-12-31".into())
        ]
    );
    // What the connector bound: small ints as (unsigned) TINY, str as
    // STRING, None as NULL, float as DOUBLE, date as DATE.
    assert_eq!(
        binds[0]["types"],
        serde_json::json!(["unsigned TINY", "STRING", "NULL", "DOUBLE", "DATE"])
    );
    assert_eq!(
        binds[1]["types"],
        serde_json::json!(["TINY", "STRING", "unsigned TINY", "DOUBLE", "DATE"])
    );
    // `recordings show` renders each execute with its typed values.
    let text = show(&db.w, &id);
    for want in [
        format!("execute statement {stmt_id}"),
        "?1 = 42".to_string(),
        "unsigned TINY".to_string(),
        "?3 = NULL".to_string(),
        "?1 = -7".to_string(),
        "?4 = -0.125".to_string(),
    ] {
        assert!(text.contains(&want), "{want:?} not in\n{text}");
    }
    // Each execute's result follows its bind.
    for b in &binds {
        let at = evs.iter().position(|e| std::ptr::eq(e, *b)).unwrap();
        let r = evs[at + 1..]
            .iter()
            .find(|e| e["type"] == "result")
            .unwrap();
        assert_eq!(r["tag"], "OK", "{r}");
        assert_eq!(r["rows"], 1, "{r}");
    }
}

#[test]
fn parameter_types_sent_only_with_the_first_execute_are_remembered_and_long_data_recorded() {
    if !myworld::tools() {
        return;
    }
    let db = start(|b, _| b);
    let mut c = db.login();
    let a = c
        .query("CREATE TABLE q (a BIGINT, b VARCHAR(100), c BLOB) CHARACTER SET utf8mb4")
        .unwrap();
    assert!(a.error.is_none(), "{a:?}");
    let (id, n) = c
        .prepare("INSERT INTO q (a, b, c) VALUES (?, ?, ?)")
        .unwrap()
        .expect("prepared");
    assert_eq!(n, 3);
    let blob = vec![0u8, 1, 2, 0xff, b'\'', 0x1b];
    let first = [
        (
            ty::LONGLONG,
            false,
            Some(1_234_567_890_123i64.to_le_bytes().to_vec()),
        ),
        (
            ty::VAR_STRING,
            false,
            Some(lenenc_bytes("first \u{2603}".as_bytes())),
        ),
        (ty::BLOB, false, Some(lenenc_bytes(&blob))),
    ];
    let a = c.execute(id, &first, true).unwrap();
    assert!(a.error.is_none(), "{a:?}");
    // The second execute sends values only (new-params-bound = 0).
    let second = [
        (ty::LONGLONG, false, Some((-5i64).to_le_bytes().to_vec())),
        (ty::VAR_STRING, false, None),
        (ty::BLOB, false, Some(lenenc_bytes(b"x"))),
    ];
    let a = c.execute(id, &second, false).unwrap();
    assert!(a.error.is_none(), "{a:?}");
    // Long data for parameter 2 in two chunks, then an execute without
    // its value.
    c.send_long_data(id, 2, b"long-part-1;").unwrap();
    c.send_long_data(id, 2, b"long-part-2").unwrap();
    let third = [
        (ty::LONGLONG, false, Some(7i64.to_le_bytes().to_vec())),
        (ty::VAR_STRING, false, Some(lenenc_bytes(b"third"))),
        (ty::BLOB, false, Some(Vec::new())),
    ];
    let a = c.execute(id, &third, false).unwrap();
    assert!(a.error.is_none(), "{a:?}");
    c.close_statement(id).unwrap();
    let a = c.query("SELECT 'done_marker'").unwrap();
    assert!(a.error.is_none(), "{a:?}");
    drop(c);
    assert_eq!(
        db.db
            .sql("SELECT a, IFNULL(HEX(b), 'NULL'), HEX(c) FROM app.q ORDER BY a"),
        format!(
            "-5\tNULL\t{}\n7\t{}\t{}\n1234567890123\t{}\t{}",
            hex::encode_upper(b"x"),
            hex::encode_upper(b"third"),
            hex::encode_upper(b"long-part-1;long-part-2"),
            hex::encode_upper("first \u{2603}".as_bytes()),
            hex::encode_upper(&blob)
        )
    );
    let (_, evs) = recording_with(&db, 1, "INSERT INTO q");
    let sid = id.to_string();
    let binds: Vec<&Value> = of_type(&evs, "bind")
        .into_iter()
        .filter(|e| e["statement"] == sid.as_str())
        .collect();
    let executes: Vec<&&Value> = binds.iter().filter(|b| b["portal"] == "").collect();
    assert_eq!(executes.len(), 3, "{binds:?}");
    let want_types = serde_json::json!(["LONGLONG", "VAR_STRING", "BLOB"]);
    for e in &executes {
        assert_eq!(e["types"], want_types, "types not remembered: {e}");
    }
    let p = |b: &Value, i: usize| -> Option<Vec<u8>> {
        let v = &b["params"][i];
        if v.is_null() {
            None
        } else {
            Some(bytes_of(v).unwrap())
        }
    };
    assert_eq!(p(executes[0], 0).unwrap(), b"1234567890123");
    assert_eq!(p(executes[0], 1).unwrap(), "first \u{2603}".as_bytes());
    assert_eq!(p(executes[0], 2).unwrap(), blob);
    assert_eq!(p(executes[1], 0).unwrap(), b"-5");
    assert_eq!(p(executes[1], 1), None);
    assert_eq!(p(executes[1], 2).unwrap(), b"x");
    assert_eq!(p(executes[2], 0).unwrap(), b"7");
    let long: Vec<&&Value> = binds
        .iter()
        // Numbered from 1, as the statement's ?N.
        .filter(|b| b["portal"] == "long data 3")
        .collect();
    assert_eq!(long.len(), 2, "{binds:?}");
    assert_eq!(p(long[0], 0).unwrap(), b"long-part-1;");
    assert_eq!(p(long[1], 0).unwrap(), b"long-part-2");
}

#[test]
fn multi_statements_and_call_return_every_result_set() {
    if !myworld::tools() {
        return;
    }
    let db = start(|b, _| b);
    // DELIMITER: the CLI would split the body at its ';'.
    db.db.sql(
        "DELIMITER //\nCREATE PROCEDURE app.two_sets() BEGIN SELECT 'set_one' AS x; SELECT 'set_two', 'cols'; END//",
    );
    // The CLI (splits on ';' itself) and CALL's two result sets.
    let out = db.sql("SELECT 'first_rs'; SELECT 'second_rs'");
    assert_eq!(out, "first_rs\nsecond_rs\n");
    let out = db.sql("CALL two_sets()");
    assert_eq!(out, "set_one\nset_two\tcols\n");
    // One COM_QUERY carrying three statements (MULTI_STATEMENTS), then
    // CALL on the wire: every result, then the connection still in step.
    let mut c = db.login();
    let a = c.query("SELECT 'm1'; SELECT 'm2', 'm2b'; DO 1").unwrap();
    assert!(a.error.is_none(), "{a:?}");
    assert_eq!(a.results.len(), 3, "{a:?}");
    match (&a.results[0], &a.results[1], &a.results[2]) {
        (Outcome::Rows(r1), Outcome::Rows(r2), Outcome::Ok { .. }) => {
            assert_eq!(r1, &vec![vec![Some("m1".to_string())]]);
            assert_eq!(
                r2,
                &vec![vec![Some("m2".to_string()), Some("m2b".to_string())]]
            );
        }
        other => panic!("{other:?}"),
    }
    let a = c.query("CALL two_sets()").unwrap();
    assert!(a.error.is_none(), "{a:?}");
    assert_eq!(a.results.len(), 3, "two result sets and CALL's OK: {a:?}");
    let a = c.query("SELECT 'in_step'").unwrap();
    match a.results.first() {
        Some(Outcome::Rows(r)) => assert_eq!(r[0][0].as_deref(), Some("in_step")),
        other => panic!("{other:?}"),
    }
    drop(c);
    let (_, evs) = recording_with(&db, 3, "SELECT 'm1'");
    let at = evs
        .iter()
        .position(|e| {
            e["type"] == "statement" && bytes_of(&e["text"]).is_some_and(|t| t.starts_with(b"CALL"))
        })
        .expect("CALL recorded");
    let results: Vec<&Value> = evs[at + 1..]
        .iter()
        .take_while(|e| e["type"] != "statement")
        .filter(|e| e["type"] == "result")
        .collect();
    let tags: Vec<&str> = results.iter().filter_map(|r| r["tag"].as_str()).collect();
    assert_eq!(tags, ["SELECT", "SELECT", "OK"], "{results:?}");
    let at = evs
        .iter()
        .position(|e| {
            e["type"] == "statement"
                && bytes_of(&e["text"]).is_some_and(|t| t.starts_with(b"SELECT 'm1'"))
        })
        .unwrap();
    let n = evs[at + 1..]
        .iter()
        .take_while(|e| e["type"] != "statement")
        .filter(|e| e["type"] == "result")
        .count();
    assert_eq!(n, 3, "{evs:?}");
}

#[test]
fn ctrl_c_in_the_mariadb_client_kills_the_running_query() {
    if !myworld::tools() {
        return;
    }
    let db = start(|b, _| b);
    let mut cmd = db.mariadb_cmd(LOGIN);
    cmd.args(["-e", "SELECT SLEEP(60) AS sleeper_marker"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut g = ChildGuard::spawn(&mut cmd);
    assert!(db
        .w
        .gw
        .wait_for_event_named("db.session.start", Duration::from_secs(20))
        .is_some());
    std::thread::sleep(Duration::from_secs(2));
    let t0 = Instant::now();
    assert!(common::send_signal(&[g.id() as i64], "INT"));
    let status = g.wait_timeout(Duration::from_secs(20));
    let took = t0.elapsed();
    let out = g.wait_output(Duration::from_secs(5)).unwrap();
    assert!(
        status.is_some(),
        "mariadb still running 20 s after Ctrl-C\n{}",
        db.w.gw.stderr()
    );
    assert!(took < Duration::from_secs(15), "took {took:?}");
    // The server interrupted it (a client that merely gave up would not
    // get this error).
    assert!(stderr(&out).contains("ERROR 1317"), "{}", stderr(&out));
    eprintln!(
        "after Ctrl-C ({status:?}, {took:?}): {}{}",
        stdout(&out),
        stderr(&out)
    );
    // The server no longer runs it.
    let running = db.db.sql(
        "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE INFO LIKE 'SELECT SLEEP(60)%'",
    );
    assert_eq!(running, "0");
    // The killed session's recording has the forwarded cancel.
    let (_, evs) = recording_with(&db, 2, "sleeper_marker");
    assert!(
        of_type(&evs, "cancel")
            .iter()
            .any(|e| e["forwarded"] == true),
        "{evs:?}"
    );
}

#[test]
fn a_kill_from_another_person_is_refused_with_1094_and_changes_nothing() {
    if !myworld::tools() {
        return;
    }
    let db = start(|b, _| b);
    let (_bob, bob_port, _bob_fwd, _) = db.bob_forward();
    let mut alice = db.login();
    let a = alice.query("SELECT CONNECTION_ID()").unwrap();
    let Some(Outcome::Rows(rows)) = a.results.first() else {
        panic!("{a:?}");
    };
    let thread: u32 = rows[0][0].as_deref().unwrap().parse().unwrap();
    let gid = alice.greeting.connection_id;
    let mut bob = MyConn::connect(&format!("127.0.0.1:{bob_port}")).unwrap();
    bob.login(LOGIN, Some("app"), b"x")
        .unwrap_or_else(|e| panic!("bob: {e:?}\n{}", db.w.gw.stderr()));
    // alice's query runs; bob tries to kill it by her gatehouse id and by
    // the server's thread id, and her connection too.
    let mut q = vec![0x03];
    q.extend_from_slice(b"SELECT SLEEP(5), 'slept'");
    alice.command(&q).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let t0 = Instant::now();
    for kill in [
        format!("KILL QUERY {gid}"),
        format!("KILL QUERY {thread}"),
        format!("KILL {gid}"),
        format!("KILL CONNECTION {thread}"),
    ] {
        let a = bob.query(&kill).unwrap();
        let e = a.error.unwrap_or_else(|| panic!("{kill} was not refused"));
        assert_eq!(e.code, 1094, "{kill}: {e:?}");
        assert!(e.message.contains("Unknown thread id"), "{e:?}");
    }
    let a = alice.answer(false).unwrap();
    assert!(a.error.is_none(), "alice's query was interrupted: {a:?}");
    match a.results.first() {
        Some(Outcome::Rows(r)) => {
            assert_eq!(r[0], vec![Some("0".to_string()), Some("slept".to_string())])
        }
        other => panic!("{other:?}"),
    }
    assert!(t0.elapsed() >= Duration::from_secs(3), "{:?}", t0.elapsed());
    // Her session is still there.
    let a = alice.query("SELECT 'alive'").unwrap();
    assert!(a.error.is_none(), "{a:?}");
    let ev =
        db.w.gw
            .wait_for_event(
                |e| {
                    (e["event"] == "db.command.refused" || e["event"] == "db.cancel.ignored")
                        && e["user"] == "bob"
                },
                Duration::from_secs(10),
            )
            .expect("bob's KILL audited");
    eprintln!("{ev}");
    drop(bob);
    drop(alice);
    // bob's recording has his refused KILLs; alice's no cancel.
    let bobs: Vec<Vec<Value>> = finished_my_recordings(&db.w, 2)
        .iter()
        .map(|id| events(&db.w, id))
        .filter(|(h, _)| h["user"] == "bob")
        .map(|(_, evs)| evs)
        .collect();
    assert_eq!(bobs.len(), 1, "bob's recording");
    let evs = &bobs[0];
    assert!(
        of_type(evs, "refused").len() >= 4,
        "bob's refused KILLs not recorded: {evs:?}"
    );
    let (_, evs) = recording_with(&db, 2, "'slept'");
    assert!(of_type(&evs, "cancel").is_empty(), "{evs:?}");
}

#[test]
fn a_hundred_mib_of_inserts_arrive_whole_with_bounded_gateway_memory() {
    if !myworld::tools() {
        return;
    }
    let db = start(|b, _| b);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("inserts.sql");
    let body = "x".repeat((1 << 20) - 64);
    {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&file).unwrap());
        for i in 0..100 {
            writeln!(f, "INSERT INTO t (id, body) VALUES ({i}, '{body}');").unwrap();
        }
    }
    let size = std::fs::metadata(&file).unwrap().len();
    assert!(size >= 100 * ((1 << 20) - 64));
    let pid = db.w.gw.pid();
    let rss0 = db.w.gw.rss_kib();
    // Sample VmRSS while the inserts run.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut peak = 0u64;
            let t0 = Instant::now();
            while !stop.load(std::sync::atomic::Ordering::Relaxed)
                && t0.elapsed() < Duration::from_secs(600)
            {
                if let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
                    if let Some(v) = s
                        .lines()
                        .find_map(|l| l.strip_prefix("VmRSS:"))
                        .and_then(|v| v.split_whitespace().next())
                        .and_then(|v| v.parse::<u64>().ok())
                    {
                        peak = peak.max(v);
                    }
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            peak
        })
    };
    let mut cmd = db.mariadb_cmd(LOGIN);
    cmd.stdin(std::fs::File::open(&file).unwrap());
    let t0 = Instant::now();
    let out = run_with_timeout(&mut cmd, Duration::from_secs(300)).expect("inserts finished");
    let took = t0.elapsed();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let peak = sampler.join().unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        stderr(&out),
        db.w.gw.stderr()
    );
    let hwm = myworld::hwm_kib(pid);
    eprintln!(
        "100 x 1 MiB INSERTs ({size} bytes) in {took:?}: gatehouse RSS {rss0} KiB before, peak {peak} KiB sampled, VmHWM {hwm} KiB"
    );
    assert_eq!(
        db.db.sql("SELECT COUNT(*), SUM(LENGTH(body)) FROM app.t"),
        format!("100\t{}", 100 * body.len())
    );
    // Bounds: a relay that holds one statement (1 MiB) at a time, plus the
    // recorder's 1 MiB queue and the 32 MiB large-statement budget, stays
    // within 64 MiB of where it started; one that buffered the stream
    // would grow by ~100 MiB (or 200 with the recording's copy). 150 MiB
    // absolute leaves the idle gateway (tens of MiB: tokio, russh, the
    // recorder) that margin and no more.
    assert!(
        peak < rss0 + 64 * 1024,
        "RSS grew by {} KiB over 100 MiB of inserts",
        peak - rss0
    );
    assert!(hwm < 150 * 1024, "VmHWM {hwm} KiB");
    // Every statement is in the recording.
    let id = finished_my_recording(&db.w);
    let (_, evs) = events(&db.w, &id);
    let inserts = of_type(&evs, "statement")
        .iter()
        .filter(|e| bytes_of(&e["text"]).is_some_and(|t| t.starts_with(b"INSERT INTO t")))
        .count();
    assert_eq!(inserts, 100);
}

#[test]
fn the_database_password_and_totp_codes_are_never_in_a_log_or_recording() {
    if !myworld::tools() {
        return;
    }
    let db = start(|b, _| b);
    let code = std::fs::read_to_string(db.w.client.dir().join("codes"))
        .unwrap()
        .trim()
        .to_string();
    assert_eq!(code.len(), 6, "{code}");
    db.sql("SELECT 'password_check'");
    let out = db.python(
        r#"
cnx = connect()
cur = cnx.cursor(prepared=True)
cur.execute("SELECT %s", ("param_check",))
print(cur.fetchall())
"#,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let _ = db.mariadb("root", "SELECT 1");
    let ids = finished_my_recordings(&db.w, 2);
    let mut text = String::new();
    for id in &ids {
        text.push_str(&myworld::export(&db.w, id));
        text.push_str(&show(&db.w, id));
    }
    assert!(text.contains("password_check") && text.contains("param_check"));
    let logs = db.w.gw.stderr_all();
    assert!(!text.contains(APP_PASSWORD), "password in a recording");
    assert!(!logs.contains(APP_PASSWORD), "password in gatehouse's log");
    assert!(
        !db.db.log().contains(APP_PASSWORD),
        "password in the server's log"
    );
    // The code as a value (quoted, or after `=`/`: ` in a message); bare
    // six digits could be any number in a transcript.
    for needle in [
        format!("\"{code}\""),
        format!("={code}"),
        format!(": {code}"),
    ] {
        assert!(!logs.contains(&needle), "TOTP code in gatehouse's log");
    }
    assert!(
        !text.contains(&format!("\"{code}\"")),
        "TOTP code in a recording"
    );
    // Nothing in the state directory holds the password in the clear.
    for entry in walk(&db.w.gw.setup().state_dir()) {
        let bytes = std::fs::read(&entry).unwrap_or_default();
        assert!(
            !bytes
                .windows(APP_PASSWORD.len())
                .any(|w| w == APP_PASSWORD.as_bytes()),
            "password in the clear in {}",
            entry.display()
        );
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

/// Stock `mariadb` in client namespace `client` against the tunnel port,
/// `password` in MYSQL_PWD (None: no password).
fn mariadb_in_tunnel(
    w: &common::netns::WgWorld,
    client: usize,
    password: Option<&str>,
    sql: &str,
) -> std::process::Output {
    let mut c = std::process::Command::new("mariadb");
    c.args([
        "--no-defaults",
        "-h",
        common::netns::TUNNEL_GATEWAY,
        "-P",
        &myworld::TUNNEL_PORT.to_string(),
        "--protocol=TCP",
        "-u",
        LOGIN,
        "--connect-timeout=20",
        "-N",
        "-B",
        "app",
        "-e",
        sql,
    ])
    .env_remove("MYSQL_PWD");
    if let Some(p) = password {
        c.env("MYSQL_PWD", p);
    }
    let mut c = common::netns::in_ns(w.lab.client(client), &c);
    c.stdin(Stdio::null());
    run_with_timeout(&mut c, Duration::from_secs(90)).expect("mariadb finished")
}

#[test]
fn in_the_tunnel_a_code_through_the_native_scramble_admits_and_then_the_lease_does() {
    let Some(lab) = common::netns::enter(
        "in_the_tunnel_a_code_through_the_native_scramble_admits_and_then_the_lease_does",
        1,
    ) else {
        return;
    };
    if !myworld::tools() {
        return;
    }
    let (_server, w) = myworld::tunnel(lab, APP_PASSWORD, |b| b);
    let _device = w.connect(0);
    // No lease yet: a wrong code is refused as a failed login.
    let code = common::totp(&w.secret);
    let wrong = if code == "000000" { "111111" } else { "000000" };
    let out = mariadb_in_tunnel(&w, 0, Some(wrong), "SELECT 1");
    assert!(!out.status.success(), "a wrong code was admitted");
    assert!(stderr(&out).contains("1045"), "{}", stderr(&out));
    assert!(w.gw.events("db.session.start").is_empty());
    // The current code, checked through the mysql_native_password scramble.
    let out = mariadb_in_tunnel(&w, 0, Some(&code), "SELECT 'by_code', CURRENT_USER()");
    assert!(out.status.success(), "{}\n{}", stderr(&out), w.gw.stderr());
    assert_eq!(stdout(&out).trim(), "by_code\tapp@%");
    let first =
        w.gw.wait_for_event_named("db.session.start", Duration::from_secs(10))
            .unwrap();
    assert_eq!(first["admitted_by"], "code", "{first}");
    assert_eq!(first["user"], "alice");
    // A second connection from the device: the lease the code gave admits
    // it without a password.
    let out = mariadb_in_tunnel(&w, 0, None, "SELECT 'by_lease'");
    assert!(out.status.success(), "{}\n{}", stderr(&out), w.gw.stderr());
    assert_eq!(stdout(&out).trim(), "by_lease");
    assert!(
        w.gw.wait_for_event(
            |e| e["event"] == "db.session.start" && e["admitted_by"] == "lease",
            Duration::from_secs(10),
        )
        .is_some(),
        "{:?}",
        w.gw.events("db.session.start")
    );
    // The code never reaches a log.
    assert!(!w.gw.stderr_all().contains(&format!("\"{code}\"")));
    assert!(!w.gw.stderr_all().contains(APP_PASSWORD));
}

#[test]
fn binlog_and_replication_commands_are_refused_by_gatehouse_and_the_session_goes_on() {
    if !myworld::tools() {
        return;
    }
    let db = start(|b, _| b);
    let mut c = db.login();
    // COM_BINLOG_DUMP (pos 4, server id 77, file), COM_REGISTER_SLAVE
    // (server id 77, empty host/user/password, port 0, rank, master id),
    // COM_BINLOG_DUMP_GTID.
    let mut dump = 4u32.to_le_bytes().to_vec();
    dump.extend_from_slice(&0u16.to_le_bytes());
    dump.extend_from_slice(&77u32.to_le_bytes());
    dump.extend_from_slice(b"mysql-bin.000001");
    let mut register = 77u32.to_le_bytes().to_vec();
    register.extend_from_slice(&[0, 0, 0]);
    register.extend_from_slice(&0u16.to_le_bytes());
    register.extend_from_slice(&[0u8; 8]);
    let mut gtid = 0u16.to_le_bytes().to_vec();
    gtid.extend_from_slice(&77u32.to_le_bytes());
    gtid.extend_from_slice(&0u32.to_le_bytes());
    gtid.extend_from_slice(&4u64.to_le_bytes());
    gtid.extend_from_slice(&0u32.to_le_bytes());
    for (cmd, body) in [(0x12u8, dump), (0x15, register), (0x1e, gtid)] {
        let r = c.simple(cmd, &body).unwrap();
        assert_eq!(r[0], 0xff, "command {cmd:#x} not refused: {r:?}");
        assert_eq!(u16::from_le_bytes([r[1], r[2]]), 1227, "{cmd:#x}");
        assert!(
            String::from_utf8_lossy(&r).contains("gatehouse"),
            "{cmd:#x}: the server's own refusal, not gatehouse's: {}",
            String::from_utf8_lossy(&r)
        );
        let a = c.query("SELECT 'after_binlog'").unwrap();
        assert!(a.error.is_none(), "{cmd:#x}: {a:?}");
    }
    assert!(
        common::wait_until(Duration::from_secs(10), || db
            .w
            .gw
            .events("db.command.refused")
            .len()
            >= 3),
        "{:?}",
        db.w.gw.events("db.command.refused")
    );
}

#[test]
fn ping_init_db_reset_connection_and_statement_reset_are_relayed() {
    if !myworld::tools() {
        return;
    }
    let db = start(|b, _| b);
    db.db.create_database("app2", LOGIN);
    let mut c = db.login();
    assert_eq!(c.simple(0x0e, &[]).unwrap()[0], 0x00, "COM_PING");
    // COM_INIT_DB switches the server's database.
    assert_eq!(c.simple(0x02, b"app2").unwrap()[0], 0x00, "COM_INIT_DB");
    let a = c.query("SELECT DATABASE()").unwrap();
    match a.results.first() {
        Some(Outcome::Rows(r)) => assert_eq!(r[0][0].as_deref(), Some("app2")),
        other => panic!("{other:?} {:?}", a.error),
    }
    // COM_STMT_RESET of a prepared statement.
    let (id, _) = c.prepare("SELECT ? + 1").unwrap().expect("prepared");
    assert_eq!(
        c.simple(0x1a, &id.to_le_bytes()).unwrap()[0],
        0x00,
        "COM_STMT_RESET"
    );
    // COM_RESET_CONNECTION reaches the server: session state is gone.
    assert!(c.query("SET @v = 5").unwrap().error.is_none());
    assert_eq!(
        c.simple(0x1f, &[]).unwrap()[0],
        0x00,
        "COM_RESET_CONNECTION"
    );
    let a = c.query("SELECT IFNULL(@v, 'reset_marker')").unwrap();
    match a.results.first() {
        Some(Outcome::Rows(r)) => assert_eq!(r[0][0].as_deref(), Some("reset_marker")),
        other => panic!("{other:?} {:?}", a.error),
    }
    drop(c);
    let (_, evs) = recording_with(&db, 1, "reset_marker");
    assert!(
        of_type(&evs, "statement")
            .iter()
            .any(|e| bytes_of(&e["text"]).as_deref() == Some(b"USE `app2`".as_slice())),
        "COM_INIT_DB not recorded as USE: {evs:?}"
    );
}

#[test]
fn the_server_never_gets_to_ask_the_client_for_a_local_file() {
    if !myworld::tools() {
        return;
    }
    let db = start(|b, _| b);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("rows.tsv");
    std::fs::write(&file, "9\tlocal_secret_c\n").unwrap();
    let f = file.display();
    // Spellings a naive statement check would miss: whatever gatehouse
    // makes of them, the server must not ask for the file (it could only
    // if CLIENT_LOCAL_FILES reached it) and nothing is loaded.
    let variants = [
        format!("load data local infile '{f}' into table t (id, body)"),
        format!("/* x */ LOAD DATA LOCAL INFILE '{f}' INTO TABLE t (id, body)"),
        format!("LOAD DATA\n  LOW_PRIORITY LOCAL\tINFILE '{f}' INTO TABLE t (id, body)"),
        format!("LOAD XML LOCAL INFILE '{f}' INTO TABLE t"),
        format!("SELECT 1; LOAD DATA LOCAL INFILE '{f}' INTO TABLE t (id, body)"),
    ];
    let mut c = db.login();
    for sql in &variants {
        let a = c.query(sql).unwrap();
        assert_eq!(
            a.local_infile_request, None,
            "the server asked for a client file on {sql:?}"
        );
        assert!(a.error.is_some(), "{sql:?} succeeded: {a:?}");
        let a = c.query("SELECT 'in_step'").unwrap();
        match a.results.first() {
            Some(Outcome::Rows(r)) => assert_eq!(r[0][0].as_deref(), Some("in_step")),
            other => panic!("after {sql:?}: {other:?} {:?}", a.error),
        }
    }
    assert_eq!(db.db.sql("SELECT COUNT(*) FROM app.t"), "0");
}

#[test]
fn max_session_ends_a_running_query_with_an_error() {
    if !myworld::tools() {
        return;
    }
    let db = start(|b, _| b.role_line("dba", "max_session = \"3s\""));
    let t0 = Instant::now();
    let out = db.mariadb(LOGIN, "SELECT SLEEP(30)");
    let took = t0.elapsed();
    assert!(!out.status.success(), "{}", stdout(&out));
    assert!(
        stderr(&out).contains("maximum session length"),
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
fn idle_timeout_ends_an_idle_session_with_an_error() {
    if !myworld::tools() {
        return;
    }
    let db = start(|b, _| b.role_line("dba", "idle_timeout = \"2s\""));
    let mut c = db.login();
    let t0 = Instant::now();
    let p = c.read().expect("an ERR before the connection closes");
    assert_eq!(p[0], 0xff, "{p:?}");
    let e = String::from_utf8_lossy(&p[3..]).into_owned();
    assert!(e.contains("idle"), "{e}");
    let took = t0.elapsed();
    assert!(
        took > Duration::from_millis(1500) && took < Duration::from_secs(6),
        "{took:?}"
    );
    let end =
        db.w.gw
            .wait_for_event_named("db.session.end", Duration::from_secs(10))
            .unwrap();
    assert_eq!(end["reason"], "idle_timeout reached");
}

#[test]
fn the_ssh_forward_reaches_db_my_by_3306_its_own_port_or_its_tunnel_port_only() {
    if !myworld::tools() {
        return;
    }
    let db = start(|b, _| b);
    for port in [db.db.port, myworld::TUNNEL_PORT] {
        let lport = common::free_port();
        let _fwd = myworld::forward(&db.w.client, lport, myworld::TARGET, port);
        let mut c = myworld::mariadb_cmd(lport, LOGIN);
        c.args(["app", "-e", "SELECT 'via_port'"]);
        let out = run_with_timeout(&mut c, Duration::from_secs(60)).unwrap();
        assert!(out.status.success(), "port {port}: {}", stderr(&out));
        assert_eq!(stdout(&out).trim(), "via_port");
    }
    // Any other port of the database target is refused by gatehouse.
    let lport = common::free_port();
    let _fwd = myworld::forward(&db.w.client, lport, myworld::TARGET, 22);
    let greeting = std::net::TcpStream::connect(("127.0.0.1", lport)).and_then(|mut s| {
        use std::io::Read;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf);
        Ok(buf)
    });
    assert!(
        greeting.map(|b| b.is_empty()).unwrap_or(true),
        "db-my:22 reached something"
    );
}

#[test]
fn a_large_result_the_client_does_not_read_keeps_gateway_memory_bounded() {
    if !myworld::tools() {
        return;
    }
    let db = start(|b, _| b);
    let rss0 = db.w.gw.rss_kib();
    let mut c = db.login();
    // ~200 MB of rows (the server's sequence engine), not read for a while:
    // the relay must stop reading the server, not buffer it.
    let mut q = vec![0x03];
    q.extend_from_slice(b"SELECT seq, REPEAT('y', 1000000) FROM seq_1_to_200");
    c.command(&q).unwrap();
    let mut peak = 0;
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(4) {
        peak = peak.max(db.w.gw.rss_kib());
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!(
        "unread 200 MB result: gatehouse RSS {rss0} KiB before, {peak} KiB peak while stalled"
    );
    assert!(
        peak < rss0 + 64 * 1024,
        "RSS grew by {} KiB while the client did not read",
        peak - rss0
    );
    // Then every row arrives whole, and the session is still in step.
    let a = c.answer(false).unwrap();
    assert!(a.error.is_none(), "{:?}", a.error);
    match a.results.first() {
        Some(Outcome::Rows(rows)) => {
            assert_eq!(rows.len(), 200);
            assert!(rows
                .iter()
                .all(|r| r[1].as_deref().map(str::len) == Some(1_000_000)));
        }
        other => panic!("{other:?}"),
    }
    let a = c.query("SELECT 'after_big'").unwrap();
    assert!(a.error.is_none(), "{a:?}");
    let peak = peak.max(db.w.gw.rss_kib());
    assert!(peak < rss0 + 64 * 1024, "RSS grew by {} KiB", peak - rss0);
}

#[test]
fn in_the_tunnel_without_a_lease_every_connection_needs_a_fresh_code() {
    let Some(lab) = common::netns::enter(
        "in_the_tunnel_without_a_lease_every_connection_needs_a_fresh_code",
        1,
    ) else {
        return;
    };
    if !myworld::tools() {
        return;
    }
    let (_server, w) = myworld::tunnel(lab, APP_PASSWORD, |b| b.auth_line("mfa_lease = \"0s\""));
    let _device = w.connect(0);
    // No password at all: refused.
    let out = mariadb_in_tunnel(&w, 0, None, "SELECT 1");
    assert!(!out.status.success(), "admitted without a code");
    assert!(stderr(&out).contains("1045"), "{}", stderr(&out));
    // The current code sent in the clear (a handshake response naming
    // mysql_clear_password) must not admit: only a scramble proves it.
    let code = common::totp(&w.secret);
    let reply = clear_password_handshake(&w, 0, &code);
    // Answered with a switch to a scramble plugin (or a refusal), never OK.
    assert!(
        reply.starts_with("fe mysql_native_password")
            || reply.starts_with("fe caching_sha2_password")
            || reply.starts_with("ff"),
        "a cleartext code was not sent to a scramble: {reply}"
    );
    // The current code admits once.
    let out = mariadb_in_tunnel(&w, 0, Some(&code), "SELECT 'by_code'");
    assert!(out.status.success(), "{}\n{}", stderr(&out), w.gw.stderr());
    assert_eq!(stdout(&out).trim(), "by_code");
    // The same code again: refused (no lease, and a code is good once).
    let out = mariadb_in_tunnel(&w, 0, Some(&code), "SELECT 'reused'");
    assert!(!out.status.success(), "a used code was accepted again");
    assert!(stderr(&out).contains("1045"), "{}", stderr(&out));
    assert!(stderr(&out).contains("already used"), "{}", stderr(&out));
    // Nor does the password of the database login get anyone in.
    let out = mariadb_in_tunnel(&w, 0, Some(APP_PASSWORD), "SELECT 1");
    assert!(!out.status.success(), "the database password was accepted");
    let starts = w.gw.events("db.session.start");
    assert_eq!(starts.len(), 1, "{starts:?}");
    assert_eq!(starts[0]["admitted_by"], "code");
    assert!(!w.gw.stderr_all().contains(&format!("\"{code}\"")));
}

/// A raw handshake response from client namespace `client` to the tunnel
/// port that names `mysql_clear_password` and carries `code` in the clear;
/// returns the first answer as "HEX-of-first-byte rest" ("00" = OK).
fn clear_password_handshake(w: &common::netns::WgWorld, client: usize, code: &str) -> String {
    const SCRIPT: &str = r#"
import socket, struct, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=20)
def read():
    h = b""
    while len(h) < 4:
        c = s.recv(4 - len(h))
        if not c:
            return None
        h += c
    n = h[0] | h[1] << 8 | h[2] << 16
    p = b""
    while len(p) < n:
        c = s.recv(n - len(p))
        if not c:
            return None
        p += c
    return p
read()
# LONG_PASSWORD | CONNECT_WITH_DB | PROTOCOL_41 | SECURE_CONNECTION | PLUGIN_AUTH
caps = 0x1 | 0x8 | 0x200 | 0x8000 | 0x80000
code = sys.argv[3].encode() + b"\0"
body = struct.pack("<IIB23x", caps, 1 << 24, 45) + b"app\0" + bytes([len(code)]) + code \
    + b"app\0" + b"mysql_clear_password\0"
s.sendall(struct.pack("<I", len(body))[:3] + bytes([1]) + body)
r = read()
print("closed" if r is None else r[:1].hex() + " " + r[1:].decode("latin1", "replace"))
"#;
    let mut c = std::process::Command::new("python3");
    c.args([
        "-c",
        SCRIPT,
        common::netns::TUNNEL_GATEWAY,
        &myworld::TUNNEL_PORT.to_string(),
        code,
    ]);
    let mut c = common::netns::in_ns(w.lab.client(client), &c);
    c.stdin(Stdio::null());
    let out = run_with_timeout(&mut c, Duration::from_secs(60)).expect("python finished");
    assert!(out.status.success(), "{}", stderr(&out));
    stdout(&out).trim().to_string()
}

#[test]
fn a_statement_too_large_to_record_never_runs() {
    if !myworld::tools() {
        return;
    }
    // The server would take it (64 MiB packets): only gatehouse stops it.
    let opts = common::mariadb::MariaOptions {
        args: vec!["--max-allowed-packet=64M".into()],
        ..Default::default()
    };
    let db = myworld::start_with(APP_PASSWORD, opts, |b, _| b);
    let mut c = db.login();
    // Just under the limit: runs and is recorded.
    let body = "a".repeat(15 << 20);
    let a = c
        .query(&format!("INSERT INTO t (id, body) VALUES (1, '{body}')"))
        .unwrap();
    assert!(a.error.is_none(), "{:?}", a.error);
    // Over it (two packets on the wire): refused, never at the server.
    let body = "b".repeat(17 << 20);
    let r = c.query(&format!("INSERT INTO t (id, body) VALUES (2, '{body}')"));
    match r {
        Ok(a) => {
            let e = a.error.expect("an ERR");
            assert_eq!(e.code, 1153, "{e:?}");
            assert!(e.message.contains("cannot be recorded"), "{e:?}");
        }
        // Closed before the client could read the ERR: also refused.
        Err(e) => eprintln!("connection closed: {e}"),
    }
    drop(c);
    assert_eq!(db.db.sql("SELECT GROUP_CONCAT(id) FROM app.t"), "1");
    let end =
        db.w.gw
            .wait_for_event_named("db.session.end", Duration::from_secs(10))
            .unwrap();
    assert_eq!(end["reason"], "command too large to record", "{end}");
    let id = finished_my_recording(&db.w);
    let (_, evs) = events(&db.w, &id);
    let inserts = of_type(&evs, "statement")
        .iter()
        .filter(|e| bytes_of(&e["text"]).is_some_and(|t| t.starts_with(b"INSERT INTO t")))
        .count();
    assert_eq!(inserts, 1, "only the statement that ran is recorded");
}

#[test]
fn hostile_handshakes_close_that_connection_only() {
    if !myworld::tools() {
        return;
    }
    let db = start(|b, _| b);
    // Garbage, a handshake claiming 16 MiB, a command before any login,
    // a handshake response cut short: each closes only its own connection.
    let mut big = vec![0xff, 0xff, 0xff, 1];
    big.extend_from_slice(&[0u8; 1000]);
    let attempts: Vec<Vec<u8>> = vec![
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        big,
        [&[17u8, 0, 0, 0, 0x03][..], b"SELECT 'early'"].concat(),
        vec![40, 0, 0, 1, 0x0d, 0xa2, 0x08, 0x00],
    ];
    for a in attempts {
        let mut s = std::net::TcpStream::connect(db.addr()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
        let _ = s.write_all(&a);
        let _ = s.shutdown(std::net::Shutdown::Write);
        let mut buf = Vec::new();
        use std::io::Read;
        let _ = s.read_to_end(&mut buf);
        assert!(buf.len() < 4096, "{} bytes back", buf.len());
    }
    assert_eq!(db.sql("SELECT 'alive'").trim(), "alive");
    assert_eq!(db.w.gw.events("db.session.start").len(), 1);
    assert!(!db.w.gw.stderr_all().contains("early"));
}

#[test]
fn the_greeting_follows_the_server_when_its_version_changes() {
    if !myworld::tools() {
        return;
    }
    let version = |v: &str| common::mariadb::MariaOptions {
        args: vec![format!("--version=10.11.99-gh-{v}")],
        ..Default::default()
    };
    let mut db = myworld::start_with(APP_PASSWORD, version("first"), |b, _| b);
    let via = Greeting::parse(&raw_greeting(&db.addr())).expect("a greeting");
    assert!(via.version.contains("gh-first"), "{}", via.version);
    // The server is upgraded in place.
    db.db.restart(&version("second"));
    let direct = Greeting::parse(&raw_greeting(&db.db.address())).unwrap();
    assert!(direct.version.contains("gh-second"), "{}", direct.version);
    // A session with the new server teaches gatehouse its version: the
    // next greeting is the new one (within a few connections at most).
    let mut seen = Vec::new();
    for _ in 0..5 {
        let mut c = db.login();
        let a = c.query("SELECT VERSION()").unwrap();
        assert!(a.error.is_none(), "{a:?}");
        drop(c);
        let v = Greeting::parse(&raw_greeting(&db.addr())).unwrap().version;
        if v == direct.version {
            return;
        }
        seen.push(v);
    }
    panic!(
        "gatehouse still greets with {seen:?}, the server is {}",
        direct.version
    );
}

#[test]
fn sysbench_with_server_side_prepared_statements_runs_through_the_forward() {
    if !myworld::tools() || !common::require_tools(&["sysbench"]) {
        return;
    }
    let db = start(|b, _| b);
    let bench = |args: &[&str]| {
        let mut c = std::process::Command::new("sysbench");
        c.args(args)
            .args([
                "--db-driver=mysql",
                "--mysql-host=127.0.0.1",
                &format!("--mysql-port={}", db.lport),
                "--mysql-user=app",
                &format!("--mysql-password={}", myworld::IGNORED_PASSWORD),
                "--mysql-db=app",
                "--tables=1",
                "--table-size=1000",
                // Server-side prepared statements (COM_STMT_*), sysbench's
                // default where the server supports them; said explicitly.
                "--db-ps-mode=auto",
            ])
            .stdin(Stdio::null());
        run_with_timeout(&mut c, Duration::from_secs(120)).expect("sysbench finished")
    };
    let out = bench(&["oltp_read_only", "prepare"]);
    assert!(
        out.status.success(),
        "prepare: {}{}",
        stdout(&out),
        stderr(&out)
    );
    let out = bench(&["oltp_read_only", "--threads=4", "--time=3", "run"]);
    let text = stdout(&out);
    assert!(out.status.success(), "run: {text}{}", stderr(&out));
    let tx: f64 = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("transactions:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    eprintln!("sysbench oltp_read_only, 4 threads, 3 s through the forward: {tx} transactions");
    assert!(tx > 10.0, "{text}");
    let ignored = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("ignored errors:"))
        .and_then(|v| v.split_whitespace().next());
    assert_eq!(ignored, Some("0"), "{text}");
    // Every sysbench connection was a session, and its prepared
    // statements' executions were recorded with their typed parameters.
    assert!(db.w.gw.events("db.session.start").len() >= 5);
    let ids = finished_my_recordings(&db.w, 5);
    let typed_binds = ids
        .iter()
        .map(|id| {
            let (_, evs) = events(&db.w, id);
            of_type(&evs, "bind")
                .iter()
                .filter(|b| {
                    b["params"].as_array().is_some_and(|p| !p.is_empty())
                        && b["types"].as_array().is_some_and(|t| !t.is_empty())
                })
                .count()
        })
        .sum::<usize>();
    assert!(typed_binds > 100, "{typed_binds} typed binds recorded");
}
