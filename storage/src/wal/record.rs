//! WAL records and their payload codec (docs/design/storage-format.md § WAL, "Record payload").
//!
//! The functions here are pure: [`encode_payload`] turns a record into the bytes that the
//! framing layer ([`super::format`]) splits into fragments, [`decode_payload`] turns them back,
//! and every malformed input yields a [`DecodeError`] that names the field and the byte offset
//! within the payload. Nothing here panics on bytes read from disk.
//!
//! Layout (all integers little-endian, `uvarint` is unsigned LEB128, `str` is
//! `uvarint length | UTF-8 bytes`):
//!
//! ```text
//! │ shard u32 <4b> │ seq u64 <8b> │ kind u8 <1b> │ body (kind-specific) │
//! kind 1 Series:    │ count uvarint │ count × (series_ref u64 <8b> │ tenant str │ labels uvarint │ labels × (name str │ value str)) │
//! kind 2 Samples:   │ count uvarint │ count × (series_ref u64 <8b> │ t i64 <8b> │ v f64 bits <8b>) │
//! kind 3 Tombstone: │ tenant str │ min_t i64 <8b> │ max_t i64 <8b> │ matchers uvarint │ matchers × (op u8 <1b> │ name str │ value str) │
//! kind 255 Meta:    │ count uvarint │ count × (shard u32 <4b> │ next_seq u64 <8b>) │   (checkpoints only)
//! ```

use std::collections::BTreeMap;

use sextant_core::labels::{Label, LabelError, Labels};
use sextant_core::matcher::{MatchOp, Matcher, MatcherError};

/// A data shard. (Defined here for now; the lead may move it to core.)
pub type ShardId = u32;
/// A head-local series id within one shard.
pub type SeriesRef = u64;

/// One logged record: what `shard` did, as its `seq`-th operation (per-shard, gap-free, from 1).
#[derive(Clone, Debug, PartialEq)]
pub struct WalRecord {
    pub shard: ShardId,
    pub seq: u64,
    pub body: RecordBody,
}

