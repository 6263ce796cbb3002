//! The cluster data path: which node stores a series, forwarding writes to it, and reading
//! a query's series from every shard (`proto/data.proto`; docs/design/replication.md).
//!
//! - [`RouteTable`]: this node's view of the shard map and the nodes' gRPC addresses, rebuilt
//!   from the metadata group's applied state on every change (`cluster::follow_limits`) and
//!   published through a watch channel, so a sender can wait for its view to move.
//! - [`Router`]: owned by the [`Node`]; forwards one shard's judged series to the shard's
//!   primary over the `Data` service, with a bound on bytes in flight per destination.
//! - [`DataGrpcService`]: the target side — `Write` checks the epoch and imports, `Select`
//!   reads the listed shards within the caller's remaining budget.
//! - [`select`]: the fetch phase of a query over the cluster (one replica per shard, primary
//!   first), merged, with the shards nobody answered for.
//!
//! Without a shard map (a single node before it seeds its map, the simulator, most tests) every
//! shard is local: ingest and queries behave exactly as on a single node. A member of a
//! multi-node cluster without the map refuses writes instead (node.rs, 503).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prost::Message;
use sextant_core::labels::{Label, Labels};
use sextant_core::matcher::{MatchOp, Matcher};
use sextant_core::sample::Sample;
use sextant_core::series::fingerprint;
use sextant_raft::state::MetadataState;
use sextant_storage::acceptance::AcceptanceConfig;
use sextant_storage::engine::{AppendReport, Engine, EngineError, RefusalReason, SampleRefusal, SelectBudget, SelectError, SeriesSamples, WriteSeries, SELECT_SAMPLE_BYTES};
use tokio::sync::watch;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status};

use crate::auth::{authorize, Role};
use crate::limits::LimitRefusals;
use crate::metrics::{DestinationErrorLabels, DestinationLabels};
use crate::node::Node;
use crate::shard::shard_for;

/// The generated protobuf and gRPC code (real or simulated by `cfg(madsim)`).
pub mod pb {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("sextant.data.v1");
}

use pb::data_client::DataClient;
use pb::data_server::{Data, DataServer};

/// The largest Data message either way. A Select answer that would not fit is refused
/// (RESOURCE_EXHAUSTED) rather than cut short.
pub const MESSAGE_BYTES_MAX: usize = 64 * 1024 * 1024;
/// Forwarded write batches are split at this many encoded bytes (well under the message limit,
/// so one batch never holds a destination's whole in-flight allowance).
pub const FORWARD_BATCH_BYTES_MAX: usize = 4 * 1024 * 1024;
/// Longest wait for a forwarded batch's answer (connect included).
pub const FORWARD_TIMEOUT_MS: u64 = 10_000;
/// Longest wait to connect to another node.
pub const CONNECT_TIMEOUT_MS: u64 = 1_000;
/// After an epoch refusal, how long the sender waits for its own view of the shard map to
/// move before answering 503; and how long a target that sees a newer epoch than its own
/// waits for its view to catch up before refusing.
pub const EPOCH_WAIT_MS: u64 = 2_000;
/// Longest wait for one node's Select answer when the query has no tighter deadline.
pub const SELECT_TIMEOUT_MS_MAX: u64 = 120_000;
/// Metadata key of a RESOURCE_EXHAUSTED Select answer: which budget ran out
/// (`series`, `samples`, `bytes`, `message`).
pub const LIMIT_METADATA: &str = "x-sextant-limit";
/// The [`LIMIT_METADATA`] value of a Write refused because the primary's secondary lags past
/// `--replication-lag-max` (the sender answers 429).
pub const REPLICATION_LAG_LIMIT: &str = "replication-lag";

// ---------------------------------------------------------------------------------------------
// The route table.

/// One shard's placement in this node's view.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardRoute {
    pub primary: Option<u64>,
    pub secondary: Option<u64>,
    pub epoch: u64,
}

/// This node's view of the shard map and addresses, at one applied index.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RouteTable {
    /// The metadata group's applied index this view was built from (0: no view yet).
    pub version: u64,
    /// This node's id.
    pub me: u64,
    /// Empty when there is no shard map yet.
    pub shards: BTreeMap<u32, ShardRoute>,
    /// Registered gRPC addresses by node id (the membership's, overridden by registrations).
    pub grpc_addrs: BTreeMap<u64, String>,
    /// Shards promoted whose merge-back has not completed: shard → (the promotion's epoch, the
    /// previous primary).
    pub merge_pending: BTreeMap<u32, (u64, u64)>,
}

/// Where one shard's writes go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Destination {
    /// No shard map, no primary assigned, or this node is the primary: the local engine.
    Local,
    /// Another node: its id, gRPC address (empty when unknown) and the shard's epoch.
    Remote { node: u64, addr: String, epoch: u64 },
}

impl RouteTable {
    /// Builds the view from the applied metadata state.
    pub fn from_state(state: &MetadataState, me: u64) -> RouteTable {
        let version = state.last_applied.map(|id| id.index).unwrap_or(0);
        let mut grpc_addrs: BTreeMap<u64, String> = state.membership.membership().nodes().map(|(id, node)| (*id, node.grpc_addr.clone())).collect();
        for (id, registered) in &state.nodes {
            if !registered.node.grpc_addr.is_empty() {
                grpc_addrs.insert(*id, registered.node.grpc_addr.clone());
            }
        }
        let shards = match &state.shard_map {
            Some(map) => map.shards.iter().map(|(id, s)| (*id, ShardRoute { primary: s.primary, secondary: s.secondary, epoch: s.epoch })).collect(),
            None => BTreeMap::new(),
        };
        let merge_pending = match &state.shard_map {
            Some(map) => map.shards.iter().filter_map(|(id, s)| s.merge_pending.as_ref().map(|m| (*id, (m.epoch, m.from_node)))).collect(),
            None => BTreeMap::new(),
        };
        RouteTable { version, me, shards, grpc_addrs, merge_pending }
    }

    /// The shard count of the map, `None` without a map.
    pub fn shard_count(&self) -> Option<u32> {
        (!self.shards.is_empty()).then_some(self.shards.len() as u32)
    }

    /// The node's registered gRPC address (empty when unknown).
    pub fn addr(&self, node: u64) -> String {
        self.grpc_addrs.get(&node).cloned().unwrap_or_default()
    }

    /// Where `shard`'s writes go.
    pub fn destination(&self, shard: u32) -> Destination {
        match self.shards.get(&shard).and_then(|s| s.primary.map(|p| (p, s.epoch))) {
            Some((primary, epoch)) if primary != self.me => Destination::Remote { node: primary, addr: self.addr(primary), epoch },
            _ => Destination::Local,
        }
    }

    /// True when `shard`'s writes are stored here ([`RouteTable::destination`] is `Local`).
    pub fn writes_locally(&self, shard: u32) -> bool {
        self.shards.get(&shard).and_then(|s| s.primary).is_none_or(|primary| primary == self.me)
    }

    /// True when this node holds `shard` as primary at `epoch`.
    pub fn holds_primary(&self, shard: u32, epoch: u64) -> bool {
        self.shards.get(&shard).is_some_and(|s| s.primary == Some(self.me) && s.epoch == epoch)
    }

    /// This node's primary shards and their epochs (what its lease should list).
    pub fn my_primaries(&self) -> BTreeMap<u32, u64> {
        self.shards.iter().filter(|(_, s)| s.primary == Some(self.me)).map(|(id, s)| (*id, s.epoch)).collect()
    }

    /// The shard's epoch when this node is its primary (its writes then need a lease).
    pub fn primary_epoch(&self, shard: u32) -> Option<u64> {
        self.shards.get(&shard).filter(|s| s.primary == Some(self.me)).map(|s| s.epoch)
    }

    /// What the node's series limits are shared over: the shard count when the map places
    /// shards on more than one node (each primary enforces its shards' shares, limits.rs),
    /// `None` without a map or when one node holds everything (the whole limits apply).
    pub fn limits_shared_over(&self) -> Option<u32> {
        let mut holders = self.shards.values().flat_map(|s| s.primary.into_iter().chain(s.secondary));
        let first = holders.next()?;
        holders.any(|h| h != first).then_some(self.shards.len() as u32)
    }

