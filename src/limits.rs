//! Per-tenant ingest limits: the token-bucket rate limit and the active-series tracker that
//! enforces the series limits and spots runaway metrics.
//!
//! # Active series
//!
//! The tracker remembers, per tenant, every series written within `series_idle_ms_max` (by
//! default the head's span, so "active" means what the head holds) under a 128-bit key (two
//! independent xxHash64 digests of the series identity), with its metric name and the wall
//! time it was last written. A new series is admitted only while its metric and its tenant
//! are under their limits; an existing series is always admitted, so existing series keep
//! ingesting when a limit is reached. The key is an accounting key, not series identity: a
//! collision of both digests (probability ~2^-128 per pair) would let one series in over the
//! limit, never lose data. Series are forgotten after being idle; a series whose samples were
//! all refused by storage after admission is counted until it goes idle (bounded by the limit).
//!
//! # Runaway metrics
//!
//! Each metric with new-series attempts in the current window (`runaway_window_ms`) gets a
//! HyperLogLog of the distinct new series attempted, admitted or refused — a cardinality bomb
//! resends the same refused series every scrape, and the sketch counts them once in 1 KiB.
//! When the estimate reaches `runaway_new_series_max`, the metric is flagged runaway, logged
//! once, and listed in `/api/v1/status/tsdb` and `/metrics`; the flag clears after a whole
//! window below the threshold. At most `RUNAWAY_TRACKED_METRICS_MAX` metrics per tenant have
//! a sketch at once; attempts for further metrics are counted in `untracked_attempts`.
//!
//! # In a cluster (later issue)
//!
//! Each shard enforces its share of a global limit: `share = ceil(limit / shards × 1.1)`, the
//! 10 % slack absorbing hash imbalance between shards (with 100,000 series over 16 shards the
//! per-shard count's standard deviation is ~1 %, so 10 % is ten sigmas).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use sextant_core::labels::Labels;

use crate::hll::HyperLogLog;

/// Sketches per tenant at once.
pub const RUNAWAY_TRACKED_METRICS_MAX: usize = 10_000;
/// HyperLogLog precision of the runaway sketches (1 KiB each).
const RUNAWAY_HLL_PRECISION: u8 = 10;

/// A token bucket in samples. Time is the node's monotonic clock, in nanoseconds.
#[derive(Clone, Debug)]
pub struct TokenBucket {
    rate_per_s: f64,
    capacity: f64,
    tokens: f64,
    last_ns: u64,
}

impl TokenBucket {
    /// A full bucket refilling at `rate_per_s` with a burst of two seconds.
    pub fn new(rate_per_s: u64, now_ns: u64) -> Self {
        let capacity = rate_per_s as f64 * 2.0;
        TokenBucket { rate_per_s: rate_per_s as f64, capacity, tokens: capacity, last_ns: now_ns }
    }

    /// The refill rate, samples per second.
    pub fn rate_per_s(&self) -> u64 {
        self.rate_per_s as u64
    }

    /// Changes the rate (the cluster changed the tenant's limit): what accrued so far at the
    /// old rate is kept, capped by the new burst, and refilling continues at the new rate.
    pub fn set_rate(&mut self, rate_per_s: u64, now_ns: u64) {
        let elapsed_s = now_ns.saturating_sub(self.last_ns) as f64 / 1e9;
        self.last_ns = self.last_ns.max(now_ns);
        self.tokens = (self.tokens + elapsed_s * self.rate_per_s).min(self.capacity);
        self.rate_per_s = rate_per_s as f64;
        self.capacity = rate_per_s as f64 * 2.0;
        self.tokens = self.tokens.min(self.capacity);
    }

    /// True when the bucket has refilled completely (it can be dropped and recreated).
    pub fn is_full(&self, now_ns: u64) -> bool {
        let elapsed_s = now_ns.saturating_sub(self.last_ns) as f64 / 1e9;
        self.tokens + elapsed_s * self.rate_per_s >= self.capacity
    }

