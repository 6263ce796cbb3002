//! The node: engine lifecycle, the ingest path (validation, limits, routing, storage) and the
//! per-tenant metadata table. HTTP lives in `http`; this module is transport-free so the
//! simulator and tests can drive it directly.
//!
//! # The ingest path, and what each outcome means to a sender
//!
//! 1. The engine must be open and its WAL healthy, else 503 (opening/replaying, shutting down,
//!    poisoned WAL).
//! 2. Metadata entries are stored (latest wins) in a bounded per-tenant table.
//! 3. The tenant's token bucket must hold the request's samples, else 429 and nothing is stored.
//! 4. Each series is validated (duplicate or empty label names, naming rules, label limits,
//!    blocked label names) and admitted by the series tracker (per-metric and per-tenant
//!    active-series limits). Refused series' samples are refused for good.
//! 5. Admitted series are grouped by shard (`shard_for`; the shard count is the cluster shard
//!    map's once this node has one, else the engine's) and stored, shards concurrently, on the
//!    shard's primary per this node's applied shard map: this node's engine (which judges
//!    every sample's time by this node's clock, BRIEF.md's acceptance rules) or, for another
//!    primary, judged here and forwarded over gRPC (`route`, docs/design/replication.md).
//!    No map, or a shard without a primary → this node's engine.
//! 6. The answer: any engine error, unreachable primary, epoch disagreement or memory-budget
//!    refusal → 503 (retryable; a retry of stored samples is a duplicate, which succeeds); a
//!    destination's forwarding bound full (and nothing worse) → 429; otherwise any refusal → 400 naming how
//!    many samples were refused and the first reasons; otherwise 204. A 400 therefore only
//!    ever follows a request whose every other sample was stored.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock};

use sextant_core::clock::Clock;
use sextant_core::labels::{Label, Labels};
use sextant_core::sample::Sample;
use sextant_storage::engine::{AppendReport, Engine, EngineError, WriteSeries};
use sextant_storage::wal::WalError;

use crate::auth::Tokens;
use crate::config::ServeConfig;
use crate::limits::{series_account_key, SeriesLimits, SeriesTracker, TokenBucket, TrackerLimits};
use crate::metrics::Metrics;
use crate::query_scheduler::{QueryScheduler, SchedulerLimits};
use crate::remote_write::{MetricMetadata, MetricType, WriteRequest};
use crate::route::{Destination, ForwardContext, ShardWriteError};
use crate::shard::shard_for;
use crate::tenant_limits::{EffectiveLimits, LimitsSource, LimitsView};

/// Reasons quoted in a 400 body; the rest are counted.
pub const REASONS_SHOWN_MAX: usize = 5;
/// Metric families in one tenant's metadata table.
pub const METADATA_PER_TENANT_MAX: usize = 10_000;
/// Bytes kept of a metadata help text.
pub const METADATA_HELP_BYTES_MAX: usize = 4096;
/// Characters of a series quoted in a reason.
const SERIES_QUOTE_CHARS_MAX: usize = 200;

/// Where the engine is in its life.
#[derive(Debug)]
pub enum EngineSlot {
    /// Opening: loading blocks and replaying the WAL. Writes answer 503.
    Opening,
    Ready(Engine),
    /// Opening failed; the node stays up to say why on /-/ready.
    Failed(String),
    /// Shutting down; writes answer 503.
    Closing,
}

/// Where the node's member of the metadata group is (see `cluster`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MetadataStatus {
    /// No metadata group: the node runs on its flags alone (the simulator, most tests).
    Standalone,
    /// `sextant serve` is starting the raft member; the node is not ready.
    Starting,
    /// The raft member runs (it need not be the leader).
    Started,
    /// The raft member failed to start; the node stays up to say why on /-/ready.
    Failed(String),
    /// The raft member ran and then stopped on a fatal error (a failed write or fsync of its
    /// log or vote): openraft does not restart it. The node keeps serving what it safely can
    /// (its leases lapse, so it acknowledges nothing as a primary) and says on /-/ready that
    /// it needs a restart, which reopens the log from disk.
    Stopped(String),
}

/// Metadata of one metric family, as Prometheus's `/api/v1/metadata` serves it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct StoredMetadata {
    #[serde(rename = "type")]
    pub metric_type: String,
    pub help: String,
    pub unit: String,
}

/// What a remote-write request came to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IngestOutcome {
    pub status: u16,
    /// Empty for 204; otherwise a sentence for the sender's log.
    pub message: String,
    pub samples_stored: u64,
    pub samples_refused: u64,
}

impl IngestOutcome {
    fn new(status: u16, message: impl Into<String>) -> Self {
        IngestOutcome { status, message: message.into(), samples_stored: 0, samples_refused: 0 }
    }
}

/// Refused samples and the first few reasons.
#[derive(Default)]
struct Refusals {
    samples: u64,
    reasons: Vec<String>,
}

impl Refusals {
    fn add(&mut self, samples: u64, reason: impl FnOnce() -> String) {
        self.samples += samples;
        if self.reasons.len() < REASONS_SHOWN_MAX {
            self.reasons.push(reason());
        }
    }
}

/// How often [`Node::cut_wanted`] looks whether storage has opened.
const ENGINE_POLL_MS: u64 = 100;

fn quote_series(labels: &[crate::remote_write::Label]) -> String {
    quote_pairs(labels.iter().map(|l| (l.name.as_str(), l.value.as_str())))
}

