//! Text from hosts (VM and disk names, error texts that quote them) made safe for a terminal.
//!
//! A VM name is whatever anyone with access to the source pool typed, so it may hold escape
//! sequences that rewrite the screen, forge log lines, or reorder text (bidi overrides).
//! Everything printed for a human goes through here; JSON output does not need it (serde
//! escapes control characters there).

use std::borrow::Cow;
use std::fmt::Write as _;

/// `text` with every control character written as a visible escape: C0 (including newline
/// and tab), DEL, C1 (where 8-bit CSI lives) and the bidirectional overrides and isolates.
pub fn name(text: &str) -> Cow<'_, str> {
    escape(text, |_| false)
}

/// A message of ours that may quote host text: as [`name`], but keeping the newlines and tabs
/// our own messages use for layout.
pub fn message(text: &str) -> Cow<'_, str> {
    escape(text, |c| c == '\n' || c == '\t')
}

fn escape(text: &str, keep: impl Fn(char) -> bool) -> Cow<'_, str> {
    if !text.chars().any(|c| is_unsafe(c) && !keep(c)) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if is_unsafe(c) && !keep(c) {
            let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

fn is_unsafe(c: char) -> bool {
    c.is_control() // C0, DEL and C1
        || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{200e}' | '\u{200f}')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_names_are_borrowed_unchanged() {
        for plain in ["web01", "Serveur de fichiers é", "日本語 VM", ""] {
            assert!(matches!(name(plain), Cow::Borrowed(s) if s == plain));
        }
    }

    #[test]
    fn escape_sequences_and_overrides_become_visible() {
        assert_eq!(name("a\x1b[2Jb"), "a\\u{1b}[2Jb");
        assert_eq!(name("x\u{9b}31my"), "x\\u{9b}31my");
        assert_eq!(name("line\nforged"), "line\\u{a}forged");
        assert_eq!(name("evil\u{202e}gpj.exe"), "evil\\u{202e}gpj.exe");
        assert_eq!(name("bell\x07\x7f"), "bell\\u{7}\\u{7f}");
    }

    #[test]
    fn messages_keep_their_layout_but_not_escapes() {
        assert_eq!(message("a\n\tb"), "a\n\tb");
        assert_eq!(
            message("VM \x1b]0;owned\x07: x"),
            "VM \\u{1b}]0;owned\\u{7}: x"
        );
    }
}
