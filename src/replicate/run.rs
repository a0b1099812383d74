//! One replication cycle of one VM (`xo-replication.md` §3-§10), carrying out [`plan`](super::plan)'s
//! decisions: clean what interrupted runs left, find the base, snapshot the source, build a
//! new replica (clones of the previous replica's disks for deltas, new disks for fulls),
//! transfer every disk, commit the metadata, then apply retention on both sides.
//!
//! Atomicity: the previous replica is never written (a delta goes into a clone of its disk),
//! the new replica carries the importing markers from its first moment until the commit, and
//! any failure destroys what the run created, so no broken replica ever looks valid.

use std::collections::BTreeMap;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use super::keys;
use super::plan::{
    CyclePlan, DiskPlan, Identity, SnapshotDisk, SourceSnapshot, TargetVdi, TargetVm,
    is_interrupted_replica, plan_cycle, replica_victims, select_base, snapshot_victims,
    unexported_snapshots,
};
use crate::xapi::client::{ClientError, XapiClient};
use crate::xapi::records::{NULL_REF, SrRecord, StringMap, VbdRecord, VdiRecord, VmRecord};
use crate::xapi::rpc::Value;
use crate::xapi::transfer::{Progress, TransferError, TransferOptions, VdiOn, transfer_vdi};

/// The step of a cycle, for errors and reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    SourceVm,
    Cleanup,
    Snapshot,
    ReplicaCreation,
    Transfer,
    Commit,
    Retention,
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Phase::SourceVm => "reading the source VM",
            Phase::Cleanup => "cleaning up interrupted runs",
            Phase::Snapshot => "snapshot",
            Phase::ReplicaCreation => "replica creation",
            Phase::Transfer => "transfer",
            Phase::Commit => "commit",
            Phase::Retention => "retention",
        })
    }
}

/// A failed cycle: which VM, disk, host and phase.
#[derive(Debug, thiserror::Error)]
#[error("VM {vm}: {phase}{}{}: {message}",
    disk.as_ref().map(|d| format!(" of disk {d}")).unwrap_or_default(),
    host.as_ref().map(|h| format!(" on {h}")).unwrap_or_default())]
pub struct CycleError {
    pub vm: String,
    pub phase: Phase,
    pub disk: Option<String>,
    pub host: Option<String>,
    pub message: String,
}

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

/// Run one cycle for `vm_uuid`.
pub async fn replicate_vm(
    source: &XapiClient,
    target: &XapiClient,
    settings: &CycleSettings,
    vm_uuid: &str,
    progress: DiskProgress<'_>,
) -> Result<CycleReport, CycleError> {
    let started = Instant::now();
    let mut cycle = Cycle {
        source,
        target,
        settings,
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
            "it is a template or a snapshot, not a VM".into(),
        ));
    }
    if vm.other_config.get(keys::JOB) == Some(&settings.job_id)
        && vm.blocked_operations.contains_key("start")
    {
        return Err(cycle.fail(None, None, "it is a replica made by this very job".into()));
    }

    cycle.phase = Phase::Cleanup;
    tracing::info!(vm = vm_uuid, "cleaning up interrupted runs");
    let mut cleaned_up = cycle.clean_target().await?;
    let mut vm = vm;
    for untagged in cycle.untagged_snapshots(&vm).await? {
        cycle.on_source(destroy_vm_and_disks(source, &untagged).await)?;
        vm.snapshots.retain(|s| *s != untagged);
        cleaned_up.push(format!("untagged source snapshot {untagged}"));
    }
    let snapshots = cycle.source_snapshots(&vm).await?;
    for stale in unexported_snapshots(&snapshots, &cycle.id) {
        cycle.on_source(destroy_vm_and_disks(source, &stale.reference).await)?;
        cleaned_up.push(format!("source snapshot {}", stale.uuid));
    }
    for orphan in cycle.on_source(orphaned_disks(source, &cycle.id, true).await)? {
        cleaned_up.push(format!("orphaned source snapshot disk {orphan}"));
    }
    let base = select_base(&snapshots, &cycle.id).cloned();

    cycle.phase = Phase::Snapshot;
    tracing::info!(vm = vm_uuid, base = ?base.as_ref().map(|b| &b.uuid), "snapshot");
    let now = unix_now();
    let snapshot = cycle.snapshot(&vm_ref, &vm, now).await?;
    let outcome = cycle
        .replicate_from(&vm_ref, &vm, &snapshot, base.as_ref(), now, progress)
        .await;
    let (replica_ref, replica_uuid, replica_name, disks, notes) = match outcome {
        Ok(done) => done,
        Err(e) => {
            // The snapshot was never exported: no base. Remove it now; if this fails too,
            // the next run's clean-up does it.
            let _ = destroy_vm_and_disks(source, &snapshot.reference).await;
            return Err(e);
        }
    };

    cycle.phase = Phase::Retention;
    tracing::info!(vm = vm_uuid, replica = %replica_uuid, "committed; retention");
    let mut deleted_replicas = Vec::new();
    let vms = cycle.target_vms().await?;
    for victim in replica_victims(&vms, &cycle.id, settings.retention) {
        if victim.reference == replica_ref {
            continue;
        }
        cycle.on_target(destroy_vm_and_disks(target, &victim.reference).await)?;
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
        cycle.on_source(destroy_vm_and_disks(source, &victim.reference).await)?;
        deleted_snapshots.push(victim.uuid.clone());
    }

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
        replica: replica_uuid,
        replica_name,
        snapshot: snapshot.uuid,
        deleted_replicas,
        deleted_snapshots,
        cleaned_up,
        notes,
    })
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

