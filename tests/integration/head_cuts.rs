#![cfg(not(madsim))]
//! Goal: the head goes to compressed blocks when it should, not only when the maintenance
//! clock ticks. A backfill (or a fast catch-up after an outage) can add hours of data time in
//! seconds; the head must be cut once it spans 1.5 block spans even with a one-hour maintenance
//! interval. And a clean shutdown (`--flush-on-shutdown`, the default) writes the whole head to
//! blocks, so the next start replays next to nothing, with every sample still there; with the
//! flag off the WAL carries the data instead. Both paired with reads of what was written.
//!
//! Method: `server::Server` (what `sextant serve` runs) in process on real tokio, a temporary
//! data directory and 127.0.0.1 ephemeral ports. Writes go through the node's ingest path;
//! reads through `Engine::select`. Deadlines only bound a hung run; nothing asserts on elapsed
//! time.


use sextant::config::ServeConfig;
use sextant::remote_write::{Label, Sample, TimeSeries, WriteRequest};
use sextant::server::Server;
use sextant_core::clock::Clock;
use sextant_core::matcher::{MatchOp, Matcher};
use sextant_storage::clock::SystemClock;
use sextant_storage::engine::Engine;
use tokio::net::TcpListener;

use crate::wait::eventually;

const TENANT: &str = "default";
const HOUR_MS: i64 = 3_600_000;
/// One sample a minute per series over this much data time: more than the 3 h (1.5 × 2 h
/// block span) at which the head is due for a cut.
const BACKFILL_MS: i64 = 4 * HOUR_MS;
const SERIES: u32 = 20;

fn config(dir: &std::path::Path, flush_on_shutdown: bool) -> ServeConfig {
    // An hour between ticks: within this test only a write can start a pass.
    ServeConfig { data_dir: dir.to_path_buf(), maintain_interval_ms: HOUR_MS, flush_on_shutdown, ..ServeConfig::default() }
}

async fn start(config: ServeConfig) -> Server {
    let http = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let grpc = TcpListener::bind("127.0.0.1:0").await.unwrap();
    Server::start_with_listeners(config, http, grpc).await.expect("server starts")
}

async fn open_engine(server: &Server) -> Engine {
    eventually("the node to be ready", || async { server.node().readiness().ok() }).await;
    server.node().engine().expect("ready means open")
}

/// `SERIES` series, one sample a minute from `end - BACKFILL_MS` to `end`, value = series ×
/// 1e6 + minute, in time order (one request per hour of data, as a catching-up sender does).
fn backfill(end: i64) -> Vec<WriteRequest> {
    let start = end - BACKFILL_MS;
    let mut requests = Vec::new();
    let mut from = start;
    while from <= end {
        let to = (from + HOUR_MS).min(end + 1);
        let timeseries = (0..SERIES)
            .map(|s| TimeSeries {
                labels: vec![Label { name: "__name__".into(), value: "backfilled".into() }, Label { name: "series".into(), value: format!("s{s}") }],
                samples: (from..to).step_by(60_000).map(|t| Sample { timestamp: t, value: f64::from(s) * 1e6 + ((t - start) / 60_000) as f64 }).collect(),
                exemplars: vec![],
                histograms: vec![],
            })
            .collect();
        requests.push(WriteRequest { timeseries, metadata: vec![] });
        from = to;
    }
    requests
}

/// Every stored (series, t, value) of the tenant, in order.
async fn stored(engine: &Engine) -> Vec<(String, i64, u64)> {
    let all = vec![Matcher::new(MatchOp::RegexMatch, "__name__", ".+").unwrap()];
    let mut out = Vec::new();
    for s in engine.select(TENANT, &all, i64::MIN, i64::MAX).await.unwrap() {
        out.extend(s.samples.iter().map(|x| (s.labels.to_string(), x.t, x.v.to_bits())));
    }
    out
}

fn expected(requests: &[WriteRequest]) -> Vec<(String, i64, u64)> {
    let mut out = Vec::new();
    for r in requests {
        for ts in &r.timeseries {
            let labels = format!("backfilled{{series=\"{}\"}}", ts.labels[1].value);
            out.extend(ts.samples.iter().map(|s| (labels.clone(), s.timestamp, s.value.to_bits())));
        }
    }
    out.sort();
    out
}

async fn write_all(server: &Server, requests: &[WriteRequest]) {
    for (i, r) in requests.iter().enumerate() {
        let outcome = server.node().ingest(TENANT, r.clone()).await;
        assert_eq!(outcome.status, 204, "request {i}: {}", outcome.message);
    }
}

fn dir_bytes(path: &std::path::Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(path) else { return 0 };
    entries
        .map(|e| e.unwrap())
        .map(|e| if e.file_type().unwrap().is_dir() { dir_bytes(&e.path()) } else { e.metadata().unwrap().len() })
        .sum()
}

// Goal: 4 h of data written in well under a second is cut into a block long before the
// one-hour tick, and the cut loses nothing: every written sample reads back, bit for bit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backfill_is_cut_without_waiting_for_the_tick() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(config(dir.path(), true)).await;
    let engine = open_engine(&server).await;
    let requests = backfill(SystemClock::new().now_wall_ms());
    let before = engine.status().await;
    assert_eq!(before.blocks, 0, "a fresh node has no blocks");
    write_all(&server, &requests).await;
    let status = eventually("a block cut by the write-triggered pass", || async { Some(engine.status().await).filter(|s| s.blocks > 0) }).await;
    assert!(status.block_bytes > 0, "{status:?}");
    let mut got = stored(&engine).await;
    got.sort();
    assert_eq!(got, expected(&requests), "the cut keeps every sample");
    server.shutdown().await.unwrap();
}

// Goal: a clean shutdown flushes the head — the restarted node replays (almost) no WAL records
// and has the data in blocks; with --flush-on-shutdown=false the same writes come back from the
// WAL instead. Either way every sample reads back after the restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_shutdown_flushes_the_head_unless_told_not_to() {
    let mut wal_after = Vec::new();
    for flush in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let server = start(config(dir.path(), flush)).await;
        let engine = open_engine(&server).await;
        // One hour of data: not due for a cut, so only the shutdown can move it to blocks.
        let requests: Vec<WriteRequest> = backfill(SystemClock::new().now_wall_ms()).split_off(3);
        write_all(&server, &requests).await;
        assert_eq!(engine.status().await.blocks, 0, "flush={flush}: one hour is not due for a cut");
        drop(engine);
        server.shutdown().await.unwrap();
        wal_after.push(dir_bytes(&dir.path().join("wal")));

        let server = start(config(dir.path(), flush)).await;
        let engine = open_engine(&server).await;
        let status = engine.status().await;
        if flush {
            assert!(status.blocks > 0, "flush=true: the head was written to blocks: {status:?}");
            assert_eq!(status.head_series, 0, "flush=true: nothing left to replay into the head: {status:?}");
        } else {
            assert_eq!(status.blocks, 0, "flush=false: no blocks: {status:?}");
            assert_eq!(status.head_series, u64::from(SERIES), "flush=false: the WAL replays every series: {status:?}");
        }
        let mut got = stored(&engine).await;
        got.sort();
        assert_eq!(got, expected(&requests), "flush={flush}: every sample survives the restart");
        drop(engine);
        server.shutdown().await.unwrap();
    }
    assert!(wal_after[0] < wal_after[1], "the flushed WAL is smaller: {} bytes with flush, {} without", wal_after[0], wal_after[1]);
}
