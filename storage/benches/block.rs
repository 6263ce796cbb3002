//! Measures block size in bytes per sample on node_exporter-shaped data (not a timing
//! benchmark). Run: `cargo test -p sextant-storage --bench block` (dev profile is optimized),
//! or `cargo bench -p sextant-storage --bench block`.
//!
//! Data: the 505 series of a real node_exporter 1.5 scrape
//! (`../shared/datasets/node-exporter-1.5-scrape.prom`, falling back to a built-in sample when
//! the file is absent), for `NODES` instances, every 15 s. Values evolve from the scrape's
//! values by type with a seeded RNG: about half the gauges and a third of the counters stay
//! constant (info metrics, limits, zero error counters), counters grow by random increments at
//! the precision the scrape shows (integers, or 2-3 decimals as for `node_cpu_seconds_total`),
//! varying gauges random-walk (in 4 KiB pages for byte gauges) or jitter at their precision.
//! Scrape timestamps are exact multiples of 15 s except 10% with ±1-5 ms jitter.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sextant_core::labels::{Label, Labels};
use sextant_core::sample::Sample;
use sextant_storage::block::{write_block, BlockSeriesData, BlockWriterConfig};
use sextant_storage::fs::sim::SimFs;
use sextant_storage::fs::FileSystem;

const NODES: usize = 4;
const SCRAPE_INTERVAL_MS: i64 = 15_000;

/// SimFs never suspends without a delay configured, so a busy poll with a no-op waker is enough
/// (and works in both builds).
fn block_on<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    let mut context = Context::from_waker(Waker::noop());
    loop {
        if let Poll::Ready(output) = future.as_mut().poll(&mut context) {
            return output;
        }
    }
}

struct Template {
    labels: Vec<(String, String)>,
    kind: String,
    value: f64,
    decimals: i32,
}

fn parse_scrape(text: &str) -> Vec<Template> {
    let mut kind_of = std::collections::BTreeMap::new();
    let mut out = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split_whitespace();
            if let (Some(name), Some(kind)) = (parts.next(), parts.next()) {
                kind_of.insert(name.to_string(), kind.to_string());
            }
            continue;
        }
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("exposition line");
        let (name, label_text) = match series.split_once('{') {
            Some((name, rest)) => (name, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        let mut labels = vec![("__name__".to_string(), name.to_string())];
        for pair in label_text.split("\",").filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once("=\"").expect("label pair");
            labels.push((k.to_string(), v.trim_end_matches('"').to_string()));
        }
        let base = ["_total", "_count", "_sum", "_bucket"].iter().fold(name, |n, s| n.strip_suffix(s).unwrap_or(n));
        let kind = kind_of.get(name).or_else(|| kind_of.get(base)).cloned().unwrap_or_else(|| "untyped".into());
        let parsed: f64 = value.parse().expect("value");
        let decimals = decimals_of(value);
        out.push(Template { labels, kind, value: parsed, decimals });
    }
    out
}

/// Digits after the decimal point that the exposition value shows (`1.5e+06` has none).
fn decimals_of(text: &str) -> i32 {
    let (mantissa, exponent) = match text.split_once('e') {
        Some((m, e)) => (m, e.parse::<i32>().unwrap_or(0)),
        None => (text, 0),
    };
    let fraction = mantissa.split_once('.').map(|(_, f)| f.len() as i32).unwrap_or(0);
    (fraction - exponent).max(0)
}

fn round_to(value: f64, decimals: i32) -> f64 {
    let scale = 10f64.powi(decimals.min(9));
    (value * scale).round() / scale
}

