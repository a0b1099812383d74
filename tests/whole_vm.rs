//! Whole-VM replicas (issue 19): a VM with two interfaces on two networks, a UEFI NVRAM
//! blob, an empty CD drive and a `[NOBAK]` disk, replicated; then checked through XAPI calls
//! on the target. Interfaces follow the network mapping rules and keep their MACs; a change
//! on the source reaches the live replica updated in place; a wrong `network_map` fails the
//! run before the source is snapshotted.

mod common;

use std::collections::BTreeMap;

use common::lab_pair::{Host, MIB, replicate, vhdsync, write_job};
use vhdsync::xapi::ops::NewVif;
use vhdsync::xapi::records::{NetworkRecord, VbdRecord, VifRecord, VmRecord};
use vhdsync::xapi::rpc::Value;

const MANAGEMENT: &str = "Pool-wide network associated with eth0";

async fn network_named(host: &Host, name: &str) -> String {
    host.client
        .get_all_records::<NetworkRecord>()
        .await
        .unwrap()
        .into_iter()
        .find(|(_, n)| n.name_label == name)
        .map(|(r, _)| r)
        .unwrap_or_else(|| panic!("no network {name}"))
}

async fn create_network(host: &Host, name: &str) -> String {
    let record: BTreeMap<String, Value> = [
        ("name_label", Value::from(name)),
        ("name_description", Value::from("")),
        ("MTU", Value::Int(1500)),
        ("other_config", Value::Struct(BTreeMap::new())),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    host.call("network.create", vec![Value::Struct(record)])
        .await
        .as_str()
        .unwrap()
        .to_owned()
}

async fn add_vif(host: &Host, vm: &str, network: &str, device: &str, mac: &str) {
    let like = VifRecord {
        mtu: 1500,
        ..VifRecord::default()
    };
    host.client
        .create_vif(&NewVif {
            vm,
            network,
            device,
            mac,
            like: &like,
        })
        .await
        .unwrap();
}

/// (device, network name, MAC) of a VM's interfaces.
async fn interfaces(host: &Host, vm_ref: &str) -> Vec<(String, String, String)> {
    let vm: VmRecord = host.vm(vm_ref).await;
    let mut out = Vec::new();
    for (_, vif) in host.client.vm_vifs(&vm).await.unwrap() {
        let network: NetworkRecord = host.client.get_record(&vif.network).await.unwrap();
        out.push((vif.device, network.name_label, vif.mac.to_lowercase()));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whole_vm_is_replicated_with_its_devices() {
    let source = Host::start(&[("web01", &[8 * MIB, 4 * MIB])]).await;
    let target = Host::start(&[]).await;
    let vm = &source.report.vms[0];
    let vm_ref = vm.ids.reference.clone();
    // Two interfaces: the management network, and "dmz", which the target has too.
    create_network(&source, "dmz").await;
    create_network(&target, "dmz").await;
    let management = network_named(&source, MANAGEMENT).await;
    let dmz = network_named(&source, "dmz").await;
    add_vif(&source, &vm_ref, &management, "0", "02:00:00:00:00:0a").await;
    add_vif(&source, &vm_ref, &dmz, "1", "02:00:00:00:00:0b").await;
    // UEFI variables, an empty CD drive, a [NOBAK] disk.
    let blob = "ZmFrZSBFRkkgdmFyaWFibGVzIGJsb2I=";
    let nvram: BTreeMap<String, Value> = [("EFI-variables".to_owned(), Value::from(blob))].into();
    source
        .call(
            "VM.set_NVRAM",
            vec![vm_ref.as_str().into(), Value::Struct(nvram)],
        )
        .await;
    source
        .client
        .attach_empty_cd(&vm_ref, "3", false)
        .await
        .unwrap();
    let nobak = vm.disks[1].vdi.reference.clone();
    source
        .call(
            "VDI.set_name_label",
            vec![nobak.as_str().into(), "scratch [NOBAK]".into()],
        )
        .await;
    source
        .write(&vm.disks[0].vdi.reference, 0, MIB, Some(1))
        .await;
    source.write(&nobak, 0, MIB, Some(2)).await;

    let dir = tempfile::tempdir().unwrap();
    let job = write_job(dir.path(), &source, &target, &vm.ids.uuid, 2);
    let r = replicate(&job).await;
    assert_eq!(r["mode"], "full", "{r:#}");
    let rules: Vec<&str> = r["interfaces"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["rule"].as_str().unwrap())
        .collect();
    assert_eq!(rules, ["same_name_and_vlan", "same_name_and_vlan"], "{r:#}");
    assert_eq!(r["skipped_disks"][0]["userdevice"], "1", "{r:#}");
    assert_eq!(r["disks"].as_array().unwrap().len(), 1);

    // Checked through XAPI on the target.
    let live = target
        .text("VM.get_by_uuid", &[r["replica"].as_str().unwrap()])
        .await;
    assert_eq!(
        interfaces(&target, &live).await,
        [
            (
                "0".to_owned(),
                MANAGEMENT.to_owned(),
                "02:00:00:00:00:0a".to_owned()
            ),
            (
                "1".to_owned(),
                "dmz".to_owned(),
                "02:00:00:00:00:0b".to_owned()
            ),
        ]
    );
    let nvram = target
        .call("VM.get_NVRAM", vec![live.as_str().into()])
        .await;
    assert_eq!(
        nvram.as_struct().unwrap()["EFI-variables"].as_str(),
        Some(blob)
    );
    let record: VmRecord = target.vm(&live).await;
    let mut cds = 0;
    for vbd in &record.vbds {
        let vbd: VbdRecord = target.client.get_record(vbd).await.unwrap();
        if vbd.kind == "CD" {
            assert!(vbd.empty);
            assert_eq!(vbd.userdevice, "3");
            cds += 1;
        }
    }
    assert_eq!(cds, 1, "one empty CD drive");
    assert_eq!(
        target.disks(&live).await.len(),
        1,
        "no copy of the [NOBAK] disk"
    );
    // No VDI on the target holds the excluded disk's content.
    let excluded = source.hash(&vm.disks[1].vdi.uuid).await;
    for (_, vdi) in target
        .client
        .get_all_records::<vhdsync::xapi::records::VdiRecord>()
        .await
        .unwrap()
    {
        if vdi.managed {
            assert_ne!(target.hash(&vdi.uuid).await, excluded);
        }
    }

    // The health check passes on this replica, and fails cleanly under the boot fault.
    target
        .call("lab.set_boot_delay", vec![Value::Double(0.2)])
        .await;
    let job_arg = job.to_str().unwrap();
    let run = vhdsync(&[
        "health-check",
        "--job",
        job_arg,
        "--timeout",
        "20s",
        "--json",
    ])
    .await;
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    assert_eq!(run.json["checks"][0]["passed"], true, "{}", run.stdout);
    let spec: BTreeMap<String, Value> = [("kind".to_owned(), Value::from("boot_failure"))].into();
    target
        .call("lab.inject_fault", vec![Value::Struct(spec)])
        .await;
    let vms_before = target.vms().await.len();
    let run = vhdsync(&[
        "health-check",
        "--job",
        job_arg,
        "--timeout",
        "2s",
        "--json",
    ])
    .await;
    assert_eq!(run.code, 1, "{}{}", run.stdout, run.stderr);
    assert_eq!(run.json["checks"][0]["passed"], false, "{}", run.stdout);
    assert_eq!(target.vms().await.len(), vms_before, "the clone is removed");
    target.call("lab.clear_faults", vec![]).await;

    // The source's interface 1 gets a new MAC and interface 2 appears: the live replica,
    // updated in place, follows.
    let source_vm: VmRecord = source.vm(&vm_ref).await;
    for (reference, vif) in source.client.vm_vifs(&source_vm).await.unwrap() {
        if vif.device == "1" {
            source.client.destroy_vif(&reference).await.unwrap();
        }
    }
    add_vif(&source, &vm_ref, &dmz, "1", "02:00:00:00:00:1b").await;
    add_vif(&source, &vm_ref, &management, "2", "02:00:00:00:00:0c").await;
    source
        .write(&vm.disks[0].vdi.reference, MIB, MIB, Some(3))
        .await;
    let r = replicate(&job).await;
    assert_eq!(
        (r["mode"].as_str(), r["layout"].as_str()),
        (Some("delta"), Some("in_place")),
        "{r:#}"
    );
    assert_eq!(
        interfaces(&target, &live).await,
        [
            (
                "0".to_owned(),
                MANAGEMENT.to_owned(),
                "02:00:00:00:00:0a".to_owned()
            ),
            (
                "1".to_owned(),
                "dmz".to_owned(),
                "02:00:00:00:00:1b".to_owned()
            ),
            (
                "2".to_owned(),
                MANAGEMENT.to_owned(),
                "02:00:00:00:00:0c".to_owned()
            ),
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_map_new_macs_and_the_default_network() {
    let source = Host::start(&[("web01", &[4 * MIB])]).await;
    let target = Host::start(&[]).await;
    let vm = &source.report.vms[0];
    let vm_ref = vm.ids.reference.clone();
    let lan = create_network(&source, "lan").await;
    let backup = create_network(&source, "backup").await;
    create_network(&target, "dr-backup").await;
    add_vif(&source, &vm_ref, &lan, "0", "02:00:00:00:01:00").await;
    add_vif(&source, &vm_ref, &backup, "1", "02:00:00:00:01:01").await;
    let dir = tempfile::tempdir().unwrap();
    let job = write_job(dir.path(), &source, &target, &vm.ids.uuid, 2);

    // A map to a network the target lacks is a configuration error: the checks before the
    // run find it, exit 2, and nothing is touched.
    let text = std::fs::read_to_string(&job).unwrap();
    std::fs::write(
        &job,
        format!("{text}new_mac_addresses = true\n[network_map]\nbackup = \"nowhere\"\n"),
    )
    .unwrap();
    let run = vhdsync(&["replicate", "--job", job.to_str().unwrap(), "--json"]).await;
    assert_eq!(run.code, 2, "{}", run.stdout);
    let error = run.json["vms"][0]["error"].as_str().unwrap();
    assert!(
        error.contains("nowhere") && error.contains("interface 1"),
        "{error}"
    );
    let snapshots = source
        .vms()
        .await
        .into_iter()
        .filter(|(_, v)| v.is_a_snapshot)
        .count();
    assert_eq!(snapshots, 0, "no snapshot taken");

    std::fs::write(
        &job,
        format!("{text}new_mac_addresses = true\n[network_map]\nbackup = \"dr-backup\"\n"),
    )
    .unwrap();
    let r = replicate(&job).await;
    let nics = r["interfaces"].as_array().unwrap();
    assert_eq!(nics[0]["rule"], "default", "{r:#}");
    assert_eq!(nics[0]["target_network_name"], MANAGEMENT);
    assert_eq!(nics[1]["rule"], "network_map");
    assert_eq!(nics[1]["target_network_name"], "dr-backup");
    assert!(
        r["notes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n.as_str().unwrap().contains("default network")),
        "{r:#}"
    );
    let live = target
        .text("VM.get_by_uuid", &[r["replica"].as_str().unwrap()])
        .await;
    let got = interfaces(&target, &live).await;
    assert_eq!(got.len(), 2);
    assert!(
        got.iter()
            .all(|(_, _, mac)| !mac.starts_with("02:00:00:00:01")),
        "new MACs: {got:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failovers_keep_the_interfaces_and_a_rehearsal_can_be_isolated() {
    let source = Host::start(&[("web01", &[4 * MIB])]).await;
    let target = Host::start(&[]).await;
    let vm = &source.report.vms[0];
    let management = network_named(&source, MANAGEMENT).await;
    add_vif(
        &source,
        &vm.ids.reference,
        &management,
        "0",
        "02:00:00:00:02:00",
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let job = write_job(dir.path(), &source, &target, &vm.ids.uuid, 2);
    let job_arg = job.to_str().unwrap();
    let r = replicate(&job).await;
    let restore_point = r["target_snapshot"].as_str().unwrap().to_owned();

    // A rehearsal on its own network: same MAC-bearing interface, nothing it can reach.
    let run = vhdsync(&[
        "test-failover",
        "--job",
        job_arg,
        "--vm",
        &vm.ids.uuid,
        "--isolated",
        "--json",
    ])
    .await;
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    let clone = target
        .text("VM.get_by_uuid", &[run.json["clone"].as_str().unwrap()])
        .await;
    let nics = interfaces(&target, &clone).await;
    assert_eq!(nics.len(), 1);
    assert_eq!(nics[0].1, vhdsync::replicate::failover::ISOLATED_NETWORK);
    let run = vhdsync(&["test-failover", "--job", job_arg, "--cleanup", "--json"]).await;
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);

    // Failing over to a target snapshot clones it, with the snapshot's MAC.
    let run = vhdsync(&[
        "failover",
        "--job",
        job_arg,
        "--vm",
        &vm.ids.uuid,
        "--replica",
        &restore_point,
        "--yes",
        "--json",
    ])
    .await;
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    assert_eq!(run.json["kind"], "target_snapshot");
    let promoted = target
        .text("VM.get_by_uuid", &[run.json["replica"].as_str().unwrap()])
        .await;
    assert_eq!(
        interfaces(&target, &promoted).await,
        [(
            "0".to_owned(),
            MANAGEMENT.to_owned(),
            "02:00:00:00:02:00".to_owned()
        )]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_health_check_boots_a_clone_and_fails_cleanly_under_the_boot_fault() {
    let source = Host::start(&[("web01", &[4 * MIB])]).await;
    let target = Host::start(&[]).await;
    target
        .call("lab.set_boot_delay", vec![Value::Double(0.2)])
        .await;
    let vm = &source.report.vms[0];
    let management = network_named(&source, MANAGEMENT).await;
    add_vif(
        &source,
        &vm.ids.reference,
        &management,
        "0",
        "02:00:00:00:03:00",
    )
    .await;
    // A vTPM with contents: copied with them.
    let vtpm = source
        .call(
            "VTPM.create",
            vec![vm.ids.reference.as_str().into(), Value::Bool(false)],
        )
        .await;
    let contents = "dnRwbSBzdGF0ZSBvZiB0aGUgc291cmNl";
    source
        .call(
            "VTPM.set_contents",
            vec![vtpm.clone(), Value::from(contents)],
        )
        .await;
    let dir = tempfile::tempdir().unwrap();
    let job = write_job(dir.path(), &source, &target, &vm.ids.uuid, 2);
    let text = std::fs::read_to_string(&job).unwrap();
    std::fs::write(
        &job,
        format!("{text}health_check = true\nhealth_check_timeout = \"20s\"\n"),
    )
    .unwrap();
    let job_arg = job.to_str().unwrap();

    // After the cycle, the job's health check passes.
    let r = replicate(&job).await;
    assert_eq!(r["health_check"]["passed"], true, "{r:#}");
    let live = target
        .text("VM.get_by_uuid", &[r["replica"].as_str().unwrap()])
        .await;
    let record: VmRecord = target.vm(&live).await;
    assert_eq!(record.vtpms.len(), 1);
    let copied = target
        .call("VTPM.get_contents", vec![record.vtpms[0].as_str().into()])
        .await;
    assert_eq!(copied.as_str(), Some(contents));
    // The clone is gone; its result is on the restore point; status shows it.
    let vms_after = target.vms().await;
    assert!(
        vms_after
            .iter()
            .all(|(_, v)| !v.name_label.starts_with("Health Check"))
    );
    let status = vhdsync(&["status", "--job", job_arg, "--json"]).await;
    let rows = status.json["vms"][0]["replicas"]
        .as_array()
        .unwrap()
        .clone();
    assert!(
        rows.iter().any(|row| row["health_check"]["passed"] == true),
        "{}",
        status.stdout
    );

    // Under the boot fault, the command fails cleanly: exit 1, the clone removed, the
    // failure recorded.
    for mode in ["hang", "crash"] {
        let spec: BTreeMap<String, Value> = [
            ("kind".to_owned(), Value::from("boot_failure")),
            ("mode".to_owned(), Value::from(mode)),
        ]
        .into();
        target
            .call("lab.inject_fault", vec![Value::Struct(spec)])
            .await;
        let run = vhdsync(&[
            "health-check",
            "--job",
            job_arg,
            "--timeout",
            "3s",
            "--json",
        ])
        .await;
        assert_eq!(run.code, 1, "{mode}: {}{}", run.stdout, run.stderr);
        let check = &run.json["checks"][0];
        assert_eq!(check["passed"], false, "{mode}: {check}");
        let vms_now = target.vms().await;
        assert_eq!(
            vms_now.len(),
            vms_after.len(),
            "{mode}: the clone is removed"
        );
        target.call("lab.clear_faults", vec![]).await;
    }
    let status = vhdsync(&["status", "--job", job_arg, "--json"]).await;
    let rows = status.json["vms"][0]["replicas"]
        .as_array()
        .unwrap()
        .clone();
    assert!(
        rows.iter()
            .any(|row| row["health_check"]["passed"] == false),
        "{}",
        status.stdout
    );
    let run = vhdsync(&["health-check", "--job", job_arg, "--timeout", "20s"]).await;
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    assert!(run.stdout.contains("passed"), "{}", run.stdout);
}
