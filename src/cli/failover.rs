//! `failover` and `test-failover`.
//!
//! Failover acts on the DR site. It takes the VM's lease on the source, as `replicate` does,
//! when the source answers, and goes on without it (with a warning) when the source cannot
//! be asked: the source may be gone (see `vm_lease`). On a terminal it
//! asks for confirmation unless `--yes`, naming the restore point and its age; without a
//! terminal it refuses (exit 2) unless `--yes`, so a script never fails over by accident nor
//! hangs on a prompt. A VM already failed over is refused (exit 2) unless `--force`.

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
use super::units::human_age;
use super::vm_lease::{self, LeaseScope};
use crate::replicate::clock::{Clock, SystemClock};
use crate::replicate::failover::{
    FailoverChoice, FailoverReport, choose, cleanup, failover as run_failover,
    test_failover as run_test,
};
use crate::replicate::inventory::list_target_vms;
use crate::replicate::job::Job;
use crate::replicate::keys;
use crate::replicate::layout::PointKind;
use crate::replicate::op_error::OpError;
use crate::replicate::plan::Identity;
use crate::xapi::client::XapiClient;

/// The confirmation question: the VM, the restore point (UUID, kind, name) and its age,
/// what will happen, and where. Host text is escaped for the terminal.
fn prompt(job: &Job, vm: &str, choice: &FailoverChoice, start: bool, now: i64) -> String {
    let when = choice.datetime.map_or_else(
        || "of unknown time".to_owned(),
        |at| format!("of {} ({} old)", keys::rfc3339(at), human_age(now - at)),
    );
    let what = match choice.kind {
        PointKind::TargetSnapshot => {
            "It is cloned into a new VM; the replication chain stays for later runs."
        }
        PointKind::LiveReplica | PointKind::ReplicaVm => {
            "It becomes the VM and stops taking deltas."
        }
    };
    format!(
        "Fail over VM {} ({vm}) of job {:?} on {}\n  to the {} {} \"{}\",\n  restore point {when}{}?\n{what} [y/N] ",
        terminal_text::name(keys::source_vm_name(&choice.name, &job.name)),
        job.name,
        job.target.url.without_credentials(),
        choice.kind.label(),
        choice.restore_point,
        terminal_text::name(&choice.name),
        if start { ", and start it" } else { "" },
    )
}

/// Ask on the terminal; anything but yes cancels.
fn confirm(question: &str) -> Result<(), CliError> {
    eprint!("{question}");
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
    if !args.yes && !std::io::stdin().is_terminal() {
        return Err(CliError::Input(
            "failover needs --yes when stdin is not a terminal (it makes a replica bootable and stops it taking deltas)".into(),
        ));
    }
    let runtime = runtime()?;
    let target = runtime.block_on(connect_job_target(&job))?;
    let outcome = confirmed_failover(&runtime, &target, &job, &id, args);
    let _ = runtime.block_on(target.logout());
    let report = outcome?;
    if args.json {
        print_json(&json!(report))?;
    } else {
        println!(
            "failed over to {} {} ({:?}) at {}: start unblocked{}",
            report.kind.label(),
            report.replica,
            report.name,
            report.failed_over_at,
            if report.started { ", started" } else { "" }
        );
        println!("{}", report.note);
    }
    Ok(ExitCode::SUCCESS)
}

/// Without `--yes`, choose the restore point and ask about it (before taking the VM's lock
/// and lease, so a pending question holds up no run); then fail over to the restore point
/// confirmed.
fn confirmed_failover(
    runtime: &tokio::runtime::Runtime,
    target: &XapiClient,
    job: &Job,
    id: &Identity,
    args: &FailoverArgs,
) -> Result<FailoverReport, CliError> {
    let mut replica = args.replica.clone();
    if !args.yes {
        let vms = runtime
            .block_on(list_target_vms(target))
            .map_err(CliError::step("listing the target's VMs"))?;
        let choice =
            choose(&vms, id, args.replica.as_deref(), args.force).map_err(CliError::Input)?;
        confirm(&prompt(
            job,
            &id.vm_uuid,
            &choice,
            args.start,
            SystemClock.unix(),
        ))?;
        replica = Some(choice.restore_point);
    }
    let _lock = lock(job, &id.vm_uuid)?;
    runtime.block_on(async {
        let work = async {
            Ok(run_failover(
                target,
                id,
                replica.as_deref(),
                args.start,
                args.force,
                &SystemClock,
            )
            .await?)
        };
        let scope = LeaseScope::of_job(job, &id.vm_uuid);
        match vm_lease::for_failover(job, &scope).await? {
            Some((source, lease)) => {
                let outcome = vm_lease::hold_while(&source, lease, work).await;
                let _ = source.logout().await;
                outcome
            }
            None => work.await,
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn job() -> Job {
        Job::parse(
            "name = \"cr\"\nsource = \"https://root:pw@src\"\ntarget = \"https://root:secret@dr.example\"\n\
             target_sr = \"6f3b8a2e-1c4d-4e5f-9a0b-1c2d3e4f5a6b\"\n\
             vms = [\"0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d\"]\nretention = 2\nstate_dir = \"/tmp/s\"\n",
            Path::new("/etc/vhdsync/job.toml"),
        )
        .unwrap()
    }

    #[test]
    fn the_prompt_names_the_restore_point_its_kind_and_age() {
        let t = 1_705_314_030;
        let choice = FailoverChoice {
            restore_point: "5b1e0000-0000-4000-8000-000000000001".into(),
            kind: PointKind::LiveReplica,
            name: keys::snapshot_name("cr", "web01"),
            datetime: Some(t),
        };
        let text = prompt(&job(), "0a1b", &choice, true, t + 3725);
        assert_eq!(
            text,
            "Fail over VM web01 (0a1b) of job \"cr\" on https://dr.example:443\n  \
             to the live replica 5b1e0000-0000-4000-8000-000000000001 \"[vhdsync cr] web01\",\n  \
             restore point of 2024-01-15T10:20:30Z (1h 2m old), and start it?\n\
             It becomes the VM and stops taking deltas. [y/N] "
        );
        assert!(!text.contains("secret"));
        let snapshot = FailoverChoice {
            kind: PointKind::TargetSnapshot,
            name: "evil\x1b[2J - cr / vhdsync 20240115T102030Z".into(),
            datetime: None,
            ..choice
        };
        let text = prompt(&job(), "0a1b", &snapshot, false, t);
        assert!(text.contains("VM evil\\u{1b}[2J (0a1b)"), "{text}");
        assert!(text.contains("to the target snapshot"), "{text}");
        assert!(text.contains("restore point of unknown time?"), "{text}");
        assert!(text.contains("cloned into a new VM"), "{text}");
        assert!(!text.contains('\x1b'), "{text}");
    }
}
