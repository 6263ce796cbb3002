//! RF=2 replication of the data shards (docs/design/replication.md § Replication):
//!
//! - [`Replication`]: owned by the [`Node`]; per shard this node is primary of, the stream's
//!   state and its lag, the `--replication-lag-max` check on the write paths, and the epoch of
//!   the last full two-way sync per shard ([`Replication::synced_epochs`]).
//! - [`run`]: the supervisor `sextant serve` starts: one stream task per shard whose primary
//!   is this node and whose secondary is another node, started and stopped as the route table
//!   changes (new secondary, new epoch).
//! - The stream ([`stream`]): ships `Engine::wal_tail` batches to the secondary over
//!   `Data.Replicate` and moves the replication floor to what it acknowledged; when the tail
//!   cannot be shipped (no position, a position in another primary's or epoch's seq space, a
//!   truncated WAL, a gap) it catches the secondary up: floor at the durable position P, a
//!   two-way [`sync_shard`], the secondary's position set to P, then streaming from P.
//! - [`sync_shard`]: anti-entropy between this node's engine and the other replica: per-window
//!   digests, then differing windows copied both ways (the union), the primary's value winning
//!   conflicts on both.
//! - The secondary's side of each RPC (`handle_*`), called by `route::DataGrpcService`.
//!
//! Waiting when caught up: the stream polls the engine's logged position
//! (`Engine::wal_next_seq`, an in-memory read) every [`REPLICATE_POLL_MS`]; the WAL is read
//! only when something new was logged, so an idle shard costs one timer wake-up and one
//! lock-protected integer read per poll.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sextant_core::clock::Clock;
use sextant_core::labels::{Label, Labels};
use sextant_core::sample::Sample;
use sextant_core::series::SeriesKey;
use sextant_storage::engine::{ApplyError, Engine, EngineError, ReplicaSource, ShardDigest, TailError, TailRecord, WalTail, WriteSeries};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::transport::Channel;
use tonic::Status;

use crate::node::Node;
use crate::route::pb;
use crate::route::pb::data_client::DataClient;
use crate::route::{RouteTable, ShardWriteError};

/// WAL payload bytes per Replicate batch (well under the 64 MiB message limit).
pub const REPLICATE_BATCH_BYTES_MAX: usize = 4 * 1024 * 1024;
/// How often a caught-up stream checks whether its shard logged something new.
pub const REPLICATE_POLL_MS: u64 = 20;
/// Longest wait for one replication call's answer (Replicate, Position, Import).
pub const REPLICATE_TIMEOUT_MS: u64 = 10_000;
/// Longest wait for one sync call's answer (Digest, Export: each reads a shard range).
pub const SYNC_CALL_TIMEOUT_MS: u64 = 60_000;
/// Backoff after a failed round, doubling from the first to the second.
pub const RETRY_BACKOFF_MS_MIN: u64 = 100;
pub const RETRY_BACKOFF_MS_MAX: u64 = 2_000;
/// Sync compares digests over aligned windows of this span (the block span)...
pub const SYNC_WINDOW_MS: i64 = 2 * 3_600_000;
/// ...and at most this many windows per shard (the span doubles until they fit).
pub const SYNC_WINDOWS_MAX: usize = 4_096;
/// Ranges one Digest call may ask for.
pub const DIGEST_RANGES_MAX: usize = 65_536;
/// Samples per Export page and per Import batch.
pub const EXPORT_SAMPLES_MAX: usize = 100_000;
/// How long a stopping supervisor waits for each stream task before aborting it.
pub const TASK_STOP_WAIT_MS: u64 = 5_000;
/// How often the supervisor re-checks the engine and the table without a table change.
pub const SUPERVISE_INTERVAL_MS: u64 = 500;
/// Longest wait for one node's ReplicationStatus or Digest in admin fan-outs.
pub const STATUS_TIMEOUT_MS: u64 = 5_000;

/// What a primary does with a shard's writes once its secondary lags past
/// `--replication-lag-max`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LagPolicy {
    /// Answer 429 (retryable) until the secondary catches up: the loss window stays bounded.
    #[default]
    Refuse,
    /// Accept, and mark the shard unprotected in status and metrics.
    Unprotected,
}

/// Where a shard's stream is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamState {
    /// Asking the secondary for its position.
    Starting,
    /// Catching the secondary up with a two-way sync.
    Syncing,
    /// Shipping WAL records (or caught up, polling).
    Streaming,
    /// The last round failed; waiting to retry.
    Retrying,
}

impl StreamState {
    pub fn name(self) -> &'static str {
        match self {
            StreamState::Starting => "starting",
            StreamState::Syncing => "syncing",
            StreamState::Streaming => "streaming",
            StreamState::Retrying => "retrying",
        }
    }
}

/// The primary's view of one shard's replication.
#[derive(Clone, Debug)]
pub struct PrimaryShard {
    pub secondary: u64,
    pub epoch: u64,
    pub state: StreamState,
    /// The secondary's applied position in this node's seq space (`None` until known).
    pub acked_seq: Option<u64>,
    /// One past this node's last durable seq of the shard, as of the last tail read.
    pub durable_next_seq: u64,
    /// Monotonic time (ns) of the last moment the secondary had acknowledged everything
    /// logged; the lag is measured from it.
    pub caught_up_at_ns: u64,
    /// Writes were accepted past the lag bound (policy `unprotected`) and the secondary has
    /// not caught up since.
    pub unprotected: bool,
    pub last_error: String,
}

/// The lag of one shard.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Lag {
    pub lag_ms: i64,
    pub records: u64,
}

/// Replication state of the node (see the module docs).
pub struct Replication {
    clock: Arc<dyn Clock>,
    lag_ms_max: i64,
    policy: LagPolicy,
    shards: Mutex<BTreeMap<u32, PrimaryShard>>,
    synced_tx: watch::Sender<BTreeMap<u32, u64>>,
}

impl std::fmt::Debug for Replication {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replication").field("lag_ms_max", &self.lag_ms_max).field("policy", &self.policy).finish()
    }
}

impl Replication {
    pub fn new(clock: Arc<dyn Clock>, lag_ms_max: i64, policy: LagPolicy) -> Replication {
        let (synced_tx, _) = watch::channel(BTreeMap::new());
        Replication { clock, lag_ms_max, policy, shards: Mutex::new(BTreeMap::new()), synced_tx }
    }

    pub fn lag_ms_max(&self) -> i64 {
        self.lag_ms_max
    }