/// `name{a="b",…}` of a series, cut to about [`SERIES_QUOTE_CHARS_MAX`] characters.
fn quote_pairs<'a>(labels: impl Iterator<Item = (&'a str, &'a str)> + Clone) -> String {
    let name = labels.clone().find(|(n, _)| *n == "__name__").map(|(_, v)| v).unwrap_or("");
    let mut out: String = name.chars().take(SERIES_QUOTE_CHARS_MAX).collect();
    out.push('{');
    for (label_name, label_value) in labels.filter(|(n, _)| *n != "__name__") {
        if out.chars().count() > SERIES_QUOTE_CHARS_MAX {
            out.push('…');
            break;
        }
        let value: String = label_value.chars().take(64).collect();
        out.push_str(&format!("{}={:?},", label_name.chars().take(64).collect::<String>(), value));
    }
    if out.ends_with(',') {
        out.pop();
    }
    out.push('}');
    out
}

/// True when a failed write may succeed on retry; a poisoned WAL or a closing engine is 503
/// too (the sender retries against a restarted node), only configuration bugs are 500.
pub(crate) fn engine_error_status(error: &EngineError) -> u16 {
    match error {
        EngineError::UnknownShard { .. } | EngineError::WriteTooLarge { .. } | EngineError::Config { .. } => 500,
        EngineError::Wal(WalError::Config { .. }) => 500,
        _ => 503,
    }
}

/// Called with (shard, epoch) each time this node, as the shard's primary, passes the last
/// lease check before acknowledging a write ([`Node::lease_for_ack`]). The simulator's oracle 8
/// (no two primaries acknowledge one shard over overlapping time) records these; `sextant
/// serve` sets none.
pub type AckObserver = Arc<dyn Fn(u32, u64) + Send + Sync>;

/// The node.
pub struct Node {
    config: ServeConfig,
    clock: Arc<dyn Clock>,
    slot: Mutex<EngineSlot>,
    tracker: Mutex<SeriesTracker>,
    /// One shard seeding at a time ([`Node::seed_primary_shards`]): after a promotion every
    /// concurrent write would otherwise walk the stored series at once.
    seeding: tokio::sync::Mutex<()>,
    buckets: Mutex<BTreeMap<String, TokenBucket>>,
    metadata: Mutex<BTreeMap<String, BTreeMap<String, StoredMetadata>>>,
    tokens: Option<Tokens>,
    query_scheduler: Arc<QueryScheduler>,
    /// The limits in force; replaced whole when the metadata group's applied state changes.
    limits: RwLock<Arc<LimitsView>>,
    metadata_status: Mutex<MetadataStatus>,
    /// The cluster data path: shard map view and forwarding (route.rs).
    router: crate::route::Router,
    /// RF=2 replication: stream state, lag and its bound (replicate.rs).
    replication: crate::replicate::Replication,
    /// This node's shard leases (every write it acknowledges as a primary needs one).
    lease: crate::lease::LeaseHolder,
    /// The grant table and promotion decisions, used while this node leads the metadata group.
    lease_authority: crate::lease::LeaseAuthority,
    ack_observer: std::sync::OnceLock<AckObserver>,
    /// Whether this node's wall clock runs behind its clients' (clockcheck.rs).
    clock_check: crate::clockcheck::ClockCheck,
    pub metrics: Metrics,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node").field("http_listen", &self.config.http_listen).finish()
    }
}

impl Node {
    /// A node whose engine is still opening; call [`Node::set_engine`] when it is.
    pub fn new(config: ServeConfig, clock: Arc<dyn Clock>, tokens: Option<Tokens>) -> Arc<Node> {
        let limits = &config.limits;
        let tracker_limits = TrackerLimits {
            tenants_max: limits.tenants_max,
            runaway_new_series_max: limits.runaway_new_series_max,
            runaway_window_ms: limits.runaway_window_ms,
            series_idle_ms_max: limits.series_idle_ms_max,
        };
        let now_ms = clock.now_wall_ms();
        let metrics = Metrics::new();
        let query = &config.query;
        let scheduler_limits = SchedulerLimits {
            concurrency_max: query.concurrency_max.max(1),
            alert_reserved: query.alert_reserved.min(query.concurrency_max.max(1) - 1),
            queue_max: query.queue_max,
            queue_wait_ms_max: query.queue_wait_ms_max,
        };
        let query_scheduler = QueryScheduler::new(scheduler_limits, clock.clone(), metrics.query_queue_depth.clone(), metrics.queries_running.clone());
        Arc::new(Node {
            tracker: Mutex::new(SeriesTracker::new(tracker_limits, now_ms)),
            seeding: tokio::sync::Mutex::new(()),
            slot: Mutex::new(EngineSlot::Opening),
            buckets: Mutex::new(BTreeMap::new()),
            metadata: Mutex::new(BTreeMap::new()),
            query_scheduler,
            limits: RwLock::new(Arc::new(LimitsView::from_flags(&config))),
            metadata_status: Mutex::new(MetadataStatus::Standalone),
            router: crate::route::Router::new(config.cluster.node_id, config.forward_inflight_bytes_max),
            replication: crate::replicate::Replication::new(clock.clone(), config.replication_lag_ms_max, config.replication_lag_policy),
            lease: crate::lease::LeaseHolder::default(),
            lease_authority: crate::lease::LeaseAuthority::default(),
            ack_observer: std::sync::OnceLock::new(),
            clock_check: crate::clockcheck::ClockCheck::new(),
            metrics,
            config,
            clock,
            tokens,
        })
    }