    /// Where series of `shard` are admitted against the limits (see `limits_shared_over`).
    pub fn placement(&self, shard: u32) -> crate::limits::Placement {
        crate::limits::Placement { shard, shared_over: self.limits_shared_over() }
    }

    fn epoch_of(&self, shard: u32) -> Option<u64> {
        self.shards.get(&shard).map(|s| s.epoch)
    }
}

// ---------------------------------------------------------------------------------------------
// Forwarding.

/// Why one shard's write was not stored, as the client will be told.
#[derive(Debug, thiserror::Error)]
pub enum ShardWriteError {
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// The destination's in-flight bound is full: 429, retryable.
    #[error("forwarding to node {node} is backpressured ({inflight_bytes} bytes in flight, limit {limit_bytes} bytes, --forward-inflight-max)")]
    Backpressure { node: u64, inflight_bytes: u64, limit_bytes: u64 },
    /// The primary could not be reached or did not answer, or refused for a passing reason:
    /// 503, retryable.
    #[error("shard {shard}'s primary node {node} is unavailable: {reason}")]
    Unavailable { shard: u32, node: u64, reason: String },
    /// The primary and this node disagree on the shard's epoch even after this node's view
    /// moved (or did not move within the wait): 503, retryable once the map settles.
    #[error("shard {shard}: node {node} does not hold epoch {epoch} as primary ({reason}); retry once the shard map settles")]
    Epoch { shard: u32, node: u64, epoch: u64, reason: String },
    /// This node is the shard's primary but holds no lease for its epoch (lease.rs): 503,
    /// retryable (the lease is renewed, or the shard is promoted elsewhere).
    #[error(transparent)]
    Lease(crate::lease::LeaseRefusal),
    /// The primary refused for a reason a retry cannot fix (auth, a malformed batch): 500.
    #[error("shard {shard}'s primary node {node} refused the forwarded write: {reason}")]
    Refused { shard: u32, node: u64, reason: String },
    /// This node is the shard's primary and its secondary lags past `--replication-lag-max`:
    /// 429, retryable once the secondary catches up (replicate.rs).
    #[error("shard {shard}: replication to secondary node {secondary} lags {lag_ms} ms, past --replication-lag-max {lag_ms_max} ms; writes to this shard are refused until it catches up (retry)")]
    Lagging { shard: u32, lag_ms: i64, lag_ms_max: i64, secondary: u64 },
    /// The primary (another node) refused for its replication lag: 429, retryable.
    #[error("shard {shard}'s primary node {node} is throttling writes: {reason}")]
    Throttled { shard: u32, node: u64, reason: String },
}

impl ShardWriteError {
    /// The HTTP status a client write gets for this failure.
    pub fn status(&self) -> u16 {
        match self {
            ShardWriteError::Engine(error) => crate::node::engine_error_status(error),
            ShardWriteError::Backpressure { .. } | ShardWriteError::Lagging { .. } | ShardWriteError::Throttled { .. } => 429,
            ShardWriteError::Unavailable { .. } | ShardWriteError::Epoch { .. } | ShardWriteError::Lease(_) => 503,
            ShardWriteError::Refused { .. } => 500,
        }
    }
}

/// Applies the clock rules of time acceptance (too far in the future, too old) with this
/// node's clock reading `now_ms`, as the receiving node must before forwarding (BRIEF.md:
/// time is judged once, where the write arrived). The rules relative to the series' newest
/// sample need the series, which lives on the primary: see replication.md § not yet.
pub fn judge_for_forward(acceptance: &AcceptanceConfig, now_ms: i64, series: Vec<WriteSeries>, report: &mut AppendReport) -> Vec<WriteSeries> {
    let mut out = Vec::with_capacity(series.len());
    for mut write in series {
        let labels = &write.labels;
        write.samples.retain(|sample| match acceptance.judge(now_ms, None, sample.t) {
            Ok(_) => true,
            Err(refusal) => {
                report.refuse(labels, sample.t, refusal.into());
                false
            }
        });
        if !write.samples.is_empty() {
            out.push(write);
        }
    }
    out
}

fn to_pb_series(series: &WriteSeries) -> pb::Series {
    pb::Series {
        labels: series.labels.iter().map(|l| pb::Label { name: l.name.clone(), value: l.value.clone() }).collect(),
        samples: series.samples.iter().map(|s| pb::Sample { t: s.t, v: s.v }).collect(),
    }
}

fn labels_from_pb(labels: Vec<pb::Label>) -> Result<Labels, String> {
    Labels::from_unsorted(labels.into_iter().map(|l| Label::new(l.name, l.value)).collect()).map_err(|e| e.to_string())
}

/// Splits series into write batches of at most [`FORWARD_BATCH_BYTES_MAX`] encoded bytes and
/// `samples_max` samples (a series larger than either is split across batches).
fn batches(series: Vec<WriteSeries>, samples_max: usize) -> Vec<Vec<pb::Series>> {
    let samples_max = samples_max.max(1);
    let mut out: Vec<Vec<pb::Series>> = Vec::new();
    let mut current: Vec<pb::Series> = Vec::new();
    let (mut bytes, mut samples) = (0usize, 0usize);
    for write in series {
        let label_bytes = write.labels.bytes() + 8 * write.labels.len();
        let mut rest = write.samples.as_slice();
        while !rest.is_empty() {
            // Room in this batch, in samples: ~18 encoded bytes per sample.
            let room_bytes = FORWARD_BATCH_BYTES_MAX.saturating_sub(bytes + label_bytes) / 18;
            let room = room_bytes.min(samples_max - samples);
            if room == 0 {
                if current.is_empty() {
                    // A series whose labels alone fill a batch: send it with one sample.
                    let (head, tail) = rest.split_at(1);
                    out.push(vec![to_pb_series(&WriteSeries { labels: write.labels.clone(), samples: head.to_vec() })]);
                    rest = tail;
                } else {
                    out.push(std::mem::take(&mut current));
                    (bytes, samples) = (0, 0);
                }
                continue;
            }
            let take = room.min(rest.len());
            let (head, tail) = rest.split_at(take);
            current.push(to_pb_series(&WriteSeries { labels: write.labels.clone(), samples: head.to_vec() }));
            bytes += label_bytes + 18 * take;
            samples += take;
            rest = tail;
        }
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

fn reply_from_pb(mut reply: pb::WriteReply) -> (AppendReport, LimitRefusals) {
    let mut limits = LimitRefusals::default();
    for count in std::mem::take(&mut reply.limit_refused) {
        *limits.counted.entry((LimitRefusals::kind_of(&count.kind), count.metric)).or_default() += count.samples;
    }
    limits.detailed = std::mem::take(&mut reply.limit_refusals).into_iter().take(crate::limits::LIMIT_REFUSALS_DETAILED_MAX).map(|r| (r.series, r.reason)).collect();
    (report_from_pb(reply), limits)
}

fn reply_to_pb(report: AppendReport, limits: LimitRefusals) -> pb::WriteReply {
    let mut reply = report_to_pb(report);
    reply.limit_refused = limits.counted.into_iter().map(|((kind, metric), samples)| pb::LimitRefusalCount { kind: kind.to_string(), metric, samples }).collect();
    reply.limit_refusals = limits.detailed.into_iter().map(|(series, reason)| pb::LimitRefusal { series, reason }).collect();
    reply
}

fn report_from_pb(reply: pb::WriteReply) -> AppendReport {
    let refusals = reply
        .refusals
        .into_iter()
        .filter_map(|r| {
            let reason = match pb::RefusalKind::try_from(r.kind).ok()? {
                pb::RefusalKind::Conflict => RefusalReason::Conflict { t: r.t, existing_bits: r.existing_bits },
                pb::RefusalKind::ConflictInRequest => RefusalReason::ConflictInRequest { t: r.t },
                pb::RefusalKind::MemoryBudget => RefusalReason::MemoryBudget { budget_bytes: r.budget_bytes },
                pb::RefusalKind::Unspecified => return None,
            };
            Some(SampleRefusal { series: r.series, t: r.t, reason })
        })
        .collect();
    // Kinds this node does not know (a newer target) are counted as `other`.
    let mut refused_by_kind: BTreeMap<&'static str, u64> = BTreeMap::new();
    for (kind, n) in reply.refused_by_kind {
        let kind = RefusalReason::KINDS.iter().find(|k| **k == kind).copied().unwrap_or("other");
        *refused_by_kind.entry(kind).or_default() += n;
    }
    // Labels the target sent back were validated when this node sent them; a bad one is
    // skipped (it only means one phantom series stays counted until it idles out).
    let series_refused_memory = reply.series_refused_memory.into_iter().filter_map(|s| labels_from_pb(s.labels).ok()).collect();
    AppendReport {
        accepted: reply.accepted,
        duplicates: reply.duplicates,
        out_of_order: reply.out_of_order,
        series_created: reply.series_created,
        refused_permanent: reply.refused_permanent,
        refused_retryable: reply.refused_retryable,
        refused_by_kind,
        refusals,
        series_refused_memory,
    }
}

fn report_to_pb(report: AppendReport) -> pb::WriteReply {
    let refusals = report
        .refusals
        .into_iter()
        .filter_map(|r| {
            let (kind, existing_bits, budget_bytes) = match r.reason {
                RefusalReason::Conflict { existing_bits, .. } => (pb::RefusalKind::Conflict, existing_bits, 0),
                RefusalReason::ConflictInRequest { .. } => (pb::RefusalKind::ConflictInRequest, 0, 0),
                RefusalReason::MemoryBudget { budget_bytes } => (pb::RefusalKind::MemoryBudget, 0, budget_bytes),
                // Imports skip time rules, so a time refusal cannot come from one.
                RefusalReason::Time(_) => return None,
            };
            Some(pb::Refusal { series: r.series, t: r.t, kind: kind as i32, existing_bits, budget_bytes })
        })
        .collect();
    pb::WriteReply {
        accepted: report.accepted,
        duplicates: report.duplicates,
        out_of_order: report.out_of_order,
        series_created: report.series_created,
        refused_permanent: report.refused_permanent,
        refused_retryable: report.refused_retryable,
        refusals,
        refused_by_kind: report.refused_by_kind.into_iter().map(|(kind, n)| (kind.to_string(), n)).collect(),
        series_refused_memory: report.series_refused_memory.iter().map(|labels| pb::Series { labels: labels.iter().map(|l| pb::Label { name: l.name.clone(), value: l.value.clone() }).collect(), samples: vec![] }).collect(),
        limit_refused: Vec::new(),
        limit_refusals: Vec::new(),
    }
}

/// Holds a destination's in-flight bytes until dropped.
struct InflightGuard<'a> {
    router: &'a Router,
    node: u64,
    bytes: u64,
}

impl Drop for InflightGuard<'_> {
    fn drop(&mut self) {
        let mut inflight = self.router.inflight.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(current) = inflight.get_mut(&self.node) {
            *current = current.saturating_sub(self.bytes);
        }
    }
}

