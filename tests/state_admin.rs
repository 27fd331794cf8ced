//! The administrator's commands against a packaged gateway's state
//! directory. Under systemd the service runs as a `DynamicUser` and owns
//! /var/lib/private/gatehouse. Root must not write there (that user could
//! swap a directory for a link between root's check and root's write and
//! point root's writes anywhere): root reads the SSH keys and is refused
//! the rest, with the command that runs it as the service. A master key
//! that lives in a systemd credential is never silently replaced by a new
//! `master.key` that seals secrets the service cannot open.
//!
//! The service's user is simulated by `nobody` (65534): the tests chown the
//! state directory to it, as systemd does at the first start, and run the
//! commands as it with `setpriv`, as `systemd-run -p DynamicUser=yes -p
//! User=gatehouse` would.

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::world::stderr;
use common::*;

const SERVICE_UID: u32 = 65534;

/// Root is needed to chown and to be the administrator; under CI=true its
/// absence fails the test.
fn require_root(test: &str) -> bool {
    if common::postgres::is_root() {
        return true;
    }
    let why = "the state-ownership tests need root (chown, and root is the administrator)";
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{why}, and CI=true: run the tests as root");
    }
    eprintln!("skipping {test}: {why}");
    false
}

fn chown_tree(dir: &Path, uid: u32) {
    let st = Command::new("chown")
        .arg("-R")
        .arg(format!("{uid}:{uid}"))
        .arg(dir)
        .status()
        .expect("chown");
    assert!(st.success());
}

/// Every path below `dir` with its owner, mode and contents.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, (u32, u32, Vec<u8>)> {
    let mut out = BTreeMap::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(p) = todo.pop() {
        let meta = std::fs::symlink_metadata(&p).unwrap();
        let contents = if meta.is_file() {
            std::fs::read(&p).unwrap()
        } else {
            Vec::new()
        };
        if meta.is_dir() {
            for e in std::fs::read_dir(&p).unwrap() {
                todo.push(e.unwrap().path());
            }
        }
        out.insert(p, (meta.uid(), meta.mode(), contents));
    }
    out
}

fn setup_with_alice() -> (tempfile::TempDir, GatehouseSetup) {
    let keys = tempfile::tempdir().unwrap();
    let key = gen_ed25519(keys.path(), "alice");
    let setup = GatehouseBuilder::new()
        .user("alice", &[], &[&key.public_line])
        .build();
    (keys, setup)
}

fn credential_dir(setup: &GatehouseSetup) -> PathBuf {
    let dir = setup.dir().join("credentials");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("gatehouse-master-key"), [0x5a; 32]).unwrap();
    dir
}

