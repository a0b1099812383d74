//! The fault campaign (issue 8): with a fixed seed, randomised faults in every phase of a
//! replication cycle (snapshot, replica creation, export, import, commit, retention) and
//! `kill -9` of a running `vhdsync replicate` at random moments. After each, the invariants
//! are checked by content digest and metadata, then a run without a fault must recover:
//!
//! - every replica that was valid before is still there (retention aside) with the same
//!   content: otherwise it counts as *corrupted*;
//! - every replica that looks valid (committed markers, start blocked) holds exactly the guest
//!   content of its cycle's snapshot: otherwise it counts as *falsely valid*;
//! - the recovery run succeeds as a delta (the base always survives these faults), leaves no
//!   interrupted replica, and no VDI on either host that no VM uses (the lab's VDI list).
//!
//! The model is independent of the engine: a replica's expected digests are the source disks'
//! digests taken just before its cycle, and "looks valid" is judged from the raw metadata.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

mod common;

use common::lab_pair::{Host, url};
use tempfile::TempDir;
use tokio_util::sync::CancellationToken;
use vhdsync::replicate::clock::SystemClock;
use vhdsync::replicate::keys;
use vhdsync::replicate::run::{CycleError, CycleSettings, Phase, replicate_vm};
use vhdsync::xapi::records::VmRecord;
use vhdsync::xapi::rpc::Value;
use vhdsync::xapi::transfer::TransferOptions;

const MIB: u64 = 1 << 20;
const BIN: &str = env!("CARGO_BIN_EXE_vhdsync");
const SEED: u64 = 0x5eed_0008;
const RPC_FAULTS: usize = 54;
const KILLS: usize = 11;
const DISKS: [u64; 2] = [4 * MIB, 4 * MIB];
const RETENTION: u32 = 2;
const JOB_ID: &str = "7d3c1f0e-8a5b-4c1d-9e2f-0a1b2c3d4e5f";
const SCHEDULE_ID: &str = "1e2d3c4b-5a69-4788-96a5-b4c3d2e1f0a9";

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

/// One randomised fault: where it goes, its spec, and the cycle phase it must fail in.
struct Fault {
    side: Side,
    spec: Vec<(&'static str, Value)>,
    phase: Phase,
    label: String,
    /// A stall the engine may ride out: an import stall shorter than the task timeout, once
    /// the rest of the stream sits in buffers, delays the import but need not fail it.
    may_be_absorbed: bool,
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
        may_be_absorbed: false,
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
        may_be_absorbed,
    }
}

