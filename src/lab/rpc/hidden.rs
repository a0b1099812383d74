//! The SR's hidden VHD files as VDI records, as a XenServer file SR shows them: one unmanaged
//! VDI (`managed=false`, read-only, named "base copy") per frozen parent, with the uuid its
//! children's `sm_config['vhd-parent']` names and its own `vhd-parent`, so that clients walk
//! chains with `VDI.get_by_uuid` and `VDI.get_sm_config` (Xen Orchestra's chain checks do).
//!
//! The records follow the files: after every call that changes chains (snapshot, clone,
//! resize, destroy with its sweep and coalescing, scan) [`sync`] adds the records of new
//! hidden files, refreshes the others' sizes and parents (coalescing re-parents a merged
//! file), and removes those whose file is gone. No client may destroy or branch them:
//! xapi's SM answers `VDI_NOT_MANAGED`.

use std::collections::{BTreeMap, BTreeSet};

use super::xapi_errors;
use crate::lab::db::{Class, Db, Record};
use crate::lab::sr::HiddenVhd;
use crate::lab::state::Lab;
use crate::xapi::rpc::{Value, XapiFault};

/// The `name_label` SM gives the VDI of a hidden parent.
pub(super) const BASE_COPY: &str = "base copy";

/// Whether a VDI record is managed (a VDI of its own, not a hidden chain parent).
pub(super) fn is_managed(record: &Record) -> bool {
    record.get("managed").and_then(Value::as_bool) != Some(false)
}

/// `VDI_NOT_MANAGED [vdi]` for an unmanaged VDI, which no operation may touch.
pub(super) fn ensure_managed(db: &Db, vdi: &str) -> Result<(), XapiFault> {
    if is_managed(db.record(Class::Vdi, vdi)?) {
        Ok(())
    } else {
        Err(XapiFault::new("VDI_NOT_MANAGED", [vdi]))
    }
}

/// Bring the unmanaged VDI records of `sr` in line with the SR's hidden VHD files.
pub(super) fn sync(lab: &Lab, db: &mut Db, sr: &str) -> Result<(), XapiFault> {
    let hidden = lab.sr().hidden_vhds().map_err(xapi_errors::internal)?;
    let wanted: BTreeMap<String, &HiddenVhd> =
        hidden.iter().map(|h| (h.uuid.to_string(), h)).collect();
    let stale: Vec<String> = db
        .records(Class::Vdi)
        .filter(|(_, record)| !is_managed(record))
        .filter(|(_, record)| record.get("SR").and_then(Value::as_str) == Some(sr))
        .filter(|(_, record)| {
            let uuid = record.get("uuid").and_then(Value::as_str).unwrap_or("");
            !wanted.contains_key(uuid)
        })
        .map(|(reference, _)| reference.clone())
        .collect();
    for reference in stale {
        db.remove(Class::Vdi, &reference)?;
    }
    let known: BTreeSet<String> = db
        .records(Class::Vdi)
        .filter_map(|(_, record)| record.get("uuid").and_then(Value::as_str))
        .map(str::to_owned)
        .collect();
    for (uuid, vhd) in wanted {
        if !known.contains(&uuid) {
            db.insert(Class::Vdi, new_record(vhd, sr));
            continue;
        }
        let reference = db.by_uuid(Class::Vdi, &uuid)?.clone();
        // A managed VDI of that uuid is not ours to rewrite.
        if is_managed(db.record(Class::Vdi, &reference)?) {
            continue;
        }
        for (field, value) in changing_fields(vhd) {
            db.set(Class::Vdi, &reference, field, value)?;
        }
    }
    Ok(())
}

fn new_record(vhd: &HiddenVhd, sr: &str) -> Record {
    let uuid = Value::from(vhd.uuid.to_string());
    let fixed = [
        ("uuid", uuid.clone()),
        ("SR", Value::from(sr)),
        // File SRs locate a VDI by its uuid.
        ("location", uuid),
        ("name_label", Value::from(BASE_COPY)),
        ("managed", Value::Bool(false)),
        ("read_only", Value::Bool(true)),
    ];
    fixed
        .into_iter()
        .chain(changing_fields(vhd))
        .map(|(field, value)| (field.to_owned(), value))
        .collect()
}

/// The fields that follow the file: coalescing merges into it and re-parents it.
fn changing_fields(vhd: &HiddenVhd) -> [(&'static str, Value); 3] {
    let mut sm_config = BTreeMap::from([("vdi_type".to_owned(), Value::from("vhd"))]);
    if let Some(parent) = vhd.parent {
        sm_config.insert("vhd-parent".to_owned(), Value::from(parent.to_string()));
    }
    [
        (
            "virtual_size",
            Value::Int(super::live::clamp(vhd.virtual_size)),
        ),
        (
            "physical_utilisation",
            Value::Int(super::live::clamp(vhd.file_size)),
        ),
        ("sm_config", Value::Struct(sm_config)),
    ]
}
