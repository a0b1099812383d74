//! Changed block tracking on the lab host, through vhdsync's own XAPI client over HTTP:
//! `VDI.enable_cbt` / `disable_cbt`, `cbt_enabled` on records, `VDI.list_changed_blocks`
//! against a model of the 64 KiB blocks the guest wrote between two snapshots (scattered 4 KiB
//! writes, several snapshots, a destroyed middle snapshot, a `data_destroy`ed `from`),
//! `VDI.data_destroy` and what is left of a VDI after it, xapi's errors, persistence across a
//! restart, and a property test of random write and snapshot histories.

mod common;

use common::lab_serve::LabHost;
use std::collections::BTreeSet;
use std::time::Duration;

use base64::Engine as _;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use vhdsync::lab::InitConfig;
use vhdsync::xapi::rpc::{Value, XapiFault};

const MIB: u64 = 1 << 20;
const CBT_BLOCK: u64 = 64 << 10;
/// The disk of the VM the tests use.
const DISK: u64 = 16 * MIB;

type Host = LabHost;

/// A host with one VM and its one 16 MiB disk.
async fn host() -> Host {
    LabHost::start(&["vm:16M"], &InitConfig::default(), false).await
}

impl LabHost {
    /// The VM's disk.
    fn vdi(&self) -> String {
        self.report.vms[0].disks[0].vdi.reference.clone()
    }

    fn vm(&self) -> String {
        self.report.vms[0].ids.reference.clone()
    }

    /// A guest write of `len` bytes at `offset`.
    async fn write(&self, vdi: &str, offset: u64, len: u64) {
        let params = vec![
            vdi.into(),
            Value::Int(offset as i64),
            Value::Int(len as i64),
            Value::Int((offset ^ len) as i64),
        ];
        self.ok("lab.write", params).await;
    }

    async fn snapshot(&self, vdi: &str) -> String {
        let empty = Value::Struct(Default::default());
        self.text("VDI.snapshot", vec![vdi.into(), empty]).await
    }

    /// The blocks `VDI.list_changed_blocks` says changed, checking the bitmap's length.
    async fn changed(&self, from: &str, to: &str) -> BTreeSet<u64> {
        let encoded = self
            .text("VDI.list_changed_blocks", vec![from.into(), to.into()])
            .await;
        decode(&encoded, DISK)
    }

    async fn flag(&self, vdi: &str, field: &str) -> bool {
        let value = self.ok(&format!("VDI.get_{field}"), vec![vdi.into()]).await;
        value
            .as_bool()
            .unwrap_or_else(|| panic!("{field}: {value:?}"))
    }
}

/// The blocks set in a `list_changed_blocks` answer: one bit per 64 KiB of a disk of `size`
/// bytes, most significant bit first.
fn decode(encoded: &str, size: u64) -> BTreeSet<u64> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .unwrap();
    assert_eq!(
        bytes.len() as u64,
        size / CBT_BLOCK / 8,
        "one bit per 64 KiB"
    );
    (0..size / CBT_BLOCK)
        .filter(|k| bytes[(k / 8) as usize] & (0x80 >> (k % 8)) != 0)
        .collect()
}

/// The 64 KiB blocks a write touches.
fn touched(offset: u64, len: u64) -> BTreeSet<u64> {
    (offset / CBT_BLOCK..=(offset + len - 1) / CBT_BLOCK).collect()
}

fn code(fault: &XapiFault) -> &str {
    &fault.code
}

