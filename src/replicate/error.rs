//! How a cycle fails: which VM, phase, disk and host, and a [`ErrorKind`] callers match on,
//! built from the hosts' and the transfer's typed errors without flattening them.

use serde::Serialize;

use crate::xapi::client::ClientError;
use crate::xapi::connection::TransportError;
use crate::xapi::transfer::{Phase as TransferPhase, TransferError, TransferErrorKind};

/// The step of a cycle, for errors and reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    SourceVm,
    Cleanup,
    Snapshot,
    ReplicaCreation,
    Transfer,
    Commit,
    Retention,
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Phase::SourceVm => "reading the source VM",
            Phase::Cleanup => "cleaning up interrupted runs",
            Phase::Snapshot => "snapshot",
            Phase::ReplicaCreation => "replica creation",
            Phase::Transfer => "transfer",
            Phase::Commit => "commit",
            Phase::Retention => "retention",
        })
    }
}

/// A failed cycle: which VM, disk, host and phase, and why.
#[derive(Debug, thiserror::Error)]
#[error("VM {vm}: {phase}{}{}: {cause}",
    disk.as_ref().map(|d| format!(" of disk {d}")).unwrap_or_default(),
    on_host(host.as_deref(), cause))]
pub struct CycleError {
    pub vm: String,
    pub phase: Phase,
    pub disk: Option<String>,
    pub host: Option<String>,
    #[source]
    pub cause: CycleCause,
}

/// ` on HOST`, unless the cause names the host itself (a host's and a transfer's errors
/// do): said once, not twice.
fn on_host(host: Option<&str>, cause: &CycleCause) -> String {
    match host {
        Some(host) if !cause.to_string().contains(host) => format!(" on {host}"),
        _ => String::new(),
    }
}

/// Why a cycle failed, as its sources said it (boxed: they are large, and a cycle's
/// `Result`s are many).
#[derive(Debug, thiserror::Error)]
pub enum CycleCause {
    /// A host failed a call.
    #[error(transparent)]
    Host(Box<ClientError>),
    /// A disk's transfer failed.
    #[error(transparent)]
    Transfer(Box<TransferError>),
    /// The VM given is not one this job can replicate.
    #[error("{0}")]
    Invalid(std::borrow::Cow<'static, str>),
    /// The caller cancelled the cycle between two steps.
    #[error("cancelled")]
    Cancelled,
}

impl From<ClientError> for CycleCause {
    fn from(e: ClientError) -> Self {
        CycleCause::Host(Box::new(e))
    }
}

impl From<TransferError> for CycleCause {
    fn from(e: TransferError) -> Self {
        CycleCause::Transfer(Box::new(e))
    }
}

impl CycleError {
    pub fn kind(&self) -> ErrorKind {
        match &self.cause {
            CycleCause::Host(e) => ErrorKind::of_client(e),
            CycleCause::Transfer(e) => ErrorKind::of_transfer(e),
            CycleCause::Invalid(_) => ErrorKind::Invalid,
            CycleCause::Cancelled => ErrorKind::Cancelled,
        }
    }
}

/// What kind of failure, for callers to match on and for the JSON report (snake_case).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum ErrorKind {
    /// No connection, TLS or HTTP failure talking to a host.
    Connection,
    /// A host did not answer in time.
    Timeout,
    /// The host refused the credentials, or none were given.
    Authentication,
    /// The host answered with a XAPI error.
    Xapi { code: String, params: Vec<String> },
    /// The host's answer was not what the protocol says.
    Protocol,
    /// The source sent a malformed VHD stream (the offset, when known).
    StreamInvalid { offset: Option<u64> },
    /// A transfer made no progress for the stall timeout.
    Stall,
    /// The caller cancelled.
    Cancelled,
    /// The target refused or closed the import.
    TargetRefused,
    /// An export's 200 response carried an error in its body.
    EmbeddedError,
    /// A non-success HTTP status from the source.
    HttpStatus { status: u16 },
    /// The VM or the job's input does not fit.
    Invalid,
    /// The VM's task panicked (a bug).
    Panicked,
}

