//! A job's run: each selected VM under its lock, `concurrency` VMs at a time, each cycle
//! independent of the others' outcomes.

use std::sync::{Arc, Mutex};

use tokio::sync::Semaphore;

use super::job::Job;
use super::lock::{LockError, VmLock};
use super::run::{CycleError, CycleReport, CycleSettings, replicate_vm};
use crate::xapi::client::XapiClient;
use crate::xapi::transfer::{Progress, TransferOptions};

/// How one VM's cycle ended.
#[derive(Debug)]
pub enum VmOutcome {
    Replicated(Box<CycleReport>),
    /// Another run holds this VM's lock.
    Locked(LockError),
    Failed(CycleError),
}

/// Progress of a disk: (VM uuid, userdevice, progress).
pub type JobProgress = Arc<Mutex<dyn FnMut(&str, &str, &Progress) + Send>>;

impl Job {
    pub fn cycle_settings(&self, transfer: TransferOptions) -> CycleSettings {
        CycleSettings {
            job_name: self.name.clone(),
            job_id: self.job_id.clone(),
            schedule_id: self.schedule_id.clone(),
            target_sr: self.target_sr.clone(),
            retention: self.retention,
            snapshot_retention: self.snapshot_retention,
            full_interval: self.full_interval,
            transfer,
        }
    }
}

/// Replicate `vms` (the job's VMs when empty), in the job's order, and return each VM's
/// outcome in that order.
pub async fn run_job(
    job: &Job,
    source: Arc<XapiClient>,
    target: Arc<XapiClient>,
    vms: &[String],
    transfer: TransferOptions,
    progress: JobProgress,
) -> Vec<(String, VmOutcome)> {
    let selected: Vec<String> = if vms.is_empty() {
        job.vms.clone()
    } else {
        vms.to_vec()
    };
    let permits = Arc::new(Semaphore::new(job.concurrency.max(1) as usize));
    let settings = Arc::new(job.cycle_settings(transfer));
    let mut tasks = tokio::task::JoinSet::new();
    for (order, vm) in selected.iter().cloned().enumerate() {
        let (source, target, settings, permits, progress) = (
            source.clone(),
            target.clone(),
            settings.clone(),
            permits.clone(),
            progress.clone(),
        );
        let state_dir = job.state_dir.clone();
        tasks.spawn(async move {
            let _permit = permits.acquire_owned().await;
            // Held until the cycle ends; a killed process releases it with its descriptors.
            let _lock = match VmLock::acquire(&state_dir, &settings.job_id, &vm) {
                Ok(lock) => lock,
                Err(e) => return (order, vm, VmOutcome::Locked(e)),
            };
            let mut report = |disk: &str, p: &Progress| {
                if let Ok(mut f) = progress.lock() {
                    f(&vm, disk, p);
                }
            };
            let outcome = match replicate_vm(&source, &target, &settings, &vm, &mut report).await {
                Ok(report) => VmOutcome::Replicated(Box::new(report)),
                Err(e) => VmOutcome::Failed(e),
            };
            (order, vm, outcome)
        });
    }
    let mut outcomes = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(done) => outcomes.push(done),
            // A panicking cycle is a bug; the others' outcomes still stand.
            Err(e) => tracing::error!("a replication task stopped: {e}"),
        }
    }
    outcomes.sort_by_key(|(order, _, _)| *order);
    outcomes.into_iter().map(|(_, vm, o)| (vm, o)).collect()
}
