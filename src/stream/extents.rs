//! VHD streams built from 64 KiB extents (floor 1, sans-IO): what a CBT delta or a full read
//! over NBD sends to `PUT /import_raw_vdi?format=vhd`.
//!
//! XAPI's change log (`VDI.list_changed_blocks`) has one bit per 64 KiB of the disk, and the
//! import writes only the sectors a block's bitmap marks (`xapi-protocol.md` §1.3.1). So a
//! block carries its changed extents' data, zeros elsewhere, and a bitmap marking only the
//! changed extents' sectors: the target's other sectors stay as they were.
//!
//! A dynamic VHD block always carries `block_size` data bytes, marked or not, so the stream's
//! block size sets what scattered changes cost on the wire. The stream uses the smallest
//! block size from 64 KiB up (one extent per block: nothing unchanged is sent) whose BAT keeps
//! to [`MAX_STREAM_BAT_ENTRIES`] entries, up to 2 MiB for the largest disks, where a block
//! holds up to 32 extents and the partial bitmaps do the work.

use base64::Engine as _;
use bytes::{Bytes, BytesMut};
use uuid::Uuid;

use super::{EncodeParams, StreamEncoder, StreamError};
use crate::vhd::{self, BlockSet, SECTOR_SIZE, VhdTimestamp};

/// The change log's granularity: one bit of `VDI.list_changed_blocks` per 64 KiB.
pub const EXTENT_SIZE: u64 = 64 << 10;
/// The most BAT entries a stream built here has: a 4 MiB BAT, sent with every transfer.
pub const MAX_STREAM_BAT_ENTRIES: u64 = 1 << 20;
/// Sectors per extent.
const EXTENT_SECTORS: u64 = EXTENT_SIZE / SECTOR_SIZE;

/// Which 64 KiB extents of a disk to send: a changed-block bitmap, or every extent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangeMap {
    /// One bit per extent, most significant bit first, as XAPI sends it.
    bits: Vec<u8>,
    virtual_size: u64,
}

impl ChangeMap {
    /// Every extent of a disk of `virtual_size` bytes: a full copy.
    pub fn all(virtual_size: u64) -> ChangeMap {
        let mut map = ChangeMap::none(virtual_size);
        map.bits.fill(0xFF);
        map
    }

    /// No extent of a disk of `virtual_size` bytes.
    pub fn none(virtual_size: u64) -> ChangeMap {
        let extents = virtual_size.div_ceil(EXTENT_SIZE);
        ChangeMap {
            bits: vec![0; extents.div_ceil(8) as usize],
            virtual_size,
        }
    }

    /// `VDI.list_changed_blocks`' answer for a disk of `virtual_size` bytes: base64 of the
    /// bitmap. It must cover every extent; bytes past the disk's end must be zero bits.
    pub fn from_xapi(text: &str, virtual_size: u64) -> Result<ChangeMap, StreamError> {
        // At most 2040 GiB: a bitmap of 4 MiB, its base64 under 6 MiB.
        if virtual_size > vhd::MAX_VIRTUAL_SIZE {
            return Err(StreamError::invalid_param(
                "virtual_size",
                virtual_size,
                "at most 2040 GiB",
            ));
        }
        let expected = virtual_size.div_ceil(EXTENT_SIZE).div_ceil(8);
        if text.len() as u64 > (expected + 3).div_ceil(3) * 4 + 4 {
            return Err(StreamError::invalid_param(
                "changed_blocks",
                format_args!("{} characters of base64", text.len()),
                format_args!("the base64 of {expected} bytes"),
            ));
        }
        let bits = base64::engine::general_purpose::STANDARD
            .decode(text.trim())
            .map_err(|e| StreamError::invalid_param("changed_blocks", e, "base64"))?;
        ChangeMap::from_bits(bits, virtual_size)
    }

