//! Storage-side building blocks for RF=2 replication (docs/design/storage.md § Replication
//! support): the shard digest, the WAL tail a primary ships, the replication floor that keeps
//! that tail from being checkpointed away, and the secondary's idempotent apply with its
//! durable position.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use sextant_core::labels::Labels;
use sextant_core::matcher::Matcher;
use sextant_core::sample::{Sample, TimestampMs};
use sextant_core::series::SeriesKey;
use xxhash_rust::xxh64::Xxh64;

use super::{write_atomically, shard_dir, Engine, EngineError, Shard, WriteSeries};
use crate::block::{self, GroupCache};
use crate::fs::FileSystem;
use crate::index::SeriesRef;
use crate::varint::put_uvarint;
use crate::wal::record::{decode_payload, encode_payload, DecodeError, Payload};
use crate::wal::{RecordBody, SeriesEntry, ShardId, WalError, WalRecord};

/// Seed of the digest's xxHash64.
pub const DIGEST_SEED: u64 = 0;

/// The secondary's applied position per shard, under `shards/<id>/`.
pub const REPLICA_POSITION_FILE: &str = "replica-position.json";

/// Records per batch marks of the floor accounting are merged within this window.
const RETAIN_MARK_MS: i64 = 1000;

/// A digest of what a shard holds in a time range (byte stream in docs/design/storage.md).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ShardDigest {
    /// Series with at least one sample in the range.
    pub series: u64,
    pub samples: u64,
    /// xxHash64 (seed [`DIGEST_SEED`]) of the canonical byte stream.
    pub hash: u64,
}

struct DigestState {
    series: u64,
    samples: u64,
    hasher: Xxh64,
}

impl DigestState {
    fn new() -> Self {
        DigestState { series: 0, samples: 0, hasher: Xxh64::new(DIGEST_SEED) }
    }

    /// Feeds one series: `str tenant | uvarint labels | labels × (str name | str value) |
    /// uvarint samples | samples × (t i64 LE | value bits u64 LE)`, `str` = uvarint len | UTF-8.
    fn feed(&mut self, key: &SeriesKey, samples: &[Sample], buf: &mut Vec<u8>) {
        buf.clear();
        put_str(buf, &key.tenant);
        put_uvarint(buf, key.labels.len() as u64);
        for label in key.labels.iter() {
            put_str(buf, &label.name);
            put_str(buf, &label.value);
        }
        put_uvarint(buf, samples.len() as u64);
        for s in samples {
            buf.extend_from_slice(&s.t.to_le_bytes());
            buf.extend_from_slice(&s.v.to_bits().to_le_bytes());
        }
        self.hasher.update(buf);
        self.series += 1;
        self.samples += samples.len() as u64;
    }

    fn finish(&self) -> ShardDigest {
        ShardDigest { series: self.series, samples: self.samples, hash: self.hasher.digest() }
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_uvarint(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

/// One shipped record: its WAL payload bytes (storage-format.md § WAL, "Record payload") and
/// their CRC-32 (IEEE, as the WAL's framing), checked before anything of it is applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TailRecord {
    pub shard: ShardId,
    pub seq: u64,
    pub bytes: Vec<u8>,
    pub crc32: u32,
}

impl TailRecord {
    pub fn new(shard: ShardId, seq: u64, bytes: Vec<u8>) -> Self {
        let crc32 = crc32fast::hash(&bytes);
        TailRecord { shard, seq, bytes, crc32 }
    }
}

/// What a primary ships for one shard: records in seq order, self-contained.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WalTail {
    pub shard: ShardId,
    /// A Series record payload (seq 0) defining every series ref the records use that no
    /// Series record among them defines; empty when there is none.
    pub series: Vec<u8>,
    /// CRC-32 of `series`.
    pub series_crc32: u32,
    pub records: Vec<TailRecord>,
    /// One past the highest durable seq of the shard when the tail was read: the primary's
    /// position, for lag.
    pub durable_next_seq: u64,
}

impl WalTail {
    /// The highest seq shipped, if any.
    pub fn last_seq(&self) -> Option<u64> {
        self.records.last().map(|r| r.seq)
    }
}

/// Why a tail cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum TailError {
    /// Records after the requested position are no longer in the WAL exactly as logged
    /// (checkpointed, released floor, damage): the caller copies data instead (anti-entropy).
    #[error("WAL records after the requested position are gone; the oldest shippable seq is {oldest_seq}")]
    Truncated { oldest_seq: u64 },
    #[error(transparent)]
    Engine(#[from] EngineError),
}

impl From<WalError> for TailError {
    fn from(error: WalError) -> Self {
        TailError::Engine(error.into())
    }
}

/// What was wrong with one shipped record.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum RecordProblem {
    #[error("payload does not decode: {0}")]
    Decode(#[from] DecodeError),
    #[error("payload CRC-32 is {actual:#010x}, the record says {expected:#010x} (damaged in transit)")]
    Checksum { expected: u32, actual: u32 },
    #[error("record is for shard {got}, the batch for shard {expected}")]
    WrongShard { expected: ShardId, got: ShardId },
    #[error("envelope says (shard {shard}, seq {seq}) but the payload says (shard {payload_shard}, seq {payload_seq})")]
    EnvelopeMismatch { shard: ShardId, seq: u64, payload_shard: ShardId, payload_seq: u64 },
    #[error("samples name series ref {series_ref}, which neither the batch's series preamble nor an earlier record defines")]
    UnknownSeries { series_ref: SeriesRef },
    #[error("the series preamble is not a Series record")]
    PreambleNotSeries,
    #[error("checkpoint meta records are never shipped")]
    Meta,
}

/// Why [`Engine::apply_replicated`] stopped. Records before the failing one were applied and
/// the position says how far (`applied_through`).
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("replicated record #{index} (seq {seq}) refused, nothing of it or after it applied (applied through {applied_through:?}): {problem}")]
    BadRecord { index: usize, seq: u64, problem: RecordProblem, applied_through: Option<u64> },
    #[error("the series preamble of the batch is bad, nothing applied: {problem}")]
    BadPreamble { problem: RecordProblem },
    #[error("replicated records skip from seq {expected} to {got}; nothing from {got} on applied (applied through {applied_through:?})")]
    Gap { expected: u64, got: u64, applied_through: Option<u64> },
    #[error("{refused} replicated samples refused for a passing reason (first: {reason}); records from seq {from_seq} on not applied (applied through {applied_through:?}); retry later")]
    Retryable { refused: u64, reason: String, from_seq: u64, applied_through: Option<u64> },
    #[error(transparent)]
    Engine(#[from] EngineError),
}

