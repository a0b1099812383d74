//! The commit of a replica: Xen Orchestra's keys on the replica and its disks, its name,
//! the start block, `auto_poweron` off, HA priority cleared, the replica tag, and last the
//! removal of our importing key, which is what makes the replica valid
//! (`xo-replication.md` §7, §8). [`commit_replica`] commits a classic replica VM (`seed`,
//! `seed-import`); [`commit_live`] commits the cycle's live replica and its target snapshot.

use super::keys;
use super::plan::Identity;
use super::replica::replica_keys;
use crate::xapi::client::{ClientError, XapiClient};
use crate::xapi::ops::{Class, MapName};
use crate::xapi::records::StringMap;

/// One replica disk to commit.
#[derive(Debug, Clone)]
pub struct CommitDisk<'a> {
    pub vdi_ref: &'a str,
    /// The source snapshot VDI it is a copy of: its `xo:copy_of` and `contentKey`.
    pub copy_of: &'a str,
    /// The name to give the disk (the source VDI's, replacing `[Importing] …`), if any.
    pub name_label: Option<&'a str>,
}

/// A replica to commit on the target.
#[derive(Debug, Clone)]
pub struct ReplicaCommit<'a> {
    pub id: &'a Identity,
    pub vm_ref: &'a str,
    /// The replica's tags now: the replica tag is added only when missing.
    pub tags: &'a [String],
    /// The source snapshot VM it is a copy of.
    pub snapshot_uuid: &'a str,
    /// `xo:backup:datetime`, in XO's form.
    pub datetime: &'a str,
    pub name: &'a str,
    /// Ours: orders replicas committed within one second.
    pub committed_ms: u128,
    pub disks: Vec<CommitDisk<'a>>,
}

impl ReplicaCommit<'_> {
    /// The replica VM's `other_config` entries.
    pub fn vm_keys(&self) -> StringMap {
        let mut vm = replica_keys(self.id, self.datetime);
        vm.insert(keys::COPY_OF.into(), self.snapshot_uuid.to_owned());
        vm.insert(keys::AUTO_POWERON.into(), "false".into());
        vm.insert(keys::COMMITTED_MS.into(), self.committed_ms.to_string());
        vm
    }

    /// A replica disk's `other_config` entries.
    pub fn disk_keys(&self, disk: &CommitDisk<'_>) -> StringMap {
        let mut vdi = replica_keys(self.id, self.datetime);
        vdi.insert(keys::COPY_OF.into(), disk.copy_of.to_owned());
        vdi.insert(keys::CONTENT_KEY.into(), disk.copy_of.to_owned());
        vdi
    }
}

/// The keys a live replica and its disks lose once its target snapshot carries them
/// (XO §7.2: after the snapshot only the target snapshots carry the keys).
const LIVE_CLEARED: &[&str] = &[
    keys::DATETIME,
    keys::JOB,
    keys::SCHEDULE,
    keys::VM,
    keys::SR,
    keys::COPY_OF,
    keys::CONTENT_KEY,
    keys::COMMITTED_MS,
];

/// Commit a live replica in the current layout, leaving nothing that looks valid unless it
/// is whole, whenever the sequence stops:
/// 1. the commit's keys, names and blocks, our importing key kept on the VM;
/// 2. `VM.snapshot`: the target snapshot, importing too, as its keys are copied;
/// 3. the importing key off the snapshot: the new restore point is valid;
/// 4. `exported`, through `mark_exported`: the source snapshot becomes the next base;
/// 5. the importing key off the live replica: it is valid too;
/// 6. the keys off the live replica and its disks.
///
/// Returns the target snapshot's reference.
pub async fn commit_live<F, Fut>(
    target: &XapiClient,
    commit: &ReplicaCommit<'_>,
    snapshot_name: &str,
    mark_exported: F,
) -> Result<String, CommitError>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Result<(), CommitError>>,
{
    write_commit(target, commit).await?;
    let vm = commit.vm_ref;
    let snapshot = target.snapshot_vm(vm, snapshot_name).await?;
    let config = MapName::OtherConfig;
    target
        .remove_entries(Class::Vm, &snapshot, config, &[keys::IMPORTING])
        .await?;
    mark_exported().await?;
    target
        .remove_entries(Class::Vm, vm, config, &[keys::IMPORTING])
        .await?;
    target
        .remove_entries(Class::Vm, vm, config, LIVE_CLEARED)
        .await?;
    for disk in &commit.disks {
        target
            .remove_entries(Class::Vdi, disk.vdi_ref, config, LIVE_CLEARED)
            .await?;
    }
    Ok(snapshot)
}

