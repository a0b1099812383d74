//! VDI messages over the file SR: create, destroy, snapshot, clone, resize (the CBT ones are
//! in `cbt`). Storage changes come first and the records follow, so a record never names a
//! VHD chain that does not exist; each VDI's `virtual_size`, `read_only`, `cbt_enabled` and
//! `sm_config` (`vdi_type: vhd`, `vhd-parent: <uuid of the VHD its leaf builds on>`) are read
//! back from the SR, and the hidden parents the calls create or delete are kept as unmanaged
//! VDIs (see `hidden`). A VDI whose data `VDI.data_destroy` destroyed keeps its record, of
//! type `cbt_metadata`, without `vhd-parent`.

use std::collections::BTreeMap;

use uuid::Uuid;

use super::accessors::constructor_fields;
use super::args::{Fallback, Invocation, Param};
use super::cbt::{CBT_METADATA, ensure_has_data};
use super::dispatch::Message;
use super::hidden;
use super::live::{clamp, uuid_of};
use super::now;
use super::xapi_errors::{self, StorageCall};
use crate::lab::db::{Class, Db, NULL_REF, Record};
use crate::lab::sr::{FileSr, SrError};
use crate::lab::state::Lab;
use crate::xapi::rpc::{Response, Value, XapiFault};

pub(super) const MESSAGES: &[Message] = &[
    Message::long("create", &[Param::Required("args")], create),
    Message::long("destroy", &[Param::Required("self")], destroy),
    Message::long("snapshot", DRIVER_PARAMS, snapshot),
    Message::long("clone", DRIVER_PARAMS, clone),
    Message::long(
        "resize",
        &[Param::Required("vdi"), Param::Required("size")],
        resize,
    ),
];

const DRIVER_PARAMS: &[Param] = &[
    Param::Required("vdi"),
    Param::Optional("driver_params", Fallback::EmptyMap),
];

/// What `VDI.snapshot` and `VDI.clone` copy from the source (protocol reference §2.3).
const COPIED_FIELDS: &[&str] = &[
    "name_label",
    "name_description",
    "type",
    "sharable",
    "other_config",
    "xenstore_data",
    "on_boot",
    "allow_caching",
    "tags",
];

fn create(lab: &Lab, call: &Invocation) -> Response {
    let mut fields = constructor_fields(Class::Vdi, call.record(0)?)?;
    let sr = fields
        .remove("SR")
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_else(|| NULL_REF.to_owned());
    let size = fields
        .remove("virtual_size")
        .and_then(|v| v.as_i64())
        .ok_or_else(|| XapiFault::new("FIELD_TYPE_ERROR", ["virtual_size"]))?;
    let size = u64::try_from(size)
        .map_err(|_| XapiFault::new("INVALID_VALUE", ["virtual_size".into(), size.to_string()]))?;
    if fields.get("type").and_then(Value::as_str) == Some(CBT_METADATA) {
        return Err(XapiFault::new("VDI_INCOMPATIBLE_TYPE", ["", CBT_METADATA]));
    }
    lab.with_db_mut(|db| Ok(Value::from(create_vdi(lab, db, &sr, size, fields)?)))
}

fn destroy(lab: &Lab, call: &Invocation) -> Response {
    let vdi = call.text(0)?;
    lab.with_db_mut(|db| {
        destroy_vdi(lab, db, vdi)?;
        Ok(Value::void())
    })
}

fn snapshot(lab: &Lab, call: &Invocation) -> Response {
    let vdi = call.text(0)?;
    // Driver parameters tune SM backends; the file SR has none, so they are only checked.
    call.map(1)?;
    let time = now();
    lab.with_db_mut(|db| {
        Ok(Value::from(branch_vdi(
            lab,
            db,
            vdi,
            Branch::Snapshot(&time),
        )?))
    })
}

fn clone(lab: &Lab, call: &Invocation) -> Response {
    let vdi = call.text(0)?;
    // As for snapshots, driver parameters are checked and otherwise unused.
    call.map(1)?;
    lab.with_db_mut(|db| Ok(Value::from(branch_vdi(lab, db, vdi, Branch::Clone)?)))
}

