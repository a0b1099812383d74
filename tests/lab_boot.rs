//! Booting guests, VTPMs and NVRAM on the lab host, through vhdsync's own XAPI client over
//! HTTP: guest metrics one boot delay after `VM.start` (seen by an `event.from` waiter), the
//! `boot_failure` fault (hang, crash), VTPM records, contents and errors and how clones and
//! snapshots copy them, the NVRAM messages, `lab init --vm` with `cd`, `uefi` and `vtpm`, and
//! what survives a restart.

mod common;

use common::lab_serve::{LabHost, serve};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use vhdsync::lab::InitConfig;
use vhdsync::xapi::rpc::{Value, XapiFault};

const NULL: &str = "OpaqueRef:NULL";
/// Boot delays short enough for a fast suite, long enough to see a VM before it reports.
const SHORT: Duration = Duration::from_millis(150);
/// How long a test waits for something that should happen within a boot delay or two.
const PATIENCE: Duration = Duration::from_secs(10);

type Host = LabHost;

/// A lab host whose guests report `boot_delay` after `VM.start`.
async fn host(specs: &[&str], boot_delay: Duration) -> Host {
    let config = InitConfig {
        boot_delay,
        ..InitConfig::default()
    };
    LabHost::start(specs, &config, false).await
}

impl LabHost {
    async fn start_vm(&self, vm: &str) {
        self.ok("VM.start", vec![vm.into(), false.into(), false.into()])
            .await;
    }

    async fn power_state(&self, vm: &str) -> String {
        self.text("VM.get_power_state", vec![vm.into()]).await
    }

    /// The one VTPM of `vm`.
    async fn vtpm_of(&self, vm: &str) -> String {
        let vtpms = strings(&self.ok("VM.get_VTPMs", vec![vm.into()]).await);
        assert_eq!(vtpms.len(), 1, "{vm}");
        vtpms[0].clone()
    }

    async fn networks_of(&self, metrics: &str) -> Value {
        let record = self
            .ok("VM_guest_metrics.get_record", vec![metrics.into()])
            .await;
        record.get("networks").unwrap().clone()
    }

    async fn guest_metrics(&self, vm: &str) -> String {
        self.text("VM.get_guest_metrics", vec![vm.into()]).await
    }

    /// Wait with `event.from`, as a client waiting for a boot does, until `vm`'s record
    /// satisfies `done`; the record then.
    async fn wait_for_vm(&self, vm: &str, done: impl Fn(&Value) -> bool) -> Value {
        let classes = Value::from(vec![format!("vm/{vm}")]);
        let mut token = String::new();
        let deadline = Instant::now() + PATIENCE;
        loop {
            let batch = self
                .ok(
                    "event.from",
                    vec![classes.clone(), token.as_str().into(), Value::Double(5.0)],
                )
                .await;
            token = text(&batch, "token");
            let events = batch.get("events").and_then(Value::as_array).unwrap();
            if let Some(record) = events.iter().rev().find_map(|e| e.get("snapshot"))
                && done(record)
            {
                return record.clone();
            }
            assert!(Instant::now() < deadline, "{vm} never got there");
        }
    }
}

fn text(record: &Value, field: &str) -> String {
    record
        .get(field)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("{field} is not text in {record:?}"))
        .to_owned()
}

fn flag(record: &Value, field: &str) -> bool {
    record
        .get(field)
        .and_then(Value::as_bool)
        .unwrap_or_else(|| panic!("{field} is not a bool in {record:?}"))
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect()
}

fn assert_fault(fault: XapiFault, code: &str, params: &[&str]) {
    assert_eq!(fault.code, code, "{fault:?}");
    assert_eq!(fault.params, params, "{fault:?}");
}

fn has_metrics(record: &Value) -> bool {
    text(record, "guest_metrics") != NULL
}

