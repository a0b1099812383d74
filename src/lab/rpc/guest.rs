//! The simulated guest: booting, and what its guest agent reports (`VM_guest_metrics`).
//!
//! As in xapi, `VM.start` first deletes the VM's stale metrics (a clone inherits its source's,
//! addresses included, see `Xapi_vm_helpers.copy_guest_metrics`), so that a client waiting
//! for `guest_metrics` after a start sees only the new boot's. The guest then reports one
//! boot delay later (a lab setting, `lab.set_boot_delay`), through the boot timer
//! (`lab::boot`): a `VM_guest_metrics` record with the PV drivers detected, an OS name and an
//! address per interface (`networks`, keyed `<device>/ip`, `<device>/ipv4/0` and
//! `<device>/ipv6/0` as xapi's guest agent writes them), and the VM's `guest_metrics` set to
//! it. A `boot_failure` fault makes the guest hang (no report) or crash (the VM halts when
//! it would have reported). A started-paused VM does not boot. Shutting a VM down leaves its
//! last report in place, as xapi does; the next start clears it.
//!
//! A restart of the lab host is a toolstack restart, not a host reboot: running VMs keep
//! running with their metrics, and one still booting reports one boot delay after the
//! restart (a hang or a crash, like every fault, does not survive the restart).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use super::{now, vm};
use crate::lab::boot::{Due, Outcome};
use crate::lab::db::{Class, Db, NULL_REF, Record};
use crate::lab::faults::BootFailure;
use crate::lab::state::Lab;
use crate::xapi::rpc::{Value, XapiFault};

/// What the simulated guest says it runs.
const OS_VERSION: &[(&str, &str)] = &[
    ("name", "vhdsync lab guest 1.0"),
    ("distro", "lab"),
    ("major", "1"),
    ("minor", "0"),
    ("uname", "6.1.0-lab"),
];
const PV_DRIVERS_VERSION: &[(&str, &str)] = &[
    ("major", "8"),
    ("minor", "4"),
    ("micro", "0"),
    ("build", "lab"),
];
/// The features a Linux guest agent advertises in `other`.
const GUEST_FEATURES: &[(&str, &str)] = &[
    ("feature-poweroff", "1"),
    ("feature-reboot", "1"),
    ("feature-suspend", "1"),
    ("feature-vcpu-hotplug", "1"),
    ("has-vendor-device", "0"),
    ("platform-feature-multiprocessor-suspend", "1"),
];

/// A VM powers on: clear its stale metrics and schedule its boot, as the faults decide.
/// With no boot delay the guest reports at once, within this call.
pub(super) fn on_start(lab: &Lab, db: &mut Db, vm: &str, paused: bool) -> Result<(), XapiFault> {
    delete_metrics(db, vm)?;
    if paused {
        lab.boot_timer().forget(vm);
        return Ok(());
    }
    let uuid = db.text(Class::Vm, vm, "uuid")?.to_owned();
    let outcome = match lab.faults().on_boot(&[vm, &uuid]) {
        None => Some(Outcome::Report),
        Some(BootFailure::Crash) => Some(Outcome::Crash),
        Some(BootFailure::Hang) => None,
    };
    let delay = db.settings().boot_delay;
    match outcome {
        Some(outcome) if delay.is_zero() => {
            lab.boot_timer().forget(vm);
            let due = Due {
                vm: vm.to_owned(),
                boot: 0,
                outcome,
            };
            complete_boot(db, &due)
        }
        _ => {
            lab.boot_timer().schedule(vm, delay, outcome);
            Ok(())
        }
    }
}

/// Apply a boot that fell due: the guest reports, or crashes. A VM that stopped or went
/// meanwhile is left alone.
pub(crate) fn complete_boot(db: &mut Db, due: &Due) -> Result<(), XapiFault> {
    let running =
        db.exists(Class::Vm, &due.vm) && db.text(Class::Vm, &due.vm, "power_state")? == "Running";
    if !running {
        return Ok(());
    }
    match due.outcome {
        Outcome::Report => {
            delete_metrics(db, &due.vm)?;
            let fields = report(db, &due.vm)?;
            let metrics = db.insert(Class::VmGuestMetrics, fields);
            db.set(Class::Vm, &due.vm, "guest_metrics", Value::from(metrics))?;
            Ok(())
        }
        Outcome::Crash => vm::power_off(db, &due.vm).map(drop),
    }
}

/// After a restart, the running VMs that had not reported yet boot again.
pub(crate) fn resume_boots(lab: &Lab, db: &Db) {
    let delay = db.settings().boot_delay;
    for (vm, record) in db.records(Class::Vm) {
        let running = record.get("power_state").and_then(Value::as_str) == Some("Running");
        let reported = record
            .get("guest_metrics")
            .and_then(Value::as_str)
            .is_some_and(|m| db.exists(Class::VmGuestMetrics, m));
        if running && !reported {
            lab.boot_timer().schedule(vm, delay, Some(Outcome::Report));
        }
    }
}

