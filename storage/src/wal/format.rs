//! Segment framing (docs/design/storage-format.md § WAL): segment header, 32 KiB pages,
//! fragments that never straddle a page. Pure functions, no I/O.
//!
//! ```text
//! segment  = header <16b> │ fragments … (page 0 holds the header and then fragments)
//! header   = │ magic "SXWL" <4b> │ version u8 <1b> │ reserved zeros <3b> │ segment index u32 LE <4b> │ crc32 <4b> │
//! fragment = │ type u8 <1b> │ len u16 LE <2b> │ crc32 u32 LE <4b> │ data <len bytes> │
//! ```
//!
//! The fragment crc32 (IEEE, crc32fast) covers the type byte, the two length bytes and the data.
//! When fewer than `FRAGMENT_HEADER_BYTES + 1` bytes are left in a page, the writer pads them with
//! zeros; a type byte of 0 means "the rest of this page is zero padding".

use std::ops::Range;

/// Every segment starts with these four bytes.
pub const SEGMENT_MAGIC: [u8; 4] = *b"SXWL";
pub const SEGMENT_VERSION: u8 = 1;
pub const SEGMENT_HEADER_BYTES: usize = 16;
pub const PAGE_BYTES: usize = 32 * 1024;
pub const FRAGMENT_HEADER_BYTES: usize = 7;

pub const FRAGMENT_PADDING: u8 = 0;
pub const FRAGMENT_FULL: u8 = 1;
pub const FRAGMENT_FIRST: u8 = 2;
pub const FRAGMENT_MIDDLE: u8 = 3;
pub const FRAGMENT_LAST: u8 = 4;

const _: () = assert!(PAGE_BYTES <= u16::MAX as usize + FRAGMENT_HEADER_BYTES);
const _: () = assert!(SEGMENT_HEADER_BYTES + FRAGMENT_HEADER_BYTES < PAGE_BYTES);

/// The 16-byte segment header.
pub fn segment_header(index: u32) -> [u8; SEGMENT_HEADER_BYTES] {
    let mut header = [0u8; SEGMENT_HEADER_BYTES];
    header[0..4].copy_from_slice(&SEGMENT_MAGIC);
    header[4] = SEGMENT_VERSION;
    header[8..12].copy_from_slice(&index.to_le_bytes());
    let crc = crc32fast::hash(&header[0..12]);
    header[12..16].copy_from_slice(&crc.to_le_bytes());
    header
}

/// What a segment header says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeaderCheck {
    Valid { index: u32 },
    /// Fewer than 16 bytes: a segment whose header never reached the disk.
    Short,
    /// Magic or crc wrong: the header bytes are damaged.
    Damaged,
    /// Intact but a version this code does not know.
    UnknownVersion(u8),
}

pub fn check_header(bytes: &[u8]) -> HeaderCheck {
    if bytes.len() < SEGMENT_HEADER_BYTES {
        return HeaderCheck::Short;
    }
    let crc = u32::from_le_bytes([bytes[12], bytes[13], bytes[14], bytes[15]]);
    if bytes[0..4] != SEGMENT_MAGIC || crc != crc32fast::hash(&bytes[0..12]) {
        return HeaderCheck::Damaged;
    }
    if bytes[4] != SEGMENT_VERSION {
        return HeaderCheck::UnknownVersion(bytes[4]);
    }
    HeaderCheck::Valid { index: u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) }
}

fn fragment_crc(kind: u8, len: u16, data: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&[kind]);
    hasher.update(&len.to_le_bytes());
    hasher.update(data);
    hasher.finalize()
}

fn page_left(offset: u64) -> usize {
    PAGE_BYTES - (offset % PAGE_BYTES as u64) as usize
}

/// Bytes that framing `payload_bytes` at file offset `offset` takes (padding included).
pub fn framed_len(offset: u64, payload_bytes: usize) -> u64 {
    assert!(payload_bytes > 0, "payloads are never empty");
    let start = offset;
    let mut offset = offset;
    let mut rest = payload_bytes;
    while rest > 0 {
        let left = page_left(offset);
        if left <= FRAGMENT_HEADER_BYTES {
            offset += left as u64;
            continue;
        }
        let n = rest.min(left - FRAGMENT_HEADER_BYTES);
        offset += (FRAGMENT_HEADER_BYTES + n) as u64;
        rest -= n;
    }
    offset - start
}

