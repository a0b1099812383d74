//! The one error type of the RPC codecs.

use std::fmt;

/// Where in an XML document a problem was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct XmlPosition {
    /// 1-based line number.
    pub line: usize,
    /// 0-based byte offset from the start of the document.
    pub byte: usize,
}

impl XmlPosition {
    /// Locates `byte` in `document`; only computed on the error path, so counting lines is fine.
    pub(crate) fn locate(document: &str, byte: usize) -> Self {
        let byte = byte.min(document.len());
        let line = 1 + document.as_bytes()[..byte]
            .iter()
            .filter(|&&b| b == b'\n')
            .count();
        Self { line, byte }
    }
}

impl fmt::Display for XmlPosition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}, byte {}", self.line, self.byte)
    }
}

/// Everything that can be wrong with bytes handed to an RPC decoder.
#[derive(Debug, thiserror::Error)]
pub enum RpcCodecError {
    /// Not well-formed XML (or not UTF-8, or an unknown entity).
    #[error("malformed XML at {at}: {reason}")]
    XmlSyntax { at: XmlPosition, reason: String },

    /// Well-formed XML that is not XML-RPC as XAPI speaks it.
    #[error("invalid XML-RPC at {at}, in {element}: {reason}")]
    XmlRpc {
        at: XmlPosition,
        /// The element being read, e.g. `<struct>`, or `the document` at top level.
        element: String,
        reason: String,
    },

    /// Not well-formed JSON; `serde_json`'s message ends with the line and column.
    #[error("malformed JSON: {0}")]
    JsonSyntax(serde_json::Error),

    /// Well-formed JSON that is not a JSON-RPC request or response as XAPI speaks it.
    #[error("invalid JSON-RPC {message}: {reason}")]
    JsonRpc {
        /// `request` or `response`.
        message: &'static str,
        reason: String,
    },

    /// A well-formed RPC message whose XAPI result or error is malformed: the XML-RPC
    /// `Status` struct, or an error description that is not `[CODE, params…]`.
    #[error("invalid XAPI result envelope: {reason}")]
    Envelope { reason: String },
}

/// At most this many characters of offending input are quoted in an error message,
/// so a hostile document cannot make error messages as large as itself.
const EXCERPT_CHARS: usize = 40;

/// The first characters of `text`, enough to recognise it in an error message.
pub(crate) fn shorten(text: &str) -> &str {
    match text.char_indices().nth(EXCERPT_CHARS) {
        Some((cut, _)) => &text[..cut],
        None => text,
    }
}

/// A short, quoted, control-character-escaped excerpt of `text` for error messages.
pub(crate) fn excerpt(text: &str) -> String {
    let short = shorten(text);
    if short.len() < text.len() {
        format!("{short:?}…")
    } else {
        format!("{text:?}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn position_counts_lines_up_to_the_byte() {
        let document = "a\nbc\nd";
        assert_eq!(
            XmlPosition::locate(document, 0),
            XmlPosition { line: 1, byte: 0 }
        );
        assert_eq!(
            XmlPosition::locate(document, 3),
            XmlPosition { line: 2, byte: 3 }
        );
        assert_eq!(XmlPosition::locate(document, 99).line, 3);
    }

    #[test]
    fn excerpt_is_bounded_and_quoted() {
        assert_eq!(excerpt("abc"), "\"abc\"");
        let long = "é".repeat(1000);
        assert_eq!(excerpt(&long).chars().count(), EXCERPT_CHARS + 3);
    }
}
