//! Concurrency (issue 8 §6) with real processes: two `vhdsync replicate` runs for the same VM
//! started together, of which exactly one runs and the other exits 3; then runs for the two
//! VMs of one job in parallel processes, which both succeed with correct replicas. (The lock's
//! message naming the holder is in `tests/replicate.rs`.)

mod common;

use std::path::Path;
use std::process::Output;

use common::lab_pair::{Host, url, write_job};
use vhdsync::xapi::rpc::Value;

const BIN: &str = env!("CARGO_BIN_EXE_vhdsync");
const MIB: u64 = 1 << 20;

async fn replicate(job: &Path, vm: &str) -> Output {
    tokio::process::Command::new(BIN)
        .args(["replicate", "--json", "--vm", vm, "--job"])
        .arg(job)
        .output()
        .await
        .unwrap()
}

fn json(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
        panic!(
            "no JSON: {} {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// The run's one VM report checked against the source: each replica disk's digest equals
/// its source snapshot VDI's.
async fn check_replica(source: &Host, target: &Host, out: &Output) -> String {
    let doc = json(out);
    let report = &doc["vms"][0]["report"];
    for disk in report["disks"].as_array().unwrap() {
        assert_eq!(
            target.hash(disk["replica_vdi"].as_str().unwrap()).await,
            source.hash(disk["source_vdi"].as_str().unwrap()).await,
            "{doc}"
        );
    }
    report["mode"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_run_per_vm_and_parallel_runs_for_different_vms() {
    let source = Host::start(&[("web01", &[4 * MIB]), ("db01", &[4 * MIB])]).await;
    let target = Host::start(&[]).await;
    let vms: Vec<String> = source
        .report
        .vms
        .iter()
        .map(|v| v.ids.uuid.clone())
        .collect();
    for (i, vm) in source.report.vms.iter().enumerate() {
        source
            .call(
                "lab.write",
                vec![
                    Value::from(vm.disks[0].vdi.reference.as_str()),
                    Value::Int(0),
                    Value::Int(3 * MIB as i64),
                    Value::Int(i as i64 + 1),
                ],
            )
            .await;
    }
    let dir = tempfile::tempdir().unwrap();
    let job = dir.path().join("job.toml");
    std::fs::write(
        &job,
        format!(
            "name = \"cr\"\nsource = \"{}\"\ntarget = \"{}\"\ntarget_sr = \"{}\"\n\
             vms = [\"{}\", \"{}\"]\nretention = 2\nstate_dir = \"{}\"\n",
            url(&source.server, "lab"),
            url(&target.server, "lab"),
            target.report.sr.uuid,
            vms[0],
            vms[1],
            dir.path().join("state").display(),
        ),
    )
    .unwrap();
    // Slow exports, so that both runs overlap for seconds whoever starts first.
    source
        .inject(vec![
            ("kind", Value::from("bandwidth")),
            ("bytes_per_second", Value::Int(2 * MIB as i64)),
            ("on", Value::from("export")),
            ("persistent", Value::Bool(true)),
        ])
        .await;

    let (a, b) = tokio::join!(replicate(&job, &vms[0]), replicate(&job, &vms[0]));
    let mut codes = [a.status.code(), b.status.code()];
    codes.sort();
    assert_eq!(
        codes,
        [Some(0), Some(3)],
        "exactly one runs, the other exits 3: {} / {}",
        json(&a),
        json(&b)
    );
    let (winner, loser) = if a.status.success() {
        (&a, &b)
    } else {
        (&b, &a)
    };
    assert_eq!(json(loser)["vms"][0]["status"], "locked", "{}", json(loser));
    assert_eq!(check_replica(&source, &target, winner).await, "full");

    // Both VMs, each in its own process, at the same time: both succeed.
    let (a, b) = tokio::join!(replicate(&job, &vms[0]), replicate(&job, &vms[1]));
    assert!(a.status.success(), "{}", json(&a));
    assert!(b.status.success(), "{}", json(&b));
    assert_eq!(check_replica(&source, &target, &a).await, "delta");
    assert_eq!(check_replica(&source, &target, &b).await, "full");
}

/// Issue 17 item 3: a state directory others may write to (where they could plant a lock
/// file, or a symbolic link in its place) is refused with exit 2, naming the directory, and
/// nothing is written in it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_dir_others_may_write_to_is_refused_with_exit_2() {
    use std::os::unix::fs::PermissionsExt;
    let source = Host::start(&[("web01", &[4 * MIB])]).await;
    let target = Host::start(&[]).await;
    let vm = source.report.vms[0].ids.uuid.clone();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    std::fs::create_dir(&state).unwrap();
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o777)).unwrap();
    let job = write_job(dir.path(), &source, &target, &vm, 2);
    let out = replicate(&job, &vm).await;
    assert_eq!(out.status.code(), Some(2), "{}", json(&out));
    let error = json(&out)["vms"][0]["error"].as_str().unwrap().to_owned();
    assert!(
        error.contains(&state.display().to_string()) && error.contains("777"),
        "{error}"
    );
    assert_eq!(std::fs::read_dir(&state).unwrap().count(), 0);
}
