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
//! # In a cluster
//!
//! Each shard enforces its share of a global limit ([`limit_share`]): `m = limit / shards`
//! plus `max(10 % of m, 4 × √m)`, rounded up — the slack absorbing hash imbalance between
//! shards. Series spread over shards binomially, so a shard's count has a standard deviation
//! of at most `√m`: with 100,000 series over 16 shards that is ~1 % of the share and 10 % is
//! ten sigmas; for small limits four sigmas dominate (limit 100 over 16 shards: 17 per shard). The tracker counts
//! every series per shard as well as per tenant and metric; an admission names the series'
//! shard and, in a cluster, the shard count ([`Placement`]), and is then judged against that
//! shard's counts and shares only. The node admits a series where it is stored — on the
//! shard's primary — so writes arriving at different nodes meet one count (node.rs, route.rs).
//! Without a cluster (one node holds every shard) the whole limits apply to the node's counts.

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
    /// `limit` is the limit in force; `share` is the shard's share of it, when judged by one.
    MetricLimit { metric: String, limit: u64, share: Option<ShardShare> },
    TenantLimit { limit: u64, share: Option<ShardShare> },
}

impl Admission {
    /// For a refusal, its metrics `reason`: `series_per_metric_limit` or
    /// `series_per_tenant_limit`.
    pub fn refusal_kind(&self) -> Option<&'static str> {
        match self {
            Admission::Existing | Admission::New => None,
            Admission::MetricLimit { .. } => Some(LIMIT_KIND_METRIC),
            Admission::TenantLimit { .. } => Some(LIMIT_KIND_TENANT),
        }
    }

    /// For a refusal, the sentence the client reads (built only for the few shown: a bomb's
    /// request can refuse thousands of series).
    pub fn refusal_reason(&self, tenant: &str) -> String {
        let of_share = |share: &Option<ShardShare>| match share {
            Some(ShardShare { shard, shards, share }) => format!(" (its share in shard {shard}: {share} of that limit over {shards} shards, slack for hash imbalance included)"),
            None => String::new(),
        };
        match self {
            Admission::Existing | Admission::New => String::new(),
            Admission::MetricLimit { metric, limit, share } => {
                format!("new series refused: metric {metric:?} has reached its limit of {limit} active series{} (existing series keep ingesting)", of_share(share))
            }
            Admission::TenantLimit { limit, share } => format!("new series refused: tenant {tenant:?} has reached its limit of {limit} active series{}", of_share(share)),
        }
    }
}

/// The metrics `reason` of a sample refused by the per-metric series limit.
pub const LIMIT_KIND_METRIC: &str = "series_per_metric_limit";
/// The metrics `reason` of a sample refused by the per-tenant series limit.
pub const LIMIT_KIND_TENANT: &str = "series_per_tenant_limit";
/// Refused series one write keeps in detail.
pub const LIMIT_REFUSALS_DETAILED_MAX: usize = 16;

/// The series limits' refusals of one write (on the node that received it, or on a shard's
/// primary for a forwarded batch, which sends them back).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LimitRefusals {
    /// Refused samples by (reason kind, metric).
    pub counted: BTreeMap<(&'static str, String), u64>,
    /// The first [`LIMIT_REFUSALS_DETAILED_MAX`] refused series: (series as text, reason).
    pub detailed: Vec<(String, String)>,
}

impl LimitRefusals {
    /// Counts a refused series of `metric` with `samples` samples.
    pub fn add(&mut self, kind: &'static str, metric: &str, samples: u64, detail: impl FnOnce() -> (String, String)) {
        *self.counted.entry((kind, metric.to_string())).or_default() += samples;
        if self.detailed.len() < LIMIT_REFUSALS_DETAILED_MAX {
            self.detailed.push(detail());
        }
    }

    pub fn merge(&mut self, other: LimitRefusals) {
        for (key, n) in other.counted {
            *self.counted.entry(key).or_default() += n;
        }
        let room = LIMIT_REFUSALS_DETAILED_MAX.saturating_sub(self.detailed.len());
        self.detailed.extend(other.detailed.into_iter().take(room));
    }

