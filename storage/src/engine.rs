//! The storage engine: one node's WAL and the shards it holds, behind one async API.
//!
//! # Guarantees (docs/design/storage.md has the full list)
//!
//! - **Durable before visible, durable before acknowledged.** A write is judged, logged to the
//!   WAL, and applied to the head only after its record is durable under the fsync policy; its
//!   future resolves after that. The head therefore never holds a sample the WAL could lose, so
//!   a duplicate found in the head is acknowledged at once; a duplicate of a sample still on its
//!   way to the disk waits for that sample's record.
//! - **Judged once.** [`Engine::append`] applies the time-acceptance rules with the node's
//!   clock; [`Engine::import`] applies an already-judged write and skips them. Both apply the
//!   duplicate rule: the same (series, timestamp, value bits) again is a success, a different
//!   value at an existing timestamp is refused (first write wins).
//! - **Disk errors.** ENOSPC refuses writes with a retryable error while reads keep working;
//!   an fsync error poisons the WAL and every later write is refused until restart; while the
//!   engine is opening (WAL replay) there is no engine to write to, and the node answers 503.
//!
//! # Concurrency
//!
//! Each shard sits behind its own `RwLock`. A write holds its shard's write lock while it judges
//! samples and submits WAL records (so WAL order equals judgement order), then releases it and
//! a spawned task awaits durability and re-takes the lock to apply: the application happens
//! even if the caller's future is dropped. Samples submitted but not yet applied are kept in the
//! shard's pending overlay, which judgement consults, so two concurrent writes cannot both
//! accept different values for one timestamp.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use sextant_core::clock::Clock;
use sextant_core::labels::Labels;
use sextant_core::matcher::Matcher;
use sextant_core::sample::{Sample, TimestampMs};
use sextant_core::series::{fingerprint, FingerprintFn, SeriesKey};
use tokio::sync::{oneshot, watch, RwLock};

use crate::acceptance::{AcceptanceConfig, TimeRefusal, TimeVerdict};
use crate::block::{self, Block, BlockError, BlockSeriesData, BlockWriterConfig, GroupCache, Tombstone};
use crate::fs::FileSystem;
use crate::head::{Head, HeadAppend, HeadError};
use crate::index::SeriesRef;
use crate::wal::{RecordBody, SampleEntry, SeriesEntry, TombstoneEntry, Wal, WalConfig, WalError, WalRecord};

pub use crate::wal::ShardId;

mod replication;
pub use replication::{
    ApplyError, ApplyReport, ExportPage, RecordProblem, ReplicaSource, ReplicationShardStatus, ReplicationStatus, ShardDigest, TailError, TailRecord, WalTail,
    DIGEST_SEED, REPLICA_POSITION_FILE,
};

/// How the engine is configured. Every field has a production default.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Shards this node stores. A single node holds all of them.
    pub shard_ids: Vec<ShardId>,
    pub wal: WalConfig,
    pub acceptance: AcceptanceConfig,
    /// Span of a block cut from the head (default 2 h).
    pub block_span_ms: i64,
    /// Blocks whose newest sample is older than this are deleted (`None`: keep forever).
    pub retention_ms: Option<i64>,
    /// When blocks of all shards exceed this many bytes, the oldest are deleted.
    pub retention_bytes: Option<u64>,
    /// The node's memory budget for series, chunks and postings (heads and block indexes).
    pub memory_bytes_max: u64,
    pub block_writer: BlockWriterConfig,
    /// Series identity hash; tests force collisions with `colliding_fingerprint`.
    pub fingerprint_fn: FingerprintFn,
    /// Samples one write may carry (bounds the pending overlay and the WAL record).
    pub write_samples_max: usize,
    /// WAL payload bytes a shard's replication floor may hold back from checkpoints; past it
    /// the floor is released and tails behind it answer `Truncated` (docs/design/storage.md
    /// § Replication support).
    pub replication_retain_bytes_max: u64,
    /// Age (on the injected clock) of the oldest record a replication floor may hold back.
    pub replication_retain_ms_max: i64,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            shard_ids: (0..16).collect(),
            wal: WalConfig::default(),
            acceptance: AcceptanceConfig::default(),
            block_span_ms: 2 * 3600 * 1000,
            retention_ms: Some(15 * 24 * 3600 * 1000),
            retention_bytes: None,
            memory_bytes_max: 4 * 1024 * 1024 * 1024,
            block_writer: BlockWriterConfig::default(),
            fingerprint_fn: fingerprint,
            write_samples_max: 1_000_000,
            replication_retain_bytes_max: 256 * 1024 * 1024,
            replication_retain_ms_max: 15 * 60 * 1000,
        }
    }
}

/// Failures of a whole operation.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("shard {shard} is not held by this node")]
    UnknownShard { shard: ShardId },
    #[error("write of {samples} samples exceeds the limit of {max} samples per write")]
    WriteTooLarge { samples: usize, max: usize },
    #[error(transparent)]
    Wal(#[from] WalError),
    #[error(transparent)]
    Block(#[from] BlockError),
    #[error(transparent)]
    Head(#[from] HeadError),
    #[error("storage I/O error during {step}: {source}")]
    Io { step: &'static str, source: std::io::Error },
    #[error("engine is closed")]
    Closed,
    #[error("invalid engine configuration: {reason}")]
    Config { reason: String },
    #[error("invalid argument: {reason}")]
    InvalidArgument { reason: String },
}

impl EngineError {
    /// True when the same request may succeed later (disk full, queue full, memory pressure).
    pub fn is_retryable(&self) -> bool {
        match self {
            EngineError::Wal(e) => e.is_retryable(),
            EngineError::Io { source, .. } => crate::fs::is_no_space(source),
            _ => false,
        }
    }
}

/// Why one sample was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RefusalReason {
    #[error(transparent)]
    Time(#[from] TimeRefusal),
    #[error("a different value is already stored at timestamp {t} (first write wins)")]
    Conflict { t: TimestampMs, existing_bits: u64 },
    #[error("timestamp {t} appears twice in one write with different values")]
    ConflictInRequest { t: TimestampMs },
    #[error("node memory budget of {budget_bytes} bytes reached; new series are refused until memory is freed")]
    MemoryBudget { budget_bytes: u64 },
}

impl RefusalReason {
    /// Memory pressure passes; the other reasons are permanent for this sample.
    pub fn is_retryable(&self) -> bool {
        matches!(self, RefusalReason::MemoryBudget { .. })
    }

    /// Every name [`RefusalReason::kind`] answers.
    pub const KINDS: [&'static str; 5] = ["too_far_in_future", "too_old", "out_of_order_too_old", "conflict", "memory_budget"];

    /// A short stable name for counting (the `reason` label of the node's refusal metrics).
    pub fn kind(&self) -> &'static str {
        match self {
            RefusalReason::Time(TimeRefusal::TooFarInFuture { .. }) => "too_far_in_future",
            RefusalReason::Time(TimeRefusal::TooOld { .. }) => "too_old",
            RefusalReason::Time(TimeRefusal::OutOfOrderTooOld { .. }) => "out_of_order_too_old",
            RefusalReason::Conflict { .. } | RefusalReason::ConflictInRequest { .. } => "conflict",
            RefusalReason::MemoryBudget { .. } => "memory_budget",
        }
    }
}

/// One refused sample.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SampleRefusal {
    pub series: String,
    pub t: TimestampMs,
    pub reason: RefusalReason,
}

/// Refusals kept in detail per write; the rest are only counted.
pub const REFUSALS_DETAILED_MAX: usize = 16;

/// What a write did, sample by sample.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AppendReport {
    /// Samples stored by this write.
    pub accepted: u64,
    /// Samples already stored with the same value bits (successes).
    pub duplicates: u64,
    /// Of the accepted samples, those older than their series' newest (out of order).
    pub out_of_order: u64,
    pub series_created: u64,
    /// Refused samples, counted.
    pub refused_permanent: u64,
    pub refused_retryable: u64,
    /// Every refused sample counted by [`RefusalReason::kind`] (the detailed list below stops
    /// at [`REFUSALS_DETAILED_MAX`]; metrics need all of them).
    pub refused_by_kind: BTreeMap<&'static str, u64>,
    /// The first few refusals in detail.
    pub refusals: Vec<SampleRefusal>,
    /// Series of this write that do not exist because the memory budget refused to create
    /// them (each once). The node's active-series accounting admitted them before the write;
    /// it forgets them again, or a memory-bound node would count phantom series against the
    /// tenant's limits until they idle out.
    pub series_refused_memory: Vec<Labels>,
}

impl AppendReport {
    /// Counts one refused sample (and keeps it in detail while the list has room).
    pub fn refuse(&mut self, series: &Labels, t: TimestampMs, reason: RefusalReason) {
        if reason.is_retryable() {
            self.refused_retryable += 1;
        } else {
            self.refused_permanent += 1;
        }
        *self.refused_by_kind.entry(reason.kind()).or_default() += 1;
        if self.refusals.len() < REFUSALS_DETAILED_MAX {
            self.refusals.push(SampleRefusal { series: series.to_string(), t, reason });
        }
    }

    /// Adds another report of the same request (another shard or chunk) to this one.
    pub fn add(&mut self, other: AppendReport) {
        self.accepted += other.accepted;
        self.duplicates += other.duplicates;
        self.out_of_order += other.out_of_order;
        self.series_created += other.series_created;
        self.refused_permanent += other.refused_permanent;
        self.refused_retryable += other.refused_retryable;
        for (kind, n) in other.refused_by_kind {
            *self.refused_by_kind.entry(kind).or_default() += n;
        }
        for refusal in other.refusals {
            if self.refusals.len() < REFUSALS_DETAILED_MAX {
                self.refusals.push(refusal);
            }
        }
        self.series_refused_memory.extend(other.series_refused_memory);
    }
}

/// One series' samples in a write. Labels are already validated by the caller (ingest).
#[derive(Clone, Debug, PartialEq)]
pub struct WriteSeries {
    pub labels: Labels,
    pub samples: Vec<Sample>,
}

/// One series' samples in a read.
#[derive(Clone, Debug, PartialEq)]
pub struct SeriesSamples {
    pub labels: Labels,
    pub samples: Vec<Sample>,
}

/// A point-in-time view of the engine, for `/metrics`, readiness and reports.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EngineStatus {
    pub poisoned: bool,
    pub head_series: u64,
    pub memory_bytes: u64,
    pub memory_bytes_max: u64,
    pub blocks: u64,
    pub block_bytes: u64,
    pub samples_appended: u64,
    pub samples_imported: u64,
    pub replay_records: u64,
    pub replay_samples_lost: u64,
}

