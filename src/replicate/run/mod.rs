//! One replication cycle of one VM (`xo-replication.md` §3-§10), carrying out [`plan`]'s
//! and [`layout`]'s decisions: clean what interrupted runs left, find the base, snapshot
//! the source, write the changes into the live replica (in place, or into a new one built
//! from clones of the disks holding the base's content), commit it, snapshot it on the
//! target, then apply retention on both sides.
//!
//! Atomicity: a restore point (a target snapshot, or a classic replica VM) is never written.
//! The live replica carries the importing markers from the run's first write until its
//! commit, its snapshot becomes valid only once whole, and any failure destroys the live
//! replica being written, so no broken replica ever looks valid; the previous run's target
//! snapshot is the restore point meanwhile.
//!
//! [`layout`]: super::layout
//!
//! [`plan`]: super::plan

mod events;
mod fill;
mod live;
mod route;
mod source_disks;

use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::clock::Clock;
use super::devices::{Devices, apply_devices};
pub use super::error::{CycleCause, CycleError, ErrorKind, Phase};
use super::health::{HealthReport, health_check};
use super::inventory::{
    VdiList, destroy_orphaned_disks, destroy_orphans_among, list_target_vms, load_snapshot,
    snapshot_from_record, sr_disks,
};
use super::keys;
use super::layout::{restore_points, retention_victims};
use super::networks::NicPlan;
use super::plan::{
    CyclePlan, DiskPlan, Identity, SnapshotDisk, SourceSnapshot, TargetSide, TargetVm,
    is_interrupted_replica, is_tagging_cut_short, not_replicable, plan_cycle, select_base,
    snapshot_victims, unexported_snapshots,
};
use super::replica::{create_replica_vm, roll_back};
use super::transport::TransportSettings;
use crate::xapi::client::{ClientError, XapiClient};
use crate::xapi::ops::{Class, MapName};
use crate::xapi::records::{Record, SrRecord, VdiRecord, VmRecord};
use crate::xapi::rpc::Value;
use crate::xapi::transfer::TransferOptions;

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
    /// The job's `network_map`: source network (UUID or name) -> target network.
    pub network_map: Vec<(String, String)>,
    /// Replica interfaces get MACs of the target's choosing.
    pub new_mac_addresses: bool,
    /// Run the health check after a successful cycle, with this timeout.
    pub health_check: Option<std::time::Duration>,
    /// The job's `transport`, `cbt`, `nbd_concurrency` and `purge_snapshot_data`.
    pub transport: TransportSettings,
}

#[derive(Debug, Clone, Serialize)]
pub struct DiskReport {
    pub userdevice: String,
    /// The disk's VDI name.
    pub name: String,
    pub mode: &'static str,
    /// `nbd` (changed extents read over NBD) or `stream` (the export path).
    pub transport: &'static str,
    pub virtual_size: u64,
    /// Bytes read from the source: disk bytes over NBD, stream bytes from an export.
    pub bytes_read: u64,
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
    /// The live replica, which now holds this run's content.
    pub replica: String,
    pub replica_name: String,
    /// The target snapshot this run left: its restore point.
    pub target_snapshot: String,
    /// The restore point's content time (the source snapshot's), RFC 3339.
    pub datetime: String,
    /// The same in Xen Orchestra's form, as `xo:backup:datetime` holds it on the snapshots
    /// of both sides, to find them by.
    pub xo_datetime: String,
    /// `in_place` (the live replica was updated) or `new_live_replica`.
    pub layout: &'static str,
    /// The source snapshot.
    pub snapshot: String,
    pub deleted_replicas: Vec<String>,
    pub deleted_snapshots: Vec<String>,
    pub cleaned_up: Vec<String>,
    /// The replica's interfaces and the network each went on, and why.
    pub interfaces: Vec<NicPlan>,
    /// Disks neither snapshotted nor copied (`[NOBAK]` in their name).
    pub skipped_disks: Vec<SkippedDisk>,
    /// The health check run after the cycle, when the job asks for one.
    pub health_check: Option<HealthOutcome>,
    pub notes: Vec<String>,
}

/// A health check after a cycle: its report, or why it could not run.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum HealthOutcome {
    Checked(HealthReport),
    Error { passed: bool, error: String },
}

impl HealthOutcome {
    pub fn passed(&self) -> bool {
        matches!(self, HealthOutcome::Checked(r) if r.passed)
    }
}

