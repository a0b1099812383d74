//! `replicate`: a job's cycle for each VM, its report, and the job's metrics file.

use std::collections::HashMap;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::CliError;
use super::args::ReplicateArgs;
use super::connect::connect_job;
use super::error::{lease_exit_code, lock_exit_code};
use super::metrics_file::{self, TargetView};
use super::output::print_json;
use super::preflight;
use super::progress;
use super::signals::Interrupts;
use super::terminal_text;
use super::transfer::runtime;
use super::units::{human_bytes, human_rate};
use crate::replicate::clock::{Clock, SystemClock};
use crate::replicate::error::ErrorKind;
use crate::replicate::inventory::list_target_vms;
use crate::replicate::job::Job;
use crate::replicate::keys;
use crate::replicate::lease::LeaseError;
use crate::replicate::metrics::RunOutcome;
use crate::replicate::preflight::{CheckOptions, JobCheck, check_job};
use crate::replicate::run::HealthOutcome;
use crate::replicate::runner::{RunOptions, VmOutcome, run_job};
use crate::replicate::selection::{Selection, select};
use crate::xapi::client::XapiClient;
use crate::xapi::records::VmRecord;
use crate::xapi::transfer::{Throttle, TransferOptions};

pub(super) fn load_job(path: &std::path::Path) -> Result<Job, CliError> {
    Ok(Job::load(path)?)
}

pub fn replicate(args: &ReplicateArgs) -> Result<ExitCode, CliError> {
    let job = load_job(&args.job)?;
    // A job with tags may select any VM of the source; that is checked once resolved.
    for vm in args.vms.iter().filter(|_| job.vm_tags.is_empty()) {
        if !job.vms.iter().any(|v| v.eq_ignore_ascii_case(vm)) {
            return Err(CliError::Input(format!(
                "--vm {vm}: not a VM of job {:?}",
                job.name
            )));
        }
    }
    let requested: Vec<String> = args.vms.iter().map(|v| v.to_lowercase()).collect();
    let vms = requested.clone();
    let transfer = TransferOptions {
        // The floor of one second keeps `--stall-timeout 0` from aborting every transfer.
        stall_timeout: args.stall_timeout.max(Duration::from_secs(1)),
        // One limit for the whole run, as Xen Orchestra's maxExportRate is per job.
        throttle: args.max_rate.or(job.max_rate).map(Throttle::new),
        ..TransferOptions::default()
    };
    let started = SystemClock.unix();
    runtime()?.block_on(async {
        // Every selected VM's run failed when the job stops before its cycles: the metrics
        // say so.
        let all_failed = || {
            let selected = if vms.is_empty() { &job.vms } else { &vms };
            let ran: Vec<RunOutcome<'_>> = selected
                .iter()
                .map(|vm| RunOutcome {
                    vm,
                    vm_name: None,
                    committed: None,
                })
                .collect();
            write_metrics(&job, &ran, TargetView::Unknown);
        };
        let (source, target) = match connect_job(&job).await {
            Ok(hosts) => hosts,
            Err(e) => {
                if !args.dry_run {
                    all_failed();
                }
                return Err(e);
            }
        };
        // A job's tags select among the source's VMs as they are now.
        let (selection, vms) = match resolve(&job, &source, &requested).await {
            Ok(resolved) => resolved,
            Err(e) => {
                let _ = source.logout().await;
                let _ = target.logout().await;
                return Err(e);
            }
        };
        // The same checks for a dry run and a real one, before any snapshot.
        let check = CheckOptions {
            vms: &vms,
            estimate: args.dry_run,
            transfer: &transfer,
        };
        let mut checked = check_job(&job, &source, &target, &check).await;
        if args.dry_run {
            // The plan says what the tags left out (a tag matching no VM, say); a real run's
            // report says it instead.
            checked.warnings.extend(selection.warnings.iter().cloned());
        }
        let stop = if args.dry_run {
            Some(preflight::print_plan(&job, &checked, args.json)?)
        } else {
            preflight::refusal(&job, &checked, args.json)?
        };
        if let Some(code) = stop {
            if !args.dry_run {
                all_failed();
            }
            let _ = source.logout().await;
            let _ = target.logout().await;
            return Ok(ExitCode::from(code));
        }
        let (source, target) = (Arc::new(source), Arc::new(target));
        let cancel = cancel_on_signal();
        let options = RunOptions {
            transfer,
            observer: progress::job_display(args.json, vm_names(&checked)),
            cancel: cancel.clone(),
            clock: Arc::new(SystemClock),
        };
        let outcomes = run_job(&job, source.clone(), target.clone(), &vms, options).await;
        cancel.cancel();
        let rpc_calls = source.requests_sent() + target.requests_sent();
        // Read after the run, for the metrics: every VM's restore points as they are now.
        let target_vms = match job.metrics_file {
            Some(_) => Some(list_target_vms(&target).await),
            None => None,
        };
        let _ = source.logout().await;
        let _ = target.logout().await;
        let times = (started, SystemClock.unix());
        let mut code = report(&job, &selection, &outcomes, rpc_calls, args.json, times)?;
        let ran: Vec<RunOutcome<'_>> = outcomes.iter().filter_map(run_outcome).collect();
        let view = match &target_vms {
            Some(Ok(listed)) => TargetView::Listed(listed),
            _ => TargetView::Unreachable,
        };
        if !write_metrics(&job, &ran, view) {
            code = code.max(1);
        }
        Ok(ExitCode::from(code))
    })
}

