//! `changed()` on a 3-layer chain of a 2 TiB disk: cost must follow the BAT entries only.
//! The layers are real VHD files whose blocks live in sparse regions, so building them takes
//! seconds and almost no disk.

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::Path;

use criterion::{Criterion, criterion_group, criterion_main};
use uuid::Uuid;
use vhdsync::image::{Chain, CreateOptions, ParentLink, VhdLayer, changed, create};
use vhdsync::vhd::{Bat, SECTOR_SIZE, VhdTimestamp};

/// "2 TiB" in practice: the format maximum, 2040 GiB (qemu's VHD_MAX_SECTORS).
const DISK: u64 = vhdsync::vhd::MAX_VIRTUAL_SIZE;
const BLOCK: u64 = 2 << 20;

/// Mark every `stride`-th block (from `first`) allocated, pointing into a sparse region after
/// the metadata, and grow the file to cover it.
fn allocate(path: &Path, first: u32, stride: u32) {
    let layer = VhdLayer::open(path).unwrap();
    let header = layer.header().unwrap().clone();
    let footer = layer.footer().clone();
    let mut bat = Bat::unallocated(header.max_table_entries);
    let mut next = (header.table_offset + header.bat_bytes()).div_ceil(4096) * 4096 + 8192;
    for index in (first..header.max_table_entries).step_by(stride as usize) {
        bat.set(index, (next / SECTOR_SIZE) as u32);
        next += 512 + BLOCK;
    }
    let file = OpenOptions::new().write(true).open(path).unwrap();
    file.write_all_at(&bat.encode(), header.table_offset)
        .unwrap();
    file.set_len(next + 512).unwrap();
    file.write_all_at(&footer.encode(), next).unwrap();
}

fn layer(dir: &Path, name: &str, parent: Option<&Path>) -> std::path::PathBuf {
    let path = dir.join(name);
    let options = match parent {
        None => CreateOptions::dynamic(DISK),
        Some(p) => CreateOptions::differencing(
            DISK,
            ParentLink {
                uuid: VhdLayer::open(p).unwrap().footer().unique_id,
                timestamp: VhdTimestamp(0),
                relative_path: p.file_name().unwrap().to_string_lossy().into_owned(),
            },
        ),
    };
    create(
        &path,
        &CreateOptions {
            uuid: Uuid::new_v4(),
            ..options
        },
    )
    .unwrap();
    path
}

fn bench_changed(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let root = layer(dir.path(), "root.vhd", None);
    allocate(&root, 0, 2); // half the disk written at some point
    let base = layer(dir.path(), "base.vhd", Some(&root));
    allocate(&base, 1, 8);
    let mid = layer(dir.path(), "mid.vhd", Some(&base));
    allocate(&mid, 3, 16);
    let leaf = layer(dir.path(), "leaf.vhd", Some(&mid));
    let leaf_chain = Chain::open(&leaf).unwrap();
    let base_chain = Chain::open(&base).unwrap();
    assert_eq!(leaf_chain.layers().len(), 4);
    c.bench_function("changed 2 TiB, delta over 3 layers", |b| {
        b.iter(|| changed(&leaf_chain, Some(&base_chain)).count())
    });
    c.bench_function("changed 2 TiB, full over 4 layers", |b| {
        b.iter(|| changed(&leaf_chain, None).count())
    });
}

criterion_group!(benches, bench_changed);
criterion_main!(benches);
