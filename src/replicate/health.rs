//! The health check (`xo-replication.md` §11): boot a clone of a VM's newest restore point,
//! cut off from every network, and wait for its guest to report that it booted (guest
//! metrics with PV drivers detected) within a timeout; then destroy the clone and record the
//! result on the restore point, where `status` reads it.
//!
//! The clone carries our mark with its own UUID (as test clones do), so a check killed
//! half-way leaves a clone the next check recognises and removes, and a mark copied from
//! anywhere else names another object and is never taken for one.

use std::time::{Duration, Instant};

use serde::Serialize;

use super::clock::Clock;
use super::failover::{pick_replica, replication_keys};
use super::inventory::list_target_vms;
use super::keys;
use super::layout::{PointKind, restore_points};
use super::op_error::{OpError, on_host as host};
use super::plan::{Identity, TargetVm};
use crate::xapi::client::{ClientError, XapiClient};
use crate::xapi::ops::{Class, MapName};
use crate::xapi::records::{NULL_REF, VdiRecord, VmRecord};
use crate::xapi::rpc::Value;

/// Ours: on a restore point, the last health check's time and result.
pub const HEALTH_CHECK: &str = "vhdsync:health_check";
/// Ours: on a health-check clone, its own UUID (see the module's description).
pub const HEALTH_CHECK_CLONE: &str = "vhdsync:health_check_clone";
/// Ours: on a health-check clone, the job it checks for.
pub const HEALTH_CHECK_JOB: &str = "vhdsync:health_check_job";
/// Xen Orchestra's tag on its health-check clones, which its backups skip.
pub const HEALTH_CHECK_TAG: &str = "xo:no-bak=Health Check";

/// How often the clone's state is read while waiting.
const POLL: Duration = Duration::from_millis(500);

#[derive(Debug, Clone, Serialize)]
pub struct HealthReport {
    pub vm: String,
    /// The restore point checked, and its kind.
    pub restore_point: String,
    pub kind: PointKind,
    pub passed: bool,
    /// What the guest reported, or why the check failed.
    pub detail: String,
    pub seconds: f64,
    /// Leftover clones of earlier checks removed first.
    pub cleaned_up: Vec<String>,
}

/// A clone left by an earlier check of this job.
fn is_health_clone(vm: &TargetVm, job_id: &str) -> bool {
    !vm.is_a_snapshot
        && vm
            .other_config
            .get(HEALTH_CHECK_CLONE)
            .is_some_and(|own| own.eq_ignore_ascii_case(&vm.uuid))
        && vm.other_config.get(HEALTH_CHECK_JOB).map(String::as_str) == Some(job_id)
}

/// Check `id`'s VM: the report says whether its newest restore point boots. A host error
/// fails the whole check (`Err`); a guest that does not come up is a failed check (`Ok`
/// with `passed: false`).
pub async fn health_check(
    target: &XapiClient,
    id: &Identity,
    timeout: Duration,
    clock: &dyn Clock,
) -> Result<HealthReport, OpError> {
    let started = Instant::now();
    let vms = list_target_vms(target)
        .await
        .map_err(host("listing the target's VMs"))?;
    let mut cleaned_up = Vec::new();
    for leftover in vms.iter().filter(|vm| is_health_clone(vm, &id.job_id)) {
        remove_clone(target, &leftover.reference)
            .await
            .map_err(host(format!(
                "removing health-check clone {}",
                leftover.uuid
            )))?;
        cleaned_up.push(leftover.uuid.clone());
    }
    let points = restore_points(&vms, id);
    let chosen = pick_replica(&points, &vms, id, None).map_err(OpError::Invalid)?;
    let (kind, point) = (chosen.kind, chosen.vm.clone());
    let name = format!("Health Check - {}", point.name_label);
    let clone = target
        .clone_vm(&point.reference, &name)
        .await
        .map_err(host(format!("cloning {} {}", kind.label(), point.uuid)))?;
    // Each step names itself, so a refusal says which one the host refused.
    let outcome = async {
        prepare(target, &clone, id, kind)
            .await
            .map_err(|e| ("preparing the clone", e))?;
        target
            .start_vm(&clone)
            .await
            .map_err(|e| ("starting the clone", e))?;
        wait_for_guest(target, &clone, timeout)
            .await
            .map_err(|e| ("waiting for the guest", e))
    }
    .await;
    let removed = remove_clone(target, &clone).await;
    let (passed, detail) = match outcome {
        Ok(Ok(seen)) => (true, seen),
        Ok(Err(why)) => (false, why),
        Err((step, e @ ClientError::Xapi { .. })) => {
            (false, format!("{step}: the host refused: {e}"))
        }
        Err((step, e)) => return Err(host(format!("health check of {}, {step}", point.uuid))(e)),
    };
    removed.map_err(host(format!(
        "destroying the health-check clone of {}",
        point.uuid
    )))?;
    let result = format!(
        "{} {} {}",
        keys::datetime(clock.unix()),
        if passed { "passed" } else { "failed" },
        detail
    );
    target
        .set_entries(
            Class::Vm,
            &point.reference,
            MapName::OtherConfig,
            &[(HEALTH_CHECK, &result)],
        )
        .await
        .map_err(host(format!("recording the result on {}", point.uuid)))?;
    Ok(HealthReport {
        vm: id.vm_uuid.clone(),
        restore_point: point.uuid,
        kind,
        passed,
        detail,
        seconds: started.elapsed().as_secs_f64(),
        cleaned_up,
    })
}

