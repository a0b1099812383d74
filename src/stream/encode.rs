//! Encoding: a block source and a [`BlockSet`] become a VHD stream laid out exactly as XAPI's
//! export lays it out (vhd-tool, `xapi-protocol.md` §1.2.1), with the total length known
//! before the first byte:
//!
//! | offset | content |
//! |---|---|
//! | 0 | footer copy |
//! | 512 | dynamic header, BAT at 2048 |
//! | 1536 | one sector: zeros, or the `MacX` parent locator payload of a differencing stream |
//! | 2048 | BAT, `0xFF`-padded to a sector |
//! | after the BAT | the included blocks in ascending index: all-ones bitmap, whole block data |
//! | end | the footer again, byte-identical |
//!
//! Block data passes through untouched, so callers can hand in slices of memory-mapped files.

use bytes::{BufMut, Bytes, BytesMut};
use uuid::Uuid;

use super::StreamError;
use crate::vhd::{
    self, Bat, BlockSet, DiskType, DynamicHeader, FOOTER_SIZE, Footer, HEADER_SIZE, ParentLocator,
    PlatformCode, SECTOR_SIZE, VhdTimestamp, round_up_to_sector,
};

/// Where XAPI's export puts the BAT: after the header and one spare sector.
pub const TABLE_OFFSET: u64 = 2048;
/// The spare sector between the header and the BAT, holding the parent locator payload.
pub const LOCATOR_OFFSET: u64 = (FOOTER_SIZE + HEADER_SIZE) as u64;
/// The parent locator payload has the one spare sector to itself.
const LOCATOR_SPACE: u32 = SECTOR_SIZE as u32;
/// The parent name field of the header holds this many UTF-16 units.
const PARENT_NAME_UNITS: usize = 256;

/// Sector bitmaps are at most one sector for every legal block size (2 MiB = 4096 sectors =
/// 512 bytes of bits), so one static all-ones sector serves every block of every stream.
static ALL_ONES_BITMAP: [u8; SECTOR_SIZE as usize] = [0xFF; SECTOR_SIZE as usize];

/// What makes a differencing stream differencing: the disk it applies on top of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParentInfo {
    /// The parent's footer unique id.
    pub unique_id: Uuid,
    /// The parent's time stamp (its footer time stamp or file mtime).
    pub timestamp: VhdTimestamp,
    /// The parent's name or path relative to the child, e.g. `base.vhd`.
    pub name: String,
}

/// Everything a stream's metadata is made of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodeParams {
    pub virtual_size: u64,
    pub block_size: u32,
    /// The footer unique id of the stream's disk.
    pub unique_id: Uuid,
    /// The footer time stamp: the caller's "now", as this module reads no clock.
    pub timestamp: VhdTimestamp,
    /// The blocks the stream carries; all must lie below `ceil(virtual_size / block_size)`.
    pub blocks: BlockSet,
    /// `Some` for a differencing stream.
    pub parent: Option<ParentInfo>,
}

impl EncodeParams {
    /// A dynamic stream with 2 MiB blocks.
    pub fn new(
        virtual_size: u64,
        unique_id: Uuid,
        timestamp: VhdTimestamp,
        blocks: BlockSet,
    ) -> EncodeParams {
        EncodeParams {
            virtual_size,
            block_size: vhd::DEFAULT_BLOCK_SIZE,
            unique_id,
            timestamp,
            blocks,
            parent: None,
        }
    }
}

/// A sans-IO VHD stream encoder. Send [`prelude`](Self::prelude), then for each index of
/// [`included_blocks`](Self::included_blocks) the two [`block_frames`](Self::block_frames),
/// then the [`trailer`](Self::trailer); [`into_frames`](Self::into_frames) does all of that.
#[derive(Debug)]
pub struct StreamEncoder {
    prelude: Bytes,
    footer: Bytes,
    blocks: BlockSet,
    block_size: u32,
    bitmap: Bytes,
    /// Byte offset of the first block, right after the BAT.
    blocks_start: u64,
    /// Bytes per block in the stream: bitmap plus data.
    block_span: u64,
    included: u32,
    given: u32,
    /// The block [`Self::block_frames`] accepts next; `None` once all were given.
    next: Option<u32>,
    total_len: u64,
}

