//! One replication cycle of one VM (`xo-replication.md` §3-§10), carrying out [`plan`]'s
//! decisions: clean what interrupted runs left, find the base, snapshot the source, build a
//! new replica (clones of the previous replica's disks for deltas, new disks for fulls),
//! transfer every disk, commit the metadata, then apply retention on both sides.
//!
//! Atomicity: the previous replica is never written (a delta goes into a clone of its disk),
//! the new replica carries the importing markers from its first moment until the commit, and
//! any failure destroys what the run created, so no broken replica ever looks valid.
//!
//! [`plan`]: super::plan

use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::clock::Clock;
use super::commit::{CommitDisk, ReplicaCommit, commit_replica};
pub use super::error::{CycleCause, CycleError, ErrorKind, Phase};
use super::inventory::{destroy_orphaned_disks, list_target_vms, load_snapshot, target_vdis};
use super::keys;
use super::plan::{
    CyclePlan, DiskPlan, Identity, SnapshotDisk, SourceSnapshot, TargetVm, is_interrupted_replica,
    plan_cycle, replica_victims, select_base, snapshot_victims, unexported_snapshots,
};
use super::replica::{
    create_replica_disk, create_replica_vm, importing_disk, replica_tags, roll_back,
};
use crate::xapi::client::{ClientError, XapiClient};
use crate::xapi::ops::{Class, MapName};
use crate::xapi::records::VmRecord;
use crate::xapi::transfer::{Progress, TransferOptions, VdiOn, transfer_vdi};

/// What a job's cycle needs besides the hosts.
#[derive(Debug, Clone)]
pub struct CycleSettings {
    pub job_name: String,
    pub job_id: String,
    pub schedule_id: String,
    pub target_sr: String,
    pub retention: u32,
    pub snapshot_retention: u32,
    pub full_interval: u32,
    pub transfer: TransferOptions,
    /// The time of snapshots, names and commits.
    pub clock: Arc<dyn Clock>,
}

