//! The durable raft log: openraft's `RaftLogStorage` on storage's `FileSystem`.
//!
//! Layout under the store's directory (docs/design/raft.md has the bytes):
//!
//! ```text
//! <dir>/vote        the last vote          (written to vote.tmp, fsynced, renamed, dir fsynced)
//! <dir>/committed   the last committed id  (same)
//! <dir>/purged      the last purged id     (same)
//! <dir>/log/<first index, 20 digits>.seg   segments of crc-framed entries
//! ```
//!
//! Every method that openraft awaits returns, and `append` calls its callback, only after the
//! bytes are fsynced and any new directory entry is fsynced: a vote or an entry openraft was
//! told is durable survives any crash. The entries are also kept in memory (the metadata log is
//! short: openraft purges it after each snapshot), so reads never touch the disk.
//!
//! Recovery on [`LogStore::open`]: `*.tmp` leftovers are removed; a torn or zeroed tail of the
//! last segment (damage that no valid record follows) is cut off, durably; damage anywhere
//! else, a gap in the indexes, an undecodable record whose frame checks out, or a damaged
//! meta file is an error that names the file and offset — never skipped.

pub mod format;

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{ErrorSubject, ErrorVerb, OptionalSend, RaftLogReader, StorageIOError};
use sextant_storage::fs::{replace_durably, FileSystem, WritableFile};

use crate::types::{Entry, LogId, StorageError, TypeConfig, Vote};
use format::{storage_page, HeaderCheck, SEGMENT_HEADER_BYTES};

/// Limits of the log store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogStoreConfig {
    /// A segment is sealed and a new one started once it holds this many bytes (a segment can
    /// exceed it by one batch of entries, never by more than one entry's framing beyond it).
    pub segment_bytes_max: u64,
    /// The largest encoded entry accepted; larger ones fail the append.
    pub entry_bytes_max: usize,
}

/// The default `entry_bytes_max`; commands are validated to fit (`command::COMMAND_BYTES_MAX`).
pub const ENTRY_BYTES_MAX_DEFAULT: usize = 2 * 1024 * 1024;

impl Default for LogStoreConfig {
    fn default() -> Self {
        LogStoreConfig {
            segment_bytes_max: 8 * 1024 * 1024,
            entry_bytes_max: ENTRY_BYTES_MAX_DEFAULT,
        }
    }
}

/// What went wrong in the log store. Converted to openraft's `StorageError` at the trait.
#[derive(Debug, thiserror::Error)]
pub enum LogStoreError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path}: corrupt at byte {offset}: {what}")]
    Corrupt {
        path: PathBuf,
        offset: u64,
        what: String,
    },
    #[error("log store is poisoned by an earlier failed write or fsync ({0}); restart the node")]
    Poisoned(String),
    #[error("entry {index} is {bytes} bytes encoded, more than entry_bytes_max {max}")]
    EntryTooLarge {
        index: u64,
        bytes: usize,
        max: usize,
    },
    #[error("append of entry {index} does not come after the last entry {last}")]
    NotContiguous { index: u64, last: u64 },
    #[error("truncating from entry {index} would drop committed entry {committed}")]
    TruncateCommitted { index: u64, committed: u64 },
    #[error("invalid log store config: {0}")]
    Config(String),
}

fn io_error(path: &Path, source: io::Error) -> LogStoreError {
    LogStoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn corrupt(path: &Path, offset: u64, what: impl Into<String>) -> LogStoreError {
    LogStoreError::Corrupt {
        path: path.to_path_buf(),
        offset,
        what: what.into(),
    }
}

fn storage_error(
    subject: ErrorSubject<u64>,
    verb: ErrorVerb,
    error: LogStoreError,
) -> StorageError {
    StorageIOError::new(subject, verb, openraft::AnyError::new(&error)).into()
}

/// What [`LogStore::open`] repaired, for logs and tests.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Bytes cut from the tail of the last segment (torn or zeroed).
    pub tail_bytes_truncated: u64,
    /// Segments removed because every entry in them was purged, or because their creation
    /// never completed (a header that never reached the disk).
    pub segments_removed: u64,
    /// Entries loaded.
    pub entries: u64,
}

