//! Network messages: create, destroy, the purposes (`add_purpose`, `remove_purpose`) and
//! `set_default_locking_mode`, after xapi's `Xapi_network`.
//!
//! `create` picks a free `xapi<N>` bridge unless given one, refuses a given bridge that is
//! taken (`BRIDGE_NAME_EXISTS`), longer than a Linux interface name or in a namespace the
//! host's own devices use (`INVALID_VALUE`), and turns an MTU of 0 or less into 1500.
//! `destroy` refuses while a VIF on the network is plugged (`NETWORK_CONTAINS_VIF`) or a
//! PIF connects it (`NETWORK_CONTAINS_PIF`), and never destroys the host-internal management
//! network; the unplugged VIFs on it go with it. The purposes `nbd` and `insecure_nbd`
//! exclude each other across all networks (`NETWORK_INCOMPATIBLE_PURPOSES`).

use super::accessors::constructor_fields;
use super::args::{Invocation, Param};
use super::dispatch::Message;
use super::vif::destroy_vif;
use crate::lab::db::schema::{NETWORK_LOCKING_MODES, NETWORK_PURPOSES};
use crate::lab::db::{Class, Db, DbError, Kind, strings};
use crate::lab::state::Lab;
use crate::xapi::rpc::{Response, Value, XapiFault};

const SELF_VALUE: &[Param] = &[Param::Required("self"), Param::Required("value")];

pub(super) const MESSAGES: &[Message] = &[
    Message::long("create", &[Param::Required("args")], create),
    Message::long("destroy", &[Param::Required("self")], destroy),
    Message::long("add_purpose", SELF_VALUE, add_purpose),
    Message::long("remove_purpose", SELF_VALUE, remove_purpose),
    Message::long(
        "set_default_locking_mode",
        &[Param::Required("network"), Param::Required("value")],
        set_default_locking_mode,
    ),
];

/// `other_config` key marking the host-internal management network, which cannot go.
pub(super) const INTERNAL_MANAGEMENT: &str = "is_host_internal_management_network";
/// The prefix of the bridges `create` names itself.
const BRIDGE_STEM: &str = "xapi";
/// Bridge name prefixes the host's own devices use (xapi's `bridge_blacklist`).
const RESERVED_BRIDGE_PREFIXES: &[&str] = &["xen", "xapi", "vif", "tap", "eth"];
/// The longest Linux interface name.
const MAX_BRIDGE_NAME: usize = 15;
const DEFAULT_MTU: i64 = 1500;

fn create(lab: &Lab, call: &Invocation) -> Response {
    let mut fields = constructor_fields(Class::Network, call.record(0)?)?;
    let bridge = fields
        .get("bridge")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    if fields
        .get("MTU")
        .and_then(Value::as_i64)
        .is_some_and(|mtu| mtu <= 0)
    {
        fields.insert("MTU".into(), Value::Int(DEFAULT_MTU));
    }
    lab.with_db_mut(|db| {
        let bridge = choose_bridge(bridge, &bridges(db))?;
        fields.insert("bridge".into(), Value::from(bridge));
        Ok(Value::from(db.insert(Class::Network, fields)))
    })
}

/// The bridges of the networks there are.
fn bridges(db: &Db) -> Vec<String> {
    db.records(Class::Network)
        .filter_map(|(_, record)| Some(record.get("bridge")?.as_str()?.to_owned()))
        .collect()
}

/// The first `xapi<N>` bridge no network has.
pub(super) fn free_bridge(db: &Db) -> String {
    first_free(&bridges(db))
}

fn first_free(taken: &[String]) -> String {
    (0u32..)
        .map(|n| format!("{BRIDGE_STEM}{n}"))
        .find(|name| !taken.contains(name))
        .unwrap_or_default()
}

/// The bridge a new network gets: `given` if it is acceptable, else the first free
/// `xapi<N>`.
fn choose_bridge(given: String, taken: &[String]) -> Result<String, XapiFault> {
    if given.is_empty() {
        return Ok(first_free(taken));
    }
    let reserved = RESERVED_BRIDGE_PREFIXES
        .iter()
        .any(|prefix| given.starts_with(prefix));
    if given.len() > MAX_BRIDGE_NAME || reserved {
        return Err(XapiFault::new(
            "INVALID_VALUE",
            ["bridge".to_owned(), given],
        ));
    }
    if taken.contains(&given) {
        return Err(XapiFault::new("BRIDGE_NAME_EXISTS", [given]));
    }
    Ok(given)
}