impl StreamEncoder {
    pub fn new(params: EncodeParams) -> Result<StreamEncoder, StreamError> {
        let entries = check_geometry(&params)?;
        let bitmap_len = vhd::header::bitmap_size(params.block_size);
        let block_span = bitmap_len + u64::from(params.block_size);
        let bat_bytes = round_up_to_sector(u64::from(entries) * 4);
        let blocks_start = TABLE_OFFSET + bat_bytes;
        let included = params.blocks.count();
        // Sector offsets are u32 and 0xFFFFFFFF means "unallocated": the last block must fit.
        let last_sector =
            (blocks_start + u64::from(included.saturating_sub(1)) * block_span) / SECTOR_SIZE;
        if last_sector >= u64::from(vhd::bat::UNALLOCATED) {
            return Err(StreamError::invalid_param(
                "blocks",
                format_args!("{included} blocks of {block_span} bytes"),
                "blocks whose sector offsets fit the BAT's 32 bits (under 2 TiB of stream)",
            ));
        }

        let mut bat = Bat::unallocated(entries);
        for (k, index) in params.blocks.iter().enumerate() {
            let offset = blocks_start + k as u64 * block_span;
            bat.set(index, (offset / SECTOR_SIZE) as u32);
        }
        let (footer, header, locator_payload) = metadata(&params, entries)?;
        let footer = Bytes::copy_from_slice(&footer.encode());

        let mut prelude = BytesMut::with_capacity(blocks_start as usize);
        prelude.put_slice(&footer);
        prelude.put_slice(&header.encode());
        let mut spare_sector = [0u8; SECTOR_SIZE as usize];
        spare_sector[..locator_payload.len()].copy_from_slice(&locator_payload);
        prelude.put_slice(&spare_sector);
        prelude.put_slice(&bat.encode());

        let next = params.blocks.iter().next();
        Ok(StreamEncoder {
            prelude: prelude.freeze(),
            footer,
            blocks: params.blocks,
            block_size: params.block_size,
            bitmap: Bytes::from_static(&ALL_ONES_BITMAP[..bitmap_len as usize]),
            blocks_start,
            block_span,
            included,
            given: 0,
            next,
            total_len: blocks_start + u64::from(included) * block_span + FOOTER_SIZE as u64,
        })
    }

    /// The exact stream length: `2048 + roundup512(4·E) + N·(bitmap + block) + 512`.
    pub fn total_len(&self) -> u64 {
        self.total_len
    }

    pub fn block_size(&self) -> u32 {
        self.block_size
    }

    /// Footer copy, header, spare sector and BAT: everything before the first block.
    pub fn prelude(&self) -> Bytes {
        self.prelude.clone()
    }

