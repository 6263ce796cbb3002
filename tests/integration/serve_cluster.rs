#![cfg(not(madsim))]
//! Goal: `sextant serve` runs its member of the metadata group and applies the cluster's
//! limits live — a lone node forms a one-voter cluster and seeds 16 shards and the default
//! limits from its flags; a tenant's limits changed through raft change what ingest admits,
//! with the version reported; a restart with different flags keeps the cluster's values and
//! reports the difference; three nodes started with the same `--initial-cluster` form one
//! cluster with one leader and the same seeded shard map everywhere.
//! Method: `server::Server` (what `sextant serve` runs) in process on real tokio, each node on
//! a temporary data directory (RealFs) and 127.0.0.1 ephemeral ports. Writes go through the
//! node's ingest path and are read back from the engine. Deadlines only bound a hung run;
//! nothing asserts on elapsed time.

use std::collections::BTreeMap;
use std::sync::Arc;

use sextant::config::ServeConfig;
use sextant::node::Node;
use sextant::remote_write::{Label, Sample, TimeSeries, WriteRequest};
use sextant::server::Server;
use sextant::tenant_limits::{flag_defaults, LimitsSource};
use sextant_core::matcher::{MatchOp, Matcher};
use sextant_raft::command::TenantLimits;
use sextant_raft::state::MetadataState;
use sextant_raft::{Action, Command, Outcome};
use tokio::net::TcpListener;

use crate::wait::eventually;

fn config(dir: &std::path::Path, series_per_metric_max: u64) -> ServeConfig {
    let mut config = ServeConfig { data_dir: dir.to_path_buf(), maintain_interval_ms: 3_600_000, ..ServeConfig::default() };
    config.limits.series_per_metric_max = series_per_metric_max;
    config
}

async fn start(config: ServeConfig) -> Server {
    let http = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let grpc = TcpListener::bind("127.0.0.1:0").await.unwrap();
    Server::start_with_listeners(config, http, grpc).await.expect("server starts")
}

fn state(server: &Server) -> MetadataState {
    server.raft().local_read().state
}

async fn seeded(server: &Server) -> MetadataState {
    eventually("the cluster to be seeded", || async { Some(state(server)).filter(|s| s.is_seeded()) }).await
}

async fn ready(node: &Arc<Node>) {
    eventually("the node to be ready", || async { node.readiness().ok() }).await
}

fn one_series(metric: &str, instance: u32, t: i64) -> WriteRequest {
    WriteRequest {
        timeseries: vec![TimeSeries {
            labels: vec![Label { name: "__name__".into(), value: metric.into() }, Label { name: "instance".into(), value: format!("i{instance}") }],
            samples: vec![Sample { timestamp: t, value: 1.0 }],
            exemplars: vec![],
            histograms: vec![],
        }],
        metadata: vec![],
    }
}

async fn put_limits(server: &Server, tenant: &str, limits: TenantLimits) -> u64 {
    let command = Command { who: "test".into(), at_ms: 1, action: Action::PutTenantLimits { tenant: tenant.into(), limits } };
    let response = server.raft().client_write(command).await.expect("limits written");
    assert_eq!(response.outcome, Outcome::Applied);
    let node = server.node().clone();
    // The node reports which applied index its limits come from; wait until it has this one.
    eventually("the node to apply the limits", || async { Some(()).filter(|_| node.limits_view().version >= response.index) }).await;
    response.index
}