#[derive(Clone, Debug, PartialEq)]
pub enum RecordBody {
    /// New series created in the head of `shard`.
    Series(Vec<SeriesEntry>),
    /// Samples for series defined by earlier Series records of the same shard.
    Samples(Vec<SampleEntry>),
    /// A deletion request: samples of `tenant` matching all matchers in [min_t, max_t] are deleted.
    Tombstone(TombstoneEntry),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SeriesEntry {
    pub series_ref: SeriesRef,
    pub tenant: String,
    pub labels: Labels,
}

/// One sample. Equality compares the value's bits (NaN payloads and -0.0 are kept exactly).
#[derive(Clone, Copy, Debug)]
pub struct SampleEntry {
    pub series_ref: SeriesRef,
    pub t: i64,
    pub v: f64,
}

impl PartialEq for SampleEntry {
    fn eq(&self, other: &Self) -> bool {
        self.series_ref == other.series_ref && self.t == other.t && self.v.to_bits() == other.v.to_bits()
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TombstoneEntry {
    pub tenant: String,
    pub matchers: Vec<Matcher>,
    pub min_t: i64,
    pub max_t: i64,
}

/// Payload kinds (one byte after shard and seq).
pub const KIND_SERIES: u8 = 1;
pub const KIND_SAMPLES: u8 = 2;
pub const KIND_TOMBSTONE: u8 = 3;
/// Next sequence number per shard; written first in every checkpoint, never in segments.
pub const KIND_META: u8 = 255;

/// Bytes before the body: shard, seq, kind.
pub const PAYLOAD_HEADER_BYTES: usize = 4 + 8 + 1;
/// Offset of the seq field in a payload (the writer patches it in under its lock).
pub const PAYLOAD_SEQ_OFFSET: usize = 4;

/// Matcher operators on disk.
pub const OP_EQUAL: u8 = 0;
pub const OP_NOT_EQUAL: u8 = 1;
pub const OP_REGEX_MATCH: u8 = 2;
pub const OP_REGEX_NO_MATCH: u8 = 3;

/// What a payload decodes to: a record, or (in checkpoints) the next sequence number per shard.
#[derive(Clone, Debug, PartialEq)]
pub enum Payload {
    Record(WalRecord),
    Meta(BTreeMap<ShardId, u64>),
}

/// Why a payload could not be decoded. `offset` is the byte offset within the payload.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum DecodeError {
    #[error("payload truncated in {field} at byte {offset}")]
    Truncated { field: &'static str, offset: usize },
    #[error("varint too long in {field} at byte {offset}")]
    VarintOverflow { field: &'static str, offset: usize },
    #[error("unknown record kind {kind} at byte {offset}")]
    UnknownKind { kind: u8, offset: usize },
    #[error("{field} at byte {offset} is not valid UTF-8")]
    InvalidUtf8 { field: &'static str, offset: usize },
    #[error("count {count} in {field} at byte {offset} exceeds the bytes left ({remaining})")]
    CountTooLarge { field: &'static str, offset: usize, count: u64, remaining: usize },
    #[error("labels of series entry at byte {offset}: {source}")]
    Labels { offset: usize, source: LabelError },
    #[error("unknown matcher operator {op} at byte {offset}")]
    UnknownMatchOp { op: u8, offset: usize },
    #[error("matcher at byte {offset}: {source}")]
    Matcher { offset: usize, source: MatcherError },
    #[error("{count} trailing bytes after the body at byte {offset}")]
    TrailingBytes { offset: usize, count: usize },
}

use crate::varint::put_uvarint;

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_uvarint(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

fn op_byte(op: MatchOp) -> u8 {
    match op {
        MatchOp::Equal => OP_EQUAL,
        MatchOp::NotEqual => OP_NOT_EQUAL,
        MatchOp::RegexMatch => OP_REGEX_MATCH,
        MatchOp::RegexNoMatch => OP_REGEX_NO_MATCH,
    }
}

/// Encodes a record's payload (the bytes the framing layer splits into fragments).
pub fn encode_payload(record: &WalRecord) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(&record.shard.to_le_bytes());
    out.extend_from_slice(&record.seq.to_le_bytes());
    encode_body(&record.body, &mut out);
    out
}

fn encode_body(body: &RecordBody, out: &mut Vec<u8>) {
    match body {
        RecordBody::Series(entries) => {
            out.push(KIND_SERIES);
            put_uvarint(out, entries.len() as u64);
            for entry in entries {
                out.extend_from_slice(&entry.series_ref.to_le_bytes());
                put_str(out, &entry.tenant);
                put_uvarint(out, entry.labels.len() as u64);
                for label in entry.labels.iter() {
                    put_str(out, &label.name);
                    put_str(out, &label.value);
                }
            }
        }
        RecordBody::Samples(entries) => {
            out.push(KIND_SAMPLES);
            put_uvarint(out, entries.len() as u64);
            out.reserve(entries.len() * 24);
            for entry in entries {
                out.extend_from_slice(&entry.series_ref.to_le_bytes());
                out.extend_from_slice(&entry.t.to_le_bytes());
                out.extend_from_slice(&entry.v.to_bits().to_le_bytes());
            }
        }
        RecordBody::Tombstone(entry) => {
            out.push(KIND_TOMBSTONE);
            put_str(out, &entry.tenant);
            out.extend_from_slice(&entry.min_t.to_le_bytes());
            out.extend_from_slice(&entry.max_t.to_le_bytes());
            put_uvarint(out, entry.matchers.len() as u64);
            for matcher in &entry.matchers {
                out.push(op_byte(matcher.op));
                put_str(out, &matcher.name);
                put_str(out, &matcher.value);
            }
        }
    }
}

/// Encodes the checkpoint meta payload (shard 0, seq 0, kind 255).
pub fn encode_meta(next_seq: &BTreeMap<ShardId, u64>) -> Vec<u8> {
    let mut out = Vec::with_capacity(PAYLOAD_HEADER_BYTES + 1 + next_seq.len() * 12);
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&0u64.to_le_bytes());
    out.push(KIND_META);
    put_uvarint(&mut out, next_seq.len() as u64);
    for (shard, seq) in next_seq {
        out.extend_from_slice(&shard.to_le_bytes());
        out.extend_from_slice(&seq.to_le_bytes());
    }
    out
}

struct Cursor<'a> {
    bytes: &'a [u8],
    offset: usize,
}

impl<'a> Cursor<'a> {
    fn remaining(&self) -> usize {
        self.bytes.len() - self.offset
    }

    fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], DecodeError> {
        if self.remaining() < n {
            return Err(DecodeError::Truncated { field, offset: self.offset });
        }
        let slice = &self.bytes[self.offset..self.offset + n];
        self.offset += n;
        Ok(slice)
    }

    fn u8(&mut self, field: &'static str) -> Result<u8, DecodeError> {
        Ok(self.take(1, field)?[0])
    }

    fn u32(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        let b = self.take(4, field)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self, field: &'static str) -> Result<u64, DecodeError> {
        let b = self.take(8, field)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }

    fn i64(&mut self, field: &'static str) -> Result<i64, DecodeError> {
        Ok(self.u64(field)? as i64)
    }

    fn uvarint(&mut self, field: &'static str) -> Result<u64, DecodeError> {
        let start = self.offset;
        let mut value = 0u64;
        for i in 0..10 {
            let byte = self.u8(field)?;
            if i == 9 && byte > 1 {
                return Err(DecodeError::VarintOverflow { field, offset: start });
            }
            value |= u64::from(byte & 0x7f) << (7 * i);
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(DecodeError::VarintOverflow { field, offset: start })
    }

    /// A count of entries each at least `entry_bytes_min` long: refuses counts the remaining
    /// bytes cannot hold, so a corrupt count never drives a huge allocation.
    fn count(&mut self, field: &'static str, entry_bytes_min: usize) -> Result<usize, DecodeError> {
        let offset = self.offset;
        let count = self.uvarint(field)?;
        let remaining = self.remaining();
        if count > (remaining / entry_bytes_min.max(1)) as u64 {
            return Err(DecodeError::CountTooLarge { field, offset, count, remaining });
        }
        Ok(count as usize)
    }

    fn string(&mut self, field: &'static str) -> Result<String, DecodeError> {
        let len_offset = self.offset;
        let len = self.uvarint(field)?;
        if len > self.remaining() as u64 {
            return Err(DecodeError::Truncated { field, offset: len_offset });
        }
        let start = self.offset;
        let bytes = self.take(len as usize, field)?;
        match std::str::from_utf8(bytes) {
            Ok(s) => Ok(s.to_string()),
            Err(_) => Err(DecodeError::InvalidUtf8 { field, offset: start }),
        }
    }
}

/// Decodes a payload. Labels go through [`Labels::from_unsorted`] and matchers through
/// [`Matcher::new`], so duplicate label names and bad regexes are typed errors.
pub fn decode_payload(bytes: &[u8]) -> Result<Payload, DecodeError> {
    let mut c = Cursor { bytes, offset: 0 };
    let shard = c.u32("shard")?;
    let seq = c.u64("seq")?;
    let kind_offset = c.offset;
    let kind = c.u8("kind")?;
    let payload = match kind {
        KIND_SERIES => {
            // series_ref + tenant len + label count.
            let count = c.count("series count", 10)?;
            let mut entries = Vec::with_capacity(count);
            for _ in 0..count {
                let series_ref = c.u64("series_ref")?;
                let tenant = c.string("tenant")?;
                let labels_offset = c.offset;
                let label_count = c.count("label count", 2)?;
                let mut labels = Vec::with_capacity(label_count);
                for _ in 0..label_count {
                    let name = c.string("label name")?;
                    let value = c.string("label value")?;
                    labels.push(Label { name, value });
                }
                let labels = Labels::from_unsorted(labels)
                    .map_err(|source| DecodeError::Labels { offset: labels_offset, source })?;
                entries.push(SeriesEntry { series_ref, tenant, labels });
            }
            Payload::Record(WalRecord { shard, seq, body: RecordBody::Series(entries) })
        }
        KIND_SAMPLES => {
            let count = c.count("sample count", 24)?;
            let mut entries = Vec::with_capacity(count);
            for _ in 0..count {
                let series_ref = c.u64("series_ref")?;
                let t = c.i64("t")?;
                let v = f64::from_bits(c.u64("v")?);
                entries.push(SampleEntry { series_ref, t, v });
            }
            Payload::Record(WalRecord { shard, seq, body: RecordBody::Samples(entries) })
        }
        KIND_TOMBSTONE => {
            let tenant = c.string("tenant")?;
            let min_t = c.i64("min_t")?;
            let max_t = c.i64("max_t")?;
            let count = c.count("matcher count", 3)?;
            let mut matchers = Vec::with_capacity(count);
            for _ in 0..count {
                let offset = c.offset;
                let op = match c.u8("matcher op")? {
                    OP_EQUAL => MatchOp::Equal,
                    OP_NOT_EQUAL => MatchOp::NotEqual,
                    OP_REGEX_MATCH => MatchOp::RegexMatch,
                    OP_REGEX_NO_MATCH => MatchOp::RegexNoMatch,
                    op => return Err(DecodeError::UnknownMatchOp { op, offset }),
                };
                let name = c.string("matcher name")?;
                let value = c.string("matcher value")?;
                let matcher = Matcher::new(op, name, value).map_err(|source| DecodeError::Matcher { offset, source })?;
                matchers.push(matcher);
            }
            Payload::Record(WalRecord { shard, seq, body: RecordBody::Tombstone(TombstoneEntry { tenant, matchers, min_t, max_t }) })
        }
        KIND_META => {
            let count = c.count("meta count", 12)?;
            let mut next_seq = BTreeMap::new();
            for _ in 0..count {
                let shard = c.u32("meta shard")?;
                let seq = c.u64("meta next_seq")?;
                next_seq.insert(shard, seq);
            }
            Payload::Meta(next_seq)
        }
        kind => return Err(DecodeError::UnknownKind { kind, offset: kind_offset }),
    };
    if c.remaining() > 0 {
        return Err(DecodeError::TrailingBytes { offset: c.offset, count: c.remaining() });
    }
    Ok(payload)
}