    pub fn policy(&self) -> LagPolicy {
        self.policy
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u32, PrimaryShard>> {
        self.shards.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Per shard, the epoch at which the last full two-way sync between this node (as
    /// primary) and the shard's current secondary completed. `failover::mark_merged` feeds the
    /// `MarkShardSynced {shard, epoch}` raft action from it.
    pub fn synced_epochs(&self) -> watch::Receiver<BTreeMap<u32, u64>> {
        self.synced_tx.subscribe()
    }

    fn mark_synced(&self, shard: u32, epoch: u64) {
        self.synced_tx.send_if_modified(|map| map.insert(shard, epoch) != Some(epoch));
    }

    fn forget_synced(&self, shard: u32) {
        self.synced_tx.send_if_modified(|map| map.remove(&shard).is_some());
    }

    /// A snapshot of the shards this node streams.
    pub fn primary_shards(&self) -> BTreeMap<u32, PrimaryShard> {
        self.lock().clone()
    }

    fn update(&self, shard: u32, f: impl FnOnce(&mut PrimaryShard)) {
        if let Some(state) = self.lock().get_mut(&shard) {
            f(state);
        }
    }

    fn begin(&self, shard: u32, secondary: u64, epoch: u64) {
        let now = self.clock.now_monotonic_ns();
        self.lock().insert(
            shard,
            PrimaryShard { secondary, epoch, state: StreamState::Starting, acked_seq: None, durable_next_seq: 0, caught_up_at_ns: now, unprotected: false, last_error: String::new() },
        );
    }

    fn end(&self, shard: u32) {
        self.lock().remove(&shard);
        self.forget_synced(shard);
    }

    /// The shard's lag now: 0 when the secondary acknowledged everything logged, else the time
    /// since it last had (an upper bound on the age of the oldest unacknowledged record, over
    /// by at most one poll interval), and the records it has not acknowledged. `None` when
    /// this node runs no stream for the shard.
    pub fn lag(&self, shard: u32, engine: &Engine) -> Option<Lag> {
        let logged_next = engine.wal_next_seq(shard).ok()?;
        let oldest = engine.replication_oldest_logged_ns(shard);
        let now = self.clock.now_monotonic_ns();
        let shards = self.lock();
        let state = shards.get(&shard)?;
        Some(lag_of(state, logged_next, oldest, now))
    }

    /// The `--replication-lag-max` check for a write of `shard` on this node: `Ok` when this
    /// node is not the shard's primary, the shard has no secondary (unreplicated), or the lag
    /// is within the bound; past it, 429 or (policy `unprotected`, or a secondary known down:
    /// the failed previous primary of a promoted shard, or a node the metadata leader lists as
    /// silent past the promotion timeout) `Ok` with the shard marked unprotected.
    pub fn check_write(&self, table: &RouteTable, shard: u32, engine: &Engine, lease: &crate::lease::LeaseHolder) -> Result<(), ShardWriteError> {
        let Some(route) = table.shards.get(&shard) else { return Ok(()) };
        if route.primary != Some(table.me) || route.secondary.is_none_or(|s| s == table.me) {
            return Ok(());
        }
        let Some(lag) = self.lag(shard, engine) else { return Ok(()) };
        if lag.lag_ms <= self.lag_ms_max {
            self.update(shard, |s| s.unprotected = false);
            return Ok(());
        }
        // The secondary is known down: the shard was just promoted away from it (merge pending,
        // the previous primary as secondary), or the metadata leader lists it as silent past the
        // promotion timeout in this node's live lease. Refusing would turn every node failure
        // into a write outage of the shards it replicates, undoing the failover; the shard runs
        // unprotected instead (status and metrics) until the secondary catches up.
        let failed_over = table.merge_pending.get(&shard).is_some_and(|(epoch, from_node)| *epoch == route.epoch && route.secondary == Some(*from_node));
        let secondary_down = route.secondary.is_some_and(|secondary| lease.node_known_down(secondary, self.clock.now_monotonic_ns()));
        match self.policy {
            LagPolicy::Refuse if !failed_over && !secondary_down => Err(ShardWriteError::Lagging { shard, lag_ms: lag.lag_ms, lag_ms_max: self.lag_ms_max, secondary: route.secondary.unwrap_or(0) }),
            LagPolicy::Refuse | LagPolicy::Unprotected => {
                self.update(shard, |s| s.unprotected = true);
                Ok(())
            }
        }
    }

    /// The ReplicationStatus answer of this node.
    pub async fn status(&self, node: &Node) -> pb::ReplicationStatusReply {
        let table = node.router().table();
        let engine = node.engine().ok();
        let status = match &engine {
            Some(engine) => Some(engine.replication_status().await),
            None => None,
        };
        let now = self.clock.now_monotonic_ns();
        let streams = self.primary_shards();
        let synced = self.synced_tx.borrow().clone();
        let mut shards = Vec::new();
        for (shard, route) in &table.shards {
            if route.primary != Some(table.me) {
                continue;
            }
            let Some(secondary) = route.secondary.filter(|s| *s != table.me) else {
                shards.push(pb::ShardReplication { shard: *shard, secondary: None, epoch: route.epoch, state: "unreplicated".into(), ..Default::default() });
                continue;
            };
            let Some(stream) = streams.get(shard) else {
                shards.push(pb::ShardReplication { shard: *shard, secondary: Some(secondary), epoch: route.epoch, state: "not started".into(), ..Default::default() });
                continue;
            };
            let logged_next = engine.as_ref().and_then(|e| e.wal_next_seq(*shard).ok()).unwrap_or(0);
            let retained = status.as_ref().and_then(|s| s.shards.get(shard));
            let lag = lag_of(stream, logged_next, retained.and_then(|r| r.oldest_logged_ns), now);
            let (lag_bytes, lag_samples) = retained.map_or((0, 0), |s| (s.retained_bytes, s.retained_samples));
            shards.push(pb::ShardReplication {
                shard: *shard,
                secondary: Some(secondary),
                epoch: route.epoch,
                state: stream.state.name().into(),
                lag_ms: lag.lag_ms,
                lag_records: lag.records,
                lag_bytes,
                lag_samples,
                acked_seq: stream.acked_seq,
                durable_next_seq: stream.durable_next_seq,
                synced_epoch: synced.get(shard).copied(),
                unprotected: stream.unprotected,
                last_error: stream.last_error.clone(),
            });
        }
        pb::ReplicationStatusReply { node: table.me, lag_ms_max: self.lag_ms_max.max(0) as u64, shards }
    }

    /// Refreshes the replication gauges (`/metrics`).
    pub async fn observe(&self, node: &Node) {
        let status = self.status(node).await;
        let m = &node.metrics;
        m.replication_lag_ms.clear();
        m.replication_lag_records.clear();
        m.replication_lag_bytes.clear();
        m.replication_lag_samples.clear();
        m.replication_unprotected.clear();
        m.replication_unreplicated.clear();
        for s in &status.shards {
            let labels = crate::metrics::ShardLabels { shard: s.shard.to_string() };
            if s.state == "unreplicated" {
                m.replication_unreplicated.get_or_create(&labels).set(1);
                continue;
            }
            m.replication_lag_ms.get_or_create(&labels).set(s.lag_ms);
            m.replication_lag_records.get_or_create(&labels).set(s.lag_records as i64);
            m.replication_lag_bytes.get_or_create(&labels).set(s.lag_bytes as i64);
            m.replication_lag_samples.get_or_create(&labels).set(s.lag_samples as i64);
            m.replication_unprotected.get_or_create(&labels).set(i64::from(s.unprotected));
        }
    }
}

/// The lag: 0 when the secondary acknowledged everything logged; else the age of the oldest
/// unacknowledged record when storage tracked when it was logged (`oldest_logged_ns`, the
/// usual case), never more than the time since the secondary last had everything (the bound
/// that holds without it, e.g. just after the stream started).
fn lag_of(state: &PrimaryShard, logged_next: u64, oldest_logged_ns: Option<u64>, now_ns: u64) -> Lag {
    let acked_next = state.acked_seq.map_or(1, |a| a + 1);
    if acked_next >= logged_next {
        return Lag::default();
    }
    let since = oldest_logged_ns.map_or(state.caught_up_at_ns, |t| t.max(state.caught_up_at_ns));
    Lag { lag_ms: (now_ns.saturating_sub(since) / 1_000_000) as i64, records: logged_next - acked_next }
}

// ---------------------------------------------------------------------------------------------
// Message conversions.

/// The Replicate request carrying `tail`.
pub fn tail_to_pb(tail: &WalTail, epoch: u64, from_node: u64) -> pb::ReplicateRequest {
    pb::ReplicateRequest {
        shard: tail.shard,
        epoch,
        from_node,
        series: tail.series.clone(),
        series_crc32: tail.series_crc32,
        records: tail.records.iter().map(|r| pb::WalRecord { seq: r.seq, payload: r.bytes.clone(), crc32: r.crc32 }).collect(),
        durable_next_seq: tail.durable_next_seq,
    }
}

/// The tail a Replicate request carries. CRCs are checked by `Engine::apply_replicated`
/// (records keep the CRC they were sent with).
pub fn tail_from_pb(request: pb::ReplicateRequest) -> WalTail {
    let shard = request.shard;
    WalTail {
        shard,
        series: request.series,
        series_crc32: request.series_crc32,
        records: request.records.into_iter().map(|r| TailRecord { shard, seq: r.seq, bytes: r.payload, crc32: r.crc32 }).collect(),
        durable_next_seq: request.durable_next_seq,
    }
}

fn series_to_pb(key: &SeriesKey, samples: &[Sample]) -> pb::TenantSeries {
    pb::TenantSeries {
        tenant: key.tenant.clone(),
        labels: key.labels.iter().map(|l| pb::Label { name: l.name.clone(), value: l.value.clone() }).collect(),
        samples: samples.iter().map(|s| pb::Sample { t: s.t, v: s.v }).collect(),
    }
}

/// A series of an Export or Import message: tenant and labels checked as ingest checks them.
pub fn series_from_pb(series: pb::TenantSeries) -> Result<(SeriesKey, Vec<Sample>), String> {
    crate::auth::validate_tenant(&series.tenant).map_err(|e| e.to_string())?;
    let labels = Labels::from_unsorted(series.labels.into_iter().map(|l| Label::new(l.name, l.value)).collect()).map_err(|e| format!("series labels: {e}"))?;
    let mut samples: Vec<Sample> = series.samples.into_iter().map(|s| Sample::new(s.t, s.v)).collect();
    samples.sort_by_key(|s| s.t);
    Ok((SeriesKey::new(series.tenant, labels), samples))
}

fn digest_from_pb(d: &pb::ShardDigest) -> ShardDigest {
    ShardDigest { series: d.series, samples: d.samples, hash: d.hash }
}

fn digest_to_pb(d: &ShardDigest) -> pb::ShardDigest {
    pb::ShardDigest { series: d.series, samples: d.samples, hash: d.hash }
}

fn engine_status(error: EngineError) -> Status {
    match error {
        EngineError::InvalidArgument { reason } => Status::invalid_argument(reason),
        EngineError::UnknownShard { shard } => Status::not_found(format!("shard {shard} is not held by this node")),
        error if error.is_retryable() || matches!(error, EngineError::Closed | EngineError::Wal(_)) => Status::unavailable(format!("storage: {error}")),
        error => Status::internal(format!("storage: {error}")),
    }
}

// ---------------------------------------------------------------------------------------------
// The secondary's side.

/// Checks that this node is `shard`'s secondary at `epoch` with `from_node` as primary,
/// waiting (bounded) for its own view when the sender's epoch is newer.
async fn check_secondary(node: &Node, shard: u32, epoch: u64, from_node: u64) -> Result<(), Status> {
    let router = node.router();
    let holds = |t: &RouteTable| t.shards.get(&shard).is_some_and(|s| s.secondary == Some(t.me) && s.primary == Some(from_node) && s.epoch == epoch);
    let mut table = router.table();
    if !holds(&table) && table.shards.get(&shard).is_none_or(|s| s.epoch < epoch) {
        table = router.table_with_epoch(shard, epoch, Duration::from_millis(crate::route::EPOCH_WAIT_MS)).await;
    }
    if holds(&table) {
        return Ok(());
    }
    let held = match table.shards.get(&shard) {
        None if table.shards.is_empty() => "this node has no shard map applied yet".to_string(),
        None => format!("the shard map has no shard {shard}"),
        Some(s) => format!("this node's map (applied index {}) has shard {shard} at epoch {} with primary {:?} and secondary {:?}", table.version, s.epoch, s.primary, s.secondary),
    };
    Err(Status::failed_precondition(format!("node {} refuses replication of shard {shard} at epoch {epoch} from node {from_node}: {held}", table.me)))
}

fn engine_of(node: &Node) -> Result<Engine, Status> {
    node.engine().map_err(Status::unavailable)
}

/// `Data.Replicate` on the secondary.
pub async fn handle_replicate(node: &Node, request: pb::ReplicateRequest) -> Result<pb::ReplicateReply, Status> {
    let (shard, epoch, from_node) = (request.shard, request.epoch, request.from_node);
    check_secondary(node, shard, epoch, from_node).await?;
    let engine = engine_of(node)?;
    let source = engine.replica_source(shard).await.map_err(engine_status)?;
    if source != Some(ReplicaSource { primary: from_node, epoch }) {
        return Err(Status::out_of_range(format!(
            "shard {shard}: this node's position is in the seq space of {}, not of node {from_node} at epoch {epoch}; catch up first",
            source.map_or("no primary".to_string(), |s| format!("node {} at epoch {}", s.primary, s.epoch))
        )));
    }
    let tail = tail_from_pb(request);
    if sextant_core::determinism::planted::is_planted(sextant_core::determinism::planted::Bug::ReplicationAckedBeforeApply) {
        return planted_ack_before_apply(&engine, shard, source, tail).await;
    }
    match engine.apply_replicated(shard, &tail).await {
        Ok(report) => {
            node.metrics.replicated_records_applied.inc_by(report.records);
            Ok(pb::ReplicateReply { applied_through: report.applied_through, records: report.records, samples_accepted: report.samples_accepted, duplicates: report.duplicates, conflicts: report.conflicts })
        }
        Err(error @ ApplyError::Gap { .. }) => Err(Status::out_of_range(format!("shard {shard}: {error}"))),
        Err(error @ (ApplyError::BadRecord { .. } | ApplyError::BadPreamble { .. })) => Err(Status::data_loss(format!("shard {shard}: {error}"))),
        Err(error @ ApplyError::Retryable { .. }) => Err(Status::unavailable(format!("shard {shard}: {error}"))),
        Err(ApplyError::Engine(error)) => Err(engine_status(error)),
    }
}

/// The simulator's planted bug `Bug::ReplicationAckedBeforeApply`: durably records the
/// batch's last seq as applied, answers, and applies the batch a second later (only the
/// simulator can plant it).
async fn planted_ack_before_apply(engine: &Engine, shard: u32, source: Option<ReplicaSource>, tail: WalTail) -> Result<pb::ReplicateReply, Status> {
    let position = engine.replica_position(shard).await.map_err(engine_status)?;
    let through = match tail.records.last() {
        Some(last) => Some(position.map_or(last.seq, |p| p.max(last.seq))),
        None => position,
    };
    engine.set_replica_position_from(shard, through, source).await.map_err(engine_status)?;
    let records = tail.records.len() as u64;
    let engine = engine.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let _ = engine.apply_replicated(shard, &tail).await;
    });
    Ok(pb::ReplicateReply { applied_through: through, records, samples_accepted: 0, duplicates: 0, conflicts: 0 })
}

/// `Data.Position` on the secondary.
pub async fn handle_position(node: &Node, request: pb::PositionRequest) -> Result<pb::PositionReply, Status> {
    let (shard, epoch, from_node) = (request.shard, request.epoch, request.from_node);
    check_secondary(node, shard, epoch, from_node).await?;
    let engine = engine_of(node)?;
    if request.set {
        engine.set_replica_position_from(shard, request.applied_seq, Some(ReplicaSource { primary: from_node, epoch })).await.map_err(engine_status)?;
    }
    let applied_seq = engine.replica_position(shard).await.map_err(engine_status)?;
    let source = engine.replica_source(shard).await.map_err(engine_status)?;
    Ok(pb::PositionReply { applied_seq, source_primary: source.map(|s| s.primary), source_epoch: source.map_or(0, |s| s.epoch) })
}

/// `Data.Digest` on any replica.
pub async fn handle_digest(node: &Node, request: pb::DigestRequest) -> Result<pb::DigestReply, Status> {
    if request.ranges.is_empty() || request.ranges.len() > DIGEST_RANGES_MAX {
        return Err(Status::invalid_argument(format!("a digest takes 1 to {DIGEST_RANGES_MAX} time ranges, not {}", request.ranges.len())));
    }
    let engine = engine_of(node)?;
    let ranges: Vec<(i64, i64)> = request.ranges.iter().map(|r| (r.min_t, r.max_t)).collect();
    let digests = engine.shard_digest_ranges(request.shard, &ranges).await.map_err(engine_status)?;
    let bounds = engine.shard_time_bounds(request.shard).await.map_err(engine_status)?;
    Ok(pb::DigestReply { node: node.router().me(), digests: digests.iter().map(digest_to_pb).collect(), bounds: bounds.map(|(min_t, max_t)| pb::TimeRange { min_t, max_t }) })
}

/// `Data.Export` on any replica.
pub async fn handle_export(node: &Node, request: pb::ExportRequest) -> Result<pb::ExportReply, Status> {
    let engine = engine_of(node)?;
    let after = match request.after {
        Some(after) => Some(series_from_pb(after).map_err(|e| Status::invalid_argument(format!("export `after`: {e}")))?.0),
        None => None,
    };
    let samples_max = (request.samples_max as usize).clamp(1, EXPORT_SAMPLES_MAX);
    let page = engine.shard_export(request.shard, request.min_t, request.max_t, after.as_ref(), samples_max).await.map_err(engine_status)?;
    Ok(pb::ExportReply {
        series: page.series.iter().map(|(key, samples)| series_to_pb(key, samples)).collect(),
        next_after: page.next_after.as_ref().map(|key| series_to_pb(key, &[])),
    })
}

/// Imports `series` into `shard`; with `primary_wins`, a sample whose timestamp holds another
/// value is replaced (the stored sample deleted, the given one imported). Answers (accepted,
/// duplicates, conflicts replaced or, without `primary_wins`, kept).
pub async fn import_series(engine: &Engine, shard: u32, series: Vec<(SeriesKey, Vec<Sample>)>, primary_wins: bool) -> Result<(u64, u64, u64), EngineError> {
    let mut by_tenant: BTreeMap<String, Vec<WriteSeries>> = BTreeMap::new();
    for (key, samples) in series {
        by_tenant.entry(key.tenant).or_default().push(WriteSeries { labels: key.labels, samples });
    }
    let (mut accepted, mut duplicates, mut conflicts) = (0u64, 0u64, 0u64);
    for (tenant, writes) in by_tenant {
        let report = engine.import(shard, &tenant, writes.clone()).await?;
        accepted += report.accepted;
        duplicates += report.duplicates;
        if report.refused_retryable > 0 {
            return Err(EngineError::InvalidArgument { reason: format!("{} samples refused for now by the memory budget; retry", report.refused_retryable) });
        }
        if report.refused_permanent == 0 {
            continue;
        }
        if !primary_wins {
            conflicts += report.refused_permanent;
            continue;
        }
        // Find each conflicting sample exactly (the report details only a few), delete the
        // stored one, import the primary's.
        for write in writes {
            let (Some(first), Some(last)) = (write.samples.first(), write.samples.last()) else { continue };
            let key = SeriesKey::new(tenant.clone(), write.labels.clone());
            let stored = engine.shard_export(shard, first.t, last.t, None, usize::MAX).await?;
            let Some((_, stored)) = stored.series.into_iter().find(|(k, _)| *k == key) else { continue };
            let stored: BTreeMap<i64, u64> = stored.iter().map(|s| (s.t, s.v.to_bits())).collect();
            let mut replaced = Vec::new();
            for s in &write.samples {
                if stored.get(&s.t).is_some_and(|bits| *bits != s.v.to_bits()) {
                    engine.delete_series_in_shard(shard, &key, s.t, s.t).await?;
                    replaced.push(*s);
                }
            }
            if replaced.is_empty() {
                continue;
            }
            conflicts += replaced.len() as u64;
            // The deletion matched series with more labels too: import the whole series again
            // (duplicates are harmless) so nothing of this batch is lost.
            let again = engine.import(shard, &tenant, vec![write.clone()]).await?;
            accepted += again.accepted;
        }
    }
    Ok((accepted, duplicates, conflicts))
}

/// `Data.Import` on the secondary: the primary's series win conflicts.
pub async fn handle_import(node: &Node, request: pb::ImportRequest) -> Result<pb::ImportReply, Status> {
    let (shard, epoch, from_node) = (request.shard, request.epoch, request.from_node);
    check_secondary(node, shard, epoch, from_node).await?;
    let engine = engine_of(node)?;
    let shard_count = node.router().table().shard_count().unwrap_or(engine.shard_ids().len() as u32);
    let mut series = Vec::with_capacity(request.series.len());
    let mut samples_total = 0usize;
    for s in request.series {
        let (key, samples) = series_from_pb(s).map_err(Status::invalid_argument)?;
        let owner = crate::shard::shard_for(sextant_core::series::fingerprint(&key.tenant, &key.labels), shard_count);
        if owner != shard {
            return Err(Status::invalid_argument(format!("series {} of tenant {:?} belongs to shard {owner}, not {shard} (of {shard_count})", key.labels, key.tenant)));
        }
        samples_total += samples.len();
        series.push((key, samples));
    }
    if samples_total > EXPORT_SAMPLES_MAX.max(engine.config().write_samples_max) {
        return Err(Status::invalid_argument(format!("an import carries at most {EXPORT_SAMPLES_MAX} samples, not {samples_total}")));
    }
    let (accepted, duplicates, conflicts_replaced) = import_series(&engine, shard, series, true).await.map_err(engine_status)?;
    Ok(pb::ImportReply { accepted, duplicates, conflicts_replaced })
}

// ---------------------------------------------------------------------------------------------
// Anti-entropy.

/// What a sync did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SyncReport {
    pub windows: usize,
    pub windows_differing: usize,
    /// Samples the primary took from the other replica (merge-back).
    pub pulled_accepted: u64,
    /// Samples the other replica took from the primary.
    pub pushed_accepted: u64,
    /// Samples of the other replica replaced by the primary's value.
    pub conflicts_replaced: u64,
}

