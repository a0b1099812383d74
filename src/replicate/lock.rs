//! The per-VM run lock: at most one run replicates a given VM of a given job at a time, while
//! runs for other VMs proceed in parallel. It is an flock on a file in the state directory:
//! the kernel releases it when the process exits, however it dies, so a killed run never
//! leaves a stale lock behind and there is nothing to clean up.
//!
//! Nobody else may plant files there: a state directory writable by group or others is
//! refused, and the lock file is opened without following a symbolic link and must be a
//! regular file, so a link cannot make a run truncate and overwrite another file.

use std::fs::{DirBuilder, File, OpenOptions, TryLockError};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::vhd::timestamp::VhdTimestamp;

/// The holder description is one short line; a larger file is not ours, and reading it must
/// not size anything.
const MAX_HOLDER_BYTES: u64 = 4096;

/// A held lock, released when dropped. The lock file itself is never removed: a process
/// waiting on the old inode and one creating a new file could then both "hold" the lock.
#[derive(Debug)]
pub struct VmLock {
    // Never read: holding the open file description is what holds the lock.
    _file: File,
}

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("another run is replicating VM {vm}: {holder}")]
    Held {
        vm: String,
        /// What the holder recorded, e.g. `pid 4242 on backup1, started
        /// 2026-05-01T12:00:00Z: vhdsync replicate --job nightly.toml`.
        holder: String,
    },
    /// Group or others may write to the state directory, so they could plant lock files.
    #[error(
        "state directory {} is writable by group or others (mode {mode:03o}); \
         run `chmod go-w` on it or choose another state_dir",
        path.display()
    )]
    UnsafeStateDir { path: PathBuf, mode: u32 },
    /// The lock file is a symbolic link or a special file, which a run must not write to.
    #[error(
        "lock file {} is not a regular file (a symbolic link?); refusing to use it",
        path.display()
    )]
    NotARegularFile { path: PathBuf },
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        path: PathBuf,
        action: &'static str,
        source: std::io::Error,
    },
}

impl VmLock {
    /// Takes the lock for (`job_id`, `vm_uuid`) without waiting: the file
    /// `<state_dir>/<job_id>-<vm_uuid>.lock`, creating `state_dir` (mode 0700) if missing.
    /// Both ids are UUIDs, so the name needs no escaping. A state directory writable by group
    /// or others, and a lock file that is not a regular file, are refused.
    pub fn acquire(
        state_dir: &Path,
        job_id: &str,
        vm_uuid: &str,
        started: SystemTime,
    ) -> Result<VmLock, LockError> {
        let io = |path: &Path, action| {
            let path = path.to_path_buf();
            move |source| LockError::Io {
                path,
                action,
                source,
            }
        };
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(state_dir)
            .map_err(io(state_dir, "create the state directory"))?;
        let mode = std::fs::metadata(state_dir)
            .map_err(io(state_dir, "inspect the state directory"))?
            .permissions()
            .mode();
        if mode & 0o022 != 0 {
            return Err(LockError::UnsafeStateDir {
                path: state_dir.to_path_buf(),
                mode: mode & 0o7777,
            });
        }
        let path = state_dir.join(format!("{job_id}-{vm_uuid}.lock"));
        let not_regular = || LockError::NotARegularFile { path: path.clone() };
        // Not truncated on open: until we hold the lock, the contents describe the holder.
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
            .map_err(|e| match e.raw_os_error() {
                Some(libc::ELOOP) => not_regular(),
                _ => io(&path, "open the lock file")(e),
            })?;
        if !file
            .metadata()
            .map_err(io(&path, "inspect the lock file"))?
            .is_file()
        {
            return Err(not_regular());
        }
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                return Err(LockError::Held {
                    vm: vm_uuid.to_string(),
                    holder: read_holder(&mut file),
                });
            }
            Err(TryLockError::Error(e)) => return Err(io(&path, "lock")(e)),
        }
        file.set_len(0)
            .and_then(|()| file.write_all(holder_description(started).as_bytes()))
            .map_err(io(&path, "write to the lock file"))?;
        Ok(VmLock { _file: file })
    }
}

/// Who we are, for a run that finds the lock taken.
fn holder_description(started: SystemTime) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| format!(" on {}", h.trim()))
        .unwrap_or_default();
    let command: Vec<String> = std::env::args_os()
        .map(|arg| arg.to_string_lossy().into_owned())
        .collect();
    format!(
        "pid {}{host}, started {}: {}\n",
        std::process::id(),
        VhdTimestamp::from_system_time(started),
        command.join(" ")
    )
}

