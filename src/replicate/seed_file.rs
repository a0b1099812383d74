//! The seed file container, sans-IO: a VHD stream cut into independently compressed zstd
//! frames, each with the CRC32 of its uncompressed payload, so that corruption is located to
//! one frame and a reader never needs more than one frame in memory.
//!
//! Layout (all integers big-endian):
//!
//! ```text
//! file header  20 B   magic "VHDSEED\0" | version u16 = 1 | reserved u16 = 0 | max frame u32
//!                     | crc32 u32 (of the 16 bytes before it)
//! frame        20 B   "FRM1" | uncompressed len u32 | compressed len u32 | payload crc32 u32
//!                     | header crc32 u32 (of the 16 bytes before it)
//!              + the zstd frame of the payload (compressed len bytes)
//! end record   40 B   "END1" | reserved u32 = 0 | frames u64 | uncompressed total u64
//!                     | compressed total u64 | crc32 u32 (of the 32 bytes before it) | 0 u32
//! ```
//!
//! Every length is checked against [`MAX_FRAME`] (and its zstd bound) before anything is
//! allocated for it; a frame's payload must decompress to exactly its recorded length.

use bytes::{Buf, Bytes, BytesMut};

pub const MAGIC: &[u8; 8] = b"VHDSEED\0";
pub const VERSION: u16 = 1;
pub const FILE_HEADER_LEN: usize = 20;
pub const FRAME_HEADER_LEN: usize = 20;
pub const END_LEN: usize = 40;
const FRAME_TAG: &[u8; 4] = b"FRM1";
const END_TAG: &[u8; 4] = b"END1";
/// The largest uncompressed frame a reader accepts.
pub const MAX_FRAME: u32 = 16 << 20;
/// What the writer uses: two VHD blocks of 2 MiB, so most frames hold whole blocks.
pub const DEFAULT_FRAME: u32 = 4 << 20;

/// The most a zstd frame of `len` bytes can take (zstd's `ZSTD_COMPRESSBOUND`, rounded up).
pub fn compressed_bound(len: u32) -> u32 {
    len + (len >> 7) + 1024
}

/// What went wrong, where: `frame` counts from 0, `offset` is the byte offset in the file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SeedFileError {
    #[error("not a seed file: bad magic at offset 0")]
    BadMagic,
    #[error("seed file version {0} is not supported (this vhdsync reads version {VERSION})")]
    UnsupportedVersion(u16),
    #[error("bad file header: {0}")]
    BadHeader(String),
    #[error("frame {frame} at offset {offset}: {problem}")]
    BadFrame {
        frame: u64,
        offset: u64,
        problem: String,
    },
    #[error(
        "frame {frame} at offset {offset}: CRC32 of the payload is {actual:08x}, the frame header says {expected:08x}"
    )]
    Crc {
        frame: u64,
        offset: u64,
        expected: u32,
        actual: u32,
    },
    #[error("truncated in frame {frame} at offset {offset}: the file ends {missing} bytes short")]
    Truncated {
        frame: u64,
        offset: u64,
        missing: u64,
    },
    #[error("end record at offset {offset}: {problem}")]
    BadEnd { offset: u64, problem: String },
    #[error("{len} bytes after the end record at offset {offset}")]
    TrailingData { offset: u64, len: u64 },
}

/// Totals, from the end record (and checked against the frames read).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Totals {
    pub frames: u64,
    pub uncompressed: u64,
    pub compressed: u64,
}

/// A frame header, parsed and checked (its own CRC and the length bounds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub uncompressed_len: u32,
    pub compressed_len: u32,
    pub crc32: u32,
}

/// What follows a position in the file: another frame, or the end record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Record {
    Frame(FrameHeader),
    End(Totals),
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

fn be64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_be_bytes(a)
}

/// The file header; returns the writer's max frame size.
pub fn parse_file_header(b: &[u8; FILE_HEADER_LEN]) -> Result<u32, SeedFileError> {
    if &b[..8] != MAGIC {
        return Err(SeedFileError::BadMagic);
    }
    let (stored, actual) = (be32(&b[16..20]), crc32fast::hash(&b[..16]));
    if stored != actual {
        return Err(SeedFileError::BadHeader(format!(
            "CRC32 is {actual:08x}, recorded {stored:08x}"
        )));
    }
    let version = u16::from_be_bytes([b[8], b[9]]);
    if version != VERSION {
        return Err(SeedFileError::UnsupportedVersion(version));
    }
    if b[10..12] != [0, 0] {
        return Err(SeedFileError::BadHeader(
            "reserved bytes 10..12 are not zero".into(),
        ));
    }
    let max = be32(&b[12..16]);
    if max == 0 || max > MAX_FRAME {
        return Err(SeedFileError::BadHeader(format!(
            "max frame size {max} outside 1..={MAX_FRAME}"
        )));
    }
    Ok(max)
}

