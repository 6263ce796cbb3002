//! Crash atomicity of block writes, compaction (with source deletion) and tombstones.
//!
//! Method: a `DyingFs` wrapper lets the first N mutating filesystem operations through and
//! fails every later one, as if the process died there; then `SimFs::crash` cuts the power
//! (torn writes included). For N = 0, 1, 2, … until the operation completes, the recovered
//! directory must hold the old set of blocks or the new one — never part of a block — and
//! leftover temp directories must be cleaned.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use sextant_core::labels::Labels;
use sextant_core::matcher::Matcher;
use sextant_core::sample::Sample;
use sextant_storage::block::{
    cleanup_tmp, compact, delete_block, list_blocks, merge_first_write_wins, superseded_blocks, write_block, Block,
    BlockMeta, BlockSeriesData, BlockWriterConfig, Tombstone,
};
use sextant_storage::fs::sim::{CrashMode, FaultConfig, SimFs};
use sextant_storage::fs::{FileSystem, WritableFile};

const BLOCKS: &str = "shards/1/blocks";

#[derive(Debug)]
struct DyingFs {
    inner: SimFs,
    ops_left: Arc<AtomicI64>,
}

fn died() -> io::Error {
    io::Error::other("simulated process death")
}

fn tick(ops_left: &AtomicI64) -> io::Result<()> {
    if ops_left.fetch_sub(1, Ordering::SeqCst) <= 0 {
        return Err(died());
    }
    Ok(())
}

#[derive(Debug)]
struct DyingFile {
    inner: Box<dyn WritableFile>,
    ops_left: Arc<AtomicI64>,
}

#[async_trait]
impl WritableFile for DyingFile {
    async fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        tick(&self.ops_left)?;
        self.inner.write_all(buf).await
    }
    async fn sync(&mut self) -> io::Result<()> {
        tick(&self.ops_left)?;
        self.inner.sync().await
    }
    fn len(&self) -> u64 {
        self.inner.len()
    }
}

#[async_trait]
impl FileSystem for DyingFs {
    async fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        tick(&self.ops_left)?;
        self.inner.create_dir_all(path).await
    }
    async fn create(&self, path: &Path) -> io::Result<Box<dyn WritableFile>> {
        tick(&self.ops_left)?;
        let inner = self.inner.create(path).await?;
        Ok(Box::new(DyingFile { inner, ops_left: self.ops_left.clone() }))
    }
    async fn open_append(&self, path: &Path) -> io::Result<Box<dyn WritableFile>> {
        tick(&self.ops_left)?;
        let inner = self.inner.open_append(path).await?;
        Ok(Box::new(DyingFile { inner, ops_left: self.ops_left.clone() }))
    }
    async fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        self.inner.read(path).await
    }
    async fn read_at(&self, path: &Path, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        self.inner.read_at(path, offset, len).await
    }
    async fn file_len(&self, path: &Path) -> io::Result<u64> {
        self.inner.file_len(path).await
    }
    async fn truncate(&self, path: &Path, len: u64) -> io::Result<()> {
        tick(&self.ops_left)?;
        self.inner.truncate(path, len).await
    }
    async fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        tick(&self.ops_left)?;
        self.inner.rename(from, to).await
    }
    async fn remove_file(&self, path: &Path) -> io::Result<()> {
        tick(&self.ops_left)?;
        self.inner.remove_file(path).await
    }
    async fn remove_dir_all(&self, path: &Path) -> io::Result<()> {
        tick(&self.ops_left)?;
        self.inner.remove_dir_all(path).await
    }
    async fn read_dir(&self, path: &Path) -> io::Result<Vec<String>> {
        self.inner.read_dir(path).await
    }
    async fn exists(&self, path: &Path) -> io::Result<bool> {
        self.inner.exists(path).await
    }
    async fn is_dir(&self, path: &Path) -> io::Result<bool> {
        self.inner.is_dir(path).await
    }
    async fn sync_dir(&self, path: &Path) -> io::Result<()> {
        tick(&self.ops_left)?;
        self.inner.sync_dir(path).await
    }
}