    /// Refused samples in all.
    pub fn samples(&self) -> u64 {
        self.counted.values().sum()
    }

    /// The kind constant named `text` (as a forwarded reply carries it); an unknown kind (a
    /// newer node) counts as the per-metric limit's, the more common one.
    pub fn kind_of(text: &str) -> &'static str {
        if text == LIMIT_KIND_TENANT {
            LIMIT_KIND_TENANT
        } else {
            LIMIT_KIND_METRIC
        }
    }
}

/// The share of a cluster-wide limit that refused a series.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShardShare {
    pub shard: u32,
    pub shards: u32,
    pub share: u64,
}

#[derive(Debug)]
struct ActiveSeries {
    metric: Arc<str>,
    shard: u32,
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
    /// Series per shard, and per (metric, shard): what a cluster's shares are judged on.
    per_shard: BTreeMap<u32, u64>,
    per_metric_shard: BTreeMap<(Arc<str>, u32), u64>,
    runaway: BTreeMap<Arc<str>, RunawayState>,
    untracked_attempts: u64,
}

impl TenantSeries {
    /// Counts a new series everywhere it is counted.
    fn insert(&mut self, key: SeriesAccountKey, metric: &str, shard: u32, now_ms: i64) {
        let metric: Arc<str> = match self.per_metric.get_key_value(metric) {
            Some((name, _)) => name.clone(),
            None => Arc::from(metric),
        };
        *self.per_metric.entry(metric.clone()).or_default() += 1;
        *self.per_shard.entry(shard).or_default() += 1;
        *self.per_metric_shard.entry((metric.clone(), shard)).or_default() += 1;
        self.series.insert(key, ActiveSeries { metric, shard, last_write_ms: now_ms });
    }

    /// Uncounts a series everywhere it was counted.
    fn remove(&mut self, key: SeriesAccountKey) {
        let Some(active) = self.series.remove(&key) else { return };
        decrement(&mut self.per_metric, &active.metric);
        decrement(&mut self.per_shard, &active.shard);
        decrement(&mut self.per_metric_shard, &(active.metric, active.shard));
    }
}

fn decrement<K: Ord>(counts: &mut BTreeMap<K, u64>, key: &K) {
    if let Some(count) = counts.get_mut(key) {
        *count -= 1;
        if *count == 0 {
            counts.remove(key);
        }
    }
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

/// Where an admitted series is stored: its shard and, when the node is one of several in a
/// cluster, the shard count its limits are shared over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Placement {
    pub shard: u32,
    /// `Some(shards)`: judge against this shard's share of each limit; `None`: against the
    /// whole limits (no cluster).
    pub shared_over: Option<u32>,
}

impl Placement {
    /// A node without a cluster: every shard is here and the whole limits apply.
    pub fn whole(shard: u32) -> Placement {
        Placement { shard, shared_over: None }
    }
}

/// One shard's share of a cluster-wide limit: the shard's expected count `m = limit / shards`
/// plus a slack for hash imbalance of 10 % of `m` or four standard deviations of the binomial
/// spread (`4 × √m`), whichever is larger, rounded up (module docs). So a metric at its whole
/// limit fills no shard's share early unless its spread is a 4-sigma outlier, for small limits
/// as for large; the shares together exceed the limit by the slack. A limit of 0 stays 0.
pub fn limit_share(limit: u64, shards: u32) -> u64 {
    if limit == 0 {
        return 0;
    }
    let mean = limit as f64 / f64::from(shards.max(1));
    let slack = (mean * 0.1).max(4.0 * mean.sqrt());
    // IEEE sqrt is correctly rounded: every platform computes the same share.
    let share = (mean + slack).ceil();
    if share >= u64::MAX as f64 {
        u64::MAX
    } else {
        share as u64
    }
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
    /// Shard → the epoch at which its stored series were last counted (in a cluster).
    seeded: BTreeMap<u32, u64>,
}

impl SeriesTracker {
    pub fn new(limits: TrackerLimits, now_ms: i64) -> Self {
        SeriesTracker { limits, tenants: BTreeMap::new(), window_start_ms: now_ms, newly_flagged: Vec::new(), seeded: BTreeMap::new() }
    }

