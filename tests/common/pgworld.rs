//! A PostgreSQL world for the database tests: a real server (see
//! [`super::postgres`]) with login `app_ro` owning database `app` and table
//! `t`, a gateway where alice's role `dba` allows `app_ro` on targets
//! labelled `tier = db` (`db-1`), the sealed credential, alice's `ssh -L` to
//! it, and the recordings helpers the tests read it back with.

use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use super::pgwire::PgConn;
use super::postgres::{PgOptions, PgServer};
use super::world::{stderr, stdout, World};
use super::{free_port, require_tools, run_with_timeout, wait_for_port, ChildGuard};

/// The tools every database test drives.
pub fn tools() -> bool {
    require_tools(&["psql", "ssh", "sshd", "oathtool", "openssl"])
        && super::postgres::pg_available()
}

pub struct Db {
    pub w: World,
    pub pg: PgServer,
    pub lport: u16,
    _fwd: ChildGuard,
}

/// A `[[targets]]` table for a postgres target; `tls` is its TLS line.
pub fn pg_target(name: &str, address: &str, tunnel_port: u16, tls: &str) -> String {
    format!(
        "[[targets]]\nname = \"{name}\"\nkind = \"postgres\"\naddress = \"{address}\"\ntunnel_port = {tunnel_port}\n{tls}\nlabels = {{ tier = \"db\" }}\n"
    )
}

/// The TLS line pinning `ca`.
pub fn tls_ca(ca: &std::path::Path) -> String {
    format!("tls_ca = \"{}\"", ca.display())
}

/// `gatehouse target credential TARGET LOGIN --stdin`; checks that the
/// password is not echoed.
pub fn store_credential(setup: &super::GatehouseSetup, target: &str, login: &str, password: &str) {
    let mut cmd = setup.cli_command(&["target", "credential", target, login, "--stdin"]);
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("gatehouse target credential");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{password}\n").as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "target credential failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!String::from_utf8_lossy(&out.stdout).contains(password));
    assert!(!String::from_utf8_lossy(&out.stderr).contains(password));
}

/// The world described in the module doc, `password` being `app_ro`'s.
pub fn start(
    password: &str,
    tweak: impl FnOnce(super::GatehouseBuilder, &PgServer) -> super::GatehouseBuilder,
) -> Db {
    let pg = PgServer::start(PgOptions::default());
    pg.create_role("app_ro", password);
    pg.create_database("app", "app_ro");
    pg.psql(
        "app",
        "create table if not exists t (id int, body text); alter table t owner to app_ro;",
    );
    let w = World::with_roles(&["web", "dba"], |b| {
        let b = b
            .role_labels("dba", &[("tier", "db")], &["app_ro"])
            .raw(&pg_target(
                "db-1",
                &pg.address(),
                free_port(),
                &tls_ca(&pg.ca_pem),
            ));
        tweak(b, &pg)
    });
    store_credential(w.gw.setup(), "db-1", "app_ro", password);
    let lport = free_port();
    let fwd = forward(&w, lport, "db-1", 5432);
    Db {
        w,
        pg,
        lport,
        _fwd: fwd,
    }
}

/// `ssh -N -L 127.0.0.1:LPORT:TARGET:PORT gw`, up once the port listens.
pub fn forward(w: &World, lport: u16, target: &str, port: u16) -> ChildGuard {
    let spec = format!("127.0.0.1:{lport}:{target}:{port}");
    let g = w.client.spawn(&[
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

impl Db {
    /// Stock psql as `user` through local port `lport` (`extra`: more
    /// connection parameters), no password.
    pub fn psql_cmd_at(&self, lport: u16, user: &str, extra: &str, sql: &str) -> Command {
        let mut c = Command::new("psql");
        c.arg(format!(
            "host=127.0.0.1 port={lport} user={user} dbname=app connect_timeout=20 {extra}"
        ))
        .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql])
        .env_remove("PGPASSWORD")
        .env("PGCONNECT_TIMEOUT", "20")
        .stdin(Stdio::null());
        c
    }

    pub fn psql_cmd(&self, user: &str, extra: &str, sql: &str) -> Command {
        self.psql_cmd_at(self.lport, user, extra, sql)
    }

    pub fn psql(&self, user: &str, sql: &str) -> Output {
        run_with_timeout(&mut self.psql_cmd(user, "", sql), Duration::from_secs(90))
            .expect("psql finished")
    }

    /// psql as `app_ro` through another local port.
    pub fn psql_at(&self, lport: u16, sql: &str) -> Output {
        run_with_timeout(
            &mut self.psql_cmd_at(lport, "app_ro", "", sql),
            Duration::from_secs(90),
        )
        .expect("psql finished")
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.lport)
    }

    /// A raw wire login as `app_ro` to `app` (plus `extra` parameters);
    /// panics unless it reaches ReadyForQuery.
    pub fn login(&self, extra: &[(&str, &str)]) -> PgConn {
        let mut s = PgConn::connect(&self.addr()).unwrap();
        let mut params = vec![("user", "app_ro"), ("database", "app")];
        params.extend_from_slice(extra);
        let hello = s.login(&params, None);
        assert_eq!(
            hello.last().map(|m| m.tag),
            Some(b'Z'),
            "login failed: {:?}\n{}",
            hello.last().and_then(|m| m.field(b'M')),
            self.w.gw.stderr()
        );
        s
    }
}

/// `gatehouse recordings ARGS...`.
pub fn rec(w: &World, args: &[&str]) -> Output {
    w.gw.setup().cli(&[&["recordings"], args].concat())
}

pub fn key(w: &World) -> String {
    w.gw.setup().auditor_key().display().to_string()
}

/// The id of the newest finished postgres recording.
pub fn finished_pg_recording(w: &World) -> String {
    let started =
        w.gw.wait_for_event(
            |e| e["event"] == "recording.started" && e["kind"] == "postgres",
            Duration::from_secs(15),
        )
        .unwrap_or_else(|| panic!("no postgres recording started:\n{}", w.gw.stderr()));
    let id = started["recording_id"].as_str().unwrap().to_string();
    w.gw.wait_for_event(
        |e| e["event"] == "recording.finished" && e["recording_id"] == id.as_str(),
        Duration::from_secs(15),
    )
    .unwrap_or_else(|| panic!("recording {id} did not finish:\n{}", w.gw.stderr()));
    id
}

/// `recordings show ID` (text).
pub fn show(w: &World, id: &str) -> String {
    let out = rec(w, &["show", id, "-i", &key(w)]);
    assert!(out.status.success(), "show: {}", stderr(&out));
    stdout(&out)
}

/// `recordings export ID` (JSON lines).
pub fn export(w: &World, id: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("x.jsonl");
    let out = rec(
        w,
        &["export", id, "-i", &key(w), "-o", file.to_str().unwrap()],
    );
    assert!(out.status.success(), "export: {}", stderr(&out));
    std::fs::read_to_string(&file).unwrap()
}
