//! The Block Allocation Table: one big-endian u32 per block, the absolute *sector* offset of
//! the block's bitmap, or 0xFFFFFFFF for an unallocated block.

use std::borrow::Cow;

use super::{ErrorKind, FormatError, MAX_BAT_ENTRIES, SECTOR_SIZE, Structure, round_up_to_sector};

pub const UNALLOCATED: u32 = 0xFFFF_FFFF;

/// Bytes `start..end` of the file that a metadata structure owns, for overlap detection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Extent {
    pub start: u64,
    pub end: u64,
    /// What owns it, as findings name it: "footer copy", "dynamic header", "parent locator 0"…
    pub what: Cow<'static, str>,
}

/// What decides where blocks sit and how long each one is.
#[derive(Debug, Clone, Copy)]
pub struct BlockLayout {
    /// Absolute offset of the BAT, to name the entry at fault.
    pub table_offset: u64,
    /// Data bytes per block.
    pub block_size: u32,
    /// Bytes of the sector bitmap in front of each block.
    pub bitmap_size: u64,
    /// The disk's virtual size: entries past it are ignored, and the last block may be short.
    pub current_size: u64,
    pub file_len: u64,
}

impl BlockLayout {
    fn blocks(&self) -> u64 {
        self.current_size.div_ceil(u64::from(self.block_size))
    }