    /// True if the tenant is known or there is room for one more.
    pub fn tenant_allowed(&self, tenant: &str) -> bool {
        self.tenants.contains_key(tenant) || self.tenants.len() < self.limits.tenants_max
    }

    /// Admits a series (see the module documentation). `metric` is its `__name__`.
    /// A lowered limit refuses new series until the count falls below it; series already
    /// counted keep ingesting.
    pub fn admit(&mut self, tenant: &str, key: SeriesAccountKey, metric: &str, placement: Placement, now_ms: i64, series: SeriesLimits) -> Admission {
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
        let shard = placement.shard;
        match placement.shared_over {
            None => {
                if state.per_metric.get(metric).copied().unwrap_or(0) >= series.per_metric_max {
                    return Admission::MetricLimit { metric: metric.to_string(), limit: series.per_metric_max, share: None };
                }
                if state.series.len() as u64 >= series.per_tenant_max {
                    return Admission::TenantLimit { limit: series.per_tenant_max, share: None };
                }
            }
            Some(shards) => {
                let share = |limit| ShardShare { shard, shards, share: limit_share(limit, shards) };
                let metric_share = share(series.per_metric_max);
                // A metric without a count has none in any shard (no key built for it).
                let in_shard = match state.per_metric.get_key_value(metric) {
                    Some((name, _)) => state.per_metric_shard.get(&(name.clone(), shard)).copied().unwrap_or(0),
                    None => 0,
                };
                if in_shard >= metric_share.share {
                    return Admission::MetricLimit { metric: metric.to_string(), limit: series.per_metric_max, share: Some(metric_share) };
                }
                let tenant_share = share(series.per_tenant_max);
                if state.per_shard.get(&shard).copied().unwrap_or(0) >= tenant_share.share {
                    return Admission::TenantLimit { limit: series.per_tenant_max, share: Some(tenant_share) };
                }
            }
        }
        state.insert(key, metric, shard, now_ms);
        Admission::New
    }

    /// Counts a series storage already holds (the head after WAL replay) as active, written
    /// at `now_ms`, whatever the limits: it is in the head whether or not it fits, and
    /// counting it is what stops each restart from admitting another full limit. Seeding a
    /// series twice counts it once. Does not feed the runaway sketches (not an attempt).
    pub fn seed(&mut self, tenant: &str, key: SeriesAccountKey, metric: &str, shard: u32, now_ms: i64) {
        let state = match self.tenants.get_mut(tenant) {
            Some(state) => state,
            None => self.tenants.entry(tenant.to_string()).or_default(),
        };
        if let Some(active) = state.series.get_mut(&key) {
            active.last_write_ms = active.last_write_ms.max(now_ms);
            return;
        }
        state.insert(key, metric, shard, now_ms);
    }

    /// Forgets a series admitted as new whose write failed as a whole.
    pub fn forget(&mut self, tenant: &str, key: SeriesAccountKey) {
        let Some(state) = self.tenants.get_mut(tenant) else { return };
        state.remove(key);
    }

    /// The epoch at which this node last counted a shard's stored series
    /// ([`SeriesTracker::mark_seeded`]); a primary seeds again when it holds a newer epoch.
    pub fn seeded_epoch(&self, shard: u32) -> Option<u64> {
        self.seeded.get(&shard).copied()
    }

    /// Records that the shard's stored series were counted at `epoch`.
    pub fn mark_seeded(&mut self, shard: u32, epoch: u64) {
        let entry = self.seeded.entry(shard).or_insert(epoch);
        *entry = (*entry).max(epoch);
    }