fn data(seed: i64, values: f64) -> Vec<BlockSeriesData> {
    (0..6)
        .map(|i| BlockSeriesData {
            tenant: if i % 2 == 0 { "x".into() } else { "y".into() },
            labels: Labels::from_pairs(&[("__name__", "m"), ("i", &i.to_string())]),
            samples: (0..250).map(|k| Sample::new(seed + k * 10, values + k as f64)).collect(),
        })
        .collect()
}

fn config() -> BlockWriterConfig {
    BlockWriterConfig { chunk_group_bytes_target: 512, ..BlockWriterConfig::default() }
}

async fn new_disk(seed: u64) -> SimFs {
    let sim = SimFs::new(seed);
    sim.set_faults(FaultConfig { crash_mode: CrashMode::Torn, ..FaultConfig::default() });
    sim.create_dir_all(Path::new(BLOCKS)).await.unwrap();
    for dir in ["", "shards", "shards/1", BLOCKS] {
        sim.sync_dir(Path::new(dir)).await.unwrap();
    }
    sim
}

/// What a node does at start-up: drop temp directories and superseded compaction sources,
/// then open every block. Returns the seqs of the visible blocks, opened.
async fn recover(sim: &SimFs) -> Vec<Block> {
    let fs: Arc<dyn FileSystem> = Arc::new(sim.clone());
    let blocks_dir = Path::new(BLOCKS);
    cleanup_tmp(&*fs, blocks_dir).await.unwrap();
    let mut blocks = Vec::new();
    for dir in list_blocks(&*fs, blocks_dir).await.unwrap() {
        blocks.push(Block::open(fs.clone(), dir.clone()).await.unwrap_or_else(|e| panic!("half block {dir:?}: {e}")));
    }
    let metas: Vec<BlockMeta> = blocks.iter().map(|b| b.meta().clone()).collect();
    let superseded = superseded_blocks(&metas);
    for seq in &superseded {
        delete_block(&*fs, blocks_dir, *seq).await.unwrap();
    }
    blocks.retain(|b| !superseded.contains(&b.meta().seq));
    let names = fs.read_dir(blocks_dir).await.unwrap();
    assert!(names.iter().all(|n| !n.ends_with(".tmp")), "temp entries left: {names:?}");
    blocks
}

/// Every series' samples as the merged read path sees them (oldest block first).
async fn visible_data(blocks: &[Block]) -> Vec<(String, Labels, Vec<Sample>)> {
    let mut by_series: std::collections::BTreeMap<(String, Labels), Vec<Vec<Sample>>> = Default::default();
    for block in blocks {
        for r in block.all_series() {
            let samples = block.samples(r, i64::MIN, i64::MAX).await.unwrap();
            by_series
                .entry((block.series_tenant(r).to_string(), block.series_labels(r).clone()))
                .or_default()
                .push(samples);
        }
    }
    by_series
        .into_iter()
        .map(|((tenant, labels), lists)| (tenant, labels, merge_first_write_wins(lists)))
        .filter(|(_, _, s)| !s.is_empty())
        .collect()
}

fn seqs(blocks: &[Block]) -> Vec<u64> {
    blocks.iter().map(|b| b.meta().seq).collect()
}

