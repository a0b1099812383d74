//! Mixed sequences of Xen Orchestra's runs (6.3+ layout, replayed through its XAPI calls by
//! `common::xo_writer`) and vhdsync's on the same job, chain and lab hosts (issue 18): each
//! continues the other's chain with a delta, the contents match, retention counts both
//! tools' restore points, and no VM or VDI leaks. Also failover then failback.

mod common;

use std::collections::BTreeMap;

use common::lab_pair::{Host, MIB, check_replica_matches, replicate, vhdsync, write_job};
use common::xo_writer::{XoJob, xo_run};
use vhdsync::replicate::job::Job;

/// The target's objects: (live replicas, target snapshots, every VM count).
async fn census(target: &Host) -> (usize, usize, usize) {
    (
        target.live_replicas().await.len(),
        target.target_snapshots().await.len(),
        target.vms().await.len(),
    )
}

/// The live replica's disks hold `expected` (userdevice -> source VDI uuid).
async fn live_holds(source: &Host, target: &Host, expected: &BTreeMap<String, String>) {
    let lives = target.live_replicas().await;
    assert_eq!(lives.len(), 1, "one live replica");
    for (device, vdi) in target.disk_uuids(&lives[0].0).await {
        assert_eq!(
            target.hash(&vdi).await,
            source.hash(&expected[&device]).await,
            "live replica disk {device}"
        );
    }
}

