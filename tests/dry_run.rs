//! A job checked before it runs (issue 21 item 1): `replicate --dry-run` prints the plan and
//! changes nothing, and a configuration error (a bad SR, a missing VM or password, an
//! untrusted certificate, too little space) exits 2 before any snapshot, in a dry run and a
//! real one alike.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use common::lab_pair::{BIN, Host, MIB, Run, replicate, scratch_dir, url, write_job};
use vhdsync::lab::Lab;
use vhdsync::lab::http::LabServer;
use vhdsync::xapi::records::{TaskRecord, VdiRecord, VmRecord};

/// Run the binary with neither password variable set, whatever the test's environment.
async fn run(args: &[&str]) -> Run {
    let out = tokio::process::Command::new(BIN)
        .args(args)
        .env_remove("VHDSYNC_SOURCE_PASSWORD")
        .env_remove("VHDSYNC_TARGET_PASSWORD")
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .unwrap();
    Run {
        code: out.status.code().unwrap_or(-1),
        json: serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

async fn dry_run(job: &Path) -> Run {
    run(&[
        "replicate",
        "--dry-run",
        "--json",
        "--job",
        job.to_str().unwrap(),
    ])
    .await
}

/// What a host holds that a run could change: every VM's and managed VDI's record as text
/// (other_config, snapshots, disks, names), and the tasks.
async fn state(host: &Host) -> BTreeMap<String, String> {
    let mut state = BTreeMap::new();
    for (reference, vm) in host.client.get_all_records::<VmRecord>().await.unwrap() {
        state.insert(format!("VM {reference}"), format!("{vm:?}"));
    }
    for (reference, vdi) in host.client.get_all_records::<VdiRecord>().await.unwrap() {
        // Measured from the files at each read; compared as the VDI's other fields are.
        state.insert(format!("VDI {reference}"), format!("{vdi:?}"));
    }
    for (reference, task) in host.client.get_all_records::<TaskRecord>().await.unwrap() {
        state.insert(format!("task {reference}"), format!("{task:?}"));
    }
    state
}

fn set_key(job: &Path, key: &str, value: &str) {
    let text = std::fs::read_to_string(job).unwrap();
    let mut lines: Vec<String> = text
        .lines()
        .filter(|l| !l.starts_with(&format!("{key} =")))
        .map(str::to_owned)
        .collect();
    lines.insert(0, format!("{key} = {value}"));
    std::fs::write(job, lines.join("\n") + "\n").unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_sr_exits_2_before_any_snapshot_in_a_dry_run_and_a_real_one() {
    let source = Host::start(&[("web01", &[4 * MIB])]).await;
    let target = Host::start(&[]).await;
    let vm = source.report.vms[0].ids.uuid.clone();
    let dir = tempfile::tempdir().unwrap();
    let job = write_job(dir.path(), &source, &target, &vm, 2);
    let wrong_sr = "0b9f4a53-6c3c-4d5e-9e7f-111122223333";
    set_key(&job, "target_sr", &format!("\"{wrong_sr}\""));
    let before = (state(&source).await, state(&target).await);

    let text = run(&["replicate", "--dry-run", "--job", job.to_str().unwrap()]).await;
    assert_eq!(text.code, 2, "{} {}", text.stdout, text.stderr);
    let said = format!("target_sr {wrong_sr}: no such SR on the target host");
    assert!(text.stdout.contains(&said), "{}", text.stdout);
    let dry = dry_run(&job).await;
    assert_eq!(dry.code, 2, "{} {}", dry.stdout, dry.stderr);
    assert!(
        dry.stderr
            .contains(&format!("target_sr {wrong_sr}: no such SR")),
        "{}",
        dry.stderr
    );
    assert_eq!(dry.json["dry_run"], true);
    assert!(dry.json["sr"]["error"].as_str().unwrap().contains(wrong_sr));
    // The VM is still looked up and found.
    assert_eq!(dry.json["vms"][0]["name"], "web01", "{}", dry.json);

    let real = run(&["replicate", "--job", job.to_str().unwrap()]).await;
    assert_eq!(real.code, 2, "{} {}", real.stdout, real.stderr);
    let host = target.server.base_url().replacen("http://", "", 1);
    let said = real
        .stderr
        .lines()
        .find(|l| l.contains(wrong_sr))
        .unwrap_or_default();
    assert_eq!(
        said.matches(&host).count(),
        1,
        "the host once: {}",
        real.stderr
    );
    assert!(
        real.stderr.contains("nothing was changed"),
        "{}",
        real.stderr
    );
    // No snapshot on the source, nothing new on the target.
    assert_eq!((state(&source).await, state(&target).await), before);
    assert!(
        source
            .vm(&source.report.vms[0].ids.reference)
            .await
            .snapshots
            .is_empty()
    );

    // A VM that is not there, and the VM's own snapshot given as a VM: exit 2, named.
    set_key(&job, "target_sr", &format!("\"{}\"", target.report.sr.uuid));
    let snapshot = source
        .snapshot(&source.report.vms[0].ids.reference, "by hand")
        .await;
    let snapshot_uuid = source.vm(&snapshot).await.uuid;
    let missing = "6d1e0f0e-1111-4222-8333-444455556666";
    set_key(
        &job,
        "vms",
        &format!("[\"{vm}\", \"{missing}\", \"{snapshot_uuid}\"]"),
    );
    let before = (state(&source).await, state(&target).await);
    let real = run(&["replicate", "--job", job.to_str().unwrap()]).await;
    assert_eq!(real.code, 2, "{} {}", real.stdout, real.stderr);
    assert!(
        real.stderr.contains(&format!("VM {missing}: no such VM")),
        "{}",
        real.stderr
    );
    assert!(
        real.stderr.contains("template or a snapshot"),
        "{}",
        real.stderr
    );
    assert_eq!(
        (state(&source).await, state(&target).await),
        before,
        "the good VM too"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_password_is_its_own_error_before_any_host_is_asked() {
    let source = Host::start(&[("web01", &[4 * MIB])]).await;
    let target = Host::start(&[]).await;
    let vm = source.report.vms[0].ids.uuid.clone();
    let dir = tempfile::tempdir().unwrap();
    let job = write_job(dir.path(), &source, &target, &vm, 2);
    // The target URL without its password, and none in a file or the environment.
    let bare = target.server.base_url().replacen("://", "://root@", 1);
    set_key(&job, "target", &format!("\"{bare}\""));
    // A source nobody listens on: the passwords are looked for before any host is asked.
    set_key(&job, "source", "\"http://root:x@127.0.0.1:1\"");
    for args in [&["--dry-run"][..], &[]] {
        let mut all = vec!["replicate", "--job", job.to_str().unwrap()];
        all.extend(args);
        let out = run(&all).await;
        assert_eq!(out.code, 2, "{args:?}: {} {}", out.stdout, out.stderr);
        for part in [
            "no password for the target host",
            "target_password_file",
            "VHDSYNC_TARGET_PASSWORD",
        ] {
            assert!(out.stderr.contains(part), "{args:?}: {}", out.stderr);
        }
        assert!(
            !out.stderr.contains("SESSION_AUTHENTICATION_FAILED"),
            "{}",
            out.stderr
        );
    }
    // An empty password file is no password either.
    let file = dir.path().join("target.pw");
    std::fs::write(&file, "\n").unwrap();
    set_key(
        &job,
        "target_password_file",
        &format!("\"{}\"", file.display()),
    );
    let out = run(&["replicate", "--dry-run", "--job", job.to_str().unwrap()]).await;
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("is empty"), "{}", out.stderr);
    // A wrong password: refused by the host named, exit 2 (the job's setup is at fault).
    std::fs::write(&file, "not-the-password\n").unwrap();
    set_key(&job, "source", &format!("\"{}\"", source.url()));
    let out = run(&["replicate", "--job", job.to_str().unwrap()]).await;
    assert_eq!(out.code, 2, "{}", out.stderr);
    let host = target.server.base_url();
    let refused = "the target host refused the user name or password";
    assert!(out.stderr.contains(refused), "{}", out.stderr);
    assert_eq!(out.stderr.matches(&host).count(), 1, "{}", out.stderr);
    assert!(
        source
            .vm(&source.report.vms[0].ids.reference)
            .await
            .snapshots
            .is_empty()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_plan_of_a_full_then_of_a_delta_and_the_dry_run_changes_nothing() {
    let source = Host::start(&[("web01", &[20 * MIB, 8 * MIB])]).await;
    let target = Host::start(&[]).await;
    let vm = &source.report.vms[0];
    let disks: Vec<String> = vm.disks.iter().map(|d| d.vdi.reference.clone()).collect();
    let dir = tempfile::tempdir().unwrap();
    let job = write_job(dir.path(), &source, &target, &vm.ids.uuid, 2);
    source.write(&disks[0], 0, 6 * MIB, Some(1)).await;

    let before = (state(&source).await, state(&target).await);
    let full = dry_run(&job).await;
    assert_eq!(full.code, 0, "{} {}", full.stdout, full.stderr);
    assert_eq!(
        (state(&source).await, state(&target).await),
        before,
        "the dry run changed a host"
    );
    let plan = &full.json["vms"][0];
    assert_eq!(plan["mode"], "full", "{plan}");
    assert_eq!(plan["base"], serde_json::Value::Null);
    let estimated: Vec<u64> = plan["disks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["estimated_bytes"].as_u64().unwrap())
        .collect();
    // 6 MiB of data in disk 0 (3 blocks); disk 1 never written: headers only.
    assert!((6 * MIB..7 * MIB).contains(&estimated[0]), "{plan}");
    assert!(estimated[1] < MIB, "{plan}");
    assert!(
        full.json["sr"]["free"].as_u64().unwrap() > 28 * MIB,
        "{}",
        full.json
    );
    assert_eq!(full.json["sr"]["needed_for_fulls"], 28 * MIB);

    let first = replicate(&job).await;
    let sent: Vec<u64> = first["disks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["bytes_sent"].as_u64().unwrap())
        .collect();
    eprintln!("full: estimated {estimated:?}, sent {sent:?}");
    assert_eq!(estimated, sent, "the export's length is what a full sends");

    // A guest write of 1 MiB into disk 0 only.
    source.write(&disks[0], 10 * MIB, MIB, Some(2)).await;
    let before = (state(&source).await, state(&target).await);
    let delta = dry_run(&job).await;
    assert_eq!(delta.code, 0, "{} {}", delta.stdout, delta.stderr);
    assert_eq!(
        (state(&source).await, state(&target).await),
        before,
        "the dry run changed a host"
    );
    let plan = &delta.json["vms"][0];
    assert_eq!(plan["mode"], "delta", "{plan}");
    assert_eq!(plan["base"], first["snapshot"], "{plan}");
    let estimated: Vec<u64> = plan["disks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["estimated_bytes"].as_u64().unwrap())
        .collect();
    assert!((MIB..3 * MIB).contains(&estimated[0]), "{plan}");
    assert!(estimated[1] < 64 * 1024, "{plan}");
    let second = replicate(&job).await;
    assert_eq!(second["mode"], "delta");
    let sent: Vec<u64> = second["disks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["bytes_sent"].as_u64().unwrap())
        .collect();
    eprintln!(
        "delta: estimated {estimated:?}, sent {sent:?}; the dry run's calls {}",
        delta.json["rpc_calls"]
    );
    assert_eq!(
        estimated, sent,
        "the delta export's length is what a delta sends"
    );

    // The text form says the same.
    let text = run(&["replicate", "--dry-run", "--job", job.to_str().unwrap()]).await;
    assert_eq!(text.code, 0, "{}", text.stderr);
    assert!(
        text.stdout.contains("): delta, on base snapshot"),
        "{}",
        text.stdout
    );
    assert!(text.stdout.contains("disk 0: delta"), "{}", text.stdout);
    assert!(
        text.stdout.contains("nothing was changed"),
        "{}",
        text.stdout
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sr_too_small_for_the_fulls_exits_2() {
    let source = Host::start(&[("web01", &[20 * MIB])]).await;
    let dir = scratch_dir();
    Lab::init_with_capacity(dir.path(), "lab", &[], 8 * MIB).unwrap();
    let server = LabServer::start(
        Lab::open(dir.path()).unwrap(),
        "127.0.0.1:0".parse().unwrap(),
        false,
    )
    .await
    .unwrap();
    let target = Host::start(&[]).await;
    let jobs = tempfile::tempdir().unwrap();
    let job = write_job(
        jobs.path(),
        &source,
        &target,
        &source.report.vms[0].ids.uuid,
        2,
    );
    set_key(&job, "target", &format!("\"{}\"", url(&server, "lab")));
    let sr = sr_uuid(&server).await;
    set_key(&job, "target_sr", &format!("\"{sr}\""));
    let out = run(&["replicate", "--job", job.to_str().unwrap()]).await;
    assert_eq!(out.code, 2, "{} {}", out.stdout, out.stderr);
    assert!(
        out.stderr
            .contains("bytes free, but the disks sent whole need 20971520 bytes"),
        "{}",
        out.stderr
    );
    assert!(
        source
            .vm(&source.report.vms[0].ids.reference)
            .await
            .snapshots
            .is_empty()
    );
}

/// The one SR of a lab host served by `server`.
async fn sr_uuid(server: &LabServer) -> String {
    let client = vhdsync::xapi::client::XapiClient::connect(
        vhdsync::xapi::HostUrl::parse(&url(server, "lab")).unwrap(),
        &vhdsync::xapi::tls::Trust::Insecure,
        None,
    )
    .await
    .unwrap();
    let srs = client
        .get_all_records::<vhdsync::xapi::records::SrRecord>()
        .await
        .unwrap();
    srs.into_iter().next().unwrap().1.uuid
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_certificate_says_how_to_trust_it() {
    let dir = scratch_dir();
    let report = Lab::init(dir.path(), "lab", &[("web01".into(), vec![4 * MIB])]).unwrap();
    let server = LabServer::start(
        Lab::open(dir.path()).unwrap(),
        "127.0.0.1:0".parse().unwrap(),
        true,
    )
    .await
    .unwrap();
    let target = Host::start(&[]).await;
    let jobs = tempfile::tempdir().unwrap();
    let job: PathBuf = jobs.path().join("job.toml");
    std::fs::write(
        &job,
        format!(
            "name = \"cr\"\nsource = \"{}\"\ntarget = \"{}\"\ntarget_sr = \"{}\"\nvms = [\"{}\"]\nretention = 2\nstate_dir = \"state\"\n",
            url(&server, "lab"),
            target.url(),
            target.report.sr.uuid,
            report.vms[0].ids.uuid,
        ),
    )
    .unwrap();
    let plain = server.base_url();
    for args in [&["--dry-run"][..], &[]] {
        let mut all = vec!["replicate", "--job", job.to_str().unwrap()];
        all.extend(args);
        let out = run(&all).await;
        assert_eq!(out.code, 2, "{args:?}: {} {}", out.stdout, out.stderr);
        assert!(
            out.stderr.contains(&format!("run `vhdsync trust {plain}`")),
            "{}",
            out.stderr
        );
        assert!(
            out.stderr.contains("tls.source_fingerprint"),
            "{}",
            out.stderr
        );
    }
    // Following the hint works.
    let trust = run(&["trust", &plain]).await;
    assert_eq!(trust.code, 0, "{}", trust.stderr);
    let fingerprint = trust.stdout.trim();
    assert_eq!(
        Some(fingerprint.to_owned()),
        server.fingerprint().map(|f| f.to_string())
    );
    let text = std::fs::read_to_string(&job).unwrap();
    std::fs::write(
        &job,
        format!("{text}[tls]\nsource_fingerprint = \"{fingerprint}\"\n"),
    )
    .unwrap();
    let out = dry_run(&job).await;
    assert_eq!(out.code, 0, "{} {}", out.stdout, out.stderr);
    assert_eq!(out.json["vms"][0]["mode"], "full");
}
