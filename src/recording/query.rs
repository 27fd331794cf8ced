//! The query log of a database session: the events a database proxy hands
//! to [`super::Recording::db`], and how they are written inside sealed
//! segments.
//!
//! A database recording (`kind = "postgres"` or `"mysql"`) has the same segments, chain,
//! `meta.json`, verify, list and retention as a terminal session; only its
//! events differ. Each is a line `[seconds, code, object]`:
//!
//! | code     | [`DbEvent`]            | object |
//! |----------|------------------------|--------|
//! | `q`      | [`DbEvent::Statement`] | `{"text": T, "parse": null \| "name"}` |
//! | `p`      | [`DbEvent::Bind`]      | `{"statement": "s", "portal": "p", "params": [PARAM, ...], "types": ["LONGLONG", ...]}` (`types` MySQL only, absent when empty) |
//! | `r`      | [`DbEvent::Result`]    | `{"tag", "rows", "sqlstate", "message", "micros"}` |
//! | `copy`   | [`DbEvent::Copy`]      | `{"direction": "in" \| "out", "bytes": N}` |
//! | `cancel` | [`DbEvent::Cancel`]    | `{"forwarded": bool}` |
//! | `notice` | [`DbEvent::Notice`]    | `{"severity", "message"}` |
//! | `refused`| [`DbEvent::Refused`]   | `{"command", "reason"}` |
//!
//! Bytes the client sent (statement text, parameter values) are kept
//! exactly, as `o`/`ob` keep terminal output: `T` is a JSON string when
//! the bytes are tidy UTF-8 text, else `{"base64": "..."}`. A `PARAM` is
//! `null` (SQL NULL), `{"text": T}` (text format) or `{"base64": "..."}`
//! (binary format). `r` is also asciicast's resize code: a resize's data is
//! a string (`"80x24"`), a result's an object, so a reader tells them apart
//! by the data alone. The session's end is the usual `end` event.
//!
//! Result rows are never recorded, and none of this reaches `meta.json`,
//! the audit log or the daemon's logs: SQL text is only in the sealed
//! segments.

use base64::Engine;
use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Event codes of database recordings (see the module docs).
pub mod code {
    /// A statement: simple Query text, or Parse.
    pub const STATEMENT: &str = "q";
    /// Bind parameters.
    pub const BIND: &str = "p";
    /// A statement's result (also asciicast's resize code; told apart by
    /// the data: an object here, a string for a resize).
    pub const RESULT: &str = "r";
    /// COPY direction and bytes.
    pub const COPY: &str = "copy";
    /// A cancel request.
    pub const CANCEL: &str = "cancel";
    /// A NoticeResponse.
    pub const NOTICE: &str = "notice";
    /// A command gatehouse refused.
    pub const REFUSED: &str = "refused";
}

/// Most bytes of client data (statement text and parameter values, plus
/// the other strings) one event may carry. Encoded (base64, JSON escapes)
/// it stays well under what a reader accepts in one segment (64 MiB), so a
/// recording never holds a segment its own tools refuse. A larger event is
/// refused by [`super::Recording::db`] ([`super::RecordingError::TooLarge`]):
/// the proxy must not run what cannot be recorded.
pub const MAX_EVENT_BYTES: usize = 16 * 1024 * 1024;

/// One event of a database session.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum DbEvent {
    /// "q": a statement: simple Query text, or Parse (name = prepared statement name, "" = unnamed)
    Statement {
        #[serde(with = "text_bytes")]
        text: Vec<u8>,
        parse: Option<String>,
    },
    /// "p": Bind parameters for `portal` of `statement`: each None (NULL), text (format 0) or binary (format 1)
    Bind {
        statement: String,
        portal: String,
        params: Vec<Param>,
        /// MySQL: the type of each parameter (`LONGLONG`, `VAR_STRING`,
        /// `unsigned LONG`...), as bound by the client (sent with the first
        /// execute, remembered for the next). Absent for PostgreSQL.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        types: Vec<String>,
    },
    /// "r": a statement's result: CommandComplete tag (rows parsed from the tag when present), or error
    Result {
        tag: Option<String>,
        rows: Option<u64>,
        sqlstate: Option<String>,
        message: Option<String>,
        micros: u64,
    },
    /// "copy": COPY data direction ("in"/"out") and byte count when the COPY ends
    Copy {
        direction: CopyDirection,
        bytes: u64,
    },
    /// "cancel": a cancel request for this session (forwarded or not)
    Cancel { forwarded: bool },
    /// "notice": a NoticeResponse's severity+message (optional; small)
    Notice { severity: String, message: String },
    /// "refused": a command gatehouse did not forward (COM_CHANGE_USER,
    /// LOAD DATA LOCAL INFILE, a binlog command, a KILL of another
    /// person's session), and why.
    Refused { command: String, reason: String },
}