    /// The included block indexes, in the order the stream carries them (ascending).
    pub fn included_blocks(&self) -> impl Iterator<Item = u32> + '_ {
        self.blocks.iter()
    }

    /// The block [`Self::block_frames`] expects next, or `None` when only the trailer is left.
    pub fn next_block(&self) -> Option<u32> {
        self.next
    }

    /// The frames of block `index`: the shared all-ones bitmap and `data`, untouched. `data`
    /// must be exactly one block long (the last block too, even past the virtual size), and
    /// blocks must come in the order of [`Self::included_blocks`].
    pub fn block_frames(&mut self, index: u32, data: Bytes) -> Result<[Bytes; 2], StreamError> {
        let offset = self.blocks_start + u64::from(self.given) * self.block_span;
        if self.next != Some(index) {
            return Err(StreamError::BlockOrder {
                index,
                offset,
                next: self.next,
            });
        }
        if data.len() as u64 != u64::from(self.block_size) {
            return Err(StreamError::BlockLength {
                index,
                offset,
                found: data.len(),
                expected: self.block_size,
            });
        }
        self.given += 1;
        self.next = self.next_member_after(index);
        Ok([self.bitmap.clone(), data])
    }

    /// The final footer, once every included block was given.
    pub fn trailer(&self) -> Result<Bytes, StreamError> {
        match self.next {
            None => Ok(self.footer.clone()),
            Some(_) => Err(StreamError::Incomplete {
                offset: self.blocks_start + u64::from(self.given) * self.block_span,
                given: self.given,
                included: self.included,
            }),
        }
    }

    /// Every frame of the stream in order, pulling block data from `source(index)`. The
    /// iterator ends after the first error.
    pub fn into_frames<F, E>(self, source: F) -> Frames<F>
    where
        F: FnMut(u32) -> Result<Bytes, E>,
        E: From<StreamError>,
    {
        Frames {
            encoder: self,
            source,
            state: FramesState::Prelude,
        }
    }

    /// The smallest included index above `index`. Scanning bit by bit from the last index
    /// costs O(E) over the whole stream, negligible next to the block data.
    fn next_member_after(&self, index: u32) -> Option<u32> {
        (index.checked_add(1)?..self.blocks.capacity()).find(|&i| self.blocks.contains(i))
    }
}

/// Checks the sizes and block set; returns the number of BAT entries, `ceil(size / block)`.
fn check_geometry(params: &EncodeParams) -> Result<u32, StreamError> {
    if params.virtual_size > vhd::MAX_VIRTUAL_SIZE {
        return Err(StreamError::invalid_param(
            "virtual_size",
            params.virtual_size,
            format_args!("at most {} (2040 GiB)", vhd::MAX_VIRTUAL_SIZE),
        ));
    }
    let block_size = params.block_size;
    if !block_size.is_power_of_two()
        || !(vhd::MIN_BLOCK_SIZE..=vhd::DEFAULT_BLOCK_SIZE).contains(&block_size)
    {
        return Err(StreamError::invalid_param(
            "block_size",
            block_size,
            "a power of two from 512 to 2097152",
        ));
    }
    let entries = params.virtual_size.div_ceil(u64::from(block_size));
    if entries > u64::from(vhd::MAX_BAT_ENTRIES) {
        return Err(StreamError::invalid_param(
            "block_size",
            format_args!("{block_size}, giving {entries} BAT entries"),
            format_args!("at most {} BAT entries", vhd::MAX_BAT_ENTRIES),
        ));
    }
    if let Some(last) = params.blocks.iter().last()
        && u64::from(last) >= entries
    {
        return Err(StreamError::invalid_param(
            "blocks",
            format_args!("block {last}"),
            format_args!("indexes below {entries} = ceil(virtual_size / block_size)"),
        ));
    }
    Ok(entries as u32)
}

/// The footer, header and parent locator payload (empty for a dynamic stream).
fn metadata(
    params: &EncodeParams,
    entries: u32,
) -> Result<(Footer, DynamicHeader, Vec<u8>), StreamError> {
    let disk_type = match params.parent {
        Some(_) => DiskType::Differencing,
        None => DiskType::Dynamic,
    };
    let footer = Footer::new(
        disk_type,
        params.virtual_size,
        params.unique_id,
        params.timestamp,
    );
    let mut header = DynamicHeader::new(TABLE_OFFSET, entries, params.block_size);
    let Some(parent) = &params.parent else {
        return Ok((footer, header, Vec::new()));
    };
    let name_units = parent.name.encode_utf16().count();
    if name_units > PARENT_NAME_UNITS {
        return Err(StreamError::invalid_param(
            "parent.name",
            format_args!("{name_units} UTF-16 units"),
            format_args!("at most {PARENT_NAME_UNITS}, the header's parent name field"),
        ));
    }
    // blktap's relative form; the name is written as is (not percent-encoded), like blktap.
    let payload = format!("file://./{}", parent.name.trim_start_matches("./")).into_bytes();
    if payload.len() > LOCATOR_SPACE as usize {
        return Err(StreamError::invalid_param(
            "parent.name",
            format_args!("a {}-byte MacX locator", payload.len()),
            format_args!("at most {LOCATOR_SPACE} bytes, the sector at {LOCATOR_OFFSET}"),
        ));
    }
    header.parent_unique_id = parent.unique_id;
    header.parent_timestamp = parent.timestamp;
    header.parent_unicode_name = parent.name.clone();
    header.parent_locators[0] = ParentLocator {
        code: PlatformCode::MACX,
        // Bytes, as Virtual PC, Hyper-V, blktap and vhd-tool write it and every reader takes.
        data_space: LOCATOR_SPACE,
        data_length: payload.len() as u32,
        reserved: 0,
        data_offset: LOCATOR_OFFSET,
    };
    Ok((footer, header, payload))
}

