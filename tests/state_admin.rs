//! The administrator's commands against a packaged gateway's state
//! directory. Under systemd the service runs as a `DynamicUser` and owns
//! /var/lib/private/gatehouse; the administrator runs `gatehouse user
//! enroll` (and `pubkey`, `peer add`, `target credential`) as root. What
//! root writes there must stay readable by the service, and a master key
//! that lives in a systemd credential must never be silently replaced by a
//! new `master.key` that seals secrets the service cannot open.
//!
//! The service's user is simulated by `nobody` (65534): the tests chown the
//! state directory to it, as systemd does at the first start.

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

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

/// Every path below `dir` (and `dir`) whose owner is not `uid`.
fn not_owned_by(dir: &Path, uid: u32) -> Vec<(PathBuf, u32)> {
    let mut wrong = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(p) = todo.pop() {
        let meta = std::fs::symlink_metadata(&p).unwrap();
        if meta.uid() != uid || meta.gid() != uid {
            wrong.push((p.clone(), meta.uid()));
        }
        if meta.is_dir() {
            for e in std::fs::read_dir(&p).unwrap() {
                todo.push(e.unwrap().path());
            }
        }
    }
    wrong
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

/// An enrolment without a credential: creates master.key.
fn enroll_without_credential(setup: &GatehouseSetup) {
    let out = setup.cli(&["user", "enroll", "alice"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(setup.state_dir().join("master.key").exists());
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
fn what_root_writes_into_the_services_state_directory_takes_the_services_owner() {
    if !require_root("what_root_writes_into_the_services_state_directory_takes_the_services_owner")
    {
        return;
    }
    let (_keys, setup) = setup_with_alice();
    // The first start made the directory, master.key and the keys (here:
    // `hostkey` and an enrolment); systemd then hands it all to the
    // service's user.
    let _ = setup.hostkey();
    enroll_without_credential(&setup);
    let state = setup.state_dir();
    chown_tree(&state, SERVICE_UID);
    // Where the client key is made later: remove it so `pubkey` creates it.
    let _ = std::fs::remove_file(state.join("client_ed25519"));
    let _ = std::fs::remove_file(state.join("client_ed25519.pub"));

    // The administrator, as root.
    let out = setup.cli(&["user", "enroll", "alice"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = setup.cli(&["pubkey"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(state.join("totp/alice.secret").exists());
    assert!(state.join("client_ed25519").exists());

    let wrong = not_owned_by(&state, SERVICE_UID);
    assert!(
        wrong.is_empty(),
        "root left paths the service (uid {SERVICE_UID}) cannot read: {wrong:?}"
    );
    // No temp file left behind by the atomic writes.
    let names: Vec<String> = std::fs::read_dir(state.join("totp"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, vec!["alice.secret".to_string()], "{names:?}");
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
fn a_services_state_directory_without_master_key_is_refused_to_root() {
    if !require_root("a_services_state_directory_without_master_key_is_refused_to_root") {
        return;
    }
    let (_keys, setup) = setup_with_alice();
    let creds = credential_dir(&setup);
    // The service's first start with its credential: host key, no master.key, no secret yet.
    with_credential(&setup, &creds, &["hostkey"]);
    let state = setup.state_dir();
    chown_tree(&state, SERVICE_UID);

    // The SSH keys are not sealed: hostkey and pubkey work for root without it.
    for args in [["hostkey"], ["pubkey"]] {
        let out = setup.cli(&args);
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        assert!(String::from_utf8_lossy(&out.stdout).starts_with("ssh-ed25519 "));
    }
    assert!(!state.join("master.key").exists());
    let out = setup.cli(&["user", "enroll", "alice"]);
    assert!(!out.status.success(), "enrolled under a new master key");
    let err = stderr(&out);
    assert!(
        err.contains("master.key is missing") && err.contains(&format!("uid {SERVICE_UID}")),
        "{err}"
    );
    assert!(!state.join("master.key").exists());
    assert!(!state.join("totp/alice.secret").exists());

    // With the credential (what `systemd-run -p LoadCredentialEncrypted=`
    // gives the command) root enrolls, and the file is the service's.
    with_credential(&setup, &creds, &["user", "enroll", "alice"]);
    let wrong = not_owned_by(&state, SERVICE_UID);
    assert!(wrong.is_empty(), "{wrong:?}");
}
