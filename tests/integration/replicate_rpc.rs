//! Goal: the secondary's side of the replication RPCs refuses what it must with typed gRPC
//! errors and applies nothing of a refused batch: a sender that is not the shard's primary, a
//! wrong epoch, a shard this node is primary of, a position in another seq space, bad CRCs
//! (record and preamble), a gap; Import refuses a series of another shard and replaces a
//! conflicting value with the primary's; Digest and Export check their arguments and Export
//! pages cover a shard exactly once.
//! Method: both builds. A "primary" engine and a node (id 2) whose engine is the secondary,
//! both on the simulated filesystem with a manual clock; the node's route table is set by hand
//! (shard 0: primary 1, secondary 2, epoch 3). The `replicate::handle_*` functions are called
//! directly (they are what the Data service runs) and the secondary's digest is compared with
//! the primary's.

use std::sync::Arc;

use sextant::config::{ClusterConfig, ServeConfig};
use sextant::node::{EngineSlot, Node};
use sextant::replicate::{handle_digest, handle_export, handle_import, handle_position, handle_replicate, tail_to_pb};
use sextant::route::{pb, RouteTable, ShardRoute};
use sextant::shard::shard_for;
use sextant_core::clock::ManualClock;
use sextant_core::labels::Labels;
use sextant_core::sample::Sample;
use sextant_core::series::fingerprint;
use sextant_storage::engine::{Engine, EngineConfig, ShardDigest, WriteSeries};
use sextant_storage::fs::sim::SimFs;
use tonic::Code;

const NOW: i64 = 1_700_000_000_000;
const SHARDS: u32 = 4;

struct Harness {
    node: Arc<Node>,
    secondary: Engine,
    primary: Engine,
}

async fn engine(seed: u64, clock: Arc<ManualClock>) -> Engine {
    let config = EngineConfig { shard_ids: (0..SHARDS).collect(), retention_ms: None, ..EngineConfig::default() };
    Engine::open(Arc::new(SimFs::new(seed)), clock, config).await.expect("engine opens")
}

async fn harness() -> Harness {
    let clock = Arc::new(ManualClock::new(NOW));
    let config = ServeConfig { cluster: ClusterConfig { node_id: 2, ..ClusterConfig::default() }, ..ServeConfig::default() };
    let node = Node::new(config, clock.clone(), None);
    let secondary = engine(1, clock.clone()).await;
    node.set_engine(EngineSlot::Ready(secondary.clone()));
    let mut table = RouteTable { version: 7, me: 2, ..RouteTable::default() };
    table.shards.insert(0, ShardRoute { primary: Some(1), secondary: Some(2), epoch: 3 });
    table.shards.insert(1, ShardRoute { primary: Some(2), secondary: Some(1), epoch: 1 });
    table.shards.insert(2, ShardRoute { primary: Some(1), secondary: Some(2), epoch: 1 });
    table.shards.insert(3, ShardRoute { primary: Some(2), secondary: None, epoch: 1 });
    node.router().set_table(table);
    Harness { node, secondary, primary: engine(2, clock).await }
}

/// Labels of the `n`th series that belongs to `shard`.
fn series_in(shard: u32, n: usize) -> Labels {
    (0..).map(|i| Labels::from_pairs(&[("__name__", "m"), ("i", &i.to_string())])).filter(|l| shard_for(fingerprint("default", l), SHARDS) == shard).nth(n).unwrap()
}

async fn digest(engine: &Engine, shard: u32) -> ShardDigest {
    engine.shard_digest(shard, i64::MIN, i64::MAX).await.unwrap()
}

fn position(shard: u32, epoch: u64, from_node: u64, set: Option<u64>) -> pb::PositionRequest {
    pb::PositionRequest { shard, epoch, from_node, set: set.is_some(), applied_seq: set }
}

fn check_error<T: std::fmt::Debug>(name: &str, result: Result<T, tonic::Status>, code: Code, needle: &str) {
    let status = result.expect_err(name);
    assert_eq!(status.code(), code, "{name}: {status:?}");
    assert!(status.message().contains(needle), "{name}: {:?} should contain {needle:?}", status.message());
}

