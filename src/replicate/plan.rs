//! Pure decisions of a replication cycle (`xo-replication.md` §4, §6, §9, §10): which source
//! snapshot is the base, which replica disk each new disk builds on, full or delta, what an
//! interrupted run left behind, and which replicas and snapshots retention removes. The
//! runner reads the records, calls these, and carries the answers out.

use std::collections::BTreeMap;

use super::keys;
use super::layout::{TargetDisk, find_replica_disk};
use crate::xapi::records::{StringMap, VmRecord};

/// Whose objects these are: the job, its schedule, the source VM and the target SR.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub job_id: String,
    pub schedule_id: String,
    pub vm_uuid: String,
    pub sr_uuid: String,
}

/// A snapshot of the source VM, with its disks.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SourceSnapshot {
    pub reference: String,
    pub uuid: String,
    pub other_config: StringMap,
    /// `snapshot_time` as Unix seconds, the order of last resort.
    pub snapshot_time: i64,
    pub disks: Vec<SnapshotDisk>,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct SnapshotDisk {
    pub userdevice: String,
    pub vdi_ref: String,
    pub vdi_uuid: String,
    pub virtual_size: u64,
    pub other_config: StringMap,
}

/// A VM on the target: a replica of some job, or anything else.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TargetVm {
    pub reference: String,
    pub uuid: String,
    pub name_label: String,
    pub is_a_template: bool,
    pub is_a_snapshot: bool,
    /// For a snapshot, the VM it is a snapshot of.
    pub snapshot_of: String,
    pub power_state: String,
    pub other_config: StringMap,
    pub blocked_operations: StringMap,
}

fn owned_by(config: &StringMap, id: &Identity) -> bool {
    config.get(keys::JOB).is_some_and(|j| *j == id.job_id)
        && config.get(keys::VM).is_some_and(|v| *v == id.vm_uuid)
}

impl SourceSnapshot {
    /// Taken by this job for this VM: the keys on the VDIs (XO 6.x), or on the VM only
    /// (older XO, and `xo-cr-seed`). Replicas (with `xo:copy_of`) never count.
    pub fn is_job_snapshot(&self, id: &Identity) -> bool {
        let vdi_level = !self.disks.is_empty()
            && self.disks.iter().all(|d| {
                owned_by(&d.other_config, id) && !d.other_config.contains_key(keys::COPY_OF)
            });
        let vm_level =
            owned_by(&self.other_config, id) && !self.other_config.contains_key(keys::COPY_OF);
        vdi_level || vm_level
    }

    /// Marked exported after a committed replica, on every VDI, or on the VM.
    pub fn is_exported(&self) -> bool {
        let exported = |c: &StringMap| c.get(keys::EXPORTED).is_some_and(|v| v == "true");
        (!self.disks.is_empty() && self.disks.iter().all(|d| exported(&d.other_config)))
            || exported(&self.other_config)
    }

    /// `xo:backup:datetime` from the VDIs or the VM, else `snapshot_time`.
    pub fn datetime(&self) -> i64 {
        self.disks
            .iter()
            .map(|d| &d.other_config)
            .chain(std::iter::once(&self.other_config))
            .find_map(|c| c.get(keys::DATETIME).and_then(|t| keys::parse_datetime(t)))
            .unwrap_or(self.snapshot_time)
    }

    /// The longest delta chain behind this snapshot: the largest `deltaChainLength` on its
    /// VDIs, or the VM's.
    pub fn delta_chain_length(&self) -> u32 {
        let parse = |c: &StringMap| {
            c.get(keys::DELTA_CHAIN_LENGTH)
                .and_then(|v| v.parse::<u32>().ok())
        };
        self.disks
            .iter()
            .filter_map(|d| parse(&d.other_config))
            .max()
            .or_else(|| parse(&self.other_config))
            .unwrap_or(0)
    }
}

/// Why `vm` is no VM job `job_id` can replicate: a template or a snapshot, or a replica
/// this very job made (replicating it would copy the job's own output back).
pub fn not_replicable(vm: &VmRecord, job_id: &str) -> Option<&'static str> {
    if vm.is_a_template || vm.is_a_snapshot {
        return Some("it is a template or a snapshot, not a VM");
    }
    let ours = vm.other_config.get(keys::JOB).is_some_and(|j| j == job_id);
    (ours && vm.blocked_operations.contains_key("start"))
        .then_some("it is a replica made by this very job")
}