/// The sender side of the data path, owned by the node.
pub struct Router {
    me: u64,
    table_tx: watch::Sender<Arc<RouteTable>>,
    inflight_bytes_max: u64,
    inflight: Mutex<BTreeMap<u64, u64>>,
    channels: Mutex<BTreeMap<String, Channel>>,
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Router").field("me", &self.me).finish()
    }
}

/// What forwarding one shard's write needs to know about the client's request.
pub struct ForwardContext<'a> {
    pub tenant: &'a str,
    /// The client's `authorization` header, passed on when tokens are configured.
    pub authorization: Option<&'a str>,
    pub judged_at_ms: i64,
}

impl Router {
    pub fn new(me: u64, inflight_bytes_max: u64) -> Router {
        let (table_tx, _) = watch::channel(Arc::new(RouteTable { me, ..RouteTable::default() }));
        Router { me, table_tx, inflight_bytes_max: inflight_bytes_max.max(1), inflight: Mutex::new(BTreeMap::new()), channels: Mutex::new(BTreeMap::new()) }
    }

    pub fn me(&self) -> u64 {
        self.me
    }

    /// The current view.
    pub fn table(&self) -> Arc<RouteTable> {
        self.table_tx.borrow().clone()
    }

    /// Replaces the view when it changed (the metadata group applied something).
    pub fn set_table(&self, table: RouteTable) {
        self.table_tx.send_if_modified(|current| {
            if **current == table {
                return false;
            }
            *current = Arc::new(table);
            true
        });
    }

    /// A receiver of the view's changes (the replication supervisor follows it).
    pub fn subscribe(&self) -> watch::Receiver<Arc<RouteTable>> {
        self.table_tx.subscribe()
    }

    /// Waits up to `wait` for a view holding `shard` at `epoch` or later; answers the view then.
    pub async fn table_with_epoch(&self, shard: u32, epoch: u64, wait: Duration) -> Arc<RouteTable> {
        let mut rx = self.table_tx.subscribe();
        let _ = tokio::time::timeout(wait, rx.wait_for(|t| t.epoch_of(shard).is_some_and(|held| held >= epoch))).await;
        self.table()
    }

    /// Drops the cached channel to `addr` (the next call reconnects).
    pub fn forget(&self, addr: &str) {
        self.forget_channel(addr);
    }

    /// Waits up to `wait` for the view to be newer than `version`; answers the view then.
    async fn table_after(&self, version: u64, wait: Duration) -> Arc<RouteTable> {
        let mut rx = self.table_tx.subscribe();
        let _ = tokio::time::timeout(wait, rx.wait_for(|t| t.version > version)).await;
        self.table()
    }

    async fn channel(&self, addr: &str) -> Result<Channel, String> {
        if let Some(channel) = self.channels.lock().unwrap_or_else(|p| p.into_inner()).get(addr) {
            return Ok(channel.clone());
        }
        if addr.is_empty() {
            return Err("its gRPC address is not known yet (the node has not registered)".into());
        }
        let timeout = Duration::from_millis(CONNECT_TIMEOUT_MS);
        let endpoint = Endpoint::from_shared(format!("http://{addr}")).map_err(|e| format!("bad address {addr:?}: {e}"))?.connect_timeout(timeout);
        let channel = match tokio::time::timeout(timeout, endpoint.connect()).await {
            Ok(Ok(channel)) => channel,
            Ok(Err(error)) => return Err(format!("cannot connect to {addr}: {error}")),
            Err(_) => return Err(format!("cannot connect to {addr} within {CONNECT_TIMEOUT_MS} ms")),
        };
        self.channels.lock().unwrap_or_else(|p| p.into_inner()).insert(addr.to_string(), channel.clone());
        Ok(channel)
    }

    fn forget_channel(&self, addr: &str) {
        self.channels.lock().unwrap_or_else(|p| p.into_inner()).remove(addr);
    }

    /// A Data client over the cached channel to `addr`, with the message limits.
    pub async fn client(&self, addr: &str) -> Result<DataClient<Channel>, String> {
        let channel = self.channel(addr).await?;
        Ok(DataClient::new(channel).max_decoding_message_size(MESSAGE_BYTES_MAX).max_encoding_message_size(MESSAGE_BYTES_MAX))
    }

