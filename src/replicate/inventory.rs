//! What replication reads from the hosts, in the planner's terms: the target's VMs, a
//! snapshot and its disks, the replica disks on the target SR; and the sweep of disks no VM
//! uses any more.

use super::keys;
use super::layout::TargetDisk;
use super::networks::{Network, SourceNic};
use super::plan::{Identity, SnapshotDisk, SourceSnapshot, TargetVm};
use crate::xapi::client::{ClientError, XapiClient};
use crate::xapi::records::{SrRecord, VbdRecord, VdiRecord, VifRecord, VmRecord};

/// Every VM on `host`, as the planner sees them.
pub async fn list_target_vms(host: &XapiClient) -> Result<Vec<TargetVm>, ClientError> {
    let records = host.get_all_records::<VmRecord>().await?;
    Ok(records
        .into_iter()
        .map(|(reference, vm)| TargetVm {
            reference,
            uuid: vm.uuid,
            name_label: vm.name_label,
            is_a_template: vm.is_a_template,
            is_a_snapshot: vm.is_a_snapshot,
            snapshot_of: vm.snapshot_of,
            power_state: vm.power_state,
            other_config: vm.other_config,
            blocked_operations: vm.blocked_operations,
        })
        .collect())
}

/// A snapshot VM (or any VM) and its disks (VBDs of type Disk), read from the host.
pub async fn load_snapshot(
    host: &XapiClient,
    reference: &str,
) -> Result<SourceSnapshot, ClientError> {
    let vm: VmRecord = host.get_record(reference).await?;
    snapshot_from_record(host, reference, vm).await
}

/// [`load_snapshot`] of a VM record already read: its disks read from the host.
pub async fn snapshot_from_record(
    host: &XapiClient,
    reference: &str,
    vm: VmRecord,
) -> Result<SourceSnapshot, ClientError> {
    let disks = host
        .vm_disks(&vm)
        .await?
        .into_iter()
        .map(|d| SnapshotDisk {
            userdevice: d.userdevice,
            vdi_ref: d.vdi_ref,
            vdi_uuid: d.vdi.uuid,
            virtual_size: d.vdi.virtual_size,
            other_config: d.vdi.other_config,
        })
        .collect();
    Ok(SourceSnapshot {
        reference: reference.to_owned(),
        uuid: vm.uuid,
        snapshot_time: keys::parse_datetime(&vm.snapshot_time).unwrap_or(0),
        other_config: vm.other_config,
        disks,
    })
}

/// The SR `sr_uuid`'s reference and its managed VDIs, snapshots included, each with the
/// VMs that use it. Hidden chain parents (unmanaged) are no disks of anybody's.
pub async fn target_disks(
    host: &XapiClient,
    sr_uuid: &str,
) -> Result<(String, Vec<TargetDisk>), ClientError> {
    let sr_ref = host.get_by_uuid::<SrRecord>(sr_uuid).await?;
    let vdis = host.get_all_records::<VdiRecord>().await?;
    let disks = sr_disks(host, &sr_ref, vdis).await?;
    Ok((sr_ref, disks))
}

/// The managed VDIs among `vdis` (every VDI of `host`, as just read) that are on the SR
/// `sr_ref`, each with the VMs that use it, read from the host's VBDs.
pub async fn sr_disks(
    host: &XapiClient,
    sr_ref: &str,
    vdis: VdiList,
) -> Result<Vec<TargetDisk>, ClientError> {
    let vbds = host.get_all_records::<VbdRecord>().await?;
    let mut disks = Vec::new();
    for (reference, vdi) in vdis {
        if vdi.sr != sr_ref || !vdi.managed {
            continue;
        }
        let attached = vbds
            .iter()
            .filter(|(_, vbd)| vbd.vdi == reference)
            .map(|(_, vbd)| (vbd.vm.clone(), vbd.userdevice.clone()))
            .collect();
        disks.push(TargetDisk {
            uuid: vdi.uuid,
            virtual_size: vdi.virtual_size,
            other_config: vdi.other_config,
            is_a_snapshot: vdi.is_a_snapshot,
            snapshot_of: vdi.snapshot_of,
            snapshot_time: keys::parse_datetime(&vdi.snapshot_time).unwrap_or(0),
            attached,
            reference,
        });
    }
    Ok(disks)
}

/// The other_config key xapi sets on its host-internal management network.
const INTERNAL_NETWORK: &str = "is_host_internal_management_network";

/// Every network of `host`, with its VLAN and whether it carries the management interface.
pub async fn networks(host: &XapiClient) -> Result<Vec<Network>, ClientError> {
    let (networks, pifs) = host.networks_and_pifs().await?;
    Ok(networks
        .into_iter()
        .map(|(reference, network)| {
            let own: Vec<_> = pifs
                .iter()
                .filter(|(_, p)| p.network == reference)
                .collect();
            Network {
                vlan: own.first().map_or(-1, |(_, p)| p.vlan),
                management: own.iter().any(|(_, p)| p.management),
                internal: network
                    .other_config
                    .get(INTERNAL_NETWORK)
                    .is_some_and(|v| v == "true"),
                uuid: network.uuid,
                name: network.name_label,
                reference,
            }
        })
        .collect())
}

