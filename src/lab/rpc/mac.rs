//! MAC addresses as xapi handles them: the form it accepts, and the address it derives for a
//! VIF created without one from the VM's `other_config['mac_seed']` and the VIF's device
//! number (`Xapi_vif_helpers.gen_mac`), so that a VIF recreated at the same position of the
//! same VM gets the same address back.

use md5::{Digest, Md5};

/// `XX:XX:XX:XX:XX:XX` in hex digits of either case, as xapi's `Helpers.is_valid_MAC`.
pub(super) fn is_valid(mac: &str) -> bool {
    let groups: Vec<&str> = mac.split(':').collect();
    groups.len() == 6
        && groups
            .iter()
            .all(|group| group.len() == 2 && group.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// The MAC xapi generates for device `device` of a VM with seed `seed`: MD5 applied
/// `2 * device + 1` times to the seed gives the first four bytes, one more MD5 of that the
/// last two; the first byte is made locally administered and unicast.
pub(super) fn generated(device: u16, seed: &str) -> String {
    let mut hashed = Md5::digest(seed.as_bytes());
    for _ in 0..u64::from(device) * 2 {
        hashed = Md5::digest(hashed);
    }
    let second = Md5::digest(hashed);
    let bytes = [
        (hashed[0] | 0x02) & !0x01,
        hashed[1],
        hashed[2],
        hashed[3],
        second[1],
        second[2],
    ];
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEED: &str = "d6bd1f33-8b15-4e9f-9c8e-1c9d5b8c0f01";

    #[test]
    fn generated_macs_follow_xapis_derivation() {
        // Computed independently from xapi's `gen_mac` (OCaml `Digest` is MD5).
        assert_eq!(generated(0, SEED), "f6:dd:cf:cd:07:bd");
        assert_eq!(generated(1, SEED), "8e:fd:7c:12:1f:5b");
        assert_eq!(generated(7, SEED), "ee:ac:f8:1b:b3:51");
    }

    #[test]
    fn generated_macs_are_valid_local_unicast_addresses() {
        for device in 0..16 {
            let mac = generated(device, SEED);
            assert!(is_valid(&mac), "{mac}");
            let first = u8::from_str_radix(&mac[..2], 16).unwrap();
            assert_eq!(first & 0x03, 0x02, "{mac}");
        }
        assert_ne!(generated(0, SEED), generated(0, "another seed"));
    }

    #[test]
    fn only_six_colon_separated_hex_pairs_are_macs() {
        for good in ["00:16:3e:aa:bb:cc", "AA:bb:CC:dd:EE:ff"] {
            assert!(is_valid(good), "{good}");
        }
        for bad in [
            "",
            "00:16:3e:aa:bb",
            "00:16:3e:aa:bb:cc:dd",
            "00-16-3e-aa-bb-cc",
            "0:16:3e:aa:bb:cc",
            "00:16:3e:aa:bb:cg",
            "00:16:3e:aa:bb:ccc",
        ] {
            assert!(!is_valid(bad), "{bad}");
        }
    }
}
