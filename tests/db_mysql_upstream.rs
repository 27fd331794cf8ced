//! gatehouse's upstream MySQL/MariaDB login, against a real MariaDB
//! (mariadb-install-db in a temp dir, TLS from a CA made by openssl).

mod common;

use common::mariadb::{mariadb_available, MariaDb, MariaOptions};

#[test]
fn the_harness_starts_a_tls_mariadb_with_users() {
    if !mariadb_available() {
        return;
    }
    let db = MariaDb::start(MariaOptions::default());
    db.create_user("app", "app-Pa55");
    db.create_database("app", "app");
    assert!(db.sql("SELECT VERSION()").contains("MariaDB"));
    let out = db
        .tcp_client("app", "app-Pa55", Some("app"))
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
