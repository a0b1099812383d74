//! Where command output goes: stdout as a plain file descriptor (no line buffering on bulk
//! data), and JSON documents.

use std::fs::File;
use std::io::Write;
use std::os::fd::AsFd;

use super::CliError;

/// Stdout as a `File`, so bulk writes go straight to write(2) without a line buffer copy.
pub fn stdout_file() -> Result<File, CliError> {
    let fd = std::io::stdout()
        .as_fd()
        .try_clone_to_owned()
        .map_err(|e| CliError::Failed(format!("stdout: {e}")))?;
    Ok(File::from(fd))
}

/// Print one JSON document on stdout.
pub fn print_json(value: &serde_json::Value) -> Result<(), CliError> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, value)
        .map_err(|e| CliError::Failed(format!("stdout: {e}")))?;
    writeln!(out).map_err(|e| CliError::Failed(format!("stdout: {e}")))
}