    pub fn config(&self) -> &ServeConfig {
        &self.config
    }

    pub fn tokens(&self) -> Option<&Tokens> {
        self.tokens.as_ref()
    }

    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// The cluster data path: this node's view of the shard map, and forwarding.
    pub fn router(&self) -> &crate::route::Router {
        &self.router
    }

    /// RF=2 replication: per-shard stream state, lag, the lag bound (replicate.rs).
    pub fn replication(&self) -> &crate::replicate::Replication {
        &self.replication
    }

    /// This node's shard leases.
    pub fn lease(&self) -> &crate::lease::LeaseHolder {
        &self.lease
    }

    /// The leader-side lease bookkeeping (acts only while this node leads).
    pub fn lease_authority(&self) -> &crate::lease::LeaseAuthority {
        &self.lease_authority
    }

    /// May this node acknowledge a write for `shard` at `epoch` now? Counts refusals.
    pub fn check_lease(&self, shard: u32, epoch: u64) -> Result<(), crate::lease::LeaseRefusal> {
        let result = self.lease.check(shard, epoch, self.clock.now_monotonic_ns());
        if result.is_err() {
            self.metrics.lease_write_refusals.inc();
        }
        result
    }

    /// Sets the [`AckObserver`] (once; later calls are ignored).
    pub fn set_ack_observer(&self, observer: AckObserver) {
        let _ = self.ack_observer.set(observer);
    }

    /// The last check before this node acknowledges a write of `shard` as its primary at
    /// `epoch` (the write is stored; the lease may have ended while the WAL synced):
    /// [`Node::check_lease`], and on success the [`AckObserver`] hears of it.
    pub fn lease_for_ack(&self, shard: u32, epoch: u64) -> Result<(), crate::lease::LeaseRefusal> {
        let result = self.check_lease(shard, epoch);
        if result.is_ok() {
            if let Some(observe) = self.ack_observer.get() {
                observe(shard, epoch);
            }
        }
        result
    }

    /// Like [`Node::check_lease`], but a refusal first waits (at most one renewal interval,
    /// asking for an early renewal) for the next grant and checks again: a node that just
    /// became a shard's primary, or just joined, has its grant a moment later, and a write
    /// arriving in between should not fail for that.
    pub async fn await_lease(&self, shard: u32, epoch: u64) -> Result<(), crate::lease::LeaseRefusal> {
        let mut grants = self.lease.subscribe();
        let Err(refusal) = self.lease.check(shard, epoch, self.clock.now_monotonic_ns()) else {
            return Ok(());
        };
        self.lease.renew_now.notify_one();
        let wait = std::time::Duration::from_millis(self.lease.renew_ms());
        let recheck = async {
            loop {
                if grants.changed().await.is_err() {
                    return Err(refusal.clone());
                }
                if self.lease.check(shard, epoch, self.clock.now_monotonic_ns()).is_ok() {
                    return Ok(());
                }
            }
        };
        match tokio::time::timeout(wait, recheck).await {
            Ok(Ok(())) => Ok(()),
            _ => self.check_lease(shard, epoch),
        }
    }

    /// Admission of queries (concurrency, priority classes, shedding).
    pub fn query_scheduler(&self) -> &Arc<QueryScheduler> {
        &self.query_scheduler
    }

    /// The limits in force for every tenant, and the metadata version they reflect.
    pub fn limits_view(&self) -> Arc<LimitsView> {
        self.limits.read().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
    }

    /// The limits in force for `tenant`.
    pub fn tenant_limits(&self, tenant: &str) -> Arc<EffectiveLimits> {
        self.limits_view().for_tenant(tenant)
    }

    /// Puts a new view of the limits in force (the cluster's applied state changed).
    pub fn set_limits_view(&self, view: LimitsView) {
        self.metrics.metadata_applied_index.set(i64::try_from(view.version).unwrap_or(i64::MAX));
        self.metrics.limits_from_cluster.set(i64::from(view.source == LimitsSource::Cluster));
        *self.limits.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = Arc::new(view);
    }

    pub fn metadata_status(&self) -> MetadataStatus {
        self.metadata_status.lock().expect("metadata status lock").clone()
    }

    pub fn set_metadata_status(&self, status: MetadataStatus) {
        *self.metadata_status.lock().expect("metadata status lock") = status;
    }

    pub fn set_engine(&self, slot: EngineSlot) {
        *self.slot.lock().expect("slot lock") = slot;
    }

    /// Makes a freshly opened engine Ready, first counting every series its head holds (WAL
    /// replay included) and every block series with a sample within the tracker's idle window
    /// in the active-series tracker: without this the tracker starts empty (or forgets the
    /// series already cut into blocks) and each restart would admit another limit of new
    /// series. Seeding happens before
    /// the slot turns Ready, so no write is admitted against a half-seeded tracker.
    pub async fn set_engine_ready(&self, engine: Engine) {
        let mut keys = engine.recent_series_keys(self.clock.now_wall_ms().saturating_sub(self.config.limits.series_idle_ms_max)).await;
        if sextant_core::determinism::planted::is_planted(sextant_core::determinism::planted::Bug::SeriesLimitBypassedOnRestart) {
            keys.clear();
        }
        let now_ms = self.clock.now_wall_ms();
        let shard_count = self.router.table().shard_count().unwrap_or(engine.shard_ids().len() as u32);
        {
            let mut tracker = self.tracker.lock().expect("tracker lock");
            for key in &keys {
                let account = series_account_key(&key.tenant, &key.labels);
                tracker.seed(&key.tenant, account, key.labels.metric_name(), shard_for(crate::limits::account_key_fingerprint(account), shard_count), now_ms);
            }
            self.metrics.active_series_tracked.set(tracker.active_series_total() as i64);
        }
        if !keys.is_empty() {
            tracing::info!(series = keys.len(), "active-series tracker seeded from the head and recent blocks");
        }
        self.set_engine(EngineSlot::Ready(engine));
    }

