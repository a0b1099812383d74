//! SR messages: `SR.scan`, which reconciles the VDI records with the VHD chains the file SR
//! holds, as an SR scan does on XenServer. It also runs when the lab host opens, to repair
//! what a crash between a storage change and the next state save left behind.

use std::collections::BTreeSet;

use uuid::Uuid;

use super::args::{Invocation, Param};
use super::dispatch::Message;
use super::hidden;
use super::live::uuid_of;
use super::vdi::refresh_storage_fields;
use crate::lab::db::{Class, Db, Record};
use crate::lab::state::Lab;
use crate::xapi::rpc::{Response, Value, XapiFault};

pub(super) const MESSAGES: &[Message] = &[Message::long("scan", &[Param::Required("sr")], scan)];

fn scan(lab: &Lab, call: &Invocation) -> Response {
    let sr = call.text(0)?;
    lab.with_db_mut(|db| {
        scan_sr(lab, db, sr)?;
        Ok(Value::void())
    })
}

impl Lab {
    /// Scan every SR record against the file SR.
    pub(crate) fn scan_all(&self, db: &mut Db) -> Result<(), XapiFault> {
        for sr in db.refs(Class::Sr).cloned().collect::<Vec<_>>() {
            scan_sr(self, db, &sr)?;
        }
        Ok(())
    }
}

/// Flag the SR's VDI records whose chain is gone as `missing` (and unflag those back), unless
/// `VDI.data_destroy` left their change log, refresh the storage fields of the others,
/// introduce a record for every chain no record names, and bring the unmanaged records of
/// hidden parents in line with the files.
fn scan_sr(lab: &Lab, db: &mut Db, sr: &str) -> Result<(), XapiFault> {
    db.record(Class::Sr, sr)?;
    let on_disk: BTreeSet<Uuid> = lab
        .sr()
        .vdis()
        .into_iter()
        .chain(lab.sr().metadata_only_vdis())
        .collect();
    let mut known = BTreeSet::new();
    // Hidden parents are no chains of their own: `hidden::sync` keeps their records.
    let records: Vec<(String, Option<Uuid>, bool)> = db
        .records(Class::Vdi)
        .filter(|(_, record)| hidden::is_managed(record))
        .map(|(reference, record)| {
            let here = record.get("SR").and_then(Value::as_str) == Some(sr);
            (reference.clone(), uuid_of(record), here)
        })
        .collect();
    for (vdi, uuid, here) in records {
        known.extend(uuid);
        if !here {
            continue;
        }
        let present = uuid.is_some_and(|u| on_disk.contains(&u));
        db.set(Class::Vdi, &vdi, "missing", Value::Bool(!present))?;
        if present {
            refresh_storage_fields(lab, db, &vdi)?;
        }
    }
    for uuid in on_disk.difference(&known) {
        let fields: Record = [
            ("uuid".to_owned(), Value::from(uuid.to_string())),
            ("SR".to_owned(), Value::from(sr)),
            ("location".to_owned(), Value::from(uuid.to_string())),
        ]
        .into();
        let vdi = db.insert(Class::Vdi, fields);
        refresh_storage_fields(lab, db, &vdi)?;
        tracing::info!(%uuid, "SR scan: introduced a VDI record for a chain without one");
    }
    hidden::sync(lab, db, sr)
}
