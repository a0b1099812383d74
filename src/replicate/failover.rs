//! Failover and test failover on the target host.
//!
//! Restore points are those of [`layout`]: the live replica, its target snapshots, and
//! classic replica VMs, whichever tool wrote them.
//!
//! * [`failover`] makes a restore point the VM. The live replica or a classic replica VM is
//!   promoted in place: its start block goes, and so does `xo:copy_of` on the VM and its
//!   disks, so that no later cycle ever clones its (now written) disks as a delta base. The
//!   live replica keeps its target snapshots, through which a job replicating it back sends
//!   a delta (failback). A target snapshot is cloned into a new VM, stripped of every
//!   replication key.
//! * [`test_failover`] boots a fast clone (`VM.clone`) of the newest restore point, stripped
//!   of every replication key and marked as ours, so the chain is untouched and the next
//!   cycle is still a delta; [`cleanup`] removes those clones.
//!
//! A VM of the job already failed over (marked [`FAILED_OVER`]) stops a second failover
//! unless it is forced: the second would promote the next older restore point while the
//! first runs, two copies of one VM.
//!
//! The choices are pure functions ([`choose`], [`pick_replica`], [`failed_over_vms`],
//! [`is_test_clone`]); the rest carries them out.
//!
//! [`layout`]: super::layout

use super::clock::Clock;
use super::inventory::list_target_vms;
use super::keys;
use super::layout::{PointKind, RestorePoint, is_target_snapshot, restore_points};
use super::op_error::OpError;
use super::op_error::on_host as host;
use super::plan::{Identity, TargetVm};
use crate::xapi::client::{ClientError, XapiClient};
use crate::xapi::ops::NewVif;
use crate::xapi::ops::{Class, MapName};
use crate::xapi::records::{StringMap, VdiRecord, VifRecord, VmRecord};

pub use super::keys::FAILED_OVER;
/// Ours: on a test clone (VM and disks), the job whose replica it was cloned from.
pub const TEST_FAILOVER_JOB: &str = "vhdsync:test_failover";
/// Ours: on a test clone, the source VM and the replica it was cloned from.
pub const TEST_FAILOVER_VM: &str = "vhdsync:test_failover_vm";
pub const TEST_CLONE_OF: &str = "vhdsync:test_clone_of";
/// Ours: on a test clone, its own UUID. Only `test-failover` can write it, since the UUID
/// exists only once the clone does; a key copied from anywhere else names another object.
/// [`is_test_clone`] requires it, so no replica is ever taken for a clone and destroyed.
pub const TEST_CLONE_SELF: &str = "vhdsync:test_clone";
pub const TEST_TAG: &str = "vhdsync test failover";
pub const TEST_NAME_PREFIX: &str = "[test] ";

/// The restore point to fail over to: the one given (it must be a valid restore point of
/// this job and VM), else the newest, the live replica first when it holds the newest
/// content.
pub fn pick_replica<'p, 'a>(
    points: &'p [RestorePoint<'a>],
    vms: &[TargetVm],
    id: &Identity,
    given: Option<&str>,
) -> Result<&'p RestorePoint<'a>, String> {
    let mut valid = points.iter().filter(|p| p.valid);
    match given {
        Some(uuid) => valid
            .find(|p| p.vm.uuid.eq_ignore_ascii_case(uuid))
            .ok_or_else(|| {
                let what = vms
                    .iter()
                    .find(|vm| vm.uuid.eq_ignore_ascii_case(uuid))
                    .map_or("no VM with that UUID on the target", |vm| {
                        if vm.other_config.contains_key(FAILED_OVER) {
                            "it was already failed over"
                        } else {
                            "it is not a valid restore point of this job and VM"
                        }
                    });
                format!("--replica {uuid}: {what}")
            }),
        None => valid.next().ok_or_else(|| {
            format!(
                "no valid replica of VM {} by job {} on SR {} on the target",
                id.vm_uuid, id.job_id, id.sr_uuid
            )
        }),
    }
}

/// A VM that a failover of this job and VM made: the promoted replica, or a target
/// snapshot's clone.
#[derive(Debug, Clone, PartialEq)]
pub struct FailedOver<'a> {
    pub vm: &'a TargetVm,
    /// When it was failed over (Unix seconds), `None` when the mark's date does not parse.
    pub at: Option<i64>,
    /// The restore point it was made from, when the mark says (failovers since these marks).
    pub restore_point: Option<&'a str>,
}

