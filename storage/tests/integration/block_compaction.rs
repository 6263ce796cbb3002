//! Compaction semantics (first write wins, tombstones dropped, counts, lineage) and a
//! model-based property test of `merge_first_write_wins`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use proptest::prelude::*;
use sextant_core::labels::Labels;
use sextant_core::matcher::{MatchOp, Matcher};
use sextant_core::sample::Sample;
use sextant_storage::block::{
    compact, list_blocks, merge_first_write_wins, superseded_blocks, write_block, Block, BlockMeta, BlockSeriesData,
    BlockWriterConfig, CompactionMeta, FilesMeta, Tombstone,
};
use sextant_storage::fs::sim::SimFs;
use sextant_storage::fs::FileSystem;

const BLOCKS: &str = "blocks";

fn series(tenant: &str, name: &str, samples: Vec<(i64, f64)>) -> BlockSeriesData {
    BlockSeriesData {
        tenant: tenant.into(),
        labels: Labels::from_pairs(&[("__name__", name), ("job", "node")]),
        samples: samples.into_iter().map(|(t, v)| Sample::new(t, v)).collect(),
    }
}

fn range(from: i64, to: i64, step: i64, v: f64) -> Vec<(i64, f64)> {
    (from..=to).step_by(step as usize).map(|t| (t, v)).collect()
}

async fn open(fs: &Arc<dyn FileSystem>, seq: u64) -> Block {
    Block::open(fs.clone(), PathBuf::from(BLOCKS).join(format!("{seq:016x}"))).await.unwrap()
}

async fn read_all(block: &Block, tenant: &str, name: &str) -> Vec<(i64, f64)> {
    let refs = block.select(tenant, &[Matcher::equal("__name__", name)]);
    assert!(refs.len() <= 1);
    match refs.first() {
        None => Vec::new(),
        Some(r) => block.samples(*r, i64::MIN, i64::MAX).await.unwrap().into_iter().map(|s| (s.t, s.v)).collect(),
    }
}

// Goal: overlapping blocks with conflicting values compact to the older block's values, equal
// samples collapse, tenants stay apart, tombstones are applied and gone, counts and lineage
// are right; the source order given does not matter. Method: hand-built blocks, expected
// results written out.
#[tokio::test]
async fn compaction_first_write_wins_and_drops_tombstones() {
    for reversed in [false, true] {
        let fs: Arc<dyn FileSystem> = Arc::new(SimFs::new(11));
        fs.create_dir_all(Path::new(BLOCKS)).await.unwrap();
        let config = BlockWriterConfig { chunk_samples_target: 4, ..BlockWriterConfig::default() };
        // Older block 5: a = 1.0 at 0..=100; b (tenant x) at 0..=50.
        let old = vec![series("x", "a", range(0, 100, 10, 1.0)), series("x", "b", range(0, 50, 10, 7.0))];
        // Newer block 9: a = 2.0 at 50..=150 (conflicts at 50..=100), a in tenant y, b equal
        // values at 40..=80 (40, 50 duplicate the old block exactly).
        let new = vec![
            series("x", "a", range(50, 150, 10, 2.0)),
            series("y", "a", range(0, 20, 10, 3.0)),
            series("x", "b", range(40, 80, 10, 7.0)),
        ];
        write_block(&*fs, Path::new(BLOCKS), 5, old, &config).await.unwrap();
        write_block(&*fs, Path::new(BLOCKS), 9, new, &config).await.unwrap();
        let mut five = open(&fs, 5).await;
        let mut nine = open(&fs, 9).await;
        // Delete a at 20..=30 in the old block and b at 70..=1000 in the new one.
        five.add_tombstone(Tombstone { tenant: "x".into(), matchers: vec![Matcher::equal("__name__", "a")], min_t: 20, max_t: 30 })
            .await
            .unwrap();
        let regex = Matcher::new(MatchOp::RegexMatch, "__name__", "b|c").unwrap();
        nine.add_tombstone(Tombstone { tenant: "x".into(), matchers: vec![regex], min_t: 70, max_t: 1000 }).await.unwrap();
        // The tombstone in block 5 covers only block 5: block 9 has no a at 20..=30 anyway.
        assert_eq!(read_all(&five, "x", "a").await, [(0, 1.0), (10, 1.0), (40, 1.0), (50, 1.0), (60, 1.0), (70, 1.0), (80, 1.0), (90, 1.0), (100, 1.0)]);

        let sources = if reversed { vec![&nine, &five] } else { vec![&five, &nine] };
        let meta = compact(fs.clone(), Path::new(BLOCKS), &sources, 12, &config).await.unwrap().unwrap();
        let out = open(&fs, 12).await;
        let mut a: Vec<(i64, f64)> = vec![(0, 1.0), (10, 1.0)];
        a.extend(range(40, 100, 10, 1.0));
        a.extend(range(110, 150, 10, 2.0));
        assert_eq!(read_all(&out, "x", "a").await, a);
        assert_eq!(read_all(&out, "y", "a").await, range(0, 20, 10, 3.0));
        assert_eq!(read_all(&out, "x", "b").await, range(0, 60, 10, 7.0));
        assert!(out.tombstones().is_empty());
        assert!(!fs.exists(Path::new("blocks/000000000000000c/tombstones")).await.unwrap());
        assert_eq!(meta.series_count, 3);
        assert_eq!(meta.sample_count, (a.len() + 3 + 7) as u64);
        assert_eq!((meta.min_t, meta.max_t), (0, 150));
        assert_eq!(meta.compaction, CompactionMeta { level: 1, sources: vec![5, 9], parents: vec![5, 9] });
        assert_eq!(out.meta(), &meta);
        assert_eq!(superseded_blocks(&[five.meta().clone(), nine.meta().clone(), meta.clone()]), vec![5, 9]);
        assert_eq!(list_blocks(&*fs, Path::new(BLOCKS)).await.unwrap().len(), 3);
    }
}

