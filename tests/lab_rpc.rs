//! The lab host's RPC surface, called directly (no HTTP): sessions, the generic accessors,
//! VM and VDI life cycles over real VHD chains, tasks, events and persistence.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use tempfile::TempDir;
use vhdsync::lab::db::{Class, Field, Kind};
use vhdsync::lab::{InitReport, Lab, LabError};
use vhdsync::xapi::rpc::xmlrpc::decode_value;
use vhdsync::xapi::rpc::{Call, Response, Value, XapiFault};

const PASSWORD: &str = "lab pw";
const MIB: u64 = 1 << 20;
const BLOCKED: &str = "Start operation for this vm is blocked, clone it if you want to use it.";

/// A lab host with one VM `web01` of two small disks, and a logged-in session.
struct Fixture {
    _dir: TempDir,
    lab: Lab,
    report: InitReport,
    session: String,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let vms = vec![("web01".to_owned(), vec![8 * MIB, 3 * MIB])];
        let report = Lab::init(dir.path(), PASSWORD, &vms).unwrap();
        let lab = Lab::open(dir.path()).unwrap();
        let session = login(&lab);
        Fixture {
            _dir: dir,
            lab,
            report,
            session,
        }
    }

    fn dir(&self) -> &Path {
        self._dir.path()
    }

    /// Call `method` with the session and `params`.
    fn call(&self, method: &str, params: &[Value]) -> Response {
        let mut all = vec![Value::from(self.session.as_str())];
        all.extend_from_slice(params);
        self.lab.handle(&Call::new(method, all))
    }

    fn ok(&self, method: &str, params: &[Value]) -> Value {
        self.call(method, params)
            .unwrap_or_else(|e| panic!("{method}: {e}"))
    }

    fn text(&self, method: &str, params: &[Value]) -> String {
        self.ok(method, params).as_str().unwrap().to_owned()
    }

    fn vm(&self) -> String {
        self.report.vms[0].ids.reference.clone()
    }

    /// The VDI refs of a VM's disks, by userdevice.
    fn disks(&self, vm: &str) -> Vec<(String, String)> {
        let mut disks: Vec<(String, String)> = self
            .ok("VM.get_VBDs", &[vm.into()])
            .as_array()
            .unwrap()
            .iter()
            .map(|vbd| {
                let record = self.ok("VBD.get_record", std::slice::from_ref(vbd));
                (text_of(&record, "userdevice"), text_of(&record, "VDI"))
            })
            .collect();
        disks.sort();
        disks
    }

    fn hash(&self, vdi: &str) -> String {
        self.text("lab.hash", &[vdi.into()])
    }

    fn write(&self, vdi: &str, offset: u64, length: u64, seed: i64) {
        self.ok(
            "lab.write",
            &[vdi.into(), int(offset), int(length), Value::Int(seed)],
        );
    }
}

fn login(lab: &Lab) -> String {
    let call = Call::new(
        "session.login_with_password",
        vec!["root".into(), PASSWORD.into()],
    );
    lab.handle(&call).unwrap().as_str().unwrap().to_owned()
}

fn int(n: u64) -> Value {
    Value::Int(n as i64)
}

fn text_of(record: &Value, field: &str) -> String {
    record
        .get(field)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("{field} is not text in {record:?}"))
        .to_owned()
}

fn fault(response: Response) -> XapiFault {
    response.expect_err("the call should fail")
}

fn assert_fault(response: Response, code: &str, params: &[&str]) {
    let error = fault(response);
    assert_eq!(
        (
            error.code.as_str(),
            error.params.iter().map(String::as_str).collect::<Vec<_>>()
        ),
        (code, params.to_vec())
    );
}

fn map(pairs: &[(&str, &str)]) -> Value {
    Value::Struct(
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), Value::from(*v)))
            .collect(),
    )
}

#[test]
fn login_accepts_two_to_four_params_and_refuses_a_bad_password() {
    let f = Fixture::new();
    let login = |params: Vec<Value>| {
        f.lab
            .handle(&Call::new("session.login_with_password", params))
    };
    for extra in [
        vec![],
        vec!["1.1".into()],
        vec!["1.1".into(), "tests".into()],
    ] {
        let mut params = vec!["root".into(), PASSWORD.into()];
        params.extend(extra);
        let session = login(params).unwrap();
        assert!(f.lab.session_valid(session.as_str().unwrap()));
    }
    assert_fault(
        login(vec!["root".into(), "wrong".into()]),
        "SESSION_AUTHENTICATION_FAILED",
        &["root", "Authentication failure"],
    );
    assert_eq!(
        fault(login(vec!["admin".into(), PASSWORD.into()])).code,
        "SESSION_AUTHENTICATION_FAILED"
    );
    assert_fault(
        login(vec!["root".into()]),
        "MESSAGE_PARAMETER_COUNT_MISMATCH",
        &["session.login_with_password", "4", "1"],
    );
    assert!(f.lab.authenticate_basic("root", PASSWORD));
    assert!(!f.lab.authenticate_basic("root", "lab"));

    let this_host = f.text("session.get_this_host", &[f.session.as_str().into()]);
    assert_eq!(this_host, f.report.host.reference);
    f.ok("session.logout", &[]);
    assert!(!f.lab.session_valid(&f.session));
    assert_fault(
        f.call("VM.get_all", &[]),
        "SESSION_INVALID",
        &[f.session.as_str()],
    );
}

#[test]
fn list_methods_needs_no_session_and_lists_only_what_is_answered() {
    let f = Fixture::new();
    let listed = f
        .lab
        .handle(&Call::new("system.listMethods", vec![]))
        .unwrap();
    let names: BTreeSet<String> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    for class in ["pool", "host", "VM", "VBD", "VDI", "SR", "task"] {
        assert!(
            names.contains(&format!("{class}.get_all_records")),
            "{class}"
        );
    }
    for name in [
        "session.login_with_password",
        "session.logout",
        "VM.snapshot",
        "VM.clone",
        "VM.add_to_other_config",
        "VM.remove_from_blocked_operations",
        "VM.set_name_label",
        "VM.add_tags",
        "VDI.resize",
        "VDI.get_by_name_label",
        "SR.scan",
        "task.set_progress",
        "event.from",
        "event.inject",
        "lab.write",
    ] {
        assert!(names.contains(name), "{name}");
    }
    // Getters only: no setters for read-only fields, no map modifiers for non-maps.
    // Nor a listing of sessions, which xapi does not offer (their refs are credentials).
    for absent in [
        "VM.set_power_state",
        "VM.add_to_name_label",
        "pool.get_by_name_label",
        "task.add_error_info",
        "session.get_all",
        "session.get_all_records",
    ] {
        assert!(!names.contains(absent), "{absent}");
    }
    // Every listed name is routed: without params each one fails on its arity, not its name.
    for name in &names {
        match f.lab.handle(&Call::new(name.as_str(), vec![])) {
            Ok(_) => assert_eq!(name, "system.listMethods"),
            Err(e) => assert_eq!(e.code, "MESSAGE_PARAMETER_COUNT_MISMATCH", "{name}"),
        }
    }
}

#[test]
fn unknown_methods_bad_arity_bad_refs_and_uuid_misses() {
    let f = Fixture::new();
    assert_fault(f.call("VM.fly", &[]), "MESSAGE_METHOD_UNKNOWN", &["VM.fly"]);
    assert_fault(
        f.call("Async.VM.get_record", &[f.vm().into()]),
        "MESSAGE_METHOD_UNKNOWN",
        &["Async.VM.get_record"],
    );
    assert_fault(
        f.call("VM.get_record", &[f.vm().into(), "extra".into()]),
        "MESSAGE_PARAMETER_COUNT_MISMATCH",
        &["VM.get_record", "1", "2"],
    );
    assert_fault(
        f.lab.handle(&Call::new("VM.get_record", vec![])),
        "MESSAGE_PARAMETER_COUNT_MISMATCH",
        &["VM.get_record", "1", "-1"],
    );
    // Trailing defaults may be left out, but not more.
    assert_fault(
        f.call("VM.snapshot", &[f.vm().into()]),
        "MESSAGE_PARAMETER_COUNT_MISMATCH",
        &["VM.snapshot", "3", "1"],
    );
    let dead = "OpaqueRef:00000000-0000-0000-0000-000000000000";
    assert_fault(
        f.call("VM.get_record", &[dead.into()]),
        "HANDLE_INVALID",
        &["VM", dead],
    );
    assert_fault(
        f.call("VDI.get_virtual_size", &[dead.into()]),
        "HANDLE_INVALID",
        &["VDI", dead],
    );
    assert_fault(
        f.call("VM.get_by_uuid", &["no-such-uuid".into()]),
        "UUID_INVALID",
        &["VM", "no-such-uuid"],
    );
    let uuid = &f.report.vms[0].ids.uuid;
    assert_eq!(f.text("VM.get_by_uuid", &[uuid.as_str().into()]), f.vm());
    assert_eq!(
        f.ok("VM.get_by_name_label", &["web01".into()]),
        Value::from(vec![f.vm()])
    );
    assert_fault(
        f.call("VM.set_name_label", &[f.vm().into(), Value::Int(3)]),
        "FIELD_TYPE_ERROR",
        &["name_label"],
    );
}

