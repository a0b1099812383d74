//! Issue 21 item 7: the lease on the source VM holds across machines. Each "machine" is a
//! `vhdsync replicate` process with its own state directory, so the local lock (an flock in
//! the state directory) never meets the other: only the lease keeps them apart. The leases
//! last 2 s, so the runs below, slowed to several seconds, only keep theirs by renewing it.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use common::lab_pair::{Host, MIB, Run, check_replica_matches, vhdsync};
use vhdsync::replicate::lease::{self, LeaseState};
use vhdsync::xapi::records::VmRecord;
use vhdsync::xapi::rpc::Value;

const BIN: &str = env!("CARGO_BIN_EXE_vhdsync");

/// A job file for one "machine": the same job (its name gives its id) in its own directory,
/// with its own state directory.
fn machine(root: &Path, name: &str, source: &Host, target: &Host, vm: &str) -> PathBuf {
    let dir = root.join(name);
    std::fs::create_dir(&dir).unwrap();
    let path = dir.join("job.toml");
    std::fs::write(
        &path,
        format!(
            "name = \"cr\"\nsource = \"{}\"\ntarget = \"{}\"\ntarget_sr = \"{}\"\n\
             vms = [\"{vm}\"]\nretention = 2\nstate_dir = \"state\"\nlease_ttl = \"2s\"\n",
            source.url(),
            target.url(),
            target.report.sr.uuid,
        ),
    )
    .unwrap();
    path
}

async fn replicate(job: &Path) -> Run {
    vhdsync(&["replicate", "--json", "--job", job.to_str().unwrap()]).await
}

/// A source with one VM holding 8 MiB of data, whose exports run at 2 MiB/s: a full cycle
/// takes about 4 s, twice the lease's time to live.
async fn slow_source() -> (Host, String) {
    // 16 MiB of disk, 8 MiB of it written: the second test's delta rewrites all 16.
    let source = Host::start(&[("web01", &[16 * MIB])]).await;
    let vm = &source.report.vms[0];
    source
        .write(&vm.disks[0].vdi.reference, 0, 8 * MIB, Some(7))
        .await;
    source
        .inject(vec![
            ("kind", Value::from("bandwidth")),
            ("bytes_per_second", Value::Int(2 * MIB as i64)),
            ("on", Value::from("export")),
            ("persistent", Value::Bool(true)),
        ])
        .await;
    let uuid = vm.ids.uuid.clone();
    (source, uuid)
}

/// The job's lease as the source VM's `other_config` shows it.
async fn lease_on(source: &Host, job_id: &str) -> lease::Snapshot {
    let vm: VmRecord = source.vm(&source.report.vms[0].ids.reference).await;
    lease::read(&vm.other_config, job_id)
}

/// The job id of a run's JSON report.
fn job_id(run: &Run) -> String {
    run.json["job_id"].as_str().unwrap().to_owned()
}

