//! `vhdsync copy-vdi` between two lab hosts served in-process: full and delta copies checked
//! by digest, TLS pinning, credentials, and failures that must never look like success.

use std::time::Duration;

use tempfile::TempDir;
use vhdsync::lab::http::LabServer;
use vhdsync::lab::{InitReport, Lab};
use vhdsync::xapi::HostUrl;
use vhdsync::xapi::client::XapiClient;
use vhdsync::xapi::rpc::Value;
use vhdsync::xapi::tls::Trust;

const MIB: u64 = 1 << 20;
const BIN: &str = env!("CARGO_BIN_EXE_vhdsync");

struct Host {
    _dir: TempDir,
    server: LabServer,
    client: XapiClient,
    report: InitReport,
    password: String,
}

impl Host {
    /// A lab host with VM `vm` holding one 24 MiB disk, served over TLS if `tls`.
    async fn start(password: &str, tls: bool) -> Host {
        Host::start_sized(password, tls, 24 * MIB).await
    }

    /// A lab host with VM `vm` holding one disk of `size` bytes.
    async fn start_sized(password: &str, tls: bool, size: u64) -> Host {
        let dir = tempfile::tempdir().unwrap();
        let report = Lab::init(dir.path(), password, &[("vm".to_owned(), vec![size])]).unwrap();
        let lab = Lab::open(dir.path()).unwrap();
        let server = LabServer::start(lab, "127.0.0.1:0".parse().unwrap(), tls)
            .await
            .unwrap();
        let url = HostUrl::parse(&server.base_url().replacen(
            "://",
            &format!("://root:{}@", encode(password)),
            1,
        ))
        .unwrap();
        let client = XapiClient::connect(url, &Trust::Insecure, None)
            .await
            .unwrap();
        Host {
            _dir: dir,
            server,
            client,
            report,
            password: password.to_owned(),
        }
    }

    /// The base URL with the root credentials, percent-encoded.
    fn url(&self) -> String {
        self.server
            .base_url()
            .replacen("://", &format!("://root:{}@", encode(&self.password)), 1)
    }

    fn disk_uuid(&self) -> String {
        self.report.vms[0].disks[0].vdi.uuid.to_string()
    }

    async fn call(&self, method: &str, params: Vec<Value>) -> Value {
        self.client
            .call(method, params)
            .await
            .unwrap_or_else(|e| panic!("{method}: {e}"))
    }

    /// `lab.inject_fault` with the spec's members.
    async fn inject_fault(&self, members: &[(&str, Value)]) {
        let spec = members
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect();
        self.call("lab.inject_fault", vec![Value::Struct(spec)])
            .await;
    }

    async fn vdi_ref(&self, uuid: &str) -> String {
        self.call("VDI.get_by_uuid", vec![Value::from(uuid)])
            .await
            .as_str()
            .unwrap()
            .to_owned()
    }

