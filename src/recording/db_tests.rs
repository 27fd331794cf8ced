//! Database session recordings (`kind = "postgres"` and `"mysql"`): the query log
//! round-trips exactly, the auditor's views render and escape it, and it
//! has the same chain, verify and backpressure as a terminal session.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use super::*;
use crate::recording::query::{CopyDirection, DbEvent, Param};

fn pg() -> RecordingKind {
    RecordingKind::Postgres {
        database: "app".into(),
    }
}

fn pg_meta() -> RecordingMeta {
    RecordingMeta {
        login: "app_ro".into(),
        target: "db-1".into(),
        ..meta(pg(), false)
    }
}

/// Every variant, with the awkward cases: binary parameters holding every
/// byte value, a statement that is not UTF-8, text with control bytes.
fn every_event() -> Vec<DbEvent> {
    let all_bytes: Vec<u8> = (0..=255u8).collect();
    vec![
        DbEvent::Statement {
            text: b"SELECT * FROM accounts\n WHERE id = $1 AND name = 'x'".to_vec(),
            parse: Some("s1".into()),
        },
        DbEvent::Bind {
            statement: "s1".into(),
            portal: String::new(),
            params: vec![
                Param::Text(b"42".to_vec()),
                Param::Null,
                Param::Binary(all_bytes.clone()),
                Param::Binary(Vec::new()),
                Param::Text(vec![b'a', 0xff, 0xfe, 0]),
                Param::Text(Vec::new()),
            ],
            types: Vec::new(),
        },
        DbEvent::Result {
            tag: Some("SELECT 3".into()),
            rows: Some(3),
            sqlstate: None,
            message: None,
            micros: 5_912,
        },
        DbEvent::Statement {
            text: b"SELECT 1; -- \xff\xfe not UTF-8".to_vec(),
            parse: None,
        },
        DbEvent::Statement {
            text: all_bytes,
            parse: Some(String::new()),
        },
        DbEvent::Result {
            tag: None,
            rows: None,
            sqlstate: Some("42P01".into()),
            message: Some("relation \"nope\" does not exist".into()),
            micros: 310,
        },
        DbEvent::Copy {
            direction: CopyDirection::In,
            bytes: 104_857_600,
        },
        DbEvent::Copy {
            direction: CopyDirection::Out,
            bytes: 0,
        },
        DbEvent::Cancel { forwarded: true },
        DbEvent::Cancel { forwarded: false },
        DbEvent::Notice {
            severity: "NOTICE".into(),
            message: "table \"t\" does not exist, skipping".into(),
        },
    ]
}

async fn finished_pg(f: &Fixture, events: &[DbEvent]) -> String {
    let r = f.rec.start(pg_meta()).await.unwrap();
    for ev in events {
        r.db(ev.clone()).await.unwrap();
    }
    r.finish(None, "client closed the connection", 10, 20)
        .await
        .unwrap();
    r.id().to_string()
}

/// The database events of a recording, decrypted with the ssh key.
fn db_events(f: &Fixture, id: &str) -> Vec<DbEvent> {
    let stored = reader::open(&f.root, id).unwrap();
    let ids = reader::load_identities(&f.keys.ssh).unwrap();
    let mut out = Vec::new();
    reader::read_all(&stored, &ids, |seg| {
        for e in &seg.events {
            if let reader::Event::Db { ev, .. } = e {
                out.push((**ev).clone());
            }
        }
        Ok(())
    })
    .unwrap();
    out
}

fn export_lines(f: &Fixture, id: &str) -> Vec<Value> {
    let stored = reader::open(&f.root, id).unwrap();
    let ids = reader::load_identities(&f.keys.x25519).unwrap();
    let mut out = Vec::new();
    export::export(&stored, &ids, &mut out).unwrap();
    String::from_utf8(out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}")))
        .collect()
}

#[tokio::test]
async fn a_postgres_recording_round_trips_every_event_exactly() {
    let f = fixture();
    let events = every_event();
    let id = finished_pg(&f, &events).await;
    assert_eq!(db_events(&f, &id), events);

    // meta.json: kind postgres, no content (no SQL, no database name).
    let dir = f.root.join(&id);
    let meta_text = std::fs::read_to_string(dir.join(format::META_FILE)).unwrap();
    assert_eq!(stored_meta(&dir).kind, format::Kind::Postgres);
    assert!(meta_text.contains("\"kind\": \"postgres\""), "{meta_text}");
    for secret in ["SELECT", "accounts", "42P01", "\"app\""] {
        assert!(!meta_text.contains(secret), "{secret} in meta.json");
    }
    let manifest_text = std::fs::read_to_string(dir.join(format::MANIFEST_FILE)).unwrap();
    assert!(!manifest_text.contains("SELECT"));

    // The sealed header names the database; the end is recorded.
    let plain = decrypt_all_raw(&f, &id);
    let plain = String::from_utf8_lossy(&plain);
    let header: Value = serde_json::from_str(plain.lines().next().unwrap()).unwrap();
    assert_eq!(header["gatehouse"]["kind"], "postgres");
    assert_eq!(header["gatehouse"]["database"], "app");
    assert_eq!(header["version"], 2);
    let m = stored_meta(&dir);
    assert_eq!(m.end.unwrap().reason, "client closed the connection");
    // The statement is stored as text where it is text.
    assert!(
        plain.contains(r#"[0."#) && plain.contains(r#","q",{"text":"SELECT * FROM accounts\n WHERE id = $1 AND name = 'x'","parse":"s1"}]"#),
        "{plain}"
    );

    // list: kind postgres, from the plaintext metadata alone.
    let listed = reader::list(&f.root).unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].meta.as_ref().unwrap().kind.as_str(), "postgres");
    let mut out = Vec::new();
    cli::list_to(&f.root, None, None, None, false, &mut out).unwrap();
    let out = String::from_utf8(out).unwrap();
    let row = out.lines().find(|l| l.starts_with(&id)).unwrap();
    assert!(row.ends_with(" postgres"), "{row}");
    assert!(row.contains("app_ro") && row.contains("db-1"), "{row}");
}

