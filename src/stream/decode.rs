//! Decoding: stream bytes in, validated events out, in the shape of tokio-util's [`Decoder`]
//! (`Ok(None)` = need more bytes; a stream cut short is an error at EOF).
//!
//! Read forward only, as XAPI's import reads: footer copy, header at `footer.data_offset`,
//! then the locator payloads, BAT, batmap and blocks in physical order, then the final footer
//! right after the furthest structure. Any streamable layout is accepted: XAPI's (BAT at
//! 2048), qemu's and Xen Orchestra's (BAT at 1536, blocks right after), blktap's (batmap and
//! locators between BAT and blocks), gaps anywhere. What a forward-only reader cannot follow
//! is an error: structures before the header's end, blocks before the BAT's end, overlaps.
//!
//! Oversized BATs: entries at or past `ceil(current_size / block_size)` are ignored, as
//! vhd-tool and qemu ignore them; their bytes, if any, are stepped over as gaps.
//!
//! Memory: at most one block plus the BAT is buffered. Gaps are stepped over as they arrive,
//! never accumulated, and block bitmaps and data are split off the input without copying.

use bytes::{Buf, Bytes, BytesMut};
use tokio_util::codec::Decoder;

use super::StreamError;
use super::layout::{Plan, Region, RegionKind, within_reach};
use crate::vhd::{
    Bat, DynamicHeader, ErrorKind, FOOTER_SIZE, Footer, FormatError, HEADER_SIZE, SECTOR_SIZE,
    Structure, batmap::BatmapHeader,
};

/// The most a single `reserve` hint asks for: one 2 MiB block and its bitmap. A BAT claiming
/// more grows the buffer only as its bytes really arrive.
const MAX_RESERVE_HINT: usize = crate::vhd::DEFAULT_BLOCK_SIZE as usize + SECTOR_SIZE as usize;

/// What the decoder found, in stream order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamEvent {
    /// The footer copy at offset 0.
    Footer(Footer),
    Header(DynamicHeader),
    /// The payload of parent locator entry `index` (its entry is in the header).
    Locator {
        index: u8,
        payload: Bytes,
    },
    /// The whole table, oversized entries included; only the first
    /// `ceil(current_size / block_size)` entries are read as blocks.
    Bat(Bat),
    /// blktap's batmap: a set bit means the block's sector bitmap is all ones. Only a hint;
    /// `map` is unverified (see [`BatmapHeader::verify`]).
    Batmap {
        header: BatmapHeader,
        map: Bytes,
    },
    /// One block: its sector bitmap and all `block_size` data bytes, whatever the bitmap says.
    Block {
        index: u32,
        bitmap: Bytes,
        data: Bytes,
    },
    /// The final footer, byte-identical to the copy at offset 0.
    End(Footer),
}

/// A sans-IO, forward-only VHD stream decoder. See the module documentation.
#[derive(Debug, Default)]
pub struct StreamDecoder {
    stage: Stage,
    progress: Progress,
}

impl StreamDecoder {
    pub fn new() -> StreamDecoder {
        StreamDecoder::default()
    }

    /// A decoder that validates a stream without keeping its block data: its `Block` events
    /// carry the bitmap and empty `data`, and the data bytes may be [`skip`](Self::skip)ped
    /// instead of passing through the buffer. For relays, which forward the bytes elsewhere
    /// and only need the structure checked.
    pub fn validating() -> StreamDecoder {
        let mut decoder = StreamDecoder::default();
        decoder.progress.discard_data = true;
        decoder
    }

    /// With an empty buffer: how many of the next stream bytes the decoder has no use for
    /// (the data of the block just announced, in a [`validating`](Self::validating) decoder).
    pub fn skippable(&self) -> u64 {
        self.progress
            .skip_until
            .saturating_sub(self.progress.position)
    }

