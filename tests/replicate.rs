//! `vhdsync replicate` and `status` between two lab hosts served in-process: a full and five
//! deltas checked by content, retention, the lock, job-file errors, continuing a chain made
//! with Xen Orchestra's classic metadata, and a failure mid-transfer.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

mod common;

use common::lab_pair::{Host, Run, vhdsync};
use vhdsync::replicate::keys;
use vhdsync::replicate::lock::VmLock;
use vhdsync::xapi::rpc::Value;

const MIB: u64 = 1 << 20;
const BIN: &str = env!("CARGO_BIN_EXE_vhdsync");
const BLOCK: u64 = 2 * MIB;

fn write_job(
    dir: &Path,
    source: &Host,
    target: &Host,
    vm: &str,
    retention: u32,
    extra: &str,
) -> std::path::PathBuf {
    let path = dir.join("job.toml");
    std::fs::write(
        &path,
        format!(
            "name = \"cr\"\nsource = \"{}\"\ntarget = \"{}\"\ntarget_sr = \"{}\"\nvms = [\"{vm}\"]\nretention = {retention}\nstate_dir = \"state\"\n{extra}",
            source.url(),
            target.url(),
            target.report.sr.uuid,
        ),
    )
    .unwrap();
    path
}

/// `replicate --json` of the job, successful or not.
async fn replicate(job: &Path) -> Run {
    vhdsync(&["replicate", "--job", job.to_str().unwrap(), "--json"]).await
}

/// The one VM's report of a run that must have succeeded.
fn report(run: &Run) -> &serde_json::Value {
    assert_eq!(run.code, 0, "replicate failed: {} {}", run.json, run.stderr);
    &run.json["vms"][0]["report"]
}