#[test]
fn records_of_a_class_all_carry_the_same_complete_field_set() {
    let f = Fixture::new();
    // Objects of every kind, in several states.
    let vm = f.vm();
    let snapshot = f.text("VM.snapshot", &[vm.as_str().into(), "snap".into()]);
    f.text("VM.clone", &[snapshot.as_str().into(), "from snap".into()]);
    f.ok(
        "VM.start",
        &[vm.as_str().into(), false.into(), false.into()],
    );
    f.text("task.create", &["t".into(), "d".into()]);
    login(&f.lab);

    for class in ["pool", "host", "VM", "VBD", "VDI", "SR", "task"] {
        let all = f.ok(&format!("{class}.get_all_records"), &[]);
        let records = all.as_struct().unwrap();
        assert!(!records.is_empty(), "{class}");
        let first: BTreeSet<&String> = records
            .values()
            .next()
            .unwrap()
            .as_struct()
            .unwrap()
            .keys()
            .collect();
        for (reference, record) in records {
            let fields = record.as_struct().unwrap();
            assert_eq!(
                fields.keys().collect::<BTreeSet<_>>(),
                first,
                "{class} {reference}"
            );
            assert_eq!(
                f.ok(&format!("{class}.get_record"), &[reference.as_str().into()]),
                *record
            );
        }
    }
    let vm_record = f.ok("VM.get_record", &[vm.as_str().into()]);
    for map_field in [
        "other_config",
        "blocked_operations",
        "xenstore_data",
        "platform",
        "HVM_boot_params",
        "VCPUs_params",
    ] {
        assert!(
            matches!(vm_record.get(map_field), Some(Value::Struct(_))),
            "{map_field}"
        );
    }
    for set_field in ["tags", "VBDs", "snapshots", "VIFs"] {
        assert!(
            matches!(vm_record.get(set_field), Some(Value::Array(_))),
            "{set_field}"
        );
    }
    assert!(matches!(
        vm_record.get("memory_static_max"),
        Some(Value::Int(_))
    ));
    assert!(
        matches!(vm_record.get("snapshot_time"), Some(Value::DateTime(t)) if t == "19700101T00:00:00Z")
    );
    assert_eq!(
        vm_record.get("suspend_VDI"),
        Some(&Value::from("OpaqueRef:NULL"))
    );
    let pool = f.ok("pool.get_all_records", &[]);
    let pool = pool.as_struct().unwrap().values().next().unwrap().clone();
    assert_eq!(text_of(&pool, "master"), f.report.host.reference);
    assert_eq!(text_of(&pool, "default_SR"), f.report.sr.reference);
    assert_eq!(pool.get("other_config"), Some(&map(&[])));
    let host = f.ok(
        "host.get_record",
        &[f.report.host.reference.as_str().into()],
    );
    assert_eq!(text_of(&host, "address"), "127.0.0.1");
    assert_eq!(host.get("API_version_major"), Some(&Value::Int(2)));
    let sr = f.ok("SR.get_record", &[f.report.sr.reference.as_str().into()]);
    assert_eq!(text_of(&sr, "name_label"), "Local storage");
    assert_eq!(text_of(&sr, "type"), "ext");
}

#[test]
fn map_and_set_modifiers_follow_xapi() {
    let f = Fixture::new();
    let vm = f.vm();
    let vm_value = Value::from(vm.as_str());
    f.ok(
        "VM.add_to_other_config",
        &[vm_value.clone(), "xo:copy_of".into(), "abc".into()],
    );
    assert_fault(
        f.call(
            "VM.add_to_other_config",
            &[vm_value.clone(), "xo:copy_of".into(), "def".into()],
        ),
        "MAP_DUPLICATE_KEY",
        &["VM", "other_config", vm.as_str(), "xo:copy_of"],
    );
    // Removing a missing key succeeds: XO always removes before it adds.
    f.ok(
        "VM.remove_from_other_config",
        &[vm_value.clone(), "never-set".into()],
    );
    f.ok(
        "VM.remove_from_other_config",
        &[vm_value.clone(), "xo:copy_of".into()],
    );
    f.ok(
        "VM.add_to_other_config",
        &[vm_value.clone(), "xo:copy_of".into(), "def".into()],
    );
    // Besides the VM's `mac_seed`.
    assert_eq!(
        f.ok("VM.get_other_config", &[vm.as_str().into()])
            .get("xo:copy_of"),
        Some(&Value::from("def"))
    );
    f.ok(
        "VM.set_other_config",
        &[vm_value.clone(), map(&[("a", "1")])],
    );
    assert_eq!(
        f.ok("VM.get_other_config", &[vm.as_str().into()]),
        map(&[("a", "1")])
    );

    f.ok(
        "VM.add_to_blocked_operations",
        &[vm_value.clone(), "start".into(), BLOCKED.into()],
    );
    assert_fault(
        f.call(
            "VM.add_to_blocked_operations",
            &[vm_value.clone(), "fly".into(), "no".into()],
        ),
        "INVALID_VALUE",
        &["blocked_operations", "fly"],
    );
    let allowed = f.ok("VM.get_allowed_operations", &[vm.as_str().into()]);
    assert!(!allowed.as_array().unwrap().contains(&Value::from("start")));

    f.ok(
        "VM.add_tags",
        &[vm_value.clone(), "Continuous Replication".into()],
    );
    f.ok(
        "VM.add_tags",
        &[vm_value.clone(), "Continuous Replication".into()],
    );
    assert_eq!(
        f.ok("VM.get_tags", &[vm.as_str().into()]),
        Value::from(vec!["Continuous Replication"])
    );
    f.ok(
        "VM.remove_tags",
        &[vm_value.clone(), "Continuous Replication".into()],
    );
    f.ok("VM.remove_tags", &[vm_value.clone(), "absent".into()]);
    assert_eq!(
        f.ok("VM.get_tags", &[vm.as_str().into()]),
        Value::Array(vec![])
    );

    let (_, vdi) = f.disks(&vm)[0].clone();
    f.ok(
        "VDI.add_to_other_config",
        &[vdi.as_str().into(), "xo:copy_of".into(), "x".into()],
    );
    f.ok(
        "VDI.set_name_label",
        &[vdi.as_str().into(), "renamed".into()],
    );
    assert_eq!(
        f.text("VDI.get_name_label", &[vdi.as_str().into()]),
        "renamed"
    );
    f.ok(
        "pool.add_to_other_config",
        &[
            f.report.pool.reference.as_str().into(),
            "k".into(),
            "v".into(),
        ],
    );
    // Ints arrive as decimal text over XML-RPC.
    f.ok("VM.set_user_version", &[vm_value.clone(), "7".into()]);
    assert_eq!(f.ok("VM.get_user_version", &[vm_value]), Value::Int(7));
}