    /// Account for `n` stream bytes the caller did not hand over; at most
    /// [`skippable`](Self::skippable). Returns how many were skipped.
    pub fn skip(&mut self, n: u64) -> u64 {
        let n = n.min(self.skippable());
        self.progress.position += n;
        n
    }

    /// The exact stream length, known once the BAT has been read.
    pub fn total_len(&self) -> Option<u64> {
        self.progress.total_len
    }

    /// Bytes consumed so far: the stream offset of the next byte to decode.
    pub fn position(&self) -> u64 {
        self.progress.position
    }

    pub fn blocks_seen(&self) -> u32 {
        self.progress.blocks_seen
    }

    /// The blocks the BAT announces, once it has been read.
    pub fn blocks_expected(&self) -> Option<u32> {
        self.progress.blocks_expected
    }

    /// After `decode` answered `Ok(None)` with `buffered` bytes left in its buffer: how many
    /// more bytes complete the structure it awaits. A reader that supplies no more than this
    /// leaves the buffer empty at each structure's end, so nothing is ever moved within it.
    pub fn bytes_wanted(&self, buffered: usize) -> u64 {
        let awaited = self.progress.awaiting.end;
        awaited
            .saturating_sub(self.progress.position)
            .saturating_sub(buffered as u64)
            .max(1)
    }

    fn step(&mut self, src: &mut BytesMut) -> Result<Option<StreamEvent>, StreamError> {
        let progress = &mut self.progress;
        loop {
            match &mut self.stage {
                Stage::FooterCopy => {
                    if !progress.reach(src, 0, FOOTER_SIZE, Structure::Footer) {
                        return Ok(None);
                    }
                    let copy = FooterCopy::parse(&src[..FOOTER_SIZE])?;
                    progress.consume(src, FOOTER_SIZE);
                    let event = StreamEvent::Footer(copy.footer.clone());
                    self.stage = Stage::Header(Box::new(copy));
                    return Ok(Some(event));
                }
                Stage::Header(copy) => {
                    let at = copy.footer.data_offset;
                    if !progress.reach(src, at, HEADER_SIZE, Structure::Header) {
                        return Ok(None);
                    }
                    let header = DynamicHeader::parse(&src[..HEADER_SIZE], at)?;
                    let body = Body::new((**copy).clone(), at, &header)?;
                    progress.consume(src, HEADER_SIZE);
                    self.stage = Stage::Body(Box::new(body));
                    return Ok(Some(StreamEvent::Header(header)));
                }
                Stage::Body(body) => {
                    let Some(region) = body.plan.peek() else {
                        self.stage = Stage::Done;
                        continue;
                    };
                    return body.visit(region, src, progress);
                }
                Stage::Done if src.is_empty() => return Ok(None),
                Stage::Done => {
                    return Err(StreamError::TrailingData {
                        offset: progress.position,
                    });
                }
                Stage::Failed { at } => return Err(StreamError::AfterFailure { offset: *at }),
            }
        }
    }

    fn fail(&mut self, error: StreamError) -> StreamError {
        self.stage = Stage::Failed {
            at: error.offset().unwrap_or(self.progress.position),
        };
        error
    }
}

