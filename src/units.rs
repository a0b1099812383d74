//! Byte counts and rates as people write them, one rule for every size flag, rate flag and
//! job key: digits, then an optional unit K, M, G or T, also written `KiB` or `KB`, all
//! binary (as in qemu-img and XAPI), and an optional `B`. Rates are sizes per second and may
//! end in `/s`. And as they are printed: binary (IEC) units everywhere, `12.0 MiB`,
//! `38.2 MiB/s`. Pure: no I/O.
//!
//! Hand-written on purpose: the size crates (bytesize, byte-unit) read `KB` and `M` as powers
//! of 1000 and accept fractions (`1.5G`). One binary rule for sizes and rates alike means a
//! `--max-rate 50M` moves the same 50 MiB a second that `--size 50M` is, and every size is a
//! whole number of bytes.

/// A byte count: `4096`, `512K`, `64M`, `1G`, `2GiB`, `3KB`, `7B` (case does not matter; a
/// space may stand between the number and the unit).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let bad = || format!("{text:?} is not a size: use e.g. 4096, 512K, 64M, 1G");
    let upper = text.trim().to_ascii_uppercase();
    let (body, needs_unit) = match upper.strip_suffix("IB") {
        Some(body) => (body, true),
        None => (upper.strip_suffix('B').unwrap_or(&upper), false),
    };
    let shift = match body.chars().last() {
        Some('K') => 10,
        Some('M') => 20,
        Some('G') => 30,
        Some('T') => 40,
        _ if !needs_unit => 0,
        _ => return Err(bad()),
    };
    let digits = if shift == 0 {
        body
    } else {
        body[..body.len() - 1].trim_end()
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(1 << shift))
        .ok_or_else(bad)
}

/// Bytes per second: a size as [`parse_size`] reads it, optionally followed by `/s`. Zero is
/// refused: no limit is written by leaving the setting out.
pub fn parse_rate(text: &str) -> Result<u64, String> {
    let trimmed = text.trim();
    let size = trimmed.strip_suffix("/s").unwrap_or(trimmed);
    let bytes = parse_size(size).map_err(|_| {
        format!(
            "{text:?} is not a rate: expected bytes per second such as 52428800, 50M or 50MiB/s"
        )
    })?;
    if bytes == 0 {
        return Err(format!(
            "{text:?}: a rate must be more than 0 bytes per second"
        ));
    }
    Ok(bytes)
}

/// The units [`format_size`] prints, each 1024 times the one before.
const UNITS: [&str; 7] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];

/// A byte count for people, in binary units with one decimal: `512 B`, `12.0 MiB`,
/// `1.5 GiB`. Bytes are whole: no decimal below 1 KiB.
pub fn format_size(bytes: u64) -> String {
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut unit = 0;
    let mut value = bytes as f64;
    // Move up while the value would print as 1024.0 or more in this unit.
    while value >= 1023.95 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// Bytes per second for people, as [`format_size`] with `/s`: `38.2 MiB/s`. A rate that is
/// not a finite, non-negative number (no time has passed yet) reads `0 B/s`.
pub fn format_rate(bytes_per_second: f64) -> String {
    let bytes = if bytes_per_second.is_finite() && bytes_per_second > 0.0 {
        // `as` saturates at u64::MAX.
        bytes_per_second.round() as u64
    } else {
        0
    };
    format!("{}/s", format_size(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_print_in_binary_units_with_one_decimal() {
        assert_eq!(format_size(0), "0 B");
        assert_eq!(format_size(1023), "1023 B");
        assert_eq!(format_size(1024), "1.0 KiB");
        assert_eq!(format_size(1536), "1.5 KiB");
        assert_eq!(format_size(12 << 20), "12.0 MiB");
        assert_eq!(format_size(5_662_310), "5.4 MiB");
        assert_eq!(format_size(3 << 30), "3.0 GiB");
        assert_eq!(format_size(2 << 40), "2.0 TiB");
        // Never `1024.0 KiB`: a value that rounds up to the next unit is printed in it.
        assert_eq!(format_size((1 << 20) - 1), "1.0 MiB");
        assert_eq!(format_size(1_048_000), "1023.4 KiB");
        assert_eq!(format_size(u64::MAX), "16.0 EiB");
    }

    #[test]
    fn rates_print_as_sizes_per_second() {
        assert_eq!(format_rate(38.2 * f64::from(1 << 20)), "38.2 MiB/s");
        assert_eq!(format_rate(1.5 * f64::from(1 << 30)), "1.5 GiB/s");
        assert_eq!(format_rate(100.4), "100 B/s");
        for nothing in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            assert_eq!(format_rate(nothing), "0 B/s");
        }
    }

    #[test]
    fn printed_sizes_read_back_within_the_rounding() {
        for bytes in [1024u64, 50 << 20, 7 << 30, 123_456_789] {
            let printed = format_size(bytes);
            let (number, unit) = printed.split_once(' ').unwrap();
            let shift = 10 * UNITS.iter().position(|u| *u == unit).unwrap() as i32;
            let back = number.parse::<f64>().unwrap() * 2f64.powi(shift);
            let error = (back - bytes as f64).abs() / bytes as f64;
            assert!(error < 0.05, "{bytes} printed {printed}");
        }
    }

    #[test]
    fn sizes_take_binary_suffixes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("64M"), Ok(64 << 20));
        assert_eq!(parse_size("16m"), Ok(16 << 20));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(parse_size("2GiB"), Ok(2 << 30));
        assert_eq!(parse_size("512K"), Ok(512 << 10));
        assert_eq!(parse_size("3KB"), Ok(3 << 10));
        assert_eq!(parse_size("7B"), Ok(7));
        assert_eq!(parse_size("50 MiB"), Ok(50 << 20));
        for bad in [
            "",
            "M",
            "1.5G",
            "-1",
            "12X",
            "99999999999T",
            "1IB",
            "+1",
            "5 parsecs",
        ] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn rates_are_sizes_per_second() {
        assert_eq!(parse_rate("52428800"), Ok(50 << 20));
        assert_eq!(parse_rate("50MiB"), Ok(50 << 20));
        assert_eq!(parse_rate("50 MiB/s"), Ok(50 << 20));
        assert_eq!(parse_rate("50M"), parse_size("50M"));
        assert_eq!(parse_rate("100MB/s"), Ok(100 << 20));
        for bad in ["0", "0M/s", "fast", "-5MiB", "1.5GiB", "/s"] {
            assert!(parse_rate(bad).is_err(), "{bad}");
        }
    }
}
