//! Latency of the standard dashboard query set as range queries, through the real read path:
//! parse → plan → `Engine::select` for each selector of the plan (blocks on the real disk) →
//! `FetchedData::new` → `eval_range`. Measures; asserts only that every query returns series.
//!
//! Queries (Grafana's usual dashboard panels):
//! - `rate`: `rate(node_cpu_seconds_total[5m])`
//! - `sum_by_rate`: `sum by (instance) (rate(node_network_receive_bytes_total[5m]))`
//! - `histogram_quantile`: `histogram_quantile(0.99, sum by (le) (rate(http_request_duration_seconds_bucket[5m])))`
//! - `topk`: `topk(10, rate(node_cpu_seconds_total[5m]))`
//!
//! Ranges and steps as Grafana picks them for a ~1,100-point-wide panel with a 15 s minimum
//! interval: 1 h at a 15 s step (241 steps), 24 h at a 60 s step (1,441 steps), both ending at
//! the newest scrape.
//!
//! Data (`sextant_core::testdata::ScrapeGenerator`, seed 1, 15 s scrapes with per-host phase
//! and 0–3 ms jitter): per host, a reduced node_exporter series set — the 16
//! `node_cpu_seconds_total` series (2 CPUs × 8 modes), the 3 `node_network_receive_bytes_total`
//! and the 3 `node_network_transmit_bytes_total` series of the bundled real node_exporter 1.5
//! scrape (the transmit series are not read: they share every label but the name with the
//! receive series, so the index has to tell them apart) — plus a classic histogram
//! `http_request_duration_seconds` with 10 buckets (`+Inf` included), `_sum` and `_count`:
//! 34 series per host. The generator steps each bucket counter independently; the benchmark
//! accumulates them over `le` (bucket `le=x` = sum of the generated values of buckets ≤ x,
//! `_count` = the `+Inf` bucket), so buckets are cumulative as a real histogram's are.
//! The full 505-series node_exporter set is not used: at 1,000 hosts × 24 h it would be
//! 2.9 billion samples to generate and write; the series the queries do not touch only cost
//! index lookups, which the transmit series stand for.
//!
//! Layout: the engine's default config (16 shards, series routed by fingerprint as the node
//! does), all data in 2 h blocks written with the default `BlockWriterConfig` (480-sample
//! chunks, 256 KiB chunk groups, zstd 15) directly by `write_block` into each shard's block
//! directory before `Engine::open` — what head cuts would have produced — and an empty head.
//! Writing through `Engine::append` would take far longer than the measurement at 1,000 hosts.
//! The OS page cache is warm after the first iteration; criterion's warm-up run is the cold
//! one and is not measured.
//!
//! Each query is measured twice: `<query>` through the whole path, `<query>_eval` evaluation
//! alone (`FetchedData::new` + `eval_range`) over series selected once before measuring.
//!
//! Cases: `<query>/<hosts>h_<hours>h`, for hosts in {100, 1000} and hours in {1, 24}.
//! `SEXTANT_BENCH_QUERY_CASES` picks some, e.g. `100x1,1000x1` (hosts x hours).
//! `SEXTANT_BENCH_SMOKE=1` runs one tiny case (5 hosts × 1 h) with short criterion settings,
//! for CI (under a minute including the data build).
//!
//! Run: `cargo bench -p sextant-storage --bench query` (normal build only).

#[cfg(not(madsim))]
mod common;

#[cfg(madsim)]
fn main() {}

#[cfg(not(madsim))]
criterion::criterion_main!(query::benches);

