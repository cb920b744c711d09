//! Sizes (`300M`, `300M+1`, `4096`) and durations (`5s`, `250ms`, `2m`) as
//! scenario files write them. A duration is at most [`MAX_DURATION`] (one day):
//! a lab file is untrusted, and `sleep = "18446744073709551615s"` used to panic
//! the engine's clock arithmetic or hang a real run.

use std::time::Duration;

/// Parses a size: a number of bytes with an optional binary suffix `K`, `M`, `G`,
/// `T` (as `dd` and `truncate` read them: `300M` = 300 × 2^20), optionally
/// followed by `+N` extra bytes (`300M+1` is what `dd bs=1 count=1 seek=300M` makes).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let err = || {
        format!("invalid size `{text}`: expected bytes with an optional K/M/G/T suffix and `+N`, e.g. `300M` or `300M+1`")
    };
    let (main, extra) = match text.split_once('+') {
        Some((main, extra)) => (main, Some(extra)),
        None => (text, None),
    };
    let main = main.trim();
    let (digits, shift) = match main.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let shift = match c.to_ascii_uppercase() {
                'K' => 10,
                'M' => 20,
                'G' => 30,
                'T' => 40,
                _ => return Err(err()),
            };
            (&main[..i], shift)
        }
        _ => (main, 0),
    };
    let base: u64 = parse_digits(digits).ok_or_else(err)?;
    let mut total = base
        .checked_shl(shift)
        .filter(|v| v >> shift == base)
        .ok_or_else(err)?;
    if let Some(extra) = extra {
        let extra = parse_digits(extra.trim()).ok_or_else(err)?;
        total = total.checked_add(extra).ok_or_else(err)?;
    }
    Ok(total)
}

fn parse_digits(text: &str) -> Option<u64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// The longest duration a scenario may write (a `sleep`, a `timeout`, a fault
/// `delay`): one day, far beyond any lab, short enough that clock arithmetic on
/// it can never overflow.
pub const MAX_DURATION: Duration = Duration::from_secs(24 * 60 * 60);

/// Parses a duration: a number (decimals allowed) and a unit `ms`, `s` or `m`,
/// at most [`MAX_DURATION`].
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let err = || {
        format!("invalid duration `{text}`: expected a number and a unit, e.g. `5s`, `250ms`, `2m`")
    };
    let t = text.trim();
    let (number, millis_per_unit) = if let Some(n) = t.strip_suffix("ms") {
        (n, 1u64)
    } else if let Some(n) = t.strip_suffix('s') {
        (n, 1_000)
    } else if let Some(n) = t.strip_suffix('m') {
        (n, 60_000)
    } else {
        return Err(err());
    };
    let (whole, frac) = match number.split_once('.') {
        Some((w, f)) => (w, f),
        None => (number, ""),
    };
    if whole.is_empty() && frac.is_empty() {
        return Err(err());
    }
    let too_long = || {
        format!(
            "duration `{text}` is longer than the maximum of {} (one day)",
            format_duration(MAX_DURATION)
        )
    };
    let whole = if whole.is_empty() {
        0
    } else if whole.bytes().all(|b| b.is_ascii_digit()) {
        // All digits but past u64: far longer than the maximum.
        parse_digits(whole).ok_or_else(too_long)?
    } else {
        return Err(err());
    };
    if !frac.bytes().all(|b| b.is_ascii_digit()) || frac.len() > 9 {
        return Err(err());
    }
    // Fraction in nanoseconds of one unit, computed exactly in integers.
    let frac_nanos_of_unit = if frac.is_empty() {
        0u128
    } else {
        let digits: u128 = frac.parse().map_err(|_| err())?;
        digits * 10u128.pow(9 - frac.len() as u32)
    };
    let unit_nanos = u128::from(millis_per_unit) * 1_000_000;
    let nanos = u128::from(whole) * unit_nanos + frac_nanos_of_unit * unit_nanos / 1_000_000_000;
    if nanos > MAX_DURATION.as_nanos() {
        return Err(too_long());
    }
    let secs = u64::try_from(nanos / 1_000_000_000).map_err(|_| too_long())?;
    Ok(Duration::new(secs, (nanos % 1_000_000_000) as u32))
}

/// Renders a duration the way [`parse_duration`] reads it (for docs and messages).
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if d.subsec_millis() != 0 || d.as_nanos() % 1_000_000 != 0 {
        format!("{}ms", ms)
    } else if ms % 60_000 == 0 && ms > 0 {
        format!("{}m", ms / 60_000)
    } else {
        format!("{}s", d.as_secs())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("300M"), Ok(300 << 20));
        assert_eq!(parse_size("300M+1"), Ok((300 << 20) + 1));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("64k"), Ok(64 << 10));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        for bad in ["", "M", "300X", "-1", "1.5M", "300M+", "99999999999T", "+1"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration(".5s"), Ok(Duration::from_millis(500)));
        for bad in ["", "5", "s", "5h", "1.2.3s", "-1s", ".s"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_duration("1440m"), Ok(MAX_DURATION));
        assert_eq!(parse_duration("86400s"), Ok(MAX_DURATION));
        for long in [
            "86400.001s",
            "1441m",
            "18446744073709551615s",
            "99999999999999999999ms",
        ] {
            let e = parse_duration(long).expect_err(long);
            assert!(
                e.contains("longer than the maximum of 1440m (one day)"),
                "{e}"
            );
        }
        assert_eq!(format_duration(Duration::from_secs(5)), "5s");
        assert_eq!(format_duration(Duration::from_millis(1500)), "1500ms");
        assert_eq!(format_duration(Duration::from_secs(120)), "2m");
    }

    proptest! {
        #[test]
        fn never_panic(s in "\\PC*") {
            let _ = parse_size(&s);
            let _ = parse_duration(&s);
        }

        #[test]
        fn duration_roundtrip(ms in 0u64..10_000_000) {
            let d = Duration::from_millis(ms);
            prop_assert_eq!(parse_duration(&format_duration(d)), Ok(d));
        }
    }
}