fn read_holder(file: &mut File) -> String {
    let mut bytes = Vec::new();
    match file.take(MAX_HOLDER_BYTES).read_to_end(&mut bytes) {
        Ok(_) if bytes.iter().any(|b| !b.is_ascii_whitespace()) => {
            String::from_utf8_lossy(&bytes).trim().to_string()
        }
        // The holder took the lock an instant ago and has not written its line yet.
        Ok(_) => "a run that has not yet recorded its pid".to_string(),
        Err(e) => format!("a run whose details cannot be read ({e})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const JOB: &str = "67f81ad5-0c6f-5355-a878-63246a3f83f9";
    const VM1: &str = "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d";
    const VM2: &str = "1b2c3d4e-5f6a-4b7c-9d8e-0f1a2b3c4d5e";

    #[test]
    fn a_second_acquire_is_refused_and_names_the_holder() {
        let dir = tempfile::tempdir().unwrap();
        let _held = VmLock::acquire(dir.path(), JOB, VM1, SystemTime::UNIX_EPOCH).unwrap();
        // A second open file description, as another process would have.
        let err = VmLock::acquire(dir.path(), JOB, VM1, SystemTime::UNIX_EPOCH).unwrap_err();
        let LockError::Held { vm, holder } = &err else {
            panic!("expected Held, got {err}");
        };
        assert_eq!(vm, VM1);
        assert!(
            holder.starts_with(&format!("pid {}", std::process::id())),
            "{holder}"
        );
        assert!(
            err.to_string()
                .starts_with(&format!("another run is replicating VM {VM1}: pid ")),
            "{err}"
        );
    }

    #[test]
    fn dropping_releases_the_lock() {
        let dir = tempfile::tempdir().unwrap();
        drop(VmLock::acquire(dir.path(), JOB, VM1, SystemTime::UNIX_EPOCH).unwrap());
        let _again = VmLock::acquire(dir.path(), JOB, VM1, SystemTime::UNIX_EPOCH).unwrap();
    }

    #[test]
    fn different_vms_do_not_conflict() {
        let dir = tempfile::tempdir().unwrap();
        let _one = VmLock::acquire(dir.path(), JOB, VM1, SystemTime::UNIX_EPOCH).unwrap();
        let _two = VmLock::acquire(dir.path(), JOB, VM2, SystemTime::UNIX_EPOCH).unwrap();
    }

    #[test]
    fn the_state_dir_is_created_private_and_old_holders_are_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("a/b");
        std::fs::create_dir_all(&state).unwrap();
        std::fs::remove_dir(&state).unwrap();
        let file = state.join(format!("{JOB}-{VM1}.lock"));
        drop(VmLock::acquire(&state, JOB, VM1, SystemTime::UNIX_EPOCH).unwrap());
        let mode = std::fs::metadata(&state).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        std::fs::write(&file, "x".repeat(10_000)).unwrap();
        let _held = VmLock::acquire(&state, JOB, VM1, SystemTime::UNIX_EPOCH).unwrap();
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(text.starts_with("pid ") && !text.contains('x'), "{text}");
    }

    #[test]
    fn a_symlink_in_place_of_the_lock_file_is_refused_and_its_target_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        std::fs::create_dir(&state).unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "precious").unwrap();
        let lock = state.join(format!("{JOB}-{VM1}.lock"));
        std::os::unix::fs::symlink(&victim, &lock).unwrap();
        let err = VmLock::acquire(&state, JOB, VM1, SystemTime::UNIX_EPOCH).unwrap_err();
        assert!(
            matches!(&err, LockError::NotARegularFile { path } if *path == lock),
            "{err}"
        );
        assert!(
            err.to_string().contains(&lock.display().to_string()),
            "{err}"
        );
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
        // A dangling link would otherwise create the file it points at.
        std::fs::remove_file(&victim).unwrap();
        assert!(VmLock::acquire(&state, JOB, VM1, SystemTime::UNIX_EPOCH).is_err());
        assert!(!victim.exists());
    }

    #[test]
    fn a_special_file_in_place_of_the_lock_file_is_refused() {
        use std::os::unix::ffi::OsStrExt;
        let dir = tempfile::tempdir().unwrap();
        let lock = dir.path().join(format!("{JOB}-{VM1}.lock"));
        let c_path = std::ffi::CString::new(lock.as_os_str().as_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path; mkfifo only creates a file.
        assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
        let err = VmLock::acquire(dir.path(), JOB, VM1, SystemTime::UNIX_EPOCH).unwrap_err();
        assert!(
            matches!(&err, LockError::NotARegularFile { path } if *path == lock),
            "{err}"
        );
    }

    #[test]
    fn a_state_dir_writable_by_group_or_others_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        std::fs::create_dir(&state).unwrap();
        for mode in [0o777, 0o770, 0o1733] {
            std::fs::set_permissions(&state, std::fs::Permissions::from_mode(mode)).unwrap();
            let err = VmLock::acquire(&state, JOB, VM1, SystemTime::UNIX_EPOCH).unwrap_err();
            let refused = matches!(&err, LockError::UnsafeStateDir { path, mode: m }
                if *path == state && *m == mode);
            assert!(refused, "{mode:o}: {err}");
            let text = err.to_string();
            assert!(
                text.contains(&state.display().to_string())
                    && text.contains(&format!("{mode:03o}")),
                "{text}"
            );
        }
        assert_eq!(
            std::fs::read_dir(&state).unwrap().count(),
            0,
            "no lock file created"
        );
        std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o755)).unwrap();
        let _held = VmLock::acquire(&state, JOB, VM1, SystemTime::UNIX_EPOCH).unwrap();
    }

    #[test]
    fn an_unwritable_state_dir_is_an_io_error() {
        let dir = tempfile::tempdir().unwrap();
        let not_a_dir = dir.path().join("file");
        std::fs::write(&not_a_dir, "").unwrap();
        let err = VmLock::acquire(&not_a_dir, JOB, VM1, SystemTime::UNIX_EPOCH).unwrap_err();
        assert!(
            matches!(&err, LockError::Io { action, .. } if *action == "create the state directory"),
            "{err}"
        );
    }
}
