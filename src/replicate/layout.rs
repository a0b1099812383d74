//! What a job's objects on the target are, in both layouts Xen Orchestra has written
//! (`xo-replication.md` §6, §7.2, §10.1), and which target disk holds a base's content.
//!
//! * **Current layout (XO 6.3+, and vhdsync's):** one *live replica* VM, updated in place by
//!   every run, plus one *target snapshot* of it per successful run. Only the target
//!   snapshots carry the job's keys; the live replica is recognised as the VM they are
//!   snapshots of.
//! * **Classic layout (XO up to 6.2, `xo-cr-seed`, vhdsync before this layout):** one
//!   *replica VM* per run, start-blocked, carrying the keys itself.
//!
//! Everything here is pure: the runner, `status`, `failover` and retention read the records
//! and ask these functions.

use std::cmp::Reverse;

use super::keys;
use super::plan::{Identity, SnapshotDisk, TargetVm, is_committed_replica, is_interrupted_replica};
use crate::xapi::records::StringMap;

/// The kind of a job's object on the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PointKind {
    /// The VM of the current layout that each run updates in place.
    LiveReplica,
    /// A snapshot of the live replica, taken after a successful run.
    TargetSnapshot,
    /// A VM of the classic layout, one per run.
    ReplicaVm,
}

impl PointKind {
    pub fn label(self) -> &'static str {
        match self {
            PointKind::LiveReplica => "live replica",
            PointKind::TargetSnapshot => "target snapshot",
            PointKind::ReplicaVm => "replica VM",
        }
    }
}

/// One object of the job on the target: a restore point when it is valid.
#[derive(Debug, Clone)]
pub struct RestorePoint<'a> {
    pub vm: &'a TargetVm,
    pub kind: PointKind,
    /// Whole and committed: a failover may use it. False for a run's leftovers.
    pub valid: bool,
    /// The content's time (Unix seconds), `None` for an invalid point.
    pub datetime: Option<i64>,
    /// A live replica whole but older than another live replica of the job: a run built
    /// a new one and has not removed this one yet. Not a restore point (its content is its
    /// newest snapshot's), and removed by the next run.
    pub superseded: bool,
    /// Newest last: the datetime, then our millisecond commit time.
    order: (i64, u64),
}

fn job_keys_match(config: &StringMap, id: &Identity) -> bool {
    (config.get(keys::JOB) == Some(&id.job_id)
        || config.get(keys::SCHEDULE) == Some(&id.schedule_id))
        && config.get(keys::VM) == Some(&id.vm_uuid)
        && config.get(keys::SR) == Some(&id.sr_uuid)
}

fn is_importing(config: &StringMap) -> bool {
    config.contains_key(keys::IMPORTING)
        || config.get(keys::DATETIME).map(String::as_str) == Some(keys::IMPORTING_DATETIME)
}

/// A snapshot, on the target, of this job's replica of this VM (XO §7.2: the keys are
/// copied from the live replica when it is snapshotted).
pub fn is_target_snapshot(vm: &TargetVm, id: &Identity) -> bool {
    vm.is_a_snapshot && job_keys_match(&vm.other_config, id) && !is_importing(&vm.other_config)
}

/// A VM that is still ours to update: start-blocked, never failed over.
fn is_blocked_replica(vm: &TargetVm) -> bool {
    !vm.is_a_snapshot
        && !vm.is_a_template
        && vm.blocked_operations.contains_key("start")
        && !vm.other_config.contains_key(keys::FAILED_OVER)
}

fn datetime_of(config: &StringMap) -> Option<i64> {
    config
        .get(keys::DATETIME)
        .filter(|t| t.as_str() != keys::IMPORTING_DATETIME)
        .and_then(|t| keys::parse_datetime(t))
}

fn committed_ms(config: &StringMap) -> u64 {
    config
        .get(keys::COMMITTED_MS)
        .and_then(|m| m.parse().ok())
        .unwrap_or(0)
}

