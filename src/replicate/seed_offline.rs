//! Offline seeding, Xen Orchestra's documented manual procedure as two commands:
//! [`export`] snapshots a job's VM and writes each disk's full VHD stream (what the source
//! host's `/export_raw_vdi?format=vhd` serves) as a [`seed_file`](super::seed_file) plus a
//! [`Manifest`](super::manifest::Manifest); [`import`] recreates the replica on the job's target SR from those files
//! and writes the same metadata as [`seed`](super::seed::seed).
//!
//! Import is atomic in the runner's way: the replica carries the importing markers from its
//! first moment, every file is checked structurally (frame headers, lengths, end record)
//! before anything is created, frames are verified again as they stream into the import,
//! and any failure destroys what was created.
//!
//! Both use the data plane's halves: export reads [`open_export`]'s validated stream into
//! the seed file, import feeds the seed file's frames to [`import_stream`].
//!
//! [`open_export`]: crate::xapi::transfer::open_export
//! [`import_stream`]: crate::xapi::transfer::import_stream

mod export;
mod frames;
mod guard;
mod import;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use self::export::export;
pub use self::guard::{ExistingChain, existing_chain};
pub use self::import::{ImportReport, ImportedDisk, import, scan};
use super::clock::Clock;
use super::op_error::OpError;
use super::plan::Identity;
use super::seed_file::SeedFileError;
use crate::fsio::atomic::AtomicError;
use crate::xapi::transfer::{Progress, Throttle, TransferError};

/// Why an offline seed failed.
#[derive(Debug, thiserror::Error)]
pub enum OfflineError {
    /// Bad arguments or a seed that does not fit the job (exit 2).
    #[error("{0}")]
    Invalid(String),
    /// A seed file is corrupt or truncated (exit 2): which file, and where in it.
    #[error("seed file {file}: {error}")]
    SeedFile { file: PathBuf, error: SeedFileError },
    /// A host failed a call (exit 1).
    #[error(transparent)]
    Host(OpError),
    /// A disk's transfer failed (exit 1).
    #[error("{context}: {source}")]
    Transfer {
        context: String,
        source: Box<TransferError>,
    },
    /// The local disk failed (exit 1): what was being done, to which file.
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Replacing a file (the manifest, a seed file) failed (exit 1).
    #[error(transparent)]
    Atomic(#[from] AtomicError),
    /// The compressing writer's thread ended without a verdict: it panicked (exit 1).
    #[error("the seed file writer for {} stopped without a result", path.display())]
    WriterLost { path: PathBuf },
}

impl OfflineError {
    /// For `map_err`: an I/O error while doing `action` to `path`.
    pub(crate) fn io(
        action: &'static str,
        path: &Path,
    ) -> impl FnOnce(std::io::Error) -> OfflineError {
        let path = path.to_owned();
        move |source| OfflineError::Io {
            action,
            path,
            source,
        }
    }

    pub fn is_input(&self) -> bool {
        !matches!(
            self,
            OfflineError::Io { .. }
                | OfflineError::Atomic(_)
                | OfflineError::WriterLost { .. }
                | OfflineError::Host(_)
                | OfflineError::Transfer { .. }
        )
    }
}

impl From<OpError> for OfflineError {
    fn from(e: OpError) -> Self {
        match e {
            OpError::Invalid(m) => OfflineError::Invalid(m),
            host => OfflineError::Host(host),
        }
    }
}

/// What export and import need from the job.
#[derive(Debug, Clone)]
pub struct SeedJob {
    pub name: String,
    pub id: Identity,
    /// The time of the snapshot and of the commit.
    pub clock: Arc<dyn Clock>,
    /// The bandwidth limit (`max_rate`) on every disk's stream.
    pub throttle: Option<Throttle>,
}

/// Per-disk progress: (userdevice, progress).
pub type SeedProgress<'a> = &'a mut (dyn FnMut(&str, &Progress) + Send);