/// Where a record lives, for truncation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Location {
    segment: u64,
    offset: u64,
}

/// The segment being appended to.
struct OpenSegment {
    first_index: u64,
    path: PathBuf,
    file: Box<dyn WritableFile>,
}

/// The durable raft log of one node.
pub struct LogStore {
    fs: Arc<dyn FileSystem>,
    dir: PathBuf,
    log_dir: PathBuf,
    config: LogStoreConfig,
    /// Shared with readers (replication tasks). Held only between awaits.
    entries: Arc<Mutex<BTreeMap<u64, Entry>>>,
    locations: BTreeMap<u64, Location>,
    /// First index of every segment file, in order.
    segments: BTreeMap<u64, PathBuf>,
    open: Option<OpenSegment>,
    vote: Option<Vote>,
    committed: Option<LogId>,
    purged: Option<LogId>,
    /// Set by a failed write or fsync: the disk's contents are unknown from then on, and a
    /// retried fsync could report success over lost pages, so every later call fails.
    poisoned: Option<String>,
    report: RecoveryReport,
}

impl fmt::Debug for LogStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LogStore")
            .field("dir", &self.dir)
            .field("segments", &self.segments.len())
            .field("vote", &self.vote)
            .field("committed", &self.committed)
            .field("purged", &self.purged)
            .field("poisoned", &self.poisoned)
            .finish()
    }
}

/// A reader of the in-memory log, for openraft's replication tasks.
#[derive(Clone, Debug)]
pub struct LogReader {
    entries: Arc<Mutex<BTreeMap<u64, Entry>>>,
}

fn lock(entries: &Mutex<BTreeMap<u64, Entry>>) -> MutexGuard<'_, BTreeMap<u64, Entry>> {
    // Nothing panics while holding this lock except on programmer errors; recover the map.
    entries
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn read_range<RB: RangeBounds<u64>>(
    entries: &Mutex<BTreeMap<u64, Entry>>,
    range: RB,
) -> Vec<Entry> {
    let start = match range.start_bound() {
        Bound::Included(i) => Bound::Included(*i),
        Bound::Excluded(i) => Bound::Excluded(*i),
        Bound::Unbounded => Bound::Unbounded,
    };
    let end = match range.end_bound() {
        Bound::Included(i) => Bound::Included(*i),
        Bound::Excluded(i) => Bound::Excluded(*i),
        Bound::Unbounded => Bound::Unbounded,
    };
    // An empty or inverted range is no entries, not a panic in BTreeMap::range.
    let empty = match (start, end) {
        (Bound::Included(s), Bound::Included(e)) => s > e,
        (Bound::Included(s), Bound::Excluded(e)) | (Bound::Excluded(s), Bound::Included(e)) => {
            s >= e
        }
        (Bound::Excluded(s), Bound::Excluded(e)) => s >= e || s + 1 == e,
        _ => false,
    };
    if empty {
        return Vec::new();
    }
    lock(entries)
        .range((start, end))
        .map(|(_, entry)| entry.clone())
        .collect()
}

impl RaftLogReader<TypeConfig> for LogReader {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + fmt::Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        Ok(read_range(&self.entries, range))
    }
}

const VOTE_FILE: &str = "vote";
const COMMITTED_FILE: &str = "committed";
const PURGED_FILE: &str = "purged";
const LOG_DIR: &str = "log";