/// Every object of this job and VM on the target, newest first; invalid ones last.
pub fn restore_points<'a>(vms: &'a [TargetVm], id: &Identity) -> Vec<RestorePoint<'a>> {
    let snapshots: Vec<&TargetVm> = vms.iter().filter(|vm| is_target_snapshot(vm, id)).collect();
    let mut points = Vec::new();
    for snapshot in &snapshots {
        let datetime = datetime_of(&snapshot.other_config)
            .or_else(|| keys::datetime_from_replica_name(&snapshot.name_label));
        points.push(RestorePoint {
            vm: snapshot,
            kind: PointKind::TargetSnapshot,
            valid: true,
            datetime,
            superseded: false,
            order: (datetime.unwrap_or(0), committed_ms(&snapshot.other_config)),
        });
    }
    for vm in vms
        .iter()
        .filter(|vm| !vm.is_a_snapshot && !vm.is_a_template)
    {
        let its_snapshots: Vec<&&TargetVm> = snapshots
            .iter()
            .filter(|s| s.snapshot_of == vm.reference)
            .collect();
        if !its_snapshots.is_empty() {
            if !is_blocked_replica(vm) {
                continue; // failed over or started: a VM of its own now
            }
            let valid = !is_interrupted_replica(vm, id);
            // Its content is its newest snapshot's, or newer when a run stopped between
            // the commit and the snapshot (the keys are then still on the VM).
            let newest = its_snapshots
                .iter()
                .map(|s| {
                    (
                        datetime_of(&s.other_config).unwrap_or(0),
                        committed_ms(&s.other_config),
                    )
                })
                .max()
                .unwrap_or((0, 0));
            let own = (
                datetime_of(&vm.other_config).unwrap_or(0),
                committed_ms(&vm.other_config),
            );
            let order = if valid { newest.max(own) } else { (0, 0) };
            points.push(RestorePoint {
                vm,
                kind: PointKind::LiveReplica,
                valid,
                datetime: valid.then_some(order.0),
                superseded: false,
                order,
            });
        } else if is_committed_replica(vm, id) {
            let datetime = datetime_of(&vm.other_config)
                .or_else(|| keys::datetime_from_replica_name(&vm.name_label));
            points.push(RestorePoint {
                vm,
                kind: PointKind::ReplicaVm,
                valid: true,
                datetime,
                superseded: false,
                order: (datetime.unwrap_or(0), committed_ms(&vm.other_config)),
            });
        } else if is_interrupted_replica(vm, id) {
            points.push(RestorePoint {
                vm,
                kind: PointKind::ReplicaVm,
                valid: false,
                datetime: None,
                superseded: false,
                order: (0, 0),
            });
        }
    }
    let newest_live = points
        .iter()
        .filter(|p| p.kind == PointKind::LiveReplica && p.valid)
        .map(|p| p.order)
        .max();
    for point in points.iter_mut() {
        if point.kind == PointKind::LiveReplica && point.valid && Some(point.order) < newest_live {
            point.valid = false;
            point.datetime = None;
            point.superseded = true;
        }
    }
    // Newest first; at equal times the live replica first (it is the one to fail over to,
    // its newest snapshot holding the same content), then snapshots, then classic VMs.
    points.sort_by_key(|p| {
        (
            Reverse(p.valid),
            Reverse(p.order),
            match p.kind {
                PointKind::LiveReplica => 0,
                PointKind::TargetSnapshot => 1,
                PointKind::ReplicaVm => 2,
            },
        )
    });
    points
}

/// The restore points retention deletes so that `retention` remain, oldest first: target
/// snapshots and classic replica VMs (XO §10.1), never the live replica, never an object
/// someone started.
pub fn retention_victims<'a>(points: &[RestorePoint<'a>], retention: u32) -> Vec<&'a TargetVm> {
    let mut counted: Vec<&RestorePoint<'a>> = points
        .iter()
        .filter(|p| p.valid && p.kind != PointKind::LiveReplica)
        .collect();
    counted.sort_by_key(|p| Reverse(p.order));
    let mut victims: Vec<&'a TargetVm> = counted
        .into_iter()
        .skip(retention as usize)
        .map(|p| p.vm)
        .collect();
    victims.reverse();
    victims
}

