//! The lab host's file SR against a byte-vector model of each VDI: guest writes at unaligned
//! offsets, snapshots, clones, resizes, destroys with garbage collection, restarts and
//! concurrent writers.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;

use sha2::{Digest, Sha256};
use uuid::Uuid;
use vhdsync::image::changed;
use vhdsync::lab::sr::{FileSr, Operation, SrError};

use common::{pattern, read_all};

const MIB: u64 = 1 << 20;
const BLOCK: u64 = 2 * MIB;

/// What the guest should see on a VDI.
#[derive(Clone)]
struct Model(Vec<u8>);

impl Model {
    fn new(size: u64) -> Model {
        Model(vec![0; size as usize])
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        self.0[offset as usize..offset as usize + data.len()].copy_from_slice(data);
    }

    fn sha256(&self) -> String {
        hex::encode(Sha256::digest(&self.0))
    }
}

/// Deterministic unaligned writes: (offset, length) pairs inside `size`, from `seed`.
fn unaligned_writes(seed: u64, count: usize, size: u64) -> Vec<(u64, usize)> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    (0..count)
        .map(|_| {
            let len = 1 + (next() % (300 * 1024)) as usize;
            let offset = next() % (size - len as u64);
            (offset, len)
        })
        .collect()
}

/// Apply the same writes to the SR and the model; returns the blocks they touched.
fn write_both(sr: &FileSr, vdi: Uuid, model: &mut Model, seed: u64, count: usize) -> BTreeSet<u32> {
    let size = model.0.len() as u64;
    let mut touched = BTreeSet::new();
    for (i, (offset, len)) in unaligned_writes(seed, count, size).into_iter().enumerate() {
        let data = pattern(seed * 1000 + i as u64, len);
        sr.write(vdi, offset, &data).unwrap();
        model.write(offset, &data);
        touched.extend((offset / BLOCK) as u32..=((offset + len as u64 - 1) / BLOCK) as u32);
    }
    touched
}

/// Compares the chain's view with the model. Digests are checked by the tests about them
/// only: SHA-256 is slow in unoptimised test builds.
fn assert_content(sr: &FileSr, vdi: Uuid, model: &Model) {
    assert_eq!(sr.virtual_size(vdi).unwrap(), model.0.len() as u64);
    let content = read_all(&sr.chain(vdi).unwrap());
    if let Some(at) = content.iter().zip(&model.0).position(|(a, b)| a != b) {
        panic!("VDI {vdi}: content differs from the model's at byte {at}");
    }
}

fn assert_digest(sr: &FileSr, vdi: Uuid, model: &Model) {
    assert_eq!(sr.hash(vdi).unwrap(), model.sha256(), "VDI {vdi}: digest");
}

fn vhd_files(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|name| name.ends_with(".vhd"))
        .collect()
}

/// Every VHD file of the SR passes the structural check without even a note.
fn assert_files_clean(dir: &Path) {
    for name in vhd_files(dir) {
        let bytes = std::fs::read(dir.join(&name)).unwrap();
        let report = vhdsync::image::check::check_bytes(&bytes).unwrap();
        assert!(
            report.is_clean() && report.notes.is_empty(),
            "{name}: {report:?}"
        );
    }
}

fn file_name(path: &Path) -> String {
    path.file_name().unwrap().to_string_lossy().into_owned()
}

#[test]
fn unaligned_guest_writes_match_the_model() {
    let dir = tempfile::tempdir().unwrap();
    let sr = FileSr::open(dir.path()).unwrap();
    let vdi = Uuid::new_v4();
    sr.create(vdi, 8 * MIB).unwrap();
    let mut model = Model::new(8 * MIB);
    assert_digest(&sr, vdi, &model);
    write_both(&sr, vdi, &mut model, 1, 24);
    // A few tiny writes inside single sectors, including one across a block boundary.
    for (offset, data) in [(7, vec![1u8]), (BLOCK - 3, vec![2; 9]), (1000, vec![3; 20])] {
        sr.write(vdi, offset, &data).unwrap();
        model.write(offset, &data);
    }
    assert_content(&sr, vdi, &model);
    assert_digest(&sr, vdi, &model);
}