/// Aligned windows of `window_ms` covering `[lo, hi]`, widened until at most `windows_max`.
pub fn sync_windows(lo: i64, hi: i64, window_ms: i64, windows_max: usize) -> Vec<(i64, i64)> {
    if lo > hi {
        return Vec::new();
    }
    let mut span = window_ms.max(1);
    loop {
        let first = lo.div_euclid(span);
        let last = hi.div_euclid(span);
        let count = (last as i128 - first as i128 + 1) as u128;
        if count <= windows_max.max(1) as u128 {
            return (first..=last).map(|w| (w.saturating_mul(span), w.saturating_mul(span).saturating_add(span - 1))).collect();
        }
        span = span.saturating_mul(2);
    }
}

fn union_bounds(a: Option<(i64, i64)>, b: Option<(i64, i64)>) -> Option<(i64, i64)> {
    match (a, b) {
        (Some((a0, a1)), Some((b0, b1))) => Some((a0.min(b0), a1.max(b1))),
        (x, None) | (None, x) => x,
    }
}

type Client = DataClient<Channel>;
use sextant_raft::network::addressed;

async fn call<T>(what: &str, timeout_ms: u64, future: impl std::future::Future<Output = Result<tonic::Response<T>, Status>>) -> Result<T, Status> {
    match tokio::time::timeout(Duration::from_millis(timeout_ms), future).await {
        Ok(Ok(reply)) => Ok(reply.into_inner()),
        Ok(Err(status)) => Err(status),
        Err(_) => Err(Status::deadline_exceeded(format!("{what}: no answer within {timeout_ms} ms"))),
    }
}