    /// In a cluster, counts the stored series of each shard this node holds as primary at an
    /// epoch newer than the one it last counted them at (a promotion, a move, the first write
    /// after a start), before any series of that shard is admitted against its share: a
    /// promoted secondary holds series it never admitted, and without this it would admit
    /// another full share of new series, or refuse existing series whose room a bomb took.
    pub async fn seed_primary_shards(&self, engine: &Engine, table: &crate::route::RouteTable) {
        let Some(shard_count) = table.limits_shared_over() else { return };
        let due = || -> BTreeMap<u32, u64> {
            let tracker = self.tracker.lock().expect("tracker lock");
            table.my_primaries().into_iter().filter(|(shard, epoch)| tracker.seeded_epoch(*shard).is_none_or(|seen| seen < *epoch)).collect()
        };
        if due().is_empty() {
            return;
        }
        // Writes that find the same shards due wait here for the first one's walk, then find
        // nothing left to do.
        let _seeding = self.seeding.lock().await;
        let due = due();
        if due.is_empty() {
            return;
        }
        let now_ms = self.clock.now_wall_ms();
        let keys = engine.recent_series_keys(now_ms.saturating_sub(self.config.limits.series_idle_ms_max)).await;
        let mut tracker = self.tracker.lock().expect("tracker lock");
        let mut seeded = 0u64;
        for key in &keys {
            let account = series_account_key(&key.tenant, &key.labels);
            let shard = shard_for(crate::limits::account_key_fingerprint(account), shard_count);
            if due.contains_key(&shard) {
                tracker.seed(&key.tenant, account, key.labels.metric_name(), shard, now_ms);
                seeded += 1;
            }
        }
        for (shard, epoch) in &due {
            tracker.mark_seeded(*shard, *epoch);
        }
        self.metrics.active_series_tracked.set(tracker.active_series_total() as i64);
        tracing::info!(shards = ?due, series = seeded, "active-series tracker counted the stored series of shards newly held as primary");
    }

    /// Admits a forwarded batch of `shard` (this node its primary) against the tenant's series
    /// limits, as the shard's share of them in a cluster. Returns the series to store and the
    /// refusals.
    pub fn admit_as_primary(&self, table: &crate::route::RouteTable, tenant: &str, shard: u32, series: Vec<WriteSeries>) -> (Vec<WriteSeries>, crate::limits::LimitRefusals) {
        let tenant_limits = self.tenant_limits(tenant);
        let series_limits = SeriesLimits { per_metric_max: tenant_limits.series_per_metric_max, per_tenant_max: tenant_limits.series_per_tenant_max };
        let placement = table.placement(shard);
        let now_ms = self.clock.now_wall_ms();
        let mut refused = crate::limits::LimitRefusals::default();
        let mut admitted = Vec::with_capacity(series.len());
        if sextant_core::determinism::planted::is_planted(sextant_core::determinism::planted::Bug::SeriesLimitPerReceivingNode) {
            return (series, refused);
        }
        let mut tracker = self.tracker.lock().expect("tracker lock");
        for s in series {
            let key = series_account_key(tenant, &s.labels);
            let admission = tracker.admit(tenant, key, s.labels.metric_name(), placement, now_ms, series_limits);
            match admission.refusal_kind() {
                None => admitted.push(s),
                Some(kind) => {
                    refused.add(kind, s.labels.metric_name(), s.samples.len() as u64, || (quote_pairs(s.labels.iter().map(|l| (l.name.as_str(), l.value.as_str()))), admission.refusal_reason(tenant)));
                }
            }
        }
        for (tenant, metric, estimate) in tracker.take_newly_flagged() {
            tracing::warn!(%tenant, %metric, new_series_estimate = estimate, "runaway metric: many new series in one window (counted on this shard primary)");
        }
        (admitted, refused)
    }

    /// Forgets series counted as new that the memory budget refused to create.
    pub fn forget_series(&self, tenant: &str, refused_memory: &[Labels]) {
        if refused_memory.is_empty() {
            return;
        }
        let mut tracker = self.tracker.lock().expect("tracker lock");
        for labels in refused_memory {
            tracker.forget(tenant, series_account_key(tenant, labels));
        }
    }

    /// Counts a write's series-limit refusals in the metrics and the client's answer.
    fn count_limit_refusals(&self, tenant: &str, limit: &crate::limits::LimitRefusals, refusals: &mut Refusals) {
        for ((kind, metric), n) in &limit.counted {
            self.metrics.refused(kind, *n);
            self.metrics.cardinality_refused(tenant, metric, *n);
        }
        for (series, reason) in &limit.detailed {
            refusals.add(0, || format!("{series}: {reason}"));
        }
        refusals.samples += limit.samples();
    }

