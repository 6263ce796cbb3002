//! A head cut writes its block outside the shard lock: writes and reads go on while the block is
//! encoded and made durable, and a deletion waits for the cut. These tests hold a cut in the
//! middle of its block write (a filesystem wrapper that parks the block's first file creation)
//! and check what happens meanwhile and after, including across a crash.

use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sextant_core::clock::ManualClock;
use sextant_core::labels::Labels;
use sextant_core::matcher::Matcher;
use sextant_core::sample::Sample;
use sextant_storage::acceptance::AcceptanceConfig;
use sextant_storage::engine::{Engine, EngineConfig, EngineError, MaintainReport, RefusalReason, WriteSeries};
use sextant_storage::fs::sim::SimFs;
use sextant_storage::fs::{FileSystem, WritableFile};
use sextant_storage::wal::WalConfig;

const NOW: i64 = 1_700_000_000_000;
const MINUTE: i64 = 60_000;
const SPAN_MS: i64 = 10 * MINUTE;
/// Long enough for anything that does not wait on the held cut to finish on a loaded machine;
/// reaching it means the operation waited for the cut (a hang detector, not a speed check).
const NOT_BLOCKED_WAIT: Duration = Duration::from_secs(30);

/// Delegates to a [`SimFs`]; while armed, the first file created under a `blocks` directory
/// parks until released (the cut is then in the middle of writing its block).
#[derive(Debug, Clone)]
struct HeldFs {
    inner: SimFs,
    gate: Arc<Gate>,
}

#[derive(Debug)]
struct Gate {
    armed: AtomicBool,
    entered: tokio::sync::Semaphore,
    release: tokio::sync::Semaphore,
}

impl HeldFs {
    fn new(inner: SimFs) -> Self {
        let gate = Gate { armed: AtomicBool::new(false), entered: tokio::sync::Semaphore::new(0), release: tokio::sync::Semaphore::new(0) };
        HeldFs { inner, gate: Arc::new(gate) }
    }

    fn arm(&self) {
        self.gate.armed.store(true, Ordering::SeqCst);
    }

    /// Resolves once a block write is parked at the gate.
    async fn held(&self) {
        self.gate.entered.acquire().await.expect("gate open").forget();
    }

    fn release(&self) {
        self.gate.release.add_permits(1);
    }
}

#[async_trait]
impl FileSystem for HeldFs {
    async fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        self.inner.create_dir_all(path).await
    }
    async fn create(&self, path: &Path) -> io::Result<Box<dyn WritableFile>> {
        let in_blocks = path.components().any(|c| c.as_os_str() == "blocks");
        if in_blocks && self.gate.armed.swap(false, Ordering::SeqCst) {
            self.gate.entered.add_permits(1);
            self.gate.release.acquire().await.expect("gate open").forget();
        }
        self.inner.create(path).await
    }
    async fn open_append(&self, path: &Path) -> io::Result<Box<dyn WritableFile>> {
        self.inner.open_append(path).await
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
        self.inner.truncate(path, len).await
    }
    async fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.inner.rename(from, to).await
    }
    async fn remove_file(&self, path: &Path) -> io::Result<()> {
        self.inner.remove_file(path).await
    }
    async fn remove_dir_all(&self, path: &Path) -> io::Result<()> {
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
        self.inner.sync_dir(path).await
    }
}

fn config() -> EngineConfig {
    EngineConfig {
        shard_ids: vec![0],
        wal: WalConfig { segment_bytes: 64 * 1024, ..WalConfig::default() },
        block_span_ms: SPAN_MS,
        retention_ms: None,
        // Wide enough for the out-of-order writes below, which land under the cut time.
        acceptance: AcceptanceConfig { out_of_order_window_ms: 60 * MINUTE, ..AcceptanceConfig::default() },
        ..EngineConfig::default()
    }
}

fn series(instance: &str, samples: &[(i64, f64)]) -> WriteSeries {
    WriteSeries {
        labels: Labels::from_pairs(&[("__name__", "m"), ("instance", instance)]),
        samples: samples.iter().map(|(t, v)| Sample::new(*t, *v)).collect(),
    }
}

/// Every stored sample as (instance, t, value bits), sorted.
async fn dump(engine: &Engine) -> Vec<(String, i64, u64)> {
    let mut out = Vec::new();
    for s in engine.select("t", &[Matcher::equal("__name__", "m")], i64::MIN, i64::MAX).await.unwrap() {
        for sample in s.samples {
            out.push((s.labels.get("instance").to_string(), sample.t, sample.v.to_bits()));
        }
    }
    out.sort();
    out
}

/// 20 minutes of 15 s samples for instances a and b (the head then spans two block spans, so a
/// cut is due); returns what was written and the cut time the engine will choose.
async fn fill(engine: &Engine, clock: &ManualClock, expected: &mut Vec<(String, i64, u64)>) -> i64 {
    let mut newest = NOW;
    for step in 0..80i64 {
        let t = NOW + step * 15_000;
        clock.set_wall_ms(t);
        engine.append(0, "t", vec![series("a", &[(t, step as f64)]), series("b", &[(t, -(step as f64))])]).await.unwrap();
        expected.push(("a".into(), t, (step as f64).to_bits()));
        expected.push(("b".into(), t, (-(step as f64)).to_bits()));
        newest = t;
    }
    (newest - SPAN_MS / 2).div_euclid(SPAN_MS) * SPAN_MS
}

