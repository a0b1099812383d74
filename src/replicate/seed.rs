//! Linking a source snapshot and a target VM that holds the same disks as a job's base and
//! replica, so that the job's next cycle sends only a delta: what `xo-cr-seed` does, plus
//! what current Xen Orchestra needs (`xo-replication.md` §13.5): the keys on the snapshot's
//! VDIs too, `contentKey`, `deltaChainLength`, and the replica's protection.
//!
//! [`match_disks`] and [`seed_writes`] are the pure decisions; [`seed`] reads the records,
//! calls them and writes the answers.

use super::clock::Clock;
use super::commit::{CommitDisk, ReplicaCommit, commit_replica};
use super::inventory::load_snapshot;
use super::keys;
use super::op_error::OpError;
use super::op_error::on_host as host;
use super::plan::{Identity, SnapshotDisk};
use crate::xapi::client::XapiClient;
use crate::xapi::ops::{Class, MapName};
use crate::xapi::records::{SrRecord, StringMap, VdiRecord, VmRecord};

/// One disk of the pair: the source snapshot's VDI and the target VM's at its userdevice.
#[derive(Debug, Clone, PartialEq)]
pub struct DiskPair {
    pub userdevice: String,
    pub source: SnapshotDisk,
    pub target: SnapshotDisk,
}

/// Pairs the disks by userdevice. Both sides must have the same userdevices, and each pair
/// the same virtual size: a seed with a missing, extra or differently sized disk would make
/// the next delta wrong or full.
pub fn match_disks(
    source: &[SnapshotDisk],
    target: &[SnapshotDisk],
) -> Result<Vec<DiskPair>, String> {
    if source.is_empty() {
        return Err("the source snapshot has no disks".into());
    }
    let mut problems = Vec::new();
    let mut pairs = Vec::new();
    for s in source {
        match target.iter().find(|t| t.userdevice == s.userdevice) {
            None => problems.push(format!(
                "disk {} ({} bytes) of the source snapshot has no disk at userdevice {} on the target VM",
                s.userdevice, s.virtual_size, s.userdevice
            )),
            Some(t) if t.virtual_size != s.virtual_size => problems.push(format!(
                "disk {}: the source snapshot's VDI {} is {} bytes, the target VM's VDI {} is {} bytes",
                s.userdevice, s.vdi_uuid, s.virtual_size, t.vdi_uuid, t.virtual_size
            )),
            Some(t) => pairs.push(DiskPair {
                userdevice: s.userdevice.clone(),
                source: s.clone(),
                target: t.clone(),
            }),
        }
    }
    for t in target {
        if !source.iter().any(|s| s.userdevice == t.userdevice) {
            problems.push(format!(
                "disk {} (VDI {}) of the target VM has no disk at that userdevice in the source snapshot",
                t.userdevice, t.vdi_uuid
            ));
        }
    }
    if problems.is_empty() {
        Ok(pairs)
    } else {
        Err(format!("the disks do not match: {}", problems.join("; ")))
    }
}

/// What the seed writes on the source, and the replica's name; the replica's keys are
/// `ReplicaCommit`'s.
#[derive(Debug, Clone, PartialEq)]
pub struct SeedWrites {
    /// On the source snapshot VM and on every one of its VDIs, after [`SOURCE_REMOVED`].
    pub source: Vec<(String, StringMap)>,
    pub target_name: String,
}

/// The facts the keys are made of.
#[derive(Debug, Clone)]
pub struct SeedFacts<'a> {
    pub id: &'a Identity,
    pub snapshot_ref: &'a str,
    pub snapshot_uuid: &'a str,
    /// The snapshot's `xo:backup:datetime`: its `snapshot_time` in XO's form.
    pub datetime: &'a str,
    pub source_vm_name: &'a str,
}

