//! The node's write-ahead log: one per node, under `wal/` in the data directory.
//!
//! Guarantees, mechanism and recovery rules are in docs/design/wal.md; the bytes on disk are in
//! docs/design/storage-format.md § WAL. In short:
//!
//! - [`Wal::open`] lists the directory, removes what an interrupted checkpoint left behind, and
//!   returns a [`WalReplay`] that yields every surviving record in log order (the checkpoint
//!   first). Replay cuts a torn tail off the last segment and skips damaged pages elsewhere;
//!   [`WalReplay::report`] says what it did. [`WalReplay::finish`] then starts the writer.
//! - [`Wal::submit`] assigns the record its per-shard sequence number (gap-free, from 1, in call
//!   order) without awaiting and queues it; [`WalTicket::durable`] resolves when the record is
//!   fsynced (policy [`FsyncPolicy::Always`]) or written (policy [`FsyncPolicy::Interval`]).
//!   One writer task drains the queue: a batch of concurrent submits costs one write and one
//!   fsync (group commit).
//! - ENOSPC fails the batch and everything queued behind it with [`WalError::NoSpace`]; the
//!   partial bytes are cut away, the per-shard sequence numbers of the failed records are
//!   handed out again, and later submits may succeed. Any other write or fsync error poisons the
//!   WAL: that record and every later one fail with [`WalError::Poisoned`] until restart.
//! - [`Wal::checkpoint`] seals the current segment and rewrites the previous checkpoint and the
//!   sealed segments, through a caller's filter, into `checkpoint.NNNNNNNN/`.
//!
//! Architecture Invariant: the WAL reaches the disk only through [`crate::fs::FileSystem`],
//! reads no clock (the interval policy sleeps with `tokio::time`), and panics on no byte read
//! from disk.

pub mod format;
pub mod reader;
pub mod record;
pub mod testing;
pub mod writer;

use std::collections::{BTreeMap, VecDeque};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{oneshot, Notify};

use crate::fs::{is_no_space, FileSystem};

pub use format::DamagedRange;
pub use reader::RepairReport;
pub use record::{
    DecodeError, RecordBody, SampleEntry, SeriesEntry, SeriesRef, ShardId, TombstoneEntry, WalRecord,
};

use format::{frame_record, framed_len, payload_bytes_max, PAGE_BYTES};
use reader::{Item, LogReader, Source};
use record::{encode_meta, encode_payload, PAYLOAD_SEQ_OFFSET};
use writer::{parse_segment_name, segment_name, IoCounters, SegmentWriter, WriteFailure};

/// When an append counts as durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// An append's ticket resolves only after its record is fsynced (the default).
    Always,
    /// Tickets resolve once the record is written; a timer fsyncs every `interval_ms`. A power
    /// loss loses up to one interval of acknowledged records.
    Interval { interval_ms: u64 },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WalConfig {
    /// Segment size; a multiple of the 32 KiB page. Default 128 MiB.
    pub segment_bytes: u64,
    pub fsync: FsyncPolicy,
    /// Records queued but not yet written; past it `submit` answers [`WalError::Busy`].
    pub queue_records_max: usize,
    /// Payload bytes the writer takes into one write + fsync.
    pub batch_bytes_max: usize,
}

impl Default for WalConfig {
    fn default() -> Self {
        WalConfig {
            segment_bytes: 128 * 1024 * 1024,
            fsync: FsyncPolicy::Always,
            queue_records_max: 65_536,
            batch_bytes_max: 4 * 1024 * 1024,
        }
    }
}

impl WalConfig {
    fn validate(&self) -> Result<(), WalError> {
        let fail = |reason: String| Err(WalError::Config { reason });
        if self.segment_bytes < PAGE_BYTES as u64 || self.segment_bytes / PAGE_BYTES as u64 * PAGE_BYTES as u64 != self.segment_bytes {
            return fail(format!("segment_bytes {} is not a positive multiple of the {PAGE_BYTES}-byte page", self.segment_bytes));
        }
        if self.segment_bytes > u32::MAX as u64 * PAGE_BYTES as u64 {
            return fail(format!("segment_bytes {} is too large", self.segment_bytes));
        }
        if self.queue_records_max == 0 || self.batch_bytes_max == 0 {
            return fail("queue_records_max and batch_bytes_max must be positive".into());
        }
        if let FsyncPolicy::Interval { interval_ms: 0 } = self.fsync {
            return fail("fsync interval_ms must be positive".into());
        }
        Ok(())
    }
}

