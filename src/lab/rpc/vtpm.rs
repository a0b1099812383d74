//! VTPM messages: a VM's virtual TPM, after xapi's `Xapi_vtpm`.
//!
//! `VTPM.create(vM, is_unique)` refuses a VM that has one already (`VTPM_MAX_AMOUNT_REACHED
//! [count]`: one per VM) and a VM that is not halted (`VM_BAD_POWER_STATE`), in that order;
//! `VTPM.destroy` wants the VM halted too. The contents are a secret no record shows, as in
//! xapi (an internal-only `secret`): `VTPM.get_contents` / `set_contents`, base64 text that
//! `set_contents` checks as xapi does (`INTERNAL_ERROR` when it does not decode). The lab
//! bounds them to [`MAX_CONTENTS`] decoded bytes (`INVALID_VALUE [contents, why]`), room for
//! libtpms' whole NV memory. A new VTPM's contents are empty.
//!
//! Clones and snapshots copy every VTPM (xapi's `Xapi_vtpm.copy`): a unique one
//! (`is_unique`) gets empty contents, since a TPM's secrets must not exist twice; the others
//! take a copy of the contents. Destroying the VM destroys its VTPMs. `allowed_operations`
//! is `destroy` while the VM is halted.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

use super::args::{Invocation, Param};
use super::dispatch::Message;
use super::vm::check_halted;
use super::xapi_errors;
use crate::lab::db::{Class, Db, NULL_REF, Record};
use crate::lab::state::Lab;
use crate::xapi::rpc::{Response, Value, XapiFault};

pub(super) const MESSAGES: &[Message] = &[
    Message::long(
        "create",
        &[Param::Required("vM"), Param::Required("is_unique")],
        create,
    ),
    Message::long("destroy", &[Param::Required("self")], destroy),
    Message::long("get_contents", &[Param::Required("self")], get_contents),
    Message::long(
        "set_contents",
        &[Param::Required("self"), Param::Required("contents")],
        set_contents,
    ),
];

/// The most a VTPM may hold, decoded: libtpms' NV memory (`NV_MEMORY_SIZE`, 176,832 bytes)
/// with room to spare, and well inside the RPC body limit once base64-encoded.
pub const MAX_CONTENTS: usize = 256 << 10;

fn create(lab: &Lab, call: &Invocation) -> Response {
    let vm = call.text(0)?;
    let is_unique = call.bool(1)?;
    lab.with_db_mut(|db| {
        let existing = db.set_items(Class::Vm, vm, "VTPMs")?;
        if !existing.is_empty() {
            return Err(XapiFault::new(
                "VTPM_MAX_AMOUNT_REACHED",
                [existing.len().to_string()],
            ));
        }
        check_halted(db, vm)?;
        Ok(Value::from(insert(db, vm, is_unique, String::new())?))
    })
}

fn destroy(lab: &Lab, call: &Invocation) -> Response {
    let vtpm = call.text(0)?;
    lab.with_db_mut(|db| {
        let vm = db.text(Class::Vtpm, vtpm, "VM")?.to_owned();
        if db.exists(Class::Vm, &vm) {
            check_halted(db, &vm)?;
        }
        db.remove(Class::Vtpm, vtpm)?;
        Ok(Value::void())
    })
}

fn get_contents(lab: &Lab, call: &Invocation) -> Response {
    let vtpm = call.text(0)?;
    lab.with_db(|db| {
        db.record(Class::Vtpm, vtpm)?;
        Ok(Value::from(db.secret(vtpm).unwrap_or_default()))
    })
}

fn set_contents(lab: &Lab, call: &Invocation) -> Response {
    let vtpm = call.text(0)?;
    let contents = call.text(1)?;
    check_contents(contents)?;
    lab.with_db_mut(|db| {
        db.set_secret(Class::Vtpm, vtpm, contents.to_owned())?;
        Ok(Value::void())
    })
}