struct Cycle<'a> {
    source: &'a XapiClient,
    target: &'a XapiClient,
    settings: &'a CycleSettings,
    id: Identity,
    phase: Phase,
    /// VDIs this run created on the target, destroyed if the run fails.
    created_vdis: Vec<String>,
}

/// (replica ref, replica uuid, replica name, disks, notes)
type Replicated = (String, String, String, Vec<DiskReport>, Vec<String>);

impl Cycle<'_> {
    fn fail(&self, disk: Option<&str>, host: Option<&XapiClient>, message: String) -> CycleError {
        CycleError {
            vm: self.id.vm_uuid.clone(),
            phase: self.phase,
            disk: disk.map(str::to_owned),
            host: host.map(XapiClient::host),
            message,
        }
    }

    fn on_source<T>(&self, result: Result<T, ClientError>) -> Result<T, CycleError> {
        result.map_err(|e| self.fail(None, Some(self.source), e.to_string()))
    }

    fn on_target<T>(&self, result: Result<T, ClientError>) -> Result<T, CycleError> {
        result.map_err(|e| self.fail(None, Some(self.target), e.to_string()))
    }

    /// Replicas of this job and VM that an interrupted run left on the target.
    async fn clean_target(&self) -> Result<Vec<String>, CycleError> {
        let mut cleaned = Vec::new();
        for vm in self.target_vms().await? {
            if is_interrupted_replica(&vm, &self.id) {
                self.on_target(destroy_vm_and_disks(self.target, &vm.reference).await)?;
                cleaned.push(format!("interrupted replica {}", vm.uuid));
            }
        }
        for orphan in self.on_target(orphaned_disks(self.target, &self.id, false).await)? {
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
        let name = keys::snapshot_name(&self.settings.job_name, &vm.name_label);
        let created = self.on_source(
            self.source
                .call(
                    "VM.snapshot",
                    vec![Value::from(vm_ref), Value::from(name.as_str())],
                )
                .await,
        )?;
        let reference = created
            .as_str()
            .ok_or_else(|| {
                self.fail(
                    None,
                    Some(self.source),
                    "VM.snapshot returned no reference".into(),
                )
            })?
            .to_owned();
        let tag = async {
            let snapshot = load_snapshot(self.source, &reference).await?;
            let datetime = keys::datetime(now);
            let common = [
                (keys::DATETIME, datetime.as_str()),
                (keys::JOB, self.id.job_id.as_str()),
                (keys::SCHEDULE, self.id.schedule_id.as_str()),
                (keys::VM, self.id.vm_uuid.as_str()),
            ];
            set_entries(self.source, "VM", &reference, "other_config", &common).await?;
            remove_entries(
                self.source,
                "VM",
                &reference,
                "other_config",
                &[keys::SR, keys::EXPORTED],
            )
            .await?;
            for disk in &snapshot.disks {
                set_entries(self.source, "VDI", &disk.vdi_ref, "other_config", &common).await?;
                set_entries(
                    self.source,
                    "VDI",
                    &disk.vdi_ref,
                    "other_config",
                    &[(keys::CONTENT_KEY, disk.vdi_uuid.as_str())],
                )
                .await?;
                remove_entries(
                    self.source,
                    "VDI",
                    &disk.vdi_ref,
                    "other_config",
                    &[keys::SR, keys::EXPORTED, keys::COPY_OF],
                )
                .await?;
            }
            load_snapshot(self.source, &reference).await
        };
        match tag.await {
            Ok(snapshot) => Ok(snapshot),
            Err(e) => {
                let _ = destroy_vm_and_disks(self.source, &reference).await;
                Err(self.fail(None, Some(self.source), e.to_string()))
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
        self.phase = Phase::ReplicaCreation;
        let target_vdis = self.target_vdis().await?;
        let plan = plan_cycle(
            &snapshot.disks,
            base,
            &target_vdis,
            self.settings.full_interval,
        );
        let raw_vm = self.on_source(
            self.source
                .call("VM.get_record", vec![Value::from(vm_ref)])
                .await,
        )?;
        let replica_ref = self.create_replica_vm(&raw_vm, vm, now).await?;
        let outcome = self
            .fill_replica(&replica_ref, vm, snapshot, &plan, now, progress)
            .await;
        match outcome {
            Ok((uuid, name, disks)) => Ok((replica_ref, uuid, name, disks, plan.notes)),
            Err(e) => {
                let _ = self
                    .target
                    .call("VM.destroy", vec![Value::from(replica_ref.as_str())])
                    .await;
                for vdi in &self.created_vdis {
                    let _ = self
                        .target
                        .call("VDI.destroy", vec![Value::from(vdi.as_str())])
                        .await;
                }
                Err(e)
            }
        }
    }

    async fn target_vdis(&self) -> Result<Vec<TargetVdi>, CycleError> {
        let (_, sr) = self.on_target(
            self.target
                .record_by_uuid::<SrRecord>(&self.id.sr_uuid)
                .await,
        )?;
        let mut vdis = Vec::new();
        for reference in &sr.vdis {
            let vdi: VdiRecord = self.on_target(self.target.get_record(reference).await)?;
            if !vdi.is_a_snapshot {
                vdis.push(TargetVdi {
                    reference: reference.clone(),
                    uuid: vdi.uuid,
                    virtual_size: vdi.virtual_size,
                    other_config: vdi.other_config,
                });
            }
        }
        Ok(vdis)
    }

    /// `VM.create` from the source VM's record, marked as importing from the first moment.
    async fn create_replica_vm(
        &self,
        raw: &Value,
        vm: &VmRecord,
        now: i64,
    ) -> Result<String, CycleError> {
        self.on_target(create_replica_vm(self.target, &self.id, raw, vm, now).await)
    }

    fn replica_keys(&self, datetime: &str) -> StringMap {
        replica_keys(&self.id, datetime)
    }

    async fn fill_replica(
        &mut self,
        replica_ref: &str,
        vm: &VmRecord,
        snapshot: &SourceSnapshot,
        plan: &CyclePlan,
        now: i64,
        progress: DiskProgress<'_>,
    ) -> Result<(String, String, Vec<DiskReport>), CycleError> {
        let (sr_ref, _) = self.on_target(
            self.target
                .record_by_uuid::<SrRecord>(&self.id.sr_uuid)
                .await,
        )?;
        let importing_keys = self.replica_keys(keys::IMPORTING_DATETIME);
        let mut disks = Vec::new();
        for disk in &snapshot.disks {
            let disk_plan = plan
                .disks
                .get(&disk.userdevice)
                .cloned()
                .unwrap_or(DiskPlan::Full);
            let vdi_ref = self
                .replica_disk(disk, &disk_plan, &sr_ref, &importing_keys)
                .await?;
            self.attach(replica_ref, &vdi_ref, disk).await?;
            disks.push((disk, disk_plan, vdi_ref));
        }

        self.phase = Phase::Transfer;
        tracing::debug!(vm = %self.id.vm_uuid, disks = disks.len(), "transfer");
        let mut reports = Vec::new();
        for (disk, disk_plan, vdi_ref) in &disks {
            let base = match disk_plan {
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
                std::future::pending::<()>(),
            )
            .await
            .map_err(|e: TransferError| CycleError {
                vm: self.id.vm_uuid.clone(),
                phase: Phase::Transfer,
                disk: Some(disk.userdevice.clone()),
                host: Some(e.host.clone()),
                message: e.to_string(),
            })?;
            let replica_vdi = self.on_target(
                self.target
                    .call_for_string("VDI.get_uuid", vec![Value::from(vdi_ref.as_str())])
                    .await,
            )?;
            reports.push(DiskReport {
                userdevice: disk.userdevice.clone(),
                mode: if base.is_some() { "delta" } else { "full" },
                virtual_size: disk.virtual_size,
                bytes_sent: result.bytes,
                blocks: result.blocks,
                source_vdi: disk.vdi_uuid.clone(),
                replica_vdi,
            });
        }

        self.phase = Phase::Commit;
        let datetime = keys::datetime(now);
        let final_keys = self.replica_keys(&datetime);
        for (disk, _, vdi_ref) in &disks {
            let name = self.on_source(
                self.source
                    .call(
                        "VDI.get_name_label",
                        vec![Value::from(disk.vdi_ref.as_str())],
                    )
                    .await,
            )?;
            self.set_on_target("VDI", vdi_ref, "name_label", name)
                .await?;
            self.set_keys(self.target, "VDI", vdi_ref, &final_keys)
                .await?;
        }
        let name = keys::replica_name(&vm.name_label, &self.settings.job_name, now);
        let mut vm_keys = final_keys.clone();
        vm_keys.insert(keys::COPY_OF.into(), snapshot.uuid.clone());
        vm_keys.insert(keys::AUTO_POWERON.into(), "false".into());
        let committed_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        vm_keys.insert(keys::COMMITTED_MS.into(), committed_ms.to_string());
        self.set_keys(self.target, "VM", replica_ref, &vm_keys)
            .await?;
        let blocked: Vec<(&str, &str)> = keys::BLOCKED_OPERATIONS
            .iter()
            .map(|op| (*op, keys::START_BLOCKED))
            .collect();
        self.on_target(
            set_entries(
                self.target,
                "VM",
                replica_ref,
                "blocked_operations",
                &blocked,
            )
            .await,
        )?;
        self.set_on_target("VM", replica_ref, "ha_restart_priority", Value::from(""))
            .await?;
        self.set_on_target("VM", replica_ref, "name_label", Value::from(name.as_str()))
            .await?;
        // Last: dropping the importing key is what makes the replica valid.
        self.on_target(
            remove_entries(
                self.target,
                "VM",
                replica_ref,
                "other_config",
                &[keys::IMPORTING],
            )
            .await,
        )?;

        // The source snapshot becomes the next base only now.
        let chain = plan.delta_chain_length.to_string();
        let exported = [
            (keys::EXPORTED, "true"),
            (keys::DELTA_CHAIN_LENGTH, chain.as_str()),
        ];
        self.on_source(
            set_entries(
                self.source,
                "VM",
                &snapshot.reference,
                "other_config",
                &exported,
            )
            .await,
        )?;
        for disk in &snapshot.disks {
            self.on_source(
                set_entries(self.source, "VDI", &disk.vdi_ref, "other_config", &exported).await,
            )?;
        }
        let uuid = self.on_target(
            self.target
                .call_for_string("VM.get_uuid", vec![Value::from(replica_ref)])
                .await,
        )?;
        Ok((uuid, name, reports))
    }

    /// A clone of the previous replica's disk (grown to the disk's size if needed), or a new
    /// VDI; named as importing and carrying the job's keys from the start.
    async fn replica_disk(
        &mut self,
        disk: &SnapshotDisk,
        plan: &DiskPlan,
        sr_ref: &str,
        importing_keys: &StringMap,
    ) -> Result<String, CycleError> {
        let target = self.target;
        let name = format!("{}{}", keys::IMPORTING_VDI_PREFIX, disk.vdi_uuid);
        let mut other_config = importing_keys.clone();
        other_config.insert(keys::COPY_OF.into(), disk.vdi_uuid.clone());
        other_config.insert(keys::CONTENT_KEY.into(), disk.vdi_uuid.clone());
        let vdi_ref = match plan {
            DiskPlan::Delta { replica_vdi, .. } => {
                let clone = self.on_target(
                    target
                        .call_for_string(
                            "VDI.clone",
                            vec![
                                Value::from(replica_vdi.as_str()),
                                Value::Struct(BTreeMap::new()),
                            ],
                        )
                        .await,
                )?;
                self.created_vdis.push(clone.clone());
                let size: VdiRecord = self.on_target(target.get_record(&clone).await)?;
                if size.virtual_size < disk.virtual_size {
                    self.on_target(
                        target
                            .call(
                                "VDI.resize",
                                vec![
                                    Value::from(clone.as_str()),
                                    Value::Int(disk.virtual_size as i64),
                                ],
                            )
                            .await,
                    )?;
                }
                self.set_on_target("VDI", &clone, "name_label", Value::from(name.as_str()))
                    .await?;
                self.set_on_target("VDI", &clone, "other_config", string_map(&other_config))
                    .await?;
                clone
            }
            DiskPlan::Full => {
                let created = self.on_target(
                    create_vdi(target, &name, sr_ref, disk.virtual_size, &other_config).await,
                )?;
                self.created_vdis.push(created.clone());
                created
            }
        };
        Ok(vdi_ref)
    }

    async fn attach(
        &self,
        vm_ref: &str,
        vdi_ref: &str,
        disk: &SnapshotDisk,
    ) -> Result<(), CycleError> {
        self.on_target(attach_disk(self.target, vm_ref, vdi_ref, &disk.userdevice).await)
    }

    async fn set_on_target(
        &self,
        class: &str,
        reference: &str,
        field: &str,
        value: Value,
    ) -> Result<(), CycleError> {
        self.on_target(
            self.target
                .call(
                    &format!("{class}.set_{field}"),
                    vec![Value::from(reference), value],
                )
                .await,
        )?;
        Ok(())
    }

    async fn set_keys(
        &self,
        host: &XapiClient,
        class: &'static str,
        reference: &str,
        keys: &StringMap,
    ) -> Result<(), CycleError> {
        let pairs: Vec<(&str, &str)> = keys.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        set_entries(host, class, reference, "other_config", &pairs)
            .await
            .map_err(|e| self.fail(None, Some(host), e.to_string()))
    }
}

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
            other_config: vm.other_config,
            blocked_operations: vm.blocked_operations,
        })
        .collect())
}

