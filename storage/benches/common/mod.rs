//! Helpers shared by the engine benchmarks: remote-write-sized requests built from
//! `sextant_core::testdata`, data directories on the real disk, directory sizes and RSS.
//! Normal build only (RealFs and /proc do not exist under madsim).

#![allow(dead_code)]

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sextant_core::clock::ManualClock;
use sextant_core::sample::{Sample, TimestampMs};
use sextant_core::series::{fingerprint, DEFAULT_TENANT};
use sextant_core::testdata::{HostScrape, ScrapeGenerator};
use sextant_storage::engine::{AppendReport, Engine, ShardId, WriteSeries};

/// 2026-11-25 00:00:00 UTC: a fixed start, so runs are reproducible.
pub const START_MS: TimestampMs = 1_795_996_800_000;
/// The delay between a scrape and its arrival at the engine, as the clock sees it.
pub const ARRIVAL_DELAY_MS: i64 = 1_000;
pub const HOUR_MS: i64 = 3_600_000;

/// A temporary data directory on the real disk under cargo's target tmp dir (not /tmp, which
/// may be tmpfs where fsync costs nothing). Emptied first.
pub fn data_dir(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create bench data dir");
    dir
}

/// Apparent size in bytes (sum of file lengths) of everything under `path`.
pub fn tree_bytes(path: &Path) -> u64 {
    let Ok(meta) = std::fs::symlink_metadata(path) else { return 0 };
    if !meta.is_dir() {
        return meta.len();
    }
    std::fs::read_dir(path).map(|entries| entries.flatten().map(|e| tree_bytes(&e.path())).sum()).unwrap_or(0)
}

/// Resident set size of this process from /proc/self/statm (pages of 4 KiB on this machine).
pub fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    statm.split_whitespace().nth(1).and_then(|pages| pages.parse::<u64>().ok()).unwrap_or(0) * 4096
}

/// Median of a few measurements.
pub fn median(values: &mut [f64]) -> f64 {
    assert!(!values.is_empty());
    values.sort_by(|a, b| a.total_cmp(b));
    let middle = values.len() / 2;
    if values.len() % 2 == 1 {
        values[middle]
    } else {
        (values[middle - 1] + values[middle]) / 2.0
    }
}

/// A remote-write request split by shard: one sample per series entry, as Prometheus sends.
pub struct Request {
    pub per_shard: Vec<(ShardId, Vec<WriteSeries>)>,
    pub samples: usize,
    pub max_t: TimestampMs,
}

/// Turns generator rounds into requests of whole host scrapes, `scrapes_per_request` scrapes
/// each (4 × 505 = 2,020 samples for node_exporter: a typical remote-write request), in time
/// order, for a fixed number of rounds.
pub struct RequestStream {
    pub generator: ScrapeGenerator,
    shard_of: Vec<ShardId>,
    shard_count: u32,
    queue: VecDeque<HostScrape>,
    rounds_max: u64,
    scrapes_per_request: usize,
}

impl RequestStream {
    pub fn new(generator: ScrapeGenerator, shard_count: u32, rounds_max: u64, scrapes_per_request: usize) -> Self {
        // Routing by fingerprint, as the node does.
        let shard_of =
            generator.series().iter().map(|s| (fingerprint(DEFAULT_TENANT, &s.labels).0 % u64::from(shard_count)) as ShardId).collect();
        RequestStream { generator, shard_of, shard_count, queue: VecDeque::new(), rounds_max, scrapes_per_request }
    }

    pub fn next_request(&mut self) -> Option<Request> {
        while self.queue.len() < self.scrapes_per_request && self.generator.rounds() < self.rounds_max {
            let mut round = self.generator.next_round();
            round.sort_by_key(|scrape| scrape.t);
            self.queue.extend(round);
        }
        if self.queue.is_empty() {
            return None;
        }
        let mut per_shard: Vec<Vec<WriteSeries>> = (0..self.shard_count).map(|_| Vec::new()).collect();
        let (mut samples, mut max_t) = (0, TimestampMs::MIN);
        let per_host = self.generator.series_per_host();
        for _ in 0..self.scrapes_per_request {
            let Some(scrape) = self.queue.pop_front() else { break };
            max_t = max_t.max(scrape.t);
            for (i, (series, v)) in self.generator.host_series(scrape.host).iter().zip(&scrape.values).enumerate() {
                let shard = self.shard_of[scrape.host * per_host + i];
                per_shard[shard as usize].push(WriteSeries { labels: series.labels.clone(), samples: vec![Sample::new(scrape.t, *v)] });
                samples += 1;
            }
        }
        let per_shard = per_shard.into_iter().enumerate().filter(|(_, s)| !s.is_empty()).map(|(id, s)| (id as ShardId, s)).collect();
        Some(Request { per_shard, samples, max_t })
    }
}

/// Sends one request: each shard's part concurrently (one append call per shard, as the
/// node's router would), after moving the clock to the request's arrival time.
pub async fn send(engine: &Engine, clock: &ManualClock, request: Request) -> AppendReport {
    clock.set_wall_ms(request.max_t + ARRIVAL_DELAY_MS);
    let mut handles = Vec::with_capacity(request.per_shard.len());
    for (shard, series) in request.per_shard {
        let engine = engine.clone();
        handles.push(tokio::spawn(async move { engine.append(shard, DEFAULT_TENANT, series).await }));
    }
    let mut total = AppendReport::default();
    for handle in handles {
        let report = handle.await.expect("append task").expect("append");
        assert_eq!(report.refused_permanent + report.refused_retryable, 0, "refusals: {:?}", report.refusals);
        total.accepted += report.accepted;
        total.series_created += report.series_created;
    }
    total
}

pub fn manual_clock() -> Arc<ManualClock> {
    Arc::new(ManualClock::new(START_MS))
}

/// A single-threaded runtime: the engine's work runs on one core; RealFs's blocking calls
/// (write, fsync) run on tokio's blocking threads.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime")
}