// Goal: a crash at any point of write_block leaves the old blocks, or the old plus the whole
// new block; after write_block returns Ok, the new block survives any crash.
#[tokio::test]
async fn write_block_is_atomic_under_crashes() {
    let mut completed = false;
    let mut outcomes = [0usize; 2];
    for n in 0..200 {
        let sim = new_disk(n as u64).await;
        write_block(&sim, Path::new(BLOCKS), 1, data(0, 0.0), &config()).await.unwrap();
        let dying = DyingFs { inner: sim.clone(), ops_left: Arc::new(AtomicI64::new(n)) };
        let result = write_block(&dying, Path::new(BLOCKS), 2, data(1_000, 5.0), &config()).await;
        sim.crash();
        let blocks = recover(&sim).await;
        match seqs(&blocks).as_slice() {
            [1] => {
                assert!(result.is_err(), "n={n}: write_block returned Ok but the block is gone");
                outcomes[0] += 1;
            }
            [1, 2] => {
                outcomes[1] += 1;
                let fresh = new_disk(0).await;
                write_block(&fresh, Path::new(BLOCKS), 2, data(1_000, 5.0), &config()).await.unwrap();
                let fresh_blocks = recover(&fresh).await;
                assert_eq!(visible_data(&blocks[1..]).await, visible_data(&fresh_blocks).await, "n={n}");
            }
            other => panic!("n={n}: unexpected blocks {other:?}"),
        }
        if result.is_ok() {
            completed = true;
            break;
        }
    }
    assert!(completed, "write_block never completed");
    assert!(outcomes[0] >= 5 && outcomes[1] >= 1, "crash points exercised: {outcomes:?}");
}

// Goal: compaction followed by deletion of its sources, crashed at every step, shows the same
// data before and after (old blocks, new block, or both — never a half block), and recovery
// leaves either the old set or the new one.
#[tokio::test]
async fn compaction_is_atomic_under_crashes() {
    let mut completed = false;
    let mut expected = None;
    let mut outcomes = [0usize; 2];
    for n in 0..300 {
        let sim = new_disk(100 + n as u64).await;
        let fs: Arc<dyn FileSystem> = Arc::new(sim.clone());
        write_block(&*fs, Path::new(BLOCKS), 1, data(0, 0.0), &config()).await.unwrap();
        write_block(&*fs, Path::new(BLOCKS), 2, data(1_000, 5.0), &config()).await.unwrap();
        let mut one = Block::open(fs.clone(), PathBuf::from(BLOCKS).join("0000000000000001")).await.unwrap();
        let tombstone = Tombstone { tenant: "x".into(), matchers: vec![Matcher::equal("i", "2")], min_t: 100, max_t: 1_500 };
        one.add_tombstone(tombstone).await.unwrap();
        let two = Block::open(fs.clone(), PathBuf::from(BLOCKS).join("0000000000000002")).await.unwrap();
        let before = visible_data(&[one, two]).await;
        let one = Block::open(fs.clone(), PathBuf::from(BLOCKS).join("0000000000000001")).await.unwrap();
        let two = Block::open(fs.clone(), PathBuf::from(BLOCKS).join("0000000000000002")).await.unwrap();
        if let Some(expected) = &expected {
            assert_eq!(&before, expected);
        }
        expected = Some(before.clone());

        let dying: Arc<dyn FileSystem> = Arc::new(DyingFs { inner: sim.clone(), ops_left: Arc::new(AtomicI64::new(n)) });
        let result = async {
            compact(dying.clone(), Path::new(BLOCKS), &[&one, &two], 3, &config()).await?;
            delete_block(&*dying, Path::new(BLOCKS), 1).await?;
            delete_block(&*dying, Path::new(BLOCKS), 2).await
        }
        .await;
        drop((one, two));
        sim.crash();
        let blocks = recover(&sim).await;
        match seqs(&blocks).as_slice() {
            [1, 2] => {
                assert!(result.is_err(), "n={n}");
                outcomes[0] += 1;
            }
            [3] => outcomes[1] += 1,
            other => panic!("n={n}: unexpected blocks {other:?}"),
        }
        assert_eq!(visible_data(&blocks).await, before, "n={n}");
        if let Ok(()) = result {
            assert_eq!(seqs(&blocks), vec![3]);
            assert!(blocks[0].tombstones().is_empty());
            completed = true;
            break;
        }
    }
    assert!(completed, "compaction never completed");
    assert!(outcomes[0] >= 10 && outcomes[1] >= 3, "crash points exercised: {outcomes:?}");
}

