//! Prepared statements: what gatehouse remembers of each (its parameter
//! count and the types last bound) and how a `COM_STMT_EXECUTE`'s
//! parameters are read for the recording.
//!
//! The client sends the parameter types with the first execute only (or
//! when they change: `new_params_bound_flag`); later executes send just the
//! values, so the types are remembered per statement. A parameter whose
//! value came by `COM_STMT_SEND_LONG_DATA` has no value in the execute.

use std::collections::{BTreeSet, HashMap};

use super::packet::Reader;
use crate::recording::query::Param;

/// Prepared statements remembered per session at most (the server's own
/// default `max_prepared_stmt_count` is 16,382 for all sessions).
pub const MAX_STATEMENTS: usize = 65_536;

/// One prepared statement.
#[derive(Debug, Clone, Default)]
pub struct Statement {
    pub params: u16,
    /// (type, flags) of each parameter, once bound.
    pub types: Option<Vec<(u8, u8)>>,
    /// Parameters given by long data since the last execute.
    pub long_data: BTreeSet<u16>,
}

/// The session's prepared statements by id.
#[derive(Debug, Default)]
pub struct Statements {
    map: HashMap<u32, Statement>,
    /// MariaDB: statement id 0xFFFFFFFF means the last one prepared.
    last: Option<u32>,
}

impl Statements {
    pub fn prepared(&mut self, id: u32, params: u16) {
        if self.map.len() >= MAX_STATEMENTS && !self.map.contains_key(&id) {
            // Forgotten statements are recorded undecoded.
            self.map.clear();
        }
        self.map.insert(
            id,
            Statement {
                params,
                ..Statement::default()
            },
        );
        self.last = Some(id);
    }

    fn resolve(&self, id: u32) -> u32 {
        match (id, self.last) {
            (u32::MAX, Some(last)) => last,
            _ => id,
        }
    }

    pub fn closed(&mut self, id: u32) {
        let id = self.resolve(id);
        self.map.remove(&id);
    }

    pub fn reset(&mut self, id: u32) {
        let id = self.resolve(id);
        if let Some(s) = self.map.get_mut(&id) {
            s.long_data.clear();
        }
    }

    pub fn clear(&mut self) {
        self.map.clear();
        self.last = None;
    }

    /// Forgets which statement id 0xFFFFFFFF names (a prepare is about to
    /// name a new one, or fail and leave none, as the server does).
    pub fn forget_last(&mut self) {
        self.last = None;
    }

    pub fn long_data(&mut self, id: u32, param: u16) {
        let id = self.resolve(id);
        if let Some(s) = self.map.get_mut(&id) {
            // The server refuses a parameter the statement does not have.
            if param >= s.params {
                return;
            }
            s.long_data.insert(param);
        }
    }

    /// Reads an execute's payload (after the command byte): the statement
    /// id and its parameters with their type names. An execute gatehouse
    /// cannot read (unknown statement, malformed) gives the whole payload
    /// as one binary parameter typed `undecoded`, so nothing is lost.
    pub fn execute(&mut self, body: &[u8]) -> (u32, Vec<Param>, Vec<String>) {
        let mut r = Reader::new(body);
        let Some(id) = r.u32() else {
            return (
                0,
                vec![Param::Binary(body.to_vec())],
                vec!["undecoded".into()],
            );
        };
        let id = self.resolve(id);
        let undecoded = || {
            (
                id,
                vec![Param::Binary(body.to_vec())],
                vec!["undecoded".to_string()],
            )
        };
        let Some(stmt) = self.map.get_mut(&id) else {
            return undecoded();
        };
        let long = std::mem::take(&mut stmt.long_data);
        match decode(&mut r, stmt, &long) {
            Some(v) => (id, v.0, v.1),
            None => undecoded(),
        }
    }
}

fn decode(
    r: &mut Reader<'_>,
    stmt: &mut Statement,
    long: &BTreeSet<u16>,
) -> Option<(Vec<Param>, Vec<String>)> {
    let _flags = r.u8()?;
    let _iterations = r.u32()?;
    let n = usize::from(stmt.params);
    if n == 0 {
        return Some((Vec::new(), Vec::new()));
    }
    let bitmap = r.bytes(n.div_ceil(8))?.to_vec();
    if r.u8()? == 1 {
        let mut types = Vec::with_capacity(n);
        for _ in 0..n {
            types.push((r.u8()?, r.u8()?));
        }
        stmt.types = Some(types);
    }
    let types = stmt.types.clone()?;
    let mut params = Vec::with_capacity(n);
    let mut names = Vec::with_capacity(n);
    for (i, &(ty, flags)) in types.iter().enumerate().take(n) {
        let unsigned = flags & 0x80 != 0;
        names.push(type_name(ty, unsigned));
        let null = bitmap.get(i / 8).is_some_and(|b| b & (1 << (i % 8)) != 0);
        if null {
            params.push(Param::Null);
        } else if long.contains(&u16::try_from(i).ok()?) {
            // Its value came as long data (recorded when it came).
            params.push(Param::Text(b"(long data)".to_vec()));
        } else {
            params.push(value(r, ty, unsigned)?);
        }
    }
    Some((params, names))
}

