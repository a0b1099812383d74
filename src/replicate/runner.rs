//! A job's run: each selected VM under its lock and its lease on the source, `concurrency` VMs
//! at a time, each cycle independent of the others' outcomes, a panicking one included.
//!
//! The local lock comes first: it is cheap and answers at once for runs on one machine. The
//! lease (`lease`) then guards against runs on other machines, is renewed while the cycle
//! runs, stops the cycle when it is lost, and is released when the cycle ends however it
//! ended (a killed run's lease expires).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::Semaphore;
use tokio::task::{JoinError, JoinSet};
use tokio_util::sync::CancellationToken;

use super::clock::Clock;
use super::job::Job;
use super::lease::{Holder, Lease, LeaseError};
use super::lock::{LockError, VmLock};
use super::run::{
    CycleCause, CycleError, CycleEvent, CycleReport, CycleSettings, EventKind, Refusal,
    replicate_vm,
};
use crate::xapi::client::XapiClient;
use crate::xapi::transfer::TransferOptions;

/// How one VM's cycle ended.
#[derive(Debug)]
pub enum VmOutcome {
    Replicated(Box<CycleReport>),
    /// Another run holds this VM's lock.
    Locked(LockError),
    /// The VM's lease on the source: held by another run, lost during the cycle (which
    /// stopped), or not taken because of an error.
    Leased(LeaseError),
    Failed(CycleError),
    /// The VM's task panicked (a bug): its message, when it was text.
    Panicked(String),
}

/// Where every VM's cycle sends its events ([`CycleEvent`] names the VM), one at a time.
pub type JobObserver = Arc<Mutex<dyn FnMut(&CycleEvent<'_>) + Send>>;

impl Job {
    pub fn cycle_settings(
        &self,
        transfer: TransferOptions,
        clock: Arc<dyn Clock>,
    ) -> CycleSettings {
        CycleSettings {
            job_name: self.name.clone(),
            job_id: self.job_id.clone(),
            schedule_id: self.schedule_id.clone(),
            target_sr: self.target_sr.clone(),
            retention: self.retention,
            snapshot_retention: self.snapshot_retention,
            full_interval: self.full_interval,
            transfer,
            clock,
            network_map: self.network_map.clone(),
            new_mac_addresses: self.new_mac_addresses,
            health_check: self.health_check.then_some(self.health_check_timeout),
            transport: self.transport,
        }
    }
}

/// What a job's run is given besides the job and the hosts.
pub struct RunOptions {
    pub transfer: TransferOptions,
    pub observer: JobObserver,
    /// Cancels every VM's cycle; each destroys what it created.
    pub cancel: CancellationToken,
    pub clock: Arc<dyn Clock>,
}

/// Replicate `vms` (the job's VMs when empty), in the job's order, and return each VM's
/// outcome in that order.
pub async fn run_job(
    job: &Job,
    source: Arc<XapiClient>,
    target: Arc<XapiClient>,
    vms: &[String],
    options: RunOptions,
) -> Vec<(String, VmOutcome)> {
    let selected: Vec<String> = if vms.is_empty() {
        job.vms.clone()
    } else {
        vms.to_vec()
    };
    let permits = Arc::new(Semaphore::new(job.concurrency.max(1) as usize));
    let settings = Arc::new(job.cycle_settings(options.transfer, options.clock));
    let mut tasks = VmTasks::default();
    for vm in selected {
        let (source, target, settings, permits, observer, cancel) = (
            source.clone(),
            target.clone(),
            settings.clone(),
            permits.clone(),
            options.observer.clone(),
            options.cancel.clone(),
        );
        let state_dir = job.state_dir.clone();
        let lease_ttl = job.lease_ttl;
        tasks.spawn(vm.clone(), async move {
            let _permit = permits.acquire_owned().await;
            let mut observe = |event: &CycleEvent<'_>| {
                if let Ok(mut observer) = observer.lock() {
                    observer(event);
                }
            };
            let refused = |observe: &mut dyn FnMut(&CycleEvent<'_>), why| {
                let kind = EventKind::Refused(why);
                observe(&CycleEvent {
                    vm: &vm,
                    vm_name: "",
                    kind,
                });
            };
            // Held until the cycle ends; a killed process releases it with its descriptors.
            let _lock =
                match VmLock::acquire(&state_dir, &settings.job_id, &vm, settings.clock.now()) {
                    Ok(lock) => lock,
                    Err(e) => {
                        refused(&mut observe, Refusal::Lock(&e));
                        return VmOutcome::Locked(e);
                    }
                };
            let me = Holder::this_process(&state_dir);
            let lease = match Lease::take(&source, &settings.job_id, &vm, lease_ttl, &me).await {
                Ok(lease) => lease,
                Err(e) => {
                    refused(&mut observe, Refusal::Lease(&e));
                    return VmOutcome::Leased(e);
                }
            };
            // Its own token, so that losing the lease stops this VM's cycle only.
            let cycle = cancel.child_token();
            let renewal = lease.keep(source.clone(), cycle.clone());
            let outcome =
                replicate_vm(&source, &target, &settings, &vm, &mut observe, &cycle).await;
            let lost = match renewal.finish().await {
                Ok(lease) => {
                    if let Err(e) = lease.release(&source).await {
                        tracing::warn!(vm, "the lease is left to expire: {e}");
                    }
                    None
                }
                Err(lost) => lost,
            };
            match (outcome, lost) {
                (Ok(mut report), lost) => {
                    if let Some(lost) = lost {
                        report.notes.push(format!("after the commit: {lost}"));
                    }
                    VmOutcome::Replicated(Box::new(report))
                }
                // The cycle stopped because the lease was lost.
                (Err(e), Some(lost)) if matches!(e.cause, CycleCause::Cancelled) => {
                    VmOutcome::Leased(lost)
                }
                (Err(e), _) => VmOutcome::Failed(e),
            }
        });
    }
    tasks.outcomes().await
}

