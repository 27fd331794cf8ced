//! The state directory: the gateway's own keys, enrolled TOTP secrets
//! (sealed with AES-256-GCM), the last accepted TOTP step per user, and
//! lockout records.
//!
//! Security behaviour: the directory is created 0700 and every file in it
//! 0600. On open, a directory or secret file that group or others can read is
//! refused with a message saying how to fix it — gatehouse never "repairs"
//! permissions silently, since a loose mode may mean someone already copied
//! the secrets.
//!
//! Replacing a file is atomic and durable: the new contents go to a temp
//! file with a name unique to that one write (process id + a counter,
//! created with `O_EXCL`), which is fsynced, renamed over the old file, and
//! then the directory is fsynced so the rename itself survives a crash.
//! Secrets read from here (TOTP secrets, the master key) are wiped from
//! memory when dropped.
//!
//! Root never writes into a state directory that belongs to another user
//! (the packaged service runs as systemd's `DynamicUser` and owns its
//! directory): that user could swap a directory for a link between root's
//! check and root's write and so point root's writes anywhere. Root may
//! read the SSH host and client keys there (`gatehouse hostkey`, `pubkey`);
//! everything else is refused with the command that runs it as the service
//! (`systemd-run -p DynamicUser=yes -p User=gatehouse ...`). And a master
//! key is only ever created where no secret is sealed yet: a directory whose
//! secrets are sealed has its key elsewhere (a systemd credential, a backup),
//! and a new key would seal what the service cannot open.

#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod credentials;
mod keys;
mod records;
mod seal;

use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use zeroize::Zeroizing;

pub use keys::KeyPair;
pub use records::{CoalescingWriter, LockoutRecords, Record};
pub use seal::MasterKey;

/// Errors from the state directory. Messages name paths, never contents.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{path} is accessible by group or others (mode {mode:04o}); \
         fix it with: chmod {want:o} {path}"
    )]
    Permissions { path: PathBuf, mode: u32, want: u32 },
    #[error("{path}: {message}")]
    Corrupt { path: PathBuf, message: String },
    #[error("cannot decrypt {path}: the master key does not match or the file was altered")]
    Unseal { path: PathBuf },
    #[error(
        "{path} is missing, and {why}: this state directory's master key is \
         elsewhere, and a new one would seal secrets the service cannot open. \
         If the service loads it from a systemd credential, run the command \
         with that credential, e.g. `systemd-run --pipe --wait --collect -p \
         LoadCredentialEncrypted=gatehouse-master-key:/etc/gatehouse/master-key.cred \
         gatehouse ...`; otherwise restore master.key from the backup"
    )]
    MasterKeyElsewhere { path: PathBuf, why: String },
    #[error(
        "{path} belongs to uid {uid} (the service's user): root does not write \
         into it, since that user could point root's writes elsewhere. Run the \
         command as the service, e.g. `systemd-run --pipe --wait --collect -p \
         DynamicUser=yes -p User=gatehouse -p StateDirectory=gatehouse -p \
         LoadCredentialEncrypted=gatehouse-master-key:/etc/gatehouse/master-key.cred \
         gatehouse ...` (without the credential line when the master key is \
         master.key); see DEPLOY.md"
    )]
    ForeignOwner { path: PathBuf, uid: u32 },
}