fn generate(templates: &[Template], hours: i64, seed: u64) -> Vec<BlockSeriesData> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let steps = (hours * 3_600_000 / SCRAPE_INTERVAL_MS) as usize;
    let start = 1_795_624_200_000i64;
    let timestamps: Vec<Vec<i64>> = (0..NODES)
        .map(|node| {
            let offset = node as i64 * 1_237;
            (0..steps)
                .map(|i| {
                    let jitter = if rng.random_bool(0.1) { rng.random_range(-5..=5) } else { 0 };
                    start + offset + i as i64 * SCRAPE_INTERVAL_MS + jitter
                })
                .collect()
        })
        .collect();
    let mut out = Vec::new();
    for (node, ts) in timestamps.iter().enumerate() {
        for template in templates {
            // Empty values mean "no label" and are dropped on ingest, as in Prometheus.
            let mut labels: Vec<Label> =
                template.labels.iter().filter(|(_, v)| !v.is_empty()).map(|(k, v)| Label::new(k.clone(), v.clone())).collect();
            labels.push(Label::new("instance", format!("node-{node}:9100")));
            labels.push(Label::new("job", "node"));
            let labels = Labels::from_unsorted(labels).expect("unique names");
            let name = labels.metric_name().to_string();
            let counter = template.kind == "counter" || name.ends_with("_total") || name.ends_with("_count") || name.ends_with("_sum");
            let constant = name.ends_with("_info")
                || name.contains("start_time")
                || name.contains("scrape_collector_success")
                || (template.value == 0.0 && rng.random_bool(0.8))
                || rng.random_bool(if counter { 0.3 } else { 0.5 });
            let integer = template.value.fract() == 0.0 && template.decimals == 0;
            let page = integer && template.value != 0.0 && template.value % 4096.0 == 0.0;
            let rate = (template.value.abs() / 3_600.0).max(if integer { 1.0 } else { 0.01 });
            let mut v = template.value;
            let mut samples = Vec::with_capacity(ts.len());
            for &t in ts {
                samples.push(Sample::new(t, v));
                if constant {
                    continue;
                }
                v = if counter {
                    let increment = rate * rng.random_range(0.0..2.0);
                    if integer { v + increment.round() } else { round_to(v + increment, template.decimals.clamp(2, 3)) }
                } else if page {
                    (v + 4096.0 * f64::from(rng.random_range(-8i32..=8))).max(0.0)
                } else if integer {
                    (v + f64::from(rng.random_range(-2i32..=2))).max(0.0)
                } else {
                    let jittered = template.value * (1.0 + rng.random_range(-0.05..0.05));
                    if template.decimals > 0 && template.decimals <= 4 { round_to(jittered, template.decimals) } else {
                        // Durations like 1.2701e-05: five significant digits.
                        let magnitude = 10f64.powi(jittered.abs().log10().floor() as i32 - 4);
                        (jittered / magnitude).round() * magnitude
                    }
                };
            }
            out.push(BlockSeriesData { tenant: "default".into(), labels, samples });
        }
    }
    out
}

fn measure(series: &[BlockSeriesData], config: &BlockWriterConfig) -> (f64, f64, f64) {
    let sim = SimFs::new(1);
    let fs: Arc<dyn FileSystem> = Arc::new(sim.clone());
    let blocks = PathBuf::from("blocks");
    block_on(async {
        fs.create_dir_all(&blocks).await.unwrap();
        let meta = write_block(&*fs, &blocks, 1, series.to_vec(), config).await.unwrap();
        let samples = meta.sample_count as f64;
        let meta_bytes = fs.file_len(Path::new("blocks/0000000000000001/meta")).await.unwrap() as f64;
        let total = meta.files.index_bytes as f64 + meta.files.chunks_bytes as f64 + meta_bytes;
        (total / samples, meta.files.chunks_bytes as f64 / samples, meta.files.index_bytes as f64 / samples)
    })
}

fn main() {
    // The fixture lives in the shared directory next to the checkout; benches may read
    // fixtures from the real disk (storage logic never does). `SEXTANT_SHARED_DIR` overrides.
    let relative = Path::new("datasets/node-exporter-1.5-scrape.prom");
    let candidates: Vec<PathBuf> = std::env::var_os("SEXTANT_SHARED_DIR")
        .map(|dir| vec![PathBuf::from(dir).join(relative)])
        .unwrap_or_default()
        .into_iter()
        .chain(Path::new(env!("CARGO_MANIFEST_DIR")).ancestors().map(|dir| dir.join("shared").join(relative)))
        .collect();
    let found = candidates.iter().find_map(|path| std::fs::read_to_string(path).ok().map(|text| (path.clone(), text)));
    let (path, text) = found.unwrap_or_else(|| {
        let sample = "# TYPE node_cpu_seconds_total counter\nnode_cpu_seconds_total{cpu=\"0\",mode=\"idle\"} 3.45\n\
             # TYPE node_memory_Active_bytes gauge\nnode_memory_Active_bytes 1.59744e+06\n";
        (PathBuf::from("(built-in sample)"), sample.to_string())
    });
    let templates = parse_scrape(&text);
    println!("templates: {} series per node, {NODES} nodes, source {}", templates.len(), path.display());
    for hours in [2i64, 12] {
        let series = generate(&templates, hours, 7);
        let samples: usize = series.iter().map(|s| s.samples.len()).sum();
        println!("\n{hours} h: {} series, {samples} samples", series.len());
        println!("{:>8} {:>8} {:>6} {:>10} {:>10} {:>10}", "chunk", "group", "zstd", "total B/s", "chunks", "index");
        for chunk_samples_target in [120usize, 240, 480] {
            for (group, zstd) in [(16 << 10, None), (4 << 10, Some(3)), (16 << 10, Some(3)), (64 << 10, Some(3)), (64 << 10, Some(9))] {
                let config = BlockWriterConfig { chunk_samples_target, chunk_group_bytes_target: group, zstd_level: zstd, cut_zstd_level: zstd };
                let (total, chunks, index) = measure(&series, &config);
                println!(
                    "{chunk_samples_target:>8} {group:>8} {:>6} {total:>10.3} {chunks:>10.3} {index:>10.3}",
                    zstd.map(|l| l.to_string()).unwrap_or_else(|| "-".into())
                );
            }
        }
    }
}