/// Cardinality figures for one tenant (the `/api/v1/status/tsdb` report).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CardinalityReport {
    pub head_series: u64,
    /// Series per metric name, largest first.
    pub series_per_metric: Vec<(String, u64)>,
    /// (label name, distinct values, series carrying it), by name.
    pub labels: Vec<(String, u64, u64)>,
}

/// What one query may still load: [`Engine::select_bounded`] counts down from these and
/// refuses with the limit's name once one would go below zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SelectBudget {
    pub series_max: usize,
    pub samples_max: usize,
    /// Accounted memory: [`SELECT_SAMPLE_BYTES`] per sample plus each series' label bytes.
    pub bytes_max: usize,
    pub series: usize,
    pub samples: usize,
    pub bytes: usize,
}

/// Bytes charged per sample loaded (an `i64` timestamp and an `f64` value).
pub const SELECT_SAMPLE_BYTES: usize = 16;

impl SelectBudget {
    pub fn new(series_max: usize, samples_max: usize, bytes_max: usize) -> Self {
        SelectBudget { series_max, samples_max, bytes_max, series: 0, samples: 0, bytes: 0 }
    }

    /// Charges one series' samples from one source; the series itself only when not `seen` in
    /// this select. Every counter is charged before any is checked, so the budget always says
    /// what was loaded.
    fn charge(&mut self, labels: &Labels, seen: bool, samples: usize) -> Result<(), SelectError> {
        if !seen {
            self.series += 1;
            self.bytes = self.bytes.saturating_add(labels.bytes());
        }
        self.samples = self.samples.saturating_add(samples);
        self.bytes = self.bytes.saturating_add(samples.saturating_mul(SELECT_SAMPLE_BYTES));
        if self.series > self.series_max {
            return Err(SelectError::TooManySeries { max: self.series_max });
        }
        if self.samples > self.samples_max {
            return Err(SelectError::TooManySamples { max: self.samples_max });
        }
        if self.bytes > self.bytes_max {
            return Err(SelectError::TooManyBytes { bytes: self.bytes, max: self.bytes_max });
        }
        Ok(())
    }
}

/// Why a bounded select stopped.
#[derive(Debug, thiserror::Error)]
pub enum SelectError {
    #[error("query would touch more than the limit of series_max={max} series")]
    TooManySeries { max: usize },
    #[error("query processing would load too many samples into memory in query execution (limit samples_max={max})")]
    TooManySamples { max: usize },
    #[error("query would hold at least {bytes} bytes of samples and labels in memory, more than the limit bytes_max={max}")]
    TooManyBytes { bytes: usize, max: usize },
    #[error(transparent)]
    Engine(#[from] EngineError),
}

/// What a maintenance pass did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MaintainReport {
    pub blocks_cut: u64,
    pub samples_persisted: u64,
    pub blocks_compacted: u64,
    pub blocks_deleted_retention: u64,
    pub checkpointed: bool,
}

/// A head cut: every sample of a record with `seq <= wal_seq_max` and `t < before_t` is in a
/// block. Replay and checkpoints skip such samples.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct HeadCut {
    wal_seq_max: u64,
    before_t: TimestampMs,
}

/// Head cuts kept per shard (a checkpoint clears them; they are tiny).
const HEAD_CUTS_MAX: usize = 10_000;

/// The simulator's planted bug `Bug::NondeterministicIteration`: `series` in the iteration
/// order of a map keyed by a hash of each entry's heap address — the shape of a set of
/// pointers iterated into a record. Addresses move with the process's address-space layout
/// (ASLR), so the same seed writes other WAL bytes in another process. (A `std` `HashMap`
/// would not do: under madsim its random keys come from the seed.)
fn planted_address_order(series: Vec<SeriesEntry>) -> Vec<SeriesEntry> {
    use std::hash::{Hash, Hasher};
    let boxed: Vec<Box<SeriesEntry>> = series.into_iter().map(Box::new).collect();
    let by_address: BTreeMap<(u64, usize), Box<SeriesEntry>> = boxed
        .into_iter()
        .enumerate()
        .map(|(i, entry)| {
            let mut hasher = std::hash::DefaultHasher::new();
            (&*entry as *const SeriesEntry as usize).hash(&mut hasher);
            ((hasher.finish(), i), entry)
        })
        .collect();
    by_address.into_values().map(|entry| *entry).collect()
}

fn is_persisted(cuts: &[HeadCut], seq: u64, t: TimestampMs) -> bool {
    cuts.iter().any(|c| seq <= c.wal_seq_max && t < c.before_t)
}

#[derive(Debug, Default)]
struct PendingSeries {
    series_ref: SeriesRef,
    users: usize,
}

/// Samples and series submitted to the WAL and not yet applied to the head.
#[derive(Debug, Default)]
struct Pending {
    /// Lookup only, never iterated.
    series: HashMap<SeriesKey, PendingSeries>,
    samples: BTreeMap<(SeriesRef, TimestampMs), (u64, u64)>,
    /// Seqs of records submitted and not yet applied or failed.
    seqs: BTreeSet<u64>,
    outcomes: BTreeMap<u64, watch::Receiver<Option<bool>>>,
}

impl Pending {
    fn newest(&self, series_ref: SeriesRef) -> Option<TimestampMs> {
        self.samples.range((series_ref, TimestampMs::MIN)..=(series_ref, TimestampMs::MAX)).next_back().map(|((_, t), _)| *t)
    }
}

struct Shard {
    id: ShardId,
    blocks_dir: PathBuf,
    head: Head,
    /// Opened blocks, ascending seq.
    blocks: Vec<Block>,
    block_seq_next: u64,
    cuts: Vec<HeadCut>,
    pending: Pending,
    /// Ref counter including refs reserved by pending writes.
    ref_next: SeriesRef,
    /// Refs that replay found naming a series the head already had under another ref (the
    /// series was dropped by a cut and recreated). Checkpoints rewrite samples to the kept ref,
    /// after which the aliases are no longer needed.
    aliases: BTreeMap<SeriesRef, SeriesRef>,
}

impl Shard {
    fn blocks_max_t(&self) -> Option<TimestampMs> {
        self.blocks.iter().map(|b| b.meta().max_t).max()
    }

    fn cuts_path(&self) -> PathBuf {
        self.blocks_dir.parent().expect("blocks dir has a parent").join("head-cuts.json")
    }

    /// Value bits stored in blocks for `key` at `t`, oldest block first (first write wins).
    async fn block_value_at(&self, key: &SeriesKey, t: TimestampMs) -> Result<Option<u64>, EngineError> {
        let matchers: Vec<Matcher> = key.labels.iter().map(|l| Matcher::equal(l.name.clone(), l.value.clone())).collect();
        for block in &self.blocks {
            if t < block.meta().min_t || t > block.meta().max_t {
                continue;
            }
            for r in block.select(&key.tenant, &matchers) {
                if *block.series_labels(r) != key.labels {
                    continue;
                }
                if let Some(s) = block.samples(r, t, t).await?.first() {
                    return Ok(Some(s.v.to_bits()));
                }
            }
        }
        Ok(None)
    }
}

struct Counters {
    samples_appended: AtomicU64,
    samples_imported: AtomicU64,
    replay_records: AtomicU64,
    replay_samples_lost: AtomicU64,
}

struct Inner {
    fs: Arc<dyn FileSystem>,
    clock: Arc<dyn Clock>,
    config: EngineConfig,
    wal: Wal,
    shards: BTreeMap<ShardId, Arc<RwLock<Shard>>>,
    counters: Counters,
    closed: AtomicBool,
    /// Serializes maintenance passes (cuts, compaction, retention, checkpoints).
    maintenance: tokio::sync::Mutex<()>,
    /// Per shard: held by a cut or a compaction for its whole length and by a deletion, so a
    /// block written outside the shard lock never misses a tombstone (see
    /// [`Engine::cut_shard`]). Lock order: this, then the shard lock.
    shard_rewrites: BTreeMap<ShardId, tokio::sync::Mutex<()>>,
    memory_bytes: Mutex<BTreeMap<ShardId, u64>>,
    /// Account bytes of series that writes in flight have created but not yet applied to the
    /// head (they enter it after their WAL records are durable). Charged under the
    /// `memory_bytes` lock together with the budget check, so concurrent writes — other shards,
    /// or the same shard while earlier writes wait for their fsync — cannot all pass one check.
    memory_reserved: AtomicU64,
    replication: replication::ReplicationState,
    /// Signalled when a write leaves a shard's head spanning more than 1.5 block spans, so the
    /// node's maintenance loop cuts it now instead of at its next tick: a backfill or a fast
    /// catch-up can add hours of data time in seconds (see [`Engine::cut_wanted`]).
    cut_wanted: tokio::sync::Notify,
}

