//! Streaming writes that keep the page cache small. Each range written goes to the kernel's
//! writeback at once, and the pages some way behind the writer are dropped once they are
//! clean, so a stream of any size cycles through the same few megabytes of page cache.
//!
//! Two reasons to bother. A restore of a large disk should not evict everything else the host
//! had cached. And on a VM whose balloon hands free memory back to its host (virtio free page
//! reporting, as on the machines these figures come from), writing into memory that has been
//! free for a couple of seconds costs 5–15× more than writing into pages just freed: a
//! writer that grows the page cache pays that on every page, one that recycles its own pages
//! does not (README, Performance, "memory the host took back").
//!
//! Everything here is a hint: an error (a file system without support, a pipe) changes
//! nothing, and durability still comes from the writer's closing fdatasync.

use std::fs::File;
use std::os::fd::AsRawFd;

/// Writeback is started for every this many bytes written.
const KICK: u64 = 2 << 20;
/// Pages this far behind the newest byte written are dropped.
const LAG: u64 = 32 << 20;

/// Follows one file's writes, which must go mostly forward (a sequential image or disk
/// stream); a write behind the newest range is left to the closing fdatasync.
#[derive(Debug)]
pub struct Writeback {
    /// Wait for the writeback of the pages before dropping them: the page cache then holds at
    /// most [`LAG`] plus a [`KICK`] of this file, whatever the disk's speed.
    wait: bool,
    /// Writeback has been started for everything below this offset.
    kicked_to: u64,
    /// Pages below this offset have been dropped.
    dropped_to: u64,
}

impl Writeback {
    /// For a writer that ends with fdatasync: it waits for the disk behind it anyway, so it
    /// waits as it goes and keeps the page cache bounded.
    pub fn durable() -> Writeback {
        Writeback::new(true)
    }

    /// For a writer that does not wait for the disk: it never blocks on writeback, and drops
    /// only what the disk has already written, so its pages pile up only where the disk falls
    /// behind.
    pub fn lazy() -> Writeback {
        Writeback::new(false)
    }

    fn new(wait: bool) -> Writeback {
        Writeback {
            wait,
            kicked_to: 0,
            dropped_to: 0,
        }
    }

    /// Count the `len` bytes just written at `offset` through any descriptor of `file`.
    pub fn wrote(&mut self, file: &File, offset: u64, len: u64) {
        let end = offset.saturating_add(len);
        if end < self.kicked_to.saturating_add(KICK) {
            return;
        }
        let fd = file.as_raw_fd();
        sync_range(fd, self.kicked_to, end, libc::SYNC_FILE_RANGE_WRITE);
        self.kicked_to = end;
        let behind = end.saturating_sub(LAG);
        if behind <= self.dropped_to {
            return;
        }
        if self.wait {
            sync_range(
                fd,
                self.dropped_to,
                behind,
                libc::SYNC_FILE_RANGE_WAIT_BEFORE
                    | libc::SYNC_FILE_RANGE_WRITE
                    | libc::SYNC_FILE_RANGE_WAIT_AFTER,
            );
        }
        // Only clean pages go; dirty ones and those still being written stay.
        // SAFETY: posix_fadvise reads no memory of ours; it takes a descriptor we hold.
        unsafe {
            libc::posix_fadvise(
                fd,
                self.dropped_to as libc::off_t,
                (behind - self.dropped_to) as libc::off_t,
                libc::POSIX_FADV_DONTNEED,
            );
        }
        self.dropped_to = behind;
    }
}

/// sync_file_range(2) over `from..to`.
fn sync_range(fd: i32, from: u64, to: u64, flags: libc::c_uint) {
    // SAFETY: sync_file_range reads no memory of ours; it takes a descriptor we hold.
    unsafe {
        libc::sync_file_range(
            fd,
            from as libc::off64_t,
            (to - from) as libc::off64_t,
            flags,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;

    /// Which of `file`'s first `len` bytes' pages are in the page cache, per mincore(2).
    fn resident_pages(file: &File, len: usize) -> Vec<bool> {
        let page = 4096;
        // SAFETY: a shared read-only mapping of `len` bytes of an open file, unmapped below;
        // mincore fills one byte per page of it into a vector of that many bytes.
        unsafe {
            let map = libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            );
            assert_ne!(map, libc::MAP_FAILED);
            let mut pages = vec![0u8; len.div_ceil(page)];
            let answer = libc::mincore(map, len, pages.as_mut_ptr());
            libc::munmap(map, len);
            assert_eq!(answer, 0);
            pages.iter().map(|p| p & 1 == 1).collect()
        }
    }

    /// Write 96 MiB forward in 1 MiB pieces through `writeback`; the file's resident pages.
    fn stream_through(mut writeback: Writeback) -> Vec<bool> {
        // Not /tmp, which may be a tmpfs whose pages cannot be dropped.
        let dir = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).unwrap();
        let path = dir.path().join("stream");
        let file = File::options()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .unwrap();
        let piece = vec![0x5Au8; 1 << 20];
        for i in 0..96u64 {
            file.write_all_at(&piece, i << 20).unwrap();
            writeback.wrote(&file, i << 20, piece.len() as u64);
        }
        let resident = resident_pages(&file, 96 << 20);
        // The content is whole whatever was dropped.
        let mut back = vec![0u8; 1 << 20];
        for i in 0..96u64 {
            file.read_exact_at(&mut back, i << 20).unwrap();
            assert!(back == piece, "MiB {i} came back different");
        }
        resident
    }

    #[test]
    fn a_durable_stream_keeps_only_the_pages_near_its_end() {
        let resident = stream_through(Writeback::durable());
        let mib = |m: usize| m * 256;
        let early = resident[..mib(96 - 34)].iter().filter(|&&r| r).count();
        assert_eq!(early, 0, "pages more than the lag behind stayed cached");
        let recent = resident[mib(96 - 30)..].iter().filter(|&&r| r).count();
        assert!(
            recent > mib(16),
            "the newest pages should still be cached: {recent}"
        );
    }

    #[test]
    fn a_rewrite_behind_the_stream_starts_nothing() {
        let mut writeback = Writeback::durable();
        let dir = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).unwrap();
        let file = File::create(dir.path().join("f")).unwrap();
        writeback.wrote(&file, 64 << 20, 4 << 20);
        assert_eq!(
            (writeback.kicked_to, writeback.dropped_to),
            (68 << 20, 36 << 20)
        );
        writeback.wrote(&file, 0, 512);
        writeback.wrote(&file, 67 << 20, 1 << 20);
        assert_eq!(
            (writeback.kicked_to, writeback.dropped_to),
            (68 << 20, 36 << 20)
        );
    }
}
