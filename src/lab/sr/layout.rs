//! What lives in the SR directory and under which names: `sr.json` (the index), one
//! `<footer uuid>.vhd` per VHD file and one `<vdi uuid>.cbtlog` per change log, plus the temp
//! files of writes in progress and the staging copies (`<leaf>.import`) of imports in progress.

use std::path::Path;

use uuid::Uuid;

use super::error::{Context, SrError};
use crate::fsio::atomic;

pub(super) const INDEX_FILE: &str = "sr.json";

/// The file name of the VHD whose footer uuid is `uuid`.
pub(super) fn vhd_file_name(uuid: Uuid) -> String {
    format!("{uuid}.vhd")
}

/// The footer uuid a canonical `<uuid>.vhd` file name stands for.
pub(super) fn vhd_file_uuid(name: &str) -> Option<Uuid> {
    let uuid = name.strip_suffix(".vhd")?.parse().ok()?;
    (vhd_file_name(uuid) == name).then_some(uuid)
}

/// The file name of the change log of `vdi`.
pub(super) fn log_file_name(vdi: Uuid) -> String {
    format!("{vdi}.cbtlog")
}

/// The VDI a canonical `<uuid>.cbtlog` file name stands for.
pub(super) fn log_file_vdi(name: &str) -> Option<Uuid> {
    let uuid = name.strip_suffix(".cbtlog")?.parse().ok()?;
    (log_file_name(uuid) == name).then_some(uuid)
}

/// Temp files of an index save, an image creation or a change log save: [`atomic`] temps of
/// `sr.json`, a `<uuid>.vhd` or a `<uuid>.cbtlog`, or the fixed `sr.json.tmp` and
/// `<uuid>.vhd.tmp` that earlier versions used.
pub(super) fn is_temp_file(name: &str) -> bool {
    let atomic_temp = atomic::temp_target(name);
    atomic_temp.is_some_and(|target| log_file_vdi(target).is_some())
        || atomic_temp
            .or_else(|| name.strip_suffix(".tmp"))
            .is_some_and(|target| target == INDEX_FILE || vhd_file_uuid(target).is_some())
}

/// The staging copy an import writes instead of the leaf named `leaf`.
pub(super) fn staging_file_name(leaf: &str) -> String {
    format!("{leaf}.import")
}

/// The leaf whose import staging copy `name` is.
pub(super) fn staged_leaf(name: &str) -> Option<&str> {
    name.strip_suffix(".import")
        .filter(|vhd| vhd_file_uuid(vhd).is_some())
}

/// Names of the entries of `dir` that are valid UTF-8 (the SR only creates such names).
pub(super) fn file_names(dir: &Path, ctx: Context) -> Result<Vec<String>, SrError> {
    let entries = std::fs::read_dir(dir).map_err(ctx.io("list", dir))?;
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(ctx.io("list", dir))?;
        if let Ok(name) = entry.file_name().into_string() {
            names.push(name);
        }
    }
    Ok(names)
}

/// Make creations, renames and deletions in `dir` durable.
pub(super) fn sync_dir(dir: &Path, ctx: Context) -> Result<(), SrError> {
    atomic::sync_dir(dir).map_err(ctx.atomic())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_canonical_vhd_names_map_to_uuids() {
        let uuid = Uuid::new_v4();
        assert_eq!(vhd_file_uuid(&vhd_file_name(uuid)), Some(uuid));
        assert_eq!(vhd_file_uuid(&format!("{}.vhd", uuid.simple())), None);
        assert_eq!(vhd_file_uuid("../x.vhd"), None);
        assert_eq!(vhd_file_uuid(&format!("{uuid}.vhd.tmp")), None);
    }

    #[test]
    fn temp_files_are_the_index_temp_and_vhd_temps() {
        let uuid = Uuid::new_v4();
        let dir = tempfile::tempdir().unwrap();
        for target in [INDEX_FILE.to_string(), vhd_file_name(uuid)] {
            let file = atomic::AtomicFile::create(&dir.path().join(target)).unwrap();
            let name = file.temp_path().file_name().unwrap().to_str().unwrap();
            assert!(is_temp_file(name), "{name}");
        }
        let log = atomic::AtomicFile::create(&dir.path().join(log_file_name(uuid))).unwrap();
        let name = log.temp_path().file_name().unwrap().to_str().unwrap();
        assert!(is_temp_file(name), "{name}");
        assert!(!is_temp_file(&log_file_name(uuid)));
        assert_eq!(log_file_vdi(&log_file_name(uuid)), Some(uuid));
        assert_eq!(log_file_vdi(&format!("{}.cbtlog", uuid.simple())), None);
        assert!(is_temp_file("sr.json.tmp"));
        assert!(is_temp_file(&format!("{uuid}.vhd.tmp")));
        assert!(!is_temp_file(&vhd_file_name(uuid)));
        assert!(!is_temp_file("notes.tmp"));
    }

    #[test]
    fn staging_names_map_back_to_their_leaf() {
        let leaf = vhd_file_name(Uuid::new_v4());
        assert_eq!(staged_leaf(&staging_file_name(&leaf)), Some(leaf.as_str()));
        assert!(!is_temp_file(&staging_file_name(&leaf)));
        assert_eq!(staged_leaf("notes.import"), None);
        assert_eq!(staged_leaf(&leaf), None);
    }
}
