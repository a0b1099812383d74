//! VM messages: snapshot, clone, create, destroy and the power cycle. VMs are metadata only;
//! their disks are VDIs on the file SR, reached through VBDs.
//!
//! Snapshots and clones follow xapi's `Xapi_vm_clone`: the disks first (rolled back if one
//! fails), then the VM record, then a copy of every VBD and VIF (a snapshot keeps the VIFs'
//! MACs; a clone gets a new `mac_seed` and MACs derived from it). A snapshot is a template
//! (`is_a_template` and `is_a_snapshot`); a clone copies the source's template flag, so a
//! clone of a snapshot is a template too, which `VM.set_is_a_template` turns into a VM.
//! Neither copies `blocked_operations`.

use uuid::Uuid;

use super::accessors::constructor_fields;
use super::args::{Fallback, Invocation, Param};
use super::dispatch::Message;
use super::vdi::{Branch, branch_vdi, destroy_vdi};
use super::vif::{self, MAC_SEED};
use super::xapi_errors;
use super::{now, this_host};
use crate::lab::db::{Class, Db, EPOCH, NULL_REF, Record};
use crate::lab::state::Lab;
use crate::xapi::rpc::{Response, Value, XapiFault};

pub(super) const MESSAGES: &[Message] = &[
    Message::long("create", &[Param::Required("args")], create),
    Message::long("destroy", &[Param::Required("self")], destroy),
    Message::long(
        "snapshot",
        &[
            Param::Required("vm"),
            Param::Required("new_name"),
            Param::Optional("ignore_vdis", Fallback::EmptySet),
        ],
        snapshot,
    ),
    Message::long(
        "clone",
        &[Param::Required("vm"), Param::Required("new_name")],
        clone,
    ),
    Message::long(
        "start",
        &[
            Param::Required("vm"),
            Param::Required("start_paused"),
            Param::Required("force"),
        ],
        start,
    ),
    Message::long(
        "start_on",
        &[
            Param::Required("vm"),
            Param::Required("host"),
            Param::Required("start_paused"),
            Param::Required("force"),
        ],
        start_on,
    ),
    Message::long("hard_shutdown", &[Param::Required("vm")], hard_shutdown),
    Message::long("clean_shutdown", &[Param::Required("vm")], clean_shutdown),
    Message::long(
        "update_allowed_operations",
        &[Param::Required("self")],
        update_allowed_operations,
    ),
    Message::long(
        "set_memory_limits",
        &[
            Param::Required("self"),
            Param::Required("static_min"),
            Param::Required("static_max"),
            Param::Required("dynamic_min"),
            Param::Required("dynamic_max"),
        ],
        set_memory_limits,
    ),
];

/// Fields a snapshot or clone does not take from its source but gets afresh, as xapi's
/// `copy_vm_record` does.
const NOT_COPIED: &[&str] = &[
    "uuid",
    "current_operations",
    "blocked_operations",
    "is_default_template",
    "resident_on",
    "scheduled_to_be_resident_on",
    "consoles",
    "VIFs",
    "VUSBs",
    "crash_dumps",
    "VTPMs",
    "domid",
    "domarch",
    "metrics",
    "guest_metrics",
    "transportable_snapshot_id",
    "blobs",
    "snapshot_metadata",
    "VGPUs",
    "attached_PCIs",
    "requires_reboot",
    "pending_guidances",
    "pending_guidances_recommended",
    "pending_guidances_full",
    "ha_always_run",
    "protection_policy",
    "is_vmss_snapshot",
    "snapshot_schedule",
    "appliance",
    "start_delay",
    "shutdown_delay",
    "order",
    "suspend_SR",
    "suspend_VDI",
    "version",
];

fn create(lab: &Lab, call: &Invocation) -> Response {
    let mut fields = constructor_fields(Class::Vm, call.record(0)?)?;
    // A new VM is off whatever the record says; starting it is a separate call.
    fields.insert("power_state".into(), Value::from("Halted"));
    // xapi gives every new VM a seed for its VIFs' MACs, unless the record has one.
    let other_config = fields
        .entry("other_config".into())
        .or_insert_with(|| Value::Struct(Default::default()));
    if let Value::Struct(other_config) = other_config {
        other_config
            .entry(MAC_SEED.into())
            .or_insert_with(|| Value::from(Uuid::new_v4().to_string()));
    }
    lab.with_db_mut(|db| Ok(Value::from(db.insert(Class::Vm, fields))))
}

