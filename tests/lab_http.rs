//! The lab host over HTTP, driven as clients drive XAPI: our own RPC client, raw HTTP requests
//! and curl. Exports are decoded with our decoder and checked against the chains on disk;
//! imports are checked by digest; the error paths answer with xapi's status codes and leave
//! failed tasks; `vhdsync lab serve` starts, announces itself and stops on SIGTERM.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read as _};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::header::{CONTENT_LENGTH, HOST};
use hyper::{Request, Response, StatusCode};
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::codec::Decoder;
use uuid::Uuid;
use vhdsync::image::{Chain, changed};
use vhdsync::lab::http::LabServer;
use vhdsync::lab::{InitReport, Lab};
use vhdsync::stream::{StreamDecoder, StreamEvent};
use vhdsync::vhd::{DiskType, DynamicHeader, Footer, SECTOR_SIZE, bitmap};
use vhdsync::xapi::HostUrl;
use vhdsync::xapi::client::XapiClient;
use vhdsync::xapi::connection::Endpoint;
use vhdsync::xapi::rpc::Value;
use vhdsync::xapi::tls::{Fingerprint, Trust};

use common::read_all;

const MIB: u64 = 1 << 20;
const PASSWORD: &str = "lab";
const BIN: &str = env!("CARGO_BIN_EXE_vhdsync");