impl LogStore {
    /// Opens (creating if needed) the log store in `dir`, recovering as the module says.
    pub async fn open(
        fs: Arc<dyn FileSystem>,
        dir: impl Into<PathBuf>,
        config: LogStoreConfig,
    ) -> Result<LogStore, LogStoreError> {
        let dir = dir.into();
        let log_dir = dir.join(LOG_DIR);
        let record_bytes_max = format::RECORD_PREFIX_BYTES_MAX + config.entry_bytes_max;
        if config.entry_bytes_max == 0 {
            return Err(LogStoreError::Config(
                "entry_bytes_max must be positive".into(),
            ));
        }
        if (SEGMENT_HEADER_BYTES as u64)
            + storage_page::framed_len(SEGMENT_HEADER_BYTES as u64, record_bytes_max)
            > config.segment_bytes_max
        {
            return Err(LogStoreError::Config(format!(
                "segment_bytes_max {} cannot hold one entry of entry_bytes_max {}",
                config.segment_bytes_max, config.entry_bytes_max
            )));
        }
        let mut store = LogStore {
            fs,
            dir,
            log_dir,
            config,
            entries: Arc::new(Mutex::new(BTreeMap::new())),
            locations: BTreeMap::new(),
            segments: BTreeMap::new(),
            open: None,
            vote: None,
            committed: None,
            purged: None,
            poisoned: None,
            report: RecoveryReport::default(),
        };
        store.create_dirs().await?;
        store.vote = store.read_meta(VOTE_FILE, format::decode_vote).await?;
        store.committed = store
            .read_meta(COMMITTED_FILE, |b| {
                format::decode_log_id(b, format::META_KIND_COMMITTED)
            })
            .await?
            .flatten();
        store.purged = store
            .read_meta(PURGED_FILE, |b| {
                format::decode_log_id(b, format::META_KIND_PURGED)
            })
            .await?
            .flatten();
        store.load_segments().await?;
        store.check_committed()?;
        Ok(store)
    }

    /// What open repaired.
    pub fn recovery_report(&self) -> &RecoveryReport {
        &self.report
    }

    pub fn config(&self) -> &LogStoreConfig {
        &self.config
    }

    /// Makes `dir` and `dir/log` exist durably (each new entry's parent fsynced), and removes
    /// leftover temp files of interrupted meta writes.
    async fn create_dirs(&mut self) -> Result<(), LogStoreError> {
        create_dir_durably(self.fs.as_ref(), &self.log_dir)
            .await
            .map_err(|(path, e)| io_error(&path, e))?;
        let mut removed = false;
        for name in self
            .fs
            .read_dir(&self.dir)
            .await
            .map_err(|e| io_error(&self.dir, e))?
        {
            if name.ends_with(".tmp") {
                let path = self.dir.join(&name);
                self.fs
                    .remove_file(&path)
                    .await
                    .map_err(|e| io_error(&path, e))?;
                removed = true;
            }
        }
        if removed {
            self.fs
                .sync_dir(&self.dir)
                .await
                .map_err(|e| io_error(&self.dir, e))?;
        }
        Ok(())
    }

    async fn read_meta<T>(
        &self,
        name: &str,
        decode: impl Fn(&[u8]) -> Result<T, format::DecodeError>,
    ) -> Result<Option<T>, LogStoreError> {
        let path = self.dir.join(name);
        if !self
            .fs
            .exists(&path)
            .await
            .map_err(|e| io_error(&path, e))?
        {
            return Ok(None);
        }
        let bytes = self.fs.read(&path).await.map_err(|e| io_error(&path, e))?;
        // Meta files are replaced by rename, so a damaged one is rot, not a torn write: a vote
        // must never be silently forgotten (that could let this node vote twice in a term).
        decode(&bytes)
            .map(Some)
            .map_err(|e| corrupt(&path, e.offset as u64, e.what))
    }

    /// Writes a meta file atomically and durably: temp file, fsync, rename, directory fsync.
    async fn write_meta(&mut self, name: &str, bytes: &[u8]) -> Result<(), LogStoreError> {
        self.check_poisoned()?;
        let result = self.write_meta_inner(name, bytes).await;
        if let Err(error) = &result {
            self.poisoned = Some(error.to_string());
        }
        result
    }

    async fn write_meta_inner(&self, name: &str, bytes: &[u8]) -> Result<(), LogStoreError> {
        let tmp = self.dir.join(format!("{name}.tmp"));
        let path = self.dir.join(name);
        replace_durably(self.fs.as_ref(), &path, &tmp, bytes)
            .await
            .map_err(|e| io_error(&e.path, e.source))
    }

    fn check_poisoned(&self) -> Result<(), LogStoreError> {
        match &self.poisoned {
            Some(why) => Err(LogStoreError::Poisoned(why.clone())),
            None => Ok(()),
        }
    }

    fn last_index(&self) -> Option<u64> {
        lock(&self.entries).keys().next_back().copied()
    }