/// Digests of a replica's disks by userdevice, and the same for the source snapshot VDIs it
/// reports it copied.
async fn check_replica_matches(
    source: &Host,
    target: &Host,
    report: &serde_json::Value,
) -> BTreeMap<String, String> {
    let mut digests = BTreeMap::new();
    for disk in report["disks"].as_array().unwrap() {
        let ours = target.hash(disk["replica_vdi"].as_str().unwrap()).await;
        let theirs = source.hash(disk["source_vdi"].as_str().unwrap()).await;
        assert_eq!(
            ours, theirs,
            "disk {} of replica {}",
            disk["userdevice"], report["replica"]
        );
        digests.insert(disk["userdevice"].as_str().unwrap().to_owned(), ours);
    }
    digests
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_then_five_deltas_with_retention() {
    let source = Host::start(&[("web01", &[20 * MIB, 8 * MIB])]).await;
    let target = Host::start(&[]).await;
    let vm = &source.report.vms[0];
    let disks: Vec<String> = vm.disks.iter().map(|d| d.vdi.reference.clone()).collect();
    let dir = tempfile::tempdir().unwrap();
    let job = write_job(dir.path(), &source, &target, &vm.ids.uuid, 3, "");

    source.write(&disks[0], 0, 7 * MIB, Some(1)).await;
    source.write(&disks[1], MIB, 3 * MIB, Some(2)).await;
    let first = replicate(&job).await;
    let r = report(&first);
    assert_eq!(r["mode"], "full");
    assert_eq!(r["layout"], "new_live_replica");
    let live = r["replica"].as_str().unwrap().to_owned();
    // Restore point digests as made, by target snapshot uuid: the source snapshots go away
    // with retention.
    let mut expected: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    expected.insert(
        r["target_snapshot"].as_str().unwrap().into(),
        check_replica_matches(&source, &target, r).await,
    );

    let mut seed = 10;
    for round in 0..5u64 {
        // Random sector-level writes in a few blocks of each disk.
        let mut dirty: [std::collections::BTreeSet<u64>; 2] = Default::default();
        for (d, size) in [(0usize, 20 * MIB), (1, 8 * MIB)] {
            for _ in 0..2 {
                seed += 1;
                let offset =
                    (seed * 7_919 * 512 + round * 3 * MIB) % (size - 64 * 1024) / 512 * 512;
                let len = 512 * (1 + seed % 100);
                source.write(&disks[d], offset, len, Some(seed)).await;
                dirty[d].extend(offset / BLOCK..=(offset + len - 1) / BLOCK);
            }
        }
        let run = replicate(&job).await;
        let r = report(&run);
        assert_eq!(r["mode"], "delta", "round {round}: {r}");
        assert_eq!(r["layout"], "in_place", "round {round}: {r}");
        assert_eq!(
            r["replica"],
            live.as_str(),
            "the live replica keeps its uuid"
        );
        for disk in r["disks"].as_array().unwrap() {
            let d: usize = disk["userdevice"].as_str().unwrap().parse().unwrap();
            assert_eq!(
                disk["blocks"].as_u64().unwrap(),
                dirty[d].len() as u64,
                "round {round} disk {d}: only the changed blocks are sent"
            );
        }
        expected.insert(
            r["target_snapshot"].as_str().unwrap().into(),
            check_replica_matches(&source, &target, r).await,
        );
    }

    // Retention: 3 target snapshots remain, the newest three; each still holds what it was
    // made from, and carries the keys (the live replica carries none).
    let snapshots = target.target_snapshots().await;
    assert_eq!(snapshots.len(), 3, "retention 3");
    assert_eq!(expected.len(), 6);
    for (reference, snapshot) in &snapshots {
        let digests = expected
            .get(&snapshot.uuid)
            .unwrap_or_else(|| panic!("unexpected restore point {}", snapshot.uuid));
        for (device, _, vdi) in target.disks(reference).await {
            assert_eq!(
                &target.hash(&vdi.uuid).await,
                &digests[&device],
                "retained snapshot {} disk {device}",
                snapshot.name_label
            );
            assert!(vdi.other_config.contains_key(keys::CONTENT_KEY));
        }
        assert!(!snapshot.other_config.contains_key(keys::IMPORTING));
    }
    let lives = target.live_replicas().await;
    assert_eq!(lives.len(), 1);
    let (live_ref, live_vm) = &lives[0];
    assert_eq!(live_vm.uuid, live);
    assert_eq!(
        live_vm.blocked_operations.get("start").map(String::as_str),
        Some(keys::START_BLOCKED)
    );
    assert_eq!(
        live_vm
            .other_config
            .get(keys::AUTO_POWERON)
            .map(String::as_str),
        Some("false")
    );
    assert!(live_vm.other_config.keys().all(|k| !k.starts_with("xo:")));
    assert!(
        target.replicas().await.is_empty(),
        "no VM of the classic layout"
    );
    // Exactly the live replica's and the snapshots' disks exist on the target.
    assert_eq!(target.vdi_count().await, 2 + 3 * 2);
    // The source keeps one snapshot (the base) besides the VM's own disks.
    let snapshots: Vec<_> = source
        .vms()
        .await
        .into_iter()
        .filter(|(_, v)| v.is_a_snapshot)
        .collect();
    assert_eq!(snapshots.len(), 1, "snapshot retention keeps the base only");

    // A live replica someone started (its start block removed) is a VM of its own: the
    // next run builds a new live replica from the newest snapshot, still a delta, and
    // leaves the started one alone.
    target
        .call(
            "VM.remove_from_blocked_operations",
            vec![Value::from(live_ref.as_str()), Value::from("start")],
        )
        .await;
    source.write(&disks[0], 0, 512, Some(99)).await;
    let run = replicate(&job).await;
    let r = report(&run);
    assert_eq!(
        (r["mode"].as_str(), r["layout"].as_str()),
        (Some("delta"), Some("new_live_replica")),
        "{r}"
    );
    check_replica_matches(&source, &target, r).await;
    let vms: Vec<String> = target
        .vms()
        .await
        .into_iter()
        .map(|(_, v)| v.uuid)
        .collect();
    assert!(vms.contains(&live), "the started replica survives");
    assert_eq!(target.target_snapshots().await.len(), 3);

    // status lists them, and --max-age works as an RPO check.
    let status = tokio::process::Command::new(BIN)
        .args(["status", "--job"])
        .arg(&job)
        .args(["--max-age", "1h", "--json"])
        .output()
        .await
        .unwrap();
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    let doc: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    let rows = doc["vms"][0]["replicas"].as_array().unwrap();
    assert_eq!(
        rows.iter().filter(|r| r["valid"] == true).count(),
        4,
        "{doc}"
    );
    assert_eq!(rows[0]["kind"], "live_replica", "{doc}");
    assert_eq!(
        rows.iter()
            .filter(|r| r["kind"] == "target_snapshot")
            .count(),
        3
    );
    let stale = tokio::process::Command::new(BIN)
        .args(["status", "--job"])
        .arg(&job)
        .args(["--max-age", "0s"])
        .output()
        .await
        .unwrap();
    // The newest replica is at least 0 s old; age > 0 s only after a second.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let stale_later = tokio::process::Command::new(BIN)
        .args(["status", "--job"])
        .arg(&job)
        .args(["--max-age", "0s"])
        .output()
        .await
        .unwrap();
    assert!(stale.status.code().is_some());
    assert_eq!(
        stale_later.status.code(),
        Some(1),
        "a replica older than --max-age fails the check"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lock_and_job_file_errors() {
    let source = Host::start(&[("web01", &[4 * MIB])]).await;
    let target = Host::start(&[]).await;
    let vm = source.report.vms[0].ids.uuid.clone();
    let dir = tempfile::tempdir().unwrap();
    let job = write_job(dir.path(), &source, &target, &vm, 2, "");
    let text = std::fs::read_to_string(&job).unwrap();
    let job_id = vhdsync::replicate::job::Job::parse(&text, &job)
        .unwrap()
        .job_id;

    let held = VmLock::acquire(
        &dir.path().join("state"),
        &job_id,
        &vm,
        std::time::SystemTime::now(),
    )
    .unwrap();
    let run = replicate(&job).await;
    assert_eq!(run.code, 3, "lock contention exits 3: {}", run.stderr);
    assert!(
        run.json["vms"][0]["error"]
            .as_str()
            .unwrap()
            .contains(&std::process::id().to_string()),
        "names the holder: {}",
        run.json
    );
    drop(held);
    assert_eq!(report(&replicate(&job).await)["mode"], "full");

    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, text.replace("retention = 2", "retension = 2")).unwrap();
    let out = tokio::process::Command::new(BIN)
        .args(["replicate", "--job"])
        .arg(&bad)
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("retension") && stderr.contains(":6:"),
        "names the key and line: {stderr}"
    );
    std::fs::write(&bad, text.replace(&vm, "not-a-uuid")).unwrap();
    let out = tokio::process::Command::new(BIN)
        .args(["replicate", "--job"])
        .arg(&bad)
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr.contains("vms") && stderr.contains("not-a-uuid"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chain_with_xo_classic_metadata_continues_with_a_delta() {
    let source = Host::start(&[("web01", &[6 * MIB, 4 * MIB])]).await;
    let target = Host::start(&[("old replica", &[6 * MIB, 4 * MIB])]).await;
    let vm = &source.report.vms[0];
    let disks: Vec<String> = vm.disks.iter().map(|d| d.vdi.reference.clone()).collect();
    source.write(&disks[0], 0, 3 * MIB, Some(1)).await;
    source.write(&disks[1], MIB, MIB, Some(2)).await;
    let dir = tempfile::tempdir().unwrap();
    let job = write_job(dir.path(), &source, &target, &vm.ids.uuid, 2, "");
    let ids = vhdsync::replicate::job::Job::load(&job).unwrap();

    // As Xen Orchestra <= 2023 left it: a snapshot with the keys on the VM only...
    let snapshot = source
        .call(
            "VM.snapshot",
            vec![
                Value::from(vm.ids.reference.as_str()),
                Value::from("[XO Backup cr] web01"),
            ],
        )
        .await;
    let snapshot = snapshot.as_str().unwrap().to_owned();
    for (key, value) in [
        (keys::DATETIME, "20240115T10:20:30Z"),
        (keys::JOB, ids.job_id.as_str()),
        (keys::SCHEDULE, ids.schedule_id.as_str()),
        (keys::VM, vm.ids.uuid.as_str()),
        (keys::EXPORTED, "true"),
        (keys::DELTA_CHAIN_LENGTH, "0"),
    ] {
        source
            .call(
                "VM.add_to_other_config",
                vec![
                    Value::from(snapshot.as_str()),
                    Value::from(key),
                    Value::from(value),
                ],
            )
            .await;
    }
    // ...and a replica VM whose VDIs hold the snapshot's content and name its VDIs in
    // xo:copy_of, with the VM-level keys and the start block.
    let old = &target.report.vms[0];
    let snapshot_disks = source.disks(&snapshot).await;
    let old_disks = target.disks(&old.ids.reference).await;
    for ((_, snap_ref, snap_vdi), (_, old_ref, _)) in snapshot_disks.iter().zip(&old_disks) {
        let copied = tokio::process::Command::new(BIN)
            .args([
                "copy-vdi",
                "--from",
                &source.url(),
                "--vdi",
                snap_ref,
                "--to",
                &target.url(),
                "--target-vdi",
                old_ref,
            ])
            .output()
            .await
            .unwrap();
        assert!(
            copied.status.success(),
            "{}",
            String::from_utf8_lossy(&copied.stderr)
        );
        target
            .call(
                "VDI.add_to_other_config",
                vec![
                    Value::from(old_ref.as_str()),
                    Value::from(keys::COPY_OF),
                    Value::from(snap_vdi.uuid.as_str()),
                ],
            )
            .await;
    }
    let snapshot_uuid = source
        .call("VM.get_uuid", vec![Value::from(snapshot.as_str())])
        .await;
    for (key, value) in [
        (keys::COPY_OF, snapshot_uuid.as_str().unwrap()),
        (keys::JOB, ids.job_id.as_str()),
        (keys::SCHEDULE, ids.schedule_id.as_str()),
        (keys::VM, vm.ids.uuid.as_str()),
        (keys::SR, target.report.sr.uuid.as_str()),
        (keys::DATETIME, "20240115T10:20:30Z"),
    ] {
        target
            .call(
                "VM.add_to_other_config",
                vec![
                    Value::from(old.ids.reference.as_str()),
                    Value::from(key),
                    Value::from(value),
                ],
            )
            .await;
    }
    target
        .call(
            "VM.add_to_blocked_operations",
            vec![
                Value::from(old.ids.reference.as_str()),
                Value::from("start"),
                Value::from(keys::START_BLOCKED),
            ],
        )
        .await;

    source.write(&disks[0], 4 * MIB, 4096, Some(3)).await;
    let run = replicate(&job).await;
    let r = report(&run);
    assert_eq!(r["mode"], "delta", "continued, not a new full: {r}");
    assert_eq!(r["disks"][0]["blocks"], 1);
    assert_eq!(r["disks"][1]["blocks"], 0);
    check_replica_matches(&source, &target, r).await;
    // Converted to the current layout: the classic replica is now the live replica, updated
    // in place, its classic content kept as a target snapshot beside the new one.
    assert_eq!(r["layout"], "in_place", "{r}");
    assert_eq!(r["replica"], old.ids.uuid.as_str());
    assert_eq!(target.target_snapshots().await.len(), 2);
    assert!(
        target.replicas().await.is_empty(),
        "no classic VM left with keys"
    );
    assert!(target.unused_vdis().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_mid_transfer_leaves_the_target_as_it_was() {
    let source = Host::start(&[("web01", &[24 * MIB])]).await;
    let target = Host::start(&[]).await;
    let vm = &source.report.vms[0];
    let disk = vm.disks[0].vdi.reference.clone();
    let dir = tempfile::tempdir().unwrap();
    let job = write_job(dir.path(), &source, &target, &vm.ids.uuid, 2, "");
    source.write(&disk, 0, 4 * MIB, Some(1)).await;
    let first = replicate(&job).await;
    let restore_point = report(&first)["target_snapshot"]
        .as_str()
        .unwrap()
        .to_owned();
    let (snapshot_ref, _) = target
        .target_snapshots()
        .await
        .into_iter()
        .find(|(_, s)| s.uuid == restore_point)
        .unwrap();
    let before_digest = target.disk_uuids(&snapshot_ref).await["0"].clone();
    let before_digest = target.hash(&before_digest).await;

    // The import connection drops in the middle of the next delta.
    source.write(&disk, 6 * MIB, 16 * MIB, Some(2)).await;
    let spec: BTreeMap<String, Value> = [
        ("kind", Value::from("drop_import")),
        ("after_bytes", Value::Int(3 * MIB as i64)),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    target
        .call("lab.inject_fault", vec![Value::Struct(spec)])
        .await;
    let failed = replicate(&job).await;
    assert_eq!(failed.code, 1, "{}", failed.json);
    let error = failed.json["vms"][0]["error"].as_str().unwrap();
    assert_eq!(failed.json["vms"][0]["phase"], "transfer", "{error}");
    // The target dropped the import: the report says so in a kind callers can match.
    assert_eq!(failed.json["vms"][0]["kind"], "target_refused", "{error}");
    assert!(
        error.contains("disk 0") && error.contains(&vm.ids.uuid),
        "names VM and disk: {error}"
    );

    // The half-written live replica is gone; the restore point is intact and the only
    // object of the job left; nothing leaked.
    let vms = target.vms().await;
    assert_eq!(vms.len(), 1, "{vms:?}");
    assert_eq!(vms[0].1.uuid, restore_point);
    let disk_now = target.disk_uuids(&snapshot_ref).await["0"].clone();
    assert_eq!(target.hash(&disk_now).await, before_digest);
    assert!(target.unused_vdis().await.is_empty());

    // The next run recovers with a delta into a new live replica built from the snapshot,
    // and the previous restore point is kept (retention 2).
    let next = replicate(&job).await;
    let r = report(&next);
    assert_eq!(
        (r["mode"].as_str(), r["layout"].as_str()),
        (Some("delta"), Some("new_live_replica")),
        "{r}"
    );
    check_replica_matches(&source, &target, r).await;
    let snapshots: Vec<String> = target
        .target_snapshots()
        .await
        .into_iter()
        .map(|(_, v)| v.uuid)
        .collect();
    assert!(
        snapshots.contains(&restore_point),
        "the previous restore point is kept (retention 2)"
    );
}

/// The job of `write_job` as the library loads it, its lock files in `dir`.
fn load_job(dir: &Path, source: &Host, target: &Host, vm: &str) -> vhdsync::replicate::job::Job {
    let path = write_job(dir, source, target, vm, 2, "");
    let mut job = vhdsync::replicate::job::Job::load(&path).unwrap();
    job.state_dir = dir.join("state");
    job
}

/// One cycle of the library's `replicate_vm` between the two hosts.
async fn cycle(
    source: &Host,
    target: &Host,
    settings: &vhdsync::replicate::run::CycleSettings,
    vm: &str,
    observer: vhdsync::replicate::run::CycleObserver<'_>,
    cancel: &tokio_util::sync::CancellationToken,
) -> Result<vhdsync::replicate::run::CycleReport, vhdsync::replicate::run::CycleError> {
    let (source, target) = (&source.client, &target.client);
    vhdsync::replicate::run::replicate_vm(source, target, settings, vm, observer, cancel).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_cycle_ends_cancelled_and_leaves_no_replica() {
    use std::sync::Arc;
    use tokio_util::sync::CancellationToken;
    use vhdsync::replicate::clock::SystemClock;
    use vhdsync::replicate::run::{CycleEvent, EventKind};
    use vhdsync::replicate::run::{ErrorKind, Phase};
    use vhdsync::xapi::transfer::TransferOptions;

    let source = Host::start(&[("web01", &[24 * MIB])]).await;
    let target = Host::start(&[]).await;
    let vm = &source.report.vms[0];
    let uuid = vm.ids.uuid.as_str();
    source
        .write(&vm.disks[0].vdi.reference, 0, 16 * MIB, Some(3))
        .await;
    let dir = tempfile::tempdir().unwrap();
    let job = load_job(dir.path(), &source, &target, uuid);
    let settings = job.cycle_settings(TransferOptions::default(), Arc::new(SystemClock));
    let source_vms = source.vms().await.len();
    let mut quiet = |_: &CycleEvent<'_>| {};

    // Cancelled before it starts: nothing is touched.
    let cancelled = CancellationToken::new();
    cancelled.cancel();
    let early = cycle(&source, &target, &settings, uuid, &mut quiet, &cancelled)
        .await
        .unwrap_err();
    assert_eq!(early.kind(), ErrorKind::Cancelled, "{early}");

    // Cancelled once bytes move (an operator's ctrl-c): the transfer stops, and what the
    // cycle made goes away on both sides.
    let cancel = CancellationToken::new();
    let mut cancel_on_progress = |event: &CycleEvent<'_>| {
        if let EventKind::DiskProgress { progress, .. } = event.kind
            && progress.bytes > 0
        {
            cancel.cancel();
        }
    };
    let error = cycle(
        &source,
        &target,
        &settings,
        uuid,
        &mut cancel_on_progress,
        &cancel,
    )
    .await
    .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Cancelled, "{error}");
    assert_eq!(error.phase, Phase::Transfer, "{error}");
    assert_eq!(error.disk.as_deref(), Some("0"), "{error}");
    assert!(target.replicas().await.is_empty(), "a replica was left");
    assert!(target.unused_vdis().await.is_empty(), "disks were left");
    assert_eq!(
        source.vms().await.len(),
        source_vms,
        "the snapshot was left"
    );

    // Nothing in the way of the next run, which is a full.
    let next = CancellationToken::new();
    let report = cycle(&source, &target, &settings, uuid, &mut quiet, &next)
        .await
        .unwrap();
    assert_eq!(report.mode, "full");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_cycle_is_reported_as_a_failed_vm() {
    use std::sync::{Arc, Mutex};
    use tokio_util::sync::CancellationToken;
    use vhdsync::replicate::clock::SystemClock;
    use vhdsync::replicate::run::{CycleEvent, EventKind};
    use vhdsync::replicate::runner::{RunOptions, VmOutcome, run_job};
    use vhdsync::xapi::transfer::TransferOptions;

    let source = Host::start(&[("web01", &[4 * MIB])]).await;
    let target = Host::start(&[]).await;
    let vm = &source.report.vms[0];
    source
        .write(&vm.disks[0].vdi.reference, 0, MIB, Some(4))
        .await;
    let dir = tempfile::tempdir().unwrap();
    let job = load_job(dir.path(), &source, &target, &vm.ids.uuid);
    let connect = |host: &Host| {
        let url = vhdsync::xapi::HostUrl::parse(&host.url()).unwrap();
        async move {
            vhdsync::xapi::client::XapiClient::connect(
                url,
                &vhdsync::xapi::tls::Trust::Insecure,
                None,
            )
            .await
            .unwrap()
        }
    };
    // A progress display with a bug: the VM's task panics in the middle of its transfer.
    let options = RunOptions {
        transfer: TransferOptions::default(),
        observer: Arc::new(Mutex::new(|event: &CycleEvent<'_>| {
            if let EventKind::DiskProgress { progress: p, .. } = event.kind {
                assert!(p.bytes == 0, "the display cannot show {} bytes", p.bytes);
            }
        })),
        cancel: CancellationToken::new(),
        clock: Arc::new(SystemClock),
    };
    let outcomes = run_job(
        &job,
        Arc::new(connect(&source).await),
        Arc::new(connect(&target).await),
        &[],
        options,
    )
    .await;
    assert_eq!(outcomes.len(), 1, "the VM is missing from the outcomes");
    let (vm_uuid, outcome) = &outcomes[0];
    assert_eq!(vm_uuid, &vm.ids.uuid);
    match outcome {
        VmOutcome::Panicked(message) => {
            assert!(message.contains("the display cannot show"), "{message}")
        }
        other => panic!("not reported as panicked: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_stops_the_run_and_removes_what_it_created() {
    let source = Host::start(&[("web01", &[16 * MIB])]).await;
    let target = Host::start(&[]).await;
    let vm = &source.report.vms[0];
    source
        .write(&vm.disks[0].vdi.reference, 0, 8 * MIB, Some(5))
        .await;
    let dir = tempfile::tempdir().unwrap();
    let job = write_job(dir.path(), &source, &target, &vm.ids.uuid, 2, "");
    // The export stalls after its first MiB, long enough to be interrupted mid-transfer (the
    // cancelled transfer waits, bounded, for the source to end its export task).
    source
        .inject(vec![
            ("kind", Value::from("stall")),
            ("on", Value::from("export")),
            ("seconds", Value::Int(8)),
            ("after_bytes", Value::Int(MIB as i64)),
        ])
        .await;
    let child = tokio::process::Command::new(BIN)
        .args(["replicate", "--json", "--stall-timeout", "60", "--job"])
        .arg(&job)
        .current_dir(dir.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    while target.replicas().await.is_empty() {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "no replica was begun"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let pid = child.id().unwrap().to_string();
    let sent = std::process::Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .unwrap();
    assert!(sent.success());
    let out = tokio::time::timeout(Duration::from_secs(20), child.wait_with_output())
        .await
        .expect("the run did not stop on SIGINT")
        .unwrap();
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("no JSON: {}", String::from_utf8_lossy(&out.stderr)));
    assert_eq!(out.status.code(), Some(1), "{doc}");
    assert_eq!(doc["vms"][0]["kind"], "cancelled", "{doc}");
    assert!(
        target.replicas().await.is_empty(),
        "a replica was left: {doc}"
    );
    assert!(
        target.unused_vdis().await.is_empty(),
        "disks were left: {doc}"
    );
}
