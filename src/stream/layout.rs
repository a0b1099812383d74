//! Where the structures after the dynamic header sit in a stream, checked for what a
//! forward-only reader needs: everything after the header, blocks after the BAT, nothing
//! overlapping. Yields them in physical order, and the offset of the final footer.

use super::StreamError;
use crate::vhd::{
    Bat, ErrorKind, FOOTER_SIZE, FormatError, HEADER_SIZE, SECTOR_SIZE, Structure,
    batmap::BatmapHeader, header::LOCATORS_AT, locator::LOCATOR_SIZE, round_up_to_sector,
};

/// A VHD addresses at most 2^32 sectors (2 TiB): BAT entries are u32 sector numbers. Offsets
/// read from input are held below this, which also keeps every sum of them far from overflow.
pub const ADDRESSABLE_BYTES: u64 = (1 << 32) * SECTOR_SIZE;
/// Parent locator payloads are paths: a few hundred bytes. The cap keeps a hostile header
/// from making the decoder buffer gigabytes.
pub const MAX_LOCATOR_PAYLOAD: u32 = 64 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegionKind {
    /// The payload of parent locator entry `n`.
    Locator(u8),
    Bat,
    /// blktap's batmap map, described by its header.
    Batmap(BatmapHeader),
    Block(u32),
    /// The footer after the furthest structure.
    FinalFooter,
}

impl RegionKind {
    fn structure(self) -> Structure {
        match self {
            RegionKind::Locator(i) => Structure::ParentLocator(i),
            RegionKind::Bat => Structure::Bat,
            RegionKind::Batmap(_) => Structure::Batmap,
            RegionKind::Block(i) => Structure::Block(i),
            RegionKind::FinalFooter => Structure::Footer,
        }
    }
}

/// One structure at a known place in the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Region {
    pub start: u64,
    /// End of the bytes the structure claims; nothing else may start before it.
    pub end: u64,
    /// End of the space reserved for it (a locator's `data_space`, sector-rounded), which the
    /// final footer must follow if the structure is the last one.
    pub reserved_end: u64,
    pub kind: RegionKind,
}

impl Region {
    fn new(start: u64, len: u64, kind: RegionKind) -> Region {
        Region {
            start,
            end: start + len,
            reserved_end: start + len,
            kind,
        }
    }

    fn claim(self) -> Claim {
        Claim {
            start: self.start,
            end: self.end,
            structure: self.kind.structure(),
        }
    }
}

/// Bytes a structure occupies, whether or not the decoder visits it.
#[derive(Debug, Clone, Copy)]
struct Claim {
    start: u64,
    end: u64,
    structure: Structure,
}

/// The structures after the header, visited in ascending offset. Blocks are kept apart,
/// packed as `sector << 32 | index`, because there can be millions of them.
#[derive(Debug)]
pub struct Plan {
    header_end: u64,
    bat_end: u64,
    metadata: Vec<Region>,
    /// blktap's batmap header sector: it occupies its bytes but is not visited, as it was
    /// parsed in the look past the BAT.
    batmap_header_at: Option<u64>,
    blocks: Vec<u64>,
    block_span: u64,
    next_metadata: usize,
    next_block: usize,
}

