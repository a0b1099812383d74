use crate::image::ImageError;
use crate::replicate::lock::LockError;

/// What a command failed with, carrying the exit code the failure maps to.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Bad input: an unreadable file, a bad argument (exit 2).
    #[error("{0}")]
    Input(String),
    /// The work itself failed (exit 1).
    #[error("{0}")]
    Failed(String),
    /// Another run holds a lock this one needs (exit 3).
    #[error("{0}")]
    Locked(String),
}

impl CliError {
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Input(_) => 2,
            CliError::Failed(_) => 1,
            CliError::Locked(_) => 3,
        }
    }
}

impl CliError {
    /// A VM lock not taken: held by another run (exit 3, as an I/O failure on it always was),
    /// or refused because its state directory or file is unsafe to use (exit 2).
    pub fn lock(e: &LockError) -> CliError {
        match e {
            LockError::UnsafeStateDir { .. } | LockError::NotARegularFile { .. } => {
                CliError::Input(e.to_string())
            }
            LockError::Held { .. } | LockError::Io { .. } => CliError::Locked(e.to_string()),
        }
    }
}

impl From<ImageError> for CliError {
    fn from(e: ImageError) -> Self {
        match e.kind {
            crate::image::ImageErrorKind::Io { .. } => CliError::Failed(e.to_string()),
            _ => CliError::Input(e.to_string()),
        }
    }
}