    /// A bitmap of one bit per extent, most significant bit first.
    pub fn from_bits(mut bits: Vec<u8>, virtual_size: u64) -> Result<ChangeMap, StreamError> {
        let extents = virtual_size.div_ceil(EXTENT_SIZE);
        let expected = extents.div_ceil(8) as usize;
        if bits.len() < expected {
            return Err(StreamError::invalid_param(
                "changed_blocks",
                format_args!("{} bytes of bitmap", bits.len()),
                format_args!("{expected} bytes: one bit per 64 KiB of {virtual_size} bytes"),
            ));
        }
        // Bits past the disk's end in the last byte, or whole bytes past it (a bitmap sized
        // for a larger disk), may only say "unchanged".
        let tail_bits = (expected as u64 * 8 - extents) as u32;
        let last_mask = if tail_bits == 0 {
            0
        } else {
            (1u8 << tail_bits) - 1
        };
        let stray = bits[expected..].iter().any(|b| *b != 0)
            || (expected > 0 && bits[expected - 1] & last_mask != 0);
        if stray {
            return Err(StreamError::invalid_param(
                "changed_blocks",
                "bits set past the disk's end",
                format_args!("{extents} extents of 64 KiB"),
            ));
        }
        bits.truncate(expected);
        Ok(ChangeMap { bits, virtual_size })
    }

    pub fn virtual_size(&self) -> u64 {
        self.virtual_size
    }

    /// How many 64 KiB extents the disk has.
    pub fn extents(&self) -> u64 {
        self.virtual_size.div_ceil(EXTENT_SIZE)
    }

    pub fn is_changed(&self, extent: u64) -> bool {
        extent < self.extents() && self.bits[(extent / 8) as usize] & (0x80 >> (extent % 8)) != 0
    }

    /// Mark `extent` changed (extents past the disk's end are ignored).
    pub fn set(&mut self, extent: u64) {
        if extent < self.extents() {
            self.bits[(extent / 8) as usize] |= 0x80 >> (extent % 8);
        }
    }

    /// How many extents are marked.
    pub fn changed(&self) -> u64 {
        self.bits.iter().map(|b| u64::from(b.count_ones())).sum()
    }
}

/// The block size of a stream for a disk of `virtual_size` bytes: 64 KiB, doubled until the
/// BAT keeps to [`MAX_STREAM_BAT_ENTRIES`], at most 2 MiB.
pub fn stream_block_size(virtual_size: u64) -> u32 {
    let mut block_size = EXTENT_SIZE as u32;
    while block_size < vhd::DEFAULT_BLOCK_SIZE
        && virtual_size.div_ceil(u64::from(block_size)) > MAX_STREAM_BAT_ENTRIES
    {
        block_size *= 2;
    }
    block_size
}

/// One run of a block to read: `len` bytes at `disk_offset`, landing at `block_offset` in
/// the block's data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Read {
    pub disk_offset: u64,
    pub len: u32,
    pub block_offset: u32,
}

/// The stream for a [`ChangeMap`]: which blocks it carries, what to read for each, and its
/// frames. Blocks go in ascending index; each carries a bitmap of the extents given for it.
#[derive(Debug)]
pub struct ExtentStream {
    encoder: StreamEncoder,
    map: ChangeMap,
    block_size: u32,
    /// Extents per block, 1 to 32.
    per_block: u32,
}

impl ExtentStream {
    /// A dynamic stream of the blocks holding a changed extent of `map`, or of every block
    /// when `all_blocks` (a full read, whose extents are only known once read).
    pub fn new(
        map: ChangeMap,
        all_blocks: bool,
        unique_id: Uuid,
        timestamp: VhdTimestamp,
    ) -> Result<ExtentStream, StreamError> {
        let block_size = stream_block_size(map.virtual_size());
        ExtentStream::with_block_size(map, all_blocks, unique_id, timestamp, block_size)
    }

    /// [`ExtentStream::new`] with blocks of `block_size` bytes instead of the smallest that
    /// keeps the BAT small: a power of two from 64 KiB to 2 MiB.
    pub fn with_block_size(
        map: ChangeMap,
        all_blocks: bool,
        unique_id: Uuid,
        timestamp: VhdTimestamp,
        block_size: u32,
    ) -> Result<ExtentStream, StreamError> {
        let virtual_size = map.virtual_size();
        if !block_size.is_power_of_two()
            || !(EXTENT_SIZE as u32..=vhd::DEFAULT_BLOCK_SIZE).contains(&block_size)
        {
            return Err(StreamError::invalid_param(
                "block_size",
                block_size,
                "a power of two from 64 KiB to 2 MiB",
            ));
        }
        let per_block = (u64::from(block_size) / EXTENT_SIZE) as u32;
        let entries =
            u32::try_from(virtual_size.div_ceil(u64::from(block_size))).map_err(|_| {
                StreamError::invalid_param("virtual_size", virtual_size, "at most 2040 GiB")
            })?;
        let blocks = if all_blocks {
            BlockSet::full(entries)
        } else {
            let mut blocks = BlockSet::new(entries);
            for extent in 0..map.extents() {
                if map.is_changed(extent) {
                    blocks.insert((extent / u64::from(per_block)) as u32);
                }
            }
            blocks
        };
        let params = EncodeParams {
            block_size,
            ..EncodeParams::new(virtual_size, unique_id, timestamp, blocks)
        };
        Ok(ExtentStream {
            encoder: StreamEncoder::new(params)?,
            map,
            block_size,
            per_block,
        })
    }

