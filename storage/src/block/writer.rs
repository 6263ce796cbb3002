//! Writing a block: chunks streamed into `<seq>.tmp/chunks`, then `index` and `meta`, fsyncs,
//! rename (see the module documentation for the fsync list).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use sextant_core::chunk::{ChunkEncoder, CHUNK_SAMPLES_MAX};
use sextant_core::labels::Labels;
use sextant_core::sample::Sample;

use super::format::{
    encode_file_header, encode_frame, CHUNKS_MAGIC, FORMAT_VERSION, KIND_CHUNK_GROUP, KIND_META, META_MAGIC,
};
use super::index::{encode_index, ChunkMeta, IndexSeries};
use super::{
    block_dir, BlockError, BlockMeta, BlockSeriesData, BlockWriterConfig, CompactionMeta, FilesMeta,
    BLOCK_SERIES_COUNT_MAX, CHUNKS_FILE, CHUNK_GROUP_RAW_BYTES_MAX, INDEX_FILE, META_FILE, SERIES_CHUNK_COUNT_MAX,
    SERIES_LABEL_COUNT_MAX, SYMBOL_BYTES_MAX, TENANT_LABEL, TMP_SUFFIX,
};
use crate::fs::{FileSystem, WritableFile};

/// Writes `series` (any order) as block `seq` under `blocks_dir`. Series must be unique by
/// (tenant, labels); each needs at least one sample, strictly increasing in time.
pub async fn write_block(
    fs: &dyn FileSystem,
    blocks_dir: &Path,
    seq: u64,
    mut series: Vec<BlockSeriesData>,
    config: &BlockWriterConfig,
) -> Result<BlockMeta, BlockError> {
    series.sort_by(|a, b| (&a.tenant, &a.labels).cmp(&(&b.tenant, &b.labels)));
    let compaction = CompactionMeta { level: 0, sources: vec![seq], parents: Vec::new() };
    let mut writer = BlockWriter::create(fs, blocks_dir, seq, config).await?;
    let result = async {
        for s in &series {
            writer.add_series(&s.tenant, &s.labels, &s.samples).await?;
        }
        writer.finish(compaction).await
    }
    .await;
    if result.is_err() {
        // Best effort: a crash would leave the same directory for cleanup_tmp.
        let _ = fs.remove_dir_all(&tmp_dir(blocks_dir, seq)).await;
    }
    result
}

pub(crate) fn tmp_dir(blocks_dir: &Path, seq: u64) -> PathBuf {
    blocks_dir.join(format!("{seq:016x}{TMP_SUFFIX}"))
}

/// A block being written: series arrive in strictly increasing (tenant, labels) order.
pub(crate) struct BlockWriter<'a> {
    fs: &'a dyn FileSystem,
    blocks_dir: PathBuf,
    tmp_dir: PathBuf,
    seq: u64,
    config: BlockWriterConfig,
    chunks_path: PathBuf,
    chunks_file: Box<dyn WritableFile>,
    chunks_bytes: u64,
    group: Vec<u8>,
    series: Vec<IndexSeries>,
    min_t: i64,
    max_t: i64,
    sample_count: u64,
    chunk_count: u64,
}