/// The VMs to run: those `requested` with `--vm` (each one the job selects), else all the
/// job selects. A job with tags reads the source's VMs to resolve them.
async fn resolve(
    job: &Job,
    source: &XapiClient,
    requested: &[String],
) -> Result<(Selection, Vec<String>), CliError> {
    let selection = if job.vm_tags.is_empty() {
        Selection {
            vms: job.vms.clone(),
            ..Selection::default()
        }
    } else {
        let records = source.get_all_records::<VmRecord>().await?;
        select(job, &records).map_err(|e| CliError::Failed(e.to_string()))?
    };
    if let Some(vm) = requested.iter().find(|vm| !selection.vms.contains(vm)) {
        return Err(CliError::Input(format!(
            "--vm {vm}: not a VM of job {:?} (neither listed nor carrying one of its tags)",
            job.name
        )));
    }
    let vms = if requested.is_empty() {
        selection.vms.clone()
    } else {
        requested.to_vec()
    };
    Ok((selection, vms))
}

/// The VMs' names by UUID, as the job's check read them.
fn vm_names(checked: &JobCheck) -> HashMap<String, String> {
    checked
        .vms
        .iter()
        .filter_map(|vm| Some((vm.vm.clone(), vm.name.clone()?)))
        .collect()
}

/// A VM's run as the metrics count it; a VM another run held was not run.
fn run_outcome((vm, outcome): &(String, VmOutcome)) -> Option<RunOutcome<'_>> {
    match outcome {
        VmOutcome::Replicated(r) => Some(RunOutcome {
            vm,
            vm_name: Some(&r.vm_name),
            committed: Some((r.mode, r.bytes_sent, r.seconds)),
        }),
        VmOutcome::Failed(_) | VmOutcome::Panicked(_) => Some(RunOutcome {
            vm,
            vm_name: None,
            committed: None,
        }),
        VmOutcome::Locked(_) => None,
        VmOutcome::Leased(e) if e.is_held_elsewhere() => None,
        VmOutcome::Leased(_) => Some(RunOutcome {
            vm,
            vm_name: None,
            committed: None,
        }),
    }
}