    async fn load_segments(&mut self) -> Result<(), LogStoreError> {
        let names = self
            .fs
            .read_dir(&self.log_dir)
            .await
            .map_err(|e| io_error(&self.log_dir, e))?;
        let mut firsts = Vec::new();
        for name in names {
            match format::parse_segment_name(&name) {
                Some(first) => firsts.push(first),
                None => {
                    tracing::warn!(dir = ?self.log_dir, name, "ignoring a file that is not a raft log segment")
                }
            }
        }
        firsts.sort_unstable();
        let purged_index = self.purged.map(|id| id.index);
        let mut removed_any = false;
        let count = firsts.len();
        for (position, first) in firsts.into_iter().enumerate() {
            let is_last = position + 1 == count;
            let path = self.log_dir.join(format::segment_name(first));
            let bytes = self.fs.read(&path).await.map_err(|e| io_error(&path, e))?;
            match format::check_segment_header(&bytes) {
                HeaderCheck::Valid { first_index } if first_index == first => {}
                HeaderCheck::Valid { first_index } => {
                    return Err(corrupt(
                        &path,
                        8,
                        format!("header says first index {first_index}, the name says {first}"),
                    ))
                }
                // A segment is created, its header written and fsynced, and its directory entry
                // fsynced before any record goes in: a last segment with no complete header
                // never held a durable record.
                HeaderCheck::Short | HeaderCheck::Damaged
                    if is_last && bytes.len() <= SEGMENT_HEADER_BYTES =>
                {
                    tracing::warn!(?path, "removing a segment whose creation never completed");
                    self.fs
                        .remove_file(&path)
                        .await
                        .map_err(|e| io_error(&path, e))?;
                    self.report.segments_removed += 1;
                    removed_any = true;
                    continue;
                }
                HeaderCheck::Short => {
                    return Err(corrupt(&path, 0, "segment shorter than its header"))
                }
                HeaderCheck::Damaged => {
                    return Err(corrupt(&path, 0, "segment header damaged (magic or crc32)"))
                }
                HeaderCheck::UnknownVersion(version) => {
                    return Err(corrupt(
                        &path,
                        4,
                        format!("segment version {version} is not one this code reads"),
                    ))
                }
            }
            let len = bytes.len() as u64;
            // The last segment's bytes are probed again if its tail is damaged (below).
            let last_bytes = if is_last { bytes.clone() } else { Vec::new() };
            let mut scan = storage_page::SegmentScan::new(bytes, SEGMENT_HEADER_BYTES);
            let mut expected = first;
            let mut kept = 0u64;
            while let Some(record) = scan.next_record() {
                let entry = format::decode_entry(&record.payload).map_err(|e| {
                    corrupt(
                        &path,
                        record.offset,
                        format!("record checks out but does not decode: {e}"),
                    )
                })?;
                if entry.log_id.index < expected {
                    return Err(corrupt(
                        &path,
                        record.offset,
                        format!(
                            "record holds index {} where {expected} or more belongs",
                            entry.log_id.index
                        ),
                    ));
                }
                expected = entry.log_id.index + 1;
                if purged_index.is_some_and(|purged| entry.log_id.index <= purged) {
                    continue;
                }
                if let Some(last) = self.last_index() {
                    if entry.log_id.index <= last {
                        return Err(corrupt(
                            &path,
                            record.offset,
                            format!("entry {} follows entry {last}", entry.log_id.index),
                        ));
                    }
                }
                self.locations.insert(
                    entry.log_id.index,
                    Location {
                        segment: first,
                        offset: record.offset,
                    },
                );
                lock(&self.entries).insert(entry.log_id.index, entry);
                kept += 1;
            }
            let good_end = scan.good_end;
            let damaged = scan.finish();
            for range in &damaged {
                if !is_last || range.end < len {
                    return Err(corrupt(
                        &path,
                        range.start,
                        "damaged record with intact records after it",
                    ));
                }
                // The scan resynchronises only at page ends, so damage that runs to the end of
                // the file may still have intact records after it in its page: rot, not a torn
                // write, and truncating would drop acknowledged entries.
                if let Some(at) = intact_fragment_after(&last_bytes, range.start + 1) {
                    return Err(corrupt(
                        &path,
                        range.start,
                        format!("damaged record with an intact record after it at byte {at}"),
                    ));
                }
            }
            if is_last && good_end < len {
                tracing::warn!(
                    ?path,
                    good_end,
                    len,
                    "cutting the torn tail of the raft log"
                );
                self.fs
                    .truncate(&path, good_end)
                    .await
                    .map_err(|e| io_error(&path, e))?;
                self.report.tail_bytes_truncated += len - good_end;
            }
            let fully_purged = kept == 0
                && expected > first
                && purged_index.is_some_and(|purged| expected - 1 <= purged);
            if fully_purged && !is_last {
                self.fs
                    .remove_file(&path)
                    .await
                    .map_err(|e| io_error(&path, e))?;
                self.report.segments_removed += 1;
                removed_any = true;
                continue;
            }
            self.segments.insert(first, path);
            self.report.entries += kept;
        }
        if removed_any {
            self.fs
                .sync_dir(&self.log_dir)
                .await
                .map_err(|e| io_error(&self.log_dir, e))?;
        }
        if let Some((&first, path)) = self.segments.iter().next_back() {
            let file = self
                .fs
                .open_append(path)
                .await
                .map_err(|e| io_error(path, e))?;
            self.open = Some(OpenSegment {
                first_index: first,
                path: path.clone(),
                file,
            });
        }
        Ok(())
    }

