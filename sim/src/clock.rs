//! A node's clock inside the simulation: madsim's simulated time seen through that node's
//! fixed skew, drift and wall-clock jumps.
//!
//! - wall = true simulated wall time + skew + Σ jumps + drift × elapsed;
//! - monotonic = elapsed × (1 + drift): it never goes back, whatever the wall clock does.
//!
//! The clock belongs to the machine, not the process: it is created outside the node and
//! survives kills and restarts, like the disk.

use std::sync::Mutex;
use std::time::UNIX_EPOCH;

use madsim::time::{Instant, TimeHandle};
use sextant_core::clock::Clock;
use sextant_core::sample::TimestampMs;

#[derive(Debug)]
struct State {
    skew_ms: i64,
    jumps_ms: i64,
    drift_ppm: i64,
}

#[derive(Debug)]
pub struct SimClock {
    origin: Instant,
    state: Mutex<State>,
}

impl SimClock {
    /// Must be called inside the madsim runtime.
    pub fn new(skew_ms: i64, drift_ppm: i64) -> SimClock {
        SimClock {
            origin: Instant::now(),
            state: Mutex::new(State { skew_ms, jumps_ms: 0, drift_ppm }),
        }
    }

    /// Steps the wall clock by `delta_ms` (either way).
    pub fn jump(&self, delta_ms: i64) {
        self.state.lock().expect("clock lock").jumps_ms += delta_ms;
    }

    /// The sum of the steps applied so far.
    pub fn jumps_ms(&self) -> i64 {
        self.state.lock().expect("clock lock").jumps_ms
    }

    /// How far the wall clock is from true time now, in milliseconds.
    pub fn offset_ms(&self) -> i64 {
        self.now_wall_ms() - true_wall_ms()
    }

    fn elapsed_ns(&self) -> u64 {
        u64::try_from(Instant::now().duration_since(self.origin).as_nanos()).unwrap_or(u64::MAX)
    }
}

/// True simulated wall time (what the writers stamp samples with).
pub fn true_wall_ms() -> TimestampMs {
    let now = TimeHandle::current().now_time();
    i64::try_from(now.duration_since(UNIX_EPOCH).expect("simulated time is after 1970").as_millis()).expect("fits")
}

impl Clock for SimClock {
    fn now_wall_ms(&self) -> TimestampMs {
        let state = self.state.lock().expect("clock lock");
        let drift_ms = (self.elapsed_ns() as i128 * state.drift_ppm as i128 / 1_000_000 / 1_000_000) as i64;
        true_wall_ms() + state.skew_ms + state.jumps_ms + drift_ms
    }

    fn now_monotonic_ns(&self) -> u64 {
        let drift_ppm = self.state.lock().expect("clock lock").drift_ppm;
        let elapsed = self.elapsed_ns() as i128;
        (elapsed + elapsed * drift_ppm as i128 / 1_000_000).max(0) as u64
    }
}
