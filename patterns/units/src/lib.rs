//! Durations and sizes as people write them in configuration files and on command lines:
//! `250ms`, `1.5s`, `2m`, `1h`, `100us`, `64MiB`, `512KiB`.
//!
//! Decimal fractions are exact (no floating point): `0.1s` is 100 ms, not 99.999… ms. Every
//! configuration reader in meshwork — the proxy's YAML, the filters' JSON, the load generator's
//! flags, the eBPF programs' configs — goes through here, so a duration means the same
//! everywhere. `no_std`: the filters (wasm) and eBPF configs use it too.

#![no_std]

use core::fmt;
use core::time::Duration;

/// Why a duration or size did not parse. Displays as a sentence that quotes the input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnitError<'a> {
    pub text: &'a str,
    pub kind: UnitErrorKind,
    /// What the text should have been.
    pub expected: Quantity,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Quantity {
    Duration,
    Size,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnitErrorKind {
    /// Not a number followed by a unit.
    NotANumber,
    /// A number without a unit (only `0` may go without).
    NoUnit,
    UnknownUnit,
    /// Too large to represent (durations: u64 seconds; sizes: u64 bytes).
    OutOfRange,
    /// A size with a fraction of a byte (`1.5B`).
    FractionalBytes,
}

impl fmt::Display for UnitError<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let t = self.text;
        let (like, units) = match self.expected {
            Quantity::Duration => ("a duration like 250ms, 1.5s or 2m", "ns, us, ms, s, m or h"),
            Quantity::Size => ("a size like 64MiB or 4096", "B, KiB, MiB, GiB or TiB"),
        };
        match self.kind {
            UnitErrorKind::NotANumber => write!(f, "{t:?} is not {like}"),
            UnitErrorKind::NoUnit => write!(f, "{t:?} needs a unit ({units})"),
            UnitErrorKind::UnknownUnit => write!(f, "{t:?} has an unknown unit (use {units})"),
            UnitErrorKind::OutOfRange => write!(f, "{t:?} is out of range"),
            UnitErrorKind::FractionalBytes => write!(f, "{t:?} is not a whole number of bytes"),
        }
    }
}

impl core::error::Error for UnitError<'_> {}

/// A non-negative decimal number split into its whole part and up to 18 fraction digits
/// (scaled to 10^18), exactly.
struct Decimal {
    whole: u64,
    /// The fraction × 10^18.
    frac: u64,
}

const FRAC_SCALE: u64 = 1_000_000_000_000_000_000;

/// Splits `text` into a decimal number and the unit after it.
fn split(text: &str) -> Result<(Decimal, &str), UnitErrorKind> {
    let t = text.trim();
    let end = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (number, unit) = t.split_at(end);
    let (whole, frac) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() && frac.is_empty() || frac.contains('.') {
        return Err(UnitErrorKind::NotANumber);
    }
    let whole: u64 = if whole.is_empty() { 0 } else { whole.parse().map_err(|_| UnitErrorKind::OutOfRange)? };
    let mut scaled = 0u64;
    let mut place = FRAC_SCALE / 10;
    for digit in frac.bytes() {
        // Digits past 10^-18 cannot change a nanosecond or a byte.
        scaled += u64::from(digit - b'0') * place;
        place /= 10;
    }
    Ok((Decimal { whole, frac: scaled }, unit.trim()))
}

/// `value × scale` where `scale` is in `unit`s, exactly, rounded down to whole `unit`s.
fn scale(d: &Decimal, per: u64) -> Option<u64> {
    let whole = d.whole.checked_mul(per)?;
    // frac/10^18 × per, without overflow: per ≤ 3.6e12 and frac < 1e18 would overflow u64,
    // so go through u128.
    let frac = (u128::from(d.frac) * u128::from(per) / u128::from(FRAC_SCALE)) as u64;
    whole.checked_add(frac)
}

/// Parses `250ms`, `1.5s`, `2m`, `1h`, `100us`, `10ns`. A unit is required, except for `0`.
pub fn parse_duration(text: &str) -> Result<Duration, UnitError<'_>> {
    parse_duration_inner(text, None)
}

/// Like [`parse_duration`], but a bare number is in `default_unit` (`"s"` or `"ms"`), for flags
/// and fields whose documentation says so.
pub fn parse_duration_or<'a>(text: &'a str, default_unit: &'static str) -> Result<Duration, UnitError<'a>> {
    parse_duration_inner(text, Some(default_unit))
}

fn parse_duration_inner<'a>(text: &'a str, default_unit: Option<&'static str>) -> Result<Duration, UnitError<'a>> {
    let err = |kind| UnitError { text, kind, expected: Quantity::Duration };
    let (number, unit) = split(text).map_err(err)?;
    let unit = match (unit, default_unit) {
        ("", Some(d)) => d,
        ("", None) if number.whole == 0 && number.frac == 0 => "s",
        ("", None) => return Err(err(UnitErrorKind::NoUnit)),
        (u, _) => u,
    };
    let nanos_per: u64 = match unit {
        "ns" => 1,
        "us" | "µs" => 1_000,
        "ms" => 1_000_000,
        "s" => 1_000_000_000,
        "m" | "min" => 60_000_000_000,
        "h" => 3_600_000_000_000,
        _ => return Err(err(UnitErrorKind::UnknownUnit)),
    };
    // Whole seconds and the nanoseconds under a second, so hours of u64 seconds fit.
    let secs_per = nanos_per / 1_000_000_000;
    if secs_per > 0 {
        let secs = number.whole.checked_mul(secs_per).ok_or(err(UnitErrorKind::OutOfRange))?;
        let frac_nanos = (u128::from(number.frac) * u128::from(nanos_per) / u128::from(FRAC_SCALE)) as u64;
        let d = Duration::from_secs(secs).checked_add(Duration::from_nanos(frac_nanos));
        return d.ok_or(err(UnitErrorKind::OutOfRange));
    }
    scale(&number, nanos_per).map(Duration::from_nanos).ok_or(err(UnitErrorKind::OutOfRange))
}