#[test]
fn vm_snapshot_freezes_disk_content_in_vdi_snapshots() {
    let f = Fixture::new();
    let vm = f.vm();
    let disks = f.disks(&vm);
    let (_, disk0) = disks[0].clone();
    f.write(&disk0, 512 * 3 + 100, 3 * MIB, 11);
    let before = f.hash(&disk0);

    let snapshot = f.text("VM.snapshot", &[vm.as_str().into(), "snap".into()]);
    f.write(&disk0, 0, 1000, 12);
    assert_ne!(f.hash(&disk0), before);

    let record = f.ok("VM.get_record", &[snapshot.as_str().into()]);
    assert_eq!(record.get("is_a_snapshot"), Some(&Value::Bool(true)));
    assert_eq!(record.get("is_a_template"), Some(&Value::Bool(true)));
    assert_eq!(text_of(&record, "snapshot_of"), vm);
    assert_eq!(text_of(&record, "name_label"), "snap");
    assert!(matches!(record.get("snapshot_time"), Some(Value::DateTime(t)) if t.starts_with("20")));
    assert_eq!(
        f.ok("VM.get_snapshots", &[vm.as_str().into()]),
        Value::from(vec![snapshot.as_str()])
    );

    let snapshot_disks = f.disks(&snapshot);
    assert_eq!(snapshot_disks.len(), 2);
    let (userdevice, snap0) = snapshot_disks[0].clone();
    assert_eq!(userdevice, "0");
    assert_eq!(
        f.hash(&snap0),
        before,
        "the snapshot keeps the content at snapshot time"
    );
    let source = f.ok("VDI.get_record", &[disk0.as_str().into()]);
    let copy = f.ok("VDI.get_record", &[snap0.as_str().into()]);
    assert_eq!(copy.get("is_a_snapshot"), Some(&Value::Bool(true)));
    assert_eq!(text_of(&copy, "snapshot_of"), disk0);
    assert_eq!(copy.get("name_label"), source.get("name_label"));
    assert_eq!(copy.get("virtual_size"), source.get("virtual_size"));
    assert_eq!(
        source.get("snapshots"),
        Some(&Value::from(vec![snap0.as_str()]))
    );
    let parent = |record: &Value| {
        record
            .get("sm_config")
            .and_then(|c| c.get("vhd-parent"))
            .cloned()
    };
    assert!(parent(&source).is_some());
    assert_eq!(
        parent(&source),
        parent(&copy),
        "both build on the frozen leaf"
    );
    assert_eq!(
        copy.get("sm_config").unwrap().get("vdi_type"),
        Some(&Value::from("vhd"))
    );

    // ignore_vdis leaves disks out; snapshots cannot be snapshotted again.
    let partial = f.text(
        "VM.snapshot",
        &[
            vm.as_str().into(),
            "partial".into(),
            Value::from(vec![disks[1].1.as_str()]),
        ],
    );
    assert_eq!(f.disks(&partial).len(), 1);
    assert_eq!(
        fault(f.call("VM.snapshot", &[snapshot.as_str().into(), "x".into()])).code,
        "OPERATION_NOT_ALLOWED"
    );
}

#[test]
fn vm_clone_needs_a_halted_vm_and_copies_disks_copy_on_write() {
    let f = Fixture::new();
    let vm = f.vm();
    let (_, disk0) = f.disks(&vm)[0].clone();
    f.write(&disk0, 0, 2 * MIB, 5);
    f.ok(
        "VM.start",
        &[vm.as_str().into(), false.into(), false.into()],
    );
    assert_fault(
        f.call("VM.clone", &[vm.as_str().into(), "c".into()]),
        "VM_BAD_POWER_STATE",
        &[vm.as_str(), "halted", "running"],
    );
    f.ok("VM.hard_shutdown", &[vm.as_str().into()]);
    let clone = f.text("VM.clone", &[vm.as_str().into(), "c".into()]);
    let record = f.ok("VM.get_record", &[clone.as_str().into()]);
    assert_eq!(record.get("is_a_snapshot"), Some(&Value::Bool(false)));
    assert_eq!(record.get("is_a_template"), Some(&Value::Bool(false)));
    assert_eq!(text_of(&record, "power_state"), "Halted");
    let clone_disks = f.disks(&clone);
    assert_eq!(clone_disks.len(), 2);
    assert_eq!(f.hash(&clone_disks[0].1), f.hash(&disk0));
    f.write(&clone_disks[0].1, 0, 512, 6);
    assert_ne!(
        f.hash(&clone_disks[0].1),
        f.hash(&disk0),
        "clones are independent"
    );

    // A clone of a snapshot is a VM of its own (a template, as in XAPI).
    let snapshot = f.text("VM.snapshot", &[vm.as_str().into(), "s".into()]);
    let from_snapshot = f.text("VM.clone", &[snapshot.as_str().into(), "restored".into()]);
    let restored = f.ok("VM.get_record", &[from_snapshot.as_str().into()]);
    assert_eq!(restored.get("is_a_snapshot"), Some(&Value::Bool(false)));
    assert_eq!(text_of(&restored, "snapshot_of"), "OpaqueRef:NULL");
    assert_eq!(f.hash(&f.disks(&from_snapshot)[0].1), f.hash(&disk0));
    assert_fault(
        f.call(
            "VM.start",
            &[from_snapshot.as_str().into(), false.into(), false.into()],
        ),
        "VM_IS_TEMPLATE",
        &[from_snapshot.as_str()],
    );
    f.ok(
        "VM.set_is_a_template",
        &[from_snapshot.as_str().into(), false.into()],
    );
    f.ok(
        "VM.start",
        &[from_snapshot.as_str().into(), false.into(), false.into()],
    );
}

#[test]
fn vm_destroy_removes_vbds_but_keeps_vdis() {
    let f = Fixture::new();
    let vm = f.vm();
    let disks = f.disks(&vm);
    let vbds = f.ok("VM.get_VBDs", &[vm.as_str().into()]);
    f.ok("VM.destroy", &[vm.as_str().into()]);
    assert_eq!(
        fault(f.call("VM.get_record", &[vm.as_str().into()])).code,
        "HANDLE_INVALID"
    );
    for vbd in vbds.as_array().unwrap() {
        assert_eq!(
            fault(f.call("VBD.get_record", std::slice::from_ref(vbd))).code,
            "HANDLE_INVALID"
        );
    }
    for (_, vdi) in disks {
        let record = f.ok("VDI.get_record", &[vdi.as_str().into()]);
        assert_eq!(record.get("VBDs"), Some(&Value::Array(vec![])));
        f.hash(&vdi);
    }
}

#[test]
fn blocked_start_is_refused_with_the_exact_reason_and_power_states_are_checked() {
    let f = Fixture::new();
    let vm = f.vm();
    let vm_value = Value::from(vm.as_str());
    for op in ["start", "start_on"] {
        f.ok(
            "VM.add_to_blocked_operations",
            &[vm_value.clone(), op.into(), BLOCKED.into()],
        );
    }
    assert_fault(
        f.call("VM.start", &[vm_value.clone(), false.into(), false.into()]),
        "OPERATION_BLOCKED",
        &[vm.as_str(), BLOCKED],
    );
    let host = Value::from(f.report.host.reference.as_str());
    assert_fault(
        f.call(
            "VM.start_on",
            &[vm_value.clone(), host.clone(), false.into(), true.into()],
        ),
        "OPERATION_BLOCKED",
        &[vm.as_str(), BLOCKED],
    );
    f.ok(
        "VM.remove_from_blocked_operations",
        &[vm_value.clone(), "start_on".into()],
    );
    f.ok(
        "VM.start_on",
        &[vm_value.clone(), host, false.into(), false.into()],
    );
    let record = f.ok("VM.get_record", &[vm.as_str().into()]);
    assert_eq!(text_of(&record, "power_state"), "Running");
    assert_eq!(text_of(&record, "resident_on"), f.report.host.reference);
    let host_record = f.ok(
        "host.get_record",
        &[f.report.host.reference.as_str().into()],
    );
    assert_eq!(
        host_record.get("resident_VMs"),
        Some(&Value::from(vec![vm.as_str()]))
    );

    let (_, disk0) = f.disks(&vm)[0].clone();
    assert_fault(
        f.call("VDI.destroy", &[disk0.as_str().into()]),
        "VDI_IN_USE",
        &[disk0.as_str(), "destroy"],
    );
    assert_fault(
        f.call("VM.destroy", &[vm.as_str().into()]),
        "VM_BAD_POWER_STATE",
        &[vm.as_str(), "halted", "running"],
    );
    f.ok("VM.clean_shutdown", &[vm.as_str().into()]);
    assert_fault(
        f.call("VM.clean_shutdown", &[vm.as_str().into()]),
        "VM_BAD_POWER_STATE",
        &[vm.as_str(), "running", "halted"],
    );
    let snapshot = f.text("VM.snapshot", &[vm_value, "s".into()]);
    assert_eq!(
        fault(f.call(
            "VM.start",
            &[snapshot.as_str().into(), false.into(), false.into()]
        ))
        .code,
        "VM_IS_TEMPLATE"
    );
}