    /// Takes `n` tokens, or says in how many milliseconds there will be enough. A request
    /// larger than the whole burst passes when the bucket is full and leaves it in debt, so
    /// the long-run rate still holds.
    pub fn try_take(&mut self, n: u64, now_ns: u64) -> Result<(), u64> {
        let elapsed_s = now_ns.saturating_sub(self.last_ns) as f64 / 1e9;
        self.last_ns = self.last_ns.max(now_ns);
        self.tokens = (self.tokens + elapsed_s * self.rate_per_s).min(self.capacity);
        let needed = (n as f64).min(self.capacity);
        if self.tokens >= needed {
            self.tokens -= n as f64;
            return Ok(());
        }
        let wait_s = (needed - self.tokens) / self.rate_per_s.max(f64::MIN_POSITIVE);
        Err((wait_s * 1000.0).ceil().min(u64::MAX as f64) as u64)
    }
}

/// The 128-bit accounting key of a series.
pub type SeriesAccountKey = u128;

/// Hashes the series identity with two seeds over the core fingerprint's byte string: the high
/// 64 bits are the fingerprint itself ([`account_key_fingerprint`]), so the ingest path hashes
/// a series once for its shard and its account.
pub fn series_account_key(tenant: &str, labels: &Labels) -> SeriesAccountKey {
    sextant_core::series::with_identity_bytes(tenant, labels, |bytes| {
        let a = xxhash_rust::xxh64::xxh64(bytes, 0);
        let b = xxhash_rust::xxh64::xxh64(bytes, ACCOUNT_KEY_SEED_LOW);
        (u128::from(a) << 64) | u128::from(b)
    })
}

const ACCOUNT_KEY_SEED_LOW: u64 = 0x5e57_a47c_0ffe_e001;

/// The series' core fingerprint, read from its account key.
pub fn account_key_fingerprint(key: SeriesAccountKey) -> sextant_core::series::Fingerprint {
    sextant_core::series::Fingerprint((key >> 64) as u64)
}

/// The tracker's verdict on one series.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Admission {
    Existing,
    New,
    MetricLimit { metric: String, limit: u64 },
    TenantLimit { limit: u64 },
}

#[derive(Debug)]
struct ActiveSeries {
    metric: Arc<str>,
    last_write_ms: i64,
}

#[derive(Debug)]
struct RunawayState {
    sketch: Option<HyperLogLog>,
    /// Wall time the metric was flagged, while flagged.
    flagged_since_ms: Option<i64>,
    /// Estimate at the last window end or flag.
    estimate: u64,
}

#[derive(Debug, Default)]
struct TenantSeries {
    /// Lookup and expiry only; never walked to build output.
    series: HashMap<SeriesAccountKey, ActiveSeries>,
    per_metric: BTreeMap<Arc<str>, u64>,
    runaway: BTreeMap<Arc<str>, RunawayState>,
    untracked_attempts: u64,
}

/// One runaway metric, for reports.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RunawayMetric {
    pub name: String,
    /// Estimated distinct new series attempted in the window that flagged it.
    pub new_series_estimate: u64,
    pub flagged_since_ms: i64,
}

/// The series limits of one tenant, passed on each admission: they come from the metadata
/// group and change while the node runs (`tenant_limits`), so the tracker does not keep them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SeriesLimits {
    pub per_metric_max: u64,
    pub per_tenant_max: u64,
}

/// Settings of the tracker.
#[derive(Clone, Debug)]
pub struct TrackerLimits {
    pub tenants_max: usize,
    pub runaway_new_series_max: u64,
    pub runaway_window_ms: i64,
    pub series_idle_ms_max: i64,
}

/// Active series of every tenant.
#[derive(Debug)]
pub struct SeriesTracker {
    limits: TrackerLimits,
    tenants: BTreeMap<String, TenantSeries>,
    window_start_ms: i64,
    /// Runaway flags raised and not yet logged, drained by the caller.
    newly_flagged: Vec<(String, String, u64)>,
}