    fn reserve(&self, node: u64, bytes: u64) -> Result<InflightGuard<'_>, ShardWriteError> {
        let mut inflight = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
        let current = inflight.entry(node).or_default();
        // One batch always fits an idle destination, so a limit below the batch size slows
        // forwarding down instead of stopping it.
        if *current > 0 && current.saturating_add(bytes) > self.inflight_bytes_max {
            return Err(ShardWriteError::Backpressure { node, inflight_bytes: *current, limit_bytes: self.inflight_bytes_max });
        }
        *current += bytes;
        Ok(InflightGuard { router: self, node, bytes })
    }

    /// Sends one batch; `Err(Ok(reason))` is an epoch refusal, `Err(Err(e))` anything else.
    async fn send(&self, node: &Node, dest: u64, addr: &str, request: pb::WriteRequest, authorization: Option<&str>) -> Result<(AppendReport, LimitRefusals), Result<String, ShardWriteError>> {
        let shard = request.shard;
        let samples: u64 = request.series.iter().map(|s| s.samples.len() as u64).sum();
        let bytes = request.encoded_len() as u64;
        let metric_node = dest.to_string();
        let error = |reason: &str| {
            node.metrics.forward_errors.get_or_create(&DestinationErrorLabels { node: metric_node.clone(), reason: reason.to_string() }).inc();
        };
        let _guard = self.reserve(dest, bytes).map_err(|e| {
            error("backpressure");
            Err(e)
        })?;
        let unavailable = |reason: String| Err(ShardWriteError::Unavailable { shard, node: dest, reason });
        let mut client = self.client(addr).await.map_err(|reason| {
            error("unreachable");
            unavailable(reason)
        })?;
        let mut grpc_request = sextant_raft::network::addressed(request, dest);
        if let Some(value) = authorization.and_then(|a| a.parse().ok()) {
            grpc_request.metadata_mut().insert("authorization", value);
        }
        let answer = match tokio::time::timeout(Duration::from_millis(FORWARD_TIMEOUT_MS), client.write(grpc_request)).await {
            Ok(answer) => answer,
            Err(_) => {
                error("timeout");
                return Err(unavailable(format!("no answer from {addr} within {FORWARD_TIMEOUT_MS} ms")));
            }
        };
        match answer {
            Ok(reply) => {
                node.metrics.forwarded_samples.get_or_create(&DestinationLabels { node: metric_node.clone() }).inc_by(samples);
                node.metrics.forwarded_bytes.get_or_create(&DestinationLabels { node: metric_node.clone() }).inc_by(bytes);
                Ok(reply_from_pb(reply.into_inner()))
            }
            Err(status) => {
                let reason = format!("{}: {}", status.code(), status.message());
                let lagging = status.code() == tonic::Code::ResourceExhausted && status.metadata().get(LIMIT_METADATA).and_then(|v| v.to_str().ok()) == Some(REPLICATION_LAG_LIMIT);
                match status.code() {
                    tonic::Code::FailedPrecondition => {
                        error("epoch");
                        Err(Ok(reason))
                    }
                    _ if lagging => {
                        error("replication_lag");
                        Err(Err(ShardWriteError::Throttled { shard, node: dest, reason: status.message().to_string() }))
                    }
                    tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::ResourceExhausted | tonic::Code::Aborted | tonic::Code::Unknown | tonic::Code::Cancelled => {
                        error("unreachable");
                        // The connection may be dead: the next batch reconnects.
                        self.forget_channel(addr);
                        Err(unavailable(reason))
                    }
                    _ => {
                        error("refused");
                        Err(Err(ShardWriteError::Refused { shard, node: dest, reason }))
                    }
                }
            }
        }
    }

    /// Stores one shard's already judged series on the shard's primary `dest` (another node)
    /// at `epoch`, in batches. On an epoch refusal the sender waits (bounded) for its own view
    /// to move and tries once more where the shard's primary now is — possibly this node —
    /// then gives up with [`ShardWriteError::Epoch`] (503).
    pub async fn forward(&self, node: &Node, engine: &Engine, ctx: &ForwardContext<'_>, shard: u32, dest: (u64, String, u64), series: Vec<WriteSeries>) -> Result<(AppendReport, LimitRefusals), ShardWriteError> {
        let (mut dest_node, mut addr, mut epoch) = dest;
        let mut total = AppendReport::default();
        let mut limits = LimitRefusals::default();
        let mut pending: Vec<Vec<pb::Series>> = batches(series, engine.config().write_samples_max);
        let mut retried = false;
        while !pending.is_empty() {
            let batch = pending.remove(0);
            let request = pb::WriteRequest { tenant: ctx.tenant.to_string(), shard, epoch, judged_at_ms: ctx.judged_at_ms, from_node: self.me, series: batch.clone() };
            match self.send(node, dest_node, &addr, request, ctx.authorization).await {
                Ok((report, refused)) => {
                    total.add(report);
                    limits.merge(refused);
                }
                Err(Err(error)) => return Err(error),
                Err(Ok(reason)) => {
                    let used = Destination::Remote { node: dest_node, addr: addr.clone(), epoch };
                    let mut fresh = self.table();
                    if !retried && fresh.destination(shard) == used {
                        // This node's view has not moved yet: wait for it, bounded.
                        fresh = self.table_after(fresh.version, Duration::from_millis(EPOCH_WAIT_MS)).await;
                    }
                    if retried || fresh.destination(shard) == used {
                        return Err(ShardWriteError::Epoch { shard, node: dest_node, epoch, reason });
                    }
                    retried = true;
                    pending.insert(0, batch);
                    match fresh.destination(shard) {
                        Destination::Local => {
                            // This node became the primary: store the rest here, judged as
                            // they were.
                            node.replication().check_write(&fresh, shard, engine, node.lease())?;
                            node.seed_primary_shards(engine, &fresh).await;
                            for batch in pending.drain(..) {
                                let series = batch
                                    .into_iter()
                                    .map(|s| WriteSeries { labels: Labels::from_sorted(s.labels.into_iter().map(|l| Label::new(l.name, l.value)).collect()), samples: s.samples.into_iter().map(|x| Sample::new(x.t, x.v)).collect() })
                                    .collect();
                                let (report, refused) = import_admitted(node, engine, &fresh, ctx.tenant, shard, series).await?;
                                total.add(report);
                                limits.merge(refused);
                            }
                        }
                        Destination::Remote { node, addr: new_addr, epoch: new_epoch } => {
                            (dest_node, addr, epoch) = (node, new_addr, new_epoch);
                        }
                    }
                }
            }
        }
        Ok((total, limits))
    }
}

/// Stores a batch of `shard` as its primary: admits its series against the tenant's limits
/// (the shard's share in a cluster), imports what was admitted, and uncounts the series the
/// memory budget refused to create (a failed import keeps its new series counted, as
/// `Node::ingest_as` explains).
async fn import_admitted(node: &Node, engine: &Engine, table: &RouteTable, tenant: &str, shard: u32, series: Vec<WriteSeries>) -> Result<(AppendReport, LimitRefusals), EngineError> {
    let (admitted, refused) = node.admit_as_primary(table, tenant, shard, series);
    let report = engine.import(shard, tenant, admitted).await?;
    node.forget_series(tenant, &report.series_refused_memory);
    Ok((report, refused))
}

// ---------------------------------------------------------------------------------------------
// The Data service (the target side).

/// The `Data` gRPC service: forwarded writes and fan-out reads for this node's shards.
pub struct DataGrpcService {
    node: Arc<Node>,
}

/// Adds the Data service to the node's gRPC server (the one the raft transport runs on).
pub fn add_services(node: Arc<Node>, router: tonic::transport::server::Router) -> tonic::transport::server::Router {
    router.add_service(DataGrpcService { node }.into_server())
}

impl DataGrpcService {
    pub fn new(node: Arc<Node>) -> DataGrpcService {
        DataGrpcService { node }
    }

    #[cfg(not(madsim))]
    pub fn into_server(self) -> DataServer<DataGrpcService> {
        DataServer::new(self).max_decoding_message_size(MESSAGE_BYTES_MAX).max_encoding_message_size(MESSAGE_BYTES_MAX)
    }

    #[cfg(madsim)]
    pub fn into_server(self) -> DataServer<DataGrpcService, tonic::codegen::IdentityInterceptor> {
        DataServer::new(self).max_decoding_message_size(MESSAGE_BYTES_MAX).max_encoding_message_size(MESSAGE_BYTES_MAX)
    }

