//! Fault injection in the lab host, end to end: each kind of fault set with `lab.inject_fault`
//! (or `vhdsync lab fault`) against an in-process server, and what clients then see on the
//! wire, in the tasks and on the disks. Disks are small, stalls short.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::header::{CONTENT_LENGTH, HOST};
use hyper::{Request, Response, StatusCode};
use tempfile::TempDir;
use uuid::Uuid;
use vhdsync::lab::http::LabServer;
use vhdsync::lab::{InitReport, Lab};
use vhdsync::xapi::HostUrl;
use vhdsync::xapi::client::{ClientError, XapiClient};
use vhdsync::xapi::connection::Endpoint;
use vhdsync::xapi::rpc::{Call, Value, XapiFault};
use vhdsync::xapi::tls::Trust;

const MIB: u64 = 1 << 20;
// Not "lab": the client masks the password in what it reports, and `lab.` is in the calls.
const PASSWORD: &str = "fault-pw";
const BIN: &str = env!("CARGO_BIN_EXE_vhdsync");

/// A lab host served in-process with a logged-in client: VM `web01` has a 16 MiB disk with
/// 4 MiB of data, VM `replica` a 16 MiB disk to import into.
struct Host {
    dir: TempDir,
    lab: Lab,
    server: LabServer,
    client: XapiClient,
    report: InitReport,
}

impl Host {
    async fn start() -> Host {
        let dir = tempfile::tempdir().unwrap();
        let vms = vec![
            ("web01".to_owned(), vec![16 * MIB]),
            ("replica".to_owned(), vec![16 * MIB]),
        ];
        let report = Lab::init(dir.path(), PASSWORD, &vms).unwrap();
        let lab = Lab::open(dir.path()).unwrap();
        let server = LabServer::start(lab.clone(), "127.0.0.1:0".parse().unwrap(), false)
            .await
            .unwrap();
        let client = XapiClient::connect(url_of(&server), &Trust::Insecure, None)
            .await
            .unwrap();
        let host = Host {
            dir,
            lab,
            server,
            client,
            report,
        };
        let (source, _) = host.disk("web01");
        host.call(
            "lab.write",
            vec![
                source.as_str().into(),
                0.into(),
                Value::Int(4 * MIB as i64),
                1.into(),
            ],
        )
        .await;
        host
    }

    /// The VDI of `vm`'s disk: reference and uuid.
    fn disk(&self, vm: &str) -> (String, Uuid) {
        let vm = self.report.vms.iter().find(|v| v.name == vm).unwrap();
        let ids = &vm.disks[0].vdi;
        (ids.reference.clone(), ids.uuid.parse().unwrap())
    }

    async fn try_call(&self, method: &str, params: Vec<Value>) -> Result<Value, ClientError> {
        self.client.call(method, params).await
    }

    async fn call(&self, method: &str, params: Vec<Value>) -> Value {
        self.try_call(method, params)
            .await
            .unwrap_or_else(|e| panic!("{method}: {e}"))
    }

    async fn inject(&self, spec: &[(&str, Value)]) -> String {
        let id = self.call("lab.inject_fault", vec![spec_of(spec)]).await;
        id.as_str().unwrap().to_owned()
    }

    async fn faults(&self) -> Vec<Value> {
        let listed = self.call("lab.list_faults", vec![]).await;
        listed.as_array().unwrap().to_vec()
    }

    async fn hash(&self, vdi: &str) -> String {
        let digest = self.call("lab.hash", vec![vdi.into()]).await;
        digest.as_str().unwrap().to_owned()
    }

    async fn new_task(&self) -> String {
        let task = self
            .call("task.create", vec!["test".into(), "".into()])
            .await;
        task.as_str().unwrap().to_owned()
    }

    async fn task(&self, task: &str) -> Value {
        self.call("task.get_record", vec![task.into()]).await
    }