#[cfg(not(madsim))]
mod query {
    use std::collections::BTreeMap;
    use std::path::PathBuf;
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use criterion::{criterion_group, Criterion};
    use sextant_core::promql::{eval_range, parse, plan_range, FetchedData, FetchedSeries, QueryLimits, QueryPlan};
    use sextant_core::sample::{Sample, TimestampMs};
    use sextant_core::series::{fingerprint, DEFAULT_TENANT};
    use sextant_core::testdata::{histogram_layout, parse_exposition, GeneratorConfig, ScrapeGenerator, SeriesTemplate, HISTOGRAM_EXPOSITION, NODE_EXPORTER_1_5_SCRAPE};
    use sextant_storage::block::{write_block, BlockSeriesData, BlockWriterConfig};
    use sextant_storage::engine::{Engine, EngineConfig, ShardId};
    use sextant_storage::fs::real::RealFs;
    use sextant_storage::fs::FileSystem;

    use crate::common::{data_dir, manual_clock, runtime, HOUR_MS, START_MS};

    const QUERIES: &[(&str, &str)] = &[
        ("rate", "rate(node_cpu_seconds_total[5m])"),
        ("sum_by_rate", "sum by (instance) (rate(node_network_receive_bytes_total[5m]))"),
        ("histogram_quantile", "histogram_quantile(0.99, sum by (le) (rate(http_request_duration_seconds_bucket[5m])))"),
        ("topk", "topk(10, rate(node_cpu_seconds_total[5m]))"),
    ];

    /// Metrics kept from the node_exporter scrape.
    const NODE_METRICS: &[&str] = &["node_cpu_seconds_total", "node_network_receive_bytes_total", "node_network_transmit_bytes_total"];

    const SHARD_COUNT: u32 = 16;
    const BLOCK_SPAN_MS: i64 = 2 * HOUR_MS;
    const SCRAPE_INTERVAL_MS: i64 = 15_000;

    fn templates() -> Vec<SeriesTemplate> {
        let mut out: Vec<SeriesTemplate> = parse_exposition(NODE_EXPORTER_1_5_SCRAPE)
            .expect("the bundled scrape parses")
            .into_iter()
            .filter(|t| NODE_METRICS.contains(&t.labels.metric_name()))
            .collect();
        out.extend(parse_exposition(HISTOGRAM_EXPOSITION).expect("the histogram text parses"));
        out
    }

    struct Dataset {
        engine: Engine,
        rt: tokio::runtime::Runtime,
        dir: PathBuf,
        /// Timestamp of the newest scrape.
        end_ms: TimestampMs,
        samples: u64,
        series: usize,
        build: Duration,
    }

