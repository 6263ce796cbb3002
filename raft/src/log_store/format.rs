//! Bytes of the raft log store (docs/design/raft.md § On-disk format). Pure functions, no I/O.
//!
//! ```text
//! segment header <20b> = │ magic "SXRL" <4b> │ version u8 <1b> │ zeros <3b> │ first index u64 LE <8b> │ crc32 u32 LE <4b> │
//! then WAL fragments (storage::wal::format: 32 KiB pages, │ type <1b> │ len u16 LE <2b> │ crc32 <4b> │ data │)
//! record payload       = │ index uvarint │ term uvarint │ leader node uvarint │ kind u8 <1b> │ body │
//! meta file            = │ magic "SXRM" <4b> │ version u8 <1b> │ kind u8 <1b> │ body len u16 LE <2b> │ body │ crc32 <4b> │
//! ```

use openraft::{CommittedLeaderId, EntryPayload, LeaderId};

use crate::types::{Entry, LogId, Vote};

pub const SEGMENT_MAGIC: [u8; 4] = *b"SXRL";
pub const SEGMENT_VERSION: u8 = 1;
pub const SEGMENT_HEADER_BYTES: usize = 20;

pub const META_MAGIC: [u8; 4] = *b"SXRM";
pub const META_VERSION: u8 = 1;
/// Magic, version, kind, body length.
pub const META_HEADER_BYTES: usize = 8;
pub const META_CRC_BYTES: usize = 4;

pub const META_KIND_VOTE: u8 = 1;
pub const META_KIND_COMMITTED: u8 = 2;
pub const META_KIND_PURGED: u8 = 3;

pub const ENTRY_KIND_BLANK: u8 = 0;
pub const ENTRY_KIND_NORMAL: u8 = 1;
pub const ENTRY_KIND_MEMBERSHIP: u8 = 2;

/// Three uvarints of at most 10 bytes and the kind byte.
pub const RECORD_PREFIX_BYTES_MAX: usize = 31;

const _: () =
    assert!(SEGMENT_HEADER_BYTES + storage_page::FRAGMENT_HEADER_BYTES < storage_page::PAGE_BYTES);

/// The WAL's page framing, reused for the raft log's records.
pub(crate) mod storage_page {
    pub use sextant_storage::wal::format::{
        frame_record, framed_len, SegmentScan, FRAGMENT_HEADER_BYTES, PAGE_BYTES,
    };
}

/// A decoding failure: what was wrong and where in the bytes.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{what} at byte {offset}")]
pub struct DecodeError {
    pub what: String,
    pub offset: usize,
}

fn decode_error(what: impl Into<String>, offset: usize) -> DecodeError {
    DecodeError {
        what: what.into(),
        offset,
    }
}

/// The 20-byte header of the segment whose first record has index `first_index`.
pub fn segment_header(first_index: u64) -> [u8; SEGMENT_HEADER_BYTES] {
    let mut header = [0u8; SEGMENT_HEADER_BYTES];
    header[0..4].copy_from_slice(&SEGMENT_MAGIC);
    header[4] = SEGMENT_VERSION;
    header[8..16].copy_from_slice(&first_index.to_le_bytes());
    let crc = crc32fast::hash(&header[0..16]);
    header[16..20].copy_from_slice(&crc.to_le_bytes());
    header
}

/// What a segment header says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeaderCheck {
    Valid {
        first_index: u64,
    },
    /// Fewer than 20 bytes.
    Short,
    /// Magic or crc wrong.
    Damaged,
    /// Intact, but a version this code does not read.
    UnknownVersion(u8),
}

pub fn check_segment_header(bytes: &[u8]) -> HeaderCheck {
    if bytes.len() < SEGMENT_HEADER_BYTES {
        return HeaderCheck::Short;
    }
    let crc = u32::from_le_bytes(bytes[16..20].try_into().expect("4 bytes"));
    if bytes[0..4] != SEGMENT_MAGIC || crc != crc32fast::hash(&bytes[0..16]) {
        return HeaderCheck::Damaged;
    }
    if bytes[4] != SEGMENT_VERSION {
        return HeaderCheck::UnknownVersion(bytes[4]);
    }
    HeaderCheck::Valid {
        first_index: u64::from_le_bytes(bytes[8..16].try_into().expect("8 bytes")),
    }
}

