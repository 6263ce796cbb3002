//! Reading segments back: the replay at open and the input of a checkpoint.

use std::collections::{BTreeMap, VecDeque};
use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;

use crate::fs::FileSystem;

use super::format::{check_header, HeaderCheck, SegmentScan, SEGMENT_HEADER_BYTES};
use super::record::{decode_payload, Payload, ShardId, WalRecord};
use super::WalError;

/// What replay found and repaired. Everything in it was also logged with `tracing::warn!`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RepairReport {
    /// The checkpoint replay started from.
    pub checkpoint: Option<u32>,
    /// Segment indexes missing between the checkpoint (or the first segment) and the last
    /// segment. Records after a gap are still replayed.
    pub missing_segments: Vec<u32>,
    /// Byte ranges of files that held no readable record and were skipped (mid-log damage).
    pub damaged: Vec<(PathBuf, Range<u64>)>,
    /// The torn tail cut from the last segment: (file, length before, length after). Only set
    /// when the cut bytes were not all zeros.
    pub truncated: Option<(PathBuf, u64, u64)>,
    /// Records known to be lost in damaged ranges (a lower bound: a damaged page may have held
    /// records whose headers are unreadable).
    pub records_dropped: u64,
    /// Records whose frames checked out but whose payload did not decode (yielded as errors).
    pub records_undecodable: u64,
    pub records_replayed: u64,
    pub payload_bytes_replayed: u64,
    /// Files removed at open: stale checkpoint temp dirs, obsolete segments and checkpoints.
    pub removed: Vec<String>,
}

/// One file to read.
#[derive(Clone, Debug)]
pub(crate) struct Source {
    pub path: PathBuf,
    /// The segment index the header must carry.
    pub index: u32,
    /// The last segment of the live log: its torn tail is cut off.
    pub live_last: bool,
}

pub(crate) enum Item {
    Record(WalRecord),
    Meta(BTreeMap<ShardId, u64>),
}

pub(crate) struct LogReader {
    fs: Arc<dyn FileSystem>,
    sources: VecDeque<Source>,
    current: Option<(Source, SegmentScan, bool)>,
    pub report: RepairReport,
    /// The live tail after repair: (segment index, length).
    pub live_tail: Option<(u32, u64)>,
    failed: bool,
}

/// Extra reads of a segment whose first read shows damage.
const SEGMENT_REREADS_MAX: usize = 2;

/// Whether the header is valid and every fragment after it checks out; hands the bytes back.
fn segment_checks_out(bytes: Vec<u8>) -> (bool, Vec<u8>) {
    if !matches!(check_header(&bytes), HeaderCheck::Valid { .. }) {
        return (false, bytes);
    }
    let mut scan = SegmentScan::new(bytes, SEGMENT_HEADER_BYTES);
    while scan.next_record().is_some() {}
    let clean = scan.finish().is_empty() && !scan.tail_has_nonzero();
    (clean, scan.into_bytes())
}

impl LogReader {
    pub fn new(fs: Arc<dyn FileSystem>, sources: Vec<Source>, report: RepairReport) -> Self {
        LogReader { fs, sources: sources.into(), current: None, report, live_tail: None, failed: false }
    }

    /// Reads a segment; when its records do not all check out, reads it again (up to
    /// `SEGMENT_REREADS_MAX` times) and keeps the first clean copy. Why: a bit flipped on the way
    /// from the disk (a corrupt read, not corrupt media) would otherwise be judged damage, and
    /// the records touching it — possibly acknowledged, fsynced ones — dropped from replay or cut
    /// as a torn tail. Damage that every read shows is real and handled as before.
    async fn read_settled(&self, path: &std::path::Path) -> Result<Vec<u8>, WalError> {
        let mut bytes = self.fs.read(path).await.map_err(|e| WalError::io("read segment", path, &e))?;
        for _ in 0..SEGMENT_REREADS_MAX {
            let (clean, checked) = segment_checks_out(bytes);
            bytes = checked;
            if clean {
                break;
            }
            let again = self.fs.read(path).await.map_err(|e| WalError::io("re-read segment", path, &e))?;
            if again == bytes {
                break; // the same bytes twice: the damage is on the medium
            }
            tracing::warn!(?path, "WAL segment read differently on a second read; using the re-read copy");
            bytes = again;
        }
        Ok(bytes)
    }

