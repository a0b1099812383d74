//! A snapshot chain of the largest VHD disk (2040 GiB) for timing `changed()`: real VHD
//! files whose blocks point into sparse regions, so building it takes well under a second
//! and almost no disk. Shared by `vhdsync bench` and `benches/changed.rs`.

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use uuid::Uuid;

use super::BenchError;
use crate::image::{CreateOptions, ImageError, ParentLink, VhdLayer, create};
use crate::vhd::{Bat, DEFAULT_BLOCK_SIZE, MAX_VIRTUAL_SIZE, SECTOR_SIZE, VhdTimestamp};

/// The files of the chain: `root <- base <- mid <- leaf`. `base` is the previous snapshot,
/// so a delta reads the BATs of `mid` and `leaf`, a full those of all four.
pub struct SparseChain {
    pub root: PathBuf,
    pub base: PathBuf,
    pub mid: PathBuf,
    pub leaf: PathBuf,
}

/// Build the chain in `dir`: half the root's blocks allocated, every 8th of base's and every
/// 16th of mid's; the leaf empty.
pub fn sparse_chain(dir: &Path) -> Result<SparseChain, BenchError> {
    let root = layer(dir, "root.vhd", MAX_VIRTUAL_SIZE, None)?;
    allocate(&root, 0, 2)?;
    let base = layer(dir, "base.vhd", MAX_VIRTUAL_SIZE, Some(&root))?;
    allocate(&base, 1, 8)?;
    let mid = layer(dir, "mid.vhd", MAX_VIRTUAL_SIZE, Some(&base))?;
    allocate(&mid, 3, 16)?;
    let leaf = layer(dir, "leaf.vhd", MAX_VIRTUAL_SIZE, Some(&mid))?;
    Ok(SparseChain {
        root,
        base,
        mid,
        leaf,
    })
}

fn image_error(e: ImageError) -> BenchError {
    BenchError::new("building the 2 TiB chain", e.to_string())
}

/// A new empty VHD `dir/name` of `virtual_size`: dynamic, or differencing on `parent` (in the
/// same folder).
pub fn layer(
    dir: &Path,
    name: &str,
    virtual_size: u64,
    parent: Option<&Path>,
) -> Result<PathBuf, BenchError> {
    let path = dir.join(name);
    let options = match parent {
        None => CreateOptions::dynamic(virtual_size),
        Some(p) => CreateOptions::differencing(
            virtual_size,
            ParentLink {
                uuid: VhdLayer::open(p).map_err(image_error)?.footer().unique_id,
                timestamp: VhdTimestamp(0),
                relative_path: name_of(p),
            },
        ),
    };
    let options = CreateOptions {
        uuid: Uuid::new_v4(),
        ..options
    };
    create(&path, &options).map_err(image_error)?;
    Ok(path)
}

fn name_of(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Mark every `stride`-th block (from `first`) allocated, pointing into a sparse region after
/// the metadata, and grow the file to cover it.
fn allocate(path: &Path, first: u32, stride: u32) -> Result<(), BenchError> {
    let layer = VhdLayer::open(path).map_err(image_error)?;
    let header = layer
        .header()
        .ok_or_else(|| BenchError::new("building the 2 TiB chain", "a layer has no header".into()))?
        .clone();
    let footer = layer.footer().clone();
    let block = u64::from(DEFAULT_BLOCK_SIZE);
    let mut bat = Bat::unallocated(header.max_table_entries);
    let mut next = (header.table_offset + header.bat_bytes()).div_ceil(4096) * 4096 + 8192;
    for index in (first..header.max_table_entries).step_by(stride as usize) {
        bat.set(index, (next / SECTOR_SIZE) as u32);
        next += SECTOR_SIZE + block;
    }
    let io = |e| BenchError::io("allocating blocks", path, e);
    let file = OpenOptions::new().write(true).open(path).map_err(io)?;
    file.write_all_at(&bat.encode(), header.table_offset)
        .map_err(io)?;
    file.set_len(next + SECTOR_SIZE).map_err(io)?;
    file.write_all_at(&footer.encode(), next).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::{Chain, changed};

    #[test]
    fn the_chain_has_four_layers_and_the_expected_changed_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let files = sparse_chain(dir.path()).unwrap();
        let leaf = Chain::open(&files.leaf).unwrap();
        let base = Chain::open(&files.base).unwrap();
        assert_eq!(leaf.layers().len(), 4);
        let blocks = (MAX_VIRTUAL_SIZE / u64::from(DEFAULT_BLOCK_SIZE)) as u32;
        // Since base: mid's every 16th block from 3, all odd, none in root's even half.
        assert_eq!(changed(&leaf, Some(&base)).count(), blocks.div_ceil(16));
        // In all: root's even half and base's blocks (odd), mid's fall in base's or not.
        assert!(changed(&leaf, None).count() > blocks / 2);
        assert!(files.root.is_file() && files.mid.is_file());
    }
}
