//! Which target network each of a replica's interfaces goes on (`xo-replication.md` §7.2,
//! issue 19): the job's `network_map` first, then the same network (same UUID: one pool),
//! then the same name and VLAN, else the target's default network, with a note. Pure: the
//! runner reads the networks and carries the answer out.

use serde::Serialize;

/// A network as the mapping sees it, on either side.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Network {
    pub reference: String,
    pub uuid: String,
    pub name: String,
    /// The VLAN of its PIFs, -1 when untagged or without a PIF.
    pub vlan: i64,
    /// It carries the host's management interface: the default network.
    pub management: bool,
    /// xapi's host-internal management network, never a guest's.
    pub internal: bool,
}

/// A source interface to recreate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceNic {
    pub device: String,
    pub mac: String,
    pub network: Network,
}

/// How a target network was chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Rule {
    NetworkMap,
    SameUuid,
    SameNameAndVlan,
    Default,
}

/// One interface of the replica.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NicPlan {
    pub device: String,
    /// The MAC to give it: the source's, or empty for one of the target's choosing.
    pub mac: String,
    pub source_network: String,
    pub source_network_name: String,
    #[serde(skip)]
    pub target_ref: String,
    pub target_network: String,
    pub target_network_name: String,
    pub rule: Rule,
}

fn names(network: &Network, wanted: &str) -> bool {
    network.uuid.eq_ignore_ascii_case(wanted) || network.name == wanted
}

/// The target network of every interface, by the rules above. An entry of `network_map`
/// naming no target network is an error: a wrong map must not silently become the default.
pub fn map_interfaces(
    nics: &[SourceNic],
    targets: &[Network],
    network_map: &[(String, String)],
    new_macs: bool,
) -> Result<Vec<NicPlan>, String> {
    let guest_networks: Vec<&Network> = targets.iter().filter(|n| !n.internal).collect();
    let default = guest_networks
        .iter()
        .find(|n| n.management)
        .or_else(|| guest_networks.first());
    nics.iter()
        .map(|nic| {
            let source = &nic.network;
            let mapped = network_map
                .iter()
                .find(|(from, _)| names(source, from))
                .map(|(_, to)| {
                    guest_networks
                        .iter()
                        .find(|n| names(n, to))
                        .map(|n| (*n, Rule::NetworkMap))
                        .ok_or_else(|| {
                            format!(
                                "interface {}: network_map sends network {:?} to {to:?}, \
                                 which is no guest network on the target",
                                nic.device, source.name
                            )
                        })
                })
                .transpose()?;
            let (target, rule) = mapped
                .or_else(|| {
                    guest_networks
                        .iter()
                        .find(|n| n.uuid == source.uuid)
                        .map(|n| (*n, Rule::SameUuid))
                })
                .or_else(|| {
                    guest_networks
                        .iter()
                        .find(|n| n.name == source.name && n.vlan == source.vlan)
                        .map(|n| (*n, Rule::SameNameAndVlan))
                })
                .or_else(|| default.map(|n| (*n, Rule::Default)))
                .ok_or_else(|| {
                    format!(
                        "interface {}: the target has no network for guests",
                        nic.device
                    )
                })?;
            Ok(NicPlan {
                device: nic.device.clone(),
                mac: if new_macs {
                    String::new()
                } else {
                    nic.mac.clone()
                },
                source_network: source.uuid.clone(),
                source_network_name: source.name.clone(),
                target_ref: target.reference.clone(),
                target_network: target.uuid.clone(),
                target_network_name: target.name.clone(),
                rule,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(uuid: &str, name: &str, vlan: i64) -> Network {
        Network {
            reference: format!("ref-{uuid}"),
            uuid: uuid.into(),
            name: name.into(),
            vlan,
            ..Network::default()
        }
    }

    fn nic(device: &str, network: Network) -> SourceNic {
        SourceNic {
            device: device.into(),
            mac: format!("aa:bb:cc:dd:ee:0{device}"),
            network,
        }
    }

    #[test]
    fn the_rules_apply_in_order() {
        let targets = vec![
            Network {
                management: true,
                ..net("t-mgmt", "Pool-wide network associated with eth0", -1)
            },
            Network {
                internal: true,
                ..net("t-internal", "Host internal management network", -1)
            },
            net("shared", "storage", -1),
            net("t-dmz", "dmz", 20),
            net("t-dmz-other-vlan", "dmz", 30),
            net("t-backup", "backup", -1),
        ];
        let nics = vec![
            nic("0", net("shared", "storage", -1)),
            nic("1", net("s-dmz", "dmz", 20)),
            nic("2", net("s-lan", "lan", -1)),
            nic("3", net("s-bk", "bk", -1)),
        ];
        let map = vec![("bk".to_owned(), "t-backup".to_owned())];
        let plans = map_interfaces(&nics, &targets, &map, false).unwrap();
        let got: Vec<(&str, Rule)> = plans
            .iter()
            .map(|p| (p.target_network.as_str(), p.rule))
            .collect();
        assert_eq!(
            got,
            [
                ("shared", Rule::SameUuid),
                ("t-dmz", Rule::SameNameAndVlan),
                ("t-mgmt", Rule::Default),
                ("t-backup", Rule::NetworkMap),
            ]
        );
        assert_eq!(plans[0].mac, "aa:bb:cc:dd:ee:00");
        let fresh = map_interfaces(&nics, &targets, &map, true).unwrap();
        assert!(fresh.iter().all(|p| p.mac.is_empty()));
    }

    #[test]
    fn a_map_to_nowhere_is_an_error_and_only_the_internal_network_is_none() {
        let nics = vec![nic("0", net("s", "lan", -1))];
        let targets = vec![net("t", "other", -1)];
        let map = vec![("lan".to_owned(), "missing".to_owned())];
        let error = map_interfaces(&nics, &targets, &map, false).unwrap_err();
        assert!(
            error.contains("missing") && error.contains("interface 0"),
            "{error}"
        );
        let internal = vec![Network {
            internal: true,
            ..net("i", "internal", -1)
        }];
        let error = map_interfaces(&nics, &internal, &[], false).unwrap_err();
        assert!(error.starts_with("interface 0:"), "{error}");
        assert!(
            map_interfaces(&[], &internal, &[], false)
                .unwrap()
                .is_empty()
        );
    }
}