impl Plan {
    /// The locator payloads and the BAT described by the header at `header_at`.
    pub fn after_header(
        header_at: u64,
        header: &crate::vhd::DynamicHeader,
    ) -> Result<Plan, StreamError> {
        let header_end = header_at + HEADER_SIZE as u64;
        let table_at = header.table_offset;
        within_reach(table_at, Structure::Header, "table_offset", header_at + 16)?;
        let bat = Region::new(table_at, header.bat_bytes(), RegionKind::Bat);
        let mut metadata = vec![bat];
        for (i, locator) in header.parent_locators.iter().enumerate() {
            if locator.code.0 == 0 || locator.data_length == 0 {
                continue;
            }
            let index = i as u8;
            let entry_at = header_at + (LOCATORS_AT + i * LOCATOR_SIZE) as u64;
            if locator.data_length > MAX_LOCATOR_PAYLOAD {
                return Err(FormatError::new(
                    ErrorKind::TooLarge,
                    Structure::ParentLocator(index),
                    "data_length",
                    entry_at + 8,
                    locator.data_length,
                    format_args!("at most {MAX_LOCATOR_PAYLOAD} bytes for a parent path"),
                )
                .into());
            }
            let start = locator.data_offset;
            within_reach(
                start,
                Structure::ParentLocator(index),
                "data_offset",
                entry_at + 16,
            )?;
            let mut region = Region::new(
                start,
                u64::from(locator.data_length),
                RegionKind::Locator(index),
            );
            // Locators are informational in a stream (XAPI's import ignores them), so a
            // data_space that fits neither the bytes nor the sectors reading reserves nothing.
            let reserved = locator.reserved_bytes(index, entry_at).unwrap_or(0);
            region.reserved_end = round_up_to_sector(region.end.max(start + reserved));
            metadata.push(region);
        }
        metadata.sort_by_key(|r| r.start);
        if let Some(first) = metadata.first().filter(|r| r.start < header_end) {
            return Err(StreamError::Backward {
                structure: first.kind.structure(),
                offset: first.start,
                earlier: Structure::Header,
                earlier_end: header_end,
            });
        }
        let plan = Plan {
            header_end,
            bat_end: bat.end,
            metadata,
            batmap_header_at: None,
            blocks: Vec::new(),
            block_span: 0,
            next_metadata: 0,
            next_block: 0,
        };
        plan.check_overlaps()?;
        Ok(plan)
    }

    /// Adds the blocks of the first `limit` BAT entries (later entries of an oversized BAT
    /// are ignored), each `block_span` bytes long. Every block must follow the BAT.
    pub fn add_blocks(
        &mut self,
        bat: &Bat,
        limit: u32,
        block_span: u64,
    ) -> Result<(), StreamError> {
        self.block_span = block_span;
        self.blocks = bat
            .allocated(limit)
            .map(|(index, sector)| u64::from(sector) << 32 | u64::from(index))
            .collect();
        // Producers usually write ascending offsets, which this sort handles in linear time.
        self.blocks.sort_unstable();
        match self.blocks.first().map(|&b| unpack(b)) {
            Some((offset, index)) if offset < self.bat_end => Err(StreamError::BlockBeforeBat {
                index,
                offset,
                bat_end: self.bat_end,
            }),
            _ => Ok(()),
        }
    }

    /// Adds blktap's batmap, whose header was found at `at`, right after the BAT.
    pub fn add_batmap(&mut self, at: u64, header: BatmapHeader) -> Result<(), StreamError> {
        let map_at = header.map_offset;
        within_reach(map_at, Structure::Batmap, "batmap_offset", at + 8)?;
        // One bit per BAT entry; blktap never writes a bigger map than the largest BAT needs.
        let most = round_up_to_sector(u64::from(crate::vhd::MAX_BAT_ENTRIES).div_ceil(8));
        if header.map_bytes() > most {
            return Err(FormatError::new(
                ErrorKind::TooLarge,
                Structure::Batmap,
                "batmap_size",
                at + 16,
                format_args!("{} sectors", header.map_sectors),
                format_args!("at most {} sectors", most / SECTOR_SIZE),
            )
            .into());
        }
        // The map must follow its header, which also keeps the map's end the batmap's end.
        if map_at < at + SECTOR_SIZE {
            return Err(StreamError::Backward {
                structure: Structure::Batmap,
                offset: map_at,
                earlier: Structure::Batmap,
                earlier_end: at + SECTOR_SIZE,
            });
        }
        self.batmap_header_at = Some(at);
        self.metadata.push(Region::new(
            map_at,
            header.map_bytes(),
            RegionKind::Batmap(header),
        ));
        // The map lies after the BAT, so the structures already visited keep their places.
        self.metadata.sort_by_key(|r| r.start);
        Ok(())
    }