#[tokio::test]
async fn show_renders_statement_parameters_and_result() {
    let f = fixture();
    let id = finished_pg(&f, &every_event()).await;
    let text = show_text(&f, &id);
    let started = stored_meta(&f.root.join(&id)).started_unix_ms;
    let day = format::rfc3339_ms(started)[..10].to_string();
    let lines: Vec<&str> = text.lines().collect();
    let at = |needle: &str| {
        lines
            .iter()
            .position(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no {needle:?} in\n{text}"))
    };
    assert!(text.contains("  kind:     postgres"), "{text}");
    assert!(text.contains("  database: app"), "{text}");
    // One block: time, statement lines, parameters, result with duration.
    let stmt = at("parse statement \"s1\"");
    assert!(lines[stmt].starts_with(&day), "{}", lines[stmt]);
    assert!(lines[stmt].contains(" UTC  "), "{}", lines[stmt]);
    // UTC with milliseconds: "YYYY-MM-DD HH:MM:SS.mmm UTC".
    assert_eq!(lines[stmt].find(" UTC"), Some(23), "{}", lines[stmt]);
    assert_eq!(lines[stmt + 1], "  | SELECT * FROM accounts");
    assert_eq!(lines[stmt + 2], "  |  WHERE id = $1 AND name = 'x'");
    let bind = at("bind statement \"s1\" portal \"\"");
    assert_eq!(lines[bind + 1], "  $1 = '42'");
    assert_eq!(lines[bind + 2], "  $2 = NULL");
    assert!(
        lines[bind + 3].starts_with("  $3 = binary (base64) AAECAwQF"),
        "{}",
        lines[bind + 3]
    );
    assert_eq!(lines[bind + 4], "  $4 = binary (base64) ");
    assert_eq!(lines[bind + 5], "  $5 = text, not UTF-8 (base64) Yf/+AA==");
    assert_eq!(lines[bind + 6], "  $6 = ''");
    assert!(lines[at("result: SELECT 3")].ends_with("result: SELECT 3 (5.912 ms)"));
    assert!(lines[at("result: ERROR")]
        .ends_with("result: ERROR 42P01: relation \"nope\" does not exist (0.310 ms)"));
    at("  query");
    at("not UTF-8: shown lossily");
    at("parse (unnamed statement)");
    at("COPY in 104857600 bytes");
    at("COPY out 0 bytes");
    at("cancel request (forwarded to the server)");
    at("cancel request (not forwarded)");
    at("NOTICE: table \"t\" does not exist, skipping");
    assert!(lines[at("end: ")].ends_with("end: client closed the connection"));
    // No control byte of the every-byte statement reached the output.
    assert!(
        !text.chars().any(|c| c.is_control() && c != '\n'),
        "{text:?}"
    );
}

#[tokio::test]
async fn hostile_sql_is_escaped_in_show() {
    let f = fixture();
    let hostile = "DROP TABLE audit; /*\x1b[2K\r\x1b[1A\x1b]0;pwned\x07\u{202e}*/\n\
                   2099-01-01 00:00:00.000 UTC  result: ERROR 42501: permission denied (0.1 ms)";
    let events = vec![
        DbEvent::Statement {
            text: hostile.as_bytes().to_vec(),
            parse: Some("x\x1b[2J".into()),
        },
        DbEvent::Bind {
            statement: "x\x1b[2J".into(),
            portal: "p\r".into(),
            params: vec![Param::Text(b"a\x1b[31m'\n  $2 = 'forged".to_vec())],
            types: Vec::new(),
        },
        DbEvent::Result {
            tag: Some("DROP\x1b[2K TABLE".into()),
            rows: None,
            sqlstate: None,
            message: None,
            micros: 1,
        },
        DbEvent::Result {
            tag: None,
            rows: None,
            sqlstate: Some("XX\x1b".into()),
            message: Some("m\x1b]52;c;cGF5bG9hZA==\x07".into()),
            micros: 1,
        },
        DbEvent::Notice {
            severity: "WARNING\r".into(),
            message: "\x1b[8m".into(),
        },
    ];
    let id = finished_pg(&f, &events).await;
    // Recorded exactly...
    assert_eq!(db_events(&f, &id), events);
    // ... shown escaped.
    let text = show_text(&f, &id);
    for c in ['\x1b', '\r', '\x07', '\u{202e}'] {
        assert!(!text.contains(c), "{c:?} reached the terminal:\n{text:?}");
    }
    assert!(
        text.contains("  | DROP TABLE audit; /*\\u{1b}[2K\\r\\u{1b}[1A"),
        "{text}"
    );
    // The statement's second line cannot pass for a result line.
    assert!(
        text.contains("\n  | 2099-01-01 00:00:00.000 UTC  result: ERROR 42501"),
        "{text}"
    );
    assert!(!text.lines().any(|l| l.starts_with("2099-01-01")));
    // A parameter cannot forge the next parameter line.
    assert!(
        text.contains("  $1 = 'a\\u{1b}[31m''\\n  $2 = ''forged'"),
        "{text}"
    );
    assert!(!text.lines().any(|l| l.starts_with("  $2")), "{text}");
    // play prints the same escaped transcript.
    let stored = reader::open(&f.root, &id).unwrap();
    let ids = reader::load_identities(&f.keys.ssh).unwrap();
    let mut played = Vec::new();
    export::play(&stored, &ids, 1.0, Duration::ZERO, &mut played).unwrap();
    assert_eq!(String::from_utf8(played).unwrap(), text);
}

#[tokio::test]
async fn export_writes_json_lines_with_time_code_and_fields() {
    let f = fixture();
    let events = every_event();
    let id = finished_pg(&f, &events).await;
    let lines = export_lines(&f, &id);
    let head = &lines[0];
    assert_eq!(head["type"], "recording");
    assert_eq!(head["kind"], "postgres");
    assert_eq!(head["database"], "app");
    assert_eq!(head["id"], id.as_str());
    let evs: Vec<&Value> = lines[1..].iter().filter(|v| v["code"] != "end").collect();
    assert_eq!(evs.len(), events.len());
    for (v, ev) in evs.iter().zip(&events) {
        assert_eq!(v["code"], ev.code(), "{v}");
        assert_eq!(v["type"], ev.name(), "{v}");
        assert!(v["t"].as_f64().unwrap() >= 0.0, "{v}");
        let time = v["time"].as_str().unwrap();
        assert!(time.ends_with('Z') && time.len() == 24, "{time}");
        // The fields are the stored object: it reads back as the event.
        let mut obj = (*v).clone();
        for k in ["code", "type", "t", "time"] {
            obj.as_object_mut().unwrap().remove(k);
        }
        assert_eq!(DbEvent::from_line(ev.code(), obj).as_ref(), Some(ev), "{v}");
    }
    assert_eq!(
        evs[0]["text"],
        "SELECT * FROM accounts\n WHERE id = $1 AND name = 'x'"
    );
    assert_eq!(evs[1]["params"][0], serde_json::json!({"text": "42"}));
    assert_eq!(evs[1]["params"][1], Value::Null);
    assert!(evs[1]["params"][2]["base64"].is_string());
    assert!(evs[3]["text"]["base64"].is_string());
    assert_eq!(evs[2]["rows"], 3);
    assert_eq!(evs[5]["sqlstate"], "42P01");
    let end = lines.last().unwrap();
    assert_eq!(end["code"], "end");
    assert_eq!(end["end"]["reason"], "client closed the connection");
    // show --json is the same stream.
    let shown = show_json(&f, &id, &f.keys.ssh);
    assert_eq!(shown[1..], lines[1..]);
}

#[tokio::test]
async fn verify_passes_and_a_tampered_segment_fails_for_a_postgres_recording() {
    let f = fixture();
    f.rec
        .set_segment_interval_for_tests(Duration::from_millis(50));
    let r = f.rec.start(pg_meta()).await.unwrap();
    let dir = f.root.join(r.id());
    for i in 0..3 {
        r.db(DbEvent::Statement {
            text: format!("SELECT {i}").into_bytes(),
            parse: None,
        })
        .await
        .unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while manifest(&dir).len() < i + 2 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    r.finish(None, "client closed the connection", 0, 0)
        .await
        .unwrap();
    let id = r.id().to_string();
    assert!(manifest(&dir).len() >= 4, "{:?}", manifest(&dir));
    assert!(verify_problems(&f, &id).is_empty());
    let v = reader::verify(&reader::open(&f.root, &id).unwrap());
    assert!(v.ok() && v.finished);
    assert_eq!(db_events(&f, &id).len(), 3);

    // Flip one byte of segment 2.
    let scratch = tempfile::tempdir().unwrap();
    let root = scratch.path().join("flip");
    copy_dir(&dir, &root.join(&id));
    let seg = root.join(&id).join(format::segment_file(2));
    let mut bytes = std::fs::read(&seg).unwrap();
    let i = bytes.len() - 20;
    bytes[i] ^= 1;
    std::fs::write(&seg, bytes).unwrap();
    let p = problems(&root, &id);
    assert!(
        p.iter()
            .any(|p| p.contains("segment 2 (000002.age): altered")),
        "{p:?}"
    );
    // ... and the tools refuse to show it.
    let stored = reader::open(&root, &id).unwrap();
    let ids = reader::load_identities(&f.keys.ssh).unwrap();
    let err = export::show(&stored, &ids, false, &mut Vec::new()).unwrap_err();
    assert!(matches!(err, ReadError::Tampered { .. }), "{err}");
    let err = export::export(&stored, &ids, &mut Vec::new()).unwrap_err();
    assert!(matches!(err, ReadError::Tampered { .. }), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn db_waits_when_the_throttle_is_on_and_the_queue_stays_bounded() {
    let f = fixture();
    const BPS: u64 = 4 * 1024 * 1024;
    f.rec.set_throttle_for_tests(Some(BPS));
    let r = f.rec.start(pg_meta()).await.unwrap();
    // Statements of 64 KiB: the message queue alone would let 32 of them
    // (2 MiB) wait; the byte budget lets 1 MiB.
    let stmt: Vec<u8> = (0..64 * 1024).map(|i| b'a' + (i % 26) as u8).collect();
    let total = 8 * 1024 * 1024;
    let n = total / stmt.len();
    let t0 = Instant::now();
    for _ in 0..n {
        r.db(DbEvent::Statement {
            text: stmt.clone(),
            parse: None,
        })
        .await
        .unwrap();
    }
    let fed = t0.elapsed();
    r.finish(None, "client closed the connection", 0, 0)
        .await
        .unwrap();
    let buffered = (writer::DB_BUDGET + 512 * 1024) as f64;
    let min = (total as f64 - buffered) / BPS as f64 * 0.8;
    assert!(
        fed.as_secs_f64() >= min,
        "fed 8 MiB of statements in {fed:?}: not slowed (min {min:.2}s)"
    );
    let hw = r.queue_high_water();
    assert!(hw <= writer::DB_BUDGET as u64, "queue held {hw} bytes");
    // Nothing dropped.
    let got = db_events(&f, r.id());
    assert_eq!(got.len(), n);
    assert!(got
        .iter()
        .all(|e| matches!(e, DbEvent::Statement { text, .. } if *text == stmt)));
}

#[tokio::test]
async fn an_event_over_the_bound_is_refused_and_the_recording_goes_on() {
    let f = fixture();
    let r = f.rec.start(pg_meta()).await.unwrap();
    let huge = DbEvent::Bind {
        statement: String::new(),
        portal: String::new(),
        params: vec![Param::Binary(vec![7; query::MAX_EVENT_BYTES + 1])],
        types: Vec::new(),
    };
    let err = r.db(huge).await.unwrap_err();
    assert!(matches!(err, RecordingError::TooLarge { .. }), "{err:?}");
    assert!(err.to_string().contains("too large"), "{err}");
    let ok = DbEvent::Statement {
        text: b"SELECT 1".to_vec(),
        parse: None,
    };
    r.db(ok.clone()).await.unwrap();
    r.finish(None, "closed", 0, 0).await.unwrap();
    assert_eq!(db_events(&f, r.id()), vec![ok]);
    // After the end, db() is refused rather than waiting.
    let err = r
        .db(DbEvent::Cancel { forwarded: false })
        .await
        .unwrap_err();
    assert!(matches!(err, RecordingError::Closed), "{err:?}");
}

#[tokio::test]
async fn a_write_failure_fails_db_closed_and_keeps_sealed_statements() {
    let f = fixture();
    f.rec
        .set_segment_interval_for_tests(Duration::from_millis(50));
    let r = f.rec.start(pg_meta()).await.unwrap();
    let dir = f.root.join(r.id());
    let first = DbEvent::Statement {
        text: b"SELECT 'sealed'".to_vec(),
        parse: None,
    };
    r.db(first.clone()).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while manifest(&dir).len() < 2 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(manifest(&dir).len(), 2);
    // The directory disappears under the writer: the next seal fails.
    let moved = f.root.join("moved-away");
    std::fs::rename(&dir, &moved).unwrap();
    let mut err = None;
    for _ in 0..300 {
        let ev = DbEvent::Statement {
            text: b"SELECT 'lost'".to_vec(),
            parse: None,
        };
        if let Err(e) = r.db(ev).await {
            err = Some(e);
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let err = err.expect("the session is told");
    assert!(matches!(err, RecordingError::Failed { .. }), "{err:?}");
    assert!(err.to_string().contains("cannot continue unrecorded"));
    // Every later event is refused at once, not left waiting.
    let later = tokio::time::timeout(
        Duration::from_secs(5),
        r.db(DbEvent::Cancel { forwarded: true }),
    )
    .await
    .expect("db() does not wait for a writer that is gone");
    assert!(later.is_err());
    std::fs::rename(&moved, &dir).unwrap();
    let v = reader::verify(&reader::open(&f.root, r.id()).unwrap());
    assert!(v.ok(), "{v:?}");
    assert_eq!(db_events(&f, r.id()), vec![first]);
}

// ---------------------------------------------------------------------
// MySQL recordings (`kind = "mysql"`): the same log, in MySQL's terms.
// ---------------------------------------------------------------------

fn my(database: &str) -> RecordingKind {
    RecordingKind::Mysql {
        database: database.into(),
    }
}

fn my_meta(database: &str) -> RecordingMeta {
    RecordingMeta {
        login: "app_ro".into(),
        target: "db-my".into(),
        ..meta(my(database), false)
    }
}

async fn finished_with(f: &Fixture, m: RecordingMeta, events: &[DbEvent]) -> String {
    let r = f.rec.start(m).await.unwrap();
    for ev in events {
        r.db(ev.clone()).await.unwrap();
    }
    r.finish(None, "client closed the connection", 10, 20)
        .await
        .unwrap();
    r.id().to_string()
}

async fn finished_my(f: &Fixture, events: &[DbEvent]) -> String {
    finished_with(f, my_meta("app"), events).await
}

fn text(b: &str) -> Param {
    Param::Text(b.as_bytes().to_vec())
}

/// A MySQL session as the proxy records it (COM_STMT_PREPARE, EXECUTE with
/// types, SEND_LONG_DATA, COM_QUERY with OK / result set / ERR, INIT_DB, a
/// KILL, refusals), plus every other variant so that each kind of event
/// round-trips in a mysql recording.
fn every_mysql_event() -> Vec<DbEvent> {
    let all_bytes: Vec<u8> = (0..=255u8).collect();
    vec![
        DbEvent::Statement {
            text: b"SELECT * FROM accounts WHERE id = ? AND name = ?".to_vec(),
            parse: Some(String::new()),
        },
        DbEvent::Result {
            tag: Some("PREPARE 7".into()),
            rows: None,
            sqlstate: None,
            message: None,
            micros: 310,
        },
        DbEvent::Bind {
            statement: "7".into(),
            portal: "long data 2".into(),
            params: vec![Param::Binary(all_bytes.clone())],
            types: Vec::new(),
        },
        DbEvent::Bind {
            statement: "7".into(),
            portal: String::new(),
            params: vec![
                text("42"),
                text("O'Brien"),
                Param::Null,
                text("-3.5e-7"),
                text("2026-12-07 02:23:03"),
                Param::Binary(all_bytes.clone()),
                Param::Text(vec![b'a', 0xff, 0]),
                text("18446744073709551615"),
            ],
            types: vec![
                "LONGLONG".into(),
                "VAR_STRING".into(),
                "NULL".into(),
                "DOUBLE".into(),
                "DATETIME".into(),
                "BLOB".into(),
                "STRING".into(),
                "unsigned LONGLONG".into(),
            ],
        },
        DbEvent::Result {
            tag: Some("SELECT".into()),
            rows: Some(3),
            sqlstate: None,
            message: None,
            micros: 5_912,
        },
        DbEvent::Statement {
            text: b"UPDATE accounts SET seen = 1;\nSELECT 1".to_vec(),
            parse: None,
        },
        DbEvent::Result {
            tag: Some("OK".into()),
            rows: Some(2),
            sqlstate: None,
            message: None,
            micros: 1_200,
        },
        DbEvent::Result {
            tag: Some("SELECT".into()),
            rows: Some(1),
            sqlstate: None,
            message: None,
            micros: 1_300,
        },
        DbEvent::Statement {
            text: b"SELECT * FROM nope".to_vec(),
            parse: None,
        },
        DbEvent::Result {
            tag: Some("ERROR 1146".into()),
            rows: None,
            sqlstate: Some("42S02".into()),
            message: Some("Table 'app.nope' doesn't exist".into()),
            micros: 200,
        },
        DbEvent::Statement {
            text: b"USE `app`".to_vec(),
            parse: None,
        },
        DbEvent::Statement {
            text: b"SELECT 1; -- \xff\xfe not UTF-8".to_vec(),
            parse: None,
        },
        DbEvent::Cancel { forwarded: true },
        DbEvent::Cancel { forwarded: false },
        DbEvent::Refused {
            command: "COM_CHANGE_USER".into(),
            reason: "it would switch the database login behind the role's back".into(),
        },
        DbEvent::Refused {
            command: "LOAD DATA LOCAL INFILE".into(),
            reason: "the server could read the client's files".into(),
        },
        DbEvent::Notice {
            severity: "Warning".into(),
            message: "1265 Data truncated for column 'a'".into(),
        },
        DbEvent::Copy {
            direction: CopyDirection::In,
            bytes: 7,
        },
    ]
}

#[tokio::test]
async fn a_mysql_recording_round_trips_every_event_with_types_and_refusals() {
    let f = fixture();
    let events = every_mysql_event();
    // Every variant is in the list.
    for name in [
        "statement",
        "bind",
        "result",
        "copy",
        "cancel",
        "notice",
        "refused",
    ] {
        assert!(events.iter().any(|e| e.name() == name), "{name}");
    }
    let id = finished_my(&f, &events).await;
    // Read back exactly, types and refusals included.
    assert_eq!(db_events(&f, &id), events);

    // meta.json: kind mysql, no content.
    let dir = f.root.join(&id);
    let meta_text = std::fs::read_to_string(dir.join(format::META_FILE)).unwrap();
    assert_eq!(stored_meta(&dir).kind, format::Kind::Mysql);
    assert!(meta_text.contains("\"kind\": \"mysql\""), "{meta_text}");
    for secret in [
        "SELECT",
        "accounts",
        "LONGLONG",
        "COM_CHANGE_USER",
        "\"app\"",
    ] {
        assert!(!meta_text.contains(secret), "{secret} in meta.json");
    }
    let plain = decrypt_all_raw(&f, &id);
    let plain = String::from_utf8_lossy(&plain);
    let header: Value = serde_json::from_str(plain.lines().next().unwrap()).unwrap();
    assert_eq!(header["gatehouse"]["kind"], "mysql");
    assert_eq!(header["gatehouse"]["database"], "app");

    // export: the same events, field for field, types and refusals included.
    let lines = export_lines(&f, &id);
    assert_eq!(lines[0]["type"], "recording");
    assert_eq!(lines[0]["kind"], "mysql");
    assert_eq!(lines[0]["database"], "app");
    let evs: Vec<&Value> = lines[1..].iter().filter(|v| v["code"] != "end").collect();
    assert_eq!(evs.len(), events.len());
    for (v, ev) in evs.iter().zip(&events) {
        assert_eq!(v["code"], ev.code(), "{v}");
        assert_eq!(v["type"], ev.name(), "{v}");
        let mut obj = (*v).clone();
        for k in ["code", "type", "t", "time"] {
            obj.as_object_mut().unwrap().remove(k);
        }
        assert_eq!(DbEvent::from_line(ev.code(), obj).as_ref(), Some(ev), "{v}");
    }
    assert_eq!(
        evs[3]["types"],
        serde_json::json!([
            "LONGLONG",
            "VAR_STRING",
            "NULL",
            "DOUBLE",
            "DATETIME",
            "BLOB",
            "STRING",
            "unsigned LONGLONG"
        ])
    );
    assert_eq!(evs[3]["statement"], "7");
    assert_eq!(evs[3]["params"][0], serde_json::json!({"text": "42"}));
    // A Bind without types has no `types` field (as for PostgreSQL).
    assert!(evs[2].get("types").is_none(), "{}", evs[2]);
    assert_eq!(evs[2]["portal"], "long data 2");
    let refused: Vec<&&Value> = evs.iter().filter(|v| v["code"] == "refused").collect();
    assert_eq!(refused.len(), 2);
    assert_eq!(refused[0]["type"], "refused");
    assert_eq!(refused[0]["command"], "COM_CHANGE_USER");
    assert_eq!(
        refused[1]["reason"],
        "the server could read the client's files"
    );
    // show --json is the same stream.
    let shown = show_json(&f, &id, &f.keys.ssh);
    assert_eq!(shown[1..], lines[1..]);
}

#[tokio::test]
async fn show_renders_a_mysql_transcript_in_mysql_terms() {
    let f = fixture();
    let id = finished_my(&f, &every_mysql_event()).await;
    let text = show_text(&f, &id);
    let lines: Vec<&str> = text.lines().collect();
    let at = |needle: &str| {
        lines
            .iter()
            .position(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no {needle:?} in\n{text}"))
    };
    assert!(text.contains("  kind:     mysql"), "{text}");
    assert!(text.contains("\n  protocol: MySQL\n"), "{text}");
    assert!(!text.contains("PostgreSQL"), "{text}");
    assert!(text.contains("  database: app\n"), "{text}");
    // COM_STMT_PREPARE: "prepare", the id in its result.
    let prep = at("  prepare");
    assert!(lines[prep].ends_with(" UTC  prepare"), "{}", lines[prep]);
    assert_eq!(
        lines[prep + 1],
        "  | SELECT * FROM accounts WHERE id = ? AND name = ?"
    );
    assert!(lines[prep + 2].ends_with("result: PREPARE 7 (0.310 ms)"));
    // SEND_LONG_DATA: the parameter and the statement.
    let long = at("long data for parameter 2 of statement 7");
    assert!(
        lines[long + 1].starts_with("  chunk = binary (base64) AAECAwQF"),
        "{}",
        lines[long + 1]
    );
    // EXECUTE: each parameter with its type, `?` placeholders.
    let exec = at("execute statement 7");
    assert!(
        lines[exec].ends_with(" UTC  execute statement 7"),
        "{}",
        lines[exec]
    );
    assert_eq!(lines[exec + 1], "  ?1 = 42  (LONGLONG)");
    assert_eq!(lines[exec + 2], "  ?2 = 'O''Brien'  (VAR_STRING)");
    assert_eq!(lines[exec + 3], "  ?3 = NULL  (NULL)");
    assert_eq!(lines[exec + 4], "  ?4 = -3.5e-7  (DOUBLE)");
    assert_eq!(lines[exec + 5], "  ?5 = '2026-12-07 02:23:03'  (DATETIME)");
    assert!(
        lines[exec + 6].starts_with("  ?6 = binary (base64) AAECAwQF")
            && lines[exec + 6].ends_with("  (BLOB)"),
        "{}",
        lines[exec + 6]
    );
    assert_eq!(
        lines[exec + 7],
        "  ?7 = text, not UTF-8 (base64) Yf8A  (STRING)"
    );
    assert_eq!(
        lines[exec + 8],
        "  ?8 = 18446744073709551615  (unsigned LONGLONG)"
    );
    assert!(lines[exec + 9].ends_with("result: SELECT, 3 rows (5.912 ms)"));
    assert!(!text.contains("  $1"), "{text}");
    assert!(!text.contains("bind statement"), "{text}");
    // COM_QUERY: a multi-statement with two results.
    let q = at("  | UPDATE accounts SET seen = 1;");
    assert!(lines[q - 1].ends_with(" UTC  query"), "{}", lines[q - 1]);
    assert_eq!(lines[q + 1], "  | SELECT 1");
    assert!(lines[q + 2].ends_with("result: OK, 2 rows affected (1.200 ms)"));
    assert!(lines[q + 3].ends_with("result: SELECT, 1 row (1.300 ms)"));
    // ERR: errno and SQLSTATE as the mysql client prints them.
    assert!(lines[at("result: ERROR")]
        .ends_with("result: ERROR 1146 (42S02): Table 'app.nope' doesn't exist (0.200 ms)"));
    at("  | USE `app`");
    at("not UTF-8: shown lossily");
    at("kill request (forwarded to the server)");
    at("kill request (not forwarded)");
    let r = at("refused by gatehouse: COM_CHANGE_USER");
    assert_eq!(
        lines[r + 1],
        "  reason: it would switch the database login behind the role's back"
    );
    let r = at("refused by gatehouse: LOAD DATA LOCAL INFILE");
    assert_eq!(
        lines[r + 1],
        "  reason: the server could read the client's files"
    );
    assert!(lines[at("end: ")].ends_with("end: client closed the connection"));
    assert!(
        !text.chars().any(|c| c.is_control() && c != '\n'),
        "{text:?}"
    );
}

#[tokio::test]
async fn a_postgres_transcript_names_postgresql_and_keeps_its_own_terms() {
    let f = fixture();
    let events = vec![
        DbEvent::Statement {
            text: b"SELECT $1".to_vec(),
            parse: Some(String::new()),
        },
        DbEvent::Bind {
            statement: String::new(),
            portal: String::new(),
            params: vec![text("42")],
            types: Vec::new(),
        },
        DbEvent::Result {
            tag: Some("SELECT 1".into()),
            rows: Some(1),
            sqlstate: None,
            message: None,
            micros: 1,
        },
        DbEvent::Cancel { forwarded: true },
    ];
    let id = finished_pg(&f, &events).await;
    let text = show_text(&f, &id);
    assert!(text.contains("\n  protocol: PostgreSQL\n"), "{text}");
    assert!(!text.contains("MySQL"), "{text}");
    assert!(text.contains("parse (unnamed statement)"), "{text}");
    assert!(
        text.contains("bind statement \"\" portal \"\"\n  $1 = '42'\n"),
        "{text}"
    );
    // The row count is in PostgreSQL's tag already: not repeated.
    assert!(text.contains("result: SELECT 1 (0.001 ms)"), "{text}");
    assert!(
        text.contains("cancel request (forwarded to the server)"),
        "{text}"
    );
    assert!(!text.contains("execute statement") && !text.contains("?1"));
}

#[tokio::test]
async fn hostile_types_commands_and_reasons_are_escaped_in_a_mysql_transcript() {
    let f = fixture();
    let events = vec![
        DbEvent::Statement {
            text: b"SELECT ? /*\x1b[2K\r\x1b]0;pwned\x07*/\n\
                    2099-01-01 00:00:00.000 UTC  result: OK, 0 rows affected (0.1 ms)"
                .to_vec(),
            parse: Some("x\x1b[2J".into()),
        },
        DbEvent::Bind {
            statement: "7\x1b[1A\r".into(),
            portal: "long data 1\x1b[2K\n2099".into(),
            params: vec![Param::Binary(b"\x1b[2J".to_vec())],
            types: vec!["BLOB\x07".into()],
        },
        DbEvent::Bind {
            statement: "7 OR\u{202e}".into(),
            portal: String::new(),
            params: vec![
                text("1\x1b[31m"),
                text("x'\n  ?4 = 'forged"),
                text("1 OR 1=1"),
            ],
            types: vec![
                "LONGLONG\x1b[2J".into(),
                "VAR_STRING\r\n  ?4 = 'forged'".into(),
                "LONGLONG".into(),
            ],
        },
        DbEvent::Result {
            tag: Some("ERROR 1\x1b[8m".into()),
            rows: None,
            sqlstate: Some("4\x07".into()),
            message: Some("m\x1b]52;c;cGF5bG9hZA==\x07".into()),
            micros: 1,
        },
        DbEvent::Result {
            tag: Some("OK\r".into()),
            rows: Some(1),
            sqlstate: None,
            message: None,
            micros: 1,
        },
        DbEvent::Refused {
            command: "COM_QUERY\x1b[1A\r\x1b[2K".into(),
            reason: "bad\u{202e}\n2099-01-01 00:00:00.000 UTC  result: OK\u{9b}2J".into(),
        },
    ];
    let id = finished_my(&f, &events).await;
    // Recorded exactly...
    assert_eq!(db_events(&f, &id), events);
    // ... shown escaped.
    let text = show_text(&f, &id);
    for c in ['\x1b', '\r', '\x07', '\u{202e}', '\u{9b}'] {
        assert!(!text.contains(c), "{c:?} reached the terminal:\n{text:?}");
    }
    assert!(
        !text.chars().any(|c| c.is_control() && c != '\n'),
        "{text:?}"
    );
    // No value, type, command or reason makes a line of its own.
    assert!(!text.lines().any(|l| l.starts_with("2099")), "{text}");
    assert!(!text.lines().any(|l| l.starts_with("  ?4")), "{text}");
    assert!(text.contains("prepare \"x\\u{1b}[2J\""), "{text}");
    assert!(
        text.contains(
            "long data for parameter \"1\\u{1b}[2K\\n2099\" of statement \"7\\u{1b}[1A\\r\""
        ),
        "{text}"
    );
    assert!(
        text.contains("  chunk = binary (base64) G1sySg==  (BLOB\\u{7})"),
        "{text}"
    );
    assert!(
        text.contains("execute statement \"7 OR\\u{202e}\""),
        "{text}"
    );
    // A value that is not a plain number is quoted even under a numeric type.
    assert!(
        text.contains("  ?1 = '1\\u{1b}[31m'  (LONGLONG\\u{1b}[2J)"),
        "{text}"
    );
    assert!(
        text.contains("  ?2 = 'x''\\n  ?4 = ''forged'  (VAR_STRING\\r\\n  ?4 = \\'forged\\')"),
        "{text}"
    );
    assert!(text.contains("  ?3 = '1 OR 1=1'  (LONGLONG)"), "{text}");
    assert!(
        text.contains("result: ERROR 1\\u{1b}[8m (4\\u{7}): m\\u{1b}]52;c;cGF5bG9hZA==\\u{7}"),
        "{text}"
    );
    assert!(text.contains("result: OK\\r, 1 row (0.001 ms)"), "{text}");
    assert!(
        text.contains("refused by gatehouse: COM_QUERY\\u{1b}[1A\\r\\u{1b}[2K\n"),
        "{text}"
    );
    assert!(
        text.contains(
            "\n  reason: bad\\u{202e}\\n2099-01-01 00:00:00.000 UTC  result: OK\\u{9b}2J\n"
        ),
        "{text}"
    );
    // play prints the same escaped transcript.
    let stored = reader::open(&f.root, &id).unwrap();
    let ids = reader::load_identities(&f.keys.ssh).unwrap();
    let mut played = Vec::new();
    export::play(&stored, &ids, 1.0, Duration::ZERO, &mut played).unwrap();
    assert_eq!(String::from_utf8(played).unwrap(), text);
}

#[tokio::test]
async fn a_bind_whose_types_and_params_differ_in_length_still_renders() {
    let f = fixture();
    let events = vec![
        // More types than values.
        DbEvent::Bind {
            statement: "3".into(),
            portal: String::new(),
            params: vec![text("1")],
            types: vec!["LONG".into(), "VAR_STRING".into(), "DOUBLE".into()],
        },
        // More values than types.
        DbEvent::Bind {
            statement: "4".into(),
            portal: String::new(),
            params: vec![text("1"), Param::Null, text("z")],
            types: vec!["LONG".into()],
        },
        // Types, no values at all.
        DbEvent::Bind {
            statement: "5".into(),
            portal: String::new(),
            params: Vec::new(),
            types: vec!["TINY".into()],
        },
        // Neither.
        DbEvent::Bind {
            statement: "6".into(),
            portal: String::new(),
            params: Vec::new(),
            types: Vec::new(),
        },
    ];
    let id = finished_with(&f, my_meta(""), &events).await;
    assert_eq!(db_events(&f, &id), events);
    let text = show_text(&f, &id);
    let lines: Vec<&str> = text.lines().collect();
    let at = |needle: &str| {
        lines
            .iter()
            .position(|l| l.ends_with(needle))
            .unwrap_or_else(|| panic!("no {needle:?} in\n{text}"))
    };
    // A MySQL login without a schema.
    assert!(
        text.contains("  database: (none named at login)\n"),
        "{text}"
    );
    let b = at("execute statement 3");
    assert_eq!(
        lines[b + 1..b + 5],
        [
            "  (the client sent 3 parameter types for 1 values)",
            "  ?1 = 1  (LONG)",
            "  ?2 = (no value)  (VAR_STRING)",
            "  ?3 = (no value)  (DOUBLE)",
        ]
    );
    let b = at("execute statement 4");
    assert_eq!(
        lines[b + 1..b + 5],
        [
            "  (the client sent 1 parameter types for 3 values)",
            "  ?1 = 1  (LONG)",
            "  ?2 = NULL",
            "  ?3 = 'z'",
        ]
    );
    let b = at("execute statement 5");
    assert_eq!(
        lines[b + 1..b + 3],
        [
            "  (the client sent 1 parameter types for 0 values)",
            "  ?1 = (no value)  (TINY)",
        ]
    );
    let b = at("execute statement 6");
    assert!(
        lines[b + 1].is_empty() || lines[b + 1].contains(" UTC  "),
        "{text}"
    );

    // The same event in a PostgreSQL recording renders too ($N, with types).
    let id = finished_pg(&f, &events[..1]).await;
    let text = show_text(&f, &id);
    assert!(
        text.contains("bind statement \"3\" portal \"\"\n  (the client sent 3 parameter types for 1 values)\n  $1 = '1'  (LONG)\n  $2 = (no value)  (VAR_STRING)\n  $3 = (no value)  (DOUBLE)\n"),
        "{text}"
    );
}

/// The lines of an export with what differs between two recordings of
/// the same events (id, times, kind, target) taken out.
fn comparable(lines: &[Value]) -> Vec<Value> {
    lines
        .iter()
        .map(|v| {
            let mut v = v.clone();
            if let Some(o) = v.as_object_mut() {
                for k in [
                    "id",
                    "t",
                    "time",
                    "kind",
                    "started",
                    "started_unix_ms",
                    "end",
                    "target",
                    "session_id",
                ] {
                    o.remove(k);
                }
            }
            v
        })
        .collect()
}

#[tokio::test]
async fn export_play_list_and_verify_treat_a_mysql_recording_as_postgres_is_treated() {
    let f = fixture();
    f.rec
        .set_segment_interval_for_tests(Duration::from_millis(50));
    let events = vec![
        DbEvent::Statement {
            text: b"SELECT ?".to_vec(),
            parse: Some(String::new()),
        },
        DbEvent::Bind {
            statement: "1".into(),
            portal: String::new(),
            params: vec![text("1")],
            types: vec!["LONGLONG".into()],
        },
        DbEvent::Refused {
            command: "COM_BINLOG_DUMP".into(),
            reason: "replication is not relayed".into(),
        },
    ];
    let pg_id = finished_with(
        &f,
        RecordingMeta {
            target: "db-my".into(),
            ..pg_meta()
        },
        &events,
    )
    .await;
    let r = f.rec.start(my_meta("app")).await.unwrap();
    let dir = f.root.join(r.id());
    for ev in &events {
        r.db(ev.clone()).await.unwrap();
        // One segment per event, so that there is a middle one to tamper with.
        let deadline = Instant::now() + Duration::from_secs(5);
        let want = manifest(&dir).len() + 1;
        while manifest(&dir).len() < want && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    r.finish(None, "client closed the connection", 10, 20)
        .await
        .unwrap();
    let my_id = r.id().to_string();

    // export: JSON lines, not an asciicast file, exactly as for postgres.
    let pg_lines = export_lines(&f, &pg_id);
    let my_lines = export_lines(&f, &my_id);
    assert_eq!(my_lines[0]["type"], "recording");
    assert!(my_lines[0].get("version").is_none(), "{}", my_lines[0]);
    assert!(my_lines[0].get("width").is_none(), "{}", my_lines[0]);
    assert_eq!(my_lines[0]["kind"], "mysql");
    assert_eq!(pg_lines[0]["kind"], "postgres");
    let (pg_c, my_c) = (comparable(&pg_lines), comparable(&my_lines));
    assert_eq!(pg_c.len(), my_c.len());
    // The header differs only in the verified segment count.
    for (p, m) in pg_c.iter().zip(&my_c).skip(1) {
        assert_eq!(p, m);
    }
    // No terminal event anywhere.
    assert!(my_lines.iter().all(|v| v.is_object()), "{my_lines:?}");

    // play: the transcript, as show.
    let stored = reader::open(&f.root, &my_id).unwrap();
    let ids = reader::load_identities(&f.keys.ssh).unwrap();
    let mut played = Vec::new();
    export::play(&stored, &ids, 1.0, Duration::ZERO, &mut played).unwrap();
    let played = String::from_utf8(played).unwrap();
    assert_eq!(played, show_text(&f, &my_id));
    assert!(played.contains("  ?1 = 1  (LONGLONG)"), "{played}");
    assert!(
        played.contains("refused by gatehouse: COM_BINLOG_DUMP"),
        "{played}"
    );

    // list: kind mysql, from meta.json alone.
    let mut out = Vec::new();
    cli::list_to(&f.root, None, None, None, false, &mut out).unwrap();
    let out = String::from_utf8(out).unwrap();
    let row = out.lines().find(|l| l.starts_with(&my_id)).unwrap();
    assert!(row.ends_with(" mysql"), "{row}");
    assert!(row.contains("app_ro") && row.contains("db-my"), "{row}");
    let row = out.lines().find(|l| l.starts_with(&pg_id)).unwrap();
    assert!(row.ends_with(" postgres"), "{row}");

    // verify: ok, then a flipped byte fails it and the tools refuse.
    assert!(manifest(&dir).len() >= 3, "{:?}", manifest(&dir));
    assert!(verify_problems(&f, &my_id).is_empty());
    let scratch = tempfile::tempdir().unwrap();
    let root = scratch.path().join("flip");
    copy_dir(&dir, &root.join(&my_id));
    let seg = root.join(&my_id).join(format::segment_file(1));
    let mut bytes = std::fs::read(&seg).unwrap();
    let i = bytes.len() - 20;
    bytes[i] ^= 1;
    std::fs::write(&seg, bytes).unwrap();
    let p = problems(&root, &my_id);
    assert!(
        p.iter()
            .any(|p| p.contains("segment 1 (000001.age): altered")),
        "{p:?}"
    );
    let stored = reader::open(&root, &my_id).unwrap();
    for as_json in [false, true] {
        let err = export::show(&stored, &ids, as_json, &mut Vec::new()).unwrap_err();
        assert!(matches!(err, ReadError::Tampered { .. }), "{err}");
    }
    let err = export::export(&stored, &ids, &mut Vec::new()).unwrap_err();
    assert!(matches!(err, ReadError::Tampered { .. }), "{err}");
    let err = export::play(&stored, &ids, 1.0, Duration::ZERO, &mut Vec::new()).unwrap_err();
    assert!(matches!(err, ReadError::Tampered { .. }), "{err}");
}
