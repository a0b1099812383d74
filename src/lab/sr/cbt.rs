//! Changed block tracking on the file SR: the calls behind `VDI.enable_cbt`, `disable_cbt`,
//! `list_changed_blocks` and `data_destroy`, and the hooks through which snapshots, destroys,
//! resizes, guest writes and imports keep the change logs (see `change_log`) up to date.
//!
//! Every change to the logs is made durable before the model in memory takes it, with the
//! logs' lock held (the last lock taken, after the VDI stripe and the index). A guest write or
//! an import marks its blocks before its data reaches the VHD, so a failure in between leaves
//! a block marked that did not change, never a change unmarked.
//!
//! A VDI whose data was destroyed keeps only its log: the SR's index no longer names it, and
//! the calls that need its data fail with [`SrError::MetadataOnly`]. On a file SR a snapshot's
//! own leaf is an empty child of a hidden parent its VDI still builds on, so destroying its
//! data deletes that leaf, and the parent goes, or is merged into the next one, once no chain
//! needs it (the sweep and coalescing that follow a destroy).

use std::sync::MutexGuard;

use uuid::Uuid;

use super::change_log::{BlockBitmap, ChangeLogs, Marked, Plan};
use super::error::{Context, Operation, SrError};
use super::{FileSr, change_log_file, ensure_writable, lock};

impl FileSr {
    /// Start tracking the changed blocks of `vdi` (a writable VDI), unless it is tracked.
    pub fn enable_cbt(&self, vdi: Uuid) -> Result<(), SrError> {
        let op = Operation::EnableCbt;
        let _vdi_lock = self.lock_vdi(vdi);
        let record = self.record(op, vdi)?;
        ensure_writable(op, vdi, &record)?;
        let mut logs = self.logs();
        let plan = logs.enable(vdi, record.virtual_size);
        self.take(&mut logs, plan, Context::vdi(op, vdi))
    }

    /// Stop tracking `vdi`: its log goes, so its snapshots' logs end where they are and a
    /// later `enable_cbt` starts a new chain.
    pub fn disable_cbt(&self, vdi: Uuid) -> Result<(), SrError> {
        let op = Operation::DisableCbt;
        let _vdi_lock = self.lock_vdi(vdi);
        let record = self.record(op, vdi)?;
        ensure_writable(op, vdi, &record)?;
        let mut logs = self.logs();
        let plan = logs.disable(vdi);
        self.take(&mut logs, plan, Context::vdi(op, vdi))
    }

    /// Whether `vdi` (a VDI, a snapshot, or what is left of one) has a change log.
    pub fn has_change_log(&self, vdi: Uuid) -> bool {
        self.logs().contains(vdi)
    }

    /// Whether only the change log of `vdi` is left (`VDI.data_destroy`).
    pub fn is_metadata_only(&self, vdi: Uuid) -> bool {
        let index = lock(&self.index);
        !index.vdis.contains_key(&vdi) && self.logs().contains(vdi)
    }

    /// The VDIs of which only the change log is left, in uuid order.
    pub fn metadata_only_vdis(&self) -> Vec<Uuid> {
        let index = lock(&self.index);
        let logs = self.logs();
        logs.vdis()
            .filter(|vdi| !index.vdis.contains_key(vdi))
            .collect()
    }

    /// The 64 KiB blocks written after `from` up to `to`: the union of the logs after `from`'s
    /// along its chain, up to `to`'s, one bit per 64 KiB of `to`'s virtual size. Fails with
    /// [`SrError::ChangedBlocks`] when the two are the same VDI, when either has no log, or
    /// when `to` does not follow `from` in one chain.
    pub fn list_changed_blocks(&self, from: Uuid, to: Uuid) -> Result<BlockBitmap, SrError> {
        self.logs().changed_blocks(from, to)
    }

    /// Destroy the data of the snapshot `vdi` and keep its change log. Idempotent; fails with
    /// [`SrError::NoChangeLog`] if it has no log and [`SrError::Writable`] if it is no
    /// snapshot.
    pub fn data_destroy(&self, vdi: Uuid) -> Result<(), SrError> {
        let op = Operation::DataDestroy;
        {
            let _vdi_lock = self.lock_vdi(vdi);
            let mut index = lock(&self.index);
            let logged = self.logs().contains(vdi);
            let Some(record) = index.vdis.get(&vdi).cloned() else {
                return if logged {
                    Ok(())
                } else {
                    Err(SrError::NotFound { op, vdi })
                };
            };
            if !logged {
                return Err(SrError::NoChangeLog { op, vdi });
            }
            if !record.read_only {
                return Err(SrError::Writable { op, vdi });
            }
            self.ensure_not_importing(op, vdi)?;
            self.drop_chain(op, vdi, &mut index)?;
        }
        self.coalesce_after(op);
        Ok(())
    }

