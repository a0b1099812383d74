//! `failover` and `test-failover` between two in-process lab hosts: a test clone boots while
//! replication goes on with deltas and retention leaves it alone, `--cleanup` removes it;
//! failover refuses to act without `--yes` off a terminal, then unblocks and starts the
//! replica, which no later cycle deletes or builds on.

mod common;

use common::lab_pair::{Host, MIB, check_replica_matches, replicate, vhdsync, write_job};
use vhdsync::replicate::failover::{TEST_FAILOVER_JOB, TEST_TAG};
use vhdsync::replicate::keys;
use vhdsync::xapi::rpc::Value;

async fn replicated_pair(retention: u32) -> (Host, Host, tempfile::TempDir, std::path::PathBuf) {
    let source = Host::start(&[("web01", &[4 * MIB, 2 * MIB])]).await;
    let target = Host::start(&[]).await;
    let vm = &source.report.vms[0];
    source
        .write(&vm.disks[0].vdi.reference, 0, 4 * MIB, Some(1))
        .await;
    let dir = tempfile::tempdir().unwrap();
    let job = write_job(dir.path(), &source, &target, &vm.ids.uuid, retention);
    let first = replicate(&job).await;
    assert_eq!(first["mode"], "full");
    (source, target, dir, job)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_failover_boots_a_clone_and_replication_goes_on_with_deltas() {
    let (source, target, _dir, job) = replicated_pair(1).await;
    let job_arg = job.to_str().unwrap();
    let vm = source.report.vms[0].ids.uuid.clone();
    let vdis_before = target.vdi_count().await;

    let run = vhdsync(&[
        "test-failover",
        "--job",
        job_arg,
        "--vm",
        &vm,
        "--start",
        "--json",
    ])
    .await;
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    let clone_uuid = run.json["clone"].as_str().unwrap().to_owned();
    let clone_ref = target.text("VM.get_by_uuid", &[&clone_uuid]).await;
    let clone = target.vm(&clone_ref).await;
    assert!(
        clone.name_label.starts_with("[test] "),
        "{}",
        clone.name_label
    );
    assert_eq!(clone.power_state, "Running");
    assert!(clone.tags.iter().any(|t| t == TEST_TAG));
    assert!(!clone.tags.iter().any(|t| t == keys::REPLICA_TAG));
    assert!(clone.other_config.keys().all(|k| !k.starts_with("xo:")));
    for (_, _, vdi) in target.disks(&clone_ref).await {
        assert!(
            vdi.other_config.keys().all(|k| !k.starts_with("xo:")),
            "{:?}",
            vdi.other_config
        );
    }
    // The guest writes on the clone; the replica is untouched.
    let clone_disk = target.disks(&clone_ref).await[0].1.clone();
    target.write(&clone_disk, 0, MIB, Some(5)).await;

    // Replication goes on: a delta, and retention (1) deletes the old replica, not the clone.
    source
        .write(
            &source.report.vms[0].disks[1].vdi.reference,
            0,
            MIB,
            Some(2),
        )
        .await;
    let report = replicate(&job).await;
    assert_eq!(report["mode"], "delta", "{report:#}");
    check_replica_matches(&source, &target, &report).await;
    assert_eq!(report["deleted_replicas"].as_array().unwrap().len(), 1);
    assert_eq!(target.vm(&clone_ref).await.power_state, "Running");

    let run = vhdsync(&["test-failover", "--cleanup", "--job", job_arg, "--json"]).await;
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    assert_eq!(run.json["removed"], serde_json::json!([clone_uuid]));
    assert!(
        !target
            .vms()
            .await
            .iter()
            .any(|(_, vm)| vm.other_config.contains_key(TEST_FAILOVER_JOB))
    );
    assert_eq!(target.vdi_count().await, vdis_before);
    // Nothing left to clean.
    let run = vhdsync(&["test-failover", "--cleanup", "--job", job_arg, "--json"]).await;
    assert_eq!(run.json["removed"], serde_json::json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_unblocks_and_starts_the_replica_which_no_cycle_touches_again() {
    let (source, target, _dir, job) = replicated_pair(1).await;
    let job_arg = job.to_str().unwrap();
    let vm = source.report.vms[0].ids.uuid.clone();
    let replica_uuid = target
        .vms()
        .await
        .into_iter()
        .find(|(_, v)| v.blocked_operations.contains_key("start"))
        .unwrap()
        .1
        .uuid;

    // No terminal and no --yes: refused, nothing changed.
    let run = vhdsync(&["failover", "--job", job_arg, "--vm", &vm, "--start"]).await;
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(run.stderr.contains("--yes"), "{}", run.stderr);
    let replica_ref = target.text("VM.get_by_uuid", &[&replica_uuid]).await;
    assert_eq!(
        target.vm(&replica_ref).await.blocked_operations["start"],
        keys::START_BLOCKED
    );
    // A replica that is not one of this VM's: refused.
    let run = vhdsync(&[
        "failover",
        "--job",
        job_arg,
        "--vm",
        &vm,
        "--replica",
        &vm,
        "--yes",
    ])
    .await;
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(
        run.stderr.contains("no VM with that UUID on the target"),
        "{}",
        run.stderr
    );

    let run = vhdsync(&[
        "failover", "--job", job_arg, "--vm", &vm, "--start", "--yes",
    ])
    .await;
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    assert!(
        run.stdout.contains(&replica_uuid) && run.stdout.contains("live replica"),
        "{}",
        run.stdout
    );
    let replica = target.vm(&replica_ref).await;
    assert_eq!(replica.power_state, "Running");
    assert!(
        replica.blocked_operations.is_empty(),
        "{:?}",
        replica.blocked_operations
    );
    for (_, _, vdi) in target.disks(&replica_ref).await {
        assert!(!vdi.other_config.contains_key(keys::COPY_OF));
    }

    // The next cycle builds a new live replica from the newest target snapshot (still a
    // delta) and, with retention 1, deletes nothing of the failed-over VM.
    let report = replicate(&job).await;
    assert_eq!(report["mode"], "delta", "{report:#}");
    assert_eq!(report["layout"], "new_live_replica", "{report:#}");
    assert_ne!(report["replica"], replica_uuid.as_str());
    check_replica_matches(&source, &target, &report).await;
    let report = replicate(&job).await;
    assert_eq!(report["mode"], "delta", "{report:#}");
    assert_eq!(report["layout"], "in_place", "{report:#}");
    let still = target.vm(&replica_ref).await;
    assert_eq!(still.power_state, "Running");
    // Failing over to it again is refused: it is no replica any more.
    let run = vhdsync(&[
        "failover",
        "--job",
        job_arg,
        "--vm",
        &vm,
        "--replica",
        &replica_uuid,
        "--yes",
    ])
    .await;
    assert_eq!(run.code, 2);
    assert!(run.stderr.contains("already failed over"), "{}", run.stderr);
    let _ = target
        .call("VM.hard_shutdown", vec![Value::from(replica_ref.as_str())])
        .await;
}
