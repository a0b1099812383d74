use std::fmt;

/// The on-disk structure an error was found in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Structure {
    Footer,
    Header,
    ParentLocator(u8),
    Bat,
    Batmap,
    Bitmap,
    Block(u32),
    File,
}

impl fmt::Display for Structure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Structure::Footer => write!(f, "footer"),
            Structure::Header => write!(f, "dynamic header"),
            Structure::ParentLocator(i) => write!(f, "parent locator {i}"),
            Structure::Bat => write!(f, "BAT"),
            Structure::Batmap => write!(f, "batmap"),
            Structure::Bitmap => write!(f, "sector bitmap"),
            Structure::Block(i) => write!(f, "block {i}"),
            Structure::File => write!(f, "file"),
        }
    }
}

/// What class of problem a [`FormatError`] is, so callers and tests can match on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Fewer bytes than the structure needs.
    Truncated,
    /// A magic cookie is wrong.
    BadCookie,
    /// A stored checksum does not match the bytes.
    BadChecksum,
    /// A field holds a value outside what the format or vhdsync allows.
    BadValue,
    /// A size or count is larger than anything we are willing to allocate for.
    TooLarge,
    /// An offset or extent lies outside the file or stream.
    OutOfBounds,
    /// Two structures occupy the same bytes.
    Overlap,
    /// Text that should be UTF-8 / UTF-16 is not.
    BadText,
}

/// A precise complaint about VHD bytes: which structure, which field, at which absolute byte
/// offset, what was found there and what was expected instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{structure} {field} at byte {offset}: found {found}, expected {expected}")]
pub struct FormatError {
    pub kind: ErrorKind,
    pub structure: Structure,
    pub field: &'static str,
    pub offset: u64,
    pub found: String,
    pub expected: String,
}

impl FormatError {
    pub fn new(
        kind: ErrorKind,
        structure: Structure,
        field: &'static str,
        offset: u64,
        found: impl fmt::Display,
        expected: impl fmt::Display,
    ) -> Self {
        FormatError {
            kind,
            structure,
            field,
            offset,
            found: found.to_string(),
            expected: expected.to_string(),
        }
    }

    pub(crate) fn truncated(structure: Structure, offset: u64, have: usize, need: usize) -> Self {
        FormatError::new(
            ErrorKind::Truncated,
            structure,
            "length",
            offset,
            format_args!("{have} bytes"),
            format_args!("{need} bytes"),
        )
    }
}
