//! The Block Allocation Table: one big-endian u32 per block, the absolute *sector* offset of
//! the block's bitmap, or 0xFFFFFFFF for an unallocated block.

use super::{ErrorKind, FormatError, MAX_BAT_ENTRIES, SECTOR_SIZE, Structure};

pub const UNALLOCATED: u32 = 0xFFFF_FFFF;

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Bat {
    entries: Vec<u32>,
}

impl Bat {
    /// An empty table of `entries` unallocated blocks.
    pub fn unallocated(entries: u32) -> Bat {
        Bat {
            entries: vec![UNALLOCATED; entries as usize],
        }
    }

    /// Parse `entries` entries from `bytes` (taken at absolute offset `at`). The count is
    /// checked against both the bytes given and [`MAX_BAT_ENTRIES`] before anything is sized.
    pub fn parse(bytes: &[u8], entries: u32, at: u64) -> Result<Bat, FormatError> {
        if entries > MAX_BAT_ENTRIES {
            return Err(FormatError::new(
                ErrorKind::TooLarge,
                Structure::Bat,
                "entries",
                at,
                entries,
                format_args!("at most {MAX_BAT_ENTRIES}"),
            ));
        }
        let need = entries as usize * 4;
        let Some(table) = bytes.get(..need) else {
            return Err(FormatError::truncated(
                Structure::Bat,
                at,
                bytes.len(),
                need,
            ));
        };
        Ok(Bat {
            entries: table
                .chunks_exact(4)
                .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
        })
    }

    /// Encode, padded to a whole sector with 0xFF as qemu and blktap do (never with garbage).
    pub fn encode(&self) -> Vec<u8> {
        let len = super::round_up_to_sector(self.entries.len() as u64 * 4) as usize;
        let mut out = vec![0xFF; len];
        for (slot, entry) in out.chunks_exact_mut(4).zip(&self.entries) {
            slot.copy_from_slice(&entry.to_be_bytes());
        }
        out
    }

    pub fn len(&self) -> u32 {
        self.entries.len() as u32
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The sector offset of block `index`'s bitmap, if allocated.
    pub fn sector(&self, index: u32) -> Option<u32> {
        self.entries
            .get(index as usize)
            .copied()
            .filter(|&s| s != UNALLOCATED)
    }

    /// The byte offset of block `index`'s bitmap, if allocated.
    pub fn byte_offset(&self, index: u32) -> Option<u64> {
        self.sector(index).map(|s| u64::from(s) * SECTOR_SIZE)
    }

    pub fn set(&mut self, index: u32, sector: u32) {
        if let Some(slot) = self.entries.get_mut(index as usize) {
            *slot = sector;
        }
    }

    /// `(index, sector)` of every allocated entry among the first `limit` (entries past the
    /// disk's end are ignored, as oversized tables are common).
    pub fn allocated(&self, limit: u32) -> impl Iterator<Item = (u32, u32)> + '_ {
        self.entries
            .iter()
            .take(limit as usize)
            .enumerate()
            .filter(|(_, s)| **s != UNALLOCATED)
            .map(|(i, s)| (i as u32, *s))
    }

    pub fn raw(&self) -> &[u32] {
        &self.entries
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_unsigned_entries_and_pads_with_ff() {
        // Entry 0 at sector 3, entry 1 unallocated, entry 2 above 2^31 (disks near 2 TiB).
        let bytes = [0, 0, 0, 3, 0xFF, 0xFF, 0xFF, 0xFF, 0x80, 0, 0, 0xC8];
        let bat = Bat::parse(&bytes, 3, 1536).unwrap();
        assert_eq!(bat.sector(0), Some(3));
        assert_eq!(bat.sector(1), None);
        assert_eq!(bat.byte_offset(2), Some((0x8000_00C8u64) * 512));
        let encoded = bat.encode();
        assert_eq!(encoded.len(), 512);
        assert_eq!(&encoded[..12], &bytes);
        assert!(encoded[12..].iter().all(|&b| b == 0xFF));
        assert_eq!(bat.allocated(2).collect::<Vec<_>>(), vec![(0, 3)]);
    }

    #[test]
    fn absurd_counts_fail_before_allocating() {
        let err = Bat::parse(&[], u32::MAX, 1536).unwrap_err();
        assert_eq!(err.kind, ErrorKind::TooLarge);
        let err = Bat::parse(&[0; 7], 2, 1536).unwrap_err();
        assert_eq!(err.kind, ErrorKind::Truncated);
    }
}
