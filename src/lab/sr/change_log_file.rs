//! The change logs on disk: one `<vdi uuid>.cbtlog` per log in the SR directory, as SM keeps
//! them. Layout (big-endian):
//!
//! | bytes | field |
//! |---|---|
//! | 0..8 | magic `VSCBTLG1` |
//! | 8..16 | the virtual size the bitmap covers |
//! | 16..32 | the parent log's VDI uuid (all zeros for none) |
//! | 32..48 | the child log's VDI uuid (all zeros for none) |
//! | 48.. | the bitmap, one bit per 64 KiB, most significant bit first |
//!
//! A log whose links change is rewritten whole and atomically; a guest write only sets bits,
//! which are patched in place and synced before the write itself goes to the VHD, so a crash
//! can leave a bit set for a write that never happened, never the reverse.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use uuid::Uuid;

use super::change_log::{BlockBitmap, ChangeLog, Plan};
use super::error::{Context, SrError};
use super::layout::{file_names, log_file_name, log_file_vdi, sync_dir};
use crate::fsio::atomic;
use crate::vhd;

const MAGIC: &[u8; 8] = b"VSCBTLG1";
const HEADER_LEN: usize = 48;
pub(super) fn encode(log: &ChangeLog) -> Vec<u8> {
    let link = |vdi: Option<Uuid>| vdi.unwrap_or(Uuid::nil()).into_bytes();
    let mut out = Vec::with_capacity(HEADER_LEN + log.bitmap.as_bytes().len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&log.virtual_size.to_be_bytes());
    out.extend_from_slice(&link(log.parent));
    out.extend_from_slice(&link(log.child));
    out.extend_from_slice(log.bitmap.as_bytes());
    out
}

/// Decode a log file; the error says which field is wrong.
pub(super) fn decode(bytes: &[u8]) -> Result<ChangeLog, String> {
    let header = bytes.get(..HEADER_LEN).ok_or_else(|| {
        format!(
            "{} bytes, shorter than the {HEADER_LEN}-byte header",
            bytes.len()
        )
    })?;
    if &header[..8] != MAGIC {
        return Err(format!(
            "magic {:?} at byte 0, expected {MAGIC:?}",
            &header[..8]
        ));
    }
    let virtual_size = u64::from_be_bytes(header[8..16].try_into().expect("8 bytes"));
    if virtual_size > vhd::MAX_VIRTUAL_SIZE {
        return Err(format!(
            "virtual size {virtual_size} at byte 8 is past the VHD maximum {}",
            vhd::MAX_VIRTUAL_SIZE
        ));
    }
    let link = |at: usize| {
        let uuid = Uuid::from_bytes(header[at..at + 16].try_into().expect("16 bytes"));
        (!uuid.is_nil()).then_some(uuid)
    };
    let bitmap =
        BlockBitmap::from_bytes(bytes[HEADER_LEN..].to_vec(), virtual_size).ok_or_else(|| {
            format!(
                "{} bitmap bytes at byte {HEADER_LEN} do not fit a virtual size of {virtual_size}",
                bytes.len() - HEADER_LEN
            )
        })?;
    Ok(ChangeLog {
        virtual_size,
        bitmap,
        parent: link(16),
        child: link(32),
    })
}

/// Every log in `dir`, and the errors of those that cannot be read: a damaged log leaves its
/// VDI untracked (as SM disables CBT on an inconsistent log), so that queries through it fail
/// instead of the whole SR.
pub(super) fn load_all(
    dir: &Path,
    ctx: Context,
) -> Result<(BTreeMap<Uuid, ChangeLog>, Vec<SrError>), SrError> {
    let most = (HEADER_LEN as u64) + vhd::MAX_VIRTUAL_SIZE.div_ceil(64 << 10).div_ceil(8);
    let mut logs = BTreeMap::new();
    let mut damaged = Vec::new();
    for name in file_names(dir, ctx)? {
        let Some(vdi) = log_file_vdi(&name) else {
            continue;
        };
        let path = dir.join(&name);
        let bad = |detail: String| SrError::BadChangeLog {
            path: path.clone(),
            detail,
        };
        let len = std::fs::metadata(&path)
            .map_err(ctx.io("measure", &path))?
            .len();
        if len > most {
            damaged.push(bad(format!(
                "{len} bytes, more than a log ever takes ({most})"
            )));
            continue;
        }
        let bytes = std::fs::read(&path).map_err(ctx.io("read", &path))?;
        match decode(&bytes) {
            Ok(log) => {
                logs.insert(vdi, log);
            }
            Err(detail) => damaged.push(bad(detail)),
        }
    }
    Ok((logs, damaged))
}

