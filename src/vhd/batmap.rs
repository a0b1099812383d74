//! blktap's batmap: a header sector right after the BAT, then one bit per block saying the
//! block's sector bitmap is all ones. Only a fast path: trusted for `tap` creators only.

use super::{ErrorKind, FormatError, SECTOR_SIZE, Structure, be_u32, be_u64};

pub const COOKIE: &[u8; 8] = b"tdbatmap";
pub const HEADER_SIZE: usize = 512;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatmapHeader {
    /// Absolute byte offset of the map.
    pub map_offset: u64,
    /// Map size in sectors.
    pub map_sectors: u32,
    pub version: u32,
    pub checksum: u32,
}

impl BatmapHeader {
    /// Parse the header at absolute offset `at`. A missing cookie is not an error but `None`:
    /// most files have no batmap.
    pub fn parse(bytes: &[u8], at: u64) -> Result<Option<BatmapHeader>, FormatError> {
        let Some(b) = bytes.get(..HEADER_SIZE) else {
            return Ok(None);
        };
        if &b[0..8] != COOKIE {
            return Ok(None);
        }
        let header = BatmapHeader {
            map_offset: be_u64(b, 8),
            map_sectors: be_u32(b, 16),
            version: be_u32(b, 20),
            checksum: be_u32(b, 24),
        };
        if !header.map_offset.is_multiple_of(SECTOR_SIZE) {
            return Err(FormatError::new(
                ErrorKind::BadValue,
                Structure::Batmap,
                "batmap_offset",
                at + 8,
                header.map_offset,
                "a sector-aligned offset",
            ));
        }
        Ok(Some(header))
    }

    pub fn map_bytes(&self) -> u64 {
        u64::from(self.map_sectors) * SECTOR_SIZE
    }

    /// Check the map against the stored checksum: one's complement of the byte sum (version
    /// 1.1 summed signed chars).
    pub fn verify(&self, map: &[u8]) -> bool {
        let unsigned = map.iter().fold(0u32, |a, &b| a.wrapping_add(u32::from(b)));
        let signed = map
            .iter()
            .fold(0u32, |a, &b| a.wrapping_add(i32::from(b as i8) as u32));
        let expected = if self.version == 0x0001_0001 {
            !signed
        } else {
            !unsigned
        };
        expected == self.checksum
    }

    pub fn encode(&self) -> [u8; HEADER_SIZE] {
        let mut b = [0u8; HEADER_SIZE];
        b[0..8].copy_from_slice(COOKIE);
        b[8..16].copy_from_slice(&self.map_offset.to_be_bytes());
        b[16..20].copy_from_slice(&self.map_sectors.to_be_bytes());
        b[20..24].copy_from_slice(&self.version.to_be_bytes());
        b[24..28].copy_from_slice(&self.checksum.to_be_bytes());
        b
    }
}

/// The checksum a version 1.2 batmap stores for `map`.
pub fn map_checksum(map: &[u8]) -> u32 {
    !map.iter().fold(0u32, |a, &b| a.wrapping_add(u32::from(b)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips_and_verifies_its_map() {
        let map = [0b1010_0000u8, 0, 0, 0];
        let h = BatmapHeader {
            map_offset: 2560,
            map_sectors: 1,
            version: 0x0001_0002,
            checksum: map_checksum(&map),
        };
        let bytes = h.encode();
        assert_eq!(&bytes[0..8], b"tdbatmap");
        assert_eq!(BatmapHeader::parse(&bytes, 2048).unwrap(), Some(h));
        assert!(h.verify(&map));
        assert!(!h.verify(&[0xFF, 0, 0, 0]));
        assert_eq!(BatmapHeader::parse(&[0; 512], 2048).unwrap(), None);
    }
}
