//! `status`: each VM's restore points and failovers on the target, judged against the age
//! thresholds (see `replicate::monitor`), as text, JSON, a Nagios plugin line or Prometheus
//! metrics. It reads the target only, so it works with the source site gone.
//!
//! Exit codes: text and JSON exit 1 when `--max-age` is given and a VM is CRITICAL, else 0
//! (an unreachable target is an error, as for every command); Nagios uses the plugin codes,
//! every failure to look being UNKNOWN (3); Prometheus prints a document and exits 0 even
//! when the target cannot be reached (`vhdsync_target_up 0` says so), 2 for a bad job file.

use std::process::ExitCode;

use serde_json::json;

use super::CliError;
use super::args::{StatusArgs, StatusFormat};
use super::connect::connect_job_target;
use super::nagios::{Assessed, plugin_line, unknown_line};
use super::output::print_json;
use super::replicate::load_job;
use super::seed::job_identity;
use super::terminal_text;
use super::transfer::runtime;
use super::units::{human_age, human_duration};
use crate::replicate::clock::{Clock, SystemClock};
use crate::replicate::health::last_result;
use crate::replicate::inventory::list_target_vms;
use crate::replicate::job::Job;
use crate::replicate::keys;
use crate::replicate::metrics::Metrics;
use crate::replicate::monitor::{Finding, State, Thresholds, VmStatus, state_of, vm_status};
use crate::replicate::plan::TargetVm;
use crate::replicate::selection::vms_on_target;

pub fn status(args: &StatusArgs) -> Result<ExitCode, CliError> {
    let format = if args.json {
        StatusFormat::Json
    } else {
        args.format
    };
    let checked = thresholds(args).and_then(|t| Ok((load_job(&args.job)?, t)));
    if format == StatusFormat::Nagios {
        // A plugin answers every failure with UNKNOWN, on stdout.
        let outcome = checked.and_then(|(job, t)| Ok((target_vms(&job)?, job, t)));
        let (state, line) = match outcome {
            Ok((vms, job, t)) => nagios(&job, &vms, t),
            Err(e) => (State::Unknown, unknown_line(&e.to_string())),
        };
        println!("{line}");
        return Ok(ExitCode::from(state.exit_code()));
    }
    let (job, thresholds) = checked?;
    if format == StatusFormat::Prometheus {
        return prometheus(&job);
    }
    let vms = target_vms(&job)?;
    let now = SystemClock.unix();
    let assessed = assess(&job, &vms, now, thresholds);
    let critical: Vec<&str> = assessed
        .iter()
        .filter(|(_, findings)| state_of(findings) == State::Critical)
        .map(|(status, _)| status.vm.as_str())
        .collect();
    let stale = if args.max_age.is_some() {
        critical
    } else {
        Vec::new()
    };
    if format == StatusFormat::Json {
        print_json(&document(&job, &assessed, now, &stale))?;
    } else {
        for (status, findings) in &assessed {
            print_text(status, findings, now);
        }
        if !stale.is_empty() {
            eprintln!(
                "vhdsync: no valid restore point younger than {} for: {}",
                args.max_age.map(human_duration).unwrap_or_default(),
                stale.join(", ")
            );
        }
    }
    Ok(ExitCode::from(u8::from(!stale.is_empty())))
}

fn thresholds(args: &StatusArgs) -> Result<Thresholds, CliError> {
    let seconds = |d: Option<std::time::Duration>| d.map(|d| d.as_secs());
    let thresholds = Thresholds {
        warn_age: seconds(args.warn_age),
        max_age: seconds(args.max_age),
    };
    if let (Some(warn), Some(max)) = (thresholds.warn_age, thresholds.max_age)
        && warn > max
    {
        return Err(CliError::Input(
            "--warn-age must not be longer than --max-age".into(),
        ));
    }
    Ok(thresholds)
}

/// Every VM on the job's target.
fn target_vms(job: &Job) -> Result<Vec<TargetVm>, CliError> {
    runtime()?.block_on(async {
        let target = connect_job_target(job).await?;
        let vms = list_target_vms(&target).await;
        let _ = target.logout().await;
        Ok(vms?)
    })
}

fn assess<'a>(job: &Job, vms: &'a [TargetVm], now: i64, t: Thresholds) -> Vec<Assessed<'a>> {
    vms_on_target(job, vms)
        .iter()
        .filter_map(|vm| job_identity(job, vm).ok())
        .map(|id| {
            let status = vm_status(vms, &id, &job.name);
            let findings = status.assess(now, t);
            (status, findings)
        })
        .collect()
}

fn nagios(job: &Job, vms: &[TargetVm], t: Thresholds) -> (State, String) {
    let now = SystemClock.unix();
    plugin_line(&job.name, &assess(job, vms, now, t), now, t)
}

