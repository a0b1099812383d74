//! VLANs, which is how XAPI puts a PIF on a network other than a physical interface's own:
//! `VLAN.create(tagged_PIF, tag, network)` adds an untagged PIF on `network` with `VLAN` set
//! to the tag, on the tagged PIF's host, and a `VLAN` object linking the two. The other ways
//! in come down to it: `pool.create_VLAN(device, network, VLAN)` and the deprecated
//! `PIF.create_VLAN(device, network, host, VLAN)` find the physical PIF by device name,
//! `pool.create_VLAN_from_PIF(pif, network, VLAN)` takes the PIFs on that PIF's network; the
//! pool-wide ones return the new PIFs, one per host. `VLAN.destroy` and the deprecated
//! `PIF.destroy` remove the untagged PIF and its VLAN.
//!
//! Checks, after xapi's `Xapi_vlan.create`: the tag is 0 to 4094 (`VLAN_TAG_INVALID`), the
//! tagged PIF is managed (`PIF_UNMANAGED`) and not a VLAN itself (`PIF_IS_VLAN`), has no VLAN
//! with that tag yet (`PIF_VLAN_EXISTS`), and the network has no PIF on that host already
//! (`NETWORK_ALREADY_CONNECTED`).

use super::args::{Invocation, Param};
use super::dispatch::Message;
use crate::lab::db::{Class, Db, NULL_REF, Record};
use crate::lab::state::Lab;
use crate::xapi::rpc::{Response, Value, XapiFault};

pub(super) const VLAN_MESSAGES: &[Message] = &[
    Message::long(
        "create",
        &[
            Param::Required("tagged_PIF"),
            Param::Required("tag"),
            Param::Required("network"),
        ],
        create,
    ),
    Message::long("destroy", &[Param::Required("self")], destroy),
];

pub(super) const PIF_MESSAGES: &[Message] = &[
    Message::long(
        "create_VLAN",
        &[
            Param::Required("device"),
            Param::Required("network"),
            Param::Required("host"),
            Param::Required("VLAN"),
        ],
        pif_create_vlan,
    ),
    Message::long("destroy", &[Param::Required("self")], pif_destroy),
];

pub(super) const POOL_MESSAGES: &[Message] = &[
    Message::long(
        "create_VLAN",
        &[
            Param::Required("device"),
            Param::Required("network"),
            Param::Required("VLAN"),
        ],
        pool_create_vlan,
    ),
    Message::long(
        "create_VLAN_from_PIF",
        &[
            Param::Required("pif"),
            Param::Required("network"),
            Param::Required("VLAN"),
        ],
        pool_create_vlan_from_pif,
    ),
];

/// 4095 is reserved by 802.1Q.
const MAX_TAG: i64 = 4094;

fn create(lab: &Lab, call: &Invocation) -> Response {
    let (pif, tag, network) = (call.text(0)?, call.int(1)?, call.text(2)?);
    lab.with_db_mut(|db| Ok(Value::from(create_vlan(db, pif, tag, network)?)))
}

fn destroy(lab: &Lab, call: &Invocation) -> Response {
    let vlan = call.text(0)?;
    lab.with_db_mut(|db| {
        destroy_vlan(db, vlan)?;
        Ok(Value::void())
    })
}

fn pif_create_vlan(lab: &Lab, call: &Invocation) -> Response {
    let (device, network, host) = (call.text(0)?, call.text(1)?, call.text(2)?);
    let tag = call.int(3)?;
    lab.with_db_mut(|db| {
        db.record(Class::Host, host)?;
        let pif = physical_pif(db, host, device)?;
        let vlan = create_vlan(db, &pif, tag, network)?;
        Ok(Value::from(db.text(Class::Vlan, &vlan, "untagged_PIF")?))
    })
}

/// Only VLAN PIFs may go: a physical one is `PIF_IS_PHYSICAL`.
fn pif_destroy(lab: &Lab, call: &Invocation) -> Response {
    let pif = call.text(0)?;
    lab.with_db_mut(|db| {
        let vlan = db.text(Class::Pif, pif, "VLAN_master_of")?.to_owned();
        if db.get(Class::Pif, pif, "VLAN")?.as_i64().unwrap_or(-1) < 0
            || !db.exists(Class::Vlan, &vlan)
        {
            return Err(XapiFault::new("PIF_IS_PHYSICAL", [pif]));
        }
        destroy_vlan(db, &vlan)?;
        Ok(Value::void())
    })
}

fn pool_create_vlan(lab: &Lab, call: &Invocation) -> Response {
    let (device, network, tag) = (call.text(0)?, call.text(1)?, call.int(2)?);
    lab.with_db_mut(|db| {
        let hosts: Vec<String> = db.refs(Class::Host).cloned().collect();
        let tagged = hosts
            .iter()
            .map(|host| physical_pif(db, host, device))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Value::from(on_every_host(db, &tagged, tag, network)?))
    })
}

fn pool_create_vlan_from_pif(lab: &Lab, call: &Invocation) -> Response {
    let (pif, network, tag) = (call.text(0)?, call.text(1)?, call.int(2)?);
    lab.with_db_mut(|db| {
        let base_network = db.text(Class::Pif, pif, "network")?.to_owned();
        let tagged = db.set_items(Class::Network, &base_network, "PIFs")?;
        Ok(Value::from(on_every_host(db, &tagged, tag, network)?))
    })
}

