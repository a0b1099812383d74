//! Replacing a file atomically and durably: the new content goes into a temp file in the
//! target's directory, which is fsynced, renamed over the target, and the directory fsynced,
//! so after a crash the target holds either its old or its whole new content, and once a
//! commit returns the new content survives a power loss.
//!
//! Temp files are named `<target name>.<random>.tmp` and created exclusively, so two writers
//! of one target never share a temp; [`temp_target`] recognises them for sweeps. A temp file
//! dropped without a commit is deleted.

use std::ffi::OsString;
use std::fs::{File, Permissions};
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use tempfile::NamedTempFile;

/// Suffix of every temp file.
const TEMP_SUFFIX: &str = ".tmp";
/// Random characters between the target name and the suffix.
const RANDOM_LEN: usize = 8;
/// What `File::create` asks for; the process umask narrows it.
const DEFAULT_MODE: u32 = 0o666;
/// Private material (keys): the owner only.
const PRIVATE_MODE: u32 = 0o600;

/// A step of an atomic replace failed: which step, on which path.
#[derive(Debug, thiserror::Error)]
#[error("cannot {action} {}: {source}", path.display())]
pub struct AtomicError {
    pub action: &'static str,
    pub path: PathBuf,
    pub source: std::io::Error,
}

impl AtomicError {
    fn at(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> AtomicError {
        let path = path.to_path_buf();
        move |source| AtomicError {
            action,
            path,
            source,
        }
    }
}

/// Replace `target` with `bytes` (mode 0666 less the umask, as `File::create`).
pub fn write(target: &Path, bytes: &[u8]) -> Result<(), AtomicError> {
    write_with(AtomicFile::create(target)?, bytes)
}

/// Replace `target` with `bytes` readable by the owner only (mode 0600).
pub fn write_private(target: &Path, bytes: &[u8]) -> Result<(), AtomicError> {
    write_with(AtomicFile::create_private(target)?, bytes)
}

fn write_with(mut file: AtomicFile, bytes: &[u8]) -> Result<(), AtomicError> {
    file.write_all(bytes)
        .map_err(AtomicError::at("write", file.temp_path()))?;
    file.commit()
}

/// The new content of `target` being written, for streaming writers: write through
/// [`Write`] or [`AtomicFile::file`], then [`commit`](AtomicFile::commit). Dropped without a
/// commit, the temp file is deleted and `target` is untouched.
#[derive(Debug)]
pub struct AtomicFile {
    temp: NamedTempFile,
    target: PathBuf,
}

impl AtomicFile {
    /// Start replacing `target` (mode 0666 less the umask, as `File::create`).
    pub fn create(target: &Path) -> Result<AtomicFile, AtomicError> {
        Self::with_mode(target, DEFAULT_MODE)
    }

    /// Start replacing `target` with a file readable by the owner only (mode 0600).
    pub fn create_private(target: &Path) -> Result<AtomicFile, AtomicError> {
        Self::with_mode(target, PRIVATE_MODE)
    }

    fn with_mode(target: &Path, mode: u32) -> Result<AtomicFile, AtomicError> {
        let dir = parent_dir(target);
        let Some(name) = target.file_name() else {
            return Err(AtomicError {
                action: "replace",
                path: target.to_path_buf(),
                source: std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    "the path names no file",
                ),
            });
        };
        let mut prefix = OsString::from(name);
        prefix.push(".");
        let temp = tempfile::Builder::new()
            .prefix(&prefix)
            .suffix(TEMP_SUFFIX)
            .rand_bytes(RANDOM_LEN)
            .permissions(Permissions::from_mode(mode))
            .tempfile_in(dir)
            .map_err(AtomicError::at("create a temp file in", dir))?;
        Ok(AtomicFile {
            temp,
            target: target.to_path_buf(),
        })
    }

    /// The temp file, for writers that need more than [`Write`] (positioned writes, a clone
    /// handed to a thread).
    pub fn file(&mut self) -> &mut File {
        self.temp.as_file_mut()
    }

    /// Where the new content is being written, for error messages.
    pub fn temp_path(&self) -> &Path {
        self.temp.path()
    }

    /// Make the new content durable and put it in place: fsync the temp file, rename it over
    /// the target, fsync the directory.
    pub fn commit(self) -> Result<(), AtomicError> {
        self.commit_with(sync_dir)
    }

    fn commit_with(
        self,
        sync_dir: impl FnOnce(&Path) -> Result<(), AtomicError>,
    ) -> Result<(), AtomicError> {
        self.temp
            .as_file()
            .sync_all()
            .map_err(AtomicError::at("fsync", self.temp.path()))?;
        // On failure the error holds the temp file, which is deleted as it drops.
        self.temp
            .persist(&self.target)
            .map_err(|e| AtomicError::at("rename into place", &self.target)(e.error))?;
        sync_dir(parent_dir(&self.target))
    }
}

impl Write for AtomicFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.temp.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.temp.flush()
    }
}

/// Put `prepared`, a file written under its own name in `target`'s directory (an image built
/// by a writer that reopens it by path), in place of `target`: fsync, rename, fsync the
/// directory.
pub fn publish(prepared: &Path, target: &Path) -> Result<(), AtomicError> {
    File::open(prepared)
        .and_then(|file| file.sync_all())
        .map_err(AtomicError::at("fsync", prepared))?;
    std::fs::rename(prepared, target).map_err(AtomicError::at("rename into place", target))?;
    sync_dir(parent_dir(target))
}

