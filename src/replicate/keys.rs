//! The metadata Xen Orchestra reads and writes on snapshots and replicas, in one place
//! (`xo-replication.md` §2, §7.1, §8), with the datetime formats it uses. Values must match
//! XO's byte for byte, or XO will not continue our chains (nor we theirs).

use time::format_description::BorrowedFormatItem;
use time::format_description::well_known::Rfc3339;
use time::macros::format_description;
use time::{OffsetDateTime, PrimitiveDateTime};

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

/// Ours: on a source snapshot disk whose data `purge_snapshot_data` destroyed, the uuid of
/// the snapshot VM it belonged to: its VBD is gone, and XO's datetime (second resolution)
/// may be shared by two snapshots, so this is what ties the change log to its snapshot.
pub const PURGED_FROM: &str = "vhdsync:purged_from";

/// Ours: on a failed-over replica, when it was failed over.
pub const FAILED_OVER: &str = "vhdsync:failed_over";
/// Ours: on a failed-over VM, the job and the source VM whose restore point it was, and that
/// restore point: a clone of a target snapshot carries no other trace of them.
pub const FAILED_OVER_JOB: &str = "vhdsync:failed_over_job";
pub const FAILED_OVER_VM: &str = "vhdsync:failed_over_vm";
pub const FAILED_OVER_FROM: &str = "vhdsync:failed_over_from";

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

