//! A source VM's metadata is hostile input: anyone who can edit the VM on the source pool can
//! set any `other_config` key. None of them may make vhdsync take a replica for one of its
//! own objects (a test clone, an interrupted import) and destroy it.

mod common;

use common::lab_pair::{Host, MIB, replicate, vhdsync, write_job};
use vhdsync::replicate::failover::{TEST_CLONE_OF, TEST_FAILOVER_JOB, TEST_FAILOVER_VM};
use vhdsync::replicate::keys;
use vhdsync::xapi::rpc::Value;

/// Every key vhdsync keeps its own state in, set on the source VM by an attacker, with the
/// values the attacker can guess (the job id is in the replicas' metadata, readable to anyone
/// who can read the target).
async fn forge_own_keys(source: &Host, vm_ref: &str, job_id: &str, vm_uuid: &str) {
    for (key, value) in [
        (TEST_FAILOVER_JOB, job_id),
        (TEST_FAILOVER_VM, vm_uuid),
        (TEST_CLONE_OF, vm_uuid),
        (keys::IMPORTING, "20240101T00:00:00Z"),
        (keys::COMMITTED_MS, "99999999999999"),
    ] {
        source
            .call(
                "VM.add_to_other_config",
                vec![Value::from(vm_ref), Value::from(key), Value::from(value)],
            )
            .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_own_keys_on_the_source_never_reach_a_replica_nor_get_it_destroyed() {
    let source = Host::start(&[("web01", &[4 * MIB])]).await;
    let target = Host::start(&[]).await;
    let vm = &source.report.vms[0];
    let vm_uuid = vm.ids.uuid.clone();
    source
        .write(&vm.disks[0].vdi.reference, 0, 4 * MIB, Some(1))
        .await;
    let dir = tempfile::tempdir().unwrap();
    let job = write_job(dir.path(), &source, &target, &vm_uuid, 2);
    let first = replicate(&job).await;
    assert_eq!(first["mode"], "full", "{first:#}");
    let job_id = first["job_id"].as_str().unwrap_or_default().to_owned();
    let job_id = if job_id.is_empty() {
        // The job id is on every replica; an attacker reads it there.
        target.target_snapshots().await[0].1.other_config[keys::JOB].clone()
    } else {
        job_id
    };

    forge_own_keys(&source, &vm.ids.reference, &job_id, &vm_uuid).await;
    // A name that looks like an import in progress, escape codes included.
    source
        .call(
            "VM.set_name_label",
            vec![
                Value::from(vm.ids.reference.as_str()),
                Value::from(format!("{}web01\x1b[2J", keys::IMPORTING_VM_PREFIX).as_str()),
            ],
        )
        .await;
    source
        .write(&vm.disks[0].vdi.reference, 0, MIB, Some(2))
        .await;
    let second = replicate(&job).await;
    assert_eq!(second["mode"], "delta", "{second:#}");
    let replica_uuid = second["target_snapshot"].as_str().unwrap().to_owned();
    let replica_ref = target.text("VM.get_by_uuid", &[&replica_uuid]).await;
    // The attack: cleaning up test clones must not touch the replicas.
    let replicas_before = target.target_snapshots().await.len();
    let vdis_before = target.vdi_count().await;
    let cleanup = vhdsync(&[
        "test-failover",
        "--job",
        job.to_str().unwrap(),
        "--cleanup",
        "--json",
    ])
    .await;
    assert_eq!(cleanup.code, 0, "{}{}", cleanup.stdout, cleanup.stderr);
    assert_eq!(target.target_snapshots().await.len(), replicas_before);
    assert_eq!(target.vdi_count().await, vdis_before);
    let replica = target.vm(&replica_ref).await;
    let forged: Vec<&String> = replica
        .other_config
        .keys()
        .filter(|k| k.starts_with("vhdsync:") && *k != keys::COMMITTED_MS)
        .collect();
    assert!(forged.is_empty(), "source keys copied: {forged:?}");
    assert_ne!(
        replica
            .other_config
            .get(keys::COMMITTED_MS)
            .map(String::as_str),
        Some("99999999999999"),
        "the commit time came from the source"
    );

    // And the next cycle neither cleans the replica up as interrupted nor loses its chain.
    source
        .write(&vm.disks[0].vdi.reference, MIB, MIB, Some(3))
        .await;
    let third = replicate(&job).await;
    assert_eq!(third["mode"], "delta", "{third:#}");
    assert!(
        third["cleaned_up"].as_array().is_none_or(|c| c.is_empty()),
        "{third:#}"
    );
    // Retention 2: the second restore point is still there, kept, not removed as junk.
    target.vm(&replica_ref).await;
    assert_eq!(target.target_snapshots().await.len(), 2);

    // The escape codes in the VM's name reach no terminal raw (issue 17 finding 10).
    let job_arg = job.to_str().unwrap();
    for args in [
        &["replicate", "--job", job_arg][..],
        &["status", "--job", job_arg][..],
    ] {
        let run = vhdsync(args).await;
        assert_eq!(run.code, 0, "{args:?}: {}{}", run.stdout, run.stderr);
        let printed = format!("{}{}", run.stdout, run.stderr);
        assert!(
            !printed.contains('\x1b'),
            "{args:?} printed an escape: {printed:?}"
        );
        assert!(printed.contains("web01\\u{1b}[2J"), "{args:?}: {printed}");
    }
}
