//! Text that came from outside the node (a peer's request, an object key, a
//! certificate field) as it may be shown to a person: in a log line, a
//! ledger entry's `detail`, an error message sent back to a caller.
//!
//! Two dangers: control characters (a newline forges a whole log line, an
//! ESC sequence reaches the operator's terminal, a bidi override reorders
//! what they read) and size (one 4 MB field grew the log by 195 MB in two
//! seconds). [`Shown`] escapes the first and caps the second, noting the
//! original length so the reader knows text was cut.

use std::fmt::{self, Write};

/// Bytes of one outside value shown at most (before escaping).
pub const SHOWN_MAX: usize = 256;

/// Bytes of one error message sent to a caller at most (before escaping).
pub const MESSAGE_MAX: usize = 1024;

/// `text`, escaped and cut to [`SHOWN_MAX`] bytes, as a `Display`.
pub fn shown(text: &str) -> Shown<'_> {
    Shown {
        text,
        max: SHOWN_MAX,
    }
}

/// `text`, escaped and cut to `max` bytes.
pub fn shown_at_most(text: &str, max: usize) -> Shown<'_> {
    Shown { text, max }
}

/// Outside text made safe to show: every control character (C0, DEL,
/// C1), bidi override and line or paragraph separator is written as a
/// `\u{…}` escape (`\n`, `\r`, `\t` as themselves escaped), a backslash
/// as `\\`; past `max` bytes the rest is replaced by `… (N bytes in all)`.
#[derive(Clone, Copy)]
pub struct Shown<'a> {
    text: &'a str,
    max: usize,
}

/// Whether `c` must not reach a terminal or a log line as itself.
fn is_unsafe(c: char) -> bool {
    c.is_control()
        || matches!(c,
            '\u{2028}' | '\u{2029}'                 // line, paragraph separator
            | '\u{200e}' | '\u{200f}'               // LRM, RLM
            | '\u{202a}'..='\u{202e}'               // embeddings, overrides
            | '\u{2066}'..='\u{2069}'               // isolates
            | '\u{feff}')
}

impl fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut taken = 0;
        for c in self.text.chars() {
            if taken + c.len_utf8() > self.max {
                return write!(f, "… ({} bytes in all)", self.text.len());
            }
            taken += c.len_utf8();
            match c {
                '\\' => f.write_str("\\\\")?,
                '\n' => f.write_str("\\n")?,
                '\r' => f.write_str("\\r")?,
                '\t' => f.write_str("\\t")?,
                c if is_unsafe(c) => write!(f, "\\u{{{:x}}}", c as u32)?,
                c => f.write_char(c)?,
            }
        }
        Ok(())
    }
}

impl fmt::Debug for Shown<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{self}\"")
    }
}

/// `text` cut to at most `max` bytes on a character boundary, with
/// `… (N bytes in all)` appended when cut; nothing escaped (for JSON,
/// which escapes by itself).
pub fn cut(text: &str, max: usize) -> std::borrow::Cow<'_, str> {
    if text.len() <= max {
        return text.into();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes in all)", &text[..end], text.len()).into()
}

/// Whether `text` is shown as itself (nothing escaped, nothing cut).
pub fn is_plain(text: &str, max: usize) -> bool {
    text.len() <= max && !text.chars().any(|c| c == '\\' || is_unsafe(c))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_cannot_forge_a_line_or_reach_the_terminal() {
        let forged = "1.0\n2026-12-02T00:00:00Z  INFO access granted\x1b[2J\u{202e}x\\";
        let out = shown(forged).to_string();
        assert!(!out.chars().any(is_unsafe), "{out}");
        assert_eq!(
            out,
            "1.0\\n2026-12-02T00:00:00Z  INFO access granted\\u{1b}[2J\\u{202e}x\\\\"
        );
        assert_eq!(shown("道路 sensors").to_string(), "道路 sensors");
        assert!(is_plain("道路 sensors", 64));
        assert!(!is_plain("a\nb", 64));
    }

    #[test]
    fn long_text_is_cut_on_a_character_boundary_and_its_length_noted() {
        let long = "数".repeat(2_000_000); // 6 MB
        let out = shown(&long).to_string();
        assert!(out.len() < SHOWN_MAX + 40, "{}", out.len());
        assert!(out.ends_with("… (6000000 bytes in all)"), "{out}");
        assert_eq!(shown_at_most("abcdef", 6).to_string(), "abcdef");
        assert_eq!(cut("a\n数", 3), "a\n… (5 bytes in all)");
        assert_eq!(cut("a\n数", 5), "a\n数");
        assert_eq!(
            shown_at_most("abcdefg", 6).to_string(),
            "abcdef… (7 bytes in all)"
        );
    }

    proptest::proptest! {
        #[test]
        fn what_is_shown_is_one_line_of_bounded_size(text in ".*", max in 0usize..64) {
            let out = shown_at_most(&text, max).to_string();
            proptest::prop_assert!(!out.chars().any(is_unsafe));
            // Each byte shown becomes at most 10 (`\u{10ffff}` for 4).
            proptest::prop_assert!(out.len() <= 10 * max + 40);
            if is_plain(&text, max) {
                proptest::prop_assert_eq!(out, text);
            }
        }
    }
}
