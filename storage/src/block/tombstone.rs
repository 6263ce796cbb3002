//! Tombstones: deletions recorded in matcher form, applied on read, dropped by compaction.

use std::path::Path;

use serde::{Deserialize, Serialize};
use sextant_core::matcher::{MatchOp, Matcher};

use super::format::{
    check_file_header, decode_frame, encode_file_header, encode_frame, FILE_HEADER_BYTES, KIND_TOMBSTONES,
    TOMBSTONES_MAGIC,
};
use super::{BlockError, BLOCK_TOMBSTONE_COUNT_MAX, TMP_SUFFIX, TOMBSTONES_BYTES_MAX, TOMBSTONES_FILE};
use crate::fs::FileSystem;

/// Deletes the samples with `min_t <= t <= max_t` of `tenant`'s series that every matcher
/// selects. Stored in matcher form, so it also covers series a later compaction merges in from
/// this block only (it never reaches other blocks).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tombstone {
    pub tenant: String,
    pub matchers: Vec<Matcher>,
    pub min_t: i64,
    pub max_t: i64,
}

#[derive(Serialize, Deserialize)]
struct MatcherJson {
    name: String,
    op: MatchOp,
    value: String,
}

#[derive(Serialize, Deserialize)]
struct TombstoneJson {
    tenant: String,
    matchers: Vec<MatcherJson>,
    min_t: i64,
    max_t: i64,
}

fn encode(tombstones: &[Tombstone]) -> Vec<u8> {
    let json: Vec<TombstoneJson> = tombstones
        .iter()
        .map(|t| TombstoneJson {
            tenant: t.tenant.clone(),
            matchers: t
                .matchers
                .iter()
                .map(|m| MatcherJson { name: m.name.clone(), op: m.op, value: m.value.clone() })
                .collect(),
            min_t: t.min_t,
            max_t: t.max_t,
        })
        .collect();
    let json = serde_json::to_vec(&json).expect("tombstones serialize");
    let mut out = encode_file_header(TOMBSTONES_MAGIC).to_vec();
    out.extend_from_slice(&encode_frame(KIND_TOMBSTONES, &json, None));
    out
}

/// Replaces the block's `tombstones` file atomically: `tombstones.tmp`, fsync, rename, fsync
/// of the block directory.
pub(crate) async fn write_tombstones(fs: &dyn FileSystem, dir: &Path, tombstones: &[Tombstone]) -> Result<(), BlockError> {
    let bytes = encode(tombstones);
    if bytes.len() > TOMBSTONES_BYTES_MAX {
        return Err(BlockError::LimitExceeded {
            what: "bytes of a block's tombstones file",
            value: bytes.len() as u64,
            max: TOMBSTONES_BYTES_MAX as u64,
        });
    }
    let tmp = dir.join(format!("{TOMBSTONES_FILE}{TMP_SUFFIX}"));
    let path = dir.join(TOMBSTONES_FILE);
    crate::fs::replace_durably(fs, &path, &tmp, &bytes)
        .await
        .map_err(|e| BlockError::io(&e.path, e.step)(e.source))
}

/// Reads the block's tombstones; a missing file means none. A leftover `tombstones.tmp` is
/// ignored (the next write replaces it).
pub(crate) async fn read_tombstones(fs: &dyn FileSystem, dir: &Path) -> Result<Vec<Tombstone>, BlockError> {
    let path = dir.join(TOMBSTONES_FILE);
    if !fs.exists(&path).await.map_err(BlockError::io(&path, "exists"))? {
        return Ok(Vec::new());
    }
    let bytes = fs.read(&path).await.map_err(BlockError::io(&path, "read"))?;
    check_file_header(&bytes, TOMBSTONES_MAGIC, &path)?;
    let offset = FILE_HEADER_BYTES;
    let (json, len) = decode_frame(&bytes[offset..], &path, offset as u64, KIND_TOMBSTONES, TOMBSTONES_BYTES_MAX)?;
    let corrupt = |reason: String| BlockError::corrupt(&path, "tombstones", offset as u64, reason);
    if offset + len != bytes.len() {
        return Err(corrupt("trailing bytes after the tombstones section".to_string()));
    }
    let decoded: Vec<TombstoneJson> =
        serde_json::from_slice(&json).map_err(|e| corrupt(format!("invalid JSON: {e}")))?;
    if decoded.len() > BLOCK_TOMBSTONE_COUNT_MAX {
        return Err(corrupt(format!("{} tombstones, over the limit of {BLOCK_TOMBSTONE_COUNT_MAX}", decoded.len())));
    }
    let mut tombstones = Vec::with_capacity(decoded.len());
    for t in decoded {
        let mut matchers = Vec::with_capacity(t.matchers.len());
        for m in t.matchers {
            matchers.push(Matcher::new(m.op, m.name, m.value).map_err(|e| corrupt(format!("invalid matcher: {e}")))?);
        }
        if t.min_t > t.max_t {
            return Err(corrupt(format!("tombstone min_t {} is after max_t {}", t.min_t, t.max_t)));
        }
        tombstones.push(Tombstone { tenant: t.tenant, matchers, min_t: t.min_t, max_t: t.max_t });
    }
    Ok(tombstones)
}