impl StateError {
    fn io(path: &Path, source: std::io::Error) -> Self {
        StateError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// An opened, permission-checked state directory.
#[derive(Debug)]
pub struct StateDir {
    root: PathBuf,
    /// `None` when opened for the SSH keys only ([`StateDir::open_for_keys`]).
    master: Option<MasterKey>,
    /// The owner, when root opened a directory that belongs to someone
    /// else (for its keys only: nothing may be written).
    foreign: Option<u32>,
}

impl StateDir {
    /// Opens (creating 0700 if missing) the state directory, checks the
    /// permissions of everything secret in it, and loads or creates the
    /// master key that seals enrolled secrets.
    ///
    /// The master key comes from `$CREDENTIALS_DIRECTORY/gatehouse-master-key`
    /// when systemd provides one (`LoadCredentialEncrypted=`), otherwise from
    /// `master.key` in the state directory.
    pub fn open(root: &Path) -> Result<StateDir, StateError> {
        Self::open_inner(root, true)
    }

    /// Opens the state directory for its SSH host and client keys only
    /// (`gatehouse hostkey`, `gatehouse pubkey`): they are not sealed, so
    /// these commands work as root on a packaged host whose master key is
    /// in the service's credential. Everything sealed fails to open.
    pub fn open_for_keys(root: &Path) -> Result<StateDir, StateError> {
        Self::open_inner(root, false)
    }

    fn open_inner(root: &Path, with_master: bool) -> Result<StateDir, StateError> {
        if !root.exists() {
            fs::create_dir_all(root).map_err(|e| StateError::io(root, e))?;
            fs::set_permissions(root, fs::Permissions::from_mode(0o700))
                .map_err(|e| StateError::io(root, e))?;
        }
        check_mode(root, 0o700)?;
        let owner = fs::metadata(root)
            .map_err(|e| StateError::io(root, e))?
            .uid();
        let foreign = (rustix::process::geteuid().is_root() && owner != 0).then_some(owner);
        if let (Some(uid), true) = (foreign, with_master) {
            return Err(StateError::ForeignOwner {
                path: root.to_path_buf(),
                uid,
            });
        }
        let master = match std::env::var_os("CREDENTIALS_DIRECTORY") {
            _ if !with_master => None,
            Some(dir) if Path::new(&dir).join("gatehouse-master-key").exists() => {
                let p = Path::new(&dir).join("gatehouse-master-key");
                Some(MasterKey::load(&p)?)
            }
            _ => {
                let path = root.join("master.key");
                if !path.exists() {
                    if let Some(why) = master_key_elsewhere(root)? {
                        return Err(StateError::MasterKeyElsewhere { path, why });
                    }
                }
                Some(MasterKey::load_or_create(&path)?)
            }
        };
        if foreign.is_none() {
            create_private_dir(&root.join("totp"))?;
        }
        check_tree(root)?;
        Ok(StateDir {
            root: root.to_path_buf(),
            master,
            foreign,
        })
    }

    /// The directory itself.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The master key; an error for a directory opened for its keys only.
    fn master(&self) -> Result<&MasterKey, StateError> {
        self.master.as_ref().ok_or_else(|| StateError::Corrupt {
            path: self.root.join("master.key"),
            message: "opened for the SSH keys only: nothing sealed can be read or written".into(),
        })
    }

    /// The gateway's SSH host key (created on first use).
    pub fn host_key(&self) -> Result<KeyPair, StateError> {
        self.key("host_ed25519", "gatehouse-host")
    }

    /// The key gatehouse uses to log in to targets (created on first use).
    pub fn client_key(&self) -> Result<KeyPair, StateError> {
        self.key("client_ed25519", "gatehouse-client")
    }

    /// A key file of the directory, never through a link; in a directory
    /// root opened but does not own, only one that exists (root creates
    /// nothing there).
    fn key(&self, name: &str, comment: &str) -> Result<KeyPair, StateError> {
        let path = self.root.join(name);
        match fs::symlink_metadata(&path) {
            Ok(meta) if meta.file_type().is_symlink() => Err(StateError::Corrupt {
                path,
                message: "is a symbolic link: gatehouse reads its keys from real files only".into(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && self.foreign.is_some() => {
                Err(StateError::ForeignOwner {
                    path: self.root.clone(),
                    uid: self.foreign.unwrap_or_default(),
                })
            }
            _ => KeyPair::load_or_create(&path, comment),
        }
    }

    /// Stores (replacing) the TOTP secret of `user`, sealed under the master key,
    /// and forgets the user's last accepted step.
    pub fn store_totp_secret(&self, user: &str, secret: &[u8]) -> Result<(), StateError> {
        let path = self.totp_path(user, "secret");
        let sealed = self.master()?.seal(secret, aad_for(user).as_bytes())?;
        write_secret_file(&path, sealed.as_bytes())?;
        let step = self.totp_path(user, "step");
        if step.exists() {
            fs::remove_file(&step).map_err(|e| StateError::io(&step, e))?;
        }
        Ok(())
    }

    /// The TOTP secret of `user`, if enrolled (wiped from memory on drop).
    pub fn totp_secret(&self, user: &str) -> Result<Option<Zeroizing<Vec<u8>>>, StateError> {
        let path = self.totp_path(user, "secret");
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(StateError::io(&path, e)),
        };
        self.master()?
            .open_secret(text.trim(), aad_for(user).as_bytes())
            .map(Some)
            .map_err(|_| StateError::Unseal { path })
    }

    /// The last TOTP time step accepted for `user` (0 if none).
    pub fn last_totp_step(&self, user: &str) -> Result<u64, StateError> {
        let path = self.totp_path(user, "step");
        match fs::read_to_string(&path) {
            Ok(t) => t.trim().parse().map_err(|_| StateError::Corrupt {
                path,
                message: "not a number".into(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
            Err(e) => Err(StateError::io(&path, e)),
        }
    }

    /// Records that `step` was accepted for `user`; written durably before
    /// the login is allowed to proceed, so a restart never re-opens it.
    pub fn set_last_totp_step(&self, user: &str, step: u64) -> Result<(), StateError> {
        write_secret_file(&self.totp_path(user, "step"), step.to_string().as_bytes())
    }

    /// Path of the persisted lockout records.
    pub fn lockouts_path(&self) -> PathBuf {
        self.root.join("lockouts.json")
    }

    fn totp_path(&self, user: &str, ext: &str) -> PathBuf {
        // User names are validated by the config ([a-z_][a-z0-9_.-]*), but this
        // is also reached from the CLI: keep anything path-like out.
        let safe: String = user
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || "_.-".contains(c) {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        self.root.join("totp").join(format!("{safe}.{ext}"))
    }

    /// `wireguard/` in the state directory (created 0700): the gateway's
    /// WireGuard key, devices' preshared keys, and addresses handed out by
    /// `gatehouse peer add`.
    pub fn wireguard_dir(&self) -> Result<PathBuf, StateError> {
        let p = self.root.join("wireguard");
        create_private_dir(&p)?;
        Ok(p)
    }

    /// The gateway's WireGuard private key (32 bytes), created on first use
    /// and sealed under the master key, so that it survives restarts (clients
    /// keep working) and is unreadable without the master key.
    pub fn wireguard_private_key(&self) -> Result<[u8; 32], StateError> {
        let path = self.wireguard_dir()?.join("gateway.key");
        let aad = b"gatehouse-wireguard:gateway";
        if !path.exists() {
            let mut key = [0u8; 32];
            ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut key).map_err(
                |_| StateError::Corrupt {
                    path: path.clone(),
                    message: "no system randomness".into(),
                },
            )?;
            let sealed = self.master()?.seal(&key, aad)?;
            write_secret_file(&path, sealed.as_bytes())?;
        }
        let text = fs::read_to_string(&path).map_err(|e| StateError::io(&path, e))?;
        let plain = self
            .master()?
            .open(text.trim(), aad)
            .map_err(|_| StateError::Unseal { path: path.clone() })?;
        plain.try_into().map_err(|_| StateError::Corrupt {
            path,
            message: "a WireGuard key must be 32 bytes".into(),
        })
    }

    /// Stores (replacing) the preshared key of the WireGuard device with
    /// `public_key`, sealed under the master key and bound to that key.
    pub fn store_wireguard_psk(
        &self,
        public_key: &[u8; 32],
        psk: &[u8; 32],
    ) -> Result<(), StateError> {
        let path = self.wireguard_psk_path(public_key)?;
        let sealed = self
            .master()?
            .seal(psk, &Self::wireguard_psk_aad(public_key))?;
        write_secret_file(&path, sealed.as_bytes())
    }

    /// The preshared key of the device with `public_key`, if one was stored
    /// (`gatehouse peer add`); devices added by hand have none.
    pub fn wireguard_psk(&self, public_key: &[u8; 32]) -> Result<Option<[u8; 32]>, StateError> {
        let path = self.wireguard_psk_path(public_key)?;
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(StateError::io(&path, e)),
        };
        let plain = self
            .master()?
            .open(text.trim(), &Self::wireguard_psk_aad(public_key))
            .map_err(|_| StateError::Unseal { path: path.clone() })?;
        plain.try_into().map(Some).map_err(|_| StateError::Corrupt {
            path,
            message: "a preshared key must be 32 bytes".into(),
        })
    }

    /// Binds a sealed preshared key to its device: a file copied to another
    /// device's name does not open.
    fn wireguard_psk_aad(public_key: &[u8; 32]) -> Vec<u8> {
        let mut aad = b"gatehouse-wireguard-psk:".to_vec();
        aad.extend_from_slice(public_key);
        aad
    }

    fn wireguard_psk_path(&self, public_key: &[u8; 32]) -> Result<PathBuf, StateError> {
        Ok(self
            .wireguard_dir()?
            .join(format!("{}.psk", hex::encode(public_key))))
    }
}

fn aad_for(user: &str) -> String {
    format!("gatehouse-totp:{user}")
}

/// Why `master.key`, missing from `root`, must not be created there: the
/// secrets already sealed in it, or the service that owns it and never
/// made one (it loads its key from a credential). `None` for a directory
/// whose key may be created.
fn master_key_elsewhere(root: &Path) -> Result<Option<String>, StateError> {
    let mut sealed = Vec::new();
    for (dir, ext) in [
        ("totp", "secret"),
        (credentials::DIR, "pw"),
        ("wireguard", "key"),
        ("wireguard", "psk"),
    ] {
        let d = root.join(dir);
        let entries = match fs::read_dir(&d) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(StateError::io(&d, e)),
        };
        for entry in entries {
            let path = entry.map_err(|e| StateError::io(&d, e))?.path();
            if path.extension().is_some_and(|e| e == ext) {
                sealed.push(format!(
                    "{dir}/{}",
                    path.file_name().unwrap_or_default().to_string_lossy()
                ));
            }
        }
    }
    if !sealed.is_empty() {
        sealed.sort();
        let n = sealed.len();
        sealed.truncate(3);
        return Ok(Some(format!(
            "{n} secret(s) in it are sealed under a master key ({}{})",
            sealed.join(", "),
            if n > 3 { ", ..." } else { "" }
        )));
    }
    let owner = fs::metadata(root)
        .map_err(|e| StateError::io(root, e))?
        .uid();
    if owner != rustix::process::geteuid().as_raw() {
        return Ok(Some(format!(
            "the directory belongs to uid {owner} (the service), which never created one"
        )));
    }
    Ok(None)
}

/// Creates `path` (0700) when missing and refuses it when group or others
/// can reach it. A symbolic link is refused, not followed. The new
/// directory's mode is set through its file descriptor (opened without
/// following links), never by path.
pub(crate) fn create_private_dir(path: &Path) -> Result<(), StateError> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_symlink() => {
            return Err(StateError::Corrupt {
                path: path.to_path_buf(),
                message: "is a symbolic link: gatehouse keeps its secrets in real directories only"
                    .into(),
            })
        }
        Ok(meta) if !meta.is_dir() => {
            return Err(StateError::Corrupt {
                path: path.to_path_buf(),
                message: "is not a directory".into(),
            })
        }
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            fs::DirBuilder::new()
                .mode(0o700)
                .create(path)
                .map_err(|e| StateError::io(path, e))?;
            let dir = fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW)
                .open(path)
                .map_err(|e| StateError::io(path, e))?;
            dir.set_permissions(fs::Permissions::from_mode(0o700))
                .map_err(|e| StateError::io(path, e))?;
        }
        Err(e) => return Err(StateError::io(path, e)),
    }
    check_mode(path, 0o700)
}

/// Refuses a path whose mode grants anything to group or others.
fn check_mode(path: &Path, want: u32) -> Result<(), StateError> {
    let meta = fs::metadata(path).map_err(|e| StateError::io(path, e))?;
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(StateError::Permissions {
            path: path.to_path_buf(),
            mode,
            want,
        });
    }
    Ok(())
}

