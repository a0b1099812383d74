//! A VM's `NVRAM` (its UEFI variables and Secure Boot state), which XAPI's datamodel makes
//! RO/constructor and changes through explicit messages: `VM.set_NVRAM` (a setter rule, see
//! `setter_rules`), `VM.add_to_NVRAM` and `VM.remove_from_NVRAM`, which all need the VM
//! halted (xapi's `changing_NVRAM` operation: `VM_BAD_POWER_STATE [vm, halted, actual]`),
//! and `VM.set_NVRAM_EFI_variables`, which `varstored` calls while the guest runs to save the
//! `EFI-variables` key.

use super::args::{Invocation, Param};
use super::dispatch::Message;
use super::vm::check_halted;
use crate::lab::db::Class;
use crate::lab::state::Lab;
use crate::xapi::rpc::{Response, Value};

/// The field, and the key `varstored` keeps the variables under.
const NVRAM: &str = "NVRAM";
const EFI_VARIABLES: &str = "EFI-variables";

pub(super) const MESSAGES: &[Message] = &[
    Message::long(
        "add_to_NVRAM",
        &[
            Param::Required("self"),
            Param::Required("key"),
            Param::Required("value"),
        ],
        add_to_nvram,
    ),
    Message::long(
        "remove_from_NVRAM",
        &[Param::Required("self"), Param::Required("key")],
        remove_from_nvram,
    ),
    Message::long(
        "set_NVRAM_EFI_variables",
        &[Param::Required("self"), Param::Required("value")],
        set_nvram_efi_variables,
    ),
];

fn add_to_nvram(lab: &Lab, call: &Invocation) -> Response {
    let (vm, key, value) = (call.text(0)?, call.text(1)?, call.text(2)?);
    lab.with_db_mut(|db| {
        check_halted(db, vm)?;
        db.add_to_map(Class::Vm, vm, NVRAM, key, value.to_owned())?;
        Ok(Value::void())
    })
}

fn remove_from_nvram(lab: &Lab, call: &Invocation) -> Response {
    let (vm, key) = (call.text(0)?, call.text(1)?);
    lab.with_db_mut(|db| {
        check_halted(db, vm)?;
        db.set_map_entry(Class::Vm, vm, NVRAM, key, None)?;
        Ok(Value::void())
    })
}

fn set_nvram_efi_variables(lab: &Lab, call: &Invocation) -> Response {
    let (vm, value) = (call.text(0)?, call.text(1)?);
    lab.with_db_mut(|db| {
        db.set_map_entry(Class::Vm, vm, NVRAM, EFI_VARIABLES, Some(value.to_owned()))?;
        Ok(Value::void())
    })
}