fn released(snapshot: &lease::Snapshot) -> bool {
    matches!(&snapshot.state, LeaseState::Record(r) if r.released)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_two_machines_exactly_one_runs_and_keeps_its_lease_past_its_ttl() {
    let (source, vm) = slow_source().await;
    let target = Host::start(&[]).await;
    let root = tempfile::tempdir().unwrap();
    let one = machine(root.path(), "one", &source, &target, &vm);
    let two = machine(root.path(), "two", &source, &target, &vm);

    // Started together: the lease, not the lock, decides.
    let (a, b) = tokio::join!(replicate(&one), replicate(&two));
    let mut codes = [a.code, b.code];
    codes.sort();
    assert_eq!(
        codes,
        [0, 3],
        "{} {} / {} {}",
        a.stdout,
        a.stderr,
        b.stdout,
        b.stderr
    );
    let (winner, loser, winner_dir) = if a.code == 0 {
        (&a, &b, root.path().join("one/state"))
    } else {
        (&b, &a, root.path().join("two/state"))
    };
    let refused = &loser.json["vms"][0];
    assert_eq!(refused["status"], "locked", "{refused}");
    let holder = refused["holder"].as_str().unwrap();
    assert!(
        holder.ends_with(&format!("state dir {}", winner_dir.display())),
        "the holder names the winner: {holder}"
    );
    check_replica_matches(&source, &target, &winner.json["vms"][0]["report"]).await;
    let job = job_id(winner);
    assert!(
        released(&lease_on(&source, &job).await),
        "released after the run"
    );

    // One machine runs for about 8 s (a delta of 16 MiB); the other starts 2.5 s after the
    // first took the lease, past the 2 s it was taken for: only renewals keep it. (Counted
    // from the take, not from the start: a loaded machine may take seconds to get there.)
    let disk = source.report.vms[0].disks[0].vdi.reference.clone();
    source.write(&disk, 0, 16 * MIB, Some(8)).await;
    let taken_before = lease_on(&source, &job).await.generation;
    let first = tokio::spawn(async move { replicate(&one).await });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let now = lease_on(&source, &job).await;
        if now.generation > taken_before && !released(&now) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the first run never took the lease"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let second = replicate(&two).await;
    let first = first.await.unwrap();
    assert_eq!(first.code, 0, "{} {}", first.stdout, first.stderr);
    assert_eq!(second.code, 3, "{} {}", second.stdout, second.stderr);
    let error = second.json["vms"][0]["error"].as_str().unwrap();
    assert!(
        error.contains("holds its lease on the source until"),
        "{error}"
    );
    let snapshot = lease_on(&source, &job).await;
    assert!(released(&snapshot), "{snapshot:?}");
    // Renewed several times, and the old generations tidied away.
    assert!(snapshot.generation >= 4, "{snapshot:?}");
    assert!(snapshot.older.is_empty(), "{snapshot:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_runners_lease_is_taken_over_once_it_expires() {
    let (source, vm) = slow_source().await;
    let target = Host::start(&[]).await;
    let root = tempfile::tempdir().unwrap();
    let one = machine(root.path(), "one", &source, &target, &vm);
    let two = machine(root.path(), "two", &source, &target, &vm);

    let job_id = vhdsync::replicate::job::Job::load(&one).unwrap().job_id;
    kill_while_holding_the_lease(&one, &source, &job_id).await;

    let blocked = replicate(&two).await;
    assert_eq!(blocked.code, 3, "{} {}", blocked.stdout, blocked.stderr);
    let holder = blocked.json["vms"][0]["holder"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(holder.contains("one/state"), "{holder}");

    // Expired within 2 s of its last renewal (the host's clock counts whole seconds).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let taken_over = replicate(&two).await;
    assert_eq!(
        taken_over.code, 0,
        "{} {}",
        taken_over.stdout, taken_over.stderr
    );
    check_replica_matches(&source, &target, &taken_over.json["vms"][0]["report"]).await;
    assert!(released(&lease_on(&source, &job_id).await));
}

/// The killed run's own machine and state directory need not wait: holding their local lock
/// proves the run that holds the lease there is dead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_runners_own_state_dir_takes_its_lease_over_at_once() {
    let (source, vm) = slow_source().await;
    let target = Host::start(&[]).await;
    let root = tempfile::tempdir().unwrap();
    let one = machine(root.path(), "one", &source, &target, &vm);
    let job_id = vhdsync::replicate::job::Job::load(&one).unwrap().job_id;
    kill_while_holding_the_lease(&one, &source, &job_id).await;
    let again = replicate(&one).await;
    assert_eq!(again.code, 0, "{} {}", again.stdout, again.stderr);
    check_replica_matches(&source, &target, &again.json["vms"][0]["report"]).await;
    assert!(released(&lease_on(&source, &job_id).await));
}

/// Start a run of `job` and SIGKILL it once it holds the lease and its transfer is under way:
/// it releases nothing.
async fn kill_while_holding_the_lease(job: &std::path::Path, source: &Host, job_id: &str) {
    let mut killed = tokio::process::Command::new(BIN)
        .args(["replicate", "--json", "--job"])
        .arg(job)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    // Until it holds the lease and its transfer is under way.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !matches!(lease_on(source, job_id).await.state, LeaseState::Record(ref r) if !r.released)
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the run never took the lease"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        killed.try_wait().unwrap().is_none(),
        "still running when killed"
    );
    killed.start_kill().unwrap(); // SIGKILL: no release.
    killed.wait().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_run_releases_its_lease_for_the_next_at_once() {
    let source = Host::start(&[("web01", &[4 * MIB])]).await;
    let target = Host::start(&[]).await;
    let vm = source.report.vms[0].ids.uuid.clone();
    let root = tempfile::tempdir().unwrap();
    let one = machine(root.path(), "one", &source, &target, &vm);
    let two = machine(root.path(), "two", &source, &target, &vm);
    source
        .inject(vec![("kind", Value::from("fail_export"))])
        .await;
    let failed = replicate(&one).await;
    assert_eq!(failed.code, 1, "{} {}", failed.stdout, failed.stderr);
    assert!(released(&lease_on(&source, &job_id(&failed)).await));
    // Straight away, from the other machine: no waiting for an expiry.
    let next = replicate(&two).await;
    assert_eq!(next.code, 0, "{} {}", next.stdout, next.stderr);
    // No VM on the target, replica or snapshot, carries the source's lease keys.
    let vms = target.vms().await;
    assert!(vms.len() >= 2, "a replica and its snapshot");
    for (_, vm) in vms {
        assert!(
            !vm.other_config
                .keys()
                .any(|k| k.starts_with(lease::KEY_PREFIX)),
            "{:?}",
            vm.other_config
        );
    }
}

/// Another machine's lease on the source VM, valid for an hour, added as generation
/// `generation` (`released` frees it at once).
async fn plant_lease(source: &Host, job_id: &str, generation: u64, released: bool) {
    let record = lease::LeaseRecord {
        run: "their-run".into(),
        holder: "pid 7 on backup-2, state dir /var/lib/vhdsync".into(),
        site: "backup-2 2049:7".into(),
        expires: time::OffsetDateTime::now_utc().unix_timestamp() + 3600,
        released,
    };
    let vm_ref = source.report.vms[0].ids.reference.clone();
    source
        .call(
            "VM.add_to_other_config",
            vec![
                Value::from(vm_ref.as_str()),
                Value::from(lease::key(job_id, generation).as_str()),
                Value::from(record.to_value().as_str()),
            ],
        )
        .await;
}

/// Issue 21 item 7, continued: `seed`, `seed-export`, `seed-import` and `failover` take the
/// job's lease on the source VM as `replicate` does, so a run on another machine keeps them
/// off the VM (exit 3, `replicate`'s message), and they release it when done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seeds_and_failover_are_refused_while_another_machine_holds_the_lease() {
    let source = Host::start(&[("web01", &[4 * MIB])]).await;
    let target = Host::start(&[]).await;
    let vm = source.report.vms[0].ids.uuid.clone();
    source
        .write(
            &source.report.vms[0].disks[0].vdi.reference,
            0,
            2 * MIB,
            Some(3),
        )
        .await;
    let root = tempfile::tempdir().unwrap();
    let job = machine(root.path(), "one", &source, &target, &vm);
    let job_arg = job.to_str().unwrap();
    let first = replicate(&job).await;
    assert_eq!(first.code, 0, "{} {}", first.stdout, first.stderr);
    let job_id = job_id(&first);
    let schedule_id = vhdsync::replicate::job::Job::load(&job)
        .unwrap()
        .schedule_id;

    // Free: the export takes the lease and releases it.
    let seed_dir = root.path().join("seed");
    let export_args = |dir: &Path| -> Vec<String> {
        [
            "seed-export",
            "--force",
            "--job",
            job_arg,
            "--vm",
            &vm,
            "-o",
        ]
        .map(str::to_owned)
        .into_iter()
        .chain([dir.to_str().unwrap().to_owned()])
        .collect()
    };
    let before = lease_on(&source, &job_id).await.generation;
    let exported = vhdsync(&strs(&export_args(&seed_dir))).await;
    assert_eq!(exported.code, 0, "{} {}", exported.stdout, exported.stderr);
    let after = lease_on(&source, &job_id).await;
    assert!(released(&after), "{after:?}");
    // Taken, maybe renewed (every 2/3 s), then released.
    assert!(after.generation >= before + 2, "{after:?}");
    let snapshot = vhdsync::replicate::manifest::Manifest::load(&seed_dir)
        .unwrap()
        .snapshot_uuid;

    // Another machine takes the lease.
    plant_lease(&source, &job_id, after.generation + 1, false).await;
    let theirs = after.generation + 1;
    let seed_args = [
        "seed".to_owned(),
        source.url(),
        snapshot,
        target.url(),
        // Never looked at: the lease is asked for first.
        "0b0c0d0e-0000-4000-8000-000000000001".to_owned(),
        job_id.clone(),
        schedule_id,
    ];
    let import_args =
        ["seed-import", "--job", job_arg, seed_dir.to_str().unwrap()].map(str::to_owned);
    let failover_args = ["failover", "--job", job_arg, "--vm", &vm, "--yes"].map(str::to_owned);
    let vms_before = target.vms().await.len();
    for args in [
        export_args(&root.path().join("seed-2")),
        import_args.to_vec(),
        seed_args.to_vec(),
        failover_args.to_vec(),
    ] {
        let run = vhdsync(&strs(&args)).await;
        assert_eq!(run.code, 3, "{}: {} {}", args[0], run.stdout, run.stderr);
        assert!(
            run.stderr.contains(&format!(
                "another run is replicating VM {vm}: pid 7 on backup-2, state dir \
                 /var/lib/vhdsync holds its lease on the source until"
            )),
            "{}: {}",
            args[0],
            run.stderr
        );
        let still = lease_on(&source, &job_id).await;
        assert_eq!(still.generation, theirs, "{}: {still:?}", args[0]);
        assert!(!released(&still), "{}: {still:?}", args[0]);
    }
    assert!(!root.path().join("seed-2").exists());
    assert_eq!(
        target.vms().await.len(),
        vms_before,
        "nothing imported or failed over"
    );

    // They release it: the import, then the failover, take it and release it in turn.
    plant_lease(&source, &job_id, theirs + 1, true).await;
    let mut last = theirs + 1;
    for args in [import_args.to_vec(), failover_args.to_vec()] {
        let run = vhdsync(&strs(&args)).await;
        assert_eq!(run.code, 0, "{}: {} {}", args[0], run.stdout, run.stderr);
        let now = lease_on(&source, &job_id).await;
        assert!(released(&now), "{}: {now:?}", args[0]);
        assert!(now.generation >= last + 2, "{}: {now:?}", args[0]);
        last = now.generation;
        assert!(
            matches!(&now.state, LeaseState::Record(r) if r.holder.contains("one/state")),
            "{}: {now:?}",
            args[0]
        );
    }
}

fn strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

/// The disaster case: the source is gone, and failover must still work, saying that it
/// could not take the lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_goes_on_without_the_lease_when_the_source_is_unreachable() {
    let source = Host::start(&[("web01", &[4 * MIB])]).await;
    let target = Host::start(&[]).await;
    let vm = source.report.vms[0].ids.uuid.clone();
    let root = tempfile::tempdir().unwrap();
    let job = machine(root.path(), "one", &source, &target, &vm);
    let first = replicate(&job).await;
    assert_eq!(first.code, 0, "{} {}", first.stdout, first.stderr);
    let job_id = job_id(&first);
    let replicated = lease_on(&source, &job_id).await;

    // The same job where the source's address answers no more: a port nobody listens on.
    let gone = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let gone_port = gone.local_addr().unwrap().port();
    drop(gone);
    let text = std::fs::read_to_string(&job).unwrap();
    let source_port = source
        .server
        .base_url()
        .rsplit(':')
        .next()
        .unwrap()
        .to_owned();
    let dead = text.replacen(
        &format!("127.0.0.1:{source_port}\""),
        &format!("127.0.0.1:{gone_port}\""),
        1,
    );
    assert_ne!(dead, text);
    std::fs::write(&job, dead).unwrap();

    let started = std::time::Instant::now();
    let run = vhdsync(&[
        "failover",
        "--job",
        job.to_str().unwrap(),
        "--vm",
        &vm,
        "--yes",
        "--json",
    ])
    .await;
    assert_eq!(run.code, 0, "{} {}", run.stdout, run.stderr);
    assert!(
        run.stderr.contains(&format!(
            "warning: the source could not be asked for VM {vm}'s lease"
        )) && run.stderr.contains("failover goes on without it"),
        "{}",
        run.stderr
    );
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "no waiting on a refused connection"
    );
    let replica = run.json["replica"].as_str().unwrap();
    let replica_ref = target.text("VM.get_by_uuid", &[replica]).await;
    assert!(
        !target
            .vm(&replica_ref)
            .await
            .blocked_operations
            .contains_key("start"),
        "failed over"
    );
    // The source was not touched.
    assert_eq!(lease_on(&source, &job_id).await, replicated);
}