/// Bytes a write charged against the memory budget for the series it creates; released when
/// the write's series are in the head (or the write failed).
struct MemoryReservation {
    inner: Arc<Inner>,
    bytes: u64,
}

impl Drop for MemoryReservation {
    fn drop(&mut self) {
        self.inner.memory_reserved.fetch_sub(self.bytes, Ordering::SeqCst);
    }
}

/// The node's storage engine. Cheap to clone.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").field("shards", &self.inner.shards.len()).finish()
    }
}

fn shard_dir(id: ShardId) -> PathBuf {
    PathBuf::from("shards").join(id.to_string())
}

async fn write_atomically(fs: &dyn FileSystem, path: &Path, bytes: &[u8]) -> Result<(), EngineError> {
    let tmp = path.with_extension("tmp");
    crate::fs::replace_durably(fs, path, &tmp, bytes).await.map_err(|e| EngineError::Io {
        step: match e.step {
            "create" => "create temp file",
            "write" => "write temp file",
            "fsync" => "fsync temp file",
            "rename" => "rename temp file",
            _ => "fsync directory",
        },
        source: e.source,
    })
}

impl Engine {
    /// Opens the engine: loads blocks, replays the WAL into the heads, starts the WAL writer.
    pub async fn open(fs: Arc<dyn FileSystem>, clock: Arc<dyn Clock>, config: EngineConfig) -> Result<Engine, EngineError> {
        if config.shard_ids.is_empty() {
            return Err(EngineError::Config { reason: "no shards".into() });
        }
        if config.block_span_ms <= 0 {
            return Err(EngineError::Config { reason: format!("block_span_ms {} must be positive", config.block_span_ms) });
        }
        let io = |step| move |source| EngineError::Io { step, source };
        let mut shards = BTreeMap::new();
        for &id in &config.shard_ids {
            let dir = shard_dir(id);
            let blocks_dir = dir.join("blocks");
            // The directory chain is fsynced at every open, not only when created: a previous
            // open may have created it and failed before its fsyncs, leaving entries a crash
            // would remove together with every block written under them.
            fs.create_dir_all(&blocks_dir).await.map_err(io("create shard dir"))?;
            fs.sync_dir(Path::new("")).await.map_err(io("fsync data dir"))?;
            fs.sync_dir(Path::new("shards")).await.map_err(io("fsync shards dir"))?;
            fs.sync_dir(&dir).await.map_err(io("fsync shard dir"))?;
            block::cleanup_tmp(fs.as_ref(), &blocks_dir).await?;
            let mut blocks = Vec::new();
            for path in block::list_blocks(fs.as_ref(), &blocks_dir).await? {
                blocks.push(Block::open(fs.clone(), path).await?);
            }
            blocks.sort_by_key(|b| b.meta().seq);
            // A compaction that crashed before deleting its sources leaves them beside the output.
            let metas: Vec<_> = blocks.iter().map(|b| b.meta().clone()).collect();
            let superseded = block::superseded_blocks(&metas);
            for seq in &superseded {
                block::delete_block(fs.as_ref(), &blocks_dir, *seq).await?;
            }
            blocks.retain(|b| !superseded.contains(&b.meta().seq));
            let block_seq_next = blocks.iter().map(|b| b.meta().seq + 1).max().unwrap_or(1);
            let cuts_path = dir.join("head-cuts.json");
            let cuts: Vec<HeadCut> = if fs.exists(&cuts_path).await.map_err(io("stat head cuts"))? {
                let bytes = fs.read(&cuts_path).await.map_err(io("read head cuts"))?;
                serde_json::from_slice(&bytes).map_err(|e| EngineError::Io {
                    step: "parse head cuts",
                    source: std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{cuts_path:?}: {e}")),
                })?
            } else {
                Vec::new()
            };
            let shard = Shard {
                id,
                blocks_dir,
                head: Head::new(config.fingerprint_fn),
                blocks,
                block_seq_next,
                cuts,
                pending: Pending::default(),
                ref_next: 1,
                aliases: BTreeMap::new(),
            };
            shards.insert(id, shard);
        }

        // Replay: series, samples and tombstones in log order.
        fs.create_dir_all(Path::new("wal")).await.map_err(io("create wal dir"))?;
        fs.sync_dir(Path::new("")).await.map_err(io("fsync data dir"))?;
        let mut replay = Wal::open(fs.clone(), PathBuf::from("wal"), config.wal.clone()).await?;
        let (mut records, mut lost) = (0u64, 0u64);
        // The highest ref any Series record named, per shard: new series must get refs above
        // it even when replay aliased it away, or a later replay would resolve the new ref
        // through the old alias.
        let mut ref_max_seen: BTreeMap<ShardId, SeriesRef> = BTreeMap::new();
        // Refs for series whose logged ref was taken by another key (only after damage); far
        // above anything the engine assigns.
        let mut ref_rescue_next: SeriesRef = 1 << 62;
        while let Some(item) = replay.next().await {
            let record = match item {
                Ok(record) => record,
                Err(WalError::Decode { .. }) => continue,
                Err(error) => return Err(error.into()),
            };
            records += 1;
            let Some(shard) = shards.get_mut(&record.shard) else {
                tracing::warn!(shard = record.shard, "WAL record for a shard this node no longer holds; skipped");
                continue;
            };
            match record.body {
                RecordBody::Series(entries) => {
                    for entry in entries {
                        let seen = ref_max_seen.entry(shard.id).or_default();
                        *seen = (*seen).max(entry.series_ref);
                        // A logged ref names one series from here on, whatever it named before.
                        shard.aliases.remove(&entry.series_ref);
                        let key = SeriesKey::new(entry.tenant, entry.labels);
                        match shard.head.lookup(&key) {
                            Some(existing) => {
                                shard.aliases.insert(entry.series_ref, existing);
                            }
                            None if shard.head.contains_ref(entry.series_ref) => {
                                let fresh = ref_rescue_next;
                                ref_rescue_next += 1;
                                shard.head.insert_with_ref(fresh, key);
                                let bound = shard.blocks_max_t();
                                shard.head.note_block_bound(fresh, bound);
                                shard.aliases.insert(entry.series_ref, fresh);
                            }
                            None => {
                                shard.head.insert_with_ref(entry.series_ref, key);
                                let bound = shard.blocks_max_t();
                                shard.head.note_block_bound(entry.series_ref, bound);
                            }
                        }
                    }
                }
                RecordBody::Samples(entries) => {
                    for entry in entries {
                        if is_persisted(&shard.cuts, record.seq, entry.t) {
                            continue;
                        }
                        let series_ref = shard.aliases.get(&entry.series_ref).copied().unwrap_or(entry.series_ref);
                        if !shard.head.contains_ref(series_ref) {
                            // Its Series record was in a damaged range of the log.
                            lost += 1;
                            continue;
                        }
                        match shard.head.append(series_ref, entry.t, entry.v)? {
                            HeadAppend::Appended | HeadAppend::Duplicate => {}
                            HeadAppend::Conflict { .. } => lost += 1,
                        }
                    }
                }
                RecordBody::Tombstone(entry) => {
                    shard.head.delete(&entry.tenant, &entry.matchers, entry.min_t, entry.max_t)?;
                }
            }
        }
        let report = replay.report();
        if !report.damaged.is_empty() || report.truncated.is_some() || lost > 0 {
            tracing::warn!(?report, samples_lost = lost, "WAL replay repaired damage");
        }
        let wal = replay.finish().await?;
        let replication = replication::ReplicationState::open(fs.as_ref(), &config.shard_ids, wal.checkpoint_meta_at_open()).await?;
        let mut locked = BTreeMap::new();
        let mut memory = BTreeMap::new();
        for (id, mut shard) in shards {
            let seen_next = ref_max_seen.get(&id).map_or(1, |r| r + 1);
            // Every series the head holds came from a logged Series record (or a rescue ref far
            // above), so the largest logged ref bounds every ref in use.
            shard.ref_next = seen_next;
            memory.insert(id, Self::shard_memory(&shard));
            locked.insert(id, Arc::new(RwLock::new(shard)));
        }
        let shard_rewrites = locked.keys().map(|id| (*id, tokio::sync::Mutex::new(()))).collect();
        let engine = Engine {
            inner: Arc::new(Inner {
                fs,
                clock,
                config,
                wal,
                shards: locked,
                counters: Counters {
                    samples_appended: AtomicU64::new(0),
                    samples_imported: AtomicU64::new(0),
                    replay_records: AtomicU64::new(records),
                    replay_samples_lost: AtomicU64::new(lost),
                },
                closed: AtomicBool::new(false),
                maintenance: tokio::sync::Mutex::new(()),
                shard_rewrites,
                memory_bytes: Mutex::new(memory),
                memory_reserved: AtomicU64::new(0),
                replication,
                cut_wanted: tokio::sync::Notify::new(),
            }),
        };
        // Replay may leave a head that is already due (a node down for hours, a fast backfill
        // before a crash): the first maintenance pass should not wait a whole tick.
        for shard in engine.inner.shards.values() {
            if engine.head_cut_due(&*shard.read().await) {
                engine.inner.cut_wanted.notify_one();
                break;
            }
        }
        Ok(engine)
    }