pub use events::{CycleEvent, CycleObserver, DiskLabel, EventKind, Refusal};
use live::Writing;
pub use source_disks::SkippedDisk;
use source_disks::SourceDisks;
pub(crate) use source_disks::is_left_out;

/// Run one cycle for `vm_uuid`, telling `observer` of each step and each disk's progress.
/// When `cancel` fires, the cycle stops at the next step (a transfer at once), destroys
/// what it created, and fails with [`ErrorKind::Cancelled`]; a commit already under way
/// completes.
pub async fn replicate_vm(
    source: &XapiClient,
    target: &XapiClient,
    settings: &CycleSettings,
    vm_uuid: &str,
    observer: CycleObserver<'_>,
    cancel: &CancellationToken,
) -> Result<CycleReport, CycleError> {
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
        live_ref: None,
        exported: false,
        observer: Mutex::new(observer),
        vm_name: String::new(),
        routes: Default::default(),
        transport_notes: Vec::new(),
    };
    let outcome = run_cycle(&mut cycle, vm_uuid).await;
    if let Err(e) = &outcome {
        cycle.emit(EventKind::Failed(e));
    }
    outcome
}

/// [`replicate_vm`]'s steps.
async fn run_cycle(cycle: &mut Cycle<'_>, vm_uuid: &str) -> Result<CycleReport, CycleError> {
    let started = Instant::now();
    let (source, target, settings) = (cycle.source, cycle.target, cycle.settings);
    // Read once, raw: the record the cycle plans with and the settings the replica takes.
    let vm_ref = cycle.on_source(source.get_by_uuid::<VmRecord>(vm_uuid).await)?;
    let raw_vm = cycle.on_source(source.vm_record_value(&vm_ref).await)?;
    let vm = VmRecord::from_value(&raw_vm).map_err(|e| {
        let e = ClientError::Protocol {
            host: source.host(),
            method: "VM.get_record".into(),
            message: e.to_string(),
        };
        cycle.fail(None, Some(source), e.into())
    })?;
    cycle.vm_name.clone_from(&vm.name_label);
    if let Some(why) = not_replicable(&vm, &settings.job_id) {
        return Err(cycle.fail(None, None, CycleCause::Invalid(why.into())));
    }

    let vbds = cycle.vm_vbds(&vm).await?;
    let devices = cycle.plan_devices(&vm, &vbds).await?;
    let mut own_disks = cycle.source_disks(&vbds).await?;
    let skipped_disks = std::mem::take(&mut own_disks.skipped);
    let mut notes = std::mem::take(&mut own_disks.notes);
    notes.extend(devices.notes.iter().cloned());

    cycle.enter(Phase::Cleanup)?;
    let (mut cleaned_up, listed) = cycle.clean_target().await?;
    let mut vm = vm;
    let (untagged, mut snapshots) = cycle.tagged_snapshots(&vm).await?;
    for untagged in untagged {
        cycle.on_source(source.destroy_vm_and_disks(&untagged).await)?;
        vm.snapshots.retain(|s| *s != untagged);
        cleaned_up.push(format!("untagged source snapshot {untagged}"));
    }
    for stale in unexported_snapshots(&snapshots, &cycle.id) {
        cycle.on_source(source.destroy_vm_and_disks(&stale.reference).await)?;
        cleaned_up.push(format!("source snapshot {}", stale.uuid));
    }
    snapshots.retain(|s| !s.is_job_snapshot(&cycle.id) || s.is_exported());
    for orphan in cycle.on_source(destroy_orphaned_disks(source, &cycle.id, true).await)? {
        cleaned_up.push(format!("orphaned source snapshot disk {orphan}"));
    }
    let base = select_base(&snapshots, &cycle.id).cloned();

    cycle.enter(Phase::Snapshot)?;
    cycle.enable_cbt(&own_disks).await?;
    let now = settings.clock.unix();
    let snapshot = cycle
        .snapshot(&vm_ref, &vm, &own_disks.ignored, now)
        .await?;
    cycle.emit(EventKind::SnapshotTaken {
        snapshot: &snapshot.uuid,
        base: base.as_ref().map(|b| b.uuid.as_str()),
    });
    let outcome = cycle
        .replicate_from(
            &raw_vm,
            &vm,
            &snapshot,
            base.as_ref(),
            &snapshots,
            &devices,
            &own_disks.own,
            listed,
            now,
        )
        .await;
    let mut replicated = match outcome {
        Ok(done) => done,
        Err(e) => {
            // A snapshot never exported is no base: remove it now; if this fails too, the
            // next run's clean-up does it. One exported is the next base: keep it.
            if !cycle.exported {
                let _ = source.destroy_vm_and_disks(&snapshot.reference).await;
            }
            return Err(e);
        }
    };

    cycle.purge_base(base.as_ref(), &mut replicated.notes).await;

    // Retention runs even when cancelled: the new replica is committed, and retention is
    // what keeps the target's replica count bounded.
    cycle.emit(EventKind::Committed {
        replica: &replicated.uuid,
        target_snapshot: &replicated.target_snapshot,
    });
    cycle.phase = Phase::Retention;
    cycle.emit(EventKind::Step(Phase::Retention));
    let mut deleted_replicas = Vec::new();
    // Read again, not reused from the clean-up: the commit took a target snapshot (maybe of
    // a new live replica) and superseding destroyed former live replicas since.
    let vms = cycle.target_vms().await?;
    let points = restore_points(&vms, &cycle.id);
    for victim in retention_victims(&points, settings.retention) {
        if victim.uuid == replicated.target_snapshot {
            continue;
        }
        cycle.on_target(target.destroy_vm_and_disks(&victim.reference).await)?;
        deleted_replicas.push(victim.uuid.clone());
    }
    // The VM's snapshots now: those read before the snapshot, less those destroyed since,
    // and the new one, read again as its commit marked it exported. The lease keeps any
    // other run of this job and VM from adding one meanwhile. A purge changed the base's
    // disks: then the VM and every snapshot are read again.
    let snapshots = if settings.transport.purge_snapshot_data {
        let vm_now: VmRecord = cycle.on_source(source.get_record(&vm_ref).await)?;
        cycle.source_snapshots(&vm_now).await?
    } else {
        let exported = cycle.on_source(load_snapshot(source, &snapshot.reference).await)?;
        snapshots.into_iter().chain([exported]).collect()
    };
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
    let kept = snapshots
        .iter()
        .filter(|s| !deleted_snapshots.contains(&s.uuid));
    cycle.sweep_purged(kept, &mut replicated.notes).await;
    cycle.emit(EventKind::RetentionDone {
        deleted_replicas: &deleted_replicas,
        deleted_snapshots: &deleted_snapshots,
    });

    let health_check = match settings.health_check {
        Some(timeout) => {
            cycle.emit(EventKind::HealthCheckStarted);
            let outcome =
                match health_check(target, &cycle.id, timeout, settings.clock.as_ref()).await {
                    Ok(report) => HealthOutcome::Checked(report),
                    Err(e) => HealthOutcome::Error {
                        passed: false,
                        error: e.to_string(),
                    },
                };
            cycle.emit(EventKind::HealthCheckDone(&outcome));
            Some(outcome)
        }
        None => None,
    };

    let disks = replicated.disks;
    let modes: Vec<&str> = disks.iter().map(|d| d.mode).collect();
    let mode = if modes.iter().all(|m| *m == "full") {
        "full"
    } else if modes.iter().all(|m| *m == "delta") {
        "delta"
    } else {
        "mixed"
    };
    let report = CycleReport {
        vm: vm_uuid.to_owned(),
        vm_name: vm.name_label.clone(),
        mode,
        bytes_sent: disks.iter().map(|d| d.bytes_sent).sum(),
        virtual_size: disks.iter().map(|d| d.virtual_size).sum(),
        disks,
        seconds: started.elapsed().as_secs_f64(),
        replica: replicated.uuid,
        replica_name: replicated.name,
        target_snapshot: replicated.target_snapshot,
        datetime: keys::rfc3339(now),
        xo_datetime: keys::datetime(now),
        layout: if replicated.in_place {
            "in_place"
        } else {
            "new_live_replica"
        },
        snapshot: snapshot.uuid,
        deleted_replicas,
        deleted_snapshots,
        cleaned_up,
        interfaces: devices.nics.into_iter().map(|(plan, _)| plan).collect(),
        skipped_disks,
        health_check,
        notes: notes
            .into_iter()
            .chain(replicated.notes)
            .chain(std::mem::take(&mut cycle.transport_notes))
            .collect(),
    };
    cycle.emit(EventKind::Done(&report));
    Ok(report)
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
    /// The live replica being written, destroyed if the run fails before the source
    /// snapshot is marked exported.
    live_ref: Option<String>,
    /// The source snapshot is marked exported: the next run's base, whatever happens next.
    exported: bool,
    /// Told of each step; behind a lock so that the cycle's `&self` steps can tell it too.
    observer: Mutex<CycleObserver<'a>>,
    /// The VM's name label, once read.
    vm_name: String,
    /// Each disk's transport, by userdevice (`route`).
    routes: std::collections::BTreeMap<String, route::Route>,
    /// Disks that fell back from NBD to the export path mid-cycle, and why.
    transport_notes: Vec<String>,
}

