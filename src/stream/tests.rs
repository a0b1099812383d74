//! The codec end to end: our encoder's streams round-trip through the decoder, and the
//! decoder reads the layouts other producers write, qemu-img's for real.

use std::process::Command;

use proptest::prelude::*;
use uuid::Uuid;

use super::test_support::{Layout, decode_in_chunks, encode_to_vec, pattern};
use super::{EncodeParams, ParentInfo, StreamDecoder, StreamEncoder, StreamError, StreamEvent};
use crate::vhd::{
    BlockSet, DiskType, ParentLocator, PlatformCode, VhdTimestamp,
    batmap::{BatmapHeader, map_checksum},
    locator::encode_utf16le,
    ones_complement_checksum,
};
use bytes::BytesMut;
use tokio_util::codec::Decoder;

const MIB: u64 = 1 << 20;
const SPAN: u64 = 512 + 2 * MIB;

/// Events reduced to something comparable: kind, index, and payload for blocks/locators.
#[derive(Debug, PartialEq, Eq)]
enum Seen {
    Footer,
    Header,
    Locator(u8, Vec<u8>),
    Bat,
    Batmap(Vec<u8>),
    Block(u32),
    End,
}

fn summarize(events: &[StreamEvent]) -> Vec<Seen> {
    events
        .iter()
        .map(|e| match e {
            StreamEvent::Footer(_) => Seen::Footer,
            StreamEvent::Header(_) => Seen::Header,
            StreamEvent::Locator { index, payload } => Seen::Locator(*index, payload.to_vec()),
            StreamEvent::Bat(_) => Seen::Bat,
            StreamEvent::Batmap { map, .. } => Seen::Batmap(map.to_vec()),
            StreamEvent::Block { index, .. } => Seen::Block(*index),
            StreamEvent::End(_) => Seen::End,
        })
        .collect()
}

fn block_data(events: &[StreamEvent], wanted: u32) -> (&[u8], &[u8]) {
    events
        .iter()
        .find_map(|e| match e {
            StreamEvent::Block {
                index,
                bitmap,
                data,
            } if *index == wanted => Some((bitmap.as_ref(), data.as_ref())),
            _ => None,
        })
        .unwrap_or_else(|| panic!("block {wanted} not decoded"))
}

