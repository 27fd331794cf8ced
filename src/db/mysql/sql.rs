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
//!
//! A `KILL` the server would run anywhere but alone is refused: inside a
//! compound statement (`BEGIN NOT ATOMIC KILL 5; END`, `IF 1 THEN KILL 5;
//! END IF`, a routine or event body), or as dynamic SQL. Dynamic SQL
//! (`PREPARE s FROM ...`, `EXECUTE IMMEDIATE ...`) is forwarded only with
//! one literal text, which is read as a statement of its own; built from an
//! expression or a variable it cannot be checked, and is refused.
//!
//! Where a quote or a comment ends depends on the session's `sql_mode`
//! (`NO_BACKSLASH_ESCAPES`, `ANSI_QUOTES`) and on the client's character
//! set (in GBK, Big5 and Shift-JIS the second byte of a character can be
//! `\` or `` ` ``), which the client may change at any time. The text is
//! read every way the server might read it, and when the readings differ
//! the strictest wins.

/// What a statement text asks for, as far as gatehouse cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Class {
    /// Anything else: forwarded.
    Plain,
    /// A single `KILL [HARD|SOFT] [CONNECTION|QUERY] N` with a literal id.
    Kill { connection: bool, id: u64 },
    /// A `KILL` gatehouse does not map (by user, by query id, an
    /// expression, inside a multi-statement, a compound statement or
    /// dynamic SQL): refused.
    KillOther,
    /// `LOAD DATA|XML [LOW_PRIORITY|CONCURRENT] LOCAL INFILE`: refused.
    LoadLocal,
    /// `PREPARE ... FROM` or `EXECUTE IMMEDIATE` with a text gatehouse
    /// cannot read (an expression, a variable): refused.
    Dynamic,
}

/// How deep dynamic SQL inside dynamic SQL is read.
const MAX_DEPTH: usize = 4;
/// The bytes of a word kept (longer words are no keyword).
const MAX_WORD: usize = 64;

/// How backslashes in quoted strings are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Escapes {
    /// The default: `\` escapes in `'...'` and `"..."`.
    All,
    /// `NO_BACKSLASH_ESCAPES`.
    None,
    /// `ANSI_QUOTES` without `NO_BACKSLASH_ESCAPES`: `"` quotes an
    /// identifier, where `\` is an ordinary character.
    SingleOnly,
}

/// Character sets whose multi-byte characters can end in an ASCII byte
/// that matters (`\`, `` ` ``).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Charset {
    /// Every other (latin1, utf8mb4, ujis, euckr...): no ASCII trail bytes.
    Single,
    /// gbk, gb18030.
    Gbk,
    Big5,
    /// sjis, cp932.
    Sjis,
    /// An 8-bit character set where bytes over 0x7F may be spaces (latin1
    /// and cp1250 read 0xA0 so): such bytes separate words.
    Spaces,
}

