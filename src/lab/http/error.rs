//! The HTTP server's one error type: what can stop it from starting. Failures of single
//! requests are answered on the wire (and recorded in their tasks), never returned.

use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("{action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("TLS certificate {}: {message}", path.display())]
    Certificate { path: PathBuf, message: String },
}

impl HttpError {
    pub(super) fn io(
        action: &'static str,
        path: &std::path::Path,
    ) -> impl FnOnce(std::io::Error) -> HttpError {
        let path = path.to_path_buf();
        move |source| HttpError::Io {
            action,
            path,
            source,
        }
    }
}
