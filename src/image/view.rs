//! The sector-exact synthetic view of a chain: what the guest sees. Layers are merged per
//! sector through their bitmaps, top-down, never per block.

use bytes::Bytes;

use super::layer::BlockState;
use super::{Chain, VhdLayer};
use crate::vhd::{DiskType, SECTOR_SIZE, bitmap};

/// The content of one block of the view.
#[derive(Debug, Clone)]
pub enum BlockData {
    /// Every byte is zero and no layer allocates the block.
    Zero,
    /// The block's guest bytes (the block size, or less for a short last block).
    Data(Bytes),
}

impl Chain {
    /// Fill `out` with the guest-visible bytes at `offset`. Bytes past the virtual size read as
    /// zeros.
    pub fn read_at(&self, offset: u64, out: &mut [u8]) {
        fill(self.layers(), offset, out);
    }

    /// The guest bytes of block `index` on the leaf's block grid. When one layer holds the
    /// whole block, the result is a zero-copy slice of that layer's file.
    pub fn block_data(&self, index: u32) -> BlockData {
        let len = self.leaf().block_len(index);
        if len == 0 {
            return BlockData::Zero;
        }
        if self.blocks_align() {
            match self.whole_block_source(index) {
                WholeBlock::Zero => return BlockData::Zero,
                WholeBlock::In(layer, data_offset) => {
                    if let Some(slice) = layer.slice(data_offset, len) {
                        return BlockData::Data(slice);
                    }
                }
                WholeBlock::Mixed => {}
            }
        }
        let mut buf = vec![0u8; len as usize];
        self.read_at(u64::from(index) * u64::from(self.block_size()), &mut buf);
        BlockData::Data(Bytes::from(buf))
    }

    /// Whether block `index` comes whole from one layer: the first layer, from the leaf down,
    /// that allocates it, if that layer holds every sector and covers the whole block.
    fn whole_block_source(&self, index: u32) -> WholeBlock<'_> {
        let block_end = (u64::from(index) + 1) * u64::from(self.block_size());
        for layer in self.layers() {
            match layer.block_state(index) {
                BlockState::Unallocated if layer.disk_type() == DiskType::Differencing => {}
                BlockState::Unallocated => return WholeBlock::Zero,
                BlockState::Full { data_offset }
                    if layer.virtual_size() >= block_end.min(self.virtual_size()) =>
                {
                    return WholeBlock::In(layer, data_offset);
                }
                _ => return WholeBlock::Mixed,
            }
        }
        WholeBlock::Zero
    }
}

enum WholeBlock<'a> {
    Zero,
    In(&'a VhdLayer, u64),
    Mixed,
}

/// Read `out.len()` guest bytes at `offset` from `layers[0]`, falling through to the layers
/// below wherever a differencing layer does not hold a sector.
fn fill(layers: &[VhdLayer], offset: u64, out: &mut [u8]) {
    let Some((layer, below)) = layers.split_first() else {
        out.fill(0);
        return;
    };
    let size = layer.virtual_size();
    let inside = size.saturating_sub(offset).min(out.len() as u64) as usize;
    let (out, past_end) = out.split_at_mut(inside);
    past_end.fill(0);
    if layer.disk_type() == DiskType::Fixed {
        layer.copy_out(offset, out);
        return;
    }
    let differencing = layer.disk_type() == DiskType::Differencing;
    let block_size = u64::from(layer.block_size());
    let mut done = 0usize;
    while done < out.len() {
        let at = offset + done as u64;
        let index = (at / block_size) as u32;
        let within = at % block_size;
        let n = (block_size - within).min((out.len() - done) as u64) as usize;
        let chunk = &mut out[done..done + n];
        match layer.block_state(index) {
            BlockState::Unallocated if differencing => fill(below, at, chunk),
            BlockState::Unallocated => chunk.fill(0),
            BlockState::Full { data_offset } => layer.copy_out(data_offset + within, chunk),
            BlockState::Partial {
                bitmap,
                data_offset,
            } => {
                let first = (within / SECTOR_SIZE) as u32;
                let last = (within + n as u64).div_ceil(SECTOR_SIZE) as u32;
                for run in bitmap::runs(bitmap, first..last) {
                    let from = (u64::from(run.start) * SECTOR_SIZE).max(within);
                    let to = (u64::from(run.start + run.len) * SECTOR_SIZE).min(within + n as u64);
                    let piece = &mut chunk[(from - within) as usize..(to - within) as usize];
                    if run.present {
                        layer.copy_out(data_offset + from, piece);
                    } else if differencing {
                        fill(below, index as u64 * block_size + from, piece);
                    } else {
                        piece.fill(0);
                    }
                }
            }
        }
        done += n;
    }
}