/// A two-way sync of `shard` between this node (the primary, at `epoch`) and `peer`: digests
/// per aligned window of what either holds; for each window that differs, the peer's series
/// are imported here (merge-back: conflicts keep this node's value) and this node's series are
/// imported there (`Data.Import`: conflicts take this node's value). Writes continue meanwhile;
/// the copy covers everything this node held durably when each window was exported.
pub async fn sync_shard(node: &Node, engine: &Engine, client: &mut Client, peer: u64, shard: u32, epoch: u64) -> Result<SyncReport, String> {
    let me = node.router().me();
    let everything = pb::TimeRange { min_t: i64::MIN, max_t: i64::MAX };
    let remote = call("Digest", SYNC_CALL_TIMEOUT_MS, client.digest(addressed(pb::DigestRequest { shard, ranges: vec![everything] }, peer))).await.map_err(|s| format!("Digest: {}", s.message()))?;
    let local_all = engine.shard_digest(shard, i64::MIN, i64::MAX).await.map_err(|e| e.to_string())?;
    let mut report = SyncReport::default();
    if remote.digests.first().map(digest_from_pb) == Some(local_all) {
        return Ok(report);
    }
    let local_bounds = engine.shard_time_bounds(shard).await.map_err(|e| e.to_string())?;
    let remote_bounds = remote.bounds.map(|b| (b.min_t, b.max_t));
    let Some((lo, hi)) = union_bounds(local_bounds, remote_bounds) else { return Ok(report) };
    let windows = sync_windows(lo, hi, SYNC_WINDOW_MS, SYNC_WINDOWS_MAX);
    report.windows = windows.len();
    let ranges: Vec<pb::TimeRange> = windows.iter().map(|(a, b)| pb::TimeRange { min_t: *a, max_t: *b }).collect();
    let remote = call("Digest", SYNC_CALL_TIMEOUT_MS, client.digest(addressed(pb::DigestRequest { shard, ranges }, peer))).await.map_err(|s| format!("Digest: {}", s.message()))?;
    let local = engine.shard_digest_ranges(shard, &windows).await.map_err(|e| e.to_string())?;
    if remote.digests.len() != windows.len() {
        return Err(format!("Digest answered {} digests for {} ranges", remote.digests.len(), windows.len()));
    }
    for (i, (min_t, max_t)) in windows.iter().copied().enumerate() {
        if digest_from_pb(&remote.digests[i]) == local[i] {
            continue;
        }
        report.windows_differing += 1;
        // Pull first, so the push below carries the union: a series the deletion of a
        // conflict also hit on the peer is restored from it.
        let mut after: Option<pb::TenantSeries> = None;
        loop {
            let page = call("Export", SYNC_CALL_TIMEOUT_MS, client.export(addressed(pb::ExportRequest { shard, min_t, max_t, after: after.take(), samples_max: EXPORT_SAMPLES_MAX as u64 }, peer)))
                .await
                .map_err(|s| format!("Export: {}", s.message()))?;
            let mut series = Vec::with_capacity(page.series.len());
            for s in page.series {
                series.push(series_from_pb(s).map_err(|e| format!("Export answered a bad series: {e}"))?);
            }
            let (accepted, _, _) = import_series(engine, shard, series, false).await.map_err(|e| e.to_string())?;
            report.pulled_accepted += accepted;
            match page.next_after {
                Some(next) => after = Some(next),
                None => break,
            }
        }
        let mut after: Option<SeriesKey> = None;
        loop {
            let page = engine.shard_export(shard, min_t, max_t, after.as_ref(), EXPORT_SAMPLES_MAX).await.map_err(|e| e.to_string())?;
            if !page.series.is_empty() {
                let request = pb::ImportRequest { shard, epoch, from_node: me, series: page.series.iter().map(|(k, s)| series_to_pb(k, s)).collect() };
                let reply = call("Import", REPLICATE_TIMEOUT_MS, client.import(addressed(request, peer))).await.map_err(|s| format!("Import: {}", s.message()))?;
                report.pushed_accepted += reply.accepted;
                report.conflicts_replaced += reply.conflicts_replaced;
            }
            match page.next_after {
                Some(next) => after = Some(next),
                None => break,
            }
        }
    }
    Ok(report)
}