#[derive(Debug, Clone, Serialize)]
pub struct DiskReport {
    pub userdevice: String,
    pub mode: &'static str,
    pub virtual_size: u64,
    /// Stream bytes sent.
    pub bytes_sent: u64,
    pub blocks: u32,
    /// The source snapshot's VDI the replica disk is a copy of.
    pub source_vdi: String,
    pub replica_vdi: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct CycleReport {
    pub vm: String,
    pub vm_name: String,
    /// `full`, `delta`, or `mixed` when only some disks had a base.
    pub mode: &'static str,
    pub disks: Vec<DiskReport>,
    pub bytes_sent: u64,
    pub virtual_size: u64,
    pub seconds: f64,
    pub replica: String,
    pub replica_name: String,
    pub snapshot: String,
    pub deleted_replicas: Vec<String>,
    pub deleted_snapshots: Vec<String>,
    pub cleaned_up: Vec<String>,
    pub notes: Vec<String>,
}

/// Progress of one disk's transfer: (userdevice, progress).
pub type DiskProgress<'a> = &'a mut (dyn FnMut(&str, &Progress) + Send);

/// Run one cycle for `vm_uuid`. When `cancel` fires, the cycle stops at the next step (a
/// transfer at once), destroys what it created, and fails with [`ErrorKind::Cancelled`];
/// a commit already under way completes.
pub async fn replicate_vm(
    source: &XapiClient,
    target: &XapiClient,
    settings: &CycleSettings,
    vm_uuid: &str,
    progress: DiskProgress<'_>,
    cancel: &CancellationToken,
) -> Result<CycleReport, CycleError> {
    let started = Instant::now();
    let mut cycle = Cycle {
        source,
        target,
        settings,
        cancel,
        id: Identity {
            job_id: settings.job_id.clone(),
            schedule_id: settings.schedule_id.clone(),
            vm_uuid: vm_uuid.to_owned(),
            sr_uuid: settings.target_sr.clone(),
        },
        phase: Phase::SourceVm,
        created_vdis: Vec::new(),
    };
    let (vm_ref, vm) = cycle.on_source(source.record_by_uuid::<VmRecord>(vm_uuid).await)?;
    if vm.is_a_template || vm.is_a_snapshot {
        return Err(cycle.fail(
            None,
            None,
            CycleCause::Invalid("it is a template or a snapshot, not a VM"),
        ));
    }
    if vm.other_config.get(keys::JOB) == Some(&settings.job_id)
        && vm.blocked_operations.contains_key("start")
    {
        return Err(cycle.fail(
            None,
            None,
            CycleCause::Invalid("it is a replica made by this very job"),
        ));
    }

    cycle.enter(Phase::Cleanup)?;
    tracing::info!(vm = vm_uuid, "cleaning up interrupted runs");
    let mut cleaned_up = cycle.clean_target().await?;
    let mut vm = vm;
    for untagged in cycle.untagged_snapshots(&vm).await? {
        cycle.on_source(source.destroy_vm_and_disks(&untagged).await)?;
        vm.snapshots.retain(|s| *s != untagged);
        cleaned_up.push(format!("untagged source snapshot {untagged}"));
    }
    let snapshots = cycle.source_snapshots(&vm).await?;
    for stale in unexported_snapshots(&snapshots, &cycle.id) {
        cycle.on_source(source.destroy_vm_and_disks(&stale.reference).await)?;
        cleaned_up.push(format!("source snapshot {}", stale.uuid));
    }
    for orphan in cycle.on_source(destroy_orphaned_disks(source, &cycle.id, true).await)? {
        cleaned_up.push(format!("orphaned source snapshot disk {orphan}"));
    }
    let base = select_base(&snapshots, &cycle.id).cloned();

    cycle.enter(Phase::Snapshot)?;
    tracing::info!(vm = vm_uuid, base = ?base.as_ref().map(|b| &b.uuid), "snapshot");
    let now = settings.clock.unix();
    let snapshot = cycle.snapshot(&vm_ref, &vm, now).await?;
    let outcome = cycle
        .replicate_from(&vm_ref, &vm, &snapshot, base.as_ref(), now, progress)
        .await;
    let replicated = match outcome {
        Ok(done) => done,
        Err(e) => {
            // The snapshot was never exported: no base. Remove it now; if this fails too,
            // the next run's clean-up does it.
            let _ = source.destroy_vm_and_disks(&snapshot.reference).await;
            return Err(e);
        }
    };

    // Retention runs even when cancelled: the new replica is committed, and retention is
    // what keeps the target's replica count bounded.
    cycle.phase = Phase::Retention;
    tracing::info!(vm = vm_uuid, replica = %replicated.uuid, "committed; retention");
    let mut deleted_replicas = Vec::new();
    let vms = cycle.target_vms().await?;
    for victim in replica_victims(&vms, &cycle.id, settings.retention) {
        if victim.reference == replicated.reference {
            continue;
        }
        cycle.on_target(target.destroy_vm_and_disks(&victim.reference).await)?;
        deleted_replicas.push(victim.uuid.clone());
    }
    // Read the VM again: its snapshot list now holds the new snapshot.
    let vm_now: VmRecord = cycle.on_source(source.get_record(&vm_ref).await)?;
    let snapshots = cycle.source_snapshots(&vm_now).await?;
    let mut deleted_snapshots = Vec::new();
    for victim in snapshot_victims(
        &snapshots,
        &cycle.id,
        settings.snapshot_retention,
        &snapshot.uuid,
    ) {
        cycle.on_source(source.destroy_vm_and_disks(&victim.reference).await)?;
        deleted_snapshots.push(victim.uuid.clone());
    }

    let disks = replicated.disks;
    let modes: Vec<&str> = disks.iter().map(|d| d.mode).collect();
    let mode = if modes.iter().all(|m| *m == "full") {
        "full"
    } else if modes.iter().all(|m| *m == "delta") {
        "delta"
    } else {
        "mixed"
    };
    Ok(CycleReport {
        vm: vm_uuid.to_owned(),
        vm_name: vm.name_label.clone(),
        mode,
        bytes_sent: disks.iter().map(|d| d.bytes_sent).sum(),
        virtual_size: disks.iter().map(|d| d.virtual_size).sum(),
        disks,
        seconds: started.elapsed().as_secs_f64(),
        replica: replicated.uuid,
        replica_name: replicated.name,
        snapshot: snapshot.uuid,
        deleted_replicas,
        deleted_snapshots,
        cleaned_up,
        notes: replicated.notes,
    })
}

struct Cycle<'a> {
    source: &'a XapiClient,
    target: &'a XapiClient,
    settings: &'a CycleSettings,
    cancel: &'a CancellationToken,
    id: Identity,
    phase: Phase,
    /// VDIs this run created on the target, destroyed if the run fails.
    created_vdis: Vec<String>,
}

