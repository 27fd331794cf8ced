//! What a watched session may do to the watcher's terminal.
//!
//! `gatehouse sessions watch` shows another person's terminal output in the
//! administrator's terminal: that person chooses every byte. Drawing
//! (cursor moves, colours, clearing, scrolling regions) passes; what would
//! make the administrator's terminal answer, run or store something does
//! not: OSC (window titles, clipboard writes, hyperlinks), DCS, APC, PM and
//! SOS strings, C1 controls, and CSI requests that make a terminal reply
//! (device status, attributes, window reports, mode queries). A sequence
//! that grows past a bound is dropped whole.

/// CSI final bytes that only draw: cursor, erase, insert/delete, scroll,
/// SGR, modes, margins, save/restore. Everything else is dropped, and so is
/// any of these with a private marker (`?`, `>`, `=`, `<`) or an
/// intermediate byte, which turns them into queries and settings
/// (`CSI ? u` asks a kitty-protocol terminal for its keyboard flags,
/// `CSI ? m` and `CSI ? S` ask xterm, `CSI > 4 m` changes what keys send) —
/// except `CSI ? Pm h/l` for the modes in [`PRIVATE_MODES`].
const CSI_ALLOWED: &[u8] = b"@ABCDEFGHIJKLMPSTXZ`abdefghlmrsu";
/// Private modes a watched session may set: display only. Mouse and focus
/// reporting and bracketed paste (which make the watcher's terminal send
/// input), keypad/cursor-key modes and column switches are not.
const PRIVATE_MODES: &[u32] = &[5, 6, 7, 12, 25, 47, 1047, 1048, 1049, 2026];
/// ANSI modes a watched session may set: insert and newline modes.
const ANSI_MODES: &[u32] = &[4, 20];
/// ESC finals passed on: save/restore cursor, index, next line, home,
/// reverse index, normal keypad, reset. Not `ESC Z` (the terminal answers
/// with its identity), not `ESC %` (leaves UTF-8, making raw C1 bytes
/// controls), not `ESC SP` (8-bit controls), not `ESC #`.
const ESC_ALLOWED: &[u8] = b"78>DEHMc";
/// ESC intermediates whose sequences pass: character set designations.
const ESC_CHARSET: &[u8] = b"()*+-./";
/// Longest CSI sequence passed on.
const MAX_CSI: usize = 64;
/// U+FFFD, shown for bytes that are not UTF-8.
const REPLACEMENT: &[u8] = "\u{fffd}".as_bytes();

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Ground,
    Esc,
    /// `ESC` and one intermediate byte (kept in `esc_inter`).
    EscInter,
    /// `ESC` and more than one intermediate: dropped to its final.
    EscDrop,
    Csi,
    /// Inside an OSC/DCS/APC/PM/SOS string (dropped to its end).
    Str,
    /// ESC inside a string: `\` ends it.
    StrEsc,
    /// Inside a multi-byte UTF-8 character (`utf8` holds it so far).
    Utf8,
}

/// A streaming filter (sequences may be split across chunks).
#[derive(Debug)]
pub struct TermFilter {
    state: State,
    csi: Vec<u8>,
    csi_overflow: bool,
    esc_inter: u8,
    utf8: Vec<u8>,
    utf8_need: usize,
}

impl Default for TermFilter {
    fn default() -> Self {
        TermFilter::new()
    }
}

/// How many bytes a UTF-8 character starting with `b` has (None: `b`
/// cannot start one: a continuation byte, 0xC0/0xC1 overlong leads,
/// 0xF5.. past U+10FFFF).
fn utf8_len(b: u8) -> Option<usize> {
    match b {
        0xc2..=0xdf => Some(2),
        0xe0..=0xef => Some(3),
        0xf0..=0xf4 => Some(4),
        _ => None,
    }
}

/// Whether a CSI with parameter bytes `params` and final `f` only draws.
fn csi_draws(params: &[u8], f: u8) -> bool {
    if !CSI_ALLOWED.contains(&f) {
        return false;
    }
    let (private, rest) = match params.split_first() {
        Some((&b'?', rest)) => (true, rest),
        _ => (false, params),
    };
    // Digits and separators only: no other marker, no intermediates.
    if !rest
        .iter()
        .all(|b| b.is_ascii_digit() || *b == b';' || *b == b':')
    {
        return false;
    }
    if f == b'h' || f == b'l' {
        let allowed = if private { PRIVATE_MODES } else { ANSI_MODES };
        return rest.split(|b| *b == b';').all(|m| {
            std::str::from_utf8(m)
                .ok()
                .and_then(|m| m.parse::<u32>().ok())
                .is_some_and(|m| allowed.contains(&m))
        });
    }
    !private
}