// ---------------------------------------------------------------------------------------------
// The primary's side: supervisor and streams.

struct Task {
    secondary: u64,
    epoch: u64,
    stop: watch::Sender<bool>,
    handle: JoinHandle<()>,
}

/// The shards this node should stream: (shard → (secondary, epoch)).
fn wanted(table: &RouteTable) -> BTreeMap<u32, (u64, u64)> {
    table
        .shards
        .iter()
        .filter(|(_, r)| r.primary == Some(table.me))
        .filter_map(|(shard, r)| r.secondary.filter(|s| *s != table.me).map(|s| (*shard, (s, r.epoch))))
        .collect()
}

async fn stop_task(task: Task) {
    let _ = task.stop.send(true);
    let abort = task.handle.abort_handle();
    if tokio::time::timeout(Duration::from_millis(TASK_STOP_WAIT_MS), task.handle).await.is_err() {
        abort.abort();
    }
}

/// Runs the streams of this node's primary shards until `stop` turns true (see the module
/// docs). Started by `sextant serve` on a cluster member.
pub async fn run(node: Arc<Node>, mut stop: watch::Receiver<bool>) {
    let mut tasks: BTreeMap<u32, Task> = BTreeMap::new();
    let mut tables = node.router().subscribe();
    loop {
        if *stop.borrow() {
            break;
        }
        let table = node.router().table();
        let want = if node.engine().is_ok() { wanted(&table) } else { BTreeMap::new() };
        let stale: Vec<u32> = tasks.iter().filter(|(shard, t)| want.get(shard) != Some(&(t.secondary, t.epoch)) || t.handle.is_finished()).map(|(s, _)| *s).collect();
        for shard in stale {
            if let Some(task) = tasks.remove(&shard) {
                stop_task(task).await;
                node.replication().end(shard);
            }
        }
        for (shard, (secondary, epoch)) in want {
            if tasks.contains_key(&shard) {
                continue;
            }
            node.replication().begin(shard, secondary, epoch);
            let (stop_tx, stop_rx) = watch::channel(false);
            let handle = tokio::spawn(stream(node.clone(), shard, secondary, epoch, stop_rx));
            tasks.insert(shard, Task { secondary, epoch, stop: stop_tx, handle });
        }
        tokio::select! {
            biased; // fixed poll order, not tokio's random start (process-seeded: simulation.md § Determinism)
            _ = tables.changed() => {}
            _ = tokio::time::sleep(Duration::from_millis(SUPERVISE_INTERVAL_MS)) => {}
            // A dropped sender means the server is gone: stop too.
            changed = stop.changed() => if changed.is_err() { break },
        }
    }
    for (shard, task) in std::mem::take(&mut tasks) {
        stop_task(task).await;
        node.replication().end(shard);
    }
}

