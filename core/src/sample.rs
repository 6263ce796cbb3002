//! Samples: `i64` millisecond timestamps and `f64` values compared bit for bit.

/// Milliseconds since the Unix epoch, as Prometheus uses them.
pub type TimestampMs = i64;

/// The exact bit pattern Prometheus writes as a staleness marker (`value.StaleNaN`).
pub const STALE_NAN_BITS: u64 = 0x7ff0_0000_0000_0002;

/// Prometheus's staleness marker as an `f64` (a NaN with a specific payload).
pub fn stale_nan() -> f64 {
    f64::from_bits(STALE_NAN_BITS)
}

/// True when `v` is exactly Prometheus's staleness marker (not merely any NaN).
pub fn is_stale_nan(v: f64) -> bool {
    v.to_bits() == STALE_NAN_BITS
}

/// One sample. Equality compares the value's bits, so NaN payloads, `-0.0` and the staleness
/// marker are all distinguished: storage must give back exactly what it was given.
#[derive(Clone, Copy, Debug)]
pub struct Sample {
    pub t: TimestampMs,
    pub v: f64,
}

impl Sample {
    pub fn new(t: TimestampMs, v: f64) -> Self {
        Sample { t, v }
    }
}

impl PartialEq for Sample {
    fn eq(&self, other: &Self) -> bool {
        self.t == other.t && self.v.to_bits() == other.v.to_bits()
    }
}
impl Eq for Sample {}

#[cfg(test)]
mod tests {
    use super::*;

    // Goal: equality is bitwise, so storage round trips can be checked exactly.
    #[test]
    fn equality_is_bitwise() {
        assert_eq!(Sample::new(1, f64::NAN), Sample::new(1, f64::NAN));
        assert_ne!(Sample::new(1, 0.0), Sample::new(1, -0.0));
        assert_ne!(Sample::new(1, f64::NAN), Sample::new(1, stale_nan()));
        assert!(is_stale_nan(stale_nan()));
        assert!(!is_stale_nan(f64::NAN));
        assert!(stale_nan().is_nan());
    }
}