impl ErrorKind {
    /// The kind's name as the JSON report shows it.
    pub fn name(&self) -> &'static str {
        match self {
            ErrorKind::Connection => "connection",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Authentication => "authentication",
            ErrorKind::Xapi { .. } => "xapi",
            ErrorKind::Protocol => "protocol",
            ErrorKind::StreamInvalid { .. } => "stream_invalid",
            ErrorKind::Stall => "stall",
            ErrorKind::Cancelled => "cancelled",
            ErrorKind::TargetRefused => "target_refused",
            ErrorKind::EmbeddedError => "embedded_error",
            ErrorKind::HttpStatus { .. } => "http_status",
            ErrorKind::Invalid => "invalid",
            ErrorKind::Panicked => "panicked",
        }
    }

    pub fn of_client(e: &ClientError) -> ErrorKind {
        match e {
            ClientError::Xapi { fault, .. } if fault.code == "SESSION_AUTHENTICATION_FAILED" => {
                ErrorKind::Authentication
            }
            ClientError::Xapi { fault, .. } => ErrorKind::Xapi {
                code: fault.code.clone(),
                params: fault.params.clone(),
            },
            ClientError::Transport(TransportError::Timeout { .. }) => ErrorKind::Timeout,
            ClientError::Transport(_) => ErrorKind::Connection,
            ClientError::Protocol { .. } => ErrorKind::Protocol,
            ClientError::NoCredentials { .. } => ErrorKind::Authentication,
        }
    }

    pub fn of_transfer(e: &TransferError) -> ErrorKind {
        match &e.kind {
            TransferErrorKind::Client(client) => ErrorKind::of_client(client),
            TransferErrorKind::Status { .. } | TransferErrorKind::TargetClosed
                if e.phase == TransferPhase::Import =>
            {
                ErrorKind::TargetRefused
            }
            TransferErrorKind::TargetClosed | TransferErrorKind::TargetFailed(_) => {
                ErrorKind::TargetRefused
            }
            // What XAPI's import says of it.
            TransferErrorKind::TargetTooSmall { needed, .. } => ErrorKind::Xapi {
                code: "VDI_TOO_SMALL".into(),
                params: vec![e.vdi.clone(), needed.to_string()],
            },
            TransferErrorKind::Status { status, .. } => ErrorKind::HttpStatus { status: *status },
            TransferErrorKind::EmbeddedError { .. } => ErrorKind::EmbeddedError,
            TransferErrorKind::Stream(_) | TransferErrorKind::ExtraBytes(_) => {
                ErrorKind::StreamInvalid { offset: e.offset }
            }
            TransferErrorKind::Stall { .. } => ErrorKind::Stall,
            TransferErrorKind::Connection(_) | TransferErrorKind::Nbd(_) => ErrorKind::Connection,
            TransferErrorKind::Redirects(_) => ErrorKind::Protocol,
            TransferErrorKind::Cancelled => ErrorKind::Cancelled,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xapi::rpc::XapiFault;

    fn transfer(phase: TransferPhase, kind: TransferErrorKind) -> TransferError {
        TransferError {
            phase,
            host: "h".into(),
            vdi: "v".into(),
            offset: Some(512),
            kind,
        }
    }

    #[test]
    fn kinds_come_from_the_typed_sources() {
        let xapi = |code: &str| ClientError::Xapi {
            host: "h".into(),
            method: "VM.snapshot".into(),
            fault: XapiFault {
                code: code.into(),
                params: vec!["p".into()],
            },
        };
        assert_eq!(
            ErrorKind::of_client(&xapi("SR_FULL")),
            ErrorKind::Xapi {
                code: "SR_FULL".into(),
                params: vec!["p".into()]
            }
        );
        assert_eq!(
            ErrorKind::of_client(&xapi("SESSION_AUTHENTICATION_FAILED")),
            ErrorKind::Authentication
        );
        let table = [
            (
                transfer(
                    TransferPhase::Import,
                    TransferErrorKind::Status {
                        status: 500,
                        body: String::new(),
                    },
                ),
                "target_refused",
            ),
            (
                transfer(
                    TransferPhase::Export,
                    TransferErrorKind::Status {
                        status: 404,
                        body: String::new(),
                    },
                ),
                "http_status",
            ),
            (
                transfer(
                    TransferPhase::Export,
                    TransferErrorKind::Stall {
                        after: std::time::Duration::from_secs(1),
                    },
                ),
                "stall",
            ),
            (
                transfer(TransferPhase::Validation, TransferErrorKind::ExtraBytes(3)),
                "stream_invalid",
            ),
            (
                transfer(TransferPhase::Export, TransferErrorKind::Cancelled),
                "cancelled",
            ),
            (
                transfer(
                    TransferPhase::Export,
                    TransferErrorKind::EmbeddedError {
                        status_line: "x".into(),
                    },
                ),
                "embedded_error",
            ),
        ];
        for (error, name) in table {
            assert_eq!(ErrorKind::of_transfer(&error).name(), name, "{error}");
        }
        let invalid = transfer(TransferPhase::Validation, TransferErrorKind::ExtraBytes(3));
        assert_eq!(
            ErrorKind::of_transfer(&invalid),
            ErrorKind::StreamInvalid { offset: Some(512) }
        );
    }

    #[test]
    fn the_host_is_named_once() {
        let failed = |cause: CycleCause| CycleError {
            vm: "vm".into(),
            phase: Phase::ReplicaCreation,
            disk: None,
            host: Some("https://t:443".into()),
            cause,
        };
        let xapi = ClientError::Xapi {
            host: "https://t:443".into(),
            method: "SR.get_by_uuid".into(),
            fault: XapiFault::new("UUID_INVALID", Vec::<String>::new()),
        };
        let text = failed(xapi.into()).to_string();
        assert_eq!(text.matches("https://t:443").count(), 1, "{text}");
        let text = failed(CycleCause::Invalid("no network".into())).to_string();
        assert!(
            text.contains("replica creation on https://t:443: no"),
            "{text}"
        );
    }
}
