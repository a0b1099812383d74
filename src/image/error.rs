use std::path::{Path, PathBuf};

use crate::vhd::FormatError;

/// An error about a VHD file, always naming the file.
#[derive(Debug, thiserror::Error)]
#[error("{}: {kind}", path.display())]
pub struct ImageError {
    pub path: PathBuf,
    pub kind: ImageErrorKind,
}

#[derive(Debug, thiserror::Error)]
pub enum ImageErrorKind {
    #[error("{op}: {source}")]
    Io {
        op: &'static str,
        source: std::io::Error,
    },
    #[error("{0}")]
    Format(#[from] FormatError),
    /// The structure makes the content ambiguous or wrong (what `check` reports); `more`
    /// counts the further findings.
    #[error("damaged: {finding}{}", more_findings(*more))]
    Damaged { finding: FormatError, more: usize },
    #[error("parent {parent} not found: tried {tried}")]
    ParentMissing { parent: String, tried: String },
    #[error("parent {parent} has footer uuid {found}, but the child expects {expected}")]
    ParentUuidMismatch {
        parent: PathBuf,
        found: uuid::Uuid,
        expected: uuid::Uuid,
    },
    #[error("chain loops back to {0}")]
    ChainCycle(PathBuf),
    #[error("chain is deeper than {0} levels")]
    ChainTooDeep(usize),
    #[error("a differencing disk has no parent name or locator")]
    NoParentInfo,
    #[error("{0}")]
    Invalid(String),
}

impl ImageError {
    pub fn new(path: &Path, kind: impl Into<ImageErrorKind>) -> ImageError {
        ImageError {
            path: path.to_path_buf(),
            kind: kind.into(),
        }
    }

    pub fn io(path: &Path, op: &'static str, source: std::io::Error) -> ImageError {
        ImageError::new(path, ImageErrorKind::Io { op, source })
    }

    /// The underlying format error, when that is what went wrong.
    pub fn format(&self) -> Option<&FormatError> {
        match &self.kind {
            ImageErrorKind::Format(e) | ImageErrorKind::Damaged { finding: e, .. } => Some(e),
            _ => None,
        }
    }
}

fn more_findings(more: usize) -> String {
    match more {
        0 => String::new(),
        n => format!(" (and {n} more finding{})", if n == 1 { "" } else { "s" }),
    }
}