/// What [`Engine::apply_replicated`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ApplyReport {
    /// The shard's applied position after the call (the highest seq applied so far).
    pub applied_through: Option<u64>,
    pub records: u64,
    /// Samples newly stored.
    pub samples_accepted: u64,
    /// Samples already stored with the same value bits (re-applied records).
    pub duplicates: u64,
    /// Samples refused because another value is stored at their timestamp (first write wins
    /// on the secondary too; the digests then differ and anti-entropy reports the shard).
    pub conflicts: u64,
    pub series_created: u64,
    pub tombstones: u64,
}

/// Replication figures for `/metrics` and status.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReplicationStatus {
    /// Floors released because a retention bound was exceeded (since open).
    pub floors_released: u64,
    pub shards: BTreeMap<ShardId, ReplicationShardStatus>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReplicationShardStatus {
    pub floor: Option<u64>,
    /// WAL payload bytes logged above the floor (counted in windows of about a second).
    pub retained_bytes: u64,
    /// Age of the oldest record above the floor, on the injected clock.
    pub retained_ms: i64,
    /// Samples in the records logged above the floor since it was set (records already
    /// logged above it when it was set are not counted: their contents are not read).
    pub retained_samples: u64,
    /// When the oldest record above the floor was logged (injected clock, monotonic ns);
    /// `None` when there is none or it was logged before the floor was set.
    pub oldest_logged_ns: Option<u64>,
    /// Tails with `after_seq` below this answer `Truncated`.
    pub tail_from_seq: u64,
    /// Secondary side: the applied position.
    pub applied_through: Option<u64>,
}

#[derive(Debug, Default)]
struct Floor {
    floor: Option<u64>,
    /// (first seq, wall ms of that record, payload bytes of the records from it on until the
    /// next mark): a coarse account of records above the floor.
    marks: VecDeque<(u64, i64, u64)>,
    /// (seq, samples in it, monotonic ns when logged) of each record logged above the floor
    /// since it was set, oldest first; exact, unlike `marks`, as the lag in samples and the age
    /// of the oldest unacknowledged record are figures operators read and the lag bound uses.
    records: VecDeque<(u64, u64, u64)>,
    /// The sum of `records`' sample counts.
    samples_total: u64,
    /// Records through this seq were logged before the floor was set and are not in
    /// `records` (their contents and times are unknown here).
    untracked_through: u64,
    /// Tails with `after_seq` below this are refused: records at or below it may have been
    /// changed or dropped by a checkpoint (or the floor holding them was released).
    truncated_through: u64,
}

impl Floor {
    fn clear(&mut self) {
        self.marks.clear();
        self.records.clear();
        self.samples_total = 0;
    }

    /// Forgets the records at or below `seq`.
    fn drop_records_through(&mut self, seq: u64) {
        while let Some((first, count, _)) = self.records.front().copied() {
            if first > seq {
                break;
            }
            self.records.pop_front();
            self.samples_total -= count;
        }
    }

    /// When the oldest record above the floor was logged (monotonic ns), if every record above
    /// it is tracked and there is one.
    fn oldest_logged_ns(&self) -> Option<u64> {
        let floor = self.floor?;
        if self.untracked_through > floor {
            return None;
        }
        self.records.front().map(|r| r.2)
    }

    fn retained(&self, now_ms: i64) -> (u64, i64) {
        let bytes = self.marks.iter().map(|m| m.2).sum();
        let ms = self.marks.front().map_or(0, |m| now_ms.saturating_sub(m.1).max(0));
        (bytes, ms)
    }
}

pub(super) struct ReplicationState {
    floors: Mutex<BTreeMap<ShardId, Floor>>,
    floors_released: AtomicU64,
    /// The secondary's applied position per shard; the lock also serializes applies.
    positions: BTreeMap<ShardId, tokio::sync::Mutex<Option<u64>>>,
    /// Whose seq space each position is in (written with the position, under its lock).
    sources: Mutex<BTreeMap<ShardId, Option<ReplicaSource>>>,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct PositionFile {
    version: u32,
    applied_seq: Option<u64>,
    /// Version 2: which primary (and epoch) the seqs belong to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    source: Option<ReplicaSource>,
}

/// Whose seq space a secondary's position is in: a position only means something for the
/// primary node (and epoch) whose WAL produced it (docs/design/replication.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ReplicaSource {
    pub primary: u64,
    pub epoch: u64,
}