    /// The task's record once it is no longer pending.
    async fn finished(&self, task: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let record = self.task(task).await;
            if text(&record, "status") != "pending" {
                return record;
            }
            assert!(Instant::now() < deadline, "task {task} stays pending");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn session(&self) -> String {
        self.client.session_id().expose().to_owned()
    }

    fn endpoint(&self) -> Endpoint {
        Endpoint::new(url_of(&self.server), &Trust::Insecure).unwrap()
    }

    /// `GET /export_raw_vdi` as VHD under `task`: the status and the whole body.
    async fn export(&self, vdi: Uuid, task: &str) -> (StatusCode, Bytes) {
        let uri = format!(
            "/export_raw_vdi?session_id={}&vdi={vdi}&format=vhd&task_id={task}",
            self.session()
        );
        let request = Request::get(uri)
            .header(HOST, self.server.local_addr().to_string())
            .body(Empty::<Bytes>::new())
            .unwrap();
        let response = self.endpoint().send(request).await.unwrap();
        (response.status(), body_of(response).await)
    }

    /// A VHD export that meets no fault.
    async fn stream(&self, vdi: Uuid) -> Bytes {
        let task = self.new_task().await;
        let (status, body) = self.export(vdi, &task).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(text(&self.finished(&task).await, "status"), "success");
        body
    }

    /// `PUT /import_raw_vdi` of a VHD stream under `task`. A server that stops reading may
    /// cut the request short, so only a response that arrived is returned.
    async fn import(&self, vdi: Uuid, task: &str, body: Bytes) -> Option<Response<Incoming>> {
        let request = Request::put(format!(
            "/import_raw_vdi?session_id={}&vdi={vdi}&format=vhd&task_id={task}",
            self.session()
        ))
        .header(HOST, self.server.local_addr().to_string())
        .header(CONTENT_LENGTH, body.len())
        .body(Full::new(body))
        .unwrap();
        self.endpoint().send(request).await.ok()
    }

    /// Files an import may leave behind in the SR directory.
    fn staging_files(&self) -> Vec<String> {
        std::fs::read_dir(self.dir.path().join("sr"))
            .unwrap()
            .filter_map(|e| e.unwrap().file_name().into_string().ok())
            .filter(|name| name.ends_with(".import"))
            .collect()
    }
}

fn url_of(server: &LabServer) -> HostUrl {
    let mut url = HostUrl::parse(&server.base_url()).unwrap();
    url.username = Some("root".into());
    url.password = Some(vhdsync::xapi::Secret::new(PASSWORD));
    url
}

fn spec_of(members: &[(&str, Value)]) -> Value {
    Value::Struct(
        members
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect::<BTreeMap<_, _>>(),
    )
}

async fn body_of(response: Response<Incoming>) -> Bytes {
    response.into_body().collect().await.unwrap().to_bytes()
}

fn text(value: &Value, field: &str) -> String {
    value
        .get(field)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("{field} is not text in {value:?}"))
        .to_owned()
}

/// An int member, typed or as XML-RPC's decimal text.
fn int(value: &Value, field: &str) -> i64 {
    value.get(field).and_then(Value::as_i64).unwrap()
}

fn error_info(task: &Value) -> Vec<String> {
    task.get("error_info")
        .and_then(Value::as_array)
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect()
}

fn xapi_fault(error: ClientError) -> XapiFault {
    match error {
        ClientError::Xapi { fault, .. } => fault,
        other => panic!("not a XAPI error: {other}"),
    }
}

/// The footer copy that opens a VHD stream, and closes it: its uid and time stamp are new
/// in every export.
const FOOTER: usize = 512;

/// Two exports of the same content: the same bytes but for the footers.
fn assert_same(stream: &[u8], other: &[u8]) {
    assert_eq!(stream.len(), other.len());
    let end = stream.len() - FOOTER;
    assert!(
        stream[FOOTER..end] == other[FOOTER..end],
        "the streams differ"
    );
}

