//! The VHD files of the SR: empty leaves, frozen parents and their differencing children.
//! Every file is named after its footer uuid, as XenServer names a VDI's file after the VDI.

use std::fs::File;
use std::path::Path;
use std::time::UNIX_EPOCH;

use uuid::Uuid;

use super::layout::vhd_file_name;
use crate::image::{CreateOptions, ImageError, ParentLink, VhdLayer, VhdWriter, create};
use crate::vhd::{DiskType, VhdTimestamp};

/// Create an empty dynamic VHD (2 MiB blocks) in `dir`; returns its file name.
pub(super) fn create_empty(dir: &Path, virtual_size: u64) -> Result<String, ImageError> {
    create_named(dir, CreateOptions::dynamic(virtual_size))
}

/// Create an empty differencing child of the frozen parent `link` in `dir`; returns its name.
pub(super) fn create_child(
    dir: &Path,
    link: &ParentLink,
    virtual_size: u64,
) -> Result<String, ImageError> {
    create_named(dir, CreateOptions::differencing(virtual_size, link.clone()))
}

fn create_named(dir: &Path, options: CreateOptions) -> Result<String, ImageError> {
    let name = vhd_file_name(options.uuid);
    create(&dir.join(&name), &options)?;
    Ok(name)
}

/// Turn the leaf at `path` into a read-only parent: mark it hidden, make that durable, and
/// describe it for its children. The time stamp is taken after the last change to the file,
/// so it matches the parent's mtime as blktap's parent check expects.
pub(super) fn freeze(path: &Path) -> Result<ParentLink, ImageError> {
    let mut writer = VhdWriter::open(path)?;
    writer.set_hidden(true)?;
    let uuid = writer.footer().unique_id;
    drop(writer);
    let file = File::open(path).map_err(|e| ImageError::io(path, "open", e))?;
    file.sync_all()
        .map_err(|e| ImageError::io(path, "fsync", e))?;
    let modified = file
        .metadata()
        .and_then(|m| m.modified())
        .map_err(|e| ImageError::io(path, "read mtime", e))?;
    let unix_seconds = modified
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let relative_path = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    Ok(ParentLink {
        uuid,
        timestamp: VhdTimestamp::from_unix(unix_seconds),
        relative_path,
    })
}

/// The footer uuid of the parent of the VHD at `path`, if it is a differencing disk.
pub(super) fn parent_uuid(path: &Path) -> Result<Option<Uuid>, ImageError> {
    let layer = VhdLayer::open(path)?;
    Ok((layer.disk_type() == DiskType::Differencing)
        .then(|| layer.header().map(|h| h.parent_unique_id))
        .flatten())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frozen_parent_is_hidden_and_its_children_record_its_uuid_name_and_mtime() {
        let dir = tempfile::tempdir().unwrap();
        let root = create_empty(dir.path(), 4 << 20).unwrap();
        let root_path = dir.path().join(&root);
        let link = freeze(&root_path).unwrap();
        let parent = VhdLayer::open(&root_path).unwrap();
        assert_eq!(parent.footer().hidden, 1);
        assert!(parent.notes().is_empty(), "{:?}", parent.notes());
        assert_eq!(link.uuid, parent.footer().unique_id);
        assert_eq!(link.relative_path, root);
        let mtime = std::fs::metadata(&root_path).unwrap().modified().unwrap();
        let mtime = mtime.duration_since(UNIX_EPOCH).unwrap().as_secs() as i64;
        assert_eq!(link.timestamp, VhdTimestamp::from_unix(mtime));

        let child = create_child(dir.path(), &link, 8 << 20).unwrap();
        let child_path = dir.path().join(&child);
        assert_eq!(parent_uuid(&child_path).unwrap(), Some(link.uuid));
        assert_eq!(parent_uuid(&root_path).unwrap(), None);
        let layer = VhdLayer::open(&child_path).unwrap();
        assert_eq!(child, vhd_file_name(layer.footer().unique_id));
        assert_eq!(layer.header().unwrap().parent_timestamp, link.timestamp);
        assert_eq!(layer.virtual_size(), 8 << 20);
    }
}