/// Make `plan` durable, step by step in its order.
pub(super) fn persist(dir: &Path, plan: &Plan, ctx: Context) -> Result<(), SrError> {
    let mut deleted = false;
    for (vdi, log) in &plan.steps {
        let path = dir.join(log_file_name(*vdi));
        match log {
            Some(log) => atomic::write(&path, &encode(log)).map_err(ctx.atomic())?,
            None => match std::fs::remove_file(&path) {
                Ok(()) => deleted = true,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(ctx.io("delete", &path)(e)),
            },
        }
    }
    if deleted {
        sync_dir(dir, ctx)?;
    }
    Ok(())
}

/// Write `bytes` of `log`'s bitmap into its file in place, durably.
pub(super) fn patch(
    dir: &Path,
    vdi: Uuid,
    log: &ChangeLog,
    bytes: Range<usize>,
    ctx: Context,
) -> Result<(), SrError> {
    let path: PathBuf = dir.join(log_file_name(vdi));
    let file = OpenOptions::new()
        .write(true)
        .open(&path)
        .map_err(ctx.io("open", &path))?;
    let at = (HEADER_LEN + bytes.start) as u64;
    file.write_all_at(&log.bitmap.as_bytes()[bytes], at)
        .map_err(ctx.io("write", &path))?;
    file.sync_data().map_err(ctx.io("fdatasync", &path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lab::sr::change_log::{CBT_BLOCK_SIZE, ChangeLogs, Marked};
    use crate::lab::sr::error::Operation;

    fn sample() -> ChangeLog {
        let mut bitmap = BlockBitmap::for_size(4 << 20);
        bitmap.mark(3 * CBT_BLOCK_SIZE, 1);
        ChangeLog {
            virtual_size: 4 << 20,
            bitmap,
            parent: Some(Uuid::new_v4()),
            child: None,
        }
    }

    #[test]
    fn logs_round_trip_and_damage_is_named() {
        let log = sample();
        let bytes = encode(&log);
        assert_eq!(bytes.len(), HEADER_LEN + 8);
        assert_eq!(decode(&bytes).unwrap(), log);
        let cases: [(Vec<u8>, &str); 4] = [
            (bytes[..20].to_vec(), "header"),
            ([b"XXXXXXXX", &bytes[8..]].concat(), "magic"),
            (bytes[..bytes.len() - 1].to_vec(), "bitmap"),
            (
                [&bytes[..8], &u64::MAX.to_be_bytes()[..], &bytes[16..]].concat(),
                "virtual size",
            ),
        ];
        for (damaged, named) in cases {
            let err = decode(&damaged).unwrap_err();
            assert!(err.contains(named), "{err}");
        }
    }

    #[test]
    fn plans_and_patches_reach_the_disk() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = Context::sr(Operation::Open);
        let (vdi, snapshot) = (Uuid::new_v4(), Uuid::new_v4());
        let mut logs = ChangeLogs::default();
        let plan = logs.enable(vdi, 2 << 20);
        persist(dir.path(), &plan, ctx).unwrap();
        logs.apply(plan);
        let Marked::Bytes(bytes) = logs.mark(vdi, 5 * CBT_BLOCK_SIZE, 1) else {
            panic!("a new block changes a byte");
        };
        patch(dir.path(), vdi, logs.get(vdi).unwrap(), bytes, ctx).unwrap();
        let plan = logs.snapshot(vdi, snapshot);
        persist(dir.path(), &plan, ctx).unwrap();
        logs.apply(plan);
        let loaded = ChangeLogs::from_loaded(load_all(dir.path(), ctx).unwrap().0);
        assert_eq!(loaded, logs);
        let plan = logs.remove(snapshot);
        persist(dir.path(), &plan, ctx).unwrap();
        logs.apply(plan);
        assert_eq!(
            ChangeLogs::from_loaded(load_all(dir.path(), ctx).unwrap().0),
            logs
        );
        assert!(!dir.path().join(log_file_name(snapshot)).exists());

        let junk = Uuid::new_v4();
        std::fs::write(dir.path().join(log_file_name(junk)), b"junk").unwrap();
        let (loaded, damaged) = load_all(dir.path(), ctx).unwrap();
        assert!(!loaded.contains_key(&junk) && loaded.contains_key(&vdi));
        let named = |e: &SrError| matches!(e, SrError::BadChangeLog { path, .. } if path.ends_with(log_file_name(junk)));
        assert!(damaged.len() == 1 && named(&damaged[0]), "{damaged:?}");
    }
}