const EMBEDDED_500: &[u8] = b"HTTP/1.1 500 Internal Error\r\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_export_truncates_the_body_and_fails_the_task() {
    let host = Host::start().await;
    let (source, source_uuid) = host.disk("web01");
    let (other, _) = host.disk("replica");
    let full = host.stream(source_uuid).await;

    // A fault for another VDI is not met; ints may come as decimal text.
    host.inject(&[
        ("kind", "drop_export".into()),
        ("after_bytes", "1048576".into()),
        ("vdi", other.as_str().into()),
    ])
    .await;
    assert_same(&host.stream(source_uuid).await, &full);
    host.call("lab.clear_faults", vec![]).await;

    let id = host
        .inject(&[
            ("kind", "drop_export".into()),
            ("after_bytes", "1048576".into()),
            ("vdi", source.as_str().into()),
        ])
        .await;
    let task = host.new_task().await;
    let (status, body) = host.export(source_uuid, &task).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body.len() as u64, MIB);
    assert!(body[FOOTER..] == full[FOOTER..MIB as usize]);
    let record = host.task(&task).await;
    assert_eq!(text(&record, "status"), "failure");
    let info = error_info(&record);
    assert_eq!(info[0], "VDI_IO_ERROR");
    assert!(
        info[2].contains(&format!(
            "connection dropped after 1048576 bytes by injected fault {id}"
        )),
        "{info:?}"
    );
    // One-shot: gone, and the next export is whole.
    assert!(host.faults().await.is_empty());
    assert_same(&host.stream(source_uuid).await, &full);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_import_fails_the_task_and_leaves_the_vdi_unchanged() {
    let host = Host::start().await;
    let (source, source_uuid) = host.disk("web01");
    let (target, target_uuid) = host.disk("replica");
    let stream = host.stream(source_uuid).await;
    host.call(
        "lab.write",
        vec![
            target.as_str().into(),
            0.into(),
            Value::Int(MIB as i64),
            9.into(),
        ],
    )
    .await;
    let before = host.hash(&target).await;

    host.inject(&[
        ("kind", "drop_import".into()),
        ("after_bytes", Value::Int(MIB as i64)),
    ])
    .await;
    let task = host.new_task().await;
    if let Some(response) = host.import(target_uuid, &task, stream.clone()).await {
        // The connection closes without an embedded error.
        let body = response.into_body().collect().await;
        assert!(body.is_err() || body.unwrap().to_bytes().is_empty());
    }
    let record = host.finished(&task).await;
    assert_eq!(text(&record, "status"), "failure");
    let info = error_info(&record);
    assert_eq!(info[0], "VDI_IO_ERROR");
    assert!(
        info[2].contains("connection dropped after 1048576 bytes"),
        "{info:?}"
    );
    assert_eq!(host.hash(&target).await, before);
    assert!(host.staging_files().is_empty());

    // The fault is spent and the VDI free: the same import now succeeds.
    let task = host.new_task().await;
    let response = host.import(target_uuid, &task, stream).await.unwrap();
    body_of(response).await;
    assert_eq!(text(&host.finished(&task).await, "status"), "success");
    assert_eq!(host.hash(&target).await, host.hash(&source).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_after_the_200_are_embedded_and_fail_the_tasks() {
    let host = Host::start().await;
    let (_, source_uuid) = host.disk("web01");
    let (target, target_uuid) = host.disk("replica");
    let full = host.stream(source_uuid).await;

    // xapi's quirk: a 200, part of the stream, then a whole 500 response.
    host.inject(&[
        ("kind", "embedded_error".into()),
        ("after_bytes", Value::Int(MIB as i64)),
    ])
    .await;
    let task = host.new_task().await;
    let (status, body) = host.export(source_uuid, &task).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body[FOOTER..MIB as usize] == full[FOOTER..MIB as usize]);
    assert!(body[MIB as usize..].starts_with(EMBEDDED_500));
    assert!(String::from_utf8_lossy(&body[MIB as usize..]).contains("VDI_IO_ERROR"));
    assert_eq!(error_info(&host.task(&task).await)[0], "VDI_IO_ERROR");

    // fail_export: the error is all the body holds.
    host.inject(&[("kind", "fail_export".into())]).await;
    let task = host.new_task().await;
    let (status, body) = host.export(source_uuid, &task).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.starts_with(EMBEDDED_500));
    assert_eq!(error_info(&host.task(&task).await)[0], "VDI_IO_ERROR");

    // fail_import: the import fails, the VDI stays as it was. The body is short enough to
    // be read whole at once: the import stops reading, and the reset of a connection closed
    // on unread bytes could otherwise lose the answer.
    let before = host.hash(&target).await;
    host.inject(&[("kind", "fail_import".into())]).await;
    let task = host.new_task().await;
    let response = host
        .import(target_uuid, &task, full.slice(..4096))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(body_of(response).await.starts_with(EMBEDDED_500));
    let record = host.finished(&task).await;
    assert_eq!(error_info(&record)[0], "VDI_IO_ERROR");
    assert_eq!(host.hash(&target).await, before);
    assert!(host.faults().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rpc_errors_fire_count_times_after_the_session_check() {
    let host = Host::start().await;
    let (disk, _) = host.disk("web01");
    host.inject(&[
        ("kind", "rpc_error".into()),
        ("method", "VDI.snapshot".into()),
        ("code", "SR_BACKEND_FAILURE_44".into()),
        ("count", "2".into()),
    ])
    .await;
    // A bad session is told so, and the fault waits.
    let refused = host
        .lab
        .handle(&Call::new(
            "VDI.snapshot",
            vec!["OpaqueRef:nope".into(), disk.as_str().into()],
        ))
        .unwrap_err();
    assert_eq!(refused.code, "SESSION_INVALID");
    assert_eq!(int(&host.faults().await[0], "fired"), 0);

    for _ in 0..2 {
        let error = host
            .try_call("VDI.snapshot", vec![disk.as_str().into()])
            .await
            .unwrap_err();
        assert_eq!(error.xapi_code(), Some("SR_BACKEND_FAILURE_44"));
    }
    host.call("VDI.snapshot", vec![disk.as_str().into()]).await;
    assert!(host.faults().await.is_empty());

    // An Async call gets its task, which fails.
    host.inject(&[
        ("kind", "rpc_error".into()),
        ("method", "VDI.clone".into()),
        ("code", "VDI_IO_ERROR".into()),
    ])
    .await;
    let task = host
        .call("Async.VDI.clone", vec![disk.as_str().into()])
        .await;
    let record = host.finished(task.as_str().unwrap()).await;
    assert_eq!(text(&record, "status"), "failure");
    assert_eq!(error_info(&record)[0], "VDI_IO_ERROR");

    // The lab's own calls are never faulted.
    let refused = host
        .try_call(
            "lab.inject_fault",
            vec![spec_of(&[
                ("kind", "rpc_error".into()),
                ("method", "lab.list_faults".into()),
                ("code", "X".into()),
            ])],
        )
        .await
        .unwrap_err();
    assert_eq!(
        xapi_fault(refused),
        XapiFault::new("INVALID_VALUE", ["method", "lab.list_faults"])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sr_full_on_clone_create_and_import() {
    let host = Host::start().await;
    let (disk, _) = host.disk("web01");
    let (_, target_uuid) = host.disk("replica");
    host.inject(&[
        ("kind", "sr_full".into()),
        ("on", "VDI.clone".into()),
        ("vdi", disk.as_str().into()),
    ])
    .await;
    let error = host
        .try_call("VDI.clone", vec![disk.as_str().into()])
        .await
        .unwrap_err();
    let fault = xapi_fault(error);
    assert_eq!(fault.code, "SR_FULL");
    assert_eq!(fault.params[0], (16 * MIB).to_string());
    assert!(fault.params[1].parse::<u64>().is_ok(), "{fault}");
    host.call("VDI.clone", vec![disk.as_str().into()]).await;

    host.inject(&[("kind", "sr_full".into()), ("on", "VDI.create".into())])
        .await;
    let record = spec_of(&[
        ("name_label", "scratch".into()),
        ("SR", host.report.sr.reference.as_str().into()),
        ("virtual_size", Value::Int(8 * MIB as i64)),
    ]);
    let error = host
        .try_call("VDI.create", vec![record.clone()])
        .await
        .unwrap_err();
    assert_eq!(xapi_fault(error).params[0], (8 * MIB).to_string());
    host.call("VDI.create", vec![record]).await;

    // An import is refused before its 200 and its body is not read (so a client still
    // sending may see the connection close instead of the 500); its task fails.
    host.inject(&[("kind", "sr_full".into()), ("on", "import".into())])
        .await;
    let stream = host.stream(host.disk("web01").1).await;
    let task = host.new_task().await;
    if let Some(response) = host.import(target_uuid, &task, stream.clone()).await {
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    }
    let record = host.finished(&task).await;
    assert_eq!(
        error_info(&record)[..2],
        ["SR_FULL".to_owned(), stream.len().to_string()]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalls_delay_and_transfers_then_finish() {
    let host = Host::start().await;
    let (source, source_uuid) = host.disk("web01");
    let (target, target_uuid) = host.disk("replica");
    let full = host.stream(source_uuid).await;

    host.inject(&[
        ("kind", "stall".into()),
        ("on", "export".into()),
        ("seconds", 1.into()),
        ("after_bytes", Value::Int(MIB as i64)),
    ])
    .await;
    let started = Instant::now();
    assert_same(&host.stream(source_uuid).await, &full);
    assert!(started.elapsed() >= Duration::from_secs(1));

    host.inject(&[
        ("kind", "stall".into()),
        ("on", "import".into()),
        ("seconds", 1.into()),
    ])
    .await;
    let started = Instant::now();
    let task = host.new_task().await;
    let response = host.import(target_uuid, &task, full).await.unwrap();
    body_of(response).await;
    assert_eq!(text(&host.finished(&task).await, "status"), "success");
    assert!(started.elapsed() >= Duration::from_secs(1));
    assert_eq!(host.hash(&target).await, host.hash(&source).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bandwidth_limits_throughput() {
    let host = Host::start().await;
    let (_, source_uuid) = host.disk("web01");
    let (_, target_uuid) = host.disk("replica");
    let started = Instant::now();
    let full = host.stream(source_uuid).await;
    let unlimited = started.elapsed();

    // About 4.2 MiB at 4 MiB/s each way: a second or more, persistently.
    host.inject(&[
        ("kind", "bandwidth".into()),
        ("bytes_per_second", Value::Int(4 * MIB as i64)),
        ("persistent", true.into()),
    ])
    .await;
    let started = Instant::now();
    assert_same(&host.stream(source_uuid).await, &full);
    let limited = started.elapsed();
    assert!(
        limited >= Duration::from_millis(900) && limited > unlimited,
        "{limited:?} against {unlimited:?} unlimited"
    );
    let started = Instant::now();
    let task = host.new_task().await;
    let response = host.import(target_uuid, &task, full).await.unwrap();
    body_of(response).await;
    assert_eq!(text(&host.finished(&task).await, "status"), "success");
    assert!(started.elapsed() >= Duration::from_millis(900));
    let faults = host.faults().await;
    assert_eq!(int(&faults[0], "fired"), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_are_listed_and_cleared_and_bad_specs_name_the_field() {
    let host = Host::start().await;
    let (_, uuid) = host.disk("web01");
    let first = host
        .inject(&[
            ("kind", "drop_export".into()),
            ("after_bytes", 4096.into()),
            ("vdi", uuid.to_string().into()),
        ])
        .await;
    let second = host
        .inject(&[("kind", "fail_import".into()), ("persistent", true.into())])
        .await;
    let third = host
        .inject(&[
            ("kind", "bandwidth".into()),
            ("bytes_per_second", "1000".into()),
            ("on", "import".into()),
        ])
        .await;
    let listed = host.faults().await;
    let ids: Vec<String> = listed.iter().map(|f| text(f, "id")).collect();
    assert_eq!(ids, [first.clone(), second.clone(), third.clone()]);
    assert_eq!(text(&listed[0], "kind"), "drop_export");
    assert_eq!(text(&listed[0], "vdi"), uuid.to_string());
    assert_eq!(int(&listed[0], "after_bytes"), 4096);
    assert_eq!(listed[1].get("persistent"), Some(&Value::Bool(true)));
    assert_eq!(text(&listed[2], "on"), "import");

    let cleared = host
        .call("lab.clear_faults", vec![second.as_str().into()])
        .await;
    assert_eq!(cleared.as_i64(), Some(1));
    let ids: Vec<String> = host.faults().await.iter().map(|f| text(f, "id")).collect();
    assert_eq!(ids, [first, third]);
    let cleared = host.call("lab.clear_faults", vec![]).await;
    assert_eq!(cleared.as_i64(), Some(2));
    assert!(host.faults().await.is_empty());

    let bad = [
        (
            vec![("kind", "melt".into())],
            XapiFault::new("INVALID_VALUE", ["kind", "melt"]),
        ),
        (
            vec![("kind", "drop_export".into())],
            XapiFault::new("FIELD_TYPE_ERROR", ["after_bytes"]),
        ),
        (
            vec![("kind", "drop_export".into()), ("after_bytes", "1M".into())],
            XapiFault::new("FIELD_TYPE_ERROR", ["after_bytes"]),
        ),
        (
            vec![
                ("kind", "stall".into()),
                ("on", "sideways".into()),
                ("seconds", 1.into()),
            ],
            XapiFault::new("INVALID_VALUE", ["on", "sideways"]),
        ),
        (
            vec![
                ("kind", "fail_export".into()),
                ("vdi", "no-such-vdi".into()),
            ],
            XapiFault::new("UUID_INVALID", ["VDI", "no-such-vdi"]),
        ),
    ];
    for (spec, expected) in bad {
        let error = host
            .try_call("lab.inject_fault", vec![spec_of(&spec)])
            .await
            .unwrap_err();
        assert_eq!(xapi_fault(error), expected);
    }
    assert!(host.faults().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_injects_lists_and_clears() {
    let host = Host::start().await;
    let (_, uuid) = host.disk("web01");
    let url = format!("http://root:{PASSWORD}@{}", host.server.local_addr());
    let run = |args: Vec<String>| {
        let url = url.clone();
        async move {
            tokio::task::spawn_blocking(move || {
                let output = std::process::Command::new(BIN)
                    .args(["lab", "fault", "--url", &url])
                    .args(&args)
                    .output()
                    .unwrap();
                assert!(
                    output.status.success(),
                    "{args:?}: {}",
                    String::from_utf8_lossy(&output.stderr)
                );
                String::from_utf8(output.stdout).unwrap()
            })
            .await
            .unwrap()
        }
    };
    let id = run(vec![
        "drop_export".into(),
        "--after".into(),
        "1M".into(),
        "--vdi".into(),
        uuid.to_string(),
    ])
    .await;
    let id = id.trim().to_owned();
    let other = run(vec![
        "rpc_error".into(),
        "--method".into(),
        "VM.start".into(),
        "--code".into(),
        "VM_BAD_POWER_STATE".into(),
        "--persistent".into(),
    ])
    .await;
    assert!(!other.trim().is_empty());
    let listed = run(vec!["--list".into()]).await;
    let lines: Vec<&str> = listed.lines().collect();
    assert_eq!(lines.len(), 2, "{listed}");
    assert!(
        lines[0].starts_with(&format!("{id} drop_export ")),
        "{listed}"
    );
    assert!(lines[0].contains("after_bytes=1048576"), "{listed}");
    assert!(lines[0].contains(&format!("vdi={uuid}")), "{listed}");
    assert!(lines[1].contains("persistent=true"), "{listed}");
    assert_eq!(
        run(vec!["--clear".into(), id]).await,
        "cleared 1 fault(s)\n"
    );
    assert_eq!(run(vec!["--clear".into()]).await, "cleared 1 fault(s)\n");
    assert!(host.faults().await.is_empty());
}
