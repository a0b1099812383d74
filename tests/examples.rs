//! The programs in `examples/`, run against in-process lab hosts so they cannot rot: each is
//! compiled in here as a module and its `main` without the printing is called with a command
//! line, as a user would give it.

mod common;

#[allow(dead_code)]
#[path = "../examples/copy_vdi.rs"]
mod copy_vdi;
#[allow(dead_code)]
#[path = "../examples/replicate_vm.rs"]
mod replicate_vm;

use common::lab_pair::{Host, MIB, check_replica_matches, write_job};
use vhdsync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_vdi_copies_a_whole_disk_then_a_delta() {
    let source = Host::start(&[("web01", &[16 * MIB])]).await;
    let target = Host::start(&[("blank", &[16 * MIB])]).await;
    let disk = source.report.vms[0].disks[0].vdi.uuid.clone();
    let copy = target.report.vms[0].disks[0].vdi.uuid.clone();
    source.write(&disk, MIB, 5 * MIB, Some(1)).await;
    let args = |extra: &[&str]| -> Vec<String> {
        [source.url().as_str(), &disk, &target.url(), &copy]
            .iter()
            .chain(extra)
            .map(|a| a.to_string())
            .collect()
    };
    let full = copy_vdi::copy(&args(&[])).await.unwrap();
    assert!(full.blocks >= 3, "{full:?}");
    assert_eq!(target.hash(&copy).await, source.hash(&disk).await);

    // A snapshot as the base, new writes, and the delta on top of the copy.
    let vm = &source.report.vms[0].ids.reference;
    let snapshot = source.snapshot(vm, "base").await;
    let base = source.disk_uuids(&snapshot).await["0"].clone();
    source.write(&disk, 9 * MIB, MIB, Some(2)).await;
    let delta = copy_vdi::copy(&args(&[&base])).await.unwrap();
    assert!(delta.blocks < full.blocks, "{delta:?} after {full:?}");
    assert_eq!(target.hash(&copy).await, source.hash(&disk).await);

    // A usage error and a wrong VDI fail with a message, no panic.
    let usage = copy_vdi::copy(&args(&[&base, "extra"])).await.unwrap_err();
    assert!(usage.to_string().contains("usage"), "{usage}");
    let mut unknown = args(&[]);
    unknown[1] = "00000000-0000-4000-8000-000000000000".into();
    assert!(copy_vdi::copy(&unknown).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicate_vm_makes_a_full_replica_then_a_delta() {
    let source = Host::start(&[("web01", &[16 * MIB, 8 * MIB])]).await;
    let target = Host::start(&[]).await;
    let vm = &source.report.vms[0];
    let dir = tempfile::tempdir().unwrap();
    let job = write_job(dir.path(), &source, &target, &vm.ids.uuid, 2);
    let args = [job.display().to_string(), vm.ids.uuid.to_uppercase()];
    let cancel = CancellationToken::new();

    source
        .write(&vm.disks[0].vdi.uuid, 0, 4 * MIB, Some(1))
        .await;
    let full = replicate_vm::replicate(&args, &cancel).await.unwrap();
    assert_eq!((full.mode, full.disks.len()), ("full", 2));
    check_replica_matches(&source, &target, &serde_json::to_value(&full).unwrap()).await;

    source
        .write(&vm.disks[1].vdi.uuid, 2 * MIB, MIB, Some(2))
        .await;
    let delta = replicate_vm::replicate(&args, &cancel).await.unwrap();
    assert_eq!(delta.mode, "delta");
    assert!(delta.bytes_sent < full.bytes_sent, "{delta:?}");
    check_replica_matches(&source, &target, &serde_json::to_value(&delta).unwrap()).await;
    assert_eq!(
        delta.replica, full.replica,
        "the live replica is updated in place"
    );
    assert_eq!(target.target_snapshots().await.len(), 2);

    // A cancelled token: the cycle ends cancelled and leaves no third restore point.
    cancel.cancel();
    let error = replicate_vm::replicate(&args, &cancel).await.unwrap_err();
    assert!(error.to_string().contains("cancelled"), "{error}");
    assert_eq!(target.target_snapshots().await.len(), 2);
}
