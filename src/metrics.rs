//! Self-monitoring: the node's own metrics, served at `/metrics` in Prometheus text format.
//!
//! Label values that come from clients (tenant, metric) are bounded: at most
//! `CLIENT_LABEL_SETS_MAX` distinct sets per family; further ones are folded into
//! `metric="__other__"`, so a cardinality bomb cannot inflate the node's own metrics.

use std::collections::BTreeSet;
use std::sync::Mutex;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use sextant_storage::engine::EngineStatus;
use sextant_storage::wal::WalStats;

/// Distinct client-derived label sets per family.
pub const CLIENT_LABEL_SETS_MAX: usize = 1_000;

#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
pub struct RequestLabels {
    pub handler: String,
    pub code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
pub struct TenantMetricLabels {
    pub tenant: String,
    pub metric: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
pub struct QueryOutcomeLabels {
    pub class: String,
    /// `success` or the Prometheus errorType (`bad_data`, `execution`, `timeout`, `canceled`,
    /// `internal`, `unavailable` — shed queries are `unavailable`).
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
pub struct ClassLabels {
    pub class: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
pub struct ShardLabels {
    pub shard: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
pub struct DestinationLabels {
    /// The destination node's id.
    pub node: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
pub struct DestinationErrorLabels {
    pub node: String,
    /// `backpressure`, `unreachable`, `epoch`, `refused` (the target's error), `timeout`,
    /// `replication_lag` (the primary refused for its secondary's lag).
    pub reason: String,
}

fn query_duration_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

/// Every metric the node exports.
pub struct Metrics {
    registry: Registry,
    pub samples_received: Counter,
    pub samples_stored: Counter,
    pub samples_duplicate: Counter,
    pub samples_out_of_order: Counter,
    pub samples_refused: Family<ReasonLabels, Counter>,
    pub exemplars_ignored: Counter,
    pub metadata_stored: Counter,
    pub metadata_dropped: Counter,
    pub requests: Family<RequestLabels, Counter>,
    pub write_duration_seconds: Histogram,
    pub cardinality_refusals: Family<TenantMetricLabels, Counter>,
    pub runaway_metrics: Family<TenantMetricLabels, Gauge>,
    pub head_series: Gauge,
    pub memory_bytes: Gauge,
    pub memory_bytes_max: Gauge,
    pub blocks: Gauge,
    pub ready: Gauge,
    /// 1 when most recent clients are ahead of this node's clock past the bound (clockcheck.rs).
    pub clock_behind_suspected: Gauge,
    /// How far behind its clients the node's clock seems (median of the agreeing ones), or 0.
    pub clock_behind_estimate_seconds: Gauge,
    pub wal_poisoned: Gauge,
    pub wal_fsyncs: Counter,
    pub wal_bytes_written: Counter,
    pub wal_records_no_space: Counter,
    pub active_series_tracked: Gauge,
    pub queries: Family<QueryOutcomeLabels, Counter>,
    pub query_queue_depth: Gauge,
    pub queries_running: Gauge,
    /// The metadata group's applied index the limits in force were built from (0: flags only).
    pub metadata_applied_index: Gauge,
    /// 1 when the limits in force are the cluster's, 0 when they are this node's flags.
    pub limits_from_cluster: Gauge,
    pub query_duration_seconds: Family<ClassLabels, Histogram, fn() -> Histogram>,
    pub query_queue_wait_seconds: Histogram,
    /// Forwarded writes (route.rs), per destination node: samples and encoded bytes sent and
    /// acknowledged, and failed batches by reason.
    pub forwarded_samples: Family<DestinationLabels, Counter>,
    pub forwarded_bytes: Family<DestinationLabels, Counter>,
    pub forward_errors: Family<DestinationErrorLabels, Counter>,
    /// Forwarded writes this node applied for other nodes (the Data service's Write).
    pub forwarded_samples_applied: Counter,
    /// Query fan-out: Select calls to other nodes, by destination, and shards left unanswered.
    pub fanout_selects: Family<DestinationLabels, Counter>,
    pub fanout_shards_unavailable: Counter,
    /// Replication (replicate.rs), per shard this node is primary of: the lag in ms, WAL
    /// records and WAL payload bytes the secondary has not acknowledged, 1 when writes were
    /// accepted past the lag bound (`unprotected`), 1 for shards without a secondary.
    pub replication_lag_ms: Family<ShardLabels, Gauge>,
    pub replication_lag_records: Family<ShardLabels, Gauge>,
    pub replication_lag_bytes: Family<ShardLabels, Gauge>,
    pub replication_lag_samples: Family<ShardLabels, Gauge>,
    pub replication_unprotected: Family<ShardLabels, Gauge>,
    pub replication_unreplicated: Family<ShardLabels, Gauge>,
    pub replication_errors: Counter,
    pub replication_syncs: Counter,
    pub replicated_records_sent: Counter,
    pub replicated_records_applied: Counter,
    /// Leases (lease.rs): renewals by outcome, writes refused for want of a lease, per-shard
    /// "this node holds the lease" gauge; on the leader: promotions proposed and applied, and
    /// shards whose replicas are both silent (nothing to promote to).
    pub lease_renewals: Family<OutcomeLabels, Counter>,
    pub lease_write_refusals: Counter,
    pub lease_held: Family<ShardLabels, Gauge>,
    pub promotions: Counter,
    pub shards_both_replicas_silent: Gauge,
    /// Last engine counters seen, to turn them into counter increments.
    last_wal: Mutex<WalStats>,
    refusal_label_sets: Mutex<BTreeSet<TenantMetricLabels>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("sextant");
        let m = Metrics {
            samples_received: Counter::default(),
            samples_stored: Counter::default(),
            samples_duplicate: Counter::default(),
            samples_out_of_order: Counter::default(),
            samples_refused: Family::default(),
            exemplars_ignored: Counter::default(),
            metadata_stored: Counter::default(),
            metadata_dropped: Counter::default(),
            requests: Family::default(),
            write_duration_seconds: Histogram::new(exponential_buckets(0.0005, 2.0, 16)),
            cardinality_refusals: Family::default(),
            runaway_metrics: Family::default(),
            head_series: Gauge::default(),
            memory_bytes: Gauge::default(),
            memory_bytes_max: Gauge::default(),
            blocks: Gauge::default(),
            ready: Gauge::default(),
            clock_behind_suspected: Gauge::default(),
            clock_behind_estimate_seconds: Gauge::default(),
            wal_poisoned: Gauge::default(),
            wal_fsyncs: Counter::default(),
            wal_bytes_written: Counter::default(),
            wal_records_no_space: Counter::default(),
            active_series_tracked: Gauge::default(),
            queries: Family::default(),
            query_queue_depth: Gauge::default(),
            queries_running: Gauge::default(),
            metadata_applied_index: Gauge::default(),
            limits_from_cluster: Gauge::default(),
            query_duration_seconds: Family::new_with_constructor(query_duration_histogram as fn() -> Histogram),
            query_queue_wait_seconds: Histogram::new(exponential_buckets(0.0005, 2.0, 16)),
            forwarded_samples: Family::default(),
            forwarded_bytes: Family::default(),
            forward_errors: Family::default(),
            forwarded_samples_applied: Counter::default(),
            fanout_selects: Family::default(),
            fanout_shards_unavailable: Counter::default(),
            replication_lag_ms: Family::default(),
            replication_lag_records: Family::default(),
            replication_lag_bytes: Family::default(),
            replication_lag_samples: Family::default(),
            replication_unprotected: Family::default(),
            replication_unreplicated: Family::default(),
            replication_errors: Counter::default(),
            replication_syncs: Counter::default(),
            replicated_records_sent: Counter::default(),
            replicated_records_applied: Counter::default(),
            lease_renewals: Family::default(),
            lease_write_refusals: Counter::default(),
            lease_held: Family::default(),
            promotions: Counter::default(),
            shards_both_replicas_silent: Gauge::default(),
            last_wal: Mutex::new(WalStats::default()),
            refusal_label_sets: Mutex::new(BTreeSet::new()),
            registry: Registry::default(),
        };
        registry.register("remote_write_samples_received", "Samples received in remote-write requests (decoded bodies only)", m.samples_received.clone());
        registry.register("remote_write_samples_stored", "Samples newly stored", m.samples_stored.clone());
        registry.register("remote_write_samples_duplicate", "Samples already stored with the same value (acknowledged, not stored again)", m.samples_duplicate.clone());
        registry.register("remote_write_samples_out_of_order", "Samples stored although older than their series' newest sample", m.samples_out_of_order.clone());
        registry.register("remote_write_samples_refused", "Samples refused, by reason", m.samples_refused.clone());
        registry.register("remote_write_exemplars_ignored", "Exemplars received and not stored (exemplar storage is not implemented)", m.exemplars_ignored.clone());
        registry.register("remote_write_metadata_stored", "Metric metadata entries stored", m.metadata_stored.clone());
        registry.register("remote_write_metadata_dropped", "Metric metadata entries dropped because the tenant's metadata table is full", m.metadata_dropped.clone());
        registry.register("http_requests", "HTTP requests, by handler and status code", m.requests.clone());
        registry.register("remote_write_duration_seconds", "Time to handle a remote-write request, from body received to response", m.write_duration_seconds.clone());
        registry.register("cardinality_refusals", "Samples refused by a series limit, by tenant and metric", m.cardinality_refusals.clone());
        registry.register("runaway_metric", "1 for each metric flagged as runaway by the new-series detector", m.runaway_metrics.clone());
        registry.register("head_series", "Series in the heads of all shards", m.head_series.clone());
        registry.register("memory_bytes", "Memory used by series, chunks and postings", m.memory_bytes.clone());
        registry.register("memory_bytes_max", "The node's memory budget for series, chunks and postings", m.memory_bytes_max.clone());
        registry.register("blocks", "Blocks on disk", m.blocks.clone());
        registry.register("ready", "1 when the node accepts writes", m.ready.clone());
        registry.register("clock_behind_suspected", "1 when most clients heard from in the last 5 minutes sent samples further ahead of this node's clock than future_skew_ms_max (the node then reports itself not ready)", m.clock_behind_suspected.clone());
        registry.register("clock_behind_estimate_seconds", "How far this node's wall clock seems behind its clients' (median of the clients ahead past the bound); 0 when not suspected", m.clock_behind_estimate_seconds.clone());
        registry.register("wal_poisoned", "1 after an fsync error poisoned the WAL (writes refused until restart)", m.wal_poisoned.clone());
        registry.register("wal_fsyncs", "WAL file fsyncs", m.wal_fsyncs.clone());
        registry.register("wal_bytes_written", "Bytes written to WAL segments", m.wal_bytes_written.clone());
        registry.register("wal_records_no_space", "WAL records refused because the disk was full", m.wal_records_no_space.clone());
        registry.register("active_series_tracked", "Series counted against the series limits, all tenants", m.active_series_tracked.clone());
        registry.register("queries", "PromQL queries (query, query_range), by priority class and outcome", m.queries.clone());
        registry.register("query_queue_depth", "Queries waiting for a query slot", m.query_queue_depth.clone());
        registry.register("queries_running", "Queries holding a query slot", m.queries_running.clone());
        registry.register("metadata_applied_index", "Applied index of the metadata group that the limits in force come from (0: this node's flags only)", m.metadata_applied_index.clone());
        registry.register("limits_from_cluster", "1 when the tenant limits in force are the cluster's, 0 when they are this node's flags", m.limits_from_cluster.clone());
        registry.register("query_duration_seconds", "Time from a query's arrival to its answer (queueing included), by priority class", m.query_duration_seconds.clone());
        registry.register("query_queue_wait_seconds", "Time admitted queries waited for a query slot", m.query_queue_wait_seconds.clone());
        registry.register("forward_samples", "Samples forwarded to their shard's primary on another node and acknowledged there, by destination node", m.forwarded_samples.clone());
        registry.register("forward_bytes", "Encoded bytes of forwarded write batches acknowledged, by destination node", m.forwarded_bytes.clone());
        registry.register("forward_errors", "Forwarded write batches that failed, by destination node and reason", m.forward_errors.clone());
        registry.register("forward_samples_applied", "Samples of other nodes' forwarded writes applied here (stored or duplicate)", m.forwarded_samples_applied.clone());
        registry.register("fanout_selects", "Select calls a query sent to other nodes, by destination node", m.fanout_selects.clone());
        registry.register("fanout_shards_unavailable", "Shards a query could not read from any replica (answered with a warning)", m.fanout_shards_unavailable.clone());
        registry.register("replication_lag_ms", "Age of the oldest WAL record the shard's secondary has not acknowledged (0 when caught up), per shard this node is primary of", m.replication_lag_ms.clone());
        registry.register("replication_lag_records", "WAL records the shard's secondary has not acknowledged", m.replication_lag_records.clone());
        registry.register("replication_lag_bytes", "WAL payload bytes retained for the shard's secondary (above its acknowledged position)", m.replication_lag_bytes.clone());
        registry.register(
            "replication_lag_samples",
            "Samples in the WAL records the shard's secondary has not acknowledged (records logged before the stream last started are not counted)",
            m.replication_lag_samples.clone(),
        );
        registry.register("replication_unprotected", "1 when the shard accepted writes past --replication-lag-max (policy unprotected) and its secondary has not caught up since", m.replication_unprotected.clone());
        registry.register("replication_unreplicated", "1 for each shard this node is primary of that has no secondary", m.replication_unreplicated.clone());
        registry.register("replication_errors", "Replication stream rounds that failed and were retried", m.replication_errors.clone());
        registry.register("replication_syncs", "Catch-up syncs (two-way anti-entropy) completed as primary", m.replication_syncs.clone());
        registry.register("replication_records_sent", "WAL records acknowledged by secondaries", m.replicated_records_sent.clone());
        registry.register("replication_records_applied", "WAL records of primaries applied here as secondary", m.replicated_records_applied.clone());
        registry.register("lease_renewals", "Lease renewals this node asked of the metadata leader, by outcome (ok, failed)", m.lease_renewals.clone());
        registry.register("lease_write_refusals", "Shard writes this node refused as primary because it held no lease for the shard's epoch", m.lease_write_refusals.clone());
        registry.register("lease_held", "1 while this node holds an unexpired lease for the shard, else 0", m.lease_held.clone());
        registry.register("promotions", "Shard promotions this node proposed as metadata leader that applied", m.promotions.clone());
        registry.register("shards_both_replicas_silent", "Shards whose primary and secondary have both stopped renewing (the leader cannot promote; metadata leader only)", m.shards_both_replicas_silent.clone());
        Metrics { registry, ..m }
    }