pub fn file_header(max_frame: u32) -> [u8; FILE_HEADER_LEN] {
    let mut b = [0u8; FILE_HEADER_LEN];
    b[..8].copy_from_slice(MAGIC);
    b[8..10].copy_from_slice(&VERSION.to_be_bytes());
    b[12..16].copy_from_slice(&max_frame.to_be_bytes());
    let crc = crc32fast::hash(&b[..16]);
    b[16..20].copy_from_slice(&crc.to_be_bytes());
    b
}

/// The record starting with these bytes: a frame header (needs [`FRAME_HEADER_LEN`] bytes)
/// or the end record (needs [`END_LEN`]). `None` when more bytes are needed to tell.
pub fn parse_record(
    b: &[u8],
    frame: u64,
    offset: u64,
    max_frame: u32,
) -> Result<Option<Record>, SeedFileError> {
    if b.len() < 4 {
        return Ok(None);
    }
    let bad = |problem: String| SeedFileError::BadFrame {
        frame,
        offset,
        problem,
    };
    if &b[..4] == FRAME_TAG {
        if b.len() < FRAME_HEADER_LEN {
            return Ok(None);
        }
        let stored = be32(&b[16..20]);
        let actual = crc32fast::hash(&b[..16]);
        if stored != actual {
            return Err(bad(format!(
                "frame header CRC32 is {actual:08x}, recorded {stored:08x}"
            )));
        }
        let header = FrameHeader {
            uncompressed_len: be32(&b[4..8]),
            compressed_len: be32(&b[8..12]),
            crc32: be32(&b[12..16]),
        };
        if header.uncompressed_len == 0 || header.uncompressed_len > max_frame {
            return Err(bad(format!(
                "uncompressed length {} outside 1..={max_frame}",
                header.uncompressed_len
            )));
        }
        let bound = compressed_bound(header.uncompressed_len);
        if header.compressed_len == 0 || header.compressed_len > bound {
            return Err(bad(format!(
                "compressed length {} outside 1..={bound}",
                header.compressed_len
            )));
        }
        return Ok(Some(Record::Frame(header)));
    }
    if &b[..4] == END_TAG {
        if b.len() < END_LEN {
            return Ok(None);
        }
        let bad_end = |problem: String| SeedFileError::BadEnd { offset, problem };
        let stored = be32(&b[32..36]);
        let actual = crc32fast::hash(&b[..32]);
        if stored != actual {
            return Err(bad_end(format!(
                "CRC32 is {actual:08x}, recorded {stored:08x}"
            )));
        }
        if b[4..8] != [0; 4] || b[36..40] != [0; 4] {
            return Err(bad_end("reserved bytes are not zero".into()));
        }
        return Ok(Some(Record::End(Totals {
            frames: be64(&b[8..16]),
            uncompressed: be64(&b[16..24]),
            compressed: be64(&b[24..32]),
        })));
    }
    Err(bad(format!(
        "expected a frame or the end record, found bytes {:02x?}",
        &b[..4]
    )))
}

/// Builds a seed file: [`SeedEncoder::header`], then [`SeedEncoder::frame`] per payload of
/// at most the max frame size, then [`SeedEncoder::end`].
pub struct SeedEncoder {
    compressor: zstd::bulk::Compressor<'static>,
    max_frame: u32,
    totals: Totals,
}

impl SeedEncoder {
    pub fn new(level: i32, max_frame: u32) -> std::io::Result<SeedEncoder> {
        Ok(SeedEncoder {
            compressor: zstd::bulk::Compressor::new(level)?,
            max_frame: max_frame.clamp(1, MAX_FRAME),
            totals: Totals::default(),
        })
    }

    pub fn max_frame(&self) -> u32 {
        self.max_frame
    }

    pub fn header(&mut self) -> Bytes {
        let header = file_header(self.max_frame);
        self.totals.compressed += header.len() as u64;
        Bytes::copy_from_slice(&header)
    }