    /// Takes the engine out for shutdown; later writes answer 503.
    pub fn take_engine_for_close(&self) -> Option<Engine> {
        let mut slot = self.slot.lock().expect("slot lock");
        match std::mem::replace(&mut *slot, EngineSlot::Closing) {
            EngineSlot::Ready(engine) => Some(engine),
            other => {
                if !matches!(other, EngineSlot::Opening) {
                    *slot = other;
                }
                None
            }
        }
    }

    /// The engine when it can serve reads (also while the WAL is poisoned).
    pub fn engine(&self) -> Result<Engine, String> {
        match &*self.slot.lock().expect("slot lock") {
            EngineSlot::Ready(engine) => Ok(engine.clone()),
            EngineSlot::Opening => Err("storage is opening (replaying the WAL); retry shortly".into()),
            EngineSlot::Failed(reason) => Err(format!("storage failed to open: {reason}")),
            EngineSlot::Closing => Err("node is shutting down".into()),
        }
    }

    /// Ok when the node accepts writes; otherwise why not.
    pub fn readiness(&self) -> Result<(), String> {
        match self.metadata_status() {
            MetadataStatus::Standalone | MetadataStatus::Started => {}
            MetadataStatus::Starting => return Err("the metadata raft member is starting".into()),
            MetadataStatus::Failed(reason) => return Err(format!("the metadata raft member failed to start: {reason}")),
            MetadataStatus::Stopped(reason) => return Err(format!("the metadata raft member stopped: {reason}; restart the node")),
        }
        let engine = self.engine()?;
        if engine.wal_stats().poisoned {
            return Err("WAL poisoned by an fsync error; writes are refused until the node restarts".into());
        }
        if let Some(reason) = self.clock_verdict().reason(self.config.acceptance.future_skew_ms_max) {
            if !sextant_core::determinism::planted::is_planted(sextant_core::determinism::planted::Bug::SkewUnreported) {
                return Err(reason);
            }
        }
        Ok(())
    }

    /// Notes a remote-write request from `client` whose newest sample is at `newest_t_ms`, for
    /// the clock check (clockcheck.rs), at this node's clock readings now.
    pub fn observe_client_clock(&self, client: std::net::IpAddr, newest_t_ms: i64) {
        self.clock_check.observe(client, newest_t_ms, self.clock.now_wall_ms(), self.clock.now_monotonic_ns());
    }

    /// What the clients' sample times say about this node's clock now.
    pub fn clock_verdict(&self) -> crate::clockcheck::ClockVerdict {
        self.clock_check.verdict(self.config.acceptance.future_skew_ms_max, self.clock.now_monotonic_ns())
    }