// Goal: add_tombstone is atomic: after a crash the block has the old tombstones or the new
// ones, and the new ones once it has returned Ok.
#[tokio::test]
async fn tombstones_are_atomic_under_crashes() {
    let mut completed = false;
    for n in 0..50 {
        let sim = new_disk(500 + n as u64).await;
        let fs: Arc<dyn FileSystem> = Arc::new(sim.clone());
        write_block(&*fs, Path::new(BLOCKS), 1, data(0, 0.0), &config()).await.unwrap();
        let dir = PathBuf::from(BLOCKS).join("0000000000000001");
        let first = Tombstone { tenant: "x".into(), matchers: vec![], min_t: 0, max_t: 10 };
        Block::open(fs.clone(), dir.clone()).await.unwrap().add_tombstone(first.clone()).await.unwrap();
        let dying: Arc<dyn FileSystem> = Arc::new(DyingFs { inner: sim.clone(), ops_left: Arc::new(AtomicI64::new(n)) });
        let mut block = Block::open(dying, dir.clone()).await.unwrap();
        let second = Tombstone { tenant: "y".into(), matchers: vec![Matcher::equal("i", "1")], min_t: 20, max_t: 30 };
        let result = block.add_tombstone(second.clone()).await;
        if result.is_err() {
            assert_eq!(block.tombstones(), std::slice::from_ref(&first), "in memory unchanged on error");
        }
        sim.crash();
        let blocks = recover(&sim).await;
        let got = blocks[0].tombstones().to_vec();
        assert!(got == [first.clone()] || got == [first.clone(), second.clone()], "n={n}: {got:?}");
        if result.is_ok() {
            assert_eq!(got, [first, second]);
            completed = true;
            break;
        }
    }
    assert!(completed);
}

// Goal: disk faults during a write surface as typed I/O errors naming a file, never as a
// visible block; a full disk leaves reads of existing blocks working; a read that returns a
// flipped bit is reported as corruption. Method: SimFs fault injection, one fault at a time.
#[tokio::test]
async fn disk_faults_are_typed_errors() {
    use sextant_storage::block::BlockError;
    use sextant_storage::fs::{is_io_error, is_no_space};
    let blocks_dir = Path::new(BLOCKS);
    let cases: Vec<(&str, FaultConfig)> = vec![
        ("disk full", FaultConfig { capacity_bytes: Some(2_000), ..FaultConfig::default() }),
        ("fsync EIO", FaultConfig { sync_eio_probability: 1.0, ..FaultConfig::default() }),
        ("directory fsync EIO", FaultConfig { sync_dir_eio_probability: 1.0, ..FaultConfig::default() }),
    ];
    for (name, faults) in cases {
        let sim = new_disk(900).await;
        let fs: Arc<dyn FileSystem> = Arc::new(sim.clone());
        write_block(&*fs, blocks_dir, 1, data(0, 0.0), &config()).await.unwrap();
        sim.set_faults(faults);
        let error = write_block(&*fs, blocks_dir, 2, data(5_000, 1.0), &config()).await.unwrap_err();
        let BlockError::Io { source, .. } = &error else { panic!("{name}: {error}") };
        assert!(is_no_space(source) || is_io_error(source), "{name}: {error}");
        assert!(error.file().is_some());
        // Reads of the existing block keep working.
        let one = Block::open(fs.clone(), PathBuf::from(BLOCKS).join("0000000000000001")).await.unwrap();
        assert_eq!(visible_data(&[one]).await.len(), 6, "{name}");
        sim.set_faults(FaultConfig::default());
        sim.crash();
        assert_eq!(seqs(&recover(&sim).await), vec![1], "{name}");
    }

    let sim = new_disk(901).await;
    let fs: Arc<dyn FileSystem> = Arc::new(sim.clone());
    write_block(&*fs, blocks_dir, 1, data(0, 0.0), &config()).await.unwrap();
    sim.set_faults(FaultConfig { read_corruption_probability: 1.0, ..FaultConfig::default() });
    let error = Block::open(fs.clone(), PathBuf::from(BLOCKS).join("0000000000000001")).await.unwrap_err();
    assert!(matches!(error, BlockError::Corrupt { .. }), "{error}");
}