    /// Bytes block `index` occupies in the file: its bitmap and its guest bytes, sector-padded.
    /// Only a short last block is shorter than a whole block.
    fn block_bytes(&self, index: u64) -> u64 {
        let guest = self
            .current_size
            .saturating_sub(index * u64::from(self.block_size))
            .min(u64::from(self.block_size));
        self.bitmap_size + round_up_to_sector(guest)
    }
}

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

    /// Every allocated block of the disk must lie inside the file and overlap neither a
    /// metadata extent nor another block (`vhd-util check`'s "clobbers headers" and overlap
    /// rules). Returns at most `limit` findings, each naming the BAT entry at fault: a block
    /// past the end is `OutOfBounds`, an overlap `Overlap`; of two overlapping blocks the one
    /// that starts later is named.
    ///
    /// Cost: the allocated entries are sorted once (O(n log n), linear when they are already
    /// ascending as most producers write them), with one u32 of memory per allocated entry,
    /// never more than the table itself holds. Metadata overlaps are binary searches.
    pub fn check_layout(
        &self,
        layout: &BlockLayout,
        metadata: &[Extent],
        limit: usize,
    ) -> Vec<FormatError> {
        let blocks = layout.blocks().min(self.entries.len() as u64) as u32;
        // Past the end, over metadata, over another block: each kind in BAT order, in this
        // order, so that the first finding is the most direct one.
        let finding = |kind, index: u32, found: String| {
            FormatError::new(
                kind,
                Structure::Block(index),
                "BAT entry",
                layout.table_offset + u64::from(index) * 4,
                found,
                "a block inside the file, clear of the metadata and of every other block",
            )
        };
        let mut findings = Vec::new();
        let mut inside: Vec<u32> = Vec::new();
        for (index, sector) in self.allocated(blocks) {
            let start = u64::from(sector) * SECTOR_SIZE;
            let end = start + layout.block_bytes(u64::from(index));
            if end > layout.file_len {
                if findings.len() < limit {
                    let found = format!(
                        "block at bytes {start}..{end}, past the end of the {}-byte file",
                        layout.file_len
                    );
                    findings.push(finding(ErrorKind::OutOfBounds, index, found));
                }
            } else {
                inside.push(sector);
            }
        }
        inside.sort_unstable();
        // Only the last block can be short; every other block spans the same bytes.
        let last = blocks.checked_sub(1);
        let last_sector = last.and_then(|i| self.sector(i));
        let full = layout.bitmap_size + u64::from(layout.block_size);
        let span = |sector: u32| {
            let start = u64::from(sector) * SECTOR_SIZE;
            let len = match (last, last_sector) {
                (Some(i), Some(s)) if s == sector => layout.block_bytes(u64::from(i)),
                _ => full,
            };
            (start, start + len)
        };
        let overlap = |index: u32, sector: u32, other: &str, other_span: (u64, u64)| {
            let (start, end) = span(sector);
            let found = format!(
                "block at bytes {start}..{end} overlaps {other} at bytes {}..{}",
                other_span.0, other_span.1
            );
            finding(ErrorKind::Overlap, index, found)
        };
        let mut over_metadata = Vec::new();
        for m in metadata {
            // Blocks that could reach into `m` start after `m.start - full`.
            let from = inside.partition_point(|&s| u64::from(s) * SECTOR_SIZE + full <= m.start);
            for &sector in &inside[from..] {
                let (start, end) = span(sector);
                if start >= m.end || findings.len() + over_metadata.len() >= limit {
                    break;
                }
                if end > m.start {
                    let index = self.index_of(sector, blocks, None);
                    over_metadata.push(overlap(index, sector, &m.what, (m.start, m.end)));
                }
            }
        }
        over_metadata.sort_by_key(|f| f.offset);
        findings.append(&mut over_metadata);
        let mut over_blocks = Vec::new();
        // Sweep in file order, remembering the block that reaches furthest.
        let mut furthest: Option<(u32, u64)> = None;
        for &sector in &inside {
            let (start, end) = span(sector);
            if let Some((prev, prev_end)) = furthest
                && start < prev_end
                && findings.len() + over_blocks.len() < limit
            {
                let prev_index = self.index_of(prev, blocks, None);
                // Equal sectors: name the second entry that points there.
                let skip = (prev == sector).then_some(prev_index);
                let index = self.index_of(sector, blocks, skip);
                let other = format!("block {prev_index}");
                over_blocks.push(overlap(index, sector, &other, span(prev)));
            }
            if furthest.is_none_or(|(_, e)| end > e) {
                furthest = Some((sector, end));
            }
        }
        over_blocks.sort_by_key(|f| f.offset);
        findings.append(&mut over_blocks);
        findings
    }

    /// The first entry below `blocks` that points at `sector`, other than `skip`. Only called
    /// to name a finding, so its linear cost is paid at most `limit` times.
    fn index_of(&self, sector: u32, blocks: u32, skip: Option<u32>) -> u32 {
        self.allocated(blocks)
            .find(|&(i, s)| s == sector && Some(i) != skip)
            .map_or(0, |(i, _)| i)
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

    /// 2 KiB blocks behind one-sector bitmaps: 2560 bytes (5 sectors) each on disk.
    fn layout(current_size: u64, file_len: u64) -> BlockLayout {
        BlockLayout {
            table_offset: 1536,
            block_size: 2048,
            bitmap_size: 512,
            current_size,
            file_len,
        }
    }

    fn header_extent() -> Vec<Extent> {
        vec![Extent {
            start: 512,
            end: 1536,
            what: "dynamic header".into(),
        }]
    }

    #[test]
    fn layout_accepts_any_order_and_a_short_last_block_before_metadata() {
        let mut bat = Bat::unallocated(3);
        bat.set(0, 20);
        bat.set(1, 10);
        // The last block holds 512 guest bytes: bitmap and one sector, then metadata follows
        // where a whole block would still go on.
        bat.set(2, 40);
        let after = vec![Extent {
            start: 40 * 512 + 1024,
            end: 40 * 512 + 1536,
            what: "footer".into(),
        }];
        let findings = bat.check_layout(&layout(2 * 2048 + 512, 40 * 512 + 1536), &after, 8);
        assert!(findings.is_empty(), "{findings:?}");
    }

    #[test]
    fn layout_names_the_entry_for_each_kind_of_damage() {
        let mut bat = Bat::unallocated(4);
        bat.set(0, 10); // fine
        bat.set(1, 10); // the same block as entry 0
        bat.set(2, 2); // over the header
        bat.set(3, 1000); // past the end
        let findings = bat.check_layout(&layout(4 * 2048, 64 << 10), &header_extent(), 8);
        let named: Vec<_> = findings
            .iter()
            .map(|f| (f.kind, f.structure, f.offset))
            .collect();
        assert_eq!(
            named,
            vec![
                (ErrorKind::OutOfBounds, Structure::Block(3), 1536 + 12),
                (ErrorKind::Overlap, Structure::Block(2), 1536 + 8),
                (ErrorKind::Overlap, Structure::Block(1), 1536 + 4),
            ]
        );
        assert!(findings[1].found.contains("overlaps dynamic header"));
        assert!(findings[2].found.contains("overlaps block 0"));
    }

    #[test]
    fn layout_findings_are_capped() {
        let bat = Bat {
            entries: vec![10; 10_000],
        };
        let findings = bat.check_layout(&layout(10_000 * 2048, 64 << 10), &[], 5);
        assert_eq!(findings.len(), 5);
        assert!(findings.iter().all(|f| f.kind == ErrorKind::Overlap));
    }

    #[test]
    fn absurd_counts_fail_before_allocating() {
        let err = Bat::parse(&[], u32::MAX, 1536).unwrap_err();
        assert_eq!(err.kind, ErrorKind::TooLarge);
        let err = Bat::parse(&[0; 7], 2, 1536).unwrap_err();
        assert_eq!(err.kind, ErrorKind::Truncated);
    }
}