fn resize(lab: &Lab, call: &Invocation) -> Response {
    let vdi = call.text(0)?;
    let size = call.int(1)?;
    let size = u64::try_from(size)
        .map_err(|_| XapiFault::new("INVALID_VALUE", ["size".into(), size.to_string()]))?;
    lab.with_db_mut(|db| {
        let (uuid, sr) = locate(db, vdi)?;
        let storage = StorageCall {
            vdi,
            sr: &sr,
            operation: "resize",
        };
        hidden::ensure_managed(db, vdi)?;
        ensure_has_data(db, vdi)?;
        if attached(db, vdi)? {
            return Err(xapi_errors::vdi_in_use(vdi, "resize"));
        }
        lab.sr().resize(uuid, size).map_err(|e| storage.fault(e))?;
        refresh_storage_fields(lab, db, vdi)?;
        // The old leaf is a hidden parent now.
        hidden::sync(lab, db, &sr)?;
        Ok(Value::void())
    })
}

/// Create a VDI of `virtual_size` bytes on `sr` with the given record fields.
pub(super) fn create_vdi(
    lab: &Lab,
    db: &mut Db,
    sr: &str,
    virtual_size: u64,
    mut fields: Record,
) -> Result<String, XapiFault> {
    db.record(Class::Sr, sr)?;
    let uuid = Uuid::new_v4();
    let storage = StorageCall {
        vdi: NULL_REF,
        sr,
        operation: "create",
    };
    lab.sr()
        .create(uuid, virtual_size)
        .map_err(|e| storage.fault(e))?;
    let sm_config = fields.remove("sm_config").unwrap_or(Value::Nil);
    fields.extend(identity(uuid, sr));
    let storage_fields = storage_fields(lab, uuid, &sm_config).map_err(|e| storage.fault(e))?;
    fields.extend(
        storage_fields
            .into_iter()
            .map(|(name, value)| (name.to_owned(), value)),
    );
    Ok(db.insert(Class::Vdi, fields))
}

/// How a new VDI branches off an existing one.
#[derive(Clone, Copy)]
pub(super) enum Branch<'a> {
    /// A read-only snapshot taken at this time.
    Snapshot(&'a Value),
    /// A writable copy-on-write clone.
    Clone,
}

/// Snapshot or clone `vdi`: the SR freezes its leaf and gives both VDIs fresh children.
pub(super) fn branch_vdi(
    lab: &Lab,
    db: &mut Db,
    vdi: &str,
    branch: Branch<'_>,
) -> Result<String, XapiFault> {
    let source = db.record(Class::Vdi, vdi)?.clone();
    let operation = match branch {
        Branch::Snapshot(_) => "snapshot",
        Branch::Clone => "clone",
    };
    let (uuid, sr) = locate(db, vdi)?;
    hidden::ensure_managed(db, vdi)?;
    ensure_has_data(db, vdi)?;
    let storage = StorageCall {
        vdi,
        sr: &sr,
        operation,
    };
    let new_uuid = Uuid::new_v4();
    let result = match branch {
        Branch::Snapshot(_) => lab.sr().snapshot(uuid, new_uuid),
        Branch::Clone => FileSr::clone(lab.sr(), uuid, new_uuid),
    };
    result.map_err(|e| storage.fault(e))?;
    let mut fields: Record = COPIED_FIELDS
        .iter()
        .filter_map(|&name| Some((name.to_owned(), source.get(name)?.clone())))
        .collect();
    if let Branch::Snapshot(time) = branch {
        fields.insert("is_a_snapshot".into(), Value::Bool(true));
        fields.insert("snapshot_of".into(), Value::from(vdi));
        fields.insert("snapshot_time".into(), time.clone());
    }
    fields.extend(identity(new_uuid, &sr));
    let storage_fields =
        storage_fields(lab, new_uuid, &Value::Nil).map_err(|e| storage.fault(e))?;
    fields.extend(
        storage_fields
            .into_iter()
            .map(|(name, value)| (name.to_owned(), value)),
    );
    let new_vdi = db.insert(Class::Vdi, fields);
    // The source now builds on the frozen parent too, which becomes an unmanaged VDI.
    refresh_storage_fields(lab, db, vdi)?;
    hidden::sync(lab, db, &sr)?;
    Ok(new_vdi)
}

