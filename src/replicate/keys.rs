//! The metadata Xen Orchestra reads and writes on snapshots and replicas, in one place
//! (`xo-replication.md` §2, §7.1, §8), with the datetime formats it uses. Values must match
//! XO's byte for byte, or XO will not continue our chains (nor we theirs).

use crate::vhd::timestamp::{civil_from_days, days_from_civil};

pub const DATETIME: &str = "xo:backup:datetime";
pub const JOB: &str = "xo:backup:job";
pub const SCHEDULE: &str = "xo:backup:schedule";
pub const VM: &str = "xo:backup:vm";
pub const SR: &str = "xo:backup:sr";
pub const COPY_OF: &str = "xo:copy_of";
pub const DELTA_CHAIN_LENGTH: &str = "xo:backup:deltaChainLength";
pub const EXPORTED: &str = "xo:backup:exported";
pub const CONTENT_KEY: &str = "xo:backup:contentKey";

/// The prefix of every key vhdsync keeps its own state in.
pub const OWN_PREFIX: &str = "vhdsync:";

/// A key that records replication state (Xen Orchestra's or ours) rather than describing the
/// VM. A replica never inherits one from its source: the source's metadata is anyone's to
/// edit, and such a key on a replica would make it look like some other object of ours (a
/// test clone, an interrupted import) to the paths that destroy those.
pub fn is_replication_state(key: &str) -> bool {
    key.starts_with("xo:") || key.starts_with(OWN_PREFIX)
}

/// Ours: present only while a replica is being imported, with the run's start time, so an
/// interrupted replica is recognised by a key no other tool writes, not only by its name.
pub const IMPORTING: &str = "vhdsync:importing";

/// Ours: the commit time in milliseconds, to order replicas committed within one second
/// (XO's datetime has second resolution).
pub const COMMITTED_MS: &str = "vhdsync:committed_ms";

/// XO's datetime of a replica still being imported: sorts oldest, so retention drops it.
pub const IMPORTING_DATETIME: &str = "19700101T000000Z";
/// XO's `blocked_operations` text on replicas, for `start` and `start_on`.
pub const START_BLOCKED: &str =
    "Start operation for this vm is blocked, clone it if you want to use it.";
/// XO's `blocked_operations` text while importing.
pub const IMPORTING_BLOCKED: &str = "Importing…";
pub const IMPORTING_VM_PREFIX: &str = "[Importing…] ";
pub const IMPORTING_VDI_PREFIX: &str = "[Importing] ";
pub const REPLICA_TAG: &str = "Continuous Replication";
/// The VM `other_config` key xapi reads to start a VM when its host boots.
pub const AUTO_POWERON: &str = "auto_poweron";
/// The operations blocked on replicas.
pub const BLOCKED_OPERATIONS: [&str; 2] = ["start", "start_on"];

/// `xo:backup:datetime` form of a Unix time: `%Y%m%dT%H:%M:%SZ`, e.g. `20240115T10:20:30Z`.
pub fn datetime(unix: i64) -> String {
    let (y, mo, d, h, mi, s) = civil(unix);
    format!("{y:04}{mo:02}{d:02}T{h:02}:{mi:02}:{s:02}Z")
}

/// The compact form in replica names: `YYYYMMDDTHHmmssZ`, e.g. `20240115T102030Z`.
pub fn name_datetime(unix: i64) -> String {
    let (y, mo, d, h, mi, s) = civil(unix);
    format!("{y:04}{mo:02}{d:02}T{h:02}{mi:02}{s:02}Z")
}

/// Parses either form (and XAPI's own datetimes, which share the first) to Unix time.
pub fn parse_datetime(text: &str) -> Option<i64> {
    let digits: String = text.chars().filter(char::is_ascii_digit).collect();
    if digits.len() != 14 || !text.ends_with('Z') || text.as_bytes().get(8) != Some(&b'T') {
        return None;
    }
    let n = |range: std::ops::Range<usize>| digits[range].parse::<u32>().ok();
    let (y, mo, d) = (n(0..4)?, n(4..6)?, n(6..8)?);
    let (h, mi, s) = (n(8..10)?, n(10..12)?, n(12..14)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || s > 60 {
        return None;
    }
    let days = days_from_civil(i64::from(y), mo, d);
    Some(days * 86_400 + i64::from(h * 3600 + mi * 60 + s))
}

fn civil(unix: i64) -> (i64, u32, u32, i64, i64, i64) {
    let (days, secs) = (unix.div_euclid(86_400), unix.rem_euclid(86_400));
    let (y, mo, d) = civil_from_days(days);
    (y, mo, d, secs / 3600, secs / 60 % 60, secs % 60)
}

/// The snapshot of `vm` taken by job `job`: `[vhdsync <job>] <vm>`.
pub fn snapshot_name(job: &str, vm: &str) -> String {
    format!("[vhdsync {job}] {vm}")
}

/// A committed replica's name, XO's classic form: `<vm> - <job> - (<YYYYMMDDTHHmmssZ>)`.
pub fn replica_name(vm: &str, job: &str, unix: i64) -> String {
    format!("{vm} - {job} - ({})", name_datetime(unix))
}

/// The replica's time from its name, XO's fallback when `xo:backup:datetime` is missing:
/// the 16 characters before the final `)`.
pub fn datetime_from_replica_name(name: &str) -> Option<i64> {
    let inner = name.strip_suffix(')')?;
    let start = inner.len().checked_sub(16)?;
    parse_datetime(inner.get(start..)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datetimes_in_both_forms_round_trip() {
        let t = 1_705_314_030; // 2024-01-15 10:20:30 UTC
        assert_eq!(datetime(t), "20240115T10:20:30Z");
        assert_eq!(name_datetime(t), "20240115T102030Z");
        assert_eq!(parse_datetime("20240115T10:20:30Z"), Some(t));
        assert_eq!(parse_datetime("20240115T102030Z"), Some(t));
        assert_eq!(parse_datetime(IMPORTING_DATETIME), Some(0));
        for bad in [
            "",
            "2024-01-15",
            "20241315T102030Z",
            "20240115T102030",
            "2024011XT102030Z",
        ] {
            assert_eq!(parse_datetime(bad), None, "{bad}");
        }
        for t in [0, 951_782_400, 4_102_444_799] {
            assert_eq!(parse_datetime(&datetime(t)), Some(t));
        }
    }

    #[test]
    fn replication_state_keys_are_xo_and_ours() {
        for key in [
            DATETIME,
            COPY_OF,
            IMPORTING,
            COMMITTED_MS,
            "vhdsync:anything",
        ] {
            assert!(is_replication_state(key), "{key}");
        }
        for key in [AUTO_POWERON, "folder", "xo", "vhdsync", "XO:backup:job"] {
            assert!(!is_replication_state(key), "{key}");
        }
    }

    #[test]
    fn names() {
        let t = 1_705_314_030;
        assert_eq!(
            replica_name("web01", "CR", t),
            "web01 - CR - (20240115T102030Z)"
        );
        assert_eq!(
            datetime_from_replica_name(&replica_name("a - b", "CR", t)),
            Some(t)
        );
        assert_eq!(datetime_from_replica_name("web01"), None);
        assert_eq!(snapshot_name("nightly", "web01"), "[vhdsync nightly] web01");
    }
}
