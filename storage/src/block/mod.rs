//! Immutable on-disk blocks: the per-shard, time-bounded, compressed form of series data.
//!
//! The byte layout is specified in `docs/design/storage-format.md` § Block; this module and
//! that section change in the same commit.
//!
//! # Guarantees
//!
//! - **Atomic appearance.** A block is written into `blocks/<seq>.tmp/`; its three files
//!   (`chunks`, `index`, `meta`) are each fsynced, then the temp directory is fsynced, renamed
//!   to `blocks/<seq>/` and the blocks directory is fsynced. A directory named by 16 hex digits
//!   alone is therefore complete; after a crash at any point a reader sees either no block or
//!   the whole block. Leftover `*.tmp` directories are removed by [`cleanup_tmp`].
//! - **Everything read back is checked.** Every file starts with a magic and a version, every
//!   section carries its length and a CRC-32, and `meta` records the size of the other files.
//!   [`Block::open`] verifies the header of every file and the CRC and structure of every index
//!   section; [`Block::samples`] verifies the CRC of every chunk group it reads. Damage is a
//!   [`BlockError::Corrupt`] naming the file, section and offset — never a panic.
//! - **Tombstones are durable before [`Block::add_tombstone`] returns** (temp file, fsync,
//!   rename, directory fsync) and are applied by every read; [`compact`] drops the deleted
//!   samples physically and the output block has no tombstones.
//! - **First write wins.** When two sources hold a sample for the same series and timestamp,
//!   equal value bits make one sample; different bits resolve to the *older* source (the lower
//!   block seq, or the block over the head). [`merge_first_write_wins`] is the one
//!   implementation, used by [`compact`] and meant for the head/query merge.
//!
//! Every fsync, in order, for [`write_block`] and [`compact`]: `chunks`, `index`, `meta`,
//! directory `<seq>.tmp`, (rename) the blocks directory. For [`Block::add_tombstone`]:
//! `tombstones.tmp`, (rename) the block directory. For [`delete_block`]: the marker
//! `<seq>.deleting`, the blocks directory, (remove the block) the blocks directory, (remove the
//! marker) the blocks directory. The caller creates the blocks directory itself and makes it durable.
//!
//! # API
//!
//! - [`write_block`] takes series in any order (sorted here by tenant then labels) and writes
//!   a block named by a caller-chosen per-shard sequence number (`seq`, higher = newer).
//! - [`Block::open`] loads `meta` and the whole index into memory (symbols, series table,
//!   postings); chunk groups are read lazily through `FileSystem::read_at`.
//! - [`Block::select`] resolves matchers with postings, [`Block::samples`] reads a series'
//!   samples in an inclusive time range with tombstones applied.
//! - [`plan_compaction`] picks blocks to merge (overlap groups whole, then full aligned
//!   windows); [`compact`] merges them into a new one; the caller then deletes the sources with
//!   [`delete_block`]. After a crash between the two, [`superseded_blocks`] names the sources
//!   that a newer compacted block already contains.
//!
//! Not (yet) here: a cache of decoded chunk groups (every [`Block::samples`] call reads and
//! decodes the groups it needs), streaming compaction of very large blocks (the output's index
//! is built in memory; sample data is streamed series by series), retention.
//!
//! # Tenants
//!
//! A block holds series of many tenants, sorted by (tenant, labels). The tenant is indexed as
//! the pseudo-label [`TENANT_LABEL`] in the postings; it is never part of the [`Labels`]
//! returned to callers, and a caller's matcher on that name sees it as an absent label.

mod compact;
#[cfg(test)]
mod golden;
mod format;
mod index;
mod reader;
mod tombstone;
mod writer;

use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sextant_core::labels::Labels;
use sextant_core::sample::Sample;

pub use compact::{
    cleanup_tmp, compact, delete_block, list_blocks, merge_first_write_wins, plan_compaction, superseded_blocks,
    DELETING_SUFFIX,
};
pub use format::FORMAT_VERSION;
pub use reader::{Block, BlockSeriesRef, GroupCache};
pub use tombstone::Tombstone;
pub use writer::write_block;

/// Span of a block cut from the head (Prometheus's default). The head decides; blocks accept
/// any span.
pub const BLOCK_SPAN_MS_DEFAULT: i64 = 2 * 3_600 * 1_000;
/// Compaction windows for [`plan_compaction`]: 6 h, then 24 h.
pub const COMPACTION_RANGES_MS_DEFAULT: [i64; 2] = [6 * 3_600 * 1_000, 24 * 3_600 * 1_000];

/// The pseudo-label under which the tenant is indexed in the postings.
pub const TENANT_LABEL: &str = "__tenant__";

/// Series in one block (series references are `u32`; this keeps the in-memory index bounded).
pub const BLOCK_SERIES_COUNT_MAX: usize = 1 << 24;
/// Labels per series in a block (Sextant's ingest default is 64; blocks accept more).
pub const SERIES_LABEL_COUNT_MAX: usize = 1024;
/// Bytes of one symbol (a tenant, label name or label value).
pub const SYMBOL_BYTES_MAX: usize = 1 << 16;
/// Chunks of one series in one block.
pub const SERIES_CHUNK_COUNT_MAX: usize = 1 << 20;
/// Decoded bytes of one chunk group.
pub const CHUNK_GROUP_RAW_BYTES_MAX: usize = 8 << 20;
/// Tombstones on one block; more is refused (compact the block instead).
pub const BLOCK_TOMBSTONE_COUNT_MAX: usize = 10_000;
/// Bytes of the `meta` file's JSON.
pub const META_BYTES_MAX: usize = 1 << 20;
/// Bytes of the `tombstones` file's JSON.
pub const TOMBSTONES_BYTES_MAX: usize = 16 << 20;