/// One page of [`Engine::shard_export`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ExportPage {
    /// In (tenant, labels) order, each with its merged samples in the range (non-empty).
    pub series: Vec<(SeriesKey, Vec<Sample>)>,
    /// The last series of this page when more may follow: pass it as `after` for the next.
    pub next_after: Option<SeriesKey>,
}

fn position_path(shard: ShardId) -> std::path::PathBuf {
    shard_dir(shard).join(REPLICA_POSITION_FILE)
}

/// The position file's bytes (format pinned by a golden test): version 1 without a source,
/// version 2 with one.
pub(super) fn encode_position(applied_seq: Option<u64>, source: Option<ReplicaSource>) -> Vec<u8> {
    let version = if source.is_some() { 2 } else { 1 };
    serde_json::to_vec(&PositionFile { version, applied_seq, source }).expect("position serializes")
}

impl ReplicationState {
    pub(super) async fn open(fs: &dyn FileSystem, shard_ids: &[ShardId], checkpoint_meta: &BTreeMap<ShardId, u64>) -> Result<Self, EngineError> {
        let mut floors = BTreeMap::new();
        let mut positions = BTreeMap::new();
        let mut sources = BTreeMap::new();
        for &id in shard_ids {
            // Whether the checkpoint found at open changed records is not recorded, so none of
            // its records is trusted for tails: only live segments are shipped after a restart.
            let truncated_through = checkpoint_meta.get(&id).map_or(0, |next| next.saturating_sub(1));
            floors.insert(id, Floor { truncated_through, ..Floor::default() });
            let path = position_path(id);
            let (position, source) = if fs.exists(&path).await.map_err(|source| EngineError::Io { step: "stat replica position", source })? {
                let bytes = fs.read(&path).await.map_err(|source| EngineError::Io { step: "read replica position", source })?;
                let file: PositionFile = serde_json::from_slice(&bytes).map_err(|e| EngineError::Io {
                    step: "parse replica position",
                    source: std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{path:?}: {e}")),
                })?;
                if file.version != 1 && file.version != 2 {
                    return Err(EngineError::Io {
                        step: "parse replica position",
                        source: std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{path:?}: unknown version {}", file.version)),
                    });
                }
                (file.applied_seq, file.source)
            } else {
                (None, None)
            };
            positions.insert(id, tokio::sync::Mutex::new(position));
            sources.insert(id, source);
        }
        Ok(ReplicationState { floors: Mutex::new(floors), floors_released: AtomicU64::new(0), positions, sources: Mutex::new(sources) })
    }

    fn floors(&self) -> std::sync::MutexGuard<'_, BTreeMap<ShardId, Floor>> {
        self.floors.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn source(&self, shard: ShardId) -> Option<ReplicaSource> {
        self.sources.lock().unwrap_or_else(|p| p.into_inner()).get(&shard).copied().flatten()
    }
}

/// Samples of one series gathered for an import.
type TenantGroup = BTreeMap<String, BTreeMap<Labels, Vec<Sample>>>;

impl Engine {
    /// Merged samples of `key` in `[min_t, max_t]` from the shard's blocks (oldest first) and
    /// head, tombstones applied, first write wins.
    async fn series_merged(shard: &Shard, key: &SeriesKey, min_t: TimestampMs, max_t: TimestampMs) -> Result<Vec<Sample>, EngineError> {
        let matchers: Vec<Matcher> = key.labels.iter().map(|l| Matcher::equal(l.name.clone(), l.value.clone())).collect();
        let mut sources: Vec<Vec<Sample>> = Vec::new();
        for b in &shard.blocks {
            if b.meta().max_t < min_t || b.meta().min_t > max_t {
                continue;
            }
            let mut cache = GroupCache::default();
            for r in b.select(&key.tenant, &matchers) {
                if *b.series_labels(r) != key.labels {
                    continue;
                }
                let samples = b.samples_cached(r, min_t, max_t, &mut cache).await?;
                if !samples.is_empty() {
                    sources.push(samples);
                }
            }
        }
        if let Some(series) = shard.head.lookup(key).and_then(|r| shard.head.get(r)) {
            let samples = series.samples(min_t, max_t)?;
            if !samples.is_empty() {
                sources.push(samples);
            }
        }
        Ok(match sources.len() {
            0 => Vec::new(),
            1 => sources.pop().expect("one"),
            _ => block::merge_first_write_wins(sources),
        })
    }

    /// The digest of everything the shard holds with `min_t <= t <= max_t`: series in (tenant,
    /// labels) order, each with its samples in time order, over the merged view (blocks, head
    /// and out-of-order data, tombstones applied). Equal samples give equal digests whatever
    /// the block layout. Memory: the shard's series keys plus one series' samples.
    pub async fn shard_digest(&self, shard: ShardId, min_t: TimestampMs, max_t: TimestampMs) -> Result<ShardDigest, EngineError> {
        Ok(self.shard_digest_ranges(shard, &[(min_t, max_t)]).await?.remove(0))
    }