/// Parses `64MiB`, `512KiB`, `1GiB`, `1048576` (bytes), `1.5MiB`. `K`, `M`, `G` mean the same
/// binary units.
pub fn parse_size(text: &str) -> Result<u64, UnitError<'_>> {
    let err = |kind| UnitError { text, kind, expected: Quantity::Size };
    let (number, unit) = split(text).map_err(err)?;
    let per: u64 = match unit {
        "" | "B" => 1,
        "KiB" | "K" | "k" => 1 << 10,
        "MiB" | "M" => 1 << 20,
        "GiB" | "G" => 1 << 30,
        "TiB" | "T" => 1 << 40,
        _ => return Err(err(UnitErrorKind::UnknownUnit)),
    };
    if per == 1 && number.frac != 0 {
        return Err(err(UnitErrorKind::FractionalBytes));
    }
    scale(&number, per).ok_or(err(UnitErrorKind::OutOfRange))
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::string::ToString;

    use super::*;

    #[test]
    fn durations() {
        let ms = Duration::from_millis;
        assert_eq!(parse_duration("250ms"), Ok(ms(250)));
        assert_eq!(parse_duration("1.5s"), Ok(ms(1500)));
        assert_eq!(parse_duration(" 2m "), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("100us"), Ok(Duration::from_micros(100)));
        assert_eq!(parse_duration("100µs"), Ok(Duration::from_micros(100)));
        assert_eq!(parse_duration("7ns"), Ok(Duration::from_nanos(7)));
        assert_eq!(parse_duration("0.1s"), Ok(ms(100)), "exact, not 99.999… ms");
        assert_eq!(parse_duration(".5s"), Ok(ms(500)));
        assert_eq!(parse_duration("2.000000001s"), Ok(Duration::new(2, 1)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("0.25s"), Ok(ms(250)), "Envoy's proto3 duration strings");
        assert_eq!(parse_duration_or("10", "s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration_or("10", "ms"), Ok(ms(10)));
        assert_eq!(parse_duration_or("10ms", "s"), Ok(ms(10)));
    }

    #[test]
    fn duration_errors_say_what_is_wrong() {
        let kind = |t| parse_duration(t).unwrap_err().kind;
        assert_eq!(kind("10"), UnitErrorKind::NoUnit);
        assert_eq!(kind("5 parsecs"), UnitErrorKind::UnknownUnit);
        assert_eq!(kind("fast"), UnitErrorKind::NotANumber);
        assert_eq!(kind("1.2.3s"), UnitErrorKind::NotANumber);
        assert_eq!(kind("-1s"), UnitErrorKind::NotANumber);
        assert_eq!(kind("99999999999999999999h"), UnitErrorKind::OutOfRange);
        assert_eq!(kind("9999999999999999h"), UnitErrorKind::OutOfRange);
        let text = parse_duration("5 parsecs").unwrap_err().to_string();
        assert!(text.contains("\"5 parsecs\"") && text.contains("ms, s"), "{text}");
        assert!(parse_duration("soon").unwrap_err().to_string().contains("is not a duration"));
        assert!(parse_size("big").unwrap_err().to_string().contains("is not a size"));
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_size("512KiB"), Ok(512 << 10));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("1048576"), Ok(1 << 20));
        assert_eq!(parse_size("1.5MiB"), Ok(3 << 19));
        assert_eq!(parse_size("16M"), Ok(16 << 20));
        assert_eq!(parse_size("1PB").unwrap_err().kind, UnitErrorKind::UnknownUnit);
        assert_eq!(parse_size("1.5B").unwrap_err().kind, UnitErrorKind::FractionalBytes);
        assert_eq!(parse_size("99999999999TiB").unwrap_err().kind, UnitErrorKind::OutOfRange);
        assert!(parse_size("1PB").unwrap_err().to_string().contains("KiB"));
    }

    proptest::proptest! {
        #[test]
        fn whole_milliseconds_round_trip(ms in 0u64..1_000_000_000_000) {
            let text = std::format!("{ms}ms");
            proptest::prop_assert_eq!(parse_duration(&text), Ok(Duration::from_millis(ms)));
            let secs = std::format!("{}.{:03}s", ms / 1000, ms % 1000);
            proptest::prop_assert_eq!(parse_duration(&secs), Ok(Duration::from_millis(ms)));
        }

        #[test]
        fn never_panics(text in "\\PC{0,12}") {
            let _ = parse_duration(&text);
            let _ = parse_size(&text);
        }
    }
}
