//! Reading a block: `meta` and the index in memory, chunk groups read on demand.

use std::collections::{BTreeMap, BTreeSet};
use std::mem::size_of;
use std::path::PathBuf;
use std::sync::Arc;

use sextant_core::chunk::ChunkIter;
use sextant_core::labels::Labels;
use sextant_core::matcher::{matches_all, MatchOp, Matcher};
use sextant_core::sample::Sample;

use super::format::{
    check_file_header, decode_frame, parse_frame_header, CHUNKS_MAGIC, FILE_HEADER_BYTES, FORMAT_VERSION,
    FRAME_HEADER_BYTES, INDEX_MAGIC, KIND_CHUNK_GROUP, KIND_META, META_MAGIC,
};
use super::index::{decode_index, ChunkMeta, Index, IndexSeries};
use super::tombstone::{read_tombstones, write_tombstones, Tombstone};
use super::{
    parse_block_name, BlockError, BlockMeta, BLOCK_TOMBSTONE_COUNT_MAX, CHUNKS_FILE, CHUNK_GROUP_RAW_BYTES_MAX,
    INDEX_FILE, META_BYTES_MAX, META_FILE, TENANT_LABEL,
};
use crate::fs::FileSystem;

/// A series of one open block (its position in the block's series table).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BlockSeriesRef(pub u32);

/// The last chunk group [`Block::samples_cached`] decompressed, keyed by (block seq, offset).
/// Use one cache per block and select: two shards' blocks may share a seq.
#[derive(Debug, Default)]
pub struct GroupCache {
    group: Option<((u64, u64), Vec<u8>)>,
    /// Groups read and decompressed through this cache (for tests and benchmarks).
    pub reads: u64,
}

/// An open block: meta, index and tombstones in memory; chunks on disk.
#[derive(Debug)]
pub struct Block {
    fs: Arc<dyn FileSystem>,
    dir: PathBuf,
    meta: BlockMeta,
    index: Index,
    tombstones: Vec<Tombstone>,
    /// [`Block::memory_bytes`] of the index, computed once at open: the index never changes
    /// and the engine re-reads the figure after every write (profile: docs/benchmarks.md § 7).
    index_memory_bytes: usize,
}

/// Reads and verifies a `meta` file.
pub(crate) async fn read_meta(fs: &dyn FileSystem, dir: &std::path::Path) -> Result<BlockMeta, BlockError> {
    let path = dir.join(META_FILE);
    let bytes = fs.read(&path).await.map_err(BlockError::io(&path, "read"))?;
    check_file_header(&bytes, META_MAGIC, &path)?;
    let offset = FILE_HEADER_BYTES;
    let (json, len) = decode_frame(&bytes[offset..], &path, offset as u64, KIND_META, META_BYTES_MAX)?;
    if offset + len != bytes.len() {
        return Err(BlockError::corrupt(&path, "meta", (offset + len) as u64, "trailing bytes after the meta section"));
    }
    let meta: BlockMeta = serde_json::from_slice(&json)
        .map_err(|e| BlockError::corrupt(&path, "meta", offset as u64, format!("invalid JSON: {e}")))?;
    if meta.format_version != u32::from(FORMAT_VERSION) {
        return Err(BlockError::corrupt(
            &path,
            "meta",
            offset as u64,
            format!("format_version {} is not {FORMAT_VERSION}", meta.format_version),
        ));
    }
    Ok(meta)
}

