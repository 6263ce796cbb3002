#![cfg(not(madsim))]
//! Goal: leases and failover across three `sextant serve` nodes. Every primary acknowledges
//! under a lease the leader granted; when one node's server stops, the leader promotes the
//! secondaries of its shards (epoch + 1, merge pending) after the promotion timeout; writes for
//! those shards succeed again through the new primaries; queries warn that the merge-back is
//! pending and the admin shard map shows it with the lease holders; the stopped node, restarted
//! on its old data, is the secondary and never acknowledges a write for its old shards at their
//! old epoch (refused, or forwarded to the new primary) — neither through the Data service nor
//! through its own remote-write endpoint; the new primaries' replication streams then merge
//! back with it, merge pending clears, and both replicas hold every acknowledged write.
//! Method: `server::Server` in process on real tokio (tests/integration/cluster_data.rs's pattern) with short
//! lease timings (renew 100 ms, lease 400 ms, promotion 1.5 s); real gRPC between nodes; HTTP
//! through each node's axum router in process. Deadlines only bound a hung run.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use sextant::config::ServeConfig;
use sextant::lease::LeaseConfig;
use sextant::node::Node;
use sextant::remote_write::{Label, Sample, TimeSeries, WriteRequest};
use sextant::route::pb;
use sextant::server::Server;
use sextant::shard::shard_for;
use sextant_core::labels::Labels;
use sextant_core::matcher::{MatchOp, Matcher};
use sextant_core::series::fingerprint;
use sextant_raft::state::MetadataState;
use tokio::net::TcpListener;

use crate::cluster_http::{labels_of, request, value, query_range, remote_write};
use crate::wait::eventually;

const SERIES: usize = 40;
const LEASES: LeaseConfig = LeaseConfig { lease_renew_ms: 100, lease_ms: 400, promotion_timeout_ms: 1_500 };

async fn start_node(dir: &tempfile::TempDir, id: u64, initial_cluster: &str, grpc: TcpListener, http: TcpListener) -> Server {
    start_node_with(dir, id, initial_cluster, grpc, http, None).await
}

async fn start_node_with(dir: &tempfile::TempDir, id: u64, initial_cluster: &str, grpc: TcpListener, http: TcpListener, shard_count: Option<u32>) -> Server {
    let args = sextant::config::ServeArgs { data_dir: Some(dir.path().to_path_buf()), node_id: Some(id), initial_cluster: Some(initial_cluster.to_string()), shard_count, ..Default::default() };
    let mut config = ServeConfig::resolve(&args, None).unwrap();
    config.maintain_interval_ms = 3_600_000;
    config.lease = LEASES;
    config.lease.validate().unwrap();
    Server::start_with_listeners(config, http, grpc).await.expect("server starts")
}

fn state(server: &Server) -> MetadataState {
    server.raft().local_read().state
}

fn shard_of(state: &MetadataState, i: usize) -> u32 {
    shard_for(fingerprint("default", &labels_of(i)), state.shard_map.as_ref().unwrap().shard_count())
}

/// Samples of series `i` in `server`'s engine at exactly the times `times`.
async fn stored_at(server: &Server, i: usize, times: &[i64]) -> usize {
    let engine = server.node().engine().unwrap();
    let matchers = vec![Matcher::new(MatchOp::Equal, "instance", format!("i{i:02}")).unwrap()];
    let wanted: BTreeSet<i64> = times.iter().copied().collect();
    engine.select("default", &matchers, i64::MIN, i64::MAX).await.unwrap().into_iter().flat_map(|s| s.samples).filter(|s| wanted.contains(&s.t)).count()
}

/// True when `server` holds a live lease for exactly the shards it is primary of.
fn leases_match_map(server: &Server) -> bool {
    let node = server.node();
    let table = node.router().table();
    let mine = table.my_primaries();
    !mine.is_empty() && node.lease().live_shards(node.clock().now_monotonic_ns()) == mine
}

