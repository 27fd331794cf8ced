//! Persisted lockout records: failure timestamps and lock expiry per user and
//! per source address, in wall-clock seconds so they survive a restart.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{write_secret_file, StateError};

/// Failures and lock state of one user or one source.
#[derive(Debug, Default, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Record {
    /// Unix seconds of recent failures (pruned to the failure window).
    pub failures: Vec<u64>,
    /// Unix seconds until which logins are refused.
    pub locked_until: Option<u64>,
}

/// All lockout records, keyed `user:NAME` or `source:ADDR`.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct LockoutRecords {
    pub records: HashMap<String, Record>,
    #[serde(skip)]
    path: PathBuf,
}

impl LockoutRecords {
    /// Loads the records (an absent file is empty; a corrupt one is an error
    /// rather than silently forgetting lockouts).
    pub fn load(path: &Path) -> Result<LockoutRecords, StateError> {
        let mut recs = match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice::<LockoutRecords>(&bytes).map_err(|e| {
                StateError::Corrupt {
                    path: path.to_path_buf(),
                    message: format!("unreadable lockout records ({e})"),
                }
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => LockoutRecords::default(),
            Err(e) => return Err(StateError::io(path, e)),
        };
        recs.path = path.to_path_buf();
        Ok(recs)
    }

    /// Writes the records durably.
    pub fn save(&self) -> Result<(), StateError> {
        let bytes = serde_json::to_vec(self).map_err(|e| StateError::Corrupt {
            path: self.path.clone(),
            message: e.to_string(),
        })?;
        write_secret_file(&self.path, &bytes)
    }
}
