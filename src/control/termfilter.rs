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
/// SGR, modes, margins, save/restore. Everything else is dropped.
const CSI_ALLOWED: &[u8] = b"@ABCDEFGHIJKLMPSTXZ`abdefghlmrsu";
/// Longest CSI sequence passed on.
const MAX_CSI: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Ground,
    Esc,
    Csi,
    /// Inside an OSC/DCS/APC/PM/SOS string (dropped to its end).
    Str,
    /// ESC inside a string: `\` ends it.
    StrEsc,
    /// A 0xC2 lead byte: C1 controls are U+0080..U+009F (C2 80..C2 9F).
    C2,
}

/// A streaming filter (sequences may be split across chunks).
#[derive(Debug)]
pub struct TermFilter {
    state: State,
    csi: Vec<u8>,
    csi_overflow: bool,
}

impl Default for TermFilter {
    fn default() -> Self {
        TermFilter::new()
    }
}

impl TermFilter {
    pub fn new() -> TermFilter {
        TermFilter {
            state: State::Ground,
            csi: Vec::with_capacity(MAX_CSI),
            csi_overflow: false,
        }
    }

    /// Filters one chunk, appending what may be shown to `out`.
    pub fn push(&mut self, input: &[u8], out: &mut Vec<u8>) {
        for &b in input {
            self.byte(b, out);
        }
    }

    fn byte(&mut self, b: u8, out: &mut Vec<u8>) {
        match self.state {
            State::Ground => match b {
                0x1b => self.state = State::Esc,
                0xc2 => self.state = State::C2,
                // Raw 8-bit C1 bytes outside UTF-8 sequences are dropped
                // by the C2 rule below only when encoded; a lone one is
                // invalid UTF-8, which terminals show as a replacement.
                _ => out.push(b),
            },
            State::C2 => {
                self.state = State::Ground;
                if (0x80..=0x9f).contains(&b) {
                    // A C1 control (CSI, OSC, DCS as one character): dropped.
                } else {
                    out.push(0xc2);
                    self.byte(b, out);
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
                _ => {
                    self.state = State::Ground;
                    out.push(0x1b);
                    out.push(b);
                }
            },
            State::Csi => {
                if (0x40..=0x7e).contains(&b) {
                    self.state = State::Ground;
                    if !self.csi_overflow && CSI_ALLOWED.contains(&b) {
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
}