/// The VMs a failover of this job and VM made, newest first: marked [`FAILED_OVER`] and,
/// by the marks a failover writes now, of this job and VM; a failover made before those
/// marks is recognised as a classic replica still carrying the job's keys, or as a live
/// replica whose target snapshots carry them.
pub fn failed_over_vms<'a>(vms: &'a [TargetVm], id: &Identity) -> Vec<FailedOver<'a>> {
    let ours = |vm: &TargetVm| {
        let config = &vm.other_config;
        match (
            config.get(keys::FAILED_OVER_JOB),
            config.get(keys::FAILED_OVER_VM),
        ) {
            (Some(job), Some(source)) => *job == id.job_id && *source == id.vm_uuid,
            _ => {
                let classic = config.get(keys::JOB) == Some(&id.job_id)
                    && config.get(keys::VM) == Some(&id.vm_uuid);
                let live = vms
                    .iter()
                    .any(|s| s.snapshot_of == vm.reference && is_target_snapshot(s, id));
                classic || live
            }
        }
    };
    let mut found: Vec<FailedOver<'a>> = vms
        .iter()
        .filter(|vm| !vm.is_a_snapshot && !vm.is_a_template)
        .filter(|vm| vm.other_config.contains_key(FAILED_OVER) && ours(vm))
        .map(|vm| FailedOver {
            vm,
            at: vm
                .other_config
                .get(FAILED_OVER)
                .and_then(|t| keys::parse_datetime(t)),
            restore_point: vm
                .other_config
                .get(keys::FAILED_OVER_FROM)
                .map(String::as_str),
        })
        .collect();
    found.sort_by_key(|f| std::cmp::Reverse(f.at));
    found
}

/// The restore point a failover will use, chosen before anything is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailoverChoice {
    pub restore_point: String,
    pub kind: PointKind,
    pub name: String,
    /// The content's time (Unix seconds), when known.
    pub datetime: Option<i64>,
}

/// The restore point to fail over to (see [`pick_replica`]), refused while a VM of this job
/// and VM is already failed over, unless `force`.
pub fn choose(
    vms: &[TargetVm],
    id: &Identity,
    given: Option<&str>,
    force: bool,
) -> Result<FailoverChoice, String> {
    if !force && let Some(done) = failed_over_vms(vms, id).first() {
        return Err(format!(
            "VM {} was already failed over: VM {} ({:?}){}{} is the VM now, and a second failover would run another copy of it. Shut that VM down and remove it first, or pass --force to fail over anyway",
            id.vm_uuid,
            done.vm.uuid,
            done.vm.name_label,
            done.at
                .map_or_else(String::new, |at| format!(" since {}", keys::rfc3339(at))),
            done.restore_point
                .map_or_else(String::new, |p| format!(", made from restore point {p},")),
        ));
    }
    let points = restore_points(vms, id);
    let point = pick_replica(&points, vms, id, given)?;
    Ok(FailoverChoice {
        restore_point: point.vm.uuid.clone(),
        kind: point.kind,
        name: point.vm.name_label.clone(),
        datetime: point.datetime,
    })
}

/// A test clone made by `test-failover` for this job (and, when given, this source VM).
pub fn is_test_clone(vm: &TargetVm, job_id: &str, vm_uuid: Option<&str>) -> bool {
    !vm.is_a_snapshot
        && vm
            .other_config
            .get(TEST_CLONE_SELF)
            .is_some_and(|own| own.eq_ignore_ascii_case(&vm.uuid))
        && vm.other_config.get(TEST_FAILOVER_JOB).map(String::as_str) == Some(job_id)
        && vm_uuid.is_none_or(|uuid| {
            vm.other_config.get(TEST_FAILOVER_VM).map(String::as_str) == Some(uuid)
        })
}