#[test]
fn vdi_and_vbd_life_cycle_on_the_file_sr() {
    let f = Fixture::new();
    let sr = f.report.sr.reference.as_str();
    let record = map(&[("name_label", "scratch"), ("SR", sr), ("type", "user")]);
    let Value::Struct(mut record) = record else {
        unreachable!()
    };
    record.insert("virtual_size".into(), Value::from("5000000"));
    record.insert("sharable".into(), false.into());
    record.insert("read_only".into(), false.into());
    record.insert("other_config".into(), map(&[("k", "v")]));
    let vdi = f.text("VDI.create", &[Value::Struct(record)]);
    let created = f.ok("VDI.get_record", &[vdi.as_str().into()]);
    assert_eq!(
        created.get("virtual_size"),
        Some(&Value::Int(6 * MIB as i64)),
        "rounded to 2 MiB"
    );
    assert_eq!(created.get("sm_config"), Some(&map(&[("vdi_type", "vhd")])));
    assert_eq!(created.get("other_config"), Some(&map(&[("k", "v")])));
    let sr_vdis = f.ok("SR.get_VDIs", &[sr.into()]);
    assert!(
        sr_vdis
            .as_array()
            .unwrap()
            .contains(&Value::from(vdi.as_str()))
    );

    let empty_size = f
        .ok("VDI.get_physical_utilisation", &[vdi.as_str().into()])
        .as_i64()
        .unwrap();
    f.write(&vdi, 0, 4 * MIB, 9);
    let written_size = f
        .ok("VDI.get_physical_utilisation", &[vdi.as_str().into()])
        .as_i64()
        .unwrap();
    assert!(
        written_size >= empty_size + 4 * MIB as i64,
        "{empty_size} -> {written_size}"
    );

    f.ok("VDI.resize", &[vdi.as_str().into(), int(10 * MIB)]);
    assert_eq!(
        f.ok("VDI.get_virtual_size", &[vdi.as_str().into()]),
        Value::Int(10 * MIB as i64)
    );
    assert_eq!(
        fault(f.call("VDI.resize", &[vdi.as_str().into(), int(MIB)])).code,
        "SR_BACKEND_FAILURE_79"
    );

    let snap = f.text("VDI.snapshot", &[vdi.as_str().into()]);
    let clone = f.text("VDI.clone", &[snap.as_str().into(), map(&[])]);
    assert_eq!(f.hash(&clone), f.hash(&vdi));
    let clone_record = f.ok("VDI.get_record", &[clone.as_str().into()]);
    assert_eq!(clone_record.get("is_a_snapshot"), Some(&Value::Bool(false)));
    assert_eq!(clone_record.get("read_only"), Some(&Value::Bool(false)));
    assert_eq!(
        fault(f.call(
            "lab.write",
            &[snap.as_str().into(), int(0), int(512), Value::Int(1)]
        ))
        .code,
        "VDI_READONLY"
    );

    // A VBD at the first free position, then a duplicate position.
    let vm = f.vm();
    let vbd_record = |userdevice: &str| {
        let Value::Struct(mut r) = map(&[
            ("VM", vm.as_str()),
            ("VDI", clone.as_str()),
            ("userdevice", userdevice),
            ("mode", "RW"),
            ("type", "Disk"),
        ]) else {
            unreachable!()
        };
        r.insert("bootable".into(), false.into());
        Value::Struct(r)
    };
    let vbd = f.text("VBD.create", &[vbd_record("autodetect")]);
    assert_eq!(f.text("VBD.get_userdevice", &[vbd.as_str().into()]), "2");
    assert_fault(
        f.call("VBD.create", &[vbd_record("0")]),
        "DEVICE_ALREADY_EXISTS",
        &["0"],
    );
    assert_eq!(f.disks(&vm).len(), 3);
    f.ok("VBD.destroy", &[vbd.as_str().into()]);
    assert_eq!(f.disks(&vm).len(), 2);

    f.ok("VDI.destroy", &[clone.as_str().into()]);
    f.ok("VDI.destroy", &[snap.as_str().into()]);
    f.ok("VDI.destroy", &[vdi.as_str().into()]);
    assert_eq!(
        fault(f.call("VDI.get_record", &[vdi.as_str().into()])).code,
        "HANDLE_INVALID"
    );
    assert_fault(
        f.call("lab.hash", &[vdi.as_str().into()]),
        "UUID_INVALID",
        &["VDI", vdi.as_str()],
    );
    f.ok("SR.scan", &[sr.into()]);
}

#[test]
fn sr_full_when_the_capacity_is_exceeded() {
    let dir = tempfile::tempdir().unwrap();
    Lab::init_with_capacity(dir.path(), PASSWORD, &[], 64 * MIB).unwrap();
    let lab = Lab::open(dir.path()).unwrap();
    let session = login(&lab);
    let sr = lab
        .handle(&Call::new("SR.get_all", vec![session.as_str().into()]))
        .unwrap()
        .as_array()
        .unwrap()[0]
        .clone();
    let create = |size: u64| {
        let Value::Struct(mut record) = map(&[("name_label", "big")]) else {
            unreachable!()
        };
        record.insert("SR".into(), sr.clone());
        record.insert("virtual_size".into(), int(size));
        lab.handle(&Call::new(
            "VDI.create",
            vec![session.as_str().into(), Value::Struct(record)],
        ))
    };
    let error = fault(create(1 << 30));
    assert_eq!(error.code, "SR_FULL");
    assert_eq!(error.params[0], (1u64 << 30).to_string());
    assert!(
        error.params[1].parse::<u64>().unwrap() <= 64 * MIB,
        "{error}"
    );
    create(16 * MIB).unwrap();
}

/// Wait through `event.from` until the task is no longer pending; returns its record.
fn wait_for_task(f: &Fixture, task: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut token = String::new();
    loop {
        let record = f.ok("task.get_record", &[task.into()]);
        if text_of(&record, "status") != "pending" {
            return record;
        }
        assert!(Instant::now() < deadline, "the task never finished");
        let batch = f.ok(
            "event.from",
            &[
                Value::from(vec![format!("task/{task}")]),
                token.as_str().into(),
                Value::Double(1.0),
            ],
        );
        token = text_of(&batch, "token");
    }
}

#[test]
fn async_calls_answer_a_task_that_ends_with_the_xml_rpc_result() {
    let f = Fixture::new();
    let task = f.text("Async.VM.snapshot", &[f.vm().into(), "async snap".into()]);
    let record = wait_for_task(&f, &task);
    assert_eq!(text_of(&record, "status"), "success");
    assert_eq!(record.get("progress"), Some(&Value::Double(1.0)));
    let result = text_of(&record, "result");
    assert!(
        result.starts_with("<value>OpaqueRef:") && result.ends_with("</value>"),
        "{result}"
    );
    let snapshot = decode_value(&result).unwrap();
    assert_eq!(f.text("VM.get_name_label", &[snapshot]), "async snap");

    let failing = f.text("Async.VM.clean_shutdown", &[f.vm().into()]);
    let record = wait_for_task(&f, &failing);
    assert_eq!(text_of(&record, "status"), "failure");
    assert_eq!(
        record.get("error_info"),
        Some(&Value::from(vec![
            "VM_BAD_POWER_STATE",
            f.vm().as_str(),
            "running",
            "halted"
        ]))
    );
    f.ok("task.destroy", &[failing.as_str().into()]);
    assert_eq!(
        fault(f.call("task.get_record", &[failing.as_str().into()])).code,
        "HANDLE_INVALID"
    );
}