fn prometheus(job: &Job) -> Result<ExitCode, CliError> {
    let mut metrics = Metrics::new(&job.name);
    match target_vms(job) {
        Ok(vms) => {
            metrics.target_up(true);
            let now = SystemClock.unix();
            for (status, _) in assess(job, &vms, now, Thresholds::default()) {
                metrics.vm_status(&status, Some(now));
            }
        }
        Err(e) => {
            eprintln!("vhdsync: {}", terminal_text::message(&e.to_string()));
            metrics.target_up(false);
        }
    }
    print!("{}", metrics.render());
    Ok(ExitCode::SUCCESS)
}

fn print_text(status: &VmStatus<'_>, findings: &[Finding], now: i64) {
    let state = state_of(findings);
    let vm = if status.name.is_empty() {
        status.vm.clone()
    } else {
        format!("{} ({})", terminal_text::name(&status.name), status.vm)
    };
    println!(
        "VM {vm}: {} restore point(s){}: {}",
        status.valid,
        status.age(now).map_or_else(String::new, |age| format!(
            ", newest {} old",
            human_age(age)
        )),
        state.label()
    );
    for finding in findings {
        println!("  {}: {}", finding.state().label(), finding_text(finding));
    }
    for p in &status.points {
        println!(
            "  {}  {:<15}  {}  {}  {}",
            if p.valid { "valid  " } else { "INVALID" },
            p.kind.label(),
            terminal_text::name(&p.vm.name_label),
            p.datetime.map_or_else(
                || if p.superseded {
                    "superseded"
                } else {
                    "interrupted run"
                }
                .to_owned(),
                |at| format!("{} (age {})", keys::rfc3339(at), human_age(now - at))
            ),
            p.vm.uuid
        );
        if let Some(result) = last_result(p.vm) {
            println!(
                "      health check: {}",
                terminal_text::message(result.text)
            );
        }
    }
    for done in &status.failed_over {
        println!(
            "  FAILED OVER to VM {} ({}){}, {}{}",
            done.vm.uuid,
            terminal_text::name(&done.vm.name_label),
            done.at.map_or_else(String::new, |at| format!(
                " at {} ({} ago)",
                keys::rfc3339(at),
                human_age(now - at)
            )),
            done.vm.power_state,
            done.restore_point
                .map_or_else(String::new, |p| format!(", from restore point {p}"))
        );
    }
}

fn finding_text(finding: &Finding) -> String {
    match finding {
        Finding::NoValidRestorePoint => "no valid restore point".into(),
        Finding::TooOld {
            limit_seconds,
            critical,
            ..
        } => format!(
            "the newest restore point is older than the {} age ({})",
            if *critical { "critical" } else { "warning" },
            human_duration(std::time::Duration::from_secs(*limit_seconds))
        ),
        Finding::NoTime => "no valid restore point has a time".into(),
        Finding::Interrupted { count } => format!(
            "{count} restore point(s) left by an interrupted run (the next run removes them)"
        ),
        Finding::HealthCheckFailed { at } => format!(
            "the last health check failed{}",
            at.map_or_else(String::new, |at| format!(" ({})", keys::rfc3339(at)))
        ),
    }
}

/// `status --json`: dates in RFC 3339, with Unix times beside them.
fn document(job: &Job, assessed: &[Assessed<'_>], now: i64, stale: &[&str]) -> serde_json::Value {
    let vms: Vec<serde_json::Value> = assessed
        .iter()
        .map(|(status, findings)| {
            let points: Vec<serde_json::Value> = status
                .points
                .iter()
                .map(|p| {
                    let health = last_result(p.vm).map(|r| {
                        json!({"passed": r.passed, "at": r.at.map(keys::rfc3339), "result": r.text})
                    });
                    json!({"uuid": p.vm.uuid, "name": p.vm.name_label, "kind": p.kind,
                           "datetime": p.datetime.map(keys::rfc3339), "timestamp": p.datetime,
                           "age_seconds": p.datetime.map(|at| now - at), "valid": p.valid,
                           "superseded": p.superseded, "health_check": health})
                })
                .collect();
            let failed_over: Vec<serde_json::Value> = status
                .failed_over
                .iter()
                .map(|f| {
                    json!({"vm": f.vm.uuid, "name": f.vm.name_label, "at": f.at.map(keys::rfc3339),
                           "timestamp": f.at, "power_state": f.vm.power_state,
                           "restore_point": f.restore_point})
                })
                .collect();
            json!({"vm": status.vm, "name": status.name, "state": state_of(findings),
                   "findings": findings, "valid": status.valid, "interrupted": status.interrupted,
                   "newest": status.newest.map(keys::rfc3339), "newest_timestamp": status.newest,
                   "newest_valid_age_seconds": status.age(now), "replicas": points,
                   "failed_over": failed_over})
        })
        .collect();
    let state = assessed
        .iter()
        .map(|(_, findings)| state_of(findings))
        .max()
        .unwrap_or(State::Ok);
    json!({"job": job.name, "job_id": job.job_id, "checked_at": keys::rfc3339(now),
           "state": state, "vms": vms, "stale": stale})
}
