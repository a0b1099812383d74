//! `vhdsync bench`: [`run()`] measures vhdsync against the tools it must keep up with and
//! returns a [`Report`], which the CLI shows. Its parts: the testbed of two lab hosts and the
//! measured steps (`testbed`), measured child processes (`process`), the pure arithmetic of
//! the results (`measure`), the table and JSON they are shown as (`report`) and the
//! synthetic 2 TiB chain ([`chain`]).

pub mod chain;
pub(crate) mod measure;
pub(crate) mod process;
pub(crate) mod report;
mod run;
mod testbed;

use std::path::{Path, PathBuf};

pub use run::{Options, Report, run};
pub use testbed::Progress;

/// Why a bench could not start, or which step of it failed and why.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("--size {size}: use a whole number of 2 MiB blocks, at least 2M")]
    BadSize { size: u64 },
    #[error("--runs: at least 1")]
    NoRuns,
    #[error("{}: left by an earlier bench; remove it first", data.display())]
    DataLeft { data: PathBuf },
    #[error("bench: {step}: {message}")]
    Step { step: String, message: String },
}

impl BenchError {
    pub fn new(step: &str, message: String) -> BenchError {
        BenchError::Step {
            step: step.to_owned(),
            message,
        }
    }

    pub fn io(step: &str, path: &Path, e: std::io::Error) -> BenchError {
        BenchError::new(step, format!("{}: {e}", path.display()))
    }
}