    /// One frame of `payload` (1 to max frame bytes): header and compressed bytes.
    pub fn frame(&mut self, payload: &[u8]) -> std::io::Result<Bytes> {
        if payload.is_empty() || payload.len() > self.max_frame as usize {
            return Err(std::io::Error::other(format!(
                "a frame holds 1 to {} bytes, not {}",
                self.max_frame,
                payload.len()
            )));
        }
        let compressed = self.compressor.compress(payload)?;
        let mut out = BytesMut::with_capacity(FRAME_HEADER_LEN + compressed.len());
        out.extend_from_slice(FRAME_TAG);
        out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        out.extend_from_slice(&(compressed.len() as u32).to_be_bytes());
        out.extend_from_slice(&crc32fast::hash(payload).to_be_bytes());
        let crc = crc32fast::hash(&out[..16]);
        out.extend_from_slice(&crc.to_be_bytes());
        out.extend_from_slice(&compressed);
        self.totals.frames += 1;
        self.totals.uncompressed += payload.len() as u64;
        self.totals.compressed += out.len() as u64;
        Ok(out.freeze())
    }

    /// The end record; the totals include it.
    pub fn end(&mut self) -> (Bytes, Totals) {
        self.totals.compressed += END_LEN as u64;
        let t = self.totals;
        let mut out = BytesMut::with_capacity(END_LEN);
        out.extend_from_slice(END_TAG);
        out.extend_from_slice(&[0; 4]);
        out.extend_from_slice(&t.frames.to_be_bytes());
        out.extend_from_slice(&t.uncompressed.to_be_bytes());
        out.extend_from_slice(&t.compressed.to_be_bytes());
        let crc = crc32fast::hash(&out[..32]);
        out.extend_from_slice(&crc.to_be_bytes());
        out.extend_from_slice(&[0; 4]);
        (out.freeze(), t)
    }
}

/// What the decoder yields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SeedEvent {
    /// The next frame's payload, decompressed and checked against its CRC32.
    Frame { index: u64, data: Bytes },
    /// The end record, checked against the frames read; nothing may follow it.
    End(Totals),
}

/// Decodes a seed file, tokio-util `Decoder` style: [`SeedDecoder::decode`] returns
/// `Ok(None)` when it needs more bytes; [`SeedDecoder::decode_eof`] turns that into
/// [`SeedFileError::Truncated`].
pub struct SeedDecoder {
    max_frame: Option<u32>,
    decompressor: Option<zstd::bulk::Decompressor<'static>>,
    frame: u64,
    offset: u64,
    uncompressed: u64,
    ended: bool,
}

impl Default for SeedDecoder {
    fn default() -> Self {
        SeedDecoder::new()
    }
}

impl SeedDecoder {
    pub fn new() -> SeedDecoder {
        SeedDecoder {
            max_frame: None,
            decompressor: None,
            frame: 0,
            offset: 0,
            uncompressed: 0,
            ended: false,
        }
    }

