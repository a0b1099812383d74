//! Which namespace defines which messages, and `system.listMethods`, which lists them all.

use super::accessors::Accessor;
use super::args::Invocation;
use super::dispatch::Message;
use super::{
    cbt, event, host, lab_calls, network, nvram, session, sr, task, vbd, vdi, vif, vlan, vm, vtpm,
};
use crate::lab::db::Class;
use crate::lab::state::Lab;
use crate::xapi::rpc::{Response, Value};

const SYSTEM: &[Message] = &[Message::sessionless("listMethods", &[], list_methods)];

/// Namespaces with messages of their own, a namespace's spread over entries from several
/// modules; every class also has its accessors.
const NAMESPACES: &[(&str, &[Message])] = &[
    ("system", SYSTEM),
    ("session", session::MESSAGES),
    ("VM", vm::MESSAGES),
    ("VM", nvram::MESSAGES),
    ("VTPM", vtpm::MESSAGES),
    ("VBD", vbd::MESSAGES),
    ("VDI", vdi::MESSAGES),
    ("VDI", cbt::MESSAGES),
    ("SR", sr::MESSAGES),
    ("task", task::MESSAGES),
    ("network", network::MESSAGES),
    ("VIF", vif::MESSAGES),
    ("PIF", vlan::PIF_MESSAGES),
    ("VLAN", vlan::VLAN_MESSAGES),
    ("pool", vlan::POOL_MESSAGES),
    ("host", host::MESSAGES),
    ("event", event::MESSAGES),
    // Lab-only calls, in a namespace no XAPI class uses.
    ("lab", lab_calls::MESSAGES),
];

pub(super) fn messages(namespace: &str) -> impl Iterator<Item = &'static Message> {
    NAMESPACES
        .iter()
        .filter(move |(name, _)| *name == namespace)
        .flat_map(|(_, messages)| messages.iter())
}

/// Every synchronous method name the lab host answers, sorted.
pub(super) fn method_names() -> Vec<String> {
    let own = NAMESPACES.iter().flat_map(|(namespace, messages)| {
        messages
            .iter()
            .map(move |message| format!("{namespace}.{}", message.name))
    });
    let derived = Class::ALL.into_iter().flat_map(|class| {
        Accessor::names(class)
            .into_iter()
            .map(move |name| format!("{}.{name}", class.name()))
    });
    let mut names: Vec<String> = own.chain(derived).collect();
    names.sort_unstable();
    names.dedup();
    names
}

fn list_methods(_: &Lab, _: &Invocation) -> Response {
    Ok(Value::from(method_names()))
}
