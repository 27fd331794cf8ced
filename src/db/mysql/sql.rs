//! The little SQL gatehouse reads in a MySQL statement: whether it is a
//! `KILL` (which gatehouse answers itself, mapping its own connection ids
//! to the server's) or a `LOAD DATA|XML ... LOCAL` (refused). Everything
//! else is the server's business and is forwarded untouched.
//!
//! The text is split into statements at `;` outside quotes and comments
//! (a multi-statement query), and each statement's first words are read
//! past whitespace and comments. MySQL runs the inside of an executable
//! comment (`/*! ... */`, `/*!50001 ... */`, MariaDB's `/*M! ... */`), so
//! that is read as code, not skipped.

/// What a statement text asks for, as far as gatehouse cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Class {
    /// Anything else: forwarded.
    Plain,
    /// A single `KILL [HARD|SOFT] [CONNECTION|QUERY] N` with a literal id.
    Kill { connection: bool, id: u64 },
    /// A `KILL` gatehouse does not map (by user, by query id, an
    /// expression, or inside a multi-statement): refused.
    KillOther,
    /// `LOAD DATA|XML [LOW_PRIORITY|CONCURRENT] LOCAL INFILE`: refused.
    LoadLocal,
}

/// Classifies a COM_QUERY (or prepared statement) text. The session's
/// `sql_mode` may or may not have `NO_BACKSLASH_ESCAPES`, which changes
/// where a string ends: the text is read both ways, and when the readings
/// differ the stricter one wins.
pub fn classify(text: &[u8]) -> Class {
    let (a, b) = (classify_as(text, true), classify_as(text, false));
    match (a, b) {
        (a, b) if a == b => a,
        (Class::LoadLocal, _) | (_, Class::LoadLocal) => Class::LoadLocal,
        _ => Class::KillOther,
    }
}

fn classify_as(text: &[u8], backslash_escapes: bool) -> Class {
    let statements = split(text, backslash_escapes);
    let several = statements.iter().filter(|s| !s.is_empty()).count() > 1;
    let mut class = Class::Plain;
    for words in &statements {
        let first = words.first().map(|w| w.as_slice());
        if first.is_some_and(|w| w.eq_ignore_ascii_case(b"kill")) {
            match (several, parse_kill(words)) {
                (false, Some((connection, id))) => class = Class::Kill { connection, id },
                _ => return Class::KillOther,
            }
        } else if is_load_local(words) {
            return Class::LoadLocal;
        }
    }
    class
}

fn parse_kill(words: &[Vec<u8>]) -> Option<(bool, u64)> {
    let mut rest = words.get(1..)?;
    if let Some(w) = rest.first() {
        if w.eq_ignore_ascii_case(b"hard") || w.eq_ignore_ascii_case(b"soft") {
            rest = rest.get(1..)?;
        }
    }
    let mut connection = true;
    if let Some(w) = rest.first() {
        if w.eq_ignore_ascii_case(b"query") {
            connection = false;
            rest = rest.get(1..)?;
        } else if w.eq_ignore_ascii_case(b"connection") {
            rest = rest.get(1..)?;
        }
    }
    match rest {
        [id] if !id.is_empty() && id.iter().all(u8::is_ascii_digit) => {
            Some((connection, std::str::from_utf8(id).ok()?.parse().ok()?))
        }
        _ => None,
    }
}

fn is_load_local(words: &[Vec<u8>]) -> bool {
    let is = |i: usize, w: &[u8]| words.get(i).is_some_and(|x| x.eq_ignore_ascii_case(w));
    if !(is(0, b"load") && (is(1, b"data") || is(1, b"xml"))) {
        return false;
    }
    let mut i = 2;
    if is(i, b"low_priority") || is(i, b"concurrent") {
        i += 1;
    }
    is(i, b"local")
}

/// The statements of `text`, each as its words (quoted strings and
/// identifiers become one word holding their quote; punctuation other than
/// `;` separates words and is dropped; only the first few words of each
/// statement are kept).
fn split(text: &[u8], backslash_escapes: bool) -> Vec<Vec<Vec<u8>>> {
    const KEEP: usize = 8;
    let mut out: Vec<Vec<Vec<u8>>> = vec![Vec::new()];
    let mut word: Vec<u8> = Vec::new();
    let mut i = 0;
    let push = |out: &mut Vec<Vec<Vec<u8>>>, word: &mut Vec<u8>| {
        if !word.is_empty() {
            if let Some(s) = out.last_mut() {
                if s.len() < KEEP {
                    s.push(std::mem::take(word));
                }
            }
            word.clear();
        }
    };
    while let Some(&c) = text.get(i) {
        let next = text.get(i + 1).copied();
        match c {
            b'\'' | b'"' | b'`' => {
                push(&mut out, &mut word);
                // A quoted string or identifier: one word, to its closing
                // quote (doubled quotes and backslash escapes inside).
                let mut j = i + 1;
                while let Some(&d) = text.get(j) {
                    if d == b'\\' && c != b'`' && backslash_escapes {
                        j += 2;
                        continue;
                    }
                    if d == c {
                        if text.get(j + 1) == Some(&c) {
                            j += 2;
                            continue;
                        }
                        break;
                    }
                    j += 1;
                }
                word.push(c);
                push(&mut out, &mut word);
                i = j + 1;
            }
            b'#' => {
                push(&mut out, &mut word);
                i = skip_line(text, i);
            }
            b'-' if next == Some(b'-')
                && text
                    .get(i + 2)
                    .is_none_or(|d| d.is_ascii_whitespace() || d.is_ascii_control()) =>
            {
                push(&mut out, &mut word);
                i = skip_line(text, i);
            }
            b'/' if next == Some(b'*') => {
                push(&mut out, &mut word);
                let after = i + 2;
                let executable = match (text.get(after), text.get(after + 1)) {
                    (Some(b'!'), _) => Some(after + 1),
                    (Some(b'M'), Some(b'!')) => Some(after + 2),
                    _ => None,
                };
                match executable {
                    // Read the inside as code (after an optional version).
                    Some(mut j) => {
                        while text.get(j).is_some_and(u8::is_ascii_digit) {
                            j += 1;
                        }
                        i = j;
                    }
                    None => {
                        let mut j = after;
                        while j < text.len()
                            && !(text.get(j) == Some(&b'*') && text.get(j + 1) == Some(&b'/'))
                        {
                            j += 1;
                        }
                        i = j + 2;
                    }
                }
            }
            b'*' if next == Some(b'/') => {
                // The end of an executable comment.
                push(&mut out, &mut word);
                i += 2;
            }
            b';' => {
                push(&mut out, &mut word);
                out.push(Vec::new());
                i += 1;
            }
            c if c.is_ascii_alphanumeric() || c == b'_' || c == b'$' || c >= 0x80 => {
                word.push(c);
                i += 1;
            }
            _ => {
                push(&mut out, &mut word);
                i += 1;
            }
        }
    }
    push(&mut out, &mut word);
    out.retain(|s| !s.is_empty());
    out
}