/// `VM.create` on `target` from a VM record (`raw`, the source's `get_record` answer),
/// marked as importing from its first moment: `[Importing…]` name, `Importing…` start
/// block, XO's epoch datetime and our importing key, `auto_poweron` off, the replica tag.
pub(crate) async fn create_replica_vm(
    target: &XapiClient,
    id: &Identity,
    raw: &Value,
    vm: &VmRecord,
    now: i64,
) -> Result<String, ClientError> {
    let mut args: BTreeMap<String, Value> = BTreeMap::new();
    if let Some(record) = raw.as_struct() {
        for field in VM_CONSTRUCTOR_FIELDS {
            if let Some(value) = record.get(*field) {
                args.insert((*field).to_owned(), value.clone());
            }
        }
    }
    let mut other_config: StringMap = vm
        .other_config
        .iter()
        .filter(|(k, _)| !k.starts_with("xo:"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    other_config.extend(replica_keys(id, keys::IMPORTING_DATETIME));
    other_config.insert(keys::IMPORTING.into(), keys::datetime(now));
    other_config.insert(keys::AUTO_POWERON.into(), "false".into());
    let blocked: StringMap = keys::BLOCKED_OPERATIONS
        .iter()
        .map(|op| ((*op).to_owned(), keys::IMPORTING_BLOCKED.to_owned()))
        .collect();
    let mut tags = vm.tags.clone();
    if !tags.iter().any(|t| t == keys::REPLICA_TAG) {
        tags.push(keys::REPLICA_TAG.into());
    }
    args.insert(
        "name_label".into(),
        Value::from(format!("{}{}", keys::IMPORTING_VM_PREFIX, vm.name_label).as_str()),
    );
    args.insert("is_a_template".into(), Value::Bool(false));
    args.insert("affinity".into(), Value::from(NULL_REF));
    args.insert("ha_always_run".into(), Value::Bool(false));
    args.insert("ha_restart_priority".into(), Value::from(""));
    args.insert("other_config".into(), string_map(&other_config));
    args.insert("blocked_operations".into(), string_map(&blocked));
    args.insert(
        "tags".into(),
        Value::Array(tags.iter().map(|t| Value::from(t.as_str())).collect()),
    );
    for reference in ["suspend_SR", "appliance", "snapshot_schedule"] {
        if args.contains_key(reference) {
            args.insert(reference.into(), Value::from(NULL_REF));
        }
    }
    let created = target.call("VM.create", vec![Value::Struct(args)]).await?;
    returned_ref(target, "VM.create", created)
}

/// The XO keys of a replica and its disks, with `datetime`.
pub(crate) fn replica_keys(id: &Identity, datetime: &str) -> StringMap {
    [
        (keys::DATETIME, datetime),
        (keys::JOB, &id.job_id),
        (keys::SCHEDULE, &id.schedule_id),
        (keys::VM, &id.vm_uuid),
        (keys::SR, &id.sr_uuid),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

/// A new empty user VDI of `size` bytes on `sr_ref`.
pub(crate) async fn create_vdi(
    target: &XapiClient,
    name: &str,
    sr_ref: &str,
    size: u64,
    other_config: &StringMap,
) -> Result<String, ClientError> {
    let args: BTreeMap<String, Value> = [
        ("name_label", Value::from(name)),
        ("name_description", Value::from("")),
        ("SR", Value::from(sr_ref)),
        ("virtual_size", Value::Int(size as i64)),
        ("type", Value::from("user")),
        ("sharable", Value::Bool(false)),
        ("read_only", Value::Bool(false)),
        ("other_config", string_map(other_config)),
        ("xenstore_data", Value::Struct(BTreeMap::new())),
        ("sm_config", Value::Struct(BTreeMap::new())),
        ("tags", Value::Array(Vec::new())),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    target
        .call_for_string("VDI.create", vec![Value::Struct(args)])
        .await
}

/// A read-write disk VBD plugging `vdi_ref` into `vm_ref` at `userdevice` (0 boots).
pub(crate) async fn attach_disk(
    target: &XapiClient,
    vm_ref: &str,
    vdi_ref: &str,
    userdevice: &str,
) -> Result<(), ClientError> {
    let args: BTreeMap<String, Value> = [
        ("VM", Value::from(vm_ref)),
        ("VDI", Value::from(vdi_ref)),
        ("userdevice", Value::from(userdevice)),
        ("bootable", Value::Bool(userdevice == "0")),
        ("mode", Value::from("RW")),
        ("type", Value::from("Disk")),
        ("empty", Value::Bool(false)),
        ("unpluggable", Value::Bool(false)),
        ("other_config", Value::Struct(BTreeMap::new())),
        ("qos_algorithm_type", Value::from("")),
        ("qos_algorithm_params", Value::Struct(BTreeMap::new())),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    target.call("VBD.create", vec![Value::Struct(args)]).await?;
    Ok(())
}

fn returned_ref(host: &XapiClient, method: &str, value: Value) -> Result<String, ClientError> {
    value
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| ClientError::Protocol {
            host: host.host(),
            method: method.into(),
            message: "returned no reference".into(),
        })
}

/// The fields of a VM record that `VM.create` takes (XAPI's constructor), copied from the
/// source VM so the replica boots the same way.
pub(crate) const VM_CONSTRUCTOR_FIELDS: &[&str] = &[
    "name_description",
    "user_version",
    "memory_target",
    "memory_static_max",
    "memory_dynamic_max",
    "memory_dynamic_min",
    "memory_static_min",
    "VCPUs_params",
    "VCPUs_max",
    "VCPUs_at_startup",
    "actions_after_shutdown",
    "actions_after_reboot",
    "actions_after_crash",
    "PV_bootloader",
    "PV_kernel",
    "PV_ramdisk",
    "PV_args",
    "PV_bootloader_args",
    "PV_legacy_args",
    "HVM_boot_policy",
    "HVM_boot_params",
    "HVM_shadow_multiplier",
    "platform",
    "PCI_bus",
    "recommendations",
    "xenstore_data",
    "shutdown_delay",
    "start_delay",
    "order",
    "suspend_SR",
    "appliance",
    "hardware_platform_version",
    "has_vendor_device",
    "reference_label",
    "domain_type",
    "NVRAM",
];

pub(crate) fn string_map(map: &StringMap) -> Value {
    Value::Struct(
        map.iter()
            .map(|(k, v)| (k.clone(), Value::from(v.as_str())))
            .collect(),
    )
}

/// Set map entries in as few calls as the map allows. The map is read once: an entry it
/// already holds is left alone, an absent key is added, a changed one is removed and added
/// again (`add_to_<map>` refuses an existing key with `MAP_DUPLICATE_KEY`; `remove_from_<map>`
/// ignores a missing one). A key another client added since the read is replaced the same way.
/// Why: each call is a round trip to the host, and a cycle sets dozens of keys.
pub(crate) async fn set_entries(
    host: &XapiClient,
    class: &'static str,
    reference: &str,
    map: &str,
    entries: &[(&str, &str)],
) -> Result<(), ClientError> {
    let field = MapField {
        host,
        class,
        reference,
        map,
    };
    let held = field.read().await?;
    for (key, value) in entries {
        match held.get(*key) {
            Some(current) if current == value => {}
            Some(_) => field.replace(key, value).await?,
            None => match field.add(key, value).await {
                Err(e) if e.xapi_code() == Some("MAP_DUPLICATE_KEY") => {
                    field.replace(key, value).await?
                }
                added => added?,
            },
        }
    }
    Ok(())
}

/// Remove map entries. For more than one key the map is read first and only the keys it
/// holds are removed; a single key is removed blind, which costs the same one call.
pub(crate) async fn remove_entries(
    host: &XapiClient,
    class: &'static str,
    reference: &str,
    map: &str,
    keys: &[&str],
) -> Result<(), ClientError> {
    let field = MapField {
        host,
        class,
        reference,
        map,
    };
    let held = match keys.len() {
        0 => return Ok(()),
        1 => None,
        _ => Some(field.read().await?),
    };
    for key in keys {
        if held.as_ref().is_none_or(|held| held.contains_key(*key)) {
            field.remove(key).await?;
        }
    }
    Ok(())
}

/// One `(string -> string) map` field of one object on a host, e.g. a VM's `other_config`.
struct MapField<'a> {
    host: &'a XapiClient,
    class: &'static str,
    reference: &'a str,
    map: &'a str,
}

impl MapField<'_> {
    async fn read(&self) -> Result<StringMap, ClientError> {
        self.host
            .get_string_map(self.class, self.reference, self.map)
            .await
    }

    async fn add(&self, key: &str, value: &str) -> Result<(), ClientError> {
        let params = vec![
            Value::from(self.reference),
            Value::from(key),
            Value::from(value),
        ];
        self.host
            .call(&format!("{}.add_to_{}", self.class, self.map), params)
            .await
            .map(drop)
    }

    async fn replace(&self, key: &str, value: &str) -> Result<(), ClientError> {
        self.remove(key).await?;
        self.add(key, value).await
    }

    async fn remove(&self, key: &str) -> Result<(), ClientError> {
        let params = vec![Value::from(self.reference), Value::from(key)];
        self.host
            .call(&format!("{}.remove_from_{}", self.class, self.map), params)
            .await
            .map(drop)
    }
}

/// A snapshot VM and its disks (VBDs of type Disk), read from the host.
pub(crate) async fn load_snapshot(
    host: &XapiClient,
    reference: &str,
) -> Result<SourceSnapshot, ClientError> {
    let vm: VmRecord = host.get_record(reference).await?;
    let mut disks = Vec::new();
    for vbd_ref in &vm.vbds {
        let vbd: VbdRecord = host.get_record(vbd_ref).await?;
        if !vbd.is_disk() {
            continue;
        }
        let vdi: VdiRecord = host.get_record(&vbd.vdi).await?;
        disks.push(SnapshotDisk {
            userdevice: vbd.userdevice,
            vdi_ref: vbd.vdi,
            vdi_uuid: vdi.uuid,
            virtual_size: vdi.virtual_size,
            other_config: vdi.other_config,
        });
    }
    disks.sort_by_key(|d| {
        (
            d.userdevice.parse::<u32>().unwrap_or(u32::MAX),
            d.userdevice.clone(),
        )
    });
    Ok(SourceSnapshot {
        reference: reference.to_owned(),
        uuid: vm.uuid,
        snapshot_time: keys::parse_datetime(&vm.snapshot_time).unwrap_or(0),
        other_config: vm.other_config,
        disks,
    })
}

/// Destroy the disks of this job and VM that no VM uses any more (snapshot disks on the
/// source, replica disks on the target SR), returning their UUIDs. They are what a destroy
/// cut short between the VM and its disks leaves (a failed retention or rollback, a killed
/// run): [`destroy_vm_and_disks`] removes the VM first so that a half-deleted replica never
/// looks valid, and this sweep finishes the job on the next run.
async fn orphaned_disks(
    host: &XapiClient,
    id: &Identity,
    snapshots: bool,
) -> Result<Vec<String>, ClientError> {
    let mut destroyed = Vec::new();
    for (reference, vdi) in host.get_all_records::<VdiRecord>().await? {
        if is_orphaned_disk(&vdi, id, snapshots) {
            host.call("VDI.destroy", vec![Value::from(reference.as_str())])
                .await?;
            destroyed.push(vdi.uuid);
        }
    }
    Ok(destroyed)
}

/// A disk of this job and VM, on the job's SR for a replica disk, that no VBD attaches.
fn is_orphaned_disk(vdi: &VdiRecord, id: &Identity, snapshot: bool) -> bool {
    let config = &vdi.other_config;
    vdi.vbds.is_empty()
        && vdi.is_a_snapshot == snapshot
        && config.get(keys::JOB) == Some(&id.job_id)
        && config.get(keys::VM) == Some(&id.vm_uuid)
        && (snapshot || config.get(keys::SR) == Some(&id.sr_uuid))
}

/// The VDIs of a VM's disk VBDs.
pub(crate) async fn disk_vdis(host: &XapiClient, vm_ref: &str) -> Result<Vec<String>, ClientError> {
    let vm: VmRecord = host.get_record(vm_ref).await?;
    let mut vdis = Vec::new();
    for vbd_ref in &vm.vbds {
        let vbd: VbdRecord = host.get_record(vbd_ref).await?;
        if vbd.is_disk() {
            vdis.push(vbd.vdi);
        }
    }
    Ok(vdis)
}

/// `VM.destroy` keeps the disks, as in XAPI: destroy the VM, then its disk VDIs.
pub async fn destroy_vm_and_disks(host: &XapiClient, vm_ref: &str) -> Result<(), ClientError> {
    let vdis = disk_vdis(host, vm_ref).await?;
    host.call("VM.destroy", vec![Value::from(vm_ref)]).await?;
    for vdi in vdis {
        host.call("VDI.destroy", vec![Value::from(vdi.as_str())])
            .await?;
    }
    Ok(())
}