/// The `round`th fault: the phases in turn, each with a random kind and parameters.
fn pick_fault(round: usize, rng: &mut Rng) -> Fault {
    use Side::{Source, Target};
    let after = |rng: &mut Rng| int(rng.within(0..2 * MIB));
    let choice = rng.next() as usize;
    match round % 6 {
        0 => match choice % 3 {
            0 => rpc_fault(Source, "VM.snapshot", 1, Phase::Snapshot),
            1 => rpc_fault(
                Source,
                "VM.add_to_other_config",
                rng.within(1..5),
                Phase::Snapshot,
            ),
            _ => rpc_fault(
                Source,
                "VDI.add_to_other_config",
                rng.within(1..4),
                Phase::Snapshot,
            ),
        },
        1 => match choice % 4 {
            0 => rpc_fault(Target, "VM.create", 1, Phase::ReplicaCreation),
            1 => rpc_fault(
                Target,
                "VDI.clone",
                rng.within(1..3),
                Phase::ReplicaCreation,
            ),
            2 => rpc_fault(
                Target,
                "VBD.create",
                rng.within(1..3),
                Phase::ReplicaCreation,
            ),
            _ => data_fault(
                Target,
                vec![
                    ("kind", Value::from("sr_full")),
                    ("on", Value::from("VDI.clone")),
                ],
                Phase::ReplicaCreation,
            ),
        },
        2 => match choice % 4 {
            0 => data_fault(
                Source,
                vec![
                    ("kind", Value::from("drop_export")),
                    ("after_bytes", after(rng)),
                ],
                Phase::Transfer,
            ),
            1 => data_fault(
                Source,
                vec![("kind", Value::from("fail_export"))],
                Phase::Transfer,
            ),
            2 => data_fault(
                Source,
                vec![
                    ("kind", Value::from("embedded_error")),
                    ("after_bytes", after(rng)),
                ],
                Phase::Transfer,
            ),
            _ => data_fault(
                Source,
                vec![
                    ("kind", Value::from("stall")),
                    ("on", Value::from("export")),
                    ("seconds", int(3)),
                    ("after_bytes", after(rng)),
                ],
                Phase::Transfer,
            ),
        },
        3 => match choice % 4 {
            0 => data_fault(
                Target,
                vec![
                    ("kind", Value::from("drop_import")),
                    ("after_bytes", after(rng)),
                ],
                Phase::Transfer,
            ),
            1 => data_fault(
                Target,
                vec![("kind", Value::from("fail_import"))],
                Phase::Transfer,
            ),
            2 => data_fault(
                Target,
                vec![
                    ("kind", Value::from("sr_full")),
                    ("on", Value::from("import")),
                ],
                Phase::Transfer,
            ),
            _ => data_fault(
                Target,
                vec![
                    ("kind", Value::from("stall")),
                    ("on", Value::from("import")),
                    ("seconds", int(3)),
                    ("after_bytes", after(rng)),
                ],
                Phase::Transfer,
            ),
        },
        4 => match choice % 5 {
            0 => rpc_fault(Target, "VM.set_name_label", 1, Phase::Commit),
            1 => rpc_fault(Target, "VM.add_to_blocked_operations", 1, Phase::Commit),
            2 => rpc_fault(Target, "VM.set_ha_restart_priority", 1, Phase::Commit),
            3 => rpc_fault(
                Target,
                "VDI.add_to_other_config",
                rng.within(1..4),
                Phase::Commit,
            ),
            _ => rpc_fault(Target, "VM.get_uuid", 1, Phase::Commit),
        },
        _ => match choice % 4 {
            0 => rpc_fault(Target, "VM.destroy", 1, Phase::Retention),
            1 => rpc_fault(Target, "VDI.destroy", rng.within(1..3), Phase::Retention),
            2 => rpc_fault(Source, "VM.destroy", 1, Phase::Retention),
            _ => rpc_fault(Source, "VDI.destroy", rng.within(1..3), Phase::Retention),
        },
    }
}

/// What the campaign knows: the replicas it has seen become valid, with their content.
struct Model {
    /// Valid replicas by VM uuid: (commit order, userdevice -> digest).
    replicas: BTreeMap<String, (usize, BTreeMap<String, String>)>,
    cycles: usize,
    corrupted: Vec<String>,
    falsely_valid: Vec<String>,
}

/// The lab: both hosts, the VM, and the job.
struct Campaign {
    source: Host,
    target: Host,
    vm_uuid: String,
    disks: Vec<String>,
    settings: CycleSettings,
    _dir: TempDir,
    job_file: PathBuf,
}