impl TermFilter {
    pub fn new() -> TermFilter {
        TermFilter {
            state: State::Ground,
            csi: Vec::with_capacity(MAX_CSI),
            csi_overflow: false,
            esc_inter: 0,
            utf8: Vec::with_capacity(4),
            utf8_need: 0,
        }
    }

    /// Filters one chunk, appending what may be shown to `out`.
    pub fn push(&mut self, input: &[u8], out: &mut Vec<u8>) {
        for &b in input {
            self.byte(b, out);
        }
    }

    fn ground(&mut self, b: u8, out: &mut Vec<u8>) {
        match b {
            0x1b => self.state = State::Esc,
            // BEL, BS, HT, LF, VT, FF, CR, SO, SI: drawing. Not ENQ (the
            // terminal answers with its answerback), nor the other C0.
            0x07..=0x0f | 0x20..=0x7e => out.push(b),
            0x00..=0x06 | 0x10..=0x1f | 0x7f => {}
            _ => match utf8_len(b) {
                Some(n) => {
                    self.utf8.clear();
                    self.utf8.push(b);
                    self.utf8_need = n;
                    self.state = State::Utf8;
                }
                // A raw C1 byte (0x9b is CSI to a terminal not in UTF-8
                // mode) or any other stray byte.
                None => out.extend_from_slice(REPLACEMENT),
            },
        }
    }

