//! The lab host's file storage repository (SR): a directory of VHD files in which each VDI is
//! a chain, with XenServer file-SR semantics. It knows nothing of XAPI objects; the RPC layer
//! maps VDI records onto it.
//!
//! Layout: one `<footer uuid>.vhd` per VHD file and `sr.json`, the SR's index of VDI uuid ->
//! leaf file name, virtual size and read-only flag (plus the optional capacity). As on
//! XenServer, a snapshot or a clone turns the VDI's leaf into a hidden read-only parent and
//! gives the VDI and the new VDI fresh empty differencing children of it. A destroy removes
//! the VDI from the index, then sweeps away every file no remaining chain references. The
//! hidden parents are listed by [`FileSr::hidden_vhds`], which the RPC layer shows as
//! unmanaged VDIs, as XenServer does.
//!
//! Decisions:
//! - Sizes are rounded up to whole 2 MiB blocks, as SM's `validate_and_round_vhd_size` does.
//! - `resize` freezes the leaf and gives the VDI a larger differencing child, like a snapshot
//!   without the snapshot VDI. Our leaves' BATs never have spare entries, so growing in place
//!   would mean rewriting the BAT; a child layer needs only the image module's public API,
//!   and the chain view reads bytes past a smaller parent's size as zeros.
//! - Space is thin-provisioned. With a capacity set, creating, snapshotting, cloning or
//!   growing a VDI fails with [`SrError::Full`] when the bytes the VDI could newly fill (its
//!   virtual size, or the growth for a resize) exceed the capacity minus the current size of
//!   all VHD files. It is a check, not a reservation.
//! - A VDI's physical utilisation is the size of its leaf file only: parents are shared and
//!   XenServer accounts them to the hidden parent VDIs.
//! - Failures are not rolled back. The index only ever names files that exist, so a failed
//!   snapshot, clone or resize leaves at most unreferenced children, which the next sweep
//!   (at open or after a destroy) deletes, and a leaf marked hidden but still the VDI's
//!   leaf, which is harmless: nothing here reads the flag, and the next snapshot sets it anyway.
//! - Chains deeper than 32 files are coalesced after a destroy, as XenServer's garbage
//!   collector does: runs of hidden files with one hidden child each are merged into one
//!   file (see `coalesce`), so a VDI snapshotted or cloned every cycle stays far from the
//!   256-level chain limit. The merge copies data while every VDI lock is held, which
//!   pauses the SR's other operations for that long; it happens once per ~30 cycles.
//! - An import writes a staging copy of the VDI's leaf and replaces the leaf with it only once
//!   the whole stream was applied (see [`ImportGuard`]), so a failed import leaves the VDI's
//!   content exactly as it was. XenServer writes in place; a lab host that tests clients'
//!   error handling is more useful when a bad stream changes nothing.
//!
//! Concurrency: [`FileSr`] is `Send + Sync`; share it in an `Arc`. Changes to the index, and
//! every creation or deletion of files, are serialised by one mutex. Each VDI also has a lock
//! (one of a fixed set of stripes) held by every operation on it, so a guest write never races
//! a snapshot of the same VDI while writes to different VDIs run in parallel. Lock order: VDI
//! stripe, then the index, then the import set.

mod cbt;
mod change_log;
mod change_log_file;
mod coalesce;
mod digest;
mod error;
mod guest_write;
mod import;
mod index;
mod layout;
mod space;
mod sweep;
mod vhd_files;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use uuid::Uuid;

pub use change_log::{BlockBitmap, CBT_BLOCK_SIZE};
pub use error::{Operation, SrError};
pub use import::ImportGuard;

use crate::image::Chain;
use crate::vhd;
use change_log::ChangeLogs;
use error::{Context, image_error};
use index::{Index, VdiRecord};

/// Virtual sizes are whole multiples of the 2 MiB block, as on XenServer.
const SIZE_GRANULE: u64 = vhd::DEFAULT_BLOCK_SIZE as u64;
/// Number of VDI lock stripes: enough that unrelated VDIs rarely share one.
const VDI_LOCK_STRIPES: usize = 64;

/// A hidden VHD file of the SR (see [`FileSr::hidden_vhds`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HiddenVhd {
    /// Its footer uuid, which its children's parent locators and `vhd-parent` name.
    pub uuid: Uuid,
    /// The footer uuid of the VHD it builds on, if it is a differencing VHD.
    pub parent: Option<Uuid>,
    pub virtual_size: u64,
    /// The size of its file.
    pub file_size: u64,
}

