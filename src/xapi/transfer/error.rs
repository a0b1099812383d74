//! What a failed transfer says: which side, host and VDI, in which phase, at which byte.

use std::fmt;
use std::time::Duration;

use crate::stream::StreamError;
use crate::xapi::client::ClientError;

/// The step of a transfer that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Creating tasks, opening the export or the import.
    Setup,
    /// Reading the source's export.
    Export,
    /// Validating the stream in flight: the source sent a malformed VHD.
    Validation,
    /// Sending to the target's import.
    Import,
    /// Waiting for a task's verdict after the bytes moved.
    Commit,
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Phase::Setup => "setup",
            Phase::Export => "export",
            Phase::Validation => "stream validation",
            Phase::Import => "import",
            Phase::Commit => "commit",
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TransferErrorKind {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("HTTP status {status}{}", if body.is_empty() { String::new() } else { format!(": {body}") })]
    Status { status: u16, body: String },
    #[error("the host reported an error inside the 200 response body: {status_line}")]
    EmbeddedError { status_line: String },
    #[error(transparent)]
    Stream(StreamError),
    #[error("{0} more bytes after the final footer than the BAT implies")]
    ExtraBytes(u64),
    #[error("no progress for {after:?}")]
    Stall { after: Duration },
    #[error("connection: {0}")]
    Connection(String),
    /// An NBD read of the source failed.
    #[error(transparent)]
    Nbd(Box<crate::nbd::NbdError>),
    #[error("the target closed the import before taking the whole stream")]
    TargetClosed,
    /// The target gave up on the import mid-way; its task says why.
    #[error("the target failed the import: {0}")]
    TargetFailed(ClientError),
    #[error("the target VDI holds {size} bytes, smaller than the {needed}-byte disk sent to it")]
    TargetTooSmall { size: u64, needed: u64 },
    #[error("too many redirects (last to {0})")]
    Redirects(String),
    #[error("cancelled")]
    Cancelled,
}

/// A failed transfer, with everything needed to find where: `export of VDI … on … at byte …`.
#[derive(Debug, thiserror::Error)]
pub struct TransferError {
    pub phase: Phase,
    /// The host involved, without credentials.
    pub host: String,
    pub vdi: String,
    /// The stream offset reached, when bytes had started to move.
    pub offset: Option<u64>,
    #[source]
    pub kind: TransferErrorKind,
}

impl fmt::Display for TransferError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} of VDI {} on {}", self.phase, self.vdi, self.host)?;
        if let Some(offset) = self.offset {
            write!(f, " at byte {offset}")?;
        }
        write!(f, ": {}", self.kind)
    }
}

impl TransferError {
    /// The XAPI error code behind the failure, if a host answered with one.
    pub fn xapi_code(&self) -> Option<&str> {
        match &self.kind {
            TransferErrorKind::Client(e) | TransferErrorKind::TargetFailed(e) => e.xapi_code(),
            _ => None,
        }
    }
}
