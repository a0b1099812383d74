//! Filling the live replica: its disks, each disk's transfer, and the commit.

use super::live::Writing;
use super::route::Route;
use super::{Cycle, CycleError, DiskLabel, DiskReport, EventKind, Filling, Phase};
use crate::replicate::commit::{CommitDisk, CommitError, ReplicaCommit, commit_live};
use crate::replicate::keys;
use crate::replicate::plan::{CyclePlan, DiskPlan, SnapshotDisk, SourceSnapshot};
use crate::replicate::replica::{create_replica_disk, importing_disk, replica_tags};
use crate::xapi::client::{ClientError, XapiClient};
use crate::xapi::ops::{Class, MapName};
use crate::xapi::records::{VdiRecord, VmRecord};
use crate::xapi::transfer::{TransferError, VdiOn, transfer_vdi};

impl Cycle<'_> {
    /// A failed transfer of `disk`, over either route, as the cycle reports it.
    pub(super) fn transfer_failed(&self, disk: &SnapshotDisk, e: TransferError) -> CycleError {
        CycleError {
            vm: self.id.vm_uuid.clone(),
            phase: Phase::Transfer,
            disk: Some(disk.userdevice.clone()),
            host: Some(e.host.clone()),
            cause: e.into(),
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) async fn fill_replica(
        &mut self,
        live_ref: &str,
        writing: &Writing,
        vm: &VmRecord,
        snapshot: &SourceSnapshot,
        plan: &CyclePlan,
        sr_ref: &str,
        now: i64,
    ) -> Result<(String, String, String, Vec<DiskReport>), CycleError> {
        let in_place = matches!(writing, Writing::InPlace { .. });
        let mut disks: Vec<Filling<'_>> = Vec::new();
        for disk in &snapshot.disks {
            let disk_plan = plan
                .disks
                .get(&disk.userdevice)
                .cloned()
                .unwrap_or(DiskPlan::Full);
            let (vdi_ref, attach) = self
                .replica_disk(disk, &disk_plan, in_place, sr_ref)
                .await?;
            if attach {
                self.on_target(
                    self.target
                        .attach_disk(live_ref, &vdi_ref, &disk.userdevice)
                        .await,
                )?;
            }
            disks.push((disk, disk_plan, vdi_ref));
        }
        // Read before the transfer: the progress shows them, the commit copies them.
        let mut names = Vec::new();
        for (disk, _, _) in &disks {
            names.push(self.on_source(self.source.vdi_name_label(&disk.vdi_ref).await)?);
        }

        self.enter(Phase::Transfer)?;
        let mut reports = Vec::new();
        for ((disk, disk_plan, vdi_ref), name) in disks.iter().zip(&names) {
            reports.push(self.transfer(disk, name, disk_plan, vdi_ref).await?);
        }

        self.enter(Phase::Commit)?;
        let name = keys::snapshot_name(&self.settings.job_name, &vm.name_label);
        let snapshot_name =
            keys::target_snapshot_name(&vm.name_label, &self.settings.job_name, now);
        let datetime = keys::datetime(now);
        let tags = replica_tags(&vm.tags);
        let commit = ReplicaCommit {
            id: &self.id,
            vm_ref: live_ref,
            tags: &tags,
            snapshot_uuid: &snapshot.uuid,
            datetime: &datetime,
            name: &name,
            committed_ms: self.settings.clock.unix_ms(),
            disks: disks
                .iter()
                .zip(&names)
                .map(|((disk, _, vdi_ref), name)| CommitDisk {
                    vdi_ref,
                    copy_of: &disk.vdi_uuid,
                    name_label: Some(name),
                })
                .collect(),
        };
        let exported = &mut self.exported;
        let (source, target) = (self.source, self.target);
        let committed = commit_live(target, &commit, &snapshot_name, || async {
            mark_exported(source, snapshot, plan)
                .await
                .map_err(CommitError::Source)?;
            *exported = true;
            Ok(())
        })
        .await;
        let target_snapshot = match committed {
            Ok(reference) => reference,
            Err(CommitError::Source(e)) => return Err(self.fail(None, Some(source), e.into())),
            Err(CommitError::Target(e)) => return Err(self.fail(None, Some(target), e.into())),
        };
        let uuid = match writing {
            Writing::InPlace { vm, .. } => vm.uuid.clone(),
            Writing::NewLive => self.on_target(target.vm_uuid(live_ref).await)?,
        };
        let snapshot_uuid = self.on_target(target.vm_uuid(&target_snapshot).await)?;
        Ok((uuid, name, snapshot_uuid, reports))
    }

    /// Send one disk's changes into its replica disk, over its route.
    async fn transfer(
        &mut self,
        disk: &SnapshotDisk,
        name: &str,
        plan: &DiskPlan,
        vdi_ref: &str,
    ) -> Result<DiskReport, CycleError> {
        let base = match plan {
            DiskPlan::Delta { base_vdi, .. } => Some(base_vdi.as_str()),
            DiskPlan::Full => None,
        };
        let label = DiskLabel {
            userdevice: &disk.userdevice,
            name,
        };
        self.emit(EventKind::DiskStarted {
            disk: label,
            delta: base.is_some(),
            virtual_size: disk.virtual_size,
        });
        if let Some(Route::Nbd(path)) = self.routes.remove(&disk.userdevice) {
            match self
                .transfer_over_nbd(disk, name, base, &path, vdi_ref, label)
                .await?
            {
                Ok(report) => {
                    self.emit(EventKind::DiskDone {
                        disk: label,
                        report: &report,
                    });
                    return Ok(report);
                }
                Err(why) => self.transport_notes.push(format!(
                    "disk {}: {why}; the export path instead of NBD",
                    disk.userdevice
                )),
            }
        }
        let result = transfer_vdi(
            VdiOn {
                host: self.source,
                vdi: &disk.vdi_ref,
            },
            base,
            VdiOn {
                host: self.target,
                vdi: vdi_ref,
            },
            &self.settings.transfer,
            &mut |progress| {
                self.emit(EventKind::DiskProgress {
                    disk: label,
                    progress,
                })
            },
            self.cancel.cancelled(),
        )
        .await
        .map_err(|e| self.transfer_failed(disk, e))?;
        let replica_vdi = self.on_target(self.target.vdi_uuid(vdi_ref).await)?;
        let report = DiskReport {
            userdevice: disk.userdevice.clone(),
            name: name.to_owned(),
            mode: if base.is_some() { "delta" } else { "full" },
            transport: "stream",
            virtual_size: disk.virtual_size,
            bytes_read: result.bytes,
            bytes_sent: result.bytes,
            blocks: result.blocks,
            source_vdi: disk.vdi_uuid.clone(),
            replica_vdi,
        };
        self.emit(EventKind::DiskDone {
            disk: label,
            report: &report,
        });
        Ok(report)
    }

    /// The target disk for `disk`: in place, the live replica's own disk (grown if the
    /// source grew); else a clone of the disk with the base's content, or a new VDI. Named
    /// as importing and carrying the job's keys at the importing datetime. Also whether it
    /// must be attached to the live replica.
    async fn replica_disk(
        &mut self,
        disk: &SnapshotDisk,
        plan: &DiskPlan,
        in_place: bool,
        sr_ref: &str,
    ) -> Result<(String, bool), CycleError> {
        let target = self.target;
        let (vdi, attach) = match plan {
            DiskPlan::Delta {
                replica_vdi, live, ..
            } => {
                let (vdi, attach) = match live {
                    Some(live) if in_place => (live.clone(), false),
                    _ => {
                        let clone = self.on_target(target.clone_vdi(replica_vdi).await)?;
                        self.created_vdis.push(clone.clone());
                        (clone, true)
                    }
                };
                let record: VdiRecord = self.on_target(target.get_record(&vdi).await)?;
                if record.virtual_size < disk.virtual_size {
                    self.on_target(target.resize_vdi(&vdi, disk.virtual_size).await)?;
                }
                let (name, other_config) = importing_disk(&self.id, &disk.vdi_uuid);
                self.on_target(target.set_vdi_name_label(&vdi, &name).await)?;
                self.on_target(target.set_vdi_other_config(&vdi, &other_config).await)?;
                (vdi, attach)
            }
            DiskPlan::Full => {
                let created = self.on_target(
                    create_replica_disk(
                        target,
                        &self.id,
                        sr_ref,
                        &disk.vdi_uuid,
                        disk.virtual_size,
                    )
                    .await,
                )?;
                self.created_vdis.push(created.clone());
                (created, true)
            }
        };
        Ok((vdi, attach))
    }
}

/// The source snapshot becomes the next base only once its replica is committed.
async fn mark_exported(
    source: &XapiClient,
    snapshot: &SourceSnapshot,
    plan: &CyclePlan,
) -> Result<(), ClientError> {
    let chain = plan.delta_chain_length.to_string();
    let exported = [
        (keys::EXPORTED, "true"),
        (keys::DELTA_CHAIN_LENGTH, chain.as_str()),
    ];
    let config = MapName::OtherConfig;
    source
        .set_entries(Class::Vm, &snapshot.reference, config, &exported)
        .await?;
    for disk in &snapshot.disks {
        source
            .set_entries(Class::Vdi, &disk.vdi_ref, config, &exported)
            .await?;
    }
    Ok(())
}
