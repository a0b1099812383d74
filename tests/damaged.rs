//! Damaged VHD files through the readers (issue 17): `cat`, `export`, `diff` and `info` refuse
//! a file whose structure makes its content ambiguous, with the finding `check` gives (field
//! and byte offset); `--force` reads it anyway and says so on stderr; the lab SR refuses it on
//! export. Also `cat -o` to something that is not a regular file.

mod common;

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use uuid::Uuid;
use vhdsync::image::{Chain, Damage, ImageErrorKind, VhdLayer};
use vhdsync::lab::sr::FileSr;
use vhdsync::vhd::{ErrorKind, Structure};

use common::{FileSrVdi, pattern};

const MIB: u64 = 1 << 20;
const BLOCK: u64 = 2 * MIB;

/// A 3-block dynamic disk with blocks 0 and 1 written, then BAT entry 1 pointed at block 0:
/// two guest blocks share one block of the file. Returns the file, its guest content before
/// the damage, and the byte offset of BAT entry 1.
fn shared_block(dir: &Path) -> (PathBuf, Vec<u8>, u64) {
    let vdi = FileSrVdi::new(dir, 3 * BLOCK, BLOCK as u32);
    let data = pattern(17, 2 * BLOCK as usize);
    vdi.write(0, &data);
    let entry = point_entry_1_at_block_0(&vdi.leaf);
    (vdi.leaf.clone(), data, entry)
}

/// Overwrite BAT entry 1 of `path` with entry 0; returns the entry's byte offset.
fn point_entry_1_at_block_0(path: &Path) -> u64 {
    let (entry, sector) = {
        let layer = VhdLayer::open(path).unwrap();
        let table = layer.header().unwrap().table_offset;
        (table + 4, layer.bat().sector(0).unwrap())
    };
    let file = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    file.write_all_at(&sector.to_be_bytes(), entry).unwrap();
    entry
}

fn vhdsync(args: &[&str], file: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vhdsync"))
        .args(args)
        .arg(file)
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn opening_refuses_with_the_finding_check_reports() {
    let dir = tempfile::tempdir().unwrap();
    let (path, _, entry) = shared_block(dir.path());
    let err = Chain::open(&path).unwrap_err();
    assert!(matches!(err.kind, ImageErrorKind::Damaged { .. }), "{err}");
    let finding = err.format().unwrap();
    assert_eq!(
        (
            finding.kind,
            finding.structure,
            finding.field,
            finding.offset
        ),
        (ErrorKind::Overlap, Structure::Block(1), "BAT entry", entry)
    );
    let bytes = std::fs::read(&path).unwrap();
    let report = vhdsync::image::check::check_bytes(&bytes).unwrap();
    assert!(
        report
            .problems
            .iter()
            .any(|p| p.offset == entry && p.message.contains("overlaps block 0")),
        "{:?}",
        report.problems
    );
}

#[test]
fn cat_export_diff_and_info_exit_2_naming_file_and_entry() {
    let dir = tempfile::tempdir().unwrap();
    let (path, _, entry) = shared_block(dir.path());
    let out_file = dir.path().join("out.raw");
    let out_arg = out_file.to_str().unwrap();
    for args in [
        &["cat", "-o", out_arg][..],
        &["export", "-o", out_arg][..],
        &["diff"][..],
        &["info"][..],
    ] {
        let out = vhdsync(args, &path);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.contains(&path.display().to_string()),
            "{args:?}: {stderr}"
        );
        assert!(
            stderr.contains(&format!("at byte {entry}")) && stderr.contains("overlaps block 0"),
            "{args:?}: {stderr}"
        );
        assert!(stderr.contains("--force"), "{args:?}: {stderr}");
    }
    let check = vhdsync(&["check"], &path);
    assert_eq!(check.status.code(), Some(1));
    assert!(text(&check.stdout).contains(&format!("problem at byte {entry}")));
}

#[test]
fn force_reads_anyway_and_warns_on_stderr() {
    let dir = tempfile::tempdir().unwrap();
    let (path, data, entry) = shared_block(dir.path());
    let out_file = dir.path().join("out.raw");
    let out = vhdsync(&["cat", "--force", "-o", out_file.to_str().unwrap()], &path);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("warning:") && stderr.contains(&format!("at byte {entry}")),
        "{stderr}"
    );
    // What the damaged table says: block 1 reads block 0's bytes.
    let raw = std::fs::read(&out_file).unwrap();
    let block = BLOCK as usize;
    assert_eq!(raw.len(), 3 * block);
    assert_eq!(raw[block..2 * block], data[..block]);
    for args in [&["diff", "--force"][..], &["info", "--force"][..]] {
        let out = vhdsync(args, &path);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{args:?}: {}",
            text(&out.stderr)
        );
        assert!(text(&out.stderr).contains("warning:"), "{args:?}");
    }
    let layer = VhdLayer::open_with(&path, Damage::Tolerate).unwrap();
    assert_eq!(layer.damage().len(), 1, "{:?}", layer.damage());
}

#[test]
fn the_lab_sr_refuses_a_damaged_vdi_on_export() {
    let dir = tempfile::tempdir().unwrap();
    let sr = FileSr::open(dir.path()).unwrap();
    let vdi = Uuid::new_v4();
    sr.create(vdi, 3 * BLOCK).unwrap();
    sr.write(vdi, 0, &pattern(3, 2 * BLOCK as usize)).unwrap();
    let leaf = sr.leaf_path(vdi).unwrap();
    point_entry_1_at_block_0(&leaf);
    let err = sr.chain(vdi).expect_err("a damaged leaf must not be read");
    let message = err.to_string();
    assert!(
        message.contains(&leaf.file_name().unwrap().to_string_lossy().into_owned())
            && message.contains("overlaps block 0"),
        "{message}"
    );
}

#[test]
fn cat_writes_sequentially_to_a_character_device() {
    let dir = tempfile::tempdir().unwrap();
    let vdi = FileSrVdi::new(dir.path(), 3 * BLOCK, BLOCK as u32);
    vdi.write(BLOCK, &pattern(5, MIB as usize));
    let out = vhdsync(&["cat", "-o", "/dev/null"], &vdi.leaf);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
}

#[test]
fn cat_writes_every_byte_to_a_fifo() {
    let dir = tempfile::tempdir().unwrap();
    let vdi = FileSrVdi::new(dir.path(), 3 * BLOCK, BLOCK as u32);
    let data = pattern(9, MIB as usize);
    vdi.write(BLOCK, &data);
    let fifo = dir.path().join("fifo");
    let made = Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(made.success());
    let reader = {
        let fifo = fifo.clone();
        std::thread::spawn(move || std::fs::read(fifo).unwrap())
    };
    let out = vhdsync(&["cat", "-o", fifo.to_str().unwrap()], &vdi.leaf);
    let raw = reader.join().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(raw.len() as u64, 3 * BLOCK);
    assert_eq!(raw[BLOCK as usize..BLOCK as usize + data.len()], data[..]);
    assert!(raw[..BLOCK as usize].iter().all(|&b| b == 0));
}