/// The job's metrics file, when it has one; false when writing it failed (said on stderr).
fn write_metrics(job: &Job, ran: &[RunOutcome<'_>], target: TargetView<'_>) -> bool {
    let Some(path) = &job.metrics_file else {
        return true;
    };
    match metrics_file::write(path, job, ran, target, SystemClock.unix()) {
        Ok(()) => true,
        Err(e) => {
            eprintln!("vhdsync: metrics_file: {}", terminal_text::message(&e));
            false
        }
    }
}

/// A token cancelled on SIGINT or SIGTERM: the cycles stop, destroy what they created, and
/// report `cancelled`. A second signal exits at once (130), leaving the clean-up to the
/// next run. Cancel the token when the run is over to end the listener.
fn cancel_on_signal() -> CancellationToken {
    let cancel = CancellationToken::new();
    let token = cancel.clone();
    let mut interrupts = Interrupts::listen();
    tokio::spawn(async move {
        tokio::select! {
            () = interrupts.next() => {}
            () = token.cancelled() => return,
        }
        eprintln!("vhdsync: interrupted: stopping and removing what this run created");
        token.cancel();
        interrupts.next().await;
        eprintln!("vhdsync: interrupted again: exiting; the next run cleans up");
        std::process::exit(130);
    });
    cancel
}

/// Print the run's report; its exit code. `times` are the run's start and end.
fn report(
    job: &Job,
    selection: &Selection,
    outcomes: &[(String, VmOutcome)],
    rpc_calls: u64,
    json: bool,
    (started, finished): (i64, i64),
) -> Result<u8, CliError> {
    if json {
        let vms: Vec<serde_json::Value> = outcomes
            .iter()
            .map(|(vm, outcome)| match outcome {
                VmOutcome::Replicated(r) => json!({"vm": vm, "status": "replicated", "report": r}),
                VmOutcome::Locked(e) => {
                    json!({"vm": vm, "status": "locked", "error": e.to_string()})
                }
                VmOutcome::Leased(e) => lease_json(vm, e),
                VmOutcome::Failed(e) => failure_json(
                    vm,
                    Some(e.phase),
                    e.disk.as_deref(),
                    e.host.as_deref(),
                    &e.kind(),
                    &e.to_string(),
                ),
                VmOutcome::Panicked(message) => failure_json(
                    vm,
                    None,
                    None,
                    None,
                    &ErrorKind::Panicked,
                    &format!("VM {vm}: the cycle panicked: {message}"),
                ),
            })
            .collect();
        let mut doc = json!({"job": job.name, "job_id": job.job_id,
                             "started_at": keys::rfc3339(started),
                             "finished_at": keys::rfc3339(finished),
                             "rpc_calls": rpc_calls, "vms": vms});
        if !job.vm_tags.is_empty() {
            doc["tags"] = json!(selection.tags);
            doc["warnings"] = json!(selection.warnings);
        }
        print_json(&doc)?;
    } else {
        for tag in &selection.tags {
            eprintln!(
                "vhdsync: tag:{} selects {} VM(s): {}",
                terminal_text::name(&tag.tag),
                tag.vms.len(),
                tag.vms.join(", ")
            );
        }
        for warning in &selection.warnings {
            eprintln!("vhdsync: warning: {}", terminal_text::message(warning));
        }
        for (vm, outcome) in outcomes {
            match outcome {
                VmOutcome::Replicated(r) => {
                    println!(
                        "{} ({vm}): {}, {} disk(s), {} sent of {} ({:.1}%), {:.2} s, {} -> replica {}",
                        terminal_text::name(&r.vm_name),
                        r.mode,
                        r.disks.len(),
                        human_bytes(r.bytes_sent),
                        human_bytes(r.virtual_size),
                        100.0 * r.bytes_sent as f64 / r.virtual_size.max(1) as f64,
                        r.seconds,
                        human_rate(r.bytes_sent as f64 / r.seconds.max(1e-9)),
                        r.replica
                    );
                    for d in &r.disks {
                        println!(
                            "  disk {}: {} over {}, {} read, {} sent",
                            d.userdevice,
                            d.mode,
                            d.transport,
                            human_bytes(d.bytes_read),
                            human_bytes(d.bytes_sent)
                        );
                    }
                    for note in r.notes.iter().chain(&r.cleaned_up) {
                        println!("  note: {}", terminal_text::message(note));
                    }
                    match &r.health_check {
                        Some(HealthOutcome::Checked(h)) => println!(
                            "  health check: {} ({})",
                            if h.passed { "passed" } else { "FAILED" },
                            terminal_text::message(&h.detail)
                        ),
                        Some(HealthOutcome::Error { error, .. }) => {
                            println!("  health check: FAILED ({})", terminal_text::message(error))
                        }
                        None => {}
                    }
                    if !r.deleted_replicas.is_empty() {
                        println!(
                            "  retention deleted replicas: {}",
                            r.deleted_replicas.join(", ")
                        );
                    }
                }
                // The display said these on the VM's line (`refused:` or `failed:`): once.
                VmOutcome::Locked(_) | VmOutcome::Failed(_) => {}
                VmOutcome::Leased(e) if !lost_in_the_cycle(e) => {}
                // The cycle's line said `cancelled`; this says why.
                VmOutcome::Leased(e) => {
                    eprintln!("vhdsync: {}", terminal_text::message(&e.to_string()))
                }
                VmOutcome::Panicked(message) => eprintln!(
                    "vhdsync: VM {vm}: the cycle panicked: {}",
                    terminal_text::message(message)
                ),
            }
        }
    }
    // A held lock (3) outranks an unsafe state directory (2), which outranks a failure (1).
    let code = outcomes
        .iter()
        .map(|(_, outcome)| match outcome {
            // A replica that does not boot is a failure to report, though it is committed.
            VmOutcome::Replicated(r) => {
                u8::from(r.health_check.as_ref().is_some_and(|h| !h.passed()))
            }
            VmOutcome::Locked(e) => lock_exit_code(e),
            // Held on another machine is the same as held on this one.
            VmOutcome::Leased(e) => lease_exit_code(e),
            VmOutcome::Failed(_) | VmOutcome::Panicked(_) => 1,
        })
        .max();
    Ok(code.unwrap_or(0))
}

/// A lease lost while the VM's cycle ran (which stopped it), rather than not taken: only
/// the lease's renewal fails so.
fn lost_in_the_cycle(e: &LeaseError) -> bool {
    matches!(e, LeaseError::Lost { .. } | LeaseError::Expired { .. })
}

/// A VM whose lease was not taken or was lost: `locked` with its holder when another run
/// has it, else `failed` with the kind `lease`.
fn lease_json(vm: &str, e: &LeaseError) -> serde_json::Value {
    match e {
        LeaseError::Held {
            holder, expires, ..
        } => json!({"vm": vm, "status": "locked", "error": e.to_string(),
                    "holder": holder, "lease_expires": keys::rfc3339(*expires)}),
        LeaseError::Contended { .. } => {
            json!({"vm": vm, "status": "locked", "error": e.to_string()})
        }
        _ => json!({"vm": vm, "status": "failed", "kind": "lease", "error": e.to_string()}),
    }
}

/// A failed VM in the `--json` report: its phase, disk and host, the error's `kind` (with a
/// XAPI error's `xapi_code` and `xapi_params`, a stream's `offset`), and the message.
fn failure_json(
    vm: &str,
    phase: Option<crate::replicate::error::Phase>,
    disk: Option<&str>,
    host: Option<&str>,
    kind: &ErrorKind,
    error: &str,
) -> serde_json::Value {
    let mut doc = json!({"vm": vm, "status": "failed", "phase": phase, "disk": disk,
                         "host": host, "kind": kind.name(), "error": error});
    match kind {
        ErrorKind::Xapi { code, params } => {
            doc["xapi_code"] = json!(code);
            doc["xapi_params"] = json!(params);
        }
        ErrorKind::StreamInvalid {
            offset: Some(offset),
        } => doc["offset"] = json!(offset),
        _ => {}
    }
    doc
}
