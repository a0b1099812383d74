//! How much space the SR holds and how much it may hold.

use std::ffi::CString;
use std::mem::MaybeUninit;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use super::error::{Context, SrError};
use super::layout::{file_names, vhd_file_uuid};

/// Total size of the SR's VHD files, hidden parents included.
pub(super) fn vhd_files_size(dir: &Path, ctx: Context) -> Result<u64, SrError> {
    let mut total = 0u64;
    for name in file_names(dir, ctx)? {
        if vhd_file_uuid(&name).is_none() {
            continue;
        }
        let path = dir.join(&name);
        match std::fs::metadata(&path) {
            Ok(meta) => total = total.saturating_add(meta.len()),
            // Deleted by a sweep between listing and measuring: it holds nothing any more.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(ctx.io("measure", &path)(e)),
        }
    }
    Ok(total)
}

/// Size of the filesystem holding `dir`, for an SR without a configured capacity.
pub(super) fn filesystem_size(dir: &Path, ctx: Context) -> Result<u64, SrError> {
    let path =
        CString::new(dir.as_os_str().as_bytes()).map_err(|e| ctx.io("statvfs", dir)(e.into()))?;
    let mut stats = MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `path` is NUL-terminated and `stats` points to writable memory of the right type.
    if unsafe { libc::statvfs(path.as_ptr(), stats.as_mut_ptr()) } != 0 {
        return Err(ctx.io("statvfs", dir)(std::io::Error::last_os_error()));
    }
    // SAFETY: statvfs returned 0, so it filled `stats`.
    let stats = unsafe { stats.assume_init() };
    #[allow(clippy::unnecessary_cast)] // the field types differ between platforms
    Ok((stats.f_blocks as u64).saturating_mul(stats.f_frsize as u64))
}