/// The base of the next delta: this job's newest exported snapshot of the VM.
pub fn select_base<'a>(
    snapshots: &'a [SourceSnapshot],
    id: &Identity,
) -> Option<&'a SourceSnapshot> {
    snapshots
        .iter()
        .filter(|s| s.is_job_snapshot(id) && s.is_exported())
        .max_by_key(|s| s.datetime())
}

/// How one disk of the new replica is made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiskPlan {
    /// A new empty VDI, and the whole disk sent.
    Full,
    /// The changes since the base sent onto a target disk with the base's content: written
    /// in place into the live replica's disk, or into a clone of `replica_vdi`.
    Delta {
        /// The base snapshot's VDI on the source (export `base=`).
        base_vdi: String,
        /// The target VDI holding the base's content (a target snapshot's disk, or a classic
        /// replica's disk), to clone.
        replica_vdi: String,
        /// The disk to update in place instead, if the run can (see `layout`).
        live: Option<String>,
        /// Found in the classic layout.
        classic: bool,
    },
}

/// What a cycle does with each disk of the new snapshot, by userdevice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CyclePlan {
    pub disks: BTreeMap<String, DiskPlan>,
    /// `xo:backup:deltaChainLength` for the new snapshot once committed.
    pub delta_chain_length: u32,
    /// Why disks go full when a base exists, for the report.
    pub notes: Vec<String>,
}

impl CyclePlan {
    pub fn is_full(&self) -> bool {
        self.disks.values().all(|d| *d == DiskPlan::Full)
    }
}

/// Full or delta, disk by disk. A disk goes delta when the base snapshot has a disk at the
/// same userdevice and the target holds its content ([`find_replica_disk`]), no larger than
/// the new disk. `full_interval` (0 = never) forces a full when `full_interval <=
/// deltaChainLength + 1`, XO's rule. `source_disks` are the source VM's own disks.
pub fn plan_cycle(
    new_disks: &[SnapshotDisk],
    base: Option<&SourceSnapshot>,
    target: &TargetSide<'_>,
    full_interval: u32,
) -> CyclePlan {
    let mut notes = Vec::new();
    let chain = base.map_or(0, SourceSnapshot::delta_chain_length);
    let forced_full = base.is_some() && full_interval != 0 && full_interval <= chain + 1;
    if forced_full {
        notes.push(format!(
            "full forced: full_interval {full_interval}, delta chain length {chain}"
        ));
    }
    let mut disks = BTreeMap::new();
    for disk in new_disks {
        let plan = match base {
            Some(base) if !forced_full => delta_for(disk, base, target, &mut notes),
            _ => DiskPlan::Full,
        };
        disks.insert(disk.userdevice.clone(), plan);
    }
    let all_delta = !disks.is_empty() && disks.values().all(|d| *d != DiskPlan::Full);
    CyclePlan {
        disks,
        delta_chain_length: if all_delta { chain + 1 } else { 0 },
        notes,
    }
}

/// What the planner knows of the target and the source VM.
#[derive(Debug, Clone, Copy)]
pub struct TargetSide<'a> {
    pub disks: &'a [TargetDisk],
    pub id: &'a Identity,
    /// The source VM's own disks (references): on one host, never a base.
    pub source_disks: &'a [String],
}

fn delta_for(
    disk: &SnapshotDisk,
    base: &SourceSnapshot,
    target: &TargetSide<'_>,
    notes: &mut Vec<String>,
) -> DiskPlan {
    let Some(base_disk) = base.disks.iter().find(|d| d.userdevice == disk.userdevice) else {
        notes.push(format!(
            "disk {}: not in the base snapshot, full",
            disk.userdevice
        ));
        return DiskPlan::Full;
    };
    match find_replica_disk(base_disk, target.disks, target.id, target.source_disks) {
        Ok(found) => {
            let size = target
                .disks
                .iter()
                .find(|d| d.reference == found.vdi)
                .map_or(0, |d| d.virtual_size);
            if size > disk.virtual_size {
                notes.push(format!(
                    "disk {}: the replica {} ({size} bytes) is larger than the disk ({} bytes), full",
                    disk.userdevice, found.uuid, disk.virtual_size
                ));
                return DiskPlan::Full;
            }
            DiskPlan::Delta {
                base_vdi: base_disk.vdi_ref.clone(),
                replica_vdi: found.vdi,
                live: found.live,
                classic: found.classic,
            }
        }
        Err(why) => {
            notes.push(format!("disk {}: {why}, full", disk.userdevice));
            DiskPlan::Full
        }
    }
}