/// Destroy `vdi` and the VBDs that use it, as xapi does; refused while a running VM uses it.
pub(super) fn destroy_vdi(lab: &Lab, db: &mut Db, vdi: &str) -> Result<(), XapiFault> {
    let (uuid, sr) = locate(db, vdi)?;
    let storage = StorageCall {
        vdi,
        sr: &sr,
        operation: "destroy",
    };
    hidden::ensure_managed(db, vdi)?;
    if attached(db, vdi)? {
        return Err(xapi_errors::vdi_in_use(vdi, "destroy"));
    }
    match lab.sr().destroy(uuid) {
        // Already gone from the SR (a `missing` VDI): only the record is left to remove.
        Ok(()) | Err(SrError::NotFound { .. }) => {}
        Err(e) => return Err(storage.fault(e)),
    }
    for vbd in db.set_items(Class::Vdi, vdi, "VBDs")? {
        db.remove(Class::Vbd, &vbd)?;
    }
    db.remove(Class::Vdi, vdi)?;
    // The sweep and coalescing after a destroy delete and merge hidden parents.
    hidden::sync(lab, db, &sr)?;
    Ok(())
}

/// Re-read a VDI's storage fields from the SR after its chain changed.
pub(super) fn refresh_storage_fields(lab: &Lab, db: &mut Db, vdi: &str) -> Result<(), XapiFault> {
    let (uuid, sr) = locate(db, vdi)?;
    let storage = StorageCall {
        vdi,
        sr: &sr,
        operation: "update",
    };
    let sm_config = db.get(Class::Vdi, vdi, "sm_config")?.clone();
    for (field, value) in storage_fields(lab, uuid, &sm_config).map_err(|e| storage.fault(e))? {
        db.set(Class::Vdi, vdi, field, value)?;
    }
    Ok(())
}

/// The fields a new VDI record takes from its uuid and SR.
fn identity(uuid: Uuid, sr: &str) -> [(String, Value); 3] {
    [
        ("uuid".into(), Value::from(uuid.to_string())),
        ("SR".into(), Value::from(sr)),
        // File SRs locate a VDI by its uuid.
        ("location".into(), Value::from(uuid.to_string())),
    ]
}

/// The fields the SR is the authority on, with `sm_config`'s other keys kept. Of a VDI of
/// which only the change log is left, the type says so and the size stays as it was.
fn storage_fields(
    lab: &Lab,
    uuid: Uuid,
    sm_config: &Value,
) -> Result<Vec<(&'static str, Value)>, SrError> {
    let sr = lab.sr();
    let mut config: BTreeMap<String, Value> = sm_config.as_struct().cloned().unwrap_or_default();
    config.insert("vdi_type".into(), Value::from("vhd"));
    let cbt_enabled = ("cbt_enabled", Value::Bool(sr.has_change_log(uuid)));
    if sr.is_metadata_only(uuid) {
        config.remove("vhd-parent");
        return Ok(vec![
            ("type", Value::from(CBT_METADATA)),
            ("sm_config", Value::Struct(config)),
            cbt_enabled,
        ]);
    }
    match sr.vhd_parent(uuid)? {
        Some(parent) => config.insert("vhd-parent".into(), Value::from(parent.to_string())),
        None => config.remove("vhd-parent"),
    };
    Ok(vec![
        ("virtual_size", Value::Int(clamp(sr.virtual_size(uuid)?))),
        ("read_only", Value::Bool(sr.is_read_only(uuid)?)),
        ("sm_config", Value::Struct(config)),
        cbt_enabled,
    ])
}

/// The VDI's uuid, by which the SR knows it, and its SR's reference.
pub(super) fn locate(db: &Db, vdi: &str) -> Result<(Uuid, String), XapiFault> {
    let record = db.record(Class::Vdi, vdi)?;
    let uuid = uuid_of(record)
        .ok_or_else(|| xapi_errors::internal(format!("VDI {vdi} has no valid uuid")))?;
    let sr = record.get("SR").and_then(Value::as_str).unwrap_or(NULL_REF);
    Ok((uuid, sr.to_owned()))
}

/// Whether a VBD of a running VM has the VDI plugged.
fn attached(db: &Db, vdi: &str) -> Result<bool, XapiFault> {
    for vbd in db.set_items(Class::Vdi, vdi, "VBDs")? {
        if db.get(Class::Vbd, &vbd, "currently_attached")?.as_bool() == Some(true) {
            return Ok(true);
        }
    }
    Ok(false)
}
