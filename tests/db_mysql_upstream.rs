//! gatehouse's upstream MySQL/MariaDB login, against a real MariaDB
//! (mariadb-install-db in a temp dir, TLS from a CA made by openssl):
//! the greeting probe, verify-full TLS, native and ed25519 logins, the
//! server's own refusals without the password, KILL QUERY, and no
//! CLIENT_LOCAL_FILES.

mod common;

use std::time::{Duration, Instant};

use common::mariadb::{mariadb_available, MariaDb, MariaOptions};
use gatehouse::config::DbTls;
use gatehouse::db::mysql::packet::{caps, read_packet, write_packet};
use gatehouse::db::mysql::upstream::{self, AuthPlugin, Endpoint, Upstream, UpstreamError};

const APP_PASSWORD: &str = "app-Pa55-w0rd!";

/// What a stock client (mariadb/libmysqlclient) offers, LOCAL INFILE and
/// compression included.
const CLIENT_CAPS: u32 = caps::LONG_PASSWORD
    | caps::FOUND_ROWS
    | caps::LONG_FLAG
    | caps::CONNECT_WITH_DB
    | caps::COMPRESS
    | caps::LOCAL_FILES
    | caps::PROTOCOL_41
    | caps::INTERACTIVE
    | caps::SSL
    | caps::TRANSACTIONS
    | caps::SECURE_CONNECTION
    | caps::MULTI_STATEMENTS
    | caps::MULTI_RESULTS
    | caps::PS_MULTI_RESULTS
    | caps::PLUGIN_AUTH
    | caps::CONNECT_ATTRS
    | caps::PLUGIN_AUTH_LENENC_CLIENT_DATA
    | caps::SESSION_TRACK
    | caps::DEPRECATE_EOF;

fn server(opts: MariaOptions) -> MariaDb {
    let db = MariaDb::start(opts);
    db.create_user("app", APP_PASSWORD);
    db.create_database("app", "app");
    db
}

