//! `replicate --dry-run`'s plan, and the check that stops a real run: printed as text or
//! JSON, with the exit code the errors found call for.

use serde_json::json;

use super::CliError;
use super::output::print_json;
use super::terminal_text;
use super::units::human_bytes;
use crate::replicate::job::Job;
use crate::replicate::preflight::{JobCheck, PreflightError};

/// The exit code for what the check found: 2 when the configuration is at fault (it
/// outranks a host failing), 1 when only a host failed, 0 when nothing stops the job.
pub fn exit_code(check: &JobCheck) -> u8 {
    check
        .errors()
        .map(|e| if e.is_config() { 2 } else { 1 })
        .max()
        .unwrap_or(0)
}

/// Print the dry run's plan (the warnings and errors on stderr too); its exit code.
pub fn print_plan(job: &Job, check: &JobCheck, json: bool) -> Result<u8, CliError> {
    if json {
        print_check(job, check, true)?;
        warn(check);
        say_errors(check.errors());
        return Ok(exit_code(check));
    }
    println!(
        "job {}: source {}, target {}",
        terminal_text::name(&job.name),
        check.source,
        check.target
    );
    let sr = &check.sr;
    let name = sr
        .name
        .as_deref()
        .map(terminal_text::name)
        .unwrap_or_default();
    match (&sr.error, sr.free) {
        (Some(e), _) => println!("{}", terminal_text::message(&e.to_string())),
        (None, Some(free)) => println!(
            "target SR {} ({name}): {} free; the disks sent whole need {}, a full of all {}",
            sr.uuid,
            human_bytes(free),
            human_bytes(sr.needed_for_fulls),
            human_bytes(sr.needed_for_a_full)
        ),
        (None, None) => println!("target SR {} ({name}): size unknown", sr.uuid),
    }
    for vm in &check.vms {
        let name = vm
            .name
            .as_deref()
            .map(terminal_text::name)
            .unwrap_or_default();
        match (&vm.error, vm.mode) {
            (Some(e), _) => println!("{}", terminal_text::message(&e.to_string())),
            (None, None) => println!("VM {} ({name}): found; not planned", vm.vm),
            (None, Some(mode)) => {
                let base = vm
                    .base
                    .as_deref()
                    .map(|b| format!(", on base snapshot {b}"))
                    .unwrap_or_default();
                println!("VM {} ({name}): {mode}{base}", vm.vm);
            }
        }
        for disk in &vm.disks {
            let bytes = disk
                .estimated_bytes
                .map(human_bytes)
                .unwrap_or_else(|| "?".into());
            println!(
                "  disk {}: {}, {} virtual, about {bytes} to send ({})",
                disk.userdevice,
                disk.mode,
                human_bytes(disk.virtual_size),
                terminal_text::message(&disk.estimate)
            );
        }
        for note in &vm.notes {
            println!("  note: {}", terminal_text::message(note));
        }
    }
    // The errors are in the plan, where they apply; the warnings go with the others.
    warn(check);
    println!("dry run: nothing was changed");
    Ok(exit_code(check))
}

/// The check as one JSON document: the job, whether this was a dry run, the SR, each VM.
fn print_check(job: &Job, check: &JobCheck, dry_run: bool) -> Result<(), CliError> {
    let mut doc = serde_json::to_value(check)
        .map_err(|e| CliError::Failed(format!("the plan as JSON: {e}")))?;
    doc["job"] = json!(job.name);
    doc["job_id"] = json!(job.job_id);
    doc["dry_run"] = json!(dry_run);
    print_json(&doc)
}

/// A real run's check: its warnings, and the errors that stop it (each on stderr, and with
/// `json` the whole check on stdout), with the exit code they call for; `None` when the run
/// may go ahead.
pub fn refusal(job: &Job, check: &JobCheck, json: bool) -> Result<Option<u8>, CliError> {
    warn(check);
    let code = exit_code(check);
    if code == 0 {
        return Ok(None);
    }
    if json {
        print_check(job, check, false)?;
    }
    say_errors(check.errors());
    eprintln!("vhdsync: nothing was changed: the job was checked before its first snapshot");
    Ok(Some(code))
}

fn warn(check: &JobCheck) {
    for warning in &check.warnings {
        eprintln!("vhdsync: warning: {}", terminal_text::message(warning));
    }
}

fn say_errors<'a>(errors: impl Iterator<Item = &'a PreflightError>) {
    for e in errors {
        eprintln!("vhdsync: {}", terminal_text::message(&e.to_string()));
    }
}
