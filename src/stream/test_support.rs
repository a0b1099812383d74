//! Helpers shared by the stream tests: feeding a decoder in chunks, deterministic data, and
//! hand-laid-out streams in the shapes other producers write.

use bytes::{Bytes, BytesMut};
use tokio_util::codec::Decoder;
use uuid::Uuid;

use super::{EncodeParams, StreamDecoder, StreamEncoder, StreamError, StreamEvent};
use crate::vhd::{
    Bat, DiskType, DynamicHeader, FOOTER_SIZE, Footer, SECTOR_SIZE, VhdTimestamp, header,
    round_up_to_sector,
};

/// Feeds `stream` to a fresh decoder in chunks of `chunk_sizes` (cycled; zeros count as one),
/// draining events after every chunk, then at EOF. Stops at the first error.
pub fn decode_in_chunks(
    stream: &[u8],
    chunk_sizes: &[usize],
) -> (StreamDecoder, Result<Vec<StreamEvent>, StreamError>) {
    let mut decoder = StreamDecoder::new();
    let result = feed(&mut decoder, stream, chunk_sizes);
    (decoder, result)
}

fn feed(
    decoder: &mut StreamDecoder,
    stream: &[u8],
    chunk_sizes: &[usize],
) -> Result<Vec<StreamEvent>, StreamError> {
    let mut events = Vec::new();
    let mut buf = BytesMut::new();
    let mut rest = stream;
    for &size in chunk_sizes.iter().cycle() {
        if rest.is_empty() {
            break;
        }
        let (chunk, tail) = rest.split_at(size.clamp(1, rest.len()));
        rest = tail;
        buf.extend_from_slice(chunk);
        while let Some(event) = decoder.decode(&mut buf)? {
            events.push(event);
        }
    }
    while let Some(event) = decoder.decode_eof(&mut buf)? {
        events.push(event);
    }
    Ok(events)
}

/// `len` pseudo-random bytes from `seed` (xorshift), so tests need no stored data.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut bytes = vec![0u8; len.next_multiple_of(8)];
    for word in bytes.chunks_exact_mut(8) {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        word.copy_from_slice(&state.to_le_bytes());
    }
    bytes.truncate(len);
    bytes
}

/// The whole stream our encoder makes for `params`, block `i` holding `pattern(i, ..)`.
pub fn encode_to_vec(params: EncodeParams) -> Vec<u8> {
    let block_size = params.block_size as usize;
    let encoder = StreamEncoder::new(params).unwrap();
    let frames = encoder
        .into_frames(|i| Ok::<_, StreamError>(Bytes::from(pattern(u64::from(i), block_size))));
    let mut stream = Vec::new();
    for frame in frames {
        stream.extend_from_slice(&frame.unwrap());
    }
    stream
}

/// A stream laid out by hand: structures put at chosen offsets, the rest zero, the final
/// footer appended after the furthest byte written.
pub struct Layout {
    pub footer: Footer,
    pub header: DynamicHeader,
    pub bat: Bat,
    bytes: Vec<u8>,
}

impl Layout {
    /// A dynamic disk with 2 MiB blocks, its header at 512 and BAT at `table_offset`.
    pub fn new(virtual_size: u64, table_offset: u64, bat_entries: u32) -> Layout {
        let footer = Footer::new(
            DiskType::Dynamic,
            virtual_size,
            Uuid::from_u128(7),
            VhdTimestamp(1),
        );
        Layout {
            footer,
            header: DynamicHeader::new(table_offset, bat_entries, crate::vhd::DEFAULT_BLOCK_SIZE),
            bat: Bat::unallocated(bat_entries),
            bytes: Vec::new(),
        }
    }

    pub fn put(&mut self, at: u64, bytes: &[u8]) {
        let at = at as usize;
        if self.bytes.len() < at + bytes.len() {
            self.bytes.resize(at + bytes.len(), 0);
        }
        self.bytes[at..at + bytes.len()].copy_from_slice(bytes);
    }

    /// Block `index` at byte `at`: `bitmap` (sector-padded) then `data`.
    pub fn block(&mut self, index: u32, at: u64, bitmap: &[u8], data: &[u8]) {
        self.bat.set(index, (at / SECTOR_SIZE) as u32);
        let bitmap_size = header::bitmap_size(self.header.block_size) as usize;
        let mut padded = bitmap.to_vec();
        padded.resize(bitmap_size, 0);
        self.put(at, &padded);
        self.put(at + bitmap_size as u64, data);
    }

    /// Makes sure the stream reaches at least `end` before the final footer.
    pub fn extend_to(&mut self, end: u64) {
        if (self.bytes.len() as u64) < end {
            self.bytes.resize(end as usize, 0);
        }
    }

    /// Footer copy, header and BAT written in place, final footer appended.
    pub fn finish(mut self) -> Vec<u8> {
        let footer = self.footer.encode();
        self.put(0, &footer);
        self.put(self.footer.data_offset, &self.header.encode());
        self.put(self.header.table_offset, &self.bat.encode());
        let end = round_up_to_sector(self.bytes.len() as u64);
        self.extend_to(end);
        self.bytes.extend_from_slice(&footer[..FOOTER_SIZE]);
        self.bytes
    }
}