/// A file SR over one directory.
pub struct FileSr {
    dir: PathBuf,
    index: Mutex<Index>,
    /// VDIs an import is writing; shared with the [`ImportGuard`]s that release them.
    importing: Arc<Mutex<HashSet<Uuid>>>,
    vdi_locks: [Mutex<()>; VDI_LOCK_STRIPES],
    /// The changed block tracking logs (see `cbt`); the last lock taken.
    change_logs: Mutex<ChangeLogs>,
}

impl FileSr {
    /// Open the SR in `dir`, creating the directory and an empty index if needed. An existing
    /// index is reloaded, every VDI's leaf must exist, and files no chain references (left by
    /// an interrupted operation) are deleted.
    pub fn open(dir: &Path) -> Result<FileSr, SrError> {
        let ctx = Context::sr(Operation::Open);
        std::fs::create_dir_all(dir).map_err(ctx.io("create directory", dir))?;
        let index = match Index::load(dir, ctx)? {
            Some(index) => index,
            // Without an index every VHD file would look like garbage to the sweep.
            None if sweep::holds_vhd_files(dir, ctx)? => {
                return Err(SrError::NotAnSr {
                    dir: dir.to_path_buf(),
                });
            }
            None => {
                let index = Index::default();
                index.save(dir, ctx)?;
                index
            }
        };
        if let Some((vdi, record)) = index
            .vdis
            .iter()
            .find(|(_, record)| !dir.join(&record.leaf).is_file())
        {
            return Err(SrError::MissingLeaf {
                op: Operation::Open,
                vdi: *vdi,
                path: dir.join(&record.leaf),
            });
        }
        sweep::sweep(dir, &index, &HashSet::new(), Operation::Open)?;
        let (logs, damaged) = change_log_file::load_all(dir, ctx)?;
        for error in damaged {
            tracing::warn!(%error, "a damaged change log is ignored: its VDI is untracked");
        }
        let change_logs = ChangeLogs::from_loaded(logs);
        Ok(FileSr {
            dir: dir.to_path_buf(),
            index: Mutex::new(index),
            importing: Arc::default(),
            vdi_locks: std::array::from_fn(|_| Mutex::new(())),
            change_logs: Mutex::new(change_logs),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Every VDI of the SR, in uuid order.
    pub fn vdis(&self) -> Vec<Uuid> {
        lock(&self.index).vdis.keys().copied().collect()
    }

    /// Create `vdi` as an empty dynamic VHD of `virtual_size` bytes (rounded up to 2 MiB).
    pub fn create(&self, vdi: Uuid, virtual_size: u64) -> Result<(), SrError> {
        let op = Operation::Create;
        let mut index = lock(&self.index);
        ensure_absent(&index, op, vdi)?;
        let virtual_size = round_size(virtual_size);
        self.ensure_space(&index, op, vdi, virtual_size)?;
        let leaf =
            vhd_files::create_empty(&self.dir, virtual_size).map_err(image_error(op, vdi))?;
        let mut next = index.clone();
        next.vdis.insert(
            vdi,
            VdiRecord {
                leaf,
                virtual_size,
                read_only: false,
            },
        );
        self.commit(&mut index, next, Context::vdi(op, vdi))
    }

    /// Snapshot `vdi` as the new read-only VDI `new_vdi`.
    pub fn snapshot(&self, vdi: Uuid, new_vdi: Uuid) -> Result<(), SrError> {
        self.branch(Operation::Snapshot, vdi, new_vdi, true)
    }

    /// Clone `vdi` (which may be a snapshot) as the new writable VDI `new_vdi`.
    pub fn clone(&self, vdi: Uuid, new_vdi: Uuid) -> Result<(), SrError> {
        self.branch(Operation::Clone, vdi, new_vdi, false)
    }

    /// Freeze `vdi`'s leaf as a hidden parent and hang two fresh children under it: the VDI's
    /// new leaf and `new_vdi`'s.
    fn branch(
        &self,
        op: Operation,
        vdi: Uuid,
        new_vdi: Uuid,
        new_read_only: bool,
    ) -> Result<(), SrError> {
        let _vdi_lock = self.lock_vdi(vdi);
        let mut index = lock(&self.index);
        let record = self.find(&index, op, vdi)?.clone();
        self.ensure_not_importing(op, vdi)?;
        ensure_absent(&index, op, new_vdi)?;
        self.ensure_space(&index, op, vdi, record.virtual_size)?;
        let parent =
            vhd_files::freeze(&self.dir.join(&record.leaf)).map_err(image_error(op, vdi))?;
        let own_leaf = vhd_files::create_child(&self.dir, &parent, record.virtual_size)
            .map_err(image_error(op, vdi))?;
        let new_leaf = vhd_files::create_child(&self.dir, &parent, record.virtual_size)
            .map_err(image_error(op, new_vdi))?;
        let mut next = index.clone();
        next.vdis.insert(
            new_vdi,
            VdiRecord {
                leaf: new_leaf,
                virtual_size: record.virtual_size,
                read_only: new_read_only,
            },
        );
        let tracked = op == Operation::Snapshot && !record.read_only;
        next.vdis.insert(
            vdi,
            VdiRecord {
                leaf: own_leaf,
                ..record
            },
        );
        self.commit(&mut index, next, Context::vdi(op, vdi))?;
        // A clone starts untracked, and a snapshot of a snapshot changes no content.
        if tracked {
            self.snapshot_log(vdi, new_vdi);
        }
        Ok(())
    }

    /// Remove `vdi` (or what is left of it after [`FileSr::data_destroy`]), folding its change
    /// log into the next one of its chain, then delete its leaf and every hidden parent no
    /// other VDI builds on.
    pub fn destroy(&self, vdi: Uuid) -> Result<(), SrError> {
        let op = Operation::Destroy;
        {
            let _vdi_lock = self.lock_vdi(vdi);
            let mut index = lock(&self.index);
            let has_chain = index.vdis.contains_key(&vdi);
            if !has_chain && !self.logs().contains(vdi) {
                return Err(SrError::NotFound { op, vdi });
            }
            self.ensure_not_importing(op, vdi)?;
            // The log first: should the rest fail, the VDI is left untracked, which makes
            // changed-block queries through it fail rather than miss blocks.
            self.remove_log(op, vdi)?;
            if !has_chain {
                return Ok(());
            }
            self.drop_chain(op, vdi, &mut index)?;
        }
        self.coalesce_after(op);
        Ok(())
    }

    /// Remove `vdi`'s chain from the index, then sweep the files nothing references any more.
    fn drop_chain(&self, op: Operation, vdi: Uuid, index: &mut Index) -> Result<(), SrError> {
        let mut next = index.clone();
        next.vdis.remove(&vdi);
        self.commit(index, next, Context::vdi(op, vdi))?;
        // The chain is gone once the index says so; files a failed sweep leaves behind are
        // unreferenced and go at the next sweep.
        let importing = lock(&self.importing).clone();
        if let Err(e) = sweep::sweep(&self.dir, index, &importing, op) {
            tracing::warn!(%vdi, error = %e, "{op}: sweeping unreferenced VHD files failed");
        }
        Ok(())
    }

    /// Coalesce after a chain went: a destroy is what leaves hidden files with a single child
    /// to merge. Takes every VDI lock, so the caller holds none.
    fn coalesce_after(&self, op: Operation) {
        if let Err(e) = self.coalesce(coalesce::COALESCE_DEPTH) {
            tracing::warn!(error = %e, "{op}: coalescing the SR's chains failed; they stay as they were");
        }
    }

    /// Shorten chains deeper than `max_depth` (see [`coalesce`]); returns the number of files
    /// merged away. Every VDI lock is held, so no chain is opened (nor a file read through its
    /// parent locator) while files are renamed and deleted; chains opened before keep their
    /// memory maps of the old files, which stay readable until unmapped.
    fn coalesce(&self, max_depth: usize) -> Result<usize, SrError> {
        let _all_vdis: Vec<MutexGuard<'_, ()>> = self.vdi_locks.iter().map(lock).collect();
        let index = lock(&self.index);
        let merged = coalesce::coalesce(&self.dir, &index, max_depth)?;
        if merged > 0 {
            let importing = lock(&self.importing).clone();
            sweep::sweep(&self.dir, &index, &importing, Operation::Coalesce)?;
        }
        Ok(merged)
    }

    /// Grow `vdi` to `new_size` bytes (rounded up to 2 MiB); shrinking is refused. The leaf
    /// is frozen and the VDI continues on a larger differencing child of it.
    pub fn resize(&self, vdi: Uuid, new_size: u64) -> Result<(), SrError> {
        let op = Operation::Resize;
        let _vdi_lock = self.lock_vdi(vdi);
        let mut index = lock(&self.index);
        let record = self.find(&index, op, vdi)?.clone();
        ensure_writable(op, vdi, &record)?;
        self.ensure_not_importing(op, vdi)?;
        let rounded = round_size(new_size);
        if rounded < record.virtual_size {
            return Err(SrError::Shrink {
                vdi,
                current: record.virtual_size,
                requested: new_size,
            });
        }
        if rounded == record.virtual_size {
            return Ok(());
        }
        self.ensure_space(&index, op, vdi, rounded - record.virtual_size)?;
        let parent =
            vhd_files::freeze(&self.dir.join(&record.leaf)).map_err(image_error(op, vdi))?;
        let leaf =
            vhd_files::create_child(&self.dir, &parent, rounded).map_err(image_error(op, vdi))?;
        let mut next = index.clone();
        next.vdis.insert(
            vdi,
            VdiRecord {
                leaf,
                virtual_size: rounded,
                ..record
            },
        );
        self.commit(&mut index, next, Context::vdi(op, vdi))?;
        self.resize_log(vdi, rounded);
        Ok(())
    }

    /// A guest write of `data` at byte `offset`, onto the VDI's leaf with sector-granular
    /// bitmaps. Partly covered edge sectors keep the bytes the guest saw there before. The
    /// VDI's change log, if it has one, marks the blocks first.
    pub fn write(&self, vdi: Uuid, offset: u64, data: &[u8]) -> Result<(), SrError> {
        let op = Operation::Write;
        let _vdi_lock = self.lock_vdi(vdi);
        let record = self.record(op, vdi)?;
        ensure_writable(op, vdi, &record)?;
        self.ensure_not_importing(op, vdi)?;
        let len = data.len() as u64;
        if offset
            .checked_add(len)
            .is_none_or(|end| end > record.virtual_size)
        {
            return Err(SrError::OutOfRange {
                vdi,
                offset,
                len,
                virtual_size: record.virtual_size,
            });
        }
        self.mark_written(op, vdi, offset, len)?;
        guest_write::write(&self.dir.join(&record.leaf), offset, data).map_err(image_error(op, vdi))
    }

    /// The chain of the VDI's leaf, opened for reading.
    pub fn chain(&self, vdi: Uuid) -> Result<Chain, SrError> {
        self.open_chain(Operation::Read, vdi)
    }

    /// Lowercase hex SHA-256 of the VDI's whole guest content (its virtual size).
    pub fn hash(&self, vdi: Uuid) -> Result<String, SrError> {
        let chain = self.open_chain(Operation::Hash, vdi)?;
        Ok(digest::content_sha256(&chain))
    }

    pub fn leaf_path(&self, vdi: Uuid) -> Result<PathBuf, SrError> {
        Ok(self.dir.join(self.record(Operation::Read, vdi)?.leaf))
    }

    /// The footer uuid of the VHD the VDI's leaf builds on (`sm_config['vhd-parent']`), or
    /// `None` for a VDI that is a single dynamic VHD.
    pub fn vhd_parent(&self, vdi: Uuid) -> Result<Option<Uuid>, SrError> {
        let op = Operation::Read;
        let _vdi_lock = self.lock_vdi(vdi);
        let leaf = self.dir.join(self.record(op, vdi)?.leaf);
        vhd_files::parent_uuid(&leaf).map_err(image_error(op, vdi))
    }

    /// Every hidden VHD file: the frozen parents the VDIs' chains build on, which XenServer
    /// shows as unmanaged "base copy" VDIs. In uuid order; each once, however many chains
    /// share it. A VDI destroyed while this runs is skipped.
    pub fn hidden_vhds(&self) -> Result<Vec<HiddenVhd>, SrError> {
        let op = Operation::Read;
        let mut found = std::collections::BTreeMap::new();
        for vdi in self.vdis() {
            let chain = match self.open_chain(op, vdi) {
                Err(SrError::NotFound { .. }) => continue,
                chain => chain?,
            };
            // Layers run leaf first: every one below the leaf is hidden.
            let layers = chain.layers();
            for (at, layer) in layers.iter().enumerate().skip(1) {
                let uuid = layer.footer().unique_id;
                if found.contains_key(&uuid) {
                    continue;
                }
                let path = layer.path();
                let file_size = std::fs::metadata(path)
                    .map(|m| m.len())
                    .map_err(Context::vdi(op, vdi).io("measure", path))?;
                let hidden = HiddenVhd {
                    uuid,
                    parent: layers.get(at + 1).map(|p| p.footer().unique_id),
                    virtual_size: layer.virtual_size(),
                    file_size,
                };
                found.insert(uuid, hidden);
            }
        }
        Ok(found.into_values().collect())
    }

    pub fn virtual_size(&self, vdi: Uuid) -> Result<u64, SrError> {
        Ok(self.record(Operation::Read, vdi)?.virtual_size)
    }

    pub fn is_read_only(&self, vdi: Uuid) -> Result<bool, SrError> {
        Ok(self.record(Operation::Read, vdi)?.read_only)
    }

    /// Size of the VDI's leaf file (shared parents are not counted), or of its change log when
    /// only that is left.
    pub fn vdi_physical_utilisation(&self, vdi: Uuid) -> Result<u64, SrError> {
        let op = Operation::Measure;
        let file = match self.record(op, vdi) {
            Ok(record) => self.dir.join(record.leaf),
            Err(SrError::MetadataOnly { .. }) => self.dir.join(layout::log_file_name(vdi)),
            Err(e) => return Err(e),
        };
        std::fs::metadata(&file)
            .map(|m| m.len())
            .map_err(Context::vdi(op, vdi).io("measure", &file))
    }

    /// The configured capacity in bytes, if any.
    pub fn capacity(&self) -> Option<u64> {
        lock(&self.index).capacity
    }

    /// Set or clear the capacity; it is kept in the index across restarts.
    pub fn set_capacity(&self, capacity: Option<u64>) -> Result<(), SrError> {
        let mut index = lock(&self.index);
        let next = Index {
            capacity,
            ..index.clone()
        };
        self.commit(&mut index, next, Context::sr(Operation::SetCapacity))
    }

    /// The capacity, or without one the size of the filesystem holding the SR.
    pub fn physical_size(&self) -> Result<u64, SrError> {
        match self.capacity() {
            Some(capacity) => Ok(capacity),
            None => space::filesystem_size(&self.dir, Context::sr(Operation::Measure)),
        }
    }

    /// Total size of the SR's VHD files, hidden parents included.
    pub fn physical_utilisation(&self) -> Result<u64, SrError> {
        space::vhd_files_size(&self.dir, Context::sr(Operation::Measure))
    }

    fn open_chain(&self, op: Operation, vdi: Uuid) -> Result<Chain, SrError> {
        // The lock keeps a guest write from changing the leaf while its metadata is read.
        let _vdi_lock = self.lock_vdi(vdi);
        let leaf = self.dir.join(self.record(op, vdi)?.leaf);
        Chain::open(&leaf).map_err(image_error(op, vdi))
    }

    fn record(&self, op: Operation, vdi: Uuid) -> Result<VdiRecord, SrError> {
        self.find(&lock(&self.index), op, vdi).cloned()
    }

    /// The VDI's entry in `index`; for a VDI of which only the change log is left,
    /// [`SrError::MetadataOnly`].
    fn find<'a>(
        &self,
        index: &'a Index,
        op: Operation,
        vdi: Uuid,
    ) -> Result<&'a VdiRecord, SrError> {
        index.vdis.get(&vdi).ok_or_else(|| {
            if self.logs().contains(vdi) {
                SrError::MetadataOnly { op, vdi }
            } else {
                SrError::NotFound { op, vdi }
            }
        })
    }

    fn lock_vdi(&self, vdi: Uuid) -> MutexGuard<'_, ()> {
        let stripe = (vdi.as_u128() % VDI_LOCK_STRIPES as u128) as usize;
        lock(&self.vdi_locks[stripe])
    }