    /// [`Engine::shard_digest`] for several time ranges in one pass (anti-entropy compares
    /// ranges to find where replicas differ). Ranges may overlap; each gets its own digest.
    pub async fn shard_digest_ranges(&self, shard: ShardId, ranges: &[(TimestampMs, TimestampMs)]) -> Result<Vec<ShardDigest>, EngineError> {
        if ranges.is_empty() {
            return Err(EngineError::InvalidArgument { reason: "shard digest needs at least one time range".into() });
        }
        if let Some((lo, hi)) = ranges.iter().find(|(lo, hi)| lo > hi) {
            return Err(EngineError::InvalidArgument { reason: format!("digest range [{lo}, {hi}] has its start after its end") });
        }
        let hull_min = ranges.iter().map(|r| r.0).min().expect("non-empty");
        let hull_max = ranges.iter().map(|r| r.1).max().expect("non-empty");
        let shard_lock = self.shard(shard)?.clone();
        // The identities first (one key per series); samples are then read series by series,
        // each under its own read lock, so writes to the shard proceed between series.
        let keys: BTreeSet<SeriesKey> = {
            let shard = shard_lock.read().await;
            let mut keys: BTreeSet<SeriesKey> = shard.head.series_keys().map(|(_, k)| (**k).clone()).collect();
            for b in &shard.blocks {
                if b.meta().max_t < hull_min || b.meta().min_t > hull_max {
                    continue;
                }
                for r in b.all_series() {
                    keys.insert(SeriesKey::new(b.series_tenant(r), b.series_labels(r).clone()));
                }
            }
            keys
        };
        let mut states: Vec<DigestState> = ranges.iter().map(|_| DigestState::new()).collect();
        let mut buf = Vec::new();
        for key in keys {
            let samples = {
                let shard = shard_lock.read().await;
                Self::series_merged(&shard, &key, hull_min, hull_max).await?
            };
            for (state, (lo, hi)) in states.iter_mut().zip(ranges) {
                let from = samples.partition_point(|s| s.t < *lo);
                let to = samples.partition_point(|s| s.t <= *hi);
                if from < to {
                    state.feed(&key, &samples[from..to], &mut buf);
                }
            }
        }
        Ok(states.iter().map(DigestState::finish).collect())
    }

    /// Records a logged record (`samples` of them in it) for the floor accounting, and releases
    /// the floor when a bound is exceeded.
    pub(super) fn note_appended(&self, shard: ShardId, seq: u64, bytes: usize, samples: usize) {
        let now = self.inner.clock.now_wall_ms();
        let mut floors = self.inner.replication.floors();
        let Some(floor) = floors.get_mut(&shard) else { return };
        if floor.floor.is_none() {
            return;
        }
        match floor.marks.back_mut() {
            Some(mark) if now.saturating_sub(mark.1) < RETAIN_MARK_MS => mark.2 += bytes as u64,
            _ => floor.marks.push_back((seq, now, bytes as u64)),
        }
        floor.records.push_back((seq, samples as u64, self.inner.clock.now_monotonic_ns()));
        floor.samples_total += samples as u64;
        self.enforce_bounds(shard, floor, now);
    }

