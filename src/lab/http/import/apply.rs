//! Writing an import's body onto the staging copy of the VDI's leaf.
//!
//! * `vhd`: the stream is decoded forward only as it arrives, and each block's present
//!   sectors (per its bitmap) are written, as xapi's import does; blocks absent from the BAT
//!   and sectors whose bit is clear stay as they were. The import ends at the final footer.
//! * `raw`: the bytes are the disk from offset 0, written block by block. A block of zeros
//!   over a block no layer of the VDI allocates is skipped: its content is already zeros, and
//!   writing it would only allocate space (vhd-tool skips them too on prezeroed targets).
//!
//! Either way the import tells its [`ImportGuard`] what it wrote, for the VDI's change log.

use std::path::PathBuf;

use bytes::BytesMut;
use tokio_util::codec::Decoder;
use uuid::Uuid;

use super::super::transfer::{TaskProgress, io_error};
use super::pump::BodyReader;
use super::too_small;
use crate::image::{Chain, changed};
use crate::lab::sr::ImportGuard;
use crate::stream::apply::{ApplyError, ApplyTarget, VhdTarget};
use crate::stream::{StreamDecoder, StreamEvent};
use crate::vhd::header::bitmap_size;
use crate::vhd::{BlockSet, SECTOR_SIZE, bitmap as sector_bitmap};
use crate::xapi::rpc::XapiFault;

/// What both formats need to know about the import.
pub(super) struct Context<'a> {
    /// The VDI's reference, for XAPI errors.
    pub vdi: &'a str,
    pub uuid: Uuid,
    /// The body's declared length.
    pub length: u64,
    /// The staging copy to write.
    pub target: PathBuf,
}

impl Context<'_> {
    /// The staging copy, whose pages are written back and dropped as the import goes (see
    /// `image::Writeback`): the disk writes overlap the transfer, and the closing fdatasync
    /// waits only for the tail.
    fn open_target(&self) -> Result<VhdTarget, XapiFault> {
        VhdTarget::open(&self.target, None).map_err(|e| self.write_error(e))
    }

    fn write_error(&self, e: ApplyError) -> XapiFault {
        io_error(format!("VDI {}: writing the import: {e}", self.uuid))
    }

    fn progress(&self, done: u64) -> f64 {
        done as f64 / self.length.max(1) as f64
    }
}

pub(super) fn vhd(
    import: &Context,
    guard: &mut ImportGuard,
    body: &mut BodyReader,
    progress: &mut TaskProgress,
) -> Result<(), XapiFault> {
    let mut decoder = StreamDecoder::new();
    let mut buffer = BytesMut::new();
    let mut target: Option<VhdTarget> = None;
    let mut block_size = 0u64;
    let mut ended = false;
    let malformed = |e: &dyn std::fmt::Display| {
        io_error(format!(
            "VDI {}: the VHD stream is malformed: {e}",
            import.uuid
        ))
    };
    loop {
        let event = if ended {
            decoder.decode_eof(&mut buffer)
        } else {
            decoder.decode(&mut buffer)
        }
        .map_err(|e| malformed(&e))?;
        match event {
            Some(StreamEvent::Footer(footer)) => {
                let opened = import.open_target()?;
                if opened.virtual_size() < footer.current_size {
                    return Err(too_small(import.vdi, footer.current_size));
                }
                target = Some(opened);
            }
            Some(StreamEvent::Header(header)) => block_size = u64::from(header.block_size),
            Some(StreamEvent::Block {
                index,
                bitmap,
                data,
            }) => {
                // The decoder emits blocks only after the footer and header.
                if let Some(target) = target.as_mut() {
                    let offset = u64::from(index) * block_size;
                    target
                        .write_block(offset, &bitmap, &data)
                        .map_err(|e| import.write_error(e))?;
                    let sectors = (data.len() as u64).div_ceil(SECTOR_SIZE) as u32;
                    for run in sector_bitmap::runs(&bitmap, 0..sectors).filter(|r| r.present) {
                        let at = offset + u64::from(run.start) * SECTOR_SIZE;
                        guard.mark_written(at, u64::from(run.len) * SECTOR_SIZE);
                    }
                }
                progress.update(import.progress(decoder.position()))?;
            }
            Some(StreamEvent::End(_)) => break,
            Some(_) => {}
            // decode_eof reports a stream cut short itself; this is only a safety net.
            None if ended => {
                return Err(malformed(&"the body ended before the final footer"));
            }
            None => match body.next()? {
                Some(bytes) => buffer.extend_from_slice(&bytes),
                None => ended = true,
            },
        }
    }
    match target.as_mut() {
        Some(target) => target.finish().map_err(|e| import.write_error(e)),
        None => Ok(()),
    }
}

pub(super) fn raw(
    import: &Context,
    guard: &mut ImportGuard,
    before: &Chain,
    body: &mut BodyReader,
    progress: &mut TaskProgress,
) -> Result<(), XapiFault> {
    let mut writer = RawWriter {
        guard,
        target: import.open_target()?,
        allocated: changed(before, None),
        present: vec![0xFF; bitmap_size(before.block_size()) as usize],
        block_size: u64::from(before.block_size()),
    };
    let block_size = before.block_size() as usize;
    let mut block = BytesMut::with_capacity(block_size);
    let mut offset = 0u64;
    while let Some(mut bytes) = body.next()? {
        while !bytes.is_empty() {
            let n = (block_size - block.len()).min(bytes.len());
            block.extend_from_slice(&bytes.split_to(n));
            if block.len() == block_size {
                writer
                    .write(&block, offset)
                    .map_err(|e| import.write_error(e))?;
                offset += block_size as u64;
                block.clear();
                progress.update(import.progress(offset))?;
            }
        }
    }
    if !block.is_empty() {
        // Sectors are written whole: keep what the guest sees after the body's last byte.
        let tail_at = block.len();
        block.resize(tail_at.next_multiple_of(SECTOR_SIZE as usize), 0);
        before.read_at(offset + tail_at as u64, &mut block[tail_at..]);
        writer
            .write(&block, offset)
            .map_err(|e| import.write_error(e))?;
    }
    writer.target.finish().map_err(|e| import.write_error(e))
}

/// Writes raw blocks, skipping zeros where the VDI holds nothing.
struct RawWriter<'a> {
    guard: &'a mut ImportGuard,
    target: VhdTarget,
    /// Blocks some layer of the VDI allocates.
    allocated: BlockSet,
    /// A bitmap with every sector present.
    present: Vec<u8>,
    block_size: u64,
}

impl RawWriter<'_> {
    /// Write `data`, at most one block, at the block boundary `offset`.
    fn write(&mut self, data: &[u8], offset: u64) -> Result<(), ApplyError> {
        let index = (offset / self.block_size) as u32;
        if !self.allocated.contains(index) && data.iter().all(|&b| b == 0) {
            return Ok(());
        }
        self.target.write_block(offset, &self.present, data)?;
        self.guard.mark_written(offset, data.len() as u64);
        Ok(())
    }
}
