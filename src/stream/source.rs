//! Streams of VHD chains on disk, as XAPI exports them (`GET /export_raw_vdi`): the
//! parameters of a chain's VHD stream, and the chain's blocks as zero-copy frames. Shared by
//! `vhdsync export` and the lab host's export. Floor 2: reads image files.

use std::time::SystemTime;

use bytes::{Bytes, BytesMut};

use super::{EncodeParams, ParentInfo};
use crate::image::{BlockData, Chain, changed};
use crate::vhd::VhdTimestamp;

/// The stream of `leaf`'s chain: every block allocated anywhere in it, or with `base`, the
/// blocks that differ from the base's chain, as a differencing disk whose parent is the
/// base's leaf (XAPI's `base=` semantics, protocol reference §1.2.3).
pub fn export_params(leaf: &Chain, base: Option<&Chain>) -> EncodeParams {
    let mut params = EncodeParams::new(
        leaf.virtual_size(),
        uuid::Uuid::new_v4(),
        VhdTimestamp::from_system_time(SystemTime::now()),
        changed(leaf, base),
    );
    params.block_size = leaf.block_size();
    params.parent = base.map(|b| ParentInfo {
        unique_id: b.leaf().footer().unique_id,
        timestamp: b.leaf().footer().timestamp,
        name: b
            .leaf()
            .path()
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
    });
    params
}

/// A chain's guest content, block by block, as `Bytes` that are slices of the memory-mapped
/// files wherever one layer holds a whole block.
pub struct ChainSource {
    chain: Chain,
    /// One block of zeros, shared by every unallocated block.
    zeros: Bytes,
}

impl ChainSource {
    pub fn new(chain: Chain) -> ChainSource {
        let zeros = Bytes::from(vec![0u8; chain.block_size() as usize]);
        ChainSource { chain, zeros }
    }

    pub fn chain(&self) -> &Chain {
        &self.chain
    }

    /// The guest bytes of block `index`: a whole block, or less for a short last block.
    pub fn guest_block(&self, index: u32) -> Bytes {
        match self.chain.block_data(index) {
            BlockData::Data(data) => data,
            BlockData::Zero => self.zeros(self.chain.leaf().block_len(index) as usize),
        }
    }

    /// Block `index` as a VHD stream carries it: exactly one block, a short last block padded
    /// with zeros.
    pub fn stream_block(&self, index: u32) -> Bytes {
        let block_size = self.zeros.len();
        let data = self.guest_block(index);
        if data.len() == block_size {
            return data;
        }
        let mut full = BytesMut::zeroed(block_size);
        full[..data.len()].copy_from_slice(&data);
        full.freeze()
    }

    /// `len` zero bytes (at most a block), without allocating.
    pub fn zeros(&self, len: usize) -> Bytes {
        self.zeros.slice(..len.min(self.zeros.len()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::{CreateOptions, VhdWriter, create};

    #[test]
    fn blocks_come_whole_for_streams_and_exact_for_guests() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk.vhd");
        let size = (2 << 20) + 4096;
        create(&path, &CreateOptions::dynamic(size)).unwrap();
        let mut writer = VhdWriter::open(&path).unwrap();
        writer.write_sectors(2 << 20, &[7u8; 512]).unwrap();
        writer.flush().unwrap();
        let source = ChainSource::new(Chain::open(&path).unwrap());

        assert_eq!(source.guest_block(0).len(), 2 << 20);
        assert!(source.guest_block(0).iter().all(|&b| b == 0));
        let last = source.guest_block(1);
        assert_eq!(last.len(), 4096);
        assert_eq!(&last[..512], &[7u8; 512][..]);
        let padded = source.stream_block(1);
        assert_eq!(padded.len(), 2 << 20);
        assert_eq!(&padded[..4096], &last[..]);
        assert!(padded[4096..].iter().all(|&b| b == 0));

        let params = export_params(source.chain(), None);
        assert_eq!(params.blocks.iter().collect::<Vec<_>>(), vec![1]);
        assert!(params.parent.is_none());
    }
}