impl Decoder for StreamDecoder {
    type Item = StreamEvent;
    type Error = StreamError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<StreamEvent>, StreamError> {
        self.step(src).map_err(|e| self.fail(e))
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<StreamEvent>, StreamError> {
        if let Some(event) = self.decode(src)? {
            return Ok(Some(event));
        }
        if matches!(self.stage, Stage::Done) {
            return Ok(None);
        }
        let awaiting = self.progress.awaiting;
        let truncated = StreamError::Truncated {
            reading: awaiting.reading,
            expected: self.progress.total_len.unwrap_or(awaiting.end),
            exact: self.progress.total_len.is_some(),
            received: self.progress.position + src.len() as u64,
        };
        Err(self.fail(truncated))
    }
}

#[derive(Debug, Default)]
enum Stage {
    #[default]
    FooterCopy,
    Header(Box<FooterCopy>),
    /// Everything after the header, the final footer included.
    Body(Box<Body>),
    Done,
    Failed {
        at: u64,
    },
}

/// The footer at offset 0, parsed and as bytes, for the final footer to match.
#[derive(Debug, Clone)]
struct FooterCopy {
    footer: Footer,
    bytes: [u8; FOOTER_SIZE],
}

impl FooterCopy {
    fn parse(sector: &[u8]) -> Result<FooterCopy, StreamError> {
        let (footer, _) = Footer::parse(sector, 0)?;
        if !footer.disk_type.is_sparse() {
            return Err(FormatError::new(
                ErrorKind::BadValue,
                Structure::Footer,
                "disk_type",
                60,
                "2 (fixed)",
                "3 (dynamic) or 4 (differencing): a stream carries a sparse disk",
            )
            .into());
        }
        let header_at = footer.data_offset;
        within_reach(header_at, Structure::Footer, "data_offset", 16)?;
        if header_at < FOOTER_SIZE as u64 {
            return Err(StreamError::Backward {
                structure: Structure::Header,
                offset: header_at,
                earlier: Structure::Footer,
                earlier_end: FOOTER_SIZE as u64,
            });
        }
        let mut bytes = [0u8; FOOTER_SIZE];
        bytes.copy_from_slice(sector);
        Ok(FooterCopy { footer, bytes })
    }

    /// Checks the final footer at `at` is byte-identical to this copy.
    fn check_final(&self, sector: &[u8], at: u64) -> Result<(), StreamError> {
        let Some(first_difference) = sector.iter().zip(&self.bytes).position(|(a, b)| a != b)
        else {
            return Ok(());
        };
        let checksum = |b: &[u8]| u32::from_be_bytes([b[64], b[65], b[66], b[67]]);
        let uuid = |b: &[u8]| uuid::Uuid::from_slice(&b[68..84]).unwrap_or_default();
        Err(StreamError::FooterMismatch {
            offset: at,
            first_difference: at + first_difference as u64,
            end_checksum: checksum(sector),
            copy_checksum: checksum(&self.bytes),
            end_uuid: uuid(sector),
            copy_uuid: uuid(&self.bytes),
        })
    }
}

/// What the header and BAT say about the rest of the stream.
#[derive(Debug)]
struct Body {
    copy: FooterCopy,
    plan: Plan,
    bat_entries: u32,
    /// BAT entries that describe the disk: `ceil(current_size / block_size)`.
    block_limit: u32,
    block_size: u32,
    bitmap_size: u64,
    /// blktap may put a batmap right after the BAT.
    blktap: bool,
}

impl Body {
    fn new(copy: FooterCopy, header_at: u64, header: &DynamicHeader) -> Result<Body, StreamError> {
        let needed = header.blocks_for(copy.footer.current_size);
        if needed > u64::from(header.max_table_entries) {
            return Err(FormatError::new(
                ErrorKind::BadValue,
                Structure::Header,
                "max_table_entries",
                header_at + 28,
                header.max_table_entries,
                format_args!(
                    "at least {needed} = ceil(current_size {} / block_size {})",
                    copy.footer.current_size, header.block_size
                ),
            )
            .into());
        }
        Ok(Body {
            plan: Plan::after_header(header_at, header)?,
            bat_entries: header.max_table_entries,
            block_limit: needed as u32,
            block_size: header.block_size,
            bitmap_size: header.bitmap_size(),
            blktap: copy.footer.is_blktap(),
            copy,
        })
    }

    fn block_span(&self) -> u64 {
        self.bitmap_size + u64::from(self.block_size)
    }