/// XO's `xo:backup:datetime` form, `%Y%m%dT%H:%M:%SZ` in UTC; XAPI's datetimes share it.
const XO_DATETIME: &[BorrowedFormatItem<'_>] =
    format_description!("[year][month][day]T[hour]:[minute]:[second]Z");
/// The compact form in replica names, `YYYYMMDDTHHmmssZ` in UTC.
const NAME_DATETIME: &[BorrowedFormatItem<'_>] =
    format_description!("[year][month][day]T[hour][minute][second]Z");

/// `xo:backup:datetime` form of a Unix time: `%Y%m%dT%H:%M:%SZ`, e.g. `20240115T10:20:30Z`.
pub fn datetime(unix: i64) -> String {
    format_utc(unix, XO_DATETIME)
}

/// The compact form in replica names: `YYYYMMDDTHHmmssZ`, e.g. `20240115T102030Z`.
pub fn name_datetime(unix: i64) -> String {
    format_utc(unix, NAME_DATETIME)
}

/// Parses either form (and XAPI's own datetimes, which share the first) to Unix time. Only
/// real dates and times: no February 30th, no second 60.
pub fn parse_datetime(text: &str) -> Option<i64> {
    [XO_DATETIME, NAME_DATETIME].into_iter().find_map(|form| {
        PrimitiveDateTime::parse(text, form)
            .ok()
            .map(|t| t.assume_utc().unix_timestamp())
    })
}

/// A Unix time in one of the forms; times beyond years 1 to 9999, which no clock or XO
/// datetime gives, are clamped to that range.
fn format_utc(unix: i64, form: &[BorrowedFormatItem<'_>]) -> String {
    let clamped = if unix < 0 {
        PrimitiveDateTime::MIN
    } else {
        PrimitiveDateTime::MAX
    };
    OffsetDateTime::from_unix_timestamp(unix)
        .unwrap_or(clamped.assume_utc())
        .format(form)
        .unwrap_or_default()
}

/// RFC 3339 in UTC (`2024-01-15T10:20:30Z`), the form of every date in vhdsync's JSON and
/// monitoring output. Times outside years 0 to 9999, which RFC 3339 cannot write, are
/// clamped to that range.
pub fn rfc3339(unix: i64) -> String {
    const FIRST: i64 = -62_167_219_200; // 0000-01-01T00:00:00Z
    const LAST: i64 = 253_402_300_799; // 9999-12-31T23:59:59Z
    OffsetDateTime::from_unix_timestamp(unix.clamp(FIRST, LAST))
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_default()
}

/// The snapshot of `vm` taken by job `job`: `[vhdsync <job>] <vm>`.
pub fn snapshot_name(job: &str, vm: &str) -> String {
    format!("[vhdsync {job}] {vm}")
}

/// A committed replica's name, XO's classic form: `<vm> - <job> - (<YYYYMMDDTHHmmssZ>)`.
pub fn replica_name(vm: &str, job: &str, unix: i64) -> String {
    format!("{vm} - {job} - ({})", name_datetime(unix))
}

/// A target snapshot's name, XO 6.3+'s form: `<vm> - <job> / vhdsync <YYYYMMDDTHHmmssZ>`
/// (XO puts its schedule's name where ours says `vhdsync`).
pub fn target_snapshot_name(vm: &str, job: &str, unix: i64) -> String {
    format!("{vm} - {job} / vhdsync {}", name_datetime(unix))
}

/// The source VM's name as the name of one of its restore points gives it, for output made
/// from the target alone (the source may be gone): the name without what vhdsync and Xen
/// Orchestra add to it for job `job` (`[vhdsync <job>] `, `[XO Backup <job>] `,
/// ` - <job> / <schedule> <date>`, ` - <job> - (<date>)`), or the whole name when it has
/// none of those forms.
pub fn source_vm_name<'a>(name: &'a str, job: &str) -> &'a str {
    for prefix in [format!("[vhdsync {job}] "), format!("[XO Backup {job}] ")] {
        if let Some(rest) = name.strip_prefix(prefix.as_str()) {
            return rest;
        }
    }
    if let Some(at) = name.rfind(&format!(" - {job} / ")) {
        return &name[..at];
    }
    if name.ends_with(')')
        && let Some(at) = name.rfind(&format!(" - {job} - ("))
    {
        return &name[..at];
    }
    name
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
    fn invalid_calendar_dates_are_refused() {
        for bad in [
            "20240230T102030Z",
            "20230229T10:20:30Z",
            "20240115T102060Z",
            "20240115T10:2030Z",
            "20240115T10:20:30.5Z",
            "20240115T10:20:30+01:00",
        ] {
            assert_eq!(parse_datetime(bad), None, "{bad}");
        }
        assert_eq!(parse_datetime("20240229T00:00:00Z"), Some(1_709_164_800));
    }

    #[test]
    fn out_of_range_times_clamp_instead_of_failing() {
        assert_eq!(datetime(i64::MAX), "99991231T23:59:59Z");
        assert_eq!(name_datetime(i64::MIN), "-99990101T000000Z");
    }

    proptest::proptest! {
        /// Every second from year 1 to 9999 survives both forms, which sort as time does.
        #[test]
        fn both_forms_round_trip(t in -62_135_596_800i64..=253_402_300_799, u in -62_135_596_800i64..=253_402_300_799) {
            proptest::prop_assert_eq!(parse_datetime(&datetime(t)), Some(t));
            proptest::prop_assert_eq!(parse_datetime(&name_datetime(t)), Some(t));
            proptest::prop_assert_eq!(datetime_from_replica_name(&replica_name("vm", "job", t)), Some(t));
            proptest::prop_assert_eq!(name_datetime(t).cmp(&name_datetime(u)), t.cmp(&u));
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
    fn rfc3339_in_utc_clamped_to_its_years() {
        assert_eq!(rfc3339(1_705_314_030), "2024-01-15T10:20:30Z");
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(i64::MAX), "9999-12-31T23:59:59Z");
        assert_eq!(rfc3339(i64::MIN), "0000-01-01T00:00:00Z");
    }

    #[test]
    fn the_source_vm_name_from_a_restore_points_name() {
        let t = 1_705_314_030;
        for (name, expected) in [
            (snapshot_name("cr", "web 01"), "web 01"),
            ("[XO Backup cr] web01".to_owned(), "web01"),
            (target_snapshot_name("a - cr / b", "cr", t), "a - cr / b"),
            ("web01 - cr / hourly 20240115T102030Z".to_owned(), "web01"),
            (replica_name("web01", "cr", t), "web01"),
            ("[vhdsync other] web01".to_owned(), "[vhdsync other] web01"),
            (
                "web01 (20240115T10:20:30Z)".to_owned(),
                "web01 (20240115T10:20:30Z)",
            ),
            (String::new(), ""),
        ] {
            assert_eq!(source_vm_name(&name, "cr"), expected, "{name}");
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
