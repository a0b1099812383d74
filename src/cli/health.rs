//! `health-check`: each VM's newest restore point booted in a clone cut off from every
//! network (see `replicate::health`). Exit 0 when every check passed, 1 when one failed.

use std::process::ExitCode;

use serde_json::json;

use super::CliError;
use super::args::HealthCheckArgs;
use super::connect::connect_job_target;
use super::output::print_json;
use super::replicate::load_job;
use super::seed::job_identity;
use super::terminal_text;
use super::transfer::runtime;
use crate::replicate::clock::SystemClock;
use crate::replicate::health::health_check as run_check;
use crate::replicate::inventory::list_target_vms;
use crate::replicate::selection::vms_on_target;

pub fn health_check(args: &HealthCheckArgs) -> Result<ExitCode, CliError> {
    let job = load_job(&args.job)?;
    let mut ids = Vec::new();
    for vm in &args.vm {
        ids.push(job_identity(&job, vm)?);
    }
    let timeout = args.timeout.unwrap_or(job.health_check_timeout);
    runtime()?.block_on(async {
        let target = connect_job_target(&job).await?;
        if args.vm.is_empty() {
            // A job with tags: the VMs it has restore points of.
            let listed = if job.vm_tags.is_empty() {
                Vec::new()
            } else {
                list_target_vms(&target).await?
            };
            for vm in vms_on_target(&job, &listed) {
                ids.push(job_identity(&job, &vm)?);
            }
        }
        let mut reports = Vec::new();
        let mut failed = false;
        for id in &ids {
            let outcome = run_check(&target, id, timeout, &SystemClock).await;
            match outcome {
                Ok(report) => {
                    failed |= !report.passed;
                    if !args.json {
                        println!(
                            "VM {}: {} {}: {} ({})",
                            report.vm,
                            report.kind.label(),
                            report.restore_point,
                            if report.passed { "passed" } else { "FAILED" },
                            terminal_text::message(&report.detail)
                        );
                    }
                    reports.push(json!(report));
                }
                Err(e) => {
                    failed = true;
                    if !args.json {
                        eprintln!(
                            "vhdsync: VM {}: {}",
                            id.vm_uuid,
                            terminal_text::message(&e.to_string())
                        );
                    }
                    reports
                        .push(json!({"vm": id.vm_uuid, "passed": false, "error": e.to_string()}));
                }
            }
        }
        let _ = target.logout().await;
        if args.json {
            print_json(&json!({"job": job.name, "checks": reports}))?;
        }
        Ok(ExitCode::from(u8::from(failed)))
    })
}