#[tokio::test]
async fn guests_report_one_boot_delay_after_start_and_waiters_see_it() {
    let h = host(&["web:4M,vif,vif=backend"], Duration::from_secs(3600)).await;
    let vm = h.vm_named("web");
    // The delay changes at run time; a float is fine.
    h.ok("lab.set_boot_delay", vec![Value::Double(0.3)]).await;
    let delay = h.ok("lab.get_boot_delay", vec![]).await;
    assert_eq!(delay.as_f64(), Some(0.3));
    for (bad, code) in [
        (Value::Int(-1), "INVALID_VALUE"),
        (Value::Int(3601), "INVALID_VALUE"),
        (Value::from("soon"), "FIELD_TYPE_ERROR"),
    ] {
        let fault = h.fault("lab.set_boot_delay", vec![bad]).await;
        assert_eq!(fault.code, code);
    }

    let started = Instant::now();
    h.start_vm(&vm).await;
    assert_eq!(h.power_state(&vm).await, "Running");
    assert_eq!(
        h.guest_metrics(&vm).await,
        NULL,
        "no report before the delay"
    );
    let record = h.wait_for_vm(&vm, has_metrics).await;
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(300), "{waited:?}");
    assert_eq!(text(&record, "power_state"), "Running");

    let metrics = text(&record, "guest_metrics");
    let report = h
        .ok("VM_guest_metrics.get_record", vec![metrics.as_str().into()])
        .await;
    assert!(flag(&report, "PV_drivers_detected"));
    assert!(flag(&report, "PV_drivers_up_to_date"));
    assert!(flag(&report, "live"));
    assert!(!text(report.get("os_version").unwrap(), "name").is_empty());
    assert!(
        report
            .get("PV_drivers_version")
            .unwrap()
            .get("major")
            .is_some()
    );
    let updated = report
        .get("last_updated")
        .and_then(Value::as_datetime)
        .unwrap();
    assert_ne!(updated, "19700101T00:00:00Z");
    // One address per interface, under the keys xapi's guest agent writes.
    let networks = report.get("networks").unwrap();
    for device in ["0", "1"] {
        let ip = text(networks, &format!("{device}/ip"));
        assert!(ip.parse::<std::net::Ipv4Addr>().is_ok(), "{ip}");
        assert_eq!(text(networks, &format!("{device}/ipv4/0")), ip);
        assert!(text(networks, &format!("{device}/ipv6/0")).starts_with("fe80::"));
    }
    assert_ne!(text(networks, "0/ip"), text(networks, "1/ip"));
    assert_eq!(
        text(&report, "uuid"),
        h.text("VM_guest_metrics.get_uuid", vec![metrics.as_str().into()])
            .await
    );
    let all = h.ok("VM_guest_metrics.get_all", vec![]).await;
    assert_eq!(strings(&all), [metrics.as_str()]);
}

#[tokio::test]
async fn a_start_clears_the_last_report_and_a_stop_before_the_report_cancels_it() {
    let h = host(&["web:4M,vif"], Duration::ZERO).await;
    let vm = h.vm_named("web");
    // Without a delay the guest has reported by the time `VM.start` returns.
    h.start_vm(&vm).await;
    let first = h.guest_metrics(&vm).await;
    assert_ne!(first, NULL);
    h.ok("VM.hard_shutdown", vec![vm.as_str().into()]).await;
    assert_eq!(h.power_state(&vm).await, "Halted");
    // As in xapi, the last report stays while the VM is down…
    assert_eq!(h.guest_metrics(&vm).await, first);

    // …and the next start deletes it before the guest reports again.
    h.ok(
        "lab.set_boot_delay",
        vec![Value::Double(SHORT.as_secs_f64())],
    )
    .await;
    h.start_vm(&vm).await;
    assert_eq!(h.guest_metrics(&vm).await, NULL);
    let gone = h
        .fault("VM_guest_metrics.get_record", vec![first.as_str().into()])
        .await;
    assert_fault(gone, "HANDLE_INVALID", &["VM_guest_metrics", &first]);
    let second = text(&h.wait_for_vm(&vm, has_metrics).await, "guest_metrics");
    assert_ne!(second, first);

    // A VM stopped before its guest reports never gets a report from that boot.
    h.ok("VM.clean_shutdown", vec![vm.as_str().into()]).await;
    h.start_vm(&vm).await;
    h.ok("VM.hard_shutdown", vec![vm.as_str().into()]).await;
    tokio::time::sleep(SHORT * 3).await;
    assert_eq!(h.power_state(&vm).await, "Halted");
    assert_eq!(h.guest_metrics(&vm).await, NULL);

    // A VM started paused does not boot.
    h.ok(
        "VM.start",
        vec![vm.as_str().into(), true.into(), false.into()],
    )
    .await;
    tokio::time::sleep(SHORT * 3).await;
    assert_eq!(h.power_state(&vm).await, "Paused");
    assert_eq!(h.guest_metrics(&vm).await, NULL);
}