#[test]
fn unaligned_and_zero_writes_keep_the_parents_bytes_in_edge_sectors() {
    let dir = tempfile::tempdir().unwrap();
    let sr = FileSr::open(dir.path()).unwrap();
    let (vdi, snap) = (Uuid::new_v4(), Uuid::new_v4());
    sr.create(vdi, 8 * MIB).unwrap();
    let mut model = Model::new(8 * MIB);
    let base = pattern(9, 8 * MIB as usize);
    sr.write(vdi, 0, &base).unwrap();
    model.write(0, &base);
    sr.snapshot(vdi, snap).unwrap();
    // On the fresh empty leaf, each write covers only parts of its edge sectors.
    for (offset, data) in [
        (100, vec![0u8; 50]),
        (3 * MIB + 511, vec![0u8; 2]),
        (5 * MIB + 1, pattern(10, 4000)),
    ] {
        sr.write(vdi, offset, &data).unwrap();
        model.write(offset, &data);
    }
    assert_content(&sr, vdi, &model);
    assert_digest(&sr, vdi, &model);
    assert_content(&sr, snap, &Model(base));
}

#[test]
fn snapshots_freeze_content_and_changed_blocks_are_exactly_the_writes_between() {
    let dir = tempfile::tempdir().unwrap();
    let sr = FileSr::open(dir.path()).unwrap();
    let (vdi, snap1, snap2) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    sr.create(vdi, 16 * MIB).unwrap();
    let mut model = Model::new(16 * MIB);
    write_both(&sr, vdi, &mut model, 2, 10);
    sr.snapshot(vdi, snap1).unwrap();
    let at_snap1 = model.clone();
    let between = write_both(&sr, vdi, &mut model, 3, 6);
    sr.snapshot(vdi, snap2).unwrap();
    let at_snap2 = model.clone();
    write_both(&sr, vdi, &mut model, 4, 6);

    assert_content(&sr, snap1, &at_snap1);
    assert_content(&sr, snap2, &at_snap2);
    assert_content(&sr, vdi, &model);
    assert!(sr.is_read_only(snap1).unwrap() && !sr.is_read_only(vdi).unwrap());

    assert_files_clean(dir.path());

    let delta = changed(&sr.chain(snap2).unwrap(), Some(&sr.chain(snap1).unwrap()));
    let delta: BTreeSet<u32> = delta.iter().collect();
    assert_eq!(delta, between);

    // Both children of a snapshot point at the frozen, hidden former leaf.
    let snap1_chain = sr.chain(snap1).unwrap();
    let parent = &snap1_chain.layers()[1];
    assert_eq!(parent.footer().hidden, 1);
    assert_eq!(
        sr.vhd_parent(snap1).unwrap(),
        Some(parent.footer().unique_id)
    );
    assert_eq!(
        file_name(parent.path()),
        format!("{}.vhd", parent.footer().unique_id)
    );
    assert_eq!(
        sr.vhd_parent(snap2).unwrap(),
        Some(sr.chain(snap2).unwrap().layers()[1].footer().unique_id)
    );
}

#[test]
fn writes_to_a_clone_leave_the_original_alone() {
    let dir = tempfile::tempdir().unwrap();
    let sr = FileSr::open(dir.path()).unwrap();
    let (vdi, snap, clone) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    sr.create(vdi, 16 * MIB).unwrap();
    let mut model = Model::new(16 * MIB);
    write_both(&sr, vdi, &mut model, 5, 8);
    sr.snapshot(vdi, snap).unwrap();
    // A clone of a read-only snapshot is writable.
    sr.clone(snap, clone).unwrap();
    assert!(!sr.is_read_only(clone).unwrap());
    let mut clone_model = model.clone();
    write_both(&sr, clone, &mut clone_model, 6, 8);
    assert_content(&sr, clone, &clone_model);
    assert_content(&sr, vdi, &model);
    assert_content(&sr, snap, &model);
}