    /// An entry openraft was told is committed must be in the log (or purged into a snapshot):
    /// if recovery cut it away, the disk lost data it had acknowledged.
    fn check_committed(&self) -> Result<(), LogStoreError> {
        let Some(committed) = self.committed else {
            return Ok(());
        };
        let covered = self
            .last_index()
            .into_iter()
            .chain(self.purged.map(|id| id.index))
            .max();
        if covered.is_none_or(|covered| covered < committed.index) {
            return Err(corrupt(
                &self.dir.join(COMMITTED_FILE),
                0,
                format!("committed index {} but the log ends at {covered:?}: acknowledged entries are missing", committed.index),
            ));
        }
        Ok(())
    }

    /// Creates the segment whose first record will be `first_index`, durably (header fsynced,
    /// directory entry fsynced) before anything is written to it.
    /// `open_has_records` says whether the open segment holds records (including ones of the
    /// batch being written, not yet in `locations`).
    async fn create_segment(
        &mut self,
        first_index: u64,
        open_has_records: bool,
    ) -> Result<(), LogStoreError> {
        if let Some(mut open) = self.open.take() {
            // Only the last segment may have a torn tail: seal this one first.
            open.file
                .sync()
                .await
                .map_err(|e| io_error(&open.path, e))?;
            if !open_has_records {
                // Nothing of this segment is kept (it was emptied by truncate or purge):
                // replace it rather than leave an empty segment behind.
                drop(open.file);
                self.fs
                    .remove_file(&open.path)
                    .await
                    .map_err(|e| io_error(&open.path, e))?;
                self.segments.remove(&open.first_index);
            }
        }
        let path = self.log_dir.join(format::segment_name(first_index));
        let mut file = self
            .fs
            .create(&path)
            .await
            .map_err(|e| io_error(&path, e))?;
        file.write_all(&format::segment_header(first_index))
            .await
            .map_err(|e| io_error(&path, e))?;
        file.sync().await.map_err(|e| io_error(&path, e))?;
        self.fs
            .sync_dir(&self.log_dir)
            .await
            .map_err(|e| io_error(&self.log_dir, e))?;
        self.segments.insert(first_index, path.clone());
        self.open = Some(OpenSegment {
            first_index,
            path,
            file,
        });
        Ok(())
    }

    /// Appends entries durably: one write per segment touched, one fsync at the end.
    pub async fn append_entries(&mut self, entries: Vec<Entry>) -> Result<(), LogStoreError> {
        self.check_poisoned()?;
        let result = self.append_inner(entries).await;
        if let Err(error) = &result {
            if !matches!(
                error,
                LogStoreError::EntryTooLarge { .. } | LogStoreError::NotContiguous { .. }
            ) {
                self.poisoned = Some(error.to_string());
            }
        }
        result
    }