    fn visit(
        &mut self,
        region: Region,
        src: &mut BytesMut,
        progress: &mut Progress,
    ) -> Result<Option<StreamEvent>, StreamError> {
        let len = (region.end - region.start) as usize;
        let (reading, need) = match region.kind {
            RegionKind::Bat => (Structure::Bat, self.bat_look_len(region)),
            RegionKind::Locator(i) => (Structure::ParentLocator(i), len),
            RegionKind::Batmap(_) => (Structure::Batmap, len),
            RegionKind::Block(i) if progress.discard_data => {
                (Structure::Block(i), self.bitmap_size as usize)
            }
            RegionKind::Block(i) => (Structure::Block(i), len),
            RegionKind::FinalFooter => (Structure::Footer, len),
        };
        if !progress.reach(src, region.start, need, reading) {
            return Ok(None);
        }
        let event = match region.kind {
            RegionKind::Bat => self.read_bat(region, src, progress)?,
            RegionKind::Locator(index) => StreamEvent::Locator {
                index,
                payload: progress.take(src, len),
            },
            RegionKind::Batmap(header) => StreamEvent::Batmap {
                header,
                map: progress.take(src, len),
            },
            RegionKind::Block(index) => {
                let bitmap = progress.take(src, self.bitmap_size as usize);
                let data = if progress.discard_data {
                    // The data is a gap now: stepped over in the buffer, or skipped.
                    progress.skip_until = region.end;
                    Bytes::new()
                } else {
                    progress.take(src, self.block_size as usize)
                };
                progress.blocks_seen += 1;
                StreamEvent::Block {
                    index,
                    bitmap,
                    data,
                }
            }
            RegionKind::FinalFooter => {
                self.copy.check_final(&src[..len], region.start)?;
                progress.consume(src, len);
                StreamEvent::End(self.copy.footer.clone())
            }
        };
        self.plan.advance();
        Ok(Some(event))
    }

    /// Bytes to have in hand before reading the BAT. A blktap batmap would start at the
    /// BAT's end and change where the stream ends, so for blktap look one sector further
    /// before announcing the length. A valid stream always has that sector: the batmap, a
    /// locator, a block, or at least the final footer.
    fn bat_look_len(&self, bat: Region) -> usize {
        let table_len = self.bat_entries as usize * 4;
        if self.blktap {
            (bat.end - bat.start) as usize + SECTOR_SIZE as usize
        } else {
            table_len
        }
    }

    /// Reads the BAT, lays out the blocks, and so learns the stream's exact length.
    fn read_bat(
        &mut self,
        bat_region: Region,
        src: &mut BytesMut,
        progress: &mut Progress,
    ) -> Result<StreamEvent, StreamError> {
        let table_len = self.bat_entries as usize * 4;
        let bat = Bat::parse(&src[..table_len], self.bat_entries, bat_region.start)?;
        self.plan
            .add_blocks(&bat, self.block_limit, self.block_span())?;
        if self.blktap {
            let after = &src[(bat_region.end - bat_region.start) as usize..];
            if let Some(batmap) = BatmapHeader::parse(after, bat_region.end)? {
                self.plan.add_batmap(bat_region.end, batmap)?;
            }
        }
        progress.total_len = Some(self.plan.seal()?);
        progress.blocks_expected = Some(self.plan.allocated_blocks());
        progress.consume(src, table_len);
        Ok(StreamEvent::Bat(bat))
    }
}

/// Where the decoder stands in the stream.
#[derive(Debug, Default)]
struct Progress {
    position: u64,
    /// A validating decoder's: block data is not kept.
    discard_data: bool,
    /// The end of the block data being discarded.
    skip_until: u64,
    awaiting: Awaiting,
    total_len: Option<u64>,
    blocks_seen: u32,
    blocks_expected: Option<u32>,
}

/// The structure the decoder waits for and the offset it needs bytes up to, for the error
/// when the stream ends first.
#[derive(Debug, Clone, Copy)]
struct Awaiting {
    reading: Structure,
    end: u64,
}

impl Default for Awaiting {
    fn default() -> Awaiting {
        Awaiting {
            reading: Structure::Footer,
            end: FOOTER_SIZE as u64,
        }
    }
}

impl Progress {
    /// Steps over buffered bytes up to `start`, then says whether the `len` bytes from there
    /// are buffered. Bytes stepped over are dropped at once, never accumulated.
    fn reach(&mut self, src: &mut BytesMut, start: u64, len: usize, reading: Structure) -> bool {
        debug_assert!(self.position <= start, "the plan only moves forward");
        let gap = start.saturating_sub(self.position);
        let step = gap.min(src.len() as u64) as usize;
        self.consume(src, step);
        if self.position == start && src.len() >= len {
            return true;
        }
        self.awaiting = Awaiting {
            reading,
            end: start + len as u64,
        };
        if self.position == start {
            src.reserve((len - src.len()).min(MAX_RESERVE_HINT));
        }
        false
    }