/// Every way a WAL operation fails. Cloneable: one failure answers many tickets.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum WalError {
    #[error("WAL queue full ({queue_records_max} records); retry later")]
    Busy { queue_records_max: usize },
    #[error("disk full while trying to {step} {path:?}; retry when space returns")]
    NoSpace { step: &'static str, path: PathBuf },
    #[error("WAL poisoned ({reason}); it refuses writes until the node restarts")]
    Poisoned { reason: String },
    #[error("WAL closed")]
    Closed,
    #[error("record payload of {bytes} bytes exceeds the {max}-byte limit of one segment")]
    RecordTooLarge { bytes: usize, max: usize },
    #[error("I/O error while trying to {step} {path:?}: {kind:?}: {message}")]
    Io { step: &'static str, path: PathBuf, kind: io::ErrorKind, message: String },
    #[error("WAL record in {path:?} at byte {offset} does not decode: {source}")]
    Decode { path: PathBuf, offset: u64, source: DecodeError },
    #[error("WAL segment {path:?} has format version {version}, which this build does not read")]
    UnsupportedVersion { path: PathBuf, version: u8 },
    #[error("invalid WAL configuration: {reason}")]
    Config { reason: String },
}

impl WalError {
    pub(crate) fn io(step: &'static str, path: &Path, error: &io::Error) -> WalError {
        if is_no_space(error) {
            return WalError::NoSpace { step, path: path.to_path_buf() };
        }
        WalError::Io { step, path: path.to_path_buf(), kind: error.kind(), message: error.to_string() }
    }

    fn from_failure(failure: &WriteFailure) -> WalError {
        WalError::io(failure.step, &failure.path, &failure.error)
    }

    /// True for conditions a caller may retry (queue full, disk full).
    pub fn is_retryable(&self) -> bool {
        matches!(self, WalError::Busy { .. } | WalError::NoSpace { .. })
    }
}

/// Counters for observability. Monotonic except `poisoned` and `queue_records`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WalStats {
    pub records_appended: u64,
    pub payload_bytes_appended: u64,
    /// Bytes written to segments (framing and padding included).
    pub bytes_written: u64,
    pub batches_written: u64,
    /// File fsyncs (segment syncs, checkpoint file syncs).
    pub fsyncs: u64,
    pub dir_fsyncs: u64,
    pub segments_created: u64,
    /// Torn tails cut at open.
    pub repairs: u64,
    /// Damaged ranges skipped at open.
    pub damaged_ranges_skipped: u64,
    /// Records known lost in damaged ranges at open.
    pub records_dropped: u64,
    pub records_no_space: u64,
    pub checkpoints: u64,
    pub checkpoint_index: Option<u32>,
    /// Records replication tails scanned, of every shard (what a tail costs: with its cursor
    /// about the records logged since the previous tail, without it the whole retained log).
    pub tail_records_scanned: u64,
    /// Bytes replication tails read from WAL files.
    pub tail_bytes_read: u64,
    pub queue_records: usize,
    pub poisoned: bool,
}

/// What a checkpoint did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CheckpointStats {
    /// The checkpoint's index: the last segment it covers.
    pub index: u32,
    pub records_read: u64,
    pub records_kept: u64,
    pub segments_removed: u64,
    pub damaged_ranges: u64,
}

struct Pending {
    shard: ShardId,
    seq: u64,
    payload: Vec<u8>,
    done: oneshot::Sender<Result<(), WalError>>,
}

struct State {
    queue: VecDeque<Pending>,
    next_seq: BTreeMap<ShardId, u64>,
    /// Per shard, one past the highest seq whose ticket was answered `Ok` (durable under the
    /// fsync policy). [`Wal::tail`] ships nothing at or above it.
    durable_next_seq: BTreeMap<ShardId, u64>,
    poisoned: Option<String>,
    closed: bool,
    stats: WalStats,
}

/// The open segment and the sequence numbers that made it to the file (not merely queued).
struct Log {
    segment: SegmentWriter,
    written_next_seq: BTreeMap<ShardId, u64>,
}

struct Shared {
    fs: Arc<dyn FileSystem>,
    dir: PathBuf,
    config: WalConfig,
    payload_bytes_max: usize,
    state: Mutex<State>,
    wake: Notify,
    log: tokio::sync::Mutex<Log>,
    counters: Arc<IoCounters>,
    checkpoint_meta_at_open: BTreeMap<ShardId, u64>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock is a bug elsewhere; the state stays consistent because
        // every critical section is straight-line bookkeeping.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

fn poison(state: &mut State, reason: String) {
    if state.poisoned.is_none() {
        tracing::error!(%reason, "WAL poisoned: refusing writes until restart");
        state.poisoned = Some(reason);
        state.stats.poisoned = true;
    }
    let error = WalError::Poisoned { reason: state.poisoned.clone().expect("set above") };
    for pending in state.queue.drain(..) {
        let _ = pending.done.send(Err(error.clone()));
    }
}

struct Inner {
    shared: Arc<Shared>,
    writer_task: Mutex<Option<tokio::task::JoinHandle<()>>>,
    checkpoint_lock: tokio::sync::Mutex<()>,
    /// Per shard: where the last [`Wal::tail`] stopped, so the next one (asking for the records
    /// right after) reads on from there instead of rescanning the whole log.
    tail_cursors: Mutex<BTreeMap<ShardId, TailCursor>>,
}

/// Bytes one read of a tail asks for: twice the batch budget, at least two pages, in whole
/// pages (a read starts on a page boundary). A record longer than that widens the read.
pub fn tail_window_bytes(bytes_max: usize) -> usize {
    let page = format::PAGE_BYTES;
    bytes_max.saturating_mul(2).max(2 * page).div_ceil(page).saturating_mul(page)
}

/// Where a shard's tail resumes: in file `path`, at byte `offset` (a record boundary), the first
/// record of the shard not yet returned has `next_seq`. Valid only while the checkpoint that
/// was current when it was made is (a checkpoint rewrites the files before it).
#[derive(Debug, Clone)]
struct TailCursor {
    checkpoint: Option<u32>,
    path: PathBuf,
    offset: u64,
    next_seq: u64,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The writer drains what is queued, fsyncs and exits.
        self.shared.lock().closed = true;
        self.shared.wake.notify_one();
    }
}

/// The write-ahead log. Cheap to clone; all clones share one writer.
#[derive(Clone)]
pub struct Wal {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Wal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wal").field("dir", &self.inner.shared.dir).finish()
    }
}

