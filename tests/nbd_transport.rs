//! The CBT + NBD transport between two lab hosts, through `vhdsync replicate`: a delta over
//! NBD (with TLS) after scattered guest writes equals the source snapshot and sends little;
//! each fallback to the export path leaves a note and a correct replica; `transport = "nbd"`
//! fulls and its refusal without NBD; `purge_snapshot_data` leaves the previous base as
//! `cbt_metadata` (its change log still usable), later deltas still work and retention
//! removes what it leaves; an NBD connection
//! dropped mid-delta fails the cycle cleanly and the next run is correct.

use std::path::{Path, PathBuf};

mod common;

use common::lab_pair::{Host, MIB, Run, vhdsync};
use vhdsync::xapi::rpc::Value;

const DISK: u64 = 32 * MIB;
const EXTENT: u64 = 64 << 10;

fn job(dir: &Path, source: &Host, target: &Host, vm: &str, extra: &str) -> PathBuf {
    let path = dir.join("job.toml");
    std::fs::write(
        &path,
        format!(
            "name = \"cr\"\nsource = \"{}\"\ntarget = \"{}\"\ntarget_sr = \"{}\"\nvms = [\"{vm}\"]\n\
             retention = 2\nstate_dir = \"state\"\n{extra}",
            source.url(),
            target.url(),
            target.report.sr.uuid,
        ),
    )
    .unwrap();
    path
}

async fn replicate(job: &Path) -> Run {
    vhdsync(&["replicate", "--job", job.to_str().unwrap(), "--json"]).await
}

/// The one VM's report of a run that must have succeeded, its replica checked against the
/// source snapshot by content.
async fn succeeded(source: &Host, target: &Host, run: &Run) -> serde_json::Value {
    assert_eq!(run.code, 0, "replicate failed: {} {}", run.json, run.stderr);
    let report = run.json["vms"][0]["report"].clone();
    for disk in report["disks"].as_array().unwrap() {
        let ours = target.hash(disk["replica_vdi"].as_str().unwrap()).await;
        let theirs = source.hash(disk["source_vdi"].as_str().unwrap()).await;
        assert_eq!(
            ours, theirs,
            "disk {} differs: {report}",
            disk["userdevice"]
        );
    }
    report
}

fn disk0(report: &serde_json::Value) -> &serde_json::Value {
    &report["disks"][0]
}

fn notes(report: &serde_json::Value) -> String {
    report["notes"].to_string()
}

/// `count` 4 KiB guest writes spread over the disk, none sharing a 64 KiB extent.
async fn scatter(source: &Host, vdi: &str, count: u64, seed: u64) {
    let extents = DISK / EXTENT;
    for i in 0..count {
        let extent = (i * 7919 + seed * 13) % extents;
        let offset = extent * EXTENT + (i % 15) * 4096;
        source.write(vdi, offset, 4096, Some(seed * 1000 + i)).await;
    }
}

async fn purpose(host: &Host, change: &str, purpose: &str) {
    let network = host.report.networks[0].ids.reference.as_str();
    host.call(
        &format!("network.{change}_purpose"),
        vec![network.into(), purpose.into()],
    )
    .await;
}

struct Pair {
    _dir: tempfile::TempDir,
    source: Host,
    target: Host,
    vdi: String,
    vm: String,
    job: PathBuf,
}