    fn consume(&mut self, src: &mut BytesMut, len: usize) {
        src.advance(len);
        self.position += len as u64;
    }

    /// Splits `len` bytes off the input without copying them.
    fn take(&mut self, src: &mut BytesMut, len: usize) -> Bytes {
        self.position += len as u64;
        src.split_to(len).freeze()
    }
}

#[cfg(test)]
mod tests {
    use uuid::Uuid;

    use super::*;
    use crate::stream::EncodeParams;
    use crate::stream::test_support::{Layout, decode_in_chunks, encode_to_vec};
    use crate::vhd::{BlockSet, DiskType, VhdTimestamp, ones_complement_checksum};

    const SPAN: u64 = 512 + (2 << 20);

    /// 5 MiB, blocks 0 and 2: prelude 2560 bytes, blocks at 2560 and 2560 + SPAN.
    fn small_stream() -> Vec<u8> {
        let blocks = BlockSet::from_iter([0, 2]);
        let mut set = BlockSet::new(3);
        set.union_with(&blocks);
        encode_to_vec(EncodeParams::new(
            5 << 20,
            Uuid::from_u128(1),
            VhdTimestamp(0),
            set,
        ))
    }

    fn decode_error(stream: &[u8]) -> StreamError {
        match decode_in_chunks(stream, &[4096]).1 {
            Err(e) => e,
            Ok(events) => panic!("decoded {} events without error", events.len()),
        }
    }

    #[test]
    fn truncation_anywhere_is_an_error_at_eof() {
        let stream = small_stream();
        let total = stream.len() as u64;
        let cuts = [
            0,
            1,
            511,
            512,
            1000,
            1535,
            1536,
            2047,
            2048,
            2059,
            2060,
            2560,
            3072,
            4000,
            2560 + SPAN,
            2560 + 2 * SPAN,
            total - 1,
        ];
        for cut in cuts {
            let err = decode_error(&stream[..cut as usize]);
            let StreamError::Truncated {
                expected,
                exact,
                received,
                ..
            } = err
            else {
                panic!("cut at {cut}: {err}");
            };
            assert_eq!(received, cut, "cut at {cut}");
            // The length is known once the 12 bytes of the 3-entry BAT at 2048 are in.
            assert_eq!(exact, cut >= 2060, "cut at {cut}");
            if exact {
                assert_eq!(expected, total);
            } else {
                assert!(expected > cut, "cut at {cut}: expected {expected}");
            }
        }
    }

    #[test]
    fn a_flipped_checksum_byte_names_the_checksum_offset() {
        let mut stream = small_stream();
        stream[66] ^= 0x01;
        let err = decode_error(&stream);
        let StreamError::Format(e) = &err else {
            panic!("{err}")
        };
        assert_eq!(
            (e.kind, e.field, e.offset),
            (ErrorKind::BadChecksum, "checksum", 64)
        );

        let mut stream = small_stream();
        stream[512 + 38] ^= 0x80;
        let err = decode_error(&stream);
        assert_eq!(err.offset(), Some(512 + 36));
        assert!(err.to_string().contains("dynamic header checksum"), "{err}");
    }