/// A seed import keeps its lease past its time to live by renewing it, so another machine's
/// `replicate` is refused meanwhile; SIGTERM stops it (exit 130) and releases the lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_seed_import_releases_the_lease_it_renewed() {
    let source = Host::start(&[("web01", &[8 * MIB])]).await;
    let target = Host::start(&[]).await;
    let vm = source.report.vms[0].ids.uuid.clone();
    source
        .write(
            &source.report.vms[0].disks[0].vdi.reference,
            0,
            8 * MIB,
            Some(5),
        )
        .await;
    let root = tempfile::tempdir().unwrap();
    let one = machine(root.path(), "one", &source, &target, &vm);
    let two = machine(root.path(), "two", &source, &target, &vm);
    let job_id = vhdsync::replicate::job::Job::load(&one).unwrap().job_id;
    let seed_dir = root.path().join("seed");
    let exported = vhdsync(&[
        "seed-export",
        "--job",
        one.to_str().unwrap(),
        "--vm",
        &vm,
        "-o",
        seed_dir.to_str().unwrap(),
    ])
    .await;
    assert_eq!(exported.code, 0, "{} {}", exported.stdout, exported.stderr);
    // The import of 8 MiB at 1 MiB/s: about 8 s, four times the lease's time to live.
    target
        .inject(vec![
            ("kind", Value::from("bandwidth")),
            ("bytes_per_second", Value::Int(MIB as i64)),
            ("on", Value::from("import")),
            ("persistent", Value::Bool(true)),
        ])
        .await;
    let import = tokio::process::Command::new(BIN)
        .args(["seed-import", "--job"])
        .arg(&one)
        .arg(&seed_dir)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !matches!(lease_on(&source, &job_id).await.state, LeaseState::Record(ref r) if !r.released)
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the import never took the lease"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let taken = lease_on(&source, &job_id).await.generation;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let refused = replicate(&two).await;
    assert_eq!(refused.code, 3, "{} {}", refused.stdout, refused.stderr);
    let holder = refused.json["vms"][0]["holder"].as_str().unwrap();
    assert!(holder.contains("one/state"), "{holder}");
    assert!(
        lease_on(&source, &job_id).await.generation > taken,
        "renewed while it ran"
    );

    let pid = i32::try_from(import.id().unwrap()).unwrap();
    // SAFETY: kill(2) with the pid of a child this test spawned and has not reaped.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let out = tokio::time::timeout(Duration::from_secs(30), import.wait_with_output())
        .await
        .expect("the import stops")
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    assert!(stderr.contains("interrupted"), "{stderr}");
    let after = lease_on(&source, &job_id).await;
    assert!(released(&after), "{after:?}");
    // Straight away, the other machine is not refused, and its cycle removes what the stopped
    // import left on the target, though the target may still be ending that import.
    target.clear_faults().await;
    let next = replicate(&two).await;
    assert_eq!(next.code, 0, "{} {}", next.stdout, next.stderr);
    let cleaned = next.json["vms"][0]["report"]["cleaned_up"].to_string();
    assert!(cleaned.contains("interrupted replica"), "{}", next.stdout);
}
