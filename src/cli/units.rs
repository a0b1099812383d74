//! Human units on the command line, one parser and one printer each: durations in humantime's
//! syntax (every duration flag, every printed age) and byte counts printed in binary units (JSON
//! output stays in plain bytes and seconds). Sizes and rates are parsed and printed by
//! [`crate::units`].

use std::time::Duration;

/// A duration flag's value: humantime's syntax (`90s`, `2m`, `15min`, `1h 30m`, `1d`), or a
/// bare number of seconds, which every duration flag took before.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        return text
            .parse()
            .map(Duration::from_secs)
            .map_err(|_| format!("{text:?}: too many seconds"));
    }
    // humantime reads `M` as months, one shift key away from `m` for minutes: `--max-age 15M`
    // would silently allow 15 months. It never meant anything here, so it is refused.
    if text
        .split(|c: char| !c.is_ascii_alphabetic())
        .any(|unit| unit == "M")
    {
        return Err(format!(
            "{text:?}: M would be months; write m or min for minutes, or months"
        ));
    }
    humantime::parse_duration(text).map_err(|e| {
        format!("{text:?} is not a duration ({e}): use e.g. 90s, 15m, 1h 30m, 1d, or seconds")
    })
}

/// A duration for people, as the duration flags take it: `2m`, `1h 30m`.
pub fn human_duration(duration: Duration) -> String {
    humantime::format_duration(duration).to_string()
}

/// An age for people, in humantime's form: to the second under an hour, to the minute under
/// two days, to the hour beyond (`42s`, `1h 2m`, `3days 4h`). A negative age (a replica dated
/// after our clock) keeps its sign.
pub fn human_age(seconds: i64) -> String {
    let magnitude = seconds.unsigned_abs();
    let resolution = match magnitude {
        s if s < 3600 => 1,
        s if s < 172_800 => 60,
        _ => 3600,
    };
    let shown = human_duration(Duration::from_secs(magnitude - magnitude % resolution));
    if seconds < 0 {
        format!("-{shown}")
    } else {
        shown
    }
}

/// A byte count for people, in binary units: `512 B`, `16.0 MiB`.
pub fn human_bytes(bytes: u64) -> String {
    crate::units::format_size(bytes)
}

/// A transfer rate for people, in binary units per second: `118.2 MiB/s`.
pub fn human_rate(bytes_per_second: f64) -> String {
    crate::units::format_rate(bytes_per_second)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("15m").unwrap(), Duration::from_secs(900));
        assert_eq!(parse_duration("90").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("1d").unwrap(), Duration::from_secs(86_400));
        assert!(parse_duration("m").is_err());
    }

    #[test]
    fn every_duration_flag_takes_humantime_and_bare_seconds() {
        for (text, seconds) in [
            ("2m", 120),
            ("15min", 900),
            ("15 minutes", 900),
            ("1h 30m", 5400),
            ("1h30m", 5400),
            (" 120 ", 120),
            ("0s", 0),
            ("0", 0),
            ("1w", 7 * 86_400),
        ] {
            assert_eq!(
                parse_duration(text),
                Ok(Duration::from_secs(seconds)),
                "{text}"
            );
        }
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        for bad in [
            "",
            "-1s",
            "1x",
            "15M",
            "1h 15M",
            "99999999999999999999",
            "s",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        assert!(parse_duration("2months").is_ok());
    }

    #[test]
    fn printed_durations_parse_back() {
        for seconds in [0, 59, 120, 5400, 90_000] {
            let d = Duration::from_secs(seconds);
            assert_eq!(parse_duration(&human_duration(d)), Ok(d), "{seconds}");
        }
    }

    #[test]
    fn ages_coarsen_as_they_grow() {
        assert_eq!(human_age(0), "0s");
        assert_eq!(human_age(119), "1m 59s");
        assert_eq!(human_age(3725), "1h 2m");
        assert_eq!(human_age(90_000), "1day 1h");
        assert_eq!(human_age(200_000), "2days 7h");
        assert_eq!(human_age(-5), "-5s");
    }

    #[test]
    fn sizes_and_rates_print_in_binary_units() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(16 << 20), "16.0 MiB");
        assert_eq!(human_rate(1.5 * f64::from(1 << 30)), "1.5 GiB/s");
        assert_eq!(human_rate(f64::NAN), "0 B/s");
    }
}
