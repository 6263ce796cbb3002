//! Compaction, the first-write-wins merge, and the blocks directory's housekeeping.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sextant_core::labels::Labels;
use sextant_core::sample::Sample;

use super::reader::{Block, BlockSeriesRef};
use super::writer::{tmp_dir, BlockWriter};
use super::{block_dir, parse_block_name, BlockError, BlockMeta, BlockWriterConfig, CompactionMeta, TMP_SUFFIX};
use crate::fs::FileSystem;

/// Merges sample lists of one series, **oldest source first**, each strictly increasing in
/// `t`. For a timestamp held by several sources the oldest source's sample is kept ("first
/// write wins", the head's rule); equal value bits are simply one sample. The result is
/// strictly increasing.
pub fn merge_first_write_wins(sources: Vec<Vec<Sample>>) -> Vec<Sample> {
    for source in &sources {
        for pair in source.windows(2) {
            assert!(pair[0].t < pair[1].t, "merge_first_write_wins: a source is not strictly increasing");
        }
    }
    let mut sources = sources.into_iter();
    let mut merged = sources.next().unwrap_or_default();
    for newer in sources {
        if newer.is_empty() {
            continue;
        }
        let mut out = Vec::with_capacity(merged.len() + newer.len());
        let (mut i, mut j) = (0, 0);
        while i < merged.len() && j < newer.len() {
            if merged[i].t < newer[j].t {
                out.push(merged[i]);
                i += 1;
            } else if merged[i].t > newer[j].t {
                out.push(newer[j]);
                j += 1;
            } else {
                out.push(merged[i]);
                i += 1;
                j += 1;
            }
        }
        out.extend_from_slice(&merged[i..]);
        out.extend_from_slice(&newer[j..]);
        merged = out;
    }
    merged
}

/// Merges `sources` (adjacent or overlapping blocks, any order) into the new block `out_seq`:
/// series are unioned by (tenant, labels), samples merged first-write-wins with the lower seq
/// as the older source, tombstones applied and dropped. Returns `None` (and writes nothing)
/// when no sample survives. The caller deletes the sources afterwards with [`delete_block`];
/// until then a reader that sees both finds the same answers (the new block holds exactly the
/// merge), and [`superseded_blocks`] names the sources after a crash.
///
/// `out_seq` must be above every source's seq, and the caller must compact together every
/// block that overlaps the sources in time (as [`plan_compaction`] does), so that "lower seq is
/// older" keeps meaning what it meant.
pub async fn compact(
    fs: Arc<dyn FileSystem>,
    blocks_dir: &Path,
    sources: &[&Block],
    out_seq: u64,
    config: &BlockWriterConfig,
) -> Result<Option<BlockMeta>, BlockError> {
    assert!(!sources.is_empty(), "compact: no sources");
    let mut sources: Vec<&Block> = sources.to_vec();
    sources.sort_by_key(|b| b.meta().seq);
    for pair in sources.windows(2) {
        assert!(pair[0].meta().seq < pair[1].meta().seq, "compact: the same block twice");
    }
    // The output stands in for its sources in the seq order: it must be newer than all of them.
    assert!(sources.iter().all(|b| b.meta().seq < out_seq), "compact: out_seq must be above every source seq");

    // Series of all sources by identity, each with its refs oldest source first.
    let mut series: BTreeMap<(&str, &Labels), Vec<(usize, BlockSeriesRef)>> = BTreeMap::new();
    for (source_index, block) in sources.iter().enumerate() {
        for r in block.all_series() {
            series.entry((block.series_tenant(r), block.series_labels(r))).or_default().push((source_index, r));
        }
    }
    let compaction = CompactionMeta {
        level: 1 + sources.iter().map(|b| b.meta().compaction.level).max().expect("not empty"),
        sources: sources
            .iter()
            .flat_map(|b| b.meta().compaction.sources.iter().copied())
            .collect::<BTreeSet<u64>>()
            .into_iter()
            .collect(),
        parents: sources.iter().map(|b| b.meta().seq).collect(),
    };

    let mut writer = BlockWriter::create(&*fs, blocks_dir, out_seq, config).await?;
    let result = async {
        for ((tenant, labels), refs) in &series {
            let mut lists = Vec::with_capacity(refs.len());
            for (source_index, r) in refs {
                lists.push(sources[*source_index].samples(*r, i64::MIN, i64::MAX).await?);
            }
            let merged = merge_first_write_wins(lists);
            if !merged.is_empty() {
                writer.add_series(tenant, labels, &merged).await?;
            }
        }
        writer.finish(compaction).await
    }
    .await;
    match result {
        Ok(meta) => Ok(Some(meta)),
        Err(error) => {
            let _ = fs.remove_dir_all(&tmp_dir(blocks_dir, out_seq)).await;
            match error {
                BlockError::Empty { .. } => Ok(None),
                error => Err(error),
            }
        }
    }
}

