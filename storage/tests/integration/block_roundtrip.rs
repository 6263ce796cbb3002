//! Block round trips: random multi-tenant series written, reopened and read back exactly, with
//! every matcher operator checked against a brute-force filter of the input.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sextant_core::labels::{Label, Labels};
use sextant_core::matcher::{matches_all, MatchOp, Matcher};
use sextant_core::sample::{stale_nan, Sample};
use sextant_storage::block::{
    list_blocks, write_block, Block, BlockError, GroupCache, BlockSeriesData, BlockWriterConfig, TENANT_LABEL,
};
use sextant_storage::fs::sim::SimFs;
use sextant_storage::fs::FileSystem;

const BLOCKS_DIR: &str = "shards/7/blocks";

async fn new_disk(seed: u64) -> (SimFs, Arc<dyn FileSystem>, PathBuf) {
    let sim = SimFs::new(seed);
    let fs: Arc<dyn FileSystem> = Arc::new(sim.clone());
    let blocks = PathBuf::from(BLOCKS_DIR);
    fs.create_dir_all(&blocks).await.unwrap();
    for dir in ["", "shards", "shards/7", BLOCKS_DIR] {
        fs.sync_dir(Path::new(dir)).await.unwrap();
    }
    (sim, fs, blocks)
}

fn random_value(rng: &mut ChaCha8Rng, kind: u32, i: usize, previous: f64) -> f64 {
    match kind {
        0 => 1.0,
        1 => previous + f64::from(rng.random_range(0..1000u32)),
        2 => rng.random::<f64>() * 1e6,
        _ => match rng.random_range(0..8) {
            0 => f64::NAN,
            1 => stale_nan(),
            2 => -0.0,
            3 => f64::INFINITY,
            4 => f64::from_bits(rng.random()),
            _ => i as f64,
        },
    }
}

/// Random series of three tenants; some labels present only on some series.
fn random_series(seed: u64, count: usize) -> Vec<BlockSeriesData> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let tenants = ["acme", "beta", "default"];
    let mut out: Vec<BlockSeriesData> = Vec::new();
    while out.len() < count {
        let tenant = tenants[rng.random_range(0..tenants.len())].to_string();
        let mut labels = vec![Label::new("__name__", format!("metric_{}", rng.random_range(0..4)))];
        labels.push(Label::new("instance", format!("host-{}", rng.random_range(0..6))));
        if rng.random_bool(0.6) {
            labels.push(Label::new("job", ["node", "api", "db"][rng.random_range(0..3)]));
        }
        if rng.random_bool(0.3) {
            labels.push(Label::new("mode", format!("m{}", rng.random_range(0..3))));
        }
        let labels = Labels::from_unsorted(labels).unwrap();
        if out.iter().any(|s| s.tenant == tenant && s.labels == labels) {
            continue;
        }
        let n = rng.random_range(1..400);
        let kind = rng.random_range(0..4);
        let mut t = rng.random_range(-100_000i64..100_000);
        let mut v = 0.0;
        let mut samples = Vec::with_capacity(n);
        for i in 0..n {
            v = random_value(&mut rng, kind, i, v);
            samples.push(Sample::new(t, v));
            t += if rng.random_bool(0.9) { 15_000 } else { rng.random_range(1..100_000) };
        }
        out.push(BlockSeriesData { tenant, labels, samples });
    }
    out
}

fn matchers_to_try() -> Vec<Vec<Matcher>> {
    let m = |op, name: &str, value: &str| Matcher::new(op, name, value).unwrap();
    vec![
        vec![],
        vec![m(MatchOp::Equal, "__name__", "metric_1")],
        vec![m(MatchOp::Equal, "job", "")],
        vec![m(MatchOp::NotEqual, "job", "")],
        vec![m(MatchOp::NotEqual, "job", "node")],
        vec![m(MatchOp::RegexMatch, "instance", "host-[12]")],
        vec![m(MatchOp::RegexMatch, "job", "node|")],
        vec![m(MatchOp::RegexMatch, "job", ".*")],
        vec![m(MatchOp::RegexMatch, "job", ".+")],
        vec![m(MatchOp::RegexNoMatch, "job", ".+")],
        vec![m(MatchOp::RegexNoMatch, "mode", "m1")],
        vec![m(MatchOp::Equal, "absent", "")],
        vec![m(MatchOp::Equal, "absent", "x")],
        vec![m(MatchOp::RegexMatch, "__name__", "metric_.*"), m(MatchOp::NotEqual, "instance", "host-0"), m(MatchOp::RegexNoMatch, "job", "api|db")],
        vec![m(MatchOp::Equal, "__name__", "metric_2"), m(MatchOp::Equal, "job", "node"), m(MatchOp::Equal, "mode", "m0")],
        vec![m(MatchOp::Equal, TENANT_LABEL, "acme")],
        vec![m(MatchOp::Equal, TENANT_LABEL, "")],
        vec![m(MatchOp::RegexMatch, "instance", "host")],
    ]
}

