//! Byte counts and rates as people write them, one rule for every size flag, rate flag and
//! job key: digits, then an optional unit K, M, G or T, also written `KiB` or `KB`, all
//! binary (as in qemu-img and XAPI), and an optional `B`. Rates are sizes per second and may
//! end in `/s`. Pure: no I/O.
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

#[cfg(test)]
mod tests {
    use super::*;

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
