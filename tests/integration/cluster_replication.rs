#![cfg(not(madsim))]
//! Goal: RF=2 replication across real `sextant serve` nodes — writes to a shard's primary
//! appear on its secondary (equal shard digests, and the samples read back from the
//! secondary's engine); `admin shards` shows replication state and lag and `admin shards
//! --verify` reports equal digests, then a planted mismatch (exit status non-zero); with the
//! secondary stopped the lag grows, is exported in /metrics, and a tiny
//! `--replication-lag-max` turns the shard's writes into 429 naming shard, lag and bound; the
//! secondary restarted catches up — by tail, and by sync when the primary's WAL no longer holds
//! its position; a secondary holding extra samples and a conflicting value converges to the
//! union with the primary's value winning (merge-back).
//! Method: `server::Server` in process on real tokio (tests/integration/cluster_data.rs's pattern), each
//! node on a temporary directory and ephemeral 127.0.0.1 ports (a restarted node binds its old
//! ports again). Writes go through a node's HTTP router in process; node-to-node traffic is
//! real gRPC. Convergence is checked with `Engine::shard_digest` on each replica's engine.
//! Deadlines only bound a hung run.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use http::Request;
use sextant::config::ServeConfig;
use sextant::node::Node;
use sextant::remote_write::{encode_write_request, WriteRequest};
use sextant::server::Server;
use sextant::shard::shard_for;
use sextant_core::matcher::{MatchOp, Matcher};
use sextant_core::sample::Sample as CoreSample;
use sextant_core::series::fingerprint;

use crate::cluster_http::{labels_of, request, value};
use sextant_raft::state::MetadataState;
use sextant_storage::engine::{ShardDigest, WriteSeries};
use tokio::net::TcpListener;
use tower::ServiceExt;

use crate::wait::eventually;

const SERIES: usize = 24;

/// A cluster's nodes; `None` while a node is stopped. Keeps each node's addresses and config
/// so it can be restarted on the same ports and directory.
struct Cluster {
    servers: Vec<Option<Server>>,
    addrs: Vec<(SocketAddr, SocketAddr)>,
    configs: Vec<ServeConfig>,
    _dirs: Vec<tempfile::TempDir>,
}

impl Cluster {
    async fn start(nodes: usize, tweak: impl Fn(usize, &mut ServeConfig)) -> Cluster {
        let dirs: Vec<_> = (0..nodes).map(|_| tempfile::tempdir().unwrap()).collect();
        let mut listeners = Vec::new();
        for _ in 0..nodes {
            listeners.push((TcpListener::bind("127.0.0.1:0").await.unwrap(), TcpListener::bind("127.0.0.1:0").await.unwrap()));
        }
        let initial_cluster = listeners.iter().enumerate().map(|(i, (_, g))| format!("{}={}", i + 1, g.local_addr().unwrap())).collect::<Vec<_>>().join(",");
        let mut cluster = Cluster { servers: Vec::new(), addrs: Vec::new(), configs: Vec::new(), _dirs: Vec::new() };
        for (i, (http, grpc)) in listeners.into_iter().enumerate() {
            let args = sextant::config::ServeArgs { data_dir: Some(dirs[i].path().to_path_buf()), node_id: Some(i as u64 + 1), initial_cluster: Some(initial_cluster.clone()), ..Default::default() };
            let mut config = ServeConfig::resolve(&args, None).unwrap();
            config.maintain_interval_ms = 3_600_000;
            tweak(i, &mut config);
            cluster.addrs.push((http.local_addr().unwrap(), grpc.local_addr().unwrap()));
            cluster.configs.push(config.clone());
            cluster.servers.push(Some(Server::start_with_listeners(config, http, grpc).await.expect("server starts")));
        }
        cluster._dirs = dirs;
        cluster.wait_ready(nodes).await;
        cluster
    }

    async fn wait_ready(&self, nodes: usize) {
        eventually("every running node to hold the shard map and all addresses", || async {
            self.servers.iter().flatten().all(|s| {
                let table = s.node().router().table();
                table.shard_count() == Some(16) && table.grpc_addrs.len() == nodes && s.node().readiness().is_ok()
            })
            .then_some(())
        })
        .await;
    }

    fn node(&self, id: u64) -> &Arc<Node> {
        self.servers[id as usize - 1].as_ref().expect("node running").node()
    }

    async fn stop(&mut self, id: u64) {
        let server = self.servers[id as usize - 1].take().expect("node running");
        server.shutdown().await.unwrap();
    }

