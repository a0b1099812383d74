use uuid::Uuid;

use crate::vhd::{FormatError, Structure};

/// Everything that can go wrong encoding or decoding a VHD stream. Every variant about stream
/// content names the absolute stream byte offset it concerns ([`StreamError::offset`]).
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// A footer, header, BAT or other structure is malformed; the offset is inside it.
    #[error(transparent)]
    Format(#[from] FormatError),

    /// The stream ended early. `exact` says whether `expected` is the stream's known total
    /// length or only the end of the structure being read.
    #[error(
        "stream truncated: it ended after {received} bytes, inside the {reading}; \
         expected {}{expected} bytes",
        if *exact { "" } else { "at least " }
    )]
    Truncated {
        reading: Structure,
        expected: u64,
        exact: bool,
        received: u64,
    },

    /// A structure points before bytes already read past. A stream is read forward only, so
    /// the reader cannot go back for it.
    #[error(
        "{structure} at byte {offset} precedes the end of the {earlier} at byte {earlier_end}; \
         a stream is read forward only"
    )]
    Backward {
        structure: Structure,
        offset: u64,
        earlier: Structure,
        earlier_end: u64,
    },

    /// A BAT entry points into or before the metadata.
    #[error(
        "block {index} at byte {offset} precedes the BAT end at {bat_end}; \
         streams need blocks after the BAT"
    )]
    BlockBeforeBat {
        index: u32,
        offset: u64,
        bat_end: u64,
    },

    /// Two structures claim the same bytes.
    #[error("{second} at byte {offset} overlaps the {first} at bytes {first_start}..{first_end}")]
    Overlap {
        second: Structure,
        offset: u64,
        first: Structure,
        first_start: u64,
        first_end: u64,
    },

    /// The final footer is not byte-identical to the copy at offset 0.
    #[error(
        "final footer at byte {offset} differs from the copy at byte 0 (first at byte \
         {first_difference}): checksum {end_checksum:#010x} vs {copy_checksum:#010x}, \
         uuid {end_uuid} vs {copy_uuid}"
    )]
    FooterMismatch {
        offset: u64,
        first_difference: u64,
        end_checksum: u32,
        copy_checksum: u32,
        end_uuid: Uuid,
        copy_uuid: Uuid,
    },

    /// Bytes follow the final footer.
    #[error("trailing data at byte {offset}, after the final footer")]
    TrailingData { offset: u64 },

    /// The decoder was called again after it had already failed.
    #[error("stream decoder used again after it failed at byte {offset}")]
    AfterFailure { offset: u64 },

    /// The transport under a `FramedRead` failed; not about the stream's bytes.
    #[error("reading the stream: {0}")]
    Io(#[from] std::io::Error),

    /// Encoder parameters that no valid stream can carry.
    #[error("stream parameter {field}: found {found}, expected {expected}")]
    InvalidParams {
        field: &'static str,
        found: String,
        expected: String,
    },

    /// The encoder was handed block data of the wrong length.
    #[error(
        "block {index} at byte {offset}: {found} data bytes given, expected exactly {expected}"
    )]
    BlockLength {
        index: u32,
        offset: u64,
        found: usize,
        expected: u32,
    },

    /// The encoder was handed a block out of turn: blocks go in ascending index, each once.
    #[error("block {index} given at byte {offset}, but {}", match next {
        Some(next) => format!("block {next} comes next"),
        None => "every included block was already given".to_string(),
    })]
    BlockOrder {
        index: u32,
        offset: u64,
        next: Option<u32>,
    },

    /// The encoder's trailer was asked for before every included block was given.
    #[error("trailer asked for at byte {offset} after {given} of {included} blocks")]
    Incomplete {
        offset: u64,
        given: u32,
        included: u32,
    },
}

impl StreamError {
    /// [`StreamError::InvalidParams`]: `field` was `found`, and `expected` says what would do.
    pub fn invalid_param(
        field: &'static str,
        found: impl std::fmt::Display,
        expected: impl std::fmt::Display,
    ) -> StreamError {
        StreamError::InvalidParams {
            field,
            found: found.to_string(),
            expected: expected.to_string(),
        }
    }

    /// The absolute stream byte offset the error concerns; `None` for transport failures and
    /// encoder parameters, which are not about a position in a stream.
    pub fn offset(&self) -> Option<u64> {
        match self {
            StreamError::Format(e) => Some(e.offset),
            StreamError::Truncated { received, .. } => Some(*received),
            StreamError::Backward { offset, .. }
            | StreamError::BlockBeforeBat { offset, .. }
            | StreamError::Overlap { offset, .. }
            | StreamError::FooterMismatch { offset, .. }
            | StreamError::TrailingData { offset }
            | StreamError::AfterFailure { offset }
            | StreamError::BlockLength { offset, .. }
            | StreamError::BlockOrder { offset, .. }
            | StreamError::Incomplete { offset, .. } => Some(*offset),
            StreamError::Io(_) | StreamError::InvalidParams { .. } => None,
        }
    }
}