/// Sleeps `ms` unless `stop` turns true first; answers true when stopped.
async fn pause(stop: &mut watch::Receiver<bool>, ms: u64) -> bool {
    if *stop.borrow() {
        return true;
    }
    tokio::select! {
        biased; // fixed poll order, not tokio's random start (process-seeded: simulation.md § Determinism)
        _ = tokio::time::sleep(Duration::from_millis(ms)) => *stop.borrow(),
        changed = stop.changed() => changed.is_err() || *stop.borrow(),
    }
}

/// Why a streaming round ended.
enum RoundEnd {
    Stopped,
    /// Go back to asking the position; `catch_up` forces a sync first.
    Restart { catch_up: bool, error: String },
}

/// One shard's stream to its secondary (see the module docs).
pub async fn stream(node: Arc<Node>, shard: u32, secondary: u64, epoch: u64, mut stop: watch::Receiver<bool>) {
    let mut backoff_ms = RETRY_BACKOFF_MS_MIN;
    let mut force_catch_up = false;
    loop {
        let end = round(&node, shard, secondary, epoch, force_catch_up, &mut stop).await;
        match end {
            RoundEnd::Stopped => return,
            RoundEnd::Restart { catch_up, error } => {
                force_catch_up = catch_up;
                if !error.is_empty() {
                    tracing::warn!(shard, secondary, epoch, %error, "replication stream: retrying");
                    node.metrics.replication_errors.inc();
                    node.replication().update(shard, |s| {
                        s.state = StreamState::Retrying;
                        s.last_error = error.clone();
                    });
                    if pause(&mut stop, backoff_ms).await {
                        return;
                    }
                    backoff_ms = (backoff_ms * 2).min(RETRY_BACKOFF_MS_MAX);
                } else {
                    backoff_ms = RETRY_BACKOFF_MS_MIN;
                }
            }
        }
    }
}