#[test]
fn tasks_created_by_clients_and_by_the_data_plane() {
    let f = Fixture::new();
    let task = f.text("task.create", &["export".into(), "of a disk".into()]);
    f.ok(
        "task.set_progress",
        &[task.as_str().into(), Value::Double(0.5)],
    );
    assert_eq!(
        f.ok("task.get_progress", &[task.as_str().into()]),
        Value::Double(0.5)
    );
    assert!(!f.lab.task_cancelling(&task));
    f.ok("task.cancel", &[task.as_str().into()]);
    assert!(f.lab.task_cancelling(&task));
    f.lab
        .complete_task(
            &task,
            Err(XapiFault::new("TASK_CANCELLED", [task.as_str()])),
        )
        .unwrap();
    let record = f.ok("task.get_record", &[task.as_str().into()]);
    assert_eq!(text_of(&record, "status"), "cancelled");
    assert_eq!(
        fault(f.call("task.cancel", &[task.as_str().into()])).code,
        "OPERATION_NOT_ALLOWED"
    );

    let import = f.lab.create_task("import").unwrap();
    let (_, vdi) = f.disks(&f.vm())[0].clone();
    f.lab
        .complete_task(&import, Ok(Value::from(vdi.as_str())))
        .unwrap();
    let record = f.ok("task.get_record", &[import.as_str().into()]);
    assert_eq!(text_of(&record, "result"), format!("<value>{vdi}</value>"));
    assert!(matches!(record.get("finished"), Some(Value::DateTime(t)) if t.starts_with("20")));
    // A finished task stays finished.
    f.lab
        .complete_task(
            &import,
            Err(XapiFault::new("VDI_IO_ERROR", ["Device I/O errors"])),
        )
        .unwrap();
    assert_eq!(
        f.text("task.get_status", &[import.as_str().into()]),
        "success"
    );

    let uuid = f.text("VDI.get_uuid", &[vdi.as_str().into()]);
    assert_eq!(f.lab.vdi_by_ref_or_uuid(&vdi).unwrap().0, vdi);
    assert_eq!(
        f.lab.vdi_by_ref_or_uuid(&uuid).unwrap(),
        (vdi.clone(), uuid.parse().unwrap())
    );
    assert_eq!(f.lab.vdi_by_ref_or_uuid("nope"), None);
}

#[test]
fn event_from_reports_only_newer_changes_and_times_out_empty() {
    let f = Fixture::new();
    let vm = f.vm();
    // As npm `xen-api` connects: inject on the pool, then wait from that token.
    let token = f.text(
        "event.inject",
        &["pool".into(), f.report.pool.reference.as_str().into()],
    );
    assert_eq!(token.len(), 41, "{token}");
    let batch = f.ok(
        "event.from",
        &[
            Value::from(vec!["pool", "VM"]),
            token.as_str().into(),
            Value::Double(5.0),
        ],
    );
    let events = batch.get("events").unwrap().as_array().unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(text_of(&events[0], "class"), "pool");
    assert_eq!(text_of(&events[0], "operation"), "mod");
    assert!(
        events[0]
            .get("snapshot")
            .unwrap()
            .get("other_config")
            .is_some()
    );
    assert_eq!(
        batch.get("valid_ref_counts").unwrap().get("vm"),
        Some(&Value::Int(1))
    );

    let token = text_of(&batch, "token");
    f.ok("VM.set_name_label", &[vm.as_str().into(), "renamed".into()]);
    f.ok(
        "VDI.set_name_label",
        &[f.disks(&vm)[0].1.as_str().into(), "not watched".into()],
    );
    let batch = f.ok(
        "event.from",
        &[
            Value::from(vec!["vm"]),
            token.as_str().into(),
            Value::Double(5.0),
        ],
    );
    let events = batch.get("events").unwrap().as_array().unwrap();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(text_of(&events[0], "ref"), vm);
    assert_eq!(
        text_of(events[0].get("snapshot").unwrap(), "name_label"),
        "renamed"
    );

    let token = text_of(&batch, "token");
    let started = Instant::now();
    let batch = f.ok(
        "event.from",
        &[
            Value::from(vec!["*"]),
            token.as_str().into(),
            Value::Double(0.3),
        ],
    );
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(batch.get("events"), Some(&Value::Array(vec![])));
    assert_eq!(text_of(&batch, "token"), token);

    // A waiter wakes as soon as something changes.
    let waiter = {
        let lab = f.lab.clone();
        let call = Call::new(
            "event.from",
            vec![
                f.session.as_str().into(),
                Value::from(vec!["VM"]),
                token.as_str().into(),
                Value::Double(30.0),
            ],
        );
        std::thread::spawn(move || (Instant::now(), lab.handle(&call)))
    };
    std::thread::sleep(Duration::from_millis(100));
    let snapshot = f.text("VM.snapshot", &[vm.as_str().into(), "s".into()]);
    let (began, batch) = waiter.join().unwrap();
    assert!(began.elapsed() < Duration::from_secs(10));
    let batch = batch.unwrap();
    let events = batch.get("events").unwrap().as_array().unwrap();
    assert!(
        events
            .iter()
            .any(|e| text_of(e, "ref") == snapshot && text_of(e, "operation") == "add")
    );

    // Deletions, the beginning, and bad tokens.
    let token = text_of(&batch, "token");
    f.ok("VM.destroy", &[snapshot.as_str().into()]);
    let batch = f.ok(
        "event.from",
        &[
            Value::from(vec!["VM"]),
            token.as_str().into(),
            Value::Double(1.0),
        ],
    );
    let events = batch.get("events").unwrap().as_array().unwrap();
    let deletion = events
        .iter()
        .find(|e| text_of(e, "ref") == snapshot)
        .unwrap();
    assert_eq!(text_of(deletion, "operation"), "del");
    assert!(deletion.get("snapshot").is_none());
    let everything = f.ok(
        "event.from",
        &[Value::from(vec!["VM"]), "".into(), Value::Double(0.0)],
    );
    let events = everything.get("events").unwrap().as_array().unwrap();
    let added: Vec<_> = events
        .iter()
        .map(|e| (text_of(e, "operation"), text_of(e, "ref")))
        .collect();
    assert_eq!(
        added,
        [("add".to_owned(), vm.clone())],
        "from the start: every live object"
    );
    assert_fault(
        f.call(
            "event.from",
            &[
                Value::from(vec!["VM"]),
                "garbage".into(),
                Value::Double(0.0),
            ],
        ),
        "EVENT_FROM_TOKEN_PARSE_FAILURE",
        &["garbage"],
    );
    assert_eq!(
        fault(f.call("event.inject", &["vm".into(), "OpaqueRef:nope".into()])).code,
        "HANDLE_INVALID"
    );
}

/// npm `xen-api` with events on, as its `_watchEvents` does it: the record types are the
/// prefixes of the `*.get_all_records` names in `system.listMethods`; it injects an event on
/// the pool for a token, fetches every type, then loops on `event.from` with those names
/// (events name classes in lower case), keeping its task count in step with
/// `valid_ref_counts.task` (a mismatch makes it fetch every task again). `Xapi#barrier`
/// writes an `xo:barrier:*` key in the pool's `other_config` and waits for the pool event
/// that carries it.
#[test]
fn npm_xen_api_event_watching_sequence() {
    let f = Fixture::new();
    let listed = f
        .lab
        .handle(&Call::new("system.listMethods", vec![]))
        .unwrap();
    let types: BTreeSet<String> = listed
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|name| name.as_str().unwrap().strip_suffix(".get_all_records"))
        .map(str::to_owned)
        .collect();
    let expected = [
        "PIF", "SR", "VBD", "VDI", "VIF", "VLAN", "VM", "host", "network", "pool", "task",
    ];
    assert_eq!(types, expected.map(String::from).into());

    let pool = f.report.pool.reference.as_str();
    let token = f.text("event.inject", &["pool".into(), pool.into()]);
    let mut fields = std::collections::BTreeMap::new();
    let mut tasks = 0;
    for class in &types {
        let records = f.ok(&format!("{class}.get_all_records"), &[]);
        let records = records.as_struct().unwrap();
        if class == "task" {
            tasks = records.len();
        }
        if let Some(record) = records.values().next() {
            let names: BTreeSet<String> = record.as_struct().unwrap().keys().cloned().collect();
            fields.insert(class.to_lowercase(), names);
        }
    }

    f.text("task.create", &["upload".into(), "".into()]);
    f.ok(
        "pool.add_to_other_config",
        &[pool.into(), "xo:barrier:k".into(), "1700000000000".into()],
    );
    let classes: Vec<&str> = types.iter().map(String::as_str).collect();
    let batch = f.ok(
        "event.from",
        &[
            Value::from(classes),
            token.as_str().into(),
            Value::Double(60.1),
        ],
    );
    let events = batch.get("events").unwrap().as_array().unwrap();
    let barrier = events.iter().find(|event| {
        text_of(event, "class") == "pool"
            && event
                .get("snapshot")
                .and_then(|s| s.get("other_config"))
                .and_then(|c| c.get("xo:barrier:k"))
                .is_some()
    });
    assert!(
        barrier.is_some(),
        "no pool event with the barrier key: {events:?}"
    );
    let mut added_tasks = 0;
    for event in events {
        let class = text_of(event, "class");
        // The class maps back to a type, and the snapshot has that type's field set, which
        // the client's per-type record wrapper was built from.
        assert!(types.iter().any(|t| t.to_lowercase() == class), "{class}");
        if let (Some(snapshot), Some(names)) = (event.get("snapshot"), fields.get(&class)) {
            let keys: BTreeSet<String> = snapshot.as_struct().unwrap().keys().cloned().collect();
            assert_eq!(&keys, names, "{class}");
        }
        if class == "task" && text_of(event, "operation") == "add" {
            added_tasks += 1;
        }
    }
    assert_eq!(added_tasks, 1);
    assert_eq!(
        batch.get("valid_ref_counts").unwrap().get("task"),
        Some(&Value::Int((tasks + added_tasks) as i64))
    );
}

