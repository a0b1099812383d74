//! The job's `metrics_file`, written after each `replicate` run (see `replicate::metrics`):
//! replaced atomically (a temp file in the same directory, renamed over it), so node_exporter's
//! textfile collector never reads half a file. Its temp files end in `.tmp`, which the
//! collector ignores (it reads `*.prom`).

use std::io::Read;
use std::path::Path;

use crate::fsio::atomic;
use crate::fsio::regular::open_regular;
use crate::replicate::job::Job;
use crate::replicate::metrics::{Metrics, RunOutcome};
use crate::replicate::monitor::vm_status;
use crate::replicate::plan::{Identity, TargetVm};

/// The previous file is read back up to this size; a larger one is not ours to keep.
const PREVIOUS_LIMIT: u64 = 16 << 20;

/// What the run knows of the target after it.
pub enum TargetView<'a> {
    /// Its VMs, listed after the run.
    Listed(&'a [TargetVm]),
    /// The listing after the run failed.
    Unreachable,
    /// Never reached: the run stopped before (logging in to the hosts failed).
    Unknown,
}

/// Write the job's metrics: the run's outcome for the VMs in `ran`, the last-run samples of
/// the job's other VMs carried over from the previous file, and what the target shows of
/// every VM of the job. `finished` is the run's end (Unix seconds).
pub fn write(
    path: &Path,
    job: &Job,
    ran: &[RunOutcome<'_>],
    target: TargetView<'_>,
    finished: i64,
) -> Result<(), String> {
    let mut metrics = Metrics::new(&job.name);
    for outcome in ran {
        metrics.run(outcome, finished);
    }
    let others: Vec<&str> = job
        .vms
        .iter()
        .map(String::as_str)
        .filter(|vm| !ran.iter().any(|r| r.vm == *vm))
        .collect();
    if !others.is_empty() {
        match read_previous(path) {
            Ok(Some(previous)) => metrics.carry_over(&previous, &others),
            Ok(None) => {}
            Err(e) => eprintln!(
                "vhdsync: warning: metrics_file {}: the previous file is not read back ({e}); the last runs of VMs not run now are left out",
                path.display()
            ),
        }
    }
    match target {
        TargetView::Listed(vms) => {
            metrics.target_up(true);
            for vm in &crate::replicate::selection::vms_on_target(job, vms) {
                let id = Identity {
                    job_id: job.job_id.clone(),
                    schedule_id: job.schedule_id.clone(),
                    vm_uuid: vm.clone(),
                    sr_uuid: job.target_sr.clone(),
                };
                metrics.vm_status(&vm_status(vms, &id, &job.name), None);
            }
        }
        TargetView::Unreachable => metrics.target_up(false),
        TargetView::Unknown => {}
    }
    atomic::write(path, metrics.render().as_bytes()).map_err(|e| e.to_string())
}

/// The previous file's text; `None` when there is none yet.
fn read_previous(path: &Path) -> Result<Option<String>, String> {
    let file = match open_regular(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.to_string()),
    };
    let mut bytes = Vec::new();
    file.take(PREVIOUS_LIMIT + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| e.to_string())?;
    if bytes.len() as u64 > PREVIOUS_LIMIT {
        return Err(format!("larger than {PREVIOUS_LIMIT} bytes"));
    }
    String::from_utf8(bytes)
        .map(Some)
        .map_err(|_| "not UTF-8".to_owned())
}