/// Chunk sizes that mix tiny reads with large ones; a large one is always among them so
/// that multi-megabyte streams stay quick to feed.
fn chunk_sizes() -> impl Strategy<Value = Vec<usize>> {
    let size = prop_oneof![1usize..=16, 17usize..=5_000, 5_001usize..=300_000];
    (
        proptest::collection::vec(size, 0..5),
        65_536usize..=1_000_000,
    )
        .prop_map(|(mut sizes, big)| {
            sizes.push(big);
            sizes
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn encoded_streams_decode_to_the_same_blocks(
        virtual_size in 0u64..=4 * MIB,
        block_shift in 0u32..=12,
        density in 0u32..=100,
        seed in any::<u64>(),
        differencing in any::<bool>(),
        chunks in chunk_sizes(),
    ) {
        let block_size = 512u32 << block_shift;
        let entries = virtual_size.div_ceil(u64::from(block_size)) as u32;
        let mut blocks = BlockSet::new(entries);
        let picks = pattern(seed, entries as usize);
        (0..entries).filter(|&i| u32::from(picks[i as usize]) * 100 < density * 256)
            .for_each(|i| blocks.insert(i));
        let included: Vec<u32> = blocks.iter().collect();
        let mut params = EncodeParams::new(virtual_size, Uuid::from_u64_pair(seed, 1), VhdTimestamp(9), blocks);
        params.block_size = block_size;
        if differencing {
            params.parent = Some(ParentInfo {
                unique_id: Uuid::from_u64_pair(seed, 2),
                timestamp: VhdTimestamp(3),
                name: "parent.vhd".into(),
            });
        }
        let encoded_len = StreamEncoder::new(params.clone()).unwrap().total_len();
        let stream = encode_to_vec(params);
        prop_assert_eq!(stream.len() as u64, encoded_len);

        let (decoder, events) = decode_in_chunks(&stream, &chunks);
        let events = events.unwrap();
        prop_assert_eq!(decoder.total_len(), Some(encoded_len));
        prop_assert_eq!(decoder.position(), encoded_len);
        prop_assert_eq!(decoder.blocks_seen(), included.len() as u32);
        prop_assert_eq!(decoder.blocks_expected(), Some(included.len() as u32));

        let mut expected = vec![Seen::Footer, Seen::Header];
        if differencing {
            expected.push(Seen::Locator(0, b"file://./parent.vhd".to_vec()));
        }
        expected.push(Seen::Bat);
        expected.extend(included.iter().map(|&i| Seen::Block(i)));
        expected.push(Seen::End);
        prop_assert_eq!(summarize(&events), expected);
        for event in &events {
            if let StreamEvent::Block { index, bitmap, data } = event {
                prop_assert!(bitmap.iter().all(|&b| b == 0xFF));
                prop_assert!(data.as_ref() == pattern(u64::from(*index), block_size as usize));
            }
        }
    }
}

#[test]
fn a_stream_without_blocks_ends_right_after_the_bat() {
    let params = EncodeParams::new(10 * MIB, Uuid::nil(), VhdTimestamp(0), BlockSet::new(5));
    let stream = encode_to_vec(params);
    assert_eq!(stream.len(), 2048 + 512 + 512);
    let (decoder, events) = decode_in_chunks(&stream, &[700]);
    assert_eq!(
        summarize(&events.unwrap()),
        [Seen::Footer, Seen::Header, Seen::Bat, Seen::End]
    );
    assert_eq!(decoder.total_len(), Some(3072));
}

#[test]
fn qemu_and_xo_layout_bat_at_1536_blocks_in_physical_order() {
    let mut layout = Layout::new(6 * MIB, 1536, 3);
    // Blocks written in guest order 2 then 0, as qemu allocates them on write.
    layout.block(2, 2048, &[0xFF; 512], &pattern(2, 2 << 20));
    layout.block(0, 2048 + SPAN, &[0xFF; 512], &pattern(0, 2 << 20));
    let stream = layout.finish();
    let (decoder, events) = decode_in_chunks(&stream, &[4096, 1]);
    let events = events.unwrap();
    assert_eq!(
        summarize(&events),
        [
            Seen::Footer,
            Seen::Header,
            Seen::Bat,
            Seen::Block(2),
            Seen::Block(0),
            Seen::End
        ]
    );
    assert_eq!(block_data(&events, 0).1, pattern(0, 2 << 20).as_slice());
    assert_eq!(decoder.total_len(), Some(stream.len() as u64));
    assert_eq!(stream.len() as u64, 2048 + 2 * SPAN + 512);
}

#[test]
fn blktap_layout_oversized_bat_batmap_locators_partial_bitmaps() {
    // 4 MiB disk (2 blocks) with a BAT pre-allocated for 600: 1536..4096.
    let mut layout = Layout::new(4 * MIB, 1536, 600);
    layout.footer.creator_app = *b"tap\0";
    layout.footer.creator_version = 0x0001_0003;
    layout.footer.disk_type = DiskType::Differencing;
    layout.header.parent_unique_id = Uuid::from_u128(9);
    layout.header.parent_unicode_name = "parent.vhd".into();
    // An entry past the disk's end pointing into the BAT: ignored, never read.
    layout.bat.set(500, 5);
    // Batmap header right after the BAT, its map in the next sector.
    let map = [0b0100_0000u8];
    let batmap = BatmapHeader {
        map_offset: 4608,
        map_sectors: 1,
        version: 0x0001_0002,
        checksum: map_checksum(&map),
    };
    layout.put(4096, &batmap.encode());
    layout.put(4608, &map);
    // Parent locators after the batmap: data_space in bytes, then in sectors.
    let macx = b"file://./parent.vhd";
    let w2ru = encode_utf16le(".\\parent.vhd");
    layout.header.parent_locators[0] = locator(PlatformCode::MACX, 512, macx.len(), 5120);
    layout.header.parent_locators[1] = locator(PlatformCode::W2RU, 1, w2ru.len(), 5632);
    layout.put(5120, macx);
    layout.put(5632, &w2ru);
    // Block 1 (sectors 0-7 and 100 present) before block 0 (full).
    let mut partial = [0u8; 512];
    partial[0] = 0xFF;
    partial[12] = 0b0000_1000;
    layout.block(1, 6144, &partial, &pattern(11, 2 << 20));
    layout.block(0, 6144 + SPAN, &[0xFF; 512], &pattern(10, 2 << 20));
    let stream = layout.finish();

    let (decoder, events) = decode_in_chunks(&stream, &[3000, 100_000]);
    let events = events.unwrap();
    let mut padded_map = map.to_vec();
    padded_map.resize(512, 0);
    assert_eq!(
        summarize(&events),
        [
            Seen::Footer,
            Seen::Header,
            Seen::Bat,
            Seen::Batmap(padded_map),
            Seen::Locator(0, macx.to_vec()),
            Seen::Locator(1, w2ru.clone()),
            Seen::Block(1),
            Seen::Block(0),
            Seen::End
        ]
    );
    let (bitmap, data) = block_data(&events, 1);
    assert_eq!(bitmap, partial.as_slice());
    assert_eq!(data, pattern(11, 2 << 20).as_slice());
    assert_eq!(
        decoder.blocks_expected(),
        Some(2),
        "entry 500 is past the disk"
    );
    assert_eq!(decoder.total_len(), Some(stream.len() as u64));
}

#[test]
fn windows_layout_bat_at_0x2000_locators_either_side_and_gaps() {
    let mut layout = Layout::new(4 * MIB, 0x2000, 2);
    layout.footer.disk_type = DiskType::Differencing;
    let w2ru = encode_utf16le(".\\parent-disk.vhd");
    let w2ku = encode_utf16le("C:\\vm\\parent.vhd");
    layout.header.parent_locators[0] = locator(PlatformCode::W2RU, 4096, w2ru.len(), 0x1000);
    layout.header.parent_locators[1] = locator(PlatformCode::W2KU, 65536, w2ku.len(), 0x3000);
    layout.put(0x1000, &w2ru);
    layout.put(0x3000, &w2ku);
    // Block data 4 KiB-aligned: bitmap at 0x13E00, data at 0x14000.
    layout.block(1, 0x13E00, &[0xFF; 512], &pattern(1, 2 << 20));
    let stream = layout.finish();

    let (decoder, events) = decode_in_chunks(&stream, &[511]);
    assert_eq!(
        summarize(&events.unwrap()),
        [
            Seen::Footer,
            Seen::Header,
            Seen::Locator(0, w2ru),
            Seen::Bat,
            Seen::Locator(1, w2ku),
            Seen::Block(1),
            Seen::End
        ]
    );
    assert_eq!(decoder.total_len(), Some(0x13E00 + SPAN + 512));
}

#[test]
fn a_trailing_locator_keeps_its_reserved_space_before_the_footer() {
    let mut layout = Layout::new(2 * MIB, 1536, 1);
    let macx = b"file://./p.vhd";
    layout.header.parent_locators[0] = locator(PlatformCode::MACX, 1024, macx.len(), 2048);
    layout.put(2048, macx);
    layout.extend_to(3072);
    let stream = layout.finish();
    let (decoder, events) = decode_in_chunks(&stream, &[100]);
    assert_eq!(summarize(&events.unwrap()).last(), Some(&Seen::End));
    assert_eq!(decoder.total_len(), Some(3072 + 512));
}

fn locator(code: PlatformCode, data_space: u32, len: usize, data_offset: u64) -> ParentLocator {
    ParentLocator {
        code,
        data_space,
        data_length: len as u32,
        reserved: 0,
        data_offset,
    }
}

fn qemu_img() -> Option<&'static str> {
    let path = "/usr/bin/qemu-img";
    Command::new(path)
        .arg("--version")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|_| path)
}

