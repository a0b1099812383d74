//! The error of the one-shot operations on hosts (seed, failover): the input does not fit,
//! or a host failed a call, each with what was being done.

use crate::xapi::client::ClientError;

#[derive(Debug, thiserror::Error)]
pub enum OpError {
    /// The arguments or the objects they name do not fit (exit 2).
    #[error("{0}")]
    Invalid(String),
    /// A host failed a call (exit 1).
    #[error("{context}: {source}")]
    Host {
        context: String,
        source: ClientError,
    },
}

impl OpError {
    pub fn is_input(&self) -> bool {
        matches!(self, OpError::Invalid(_))
    }
}

/// For `map_err`: a host's failure while doing `context`.
pub(crate) fn on_host(context: impl Into<String>) -> impl FnOnce(ClientError) -> OpError {
    let context = context.into();
    move |source| OpError::Host { context, source }
}