fn destroy(lab: &Lab, call: &Invocation) -> Response {
    let vm = call.text(0)?;
    lab.with_db_mut(|db| {
        check_not_blocked(db, vm, "destroy")?;
        let state = power_state(db, vm)?;
        if !matches!(state.as_str(), "Halted" | "Suspended") {
            return Err(xapi_errors::bad_power_state(vm, "Halted", &state));
        }
        // The VBDs and VIFs go with the VM; the VDIs stay (xapi's `Xapi_vm_helpers.destroy`).
        for vbd in db.set_items(Class::Vm, vm, "VBDs")? {
            db.remove(Class::Vbd, &vbd)?;
        }
        for vif in db.set_items(Class::Vm, vm, "VIFs")? {
            db.remove(Class::Vif, &vif)?;
        }
        db.remove(Class::Vm, vm)?;
        Ok(Value::void())
    })
}

/// Recompute the `allowed_operations` of the VM and, as xapi does, of its VBDs and their
/// VDIs. The lab recomputes them after every change already, so this only repairs objects
/// loaded from an older state.
fn update_allowed_operations(lab: &Lab, call: &Invocation) -> Response {
    let vm = call.text(0)?;
    lab.with_db_mut(|db| {
        db.refresh_derived(Class::Vm, vm)?;
        for vbd in db.set_items(Class::Vm, vm, "VBDs")? {
            db.refresh_derived(Class::Vbd, &vbd)?;
            let vdi = db.text(Class::Vbd, &vbd, "VDI")?.to_owned();
            if db.exists(Class::Vdi, &vdi) {
                db.refresh_derived(Class::Vdi, &vdi)?;
            }
        }
        Ok(Value::void())
    })
}

fn snapshot(lab: &Lab, call: &Invocation) -> Response {
    let (vm, name) = (call.text(0)?, call.text(1)?);
    let ignored = call.strings(2)?;
    let time = now();
    lab.with_db_mut(|db| {
        check_not_blocked(db, vm, "snapshot")?;
        if db.get(Class::Vm, vm, "is_a_snapshot")?.as_bool() == Some(true) {
            return Err(xapi_errors::operation_not_allowed(
                "cannot snapshot a snapshot",
            ));
        }
        let state = power_state(db, vm)?;
        let vifs = vif::plan_copies(db, vm, true, None)?;
        let disks = copy_disks(lab, db, vm, Branch::Snapshot(&time), &ignored)?;
        let mut fields = copied_fields(db.record(Class::Vm, vm)?, name);
        fields.extend([
            ("is_a_template".to_owned(), Value::Bool(true)),
            ("is_a_snapshot".to_owned(), Value::Bool(true)),
            ("snapshot_of".to_owned(), Value::from(vm)),
            ("snapshot_time".to_owned(), time.clone()),
            (
                "snapshot_info".to_owned(),
                Value::Struct(
                    [
                        (
                            "disk-snapshot-type".to_owned(),
                            Value::from("crash_consistent"),
                        ),
                        ("power-state-at-snapshot".to_owned(), Value::from(state)),
                    ]
                    .into(),
                ),
            ),
        ]);
        let snapshot = db.insert(Class::Vm, fields);
        // xapi threads snapshots into a tree: the VM now descends from its latest snapshot.
        db.set(Class::Vm, vm, "parent", Value::from(snapshot.as_str()))?;
        attach_copies(db, &snapshot, disks)?;
        vif::insert_copies(db, &snapshot, vifs);
        Ok(Value::from(snapshot))
    })
}

fn clone(lab: &Lab, call: &Invocation) -> Response {
    let (vm, name) = (call.text(0)?, call.text(1)?);
    lab.with_db_mut(|db| {
        check_not_blocked(db, vm, "clone")?;
        let state = power_state(db, vm)?;
        if state != "Halted" {
            return Err(xapi_errors::bad_power_state(vm, "Halted", &state));
        }
        let mut fields = copied_fields(db.record(Class::Vm, vm)?, name);
        // A clone is a VM of its own, even when cloned from a snapshot.
        fields.extend([
            ("is_a_snapshot".to_owned(), Value::Bool(false)),
            ("snapshot_of".to_owned(), Value::from(NULL_REF)),
            ("snapshot_time".to_owned(), Value::DateTime(EPOCH.into())),
            (
                "snapshot_info".to_owned(),
                Value::Struct(Default::default()),
            ),
            ("parent".to_owned(), Value::from(NULL_REF)),
        ]);
        let seed = renew_mac_seed(&mut fields);
        let vifs = vif::plan_copies(db, vm, false, Some(&seed))?;
        let disks = copy_disks(lab, db, vm, Branch::Clone, &[])?;
        let clone = db.insert(Class::Vm, fields);
        attach_copies(db, &clone, disks)?;
        vif::insert_copies(db, &clone, vifs);
        Ok(Value::from(clone))
    })
}

fn start(lab: &Lab, call: &Invocation) -> Response {
    let vm = call.text(0)?;
    let paused = call.bool(1)?;
    call.bool(2)?;
    lab.with_db_mut(|db| {
        let host = this_host(db);
        power_on(db, vm, "start", &host, paused)
    })
}

