//! Export: the VHD stream of a snapshot chain, whole or as a delta against a base chain, as
//! `GET /export_raw_vdi?format=vhd[&base=]` sends it. The I/O half of the encoder: it reads
//! block data from the chain's memory maps and hands the encoder zero-copy slices.

use bytes::{Bytes, BytesMut};
use uuid::Uuid;

use super::StreamError;
use super::encode::{EncodeParams, ParentInfo, StreamEncoder};
use crate::image::{BlockData, Chain, changed};
use crate::vhd::{BlockSet, VhdTimestamp};

/// A ready-to-send export: the exact length is known before the first byte.
pub struct ChainExport {
    chain: Chain,
    encoder: StreamEncoder,
    blocks: BlockSet,
}

impl ChainExport {
    /// The stream of `leaf`'s content: every block allocated anywhere in its chain, or with
    /// `base`, a differencing disk of the blocks [`changed`] between the two. `unique_id` and
    /// `timestamp` go into the stream's footer.
    pub fn new(
        leaf: Chain,
        base: Option<&Chain>,
        unique_id: Uuid,
        timestamp: VhdTimestamp,
    ) -> Result<ChainExport, StreamError> {
        let blocks = changed(&leaf, base);
        let mut params = EncodeParams::new(leaf.virtual_size(), unique_id, timestamp, blocks);
        params.block_size = leaf.block_size();
        params.parent = base.map(|base| {
            let footer = base.leaf().footer();
            ParentInfo {
                unique_id: footer.unique_id,
                timestamp: footer.timestamp,
                name: base
                    .leaf()
                    .path()
                    .file_name()
                    .map(|name| name.to_string_lossy().into_owned())
                    .unwrap_or_default(),
            }
        });
        let blocks = params.blocks.clone();
        let encoder = StreamEncoder::new(params)?;
        Ok(ChainExport {
            chain: leaf,
            encoder,
            blocks,
        })
    }

    /// The stream's exact length in bytes.
    pub fn total_len(&self) -> u64 {
        self.encoder.total_len()
    }

    /// The blocks the stream carries.
    pub fn blocks(&self) -> &BlockSet {
        &self.blocks
    }

    /// Every frame of the stream in order. Whole blocks held by one layer are slices of its
    /// memory map; only mixed, zero and short last blocks are assembled in a fresh buffer, one
    /// block at a time, so memory stays at about one block whatever the disk size.
    pub fn frames(self) -> impl Iterator<Item = Result<Bytes, StreamError>> + Send {
        let block_size = self.encoder.block_size() as usize;
        let chain = self.chain;
        let zeros = Bytes::from(vec![0u8; block_size]);
        self.encoder
            .into_frames(move |index| -> Result<Bytes, StreamError> {
                Ok(match chain.block_data(index) {
                    BlockData::Zero => zeros.clone(),
                    BlockData::Data(data) if data.len() == block_size => data,
                    // The short last block of a disk whose size is not a block multiple: the
                    // stream always carries whole blocks.
                    BlockData::Data(data) => {
                        let mut whole = BytesMut::zeroed(block_size);
                        whole[..data.len()].copy_from_slice(&data);
                        whole.freeze()
                    }
                })
            })
    }
}
