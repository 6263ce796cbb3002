//! Appending framed records to a directory of segments (the live log, or a checkpoint being
//! written). Owns the open segment; knows nothing of tickets or queues.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::fs::{FileSystem, WritableFile};

use super::format::{framed_len, segment_header, SEGMENT_HEADER_BYTES};

/// Counters the writer bumps; shared with [`super::WalStats`].
#[derive(Debug, Default)]
pub struct IoCounters {
    pub fsyncs: AtomicU64,
    pub dir_fsyncs: AtomicU64,
    pub bytes_written: AtomicU64,
    pub segments_created: AtomicU64,
    /// Records [`super::Wal::tail`] scanned (any shard, including those it skipped).
    pub tail_records_scanned: AtomicU64,
    pub tail_bytes_read: AtomicU64,
}

/// The name of segment `index`: 8 decimal digits.
pub fn segment_name(index: u32) -> String {
    format!("{index:08}")
}

/// Parses a segment name (exactly 8 decimal digits).
pub fn parse_segment_name(name: &str) -> Option<u32> {
    if name.len() == 8 && name.bytes().all(|b| b.is_ascii_digit()) {
        name.parse().ok()
    } else {
        None
    }
}

/// Where an I/O step failed, so the caller can decide between NoSpace, poison and plain error.
#[derive(Debug)]
pub struct WriteFailure {
    pub step: &'static str,
    pub path: PathBuf,
    pub error: io::Error,
}

pub struct SegmentWriter {
    fs: Arc<dyn FileSystem>,
    dir: PathBuf,
    segment_bytes: u64,
    index: u32,
    file: Box<dyn WritableFile>,
    /// Bytes in the current segment (header included).
    offset: u64,
    /// Bytes written since the last successful sync.
    dirty: bool,
    counters: Arc<IoCounters>,
}

impl std::fmt::Debug for SegmentWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SegmentWriter").field("dir", &self.dir).field("index", &self.index).field("offset", &self.offset).finish()
    }
}

fn fail(step: &'static str, path: &Path, error: io::Error) -> WriteFailure {
    WriteFailure { step, path: path.to_path_buf(), error }
}

impl SegmentWriter {
    /// Creates segment `index` in `dir` (truncating any file of that name), writes its header and
    /// makes the directory entry durable. The header reaches the disk with the next sync.
    pub async fn create(
        fs: Arc<dyn FileSystem>,
        dir: PathBuf,
        segment_bytes: u64,
        index: u32,
        counters: Arc<IoCounters>,
    ) -> Result<Self, WriteFailure> {
        let path = dir.join(segment_name(index));
        let mut file = fs.create(&path).await.map_err(|e| fail("create segment", &path, e))?;
        fs.sync_dir(&dir).await.map_err(|e| fail("fsync wal directory after creating a segment", &dir, e))?;
        counters.dir_fsyncs.fetch_add(1, Ordering::Relaxed);
        counters.segments_created.fetch_add(1, Ordering::Relaxed);
        file.write_all(&segment_header(index)).await.map_err(|e| fail("write segment header", &path, e))?;
        counters.bytes_written.fetch_add(SEGMENT_HEADER_BYTES as u64, Ordering::Relaxed);
        Ok(SegmentWriter { fs, dir, segment_bytes, index, file, offset: SEGMENT_HEADER_BYTES as u64, dirty: true, counters })
    }

    /// Reopens segment `index` for appending at `len` (the file's length after repair).
    pub async fn reopen(
        fs: Arc<dyn FileSystem>,
        dir: PathBuf,
        segment_bytes: u64,
        index: u32,
        len: u64,
        counters: Arc<IoCounters>,
    ) -> Result<Self, WriteFailure> {
        if len < SEGMENT_HEADER_BYTES as u64 {
            // The header never made it: start the segment over.
            return Self::create(fs, dir, segment_bytes, index, counters).await;
        }
        let path = dir.join(segment_name(index));
        let file = fs.open_append(&path).await.map_err(|e| fail("open segment", &path, e))?;
        assert_eq!(file.len(), len, "segment length after repair");
        Ok(SegmentWriter { fs, dir, segment_bytes, index, file, offset: len, dirty: false, counters })
    }

    pub fn index(&self) -> u32 {
        self.index
    }

    pub fn offset(&self) -> u64 {
        self.offset
    }

    pub fn is_dirty(&self) -> bool {
        self.dirty
    }

    pub fn path(&self) -> PathBuf {
        self.dir.join(segment_name(self.index))
    }

    /// Does a payload of this size fit in the current segment?
    pub fn fits(&self, payload_bytes: usize) -> bool {
        self.offset + framed_len(self.offset, payload_bytes) <= self.segment_bytes
    }

    /// True when the current segment holds no record yet.
    pub fn is_fresh(&self) -> bool {
        self.offset == SEGMENT_HEADER_BYTES as u64
    }

    /// Writes `buf` (framed starting at the current offset and ending at `new_offset`). On
    /// failure the file is cut back to the old offset so the segment stays valid, and the
    /// handle is reopened (a real file's position would otherwise be past the cut).
    pub async fn write(&mut self, buf: &[u8], new_offset: u64) -> Result<(), WriteFailure> {
        assert_eq!(self.offset + buf.len() as u64, new_offset);
        let path = self.path();
        self.dirty = true;
        if let Err(error) = self.file.write_all(buf).await {
            let failure = fail("write segment", &path, error);
            if let Err(cut) = self.fs.truncate(&path, self.offset).await {
                return Err(fail("truncate segment after a failed write", &path, cut));
            }
            match self.fs.open_append(&path).await {
                Ok(file) => self.file = file,
                Err(e) => return Err(fail("reopen segment after a failed write", &path, e)),
            }
            return Err(failure);
        }
        self.counters.bytes_written.fetch_add(buf.len() as u64, Ordering::Relaxed);
        self.offset = new_offset;
        Ok(())
    }

    /// fsync of the current segment.
    pub async fn sync(&mut self) -> Result<(), WriteFailure> {
        let path = self.path();
        self.file.sync().await.map_err(|e| fail("fsync segment", &path, e))?;
        self.counters.fsyncs.fetch_add(1, Ordering::Relaxed);
        self.dirty = false;
        Ok(())
    }

    /// Seals the current segment (fsync) and starts the next one. On failure the writer still
    /// points at the old segment.
    pub async fn roll(&mut self) -> Result<(), WriteFailure> {
        if self.dirty {
            self.sync().await?;
        }
        let next = SegmentWriter::create(
            self.fs.clone(),
            self.dir.clone(),
            self.segment_bytes,
            self.index + 1,
            self.counters.clone(),
        )
        .await?;
        *self = next;
        Ok(())
    }
}