async fn round(node: &Arc<Node>, shard: u32, secondary: u64, epoch: u64, force_catch_up: bool, stop: &mut watch::Receiver<bool>) -> RoundEnd {
    let restart = |catch_up: bool, error: String| RoundEnd::Restart { catch_up, error };
    let replication = node.replication();
    let me = node.router().me();
    replication.update(shard, |s| s.state = StreamState::Starting);
    let Ok(engine) = node.engine() else { return restart(false, "storage is not open".into()) };
    let addr = node.router().table().addr(secondary);
    let mut client = match node.router().client(&addr).await {
        Ok(client) => client,
        Err(error) => return restart(false, format!("secondary node {secondary}: {error}")),
    };
    let position = match call("Position", REPLICATE_TIMEOUT_MS, client.position(addressed(pb::PositionRequest { shard, epoch, from_node: me, set: false, applied_seq: None }, secondary))).await {
        Ok(reply) => reply,
        Err(status) => {
            node.router().forget(&addr);
            return restart(false, format!("Position from node {secondary}: {}: {}", status.code(), status.message()));
        }
    };
    let ours = position.source_primary == Some(me) && position.source_epoch == epoch;
    let mut acked = match position.applied_seq {
        Some(seq) if ours && !force_catch_up => {
            // The secondary was caught up by this node at this epoch: the sync already ran.
            replication.mark_synced(shard, epoch);
            seq
        }
        _ => {
            // A merge-back waits for this node's lease at the new epoch. The leader grants it
            // only once the previous primary's lease has certainly ended (the fence), so every
            // write the previous primary acknowledged is in its engine before the sync reads
            // it; syncing earlier could miss one it acknowledged in its lease's last moments
            // (an operator's promotion of a live primary, `admin rebalance`) and then clear
            // merge pending without it.
            let merge_back = node.router().table().merge_pending.get(&shard) == Some(&(epoch, secondary));
            while merge_back && node.lease().check(shard, epoch, node.clock().now_monotonic_ns()).is_err() {
                replication.update(shard, |s| s.last_error = format!("merge-back from node {secondary} waits for this node's lease at epoch {epoch}"));
                if pause(stop, REPLICATE_POLL_MS).await {
                    return RoundEnd::Stopped;
                }
            }
            // Catch up: floor at the durable position P, sync, position := P.
            replication.update(shard, |s| s.state = StreamState::Syncing);
            // P: every record at or below it is durable and in the head, so the sync's
            // exports (taken after this) carry it.
            let p = match engine.replication_applied_seq(shard).await {
                Ok(p) => p,
                Err(error) => return restart(false, error.to_string()),
            };
            if let Err(error) = engine.set_replication_floor(shard, Some(p)) {
                return restart(false, error.to_string());
            }
            let started_ns = node.clock().now_monotonic_ns();
            match sync_shard(node, &engine, &mut client, secondary, shard, epoch).await {
                Ok(report) => {
                    let took_ms = node.clock().now_monotonic_ns().saturating_sub(started_ns) / 1_000_000;
                    tracing::info!(shard, secondary, epoch, position = p, took_ms, ?report, "replication: secondary caught up by sync");
                    node.metrics.replication_syncs.inc();
                }
                Err(error) => return restart(true, format!("sync with node {secondary}: {error}")),
            }
            let set = pb::PositionRequest { shard, epoch, from_node: me, set: true, applied_seq: Some(p) };
            if let Err(status) = call("Position", REPLICATE_TIMEOUT_MS, client.position(addressed(set, secondary))).await {
                return restart(true, format!("setting node {secondary}'s position: {}: {}", status.code(), status.message()));
            }
            replication.mark_synced(shard, epoch);
            p
        }
    };
    replication.update(shard, |s| {
        s.state = StreamState::Streaming;
        s.acked_seq = Some(acked);
        s.last_error.clear();
    });
    if let Err(error) = engine.set_replication_floor(shard, Some(acked)) {
        return restart(false, error.to_string());
    }
    loop {
        if *stop.borrow() {
            return RoundEnd::Stopped;
        }
        let logged_next = match engine.wal_next_seq(shard) {
            Ok(n) => n,
            Err(error) => return restart(false, error.to_string()),
        };
        if acked + 1 >= logged_next {
            let now = node.clock().now_monotonic_ns();
            replication.update(shard, |s| s.caught_up_at_ns = now);
            if pause(stop, REPLICATE_POLL_MS).await {
                return RoundEnd::Stopped;
            }
            continue;
        }
        let tail = match engine.wal_tail(shard, acked, REPLICATE_BATCH_BYTES_MAX).await {
            Ok(tail) => tail,
            Err(TailError::Truncated { oldest_seq }) => return restart(true, format!("the WAL no longer holds seq {} (oldest shippable {oldest_seq}); catching up by sync", acked + 1)),
            Err(error) => return restart(false, format!("reading the WAL tail: {error}")),
        };
        replication.update(shard, |s| s.durable_next_seq = tail.durable_next_seq);
        if tail.records.is_empty() {
            // Logged but not durable yet.
            if pause(stop, REPLICATE_POLL_MS).await {
                return RoundEnd::Stopped;
            }
            continue;
        }
        let reply = match call("Replicate", REPLICATE_TIMEOUT_MS, client.replicate(addressed(tail_to_pb(&tail, epoch, me), secondary))).await {
            Ok(reply) => reply,
            Err(status) => {
                let catch_up = status.code() == tonic::Code::OutOfRange;
                if matches!(status.code(), tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled | tonic::Code::DeadlineExceeded) {
                    node.router().forget(&addr);
                }
                return restart(catch_up, format!("Replicate to node {secondary}: {}: {}", status.code(), status.message()));
            }
        };
        node.metrics.replicated_records_sent.inc_by(reply.records);
        let Some(through) = reply.applied_through else { return restart(true, format!("node {secondary} answered no position")) };
        if through < acked {
            return restart(true, format!("node {secondary}'s position went back from {acked} to {through}"));
        }
        acked = through;
        if let Err(error) = engine.set_replication_floor(shard, Some(acked)) {
            return restart(false, error.to_string());
        }
        if reply.conflicts > 0 {
            // The secondary kept other values at some timestamps (first write wins there):
            // a sync makes this node's values win on both and merges back what it lacks.
            replication.update(shard, |s| s.state = StreamState::Syncing);
            match sync_shard(node, &engine, &mut client, secondary, shard, epoch).await {
                Ok(report) => tracing::info!(shard, secondary, conflicts = reply.conflicts, ?report, "replication: conflicting values resolved by sync"),
                Err(error) => return restart(true, format!("sync after {} conflicting samples: {error}", reply.conflicts)),
            }
            node.metrics.replication_syncs.inc();
            replication.update(shard, |s| s.state = StreamState::Streaming);
        }
        let now = node.clock().now_monotonic_ns();
        let caught_up = acked + 1 >= engine.wal_next_seq(shard).unwrap_or(0);
        replication.update(shard, |s| {
            s.acked_seq = Some(acked);
            if caught_up {
                s.caught_up_at_ns = now;
            }
        });
    }
}

// ---------------------------------------------------------------------------------------------
// Admin: verify.

/// One replica's digest of a shard, or why it has none.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicaDigest {
    pub node: u64,
    pub digest: Result<ShardDigest, String>,
}