    /// The next event from `buf`, consuming its bytes.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<SeedEvent>, SeedFileError> {
        if self.ended {
            if buf.is_empty() {
                return Ok(None);
            }
            return Err(SeedFileError::TrailingData {
                offset: self.offset,
                len: buf.len() as u64,
            });
        }
        let max_frame = match self.max_frame {
            Some(max) => max,
            None => {
                let Some(header) = buf.get(..FILE_HEADER_LEN) else {
                    if buf.len() >= MAGIC.len() && &buf[..MAGIC.len()] != MAGIC {
                        return Err(SeedFileError::BadMagic);
                    }
                    return Ok(None);
                };
                let mut h = [0u8; FILE_HEADER_LEN];
                h.copy_from_slice(header);
                let max = parse_file_header(&h)?;
                buf.advance(FILE_HEADER_LEN);
                self.offset = FILE_HEADER_LEN as u64;
                self.max_frame = Some(max);
                max
            }
        };
        let Some(record) = parse_record(buf, self.frame, self.offset, max_frame)? else {
            return Ok(None);
        };
        match record {
            Record::Frame(header) => {
                let total = FRAME_HEADER_LEN + header.compressed_len as usize;
                if buf.len() < total {
                    // Reserve once the header is trusted: bounded by the checked lengths.
                    buf.reserve(total - buf.len());
                    return Ok(None);
                }
                let data = self.decompress(&buf[FRAME_HEADER_LEN..total], header)?;
                buf.advance(total);
                let index = self.frame;
                self.frame += 1;
                self.offset += total as u64;
                self.uncompressed += data.len() as u64;
                Ok(Some(SeedEvent::Frame { index, data }))
            }
            Record::End(totals) => {
                let bad = |problem: String| SeedFileError::BadEnd {
                    offset: self.offset,
                    problem,
                };
                let size = self.offset + END_LEN as u64;
                if totals.frames != self.frame {
                    return Err(bad(format!(
                        "records {} frames, the file holds {}",
                        totals.frames, self.frame
                    )));
                }
                if totals.uncompressed != self.uncompressed {
                    return Err(bad(format!(
                        "records {} uncompressed bytes, the frames hold {}",
                        totals.uncompressed, self.uncompressed
                    )));
                }
                if totals.compressed != size {
                    return Err(bad(format!(
                        "records a file of {} bytes, it is {size} bytes long here",
                        totals.compressed
                    )));
                }
                buf.advance(END_LEN);
                self.offset = size;
                self.ended = true;
                if !buf.is_empty() {
                    return Err(SeedFileError::TrailingData {
                        offset: self.offset,
                        len: buf.len() as u64,
                    });
                }
                Ok(Some(SeedEvent::End(totals)))
            }
        }
    }

    /// As [`SeedDecoder::decode`], at the end of the input: a missing end record or a short
    /// frame is [`SeedFileError::Truncated`].
    pub fn decode_eof(&mut self, buf: &mut BytesMut) -> Result<Option<SeedEvent>, SeedFileError> {
        match self.decode(buf)? {
            Some(event) => Ok(Some(event)),
            None if self.ended => Ok(None),
            None => Err(SeedFileError::Truncated {
                frame: self.frame,
                offset: self.offset + buf.len() as u64,
                missing: self.missing(buf),
            }),
        }
    }

    /// How many bytes the record under way still lacks (at least 1).
    fn missing(&self, buf: &[u8]) -> u64 {
        let Some(max) = self.max_frame else {
            return (FILE_HEADER_LEN - buf.len().min(FILE_HEADER_LEN)) as u64;
        };
        let needed = match parse_record(buf, self.frame, self.offset, max) {
            Ok(Some(Record::Frame(h))) => FRAME_HEADER_LEN + h.compressed_len as usize,
            _ if buf.len() >= 4 && &buf[..4] == END_TAG => END_LEN,
            _ => FRAME_HEADER_LEN.min(END_LEN),
        };
        needed.saturating_sub(buf.len()).max(1) as u64
    }

    /// Frames read so far.
    pub fn frames(&self) -> u64 {
        self.frame
    }

    /// File bytes consumed so far.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    fn decompress(&mut self, payload: &[u8], header: FrameHeader) -> Result<Bytes, SeedFileError> {
        let bad = |problem: String| SeedFileError::BadFrame {
            frame: self.frame,
            offset: self.offset,
            problem,
        };
        if self.decompressor.is_none() {
            self.decompressor = Some(
                zstd::bulk::Decompressor::new()
                    .map_err(|e| bad(format!("zstd decompressor: {e}")))?,
            );
        }
        let Some(decompressor) = self.decompressor.as_mut() else {
            return Err(bad("zstd decompressor unavailable".into()));
        };
        let data = decompressor
            .decompress(payload, header.uncompressed_len as usize)
            .map_err(|e| bad(format!("zstd: {e}")))?;
        if data.len() != header.uncompressed_len as usize {
            return Err(bad(format!(
                "decompresses to {} bytes, the header says {}",
                data.len(),
                header.uncompressed_len
            )));
        }
        let actual = crc32fast::hash(&data);
        if actual != header.crc32 {
            return Err(SeedFileError::Crc {
                frame: self.frame,
                offset: self.offset,
                expected: header.crc32,
                actual,
            });
        }
        Ok(Bytes::from(data))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn encode(payload: &[u8], max: u32) -> Vec<u8> {
        let mut enc = SeedEncoder::new(3, max).unwrap();
        let mut out = enc.header().to_vec();
        for chunk in payload.chunks(max as usize) {
            out.extend_from_slice(&enc.frame(chunk).unwrap());
        }
        let (end, totals) = enc.end();
        out.extend_from_slice(&end);
        assert_eq!(totals.compressed, out.len() as u64);
        out
    }

    /// Decode `file` fed in pieces of `step` bytes; the payload or the first error.
    fn decode(file: &[u8], step: usize) -> Result<(Vec<u8>, Totals), SeedFileError> {
        let mut dec = SeedDecoder::new();
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        let mut end = None;
        for piece in file.chunks(step.max(1)) {
            buf.extend_from_slice(piece);
            while let Some(event) = dec.decode(&mut buf)? {
                match event {
                    SeedEvent::Frame { data, .. } => out.extend_from_slice(&data),
                    SeedEvent::End(t) => end = Some(t),
                }
            }
        }
        while let Some(event) = dec.decode_eof(&mut buf)? {
            match event {
                SeedEvent::Frame { data, .. } => out.extend_from_slice(&data),
                SeedEvent::End(t) => end = Some(t),
            }
        }
        Ok((out, end.expect("decode_eof errs without an end")))
    }

    #[test]
    fn zeros_compress_to_almost_nothing() {
        let zeros = vec![0u8; 8 << 20];
        let file = encode(&zeros, DEFAULT_FRAME);
        assert!(file.len() < 4096, "{} bytes for 8 MiB of zeros", file.len());
        assert_eq!(decode(&file, 1 << 16).unwrap().0, zeros);
    }

    #[test]
    fn errors_name_the_frame() {
        let payload: Vec<u8> = (0..40_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let file = encode(&payload, 10_000);
        // Frame 2's payload: flip one byte of its compressed data.
        let mut offset = FILE_HEADER_LEN;
        for _ in 0..2 {
            let clen = be32(&file[offset + 8..offset + 12]) as usize;
            offset += FRAME_HEADER_LEN + clen;
        }
        let mut corrupt = file.clone();
        corrupt[offset + FRAME_HEADER_LEN + 3] ^= 0x40;
        match decode(&corrupt, 4096) {
            Err(SeedFileError::Crc { frame: 2, .. } | SeedFileError::BadFrame { frame: 2, .. }) => {
            }
            other => panic!("{other:?}"),
        }
        let truncated = &file[..offset + 30];
        match decode(truncated, 4096) {
            Err(SeedFileError::Truncated { frame: 2, .. }) => {}
            other => panic!("{other:?}"),
        }
        // Without the end record: truncated after the last frame.
        match decode(&file[..file.len() - END_LEN], 4096) {
            Err(SeedFileError::Truncated { frame: 4, .. }) => {}
            other => panic!("{other:?}"),
        }
        let mut trailing = file.clone();
        trailing.push(0);
        assert!(matches!(
            decode(&trailing, 4096),
            Err(SeedFileError::TrailingData { len: 1, .. })
        ));
        assert_eq!(
            decode(b"VHDSEEX\0xxxxxxxxxxxxxx", 7),
            Err(SeedFileError::BadMagic)
        );
    }

    #[test]
    fn oversized_lengths_are_refused_before_allocating() {
        let mut file = encode(b"hello", 4096).to_vec();
        // A frame header claiming 4 GiB, with a valid header CRC.
        let at = FILE_HEADER_LEN;
        file[at + 4..at + 8].copy_from_slice(&u32::MAX.to_be_bytes());
        let crc = crc32fast::hash(&file[at..at + 16]);
        file[at + 16..at + 20].copy_from_slice(&crc.to_be_bytes());
        match decode(&file, 64) {
            Err(SeedFileError::BadFrame {
                frame: 0, problem, ..
            }) => {
                assert!(problem.contains("uncompressed length"), "{problem}")
            }
            other => panic!("{other:?}"),
        }
    }

    proptest! {
        #[test]
        fn round_trip(payload in proptest::collection::vec(any::<u8>(), 1..20_000),
                      max in 1u32..5000, step in 1usize..3000) {
            let file = encode(&payload, max);
            let (out, totals) = decode(&file, step).unwrap();
            prop_assert_eq!(out, payload.clone());
            prop_assert_eq!(totals.uncompressed, payload.len() as u64);
        }

        #[test]
        fn any_corruption_is_detected(payload in proptest::collection::vec(any::<u8>(), 1..5000),
                                      at in any::<prop::sample::Index>(), flip in 1u8..=255) {
            let mut file = encode(&payload, 1000);
            let i = at.index(file.len());
            file[i] ^= flip;
            prop_assert!(decode(&file, 512).is_err(), "flip at {}", i);
        }

        #[test]
        fn any_truncation_is_detected(payload in proptest::collection::vec(any::<u8>(), 1..5000),
                                      at in any::<prop::sample::Index>()) {
            let file = encode(&payload, 1000);
            let cut = at.index(file.len());
            prop_assert!(decode(&file[..cut], 512).is_err());
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2000)) {
            let _ = decode(&bytes, 97);
            let mut with_header = file_header(1024).to_vec();
            with_header.extend_from_slice(&bytes);
            let _ = decode(&with_header, 97);
        }
    }
}
