//! Database passwords that gatehouse uses to log in to database targets,
//! sealed at rest (AES-256-GCM under the master key, like TOTP secrets).
//!
//! Security behaviour:
//! - One file per (target, login) in `db-credentials/` (0700), each 0600,
//!   written atomically and durably (temp file, fsync, rename, fsync dir).
//! - The file name encodes target and login reversibly with only
//!   `[A-Za-z0-9_-]` and `%XX` escapes, so no name can reach outside the
//!   directory (`..`, `/`, NUL) and two different pairs never share a file.
//! - The associated data of the seal names the target and login, so a file
//!   copied or renamed to another pair does not open.
//! - A password read back is wiped from memory when dropped. Errors name the
//!   file, never its contents.

use std::fs;
use std::path::PathBuf;

use zeroize::Zeroizing;

use super::{check_mode, create_private_dir, write_secret_file, StateDir, StateError};

/// The subdirectory of the state directory holding sealed database passwords.
pub(super) const DIR: &str = "db-credentials";

impl StateDir {
    /// Stores (replacing) the password gatehouse uses to log in to database
    /// target `target` as `login`, sealed under the master key and bound to
    /// that (target, login) pair. 0600 in a 0700 directory, written durably.
    pub fn store_db_credential(
        &self,
        target: &str,
        login: &str,
        password: &[u8],
    ) -> Result<(), StateError> {
        let path = self.db_credential_path(target, login)?;
        let sealed = self
            .master()?
            .seal(password, &credential_aad(target, login))?;
        write_secret_file(&path, sealed.as_bytes())
    }

    /// The password for `login` on database target `target`, if one was
    /// stored (wiped from memory on drop). A file that does not open under
    /// this master key (wrong key, altered, or copied from another pair) is
    /// [`StateError::Unseal`].
    pub fn db_credential(
        &self,
        target: &str,
        login: &str,
    ) -> Result<Option<Zeroizing<Vec<u8>>>, StateError> {
        let path = self.db_credential_path(target, login)?;
        let text = match fs::read_to_string(&path) {
            Ok(t) => Zeroizing::new(t),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(StateError::io(&path, e)),
        };
        check_mode(&path, 0o600)?;
        self.master()?
            .open_secret(text.trim(), &credential_aad(target, login))
            .map(Some)
            .map_err(|_| StateError::Unseal { path })
    }

    /// `db-credentials/<target>@<login>.pw`, creating the directory (0700)
    /// on first use and refusing it when group or others can reach it.
    fn db_credential_path(&self, target: &str, login: &str) -> Result<PathBuf, StateError> {
        let dir = self.root.join(DIR);
        create_private_dir(&dir)?;
        Ok(dir.join(format!("{}@{}.pw", escape(target), escape(login))))
    }
}

/// Binds a sealed password to its (target, login); the length prefix keeps
/// `("a:b", "c")` and `("a", "b:c")` apart.
fn credential_aad(target: &str, login: &str) -> Vec<u8> {
    format!("gatehouse-db-credential:{}:{target}:{login}", target.len()).into_bytes()
}

/// Reversible, path-safe spelling of a name: `[A-Za-z0-9_-]` as is, every
/// other byte as `%XX`. Never empty (an empty name is `%`), never `.`/`..`.
fn escape(name: &str) -> String {
    if name.is_empty() {
        return "%".into();
    }
    let mut out = String::with_capacity(name.len());
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn open(root: &std::path::Path) -> StateDir {
        StateDir::open(root).unwrap()
    }

    #[test]
    fn db_credential_round_trips_sealed_in_a_0600_file_in_a_0700_dir() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("state");
        let st = open(&root);
        assert!(st.db_credential("db-1", "app_ro").unwrap().is_none());
        st.store_db_credential("db-1", "app_ro", b"s3cret-Pa55word!")
            .unwrap();
        assert_eq!(
            st.db_credential("db-1", "app_ro")
                .unwrap()
                .unwrap()
                .as_slice(),
            b"s3cret-Pa55word!"
        );
        let dir = root.join(DIR);
        let file = dir.join("db-1@app_ro.pw");
        let dmode = fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
        let fmode = fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(dmode, 0o700);
        assert_eq!(fmode, 0o600);
        let on_disk = fs::read(&file).unwrap();
        assert!(
            !on_disk.windows(6).any(|w| w == b"s3cret" || w == b"Pa55wo"),
            "plaintext on disk"
        );
        // Replacing works and other logins are separate.
        st.store_db_credential("db-1", "app_ro", b"second").unwrap();
        assert_eq!(
            st.db_credential("db-1", "app_ro")
                .unwrap()
                .unwrap()
                .as_slice(),
            b"second"
        );
        assert!(st.db_credential("db-1", "app_rw").unwrap().is_none());
        assert!(st.db_credential("db-2", "app_ro").unwrap().is_none());
        // The state directory still opens (its tree check covers the new dir).
        drop(st);
        open(&root);
    }

    #[test]
    fn db_credential_does_not_open_under_another_master_key() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("state");
        open(&root)
            .store_db_credential("db-1", "app_ro", b"pw-1")
            .unwrap();
        fs::write(root.join("master.key"), [7u8; 32]).unwrap();
        let st = open(&root);
        let err = st.db_credential("db-1", "app_ro").unwrap_err();
        assert!(matches!(err, StateError::Unseal { .. }), "{err}");
        assert!(!err.to_string().contains("pw-1"));
    }

    #[test]
    fn db_credential_copied_to_another_pair_does_not_open() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("state");
        let st = open(&root);
        st.store_db_credential("db-1", "app_ro", b"pw").unwrap();
        let dir = root.join(DIR);
        fs::copy(dir.join("db-1@app_ro.pw"), dir.join("db-1@admin.pw")).unwrap();
        assert!(matches!(
            st.db_credential("db-1", "admin"),
            Err(StateError::Unseal { .. })
        ));
    }

    #[test]
    fn db_credential_names_cannot_escape_the_directory_or_collide() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("state");
        let st = open(&root);
        let pairs = [
            ("../../etc", "passwd"),
            ("db/1", "x"),
            ("db", "1/x"),
            ("db@1", "x"),
            ("db", "1@x"),
            ("..", ".."),
            ("", ""),
            ("db_1", "x"),
        ];
        for (i, (t, l)) in pairs.iter().enumerate() {
            st.store_db_credential(t, l, format!("pw{i}").as_bytes())
                .unwrap();
        }
        for (i, (t, l)) in pairs.iter().enumerate() {
            assert_eq!(
                st.db_credential(t, l).unwrap().unwrap().as_slice(),
                format!("pw{i}").as_bytes(),
                "{t:?} {l:?}"
            );
        }
        // Every file landed directly in db-credentials/, nowhere else.
        let names: Vec<String> = fs::read_dir(root.join(DIR))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names.len(), pairs.len(), "{names:?}");
        for n in &names {
            assert!(!n.contains('/') && !n.starts_with('.'), "{n}");
        }
        let top: Vec<String> = fs::read_dir(&root)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert!(!top.iter().any(|n| n.ends_with(".pw")), "{top:?}");
    }

    #[test]
    fn a_loose_credentials_dir_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("state");
        let st = open(&root);
        st.store_db_credential("db-1", "app_ro", b"pw").unwrap();
        fs::set_permissions(root.join(DIR), fs::Permissions::from_mode(0o755)).unwrap();
        let err = st.db_credential("db-1", "app_ro").unwrap_err().to_string();
        assert!(err.contains("chmod 700"), "{err}");
    }
}