/// One binary-protocol value, as text where it is a number or a time (its
/// exact decimal or calendar form), the client's exact bytes where it is a
/// string, binary for blobs and geometry.
fn value(r: &mut Reader<'_>, ty: u8, unsigned: bool) -> Option<Param> {
    let text = |s: String| Some(Param::Text(s.into_bytes()));
    match ty {
        1 => {
            let b = r.u8()?;
            text(if unsigned {
                b.to_string()
            } else {
                (b as i8).to_string()
            })
        }
        2 | 13 => {
            let v = r.u16()?;
            text(if unsigned || ty == 13 {
                v.to_string()
            } else {
                (v as i16).to_string()
            })
        }
        3 | 9 => {
            let v = r.u32()?;
            text(if unsigned {
                v.to_string()
            } else {
                (v as i32).to_string()
            })
        }
        8 => {
            let b = r.bytes(8)?;
            let v = u64::from_le_bytes(b.try_into().ok()?);
            text(if unsigned {
                v.to_string()
            } else {
                (v as i64).to_string()
            })
        }
        4 => {
            let b = r.bytes(4)?;
            text(f32::from_le_bytes(b.try_into().ok()?).to_string())
        }
        5 => {
            let b = r.bytes(8)?;
            text(f64::from_le_bytes(b.try_into().ok()?).to_string())
        }
        6 => Some(Param::Null),
        7 | 10 | 12 | 14 => text(datetime(r)?),
        11 => text(time(r)?),
        249..=252 | 255 => Some(Param::Binary(lenenc_bytes(r)?.to_vec())),
        _ => Some(Param::Text(lenenc_bytes(r)?.to_vec())),
    }
}

fn lenenc_bytes<'a>(r: &mut Reader<'a>) -> Option<&'a [u8]> {
    let n = lenenc(r)?;
    r.bytes(usize::try_from(n).ok()?)
}

/// A length-encoded integer.
pub fn lenenc(r: &mut Reader<'_>) -> Option<u64> {
    match r.u8()? {
        n @ 0..=0xFA => Some(u64::from(n)),
        0xFC => r.u16().map(u64::from),
        0xFD => {
            let b = r.bytes(3)?;
            Some(b.iter().rev().fold(0u64, |a, &x| a << 8 | u64::from(x)))
        }
        0xFE => {
            let b = r.bytes(8)?;
            Some(u64::from_le_bytes(b.try_into().ok()?))
        }
        _ => None,
    }
}

fn datetime(r: &mut Reader<'_>) -> Option<String> {
    let len = r.u8()?;
    let b = r.bytes(usize::from(len))?;
    let mut x = Reader::new(b);
    let (y, mo, d) = if len >= 4 {
        (x.u16()?, x.u8()?, x.u8()?)
    } else {
        (0, 0, 0)
    };
    let mut s = format!("{y:04}-{mo:02}-{d:02}");
    if len >= 7 {
        let (h, mi, se) = (x.u8()?, x.u8()?, x.u8()?);
        s.push_str(&format!(" {h:02}:{mi:02}:{se:02}"));
    }
    if len >= 11 {
        s.push_str(&format!(".{:06}", x.u32()?));
    }
    Some(s)
}

fn time(r: &mut Reader<'_>) -> Option<String> {
    let len = r.u8()?;
    let b = r.bytes(usize::from(len))?;
    if len == 0 {
        return Some("00:00:00".into());
    }
    let mut x = Reader::new(b);
    let neg = x.u8()? == 1;
    let days = x.u32()?;
    let (h, mi, se) = (x.u8()?, x.u8()?, x.u8()?);
    let hours = u64::from(days) * 24 + u64::from(h);
    let mut s = format!("{}{hours:02}:{mi:02}:{se:02}", if neg { "-" } else { "" });
    if len >= 12 {
        s.push_str(&format!(".{:06}", x.u32()?));
    }
    Some(s)
}