    /// Generates `hours` of data for `hosts` hosts and writes it as 2 h blocks per shard.
    fn build(hosts: usize, hours: i64) -> Dataset {
        let started = Instant::now();
        let dir = data_dir(&format!("query-{hosts}x{hours}h"));
        let rt = runtime();
        let fs: Arc<dyn FileSystem> = Arc::new(RealFs::new(&dir));
        let templates = templates();
        let (bucket_positions, count_position) = histogram_layout(&templates);
        let config = GeneratorConfig { interval_ms: SCRAPE_INTERVAL_MS, ..GeneratorConfig::node_exporter(hosts, START_MS) };
        let rounds = config.scrapes_for(hours * HOUR_MS);
        let mut generator = ScrapeGenerator::new(config, &templates, 1);
        let per_host = generator.series_per_host();
        let shard_of: Vec<ShardId> = generator
            .series()
            .iter()
            .map(|s| (fingerprint(DEFAULT_TENANT, &s.labels).0 % u64::from(SHARD_COUNT)) as ShardId)
            .collect();
        let blocks_dir = |shard: ShardId| PathBuf::from("shards").join(shard.to_string()).join("blocks");
        rt.block_on(async {
            for shard in 0..SHARD_COUNT {
                fs.create_dir_all(&blocks_dir(shard)).await.expect("create blocks dir");
            }
        });
        let writer_config = BlockWriterConfig::default();
        let mut window: Vec<Vec<Sample>> = vec![Vec::new(); generator.series().len()];
        let mut window_index = 0i64;
        let mut seq: u64 = 1;
        let (mut samples, mut end_ms) = (0u64, START_MS);
        let flush = |window: &mut Vec<Vec<Sample>>, seq: u64, generator: &ScrapeGenerator| {
            let mut per_shard: BTreeMap<ShardId, Vec<BlockSeriesData>> = BTreeMap::new();
            for (i, samples) in window.iter_mut().enumerate() {
                if samples.is_empty() {
                    continue;
                }
                per_shard.entry(shard_of[i]).or_default().push(BlockSeriesData {
                    tenant: DEFAULT_TENANT.to_string(),
                    labels: generator.series()[i].labels.clone(),
                    samples: std::mem::take(samples),
                });
            }
            rt.block_on(async {
                for (shard, series) in per_shard {
                    write_block(fs.as_ref(), &blocks_dir(shard), seq, series, &writer_config).await.expect("write block");
                }
            });
        };
        for _ in 0..rounds {
            let mut round = generator.next_round();
            for scrape in &mut round {
                // Cumulative buckets: each bucket adds the generated counts of those below it.
                let mut cumulative = 0.0;
                for &position in &bucket_positions {
                    cumulative += scrape.values[position];
                    scrape.values[position] = cumulative;
                }
                scrape.values[count_position] = cumulative;
            }
            for scrape in round {
                let index = (scrape.t - START_MS).div_euclid(BLOCK_SPAN_MS);
                if index != window_index {
                    flush(&mut window, seq, &generator);
                    seq += 1;
                    window_index = index;
                }
                end_ms = end_ms.max(scrape.t);
                let base = scrape.host * per_host;
                for (i, v) in scrape.values.into_iter().enumerate() {
                    window[base + i].push(Sample::new(scrape.t, v));
                    samples += 1;
                }
            }
        }
        flush(&mut window, seq, &generator);
        let clock = manual_clock();
        clock.set_wall_ms(end_ms + 1_000);
        let config =
            EngineConfig { shard_ids: (0..SHARD_COUNT).collect(), retention_ms: None, ..EngineConfig::default() };
        let engine = rt.block_on(Engine::open(fs, clock, config)).expect("open engine");
        Dataset { engine, rt, dir, end_ms, samples, series: generator.series().len(), build: started.elapsed() }
    }

    /// One range query through the real path; returns the number of result series.
    fn run_query(data: &Dataset, query: &str, start_ms: i64, end_ms: i64, step_ms: i64) -> usize {
        run_query_timed(data, query, start_ms, end_ms, step_ms).0
    }

    /// [`run_query`], also returning the time spent in `Engine::select` and in evaluation
    /// (`FetchedData::new` + `eval_range`).
    fn run_query_timed(data: &Dataset, query: &str, start_ms: i64, end_ms: i64, step_ms: i64) -> (usize, Duration, Duration) {
        let started = Instant::now();
        let limits = QueryLimits::default();
        let expr = parse(query).expect("query parses");
        let plan = plan_range(&expr, start_ms, end_ms, step_ms, limits.lookback_ms);
        let fetched: Vec<Vec<FetchedSeries>> = data.rt.block_on(async {
            let mut out = Vec::with_capacity(plan.selectors.len());
            for selector in &plan.selectors {
                let series = data
                    .engine
                    .select(DEFAULT_TENANT, &selector.matchers, selector.min_t, selector.max_t)
                    .await
                    .expect("select");
                out.push(series.into_iter().map(|s| FetchedSeries { labels: s.labels, samples: s.samples }).collect());
            }
            out
        });
        let selected = started.elapsed();
        let fetched = FetchedData::new(&plan, fetched);
        let series = eval_range(&expr, start_ms, end_ms, step_ms, &fetched, &limits).expect("query evaluates").len();
        (series, selected, started.elapsed() - selected)
    }