/// The target's VMs and VDIs, as one cycle read them and changed them since.
struct TargetListing {
    vms: Vec<TargetVm>,
    vdis: VdiList,
}

/// A committed live replica and its new target snapshot.
struct Replicated {
    uuid: String,
    name: String,
    target_snapshot: String,
    in_place: bool,
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

    /// Move on to `phase` and say so, unless the caller has cancelled.
    fn enter(&mut self, phase: Phase) -> Result<(), CycleError> {
        if self.cancel.is_cancelled() {
            return Err(self.fail(None, None, CycleCause::Cancelled));
        }
        self.phase = phase;
        self.emit(EventKind::Step(phase));
        Ok(())
    }

    /// Tell the observer of `kind`. A lock poisoned by an observer that panicked is not
    /// called again: that panic is already failing this cycle.
    fn emit(&self, kind: EventKind<'_>) {
        let event = CycleEvent {
            vm: &self.id.vm_uuid,
            vm_name: &self.vm_name,
            kind,
        };
        if let Ok(mut observer) = self.observer.lock() {
            (*observer)(&event);
        }
    }

    fn on_source<T>(&self, result: Result<T, ClientError>) -> Result<T, CycleError> {
        result.map_err(|e| self.fail(None, Some(self.source), e.into()))
    }

