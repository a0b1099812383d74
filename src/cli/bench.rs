//! `vhdsync bench`: the arguments as [`bench::Options`], each step on stderr as it starts, and
//! the [`bench::Report`] on stdout as a table or JSON. The bench itself is [`bench::run`].

use std::process::ExitCode;

use super::CliError;
use super::args::BenchArgs;
use super::output::print_json;
use crate::bench::{self, BenchError, Options};

impl From<BenchError> for CliError {
    fn from(e: BenchError) -> CliError {
        match e {
            BenchError::BadSize { .. } | BenchError::NoRuns | BenchError::DataLeft { .. } => {
                CliError::Input(e.to_string())
            }
            BenchError::Step { .. } => CliError::Failed(e.to_string()),
        }
    }
}

pub fn bench(args: &BenchArgs) -> Result<ExitCode, CliError> {
    let options = Options {
        size: args.size,
        changed_percent: args.changed,
        runs: args.runs,
        dir: args.dir.clone(),
    };
    let report = bench::run(&options, &|step| eprintln!("bench: {step}"))?;
    if args.json {
        print_json(&report.to_json())?;
    } else {
        print!("{}", report.table());
    }
    eprintln!("bench: result written to {}", report.saved_to.display());
    Ok(ExitCode::SUCCESS)
}