    fn byte(&mut self, b: u8, out: &mut Vec<u8>) {
        match self.state {
            State::Ground => self.ground(b, out),
            State::Utf8 => {
                if b & 0xc0 != 0x80 {
                    // Cut short: what came so far is not a character.
                    out.extend_from_slice(REPLACEMENT);
                    self.state = State::Ground;
                    self.ground(b, out);
                    return;
                }
                self.utf8.push(b);
                if self.utf8.len() < self.utf8_need {
                    return;
                }
                self.state = State::Ground;
                // Overlong forms, surrogates and values past U+10FFFF fail here.
                match std::str::from_utf8(&self.utf8)
                    .ok()
                    .and_then(|s| s.chars().next())
                {
                    // C1 controls (U+0080..U+009F): CSI, OSC, DCS as one character.
                    Some(c) if ('\u{80}'..='\u{9f}').contains(&c) => {}
                    Some(_) => out.extend_from_slice(&self.utf8),
                    None => out.extend_from_slice(REPLACEMENT),
                }
            }
            State::Esc => match b {
                b'[' => {
                    self.state = State::Csi;
                    self.csi.clear();
                    self.csi_overflow = false;
                }
                b']' | b'P' | b'_' | b'^' | b'X' => self.state = State::Str,
                0x1b => {}
                0x20..=0x2f => {
                    self.esc_inter = b;
                    self.state = State::EscInter;
                }
                _ => {
                    self.state = State::Ground;
                    if ESC_ALLOWED.contains(&b) {
                        out.push(0x1b);
                        out.push(b);
                    } else if !(0x30..=0x7e).contains(&b) {
                        // Not a final: the ESC is dropped, the byte is text.
                        self.ground(b, out);
                    }
                }
            },
            State::EscInter | State::EscDrop => match b {
                0x20..=0x2f => self.state = State::EscDrop,
                0x30..=0x7e => {
                    if self.state == State::EscInter && ESC_CHARSET.contains(&self.esc_inter) {
                        out.extend_from_slice(&[0x1b, self.esc_inter, b]);
                    }
                    self.state = State::Ground;
                }
                0x1b => self.state = State::Esc,
                _ => {
                    self.state = State::Ground;
                    self.ground(b, out);
                }
            },
            State::Csi => {
                if (0x40..=0x7e).contains(&b) {
                    self.state = State::Ground;
                    if !self.csi_overflow && csi_draws(&self.csi, b) {
                        out.extend_from_slice(b"\x1b[");
                        out.extend_from_slice(&self.csi);
                        out.push(b);
                    }
                } else if b == 0x1b {
                    // An unfinished sequence interrupted: drop it.
                    self.state = State::Esc;
                } else if (0x20..=0x3f).contains(&b) {
                    if self.csi.len() < MAX_CSI {
                        self.csi.push(b);
                    } else {
                        self.csi_overflow = true;
                    }
                } else {
                    // A control or a byte no CSI contains: drop the sequence.
                    self.state = State::Ground;
                }
            }
            State::Str => match b {
                0x07 => self.state = State::Ground,
                0x1b => self.state = State::StrEsc,
                _ => {}
            },
            State::StrEsc => {
                self.state = if b == b'\\' {
                    State::Ground
                } else {
                    State::Str
                };
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn filter(chunks: &[&[u8]]) -> Vec<u8> {
        let mut f = TermFilter::new();
        let mut out = Vec::new();
        for c in chunks {
            f.push(c, &mut out);
        }
        out
    }

    #[test]
    fn drawing_passes_unchanged() {
        let s = b"\x1b[2J\x1b[1;1H\x1b[1;31mred\x1b[0m \xc3\xa9t\xc3\xa9\r\n\x1b7\x1b8";
        assert_eq!(filter(&[s]), s.to_vec());
    }

    #[test]
    fn titles_clipboard_and_device_strings_are_dropped() {
        let out = filter(&[
            b"a\x1b]0;evil title\x07b\x1b]52;c;Y3VybCBldmlsfHNo\x1b\\c\x1bPq#0;2;0;0;0\x1b\\d\x1b_apc\x1b\\e",
        ]);
        assert_eq!(out, b"abcde".to_vec());
    }

    #[test]
    fn requests_that_make_the_terminal_answer_are_dropped() {
        let out = filter(&[b"x\x1b[6n\x1b[c\x1b[>c\x1b[14t\x1b[?2004$p\x1b[>qy"]);
        assert_eq!(out, b"xy".to_vec());
    }

    #[test]
    fn sequences_split_across_chunks_are_still_filtered() {
        let out = filter(&[b"a\x1b", b"]0;ti", b"tle\x07b\x1b[", b"6", b"nc"]);
        assert_eq!(out, b"abc".to_vec());
    }

    #[test]
    fn c1_controls_in_utf8_are_dropped() {
        // U+009B is CSI, U+009D is OSC.
        let out = filter(&[b"a\xc2\x9b6n\xc2\x9d0;t\x07b\xc2\xa0"]);
        assert!(!out.windows(2).any(|w| w == b"\xc2\x9b" || w == b"\xc2\x9d"));
        assert!(out.ends_with(b"\xc2\xa0"));
    }

    #[test]
    fn an_endless_csi_is_dropped_whole() {
        let mut long = b"\x1b[".to_vec();
        long.extend(std::iter::repeat_n(b'1', 10_000));
        long.extend_from_slice(b"mok");
        assert_eq!(filter(&[&long]), b"ok".to_vec());
    }

    #[test]
    fn raw_c1_bytes_and_overlong_or_broken_utf8_become_replacement_characters() {
        // 0x9b alone is CSI to a terminal not in UTF-8 mode; C0 9B is an
        // overlong ESC, E0 82 9B an overlong U+009B.
        let out = filter(&[
            b"a\x9b6n\xc0\x9b[6n\xe0\x82\x9bc\xed\xa0\x80\xc3",
            b"\xa9\xe2\x82z",
        ]);
        let text = String::from_utf8(out).unwrap();
        assert!(!text
            .chars()
            .any(|c| ('\u{80}'..='\u{9f}').contains(&c) || c == '\u{1b}'));
        assert!(text.contains("\u{e9}"), "{text:?}");
        assert!(text.ends_with("\u{fffd}z"), "{text:?}");
    }

    #[test]
    fn escapes_that_answer_or_leave_utf8_and_input_modes_are_dropped() {
        let out = filter(&[
            b"a\x1bZ\x1b%@\x1b%G\x1b F\x1b G\x1b#8\x05b\x1b[?u\x1b[?4m\x1b[?1;1;0S\x1b[>4;2m",
            b"c\x1b[?1000h\x1b[?1004h\x1b[?2004h\x1b[?25;1006h\x1b[12l\x1b[?1h\x1b[5 qd",
        ]);
        assert_eq!(out, b"abcd".to_vec());
    }

    #[test]
    fn display_modes_charsets_and_cursor_escapes_still_pass() {
        let s = b"\x1b[?1049h\x1b[?25l\x1b(0q\x1b(B\x1b7\x1b8\x1bM\x1b[4h\x1b[1;24r\x1b[38:5:1m\x1b[?1049l";
        assert_eq!(filter(&[s]), s.to_vec());
    }
}
