//! Time acceptance: which samples a node takes, judged once by the receiving node's clock.
//!
//! The rules (BRIEF.md, "Decisions that every issue shares"), for a sample at `t` of a series
//! whose newest in-order timestamp is `newest` (absent for a new series), at wall time `now`:
//!
//! 1. `t > now + future_skew_ms_max` → refused: too far in the future.
//! 2. `t < now - sample_age_ms_max` → refused: too old (default 24 h, so a sender's backlog after
//!    an outage is still accepted).
//! 3. `newest` absent or `t > newest` → in order: accepted.
//! 4. `t <= newest` and `t >= newest - out_of_order_window_ms` → accepted as out of order (the
//!    head then finds an exact duplicate — a success that stores nothing — or a conflicting
//!    value, refused because the first write wins).
//! 5. otherwise → refused: out of order beyond the window.
//!
//! Forwarded, replicated and moved writes were judged by the node that received them and are
//! applied through the import path, which skips these rules (but not the duplicate rules).

use sextant_core::sample::TimestampMs;
use serde::{Deserialize, Serialize};

/// Time-acceptance bounds in milliseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AcceptanceConfig {
    pub sample_age_ms_max: i64,
    pub out_of_order_window_ms: i64,
    pub future_skew_ms_max: i64,
}

impl Default for AcceptanceConfig {
    fn default() -> Self {
        AcceptanceConfig {
            sample_age_ms_max: 24 * 3600 * 1000,
            out_of_order_window_ms: 10 * 60 * 1000,
            future_skew_ms_max: 10 * 60 * 1000,
        }
    }
}

/// Why a sample's time was refused. Permanent: resending the same sample cannot succeed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TimeRefusal {
    #[error("timestamp {t} is {ahead_ms} ms ahead of the node's clock (limit {limit_ms} ms)")]
    TooFarInFuture { t: TimestampMs, ahead_ms: i64, limit_ms: i64 },
    #[error("timestamp {t} is {age_ms} ms older than the node's clock (limit {limit_ms} ms)")]
    TooOld { t: TimestampMs, age_ms: i64, limit_ms: i64 },
    #[error("timestamp {t} is {behind_ms} ms older than the series' newest sample (out-of-order window {limit_ms} ms)")]
    OutOfOrderTooOld { t: TimestampMs, behind_ms: i64, limit_ms: i64 },
}

/// How an accepted sample relates to its series.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimeVerdict {
    InOrder,
    OutOfOrder,
}

impl AcceptanceConfig {
    /// Judges one sample (see the module documentation for the rules).
    pub fn judge(&self, now: TimestampMs, newest: Option<TimestampMs>, t: TimestampMs) -> Result<TimeVerdict, TimeRefusal> {
        let ahead_ms = t.saturating_sub(now);
        if ahead_ms > self.future_skew_ms_max {
            return Err(TimeRefusal::TooFarInFuture { t, ahead_ms, limit_ms: self.future_skew_ms_max });
        }
        let age_ms = now.saturating_sub(t);
        if age_ms > self.sample_age_ms_max {
            return Err(TimeRefusal::TooOld { t, age_ms, limit_ms: self.sample_age_ms_max });
        }
        match newest {
            None => Ok(TimeVerdict::InOrder),
            Some(newest) if t > newest => Ok(TimeVerdict::InOrder),
            Some(newest) => {
                let behind_ms = newest.saturating_sub(t);
                if behind_ms <= self.out_of_order_window_ms {
                    Ok(TimeVerdict::OutOfOrder)
                } else {
                    Err(TimeRefusal::OutOfOrderTooOld { t, behind_ms, limit_ms: self.out_of_order_window_ms })
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Goal: each acceptance rule, at and just past its boundary. Method: one table.
    #[test]
    fn acceptance_table() {
        let config = AcceptanceConfig::default();
        let now = 1_000_000_000_000;
        let h = 3_600_000;
        let m = 60_000;
        let cases = [
            ("new series, now", None, now, Ok(TimeVerdict::InOrder)),
            ("future within skew", None, now + 10 * m, Ok(TimeVerdict::InOrder)),
            ("future past skew", None, now + 10 * m + 1,
                Err(TimeRefusal::TooFarInFuture { t: now + 10 * m + 1, ahead_ms: 10 * m + 1, limit_ms: 10 * m })),
            ("backlog 23h, new series", None, now - 23 * h, Ok(TimeVerdict::InOrder)),
            ("24h exactly", None, now - 24 * h, Ok(TimeVerdict::InOrder)),
            ("older than 24h", None, now - 24 * h - 1,
                Err(TimeRefusal::TooOld { t: now - 24 * h - 1, age_ms: 24 * h + 1, limit_ms: 24 * h })),
            ("in order after newest", Some(now - h), now - h + 1, Ok(TimeVerdict::InOrder)),
            ("equal to newest is out of order (duplicate check)", Some(now), now, Ok(TimeVerdict::OutOfOrder)),
            ("ooo inside window", Some(now), now - 10 * m, Ok(TimeVerdict::OutOfOrder)),
            ("ooo past window", Some(now), now - 10 * m - 1,
                Err(TimeRefusal::OutOfOrderTooOld { t: now - 10 * m - 1, behind_ms: 10 * m + 1, limit_ms: 10 * m })),
            ("extreme timestamps do not overflow", None, i64::MIN,
                Err(TimeRefusal::TooOld { t: i64::MIN, age_ms: i64::MAX, limit_ms: 24 * h })),
        ];
        for (name, newest, t, expected) in cases {
            assert_eq!(config.judge(now, newest, t), expected, "{name}");
        }
        assert!(matches!(config.judge(now, None, i64::MAX), Err(TimeRefusal::TooFarInFuture { .. })));
    }
}