#[test]
fn writes_to_a_snapshot_or_past_the_end_fail() {
    let dir = tempfile::tempdir().unwrap();
    let sr = FileSr::open(dir.path()).unwrap();
    let (vdi, snap) = (Uuid::new_v4(), Uuid::new_v4());
    sr.create(vdi, 8 * MIB).unwrap();
    sr.snapshot(vdi, snap).unwrap();
    let err = sr.write(snap, 0, &[1; 512]).unwrap_err();
    assert!(matches!(err, SrError::ReadOnly { op: Operation::Write, vdi } if vdi == snap));
    assert!(err.to_string().contains(&snap.to_string()), "{err}");
    let err = sr.write(vdi, 8 * MIB - 10, &[1; 11]).unwrap_err();
    assert!(matches!(err, SrError::OutOfRange { .. }), "{err}");
    let err = sr.write(vdi, u64::MAX, &[1]).unwrap_err();
    assert!(matches!(err, SrError::OutOfRange { .. }), "{err}");
    assert!(matches!(
        sr.write(Uuid::new_v4(), 0, &[1]),
        Err(SrError::NotFound { .. })
    ));
    assert!(matches!(
        sr.begin_import(snap),
        Err(SrError::ReadOnly { .. })
    ));
    assert!(matches!(
        sr.resize(snap, 16 * MIB),
        Err(SrError::ReadOnly { .. })
    ));
}

#[test]
fn destroy_keeps_referenced_parents_and_destroying_everything_empties_the_sr() {
    let dir = tempfile::tempdir().unwrap();
    let sr = FileSr::open(dir.path()).unwrap();
    let (vdi, snap1, snap2, clone) = (
        Uuid::new_v4(),
        Uuid::new_v4(),
        Uuid::new_v4(),
        Uuid::new_v4(),
    );
    sr.create(vdi, 8 * MIB).unwrap();
    let mut model = Model::new(8 * MIB);
    write_both(&sr, vdi, &mut model, 7, 4);
    sr.snapshot(vdi, snap1).unwrap();
    let at_snap1 = model.clone();
    write_both(&sr, vdi, &mut model, 8, 4);
    sr.snapshot(vdi, snap2).unwrap();
    sr.clone(snap1, clone).unwrap();
    // root P1 <- {vdi.., snap1's old leaf P3 <- {snap1, clone}}; P2 under vdi and snap2.
    let before = vhd_files(dir.path());

    let snap1_leaf = file_name(&sr.leaf_path(snap1).unwrap());
    sr.destroy(snap1).unwrap();
    let after = vhd_files(dir.path());
    assert_eq!(
        before.difference(&after).cloned().collect::<Vec<_>>(),
        vec![snap1_leaf],
        "only the snapshot's own leaf goes; its parents are still referenced"
    );
    assert_content(&sr, clone, &at_snap1);
    assert_content(&sr, vdi, &model);

    for v in [vdi, snap2, clone] {
        sr.destroy(v).unwrap();
    }
    assert!(vhd_files(dir.path()).is_empty());
    assert!(sr.vdis().is_empty());
    assert!(matches!(sr.destroy(vdi), Err(SrError::NotFound { .. })));
}

#[test]
fn a_restart_keeps_every_vdi_and_its_content() {
    let dir = tempfile::tempdir().unwrap();
    let (vdi, snap) = (Uuid::new_v4(), Uuid::new_v4());
    let mut model = Model::new(16 * MIB);
    let at_snap;
    {
        let sr = FileSr::open(dir.path()).unwrap();
        sr.set_capacity(Some(1 << 30)).unwrap();
        sr.create(vdi, 16 * MIB).unwrap();
        write_both(&sr, vdi, &mut model, 9, 6);
        sr.snapshot(vdi, snap).unwrap();
        at_snap = model.clone();
        write_both(&sr, vdi, &mut model, 10, 6);
    }
    let sr = FileSr::open(dir.path()).unwrap();
    assert_eq!(sr.vdis().len(), 2);
    assert_eq!(sr.capacity(), Some(1 << 30));
    assert!(sr.is_read_only(snap).unwrap());
    assert_content(&sr, vdi, &model);
    assert_content(&sr, snap, &at_snap);
    write_both(&sr, vdi, &mut model, 11, 3);
    assert_content(&sr, vdi, &model);
}