#[tokio::test]
async fn boot_failures_hang_or_crash_the_guest() {
    let h = host(&["hung:4M", "crashed:4M", "fine:4M"], SHORT).await;
    let (hung, crashed, fine) = (
        h.vm_named("hung"),
        h.vm_named("crashed"),
        h.vm_named("fine"),
    );

    // A hung boot: running, and no report ever.
    let spec = Value::from(std::collections::BTreeMap::from([(
        "kind",
        Value::from("boot_failure"),
    )]));
    h.ok("lab.inject_fault", vec![spec]).await;
    h.start_vm(&hung).await;
    assert!(
        h.ok("lab.list_faults", vec![])
            .await
            .as_array()
            .unwrap()
            .is_empty()
    );
    tokio::time::sleep(SHORT * 4).await;
    assert_eq!(h.power_state(&hung).await, "Running");
    assert_eq!(h.guest_metrics(&hung).await, NULL);

    // A crash, restricted to one VM by uuid: another VM's start does not meet it.
    let crashed_uuid = h.text("VM.get_uuid", vec![crashed.as_str().into()]).await;
    let spec = Value::from(std::collections::BTreeMap::from([
        ("kind", Value::from("boot_failure")),
        ("mode", Value::from("crash")),
        ("vm", Value::from(crashed_uuid.as_str())),
    ]));
    h.ok("lab.inject_fault", vec![spec]).await;
    let listed = h.ok("lab.list_faults", vec![]).await;
    let listed = &listed.as_array().unwrap()[0];
    assert_eq!(text(listed, "mode"), "crash");
    assert_eq!(text(listed, "vm"), crashed_uuid);
    h.start_vm(&fine).await;
    h.start_vm(&crashed).await;
    assert_eq!(h.power_state(&crashed).await, "Running");
    let record = h
        .wait_for_vm(&crashed, |r| text(r, "power_state") == "Halted")
        .await;
    assert!(!has_metrics(&record));
    h.wait_for_vm(&fine, has_metrics).await;

    // A restarted crashed VM boots normally: the fault was one-shot.
    h.start_vm(&crashed).await;
    h.wait_for_vm(&crashed, has_metrics).await;

    // Unknown VMs and modes are refused, naming the field.
    let bad = Value::from(std::collections::BTreeMap::from([
        ("kind", Value::from("boot_failure")),
        ("vm", Value::from("OpaqueRef:nope")),
    ]));
    let fault = h.fault("lab.inject_fault", vec![bad]).await;
    assert_fault(fault, "HANDLE_INVALID", &["VM", "OpaqueRef:nope"]);
}

#[tokio::test]
async fn vtpms_are_created_read_written_and_destroyed_as_in_xapi() {
    let h = host(&["web:4M", "db:4M"], Duration::ZERO).await;
    let (web, db) = (h.vm_named("web"), h.vm_named("db"));
    let vtpm = h
        .text("VTPM.create", vec![web.as_str().into(), false.into()])
        .await;
    let record = h.ok("VTPM.get_record", vec![vtpm.as_str().into()]).await;
    assert_eq!(text(&record, "VM"), web);
    assert_eq!(text(&record, "backend"), NULL);
    assert_eq!(text(&record, "persistence_backend"), "xapi");
    assert!(!flag(&record, "is_unique"));
    assert!(!flag(&record, "is_protected"));
    assert_eq!(
        strings(record.get("allowed_operations").unwrap()),
        ["destroy"]
    );
    assert!(
        record.get("contents").is_none(),
        "the contents are a secret"
    );
    let on_vm = h.ok("VM.get_VTPMs", vec![web.as_str().into()]).await;
    assert_eq!(strings(&on_vm), [vtpm.as_str()]);

    // One per VM.
    let fault = h
        .fault("VTPM.create", vec![web.as_str().into(), true.into()])
        .await;
    assert_fault(fault, "VTPM_MAX_AMOUNT_REACHED", &["1"]);

    // Contents: empty at first, base64 in and out, bounded.
    assert_eq!(
        h.text("VTPM.get_contents", vec![vtpm.as_str().into()])
            .await,
        ""
    );
    let contents = STANDARD.encode(b"tpm state");
    h.ok(
        "VTPM.set_contents",
        vec![vtpm.as_str().into(), contents.as_str().into()],
    )
    .await;
    assert_eq!(
        h.text("VTPM.get_contents", vec![vtpm.as_str().into()])
            .await,
        contents
    );
    let fault = h
        .fault(
            "VTPM.set_contents",
            vec![vtpm.as_str().into(), "not base64!".into()],
        )
        .await;
    assert_eq!(fault.code, "INTERNAL_ERROR");
    let huge = STANDARD.encode(vec![0u8; (256 << 10) + 1]);
    let fault = h
        .fault(
            "VTPM.set_contents",
            vec![vtpm.as_str().into(), huge.as_str().into()],
        )
        .await;
    assert_eq!(
        (fault.code.as_str(), fault.params[0].as_str()),
        ("INVALID_VALUE", "contents")
    );

    // A running VM's VTPM stays; one cannot be added to a running VM.
    h.start_vm(&web).await;
    h.start_vm(&db).await;
    let record = h.ok("VTPM.get_record", vec![vtpm.as_str().into()]).await;
    assert!(strings(record.get("allowed_operations").unwrap()).is_empty());
    let fault = h.fault("VTPM.destroy", vec![vtpm.as_str().into()]).await;
    assert_fault(fault, "VM_BAD_POWER_STATE", &[&web, "halted", "running"]);
    let fault = h
        .fault("VTPM.create", vec![db.as_str().into(), false.into()])
        .await;
    assert_fault(fault, "VM_BAD_POWER_STATE", &[&db, "halted", "running"]);
    // The guest's TPM writes its state while it runs.
    h.ok("VTPM.set_contents", vec![vtpm.as_str().into(), "".into()])
        .await;

    h.ok("VM.hard_shutdown", vec![web.as_str().into()]).await;
    h.ok("VTPM.destroy", vec![vtpm.as_str().into()]).await;
    let fault = h.fault("VTPM.get_record", vec![vtpm.as_str().into()]).await;
    assert_fault(fault, "HANDLE_INVALID", &["VTPM", &vtpm]);
    assert!(strings(&h.ok("VM.get_VTPMs", vec![web.as_str().into()]).await).is_empty());
}