/// A managed disk on the target SR, with what the base finder needs of it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TargetDisk {
    pub reference: String,
    pub uuid: String,
    pub virtual_size: u64,
    pub other_config: StringMap,
    pub is_a_snapshot: bool,
    /// For a snapshot, the VDI it is a snapshot of (possibly gone).
    pub snapshot_of: String,
    pub snapshot_time: i64,
    /// The VMs whose VBDs use it, with the userdevice of each.
    pub attached: Vec<(String, String)>,
}

/// Where one base disk's content is on the target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaDisk {
    /// The target VDI with the base's content: a target snapshot's disk, or a classic
    /// replica's disk.
    pub vdi: String,
    pub uuid: String,
    /// The disk to update in place: the VDI the snapshot was taken of, or the classic
    /// replica's disk itself. `None` when that VDI is gone.
    pub live: Option<String>,
    /// Found in the classic layout (no target snapshot holds the content).
    pub classic: bool,
}

/// The base's content key: `xo:backup:contentKey` (XO 6.5+), else its own UUID, which is
/// what every writer's `xo:copy_of` names.
pub fn content_key(disk: &SnapshotDisk) -> &str {
    disk.other_config
        .get(keys::CONTENT_KEY)
        .map_or(disk.vdi_uuid.as_str(), String::as_str)
}

/// The target disk holding `base`'s content (XO §6, HEAD): a target snapshot disk whose
/// `contentKey` is the base's (never a snapshot of one of `source_disks`, the VM's own disks
/// when source and target are one host); else one with this job and VM's keys and
/// `xo:copy_of` = the base; else, the classic layout, the one replica disk whose
/// `xo:copy_of` is the base. Among snapshots holding the same content, the newest.
pub fn find_replica_disk(
    base: &SnapshotDisk,
    disks: &[TargetDisk],
    id: &Identity,
    source_disks: &[String],
) -> Result<ReplicaDisk, String> {
    let key = content_key(base);
    let live = |d: &TargetDisk| {
        disks
            .iter()
            .any(|l| l.reference == d.snapshot_of && !l.is_a_snapshot)
            .then(|| d.snapshot_of.clone())
    };
    let newest = |found: Vec<&TargetDisk>| {
        found
            .into_iter()
            .max_by_key(|d| (live(d).is_some(), d.snapshot_time))
            .map(|d| ReplicaDisk {
                vdi: d.reference.clone(),
                uuid: d.uuid.clone(),
                live: live(d),
                classic: false,
            })
    };
    let snapshots = || {
        disks
            .iter()
            .filter(|d| d.is_a_snapshot && !source_disks.contains(&d.snapshot_of))
            .filter(|d| {
                d.other_config.get(keys::DATETIME).map(String::as_str)
                    != Some(keys::IMPORTING_DATETIME)
            })
    };
    let by_key = newest(
        snapshots()
            .filter(|d| d.other_config.get(keys::CONTENT_KEY).map(String::as_str) == Some(key))
            .collect(),
    );
    let by_copy = || {
        newest(
            snapshots()
                .filter(|d| {
                    let c = &d.other_config;
                    c.get(keys::JOB) == Some(&id.job_id)
                        && c.get(keys::VM) == Some(&id.vm_uuid)
                        && c.get(keys::COPY_OF) == Some(&base.vdi_uuid)
                })
                .collect(),
        )
    };
    if let Some(found) = by_key.or_else(by_copy) {
        return Ok(found);
    }
    let classic: Vec<&TargetDisk> = disks
        .iter()
        .filter(|d| !d.is_a_snapshot && d.other_config.get(keys::COPY_OF) == Some(&base.vdi_uuid))
        .collect();
    match classic.as_slice() {
        [one] => Ok(ReplicaDisk {
            vdi: one.reference.clone(),
            uuid: one.uuid.clone(),
            live: Some(one.reference.clone()),
            classic: true,
        }),
        [] => Err(format!(
            "no replica of base VDI {} on the target SR",
            base.vdi_uuid
        )),
        many => Err(format!(
            "{} replicas of base VDI {} on the target SR, ambiguous",
            many.len(),
            base.vdi_uuid
        )),
    }
}