    async fn uuid_of(&self, vdi_ref: &str) -> String {
        self.call("VDI.get_uuid", vec![Value::from(vdi_ref)])
            .await
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// Guest writes through `lab.write`.
    async fn write(&self, uuid: &str, offset: u64, len: u64, seed: u64) {
        let vdi = self.vdi_ref(uuid).await;
        self.call(
            "lab.write",
            vec![
                Value::from(vdi.as_str()),
                Value::Int(offset as i64),
                Value::Int(len as i64),
                Value::Int(seed as i64),
            ],
        )
        .await;
    }

    async fn hash(&self, uuid: &str) -> String {
        let vdi = self.vdi_ref(uuid).await;
        self.call("lab.hash", vec![Value::from(vdi.as_str())])
            .await
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// `VDI.snapshot` or `VDI.clone`: the new VDI's uuid.
    async fn copy_of(&self, method: &str, uuid: &str) -> String {
        let vdi = self.vdi_ref(uuid).await;
        let new = self
            .call(
                method,
                vec![Value::from(vdi.as_str()), Value::Struct(Default::default())],
            )
            .await;
        self.uuid_of(new.as_str().unwrap()).await
    }
}

fn encode(text: &str) -> String {
    percent_encoding::utf8_percent_encode(text, percent_encoding::NON_ALPHANUMERIC).to_string()
}

struct Run {
    ok: bool,
    stdout: String,
    stderr: String,
}

async fn copy_vdi(args: &[&str]) -> Run {
    let out = tokio::time::timeout(
        Duration::from_secs(120),
        tokio::process::Command::new(BIN)
            .arg("copy-vdi")
            .args(args)
            .output(),
    )
    .await
    .expect("copy-vdi finishes")
    .unwrap();
    Run {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_then_delta_copies_match_the_source_snapshots() {
    let source = Host::start("lab", false).await;
    let target = Host::start("lab", false).await;
    let disk = source.disk_uuid();
    source.write(&disk, 0, 5 * MIB + 4096, 1).await;
    source.write(&disk, 20 * MIB, 1000 * 512, 2).await;
    let snap1 = source.copy_of("VDI.snapshot", &disk).await;
    // Guest writes after the first snapshot: partial blocks, and a block not touched before.
    source.write(&disk, 512, 8 * 512, 3).await;
    source.write(&disk, 13 * MIB, 2 * MIB, 4).await;
    let snap2 = source.copy_of("VDI.snapshot", &disk).await;

    let replica = target.disk_uuid();
    let full = copy_vdi(&[
        "--from",
        &source.url(),
        "--vdi",
        &snap1,
        "--to",
        &target.url(),
        "--target-vdi",
        &replica,
        "--json",
    ])
    .await;
    assert!(full.ok, "full copy failed: {}", full.stderr);
    let summary: serde_json::Value = serde_json::from_str(&full.stdout).unwrap();
    assert_eq!(
        target.hash(&replica).await,
        source.hash(&snap1).await,
        "full copy"
    );
    assert_eq!(summary["blocks"], 4, "blocks 0-2 and 10: {summary}");

    // The delta goes onto a clone of the first replica, as a replication cycle does.
    let replica2 = target.copy_of("VDI.clone", &replica).await;
    let delta = copy_vdi(&[
        "--from",
        &source.url(),
        "--vdi",
        &snap2,
        "--base",
        &snap1,
        "--to",
        &target.url(),
        "--target-vdi",
        &replica2,
        "--json",
    ])
    .await;
    assert!(delta.ok, "delta copy failed: {}", delta.stderr);
    let summary: serde_json::Value = serde_json::from_str(&delta.stdout).unwrap();
    assert_eq!(summary["blocks"], 3, "blocks 0, 6 and 7: {summary}");
    assert_eq!(
        target.hash(&replica2).await,
        source.hash(&snap2).await,
        "delta copy"
    );
    // The first replica is untouched by the delta.
    assert_eq!(target.hash(&replica).await, source.hash(&snap1).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_pinning_and_insecure() {
    let source = Host::start("lab", true).await;
    let target = Host::start("lab", true).await;
    let disk = source.disk_uuid();
    source.write(&disk, 0, MIB, 9).await;
    let pin_source = source.server.fingerprint().unwrap().to_string();
    let pin_target = target.server.fingerprint().unwrap().to_string();

    // `vhdsync trust` prints what the server presents.
    let trust = tokio::process::Command::new(BIN)
        .arg("trust")
        .arg(source.server.base_url())
        .output()
        .await
        .unwrap();
    assert!(trust.status.success());
    assert_eq!(String::from_utf8_lossy(&trust.stdout).trim(), pin_source);

    let replica = target.disk_uuid();
    let args = |from_pin: &str| {
        vec![
            "--from".to_owned(),
            source.url(),
            "--vdi".to_owned(),
            disk.clone(),
            "--to".to_owned(),
            target.url(),
            "--target-vdi".to_owned(),
            replica.clone(),
            "--from-fingerprint".to_owned(),
            from_pin.to_owned(),
            "--to-fingerprint".to_owned(),
            pin_target.clone(),
        ]
    };
    let pinned = args(&pin_source);
    let run = copy_vdi(&pinned.iter().map(String::as_str).collect::<Vec<_>>()).await;
    assert!(run.ok, "pinned copy failed: {}", run.stderr);
    assert_eq!(target.hash(&replica).await, source.hash(&disk).await);

    let wrong = args(&pin_target);
    let run = copy_vdi(&wrong.iter().map(String::as_str).collect::<Vec<_>>()).await;
    assert!(!run.ok, "a wrong pin must fail");
    assert!(
        run.stderr.contains(&pin_source) && run.stderr.contains(&pin_target),
        "the mismatch shows both fingerprints: {}",
        run.stderr
    );

    let run = copy_vdi(&[
        "--from",
        &source.url(),
        "--vdi",
        &disk,
        "--to",
        &target.url(),
        "--target-vdi",
        &replica,
        "--insecure",
    ])
    .await;
    assert!(run.ok, "insecure copy failed: {}", run.stderr);
    // The URLs' passwords have a warning of their own: this one must be about trust.
    assert!(run.stderr.contains("not verified"), "{}", run.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_and_unknown_vdis() {
    let tricky = "p@ss:w/rd#?%";
    let source = Host::start(tricky, false).await;
    let target = Host::start("lab", false).await;
    let disk = source.disk_uuid();
    let replica = target.disk_uuid();
    source.write(&disk, MIB, MIB, 5).await;

    // A percent-encoded password with special characters works.
    let run = copy_vdi(&[
        "--from",
        &source.url(),
        "--vdi",
        &disk,
        "--to",
        &target.url(),
        "--target-vdi",
        &replica,
    ])
    .await;
    assert!(run.ok, "special-character password: {}", run.stderr);
    assert_eq!(target.hash(&replica).await, source.hash(&disk).await);

    // So does a password file with the user in the URL.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("source-password");
    std::fs::write(&file, format!("{tricky}\n")).unwrap();
    let user_only = source.server.base_url().replacen("://", "://root@", 1);
    let run = copy_vdi(&[
        "--from",
        &user_only,
        "--from-password-file",
        file.to_str().unwrap(),
        "--vdi",
        &disk,
        "--to",
        &target.url(),
        "--target-vdi",
        &replica,
    ])
    .await;
    assert!(run.ok, "password file: {}", run.stderr);

    // A wrong password fails, and no output shows any password.
    let wrong = target.url().replace("root:lab@", "root:hunter2-wrong@");
    let run = copy_vdi(&[
        "--from",
        &source.url(),
        "--vdi",
        &disk,
        "--to",
        &wrong,
        "--target-vdi",
        &replica,
    ])
    .await;
    assert!(!run.ok);
    assert!(
        run.stderr.contains("SESSION_AUTHENTICATION_FAILED"),
        "{}",
        run.stderr
    );
    let all = format!("{}{}", run.stdout, run.stderr);
    for secret in ["hunter2-wrong", tricky, &encode(tricky)] {
        assert!(!all.contains(secret), "output shows a password: {all}");
    }

    // An unknown VDI names itself.
    let missing = "00000000-0000-4000-8000-000000000000";
    let run = copy_vdi(&[
        "--from",
        &source.url(),
        "--vdi",
        missing,
        "--to",
        &target.url(),
        "--target-vdi",
        &replica,
    ])
    .await;
    assert!(!run.ok);
    assert!(run.stderr.contains(missing), "{}", run.stderr);
    assert_eq!(
        target.hash(&replica).await,
        source.hash(&disk).await,
        "a failed copy leaves the target as it was"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_dropped_mid_stream_fails_cleanly() {
    let source = Host::start("lab", false).await;
    let target = Host::start("lab", false).await;
    let disk = source.disk_uuid();
    let replica = target.disk_uuid();
    source.write(&disk, 0, 12 * MIB, 4).await;
    let before = target.hash(&replica).await;
    source
        .inject_fault(&[
            ("kind", Value::from("drop_export")),
            ("after_bytes", Value::Int(5 * MIB as i64)),
        ])
        .await;
    let run = copy_vdi(&[
        "--from",
        &source.url(),
        "--vdi",
        &disk,
        "--to",
        &target.url(),
        "--target-vdi",
        &replica,
        "--json",
    ])
    .await;
    assert!(!run.ok, "a truncated export must not succeed");
    assert!(run.stdout.is_empty(), "no success document: {}", run.stdout);
    let host = source.server.base_url();
    assert!(
        run.stderr.contains(&host) && run.stderr.contains(&disk) && run.stderr.contains("byte"),
        "names host, VDI and byte offset: {}",
        run.stderr
    );
    assert!(!run.stderr.contains("root:lab"), "{}", run.stderr);
    // The target's import task failed (failed tasks are left for the administrator), and its
    // VDI holds what it held.
    let tasks = target.call("task.get_all_records", vec![]).await;
    let imports: Vec<&str> = tasks
        .as_struct()
        .unwrap()
        .values()
        .filter(|t| t.get("name_label").and_then(Value::as_str) == Some("vhdsync import"))
        .filter_map(|t| t.get("status").and_then(Value::as_str))
        .collect();
    assert!(!imports.is_empty(), "the import task is still listed");
    assert!(
        imports.iter().all(|s| *s == "failure" || *s == "cancelled"),
        "the import task ended in failure: {imports:?}"
    );
    assert_eq!(
        target.hash(&replica).await,
        before,
        "the target VDI is unchanged"
    );
}

/// A pool member that does not hold the SR answers a transfer with a 302 to the one that
/// does; here each host sends its own transfer on to itself under another name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_of_the_export_and_the_import_are_followed() {
    let source = Host::start("lab", false).await;
    let target = Host::start("lab", false).await;
    let disk = source.disk_uuid();
    let replica = target.disk_uuid();
    source.write(&disk, 3 * MIB, 3 * MIB, 5).await;
    for (host, plane) in [(&source, "export"), (&target, "import")] {
        let elsewhere = host.server.base_url().replacen("127.0.0.1", "localhost", 1);
        host.inject_fault(&[
            ("kind", Value::from("redirect")),
            ("on", Value::from(plane)),
            ("to", Value::from(elsewhere.as_str())),
        ])
        .await;
    }
    let run = copy_vdi(&[
        "--from",
        &source.url(),
        "--vdi",
        &disk,
        "--to",
        &target.url(),
        "--target-vdi",
        &replica,
        "--json",
    ])
    .await;
    assert!(run.ok, "copy through redirects failed: {}", run.stderr);
    for host in [&source, &target] {
        let waiting = host.call("lab.list_faults", vec![]).await;
        assert_eq!(
            waiting.as_array().map(|faults| faults.len()),
            Some(0),
            "each redirect was met: {waiting:?}"
        );
    }
    assert_eq!(target.hash(&replica).await, source.hash(&disk).await);
}

/// `copy-vdi` of `disk` on `source` into `replica` on `target`, with `extra` arguments.
async fn copy_between(
    source: &Host,
    disk: &str,
    target: &Host,
    replica: &str,
    extra: &[&str],
) -> Run {
    let (from, to) = (source.url(), target.url());
    let mut args = vec![
        "--from",
        &from,
        "--vdi",
        disk,
        "--to",
        &to,
        "--target-vdi",
        replica,
    ];
    args.extend_from_slice(extra);
    copy_vdi(&args).await
}

/// A pinned https host redirecting the export to plain http must not be followed: the
/// request would carry the session id in clear text to whoever listens there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirect_from_https_to_http_is_refused() {
    let source = Host::start("lab", true).await;
    let target = Host::start("lab", false).await;
    let disk = source.disk_uuid();
    let replica = target.disk_uuid();
    let fingerprint = source.server.fingerprint().unwrap().to_string();
    // Whoever listens on the plain-http side records what reaches it.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let eavesdropper = tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.unwrap();
        let mut heard = vec![0u8; 4096];
        let n = tokio::io::AsyncReadExt::read(&mut socket, &mut heard)
            .await
            .unwrap_or(0);
        String::from_utf8_lossy(&heard[..n]).into_owned()
    });
    source
        .inject_fault(&[
            ("kind", Value::from("redirect")),
            ("on", Value::from("export")),
            (
                "to",
                Value::from(format!("http://127.0.0.1:{port}").as_str()),
            ),
        ])
        .await;
    let run = copy_between(
        &source,
        &disk,
        &target,
        &replica,
        &["--from-fingerprint", &fingerprint, "--json"],
    )
    .await;
    assert!(!run.ok, "the downgrade must fail the copy");
    assert!(
        run.stderr.contains("plain http"),
        "says why: {}",
        run.stderr
    );
    // Nothing connected: give a connection that was going to come a moment, then look.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !eavesdropper.is_finished(),
        "the plain-http host was contacted: {:?}",
        eavesdropper.await
    );
    eavesdropper.abort();
}

/// A target VDI smaller than the source disk: refused before any byte moves, with both
/// sizes, instead of "the target closed the import".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_into_a_smaller_vdi_says_so() {
    let source = Host::start_sized("lab", false, 32 * MIB).await;
    let target = Host::start("lab", false).await;
    let disk = source.disk_uuid();
    let replica = target.disk_uuid();
    source.write(&disk, 0, 4 * MIB, 9).await;
    let before = target.hash(&replica).await;
    let run = copy_between(&source, &disk, &target, &replica, &[]).await;
    assert!(!run.ok);
    assert!(
        run.stderr.contains(&replica)
            && run.stderr.contains(&(24 * MIB).to_string())
            && run.stderr.contains(&(32 * MIB).to_string())
            && run.stderr.contains("smaller"),
        "names the VDI and both sizes: {}",
        run.stderr
    );
    assert!(!run.stderr.contains("closed the import"), "{}", run.stderr);
    assert_eq!(target.hash(&replica).await, before);
}

/// When the target fails its import mid-body, the error is its task's, not the closed
/// connection it shows as: the export half straight into the import half, without the size
/// check that would refuse this pair first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_import_failed_by_its_task_reports_the_tasks_error() {
    use vhdsync::xapi::transfer::{
        ImportError, TransferOptions, VdiOn, import_stream, open_export,
    };
    let source = Host::start_sized("lab", false, 32 * MIB).await;
    let target = Host::start("lab", false).await;
    let disk = source.disk_uuid();
    let replica = target.disk_uuid();
    source.write(&disk, 0, 8 * MIB, 3).await;
    let cancel = tokio_util::sync::CancellationToken::new();
    let options = TransferOptions::default();
    let source_side = VdiOn {
        host: &source.client,
        vdi: &disk,
    };
    let mut export = open_export(source_side, None, "test export", &options, &cancel)
        .await
        .unwrap();
    let length = export.total_len();
    let outcome = import_stream(
        VdiOn {
            host: &target.client,
            vdi: &replica,
        },
        length,
        "test import",
        &mut export,
        &options,
        &mut |_| {},
        &cancel,
    )
    .await;
    export.close().await;
    let error = match outcome {
        Err(ImportError::Import(e)) => e,
        Err(ImportError::Source(e)) => panic!("the source is fine: {e}"),
        Ok(report) => panic!("imported into a smaller VDI: {report:?}"),
    };
    assert_eq!(error.xapi_code(), Some("VDI_TOO_SMALL"), "{error}");
}

/// `--max-rate` holds the copy to its rate; a rate that is no rate is a usage error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_rate_limits_a_copy() {
    let source = Host::start("lab", false).await;
    let target = Host::start("lab", false).await;
    let disk = source.disk_uuid();
    let replica = target.disk_uuid();
    source.write(&disk, 0, 4 * MIB, 6).await;
    let run = copy_between(
        &source,
        &disk,
        &target,
        &replica,
        &["--max-rate", "4MiB", "--json"],
    )
    .await;
    assert!(run.ok, "{}", run.stderr);
    let report: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    let bytes = report["bytes"].as_u64().unwrap();
    let seconds = report["seconds"].as_f64().unwrap();
    assert!(bytes > 4 * MIB, "{report}");
    // All but the quarter-second burst waits for the rate.
    let least = (bytes as f64 - MIB as f64) / (4 * MIB) as f64;
    assert!(seconds >= least, "{bytes} bytes in {seconds} s at 4 MiB/s");
    assert_eq!(target.hash(&replica).await, source.hash(&disk).await);

    let out = std::process::Command::new(BIN)
        .args([
            "copy-vdi",
            "--max-rate",
            "fast",
            "--from",
            "x",
            "--vdi",
            "v",
        ])
        .args(["--to", "y", "--target-vdi", "w"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a rate"));
}

/// An export abandoned before its end (a failed copy's `close`, or a full over NBD that read
/// only the head for the allocation, `discard`) closes its connection first, so the host
/// ends it at once: it does not wait until the host next looks for a cancellation (the lab
/// looks every second while a client holds it up; each full over NBD used to pay that),
/// and its task has ended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_abandoned_after_its_head_ends_at_once() {
    use vhdsync::xapi::transfer::{TransferOptions, VdiOn, open_export};
    // More data than the lab's read-ahead and the sockets' buffers hold, so the export is
    // held up by its client when abandoned.
    let source = Host::start_sized("lab", false, 96 * MIB).await;
    let disk = source.disk_uuid();
    source.write(&disk, 0, 96 * MIB, 5).await;
    let vdi = source.vdi_ref(&disk).await;
    let options = TransferOptions::default();
    let cancel = tokio_util::sync::CancellationToken::new();
    let on = VdiOn {
        host: &source.client,
        vdi: &vdi,
    };
    for discard in [false, true] {
        let export = open_export(on, None, "abandoned export", &options, &cancel)
            .await
            .unwrap();
        // Give the host time to fill every buffer and block on the connection.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let started = std::time::Instant::now();
        if discard {
            export.discard().await;
        } else {
            export.close().await;
        }
        let took = started.elapsed();
        assert!(
            took < Duration::from_millis(900),
            "discard {discard}: the export ended after {took:?}"
        );
    }
    // `close` leaves a failed copy's task for the host's administrators, ended; `discard`
    // removes its own.
    let tasks = source.call("task.get_all_records", vec![]).await;
    let left: Vec<String> = tasks
        .as_struct()
        .unwrap()
        .values()
        .filter(|t| t.get("name_label").and_then(Value::as_str) == Some("abandoned export"))
        .filter_map(|t| t.get("status").and_then(Value::as_str).map(str::to_owned))
        .collect();
    assert_eq!(left.len(), 1, "close's task alone is left: {left:?}");
    assert!(
        left[0] == "cancelled" || left[0] == "failure",
        "and it has ended: {left:?}"
    );
}