/// Which way a COPY's data went.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum CopyDirection {
    /// Client -> server (`COPY ... FROM STDIN`).
    In,
    /// Server -> client (`COPY ... TO STDOUT`).
    Out,
}

impl CopyDirection {
    pub fn as_str(self) -> &'static str {
        match self {
            CopyDirection::In => "in",
            CopyDirection::Out => "out",
        }
    }
}

/// One Bind parameter value, exactly as the client sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Param {
    /// SQL NULL (length -1).
    Null,
    /// Text format (0).
    Text(Vec<u8>),
    /// Binary format (1).
    Binary(Vec<u8>),
}

impl DbEvent {
    /// The event's code in a segment.
    pub fn code(&self) -> &'static str {
        match self {
            DbEvent::Statement { .. } => code::STATEMENT,
            DbEvent::Bind { .. } => code::BIND,
            DbEvent::Result { .. } => code::RESULT,
            DbEvent::Copy { .. } => code::COPY,
            DbEvent::Cancel { .. } => code::CANCEL,
            DbEvent::Notice { .. } => code::NOTICE,
            DbEvent::Refused { .. } => code::REFUSED,
        }
    }

    /// A name for the event (`statement`, `bind`, ...), as in export.
    pub fn name(&self) -> &'static str {
        match self {
            DbEvent::Statement { .. } => "statement",
            DbEvent::Bind { .. } => "bind",
            DbEvent::Result { .. } => "result",
            DbEvent::Copy { .. } => "copy",
            DbEvent::Cancel { .. } => "cancel",
            DbEvent::Notice { .. } => "notice",
            DbEvent::Refused { .. } => "refused",
        }
    }

    /// Bytes of variable-length data the event carries (what the queue's
    /// byte budget and [`MAX_EVENT_BYTES`] count).
    pub fn payload_len(&self) -> usize {
        let opt = |s: &Option<String>| s.as_ref().map_or(0, String::len);
        match self {
            DbEvent::Statement { text, parse } => text.len().saturating_add(opt(parse)),
            DbEvent::Bind {
                statement,
                portal,
                params,
                types,
            } => params
                .iter()
                .map(|p| match p {
                    Param::Null => 0,
                    Param::Text(b) | Param::Binary(b) => b.len(),
                })
                .chain(types.iter().map(String::len))
                .fold(statement.len().saturating_add(portal.len()), |a, b| {
                    a.saturating_add(b)
                }),
            DbEvent::Result {
                tag,
                sqlstate,
                message,
                ..
            } => opt(tag)
                .saturating_add(opt(sqlstate))
                .saturating_add(opt(message)),
            DbEvent::Copy { .. } | DbEvent::Cancel { .. } => 0,
            DbEvent::Notice { severity, message } => severity.len().saturating_add(message.len()),
            DbEvent::Refused { command, reason } => command.len().saturating_add(reason.len()),
        }
    }

    /// Appends the object written after the code (the variant's fields,
    /// in declaration order) as JSON to `buf`, without an intermediate
    /// value: the event serialized whole, minus its `{"name":` wrapper.
    pub fn write_object(&self, buf: &mut Vec<u8>) {
        let start = buf.len();
        let prefix = format!("{{\"{}\":", self.name());
        let wrapped = serde_json::to_writer(&mut *buf, self).is_ok()
            && buf
                .get(start..)
                .is_some_and(|b| b.starts_with(prefix.as_bytes()))
            && buf.last() == Some(&b'}');
        if wrapped {
            buf.pop();
            buf.drain(start..start.saturating_add(prefix.len()));
        } else {
            buf.truncate(start);
            if serde_json::to_writer(&mut *buf, &self.to_object()).is_err() {
                buf.extend_from_slice(b"null");
            }
        }
    }

    /// The object written after the code: the variant's fields.
    pub fn to_object(&self) -> serde_json::Value {
        match serde_json::to_value(self) {
            Ok(serde_json::Value::Object(mut m)) => {
                m.remove(self.name()).unwrap_or(serde_json::Value::Null)
            }
            _ => serde_json::Value::Null,
        }
    }

    /// The event of a segment line's code and object; None when the code
    /// is not a database event or the object does not fit it (a resize's
    /// `"r"` with a string, for one).
    pub fn from_line(code: &str, object: serde_json::Value) -> Option<DbEvent> {
        if !object.is_object() {
            return None;
        }
        let name = match code {
            code::STATEMENT => "statement",
            code::BIND => "bind",
            code::RESULT => "result",
            code::COPY => "copy",
            code::CANCEL => "cancel",
            code::NOTICE => "notice",
            code::REFUSED => "refused",
            _ => return None,
        };
        let mut wrapped = serde_json::Map::new();
        wrapped.insert(name.into(), object);
        serde_json::from_value(serde_json::Value::Object(wrapped)).ok()
    }
}

fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(b)
}

/// Bytes as a JSON string when tidy UTF-8 text, else `{"base64": "..."}`.
mod text_bytes {
    use super::*;

    #[derive(Serialize)]
    struct B64Ref<'a> {
        base64: &'a str,
    }

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Repr {
        Text(String),
        Base64 { base64: String },
    }

    pub fn serialize<S: Serializer>(b: &[u8], s: S) -> Result<S::Ok, S::Error> {
        match std::str::from_utf8(b) {
            Ok(t) if super::super::writer::tidy(t) => s.serialize_str(t),
            _ => B64Ref { base64: &b64(b) }.serialize(s),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        match Repr::deserialize(d)? {
            Repr::Text(t) => Ok(t.into_bytes()),
            Repr::Base64 { base64 } => base64::engine::general_purpose::STANDARD
                .decode(base64)
                .map_err(D::Error::custom),
        }
    }
}

/// `{"text": T}` with `T` as in `text_bytes`.
#[derive(Deserialize)]
struct TextParam {
    #[serde(with = "text_bytes")]
    text: Vec<u8>,
}

/// [`TextParam`] without copying the bytes.
#[derive(Serialize)]
struct TextParamRef<'a> {
    #[serde(with = "text_bytes")]
    text: &'a [u8],
}

#[derive(Serialize, Deserialize)]
struct BinaryParam {
    base64: String,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum ParamRepr {
    Text(TextParam),
    Binary(BinaryParam),
}

impl Serialize for Param {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Param::Null => s.serialize_none(),
            Param::Text(b) => TextParamRef { text: b }.serialize(s),
            Param::Binary(b) => BinaryParam { base64: b64(b) }.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for Param {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Param, D::Error> {
        Ok(match Option::<ParamRepr>::deserialize(d)? {
            None => Param::Null,
            Some(ParamRepr::Text(t)) => Param::Text(t.text),
            Some(ParamRepr::Binary(b)) => Param::Binary(
                base64::engine::general_purpose::STANDARD
                    .decode(b.base64)
                    .map_err(D::Error::custom)?,
            ),
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn params_have_the_documented_json() {
        let v = serde_json::to_value(vec![
            Param::Null,
            Param::Text(b"42".to_vec()),
            Param::Text(vec![0xff, 0]),
            Param::Binary(vec![0, 1, 2]),
        ])
        .unwrap();
        assert_eq!(
            v,
            json!([null, {"text": "42"}, {"text": {"base64": "/wA="}}, {"base64": "AAEC"}])
        );
        let back: Vec<Param> = serde_json::from_value(v).unwrap();
        assert_eq!(back[2], Param::Text(vec![0xff, 0]));
        assert_eq!(back[3], Param::Binary(vec![0, 1, 2]));
    }

    #[test]
    fn events_are_objects_under_their_codes() {
        let ev = DbEvent::Statement {
            text: b"SELECT 1".to_vec(),
            parse: None,
        };
        assert_eq!(ev.code(), "q");
        assert_eq!(ev.to_object(), json!({"text": "SELECT 1", "parse": null}));
        assert_eq!(DbEvent::from_line("q", ev.to_object()), Some(ev.clone()));
        let mut buf = b"[0.1,\"q\",".to_vec();
        ev.write_object(&mut buf);
        assert_eq!(buf, br#"[0.1,"q",{"text":"SELECT 1","parse":null}"#);
        // A resize is not a result.
        assert_eq!(DbEvent::from_line("r", json!("80x24")), None);
        let copy = DbEvent::Copy {
            direction: CopyDirection::In,
            bytes: 7,
        };
        assert_eq!(copy.to_object(), json!({"direction": "in", "bytes": 7}));
    }
}