/// A failure of [`commit_live`]: on the target, or while marking the source snapshot.
#[derive(Debug)]
pub enum CommitError {
    Target(ClientError),
    Source(ClientError),
}

impl From<ClientError> for CommitError {
    fn from(e: ClientError) -> Self {
        CommitError::Target(e)
    }
}

/// Everything of a commit but the removal of our importing key.
async fn write_commit(target: &XapiClient, commit: &ReplicaCommit<'_>) -> Result<(), ClientError> {
    for disk in &commit.disks {
        if let Some(name) = disk.name_label {
            target.set_vdi_name_label(disk.vdi_ref, name).await?;
        }
        let entries = commit.disk_keys(disk);
        target
            .set_map(Class::Vdi, disk.vdi_ref, MapName::OtherConfig, &entries)
            .await?;
    }
    let vm = commit.vm_ref;
    target
        .set_map(Class::Vm, vm, MapName::OtherConfig, &commit.vm_keys())
        .await?;
    let blocked: Vec<(&str, &str)> = keys::BLOCKED_OPERATIONS
        .iter()
        .map(|op| (*op, keys::START_BLOCKED))
        .collect();
    target
        .set_entries(Class::Vm, vm, MapName::BlockedOperations, &blocked)
        .await?;
    if !commit.tags.iter().any(|t| t == keys::REPLICA_TAG) {
        target.add_vm_tag(vm, keys::REPLICA_TAG).await?;
    }
    target.clear_ha_restart_priority(vm).await?;
    target.set_vm_name_label(vm, commit.name).await
}

/// Write the commit on `target`. Until its last call the replica still carries our
/// importing key, so a commit cut short leaves a replica the next run removes.
pub async fn commit_replica(
    target: &XapiClient,
    commit: &ReplicaCommit<'_>,
) -> Result<(), ClientError> {
    write_commit(target, commit).await?;
    let vm = commit.vm_ref;
    // Last: dropping the importing key is what makes the replica valid.
    target
        .remove_entries(Class::Vm, vm, MapName::OtherConfig, &[keys::IMPORTING])
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Moved from `seed`'s tests: the replica side of a seed's keys.
    #[test]
    fn keys_go_on_the_replica_and_its_vdis() {
        let id = Identity {
            job_id: "job".into(),
            schedule_id: "sched".into(),
            vm_uuid: "vm".into(),
            sr_uuid: "sr".into(),
        };
        let commit = ReplicaCommit {
            id: &id,
            vm_ref: "tvmref",
            tags: &[],
            snapshot_uuid: "snap",
            datetime: "20240115T10:20:30Z",
            name: "web01 (20240115T10:20:30Z)",
            committed_ms: 7,
            disks: vec![CommitDisk {
                vdi_ref: "ref-t0",
                copy_of: "s0",
                name_label: None,
            }],
        };
        let vm = commit.vm_keys();
        for (k, v) in [
            (keys::COPY_OF, Some("snap")),
            (keys::SR, Some("sr")),
            (keys::AUTO_POWERON, Some("false")),
            (keys::SCHEDULE, Some("sched")),
            (keys::DATETIME, Some("20240115T10:20:30Z")),
            (keys::COMMITTED_MS, Some("7")),
            (keys::IMPORTING, None),
        ] {
            assert_eq!(vm.get(k).map(String::as_str), v, "VM {k}");
        }
        let disk = commit.disk_keys(&commit.disks[0]);
        for (k, v) in [
            (keys::COPY_OF, Some("s0")),
            (keys::CONTENT_KEY, Some("s0")),
            (keys::JOB, Some("job")),
            (keys::VM, Some("vm")),
        ] {
            assert_eq!(disk.get(k).map(String::as_str), v, "VDI {k}");
        }
    }
}