/// `vm`'s interfaces with their networks as the mapping sees them, and their records.
pub async fn vm_nics(
    host: &XapiClient,
    vm: &VmRecord,
    networks: &[Network],
) -> Result<Vec<(SourceNic, VifRecord)>, ClientError> {
    Ok(host
        .vm_vifs(vm)
        .await?
        .into_iter()
        .map(|(_, vif)| {
            let network = networks
                .iter()
                .find(|n| n.reference == vif.network)
                .cloned()
                .unwrap_or_default();
            (
                SourceNic {
                    device: vif.device.clone(),
                    mac: vif.mac.clone(),
                    network,
                },
                vif,
            )
        })
        .collect())
}

/// Destroy the disks of this job and VM that no VM uses any more (snapshot disks on the
/// source, replica disks on the target SR), returning their UUIDs. They are what a destroy
/// cut short between the VM and its disks leaves (a failed retention or rollback, a killed
/// run): `destroy_vm_and_disks` removes the VM first so that a half-deleted replica never
/// looks valid, and this sweep finishes the job on the next run.
pub async fn destroy_orphaned_disks(
    host: &XapiClient,
    id: &Identity,
    snapshots: bool,
) -> Result<Vec<String>, ClientError> {
    let vdis = host.get_all_records::<VdiRecord>().await?;
    let (destroyed, _) = destroy_orphans_among(host, vdis, id, snapshots).await?;
    Ok(destroyed)
}

/// The VDIs of `host` (each with its reference), as read then changed by this run.
pub type VdiList = Vec<(String, VdiRecord)>;

/// [`destroy_orphaned_disks`] on `vdis` (every VDI of `host`, as just read): the UUIDs
/// destroyed, and the VDIs left, which is what the host holds now without reading it again.
pub async fn destroy_orphans_among(
    host: &XapiClient,
    vdis: VdiList,
    id: &Identity,
    snapshots: bool,
) -> Result<(Vec<String>, VdiList), ClientError> {
    let mut destroyed = Vec::new();
    let mut kept = Vec::with_capacity(vdis.len());
    for (reference, vdi) in vdis {
        if is_orphaned_disk(&vdi, id, snapshots) {
            host.destroy_vdi_once_free(&reference).await?;
            destroyed.push(vdi.uuid);
        } else {
            kept.push((reference, vdi));
        }
    }
    Ok((destroyed, kept))
}

/// A disk of this job and VM that no VBD attaches: on the source (`source`) a snapshot
/// disk; on the target a replica disk or a target snapshot's disk (a snapshot VDI too),
/// on the job's SR. Unmanaged VDIs (hidden chain parents) are the storage manager's, never
/// destroyed here.
fn is_orphaned_disk(vdi: &VdiRecord, id: &Identity, source: bool) -> bool {
    let config = &vdi.other_config;
    // A purged snapshot's disks have no VBD by design; `purge_snapshot_data` sweeps them.
    vdi.managed
        && vdi.vbds.is_empty()
        && vdi.kind != "cbt_metadata"
        && (vdi.is_a_snapshot || !source)
        && config.get(keys::JOB) == Some(&id.job_id)
        && config.get(keys::VM) == Some(&id.vm_uuid)
        && (source || config.get(keys::SR) == Some(&id.sr_uuid))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unmanaged_vdi_is_never_an_orphaned_disk_even_with_this_jobs_keys() {
        let id = Identity {
            job_id: "job".into(),
            schedule_id: "schedule".into(),
            vm_uuid: "vm".into(),
            sr_uuid: "sr".into(),
        };
        let other_config = [(keys::JOB, "job"), (keys::VM, "vm"), (keys::SR, "sr")]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        let mut vdi = VdiRecord {
            managed: true,
            other_config,
            ..VdiRecord::default()
        };
        assert!(is_orphaned_disk(&vdi, &id, false));
        vdi.managed = false;
        assert!(!is_orphaned_disk(&vdi, &id, false));
    }

    /// A retention cut short between a target snapshot's VM and its disks leaves snapshot
    /// VDIs that no VBD attaches: the target's sweep takes them too.
    #[test]
    fn a_target_snapshots_disk_left_by_a_cut_short_destroy_is_an_orphaned_disk() {
        let id = Identity {
            job_id: "job".into(),
            schedule_id: "schedule".into(),
            vm_uuid: "vm".into(),
            sr_uuid: "sr".into(),
        };
        let other_config = [(keys::JOB, "job"), (keys::VM, "vm"), (keys::SR, "sr")]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        let mut vdi = VdiRecord {
            managed: true,
            is_a_snapshot: true,
            other_config,
            ..VdiRecord::default()
        };
        assert!(is_orphaned_disk(&vdi, &id, false));
        // Still attached to its snapshot VM: a restore point's disk.
        vdi.vbds = vec!["OpaqueRef:vbd".into()];
        assert!(!is_orphaned_disk(&vdi, &id, false));
        // On the source, a VM's own disk (no snapshot) is never swept.
        vdi.vbds.clear();
        vdi.is_a_snapshot = false;
        assert!(!is_orphaned_disk(&vdi, &id, true));
    }
}