// The engine shares one Wal across shard tasks.
const _: fn() = || {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<Wal>();
    send_sync::<WalReplay>();
};

/// A submitted record's claim check.
#[derive(Debug)]
pub struct WalTicket {
    seq: u64,
    bytes: usize,
    done: oneshot::Receiver<Result<(), WalError>>,
}

impl WalTicket {
    /// The sequence number the record was given.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// The record's payload bytes (what [`Wal::tail`] would ship for it).
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Resolves to the record's sequence number once it is durable under the fsync policy.
    pub async fn durable(self) -> Result<u64, WalError> {
        match self.done.await {
            Ok(Ok(())) => Ok(self.seq),
            Ok(Err(error)) => Err(error),
            Err(_) => Err(WalError::Closed),
        }
    }
}

/// The name of checkpoint `index`'s directory.
pub fn checkpoint_name(index: u32) -> String {
    format!("checkpoint.{index:08}")
}

fn parse_checkpoint_name(name: &str) -> Option<u32> {
    name.strip_prefix("checkpoint.").and_then(parse_segment_name)
}

/// Replays the log; [`WalReplay::finish`] turns it into a [`Wal`].
pub struct WalReplay {
    fs: Arc<dyn FileSystem>,
    dir: PathBuf,
    config: WalConfig,
    reader: LogReader,
    next_seq: BTreeMap<ShardId, u64>,
    /// The meta record of the checkpoint replay started from (next seq per shard at its seal).
    checkpoint_meta: BTreeMap<ShardId, u64>,
    checkpoint: Option<u32>,
    /// The index to give a new segment when there is no live segment.
    first_live_index: u32,
}

impl WalReplay {
    /// The next surviving record in log order. A record whose frame checks out but whose payload
    /// does not decode is yielded as [`WalError::Decode`] and replay continues after it; an I/O
    /// error ends the replay.
    pub async fn next(&mut self) -> Option<Result<WalRecord, WalError>> {
        loop {
            match self.reader.next().await? {
                Ok(Item::Meta(meta)) => {
                    self.checkpoint_meta.clone_from(&meta);
                    for (shard, next) in meta {
                        let entry = self.next_seq.entry(shard).or_insert(1);
                        *entry = (*entry).max(next);
                    }
                }
                Ok(Item::Record(record)) => {
                    let entry = self.next_seq.entry(record.shard).or_insert(1);
                    *entry = (*entry).max(record.seq.saturating_add(1));
                    return Some(Ok(record));
                }
                Err(error) => return Some(Err(error)),
            }
        }
    }

    /// What replay found and repaired so far (complete once `next` returned `None`).
    pub fn report(&self) -> RepairReport {
        self.reader.report.clone()
    }

    /// Drains any records the caller did not read (they are discarded), finishes repair, and
    /// starts the writer.
    pub async fn finish(mut self) -> Result<Wal, WalError> {
        while let Some(item) = self.next().await {
            match item {
                Ok(_) | Err(WalError::Decode { .. }) => {}
                Err(error) => return Err(error),
            }
        }
        let counters = Arc::new(IoCounters::default());
        let segment = match self.reader.live_tail {
            Some((index, len)) => {
                SegmentWriter::reopen(self.fs.clone(), self.dir.clone(), self.config.segment_bytes, index, len, counters.clone()).await
            }
            None => {
                SegmentWriter::create(self.fs.clone(), self.dir.clone(), self.config.segment_bytes, self.first_live_index, counters.clone())
                    .await
            }
        }
        .map_err(|f| WalError::from_failure(&f))?;
        let report = &self.reader.report;
        let stats = WalStats {
            repairs: u64::from(report.truncated.is_some()),
            damaged_ranges_skipped: report.damaged.len() as u64,
            records_dropped: report.records_dropped,
            checkpoint_index: self.checkpoint,
            ..WalStats::default()
        };
        let shared = Arc::new(Shared {
            fs: self.fs.clone(),
            dir: self.dir.clone(),
            payload_bytes_max: payload_bytes_max(self.config.segment_bytes),
            config: self.config.clone(),
            state: Mutex::new(State {
                queue: VecDeque::new(),
                next_seq: self.next_seq.clone(),
                durable_next_seq: self.next_seq.clone(),
                poisoned: None,
                closed: false,
                stats,
            }),
            wake: Notify::new(),
            log: tokio::sync::Mutex::new(Log { segment, written_next_seq: self.next_seq.clone() }),
            counters,
            checkpoint_meta_at_open: self.checkpoint_meta.clone(),
        });
        let writer_task = tokio::spawn(writer_loop(shared.clone()));
        if let FsyncPolicy::Interval { interval_ms } = self.config.fsync {
            // Detached: it exits at the first tick after close.
            drop(tokio::spawn(syncer_loop(shared.clone(), interval_ms)));
        }
        Ok(Wal {
            inner: Arc::new(Inner {
                shared,
                writer_task: Mutex::new(Some(writer_task)),
                checkpoint_lock: tokio::sync::Mutex::new(()),
                tail_cursors: Mutex::new(BTreeMap::new()),
            }),
        })
    }
}

/// What the directory holds.
struct Listing {
    segments: Vec<u32>,
    checkpoints: Vec<u32>,
    temps: Vec<String>,
}

