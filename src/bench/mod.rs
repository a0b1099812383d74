//! `vhdsync bench`'s building blocks: the pure arithmetic of the results ([`measure`]), the
//! table and JSON they are shown as ([`report`]), measured child processes ([`process`]) and
//! the synthetic 2 TiB chain ([`chain`]). The command itself, which starts lab hosts and runs
//! vhdsync and the reference tools against them, is `cli::bench`.

pub mod chain;
pub mod measure;
pub mod process;
pub mod report;

use std::path::Path;

/// A bench step that failed: which step, and why.
#[derive(Debug, thiserror::Error)]
#[error("bench: {step}: {message}")]
pub struct BenchError {
    pub step: String,
    pub message: String,
}

impl BenchError {
    pub fn new(step: &str, message: String) -> BenchError {
        BenchError {
            step: step.to_owned(),
            message,
        }
    }

    pub fn io(step: &str, path: &Path, e: std::io::Error) -> BenchError {
        BenchError::new(step, format!("{}: {e}", path.display()))
    }
}
