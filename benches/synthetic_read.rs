//! The sector-exact synthetic read: a 3-layer chain whose upper layers hold partial blocks
//! (every other 4 KiB, then every fourth sector), so every block is merged sector by sector
//! through the bitmaps rather than sliced from one layer.

use std::path::Path;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use vhdsync::bench::chain::layer;
use vhdsync::image::{BlockData, Chain, VhdWriter};

const DISK: u64 = 64 << 20;

/// Write `len` bytes of `fill` every `stride` bytes over the whole disk.
fn scatter(path: &Path, stride: u64, len: usize, fill: u8) {
    let mut writer = VhdWriter::open(path).unwrap();
    let data = vec![fill; len];
    for offset in (0..DISK).step_by(stride as usize) {
        writer.write_sectors(offset, &data).unwrap();
    }
    // Publishes the new blocks in the BAT: without it the layer would read as empty.
    writer.flush().unwrap();
}

fn bench_read(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let root = layer(dir.path(), "root.vhd", DISK, None).unwrap();
    scatter(&root, 1 << 20, 1 << 20, 1);
    let mid = layer(dir.path(), "mid.vhd", DISK, Some(&root)).unwrap();
    scatter(&mid, 8192, 4096, 2);
    let leaf = layer(dir.path(), "leaf.vhd", DISK, Some(&mid)).unwrap();
    scatter(&leaf, 2048, 512, 3);
    let chain = Chain::open(&leaf).unwrap();
    let blocks = (DISK / u64::from(chain.block_size())) as u32;
    // Every fourth sector from the leaf; the rest of each first 4 KiB of 8 from the middle
    // layer, of each second 4 KiB from the root.
    let mut first = vec![0u8; 8192];
    chain.read_at(0, &mut first);
    let sectors: Vec<u8> = first.chunks(512).map(|s| s[0]).collect();
    assert_eq!(
        sectors,
        [3, 2, 2, 2, 3, 2, 2, 2, 3, 1, 1, 1, 3, 1, 1, 1],
        "the chain's layers"
    );

    let mut group = c.benchmark_group("synthetic read");
    group.throughput(Throughput::Bytes(DISK));
    group.sample_size(20);
    group.bench_function("64 MiB through 3 partial layers, block by block", |b| {
        b.iter(|| {
            (0..blocks)
                .map(|i| match chain.block_data(i) {
                    BlockData::Data(bytes) => bytes[bytes.len() - 1] as u64,
                    BlockData::Zero => 0,
                })
                .sum::<u64>()
        })
    });
    let mut buf = vec![0u8; 1 << 20];
    group.bench_function("64 MiB through 3 partial layers, 1 MiB read_at", |b| {
        b.iter(|| {
            for offset in (0..DISK).step_by(buf.len()) {
                chain.read_at(offset, &mut buf);
            }
            buf[0]
        })
    });
    group.finish();
}

criterion_group!(benches, bench_read);
criterion_main!(benches);
