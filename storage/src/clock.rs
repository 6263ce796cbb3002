//! The one real [`Clock`]: the operating system's wall and monotonic clocks.
//!
//! Under madsim both readings come from simulated time (madsim intercepts the system clock);
//! the simulator wraps them with per-node skew, drift and jumps.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use sextant_core::clock::Clock;
use sextant_core::sample::TimestampMs;

/// Reads the system clocks. The only place in Sextant that calls `SystemTime::now`.
#[derive(Debug)]
pub struct SystemClock {
    origin: Instant,
}

impl SystemClock {
    pub fn new() -> Self {
        SystemClock { origin: Instant::now() }
    }
}

impl Default for SystemClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for SystemClock {
    fn now_wall_ms(&self) -> TimestampMs {
        match SystemTime::now().duration_since(UNIX_EPOCH) {
            Ok(since_epoch) => i64::try_from(since_epoch.as_millis()).unwrap_or(i64::MAX),
            // A clock set before 1970: report negative milliseconds rather than panic.
            Err(before_epoch) => -i64::try_from(before_epoch.duration().as_millis()).unwrap_or(i64::MAX),
        }
    }

    fn now_monotonic_ns(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }
}