/// The digest of `shard` over `[min_t, max_t]` on `replica` (this node's engine or a Digest
/// call).
pub async fn replica_digest(node: &Node, replica: u64, shard: u32, min_t: i64, max_t: i64) -> ReplicaDigest {
    let table = node.router().table();
    let digest = if replica == table.me {
        match node.engine() {
            Ok(engine) => engine.shard_digest(shard, min_t, max_t).await.map_err(|e| e.to_string()),
            Err(error) => Err(error),
        }
    } else {
        let addr = table.addr(replica);
        match node.router().client(&addr).await {
            Ok(mut client) => call("Digest", STATUS_TIMEOUT_MS.max(SYNC_CALL_TIMEOUT_MS), client.digest(addressed(pb::DigestRequest { shard, ranges: vec![pb::TimeRange { min_t, max_t }] }, replica)))
                .await
                .map_err(|s| format!("{}: {}", s.code(), s.message()))
                .and_then(|reply| reply.digests.first().map(digest_from_pb).ok_or_else(|| "the Digest answer is empty".to_string())),
            Err(error) => Err(error),
        }
    };
    ReplicaDigest { node: replica, digest }
}

/// The ReplicationStatus of `primary` (this node's own or a call).
pub async fn primary_status(node: &Node, primary: u64) -> Result<pb::ReplicationStatusReply, String> {
    let table = node.router().table();
    if primary == table.me {
        return Ok(node.replication().status(node).await);
    }
    let addr = table.addr(primary);
    let mut client = node.router().client(&addr).await?;
    call("ReplicationStatus", STATUS_TIMEOUT_MS, client.replication_status(addressed(pb::ReplicationStatusRequest {}, primary))).await.map_err(|s| format!("{}: {}", s.code(), s.message()))
}

#[cfg(test)]
mod tests {
    use super::*;

    // Goal: sync windows are aligned, cover the bounds, and widen to respect the cap.
    #[test]
    fn sync_windows_cover_and_respect_the_cap() {
        fn check(lo: i64, hi: i64, window: i64, max: usize, expected: &[(i64, i64)]) {
            assert_eq!(sync_windows(lo, hi, window, max), expected, "[{lo}, {hi}] by {window}, at most {max}");
        }
        check(5, 25, 10, 10, &[(0, 9), (10, 19), (20, 29)]);
        check(-5, 5, 10, 10, &[(-10, -1), (0, 9)]);
        check(5, 25, 10, 2, &[(0, 19), (20, 39)]);
        check(7, 7, 10, 1, &[(0, 9)]);
        check(9, 3, 10, 4, &[]);
        let wide = sync_windows(i64::MIN, i64::MAX, SYNC_WINDOW_MS, SYNC_WINDOWS_MAX);
        assert!(wide.len() <= SYNC_WINDOWS_MAX && !wide.is_empty());
        assert!(wide[0].0 <= i64::MIN / 2 && wide[wide.len() - 1].1 >= i64::MAX / 2);
    }

    // Goal: the lag is 0 when everything logged is acknowledged, else the age of the oldest
    // unacknowledged record when storage knows when it was logged, never more than the time
    // since the stream was last caught up (the bound without it), with the records not
    // acknowledged.
    #[test]
    fn lag_counts_from_the_oldest_unacknowledged_record() {
        let state = |acked: Option<u64>| PrimaryShard {
            secondary: 2,
            epoch: 1,
            state: StreamState::Streaming,
            acked_seq: acked,
            durable_next_seq: 0,
            caught_up_at_ns: 1_000_000_000,
            unprotected: false,
            last_error: String::new(),
        };
        fn check(state: PrimaryShard, logged_next: u64, now_ns: u64, expected: Lag) {
            assert_eq!(lag_of(&state, logged_next, None, now_ns), expected, "{:?} logged_next {logged_next}", state.acked_seq);
        }
        // Sustained writes: never caught up since 1 s, but the oldest record waiting was
        // logged at 3.4 s: 100 ms of lag, not 2.5 s.
        assert_eq!(lag_of(&state(Some(9)), 13, Some(3_400_000_000), 3_500_000_000), Lag { lag_ms: 100, records: 3 });
        // A time before the last caught-up moment cannot be the oldest unacknowledged record's.
        assert_eq!(lag_of(&state(Some(9)), 13, Some(500_000_000), 3_500_000_000), Lag { lag_ms: 2_500, records: 3 });
        assert_eq!(lag_of(&state(Some(9)), 10, Some(3_400_000_000), 3_500_000_000), Lag::default());
        check(state(None), 1, 9_000_000_000, Lag::default());
        check(state(Some(9)), 10, 9_000_000_000, Lag::default());
        check(state(Some(9)), 13, 3_500_000_000, Lag { lag_ms: 2_500, records: 3 });
        check(state(None), 4, 1_000_000_000, Lag { lag_ms: 0, records: 3 });
    }

    // Goal: a tail survives the trip through the Replicate message unchanged.
    #[test]
    fn tail_round_trips_through_protobuf() {
        let tail = WalTail { shard: 3, series: vec![1, 2, 3], series_crc32: 7, records: vec![TailRecord::new(3, 5, vec![9, 9]), TailRecord::new(3, 6, vec![])], durable_next_seq: 7 };
        let request = tail_to_pb(&tail, 4, 2);
        assert_eq!((request.shard, request.epoch, request.from_node), (3, 4, 2));
        assert_eq!(tail_from_pb(request), tail);
    }

    // Goal: Export/Import series are checked like ingest (tenant, labels) and sorted by time.
    #[test]
    fn series_from_pb_checks_input() {
        let label = |n: &str, v: &str| pb::Label { name: n.into(), value: v.into() };
        let ok = pb::TenantSeries { tenant: "t1".into(), labels: vec![label("b", "2"), label("__name__", "m")], samples: vec![pb::Sample { t: 5, v: 1.0 }, pb::Sample { t: 2, v: 0.5 }] };
        let (key, samples) = series_from_pb(ok).unwrap();
        assert_eq!(key.tenant, "t1");
        assert_eq!(key.labels, Labels::from_pairs(&[("__name__", "m"), ("b", "2")]));
        assert_eq!(samples, vec![Sample::new(2, 0.5), Sample::new(5, 1.0)]);
        let bad_tenant = pb::TenantSeries { tenant: "a b/c".into(), labels: vec![label("__name__", "m")], samples: vec![] };
        assert!(series_from_pb(bad_tenant).is_err());
        let duplicate_label = pb::TenantSeries { tenant: "t".into(), labels: vec![label("a", "1"), label("a", "2")], samples: vec![] };
        let error = series_from_pb(duplicate_label).unwrap_err();
        assert!(error.contains("series labels"), "{error}");
    }
}
