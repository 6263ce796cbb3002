//! The `Clock` trait: the only way any Sextant code learns the time.
//!
//! A node owns one `Clock`. The real implementation lives in the storage crate
//! (`sextant_storage::clock::SystemClock`); the simulator gives every node its own clock with
//! skew, drift and jumps. Core itself never calls a clock: it receives one, or a timestamp.

use std::fmt::Debug;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use crate::sample::TimestampMs;

/// A node's view of time.
pub trait Clock: Send + Sync + Debug {
    /// Wall-clock time in Unix milliseconds. May jump, forwards or backwards.
    fn now_wall_ms(&self) -> TimestampMs;
    /// Monotonic time in nanoseconds since an arbitrary origin. Never goes backwards; leases and
    /// timeouts use it so that a wall-clock jump cannot stretch them.
    fn now_monotonic_ns(&self) -> u64;
}

/// A clock that only moves when told to. For tests and for deterministic tools.
#[derive(Debug, Default)]
pub struct ManualClock {
    wall_ms: AtomicI64,
    monotonic_ns: AtomicU64,
}

impl ManualClock {
    pub fn new(wall_ms: TimestampMs) -> Self {
        ManualClock { wall_ms: AtomicI64::new(wall_ms), monotonic_ns: AtomicU64::new(0) }
    }

    /// Sets the wall clock (possibly backwards, like an NTP step).
    pub fn set_wall_ms(&self, wall_ms: TimestampMs) {
        self.wall_ms.store(wall_ms, Ordering::SeqCst);
    }

    /// Moves both clocks forward by `delta_ms`.
    pub fn advance_ms(&self, delta_ms: u64) {
        let delta_i64 = i64::try_from(delta_ms).expect("advance_ms: delta fits in i64");
        self.wall_ms.fetch_add(delta_i64, Ordering::SeqCst);
        self.monotonic_ns.fetch_add(delta_ms.saturating_mul(1_000_000), Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_wall_ms(&self) -> TimestampMs {
        self.wall_ms.load(Ordering::SeqCst)
    }
    fn now_monotonic_ns(&self) -> u64 {
        self.monotonic_ns.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Goal: a wall-clock step backwards never moves the monotonic clock backwards.
    #[test]
    fn manual_clock_wall_jumps_monotonic_does_not() {
        let clock = ManualClock::new(1_000);
        clock.advance_ms(500);
        assert_eq!(clock.now_wall_ms(), 1_500);
        assert_eq!(clock.now_monotonic_ns(), 500_000_000);
        clock.set_wall_ms(0);
        assert_eq!(clock.now_wall_ms(), 0);
        assert_eq!(clock.now_monotonic_ns(), 500_000_000);
    }
}