    /// Checks that no two structures overlap, places the final footer right after the
    /// furthest one (the header, the BAT, a locator, the batmap or a block), and returns the
    /// stream's total length.
    pub fn seal(&mut self) -> Result<u64, StreamError> {
        self.check_overlaps()?;
        let metadata_end = self.metadata.iter().map(|r| r.reserved_end);
        let blocks_end = self.blocks.iter().map(|&b| self.block_region(b).end);
        let footer_at = metadata_end
            .chain(blocks_end)
            .fold(self.header_end, u64::max);
        let footer = Region::new(footer_at, FOOTER_SIZE as u64, RegionKind::FinalFooter);
        self.metadata.push(footer);
        Ok(footer.end)
    }

    pub fn allocated_blocks(&self) -> u32 {
        self.blocks.len() as u32
    }

    /// The next structure to visit, in physical order.
    pub fn peek(&self) -> Option<Region> {
        let metadata = self.metadata.get(self.next_metadata).copied();
        let block = self
            .blocks
            .get(self.next_block)
            .map(|&b| self.block_region(b));
        match (metadata, block) {
            (Some(m), Some(b)) => Some(if m.start <= b.start { m } else { b }),
            (m, b) => m.or(b),
        }
    }

    /// Moves past the structure [`Self::peek`] returned.
    pub fn advance(&mut self) {
        match self.peek().map(|r| r.kind) {
            Some(RegionKind::Block(_)) => self.next_block += 1,
            Some(_) => self.next_metadata += 1,
            None => {}
        }
    }

    fn block_region(&self, packed: u64) -> Region {
        let (start, index) = unpack(packed);
        Region::new(start, self.block_span, RegionKind::Block(index))
    }

    /// Walks every structure in offset order, remembering the one reaching furthest.
    fn check_overlaps(&self) -> Result<(), StreamError> {
        let batmap_header = self.batmap_header_at.map(|start| Claim {
            start,
            end: start + SECTOR_SIZE,
            structure: Structure::Batmap,
        });
        let mut claims: Vec<Claim> = self.metadata.iter().map(|r| r.claim()).collect();
        claims.extend(batmap_header);
        claims.sort_by_key(|c| c.start);
        let mut metadata = claims.into_iter().peekable();
        let mut blocks = self
            .blocks
            .iter()
            .map(|&b| self.block_region(b).claim())
            .peekable();
        let mut furthest: Option<Claim> = None;
        loop {
            let next = match (metadata.peek(), blocks.peek()) {
                (Some(m), Some(b)) if b.start < m.start => blocks.next(),
                (Some(_), _) => metadata.next(),
                (None, _) => blocks.next(),
            };
            let Some(region) = next else {
                return Ok(());
            };
            if let Some(first) = furthest.filter(|f| region.start < f.end) {
                return Err(StreamError::Overlap {
                    second: region.structure,
                    offset: region.start,
                    first: first.structure,
                    first_start: first.start,
                    first_end: first.end,
                });
            }
            if furthest.is_none_or(|f| region.end > f.end) {
                furthest = Some(region);
            }
        }
    }
}

/// The byte offset and index of a block packed as `sector << 32 | index`.
fn unpack(packed: u64) -> (u64, u32) {
    ((packed >> 32) * SECTOR_SIZE, packed as u32)
}

/// Rejects an offset read from input that no VHD can address.
pub fn within_reach(
    offset: u64,
    structure: Structure,
    field: &'static str,
    field_at: u64,
) -> Result<(), StreamError> {
    if offset < ADDRESSABLE_BYTES {
        return Ok(());
    }
    Err(FormatError::new(
        ErrorKind::OutOfBounds,
        structure,
        field,
        field_at,
        offset,
        format_args!("an offset below {ADDRESSABLE_BYTES} (2 TiB), all a VHD can address"),
    )
    .into())
}