fn decode_qemu_image(options: &str) {
    let Some(qemu) = qemu_img() else {
        eprintln!("note: qemu-img not found; qemu stream interop test skipped");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let raw_path = dir.path().join("source.raw");
    let vhd_path = dir.path().join("image.vhd");
    let block = 2 << 20;
    let mut raw = vec![0u8; 24 << 20];
    for index in [0usize, 3, 4, 9] {
        raw[index * block..][..block].copy_from_slice(&pattern(index as u64 + 100, block));
    }
    raw[7 * block + 4096..7 * block + 8192].fill(0xA5);
    std::fs::write(&raw_path, &raw).unwrap();
    let out = Command::new(qemu)
        .args(["convert", "-f", "raw", "-O", "vpc", "-o", options])
        .arg(&raw_path)
        .arg(&vhd_path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "qemu-img convert -o {options}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stream = std::fs::read(&vhd_path).unwrap();

    let (decoder, events) = decode_in_chunks(&stream, &[65_536, 1000, 3]);
    let events = events.unwrap_or_else(|e| panic!("{options}: {e}"));
    assert_eq!(decoder.total_len(), Some(stream.len() as u64));
    let mut decoded = Vec::new();
    for event in &events {
        if let StreamEvent::Block {
            index,
            bitmap,
            data,
        } = event
        {
            let start = *index as usize * block;
            let mut expected = raw.get(start..).unwrap_or_default().to_vec();
            expected.resize(block, 0);
            expected.truncate(block);
            assert!(
                bitmap.iter().all(|&b| b == 0xFF),
                "{options}: qemu bitmaps are full"
            );
            assert!(
                data.as_ref() == expected,
                "{options}: block {index} differs"
            );
            decoded.push(*index as usize);
        }
    }
    for index in [0, 3, 4, 7, 9] {
        assert!(decoded.contains(&index), "{options}: block {index} missing");
    }
}

#[test]
fn decodes_qemu_img_dynamic_vhds() {
    decode_qemu_image("subformat=dynamic");
    decode_qemu_image("subformat=dynamic,force_size=on");
}

/// A small stream (512-byte blocks) to mutate: dynamic or differencing, a few blocks.
fn small_stream(differencing: bool) -> Vec<u8> {
    let mut params = EncodeParams::new(
        6 * 512,
        Uuid::from_u128(3),
        VhdTimestamp(0),
        BlockSet::from_iter([1, 2, 5]),
    );
    params.block_size = 512;
    if differencing {
        params.parent = Some(ParentInfo {
            unique_id: Uuid::from_u128(4),
            timestamp: VhdTimestamp(0),
            name: "p.vhd".into(),
        });
    }
    encode_to_vec(params)
}

/// Outcome of decoding, comparable across chunkings: the events, or the error's text.
fn outcome(stream: &[u8], chunks: &[usize]) -> Result<Vec<StreamEvent>, String> {
    decode_in_chunks(stream, chunks)
        .1
        .map_err(|e| e.to_string())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn mutated_streams_fail_cleanly_whatever_the_chunking(
        differencing in any::<bool>(),
        edits in proptest::collection::vec((any::<u16>(), any::<u8>()), 1..6),
        in_metadata in any::<bool>(),
        cut in proptest::option::of(any::<u16>()),
        chunk in 1usize..700,
    ) {
        let mut stream = small_stream(differencing);
        let len = stream.len();
        // Either anywhere, or in the footer, header and BAT with the checksums made good
        // again and the footer copied to the end, so that the layout checks get exercised.
        let reach = if in_metadata { 2560 } else { len };
        for (at, byte) in edits {
            stream[at as usize % reach] = byte;
        }
        if in_metadata {
            let footer_sum = ones_complement_checksum(&stream[..512], 64);
            stream[64..68].copy_from_slice(&footer_sum.to_be_bytes());
            let header_sum = ones_complement_checksum(&stream[512..1536], 36);
            stream[548..552].copy_from_slice(&header_sum.to_be_bytes());
            let copy = stream[..512].to_vec();
            stream[len - 512..].copy_from_slice(&copy);
        }
        if let Some(cut) = cut {
            stream.truncate(cut as usize % (stream.len() + 1));
        }
        let whole = outcome(&stream, &[stream.len()]);
        prop_assert_eq!(outcome(&stream, &[chunk]), whole.clone());
        prop_assert_eq!(outcome(&stream, &[1]), whole);
    }
}

/// Feed `stream` to a validating decoder the way a relay does: skip what it does not need,
/// hand it only what the awaited structure wants, in chunks of `chunk` bytes.
fn validate_by_skipping(stream: &[u8], chunk: usize) -> Result<Vec<StreamEvent>, StreamError> {
    let mut decoder = StreamDecoder::validating();
    let mut buf = BytesMut::new();
    let mut events = Vec::new();
    for piece in stream.chunks(chunk.max(1)) {
        let mut rest = piece;
        while !rest.is_empty() {
            if buf.is_empty() {
                let skipped = decoder.skip(rest.len() as u64) as usize;
                rest = &rest[skipped..];
                if rest.is_empty() {
                    break;
                }
            }
            let wanted = decoder.bytes_wanted(buf.len()).min(rest.len() as u64) as usize;
            buf.extend_from_slice(&rest[..wanted]);
            rest = &rest[wanted..];
            while let Some(event) = decoder.decode(&mut buf)? {
                events.push(event);
            }
        }
    }
    while let Some(event) = decoder.decode_eof(&mut buf)? {
        events.push(event);
    }
    Ok(events)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    #[test]
    fn a_validating_decoder_skips_data_and_sees_the_same_structure(
        blocks_in in proptest::collection::btree_set(0u32..32, 0..12),
        chunk in 1usize..70_000,
        cut in any::<prop::sample::Index>(),
    ) {
        let mut blocks = BlockSet::new(32);
        blocks_in.iter().for_each(|&i| blocks.insert(i));
        let mut params = EncodeParams::new(32 * 4096, Uuid::from_u128(5), VhdTimestamp(1), blocks);
        params.block_size = 4096;
        let stream = encode_to_vec(params);
        let full = validate_by_skipping(&stream, chunk).unwrap();
        let (_, reference) = decode_in_chunks(&stream, &[chunk]);
        prop_assert_eq!(summarize(&full), summarize(&reference.unwrap()));
        for event in &full {
            if let StreamEvent::Block { bitmap, data, .. } = event {
                prop_assert!(data.is_empty() && bitmap.len() == 512);
            }
        }
        // Any truncation is an error, even one inside skipped data.
        let cut = cut.index(stream.len());
        prop_assert!(validate_by_skipping(&stream[..cut], chunk).is_err());
        // A corrupted final footer is caught.
        let mut bad = stream.clone();
        let last = bad.len() - 100;
        bad[last] ^= 1;
        prop_assert!(validate_by_skipping(&bad, chunk).is_err());
    }
}