fn verify(db: &MariaDb, server_name: &str) -> Endpoint {
    Endpoint {
        host: "127.0.0.1".into(),
        port: db.port,
        tls: DbTls::Verify {
            ca: db.ca_pem.clone(),
            server_name: server_name.into(),
        },
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

type Rows = Vec<Vec<Option<String>>>;

fn lenenc(p: &[u8], at: &mut usize) -> Option<u64> {
    let first = p[*at];
    *at += 1;
    let n = match first {
        0xfb => return None,
        0xfc => {
            let v = u16::from_le_bytes([p[*at], p[*at + 1]]) as u64;
            *at += 2;
            v
        }
        0xfd => {
            let v = u32::from_le_bytes([p[*at], p[*at + 1], p[*at + 2], 0]) as u64;
            *at += 3;
            v
        }
        0xfe => {
            let v = u64::from_le_bytes(p[*at..*at + 8].try_into().unwrap());
            *at += 8;
            v
        }
        n => n as u64,
    };
    Some(n)
}

async fn send_query(up: &mut Upstream, sql: &str) {
    let mut seq = 0u8;
    let mut cmd = vec![0x03];
    cmd.extend_from_slice(sql.as_bytes());
    write_packet(&mut up.stream, &mut seq, &cmd).await.unwrap();
}

/// Reads one text result set (or OK / ERR) of a query sent with seq 0.
async fn read_result(up: &mut Upstream) -> Result<Rows, (u16, String)> {
    let mut seq = 1u8;
    let first = read_packet(&mut up.stream, &mut seq, 1 << 24)
        .await
        .unwrap();
    match first[0] {
        0x00 => return Ok(vec![]),
        0xff => {
            let code = u16::from_le_bytes([first[1], first[2]]);
            return Err((code, String::from_utf8_lossy(&first[3..]).into_owned()));
        }
        0xfb => panic!("the server asked for a LOCAL INFILE"),
        _ => {}
    }
    let mut at = 0;
    let columns = lenenc(&first, &mut at).unwrap();
    for _ in 0..columns {
        read_packet(&mut up.stream, &mut seq, 1 << 24)
            .await
            .unwrap();
    }
    if up.capabilities & caps::DEPRECATE_EOF == 0 {
        let eof = read_packet(&mut up.stream, &mut seq, 1 << 24)
            .await
            .unwrap();
        assert_eq!(eof[0], 0xfe);
    }
    let mut rows = vec![];
    loop {
        let p = read_packet(&mut up.stream, &mut seq, 1 << 24)
            .await
            .unwrap();
        if p[0] == 0xfe && p.len() < 0xff_ffff {
            return Ok(rows);
        }
        if p[0] == 0xff {
            let code = u16::from_le_bytes([p[1], p[2]]);
            return Err((code, String::from_utf8_lossy(&p[3..]).into_owned()));
        }
        let mut at = 0;
        let mut row = vec![];
        for _ in 0..columns {
            match lenenc(&p, &mut at) {
                None => row.push(None),
                Some(n) => {
                    let n = n as usize;
                    row.push(Some(String::from_utf8_lossy(&p[at..at + n]).into_owned()));
                    at += n;
                }
            }
        }
        rows.push(row);
    }
}

async fn query(up: &mut Upstream, sql: &str) -> Result<Rows, (u16, String)> {
    send_query(up, sql).await;
    read_result(up).await
}

fn cell(rows: &Rows, r: usize, c: usize) -> String {
    rows[r][c].clone().unwrap_or_default()
}

#[test]
fn the_harness_starts_a_tls_mariadb_with_users() {
    if !mariadb_available() {
        return;
    }
    let db = server(MariaOptions::default());
    assert!(db.sql("SELECT VERSION()").contains("MariaDB"));
    let out = db
        .tcp_client("app", APP_PASSWORD, Some("app"))
        .args([
            "-N",
            "-B",
            "-e",
            "SELECT CURRENT_USER(), @@have_ssl; SHOW STATUS LIKE 'Ssl_version'",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("app@%\tYES"), "{text}");
    assert!(text.contains("TLSv1."), "{text}");
}

#[test]
fn probe_returns_the_servers_own_version_and_capabilities() {
    if !mariadb_available() {
        return;
    }
    let db = server(MariaOptions::default());
    let hello = rt()
        .block_on(upstream::probe(&verify(&db, "127.0.0.1")))
        .unwrap();
    let version = db.sql("SELECT VERSION()");
    assert!(hello.server_version.contains("MariaDB"), "{hello:?}");
    assert!(
        hello.server_version.ends_with(&version),
        "{} vs {version}",
        hello.server_version
    );
    assert!(hello.is_mariadb());
    for flag in [caps::PROTOCOL_41, caps::SSL, caps::PLUGIN_AUTH] {
        assert_ne!(hello.capabilities & flag, 0, "flag {flag:#x}");
    }
    assert_eq!(hello.auth_plugin, "mysql_native_password");
    assert_eq!(hello.nonce.len(), 20);
    assert_ne!(hello.connection_id, 0);
}

#[test]
fn native_password_over_verified_tls_logs_in_with_the_thread_id() {
    if !mariadb_available() {
        return;
    }
    let db = server(MariaOptions::default().require_secure_transport());
    rt().block_on(async {
        for name in ["127.0.0.1", "localhost"] {
            let mut up = upstream::connect(
                &verify(&db, name),
                "app",
                Some("app"),
                APP_PASSWORD.as_bytes(),
                CLIENT_CAPS,
            )
            .await
            .unwrap();
            assert!(up.tls);
            assert_eq!(up.auth, AuthPlugin::NativePassword);
            assert!(up.server_version.contains("MariaDB"));
            assert_eq!(up.capabilities & caps::LOCAL_FILES, 0);
            assert_eq!(up.capabilities & caps::COMPRESS, 0);
            assert_ne!(up.capabilities & caps::DEPRECATE_EOF, 0);
            let rows = query(
                &mut up,
                "SELECT CONNECTION_ID(), CURRENT_USER(), DATABASE(), \
                 (SELECT VARIABLE_VALUE FROM information_schema.SESSION_STATUS \
                  WHERE VARIABLE_NAME = 'SSL_VERSION')",
            )
            .await
            .unwrap();
            assert_eq!(cell(&rows, 0, 0), up.connection_id.to_string());
            assert_eq!(cell(&rows, 0, 1), "app@%");
            assert_eq!(cell(&rows, 0, 2), "app");
            assert!(cell(&rows, 0, 3).starts_with("TLSv1."), "{rows:?}");
        }
    });
}

#[test]
fn without_tls_the_login_is_plain_and_refused_by_a_server_requiring_tls() {
    if !mariadb_available() {
        return;
    }
    let db = server(MariaOptions::default());
    let plain = Endpoint {
        host: "127.0.0.1".into(),
        port: db.port,
        tls: DbTls::Disable,
    };
    rt().block_on(async {
        let mut up = upstream::connect(&plain, "app", None, APP_PASSWORD.as_bytes(), 0)
            .await
            .unwrap();
        assert!(!up.tls);
        assert_eq!(up.capabilities & caps::SSL, 0);
        let rows = query(&mut up, "SELECT 1").await.unwrap();
        assert_eq!(cell(&rows, 0, 0), "1");
    });
    drop(db);
    let db = server(MariaOptions::default().require_secure_transport());
    let plain = Endpoint {
        host: "127.0.0.1".into(),
        port: db.port,
        tls: DbTls::Disable,
    };
    let err = rt()
        .block_on(upstream::connect(
            &plain,
            "app",
            None,
            APP_PASSWORD.as_bytes(),
            0,
        ))
        .unwrap_err();
    assert!(matches!(err, UpstreamError::Server { .. }), "{err}");
}

#[test]
fn ed25519_logins_work() {
    if !mariadb_available() {
        return;
    }
    let db = server(MariaOptions::default());
    if !db.create_user_ed25519("edu", "ed-Pa55 w0rd") {
        assert_ne!(
            std::env::var("CI").as_deref(),
            Ok("true"),
            "auth_ed25519 missing"
        );
        eprintln!("skipping: no auth_ed25519 plugin");
        return;
    }
    rt().block_on(async {
        let mut up = upstream::connect(
            &verify(&db, "127.0.0.1"),
            "edu",
            None,
            b"ed-Pa55 w0rd",
            CLIENT_CAPS,
        )
        .await
        .unwrap();
        assert_eq!(up.auth, AuthPlugin::Ed25519);
        let rows = query(&mut up, "SELECT CURRENT_USER()").await.unwrap();
        assert_eq!(cell(&rows, 0, 0), "edu@%");
        let err = upstream::connect(&verify(&db, "127.0.0.1"), "edu", None, b"wrong-pw", 0)
            .await
            .unwrap_err();
        assert!(
            matches!(err, UpstreamError::Server { code: 1045, .. }),
            "{err}"
        );
    });
}

#[test]
fn a_certificate_from_another_ca_is_refused_naming_the_problem() {
    if !mariadb_available() {
        return;
    }
    let db = server(MariaOptions::default());
    let ep = Endpoint {
        host: "127.0.0.1".into(),
        port: db.port,
        tls: DbTls::Verify {
            ca: db.wrong_ca_pem.clone(),
            server_name: "127.0.0.1".into(),
        },
    };
    let err = rt()
        .block_on(upstream::connect(
            &ep,
            "app",
            None,
            APP_PASSWORD.as_bytes(),
            0,
        ))
        .unwrap_err();
    assert!(matches!(err, UpstreamError::Tls(_)), "{err}");
    assert!(err.to_string().contains("UnknownIssuer"), "{err}");
    assert!(!err.to_string().contains(APP_PASSWORD));
}

#[test]
fn a_server_name_not_in_the_certificate_is_refused() {
    if !mariadb_available() {
        return;
    }
    let db = server(MariaOptions::default());
    let err = rt()
        .block_on(upstream::connect(
            &verify(&db, "db.example.com"),
            "app",
            None,
            APP_PASSWORD.as_bytes(),
            0,
        ))
        .unwrap_err();
    assert!(matches!(err, UpstreamError::Tls(_)), "{err}");
    assert!(err.to_string().contains("db.example.com"), "{err}");
}

#[test]
fn a_wrong_password_is_the_servers_1045_and_never_in_the_error() {
    if !mariadb_available() {
        return;
    }
    let db = server(MariaOptions::default());
    let wrong = "Wr0ng-Secret-Pw";
    let err = rt()
        .block_on(upstream::connect(
            &verify(&db, "127.0.0.1"),
            "app",
            Some("app"),
            wrong.as_bytes(),
            CLIENT_CAPS,
        ))
        .unwrap_err();
    match &err {
        UpstreamError::Server { code, sqlstate, .. } => {
            assert_eq!((*code, sqlstate.as_str()), (1045, "28000"))
        }
        other => panic!("{other:?}"),
    }
    let text = format!("{err} {err:?}");
    assert!(text.contains("Access denied"), "{text}");
    assert!(!text.contains(wrong), "{text}");
    assert!(!text.contains(APP_PASSWORD), "{text}");
}

#[test]
fn kill_query_stops_a_running_sleep_and_a_wrong_thread_is_the_servers_error() {
    if !mariadb_available() {
        return;
    }
    let db = server(MariaOptions::default());
    let ep = verify(&db, "127.0.0.1");
    rt().block_on(async {
        let mut a = upstream::connect(&ep, "app", None, APP_PASSWORD.as_bytes(), CLIENT_CAPS)
            .await
            .unwrap();
        let started = Instant::now();
        send_query(&mut a, "SELECT SLEEP(60)").await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        upstream::kill_query(&ep, "app", APP_PASSWORD.as_bytes(), a.connection_id)
            .await
            .unwrap();
        let result = tokio::time::timeout(Duration::from_secs(20), read_result(&mut a))
            .await
            .expect("the sleep was not stopped");
        assert!(started.elapsed() < Duration::from_secs(20));
        // MariaDB: 1317 "Query execution was interrupted" (MySQL returns 1).
        match result {
            Err((code, _)) => assert_eq!(code, 1317),
            Ok(rows) => assert_eq!(cell(&rows, 0, 0), "1"),
        }
        // The connection itself lives on.
        let rows = query(&mut a, "SELECT 2").await.unwrap();
        assert_eq!(cell(&rows, 0, 0), "2");

        let err = upstream::kill_query(&ep, "app", APP_PASSWORD.as_bytes(), 999_999)
            .await
            .unwrap_err();
        assert!(
            matches!(err, UpstreamError::Server { code: 1094, .. }),
            "{err}"
        );
    });
}

#[test]
fn load_data_local_infile_is_refused_because_local_files_is_never_asked_for() {
    if !mariadb_available() {
        return;
    }
    let db = server(MariaOptions::default());
    db.sql("CREATE TABLE app.t (line TEXT)");
    assert_eq!(db.sql("SELECT @@local_infile"), "1");
    rt().block_on(async {
        // The client offered CLIENT_LOCAL_FILES; gatehouse did not pass it on.
        let mut up = upstream::connect(
            &verify(&db, "127.0.0.1"),
            "app",
            Some("app"),
            APP_PASSWORD.as_bytes(),
            CLIENT_CAPS,
        )
        .await
        .unwrap();
        assert_eq!(up.capabilities & caps::LOCAL_FILES, 0);
        let err = query(
            &mut up,
            "LOAD DATA LOCAL INFILE '/etc/hostname' INTO TABLE t",
        )
        .await
        .unwrap_err();
        // MariaDB 10.11: 4166 ER_LOAD_INFILE_CAPABILITY_DISABLED (older
        // servers and MySQL: 1148 ER_NOT_ALLOWED_COMMAND); never a 0xFB
        // file request (read_result panics on one).
        assert!([4166, 1148].contains(&err.0), "{err:?}");
        assert!(
            err.1.contains("local infile") || err.1.contains("not allowed"),
            "{err:?}"
        );
        let rows = query(&mut up, "SELECT COUNT(*) FROM t").await.unwrap();
        assert_eq!(cell(&rows, 0, 0), "0");
    });
}

/// A MySQL 8 greeting announcing caching_sha2_password with `nonce`.
fn mysql8_hello(nonce: &[u8; 20]) -> Vec<u8> {
    let mut p = vec![10];
    p.extend_from_slice(b"8.0.40\0");
    p.extend_from_slice(&7u32.to_le_bytes());
    p.extend_from_slice(&nonce[..8]);
    p.push(0);
    let server_caps: u32 = caps::LONG_PASSWORD
        | caps::PROTOCOL_41
        | caps::SECURE_CONNECTION
        | caps::PLUGIN_AUTH
        | caps::PLUGIN_AUTH_LENENC_CLIENT_DATA
        | caps::LOCAL_FILES
        | caps::DEPRECATE_EOF;
    p.extend_from_slice(&(server_caps as u16).to_le_bytes());
    p.push(255);
    p.extend_from_slice(&2u16.to_le_bytes());
    p.extend_from_slice(&((server_caps >> 16) as u16).to_le_bytes());
    p.push(21);
    p.extend_from_slice(&[0; 10]);
    p.extend_from_slice(&nonce[8..]);
    p.push(0);
    p.extend_from_slice(b"caching_sha2_password\0");
    p
}

/// A fake MySQL 8 (no TLS) that checks the caching_sha2 scramble, then
/// answers `more` (AuthMoreData payload) and, for fast auth, OK. Returns
/// everything the client sent after its HandshakeResponse.
async fn fake_mysql8(
    listener: tokio::net::TcpListener,
    password: &'static [u8],
    more: u8,
) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let (mut s, _) = listener.accept().await.unwrap();
    let nonce = *b"0123456789abcdefghij";
    let mut seq = 0u8;
    write_packet(&mut s, &mut seq, &mysql8_hello(&nonce))
        .await
        .unwrap();
    let resp = read_packet(&mut s, &mut seq, 1 << 20).await.unwrap();
    let sent_caps = u32::from_le_bytes(resp[..4].try_into().unwrap());
    assert_eq!(sent_caps & caps::LOCAL_FILES, 0);
    let user_end = 32 + resp[32..].iter().position(|&b| b == 0).unwrap();
    assert_eq!(&resp[32..user_end], b"app");
    let len = resp[user_end + 1] as usize;
    let scramble = &resp[user_end + 2..user_end + 2 + len];
    let expected = gatehouse::db::mysql::upstream::auth::caching_sha2_scramble(password, &nonce);
    assert_eq!(scramble, expected.as_slice(), "caching_sha2 scramble");
    assert!(resp.ends_with(b"caching_sha2_password\0"));
    write_packet(&mut s, &mut seq, &[0x01, more]).await.unwrap();
    if more == 3 {
        write_packet(&mut s, &mut seq, &[0, 0, 0, 2, 0, 0, 0])
            .await
            .unwrap();
    }
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest)).await;
    rest
}

