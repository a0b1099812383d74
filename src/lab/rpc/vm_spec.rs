//! What `lab init` makes of each VM: a name, the sizes of its disks, its network interfaces
//! and its devices, written `NAME:ITEM[,ITEM...]` (`vhdsync lab init --vm`). An item is:
//! - a disk size (`64M`; K, M, G, T are binary);
//! - an interface, `vif[=NETWORK][@MAC]`: on the network of that name (the management network
//!   without one; another name makes a network without a PIF), with that MAC (derived from the
//!   VM's `mac_seed` without one, as xapi does);
//! - `cd`: an empty CD drive;
//! - `uefi` or `uefi-secureboot`: UEFI firmware (`HVM_boot_params['firmware']`, the
//!   `platform['secureboot']` flag) with an `NVRAM` holding `EFI-variables`, as `varstored`
//!   leaves it after a first boot;
//! - `vtpm`: a virtual TPM with contents.
//!
//! Disks take `userdevice` 0, 1, … in the order given, CD drives the next free ones, and
//! interfaces `device` 0, 1, …, e.g. `web01:64M,16M,vif,vif=backend@02:00:00:00:00:01,cd,uefi`.

use std::str::FromStr;

use super::mac;
use crate::units::parse_size;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmSpec {
    pub name: String,
    /// Virtual sizes in bytes, in `userdevice` order.
    pub disks: Vec<u64>,
    /// In `device` order.
    pub vifs: Vec<VifSpec>,
    /// Empty CD drives, after the disks in `userdevice` order.
    pub cd_drives: usize,
    pub firmware: Firmware,
    /// With a VTPM (one at most, as in XAPI).
    pub vtpm: bool,
}

/// How a VM boots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Firmware {
    #[default]
    Bios,
    Uefi {
        secure_boot: bool,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct VifSpec {
    /// The network's name; `None` for the management network.
    pub network: Option<String>,
    /// `None` to have one derived from the VM's `mac_seed`.
    pub mac: Option<String>,
}

/// A VM with disks and no interfaces, the older form of the spec.
impl From<(String, Vec<u64>)> for VmSpec {
    fn from((name, disks): (String, Vec<u64>)) -> VmSpec {
        VmSpec {
            name,
            disks,
            vifs: Vec::new(),
            cd_drives: 0,
            firmware: Firmware::Bios,
            vtpm: false,
        }
    }
}

/// The item keyword of an interface.
const VIF: &str = "vif";

impl FromStr for VmSpec {
    type Err = String;

    fn from_str(text: &str) -> Result<VmSpec, String> {
        let (name, items) = text.split_once(':').ok_or_else(|| {
            format!("{text:?}: expected NAME:ITEM[,ITEM...], e.g. web01:64M,16M,vif")
        })?;
        if name.is_empty() {
            return Err(format!("{text:?}: the VM needs a name"));
        }
        let mut spec = VmSpec::from((name.to_owned(), Vec::new()));
        let mut firmware = None;
        for item in items.split(',') {
            let wrong = |e: String| format!("{text:?}: {e}");
            match item {
                "cd" => spec.cd_drives += 1,
                "uefi" | "uefi-secureboot" => {
                    if firmware.is_some() {
                        return Err(wrong("the firmware is given twice".into()));
                    }
                    firmware = Some(Firmware::Uefi {
                        secure_boot: item == "uefi-secureboot",
                    });
                }
                "vtpm" if spec.vtpm => {
                    return Err(wrong("a VM has one vtpm at most, as in XAPI".into()));
                }
                "vtpm" => spec.vtpm = true,
                _ => match item.strip_prefix(VIF) {
                    Some(rest) if rest.is_empty() || rest.starts_with(['=', '@']) => {
                        spec.vifs.push(parse_vif(rest).map_err(wrong)?);
                    }
                    _ => spec.disks.push(parse_size(item).map_err(wrong)?),
                },
            }
        }
        spec.firmware = firmware.unwrap_or_default();
        Ok(spec)
    }
}

/// What follows `vif` in an item: `[=NETWORK][@MAC]`.
fn parse_vif(rest: &str) -> Result<VifSpec, String> {
    let (network, mac) = match rest.rsplit_once('@') {
        Some((network, mac)) => (network, Some(mac)),
        None => (rest, None),
    };
    let network = match network.strip_prefix('=') {
        Some("") => return Err("vif= needs a network name".into()),
        Some(name) => Some(name.to_owned()),
        None => None,
    };
    if let Some(mac) = mac
        && !mac::is_valid(mac)
    {
        return Err(format!("{mac:?} is not a MAC address (XX:XX:XX:XX:XX:XX)"));
    }
    Ok(VifSpec {
        network,
        mac: mac.map(str::to_owned),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vif(network: Option<&str>, mac: Option<&str>) -> VifSpec {
        VifSpec {
            network: network.map(str::to_owned),
            mac: mac.map(str::to_owned),
        }
    }

    #[test]
    fn specs_are_a_name_disk_sizes_and_interfaces() {
        assert_eq!(
            "web01:64M,16M".parse(),
            Ok(VmSpec::from(("web01".to_owned(), vec![64 << 20, 16 << 20])))
        );
        let spec: VmSpec = "db:8M,vif,vif=backend net@02:00:00:00:00:01,vif@AA:bb:cc:dd:ee:ff"
            .parse()
            .unwrap();
        assert_eq!(spec.disks, vec![8 << 20]);
        assert_eq!(
            spec.vifs,
            vec![
                vif(None, None),
                vif(Some("backend net"), Some("02:00:00:00:00:01")),
                vif(None, Some("AA:bb:cc:dd:ee:ff")),
            ]
        );
        let diskless: VmSpec = "router:vif=wan,vif=lan".parse().unwrap();
        assert!(diskless.disks.is_empty());
        assert_eq!(diskless.vifs.len(), 2);
        assert_eq!(
            (diskless.cd_drives, diskless.firmware, diskless.vtpm),
            (0, Firmware::Bios, false)
        );
    }

    #[test]
    fn devices_and_firmware_are_items_too() {
        let spec: VmSpec = "web:cd,1G,vif,uefi,vtpm,cd".parse().unwrap();
        assert_eq!(spec.disks, vec![1 << 30]);
        assert_eq!(spec.vifs.len(), 1);
        assert_eq!(spec.cd_drives, 2);
        assert_eq!(spec.firmware, Firmware::Uefi { secure_boot: false });
        assert!(spec.vtpm);
        let secure: VmSpec = "win:uefi-secureboot".parse().unwrap();
        assert_eq!(secure.firmware, Firmware::Uefi { secure_boot: true });
    }

    #[test]
    fn malformed_specs_say_what_is_wrong() {
        for (bad, why) in [
            ("web01", "expected NAME:ITEM"),
            (":64M", "needs a name"),
            ("web01:", "not a size"),
            ("web01:64M,", "not a size"),
            ("web01:vif=", "needs a network name"),
            ("web01:vif=lan@02:00", "not a MAC"),
            ("web01:vifs", "not a size"),
            ("web01:uefi,uefi-secureboot", "firmware is given twice"),
            ("web01:vtpm,vtpm", "one vtpm at most"),
            ("web01:cdrom", "not a size"),
        ] {
            let error = bad.parse::<VmSpec>().unwrap_err();
            assert!(error.contains(why), "{bad}: {error}");
        }
    }
}
