//! Changed block tracking and NBD: `VDI.enable_cbt`, `disable_cbt`, `list_changed_blocks`,
//! `data_destroy` and `get_nbd_info`, with xapi's checks in xapi's order
//! (`Xapi_vdi.check_operation_error`, then the implementation) over the file SR's change logs
//! (see `lab::sr::cbt`).
//!
//! - `enable_cbt` / `disable_cbt (self)`: idempotent. A snapshot gets `OPERATION_NOT_ALLOWED
//!   ["VDI is a snapshot: <ref>"]`, a VDI of a type other than `user` or `system`
//!   `VDI_INCOMPATIBLE_TYPE [ref; type]`. `cbt_enabled` says whether the VDI has a log: a
//!   snapshot of a tracked VDI has one too.
//! - `list_changed_blocks (vdi_from, vdi_to)`: the base64 of the bitmap, one bit per 64 KiB,
//!   most significant bit first. SM's errors: `SR_BACKEND_FAILURE_460` when the two are the
//!   same VDI, when either is untracked, or when `vdi_to` does not follow `vdi_from` in one
//!   chain (a chain ends at `disable_cbt`). `VDI_IN_USE [vdi_to; "list_changed_blocks"]`
//!   while `vdi_to` is plugged into a VM that is not a snapshot.
//! - `data_destroy (self)`: `OPERATION_NOT_ALLOWED ["VDI is not a snapshot: <ref>"]`,
//!   `VDI_NO_CBT_METADATA [ref]` without a log, `VDI_IN_USE [ref; "data_destroy"]` while a
//!   VBD uses it (xapi waits 4 s for them to go; the lab does not wait). The type becomes
//!   `cbt_metadata`; a second call changes nothing.
//! - `get_nbd_info (self)` (no `Async.`): `[]` unless a network has the purpose `nbd` or
//!   `insecure_nbd`, a PIF with an address connects it, and the lab's NBD server runs; else
//!   one entry per such address: `{exportname, address, port, cert, subject}`.
//!   `VDI_INCOMPATIBLE_TYPE [ref; "cbt_metadata"]` for what `data_destroy` left.

use std::collections::BTreeMap;

use base64::Engine as _;

use super::args::{Invocation, Param};
use super::dispatch::Message;
use super::hidden;
use super::vdi::{locate, refresh_storage_fields};
use super::xapi_errors::{self, StorageCall};
use crate::lab::db::{Class, Db, strings};
use crate::lab::nbd::exports::NBD_PURPOSES;
use crate::lab::nbd::{NbdEndpoint, export_name};
use crate::lab::state::Lab;
use crate::xapi::rpc::{Response, Value, XapiFault};

pub(super) const MESSAGES: &[Message] = &[
    Message::long("enable_cbt", &[Param::Required("self")], enable_cbt),
    Message::long("disable_cbt", &[Param::Required("self")], disable_cbt),
    Message::long(
        "list_changed_blocks",
        &[Param::Required("vdi_from"), Param::Required("vdi_to")],
        list_changed_blocks,
    ),
    Message::long("data_destroy", &[Param::Required("self")], data_destroy),
    Message::sync("get_nbd_info", &[Param::Required("self")], get_nbd_info),
];

/// The type of VDIs of which only the change log is left.
pub(super) const CBT_METADATA: &str = "cbt_metadata";

/// `VDI_INCOMPATIBLE_TYPE [vdi; "cbt_metadata"]` for the operations that need a VDI's data
/// (snapshot, clone, resize, attach, CBT changes), as xapi's `check_operation_error` says.
pub(super) fn ensure_has_data(db: &Db, vdi: &str) -> Result<(), XapiFault> {
    if vdi_type(db, vdi)? == CBT_METADATA {
        return Err(incompatible_type(vdi, CBT_METADATA));
    }
    Ok(())
}

fn incompatible_type(vdi: &str, kind: &str) -> XapiFault {
    XapiFault::new("VDI_INCOMPATIBLE_TYPE", [vdi, kind])
}