/// Suffix of a block's deletion marker, `<seq>.deleting`.
pub const DELETING_SUFFIX: &str = ".deleting";

fn deleting_marker(blocks_dir: &Path, seq: u64) -> PathBuf {
    blocks_dir.join(format!("{seq:016x}{DELETING_SUFFIX}"))
}

/// Deletes block `seq`. First a durable marker `<seq>.deleting` (created, then the blocks
/// directory fsynced), then the directory is removed and the blocks directory fsynced, then the
/// marker is removed. A crash part-way leaves the marker, so a half-removed directory is never
/// taken for a block: [`list_blocks`] skips marked blocks and [`cleanup_tmp`] finishes the job.
///
/// Why a durable step before the removal at all: `remove_dir_all` is not atomic. Linux unlinks
/// the files one by one, so a process death part-way leaves some of them, and after a power cut
/// the journal may have committed some of the unlinks but not the directory's own removal. The
/// marker makes "this is no longer a block" durable in one step before any file goes. Renaming
/// the directory to `<seq>.tmp` and fsyncing the blocks directory would do the same with fewer
/// fsyncs (SimFs now models directory renames faithfully); the marker is kept because it is
/// correct and is the documented on-disk layout (docs/design/storage-format.md § Block).
pub async fn delete_block(fs: &dyn FileSystem, blocks_dir: &Path, seq: u64) -> Result<(), BlockError> {
    let marker = deleting_marker(blocks_dir, seq);
    let mut file = fs.create(&marker).await.map_err(BlockError::io(&marker, "create"))?;
    file.sync().await.map_err(BlockError::io(&marker, "fsync"))?;
    drop(file);
    fs.sync_dir(blocks_dir).await.map_err(BlockError::io(blocks_dir, "fsync directory"))?;
    finish_delete(fs, blocks_dir, seq).await
}

/// Removes block `seq`'s directory (if still there) and then its deletion marker.
async fn finish_delete(fs: &dyn FileSystem, blocks_dir: &Path, seq: u64) -> Result<(), BlockError> {
    let dir = block_dir(blocks_dir, seq);
    let marker = deleting_marker(blocks_dir, seq);
    if fs.exists(&dir).await.map_err(BlockError::io(&dir, "exists"))? {
        fs.remove_dir_all(&dir).await.map_err(BlockError::io(&dir, "remove_dir_all"))?;
        fs.sync_dir(blocks_dir).await.map_err(BlockError::io(blocks_dir, "fsync directory"))?;
    }
    fs.remove_file(&marker).await.map_err(BlockError::io(&marker, "remove_file"))?;
    fs.sync_dir(blocks_dir).await.map_err(BlockError::io(blocks_dir, "fsync directory"))?;
    Ok(())
}

/// Block directories (16 hex digits) under `blocks_dir`, oldest (lowest seq) first, without
/// blocks marked for deletion.
pub async fn list_blocks(fs: &dyn FileSystem, blocks_dir: &Path) -> Result<Vec<PathBuf>, BlockError> {
    let names = fs.read_dir(blocks_dir).await.map_err(BlockError::io(blocks_dir, "read_dir"))?;
    let mut blocks = Vec::new();
    for name in &names {
        if let Some(seq) = parse_block_name(name) {
            if names.binary_search(&format!("{name}{DELETING_SUFFIX}")).is_ok() {
                continue;
            }
            let path = blocks_dir.join(name);
            if fs.is_dir(&path).await.map_err(BlockError::io(&path, "stat"))? {
                blocks.push((seq, path));
            }
        }
    }
    blocks.sort();
    Ok(blocks.into_iter().map(|(_, path)| path).collect())
}