/// Scattered 4 KiB writes: blocks 3, 17 (twice), 100..=101 (one write across the boundary)
/// and 255 of the 16 MiB disk.
const FIRST_WRITES: [(u64, u64); 5] = [
    (3 * CBT_BLOCK + 8192, 4096),
    (17 * CBT_BLOCK, 4096),
    (17 * CBT_BLOCK + 60 * 1024, 4096),
    (101 * CBT_BLOCK - 2048, 4096),
    (255 * CBT_BLOCK + 61440, 4096),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changed_blocks_follow_the_guest_writes_across_snapshots_and_data_destroy() {
    let host = host().await;
    let vdi = host.vdi();
    assert!(!host.flag(&vdi, "cbt_enabled").await);
    // Writes before tracking starts are in no log.
    host.write(&vdi, 0, 4096).await;
    host.ok("VDI.enable_cbt", vec![vdi.as_str().into()]).await;
    host.ok("VDI.enable_cbt", vec![vdi.as_str().into()]).await;
    assert!(host.flag(&vdi, "cbt_enabled").await);
    let allowed = host
        .ok("VDI.get_allowed_operations", vec![vdi.as_str().into()])
        .await;
    assert!(
        format!("{allowed:?}").contains("list_changed_blocks"),
        "{allowed:?}"
    );

    for (offset, len) in FIRST_WRITES {
        host.write(&vdi, offset, len).await;
    }
    let s1 = host.snapshot(&vdi).await;
    assert!(
        host.flag(&s1, "cbt_enabled").await,
        "a snapshot carries the log"
    );
    let second: Vec<(u64, u64)> = vec![
        (40 * CBT_BLOCK, 4096),
        (3 * CBT_BLOCK, 512),
        (200 * CBT_BLOCK + 4096, 8192),
    ];
    for &(offset, len) in &second {
        host.write(&vdi, offset, len).await;
    }
    let s2 = host.snapshot(&vdi).await;
    let third = [(7 * CBT_BLOCK, 4096), (40 * CBT_BLOCK + 4096, 4096)];
    for (offset, len) in third {
        host.write(&vdi, offset, len).await;
    }
    let s3 = host.snapshot(&vdi).await;
    host.write(&vdi, 250 * CBT_BLOCK, 4096).await;

    let blocks = |writes: &[(u64, u64)]| -> BTreeSet<u64> {
        writes.iter().flat_map(|&(o, l)| touched(o, l)).collect()
    };
    let between_1_2 = blocks(&second);
    let between_2_3 = blocks(&third);
    assert_eq!(host.changed(&s1, &s2).await, between_1_2);
    assert_eq!(host.changed(&s2, &s3).await, between_2_3);
    let between_1_3: BTreeSet<u64> = between_1_2.union(&between_2_3).copied().collect();
    assert_eq!(host.changed(&s1, &s3).await, between_1_3);
    assert_eq!(
        host.changed(&s3, &vdi).await,
        touched(250 * CBT_BLOCK, 4096)
    );

    // As Xen Orchestra calls it: asynchronously, the bitmap as the task's result.
    let task = host
        .text(
            "Async.VDI.list_changed_blocks",
            vec![s1.as_str().into(), s2.as_str().into()],
        )
        .await;
    let result = loop {
        let status = host
            .text("task.get_status", vec![task.as_str().into()])
            .await;
        if status != "pending" {
            assert_eq!(status, "success");
            break host
                .text("task.get_result", vec![task.as_str().into()])
                .await;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let inner = result
        .trim()
        .trim_start_matches("<value>")
        .trim_end_matches("</value>");
    assert_eq!(decode(inner, DISK), between_1_2);

    // s1's data goes; it still serves as `from`.
    let s1_leaf = host.lab.sr().leaf_path(s1_uuid(&host, &s1).await).unwrap();
    host.ok("VDI.data_destroy", vec![s1.as_str().into()]).await;
    host.ok("VDI.data_destroy", vec![s1.as_str().into()]).await;
    assert!(!s1_leaf.exists(), "the snapshot's own VHD file is gone");
    assert_eq!(
        host.text("VDI.get_type", vec![s1.as_str().into()]).await,
        "cbt_metadata"
    );
    assert!(host.flag(&s1, "cbt_enabled").await);
    assert!(!host.flag(&s1, "missing").await);
    assert_eq!(host.changed(&s1, &s3).await, between_1_3);
    // What is left cannot be read, cloned, attached or served.
    for (method, params) in [
        (
            "VDI.clone",
            vec![s1.as_str().into(), Value::Struct(Default::default())],
        ),
        (
            "VDI.snapshot",
            vec![s1.as_str().into(), Value::Struct(Default::default())],
        ),
        ("VDI.get_nbd_info", vec![s1.as_str().into()]),
        ("lab.hash", vec![s1.as_str().into()]),
    ] {
        let fault = host.fault(method, params).await;
        assert_eq!(fault.code, "VDI_INCOMPATIBLE_TYPE", "{method}: {fault}");
        assert_eq!(fault.params, [s1.as_str(), "cbt_metadata"], "{method}");
    }
    let vbd = Value::Struct(
        [
            ("VM", Value::from(host.vm())),
            ("VDI", Value::from(s1.as_str())),
            ("userdevice", Value::from("7")),
            ("mode", Value::from("RO")),
            ("type", Value::from("Disk")),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect(),
    );
    assert_eq!(
        code(&host.fault("VBD.create", vec![vbd]).await),
        "VDI_INCOMPATIBLE_TYPE"
    );
    let export = format!(
        "{}/export_raw_vdi?vdi={s1}&format=raw&session_id={}",
        host.server.base_url(),
        host.client.session_id().expose()
    );
    let response = http_get(&export).await;
    assert!(
        response.contains("VDI_INCOMPATIBLE_TYPE") && !response.starts_with("HTTP/1.1 200"),
        "{response}"
    );
    // The live VDI keeps its content whatever happened to its snapshots' data.
    let before = host.text("lab.hash", vec![vdi.as_str().into()]).await;
    host.ok("VDI.destroy", vec![s2.as_str().into()]).await;
    assert_eq!(
        host.changed(&s1, &s3).await,
        between_1_3,
        "s2's blocks went to s3"
    );
    host.ok("VDI.destroy", vec![s1.as_str().into()]).await;
    assert_eq!(
        host.text("lab.hash", vec![vdi.as_str().into()]).await,
        before
    );
}

async fn s1_uuid(host: &Host, vdi: &str) -> uuid::Uuid {
    host.text("VDI.get_uuid", vec![vdi.into()])
        .await
        .parse()
        .unwrap()
}

/// A raw GET, for a data-plane refusal: the status line and body.
async fn http_get(url: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url.strip_prefix("http://").unwrap();
    let (authority, path) = rest.split_once('/').unwrap();
    let mut tcp = tokio::net::TcpStream::connect(authority).await.unwrap();
    let request = format!("GET /{path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n");
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut response))
        .await
        .unwrap()
        .unwrap();
    String::from_utf8_lossy(&response).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xapi_errors_for_snapshots_strangers_resets_and_attached_disks() {
    let host = host().await;
    let vdi = host.vdi();
    let untracked_snapshot = host.snapshot(&vdi).await;
    // data_destroy needs a tracked snapshot.
    let fault = host
        .fault("VDI.data_destroy", vec![untracked_snapshot.as_str().into()])
        .await;
    assert_eq!(
        (code(&fault), fault.params.as_slice()),
        ("VDI_NO_CBT_METADATA", &[untracked_snapshot.clone()][..])
    );
    let fault = host
        .fault("VDI.data_destroy", vec![vdi.as_str().into()])
        .await;
    assert_eq!(code(&fault), "OPERATION_NOT_ALLOWED");
    assert_eq!(fault.params, [format!("VDI is not a snapshot: {vdi}")]);
    // Snapshots cannot be tracked, nor stop being tracked.
    for method in ["VDI.enable_cbt", "VDI.disable_cbt"] {
        let fault = host
            .fault(method, vec![untracked_snapshot.as_str().into()])
            .await;
        assert_eq!(code(&fault), "OPERATION_NOT_ALLOWED", "{method}");
        assert_eq!(
            fault.params,
            [format!("VDI is a snapshot: {untracked_snapshot}")]
        );
    }
    // CBT off: SM's error 460.
    let fault = host
        .fault(
            "VDI.list_changed_blocks",
            vec![untracked_snapshot.as_str().into(), vdi.as_str().into()],
        )
        .await;
    assert_eq!(code(&fault), "SR_BACKEND_FAILURE_460");
    assert!(
        fault.params[1].contains("Source and target VDI are unrelated"),
        "{fault}"
    );

    host.ok("VDI.enable_cbt", vec![vdi.as_str().into()]).await;
    let s1 = host.snapshot(&vdi).await;
    let fault = host
        .fault(
            "VDI.list_changed_blocks",
            vec![s1.as_str().into(), s1.as_str().into()],
        )
        .await;
    assert_eq!(code(&fault), "SR_BACKEND_FAILURE_460");
    assert!(fault.params[1].contains("same"), "{fault}");
    // Backwards in a chain, or across two chains: unrelated.
    let other = host
        .text(
            "VDI.create",
            vec![Value::Struct(
                [
                    ("SR", Value::from(host.report.sr.reference.as_str())),
                    ("virtual_size", Value::Int(DISK as i64)),
                    ("type", Value::from("user")),
                ]
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v))
                .collect(),
            )],
        )
        .await;
    host.ok("VDI.enable_cbt", vec![other.as_str().into()]).await;
    let other_snapshot = host.snapshot(&other).await;
    for (from, to) in [(&vdi, &s1), (&other_snapshot, &vdi), (&s1, &other)] {
        let fault = host
            .fault(
                "VDI.list_changed_blocks",
                vec![from.as_str().into(), to.as_str().into()],
            )
            .await;
        assert_eq!(code(&fault), "SR_BACKEND_FAILURE_460");
        assert_eq!(
            fault.params,
            [
                "",
                "Failed to calculate changed blocks for given VDIs. [opterr=Source and target VDI are unrelated]",
                ""
            ]
        );
    }
    // A reset (disable, then enable) starts a new chain: the old snapshots cannot reach it.
    host.ok("VDI.disable_cbt", vec![vdi.as_str().into()]).await;
    assert!(!host.flag(&vdi, "cbt_enabled").await);
    assert!(host.flag(&s1, "cbt_enabled").await);
    host.ok("VDI.disable_cbt", vec![vdi.as_str().into()]).await;
    host.ok("VDI.enable_cbt", vec![vdi.as_str().into()]).await;
    host.write(&vdi, 0, 4096).await;
    let s2 = host.snapshot(&vdi).await;
    let fault = host
        .fault(
            "VDI.list_changed_blocks",
            vec![s1.as_str().into(), s2.as_str().into()],
        )
        .await;
    assert_eq!(code(&fault), "SR_BACKEND_FAILURE_460");
    assert_eq!(host.changed(&s2, &vdi).await, BTreeSet::new());

    // vdi_to plugged into a running VM.
    let vm = host.vm();
    host.ok(
        "VM.start",
        vec![vm.as_str().into(), false.into(), false.into()],
    )
    .await;
    let fault = host
        .fault(
            "VDI.list_changed_blocks",
            vec![s2.as_str().into(), vdi.as_str().into()],
        )
        .await;
    assert_eq!(code(&fault), "VDI_IN_USE");
    assert_eq!(fault.params, [vdi.as_str(), "list_changed_blocks"]);
    // Snapshots of the running VM: their VDIs may be compared, and lose their data once
    // their VM is gone.
    let snapshot_vm = host
        .text("VM.snapshot", vec![vm.as_str().into(), "backup".into()])
        .await;
    let vbds = host
        .ok("VM.get_VBDs", vec![snapshot_vm.as_str().into()])
        .await;
    let vbd = vbds.as_array().unwrap()[0].as_str().unwrap().to_owned();
    let s3 = host.text("VBD.get_VDI", vec![vbd.as_str().into()]).await;
    assert_eq!(host.changed(&s2, &s3).await, BTreeSet::new());
    let fault = host
        .fault("VDI.data_destroy", vec![s3.as_str().into()])
        .await;
    assert_eq!(code(&fault), "VDI_IN_USE");
    assert_eq!(fault.params, [s3.as_str(), "data_destroy"]);
    host.ok("VM.destroy", vec![snapshot_vm.as_str().into()])
        .await;
    host.ok("VDI.data_destroy", vec![s3.as_str().into()]).await;
    host.ok("VM.hard_shutdown", vec![vm.as_str().into()]).await;
    host.write(&vdi, 5 * CBT_BLOCK, 4096).await;
    assert_eq!(host.changed(&s3, &vdi).await, BTreeSet::from([5]));
    // A VDI of type cbt_metadata cannot be made.
    let fault = host
        .fault(
            "VDI.create",
            vec![Value::Struct(
                [
                    ("SR", Value::from(host.report.sr.reference.as_str())),
                    ("virtual_size", Value::Int(DISK as i64)),
                    ("type", Value::from("cbt_metadata")),
                ]
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v))
                .collect(),
            )],
        )
        .await;
    assert_eq!(code(&fault), "VDI_INCOMPATIBLE_TYPE");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn change_logs_and_what_data_destroy_left_survive_a_restart() {
    let host = host().await;
    let vdi = host.vdi();
    host.ok("VDI.enable_cbt", vec![vdi.as_str().into()]).await;
    let s1 = host.snapshot(&vdi).await;
    for (offset, len) in FIRST_WRITES {
        host.write(&vdi, offset, len).await;
    }
    let s2 = host.snapshot(&vdi).await;
    host.ok("VDI.data_destroy", vec![s1.as_str().into()]).await;
    host.write(&vdi, 9 * CBT_BLOCK, 4096).await;
    let expected: BTreeSet<u64> = FIRST_WRITES
        .iter()
        .flat_map(|&(o, l)| touched(o, l))
        .collect();

    let host = host.restart().await;
    assert!(host.flag(&vdi, "cbt_enabled").await);
    assert_eq!(
        host.text("VDI.get_type", vec![s1.as_str().into()]).await,
        "cbt_metadata"
    );
    assert!(
        !host.flag(&s1, "missing").await,
        "a scan keeps what data_destroy left"
    );
    assert_eq!(host.changed(&s1, &s2).await, expected);
    assert_eq!(host.changed(&s2, &vdi).await, BTreeSet::from([9]));
    host.write(&vdi, 10 * CBT_BLOCK, 4096).await;
    let s3 = host.snapshot(&vdi).await;
    assert_eq!(host.changed(&s2, &s3).await, BTreeSet::from([9, 10]));
    let physical = host
        .ok("VDI.get_physical_utilisation", vec![s1.as_str().into()])
        .await;
    assert!(
        physical.as_i64().unwrap() < 4096,
        "only the log is left: {physical:?}"
    );
}