    async fn restart(&mut self, id: u64) {
        let (http, grpc) = self.addrs[id as usize - 1];
        let http = TcpListener::bind(http).await.unwrap();
        let grpc = TcpListener::bind(grpc).await.unwrap();
        let server = Server::start_with_listeners(self.configs[id as usize - 1].clone(), http, grpc).await.expect("server restarts");
        self.servers[id as usize - 1] = Some(server);
        let nodes = self.servers.len();
        self.wait_ready(nodes).await;
    }

    fn state(&self) -> MetadataState {
        self.servers.iter().flatten().next().unwrap().raft().local_read().state
    }

    /// (primary, secondary) of `shard`.
    fn replicas(&self, shard: u32) -> (u64, u64) {
        let state = self.state();
        let s = &state.shard_map.as_ref().unwrap().shards[&shard];
        (s.primary.unwrap(), s.secondary.unwrap())
    }

    async fn digest(&self, id: u64, shard: u32) -> ShardDigest {
        self.node(id).engine().unwrap().shard_digest(shard, i64::MIN, i64::MAX).await.unwrap()
    }

    /// Waits until both replicas of every shard have equal digests; answers them.
    async fn converged(&self, what: &str) -> Vec<ShardDigest> {
        eventually(what, || async {
            let mut out = Vec::new();
            for shard in 0..16 {
                let (p, s) = self.replicas(shard);
                let (a, b) = (self.digest(p, shard).await, self.digest(s, shard).await);
                if a != b {
                    return None;
                }
                out.push(a);
            }
            Some(out)
        })
        .await
    }

    async fn shutdown(self) {
        for server in self.servers.into_iter().flatten() {
            server.shutdown().await.unwrap();
        }
    }
}

fn shard_of(i: usize) -> u32 {
    shard_for(fingerprint("default", &labels_of(i)), 16)
}

async fn http(node: &Arc<Node>, method: &str, uri: &str, body: Vec<u8>) -> (u16, String) {
    let mut builder = Request::builder().method(method).uri(uri);
    if uri == "/api/v1/write" {
        builder = builder.header("content-type", "application/x-protobuf").header("content-encoding", "snappy");
    }
    let response = sextant::http::router(node.clone()).oneshot(builder.body(Body::from(body)).unwrap()).await.unwrap();
    let status = response.status().as_u16();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 26).await.unwrap();
    (status, String::from_utf8_lossy(&bytes).into_owned())
}

async fn remote_write(node: &Arc<Node>, request: &WriteRequest) -> (u16, String) {
    http(node, "POST", "/api/v1/write", encode_write_request(request)).await
}

/// The samples of series `i` in `node`'s engine.
async fn stored(node: &Arc<Node>, i: usize) -> Vec<(i64, f64)> {
    let engine = node.engine().unwrap();
    let matchers = vec![Matcher::new(MatchOp::Equal, "instance", format!("i{i:02}")).unwrap()];
    engine.select("default", &matchers, i64::MIN, i64::MAX).await.unwrap().into_iter().flat_map(|s| s.samples).map(|s| (s.t, s.v)).collect()
}

fn admin_args(addr: SocketAddr, command: &[&str]) -> sextant::admin::cli::AdminArgs {
    use clap::Parser;
    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        admin: sextant::admin::cli::AdminArgs,
    }
    let mut argv = vec!["admin".to_string(), "--addr".into(), addr.to_string(), "--output".into(), "json".into()];
    argv.extend(command.iter().map(|s| s.to_string()));
    Cli::parse_from(argv).admin
}

fn metric(text: &str, name: &str, shard: u32) -> Option<f64> {
    let prefix = format!("{name}{{shard=\"{shard}\"}} ");
    text.lines().find_map(|l| l.strip_prefix(&prefix)).map(|v| v.trim().parse().unwrap())
}

