//! The command line: argument parsing, output, and exit codes. The only module that prints.

mod args;
mod bench;
mod connect;
mod demo;
mod error;
mod failover;
mod health;
mod inspect;
mod lab;
mod logging;
mod metrics_file;
mod nagios;
mod output;
mod packaging;
mod preflight;
mod progress;
mod replicate;
mod seed;
mod signals;
mod status;
mod step_text;
mod streams;
mod terminal_text;
mod transfer;
mod units;
mod vm_lease;

use std::process::ExitCode;

use clap::Parser;

pub(crate) use error::CliError;

/// Parse the command line, run the command, and map the outcome to an exit code:
/// 0 success, 1 the work failed (or `check` found problems), 2 usage or input error,
/// 3 another run holds the lock or the lease, 130 a command holding a VM's lease stopped by
/// SIGINT or SIGTERM (`replicate` reports its cancelled VMs instead).
pub fn run() -> ExitCode {
    let cli = match args::Cli::try_parse_from(seed::command_line(std::env::args_os())) {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    logging::init(cli.verbose);
    match dispatch(cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("vhdsync: {}", terminal_text::message(&e.to_string()));
            ExitCode::from(e.exit_code())
        }
    }
}

fn dispatch(command: args::Command) -> Result<ExitCode, CliError> {
    use args::Command;
    match command {
        Command::Info(a) => inspect::info(&a),
        Command::Check(a) => inspect::check(&a),
        Command::Cat(a) => inspect::cat(&a),
        Command::Diff(a) => streams::diff(&a),
        Command::Export(a) => streams::export(&a),
        Command::Apply(a) => streams::apply(&a),
        Command::CopyVdi(a) => transfer::copy_vdi(&a),
        Command::Trust(a) => transfer::trust(&a),
        Command::Replicate(a) => replicate::replicate(&a),
        Command::Status(a) => status::status(&a),
        Command::HealthCheck(a) => health::health_check(&a),
        Command::Demo(a) => demo::demo(&a),
        Command::Bench(a) => bench::bench(&a),
        Command::Lab(a) => lab::run(a.command),
        Command::Seed(a) => seed::seed(&a),
        Command::SeedExport(a) => seed::seed_export(&a),
        Command::SeedImport(a) => seed::seed_import(&a),
        Command::Failover(a) => failover::failover(&a),
        Command::TestFailover(a) => failover::test_failover(&a),
        Command::Completions(a) => packaging::completions(&a),
        Command::Man(a) => packaging::man(&a),
    }
}