/// Checks every file below the state directory (two levels deep) for loose modes.
fn check_tree(root: &Path) -> Result<(), StateError> {
    let entries = fs::read_dir(root).map_err(|e| StateError::io(root, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| StateError::io(root, e))?;
        let path = entry.path();
        let ft = entry.file_type().map_err(|e| StateError::io(&path, e))?;
        if ft.is_dir() {
            check_mode(&path, 0o700)?;
            let inner = fs::read_dir(&path).map_err(|e| StateError::io(&path, e))?;
            for f in inner {
                let f = f.map_err(|e| StateError::io(&path, e))?;
                check_mode(&f.path(), 0o600)?;
            }
        } else if path.extension().is_none_or(|e| e != "pub") {
            check_mode(&path, 0o600)?;
        }
    }
    Ok(())
}

/// Writes `data` to `path` atomically (temp file, fsync, rename), mode 0600.
pub(crate) fn write_secret_file(path: &Path, data: &[u8]) -> Result<(), StateError> {
    write_file_mode(path, data, 0o600)
}

pub(crate) fn write_file_mode(path: &Path, data: &[u8], mode: u32) -> Result<(), StateError> {
    /// Distinguishes the writes of one process: two writers of the same file
    /// (threads, tasks) never share a temp file.
    static WRITES: AtomicU64 = AtomicU64::new(0);
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let n = WRITES.fetch_add(1, Ordering::Relaxed);
    let tmp = dir.join(format!(
        ".{}.tmp{}.{n}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("state"),
        std::process::id()
    ));
    let result = write_and_rename(&tmp, path, data, mode);
    if result.is_err() {
        // Leave no half-written temp file behind (it may not exist).
        let _ = fs::remove_file(&tmp);
    }
    result?;
    // The rename is only durable once the directory entry is on disk.
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| StateError::io(dir, e))
}