/// A forwarded write (`Data.Write`) sent straight to member `target` at `addr`.
async fn data_write(target: u64, addr: SocketAddr, shard: u32, epoch: u64, i: usize, t: i64) -> Result<pb::WriteReply, tonic::Status> {
    let mut client = pb::data_client::DataClient::connect(format!("http://{addr}")).await.map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let request = pb::WriteRequest {
        tenant: "default".into(),
        shard,
        epoch,
        judged_at_ms: t,
        from_node: 9,
        series: vec![pb::Series { labels: labels_of(i).iter().map(|l| pb::Label { name: l.name.clone(), value: l.value.clone() }).collect(), samples: vec![pb::Sample { t, v: value(i, t) }] }],
    };
    client.write(sextant_raft::network::addressed(request, target)).await.map(|r| r.into_inner())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_primary_is_replaced_and_returns_as_secondary() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut grpc = Vec::new();
    let mut http_listeners = Vec::new();
    for _ in 0..3 {
        grpc.push(TcpListener::bind("127.0.0.1:0").await.unwrap());
        http_listeners.push(TcpListener::bind("127.0.0.1:0").await.unwrap());
    }
    let grpc_addrs: Vec<SocketAddr> = grpc.iter().map(|l| l.local_addr().unwrap()).collect();
    let http_addrs: Vec<SocketAddr> = http_listeners.iter().map(|l| l.local_addr().unwrap()).collect();
    let initial_cluster = grpc_addrs.iter().enumerate().map(|(i, a)| format!("{}={a}", i + 1)).collect::<Vec<_>>().join(",");
    let mut servers: Vec<Option<Server>> = Vec::new();
    for (i, (g, h)) in grpc.into_iter().zip(http_listeners).enumerate() {
        servers.push(Some(start_node(&dirs[i], i as u64 + 1, &initial_cluster, g, h).await));
    }

    // 1. Every node routes by the full map and holds a lease for exactly its primary shards.
    eventually("every node to hold the map, all addresses and leases for its primary shards", || {
        let ok = servers.iter().flatten().all(|s| s.node().router().table().grpc_addrs.len() == 3 && state(s).nodes.len() == 3 && s.node().readiness().is_ok() && leases_match_map(s));
        async move { ok.then_some(()) }
    })
    .await;
    let first = state(servers[0].as_ref().unwrap());
    let map = first.shard_map.clone().unwrap();
    let now = servers[0].as_ref().unwrap().node().clock().now_wall_ms() / 1000 * 1000;
    let times: Vec<i64> = (0..3).map(|k| now - 6000 + k * 1000).collect();
    let all: Vec<usize> = (0..SERIES).collect();
    let (status, body) = remote_write(servers[0].as_ref().unwrap().node(), &request(&all, &times)).await;
    assert_eq!(status, 204, "{body}");

    // 2. Node 3 stops. Within the promotion timeout (plus detection) each of its shards gets its
    //    secondary as primary at epoch + 1, merge pending from node 3; other shards are untouched.
    let victim = 3u64;
    servers[2].take().unwrap().shutdown().await.unwrap();
    let victim_shards: BTreeMap<u32, (u64, u64)> = map.shards.iter().filter(|(_, s)| s.primary == Some(victim)).map(|(id, s)| (*id, (s.secondary.unwrap(), s.epoch))).collect();
    assert!(!victim_shards.is_empty(), "round-robin gives node 3 shards: {map:?}");
    let promoted = eventually("node 3's shards to be promoted on both survivors", || {
        let done = servers.iter().flatten().all(|s| {
            let now = state(s).shard_map.unwrap();
            victim_shards.iter().all(|(id, (secondary, epoch))| {
                let shard = &now.shards[id];
                shard.primary == Some(*secondary) && shard.secondary == Some(victim) && shard.epoch == epoch + 1 && shard.merge_pending.as_ref().is_some_and(|m| m.epoch == epoch + 1 && m.from_node == victim)
            })
        });
        let snapshot = state(servers[0].as_ref().unwrap()).shard_map.unwrap();
        async move { done.then_some(snapshot) }
    })
    .await;
    for (id, shard) in &promoted.shards {
        if !victim_shards.contains_key(id) {
            assert_eq!(shard, &map.shards[id], "shard {id} was not node 3's and must not change");
        }
    }
    let metrics: String = servers.iter().flatten().map(|s| s.node().metrics.encode()).collect();
    assert!(metrics.lines().any(|l| l.starts_with("sextant_promotions_total ") && !l.ends_with(" 0")), "the leader counts its promotions:\n{metrics}");

    // 3. Writes for every series succeed again (the new primaries hold leases for the new epochs).
    let later: Vec<i64> = times.iter().map(|t| t + 3000).collect();
    eventually("a write of every series to succeed through the new primaries", || {
        let node = servers[0].as_ref().unwrap().node().clone();
        let request = request(&all, &later);
        async move { (remote_write(&node, &request).await.0 == 204).then_some(()) }
    })
    .await;
    for i in &all {
        let shard = shard_of(&first, *i);
        let primary = promoted.shards[&shard].primary.unwrap();
        assert_eq!(stored_at(servers[primary as usize - 1].as_ref().unwrap(), *i, &later).await, 3, "series i{i:02}: the later write is on its (new) primary {primary}");
    }

    // 4. Queries answer the later write in full and warn that node 3's merge-back is pending.
    for server in servers.iter().flatten() {
        let (answer, warnings) = query_range(server.node(), &later).await;
        for i in &all {
            let key = format!("i{i:02}");
            let points: Vec<(i64, f64)> = later.iter().map(|t| (*t, value(*i, *t))).collect();
            assert_eq!(answer.get(&key), Some(&points), "series {key}");
        }
        let listed: Vec<String> = victim_shards.iter().map(|(id, (_, epoch))| format!("{id} (promoted at epoch {})", epoch + 1)).collect();
        let expected = format!("shards {}: merge-back from node 3 has not completed; the answer may lack samples acknowledged by the previous primary", listed.join(", "));
        assert!(warnings.contains(&expected), "warnings {warnings:?} should contain {expected:?}");
    }

    // 5. The admin shard map, read at the leader, shows merge pending and the lease holders.
    let leader = servers.iter().flatten().find_map(|s| (s.raft().leadership().0 == Some(s.raft().id())).then(|| s.grpc_addr())).expect("a survivor leads");
    let admin = sextant::admin::pb::admin_service_client::AdminServiceClient::connect(format!("http://{leader}")).await.unwrap();
    let reply = eventually("the leader's grant table to list the new primaries", || {
        let mut admin = admin.clone();
        let victim_shards = victim_shards.clone();
        async move {
            let reply = admin.get_shard_map(sextant::admin::pb::ReadRequest { consistency: 0 }).await.ok()?.into_inner();
            reply.shards.iter().filter(|s| victim_shards.contains_key(&s.shard)).all(|s| s.lease_known && s.lease_holder == s.primary).then_some(reply)
        }
    })
    .await;
    for info in reply.shards.iter().filter(|s| victim_shards.contains_key(&s.shard)) {
        assert_eq!((info.merge_pending_epoch, info.merge_from_node), (Some(info.epoch), Some(victim)), "shard {}", info.shard);
    }
    let table = sextant::admin::output::shard_map_table(&reply);
    assert!(table.contains("LEASE") && table.contains(&format!("pending from 3 (epoch {})", victim_shards.values().next().unwrap().1 + 1)), "{table}");
    drop(admin);

    // 6. Node 3 restarts on its old data and addresses. From its first moment it must not
    //    acknowledge a write for an old shard at the old epoch: refused with a reason (no lease
    //    yet, epoch not granted, or not the primary once it applied the promotion).
    let grpc = TcpListener::bind(grpc_addrs[2]).await.unwrap();
    let http_listener = TcpListener::bind(http_addrs[2]).await.unwrap();
    servers[2] = Some(start_node(&dirs[2], victim, &initial_cluster, grpc, http_listener).await);
    let (shard, (_, old_epoch)) = victim_shards.iter().next().map(|(s, v)| (*s, *v)).unwrap();
    let series = all.iter().copied().find(|i| shard_of(&first, *i) == shard).unwrap();
    let probe_t = later[2] + 1000;
    // Its storage opens first (writes answer 503 meanwhile); probe from then on.
    eventually("node 3's storage to open", || {
        let ok = servers[2].as_ref().unwrap().node().engine().is_ok();
        async move { ok.then_some(()) }
    })
    .await;
    for attempt in 0..5 {
        match data_write(3, grpc_addrs[2], shard, old_epoch, series, probe_t).await {
            Ok(reply) => panic!("attempt {attempt}: node 3 acknowledged a write for shard {shard} at its old epoch {old_epoch}: {reply:?}"),
            Err(status) => {
                assert!(matches!(status.code(), tonic::Code::FailedPrecondition | tonic::Code::Unavailable), "{status:?}");
                assert!(status.message().contains(&format!("shard {shard}")) || status.code() == tonic::Code::Unavailable, "the refusal names the shard: {status:?}");
            }
        }
        // A client write through node 3 for the same series: refused (503) while node 3 has
        // not applied the promotion, forwarded to the new primary (204) once it has — never
        // stored on node 3 under its old epoch. Once forwarded, node 3 may hold it as the new
        // primary's secondary (replicated), so: on node 3 only if on the new primary (read in
        // that order, since the stream ships only what the primary holds).
        let t = probe_t + 1 + attempt;
        let (status, body) = remote_write(servers[2].as_ref().unwrap().node(), &request(&[series], &[t])).await;
        assert!(status == 503 || status == 204, "attempt {attempt}: {status} {body}");
        let on_node_3 = stored_at(servers[2].as_ref().unwrap(), series, &[t]).await;
        let on_new_primary = stored_at(servers[victim_shards[&shard].0 as usize - 1].as_ref().unwrap(), series, &[t]).await;
        assert!(on_node_3 <= on_new_primary, "attempt {attempt}: node 3 stored a sample of its old shard the new primary lacks ({status} {body})");
        if status == 503 {
            assert_eq!(on_node_3, 0, "attempt {attempt}: node 3 stored a refused sample ({body})");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eventually("node 3 to apply the promotion and see itself as secondary", || {
        let s = state(servers[2].as_ref().unwrap());
        let ok = s.shard_map.as_ref().is_some_and(|m| victim_shards.keys().all(|id| m.shards[id].secondary == Some(victim))) && servers[2].as_ref().unwrap().node().router().table().grpc_addrs.len() == 3;
        async move { ok.then_some(()) }
    })
    .await;
    assert_eq!(stored_at(servers[2].as_ref().unwrap(), series, &[probe_t]).await, 0, "the refused probe was not stored on node 3");
    let status = data_write(3, grpc_addrs[2], shard, old_epoch + 1, series, probe_t).await.expect_err("node 3 is not the primary at the new epoch");
    assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status:?}");
    // A client write through node 3 is forwarded to the new primary, not stored on node 3.
    let last: Vec<i64> = later.iter().map(|t| t + 3000).collect();
    eventually("a write through the restarted node 3 to succeed", || {
        let node = servers[2].as_ref().unwrap().node().clone();
        let request = request(&all, &last);
        async move { (remote_write(&node, &request).await.0 == 204).then_some(()) }
    })
    .await;
    for (id, (new_primary, _)) in &victim_shards {
        for i in all.iter().filter(|i| shard_of(&first, **i) == *id) {
            assert_eq!(stored_at(servers[*new_primary as usize - 1].as_ref().unwrap(), *i, &last).await, 3, "series i{i:02}: on the new primary {new_primary}");
        }
    }

    // 7. The merge-back: the new primaries' streams sync both ways with node 3, each proposes
    //    MarkShardSynced, and merge pending clears on every node. Then both replicas of node 3's
    //    old shards hold every write (the first, acknowledged by node 3 itself, included) and
    //    queries no longer warn.
    eventually("merge pending to clear on every node", || {
        let done = servers.iter().flatten().all(|s| state(s).shard_map.unwrap().shards.values().all(|shard| shard.merge_pending.is_none()));
        async move { done.then_some(()) }
    })
    .await;
    for (id, (new_primary, _)) in &victim_shards {
        for i in all.iter().filter(|i| shard_of(&first, **i) == *id) {
            for node in [*new_primary, victim] {
                let server = servers[node as usize - 1].as_ref().unwrap();
                for (what, batch) in [("first", &times), ("later", &later), ("last", &last)] {
                    eventually(&format!("series i{i:02}'s {what} write on node {node}"), || async { (stored_at(server, *i, batch).await == 3).then_some(()) }).await;
                }
            }
        }
    }
    for server in servers.iter().flatten() {
        let (_, warnings) = query_range(server.node(), &last).await;
        assert!(!warnings.iter().any(|w| w.contains("merge-back")), "no merge warning once merged: {warnings:?}");
    }
    for server in servers.into_iter().flatten() {
        server.shutdown().await.unwrap();
    }
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

async fn admin(addr: SocketAddr, command: &[&str]) -> Result<serde_json::Value, String> {
    match sextant::admin::cli::run(&admin_args(addr, command)).await {
        Ok(text) => Ok(serde_json::from_str(&text).unwrap_or_else(|e| panic!("{command:?} answered no JSON ({e}): {text}"))),
        Err(error) => Err(error.to_string()),
    }
}

// Goal: an operator's `admin shards promote` swaps a live shard's replicas (epoch + 1, merge
// pending from the old primary), writes succeed through the new primary, and the merge-back
// clears the flag while both run; `admin shards set-secondary` names another secondary, which
// the primary's stream catches up (`admin shards --verify` equal). Refused, changing nothing:
// a stale --expected-epoch, an unknown node, the primary as its own secondary, a shard that
// does not exist.
// Method: three nodes in process with short lease timings; every step through the admin CLI's
// `run` against node 1's gRPC port; stored samples read from each engine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_promotes_a_shard_and_replaces_its_secondary() {
    let (_dirs, servers, grpc_addrs) = start_three(sextant_raft::command::SHARD_COUNT_DEFAULT).await;
    let first = state(&servers[0]);
    let map = first.shard_map.clone().unwrap();
    let (shard, before) = map.shards.iter().find(|(_, s)| s.primary == Some(1)).map(|(id, s)| (*id, s.clone())).unwrap();
    let (old_primary, old_secondary) = (before.primary.unwrap(), before.secondary.unwrap());
    let series: Vec<usize> = (0..SERIES).filter(|i| shard_of(&first, *i) == shard).collect();
    assert!(!series.is_empty());
    let now = servers[0].node().clock().now_wall_ms() / 1000 * 1000;
    let times: Vec<i64> = (0..3).map(|k| now - 9000 + k * 1000).collect();
    let (status, body) = remote_write(servers[0].node(), &request(&series, &times)).await;
    assert_eq!(status, 204, "{body}");
    let addr = grpc_addrs[0];
    let shard_text = shard.to_string();

    // Refusals change nothing.
    let stale = (before.epoch + 7).to_string();
    let error = admin(addr, &["shards", "promote", &shard_text, "--expected-epoch", &stale]).await.expect_err("a stale epoch is refused");
    assert!(error.contains("nothing changed") && error.contains("stale"), "{error}");
    let error = admin(addr, &["shards", "set-secondary", &shard_text, "9"]).await.expect_err("node 9 is not registered");
    assert!(error.contains("node 9 is not a registered node"), "{error}");
    let error = admin(addr, &["shards", "set-secondary", &shard_text, &old_primary.to_string()]).await.expect_err("the primary cannot be the secondary");
    assert!(error.contains("a secondary must be another node"), "{error}");
    let error = admin(addr, &["shards", "promote", "9999"]).await.expect_err("no such shard");
    assert!(error.contains("shard 9999 does not exist"), "{error}");
    assert_eq!(state(&servers[0]).shard_map.unwrap().shards[&shard], before, "refusals changed nothing");

    // Promote: the replicas swap at epoch + 1, merge pending from the old primary.
    let reply = admin(addr, &["shards", "promote", &shard_text]).await.expect("promote");
    assert_eq!(reply["write"]["applied"], true, "{reply}");
    // Applied at the leader; node 1 (whose view is read here) applies it a moment later.
    let index = reply["write"]["index"].as_u64().unwrap();
    let promoted = eventually("node 1 to apply the promotion", || async { (servers[0].raft().local_read().applied_index >= index).then(|| state(&servers[0]).shard_map.unwrap().shards[&shard].clone()) }).await;
    assert_eq!((promoted.primary, promoted.secondary, promoted.epoch), (Some(old_secondary), Some(old_primary), before.epoch + 1));
    // Writes succeed again once the new primary holds its lease (after the old one's fence).
    let later: Vec<i64> = times.iter().map(|t| t + 3000).collect();
    eventually("a write through node 1 to reach the new primary", || {
        let node = servers[0].node().clone();
        let request = request(&series, &later);
        async move { (remote_write(&node, &request).await.0 == 204).then_some(()) }
    })
    .await;
    eventually("merge pending to clear on every node", || {
        let done = servers.iter().all(|s| state(s).shard_map.unwrap().shards[&shard].merge_pending.is_none());
        async move { done.then_some(()) }
    })
    .await;
    for node in [old_secondary, old_primary] {
        for i in &series {
            eventually(&format!("series i{i:02} on node {node}"), || async { (stored_at(&servers[node as usize - 1], *i, &later).await == 3 && stored_at(&servers[node as usize - 1], *i, &times).await == 3).then_some(()) }).await;
        }
    }

    // Replace the secondary (the old primary) with the third node: caught up by sync.
    let third = (1..=3).find(|n| *n != old_primary && *n != old_secondary).unwrap();
    let reply = admin(addr, &["shards", "set-secondary", &shard_text, &third.to_string()]).await.expect("set-secondary");
    assert_eq!(reply["write"]["applied"], true, "{reply}");
    let index = reply["write"]["index"].as_u64().unwrap();
    let replaced = eventually("node 1 to apply the new secondary", || async { (servers[0].raft().local_read().applied_index >= index).then(|| state(&servers[0]).shard_map.unwrap().shards[&shard].clone()) }).await;
    assert_eq!((replaced.primary, replaced.secondary, replaced.epoch), (Some(old_secondary), Some(third), before.epoch + 1), "the primary and epoch stay");
    for i in &series {
        eventually(&format!("series i{i:02} caught up on node {third}"), || async { (stored_at(&servers[third as usize - 1], *i, &later).await == 3 && stored_at(&servers[third as usize - 1], *i, &times).await == 3).then_some(()) }).await;
    }
    let verify = eventually("admin shards --verify to report equal digests", || async { admin(addr, &["shards", "--verify"]).await.ok() }).await;
    assert_eq!(verify["mismatched"], 0, "{verify}");
    for server in servers {
        server.shutdown().await.unwrap();
    }
}

fn w_labels(i: usize) -> Labels {
    Labels::from_pairs(&[("__name__", "w"), ("instance", &format!("i{i:02}"))])
}

/// One sample of `w` for each of `series` at `t`.
fn w_request(series: usize, t: i64) -> WriteRequest {
    let timeseries = (0..series)
        .map(|i| TimeSeries { labels: w_labels(i).iter().map(|l| Label { name: l.name.clone(), value: l.value.clone() }).collect(), samples: vec![Sample { timestamp: t, value: i as f64 }], exemplars: vec![], histograms: vec![] })
        .collect();
    WriteRequest { timeseries, metadata: vec![] }
}

/// The timestamps of `w{instance="iNN"}` in `server`'s engine.
async fn w_stored(server: &Server, i: usize) -> BTreeSet<i64> {
    let engine = server.node().engine().unwrap();
    let matchers = vec![Matcher::new(MatchOp::Equal, "__name__", "w").unwrap(), Matcher::new(MatchOp::Equal, "instance", format!("i{i:02}")).unwrap()];
    engine.select("default", &matchers, i64::MIN, i64::MAX).await.unwrap().into_iter().flat_map(|s| s.samples).map(|s| s.t).collect()
}

/// Three nodes of `shard_count` shards, ready: each holds the map, every address and leases for
/// its primary shards. (data directories, servers, gRPC addresses).
async fn start_three(shard_count: u32) -> (Vec<tempfile::TempDir>, Vec<Server>, Vec<SocketAddr>) {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut grpc = Vec::new();
    let mut http_listeners = Vec::new();
    for _ in 0..3 {
        grpc.push(TcpListener::bind("127.0.0.1:0").await.unwrap());
        http_listeners.push(TcpListener::bind("127.0.0.1:0").await.unwrap());
    }
    let grpc_addrs: Vec<SocketAddr> = grpc.iter().map(|l| l.local_addr().unwrap()).collect();
    let initial_cluster = grpc_addrs.iter().enumerate().map(|(i, a)| format!("{}={a}", i + 1)).collect::<Vec<_>>().join(",");
    let mut servers = Vec::new();
    for (i, (g, h)) in grpc.into_iter().zip(http_listeners).enumerate() {
        servers.push(start_node_with(&dirs[i], i as u64 + 1, &initial_cluster, g, h, Some(shard_count)).await);
    }
    eventually("every node to hold the map, all addresses and leases for its primary shards", || {
        let ok = servers.iter().all(|s| s.node().router().table().grpc_addrs.len() == 3 && state(s).nodes.len() == 3 && s.node().readiness().is_ok() && leases_match_map(s));
        async move { ok.then_some(()) }
    })
    .await;
    (dirs, servers, grpc_addrs)
}

/// (primaries, secondaries) per node in `state`'s shard map.
fn roles(state: &MetadataState) -> BTreeMap<u64, (usize, usize)> {
    let mut out: BTreeMap<u64, (usize, usize)> = BTreeMap::new();
    for s in state.shard_map.as_ref().unwrap().shards.values() {
        if let Some(p) = s.primary {
            out.entry(p).or_default().0 += 1;
        }
        if let Some(x) = s.secondary {
            out.entry(x).or_default().1 += 1;
        }
    }
    out
}

// Goal: `admin rebalance --drain 3` plans moves that touch only shards node 3 holds, and with
// --apply leaves node 3 holding nothing, nodes 1 and 2 evenly loaded (3 primaries and 3
// secondaries each of 6 shards), no merge pending, replicas equal (`shards --verify`), every
// acknowledged sample readable and writes accepted. `admin rebalance --apply` over all three
// voters then spreads the shards back (2 + 2 each), and a third run has nothing to move.
// Writes keep arriving at all three nodes throughout: every one acknowledged is, at the end, on
// both replicas of its shard (promoting a live primary loses no acknowledged write).
// Method: three nodes in process, 6 shards, short lease timings; the admin CLI's `run` against
// node 1; stored samples read through node 1's query API and from each engine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebalance_drains_a_node_and_spreads_shards_back() {
    const SHARDS: u32 = 6;
    let (_dirs, servers, grpc_addrs) = start_three(SHARDS).await;
    let before = state(&servers[0]);
    assert_eq!(before.shard_map.as_ref().unwrap().shard_count(), SHARDS);
    let held_by_3: BTreeSet<u32> = before.shard_map.as_ref().unwrap().shards.iter().filter(|(_, s)| s.primary == Some(3) || s.secondary == Some(3)).map(|(id, _)| *id).collect();
    assert!(!held_by_3.is_empty(), "node 3 holds shards at formation: {:?}", roles(&before));
    let series: Vec<usize> = (0..SERIES).collect();
    let now = servers[0].node().clock().now_wall_ms() / 1000 * 1000;
    let times: Vec<i64> = (0..3).map(|k| now - 9000 + k * 1000).collect();
    let (status, body) = remote_write(servers[0].node(), &request(&series, &times)).await;
    assert_eq!(status, 204, "{body}");
    let addr = grpc_addrs[0];
    // The writer: one sample of `w` per series every 20 ms, through nodes 1, 2, 3 in turn.
    let (stop_writer, stopped) = tokio::sync::watch::channel(false);
    let writer = {
        let nodes: Vec<Arc<Node>> = servers.iter().map(|s| s.node().clone()).collect();
        let base = now - 60_000;
        tokio::spawn(async move {
            let (mut acked, mut refused) = (Vec::new(), 0usize);
            for k in 0.. {
                if *stopped.borrow() {
                    break;
                }
                let t = base + k as i64;
                match remote_write(&nodes[k % 3], &w_request(SERIES, t)).await.0 {
                    204 => acked.push(t),
                    _ => refused += 1,
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (acked, refused)
        })
    };

    // The plan alone changes nothing and moves exactly the shards node 3 holds.
    let planned = admin(addr, &["rebalance", "--drain", "3"]).await.expect("plan");
    assert_eq!(planned["voters"], serde_json::json!([1, 2]), "{planned}");
    let moved: BTreeSet<u32> = planned["moves"].as_array().unwrap().iter().map(|m| m["shard"].as_u64().unwrap() as u32).collect();
    assert_eq!(moved, held_by_3, "{planned}");
    assert_eq!(state(&servers[0]).shard_map, before.shard_map, "a plan without --apply changes nothing");
    let error = admin(addr, &["rebalance", "--drain", "7"]).await.expect_err("node 7 is not a voter");
    assert!(error.contains("--drain 7: not a voter"), "{error}");

    // Drain node 3.
    let drained = admin(addr, &["rebalance", "--drain", "3", "--apply", "--step-timeout", "60s"]).await.expect("drain");
    assert_eq!(drained["moves_done"].as_u64().unwrap() as usize, moved.len(), "{drained}");
    let after = eventually("node 1 to see the drained map without merges pending", || {
        let s = state(&servers[0]);
        let settled = s.shard_map.as_ref().unwrap().shards.values().all(|x| x.merge_pending.is_none());
        async move { settled.then_some(s) }
    })
    .await;
    assert_eq!(roles(&after), BTreeMap::from([(1, (3, 3)), (2, (3, 3))]), "{:?}", after.shard_map);
    let verify = eventually("admin shards --verify to report equal digests", || async { admin(addr, &["shards", "--verify"]).await.ok().filter(|v| v["mismatched"] == 0) }).await;
    assert_eq!(verify["mismatched"], 0, "{verify}");
    let (read, _) = query_range(servers[0].node(), &times).await;
    assert_eq!(read.len(), SERIES, "every series readable after the drain");
    for (instance, points) in &read {
        let i: usize = instance[1..].parse().unwrap();
        assert_eq!(points, &times.iter().map(|t| (*t, value(i, *t))).collect::<Vec<_>>(), "{instance}");
    }
    let later: Vec<i64> = times.iter().map(|t| t + 3000).collect();
    eventually("writes to every shard to succeed after the drain", || {
        let node = servers[0].node().clone();
        let request = request(&series, &later);
        async move { (remote_write(&node, &request).await.0 == 204).then_some(()) }
    })
    .await;

    // Spread back over all three, then nothing is left to move.
    let spread = admin(addr, &["rebalance", "--apply", "--step-timeout", "60s"]).await.expect("spread");
    assert!(spread["moves_done"].as_u64().unwrap() > 0, "{spread}");
    let balanced = eventually("node 1 to see the spread map without merges pending", || {
        let s = state(&servers[0]);
        let settled = s.shard_map.as_ref().unwrap().shards.values().all(|x| x.merge_pending.is_none());
        async move { settled.then_some(s) }
    })
    .await;
    assert_eq!(roles(&balanced), BTreeMap::from([(1, (2, 2)), (2, (2, 2)), (3, (2, 2))]), "{:?}", balanced.shard_map);
    let again = admin(addr, &["rebalance"]).await.expect("plan again");
    assert_eq!(again["moves"], serde_json::json!([]), "{again}");
    // `cluster status` shows each member's primary shards (from its own stream view).
    let status = admin(addr, &["cluster", "status"]).await.expect("cluster status");
    let primaries: Vec<u64> = status["members"].as_array().unwrap().iter().map(|m| m["replication"]["primary_shards"].as_u64().unwrap()).collect();
    assert_eq!(primaries, vec![2, 2, 2], "{status}");
    stop_writer.send(true).unwrap();
    let (acked, refused) = writer.await.unwrap();
    // Most writes succeed; a few wait out a promotion's fence and are refused (503).
    assert!(acked.len() >= 20, "acknowledged {} writes, refused {refused}", acked.len());
    eprintln!("writer: {} acknowledged, {refused} refused during the rebalances", acked.len());
    let acked: BTreeSet<i64> = acked.into_iter().collect();
    let map = balanced.shard_map.as_ref().unwrap();
    for i in 0..SERIES {
        let shard = shard_for(fingerprint("default", &w_labels(i)), SHARDS);
        let placement = &map.shards[&shard];
        for node in [placement.primary.unwrap(), placement.secondary.unwrap()] {
            let stored = eventually(&format!("w{{instance=\"i{i:02}\"}} on node {node} to hold every acknowledged write"), || async {
                let stored = w_stored(&servers[node as usize - 1], i).await;
                acked.is_subset(&stored).then_some(stored)
            })
            .await;
            assert!(acked.is_subset(&stored));
        }
    }
    let (read, _) = query_range(servers[0].node(), &[times[0], times[1], times[2], later[0], later[1], later[2]]).await;
    for (instance, points) in &read {
        let i: usize = instance[1..].parse().unwrap();
        let expected: Vec<(i64, f64)> = times.iter().chain(&later).map(|t| (*t, value(i, *t))).collect();
        assert_eq!(points, &expected, "{instance}");
    }
    assert_eq!(read.len(), SERIES);
    let verify = eventually("admin shards --verify to report equal digests", || async { admin(addr, &["shards", "--verify"]).await.ok().filter(|v| v["mismatched"] == 0) }).await;
    assert_eq!(verify["mismatched"], 0, "{verify}");
    for server in servers {
        server.shutdown().await.unwrap();
    }
}

// Goal: the operator's flow when a node is lost for good. Node 3 stops and stays down; the
// leader promotes its shards (merge pending from node 3). `shards abandon-merge` is refused
// while node 3 is still such a shard's secondary and a voter (its merge-back could complete).
// `rebalance --drain 3 --apply` completes without waiting for those merge-backs (they cannot
// complete through another secondary) and leaves node 3 holding nothing; queries still warn
// until `shards abandon-merge` clears each shard, after which the warning is gone, a second
// abandon is refused, every sample replicated before the loss is answered, `shards --verify`
// is equal and writes succeed.
// Method: three nodes in process, 6 shards, short lease timings; node 3's server shut down;
// the admin CLI's `run` against node 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_lost_for_good_is_drained_and_its_merges_abandoned() {
    const SHARDS: u32 = 6;
    let (_dirs, mut servers, grpc_addrs) = start_three(SHARDS).await;
    let addr = grpc_addrs[0];
    let all: Vec<usize> = (0..SERIES).collect();
    let now = servers[0].node().clock().now_wall_ms() / 1000 * 1000;
    let times: Vec<i64> = (0..3).map(|k| now - 9000 + k * 1000).collect();
    let (status, body) = remote_write(servers[0].node(), &request(&all, &times)).await;
    assert_eq!(status, 204, "{body}");
    // Replicated everywhere before the loss (what the loss may cost is the lag; here none).
    eventually("equal replicas before the loss", || async { admin(addr, &["shards", "--verify"]).await.ok().filter(|v| v["mismatched"] == 0) }).await;

    let victim = servers.pop().unwrap();
    victim.shutdown().await.unwrap();
    let promoted: BTreeSet<u32> = eventually("node 3's shards to be promoted", || {
        let map = state(&servers[0]).shard_map.unwrap();
        let done = map.shards.values().all(|s| s.primary != Some(3));
        let promoted = map.shards.iter().filter(|(_, s)| s.merge_pending.as_ref().is_some_and(|m| m.from_node == 3)).map(|(id, _)| *id).collect();
        async move { done.then_some(promoted) }
    })
    .await;
    assert!(!promoted.is_empty(), "node 3 was primary of some shards");
    let first = promoted.iter().next().unwrap().to_string();
    let error = admin(addr, &["shards", "abandon-merge", &first]).await.expect_err("node 3 is still the secondary and a voter");
    assert!(error.contains("can still complete"), "{error}");

    let drained = admin(addr, &["rebalance", "--drain", "3", "--apply", "--step-timeout", "60s"]).await.expect("drain a dead node");
    assert!(drained["moves_done"].as_u64().unwrap() > 0, "{drained}");
    let map = state(&servers[0]).shard_map.unwrap();
    assert!(map.shards.values().all(|s| s.primary != Some(3) && s.secondary != Some(3)), "node 3 holds nothing: {map:?}");
    assert_eq!(roles(&state(&servers[0])), BTreeMap::from([(1, (3, 3)), (2, (3, 3))]));
    let pending: BTreeSet<u32> = map.shards.iter().filter(|(_, s)| s.merge_pending.is_some()).map(|(id, _)| *id).collect();
    assert_eq!(pending, promoted, "the merges from node 3 stay pending: nothing can complete them");
    let (_, warnings) = query_range(servers[0].node(), &times).await;
    assert!(warnings.iter().any(|w| w.contains("merge-back from node 3 has not completed")), "{warnings:?}");

    for shard in &promoted {
        let reply = admin(addr, &["shards", "abandon-merge", &shard.to_string()]).await.expect("abandon-merge");
        assert_eq!(reply["write"]["applied"], true, "{reply}");
        let index = reply["write"]["index"].as_u64().unwrap();
        eventually("node 1 to apply the abandon", || async { (servers[0].raft().local_read().applied_index >= index).then_some(()) }).await;
    }
    let error = admin(addr, &["shards", "abandon-merge", &first]).await.expect_err("nothing pending any more");
    assert!(error.contains("has no merge pending"), "{error}");
    assert!(state(&servers[0]).shard_map.unwrap().shards.values().all(|s| s.merge_pending.is_none()));
    let (read, warnings) = query_range(servers[0].node(), &times).await;
    assert!(warnings.is_empty(), "no warning once abandoned and drained: {warnings:?}");
    assert_eq!(read.len(), SERIES);
    for (instance, points) in &read {
        let i: usize = instance[1..].parse().unwrap();
        assert_eq!(points, &times.iter().map(|t| (*t, value(i, *t))).collect::<Vec<_>>(), "{instance}");
    }
    let verify = eventually("equal replicas on nodes 1 and 2", || async { admin(addr, &["shards", "--verify"]).await.ok().filter(|v| v["mismatched"] == 0) }).await;
    assert_eq!(verify["mismatched"], 0);
    let later: Vec<i64> = times.iter().map(|t| t + 3000).collect();
    eventually("writes to every shard to succeed", || {
        let node = servers[0].node().clone();
        let request = request(&all, &later);
        async move { (remote_write(&node, &request).await.0 == 204).then_some(()) }
    })
    .await;
    for server in servers {
        server.shutdown().await.unwrap();
    }
}