    fn on_target<T>(&self, result: Result<T, ClientError>) -> Result<T, CycleError> {
        result.map_err(|e| self.fail(None, Some(self.target), e.into()))
    }

    /// What an interrupted run of this job and VM left on the target: a replica or live
    /// replica marked importing, a target snapshot taken but not yet made valid. Also the
    /// target's VMs and VDIs as the clean-up leaves them, for the planning to reuse.
    async fn clean_target(&self) -> Result<(Vec<String>, TargetListing), CycleError> {
        let mut cleaned = Vec::new();
        let mut vms = Vec::new();
        for vm in self.target_vms().await? {
            if is_interrupted_replica(&vm, &self.id) || is_interrupted_snapshot(&vm, &self.id) {
                self.on_target(self.target.destroy_vm_and_disks(&vm.reference).await)?;
                cleaned.push(format!("interrupted replica {}", vm.uuid));
            } else {
                vms.push(vm);
            }
        }
        // Read after the destroys above, which took those VMs' disks with them.
        let vdis = self.on_target(self.target.get_all_records::<VdiRecord>().await)?;
        let (orphans, vdis) =
            self.on_target(destroy_orphans_among(self.target, vdis, &self.id, false).await)?;
        for orphan in orphans {
            cleaned.push(format!("orphaned replica disk {orphan}"));
        }
        Ok((cleaned, TargetListing { vms, vdis }))
    }

    /// The target's VMs and VDIs for the planning: `listed` by the clean-up, as nothing
    /// since (the source snapshot and its tagging) wrote to the target. Unless the source
    /// is the target: then those steps changed the lists, and they are read again.
    async fn planning_listing(&self, listed: TargetListing) -> Result<TargetListing, CycleError> {
        if self.source.host() != self.target.host() {
            return Ok(listed);
        }
        Ok(TargetListing {
            vms: self.target_vms().await?,
            vdis: self.on_target(self.target.get_all_records::<VdiRecord>().await)?,
        })
    }