fn write_and_rename(tmp: &Path, path: &Path, data: &[u8], mode: u32) -> Result<(), StateError> {
    // create_new (O_EXCL): a stale temp file of a crashed run is never
    // written through, and two writers can never share one.
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(tmp)
        .map_err(|e| StateError::io(tmp, e))?;
    f.write_all(data).map_err(|e| StateError::io(tmp, e))?;
    f.sync_all().map_err(|e| StateError::io(tmp, e))?;
    drop(f);
    fs::rename(tmp, path).map_err(|e| StateError::io(path, e))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn a_secrets_directory_that_is_a_symlink_is_refused_not_followed() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("state");
        let elsewhere = tmp.path().join("elsewhere");
        fs::create_dir(&elsewhere).unwrap();
        fs::set_permissions(&elsewhere, fs::Permissions::from_mode(0o700)).unwrap();
        fs::create_dir(&root).unwrap();
        fs::set_permissions(&root, fs::Permissions::from_mode(0o700)).unwrap();
        std::os::unix::fs::symlink(&elsewhere, root.join("totp")).unwrap();
        let err = StateDir::open(&root).unwrap_err().to_string();
        assert!(err.contains("symbolic link"), "{err}");
        // The same for a directory made on first use.
        fs::remove_file(root.join("totp")).unwrap();
        let st = StateDir::open(&root).unwrap();
        std::os::unix::fs::symlink(&elsewhere, root.join("wireguard")).unwrap();
        let err = st.wireguard_private_key().unwrap_err().to_string();
        assert!(err.contains("symbolic link"), "{err}");
        assert_eq!(
            fs::read_dir(&elsewhere).unwrap().count(),
            0,
            "written through the link"
        );
    }

    #[test]
    fn state_dir_is_created_0700_and_secrets_round_trip_sealed() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("state");
        let st = StateDir::open(&root).unwrap();
        let mode = fs::metadata(&root).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        st.store_totp_secret("alice", b"0123456789abcdefghij")
            .unwrap();
        let on_disk = fs::read(root.join("totp/alice.secret")).unwrap();
        assert!(!on_disk.windows(10).any(|w| w == b"0123456789"));
        assert_eq!(
            st.totp_secret("alice").unwrap().unwrap().as_slice(),
            b"0123456789abcdefghij"
        );
        let fmode = fs::metadata(root.join("totp/alice.secret"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(fmode, 0o600);
        assert!(st.totp_secret("bob").unwrap().is_none());
    }

    #[test]
    fn loose_permissions_are_refused_with_the_fix() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("state");
        StateDir::open(&root).unwrap();
        fs::set_permissions(&root, fs::Permissions::from_mode(0o755)).unwrap();
        let err = StateDir::open(&root).unwrap_err().to_string();
        assert!(err.contains("chmod 700"), "{err}");
        fs::set_permissions(&root, fs::Permissions::from_mode(0o700)).unwrap();
        fs::set_permissions(root.join("master.key"), fs::Permissions::from_mode(0o644)).unwrap();
        let err = StateDir::open(&root).unwrap_err().to_string();
        assert!(
            err.contains("master.key") && err.contains("chmod 600"),
            "{err}"
        );
    }

    #[test]
    fn concurrent_writers_of_one_file_never_collide_and_leave_no_temp_files() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("lockouts.json");
        let writers: Vec<_> = (0..8u8)
            .map(|i| {
                let path = path.clone();
                std::thread::spawn(move || {
                    let data = vec![b'a' + i; 64 * 1024];
                    for _ in 0..20 {
                        write_secret_file(&path, &data).unwrap();
                    }
                })
            })
            .collect();
        for w in writers {
            w.join().expect("a writer failed");
        }
        let end = fs::read(&path).unwrap();
        assert_eq!(end.len(), 64 * 1024);
        assert!(
            end.iter().all(|&b| b == end[0]),
            "the file mixes two writers' contents"
        );
        let names: Vec<_> = fs::read_dir(tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("lockouts.json")]);
    }

    #[test]
    fn a_secret_sealed_for_one_user_does_not_open_for_another() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("state");
        let st = StateDir::open(&root).unwrap();
        st.store_totp_secret("alice", b"secret-of-alice-1234")
            .unwrap();
        fs::copy(root.join("totp/alice.secret"), root.join("totp/bob.secret")).unwrap();
        assert!(matches!(
            st.totp_secret("bob"),
            Err(StateError::Unseal { .. })
        ));
    }
}
