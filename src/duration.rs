//! Small parsers for the durations and byte sizes that flags and the config file take.
//!
//! Durations are Prometheus's (`sextant_core::duration`, the one parser the whole project
//! shares): one or more `<integer><unit>` terms with units `y` (365 d), `w` (7 d), `d` (24 h),
//! `h`, `m`, `s` and `ms`, largest first, e.g. `15d`, `1h30m`, `500ms`; a bare `0` means zero;
//! at most 292 years. Flags and config values are trimmed first (Prometheus rule files are not).
//! Sizes are an integer with an optional unit: `B`, `KB`/`MB`/`GB`/`TB` (powers of
//! 1000) or `KiB`/`MiB`/`GiB`/`TiB` (powers of 1024), e.g. `4GiB`, `32MiB`, `1000000`.

/// Parses a duration into milliseconds.
pub fn parse_duration_ms(text: &str) -> Result<i64, String> {
    sextant_core::duration::parse_duration_ms(text.trim()).map_err(|e| e.to_string())
}

/// Parses a byte size.
pub fn parse_bytes(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let digits = text.bytes().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 {
        return Err(format!("size {text:?}: expected a number"));
    }
    let number: u64 = text[..digits].parse().map_err(|_| format!("size {text:?}: number too large"))?;
    let multiplier: u64 = match text[digits..].trim() {
        "" | "B" => 1,
        "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "TB" => 1_000_000_000_000,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "TiB" => 1 << 40,
        other => return Err(format!("size {text:?}: unknown unit {other:?} (use B, KB, MB, GB, TB, KiB, MiB, GiB or TiB)")),
    };
    number.checked_mul(multiplier).ok_or_else(|| format!("size {text:?} is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    // Goal: every unit, combinations, and each malformed form gives an error, never a panic.
    // Method: one table of inputs and expected outcomes.
    #[test]
    fn durations() {
        let ok = [("0", 0), (" 5m ", 300_000), ("1y", 31_536_000_000), ("500ms", 500), ("10s", 10_000), ("10m", 600_000), ("24h", 86_400_000), ("15d", 1_296_000_000), ("2w", 1_209_600_000), ("1h30m", 5_400_000)];
        for (text, ms) in ok {
            assert_eq!(parse_duration_ms(text), Ok(ms), "{text}");
        }
        for bad in ["", "10", "m", "10x", "30m1h", "1h1h", "-5m", "99999999999999999999d", "9999999999999999w"] {
            assert!(parse_duration_ms(bad).is_err(), "{bad} should fail");
        }
    }

    // Goal: byte sizes in decimal and binary units; malformed and overflowing inputs fail.
    #[test]
    fn sizes() {
        let ok = [("0", 0), ("1000", 1000), ("32MiB", 32 << 20), ("4GiB", 4 << 30), ("2MB", 2_000_000), ("7 B", 7)];
        for (text, bytes) in ok {
            assert_eq!(parse_bytes(text), Ok(bytes), "{text}");
        }
        for bad in ["", "MiB", "3 parsecs", "99999999999TiB"] {
            assert!(parse_bytes(bad).is_err(), "{bad} should fail");
        }
    }
}
