//! Goal: the series limits survive a restart. The active-series tracker lives in memory; a
//! node restarted on the same disk must count the series its head holds again (replayed from
//! the WAL), or each restart admits another full limit of new series (the simulator's pinned
//! finding sim/regressions/limits-reset-on-restart.json).
//!
//! Method: one node on a simulated disk with a manual clock fills a metric to its per-metric
//! limit through the ingest path; the node is restarted on the same disk (a clean close, and a
//! power cut with fsync `always`), and the restarted node must refuse a new series of that
//! metric while the existing series and other metrics keep ingesting. Stored data is read back
//! through `Engine::select`, so every write outcome is paired with what storage holds.

use std::sync::Arc;

use sextant::config::{IngestLimits, ServeConfig};
use sextant::node::{EngineSlot, Node};
use sextant::remote_write::{Label, Sample, TimeSeries, WriteRequest};
use sextant_core::clock::ManualClock;
use sextant_core::matcher::{MatchOp, Matcher};
use sextant_storage::engine::{Engine, EngineConfig};
use sextant_storage::fs::sim::SimFs;
use sextant_storage::wal::WalConfig;

const NOW: i64 = 1_700_000_000_000;
const TENANT: &str = "default";
const LIMIT: u64 = 4;

fn engine_config() -> EngineConfig {
    EngineConfig { shard_ids: vec![0, 1, 2, 3], wal: WalConfig { segment_bytes: 1 << 20, ..WalConfig::default() }, retention_ms: None, ..EngineConfig::default() }
}

async fn start(fs: &SimFs, clock: &Arc<ManualClock>) -> (Arc<Node>, Engine) {
    let limits = IngestLimits { series_per_metric_max: LIMIT, ..IngestLimits::default() };
    let node = Node::new(ServeConfig { limits, ..ServeConfig::default() }, clock.clone(), None);
    let engine = Engine::open(Arc::new(fs.clone()), clock.clone(), engine_config()).await.expect("engine opens");
    node.set_engine_ready(engine.clone()).await;
    (node, engine)
}

fn one(metric: &str, instance: u64, t: i64) -> WriteRequest {
    let labels = [("__name__", metric.to_string()), ("instance", format!("i{instance}"))];
    WriteRequest {
        timeseries: vec![TimeSeries {
            labels: labels.iter().map(|(n, v)| Label { name: n.to_string(), value: v.clone() }).collect(),
            samples: vec![Sample { timestamp: t, value: instance as f64 }],
            exemplars: vec![],
            histograms: vec![],
        }],
        metadata: vec![],
    }
}

/// Stored (series, t) of the tenant.
async fn stored(engine: &Engine) -> Vec<(String, i64)> {
    let all = vec![Matcher::new(MatchOp::RegexMatch, "__name__", ".+").unwrap()];
    let mut out = Vec::new();
    for s in engine.select(TENANT, &all, i64::MIN, i64::MAX).await.unwrap() {
        out.extend(s.samples.iter().map(|x| (s.labels.to_string(), x.t)));
    }
    out
}

#[derive(Clone, Copy, Debug)]
enum Restart {
    Close,
    PowerCut,
}

async fn check(restart: Restart) {
    let fs = SimFs::new(11);
    let clock = Arc::new(ManualClock::new(NOW));
    let (node, engine) = start(&fs, &clock).await;
    for instance in 0..LIMIT {
        let outcome = node.ingest(TENANT, one("bomb", instance, NOW)).await;
        assert_eq!(outcome.status, 204, "{restart:?}: series {instance} under the limit: {}", outcome.message);
    }
    let refused = node.ingest(TENANT, one("bomb", LIMIT, NOW)).await;
    assert_eq!(refused.status, 400, "{restart:?}: before the restart the limit holds: {}", refused.message);
    assert_eq!(node.active_series(TENANT, Some("bomb")), LIMIT);

    match restart {
        Restart::Close => {
            node.take_engine_for_close().expect("engine ready").close().await.expect("clean close");
            drop(engine);
        }
        Restart::PowerCut => {
            drop(node.take_engine_for_close());
            drop(engine);
            fs.crash();
        }
    }
    drop(node);
    clock.set_wall_ms(NOW + 1_000);
    let (node, engine) = start(&fs, &clock).await;
    assert_eq!(node.active_series(TENANT, Some("bomb")), LIMIT, "{restart:?}: the restarted tracker counts the head's series");
    assert_eq!(node.active_series(TENANT, None), LIMIT, "{restart:?}");

    let refused = node.ingest(TENANT, one("bomb", LIMIT + 1, NOW + 1_000)).await;
    assert_eq!(refused.status, 400, "{restart:?}: a new series past the limit is refused after the restart: {}", refused.message);
    assert!(refused.message.contains("has reached its limit of 4 active series"), "{restart:?}: {}", refused.message);
    let existing = node.ingest(TENANT, one("bomb", 0, NOW + 1_000)).await;
    assert_eq!(existing.status, 204, "{restart:?}: an existing series keeps ingesting: {}", existing.message);
    let other = node.ingest(TENANT, one("other", 0, NOW + 1_000)).await;
    assert_eq!(other.status, 204, "{restart:?}: another metric keeps ingesting: {}", other.message);

    let mut expected: Vec<(String, i64)> = (0..LIMIT).map(|i| (format!("bomb{{instance=\"i{i}\"}}"), NOW)).collect();
    expected.insert(1, ("bomb{instance=\"i0\"}".to_string(), NOW + 1_000));
    expected.push(("other{instance=\"i0\"}".to_string(), NOW + 1_000));
    assert_eq!(stored(&engine).await, expected, "{restart:?}: storage holds the limit's series and nothing refused");
    node.set_engine(EngineSlot::Closing);
}

#[tokio::test]
async fn limits_hold_across_a_clean_restart() {
    check(Restart::Close).await;
}

#[tokio::test]
async fn limits_hold_across_a_power_cut() {
    check(Restart::PowerCut).await;
}