/// Left by an interrupted run of this job for this VM on this SR: our importing key, or
/// XO's markers (the epoch datetime, or the importing name) with the job's keys.
pub fn is_interrupted_replica(vm: &TargetVm, id: &Identity) -> bool {
    if vm.is_a_snapshot || vm.is_a_template {
        return false;
    }
    let ours = owned_by(&vm.other_config, id)
        && vm
            .other_config
            .get(keys::SR)
            .is_none_or(|sr| *sr == id.sr_uuid);
    // The name alone is no proof: a committed replica is named after its source VM, whose
    // name anyone on the source may start with the importing prefix. A commit sets the start
    // block's text before the name, so a name of that form under the committed block text
    // is a VM's own name (a commit cut short still carries our importing key).
    let committed_block =
        vm.blocked_operations.get("start").map(String::as_str) == Some(keys::START_BLOCKED);
    ours && (vm.other_config.contains_key(keys::IMPORTING)
        || vm.other_config.get(keys::DATETIME).map(String::as_str)
            == Some(keys::IMPORTING_DATETIME)
        || (vm.name_label.starts_with(keys::IMPORTING_VM_PREFIX) && !committed_block))
}

/// A committed replica of this job and VM on this SR: XO's selection
/// (`listReplicatedVms`), which requires the start block on live VMs.
pub fn is_committed_replica(vm: &TargetVm, id: &Identity) -> bool {
    !vm.is_a_template
        && !is_interrupted_replica(vm, id)
        && (vm.other_config.get(keys::JOB) == Some(&id.job_id)
            || vm.other_config.get(keys::SCHEDULE) == Some(&id.schedule_id))
        && vm.other_config.get(keys::VM) == Some(&id.vm_uuid)
        && vm.other_config.get(keys::SR) == Some(&id.sr_uuid)
        && (vm.is_a_snapshot || vm.blocked_operations.contains_key("start"))
}

/// Source snapshots of this job that a run left unexported: never a base, to delete.
pub fn unexported_snapshots<'a>(
    snapshots: &'a [SourceSnapshot],
    id: &Identity,
) -> Vec<&'a SourceSnapshot> {
    snapshots
        .iter()
        .filter(|s| s.is_job_snapshot(id) && !s.is_exported())
        .collect()
}

/// This job's exported snapshots beyond `keep`, oldest first, never `base` (the next delta
/// needs it, whatever `keep` says).
pub fn snapshot_victims<'a>(
    snapshots: &'a [SourceSnapshot],
    id: &Identity,
    keep: u32,
    base_uuid: &str,
) -> Vec<&'a SourceSnapshot> {
    let mut exported: Vec<&SourceSnapshot> = snapshots
        .iter()
        .filter(|s| s.is_job_snapshot(id) && s.is_exported())
        .collect();
    // The base first, as the newest whatever its time stamp says: two cycles in one second
    // give equal datetimes, and the base must still count as one of the `keep`.
    exported.sort_by_key(|s| (s.uuid != base_uuid, std::cmp::Reverse(s.datetime())));
    let mut victims: Vec<&SourceSnapshot> = exported
        .into_iter()
        .skip(keep as usize)
        .filter(|s| s.uuid != base_uuid)
        .collect();
    victims.reverse();
    victims
}

