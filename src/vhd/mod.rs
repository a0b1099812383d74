//! The VHD format, sans-IO: bytes in, typed values out, and back.
//!
//! Every parser takes the absolute byte offset its input came from, so that an error can say
//! exactly where in the file or stream the bad field sits. Nothing here reads files or sizes an
//! allocation from an unchecked input value.

pub mod bat;
pub mod batmap;
pub mod bitmap;
pub mod blockset;
mod checksum;
mod error;
pub mod footer;
pub mod geometry;
pub mod header;
pub mod locator;
pub mod timestamp;

pub use bat::Bat;
pub use blockset::BlockSet;
pub use checksum::ones_complement_checksum;
pub use error::{ErrorKind, FormatError, Structure};
pub use footer::{DiskType, Footer};
pub use geometry::Geometry;
pub use header::DynamicHeader;
pub use locator::{ParentLocator, PlatformCode};
pub use timestamp::VhdTimestamp;

/// Bytes per sector; every VHD offset and size is counted in these.
pub const SECTOR_SIZE: u64 = 512;
/// Size of the hard disk footer.
pub const FOOTER_SIZE: usize = 512;
/// Size of the dynamic disk header.
pub const HEADER_SIZE: usize = 1024;
/// The block size every real producer uses, and the largest we accept (blktap's limit).
pub const DEFAULT_BLOCK_SIZE: u32 = 2 * 1024 * 1024;
/// Smallest legal block size: one sector.
pub const MIN_BLOCK_SIZE: u32 = 512;
/// Largest virtual size a VHD can address: qemu's `VHD_MAX_SECTORS` (2040 GiB).
pub const MAX_VIRTUAL_SIZE: u64 = 0xff00_0000 * SECTOR_SIZE;
/// Upper bound on the BAT we will hold in memory (16 Mi entries): enough for the largest disk
/// at 128 KiB blocks, and a guard against headers claiming billions of entries.
pub const MAX_BAT_ENTRIES: u32 = 16 * 1024 * 1024;

/// Round `value` up to a multiple of [`SECTOR_SIZE`].
pub const fn round_up_to_sector(value: u64) -> u64 {
    value.div_ceil(SECTOR_SIZE) * SECTOR_SIZE
}

/// Big-endian u32 at `at`; callers have already checked that `bytes` is long enough.
pub(crate) fn be_u32(bytes: &[u8], at: usize) -> u32 {
    let mut word = [0u8; 4];
    word.copy_from_slice(&bytes[at..at + 4]);
    u32::from_be_bytes(word)
}

/// Big-endian u64 at `at`; callers have already checked that `bytes` is long enough.
pub(crate) fn be_u64(bytes: &[u8], at: usize) -> u64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(&bytes[at..at + 8]);
    u64::from_be_bytes(word)
}