/// Every frame of a stream, in order: see [`StreamEncoder::into_frames`].
pub struct Frames<F> {
    encoder: StreamEncoder,
    source: F,
    state: FramesState,
}

enum FramesState {
    Prelude,
    /// Ask the source for the next block, or send the trailer.
    NextBlock,
    /// The block data that follows the bitmap just sent.
    Data(Bytes),
    Done,
}

impl<F, E> Iterator for Frames<F>
where
    F: FnMut(u32) -> Result<Bytes, E>,
    E: From<StreamError>,
{
    type Item = Result<Bytes, E>;

    fn next(&mut self) -> Option<Result<Bytes, E>> {
        match std::mem::replace(&mut self.state, FramesState::Done) {
            FramesState::Prelude => {
                self.state = FramesState::NextBlock;
                Some(Ok(self.encoder.prelude()))
            }
            FramesState::NextBlock => {
                let Some(index) = self.encoder.next_block() else {
                    return Some(self.encoder.trailer().map_err(E::from));
                };
                let frames = (self.source)(index)
                    .and_then(|data| self.encoder.block_frames(index, data).map_err(E::from));
                Some(frames.map(|[bitmap, data]| {
                    self.state = FramesState::Data(data);
                    bitmap
                }))
            }
            FramesState::Data(data) => {
                self.state = FramesState::NextBlock;
                Some(Ok(data))
            }
            FramesState::Done => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vhd::ones_complement_checksum;

    const MIB: u64 = 1 << 20;

    fn five_mib_params(blocks: &[u32]) -> EncodeParams {
        let mut set = BlockSet::new(3);
        blocks.iter().for_each(|&b| set.insert(b));
        EncodeParams::new(
            5 * MIB,
            Uuid::from_bytes([0x11; 16]),
            VhdTimestamp(0x2D1C_5A3B),
            set,
        )
    }

    fn put(buf: &mut [u8], at: usize, bytes: &[u8]) {
        buf[at..at + bytes.len()].copy_from_slice(bytes);
    }

    /// The prelude of a 5 MiB dynamic stream holding blocks 0 and 2, written field by field.
    fn expected_prelude() -> Vec<u8> {
        let mut b = vec![0u8; 2560];
        // Footer copy at 0.
        put(&mut b, 0, b"conectix"); // cookie
        put(&mut b, 8, &2u32.to_be_bytes()); // features: the reserved bit
        put(&mut b, 12, &0x0001_0000u32.to_be_bytes()); // file format version 1.0
        put(&mut b, 16, &512u64.to_be_bytes()); // data offset: header at 512
        put(&mut b, 24, &0x2D1C_5A3Bu32.to_be_bytes()); // time stamp, as given
        put(&mut b, 28, b"vsyn"); // creator application
        put(&mut b, 32, &0x0001_0000u32.to_be_bytes()); // creator version 1.0
        put(&mut b, 36, b"Wi2k"); // creator host OS
        put(&mut b, 40, &(5 * MIB).to_be_bytes()); // original size
        put(&mut b, 48, &(5 * MIB).to_be_bytes()); // current size
        put(&mut b, 56, &0x0096_0411u32.to_be_bytes()); // CHS 150/4/17 (spec floor)
        put(&mut b, 60, &3u32.to_be_bytes()); // disk type: dynamic
        put(&mut b, 68, &[0x11; 16]); // unique id
        let sum = ones_complement_checksum(&b[..512], 64);
        put(&mut b, 64, &sum.to_be_bytes()); // checksum
        // Dynamic header at 512.
        put(&mut b, 512, b"cxsparse"); // cookie
        put(&mut b, 520, &u64::MAX.to_be_bytes()); // data offset: unused
        put(&mut b, 528, &2048u64.to_be_bytes()); // table offset: XAPI's 2048
        put(&mut b, 536, &0x0001_0000u32.to_be_bytes()); // header version
        put(&mut b, 540, &3u32.to_be_bytes()); // max table entries: ceil(5 MiB / 2 MiB)
        put(&mut b, 544, &0x0020_0000u32.to_be_bytes()); // block size: 2 MiB
        let sum = ones_complement_checksum(&b[512..1536], 36);
        put(&mut b, 548, &sum.to_be_bytes()); // checksum; parent fields and locators zero
        // 1536..2048: the spare sector, zero in a dynamic stream.
        // BAT at 2048, padded with 0xFF.
        b[2048..].fill(0xFF);
        put(&mut b, 2048, &5u32.to_be_bytes()); // block 0: sector 5 = byte 2560
        put(&mut b, 2056, &4102u32.to_be_bytes()); // block 2: 2560 + 512 + 2 MiB = 5 + 4097
        b
    }

    #[test]
    fn prelude_is_byte_exact_for_a_small_dynamic_disk() {
        let encoder = StreamEncoder::new(five_mib_params(&[0, 2])).unwrap();
        assert_eq!(encoder.prelude().as_ref(), expected_prelude().as_slice());
        assert_eq!(encoder.total_len(), 2560 + 2 * (512 + 2 * MIB) + 512);
        assert_eq!(encoder.included_blocks().collect::<Vec<_>>(), vec![0, 2]);
    }

    #[test]
    fn differencing_prelude_carries_parent_fields_and_macx_locator() {
        let mut params = five_mib_params(&[1]);
        params.parent = Some(ParentInfo {
            unique_id: Uuid::from_bytes([0xAB; 16]),
            timestamp: VhdTimestamp(7),
            name: "base.vhd".into(),
        });
        let prelude = StreamEncoder::new(params).unwrap().prelude();
        let (footer, _) = Footer::parse(&prelude[..512], 0).unwrap();
        assert_eq!(footer.disk_type, DiskType::Differencing);
        let header = DynamicHeader::parse(&prelude[512..1536], 512).unwrap();
        assert_eq!(header.parent_unique_id, Uuid::from_bytes([0xAB; 16]));
        assert_eq!(header.parent_timestamp, VhdTimestamp(7));
        assert_eq!(header.parent_unicode_name, "base.vhd");
        let payload = b"file://./base.vhd";
        assert_eq!(
            header.parent_locators[0],
            ParentLocator {
                code: PlatformCode::MACX,
                data_space: 512,
                data_length: payload.len() as u32,
                reserved: 0,
                data_offset: 1536,
            }
        );
        assert!(header.parent_locators[1..].iter().all(|l| l.is_unused()));
        assert_eq!(&prelude[1536..1536 + payload.len()], payload);
        assert!(prelude[1536 + payload.len()..2048].iter().all(|&b| b == 0));
    }

    #[test]
    fn blocks_must_be_whole_and_in_order() {
        let mut encoder = StreamEncoder::new(five_mib_params(&[0, 2])).unwrap();
        let block = Bytes::from(vec![7u8; 2 << 20]);
        let err = encoder.block_frames(2, block.clone()).unwrap_err();
        assert!(matches!(
            err,
            StreamError::BlockOrder {
                index: 2,
                offset: 2560,
                next: Some(0)
            }
        ));
        let err = encoder.block_frames(0, block.slice(1..)).unwrap_err();
        assert!(
            matches!(err, StreamError::BlockLength { index: 0, found, .. } if found == (2 << 20) - 1)
        );
        assert!(matches!(
            encoder.trailer(),
            Err(StreamError::Incomplete {
                given: 0,
                included: 2,
                ..
            })
        ));
        let [bitmap, data] = encoder.block_frames(0, block.clone()).unwrap();
        assert_eq!(bitmap.as_ref(), &[0xFF; 512][..]);
        assert_eq!(
            data.as_ptr(),
            block.as_ptr(),
            "data passes through zero-copy"
        );
        encoder.block_frames(2, block.clone()).unwrap();
        let err = encoder.block_frames(2, block).unwrap_err();
        assert!(matches!(err, StreamError::BlockOrder { next: None, .. }));
        assert_eq!(
            encoder.trailer().unwrap().as_ref(),
            &expected_prelude()[..512]
        );
    }

    #[test]
    fn frames_concatenate_to_the_total_length() {
        let encoder = StreamEncoder::new(five_mib_params(&[1, 2])).unwrap();
        let total = encoder.total_len();
        let frames: Vec<Bytes> = encoder
            .into_frames(|i| Ok::<_, StreamError>(Bytes::from(vec![i as u8; 2 << 20])))
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(frames.len(), 1 + 2 * 2 + 1);
        assert_eq!(frames.iter().map(|f| f.len() as u64).sum::<u64>(), total);
        assert_eq!(frames[4][0], 2, "block 2's data");
    }

    #[test]
    fn frames_stop_at_the_first_source_error() {
        let encoder = StreamEncoder::new(five_mib_params(&[0, 1])).unwrap();
        let mut frames = encoder.into_frames(|i| match i {
            0 => Ok(Bytes::from(vec![0u8; 2 << 20])),
            _ => Err(StreamError::InvalidParams {
                field: "test",
                found: String::new(),
                expected: String::new(),
            }),
        });
        assert_eq!(frames.by_ref().take(3).filter(Result::is_ok).count(), 3);
        assert!(frames.next().unwrap().is_err());
        assert!(frames.next().is_none());
    }

    #[test]
    fn impossible_params_name_the_field() {
        let field = |params: EncodeParams| match StreamEncoder::new(params) {
            Err(StreamError::InvalidParams { field, .. }) => field,
            other => panic!("expected InvalidParams, got {other:?}"),
        };
        let mut p = five_mib_params(&[]);
        p.block_size = 3 << 20;
        assert_eq!(field(p), "block_size");
        let mut p = five_mib_params(&[]);
        p.blocks.union_with(&BlockSet::from_iter([3]));
        assert_eq!(field(p), "blocks");
        let mut p = five_mib_params(&[]);
        p.virtual_size = vhd::MAX_VIRTUAL_SIZE + 1;
        assert_eq!(field(p), "virtual_size");
        let mut p = five_mib_params(&[]);
        (p.virtual_size, p.block_size) = (vhd::MAX_VIRTUAL_SIZE, 512);
        assert_eq!(field(p), "block_size");
        let mut p = five_mib_params(&[]);
        p.parent = Some(ParentInfo {
            unique_id: Uuid::nil(),
            timestamp: VhdTimestamp(0),
            name: "x".repeat(300),
        });
        assert_eq!(field(p), "parent.name");
    }

    #[test]
    fn sector_offsets_must_fit_in_32_bits() {
        // 128 KiB blocks over 2040 GiB: 16 Mi entries whose stream passes 2 TiB.
        let size = vhd::MAX_VIRTUAL_SIZE;
        let entries = (size / (128 << 10)) as u32;
        let mut params =
            EncodeParams::new(size, Uuid::nil(), VhdTimestamp(0), BlockSet::full(entries));
        params.block_size = 128 << 10;
        let err = StreamEncoder::new(params).unwrap_err();
        assert!(matches!(
            err,
            StreamError::InvalidParams {
                field: "blocks",
                ..
            }
        ));
    }
}
