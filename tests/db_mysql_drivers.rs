//! The drivers DBAs' tools are built on, through gatehouse's `ssh -L` door
//! to a real MariaDB: PyMySQL (client-side parameters), node's mysql2
//! (`execute`: server-side prepared statements) and MariaDB Connector/J
//! (JDBC, what DBeaver uses for MariaDB; server-side prepares and pipelined
//! authentication). Each one's statements and parameters are in the
//! recording; what they read comes from the server.
//!
//! Installed by scripts/install-test-deps.sh: PyMySQL (PyPI), mysql2 (npm,
//! into target/test-deps/node), libmariadb-java and a JDK (Debian).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::myworld::{self, events, finished_my_recording, IGNORED_PASSWORD};
use common::util::{require_tools, run_with_timeout};

const CONNECTOR_J: &str = "/usr/share/java/mariadb-java-client.jar";

fn node_modules() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-deps/node/node_modules")
}

/// Whether `what` is there; under `CI=true` a missing driver fails.
fn have(ok: bool, what: &str) -> bool {
    if ok {
        return true;
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{what} is missing under CI=true (run scripts/install-test-deps.sh)");
    }
    eprintln!("skipping: {what} is missing");
    false
}

fn out_text(o: &std::process::Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// The recording's statement texts and bind parameter texts.
fn recorded(w: &common::world::World) -> (Vec<String>, Vec<Vec<String>>) {
    let id = finished_my_recording(w);
    let (_, evs) = events(w, &id);
    let mut statements = Vec::new();
    let mut binds = Vec::new();
    for e in evs {
        match e["type"].as_str() {
            Some("statement") => statements.push(e["text"].as_str().unwrap_or("").to_string()),
            Some("bind") => binds.push(
                e["params"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .map(|p| {
                                p.get("text")
                                    .and_then(|t| t.as_str())
                                    .unwrap_or("null")
                                    .to_string()
                            })
                            .collect()
                    })
                    .unwrap_or_default(),
            ),
            _ => {}
        }
    }
    (statements, binds)
}

#[test]
fn pymysql_queries_through_the_door_and_its_statements_are_recorded() {
    if !myworld::tools()
        || !have(
            Command::new("python3")
                .args(["-c", "import pymysql"])
                .status()
                .is_ok_and(|s| s.success()),
            "python3 module pymysql",
        )
    {
        return;
    }
    let m = myworld::start("pymysql-pw-7c1", |b, _| b);
    let script = format!(
        "import pymysql\n\
         c = pymysql.connect(host='127.0.0.1', port={}, user='app', password='{IGNORED_PASSWORD}', database='app', autocommit=True)\n\
         cur = c.cursor()\n\
         cur.execute('INSERT INTO t (id, body) VALUES (%s, %s)', (7, \"it's pymysql\"))\n\
         cur.execute('SELECT body FROM t WHERE id = %s', (7,))\n\
         print(cur.fetchone()[0])\n\
         c.close()\n",
        m.lport
    );
    let mut cmd = Command::new("python3");
    cmd.args(["-c", &script]).stdin(Stdio::null());
    let out = run_with_timeout(&mut cmd, Duration::from_secs(60)).expect("python3 finished");
    let (so, se) = out_text(&out);
    assert!(
        out.status.success(),
        "pymysql failed: {se}\n{}",
        m.w.gw.stderr()
    );
    assert_eq!(so.trim(), "it's pymysql");
    assert_eq!(
        m.db.sql("SELECT body FROM app.t WHERE id = 7"),
        "it's pymysql"
    );
    let (statements, _) = recorded(&m.w);
    assert!(
        statements
            .iter()
            .any(|s| s == "INSERT INTO t (id, body) VALUES (7, 'it\\'s pymysql')"),
        "the INSERT as PyMySQL sent it: {statements:?}"
    );
}