// Goal: see the module docs (Replicate and Position).
#[tokio::test]
async fn replicate_refuses_bad_batches_and_applies_good_ones() {
    let h = harness().await;
    for n in 0..3 {
        let write = WriteSeries { labels: series_in(0, n), samples: (0..5).map(|k| Sample::new(NOW - 10_000 + k * 1000, (n * 10 + k as usize) as f64)).collect() };
        h.primary.append(0, "default", vec![write]).await.unwrap();
    }
    let tail = h.primary.wal_tail(0, 0, 1 << 20).await.unwrap();
    assert!(tail.records.len() >= 2, "{} records", tail.records.len());
    let good = tail_to_pb(&tail, 3, 1);
    let empty = digest(&h.secondary, 0).await;

    // Before any position in (node 1, epoch 3)'s seq space: catch up first.
    check_error("no position yet", handle_replicate(&h.node, good.clone()).await, Code::OutOfRange, "catch up first");
    // Role and epoch checks, for Replicate and Position alike.
    let cases: Vec<(&str, u32, u64, u64, &str)> = vec![
        ("an older epoch", 0, 2, 1, "at epoch 2"),
        ("not from the primary", 0, 3, 3, "from node 3"),
        ("this node is the primary", 1, 1, 1, "replication of shard 1"),
        ("the shard has no secondary", 3, 1, 1, "secondary None"),
        ("a shard the map lacks", 9, 1, 1, "no shard 9"),
    ];
    for (name, shard, epoch, from, needle) in cases {
        let mut request = good.clone();
        (request.shard, request.epoch, request.from_node) = (shard, epoch, from);
        check_error(name, handle_replicate(&h.node, request).await, Code::FailedPrecondition, needle);
        check_error(name, handle_position(&h.node, position(shard, epoch, from, Some(0))).await, Code::FailedPrecondition, needle);
    }
    assert_eq!(digest(&h.secondary, 0).await, empty, "nothing applied by refused calls");

    let set = handle_position(&h.node, position(0, 3, 1, Some(0))).await.unwrap();
    assert_eq!((set.applied_seq, set.source_primary, set.source_epoch), (Some(0), Some(1), 3));
    let read = handle_position(&h.node, position(0, 3, 1, None)).await.unwrap();
    assert_eq!(read, set, "a read answers what was set");
    // The position is in (node 1, epoch 3)'s space only: node 1 at epoch 4 would have to sync.
    let other_space = handle_position(&h.node, position(2, 1, 1, None)).await.unwrap();
    assert_eq!(other_space.source_primary, None, "shard 2 has no position");

    // Damaged batches: nothing applied, typed errors.
    let mut bad_crc = good.clone();
    bad_crc.records[0].crc32 ^= 1;
    check_error("bad record CRC", handle_replicate(&h.node, bad_crc).await, Code::DataLoss, "CRC-32");
    let mut bad_preamble = good.clone();
    bad_preamble.series_crc32 ^= 1;
    check_error("bad preamble CRC", handle_replicate(&h.node, bad_preamble).await, Code::DataLoss, "preamble");
    let mut gap = good.clone();
    gap.records.remove(0);
    check_error("gap", handle_replicate(&h.node, gap).await, Code::OutOfRange, "skip");
    assert_eq!(digest(&h.secondary, 0).await, empty, "nothing applied by damaged batches");

    // The good batch applies; again it is idempotent.
    let reply = handle_replicate(&h.node, good.clone()).await.unwrap();
    assert_eq!(reply.applied_through, tail.last_seq());
    assert_eq!(reply.samples_accepted, 15);
    assert_eq!(digest(&h.secondary, 0).await, digest(&h.primary, 0).await);
    let last = tail.last_seq().unwrap();
    let again = tail_to_pb(&h.primary.wal_tail(0, last - 1, 1 << 20).await.unwrap(), 3, 1);
    assert_eq!(again.records.len(), 1);
    let reply = handle_replicate(&h.node, again).await.unwrap();
    assert_eq!((reply.samples_accepted, reply.applied_through), (0, tail.last_seq()), "a re-shipped record changes nothing");
    assert_eq!(digest(&h.secondary, 0).await, digest(&h.primary, 0).await);
}

fn tenant_series(labels: &Labels, samples: &[(i64, f64)]) -> pb::TenantSeries {
    pb::TenantSeries {
        tenant: "default".into(),
        labels: labels.iter().map(|l| pb::Label { name: l.name.clone(), value: l.value.clone() }).collect(),
        samples: samples.iter().map(|(t, v)| pb::Sample { t: *t, v: *v }).collect(),
    }
}