/// Mark the clone as ours, make it a VM that can start and reaches no network: a template
/// no more, no replication key, no start block, no interface.
async fn prepare(
    target: &XapiClient,
    clone: &str,
    id: &Identity,
    kind: PointKind,
) -> Result<(), ClientError> {
    let vm: VmRecord = target.get_record(clone).await?;
    let config = MapName::OtherConfig;
    let marks = [
        (HEALTH_CHECK_CLONE, vm.uuid.as_str()),
        (HEALTH_CHECK_JOB, id.job_id.as_str()),
    ];
    target.set_entries(Class::Vm, clone, config, &marks).await?;
    if kind == PointKind::TargetSnapshot || vm.is_a_template {
        target.set_vm_is_a_template(clone, false).await?;
    }
    let stripped = replication_keys(&vm.other_config);
    target
        .remove_entries(Class::Vm, clone, config, &stripped)
        .await?;
    for vdi in target.disk_vdis(clone).await? {
        let record: VdiRecord = target.get_record(&vdi).await?;
        let stripped = replication_keys(&record.other_config);
        target
            .remove_entries(Class::Vdi, &vdi, config, &stripped)
            .await?;
    }
    target
        .remove_entries(
            Class::Vm,
            clone,
            MapName::BlockedOperations,
            &keys::BLOCKED_OPERATIONS,
        )
        .await?;
    target.add_vm_tag(clone, HEALTH_CHECK_TAG).await?;
    for vif in vm.vifs {
        target.destroy_vif(&vif).await?;
    }
    Ok(())
}

/// Wait until the clone runs and its guest metrics show PV drivers: `Ok(Ok(what the guest
/// reported))`; `Ok(Err(why not))` when the timeout passes or the VM stops first.
async fn wait_for_guest(
    target: &XapiClient,
    clone: &str,
    timeout: Duration,
) -> Result<Result<String, String>, ClientError> {
    let deadline = Instant::now() + timeout;
    let mut was_running = false;
    loop {
        let vm: VmRecord = target.get_record(clone).await?;
        was_running |= vm.power_state == "Running";
        if was_running && vm.power_state != "Running" {
            return Ok(Err(format!(
                "the VM stopped while booting ({})",
                vm.power_state
            )));
        }
        let metrics = target
            .call("VM.get_guest_metrics", vec![Value::from(clone)])
            .await?;
        if let Some(metrics) = metrics.as_str().filter(|m| *m != NULL_REF && !m.is_empty()) {
            let record = target
                .call("VM_guest_metrics.get_record", vec![Value::from(metrics)])
                .await?;
            let fields = record.as_struct();
            let detected = fields
                .and_then(|f| f.get("PV_drivers_detected"))
                .and_then(Value::as_bool)
                == Some(true);
            if detected {
                let os = fields
                    .and_then(|f| f.get("os_version"))
                    .and_then(Value::as_struct)
                    .and_then(|os| os.get("name"))
                    .and_then(Value::as_str)
                    .unwrap_or("an unnamed OS");
                return Ok(Ok(format!("the guest booted: {os}, PV drivers detected")));
            }
        }
        if Instant::now() >= deadline {
            return Ok(Err(format!(
                "no guest metrics with PV drivers within {} s",
                timeout.as_secs()
            )));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Shut the clone down if it runs, then destroy it and its disks.
async fn remove_clone(target: &XapiClient, clone: &str) -> Result<(), ClientError> {
    let vm: VmRecord = target.get_record(clone).await?;
    if vm.power_state != "Halted" {
        target.hard_shutdown_vm(clone).await?;
    }
    target.destroy_vm_and_disks(clone).await
}

/// A health check's result as recorded on a restore point.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedResult<'a> {
    pub passed: bool,
    /// When the check ran (Unix seconds), `None` when the record's date does not parse.
    pub at: Option<i64>,
    /// The whole record, as written: `<datetime> passed|failed <detail>`.
    pub text: &'a str,
}

/// The last health check recorded on a restore point. The record is `<datetime>
/// passed|failed <detail>`; it passed only when its second word says so (the detail is the
/// guest's or the host's text, which may say anything).
pub fn last_result(vm: &TargetVm) -> Option<RecordedResult<'_>> {
    let text = vm.other_config.get(HEALTH_CHECK)?;
    let mut words = text.splitn(3, ' ');
    let at = words.next().and_then(keys::parse_datetime);
    Some(RecordedResult {
        passed: words.next() == Some("passed"),
        at,
        text,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_clone_marked_with_its_own_uuid_is_a_leftover() {
        let mut vm = TargetVm {
            uuid: "c".into(),
            ..TargetVm::default()
        };
        vm.other_config
            .insert(HEALTH_CHECK_JOB.into(), "job".into());
        vm.other_config
            .insert(HEALTH_CHECK_CLONE.into(), "other".into());
        assert!(!is_health_clone(&vm, "job"));
        vm.other_config
            .insert(HEALTH_CHECK_CLONE.into(), "C".into());
        assert!(is_health_clone(&vm, "job"));
        assert!(!is_health_clone(&vm, "another-job"));
    }

    #[test]
    fn the_recorded_result_reads_back() {
        let mut vm = TargetVm::default();
        assert_eq!(last_result(&vm), None);
        vm.other_config.insert(
            HEALTH_CHECK.into(),
            "20240101T00:00:00Z passed the guest booted".into(),
        );
        let result = last_result(&vm).unwrap();
        assert!(result.passed);
        assert_eq!(result.at, Some(1_704_067_200));
        vm.other_config.insert(
            HEALTH_CHECK.into(),
            "20240101T00:00:00Z failed the guest said it passed or not".into(),
        );
        assert!(!last_result(&vm).unwrap().passed);
        vm.other_config
            .insert(HEALTH_CHECK.into(), "garbage passed ".into());
        let result = last_result(&vm).unwrap();
        assert_eq!((result.passed, result.at), (true, None));
    }
}
