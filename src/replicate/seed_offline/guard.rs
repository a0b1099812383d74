//! `seed-export`'s guard. A seed's snapshot becomes the job's base, which the target does
//! not hold until the seed is imported: on a job that already has a valid chain for the VM
//! (a valid restore point on the target, and an exported source snapshot of the job, the
//! base of the next delta), exporting a seed throws that chain away and the next
//! `replicate` sends a full copy.

use super::OfflineError;
use crate::replicate::inventory::{list_target_vms, load_snapshot};
use crate::replicate::layout::{PointKind, RestorePoint, restore_points};
use crate::replicate::op_error::on_host;
use crate::replicate::plan::{Identity, SourceSnapshot, select_base};
use crate::xapi::client::XapiClient;
use crate::xapi::records::VmRecord;

/// The valid chain a seed would replace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExistingChain {
    /// The newest valid restore point, its kind and time.
    pub restore_point: String,
    pub kind: PointKind,
    pub datetime: Option<i64>,
    /// The exported source snapshot the next delta builds on.
    pub base: String,
    /// What the full copy after a seed sends at most: the virtual size of the VM's disks
    /// (only their allocated blocks are sent, which no record tells without reading them).
    pub full_size: u64,
}

/// The newest valid restore point and the base, when there are both.
pub fn chain_of<'p, 'a>(
    points: &'p [RestorePoint<'a>],
    snapshots: &'p [SourceSnapshot],
    id: &Identity,
) -> Option<(&'p RestorePoint<'a>, &'p SourceSnapshot)> {
    let point = points.iter().find(|p| p.valid)?;
    Some((point, select_base(snapshots, id)?))
}

/// The job's valid chain for `id`'s VM, read from both hosts.
pub async fn existing_chain(
    source: &XapiClient,
    target: &XapiClient,
    id: &Identity,
) -> Result<Option<ExistingChain>, OfflineError> {
    let vms = list_target_vms(target)
        .await
        .map_err(on_host("listing the target's VMs"))?;
    let points = restore_points(&vms, id);
    if !points.iter().any(|p| p.valid) {
        return Ok(None);
    }
    let (vm_ref, vm) = source
        .record_by_uuid::<VmRecord>(&id.vm_uuid)
        .await
        .map_err(|e| OfflineError::Invalid(format!("VM {}: {e}", id.vm_uuid)))?;
    let mut snapshots = Vec::new();
    for reference in &vm.snapshots {
        snapshots.push(
            load_snapshot(source, reference)
                .await
                .map_err(on_host("reading the VM's snapshots"))?,
        );
    }
    let Some((point, base)) = chain_of(&points, &snapshots, id) else {
        return Ok(None);
    };
    let disks = load_snapshot(source, &vm_ref)
        .await
        .map_err(on_host("reading the VM's disks"))?;
    Ok(Some(ExistingChain {
        restore_point: point.vm.uuid.clone(),
        kind: point.kind,
        datetime: point.datetime,
        base: base.uuid.clone(),
        full_size: disks.disks.iter().map(|d| d.virtual_size).sum(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replicate::keys;
    use crate::replicate::plan::TargetVm;
    use crate::replicate::plan::fixtures::{config, id};

    fn target_snapshot() -> TargetVm {
        TargetVm {
            reference: "ref-t".into(),
            uuid: "t".into(),
            is_a_snapshot: true,
            other_config: config(&[
                (keys::JOB, "job"),
                (keys::VM, "vm"),
                (keys::SR, "sr"),
                (keys::DATETIME, "20240101T00:00:00Z"),
            ]),
            ..TargetVm::default()
        }
    }

    fn source_snapshot(exported: bool) -> SourceSnapshot {
        let mut other_config = config(&[(keys::JOB, "job"), (keys::VM, "vm")]);
        if exported {
            other_config.insert(keys::EXPORTED.into(), "true".into());
        }
        SourceSnapshot {
            uuid: "base".into(),
            other_config,
            ..SourceSnapshot::default()
        }
    }

    #[test]
    fn a_chain_needs_a_valid_restore_point_and_an_exported_base() {
        let vms = [target_snapshot()];
        let points = restore_points(&vms, &id());
        let exported = [source_snapshot(true)];
        let (point, base) = chain_of(&points, &exported, &id()).unwrap();
        assert_eq!((point.vm.uuid.as_str(), base.uuid.as_str()), ("t", "base"));
        assert!(chain_of(&points, &[source_snapshot(false)], &id()).is_none());
        assert!(chain_of(&points, &[], &id()).is_none());
        assert!(chain_of(&[], &exported, &id()).is_none());
    }
}