impl SeriesTracker {
    pub fn new(limits: TrackerLimits, now_ms: i64) -> Self {
        SeriesTracker { limits, tenants: BTreeMap::new(), window_start_ms: now_ms, newly_flagged: Vec::new() }
    }

    /// True if the tenant is known or there is room for one more.
    pub fn tenant_allowed(&self, tenant: &str) -> bool {
        self.tenants.contains_key(tenant) || self.tenants.len() < self.limits.tenants_max
    }

    /// Admits a series (see the module documentation). `metric` is its `__name__`.
    /// A lowered limit refuses new series until the count falls below it; series already
    /// counted keep ingesting.
    pub fn admit(&mut self, tenant: &str, key: SeriesAccountKey, metric: &str, now_ms: i64, series: SeriesLimits) -> Admission {
        let limits = self.limits.clone();
        let state = self.tenants.entry(tenant.to_string()).or_default();
        if let Some(active) = state.series.get_mut(&key) {
            active.last_write_ms = active.last_write_ms.max(now_ms);
            return Admission::Existing;
        }
        // A new-series attempt: feed the runaway sketch whatever the verdict.
        let flagged = {
            let tracked = state.runaway.len();
            let entry = match state.runaway.get_mut(metric) {
                Some(entry) => Some(entry),
                None if tracked < RUNAWAY_TRACKED_METRICS_MAX => {
                    Some(state.runaway.entry(Arc::from(metric)).or_insert(RunawayState { sketch: None, flagged_since_ms: None, estimate: 0 }))
                }
                None => None,
            };
            match entry {
                Some(entry) => {
                    let sketch = entry.sketch.get_or_insert_with(|| HyperLogLog::new(RUNAWAY_HLL_PRECISION));
                    sketch.insert((key >> 64) as u64);
                    let estimate = sketch.estimate();
                    if entry.flagged_since_ms.is_none() && estimate >= limits.runaway_new_series_max {
                        entry.flagged_since_ms = Some(now_ms);
                        entry.estimate = estimate;
                        Some(estimate)
                    } else {
                        None
                    }
                }
                None => {
                    state.untracked_attempts += 1;
                    None
                }
            }
        };
        if let Some(estimate) = flagged {
            self.newly_flagged.push((tenant.to_string(), metric.to_string(), estimate));
        }
        let state = self.tenants.get_mut(tenant).expect("inserted above");
        let metric_count = state.per_metric.get(metric).copied().unwrap_or(0);
        if metric_count >= series.per_metric_max {
            return Admission::MetricLimit { metric: metric.to_string(), limit: series.per_metric_max };
        }
        if state.series.len() as u64 >= series.per_tenant_max {
            return Admission::TenantLimit { limit: series.per_tenant_max };
        }
        let metric: Arc<str> = match state.per_metric.get_key_value(metric) {
            Some((name, _)) => name.clone(),
            None => Arc::from(metric),
        };
        *state.per_metric.entry(metric.clone()).or_default() += 1;
        state.series.insert(key, ActiveSeries { metric, last_write_ms: now_ms });
        Admission::New
    }

    /// Counts a series storage already holds (the head after WAL replay) as active, written
    /// at `now_ms`, whatever the limits: it is in the head whether or not it fits, and
    /// counting it is what stops each restart from admitting another full limit. Seeding a
    /// series twice counts it once. Does not feed the runaway sketches (not an attempt).
    pub fn seed(&mut self, tenant: &str, key: SeriesAccountKey, metric: &str, now_ms: i64) {
        let state = match self.tenants.get_mut(tenant) {
            Some(state) => state,
            None => self.tenants.entry(tenant.to_string()).or_default(),
        };
        if let Some(active) = state.series.get_mut(&key) {
            active.last_write_ms = active.last_write_ms.max(now_ms);
            return;
        }
        let metric: Arc<str> = match state.per_metric.get_key_value(metric) {
            Some((name, _)) => name.clone(),
            None => Arc::from(metric),
        };
        *state.per_metric.entry(metric.clone()).or_default() += 1;
        state.series.insert(key, ActiveSeries { metric, last_write_ms: now_ms });
    }