#[tokio::test]
async fn clones_and_snapshots_copy_vtpms_metrics_and_nvram_as_xapi_does() {
    let h = host(&["plain:4M,vif,uefi,vtpm", "unique:4M"], Duration::ZERO).await;
    let (plain, unique) = (h.vm_named("plain"), h.vm_named("unique"));
    let source_vtpm = h.vtpm_of(&plain).await;
    let contents = h
        .text("VTPM.get_contents", vec![source_vtpm.as_str().into()])
        .await;
    assert!(!contents.is_empty());
    let unique_vtpm = h
        .text("VTPM.create", vec![unique.as_str().into(), true.into()])
        .await;
    h.ok(
        "VTPM.set_contents",
        vec![unique_vtpm.as_str().into(), contents.as_str().into()],
    )
    .await;

    // A clone takes a copy of the contents, and the NVRAM as it is.
    let clone = h
        .text("VM.clone", vec![plain.as_str().into(), "copy".into()])
        .await;
    let clone_vtpm = h.vtpm_of(&clone).await;
    assert_ne!(clone_vtpm, source_vtpm);
    assert_eq!(
        h.text("VTPM.get_contents", vec![clone_vtpm.as_str().into()])
            .await,
        contents
    );
    assert_eq!(
        h.ok("VM.get_NVRAM", vec![clone.as_str().into()]).await,
        h.ok("VM.get_NVRAM", vec![plain.as_str().into()]).await
    );
    // A unique VTPM's contents are never copied.
    let unique_clone = h
        .text("VM.clone", vec![unique.as_str().into(), "copy".into()])
        .await;
    let copied = h.vtpm_of(&unique_clone).await;
    let record = h.ok("VTPM.get_record", vec![copied.as_str().into()]).await;
    assert!(flag(&record, "is_unique"));
    assert_eq!(
        h.text("VTPM.get_contents", vec![copied.as_str().into()])
            .await,
        ""
    );

    // A snapshot of a running VM takes its VTPM and a copy of its guest metrics.
    h.start_vm(&plain).await;
    let metrics = h.guest_metrics(&plain).await;
    assert_ne!(metrics, NULL);
    let snapshot = h
        .text("VM.snapshot", vec![plain.as_str().into(), "snap".into()])
        .await;
    let snapshot_vtpm = h.vtpm_of(&snapshot).await;
    assert_eq!(
        h.text("VTPM.get_contents", vec![snapshot_vtpm.as_str().into()])
            .await,
        contents
    );
    let snapshot_metrics = h.guest_metrics(&snapshot).await;
    assert_ne!(snapshot_metrics, metrics);
    assert_eq!(
        h.networks_of(&snapshot_metrics).await,
        h.networks_of(&metrics).await
    );

    // Destroying a VM destroys its VTPMs and its guest metrics.
    h.ok("VM.destroy", vec![snapshot.as_str().into()]).await;
    for (class, gone) in [
        ("VTPM", &snapshot_vtpm),
        ("VM_guest_metrics", &snapshot_metrics),
    ] {
        let fault = h
            .fault(&format!("{class}.get_record"), vec![gone.as_str().into()])
            .await;
        assert_fault(fault, "HANDLE_INVALID", &[class, gone]);
    }
}