/// The protocol's name of a column/parameter type (`unsigned ` prefixed
/// for unsigned integers).
pub fn type_name(ty: u8, unsigned: bool) -> String {
    let name = match ty {
        0 => "DECIMAL",
        1 => "TINY",
        2 => "SHORT",
        3 => "LONG",
        4 => "FLOAT",
        5 => "DOUBLE",
        6 => "NULL",
        7 => "TIMESTAMP",
        8 => "LONGLONG",
        9 => "INT24",
        10 => "DATE",
        11 => "TIME",
        12 => "DATETIME",
        13 => "YEAR",
        14 => "NEWDATE",
        15 => "VARCHAR",
        16 => "BIT",
        245 => "JSON",
        246 => "NEWDECIMAL",
        247 => "ENUM",
        248 => "SET",
        249 => "TINY_BLOB",
        250 => "MEDIUM_BLOB",
        251 => "LONG_BLOB",
        252 => "BLOB",
        253 => "VAR_STRING",
        254 => "STRING",
        255 => "GEOMETRY",
        other => return format!("type {other}"),
    };
    if unsigned && matches!(ty, 1 | 2 | 3 | 8 | 9) {
        format!("unsigned {name}")
    } else {
        name.to_string()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    /// An execute of statement 7 with `params`: (type, flags, value bytes
    /// or None for NULL), types bound when `bind`.
    fn execute(params: &[(u8, u8, Option<Vec<u8>>)], bind: bool) -> Vec<u8> {
        let mut b = 7u32.to_le_bytes().to_vec();
        b.push(0);
        b.extend_from_slice(&1u32.to_le_bytes());
        let mut bitmap = vec![0u8; params.len().div_ceil(8)];
        for (i, p) in params.iter().enumerate() {
            if p.2.is_none() {
                bitmap[i / 8] |= 1 << (i % 8);
            }
        }
        b.extend_from_slice(&bitmap);
        b.push(u8::from(bind));
        if bind {
            for p in params {
                b.push(p.0);
                b.push(p.1);
            }
        }
        for p in params {
            if let Some(v) = &p.2 {
                b.extend_from_slice(v);
            }
        }
        b
    }

    fn text(s: &str) -> Param {
        Param::Text(s.as_bytes().to_vec())
    }

    #[test]
    fn typed_parameters_are_read_and_types_remembered_for_the_next_execute() {
        let mut st = Statements::default();
        st.prepared(7, 6);
        let mut s = b"\x05caf\xc3\xa9".to_vec();
        s.truncate(6);
        let date = vec![7, 0xEA, 0x07, 12, 7, 13, 14, 15];
        let params = vec![
            (8u8, 0u8, Some((-42i64).to_le_bytes().to_vec())),
            (253, 0, Some(s.clone())),
            (6, 0, None),
            (5, 0, Some(2.5f64.to_le_bytes().to_vec())),
            (12, 0, Some(date)),
            (3, 0x80, Some(u32::MAX.to_le_bytes().to_vec())),
        ];
        let (id, values, types) = st.execute(&execute(&params, true));
        assert_eq!(id, 7);
        assert_eq!(
            values,
            vec![
                text("-42"),
                text("café"),
                Param::Null,
                text("2.5"),
                text("2026-12-07 13:14:15"),
                text("4294967295"),
            ]
        );
        assert_eq!(
            types,
            vec![
                "LONGLONG",
                "VAR_STRING",
                "NULL",
                "DOUBLE",
                "DATETIME",
                "unsigned LONG"
            ]
        );
        // The second execute sends no types: the first ones still apply.
        let again = vec![
            (8u8, 0u8, Some(5i64.to_le_bytes().to_vec())),
            (253, 0, Some(b"\x01x".to_vec())),
            (6, 0, None),
            (5, 0, None),
            (12, 0, Some(vec![0])),
            (3, 0x80, Some(1u32.to_le_bytes().to_vec())),
        ];
        let (_, values, types) = st.execute(&execute(&again, false));
        assert_eq!(values[0], text("5"));
        assert_eq!(values[1], text("x"));
        assert_eq!(values[3], Param::Null);
        assert_eq!(values[4], text("0000-00-00"));
        assert_eq!(types[5], "unsigned LONG");
    }

    #[test]
    fn an_unknown_or_malformed_execute_is_kept_whole() {
        let mut st = Statements::default();
        let body = execute(&[(8, 0, Some(vec![1; 8]))], true);
        let (_, values, types) = st.execute(&body);
        assert_eq!(values, vec![Param::Binary(body.clone())]);
        assert_eq!(types, vec!["undecoded"]);
        st.prepared(7, 1);
        let cut = &body[..body.len() - 3];
        let (_, values, _) = st.execute(cut);
        assert_eq!(values, vec![Param::Binary(cut.to_vec())]);
    }

    #[test]
    fn long_data_parameters_have_no_value_in_the_execute() {
        let mut st = Statements::default();
        st.prepared(7, 2);
        st.long_data(u32::MAX, 0);
        let mut body = execute(&[(252, 0, Some(vec![])), (1, 0, Some(vec![9]))], true);
        // Remove the (empty) first value: long data has none.
        body.truncate(body.len() - 1);
        body.push(9);
        let (_, values, _) = st.execute(&body);
        assert_eq!(values, vec![text("(long data)"), text("9")]);
        // A parameter the statement does not have is not remembered.
        st.long_data(7, 60_000);
        assert_eq!(st.map.get(&7).map(|s| s.long_data.len()), Some(0));
    }
}