    /// Forgets a series admitted as new whose write failed as a whole.
    pub fn forget(&mut self, tenant: &str, key: SeriesAccountKey) {
        let Some(state) = self.tenants.get_mut(tenant) else { return };
        if let Some(active) = state.series.remove(&key) {
            Self::decrement(&mut state.per_metric, &active.metric);
        }
    }

    fn decrement(per_metric: &mut BTreeMap<Arc<str>, u64>, metric: &Arc<str>) {
        if let Some(count) = per_metric.get_mut(metric) {
            *count -= 1;
            if *count == 0 {
                per_metric.remove(metric);
            }
        }
    }

    /// Drops idle series and rolls the runaway window. Called by the maintenance loop.
    pub fn maintain(&mut self, now_ms: i64) {
        let idle_before = now_ms.saturating_sub(self.limits.series_idle_ms_max);
        let window_over = now_ms.saturating_sub(self.window_start_ms) >= self.limits.runaway_window_ms;
        if window_over {
            self.window_start_ms = now_ms;
        }
        for state in self.tenants.values_mut() {
            let per_metric = &mut state.per_metric;
            state.series.retain(|_, active| {
                let keep = active.last_write_ms >= idle_before;
                if !keep {
                    Self::decrement(per_metric, &active.metric);
                }
                keep
            });
            if window_over {
                state.runaway.retain(|_, runaway| {
                    let estimate = runaway.sketch.as_ref().map_or(0, |s| s.estimate());
                    if estimate < self.limits.runaway_new_series_max {
                        runaway.flagged_since_ms = None;
                    } else {
                        runaway.estimate = estimate;
                    }
                    runaway.sketch = None;
                    runaway.flagged_since_ms.is_some()
                });
                state.untracked_attempts = 0;
            }
        }
        self.tenants.retain(|_, state| !state.series.is_empty() || !state.runaway.is_empty());
    }

    /// Runaway flags raised since the last call: (tenant, metric, estimate).
    pub fn take_newly_flagged(&mut self) -> Vec<(String, String, u64)> {
        std::mem::take(&mut self.newly_flagged)
    }

    /// Runaway metrics of a tenant, by name.
    pub fn runaway(&self, tenant: &str) -> Vec<RunawayMetric> {
        let Some(state) = self.tenants.get(tenant) else { return Vec::new() };
        state
            .runaway
            .iter()
            .filter_map(|(name, r)| r.flagged_since_ms.map(|since| RunawayMetric { name: name.to_string(), new_series_estimate: r.estimate, flagged_since_ms: since }))
            .collect()
    }

    /// Every flagged (tenant, metric), in order.
    pub fn runaway_all(&self) -> Vec<(String, RunawayMetric)> {
        self.tenants.keys().flat_map(|t| self.runaway(t).into_iter().map(move |r| (t.clone(), r))).collect()
    }

    /// Active series of a tenant, and of one metric.
    pub fn active_series(&self, tenant: &str, metric: Option<&str>) -> u64 {
        let Some(state) = self.tenants.get(tenant) else { return 0 };
        match metric {
            Some(metric) => state.per_metric.get(metric).copied().unwrap_or(0),
            None => state.series.len() as u64,
        }
    }

    /// Active series per (tenant, metric), ordered by tenant then metric; one tenant when
    /// `tenant` is given. For the admin API's cardinality report.
    pub fn active_series_per_metric(&self, tenant: Option<&str>) -> Vec<(String, String, u64)> {
        self.tenants
            .iter()
            .filter(|(name, _)| tenant.is_none_or(|t| t == name.as_str()))
            .flat_map(|(name, state)| state.per_metric.iter().map(move |(metric, count)| (name.clone(), metric.to_string(), *count)))
            .collect()
    }

