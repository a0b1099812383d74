//! Records as clients see them. Space figures change without any RPC (guest writes, imports),
//! so they are measured from the SR's files whenever a record is read, instead of being
//! stored: a VDI's `physical_utilisation`, an SR's `physical_size`, `physical_utilisation`
//! and `virtual_allocation`.

use uuid::Uuid;

use crate::lab::db::{Class, Db, DbError, Record};
use crate::lab::state::Lab;
use crate::xapi::rpc::Value;

/// The record of `reference` with its measured fields filled in from the files now.
pub(super) fn present(lab: &Lab, db: &Db, class: Class, reference: &str) -> Result<Value, DbError> {
    let mut record = db.record(class, reference)?.clone();
    let sr = lab.sr();
    let mut measured = |field: &str, bytes: Option<u64>| {
        if let Some(bytes) = bytes {
            record.insert(field.to_owned(), Value::Int(clamp(bytes)));
        }
    };
    match class {
        Class::Vdi => {
            let bytes = uuid_of(db.record(class, reference)?)
                .and_then(|uuid| sr.vdi_physical_utilisation(uuid).ok());
            measured("physical_utilisation", bytes);
        }
        Class::Sr => {
            measured("physical_size", sr.physical_size().ok());
            measured("physical_utilisation", sr.physical_utilisation().ok());
            let allocated = db
                .records(Class::Vdi)
                .filter(|(_, vdi)| vdi.get("SR").and_then(Value::as_str) == Some(reference))
                // Hidden parents' sizes are their children's, counted there.
                .filter(|(_, vdi)| super::hidden::is_managed(vdi))
                .filter_map(|(_, vdi)| vdi.get("virtual_size").and_then(Value::as_i64))
                .sum::<i64>();
            record.insert("virtual_allocation".into(), Value::Int(allocated));
        }
        _ => {}
    }
    Ok(Value::Struct(record))
}

/// The uuid of a record, parsed.
pub(super) fn uuid_of(record: &Record) -> Option<Uuid> {
    record.get("uuid")?.as_str()?.parse().ok()
}

/// XAPI ints are signed 64-bit; no file is that large, but never wrap.
pub(super) fn clamp(bytes: u64) -> i64 {
    i64::try_from(bytes).unwrap_or(i64::MAX)
}
