//! Export: the whole VHD stream of a snapshot chain, or its delta against a base chain, as
//! `GET /export_raw_vdi?format=vhd[&base=]` sends it: [`source`](super::source)'s parameters
//! and zero-copy blocks fed through the encoder.

use bytes::Bytes;
use uuid::Uuid;

use super::StreamError;
use super::encode::StreamEncoder;
use super::source::{ChainSource, export_params};
use crate::image::Chain;
use crate::vhd::{BlockSet, VhdTimestamp};

/// A ready-to-send export: the exact length is known before the first byte.
pub struct ChainExport {
    source: ChainSource,
    encoder: StreamEncoder,
    blocks: BlockSet,
}

impl ChainExport {
    /// The stream of `leaf`'s content: every block allocated anywhere in its chain, or with
    /// `base`, a differencing disk of the blocks that changed between the two. `unique_id`
    /// and `timestamp` go into the stream's footer.
    pub fn new(
        leaf: Chain,
        base: Option<&Chain>,
        unique_id: Uuid,
        timestamp: VhdTimestamp,
    ) -> Result<ChainExport, StreamError> {
        let mut params = export_params(&leaf, base);
        params.unique_id = unique_id;
        params.timestamp = timestamp;
        let blocks = params.blocks.clone();
        Ok(ChainExport {
            source: ChainSource::new(leaf),
            encoder: StreamEncoder::new(params)?,
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

    /// Every frame of the stream in order. Memory stays at about one block whatever the disk
    /// size: whole blocks are slices of the memory maps, others are assembled one at a time.
    pub fn frames(self) -> impl Iterator<Item = Result<Bytes, StreamError>> + Send {
        let source = self.source;
        self.encoder
            .into_frames(move |index| Ok::<_, StreamError>(source.stream_block(index)))
    }
}