    #[test]
    fn a_block_inside_the_metadata_is_refused() {
        let mut layout = Layout::new(4 << 20, 1536, 2);
        // Block 1's bitmap claimed at byte 1024, inside the header.
        layout.block(0, 2048, &[0xFF; 512], &[1; 2 << 20]);
        layout.bat.set(1, 2);
        let err = decode_error(&layout.finish());
        assert!(
            matches!(
                err,
                StreamError::BlockBeforeBat {
                    index: 1,
                    offset: 1024,
                    bat_end: 2048
                }
            ),
            "{err}"
        );
        assert_eq!(
            err.to_string(),
            "block 1 at byte 1024 precedes the BAT end at 2048; streams need blocks after the BAT"
        );
    }

    #[test]
    fn overlapping_blocks_are_refused() {
        let mut layout = Layout::new(4 << 20, 1536, 2);
        layout.block(0, 2048, &[0xFF; 512], &[1; 2 << 20]);
        layout.block(1, 2048 + 4096, &[0xFF; 512], &[2; 2 << 20]);
        let err = decode_error(&layout.finish());
        assert!(
            matches!(
                err,
                StreamError::Overlap {
                    second: Structure::Block(1),
                    offset: 6144,
                    first: Structure::Block(0),
                    first_start: 2048,
                    first_end,
                } if first_end == 2048 + SPAN
            ),
            "{err}"
        );
    }

