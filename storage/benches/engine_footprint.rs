//! One-shot footprint measurements of the engine on the real filesystem (not a timing
//! benchmark, so not criterion; it asserts nothing beyond "no sample was refused"):
//!
//! 1. **bytes per sample on disk** — 12 h of node_exporter-shaped data (5 hosts × 505 series =
//!    2,525 series, 2,880 scrapes each ≈ 7.3 M samples, `sextant_core::testdata`) appended
//!    through `Engine::append` in remote-write-sized requests with a `ManualClock` that follows
//!    the data, `maintain()` every 30 min of data time (block span 2 h), then a clean shutdown
//!    (`flush()` then `close()`). Bytes = apparent size of the data directory, WAL included,
//!    divided by the samples accepted; also without the WAL. For node_exporter data, for the
//!    same without jitter, and for perfectly regular data; with 1 shard and with the default
//!    16 shards (series routed by fingerprint).
//! 2. **head memory per active series** — 101,000 series (200 hosts) for 1 h of data: the
//!    engine's own account (`status().memory_bytes / head_series`) and the process RSS delta
//!    (/proc/self/statm) over the same interval.
//! 3. **WAL replay time per GiB** — that run's WAL (closed without flush, so the WAL holds
//!    everything), reopened three times; median `Engine::open` time / WAL size.
//!
//! 4. (`PART=codec` only) raw Gorilla bytes/sample of the same data before zstd, and with
//!    every value made constant, to separate the timestamps' cost from the values'.
//!
//! Run: `cargo bench -p sextant-storage --bench engine_footprint`. Environment: `PART=size`,
//! `PART=memory` or `PART=codec` to run one part; `CASES=node_exporter/1,regular/16` to run some size cases;
//! `HOURS` (default 12), `MEMORY_HOSTS` (200), `MEMORY_HOURS` (1) to resize.

#[cfg(not(madsim))]
mod common;

#[cfg(madsim)]
fn main() {}

#[cfg(not(madsim))]
fn main() {
    footprint::main();
}

#[cfg(not(madsim))]
mod footprint {
    use std::collections::BTreeMap;
    use std::path::Path;
    use std::sync::Arc;
    use std::time::Instant;

    use sextant_core::testdata::{GeneratorConfig, ScrapeGenerator};
    use sextant_storage::engine::{Engine, EngineConfig};
    use sextant_storage::fs::real::RealFs;
    use sextant_storage::fs::FileSystem;
    use sextant_storage::wal::{FsyncPolicy, WalConfig};

    use crate::common::{data_dir, manual_clock, median, rss_bytes, runtime, send, tree_bytes, RequestStream, HOUR_MS, START_MS};

    const SEED: u64 = 2;
    const MAINTAIN_EVERY_MS: i64 = 30 * 60 * 1000;

    fn env_number(name: &str, default: u64) -> u64 {
        std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
    }

    fn config(shards: u32, fsync: FsyncPolicy) -> EngineConfig {
        EngineConfig {
            shard_ids: (0..shards).collect(),
            wal: WalConfig { fsync, ..WalConfig::default() },
            // Keep everything: the measurement is about what 12 h of data costs.
            retention_ms: None,
            ..EngineConfig::default()
        }
    }

