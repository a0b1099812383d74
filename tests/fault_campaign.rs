//! The fault campaign (issue 8), for the current replica layout: one *live replica* on the
//! target, updated in place by each cycle (or rebuilt from clones of its newest snapshot's
//! disks), plus one *target snapshot* of it per successful cycle, the restore points.
//!
//! With a fixed seed it stops cycles in three ways, each followed by the checks below and a
//! recovery run:
//!
//! - **Faults.** RPC errors and data-plane faults in every phase (snapshot, replica creation,
//!   export, import, commit, retention), every fault kind of [`pick_fault`] in turn with
//!   random parameters, on in-place runs and on runs building a new live replica.
//! - **Crashes.** An in-process cycle dropped where it stands, as a killed process, once it
//!   has made a given number of calls: after each write of the source snapshot's tagging and
//!   of the commit's steps around the target snapshot, and after random writes elsewhere,
//!   learnt from a clean in-place run's calls. An `rpc_error` strikes the first calls of its
//!   method, so only a crash stops the commit between any two of its calls.
//! - **Kills.** `kill -9` of a running `vhdsync replicate` at random moments of its transfer.
//!
//! The invariants, checked by content digest and raw metadata:
//!
//! - **Restore points are immutable.** A target snapshot *looks valid* when it carries the
//!   job's keys, not our importing key, and not XO's epoch datetime. Once seen valid with
//!   some content it keeps exactly that content and those markers until retention removes
//!   it; the newest one never vanishes. Otherwise it counts as *corrupted*.
//! - **Nothing broken looks valid.** A target snapshot that becomes valid holds exactly the
//!   guest content of its cycle's source snapshot. The live replica *looks valid* when its
//!   start is blocked with the committed text, it has no importing key nor epoch datetime,
//!   and its name is not `[Importing…]`; it then holds exactly the content of the newest
//!   valid target snapshot (the commit makes it valid only after that snapshot). Either one
//!   looking valid with other content counts as *falsely valid*.
//! - **What does not look valid is interrupted.** A stopped run may leave such target
//!   objects; they are counted, and the recovery run removes them.
//! - **Recovery.** The next run without a fault succeeds as a delta (the base always survives
//!   these faults) and leaves no interrupted object, no VDI on either host that no VM uses
//!   (snapshot VDIs are used by their snapshot VMs), exactly `min(retention, successful
//!   cycles)` target snapshots, exactly one live replica, free of the job's keys (so no
//!   classic replica VM) and the VM the newest snapshot is a snapshot of, and on the source
//!   the base snapshot alone. Its report names that live replica and that snapshot.
//!
//! The model is independent of the engine: a restore point's expected digests are the source
//! disks' digests taken just before its cycle, and "looks valid" is judged from the raw
//! metadata, not by the engine's classification.
//!
//! It runs twice (issue 20): over the export path, and over CBT + NBD with
//! `purge_snapshot_data` and two source snapshots kept, where the faults are those of that
//! path (dropped and stalled NBD connections, failures of `VDI.list_changed_blocks` and
//! `VDI.get_nbd_info` and a reset change log, each of which must fall back to the export path
//! with a note, failed purges, which must be notes), the crashes also strike between every
//! write of the purge, and the recovery runs must go over NBD again. There the source keeps
//! the base with its data and the previous snapshot purged, and every VDI no VM uses is a
//! `cbt_metadata` one.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Duration;

mod common;

use common::lab_pair::{Host, url};
use tempfile::TempDir;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::Layer;
use tracing_subscriber::layer::{Context, SubscriberExt};
use vhdsync::replicate::clock::SystemClock;
use vhdsync::replicate::keys;
use vhdsync::replicate::run::{CycleError, CycleReport, CycleSettings, Phase, replicate_vm};
use vhdsync::replicate::transport::TransportSettings;
use vhdsync::xapi::HostUrl;
use vhdsync::xapi::client::XapiClient;
use vhdsync::xapi::rpc::Value;
use vhdsync::xapi::tls::Trust;
use vhdsync::xapi::transfer::TransferOptions;

const MIB: u64 = 1 << 20;
const BIN: &str = env!("CARGO_BIN_EXE_vhdsync");
const SEED: u64 = 0x5eed_0008;
/// Fault rounds: every kind of [`pick_fault`] once.
const RPC_FAULTS: usize = FAULT_KINDS;
/// Crashes after random writes of a run, besides those after each write of the stretches
/// where what a run leaves changes meaning (see [`crash_points`]).
const SPARSE_CRASHES: usize = 6;
const KILLS: usize = 8;
/// Kills over CBT + NBD: fewer, as the export path's campaign already covers the commit.
const NBD_KILLS: usize = 4;
const DISKS: [u64; 2] = [4 * MIB, 4 * MIB];
const RETENTION: u32 = 2;
const JOB_ID: &str = "7d3c1f0e-8a5b-4c1d-9e2f-0a1b2c3d4e5f";
const SCHEDULE_ID: &str = "1e2d3c4b-5a69-4788-96a5-b4c3d2e1f0a9";
/// An export of the target's live disk against its snapshot, to compare them, reads the
/// VHD's head alone: footer and header are its first 1536 bytes, so a cut within the first
/// 1024 always strikes.
const COMPARE_HEAD: u64 = 1024;

/// userdevice -> content digest.
type Digests = BTreeMap<String, String>;

/// RPC calls in the order sent: (host, method).
type Calls = Vec<(String, String)>;

/// splitmix64: a small deterministic generator, so the campaign is the same on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `range` (half-open).
    fn within(&mut self, range: std::ops::Range<u64>) -> u64 {
        range.start + self.next() % (range.end - range.start)
    }
}

fn int(n: u64) -> Value {
    Value::Int(n as i64)
}

/// Where a fault is meant to strike.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Source,
    Target,
}

/// The path a campaign's disks take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flavour {
    /// `GET /export_raw_vdi` into `PUT /import_raw_vdi`, one source snapshot kept.
    Export,
    /// `cbt = true`, `transport = "auto"` on a host offering `insecure_nbd`,
    /// `purge_snapshot_data = true`, two source snapshots kept.
    CbtNbd,
}