fn applied_index_metric(node: &Node) -> i64 {
    let text = node.metrics.encode();
    let line = text.lines().find(|l| l.starts_with("sextant_metadata_applied_index ")).expect("the metric is exported");
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

// Goal: no cluster flags → a one-voter cluster of itself, seeded once with 16 shards all on
// node 1 (no secondary with one node) and the default limits from this node's flags; the node
// registers its addresses; the node uses the cluster's limits and says at which index.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_node_forms_and_seeds_a_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), 1234);
    let server = start(config.clone()).await;
    let state = seeded(&server).await;
    assert_eq!(state.voter_ids(), vec![1]);
    let map = state.shard_map.as_ref().expect("a shard map");
    assert_eq!(map.shard_count(), 16);
    for (id, shard) in &map.shards {
        assert_eq!((shard.primary, shard.secondary, shard.epoch), (Some(1), None, 1), "shard {id}");
    }
    assert_eq!(state.defaults.as_ref().unwrap().defaults, flag_defaults(&config));
    let registered = eventually("the node to register", || async { server.raft().local_read().state.nodes.get(&1).cloned() }).await;
    assert_eq!(registered.node.http_addr, server.http_addr().to_string());
    assert_eq!(registered.node.grpc_addr, server.grpc_addr().to_string());

    ready(server.node()).await;
    let view = eventually("the seeded limits in force", || async { Some(server.node().limits_view()).filter(|v| v.source == LimitsSource::Cluster) }).await;
    assert_eq!(view.defaults.series_per_metric_max, 1234);
    assert!(view.flag_differences.is_empty());
    assert_eq!(applied_index_metric(server.node()), server.node().limits_view().version as i64);
    server.shutdown().await.unwrap();
}

// Goal: a tenant's limits changed through raft change what ingest admits, live: with
// series_per_metric_max 2 the third new series is refused (existing ones keep ingesting);
// raised to 3 it is admitted; other tenants keep the default. The node reports the version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_limits_apply_live() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(config(dir.path(), 100)).await;
    seeded(&server).await;
    ready(server.node()).await;
    let node = server.node().clone();
    let now = node.clock().now_wall_ms();

    let two = put_limits(&server, "acme", TenantLimits { series_per_metric_max: 2, ..TenantLimits::default() }).await;
    assert_eq!(node.tenant_limits("acme").series_per_metric_max, 2);
    assert_eq!(node.tenant_limits("other").series_per_metric_max, 100, "no entry: the cluster default");
    assert!(applied_index_metric(&node) >= two as i64);
    let check = |status: u16, outcome: sextant::node::IngestOutcome, needle: &str| {
        assert_eq!(outcome.status, status, "{outcome:?}");
        assert!(outcome.message.contains(needle), "{:?} should contain {needle:?}", outcome.message);
    };
    check(204, node.ingest("acme", one_series("m", 1, now)).await, "");
    check(204, node.ingest("acme", one_series("m", 2, now)).await, "");
    check(400, node.ingest("acme", one_series("m", 3, now)).await, "has reached its limit of 2 active series");
    check(204, node.ingest("acme", one_series("m", 1, now + 1)).await, "");
    check(204, node.ingest("other", one_series("m", 3, now)).await, "");

    let three = put_limits(&server, "acme", TenantLimits { series_per_metric_max: 3, ..TenantLimits::default() }).await;
    assert!(three > two);
    assert_eq!(node.limits_view().for_tenant("acme").series_per_metric_max, 3);
    check(204, node.ingest("acme", one_series("m", 3, now + 2)).await, "");

    // What storage holds: the refused sample is absent, the admitted ones are there.
    let engine = node.engine().unwrap();
    let all = vec![Matcher::new(MatchOp::Equal, "__name__", "m").unwrap()];
    let mut stored: Vec<(String, i64)> = Vec::new();
    for series in engine.select("acme", &all, i64::MIN, i64::MAX).await.unwrap() {
        stored.extend(series.samples.iter().map(|s| (series.labels.get("instance").to_string(), s.t)));
    }
    stored.sort();
    assert_eq!(stored, vec![("i1".to_string(), now), ("i1".to_string(), now + 1), ("i2".to_string(), now), ("i3".to_string(), now + 2)]);
    server.shutdown().await.unwrap();
}