/// A VLAN on each of `tagged`; their untagged PIFs. If one fails, those made are removed.
fn on_every_host(
    db: &mut Db,
    tagged: &[String],
    tag: i64,
    network: &str,
) -> Result<Vec<String>, XapiFault> {
    let mut made = Vec::new();
    for pif in tagged {
        match create_vlan(db, pif, tag, network) {
            Ok(vlan) => made.push(vlan),
            Err(fault) => {
                for vlan in &made {
                    if let Err(e) = destroy_vlan(db, vlan) {
                        tracing::warn!(%vlan, error = %e, "rolling back a VLAN creation failed");
                    }
                }
                return Err(fault);
            }
        }
    }
    made.iter()
        .map(|vlan| Ok(db.text(Class::Vlan, vlan, "untagged_PIF")?.to_owned()))
        .collect()
}

/// The physical (untagged, non-VLAN) PIF named `device` on `host`, or `INVALID_VALUE`.
fn physical_pif(db: &Db, host: &str, device: &str) -> Result<String, XapiFault> {
    db.set_items(Class::Host, host, "PIFs")?
        .into_iter()
        .find(|pif| {
            db.record(Class::Pif, pif).is_ok_and(|record| {
                text(record, "device") == device
                    && record.get("VLAN").and_then(Value::as_i64) == Some(-1)
            })
        })
        .ok_or_else(|| XapiFault::new("INVALID_VALUE", ["device", device]))
}

/// Check and make a VLAN of `tag` on `tagged_pif` into `network`; returns the VLAN.
pub(super) fn create_vlan(
    db: &mut Db,
    tagged_pif: &str,
    tag: i64,
    network: &str,
) -> Result<String, XapiFault> {
    let tagged = db.record(Class::Pif, tagged_pif)?.clone();
    db.record(Class::Network, network)?;
    if tagged.get("managed").and_then(Value::as_bool) != Some(true) {
        return Err(XapiFault::new("PIF_UNMANAGED", [tagged_pif]));
    }
    let host = text(&tagged, "host");
    if let Some(other) = db
        .set_items(Class::Network, network, "PIFs")?
        .into_iter()
        .find(|pif| db.text(Class::Pif, pif, "host").is_ok_and(|h| h == host))
    {
        return Err(XapiFault::new(
            "NETWORK_ALREADY_CONNECTED",
            [network.to_owned(), other],
        ));
    }
    if tagged.get("VLAN").and_then(Value::as_i64).unwrap_or(-1) >= 0 {
        return Err(XapiFault::new("PIF_IS_VLAN", [tagged_pif]));
    }
    if !(0..=MAX_TAG).contains(&tag) {
        return Err(XapiFault::new("VLAN_TAG_INVALID", [tag.to_string()]));
    }
    let device = text(&tagged, "device");
    let exists = db
        .set_items(Class::Pif, tagged_pif, "VLAN_slave_of")?
        .iter()
        .any(|vlan| {
            db.get(Class::Vlan, vlan, "tag")
                .is_ok_and(|t| t.as_i64() == Some(tag))
        });
    if exists {
        return Err(XapiFault::new("PIF_VLAN_EXISTS", [device]));
    }
    let vlan = db.insert(
        Class::Vlan,
        record(vec![
            ("tagged_PIF", Value::from(tagged_pif)),
            ("untagged_PIF", Value::from(NULL_REF)),
            ("tag", Value::Int(tag)),
        ]),
    );
    let untagged = db.insert(
        Class::Pif,
        record(vec![
            ("device", Value::from(device)),
            ("network", Value::from(network)),
            ("host", Value::from(host)),
            (
                "MAC",
                tagged.get("MAC").cloned().unwrap_or_else(Value::void),
            ),
            (
                "MTU",
                tagged.get("MTU").cloned().unwrap_or(Value::Int(1500)),
            ),
            ("VLAN", Value::Int(tag)),
            ("physical", Value::Bool(false)),
            // xapi plugs the new PIF straight away.
            ("currently_attached", Value::Bool(true)),
            ("VLAN_master_of", Value::from(vlan.as_str())),
        ]),
    );
    db.set(Class::Vlan, &vlan, "untagged_PIF", Value::from(untagged))?;
    Ok(vlan)
}

/// Remove a VLAN and its untagged PIF (a VLAN whose PIF is gone goes alone).
fn destroy_vlan(db: &mut Db, vlan: &str) -> Result<(), XapiFault> {
    let untagged = db.text(Class::Vlan, vlan, "untagged_PIF")?.to_owned();
    if db.exists(Class::Pif, &untagged) {
        if db
            .get(Class::Pif, &untagged, "VLAN")?
            .as_i64()
            .unwrap_or(-1)
            < 0
        {
            return Err(XapiFault::new("PIF_IS_PHYSICAL", [untagged]));
        }
        db.remove(Class::Pif, &untagged)?;
    }
    db.remove(Class::Vlan, vlan)?;
    Ok(())
}

fn text(record: &Record, field: &str) -> String {
    record
        .get(field)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned()
}

fn record(pairs: Vec<(&str, Value)>) -> Record {
    pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
}
