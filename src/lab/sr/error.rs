//! The file SR's one error type. Every error names the operation and, where one is involved,
//! the VDI; errors from files name the file.

use std::fmt;
use std::path::PathBuf;

use uuid::Uuid;

use crate::fsio::atomic::AtomicError;
use crate::image::ImageError;

/// What the SR was asked to do when an error happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    Open,
    Create,
    Snapshot,
    Clone,
    Destroy,
    Resize,
    Write,
    Read,
    Hash,
    Import,
    SetCapacity,
    Measure,
    Coalesce,
    EnableCbt,
    DisableCbt,
    ListChangedBlocks,
    DataDestroy,
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Operation::Open => "open SR",
            Operation::Create => "create",
            Operation::Snapshot => "snapshot",
            Operation::Clone => "clone",
            Operation::Destroy => "destroy",
            Operation::Resize => "resize",
            Operation::Write => "write",
            Operation::Read => "read",
            Operation::Hash => "hash",
            Operation::Import => "import",
            Operation::SetCapacity => "set capacity",
            Operation::Measure => "measure",
            Operation::Coalesce => "coalesce",
            Operation::EnableCbt => "enable CBT on",
            Operation::DisableCbt => "disable CBT on",
            Operation::ListChangedBlocks => "list changed blocks of",
            Operation::DataDestroy => "destroy the data of",
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SrError {
    #[error("{op} VDI {vdi}: no such VDI in this SR")]
    NotFound { op: Operation, vdi: Uuid },
    #[error("{op} VDI {vdi}: a VDI with this uuid already exists")]
    AlreadyExists { op: Operation, vdi: Uuid },
    #[error("{op} VDI {vdi}: the VDI is read-only")]
    ReadOnly { op: Operation, vdi: Uuid },
    #[error("{op} VDI {vdi}: an import is writing this VDI")]
    InUse { op: Operation, vdi: Uuid },
    #[error(
        "{op} VDI {vdi}: the SR is full: the VDI may need {requested} bytes, {available} are free"
    )]
    Full {
        op: Operation,
        vdi: Uuid,
        requested: u64,
        available: u64,
    },
    #[error(
        "write VDI {vdi}: {len} bytes at offset {offset} end past the virtual size {virtual_size}"
    )]
    OutOfRange {
        vdi: Uuid,
        offset: u64,
        len: u64,
        virtual_size: u64,
    },
    #[error("resize VDI {vdi}: cannot shrink from {current} to {requested} bytes")]
    Shrink {
        vdi: Uuid,
        current: u64,
        requested: u64,
    },
    #[error("{op} VDI {vdi}: its leaf {} is missing", path.display())]
    MissingLeaf {
        op: Operation,
        vdi: Uuid,
        path: PathBuf,
    },
    #[error("{op} VDI {vdi}: {source}")]
    Image {
        op: Operation,
        vdi: Uuid,
        /// Boxed: image errors are large and this one is rare.
        source: Box<ImageError>,
    },
    #[error("{op}{}: {action} {}: {source}", for_vdi(vdi), path.display())]
    Io {
        op: Operation,
        vdi: Option<Uuid>,
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("SR index {}: {detail}", path.display())]
    BadIndex { path: PathBuf, detail: String },
    #[error("{}: not a file SR: it holds VHD files but no sr.json", dir.display())]
    NotAnSr { dir: PathBuf },
    #[error("{op} VDI {vdi}: changed block tracking is not enabled on it")]
    NoChangeLog { op: Operation, vdi: Uuid },
    /// SM's `CBTChangedBlocksError`, with its reason.
    #[error("list changed blocks from VDI {from} to VDI {to}: {reason}")]
    ChangedBlocks {
        from: Uuid,
        to: Uuid,
        reason: &'static str,
    },
    #[error(
        "{op} VDI {vdi}: only its changed block tracking metadata is left (its data was destroyed)"
    )]
    MetadataOnly { op: Operation, vdi: Uuid },
    #[error("{op} VDI {vdi}: the VDI is writable; only a snapshot's data can be destroyed")]
    Writable { op: Operation, vdi: Uuid },
    #[error("change log {}: {detail}", path.display())]
    BadChangeLog { path: PathBuf, detail: String },
}

fn for_vdi(vdi: &Option<Uuid>) -> String {
    vdi.map(|v| format!(" VDI {v}")).unwrap_or_default()
}

/// Builds errors for one operation on one VDI, so call sites stay short.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Context {
    pub op: Operation,
    pub vdi: Option<Uuid>,
}

impl Context {
    pub fn sr(op: Operation) -> Context {
        Context { op, vdi: None }
    }

    pub fn vdi(op: Operation, vdi: Uuid) -> Context {
        Context { op, vdi: Some(vdi) }
    }

    pub fn io(
        self,
        action: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> SrError {
        move |source| SrError::Io {
            op: self.op,
            vdi: self.vdi,
            action,
            path: path.into(),
            source,
        }
    }

    /// For a failed step of an atomic replace, which names its own action and path.
    pub fn atomic(self) -> impl FnOnce(AtomicError) -> SrError {
        move |e| self.io(e.action, e.path)(e.source)
    }
}

/// Wraps an image error (which names its file) with the operation and VDI.
pub(crate) fn image_error(op: Operation, vdi: Uuid) -> impl FnOnce(ImageError) -> SrError {
    move |source| SrError::Image {
        op,
        vdi,
        source: Box::new(source),
    }
}