/// npm `xen-api` with events on fetches `get_all_records` of every class `system.listMethods`
/// lists and then watches them all: sessions must be in neither, as in xapi, or every client
/// would be handed the other clients' session references.
#[test]
fn sessions_are_neither_listed_nor_reported_as_events() {
    let f = Fixture::new();
    let other = login(&f.lab);
    for method in ["session.get_all", "session.get_all_records"] {
        assert_fault(f.call(method, &[]), "MESSAGE_METHOD_UNKNOWN", &[method]);
    }
    // A client may still read its own session's record.
    let own = f.ok("session.get_record", &[f.session.as_str().into()]);
    assert_eq!(text_of(&own, "this_host"), f.report.host.reference);

    let everything = f.ok(
        "event.from",
        &[
            Value::from(vec!["*", "session"]),
            "".into(),
            Value::Double(0.0),
        ],
    );
    let events = everything.get("events").unwrap().as_array().unwrap();
    assert!(!events.is_empty());
    for event in events {
        assert_ne!(text_of(event, "class"), "session", "{event:?}");
        assert_ne!(text_of(event, "ref"), other);
    }
    let counts = everything.get("valid_ref_counts").unwrap();
    assert_eq!(counts.get("vm"), Some(&Value::Int(1)));
    assert_eq!(counts.get("session"), None);

    // Logging in and out is no event either: a waiter sees nothing and times out.
    let token = text_of(&everything, "token");
    let third = login(&f.lab);
    f.lab
        .handle(&Call::new("session.logout", vec![third.as_str().into()]))
        .unwrap();
    let later = f.ok(
        "event.from",
        &[
            Value::from(vec!["*"]),
            token.as_str().into(),
            Value::Double(0.2),
        ],
    );
    assert_eq!(later.get("events"), Some(&Value::Array(vec![])));
}

/// Whether the saved state file holds `text`.
fn saved_state_holds(dir: &Path, text: &str) -> bool {
    std::fs::read_to_string(dir.join("state.json")).is_ok_and(|state| state.contains(text))
}

#[test]
fn changes_are_saved_behind_the_calls_within_the_flush_interval_and_at_the_last_drop() {
    let f = Fixture::new();
    let vm = f.vm();
    let started = Instant::now();
    f.ok(
        "VM.add_to_other_config",
        &[vm.as_str().into(), "saved-later".into(), "1".into()],
    );
    // The call returned before the save; the flusher saves within 2 s (xapi's flush timer).
    while !saved_state_holds(f.dir(), "saved-later") {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the change was never saved"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    f.ok(
        "VM.add_to_other_config",
        &[vm.as_str().into(), "saved-at-drop".into(), "1".into()],
    );
    let dir = f.dir().to_path_buf();
    let _kept_dir = f._dir;
    drop(f.lab);
    assert!(saved_state_holds(&dir, "saved-at-drop"));
}

#[test]
fn state_persists_across_reopen_but_sessions_do_not() {
    let f = Fixture::new();
    let vm = f.vm();
    let (_, disk0) = f.disks(&vm)[0].clone();
    f.write(&disk0, 0, MIB, 3);
    let snapshot = f.text("VM.snapshot", &[vm.as_str().into(), "kept".into()]);
    f.ok(
        "VM.add_to_other_config",
        &[vm.as_str().into(), "xo:backup:job".into(), "j1".into()],
    );
    let records = |lab: &Lab, session: &str| {
        ["VM", "VDI", "VBD", "SR", "pool", "host"].map(|class| {
            lab.handle(&Call::new(
                format!("{class}.get_all_records"),
                vec![session.into()],
            ))
            .unwrap()
        })
    };
    let before = records(&f.lab, &f.session);
    let hash = f.hash(&disk0);

    // Saving runs behind the calls, as xapi's database flush does; `flush` saves now.
    f.lab.flush().unwrap();
    let reopened = Lab::open(f.dir()).unwrap();
    assert!(!reopened.session_valid(&f.session));
    let session = login(&reopened);
    assert_eq!(records(&reopened, &session), before);
    let call = Call::new(
        "lab.hash",
        vec![session.as_str().into(), disk0.as_str().into()],
    );
    assert_eq!(reopened.handle(&call).unwrap(), Value::from(hash));
    let call = Call::new(
        "VM.get_is_a_snapshot",
        vec![session.as_str().into(), snapshot.as_str().into()],
    );
    assert_eq!(reopened.handle(&call).unwrap(), Value::Bool(true));

    assert!(matches!(
        Lab::init(f.dir(), PASSWORD, &[]),
        Err(LabError::AlreadyInitialised { .. })
    ));
    let empty = tempfile::tempdir().unwrap();
    assert!(matches!(
        Lab::open(empty.path()),
        Err(LabError::NotInitialised { .. })
    ));
}

#[test]
fn init_reports_what_it_created() {
    let f = Fixture::new();
    let vm = &f.report.vms[0];
    assert_eq!(vm.name, "web01");
    let sizes: Vec<u64> = vm.disks.iter().map(|d| d.virtual_size).collect();
    assert_eq!(sizes, [8 * MIB, 4 * MIB]);
    assert_eq!(vm.disks[1].userdevice, "1");
    let vbd = f.ok(
        "VBD.get_record",
        &[vm.disks[0].vbd.reference.as_str().into()],
    );
    assert_eq!(vbd.get("bootable"), Some(&Value::Bool(true)));
    assert_eq!(text_of(&vbd, "type"), "Disk");
    assert_eq!(text_of(&vbd, "mode"), "RW");
    assert_eq!(text_of(&vbd, "VDI"), vm.disks[0].vdi.reference);
    assert_eq!(
        f.text("VM.get_power_state", &[vm.ids.reference.as_str().into()]),
        "Halted"
    );
    let json = serde_json::to_value(&f.report).unwrap();
    assert_eq!(json["vms"][0]["uuid"], vm.ids.uuid.as_str());
    assert_eq!(json["sr"]["ref"], f.report.sr.reference.as_str());
}

#[test]
fn records_encode_as_xapi_writes_them_in_both_wire_formats() {
    use vhdsync::xapi::rpc::jsonrpc::{
        JsonRpcResponse, JsonRpcVersion, RequestId, encode_response as encode_json,
    };
    use vhdsync::xapi::rpc::xmlrpc::{IntEncoding, encode_response as encode_xml};

    let f = Fixture::new();
    let records = f.call("VM.get_all_records", &[]);
    let xml = String::from_utf8(encode_xml(&records, IntEncoding::AsString)).unwrap();
    assert!(xml.contains("<name>memory_static_max</name><value>1073741824</value>"));
    assert!(xml.contains("<dateTime.iso8601>19700101T00:00:00Z</dateTime.iso8601>"));
    let json = encode_json(&JsonRpcResponse {
        version: JsonRpcVersion::V2,
        id: RequestId::Int(1),
        response: records,
    });
    let json: serde_json::Value = serde_json::from_slice(&json).unwrap();
    let vm = &json["result"][f.vm().as_str()];
    assert_eq!(vm["memory_static_max"], 1u64 << 30);
    assert_eq!(vm["snapshot_time"], "19700101T00:00:00Z");
    assert_eq!(vm["blocked_operations"], serde_json::json!({}));
}