    fn shard_memory(shard: &Shard) -> u64 {
        (shard.head.memory_bytes() + shard.blocks.iter().map(Block::memory_bytes).sum::<usize>()) as u64
    }

    fn memory_total(&self) -> u64 {
        self.inner.memory_bytes.lock().unwrap_or_else(|p| p.into_inner()).values().sum::<u64>() + self.inner.memory_reserved.load(Ordering::SeqCst)
    }

    /// Charges `cost` bytes to `reservation` if the budget has room for them.
    fn try_reserve_memory(&self, reservation: &mut MemoryReservation, cost: u64) -> bool {
        let totals = self.inner.memory_bytes.lock().unwrap_or_else(|p| p.into_inner());
        let used = totals.values().sum::<u64>() + self.inner.memory_reserved.load(Ordering::SeqCst);
        if used.saturating_add(cost) > self.inner.config.memory_bytes_max {
            return false;
        }
        self.inner.memory_reserved.fetch_add(cost, Ordering::SeqCst);
        reservation.bytes += cost;
        true
    }

    fn update_memory(&self, shard: &Shard) {
        let bytes = Self::shard_memory(shard);
        self.inner.memory_bytes.lock().unwrap_or_else(|p| p.into_inner()).insert(shard.id, bytes);
    }

    pub fn shard_ids(&self) -> Vec<ShardId> {
        self.inner.shards.keys().copied().collect()
    }

    pub fn config(&self) -> &EngineConfig {
        &self.inner.config
    }

    fn shard(&self, id: ShardId) -> Result<&Arc<RwLock<Shard>>, EngineError> {
        if self.inner.closed.load(Ordering::SeqCst) {
            return Err(EngineError::Closed);
        }
        self.inner.shards.get(&id).ok_or(EngineError::UnknownShard { shard: id })
    }

    /// Stores samples judged by this node's clock (the ingest path).
    pub async fn append(&self, shard: ShardId, tenant: &str, series: Vec<WriteSeries>) -> Result<AppendReport, EngineError> {
        let now = self.inner.clock.now_wall_ms();
        self.write(shard, tenant, series, Some(now)).await
    }

    /// Stores samples already judged elsewhere (forwarded writes, replication, shard moves).
    pub async fn import(&self, shard: ShardId, tenant: &str, series: Vec<WriteSeries>) -> Result<AppendReport, EngineError> {
        self.write(shard, tenant, series, None).await
    }

