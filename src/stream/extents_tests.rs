use bytes::Bytes;
use proptest::prelude::*;

use super::*;
use crate::stream::StreamEvent;
use crate::stream::test_support::decode_in_chunks;

const MIB: u64 = 1 << 20;

fn stream_for(map: ChangeMap, all_blocks: bool, disk: &[u8]) -> Vec<u8> {
    let block_size = stream_block_size(map.virtual_size());
    stream_in_blocks(map, all_blocks, disk, block_size)
}

/// The stream of `map` over `disk`, in blocks of `block_size`.
fn stream_in_blocks(map: ChangeMap, all_blocks: bool, disk: &[u8], block_size: u32) -> Vec<u8> {
    let mut stream = ExtentStream::with_block_size(
        map,
        all_blocks,
        Uuid::nil(),
        VhdTimestamp::from_unix(0),
        block_size,
    )
    .unwrap();
    let mut out = stream.prelude().to_vec();
    let blocks: Vec<u32> = stream.blocks().collect();
    for index in blocks {
        let mut data = vec![0u8; stream.block_size() as usize];
        let mask = if all_blocks {
            u32::MAX
        } else {
            stream.changed_mask(index)
        };
        for read in stream.reads(index, mask) {
            let at = read.disk_offset as usize;
            data[read.block_offset as usize..][..read.len as usize]
                .copy_from_slice(&disk[at..at + read.len as usize]);
        }
        let mask = if all_blocks {
            nonzero_mask(&data)
        } else {
            mask
        };
        for frame in stream.block_frames(index, Bytes::from(data), mask).unwrap() {
            out.extend_from_slice(&frame);
        }
    }
    out.extend_from_slice(&stream.trailer().unwrap());
    assert_eq!(out.len() as u64, stream.total_len());
    out
}

/// Apply a stream onto `replica` as XAPI's import does: only the sectors bitmaps mark.
fn apply(stream: &[u8], replica: &mut [u8]) {
    let (_, events) = decode_in_chunks(stream, &[4096, 70000, 1]);
    let mut block_size = 0u64;
    for event in events.unwrap() {
        match event {
            StreamEvent::Header(h) => block_size = u64::from(h.block_size),
            StreamEvent::Block {
                index,
                bitmap,
                data,
            } => {
                let start = u64::from(index) * block_size;
                for sector in 0..block_size / SECTOR_SIZE {
                    if bitmap[(sector / 8) as usize] & (0x80 >> (sector % 8)) != 0 {
                        let at = (start + sector * SECTOR_SIZE) as usize;
                        let from = (sector * SECTOR_SIZE) as usize;
                        replica[at..at + SECTOR_SIZE as usize]
                            .copy_from_slice(&data[from..from + SECTOR_SIZE as usize]);
                    }
                }
            }
            _ => {}
        }
    }
}

#[test]
fn block_size_grows_with_the_disk_to_keep_the_bat_small() {
    assert_eq!(stream_block_size(256 * MIB), 64 << 10);
    assert_eq!(stream_block_size(64 << 30), 64 << 10);
    assert_eq!(stream_block_size(100 << 30), 128 << 10);
    assert_eq!(stream_block_size(2040 << 30), 2 << 20);
}

#[test]
fn xapi_bitmaps_are_checked_against_the_disk_size() {
    let size = 20 * EXTENT_SIZE; // 20 extents: 3 bytes, the last 4 bits spare
    let ok = base64::engine::general_purpose::STANDARD.encode([0x80, 0x01, 0xF0]);
    let map = ChangeMap::from_xapi(&ok, size).unwrap();
    assert_eq!(map.changed(), 6);
    assert!(map.is_changed(0) && map.is_changed(15) && map.is_changed(19));
    assert!(!map.is_changed(1) && !map.is_changed(20));

    let short = base64::engine::general_purpose::STANDARD.encode([0x80, 0x01]);
    let stray = base64::engine::general_purpose::STANDARD.encode([0, 0, 0x08]);
    let long_zero = base64::engine::general_purpose::STANDARD.encode([0, 0, 0, 0]);
    for (text, why) in [
        (short.as_str(), "3 bytes"),
        (stray.as_str(), "past the disk's end"),
        ("not base64!", "base64"),
    ] {
        let e = ChangeMap::from_xapi(text, size).unwrap_err().to_string();
        assert!(e.contains("changed_blocks") && e.contains(why), "{e}");
    }
    assert_eq!(ChangeMap::from_xapi(&long_zero, size).unwrap().changed(), 0);
    let huge = "A".repeat(1 << 20);
    assert!(ChangeMap::from_xapi(&huge, size).is_err());
}

#[test]
fn a_delta_carries_only_the_changed_extents_and_marks_only_them() {
    let size = 4 * MIB + 4096; // a last, partial extent
    let mut map = ChangeMap::none(size);
    for extent in [0, 1, 5, 64] {
        map.set(extent);
    }
    let stream = ExtentStream::new(map, false, Uuid::nil(), VhdTimestamp::from_unix(0)).unwrap();
    assert_eq!(stream.block_size(), 64 << 10);
    assert_eq!(stream.blocks().collect::<Vec<_>>(), [0, 1, 5, 64]);
    // Four blocks of 64 KiB and their bitmaps: nothing unchanged is carried.
    assert_eq!(
        stream.total_len(),
        2048 + 512 + 4 * (512 + EXTENT_SIZE) + 512
    );
    assert_eq!(
        stream.reads(64, 1),
        [Read {
            disk_offset: 4 * MIB,
            len: 4096,
            block_offset: 0
        }]
    );
}