/// A copy of `vm`'s metrics for a clone or snapshot of it, as xapi's
/// `copy_guest_metrics`: the reference to give the copy, null when there are none.
pub(super) fn copy_metrics(db: &mut Db, vm: &str) -> Result<String, XapiFault> {
    let metrics = db.text(Class::Vm, vm, "guest_metrics")?.to_owned();
    if !db.exists(Class::VmGuestMetrics, &metrics) {
        return Ok(NULL_REF.to_owned());
    }
    let mut fields = db.record(Class::VmGuestMetrics, &metrics)?.clone();
    fields.remove("uuid");
    Ok(db.insert(Class::VmGuestMetrics, fields))
}

/// Unset `vm`'s `guest_metrics` and destroy the record, as xapi's `delete_guest_metrics`.
pub(super) fn delete_metrics(db: &mut Db, vm: &str) -> Result<(), XapiFault> {
    let metrics = db.text(Class::Vm, vm, "guest_metrics")?.to_owned();
    db.set(Class::Vm, vm, "guest_metrics", Value::from(NULL_REF))?;
    if db.exists(Class::VmGuestMetrics, &metrics) {
        db.remove(Class::VmGuestMetrics, &metrics)?;
    }
    Ok(())
}

/// The guest agent's first report for `vm`.
fn report(db: &Db, vm: &str) -> Result<Record, XapiFault> {
    let mut networks = BTreeMap::new();
    for vif in db.set_items(Class::Vm, vm, "VIFs")? {
        let record = db.record(Class::Vif, &vif)?;
        let text = |field: &str| record.get(field).and_then(Value::as_str).unwrap_or("");
        let device = text("device");
        let mac = text("MAC");
        let configured = record
            .get("ipv4_addresses")
            .and_then(Value::as_array)
            .and_then(|addresses| addresses.first())
            .and_then(Value::as_str)
            .and_then(|cidr| cidr.split('/').next())
            .and_then(|address| address.parse().ok());
        let ipv4 = configured.unwrap_or_else(|| ipv4_from_mac(mac));
        let ipv4 = Value::from(ipv4.to_string());
        networks.insert(format!("{device}/ip"), ipv4.clone());
        networks.insert(format!("{device}/ipv4/0"), ipv4);
        if let Some(ipv6) = link_local_from_mac(mac) {
            networks.insert(format!("{device}/ipv6/0"), Value::from(ipv6));
        }
    }
    let map = |pairs: &[(&str, &str)]| {
        Value::Struct(
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), Value::from(*v)))
                .collect(),
        )
    };
    Ok([
        ("os_version", map(OS_VERSION)),
        ("PV_drivers_version", map(PV_DRIVERS_VERSION)),
        ("PV_drivers_up_to_date", Value::Bool(true)),
        ("PV_drivers_detected", Value::Bool(true)),
        ("networks", Value::Struct(networks)),
        ("other", map(GUEST_FEATURES)),
        ("last_updated", now()),
        ("live", Value::Bool(true)),
        ("can_use_hotplug_vbd", Value::from("yes")),
        ("can_use_hotplug_vif", Value::from("yes")),
    ]
    .into_iter()
    .map(|(field, value)| (field.to_owned(), value))
    .collect())
}

/// The bytes of a `XX:XX:XX:XX:XX:XX` MAC.
fn mac_bytes(mac: &str) -> Option<[u8; 6]> {
    let mut bytes = [0u8; 6];
    let mut parts = mac.split(':');
    for byte in &mut bytes {
        *byte = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(bytes)
}

/// The address a DHCP server on the lab's 10.0.0.0/8 would hand out: the MAC's last three
/// bytes, so that every interface has its own, stable one.
fn ipv4_from_mac(mac: &str) -> Ipv4Addr {
    let [.., a, b, c] = mac_bytes(mac).unwrap_or_default();
    Ipv4Addr::new(10, a, b, c)
}

/// The link-local IPv6 address a guest derives from its MAC (modified EUI-64).
fn link_local_from_mac(mac: &str) -> Option<String> {
    let [a, b, c, d, e, f] = mac_bytes(mac)?;
    let words = [
        u16::from_be_bytes([a ^ 0x02, b]),
        u16::from_be_bytes([c, 0xff]),
        u16::from_be_bytes([0xfe, d]),
        u16::from_be_bytes([e, f]),
    ];
    let address = std::net::Ipv6Addr::new(0xfe80, 0, 0, 0, words[0], words[1], words[2], words[3]);
    Some(address.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_follow_the_mac() {
        assert_eq!(
            ipv4_from_mac("02:00:00:0a:0b:0c"),
            Ipv4Addr::new(10, 10, 11, 12)
        );
        assert_eq!(ipv4_from_mac("nonsense"), Ipv4Addr::new(10, 0, 0, 0));
        assert_eq!(
            link_local_from_mac("52:54:00:12:34:56").as_deref(),
            Some("fe80::5054:ff:fe12:3456")
        );
        assert_eq!(link_local_from_mac("52:54:00:12:34"), None);
        assert_eq!(link_local_from_mac("52:54:00:12:34:56:78"), None);
    }
}