    /// The plan of `query` and its selected series, for measuring evaluation alone.
    fn select_once(data: &Dataset, query: &str, start_ms: i64, end_ms: i64, step_ms: i64) -> (QueryPlan, Vec<Vec<FetchedSeries>>) {
        let expr = parse(query).expect("query parses");
        let plan = plan_range(&expr, start_ms, end_ms, step_ms, QueryLimits::default().lookback_ms);
        let fetched = data.rt.block_on(async {
            let mut out = Vec::with_capacity(plan.selectors.len());
            for selector in &plan.selectors {
                let series = data
                    .engine
                    .select(DEFAULT_TENANT, &selector.matchers, selector.min_t, selector.max_t)
                    .await
                    .expect("select");
                out.push(series.into_iter().map(|s| FetchedSeries { labels: s.labels, samples: s.samples }).collect());
            }
            out
        });
        (plan, fetched)
    }

    fn cases() -> Vec<(usize, i64)> {
        if std::env::var("SEXTANT_BENCH_SMOKE").as_deref() == Ok("1") {
            return vec![(5, 1)];
        }
        let all = vec![(100, 1), (100, 24), (1000, 1), (1000, 24)];
        match std::env::var("SEXTANT_BENCH_QUERY_CASES") {
            Ok(list) => list
                .split(',')
                .filter_map(|c| {
                    let (h, d) = c.trim().split_once('x')?;
                    Some((h.parse().ok()?, d.parse().ok()?))
                })
                .collect(),
            Err(_) => all,
        }
    }

    fn query_benches(c: &mut Criterion) {
        let smoke = std::env::var("SEXTANT_BENCH_SMOKE").as_deref() == Ok("1");
        for (hosts, hours) in cases() {
            let data = build(hosts, hours);
            println!(
                "data {hosts} hosts × {hours} h: {} series, {} samples, built in {:.1} s",
                data.series,
                data.samples,
                data.build.as_secs_f64()
            );
            // Grafana's step for a ~1,100-point panel, never below the scrape interval.
            let step_ms = if hours <= 1 { SCRAPE_INTERVAL_MS } else { 60_000 };
            let end_ms = data.end_ms;
            let start_ms = end_ms - hours * HOUR_MS;
            let mut group = c.benchmark_group(format!("{hosts}hosts_{hours}h"));
            if smoke {
                group.sample_size(10).warm_up_time(Duration::from_millis(200)).measurement_time(Duration::from_millis(500));
            } else {
                group.sample_size(10).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(5));
            }
            for (name, query) in QUERIES {
                // One unmeasured run: checks the answer is not empty and shows where time goes.
                let (series, select, eval) = run_query_timed(&data, query, start_ms, end_ms, step_ms);
                assert!(series > 0, "{query} returned no series");
                println!(
                    "{hosts}hosts_{hours}h/{name}: {series} result series, {} steps; first run: select {:.1} ms, evaluate {:.1} ms",
                    (end_ms - start_ms) / step_ms + 1,
                    select.as_secs_f64() * 1e3,
                    eval.as_secs_f64() * 1e3
                );
                group.bench_function(*name, |b| b.iter(|| run_query(&data, query, start_ms, end_ms, step_ms)));
                // Evaluation alone (`FetchedData::new` + `eval_range`) over data selected once:
                // select's cost and noise do not hide the evaluator's. The copy of the selected
                // series each iteration needs is criterion's setup, not measured.
                let (plan, selected) = select_once(&data, query, start_ms, end_ms, step_ms);
                let expr = parse(query).expect("query parses");
                let limits = QueryLimits::default();
                group.bench_function(format!("{name}_eval"), |b| {
                    b.iter_batched(
                        || selected.clone(),
                        |fetched| {
                            let fetched = FetchedData::new(&plan, fetched);
                            eval_range(&expr, start_ms, end_ms, step_ms, &fetched, &limits).expect("query evaluates").len()
                        },
                        criterion::BatchSize::LargeInput,
                    )
                });
            }
            group.finish();
            let Dataset { engine, rt, dir, .. } = data;
            rt.block_on(engine.close()).expect("close");
            let _ = std::fs::remove_dir_all(&dir);
        }
    }

    criterion_group!(benches, query_benches);
}