impl Block {
    /// Opens the block in `dir` (`<blocks_dir>/<seq>`): verifies every file's header, `meta`,
    /// the file sizes it records, and the CRC and structure of every index section.
    pub async fn open(fs: Arc<dyn FileSystem>, dir: PathBuf) -> Result<Block, BlockError> {
        let meta = read_meta(&*fs, &dir).await?;
        let meta_path = dir.join(META_FILE);
        let meta_error = |reason: String| BlockError::corrupt(&meta_path, "meta", FILE_HEADER_BYTES as u64, reason);
        let name_seq = dir.file_name().and_then(|n| n.to_str()).and_then(parse_block_name);
        if name_seq != Some(meta.seq) {
            return Err(meta_error(format!("seq {:016x} does not match the directory name {dir:?}", meta.seq)));
        }

        let index_path = dir.join(INDEX_FILE);
        let index_len = fs.file_len(&index_path).await.map_err(BlockError::io(&index_path, "stat"))?;
        if index_len != meta.files.index_bytes {
            return Err(BlockError::corrupt(
                &index_path,
                "file",
                index_len,
                format!("file is {index_len} bytes, meta says {}", meta.files.index_bytes),
            ));
        }
        let bytes = fs.read(&index_path).await.map_err(BlockError::io(&index_path, "read"))?;
        check_file_header(&bytes, INDEX_MAGIC, &index_path)?;
        let index = decode_index(&bytes, &index_path)?;

        let chunks_path = dir.join(CHUNKS_FILE);
        let chunks_len = fs.file_len(&chunks_path).await.map_err(BlockError::io(&chunks_path, "stat"))?;
        if chunks_len != meta.files.chunks_bytes {
            return Err(BlockError::corrupt(
                &chunks_path,
                "file",
                chunks_len,
                format!("file is {chunks_len} bytes, meta says {}", meta.files.chunks_bytes),
            ));
        }
        let header = fs.read_at(&chunks_path, 0, FILE_HEADER_BYTES).await.map_err(BlockError::io(&chunks_path, "read"))?;
        check_file_header(&header, CHUNKS_MAGIC, &chunks_path)?;

        let series_count = index.series.len() as u64;
        let chunk_count: u64 = index.series.iter().map(|s| s.chunks.len() as u64).sum();
        let sample_count: u64 = index.series.iter().flat_map(|s| &s.chunks).map(|c| u64::from(c.samples)).sum();
        let min_t = index.series.iter().map(|s| s.chunks[0].min_t).min();
        let max_t = index.series.iter().map(|s| s.chunks[s.chunks.len() - 1].max_t).max();
        let from_index = (series_count, chunk_count, sample_count, min_t, max_t);
        let from_meta = (meta.series_count, meta.chunk_count, meta.sample_count, Some(meta.min_t), Some(meta.max_t));
        if from_index != from_meta {
            return Err(meta_error(format!(
                "(series, chunks, samples, min_t, max_t) = {from_meta:?} but the index holds {from_index:?}"
            )));
        }
        if let Some(chunk) = index.series.iter().flat_map(|s| &s.chunks).find(|c| c.group_offset >= chunks_len) {
            return Err(BlockError::corrupt(
                &index_path,
                "series",
                0,
                format!("chunk group offset {} is past the end of the chunks file ({chunks_len} bytes)", chunk.group_offset),
            ));
        }

        let tombstones = read_tombstones(&*fs, &dir).await?;
        let index_memory_bytes = index_memory_bytes(&index);
        Ok(Block { fs, dir, meta, index, tombstones, index_memory_bytes })
    }