/// One step of a guest's history.
#[derive(Debug, Clone)]
enum Step {
    /// A write of `len` bytes at `offset`.
    Write {
        offset: u64,
        len: u64,
    },
    Snapshot,
    /// Destroy the n-th kept snapshot (modulo their number).
    Destroy(usize),
    /// Destroy the data of the n-th kept snapshot.
    DataDestroy(usize),
}

fn history() -> impl Strategy<Value = Vec<Step>> {
    let step = prop_oneof![
        6 => (0..DISK / 4096, 1..=3u64).prop_map(|(page, pages)| {
            let offset = page * 4096;
            Step::Write { offset, len: (pages * 4096).min(DISK - offset) }
        }),
        2 => Just(Step::Snapshot),
        1 => any::<usize>().prop_map(Step::Destroy),
        1 => any::<usize>().prop_map(Step::DataDestroy),
    ];
    proptest::collection::vec(step, 1..24)
}

/// Random histories of writes, snapshots, destroys and data destroys on a tracked VDI: for
/// every two points kept (snapshots in order, then the VDI itself), `list_changed_blocks`
/// answers exactly the 64 KiB blocks written between them.
#[test]
fn changed_blocks_match_a_model_of_random_histories() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let host = runtime.block_on(host());
    let mut runner = TestRunner::new(Config {
        cases: 12,
        failure_persistence: None,
        ..Config::default()
    });
    runner
        .run(&history(), |steps| {
            runtime.block_on(check_history(&host, steps));
            Ok(())
        })
        .unwrap();
}