async fn list(fs: &Arc<dyn FileSystem>, dir: &Path) -> Result<Listing, WalError> {
    let names = fs.read_dir(dir).await.map_err(|e| WalError::io("list", dir, &e))?;
    let mut listing = Listing { segments: Vec::new(), checkpoints: Vec::new(), temps: Vec::new() };
    for name in names {
        if let Some(index) = parse_segment_name(&name) {
            listing.segments.push(index);
        } else if let Some(index) = parse_checkpoint_name(&name) {
            listing.checkpoints.push(index);
        } else if name.starts_with("checkpoint.") && name.ends_with(".tmp") {
            listing.temps.push(name);
        } else {
            tracing::warn!(?dir, %name, "unexpected entry in the WAL directory; left alone");
        }
    }
    listing.segments.sort_unstable();
    listing.checkpoints.sort_unstable();
    Ok(listing)
}

async fn checkpoint_sources(fs: &Arc<dyn FileSystem>, dir: &Path, index: u32) -> Result<Vec<Source>, WalError> {
    let path = dir.join(checkpoint_name(index));
    let names = fs.read_dir(&path).await.map_err(|e| WalError::io("list checkpoint", &path, &e))?;
    let mut indexes: Vec<u32> = names.iter().filter_map(|n| parse_segment_name(n)).collect();
    indexes.sort_unstable();
    Ok(indexes.into_iter().map(|i| Source { path: path.join(segment_name(i)), index: i, live_last: false }).collect())
}

impl Wal {
    /// Opens (creating if needed) the WAL in `dir`, and returns a replayer that yields every
    /// surviving record in log order, checkpoint first. Repair of a torn tail happens as the
    /// replay reaches it; call [`WalReplay::finish`] to get the writable [`Wal`].
    pub async fn open(fs: Arc<dyn FileSystem>, dir: PathBuf, config: WalConfig) -> Result<WalReplay, WalError> {
        config.validate()?;
        let parent = dir.parent().map(Path::to_path_buf).unwrap_or_default();
        if !fs.is_dir(&dir).await.map_err(|e| WalError::io("stat", &dir, &e))? {
            fs.create_dir_all(&dir).await.map_err(|e| WalError::io("create", &dir, &e))?;
            fs.sync_dir(&parent).await.map_err(|e| WalError::io("fsync parent of", &dir, &e))?;
        }
        let listing = list(&fs, &dir).await?;
        let mut report = RepairReport::default();
        let mut removed_any = false;
        for temp in &listing.temps {
            let path = dir.join(temp);
            fs.remove_dir_all(&path).await.map_err(|e| WalError::io("remove stale checkpoint", &path, &e))?;
            report.removed.push(temp.clone());
            removed_any = true;
        }
        let checkpoint = listing.checkpoints.last().copied();
        for &old in listing.checkpoints.iter().filter(|c| Some(**c) != checkpoint) {
            let path = dir.join(checkpoint_name(old));
            fs.remove_dir_all(&path).await.map_err(|e| WalError::io("remove old checkpoint", &path, &e))?;
            report.removed.push(checkpoint_name(old));
            removed_any = true;
        }
        let mut live = Vec::new();
        for &index in &listing.segments {
            if checkpoint.is_some_and(|c| index <= c) {
                let path = dir.join(segment_name(index));
                fs.remove_file(&path).await.map_err(|e| WalError::io("remove checkpointed segment", &path, &e))?;
                report.removed.push(segment_name(index));
                removed_any = true;
            } else {
                live.push(index);
            }
        }
        if removed_any {
            fs.sync_dir(&dir).await.map_err(|e| WalError::io("fsync", &dir, &e))?;
        }
        // Gaps: from the segment after the checkpoint (or the first segment) to the last.
        let mut expected = checkpoint.map(|c| c + 1).or(live.first().copied());
        for &index in &live {
            if let Some(from) = expected {
                for missing in from..index {
                    tracing::warn!(?dir, segment = missing, "WAL segment missing; its records are lost, later segments are replayed");
                    report.missing_segments.push(missing);
                }
            }
            expected = Some(index + 1);
        }
        report.checkpoint = checkpoint;
        let mut sources = Vec::new();
        if let Some(c) = checkpoint {
            sources.extend(checkpoint_sources(&fs, &dir, c).await?);
        }
        let last = live.last().copied();
        for &index in &live {
            sources.push(Source { path: dir.join(segment_name(index)), index, live_last: Some(index) == last });
        }
        let first_live_index = checkpoint.map_or(1, |c| c + 1);
        Ok(WalReplay {
            reader: LogReader::new(fs.clone(), sources, report),
            fs,
            dir,
            config,
            next_seq: BTreeMap::new(),
            checkpoint_meta: BTreeMap::new(),
            checkpoint,
            first_live_index,
        })
    }

    /// Queues a record for `shard` and gives it the shard's next sequence number. Does not
    /// await, so callers that hold their shard's lock get WAL order == their apply order.
    /// Errors: [`WalError::Busy`] (retryable), [`WalError::Poisoned`], [`WalError::Closed`],
    /// [`WalError::RecordTooLarge`].
    pub fn submit(&self, shard: ShardId, body: RecordBody) -> Result<WalTicket, WalError> {
        let shared = &self.inner.shared;
        // Encode outside the lock with seq 0; the seq is patched in under the lock.
        let mut payload = encode_payload(&WalRecord { shard, seq: 0, body });
        if payload.len() > shared.payload_bytes_max {
            return Err(WalError::RecordTooLarge { bytes: payload.len(), max: shared.payload_bytes_max });
        }
        let (done, receiver) = oneshot::channel();
        let bytes = payload.len();
        {
            let mut state = shared.lock();
            if let Some(reason) = &state.poisoned {
                return Err(WalError::Poisoned { reason: reason.clone() });
            }
            if state.closed {
                return Err(WalError::Closed);
            }
            if state.queue.len() >= shared.config.queue_records_max {
                return Err(WalError::Busy { queue_records_max: shared.config.queue_records_max });
            }
            let next = state.next_seq.entry(shard).or_insert(1);
            let seq = *next;
            *next += 1;
            payload[PAYLOAD_SEQ_OFFSET..PAYLOAD_SEQ_OFFSET + 8].copy_from_slice(&seq.to_le_bytes());
            state.queue.push_back(Pending { shard, seq, payload, done });
            shared.wake.notify_one();
            Ok(WalTicket { seq, bytes, done: receiver })
        }
    }