// Goal: see the module docs (steady-state streaming, admin shards, --verify). Method: three
// nodes; one write to node 1 covering every primary; digests per shard on both replicas.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_reach_secondaries_and_verify_reports_equal_then_mismatch() {
    let cluster = Cluster::start(3, |_, _| {}).await;
    let now = cluster.node(1).clock().now_wall_ms() / 1000 * 1000;
    let times: Vec<i64> = (0..4).map(|k| now - 3000 + k * 1000).collect();
    let all: Vec<usize> = (0..SERIES).collect();
    let (status, body) = remote_write(cluster.node(1), &request(&all, &times)).await;
    assert_eq!(status, 204, "{body}");

    // Every shard's replicas converge, and each series is read back from its secondary.
    let digests = cluster.converged("both replicas of every shard to hold equal digests").await;
    assert_eq!(digests.iter().map(|d| d.samples).sum::<u64>(), (SERIES * times.len()) as u64, "every sample once per shard");
    for i in &all {
        let (_, secondary) = cluster.replicas(shard_of(*i));
        let expected: Vec<(i64, f64)> = times.iter().map(|t| (*t, value(*i, *t))).collect();
        assert_eq!(stored(cluster.node(secondary), *i).await, expected, "series i{i:02} on its secondary node {secondary}");
    }

    // admin shards: every shard streaming, synced at its epoch, and (once the stream has been
    // acknowledged: equal digests can come first, from a catch-up copy) with no lag.
    let grpc = cluster.addrs[0].1;
    let json = eventually("every shard to report no lag", || async {
        let text = sextant::admin::cli::run(&admin_args(grpc, &["shards"])).await.expect("admin shards");
        let json: serde_json::Value = serde_json::from_str(&text).unwrap();
        json["shards"].as_array().unwrap().iter().all(|s| s["replication"]["lag_records"] == 0).then_some(json)
    })
    .await;
    for s in json["shards"].as_array().unwrap() {
        let r = &s["replication"];
        assert_eq!(r["state"], "streaming", "{s}");
        assert_eq!(r["lag_records"], 0, "{s}");
        assert_eq!(r["lag_samples"], 0, "{s}");
        assert_eq!(r["synced_epoch"], s["epoch"], "{s}");
    }

    // --verify: equal everywhere; then a sample planted on one secondary only is reported.
    let text = sextant::admin::cli::run(&admin_args(grpc, &["shards", "--verify"])).await.expect("verify passes");
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(json["mismatched"], 0, "{json}");
    assert!(json["shards"].as_array().unwrap().iter().all(|s| s["equal"] == true && s["replicas"].as_array().unwrap().len() == 2), "{json}");
    let shard = shard_of(0);
    let (_, secondary) = cluster.replicas(shard);
    let planted = WriteSeries { labels: labels_of(0), samples: vec![CoreSample::new(now - 60_000, 7.0)] };
    let report = cluster.node(secondary).engine().unwrap().import(shard, "default", vec![planted]).await.unwrap();
    assert_eq!(report.accepted, 1);
    match sextant::admin::cli::run(&admin_args(grpc, &["shards", "--verify"])).await {
        Err(sextant::admin::cli::CliError::Found { output, message }) => {
            let json: serde_json::Value = serde_json::from_str(&output).unwrap();
            assert_eq!(json["mismatched"], 1, "{json}");
            let bad: Vec<&serde_json::Value> = json["shards"].as_array().unwrap().iter().filter(|s| s["equal"] == false).collect();
            assert_eq!(bad.len(), 1);
            assert_eq!(bad[0]["shard"], shard);
            let samples: Vec<u64> = bad[0]["replicas"].as_array().unwrap().iter().map(|r| r["samples"].as_u64().unwrap()).collect();
            assert_eq!(samples[1], samples[0] + 1, "the secondary holds one more sample: {json}");
            assert!(message.contains("1 of 16 shards"), "{message}");
        }
        other => panic!("verify must report the planted mismatch, got {other:?}"),
    }
    // A range that excludes the planted sample is equal again.
    let from = ((now - 10_000) / 1000).to_string();
    let text = sextant::admin::cli::run(&admin_args(grpc, &["shards", "--verify", "--from", &from])).await.expect("verify over a range");
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(json["mismatched"], 0, "{json}");
    cluster.shutdown().await;
}

