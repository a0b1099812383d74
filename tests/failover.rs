//! `failover` and `test-failover` between two in-process lab hosts: a test clone boots while
//! replication goes on with deltas and retention leaves it alone, `--cleanup` removes it;
//! failover refuses to act without `--yes` off a terminal, then unblocks and starts the
//! replica, which no later cycle deletes or builds on; on a terminal (a pseudo-terminal) the
//! question names the restore point and its age; a second failover of the VM is refused
//! unless `--force`, and `status` shows the failed-over VMs.

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

/// Run the binary with a pseudo-terminal as its stdin and stderr (so it asks), answer
/// `answer` if it asks, and return its exit code, what the terminal showed and its stdout.
fn on_terminal(args: &[&str], answer: &str) -> (i32, String, String) {
    use std::io::{Read, Write};
    use std::os::fd::{FromRawFd, OwnedFd};
    use std::sync::{Arc, Mutex};

    let (mut master, mut slave) = (-1, -1);
    // SAFETY: openpty writes two descriptors into the integers given; the null pointers ask
    // for no name and default settings.
    let opened = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    assert_eq!(opened, 0, "openpty: {}", std::io::Error::last_os_error());
    // SAFETY: both descriptors were just opened by openpty and are owned here alone.
    let (master, slave) = unsafe {
        (
            std::fs::File::from_raw_fd(master),
            OwnedFd::from_raw_fd(slave),
        )
    };
    let mut child = std::process::Command::new(common::lab_pair::BIN)
        .args(args)
        .stdin(slave.try_clone().unwrap())
        .stderr(slave)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let shown = Arc::new(Mutex::new(Vec::new()));
    let reader = {
        let shown = shown.clone();
        let mut master = master.try_clone().unwrap();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            // Ends with EIO once the child, the last holder of the terminal, exits.
            while let Ok(n @ 1..) = master.read(&mut buf) {
                shown.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        })
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    let asked = loop {
        if String::from_utf8_lossy(&shown.lock().unwrap()).contains("[y/N]") {
            break true;
        }
        if child.try_wait().unwrap().is_some() {
            break false;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "neither asked nor exited"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    if asked {
        (&master).write_all(answer.as_bytes()).unwrap();
    }
    let mut stdout = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    let code = child.wait().unwrap().code().unwrap_or(-1);
    drop(master);
    reader.join().unwrap();
    let shown = String::from_utf8_lossy(&shown.lock().unwrap()).replace("\r\n", "\n");
    (code, shown, stdout)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_prompt_names_the_restore_point_and_a_second_failover_needs_force() {
    let (source, target, _dir, job) = replicated_pair(2).await;
    let job_arg = job.to_str().unwrap().to_owned();
    let vm = source.report.vms[0].ids.uuid.clone();
    source
        .write(
            &source.report.vms[0].disks[0].vdi.reference,
            0,
            MIB,
            Some(3),
        )
        .await;
    let last = replicate(&job).await;
    let live = last["replica"].as_str().unwrap().to_owned();
    let vms_before = target.vms().await.len();

    // On a terminal it asks, naming the restore point, its kind, name and age; "n" changes
    // nothing.
    let args = ["failover", "--job", job_arg.as_str(), "--vm", vm.as_str()];
    let asking = args.map(str::to_owned);
    let (code, shown, _) = tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = asking.iter().map(String::as_str).collect();
        on_terminal(&args, "n\n")
    })
    .await
    .unwrap();
    assert_eq!(code, 1, "{shown}");
    for part in [
        format!("Fail over VM web01 ({vm}) of job \"cr\" on "),
        format!("to the live replica {live} \"[vhdsync cr] web01\""),
        "restore point of 20".to_owned(),
        "s old)?".to_owned(),
        "It becomes the VM and stops taking deltas. [y/N]".to_owned(),
        "failover cancelled: nothing was changed".to_owned(),
    ] {
        assert!(shown.contains(&part), "{part:?} in {shown}");
    }
    let live_ref = target.text("VM.get_by_uuid", &[&live]).await;
    assert!(
        target
            .vm(&live_ref)
            .await
            .blocked_operations
            .contains_key("start")
    );

    // "y": the live replica is the VM now.
    let asking = args.map(str::to_owned);
    let (code, shown, stdout) = tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = asking.iter().map(String::as_str).collect();
        on_terminal(&args, "y\n")
    })
    .await
    .unwrap();
    assert_eq!(code, 0, "{shown}{stdout}");
    assert!(
        stdout.contains(&format!("failed over to live replica {live}")),
        "{stdout}"
    );
    let promoted = target.vm(&live_ref).await;
    assert!(promoted.blocked_operations.is_empty());
    assert_eq!(promoted.other_config[keys::FAILED_OVER_VM], vm);

    // status shows it, in every format; it changes no state.
    let run = vhdsync(&["status", "--job", &job_arg]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stdout.contains(&format!(
            "FAILED OVER to VM {live} ([vhdsync cr] web01) at 20"
        )),
        "{}",
        run.stdout
    );
    let run = vhdsync(&["status", "--job", &job_arg, "--json"]).await;
    let failed_over = &run.json["vms"][0]["failed_over"];
    assert_eq!(failed_over[0]["vm"], live.as_str(), "{}", run.stdout);
    assert_eq!(failed_over[0]["power_state"], "Halted");
    assert!(failed_over[0]["at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(run.json["vms"][0]["state"], "ok");
    let run = vhdsync(&["status", "--job", &job_arg, "--format", "nagios"]).await;
    assert_eq!(run.code, 0, "{}", run.stdout);
    assert!(
        run.stdout
            .contains(&format!("web01 failed over to VM {live} at 20")),
        "{}",
        run.stdout
    );
    let run = vhdsync(&["status", "--job", &job_arg, "--format", "prometheus"]).await;
    assert!(
        run.stdout.contains(&format!("vhdsync_failed_over_timestamp_seconds{{job=\"cr\",vm=\"{vm}\",vm_name=\"web01\",failed_over_vm=\"{live}\"}} ")),
        "{}",
        run.stdout
    );

    // A second failover is refused, on a terminal or not, naming the first; nothing made.
    let run = vhdsync(&["failover", "--job", &job_arg, "--vm", &vm, "--yes"]).await;
    assert_eq!(run.code, 2, "{}{}", run.stdout, run.stderr);
    for part in [
        format!("VM {vm} was already failed over: VM {live}"),
        " since 20".to_owned(),
        "--force".to_owned(),
    ] {
        assert!(run.stderr.contains(&part), "{part:?} in {}", run.stderr);
    }
    let asking = args.map(str::to_owned);
    let (code, shown, _) = tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = asking.iter().map(String::as_str).collect();
        on_terminal(&args, "y\n")
    })
    .await
    .unwrap();
    assert_eq!(code, 2, "{shown}");
    assert!(
        shown.contains("already failed over") && !shown.contains("[y/N]"),
        "refused before asking: {shown}"
    );
    assert_eq!(target.vms().await.len(), vms_before);

    // With --force: the newest target snapshot is cloned into a second VM.
    let run = vhdsync(&[
        "failover", "--job", &job_arg, "--vm", &vm, "--yes", "--force", "--json",
    ])
    .await;
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    assert_eq!(run.json["kind"], "target_snapshot");
    assert!(run.json["failed_over_at"].as_str().unwrap().ends_with('Z'));
    let run = vhdsync(&["status", "--job", &job_arg, "--json"]).await;
    assert_eq!(
        run.json["vms"][0]["failed_over"].as_array().unwrap().len(),
        2,
        "{}",
        run.stdout
    );
}
