use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

/// Seconds between the Unix epoch and the VHD epoch (2000-01-01 00:00:00 UTC).
pub const VHD_EPOCH_UNIX: i64 = 946_684_800;

/// A VHD time stamp: seconds since 2000-01-01 UTC. Values in the future are legal (Xen
/// Orchestra writes Unix time into this field), so no range is enforced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct VhdTimestamp(pub u32);

impl VhdTimestamp {
    pub fn from_unix(unix_seconds: i64) -> Self {
        let since_2000 = unix_seconds.saturating_sub(VHD_EPOCH_UNIX);
        VhdTimestamp(since_2000.clamp(0, i64::from(u32::MAX)) as u32)
    }

    /// The time stamp of a system time, which the caller reads: the format core reads no
    /// clock. Times before 1970 (a clock set far back) clamp to the VHD epoch.
    pub fn from_system_time(time: SystemTime) -> Self {
        let unix = time.duration_since(UNIX_EPOCH).map_or(VHD_EPOCH_UNIX, |d| {
            i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
        });
        Self::from_unix(unix)
    }

    pub fn to_unix(self) -> i64 {
        i64::from(self.0) + VHD_EPOCH_UNIX
    }
}

impl fmt::Display for VhdTimestamp {
    /// ISO 8601 in UTC, computed without a calendar crate (civil-from-days).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let unix = self.to_unix();
        let days = unix.div_euclid(86_400);
        let secs = unix.rem_euclid(86_400);
        let (y, m, d) = civil_from_days(days);
        write!(
            f,
            "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
            secs / 3600,
            secs / 60 % 60,
            secs % 60
        )
    }
}

/// Howard Hinnant's days-to-civil algorithm: (year, month, day) of a day count since
/// 1970-01-01.
pub(crate) fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// The inverse of [`civil_from_days`].
pub(crate) fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = year - i64::from(month <= 2);
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoch_and_future_values_display() {
        assert_eq!(VhdTimestamp(0).to_string(), "2000-01-01T00:00:00Z");
        // Xen Orchestra writes Unix time (here 2026-11-22) into the 2000-epoch field.
        let xo = VhdTimestamp(1_795_305_600);
        assert_eq!(xo.to_string(), "2056-11-21T00:00:00Z");
        assert_eq!(VhdTimestamp::from_unix(1_795_305_600 + VHD_EPOCH_UNIX), xo);
    }

    #[test]
    fn times_before_2000_clamp_to_the_epoch() {
        assert_eq!(VhdTimestamp::from_unix(0), VhdTimestamp(0));
    }

    #[test]
    fn system_times_convert_without_reading_the_clock() {
        use std::time::Duration;
        let at = |unix: u64| UNIX_EPOCH + Duration::from_secs(unix);
        assert_eq!(
            VhdTimestamp::from_system_time(at(VHD_EPOCH_UNIX as u64 + 42)),
            VhdTimestamp(42)
        );
        assert_eq!(
            VhdTimestamp::from_system_time(UNIX_EPOCH - Duration::from_secs(1)),
            VhdTimestamp(0)
        );
        assert_eq!(
            VhdTimestamp::from_system_time(at(u64::from(u32::MAX) * 4)),
            VhdTimestamp(u32::MAX)
        );
    }
}