#[test]
fn concurrent_calls_are_each_applied_whole() {
    let f = Fixture::new();
    let vm = f.vm();
    let workers: Vec<_> = (0..8)
        .map(|worker| {
            let (lab, session, vm) = (f.lab.clone(), f.session.clone(), vm.clone());
            std::thread::spawn(move || {
                for n in 0..10 {
                    let key = format!("k{worker}-{n}");
                    let call = Call::new(
                        "VM.add_to_other_config",
                        vec![
                            session.as_str().into(),
                            vm.as_str().into(),
                            key.into(),
                            "v".into(),
                        ],
                    );
                    lab.handle(&call).unwrap();
                }
                let call = Call::new(
                    "VM.snapshot",
                    vec![
                        session.as_str().into(),
                        vm.as_str().into(),
                        format!("s{worker}").into(),
                    ],
                );
                lab.handle(&call).unwrap().as_str().unwrap().to_owned()
            })
        })
        .collect();
    let snapshots: BTreeSet<String> = workers.into_iter().map(|w| w.join().unwrap()).collect();
    assert_eq!(snapshots.len(), 8);
    let other_config = f.ok("VM.get_other_config", &[vm.as_str().into()]);
    // The workers' keys and the VM's `mac_seed`.
    assert_eq!(other_config.as_struct().unwrap().len(), 81);
    assert_eq!(
        f.ok("VM.get_snapshots", &[vm.as_str().into()])
            .as_array()
            .unwrap()
            .len(),
        8
    );
    // Two disks per snapshot, plus the VM's own; and each snapshot froze one hidden parent
    // per disk, an unmanaged VDI.
    let records = f.ok("VDI.get_all_records", &[]);
    let (managed, hidden): (Vec<_>, Vec<_>) = records
        .as_struct()
        .unwrap()
        .values()
        .partition(|vdi| vdi.get("managed").unwrap().as_bool().unwrap());
    assert_eq!(managed.len(), 2 + 8 * 2);
    assert_eq!(hidden.len(), 8 * 2);
}

/// A value of `field`'s kind that differs from `current`, for the setter test.
fn sample(field: &Field, current: &Value, objects: &dyn Fn(Class) -> String) -> Value {
    match field.kind {
        Kind::Text => Value::from("set by the setter test"),
        Kind::Enum(values) => Value::from(values[values.len() - 1]),
        Kind::Ref(target) => match Class::from_name(target) {
            Some(class) => Value::from(objects(class)),
            // Classes the lab does not model: their references are kept as given.
            None => Value::from("OpaqueRef:not-modelled"),
        },
        Kind::Int => Value::Int(5),
        Kind::Float => Value::Double(2.5),
        Kind::Bool => Value::Bool(current.as_bool() != Some(true)),
        Kind::DateTime => Value::DateTime("20250319T04:16:24Z".into()),
        // A VIF's allowed addresses are checked to be of their family.
        Kind::Set if field.name == "ipv4_allowed" => Value::from(vec!["192.0.2.1"]),
        Kind::Set if field.name == "ipv6_allowed" => Value::from(vec!["2001:db8::1"]),
        Kind::Set => Value::from(vec!["a", "b"]),
        Kind::IntSet => Value::from(vec![1i64, 2]),
        Kind::Map(keys) => {
            let key = keys.map_or("key", |keys| keys[0]);
            Value::Struct([(key.to_owned(), Value::from("value"))].into())
        }
    }
}