#[test]
fn caching_sha2_fast_auth_logs_in_and_full_auth_without_tls_sends_nothing() {
    rt().block_on(async {
        for more in [3u8, 4] {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let ep = Endpoint {
                host: "127.0.0.1".into(),
                port: listener.local_addr().unwrap().port(),
                tls: DbTls::Disable,
            };
            let server = tokio::spawn(fake_mysql8(listener, b"sha2-Secret-pw", more));
            let result = upstream::connect(&ep, "app", None, b"sha2-Secret-pw", CLIENT_CAPS).await;
            match more {
                3 => {
                    let up = result.unwrap();
                    assert_eq!(up.auth, AuthPlugin::CachingSha2Fast);
                    assert_eq!(up.server_version, "8.0.40");
                    assert_eq!(up.capabilities & caps::LOCAL_FILES, 0);
                    drop(up);
                }
                _ => {
                    let err = result.unwrap_err();
                    assert!(matches!(err, UpstreamError::AuthMethod(_)), "{err}");
                    assert!(err.to_string().contains("RSA"), "{err}");
                    assert!(!err.to_string().contains("sha2-Secret-pw"));
                }
            }
            let after = server.await.unwrap();
            if more == 4 {
                // Neither the password nor a request for the server's RSA key.
                assert!(
                    after.is_empty(),
                    "client sent {after:?} after full-auth request"
                );
            }
        }
    });
}