    fn enforce_bounds(&self, shard: ShardId, floor: &mut Floor, now: i64) {
        let Some(seq) = floor.floor else { return };
        let (bytes, ms) = floor.retained(now);
        let config = &self.inner.config;
        if bytes > config.replication_retain_bytes_max || ms > config.replication_retain_ms_max {
            let logged_through = self.inner.wal.next_seq(shard).saturating_sub(1);
            tracing::warn!(
                shard,
                floor = seq,
                retained_bytes = bytes,
                retained_ms = ms,
                bytes_max = config.replication_retain_bytes_max,
                ms_max = config.replication_retain_ms_max,
                "replication floor released: the secondary is too far behind; it must copy data instead of tailing the WAL"
            );
            floor.floor = None;
            floor.clear();
            floor.truncated_through = floor.truncated_through.max(logged_through);
            self.inner.replication.floors_released.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Keeps the shard's WAL records above `seq` (what the secondary has not acknowledged)
    /// from being dropped or changed by checkpoints, within `replication_retain_bytes_max` and
    /// `replication_retain_ms_max`. Setting it again moves it (normally forward, as the
    /// secondary acknowledges); `None` removes it. Not persisted: after a restart the primary
    /// sets it again from the secondary's next acknowledgement.
    pub fn set_replication_floor(&self, shard: ShardId, seq: Option<u64>) -> Result<(), EngineError> {
        self.shard(shard)?;
        let now = self.inner.clock.now_wall_ms();
        let logged_next = self.inner.wal.next_seq(shard);
        let mut floors = self.inner.replication.floors();
        let floor = floors.get_mut(&shard).expect("every held shard has a floor entry");
        match seq {
            None => {
                floor.floor = None;
                floor.clear();
            }
            Some(seq) => {
                if floor.floor.is_none_or(|old| seq < old) {
                    // Set anew, or moved back (the records between were forgotten): what is
                    // logged so far is not tracked.
                    floor.untracked_through = logged_next.saturating_sub(1);
                }
                if floor.floor.is_none() && seq.saturating_add(1) < logged_next {
                    // Records already logged above the new floor: counted from now, with no
                    // bytes (their sizes are not known without reading the log).
                    floor.marks.push_back((seq + 1, now, 0));
                }
                floor.floor = Some(seq);
                // Drop marks wholly at or below the floor.
                while floor.marks.len() >= 2 && floor.marks[1].0 <= seq + 1 {
                    floor.marks.pop_front();
                }
                if floor.marks.front().is_some_and(|m| m.0 <= seq) && floor.marks.len() == 1 && seq.saturating_add(1) >= logged_next {
                    floor.marks.clear();
                }
                floor.drop_records_through(seq);
                self.enforce_bounds(shard, floor, now);
            }
        }
        Ok(())
    }

    /// When the shard's oldest record above the replication floor was logged (monotonic ns on
    /// the injected clock): `None` when nothing is above it, no floor is set, or that record
    /// was logged before the floor was set. Cheap (one lock), for the write path's lag check.
    pub fn replication_oldest_logged_ns(&self, shard: ShardId) -> Option<u64> {
        self.inner.replication.floors().get(&shard).and_then(Floor::oldest_logged_ns)
    }

    /// Floors in force for a checkpoint, after enforcing the bounds.
    pub(super) fn replication_floors_for_checkpoint(&self) -> BTreeMap<ShardId, u64> {
        let now = self.inner.clock.now_wall_ms();
        let mut floors = self.inner.replication.floors();
        let mut out = BTreeMap::new();
        for (id, floor) in floors.iter_mut() {
            self.enforce_bounds(*id, floor, now);
            if let Some(seq) = floor.floor {
                out.insert(*id, seq);
            }
        }
        out
    }

    pub(super) fn note_checkpoint_modified(&self, modified: &BTreeMap<ShardId, u64>) {
        let mut floors = self.inner.replication.floors();
        for (id, seq) in modified {
            if let Some(floor) = floors.get_mut(id) {
                floor.truncated_through = floor.truncated_through.max(*seq);
            }
        }
    }

    /// Replication figures: floors, what they retain, positions.
    pub async fn replication_status(&self) -> ReplicationStatus {
        let now = self.inner.clock.now_wall_ms();
        let mut status = ReplicationStatus { floors_released: self.inner.replication.floors_released.load(Ordering::Relaxed), ..ReplicationStatus::default() };
        {
            let floors = self.inner.replication.floors();
            for (id, floor) in floors.iter() {
                let (retained_bytes, retained_ms) = floor.retained(now);
                status.shards.insert(
                    *id,
                    ReplicationShardStatus {
                        floor: floor.floor,
                        retained_bytes,
                        retained_ms,
                        retained_samples: floor.samples_total,
                        oldest_logged_ns: floor.oldest_logged_ns(),
                        tail_from_seq: floor.truncated_through,
                        applied_through: None,
                    },
                );
            }
        }
        for (id, position) in &self.inner.replication.positions {
            let applied = *position.lock().await;
            status.shards.entry(*id).or_default().applied_through = applied;
        }
        status
    }

    /// The shard's durable WAL records with `seq > after_seq`, in seq order, up to about
    /// `bytes_max` payload bytes (at least one record when there is one), with the definitions
    /// of the series they use, for a secondary to apply with [`Engine::apply_replicated`].
    /// [`TailError::Truncated`] when a record after `after_seq` is no longer in the WAL exactly
    /// as logged (a checkpoint dropped or changed it, the floor holding it was released, or
    /// the series it names can no longer be resolved).
    pub async fn wal_tail(&self, shard: ShardId, after_seq: u64, bytes_max: usize) -> Result<WalTail, TailError> {
        let shard_lock = self.shard(shard)?.clone();
        let truncated_through = {
            let now = self.inner.clock.now_wall_ms();
            let mut floors = self.inner.replication.floors();
            let floor = floors.get_mut(&shard).expect("every held shard has a floor entry");
            self.enforce_bounds(shard, floor, now);
            floor.truncated_through
        };
        if after_seq < truncated_through {
            return Err(TailError::Truncated { oldest_seq: truncated_through + 1 });
        }
        // The cursor read first; if it names a series neither it nor the head can resolve (a
        // cut dropped the series from the head before its record shipped), the full read, whose
        // `series_before` holds the log's own definitions.
        let mut from_cursor = true;
        let (read, series) = loop {
            let read = self.inner.wal.tail(shard, after_seq, bytes_max, from_cursor).await?;
            // A checkpoint may have run between the check above and the read.
            let truncated_through = self.inner.replication.floors().get(&shard).map_or(0, |f| f.truncated_through);
            if after_seq < truncated_through {
                return Err(TailError::Truncated { oldest_seq: truncated_through + 1 });
            }
            // A cursor read that is not gap-free is not trusted: read again from the start.
            if read.from_cursor && read.records.iter().zip(after_seq + 1..).any(|(r, expected)| r.seq != expected) {
                from_cursor = false;
                continue;
            }
            match self.tail_series(shard, &shard_lock, after_seq, &read).await? {
                Some(series) => break (read, series),
                None if read.from_cursor => from_cursor = false,
                None => {
                    let first_use = read.records.first().map_or(after_seq + 1, |r| r.seq);
                    return Err(TailError::Truncated { oldest_seq: first_use + 1 });
                }
            }
        };
        let series = if series.is_empty() { Vec::new() } else { encode_payload(&WalRecord { shard, seq: 0, body: RecordBody::Series(series) }) };
        Ok(WalTail {
            shard,
            series_crc32: crc32fast::hash(&series),
            series,
            records: read.records.into_iter().map(|r| TailRecord::new(r.shard, r.seq, r.payload)).collect(),
            durable_next_seq: read.durable_next_seq,
        })
    }

    /// Definitions of the series the tail's records use that the tail does not define itself:
    /// `None` when one cannot be resolved; `Err` for a gap or an undecodable record.
    async fn tail_series(&self, shard: ShardId, shard_lock: &tokio::sync::RwLock<Shard>, after_seq: u64, read: &crate::wal::TailRead) -> Result<Option<Vec<SeriesEntry>>, TailError> {
        let mut defined: BTreeSet<SeriesRef> = BTreeSet::new();
        let mut needed: BTreeSet<SeriesRef> = BTreeSet::new();
        for (expected, record) in (after_seq + 1..).zip(read.records.iter()) {
            if record.seq != expected {
                tracing::warn!(shard, expected, found = record.seq, "WAL tail has a gap (damage or a missing segment)");
                return Err(TailError::Truncated { oldest_seq: record.seq });
            }
            match decode_payload(&record.payload) {
                Ok(Payload::Record(WalRecord { body: RecordBody::Series(entries), .. })) => defined.extend(entries.iter().map(|e| e.series_ref)),
                Ok(Payload::Record(WalRecord { body: RecordBody::Samples(entries), .. })) => {
                    needed.extend(entries.iter().map(|e| e.series_ref).filter(|r| !defined.contains(r)));
                }
                Ok(_) => {}
                Err(error) => {
                    tracing::warn!(shard, seq = record.seq, %error, "WAL record in the tail does not decode");
                    return Err(TailError::Truncated { oldest_seq: record.seq + 1 });
                }
            }
        }
        let mut series = Vec::new();
        if !needed.is_empty() {
            let shard_state = shard_lock.read().await;
            for r in needed {
                // The log's own definition first (what the record meant when logged), then the
                // head (series whose Series record a checkpoint kept elsewhere or rewrote).
                let entry = read.series_before.get(&r).cloned().or_else(|| {
                    let live = shard_state.aliases.get(&r).copied().unwrap_or(r);
                    shard_state.head.get(live).map(|s| SeriesEntry { series_ref: r, tenant: s.key.tenant.clone(), labels: s.key.labels.clone() })
                });
                match entry {
                    Some(entry) => series.push(entry),
                    None => {
                        if !read.from_cursor {
                            tracing::warn!(shard, series_ref = r, "series of a WAL tail record cannot be resolved; the secondary must copy data");
                        }
                        return Ok(None);
                    }
                }
            }
        }
        Ok(Some(series))
    }

    /// The secondary's applied position for `shard` (persisted; survives restarts).
    pub async fn replica_position(&self, shard: ShardId) -> Result<Option<u64>, EngineError> {
        self.shard(shard)?;
        Ok(*self.inner.replication.positions.get(&shard).expect("every held shard has a position").lock().await)
    }

    /// Sets the applied position durably, e.g. after a copy of the primary's data replaced
    /// tailing (the copy covers everything through `seq`), or `None` to start from seq 1.
    pub async fn set_replica_position(&self, shard: ShardId, seq: Option<u64>) -> Result<(), EngineError> {
        self.shard(shard)?;
        let mut position = self.inner.replication.positions.get(&shard).expect("every held shard has a position").lock().await;
        let source = self.inner.replication.source(shard);
        write_atomically(self.inner.fs.as_ref(), &position_path(shard), &encode_position(seq, source)).await?;
        *position = seq;
        Ok(())
    }

    /// Whose seq space the shard's replica position is in (`None`: unknown, e.g. a version-1
    /// position file or none at all).
    pub async fn replica_source(&self, shard: ShardId) -> Result<Option<ReplicaSource>, EngineError> {
        self.shard(shard)?;
        let _position = self.inner.replication.positions.get(&shard).expect("every held shard has a position").lock().await;
        Ok(self.inner.replication.source(shard))
    }

    /// Sets the applied position and whose seq space it is in, durably in one file write
    /// (after a catch-up copy: everything of `source`'s shard through `seq` is here).
    pub async fn set_replica_position_from(&self, shard: ShardId, seq: Option<u64>, source: Option<ReplicaSource>) -> Result<(), EngineError> {
        self.shard(shard)?;
        let mut position = self.inner.replication.positions.get(&shard).expect("every held shard has a position").lock().await;
        write_atomically(self.inner.fs.as_ref(), &position_path(shard), &encode_position(seq, source)).await?;
        *position = seq;
        self.inner.replication.sources.lock().unwrap_or_else(|p| p.into_inner()).insert(shard, source);
        Ok(())
    }

    /// The shard's durable-or-pending WAL position: one past the last seq logged for it. Cheap
    /// (no log read), so a replication stream can poll it to learn whether anything is new.
    pub fn wal_next_seq(&self, shard: ShardId) -> Result<u64, EngineError> {
        self.shard(shard)?;
        Ok(self.inner.wal.next_seq(shard))
    }

    /// The highest seq such that every record of the shard at or below it is durable and
    /// applied to the head, so visible to digests and exports (a record is durable before it
    /// is applied, so the WAL's durable position can be ahead of what an export sees). A
    /// catch-up copy taken after this call covers every record up to it.
    pub async fn replication_applied_seq(&self, shard: ShardId) -> Result<u64, EngineError> {
        let shard_lock = self.shard(shard)?.clone();
        let state = shard_lock.read().await;
        // Appends submit their records under the shard's write lock, so this read sees the
        // logged position and the pending set together.
        Ok(match state.pending.seqs.first() {
            Some(first) => first - 1,
            None => self.inner.wal.next_seq(shard) - 1,
        })
    }

    /// The oldest and newest sample time the shard may hold (head and blocks; tombstones and
    /// deletions are not subtracted, so the bounds may be wider than the data). `None` when
    /// the shard holds nothing.
    pub async fn shard_time_bounds(&self, shard: ShardId) -> Result<Option<(TimestampMs, TimestampMs)>, EngineError> {
        let shard_lock = self.shard(shard)?.clone();
        let shard = shard_lock.read().await;
        let mut bounds: Option<(TimestampMs, TimestampMs)> = match (shard.head.min_t(), shard.head.max_t()) {
            (Some(lo), Some(hi)) => Some((lo, hi)),
            _ => None,
        };
        for b in &shard.blocks {
            let (lo, hi) = (b.meta().min_t, b.meta().max_t);
            bounds = Some(bounds.map_or((lo, hi), |(a, z)| (a.min(lo), z.max(hi))));
        }
        Ok(bounds)
    }

    /// Every series of the shard (all tenants) with samples in `[min_t, max_t]`, in (tenant,
    /// labels) order, starting after `after`, with their merged samples (the digest's view:
    /// blocks and head, tombstones applied, first write wins), until about `samples_max`
    /// samples (at least one series when there is one). Anti-entropy copies ranges with it.
    pub async fn shard_export(&self, shard: ShardId, min_t: TimestampMs, max_t: TimestampMs, after: Option<&SeriesKey>, samples_max: usize) -> Result<ExportPage, EngineError> {
        if min_t > max_t {
            return Err(EngineError::InvalidArgument { reason: format!("export range [{min_t}, {max_t}] has its start after its end") });
        }
        let shard_lock = self.shard(shard)?.clone();
        let keys: BTreeSet<SeriesKey> = {
            let shard = shard_lock.read().await;
            let mut keys: BTreeSet<SeriesKey> = shard.head.series_keys().map(|(_, k)| (**k).clone()).filter(|k| after.is_none_or(|a| k > a)).collect();
            for b in &shard.blocks {
                if b.meta().max_t < min_t || b.meta().min_t > max_t {
                    continue;
                }
                for r in b.all_series() {
                    let key = SeriesKey::new(b.series_tenant(r), b.series_labels(r).clone());
                    if after.is_none_or(|a| &key > a) {
                        keys.insert(key);
                    }
                }
            }
            keys
        };
        let mut page = ExportPage::default();
        let mut samples_total = 0usize;
        for key in keys {
            if samples_total >= samples_max.max(1) {
                page.next_after = page.series.last().map(|(k, _)| k.clone());
                break;
            }
            let samples = {
                let shard = shard_lock.read().await;
                Self::series_merged(&shard, &key, min_t, max_t).await?
            };
            if samples.is_empty() {
                continue;
            }
            samples_total += samples.len();
            page.series.push((key, samples));
        }
        Ok(page)
    }

    /// Deletes the samples of exactly one series (its full label set) in `[min_t, max_t]`
    /// from one shard; a series with more labels that the equality matchers also match is
    /// deleted too (matchers cannot say "no other labels") — anti-entropy restores those from
    /// the primary in the same pass. Used to make the current primary's value win a conflict.
    pub async fn delete_series_in_shard(&self, shard: ShardId, key: &SeriesKey, min_t: TimestampMs, max_t: TimestampMs) -> Result<u64, EngineError> {
        let matchers: Vec<Matcher> = key.labels.iter().map(|l| Matcher::equal(l.name.clone(), l.value.clone())).collect();
        self.delete_in_shard(shard, &key.tenant, &matchers, min_t, max_t).await
    }

    /// Applies records a primary shipped for `shard` ([`Engine::wal_tail`]) through the import
    /// path (not judged again), in seq order, and then durably records the position. Idempotent:
    /// re-applying records changes nothing (equal samples are duplicates). A sample whose
    /// timestamp already holds a different value is refused (first write wins) and counted in
    /// `conflicts`; application continues. The records must continue the position without a
    /// gap (records at or below it are applied again harmlessly). A record that does not decode
    /// or does not belong stops the batch: the records before it are applied and the position
    /// covers them; it and those after it are not applied.
    pub async fn apply_replicated(&self, shard: ShardId, tail: &WalTail) -> Result<ApplyReport, ApplyError> {
        self.shard(shard)?;
        let mut position = self.inner.replication.positions.get(&shard).expect("every held shard has a position").lock().await;
        let start_position = *position;
        let mut defs: BTreeMap<SeriesRef, SeriesKey> = BTreeMap::new();
        let actual = crc32fast::hash(&tail.series);
        if actual != tail.series_crc32 {
            return Err(ApplyError::BadPreamble { problem: RecordProblem::Checksum { expected: tail.series_crc32, actual } });
        }
        if !tail.series.is_empty() {
            match decode_payload(&tail.series) {
                Ok(Payload::Record(WalRecord { body: RecordBody::Series(entries), .. })) => {
                    for e in entries {
                        defs.insert(e.series_ref, SeriesKey::new(e.tenant, e.labels));
                    }
                }
                Ok(_) => return Err(ApplyError::BadPreamble { problem: RecordProblem::PreambleNotSeries }),
                Err(error) => return Err(ApplyError::BadPreamble { problem: error.into() }),
            }
        }
        let mut report = ApplyReport { applied_through: *position, ..ApplyReport::default() };
        let mut group: TenantGroup = BTreeMap::new();
        let mut group_samples = 0usize;
        // Highest seq whose record is decoded and in `group` (applied once the group is).
        let mut group_through: Option<u64> = None;
        let mut expected = position.map_or(1, |p| p + 1);
        let mut failure: Option<ApplyError> = None;
        // The simulator's planted bug flips one value per batch (`Bug::ReplicaValueBitFlipped`).
        let mut flipped = false;
        for (index, record) in tail.records.iter().enumerate() {
            let bad = |problem: RecordProblem| ApplyError::BadRecord { index, seq: record.seq, problem, applied_through: None };
            if record.shard != shard {
                failure = Some(bad(RecordProblem::WrongShard { expected: shard, got: record.shard }));
                break;
            }
            if record.seq > expected {
                failure = Some(ApplyError::Gap { expected, got: record.seq, applied_through: None });
                break;
            }
            let actual = crc32fast::hash(&record.bytes);
            if actual != record.crc32 {
                failure = Some(bad(RecordProblem::Checksum { expected: record.crc32, actual }));
                break;
            }
            let decoded = match decode_payload(&record.bytes) {
                Ok(Payload::Record(decoded)) => decoded,
                Ok(Payload::Meta(_)) => {
                    failure = Some(bad(RecordProblem::Meta));
                    break;
                }
                Err(error) => {
                    failure = Some(bad(error.into()));
                    break;
                }
            };
            if (decoded.shard, decoded.seq) != (record.shard, record.seq) {
                failure = Some(bad(RecordProblem::EnvelopeMismatch { shard: record.shard, seq: record.seq, payload_shard: decoded.shard, payload_seq: decoded.seq }));
                break;
            }
            match decoded.body {
                RecordBody::Series(entries) => {
                    for e in entries {
                        defs.insert(e.series_ref, SeriesKey::new(e.tenant, e.labels));
                    }
                }
                RecordBody::Samples(entries) => {
                    if let Some(unknown) = entries.iter().find(|e| !defs.contains_key(&e.series_ref)) {
                        failure = Some(bad(RecordProblem::UnknownSeries { series_ref: unknown.series_ref }));
                        break;
                    }
                    if group_samples + entries.len() > self.inner.config.write_samples_max && group_samples > 0 {
                        if let Err(e) = self.flush_group(shard, &mut group, &mut group_samples, &mut group_through, &mut report, &mut position).await {
                            failure = Some(e);
                            break;
                        }
                    }
                    for e in entries {
                        let key = &defs[&e.series_ref];
                        let mut v = e.v;
                        if !flipped && sextant_core::determinism::planted::is_planted(sextant_core::determinism::planted::Bug::ReplicaValueBitFlipped) {
                            v = f64::from_bits(v.to_bits() ^ 1);
                            flipped = true;
                        }
                        group.entry(key.tenant.clone()).or_default().entry(key.labels.clone()).or_default().push(Sample::new(e.t, v));
                        group_samples += 1;
                    }
                }
                RecordBody::Tombstone(entry) => {
                    // Samples logged before the deletion must be stored before it applies.
                    if let Err(e) = self.flush_group(shard, &mut group, &mut group_samples, &mut group_through, &mut report, &mut position).await {
                        failure = Some(e);
                        break;
                    }
                    if let Err(e) = self.delete_in_shard(shard, &entry.tenant, &entry.matchers, entry.min_t, entry.max_t).await {
                        failure = Some(e.into());
                        break;
                    }
                    report.tombstones += 1;
                }
            }
            report.records += 1;
            group_through = Some(group_through.map_or(record.seq, |g| g.max(record.seq)));
            expected = expected.max(record.seq + 1);
        }
        if failure.is_none() {
            if let Err(e) = self.flush_group(shard, &mut group, &mut group_samples, &mut group_through, &mut report, &mut position).await {
                failure = Some(e);
            }
        } else if !matches!(failure, Some(ApplyError::Retryable { .. })) {
            // Records before the bad one are good: apply them.
            if let Err(e) = self.flush_group(shard, &mut group, &mut group_samples, &mut group_through, &mut report, &mut position).await {
                failure = Some(e);
            }
        }
        if *position != start_position {
            // Every sample up to the position is durable in this node's WAL (imports return
            // after their records are durable), so the position may now say so.
            let source = self.inner.replication.source(shard);
            write_atomically(self.inner.fs.as_ref(), &position_path(shard), &encode_position(*position, source)).await?;
        }
        report.applied_through = *position;
        match failure {
            None => Ok(report),
            Some(ApplyError::BadRecord { index, seq, problem, .. }) => Err(ApplyError::BadRecord { index, seq, problem, applied_through: *position }),
            Some(ApplyError::Gap { expected, got, .. }) => Err(ApplyError::Gap { expected, got, applied_through: *position }),
            Some(ApplyError::Retryable { refused, reason, from_seq, .. }) => Err(ApplyError::Retryable { refused, reason, from_seq, applied_through: *position }),
            Some(other) => Err(other),
        }
    }

    /// Imports the gathered samples; on success the position advances over their records.
    async fn flush_group(
        &self,
        shard: ShardId,
        group: &mut TenantGroup,
        group_samples: &mut usize,
        group_through: &mut Option<u64>,
        report: &mut ApplyReport,
        position: &mut Option<u64>,
    ) -> Result<(), ApplyError> {
        let from_seq = position.map_or(1, |p| p + 1);
        for (tenant, series) in std::mem::take(group) {
            let writes: Vec<WriteSeries> = series.into_iter().map(|(labels, samples)| WriteSeries { labels, samples }).collect();
            let imported = self.import(shard, &tenant, writes).await?;
            report.samples_accepted += imported.accepted;
            report.duplicates += imported.duplicates;
            report.conflicts += imported.refused_permanent;
            report.series_created += imported.series_created;
            if imported.refused_retryable > 0 {
                let reason = imported.refusals.iter().find(|r| r.reason.is_retryable()).map_or_else(|| "retryable refusal".to_string(), |r| r.reason.to_string());
                *group_samples = 0;
                *group_through = None;
                return Err(ApplyError::Retryable { refused: imported.refused_retryable, reason, from_seq, applied_through: None });
            }
            if imported.refused_permanent > 0 {
                tracing::warn!(shard, tenant = %tenant, conflicts = imported.refused_permanent, "replicated samples conflict with stored values; kept the stored ones");
            }
        }
        *group_samples = 0;
        if let Some(through) = group_through.take() {
            *position = Some(position.map_or(through, |p| p.max(through)));
        }
        Ok(())
    }
}