    /// `vm`'s snapshots, each record read once: those with this job's snapshot name whose
    /// tagging was cut short (none of the job's keys, or the job's without the VM's), and
    /// the others with their disks. A run stopped between `VM.snapshot` and the end of the
    /// tagging left the first, and no rule based on the keys would ever remove them.
    async fn tagged_snapshots(
        &self,
        vm: &VmRecord,
    ) -> Result<(Vec<String>, Vec<SourceSnapshot>), CycleError> {
        let name = keys::snapshot_name(&self.settings.job_name, &vm.name_label);
        let (mut untagged, mut tagged) = (Vec::new(), Vec::new());
        for reference in &vm.snapshots {
            let snapshot: VmRecord = self.on_source(self.source.get_record(reference).await)?;
            if snapshot.name_label == name && is_tagging_cut_short(&snapshot.other_config, &self.id)
            {
                untagged.push(reference.clone());
            } else {
                let loaded = snapshot_from_record(self.source, reference, snapshot).await;
                tagged.push(self.on_source(loaded)?);
            }
        }
        Ok((untagged, tagged))
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
        ignored: &[String],
        now: i64,
    ) -> Result<SourceSnapshot, CycleError> {
        let source = self.source;
        let name = keys::snapshot_name(&self.settings.job_name, &vm.name_label);
        let reference = self.on_source(source.snapshot_vm(vm_ref, &name, ignored).await)?;
        let tag = async {
            // The maps as read here, kept in step with the writes: the tagged snapshot,
            // without reading it again.
            let mut snapshot = load_snapshot(source, &reference).await?;
            let datetime = keys::datetime(now);
            let common = [
                (keys::DATETIME, datetime.as_str()),
                (keys::JOB, self.id.job_id.as_str()),
                (keys::SCHEDULE, self.id.schedule_id.as_str()),
                (keys::VM, self.id.vm_uuid.as_str()),
            ];
            let config = MapName::OtherConfig;
            let held = &mut snapshot.other_config;
            source
                .set_entries_in(Class::Vm, &reference, config, held, &common)
                .await?;
            source
                .remove_entries_in(
                    Class::Vm,
                    &reference,
                    config,
                    held,
                    &[keys::SR, keys::EXPORTED],
                )
                .await?;
            for disk in &mut snapshot.disks {
                let vdi = disk.vdi_ref.as_str();
                let held = &mut disk.other_config;
                let content = (keys::CONTENT_KEY, disk.vdi_uuid.as_str());
                let entries: Vec<(&str, &str)> = common.into_iter().chain([content]).collect();
                source
                    .set_entries_in(Class::Vdi, vdi, config, held, &entries)
                    .await?;
                let removed = [keys::SR, keys::EXPORTED, keys::COPY_OF];
                source
                    .remove_entries_in(Class::Vdi, vdi, config, held, &removed)
                    .await?;
            }
            Ok::<_, ClientError>(snapshot)
        };
        match tag.await {
            Ok(snapshot) => Ok(snapshot),
            Err(e) => {
                let _ = source.destroy_vm_and_disks(&reference).await;
                Err(self.fail(None, Some(source), e.into()))
            }
        }
    }