/// One task per VM, each known by its VM even when it panics.
#[derive(Default)]
struct VmTasks {
    set: JoinSet<VmOutcome>,
    /// Task id -> (order, VM).
    vms: HashMap<tokio::task::Id, (usize, String)>,
}

impl VmTasks {
    fn spawn(&mut self, vm: String, task: impl Future<Output = VmOutcome> + Send + 'static) {
        let order = self.vms.len();
        let handle = self.set.spawn(task);
        self.vms.insert(handle.id(), (order, vm));
    }

    /// Every VM's outcome, in spawn order; a panicked task is a failed VM.
    async fn outcomes(mut self) -> Vec<(String, VmOutcome)> {
        let mut outcomes = Vec::new();
        while let Some(joined) = self.set.join_next_with_id().await {
            let (id, outcome) = match joined {
                Ok((id, outcome)) => (id, outcome),
                Err(e) => (e.id(), VmOutcome::Panicked(panic_message(e))),
            };
            if let Some((order, vm)) = self.vms.remove(&id) {
                if let VmOutcome::Panicked(message) = &outcome {
                    tracing::error!(vm, "the replication task stopped: {message}");
                }
                outcomes.push((order, vm, outcome));
            }
        }
        outcomes.sort_by_key(|(order, _, _)| *order);
        outcomes.into_iter().map(|(_, vm, o)| (vm, o)).collect()
    }
}

/// A panicked task's message when its payload is text; a cancelled task's error otherwise.
fn panic_message(e: JoinError) -> String {
    if !e.is_panic() {
        return e.to_string();
    }
    let payload = e.into_panic();
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panicking_task_is_a_failed_vm_in_its_place() {
        let mut tasks = VmTasks::default();
        tasks.spawn("a".into(), async {
            VmOutcome::Failed(CycleError {
                vm: "a".into(),
                phase: super::super::error::Phase::Transfer,
                disk: None,
                host: None,
                cause: super::super::error::CycleCause::Cancelled,
            })
        });
        // Both payload types a panic carries: a formatted message (String) and a literal.
        tasks.spawn("b".into(), async {
            let vm: u32 = "b".len().try_into().unwrap();
            panic!("cycle {vm} hit a bug")
        });
        tasks.spawn("c".into(), async { panic!("plain text") });
        let outcomes = tasks.outcomes().await;
        let seen: Vec<(&str, String)> = outcomes
            .iter()
            .map(|(vm, o)| match o {
                VmOutcome::Panicked(m) => (vm.as_str(), m.clone()),
                VmOutcome::Failed(e) => (vm.as_str(), e.kind().name().to_owned()),
                other => (vm.as_str(), format!("{other:?}")),
            })
            .collect();
        assert_eq!(
            seen,
            [
                ("a", "cancelled".to_owned()),
                ("b", "cycle 1 hit a bug".to_owned()),
                ("c", "plain text".to_owned()),
            ]
        );
    }
}