    async fn append_inner(&mut self, entries: Vec<Entry>) -> Result<(), LogStoreError> {
        let mut last = self.last_index();
        let mut payloads = Vec::with_capacity(entries.len());
        for entry in &entries {
            let index = entry.log_id.index;
            if let Some(last) = last {
                if index <= last {
                    return Err(LogStoreError::NotContiguous { index, last });
                }
            }
            last = Some(index);
            let payload = format::encode_entry(entry);
            if payload.len() > format::RECORD_PREFIX_BYTES_MAX + self.config.entry_bytes_max {
                return Err(LogStoreError::EntryTooLarge {
                    index,
                    bytes: payload.len(),
                    max: self.config.entry_bytes_max,
                });
            }
            payloads.push(payload);
        }
        let mut buffer = Vec::new();
        let mut written = Vec::with_capacity(entries.len());
        for (entry, payload) in entries.into_iter().zip(payloads) {
            let index = entry.log_id.index;
            let open_has_records = self.open.as_ref().is_some_and(|open| {
                self.locations.range(open.first_index..).next().is_some()
                    || written.iter().any(|(_, location): &(Entry, Location)| {
                        location.segment == open.first_index
                    })
            });
            let needs_new = match &self.open {
                None => true,
                Some(open) => {
                    let empty = !open_has_records;
                    let offset = open.file.len() + buffer.len() as u64;
                    (empty && open.first_index != index)
                        || offset + storage_page::framed_len(offset, payload.len())
                            > self.config.segment_bytes_max
                }
            };
            if needs_new {
                self.flush_buffer(&mut buffer).await?;
                self.create_segment(index, open_has_records).await?;
            }
            let open = self.open.as_ref().expect("a segment is open");
            let offset = open.file.len() + buffer.len() as u64;
            let mut framed = Vec::new();
            let end = storage_page::frame_record(offset, &payload, &mut framed);
            assert_eq!(
                end,
                offset + framed.len() as u64,
                "framing ends where it said"
            );
            // frame_record may pad to the page end before the record: the record starts where
            // its first fragment does.
            let start = offset + first_fragment_offset(offset, &framed);
            buffer.extend_from_slice(&framed);
            written.push((
                entry,
                Location {
                    segment: open.first_index,
                    offset: start,
                },
            ));
        }
        self.flush_buffer(&mut buffer).await?;
        // BUGGIFY: a slow disk between write and fsync — the window in which a power cut tears
        // entries that openraft has not yet been told are durable. Simulation only.
        if sextant_core::buggify!("raft.log.slow_fsync") {
            const SLOW_FSYNC_MS: u64 = 200;
            tokio::time::sleep(std::time::Duration::from_millis(SLOW_FSYNC_MS)).await;
        }
        let open = self
            .open
            .as_mut()
            .expect("a segment is open after an append");
        open.file
            .sync()
            .await
            .map_err(|e| io_error(&open.path, e))?;
        let mut map = lock(&self.entries);
        for (entry, location) in written {
            self.locations.insert(entry.log_id.index, location);
            map.insert(entry.log_id.index, entry);
        }
        Ok(())
    }

    async fn flush_buffer(&mut self, buffer: &mut Vec<u8>) -> Result<(), LogStoreError> {
        if buffer.is_empty() {
            return Ok(());
        }
        let open = self
            .open
            .as_mut()
            .expect("buffered bytes belong to an open segment");
        open.file
            .write_all(buffer)
            .await
            .map_err(|e| io_error(&open.path, e))?;
        buffer.clear();
        Ok(())
    }

    /// Removes entries from `index` on, durably: later segments first (so a crash never leaves
    /// a hole), then the segment holding `index` is cut at the record's start.
    pub async fn truncate_from(&mut self, index: u64) -> Result<(), LogStoreError> {
        self.check_poisoned()?;
        // Raft never truncates committed entries; refusing keeps a bug from erasing them.
        if let Some(committed) = self.committed {
            if index <= committed.index {
                return Err(LogStoreError::TruncateCommitted {
                    index,
                    committed: committed.index,
                });
            }
        }
        let result = self.truncate_inner(index).await;
        if let Err(error) = &result {
            self.poisoned = Some(error.to_string());
        }
        result
    }