/// A lab host served in-process, with a logged-in client. VM `web01` has one 32 MiB disk;
/// VM `replica` has three 32 MiB disks to import into; VM `big` one 128 MiB disk.
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
            ("web01".to_owned(), vec![32 * MIB]),
            ("replica".to_owned(), vec![32 * MIB, 32 * MIB, 32 * MIB]),
            ("big".to_owned(), vec![128 * MIB]),
        ];
        let report = Lab::init(dir.path(), PASSWORD, &vms).unwrap();
        let lab = Lab::open(dir.path()).unwrap();
        let server = LabServer::start(lab.clone(), "127.0.0.1:0".parse().unwrap(), false)
            .await
            .unwrap();
        let client = XapiClient::connect(url_of(&server), &Trust::Insecure, None)
            .await
            .unwrap();
        Host {
            dir,
            lab,
            server,
            client,
            report,
        }
    }

    /// The VDI of `vm`'s disk `disk`: reference and uuid.
    fn disk(&self, vm: &str, disk: usize) -> (String, Uuid) {
        let vm = self.report.vms.iter().find(|v| v.name == vm).unwrap();
        let ids = &vm.disks[disk].vdi;
        (ids.reference.clone(), ids.uuid.parse().unwrap())
    }

    async fn call(&self, method: &str, params: Vec<Value>) -> Value {
        self.client
            .call(method, params)
            .await
            .unwrap_or_else(|e| panic!("{method}: {e}"))
    }

    async fn write(&self, vdi: &str, offset: u64, length: u64, seed: i64) {
        let params = vec![
            vdi.into(),
            Value::Int(offset as i64),
            Value::Int(length as i64),
            Value::Int(seed),
        ];
        self.call("lab.write", params).await;
    }

    async fn hash(&self, vdi: &str) -> String {
        let digest = self.call("lab.hash", vec![vdi.into()]).await;
        digest.as_str().unwrap().to_owned()
    }

    /// Snapshot a VDI: the snapshot's reference and uuid.
    async fn snapshot(&self, vdi: &str) -> (String, Uuid) {
        let snap = self.call("VDI.snapshot", vec![vdi.into()]).await;
        let snap = snap.as_str().unwrap().to_owned();
        let uuid = self.call("VDI.get_uuid", vec![snap.as_str().into()]).await;
        (snap, uuid.as_str().unwrap().parse().unwrap())
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

    fn chain(&self, vdi: Uuid) -> Chain {
        self.lab.sr().chain(vdi).unwrap()
    }

    fn session(&self) -> String {
        self.client.session_id().expose().to_owned()
    }

    fn endpoint(&self) -> Endpoint {
        Endpoint::new(url_of(&self.server), &Trust::Insecure).unwrap()
    }

    /// `GET`, authenticated by the session in the query.
    async fn get(&self, path: &str, query: &str) -> Response<Incoming> {
        let uri = format!("{path}?session_id={}&{query}", self.session());
        let request = Request::get(uri)
            .header(HOST, self.server.local_addr().to_string())
            .body(Empty::<Bytes>::new())
            .unwrap();
        self.endpoint().send(request).await.unwrap()
    }

    /// `PUT` with a Content-Length, authenticated by the session in a cookie.
    async fn put(&self, path: &str, query: &str, body: Bytes) -> Response<Incoming> {
        let request = Request::put(format!("{path}?{query}"))
            .header(HOST, self.server.local_addr().to_string())
            .header("cookie", format!("session_id={}", self.session()))
            .header(CONTENT_LENGTH, body.len())
            .body(Full::new(body))
            .unwrap();
        self.endpoint().send(request).await.unwrap()
    }

    fn url(&self) -> String {
        self.server.base_url()
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

fn error_info(task: &Value) -> Vec<String> {
    task.get("error_info")
        .and_then(Value::as_array)
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect()
}

fn task_id(response: &Response<Incoming>) -> String {
    response.headers()["task-id"].to_str().unwrap().to_owned()
}

/// A VHD stream decoded with our decoder.
struct Decoded {
    footer: Footer,
    header: DynamicHeader,
    /// Block index -> (sector bitmap, data).
    blocks: BTreeMap<u32, (Bytes, Bytes)>,
}

fn decode(stream: &[u8]) -> Decoded {
    let mut decoder = StreamDecoder::new();
    let mut buffer = BytesMut::from(stream);
    let (mut footer, mut header, mut blocks) = (None, None, BTreeMap::new());
    while let Some(event) = decoder.decode_eof(&mut buffer).unwrap() {
        match event {
            StreamEvent::Footer(f) => footer = Some(f),
            StreamEvent::Header(h) => header = Some(h),
            StreamEvent::Block {
                index,
                bitmap,
                data,
            } => {
                blocks.insert(index, (bitmap, data));
            }
            StreamEvent::End(_) => break,
            _ => {}
        }
    }
    assert!(buffer.is_empty(), "bytes after the final footer");
    Decoded {
        footer: footer.unwrap(),
        header: header.unwrap(),
        blocks,
    }
}

impl Decoded {
    /// Write the present sectors of every block onto `disk`, as an import does.
    fn apply(&self, disk: &mut [u8]) {
        let block_size = u64::from(self.header.block_size);
        for (&index, (bits, data)) in &self.blocks {
            let sectors = (block_size / SECTOR_SIZE) as u32;
            for run in bitmap::runs(bits, 0..sectors).filter(|r| r.present) {
                let from = u64::from(index) * block_size + u64::from(run.start) * SECTOR_SIZE;
                let len = u64::from(run.len) * SECTOR_SIZE;
                let end = (from + len).min(disk.len() as u64);
                let within = (u64::from(run.start) * SECTOR_SIZE) as usize;
                disk[from as usize..end as usize]
                    .copy_from_slice(&data[within..within + (end - from) as usize]);
            }
        }
    }

    fn block_set(&self) -> Vec<u32> {
        self.blocks.keys().copied().collect()
    }
}

/// `web01`'s disk with data, snapshotted twice with writes in between: the disk, and the two
/// snapshots (S1 then S2) as (reference, uuid).
async fn two_snapshots(host: &Host) -> ((String, Uuid), (String, Uuid)) {
    let (disk, _) = host.disk("web01", 0);
    host.write(&disk, 0, 3 * MIB, 1).await;
    // Unaligned, across a block boundary: sector-granular bitmaps in the leaf.
    host.write(&disk, 5 * MIB + 100, 2 * MIB, 2).await;
    let s1 = host.snapshot(&disk).await;
    host.write(&disk, MIB, 512, 3).await;
    host.write(&disk, 20 * MIB + 7, 3 * MIB, 4).await;
    let s2 = host.snapshot(&disk).await;
    (s1, s2)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_and_delta_exports_match_the_chains_and_import_back_identically() {
    let host = Host::start().await;
    let (s1, s2) = two_snapshots(&host).await;
    let (chain1, chain2) = (host.chain(s1.1), host.chain(s2.1));
    let content2 = read_all(&chain2);

    // Full export of S2, by uuid, into a task of the client's own.
    let task = host.new_task().await;
    let response = host
        .get(
            "/export_raw_vdi",
            &format!("vdi={}&format=vhd&task_id={task}", s2.1),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(task_id(&response), task);
    assert_eq!(response.headers()["connection"], "close");
    assert!(response.headers().get(CONTENT_LENGTH).is_none());
    assert!(response.headers().get("transfer-encoding").is_none());
    let full = body_of(response).await;
    assert_eq!(&full[..8], b"conectix");
    let decoded = decode(&full);
    assert_eq!(decoded.footer.disk_type, DiskType::Dynamic);
    let expected: Vec<u32> = changed(&chain2, None).iter().collect();
    assert_eq!(decoded.block_set(), expected);
    let mut disk = vec![0u8; content2.len()];
    decoded.apply(&mut disk);
    assert!(
        disk == content2,
        "the full export's content differs from S2"
    );
    let record = host.task(&task).await;
    assert_eq!(text(&record, "status"), "success");

    // Delta S1 -> S2, by references, at the trailing-slash path XO uses.
    let response = host
        .get(
            "/export_raw_vdi/",
            &format!("vdi={}&base={}&format=vhd", s2.0, s1.0),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let delta_task = task_id(&response);
    let delta = body_of(response).await;
    let decoded = decode(&delta);
    assert_eq!(decoded.footer.disk_type, DiskType::Differencing);
    assert_eq!(
        decoded.header.parent_unique_id,
        chain1.leaf().footer().unique_id
    );
    let expected: Vec<u32> = changed(&chain2, Some(&chain1)).iter().collect();
    assert_eq!(decoded.block_set(), expected);
    assert_eq!(expected, vec![0, 10, 11]);
    let mut disk = read_all(&chain1);
    decoded.apply(&mut disk);
    assert!(disk == content2, "S1 plus the delta differs from S2");
    assert_eq!(text(&host.task(&delta_task).await, "status"), "success");

    // Import the full stream into one fresh VDI, and full S1 then the delta into another.
    let s2_hash = host.hash(&s2.0).await;
    let (fresh, _) = host.disk("replica", 0);
    let response = host
        .put(
            "/import_raw_vdi",
            &format!("vdi={fresh}&format=vhd"),
            full.clone(),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let import_task = task_id(&response);
    assert!(body_of(response).await.is_empty());
    let record = host.task(&import_task).await;
    assert_eq!(text(&record, "status"), "success");
    assert_eq!(text(&record, "result"), format!("<value>{fresh}</value>"));
    assert_eq!(host.hash(&fresh).await, s2_hash);

    let s1_full = body_of(
        host.get("/export_raw_vdi", &format!("vdi={}&format=vhd", s1.1))
            .await,
    )
    .await;
    let (restored, restored_uuid) = host.disk("replica", 1);
    for stream in [s1_full, delta] {
        let response = host
            .put(
                "/import_raw_vdi/",
                &format!("vdi={restored_uuid}&format=vhd"),
                stream,
            )
            .await;
        let task = task_id(&response);
        body_of(response).await;
        assert_eq!(text(&host.task(&task).await, "status"), "success");
    }
    assert_eq!(host.hash(&restored).await, s2_hash);
    assert!(host.staging_files().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_exports_and_imports_carry_the_whole_disk() {
    let host = Host::start().await;
    let (s1, s2) = two_snapshots(&host).await;
    let content2 = read_all(&host.chain(s2.1));

    let raw = body_of(host.get("/export_raw_vdi", &format!("vdi={}", s2.1)).await).await;
    assert!(raw[..] == content2[..], "the raw export differs from S2");
    // With a base, xapi sends the unchanged blocks as zeros.
    let response = host
        .get(
            "/export_raw_vdi",
            &format!("vdi={}&base={}&format=raw", s2.1, s1.1),
        )
        .await;
    let raw_delta = body_of(response).await;
    assert_eq!(raw_delta.len(), content2.len());
    let block = 2 * MIB as usize;
    for (index, chunk) in raw_delta.chunks(block).enumerate() {
        let expected = if [0, 10, 11].contains(&index) {
            &content2[index * block..(index + 1) * block]
        } else {
            &[0u8; 2 << 20][..]
        };
        assert!(chunk == expected, "raw delta block {index}");
    }

    let (target, _) = host.disk("replica", 0);
    let response = host
        .put("/import_raw_vdi", &format!("vdi={target}&format=raw"), raw)
        .await;
    let task = task_id(&response);
    body_of(response).await;
    assert_eq!(text(&host.task(&task).await, "status"), "success");
    assert_eq!(host.hash(&target).await, host.hash(&s2.0).await);
    // Zeros over blocks nothing held were skipped, not written.
    let (_, target_uuid) = host.disk("replica", 0);
    let allocated: Vec<u32> = changed(&host.chain(target_uuid), None).iter().collect();
    let source: Vec<u32> = changed(&host.chain(s2.1), None).iter().collect();
    assert_eq!(allocated, source);

    // A raw body shorter than the disk, ending inside a sector: the rest stays as it was.
    let (partial, partial_uuid) = host.disk("replica", 1);
    host.write(&partial, 0, 4 * MIB, 9).await;
    let mut expected = read_all(&host.chain(partial_uuid));
    let body = Bytes::from(vec![0xAB; 1000]);
    expected[..1000].fill(0xAB);
    let response = host
        .put("/import_raw_vdi", &format!("vdi={partial}"), body)
        .await;
    let task = task_id(&response);
    body_of(response).await;
    assert_eq!(text(&host.task(&task).await, "status"), "success");
    assert!(read_all(&host.chain(partial_uuid)) == expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_credentials_get_401_and_leave_the_given_task_alone() {
    let host = Host::start().await;
    let mut url = url_of(&host.server);
    url.password = Some(vhdsync::xapi::Secret::new("wrong"));
    let err = XapiClient::connect(url, &Trust::Insecure, None)
        .await
        .unwrap_err();
    assert_eq!(err.xapi_code(), Some("SESSION_AUTHENTICATION_FAILED"));

    let (disk, _) = host.disk("web01", 0);
    let task = host.new_task().await;
    let output = Command::new("curl")
        .args(["-s", "-i", "-u", "root:wrong"])
        .arg(format!(
            "{}/export_raw_vdi?vdi={disk}&format=vhd&task_id={task}",
            host.url()
        ))
        .output()
        .unwrap();
    let head = String::from_utf8_lossy(&output.stdout);
    assert!(head.starts_with("HTTP/1.1 401 Unauthorised\r\n"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("www-authenticate: basic realm=\"xapi\""),
        "{head}"
    );
    // An unauthenticated client touches no object (issue 17): the task is still pending.
    let record = host.task(&task).await;
    assert_eq!(text(&record, "status"), "pending");

    // A dead session is no better; the right password by HTTP Basic is fine.
    let status = |auth: &[&str], query: &str| {
        let output = Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code}"])
            .args(auth)
            .arg(format!(
                "{}/export_raw_vdi?vdi={disk}&format=vhd{query}",
                host.url()
            ))
            .output()
            .unwrap();
        String::from_utf8(output.stdout).unwrap()
    };
    assert_eq!(status(&[], "&session_id=OpaqueRef:dead"), "401");
    assert_eq!(status(&[], ""), "401");
    assert_eq!(status(&["-u", &format!("root:{PASSWORD}")], ""), "200");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_vdis_get_500_naming_them() {
    let host = Host::start().await;
    let missing = Uuid::new_v4();
    let task = host.new_task().await;
    let response = host
        .get(
            "/export_raw_vdi",
            &format!("vdi={missing}&format=vhd&task_id={task}"),
        )
        .await;
    assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let page = body_of(response).await;
    let page = String::from_utf8_lossy(&page);
    assert!(
        page.contains(&format!("UUID_INVALID: [ VDI; {missing} ]")),
        "{page}"
    );
    let record = host.task(&task).await;
    assert_eq!(
        error_info(&record),
        vec!["UUID_INVALID".to_owned(), "VDI".into(), missing.to_string()]
    );

    let (disk, _) = host.disk("web01", 0);
    let response = host
        .get(
            "/export_raw_vdi",
            &format!("vdi={disk}&base=OpaqueRef:gone&format=vhd"),
        )
        .await;
    assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let page = body_of(response).await;
    assert!(String::from_utf8_lossy(&page).contains("HANDLE_INVALID: [ VDI; OpaqueRef:gone ]"));

    let response = host
        .put(
            "/import_raw_vdi",
            &format!("vdi={missing}&format=vhd"),
            Bytes::from_static(b"x"),
        )
        .await;
    assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let response = host
        .put("/import_raw_vdi", "format=vhd", Bytes::from_static(b"x"))
        .await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert!(String::from_utf8_lossy(&body_of(response).await).contains("VDI_MISSING"));
    let response = host.get("/export_raw_vdi", "format=zip&vdi=x").await;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_import_leaves_the_vdi_unchanged_and_fails_its_task_naming_the_offset() {
    let host = Host::start().await;
    let (_, s2) = two_snapshots(&host).await;
    let stream = body_of(
        host.get("/export_raw_vdi", &format!("vdi={}&format=vhd", s2.1))
            .await,
    )
    .await;
    let (target, target_uuid) = host.disk("replica", 0);
    host.write(&target, 0, 4 * MIB, 5).await;
    let before = host.hash(&target).await;

    // Every block is good; the final footer is not: all blocks were written, then refused.
    let mut bad = stream.to_vec();
    let footer_at = bad.len() - 512;
    bad[footer_at] ^= 0xFF;
    let task = host.new_task().await;
    let response = host
        .put(
            "/import_raw_vdi",
            &format!("vdi={target_uuid}&format=vhd&task_id={task}"),
            Bytes::from(bad),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let body = body_of(response).await;
    assert!(body.starts_with(b"HTTP/1.1 500 Internal Error\r\n"));
    let record = host.task(&task).await;
    assert_eq!(text(&record, "status"), "failure");
    let info = error_info(&record);
    assert_eq!(info[0], "VDI_IO_ERROR");
    assert!(
        info[2].contains(&target_uuid.to_string())
            && info[2].contains(&format!("byte {footer_at}")),
        "{info:?}"
    );
    assert_eq!(host.hash(&target).await, before);
    assert!(host.staging_files().is_empty());

    // Garbage from the first byte, and a stream cut short, fail the same way.
    for (body, offset) in [
        (Bytes::from(vec![7u8; 4096]), 0),
        (stream.slice(..stream.len() / 2), stream.len() / 2),
    ] {
        let response = host
            .put("/import_raw_vdi", &format!("vdi={target}&format=vhd"), body)
            .await;
        let task = task_id(&response);
        body_of(response).await;
        let info = error_info(&host.task(&task).await);
        assert!(
            info[2].contains(&format!("byte {offset}"))
                || info[2].contains(&format!("after {offset} bytes")),
            "{info:?}"
        );
    }
    assert_eq!(host.hash(&target).await, before);

    // A stream for a larger disk does not fit.
    let big = body_of(
        host.get(
            "/export_raw_vdi",
            &format!("vdi={}&format=vhd", host.disk("big", 0).1),
        )
        .await,
    )
    .await;
    let response = host
        .put("/import_raw_vdi", &format!("vdi={target}&format=vhd"), big)
        .await;
    let task = task_id(&response);
    body_of(response).await;
    assert_eq!(error_info(&host.task(&task).await)[0], "VDI_TOO_SMALL");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_empty_probe_put_touches_nothing_and_transfer_encoding_is_refused() {
    let host = Host::start().await;
    let (target, target_uuid) = host.disk("replica", 0);
    host.write(&target, 0, MIB, 5).await;
    let before = host.hash(&target).await;
    let leaf = host.lab.sr().leaf_path(target_uuid).unwrap();
    let modified = std::fs::metadata(&leaf).unwrap().modified().unwrap();

    // Xen Orchestra's probe: no task, an empty body.
    let response = host
        .put(
            "/import_raw_vdi",
            &format!("vdi={target}&format=vhd"),
            Bytes::new(),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    body_of(response).await;
    assert_eq!(host.hash(&target).await, before);
    assert_eq!(
        std::fs::metadata(&leaf).unwrap().modified().unwrap(),
        modified
    );

    // curl with a chunked upload: xapi's bare 404, and the task fails.
    let file = host.dir.path().join("body");
    std::fs::write(&file, b"not even read").unwrap();
    let task = host.new_task().await;
    let output = Command::new("curl")
        .args([
            "-s",
            "-i",
            "-u",
            &format!("root:{PASSWORD}"),
            "-H",
            "Transfer-Encoding: chunked",
            "-T",
        ])
        .arg(&file)
        .arg(format!(
            "{}/import_raw_vdi?vdi={target}&format=vhd&task_id={task}",
            host.url()
        ))
        .output()
        .unwrap();
    let head = String::from_utf8_lossy(&output.stdout);
    assert!(head.starts_with("HTTP/1.0 404 Not Found\r\n"), "{head}");
    assert_eq!(
        error_info(&host.task(&task).await),
        vec![
            "INTERNAL_ERROR".to_owned(),
            "Cannot handle encoding: chunked".into()
        ]
    );
    assert_eq!(host.hash(&target).await, before);

    // No length at all: xapi's "no length field".
    let mut tcp = tokio::net::TcpStream::connect(host.server.local_addr())
        .await
        .unwrap();
    let request = format!(
        "PUT /import_raw_vdi?vdi={target}&format=vhd&session_id={} HTTP/1.1\r\n\
         Host: lab\r\nConnection: close\r\n\r\n",
        host.session()
    );
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    tcp.read_to_end(&mut answer).await.unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.starts_with("HTTP/1.1 500 Internal Error\r\n"),
        "{answer}"
    );
    assert!(
        answer.contains("Trying to import a VDI without a length field"),
        "{answer}"
    );

    // Nothing was left claimed: a real import goes through.
    let stream = body_of(
        host.get("/export_raw_vdi", &format!("vdi={target}&format=vhd"))
            .await,
    )
    .await;
    let response = host
        .put(
            "/import_raw_vdi",
            &format!("vdi={target}&format=vhd"),
            stream,
        )
        .await;
    let task = task_id(&response);
    body_of(response).await;
    assert_eq!(text(&host.task(&task).await, "status"), "success");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_import_into_a_vdi_being_imported_gets_vdi_in_use() {
    let host = Host::start().await;
    let (_, s2) = two_snapshots(&host).await;
    let stream = body_of(
        host.get("/export_raw_vdi", &format!("vdi={}&format=vhd", s2.1))
            .await,
    )
    .await;
    let (target, target_uuid) = host.disk("replica", 0);
    let before = host.hash(&target).await;

    // The first import: headers and half the body, then it stalls.
    let mut first = tokio::net::TcpStream::connect(host.server.local_addr())
        .await
        .unwrap();
    let head = format!(
        "PUT /import_raw_vdi?vdi={target_uuid}&format=vhd&session_id={} HTTP/1.1\r\n\
         Host: lab\r\nContent-Length: {}\r\n\r\n",
        host.session(),
        stream.len()
    );
    first.write_all(head.as_bytes()).await.unwrap();
    first.write_all(&stream[..stream.len() / 2]).await.unwrap();
    let mut answer = Vec::new();
    while !answer.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        first.read_exact(&mut byte).await.unwrap();
        answer.push(byte[0]);
    }
    assert!(answer.starts_with(b"HTTP/1.0 200 OK\r\n"));

    // The refusal comes before the body is read. curl stops sending and shows it; a client
    // that insists on sending first may see the connection close instead, so the task is
    // what tells.
    let file = host.dir.path().join("stream.vhd");
    std::fs::write(&file, &stream).unwrap();
    let task = host.new_task().await;
    let output = Command::new("curl")
        .args(["-s", "-i", "-u", &format!("root:{PASSWORD}"), "-T"])
        .arg(&file)
        .arg(format!(
            "{}/import_raw_vdi?vdi={target}&format=vhd&task_id={task}",
            host.url()
        ))
        .output()
        .unwrap();
    let page = String::from_utf8_lossy(&output.stdout);
    assert!(page.contains("HTTP/1.1 500 Internal Error\r\n"), "{page}");
    assert!(
        page.contains(&format!("VDI_IN_USE: [ {target}; import ]")),
        "{page}"
    );
    assert_eq!(
        error_info(&host.task(&task).await),
        vec!["VDI_IN_USE".to_owned(), target.clone(), "import".into()]
    );

    // The first client gives up: its import fails, and the VDI is freed, unchanged.
    drop(first);
    let deadline = Instant::now() + Duration::from_secs(10);
    while host.lab.sr().begin_import(target_uuid).is_err() {
        assert!(Instant::now() < deadline, "the VDI stayed in use");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(host.hash(&target).await, before);
    assert!(host.staging_files().is_empty());
    let response = host
        .put(
            "/import_raw_vdi",
            &format!("vdi={target}&format=vhd"),
            stream,
        )
        .await;
    let task = task_id(&response);
    body_of(response).await;
    assert_eq!(text(&host.task(&task).await, "status"), "success");
    assert_eq!(host.hash(&target).await, host.hash(&s2.0).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_export_ends_with_an_embedded_500_and_a_cancelled_task() {
    let host = Host::start().await;
    let (big, _) = host.disk("big", 0);
    let task = host.new_task().await;
    let response = host
        .get(
            "/export_raw_vdi",
            &format!("vdi={big}&format=raw&task_id={task}"),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body();
    let mut received = BytesMut::new();
    while received.len() < MIB as usize {
        let frame = body.frame().await.unwrap().unwrap();
        received.extend_from_slice(&frame.into_data().unwrap());
    }
    host.call("task.cancel", vec![task.as_str().into()]).await;
    while let Some(frame) = body.frame().await {
        received.extend_from_slice(&frame.unwrap().into_data().unwrap());
    }
    assert!(received.len() < 128 * MIB as usize);
    let tail = String::from_utf8_lossy(&received[received.len().saturating_sub(2048)..]);
    let at = tail
        .find("HTTP/1.1 500 Internal Error\r\n")
        .expect("an embedded 500");
    assert!(tail[at..].contains("TASK_CANCELLED"), "{}", &tail[at..]);
    let record = host.task(&task).await;
    assert_eq!(text(&record, "status"), "cancelled");
    assert_eq!(error_info(&record), vec!["TASK_CANCELLED".to_owned(), task]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_waits_out_its_grace_period_then_ends_the_transfers_in_flight() {
    let Host {
        dir: _dir,
        lab,
        server,
        client,
        report,
    } = Host::start().await;
    let big = &report.vms[2].disks[0].vdi.reference;
    let session = client.session_id().expose().to_owned();
    let request = Request::get(format!(
        "/export_raw_vdi?session_id={session}&vdi={big}&format=raw"
    ))
    .header(HOST, server.local_addr().to_string())
    .body(Empty::<Bytes>::new())
    .unwrap();
    let response = Endpoint::new(url_of(&server), &Trust::Insecure)
        .unwrap()
        .send(request)
        .await
        .unwrap();
    let task = task_id(&response);
    let mut body = response.into_body();
    body.frame().await.unwrap().unwrap();

    // The client stalls; the server stops after its grace period all the same.
    let started = Instant::now();
    server.shutdown(Duration::from_millis(300)).await;
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(5),
        "{took:?}"
    );
    while let Some(Ok(_)) = body.frame().await {}
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let call = vhdsync::xapi::rpc::Call::new(
            "task.get_status",
            vec![session.as_str().into(), task.as_str().into()],
        );
        let status = lab.handle(&call).unwrap();
        if status.as_str() == Some("failure") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the export's task is still {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rpc_endpoints_answer_as_xapi_does() {
    let host = Host::start().await;
    let curl = |path: &str, body: &str| {
        let output = Command::new("curl")
            .args(["-s", "-i", "--data-binary", body])
            .arg(format!("{}{path}", host.url()))
            .output()
            .unwrap();
        String::from_utf8(output.stdout).unwrap()
    };
    let login = r#"{"jsonrpc":"2.0","method":"session.login_with_password","params":["root","lab"],"id":7}"#;
    let answer = curl("/jsonrpc", login);
    assert!(
        answer.contains("\r\ncontent-type: application/json\r\n"),
        "{answer}"
    );
    assert!(
        answer.contains(r#""result":"OpaqueRef:"#) && answer.ends_with(r#","id":7}"#),
        "{answer}"
    );
    let v1 = curl(
        "/jsonrpc",
        r#"{"method":"session.login_with_password","params":["root","x"],"id":"a"}"#,
    );
    assert!(
        v1.contains(r#"{"result":null,"error":["SESSION_AUTHENTICATION_FAILED","root","#),
        "{v1}"
    );

    let list = "<?xml version=\"1.0\"?><methodCall><methodName>system.listMethods</methodName><params/></methodCall>";
    let answer = curl("/RPC2", list);
    assert!(
        answer.contains("\r\ncontent-type: text/xml\r\n"),
        "{answer}"
    );
    assert!(
        answer.contains("<methodResponse><params><param><value><array>"),
        "bare: {answer}"
    );
    assert!(answer.contains("<value>VM.get_all_records</value>"));
    let login = "<?xml version=\"1.0\"?><methodCall><methodName>session.login_with_password</methodName>\
        <params><param><value>root</value></param><param><value>lab</value></param></params></methodCall>";
    for path in ["/RPC2", "/", "/xmlrpc"] {
        let answer = curl(path, login);
        assert!(
            answer.contains("<member><name>Status</name><value>Success</value></member>"),
            "{path}: {answer}"
        );
    }
    assert!(curl("/jsonrpc", "{not json").starts_with("HTTP/1.1 500 Internal Error\r\n"));

    // Requests are bounded.
    let big = host.dir.path().join("big.json");
    std::fs::write(&big, vec![b' '; 17 << 20]).unwrap();
    let output = Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--data-binary",
        ])
        .arg(format!("@{}", big.display()))
        .arg(format!("{}/jsonrpc", host.url()))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&output.stdout), "413");
}

/// A `vhdsync` child process, killed if the test fails before it is waited for.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn vhdsync(args: &[&str]) -> std::process::Output {
    Command::new(BIN).args(args).output().unwrap()
}

/// `vhdsync lab serve` in `dir`: the child, and the lines it printed first.
fn serve(dir: &Path, extra: &[&str], lines: usize) -> (Running, Vec<String>) {
    let mut child = Command::new(BIN)
        .args(["lab", "serve", "--dir"])
        .arg(dir)
        .args(extra)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let printed = (0..lines)
        .map(|_| {
            let mut line = String::new();
            out.read_line(&mut line).unwrap();
            line.trim_end().to_owned()
        })
        .collect();
    // Keep the pipe open; the server prints nothing more.
    std::mem::forget(out);
    (Running(child), printed)
}

/// Send SIGTERM and wait for a clean exit.
fn terminate(mut running: Running) {
    let pid = running.0.id() as i32;
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(status) = running.0.try_wait().unwrap() {
            assert!(status.success(), "{status}");
            return;
        }
        assert!(
            Instant::now() < deadline,
            "lab serve did not stop on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn lab_serve_prints_its_url_first_serves_the_cli_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let lab_dir = dir.path().join("lab");
    let lab_dir_text = lab_dir.to_str().unwrap();
    let init = vhdsync(&[
        "lab",
        "init",
        "--dir",
        lab_dir_text,
        "--vm",
        "web01:8M,4M",
        "--json",
    ]);
    assert!(
        init.status.success(),
        "{}",
        String::from_utf8_lossy(&init.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&init.stdout).unwrap();
    let vdi = report["vms"][0]["disks"][0]["vdi"]["uuid"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(report["vms"][0]["disks"][1]["virtual_size"], 4 * MIB);
    let again = vhdsync(&["lab", "init", "--dir", lab_dir_text]);
    assert_eq!(again.status.code(), Some(2));

    let (running, lines) = serve(&lab_dir, &[], 1);
    let url = &lines[0];
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");
    let with_credentials = url.replacen("http://", &format!("http://root:{PASSWORD}@"), 1);
    let write = vhdsync(&[
        "lab",
        "write",
        "--url",
        &with_credentials,
        "--vdi",
        &vdi,
        "--offset",
        "1M",
        "--random",
        "3M",
        "--seed",
        "42",
    ]);
    assert!(
        write.status.success(),
        "{}",
        String::from_utf8_lossy(&write.stderr)
    );
    let hash = vhdsync(&["lab", "hash", "--url", &with_credentials, "--vdi", &vdi]);
    assert!(
        hash.status.success(),
        "{}",
        String::from_utf8_lossy(&hash.stderr)
    );
    let digest = String::from_utf8(hash.stdout).unwrap().trim().to_owned();
    let zeros = vhdsync(&[
        "lab",
        "write",
        "--url",
        &with_credentials,
        "--vdi",
        &vdi,
        "--offset",
        "1M",
        "--zero",
        "3M",
    ]);
    assert!(zeros.status.success());
    let after = vhdsync(&["lab", "hash", "--url", &with_credentials, "--vdi", &vdi]);
    let after = String::from_utf8(after.stdout).unwrap().trim().to_owned();
    assert_ne!(after, digest);
    // Zeros over zeros: the hash of an 8 MiB disk of zeros.
    let empty = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(vec![0u8; 8 << 20]))
    };
    assert_eq!(after, empty);
    // No user in the URL is a usage error; a wrong password is a failure.
    let bad = vhdsync(&["lab", "hash", "--url", url, "--vdi", &vdi]);
    assert_eq!(bad.status.code(), Some(2));
    let wrong = url.replacen("http://", "http://root:wrong@", 1);
    let bad = vhdsync(&["lab", "hash", "--url", &wrong, "--vdi", &vdi]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("SESSION_AUTHENTICATION_FAILED"));
    terminate(running);

    // A restart keeps everything; the data written before is still there.
    let (running, lines) = serve(&lab_dir, &["--listen", "127.0.0.1:0"], 1);
    let with_credentials = lines[0].replacen("http://", &format!("http://root:{PASSWORD}@"), 1);
    let again = vhdsync(&["lab", "hash", "--url", &with_credentials, "--vdi", &vdi]);
    assert_eq!(String::from_utf8(again.stdout).unwrap().trim(), after);
    terminate(running);
}

#[test]
fn lab_serve_tls_prints_a_fingerprint_that_pinned_clients_accept() {
    let dir = tempfile::tempdir().unwrap();
    let lab_dir = dir.path().join("lab");
    let init = vhdsync(&[
        "lab",
        "init",
        "--dir",
        lab_dir.to_str().unwrap(),
        "--vm",
        "vm:2M",
    ]);
    assert!(init.status.success());

    let (running, lines) = serve(&lab_dir, &["--tls"], 2);
    let url = lines[0].clone();
    assert!(url.starts_with("https://127.0.0.1:"), "{url}");
    let fingerprint = lines[1].strip_prefix("fingerprint ").unwrap().to_owned();
    let pinned = Fingerprint::parse(&fingerprint).unwrap();
    assert_eq!(pinned.to_string(), fingerprint);

    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let mut host = HostUrl::parse(&url).unwrap();
        host.username = Some("root".into());
        host.password = Some(vhdsync::xapi::Secret::new(PASSWORD));
        let client = XapiClient::connect(host.clone(), &Trust::Pinned(pinned), None)
            .await
            .unwrap();
        let pools = client.call("pool.get_all", vec![]).await.unwrap();
        assert_eq!(pools.as_array().unwrap().len(), 1);
        assert_eq!(client.endpoint().observed_fingerprint(), Some(pinned));
        let wrong = Fingerprint([0; 32]);
        let err = XapiClient::connect(host, &Trust::Pinned(wrong), None)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("fingerprint mismatch"), "{err}");
    });

    // curl sees the same certificate.
    let output = Command::new("curl")
        .args([
            "-s",
            "-k",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--data-binary",
        ])
        .arg("<methodCall><methodName>system.listMethods</methodName></methodCall>")
        .arg(format!("{url}/RPC2"))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&output.stdout), "200");
    terminate(running);

    // The certificate is kept: a restart presents the same fingerprint.
    let (running, lines) = serve(&lab_dir, &["--tls"], 2);
    assert_eq!(lines[1], format!("fingerprint {fingerprint}"));
    let mut key = String::new();
    std::fs::File::open(lab_dir.join("tls/key.pem"))
        .unwrap()
        .read_to_string(&mut key)
        .unwrap();
    assert!(key.contains("PRIVATE KEY"));
    terminate(running);
}