    /// Per shard, the next seq recorded in the checkpoint found at open (empty without one):
    /// every record that checkpoint holds has a lower seq.
    pub fn checkpoint_meta_at_open(&self) -> &BTreeMap<ShardId, u64> {
        &self.inner.shared.checkpoint_meta_at_open
    }

    /// The sequence number the next record of `shard` will get.
    pub fn next_seq(&self, shard: ShardId) -> u64 {
        self.inner.shared.lock().next_seq.get(&shard).copied().unwrap_or(1)
    }

    pub fn stats(&self) -> WalStats {
        let shared = &self.inner.shared;
        let mut stats = {
            let state = shared.lock();
            let mut stats = state.stats.clone();
            stats.queue_records = state.queue.len();
            stats
        };
        stats.fsyncs = shared.counters.fsyncs.load(Ordering::Relaxed);
        stats.dir_fsyncs = shared.counters.dir_fsyncs.load(Ordering::Relaxed);
        stats.bytes_written = shared.counters.bytes_written.load(Ordering::Relaxed);
        stats.segments_created = shared.counters.segments_created.load(Ordering::Relaxed);
        stats.tail_records_scanned = shared.counters.tail_records_scanned.load(Ordering::Relaxed);
        stats.tail_bytes_read = shared.counters.tail_bytes_read.load(Ordering::Relaxed);
        stats
    }

    /// Writes everything queued, fsyncs, and stops the writer. Other clones fail with
    /// [`WalError::Closed`] afterwards. Errors with [`WalError::Poisoned`] if the WAL is.
    pub async fn close(self) -> Result<(), WalError> {
        let shared = self.inner.shared.clone();
        shared.lock().closed = true;
        shared.wake.notify_one();
        let task = self.inner.writer_task.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(task) = task {
            let _ = task.await;
        }
        let state = shared.lock();
        match &state.poisoned {
            Some(reason) => Err(WalError::Poisoned { reason: reason.clone() }),
            None => Ok(()),
        }
    }

    /// Seals the current segment, then rewrites the previous checkpoint and every sealed segment
    /// through `filter` into a new checkpoint, and deletes what it replaces. The filter may drop
    /// a record or shrink its body; it must keep its shard and seq. Appends continue meanwhile.
    pub async fn checkpoint(&self, mut filter: impl FnMut(WalRecord) -> Option<WalRecord>) -> Result<CheckpointStats, WalError> {
        let _one_at_a_time = self.inner.checkpoint_lock.lock().await;
        let shared = &self.inner.shared;
        {
            let state = shared.lock();
            if let Some(reason) = &state.poisoned {
                return Err(WalError::Poisoned { reason: reason.clone() });
            }
            if state.closed {
                return Err(WalError::Closed);
            }
        }
        let fs = shared.fs.clone();
        let dir = shared.dir.clone();
        let (sealed, next_seq) = {
            let mut log = shared.log.lock().await;
            let sealed = log.segment.index();
            if let Err(failure) = log.segment.roll().await {
                let error = WalError::from_failure(&failure);
                if !matches!(error, WalError::NoSpace { .. }) {
                    poison(&mut shared.lock(), format!("{error}"));
                }
                return Err(error);
            }
            (sealed, log.written_next_seq.clone())
        };
        let previous = shared.lock().stats.checkpoint_index;
        let listing = list(&fs, &dir).await?;
        let mut sources = Vec::new();
        if let Some(c) = previous {
            sources.extend(checkpoint_sources(&fs, &dir, c).await?);
        }
        let covered: Vec<u32> =
            listing.segments.iter().copied().filter(|i| *i <= sealed && previous.is_none_or(|c| *i > c)).collect();
        for &index in &covered {
            sources.push(Source { path: dir.join(segment_name(index)), index, live_last: false });
        }
        let temp = dir.join(format!("{}.tmp", checkpoint_name(sealed)));
        let target = dir.join(checkpoint_name(sealed));
        let mut stats = CheckpointStats { index: sealed, ..CheckpointStats::default() };
        let result = write_checkpoint(shared, sources, &temp, &next_seq, &mut filter, &mut stats).await;
        if let Err(error) = result {
            // Best effort: open removes temp dirs anyway.
            let _ = fs.remove_dir_all(&temp).await;
            return Err(error);
        }
        fs.rename(&temp, &target).await.map_err(|e| WalError::io("rename checkpoint into place", &temp, &e))?;
        fs.sync_dir(&dir).await.map_err(|e| WalError::io("fsync after renaming checkpoint", &dir, &e))?;
        shared.counters.dir_fsyncs.fetch_add(1, Ordering::Relaxed);
        {
            let mut state = shared.lock();
            state.stats.checkpoint_index = Some(sealed);
            state.stats.checkpoints += 1;
        }
        // The checkpoint is durable: what it replaces can go.
        for &index in &covered {
            let path = dir.join(segment_name(index));
            fs.remove_file(&path).await.map_err(|e| WalError::io("remove checkpointed segment", &path, &e))?;
            stats.segments_removed += 1;
        }
        if let Some(c) = previous {
            let path = dir.join(checkpoint_name(c));
            fs.remove_dir_all(&path).await.map_err(|e| WalError::io("remove old checkpoint", &path, &e))?;
        }
        fs.sync_dir(&dir).await.map_err(|e| WalError::io("fsync after removing checkpointed segments", &dir, &e))?;
        shared.counters.dir_fsyncs.fetch_add(1, Ordering::Relaxed);
        Ok(stats)
    }
}