/// The largest payload a fresh segment of `segment_bytes` holds (records never span segments).
pub fn payload_bytes_max(segment_bytes: u64) -> usize {
    let pages = (segment_bytes / PAGE_BYTES as u64) as usize;
    assert!(pages >= 1);
    (PAGE_BYTES - SEGMENT_HEADER_BYTES - FRAGMENT_HEADER_BYTES) + (pages - 1) * (PAGE_BYTES - FRAGMENT_HEADER_BYTES)
}

/// Appends the fragments of `payload`, framed at file offset `offset`, to `out`; returns the
/// offset after them.
pub fn frame_record(offset: u64, payload: &[u8], out: &mut Vec<u8>) -> u64 {
    assert!(!payload.is_empty(), "payloads are never empty");
    let mut offset = offset;
    let mut rest = payload;
    let mut first = true;
    while !rest.is_empty() {
        let left = page_left(offset);
        if left <= FRAGMENT_HEADER_BYTES {
            out.resize(out.len() + left, 0);
            offset += left as u64;
            continue;
        }
        let n = rest.len().min(left - FRAGMENT_HEADER_BYTES);
        let last = n == rest.len();
        let kind = match (first, last) {
            (true, true) => FRAGMENT_FULL,
            (true, false) => FRAGMENT_FIRST,
            (false, false) => FRAGMENT_MIDDLE,
            (false, true) => FRAGMENT_LAST,
        };
        let len = n as u16;
        let data = &rest[..n];
        out.push(kind);
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&fragment_crc(kind, len, data).to_le_bytes());
        out.extend_from_slice(data);
        offset += (FRAGMENT_HEADER_BYTES + n) as u64;
        rest = &rest[n..];
        first = false;
    }
    offset
}

/// A complete record found by [`SegmentScan`]: its payload and where its first fragment starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScannedRecord {
    pub offset: u64,
    pub payload: Vec<u8>,
}

/// A byte range of a segment that held no readable record (damaged fragments, orphan
/// fragments of a record whose other part was damaged, non-zero bytes in padding).
pub type DamagedRange = Range<u64>;

/// Walks the fragments of one segment's bytes, yielding complete records and collecting damaged
/// ranges. On damage it resynchronises at the next page boundary, so a damaged page costs only
/// the records that touch it.
#[derive(Debug)]
pub struct SegmentScan {
    bytes: Vec<u8>,
    offset: usize,
    /// Payload being assembled from FIRST/MIDDLE fragments, with its start offset.
    partial: Option<(usize, Vec<u8>)>,
    /// End of the last complete record (or of the header): where a torn tail is cut.
    pub good_end: u64,
    damaged: Vec<DamagedRange>,
    /// Start of the damage being skipped, until a good fragment ends it.
    damage_start: Option<usize>,
    /// Number of records known lost (partial records dropped at damage); a lower bound.
    pub records_dropped: u64,
}

impl SegmentScan {
    /// Starts scanning at `start` (after the header, whose validity the caller judged).
    pub fn new(bytes: Vec<u8>, start: usize) -> Self {
        let start = start.min(bytes.len());
        SegmentScan {
            bytes,
            offset: start,
            partial: None,
            good_end: start as u64,
            damaged: Vec::new(),
            damage_start: None,
            records_dropped: 0,
        }
    }

    pub fn len(&self) -> u64 {
        self.bytes.len() as u64
    }

    /// The scanned bytes, for a caller that scans them again.
    pub fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    fn mark_damage(&mut self, at: usize) {
        if self.damage_start.is_none() {
            self.damage_start = Some(self.partial.as_ref().map_or(at, |(start, _)| *start).min(at));
        }
        if self.partial.take().is_some() {
            self.records_dropped += 1;
        }
    }

