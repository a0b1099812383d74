//! `changed()` on a 3-layer chain of a 2 TiB disk: cost must follow the BAT entries only; and
//! opening that chain, which checks each layer's structure.
//! The layers are real VHD files whose blocks live in sparse regions (`bench::chain`), so
//! building them takes well under a second and almost no disk.

use criterion::{Criterion, criterion_group, criterion_main};
use vhdsync::bench::chain::sparse_chain;
use vhdsync::image::{Chain, changed};

fn bench_changed(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let files = sparse_chain(dir.path()).unwrap();
    let leaf_chain = Chain::open(&files.leaf).unwrap();
    let base_chain = Chain::open(&files.base).unwrap();
    assert_eq!(leaf_chain.layers().len(), 4);
    c.bench_function("changed 2 TiB, delta over 3 layers", |b| {
        b.iter(|| changed(&leaf_chain, Some(&base_chain)).count())
    });
    c.bench_function("changed 2 TiB, full over 4 layers", |b| {
        b.iter(|| changed(&leaf_chain, None).count())
    });
    // Opening validates every layer's block layout (sorted BAT entries): it must stay cheap.
    c.bench_function("open 2 TiB chain, 4 layers", |b| {
        b.iter(|| Chain::open(&files.leaf).unwrap().layers().len())
    });
}

criterion_group!(benches, bench_changed);
criterion_main!(benches);