#[test]
fn reopening_with_a_missing_leaf_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let vdi = Uuid::new_v4();
    let leaf = {
        let sr = FileSr::open(dir.path()).unwrap();
        sr.create(vdi, 8 * MIB).unwrap();
        sr.leaf_path(vdi).unwrap()
    };
    std::fs::remove_file(&leaf).unwrap();
    let err = FileSr::open(dir.path()).err().expect("open must fail");
    assert!(matches!(err, SrError::MissingLeaf { .. }), "{err}");
    let text = err.to_string();
    assert!(
        text.contains(&file_name(&leaf)) && text.contains(&vdi.to_string()),
        "{text}"
    );
}

#[test]
fn a_directory_of_vhd_files_without_an_index_is_not_taken_over() {
    let dir = tempfile::tempdir().unwrap();
    let stray = dir.path().join(format!("{}.vhd", Uuid::new_v4()));
    vhdsync::image::create(&stray, &vhdsync::image::CreateOptions::dynamic(4 * MIB)).unwrap();
    let err = FileSr::open(dir.path()).err().expect("open must fail");
    assert!(matches!(err, SrError::NotAnSr { .. }), "{err}");
    assert!(stray.exists());
}

#[test]
fn resize_grows_with_zeros_and_refuses_to_shrink() {
    let dir = tempfile::tempdir().unwrap();
    let sr = FileSr::open(dir.path()).unwrap();
    let (vdi, snap) = (Uuid::new_v4(), Uuid::new_v4());
    // Sizes round up to whole 2 MiB blocks, as on XenServer.
    sr.create(vdi, 7 * MIB + 1).unwrap();
    assert_eq!(sr.virtual_size(vdi).unwrap(), 8 * MIB);
    let mut model = Model::new(8 * MIB);
    write_both(&sr, vdi, &mut model, 12, 4);
    sr.snapshot(vdi, snap).unwrap();
    let at_snap = model.clone();

    sr.resize(vdi, 13 * MIB).unwrap();
    assert_eq!(sr.virtual_size(vdi).unwrap(), 14 * MIB);
    model.0.resize(14 * MIB as usize, 0);
    assert_content(&sr, vdi, &model);
    let tail = pattern(13, 3 * MIB as usize);
    sr.write(vdi, 11 * MIB - 5, &tail).unwrap();
    model.write(11 * MIB - 5, &tail);
    assert_content(&sr, vdi, &model);
    assert_content(&sr, snap, &at_snap);
    assert_files_clean(dir.path());

    sr.resize(vdi, 14 * MIB).unwrap();
    assert_eq!(sr.virtual_size(vdi).unwrap(), 14 * MIB);
    let err = sr.resize(vdi, 10 * MIB).unwrap_err();
    assert!(
        matches!(err, SrError::Shrink { current, .. } if current == 14 * MIB),
        "{err}"
    );
}

#[test]
fn a_capacity_turns_overcommitting_operations_into_sr_full() {
    let dir = tempfile::tempdir().unwrap();
    let sr = FileSr::open(dir.path()).unwrap();
    let (a, b, snap) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    sr.set_capacity(Some(24 * MIB)).unwrap();
    assert_eq!(sr.physical_size().unwrap(), 24 * MIB);
    sr.create(a, 16 * MIB).unwrap();
    sr.write(a, 0, &pattern(14, 10 * MIB as usize)).unwrap();
    let used = sr.physical_utilisation().unwrap();
    assert!(used > 10 * MIB, "{used}");
    assert_eq!(sr.vdi_physical_utilisation(a).unwrap(), used);

    let err = sr.create(b, 32 * MIB).unwrap_err();
    match &err {
        SrError::Full {
            op: Operation::Create,
            requested,
            available,
            ..
        } => {
            assert_eq!(*requested, 32 * MIB);
            assert_eq!(*available, 24 * MIB - used);
        }
        other => panic!("expected Full, got {other}"),
    }
    assert!(
        sr.snapshot(a, snap)
            .is_err_and(|e| matches!(e, SrError::Full { .. }))
    );
    assert!(
        sr.resize(a, 64 * MIB)
            .is_err_and(|e| matches!(e, SrError::Full { .. }))
    );
    // Failed operations leave nothing behind.
    assert_eq!(vhd_files(dir.path()).len(), 1);
    assert_eq!(sr.vdis(), vec![a]);

    sr.set_capacity(None).unwrap();
    sr.create(b, 32 * MIB).unwrap();
    assert!(sr.physical_size().unwrap() > 0);
}