fn vdi_type<'a>(db: &'a Db, vdi: &str) -> Result<&'a str, XapiFault> {
    Ok(db
        .get(Class::Vdi, vdi, "type")?
        .as_str()
        .unwrap_or_default())
}

fn flag(db: &Db, vdi: &str, field: &str) -> Result<bool, XapiFault> {
    Ok(db.get(Class::Vdi, vdi, field)?.as_bool() == Some(true))
}

fn enable_cbt(lab: &Lab, call: &Invocation) -> Response {
    change_tracking(lab, call.text(0)?, true)
}

fn disable_cbt(lab: &Lab, call: &Invocation) -> Response {
    change_tracking(lab, call.text(0)?, false)
}

fn change_tracking(lab: &Lab, vdi: &str, enable: bool) -> Response {
    lab.with_db_mut(|db| {
        let (uuid, sr) = locate(db, vdi)?;
        hidden::ensure_managed(db, vdi)?;
        ensure_has_data(db, vdi)?;
        if flag(db, vdi, "is_a_snapshot")? {
            return Err(xapi_errors::operation_not_allowed(&format!(
                "VDI is a snapshot: {vdi}"
            )));
        }
        let kind = vdi_type(db, vdi)?;
        if !matches!(kind, "user" | "system") {
            return Err(incompatible_type(vdi, kind));
        }
        if flag(db, vdi, "cbt_enabled")? == enable {
            return Ok(Value::void());
        }
        let storage = StorageCall {
            vdi,
            sr: &sr,
            operation: if enable { "enable_cbt" } else { "disable_cbt" },
        };
        let changed = if enable {
            lab.sr().enable_cbt(uuid)
        } else {
            lab.sr().disable_cbt(uuid)
        };
        changed.map_err(|e| storage.fault(e))?;
        refresh_storage_fields(lab, db, vdi)?;
        Ok(Value::void())
    })
}

fn list_changed_blocks(lab: &Lab, call: &Invocation) -> Response {
    let (from, to) = (call.text(0)?, call.text(1)?);
    lab.with_db(|db| {
        let (from_uuid, from_sr) = locate(db, from)?;
        let (to_uuid, sr) = locate(db, to)?;
        if from_sr != sr {
            return Err(XapiFault::new("VDIS_ON_DIFFERENT_SRS", [from, to]));
        }
        if plugged_outside_snapshots(db, to)? {
            return Err(xapi_errors::vdi_in_use(to, "list_changed_blocks"));
        }
        let storage = StorageCall {
            vdi: to,
            sr: &sr,
            operation: "list_changed_blocks",
        };
        let bitmap = lab
            .sr()
            .list_changed_blocks(from_uuid, to_uuid)
            .map_err(|e| storage.fault(e))?;
        let encoded = base64::engine::general_purpose::STANDARD.encode(bitmap.as_bytes());
        Ok(Value::from(encoded))
    })
}

/// Whether a VBD of a VM that is no snapshot has `vdi` plugged: xapi lets
/// `list_changed_blocks` through for snapshots' VBDs, which `VM.checkpoint` may leave
/// marked attached.
fn plugged_outside_snapshots(db: &Db, vdi: &str) -> Result<bool, XapiFault> {
    for vbd in db.set_items(Class::Vdi, vdi, "VBDs")? {
        if db.get(Class::Vbd, &vbd, "currently_attached")?.as_bool() != Some(true) {
            continue;
        }
        let vm = db.text(Class::Vbd, &vbd, "VM")?;
        let snapshot_vm = db.exists(Class::Vm, vm)
            && db.get(Class::Vm, vm, "is_a_snapshot")?.as_bool() == Some(true);
        if !snapshot_vm {
            return Ok(true);
        }
    }
    Ok(false)
}