    async fn write(&self, shard_id: ShardId, tenant: &str, series: Vec<WriteSeries>, judge_at: Option<TimestampMs>) -> Result<AppendReport, EngineError> {
        let samples_total: usize = series.iter().map(|s| s.samples.len()).sum();
        if samples_total > self.inner.config.write_samples_max {
            return Err(EngineError::WriteTooLarge { samples: samples_total, max: self.inner.config.write_samples_max });
        }
        let shard_lock = self.shard(shard_id)?.clone();
        let mut report = AppendReport::default();
        let mut waits: Vec<watch::Receiver<Option<bool>>> = Vec::new();
        let applied = {
            let mut shard = shard_lock.write().await;
            let shard = &mut *shard;
            let memory_budget = self.inner.config.memory_bytes_max;
            let mut reservation = MemoryReservation { inner: self.inner.clone(), bytes: 0 };
            let mut new_series: Vec<SeriesEntry> = Vec::new();
            let mut new_keys: Vec<SeriesKey> = Vec::new();
            let mut entries: Vec<SampleEntry> = Vec::new();
            // Samples accepted by this write: (ref, t) → bits, to catch in-request conflicts.
            let mut accepted: BTreeMap<(SeriesRef, TimestampMs), u64> = BTreeMap::new();
            // Series this write creates, so a write naming one new series twice uses one ref.
            let mut created: BTreeMap<SeriesKey, SeriesRef> = BTreeMap::new();
            // New series the memory budget refused, so each is reported once.
            let mut refused_memory_keys: BTreeSet<SeriesKey> = BTreeSet::new();
            for write in series {
                let key = SeriesKey::new(tenant, write.labels);
                let mut series_ref = shard
                    .head
                    .lookup(&key)
                    .or_else(|| shard.pending.series.get(&key).map(|p| p.series_ref))
                    .or_else(|| created.get(&key).copied());
                let mut refused_memory = false;
                for sample in write.samples {
                    let head_newest = series_ref.and_then(|r| shard.head.get(r)).and_then(|s| s.newest_t());
                    let pending_newest = series_ref.and_then(|r| shard.pending.newest(r));
                    let request_newest = series_ref.and_then(|r| accepted.range((r, TimestampMs::MIN)..=(r, TimestampMs::MAX)).next_back().map(|((_, t), _)| *t));
                    let newest = head_newest.max(pending_newest).max(request_newest);
                    let verdict = match judge_at {
                        Some(now) => match self.inner.config.acceptance.judge(now, newest, sample.t) {
                            Ok(verdict) => verdict,
                            Err(refusal) => {
                                report.refuse(&key.labels, sample.t, refusal.into());
                                continue;
                            }
                        },
                        None if newest.is_some_and(|n| sample.t <= n) => TimeVerdict::OutOfOrder,
                        None => TimeVerdict::InOrder,
                    };
                    let bits = sample.v.to_bits();
                    if let Some(r) = series_ref {
                        // Duplicate rules: this request, then pending writes, then the head,
                        // then blocks. In-order samples are newer than anything stored.
                        if let Some(existing) = accepted.get(&(r, sample.t)) {
                            if *existing == bits {
                                report.duplicates += 1;
                            } else {
                                report.refuse(&key.labels, sample.t, RefusalReason::ConflictInRequest { t: sample.t });
                            }
                            continue;
                        }
                        if let Some((existing, seq)) = shard.pending.samples.get(&(r, sample.t)) {
                            if *existing == bits {
                                report.duplicates += 1;
                                if let Some(outcome) = shard.pending.outcomes.get(seq) {
                                    waits.push(outcome.clone());
                                }
                            } else {
                                report.refuse(&key.labels, sample.t, RefusalReason::Conflict { t: sample.t, existing_bits: *existing });
                            }
                            continue;
                        }
                    }
                    // An in-order sample is newer than anything of the series in the head, but
                    // blocks may hold older data of a series the head forgot and recreated, so
                    // both verdicts consult the blocks up to the series' block bound.
                    if let Some(existing) = self.stored_value_at(shard, series_ref, &key, sample.t, verdict).await? {
                        if existing == bits {
                            report.duplicates += 1;
                        } else {
                            report.refuse(&key.labels, sample.t, RefusalReason::Conflict { t: sample.t, existing_bits: existing });
                        }
                        continue;
                    }
                    let r = match series_ref {
                        Some(r) => r,
                        None => {
                            let cost = Head::series_cost_bytes(&key) as u64;
                            if !self.try_reserve_memory(&mut reservation, cost) {
                                report.refuse(&key.labels, sample.t, RefusalReason::MemoryBudget { budget_bytes: memory_budget });
                                refused_memory = true;
                                continue;
                            }
                            let r = shard.ref_next;
                            shard.ref_next += 1;
                            new_series.push(SeriesEntry { series_ref: r, tenant: key.tenant.clone(), labels: key.labels.clone() });
                            new_keys.push(key.clone());
                            created.insert(key.clone(), r);
                            report.series_created += 1;
                            series_ref = Some(r);
                            r
                        }
                    };
                    if verdict == TimeVerdict::OutOfOrder {
                        report.out_of_order += 1;
                    }
                    accepted.insert((r, sample.t), bits);
                    entries.push(SampleEntry { series_ref: r, t: sample.t, v: sample.v });
                }
                if refused_memory && series_ref.is_none() && refused_memory_keys.insert(key.clone()) {
                    report.series_refused_memory.push(key.labels.clone());
                }
            }
            report.accepted = entries.len() as u64;
            if entries.is_empty() {
                None
            } else {
                // Submit under the lock: WAL order is judgement order.
                let series_ticket = if new_series.is_empty() {
                    None
                } else if sextant_core::determinism::planted::is_planted(sextant_core::determinism::planted::Bug::NondeterministicIteration) {
                    Some(self.inner.wal.submit(shard.id, RecordBody::Series(planted_address_order(new_series.clone())))?)
                } else {
                    Some(self.inner.wal.submit(shard.id, RecordBody::Series(new_series.clone()))?)
                };
                let samples_ticket = match self.inner.wal.submit(shard.id, RecordBody::Samples(entries.clone())) {
                    Ok(ticket) => ticket,
                    Err(error) => {
                        // The series record alone is harmless: replay creates empty series.
                        drop(series_ticket);
                        return Err(error.into());
                    }
                };
                if let Some(ticket) = &series_ticket {
                    self.note_appended(shard.id, ticket.seq(), ticket.bytes(), 0);
                }
                self.note_appended(shard.id, samples_ticket.seq(), samples_ticket.bytes(), entries.len());
                let seq = samples_ticket.seq();
                let (outcome_tx, outcome_rx) = watch::channel(None);
                shard.pending.seqs.insert(seq);
                if let Some(ticket) = &series_ticket {
                    shard.pending.seqs.insert(ticket.seq());
                }
                shard.pending.outcomes.insert(seq, outcome_rx);
                for key in &new_keys {
                    let entry = shard.pending.series.entry(key.clone()).or_default();
                    entry.users += 1;
                }
                for (series_entry, key) in new_series.iter().zip(&new_keys) {
                    shard.pending.series.get_mut(key).expect("inserted above").series_ref = series_entry.series_ref;
                }
                for entry in &entries {
                    shard.pending.samples.insert((entry.series_ref, entry.t), (entry.v.to_bits(), seq));
                }
                Some((series_ticket, samples_ticket, new_series, new_keys, entries, outcome_tx, reservation))
            }
        };
        let Some((series_ticket, samples_ticket, new_series, new_keys, entries, outcome_tx, reservation)) = applied else {
            // Nothing new to log; duplicates of pending samples wait for those samples.
            for mut wait in waits {
                if wait.wait_for(|o| o.is_some()).await.map(|o| *o == Some(true)).unwrap_or(false) {
                    continue;
                }
                return Err(EngineError::Wal(WalError::Closed));
            }
            return Ok(report);
        };
        // Durability and application run in their own task, so they complete even if the
        // caller stops waiting.
        let engine = self.clone();
        let imported = judge_at.is_none();
        let (done_tx, done_rx) = oneshot::channel();
        tokio::spawn(async move {
            let series_seq = series_ticket.as_ref().map(|t| t.seq());
            let samples_seq = samples_ticket.seq();
            let mut result = Ok(());
            if let Some(ticket) = series_ticket {
                if let Err(error) = ticket.durable().await {
                    result = Err(error);
                }
            }
            let samples_result = samples_ticket.durable().await;
            if result.is_ok() {
                result = samples_result.map(|_| ());
            }
            let mut shard = shard_lock.write().await;
            if result.is_ok() {
                let bound = shard.blocks_max_t();
                for (entry, key) in new_series.iter().zip(&new_keys) {
                    if shard.head.lookup(key).is_none() {
                        shard.head.insert_with_ref(entry.series_ref, key.clone());
                        shard.head.note_block_bound(entry.series_ref, bound);
                    }
                }
                for entry in &entries {
                    match shard.head.append(entry.series_ref, entry.t, entry.v) {
                        Ok(HeadAppend::Appended) | Ok(HeadAppend::Duplicate) => {}
                        Ok(HeadAppend::Conflict { .. }) => {
                            // Judgement saw head and pending state under the same lock; a
                            // conflict here means that invariant broke.
                            tracing::error!(shard = shard.id, t = entry.t, "conflict while applying a judged write");
                        }
                        Err(error) => tracing::error!(%error, "head append failed"),
                    }
                }
                let counter = if imported { &engine.inner.counters.samples_imported } else { &engine.inner.counters.samples_appended };
                counter.fetch_add(entries.len() as u64, Ordering::Relaxed);
                if engine.head_cut_due(&shard) {
                    engine.inner.cut_wanted.notify_one();
                }
            }
            for key in &new_keys {
                if let Some(p) = shard.pending.series.get_mut(key) {
                    p.users -= 1;
                    if p.users == 0 {
                        shard.pending.series.remove(key);
                    }
                }
            }
            for entry in &entries {
                if shard.pending.samples.get(&(entry.series_ref, entry.t)).is_some_and(|(_, seq)| *seq == samples_seq) {
                    shard.pending.samples.remove(&(entry.series_ref, entry.t));
                }
            }
            shard.pending.seqs.remove(&samples_seq);
            if let Some(seq) = series_seq {
                shard.pending.seqs.remove(&seq);
            }
            shard.pending.outcomes.remove(&samples_seq);
            engine.update_memory(&shard);
            // The series are in the head's account now (or were not created): release their
            // reservation.
            drop(reservation);
            drop(shard);
            let _ = outcome_tx.send(Some(result.is_ok()));
            let _ = done_tx.send(result);
        });
        match done_rx.await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => return Err(error.into()),
            Err(_) => return Err(EngineError::Closed),
        }
        for mut wait in waits {
            match wait.wait_for(|o| o.is_some()).await {
                Ok(outcome) if *outcome == Some(true) => {}
                _ => return Err(EngineError::Wal(WalError::Closed)),
            }
        }
        Ok(report)
    }

    /// Value bits stored for the series at `t`: in the head (only an out-of-order sample can
    /// meet one there), else in blocks when `t` is at or below the series' block bound — its
    /// `persisted_max_t` when in the head (which also covers data that blocks held before the
    /// series was recreated there), the shard's newest block time otherwise.
    async fn stored_value_at(
        &self,
        shard: &Shard,
        series_ref: Option<SeriesRef>,
        key: &SeriesKey,
        t: TimestampMs,
        verdict: TimeVerdict,
    ) -> Result<Option<u64>, EngineError> {
        let in_head = series_ref.and_then(|r| shard.head.get(r));
        if let (Some(series), TimeVerdict::OutOfOrder) = (in_head, verdict) {
            if let Some(s) = series.samples(t, t)?.first() {
                return Ok(Some(s.v.to_bits()));
            }
        }
        let block_bound = match in_head {
            Some(series) => series.persisted_max_t,
            None => shard.blocks_max_t(),
        };
        if block_bound.is_some_and(|bound| t <= bound) {
            return shard.block_value_at(key, t).await;
        }
        Ok(None)
    }

    /// Samples of the tenant's series selected by the matchers in `[min_t, max_t]`, across all
    /// shards, merged with the first-write-wins rule, sorted by labels. Series with no sample
    /// in the range are omitted.
    pub async fn select(&self, tenant: &str, matchers: &[Matcher], min_t: TimestampMs, max_t: TimestampMs) -> Result<Vec<SeriesSamples>, EngineError> {
        // Sources oldest first within a shard: blocks by seq, then the head. A series normally
        // lives in one shard; if two shards hold it (a shard move in progress) their sources
        // are merged with the same rule.
        let mut per_series: BTreeMap<Labels, Vec<Vec<Sample>>> = BTreeMap::new();
        for id in self.shard_ids() {
            let shard = self.shard(id)?.read().await;
            for block in &shard.blocks {
                if block.meta().max_t < min_t || block.meta().min_t > max_t {
                    continue;
                }
                let mut cache = GroupCache::default();
                for r in block.select(tenant, matchers) {
                    let samples = block.samples_cached(r, min_t, max_t, &mut cache).await?;
                    if !samples.is_empty() {
                        per_series.entry(block.series_labels(r).clone()).or_default().push(samples);
                    }
                }
            }
            for r in shard.head.select(tenant, matchers) {
                let series = shard.head.get(r).expect("selected refs exist");
                let samples = series.samples(min_t, max_t)?;
                if !samples.is_empty() {
                    per_series.entry(series.key.labels.clone()).or_default().push(samples);
                }
            }
        }
        let out = per_series.into_iter().map(|(labels, sources)| {
            let samples = if sources.len() == 1 { sources.into_iter().next().expect("one") } else { block::merge_first_write_wins(sources) };
            (labels, samples)
        });
        Ok(out.into_iter().map(|(labels, samples)| SeriesSamples { labels, samples }).collect())
    }

    /// [`Engine::select`] that stops as soon as the query's budget is spent, instead of loading
    /// every matching sample first: a selector matching every series of a tenant is refused
    /// after `series_max + 1` series or `samples_max + 1` samples, not after all of them. The
    /// budget is shared by all selects of one query (it counts down), so a caller passes the same
    /// `SelectBudget` to each. A series is charged once per select it appears in; its samples
    /// are charged per source before the first-write-wins merge (an overestimate only where
    /// sources overlap).
    pub async fn select_bounded(
        &self,
        tenant: &str,
        matchers: &[Matcher],
        min_t: TimestampMs,
        max_t: TimestampMs,
        budget: &mut SelectBudget,
    ) -> Result<Vec<SeriesSamples>, SelectError> {
        let mut per_series: BTreeMap<Labels, Vec<Vec<Sample>>> = BTreeMap::new();
        for id in self.shard_ids() {
            let shard = self.shard(id)?.read().await;
            for block in &shard.blocks {
                if block.meta().max_t < min_t || block.meta().min_t > max_t {
                    continue;
                }
                let mut cache = GroupCache::default();
                for r in block.select(tenant, matchers) {
                    let samples = block.samples_cached(r, min_t, max_t, &mut cache).await.map_err(EngineError::from)?;
                    if !samples.is_empty() {
                        let labels = block.series_labels(r);
                        budget.charge(labels, per_series.contains_key(labels), samples.len())?;
                        per_series.entry(labels.clone()).or_default().push(samples);
                    }
                }
            }
            for r in shard.head.select(tenant, matchers) {
                let series = shard.head.get(r).expect("selected refs exist");
                let samples = series.samples(min_t, max_t).map_err(EngineError::from)?;
                if !samples.is_empty() {
                    let labels = &series.key.labels;
                    budget.charge(labels, per_series.contains_key(labels), samples.len())?;
                    per_series.entry(labels.clone()).or_default().push(samples);
                }
            }
        }
        Ok(per_series
            .into_iter()
            .map(|(labels, sources)| {
                let samples = if sources.len() == 1 { sources.into_iter().next().expect("one") } else { block::merge_first_write_wins(sources) };
                SeriesSamples { labels, samples }
            })
            .collect())
    }

    /// The labels of the tenant's series that match and have a sample in `[min_t, max_t]`,
    /// sorted — what [`Engine::select`] would return, without loading samples where chunk
    /// metadata answers (the series, labels and label-values endpoints). Stops with
    /// [`SelectError`] once more than `budget.series_max` series matched; samples and bytes
    /// are not charged, as none are returned.
    pub async fn select_labels(&self, tenant: &str, matchers: &[Matcher], min_t: TimestampMs, max_t: TimestampMs, budget: &mut SelectBudget) -> Result<Vec<Labels>, SelectError> {
        let mut out: BTreeSet<Labels> = BTreeSet::new();
        for id in self.shard_ids() {
            let shard = self.shard(id)?.read().await;
            for block in &shard.blocks {
                if block.meta().max_t < min_t || block.meta().min_t > max_t {
                    continue;
                }
                for r in block.select(tenant, matchers) {
                    let labels = block.series_labels(r);
                    if out.contains(labels) || !block.has_samples_in(r, min_t, max_t).await.map_err(EngineError::from)? {
                        continue;
                    }
                    budget.charge(labels, false, 0)?;
                    out.insert(labels.clone());
                }
            }
            for r in shard.head.select(tenant, matchers) {
                let series = shard.head.get(r).expect("selected refs exist");
                let labels = &series.key.labels;
                // Head chunks are in memory: decoding them is cheap next to a block read.
                if out.contains(labels) || series.samples(min_t, max_t).map_err(EngineError::from)?.is_empty() {
                    continue;
                }
                budget.charge(labels, false, 0)?;
                out.insert(labels.clone());
            }
        }
        Ok(out.into_iter().collect())
    }

    /// Label names of the tenant's series that have samples in `[min_t, max_t]` and match.
    pub async fn label_names(&self, tenant: &str, matchers: &[Matcher], min_t: TimestampMs, max_t: TimestampMs) -> Result<Vec<String>, SelectError> {
        let mut names = BTreeSet::new();
        for labels in self.select_labels(tenant, matchers, min_t, max_t, &mut SelectBudget::new(usize::MAX, usize::MAX, usize::MAX)).await? {
            names.extend(labels.iter().map(|l| l.name.clone()));
        }
        Ok(names.into_iter().collect())
    }

    /// Values of `name` across the tenant's matching series with samples in `[min_t, max_t]`.
    pub async fn label_values(&self, tenant: &str, name: &str, matchers: &[Matcher], min_t: TimestampMs, max_t: TimestampMs) -> Result<Vec<String>, SelectError> {
        let mut values = BTreeSet::new();
        for labels in self.select_labels(tenant, matchers, min_t, max_t, &mut SelectBudget::new(usize::MAX, usize::MAX, usize::MAX)).await? {
            let value = labels.get(name);
            if !value.is_empty() {
                values.insert(value.to_string());
            }
        }
        Ok(values.into_iter().collect())
    }

    /// Head series of a tenant (all shards), and of one metric when given. The ingest path's
    /// cardinality limits read these.
    pub async fn head_series_count(&self, tenant: &str, metric: Option<&str>) -> u64 {
        let mut count = 0;
        for shard in self.inner.shards.values() {
            let shard = shard.read().await;
            count += match metric {
                Some(metric) => shard.head.postings().count(tenant, sextant_core::labels::METRIC_NAME_LABEL, metric),
                None => shard.head.postings().tenant_series(tenant),
            } as u64;
        }
        count
    }

    /// Every series the head holds (all shards, all tenants), ordered by tenant then labels.
    /// The node seeds its active-series tracker from this when the engine opens, so series
    /// replayed from the WAL count against the limits. The keys are shared with the head
    /// (one `Arc` clone per series), so the listing costs a pointer per series.
    pub async fn head_series_keys(&self) -> Vec<Arc<SeriesKey>> {
        let mut keys = Vec::new();
        for shard in self.inner.shards.values() {
            let shard = shard.read().await;
            keys.extend(shard.head.series_keys().map(|(_, key)| key.clone()));
        }
        keys.sort();
        keys
    }

    /// Every series the head holds, and every block series with a sample at or after
    /// `min_t` (by chunk metadata; tombstones not applied), each once, ordered by tenant then
    /// labels. The node seeds its active-series tracker from this: a series cut from the head
    /// into a block is still active until it has been idle for the tracker's window, and a
    /// restart must not forget it (or the restarted node admits another limit of new series).
    pub async fn recent_series_keys(&self, min_t: TimestampMs) -> Vec<Arc<SeriesKey>> {
        let mut keys: BTreeSet<Arc<SeriesKey>> = BTreeSet::new();
        for shard in self.inner.shards.values() {
            let shard = shard.read().await;
            keys.extend(shard.head.series_keys().map(|(_, key)| key.clone()));
            for block in shard.blocks.iter().filter(|b| b.meta().max_t >= min_t) {
                for r in block.all_series() {
                    if block.series_max_t(r) >= min_t {
                        let key = SeriesKey::new(block.series_tenant(r), block.series_labels(r).clone());
                        if !keys.contains(&key) {
                            keys.insert(Arc::new(key));
                        }
                    }
                }
            }
        }
        keys.into_iter().collect()
    }

    /// The cardinality report for one tenant (head series).
    pub async fn cardinality(&self, tenant: &str) -> CardinalityReport {
        let mut per_metric: BTreeMap<String, u64> = BTreeMap::new();
        let mut labels: BTreeMap<String, (BTreeSet<String>, u64)> = BTreeMap::new();
        let mut head_series = 0;
        for shard in self.inner.shards.values() {
            let shard = shard.read().await;
            let postings = shard.head.postings();
            head_series += postings.tenant_series(tenant) as u64;
            for (metric, count) in postings.series_per_value(tenant, sextant_core::labels::METRIC_NAME_LABEL) {
                *per_metric.entry(metric).or_default() += count as u64;
            }
            for name in postings.label_names(tenant) {
                let entry = labels.entry(name.clone()).or_default();
                for (value, count) in postings.series_per_value(tenant, &name) {
                    entry.0.insert(value);
                    entry.1 += count as u64;
                }
            }
        }
        let mut series_per_metric: Vec<(String, u64)> = per_metric.into_iter().collect();
        series_per_metric.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        CardinalityReport {
            head_series,
            series_per_metric,
            labels: labels.into_iter().map(|(name, (values, series))| (name, values.len() as u64, series)).collect(),
        }
    }

    /// Deletes the tenant's matching samples in `[min_t, max_t]` from every shard: blocks get a
    /// durable tombstone first, then the WAL logs the deletion for the head, then the head
    /// drops the samples. Returns head samples removed. Idempotent, so a caller whose request
    /// failed midway simply repeats it.
    pub async fn delete(&self, tenant: &str, matchers: &[Matcher], min_t: TimestampMs, max_t: TimestampMs) -> Result<u64, EngineError> {
        let mut removed = 0;
        for id in self.shard_ids() {
            removed += self.delete_in_shard(id, tenant, matchers, min_t, max_t).await?;
        }
        Ok(removed)
    }

    /// [`Engine::delete`] for one shard (replicated tombstones apply to their shard only).
    async fn delete_in_shard(&self, id: ShardId, tenant: &str, matchers: &[Matcher], min_t: TimestampMs, max_t: TimestampMs) -> Result<u64, EngineError> {
        let shard_lock = self.shard(id)?.clone();
        // A cut or compaction in progress writes its block from data it copied earlier; the
        // deletion waits for it, so the tombstone reaches the new block too (and no crash can
        // leave a durable block that holds deleted samples without their tombstone).
        let _rewrites = self.shard_rewrites(id)?.lock().await;
        let mut shard = shard_lock.write().await;
        for block in shard.blocks.iter_mut() {
            if block.meta().max_t < min_t || block.meta().min_t > max_t || block.select(tenant, matchers).is_empty() {
                continue;
            }
            block.add_tombstone(Tombstone { tenant: tenant.to_string(), matchers: matchers.to_vec(), min_t, max_t }).await?;
        }
        let ticket =
            self.inner.wal.submit(id, RecordBody::Tombstone(TombstoneEntry { tenant: tenant.to_string(), matchers: matchers.to_vec(), min_t, max_t }))?;
        self.note_appended(id, ticket.seq(), ticket.bytes(), 0);
        // The head only holds durable data, so log first and apply once durable. Holding
        // the shard lock meanwhile keeps writes from interleaving with the deletion.
        ticket.durable().await?;
        let removed = shard.head.delete(tenant, matchers, min_t, max_t)? as u64;
        self.update_memory(&shard);
        Ok(removed)
    }

    /// Resolves once a write has left some shard's head ready for a cut (more than 1.5 block
    /// spans of data time), or at once if that happened since the last call. One wake-up per
    /// burst: the caller runs [`Engine::maintain`], which cuts every shard that is due.
    pub async fn cut_wanted(&self) {
        self.inner.cut_wanted.notified().await
    }

    /// Prometheus's rule, shared by the write path's wake-up and `cut_shard`.
    fn head_cut_due(&self, shard: &Shard) -> bool {
        let span = self.inner.config.block_span_ms;
        match (shard.head.min_t(), shard.head.max_t()) {
            (Some(min_t), Some(max_t)) => max_t.saturating_sub(min_t) > span + span / 2,
            _ => false,
        }
    }

    /// One maintenance pass: cut head data older than the head's window into blocks, compact,
    /// apply retention, and checkpoint the WAL after cuts. The node calls it periodically.
    pub async fn maintain(&self) -> Result<MaintainReport, EngineError> {
        let _guard = self.inner.maintenance.lock().await;
        let mut report = MaintainReport::default();
        for id in self.shard_ids() {
            self.cut_shard(id, false, &mut report).await?;
            self.compact_shard(id, &mut report).await?;
        }
        self.apply_retention(&mut report).await?;
        if report.blocks_cut > 0 {
            self.checkpoint().await?;
            report.checkpointed = true;
        }
        Ok(report)
    }

    /// Persists the whole head to blocks and checkpoints, so the WAL shrinks to what is still
    /// pending. Used on clean shutdown and by tests.
    pub async fn flush(&self) -> Result<MaintainReport, EngineError> {
        let _guard = self.inner.maintenance.lock().await;
        let mut report = MaintainReport::default();
        for id in self.shard_ids() {
            self.cut_shard(id, true, &mut report).await?;
        }
        self.checkpoint().await?;
        report.checkpointed = true;
        Ok(report)
    }

    fn shard_rewrites(&self, id: ShardId) -> Result<&tokio::sync::Mutex<()>, EngineError> {
        self.inner.shard_rewrites.get(&id).ok_or(EngineError::UnknownShard { shard: id })
    }

    /// Moves head data below the cut time into a new block, in three steps so writes are not
    /// held up while the block is encoded and made durable:
    ///
    /// 1. under the shard's read lock, choose the cut time and copy the samples below it;
    /// 2. with no shard lock, write the block and open it;
    /// 3. under the write lock, serve the block, record the cut, and drop from the head exactly
    ///    the samples copied in step 1.
    ///
    /// Between 1 and 3 writes go on: a sample older than the cut time that arrives meanwhile
    /// stays in the head (it is not in the block), and the WAL seq recorded for the cut is taken
    /// in step 1, so replay restores it too. Copied samples cannot change meanwhile: the head
    /// refuses a different value at a stored timestamp, and deletions wait on
    /// `shard_rewrites`, held for all three steps.
    async fn cut_shard(&self, id: ShardId, everything: bool, report: &mut MaintainReport) -> Result<(), EngineError> {
        let shard_lock = self.shard(id)?.clone();
        let _rewrites = self.shard_rewrites(id)?.lock().await;
        let span = self.inner.config.block_span_ms;
        // Step 1.
        let (before_t, wal_seq_max, data, copied, blocks_dir, seq) = {
            let shard = shard_lock.read().await;
            let (Some(min_t), Some(max_t)) = (shard.head.min_t(), shard.head.max_t()) else { return Ok(()) };
            let before_t = if everything {
                max_t.saturating_add(1)
            } else {
                // Prometheus's rule: cut once the head spans 1.5 block spans, keeping the newest
                // half span (and whatever is in the current aligned window) in memory.
                if !self.head_cut_due(&shard) {
                    return Ok(());
                }
                (max_t - span / 2).div_euclid(span) * span
            };
            if before_t <= min_t {
                return Ok(());
            }
            // Every record at or below this seq has been applied to the head.
            let wal_seq_max = match shard.pending.seqs.first() {
                Some(first) => first - 1,
                None => self.inner.wal.next_seq(id) - 1,
            };
            let mut data = Vec::new();
            let mut copied: Vec<(SeriesRef, Vec<TimestampMs>)> = Vec::new();
            for (r, series) in shard.head.series_iter() {
                let samples = series.samples(TimestampMs::MIN, before_t - 1)?;
                if !samples.is_empty() {
                    copied.push((r, samples.iter().map(|s| s.t).collect()));
                    data.push(BlockSeriesData { tenant: series.key.tenant.clone(), labels: series.key.labels.clone(), samples });
                }
            }
            if data.is_empty() {
                return Ok(());
            }
            (before_t, wal_seq_max, data, copied, shard.blocks_dir.clone(), shard.block_seq_next)
        };
        // A seq is used once even if the attempt fails: a failed write may leave a visible
        // directory of that name behind.
        shard_lock.write().await.block_seq_next = seq + 1;
        let samples: u64 = data.iter().map(|d| d.samples.len() as u64).sum();
        // Step 2.
        let writer = &self.inner.config.block_writer;
        let cut_writer = BlockWriterConfig { zstd_level: writer.cut_zstd_level.filter(|_| writer.zstd_level.is_some()), ..writer.clone() };
        block::write_block(self.inner.fs.as_ref(), &blocks_dir, seq, data, &cut_writer).await?;
        let opened = Block::open(self.inner.fs.clone(), block::block_dir(&blocks_dir, seq)).await?;
        // Step 3.
        let mut shard = shard_lock.write().await;
        shard.blocks.push(opened);
        let mut cuts = shard.cuts.clone();
        cuts.push(HeadCut { wal_seq_max, before_t });
        if cuts.len() > HEAD_CUTS_MAX {
            cuts.remove(0);
        }
        let bytes = serde_json::to_vec(&cuts).expect("cuts serialize");
        // The cut counts (for replay and checkpoints) only once its file is durable.
        write_atomically(self.inner.fs.as_ref(), &shard.cuts_path(), &bytes).await?;
        shard.cuts = cuts;
        // A write judged against a series and now waiting for its WAL fsync appends to it when
        // it applies: the cut must not drop that series from the head, even if it has no
        // sample left below `before_t` (the simulator's replicated seed 78 panicked on it).
        let in_flight: BTreeSet<SeriesRef> = shard.pending.samples.keys().map(|(r, _)| *r).collect();
        let taken = shard.head.take_copied(before_t, &copied, &in_flight)?;
        assert_eq!(taken, samples, "the head gave up exactly what the block holds");
        self.update_memory(&shard);
        report.blocks_cut += 1;
        report.samples_persisted += samples;
        Ok(())
    }

    /// Merges blocks, in the same three steps as [`Engine::cut_shard`]: choose the sources
    /// under the read lock, write the merged block with no shard lock (from the sources opened
    /// again, so the served ones stay in place for reads), swap under the write lock. Blocks
    /// change only under `shard_rewrites`, which this holds throughout.
    async fn compact_shard(&self, id: ShardId, report: &mut MaintainReport) -> Result<(), EngineError> {
        let shard_lock = self.shard(id)?.clone();
        let _rewrites = self.shard_rewrites(id)?.lock().await;
        let (source_seqs, blocks_dir, out_seq) = {
            let shard = shard_lock.read().await;
            let Some(members) = self.compaction_group(&shard) else { return Ok(()) };
            (members.iter().map(|i| shard.blocks[*i].meta().seq).collect::<Vec<u64>>(), shard.blocks_dir.clone(), shard.block_seq_next)
        };
        shard_lock.write().await.block_seq_next = out_seq + 1;
        let mut sources = Vec::with_capacity(source_seqs.len());
        for seq in &source_seqs {
            sources.push(Block::open(self.inner.fs.clone(), block::block_dir(&blocks_dir, *seq)).await?);
        }
        let source_refs: Vec<&Block> = sources.iter().collect();
        let meta = block::compact(self.inner.fs.clone(), &blocks_dir, &source_refs, out_seq, &self.inner.config.block_writer).await?;
        let opened = match meta {
            Some(_) => Some(Block::open(self.inner.fs.clone(), block::block_dir(&blocks_dir, out_seq)).await?),
            None => None,
        };
        drop(sources);
        {
            let mut shard = shard_lock.write().await;
            if let Some(opened) = opened {
                shard.blocks.push(opened);
            }
            // The output is durable and holds exactly the merge of the sources, so the sources
            // leave the served set before their files go: a failed deletion then costs disk
            // space until the next open (which removes superseded blocks), never a failed read.
            shard.blocks.retain(|b| !source_seqs.contains(&b.meta().seq));
            shard.blocks.sort_by_key(|b| b.meta().seq);
            self.update_memory(&shard);
        }
        report.blocks_compacted += source_seqs.len() as u64;
        for seq in &source_seqs {
            block::delete_block(self.inner.fs.as_ref(), &blocks_dir, *seq).await?;
        }
        Ok(())
    }

    /// Indices (into `shard.blocks`) of the blocks the next compaction merges, if any.
    fn compaction_group(&self, shard: &Shard) -> Option<Vec<usize>> {
        let span = self.inner.config.block_span_ms;
        let head_min = shard.head.min_t();
        // Compact blocks that fall in one window of 3 spans (then 12 spans) once the window is
        // complete, and any blocks that overlap in time.
        let mut group: Vec<usize> = Vec::new();
        for window in [3 * span, 12 * span] {
            let mut by_window: BTreeMap<i64, Vec<usize>> = BTreeMap::new();
            for (i, b) in shard.blocks.iter().enumerate() {
                let w = b.meta().min_t.div_euclid(window);
                if b.meta().max_t.div_euclid(window) == w {
                    by_window.entry(w).or_default().push(i);
                }
            }
            for (w, members) in by_window {
                let window_end = (w + 1).saturating_mul(window);
                if members.len() >= 2 && head_min.is_none_or(|h| h >= window_end) {
                    group = members;
                    break;
                }
            }
            if !group.is_empty() {
                break;
            }
        }
        if group.is_empty() {
            'outer: for i in 0..shard.blocks.len() {
                for j in i + 1..shard.blocks.len() {
                    let (a, b) = (shard.blocks[i].meta(), shard.blocks[j].meta());
                    if a.min_t <= b.max_t && b.min_t <= a.max_t {
                        group = vec![i, j];
                        break 'outer;
                    }
                }
            }
        }
        if group.len() < 2 {
            return None;
        }
        // Blocks with a seq between the members that overlap them must join, so "lower seq is
        // older" keeps its meaning (block::compact's contract).
        let lo = group.iter().map(|i| shard.blocks[*i].meta().seq).min().expect("non-empty");
        let hi = group.iter().map(|i| shard.blocks[*i].meta().seq).max().expect("non-empty");
        let gmin = group.iter().map(|i| shard.blocks[*i].meta().min_t).min().expect("non-empty");
        let gmax = group.iter().map(|i| shard.blocks[*i].meta().max_t).max().expect("non-empty");
        let members: Vec<usize> = (0..shard.blocks.len())
            .filter(|i| {
                let m = shard.blocks[*i].meta();
                group.contains(i) || (m.seq > lo && m.seq < hi && m.min_t <= gmax && gmin <= m.max_t)
            })
            .collect();
        Some(members)
    }

    async fn apply_retention(&self, report: &mut MaintainReport) -> Result<(), EngineError> {
        let now = self.inner.clock.now_wall_ms();
        if let Some(retention_ms) = self.inner.config.retention_ms {
            let cutoff = now.saturating_sub(retention_ms);
            for id in self.shard_ids() {
                let shard_lock = self.shard(id)?.clone();
                let mut shard = shard_lock.write().await;
                let doomed: Vec<u64> = shard.blocks.iter().filter(|b| b.meta().max_t < cutoff).map(|b| b.meta().seq).collect();
                // Out of the served set first, so a failed deletion never breaks reads.
                shard.blocks.retain(|b| !doomed.contains(&b.meta().seq));
                self.update_memory(&shard);
                for seq in &doomed {
                    block::delete_block(self.inner.fs.as_ref(), &shard.blocks_dir, *seq).await?;
                    report.blocks_deleted_retention += 1;
                }
            }
        }
        if let Some(bytes_max) = self.inner.config.retention_bytes {
            loop {
                // The oldest block across shards goes first.
                let mut total = 0u64;
                let mut oldest: Option<(TimestampMs, ShardId, u64)> = None;
                for (id, shard) in &self.inner.shards {
                    let shard = shard.read().await;
                    for b in &shard.blocks {
                        total += b.meta().files.index_bytes + b.meta().files.chunks_bytes;
                        let candidate = (b.meta().max_t, *id, b.meta().seq);
                        if oldest.is_none_or(|o| candidate < o) {
                            oldest = Some(candidate);
                        }
                    }
                }
                let Some((_, id, seq)) = oldest else { break };
                if total <= bytes_max {
                    break;
                }
                let mut shard = self.shard(id)?.write().await;
                shard.blocks.retain(|b| b.meta().seq != seq);
                self.update_memory(&shard);
                block::delete_block(self.inner.fs.as_ref(), &shard.blocks_dir, seq).await?;
                report.blocks_deleted_retention += 1;
            }
        }
        Ok(())
    }

    /// Rewrites the WAL's sealed segments without what blocks already hold.
    async fn checkpoint(&self) -> Result<(), EngineError> {
        // Snapshot what the filter needs. Records in sealed segments were all submitted before
        // this point, so the cuts and live refs taken now describe them.
        let mut cuts: BTreeMap<ShardId, Vec<HeadCut>> = BTreeMap::new();
        let mut live: BTreeMap<ShardId, BTreeSet<SeriesRef>> = BTreeMap::new();
        let mut aliases: BTreeMap<ShardId, BTreeMap<SeriesRef, SeriesRef>> = BTreeMap::new();
        // Series created after this snapshot (refs at or above ref_next) may have their record in
        // the segments being sealed; they are always kept.
        let mut ref_next: BTreeMap<ShardId, SeriesRef> = BTreeMap::new();
        for (id, shard) in &self.inner.shards {
            let shard = shard.read().await;
            cuts.insert(*id, shard.cuts.clone());
            aliases.insert(*id, shard.aliases.clone());
            ref_next.insert(*id, shard.ref_next);
            let mut refs: BTreeSet<SeriesRef> = shard.head.series_keys().map(|(r, _)| r).collect();
            refs.extend(shard.pending.series.values().map(|p| p.series_ref));
            live.insert(*id, refs);
        }
        let mut kept_samples: BTreeSet<ShardId> = BTreeSet::new();
        // Replication floors: records above a shard's floor are kept exactly as logged, so a
        // tail can still ship them. Bounds are enforced first, so a stale floor holds nothing.
        let floors = self.replication_floors_for_checkpoint();
        // Per shard, the highest seq this checkpoint dropped or changed: tails must not ship
        // at or below it.
        let mut modified: BTreeMap<ShardId, u64> = BTreeMap::new();
        self.inner
            .wal
            .checkpoint(|record: WalRecord| {
                let (shard_id, seq) = (record.shard, record.seq);
                if floors.get(&shard_id).is_some_and(|floor| seq > *floor) {
                    if matches!(record.body, RecordBody::Samples(_)) {
                        kept_samples.insert(shard_id);
                    }
                    return Some(record);
                }
                let mut changed = false;
                let shard_cuts = cuts.get(&record.shard).map(Vec::as_slice).unwrap_or(&[]);
                let kept = match record.body {
                    RecordBody::Series(entries) => {
                        let refs = live.get(&record.shard);
                        let fresh_from = ref_next.get(&record.shard).copied().unwrap_or(0);
                        let before = entries.len();
                        let entries: Vec<SeriesEntry> = entries
                            .into_iter()
                            .filter(|e| e.series_ref >= fresh_from || refs.is_some_and(|r| r.contains(&e.series_ref)))
                            .collect();
                        changed = entries.len() != before;
                        (!entries.is_empty()).then_some(WalRecord { body: RecordBody::Series(entries), ..record })
                    }
                    RecordBody::Samples(entries) => {
                        let shard_aliases = aliases.get(&record.shard);
                        let before = entries.len();
                        let entries: Vec<SampleEntry> = entries
                            .into_iter()
                            .filter(|e| !is_persisted(shard_cuts, record.seq, e.t))
                            .map(|e| {
                                let series_ref = shard_aliases.and_then(|a| a.get(&e.series_ref)).copied().unwrap_or(e.series_ref);
                                changed |= series_ref != e.series_ref;
                                SampleEntry { series_ref, ..e }
                            })
                            .collect();
                        changed |= entries.len() != before;
                        if entries.is_empty() {
                            None
                        } else {
                            kept_samples.insert(record.shard);
                            Some(WalRecord { body: RecordBody::Samples(entries), ..record })
                        }
                    }
                    // A deletion matters only to samples logged before it that are still kept.
                    RecordBody::Tombstone(_) => kept_samples.contains(&record.shard).then_some(record),
                };
                if changed || kept.is_none() {
                    let entry = modified.entry(shard_id).or_default();
                    *entry = (*entry).max(seq);
                }
                kept
            })
            .await?;
        self.note_checkpoint_modified(&modified);
        // The checkpoint no longer holds persisted samples, so the cuts taken before it are no
        // longer needed by replay.
        for (id, shard) in &self.inner.shards {
            let mut shard = shard.write().await;
            // A cut stays while a record it covers was kept whole for a replication floor, so
            // replay still skips that record's persisted samples.
            let floor = floors.get(id).copied();
            let done = cuts.get(id).map(|c| c.iter().take_while(|cut| floor.is_none_or(|f| cut.wal_seq_max <= f)).count()).unwrap_or(0);
            // Every alias came from replay and every record using one was rewritten, except in
            // records kept whole for a floor: keep the aliases while a floor holds any.
            if floor.is_none() {
                shard.aliases.clear();
            }
            let done = done.min(shard.cuts.len());
            shard.cuts.drain(..done);
            let bytes = serde_json::to_vec(&shard.cuts).expect("cuts serialize");
            write_atomically(self.inner.fs.as_ref(), &shard.cuts_path(), &bytes).await?;
        }
        Ok(())
    }

    pub async fn status(&self) -> EngineStatus {
        let mut status = EngineStatus {
            poisoned: self.inner.wal.stats().poisoned,
            memory_bytes: self.memory_total(),
            memory_bytes_max: self.inner.config.memory_bytes_max,
            samples_appended: self.inner.counters.samples_appended.load(Ordering::Relaxed),
            samples_imported: self.inner.counters.samples_imported.load(Ordering::Relaxed),
            replay_records: self.inner.counters.replay_records.load(Ordering::Relaxed),
            replay_samples_lost: self.inner.counters.replay_samples_lost.load(Ordering::Relaxed),
            ..EngineStatus::default()
        };
        for shard in self.inner.shards.values() {
            let shard = shard.read().await;
            status.head_series += shard.head.series_count() as u64;
            status.blocks += shard.blocks.len() as u64;
            status.block_bytes += shard.blocks.iter().map(|b| b.meta().files.index_bytes + b.meta().files.chunks_bytes).sum::<u64>();
        }
        status
    }

    pub fn wal_stats(&self) -> crate::wal::WalStats {
        self.inner.wal.stats()
    }

    /// Stops accepting work, waits for queued WAL records to be durable, and closes the WAL.
    pub async fn close(self) -> Result<(), EngineError> {
        self.inner.closed.store(true, Ordering::SeqCst);
        // Wait until in-flight writes have applied: each holds its pending seqs until then.
        for shard in self.inner.shards.values() {
            loop {
                let pending = !shard.read().await.pending.seqs.is_empty();
                if !pending {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            }
        }
        self.inner.wal.clone().close().await?;
        Ok(())
    }
}