/// The VM to update in place, when every disk with a base has its live disk attached to
/// that one VM alone, at the same userdevice, and the VM is a halted, start-blocked replica
/// that no run left half-written and that has no other disk. `bases` maps userdevices to
/// the live disk found for them.
pub fn in_place_target<'a>(
    bases: &[(&str, &str)],
    disks: &[TargetDisk],
    vms: &'a [TargetVm],
    id: &Identity,
) -> Result<&'a TargetVm, String> {
    let mut owner: Option<&str> = None;
    for (userdevice, live) in bases {
        let disk = disks
            .iter()
            .find(|d| d.reference == *live)
            .ok_or_else(|| format!("disk {userdevice}: its replica disk is gone"))?;
        match disk.attached.as_slice() {
            [(vm, device)] if device == userdevice && owner.is_none_or(|o| o == vm) => {
                owner = Some(vm);
            }
            [_] => {
                return Err(format!(
                    "disk {userdevice}: its replica disk belongs to another VM or slot"
                ));
            }
            attached => {
                return Err(format!(
                    "disk {userdevice}: its replica disk is attached to {} VMs",
                    attached.len()
                ));
            }
        }
    }
    let owner = owner.ok_or("no disk has a base")?;
    let vm = vms
        .iter()
        .find(|vm| vm.reference == owner)
        .ok_or("the replica VM is gone")?;
    if !is_blocked_replica(vm) {
        return Err(format!("VM {} is not a start-blocked replica", vm.uuid));
    }
    if is_interrupted_replica(vm, id) {
        return Err(format!("VM {} was left half-written by a run", vm.uuid));
    }
    if vm.power_state != "Halted" {
        return Err(format!("VM {} is {}", vm.uuid, vm.power_state));
    }
    let own_disks = disks
        .iter()
        .filter(|d| d.attached.iter().any(|(v, _)| v == owner))
        .count();
    if own_disks != bases.len() {
        return Err(format!(
            "VM {} has {own_disks} disks, the source {}",
            vm.uuid,
            bases.len()
        ));
    }
    Ok(vm)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replicate::plan::fixtures::{config, id};

    fn keyed(datetime: &str, extra: &[(&str, &str)]) -> StringMap {
        let mut c = config(&[
            (keys::JOB, "job"),
            (keys::SCHEDULE, "sched"),
            (keys::VM, "vm"),
            (keys::SR, "sr"),
            (keys::DATETIME, datetime),
        ]);
        c.extend(config(extra));
        c
    }

    fn live(uuid: &str) -> TargetVm {
        TargetVm {
            reference: format!("ref-{uuid}"),
            uuid: uuid.into(),
            name_label: uuid.into(),
            power_state: "Halted".into(),
            blocked_operations: config(&[("start", keys::START_BLOCKED)]),
            ..TargetVm::default()
        }
    }

    fn snapshot_of(of: &TargetVm, uuid: &str, datetime: &str) -> TargetVm {
        TargetVm {
            reference: format!("ref-{uuid}"),
            uuid: uuid.into(),
            name_label: uuid.into(),
            is_a_snapshot: true,
            is_a_template: true,
            snapshot_of: of.reference.clone(),
            other_config: keyed(datetime, &[]),
            ..TargetVm::default()
        }
    }

    fn classic(uuid: &str, datetime: &str) -> TargetVm {
        TargetVm {
            other_config: keyed(datetime, &[]),
            ..live(uuid)
        }
    }

    fn kinds(points: &[RestorePoint<'_>]) -> Vec<(String, PointKind, bool)> {
        points
            .iter()
            .map(|p| (p.vm.uuid.clone(), p.kind, p.valid))
            .collect()
    }

    #[test]
    fn both_layouts_are_listed_newest_first_with_their_kinds() {
        let l = live("live");
        let vms = vec![
            classic("old-classic", "20240101T00:00:00Z"),
            snapshot_of(&l, "t1", "20240102T00:00:00Z"),
            snapshot_of(&l, "t2", "20240103T00:00:00Z"),
            l.clone(),
            // Another job's snapshot of a VM, and a started former live replica.
            TargetVm {
                other_config: keyed(
                    "20240104T00:00:00Z",
                    &[(keys::JOB, "other"), (keys::SCHEDULE, "other")],
                ),
                ..snapshot_of(&l, "foreign", "")
            },
        ];
        let points = restore_points(&vms, &id());
        use PointKind::*;
        assert_eq!(
            kinds(&points),
            [
                ("live".into(), LiveReplica, true),
                ("t2".into(), TargetSnapshot, true),
                ("t1".into(), TargetSnapshot, true),
                ("old-classic".into(), ReplicaVm, true),
            ]
        );
        assert_eq!(
            points[0].datetime,
            keys::parse_datetime("20240103T00:00:00Z")
        );
        let victims: Vec<&str> = retention_victims(&points, 2)
            .iter()
            .map(|v| v.uuid.as_str())
            .collect();
        assert_eq!(victims, ["old-classic"]);
        let victims: Vec<&str> = retention_victims(&points, 1)
            .iter()
            .map(|v| v.uuid.as_str())
            .collect();
        assert_eq!(victims, ["old-classic", "t1"]);
    }

    #[test]
    fn a_half_written_live_replica_is_invalid_and_its_snapshots_stay_valid() {
        let mut l = live("live");
        l.other_config = keyed(keys::IMPORTING_DATETIME, &[(keys::IMPORTING, "x")]);
        l.blocked_operations = config(&[("start", keys::IMPORTING_BLOCKED)]);
        let vms = vec![snapshot_of(&l, "t1", "20240102T00:00:00Z"), l.clone()];
        let points = restore_points(&vms, &id());
        use PointKind::*;
        assert_eq!(
            kinds(&points),
            [
                ("t1".into(), TargetSnapshot, true),
                ("live".into(), LiveReplica, false)
            ]
        );
        assert_eq!(points[1].datetime, None);
        assert!(retention_victims(&points, 0).iter().all(|v| v.uuid == "t1"));
    }

    #[test]
    fn of_two_whole_live_replicas_the_older_is_superseded() {
        let (old, new) = (live("old-live"), live("new-live"));
        let vms = vec![
            snapshot_of(&old, "t1", "20240102T00:00:00Z"),
            snapshot_of(&new, "t2", "20240103T00:00:00Z"),
            old.clone(),
            new.clone(),
        ];
        let points = restore_points(&vms, &id());
        let superseded: Vec<&str> = points
            .iter()
            .filter(|p| p.superseded)
            .map(|p| p.vm.uuid.as_str())
            .collect();
        assert_eq!(superseded, ["old-live"]);
        assert_eq!(points[0].vm.uuid, "new-live");
        assert!(
            points
                .iter()
                .find(|p| p.vm.uuid == "old-live")
                .is_some_and(|p| !p.valid)
        );
    }

    #[test]
    fn a_failed_over_live_replica_is_no_longer_a_point_but_its_snapshots_are() {
        let mut l = live("live");
        l.blocked_operations.clear();
        l.other_config
            .insert(keys::FAILED_OVER.into(), "now".into());
        let vms = vec![snapshot_of(&l, "t1", "20240102T00:00:00Z"), l.clone()];
        assert_eq!(
            kinds(&restore_points(&vms, &id())),
            [("t1".into(), PointKind::TargetSnapshot, true)]
        );
    }

    fn base_disk() -> SnapshotDisk {
        SnapshotDisk {
            userdevice: "0".into(),
            vdi_ref: "src-ref".into(),
            vdi_uuid: "src".into(),
            virtual_size: 100,
            other_config: config(&[(keys::CONTENT_KEY, "src")]),
        }
    }

    fn disk(reference: &str, snapshot_of: &str, time: i64, pairs: &[(&str, &str)]) -> TargetDisk {
        TargetDisk {
            reference: reference.into(),
            uuid: format!("uuid-{reference}"),
            virtual_size: 100,
            other_config: config(pairs),
            is_a_snapshot: !snapshot_of.is_empty(),
            snapshot_of: snapshot_of.into(),
            snapshot_time: time,
            attached: Vec::new(),
        }
    }

    #[test]
    fn the_base_is_found_by_content_key_then_copy_of_then_in_the_classic_layout() {
        let live_disk = TargetDisk {
            attached: vec![("ref-live".into(), "0".into())],
            ..disk("live-vdi", "", 0, &[])
        };
        let by_key = disk("t-key", "live-vdi", 2, &[(keys::CONTENT_KEY, "src")]);
        let older = disk("t-older", "live-vdi", 1, &[(keys::CONTENT_KEY, "src")]);
        let by_copy = disk(
            "t-copy",
            "gone",
            3,
            &[(keys::JOB, "job"), (keys::VM, "vm"), (keys::COPY_OF, "src")],
        );
        let classic = disk("classic", "", 0, &[(keys::COPY_OF, "src")]);
        let all = vec![
            live_disk.clone(),
            by_key.clone(),
            older,
            by_copy.clone(),
            classic.clone(),
        ];
        let found = find_replica_disk(&base_disk(), &all, &id(), &[]).unwrap();
        assert_eq!(
            (found.vdi.as_str(), found.live.as_deref(), found.classic),
            ("t-key", Some("live-vdi"), false)
        );
        // On one host, the source VM's own snapshots are never the target's.
        let found = find_replica_disk(&base_disk(), &all, &id(), &["live-vdi".into()]).unwrap();
        assert_eq!((found.vdi.as_str(), found.live), ("t-copy", None));
        let found =
            find_replica_disk(&base_disk(), std::slice::from_ref(&classic), &id(), &[]).unwrap();
        assert_eq!(
            (found.vdi.as_str(), found.live.as_deref(), found.classic),
            ("classic", Some("classic"), true)
        );
        let twice = vec![
            classic.clone(),
            TargetDisk {
                reference: "c2".into(),
                ..classic
            },
        ];
        assert!(
            find_replica_disk(&base_disk(), &twice, &id(), &[])
                .unwrap_err()
                .contains("ambiguous")
        );
        assert!(
            find_replica_disk(&base_disk(), &[], &id(), &[])
                .unwrap_err()
                .contains("no replica")
        );
    }

    #[test]
    fn only_a_halted_blocked_whole_replica_with_exactly_these_disks_is_updated_in_place() {
        let l = live("live");
        let attached = |r: &str, vm: &str, dev: &str| TargetDisk {
            attached: vec![(vm.into(), dev.into())],
            ..disk(r, "", 0, &[])
        };
        let disks = vec![
            attached("d0", "ref-live", "0"),
            attached("d1", "ref-live", "1"),
        ];
        let bases = [("0", "d0"), ("1", "d1")];
        assert_eq!(
            in_place_target(&bases, &disks, std::slice::from_ref(&l), &id())
                .unwrap()
                .uuid,
            "live"
        );
        // One disk fewer than the VM has.
        assert!(in_place_target(&bases[..1], &disks, std::slice::from_ref(&l), &id()).is_err());
        // Running, unblocked, or half-written.
        for changed in [
            TargetVm {
                power_state: "Running".into(),
                ..l.clone()
            },
            TargetVm {
                blocked_operations: StringMap::new(),
                ..l.clone()
            },
            TargetVm {
                other_config: keyed("x", &[(keys::IMPORTING, "x")]),
                ..l.clone()
            },
        ] {
            assert!(in_place_target(&bases, &disks, &[changed], &id()).is_err());
        }
        // A disk shared with another VM, or in another slot.
        let shared = vec![
            TargetDisk {
                attached: vec![
                    ("ref-live".into(), "0".into()),
                    ("ref-x".into(), "0".into()),
                ],
                ..disk("d0", "", 0, &[])
            },
            attached("d1", "ref-live", "1"),
        ];
        assert!(in_place_target(&bases, &shared, std::slice::from_ref(&l), &id()).is_err());
        let moved = vec![
            attached("d0", "ref-live", "3"),
            attached("d1", "ref-live", "1"),
        ];
        assert!(in_place_target(&bases, &moved, std::slice::from_ref(&l), &id()).is_err());
    }
}
