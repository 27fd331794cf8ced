//! STUB (rec owns this; dropped at merge)
use serde::{Deserialize, Serialize};
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub enum CopyDirection {
    In,
    Out,
}
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub enum Param {
    Null,
    Text(Vec<u8>),
    Binary(Vec<u8>),
}
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub enum DbEvent {
    Statement {
        text: Vec<u8>,
        parse: Option<String>,
    },
    Bind {
        statement: String,
        portal: String,
        params: Vec<Param>,
    },
    Result {
        tag: Option<String>,
        rows: Option<u64>,
        sqlstate: Option<String>,
        message: Option<String>,
        micros: u64,
    },
    Copy {
        direction: CopyDirection,
        bytes: u64,
    },
    Cancel {
        forwarded: bool,
    },
    Notice {
        severity: String,
        message: String,
    },
}
impl super::Recording {
    pub async fn db(&self, _ev: DbEvent) -> Result<(), super::RecordingError> {
        Ok(())
    }
}