    /// Stores metadata entries (latest wins), bounded per tenant.
    fn store_metadata(&self, tenant: &str, entries: &[MetricMetadata]) {
        if entries.is_empty() {
            return;
        }
        let mut all = self.metadata.lock().expect("metadata lock");
        if !all.contains_key(tenant) && all.len() >= self.config.limits.tenants_max {
            self.metrics.metadata_dropped.inc_by(entries.len() as u64);
            return;
        }
        let table = all.entry(tenant.to_string()).or_default();
        for entry in entries {
            if entry.metric_family_name.is_empty() {
                self.metrics.metadata_dropped.inc();
                continue;
            }
            if !table.contains_key(&entry.metric_family_name) && table.len() >= METADATA_PER_TENANT_MAX {
                self.metrics.metadata_dropped.inc();
                continue;
            }
            let metric_type = MetricType::try_from(entry.r#type).unwrap_or(MetricType::Unknown).as_prometheus_str().to_string();
            let mut help = entry.help.clone();
            if help.len() > METADATA_HELP_BYTES_MAX {
                let mut cut = METADATA_HELP_BYTES_MAX;
                while !help.is_char_boundary(cut) {
                    cut -= 1;
                }
                help.truncate(cut);
            }
            let unit: String = entry.unit.chars().take(64).collect();
            table.insert(entry.metric_family_name.clone(), StoredMetadata { metric_type, help, unit });
            self.metrics.metadata_stored.inc();
        }
    }

    /// A tenant's metadata table (served by `/api/v1/metadata`).
    pub fn metadata(&self, tenant: &str) -> BTreeMap<String, StoredMetadata> {
        self.metadata.lock().expect("metadata lock").get(tenant).cloned().unwrap_or_default()
    }

    /// Runaway metrics of a tenant.
    pub fn runaway(&self, tenant: &str) -> Vec<crate::limits::RunawayMetric> {
        self.tracker.lock().expect("tracker lock").runaway(tenant)
    }

    /// Active series counted against the limits.
    pub fn active_series(&self, tenant: &str, metric: Option<&str>) -> u64 {
        self.tracker.lock().expect("tracker lock").active_series(tenant, metric)
    }

    /// Active series of a tenant (and of one metric) this node counts in `shard`.
    pub fn active_series_in_shard(&self, tenant: &str, metric: Option<&str>, shard: u32) -> u64 {
        self.tracker.lock().expect("tracker lock").active_series_in_shard(tenant, metric, shard)
    }

    /// Active series per (tenant, metric) counted by this node, by tenant then metric.
    pub fn active_series_per_metric(&self, tenant: Option<&str>) -> Vec<(String, String, u64)> {
        self.tracker.lock().expect("tracker lock").active_series_per_metric(tenant)
    }

    /// Ingests one decoded remote-write request for `tenant` (see the module documentation).
    pub async fn ingest(&self, tenant: &str, request: WriteRequest) -> IngestOutcome {
        self.ingest_as(tenant, request, None).await
    }

    /// [`Node::ingest`] with the client's `authorization` header, which forwarded writes carry
    /// to the shards' primaries when tokens are configured.
    pub async fn ingest_as(&self, tenant: &str, request: WriteRequest, authorization: Option<&str>) -> IngestOutcome {
        let engine = match self.engine() {
            Ok(engine) => engine,
            Err(reason) => return IngestOutcome::new(503, reason),
        };
        if engine.wal_stats().poisoned {
            return IngestOutcome::new(503, "WAL poisoned by an fsync error; writes are refused until the node restarts");
        }
        // A member of a multi-node cluster that has not applied the shard map yet cannot know
        // which node stores a series: writing locally would hide the samples from queries once
        // the map names another primary. Refuse, retryably, until the map arrives (moments
        // after formation). A single-node cluster seeds its own map and has no such window.
        if self.config.cluster.formation != crate::config::Formation::Single && self.router.table().shard_count().is_none() {
            return IngestOutcome::new(503, "this node has not applied the cluster's shard map yet (the cluster is forming, or this node is joining); retry shortly");
        }
        let limits = &self.config.limits;
        if !self.tracker.lock().expect("tracker lock").tenant_allowed(tenant) {
            return IngestOutcome::new(400, format!("tenant {tenant:?} refused: this node already serves its limit of {} tenants", limits.tenants_max));
        }
        self.store_metadata(tenant, &request.metadata);
        let samples_total: u64 = request.timeseries.iter().map(|ts| (ts.samples.len() + ts.histograms.len()) as u64).sum();
        let exemplars: u64 = request.timeseries.iter().map(|ts| ts.exemplars.len() as u64).sum();
        self.metrics.samples_received.inc_by(samples_total);
        self.metrics.exemplars_ignored.inc_by(exemplars);
        if samples_total == 0 {
            return IngestOutcome::new(204, "");
        }
        let tenant_limits = self.tenant_limits(tenant);
        let rate = tenant_limits.ingest_rate_samples_per_s_max;
        if rate > 0 {
            let now_ns = self.clock.now_monotonic_ns();
            let mut buckets = self.buckets.lock().expect("bucket lock");
            let bucket = buckets.entry(tenant.to_string()).or_insert_with(|| TokenBucket::new(rate, now_ns));
            if bucket.rate_per_s() != rate {
                bucket.set_rate(rate, now_ns);
            }
            if let Err(wait_ms) = bucket.try_take(samples_total, now_ns) {
                drop(buckets);
                self.metrics.refused("rate_limit", samples_total);
                let mut outcome = IngestOutcome::new(429, format!("tenant {tenant:?}: ingest rate limit of {rate} samples/s exceeded by a request of {samples_total} samples; retry in about {wait_ms} ms"));
                outcome.samples_refused = samples_total;
                return outcome;
            }
        }

        // Validate and admit, then group by shard.
        let mut refusals = Refusals::default();
        // The cluster's shard map decides shards once there is one; before, the engine's.
        let routes = self.router.table();
        let shard_count = routes.shard_count().unwrap_or(engine.shard_ids().len() as u32);
        let mut per_shard: BTreeMap<u32, Vec<WriteSeries>> = BTreeMap::new();
        let series_limits = SeriesLimits { per_metric_max: tenant_limits.series_per_metric_max, per_tenant_max: tenant_limits.series_per_tenant_max };
        // Series are admitted against the limits where they are stored: here for the shards
        // this node writes locally, on the primary for forwarded ones (route.rs). In a cluster
        // each shard admits up to its share (limits.rs), after counting what it stores.
        let per_receiving_node = sextant_core::determinism::planted::is_planted(sextant_core::determinism::planted::Bug::SeriesLimitPerReceivingNode);
        let shared_over = if per_receiving_node { None } else { routes.limits_shared_over() };
        self.seed_primary_shards(&engine, &routes).await;
        let mut limit_refusals = crate::limits::LimitRefusals::default();
        let now_ms = self.clock.now_wall_ms();
        {
            let mut tracker = self.tracker.lock().expect("tracker lock");
            for mut series in request.timeseries {
                if !series.histograms.is_empty() {
                    let n = series.histograms.len() as u64;
                    self.metrics.refused("native_histogram", n);
                    refusals.add(n, || format!("{}: {n} native histogram samples refused: native histograms are not supported yet", quote_series(&series.labels)));
                }
                let n = series.samples.len() as u64;
                if n == 0 {
                    continue;
                }
                // The request's strings move into the series' labels: no copy per label.
                let raw = std::mem::take(&mut series.labels).into_iter().map(|l| Label::new(l.name, l.value)).collect();
                let labels = match Labels::for_ingest(raw, &limits.labels) {
                    Ok(labels) => labels,
                    Err((error, given_back)) => {
                        self.metrics.refused("invalid_labels", n);
                        refusals.add(n, || format!("{}: {error}", quote_pairs(given_back.iter().map(|l| (l.name.as_str(), l.value.as_str())))));
                        continue;
                    }
                };
                let quoted = || quote_pairs(labels.iter().map(|l| (l.name.as_str(), l.value.as_str())));
                if let Some(blocked) = labels.iter().find(|l| tenant_limits.blocked_labels.contains(&l.name)) {
                    self.metrics.refused("blocked_label", n);
                    refusals.add(n, || format!("{}: label name {:?} is blocked for tenant {tenant:?}", quoted(), blocked.name));
                    continue;
                }
                let key = series_account_key(tenant, &labels);
                let shard = shard_for(crate::limits::account_key_fingerprint(key), shard_count);
                if routes.writes_locally(shard) || per_receiving_node {
                    let metric = labels.metric_name();
                    let admission = tracker.admit(tenant, key, metric, crate::limits::Placement { shard, shared_over }, now_ms, series_limits);
                    if let Some(kind) = admission.refusal_kind() {
                        limit_refusals.add(kind, metric, n, || (quoted(), admission.refusal_reason(tenant)));
                        continue;
                    }
                }
                let samples = series.samples.iter().map(|s| Sample::new(s.timestamp, s.value)).collect();
                per_shard.entry(shard).or_default().push(WriteSeries { labels, samples });
            }
            for (tenant, metric, estimate) in tracker.take_newly_flagged() {
                tracing::warn!(%tenant, %metric, new_series_estimate = estimate, window_ms = limits.runaway_window_ms, "runaway metric: many new series in one window");
            }
        }

        // Append per shard, concurrently, in chunks the engine accepts; shards whose primary
        // is another node are judged here and forwarded there (route.rs).
        let chunk_samples_max = engine.config().write_samples_max.max(1);
        type ShardWrite = Result<(AppendReport, crate::limits::LimitRefusals), ShardWriteError>;
        let mut writes: Vec<std::pin::Pin<Box<dyn std::future::Future<Output = (u32, ShardWrite)> + Send + '_>>> = Vec::new();
        let judged_at_ms = self.clock.now_wall_ms();
        for (shard, series) in per_shard {
            match routes.destination(shard) {
                Destination::Local => {
                    // A primary whose secondary lags past --replication-lag-max refuses the
                    // shard's writes (429) unless the policy is `unprotected` (replicate.rs).
                    if let Err(error) = self.replication.check_write(&routes, shard, &engine, &self.lease) {
                        writes.push(Box::pin(async move { (shard, Err(error)) }));
                        continue;
                    }
                    // As this shard's primary the node acknowledges only under a lease for
                    // exactly this epoch, checked before storing and again before answering
                    // (the lease may end while the WAL syncs). No map or no primary: no lease.
                    let leased = routes.primary_epoch(shard);
                    for chunk in split_samples(series, chunk_samples_max) {
                        let engine = engine.clone();
                        writes.push(Box::pin(async move {
                            if let Some(epoch) = leased {
                                if let Err(refusal) = self.await_lease(shard, epoch).await {
                                    return (shard, Err(ShardWriteError::Lease(refusal)));
                                }
                            }
                            let result = engine.append(shard, tenant, chunk).await.map_err(ShardWriteError::from);
                            let result = match (result, leased) {
                                (Ok(report), Some(epoch)) => self.lease_for_ack(shard, epoch).map(|_| report).map_err(ShardWriteError::Lease),
                                (result, _) => result,
                            };
                            (shard, result.map(|report| (report, Default::default())))
                        }));
                    }
                }
                Destination::Remote { node, addr, epoch } => {
                    let engine = engine.clone();
                    writes.push(Box::pin(async move {
                        let mut report = AppendReport::default();
                        let judged = crate::route::judge_for_forward(&engine.config().acceptance, judged_at_ms, series, &mut report);
                        let ctx = ForwardContext { tenant, authorization, judged_at_ms };
                        let result = self.router.forward(self, &engine, &ctx, shard, (node, addr, epoch), judged).await.map(|(forwarded, limits)| {
                            report.add(forwarded);
                            (report, limits)
                        });
                        (shard, result)
                    }));
                }
            }
        }
        let results = futures_util::future::join_all(writes).await;
        let mut total = AppendReport::default();
        let mut first_error: Option<ShardWriteError> = None;
        let mut failed_shards = Vec::new();
        for (shard, result) in results {
            match result {
                Ok((report, limits)) => {
                    total.add(report);
                    limit_refusals.merge(limits);
                }
                Err(error) => {
                    failed_shards.push(shard);
                    // 429 (backpressure) only when nothing worse happened: a 503 or 500 wins.
                    if first_error.as_ref().is_none_or(|first| first.status() == 429 && error.status() != 429) {
                        first_error = Some(error);
                    }
                }
            }
        }
        // Series the memory budget refused to create do not exist: they are not active (else a
        // memory-bound node would refuse new series for the tenant's limit, counting phantoms,
        // until they idle out). The new series of a failed shard write stay counted: a failure
        // does not say nothing was stored (the lease can lapse after the append, an fsync can
        // fail after the head took the samples), and a stored series left uncounted would be
        // counted again at the next restart or promotion — over the limit (the simulator found
        // it). The sender retries the same series, which then find themselves counted.
        if !total.series_refused_memory.is_empty() {
            self.forget_series(tenant, &total.series_refused_memory);
        }
        self.metrics.samples_stored.inc_by(total.accepted);
        self.metrics.samples_duplicate.inc_by(total.duplicates);
        self.metrics.samples_out_of_order.inc_by(total.out_of_order);
        for (kind, count) in &total.refused_by_kind {
            self.metrics.refused(kind, *count);
        }
        for refusal in &total.refusals {
            let series = refusal.series.chars().take(SERIES_QUOTE_CHARS_MAX).collect::<String>();
            refusals.add(0, || format!("{series} at {}: {}", refusal.t, refusal.reason));
        }
        refusals.samples += total.refused_permanent + total.refused_retryable;
        self.count_limit_refusals(tenant, &limit_refusals, &mut refusals);

        let stored = total.accepted + total.duplicates;
        let mut outcome = if let Some(error) = first_error {
            let status = error.status();
            tracing::warn!(%error, tenant, "remote-write append failed");
            IngestOutcome::new(status, format!("storage failed on {} of the request's shard writes ({error}); retry the request (samples already stored count as duplicates)", failed_shards.len()))
        } else if total.refused_retryable > 0 {
            IngestOutcome::new(503, format!("{} samples refused for now (retry later): {}", total.refused_retryable, refusals.reasons.join("; ")))
        } else if refusals.samples > 0 {
            let more = if refusals.samples > refusals.reasons.len() as u64 { " …" } else { "" };
            IngestOutcome::new(400, format!("{} of {samples_total} samples refused ({stored} stored or already present): {}{more}", refusals.samples, refusals.reasons.join("; ")))
        } else {
            IngestOutcome::new(204, "")
        };
        outcome.samples_stored = total.accepted;
        outcome.samples_refused = refusals.samples;
        outcome
    }

    /// Resolves when the engine asks for a maintenance pass before the next tick (a head due
    /// for a cut). While storage is opening it looks again every [`ENGINE_POLL_MS`]: replay
    /// itself may leave a head that is due.
    pub async fn cut_wanted(&self) {
        loop {
            match self.engine() {
                Ok(engine) => return engine.cut_wanted().await,
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(ENGINE_POLL_MS)).await,
            }
        }
    }