/// An engine whose maintenance pass is parked in the middle of writing its cut's block.
struct HeldCut {
    sim: SimFs,
    fs: HeldFs,
    clock: Arc<ManualClock>,
    engine: Engine,
    /// What [`fill`] wrote, as (instance, t, value bits), in write order.
    expected: Vec<(String, i64, u64)>,
    before_t: i64,
    maintainer: tokio::task::JoinHandle<Result<MaintainReport, EngineError>>,
}

/// Opens an engine on a fresh simulated disk, fills it so a cut is due, and starts a
/// maintenance pass that parks at its block write.
async fn hold_a_cut(seed: u64) -> HeldCut {
    let sim = SimFs::new(seed);
    let fs = HeldFs::new(sim.clone());
    let clock = Arc::new(ManualClock::new(NOW));
    let engine = Engine::open(Arc::new(fs.clone()), clock.clone(), config()).await.unwrap();
    let mut expected = Vec::new();
    let before_t = fill(&engine, &clock, &mut expected).await;
    fs.arm();
    let maintainer = {
        let engine = engine.clone();
        tokio::spawn(async move { engine.maintain().await })
    };
    fs.held().await;
    HeldCut { sim, fs, clock, engine, expected, before_t, maintainer }
}

// Goal: while a cut's block write is held, writes complete and reads see every acknowledged
// sample; the duplicate and conflict rules still see the samples being moved; samples written
// under the cut time meanwhile (out-of-order, a new series) stay in the head afterwards; and
// after the cut and after a crash every acknowledged sample reads back exactly once.
#[tokio::test]
async fn writes_go_on_while_a_cut_writes_its_block() {
    let HeldCut { sim, fs, clock, engine, mut expected, before_t, maintainer } = hold_a_cut(11).await;
    assert!(before_t > NOW, "the cut moves some data: before_t {before_t}");
    let moved = expected.iter().filter(|(_, t, _)| *t < before_t).count() as u64;

    // A sample being moved: the same value is a duplicate, another value a conflict.
    let report = tokio::time::timeout(NOT_BLOCKED_WAIT, engine.append(0, "t", vec![series("a", &[(NOW, 0.0), (NOW + 15_000, 99.0)])]))
        .await
        .expect("a write completes while a cut writes its block")
        .unwrap();
    assert_eq!(report.duplicates, 1, "{report:?}");
    assert!(
        matches!(report.refusals.as_slice(), [r] if matches!(r.reason, RefusalReason::Conflict { t, .. } if t == NOW + 15_000)),
        "{report:?}"
    );
    // Under the cut time, written after the copy: out of order for a, new series c.
    let ooo_t = NOW + 7_500;
    let new_t = NOW + 30_000;
    let report = tokio::time::timeout(NOT_BLOCKED_WAIT, engine.append(0, "t", vec![series("a", &[(ooo_t, 0.5)]), series("c", &[(new_t, 7.0)])]))
        .await
        .expect("a write completes while a cut writes its block")
        .unwrap();
    assert_eq!((report.accepted, report.out_of_order, report.series_created), (2, 1, 1), "{report:?}");
    expected.push(("a".into(), ooo_t, 0.5f64.to_bits()));
    expected.push(("c".into(), new_t, 7.0f64.to_bits()));
    expected.sort();
    assert_eq!(dump(&engine).await, expected, "reads during the cut");

    fs.release();
    let report = maintainer.await.unwrap().unwrap();
    assert_eq!(report.blocks_cut, 1, "{report:?}");
    assert_eq!(report.samples_persisted, moved, "{report:?}");
    assert_eq!(dump(&engine).await, expected, "after the cut: each sample once");
    let status = engine.status().await;
    assert_eq!(status.blocks, 1, "{status:?}");
    // The samples written during the cut are still refused at other values (head or block).
    let report = engine.append(0, "t", vec![series("a", &[(ooo_t, 1.5), (NOW, 5.0)]), series("c", &[(new_t, 8.0)])]).await.unwrap();
    assert_eq!((report.refused_permanent, report.accepted), (3, 0), "{report:?}");

    drop(engine);
    sim.crash();
    let engine = Engine::open(Arc::new(sim.clone()), clock.clone(), config()).await.unwrap();
    assert_eq!(dump(&engine).await, expected, "after a crash: replay restores what the block lacks, once");
}

// Goal: a deletion that arrives while a cut writes its block waits for it, then removes the
// samples from the new block as well as the head, durably (a deletion that skipped the block
// being written would let deleted samples come back once the block is served).
#[tokio::test]
async fn a_deletion_waits_for_the_cut_and_reaches_its_block() {
    let HeldCut { sim, fs, clock, engine, mut expected, maintainer, .. } = hold_a_cut(12).await;
    let (from, to) = (NOW + 2 * MINUTE, NOW + 12 * MINUTE);
    let deleter = {
        let engine = engine.clone();
        let matchers = vec![Matcher::equal("__name__", "m"), Matcher::equal("instance", "a")];
        tokio::spawn(async move { engine.delete("t", &matchers, from, to).await })
    };
    // Give the deletion every chance to run: it must still be waiting for the cut.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!deleter.is_finished(), "the deletion waits for the cut's block");
    fs.release();
    assert_eq!(maintainer.await.unwrap().unwrap().blocks_cut, 1);
    deleter.await.unwrap().unwrap();

    expected.retain(|(instance, t, _)| !(instance == "a" && (from..=to).contains(t)));
    expected.sort();
    assert_eq!(dump(&engine).await, expected, "deleted from block and head");
    drop(engine);
    sim.crash();
    let engine = Engine::open(Arc::new(sim.clone()), clock.clone(), config()).await.unwrap();
    assert_eq!(dump(&engine).await, expected, "after a crash");
}
