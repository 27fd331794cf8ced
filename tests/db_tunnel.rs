//! PostgreSQL inside the WireGuard tunnel: a real wireguard-go device in a
//! network namespace runs stock `psql` and `pgbench` against
//! `10.77.0.1:TUNNEL_PORT`; the device names the person, the port names the
//! target. Admission by MFA lease, or by the current TOTP code as the
//! password (replay and lockout as for SSH).

mod common;

use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::netns::{self, in_ns, WgWorld, TUNNEL_GATEWAY};
use common::postgres::{PgOptions, PgServer};
use common::world::{stderr, stdout};
use common::{run_with_timeout, totp};

const APP_PASSWORD: &str = "Pw-tunnel-app_ro-3b8e1f";
const TUNNEL_PORT: u16 = 15432;

fn pg() -> PgServer {
    let pg = PgServer::start(PgOptions::default());
    pg.create_role("app_ro", APP_PASSWORD);
    pg.create_database("app", "app_ro");
    pg
}

fn world(lab: netns::Lab, devices: usize, pg: &PgServer, extra_auth: Option<&str>) -> WgWorld {
    let target = format!(
        "[[targets]]\nname = \"db-1\"\nkind = \"postgres\"\naddress = \"{}\"\ntunnel_port = {TUNNEL_PORT}\ntls_ca = \"{}\"\n",
        pg.address(),
        pg.ca_pem.display()
    );
    let w = WgWorld::start(lab, devices, |b| {
        let b = b
            .role("dba", &["db-1"], &["app_ro"])
            .user_roles("alice", &["web", "dba"])
            .raw(&target);
        match extra_auth {
            Some(l) => b.auth_line(l),
            None => b,
        }
    });
    common::pgworld::store_credential(w.gw.setup(), "db-1", "app_ro", APP_PASSWORD);
    w
}

/// Stock psql in client namespace `client`, with `password` in PGPASSWORD
/// (None: no password to give).
fn psql(w: &WgWorld, client: usize, password: Option<&str>, sql: &str) -> Output {
    let mut c = Command::new("psql");
    c.arg(format!(
        "host={TUNNEL_GATEWAY} port={TUNNEL_PORT} user=app_ro dbname=app connect_timeout=20"
    ))
    .args(["-X", "-A", "-t", "-w", "-c", sql])
    .env_remove("PGPASSWORD");
    if let Some(p) = password {
        c.env("PGPASSWORD", p);
    }
    let mut c = in_ns(w.lab.client(client), &c);
    c.stdin(Stdio::null());
    run_with_timeout(&mut c, Duration::from_secs(90)).expect("psql finished")
}

#[test]
fn a_device_logs_in_by_code_once_and_wrong_or_reused_codes_count_toward_lockout() {
    let Some(lab) = netns::enter(
        "a_device_logs_in_by_code_once_and_wrong_or_reused_codes_count_toward_lockout",
        1,
    ) else {
        return;
    };
    let pg = pg();
    // No lease: every connection needs a code.
    let w = world(lab, 1, &pg, Some("mfa_lease = \"0s\"\nmax_failures = 3"));
    let _device = w.connect(0);
    // Without a password the client is asked for one and refused.
    let out = psql(&w, 0, None, "select 1");
    assert!(!out.status.success());
    // The current code is the password.
    let code = totp(&w.secret);
    let out = psql(&w, 0, Some(&code), "select 'by-code', current_user");
    assert!(out.status.success(), "{}\n{}", stderr(&out), w.gw.stderr());
    assert_eq!(stdout(&out).trim(), "by-code|app_ro");
    let start =
        w.gw.wait_for_event_named("db.session.start", Duration::from_secs(10))
            .unwrap();
    assert_eq!(start["admitted_by"], "code");
    assert_eq!(start["user"], "alice");
    // The same code again: refused as reused.
    let out = psql(&w, 0, Some(&code), "select 1");
    assert!(!out.status.success());
    assert!(stderr(&out).contains("already used"), "{}", stderr(&out));
    // Wrong codes: with the reused one, three failures lock alice.
    let out = psql(&w, 0, Some("000000"), "select 1");
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("password authentication failed"),
        "{}",
        stderr(&out)
    );
    let _ = psql(&w, 0, Some("999999"), "select 1");
    assert!(
        w.gw.wait_for_event(
            |e| e["event"] == "auth.lockout" && e["subject"] == "user:alice",
            Duration::from_secs(10),
        )
        .is_some(),
        "no lockout: {}",
        w.gw.stderr()
    );
    // Locked: even the next valid code is refused.
    let out = psql(&w, 0, Some(&w.next_code()), "select 1");
    assert!(!out.status.success());
    assert!(stderr(&out).contains("locked"), "{}", stderr(&out));
    assert_eq!(w.gw.events("db.session.start").len(), 1);
    // The code is never in a log.
    assert!(!w.gw.stderr_all().contains(&format!("\"{code}\"")));
}

#[test]
fn a_device_with_a_lease_is_admitted_without_a_password_and_pgbench_runs() {
    let Some(lab) = netns::enter(
        "a_device_with_a_lease_is_admitted_without_a_password_and_pgbench_runs",
        2,
    ) else {
        return;
    };
    let pg = pg();
    let w = world(lab, 2, &pg, None);
    let _d0 = w.connect(0);
    let _d1 = w.connect(1);
    // Key + code over SSH from device 0 gives that device a lease.
    let out = run_with_timeout(&mut w.jump(0, &["true"]), Duration::from_secs(90)).unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let out = psql(&w, 0, None, "select 'by-lease'");
    assert!(out.status.success(), "{}\n{}", stderr(&out), w.gw.stderr());
    assert_eq!(stdout(&out).trim(), "by-lease");
    let start =
        w.gw.wait_for_event_named("db.session.start", Duration::from_secs(10))
            .unwrap();
    assert_eq!(start["admitted_by"], "lease");
    // Another device of the same person holds no lease.
    let out = psql(&w, 1, None, "select 1");
    assert!(
        !out.status.success(),
        "device 1 was admitted without a lease"
    );
    // pgbench through the tunnel (init, then select-only).
    let bench = |args: &[&str]| {
        let mut c = Command::new(common::postgres::pg_bindir().unwrap().join("pgbench"));
        c.args(args)
            .args([
                "-h",
                TUNNEL_GATEWAY,
                "-p",
                &TUNNEL_PORT.to_string(),
                "-U",
                "app_ro",
                "app",
            ])
            .env_remove("PGPASSWORD");
        let mut c = in_ns(w.lab.client(0), &c);
        c.stdin(Stdio::null());
        run_with_timeout(&mut c, Duration::from_secs(120)).unwrap()
    };
    let out = bench(&["-i", "-s", "1", "-q"]);
    assert!(out.status.success(), "pgbench -i: {}", stderr(&out));
    let out = bench(&["-S", "-c", "2", "-T", "3", "-n"]);
    assert!(out.status.success(), "pgbench -S: {}", stderr(&out));
    let text = stdout(&out);
    let tps: f64 = text
        .lines()
        .find(|l| l.starts_with("tps = "))
        .and_then(|l| l.split_whitespace().nth(2))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    eprintln!("pgbench -S -c 2 through the tunnel: {tps} tps");
    assert!(tps > 10.0, "{text}");
}
