//! gatehouse's upstream PostgreSQL login, against a real server (initdb in a
//! temp dir, TLS from a CA made by openssl, SCRAM roles): verify-full TLS,
//! SCRAM-SHA-256-PLUS, the server's own refusals, MD5 only when the target
//! says so, and cancel.

mod common;

use std::time::{Duration, Instant};

use common::postgres::{pg_available, PgOptions, PgServer};
use gatehouse::config::{DbAuth, DbTarget, DbTls, Target, TargetKind};
use gatehouse::db::postgres::upstream::{self, AuthMechanism, Upstream, UpstreamError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const APP_PASSWORD: &str = "app-Pa55-w0rd!";

fn target(pg: &PgServer, tls: DbTls, auth: DbAuth) -> Target {
    Target {
        name: "db-1".into(),
        kind: TargetKind::Postgres,
        host: "127.0.0.1".into(),
        port: pg.port,
        host_keys: vec![],
        labels: Default::default(),
        db: Some(DbTarget {
            tunnel_port: 15432,
            tls,
            auth,
        }),
    }
}

fn verify(pg: &PgServer, server_name: &str) -> DbTls {
    DbTls::Verify {
        ca: pg.ca_pem.clone(),
        server_name: server_name.into(),
    }
}

fn params(user: &str, database: &str) -> Vec<(String, String)> {
    vec![
        ("user".into(), user.into()),
        ("database".into(), database.into()),
        ("application_name".into(), "gatehouse-test".into()),
    ]
}

/// A server with role `app` (SCRAM password) owning database `app`.
fn server(opts: PgOptions) -> PgServer {
    let pg = PgServer::start(opts);
    pg.create_role("app", APP_PASSWORD);
    pg.create_database("app", "app");
    pg
}

/// One backend message from a logged-in connection.
async fn read_message(up: &mut Upstream) -> (u8, Vec<u8>) {
    let mut head = [0u8; 5];
    up.stream.read_exact(&mut head).await.unwrap();
    let len = i32::from_be_bytes(head[1..5].try_into().unwrap()) as usize - 4;
    let mut body = vec![0u8; len];
    up.stream.read_exact(&mut body).await.unwrap();
    (head[0], body)
}

/// What a simple query returned: each row's text columns, or the SQLSTATE.
#[derive(Debug, PartialEq)]
enum Outcome {
    Rows(Vec<Vec<Option<String>>>),
    Error(String),
}

async fn send_query(up: &mut Upstream, sql: &str) {
    let mut msg = vec![b'Q'];
    msg.extend_from_slice(&((sql.len() + 5) as i32).to_be_bytes());
    msg.extend_from_slice(sql.as_bytes());
    msg.push(0);
    up.stream.write_all(&msg).await.unwrap();
    up.stream.flush().await.unwrap();
}

async fn read_outcome(up: &mut Upstream) -> Outcome {
    let mut rows = Vec::new();
    let mut error = None;
    loop {
        let (tag, body) = read_message(up).await;
        match tag {
            b'D' => {
                let n = i16::from_be_bytes([body[0], body[1]]);
                let mut at = 2;
                let mut row = Vec::new();
                for _ in 0..n {
                    let len = i32::from_be_bytes(body[at..at + 4].try_into().unwrap());
                    at += 4;
                    if len < 0 {
                        row.push(None);
                    } else {
                        let len = len as usize;
                        row.push(Some(
                            String::from_utf8_lossy(&body[at..at + len]).into_owned(),
                        ));
                        at += len;
                    }
                }
                rows.push(row);
            }
            b'E' => {
                let code = body
                    .split(|&b| b == 0)
                    .find(|f| f.first() == Some(&b'C'))
                    .map(|f| String::from_utf8_lossy(&f[1..]).into_owned())
                    .unwrap_or_default();
                error = Some(code);
            }
            b'Z' => break,
            _ => {}
        }
    }
    match error {
        Some(code) => Outcome::Error(code),
        None => Outcome::Rows(rows),
    }
}

async fn query(up: &mut Upstream, sql: &str) -> Outcome {
    send_query(up, sql).await;
    read_outcome(up).await
}

fn one(v: &str) -> Outcome {
    Outcome::Rows(vec![vec![Some(v.to_string())]])
}

#[tokio::test]
async fn scram_plus_over_verified_tls_logs_in_with_the_cancel_key_and_parameters() {
    if !pg_available() {
        return;
    }
    let pg = server(PgOptions::default());
    for name in ["127.0.0.1", "localhost"] {
        let t = target(&pg, verify(&pg, name), DbAuth::Scram);
        let mut up = upstream::connect(&t, &params("app", "app"), APP_PASSWORD.as_bytes())
            .await
            .unwrap_or_else(|e| panic!("login with server name {name}: {e}"));
        assert!(up.tls);
        assert_eq!(up.auth, AuthMechanism::ScramSha256Plus);
        assert_ne!(up.backend_pid, 0);
        let names: Vec<&str> = up.parameters.iter().map(|(k, _)| k.as_str()).collect();
        assert!(names.contains(&"server_version"), "{names:?}");
        assert!(
            up.parameters
                .contains(&("application_name".into(), "gatehouse-test".into())),
            "{:?}",
            up.parameters
        );
        // The connection is usable, is who BackendKeyData said, over TLS,
        // as the requested user and database.
        assert_eq!(
            query(
                &mut up,
                "select pg_backend_pid() || ' ' || ssl || ' ' || current_user || ' ' || \
                 current_database() from pg_stat_ssl where pid = pg_backend_pid()"
            )
            .await,
            one(&format!("{} true app app", up.backend_pid))
        );
    }
}

#[tokio::test]
async fn a_certificate_from_another_ca_is_refused_naming_the_problem() {
    if !pg_available() {
        return;
    }
    let pg = server(PgOptions::default());
    let t = target(
        &pg,
        DbTls::Verify {
            ca: pg.wrong_ca_pem.clone(),
            server_name: "127.0.0.1".into(),
        },
        DbAuth::Scram,
    );
    let err = upstream::connect(&t, &params("app", "app"), APP_PASSWORD.as_bytes())
        .await
        .unwrap_err();
    match &err {
        UpstreamError::Tls(why) => assert!(
            why.contains("not issued by the pinned CA") && why.contains("UnknownIssuer"),
            "{why}"
        ),
        other => panic!("expected a TLS error, got {other:?}"),
    }
    // The server never saw a startup packet, let alone a password.
    assert!(!pg.log().contains("user=app"), "{}", pg.log());
}

#[tokio::test]
async fn a_server_name_not_in_the_certificate_is_refused() {
    if !pg_available() {
        return;
    }
    let pg = server(PgOptions::default());
    let t = target(&pg, verify(&pg, "db.example.com"), DbAuth::Scram);
    let err = upstream::connect(&t, &params("app", "app"), APP_PASSWORD.as_bytes())
        .await
        .unwrap_err();
    match &err {
        UpstreamError::Tls(why) => assert!(
            why.contains("not valid for name") && why.contains("db.example.com"),
            "{why}"
        ),
        other => panic!("expected a TLS error, got {other:?}"),
    }
}

#[tokio::test]
async fn a_wrong_password_is_the_servers_28p01_and_never_in_the_error() {
    if !pg_available() {
        return;
    }
    let pg = server(PgOptions::default());
    let t = target(&pg, verify(&pg, "127.0.0.1"), DbAuth::Scram);
    let wrong = "wrong-Secret-4711";
    let err = upstream::connect(&t, &params("app", "app"), wrong.as_bytes())
        .await
        .unwrap_err();
    match &err {
        UpstreamError::Server { severity, code, .. } => {
            assert_eq!((severity.as_str(), code.as_str()), ("FATAL", "28P01"));
        }
        other => panic!("expected the server's error, got {other:?}"),
    }
    let text = format!("{err} {err:?}");
    assert!(!text.contains(wrong), "{text}");
    assert!(!text.contains(APP_PASSWORD), "{text}");
}

#[tokio::test]
async fn md5_is_refused_unless_the_target_says_md5() {
    if !pg_available() {
        return;
    }
    let pg = server(PgOptions::default().md5_user("legacy"));
    pg.create_role_md5("legacy", "legacy-pw-123");
    let scram = target(&pg, verify(&pg, "127.0.0.1"), DbAuth::Scram);
    let err = upstream::connect(&scram, &params("legacy", "app"), b"legacy-pw-123")
        .await
        .unwrap_err();
    match &err {
        UpstreamError::AuthMethod(why) => assert!(why.contains("MD5"), "{why}"),
        other => panic!("expected an AuthMethod refusal, got {other:?}"),
    }
    let md5 = target(&pg, verify(&pg, "127.0.0.1"), DbAuth::Md5);
    let mut up = upstream::connect(&md5, &params("legacy", "app"), b"legacy-pw-123")
        .await
        .unwrap();
    assert_eq!(up.auth, AuthMechanism::Md5);
    assert_eq!(query(&mut up, "select current_user").await, one("legacy"));
    // A SCRAM role still uses SCRAM on an md5 target.
    let up = upstream::connect(&md5, &params("app", "app"), APP_PASSWORD.as_bytes())
        .await
        .unwrap();
    assert_eq!(up.auth, AuthMechanism::ScramSha256Plus);
}

#[tokio::test]
async fn without_tls_scram_is_used_and_cleartext_is_refused() {
    if !pg_available() {
        return;
    }
    let pg = server(PgOptions::default().plain_host().cleartext_user("clear"));
    pg.create_role("clear", "clear-pw-123");
    let plain = target(&pg, DbTls::Disable, DbAuth::Scram);
    let mut up = upstream::connect(&plain, &params("app", "app"), APP_PASSWORD.as_bytes())
        .await
        .unwrap();
    assert!(!up.tls);
    assert_eq!(up.auth, AuthMechanism::ScramSha256);
    assert_eq!(
        query(
            &mut up,
            "select count(*) from pg_stat_ssl where pid = pg_backend_pid() and not ssl"
        )
        .await,
        one("1")
    );
    let err = upstream::connect(&plain, &params("clear", "app"), b"clear-pw-123")
        .await
        .unwrap_err();
    assert!(matches!(err, UpstreamError::AuthMethod(_)), "{err:?}");
    // Over TLS the same cleartext login is allowed.
    let tls = target(&pg, verify(&pg, "127.0.0.1"), DbAuth::Scram);
    let up = upstream::connect(&tls, &params("clear", "app"), b"clear-pw-123")
        .await
        .unwrap();
    assert_eq!(up.auth, AuthMechanism::Cleartext);
}

#[tokio::test]
async fn cancel_stops_a_running_pg_sleep() {
    if !pg_available() {
        return;
    }
    let pg = server(PgOptions::default());
    let t = target(&pg, verify(&pg, "127.0.0.1"), DbAuth::Scram);
    let mut up = upstream::connect(&t, &params("app", "app"), APP_PASSWORD.as_bytes())
        .await
        .unwrap();
    let started = Instant::now();
    send_query(&mut up, "select pg_sleep(60)").await;
    // Let the statement start, then cancel it with the wrong secret (must
    // not stop it) and with the right one.
    tokio::time::sleep(Duration::from_millis(500)).await;
    upstream::cancel(&t, up.backend_pid, up.backend_secret.wrapping_add(1))
        .await
        .unwrap();
    let early = tokio::time::timeout(Duration::from_millis(1500), read_outcome(&mut up)).await;
    assert!(early.is_err(), "a wrong secret cancelled the query");
    upstream::cancel(&t, up.backend_pid, up.backend_secret)
        .await
        .unwrap();
    let outcome = tokio::time::timeout(Duration::from_secs(20), read_outcome(&mut up))
        .await
        .expect("the query was not cancelled");
    assert_eq!(outcome, Outcome::Error("57014".into()));
    assert!(started.elapsed() < Duration::from_secs(30));
    // The session survives a cancelled statement.
    assert_eq!(query(&mut up, "select 1").await, one("1"));
}