/// A committed replica.
struct Replicated {
    reference: String,
    uuid: String,
    name: String,
    disks: Vec<DiskReport>,
    notes: Vec<String>,
}

/// A replica disk being filled: the source disk, its plan, the replica VDI.
type Filling<'s> = (&'s SnapshotDisk, DiskPlan, String);

impl Cycle<'_> {
    fn fail(&self, disk: Option<&str>, host: Option<&XapiClient>, cause: CycleCause) -> CycleError {
        CycleError {
            vm: self.id.vm_uuid.clone(),
            phase: self.phase,
            disk: disk.map(str::to_owned),
            host: host.map(XapiClient::host),
            cause,
        }
    }

    /// Move on to `phase`, unless the caller has cancelled.
    fn enter(&mut self, phase: Phase) -> Result<(), CycleError> {
        if self.cancel.is_cancelled() {
            return Err(self.fail(None, None, CycleCause::Cancelled));
        }
        self.phase = phase;
        Ok(())
    }

    fn on_source<T>(&self, result: Result<T, ClientError>) -> Result<T, CycleError> {
        result.map_err(|e| self.fail(None, Some(self.source), e.into()))
    }

    fn on_target<T>(&self, result: Result<T, ClientError>) -> Result<T, CycleError> {
        result.map_err(|e| self.fail(None, Some(self.target), e.into()))
    }

    /// Replicas of this job and VM that an interrupted run left on the target.
    async fn clean_target(&self) -> Result<Vec<String>, CycleError> {
        let mut cleaned = Vec::new();
        for vm in self.target_vms().await? {
            if is_interrupted_replica(&vm, &self.id) {
                self.on_target(self.target.destroy_vm_and_disks(&vm.reference).await)?;
                cleaned.push(format!("interrupted replica {}", vm.uuid));
            }
        }
        for orphan in self.on_target(destroy_orphaned_disks(self.target, &self.id, false).await)? {
            cleaned.push(format!("orphaned replica disk {orphan}"));
        }
        Ok(cleaned)
    }

    /// Snapshots of `vm` with this job's snapshot name but none of the job's keys: a run
    /// stopped between `VM.snapshot` and the tagging left them, and no rule based on the keys
    /// would ever remove them.
    async fn untagged_snapshots(&self, vm: &VmRecord) -> Result<Vec<String>, CycleError> {
        let name = keys::snapshot_name(&self.settings.job_name, &vm.name_label);
        let mut untagged = Vec::new();
        for reference in &vm.snapshots {
            let snapshot: VmRecord = self.on_source(self.source.get_record(reference).await)?;
            if snapshot.name_label == name && !snapshot.other_config.contains_key(keys::JOB) {
                untagged.push(reference.clone());
            }
        }
        Ok(untagged)
    }

    async fn target_vms(&self) -> Result<Vec<TargetVm>, CycleError> {
        self.on_target(list_target_vms(self.target).await)
    }

    async fn source_snapshots(&self, vm: &VmRecord) -> Result<Vec<SourceSnapshot>, CycleError> {
        let mut snapshots = Vec::new();
        for reference in &vm.snapshots {
            snapshots.push(self.on_source(load_snapshot(self.source, reference).await)?);
        }
        Ok(snapshots)
    }

    /// `VM.snapshot`, then the job's keys on the snapshot VM and every VDI.
    async fn snapshot(
        &self,
        vm_ref: &str,
        vm: &VmRecord,
        now: i64,
    ) -> Result<SourceSnapshot, CycleError> {
        let source = self.source;
        let name = keys::snapshot_name(&self.settings.job_name, &vm.name_label);
        let reference = self.on_source(source.snapshot_vm(vm_ref, &name).await)?;
        let tag = async {
            let snapshot = load_snapshot(source, &reference).await?;
            let datetime = keys::datetime(now);
            let common = [
                (keys::DATETIME, datetime.as_str()),
                (keys::JOB, self.id.job_id.as_str()),
                (keys::SCHEDULE, self.id.schedule_id.as_str()),
                (keys::VM, self.id.vm_uuid.as_str()),
            ];
            let config = MapName::OtherConfig;
            source
                .set_entries(Class::Vm, &reference, config, &common)
                .await?;
            source
                .remove_entries(Class::Vm, &reference, config, &[keys::SR, keys::EXPORTED])
                .await?;
            for disk in &snapshot.disks {
                let vdi = disk.vdi_ref.as_str();
                source.set_entries(Class::Vdi, vdi, config, &common).await?;
                let content = [(keys::CONTENT_KEY, disk.vdi_uuid.as_str())];
                source
                    .set_entries(Class::Vdi, vdi, config, &content)
                    .await?;
                let removed = [keys::SR, keys::EXPORTED, keys::COPY_OF];
                source
                    .remove_entries(Class::Vdi, vdi, config, &removed)
                    .await?;
            }
            load_snapshot(source, &reference).await
        };
        match tag.await {
            Ok(snapshot) => Ok(snapshot),
            Err(e) => {
                let _ = source.destroy_vm_and_disks(&reference).await;
                Err(self.fail(None, Some(source), e.into()))
            }
        }
    }

    /// Replica creation, transfer and commit; on failure, everything created is destroyed.
    async fn replicate_from(
        &mut self,
        vm_ref: &str,
        vm: &VmRecord,
        snapshot: &SourceSnapshot,
        base: Option<&SourceSnapshot>,
        now: i64,
        progress: DiskProgress<'_>,
    ) -> Result<Replicated, CycleError> {
        self.enter(Phase::ReplicaCreation)?;
        let (sr_ref, candidates) =
            self.on_target(target_vdis(self.target, &self.id.sr_uuid).await)?;
        let plan = plan_cycle(
            &snapshot.disks,
            base,
            &candidates,
            self.settings.full_interval,
        );
        let raw_vm = self.on_source(self.source.vm_record_value(vm_ref).await)?;
        let replica_ref =
            self.on_target(create_replica_vm(self.target, &self.id, &raw_vm, vm, now).await)?;
        let outcome = self
            .fill_replica(&replica_ref, vm, snapshot, &plan, &sr_ref, now, progress)
            .await;
        match outcome {
            Ok((uuid, name, disks)) => Ok(Replicated {
                reference: replica_ref,
                uuid,
                name,
                disks,
                notes: plan.notes,
            }),
            Err(e) => {
                roll_back(self.target, &replica_ref, &self.created_vdis).await;
                Err(e)
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn fill_replica(
        &mut self,
        replica_ref: &str,
        vm: &VmRecord,
        snapshot: &SourceSnapshot,
        plan: &CyclePlan,
        sr_ref: &str,
        now: i64,
        progress: DiskProgress<'_>,
    ) -> Result<(String, String, Vec<DiskReport>), CycleError> {
        let mut disks: Vec<Filling<'_>> = Vec::new();
        for disk in &snapshot.disks {
            let disk_plan = plan
                .disks
                .get(&disk.userdevice)
                .cloned()
                .unwrap_or(DiskPlan::Full);
            let vdi_ref = self.replica_disk(disk, &disk_plan, sr_ref).await?;
            self.on_target(
                self.target
                    .attach_disk(replica_ref, &vdi_ref, &disk.userdevice)
                    .await,
            )?;
            disks.push((disk, disk_plan, vdi_ref));
        }

        self.enter(Phase::Transfer)?;
        tracing::debug!(vm = %self.id.vm_uuid, disks = disks.len(), "transfer");
        let mut reports = Vec::new();
        for (disk, disk_plan, vdi_ref) in &disks {
            reports.push(self.transfer(disk, disk_plan, vdi_ref, progress).await?);
        }

        self.enter(Phase::Commit)?;
        let mut names = Vec::new();
        for (disk, _, _) in &disks {
            names.push(self.on_source(self.source.vdi_name_label(&disk.vdi_ref).await)?);
        }
        let name = keys::replica_name(&vm.name_label, &self.settings.job_name, now);
        let datetime = keys::datetime(now);
        let tags = replica_tags(&vm.tags);
        let commit = ReplicaCommit {
            id: &self.id,
            vm_ref: replica_ref,
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
        self.on_target(commit_replica(self.target, &commit).await)?;
        self.mark_exported(snapshot, plan).await?;
        let uuid = self.on_target(self.target.vm_uuid(replica_ref).await)?;
        Ok((uuid, name, reports))
    }

    /// Stream one disk's changed blocks into its replica disk.
    async fn transfer(
        &self,
        disk: &SnapshotDisk,
        plan: &DiskPlan,
        vdi_ref: &str,
        progress: DiskProgress<'_>,
    ) -> Result<DiskReport, CycleError> {
        let base = match plan {
            DiskPlan::Delta { base_vdi, .. } => Some(base_vdi.as_str()),
            DiskPlan::Full => None,
        };
        let device = disk.userdevice.clone();
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
            &mut |p| progress(&device, p),
            self.cancel.cancelled(),
        )
        .await
        .map_err(|e| CycleError {
            vm: self.id.vm_uuid.clone(),
            phase: Phase::Transfer,
            disk: Some(disk.userdevice.clone()),
            host: Some(e.host.clone()),
            cause: e.into(),
        })?;
        let replica_vdi = self.on_target(self.target.vdi_uuid(vdi_ref).await)?;
        Ok(DiskReport {
            userdevice: disk.userdevice.clone(),
            mode: if base.is_some() { "delta" } else { "full" },
            virtual_size: disk.virtual_size,
            bytes_sent: result.bytes,
            blocks: result.blocks,
            source_vdi: disk.vdi_uuid.clone(),
            replica_vdi,
        })
    }

    /// The source snapshot becomes the next base only once its replica is committed.
    async fn mark_exported(
        &self,
        snapshot: &SourceSnapshot,
        plan: &CyclePlan,
    ) -> Result<(), CycleError> {
        let chain = plan.delta_chain_length.to_string();
        let exported = [
            (keys::EXPORTED, "true"),
            (keys::DELTA_CHAIN_LENGTH, chain.as_str()),
        ];
        let config = MapName::OtherConfig;
        self.on_source(
            self.source
                .set_entries(Class::Vm, &snapshot.reference, config, &exported)
                .await,
        )?;
        for disk in &snapshot.disks {
            self.on_source(
                self.source
                    .set_entries(Class::Vdi, &disk.vdi_ref, config, &exported)
                    .await,
            )?;
        }
        Ok(())
    }

    /// A clone of the previous replica's disk (grown to the disk's size if needed), or a new
    /// VDI; named as importing and carrying the job's keys from the start.
    async fn replica_disk(
        &mut self,
        disk: &SnapshotDisk,
        plan: &DiskPlan,
        sr_ref: &str,
    ) -> Result<String, CycleError> {
        let target = self.target;
        match plan {
            DiskPlan::Delta { replica_vdi, .. } => {
                let clone = self.on_target(target.clone_vdi(replica_vdi).await)?;
                self.created_vdis.push(clone.clone());
                let size: crate::xapi::records::VdiRecord =
                    self.on_target(target.get_record(&clone).await)?;
                if size.virtual_size < disk.virtual_size {
                    self.on_target(target.resize_vdi(&clone, disk.virtual_size).await)?;
                }
                let (name, other_config) = importing_disk(&self.id, &disk.vdi_uuid);
                self.on_target(target.set_vdi_name_label(&clone, &name).await)?;
                self.on_target(target.set_vdi_other_config(&clone, &other_config).await)?;
                Ok(clone)
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
                Ok(created)
            }
        }
    }
}
