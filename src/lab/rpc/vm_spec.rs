//! What `lab init` makes of each VM: a name, the sizes of its disks and its network
//! interfaces, written `NAME:ITEM[,ITEM...]` (`vhdsync lab init --vm`). An item is a disk size
//! (`64M`; K, M, G, T are binary) or an interface, `vif[=NETWORK][@MAC]`: on the network of
//! that name (the management network without one; another name makes a network without a
//! PIF), with that MAC (derived from the VM's `mac_seed` without one, as xapi does). Disks
//! take `userdevice` 0, 1, … and interfaces `device` 0, 1, … in the order given, e.g.
//! `web01:64M,16M,vif,vif=backend@02:00:00:00:00:01`.

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
        let mut spec = VmSpec {
            name: name.to_owned(),
            disks: Vec::new(),
            vifs: Vec::new(),
        };
        for item in items.split(',') {
            match item.strip_prefix(VIF) {
                Some(rest) if rest.is_empty() || rest.starts_with(['=', '@']) => {
                    spec.vifs
                        .push(parse_vif(rest).map_err(|e| format!("{text:?}: {e}"))?);
                }
                _ => spec
                    .disks
                    .push(parse_size(item).map_err(|e| format!("{text:?}: {e}"))?),
            }
        }
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
        ] {
            let error = bad.parse::<VmSpec>().unwrap_err();
            assert!(error.contains(why), "{bad}: {error}");
        }
    }
}
