//! Prometheus durations (`30s`, `1h30m`, `2w`, `0`): the one parser flags, the config file,
//! the query API and the metadata commands (rule `for`, group `interval`) share.
//!
//! The grammar is Prometheus's `model.ParseDuration` (prometheus/common, as Prometheus 2.42
//! ships it): one or more `<integer><unit>` terms with units `y` (365 d), `w`, `d`, `h`, `m`,
//! `s`, `ms`, each at most once and from largest to smallest; a bare `0` means zero; no sign,
//! no fraction, no spaces. Prometheus keeps durations as Go nanoseconds, so it refuses anything
//! longer than `i64::MAX` nanoseconds (about 292 years); so does this parser, so that a rule
//! file Sextant accepts is one Prometheus accepts too.

use std::fmt;

/// The longest duration accepted, in milliseconds: Go's `time.Duration` limit (`i64::MAX`
/// nanoseconds), which Prometheus's parser enforces.
pub const DURATION_MS_MAX: i64 = i64::MAX / 1_000_000;

/// Why a duration was refused. Displays as `duration "<text>": <reason>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DurationError {
    pub text: String,
    pub reason: &'static str,
}

impl fmt::Display for DurationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "duration {:?}: {}", self.text, self.reason)
    }
}

impl std::error::Error for DurationError {}

/// Units from largest to smallest; `ms` is tried before `m` so `5ms` is not read as `5m` + `s`.
const UNITS: [(&str, i64); 7] = [
    ("y", 365 * 86_400_000),
    ("w", 7 * 86_400_000),
    ("d", 86_400_000),
    ("h", 3_600_000),
    ("ms", 1),
    ("m", 60_000),
    ("s", 1_000),
];

/// Parses a Prometheus duration into milliseconds (see the module documentation).
pub fn parse_duration_ms(text: &str) -> Result<i64, DurationError> {
    let error = |reason| DurationError {
        text: text.to_string(),
        reason,
    };
    // Prometheus special-cases these two before its regular expression.
    if text == "0" {
        return Ok(0);
    }
    if text.is_empty() {
        return Err(error("empty duration"));
    }
    let mut total_ms: i64 = 0;
    let mut rest = text;
    let mut previous_unit_ms = i64::MAX;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(error(
                "expected <integer><unit> terms such as 1h30m (no sign, fraction or spaces)",
            ));
        }
        // A number too long for i64 is certainly out of range (leading zeros parse fine).
        let number: i64 = rest[..digits]
            .parse()
            .map_err(|_| error("out of range (at most 292 years)"))?;
        rest = &rest[digits..];
        let Some((unit, unit_ms)) = UNITS.iter().find(|(unit, _)| rest.starts_with(unit)) else {
            return Err(error(
                "expected a unit (y, w, d, h, m, s or ms) after each number",
            ));
        };
        rest = &rest[unit.len()..];
        if *unit_ms >= previous_unit_ms {
            return Err(error(
                "units must go from largest to smallest (y w d h m s ms), each once",
            ));
        }
        previous_unit_ms = *unit_ms;
        total_ms = number
            .checked_mul(*unit_ms)
            .and_then(|term_ms| total_ms.checked_add(term_ms))
            .filter(|ms| *ms <= DURATION_MS_MAX)
            .ok_or_else(|| error("out of range (at most 292 years)"))?;
    }
    Ok(total_ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `Ok(ms)`: parses to ms; `Err(s)`: refused with a reason containing s.
    fn check(text: &str, expected: Result<i64, &str>) {
        match (parse_duration_ms(text), expected) {
            (Ok(ms), Ok(want)) => assert_eq!(ms, want, "{text:?}"),
            (Err(error), Err(needle)) => {
                let message = error.to_string();
                assert!(
                    message.starts_with(&format!("duration {text:?}: ")),
                    "{message}"
                );
                assert!(
                    message.contains(needle),
                    "{text:?}: {message} lacks {needle:?}"
                );
            }
            (got, want) => panic!("{text:?}: got {got:?}, want {want:?}"),
        }
    }

    // Goal: the grammar and limits of Prometheus's model.ParseDuration, checked case by case
    // (the accept/refuse verdicts were taken from promtool 2.42 where they are surprising:
    // `0` but not `10`, 292y but not 300y, no spaces).
    // Method: one table through `check`.
    #[test]
    fn durations() {
        check("0", Ok(0));
        check("0s", Ok(0));
        check("500ms", Ok(500));
        check("10s", Ok(10_000));
        check("10m", Ok(600_000));
        check("24h", Ok(86_400_000));
        check("15d", Ok(1_296_000_000));
        check("2w", Ok(1_209_600_000));
        check("1y", Ok(31_536_000_000));
        check("1h30m", Ok(5_400_000));
        check("1m5ms", Ok(60_005));
        check("01m", Ok(60_000));
        check(
            "1y2w3d4h5m6s7ms",
            Ok(31_536_000_000 + 1_209_600_000 + 259_200_000 + 14_400_000 + 300_000 + 6_007),
        );
        check("292y", Ok(292 * 31_536_000_000));
        check("9223372036854ms", Ok(DURATION_MS_MAX));
        check("", Err("empty duration"));
        check("10", Err("expected a unit"));
        check("00", Err("expected a unit"));
        check("m", Err("expected <integer><unit>"));
        check("10x", Err("expected a unit"));
        check("1.5h", Err("expected a unit"));
        check("30m1h", Err("largest to smallest"));
        check("1h1h", Err("largest to smallest"));
        check("-5m", Err("no sign"));
        check(" 1m", Err("no sign, fraction or spaces"));
        check("1m ", Err("no sign, fraction or spaces"));
        check("300y", Err("out of range"));
        check("9223372036855ms", Err("out of range"));
        check("292y52w", Err("out of range"));
        check("99999999999999999999d", Err("out of range"));
        check("9999999999999999w", Err("out of range"));
    }
}