impl Charset {
    /// How many bytes the character at the start of `b` has, as far as
    /// quoting goes (a multi-byte character is one word byte).
    fn char_len(self, b: &[u8]) -> usize {
        let (Some(&lead), Some(&trail)) = (b.first(), b.get(1)) else {
            return 1;
        };
        let two = match self {
            Charset::Single | Charset::Spaces => false,
            Charset::Gbk => {
                (0x81..=0xFE).contains(&lead)
                    && ((0x40..=0x7E).contains(&trail) || (0x80..=0xFE).contains(&trail))
            }
            Charset::Big5 => {
                (0xA1..=0xF9).contains(&lead)
                    && ((0x40..=0x7E).contains(&trail) || (0xA1..=0xFE).contains(&trail))
            }
            Charset::Sjis => {
                ((0x81..=0x9F).contains(&lead) || (0xE0..=0xFC).contains(&lead))
                    && ((0x40..=0x7E).contains(&trail) || (0x80..=0xFC).contains(&trail))
            }
        };
        if two {
            2
        } else {
            1
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Reading {
    escapes: Escapes,
    charset: Charset,
    /// Whether a versioned executable comment (`/*!50700 ...*/`,
    /// `/*M!999999 ...*/`) is skipped, as the server does when the version
    /// is above its own (and MariaDB for MySQL's 5.7+ ones), or run.
    skip_versioned: bool,
    /// Whether `[...]` quotes an identifier (`sql_mode=MSSQL`).
    brackets: bool,
}

/// Classifies a COM_QUERY (or prepared statement) text. The session's
/// `sql_mode` and character set are not known here: the text is read
/// every way they could make the server read it, and when the readings
/// differ the stricter one wins.
pub fn classify(text: &[u8]) -> Class {
    classify_in(text, None)
}

/// [`classify`] for a session whose last server status said whether
/// `NO_BACKSLASH_ESCAPES` is on (`SERVER_STATUS_NO_BACKSLASH_ESCAPES`):
/// a text the server reads as one statement in that mode is read only
/// with that mode's escapes (a multi-statement may change the mode between
/// its statements, so it is read every way).
pub fn classify_in(text: &[u8], no_backslash_escapes: Option<bool>) -> Class {
    // Dynamic SQL inside dynamic SQL multiplies the readings: the bytes
    // read for it are bounded, past which it is refused as dynamic SQL
    // gatehouse cannot check.
    let mut budget = text.len().saturating_mul(64).saturating_add(1 << 20);
    if let Some(nbe) = no_backslash_escapes {
        let (class, statements) = classify_depth(text, 0, &mut budget, Some(nbe));
        if statements <= 1 {
            return class;
        }
    }
    classify_depth(text, 0, &mut budget, None).0
}

/// Whether `text` holds one of the keywords a class other than Plain
/// needs (`kill`, `load`, `execute`, `prepare`), in any case, as bytes.
fn has_keyword(text: &[u8]) -> bool {
    let at = |i: usize, w: &[u8]| {
        text.get(i..i + w.len())
            .is_some_and(|x| x.eq_ignore_ascii_case(w))
    };
    text.iter().enumerate().any(|(i, &b)| match b | 0x20 {
        b'k' => at(i, b"kill"),
        b'l' => at(i, b"load"),
        b'e' => at(i, b"execute"),
        b'p' => at(i, b"prepare"),
        _ => false,
    })
}

fn classify_depth(
    text: &[u8],
    depth: usize,
    budget: &mut usize,
    no_backslash_escapes: Option<bool>,
) -> (Class, usize) {
    // Every class but Plain needs one of these keywords, whole, in the
    // bytes (the server reads no keyword across a comment or a quote).
    if !has_keyword(text) {
        return (Class::Plain, 0);
    }
    let mut charsets = vec![Charset::Single];
    if text.iter().any(|&b| b >= 0x80) {
        charsets.extend([Charset::Gbk, Charset::Big5, Charset::Sjis, Charset::Spaces]);
    }
    // Without a backslash the escape rules read alike; without `"` the
    // ANSI_QUOTES reading is the default one.
    let mut escapes = vec![Escapes::All];
    if text.contains(&b'\\') {
        escapes.push(Escapes::None);
        if text.contains(&b'"') {
            escapes.push(Escapes::SingleOnly);
        }
    }
    match no_backslash_escapes {
        Some(true) => escapes = vec![Escapes::None],
        Some(false) => escapes.retain(|e| *e != Escapes::None),
        None => {}
    }
    // A versioned executable comment is code or a comment, depending on
    // the server's version.
    let versioned = text.windows(4).any(|w| {
        matches!(w, [b'/', b'*', b'!', d] if d.is_ascii_digit())
            || matches!(w, [b'*', b'M', b'!', d] if d.is_ascii_digit())
    });
    let skips: &[bool] = if versioned { &[false, true] } else { &[false] };
    // sql_mode=MSSQL quotes identifiers in brackets.
    let brackets: &[bool] = if text.contains(&b'[') {
        &[false, true]
    } else {
        &[false]
    };
    let mut classes = Vec::new();
    let mut most = 0;
    for &charset in &charsets {
        for &escapes in &escapes {
            for &skip_versioned in skips {
                for &brackets in brackets {
                    if depth > 0 {
                        let Some(left) = budget.checked_sub(text.len()) else {
                            return (Class::Dynamic, most);
                        };
                        *budget = left;
                    }
                    let reading = Reading {
                        escapes,
                        charset,
                        skip_versioned,
                        brackets,
                    };
                    let (class, n) = classify_as(text, reading, depth, budget);
                    most = most.max(n);
                    classes.push(class);
                }
            }
        }
    }
    (strictest(classes), most)
}

/// One class when all readings agree; otherwise the strictest.
fn strictest(classes: Vec<Class>) -> Class {
    let Some(first) = classes.first().cloned() else {
        return Class::Plain;
    };
    if classes.iter().all(|c| *c == first) {
        return first;
    }
    if classes.contains(&Class::LoadLocal) {
        return Class::LoadLocal;
    }
    if classes
        .iter()
        .any(|c| matches!(c, Class::Kill { .. } | Class::KillOther))
    {
        return Class::KillOther;
    }
    Class::Dynamic
}

fn classify_as(text: &[u8], reading: Reading, depth: usize, budget: &mut usize) -> (Class, usize) {
    let statements = split(text, reading);
    let n = statements.len();
    let several = statements.len() > 1;
    let mut classes = vec![Class::Plain];
    for s in &statements {
        let words = &s.words;
        let first = words.first().map(|w| w.as_slice());
        if s.kill_later {
            return (Class::KillOther, n);
        }
        if first.is_some_and(|w| w.eq_ignore_ascii_case(b"kill")) {
            match (several, parse_kill(words)) {
                (false, Some((connection, id))) => classes.push(Class::Kill { connection, id }),
                _ => return (Class::KillOther, n),
            }
        } else if is_load_local(words) {
            return (Class::LoadLocal, n);
        }
        if s.dynamic_unreadable {
            classes.push(Class::Dynamic);
        }
        for inner in &s.dynamic_texts {
            if depth >= MAX_DEPTH {
                classes.push(Class::Dynamic);
                continue;
            }
            match classify_depth(inner, depth + 1, budget, None).0 {
                Class::Plain => {}
                // A KILL as dynamic SQL is never one gatehouse maps.
                Class::Kill { .. } => classes.push(Class::KillOther),
                other => classes.push(other),
            }
        }
    }
    // The strictest of the statements' classes.
    let worst = |c: &Class| match c {
        Class::Plain => 0,
        Class::Kill { .. } => 1,
        Class::Dynamic => 2,
        Class::KillOther => 3,
        Class::LoadLocal => 4,
    };
    let class = classes
        .into_iter()
        .max_by_key(worst)
        .unwrap_or(Class::Plain);
    (class, n)
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

/// A token of a statement.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    Word(Vec<u8>),
    /// A quoted string or identifier: its quote and its text (escapes
    /// undone).
    Quoted(u8, Vec<u8>),
    /// Punctuation other than `;`.
    Punct,
}

/// Where a statement is in a dynamic SQL form.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
enum Dyn {
    #[default]
    Idle,
    /// After `EXECUTE`.
    Execute,
    /// After `PREPARE`.
    Prepare,
    /// After `PREPARE name`.
    PrepareName,
    /// The next token is the statement text.
    Operand { execute: bool },
    /// After a literal text.
    Literal { execute: bool, text: Vec<u8> },
}

/// What is kept of one statement.
#[derive(Debug, Default)]
struct Stmt {
    /// Its first words (quoted ones as their quote character).
    words: Vec<Vec<u8>>,
    /// Whether `kill` is a word after the first.
    kill_later: bool,
    dynamic: Dyn,
    /// Literal texts of dynamic SQL.
    dynamic_texts: Vec<Vec<u8>>,
    /// Dynamic SQL from something else than one literal.
    dynamic_unreadable: bool,
    tokens: usize,
}

impl Stmt {
    const KEEP: usize = 8;

    fn token(&mut self, t: Tok) {
        let is_word = |w: &[u8]| matches!(&t, Tok::Word(x) if x.eq_ignore_ascii_case(w));
        if self.tokens > 0 && is_word(b"kill") {
            self.kill_later = true;
        }
        self.tokens += 1;
        if self.words.len() < Self::KEEP {
            match &t {
                Tok::Word(w) => self.words.push(w.clone()),
                Tok::Quoted(q, _) => self.words.push(vec![*q]),
                Tok::Punct => {}
            }
        }
        let next = match std::mem::take(&mut self.dynamic) {
            Dyn::Operand { execute } => match &t {
                Tok::Quoted(q, text) if *q == b'\'' || *q == b'"' => Dyn::Literal {
                    execute,
                    text: text.clone(),
                },
                _ => {
                    self.dynamic_unreadable = true;
                    Dyn::Idle
                }
            },
            Dyn::Literal { execute, text } => {
                if execute && is_word(b"using") {
                    self.dynamic_texts.push(text);
                } else {
                    // Not one literal: `'KI' 'LL 5'`, `'x' || y`...
                    self.dynamic_unreadable = true;
                }
                Dyn::Idle
            }
            Dyn::Execute if is_word(b"immediate") => Dyn::Operand { execute: true },
            Dyn::Prepare if matches!(&t, Tok::Word(_) | Tok::Quoted(b'`', _)) => Dyn::PrepareName,
            Dyn::PrepareName if is_word(b"from") => Dyn::Operand { execute: false },
            _ if is_word(b"execute") => Dyn::Execute,
            _ if is_word(b"prepare") => Dyn::Prepare,
            _ => Dyn::Idle,
        };
        self.dynamic = next;
    }

    /// The statement ended.
    fn end(&mut self) {
        match std::mem::take(&mut self.dynamic) {
            Dyn::Literal { text, .. } => self.dynamic_texts.push(text),
            Dyn::Operand { .. } => self.dynamic_unreadable = true,
            _ => {}
        }
    }
}

/// The statements of `text` as `reading` reads it.
fn split(text: &[u8], reading: Reading) -> Vec<Stmt> {
    let mut out: Vec<Stmt> = Vec::new();
    let mut cur = Stmt::default();
    let mut word: Vec<u8> = Vec::new();
    let mut in_word = false;
    let flush = |cur: &mut Stmt, word: &mut Vec<u8>, in_word: &mut bool| {
        if *in_word {
            cur.token(Tok::Word(std::mem::take(word)));
            *in_word = false;
        }
    };
    let mut i = 0;
    while let Some(&c) = text.get(i) {
        let next = text.get(i + 1).copied();
        match c {
            b'\'' | b'"' | b'`' | b'[' if c != b'[' || reading.brackets => {
                flush(&mut cur, &mut word, &mut in_word);
                // A quoted string or identifier, to its closing quote
                // (doubled quotes and, in strings, backslash escapes
                // inside; multi-byte characters whole).
                let escapes = c != b'`'
                    && c != b'['
                    && match reading.escapes {
                        Escapes::All => true,
                        Escapes::None => false,
                        Escapes::SingleOnly => c == b'\'',
                    };
                // The text is kept only where it is dynamic SQL's.
                let keep = matches!(cur.dynamic, Dyn::Operand { .. });
                let mut inner = Vec::new();
                let mut j = i + 1;
                let close = if c == b'[' { b']' } else { c };
                while let Some(&d) = text.get(j) {
                    let n = reading.charset.char_len(text.get(j..).unwrap_or_default());
                    if n > 1 {
                        if keep {
                            inner.extend_from_slice(text.get(j..j + n).unwrap_or_default());
                        }
                        j += n;
                        continue;
                    }
                    if d == b'\\' && escapes {
                        if let (true, Some(&e)) = (keep, text.get(j + 1)) {
                            unescape(&mut inner, e);
                        }
                        j += 2;
                        continue;
                    }
                    if d == close {
                        if text.get(j + 1) == Some(&close) {
                            if keep {
                                inner.push(close);
                            }
                            j += 2;
                            continue;
                        }
                        break;
                    }
                    if keep {
                        inner.push(d);
                    }
                    j += 1;
                }
                cur.token(Tok::Quoted(c, inner));
                i = j + 1;
            }
            b'#' => {
                flush(&mut cur, &mut word, &mut in_word);
                i = skip_line(text, i);
            }
            b'-' if next == Some(b'-')
                && text
                    .get(i + 2)
                    .is_none_or(|d| d.is_ascii_whitespace() || d.is_ascii_control()) =>
            {
                flush(&mut cur, &mut word, &mut in_word);
                i = skip_line(text, i);
            }
            b'/' if next == Some(b'*') => {
                flush(&mut cur, &mut word, &mut in_word);
                let after = i + 2;
                let marked = match (text.get(after), text.get(after + 1)) {
                    (Some(b'!'), _) => Some(after + 1),
                    (Some(b'M'), Some(b'!')) => Some(after + 2),
                    _ => None,
                };
                let executable = marked.filter(|&j| {
                    !(reading.skip_versioned && text.get(j).is_some_and(u8::is_ascii_digit))
                });
                match executable {
                    // Read the inside as code (after an optional version).
                    Some(mut j) => {
                        while text.get(j).is_some_and(u8::is_ascii_digit) {
                            j += 1;
                        }
                        i = j;
                    }
                    // A comment; a skipped versioned one may hold one
                    // nested comment (MariaDB's `consume_comment`).
                    None => i = comment_end(text, after, usize::from(marked.is_some())),
                }
            }
            b'*' if next == Some(b'/') => {
                // The end of an executable comment.
                flush(&mut cur, &mut word, &mut in_word);
                i += 2;
            }
            b';' => {
                flush(&mut cur, &mut word, &mut in_word);
                if cur.tokens > 0 {
                    cur.end();
                    out.push(std::mem::take(&mut cur));
                }
                i += 1;
            }
            c if c.is_ascii_alphanumeric()
                || c == b'_'
                || c == b'$'
                || (c >= 0x80 && reading.charset != Charset::Spaces) =>
            {
                let n = reading.charset.char_len(text.get(i..).unwrap_or_default());
                if word.len() < MAX_WORD {
                    word.extend_from_slice(text.get(i..i + n).unwrap_or_default());
                }
                in_word = true;
                i += n;
            }
            c => {
                flush(&mut cur, &mut word, &mut in_word);
                if !(c.is_ascii_whitespace() || c.is_ascii_control() || c >= 0x80) {
                    cur.token(Tok::Punct);
                }
                i += 1;
            }
        }
    }
    flush(&mut cur, &mut word, &mut in_word);
    if cur.tokens > 0 {
        cur.end();
        out.push(cur);
    }
    out
}

/// A backslash escape in a string, as MySQL undoes it.
fn unescape(out: &mut Vec<u8>, e: u8) {
    match e {
        b'0' => out.push(0),
        b'b' => out.push(8),
        b'n' => out.push(b'\n'),
        b'r' => out.push(b'\r'),
        b't' => out.push(b'\t'),
        b'Z' => out.push(26),
        b'%' | b'_' => out.extend_from_slice(&[b'\\', e]),
        other => out.push(other),
    }
}

/// Where a comment whose inside starts at `j` ends (past its `*/`), with
/// up to `nest` levels of comments nested in it.
fn comment_end(text: &[u8], mut j: usize, nest: usize) -> usize {
    while let Some(&c) = text.get(j) {
        let next = text.get(j + 1).copied();
        if nest > 0 && c == b'/' && next == Some(b'*') {
            j = comment_end(text, j + 2, nest - 1);
            continue;
        }
        if c == b'*' && next == Some(b'/') {
            return j + 2;
        }
        j += 1;
    }
    text.len() + 2
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
        // Versioned: run or skipped depending on the server's version, so
        // gatehouse cannot tell; refused.
        assert_eq!(c("/*!50000 KILL 5 */"), Class::KillOther);
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

    #[test]
    fn a_kill_inside_a_compound_statement_or_routine_is_refused() {
        assert_eq!(c("BEGIN NOT ATOMIC KILL 5; END"), Class::KillOther);
        assert_eq!(c("IF 1 THEN KILL 5; END IF"), Class::KillOther);
        assert_eq!(c("CREATE PROCEDURE p() KILL QUERY 5"), Class::KillOther);
        assert_eq!(
            c("CREATE EVENT e ON SCHEDULE AT NOW() DO KILL 5"),
            Class::KillOther
        );
        assert_eq!(c("SELECT 'kill', `kill` FROM t"), Class::Plain);
    }

    #[test]
    fn dynamic_sql_is_read_when_literal_and_refused_otherwise() {
        assert_eq!(c("EXECUTE IMMEDIATE 'KILL 5'"), Class::KillOther);
        assert_eq!(c("PREPARE s FROM 'KILL 5'; EXECUTE s"), Class::KillOther);
        assert_eq!(c("PREPARE s FROM \"KI\\LL 5\""), Class::KillOther);
        assert_eq!(
            c("EXECUTE IMMEDIATE 'EXECUTE IMMEDIATE ''KILL 5'''"),
            Class::KillOther
        );
        assert_eq!(
            c("PREPARE s FROM 'LOAD DATA LOCAL INFILE ''x'' INTO TABLE t'"),
            Class::LoadLocal
        );
        assert_eq!(c("EXECUTE IMMEDIATE CONCAT('KI', 'LL 5')"), Class::Dynamic);
        assert_eq!(c("PREPARE s FROM @q"), Class::Dynamic);
        assert_eq!(c("PREPARE s FROM 'KI' 'LL 5'"), Class::Dynamic);
        assert_eq!(c("PREPARE s FROM _latin1'KILL 5'"), Class::Dynamic);
        assert_eq!(c("BEGIN NOT ATOMIC PREPARE s FROM @q; END"), Class::Dynamic);
        // What stays allowed.
        assert_eq!(
            c("PREPARE s FROM 'SELECT ?'; EXECUTE s USING 1"),
            Class::Plain
        );
        assert_eq!(c("EXECUTE IMMEDIATE 'SELECT ?' USING 5"), Class::Plain);
        assert_eq!(c("EXECUTE s"), Class::Plain);
        assert_eq!(c("GRANT EXECUTE ON app.* TO x"), Class::Plain);
        assert_eq!(c("XA PREPARE 'x'"), Class::Plain);
    }

    #[test]
    fn multi_byte_characters_ending_in_a_quote_or_backslash_cannot_hide_a_kill() {
        // GBK: 0x81 0x60 is one character; a single-byte reading sees a
        // backtick there and the KILL inside an identifier.
        assert_eq!(
            classify(b"SELECT 1 AS a\x81\x60; KILL 5; -- \x60"),
            Class::KillOther
        );
        // 0x81 0x5C is one character: the quote after it ends the string,
        // whatever the escape rules.
        assert_eq!(
            classify(b"SELECT 'a\\'b\x81\x5c'; KILL 5; -- '"),
            Class::KillOther
        );
        // ANSI_QUOTES: no escapes in "...", escapes in '...'.
        assert_eq!(c("SELECT '\\'', \"\\\"; KILL 5; -- \""), Class::KillOther);
        assert_eq!(classify("SELECT 'café'".as_bytes()), Class::Plain);
        // A versioned executable comment the server skips: its quote
        // quotes nothing.
        for v in ["/*M!999999", "/*!99999", "/*!50700", "/*!999999"] {
            assert_eq!(
                c(&format!("SELECT 1 {v} ' */; KILL 5; -- '")),
                Class::KillOther,
                "{v}"
            );
        }
        assert_eq!(c("SELECT 1 /*!40101 , 2 */"), Class::Plain);
        // A skipped versioned comment ends at the `*/` after one nested
        // comment.
        assert_eq!(
            c("SELECT 1 /*!99999 /* */ ' */; KILL 5; -- '"),
            Class::KillOther
        );
        // sql_mode=MSSQL: `[...]` quotes an identifier.
        assert_eq!(c("SELECT 1 AS [']; KILL 5; -- ']"), Class::KillOther);
        assert_eq!(c("SELECT a[1] FROM t"), Class::Plain);
        // latin1 and cp1250: 0xA0 is a space.
        assert_eq!(classify(b"SELECT 1;\xA0KILL 5"), Class::KillOther);
        assert_eq!(classify(b"\xA0KILL\xA0QUERY\xA05"), Class::KillOther);
        assert_eq!(classify("SELECT 1 AS café".as_bytes()), Class::Plain);
    }

    #[test]
    fn nested_dynamic_sql_is_read_within_a_bounded_effort() {
        // Each level doubles the quotes: 'EXECUTE IMMEDIATE ''...'''.
        let mut text = "SELECT 1".to_string();
        for _ in 0..6 {
            text = format!("EXECUTE IMMEDIATE '{}'", text.replace('\'', "''"));
        }
        assert_eq!(c(&text), Class::Dynamic, "deeper than gatehouse reads");
        let big = format!(
            "EXECUTE IMMEDIATE 'EXECUTE IMMEDIATE ''SELECT \\\\ \"\u{e9} {}'''",
            "x".repeat(1 << 20)
        );
        let t0 = std::time::Instant::now();
        let _ = c(&big);
        assert!(t0.elapsed() < std::time::Duration::from_secs(5));
    }

    #[test]
    fn a_known_escape_mode_reads_one_statement_once() {
        let dump = "INSERT INTO t VALUES ('don\\'t kill me')";
        // Mode unknown: the NO_BACKSLASH_ESCAPES reading sees `kill`.
        assert_eq!(c(dump), Class::KillOther);
        // Backslashes escape (the server said so): one statement, a string.
        assert_eq!(classify_in(dump.as_bytes(), Some(false)), Class::Plain);
        // NO_BACKSLASH_ESCAPES on: the string ends at `\'`, KILL is code.
        let trick = "SELECT 'a\\'; KILL 5; -- '";
        assert_eq!(classify_in(trick.as_bytes(), Some(true)), Class::KillOther);
        assert_eq!(classify_in(trick.as_bytes(), Some(false)), Class::Plain);
        // Several statements may change the mode between them: every way.
        let multi = "SET sql_mode = 'NO_BACKSLASH_ESCAPES'; SELECT 'a\\'; KILL 5; -- '";
        assert_eq!(classify_in(multi.as_bytes(), Some(false)), Class::KillOther);
    }

    #[test]
    fn many_empty_statements_cost_nothing() {
        let text = vec![b';'; 1 << 20];
        assert_eq!(classify(&text), Class::Plain);
    }
}