/// One record as the log holds it: its payload bytes (docs/design/storage-format.md § WAL,
/// "Record payload"), with the shard and seq read from them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawRecord {
    pub shard: ShardId,
    pub seq: u64,
    pub payload: Vec<u8>,
}

/// What [`Wal::tail`] read.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TailRead {
    /// The shard's records with `seq > after_seq` and below the durable frontier, in log order
    /// (which is seq order), within the byte budget.
    pub records: Vec<RawRecord>,
    /// Series entries of the shard logged at or below `after_seq` and still in the log, by ref
    /// (the later definition of a ref wins, as in replay).
    pub series_before: BTreeMap<SeriesRef, SeriesEntry>,
    /// One past the highest durable seq of the shard when the read began.
    pub durable_next_seq: u64,
    /// The read resumed where the previous tail stopped: `series_before` is empty.
    pub from_cursor: bool,
}

impl Wal {
    /// The durable records of `shard` with `seq > after_seq`, in seq order, from the retained
    /// log (checkpoint, then segments), stopping once `bytes_max` payload bytes are collected
    /// (at least one record is returned when there is one). Records not yet durable are never
    /// returned, so a caller never ships what a crash could take back. Holds the checkpoint lock
    /// while reading, so no file it reads is removed underneath it; appends continue.
    ///
    /// With `from_cursor`, a call that asks for the records right after those the previous call
    /// for the shard returned reads on from where that one stopped (same checkpoint, same file,
    /// a page-aligned partial read); its `series_before` is then empty. Otherwise it reads the
    /// whole retained log up to the records it returns (as replay does), which costs the log's
    /// size per call: before the cursor, a busy primary's replication stream spent most of a
    /// 3-node cluster's CPU rereading it (docs/benchmarks.md § 7).
    pub async fn tail(&self, shard: ShardId, after_seq: u64, bytes_max: usize, from_cursor: bool) -> Result<TailRead, WalError> {
        let _no_checkpoint = self.inner.checkpoint_lock.lock().await;
        let shared = &self.inner.shared;
        let (durable_next_seq, checkpoint) = {
            let state = shared.lock();
            if state.closed {
                return Err(WalError::Closed);
            }
            (state.durable_next_seq.get(&shard).copied().unwrap_or(1), state.stats.checkpoint_index)
        };
        let mut out = TailRead { durable_next_seq, ..TailRead::default() };
        if after_seq.saturating_add(1) >= durable_next_seq {
            // Nothing durable above after_seq; Series definitions are still wanted by callers
            // only together with records, so the log is not read.
            return Ok(out);
        }
        // Listed after the durable snapshot: every record below the frontier is in a listed file.
        let listing = list(&shared.fs, &shared.dir).await?;
        let mut paths = Vec::new();
        if let Some(c) = checkpoint {
            paths.extend(checkpoint_sources(&shared.fs, &shared.dir, c).await?.into_iter().map(|s| s.path));
        }
        paths.extend(listing.segments.iter().filter(|i| checkpoint.is_none_or(|c| **i > c)).map(|i| shared.dir.join(segment_name(*i))));
        // Resume where the previous tail of this shard stopped when it asked for exactly the
        // records after that one (the replication stream's steady state); `series_before` then
        // stays empty and the caller resolves series elsewhere or asks again without the cursor.
        let cursor = if from_cursor { self.tail_cursor(shard) } else { None };
        let mut start: Option<(usize, u64)> = None;
        if let Some(cursor) = cursor.filter(|c| c.checkpoint == checkpoint && c.next_seq == after_seq + 1) {
            if let Some(index) = paths.iter().position(|p| *p == cursor.path) {
                start = Some((index, cursor.offset));
                out.from_cursor = true;
            }
        }
        let (first_path, first_offset) = start.unwrap_or((0, 0));
        let mut bytes = 0usize;
        // Where the next tail resumes: the file and offset after the last record consumed.
        let mut resume: Option<(PathBuf, u64)> = None;
        let mut next_seq = after_seq + 1;
        let window_bytes = tail_window_bytes(bytes_max);
        'files: for (index, path) in paths.iter().enumerate().skip(first_path) {
            let file_len = shared.fs.file_len(path).await.map_err(|e| WalError::io("stat segment for tail", path, &e))?;
            // Read in windows of about twice the batch budget, so a lagging secondary's batch
            // does not read (and allocate) the rest of a 128 MiB segment.
            let mut pos = if index == first_path { first_offset } else { 0 };
            let mut window = window_bytes;
            loop {
                // Fragments never cross a 32 KiB page and the scan finds page ends from its
                // buffer's start, so every read starts at a page boundary.
                let base = pos - pos % format::PAGE_BYTES as u64;
                if base >= file_len {
                    resume = Some((path.clone(), pos));
                    break;
                }
                let len = (file_len - base).min(window as u64);
                let data = shared.fs.read_at(path, base, len as usize).await.map_err(|e| WalError::io("read segment for tail", path, &e))?;
                shared.counters.tail_bytes_read.fetch_add(data.len() as u64, Ordering::Relaxed);
                if base == 0 && !matches!(format::check_header(&data), format::HeaderCheck::Valid { .. }) {
                    // A damaged header was reported by replay; its records are read anyway there,
                    // but a tail cannot vouch for them: the gap check of the caller sees them missing.
                    continue 'files;
                }
                let scan_from = ((pos - base) as usize).max(if base == 0 { format::SEGMENT_HEADER_BYTES } else { 0 });
                let mut scan = format::SegmentScan::new(data, scan_from);
                while let Some(scanned) = scan.next_record() {
                    shared.counters.tail_records_scanned.fetch_add(1, Ordering::Relaxed);
                    let payload = scanned.payload;
                    if payload.len() < record::PAYLOAD_HEADER_BYTES {
                        continue;
                    }
                    let record_shard = u32::from_le_bytes(payload[0..4].try_into().expect("4 bytes"));
                    let seq = u64::from_le_bytes(payload[4..12].try_into().expect("8 bytes"));
                    if record_shard != shard || payload[12] == record::KIND_META {
                        continue;
                    }
                    if seq >= durable_next_seq || (!out.records.is_empty() && bytes + payload.len() > bytes_max) {
                        // Not returned: the next tail starts at this record.
                        resume = Some((path.clone(), base + scanned.offset));
                        break 'files;
                    }
                    if seq <= after_seq {
                        if payload[12] == record::KIND_SERIES {
                            if let Ok(record::Payload::Record(WalRecord { body: RecordBody::Series(entries), .. })) = record::decode_payload(&payload) {
                                for entry in entries {
                                    out.series_before.insert(entry.series_ref, entry);
                                }
                            }
                        }
                        continue;
                    }
                    bytes += payload.len();
                    next_seq = seq + 1;
                    out.records.push(RawRecord { shard, seq, payload });
                }
                // The window's complete records are consumed; a record cut by the window's end
                // is read again, whole, by the next window.
                let end = base + scan.good_end;
                if base + len >= file_len {
                    resume = Some((path.clone(), end));
                    break;
                }
                if end <= pos {
                    // No record ended in the window: one longer than it. Widen.
                    window = window.saturating_mul(2);
                } else {
                    pos = end;
                    window = window_bytes;
                }
            }
        }
        if let Some((path, offset)) = resume {
            let cursor = TailCursor { checkpoint, path, offset, next_seq };
            self.inner.tail_cursors.lock().unwrap_or_else(|p| p.into_inner()).insert(shard, cursor);
        }
        Ok(out)
    }

    fn tail_cursor(&self, shard: ShardId) -> Option<TailCursor> {
        self.inner.tail_cursors.lock().unwrap_or_else(|p| p.into_inner()).get(&shard).cloned()
    }
}