    /// Checks the forwarded client token (when the node has tokens) for `tenant` and `role`.
    fn authorize<T>(&self, request: &Request<T>, tenant: &str, role: Role) -> Result<(), Status> {
        crate::auth::validate_tenant(tenant).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let header = match request.metadata().get("authorization") {
            Some(value) => Some(value.to_str().map_err(|_| Status::unauthenticated("authorization metadata is not ASCII text"))?),
            None => None,
        };
        authorize(self.node.tokens(), header, Some(tenant), role).map(|_| ()).map_err(|error| match error.status() {
            401 => Status::unauthenticated(format!("{error}; internal calls carry the client's token (do all nodes share the tokens file?)")),
            400 => Status::invalid_argument(error.to_string()),
            _ => Status::permission_denied(error.to_string()),
        })
    }

    fn engine(&self) -> Result<Engine, Status> {
        self.node.engine().map_err(Status::unavailable)
    }

    /// The shard count this node routes by: the map's, else its engine's.
    fn shard_count(&self, engine: &Engine) -> u32 {
        self.node.router().table().shard_count().unwrap_or(engine.shard_ids().len() as u32)
    }
}

fn matcher_from_pb(m: pb::Matcher) -> Result<Matcher, Status> {
    let op = match pb::MatcherType::try_from(m.r#type) {
        Ok(pb::MatcherType::Equal) => MatchOp::Equal,
        Ok(pb::MatcherType::NotEqual) => MatchOp::NotEqual,
        Ok(pb::MatcherType::Regex) => MatchOp::RegexMatch,
        Ok(pb::MatcherType::NotRegex) => MatchOp::RegexNoMatch,
        Err(_) => return Err(Status::invalid_argument(format!("matcher type {} is not 0..=3 (=, !=, =~, !~)", m.r#type))),
    };
    Matcher::new(op, m.name, m.value).map_err(|e| Status::invalid_argument(e.to_string()))
}

fn matcher_to_pb(m: &Matcher) -> pb::Matcher {
    let kind = match m.op {
        MatchOp::Equal => pb::MatcherType::Equal,
        MatchOp::NotEqual => pb::MatcherType::NotEqual,
        MatchOp::RegexMatch => pb::MatcherType::Regex,
        MatchOp::RegexNoMatch => pb::MatcherType::NotRegex,
    };
    pb::Matcher { r#type: kind as i32, name: m.name.clone(), value: m.value.clone() }
}

fn limit_status(error: SelectError) -> Status {
    let which = match &error {
        SelectError::TooManySeries { .. } => "series",
        SelectError::TooManySamples { .. } => "samples",
        SelectError::TooManyBytes { .. } => "bytes",
        SelectError::Engine(e) => {
            return if e.is_retryable() { Status::unavailable(format!("reading storage: {e}")) } else { Status::internal(format!("reading storage: {e}")) };
        }
    };
    let mut status = Status::resource_exhausted(error.to_string());
    if let Ok(value) = which.parse() {
        status.metadata_mut().insert(LIMIT_METADATA, value);
    }
    status
}

fn usize_of(n: u64) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}

#[tonic::async_trait]
impl Data for DataGrpcService {
    async fn write(&self, request: Request<pb::WriteRequest>) -> Result<Response<pb::WriteReply>, Status> {
        sextant_raft::network::check_addressed(&request, self.node.config().cluster.node_id)?;
        let tenant = request.get_ref().tenant.clone();
        self.authorize(&request, &tenant, Role::Write)?;
        let request = request.into_inner();
        let engine = self.engine()?;
        if engine.wal_stats().poisoned {
            return Err(Status::unavailable("WAL poisoned by an fsync error; writes are refused until the node restarts"));
        }
        let router = self.node.router();
        let mut table = router.table();
        if !table.holds_primary(request.shard, request.epoch) && table.epoch_of(request.shard).is_none_or(|held| held < request.epoch) {
            // The sender saw a newer map than this node has applied: wait for it, bounded.
            let mut rx = router.table_tx.subscribe();
            let (shard, epoch) = (request.shard, request.epoch);
            let _ = tokio::time::timeout(Duration::from_millis(EPOCH_WAIT_MS), rx.wait_for(|t| t.epoch_of(shard).is_some_and(|held| held >= epoch))).await;
            table = router.table();
        }
        if !table.holds_primary(request.shard, request.epoch) {
            let held = match table.shards.get(&request.shard) {
                None if table.shards.is_empty() => "this node has no shard map applied yet".to_string(),
                None => format!("the shard map has no shard {}", request.shard),
                Some(s) => format!("this node's map (applied index {}) has shard {} at epoch {} with primary {:?}", table.version, request.shard, s.epoch, s.primary),
            };
            return Err(Status::failed_precondition(format!(
                "node {} refuses a write for shard {} at epoch {} from node {}: {held}",
                table.me, request.shard, request.epoch, request.from_node
            )));
        }
        if let Err(error) = self.node.replication().check_write(&table, request.shard, &engine, self.node.lease()) {
            let mut status = Status::resource_exhausted(error.to_string());
            if let Ok(value) = REPLICATION_LAG_LIMIT.parse() {
                status.metadata_mut().insert(LIMIT_METADATA, value);
            }
            return Err(status);
        }
        // A primary acknowledges only under a lease for exactly this epoch: checked before the
        // import and again before answering, since the lease may end while the WAL syncs.
        let lease_status = |refusal: crate::lease::LeaseRefusal| Status::unavailable(format!("node {} refuses a write for shard {} at epoch {}: {refusal}", table.me, request.shard, request.epoch));
        self.node.await_lease(request.shard, request.epoch).await.map_err(lease_status)?;
        let shard_count = table.shard_count().unwrap_or(1);
        let mut series = Vec::with_capacity(request.series.len());
        for s in request.series {
            let labels = labels_from_pb(s.labels).map_err(|e| Status::invalid_argument(format!("series labels: {e}")))?;
            let owner = shard_for(fingerprint(&tenant, &labels), shard_count);
            if owner != request.shard {
                return Err(Status::invalid_argument(format!("series {labels} belongs to shard {owner}, not {} (of {shard_count})", request.shard)));
            }
            series.push(WriteSeries { labels, samples: s.samples.into_iter().map(|x| Sample::new(x.t, x.v)).collect() });
        }
        self.node.seed_primary_shards(&engine, &table).await;
        let (report, refused) = import_admitted(&self.node, &engine, &table, &tenant, request.shard, series).await.map_err(|error| {
            if error.is_retryable() || matches!(error, EngineError::Closed | EngineError::Wal(_)) {
                Status::unavailable(format!("storage: {error}"))
            } else {
                Status::internal(format!("storage: {error}"))
            }
        })?;
        self.node.lease_for_ack(request.shard, request.epoch).map_err(lease_status)?;
        self.node.metrics.forwarded_samples_applied.inc_by(report.accepted + report.duplicates);
        self.node.metrics.samples_stored.inc_by(report.accepted);
        Ok(Response::new(reply_to_pb(report, refused)))
    }

    async fn select(&self, request: Request<pb::SelectRequest>) -> Result<Response<pb::SelectReply>, Status> {
        sextant_raft::network::check_addressed(&request, self.node.config().cluster.node_id)?;
        let tenant = request.get_ref().tenant.clone();
        self.authorize(&request, &tenant, Role::Read)?;
        let request = request.into_inner();
        let engine = self.engine()?;
        let shard_count = self.shard_count(&engine);
        if request.shard_count != shard_count {
            return Err(Status::failed_precondition(format!("the sender routes by {} shards, this node by {shard_count}", request.shard_count)));
        }
        let matchers = request.matchers.into_iter().map(matcher_from_pb).collect::<Result<Vec<_>, _>>()?;
        let shards: BTreeSet<u32> = request.shards.into_iter().collect();
        let mut budget = SelectBudget::new(usize_of(request.series_max), usize_of(request.samples_max), usize_of(request.bytes_max));
        let found = read_local(&engine, &tenant, &matchers, request.min_t, request.max_t, &mut budget, request.labels_only, &shards, shard_count).await.map_err(limit_status)?;
        // Judged after the read: a lease that lapsed while reading is doubted too.
        let table = self.node.router().table();
        let doubts = shards.iter().filter_map(|&shard| primary_read_doubt(&self.node, &table, shard).map(|reason| pb::ShardDoubt { shard, reason })).collect();
        let reply = pb::SelectReply {
            doubts,
            series: found
                .iter()
                .map(|s| pb::Series {
                    labels: s.labels.iter().map(|l| pb::Label { name: l.name.clone(), value: l.value.clone() }).collect(),
                    samples: s.samples.iter().map(|x| pb::Sample { t: x.t, v: x.v }).collect(),
                })
                .collect(),
        };
        if reply.encoded_len() > MESSAGE_BYTES_MAX - 1024 {
            let mut status = Status::resource_exhausted(format!("the answer would exceed the {MESSAGE_BYTES_MAX}-byte message limit between nodes; narrow the query"));
            if let Ok(value) = "message".parse() {
                status.metadata_mut().insert(LIMIT_METADATA, value);
            }
            return Err(status);
        }
        Ok(Response::new(reply))
    }

    async fn replicate(&self, request: Request<pb::ReplicateRequest>) -> Result<Response<pb::ReplicateReply>, Status> {
        sextant_raft::network::check_addressed(&request, self.node.config().cluster.node_id)?;
        crate::replicate::handle_replicate(&self.node, request.into_inner()).await.map(Response::new)
    }

    async fn position(&self, request: Request<pb::PositionRequest>) -> Result<Response<pb::PositionReply>, Status> {
        sextant_raft::network::check_addressed(&request, self.node.config().cluster.node_id)?;
        crate::replicate::handle_position(&self.node, request.into_inner()).await.map(Response::new)
    }

    async fn digest(&self, request: Request<pb::DigestRequest>) -> Result<Response<pb::DigestReply>, Status> {
        sextant_raft::network::check_addressed(&request, self.node.config().cluster.node_id)?;
        crate::replicate::handle_digest(&self.node, request.into_inner()).await.map(Response::new)
    }

    async fn export(&self, request: Request<pb::ExportRequest>) -> Result<Response<pb::ExportReply>, Status> {
        sextant_raft::network::check_addressed(&request, self.node.config().cluster.node_id)?;
        let reply = crate::replicate::handle_export(&self.node, request.into_inner()).await?;
        if reply.encoded_len() > MESSAGE_BYTES_MAX - 1024 {
            return Err(Status::resource_exhausted(format!("the export page would exceed the {MESSAGE_BYTES_MAX}-byte message limit between nodes; ask for fewer samples per page")));
        }
        Ok(Response::new(reply))
    }

    async fn import(&self, request: Request<pb::ImportRequest>) -> Result<Response<pb::ImportReply>, Status> {
        sextant_raft::network::check_addressed(&request, self.node.config().cluster.node_id)?;
        crate::replicate::handle_import(&self.node, request.into_inner()).await.map(Response::new)
    }

    async fn replication_status(&self, request: Request<pb::ReplicationStatusRequest>) -> Result<Response<pb::ReplicationStatusReply>, Status> {
        sextant_raft::network::check_addressed(&request, self.node.config().cluster.node_id)?;
        Ok(Response::new(self.node.replication().status(&self.node).await))
    }
}

/// Reads `shards` from the local engine. The engine selects over all its shards, so series of
/// other shards are dropped after the read (and were charged to the budget: an overestimate).
#[allow(clippy::too_many_arguments)]
async fn read_local(
    engine: &Engine,
    tenant: &str,
    matchers: &[Matcher],
    min_t: i64,
    max_t: i64,
    budget: &mut SelectBudget,
    labels_only: bool,
    shards: &BTreeSet<u32>,
    shard_count: u32,
) -> Result<Vec<SeriesSamples>, SelectError> {
    let wanted = |labels: &Labels| shards.contains(&shard_for(fingerprint(tenant, labels), shard_count));
    if labels_only {
        let labels = engine.select_labels(tenant, matchers, min_t, max_t, budget).await?;
        Ok(labels.into_iter().filter(|l| wanted(l)).map(|labels| SeriesSamples { labels, samples: Vec::new() }).collect())
    } else {
        let series = engine.select_bounded(tenant, matchers, min_t, max_t, budget).await?;
        Ok(series.into_iter().filter(|s| wanted(&s.labels)).collect())
    }
}

// ---------------------------------------------------------------------------------------------
// Query fan-out.

/// What a cluster read found.
#[derive(Debug, Default)]
pub struct Selected {
    /// Sorted by labels; samples empty for a labels-only read.
    pub series: Vec<SeriesSamples>,
    /// Warnings for the response: shards nobody answered for, or answered by a replica that
    /// may lack acknowledged samples.
    pub warnings: Vec<String>,
}

/// One read of a query against the cluster.
pub struct ReadRequest<'a> {
    pub tenant: &'a str,
    pub matchers: &'a [Matcher],
    pub min_t: i64,
    pub max_t: i64,
    pub labels_only: bool,
    pub authorization: Option<&'a str>,
    /// How long one node's answer may take.
    pub timeout: Duration,
}

/// Charges a remote answer to the query's budget, as the engine would have.
fn charge(budget: &mut SelectBudget, series: &[SeriesSamples]) -> Result<(), SelectError> {
    for s in series {
        budget.series += 1;
        budget.samples = budget.samples.saturating_add(s.samples.len());
        budget.bytes = budget.bytes.saturating_add(s.labels.bytes()).saturating_add(s.samples.len().saturating_mul(SELECT_SAMPLE_BYTES));
    }
    if budget.series > budget.series_max {
        return Err(SelectError::TooManySeries { max: budget.series_max });
    }
    if budget.samples > budget.samples_max {
        return Err(SelectError::TooManySamples { max: budget.samples_max });
    }
    if budget.bytes > budget.bytes_max {
        return Err(SelectError::TooManyBytes { bytes: budget.bytes, max: budget.bytes_max });
    }
    Ok(())
}

/// Why one node's Select failed: a query limit (fails the query) or anything else (its shards
/// go to the next replica or into a warning).
enum RemoteFailure {
    Limit(SelectError),
    Unavailable(String),
}

/// A remote node's answer: its series, and the shards it cannot vouch for as primary
/// ([`primary_read_doubt`] on its side).
type RemoteAnswer = (Vec<SeriesSamples>, BTreeMap<u32, String>);

async fn remote_select(node: &Node, dest: u64, addr: &str, read: &ReadRequest<'_>, shards: &BTreeSet<u32>, shard_count: u32, budget: &SelectBudget) -> Result<RemoteAnswer, RemoteFailure> {
    let router = node.router();
    node.metrics.fanout_selects.get_or_create(&DestinationLabels { node: dest.to_string() }).inc();
    let mut client = router.client(addr).await.map_err(RemoteFailure::Unavailable)?;
    let request = pb::SelectRequest {
        tenant: read.tenant.to_string(),
        matchers: read.matchers.iter().map(matcher_to_pb).collect(),
        min_t: read.min_t,
        max_t: read.max_t,
        shards: shards.iter().copied().collect(),
        series_max: budget.series_max.saturating_sub(budget.series) as u64,
        samples_max: budget.samples_max.saturating_sub(budget.samples) as u64,
        bytes_max: budget.bytes_max.saturating_sub(budget.bytes) as u64,
        labels_only: read.labels_only,
        shard_count,
    };
    let mut grpc_request = sextant_raft::network::addressed(request, dest);
    if let Some(value) = read.authorization.and_then(|a| a.parse().ok()) {
        grpc_request.metadata_mut().insert("authorization", value);
    }
    let reply = match tokio::time::timeout(read.timeout, client.select(grpc_request)).await {
        Err(_) => return Err(RemoteFailure::Unavailable(format!("no answer from {addr} within {} ms", read.timeout.as_millis()))),
        Ok(Err(status)) => {
            if status.code() == tonic::Code::ResourceExhausted {
                let which = status.metadata().get(LIMIT_METADATA).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
                let error = match which.as_str() {
                    "series" => SelectError::TooManySeries { max: budget.series_max },
                    "samples" => SelectError::TooManySamples { max: budget.samples_max },
                    "bytes" => SelectError::TooManyBytes { bytes: budget.bytes_max.saturating_add(1), max: budget.bytes_max },
                    _ => return Err(RemoteFailure::Unavailable(format!("node {dest}: {}", status.message()))),
                };
                return Err(RemoteFailure::Limit(error));
            }
            if matches!(status.code(), tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled) {
                router.forget_channel(addr);
            }
            return Err(RemoteFailure::Unavailable(format!("{}: {}", status.code(), status.message())));
        }
        Ok(Ok(reply)) => reply.into_inner(),
    };
    let mut out = Vec::with_capacity(reply.series.len());
    for s in reply.series {
        let labels = labels_from_pb(s.labels).map_err(|e| RemoteFailure::Unavailable(format!("node {dest} answered invalid labels: {e}")))?;
        out.push(SeriesSamples { labels, samples: s.samples.into_iter().map(|x| Sample::new(x.t, x.v)).collect() });
    }
    let doubts = reply.doubts.into_iter().filter(|d| shards.contains(&d.shard)).map(|d| (d.shard, d.reason)).collect();
    Ok((out, doubts))
}

/// Why this node cannot vouch, as `shard`'s primary, that its copy holds every acknowledged
/// sample: in a cluster (leases required) it must be the primary in its own map and hold a
/// live lease for that epoch — the lease is what keeps any other node from acknowledging the
/// shard's writes meanwhile. A node cut off by a partition keeps its old map and its copy; once
/// its lease lapses a newer primary may acknowledge writes it never sees, so reading it as the
/// primary would be silently short. `None`: it can vouch (or needs no lease: no cluster).
pub fn primary_read_doubt(node: &Node, table: &RouteTable, shard: u32) -> Option<String> {
    if !node.lease().required() {
        return None;
    }
    let Some(route) = table.shards.get(&shard) else {
        return Some(format!("shard {shard} is not in node {}'s shard map (applied index {})", table.me, table.version));
    };
    if route.primary != Some(table.me) {
        return Some(format!("node {}'s shard map (applied index {}) names {:?} the primary of shard {shard}", table.me, table.version, route.primary));
    }
    node.lease().check(shard, route.epoch, node.clock().now_monotonic_ns()).err().map(|refusal| format!("node {}: {refusal}", table.me))
}

/// The warning for shards read from `dest` as their primary when it could not vouch for them.
fn doubt_warning(dest: u64, doubts: &BTreeMap<u32, String>) -> Option<String> {
    let first = doubts.values().next()?;
    let shards: BTreeSet<u32> = doubts.keys().copied().collect();
    Some(format!(
        "shards {} were read from node {dest}, which holds no live lease as their primary (its view of the cluster may be stale); the answer may lack samples acknowledged by the current primary ({first})",
        shard_list(&shards)
    ))
}

/// One warning per previous primary whose shards were promoted and not merged back yet: the
/// new primary may lack samples the previous one acknowledged (docs/design/replication.md).
pub fn merge_pending_warnings(table: &RouteTable) -> Vec<String> {
    let mut by_node: BTreeMap<u64, Vec<(u32, u64)>> = BTreeMap::new();
    for (shard, (epoch, from_node)) in &table.merge_pending {
        by_node.entry(*from_node).or_default().push((*shard, *epoch));
    }
    by_node
        .into_iter()
        .map(|(from_node, shards)| {
            let list = shards.iter().map(|(shard, epoch)| format!("{shard} (promoted at epoch {epoch})")).collect::<Vec<_>>().join(", ");
            format!("shards {list}: merge-back from node {from_node} has not completed; the answer may lack samples acknowledged by the previous primary")
        })
        .collect()
}

fn shard_list(shards: &BTreeSet<u32>) -> String {
    shards.iter().map(u32::to_string).collect::<Vec<_>>().join(", ")
}

/// Reads a query's series from the cluster: for each shard one replica — the primary, else
/// the secondary when the primary does not answer — this node's engine for the shards it was
/// chosen for, `Select` for the others (matchers and time range pushed down, the budget's
/// remainder sent along). Series are merged by labels (a series lives in exactly one shard).
/// Shards no replica answered for, or answered for by a secondary (which may lack
/// acknowledged samples until replication exists), are named in [`Selected::warnings`]. A
/// query limit anywhere fails the whole read.
pub async fn select(node: &Node, engine: &Engine, read: &ReadRequest<'_>, budget: &mut SelectBudget) -> Result<Selected, SelectError> {
    let table = node.router().table();
    let Some(shard_count) = table.shard_count() else {
        // No shard map: everything is local, as on a single node. A member of a multi-node
        // cluster without one yet (forming, or joining as a replacement with an empty disk)
        // says that its answer is its own data only: the replicated simulation's wipe fault
        // found a joining node answering queries from its empty disk as if complete.
        let series = if read.labels_only {
            engine.select_labels(read.tenant, read.matchers, read.min_t, read.max_t, budget).await?.into_iter().map(|labels| SeriesSamples { labels, samples: Vec::new() }).collect()
        } else {
            engine.select_bounded(read.tenant, read.matchers, read.min_t, read.max_t, budget).await?
        };
        let warnings = if node.config().cluster.formation == crate::config::Formation::Single {
            Vec::new()
        } else {
            vec![format!("node {} has not applied the cluster's shard map yet (the cluster is forming, or this node is joining): the answer holds only this node's own data", table.me)]
        };
        return Ok(Selected { series, warnings: planted_drop(warnings) });
    };
    // First choice per shard: the primary (this node's engine when that is us, or when the
    // shard has no primary assigned).
    let mut plan: BTreeMap<u64, BTreeSet<u32>> = BTreeMap::new();
    for (shard, route) in &table.shards {
        plan.entry(route.primary.unwrap_or(table.me)).or_default().insert(*shard);
    }
    let mut warnings = Vec::new();
    let mut merged: BTreeMap<Labels, Vec<Sample>> = BTreeMap::new();
    let mut merge = |series: Vec<SeriesSamples>| {
        for s in series {
            match merged.entry(s.labels) {
                std::collections::btree_map::Entry::Vacant(entry) => {
                    entry.insert(s.samples);
                }
                std::collections::btree_map::Entry::Occupied(mut entry) => {
                    // Cannot happen while a series lives on one replica; first answer wins.
                    let existing = entry.get_mut();
                    let known: BTreeSet<i64> = existing.iter().map(|x| x.t).collect();
                    existing.extend(s.samples.into_iter().filter(|x| !known.contains(&x.t)));
                    existing.sort_by_key(|x| x.t);
                }
            }
        }
    };
    let mut failed: BTreeMap<u32, String> = BTreeMap::new();
    // The remote reads run concurrently, each with what is left of the budget before any of
    // them; their answers are charged on arrival, so the limit holds across the fan-out.
    let remote: Vec<(u64, BTreeSet<u32>)> = plan.iter().filter(|(n, _)| **n != table.me).map(|(n, s)| (*n, s.clone())).collect();
    let snapshot = *budget;
    let answers = futures_util::future::join_all(remote.iter().map(|(dest, shards)| {
        let addr = table.addr(*dest);
        async move { remote_select(node, *dest, &addr, read, shards, shard_count, &snapshot).await }
    }))
    .await;
    if let Some(local) = plan.get(&table.me) {
        merge(read_local(engine, read.tenant, read.matchers, read.min_t, read.max_t, budget, read.labels_only, local, shard_count).await?);
        let doubts: BTreeMap<u32, String> = local.iter().filter_map(|&shard| primary_read_doubt(node, &table, shard).map(|reason| (shard, reason))).collect();
        warnings.extend(doubt_warning(table.me, &doubts));
    }
    for ((dest, shards), answer) in remote.iter().zip(answers) {
        match answer {
            Ok((series, doubts)) => {
                charge(budget, &series)?;
                merge(series);
                warnings.extend(doubt_warning(*dest, &doubts));
            }
            Err(RemoteFailure::Limit(error)) => return Err(error),
            Err(RemoteFailure::Unavailable(reason)) => {
                for shard in shards {
                    failed.insert(*shard, format!("node {dest}: {reason}"));
                }
            }
        }
    }
    // Second choice: the secondary of each shard whose primary did not answer.
    let mut fallback: BTreeMap<u64, BTreeSet<u32>> = BTreeMap::new();
    let mut unavailable: BTreeMap<u32, String> = BTreeMap::new();
    for (shard, reason) in failed {
        match table.shards.get(&shard).and_then(|s| s.secondary) {
            Some(secondary) => {
                fallback.entry(secondary).or_default().insert(shard);
            }
            None => {
                unavailable.insert(shard, reason);
            }
        }
    }
    for (dest, shards) in fallback {
        let answer = if dest == table.me {
            read_local(engine, read.tenant, read.matchers, read.min_t, read.max_t, budget, read.labels_only, &shards, shard_count).await.map_err(RemoteFailure::Limit)
        } else {
            let addr = table.addr(dest);
            let snapshot = *budget;
            // A secondary's answer is warned about below whatever its lease says.
            remote_select(node, dest, &addr, read, &shards, shard_count, &snapshot).await.and_then(|(series, _)| charge(budget, &series).map(|_| series).map_err(RemoteFailure::Limit))
        };
        match answer {
            Ok(series) => {
                merge(series);
                warnings.push(format!(
                    "shards {} were read from their secondary (node {dest}) because the primary did not answer; the secondary may lack samples acknowledged within --replication-lag-max before the primary stopped answering",
                    shard_list(&shards)
                ));
            }
            Err(RemoteFailure::Limit(error)) => return Err(error),
            Err(RemoteFailure::Unavailable(reason)) => {
                for shard in shards {
                    unavailable.insert(shard, format!("node {dest}: {reason}"));
                }
            }
        }
    }
    warnings.extend(merge_pending_warnings(&table));
    if !unavailable.is_empty() {
        node.metrics.fanout_shards_unavailable.inc_by(unavailable.len() as u64);
        let shards: BTreeSet<u32> = unavailable.keys().copied().collect();
        let first = unavailable.values().next().cloned().unwrap_or_default();
        warnings.push(format!("shards {} have no reachable replica; the answer lacks their series (first error: {first})", shard_list(&shards)));
    }
    let series = merged.into_iter().map(|(labels, samples)| SeriesSamples { labels, samples }).collect();
    Ok(Selected { series, warnings: planted_drop(warnings) })
}

/// `warnings`, or none when the simulator planted the dropped-warning bug (a partial answer
/// that looks complete; oracle 10 must catch it).
fn planted_drop(warnings: Vec<String>) -> Vec<String> {
    use sextant_core::determinism::planted::{is_planted, Bug};
    if is_planted(Bug::PartialWarningDropped) {
        return Vec::new();
    }
    warnings
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series(name: &str, n: usize) -> WriteSeries {
        WriteSeries { labels: Labels::from_pairs(&[("__name__", name)]), samples: (0..n as i64).map(|t| Sample::new(t, t as f64)).collect() }
    }

    // Goal: batches respect the sample bound, keep every sample once and in order, and a
    // report survives the trip through protobuf.
    #[test]
    fn batches_keep_every_sample_once() {
        for max in [1usize, 3, 1000] {
            let out = batches(vec![series("a", 7), series("b", 0), series("c", 5)], max);
            let mut seen: Vec<(String, i64)> = Vec::new();
            for batch in &out {
                let n: usize = batch.iter().map(|s| s.samples.len()).sum();
                assert!(n > 0 && n <= max, "max {max}: batch of {n}");
                for s in batch {
                    let name = s.labels.iter().find(|l| l.name == "__name__").unwrap().value.clone();
                    seen.extend(s.samples.iter().map(|x| (name.clone(), x.t)));
                }
            }
            let expected: Vec<(String, i64)> = (0..7).map(|t| ("a".to_string(), t)).chain((0..5).map(|t| ("c".to_string(), t))).collect();
            assert_eq!(seen, expected, "max {max}");
        }
        let report = AppendReport {
            accepted: 3,
            duplicates: 1,
            out_of_order: 1,
            series_created: 2,
            refused_permanent: 1,
            refused_retryable: 1,
            refused_by_kind: BTreeMap::from([("conflict", 1), ("memory_budget", 1)]),
            refusals: vec![
                SampleRefusal { series: "a{}".into(), t: 5, reason: RefusalReason::Conflict { t: 5, existing_bits: 42 } },
                SampleRefusal { series: "b{}".into(), t: 6, reason: RefusalReason::MemoryBudget { budget_bytes: 9 } },
            ],
            series_refused_memory: vec![Labels::from_unsorted(vec![Label::new("__name__", "b"), Label::new("job", "x")]).unwrap()],
        };
        assert_eq!(report_from_pb(report_to_pb(report.clone())), report);
    }

    // Goal: the route table sends a shard to its primary, local when that is this node or
    // when there is no map; the epoch check holds only for this node's primary shards.
    #[test]
    fn route_table_destinations() {
        let mut table = RouteTable { version: 5, me: 2, ..RouteTable::default() };
        assert_eq!(table.destination(3), Destination::Local, "no map: local");
        table.shards.insert(0, ShardRoute { primary: Some(1), secondary: Some(2), epoch: 4 });
        table.shards.insert(1, ShardRoute { primary: Some(2), secondary: Some(1), epoch: 1 });
        table.shards.insert(2, ShardRoute { primary: None, secondary: None, epoch: 0 });
        table.grpc_addrs.insert(1, "h1:1".into());
        assert_eq!(table.destination(0), Destination::Remote { node: 1, addr: "h1:1".into(), epoch: 4 });
        assert_eq!(table.destination(1), Destination::Local);
        assert_eq!(table.destination(2), Destination::Local);
        assert_eq!(table.shard_count(), Some(3));
        assert!(table.holds_primary(1, 1));
        assert!(!table.holds_primary(1, 2), "other epoch");
        assert!(!table.holds_primary(0, 4), "not the primary");
        assert_eq!(table.primary_epoch(1), Some(1), "this node's shard: its writes need a lease at epoch 1");
        assert_eq!(table.primary_epoch(0), None, "another node's shard");
        assert_eq!(table.primary_epoch(2), None, "no primary: no lease");
    }

    // Goal: merge-pending shards produce one warning per previous primary naming each shard and
    // its promotion epoch; no pending shard, no warning.
    #[test]
    fn merge_pending_warning_text() {
        let check = |pending: &[(u32, u64, u64)], expected: &[&str]| {
            let table = RouteTable { merge_pending: pending.iter().map(|(s, e, n)| (*s, (*e, *n))).collect(), ..RouteTable::default() };
            assert_eq!(merge_pending_warnings(&table), expected.iter().map(|w| w.to_string()).collect::<Vec<_>>(), "{pending:?}");
        };
        check(&[], &[]);
        check(&[(3, 2, 1)], &["shards 3 (promoted at epoch 2): merge-back from node 1 has not completed; the answer may lack samples acknowledged by the previous primary"]);
        check(
            &[(7, 5, 2), (3, 2, 1), (4, 3, 1)],
            &[
                "shards 3 (promoted at epoch 2), 4 (promoted at epoch 3): merge-back from node 1 has not completed; the answer may lack samples acknowledged by the previous primary",
                "shards 7 (promoted at epoch 5): merge-back from node 2 has not completed; the answer may lack samples acknowledged by the previous primary",
            ],
        );
    }

    // Goal: the forward-side judgement refuses only clock-rule violations and counts them.
    #[test]
    fn judge_for_forward_applies_clock_rules() {
        let acceptance = AcceptanceConfig::default();
        let now = 1_000_000_000_000;
        let write = WriteSeries { labels: Labels::from_pairs(&[("__name__", "m")]), samples: vec![Sample::new(now - 25 * 3_600_000, 1.0), Sample::new(now, 2.0), Sample::new(now + 3_600_000, 3.0)] };
        let mut report = AppendReport::default();
        let kept = judge_for_forward(&acceptance, now, vec![write, series("empty", 0)], &mut report);
        assert_eq!(kept.len(), 1);
        assert_eq!(kept[0].samples, vec![Sample::new(now, 2.0)]);
        assert_eq!(report.refused_permanent, 2);
        assert_eq!(report.refusals.len(), 2);
    }
}
