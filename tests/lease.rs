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
    let source = Host::start(&[("web01", &[8 * MIB])]).await;
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

    // One machine runs for about 4 s (a delta of 8 MiB); the other starts 3 s in, past the
    // 2 s the lease was first taken for: only renewals keep it.
    let disk = source.report.vms[0].disks[0].vdi.reference.clone();
    source.write(&disk, 0, 8 * MIB, Some(8)).await;
    let first = tokio::spawn(async move { replicate(&one).await });
    tokio::time::sleep(Duration::from_secs(3)).await;
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