/// The file name of the segment starting at `first_index`: 20 zero-padded digits, so that
/// bytewise order (`read_dir`'s) is index order.
pub fn segment_name(first_index: u64) -> String {
    format!("{first_index:020}.seg")
}

/// The first index a segment file name stands for, or `None` if the name is not a segment's.
pub fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".seg")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

fn get_uvarint(bytes: &[u8], offset: &mut usize, field: &str) -> Result<u64, DecodeError> {
    let start = *offset;
    let mut value: u64 = 0;
    for shift in 0..10 {
        let Some(&byte) = bytes.get(*offset) else {
            return Err(decode_error(
                format!("{field}: uvarint runs past the end"),
                start,
            ));
        };
        *offset += 1;
        if shift == 9 && byte > 1 {
            return Err(decode_error(
                format!("{field}: uvarint overflows 64 bits"),
                start,
            ));
        }
        value |= u64::from(byte & 0x7f) << (7 * shift);
        if byte < 0x80 {
            return Ok(value);
        }
    }
    Err(decode_error(
        format!("{field}: uvarint longer than 10 bytes"),
        start,
    ))
}

/// The payload of one log record.
pub fn encode_entry(entry: &Entry) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    let put = sextant_storage::varint::put_uvarint;
    put(&mut out, entry.log_id.index);
    put(&mut out, entry.log_id.leader_id.term);
    put(&mut out, entry.log_id.leader_id.node_id);
    match &entry.payload {
        EntryPayload::Blank => out.push(ENTRY_KIND_BLANK),
        EntryPayload::Normal(command) => {
            out.push(ENTRY_KIND_NORMAL);
            serde_json::to_writer(&mut out, command).expect("a Command always serializes");
        }
        EntryPayload::Membership(membership) => {
            out.push(ENTRY_KIND_MEMBERSHIP);
            serde_json::to_writer(&mut out, membership).expect("a Membership always serializes");
        }
    }
    out
}

/// Decodes one record payload (whose crc the framing already checked).
pub fn decode_entry(bytes: &[u8]) -> Result<Entry, DecodeError> {
    let mut offset = 0;
    let index = get_uvarint(bytes, &mut offset, "index")?;
    let term = get_uvarint(bytes, &mut offset, "term")?;
    let node_id = get_uvarint(bytes, &mut offset, "leader node")?;
    let Some(&kind) = bytes.get(offset) else {
        return Err(decode_error("entry kind missing", offset));
    };
    offset += 1;
    let body = &bytes[offset..];
    let payload = match kind {
        ENTRY_KIND_BLANK if body.is_empty() => EntryPayload::Blank,
        ENTRY_KIND_BLANK => {
            return Err(decode_error(
                format!("blank entry with a {}-byte body", body.len()),
                offset,
            ))
        }
        ENTRY_KIND_NORMAL => EntryPayload::Normal(
            serde_json::from_slice(body)
                .map_err(|e| decode_error(format!("command body: {e}"), offset))?,
        ),
        ENTRY_KIND_MEMBERSHIP => EntryPayload::Membership(
            serde_json::from_slice(body)
                .map_err(|e| decode_error(format!("membership body: {e}"), offset))?,
        ),
        other => {
            return Err(decode_error(
                format!("unknown entry kind {other}"),
                offset - 1,
            ))
        }
    };
    Ok(Entry {
        log_id: LogId::new(CommittedLeaderId::new(term, node_id), index),
        payload,
    })
}