async fn check_history(host: &Host, steps: Vec<Step>) {
    let args = Value::Struct(
        [
            ("SR", Value::from(host.report.sr.reference.as_str())),
            ("virtual_size", Value::Int(DISK as i64)),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect(),
    );
    let vdi = host.text("VDI.create", vec![args]).await;
    host.ok("VDI.enable_cbt", vec![vdi.as_str().into()]).await;
    // The model: each write's blocks with its time, and the snapshots kept with theirs.
    let mut writes: Vec<(usize, BTreeSet<u64>)> = Vec::new();
    let mut kept: Vec<(usize, String)> = Vec::new();
    for (time, step) in steps.into_iter().enumerate() {
        match step {
            Step::Write { offset, len } => {
                host.write(&vdi, offset, len).await;
                writes.push((time, touched(offset, len)));
            }
            Step::Snapshot => kept.push((time, host.snapshot(&vdi).await)),
            Step::Destroy(n) if !kept.is_empty() => {
                let (_, gone) = kept.remove(n % kept.len());
                host.ok("VDI.destroy", vec![gone.into()]).await;
            }
            Step::DataDestroy(n) if !kept.is_empty() => {
                let (_, snapshot) = &kept[n % kept.len()];
                host.ok("VDI.data_destroy", vec![snapshot.as_str().into()])
                    .await;
            }
            Step::Destroy(_) | Step::DataDestroy(_) => {}
        }
    }
    let mut points = kept.clone();
    points.push((usize::MAX, vdi.clone()));
    for (i, (from_time, from)) in points.iter().enumerate() {
        for (to_time, to) in &points[i + 1..] {
            let expected: BTreeSet<u64> = writes
                .iter()
                .filter(|(t, _)| t > from_time && t < to_time)
                .flat_map(|(_, blocks)| blocks.iter().copied())
                .collect();
            assert_eq!(host.changed(from, to).await, expected, "{from} -> {to}");
        }
    }
    for (_, snapshot) in kept {
        host.ok("VDI.destroy", vec![snapshot.into()]).await;
    }
    host.ok("VDI.destroy", vec![vdi.into()]).await;
}
