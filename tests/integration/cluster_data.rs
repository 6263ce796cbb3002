#![cfg(not(madsim))]
//! Goal: the cluster data path across three `sextant serve` nodes — a remote-write to one
//! node stores each series on exactly its shard's primary (forwarded over the Data service),
//! every sample is answered by `query_range` (and the series and labels endpoints) from every
//! node; with one node stopped, queries still answer and carry a warning naming the stopped
//! node's shards, and writes for its shards are refused with 503 (or 429), never silently
//! lost; a forwarded write at an epoch the target does not hold is refused.
//! Method: `server::Server` in process on real tokio (tests/integration/serve_cluster.rs's pattern), each
//! node on a temporary directory and ephemeral 127.0.0.1 ports. HTTP requests go through each
//! node's axum router in process; node-to-node traffic is real gRPC. Storage placement is
//! checked on each node's engine directly. Deadlines only bound a hung run.

use std::collections::{BTreeMap, BTreeSet};

use sextant::config::ServeConfig;
use sextant::route::pb;
use sextant::server::Server;
use sextant::shard::shard_for;
use sextant_core::matcher::{MatchOp, Matcher};
use sextant_core::series::fingerprint;
use sextant_raft::state::MetadataState;
use tokio::net::TcpListener;

use crate::cluster_http::{labels_of, request, value, http, query_range, remote_write};
use crate::wait::eventually;

const SERIES: usize = 40;

async fn start_cluster(dirs: &[tempfile::TempDir]) -> Vec<Server> {
    start_cluster_with(dirs, sextant::config::ServeArgs::default()).await
}

/// Three nodes started with `base` (data dir, node id and initial cluster filled in).
async fn start_cluster_with(dirs: &[tempfile::TempDir], base: sextant::config::ServeArgs) -> Vec<Server> {
    let mut grpc = Vec::new();
    let mut http = Vec::new();
    for _ in 0..dirs.len() {
        grpc.push(TcpListener::bind("127.0.0.1:0").await.unwrap());
        http.push(TcpListener::bind("127.0.0.1:0").await.unwrap());
    }
    let initial_cluster = grpc.iter().enumerate().map(|(i, l)| format!("{}={}", i + 1, l.local_addr().unwrap())).collect::<Vec<_>>().join(",");
    let mut servers = Vec::new();
    for (i, (grpc, http)) in grpc.into_iter().zip(http).enumerate() {
        let args = sextant::config::ServeArgs { data_dir: Some(dirs[i].path().to_path_buf()), node_id: Some(i as u64 + 1), initial_cluster: Some(initial_cluster.clone()), ..base.clone() };
        let mut config = ServeConfig::resolve(&args, None).unwrap();
        config.maintain_interval_ms = 3_600_000;
        servers.push(Server::start_with_listeners(config, http, grpc).await.expect("server starts"));
    }
    // Every node must route by the full map with every address, and be ready.
    eventually("every node to hold the shard map and all addresses", || async {
        servers.iter().all(|s| {
            let table = s.node().router().table();
            table.shard_count() == Some(16) && table.grpc_addrs.len() == 3 && s.raft().local_read().state.nodes.len() == 3 && s.node().readiness().is_ok()
        })
        .then_some(())
    })
    .await;
    servers
}

fn state(server: &Server) -> MetadataState {
    server.raft().local_read().state
}

fn expected(series: &[usize], times: &[i64]) -> BTreeMap<String, Vec<(i64, f64)>> {
    series.iter().map(|i| (format!("i{i:02}"), times.iter().map(|t| (*t, value(*i, *t))).collect())).collect()
}

/// Which instances each node's engine stores.
async fn stored_instances(server: &Server) -> BTreeSet<String> {
    let engine = server.node().engine().unwrap();
    let all = vec![Matcher::new(MatchOp::Equal, "__name__", "m").unwrap()];
    engine.select("default", &all, i64::MIN, i64::MAX).await.unwrap().into_iter().map(|s| s.labels.get("instance").to_string()).collect()
}

fn primary_of(state: &MetadataState, i: usize) -> (u32, u64, u64) {
    let map = state.shard_map.as_ref().unwrap();
    let shard = shard_for(fingerprint("default", &labels_of(i)), map.shard_count());
    let s = &map.shards[&shard];
    (shard, s.primary.unwrap(), s.epoch)
}

