//! Database session recordings (`kind = "postgres"`): the query log
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