/// A source snapshot whose tagging a run did not finish: none of the job's keys, or this
/// job's key without this VM's (`xo:backup:job` goes on before `xo:backup:vm`). It is no
/// job snapshot, nor another job's, so no rule based on the keys would ever remove it; the
/// caller checks that it bears the job's snapshot name.
pub fn is_tagging_cut_short(config: &StringMap, id: &Identity) -> bool {
    match config.get(keys::JOB) {
        None => true,
        Some(job) => *job == id.job_id && config.get(keys::VM) != Some(&id.vm_uuid),
    }
}

/// Fixtures the planning tests here and in the failover module share.
#[cfg(test)]
pub(crate) mod fixtures {
    use super::{Identity, StringMap, TargetVm};
    use crate::replicate::keys;

    pub(crate) fn id() -> Identity {
        Identity {
            job_id: "job".into(),
            schedule_id: "sched".into(),
            vm_uuid: "vm".into(),
            sr_uuid: "sr".into(),
        }
    }

    pub(crate) fn config(pairs: &[(&str, &str)]) -> StringMap {
        pairs
            .iter()
            .map(|(k, v)| ((*k).into(), (*v).into()))
            .collect()
    }

    /// A valid target snapshot of [`id`]'s VM, of source VM `name`, taken at `at`.
    pub(crate) fn target_snapshot(name: &str, at: i64) -> TargetVm {
        TargetVm {
            reference: "ref-s".into(),
            uuid: "s".into(),
            name_label: keys::target_snapshot_name(name, "cr", at),
            is_a_snapshot: true,
            other_config: config(&[
                (keys::JOB, "job"),
                (keys::VM, "vm"),
                (keys::SR, "sr"),
                (keys::DATETIME, &keys::datetime(at)),
            ]),
            ..TargetVm::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::{config, id};
    use super::*;

    fn job_keys(datetime: &str, extra: &[(&str, &str)]) -> StringMap {
        let mut c = config(&[
            (keys::JOB, "job"),
            (keys::VM, "vm"),
            (keys::DATETIME, datetime),
        ]);
        c.extend(config(extra));
        c
    }

    fn snapshot(uuid: &str, datetime: &str, vdi_extra: &[(&str, &str)]) -> SourceSnapshot {
        SourceSnapshot {
            reference: format!("ref-{uuid}"),
            uuid: uuid.into(),
            other_config: StringMap::new(),
            snapshot_time: 0,
            disks: ["0", "1"]
                .iter()
                .map(|dev| SnapshotDisk {
                    userdevice: (*dev).into(),
                    vdi_ref: format!("vdiref-{uuid}-{dev}"),
                    vdi_uuid: format!("vdi-{uuid}-{dev}"),
                    virtual_size: 100,
                    other_config: job_keys(datetime, vdi_extra),
                })
                .collect(),
        }
    }

    const EXPORTED: (&str, &str) = (keys::EXPORTED, "true");

    #[test]
    fn base_is_the_newest_exported_job_snapshot() {
        let snaps = vec![
            snapshot("old", "20240101T00:00:00Z", &[EXPORTED]),
            snapshot("new", "20240301T00:00:00Z", &[EXPORTED]),
            snapshot("failed", "20240401T00:00:00Z", &[]),
            SourceSnapshot {
                disks: snapshot("other-job", "20240501T00:00:00Z", &[EXPORTED])
                    .disks
                    .into_iter()
                    .map(|mut d| {
                        d.other_config
                            .insert(keys::JOB.into(), "someone-else".into());
                        d
                    })
                    .collect(),
                ..snapshot("other-job", "", &[])
            },
        ];
        assert_eq!(select_base(&snaps, &id()).unwrap().uuid, "new");
        assert_eq!(
            unexported_snapshots(&snaps, &id())
                .iter()
                .map(|s| s.uuid.as_str())
                .collect::<Vec<_>>(),
            ["failed"]
        );
    }

    #[test]
    fn a_seeded_snapshot_with_vm_level_keys_is_a_base() {
        // xo-cr-seed and XO <= 2023 write the keys on the snapshot VM only.
        let mut seeded = snapshot("seed", "", &[]);
        for d in &mut seeded.disks {
            d.other_config.clear();
        }
        seeded.other_config = job_keys("20240101T00:00:00Z", &[EXPORTED]);
        assert_eq!(select_base(&[seeded], &id()).unwrap().uuid, "seed");
    }

    fn target_copy(of: &str, size: u64) -> TargetDisk {
        TargetDisk {
            reference: format!("replica-of-{of}"),
            uuid: format!("uuid-replica-of-{of}"),
            virtual_size: size,
            other_config: config(&[(keys::COPY_OF, of)]),
            ..TargetDisk::default()
        }
    }

    fn side(disks: &[TargetDisk]) -> TargetSide<'_> {
        static ID: std::sync::OnceLock<Identity> = std::sync::OnceLock::new();
        TargetSide {
            disks,
            id: ID.get_or_init(id),
            source_disks: &[],
        }
    }

    #[test]
    fn per_disk_full_or_delta() {
        let base = snapshot(
            "base",
            "20240101T00:00:00Z",
            &[EXPORTED, (keys::DELTA_CHAIN_LENGTH, "2")],
        );
        let new = snapshot("new", "20240102T00:00:00Z", &[]).disks;
        // Disk 0 has its replica; disk 1 has none.
        let targets = vec![target_copy("vdi-base-0", 100)];
        let plan = plan_cycle(&new, Some(&base), &side(&targets), 0);
        assert_eq!(
            plan.disks["0"],
            DiskPlan::Delta {
                base_vdi: "vdiref-base-0".into(),
                replica_vdi: "replica-of-vdi-base-0".into(),
                live: Some("replica-of-vdi-base-0".into()),
                classic: true,
            }
        );
        assert_eq!(plan.disks["1"], DiskPlan::Full);
        assert_eq!(
            plan.delta_chain_length, 0,
            "any full disk restarts the chain"
        );
        assert!(!plan.is_full());
        // Both replicas present: all delta, chain grows.
        let targets = vec![
            target_copy("vdi-base-0", 100),
            target_copy("vdi-base-1", 50),
        ];
        let plan = plan_cycle(&new, Some(&base), &side(&targets), 0);
        assert_eq!(plan.delta_chain_length, 3);
        // A replica larger than the disk, or two candidates: full.
        let plan = plan_cycle(
            &new,
            Some(&base),
            &side(&[target_copy("vdi-base-0", 200)]),
            0,
        );
        assert_eq!(plan.disks["0"], DiskPlan::Full);
        let dup = vec![
            target_copy("vdi-base-0", 100),
            target_copy("vdi-base-0", 100),
        ];
        assert_eq!(
            plan_cycle(&new, Some(&base), &side(&dup), 0).disks["0"],
            DiskPlan::Full
        );
        // No base: everything full, chain 0.
        let plan = plan_cycle(&new, None, &side(&targets), 0);
        assert!(plan.is_full());
        assert_eq!(plan.delta_chain_length, 0);
    }

    #[test]
    fn full_interval_rule() {
        let targets = vec![
            target_copy("vdi-base-0", 100),
            target_copy("vdi-base-1", 100),
        ];
        let new = snapshot("new", "", &[]).disks;
        for (interval, chain, full) in [
            (0, 9, false),
            (3, 1, false),
            (3, 2, true),
            (1, 0, true),
            (5, 7, true),
        ] {
            let base = snapshot(
                "base",
                "20240101T00:00:00Z",
                &[EXPORTED, (keys::DELTA_CHAIN_LENGTH, &chain.to_string())],
            );
            let plan = plan_cycle(&new, Some(&base), &side(&targets), interval);
            assert_eq!(plan.is_full(), full, "interval {interval} chain {chain}");
        }
    }

    fn replica(name: &str, datetime: &str, blocked: bool) -> TargetVm {
        TargetVm {
            reference: format!("ref-{name}"),
            uuid: name.into(),
            name_label: name.into(),
            other_config: job_keys(datetime, &[(keys::SR, "sr"), (keys::SCHEDULE, "sched")]),
            blocked_operations: if blocked {
                config(&[("start", keys::START_BLOCKED)])
            } else {
                StringMap::new()
            },
            ..TargetVm::default()
        }
    }

    #[test]
    fn interrupted_runs_are_recognised_and_other_jobs_objects_are_not() {
        let vms = [
            replica("r1", "20240101T00:00:00Z", true),
            replica("started", "20231231T00:00:00Z", false),
            replica("importing", keys::IMPORTING_DATETIME, true),
            TargetVm {
                other_config: config(&[(keys::JOB, "other")]),
                ..replica("foreign", "20200101T00:00:00Z", true)
            },
        ];
        let names = |v: Vec<&TargetVm>| v.iter().map(|r| r.uuid.clone()).collect::<Vec<_>>();
        let interrupted: Vec<_> = vms
            .iter()
            .filter(|v| is_interrupted_replica(v, &id()))
            .collect();
        assert_eq!(names(interrupted), ["importing"]);
        let committed: Vec<_> = vms
            .iter()
            .filter(|v| is_committed_replica(v, &id()))
            .collect();
        assert_eq!(names(committed), ["r1"]);
    }

    /// A committed replica of a source VM named like an import in progress is not an
    /// interrupted import (its name comes from the source); XO's and ours still are.
    #[test]
    fn an_importing_name_alone_under_the_committed_block_is_a_replica() {
        let named = |blocked: Option<&str>, extra: &[(&str, &str)]| {
            let mut vm = replica("r", "20240101T00:00:00Z", false);
            vm.name_label = format!(
                "{}web01 - CR - (20240101T000000Z)",
                keys::IMPORTING_VM_PREFIX
            );
            vm.blocked_operations = blocked.map_or_else(StringMap::new, |text| {
                config(&[("start", text), ("start_on", text)])
            });
            vm.other_config.extend(
                extra
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
            );
            vm
        };
        let committed = named(Some(keys::START_BLOCKED), &[]);
        assert!(!is_interrupted_replica(&committed, &id()));
        assert!(is_committed_replica(&committed, &id()));
        for interrupted in [
            named(Some(keys::IMPORTING_BLOCKED), &[]),
            named(None, &[]),
            named(Some(keys::START_BLOCKED), &[(keys::IMPORTING, "x")]),
        ] {
            assert!(is_interrupted_replica(&interrupted, &id()));
        }
    }

    #[test]
    fn snapshot_retention_keeps_the_base() {
        let snaps = vec![
            snapshot("s1", "20240101T00:00:00Z", &[EXPORTED]),
            snapshot("s2", "20240102T00:00:00Z", &[EXPORTED]),
            snapshot("s3", "20240103T00:00:00Z", &[EXPORTED]),
        ];
        let names = |v: Vec<&SourceSnapshot>| v.iter().map(|s| s.uuid.clone()).collect::<Vec<_>>();
        assert_eq!(
            names(snapshot_victims(&snaps, &id(), 1, "s3")),
            ["s1", "s2"]
        );
        assert_eq!(
            names(snapshot_victims(&snaps, &id(), 0, "s3")),
            ["s1", "s2"]
        );
        assert_eq!(names(snapshot_victims(&snaps, &id(), 2, "s3")), ["s1"]);
        // Found by the fault campaign: a base made in the same second as the previous one.
        let same_second = vec![
            snapshot("old", "20240103T00:00:00Z", &[EXPORTED]),
            snapshot("base", "20240103T00:00:00Z", &[EXPORTED]),
        ];
        for order in [same_second.clone(), same_second.into_iter().rev().collect()] {
            assert_eq!(names(snapshot_victims(&order, &id(), 1, "base")), ["old"]);
        }
    }

    /// A run killed while it tags its snapshot leaves the keys it had set: the job's without
    /// the VM's is neither a job snapshot nor another job's.
    #[test]
    fn a_tagging_stopped_before_the_vm_key_is_cut_short() {
        let cut = |pairs: &[(&str, &str)]| is_tagging_cut_short(&config(pairs), &id());
        assert!(cut(&[]));
        assert!(cut(&[(keys::DATETIME, "20240115T10:20:30Z")]));
        assert!(cut(&[
            (keys::DATETIME, "20240115T10:20:30Z"),
            (keys::JOB, "job")
        ]));
        assert!(cut(&[(keys::JOB, "job"), (keys::VM, "another vm")]));
        assert!(!cut(&[(keys::JOB, "job"), (keys::VM, "vm")]));
        // Another job's snapshot of the same name is that job's to remove.
        assert!(!cut(&[(keys::JOB, "another job")]));
    }
}