#[tokio::test]
async fn nvram_changes_only_while_halted_but_varstored_writes_any_time() {
    let h = host(&["web:4M"], Duration::from_secs(3600)).await;
    let vm = h.vm_named("web");
    let listed = h
        .client
        .call_without_session("system.listMethods", vec![])
        .await
        .unwrap();
    let listed = strings(&listed);
    for method in [
        "VM.set_NVRAM",
        "VM.add_to_NVRAM",
        "VM.remove_from_NVRAM",
        "VM.set_NVRAM_EFI_variables",
        "VTPM.create",
        "VTPM.get_contents",
        "lab.set_boot_delay",
    ] {
        assert!(listed.contains(&method.to_owned()), "{method}");
    }
    let map = |pairs: &[(&str, &str)]| {
        Value::Struct(
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), Value::from(*v)))
                .collect(),
        )
    };
    h.ok(
        "VM.set_NVRAM",
        vec![vm.as_str().into(), map(&[("EFI-variables", "AAAA")])],
    )
    .await;
    h.ok(
        "VM.add_to_NVRAM",
        vec![
            vm.as_str().into(),
            "EFI-variables-on-boot".into(),
            "persist".into(),
        ],
    )
    .await;
    let fault = h
        .fault(
            "VM.add_to_NVRAM",
            vec![vm.as_str().into(), "EFI-variables".into(), "BBBB".into()],
        )
        .await;
    assert_eq!(fault.code, "MAP_DUPLICATE_KEY");
    h.ok(
        "VM.remove_from_NVRAM",
        vec![vm.as_str().into(), "EFI-variables-on-boot".into()],
    )
    .await;
    assert_eq!(
        h.ok("VM.get_NVRAM", vec![vm.as_str().into()]).await,
        map(&[("EFI-variables", "AAAA")])
    );

    h.start_vm(&vm).await;
    let refused = [
        ("VM.set_NVRAM", vec![vm.as_str().into(), map(&[])]),
        (
            "VM.add_to_NVRAM",
            vec![vm.as_str().into(), "k".into(), "v".into()],
        ),
        (
            "VM.remove_from_NVRAM",
            vec![vm.as_str().into(), "EFI-variables".into()],
        ),
    ];
    for (method, params) in refused {
        let fault = h.fault(method, params).await;
        assert_fault(fault, "VM_BAD_POWER_STATE", &[&vm, "halted", "running"]);
    }
    h.ok(
        "VM.set_NVRAM_EFI_variables",
        vec![vm.as_str().into(), "CCCC".into()],
    )
    .await;
    assert_eq!(
        h.ok("VM.get_NVRAM", vec![vm.as_str().into()]).await,
        map(&[("EFI-variables", "CCCC")])
    );
}

#[tokio::test]
async fn running_guests_vtpms_and_the_boot_delay_survive_a_restart() {
    let h = host(&["up:4M,vtpm", "booting:4M"], Duration::ZERO).await;
    let (up, booting) = (h.vm_named("up"), h.vm_named("booting"));
    h.start_vm(&up).await;
    let metrics = h.guest_metrics(&up).await;
    let vtpm = h.vtpm_of(&up).await;
    let contents = h
        .text("VTPM.get_contents", vec![vtpm.as_str().into()])
        .await;
    // Caught mid-boot by the restart.
    h.ok("lab.set_boot_delay", vec![Value::Int(3600)]).await;
    h.start_vm(&booting).await;
    h.ok(
        "lab.set_boot_delay",
        vec![Value::Double(SHORT.as_secs_f64())],
    )
    .await;

    let h = h.restart().await;
    assert_eq!(
        h.ok("lab.get_boot_delay", vec![]).await.as_f64(),
        Some(SHORT.as_secs_f64())
    );
    // A toolstack restart: the running VM keeps running with its report…
    assert_eq!(h.power_state(&up).await, "Running");
    assert_eq!(h.guest_metrics(&up).await, metrics);
    assert!(flag(
        &h.ok("VM_guest_metrics.get_record", vec![metrics.as_str().into()])
            .await,
        "PV_drivers_detected"
    ));
    assert_eq!(
        h.text("VTPM.get_contents", vec![vtpm.as_str().into()])
            .await,
        contents
    );
    // …and the one that was booting reports one boot delay after the restart.
    assert_eq!(h.power_state(&booting).await, "Running");
    h.wait_for_vm(&booting, has_metrics).await;
}