    /// Replica preparation, transfer and commit; on failure, the live replica being written
    /// and everything the run created are destroyed (the restore points stay).
    #[allow(clippy::too_many_arguments)]
    async fn replicate_from(
        &mut self,
        raw_vm: &Value,
        vm: &VmRecord,
        snapshot: &SourceSnapshot,
        base: Option<&SourceSnapshot>,
        other_snapshots: &[SourceSnapshot],
        devices: &Devices,
        own_disks: &[String],
        listed: TargetListing,
        now: i64,
    ) -> Result<Replicated, CycleError> {
        self.enter(Phase::ReplicaCreation)?;
        let TargetListing { vms, vdis } = self.planning_listing(listed).await?;
        let target = self.target;
        let sr_ref = self.on_target(target.get_by_uuid::<SrRecord>(&self.id.sr_uuid).await)?;
        let disks = self.on_target(sr_disks(target, &sr_ref, vdis).await)?;
        let side = TargetSide {
            disks: &disks,
            id: &self.id,
            source_disks: own_disks,
        };
        let full_interval = self.settings.full_interval;
        let mut plan = plan_disks(&snapshot.disks, base, other_snapshots, &side, full_interval);
        self.route_disks(&snapshot.disks, &mut plan).await?;
        let writing = self.choose_writing(&mut plan, &disks, &vms).await?;
        let live_ref = match &writing {
            Writing::InPlace { vm: live, classic } => {
                if *classic {
                    self.preserve_classic(live, vm, now).await?;
                }
                self.live_ref = Some(live.reference.clone());
                // Once its marking starts, the live replica is being written: a failure
                // destroys it like any other (its snapshots stay).
                if let Err(e) = self.prepare_in_place(live, raw_vm, vm, now).await {
                    roll_back(self.target, &live.reference, &self.created_vdis).await;
                    return Err(e);
                }
                live.reference.clone()
            }
            Writing::NewLive => {
                let created = self
                    .on_target(create_replica_vm(self.target, &self.id, raw_vm, vm, now).await)?;
                self.live_ref = Some(created.clone());
                created
            }
        };
        let outcome = match apply_devices(self.target, &live_ref, devices).await {
            Ok(()) => {
                self.fill_replica(&live_ref, &writing, vm, snapshot, &plan, &sr_ref, now)
                    .await
            }
            Err(e) => Err(self.fail(None, Some(self.target), e.into())),
        };
        match outcome {
            Ok((uuid, name, target_snapshot, disks)) => {
                let mut notes = plan.notes;
                // Every run, not only one that made a new live replica: one that could
                // not be removed then is removed by the next. The live replica is
                // committed: failing to remove a former one is a note, not a failure.
                match self.supersede(&live_ref, &vms).await {
                    Ok(done) => notes.extend(done),
                    Err(e) => notes.push(format!("removing a former live replica: {e}")),
                }
                Ok(Replicated {
                    uuid,
                    name,
                    target_snapshot,
                    in_place: matches!(writing, Writing::InPlace { .. }),
                    disks,
                    notes,
                })
            }
            Err(e) => {
                if !self.exported {
                    roll_back(self.target, &live_ref, &self.created_vdis).await;
                }
                Err(e)
            }
        }
    }
}

/// A target snapshot a commit took but did not live to make valid: this job's keys and our
/// importing key, copied from the live replica.
fn is_interrupted_snapshot(vm: &TargetVm, id: &Identity) -> bool {
    vm.is_a_snapshot
        && vm.other_config.contains_key(keys::IMPORTING)
        && vm.other_config.get(keys::JOB) == Some(&id.job_id)
        && vm.other_config.get(keys::VM) == Some(&id.vm_uuid)
        && vm.other_config.get(keys::SR) == Some(&id.sr_uuid)
}

/// Full or delta, disk by disk, for `new_disks` (the new snapshot's; for the dry run, the
/// VM's own, which it will be a snapshot of): from this job's `base` when there is one, else
/// from the content keys of the VM's `other_snapshots`. Reads nothing: the cycle and the
/// dry run ([`preflight`](super::preflight)) plan alike.
pub(crate) fn plan_disks(
    new_disks: &[SnapshotDisk],
    base: Option<&SourceSnapshot>,
    other_snapshots: &[SourceSnapshot],
    side: &TargetSide<'_>,
    full_interval: u32,
) -> CyclePlan {
    match base {
        Some(base) => plan_cycle(new_disks, Some(base), side, full_interval),
        None => content_key_plan(new_disks, other_snapshots, side),
    }
}

/// Without a base of this job, any snapshot of the VM whose content the target holds under
/// its content key (XO 6.5+ §4, "fallback"): a snapshot another job took, or the target
/// snapshot of a replica that was failed over and is now replicated back (failback). The
/// newest first; the first with a delta for some disk is the base.
fn content_key_plan(
    new_disks: &[SnapshotDisk],
    snapshots: &[SourceSnapshot],
    target: &TargetSide<'_>,
) -> CyclePlan {
    let mut candidates: Vec<&SourceSnapshot> = snapshots
        .iter()
        .filter(|s| {
            s.disks
                .iter()
                .any(|d| d.other_config.contains_key(keys::DATETIME))
        })
        .collect();
    candidates.sort_by_key(|s| std::cmp::Reverse(s.datetime()));
    for candidate in candidates {
        let mut plan = plan_cycle(new_disks, Some(candidate), target, 0);
        if !plan.is_full() {
            // Another job's chain: this job's own starts here.
            plan.delta_chain_length = 1;
            plan.notes = vec![format!(
                "base found by content key: snapshot {} of another chain",
                candidate.uuid
            )];
            return plan;
        }
    }
    plan_cycle(new_disks, None, target, 0)
}