    pub fn meta(&self) -> &BlockMeta {
        &self.meta
    }

    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }

    pub fn tombstones(&self) -> &[Tombstone] {
        &self.tombstones
    }

    fn postings(&self, name: &str, value: &str) -> &[u32] {
        self.index.postings.get(name).and_then(|values| values.get(value)).map(Vec::as_slice).unwrap_or(&[])
    }

    /// Series of `tenant` selected by every matcher, sorted by labels.
    ///
    /// Prometheus's method: a matcher that does not match `""` selects from the postings of
    /// the values it matches (intersected); a matcher that matches `""` also selects series
    /// without the label, so the postings of the values it does *not* match are subtracted.
    /// A matcher on [`TENANT_LABEL`] sees an absent label.
    pub fn select(&self, tenant: &str, matchers: &[Matcher]) -> Vec<BlockSeriesRef> {
        let mut selected: Vec<u32> = self.postings(TENANT_LABEL, tenant).to_vec();
        for matcher in matchers {
            if selected.is_empty() {
                break;
            }
            if matcher.name == TENANT_LABEL {
                if !matcher.matches_empty() {
                    selected.clear();
                }
                continue;
            }
            let values = self.index.postings.get(&matcher.name);
            if matcher.matches_empty() {
                let excluded = match values {
                    None => Vec::new(),
                    Some(values) => union(values.iter().filter(|(v, _)| !matcher.matches_value(v)).map(|(_, ids)| ids)),
                };
                selected = difference(&selected, &excluded);
            } else {
                let included = match (matcher.op, values) {
                    (_, None) => Vec::new(),
                    (MatchOp::Equal, Some(_)) => self.postings(&matcher.name, &matcher.value).to_vec(),
                    (_, Some(values)) => union(values.iter().filter(|(v, _)| matcher.matches_value(v)).map(|(_, ids)| ids)),
                };
                selected = intersection(&selected, &included);
            }
        }
        selected.into_iter().map(BlockSeriesRef).collect()
    }

    fn series(&self, r: BlockSeriesRef) -> &IndexSeries {
        let series = self.index.series.get(r.0 as usize);
        assert!(series.is_some(), "BlockSeriesRef {} does not belong to block {:016x}", r.0, self.meta.seq);
        series.expect("checked")
    }

    pub fn series_labels(&self, r: BlockSeriesRef) -> &Labels {
        &self.series(r).labels
    }

    pub fn series_tenant(&self, r: BlockSeriesRef) -> &str {
        &self.series(r).tenant
    }

    /// The newest sample time of `r` by its chunk metadata (tombstones not applied).
    pub fn series_max_t(&self, r: BlockSeriesRef) -> i64 {
        self.series(r).chunks.iter().map(|c| c.max_t).max().unwrap_or(i64::MIN)
    }

    /// Every series of the block, in (tenant, labels) order.
    pub fn all_series(&self) -> impl Iterator<Item = BlockSeriesRef> + '_ {
        (0..self.index.series.len() as u32).map(BlockSeriesRef)
    }

    /// Whether `r` has a sample with `min_t <= t <= max_t` (tombstones applied), reading chunk
    /// data only when the chunk metadata cannot tell: a chunk lying wholly inside the range
    /// holds such a sample (chunks are never empty) unless a tombstone may have deleted it.
    /// The label endpoints use this; over their default all-time range it reads no chunk.
    pub async fn has_samples_in(&self, r: BlockSeriesRef, min_t: i64, max_t: i64) -> Result<bool, BlockError> {
        let series = self.series(r);
        let overlapping = || series.chunks.iter().filter(|c| c.max_t >= min_t && c.min_t <= max_t);
        if overlapping().next().is_none() {
            return Ok(false);
        }
        let tombstoned = self.tombstones.iter().any(|t| *t.tenant == *series.tenant && matches_all(&t.matchers, &series.labels));
        if !tombstoned && overlapping().any(|c| c.min_t >= min_t && c.max_t <= max_t) {
            return Ok(true);
        }
        Ok(!self.samples(r, min_t, max_t).await?.is_empty())
    }

    /// Samples of `r` with `min_t <= t <= max_t`, tombstones applied.
    pub async fn samples(&self, r: BlockSeriesRef, min_t: i64, max_t: i64) -> Result<Vec<Sample>, BlockError> {
        self.samples_cached(r, min_t, max_t, &mut GroupCache::default()).await
    }

    /// [`Block::samples`] that keeps the last decompressed chunk group in `cache`. Series are
    /// written in label order, so the series a select visits in order share groups (a 256 KiB
    /// group holds the chunks of ~100 series): with the cache each group is read and
    /// decompressed once per select instead of once per series. One group at most is held.
    pub async fn samples_cached(&self, r: BlockSeriesRef, min_t: i64, max_t: i64, cache: &mut GroupCache) -> Result<Vec<Sample>, BlockError> {
        let series = self.series(r);
        let deleted: Vec<(i64, i64)> = self
            .tombstones
            .iter()
            .filter(|t| *t.tenant == *series.tenant && matches_all(&t.matchers, &series.labels))
            .map(|t| (t.min_t, t.max_t))
            .collect();
        let mut out = Vec::new();
        for chunk in series.chunks.iter().filter(|c| c.max_t >= min_t && c.min_t <= max_t) {
            let key = (self.meta.seq, chunk.group_offset);
            if cache.group.as_ref().map(|(k, _)| *k) != Some(key) {
                cache.group = Some((key, self.read_group(chunk.group_offset).await?));
                cache.reads += 1;
            }
            let (_, data) = cache.group.as_ref().expect("just read");
            self.decode_chunk(chunk, data, min_t, max_t, &deleted, &mut out)?;
        }
        Ok(out)
    }

    async fn read_group(&self, offset: u64) -> Result<Vec<u8>, BlockError> {
        let path = self.dir.join(CHUNKS_FILE);
        let header = self.fs.read_at(&path, offset, FRAME_HEADER_BYTES).await.map_err(BlockError::io(&path, "read"))?;
        let frame = parse_frame_header(&header, &path, offset, KIND_CHUNK_GROUP, CHUNK_GROUP_RAW_BYTES_MAX)?;
        let bytes = self.fs.read_at(&path, offset, frame.frame_len()).await.map_err(BlockError::io(&path, "read"))?;
        let (raw, _) = decode_frame(&bytes, &path, offset, KIND_CHUNK_GROUP, CHUNK_GROUP_RAW_BYTES_MAX)?;
        Ok(raw)
    }

    fn decode_chunk(
        &self,
        chunk: &ChunkMeta,
        group: &[u8],
        min_t: i64,
        max_t: i64,
        deleted: &[(i64, i64)],
        out: &mut Vec<Sample>,
    ) -> Result<(), BlockError> {
        let path = self.dir.join(CHUNKS_FILE);
        let corrupt = |reason: String| BlockError::corrupt(&path, "chunk group", chunk.group_offset, reason);
        let start = chunk.offset_in_group as usize;
        let end = start + chunk.len as usize;
        let Some(bytes) = group.get(start..end) else {
            return Err(corrupt(format!("chunk at {start}..{end} is outside the group's {} bytes", group.len())));
        };
        let iter = ChunkIter::new(bytes).map_err(|e| corrupt(format!("chunk at {start}: {e}")))?;
        let mut count = 0u32;
        let mut first_t = None;
        let mut last_t = None;
        for item in iter {
            let (t, v) = item.map_err(|e| corrupt(format!("chunk at {start}: {e}")))?;
            count += 1;
            first_t.get_or_insert(t);
            last_t = Some(t);
            if t >= min_t && t <= max_t && !deleted.iter().any(|(a, b)| t >= *a && t <= *b) {
                out.push(Sample::new(t, v));
            }
        }
        if count != chunk.samples || first_t != Some(chunk.min_t) || last_t != Some(chunk.max_t) {
            return Err(corrupt(format!(
                "chunk at {start} holds {count} samples over {first_t:?}..{last_t:?}; the index says {} over {}..{}",
                chunk.samples, chunk.min_t, chunk.max_t
            )));
        }
        Ok(())
    }

    /// Label names used by `tenant`'s series, sorted.
    pub fn label_names(&self, tenant: &str) -> Vec<String> {
        let mut names = BTreeSet::new();
        for &id in self.postings(TENANT_LABEL, tenant) {
            for label in self.index.series[id as usize].labels.iter() {
                names.insert(label.name.as_str());
            }
        }
        names.into_iter().map(str::to_string).collect()
    }

    /// Values of label `name` among `tenant`'s series, sorted.
    pub fn label_values(&self, tenant: &str, name: &str) -> Vec<String> {
        if name == TENANT_LABEL {
            return Vec::new();
        }
        let tenant_ids = self.postings(TENANT_LABEL, tenant);
        let Some(values) = self.index.postings.get(name) else { return Vec::new() };
        values
            .iter()
            .filter(|(_, ids)| !intersection(tenant_ids, ids).is_empty())
            .map(|(v, _)| v.clone())
            .collect()
    }

    /// Adds a tombstone and makes it durable before returning (temp file, fsync, rename,
    /// directory fsync). On error the in-memory tombstones are unchanged.
    pub async fn add_tombstone(&mut self, tombstone: Tombstone) -> Result<(), BlockError> {
        if tombstone.min_t > tombstone.max_t {
            return Err(BlockError::InvalidInput {
                seq: self.meta.seq,
                reason: format!("tombstone min_t {} is after max_t {}", tombstone.min_t, tombstone.max_t),
            });
        }
        if self.tombstones.len() >= BLOCK_TOMBSTONE_COUNT_MAX {
            return Err(BlockError::LimitExceeded {
                what: "tombstones on one block",
                value: self.tombstones.len() as u64 + 1,
                max: BLOCK_TOMBSTONE_COUNT_MAX as u64,
            });
        }
        let mut tombstones = self.tombstones.clone();
        tombstones.push(tombstone);
        write_tombstones(&*self.fs, &self.dir, &tombstones).await?;
        self.tombstones = tombstones;
        Ok(())
    }

    /// An estimate of the memory the open block holds (index, tombstones), in bytes.
    pub fn memory_bytes(&self) -> usize {
        size_of::<Block>() + self.index_memory_bytes + self.tombstones.len() * 256
    }
}

