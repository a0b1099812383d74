//! Fields the server computes from the rest of a record, recomputed after every change.
//!
//! `allowed_operations` lists the operations the lab host implements that the object's
//! state permits; for VMs it leaves out what `blocked_operations` blocks, as xapi's
//! `update_allowed_operations` does. Unmanaged VDIs (hidden chain parents) allow nothing,
//! as xapi refuses every operation on them but `forget`, which the lab lacks. VBDs (plugged
//! by their VM's start, with no `VBD.plug` or CD media here), the host and the pool have no
//! operation of their own the lab implements, so theirs stay empty.

use crate::xapi::rpc::Value;

use super::Record;
use super::schema::Class;

pub(super) fn refresh(class: Class, record: &mut Record) {
    let allowed = match class {
        Class::Vm => vm_operations(record),
        Class::Vdi => vdi_operations(record),
        Class::Sr => SR_OPERATIONS.to_vec(),
        Class::Task => task_operations(record),
        _ => return,
    };
    record.insert("allowed_operations".into(), Value::from(allowed));
}

fn text<'a>(record: &'a Record, field: &str) -> &'a str {
    record.get(field).and_then(Value::as_str).unwrap_or("")
}

fn flag(record: &Record, field: &str) -> bool {
    record.get(field).and_then(Value::as_bool).unwrap_or(false)
}

fn vm_operations(record: &Record) -> Vec<&'static str> {
    // Snapshots are templates in XAPI: they can be cloned or destroyed, not run.
    let candidates: &[&'static str] = if flag(record, "is_a_template") {
        &["clone", "destroy"]
    } else {
        match text(record, "power_state") {
            "Halted" => &["clone", "destroy", "snapshot", "start", "start_on"],
            "Running" => &["clean_shutdown", "hard_shutdown", "snapshot"],
            _ => &["hard_shutdown", "snapshot"],
        }
    };
    let blocked = record.get("blocked_operations").and_then(Value::as_struct);
    candidates
        .iter()
        .copied()
        .filter(|op| blocked.is_none_or(|b| !b.contains_key(*op)))
        .collect()
}

/// As xapi's `check_operation_error`: what `VDI.data_destroy` left can only go or be compared,
/// a snapshot's data can be destroyed once it is tracked, and only other VDIs change tracking.
fn vdi_operations(record: &Record) -> Vec<&'static str> {
    let mut operations = if !flag(record, "managed") {
        return vec![];
    } else if text(record, "type") == "cbt_metadata" {
        vec!["destroy", "list_changed_blocks"]
    } else if flag(record, "read_only") {
        vec!["clone", "destroy", "list_changed_blocks", "snapshot"]
    } else {
        vec![
            "clone",
            "destroy",
            "list_changed_blocks",
            "resize",
            "snapshot",
        ]
    };
    let snapshot = flag(record, "is_a_snapshot");
    if snapshot && flag(record, "cbt_enabled") {
        operations.push("data_destroy");
    }
    if !snapshot && matches!(text(record, "type"), "user" | "system") {
        operations.extend(["disable_cbt", "enable_cbt"]);
    }
    operations.sort_unstable();
    operations
}

/// What the lab's file SR does (`storage_operations`).
const SR_OPERATIONS: &[&str] = &[
    "scan",
    "vdi_create",
    "vdi_destroy",
    "vdi_resize",
    "vdi_clone",
    "vdi_snapshot",
];

fn task_operations(record: &Record) -> Vec<&'static str> {
    if text(record, "status") == "pending" {
        vec!["cancel"]
    } else {
        vec![]
    }
}