fn start_on(lab: &Lab, call: &Invocation) -> Response {
    let (vm, host) = (call.text(0)?, call.text(1)?);
    let paused = call.bool(2)?;
    call.bool(3)?;
    lab.with_db_mut(|db| {
        db.record(Class::Host, host)?;
        power_on(db, vm, "start_on", host, paused)
    })
}

fn hard_shutdown(lab: &Lab, call: &Invocation) -> Response {
    let vm = call.text(0)?;
    lab.with_db_mut(|db| {
        check_not_blocked(db, vm, "hard_shutdown")?;
        let state = power_state(db, vm)?;
        if state == "Halted" {
            return Err(xapi_errors::bad_power_state(vm, "Running", &state));
        }
        power_off(db, vm)
    })
}

fn clean_shutdown(lab: &Lab, call: &Invocation) -> Response {
    let vm = call.text(0)?;
    lab.with_db_mut(|db| {
        check_not_blocked(db, vm, "clean_shutdown")?;
        let state = power_state(db, vm)?;
        if state != "Running" {
            return Err(xapi_errors::bad_power_state(vm, "Running", &state));
        }
        power_off(db, vm)
    })
}

fn set_memory_limits(lab: &Lab, call: &Invocation) -> Response {
    let vm = call.text(0)?;
    let limits = [
        ("memory_static_min", call.int(1)?),
        ("memory_static_max", call.int(2)?),
        ("memory_dynamic_min", call.int(3)?),
        ("memory_dynamic_max", call.int(4)?),
    ];
    let [static_min, static_max, dynamic_min, dynamic_max] = limits.map(|(_, bytes)| bytes);
    if !(0 <= static_min
        && static_min <= dynamic_min
        && dynamic_min <= dynamic_max
        && dynamic_max <= static_max)
    {
        return Err(XapiFault::new(
            "MEMORY_CONSTRAINT_VIOLATION",
            ["static_min <= dynamic_min <= dynamic_max <= static_max"],
        ));
    }
    lab.with_db_mut(|db| {
        db.record(Class::Vm, vm)?;
        for (field, bytes) in limits {
            db.set(Class::Vm, vm, field, Value::Int(bytes))?;
        }
        Ok(Value::void())
    })
}

/// `OPERATION_BLOCKED [vm, reason]` when `operation` is a key of `blocked_operations`.
fn check_not_blocked(db: &Db, vm: &str, operation: &str) -> Result<(), XapiFault> {
    let blocked = db.get(Class::Vm, vm, "blocked_operations")?;
    match blocked.get(operation).and_then(Value::as_str) {
        Some(reason) => Err(xapi_errors::operation_blocked(vm, reason)),
        None => Ok(()),
    }
}

fn power_state(db: &Db, vm: &str) -> Result<String, XapiFault> {
    Ok(db.text(Class::Vm, vm, "power_state")?.to_owned())
}

fn power_on(db: &mut Db, vm: &str, operation: &str, host: &str, paused: bool) -> Response {
    check_not_blocked(db, vm, operation)?;
    if db.get(Class::Vm, vm, "is_a_template")?.as_bool() == Some(true) {
        return Err(xapi_errors::vm_is_template(vm));
    }
    let state = power_state(db, vm)?;
    if state != "Halted" {
        return Err(xapi_errors::bad_power_state(vm, "Halted", &state));
    }
    let domid = db
        .records(Class::Vm)
        .filter_map(|(_, record)| record.get("domid")?.as_i64())
        .max()
        .unwrap_or(0)
        .max(0)
        + 1;
    let state = if paused { "Paused" } else { "Running" };
    db.set(Class::Vm, vm, "power_state", Value::from(state))?;
    db.set(Class::Vm, vm, "resident_on", Value::from(host))?;
    db.set(Class::Vm, vm, "domid", Value::Int(domid))?;
    for vbd in db.set_items(Class::Vm, vm, "VBDs")? {
        let device = db
            .text(Class::Vbd, &vbd, "userdevice")?
            .parse::<u8>()
            .ok()
            .filter(|n| *n < 26)
            .map(|n| format!("xvd{}", char::from(b'a' + n)));
        if let Some(device) = device {
            db.set(Class::Vbd, &vbd, "device", Value::from(device))?;
        }
        db.set(Class::Vbd, &vbd, "currently_attached", Value::Bool(true))?;
    }
    set_vifs_attached(db, vm, true)?;
    Ok(Value::void())
}

fn power_off(db: &mut Db, vm: &str) -> Response {
    db.set(Class::Vm, vm, "power_state", Value::from("Halted"))?;
    db.set(Class::Vm, vm, "resident_on", Value::from(NULL_REF))?;
    db.set(Class::Vm, vm, "domid", Value::Int(-1))?;
    for vbd in db.set_items(Class::Vm, vm, "VBDs")? {
        db.set(Class::Vbd, &vbd, "currently_attached", Value::Bool(false))?;
    }
    set_vifs_attached(db, vm, false)?;
    Ok(Value::void())
}

