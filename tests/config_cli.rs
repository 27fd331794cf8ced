//! The command line and configuration as an operator meets them: a bad
//! config is reported whole (file:line:column, exit 64) and starts nothing;
//! the example config stays valid; loose state permissions are refused;
//! enrollment agrees with oathtool; keyscan pins what a real sshd presents;
//! ssh-audit finds nothing weak; SIGTERM shuts down cleanly.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use common::world::{stderr, stdout, World};
use common::*;

fn gatehouse(args: &[&str]) -> std::process::Output {
    run_checked_timeout(gatehouse_command().args(args), DEFAULT_COMMAND_TIMEOUT)
}

#[test]
fn malformed_config_reports_every_error_with_line_and_column_and_exits_64() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("config.toml");
    let port = free_port();
    std::fs::write(
        &cfg,
        format!(
            "[gateway]\nstate_dir = \"{}\"\nssh_listen = [\"127.0.0.1:{port}\"]\nlisten_backlog = 5\n\n\
             [[users]]\nname = \"alice\"\nroles = [\"nope\"]\nssh_keys = [\"ssh-ed25519 notakey\"]\n\n\
             [[targets]]\nname = \"web-1\"\nkind = \"ssh\"\naddress = \"10.0.0.1:99999\"\n",
            dir.path().join("state").display()
        ),
    )
    .unwrap();
    let path = cfg.display().to_string();
    let out = gatehouse(&["check", "--config", &path]);
    assert_eq!(out.status.code(), Some(64));
    let err = stderr(&out);
    for (line, what) in [
        (4, "listen_backlog"),
        (8, "users[0].roles[0]"),
        (9, "users[0].ssh_keys[0]"),
        (14, "targets[0].address"),
    ] {
        let needle = format!("{path}:{line}:");
        assert!(
            err.contains(&needle) && err.contains(what),
            "missing {needle} {what} in:\n{err}"
        );
    }
    // `run` refuses the same file and binds nothing.
    let run = run_with_timeout(
        gatehouse_command().args(["run", "--config", &path]),
        Duration::from_secs(10),
    )
    .expect("run exits");
    assert_eq!(run.status.code(), Some(64));
    assert!(!port_is_listening(port));
    assert!(
        !dir.path().join("state").exists(),
        "a bad config changed the state directory"
    );
}

#[test]
fn wireguard_device_errors_name_line_and_column_and_start_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("config.toml");
    let (port, wg_port) = (free_port(), free_port());
    // Lines: 12 first device (fine), 13 the same address again, 14 outside
    // the range, 15 the gateway's own address, 16 not a key, 17 the first
    // device's key again.
    std::fs::write(
        &cfg,
        format!(
            "[gateway]\nstate_dir = \"{}\"\nssh_listen = [\"127.0.0.1:{port}\"]\n\n\
             [wireguard]\nlisten = \"127.0.0.1:{wg_port}\"\naddress = \"10.77.0.1/24\"\n\n\
             [[users]]\nname = \"alice\"\nwireguard = [\n\
             {{ public_key = \"AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=\", address = \"10.77.0.10\" }},\n\
             {{ public_key = \"AgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgI=\", address = \"10.77.0.10\" }},\n\
             {{ public_key = \"AwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwM=\", address = \"10.78.0.5\" }},\n\
             {{ public_key = \"BAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQ=\", address = \"10.77.0.1\" }},\n\
             {{ public_key = \"bm90IGEga2V5\", address = \"10.77.0.20\" }},\n\
             {{ public_key = \"AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=\", address = \"10.77.0.21\" }},\n\
             ]\n",
            dir.path().join("state").display()
        ),
    )
    .unwrap();
    let path = cfg.display().to_string();
    let out = gatehouse(&["check", "--config", &path]);
    assert_eq!(out.status.code(), Some(64));
    let err = stderr(&out);
    for (line, what) in [
        (13, "already a device's address on line 12"),
        (14, "outside the tunnel range 10.77.0.1/24"),
        (15, "the gateway's own tunnel address"),
        (16, "not a WireGuard public key"),
        (17, "already a device on line 12"),
    ] {
        let found = err
            .lines()
            .any(|l| l.starts_with(&format!("{path}:{line}:")) && l.contains(what));
        assert!(found, "missing {path}:{line}: ... {what} in:\n{err}");
    }
    assert!(
        !err.contains(&format!("{path}:12:")),
        "the valid device was reported:\n{err}"
    );
    let run = run_with_timeout(
        gatehouse_command().args(["run", "--config", &path]),
        Duration::from_secs(10),
    )
    .expect("run exits");
    assert_eq!(run.status.code(), Some(64));
    assert!(!port_is_listening(port));
    assert!(
        !dir.path().join("state").exists(),
        "a bad config changed the state directory"
    );
}