// Goal: lag with the secondary stopped (metric, 429 past a tiny bound), then catch-up when it
// returns — by tailing, and by sync once the primary's WAL no longer holds its position.
// Method: two nodes; node 1 with --replication-lag-max 300ms; only series whose primary is
// node 1 are written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lag_bound_refuses_writes_and_a_returning_secondary_catches_up() {
    let mut cluster = Cluster::start(2, |i, config| {
        if i == 0 {
            config.replication_lag_ms_max = 300;
        }
    })
    .await;
    let mine: Vec<usize> = (0..SERIES).filter(|i| cluster.replicas(shard_of(*i)).0 == 1).collect();
    assert!(mine.len() >= 4, "some series have node 1 as primary: {mine:?}");
    let shard = shard_of(mine[0]);
    let now = cluster.node(1).clock().now_wall_ms() / 1000 * 1000;
    let (status, body) = remote_write(cluster.node(1), &request(&mine, &[now - 5000])).await;
    assert_eq!(status, 204, "{body}");
    cluster.converged("the first write to reach node 2").await;

    // Secondary down: the first write is accepted (lag 0), then the lag passes 300 ms.
    cluster.stop(2).await;
    let (status, body) = remote_write(cluster.node(1), &request(&mine, &[now - 4000])).await;
    assert_eq!(status, 204, "{body}");
    let (status, body) = eventually("writes to be refused for the lag", || async {
        let (status, body) = remote_write(cluster.node(1), &request(&mine[..1], &[now - 3000])).await;
        (status == 429).then_some((status, body))
    })
    .await;
    assert_eq!(status, 429);
    assert!(body.contains(&format!("shard {shard}")) && body.contains("--replication-lag-max 300 ms"), "the 429 names shard and bound: {body}");
    let (_, metrics) = http(cluster.node(1), "GET", "/metrics", vec![]).await;
    let lag = metric(&metrics, "sextant_replication_lag_ms", shard).expect("lag exported per shard");
    assert!(lag > 300.0, "lag {lag} ms\n{metrics}");
    assert!(metric(&metrics, "sextant_replication_lag_records", shard).unwrap() >= 1.0);
    // The lag in samples: at least the samples of the write accepted after the stop (one per
    // series of `mine` in the shard; the probing writes add at most one more).
    let in_shard = mine.iter().filter(|i| shard_of(**i) == shard).count() as f64;
    let lag_samples = metric(&metrics, "sextant_replication_lag_samples", shard).expect("lag in samples exported per shard");
    assert!((in_shard..=in_shard + 1.0).contains(&lag_samples), "lag {lag_samples} samples, {in_shard} series of the shard written\n{metrics}");
    // `cluster status` sums it over node 1's primary shards and shows the largest lag.
    let grpc = cluster.addrs[0].1;
    let text = sextant::admin::cli::run(&admin_args(grpc, &["--consistency", "local", "cluster", "status"])).await.expect("cluster status (local: node 2 down leaves no quorum)");
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    let node1 = json["members"].as_array().unwrap().iter().find(|m| m["node_id"] == 1).unwrap();
    assert!(node1["replication"]["lag_samples"].as_f64().unwrap() >= lag_samples, "{json}");
    assert!(node1["replication"]["lag_ms_max"].as_f64().unwrap() > 300.0, "{json}");
    let node2 = json["members"].as_array().unwrap().iter().find(|m| m["node_id"] == 2).unwrap();
    assert!(node2["replication"].is_null() && !node2["replication_error"].as_str().unwrap().is_empty(), "the stopped node's data lag is unknown: {json}");

    // Back: it catches up by tailing, and writes are accepted again.
    cluster.restart(2).await;
    cluster.converged("node 2 to catch up by tailing").await;
    let (status, body) = eventually("writes to be accepted again", || async {
        let (status, body) = remote_write(cluster.node(1), &request(&mine, &[now - 3000])).await;
        (status == 204).then_some((status, body))
    })
    .await;
    assert_eq!(status, 204, "{body}");
    cluster.converged("the new write to reach node 2").await;
    for i in &mine {
        assert_eq!(stored(cluster.node(2), *i).await.len(), 3, "series i{i:02} on the secondary");
    }

    // Down again; the primary's WAL is checkpointed past its position (no floor holds it),
    // so its tail is truncated: the returning secondary is caught up by a sync.
    cluster.stop(2).await;
    let (status, body) = remote_write(cluster.node(1), &request(&mine, &[now - 2000])).await;
    assert_eq!(status, 204, "{body}");
    let engine = cluster.node(1).engine().unwrap();
    for s in 0..16 {
        engine.set_replication_floor(s, None).unwrap();
    }
    engine.flush().await.unwrap();
    let (status, body) = remote_write(cluster.node(1), &request(&mine, &[now - 1000])).await;
    assert!(status == 204 || status == 429, "{status}: {body}");
    let syncs_before = cluster.node(1).metrics.replication_syncs.get();
    cluster.restart(2).await;
    cluster.converged("node 2 to catch up by sync").await;
    assert!(cluster.node(1).metrics.replication_syncs.get() > syncs_before, "a truncated tail is repaired by a sync");
    for i in &mine {
        let primary = stored(cluster.node(1), *i).await;
        assert!(primary.len() >= 4);
        assert_eq!(stored(cluster.node(2), *i).await, primary, "series i{i:02}: the secondary equals the primary");
    }
    cluster.shutdown().await;
}