/// Plug or unplug every VIF of `vm`, as starting and stopping it does.
fn set_vifs_attached(db: &mut Db, vm: &str, attached: bool) -> Result<(), XapiFault> {
    for vif in db.set_items(Class::Vm, vm, "VIFs")? {
        db.set(
            Class::Vif,
            &vif,
            "currently_attached",
            Value::Bool(attached),
        )?;
    }
    Ok(())
}

/// The source VM's fields a snapshot or clone starts from.
fn copied_fields(source: &Record, name: &str) -> Record {
    let mut fields: Record = source
        .iter()
        .filter(|(field, _)| !NOT_COPIED.contains(&field.as_str()))
        .map(|(field, value)| (field.clone(), value.clone()))
        .collect();
    fields.insert("name_label".into(), Value::from(name));
    // Snapshots of a running VM and clones alike start halted.
    fields.insert("power_state".into(), Value::from("Halted"));
    fields
}

/// Give a clone a new seed for its VIFs' MACs, as xapi's `copy_vm_record` does whether or
/// not the source had one; returns it.
fn renew_mac_seed(fields: &mut Record) -> String {
    let seed = Uuid::new_v4().to_string();
    let other_config = fields
        .entry("other_config".into())
        .or_insert_with(|| Value::Struct(Default::default()));
    if let Value::Struct(other_config) = other_config {
        other_config.insert(MAC_SEED.into(), Value::from(seed.as_str()));
    }
    seed
}

/// A VBD of the source VM and the VDI its copy points at.
struct DiskCopy {
    vbd: String,
    vdi: String,
}

/// Branch every disk of `vm` (skipping VBDs whose VDI is in `ignored`); CDs keep their VDI
/// and empty drives stay empty. If one disk fails, the copies made so far are destroyed.
fn copy_disks(
    lab: &Lab,
    db: &mut Db,
    vm: &str,
    branch: Branch<'_>,
    ignored: &[String],
) -> Result<Vec<DiskCopy>, XapiFault> {
    let mut copies = Vec::new();
    for vbd in db.set_items(Class::Vm, vm, "VBDs")? {
        let record = db.record(Class::Vbd, &vbd)?;
        let vdi = record
            .get("VDI")
            .and_then(Value::as_str)
            .unwrap_or(NULL_REF)
            .to_owned();
        if ignored.contains(&vdi) {
            continue;
        }
        let is_disk = record.get("type").and_then(Value::as_str) == Some("Disk");
        let empty = vdi == NULL_REF || record.get("empty").and_then(Value::as_bool) == Some(true);
        let copy = if empty {
            NULL_REF.to_owned()
        } else if is_disk {
            match branch_vdi(lab, db, &vdi, branch) {
                Ok(copy) => copy,
                Err(fault) => {
                    for made in copies.iter().filter(|c: &&DiskCopy| c.vdi != NULL_REF) {
                        if let Err(e) = destroy_vdi(lab, db, &made.vdi) {
                            tracing::warn!(vdi = %made.vdi, error = %e, "rolling back a VM copy: destroying a disk copy failed");
                        }
                    }
                    return Err(fault);
                }
            }
        } else {
            vdi
        };
        copies.push(DiskCopy { vbd, vdi: copy });
    }
    Ok(copies)
}

/// Give `vm` a copy of each source VBD, pointing at the disk copies.
fn attach_copies(db: &mut Db, vm: &str, disks: Vec<DiskCopy>) -> Result<(), XapiFault> {
    for disk in disks {
        let source = db.record(Class::Vbd, &disk.vbd)?;
        let mut fields: Record = [
            "userdevice",
            "bootable",
            "mode",
            "type",
            "unpluggable",
            "device",
            "other_config",
            "qos_algorithm_type",
            "qos_algorithm_params",
        ]
        .iter()
        .filter_map(|&name| Some((name.to_owned(), source.get(name)?.clone())))
        .collect();
        let is_disk = source.get("type").and_then(Value::as_str) == Some("Disk");
        // xapi marks disk copies as owned by the new VM, so they go when it is deleted.
        if is_disk && let Some(Value::Struct(other_config)) = fields.get_mut("other_config") {
            other_config
                .entry("owner".into())
                .or_insert_with(|| Value::from(""));
        }
        fields.insert("VM".into(), Value::from(vm));
        fields.insert("empty".into(), Value::Bool(disk.vdi == NULL_REF));
        fields.insert("VDI".into(), Value::from(disk.vdi));
        db.insert(Class::Vbd, fields);
    }
    Ok(())
}
