//! VBD messages: create and destroy. A VBD links a VM to a VDI (or to nothing, for an empty
//! CD drive) at a `userdevice` position.

use super::accessors::constructor_fields;
use super::args::{Invocation, Param};
use super::dispatch::Message;
use super::xapi_errors;
use crate::lab::db::{Class, Db, NULL_REF};
use crate::lab::state::Lab;
use crate::xapi::rpc::{Response, Value, XapiFault};

pub(super) const MESSAGES: &[Message] = &[
    Message::long("create", &[Param::Required("args")], create),
    Message::long("destroy", &[Param::Required("self")], destroy),
];

/// The `userdevice` asking the server to pick the first free position.
const AUTODETECT: &str = "autodetect";

fn create(lab: &Lab, call: &Invocation) -> Response {
    let mut fields = constructor_fields(Class::Vbd, call.record(0)?)?;
    let text = |fields: &crate::lab::db::Record, name: &str, default: &str| {
        fields
            .get(name)
            .and_then(Value::as_str)
            .unwrap_or(default)
            .to_owned()
    };
    let vm = text(&fields, "VM", NULL_REF);
    let vdi = text(&fields, "VDI", NULL_REF);
    let userdevice = text(&fields, "userdevice", AUTODETECT);
    lab.with_db_mut(|db| {
        db.record(Class::Vm, &vm)?;
        if vdi != NULL_REF {
            // Hidden chain parents are never attached (xapi: `VDI_NOT_MANAGED`), nor what
            // `VDI.data_destroy` left (`VDI_INCOMPATIBLE_TYPE`).
            super::hidden::ensure_managed(db, &vdi)?;
            super::cbt::ensure_has_data(db, &vdi)?;
        }
        let userdevice = free_userdevice(db, &vm, &userdevice)?;
        fields.insert("userdevice".into(), Value::from(userdevice));
        fields.insert("empty".into(), Value::Bool(vdi == NULL_REF));
        // Plugging happens when the VM starts.
        fields.insert("currently_attached".into(), Value::Bool(false));
        Ok(Value::from(db.insert(Class::Vbd, fields)))
    })
}

fn destroy(lab: &Lab, call: &Invocation) -> Response {
    let vbd = call.text(0)?;
    lab.with_db_mut(|db| {
        if db.get(Class::Vbd, vbd, "currently_attached")?.as_bool() == Some(true) {
            return Err(xapi_errors::operation_not_allowed(
                "the VBD is attached to a running VM",
            ));
        }
        db.remove(Class::Vbd, vbd)?;
        Ok(Value::void())
    })
}

/// `wanted` if no other VBD of the VM uses it (else `DEVICE_ALREADY_EXISTS`), or for
/// `autodetect` (and an empty one) the lowest free position.
fn free_userdevice(db: &Db, vm: &str, wanted: &str) -> Result<String, XapiFault> {
    let used = db
        .set_items(Class::Vm, vm, "VBDs")?
        .iter()
        .map(|vbd| Ok(db.text(Class::Vbd, vbd, "userdevice")?.to_owned()))
        .collect::<Result<Vec<_>, XapiFault>>()?;
    if wanted.is_empty() || wanted == AUTODETECT {
        let free = (0u32..)
            .map(|n| n.to_string())
            .find(|n| !used.contains(n))
            .unwrap_or_default();
        return Ok(free);
    }
    if used.iter().any(|u| u == wanted) {
        return Err(XapiFault::new("DEVICE_ALREADY_EXISTS", [wanted]));
    }
    Ok(wanted.to_owned())
}