#[test]
fn config_example_is_valid() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("config.example.toml");
    let out = gatehouse(&["check", "--config", example.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("ok"));
}

#[test]
fn the_example_config_is_checked_with_a_warning_but_never_run_with_its_sample_auditor_key() {
    let example =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("config.example.toml"))
            .unwrap();
    // The package ships it as /etc/gatehouse/config.toml: on a free port
    // and a state directory of the test's, it must still refuse to run.
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let text = example
        .replace(
            "state_dir = \"/var/lib/gatehouse\"",
            &format!("state_dir = \"{}\"", state.display()),
        )
        .replace(
            "ssh_listen = [\"0.0.0.0:2222\"]",
            &format!("ssh_listen = [\"127.0.0.1:{}\"]", free_port()),
        )
        .replace(
            "# socket = \"/run/gatehouse/control.sock\"",
            &format!("socket = \"{}\"", dir.path().join("control.sock").display()),
        );
    assert_ne!(text, example, "config.example.toml changed shape");
    let cfg = dir.path().join("config.toml");
    std::fs::write(&cfg, &text).unwrap();
    let cfg = cfg.to_str().unwrap();

    let out = gatehouse(&["check", "--config", cfg]);
    assert!(out.status.success(), "{}", stderr(&out));
    let err = stderr(&out);
    let line = text
        .lines()
        .position(|l| l.starts_with("recipients = "))
        .unwrap()
        + 1;
    assert!(
        err.contains(&format!("config.toml:{line}:")) && err.contains("sample auditor key"),
        "{err}"
    );

    let out = run_with_timeout(
        gatehouse_command().args(["run", "--config", cfg]),
        Duration::from_secs(20),
    )
    .expect("gatehouse run kept running with the sample auditor key");
    assert_eq!(out.status.code(), Some(64), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("nothing was started"),
        "{}",
        stderr(&out)
    );
    assert!(!state.exists(), "the state directory was created");

    // With an auditor's own key the warning is gone.
    let keys = tempfile::tempdir().unwrap();
    let auditor = gen_ed25519(keys.path(), "auditor");
    let own = with_recipient(&text, &auditor.public_line);
    std::fs::write(cfg, own).unwrap();
    let out = gatehouse(&["check", "--config", cfg]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        !stderr(&out).contains("sample auditor key"),
        "{}",
        stderr(&out)
    );
}

