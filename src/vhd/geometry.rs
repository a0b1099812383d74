use std::fmt;

/// Cylinder / head / sector geometry as stored in the footer. Producers disagree on it, so
/// vhdsync never sizes a disk from it (the virtual size is `current_size`); it is written with
/// the specification's algorithm and shown for diagnostics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Geometry {
    pub cylinders: u16,
    pub heads: u8,
    pub sectors_per_track: u8,
}

impl Geometry {
    /// The specification's algorithm (appendix "CHS calculation"), which rounds down.
    pub fn for_size(bytes: u64) -> Geometry {
        let total = (bytes / 512).min(65535 * 16 * 255);
        let (sectors, heads, cylinders_times_heads);
        if total >= 65535 * 16 * 63 {
            sectors = 255;
            heads = 16;
            cylinders_times_heads = total / 255;
        } else {
            let mut s = 17;
            let mut cth = total / 17;
            let mut h = cth.div_ceil(1024).max(4);
            if cth >= h * 1024 || h > 16 {
                s = 31;
                h = 16;
                cth = total / 31;
            }
            if cth >= h * 1024 {
                s = 63;
                h = 16;
                cth = total / 63;
            }
            sectors = s;
            heads = h;
            cylinders_times_heads = cth;
        }
        Geometry {
            cylinders: (cylinders_times_heads / heads) as u16,
            heads: heads as u8,
            sectors_per_track: sectors as u8,
        }
    }

    pub fn from_u32(packed: u32) -> Geometry {
        Geometry {
            cylinders: (packed >> 16) as u16,
            heads: (packed >> 8) as u8,
            sectors_per_track: packed as u8,
        }
    }

    pub fn to_u32(self) -> u32 {
        (u32::from(self.cylinders) << 16)
            | (u32::from(self.heads) << 8)
            | u32::from(self.sectors_per_track)
    }

    /// The size CHS describes, in bytes.
    pub fn size_bytes(self) -> u64 {
        u64::from(self.cylinders) * u64::from(self.heads) * u64::from(self.sectors_per_track) * 512
    }
}

impl fmt::Display for Geometry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}/{}",
            self.cylinders, self.heads, self.sectors_per_track
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_reference_values() {
        // 16 MiB: the spec floor is 481/4/17 (reference §1.3).
        assert_eq!(Geometry::for_size(16 << 20).to_string(), "481/4/17");
        // qemu's 2 GiB image is 4162/16/63; the floor for exactly 2 GiB is one cylinder less.
        let two_gib = Geometry::for_size(2 << 30);
        assert_eq!((two_gib.heads, two_gib.sectors_per_track), (16, 63));
        assert!(two_gib.size_bytes() <= 2 << 30);
        // Huge disks saturate at 65535/16/255.
        assert_eq!(Geometry::for_size(4 << 40).to_string(), "65535/16/255");
    }

    #[test]
    fn packing_round_trips() {
        let g = Geometry {
            cylinders: 4162,
            heads: 16,
            sectors_per_track: 63,
        };
        assert_eq!(Geometry::from_u32(g.to_u32()), g);
        assert_eq!(g.to_u32(), 0x1042_103F);
    }
}