/// Finishes interrupted deletions (`<seq>.deleting` markers) and removes leftover `*.tmp`
/// entries of `blocks_dir` (blocks being written when the process stopped), then fsyncs the
/// directory. Returns how many entries were removed.
pub async fn cleanup_tmp(fs: &dyn FileSystem, blocks_dir: &Path) -> Result<usize, BlockError> {
    let names = fs.read_dir(blocks_dir).await.map_err(BlockError::io(blocks_dir, "read_dir"))?;
    let mut removed = 0;
    for name in &names {
        if let Some(seq) = name.strip_suffix(DELETING_SUFFIX).and_then(parse_block_name) {
            finish_delete(fs, blocks_dir, seq).await?;
            removed += 1;
        }
    }
    for name in names.iter().filter(|n| n.ends_with(TMP_SUFFIX)) {
        let path = blocks_dir.join(name);
        if fs.is_dir(&path).await.map_err(BlockError::io(&path, "stat"))? {
            fs.remove_dir_all(&path).await.map_err(BlockError::io(&path, "remove_dir_all"))?;
        } else {
            fs.remove_file(&path).await.map_err(BlockError::io(&path, "remove_file"))?;
        }
        removed += 1;
    }
    if removed > 0 {
        fs.sync_dir(blocks_dir).await.map_err(BlockError::io(blocks_dir, "fsync directory"))?;
    }
    Ok(removed)
}

/// Seqs of blocks whose data a higher-level block already holds (the sources of a compaction
/// that a crash stopped before [`delete_block`]): delete them. Sorted.
pub fn superseded_blocks(metas: &[BlockMeta]) -> Vec<u64> {
    let mut out: Vec<u64> = metas
        .iter()
        .filter(|x| {
            metas.iter().any(|y| {
                y.seq != x.seq
                    && y.compaction.level > x.compaction.level
                    && x.compaction.sources.iter().all(|s| y.compaction.sources.binary_search(s).is_ok())
            })
        })
        .map(|m| m.seq)
        .collect();
    out.sort_unstable();
    out
}

/// Picks the next blocks to compact, by seq, or `None`.
///
/// First, blocks that overlap in time (transitively; the group with the lowest `min_t`) — so
/// an overlap group is always merged whole. Otherwise, for each span in `ranges_ms` (ascending,
/// e.g. 6 h then 24 h), blocks lying entirely inside one aligned window `[k·span, (k+1)·span)`
/// when the window holds two or more of them and is not the window of the newest data (which
/// may still grow).
pub fn plan_compaction(metas: &[BlockMeta], ranges_ms: &[i64]) -> Option<Vec<u64>> {
    let mut sorted: Vec<&BlockMeta> = metas.iter().collect();
    sorted.sort_by_key(|m| (m.min_t, m.seq));
    let mut group: Vec<u64> = Vec::new();
    let mut group_max_t = i64::MIN;
    for meta in &sorted {
        if !group.is_empty() && meta.min_t > group_max_t {
            if group.len() >= 2 {
                break;
            }
            group.clear();
        }
        group.push(meta.seq);
        group_max_t = group_max_t.max(meta.max_t);
    }
    if group.len() >= 2 {
        group.sort_unstable();
        return Some(group);
    }
    let newest_t = metas.iter().map(|m| m.max_t).max()?;
    for &span in ranges_ms {
        assert!(span > 0);
        let mut windows: BTreeMap<i64, Vec<u64>> = BTreeMap::new();
        for meta in &sorted {
            let window = meta.min_t.div_euclid(span);
            if meta.max_t.div_euclid(span) == window && newest_t.div_euclid(span) != window {
                windows.entry(window).or_default().push(meta.seq);
            }
        }
        if let Some(mut seqs) = windows.into_values().find(|seqs| seqs.len() >= 2) {
            seqs.sort_unstable();
            return Some(seqs);
        }
    }
    None
}
