//! The chain view and changed-block sets against a plain in-memory sector array. proptest
//! generates sector-level write histories interleaved with snapshots, realised as real VHD
//! chains on disk the way a file SR builds them.

mod common;

use common::{FileSrVdi, pattern, read_all};
use proptest::prelude::*;
use vhdsync::image::{BlockData, Chain, changed};
use vhdsync::stream::apply::{ApplyError, ApplyTarget};
use vhdsync::stream::{ChainExport, feed};
use vhdsync::vhd::{SECTOR_SIZE, VhdTimestamp, bitmap};

const SECTOR: u64 = 512;

/// The reference model's disk as an apply target: a plain byte array.
struct MemoryDisk(Vec<u8>);

impl ApplyTarget for MemoryDisk {
    fn virtual_size(&self) -> u64 {
        self.0.len() as u64
    }
    fn write_block(&mut self, offset: u64, present: &[u8], data: &[u8]) -> Result<(), ApplyError> {
        for sector in 0..(data.len() as u64 / SECTOR_SIZE) {
            let at = offset + sector * SECTOR_SIZE;
            if bitmap::is_set(present, sector as u32) && at < self.0.len() as u64 {
                let from = (sector * SECTOR_SIZE) as usize;
                let len = SECTOR_SIZE.min(self.0.len() as u64 - at) as usize;
                self.0[at as usize..at as usize + len].copy_from_slice(&data[from..from + len]);
            }
        }
        Ok(())
    }
    fn finish(&mut self) -> Result<(), ApplyError> {
        Ok(())
    }
}

/// `export(base -> leaf)` through the encoder, the decoder and apply, onto `start`.
fn export_and_apply(leaf: &std::path::Path, base: Option<&Chain>, start: Vec<u8>) -> Vec<u8> {
    let export = ChainExport::new(
        Chain::open(leaf).unwrap(),
        base,
        uuid::Uuid::new_v4(),
        VhdTimestamp(0),
    )
    .unwrap();
    let total = export.total_len();
    let mut stream = Vec::new();
    for frame in export.frames() {
        stream.extend_from_slice(&frame.unwrap());
    }
    assert_eq!(stream.len() as u64, total, "announced length");
    let mut disk = Some(MemoryDisk(start));
    let mut out = None;
    let report = feed(&stream[..], |_| Ok(Collect(disk.take().unwrap(), &mut out))).unwrap();
    assert_eq!(report.stream_bytes, total);
    out.unwrap()
}

/// Hands the disk back when finished, so the test can read it.
struct Collect<'a>(MemoryDisk, &'a mut Option<Vec<u8>>);

impl ApplyTarget for Collect<'_> {
    fn virtual_size(&self) -> u64 {
        self.0.virtual_size()
    }
    fn write_block(&mut self, offset: u64, present: &[u8], data: &[u8]) -> Result<(), ApplyError> {
        self.0.write_block(offset, present, data)
    }
    fn finish(&mut self) -> Result<(), ApplyError> {
        *self.1 = Some(std::mem::take(&mut self.0.0));
        Ok(())
    }
}

#[derive(Debug, Clone)]
enum Op {
    Write {
        sector: u64,
        sectors: u64,
        seed: u64,
    },
    Snapshot,
}

fn ops(disk_sectors: u64) -> impl Strategy<Value = Vec<Op>> {
    let write =
        (0..disk_sectors, 1u64..24, any::<u64>()).prop_map(move |(sector, n, seed)| Op::Write {
            sector,
            sectors: n.min(disk_sectors - sector),
            seed,
        });
    prop::collection::vec(prop_oneof![4 => write, 1 => Just(Op::Snapshot)], 1..40)
}

