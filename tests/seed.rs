//! Seeding between two in-process lab hosts: a pair linked by the real `xo-cr-seed`, by
//! `vhdsync seed` and by the binary run as `xo-cr-seed`, each continued by `replicate` with
//! a delta whose content is checked by digest; the offline seed (`seed-export`, then
//! `seed-import`) round trip, a corrupted frame and a truncated file each refused with
//! their own error and the target left as it was; and the validation errors (exit 2).

mod common;

use std::path::{Path, PathBuf};

use common::lab_pair::{
    BIN, Host, MIB, check_replica_matches, replicate, run_as, vhdsync, write_job,
};
use common::npm::{clients, node};
use vhdsync::replicate::job::Job;
use vhdsync::replicate::keys;
use vhdsync::replicate::lease::{self, LeaseState};
use vhdsync::replicate::manifest::Manifest;
use vhdsync::replicate::seed_file::{FILE_HEADER_LEN, FRAME_HEADER_LEN};
use vhdsync::xapi::rpc::Value;

/// Needs percent-encoding in a URL: credentials must be decoded as XO decodes them.
const PASSWORD: &str = "l@b pass/#?";
const SIZES: &[u64] = &[6 * MIB, 4 * MIB];

/// A source VM with guest data, its snapshot, and a target VM whose disks hold the
/// snapshot's content (copied with `copy-vdi`, as carrying an export to the DR site would).
struct Pair {
    source: Host,
    target: Host,
    dir: tempfile::TempDir,
    job: PathBuf,
    ids: Job,
    snapshot_ref: String,
    snapshot_uuid: String,
    target_vm: String,
}