// Goal: see the module docs. One cluster for all steps (formation is the slow part).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_route_to_primaries_and_queries_fan_out() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut servers = start_cluster(&dirs).await;
    let map_state = state(&servers[0]);
    let now = servers[0].node().clock().now_wall_ms() / 1000 * 1000;
    let times: Vec<i64> = (0..3).map(|k| now - 2000 + k * 1000).collect();
    let all: Vec<usize> = (0..SERIES).collect();

    // 1. One remote-write to node 1; every series lands on its primary, and replication
    //    copies it to its secondary (RF=2; tests/integration/cluster_replication.rs tests it in depth).
    let (status, body) = remote_write(servers[0].node(), &request(&all, &times)).await;
    assert_eq!(status, 204, "{body}");
    let mut placed: BTreeMap<u64, BTreeSet<String>> = BTreeMap::new();
    let mut primaries: BTreeSet<u64> = BTreeSet::new();
    for i in &all {
        let (shard, primary, _) = primary_of(&map_state, *i);
        primaries.insert(primary);
        placed.entry(primary).or_default().insert(format!("i{i:02}"));
        let secondary = map_state.shard_map.as_ref().unwrap().shards[&shard].secondary.unwrap();
        placed.entry(secondary).or_default().insert(format!("i{i:02}"));
    }
    assert_eq!(primaries.len(), 3, "40 series spread over all three primaries: {placed:?}");
    for (n, server) in servers.iter().enumerate() {
        let node_id = n as u64 + 1;
        let want = placed.get(&node_id).cloned().unwrap_or_default();
        eventually(&format!("node {node_id} to store exactly the series whose primary or secondary it is"), || {
            let want = want.clone();
            async move { (stored_instances(server).await == want).then_some(()) }
        })
        .await;
    }
    let forwarded = servers[0].node().metrics.encode();
    assert!(forwarded.lines().any(|l| l.starts_with("sextant_forward_samples_total{node=\"2\"}")), "forwarding is counted per destination:\n{forwarded}");

    // 2. Every node answers every sample, with no warning; series and labels too.
    for (n, server) in servers.iter().enumerate() {
        let (answer, warnings) = query_range(server.node(), &times).await;
        assert_eq!(answer, expected(&all, &times), "query_range from node {}", n + 1);
        assert!(warnings.is_empty(), "node {}: {warnings:?}", n + 1);
        let (status, body) = http(server.node(), "GET", "/api/v1/series?match[]=m", "text/plain", vec![]).await;
        assert_eq!(status, 200, "{body}");
        let json: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(json["data"].as_array().unwrap().len(), SERIES, "series from node {}: {body}", n + 1);
        let (status, body) = http(server.node(), "GET", "/api/v1/label/instance/values", "text/plain", vec![]).await;
        assert_eq!(status, 200, "{body}");
        let json: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(json["data"].as_array().unwrap().len(), SERIES, "label values from node {}: {body}", n + 1);
    }

    // 3. A forwarded write at an epoch the target does not hold, or to a node that is not the
    //    shard's primary, is refused with FAILED_PRECONDITION.
    let (shard, primary, epoch) = primary_of(&map_state, 0);
    let other = if primary == 1 { 2 } else { 1 };
    let write = |epoch: u64| pb::WriteRequest {
        tenant: "default".into(),
        shard,
        epoch,
        judged_at_ms: now,
        from_node: 9,
        series: vec![pb::Series {
            labels: labels_of(0).iter().map(|l| pb::Label { name: l.name.clone(), value: l.value.clone() }).collect(),
            samples: vec![pb::Sample { t: now, v: value(0, now) }],
        }],
    };
    let connect = |id: u64| {
        let addr = servers[id as usize - 1].grpc_addr();
        async move { pb::data_client::DataClient::connect(format!("http://{addr}")).await.unwrap() }
    };
    let check_refused = |result: Result<tonic::Response<pb::WriteReply>, tonic::Status>, needle: &str| {
        let status = result.expect_err("refused");
        assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status:?}");
        assert!(status.message().contains(needle), "{:?} should contain {needle:?}", status.message());
    };
    let to = |id: u64, request: pb::WriteRequest| sextant_raft::network::addressed(request, id);
    check_refused(connect(primary).await.write(to(primary, write(epoch - 1))).await, &format!("at epoch {}", epoch - 1));
    check_refused(connect(other).await.write(to(other, write(epoch))).await, "refuses a write");
    // A call meant for another member (its address reused by a replacement) is refused before
    // anything else is looked at, and so is one that names no member.
    check_refused(connect(primary).await.write(to(other, write(epoch))).await, &format!("this is node {primary}, not node {other}"));
    let unnamed = connect(primary).await.write(write(epoch)).await.expect_err("no target member");
    assert_eq!(unnamed.code(), tonic::Code::InvalidArgument, "{unnamed:?}");
    let accepted = connect(primary).await.write(to(primary, write(epoch))).await.expect("the right epoch at the primary").into_inner();
    assert_eq!(accepted.duplicates, 1, "the same sample again is a duplicate: {accepted:?}");

    // 4. Node 3 stops: queries from the others answer the rest with a warning naming its
    //    shards; writes for its shards are refused (503/429), the others still stored.
    let down = servers.pop().unwrap();
    down.shutdown().await.unwrap();
    let down_shards: BTreeSet<u32> = map_state.shard_map.as_ref().unwrap().shards.iter().filter(|(_, s)| s.primary == Some(3)).map(|(id, _)| *id).collect();
    let alive: Vec<usize> = all.iter().copied().filter(|i| primary_of(&map_state, *i).1 != 3).collect();
    let lost: Vec<usize> = all.iter().copied().filter(|i| primary_of(&map_state, *i).1 == 3).collect();
    for (n, server) in servers.iter().enumerate() {
        let (answer, warnings) = query_range(server.node(), &times).await;
        for i in &alive {
            let key = format!("i{i:02}");
            assert_eq!(answer.get(&key), expected(&[*i], &times).get(&key), "node {}: live series {key}", n + 1);
        }
        assert!(!warnings.is_empty(), "node {}: an answer without node 3's shards must say so", n + 1);
        // Shards are named per fallback replica (their secondary), as sorted lists.
        let mut by_secondary: BTreeMap<u64, Vec<String>> = BTreeMap::new();
        for shard in &down_shards {
            by_secondary.entry(map_state.shard_map.as_ref().unwrap().shards[shard].secondary.unwrap()).or_default().push(shard.to_string());
        }
        for (secondary, shards) in by_secondary {
            let list = format!("shards {} ", shards.join(", "));
            assert!(warnings.iter().any(|w| w.contains(&list) && w.contains(&format!("node {secondary}"))), "node {}: a warning names {list}(secondary {secondary}): {warnings:?}", n + 1);
        }
    }
    let later: Vec<i64> = times.iter().map(|t| t + 3000).collect();
    let (status, body) = remote_write(servers[0].node(), &request(&all, &later)).await;
    assert!(status == 503 || status == 429, "writes for a stopped primary's shards are refused, got {status}: {body}");
    let (status, body) = remote_write(servers[0].node(), &request(&alive, &later)).await;
    assert_eq!(status, 204, "series of live primaries still ingest: {body}");
    let engine_samples = |server: &Server, i: usize| {
        let engine = server.node().engine().unwrap();
        async move {
            let matchers = vec![Matcher::new(MatchOp::Equal, "instance", format!("i{i:02}")).unwrap()];
            engine.select("default", &matchers, i64::MIN, i64::MAX).await.unwrap().into_iter().map(|s| s.samples.len()).sum::<usize>()
        }
    };
    for i in &lost {
        // Replicated before the stop to its secondary (node 1, seeded round-robin); the later
        // write was refused, so only the first write's samples.
        let (shard, _, _) = primary_of(&map_state, *i);
        let secondary = map_state.shard_map.as_ref().unwrap().shards[&shard].secondary.unwrap();
        for (n, server) in servers.iter().enumerate() {
            let want = if n as u64 + 1 == secondary { 3 } else { 0 };
            assert_eq!(engine_samples(server, *i).await, want, "series i{i:02} of a stopped primary on node {}", n + 1);
        }
    }
    for i in &alive {
        let (_, primary, _) = primary_of(&map_state, *i);
        assert_eq!(engine_samples(&servers[primary as usize - 1], *i).await, 6, "series i{i:02}: both writes stored on its primary");
    }
    for server in servers {
        server.shutdown().await.unwrap();
    }
}