#[test]
fn an_import_claims_its_vdi_until_the_guard_drops() {
    let dir = tempfile::tempdir().unwrap();
    let sr = FileSr::open(dir.path()).unwrap();
    let (vdi, snap) = (Uuid::new_v4(), Uuid::new_v4());
    sr.create(vdi, 8 * MIB).unwrap();
    let guard = sr.begin_import(vdi).unwrap();
    assert_eq!(guard.vdi(), vdi);
    assert!(guard.target().starts_with(dir.path()));
    let in_use = |r: Result<(), SrError>| matches!(r, Err(SrError::InUse { .. }));
    assert!(matches!(sr.begin_import(vdi), Err(SrError::InUse { .. })));
    assert!(in_use(sr.write(vdi, 0, &[1; 512])));
    assert!(in_use(sr.snapshot(vdi, snap)));
    assert!(in_use(sr.destroy(vdi)));
    assert!(in_use(sr.resize(vdi, 16 * MIB)));
    drop(guard);
    sr.write(vdi, 0, &[1; 512]).unwrap();
    sr.snapshot(vdi, snap).unwrap();
    assert!(matches!(
        sr.begin_import(snap),
        Err(SrError::ReadOnly { .. })
    ));
    drop(sr.begin_import(vdi).unwrap());
}

#[test]
fn concurrent_writers_on_two_vdis() {
    let dir = tempfile::tempdir().unwrap();
    let sr = Arc::new(FileSr::open(dir.path()).unwrap());
    let vdis = [Uuid::new_v4(), Uuid::new_v4()];
    for vdi in vdis {
        sr.create(vdi, 16 * MIB).unwrap();
    }
    let models: Vec<Model> = std::thread::scope(|scope| {
        let handles: Vec<_> = vdis
            .iter()
            .enumerate()
            .map(|(i, &vdi)| {
                let sr = Arc::clone(&sr);
                scope.spawn(move || {
                    let mut model = Model::new(16 * MIB);
                    write_both(&sr, vdi, &mut model, 20 + i as u64, 20);
                    model
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (vdi, model) in vdis.iter().zip(&models) {
        assert_content(&sr, *vdi, model);
    }
}

#[test]
fn snapshots_and_writes_race_safely_on_one_vdi() {
    let dir = tempfile::tempdir().unwrap();
    let sr = Arc::new(FileSr::open(dir.path()).unwrap());
    let vdi = Uuid::new_v4();
    sr.create(vdi, 8 * MIB).unwrap();
    let block = pattern(30, 4096);
    let snaps: Vec<Uuid> = std::thread::scope(|scope| {
        let writer = {
            let sr = Arc::clone(&sr);
            let block = block.clone();
            scope.spawn(move || {
                for i in 0..64u64 {
                    sr.write(vdi, i * 4096, &block).unwrap();
                }
            })
        };
        let snaps: Vec<Uuid> = (0..8)
            .map(|_| {
                let snap = Uuid::new_v4();
                sr.snapshot(vdi, snap).unwrap();
                snap
            })
            .collect();
        writer.join().unwrap();
        snaps
    });
    // Every snapshot holds a prefix of the writes, whole: writes never tear across one.
    for snap in snaps {
        let content = read_all(&sr.chain(snap).unwrap());
        let written = content
            .chunks(4096)
            .take_while(|c| *c == block.as_slice())
            .count();
        assert!(
            content[written * 4096..].iter().all(|&b| b == 0),
            "snapshot {snap}"
        );
    }
    let content = read_all(&sr.chain(vdi).unwrap());
    assert!(
        content[..64 * 4096]
            .chunks(4096)
            .all(|c| c == block.as_slice())
    );
}