    pub fn refused(&self, reason: &str, samples: u64) {
        if samples > 0 {
            self.samples_refused.get_or_create(&ReasonLabels { reason: reason.to_string() }).inc_by(samples);
        }
    }

    /// Counts a finished query.
    pub fn query_finished(&self, class: &str, outcome: &str, seconds: f64) {
        self.queries.get_or_create(&QueryOutcomeLabels { class: class.to_string(), outcome: outcome.to_string() }).inc();
        self.query_duration_seconds.get_or_create(&ClassLabels { class: class.to_string() }).observe(seconds);
    }

    pub fn request(&self, handler: &str, code: u16) {
        self.requests.get_or_create(&RequestLabels { handler: handler.to_string(), code: code.to_string() }).inc();
    }

    /// Counts a cardinality refusal, folding label sets past the cap into `__other__`.
    pub fn cardinality_refused(&self, tenant: &str, metric: &str, samples: u64) {
        let mut labels = TenantMetricLabels { tenant: tenant.to_string(), metric: metric.to_string() };
        {
            let mut seen = self.refusal_label_sets.lock().expect("metrics lock");
            if !seen.contains(&labels) {
                if seen.len() < CLIENT_LABEL_SETS_MAX {
                    seen.insert(labels.clone());
                } else {
                    labels = TenantMetricLabels { tenant: "__other__".into(), metric: "__other__".into() };
                }
            }
        }
        self.cardinality_refusals.get_or_create(&labels).inc_by(samples);
    }