/// What a faulted cycle must do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// Fail in the fault's phase.
    Fails,
    /// Succeed, with a disk sent over the export path and a note containing this text.
    FallsBack(&'static str),
    /// Succeed over NBD, with a note containing this text.
    Noted(&'static str),
}

/// One randomised fault: where it goes, its spec, and the cycle phase it must fail in.
struct Fault {
    side: Side,
    spec: Vec<(&'static str, Value)>,
    phase: Phase,
    label: String,
    expect: Expect,
    /// CBT is disabled on the source VM's first disk before the run (`cbt = true` enables
    /// it again before the snapshot): the change log between base and new snapshot is reset.
    reset_cbt: bool,
    /// A stall the engine may ride out: an import stall shorter than the task timeout, once
    /// the rest of the stream sits in buffers, delays the import but need not fail it.
    may_be_absorbed: bool,
    /// The fault is on the path of a run that builds a new live replica: a failed in-place
    /// run goes first, whose rollback destroys the live replica, so that the faulted run
    /// builds a new one.
    new_live_replica: bool,
}

impl Fault {
    fn on_new_live_replica(self) -> Fault {
        Fault {
            label: format!("{}, building a new live replica", self.label),
            new_live_replica: true,
            ..self
        }
    }

    fn expecting(self, expect: Expect) -> Fault {
        Fault { expect, ..self }
    }
}

fn rpc_fault(side: Side, method: &'static str, count: u64, phase: Phase) -> Fault {
    Fault {
        side,
        spec: vec![
            ("kind", Value::from("rpc_error")),
            ("method", Value::from(method)),
            ("code", Value::from("INTERNAL_ERROR")),
            ("count", int(count)),
        ],
        phase,
        label: format!("rpc_error {method} x{count} on {side:?}"),
        expect: Expect::Fails,
        reset_cbt: false,
        may_be_absorbed: false,
        new_live_replica: false,
    }
}

fn data_fault(side: Side, spec: Vec<(&'static str, Value)>, phase: Phase) -> Fault {
    let label = format!(
        "{} on {side:?}",
        spec.iter()
            .map(|(k, v)| format!(
                "{k}={}",
                v.as_str().map_or_else(|| format!("{v:?}"), str::to_owned)
            ))
            .collect::<Vec<_>>()
            .join(" ")
    );
    let may_be_absorbed = spec.iter().any(|(_, v)| v.as_str() == Some("stall"))
        && spec.iter().any(|(_, v)| v.as_str() == Some("import"));
    Fault {
        side,
        spec,
        phase,
        label,
        expect: Expect::Fails,
        reset_cbt: false,
        may_be_absorbed,
        new_live_replica: false,
    }
}

/// An export fault: `drop_export`, `fail_export`, `embedded_error` or a stall, `variant`
/// in that order, cutting after a byte count below `within`.
fn export_fault(side: Side, variant: usize, within: u64, phase: Phase, rng: &mut Rng) -> Fault {
    let after = int(rng.within(0..within));
    let spec = match variant {
        0 => vec![("kind", Value::from("drop_export")), ("after_bytes", after)],
        1 => vec![("kind", Value::from("fail_export"))],
        2 => vec![
            ("kind", Value::from("embedded_error")),
            ("after_bytes", after),
        ],
        _ => vec![
            ("kind", Value::from("stall")),
            ("on", Value::from("export")),
            ("seconds", int(3)),
            ("after_bytes", after),
        ],
    };
    data_fault(side, spec, phase)
}

/// An import fault on the target: `drop_import`, `fail_import`, `sr_full` or a stall,
/// `variant` in that order, cutting or stalling after a byte count below `within`.
fn import_fault(variant: usize, within: u64, rng: &mut Rng) -> Fault {
    let spec = match variant {
        0 => vec![
            ("kind", Value::from("drop_import")),
            ("after_bytes", int(rng.within(0..within))),
        ],
        1 => vec![("kind", Value::from("fail_import"))],
        2 => vec![
            ("kind", Value::from("sr_full")),
            ("on", Value::from("import")),
        ],
        _ => vec![
            ("kind", Value::from("stall")),
            ("on", Value::from("import")),
            ("seconds", int(3)),
            ("after_bytes", int(rng.within(0..within))),
        ],
    };
    data_fault(Side::Target, spec, Phase::Transfer)
}

/// How many fault kinds [`pick_fault`] knows.
const FAULT_KINDS: usize = 35;

/// Fault kind `kind` (modulo [`FAULT_KINDS`]) with random parameters. A faulted run
/// follows a clean one, so it updates the live replica in place unless the fault is marked
/// [`Fault::new_live_replica`]. An `rpc_error` strikes the first calls of its method in the
/// run: each kind names the phase where that first call falls.
fn pick_fault(kind: usize, rng: &mut Rng) -> Fault {
    use Phase::{Commit, ReplicaCreation, Retention, Snapshot, Transfer};
    use Side::{Source, Target};
    match kind % FAULT_KINDS {
        // The source snapshot and its tags.
        0 => rpc_fault(Source, "VM.snapshot", 1, Snapshot),
        1 => rpc_fault(Source, "VM.add_to_other_config", rng.within(1..5), Snapshot),
        2 => rpc_fault(
            Source,
            "VDI.add_to_other_config",
            rng.within(1..4),
            Snapshot,
        ),
        // In place: the comparison of the live disks with their snapshot (an export on the
        // target), then the live replica marked as importing.
        k @ 3..=6 => export_fault(Target, k - 3, COMPARE_HEAD, ReplicaCreation, rng),
        7 => rpc_fault(Target, "VM.set_other_config", 1, ReplicaCreation),
        8 => rpc_fault(
            Target,
            "VM.add_to_blocked_operations",
            rng.within(1..3),
            ReplicaCreation,
        ),
        9 => rpc_fault(Target, "VM.set_name_label", 1, ReplicaCreation),
        // A new live replica: its disks cloned from the snapshot's, the VM, the VBDs.
        10 => rpc_fault(Target, "VM.create", 1, ReplicaCreation).on_new_live_replica(),
        11 => {
            rpc_fault(Target, "VDI.clone", rng.within(1..3), ReplicaCreation).on_new_live_replica()
        }
        12 => {
            rpc_fault(Target, "VBD.create", rng.within(1..3), ReplicaCreation).on_new_live_replica()
        }
        13 => data_fault(
            Target,
            vec![
                ("kind", Value::from("sr_full")),
                ("on", Value::from("VDI.clone")),
            ],
            ReplicaCreation,
        )
        .on_new_live_replica(),
        // The export from the source.
        k @ 14..=17 => export_fault(Source, k - 14, 2 * MIB, Transfer, rng),
        // The import into the target.
        k @ 18..=21 => import_fault(k - 18, 2 * MIB, rng),
        // The commit: the keys on the disks and the VM, the target snapshot, the UUIDs
        // read once all is committed; on a new live replica also its block and name.
        22 => rpc_fault(Target, "VDI.add_to_other_config", rng.within(1..4), Commit),
        23 => rpc_fault(
            Target,
            "VDI.remove_from_other_config",
            rng.within(1..3),
            Commit,
        ),
        24 => rpc_fault(Target, "VM.remove_from_other_config", 1, Commit),
        25 => rpc_fault(Target, "VM.add_to_other_config", 1, Commit),
        26 => rpc_fault(Target, "VM.set_ha_restart_priority", 1, Commit),
        27 => rpc_fault(Target, "VM.snapshot", 1, Commit),
        28 => rpc_fault(Target, "VM.get_uuid", rng.within(1..3), Commit),
        29 => rpc_fault(Target, "VM.add_to_blocked_operations", 1, Commit).on_new_live_replica(),
        30 => rpc_fault(Target, "VM.set_name_label", 1, Commit).on_new_live_replica(),
        // Retention on both sides.
        31 => rpc_fault(Target, "VM.destroy", 1, Retention),
        32 => rpc_fault(Target, "VDI.destroy", rng.within(1..3), Retention),
        33 => rpc_fault(Source, "VM.destroy", 1, Retention),
        _ => rpc_fault(Source, "VDI.destroy", rng.within(1..3), Retention),
    }
}

/// How many fault kinds [`pick_nbd_fault`] knows.
const NBD_FAULT_KINDS: usize = 13;

/// CBT + NBD fault kind `kind` (modulo [`NBD_FAULT_KINDS`]) with random parameters, on an
/// in-place delta whose guest writes changed at least one 64 KiB extent: so a cut within
/// the first 64 KiB of a connection or of the import always strikes.
fn pick_nbd_fault(kind: usize, rng: &mut Rng) -> Fault {
    use Phase::{Snapshot, Transfer};
    use Side::Source;
    let after = |rng: &mut Rng| int(rng.within(0..64 * 1024));
    let fallback = Expect::FallsBack("the export path instead of NBD");
    let not_purged = Expect::Noted("could not purge the data of base snapshot disk");
    match kind % NBD_FAULT_KINDS {
        // The NBD connections of the source.
        0 => data_fault(
            Source,
            vec![
                ("kind", Value::from("drop_nbd")),
                ("after_bytes", after(rng)),
            ],
            Transfer,
        ),
        1 => data_fault(
            Source,
            vec![
                ("kind", Value::from("stall")),
                ("on", Value::from("nbd")),
                ("seconds", int(3)),
                ("after_bytes", after(rng)),
            ],
            Transfer,
        ),
        // The import of the stream built from the extents.
        k @ 2..=5 => import_fault(k - 2, 64 * 1024, rng),
        // Routing: no change list, no NBD, a reset change log; each disk's route asks once.
        6 => rpc_fault(Source, "VDI.list_changed_blocks", 2, Transfer).expecting(fallback),
        7 => rpc_fault(Source, "VDI.get_nbd_info", 2, Transfer).expecting(fallback),
        8 => Fault {
            label: "CBT reset on disk 0".into(),
            reset_cbt: true,
            ..data_fault(Source, Vec::new(), Transfer).expecting(fallback)
        },
        // CBT cannot be enabled again, or its state read, before the snapshot.
        9 => Fault {
            label: "CBT reset on disk 0, VDI.enable_cbt failing".into(),
            reset_cbt: true,
            ..rpc_fault(Source, "VDI.enable_cbt", 1, Snapshot)
        },
        10 => rpc_fault(Source, "VDI.get_cbt_enabled", 1, Snapshot),
        // The purge of the previous base, after the commit.
        11 => {
            rpc_fault(Source, "VDI.data_destroy", rng.within(1..3), Transfer).expecting(not_purged)
        }
        _ => rpc_fault(Source, "VBD.destroy", 1, Transfer).expecting(not_purged),
    }
}

/// One VM on the target, judged from its raw metadata.
struct Seen {
    reference: String,
    uuid: String,
    /// A target snapshot; else a live replica, or a new one being written.
    snapshot: bool,
    looks_valid: bool,
    snapshot_of: String,
    job_keys: bool,
    digests: Option<Digests>,
}

/// What the campaign knows: the restore points it has seen become valid, with their content.
struct Model {
    /// Valid target snapshots by VM uuid: (the check that first saw it valid, content).
    points: BTreeMap<String, (usize, Digests)>,
    checks: usize,
    /// Cycles that succeeded, each leaving a restore point.
    successes: usize,
    corrupted: Vec<String>,
    falsely_valid: Vec<String>,
}

impl Model {
    /// The newest valid target snapshot: (uuid, content).
    fn newest(&self) -> Option<(&String, &Digests)> {
        self.points
            .iter()
            .max_by_key(|(_, (order, _))| *order)
            .map(|(uuid, (_, content))| (uuid, content))
    }
}

/// What a check found on the target besides the restore points it knew.
#[derive(Debug, Default, Clone, Copy)]
struct Left {
    /// Target snapshots that do not look valid.
    interrupted_snapshots: usize,
    /// Live replicas (or new ones being written) that do not look valid.
    interrupted_live: usize,
    /// A target snapshot became valid.
    new_point: bool,
    /// A live replica looks valid.
    valid_live: bool,
}

/// What the runs that failed or were stopped left, over the campaign.
#[derive(Debug, Default)]
struct Tally {
    /// Interrupted target objects (each removed by the recovery run).
    interrupted: usize,
    /// Runs that left an interrupted target snapshot.
    interrupted_snapshot: usize,
    /// Runs that left a new restore point and no valid live replica.
    point_without_live: usize,
    /// Runs that left a new restore point and a valid live replica: they stopped after
    /// their commit.
    point_and_live: usize,
}

impl Tally {
    fn add(&mut self, left: Left) {
        self.interrupted += left.interrupted_snapshots + left.interrupted_live;
        self.interrupted_snapshot += usize::from(left.interrupted_snapshots > 0);
        self.point_without_live += usize::from(left.new_point && !left.valid_live);
        self.point_and_live += usize::from(left.new_point && left.valid_live);
    }
}

/// The lab: both hosts, the VM, and the job.
struct Campaign {
    flavour: Flavour,
    source: Host,
    target: Host,
    vm_uuid: String,
    disks: Vec<String>,
    settings: CycleSettings,
    _dir: TempDir,
    job_file: PathBuf,
}

impl Campaign {
    async fn start(flavour: Flavour) -> Campaign {
        let source = Host::start(&[("web01", &DISKS)]).await;
        let target = Host::start(&[]).await;
        let over_nbd = flavour == Flavour::CbtNbd;
        let snapshot_retention = if over_nbd { 2 } else { 1 };
        if over_nbd {
            let network = source.report.networks[0].ids.reference.as_str();
            source
                .call(
                    "network.add_purpose",
                    vec![network.into(), "insecure_nbd".into()],
                )
                .await;
        }
        let vm = &source.report.vms[0];
        let vm_uuid = vm.ids.uuid.clone();
        let disks = vm.disks.iter().map(|d| d.vdi.reference.clone()).collect();
        let dir = tempfile::tempdir().unwrap();
        let job_file = dir.path().join("job.toml");
        std::fs::write(
            &job_file,
            format!(
                "name = \"cr\"\njob_id = \"{JOB_ID}\"\nschedule_id = \"{SCHEDULE_ID}\"\n\
                 source = \"{}\"\ntarget = \"{}\"\ntarget_sr = \"{}\"\nvms = [\"{vm_uuid}\"]\n\
                 retention = {RETENTION}\nsnapshot_retention = {snapshot_retention}\n\
                 state_dir = \"{}\"\n{}",
                url(&source.server, "lab"),
                url(&target.server, "lab"),
                target.report.sr.uuid,
                dir.path().join("state").display(),
                if over_nbd {
                    "cbt = true\npurge_snapshot_data = true\n"
                } else {
                    ""
                },
            ),
        )
        .unwrap();
        let settings = CycleSettings {
            job_name: "cr".into(),
            job_id: JOB_ID.into(),
            schedule_id: SCHEDULE_ID.into(),
            target_sr: target.report.sr.uuid.clone(),
            retention: RETENTION,
            snapshot_retention,
            full_interval: 0,
            transfer: TransferOptions {
                stall_timeout: Duration::from_secs(1),
                task_timeout: Duration::from_secs(30),
                ..TransferOptions::default()
            },
            clock: std::sync::Arc::new(SystemClock),
            network_map: Vec::new(),
            new_mac_addresses: false,
            health_check: None,
            transport: TransportSettings {
                cbt: over_nbd,
                purge_snapshot_data: over_nbd,
                ..TransportSettings::default()
            },
        };
        Campaign {
            flavour,
            source,
            target,
            vm_uuid,
            disks,
            settings,
            _dir: dir,
            job_file,
        }
    }

    fn host(&self, side: Side) -> &Host {
        match side {
            Side::Source => &self.source,
            Side::Target => &self.target,
        }
    }

    /// A few random guest writes, so every cycle has a delta to send.
    async fn guest_writes(&self, rng: &mut Rng, max_len: u64) {
        for _ in 0..rng.within(1..4) {
            let d = rng.within(0..2) as usize;
            let len = rng.within(1..max_len / 512) * 512;
            let offset = rng.within(0..(DISKS[d] - len) / 512) * 512;
            self.source
                .call(
                    "lab.write",
                    vec![
                        Value::from(self.disks[d].as_str()),
                        int(offset),
                        int(len),
                        int(rng.next() >> 1),
                    ],
                )
                .await;
        }
    }

    /// New random content over the whole of both disks, so that a delta sends every block.
    async fn rewrite_every_block(&self, rng: &mut Rng) {
        for (d, disk) in self.disks.iter().enumerate() {
            self.source
                .call(
                    "lab.write",
                    vec![
                        Value::from(disk.as_str()),
                        int(0),
                        int(DISKS[d]),
                        int(rng.next() >> 1),
                    ],
                )
                .await;
        }
    }

    /// The guest content now: what the next snapshot will hold.
    async fn source_digests(&self) -> Digests {
        let mut digests = BTreeMap::new();
        for (i, disk) in self.disks.iter().enumerate() {
            digests.insert(i.to_string(), self.source.hash(disk).await);
        }
        digests
    }

    async fn run_cycle(
        &self,
        source: &XapiClient,
        target: &XapiClient,
    ) -> Result<CycleReport, CycleError> {
        let mut progress = |_: &vhdsync::replicate::run::CycleEvent<'_>| {};
        replicate_vm(
            source,
            target,
            &self.settings,
            &self.vm_uuid,
            &mut progress,
            &CancellationToken::new(),
        )
        .await
    }

    async fn cycle(&self) -> Result<CycleReport, CycleError> {
        self.run_cycle(&self.source.client, &self.target.client)
            .await
    }

    /// A cycle with `fault` armed, cleared after it.
    async fn faulted_cycle(&self, fault: &Fault) -> Result<CycleReport, CycleError> {
        if fault.reset_cbt {
            self.source
                .call("VDI.disable_cbt", vec![self.disks[0].as_str().into()])
                .await;
        }
        if !fault.spec.is_empty() {
            self.host(fault.side).inject(fault.spec.clone()).await;
        }
        let outcome = self.cycle().await;
        self.source.clear_faults().await;
        self.target.clear_faults().await;
        outcome
    }

    /// A cycle that crashes, as a process killed at that point would: it is dropped where it
    /// stands once its call number `calls` (to either host) has been answered, with no
    /// clean-up. `None` if it crashed; its outcome if it ended first.
    async fn crashing_cycle(&self, calls: u64) -> Option<Result<CycleReport, CycleError>> {
        let source = connect(&self.source).await;
        let target = connect(&self.target).await;
        let made = || source.requests_sent() + target.requests_sent();
        let start = made();
        let mut cycle = std::pin::pin!(self.run_cycle(&source, &target));
        std::future::poll_fn(|cx| {
            if made() - start >= calls {
                return Poll::Ready(None);
            }
            cycle.as_mut().poll(cx).map(Some)
        })
        .await
    }

    /// `vhdsync replicate` as cron runs it.
    fn spawn_replicate(&self) -> tokio::process::Child {
        tokio::process::Command::new(BIN)
            .args(["replicate", "--json", "--stall-timeout", "5", "--job"])
            .arg(&self.job_file)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap()
    }

    /// Every VM on the target (the target holds nothing but this job's objects), judged
    /// from its raw metadata; the disks of those `hash` selects are hashed.
    async fn survey(&self, hash: impl Fn(&Seen) -> bool) -> Vec<Seen> {
        let mut found = Vec::new();
        for (reference, vm) in self.target.vms().await {
            // A snapshot is a template too, as in XAPI.
            if vm.is_control_domain || (vm.is_a_template && !vm.is_a_snapshot) {
                continue;
            }
            let config = &vm.other_config;
            let importing = config.contains_key(keys::IMPORTING)
                || config.get(keys::DATETIME).map(String::as_str) == Some(keys::IMPORTING_DATETIME);
            let job_keys = config.get(keys::JOB).map(String::as_str) == Some(JOB_ID)
                && config.get(keys::VM) == Some(&self.vm_uuid);
            let looks_valid = if vm.is_a_snapshot {
                job_keys && !importing
            } else {
                vm.blocked_operations.get("start").map(String::as_str) == Some(keys::START_BLOCKED)
                    && !importing
                    && !vm.name_label.starts_with("[Importing")
            };
            let mut seen = Seen {
                reference,
                uuid: vm.uuid,
                snapshot: vm.is_a_snapshot,
                looks_valid,
                snapshot_of: vm.snapshot_of,
                job_keys,
                digests: None,
            };
            if hash(&seen) {
                let mut hashed = BTreeMap::new();
                for (device, vdi) in self.target.disk_uuids(&seen.reference).await {
                    hashed.insert(device, self.target.hash(&vdi).await);
                }
                seen.digests = Some(hashed);
            }
            found.push(seen);
        }
        found
    }

    /// Check the invariants after a cycle whose source snapshot held `expected` (the guest
    /// content before it); the restore points known valid are hashed again only if `rehash`
    /// (after a fault: a clean run has no more chance to damage them, and chains grow long).
    async fn check(&self, model: &mut Model, expected: &Digests, when: &str, rehash: bool) -> Left {
        model.checks += 1;
        let seen = self
            .survey(|s| {
                s.looks_valid && (!s.snapshot || rehash || !model.points.contains_key(&s.uuid))
            })
            .await;
        let mut left = Left::default();

        let snapshots: Vec<&Seen> = seen.iter().filter(|s| s.snapshot).collect();
        let present: BTreeSet<&String> = snapshots.iter().map(|s| &s.uuid).collect();
        // The newest restore point is never removed by a later cycle (retention keeps it).
        if let Some((newest, _)) = model.newest()
            && !present.contains(newest)
        {
            model.corrupted.push(format!(
                "{when}: the newest target snapshot {newest} vanished"
            ));
        }
        model.points.retain(|uuid, _| present.contains(uuid));
        for s in snapshots {
            let uuid = &s.uuid;
            let digests = &s.digests;
            match model.points.get(uuid) {
                Some((_, known)) if digests.as_ref().is_some_and(|d| d != known) => {
                    model.corrupted.push(format!(
                        "{when}: target snapshot {uuid} changed: {known:?} -> {digests:?}"
                    ))
                }
                Some(_) if !s.looks_valid => model.corrupted.push(format!(
                    "{when}: target snapshot {uuid} lost its committed markers"
                )),
                Some(_) => {}
                None if !s.looks_valid => left.interrupted_snapshots += 1,
                None if digests.as_ref() == Some(expected) => {
                    model
                        .points
                        .insert(uuid.clone(), (model.checks, expected.clone()));
                    left.new_point = true;
                }
                None => model.falsely_valid.push(format!(
                    "{when}: target snapshot {uuid} looks valid but holds {digests:?}, \
                     not {expected:?}"
                )),
            }
        }

        let newest = model
            .newest()
            .map(|(uuid, content)| (uuid.clone(), content.clone()));
        for s in seen.iter().filter(|s| !s.snapshot) {
            if !s.looks_valid {
                left.interrupted_live += 1;
                continue;
            }
            left.valid_live = true;
            match &newest {
                Some((_, content)) if s.digests.as_ref() == Some(content) => {}
                Some((snapshot, content)) => model.falsely_valid.push(format!(
                    "{when}: live replica {} looks valid but holds {:?}, not the content of \
                     the newest target snapshot {snapshot}: {content:?}",
                    s.uuid, s.digests
                )),
                None => model.falsely_valid.push(format!(
                    "{when}: live replica {} looks valid with no valid target snapshot",
                    s.uuid
                )),
            }
        }
        left
    }

    /// After a recovery run: nothing left over on either host, retention honoured, and the
    /// run's `report` (`replica`, `target_snapshot`) names the live replica and the newest
    /// restore point.
    async fn check_clean(&self, model: &Model, report: &serde_json::Value, when: &str) {
        // What went wrong first, before what follows from it.
        assert!(
            model.corrupted.is_empty() && model.falsely_valid.is_empty(),
            "{when}: corrupted: {:#?}, falsely valid: {:#?}",
            model.corrupted,
            model.falsely_valid
        );
        let leaks = self.target.unused_vdis().await;
        assert!(
            leaks.is_empty(),
            "{when}: VDIs leaked on the target: {leaks:?}"
        );
        let seen = self.survey(|_| false).await;
        let interrupted: Vec<&String> = seen
            .iter()
            .filter(|s| !s.looks_valid)
            .map(|s| &s.uuid)
            .collect();
        assert!(
            interrupted.is_empty(),
            "{when}: interrupted objects survived the recovery run: {interrupted:?}"
        );
        let snapshots = seen.iter().filter(|s| s.snapshot).count();
        let expected = (RETENTION as usize).min(model.successes);
        assert_eq!(
            snapshots, expected,
            "{when}: retention keeps {RETENTION} target snapshots"
        );
        assert_eq!(
            model.points.len(),
            expected,
            "{when}: the model's restore points"
        );
        let live: Vec<&Seen> = seen.iter().filter(|s| !s.snapshot).collect();
        let [live] = live.as_slice() else {
            panic!("{when}: {} live replicas, not one", live.len());
        };
        assert!(
            !live.job_keys,
            "{when}: the live replica {} keeps the job's keys, like a classic replica VM",
            live.uuid
        );
        let (newest, _) = model.newest().expect("a restore point");
        let newest = seen.iter().find(|s| s.uuid == *newest).unwrap();
        assert_eq!(
            newest.snapshot_of, live.reference,
            "{when}: the newest target snapshot {} is of the live replica {}",
            newest.uuid, live.uuid
        );
        assert_eq!(report["replica"], live.uuid.as_str(), "{when}: {report}");
        assert_eq!(
            report["target_snapshot"],
            newest.uuid.as_str(),
            "{when}: {report}"
        );

        match self.flavour {
            Flavour::Export => self.check_source(when).await,
            Flavour::CbtNbd => self.check_purged_source(report, when).await,
        }
    }

    /// The source keeps the base snapshot alone, and no VDI that no VM uses.
    async fn check_source(&self, when: &str) {
        let leaks = self.source.unused_vdis().await;
        assert!(
            leaks.is_empty(),
            "{when}: VDIs leaked on the source: {leaks:?}"
        );
        let source_snapshots = self
            .source
            .vms()
            .await
            .into_iter()
            .filter(|(_, vm)| vm.is_a_snapshot)
            .map(|(_, vm)| {
                (
                    vm.name_label,
                    vm.other_config.into_keys().collect::<Vec<_>>(),
                )
            })
            .collect::<Vec<_>>();
        assert_eq!(
            source_snapshots.len(),
            1,
            "{when}: the source keeps the base snapshot only: {source_snapshots:?}"
        );
    }

    /// With `purge_snapshot_data` and two snapshots kept: the base (the report's snapshot)
    /// with its disks, the one before it purged, and every VDI no VM uses is the change log
    /// of one of that purged snapshot's disks, tagged with its uuid.
    async fn check_purged_source(&self, report: &serde_json::Value, when: &str) {
        let base = report["snapshot"].as_str().unwrap();
        let mut purged = Vec::new();
        for (reference, vm) in self.source.vms().await {
            if vm.is_a_snapshot && vm.uuid != base {
                let disks = self.source.disk_uuids(&reference).await;
                assert!(disks.is_empty(), "{when}: snapshot {} kept disks", vm.uuid);
                purged.push(vm.uuid);
            }
        }
        let [purged] = purged.as_slice() else {
            panic!("{when}: source snapshots besides the base: {purged:?}, not one");
        };
        let unused: Vec<(String, String, Option<String>)> = self
            .source
            .unused_vdi_records()
            .await
            .into_iter()
            .map(|vdi| {
                let owner = vdi.other_config.get(keys::PURGED_FROM).cloned();
                (vdi.uuid, vdi.kind, owner)
            })
            .collect();
        assert_eq!(
            unused.len(),
            DISKS.len(),
            "{when}: the VDIs no VM uses on the source are not the change logs of the \
             purged snapshot {purged}'s disks: {unused:?}"
        );
        for (uuid, kind, owner) in &unused {
            assert_eq!(
                (kind.as_str(), owner.as_ref()),
                ("cbt_metadata", Some(purged)),
                "{when}: VDI {uuid} on the source: {unused:?}"
            );
        }
    }

    /// Every disk of a clean run went the campaign's way: over NBD (unless the change log
    /// of a disk was reset, `cbt_reset`), or over the export path.
    fn check_transports(&self, report: &CycleReport, cbt_reset: bool, when: &str) {
        let expected = match self.flavour {
            Flavour::Export => "stream",
            Flavour::CbtNbd if cbt_reset => return,
            Flavour::CbtNbd => "nbd",
        };
        for disk in &report.disks {
            assert_eq!(
                disk.transport, expected,
                "{when}: disk {} went over {}: {:?}",
                disk.userdevice, disk.transport, report.notes
            );
        }
    }

    /// A clean in-process run after a fault: a delta, then every check.
    async fn recover(&self, model: &mut Model, rng: &mut Rng, cbt_reset: bool, when: &str) {
        self.guest_writes(rng, 256 * 1024).await;
        let expected = self.source_digests().await;
        let report = match self.cycle().await {
            Ok(report) if report.mode == "delta" => {
                self.check_transports(&report, cbt_reset, when);
                report
            }
            Ok(report) => panic!(
                "{when}: the recovery run was a {}, not a delta",
                report.mode
            ),
            Err(e) => panic!("{when}: the recovery run failed: {e}"),
        };
        model.successes += 1;
        self.check(model, &expected, &format!("{when}, recovery"), false)
            .await;
        let json = serde_json::to_value(&report).unwrap();
        self.check_clean(model, &json, when).await;
    }
}

/// A client of its own for `host`, as another process would have.
async fn connect(host: &Host) -> XapiClient {
    XapiClient::connect(HostUrl::parse(&host.url()).unwrap(), &Trust::Insecure, None)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_campaign() {
    let injected = run_campaign(Flavour::Export, SEED).await;
    assert!(injected >= 60);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_campaign_over_cbt_and_nbd() {
    let injected = run_campaign(Flavour::CbtNbd, SEED ^ 0x20).await;
    assert!(injected >= 30);
}

/// The campaign over `flavour`'s path: faults, crashes and kills. The number of faults
/// injected.
async fn run_campaign(flavour: Flavour, seed: u64) -> usize {
    let began = std::time::Instant::now();
    let campaign = Campaign::start(flavour).await;
    let hosts = [campaign.source.client.host(), campaign.target.client.host()];
    let call_log = CallLog::installed(&hosts);
    let mut rng = Rng(seed);
    let mut model = Model {
        points: BTreeMap::new(),
        checks: 0,
        successes: 0,
        corrupted: Vec::new(),
        falsely_valid: Vec::new(),
    };
    let (mut injected, mut recovered, mut absorbed, mut fell_back) = (0, 0, 0, 0);
    let (mut faulted, mut crashed, mut killed) = (Tally::default(), Tally::default(), 0);

    // Two clean cycles first, so that retention has a victim from the first fault on: a
    // full one building the live replica, then a delta updating it in place, whose calls
    // are where the crashes strike.
    let mut in_place_calls = Vec::new();
    for round in 0..2 {
        campaign.guest_writes(&mut rng, 512 * 1024).await;
        let expected = campaign.source_digests().await;
        let sent =
            || campaign.source.client.requests_sent() + campaign.target.client.requests_sent();
        let before = sent();
        call_log.start();
        let report = campaign.cycle().await.unwrap();
        in_place_calls = call_log.stop();
        assert_eq!(
            in_place_calls.len() as u64,
            sent() - before,
            "the call log holds every call"
        );
        let (mode, layout) = [("full", "new_live_replica"), ("delta", "in_place")][round];
        assert_eq!((report.mode, report.layout), (mode, layout));
        campaign.check_transports(&report, false, "setup");
        model.successes += 1;
        campaign.check(&mut model, &expected, "setup", false).await;
    }

    let fault_kinds = match flavour {
        Flavour::Export => RPC_FAULTS,
        Flavour::CbtNbd => NBD_FAULT_KINDS,
    };
    for round in 0..fault_kinds {
        let fault = match flavour {
            Flavour::Export => pick_fault(round, &mut rng),
            Flavour::CbtNbd => pick_nbd_fault(round, &mut rng),
        };
        let when = format!("fault {round} ({})", fault.label);
        if fault.new_live_replica {
            // A failed in-place run destroys the live replica; the next run builds a new one.
            let before = data_fault(
                Side::Target,
                vec![("kind", Value::from("fail_import"))],
                Phase::Transfer,
            );
            let when = format!("{when}, the failed run before it");
            campaign.guest_writes(&mut rng, 1024 * 1024).await;
            let expected = campaign.source_digests().await;
            match campaign.faulted_cycle(&before).await {
                Ok(_) => panic!("{when}: the cycle succeeded despite the fault"),
                Err(error) => check_error(&error, &before, &campaign.vm_uuid, &when),
            }
            injected += 1;
            faulted.add(campaign.check(&mut model, &expected, &when, true).await);
        }
        campaign.guest_writes(&mut rng, 1024 * 1024).await;
        let expected = campaign.source_digests().await;
        let outcome = campaign.faulted_cycle(&fault).await;
        injected += 1;
        match (outcome, fault.expect) {
            (Ok(_), Expect::Fails) if fault.may_be_absorbed => {
                absorbed += 1;
                model.successes += 1;
            }
            (Ok(report), Expect::Fails) => panic!(
                "{when}: the cycle succeeded ({}, {}) despite the fault",
                report.mode, report.layout
            ),
            (Err(error), Expect::Fails) => check_error(&error, &fault, &campaign.vm_uuid, &when),
            (Ok(report), Expect::FallsBack(note)) => {
                let streamed = report.disks.iter().filter(|d| d.transport == "stream");
                assert!(
                    streamed.count() > 0,
                    "{when}: no disk fell back: {report:?}"
                );
                check_noted(&report, note, &when);
                fell_back += 1;
                model.successes += 1;
            }
            (Ok(report), Expect::Noted(note)) => {
                campaign.check_transports(&report, false, &when);
                check_noted(&report, note, &when);
                model.successes += 1;
            }
            (Err(error), _) => panic!("{when}: the cycle failed instead of going on: {error}"),
        }
        faulted.add(campaign.check(&mut model, &expected, &when, true).await);

        // Recovery: a run without a fault, a delta since the base survived.
        campaign
            .recover(&mut model, &mut rng, fault.reset_cbt, &when)
            .await;
        recovered += 1;
    }

    // Over CBT + NBD, the purge of the previous base is a stretch of its own.
    let dense_methods: &[&str] = match flavour {
        Flavour::Export => &[],
        Flavour::CbtNbd => &["VBD.destroy", "VDI.data_destroy"],
    };
    let crashes = crash_points(
        &in_place_calls,
        [&hosts[0], &hosts[1]],
        dense_methods,
        &mut rng,
    );
    for &calls in &crashes {
        let (host, method) = &in_place_calls[calls as usize - 1];
        let when = format!("crash after call {calls} ({method} on {host})");
        campaign.guest_writes(&mut rng, 1024 * 1024).await;
        let expected = campaign.source_digests().await;
        match campaign.crashing_cycle(calls).await {
            None => {} // crashed
            Some(Ok(report)) => panic!("{when}: the run ended first: {report:?}"),
            Some(Err(e)) => panic!("{when}: the cycle failed without a fault: {e}"),
        }
        injected += 1;
        crashed.add(campaign.check(&mut model, &expected, &when, true).await);
        campaign.recover(&mut model, &mut rng, false, &when).await;
        recovered += 1;
    }
    // The crash points did reach the commit's windows: they left a target snapshot not yet
    // valid, and a valid one with the live replica not yet valid.
    assert!(crashed.interrupted_snapshot > 0, "{crashed:?}");
    assert!(crashed.point_without_live > 0, "{crashed:?}");

    let kills = match flavour {
        Flavour::Export => KILLS,
        Flavour::CbtNbd => NBD_KILLS,
    };
    for kill in 0..kills {
        let when = format!("kill {kill}");
        // Every block changed (8 MiB to send) and a 1 MiB/s limit make the run last about
        // 8 s, well past the latest kill at 2 s, however fast the machine. NBD has no
        // bandwidth fault: over NBD the import is the one throttled.
        campaign.rewrite_every_block(&mut rng).await;
        let expected = campaign.source_digests().await;
        let (throttled, plane) = match flavour {
            Flavour::Export => (&campaign.source, "export"),
            Flavour::CbtNbd => (&campaign.target, "import"),
        };
        throttled
            .inject(vec![
                ("kind", Value::from("bandwidth")),
                ("bytes_per_second", int(MIB)),
                ("on", Value::from(plane)),
                ("persistent", Value::Bool(true)),
            ])
            .await;
        let mut child = campaign.spawn_replicate();
        let delay = rng.within(20..2_000);
        let finished = tokio::time::timeout(Duration::from_millis(delay), child.wait()).await;
        if let Ok(status) = finished {
            panic!("{when}: the run ended before the kill after {delay} ms: {status:?}");
        }
        // SIGKILL, as `kill -9`: no destructor, no clean-up, locks released by the kernel.
        child.start_kill().unwrap();
        let status = child.wait().await.unwrap();
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(libc::SIGKILL),
            "{when}"
        );
        throttled.clear_faults().await;
        injected += 1;
        killed += 1;
        let when = format!("{when} after {delay} ms");
        faulted.add(campaign.check(&mut model, &expected, &when, true).await);

        let expected = campaign.source_digests().await;
        let run = campaign.spawn_replicate().wait_with_output().await.unwrap();
        let doc: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap_or_default();
        assert!(
            run.status.success(),
            "{when}: the recovery run failed: {doc} {}",
            String::from_utf8_lossy(&run.stderr)
        );
        let report = &doc["vms"][0]["report"];
        assert_eq!(
            report["mode"], "delta",
            "{when}: the recovery run is a delta: {doc}"
        );
        if flavour == Flavour::CbtNbd {
            for disk in report["disks"].as_array().unwrap() {
                assert_eq!(disk["transport"], "nbd", "{when}: {doc}");
            }
        }
        recovered += 1;
        model.successes += 1;
        campaign
            .check(&mut model, &expected, &format!("{when}, recovery"), false)
            .await;
        campaign.check_clean(&model, report, &when).await;
    }

    println!("{flavour:?} campaign took {:?}", began.elapsed());
    println!("import stalls ridden out without failing the cycle: {absorbed}");
    println!("faults met by falling back to the export path: {fell_back}");
    println!("left by faults and kills: {faulted:?}");
    println!("left by crashes: {crashed:?}");
    println!(
        "faults: {injected} injected ({} crashes, {killed} kills), {recovered} recovered, \
         {absorbed} absorbed, {} corrupted, {} falsely valid",
        crashes.len(),
        model.corrupted.len(),
        model.falsely_valid.len()
    );
    assert!(
        model.corrupted.is_empty(),
        "corrupted: {:#?}",
        model.corrupted
    );
    assert!(
        model.falsely_valid.is_empty(),
        "falsely valid: {:#?}",
        model.falsely_valid
    );
    assert_eq!(recovered, fault_kinds + crashes.len() + kills);
    injected
}

/// A cycle that went on despite a fault says why in its notes.
fn check_noted(report: &CycleReport, note: &str, when: &str) {
    assert!(
        report.notes.iter().any(|n| n.contains(note)),
        "{when}: no note says \"{note}\": {:?}",
        report.notes
    );
}

/// Where the crashes strike, as the number of calls (to either host) a run has made when it
/// stops, from `calls`, those of a clean in-place run. A crash after a read leaves what the
/// write before it left, so crashes follow writes: each write of the two stretches where
/// what a run leaves changes meaning (the tagging of the source snapshot; the commit from
/// the last write before the target snapshot until the live replica is valid again, and two
/// calls more, the source snapshot being marked as exported meanwhile), and
/// [`SPARSE_CRASHES`] writes at random, spread over the rest of the run.
fn crash_points(
    calls: &[(String, String)],
    hosts: [&str; 2],
    dense_methods: &[&str],
    rng: &mut Rng,
) -> Vec<u64> {
    let [source, target] = hosts;
    let is_write = |i: &usize| {
        let (_, verb) = calls[*i].1.split_once('.').unwrap_or_default();
        !verb.starts_with("get_")
    };
    let at = |i: &usize, host: &str, method: &str| calls[*i].0 == host && calls[*i].1 == method;
    let source_snapshot = (0..calls.len())
        .find(|i| at(i, source, "VM.snapshot"))
        .expect("the run snapshots the source VM");
    let tagged = (source_snapshot..calls.len())
        .find(|i| calls[*i].0 == target)
        .expect("the run goes on to the target");
    let snapshot = (tagged..calls.len())
        .find(|i| at(i, target, "VM.snapshot"))
        .expect("an in-place run snapshots the live replica");
    // The importing key comes off the snapshot, then off the live replica.
    let live_valid = (snapshot..calls.len())
        .filter(|i| at(i, target, "VM.remove_from_other_config"))
        .nth(1)
        .expect("the commit makes the snapshot, then the live replica valid");
    let dense = |i: &usize| {
        (source_snapshot..tagged).contains(i)
            || (snapshot - 1..=live_valid + 2).contains(i)
            || dense_methods.contains(&calls[*i].1.as_str())
    };
    let (dense, sparse): (Vec<usize>, Vec<usize>) =
        (0..calls.len()).filter(is_write).partition(dense);
    let stretch = (sparse.len() / SPARSE_CRASHES).max(1);
    let mut points: Vec<usize> = sparse
        .chunks(stretch)
        .map(|chunk| chunk[rng.within(0..chunk.len() as u64) as usize])
        .chain(dense)
        .collect();
    points.sort_unstable();
    points.into_iter().map(|i| i as u64 + 1).collect()
}

/// Every campaign's call log. A test process has one tracing subscriber, [`CallListener`],
/// installed by the first campaign; campaigns run side by side, each logging its hosts' calls.
static CALL_LOGS: Mutex<Vec<CallLog>> = Mutex::new(Vec::new());
static LISTENING: std::sync::Once = std::sync::Once::new();

/// The RPC calls this process's clients send to a campaign's hosts while recording, in
/// order: (host, method), from the client's `RPC` trace event, one per request.
#[derive(Clone)]
struct CallLog {
    hosts: Vec<String>,
    calls: Arc<Mutex<Option<Calls>>>,
}

impl CallLog {
    /// A log of the calls to `hosts`, listening from now on.
    fn installed(hosts: &[String]) -> CallLog {
        LISTENING.call_once(|| {
            let only_calls = tracing_subscriber::filter::Targets::new()
                .with_target("vhdsync::xapi::client", tracing::Level::TRACE);
            let subscriber =
                tracing_subscriber::registry().with(CallListener.with_filter(only_calls));
            tracing::subscriber::set_global_default(subscriber).expect("no other subscriber");
        });
        let log = CallLog {
            hosts: hosts.to_vec(),
            calls: Arc::default(),
        };
        CALL_LOGS.lock().unwrap().push(log.clone());
        log
    }

    fn start(&self) {
        *self.calls.lock().unwrap() = Some(Vec::new());
    }

    fn stop(&self) -> Calls {
        self.calls.lock().unwrap().take().unwrap_or_default()
    }
}

/// Hands each `RPC` event to the log of the campaign whose host it went to.
struct CallListener;

impl<S: tracing::Subscriber> Layer<S> for CallListener {
    fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
        let mut fields = RpcFields::default();
        event.record(&mut fields);
        if fields.message != "RPC" {
            return;
        }
        for log in CALL_LOGS.lock().unwrap().iter() {
            if log.hosts.contains(&fields.host)
                && let Some(calls) = log.calls.lock().unwrap().as_mut()
            {
                calls.push((fields.host.clone(), fields.method.clone()));
            }
        }
    }
}

/// The fields of the client's `RPC` trace event.
#[derive(Default)]
struct RpcFields {
    message: String,
    host: String,
    method: String,
}

impl tracing::field::Visit for RpcFields {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        let text = format!("{value:?}");
        match field.name() {
            "message" => self.message = text,
            "host" => self.host = text,
            "method" => self.method = text,
            _ => {}
        }
    }
}

/// A failure names the VM, the phase and the host; a transfer's also the disk and the byte
/// offset once bytes moved.
fn check_error(error: &CycleError, fault: &Fault, vm: &str, when: &str) {
    let text = error.to_string();
    assert_eq!(error.vm, vm, "{when}: {text}");
    assert_eq!(error.phase, fault.phase, "{when}: {text}");
    assert!(text.contains(vm), "{when}: {text}");
    assert!(error.host.is_some(), "{when}: names no host: {text}");
    if fault.phase == Phase::Transfer {
        assert!(error.disk.is_some(), "{when}: names no disk: {text}");
        let streaming = fault.spec.iter().any(|(k, _)| *k == "after_bytes");
        if streaming {
            assert!(
                text.contains(" at byte "),
                "{when}: names no offset: {text}"
            );
        }
    }
}