/// Per-metric series limit of the limits test: its share per shard is 1 + 4 × √1 = 5
/// (`limits::limit_share`).
const METRIC_LIMIT: u64 = 16;
const SHARE: usize = 5;

// Goal: a cluster enforces one series limit, not one per receiving node: each shard's primary
// admits new series up to its share of the limit, whichever node the writes arrive at; the
// refusal names the limit and the share; admitted series keep ingesting through any node and
// other metrics are untouched.
// Method: 200 new series of one metric written a third through each node; the series each
// node's engine stores are compared with the exact set the share rule admits (first
// arrivals per shard, computed from the shards of the series); then the same series again
// through other nodes, and a series of another metric.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn series_limits_are_shared_over_shards_not_multiplied_by_nodes() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let base = sextant::config::ServeArgs { series_per_metric_max: Some(METRIC_LIMIT), ..Default::default() };
    let servers = start_cluster_with(&dirs, base).await;
    let now = servers[0].node().clock().now_wall_ms() / 1000 * 1000;
    let times = [now - 2000, now - 1000];
    let all: Vec<usize> = (100..300).collect();
    let thirds: Vec<Vec<usize>> = all.chunks(all.len().div_ceil(3)).map(|c| c.to_vec()).collect();

    // Each request is answered before the next is sent, so the admitted set is exactly the
    // first SHARE series of each shard in this order.
    let mut want: BTreeSet<String> = BTreeSet::new();
    let mut per_shard: BTreeMap<u32, usize> = BTreeMap::new();
    for i in &all {
        let shard = shard_for(fingerprint("default", &labels_of(*i)), 16);
        let admitted = per_shard.entry(shard).or_default();
        if *admitted < SHARE {
            *admitted += 1;
            want.insert(format!("i{i:02}"));
        }
    }
    assert_eq!(sextant::limits::limit_share(METRIC_LIMIT, 16), SHARE as u64);
    assert_eq!(want.len(), 16 * SHARE, "200 series fill every shard's share: {per_shard:?}");
    for (n, third) in thirds.iter().enumerate() {
        let (status, body) = remote_write(servers[n].node(), &request(third, &times)).await;
        assert_eq!(status, 400, "node {}: new series over the shares are refused for good: {body}", n + 1);
        assert!(body.contains("has reached its limit of 16 active series (its share in shard"), "node {}: the refusal names limit and share: {body}", n + 1);
        let refused = third.iter().filter(|i| !want.contains(&format!("i{i:02}"))).count() * times.len();
        assert!(body.starts_with(&format!("{refused} of {} samples refused", third.len() * times.len())), "node {}: {body}", n + 1);
    }
    let mut stored: BTreeSet<String> = BTreeSet::new();
    for server in &servers {
        stored.extend(stored_instances(server).await);
    }
    assert_eq!(stored, want, "the cluster stores exactly each shard's share, not a limit per receiving node");
    let metrics = servers[0].node().metrics.encode();
    assert!(metrics.lines().any(|l| l.starts_with("sextant_remote_write_samples_refused_total{reason=\"series_per_metric_limit\"}")), "refusals counted on the receiving node:\n{metrics}");

    // Admitted series keep ingesting through any node (rotated by one), and so does another
    // metric of the same tenant.
    let later = [now, now + 1000];
    for (n, third) in thirds.iter().enumerate() {
        let admitted: Vec<usize> = third.iter().copied().filter(|i| want.contains(&format!("i{i:02}"))).collect();
        let (status, body) = remote_write(servers[(n + 1) % 3].node(), &request(&admitted, &later)).await;
        assert_eq!(status, 204, "admitted series through node {}: {body}", (n + 1) % 3 + 1);
    }
    let mut other = request(&[0], &later);
    other.timeseries[0].labels[0].value = "other_metric".into();
    let (status, body) = remote_write(servers[2].node(), &other).await;
    assert_eq!(status, 204, "another metric is not limited by m's: {body}");
    for server in servers {
        server.shutdown().await.unwrap();
    }
}