/// `text` with its `recipients = [...]` line listing `key` instead.
fn with_recipient(text: &str, key: &str) -> String {
    text.lines()
        .map(|l| {
            if l.starts_with("recipients = ") {
                format!("recipients = [\"{}\"]", key.trim())
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn state_dir_readable_by_others_is_refused_with_the_fix() {
    let keys = tempfile::tempdir().unwrap();
    let key = gen_ed25519(keys.path(), "alice");
    let setup = GatehouseBuilder::new()
        .user("alice", &[], &[&key.public_line])
        .build();
    // Makes the state directory with master.key (hostkey alone needs none).
    assert!(setup.cli(&["user", "enroll", "alice"]).status.success());
    std::fs::set_permissions(setup.state_dir(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let err = match setup.try_start() {
        Ok(_) => panic!("started with a world-readable state directory"),
        Err(e) => e,
    };
    assert!(err.contains("chmod 700"), "{err}");
    std::fs::set_permissions(setup.state_dir(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let master = setup.state_dir().join("master.key");
    std::fs::set_permissions(&master, std::fs::Permissions::from_mode(0o640)).unwrap();
    let err = match setup.try_start() {
        Ok(_) => panic!("started with a group-readable master key"),
        Err(e) => e,
    };
    assert!(
        err.contains("master.key") && err.contains("chmod 600"),
        "{err}"
    );
}

#[test]
fn enrollment_prints_a_secret_that_oathtool_agrees_with_and_stores_it_sealed() {
    if !require_tools(&["oathtool"]) {
        return;
    }
    let keys = tempfile::tempdir().unwrap();
    let key = gen_ed25519(keys.path(), "alice");
    let setup = GatehouseBuilder::new()
        .user("alice", &[], &[&key.public_line])
        .build();
    let out = setup.cli(&["user", "enroll", "alice"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let secret = text
        .lines()
        .find_map(|l| l.strip_prefix("Secret: "))
        .unwrap()
        .trim()
        .to_string();
    assert_eq!(secret.len(), 32, "160-bit secret in base32");
    assert!(
        text.contains(&format!("otpauth://totp/gatehouse:alice?secret={secret}")),
        "{text}"
    );
    assert!(text.contains("issuer=gatehouse"));
    assert!(
        text.contains('█') || text.contains('▀') || text.contains('▄'),
        "no QR code drawn"
    );
    // Sealed at rest: the secret is not on disk in the clear, and the file is 0600.
    let sealed = setup.state_dir().join("totp/alice.secret");
    let on_disk = std::fs::read_to_string(&sealed).unwrap();
    assert!(!on_disk.contains(&secret));
    assert_eq!(
        std::fs::metadata(&sealed).unwrap().permissions().mode() & 0o777,
        0o600
    );
    // Unknown users cannot be enrolled.
    let bad = setup.cli(&["user", "enroll", "mallory"]);
    assert!(!bad.status.success());
    assert!(stderr(&bad).contains("no user named"));
}

#[test]
fn reenrolling_replaces_the_secret() {
    if !require_tools(&["ssh", "sshd", "ssh-keygen", "oathtool"]) {
        return;
    }
    let mut w = World::start(|b| b);
    let new_secret = w.gw.enroll("alice");
    assert_ne!(new_secret, w.secret);
    w.gw.restart();
    w.client.set_code(&totp(&w.secret));
    let old = w
        .client
        .run(&["-o", "NumberOfPasswordPrompts=1", "gw", "targets"]);
    assert!(!old.status.success(), "the replaced secret still works");
    w.client.set_code(&totp(&new_secret));
    let new = w
        .client
        .run(&["-o", "NumberOfPasswordPrompts=1", "gw", "targets"]);
    assert!(new.status.success(), "{}", stderr(&new));
}

#[test]
fn keyscan_prints_the_pin_a_real_sshd_presents_and_pubkey_prints_the_client_key() {
    if !require_tools(&["sshd", "ssh-keygen"]) {
        return;
    }
    let sshd = Sshd::start(&[]);
    let out = gatehouse(&["target", "keyscan", &format!("127.0.0.1:{}", sshd.port)]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("host_keys = ["), "{text}");
    assert!(text.contains(&sshd.host_public_key), "{text}");
    let keys = tempfile::tempdir().unwrap();
    let key = gen_ed25519(keys.path(), "alice");
    let setup = GatehouseBuilder::new()
        .user("alice", &[], &[&key.public_line])
        .build();
    let line = setup.client_pubkey();
    assert!(line.starts_with("ssh-ed25519 AAAA"), "{line}");
    assert_eq!(line, setup.client_pubkey(), "the client key must be stable");
}

#[test]
fn ssh_audit_finds_no_weak_algorithm() {
    if !require_tools(&["ssh-audit", "ssh-keygen"]) {
        return;
    }
    let keys = tempfile::tempdir().unwrap();
    let key = gen_ed25519(keys.path(), "alice");
    let gw = GatehouseBuilder::new()
        .user("alice", &[], &[&key.public_line])
        .build()
        .start();
    let out = run_checked_timeout(
        std::process::Command::new("ssh-audit").args([
            "-j",
            "-p",
            &gw.port.to_string(),
            "127.0.0.1",
        ]),
        DEFAULT_COMMAND_TIMEOUT,
    );
    let report: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", stdout(&out)));
    let mut seen = 0;
    for section in ["kex", "key", "enc", "mac"] {
        for alg in report[section].as_array().unwrap_or(&Vec::new()) {
            seen += 1;
            let name = alg["algorithm"].as_str().unwrap_or("?");
            let notes = &alg["notes"];
            assert!(notes["fail"].is_null(), "{name} fails: {notes}");
            // Debian 12's ssh-audit predates ML-KEM hybrid kex and strict kex:
            // "unknown algorithm" is its only warning, and it is not weakness.
            if let Some(warn) = notes["warn"].as_array() {
                for w in warn {
                    assert_eq!(w, "unknown algorithm", "{name} warns: {w}");
                }
            }
        }
    }
    assert!(seen >= 6, "ssh-audit reported too little: {}", stdout(&out));
    assert_eq!(report["compression"], serde_json::json!(["none"]));
}

#[test]
fn sigterm_stops_the_gateway_cleanly() {
    let keys = tempfile::tempdir().unwrap();
    let key = gen_ed25519(keys.path(), "alice");
    let mut gw = GatehouseBuilder::new()
        .user("alice", &[], &[&key.public_line])
        .build()
        .start();
    let port = gw.port;
    let status = gw
        .terminate(Duration::from_secs(15))
        .expect("exited after SIGTERM");
    assert!(status.success(), "{status}");
    assert!(!port_is_listening(port));
}

#[test]
fn help_lists_every_command() {
    let out = gatehouse(&["--help"]);
    let text = stdout(&out);
    for cmd in [
        "run",
        "check",
        "pubkey",
        "hostkey",
        "user",
        "target",
        "quickstart",
    ] {
        assert!(text.contains(cmd), "--help lacks {cmd}:\n{text}");
    }
}

#[test]
fn quickstart_starts_a_gateway_the_stock_client_logs_in_to() {
    if !require_tools(&["ssh", "oathtool"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let demo = dir.path().join("demo");
    let port = free_port();
    let mut guard = ChildGuard::spawn(
        gatehouse_command()
            .args([
                "quickstart",
                "--dir",
                demo.to_str().unwrap(),
                "--port",
                &port.to_string(),
            ])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null()),
    );
    // Quickstart writes its files, then listens; wait for both (another
    // process on this machine could own a port we thought was free).
    assert!(
        wait_until(Duration::from_secs(30), || {
            demo.join("demo.totp").exists()
                && demo.join("ssh_config").exists()
                && port_is_listening(port)
        }),
        "quickstart did not start listening"
    );
    let mut out = String::new();
    let mut so = guard.child().stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut so, &mut s);
        s
    });
    let secret = std::fs::read_to_string(demo.join("demo.totp")).unwrap();
    let askpass = dir.path().join("askpass.sh");
    std::fs::write(
        &askpass,
        format!("#!/bin/sh\noathtool --totp -b {}\n", secret.trim()),
    )
    .unwrap();
    std::fs::set_permissions(&askpass, std::fs::Permissions::from_mode(0o700)).unwrap();
    let login = run_checked_timeout(
        std::process::Command::new("ssh")
            .args([
                "-F",
                demo.join("ssh_config").to_str().unwrap(),
                "gatehouse-demo",
                "targets",
            ])
            .env("SSH_ASKPASS", &askpass)
            .env("SSH_ASKPASS_REQUIRE", "force")
            .env("DISPLAY", ":0")
            .stdin(std::process::Stdio::null()),
        DEFAULT_COMMAND_TIMEOUT,
    );
    assert!(login.status.success(), "{}", stderr(&login));
    assert!(stdout(&login).contains("localhost"), "{}", stdout(&login));
    guard.kill();
    out.push_str(&reader.join().unwrap());
    assert!(
        out.contains("ssh -F") && out.contains("gatehouse-demo"),
        "no connection instructions:\n{out}"
    );
    assert!(
        out.contains("auditor_ed25519"),
        "no auditor key location:\n{out}"
    );
    assert_eq!(
        std::fs::metadata(&demo).unwrap().permissions().mode() & 0o777,
        0o700
    );
}

#[test]
fn durations_over_ten_years_are_reported_by_check_with_their_position() {
    let keys = tempfile::tempdir().unwrap();
    let key = gen_ed25519(keys.path(), "alice");
    let setup = GatehouseBuilder::new()
        .auth_line("lockout = \"100000d\"")
        .user("alice", &["web"], &[&key.public_line])
        .role_with(
            "web",
            &["web-1"],
            &["deploy"],
            &["max_session = \"1000000000y\""],
        )
        .role_with(
            "web2",
            &["web-1"],
            &["deploy"],
            &["idle_timeout = \"9999999999999h\""],
        )
        .ssh_target("web-1", 22, &[&key.public_line])
        .build();
    let out = setup.check();
    assert_eq!(out.status.code(), Some(64), "{}", stderr(&out));
    let err = stderr(&out);
    let text = setup.config_text();
    let path = setup.config_path().display().to_string();
    for (needle, field) in [
        ("\"100000d\"", "auth.lockout"),
        ("\"1000000000y\"", "roles[0].max_session"),
        ("\"9999999999999h\"", "roles[1].idle_timeout"),
    ] {
        let offset = text.find(needle).expect(needle);
        let line = text[..offset].matches('\n').count() + 1;
        let column = offset - text[..offset].rfind('\n').map_or(0, |i| i + 1) + 1;
        let at = format!("{path}:{line}:{column}: {field}");
        assert!(err.contains(&at), "missing {at} in:\n{err}");
    }
    assert!(err.contains("3650d"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn an_empty_ssh_listen_is_valid_with_wireguard_and_an_error_naming_the_fix_without() {
    let keys = tempfile::tempdir().unwrap();
    let key = gen_ed25519(keys.path(), "alice");
    let builder = GatehouseBuilder::new().user("alice", &[], &[&key.public_line]);
    let setup = builder.build();
    let text = setup.config_text();
    let listen_line = text
        .lines()
        .find(|l| l.starts_with("ssh_listen"))
        .unwrap()
        .to_string();
    setup.write_config(&text.replace(&listen_line, "ssh_listen = []"));
    let out = setup.check();
    assert_eq!(out.status.code(), Some(64));
    assert!(
        stderr(&out).contains("gateway.ssh_listen") && stderr(&out).contains("[wireguard]"),
        "{}",
        stderr(&out)
    );
    let port = free_port();
    let with_wg = format!(
        "{}\n[wireguard]\nlisten = \"127.0.0.1:{port}\"\naddress = \"10.77.0.1/24\"\n",
        text.replace(&listen_line, "ssh_listen = []")
    );
    setup.write_config(&with_wg);
    let out = setup.check();
    assert!(out.status.success(), "{}", stderr(&out));
}
