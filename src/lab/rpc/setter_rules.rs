//! What some `set_<field>` messages check beyond the value's kind (which
//! [`crate::lab::db::Kind::accept`] checks for every setter, enums included), as xapi's
//! handlers for them do. A table, so that a setter without a rule is the plain field write
//! xapi's generated setters are.

use super::{vm, xapi_errors};
use crate::lab::db::{Class, Db, Field};
use crate::xapi::rpc::{Value, XapiFault};

#[derive(Debug, Clone, Copy)]
enum Rule {
    /// An int of at least this value, else `INVALID_VALUE [field, value]`.
    AtLeast(i64),
    /// The VBD's VM must be halted (`VBD.set_mode`), else `VM_BAD_POWER_STATE`.
    VbdVmHalted,
    /// The VM must be halted (`VM.set_NVRAM`, xapi's `changing_NVRAM`), else
    /// `VM_BAD_POWER_STATE`.
    VmHalted,
}

const RULES: &[(Class, &str, Rule)] = &[
    // xapi's `Xapi_vm.set_start_delay`, `set_shutdown_delay` and `set_order`.
    (Class::Vm, "start_delay", Rule::AtLeast(0)),
    (Class::Vm, "shutdown_delay", Rule::AtLeast(0)),
    (Class::Vm, "order", Rule::AtLeast(0)),
    (
        Class::Pool,
        "ha_host_failures_to_tolerate",
        Rule::AtLeast(0),
    ),
    (Class::Pool, "local_auth_max_threads", Rule::AtLeast(1)),
    (Class::Pool, "ext_auth_max_threads", Rule::AtLeast(1)),
    (Class::Vbd, "mode", Rule::VbdVmHalted),
    (Class::Vm, "NVRAM", Rule::VmHalted),
];

/// Check `value` (already of the field's kind) against the field's rule, if it has one.
pub(super) fn check(
    db: &Db,
    class: Class,
    reference: &str,
    field: &Field,
    value: &Value,
) -> Result<(), XapiFault> {
    let Some((_, _, rule)) = RULES
        .iter()
        .find(|(c, name, _)| *c == class && *name == field.name)
    else {
        return Ok(());
    };
    match *rule {
        Rule::AtLeast(minimum) => match value.as_i64() {
            Some(n) if n < minimum => Err(XapiFault::new(
                "INVALID_VALUE",
                [field.name.to_owned(), n.to_string()],
            )),
            _ => Ok(()),
        },
        Rule::VbdVmHalted => {
            let vm = db.text(class, reference, "VM")?;
            if !db.exists(Class::Vm, vm) {
                return Ok(());
            }
            let state = db.text(Class::Vm, vm, "power_state")?;
            if state == "Halted" {
                Ok(())
            } else {
                Err(xapi_errors::bad_power_state(vm, "Halted", state))
            }
        }
        Rule::VmHalted => vm::check_halted(db, reference),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_rule_names_a_settable_field_of_its_kind() {
        for (class, name, rule) in RULES {
            let field = class.field(name).unwrap_or_else(|| panic!("{name}"));
            assert!(field.access.has_setter(), "{name} has no setter");
            match rule {
                Rule::AtLeast(_) => assert_eq!(field.kind, crate::lab::db::Kind::Int, "{name}"),
                Rule::VbdVmHalted => assert_eq!((*class, *name), (Class::Vbd, "mode")),
                Rule::VmHalted => assert_eq!(*class, Class::Vm),
            }
        }
    }
}