// Goal: once seeded, the cluster's values win over a restarted node's different flags, and
// the node reports which settings differ (what it logs as a warning).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_with_other_flags_keeps_the_cluster_values() {
    let dir = tempfile::tempdir().unwrap();
    let first = start(config(dir.path(), 1000)).await;
    let seeded_state = seeded(&first).await;
    first.shutdown().await.unwrap();

    let mut changed = config(dir.path(), 5);
    changed.cluster.shard_count = 4;
    let second = start(changed).await;
    let view = eventually("the cluster's limits after restart", || async { Some(second.node().limits_view()).filter(|v| v.source == LimitsSource::Cluster) }).await;
    assert_eq!(view.defaults.series_per_metric_max, 1000);
    assert_eq!(view.flag_differences, vec!["series-per-metric-max: flag 5, cluster 1000".to_string()]);
    let state = state(&second);
    assert_eq!(state.shard_map.as_ref().unwrap().shard_count(), 16, "the shard count is fixed at creation");
    assert_eq!(state.defaults, seeded_state.defaults, "seeded once");
    second.shutdown().await.unwrap();
}

// Goal: three nodes given the same --initial-cluster form one cluster: one leader that all
// agree on, one seed (shards round-robin over the three voters, secondary ≠ primary), the same
// shard map on every node, and every node's registered HTTP address known to all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_form_one_cluster() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut grpc = Vec::new();
    let mut http = Vec::new();
    for _ in 0..3 {
        grpc.push(TcpListener::bind("127.0.0.1:0").await.unwrap());
        http.push(TcpListener::bind("127.0.0.1:0").await.unwrap());
    }
    let initial_cluster = grpc.iter().enumerate().map(|(i, l)| format!("{}={}", i + 1, l.local_addr().unwrap())).collect::<Vec<_>>().join(",");
    let mut servers = Vec::new();
    for (i, (grpc, http)) in grpc.into_iter().zip(http).enumerate() {
        let args = sextant::config::ServeArgs {
            data_dir: Some(dirs[i].path().to_path_buf()),
            node_id: Some(i as u64 + 1),
            initial_cluster: Some(initial_cluster.clone()),
            series_per_metric_max: Some(10 * (i as u64 + 1)),
            ..Default::default()
        };
        let config = ServeConfig::resolve(&args, None).unwrap();
        servers.push(Server::start_with_listeners(config, http, grpc).await.expect("server starts"));
    }
    let states = eventually("every node to see the seed and all registrations", || async {
        let states: Vec<MetadataState> = servers.iter().map(state).collect();
        states.iter().all(|s| s.is_seeded() && s.nodes.len() == 3).then_some(states)
    })
    .await;
    let leaders: Vec<Option<u64>> = servers.iter().map(|s| s.raft().raft().metrics().borrow().current_leader).collect();
    let leader = leaders[0].expect("a leader");
    assert!(leaders.iter().all(|l| *l == Some(leader)), "all agree on one leader: {leaders:?}");
    let map = states[0].shard_map.clone().unwrap();
    assert_eq!(map.shard_count(), 16);
    let mut primaries: BTreeMap<u64, u32> = BTreeMap::new();
    for shard in map.shards.values() {
        let (primary, secondary) = (shard.primary.unwrap(), shard.secondary.unwrap());
        assert_ne!(primary, secondary);
        *primaries.entry(primary).or_default() += 1;
    }
    assert_eq!(primaries, BTreeMap::from([(1, 6), (2, 5), (3, 5)]));
    // The leader's flags seeded the defaults: node N has series_per_metric_max 10·N.
    assert_eq!(states[0].defaults.as_ref().unwrap().defaults.limits.series_per_metric_max, 10 * leader);
    for (i, s) in states.iter().enumerate() {
        assert_eq!(s.shard_map.as_ref(), Some(&map), "node {} has the same shard map", i + 1);
        assert_eq!(s.defaults, states[0].defaults);
        assert_eq!(s.voter_ids(), vec![1, 2, 3]);
        for (j, server) in servers.iter().enumerate() {
            assert_eq!(s.nodes[&(j as u64 + 1)].node.http_addr, server.http_addr().to_string());
        }
    }
    for server in servers {
        server.shutdown().await.unwrap();
    }
}