impl<'a> BlockWriter<'a> {
    pub(crate) async fn create(
        fs: &'a dyn FileSystem,
        blocks_dir: &Path,
        seq: u64,
        config: &BlockWriterConfig,
    ) -> Result<BlockWriter<'a>, BlockError> {
        assert!(config.chunk_samples_target > 0);
        assert!(config.chunk_samples_target <= CHUNK_SAMPLES_MAX);
        assert!(config.chunk_group_bytes_target <= CHUNK_GROUP_RAW_BYTES_MAX / 2);
        let final_dir = block_dir(blocks_dir, seq);
        if fs.exists(&final_dir).await.map_err(BlockError::io(&final_dir, "exists"))? {
            return Err(BlockError::AlreadyExists { dir: final_dir });
        }
        let tmp_dir = tmp_dir(blocks_dir, seq);
        if fs.exists(&tmp_dir).await.map_err(BlockError::io(&tmp_dir, "exists"))? {
            fs.remove_dir_all(&tmp_dir).await.map_err(BlockError::io(&tmp_dir, "remove_dir_all"))?;
        }
        fs.create_dir_all(&tmp_dir).await.map_err(BlockError::io(&tmp_dir, "create_dir_all"))?;
        let chunks_path = tmp_dir.join(CHUNKS_FILE);
        let mut chunks_file = fs.create(&chunks_path).await.map_err(BlockError::io(&chunks_path, "create"))?;
        let header = encode_file_header(CHUNKS_MAGIC);
        chunks_file.write_all(&header).await.map_err(BlockError::io(&chunks_path, "write"))?;
        Ok(BlockWriter {
            fs,
            blocks_dir: blocks_dir.to_path_buf(),
            tmp_dir,
            seq,
            config: config.clone(),
            chunks_path,
            chunks_file,
            chunks_bytes: header.len() as u64,
            group: Vec::new(),
            series: Vec::new(),
            min_t: i64::MAX,
            max_t: i64::MIN,
            sample_count: 0,
            chunk_count: 0,
        })
    }

    fn invalid(&self, reason: String) -> BlockError {
        BlockError::InvalidInput { seq: self.seq, reason }
    }

    fn check_series(&self, tenant: &str, labels: &Labels, samples: &[Sample]) -> Result<(), BlockError> {
        if let Some(previous) = self.series.last() {
            if (&*previous.tenant, &previous.labels) >= (tenant, labels) {
                return Err(self.invalid(format!(
                    "series {tenant:?} {labels} is a duplicate or out of (tenant, labels) order"
                )));
            }
        }
        if self.series.len() >= BLOCK_SERIES_COUNT_MAX {
            return Err(BlockError::LimitExceeded {
                what: "series in one block",
                value: self.series.len() as u64 + 1,
                max: BLOCK_SERIES_COUNT_MAX as u64,
            });
        }
        if labels.len() > SERIES_LABEL_COUNT_MAX {
            return Err(BlockError::LimitExceeded {
                what: "labels of one series",
                value: labels.len() as u64,
                max: SERIES_LABEL_COUNT_MAX as u64,
            });
        }
        let too_long = std::iter::once(tenant)
            .chain(labels.iter().flat_map(|l| [l.name.as_str(), l.value.as_str()]))
            .find(|s| s.len() > SYMBOL_BYTES_MAX);
        if let Some(s) = too_long {
            return Err(BlockError::LimitExceeded {
                what: "bytes of a tenant, label name or label value",
                value: s.len() as u64,
                max: SYMBOL_BYTES_MAX as u64,
            });
        }
        for label in labels.iter() {
            if label.name.is_empty() || label.name == TENANT_LABEL || label.value.is_empty() {
                return Err(self.invalid(format!("series {tenant:?} {labels} has the invalid label {:?}={:?}", label.name, label.value)));
            }
        }
        if samples.is_empty() {
            return Err(self.invalid(format!("series {tenant:?} {labels} has no samples")));
        }
        if let Some(pair) = samples.windows(2).find(|p| p[0].t >= p[1].t) {
            return Err(self.invalid(format!(
                "series {tenant:?} {labels}: timestamp {} is not after {}",
                pair[1].t, pair[0].t
            )));
        }
        let chunk_count = samples.len().div_ceil(self.config.chunk_samples_target);
        if chunk_count > SERIES_CHUNK_COUNT_MAX {
            return Err(BlockError::LimitExceeded {
                what: "chunks of one series",
                value: chunk_count as u64,
                max: SERIES_CHUNK_COUNT_MAX as u64,
            });
        }
        Ok(())
    }

    pub(crate) async fn add_series(&mut self, tenant: &str, labels: &Labels, samples: &[Sample]) -> Result<(), BlockError> {
        self.check_series(tenant, labels, samples)?;
        let mut chunks = Vec::with_capacity(samples.len().div_ceil(self.config.chunk_samples_target));
        for part in samples.chunks(self.config.chunk_samples_target) {
            let mut encoder = ChunkEncoder::new();
            for sample in part {
                encoder.append(sample.t, sample.v).expect("samples checked strictly increasing, chunk under the limit");
            }
            let bytes = encoder.into_bytes();
            if !self.group.is_empty() && self.group.len() + bytes.len() > self.config.chunk_group_bytes_target {
                self.flush_group().await?;
            }
            chunks.push(ChunkMeta {
                min_t: part[0].t,
                max_t: part[part.len() - 1].t,
                samples: part.len() as u32,
                group_offset: self.chunks_bytes,
                offset_in_group: self.group.len() as u32,
                len: bytes.len() as u32,
            });
            self.group.extend_from_slice(&bytes);
            assert!(self.group.len() <= CHUNK_GROUP_RAW_BYTES_MAX);
        }
        self.min_t = self.min_t.min(samples[0].t);
        self.max_t = self.max_t.max(samples[samples.len() - 1].t);
        self.sample_count += samples.len() as u64;
        self.chunk_count += chunks.len() as u64;
        let tenant: Arc<str> = match self.series.last() {
            Some(previous) if &*previous.tenant == tenant => previous.tenant.clone(),
            _ => Arc::from(tenant),
        };
        self.series.push(IndexSeries { tenant, labels: labels.clone(), chunks });
        Ok(())
    }

    async fn flush_group(&mut self) -> Result<(), BlockError> {
        if self.group.is_empty() {
            return Ok(());
        }
        let frame = encode_frame(KIND_CHUNK_GROUP, &self.group, self.config.zstd_level);
        self.chunks_file.write_all(&frame).await.map_err(BlockError::io(&self.chunks_path, "write"))?;
        self.chunks_bytes += frame.len() as u64;
        self.group.clear();
        Ok(())
    }

    /// Writes the index and meta, makes everything durable and renames the block into place.
    pub(crate) async fn finish(mut self, compaction: CompactionMeta) -> Result<BlockMeta, BlockError> {
        if self.series.is_empty() {
            return Err(BlockError::Empty { seq: self.seq });
        }
        self.flush_group().await?;
        self.chunks_file.sync().await.map_err(BlockError::io(&self.chunks_path, "fsync"))?;
        assert!(self.chunks_file.len() == self.chunks_bytes);

        let index = encode_index(&self.series, self.config.zstd_level);
        let index_path = self.tmp_dir.join(INDEX_FILE);
        write_file(self.fs, &index_path, &index).await?;

        let meta = BlockMeta {
            format_version: u32::from(FORMAT_VERSION),
            seq: self.seq,
            min_t: self.min_t,
            max_t: self.max_t,
            series_count: self.series.len() as u64,
            sample_count: self.sample_count,
            chunk_count: self.chunk_count,
            compaction,
            files: FilesMeta { index_bytes: index.len() as u64, chunks_bytes: self.chunks_bytes },
        };
        let meta_path = self.tmp_dir.join(META_FILE);
        write_file(self.fs, &meta_path, &encode_meta(&meta)).await?;

        let fs = self.fs;
        fs.sync_dir(&self.tmp_dir).await.map_err(BlockError::io(&self.tmp_dir, "fsync directory"))?;
        let final_dir = block_dir(&self.blocks_dir, self.seq);
        fs.rename(&self.tmp_dir, &final_dir).await.map_err(BlockError::io(&final_dir, "rename"))?;
        // The rename is durable only once the blocks directory is: the WAL is truncated past
        // this block's samples right after this returns.
        if !sextant_core::determinism::planted::is_planted(sextant_core::determinism::planted::Bug::BlockDirFsyncSkipped) {
            fs.sync_dir(&self.blocks_dir).await.map_err(BlockError::io(&self.blocks_dir, "fsync directory"))?;
        }
        Ok(meta)
    }
}

/// The whole `meta` file: header, then one frame holding the JSON.
pub(crate) fn encode_meta(meta: &BlockMeta) -> Vec<u8> {
    let json = serde_json::to_vec_pretty(meta).expect("BlockMeta serializes");
    assert!(json.len() <= super::META_BYTES_MAX);
    let mut out = encode_file_header(META_MAGIC).to_vec();
    out.extend_from_slice(&encode_frame(KIND_META, &json, None));
    out
}

/// Creates `path`, writes `bytes`, fsyncs. The directory entry is the caller's to make durable.
pub(crate) async fn write_file(fs: &dyn FileSystem, path: &Path, bytes: &[u8]) -> Result<(), BlockError> {
    let mut file = fs.create(path).await.map_err(BlockError::io(path, "create"))?;
    file.write_all(bytes).await.map_err(BlockError::io(path, "write"))?;
    file.sync().await.map_err(BlockError::io(path, "fsync"))?;
    Ok(())
}