struct Snapshot {
    leaf: std::path::PathBuf,
    content: Vec<u8>,
    /// Blocks written before this snapshot, per earlier snapshot index: blocks_since[j].
    written_since: Vec<std::collections::BTreeSet<u32>>,
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn view_and_changed_blocks_match_the_model(
        block_sectors in prop::sample::select(vec![1u64, 8, 16]),
        blocks in 2u64..7,
        tail_sectors in 0u64..8,
        history in ops(64),
    ) {
        let block_size = block_sectors * SECTOR;
        let disk_sectors = (blocks * block_sectors + tail_sectors.min(block_sectors - 1)).min(64);
        let size = disk_sectors * SECTOR;
        let dir = tempfile::tempdir().unwrap();
        let mut vdi = FileSrVdi::new(dir.path(), size, block_size as u32);
        let mut model = vec![0u8; size as usize];
        let mut snapshots: Vec<Snapshot> = Vec::new();
        // Blocks written since each snapshot was taken.
        let mut dirty_since: Vec<std::collections::BTreeSet<u32>> = Vec::new();
        for op in history {
            match op {
                Op::Write { sector, sectors, seed } => {
                    if sector >= disk_sectors { continue; }
                    let sectors = sectors.min(disk_sectors - sector).max(1);
                    let data = pattern(seed, (sectors * SECTOR) as usize);
                    vdi.write(sector * SECTOR, &data);
                    model[(sector * SECTOR) as usize..((sector + sectors) * SECTOR) as usize].copy_from_slice(&data);
                    let first = (sector * SECTOR / block_size) as u32;
                    let last = (((sector + sectors) * SECTOR - 1) / block_size) as u32;
                    for set in dirty_since.iter_mut() { set.extend(first..=last); }
                }
                Op::Snapshot => {
                    let leaf = vdi.snapshot();
                    snapshots.push(Snapshot { leaf, content: model.clone(), written_since: dirty_since.clone() });
                    dirty_since.push(Default::default());
                }
            }
        }
        // The live VDI reads as the model.
        prop_assert_eq!(read_all(&vdi.chain()), model.clone());
        let chains: Vec<Chain> = snapshots.iter().map(|s| Chain::open(&s.leaf).unwrap()).collect();
        for (k, (snap, chain)) in snapshots.iter().zip(&chains).enumerate() {
            prop_assert_eq!(&read_all(chain), &snap.content, "snapshot {} content", k);
            // Block-at-a-time reads (the streaming path) agree with byte reads.
            for index in 0..chain.block_count() {
                let start = index as usize * block_size as usize;
                let end = (start + block_size as usize).min(size as usize);
                match chain.block_data(index) {
                    BlockData::Zero => prop_assert!(snap.content[start..end].iter().all(|&b| b == 0)),
                    BlockData::Data(bytes) => prop_assert_eq!(&bytes[..], &snap.content[start..end]),
                }
            }
            // A full export's block set covers every non-zero block.
            let full = changed(chain, None);
            for index in 0..chain.block_count() {
                let start = index as usize * block_size as usize;
                let end = (start + block_size as usize).min(size as usize);
                if snap.content[start..end].iter().any(|&b| b != 0) {
                    prop_assert!(full.contains(index), "block {} has data but is not in the full set", index);
                }
            }
            // A full export applied onto zeros is the snapshot.
            let applied = export_and_apply(&snap.leaf, None, vec![0; size as usize]);
            prop_assert_eq!(&applied, &snap.content, "full export {} applied", k);
            // Deltas from every earlier snapshot: exactly the blocks written in between.
            for j in 0..k {
                let delta = changed(chain, Some(&chains[j]));
                let expected: Vec<u32> = snap.written_since[j].iter().copied().collect();
                prop_assert_eq!(delta.iter().collect::<Vec<_>>(), expected.clone(), "delta {} -> {}", j, k);
                // Applying the delta blocks onto the base's content gives the leaf's content.
                let mut rebuilt = snapshots[j].content.clone();
                for index in delta.iter() {
                    let start = index as usize * block_size as usize;
                    let end = (start + block_size as usize).min(size as usize);
                    chain.read_at(start as u64, &mut rebuilt[start..end]);
                }
                prop_assert_eq!(&rebuilt, &snap.content);
                // The same through the wire format: export, decode, apply onto the base.
                let applied = export_and_apply(&snap.leaf, Some(&chains[j]), snapshots[j].content.clone());
                prop_assert_eq!(&applied, &snap.content, "export {} -> {} applied", j, k);
                // The reverse direction names the same blocks (symmetric difference).
                let reverse = changed(&chains[j], Some(chain));
                prop_assert_eq!(reverse.iter().collect::<Vec<_>>(), expected);
            }
        }
    }
}

#[test]
fn partial_bitmap_sectors_come_from_the_parent() {
    // The case other implementations get wrong: a child block holding sectors 0-7 and an
    // isolated sector 100 inside a byte must not hide the parent's sectors 8-99 and 101-103.
    let dir = tempfile::tempdir().unwrap();
    let mut vdi = FileSrVdi::new(dir.path(), 4 << 20, 2 << 20);
    let parent_data = pattern(1, 2 << 20);
    vdi.write(0, &parent_data);
    vdi.snapshot();
    let child_head = pattern(2, 8 * 512);
    let child_isolated = pattern(3, 512);
    vdi.write(0, &child_head);
    vdi.write(100 * 512, &child_isolated);
    let mut expected = parent_data.clone();
    expected[..8 * 512].copy_from_slice(&child_head);
    expected[100 * 512..101 * 512].copy_from_slice(&child_isolated);
    let content = read_all(&vdi.chain());
    assert_eq!(&content[..2 << 20], &expected[..]);
    assert!(content[2 << 20..].iter().all(|&b| b == 0));
}