    fn ensure_not_importing(&self, op: Operation, vdi: Uuid) -> Result<(), SrError> {
        if lock(&self.importing).contains(&vdi) {
            return Err(SrError::InUse { op, vdi });
        }
        Ok(())
    }

    /// Refuse when `requested` more bytes could not fit under the capacity.
    fn ensure_space(
        &self,
        index: &Index,
        op: Operation,
        vdi: Uuid,
        requested: u64,
    ) -> Result<(), SrError> {
        let Some(capacity) = index.capacity else {
            return Ok(());
        };
        let used = space::vhd_files_size(&self.dir, Context::vdi(op, vdi))?;
        let available = capacity.saturating_sub(used);
        if requested > available {
            return Err(SrError::Full {
                op,
                vdi,
                requested,
                available,
            });
        }
        Ok(())
    }

    /// Make the files `next` names durable, save it, and only then make it current, so the
    /// index on disk never names a file that may not exist.
    fn commit(&self, current: &mut Index, next: Index, ctx: Context) -> Result<(), SrError> {
        layout::sync_dir(&self.dir, ctx)?;
        next.save(&self.dir, ctx)?;
        *current = next;
        Ok(())
    }
}

/// The leaf file of `vdi` in the SR in `dir`, read from the SR's index without opening the
/// SR: opening sweeps, which must not run while another process (a `lab serve`) holds it.
/// The answer is as of the read; the serving process may replace the leaf afterwards.
pub fn indexed_leaf_path(dir: &Path, vdi: Uuid) -> Result<PathBuf, SrError> {
    let op = Operation::Read;
    let ctx = Context::vdi(op, vdi);
    let index = Index::load(dir, ctx)?.ok_or_else(|| {
        let missing = std::io::Error::from(std::io::ErrorKind::NotFound);
        ctx.io("read", dir.join(layout::INDEX_FILE))(missing)
    })?;
    Ok(dir.join(&find(&index, op, vdi)?.leaf))
}