/// Make the creations, renames and deletions in `dir` durable.
pub fn sync_dir(dir: &Path) -> Result<(), AtomicError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(AtomicError::at("fsync directory", dir))
}

/// The name of the file that `name`, if it is one of our temp files, was to replace.
pub fn temp_target(name: &str) -> Option<&str> {
    let (target, random) = name.strip_suffix(TEMP_SUFFIX)?.rsplit_once('.')?;
    let random_ok = random.len() == RANDOM_LEN && random.bytes().all(|b| b.is_ascii_alphanumeric());
    (random_ok && !target.is_empty()).then_some(target)
}

/// The directory a path's file lives in (`.` for a bare file name).
fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn content_is_replaced_whole_and_no_temp_is_left() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("state.json");
        std::fs::write(&target, "old content, longer than the new one").unwrap();
        write(&target, b"new").unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"new");
        assert_eq!(names(dir.path()), ["state.json"]);
    }

    #[test]
    fn a_streaming_writer_dropped_without_commit_leaves_the_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("disk.seed");
        std::fs::write(&target, "old").unwrap();
        let mut file = AtomicFile::create(&target).unwrap();
        file.write_all(b"half of the new").unwrap();
        let temp = file.temp_path().to_path_buf();
        assert!(temp.exists());
        assert_eq!(temp.parent(), Some(dir.path()));
        drop(file);
        assert!(!temp.exists());
        assert_eq!(std::fs::read(&target).unwrap(), b"old");
        assert_eq!(names(dir.path()), ["disk.seed"]);
    }

    #[test]
    fn two_writers_of_one_target_use_distinct_temps() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("sr.json");
        let mut one = AtomicFile::create(&target).unwrap();
        let mut two = AtomicFile::create(&target).unwrap();
        assert_ne!(one.temp_path(), two.temp_path());
        one.write_all(b"one").unwrap();
        two.write_all(b"two").unwrap();
        two.commit().unwrap();
        one.commit().unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"one");
        assert_eq!(names(dir.path()), ["sr.json"]);
    }

    #[test]
    fn the_directory_is_synced_after_the_rename() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("manifest.json");
        let mut file = AtomicFile::create(&target).unwrap();
        file.write_all(b"new").unwrap();
        let mut synced = None;
        file.commit_with(|d| {
            // The rename has happened by the time the directory is synced.
            synced = Some((d.to_path_buf(), std::fs::read(&target).unwrap()));
            sync_dir(d)
        })
        .unwrap();
        assert_eq!(synced, Some((dir.path().to_path_buf(), b"new".to_vec())));

        let file = AtomicFile::create(&target).unwrap();
        let err = file
            .commit_with(|d| sync_dir(&d.join("missing")))
            .unwrap_err();
        assert_eq!(err.action, "fsync directory");
        assert_eq!(err.path, dir.path().join("missing"));
    }

    #[test]
    fn a_failed_rename_keeps_the_target_and_removes_the_temp() {
        let dir = tempfile::tempdir().unwrap();
        // A non-empty directory cannot be renamed over.
        let target = dir.path().join("busy");
        std::fs::create_dir(&target).unwrap();
        std::fs::write(target.join("inside"), "kept").unwrap();
        let err = write(&target, b"new").unwrap_err();
        assert_eq!(err.action, "rename into place");
        assert_eq!(err.path, target);
        assert_eq!(std::fs::read(target.join("inside")).unwrap(), b"kept");
        assert_eq!(names(dir.path()), ["busy"]);
    }

    #[test]
    fn a_missing_directory_is_named_in_the_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = write(&dir.path().join("absent/file"), b"x").unwrap_err();
        assert_eq!(err.action, "create a temp file in");
        assert_eq!(err.path, dir.path().join("absent"));
        assert!(err.to_string().contains("absent"), "{err}");
    }

    #[test]
    fn private_files_are_owner_only_and_others_follow_the_umask() {
        let dir = tempfile::tempdir().unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let key = dir.path().join("key.pem");
        write_private(&key, b"secret").unwrap();
        assert_eq!(mode(&key), 0o600);
        let reference = dir.path().join("reference");
        File::create(&reference).unwrap();
        let state = dir.path().join("state.json");
        write(&state, b"{}").unwrap();
        assert_eq!(mode(&state), mode(&reference));
    }

    #[test]
    fn a_prepared_file_is_published_over_the_target() {
        let dir = tempfile::tempdir().unwrap();
        let (prepared, target) = (dir.path().join("a.vhd.import"), dir.path().join("a.vhd"));
        std::fs::write(&prepared, "new").unwrap();
        std::fs::write(&target, "old").unwrap();
        publish(&prepared, &target).unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"new");
        assert_eq!(names(dir.path()), ["a.vhd"]);
        let err = publish(&prepared, &target).unwrap_err();
        assert_eq!((err.action, err.path), ("fsync", prepared));
        assert_eq!(std::fs::read(&target).unwrap(), b"new");
    }

    #[test]
    fn temp_names_are_recognised_and_point_at_their_target() {
        let dir = tempfile::tempdir().unwrap();
        let file = AtomicFile::create(&dir.path().join("sr.json")).unwrap();
        let name = file.temp_path().file_name().unwrap().to_str().unwrap();
        assert_eq!(temp_target(name), Some("sr.json"));
        assert_eq!(temp_target("sr.json"), None);
        assert_eq!(temp_target("sr.json.tmp"), None);
        assert_eq!(temp_target("notes.tmp"), None);
        assert_eq!(temp_target(".abcdefgh.tmp"), None);
        assert_eq!(temp_target("x.abc-efgh.tmp"), None);
    }
}
