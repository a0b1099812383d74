//! One replication cycle of one VM of a job file, using only the library's facade: the
//! first cycle sends a full copy, the next ones the blocks changed since, into the
//! protected live replica on the target, which is snapshotted after each cycle.
//!
//! ```sh
//! cargo run --example replicate_vm -- JOB_FILE VM_UUID
//! ```
//!
//! The job file is the one `vhdsync replicate --job` reads (see the README); its hosts'
//! passwords come from its password files, else `VHDSYNC_SOURCE_PASSWORD` and
//! `VHDSYNC_TARGET_PASSWORD`, else its URLs. Ctrl-C cancels the cycle, which then destroys
//! what it created. Unlike `vhdsync replicate`, this takes no lock: run one at a time per VM.

use std::error::Error;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use vhdsync::{
    CancellationToken, CycleReport, EventKind, Job, SystemClock, TransferOptions,
    credential_warnings, replicate_vm,
};

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let cancel = CancellationToken::new();
    let on_ctrl_c = cancel.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            on_ctrl_c.cancel();
        }
    });
    match replicate(&args, &cancel).await {
        Ok(report) => {
            println!(
                "{}: {} copy, {} bytes sent in {:.2} s into replica {} ({})",
                report.vm_name,
                report.mode,
                report.bytes_sent,
                report.seconds,
                report.replica_name,
                report.replica
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("replicate_vm: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The program without its printing: `args` as the command line gives them.
pub async fn replicate(
    args: &[String],
    cancel: &CancellationToken,
) -> Result<CycleReport, Box<dyn Error>> {
    let [job_file, vm] = args else {
        return Err("usage: replicate_vm JOB_FILE VM_UUID".into());
    };
    let job = Job::load(Path::new(job_file))?;
    let (source, target) = (job.source_login()?, job.target_login()?);
    for warning in credential_warnings([&source, &target]) {
        eprintln!("replicate_vm: warning: {warning}");
    }
    let source = source.connect().await?;
    let target = target.connect().await?;
    let settings = job.cycle_settings(TransferOptions::default(), Arc::new(SystemClock));
    let outcome = replicate_vm(
        &source,
        &target,
        &settings,
        &vm.to_lowercase(),
        // Each step as it starts, and each disk's transfer; the report has the totals.
        &mut |event| match event.kind {
            EventKind::Step(phase) => eprintln!("replicate_vm: {}: {phase}", event.vm_name),
            EventKind::DiskStarted { disk, .. } => {
                eprintln!("replicate_vm: disk {} ({})", disk.userdevice, disk.name)
            }
            _ => {}
        },
        cancel,
    )
    .await;
    let _ = source.logout().await;
    let _ = target.logout().await;
    Ok(outcome?)
}