/// The replication keys a test clone must not carry: every `xo:` key (so neither tool
/// takes it for a replica or a base) and our own markers.
pub fn replication_keys(config: &StringMap) -> Vec<&str> {
    config
        .keys()
        .map(String::as_str)
        .filter(|k| k.starts_with("xo:") || *k == keys::IMPORTING || *k == keys::COMMITTED_MS)
        .collect()
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct FailoverReport {
    /// The VM that is now the VM: the promoted replica, or a target snapshot's clone.
    pub replica: String,
    pub name: String,
    /// The restore point failed over to, and its kind.
    pub restore_point: String,
    pub kind: PointKind,
    /// The restore point's content time, RFC 3339, when known.
    pub restore_point_time: Option<String>,
    /// When the failover was made, RFC 3339.
    pub failed_over_at: String,
    pub started: bool,
    pub note: String,
}

/// Make a restore point the VM (see the module's description); start it if asked. Refused
/// while a VM of this job and VM is already failed over, unless `force`.
pub async fn failover(
    target: &XapiClient,
    id: &Identity,
    replica: Option<&str>,
    start: bool,
    force: bool,
    clock: &dyn Clock,
) -> Result<FailoverReport, OpError> {
    let vms = list_target_vms(target)
        .await
        .map_err(host("listing the target's VMs"))?;
    let chosen = choose(&vms, id, replica, force).map_err(OpError::Invalid)?;
    let kind = chosen.kind;
    let point = vms
        .iter()
        .find(|vm| vm.uuid == chosen.restore_point)
        .cloned()
        .ok_or_else(|| {
            OpError::Invalid(format!("restore point {} is gone", chosen.restore_point))
        })?;
    let on = |what: &str| host(format!("{what} of {} {}", kind.label(), point.uuid));
    let (vm, name) = match kind {
        PointKind::TargetSnapshot => {
            let name = point.name_label.clone();
            let clone = target
                .clone_vm(&point.reference, &name)
                .await
                .map_err(on("cloning"))?;
            let made = async {
                target.set_vm_is_a_template(&clone, false).await?;
                strip_replication_keys(target, &clone).await?;
                keep_macs(target, &point.reference, &clone).await?;
                Ok::<_, ClientError>(clone.clone())
            };
            match made.await {
                Ok(vm) => (vm, name),
                Err(e) => {
                    let _ = target.destroy_vm_and_disks(&clone).await;
                    return Err(on("preparing the clone")(e));
                }
            }
        }
        PointKind::LiveReplica | PointKind::ReplicaVm => {
            (point.reference.clone(), point.name_label.clone())
        }
    };
    let unix_now = clock.unix();
    let now = keys::datetime(unix_now);
    let marks = [
        (FAILED_OVER, now.as_str()),
        (keys::FAILED_OVER_JOB, id.job_id.as_str()),
        (keys::FAILED_OVER_VM, id.vm_uuid.as_str()),
        (keys::FAILED_OVER_FROM, point.uuid.as_str()),
    ];
    target
        .set_entries(Class::Vm, &vm, MapName::OtherConfig, &marks)
        .await
        .map_err(on("marking"))?;
    target
        .remove_entries(
            Class::Vm,
            &vm,
            MapName::BlockedOperations,
            &keys::BLOCKED_OPERATIONS,
        )
        .await
        .map_err(on("unblocking"))?;
    unlink(target, &vm, &[keys::COPY_OF, keys::CONTENT_KEY])
        .await
        .map_err(on("unlinking the disks"))?;
    if start {
        target.start_vm(&vm).await.map_err(on("starting"))?;
    }
    let uuid = target.vm_uuid(&vm).await.map_err(on("reading"))?;
    let note = match kind {
        PointKind::LiveReplica => format!(
            "the live replica {uuid} is now the VM; its target snapshots stay, so a job replicating it back sends a delta. The next replicate of VM {} builds a new live replica from the newest snapshot",
            id.vm_uuid
        ),
        PointKind::TargetSnapshot => format!(
            "target snapshot {} was cloned into VM {uuid}; the snapshot and the live replica are untouched",
            point.uuid
        ),
        PointKind::ReplicaVm => format!(
            "replica {uuid} is now a VM of its own and no longer takes deltas; the next replicate of VM {} continues from the newest remaining restore point, or starts a new chain with a full",
            id.vm_uuid
        ),
    };
    Ok(FailoverReport {
        replica: uuid,
        name,
        restore_point: point.uuid.clone(),
        kind,
        restore_point_time: chosen.datetime.map(keys::rfc3339),
        failed_over_at: keys::rfc3339(unix_now),
        started: start,
        note,
    })
}

/// The name of the network `test-failover --isolated` puts clones' interfaces on.
pub const ISOLATED_NETWORK: &str = "vhdsync isolated test failover";

/// Recreate `vm`'s interfaces on `network`, with their MACs and settings.
async fn move_vifs(
    target: &XapiClient,
    vm: &str,
    network: impl Fn(&VifRecord) -> String,
    mac: impl Fn(&VifRecord) -> String,
) -> Result<(), ClientError> {
    let record: VmRecord = target.get_record(vm).await?;
    for (reference, vif) in target.vm_vifs(&record).await? {
        let (network, mac) = (network(&vif), mac(&vif));
        if network == vif.network && mac.eq_ignore_ascii_case(&vif.mac) {
            continue;
        }
        target.destroy_vif(&reference).await?;
        target
            .create_vif(&NewVif {
                vm,
                network: &network,
                device: &vif.device,
                mac: &mac,
                like: &vif,
            })
            .await?;
    }
    Ok(())
}

/// A clone of a target snapshot gets new MACs from `VM.clone`; a failover keeps the
/// snapshot's, which the guest's network configuration (and DHCP reservations) expect.
async fn keep_macs(target: &XapiClient, snapshot: &str, clone: &str) -> Result<(), ClientError> {
    let snapshot: VmRecord = target.get_record(snapshot).await?;
    let original = target.vm_vifs(&snapshot).await?;
    move_vifs(
        target,
        clone,
        |vif| vif.network.clone(),
        |vif| {
            original
                .iter()
                .find(|(_, o)| o.device == vif.device)
                .map_or_else(|| vif.mac.clone(), |(_, o)| o.mac.clone())
        },
    )
    .await
}

/// Put every interface of `vm` on the isolated network (created on first use: a network
/// with no PIF reaches nothing outside the host).
async fn isolate(target: &XapiClient, vm: &str) -> Result<(), ClientError> {
    let network = target.network_named(ISOLATED_NETWORK).await?;
    let network = match network {
        Some(existing) => existing,
        None => target.create_network(ISOLATED_NETWORK).await?,
    };
    move_vifs(target, vm, |_| network.clone(), |vif| vif.mac.clone()).await
}

/// Remove every replication key from a VM and its disks.
async fn strip_replication_keys(target: &XapiClient, vm_ref: &str) -> Result<(), ClientError> {
    let config = MapName::OtherConfig;
    let vm: VmRecord = target.get_record(vm_ref).await?;
    target
        .remove_entries(
            Class::Vm,
            vm_ref,
            config,
            &replication_keys(&vm.other_config),
        )
        .await?;
    for vdi in target.disk_vdis(vm_ref).await? {
        let record: VdiRecord = target.get_record(&vdi).await?;
        target
            .remove_entries(
                Class::Vdi,
                &vdi,
                config,
                &replication_keys(&record.other_config),
            )
            .await?;
    }
    Ok(())
}

/// Remove `keys` from the VM and from each of its disks.
async fn unlink(target: &XapiClient, vm_ref: &str, keys: &[&str]) -> Result<(), ClientError> {
    let config = MapName::OtherConfig;
    target
        .remove_entries(Class::Vm, vm_ref, config, keys)
        .await?;
    for vdi in target.disk_vdis(vm_ref).await? {
        target
            .remove_entries(Class::Vdi, &vdi, config, keys)
            .await?;
    }
    Ok(())
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct TestCloneReport {
    pub clone: String,
    pub name: String,
    pub replica: String,
    pub started: bool,
    pub isolated: bool,
}

/// Clone the newest replica as `[test] <name>`, strip the clone of every replication key,
/// tag it, and start it if asked. The replica itself is not written.
pub async fn test_failover(
    target: &XapiClient,
    id: &Identity,
    start: bool,
    isolated: bool,
) -> Result<TestCloneReport, OpError> {
    let vms = list_target_vms(target)
        .await
        .map_err(host("listing the target's VMs"))?;
    let points = restore_points(&vms, id);
    let chosen = pick_replica(&points, &vms, id, None).map_err(OpError::Invalid)?;
    let (kind, replica) = (chosen.kind, chosen.vm.clone());
    let name = format!("{TEST_NAME_PREFIX}{}", replica.name_label);
    let clone_ref = target
        .clone_vm(&replica.reference, &name)
        .await
        .map_err(host(format!("cloning replica {}", replica.uuid)))?;
    let prepared = async {
        if kind == PointKind::TargetSnapshot {
            target.set_vm_is_a_template(&clone_ref, false).await?;
        }
        if isolated {
            isolate(target, &clone_ref).await?;
        }
        prepare_clone(target, &clone_ref, id, &replica, start).await
    }
    .await;
    match prepared {
        Ok(uuid) => Ok(TestCloneReport {
            clone: uuid,
            name,
            replica: replica.uuid,
            started: start,
            isolated,
        }),
        Err(e) => {
            let _ = target.hard_shutdown_vm(&clone_ref).await;
            let _ = target.destroy_vm_and_disks(&clone_ref).await;
            Err(host(format!(
                "preparing the test clone of {}",
                replica.uuid
            ))(e))
        }
    }
}

async fn prepare_clone(
    target: &XapiClient,
    clone_ref: &str,
    id: &Identity,
    replica: &TargetVm,
    start: bool,
) -> Result<String, ClientError> {
    let vm: VmRecord = target.get_record(clone_ref).await?;
    let marks = [
        (TEST_FAILOVER_JOB, id.job_id.as_str()),
        (TEST_FAILOVER_VM, id.vm_uuid.as_str()),
        (TEST_CLONE_OF, replica.uuid.as_str()),
    ];
    let vm_marks = [
        marks[0],
        marks[1],
        marks[2],
        (TEST_CLONE_SELF, vm.uuid.as_str()),
    ];
    let config = MapName::OtherConfig;
    // Marks first: a clone half-stripped by a failure is still found by --cleanup.
    target
        .set_entries(Class::Vm, clone_ref, config, &vm_marks)
        .await?;
    target
        .remove_entries(
            Class::Vm,
            clone_ref,
            config,
            &replication_keys(&vm.other_config),
        )
        .await?;
    target
        .remove_entries(
            Class::Vm,
            clone_ref,
            MapName::BlockedOperations,
            &keys::BLOCKED_OPERATIONS,
        )
        .await?;
    if vm.tags.iter().any(|t| t == keys::REPLICA_TAG) {
        target.remove_vm_tag(clone_ref, keys::REPLICA_TAG).await?;
    }
    target.add_vm_tag(clone_ref, TEST_TAG).await?;
    for vdi in target.disk_vdis(clone_ref).await? {
        let record: VdiRecord = target.get_record(&vdi).await?;
        target.set_entries(Class::Vdi, &vdi, config, &marks).await?;
        let stripped = replication_keys(&record.other_config);
        target
            .remove_entries(Class::Vdi, &vdi, config, &stripped)
            .await?;
    }
    if start {
        target.start_vm(clone_ref).await?;
    }
    Ok(vm.uuid)
}

/// Shut down and destroy this job's test clones (of `vm_uuid`'s replicas only, if given),
/// with their disks. Returns their UUIDs.
pub async fn cleanup(
    target: &XapiClient,
    job_id: &str,
    vm_uuid: Option<&str>,
) -> Result<Vec<String>, OpError> {
    let vms = list_target_vms(target)
        .await
        .map_err(host("listing the target's VMs"))?;
    let mut removed = Vec::new();
    for vm in vms.iter().filter(|vm| is_test_clone(vm, job_id, vm_uuid)) {
        let record: VmRecord = target
            .get_record(&vm.reference)
            .await
            .map_err(host(format!("reading test clone {}", vm.uuid)))?;
        if record.power_state != "Halted" {
            target
                .hard_shutdown_vm(&vm.reference)
                .await
                .map_err(host(format!("shutting down test clone {}", vm.uuid)))?;
        }
        target
            .destroy_vm_and_disks(&vm.reference)
            .await
            .map_err(host(format!("destroying test clone {}", vm.uuid)))?;
        removed.push(vm.uuid.clone());
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replicate::layout::retention_victims;
    use crate::replicate::plan::fixtures::{config, id};
    use crate::replicate::plan::{is_committed_replica, is_interrupted_replica};

    fn replica(uuid: &str, datetime: &str) -> TargetVm {
        TargetVm {
            reference: format!("ref-{uuid}"),
            uuid: uuid.into(),
            name_label: uuid.into(),
            other_config: config(&[
                (keys::JOB, "job"),
                (keys::VM, "vm"),
                (keys::SR, "sr"),
                (keys::DATETIME, datetime),
                (keys::COPY_OF, "snap"),
            ]),
            blocked_operations: config(&[("start", keys::START_BLOCKED)]),
            ..TargetVm::default()
        }
    }

    /// What `failover` leaves: marked, unblocked, unlinked.
    fn failed_over(mut vm: TargetVm) -> TargetVm {
        vm.other_config.insert(FAILED_OVER.into(), "x".into());
        vm.other_config.remove(keys::COPY_OF);
        vm.blocked_operations.clear();
        vm
    }

    /// What `test_failover` leaves on the clone.
    fn test_clone(of: &TargetVm) -> TargetVm {
        let mut config = of.other_config.clone();
        for key in replication_keys(&of.other_config) {
            config.remove(key);
        }
        config.insert(TEST_FAILOVER_JOB.into(), "job".into());
        config.insert(TEST_FAILOVER_VM.into(), "vm".into());
        config.insert(TEST_CLONE_SELF.into(), "clone".into());
        TargetVm {
            reference: "ref-clone".into(),
            uuid: "clone".into(),
            name_label: format!("{TEST_NAME_PREFIX}{}", of.name_label),
            other_config: config,
            ..TargetVm::default()
        }
    }

    /// The attack of issue 17: a source VM carrying our test-clone marks hands them to its
    /// replicas, and `--cleanup` destroyed them. Marks without the object's own UUID, or
    /// with another object's, are not a test clone.
    #[test]
    fn marks_copied_from_elsewhere_never_make_a_test_clone() {
        let mut forged = replica("r", "20240101T00:00:00Z");
        for (key, value) in [
            (TEST_FAILOVER_JOB, "job"),
            (TEST_FAILOVER_VM, "vm"),
            (TEST_CLONE_OF, "r"),
        ] {
            forged.other_config.insert(key.into(), value.into());
        }
        assert!(!is_test_clone(&forged, "job", None));
        forged
            .other_config
            .insert(TEST_CLONE_SELF.into(), "the-source-vm".into());
        assert!(!is_test_clone(&forged, "job", Some("vm")));
        let real = test_clone(&replica("r", "20240101T00:00:00Z"));
        assert!(is_test_clone(&real, "job", Some("vm")));
    }

    #[test]
    fn picks_the_newest_valid_replica_or_the_one_given() {
        let vms = vec![
            replica("old", "20240101T00:00:00Z"),
            replica("new", "20240102T00:00:00Z"),
            failed_over(replica("newest-but-failed-over", "20240103T00:00:00Z")),
        ];
        let points = restore_points(&vms, &id());
        let pick = |given| pick_replica(&points, &vms, &id(), given).map(|p| p.vm.uuid.clone());
        assert_eq!(pick(None).unwrap(), "new");
        assert_eq!(pick(Some("OLD")).unwrap(), "old");
        for (given, expected) in [
            ("newest-but-failed-over", "already failed over"),
            ("nope", "no VM with that UUID"),
        ] {
            let err = pick(Some(given)).unwrap_err();
            assert!(err.contains(expected), "{err}");
        }
        assert!(
            pick_replica(&[], &[], &id(), None)
                .unwrap_err()
                .contains("no valid replica")
        );
    }

    #[test]
    fn the_runner_never_takes_a_test_clone_or_a_failed_over_replica_for_a_replica() {
        let r = replica("r", "20240101T00:00:00Z");
        let clone = test_clone(&r);
        let gone = failed_over(replica("f", "20230101T00:00:00Z"));
        assert!(clone.other_config.keys().all(|k| !k.starts_with("xo:")));
        for vm in [&clone, &gone] {
            assert!(!is_committed_replica(vm, &id()), "{}", vm.uuid);
            assert!(!is_interrupted_replica(vm, &id()), "{}", vm.uuid);
            assert!(!vm.other_config.contains_key(keys::COPY_OF));
        }
        let all = vec![r.clone(), clone.clone(), gone];
        // Retention 0 would delete every replica it knows: only the real one.
        let victims: Vec<&str> = retention_victims(&restore_points(&all, &id()), 0)
            .iter()
            .map(|v| v.uuid.as_str())
            .collect();
        assert_eq!(victims, ["r"]);
        assert!(is_test_clone(&clone, "job", None));
        assert!(is_test_clone(&clone, "job", Some("vm")));
        assert!(!is_test_clone(&clone, "job", Some("other-vm")));
        assert!(!is_test_clone(&clone, "other-job", None));
        assert!(!is_test_clone(&r, "job", None));
    }

    /// A clone of a target snapshot, failed over: no replication key left, our marks only.
    fn marked_clone(uuid: &str, job: &str, vm: &str, at: &str) -> TargetVm {
        TargetVm {
            reference: format!("ref-{uuid}"),
            uuid: uuid.into(),
            name_label: "web01 - cr / vhdsync 20240101T000000Z".into(),
            other_config: config(&[
                (FAILED_OVER, at),
                (keys::FAILED_OVER_JOB, job),
                (keys::FAILED_OVER_VM, vm),
                (keys::FAILED_OVER_FROM, "snap-1"),
            ]),
            ..TargetVm::default()
        }
    }

    #[test]
    fn failed_over_vms_of_this_job_and_vm_by_their_marks_or_older_traces() {
        let r = replica("r", "20240101T00:00:00Z");
        let legacy_classic = failed_over(replica("classic", "20230101T00:00:00Z"));
        let clone = marked_clone("clone", "job", "vm", "20240301T10:00:00Z");
        let other_vm = marked_clone("other", "job", "vm2", "20240302T10:00:00Z");
        // Marks win over the keys a classic replica still carries.
        let mut marked_elsewhere = failed_over(replica("elsewhere", "20230101T00:00:00Z"));
        marked_elsewhere
            .other_config
            .insert(keys::FAILED_OVER_JOB.into(), "another-job".into());
        marked_elsewhere
            .other_config
            .insert(keys::FAILED_OVER_VM.into(), "vm".into());
        // A live replica failed over before the marks: its target snapshots name the job.
        let live = TargetVm {
            reference: "ref-live".into(),
            uuid: "live".into(),
            other_config: config(&[(FAILED_OVER, "20240201T00:00:00Z")]),
            ..TargetVm::default()
        };
        let snapshot = TargetVm {
            reference: "ref-snap".into(),
            uuid: "snap".into(),
            is_a_snapshot: true,
            snapshot_of: "ref-live".into(),
            other_config: config(&[
                (keys::JOB, "job"),
                (keys::VM, "vm"),
                (keys::SR, "sr"),
                (keys::DATETIME, "20240131T00:00:00Z"),
            ]),
            ..TargetVm::default()
        };
        let vms = vec![
            r,
            legacy_classic,
            clone,
            other_vm,
            marked_elsewhere,
            live,
            snapshot,
        ];
        let found: Vec<(&str, Option<i64>, Option<&str>)> = failed_over_vms(&vms, &id())
            .iter()
            .map(|f| (f.vm.uuid.as_str(), f.at, f.restore_point))
            .collect();
        assert_eq!(
            found,
            [
                ("clone", Some(1_709_287_200), Some("snap-1")),
                ("live", Some(1_706_745_600), None),
                ("classic", None, None),
            ]
        );
    }

    #[test]
    fn a_second_failover_is_refused_unless_forced() {
        let vms = vec![
            replica("old", "20240101T00:00:00Z"),
            replica("new", "20240102T00:00:00Z"),
        ];
        let first = choose(&vms, &id(), None, false).unwrap();
        assert_eq!(
            (first.restore_point.as_str(), first.kind, first.datetime),
            ("new", PointKind::ReplicaVm, Some(1_704_153_600))
        );
        let mut after = vms.clone();
        after[1] = failed_over(after[1].clone());
        after[1]
            .other_config
            .insert(FAILED_OVER.into(), "20240103T04:05:06Z".into());
        let refused = choose(&after, &id(), None, false).unwrap_err();
        for part in [
            "VM vm was already failed over",
            "VM new",
            "2024-01-03T04:05:06Z",
            "--force",
        ] {
            assert!(refused.contains(part), "{part}: {refused}");
        }
        // Even naming a restore point: the refusal is about the VM, not the point.
        assert!(choose(&after, &id(), Some("old"), false).is_err());
        let forced = choose(&after, &id(), None, true).unwrap();
        assert_eq!(forced.restore_point, "old");
    }
}