fn destroy(lab: &Lab, call: &Invocation) -> Response {
    let network = call.text(0)?;
    lab.with_db_mut(|db| {
        let vifs = db.set_items(Class::Network, network, "VIFs")?;
        let plugged = attached_vifs(db, &vifs);
        if !plugged.is_empty() {
            return Err(XapiFault::new("NETWORK_CONTAINS_VIF", plugged));
        }
        let pifs = db.set_items(Class::Network, network, "PIFs")?;
        if !pifs.is_empty() {
            return Err(XapiFault::new("NETWORK_CONTAINS_PIF", pifs));
        }
        let internal = db
            .get(Class::Network, network, "other_config")?
            .get(INTERNAL_MANAGEMENT)
            .and_then(Value::as_str)
            == Some("true");
        if internal {
            return Err(XapiFault::new("CANNOT_DESTROY_SYSTEM_NETWORK", [network]));
        }
        for vif in vifs {
            destroy_vif(db, &vif)?;
        }
        db.remove(Class::Network, network)?;
        Ok(Value::void())
    })
}

/// The VIFs among `vifs` that are plugged.
fn attached_vifs(db: &Db, vifs: &[String]) -> Vec<String> {
    vifs.iter()
        .filter(|vif| {
            db.get(Class::Vif, vif, "currently_attached")
                .is_ok_and(|attached| attached.as_bool() == Some(true))
        })
        .cloned()
        .collect()
}

/// A `network_purpose` value, or `INVALID_VALUE`.
fn purpose(call: &Invocation) -> Result<&str, XapiFault> {
    let value = call.text(1)?;
    Kind::Enum(NETWORK_PURPOSES)
        .accept(&Value::from(value))
        .map_err(|r| DbError::rejected("purpose", r))?;
    Ok(value)
}

/// The purpose that cannot be on any network alongside `purpose`.
fn conflicting(purpose: &str) -> &'static str {
    if purpose == "nbd" {
        "insecure_nbd"
    } else {
        "nbd"
    }
}

fn add_purpose(lab: &Lab, call: &Invocation) -> Response {
    let network = call.text(0)?;
    let purpose = purpose(call)?;
    lab.with_db_mut(|db| {
        db.record(Class::Network, network)?;
        let conflict = conflicting(purpose);
        let clash = db.records(Class::Network).any(|(_, record)| {
            record
                .get("purpose")
                .is_some_and(|purposes| strings(purposes).iter().any(|p| p == conflict))
        });
        if clash {
            return Err(XapiFault::new(
                "NETWORK_INCOMPATIBLE_PURPOSES",
                [purpose, conflict],
            ));
        }
        db.add_to_set(Class::Network, network, "purpose", Value::from(purpose))?;
        Ok(Value::void())
    })
}

fn remove_purpose(lab: &Lab, call: &Invocation) -> Response {
    let network = call.text(0)?;
    let purpose = purpose(call)?;
    lab.with_db_mut(|db| {
        db.remove_from_set(Class::Network, network, "purpose", &Value::from(purpose))?;
        Ok(Value::void())
    })
}

/// Refused while a VIF on the network is plugged: `VIF_IN_USE [network, vif]`.
fn set_default_locking_mode(lab: &Lab, call: &Invocation) -> Response {
    let network = call.text(0)?;
    let mode = Kind::Enum(NETWORK_LOCKING_MODES)
        .accept(call.value(1))
        .map_err(|r| DbError::rejected("default_locking_mode", r))?;
    lab.with_db_mut(|db| {
        let vifs = db.set_items(Class::Network, network, "VIFs")?;
        if let Some(vif) = attached_vifs(db, &vifs).into_iter().next() {
            return Err(XapiFault::new("VIF_IN_USE", [network.to_owned(), vif]));
        }
        db.set(Class::Network, network, "default_locking_mode", mode)?;
        Ok(Value::void())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bridges_are_picked_free_or_checked() {
        let taken = ["xenbr0".to_owned(), "xapi0".to_owned(), "xapi2".to_owned()];
        assert_eq!(choose_bridge(String::new(), &taken).unwrap(), "xapi1");
        assert_eq!(choose_bridge("br-lan".into(), &taken).unwrap(), "br-lan");
        for reserved in [
            "xenbr1",
            "xapi9",
            "eth1",
            "tap0",
            "vif1.0",
            "sixteen-letters!",
        ] {
            assert_eq!(
                choose_bridge(reserved.into(), &taken).unwrap_err(),
                XapiFault::new("INVALID_VALUE", ["bridge", reserved])
            );
        }
        let taken = ["br-lan".to_owned()];
        assert_eq!(
            choose_bridge("br-lan".into(), &taken).unwrap_err(),
            XapiFault::new("BRIDGE_NAME_EXISTS", ["br-lan"])
        );
    }
}