fn skip_line(text: &[u8], mut i: usize) -> usize {
    while let Some(&c) = text.get(i) {
        i += 1;
        if c == b'\n' {
            break;
        }
    }
    i
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn c(s: &str) -> Class {
        classify(s.as_bytes())
    }

    #[test]
    fn kill_forms_are_recognised() {
        assert_eq!(
            c("KILL QUERY 42"),
            Class::Kill {
                connection: false,
                id: 42
            }
        );
        assert_eq!(
            c("  kill 7 ;"),
            Class::Kill {
                connection: true,
                id: 7
            }
        );
        assert_eq!(
            c("KILL CONNECTION 7"),
            Class::Kill {
                connection: true,
                id: 7
            }
        );
        assert_eq!(
            c("KILL HARD QUERY 9"),
            Class::Kill {
                connection: false,
                id: 9
            }
        );
        assert_eq!(
            c("/* hi */ KILL /* x */ QUERY 5 -- bye"),
            Class::Kill {
                connection: false,
                id: 5
            }
        );
        assert_eq!(
            c("/*!KILL QUERY 5*/"),
            Class::Kill {
                connection: false,
                id: 5
            }
        );
        assert_eq!(
            c("/*!50000 KILL 5 */"),
            Class::Kill {
                connection: true,
                id: 5
            }
        );
    }

    #[test]
    fn kills_gatehouse_cannot_map_are_other() {
        assert_eq!(c("KILL QUERY ID 5"), Class::KillOther);
        assert_eq!(c("KILL USER app"), Class::KillOther);
        assert_eq!(c("KILL 1+1"), Class::KillOther);
        assert_eq!(c("KILL CONNECTION_ID()"), Class::KillOther);
        assert_eq!(c("SELECT 1; KILL 5"), Class::KillOther);
        assert_eq!(c("select 1;/*M! kill 5*/"), Class::KillOther);
    }

    #[test]
    fn load_local_is_found_wherever_it_hides() {
        assert_eq!(
            c("LOAD DATA LOCAL INFILE '/etc/passwd' INTO TABLE t"),
            Class::LoadLocal
        );
        assert_eq!(
            c("load data low_priority local infile 'x' into table t"),
            Class::LoadLocal
        );
        assert_eq!(
            c("LOAD XML LOCAL INFILE 'x' INTO TABLE t"),
            Class::LoadLocal
        );
        assert_eq!(
            c("select 1; /*!LOAD DATA LOCAL INFILE 'x' INTO TABLE t*/"),
            Class::LoadLocal
        );
        assert_eq!(
            c("# c\nLOAD\tDATA\nLOCAL INFILE 'x' INTO TABLE t"),
            Class::LoadLocal
        );
    }

    #[test]
    fn quoted_and_commented_text_is_not_a_command() {
        assert_eq!(c("SELECT 'KILL 5'"), Class::Plain);
        assert_eq!(c("SELECT 1 /* ; KILL 5 */"), Class::Plain);
        assert_eq!(c("SELECT 'a;KILL 5'"), Class::Plain);
        assert_eq!(c("-- KILL 5\nSELECT 1"), Class::Plain);
        assert_eq!(c("LOAD DATA INFILE '/tmp/x' INTO TABLE t"), Class::Plain);
        assert_eq!(c("SELECT `kill` FROM t"), Class::Plain);
        assert_eq!(c(""), Class::Plain);
        assert_eq!(c("'unterminated"), Class::Plain);
    }

    #[test]
    fn a_backslash_cannot_hide_a_kill_whatever_the_sql_mode() {
        // With NO_BACKSLASH_ESCAPES the string ends at the second quote.
        assert_eq!(c("SELECT '\\'; KILL 5; -- '"), Class::KillOther);
        assert_eq!(
            c("SELECT '\\'; LOAD DATA LOCAL INFILE 'x' INTO TABLE t; -- '"),
            Class::LoadLocal
        );
    }
}