    #[test]
    fn a_locator_overlapping_the_bat_is_refused() {
        let mut layout = Layout::new(4 << 20, 1536, 2);
        layout.header.parent_locators[0] = crate::vhd::ParentLocator {
            code: crate::vhd::PlatformCode::MACX,
            data_space: 512,
            data_length: 20,
            reserved: 0,
            data_offset: 1536 + 256,
        };
        let err = decode_error(&layout.finish());
        assert!(
            matches!(
                err,
                StreamError::Overlap {
                    second: Structure::ParentLocator(0),
                    first: Structure::Bat,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn structures_before_the_header_end_are_refused() {
        // The header at 2048, the BAT before it at 1536.
        let mut layout = Layout::new(4 << 20, 1536, 2);
        layout.footer.data_offset = 2048;
        let err = decode_error(&layout.finish());
        assert!(
            matches!(
                err,
                StreamError::Backward {
                    structure: Structure::Bat,
                    offset: 1536,
                    earlier: Structure::Header,
                    earlier_end: 3072
                }
            ),
            "{err}"
        );
        // A locator payload inside the header.
        let mut layout = Layout::new(4 << 20, 1536, 2);
        layout.header.parent_locators[3] = crate::vhd::ParentLocator {
            code: crate::vhd::PlatformCode::W2RU,
            data_space: 512,
            data_length: 20,
            reserved: 0,
            data_offset: 1024,
        };
        let err = decode_error(&layout.finish());
        assert!(
            matches!(
                err,
                StreamError::Backward {
                    structure: Structure::ParentLocator(3),
                    offset: 1024,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn a_final_footer_that_differs_names_both_checksums_and_uuids() {
        let mut stream = small_stream();
        let end = stream.len() - 512;
        let (mut footer, _) = Footer::parse(&stream[end..], end as u64).unwrap();
        footer.unique_id = Uuid::from_u128(2);
        stream[end..].copy_from_slice(&footer.encode());
        let err = decode_error(&stream);
        let StreamError::FooterMismatch {
            offset,
            first_difference,
            end_checksum,
            copy_checksum,
            end_uuid,
            copy_uuid,
        } = err
        else {
            panic!("{err}")
        };
        assert_eq!(offset, end as u64);
        assert!(
            (offset + 64..offset + 84).contains(&first_difference),
            "checksum or uuid"
        );
        assert_eq!(
            (end_uuid, copy_uuid),
            (Uuid::from_u128(2), Uuid::from_u128(1))
        );
        assert_eq!(end_checksum, ones_complement_checksum(&stream[end..], 64));
        assert_eq!(copy_checksum, ones_complement_checksum(&stream[..512], 64));
    }

    #[test]
    fn bytes_after_the_final_footer_are_trailing_data() {
        let mut stream = small_stream();
        let total = stream.len() as u64;
        stream.push(0);
        let err = decode_error(&stream);
        assert!(
            matches!(err, StreamError::TrailingData { offset } if offset == total),
            "{err}"
        );
    }

    #[test]
    fn a_fixed_disk_is_not_a_stream() {
        let footer = Footer::new(DiskType::Fixed, 1 << 20, Uuid::nil(), VhdTimestamp(0)).encode();
        let err = decode_error(&footer);
        let StreamError::Format(e) = &err else {
            panic!("{err}")
        };
        assert_eq!((e.field, e.offset), ("disk_type", 60));
    }

    #[test]
    fn a_bat_smaller_than_the_disk_is_refused() {
        let layout = Layout::new(5 << 20, 1536, 2);
        let err = decode_error(&layout.finish());
        let StreamError::Format(e) = &err else {
            panic!("{err}")
        };
        assert_eq!((e.field, e.offset), ("max_table_entries", 512 + 28));
    }

    #[test]
    fn absurd_claims_fail_fast_without_allocating() {
        // 2^32 - 1 BAT entries, or a 2 GiB block size: refused by the header alone.
        for (entries, block_size) in [(u32::MAX, 2 << 20), (1, 1 << 31)] {
            let mut layout = Layout::new(1 << 20, 1536, 1);
            layout.header.max_table_entries = entries;
            layout.header.block_size = block_size;
            let stream = layout.finish();
            let mut decoder = StreamDecoder::new();
            let mut buf = BytesMut::from(&stream[..1536]);
            assert!(decoder.decode(&mut buf).unwrap().is_some(), "the footer");
            let err = decoder.decode(&mut buf).unwrap_err();
            assert!(matches!(err, StreamError::Format(_)), "{err}");
            assert!(buf.capacity() < 4096);
        }
        // The largest legal BAT (16 Mi entries, 64 MiB) grows the buffer only as bytes arrive.
        let mut layout = Layout::new(1 << 20, 1536, 1);
        layout.header.max_table_entries = crate::vhd::MAX_BAT_ENTRIES;
        let stream = layout.finish();
        let mut decoder = StreamDecoder::new();
        let mut buf = BytesMut::from(&stream[..2048]);
        while decoder.decode(&mut buf).unwrap().is_some() {}
        assert!(buf.capacity() <= 4 << 20, "capacity {}", buf.capacity());
        let err = decoder.decode_eof(&mut buf).unwrap_err();
        assert!(
            matches!(err, StreamError::Truncated { reading: Structure::Bat, expected, exact: false, .. }
                if expected == 1536 + (64 << 20)),
            "{err}"
        );
    }

    #[test]
    fn a_failed_decoder_stays_failed() {
        let mut stream = small_stream();
        stream[0] = b'C';
        let mut decoder = StreamDecoder::new();
        let mut buf = BytesMut::from(&stream[..]);
        assert!(decoder.decode(&mut buf).is_err());
        let err = decoder.decode(&mut buf).unwrap_err();
        assert!(
            matches!(err, StreamError::AfterFailure { offset: 0 }),
            "{err}"
        );
    }

    #[test]
    fn blocks_are_split_off_the_input_without_copying() {
        let stream = small_stream();
        let mut decoder = StreamDecoder::new();
        let mut buf = BytesMut::from(&stream[..]);
        let base = buf.as_ptr() as usize;
        let mut data_at = Vec::new();
        while let Some(event) = decoder.decode(&mut buf).unwrap() {
            if let StreamEvent::Block { data, .. } = event {
                data_at.push(data.as_ptr() as usize - base);
            }
        }
        assert_eq!(data_at, vec![3072, 3072 + SPAN as usize]);
    }
}