/// `INTERNAL_ERROR` for contents that are not base64, as xapi's `set_contents`, and
/// `INVALID_VALUE` for more than [`MAX_CONTENTS`] bytes, checked before decoding anything.
pub(super) fn check_contents(contents: &str) -> Result<(), XapiFault> {
    let too_large = || {
        XapiFault::new(
            "INVALID_VALUE",
            [
                "contents".to_owned(),
                format!("more than the {MAX_CONTENTS} bytes a lab VTPM holds"),
            ],
        )
    };
    if contents.len() > MAX_CONTENTS.div_ceil(3) * 4 {
        return Err(too_large());
    }
    let decoded = STANDARD
        .decode(contents)
        .map_err(|e| xapi_errors::internal(format!("VTPM contents are not base64: {e}")))?;
    if decoded.len() > MAX_CONTENTS {
        return Err(too_large());
    }
    Ok(())
}

/// Add a VTPM with `contents` (base64) to `vm`; returns its reference.
pub(super) fn insert(
    db: &mut Db,
    vm: &str,
    is_unique: bool,
    contents: String,
) -> Result<String, XapiFault> {
    let fields: Record = [
        ("VM", Value::from(vm)),
        ("backend", Value::from(NULL_REF)),
        ("persistence_backend", Value::from("xapi")),
        ("is_unique", Value::Bool(is_unique)),
        ("is_protected", Value::Bool(false)),
    ]
    .into_iter()
    .map(|(field, value)| (field.to_owned(), value))
    .collect();
    let vtpm = db.insert(Class::Vtpm, fields);
    db.set_secret(Class::Vtpm, &vtpm, contents)?;
    refresh_allowed(db, vm)?;
    Ok(vtpm)
}

/// What a copy of `vm` gets of each of its VTPMs: whether it is unique, and the contents,
/// empty for a unique one. Read before the copy exists, inserted with [`insert_copies`].
pub(super) fn plan_copies(db: &Db, vm: &str) -> Result<Vec<(bool, String)>, XapiFault> {
    db.set_items(Class::Vm, vm, "VTPMs")?
        .iter()
        .map(|vtpm| {
            let unique = db.get(Class::Vtpm, vtpm, "is_unique")?.as_bool() == Some(true);
            let contents = if unique {
                String::new()
            } else {
                db.secret(vtpm).unwrap_or_default().to_owned()
            };
            Ok((unique, contents))
        })
        .collect()
}

/// Give `vm` the planned VTPM copies.
pub(super) fn insert_copies(
    db: &mut Db,
    vm: &str,
    copies: Vec<(bool, String)>,
) -> Result<(), XapiFault> {
    for (unique, contents) in copies {
        insert(db, vm, unique, contents)?;
    }
    Ok(())
}

/// Destroy every VTPM of `vm`, as destroying the VM does.
pub(super) fn destroy_all(db: &mut Db, vm: &str) -> Result<(), XapiFault> {
    for vtpm in db.set_items(Class::Vm, vm, "VTPMs")? {
        db.remove(Class::Vtpm, &vtpm)?;
    }
    Ok(())
}

/// Recompute the `allowed_operations` of `vm`'s VTPMs after its power state changed.
pub(super) fn refresh_allowed(db: &mut Db, vm: &str) -> Result<(), XapiFault> {
    let halted = db.text(Class::Vm, vm, "power_state")? == "Halted";
    let allowed: Vec<&str> = if halted { vec!["destroy"] } else { vec![] };
    for vtpm in db.set_items(Class::Vm, vm, "VTPMs")? {
        db.set(
            Class::Vtpm,
            &vtpm,
            "allowed_operations",
            Value::from(allowed.clone()),
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contents_must_be_base64_and_bounded() {
        assert!(check_contents("").is_ok());
        assert!(check_contents("c2VjcmV0").is_ok());
        let not_base64 = check_contents("not base64!").unwrap_err();
        assert_eq!(not_base64.code, "INTERNAL_ERROR");
        let largest = STANDARD.encode(vec![7u8; MAX_CONTENTS]);
        assert!(check_contents(&largest).is_ok());
        let larger = STANDARD.encode(vec![7u8; MAX_CONTENTS + 1]);
        let refused = check_contents(&larger).unwrap_err();
        assert_eq!(refused.code, "INVALID_VALUE");
        assert_eq!(refused.params[0], "contents");
    }
}