fn find(index: &Index, op: Operation, vdi: Uuid) -> Result<&VdiRecord, SrError> {
    index.vdis.get(&vdi).ok_or(SrError::NotFound { op, vdi })
}

fn ensure_absent(index: &Index, op: Operation, vdi: Uuid) -> Result<(), SrError> {
    if index.vdis.contains_key(&vdi) {
        return Err(SrError::AlreadyExists { op, vdi });
    }
    Ok(())
}

fn ensure_writable(op: Operation, vdi: Uuid, record: &VdiRecord) -> Result<(), SrError> {
    if record.read_only {
        return Err(SrError::ReadOnly { op, vdi });
    }
    Ok(())
}

/// `size` rounded up to whole blocks; sizes too large to round are left for the image
/// module to refuse as past the VHD maximum.
fn round_size(size: u64) -> u64 {
    size.checked_next_multiple_of(SIZE_GRANULE)
        .unwrap_or(u64::MAX)
}

/// Every mutex guards data that is only replaced whole after a successful step, so a panic
/// elsewhere cannot leave it half-updated: recover the guard instead of propagating poison.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_round_up_to_whole_blocks() {
        assert_eq!(round_size(0), 0);
        assert_eq!(round_size(1), SIZE_GRANULE);
        assert_eq!(round_size(SIZE_GRANULE), SIZE_GRANULE);
        assert_eq!(round_size(SIZE_GRANULE + 1), 2 * SIZE_GRANULE);
        assert_eq!(round_size(u64::MAX), u64::MAX);
    }

    /// Everything coalescing must keep: each VDI's content, and the delta between each pair.
    fn observe(sr: &FileSr) -> (Vec<String>, Vec<crate::vhd::BlockSet>) {
        let vdis = sr.vdis();
        let hashes = vdis.iter().map(|v| sr.hash(*v).unwrap()).collect();
        let chains: Vec<Chain> = vdis.iter().map(|v| sr.chain(*v).unwrap()).collect();
        let mut deltas = Vec::new();
        for leaf in &chains {
            for base in &chains {
                deltas.push(crate::image::changed(leaf, Some(base)));
            }
        }
        (hashes, deltas)
    }

    fn deepest(sr: &FileSr) -> usize {
        let depth = |v: &Uuid| sr.chain(*v).unwrap().layers().len();
        sr.vdis().iter().map(depth).max().unwrap_or(0)
    }

    /// A guest write of a few sectors, some partial blocks, from a cheap generator.
    fn scribble(sr: &FileSr, vdi: Uuid, round: u64) {
        let offset = (round * 7919 * 4096 + round * 512) % (12 << 20);
        let data: Vec<u8> = (0..(round % 5 + 1) * 1536)
            .map(|i| (i ^ round) as u8)
            .collect();
        sr.write(vdi, offset, &data).unwrap();
    }

    #[test]
    fn coalescing_a_replication_source_keeps_content_and_deltas_and_bounds_depth() {
        // The source side of replication: snapshot every cycle, keep the newest snapshot.
        let dir = tempfile::tempdir().unwrap();
        let sr = FileSr::open(dir.path()).unwrap();
        let live = Uuid::new_v4();
        sr.create(live, 16 << 20).unwrap();
        let mut kept: Option<Uuid> = None;
        for round in 0..12 {
            scribble(&sr, live, round);
            let snapshot = Uuid::new_v4();
            sr.snapshot(live, snapshot).unwrap();
            if let Some(old) = kept.replace(snapshot) {
                sr.destroy(old).unwrap();
            }
            let before = observe(&sr);
            sr.coalesce(3).unwrap();
            assert_eq!(observe(&sr), before, "round {round}");
            assert!(deepest(&sr) <= 4, "round {round}: depth {}", deepest(&sr));
        }
        let files = layout::file_names(dir.path(), Context::sr(Operation::Read)).unwrap();
        assert_eq!(
            files.len(),
            1 + 4,
            "the index and the chains' files only: {files:?}"
        );
    }

    #[test]
    fn coalescing_replica_clones_keeps_every_retained_replica() {
        // The target side: each replica a clone of the previous one, three kept.
        let dir = tempfile::tempdir().unwrap();
        let sr = FileSr::open(dir.path()).unwrap();
        let first = Uuid::new_v4();
        sr.create(first, 16 << 20).unwrap();
        let mut replicas = std::collections::VecDeque::from([first]);
        for round in 0..12 {
            let newest = *replicas.back().unwrap();
            let next = Uuid::new_v4();
            sr.clone(newest, next).unwrap();
            scribble(&sr, next, round);
            replicas.push_back(next);
            if replicas.len() > 3 {
                sr.destroy(replicas.pop_front().unwrap()).unwrap();
            }
            let before = observe(&sr);
            sr.coalesce(2).unwrap();
            assert_eq!(observe(&sr), before, "round {round}");
        }
        assert!(deepest(&sr) <= 5, "depth {}", deepest(&sr));
    }

    #[test]
    fn the_indexed_leaf_is_the_open_srs_leaf_and_unknown_vdis_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let vdi = Uuid::new_v4();
        let missing = indexed_leaf_path(dir.path(), vdi).unwrap_err();
        assert!(matches!(missing, SrError::Io { .. }), "{missing}");
        assert!(missing.to_string().contains("sr.json"), "{missing}");
        let sr = FileSr::open(dir.path()).unwrap();
        sr.create(vdi, 4 << 20).unwrap();
        sr.snapshot(vdi, Uuid::new_v4()).unwrap();
        assert_eq!(
            indexed_leaf_path(dir.path(), vdi).unwrap(),
            sr.leaf_path(vdi).unwrap()
        );
        let other = Uuid::new_v4();
        let unknown = indexed_leaf_path(dir.path(), other).unwrap_err();
        assert!(
            matches!(unknown, SrError::NotFound { vdi, .. } if vdi == other),
            "{unknown}"
        );
    }

    #[test]
    fn a_file_sr_can_be_shared_between_threads() {
        fn shareable<T: Send + Sync>() {}
        shareable::<FileSr>();
        shareable::<ImportGuard>();
    }

    #[test]
    fn creating_past_the_vhd_maximum_fails_with_the_vdi_named_and_nothing_left() {
        let dir = tempfile::tempdir().unwrap();
        let sr = FileSr::open(dir.path()).unwrap();
        let vdi = Uuid::new_v4();
        let err = sr.create(vdi, vhd::MAX_VIRTUAL_SIZE + 1).unwrap_err();
        assert!(
            matches!(
                err,
                SrError::Image {
                    op: Operation::Create,
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains(&vdi.to_string()), "{err}");
        assert!(sr.vdis().is_empty());
        assert_eq!(sr.physical_utilisation().unwrap(), 0);
    }
}