fn report_sources(report: &serde_json::Value) -> BTreeMap<String, String> {
    report["disks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["userdevice"].as_str().unwrap().to_owned(),
                d["source_vdi"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

struct Pair {
    source: Host,
    target: Host,
    _dir: tempfile::TempDir,
    job: std::path::PathBuf,
    ids: Job,
    vm: String,
    disks: Vec<String>,
}

async fn pair(retention: u32) -> Pair {
    let source = Host::start(&[("web01", &[12 * MIB, 6 * MIB])]).await;
    let target = Host::start(&[]).await;
    let vm = source.report.vms[0].ids.uuid.clone();
    let disks = source.report.vms[0]
        .disks
        .iter()
        .map(|d| d.vdi.reference.clone())
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let job = write_job(dir.path(), &source, &target, &vm, retention);
    let ids = Job::load(&job).unwrap();
    Pair {
        source,
        target,
        _dir: dir,
        job,
        ids,
        vm,
        disks,
    }
}

impl Pair {
    fn xo(&self) -> XoJob<'_> {
        XoJob {
            job_id: &self.ids.job_id,
            schedule_id: &self.ids.schedule_id,
            name: &self.ids.name,
            sr_uuid: &self.ids.target_sr,
        }
    }

    async fn guest_writes(&self, seed: u64) {
        self.source
            .write(&self.disks[0], seed * MIB % (10 * MIB), MIB, Some(seed))
            .await;
        self.source
            .write(
                &self.disks[1],
                (seed * 3 * MIB) % (4 * MIB),
                4096,
                Some(seed + 100),
            )
            .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xen_orchestras_chain_is_continued_with_a_delta_in_place() {
    let p = pair(3).await;
    p.guest_writes(1).await;
    let xo_full = xo_run(&p.source, &p.target, &p.xo(), &p.vm).await;
    assert!(xo_full.full);
    p.guest_writes(2).await;
    let xo_delta = xo_run(&p.source, &p.target, &p.xo(), &p.vm).await;
    assert!(!xo_delta.full, "the emulated XO continues its own chain");
    live_holds(&p.source, &p.target, &xo_delta.source_vdis).await;

    // vhdsync after XO: a delta, written in place into XO's live replica.
    p.guest_writes(3).await;
    let r = replicate(&p.job).await;
    assert_eq!(
        (r["mode"].as_str(), r["layout"].as_str()),
        (Some("delta"), Some("in_place")),
        "{r:#}"
    );
    assert_eq!(r["replica"], xo_delta.live_vm.as_str());
    check_replica_matches(&p.source, &p.target, &r).await;
    eprintln!(
        "XO full {} B, XO delta {} B, vhdsync delta after XO {} B",
        xo_full.bytes, xo_delta.bytes, r["bytes_sent"]
    );
    // Retention 3 counts XO's snapshots with ours: 2 + 1.
    assert_eq!(census(&p.target).await, (1, 3, 4));
    p.guest_writes(4).await;
    let r = replicate(&p.job).await;
    assert_eq!(r["mode"], "delta");
    assert_eq!(r["deleted_replicas"].as_array().unwrap().len(), 1, "{r:#}");
    assert_eq!(census(&p.target).await, (1, 3, 4));
    assert!(p.target.unused_vdis().await.is_empty());
    assert!(p.source.unused_vdis().await.is_empty());

    // status and failover see XO's objects too.
    let status = vhdsync(&["status", "--job", p.job.to_str().unwrap(), "--json"]).await;
    let rows = status.json["vms"][0]["replicas"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(rows.len(), 4, "{}", status.stdout);
    assert_eq!(rows[0]["kind"], "live_replica");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vhdsync_then_xen_orchestra_then_vhdsync_all_deltas_in_place() {
    let p = pair(2).await;
    p.guest_writes(1).await;
    let first = replicate(&p.job).await;
    assert_eq!(first["mode"], "full");
    let live = first["replica"].as_str().unwrap().to_owned();

    p.guest_writes(2).await;
    let xo = xo_run(&p.source, &p.target, &p.xo(), &p.vm).await;
    assert!(
        !xo.full,
        "XO finds vhdsync's target snapshot by its content key"
    );
    assert_eq!(
        xo.live_vm, live,
        "and updates vhdsync's live replica in place"
    );
    live_holds(&p.source, &p.target, &xo.source_vdis).await;

    p.guest_writes(3).await;
    // Settings changed on the source reach the live replica updated in place.
    let source_vm = p.source.text("VM.get_by_uuid", &[&p.vm]).await;
    for (method, n) in [("VM.set_VCPUs_max", 4), ("VM.set_VCPUs_at_startup", 3)] {
        p.source
            .call(
                method,
                vec![source_vm.as_str().into(), vhdsync::xapi::rpc::Value::Int(n)],
            )
            .await;
    }
    let r = replicate(&p.job).await;
    assert_eq!(
        (r["mode"].as_str(), r["layout"].as_str()),
        (Some("delta"), Some("in_place")),
        "{r:#}"
    );
    assert_eq!(r["replica"], live.as_str());
    let live_ref = p.target.text("VM.get_by_uuid", &[&live]).await;
    let vcpus = p
        .target
        .call("VM.get_VCPUs_at_startup", vec![live_ref.as_str().into()])
        .await;
    assert_eq!(vcpus.as_i64(), Some(3), "{vcpus:?}");
    check_replica_matches(&p.source, &p.target, &r).await;
    live_holds(&p.source, &p.target, &report_sources(&r)).await;
    eprintln!(
        "vhdsync full {} B, XO delta {} B, vhdsync delta {} B",
        first["bytes_sent"], xo.bytes, r["bytes_sent"]
    );
    // Retention 2 over both tools' snapshots; one live replica; nothing leaked.
    assert_eq!(census(&p.target).await, (1, 2, 3));
    assert!(p.target.unused_vdis().await.is_empty());
    assert!(p.source.unused_vdis().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_then_failback_sends_a_delta() {
    let p = pair(2).await;
    p.guest_writes(1).await;
    replicate(&p.job).await;
    p.guest_writes(2).await;
    let last = replicate(&p.job).await;
    assert_eq!(last["mode"], "delta");

    // Disaster: fail over to the live replica on the DR site and run it there.
    let run = vhdsync(&[
        "failover",
        "--job",
        p.job.to_str().unwrap(),
        "--vm",
        &p.vm,
        "--yes",
        "--start",
    ])
    .await;
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    let promoted_uuid = last["replica"].as_str().unwrap().to_owned();
    let promoted = p.target.text("VM.get_by_uuid", &[&promoted_uuid]).await;
    p.target
        .call("VM.hard_shutdown", vec![promoted.as_str().into()])
        .await;
    let promoted_disks = p.target.disk_uuids(&promoted).await;
    p.target
        .write(&promoted_disks["0"], 2 * MIB, MIB, Some(77))
        .await;

    // Failback: a job replicating the promoted VM back to the original site's SR.
    let dir = tempfile::tempdir().unwrap();
    let back = write_job(dir.path(), &p.target, &p.source, &promoted_uuid, 2);
    let text = std::fs::read_to_string(&back)
        .unwrap()
        .replace("name = \"cr\"", "name = \"failback\"");
    std::fs::write(&back, text).unwrap();
    let r = replicate(&back).await;
    assert_eq!(
        r["mode"], "delta",
        "failback is a delta against the original site's disks: {r:#}"
    );
    check_replica_matches(&p.target, &p.source, &r).await;
    eprintln!(
        "failback delta {} B of {} B",
        r["bytes_sent"], r["virtual_size"]
    );
    assert!(p.source.unused_vdis().await.is_empty());
    assert!(p.target.unused_vdis().await.is_empty());
}