#[test]
fn lab_init_cli_makes_cd_drives_uefi_firmware_and_vtpms() {
    let dir = tempfile::tempdir().unwrap();
    let lab_dir = dir.path().join("lab");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_vhdsync"))
        .args(["lab", "init", "--json", "--boot-delay", "100ms", "--dir"])
        .arg(&lab_dir)
        .args([
            "--vm",
            "web:1G,vif,cd,uefi,vtpm",
            "--vm",
            "win:uefi-secureboot,cd,cd",
            "--vm",
            "old:4M",
        ])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let (web, win, old) = (&report["vms"][0], &report["vms"][1], &report["vms"][2]);
    assert_eq!(web["firmware"], "uefi");
    assert_eq!(web["secure_boot"], false);
    assert_eq!(web["cd_drives"][0]["userdevice"], "1");
    assert!(web["vtpm"]["ref"].is_string());
    assert_eq!(win["secure_boot"], true);
    let win_cds: Vec<&str> = win["cd_drives"]
        .as_array()
        .unwrap()
        .iter()
        .map(|cd| cd["userdevice"].as_str().unwrap())
        .collect();
    assert_eq!(win_cds, ["0", "1"]);
    assert_eq!(old["firmware"], "bios");
    assert!(old["vtpm"].is_null());

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let (_lab, _server, client) = serve(&lab_dir, false).await;
        let call = |method: &'static str, params: Vec<Value>| {
            let client = &client;
            async move { client.call(method, params).await.unwrap() }
        };
        let web_ref = web["ref"].as_str().unwrap();
        let cd = web["cd_drives"][0]["vbd"]["ref"].as_str().unwrap();
        let vbd = call("VBD.get_record", vec![cd.into()]).await;
        assert_eq!(text(&vbd, "type"), "CD");
        assert!(flag(&vbd, "empty"));
        assert_eq!(text(&vbd, "VDI"), NULL);
        assert_eq!(text(&vbd, "mode"), "RO");
        assert_eq!(text(&vbd, "VM"), web_ref);

        let vm = call("VM.get_record", vec![web_ref.into()]).await;
        assert_eq!(text(vm.get("HVM_boot_params").unwrap(), "firmware"), "uefi");
        assert_eq!(text(vm.get("platform").unwrap(), "secureboot"), "false");
        let variables = text(vm.get("NVRAM").unwrap(), "EFI-variables");
        assert_eq!(STANDARD.decode(variables).unwrap().len(), 4096);
        let win_vm = call("VM.get_record", vec![win["ref"].as_str().unwrap().into()]).await;
        assert_eq!(text(win_vm.get("platform").unwrap(), "secureboot"), "true");
        let old_vm = call("VM.get_record", vec![old["ref"].as_str().unwrap().into()]).await;
        assert!(old_vm.get("NVRAM").unwrap().as_struct().unwrap().is_empty());
        assert!(
            old_vm
                .get("HVM_boot_params")
                .unwrap()
                .get("firmware")
                .is_none()
        );

        let vtpm = web["vtpm"]["ref"].as_str().unwrap();
        assert_eq!(strings(vm.get("VTPMs").unwrap()), [vtpm]);
        let contents = call("VTPM.get_contents", vec![vtpm.into()]).await;
        assert_eq!(
            STANDARD.decode(contents.as_str().unwrap()).unwrap().len(),
            4096
        );

        // The boot delay given at init.
        let delay = call("lab.get_boot_delay", vec![]).await;
        assert_eq!(delay.as_f64(), Some(0.1));
        call("VM.start", vec![web_ref.into(), false.into(), false.into()]).await;
        let deadline = Instant::now() + PATIENCE;
        while call("VM.get_guest_metrics", vec![web_ref.into()]).await == Value::from(NULL) {
            assert!(Instant::now() < deadline, "web never reported");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });

    // A second firmware item is a usage error.
    let bad = std::process::Command::new(env!("CARGO_BIN_EXE_vhdsync"))
        .args(["lab", "init", "--dir"])
        .arg(dir.path().join("other"))
        .args(["--vm", "web:uefi,uefi"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("firmware is given twice"));
}
