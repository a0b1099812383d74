//! Garbage collection of the SR directory. The index is the source of truth: files are created
//! before the index names them and deleted only after it stops naming them, so a crash at any
//! point leaves at most unreferenced files. A sweep deletes every `<uuid>.vhd` that no VDI's
//! chain references (a destroyed leaf, hidden parents nothing builds on any more, leftovers of
//! interrupted operations), the temp files of interrupted writes, and the staging copies of
//! imports that are no longer running.

use std::collections::HashSet;
use std::path::Path;

use uuid::Uuid;

use super::error::{Context, Operation, SrError, image_error};
use super::index::Index;
use super::layout::{file_names, is_temp_file, staged_leaf, sync_dir, vhd_file_uuid};
use crate::image::Chain;

/// Delete what no VDI references; returns the names of the deleted files. If any chain cannot
/// be opened nothing is deleted, since what it references is then unknown. The staging copies
/// of the VDIs in `importing` are kept.
pub(super) fn sweep(
    dir: &Path,
    index: &Index,
    importing: &HashSet<Uuid>,
    op: Operation,
) -> Result<Vec<String>, SrError> {
    let ctx = Context::sr(op);
    let referenced = referenced_files(dir, index, op)?;
    let staged: HashSet<&str> = importing
        .iter()
        .filter_map(|vdi| index.vdis.get(vdi))
        .map(|record| record.leaf.as_str())
        .collect();
    let mut removed = Vec::new();
    for name in file_names(dir, ctx)? {
        let garbage = is_temp_file(&name)
            || staged_leaf(&name).is_some_and(|leaf| !staged.contains(leaf))
            || (vhd_file_uuid(&name).is_some() && !referenced.contains(&name));
        if garbage {
            let path = dir.join(&name);
            std::fs::remove_file(&path).map_err(ctx.io("delete", &path))?;
            removed.push(name);
        }
    }
    if !removed.is_empty() {
        sync_dir(dir, ctx)?;
    }
    Ok(removed)
}

/// Whether `dir` holds any `<uuid>.vhd` file.
pub(super) fn holds_vhd_files(dir: &Path, ctx: Context) -> Result<bool, SrError> {
    Ok(file_names(dir, ctx)?
        .iter()
        .any(|name| vhd_file_uuid(name).is_some()))
}

/// File names of every layer of every VDI's chain.
fn referenced_files(dir: &Path, index: &Index, op: Operation) -> Result<HashSet<String>, SrError> {
    let mut referenced = HashSet::new();
    for (vdi, record) in &index.vdis {
        let chain = Chain::open(&dir.join(&record.leaf)).map_err(image_error(op, *vdi))?;
        referenced.extend(
            chain
                .layers()
                .iter()
                .filter_map(|layer| layer.path().file_name())
                .map(|name| name.to_string_lossy().into_owned()),
        );
    }
    Ok(referenced)
}

#[cfg(test)]
mod tests {
    use uuid::Uuid;

    use crate::lab::sr::FileSr;
    use crate::lab::sr::layout::{staging_file_name, vhd_file_name};

    #[test]
    fn opening_the_sr_deletes_only_unreferenced_vhd_files_and_temp_files() {
        let dir = tempfile::tempdir().unwrap();
        let (vdi, snap) = (Uuid::new_v4(), Uuid::new_v4());
        let kept = {
            let sr = FileSr::open(dir.path()).unwrap();
            sr.create(vdi, 4 << 20).unwrap();
            sr.snapshot(vdi, snap).unwrap();
            std::fs::read_dir(dir.path()).unwrap().count()
        };
        // What an interrupted snapshot or save leaves, and a file that is not the SR's.
        let orphan = dir.path().join(vhd_file_name(Uuid::new_v4()));
        crate::image::create(&orphan, &crate::image::CreateOptions::dynamic(4 << 20)).unwrap();
        let temp = dir
            .path()
            .join(format!("{}.tmp", vhd_file_name(Uuid::new_v4())));
        std::fs::write(&temp, b"partial").unwrap();
        // Temp names of the atomic helper, and the fixed ones of earlier versions.
        let temps = [
            dir.path().join("sr.json.tmp"),
            dir.path().join("sr.json.a1B2c3D4.tmp"),
            dir.path()
                .join(format!("{}.Zz09Zz09.tmp", vhd_file_name(Uuid::new_v4()))),
        ];
        for temp in &temps {
            std::fs::write(temp, b"{").unwrap();
        }
        let staging = dir
            .path()
            .join(staging_file_name(&vhd_file_name(Uuid::new_v4())));
        std::fs::write(&staging, b"interrupted import").unwrap();
        std::fs::write(dir.path().join("notes.txt"), b"not ours").unwrap();

        let sr = FileSr::open(dir.path()).unwrap();
        assert!(!orphan.exists() && !temp.exists() && !staging.exists());
        assert!(temps.iter().all(|t| !t.exists()));
        assert!(dir.path().join("notes.txt").exists());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), kept + 1);
        sr.chain(vdi).unwrap();
        sr.chain(snap).unwrap();
    }
}
