//! The SR's own index, `sr.json`: which leaf file each VDI is, its size and whether it is
//! read-only, plus the SR's optional capacity. It is written atomically (temp file, fsync,
//! rename, fsync of the directory), so a crash leaves either the old index or the new one.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::error::{Context, SrError};
use super::layout::{INDEX_FILE, vhd_file_uuid};
use crate::fsio::atomic;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct VdiRecord {
    /// File name of the VDI's leaf VHD: `<footer uuid>.vhd`, inside the SR directory.
    pub leaf: String,
    pub virtual_size: u64,
    pub read_only: bool,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(super) struct Index {
    /// Bytes the SR may hold; `None` leaves the limit to the filesystem.
    pub capacity: Option<u64>,
    pub vdis: BTreeMap<Uuid, VdiRecord>,
}

impl Index {
    /// The index in `dir`, or `None` when there is none yet.
    pub fn load(dir: &Path, ctx: Context) -> Result<Option<Index>, SrError> {
        let path = dir.join(INDEX_FILE);
        let text = match std::fs::read(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(ctx.io("read", &path)(e)),
        };
        let bad = |detail: String| SrError::BadIndex {
            path: path.clone(),
            detail,
        };
        let index: Index = serde_json::from_slice(&text).map_err(|e| bad(e.to_string()))?;
        // A leaf name is joined to the SR directory; anything but `<uuid>.vhd` could escape it.
        if let Some((vdi, record)) = index
            .vdis
            .iter()
            .find(|(_, r)| vhd_file_uuid(&r.leaf).is_none())
        {
            return Err(bad(format!(
                "VDI {vdi}: leaf {:?} is not a `<uuid>.vhd` file name",
                record.leaf
            )));
        }
        Ok(Some(index))
    }

    pub fn save(&self, dir: &Path, ctx: Context) -> Result<(), SrError> {
        let path = dir.join(INDEX_FILE);
        let text = serde_json::to_vec_pretty(self).map_err(|e| SrError::BadIndex {
            path: path.clone(),
            detail: format!("cannot encode: {e}"),
        })?;
        atomic::write(&path, &text).map_err(ctx.atomic())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lab::sr::error::Operation;
    use crate::lab::sr::layout::vhd_file_name;

    #[test]
    fn saved_index_loads_back_and_bad_leaf_names_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = Context::sr(Operation::Open);
        assert!(Index::load(dir.path(), ctx).unwrap().is_none());
        let mut index = Index {
            capacity: Some(1 << 30),
            ..Index::default()
        };
        let vdi = Uuid::new_v4();
        index.vdis.insert(
            vdi,
            VdiRecord {
                leaf: vhd_file_name(Uuid::new_v4()),
                virtual_size: 8 << 20,
                read_only: true,
            },
        );
        index.save(dir.path(), ctx).unwrap();
        let loaded = Index::load(dir.path(), ctx).unwrap().unwrap();
        assert_eq!(loaded.capacity, index.capacity);
        assert_eq!(loaded.vdis, index.vdis);
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temp file is left"
        );

        index.vdis.get_mut(&vdi).unwrap().leaf = "../../etc/passwd".into();
        index.save(dir.path(), ctx).unwrap();
        let err = Index::load(dir.path(), ctx).unwrap_err();
        assert!(matches!(err, SrError::BadIndex { .. }), "{err}");
        assert!(err.to_string().contains(&vdi.to_string()), "{err}");
    }
}