    async fn truncate_inner(&mut self, index: u64) -> Result<(), LogStoreError> {
        let Some(&location) = self.locations.get(&index) else {
            // Nothing at or after `index` (openraft may truncate past the end).
            let after: Vec<u64> = self.locations.range(index..).map(|(i, _)| *i).collect();
            assert!(after.is_empty(), "entries after {index} but none at it");
            return Ok(());
        };
        let doomed: Vec<u64> = self
            .segments
            .range(location.segment + 1..)
            .map(|(first, _)| *first)
            .collect();
        if !doomed.is_empty() {
            // The open segment is among them: close it before removing.
            self.open = None;
            for first in doomed.iter().rev() {
                let path = self.segments.remove(first).expect("listed above");
                self.fs
                    .remove_file(&path)
                    .await
                    .map_err(|e| io_error(&path, e))?;
            }
            self.fs
                .sync_dir(&self.log_dir)
                .await
                .map_err(|e| io_error(&self.log_dir, e))?;
        }
        let path = self
            .segments
            .get(&location.segment)
            .expect("a location names a live segment")
            .clone();
        self.open = None;
        self.fs
            .truncate(&path, location.offset)
            .await
            .map_err(|e| io_error(&path, e))?;
        let file = self
            .fs
            .open_append(&path)
            .await
            .map_err(|e| io_error(&path, e))?;
        self.open = Some(OpenSegment {
            first_index: location.segment,
            path,
            file,
        });
        self.locations.split_off(&index);
        lock(&self.entries).split_off(&index);
        Ok(())
    }

    /// Forgets entries up to `log_id` (included): records the purge durably first, then removes
    /// the segments that hold nothing newer.
    pub async fn purge_to(&mut self, log_id: LogId) -> Result<(), LogStoreError> {
        if self
            .purged
            .is_some_and(|purged| purged.index >= log_id.index)
        {
            return Ok(());
        }
        self.write_meta(
            PURGED_FILE,
            &format::encode_log_id(format::META_KIND_PURGED, Some(&log_id)),
        )
        .await?;
        self.purged = Some(log_id);
        {
            let mut map = lock(&self.entries);
            let kept = map.split_off(&(log_id.index + 1));
            *map = kept;
        }
        self.locations = self.locations.split_off(&(log_id.index + 1));
        // A segment can go when the next one starts at or before the first kept index; the open
        // segment stays (appends continue there) unless nothing in it is kept.
        let firsts: Vec<u64> = self.segments.keys().copied().collect();
        let mut doomed = Vec::new();
        for pair in firsts.windows(2) {
            if pair[1] <= log_id.index + 1 {
                doomed.push(pair[0]);
            }
        }
        if let Some(&last) = firsts.last() {
            if !self.locations.range(last..).any(|_| true) && self.last_index().is_none() {
                doomed.push(last);
            }
        }
        if doomed.is_empty() {
            return Ok(());
        }
        let result: Result<(), LogStoreError> = async {
            for first in &doomed {
                if self
                    .open
                    .as_ref()
                    .is_some_and(|open| open.first_index == *first)
                {
                    self.open = None;
                }
                let path = self.segments.remove(first).expect("listed above");
                self.fs
                    .remove_file(&path)
                    .await
                    .map_err(|e| io_error(&path, e))?;
            }
            self.fs
                .sync_dir(&self.log_dir)
                .await
                .map_err(|e| io_error(&self.log_dir, e))
        }
        .await;
        if let Err(error) = &result {
            self.poisoned = Some(error.to_string());
        }
        result
    }

    pub fn vote(&self) -> Option<Vote> {
        self.vote
    }

    pub fn committed(&self) -> Option<LogId> {
        self.committed
    }

    pub fn purged(&self) -> Option<LogId> {
        self.purged
    }

    /// Copies of the entries in `range`.
    pub fn entries<RB: RangeBounds<u64>>(&self, range: RB) -> Vec<Entry> {
        read_range(&self.entries, range)
    }

    pub async fn save_vote_durably(&mut self, vote: &Vote) -> Result<(), LogStoreError> {
        self.write_meta(VOTE_FILE, &format::encode_vote(vote))
            .await?;
        self.vote = Some(*vote);
        Ok(())
    }

