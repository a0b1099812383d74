//! A file's bytes as `Bytes`: memory-mapped for real files, a plain buffer for fuzzing and
//! tests. Slices of it are zero-copy.
//!
//! Pages of a mapping that have been read stay in the process's resident set, which would make
//! memory grow with the disk size. The mapping therefore counts what it hands out and, every
//! [`RELEASE_EVERY`] bytes, drops its page-table entries with `MADV_DONTNEED`. For a shared file
//! mapping that is always safe: a later access re-faults the page from the page cache, so slices
//! still in flight keep their content.

use std::fs::File;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use memmap2::{Advice, Mmap, UncheckedAdvice};

use super::ImageError;

const RELEASE_EVERY: u64 = 16 << 20;

#[derive(Clone)]
pub(crate) struct FileBytes {
    bytes: Bytes,
    map: Option<Arc<Mmap>>,
    read_since_release: Arc<AtomicU64>,
}

struct SharedMap(Arc<Mmap>);

impl AsRef<[u8]> for SharedMap {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl FileBytes {
    pub fn open(path: &Path) -> Result<FileBytes, ImageError> {
        let file = File::open(path).map_err(|e| ImageError::io(path, "open", e))?;
        let len = file
            .metadata()
            .map_err(|e| ImageError::io(path, "stat", e))?
            .len();
        if len == 0 {
            return Ok(FileBytes::from_bytes(Bytes::new()));
        }
        // SAFETY: the map is read-only. A file truncated underneath by another process would
        // fault; VHD layers we read are snapshots and parents that nothing writes.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| ImageError::io(path, "mmap", e))?;
        // Readahead hint only; failure changes nothing but speed.
        let _ = map.advise(Advice::Sequential);
        let map = Arc::new(map);
        Ok(FileBytes {
            bytes: Bytes::from_owner(SharedMap(map.clone())),
            map: Some(map),
            read_since_release: Arc::default(),
        })
    }

    pub fn from_bytes(bytes: Bytes) -> FileBytes {
        FileBytes {
            bytes,
            map: None,
            read_since_release: Arc::default(),
        }
    }

    pub fn len(&self) -> u64 {
        self.bytes.len() as u64
    }

    /// Bytes `offset..offset+len`, or `None` if that range is not inside the file.
    pub fn get(&self, offset: u64, len: u64) -> Option<&[u8]> {
        let start = usize::try_from(offset).ok()?;
        let end = start.checked_add(usize::try_from(len).ok()?)?;
        self.bytes.get(start..end)
    }

    /// A zero-copy slice, counted against the release budget.
    pub fn slice(&self, offset: u64, len: u64) -> Option<Bytes> {
        self.get(offset, len)?;
        self.note_read(len);
        Some(self.bytes.slice(offset as usize..(offset + len) as usize))
    }

    /// Count `len` bytes read through the mapping and release resident pages when due.
    pub fn note_read(&self, len: u64) {
        let Some(map) = &self.map else { return };
        let total = self.read_since_release.fetch_add(len, Ordering::Relaxed) + len;
        if total >= RELEASE_EVERY {
            self.read_since_release.store(0, Ordering::Relaxed);
            // SAFETY: the mapping is MAP_SHARED and read-only, so DONTNEED only drops page
            // table entries; the next access re-reads the page cache. No memory becomes invalid.
            let _ = unsafe { map.unchecked_advise(UncheckedAdvice::DontNeed) };
        }
    }
}