    /// Background bookkeeping: engine maintenance, idle series, runaway windows, metrics.
    pub async fn maintain(&self) {
        {
            let now_ms = self.clock.now_wall_ms();
            let now_ns = self.clock.now_monotonic_ns();
            let mut tracker = self.tracker.lock().expect("tracker lock");
            tracker.maintain(now_ms);
            let runaway: Vec<(String, String)> = tracker.runaway_all().into_iter().map(|(t, r)| (t, r.name)).collect();
            self.metrics.set_runaway(&runaway);
            self.metrics.active_series_tracked.set(tracker.active_series_total() as i64);
            drop(tracker);
            self.buckets.lock().expect("bucket lock").retain(|_, bucket| !bucket.is_full(now_ns));
        }
        let Ok(engine) = self.engine() else { return };
        match engine.maintain().await {
            Ok(report) if report.blocks_cut + report.blocks_compacted + report.blocks_deleted_retention > 0 => {
                tracing::info!(?report, "maintenance pass");
            }
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "maintenance pass failed"),
        }
        self.refresh_metrics().await;
    }

    /// Refreshes engine-derived metrics (also done on each `/metrics` scrape).
    pub async fn refresh_metrics(&self) {
        self.metrics.ready.set(i64::from(self.readiness().is_ok()));
        let (suspected, estimate_s) = match self.clock_verdict() {
            crate::clockcheck::ClockVerdict::Behind { estimate_ms, .. } => (1, estimate_ms / 1000),
            crate::clockcheck::ClockVerdict::Consistent => (0, 0),
        };
        self.metrics.clock_behind_suspected.set(suspected);
        self.metrics.clock_behind_estimate_seconds.set(estimate_s);
        if let Ok(engine) = self.engine() {
            let status = engine.status().await;
            self.metrics.observe_engine(&status, &engine.wal_stats());
        }
        self.replication.observe(self).await;
    }
}