impl Campaign {
    async fn start() -> Campaign {
        let source = Host::start(&[("web01", &DISKS)]).await;
        let target = Host::start(&[]).await;
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
                 retention = {RETENTION}\nstate_dir = \"{}\"\n",
                url(&source.server, "lab"),
                url(&target.server, "lab"),
                target.report.sr.uuid,
                dir.path().join("state").display(),
            ),
        )
        .unwrap();
        let settings = CycleSettings {
            job_name: "cr".into(),
            job_id: JOB_ID.into(),
            schedule_id: SCHEDULE_ID.into(),
            target_sr: target.report.sr.uuid.clone(),
            retention: RETENTION,
            snapshot_retention: 1,
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
        };
        Campaign {
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
    async fn source_digests(&self) -> BTreeMap<String, String> {
        let mut digests = BTreeMap::new();
        for (i, disk) in self.disks.iter().enumerate() {
            digests.insert(i.to_string(), self.source.hash(disk).await);
        }
        digests
    }

    async fn cycle(&self) -> Result<&'static str, CycleError> {
        let mut progress = |_: &str, _: &vhdsync::xapi::transfer::Progress| {};
        replicate_vm(
            &self.source.client,
            &self.target.client,
            &self.settings,
            &self.vm_uuid,
            &mut progress,
            &CancellationToken::new(),
        )
        .await
        .map(|report| report.mode)
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

    /// The target's replicas of our VM: (uuid, looks valid, userdevice -> digest for those
    /// `hash` selects by uuid).
    async fn replicas(
        &self,
        hash: impl Fn(&str) -> bool,
    ) -> Vec<(String, bool, Option<BTreeMap<String, String>>)> {
        let mut found = Vec::new();
        for (reference, vm) in self
            .target
            .client
            .get_all_records::<VmRecord>()
            .await
            .unwrap()
        {
            if vm.is_a_snapshot || vm.other_config.get(keys::VM) != Some(&self.vm_uuid) {
                continue;
            }
            let valid = vm.other_config.get(keys::JOB).map(String::as_str) == Some(JOB_ID)
                && !vm.other_config.contains_key(keys::IMPORTING)
                && vm.other_config.get(keys::DATETIME).map(String::as_str)
                    != Some(keys::IMPORTING_DATETIME)
                && !vm.name_label.starts_with("[Importing")
                && vm.blocked_operations.contains_key("start");
            let mut digests = None;
            if hash(&vm.uuid) {
                let mut hashed = BTreeMap::new();
                for (device, vdi) in self.target.disk_uuids(&reference).await {
                    hashed.insert(device, self.target.hash(&vdi).await);
                }
                digests = Some(hashed);
            }
            found.push((vm.uuid, valid, digests));
        }
        found
    }

    /// Check the invariants after a cycle whose snapshot held `expected` (the guest content
    /// before it); the replicas known valid are hashed again only if `rehash` (after a fault:
    /// a clean run has no more chance to damage them, and chains grow long). Returns how many
    /// replicas are left marked as importing.
    async fn check(
        &self,
        model: &mut Model,
        expected: &BTreeMap<String, String>,
        when: &str,
        rehash: bool,
    ) -> usize {
        model.cycles += 1;
        let replicas = self
            .replicas(|uuid| rehash || !model.replicas.contains_key(uuid))
            .await;
        let mut interrupted = 0;
        let present: BTreeSet<&String> = replicas.iter().map(|(uuid, _, _)| uuid).collect();
        // The newest valid replica is never removed by a later cycle (retention keeps it).
        if let Some((newest, _)) = model.replicas.iter().max_by_key(|(_, (order, _))| *order)
            && !present.contains(newest)
        {
            model
                .corrupted
                .push(format!("{when}: the newest replica {newest} vanished"));
        }
        model.replicas.retain(|uuid, _| present.contains(uuid));
        for (uuid, valid, digests) in replicas {
            match model.replicas.get(&uuid) {
                Some((_, known)) if digests.as_ref().is_some_and(|d| d != known) => {
                    model.corrupted.push(format!(
                        "{when}: replica {uuid} changed: {known:?} -> {digests:?}"
                    ))
                }
                Some(_) if !valid => model
                    .corrupted
                    .push(format!("{when}: replica {uuid} lost its committed markers")),
                Some(_) => {}
                None if !valid => interrupted += 1,
                None if digests.as_ref() == Some(expected) => {
                    model
                        .replicas
                        .insert(uuid, (model.cycles, expected.clone()));
                }
                None => model.falsely_valid.push(format!(
                    "{when}: replica {uuid} looks valid but holds {digests:?}, not {expected:?}"
                )),
            }
        }
        interrupted
    }

    /// After a recovery run: nothing left over on either host, retention honoured.
    async fn check_clean(&self, model: &Model, when: &str) {
        let leaks = self.target.unused_vdis().await;
        assert!(
            leaks.is_empty(),
            "{when}: VDIs leaked on the target: {leaks:?}"
        );
        let leaks = self.source.unused_vdis().await;
        assert!(
            leaks.is_empty(),
            "{when}: VDIs leaked on the source: {leaks:?}"
        );
        let replicas = self.replicas(|_| false).await;
        assert!(
            replicas.iter().all(|(_, valid, _)| *valid),
            "{when}: an interrupted replica survived the recovery run"
        );
        assert_eq!(
            model.replicas.len(),
            (RETENTION as usize).min(model.cycles),
            "{when}: retention keeps {RETENTION} replicas"
        );
        let snapshots = self
            .source
            .client
            .get_all_records::<VmRecord>()
            .await
            .unwrap()
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
            snapshots.len(),
            1,
            "{when}: the source keeps the base snapshot only: {snapshots:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_campaign() {
    let began = std::time::Instant::now();
    let campaign = Campaign::start().await;
    let mut rng = Rng(SEED);
    let mut model = Model {
        replicas: BTreeMap::new(),
        cycles: 0,
        corrupted: Vec::new(),
        falsely_valid: Vec::new(),
    };
    let (mut injected, mut recovered, mut absorbed) = (0, 0, 0);

    // Two clean cycles first, so that retention has a victim from the first fault on.
    for round in 0..2 {
        campaign.guest_writes(&mut rng, 512 * 1024).await;
        let expected = campaign.source_digests().await;
        let mode = campaign.cycle().await.unwrap();
        assert_eq!(mode, if round == 0 { "full" } else { "delta" });
        campaign.check(&mut model, &expected, "setup", false).await;
    }

    for round in 0..RPC_FAULTS {
        let fault = pick_fault(round, &mut rng);
        let when = format!("fault {round} ({})", fault.label);
        campaign.guest_writes(&mut rng, 1024 * 1024).await;
        let expected = campaign.source_digests().await;
        campaign.host(fault.side).inject(fault.spec.clone()).await;
        let outcome = campaign.cycle().await;
        campaign.source.clear_faults().await;
        campaign.target.clear_faults().await;
        injected += 1;
        match outcome {
            Ok(_) if fault.may_be_absorbed => absorbed += 1,
            Ok(mode) => panic!("{when}: the cycle succeeded ({mode}) despite the fault"),
            Err(error) => check_error(&error, &fault, &campaign.vm_uuid, &when),
        }
        let interrupted = campaign.check(&mut model, &expected, &when, true).await;
        assert_eq!(
            interrupted, 0,
            "{when}: a failed cycle left an importing replica"
        );

        // Recovery: a run without a fault, a delta since the base survived.
        campaign.guest_writes(&mut rng, 256 * 1024).await;
        let expected = campaign.source_digests().await;
        match campaign.cycle().await {
            Ok("delta") => recovered += 1,
            Ok(mode) => panic!("{when}: the recovery run was a {mode}, not a delta"),
            Err(e) => panic!("{when}: the recovery run failed: {e}"),
        }
        campaign
            .check(&mut model, &expected, &format!("{when}, recovery"), false)
            .await;
        campaign.check_clean(&model, &when).await;
    }

    for kill in 0..KILLS {
        let when = format!("kill {kill}");
        // Every block changed (8 MiB to send) and a 1 MiB/s limit make the run last about
        // 8 s, well past the latest kill at 2 s, however fast the machine.
        campaign.rewrite_every_block(&mut rng).await;
        let expected = campaign.source_digests().await;
        campaign
            .source
            .inject(vec![
                ("kind", Value::from("bandwidth")),
                ("bytes_per_second", int(MIB)),
                ("on", Value::from("export")),
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
        campaign.source.clear_faults().await;
        injected += 1;
        campaign
            .check(
                &mut model,
                &expected,
                &format!("{when} after {delay} ms"),
                true,
            )
            .await;

        let expected = campaign.source_digests().await;
        let run = campaign.spawn_replicate().wait_with_output().await.unwrap();
        let doc: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap_or_default();
        assert!(
            run.status.success(),
            "{when}: the recovery run failed: {doc} {}",
            String::from_utf8_lossy(&run.stderr)
        );
        assert_eq!(
            doc["vms"][0]["report"]["mode"], "delta",
            "{when}: the recovery run is a delta: {doc}"
        );
        recovered += 1;
        campaign
            .check(&mut model, &expected, &format!("{when}, recovery"), false)
            .await;
        campaign.check_clean(&model, &when).await;
    }

    println!("campaign took {:?}", began.elapsed());
    println!("import stalls ridden out without failing the cycle: {absorbed}");
    println!(
        "faults: {injected} injected, {recovered} recovered, {} corrupted, {} falsely valid",
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
    assert_eq!(recovered, injected);
    assert!(injected >= 60);
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
