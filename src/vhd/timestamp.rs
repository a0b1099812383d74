use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

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
    /// RFC 3339 in UTC, e.g. `2000-01-01T00:00:00Z`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Every u32 from 2000 lands in 2000-2136: both steps succeed, and the fallback only
        // keeps Display from failing if that ever changed.
        match OffsetDateTime::from_unix_timestamp(self.to_unix())
            .ok()
            .and_then(|at| at.format(&Rfc3339).ok())
        {
            Some(text) => f.write_str(&text),
            None => write!(f, "{} s after 2000-01-01T00:00:00Z", self.0),
        }
    }
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
        assert_eq!(VhdTimestamp(u32::MAX).to_string(), "2136-02-07T06:28:15Z");
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