#[test]
fn big_blocks_get_partial_bitmaps_and_coalesced_reads() {
    let size = 2040 << 30;
    let mut map = ChangeMap::none(size);
    for extent in [0, 1, 3, 31, 32] {
        map.set(extent);
    }
    let mut stream =
        ExtentStream::new(map, false, Uuid::nil(), VhdTimestamp::from_unix(0)).unwrap();
    assert_eq!(stream.block_size(), 2 << 20);
    assert_eq!(stream.blocks().collect::<Vec<_>>(), [0, 1]);
    let mask = stream.changed_mask(0);
    assert_eq!(mask, 0b1000_0000_0000_0000_0000_0000_0000_1011);
    let reads = stream.reads(0, mask);
    assert_eq!(reads.len(), 3);
    assert_eq!((reads[0].disk_offset, reads[0].len), (0, 128 << 10));
    let [bitmap, _] = stream
        .block_frames(0, Bytes::from(vec![0; 2 << 20]), mask)
        .unwrap();
    assert_eq!(bitmap.len(), 512);
    // Extents 0, 1 (sectors 0..256: bytes 0..32), 3 (bytes 48..64), 31 (bytes 496..512).
    assert!(bitmap[..32].iter().all(|b| *b == 0xFF));
    assert!(bitmap[32..48].iter().all(|b| *b == 0));
    assert!(bitmap[48..64].iter().all(|b| *b == 0xFF));
    assert!(bitmap[64..496].iter().all(|b| *b == 0));
    assert!(bitmap[496..].iter().all(|b| *b == 0xFF));
}

#[test]
fn a_full_skips_zero_extents_so_the_target_stays_sparse() {
    let size = MIB;
    let mut disk = vec![0u8; size as usize];
    disk[70_000] = 7;
    let stream = stream_for(ChangeMap::all(size), true, &disk);
    let mut replica = vec![0xEEu8; size as usize];
    apply(&stream, &mut replica);
    // Only extent 1 was written: the others keep what the target had.
    assert!(replica[..EXTENT_SIZE as usize].iter().all(|b| *b == 0xEE));
    assert_eq!(replica[70_000], 7);
    assert!(
        replica[2 * EXTENT_SIZE as usize..]
            .iter()
            .all(|b| *b == 0xEE)
    );
}

/// One step of a guest's history: a write, or a snapshot followed by a replication cycle.
#[derive(Debug, Clone)]
enum Step {
    Write { offset: u64, len: u64, seed: u8 },
    Snapshot,
}

fn step(size: u64) -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (0..size, 1..3 * EXTENT_SIZE, any::<u8>()).prop_map(move |(offset, len, seed)| {
            Step::Write { offset, len: len.min(size - offset), seed }
        }),
        1 => Just(Step::Snapshot),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// A guest writes, snapshots come, the change log between two snapshots marks every
    /// 64 KiB extent written in between, and the deltas built from it, applied on the
    /// previous replica, give the new snapshot: the first cycle a full onto a blank disk.
    /// Blocks of several extents (up to 2 MiB) carry partial bitmaps.
    #[test]
    fn cbt_deltas_applied_on_the_replica_equal_the_snapshot(
        block_shift in 0u32..6,
        size_extents in 1u64..80,
        tail in prop_oneof![Just(0u64), 1u64..128],
        steps in prop::collection::vec(step(80 * EXTENT_SIZE), 1..24),
    ) {
        // Sector-aligned sizes, some with a partial last extent.
        let size = size_extents * EXTENT_SIZE - tail * SECTOR_SIZE;
        let block_size = (EXTENT_SIZE as u32) << block_shift;
        let mut disk = vec![0u8; size as usize];
        let mut log = ChangeMap::none(size);
        let mut replica: Option<Vec<u8>> = None;
        for step in steps.into_iter().chain([Step::Snapshot]) {
            match step {
                Step::Write { offset, len, seed } => {
                    if offset >= size {
                        continue;
                    }
                    let end = (offset + len).min(size);
                    for (i, byte) in disk[offset as usize..end as usize].iter_mut().enumerate() {
                        *byte = seed.wrapping_add(i as u8) | 1;
                    }
                    for extent in offset / EXTENT_SIZE..end.div_ceil(EXTENT_SIZE) {
                        log.set(extent);
                    }
                }
                Step::Snapshot => {
                    let (stream, mut target) = match replica.take() {
                        None => (
                            stream_in_blocks(ChangeMap::all(size), true, &disk, block_size),
                            vec![0; size as usize],
                        ),
                        Some(previous) => {
                            (stream_in_blocks(log.clone(), false, &disk, block_size), previous)
                        }
                    };
                    apply(&stream, &mut target);
                    prop_assert!(target == disk, "replica differs from the snapshot");
                    replica = Some(target);
                    log = ChangeMap::none(size);
                }
            }
        }
    }
}

#[test]
fn block_sizes_outside_64k_to_2m_are_refused() {
    for bad in [32 << 10, 3 << 16, 4 << 20] {
        let e = ExtentStream::with_block_size(
            ChangeMap::none(MIB),
            false,
            Uuid::nil(),
            VhdTimestamp(0),
            bad,
        )
        .unwrap_err();
        assert!(e.to_string().contains("block_size"), "{e}");
    }
}