async fn pair(target_sizes: &[u64]) -> Pair {
    let source = Host::start(&[("web01", SIZES)]).await;
    let target = Host::start_with_password(&[("carried", target_sizes)], PASSWORD).await;
    let vm = &source.report.vms[0];
    for (i, disk) in vm.disks.iter().enumerate() {
        source
            .write(&disk.vdi.reference, 0, 3 * MIB, Some(i as u64 + 1))
            .await;
    }
    let snapshot_ref = source.snapshot(&vm.ids.reference, "seed base").await;
    let snapshot_uuid = source.text("VM.get_uuid", &[&snapshot_ref]).await;
    let target_vm = target.report.vms[0].ids.clone();
    if target_sizes == SIZES {
        let snapshot_disks = source.disks(&snapshot_ref).await;
        let target_disks = target.disks(&target_vm.reference).await;
        for ((_, snap_ref, _), (_, target_ref, _)) in snapshot_disks.iter().zip(&target_disks) {
            let copied = vhdsync(&[
                "copy-vdi",
                "--from",
                &source.url(),
                "--vdi",
                snap_ref,
                "--to",
                &target.url(),
                "--target-vdi",
                target_ref,
            ])
            .await;
            assert_eq!(copied.code, 0, "{}", copied.stderr);
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let job = write_job(dir.path(), &source, &target, &vm.ids.uuid, 2);
    let ids = Job::load(&job).unwrap();
    Pair {
        source,
        target,
        dir,
        job,
        ids,
        snapshot_ref,
        snapshot_uuid,
        target_vm: target_vm.uuid,
    }
}

impl Pair {
    /// The six positional arguments of xo-cr-seed.
    fn seed_args(&self) -> Vec<String> {
        vec![
            self.source.url(),
            self.snapshot_uuid.clone(),
            self.target.url(),
            self.target_vm.clone(),
            self.ids.job_id.clone(),
            self.ids.schedule_id.clone(),
        ]
    }

    /// Guest writes after the seed, then `replicate`: a delta of just those blocks, and the
    /// new replica's content equal to the new snapshot's.
    async fn replicate_continues_with_a_delta(&self) {
        let disk0 = &self.source.report.vms[0].disks[0].vdi.reference;
        self.source.write(disk0, 4 * MIB, MIB, Some(99)).await;
        let report = replicate(&self.job).await;
        assert_eq!(report["mode"], "delta", "{report:#}");
        // One changed 2 MiB block on disk 0, none on disk 1, plus the streams' metadata.
        let sent = report["bytes_sent"].as_u64().unwrap();
        assert!(
            sent < 2 * MIB + 64 * 1024,
            "{sent} bytes sent for one changed block"
        );
        check_replica_matches(&self.source, &self.target, &report).await;
    }

    /// What every XO version reads (xo-replication.md §13.5) on the source snapshot and
    /// its VDIs, and the replica's protection.
    async fn check_seed_keys(&self, all_versions: bool) {
        let snapshot = self.source.vm(&self.snapshot_ref).await;
        assert_eq!(snapshot.other_config[keys::JOB], self.ids.job_id);
        assert_eq!(snapshot.other_config[keys::EXPORTED], "true");
        let target_ref = self.target.text("VM.get_by_uuid", &[&self.target_vm]).await;
        let target = self.target.vm(&target_ref).await;
        assert_eq!(target.other_config[keys::COPY_OF], self.snapshot_uuid);
        assert_eq!(target.other_config[keys::SR], self.target.report.sr.uuid);
        for op in keys::BLOCKED_OPERATIONS {
            assert_eq!(target.blocked_operations[op], keys::START_BLOCKED);
        }
        if !all_versions {
            return;
        }
        assert_eq!(snapshot.other_config[keys::DELTA_CHAIN_LENGTH], "0");
        for (_, _, vdi) in self.source.disks(&self.snapshot_ref).await {
            for key in [keys::DATETIME, keys::JOB, keys::SCHEDULE, keys::VM] {
                assert_eq!(vdi.other_config[key], snapshot.other_config[key], "{key}");
            }
            assert_eq!(vdi.other_config[keys::EXPORTED], "true");
            assert_eq!(vdi.other_config[keys::DELTA_CHAIN_LENGTH], "0");
            assert_eq!(vdi.other_config[keys::CONTENT_KEY], vdi.uuid);
        }
        assert!(target.tags.iter().any(|t| t == keys::REPLICA_TAG));
        assert_eq!(target.other_config[keys::AUTO_POWERON], "false");
        let snapshot_disks = self.source.disks(&self.snapshot_ref).await;
        for ((dev, _, vdi), (_, _, snap)) in self
            .target
            .disks(&target_ref)
            .await
            .iter()
            .zip(&snapshot_disks)
        {
            assert_eq!(vdi.other_config[keys::COPY_OF], snap.uuid, "disk {dev}");
            assert_eq!(vdi.other_config[keys::CONTENT_KEY], snap.uuid, "disk {dev}");
        }
        // Starting it is refused with XO's text.
        let start = self
            .target
            .client
            .call(
                "VM.start",
                vec![
                    Value::from(target_ref.as_str()),
                    Value::Bool(false),
                    Value::Bool(false),
                ],
            )
            .await
            .unwrap_err();
        assert!(start.to_string().contains(keys::START_BLOCKED), "{start}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vhdsync_seed_links_a_pair_and_replicate_sends_a_delta() {
    let pair = pair(SIZES).await;
    let args = pair.seed_args();
    let mut argv: Vec<&str> = vec!["seed"];
    argv.extend(args.iter().map(String::as_str));
    let run = vhdsync(&argv).await;
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    assert!(
        run.stdout
            .contains("next replicate of this VM sends a delta"),
        "{}",
        run.stdout
    );
    assert!(!run.stdout.contains(PASSWORD) && !run.stderr.contains("l%40b"));
    // The seed held the job's lease on the VM its snapshot is of, and released it.
    let vm = pair
        .source
        .vm(&pair.source.report.vms[0].ids.reference)
        .await;
    let held = lease::read(&vm.other_config, &pair.ids.job_id);
    assert!(
        matches!(&held.state, LeaseState::Record(r) if r.released && r.holder.ends_with(", no state dir")),
        "{held:?}"
    );
    assert_eq!(held.generation, 2, "taken, then released: {held:?}");
    pair.check_seed_keys(true).await;
    pair.replicate_continues_with_a_delta().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_run_as_xo_cr_seed_seeds_like_vhdsync_seed() {
    let pair = pair(SIZES).await;
    let link = pair.dir.path().join("xo-cr-seed");
    std::os::unix::fs::symlink(BIN, &link).unwrap();
    let args = pair.seed_args();
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let run = run_as(&link, &argv).await;
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    assert!(
        run.stderr.contains("not verified"),
        "xo-cr-seed's trust, with a warning"
    );
    pair.check_seed_keys(true).await;
    pair.replicate_continues_with_a_delta().await;
    // Its usage: the six arguments.
    let help = run_as(&link, &["--help"]).await;
    assert_eq!(help.code, 0);
    assert!(
        help.stdout.contains("SNAPSHOT_UUID") && help.stdout.contains("SCHEDULE_ID"),
        "{}",
        help.stdout
    );
}

/// The real `xo-cr-seed` (npm `@xen-orchestra/cr-seed-cli`) links the pair, and vhdsync
/// continues it with a delta: its VM-level keys are enough for our base discovery.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_real_xo_cr_seed_links_a_pair_and_replicate_sends_a_delta() {
    let Some(clients) = clients() else { return };
    let pair = pair(SIZES).await;
    let args = pair.seed_args();
    let clients = clients.to_owned();
    let seen = tokio::task::spawn_blocking(move || {
        node(
            &clients,
            "cr-seed.mjs",
            &[
                ("source", &args[0]),
                ("snapshot", &args[1]),
                ("target", &args[2]),
                ("target-vm", &args[3]),
                ("job", &args[4]),
                ("schedule", &args[5]),
            ],
        )
    })
    .await
    .unwrap();
    assert_eq!(seen["cli"]["stderr"], "", "xo-cr-seed failed: {seen:#}");
    pair.check_seed_keys(false).await;
    pair.replicate_continues_with_a_delta().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mismatched_disks_and_bad_arguments_are_refused_with_exit_2() {
    let pair = pair(&[6 * MIB, 2 * MIB]).await;
    let args = pair.seed_args();
    let seed = |replace: Option<(usize, String)>| {
        let mut args = args.clone();
        if let Some((i, value)) = replace {
            args[i] = value;
        }
        async move {
            let mut argv = vec!["seed".to_owned()];
            argv.extend(args);
            let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
            vhdsync(&argv).await
        }
    };
    let source_vm = pair.source.report.vms[0].ids.uuid.clone();
    let unknown = "6b1e5c9a-0d3f-4c2a-9e8b-7a6f5e4d3c2b".to_owned();
    for (replace, expected) in [
        (None, "disk 1: the source snapshot's VDI"),
        (Some((1, source_vm)), "is not a snapshot"),
        (Some((3, unknown)), "no such VM"),
        (
            Some((4, "nightly".to_owned())),
            "the job id \"nightly\" is not a UUID",
        ),
        (
            Some((5, "1234".to_owned())),
            "the schedule id \"1234\" is not a UUID",
        ),
        (Some((0, "http://root@[::1".to_owned())), "invalid"),
    ] {
        let run = seed(replace.clone()).await;
        assert_eq!(run.code, 2, "{replace:?}: {}{}", run.stdout, run.stderr);
        assert!(
            run.stderr.to_lowercase().contains(&expected.to_lowercase()),
            "{replace:?}: expected {expected:?} in {}",
            run.stderr
        );
    }
    // Nothing was written on either side.
    let target_ref = pair.target.text("VM.get_by_uuid", &[&pair.target_vm]).await;
    assert!(
        !pair
            .target
            .vm(&target_ref)
            .await
            .other_config
            .contains_key(keys::COPY_OF)
    );
    let snapshot = pair.source.vm(&pair.snapshot_ref).await;
    assert!(!snapshot.other_config.contains_key(keys::JOB));
    // A wrong number of arguments is a usage error too.
    let run = vhdsync(&["seed", "a", "b"]).await;
    assert_eq!(run.code, 2);
}

// ---------------------------------------------------------------------------------------
// Offline seed

/// Byte offsets of each frame in a seed file, from its headers.
fn frame_offsets(file: &[u8]) -> Vec<usize> {
    let mut offsets = Vec::new();
    let mut at = FILE_HEADER_LEN;
    while &file[at..at + 4] == b"FRM1" {
        offsets.push(at);
        let clen = u32::from_be_bytes(file[at + 8..at + 12].try_into().unwrap()) as usize;
        at += FRAME_HEADER_LEN + clen;
    }
    offsets
}

/// Replace `path` by a FIFO no one writes to: opening it for reading blocks forever.
fn make_fifo(path: &Path) {
    std::fs::remove_file(path).unwrap();
    let status = std::process::Command::new("mkfifo")
        .arg(path)
        .status()
        .unwrap();
    assert!(status.success());
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, to.join(path.file_name().unwrap())).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_seed_round_trip_then_a_delta_and_damaged_files_are_refused() {
    let source = Host::start(&[("web01", &[8 * MIB, 4 * MIB])]).await;
    let target = Host::start(&[]).await;
    let vm = &source.report.vms[0];
    let disk0 = &vm.disks[0].vdi.reference;
    // Disk 0: half random data, half allocated zero blocks; disk 1: one random block.
    source.write(disk0, 0, 4 * MIB, Some(7)).await;
    source.write(disk0, 4 * MIB, 4 * MIB, None).await;
    source
        .write(&vm.disks[1].vdi.reference, 0, 2 * MIB, Some(8))
        .await;
    let dir = tempfile::tempdir().unwrap();
    let job = write_job(dir.path(), &source, &target, &vm.ids.uuid, 2);
    let job_arg = job.to_str().unwrap();
    let seed_dir = dir.path().join("seed");
    let seed_arg = seed_dir.to_str().unwrap();

    let run = vhdsync(&[
        "seed-export",
        "--job",
        job_arg,
        "--vm",
        &vm.ids.uuid,
        "-o",
        seed_arg,
        "--json",
    ])
    .await;
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    let manifest = Manifest::load(&seed_dir).unwrap();
    assert_eq!(manifest.vm_uuid, vm.ids.uuid);
    let d0 = &manifest.disks[0];
    assert_eq!((d0.userdevice.as_str(), d0.virtual_size), ("0", 8 * MIB));
    // 8 MiB allocated, half of it zeros: the file holds little more than the random half.
    assert!(
        d0.file_size < 4 * MIB + 64 * 1024 && d0.file_size < d0.stream_length,
        "seed file of {} bytes for a {}-byte stream",
        d0.file_size,
        d0.stream_length
    );
    // The snapshot is the job's exported base already, so no replicate removes it meanwhile.
    let snapshot_ref = source
        .text("VM.get_by_uuid", &[&manifest.snapshot_uuid])
        .await;
    let snapshot = source.vm(&snapshot_ref).await;
    assert_eq!(snapshot.other_config[keys::EXPORTED], "true");

    // Damaged copies: each refused with its own error, naming the file and the frame, and
    // the target left without a VM or VDI more.
    let vdis_before = target.vdi_count().await;
    let vms_before = target.vms().await.len();
    let file = std::fs::read(seed_dir.join(&d0.file)).unwrap();
    let frames = frame_offsets(&file);
    assert!(frames.len() >= 2, "{} frames", frames.len());
    let corrupt_dir = dir.path().join("corrupt");
    copy_dir(&seed_dir, &corrupt_dir);
    let mut corrupt = file.clone();
    corrupt[frames[1] + FRAME_HEADER_LEN + 100] ^= 0x55;
    std::fs::write(corrupt_dir.join(&d0.file), &corrupt).unwrap();
    let truncated_dir = dir.path().join("truncated");
    copy_dir(&seed_dir, &truncated_dir);
    std::fs::write(truncated_dir.join(&d0.file), &file[..frames[1] + 1000]).unwrap();
    for (damaged, expected) in [
        (&corrupt_dir, "frame 1 at offset"),
        (&truncated_dir, "truncated in frame 1"),
    ] {
        let run = vhdsync(&["seed-import", "--job", job_arg, damaged.to_str().unwrap()]).await;
        assert_eq!(run.code, 2, "{}", run.stderr);
        assert!(
            run.stderr.contains(&d0.file) && run.stderr.contains(expected),
            "{}",
            run.stderr
        );
        assert_eq!(target.vdi_count().await, vdis_before, "{}", run.stderr);
        assert_eq!(target.vms().await.len(), vms_before);
    }

    // Seeds that do not fit the snapshot, or whose files are not what the manifest says or
    // not files at all (issue 17 findings 8 and 9): refused at once with exit 2, nothing made.
    for (name, expected) in [
        ("missing-disk", "which the seed lacks"),
        ("resized", "virtual size"),
        ("file-digest", "the file's SHA-256"),
        ("fifo-disk", "not a regular file (a FIFO)"),
        ("fifo-manifest", "not a regular file (a FIFO)"),
    ] {
        let bad = dir.path().join(name);
        copy_dir(&seed_dir, &bad);
        let manifest_path = bad.join("manifest.json");
        let mut doc: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&manifest_path).unwrap()).unwrap();
        match name {
            "missing-disk" => {
                doc["disks"].as_array_mut().unwrap().pop();
            }
            "resized" => doc["disks"][0]["virtual_size"] = (10 * MIB).into(),
            "file-digest" => doc["disks"][0]["file_sha256"] = "ab".repeat(32).into(),
            "fifo-disk" => make_fifo(&bad.join(&d0.file)),
            _ => {}
        }
        std::fs::write(&manifest_path, serde_json::to_vec(&doc).unwrap()).unwrap();
        if name == "fifo-manifest" {
            make_fifo(&manifest_path);
        }
        let run = tokio::time::timeout(
            std::time::Duration::from_secs(120),
            vhdsync(&["seed-import", "--job", job_arg, bad.to_str().unwrap()]),
        )
        .await
        .unwrap_or_else(|_| panic!("{name}: seed-import hangs"));
        assert_eq!(run.code, 2, "{name}: {}", run.stderr);
        assert!(run.stderr.contains(expected), "{name}: {}", run.stderr);
        assert_eq!(
            target.vdi_count().await,
            vdis_before,
            "{name}: {}",
            run.stderr
        );
        assert_eq!(target.vms().await.len(), vms_before, "{name}");
    }

    let run = vhdsync(&["seed-import", "--job", job_arg, seed_arg, "--json"]).await;
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    for disk in run.json["disks"].as_array().unwrap() {
        let dev = disk["userdevice"].as_str().unwrap();
        let source_vdi = &manifest
            .disks
            .iter()
            .find(|d| d.userdevice == dev)
            .unwrap()
            .snapshot_vdi;
        assert_eq!(
            target.hash(disk["replica_vdi"].as_str().unwrap()).await,
            source.hash(source_vdi).await,
            "disk {dev}"
        );
    }
    let replica_ref = target
        .text("VM.get_by_uuid", &[run.json["replica"].as_str().unwrap()])
        .await;
    let replica = target.vm(&replica_ref).await;
    assert!(!replica.other_config.contains_key(keys::IMPORTING));
    assert_eq!(replica.other_config[keys::COPY_OF], manifest.snapshot_uuid);
    assert_eq!(replica.blocked_operations["start"], keys::START_BLOCKED);

    source.write(disk0, 0, MIB, Some(9)).await;
    let report = replicate(&job).await;
    assert_eq!(report["mode"], "delta", "{report:#}");
    assert!(report["bytes_sent"].as_u64().unwrap() < 2 * MIB + 64 * 1024);
    check_replica_matches(&source, &target, &report).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_export_on_a_healthy_job_is_refused_unless_forced() {
    let source = Host::start(&[("web01", &[8 * MIB, 4 * MIB])]).await;
    let target = Host::start(&[]).await;
    let vm = &source.report.vms[0];
    source
        .write(&vm.disks[0].vdi.reference, 0, 2 * MIB, Some(5))
        .await;
    let dir = tempfile::tempdir().unwrap();
    let job = write_job(dir.path(), &source, &target, &vm.ids.uuid, 2);
    let job_arg = job.to_str().unwrap();
    let first = replicate(&job).await;
    assert_eq!(first["mode"], "full");
    source
        .write(&vm.disks[0].vdi.reference, 0, MIB, Some(6))
        .await;
    assert_eq!(replicate(&job).await["mode"], "delta");
    let snapshots_before = source.vm(&vm.ids.reference).await.snapshots;

    let seed_dir = dir.path().join("seed");
    let seed_arg = seed_dir.to_str().unwrap();
    let export = [
        "seed-export",
        "--job",
        job_arg,
        "--vm",
        &vm.ids.uuid,
        "-o",
        seed_arg,
    ];
    let run = vhdsync(&export).await;
    assert_eq!(run.code, 2, "{}{}", run.stdout, run.stderr);
    for part in [
        format!("VM {} already has a valid chain in job \"cr\"", vm.ids.uuid),
        "live replica".to_owned(),
        "the next replicate would send a full copy, up to 12.0 MiB".to_owned(),
        "--force".to_owned(),
    ] {
        assert!(run.stderr.contains(&part), "{part:?} in {}", run.stderr);
    }
    // Nothing was done: no snapshot, no seed file.
    assert_eq!(
        source.vm(&vm.ids.reference).await.snapshots,
        snapshots_before
    );
    assert!(!seed_dir.exists() || std::fs::read_dir(&seed_dir).unwrap().next().is_none());

    let mut forced = export.to_vec();
    forced.push("--force");
    let run = vhdsync(&forced).await;
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    // What the refusal said it would cost: the next run is a full.
    let after = replicate(&job).await;
    assert_eq!(after["mode"], "full", "{after:#}");
    check_replica_matches(&source, &target, &after).await;
}