async fn pair(extra: &str) -> Pair {
    let source = Host::start(&[("web01", &[DISK])]).await;
    let target = Host::start(&[]).await;
    let vm = source.report.vms[0].ids.uuid.clone();
    let vdi = source.report.vms[0].disks[0].vdi.reference.clone();
    let dir = tempfile::tempdir().unwrap();
    let job = job(dir.path(), &source, &target, &vm, extra);
    source.write(&vdi, 0, 3 * MIB, Some(1)).await;
    source.write(&vdi, 20 * MIB, MIB, Some(2)).await;
    Pair {
        _dir: dir,
        source,
        target,
        vdi,
        vm,
        job,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delta_over_tls_nbd_sends_only_the_changed_extents() {
    let p = pair("cbt = true\nnbd_concurrency = 3\n").await;
    purpose(&p.source, "add", "nbd").await;
    let full = succeeded(&p.source, &p.target, &replicate(&p.job).await).await;
    // `auto` sends a full over NBD when the host offers it.
    assert_eq!(
        (
            disk0(&full)["mode"].as_str(),
            disk0(&full)["transport"].as_str()
        ),
        (Some("full"), Some("nbd")),
        "{full}"
    );
    let cbt = p
        .source
        .call("VDI.get_cbt_enabled", vec![p.vdi.as_str().into()])
        .await;
    assert_eq!(cbt, Value::Bool(true), "cbt = true enabled CBT on the disk");

    scatter(&p.source, &p.vdi, 40, 3).await;
    let delta = succeeded(&p.source, &p.target, &replicate(&p.job).await).await;
    let d = disk0(&delta);
    assert_eq!(
        (d["mode"].as_str(), d["transport"].as_str()),
        (Some("delta"), Some("nbd")),
        "{delta}"
    );
    // 40 extents of 64 KiB: what was read, and sent with little more than bitmaps and a BAT.
    assert_eq!(d["bytes_read"], 40 * EXTENT, "{delta}");
    let sent = d["bytes_sent"].as_u64().unwrap();
    assert!(sent <= 2 * 40 * EXTENT + MIB, "{sent} bytes sent: {delta}");
    assert!(sent >= 40 * EXTENT, "{delta}");

    // A second delta, on the replica the first one left.
    scatter(&p.source, &p.vdi, 25, 4).await;
    p.source.write(&p.vdi, DISK - 4096, 4096, Some(9)).await;
    let next = succeeded(&p.source, &p.target, &replicate(&p.job).await).await;
    assert_eq!(disk0(&next)["transport"], "nbd", "{next}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_fallback_is_noted_and_gives_a_correct_replica() {
    let p = pair("").await;
    purpose(&p.source, "add", "insecure_nbd").await;
    succeeded(&p.source, &p.target, &replicate(&p.job).await).await;

    // CBT off: the export path, said so.
    scatter(&p.source, &p.vdi, 10, 5).await;
    let r = succeeded(&p.source, &p.target, &replicate(&p.job).await).await;
    assert_eq!(disk0(&r)["transport"], "stream", "{r}");
    assert!(notes(&r).contains("CBT is off"), "{r}");

    // `cbt = true` from now on: the base still has no change log, the new snapshot does.
    let job = job(
        p.job.parent().unwrap(),
        &p.source,
        &p.target,
        &p.vm,
        "cbt = true\n",
    );
    scatter(&p.source, &p.vdi, 10, 6).await;
    let r = succeeded(&p.source, &p.target, &replicate(&job).await).await;
    assert_eq!(disk0(&r)["transport"], "stream", "{r}");
    assert!(notes(&r).contains("CBT is off"), "{r}");

    // Both have change logs now: NBD.
    scatter(&p.source, &p.vdi, 10, 7).await;
    let r = succeeded(&p.source, &p.target, &replicate(&job).await).await;
    assert_eq!(disk0(&r)["transport"], "nbd", "{r}");

    // No NBD network any more: the export path.
    purpose(&p.source, "remove", "insecure_nbd").await;
    scatter(&p.source, &p.vdi, 10, 8).await;
    let r = succeeded(&p.source, &p.target, &replicate(&job).await).await;
    assert_eq!(disk0(&r)["transport"], "stream", "{r}");
    assert!(notes(&r).contains("offers no NBD"), "{r}");

    // The change log reset (disabled, then enabled again): the export path.
    purpose(&p.source, "add", "insecure_nbd").await;
    p.source
        .call("VDI.disable_cbt", vec![p.vdi.as_str().into()])
        .await;
    p.source
        .call("VDI.enable_cbt", vec![p.vdi.as_str().into()])
        .await;
    scatter(&p.source, &p.vdi, 10, 9).await;
    let r = succeeded(&p.source, &p.target, &replicate(&job).await).await;
    assert_eq!(disk0(&r)["transport"], "stream", "{r}");
    assert!(notes(&r).contains("no usable change log"), "{r}");

    // And back on NBD once a tracked base exists again.
    scatter(&p.source, &p.vdi, 10, 10).await;
    let r = succeeded(&p.source, &p.target, &replicate(&job).await).await;
    assert_eq!(disk0(&r)["transport"], "nbd", "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_auto_full_of_a_sparse_disk_goes_over_nbd_and_sends_no_more_than_the_export() {
    const BIG: u64 = 64 * MIB;
    let source = Host::start(&[("db01", &[BIG])]).await;
    let target = Host::start(&[]).await;
    let vm = source.report.vms[0].ids.uuid.clone();
    let vdi = source.report.vms[0].disks[0].vdi.reference.clone();
    let dir = tempfile::tempdir().unwrap();
    let job = job(dir.path(), &source, &target, &vm, "");
    // Blocks 0, 5, 20 and 21 of 2 MiB: 1 MiB, 4 KiB, and 2.5 MiB across two blocks.
    source.write(&vdi, 0, MIB, Some(21)).await;
    source.write(&vdi, 10 * MIB + 8192, 4096, Some(22)).await;
    source.write(&vdi, 40 * MIB, 5 * MIB / 2, Some(23)).await;
    purpose(&source, "add", "insecure_nbd").await;

    // What the export path would send for the same content: the dry run's estimate is the
    // export's exact length, from its BAT.
    let plan = vhdsync(&[
        "replicate",
        "--dry-run",
        "--json",
        "--job",
        job.to_str().unwrap(),
    ])
    .await;
    assert_eq!(plan.code, 0, "{} {}", plan.json, plan.stderr);
    let export = plan.json["vms"][0]["disks"][0]["estimated_bytes"]
        .as_u64()
        .unwrap();
    assert!((8 * MIB..9 * MIB).contains(&export), "{}", plan.json);

    let full = succeeded(&source, &target, &replicate(&job).await).await;
    let d = disk0(&full);
    assert_eq!(
        (d["mode"].as_str(), d["transport"].as_str()),
        (Some("full"), Some("nbd")),
        "{full}"
    );
    assert_eq!(
        d["bytes_read"],
        8 * MIB,
        "the allocated blocks only: {full}"
    );
    let sent = d["bytes_sent"].as_u64().unwrap();
    // The export's own 2 MiB blocks: not a byte more than the export would send.
    assert!(
        sent <= export,
        "{sent} over NBD, {export} by export: {full}"
    );
    assert!(sent >= 8 * MIB, "{sent}: {full}");
    // The export opened for the allocation left no task behind.
    let left = source
        .call("task.get_by_name_label", vec!["vhdsync allocation".into()])
        .await;
    assert_eq!(left, Value::Array(vec![]), "{full}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transport_nbd_sends_fulls_over_nbd_and_refuses_a_host_without_it() {
    let p = pair("cbt = true\ntransport = \"nbd\"\n").await;
    let refused = replicate(&p.job).await;
    assert_eq!(refused.code, 1, "{}", refused.json);
    let error = refused.json["vms"][0]["error"].as_str().unwrap();
    assert!(
        error.contains("transport \"nbd\"") && error.contains("no NBD"),
        "{error}"
    );
    assert!(p.target.replicas().await.is_empty());

    purpose(&p.source, "add", "insecure_nbd").await;
    let full = succeeded(&p.source, &p.target, &replicate(&p.job).await).await;
    let d = disk0(&full);
    assert_eq!(
        (d["mode"].as_str(), d["transport"].as_str()),
        (Some("full"), Some("nbd")),
        "{full}"
    );
    // Blocks 0, 1 and 10 (of 2 MiB) hold data: only they are read.
    assert_eq!(
        d["bytes_read"],
        6 * MIB,
        "a full reads the allocated blocks: {full}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purged_bases_keep_their_change_logs_and_later_deltas_work() {
    let p = pair("cbt = true\npurge_snapshot_data = true\nsnapshot_retention = 2\n").await;
    purpose(&p.source, "add", "insecure_nbd").await;
    let first = succeeded(&p.source, &p.target, &replicate(&p.job).await).await;
    let first_vdi = disk0(&first)["source_vdi"].as_str().unwrap().to_owned();
    scatter(&p.source, &p.vdi, 12, 11).await;
    let second = succeeded(&p.source, &p.target, &replicate(&p.job).await).await;
    assert_eq!(disk0(&second)["transport"], "nbd", "{second}");
    assert!(notes(&second).contains("purged the data"), "{second}");

    // The previous base's disk lost its data, not its change log; the new base is whole.
    let first_ref = p.source.text("VDI.get_by_uuid", &[&first_vdi]).await;
    assert_eq!(
        p.source.text("VDI.get_type", &[&first_ref]).await,
        "cbt_metadata"
    );
    let second_vdi = disk0(&second)["source_vdi"].as_str().unwrap();
    let second_ref = p.source.text("VDI.get_by_uuid", &[second_vdi]).await;
    assert_eq!(p.source.text("VDI.get_type", &[&second_ref]).await, "user");
    let changed = p
        .source
        .text("VDI.list_changed_blocks", &[&first_ref, &second_ref])
        .await;
    assert!(!changed.is_empty());

    // Later deltas go on over NBD; once retention removed the first snapshot, its
    // metadata goes too.
    let mut swept = false;
    for seed in 12..16 {
        scatter(&p.source, &p.vdi, 12, seed).await;
        let r = succeeded(&p.source, &p.target, &replicate(&p.job).await).await;
        assert_eq!(
            (disk0(&r)["mode"].as_str(), disk0(&r)["transport"].as_str()),
            (Some("delta"), Some("nbd")),
            "{r}"
        );
        if notes(&r).contains(&format!("CBT metadata of a removed snapshot {first_vdi}")) {
            swept = true;
            break;
        }
    }
    assert!(swept, "the first snapshot's metadata VDI was never swept");
    let vdis = p
        .source
        .client
        .get_all_records::<vhdsync::xapi::records::VdiRecord>()
        .await
        .unwrap();
    assert!(vdis.iter().all(|(_, v)| v.uuid != first_vdi));
    let metadata = vdis
        .iter()
        .filter(|(_, v)| v.kind == "cbt_metadata")
        .count();
    assert!(metadata <= 2, "{metadata} metadata VDIs kept");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_nbd_connection_dropped_mid_delta_fails_the_cycle_cleanly() {
    let p = pair("cbt = true\nnbd_concurrency = 2\n").await;
    purpose(&p.source, "add", "insecure_nbd").await;
    let first = succeeded(&p.source, &p.target, &replicate(&p.job).await).await;
    let restore_point = first["target_snapshot"].as_str().unwrap().to_owned();
    let replica_disk = disk0(&first)["replica_vdi"].as_str().unwrap().to_owned();
    let before = p.target.hash(&replica_disk).await;

    scatter(&p.source, &p.vdi, 60, 15).await;
    p.source
        .inject(vec![
            ("kind", Value::from("drop_nbd")),
            ("after_bytes", Value::Int((EXTENT * 5) as i64)),
        ])
        .await;
    let failed = replicate(&p.job).await;
    assert_eq!(failed.code, 1, "{}", failed.json);
    let vm = &failed.json["vms"][0];
    assert_eq!(vm["phase"], "transfer", "{vm}");
    let error = vm["error"].as_str().unwrap();
    assert!(error.contains("disk 0") && error.contains("NBD"), "{error}");

    // The restore point is intact and the only object of the job left on the target.
    let vms = p.target.vms().await;
    assert_eq!(vms.len(), 1, "{vms:?}");
    assert_eq!(vms[0].1.uuid, restore_point);
    let (snapshot_ref, _) = &vms[0];
    let disk_now = p.target.disk_uuids(snapshot_ref).await["0"].clone();
    assert_eq!(p.target.hash(&disk_now).await, before);
    assert!(p.target.unused_vdis().await.is_empty());

    // The next run recovers over NBD, from the same base.
    let next = succeeded(&p.source, &p.target, &replicate(&p.job).await).await;
    assert_eq!(
        (
            disk0(&next)["mode"].as_str(),
            disk0(&next)["transport"].as_str()
        ),
        (Some("delta"), Some("nbd")),
        "{next}"
    );
}

/// An in-memory stream for `import_stream`.
struct Frames(std::collections::VecDeque<bytes::Bytes>);

impl vhdsync::xapi::transfer::ChunkStream for Frames {
    type Error = std::convert::Infallible;

    async fn next_chunk(&mut self) -> Result<Option<bytes::Bytes>, Self::Error> {
        Ok(self.0.pop_front())
    }

    fn blocks(&self) -> (u32, Option<u32>) {
        (0, None)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lab_import_writes_only_what_partial_bitmaps_mark_in_2_mib_blocks() {
    use vhdsync::stream::extents::{ChangeMap, ExtentStream};
    use vhdsync::xapi::transfer::{TransferOptions, VdiOn, import_stream};
    let host = Host::start(&[("a", &[8 * MIB]), ("b", &[8 * MIB])]).await;
    let (t, u) = (
        host.report.vms[0].disks[0].vdi.reference.clone(),
        host.report.vms[1].disks[0].vdi.reference.clone(),
    );
    for vdi in [&t, &u] {
        host.write(vdi, 0, 8 * MIB, Some(1)).await;
    }
    assert_eq!(host.hash(&t).await, host.hash(&u).await);
    // What the stream must do to `t`: zero extents 1 and 33 (blocks 0 and 1), nothing else.
    for extent in [1, 33] {
        host.write(&u, extent * EXTENT, EXTENT, None).await;
    }
    let mut map = ChangeMap::none(8 * MIB);
    map.set(1);
    map.set(33);
    let mut stream =
        ExtentStream::with_block_size(map, false, Default::default(), Default::default(), 2 << 20)
            .unwrap();
    let mut frames = vec![stream.prelude()];
    for index in stream.blocks().collect::<Vec<_>>() {
        let mask = stream.changed_mask(index);
        let zeros = bytes::Bytes::from(vec![0u8; 2 << 20]);
        frames.extend(stream.block_frames(index, zeros, mask).unwrap());
    }
    frames.push(stream.trailer().unwrap());
    let length = stream.total_len();
    let target = VdiOn {
        host: &host.client,
        vdi: &t,
    };
    import_stream(
        target,
        length,
        "partial bitmaps",
        &mut Frames(frames.into()),
        &TransferOptions::default(),
        &mut |_| {},
        &tokio_util::sync::CancellationToken::new(),
    )
    .await
    .unwrap_or_else(|_| panic!("the import failed"));
    assert_eq!(host.hash(&t).await, host.hash(&u).await);
}
