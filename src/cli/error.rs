use crate::image::{ImageError, ImageErrorKind};
use crate::replicate::job::JobError;
use crate::replicate::lease::LeaseError;
use crate::replicate::lock::LockError;
use crate::replicate::manifest::ManifestError;
use crate::replicate::op_error::OpError;
use crate::replicate::preflight::PreflightError;
use crate::replicate::run::CycleError;
use crate::replicate::seed_offline::OfflineError;
use crate::xapi::client::ClientError;
use crate::xapi::connect::ConnectError;

/// What a command failed with, typed up to here; [`CliError::exit_code`] maps it to the
/// exit code.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Bad input given as text: a bad argument or an unreadable file (exit 2).
    #[error("{0}")]
    Input(String),
    /// The work itself failed, said as text (exit 1).
    #[error("{0}")]
    Failed(String),
    /// A step of a command failed (exit 1): what it was doing, and the step's own error.
    #[error("{what}: {source}")]
    Step {
        what: String,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// An unreadable or invalid seed manifest (exit 2).
    #[error(transparent)]
    Manifest(Box<ManifestError>),
    /// An unreadable or invalid job file (exit 2).
    #[error(transparent)]
    Job(Box<JobError>),
    /// Another run holds a lock this one needs (exit 3), or its state directory or file is
    /// unsafe to use (exit 2).
    #[error(transparent)]
    Lock(Box<LockError>),
    /// A VM's lease on the source: held by another run (exit 3, as a held lock), or not taken
    /// or lost for another reason (exit 1).
    #[error(transparent)]
    Lease(Box<LeaseError>),
    /// SIGINT or SIGTERM stopped the command (exit 130, as a shell reports it).
    #[error("{0}")]
    Interrupted(String),
    /// Logging in to a host failed: bad credentials or trust given (exit 2), or the host
    /// (exit 1).
    #[error(transparent)]
    Connect(Box<ConnectError>),
    /// A job's check before it runs: its configuration at fault (exit 2), or a host (exit 1).
    #[error(transparent)]
    Preflight(Box<PreflightError>),
    /// A host failed a call (exit 1).
    #[error(transparent)]
    Host(Box<ClientError>),
    /// A replication cycle failed (exit 1).
    #[error(transparent)]
    Cycle(Box<CycleError>),
    /// A seed or failover failed: the input did not fit (exit 2) or a host failed (exit 1).
    #[error(transparent)]
    Op(Box<OpError>),
    /// An offline seed failed: the input did not fit (exit 2) or the work failed (exit 1).
    #[error(transparent)]
    Offline(Box<OfflineError>),
    /// A VHD file: malformed (exit 2) or failing I/O (exit 1).
    #[error(transparent)]
    Image(Box<ImageError>),
}

/// The sources are boxed: a command's `Result` stays small however large they grow.
macro_rules! boxed_from {
    ($($variant:ident($source:ty)),* $(,)?) => {$(
        impl From<$source> for CliError {
            fn from(e: $source) -> Self {
                CliError::$variant(Box::new(e))
            }
        }
    )*};
}

boxed_from!(
    Manifest(ManifestError),
    Job(JobError),
    Lock(LockError),
    Lease(LeaseError),
    Connect(ConnectError),
    Preflight(PreflightError),
    Host(ClientError),
    Cycle(CycleError),
    Op(OpError),
    Offline(OfflineError),
    Image(ImageError),
);

impl CliError {
    /// For `map_err`: `what` failed with the error given.
    pub fn step<E>(what: impl Into<String>) -> impl FnOnce(E) -> CliError
    where
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let what = what.into();
        move |e| CliError::Step {
            what,
            source: e.into(),
        }
    }

    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Input(_) | CliError::Job(_) | CliError::Manifest(_) => 2,
            CliError::Failed(_)
            | CliError::Step { .. }
            | CliError::Host(_)
            | CliError::Cycle(_) => 1,
            CliError::Lock(e) => lock_exit_code(e),
            CliError::Lease(e) => lease_exit_code(e),
            CliError::Interrupted(_) => 130,
            CliError::Connect(e) => input_or_failed(e.is_input()),
            CliError::Preflight(e) => input_or_failed(e.is_config()),
            CliError::Op(e) => input_or_failed(e.is_input()),
            CliError::Offline(e) => input_or_failed(e.is_input()),
            CliError::Image(e) => input_or_failed(!matches!(e.kind, ImageErrorKind::Io { .. })),
        }
    }
}

/// A VM lock not taken: held by another run (3, as an I/O failure on it always was), or
/// refused because its state directory or lock file is unsafe to use (2, bad input).
pub(super) fn lock_exit_code(e: &LockError) -> u8 {
    match e {
        LockError::UnsafeStateDir { .. } | LockError::NotARegularFile { .. } => 2,
        LockError::Held { .. } | LockError::Io { .. } => 3,
    }
}

/// A VM lease not taken or lost: held by another run is the same as a held lock (3); any
/// other reason is a failure (1).
pub(super) fn lease_exit_code(e: &LeaseError) -> u8 {
    if e.is_held_elsewhere() { 3 } else { 1 }
}

fn input_or_failed(input: bool) -> u8 {
    if input { 2 } else { 1 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_follow_the_typed_source() {
        let op = |e: OpError| CliError::from(e).exit_code();
        assert_eq!(op(OpError::Invalid("no such VM".into())), 2);
        let host = ClientError::NoCredentials { host: "h".into() };
        assert_eq!(
            op(OpError::Host {
                context: "reading".into(),
                source: ClientError::NoCredentials { host: "h".into() },
            }),
            1
        );
        assert_eq!(CliError::from(host).exit_code(), 1);
        assert_eq!(CliError::Input("--vm x".into()).exit_code(), 2);
        let lock = |e: LockError| CliError::from(e).exit_code();
        let held = LockError::Held {
            vm: "v".into(),
            holder: "pid 1".into(),
        };
        assert_eq!(lock(held), 3);
        let path = std::path::PathBuf::from("/state");
        assert_eq!(lock(LockError::UnsafeStateDir { path, mode: 0o777 }), 2);
        let lease = |e: LeaseError| CliError::from(e).exit_code();
        let vm = || "v".to_owned();
        let held = LeaseError::Held {
            vm: vm(),
            holder: "pid 1".into(),
            expires: 0,
        };
        assert_eq!(lease(held), 3);
        assert_eq!(lease(LeaseError::Contended { vm: vm() }), 3);
        let lost = LeaseError::Lost {
            vm: vm(),
            holder: "pid 2".into(),
        };
        assert_eq!(lease(lost), 1);
        assert_eq!(CliError::Interrupted("stopped".into()).exit_code(), 130);
    }
}