// Goal: see the module docs (Import, Digest, Export).
#[tokio::test]
async fn import_digest_and_export_check_input_and_primary_wins() {
    let h = harness().await;
    let a = series_in(0, 0);
    let other = series_in(1, 0);
    let import = |series: Vec<pb::TenantSeries>| pb::ImportRequest { shard: 0, epoch: 3, from_node: 1, series };

    check_error("a series of another shard", handle_import(&h.node, import(vec![tenant_series(&other, &[(NOW, 1.0)])])).await, Code::InvalidArgument, "belongs to shard 1");
    let mut bad_tenant = tenant_series(&a, &[(NOW, 1.0)]);
    bad_tenant.tenant = "no spaces allowed".into();
    check_error("a bad tenant", handle_import(&h.node, import(vec![bad_tenant])).await, Code::InvalidArgument, "tenant");
    check_error("from a non-primary", handle_import(&h.node, pb::ImportRequest { from_node: 3, ..import(vec![]) }).await, Code::FailedPrecondition, "from node 3");
    assert_eq!(digest(&h.secondary, 0).await.samples, 0, "nothing imported by refused calls");

    // The secondary holds 2.0 at NOW; the primary's 1.0 replaces it, the rest is a union.
    h.secondary.import(0, "default", vec![WriteSeries { labels: a.clone(), samples: vec![Sample::new(NOW - 1000, 5.0), Sample::new(NOW, 2.0)] }]).await.unwrap();
    let reply = handle_import(&h.node, import(vec![tenant_series(&a, &[(NOW, 1.0), (NOW + 1000, 3.0)])])).await.unwrap();
    assert_eq!((reply.accepted, reply.conflicts_replaced), (2, 1), "{reply:?}");
    let stored: Vec<(i64, f64)> = h.secondary.shard_export(0, i64::MIN, i64::MAX, None, 1000).await.unwrap().series.remove(0).1.iter().map(|s| (s.t, s.v)).collect();
    assert_eq!(stored, vec![(NOW - 1000, 5.0), (NOW, 1.0), (NOW + 1000, 3.0)]);

    // Digest arguments.
    check_error("no ranges", handle_digest(&h.node, pb::DigestRequest { shard: 0, ranges: vec![] }).await, Code::InvalidArgument, "1 to 65536");
    check_error("a reversed range", handle_digest(&h.node, pb::DigestRequest { shard: 0, ranges: vec![pb::TimeRange { min_t: 5, max_t: 4 }] }).await, Code::InvalidArgument, "start after its end");
    check_error("an unknown shard", handle_digest(&h.node, pb::DigestRequest { shard: 9, ranges: vec![pb::TimeRange { min_t: 0, max_t: 1 }] }).await, Code::NotFound, "shard 9");
    let reply = handle_digest(&h.node, pb::DigestRequest { shard: 0, ranges: vec![pb::TimeRange { min_t: i64::MIN, max_t: i64::MAX }, pb::TimeRange { min_t: NOW, max_t: NOW }] }).await.unwrap();
    assert_eq!(reply.node, 2);
    assert_eq!((reply.digests[0].samples, reply.digests[1].samples), (3, 1));
    assert_eq!(reply.bounds, Some(pb::TimeRange { min_t: NOW - 1000, max_t: NOW + 1000 }));

    // Export: pages of one sample each cover every series once, in order.
    for n in 1..4 {
        h.secondary.import(0, "default", vec![WriteSeries { labels: series_in(0, n), samples: vec![Sample::new(NOW, n as f64)] }]).await.unwrap();
    }
    let mut after = None;
    let mut seen = Vec::new();
    loop {
        let page = handle_export(&h.node, pb::ExportRequest { shard: 0, min_t: i64::MIN, max_t: i64::MAX, after: after.take(), samples_max: 1 }).await.unwrap();
        seen.extend(page.series.iter().map(|s| (s.labels.clone(), s.samples.len())));
        match page.next_after {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    assert_eq!(seen.len(), 4, "{seen:?}");
    assert_eq!(seen.iter().map(|s| s.1).sum::<usize>(), 6);
    let mut bad_after = tenant_series(&a, &[]);
    bad_after.labels.push(pb::Label { name: "__name__".into(), value: "twice".into() });
    check_error("a bad `after`", handle_export(&h.node, pb::ExportRequest { shard: 0, min_t: 0, max_t: 1, after: Some(bad_after), samples_max: 1 }).await, Code::InvalidArgument, "after");
    check_error("a reversed export range", handle_export(&h.node, pb::ExportRequest { shard: 0, min_t: 5, max_t: 4, after: None, samples_max: 1 }).await, Code::InvalidArgument, "start after its end");
}