    fn end_damage(&mut self, at: usize) {
        if let Some(start) = self.damage_start.take() {
            self.damaged.push(start as u64..at as u64);
        }
    }

    fn next_page(offset: usize) -> usize {
        (offset / PAGE_BYTES + 1) * PAGE_BYTES
    }

    /// The next complete record, or `None` at the end of the bytes.
    pub fn next_record(&mut self) -> Option<ScannedRecord> {
        let len = self.bytes.len();
        while self.offset < len {
            let offset = self.offset;
            let page_end_full = Self::next_page(offset);
            let page_end = page_end_full.min(len);
            let left = page_end_full - offset;
            let kind = self.bytes[offset];
            if left <= FRAGMENT_HEADER_BYTES || kind == FRAGMENT_PADDING {
                // Padding: must be zeros up to the page end.
                if self.bytes[offset..page_end].iter().any(|b| *b != 0) {
                    self.mark_damage(offset);
                }
                self.offset = page_end;
                continue;
            }
            if offset + FRAGMENT_HEADER_BYTES > len || kind > FRAGMENT_LAST {
                self.mark_damage(offset);
                self.offset = page_end;
                continue;
            }
            let data_len = u16::from_le_bytes([self.bytes[offset + 1], self.bytes[offset + 2]]) as usize;
            let data_start = offset + FRAGMENT_HEADER_BYTES;
            let data_end = data_start + data_len;
            if data_len == 0 || data_end > page_end {
                self.mark_damage(offset);
                self.offset = page_end;
                continue;
            }
            let crc = u32::from_le_bytes([
                self.bytes[offset + 3],
                self.bytes[offset + 4],
                self.bytes[offset + 5],
                self.bytes[offset + 6],
            ]);
            if crc != fragment_crc(kind, data_len as u16, &self.bytes[data_start..data_end]) {
                self.mark_damage(offset);
                self.offset = page_end;
                continue;
            }
            // A fragment that checks out.
            self.offset = data_end;
            match kind {
                FRAGMENT_FULL | FRAGMENT_FIRST => {
                    if let Some((start, _)) = self.partial.take() {
                        // The previous record never got its LAST fragment: the writer never does
                        // that, so the bytes from its start to here are damaged.
                        self.records_dropped += 1;
                        if self.damage_start.is_none() {
                            self.damage_start = Some(start);
                        }
                    }
                    self.end_damage(offset);
                    let data = self.bytes[data_start..data_end].to_vec();
                    if kind == FRAGMENT_FULL {
                        self.good_end = data_end as u64;
                        return Some(ScannedRecord { offset: offset as u64, payload: data });
                    }
                    self.partial = Some((offset, data));
                }
                _ => match self.partial.as_mut() {
                    Some((start, payload)) => {
                        payload.extend_from_slice(&self.bytes[data_start..data_end]);
                        if kind == FRAGMENT_LAST {
                            let start = *start;
                            let (_, payload) = self.partial.take().expect("checked above");
                            self.good_end = data_end as u64;
                            return Some(ScannedRecord { offset: start as u64, payload });
                        }
                    }
                    None => {
                        // The tail of a record whose head was damaged: part of the damage.
                        if self.damage_start.is_none() {
                            self.damage_start = Some(offset);
                        }
                    }
                },
            }
        }
        None
    }

    /// Call after `next_record` returned `None`: the damaged ranges, with any damage or
    /// incomplete record at the end of the bytes closed at the end of the file.
    pub fn finish(&mut self) -> Vec<DamagedRange> {
        let len = self.bytes.len();
        if let Some((start, _)) = self.partial.take() {
            self.records_dropped += 1;
            if self.damage_start.is_none() {
                self.damage_start = Some(start);
            }
        }
        self.end_damage(len);
        std::mem::take(&mut self.damaged)
    }

    /// True when the bytes after the last complete record are not all zero.
    pub fn tail_has_nonzero(&self) -> bool {
        let start = (self.good_end as usize).min(self.bytes.len());
        self.bytes[start..].iter().any(|b| *b != 0)
    }
}