// Goal: merge-back and the conflict rule — a secondary holding samples the primary lacks and a
// different value at a timestamp the primary writes: after the primary's write, both hold the
// union and the primary's value. Method: two nodes; samples planted in node 2's engine for a
// shard node 1 is primary of, then a write through node 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn merge_back_takes_the_union_and_the_primary_value_wins() {
    let cluster = Cluster::start(2, |_, _| {}).await;
    let i = (0..SERIES).find(|i| cluster.replicas(shard_of(*i)).0 == 1).unwrap();
    let shard = shard_of(i);
    let now = cluster.node(1).clock().now_wall_ms() / 1000 * 1000;
    let (extra_t, conflict_t) = (now - 20_000, now - 10_000);
    // Plant only once the stream's start-up sync is done and node 1 holds its lease, so the
    // client's write reaches the primary first and the conflict meets the stream (a batch with
    // conflicts triggers a sync). Planted earlier, the start-up sync could copy the planted
    // value to the primary first, and the client's write would then be refused (first write
    // wins) — also correct, but not the rule under test.
    let epoch = cluster.state().shard_map.as_ref().unwrap().shards[&shard].epoch;
    eventually("node 1 streaming the shard under a lease", || async {
        let node = cluster.node(1);
        let streaming = node.replication().primary_shards().get(&shard).is_some_and(|s| s.state == sextant::replicate::StreamState::Streaming);
        (streaming && node.lease().check(shard, epoch, node.clock().now_monotonic_ns()).is_ok()).then_some(())
    })
    .await;
    let planted = WriteSeries { labels: labels_of(i), samples: vec![CoreSample::new(extra_t, 1.5), CoreSample::new(conflict_t, -1.0)] };
    cluster.node(2).engine().unwrap().import(shard, "default", vec![planted]).await.unwrap();
    let (status, body) = remote_write(cluster.node(1), &request(&[i], &[conflict_t, now - 5000])).await;
    assert_eq!(status, 204, "{body}");
    cluster.converged("the replicas to converge after the conflict").await;
    let expected = vec![(extra_t, 1.5), (conflict_t, value(i, conflict_t)), (now - 5000, value(i, now - 5000))];
    assert_eq!(stored(cluster.node(1), i).await, expected, "the primary merged back the secondary's extra sample");
    assert_eq!(stored(cluster.node(2), i).await, expected, "the secondary took the primary's value");
    cluster.shutdown().await;
}

// Goal: with --replication-lag-policy unprotected, writes past the bound are accepted and the
// shard is marked unprotected (metric and admin shards) until the secondary catches up.
// Method: two nodes, node 1 with a 200 ms bound and the unprotected policy; node 2 stopped,
// then restarted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unprotected_policy_accepts_and_marks_the_shard() {
    let mut cluster = Cluster::start(2, |i, config| {
        if i == 0 {
            config.replication_lag_ms_max = 200;
            config.replication_lag_policy = sextant::replicate::LagPolicy::Unprotected;
        }
    })
    .await;
    let i = (0..SERIES).find(|i| cluster.replicas(shard_of(*i)).0 == 1).unwrap();
    let shard = shard_of(i);
    let now = cluster.node(1).clock().now_wall_ms() / 1000 * 1000;
    cluster.stop(2).await;
    let (status, body) = remote_write(cluster.node(1), &request(&[i], &[now - 5000])).await;
    assert_eq!(status, 204, "{body}");
    let mut t = now - 4000;
    eventually("the shard to be marked unprotected", || {
        t += 1;
        let node = cluster.node(1).clone();
        async move {
            let (status, body) = remote_write(&node, &request(&[i], &[t])).await;
            assert_eq!(status, 204, "accepted past the bound: {body}");
            let (_, metrics) = http(&node, "GET", "/metrics", vec![]).await;
            (metric(&metrics, "sextant_replication_unprotected", shard) == Some(1.0)).then_some(())
        }
    })
    .await;
    // Two nodes with one down have no raft quorum: read the map locally.
    let text = sextant::admin::cli::run(&admin_args(cluster.addrs[0].1, &["--consistency", "local", "shards"])).await.expect("admin shards");
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    let row = json["shards"].as_array().unwrap().iter().find(|s| s["shard"] == shard).unwrap();
    assert_eq!(row["replication"]["unprotected"], true, "{row}");
    cluster.restart(2).await;
    cluster.converged("node 2 to catch up").await;
    eventually("the mark to clear once caught up", || {
        let node = cluster.node(1).clone();
        async move {
            let (status, _) = remote_write(&node, &request(&[i], &[now - 1000])).await;
            assert_eq!(status, 204);
            let (_, metrics) = http(&node, "GET", "/metrics", vec![]).await;
            (metric(&metrics, "sextant_replication_unprotected", shard) == Some(0.0)).then_some(())
        }
    })
    .await;
    cluster.shutdown().await;
}