fn meta_file(kind: u8, body: &[u8]) -> Vec<u8> {
    assert!(body.len() <= u16::MAX as usize);
    let mut out = Vec::with_capacity(META_HEADER_BYTES + body.len() + META_CRC_BYTES);
    out.extend_from_slice(&META_MAGIC);
    out.push(META_VERSION);
    out.push(kind);
    out.extend_from_slice(&(body.len() as u16).to_le_bytes());
    out.extend_from_slice(body);
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// Checks a meta file's frame and returns its body.
fn meta_body(bytes: &[u8], kind: u8) -> Result<&[u8], DecodeError> {
    if bytes.len() < META_HEADER_BYTES + META_CRC_BYTES {
        return Err(decode_error(
            format!(
                "meta file of {} bytes is shorter than its frame",
                bytes.len()
            ),
            0,
        ));
    }
    if bytes[0..4] != META_MAGIC {
        return Err(decode_error("bad magic (expected \"SXRM\")", 0));
    }
    let body_len = u16::from_le_bytes([bytes[6], bytes[7]]) as usize;
    let total = META_HEADER_BYTES + body_len + META_CRC_BYTES;
    if bytes.len() != total {
        return Err(decode_error(
            format!("file is {} bytes, its header says {total}", bytes.len()),
            6,
        ));
    }
    let crc_at = META_HEADER_BYTES + body_len;
    let crc = u32::from_le_bytes(bytes[crc_at..total].try_into().expect("4 bytes"));
    if crc != crc32fast::hash(&bytes[..crc_at]) {
        return Err(decode_error("crc32 mismatch", crc_at));
    }
    if bytes[4] != META_VERSION {
        return Err(decode_error(format!("unknown version {}", bytes[4]), 4));
    }
    if bytes[5] != kind {
        return Err(decode_error(
            format!("kind {} where {kind} was expected", bytes[5]),
            5,
        ));
    }
    Ok(&bytes[META_HEADER_BYTES..crc_at])
}

fn u64_at(body: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(
        body[at..at + 8]
            .try_into()
            .expect("length checked by the caller"),
    )
}

fn flag_at(body: &[u8], at: usize, field: &str) -> Result<bool, DecodeError> {
    match body[at] {
        0 => Ok(false),
        1 => Ok(true),
        other => Err(decode_error(
            format!("{field} flag is {other}, not 0 or 1"),
            META_HEADER_BYTES + at,
        )),
    }
}

/// Vote body <17b>: │ term u64 LE │ node id u64 LE │ committed u8 │
pub fn encode_vote(vote: &Vote) -> Vec<u8> {
    let mut body = Vec::with_capacity(17);
    body.extend_from_slice(&vote.leader_id.term.to_le_bytes());
    body.extend_from_slice(&vote.leader_id.node_id.to_le_bytes());
    body.push(u8::from(vote.committed));
    meta_file(META_KIND_VOTE, &body)
}

pub fn decode_vote(bytes: &[u8]) -> Result<Vote, DecodeError> {
    let body = meta_body(bytes, META_KIND_VOTE)?;
    if body.len() != 17 {
        return Err(decode_error(
            format!("vote body of {} bytes, expected 17", body.len()),
            META_HEADER_BYTES,
        ));
    }
    let leader_id = LeaderId {
        term: u64_at(body, 0),
        node_id: u64_at(body, 8),
    };
    let committed = flag_at(body, 16, "committed")?;
    Ok(Vote {
        leader_id,
        committed,
    })
}

/// Log id body <25b>: │ present u8 │ term u64 LE │ leader node u64 LE │ index u64 LE │
pub fn encode_log_id(kind: u8, log_id: Option<&LogId>) -> Vec<u8> {
    let mut body = Vec::with_capacity(25);
    body.push(u8::from(log_id.is_some()));
    let (term, node, index) = log_id.map_or((0, 0, 0), |id| {
        (id.leader_id.term, id.leader_id.node_id, id.index)
    });
    body.extend_from_slice(&term.to_le_bytes());
    body.extend_from_slice(&node.to_le_bytes());
    body.extend_from_slice(&index.to_le_bytes());
    meta_file(kind, &body)
}

pub fn decode_log_id(bytes: &[u8], kind: u8) -> Result<Option<LogId>, DecodeError> {
    let body = meta_body(bytes, kind)?;
    if body.len() != 25 {
        return Err(decode_error(
            format!("log id body of {} bytes, expected 25", body.len()),
            META_HEADER_BYTES,
        ));
    }
    if !flag_at(body, 0, "present")? {
        return Ok(None);
    }
    Ok(Some(LogId::new(
        CommittedLeaderId::new(u64_at(body, 1), u64_at(body, 9)),
        u64_at(body, 17),
    )))
}
