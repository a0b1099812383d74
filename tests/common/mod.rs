//! Helpers shared by integration tests: a file-SR-like chain builder over real VHD files.
#![allow(dead_code)]

pub mod lab_pair;
pub mod lab_serve;
pub mod npm;
pub mod xo_writer;

use std::path::{Path, PathBuf};

use uuid::Uuid;
use vhdsync::image::{Chain, CreateOptions, ParentLink, VhdLayer, VhdWriter, create};
use vhdsync::vhd::VhdTimestamp;

/// A VDI as a file SR keeps it: a leaf VHD over read-only parents. `snapshot` freezes the leaf
/// and hangs two fresh children under it, one for the VDI and one for the snapshot.
pub struct FileSrVdi {
    dir: PathBuf,
    pub leaf: PathBuf,
    pub virtual_size: u64,
    block_size: u32,
    next: u32,
}

impl FileSrVdi {
    pub fn new(dir: &Path, virtual_size: u64, block_size: u32) -> FileSrVdi {
        let leaf = dir.join("vdi-0.vhd");
        let mut options = CreateOptions::dynamic(virtual_size);
        options.block_size = block_size;
        create(&leaf, &options).unwrap();
        FileSrVdi {
            dir: dir.to_path_buf(),
            leaf,
            virtual_size,
            block_size,
            next: 1,
        }
    }

    pub fn write(&self, offset: u64, data: &[u8]) {
        let mut w = VhdWriter::open(&self.leaf).unwrap();
        w.write_sectors(offset, data).unwrap();
        w.flush().unwrap();
    }

    fn child_of(&mut self, parent: &Path) -> PathBuf {
        let path = self.dir.join(format!("vdi-{}.vhd", self.next));
        self.next += 1;
        let parent_layer = VhdLayer::open(parent).unwrap();
        let mut options = CreateOptions::differencing(
            self.virtual_size,
            ParentLink {
                uuid: parent_layer.footer().unique_id,
                timestamp: VhdTimestamp(0),
                relative_path: parent.file_name().unwrap().to_string_lossy().into_owned(),
            },
        );
        options.block_size = self.block_size;
        options.uuid = Uuid::new_v4();
        create(&path, &options).unwrap();
        path
    }

    /// Snapshot: returns the path of the snapshot's (empty) leaf.
    pub fn snapshot(&mut self) -> PathBuf {
        let frozen = self.leaf.clone();
        self.leaf = self.child_of(&frozen);
        self.child_of(&frozen)
    }

    pub fn chain(&self) -> Chain {
        Chain::open(&self.leaf).unwrap()
    }
}

/// Deterministic pseudo-random bytes (xorshift), so failures reproduce.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

pub fn read_all(chain: &Chain) -> Vec<u8> {
    let mut out = vec![0u8; chain.virtual_size() as usize];
    chain.read_at(0, &mut out);
    out
}