    /// Bytes per file name ("chunks", "index", "meta", segment names folded to "segment").
    fn bytes_by_kind(path: &Path, out: &mut BTreeMap<String, u64>) {
        let Ok(entries) = std::fs::read_dir(path) else { return };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                bytes_by_kind(&path, out);
                continue;
            }
            let name = entry.file_name().to_string_lossy().into_owned();
            let inside_wal = path.components().any(|c| c.as_os_str() == "wal");
            let kind = if inside_wal {
                if path.parent().is_some_and(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("checkpoint"))) {
                    "wal checkpoint".to_string()
                } else {
                    "wal segment".to_string()
                }
            } else {
                name
            };
            *out.entry(kind).or_default() += entry.metadata().map(|m| m.len()).unwrap_or(0);
        }
    }

    fn size_run(name: &str, generator_config: GeneratorConfig, shards: u32, hours: u64) {
        let wanted = std::env::var("CASES").unwrap_or_default();
        if !wanted.is_empty() && !wanted.split(',').any(|w| w == format!("{name}/{shards}")) {
            return;
        }
        let dir = data_dir(&format!("footprint-{name}-{shards}"));
        let generator = ScrapeGenerator::node_exporter(generator_config.clone(), SEED);
        let rounds = generator_config.scrapes_for(hours as i64 * HOUR_MS);
        let mut stream = RequestStream::new(generator, shards, rounds, 4);
        let clock = manual_clock();
        let rt = runtime();
        let started = Instant::now();
        let (accepted, series, status, flushed) = rt.block_on(async {
            let fs: Arc<dyn FileSystem> = Arc::new(RealFs::new(&dir));
            let engine = Engine::open(fs, clock.clone(), config(shards, FsyncPolicy::Always)).await.expect("open");
            let (mut accepted, mut series) = (0u64, 0u64);
            let mut maintain_at = START_MS + MAINTAIN_EVERY_MS;
            while let Some(request) = stream.next_request() {
                let max_t = request.max_t;
                let report = send(&engine, &clock, request).await;
                accepted += report.accepted;
                series += report.series_created;
                if max_t >= maintain_at {
                    engine.maintain().await.expect("maintain");
                    maintain_at += MAINTAIN_EVERY_MS;
                }
            }
            let status = engine.status().await;
            engine.flush().await.expect("flush");
            // After the flush the head holds no samples: what is left is the open blocks'
            // in-memory indexes and the (empty) head series.
            let flushed = engine.status().await;
            engine.close().await.expect("close");
            (accepted, series, status, flushed)
        });
        let seconds = started.elapsed().as_secs_f64();
        let total = tree_bytes(&dir);
        let wal = tree_bytes(&dir.join("wal"));
        let mut kinds = BTreeMap::new();
        bytes_by_kind(&dir, &mut kinds);
        let per_sample = |bytes: u64| bytes as f64 / accepted as f64;
        println!(
            "size {name:<24} shards {shards:>2}: {series} series, {accepted} samples in {seconds:.1} s; \
             {:.3} B/sample with WAL, {:.3} without ({total} bytes, WAL {wal})",
            per_sample(total),
            per_sample(total - wal),
        );
        println!(
            "    engine memory account before flush {:.0} B/series ({} blocks); after flush {:.0} B/series ({} blocks, {} head series)",
            status.memory_bytes as f64 / series as f64,
            status.blocks,
            flushed.memory_bytes as f64 / series as f64,
            flushed.blocks,
            flushed.head_series,
        );
        let breakdown: Vec<String> = kinds.iter().map(|(k, b)| format!("{k} {b} ({:.3} B/sample)", per_sample(*b))).collect();
        println!("    breakdown: {}", breakdown.join(", "));
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn memory_and_replay(hosts: usize, hours: u64) {
        let dir = data_dir("footprint-memory");
        let generator_config = GeneratorConfig::node_exporter(hosts, START_MS);
        let generator = ScrapeGenerator::node_exporter(generator_config.clone(), SEED);
        let rounds = generator_config.scrapes_for(hours as i64 * HOUR_MS);
        let shards = 16;
        let mut stream = RequestStream::new(generator, shards, rounds, 4);
        let clock = manual_clock();
        let rt = runtime();
        let fsync = FsyncPolicy::Interval { interval_ms: 1000 };
        let fs: Arc<dyn FileSystem> = Arc::new(RealFs::new(&dir));
        let rss_before = rss_bytes();
        let (accepted, status, rss_after, append_seconds) = rt.block_on(async {
            let engine = Engine::open(fs.clone(), clock.clone(), config(shards, fsync)).await.expect("open");
            let started = Instant::now();
            let mut accepted = 0u64;
            while let Some(request) = stream.next_request() {
                accepted += send(&engine, &clock, request).await.accepted;
            }
            let seconds = started.elapsed().as_secs_f64();
            let status = engine.status().await;
            let rss_after = rss_bytes();
            engine.close().await.expect("close");
            (accepted, status, rss_after, seconds)
        });
        let series = status.head_series as f64;
        println!(
            "memory: {} series, {accepted} samples ({:.0} per series) appended in {append_seconds:.1} s \
             (fsync interval, 16 shards, {:.0} samples/s)",
            status.head_series,
            accepted as f64 / series,
            accepted as f64 / append_seconds,
        );
        println!(
            "memory: engine account {:.0} B/series ({} bytes); RSS delta {:.0} B/series ({} → {} bytes)",
            status.memory_bytes as f64 / series,
            status.memory_bytes,
            (rss_after.saturating_sub(rss_before)) as f64 / series,
            rss_before,
            rss_after,
        );
        drop(stream);

        let wal_bytes = tree_bytes(&dir.join("wal"));
        let mut seconds = Vec::new();
        for _ in 0..3 {
            let elapsed = rt.block_on(async {
                let started = Instant::now();
                let engine = Engine::open(fs.clone(), clock.clone(), config(shards, fsync)).await.expect("reopen");
                let elapsed = started.elapsed().as_secs_f64();
                let status = engine.status().await;
                assert_eq!(status.head_series as f64, series, "replay restores every series");
                engine.close().await.expect("close");
                elapsed
            });
            seconds.push(elapsed);
        }
        let gib = wal_bytes as f64 / f64::from(1u32 << 30);
        let runs = seconds.iter().map(|s| format!("{s:.2}")).collect::<Vec<_>>().join(", ");
        let replay_seconds = median(&mut seconds);
        println!(
            "replay: WAL {wal_bytes} bytes ({:.1} B/sample, {accepted} samples, {} series); open took {runs} s; \
             median {replay_seconds:.2} s = {:.1} s/GiB, {:.2} M samples/s",
            wal_bytes as f64 / accepted as f64,
            status.head_series,
            replay_seconds / gib,
            accepted as f64 / replay_seconds / 1e6,
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Raw Gorilla bytes per sample (120-sample chunks, before zstd and without the index)
    /// of the generated data, and the same with every value replaced by a constant, which
    /// leaves the timestamps' share. Separates what timestamps cost from what values cost.
    fn codec_split(name: &str, generator_config: GeneratorConfig, hours: u64) {
        use sextant_core::chunk::{encode_all, CHUNK_SAMPLES_TARGET};
        let mut generator = ScrapeGenerator::node_exporter(generator_config.clone(), SEED);
        let per_host = generator.series_per_host();
        let mut series: Vec<Vec<(i64, f64)>> = vec![Vec::new(); generator.series().len()];
        for _ in 0..generator_config.scrapes_for(hours as i64 * HOUR_MS) {
            for scrape in generator.next_round() {
                for (i, v) in scrape.values.iter().enumerate() {
                    series[scrape.host * per_host + i].push((scrape.t, *v));
                }
            }
        }
        let (mut samples, mut full_bytes, mut timestamp_bytes) = (0usize, 0usize, 0usize);
        for samples_of_series in &series {
            for chunk in samples_of_series.chunks(CHUNK_SAMPLES_TARGET) {
                samples += chunk.len();
                full_bytes += encode_all(chunk).expect("encode").len();
                let constant: Vec<(i64, f64)> = chunk.iter().map(|(t, _)| (*t, 0.0)).collect();
                timestamp_bytes += encode_all(&constant).expect("encode").len();
            }
        }
        println!(
            "codec {name:<24}: raw Gorilla {:.3} B/sample; with constant values (timestamps' share) {:.3} B/sample",
            full_bytes as f64 / samples as f64,
            timestamp_bytes as f64 / samples as f64,
        );
    }

    pub fn main() {
        let part = std::env::var("PART").unwrap_or_default();
        let hours = env_number("HOURS", 12);
        if part == "codec" {
            let hosts = 5;
            let no_jitter = GeneratorConfig { jitter_ms_max: 0, ..GeneratorConfig::node_exporter(hosts, START_MS) };
            codec_split("node_exporter", GeneratorConfig::node_exporter(hosts, START_MS), hours);
            codec_split("node_exporter_no_jitter", no_jitter, hours);
            codec_split("regular", GeneratorConfig::regular(hosts, START_MS), hours);
            return;
        }
        if part.is_empty() || part == "size" {
            let hosts = 5;
            let no_jitter = GeneratorConfig { jitter_ms_max: 0, ..GeneratorConfig::node_exporter(hosts, START_MS) };
            for shards in [1, 16] {
                size_run("node_exporter", GeneratorConfig::node_exporter(hosts, START_MS), shards, hours);
                size_run("node_exporter_no_jitter", no_jitter.clone(), shards, hours);
                size_run("regular", GeneratorConfig::regular(hosts, START_MS), shards, hours);
            }
        }
        if part.is_empty() || part == "memory" {
            memory_and_replay(env_number("MEMORY_HOSTS", 200) as usize, env_number("MEMORY_HOURS", 1));
        }
    }
}