    /// Drops idle series and rolls the runaway window. Called by the maintenance loop.
    pub fn maintain(&mut self, now_ms: i64) {
        let idle_before = now_ms.saturating_sub(self.limits.series_idle_ms_max);
        let window_over = now_ms.saturating_sub(self.window_start_ms) >= self.limits.runaway_window_ms;
        if window_over {
            self.window_start_ms = now_ms;
        }
        for state in self.tenants.values_mut() {
            let idle: Vec<SeriesAccountKey> = state.series.iter().filter(|(_, active)| active.last_write_ms < idle_before).map(|(key, _)| *key).collect();
            for key in idle {
                state.remove(key);
            }
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

    /// Active series of a tenant counted in one shard, and of one metric there.
    pub fn active_series_in_shard(&self, tenant: &str, metric: Option<&str>, shard: u32) -> u64 {
        let Some(state) = self.tenants.get(tenant) else { return 0 };
        match metric {
            Some(metric) => match state.per_metric.get_key_value(metric) {
                Some((name, _)) => state.per_metric_shard.get(&(name.clone(), shard)).copied().unwrap_or(0),
                None => 0,
            },
            None => state.per_shard.get(&shard).copied().unwrap_or(0),
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
    const WHOLE: Placement = Placement { shard: 0, shared_over: None };

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
            assert_eq!(tracker.admit("t", key, "a", WHOLE, 0, SERIES), Admission::New);
        }
        assert_eq!(tracker.admit("t", 3, "a", WHOLE, 0, SERIES), Admission::MetricLimit { metric: "a".into(), limit: 3, share: None });
        assert_eq!(tracker.admit("t", 0, "a", WHOLE, 1, SERIES), Admission::Existing);
        assert_eq!(tracker.admit("t", 10, "b", WHOLE, 1, SERIES), Admission::New);
        assert_eq!(tracker.admit("t", 11, "b", WHOLE, 1, SERIES), Admission::New);
        assert_eq!(tracker.admit("t", 12, "c", WHOLE, 1, SERIES), Admission::TenantLimit { limit: 5, share: None });
        assert_eq!(tracker.active_series("t", None), 5);
        assert_eq!(tracker.active_series("t", Some("a")), 3);
        tracker.forget("t", 11);
        assert_eq!(tracker.admit("t", 12, "c", WHOLE, 1, SERIES), Admission::New);
        // Series 1 and 2 idle past 10 s; 0 was written at 9 000.
        assert_eq!(tracker.admit("t", 0, "a", WHOLE, 9_000, SERIES), Admission::Existing);
        tracker.maintain(10_500);
        assert_eq!(tracker.active_series("t", Some("a")), 1);
        assert_eq!(tracker.admit("t", 3, "a", WHOLE, 10_500, SERIES), Admission::New);
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
            tracker.seed("t", key, "a", 0, 0);
        }
        tracker.seed("t", 0, "a", 0, 0);
        assert_eq!(tracker.active_series("t", Some("a")), 4, "over the limit of 3, as the head holds them");
        assert_eq!(tracker.admit("t", 9, "a", WHOLE, 1, SERIES), Admission::MetricLimit { metric: "a".into(), limit: 3, share: None });
        assert_eq!(tracker.admit("t", 2, "a", WHOLE, 1, SERIES), Admission::Existing);
        assert_eq!(tracker.admit("t", 10, "b", WHOLE, 1, SERIES), Admission::New);
        assert_eq!(tracker.admit("t", 11, "b", WHOLE, 1, SERIES), Admission::TenantLimit { limit: 5, share: None });
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
            tracker.admit("t", 100, "bomb", WHOLE, 0, SERIES);
        }
        assert!(tracker.runaway("t").is_empty());
        for key in 0..20u128 {
            tracker.admit("t", key << 64, "bomb", WHOLE, 0, SERIES);
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
        assert_eq!(tracker.admit("t", 1, "a", WHOLE, 0, two), Admission::New);
        assert_eq!(tracker.admit("t", 2, "a", WHOLE, 0, two), Admission::New);
        assert_eq!(tracker.admit("t", 3, "a", WHOLE, 0, two), Admission::MetricLimit { metric: "a".into(), limit: 2, share: None });
        let three = SeriesLimits { per_metric_max: 3, ..two };
        assert_eq!(tracker.admit("t", 3, "a", WHOLE, 0, three), Admission::New);
        let one = SeriesLimits { per_metric_max: 1, ..two };
        assert_eq!(tracker.admit("t", 4, "a", WHOLE, 0, one), Admission::MetricLimit { metric: "a".into(), limit: 1, share: None });
        assert_eq!(tracker.admit("t", 2, "a", WHOLE, 0, one), Admission::Existing);
        assert_eq!(tracker.active_series("t", Some("a")), 3);
    }

    // Goal: the share rule as documented, rounding up, for the limits people configure.
    #[test]
    fn limit_shares() {
        // 100,000 / 16 = 6,250: 10 % (625) beats 4 × √6250 (316.2). 100 / 16 = 6.25: 4 × 2.5
        // = 10 → 16.25 → 17. 100 / 3: 33.3 + 23.09 → 57. 4 / 2 = 2: 2 + 5.66 → 8.
        for (limit, shards, share) in [(100_000u64, 16u32, 6_875u64), (1_000_000, 16, 68_750), (100, 16, 17), (100, 3, 57), (4, 2, 8), (1, 16, 2), (0, 4, 0), (u64::MAX, 1, u64::MAX)] {
            assert_eq!(limit_share(limit, shards), share, "limit {limit} over {shards} shards");
        }
    }

    // Goal: in a cluster each shard admits new series up to its share of each limit, counted
    // per shard: a full shard refuses (naming its share) while other shards of the same
    // metric still admit; forgetting and idling give the room back in that shard only.
    #[test]
    fn shards_admit_up_to_their_share() {
        let mut tracker = SeriesTracker::new(limits(), 0);
        let limits = SeriesLimits { per_metric_max: 1, per_tenant_max: 5 };
        let on = |shard| Placement { shard, shared_over: Some(5) };
        // Metric share: 0.2 + 4 × √0.2 = 1.99 → 2 per shard; tenant share: 1 + 4 → 5.
        let (metric_share, tenant_share) = (ShardShare { shard: 0, shards: 5, share: 2 }, ShardShare { shard: 0, shards: 5, share: 5 });
        assert_eq!((limit_share(1, 5), limit_share(5, 5)), (2, 5));
        for key in 0..2u128 {
            assert_eq!(tracker.admit("t", key, "a", on(0), 0, limits), Admission::New);
        }
        assert_eq!(tracker.admit("t", 3, "a", on(0), 0, limits), Admission::MetricLimit { metric: "a".into(), limit: 1, share: Some(metric_share) });
        assert_eq!(tracker.admit("t", 0, "a", on(0), 0, limits), Admission::Existing);
        assert_eq!(tracker.admit("t", 4, "a", on(1), 0, limits), Admission::New, "shard 1 has its own share");
        assert_eq!(tracker.active_series("t", Some("a")), 3, "over the whole limit of 1: shares add up to more");
        assert_eq!((tracker.active_series_in_shard("t", Some("a"), 0), tracker.active_series_in_shard("t", Some("a"), 1), tracker.active_series_in_shard("t", None, 1)), (2, 1, 1));
        for (key, metric) in [(10u128, "b"), (11, "b"), (12, "c")] {
            assert_eq!(tracker.admit("t", key, metric, on(0), 0, limits), Admission::New);
        }
        assert_eq!(tracker.admit("t", 13, "d", on(0), 0, limits), Admission::TenantLimit { limit: 5, share: Some(tenant_share) });
        tracker.forget("t", 10);
        assert_eq!(tracker.admit("t", 13, "d", on(0), 0, limits), Admission::New);
        // Seeded series count in their shard too (a promoted primary counts what it stores).
        tracker.seed("t", 20, "a", 1, 0);
        assert_eq!(tracker.admit("t", 22, "a", on(1), 0, limits), Admission::MetricLimit { metric: "a".into(), limit: 1, share: Some(ShardShare { shard: 1, ..metric_share }) });
        // Only series 0 is written again; the rest idle out of their shards' counts.
        assert_eq!(tracker.admit("t", 0, "a", on(0), 9_000, limits), Admission::Existing);
        tracker.maintain(10_500);
        assert_eq!(tracker.active_series("t", None), 1);
        assert_eq!(tracker.admit("t", 22, "a", on(1), 10_500, limits), Admission::New);
        assert_eq!(tracker.admit("t", 23, "a", on(0), 10_500, limits), Admission::New);
        tracker.mark_seeded(1, 7);
        tracker.mark_seeded(1, 5);
        assert_eq!((tracker.seeded_epoch(1), tracker.seeded_epoch(0)), (Some(7), None), "the newest epoch counted stays");
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