// Goal: a compaction whose every sample is tombstoned writes nothing and says so.
#[tokio::test]
async fn compaction_of_deleted_data_writes_no_block() {
    let fs: Arc<dyn FileSystem> = Arc::new(SimFs::new(12));
    fs.create_dir_all(Path::new(BLOCKS)).await.unwrap();
    let config = BlockWriterConfig::default();
    write_block(&*fs, Path::new(BLOCKS), 1, vec![series("x", "a", range(0, 100, 10, 1.0))], &config).await.unwrap();
    let mut one = open(&fs, 1).await;
    one.add_tombstone(Tombstone { tenant: "x".into(), matchers: vec![], min_t: i64::MIN, max_t: i64::MAX }).await.unwrap();
    assert_eq!(compact(fs.clone(), Path::new(BLOCKS), &[&one], 2, &config).await.unwrap(), None);
    assert_eq!(fs.read_dir(Path::new(BLOCKS)).await.unwrap(), vec!["0000000000000001"]);
}

// Goal: superseded_blocks names exactly the blocks a higher-level block already contains,
// across two levels of compaction.
#[test]
fn superseded_blocks_follow_lineage() {
    let meta = |seq: u64, level: u32, sources: Vec<u64>| BlockMeta {
        format_version: 1,
        seq,
        min_t: 0,
        max_t: 0,
        series_count: 1,
        sample_count: 1,
        chunk_count: 1,
        compaction: CompactionMeta { level, sources, parents: Vec::new() },
        files: FilesMeta { index_bytes: 0, chunks_bytes: 0 },
    };
    let metas = [meta(1, 0, vec![1]), meta(2, 0, vec![2]), meta(3, 0, vec![3]), meta(4, 1, vec![1, 2]), meta(5, 2, vec![1, 2])];
    assert_eq!(superseded_blocks(&metas), vec![1, 2, 4]);
    assert_eq!(superseded_blocks(&metas[..3]), Vec::<u64>::new());
}

/// The reference model: a BTreeMap from timestamp to value bits, each source inserting only
/// timestamps not seen in an older source.
fn model(sources: &[Vec<Sample>]) -> Vec<Sample> {
    let mut map: BTreeMap<i64, u64> = BTreeMap::new();
    for source in sources {
        for s in source {
            map.entry(s.t).or_insert(s.v.to_bits());
        }
    }
    map.into_iter().map(|(t, bits)| Sample::new(t, f64::from_bits(bits))).collect()
}

fn source_strategy() -> impl Strategy<Value = Vec<Sample>> {
    // Few distinct timestamps and values so that overlaps, equal and conflicting values are
    // common; NaN payloads via raw bits.
    proptest::collection::btree_map(-20i64..20, prop_oneof![Just(0u64), Just(1u64), Just(0x7ff0_0000_0000_0002), any::<u64>()], 0..25)
        .prop_map(|m| m.into_iter().map(|(t, bits)| Sample::new(t, f64::from_bits(bits))).collect())
}

proptest! {
    // Goal: merge_first_write_wins equals the BTreeMap model for any sources: strictly
    // increasing output, every timestamp of any source present, the oldest source's value kept.
    #[test]
    fn merge_matches_model(sources in proptest::collection::vec(source_strategy(), 0..6)) {
        let expected = model(&sources);
        let merged = merge_first_write_wins(sources);
        prop_assert_eq!(merged, expected);
    }
}

// Goal: the planner merges overlap groups whole first, then full aligned windows, never the
// window still being filled. Method: hand-made metas and the expected plans.
#[test]
fn plan_compaction_table() {
    use sextant_storage::block::{plan_compaction, COMPACTION_RANGES_MS_DEFAULT};
    const H: i64 = 3_600_000;
    let meta = |seq: u64, min_t: i64, max_t: i64| BlockMeta {
        format_version: 1,
        seq,
        min_t,
        max_t,
        series_count: 1,
        sample_count: 1,
        chunk_count: 1,
        compaction: CompactionMeta { level: 0, sources: vec![seq], parents: Vec::new() },
        files: FilesMeta { index_bytes: 0, chunks_bytes: 0 },
    };
    let ranges = COMPACTION_RANGES_MS_DEFAULT;
    let two_hour = |seq: u64, k: i64| meta(seq, k * 2 * H, (k + 1) * 2 * H - 1);
    type Case = (&'static str, Vec<BlockMeta>, Option<Vec<u64>>);
    let cases: Vec<Case> = vec![
        ("nothing", vec![], None),
        ("one block", vec![two_hour(1, 0)], None),
        ("overlap chain is one group", vec![meta(1, 0, 10), meta(3, 5, 20), meta(2, 20, 30), meta(4, 100, 200)], Some(vec![1, 2, 3])),
        ("full 6 h window", vec![two_hour(1, 0), two_hour(2, 1), two_hour(3, 2), two_hour(4, 3)], Some(vec![1, 2, 3])),
        ("newest window left alone", vec![two_hour(1, 3), two_hour(2, 4)], None),
        ("24 h window after 6 h ones", vec![meta(1, 0, 6 * H - 1), meta(2, 6 * H, 12 * H - 1), meta(3, 24 * H, 26 * H - 1)], Some(vec![1, 2])),
    ];
    for (name, metas, expected) in cases {
        assert_eq!(plan_compaction(&metas, &ranges), expected, "{name}");
    }
}