    /// The logs, locked.
    pub(super) fn logs(&self) -> MutexGuard<'_, ChangeLogs> {
        lock(&self.change_logs)
    }

    /// Make `plan` durable, then take it into `logs`.
    pub(super) fn take(
        &self,
        logs: &mut ChangeLogs,
        plan: Plan,
        ctx: Context,
    ) -> Result<(), SrError> {
        if plan.is_empty() {
            return Ok(());
        }
        change_log_file::persist(&self.dir, &plan, ctx)?;
        logs.apply(plan);
        Ok(())
    }

    /// Mark `len` bytes at `offset` of `vdi` as written, durably, before they are.
    pub(super) fn mark_written(
        &self,
        op: Operation,
        vdi: Uuid,
        offset: u64,
        len: u64,
    ) -> Result<(), SrError> {
        let ctx = Context::vdi(op, vdi);
        let mut logs = self.logs();
        match logs.mark(vdi, offset, len) {
            Marked::Untracked | Marked::Unchanged => Ok(()),
            Marked::Bytes(bytes) => {
                let log = logs.get(vdi).expect("just marked");
                change_log_file::patch(&self.dir, vdi, log, bytes, ctx)
            }
            // The model grew already; the file must follow before the data is written.
            Marked::Rewritten(plan) => change_log_file::persist(&self.dir, &plan, ctx),
        }
    }

    /// Carry the log of `vdi` over to its new snapshot `snapshot`. A failure leaves the logs
    /// as they were (the VDI's log then also covers the snapshot's writes, which only makes
    /// later answers larger), as SM carries on with a snapshot whose log it could not make.
    pub(super) fn snapshot_log(&self, vdi: Uuid, snapshot: Uuid) {
        let ctx = Context::vdi(Operation::Snapshot, vdi);
        let mut logs = self.logs();
        let plan = logs.snapshot(vdi, snapshot);
        if let Err(e) = self.take(&mut logs, plan, ctx) {
            tracing::warn!(%vdi, %snapshot, error = %e, "snapshot: the change log was not carried over");
        }
    }

    /// Grow the log of `vdi` with the disk. Should this fail, the next write past the old
    /// size grows it (see [`ChangeLogs::mark`]).
    pub(super) fn resize_log(&self, vdi: Uuid, virtual_size: u64) {
        let ctx = Context::vdi(Operation::Resize, vdi);
        let mut logs = self.logs();
        let plan = logs.resize(vdi, virtual_size);
        if let Err(e) = self.take(&mut logs, plan, ctx) {
            tracing::warn!(%vdi, error = %e, "resize: the change log was not grown");
        }
    }

    /// Drop the log of `vdi`, destroyed, folding its blocks into the next log of its chain.
    pub(super) fn remove_log(&self, op: Operation, vdi: Uuid) -> Result<(), SrError> {
        let mut logs = self.logs();
        let plan = logs.remove(vdi);
        self.take(&mut logs, plan, Context::vdi(op, vdi))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lab::sr::change_log::CBT_BLOCK_SIZE;

    const MIB: u64 = 1 << 20;

    fn changed(sr: &FileSr, from: Uuid, to: Uuid) -> Vec<u64> {
        sr.list_changed_blocks(from, to).unwrap().iter().collect()
    }

    #[test]
    fn writes_snapshots_and_imports_feed_the_logs_which_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let (vdi, s1, s2) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        {
            let sr = FileSr::open(dir.path()).unwrap();
            sr.create(vdi, 4 * MIB).unwrap();
            sr.write(vdi, 0, &[1; 512]).unwrap();
            sr.enable_cbt(vdi).unwrap();
            sr.enable_cbt(vdi).unwrap();
            assert!(sr.has_change_log(vdi));
            sr.write(vdi, 3 * CBT_BLOCK_SIZE + 100, &[2; 4096]).unwrap();
            sr.snapshot(vdi, s1).unwrap();
            assert!(sr.has_change_log(s1));
            sr.write(vdi, 40 * CBT_BLOCK_SIZE, &[3; 512]).unwrap();
            let mut guard = sr.begin_import(vdi).unwrap();
            guard.mark_written(9 * CBT_BLOCK_SIZE, 2 * CBT_BLOCK_SIZE);
            sr.commit_import(guard).unwrap();
            // An import that fails marks nothing.
            let mut failed = sr.begin_import(vdi).unwrap();
            failed.mark_written(60 * CBT_BLOCK_SIZE, 1);
            drop(failed);
            sr.snapshot(vdi, s2).unwrap();
            assert_eq!(changed(&sr, s1, s2), [9, 10, 40]);
        }
        let sr = FileSr::open(dir.path()).unwrap();
        assert_eq!(changed(&sr, s1, s2), [9, 10, 40]);
        sr.write(vdi, 63 * CBT_BLOCK_SIZE, &[4; 512]).unwrap();
        assert_eq!(changed(&sr, s2, vdi), [63]);
        assert_eq!(changed(&sr, s1, vdi), [9, 10, 40, 63]);
        assert_eq!(sr.list_changed_blocks(s1, vdi).unwrap().as_bytes().len(), 8);
    }

    #[test]
    fn data_destroy_keeps_the_log_and_frees_the_chain() {
        let dir = tempfile::tempdir().unwrap();
        let sr = FileSr::open(dir.path()).unwrap();
        let (vdi, s1, s2) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        sr.create(vdi, 4 * MIB).unwrap();
        sr.write(vdi, 0, &[7; 4096]).unwrap();
        let plain = Uuid::new_v4();
        sr.snapshot(vdi, plain).unwrap();
        assert!(matches!(
            sr.data_destroy(plain),
            Err(SrError::NoChangeLog { .. })
        ));
        sr.enable_cbt(vdi).unwrap();
        assert!(matches!(
            sr.data_destroy(vdi),
            Err(SrError::Writable { .. })
        ));
        sr.snapshot(vdi, s1).unwrap();
        let content = sr.hash(vdi).unwrap();
        let snapshot_leaf = sr.leaf_path(s1).unwrap();
        sr.data_destroy(s1).unwrap();
        sr.data_destroy(s1).unwrap();
        assert!(!snapshot_leaf.exists());
        assert!(sr.is_metadata_only(s1));
        assert_eq!(sr.metadata_only_vdis(), [s1]);
        assert!(!sr.vdis().contains(&s1));
        assert_eq!(sr.hash(vdi).unwrap(), content, "the VDI keeps its data");
        for err in [
            sr.chain(s1).map(|_| ()).unwrap_err(),
            sr.write(s1, 0, &[1]).unwrap_err(),
            sr.clone(s1, Uuid::new_v4()).unwrap_err(),
            sr.begin_import(s1).map(|_| ()).unwrap_err(),
        ] {
            assert!(matches!(err, SrError::MetadataOnly { .. }), "{err}");
        }
        sr.write(vdi, 5 * CBT_BLOCK_SIZE, &[1; 512]).unwrap();
        sr.snapshot(vdi, s2).unwrap();
        assert_eq!(changed(&sr, s1, s2), [5]);
        // Destroying what is left folds its log into the next one.
        sr.destroy(s1).unwrap();
        assert!(!sr.has_change_log(s1));
        assert!(matches!(sr.destroy(s1), Err(SrError::NotFound { .. })));
        sr.write(vdi, 6 * CBT_BLOCK_SIZE, &[1; 512]).unwrap();
        assert_eq!(changed(&sr, s2, vdi), [6]);
    }

    #[test]
    fn snapshots_cannot_be_tracked_and_disable_cuts_the_chain() {
        let dir = tempfile::tempdir().unwrap();
        let sr = FileSr::open(dir.path()).unwrap();
        let (vdi, s1, s2) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        sr.create(vdi, 2 * MIB).unwrap();
        sr.snapshot(vdi, s1).unwrap();
        assert!(matches!(sr.enable_cbt(s1), Err(SrError::ReadOnly { .. })));
        sr.enable_cbt(vdi).unwrap();
        sr.snapshot(vdi, s2).unwrap();
        sr.disable_cbt(vdi).unwrap();
        sr.disable_cbt(vdi).unwrap();
        assert!(!sr.has_change_log(vdi) && sr.has_change_log(s2));
        sr.write(vdi, 0, &[1; 512]).unwrap();
        assert!(matches!(
            sr.list_changed_blocks(s2, vdi),
            Err(SrError::ChangedBlocks { .. })
        ));
        // A resized VDI's log grows with it.
        sr.enable_cbt(vdi).unwrap();
        sr.resize(vdi, 4 * MIB).unwrap();
        sr.write(vdi, 3 * MIB, &[1; 512]).unwrap();
        let s3 = Uuid::new_v4();
        sr.snapshot(vdi, s3).unwrap();
        let s4 = Uuid::new_v4();
        sr.snapshot(vdi, s4).unwrap();
        assert_eq!(sr.list_changed_blocks(s3, s4).unwrap().blocks(), 64);
    }
}