/// `gatehouse ARGS` as the service's user (`nobody`), with its credential
/// when given. The test directory is opened up for it to reach the config.
fn as_service(setup: &GatehouseSetup, creds: Option<&Path>, args: &[&str]) -> Output {
    std::fs::set_permissions(setup.dir(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut cmd = Command::new("setpriv");
    cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(env!("CARGO_BIN_EXE_gatehouse"))
        .args(args)
        .arg("--config")
        .arg(setup.config_path());
    if let Some(dir) = creds {
        cmd.env("CREDENTIALS_DIRECTORY", dir);
    }
    run_checked_timeout(&mut cmd, DEFAULT_COMMAND_TIMEOUT)
}

/// Runs `gatehouse ARGS` as the service would with its credential
/// (`$CREDENTIALS_DIRECTORY/gatehouse-master-key`); it must succeed.
fn with_credential(setup: &GatehouseSetup, creds: &Path, args: &[&str]) {
    let out = setup
        .cli_command(args)
        .env("CREDENTIALS_DIRECTORY", creds)
        .output()
        .unwrap();
    assert!(out.status.success(), "{args:?}: {}", stderr(&out));
}

#[test]
fn root_writes_nothing_into_the_services_state_directory_and_says_how_to_run_it() {
    if !require_root("root_writes_nothing_into_the_services_state_directory_and_says_how_to_run_it")
        || !require_tools(&["setpriv"])
    {
        return;
    }
    let (_keys, setup) = setup_with_alice();
    // The first start made the directory, master.key and the keys; systemd
    // then hands it all to the service's user.
    let _ = setup.hostkey();
    let _ = setup.client_pubkey();
    let out = setup.cli(&["user", "enroll", "alice"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let state = setup.state_dir();
    chown_tree(&state, SERVICE_UID);
    let before = snapshot(&state);

    // The administrator, as root: refused, with the way to do it.
    let out = setup.cli(&["user", "enroll", "alice"]);
    assert!(
        !out.status.success(),
        "root enrolled into the service's directory"
    );
    let err = stderr(&out);
    assert!(
        err.contains(&format!("belongs to uid {SERVICE_UID}"))
            && err.contains("systemd-run")
            && err.contains("User=gatehouse"),
        "{err}"
    );
    // Reading the SSH keys is fine.
    for args in [["hostkey"], ["pubkey"]] {
        let out = setup.cli(&args);
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        assert!(String::from_utf8_lossy(&out.stdout).starts_with("ssh-ed25519 "));
    }
    assert_eq!(
        snapshot(&state),
        before,
        "root changed the service's directory"
    );

    // A key that would have to be created is refused too, and not made.
    std::fs::remove_file(state.join("client_ed25519")).unwrap();
    std::fs::remove_file(state.join("client_ed25519.pub")).unwrap();
    let out = setup.cli(&["pubkey"]);
    assert!(
        !out.status.success(),
        "root created a key in the service's directory"
    );
    assert!(!state.join("client_ed25519").exists());

    // As the service's user the same command works, and what it writes is its own.
    let out = as_service(&setup, None, &["user", "enroll", "alice"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let after = snapshot(&state);
    let foreign: Vec<_> = after
        .iter()
        .filter(|(_, (uid, _, _))| *uid != SERVICE_UID)
        .map(|(p, (uid, _, _))| (p.clone(), *uid))
        .collect();
    assert!(foreign.is_empty(), "{foreign:?}");
    assert_ne!(
        after.get(&state.join("totp/alice.secret")).map(|e| &e.2),
        before.get(&state.join("totp/alice.secret")).map(|e| &e.2),
        "the secret was not replaced"
    );
}

#[test]
fn a_master_key_from_a_credential_is_never_replaced_by_a_new_master_key_file() {
    let (_keys, setup) = setup_with_alice();
    let creds = credential_dir(&setup);
    // The service with its credential: secrets sealed under the credential's key.
    with_credential(&setup, &creds, &["user", "enroll", "alice"]);
    let state = setup.state_dir();
    let master = state.join("master.key");
    assert!(!master.exists(), "the credential's key was not used");
    let sealed = std::fs::read(state.join("totp/alice.secret")).unwrap();

    // The same command without the credential (an administrator's shell)
    // must refuse, not create master.key and seal under it.
    let out = setup.cli(&["user", "enroll", "alice"]);
    assert!(!out.status.success(), "enrolled under a new master key");
    let err = stderr(&out);
    assert!(
        err.contains("master.key is missing")
            && err.contains("totp/alice.secret")
            && err.contains("LoadCredentialEncrypted=gatehouse-master-key"),
        "{err}"
    );
    assert!(!master.exists(), "a new master.key was created");
    assert_eq!(
        std::fs::read(state.join("totp/alice.secret")).unwrap(),
        sealed,
        "the sealed secret was replaced"
    );
    // The gateway itself refuses to start the same way rather than run
    // with a key that opens nothing.
    let err = match setup.try_start() {
        Ok(_) => panic!("started without its master key"),
        Err(e) => e,
    };
    assert!(err.contains("master.key is missing"), "{err}");
    assert!(!master.exists());
}

#[test]
fn the_services_user_with_its_credential_enrolls_without_a_master_key_file() {
    if !require_root("the_services_user_with_its_credential_enrolls_without_a_master_key_file")
        || !require_tools(&["setpriv"])
    {
        return;
    }
    let (_keys, setup) = setup_with_alice();
    let creds = credential_dir(&setup);
    // The service's first start with its credential: keys, no master.key.
    with_credential(&setup, &creds, &["hostkey"]);
    let state = setup.state_dir();
    chown_tree(&state, SERVICE_UID);
    chown_tree(&creds, SERVICE_UID);

    // What `systemd-run -p DynamicUser=yes -p User=gatehouse -p
    // LoadCredentialEncrypted=...` gives the command.
    let out = as_service(&setup, Some(&creds), &["user", "enroll", "alice"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(state.join("totp/alice.secret").exists());
    assert!(
        !state.join("master.key").exists(),
        "a master.key was made beside the credential"
    );
}