// Goal: everything written comes back exactly: series sets per tenant under every matcher op
// (including matchers that match the empty string), and samples bit for bit, in full and in
// sub-ranges. Method: random series of three tenants, brute-force expectations from the input.
#[tokio::test]
async fn random_round_trip_with_every_matcher() {
    for seed in 0..4u64 {
        let (_sim, fs, blocks) = new_disk(seed).await;
        let input = random_series(seed, 120);
        let config = BlockWriterConfig { chunk_group_bytes_target: 1024 << (seed % 3), ..BlockWriterConfig::default() };
        let meta = write_block(&*fs, &blocks, 42, input.clone(), &config).await.unwrap();
        assert_eq!(meta.series_count, input.len() as u64);
        assert_eq!(meta.sample_count, input.iter().map(|s| s.samples.len() as u64).sum::<u64>());
        assert_eq!(list_blocks(&*fs, &blocks).await.unwrap(), vec![blocks.join("000000000000002a")]);
        let block = Block::open(fs.clone(), blocks.join("000000000000002a")).await.unwrap();
        assert_eq!(block.meta(), &meta);
        assert!(block.memory_bytes() > 0);

        for tenant in ["acme", "beta", "default", "nobody"] {
            for matchers in matchers_to_try() {
                let mut expected: Vec<&BlockSeriesData> =
                    input.iter().filter(|s| s.tenant == tenant && matches_all(&matchers, &s.labels)).collect();
                expected.sort_by(|a, b| a.labels.cmp(&b.labels));
                let refs = block.select(tenant, &matchers);
                let got: Vec<&Labels> = refs.iter().map(|r| block.series_labels(*r)).collect();
                let want: Vec<&Labels> = expected.iter().map(|s| &s.labels).collect();
                assert_eq!(got, want, "seed {seed} tenant {tenant} matchers {matchers:?}");
                for (r, series) in refs.iter().zip(&expected) {
                    assert_eq!(block.samples(*r, i64::MIN, i64::MAX).await.unwrap(), series.samples);
                    let (lo, hi) = (series.samples[0].t + 20_000, series.samples[series.samples.len() - 1].t - 7);
                    let want: Vec<Sample> =
                        series.samples.iter().copied().filter(|s| s.t >= lo && s.t <= hi).collect();
                    assert_eq!(block.samples(*r, lo, hi).await.unwrap(), want);
                }
                // One cache across the select gives the same samples, reading each chunk group
                // once while consecutive series share it.
                let mut cache = GroupCache::default();
                for (r, series) in refs.iter().zip(&expected) {
                    assert_eq!(block.samples_cached(*r, i64::MIN, i64::MAX, &mut cache).await.unwrap(), series.samples);
                }
                assert!(cache.reads <= refs.len() as u64);
                if seed % 3 == 2 && refs.len() >= 20 {
                    assert!(cache.reads < refs.len() as u64, "seed {seed}: {} group reads for {} series", cache.reads, refs.len());
                }
            }
            let mut names: Vec<String> = input
                .iter()
                .filter(|s| s.tenant == tenant)
                .flat_map(|s| s.labels.iter().map(|l| l.name.clone()))
                .collect();
            names.sort();
            names.dedup();
            assert_eq!(block.label_names(tenant), names);
            let mut values: Vec<String> =
                input.iter().filter(|s| s.tenant == tenant).map(|s| s.labels.get("job").to_string()).filter(|v| !v.is_empty()).collect();
            values.sort();
            values.dedup();
            assert_eq!(block.label_values(tenant, "job"), values);
            assert!(block.label_values(tenant, TENANT_LABEL).is_empty());
        }
    }
}

// Goal: bad input is refused with a typed error and leaves no block and no temp directory.
#[tokio::test]
async fn invalid_input_is_refused() {
    let (_sim, fs, blocks) = new_disk(9).await;
    let labels = Labels::from_pairs(&[("__name__", "up")]);
    let series = |tenant: &str, labels: &Labels, ts: &[i64]| BlockSeriesData {
        tenant: tenant.to_string(),
        labels: labels.clone(),
        samples: ts.iter().map(|t| Sample::new(*t, 1.0)).collect(),
    };
    let cases: Vec<(&str, Vec<BlockSeriesData>)> = vec![
        ("duplicate series", vec![series("a", &labels, &[1]), series("a", &labels, &[2])]),
        ("timestamps not increasing", vec![series("a", &labels, &[1, 1])]),
        ("no samples", vec![series("a", &labels, &[])]),
        ("tenant pseudo-label", vec![series("a", &Labels::from_pairs(&[("__tenant__", "x")]), &[1])]),
        ("empty value", vec![series("a", &Labels::from_pairs(&[("__name__", "up"), ("job", "")]), &[1])]),
    ];
    for (name, input) in cases {
        let error = write_block(&*fs, &blocks, 1, input, &BlockWriterConfig::default()).await.unwrap_err();
        assert!(matches!(error, BlockError::InvalidInput { .. }), "{name}: {error}");
        assert!(fs.read_dir(&blocks).await.unwrap().is_empty(), "{name}");
    }
    let error = write_block(&*fs, &blocks, 1, vec![], &BlockWriterConfig::default()).await.unwrap_err();
    assert!(matches!(error, BlockError::Empty { .. }));
    write_block(&*fs, &blocks, 1, vec![series("a", &labels, &[1])], &BlockWriterConfig::default()).await.unwrap();
    let error = write_block(&*fs, &blocks, 1, vec![series("a", &labels, &[1])], &BlockWriterConfig::default()).await.unwrap_err();
    assert!(matches!(error, BlockError::AlreadyExists { .. }));
}