    /// Refreshes the gauges and counters that mirror the engine.
    pub fn observe_engine(&self, status: &EngineStatus, wal: &WalStats) {
        self.head_series.set(status.head_series as i64);
        self.memory_bytes.set(status.memory_bytes as i64);
        self.memory_bytes_max.set(status.memory_bytes_max as i64);
        self.blocks.set(status.blocks as i64);
        self.wal_poisoned.set(i64::from(status.poisoned));
        let mut last = self.last_wal.lock().expect("metrics lock");
        self.wal_fsyncs.inc_by(wal.fsyncs.saturating_sub(last.fsyncs));
        self.wal_bytes_written.inc_by(wal.bytes_written.saturating_sub(last.bytes_written));
        self.wal_records_no_space.inc_by(wal.records_no_space.saturating_sub(last.records_no_space));
        *last = wal.clone();
    }

    /// Replaces the runaway gauge's series.
    pub fn set_runaway(&self, runaway: &[(String, String)]) {
        self.runaway_metrics.clear();
        for (tenant, metric) in runaway.iter().take(CLIENT_LABEL_SETS_MAX) {
            self.runaway_metrics.get_or_create(&TenantMetricLabels { tenant: tenant.clone(), metric: metric.clone() }).set(1);
        }
    }

    /// The text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}
