//! `failover` and `test-failover`.
//!
//! Failover acts on the DR site without asking the source (it may be gone). On a terminal it
//! asks for confirmation unless `--yes`; without a terminal it refuses (exit 2) unless
//! `--yes`, so a script never fails over by accident nor hangs on a prompt.

use std::io::{BufRead, IsTerminal, Write};
use std::process::ExitCode;

use serde_json::json;

use super::CliError;
use super::args::{FailoverArgs, TestFailoverArgs};
use super::connect::connect_job_target;
use super::output::print_json;
use super::replicate::load_job;
use super::seed::{job_identity, lock};
use super::terminal_text;
use super::transfer::runtime;
use crate::replicate::clock::SystemClock;
use crate::replicate::failover::{cleanup, failover as run_failover, test_failover as run_test};
use crate::replicate::job::Job;
use crate::replicate::op_error::OpError;

fn confirm(args: &FailoverArgs, job: &Job) -> Result<(), CliError> {
    if args.yes {
        return Ok(());
    }
    if !std::io::stdin().is_terminal() {
        return Err(CliError::Input(
            "failover needs --yes when stdin is not a terminal (it makes a replica bootable and stops it taking deltas)".into(),
        ));
    }
    eprint!(
        "Fail over VM {} of job {:?} to {} on {}{}? The replica stops taking deltas. [y/N] ",
        args.vm,
        job.name,
        args.replica
            .as_deref()
            .unwrap_or("its newest valid replica"),
        job.target.url.without_credentials(),
        if args.start { " and start it" } else { "" }
    );
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut answer)
        .map_err(|e| CliError::Failed(format!("reading the answer: {e}")))?;
    if matches!(answer.trim(), "y" | "Y" | "yes" | "YES" | "Yes") {
        Ok(())
    } else {
        Err(CliError::Failed(
            "failover cancelled: nothing was changed".into(),
        ))
    }
}

pub fn failover(args: &FailoverArgs) -> Result<ExitCode, CliError> {
    let job = load_job(&args.job)?;
    let id = job_identity(&job, &args.vm)?;
    confirm(args, &job)?;
    let _lock = lock(&job, &id.vm_uuid)?;
    runtime()?.block_on(async {
        let target = connect_job_target(&job).await?;
        let outcome = run_failover(
            &target,
            &id,
            args.replica.as_deref(),
            args.start,
            &SystemClock,
        )
        .await;
        let _ = target.logout().await;
        let report = outcome?;
        if args.json {
            print_json(&json!(report))?;
        } else {
            println!(
                "failed over to replica {} ({:?}): start unblocked{}",
                report.replica,
                report.name,
                if report.started { ", started" } else { "" }
            );
            println!("{}", report.note);
        }
        Ok(ExitCode::SUCCESS)
    })
}

pub fn test_failover(args: &TestFailoverArgs) -> Result<ExitCode, CliError> {
    let job = load_job(&args.job)?;
    let vm = match &args.vm {
        Some(vm) => Some(job_identity(&job, vm)?),
        None => None,
    };
    runtime()?.block_on(async {
        let target = connect_job_target(&job).await?;
        let outcome = match (&vm, args.cleanup) {
            (_, true) => cleanup(&target, &job.job_id, vm.as_ref().map(|id| id.vm_uuid.as_str()))
                .await
                .map(|removed| json!({"removed": removed})),
            (Some(id), false) => run_test(&target, id, args.start, args.isolated)
                .await
                .map(|report| json!(report)),
            (None, false) => Err(OpError::Invalid("--vm is required".into())),
        };
        let _ = target.logout().await;
        let report = outcome?;
        if args.json {
            print_json(&report)?;
        } else if args.cleanup {
            let removed: Vec<&str> = report["removed"]
                .as_array()
                .map(|a| a.iter().filter_map(|v| v.as_str()).collect())
                .unwrap_or_default();
            println!("removed {} test clone(s): {}", removed.len(), removed.join(", "));
        } else {
            println!(
                "test clone {} ({}) of replica {}{}{}; replication is untouched. Remove it with: vhdsync test-failover --cleanup --job {}",
                report["clone"].as_str().unwrap_or_default(),
                terminal_text::name(report["name"].as_str().unwrap_or_default()),
                report["replica"].as_str().unwrap_or_default(),
                if args.isolated { ", its interfaces on an isolated network" } else { "" },
                if args.start { ", started" } else { "" },
                args.job.display()
            );
        }
        Ok(ExitCode::SUCCESS)
    })
}