    pub async fn save_committed_durably(
        &mut self,
        committed: Option<LogId>,
    ) -> Result<(), LogStoreError> {
        if committed == self.committed {
            return Ok(());
        }
        self.write_meta(
            COMMITTED_FILE,
            &format::encode_log_id(format::META_KIND_COMMITTED, committed.as_ref()),
        )
        .await?;
        self.committed = committed;
        Ok(())
    }
}

/// Creates `path` and every missing parent, fsyncing each new entry's parent directory, so the
/// directory survives a power cut. Errors name the path that failed.
pub(crate) async fn create_dir_durably(
    fs: &dyn FileSystem,
    path: &Path,
) -> Result<(), (PathBuf, io::Error)> {
    let mut walked = PathBuf::new();
    for component in path.components() {
        let parent = walked.clone();
        walked.push(component);
        if !fs.is_dir(&walked).await.map_err(|e| (walked.clone(), e))? {
            fs.create_dir_all(&walked)
                .await
                .map_err(|e| (walked.clone(), e))?;
            fs.sync_dir(&parent)
                .await
                .map_err(|e| (parent.clone(), e))?;
        }
    }
    Ok(())
}

/// The offset of the first intact FULL or FIRST fragment at or after `from`, probing every byte
/// offset (a torn write leaves garbage after the last complete record, never an intact record;
/// disk rot inside a page does). Same fragment rules as `storage::wal::format`.
fn intact_fragment_after(bytes: &[u8], from: u64) -> Option<u64> {
    const FULL: u8 = 1;
    const FIRST: u8 = 2;
    let page = storage_page::PAGE_BYTES;
    let header = storage_page::FRAGMENT_HEADER_BYTES;
    let start = usize::try_from(from).ok()?;
    for at in start.max(SEGMENT_HEADER_BYTES)..bytes.len() {
        let kind = bytes[at];
        if kind != FULL && kind != FIRST {
            continue;
        }
        let page_end = ((at / page + 1) * page).min(bytes.len());
        if at + header > page_end {
            continue;
        }
        let len = u16::from_le_bytes([bytes[at + 1], bytes[at + 2]]) as usize;
        let data_end = at + header + len;
        if len == 0 || data_end > page_end {
            continue;
        }
        let crc = u32::from_le_bytes(bytes[at + 3..at + 7].try_into().expect("4 bytes"));
        let mut hasher = crc32fast::Hasher::new();
        hasher.update(&bytes[at..at + 3]);
        hasher.update(&bytes[at + header..data_end]);
        if hasher.finalize() == crc {
            return Some(at as u64);
        }
    }
    None
}

/// The offset, within `framed`, of the first fragment (after any page padding).
fn first_fragment_offset(offset: u64, framed: &[u8]) -> u64 {
    let left = storage_page::PAGE_BYTES as u64 - offset % storage_page::PAGE_BYTES as u64;
    if left <= storage_page::FRAGMENT_HEADER_BYTES as u64 {
        assert!(framed.len() as u64 > left);
        left
    } else {
        0
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + fmt::Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        Ok(read_range(&self.entries, range))
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogReader;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let last = lock(&self.entries)
            .values()
            .next_back()
            .map(|entry| entry.log_id);
        Ok(LogState {
            last_purged_log_id: self.purged,
            last_log_id: last.or(self.purged),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        LogReader {
            entries: self.entries.clone(),
        }
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        self.save_vote_durably(vote)
            .await
            .map_err(|e| storage_error(ErrorSubject::Vote, ErrorVerb::Write, e))
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        Ok(self.vote)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        self.save_committed_durably(committed)
            .await
            .map_err(|e| storage_error(ErrorSubject::Store, ErrorVerb::Write, e))
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self.committed)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        match self.append_entries(entries).await {
            Ok(()) => {
                // Only now, after the fsync, is openraft told the entries are durable.
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(error) => {
                callback.log_io_completed(Err(io::Error::other(error.to_string())));
                Err(storage_error(ErrorSubject::Logs, ErrorVerb::Write, error))
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.truncate_from(log_id.index)
            .await
            .map_err(|e| storage_error(ErrorSubject::Logs, ErrorVerb::Delete, e))
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.purge_to(log_id)
            .await
            .map_err(|e| storage_error(ErrorSubject::Logs, ErrorVerb::Delete, e))
    }
}