fn data_destroy(lab: &Lab, call: &Invocation) -> Response {
    let vdi = call.text(0)?;
    lab.with_db_mut(|db| {
        let (uuid, sr) = locate(db, vdi)?;
        hidden::ensure_managed(db, vdi)?;
        if !flag(db, vdi, "is_a_snapshot")? {
            return Err(xapi_errors::operation_not_allowed(&format!(
                "VDI is not a snapshot: {vdi}"
            )));
        }
        if !flag(db, vdi, "cbt_enabled")? {
            return Err(XapiFault::new("VDI_NO_CBT_METADATA", [vdi]));
        }
        if vdi_type(db, vdi)? == CBT_METADATA {
            return Ok(Value::void());
        }
        if !db.set_items(Class::Vdi, vdi, "VBDs")?.is_empty() {
            return Err(xapi_errors::vdi_in_use(vdi, "data_destroy"));
        }
        let storage = StorageCall {
            vdi,
            sr: &sr,
            operation: "data_destroy",
        };
        lab.sr().data_destroy(uuid).map_err(|e| storage.fault(e))?;
        refresh_storage_fields(lab, db, vdi)?;
        // The snapshot's leaf went; its parent may have been merged away.
        hidden::sync(lab, db, &sr)?;
        Ok(Value::void())
    })
}

fn get_nbd_info(lab: &Lab, call: &Invocation) -> Response {
    let vdi = call.text(0)?;
    let session = call.session.as_deref().unwrap_or_default();
    let endpoint = lab
        .nbd_slot()
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    let (uuid, addresses) = lab.with_db(|db| {
        let (uuid, _) = locate(db, vdi)?;
        ensure_has_data(db, vdi)?;
        Ok::<_, XapiFault>((uuid, nbd_addresses(db)?))
    })?;
    let Some(endpoint) = endpoint.filter(|_| !addresses.is_empty()) else {
        return Ok(Value::Array(Vec::new()));
    };
    let identity = endpoint
        .identity
        .get()
        .map_err(|e| xapi_errors::internal(format!("the lab host's certificate: {e}")))?;
    let entries = reachable(&endpoint, addresses)
        .into_iter()
        .map(|address| {
            let entry: BTreeMap<String, Value> = [
                ("exportname", Value::from(export_name(uuid, session))),
                ("address", Value::from(address)),
                ("port", Value::Int(i64::from(endpoint.addr.port()))),
                ("cert", Value::from(identity.cert_pem.as_str())),
                ("subject", Value::from(crate::lab::http::tls::SUBJECT)),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect();
            Value::Struct(entry)
        })
        .collect();
    Ok(Value::Array(entries))
}

/// The addresses of the plugged PIFs of the networks whose purpose offers NBD, as xapi lists
/// them (IPv4 first, then IPv6).
fn nbd_addresses(db: &Db) -> Result<Vec<String>, XapiFault> {
    let networks: Vec<&String> = db
        .records(Class::Network)
        .filter(|(_, record)| {
            record.get("purpose").is_some_and(|p| {
                strings(p)
                    .iter()
                    .any(|p| NBD_PURPOSES.contains(&p.as_str()))
            })
        })
        .map(|(reference, _)| reference)
        .collect();
    let mut addresses = Vec::new();
    for (_, pif) in db.records(Class::Pif) {
        let on_nbd = pif
            .get("network")
            .and_then(Value::as_str)
            .is_some_and(|n| networks.iter().any(|m| *m == n));
        let plugged = pif.get("currently_attached").and_then(Value::as_bool) != Some(false);
        if !on_nbd || !plugged {
            continue;
        }
        let v4 = pif.get("IP").and_then(Value::as_str).unwrap_or_default();
        let v6 = pif.get("IPv6").map(strings).unwrap_or_default();
        addresses.extend(
            std::iter::once(v4.to_owned())
                .chain(v6)
                .filter(|ip| !ip.is_empty()),
        );
    }
    Ok(addresses)
}

/// The addresses a client reaches the NBD server at: the PIFs' when the server listens on
/// every address, else the one it listens on (a lab's PIFs only pretend to have addresses).
fn reachable(endpoint: &NbdEndpoint, pif_addresses: Vec<String>) -> Vec<String> {
    if endpoint.addr.ip().is_unspecified() {
        let mut addresses = pif_addresses;
        addresses.dedup();
        addresses
    } else {
        vec![endpoint.addr.ip().to_string()]
    }
}