/// The source snapshot's keys, identical on the snapshot VM (first) and each of its VDIs,
/// plus `contentKey` = its own uuid on each VDI: what every XO version's base discovery
/// reads (`xo-replication.md` §13.5).
pub fn source_seed_keys(
    id: &Identity,
    datetime: &str,
    snapshot_ref: &str,
    disks: &[SnapshotDisk],
) -> Vec<(String, StringMap)> {
    let common: StringMap = [
        (keys::DATETIME, datetime),
        (keys::JOB, id.job_id.as_str()),
        (keys::SCHEDULE, id.schedule_id.as_str()),
        (keys::VM, id.vm_uuid.as_str()),
        (keys::EXPORTED, "true"),
        (keys::DELTA_CHAIN_LENGTH, "0"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let mut out = vec![(snapshot_ref.to_owned(), common.clone())];
    for disk in disks {
        let mut vdi = common.clone();
        vdi.insert(keys::CONTENT_KEY.into(), disk.vdi_uuid.clone());
        out.push((disk.vdi_ref.clone(), vdi));
    }
    out
}

/// Which keys go where on the source, and the seeded replica's name (`xo-replication.md`
/// §13.5, "Seeding that works with all versions").
pub fn seed_writes(facts: &SeedFacts<'_>, pairs: &[DiskPair]) -> SeedWrites {
    let sources: Vec<SnapshotDisk> = pairs.iter().map(|p| p.source.clone()).collect();
    SeedWrites {
        source: source_seed_keys(facts.id, facts.datetime, facts.snapshot_ref, &sources),
        target_name: format!("{} ({})", facts.source_vm_name, facts.datetime),
    }
}

/// The seeded replica: its VM and tags, and the name it takes.
#[derive(Debug, Clone, Copy)]
pub struct SeededReplica<'a> {
    pub vm_ref: &'a str,
    pub tags: &'a [String],
    pub name: &'a str,
}

/// Link a replica and a source snapshot: commit the replica (Xen Orchestra's keys and
/// protection, as a cycle's), then write the snapshot's keys (it becomes a base only once
/// its replica is marked). `seed` and `seed-import` both end here.
pub async fn link(
    source: &XapiClient,
    target: &XapiClient,
    facts: &SeedFacts<'_>,
    pairs: &[DiskPair],
    replica: SeededReplica<'_>,
    committed_ms: u128,
) -> Result<(), OpError> {
    let commit = ReplicaCommit {
        id: facts.id,
        vm_ref: replica.vm_ref,
        tags: replica.tags,
        snapshot_uuid: facts.snapshot_uuid,
        datetime: facts.datetime,
        name: replica.name,
        committed_ms,
        disks: pairs
            .iter()
            .map(|p| CommitDisk {
                vdi_ref: &p.target.vdi_ref,
                copy_of: &p.source.vdi_uuid,
                name_label: None,
            })
            .collect(),
    };
    commit_replica(target, &commit).await.map_err(host(format!(
        "writing the replica's metadata on {}",
        target.host()
    )))?;
    let writes = seed_writes(facts, pairs);
    write_source(source, &writes.source).await
}

/// Keys removed from the source snapshot VM and VDIs: with them it would not count as a
/// job snapshot (`xo:copy_of`) or would look like a replica (`xo:backup:sr`).
pub const SOURCE_REMOVED: [&str; 2] = [keys::SR, keys::COPY_OF];

/// A UUID in its canonical textual form, as Xen Orchestra's ids are.
pub fn check_uuid(what: &str, text: &str) -> Result<(), OpError> {
    uuid::Uuid::try_parse(text)
        .map(|_| ())
        .map_err(|e| OpError::Invalid(format!("{what} {text:?} is not a UUID: {e}")))
}

/// What a seed did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SeedReport {
    pub snapshot: String,
    pub source_vm: String,
    pub target_vm: String,
    pub target_name: String,
    pub target_sr: String,
    pub disks: Vec<SeededDisk>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct SeededDisk {
    pub userdevice: String,
    pub virtual_size: u64,
    pub source_vdi: String,
    pub target_vdi: String,
}

/// Seed: validate the pair, then write the target's keys and protection, then the source
/// snapshot's keys (the snapshot becomes a base only once its replica is marked).
pub async fn seed(
    source: &XapiClient,
    target: &XapiClient,
    snapshot_uuid: &str,
    target_vm_uuid: &str,
    job_id: &str,
    schedule_id: &str,
    clock: &dyn Clock,
) -> Result<SeedReport, OpError> {
    check_uuid("the job id", job_id)?;
    check_uuid("the schedule id", schedule_id)?;
    check_uuid("the snapshot", snapshot_uuid)?;
    check_uuid("the target VM", target_vm_uuid)?;
    let (snapshot_ref, snapshot, source_vm) = find_snapshot(source, snapshot_uuid).await?;
    let (target_ref, target_vm) = find_vm(target, target_vm_uuid, "target VM").await?;
    if target_vm.is_a_snapshot || target_vm.is_a_template {
        return Err(OpError::Invalid(format!(
            "target VM {target_vm_uuid} on {} is a snapshot or template, not a VM",
            target.host()
        )));
    }
    if target_vm.power_state != "Halted" {
        return Err(OpError::Invalid(format!(
            "target VM {target_vm_uuid} on {} is {}: a replica must be halted and never have run since its import",
            target.host(),
            target_vm.power_state
        )));
    }
    let source_disks = load_snapshot(source, &snapshot_ref)
        .await
        .map_err(host("reading the source snapshot's disks"))?
        .disks;
    let target_disks = load_snapshot(target, &target_ref)
        .await
        .map_err(host("reading the target VM's disks"))?
        .disks;
    let pairs = match_disks(&source_disks, &target_disks).map_err(OpError::Invalid)?;
    let sr_uuid = target_sr(target, &pairs).await?;
    let id = Identity {
        job_id: job_id.to_lowercase(),
        schedule_id: schedule_id.to_lowercase(),
        vm_uuid: source_vm.uuid.clone(),
        sr_uuid: sr_uuid.clone(),
    };
    let datetime = keys::parse_datetime(&snapshot.snapshot_time)
        .map(keys::datetime)
        .unwrap_or_else(|| snapshot.snapshot_time.clone());
    let facts = SeedFacts {
        id: &id,
        snapshot_ref: &snapshot_ref,
        snapshot_uuid: &snapshot.uuid,
        datetime: &datetime,
        source_vm_name: &source_vm.name_label,
    };
    let target_name = seed_writes(&facts, &pairs).target_name;
    let replica = SeededReplica {
        vm_ref: &target_ref,
        tags: &target_vm.tags,
        name: &target_name,
    };
    link(source, target, &facts, &pairs, replica, clock.unix_ms()).await?;
    Ok(SeedReport {
        snapshot: snapshot.uuid,
        source_vm: source_vm.uuid,
        target_vm: target_vm.uuid,
        target_name,
        target_sr: sr_uuid,
        disks: pairs
            .iter()
            .map(|p| SeededDisk {
                userdevice: p.userdevice.clone(),
                virtual_size: p.source.virtual_size,
                source_vdi: p.source.vdi_uuid.clone(),
                target_vdi: p.target.vdi_uuid.clone(),
            })
            .collect(),
    })
}

/// The UUID of the VM whose snapshot `snapshot_uuid` is: the VM whose lease (`lease`) a seed
/// takes on the source.
pub async fn source_vm_of(source: &XapiClient, snapshot_uuid: &str) -> Result<String, OpError> {
    check_uuid("the snapshot", snapshot_uuid)?;
    Ok(find_snapshot(source, snapshot_uuid).await?.2.uuid)
}

/// The source snapshot (reference and record), refused unless it is a snapshot of a VM that
/// still exists, and that VM's record.
async fn find_snapshot(
    source: &XapiClient,
    snapshot_uuid: &str,
) -> Result<(String, VmRecord, VmRecord), OpError> {
    let (snapshot_ref, snapshot) = find_vm(source, snapshot_uuid, "source snapshot").await?;
    if !snapshot.is_a_snapshot {
        return Err(OpError::Invalid(format!(
            "{snapshot_uuid} on {} is not a snapshot ({:?} is a {}): give the UUID of the snapshot the target VM was made from",
            source.host(),
            snapshot.name_label,
            if snapshot.is_a_template {
                "template"
            } else {
                "VM"
            }
        )));
    }
    let source_vm: VmRecord = source
        .get_record(&snapshot.snapshot_of)
        .await
        .map_err(|_| {
            OpError::Invalid(format!(
                "snapshot {snapshot_uuid}: the VM it is a snapshot of ({}) no longer exists on {}",
                snapshot.snapshot_of,
                source.host()
            ))
        })?;
    Ok((snapshot_ref, snapshot, source_vm))
}

async fn find_vm(host: &XapiClient, uuid: &str, what: &str) -> Result<(String, VmRecord), OpError> {
    match host.record_by_uuid::<VmRecord>(uuid).await {
        Ok(found) => Ok(found),
        Err(e) if e.xapi_code() == Some("UUID_INVALID") => Err(OpError::Invalid(format!(
            "{what} {uuid}: no such VM on {}",
            host.host()
        ))),
        Err(e) => Err(OpError::Host {
            context: format!("reading {what} {uuid}"),
            source: e,
        }),
    }
}

/// The target SR: the one holding every target disk (the job's `target_sr` must name it).
async fn target_sr(target: &XapiClient, pairs: &[DiskPair]) -> Result<String, OpError> {
    let mut srs = Vec::new();
    for pair in pairs {
        let vdi: VdiRecord = target
            .get_record(&pair.target.vdi_ref)
            .await
            .map_err(host(format!("reading target VDI {}", pair.target.vdi_uuid)))?;
        let sr: SrRecord = target
            .get_record(&vdi.sr)
            .await
            .map_err(host(format!("reading the SR of target VDI {}", vdi.uuid)))?;
        if !srs.contains(&sr.uuid) {
            srs.push(sr.uuid);
        }
    }
    match srs.as_slice() {
        [one] => Ok(one.clone()),
        _ => Err(OpError::Invalid(format!(
            "the target VM's disks are on {} SRs ({}): a replica's disks must all be on the job's target SR",
            srs.len(),
            srs.join(", ")
        ))),
    }
}

/// The source snapshot's keys, on the VM and every VDI.
pub(crate) async fn write_source(
    source: &XapiClient,
    entries: &[(String, StringMap)],
) -> Result<(), OpError> {
    let on_source = host(format!(
        "writing the snapshot's metadata on {}",
        source.host()
    ));
    let result = async {
        for (i, (reference, entries)) in entries.iter().enumerate() {
            let class = if i == 0 { Class::Vm } else { Class::Vdi };
            let config = MapName::OtherConfig;
            source
                .remove_entries(class, reference, config, &SOURCE_REMOVED)
                .await?;
            source.set_map(class, reference, config, entries).await?;
        }
        Ok(())
    };
    result.await.map_err(on_source)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn disk(dev: &str, uuid: &str, size: u64) -> SnapshotDisk {
        SnapshotDisk {
            userdevice: dev.into(),
            vdi_ref: format!("ref-{uuid}"),
            vdi_uuid: uuid.into(),
            virtual_size: size,
            other_config: StringMap::new(),
        }
    }

    #[test]
    fn disks_match_by_userdevice_with_equal_sizes() {
        let source = [disk("0", "s0", 100), disk("1", "s1", 50)];
        // Target order does not matter; userdevice does.
        let target = [disk("1", "t1", 50), disk("0", "t0", 100)];
        let pairs = match_disks(&source, &target).unwrap();
        assert_eq!(
            pairs
                .iter()
                .map(|p| (p.userdevice.as_str(), p.target.vdi_uuid.as_str()))
                .collect::<Vec<_>>(),
            [("0", "t0"), ("1", "t1")]
        );
        let table: [(&[SnapshotDisk], &[SnapshotDisk], &str); 4] = [
            (
                &source,
                &[disk("0", "t0", 100)],
                "disk 1 (50 bytes) of the source snapshot has no disk at userdevice 1",
            ),
            (
                &source,
                &[disk("0", "t0", 100), disk("1", "t1", 51)],
                "disk 1: the source snapshot's VDI s1 is 50 bytes, the target VM's VDI t1 is 51 bytes",
            ),
            (
                &source[..1],
                &target,
                "disk 1 (VDI t1) of the target VM has no disk",
            ),
            (&[], &target, "the source snapshot has no disks"),
        ];
        for (s, t, expected) in table {
            let err = match_disks(s, t).unwrap_err();
            assert!(err.contains(expected), "{err}");
        }
    }

    #[test]
    fn keys_go_on_the_snapshot_and_its_vdis() {
        let id = Identity {
            job_id: "job".into(),
            schedule_id: "sched".into(),
            vm_uuid: "vm".into(),
            sr_uuid: "sr".into(),
        };
        let pairs = match_disks(&[disk("0", "s0", 100)], &[disk("0", "t0", 100)]).unwrap();
        let facts = SeedFacts {
            id: &id,
            snapshot_ref: "snapref",
            snapshot_uuid: "snap",
            datetime: "20240115T10:20:30Z",
            source_vm_name: "web01",
        };
        let w = seed_writes(&facts, &pairs);
        let get = |list: &[(String, StringMap)], r: &str, k: &str| {
            list.iter()
                .find(|(reference, _)| reference == r)
                .and_then(|(_, m)| m.get(k).cloned())
        };
        for (r, k, v) in [
            ("snapref", keys::JOB, Some("job")),
            ("snapref", keys::EXPORTED, Some("true")),
            ("snapref", keys::DELTA_CHAIN_LENGTH, Some("0")),
            ("snapref", keys::CONTENT_KEY, None),
            ("ref-s0", keys::DATETIME, Some("20240115T10:20:30Z")),
            ("ref-s0", keys::VM, Some("vm")),
            ("ref-s0", keys::EXPORTED, Some("true")),
            ("ref-s0", keys::CONTENT_KEY, Some("s0")),
        ] {
            assert_eq!(get(&w.source, r, k).as_deref(), v, "{r} {k}");
        }
        // The replica side moved to `commit`'s tests.
        assert_eq!(w.target_name, "web01 (20240115T10:20:30Z)");
    }

    #[test]
    fn ids_must_be_uuids() {
        assert!(check_uuid("the job id", "5b4c1c0e-9b1e-4b8e-8f1a-2f1f6c9d0e11").is_ok());
        let err = check_uuid("the job id", "nightly").unwrap_err();
        assert!(err.is_input());
        assert!(
            err.to_string()
                .contains("the job id \"nightly\" is not a UUID")
        );
    }
}