/// Splits series into writes of at most `max` samples (a series larger than `max` is cut).
fn split_samples(series: Vec<WriteSeries>, max: usize) -> Vec<Vec<WriteSeries>> {
    let mut out = Vec::new();
    let mut current = Vec::new();
    let mut current_samples = 0;
    for mut s in series {
        while !s.samples.is_empty() {
            let room = max - current_samples;
            if s.samples.len() <= room {
                current_samples += s.samples.len();
                current.push(s);
                break;
            }
            let rest = s.samples.split_off(room);
            current.push(WriteSeries { labels: s.labels.clone(), samples: std::mem::take(&mut s.samples) });
            out.push(std::mem::take(&mut current));
            current_samples = 0;
            s.samples = rest;
        }
        if current_samples == max {
            out.push(std::mem::take(&mut current));
            current_samples = 0;
        }
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    // Goal: splitting keeps every sample, in order, and no write exceeds the maximum.
    #[test]
    fn split_keeps_every_sample() {
        let make = |name: &str, n: i64| WriteSeries { labels: Labels::from_pairs(&[("__name__", name)]), samples: (0..n).map(|t| Sample::new(t, 0.0)).collect() };
        for max in [1usize, 2, 3, 7, 100] {
            let chunks = split_samples(vec![make("a", 5), make("b", 0), make("c", 9)], max);
            let mut seen: Vec<(String, i64)> = Vec::new();
            for chunk in &chunks {
                let n: usize = chunk.iter().map(|s| s.samples.len()).sum();
                assert!(n <= max && n > 0, "max {max}: chunk of {n}");
                for s in chunk {
                    seen.extend(s.samples.iter().map(|x| (s.labels.metric_name().to_string(), x.t)));
                }
            }
            let expected: Vec<(String, i64)> = (0..5).map(|t| ("a".to_string(), t)).chain((0..9).map(|t| ("c".to_string(), t))).collect();
            assert_eq!(seen, expected, "max {max}");
        }
    }
}