    /// Active series of all tenants.
    pub fn active_series_total(&self) -> u64 {
        self.tenants.values().map(|t| t.series.len() as u64).sum()
    }

    pub fn tenant_count(&self) -> usize {
        self.tenants.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> TrackerLimits {
        TrackerLimits { tenants_max: 2, runaway_new_series_max: 4, runaway_window_ms: 1000, series_idle_ms_max: 10_000 }
    }

    const SERIES: SeriesLimits = SeriesLimits { per_metric_max: 3, per_tenant_max: 5 };

    // Goal: the account key is the two documented hashes of the identity byte string, and its
    // high half is the core fingerprint the ingest path routes by (it hashes once for both).
    #[test]
    fn account_key_halves() {
        let labels = Labels::from_pairs(&[("__name__", "up"), ("job", "node")]);
        let bytes = b"default\xff__name__\xffup\xffjob\xffnode\xff";
        let key = series_account_key("default", &labels);
        assert_eq!((key >> 64) as u64, xxhash_rust::xxh64::xxh64(bytes, 0));
        assert_eq!(key as u64, xxhash_rust::xxh64::xxh64(bytes, ACCOUNT_KEY_SEED_LOW));
        assert_eq!(account_key_fingerprint(key), sextant_core::series::fingerprint("default", &labels));
    }

    // Goal: the per-metric and per-tenant limits refuse only new series; existing series
    // and other metrics keep being admitted; idle series stop counting.
    #[test]
    fn limits_refuse_only_new_series() {
        let mut tracker = SeriesTracker::new(limits(), 0);
        for key in 0..3u128 {
            assert_eq!(tracker.admit("t", key, "a", 0, SERIES), Admission::New);
        }
        assert_eq!(tracker.admit("t", 3, "a", 0, SERIES), Admission::MetricLimit { metric: "a".into(), limit: 3 });
        assert_eq!(tracker.admit("t", 0, "a", 1, SERIES), Admission::Existing);
        assert_eq!(tracker.admit("t", 10, "b", 1, SERIES), Admission::New);
        assert_eq!(tracker.admit("t", 11, "b", 1, SERIES), Admission::New);
        assert_eq!(tracker.admit("t", 12, "c", 1, SERIES), Admission::TenantLimit { limit: 5 });
        assert_eq!(tracker.active_series("t", None), 5);
        assert_eq!(tracker.active_series("t", Some("a")), 3);
        tracker.forget("t", 11);
        assert_eq!(tracker.admit("t", 12, "c", 1, SERIES), Admission::New);
        // Series 1 and 2 idle past 10 s; 0 was written at 9 000.
        assert_eq!(tracker.admit("t", 0, "a", 9_000, SERIES), Admission::Existing);
        tracker.maintain(10_500);
        assert_eq!(tracker.active_series("t", Some("a")), 1);
        assert_eq!(tracker.admit("t", 3, "a", 10_500, SERIES), Admission::New);
        assert!(tracker.tenant_allowed("t"));
        assert!(tracker.tenant_allowed("u"));
    }

    // Goal: seeded series (storage's head after a restart) count against the limits even
    // past them, are existing series for admission, count once when seeded twice, and go
    // idle like written ones.
    #[test]
    fn seeded_series_count_against_limits() {
        let mut tracker = SeriesTracker::new(limits(), 0);
        for key in 0..4u128 {
            tracker.seed("t", key, "a", 0);
        }
        tracker.seed("t", 0, "a", 0);
        assert_eq!(tracker.active_series("t", Some("a")), 4, "over the limit of 3, as the head holds them");
        assert_eq!(tracker.admit("t", 9, "a", 1, SERIES), Admission::MetricLimit { metric: "a".into(), limit: 3 });
        assert_eq!(tracker.admit("t", 2, "a", 1, SERIES), Admission::Existing);
        assert_eq!(tracker.admit("t", 10, "b", 1, SERIES), Admission::New);
        assert_eq!(tracker.admit("t", 11, "b", 1, SERIES), Admission::TenantLimit { limit: 5 });
        tracker.maintain(10_001);
        assert_eq!(tracker.active_series("t", Some("a")), 1, "only series 2 was written since");
    }

    // Goal: a metric attempting many distinct new series is flagged once, including
    // refused attempts; repeats of the same refused series do not count; the flag clears
    // after a quiet window.
    #[test]
    fn runaway_flagged_once_and_cleared() {
        let mut tracker = SeriesTracker::new(limits(), 0);
        for _ in 0..10 {
            tracker.admit("t", 100, "bomb", 0, SERIES);
        }
        assert!(tracker.runaway("t").is_empty());
        for key in 0..20u128 {
            tracker.admit("t", key << 64, "bomb", 0, SERIES);
        }
        let flagged = tracker.take_newly_flagged();
        assert_eq!(flagged.len(), 1);
        assert_eq!(flagged[0].1, "bomb");
        assert!(tracker.take_newly_flagged().is_empty());
        assert_eq!(tracker.runaway("t").len(), 1);
        tracker.maintain(1_000);
        assert_eq!(tracker.runaway("t").len(), 1, "window that flagged it was still hot");
        tracker.maintain(2_000);
        assert!(tracker.runaway("t").is_empty());
    }

    // Goal: limits handed in per admission take effect at once — a raised limit admits the
    // next new series, a lowered one refuses new series while existing ones keep ingesting.
    #[test]
    fn limits_change_between_admissions() {
        let mut tracker = SeriesTracker::new(limits(), 0);
        let two = SeriesLimits { per_metric_max: 2, per_tenant_max: 100 };
        assert_eq!(tracker.admit("t", 1, "a", 0, two), Admission::New);
        assert_eq!(tracker.admit("t", 2, "a", 0, two), Admission::New);
        assert_eq!(tracker.admit("t", 3, "a", 0, two), Admission::MetricLimit { metric: "a".into(), limit: 2 });
        let three = SeriesLimits { per_metric_max: 3, ..two };
        assert_eq!(tracker.admit("t", 3, "a", 0, three), Admission::New);
        let one = SeriesLimits { per_metric_max: 1, ..two };
        assert_eq!(tracker.admit("t", 4, "a", 0, one), Admission::MetricLimit { metric: "a".into(), limit: 1 });
        assert_eq!(tracker.admit("t", 2, "a", 0, one), Admission::Existing);
        assert_eq!(tracker.active_series("t", Some("a")), 3);
    }

    // Goal: a rate change keeps what accrued (capped by the new burst) and refills at the
    // new rate.
    #[test]
    fn token_bucket_rate_change() {
        let mut bucket = TokenBucket::new(100, 0);
        assert_eq!(bucket.try_take(200, 0), Ok(()));
        bucket.set_rate(10, 1_000_000_000); // 100 tokens accrued, capped at the new burst of 20
        assert_eq!(bucket.rate_per_s(), 10);
        assert_eq!(bucket.try_take(20, 1_000_000_000), Ok(()));
        assert_eq!(bucket.try_take(10, 1_000_000_000), Err(1000));
        assert_eq!(bucket.try_take(10, 2_000_000_000), Ok(()));
    }

    // Goal: the bucket admits the burst, refuses beyond it with a wait, and refills with
    // monotonic time; an oversized request passes on a full bucket.
    #[test]
    fn token_bucket() {
        let mut bucket = TokenBucket::new(100, 0);
        assert_eq!(bucket.try_take(200, 0), Ok(()));
        assert_eq!(bucket.try_take(1, 0), Err(10));
        assert_eq!(bucket.try_take(50, 500_000_000), Ok(()));
        assert!(bucket.try_take(1, 500_000_000).is_err());
        let mut big = TokenBucket::new(10, 0);
        assert_eq!(big.try_take(1000, 0), Ok(()));
        assert!(big.try_take(1, 1_000_000_000).is_err(), "in debt");
    }
}