/// File names inside a block directory.
pub const INDEX_FILE: &str = "index";
pub const CHUNKS_FILE: &str = "chunks";
pub const META_FILE: &str = "meta";
pub const TOMBSTONES_FILE: &str = "tombstones";
/// Suffix of directories and files being written.
pub const TMP_SUFFIX: &str = ".tmp";

/// One series handed to [`write_block`].
#[derive(Clone, Debug, PartialEq)]
pub struct BlockSeriesData {
    pub tenant: String,
    pub labels: Labels,
    /// Strictly increasing in `t`, at least one.
    pub samples: Vec<Sample>,
}

/// How a block is written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockWriterConfig {
    /// Samples per Gorilla chunk (cut points). At most `CHUNK_SAMPLES_MAX`.
    pub chunk_samples_target: usize,
    /// Chunks of consecutive series are framed together until a group holds this many bytes;
    /// the group is then zstd-compressed when that makes it smaller.
    pub chunk_group_bytes_target: usize,
    /// zstd level for index sections and chunk groups; `None` writes everything raw.
    pub zstd_level: Option<i32>,
    /// zstd level for blocks cut from the head (the engine's cuts and shutdown flush); the
    /// compactions that later merge them use `zstd_level`. Level 15 on every 2 h cut cost
    /// ~10 % of ingest CPU (profile in docs/benchmarks.md § 7) for data that compaction
    /// rewrites within hours anyway.
    pub cut_zstd_level: Option<i32>,
}

impl Default for BlockWriterConfig {
    fn default() -> Self {
        // Measured on node_exporter-shaped data (docs/benchmarks.md): 480-sample chunks, 256 KiB groups
        // and zstd level 15 with the chunk codec's jitter buckets take a 12 h, 2,525-series run from 1.45 to 0.97 bytes/sample (1.06 with
        // 16 shards). Compression runs in background cuts and compactions; reads pay one group
        // decompression (~256 KiB) per series lookup.
        BlockWriterConfig { chunk_samples_target: 480, chunk_group_bytes_target: 256 << 10, zstd_level: Some(15), cut_zstd_level: Some(3) }
    }
}

/// Where a block's data came from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompactionMeta {
    /// 0 for a block cut from the head, `1 + max(level of parents)` for a compacted one.
    pub level: u32,
    /// Seqs of the level-0 blocks whose data this block holds (itself for a level-0 block),
    /// sorted.
    pub sources: Vec<u64>,
    /// Seqs of the blocks compacted directly into this one (empty for level 0), sorted.
    pub parents: Vec<u64>,
}

/// Sizes of a block's files.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FilesMeta {
    pub index_bytes: u64,
    pub chunks_bytes: u64,
}

/// A block's `meta` (JSON inside a checksummed frame; fields in storage-format.md § Block › meta).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockMeta {
    pub format_version: u32,
    pub seq: u64,
    /// Smallest sample timestamp, inclusive.
    pub min_t: i64,
    /// Largest sample timestamp, inclusive.
    pub max_t: i64,
    pub series_count: u64,
    pub sample_count: u64,
    pub chunk_count: u64,
    pub compaction: CompactionMeta,
    pub files: FilesMeta,
}

/// Errors of the block layer. Damage read from disk is always `Corrupt` or `Io`, naming the
/// file (and for `Corrupt` the section and byte offset).
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    #[error("block file {file:?}: {op} failed: {source}")]
    Io {
        file: PathBuf,
        op: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("block file {file:?}, section {section} at offset {offset}: {reason}")]
    Corrupt { file: PathBuf, section: &'static str, offset: u64, reason: String },
    #[error("invalid input for block {seq:016x}: {reason}")]
    InvalidInput { seq: u64, reason: String },
    #[error("block directory {dir:?} already exists")]
    AlreadyExists { dir: PathBuf },
    #[error("no samples to write in block {seq:016x}")]
    Empty { seq: u64 },
    #[error("{what} is {value}, over the limit of {max}")]
    LimitExceeded { what: &'static str, value: u64, max: u64 },
}

impl BlockError {
    pub(crate) fn corrupt(file: &Path, section: &'static str, offset: u64, reason: impl Into<String>) -> Self {
        BlockError::Corrupt { file: file.to_path_buf(), section, offset, reason: reason.into() }
    }

    pub(crate) fn io(file: &Path, op: &'static str) -> impl FnOnce(io::Error) -> BlockError {
        let file = file.to_path_buf();
        move |source| BlockError::Io { file, op, source }
    }

    /// The file an I/O or corruption error is about.
    pub fn file(&self) -> Option<&Path> {
        match self {
            BlockError::Io { file, .. } | BlockError::Corrupt { file, .. } => Some(file),
            _ => None,
        }
    }
}

/// `blocks_dir/<seq as 16 hex digits>`.
pub fn block_dir(blocks_dir: &Path, seq: u64) -> PathBuf {
    blocks_dir.join(format!("{seq:016x}"))
}

/// Parses a block directory name (exactly 16 lowercase hex digits).
pub fn parse_block_name(name: &str) -> Option<u64> {
    if name.len() != 16 || !name.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        return None;
    }
    u64::from_str_radix(name, 16).ok()
}
