//! The one error type of the NBD module: the codec's protocol errors, the server's refusals and
//! failed reads, and the client's I/O and TLS failures, each naming where it happened.

use std::fmt;

use super::wire::{ReplyCode, ServerError, option_name};

/// Where in the protocol something went wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// The server's greeting and the client's flags.
    Greeting,
    /// The exchange of one option (`NBD_OPT_*`, by number): the request and its replies.
    Option(u32),
    /// The TLS handshake after `NBD_OPT_STARTTLS` was accepted.
    Tls,
    /// Requests and their replies, after the handshake.
    Transmission,
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Phase::Greeting => f.write_str("greeting"),
            Phase::Option(option) => write!(f, "{}", option_name(*option)),
            Phase::Tls => f.write_str("TLS upgrade"),
            Phase::Transmission => f.write_str("transmission"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum NbdError {
    /// The peer sent something the protocol does not allow, or beyond this client's bounds.
    /// `offset` is where the field starts: in the server's byte stream for the client side
    /// (counted from the connection's first byte, TLS records excluded), within the message
    /// for the server-side decoders.
    #[error("NBD {phase}: bad {field} at byte {offset}: {problem}")]
    Protocol {
        phase: Phase,
        field: &'static str,
        offset: u64,
        problem: String,
    },
    /// The server answered an option with an error reply. `message` is the server's text, if
    /// any, with the export name (which may carry a session) blanked out.
    #[error("NBD server refused {}: {code}{}", option_name(*option), shown_message(message))]
    Refused {
        option: u32,
        code: ReplyCode,
        message: String,
    },
    /// The server failed a read (the connection stays usable).
    #[error(
        "NBD read of {len} bytes at offset {offset} (handle {handle}) failed on the server: {error}"
    )]
    ReadFailed {
        handle: u64,
        offset: u64,
        len: u32,
        error: ServerError,
    },
    /// The connection ended before the protocol did.
    #[error("NBD {phase}: the server closed the connection {context}")]
    Closed { phase: Phase, context: String },
    /// A request this client will not send: beyond the export, unaligned, too large, or on a
    /// connection that can no longer be used.
    #[error("NBD request not sent: {0}")]
    Request(String),
    #[error("NBD {phase}: {source}")]
    Io {
        phase: Phase,
        #[source]
        source: std::io::Error,
    },
    #[error("NBD TLS: {0}")]
    Tls(String),
}

fn shown_message(message: &str) -> String {
    if message.is_empty() {
        String::new()
    } else {
        format!(" ({message})")
    }
}

impl NbdError {
    pub(crate) fn protocol(
        phase: Phase,
        field: &'static str,
        offset: u64,
        problem: impl Into<String>,
    ) -> NbdError {
        NbdError::Protocol {
            phase,
            field,
            offset,
            problem: problem.into(),
        }
    }
}
