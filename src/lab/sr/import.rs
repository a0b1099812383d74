//! Imports: a VDI is claimed, its leaf is copied to a staging file the import writes, and the
//! copy replaces the leaf only when the import commits. Until then readers see the old leaf,
//! and dropping the claim without committing deletes the copy, so a failed import changes
//! nothing. The copy is usually tiny: imports go into fresh VDIs or fresh clones, whose
//! leaves are empty. The import tells the guard which bytes it wrote, and a commit marks their
//! blocks in the VDI's change log (if it has one) before the copy replaces the leaf.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use uuid::Uuid;

use super::change_log::{BlockBitmap, Marked};
use super::change_log_file;
use super::error::{Context, Operation, SrError};
use super::layout::staging_file_name;
use super::{FileSr, ensure_writable, lock};
use crate::fsio::atomic;

/// A claim on a VDI for an import, and the staging copy of its leaf the import writes.
///
/// While it lives, other imports, guest writes, snapshots, clones, resizes and destroys of the
/// VDI fail with [`SrError::InUse`]. Dropping it without [`FileSr::commit_import`] deletes the
/// staging copy and leaves the VDI as it was.
#[derive(Debug)]
pub struct ImportGuard {
    importing: Arc<Mutex<HashSet<Uuid>>>,
    vdi: Uuid,
    /// The VDI's leaf, which the staging copy replaces on commit.
    leaf: PathBuf,
    /// `None` once committed.
    staging: Option<PathBuf>,
    /// The 64 KiB blocks the import wrote, for the VDI's change log.
    written: BlockBitmap,
}

impl ImportGuard {
    pub fn vdi(&self) -> Uuid {
        self.vdi
    }

    /// The file to write the imported content into, a VHD with the leaf's content: open it
    /// with `stream::apply::VhdTarget::open(path, None)`.
    pub fn target(&self) -> &Path {
        self.staging.as_deref().unwrap_or(&self.leaf)
    }

    /// Note that the import wrote `len` bytes at `offset` of the VDI (whole sectors of it, at
    /// least one byte of each changed).
    pub fn mark_written(&mut self, offset: u64, len: u64) {
        self.written.mark(offset, len);
    }
}

impl Drop for ImportGuard {
    fn drop(&mut self) {
        // Delete before releasing the claim: while the VDI is claimed, a sweep spares the
        // staging file, and afterwards it would delete a leftover anyway.
        if let Some(staging) = self.staging.take()
            && let Err(e) = std::fs::remove_file(&staging)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(path = %staging.display(), error = %e, "deleting an import's staging copy");
        }
        lock(&self.importing).remove(&self.vdi);
    }
}

impl FileSr {
    /// Claim `vdi` for an import and stage a copy of its leaf. Fails with [`SrError::InUse`]
    /// while another import holds the VDI, and with [`SrError::ReadOnly`] for a snapshot.
    pub fn begin_import(&self, vdi: Uuid) -> Result<ImportGuard, SrError> {
        let op = Operation::Import;
        // Waits for a guest write in flight on the VDI to finish.
        let _vdi_lock = self.lock_vdi(vdi);
        let record = self.record(op, vdi)?;
        ensure_writable(op, vdi, &record)?;
        if !lock(&self.importing).insert(vdi) {
            return Err(SrError::InUse { op, vdi });
        }
        let mut guard = ImportGuard {
            importing: self.importing.clone(),
            vdi,
            leaf: self.dir.join(&record.leaf),
            staging: None,
            written: BlockBitmap::for_size(record.virtual_size),
        };
        let staging = self.dir.join(staging_file_name(&record.leaf));
        // Set first, so that a failed copy's partial file is deleted with the guard.
        guard.staging = Some(staging.clone());
        // `std::fs::copy` uses copy_file_range, which reflinks where the filesystem can.
        std::fs::copy(&guard.leaf, &staging)
            .map_err(Context::vdi(op, vdi).io("copy the leaf to", &staging))?;
        Ok(guard)
    }

    /// Mark what the import wrote in the VDI's change log, then replace the VDI's leaf with the
    /// staging copy, atomically and durably, and release the claim. The caller has flushed
    /// what it wrote.
    pub fn commit_import(&self, mut guard: ImportGuard) -> Result<(), SrError> {
        let op = Operation::Import;
        let ctx = Context::vdi(op, guard.vdi);
        let _vdi_lock = self.lock_vdi(guard.vdi);
        let Some(staging) = guard.staging.clone() else {
            return Ok(());
        };
        {
            let mut logs = self.logs();
            match logs.mark_all(guard.vdi, &guard.written) {
                Marked::Untracked | Marked::Unchanged => {}
                Marked::Bytes(bytes) => {
                    let log = logs.get(guard.vdi).expect("just marked");
                    change_log_file::patch(&self.dir, guard.vdi, log, bytes, ctx)?;
                }
                Marked::Rewritten(plan) => change_log_file::persist(&self.dir, &plan, ctx)?,
            }
        }
        atomic::publish(&staging, &guard.leaf).map_err(ctx.atomic())?;
        guard.staging = None;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn a_staging_copy_replaces_the_leaf_only_on_commit() {
        let dir = tempfile::tempdir().unwrap();
        let sr = FileSr::open(dir.path()).unwrap();
        let vdi = Uuid::new_v4();
        sr.create(vdi, 4 * MIB).unwrap();
        sr.write(vdi, 0, &[1; 512]).unwrap();
        let before = sr.hash(vdi).unwrap();

        let write_two = |guard: &ImportGuard| {
            let mut writer = crate::image::VhdWriter::open(guard.target()).unwrap();
            writer.write_sectors(0, &[2; 512]).unwrap();
            writer.flush().unwrap();
        };
        let guard = sr.begin_import(vdi).unwrap();
        assert_ne!(guard.target(), sr.leaf_path(vdi).unwrap());
        write_two(&guard);
        let staging = guard.target().to_path_buf();
        assert_eq!(sr.hash(vdi).unwrap(), before, "readers see the old leaf");
        drop(guard);
        assert!(!staging.exists());
        assert_eq!(sr.hash(vdi).unwrap(), before);

        let guard = sr.begin_import(vdi).unwrap();
        write_two(&guard);
        sr.commit_import(guard).unwrap();
        assert!(!staging.exists());
        assert_ne!(sr.hash(vdi).unwrap(), before);
        sr.write(vdi, 512, &[3; 512]).unwrap();
    }

    #[test]
    fn a_destroy_of_another_vdi_spares_a_staging_copy_in_use() {
        let dir = tempfile::tempdir().unwrap();
        let sr = FileSr::open(dir.path()).unwrap();
        let (vdi, other) = (Uuid::new_v4(), Uuid::new_v4());
        sr.create(vdi, 4 * MIB).unwrap();
        sr.create(other, 4 * MIB).unwrap();
        let guard = sr.begin_import(vdi).unwrap();
        sr.destroy(other).unwrap();
        assert!(guard.target().exists());
        sr.commit_import(guard).unwrap();
        sr.chain(vdi).unwrap();
    }
}