#[test]
fn node_mysql2_execute_uses_server_side_prepares_recorded_with_parameters() {
    if !myworld::tools()
        || !require_tools(&["node"])
        || !have(node_modules().join("mysql2").is_dir(), "npm package mysql2")
    {
        return;
    }
    let m = myworld::start("mysql2-pw-51d", |b, _| b);
    let script = format!(
        "const mysql = require('mysql2/promise');\n\
         (async () => {{\n\
           const c = await mysql.createConnection({{host: '127.0.0.1', port: {}, user: 'app', password: '{IGNORED_PASSWORD}', database: 'app'}});\n\
           await c.execute('INSERT INTO t (id, body) VALUES (?, ?)', [8, 'from node \\u00e9']);\n\
           const [rows] = await c.execute('SELECT body, ? + 1 AS n FROM t WHERE id = ?', [41, 8]);\n\
           console.log(rows[0].body + '|' + rows[0].n);\n\
           await c.end();\n\
         }})().catch(e => {{ console.error(e); process.exit(1); }});\n",
        m.lport
    );
    let mut cmd = Command::new("node");
    cmd.args(["-e", &script])
        .env("NODE_PATH", node_modules())
        .stdin(Stdio::null());
    let out = run_with_timeout(&mut cmd, Duration::from_secs(60)).expect("node finished");
    let (so, se) = out_text(&out);
    assert!(
        out.status.success(),
        "mysql2 failed: {se}\n{}",
        m.w.gw.stderr()
    );
    assert_eq!(so.trim(), "from node é|42");
    assert_eq!(
        m.db.sql("SELECT body FROM app.t WHERE id = 8"),
        "from node é"
    );
    let (statements, binds) = recorded(&m.w);
    assert!(
        statements
            .iter()
            .any(|s| s == "INSERT INTO t (id, body) VALUES (?, ?)"),
        "the prepared INSERT: {statements:?}"
    );
    assert!(
        binds.contains(&vec!["8".to_string(), "from node é".to_string()]),
        "the INSERT's parameters: {binds:?}"
    );
    assert!(
        binds.contains(&vec!["41".to_string(), "8".to_string()]),
        "the SELECT's parameters: {binds:?}"
    );
}

#[test]
fn mariadb_connector_j_prepares_on_the_server_through_the_door() {
    if !myworld::tools()
        || !require_tools(&["java", "javac"])
        || !have(Path::new(CONNECTOR_J).exists(), CONNECTOR_J)
    {
        return;
    }
    let m = myworld::start("jdbc-pw-9e0", |b, _| b);
    let dir = tempfile::tempdir().expect("tempdir");
    let src = dir.path().join("Probe.java");
    std::fs::write(
        &src,
        r#"import java.sql.*;
public class Probe {
    public static void main(String[] a) throws Exception {
        String url = "jdbc:mariadb://127.0.0.1:" + a[0] + "/app?user=app&password=" + a[1]
            + "&useServerPrepStmts=true&connectTimeout=20000";
        try (Connection c = DriverManager.getConnection(url)) {
            DatabaseMetaData md = c.getMetaData();
            try (PreparedStatement p = c.prepareStatement("INSERT INTO t (id, body) VALUES (?, ?)")) {
                p.setInt(1, 9);
                p.setString(2, "from jdbc");
                p.executeUpdate();
            }
            try (PreparedStatement p = c.prepareStatement("SELECT body FROM t WHERE id = ?")) {
                p.setLong(1, 9L);
                try (ResultSet r = p.executeQuery()) {
                    r.next();
                    System.out.println(r.getString(1) + "|" + md.getDatabaseProductVersion());
                }
            }
        }
    }
}
"#,
    )
    .expect("write Probe.java");
    let mut javac = Command::new("javac");
    javac
        .arg("-d")
        .arg(dir.path())
        .arg(&src)
        .stdin(Stdio::null());
    let out = run_with_timeout(&mut javac, Duration::from_secs(120)).expect("javac finished");
    assert!(out.status.success(), "javac: {}", out_text(&out).1);
    let mut java = Command::new("java");
    java.arg("-cp")
        .arg(format!("{}:{CONNECTOR_J}", dir.path().display()))
        .args(["Probe", &m.lport.to_string(), IGNORED_PASSWORD])
        .stdin(Stdio::null());
    let out = run_with_timeout(&mut java, Duration::from_secs(120)).expect("java finished");
    let (so, se) = out_text(&out);
    assert!(
        out.status.success(),
        "Connector/J failed: {se}\n{}",
        m.w.gw.stderr()
    );
    let (body, version) = so.trim().split_once('|').expect("body|version");
    assert_eq!(body, "from jdbc");
    // The driver saw the real server's version (from gatehouse's greeting).
    let server_version = m.db.sql("SELECT VERSION()");
    assert!(
        server_version.starts_with(version) || version.starts_with(server_version.trim()),
        "driver saw {version:?}, server is {server_version:?}"
    );
    let (statements, binds) = recorded(&m.w);
    assert!(
        statements
            .iter()
            .any(|s| s == "INSERT INTO t (id, body) VALUES (?, ?)"),
        "the prepared INSERT: {statements:?}"
    );
    assert!(
        binds.contains(&vec!["9".to_string(), "from jdbc".to_string()]),
        "the INSERT's parameters: {binds:?}"
    );
}