/// Bytes of framed records buffered before a checkpoint writes them.
const CHECKPOINT_WRITE_BYTES: usize = 1024 * 1024;

async fn write_checkpoint(
    shared: &Shared,
    sources: Vec<Source>,
    temp: &Path,
    next_seq: &BTreeMap<ShardId, u64>,
    filter: &mut impl FnMut(WalRecord) -> Option<WalRecord>,
    stats: &mut CheckpointStats,
) -> Result<(), WalError> {
    let fs = shared.fs.clone();
    if fs.exists(temp).await.map_err(|e| WalError::io("stat", temp, &e))? {
        fs.remove_dir_all(temp).await.map_err(|e| WalError::io("remove stale checkpoint", temp, &e))?;
    }
    fs.create_dir_all(temp).await.map_err(|e| WalError::io("create checkpoint dir", temp, &e))?;
    let segment_bytes = shared.config.segment_bytes;
    let mut writer = SegmentWriter::create(fs.clone(), temp.to_path_buf(), segment_bytes, 0, shared.counters.clone())
        .await
        .map_err(|f| WalError::from_failure(&f))?;
    let mut buf = Vec::new();
    let mut offset = writer.offset();
    let mut pending_payloads = vec![encode_meta(next_seq)];
    let mut reader = LogReader::new(fs.clone(), sources, RepairReport::default());
    loop {
        let item = reader.next().await;
        let done = item.is_none();
        match item {
            None => {}
            Some(Ok(Item::Meta(_))) => continue, // superseded by the meta written first
            Some(Ok(Item::Record(record))) => {
                stats.records_read += 1;
                let (shard, seq) = (record.shard, record.seq);
                if let Some(kept) = filter(record) {
                    assert_eq!((kept.shard, kept.seq), (shard, seq), "a checkpoint filter must keep shard and seq");
                    stats.records_kept += 1;
                    pending_payloads.push(encode_payload(&kept));
                }
            }
            Some(Err(WalError::Decode { .. })) => continue, // counted in the reader's report
            Some(Err(error)) => return Err(error),
        }
        for payload in pending_payloads.drain(..) {
            if offset + framed_len(offset, payload.len()) > segment_bytes {
                if !buf.is_empty() {
                    writer.write(&buf, offset).await.map_err(|f| WalError::from_failure(&f))?;
                    buf.clear();
                }
                writer.roll().await.map_err(|f| WalError::from_failure(&f))?;
                offset = writer.offset();
            }
            offset = frame_record(offset, &payload, &mut buf);
        }
        if buf.len() >= CHECKPOINT_WRITE_BYTES || (done && !buf.is_empty()) {
            writer.write(&buf, offset).await.map_err(|f| WalError::from_failure(&f))?;
            buf.clear();
        }
        if done {
            break;
        }
    }
    stats.damaged_ranges = reader.report.damaged.len() as u64;
    writer.sync().await.map_err(|f| WalError::from_failure(&f))?;
    fs.sync_dir(temp).await.map_err(|e| WalError::io("fsync checkpoint dir", temp, &e))?;
    shared.counters.dir_fsyncs.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

/// The group-commit writer: takes what is queued (up to `batch_bytes_max`), writes it with one
/// write per segment touched, fsyncs once, and answers every ticket in the batch.
async fn writer_loop(shared: Arc<Shared>) {
    loop {
        let batch = {
            let mut state = shared.lock();
            if state.queue.is_empty() {
                if state.closed {
                    break;
                }
                None
            } else {
                let mut batch = Vec::new();
                let mut bytes = 0;
                while let Some(pending) = state.queue.front() {
                    if !batch.is_empty() && bytes + pending.payload.len() > shared.config.batch_bytes_max {
                        break;
                    }
                    bytes += pending.payload.len();
                    batch.push(state.queue.pop_front().expect("front exists"));
                }
                Some(batch)
            }
        };
        match batch {
            None => shared.wake.notified().await,
            Some(batch) => write_batch(&shared, batch).await,
        }
    }
    let mut log = shared.log.lock().await;
    if log.segment.is_dirty() && shared.lock().poisoned.is_none() {
        if let Err(failure) = log.segment.sync().await {
            poison(&mut shared.lock(), format!("{}", WalError::from_failure(&failure)));
        }
    }
}

async fn write_batch(shared: &Shared, batch: Vec<Pending>) {
    let mut log = shared.log.lock().await;
    if let Some(reason) = shared.lock().poisoned.clone() {
        for pending in batch {
            let _ = pending.done.send(Err(WalError::Poisoned { reason: reason.clone() }));
        }
        return;
    }
    let segment_bytes = shared.config.segment_bytes;
    let mut written = 0;
    let mut failure: Option<WriteFailure> = None;
    let mut buf = Vec::new();
    let mut offset = log.segment.offset();
    for (i, pending) in batch.iter().enumerate() {
        if offset + framed_len(offset, pending.payload.len()) > segment_bytes {
            if !buf.is_empty() {
                if let Err(f) = log.segment.write(&buf, offset).await {
                    failure = Some(f);
                    break;
                }
                buf.clear();
                written = i;
            }
            if let Err(f) = log.segment.roll().await {
                failure = Some(f);
                break;
            }
            offset = log.segment.offset();
        }
        offset = frame_record(offset, &pending.payload, &mut buf);
    }
    if failure.is_none() && !buf.is_empty() {
        match log.segment.write(&buf, offset).await {
            Ok(()) => written = batch.len(),
            Err(f) => failure = Some(f),
        }
    }
    let failure = failure.map(|f| WalError::from_failure(&f));
    let no_space = matches!(failure, Some(WalError::NoSpace { .. }));
    let mut sync_error = None;
    if failure.is_none() || no_space {
        for pending in &batch[..written] {
            log.written_next_seq.insert(pending.shard, pending.seq + 1);
        }
        if written > 0 && shared.config.fsync == FsyncPolicy::Always {
            if let Err(f) = log.segment.sync().await {
                sync_error = Some(WalError::from_failure(&f));
            }
        }
    }
    let mut state = shared.lock();
    if let Some(error) = sync_error.or(if no_space { None } else { failure.clone() }) {
        // fsync failed (the kernel may have dropped the dirty pages) or a write failed in a way
        // that leaves the file's contents unknown: never retry, poison.
        poison(&mut state, format!("{error}"));
        let poisoned = WalError::Poisoned { reason: state.poisoned.clone().expect("just poisoned") };
        for pending in batch {
            let _ = pending.done.send(Err(poisoned.clone()));
        }
        return;
    }
    state.stats.batches_written += 1;
    state.stats.records_appended += written as u64;
    let mut batch = batch.into_iter();
    for pending in batch.by_ref().take(written) {
        state.stats.payload_bytes_appended += pending.payload.len() as u64;
        state.durable_next_seq.insert(pending.shard, pending.seq + 1);
        let _ = pending.done.send(Ok(()));
    }
    if let Some(error) = failure {
        // ENOSPC: the partial bytes were cut away. Fail the rest of the batch and everything
        // queued behind it, and hand their sequence numbers out again so each shard's sequence
        // stays gap-free.
        tracing::warn!(%error, "WAL append refused: disk full");
        for pending in batch.chain(state.queue.drain(..).collect::<Vec<_>>()) {
            state.stats.records_no_space += 1;
            let _ = pending.done.send(Err(error.clone()));
        }
        state.next_seq = log.written_next_seq.clone();
    }
}

/// Policy `Interval`: fsyncs the open segment every `interval_ms` if anything was written.
async fn syncer_loop(shared: Arc<Shared>, interval_ms: u64) {
    loop {
        tokio::time::sleep(Duration::from_millis(interval_ms)).await;
        if shared.lock().closed {
            return;
        }
        let mut log = shared.log.lock().await;
        if log.segment.is_dirty() && shared.lock().poisoned.is_none() {
            if let Err(failure) = log.segment.sync().await {
                poison(&mut shared.lock(), format!("{}", WalError::from_failure(&failure)));
            }
        }
    }
}