/// Derived from the lab's datamodel tables: every field XAPI has a setter for (RW, or RO with
/// an explicit `set_` message) answers `set_<field>` over RPC with a value of its kind, which
/// `get_<field>` then returns; every other field has no setter. A field the tables mark
/// settable without a working setter fails here.
#[test]
fn every_settable_field_of_every_class_has_a_working_setter() {
    let f = Fixture::new();
    let task = f.text("task.create", &["setter test".into(), "".into()]);
    let vm = f.vm();
    let disks = f.disks(&vm);
    let first = |method: &str| {
        f.ok(method, &[]).as_array().unwrap()[0]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let network = first("network.get_all");
    let vif_args = [
        ("VM", vm.as_str()),
        ("network", network.as_str()),
        ("device", "0"),
    ]
    .map(|(k, v)| (k.to_owned(), Value::from(v)));
    let vif = f.text("VIF.create", &[Value::Struct(vif_args.into())]);
    let tagged = f.text("network.create", &[Value::Struct(Default::default())]);
    let vlan_pifs = f.ok(
        "pool.create_VLAN",
        &["eth0".into(), tagged.into(), Value::Int(7)],
    );
    let vlan = f.text(
        "PIF.get_VLAN_master_of",
        &[vlan_pifs.as_array().unwrap()[0].clone()],
    );
    let objects = |class: Class| match class {
        Class::Pool => first("pool.get_all"),
        Class::Host => first("host.get_all"),
        Class::Sr => first("SR.get_all"),
        Class::Vdi => disks[1].1.clone(),
        Class::Vbd => first_vbd(&f, &vm),
        Class::Vm => vm.clone(),
        Class::Task => task.clone(),
        Class::Session => f.session.clone(),
        Class::Network => network.clone(),
        Class::Vif => vif.clone(),
        Class::Pif => first("PIF.get_all"),
        Class::Vlan => vlan.clone(),
    };
    let mut set = 0;
    for class in Class::ALL {
        // Setters write the first disk, references point at the second.
        let reference = match class {
            Class::Vdi => disks[0].1.clone(),
            _ => objects(class),
        };
        for field in class.fields() {
            let method = format!("{}.set_{}", class.name(), field.name);
            let getter = format!("{}.get_{}", class.name(), field.name);
            let current = f.ok(&getter, &[reference.as_str().into()]);
            let value = sample(field, &current, &objects);
            let answer = f.call(&method, &[reference.as_str().into(), value.clone()]);
            if !field.access.has_setter() {
                let err = answer.expect_err(&method);
                assert_eq!(err.code, "MESSAGE_METHOD_UNKNOWN", "{method}");
                continue;
            }
            answer.unwrap_or_else(|e| panic!("{method}: {e}"));
            assert_eq!(
                f.ok(&getter, &[reference.as_str().into()]),
                value,
                "{method}"
            );
            set += 1;
        }
    }
    // The four VM setters are among them.
    for name in [
        "has_vendor_device",
        "order",
        "shutdown_delay",
        "start_delay",
    ] {
        assert!(Class::Vm.field(name).unwrap().access.has_setter(), "{name}");
    }
    assert!(set > 100, "only {set} setters");
}

fn first_vbd(f: &Fixture, vm: &str) -> String {
    let vbds = f.ok("VM.get_VBDs", &[vm.into()]);
    vbds.as_array().unwrap()[0].as_str().unwrap().to_owned()
}

#[test]
fn setters_with_semantics_check_their_values() {
    let f = Fixture::new();
    let vm = f.vm();
    let fault = |method: &str, reference: &str, value: Value| {
        f.call(method, &[reference.into(), value])
            .expect_err(method)
    };
    for field in ["start_delay", "shutdown_delay", "order"] {
        let err = fault(&format!("VM.set_{field}"), &vm, Value::Int(-1));
        assert_eq!(err, XapiFault::new("INVALID_VALUE", [field, "-1"]));
    }
    let err = fault("VM.set_domain_type", &vm, "pvhvm".into());
    assert_eq!(err.code, "INVALID_VALUE");
    let err = fault(
        "VM.set_bios_strings",
        &vm,
        Value::Struct([("bios-colour".to_owned(), Value::from("red"))].into()),
    );
    assert_eq!(err.code, "INVALID_VALUE");
    let pool = f.ok("pool.get_all", &[]).as_array().unwrap()[0]
        .as_str()
        .unwrap()
        .to_owned();
    let err = fault("pool.set_local_auth_max_threads", &pool, Value::Int(0));
    assert_eq!(
        err,
        XapiFault::new("INVALID_VALUE", ["local_auth_max_threads", "0"])
    );
    // A VBD's mode changes only while its VM is halted.
    let vbd = first_vbd(&f, &vm);
    f.ok(
        "VM.start",
        &[vm.as_str().into(), false.into(), false.into()],
    );
    let err = fault("VBD.set_mode", &vbd, "RO".into());
    assert_eq!(err.code, "VM_BAD_POWER_STATE");
    f.ok("VM.hard_shutdown", &[vm.as_str().into()]);
    f.ok("VBD.set_mode", &[vbd.as_str().into(), "RO".into()]);
}

#[test]
fn vm_update_allowed_operations_recomputes_them_from_power_state_and_blocked_operations() {
    let f = Fixture::new();
    let vm = f.vm();
    let allowed = |f: &Fixture| {
        f.ok("VM.update_allowed_operations", &[vm.as_str().into()]);
        let ops = f.ok("VM.get_allowed_operations", &[vm.as_str().into()]);
        let mut ops: Vec<String> = ops
            .as_array()
            .unwrap()
            .iter()
            .map(|op| op.as_str().unwrap().to_owned())
            .collect();
        ops.sort();
        ops
    };
    assert_eq!(
        allowed(&f),
        ["clone", "destroy", "snapshot", "start", "start_on"]
    );
    f.ok(
        "VM.add_to_blocked_operations",
        &[vm.as_str().into(), "start".into(), BLOCKED.into()],
    );
    assert_eq!(allowed(&f), ["clone", "destroy", "snapshot", "start_on"]);
    f.ok(
        "VM.remove_from_blocked_operations",
        &[vm.as_str().into(), "start".into()],
    );
    f.ok(
        "VM.start",
        &[vm.as_str().into(), false.into(), false.into()],
    );
    assert_eq!(allowed(&f), ["clean_shutdown", "hard_shutdown", "snapshot"]);
    let task = f.text("Async.VM.update_allowed_operations", &[vm.as_str().into()]);
    assert!(task.starts_with("OpaqueRef:"), "{task}");
    let err = f
        .call("VM.update_allowed_operations", &["OpaqueRef:gone".into()])
        .unwrap_err();
    assert_eq!(
        err,
        XapiFault::new("HANDLE_INVALID", ["VM", "OpaqueRef:gone"])
    );
}

/// The uuid `sm_config['vhd-parent']` of the VDI `vdi` names, if any.
fn vhd_parent(f: &Fixture, vdi: &str) -> Option<String> {
    let config = f.ok("VDI.get_sm_config", &[vdi.into()]);
    config
        .get("vhd-parent")
        .map(|uuid| uuid.as_str().unwrap().to_owned())
}

/// Walk a VDI's chain through its hidden parents as clients do: `VDI.get_by_uuid` on each
/// `vhd-parent`, then that VDI's `sm_config`. Returns the parents' refs, nearest first.
fn walk_chain(f: &Fixture, vdi: &str) -> Vec<String> {
    let mut parents = Vec::new();
    let mut next = vhd_parent(f, vdi);
    while let Some(uuid) = next {
        assert!(parents.len() < 256, "the chain of {vdi} does not end");
        let parent = f.text("VDI.get_by_uuid", &[uuid.as_str().into()]);
        next = vhd_parent(f, &parent);
        parents.push(parent);
    }
    parents
}

#[test]
fn hidden_chain_parents_are_unmanaged_vdis_that_clients_walk_to_the_base() {
    let f = Fixture::new();
    let vdi = f.disks(&f.vm())[0].1.clone();
    assert!(walk_chain(&f, &vdi).is_empty(), "a new disk is one VHD");
    let first = f.text("VDI.snapshot", &[vdi.as_str().into()]);
    let second = f.text("VDI.snapshot", &[vdi.as_str().into()]);
    let parents = walk_chain(&f, &vdi);
    assert_eq!(parents.len(), 2);
    for parent in &parents {
        let record = f.ok("VDI.get_record", &[parent.as_str().into()]);
        assert_eq!(record.get("managed"), Some(&Value::Bool(false)), "{parent}");
        assert_eq!(
            record.get("read_only"),
            Some(&Value::Bool(true)),
            "{parent}"
        );
        assert_eq!(
            record.get("is_a_snapshot"),
            Some(&Value::Bool(false)),
            "{parent}"
        );
        assert_eq!(record.get("VBDs"), Some(&Value::Array(vec![])), "{parent}");
        assert_eq!(text_of(&record, "name_label"), "base copy");
        assert_eq!(
            record.get("allowed_operations"),
            Some(&Value::Array(vec![]))
        );
        let sm_config = record.get("sm_config").unwrap();
        assert_eq!(
            sm_config.get("vdi_type").and_then(Value::as_str),
            Some("vhd")
        );
    }
    // The base has no parent; each snapshot builds on the parent frozen when it was taken.
    assert_eq!(vhd_parent(&f, &parents[1]), None);
    let uuid = |vdi: &str| f.text("VDI.get_uuid", &[vdi.into()]);
    assert_eq!(vhd_parent(&f, &first), Some(uuid(&parents[1])));
    assert_eq!(vhd_parent(&f, &second), Some(uuid(&parents[0])));
    // The SR lists them, without counting their sizes into its virtual allocation.
    let sr = f.ok("VDI.get_SR", &[vdi.as_str().into()]);
    let sr_vdis = f.ok("SR.get_VDIs", std::slice::from_ref(&sr));
    assert!(
        parents
            .iter()
            .all(|p| sr_vdis.as_array().unwrap().contains(&p.as_str().into()))
    );
    let allocation = f.ok("SR.get_virtual_allocation", &[sr]).as_i64().unwrap();
    // The disks (8 MiB, and 3 MiB rounded up to 4) and the two snapshots of the first.
    assert_eq!(allocation as u64, (8 + 4 + 8 + 8) * MIB);

    // Nobody destroys, branches, resizes or attaches them but the SR.
    for method in ["VDI.destroy", "VDI.snapshot", "VDI.clone"] {
        let err = f.call(method, &[parents[0].as_str().into()]).unwrap_err();
        assert_eq!(
            err,
            XapiFault::new("VDI_NOT_MANAGED", [parents[0].as_str()]),
            "{method}"
        );
    }
    let err = f
        .call("VDI.resize", &[parents[0].as_str().into(), int(16 * MIB)])
        .unwrap_err();
    assert_eq!(err.code, "VDI_NOT_MANAGED");

    // Destroying both snapshots leaves the disk's chain as it was: its parents stay.
    f.ok("VDI.destroy", &[first.as_str().into()]);
    f.ok("VDI.destroy", &[second.as_str().into()]);
    assert_eq!(walk_chain(&f, &vdi), parents);
    // Destroying the disk too leaves no VHD file, so no hidden VDI either.
    f.ok("VDI.destroy", &[vdi.as_str().into()]);
    for parent in &parents {
        let err = f
            .call("VDI.get_record", &[parent.as_str().into()])
            .unwrap_err();
        assert_eq!(err.code, "HANDLE_INVALID", "{parent}");
    }
}

/// The replication source's pattern: snapshot every cycle, keep the newest snapshot. Past 32
/// files, destroys coalesce the chain; the unmanaged VDIs stay exactly the hidden parents the
/// disk's chain walks through, merged-away ones gone and re-parented ones updated.
#[test]
fn coalescing_keeps_the_hidden_vdis_those_of_the_walked_chain() {
    let f = Fixture::new();
    let vdi = f.disks(&f.vm())[1].1.clone();
    let mut kept: Option<String> = None;
    for _ in 0..40 {
        let snapshot = f.text("VDI.snapshot", &[vdi.as_str().into()]);
        if let Some(old) = kept.replace(snapshot) {
            f.ok("VDI.destroy", &[old.as_str().into()]);
        }
    }
    let walked: BTreeSet<String> = walk_chain(&f, &vdi).into_iter().collect();
    assert!(
        walked.len() <= 33,
        "{} parents: not coalesced",
        walked.len()
    );
    let records = f.ok("VDI.get_all_records", &[]);
    let hidden: BTreeSet<String> = records
        .as_struct()
        .unwrap()
        .iter()
        .filter(|(_, record)| record.get("managed") == Some(&Value::Bool(false)))
        .map(|(reference, _)| reference.clone())
        .collect();
    assert_eq!(hidden, walked);
    // The kept snapshot builds on the same chain.
    let kept = kept.unwrap();
    assert!(walked.contains(&f.text("VDI.get_by_uuid", &[vhd_parent(&f, &kept).unwrap().into()])));
}
