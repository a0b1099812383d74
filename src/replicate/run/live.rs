//! Where a run writes: the live replica in place, or a new one (and the former live
//! replicas it then supersedes).

use super::{Cycle, CycleError};
use crate::replicate::inventory::target_disks;
use crate::replicate::keys;
use crate::replicate::layout::{PointKind, TargetDisk, in_place_target, restore_points};
use crate::replicate::plan::{CyclePlan, DiskPlan, Identity, TargetVm};
use crate::replicate::replica::replica_keys;
use crate::xapi::ops::{Class, MapName};
use crate::xapi::records::{StringMap, VmRecord};
use crate::xapi::rpc::Value;
use crate::xapi::transfer::{VdiOn, changed_blocks};

impl Cycle<'_> {
    /// Update the live replica in place when [`in_place_target`] allows and its disks
    /// still hold their newest snapshot's content; else a new live replica, built from
    /// clones of the disks that hold the base's content.
    pub(super) async fn choose_writing(
        &self,
        plan: &mut CyclePlan,
        disks: &[TargetDisk],
        vms: &[TargetVm],
    ) -> Result<Writing, CycleError> {
        let mut bases = Vec::new();
        let mut compare = Vec::new();
        let mut classic = Vec::new();
        for (userdevice, disk_plan) in &plan.disks {
            if let DiskPlan::Delta {
                replica_vdi,
                live,
                classic: is_classic,
                ..
            } = disk_plan
            {
                let Some(live) = live else {
                    plan.notes.push(format!(
                        "disk {userdevice}: its replica disk is gone; a new live replica"
                    ));
                    return Ok(Writing::NewLive);
                };
                bases.push((userdevice.as_str(), live.as_str()));
                classic.push(*is_classic);
                if !is_classic {
                    compare.push((live.clone(), replica_vdi.clone()));
                }
            }
        }
        if bases.is_empty() {
            return Ok(Writing::NewLive);
        }
        if classic.iter().any(|c| *c) && !classic.iter().all(|c| *c) {
            plan.notes
                .push("the base is in both layouts; a new live replica".into());
            return Ok(Writing::NewLive);
        }
        let live = match in_place_target(&bases, disks, vms, &self.id) {
            Ok(live) => live.clone(),
            Err(why) => {
                plan.notes.push(format!("{why}; a new live replica"));
                return Ok(Writing::NewLive);
            }
        };
        for (live_vdi, snapshot_vdi) in &compare {
            if self.differs(live_vdi, snapshot_vdi).await? {
                plan.notes.push(format!(
                    "live replica {} changed since its snapshot; a new live replica",
                    live.uuid
                ));
                return Ok(Writing::NewLive);
            }
        }
        Ok(Writing::InPlace {
            classic: classic.iter().all(|c| *c),
            vm: live,
        })
    }

    /// Whether target disk `vdi` holds other content than `snapshot`, from the BATs.
    pub(super) async fn differs(&self, vdi: &str, snapshot: &str) -> Result<bool, CycleError> {
        let on = VdiOn {
            host: self.target,
            vdi,
        };
        let changed = changed_blocks(on, snapshot, &self.settings.transfer, self.cancel)
            .await
            .map_err(|e| CycleError {
                vm: self.id.vm_uuid.clone(),
                phase: self.phase,
                disk: None,
                host: Some(e.host.clone()),
                cause: e.into(),
            })?;
        Ok(changed != 0)
    }

    /// A classic replica about to become the live replica is snapshotted first, so its
    /// content stays a restore point (the snapshot carries its keys).
    pub(super) async fn preserve_classic(
        &self,
        live: &TargetVm,
        vm: &VmRecord,
        now: i64,
    ) -> Result<(), CycleError> {
        let at = replica_datetime_or(live, now);
        let name = keys::target_snapshot_name(&vm.name_label, &self.settings.job_name, at);
        self.on_target(self.target.snapshot_vm(&live.reference, &name, &[]).await)?;
        Ok(())
    }

    /// Make the live replica `live` ready to be written: marked as importing (XO §7.1: its
    /// keys at the epoch datetime, the importing block and name, and our key) and given the
    /// source VM's settings.
    pub(super) async fn prepare_in_place(
        &self,
        live: &TargetVm,
        raw_vm: &Value,
        vm: &VmRecord,
        now: i64,
    ) -> Result<(), CycleError> {
        let target = self.target;
        let reference = live.reference.as_str();
        let other_config = importing_vm_config(&self.id, vm, now);
        self.on_target(target.set_vm_other_config(reference, &other_config).await)?;
        let blocked: Vec<(&str, &str)> = keys::BLOCKED_OPERATIONS
            .iter()
            .map(|op| (*op, keys::IMPORTING_BLOCKED))
            .collect();
        self.on_target(
            target
                .set_entries(Class::Vm, reference, MapName::BlockedOperations, &blocked)
                .await,
        )?;
        let name = format!("{}{}", keys::IMPORTING_VM_PREFIX, vm.name_label);
        self.on_target(target.set_vm_name_label(reference, &name).await)?;
        self.on_target(target.update_vm_from(reference, raw_vm).await)?;
        Ok(())
    }

    /// Destroy the live replicas of this job that `current` replaces: halted, start-blocked,
    /// whole, and holding their newest snapshot's content, which stays as a restore point.
    /// One whose disks changed behind the job's back is left alone, with a note.
    pub(super) async fn supersede(
        &self,
        current: &str,
        vms: &[TargetVm],
    ) -> Result<Vec<String>, CycleError> {
        let mut notes = Vec::new();
        let former: Vec<&TargetVm> = restore_points(vms, &self.id)
            .into_iter()
            .filter(|p| p.kind == PointKind::LiveReplica && (p.valid || p.superseded))
            .map(|p| p.vm)
            .filter(|vm| vm.reference != current && vm.power_state == "Halted")
            .collect();
        // The common case, one live replica: no need to read the target's disks again.
        if former.is_empty() {
            return Ok(notes);
        }
        let (_, disks) = self.on_target(target_disks(self.target, &self.id.sr_uuid).await)?;
        for old in former {
            let mut clean = true;
            for disk in disks
                .iter()
                .filter(|d| d.attached.iter().any(|(v, _)| *v == old.reference))
            {
                let newest = disks
                    .iter()
                    .filter(|s| s.is_a_snapshot && s.snapshot_of == disk.reference)
                    .max_by_key(|s| s.snapshot_time);
                clean &= match newest {
                    Some(snapshot) => !self.differs(&disk.reference, &snapshot.reference).await?,
                    None => false,
                };
            }
            if clean {
                self.on_target(self.target.destroy_vm_and_disks(&old.reference).await)?;
                notes.push(format!(
                    "former live replica {} destroyed; its snapshots keep its content",
                    old.uuid
                ));
            } else {
                notes.push(format!(
                    "former live replica {} left alone: its disks changed since its newest snapshot",
                    old.uuid
                ));
            }
        }
        Ok(notes)
    }
}

/// How a run writes the target.
pub(super) enum Writing {
    /// Into the live replica's disks (a classic replica is snapshotted first).
    InPlace { vm: TargetVm, classic: bool },
    /// Into a new live replica.
    NewLive,
}

/// A live replica's `other_config` while a run writes it: the source VM's own entries, the
/// job's keys at XO's importing datetime, our importing key, `auto_poweron` off.
fn importing_vm_config(id: &Identity, vm: &VmRecord, now: i64) -> StringMap {
    let mut config: StringMap = vm
        .other_config
        .iter()
        .filter(|(k, _)| !keys::is_replication_state(k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    config.extend(replica_keys(id, keys::IMPORTING_DATETIME));
    config.insert(keys::IMPORTING.into(), keys::datetime(now));
    config.insert(keys::AUTO_POWERON.into(), "false".into());
    config
}

/// A classic replica's time, for the name of the snapshot that preserves it.
fn replica_datetime_or(vm: &TargetVm, fallback: i64) -> i64 {
    vm.other_config
        .get(keys::DATETIME)
        .and_then(|t| keys::parse_datetime(t))
        .or_else(|| keys::datetime_from_replica_name(&vm.name_label))
        .unwrap_or(fallback)
}