fn index_memory_bytes(index: &Index) -> usize {
    let mut bytes = 0;
    for s in &index.series {
        bytes += size_of::<IndexSeries>();
        bytes += s.labels.iter().map(|l| l.name.capacity() + l.value.capacity() + size_of::<sextant_core::labels::Label>()).sum::<usize>();
        bytes += s.chunks.capacity() * size_of::<ChunkMeta>();
    }
    for (name, values) in &index.postings {
        bytes += name.capacity() + size_of::<BTreeMap<String, Vec<u32>>>();
        for (value, ids) in values {
            bytes += value.capacity() + size_of::<Vec<u32>>() + ids.capacity() * size_of::<u32>() + 2 * size_of::<usize>();
        }
    }
    bytes
}

fn union<'a>(lists: impl Iterator<Item = &'a Vec<u32>>) -> Vec<u32> {
    let mut all: Vec<u32> = lists.flatten().copied().collect();
    all.sort_unstable();
    all.dedup();
    all
}

fn intersection(a: &[u32], b: &[u32]) -> Vec<u32> {
    let mut out = Vec::new();
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        match a[i].cmp(&b[j]) {
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
            std::cmp::Ordering::Equal => {
                out.push(a[i]);
                i += 1;
                j += 1;
            }
        }
    }
    out
}

fn difference(a: &[u32], b: &[u32]) -> Vec<u32> {
    let mut out = Vec::new();
    let mut j = 0;
    for &x in a {
        while j < b.len() && b[j] < x {
            j += 1;
        }
        if j < b.len() && b[j] == x {
            continue;
        }
        out.push(x);
    }
    out
}