    pub fn block_size(&self) -> u32 {
        self.block_size
    }

    pub fn total_len(&self) -> u64 {
        self.encoder.total_len()
    }

    /// Footer copy, header, spare sector and BAT.
    pub fn prelude(&self) -> Bytes {
        self.encoder.prelude()
    }

    /// The blocks the stream carries, ascending.
    pub fn blocks(&self) -> impl Iterator<Item = u32> + '_ {
        self.encoder.included_blocks()
    }

    pub fn block_count(&self) -> u32 {
        self.encoder.included_blocks().count() as u32
    }

    /// The extents of block `index` the map marks, as a mask: bit `j` for the block's `j`-th
    /// extent.
    pub fn changed_mask(&self, index: u32) -> u32 {
        let first = u64::from(index) * u64::from(self.per_block);
        (0..self.per_block)
            .filter(|j| self.map.is_changed(first + u64::from(*j)))
            .fold(0, |mask, j| mask | (1 << j))
    }

    /// What to read for block `index`: the runs of the extents in `mask`, cut at the disk's
    /// end.
    pub fn reads(&self, index: u32, mask: u32) -> Vec<Read> {
        let block_start = u64::from(index) * u64::from(self.block_size);
        let mut reads: Vec<Read> = Vec::new();
        for j in (0..self.per_block).filter(|j| mask & (1 << j) != 0) {
            let start = block_start + u64::from(j) * EXTENT_SIZE;
            let end = (start + EXTENT_SIZE).min(self.map.virtual_size());
            if start >= end {
                break;
            }
            let len = (end - start) as u32;
            match reads.last_mut() {
                Some(last) if last.disk_offset + u64::from(last.len) == start => last.len += len,
                _ => reads.push(Read {
                    disk_offset: start,
                    len,
                    block_offset: (start - block_start) as u32,
                }),
            }
        }
        reads
    }

    /// The frames of block `index`: a bitmap marking the sectors of the extents in `mask`
    /// (below the disk's end), then `data`, one block long with zeros where nothing was read.
    pub fn block_frames(
        &mut self,
        index: u32,
        data: Bytes,
        mask: u32,
    ) -> Result<[Bytes; 2], StreamError> {
        let [_, data] = self.encoder.block_frames(index, data)?;
        Ok([self.bitmap(index, mask), data])
    }

    /// The final footer, once every block was given.
    pub fn trailer(&self) -> Result<Bytes, StreamError> {
        self.encoder.trailer()
    }

    fn bitmap(&self, index: u32, mask: u32) -> Bytes {
        let len = vhd::header::bitmap_size(self.block_size) as usize;
        let mut bitmap = BytesMut::zeroed(len);
        let block_start = u64::from(index) * u64::from(self.block_size);
        let sectors_left = self
            .map
            .virtual_size()
            .saturating_sub(block_start)
            .div_ceil(SECTOR_SIZE);
        for j in (0..self.per_block).filter(|j| mask & (1 << j) != 0) {
            let first = u64::from(j) * EXTENT_SECTORS;
            let end = (first + EXTENT_SECTORS).min(sectors_left);
            for sector in first..end {
                bitmap[(sector / 8) as usize] |= 0x80 >> (sector % 8);
            }
        }
        bitmap.freeze()
    }
}

/// The extents of a whole block's `data` holding something other than zeros, as a mask (bit
/// `j` for the `j`-th 64 KiB): what a full copy marks, so the target's fresh disk stays sparse.
pub fn nonzero_mask(data: &[u8]) -> u32 {
    data.chunks(EXTENT_SIZE as usize)
        .take(32)
        .enumerate()
        .filter(|(_, extent)| extent.iter().any(|b| *b != 0))
        .fold(0, |mask, (j, _)| mask | (1 << j))
}

#[cfg(test)]
#[path = "extents_tests.rs"]
mod tests;