    async fn open_next(&mut self) -> Result<bool, WalError> {
        let Some(source) = self.sources.pop_front() else { return Ok(false) };
        let bytes = self.read_settled(&source.path).await?;
        let mut header_damaged = false;
        let start = match check_header(&bytes) {
            HeaderCheck::Valid { index } => {
                if index != source.index {
                    tracing::warn!(path = ?source.path, header_index = index, "WAL segment header names another segment; reading it anyway");
                    self.report.damaged.push((source.path.clone(), 0..SEGMENT_HEADER_BYTES as u64));
                }
                SEGMENT_HEADER_BYTES
            }
            HeaderCheck::Short => {
                if !source.live_last {
                    tracing::warn!(path = ?source.path, len = bytes.len(), "WAL segment shorter than its header; skipped");
                    if !bytes.is_empty() {
                        self.report.damaged.push((source.path.clone(), 0..bytes.len() as u64));
                    }
                }
                bytes.len()
            }
            HeaderCheck::Damaged => {
                tracing::warn!(path = ?source.path, "WAL segment header damaged; reading its records anyway");
                header_damaged = true;
                SEGMENT_HEADER_BYTES
            }
            HeaderCheck::UnknownVersion(version) => {
                return Err(WalError::UnsupportedVersion { path: source.path.clone(), version });
            }
        };
        let mut scan = SegmentScan::new(bytes, start);
        if start < SEGMENT_HEADER_BYTES || (header_damaged && source.live_last) {
            // A live segment with no valid header and no record is cut to nothing and started
            // over at finish.
            scan.good_end = 0;
        } else if header_damaged {
            self.report.damaged.push((source.path.clone(), 0..SEGMENT_HEADER_BYTES as u64));
        }
        self.current = Some((source, scan, header_damaged));
        Ok(true)
    }

    /// Ends the current file: records its damage and, for the live tail, cuts the torn tail.
    async fn close_current(&mut self) -> Result<(), WalError> {
        let Some((source, mut scan, header_damaged)) = self.current.take() else { return Ok(()) };
        let damaged = scan.finish();
        if header_damaged && source.live_last && scan.good_end > 0 {
            self.report.damaged.push((source.path.clone(), 0..SEGMENT_HEADER_BYTES as u64));
        }
        self.report.records_dropped += scan.records_dropped;
        let good_end = scan.good_end;
        let len = scan.len();
        for range in damaged {
            if source.live_last && range.start >= good_end {
                continue; // part of the tail, cut below
            }
            tracing::warn!(path = ?source.path, start = range.start, end = range.end, "WAL damage skipped; records touching it are lost");
            self.report.damaged.push((source.path.clone(), range));
        }
        if source.live_last {
            if len > good_end {
                if scan.tail_has_nonzero() {
                    tracing::warn!(path = ?source.path, from = len, to = good_end, "WAL torn tail truncated to the last good record");
                    self.report.truncated = Some((source.path.clone(), len, good_end));
                }
                self.fs.truncate(&source.path, good_end).await.map_err(|e| WalError::io("truncate torn tail", &source.path, &e))?;
            }
            self.live_tail = Some((source.index, good_end));
        }
        Ok(())
    }

    pub async fn next(&mut self) -> Option<Result<Item, WalError>> {
        if self.failed {
            return None;
        }
        loop {
            if self.current.is_none() {
                match self.open_next().await {
                    Ok(true) => {}
                    Ok(false) => return None,
                    Err(e) => {
                        self.failed = true;
                        return Some(Err(e));
                    }
                }
            }
            let (source, scan, _) = self.current.as_mut().expect("opened above");
            match scan.next_record() {
                Some(scanned) => match decode_payload(&scanned.payload) {
                    Ok(Payload::Record(record)) => {
                        self.report.records_replayed += 1;
                        self.report.payload_bytes_replayed += scanned.payload.len() as u64;
                        return Some(Ok(Item::Record(record)));
                    }
                    Ok(Payload::Meta(meta)) => return Some(Ok(Item::Meta(meta))),
                    Err(source_error) => {
                        self.report.records_undecodable += 1;
                        tracing::warn!(path = ?source.path, offset = scanned.offset, error = %source_error, "WAL record does not decode");
                        return Some(Err(WalError::Decode { path: source.path.clone(), offset: scanned.offset, source: source_error }));
                    }
                },
                None => {
                    if let Err(e) = self.close_current().await {
                        self.failed = true;
                        return Some(Err(e));
                    }
                }
            }
        }
    }
}
