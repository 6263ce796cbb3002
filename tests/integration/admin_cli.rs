#![cfg(not(madsim))]
//! Goal: every `sextant admin` verb works against real nodes — one-node and three-node
//! clusters — with exact table and JSON output, linearizable and local reads saying which node
//! answered at which applied index, NotLeader answered by a follower and retried at the leader,
//! token auth (unauthenticated / permission denied), a bad rule file refused in one line that
//! names the group and rule, and dashboard history.
//! Method: `RaftNode::start_with_services` + `admin::add_services` in one process on real
//! tokio, each node on a RealFs temp dir and a 127.0.0.1 ephemeral port, its `Node` on a
//! `ManualClock` with a small engine on SimFs; the CLI's `run` is called with parsed
//! arguments and its returned text compared. Timeouts only bound a hung run.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use sextant::admin::add_services;
use sextant::admin::cli::{run, AdminArgs};
use sextant::auth::Tokens;
use sextant::config::ServeConfig;
use sextant::node::{EngineSlot, Node};
use sextant::remote_write::{Label, Sample, TimeSeries, WriteRequest};
use sextant_core::clock::ManualClock;
use sextant_raft::{NodeId, RaftNode, RaftNodeConfig};
use sextant_storage::engine::{Engine, EngineConfig};
use sextant_storage::fs::real::RealFs;
use sextant_storage::fs::sim::SimFs;
use sextant_storage::fs::FileSystem;
use tokio::net::TcpListener;

const NOW: i64 = 1_700_000_000_000;

#[derive(Parser)]
struct Wrapper {
    #[command(flatten)]
    admin: AdminArgs,
}

struct Member {
    id: NodeId,
    grpc_addr: String,
    raft: RaftNode,
    node: Arc<Node>,
    _dir: tempfile::TempDir,
}

async fn start_member(id: NodeId, tokens: Option<&str>) -> Member {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let grpc_addr = listener.local_addr().unwrap().to_string();
    let clock = Arc::new(ManualClock::new(NOW));
    let tokens = tokens.map(|t| Tokens::parse(t).unwrap());
    let node = Node::new(ServeConfig::default(), clock.clone(), tokens);
    let engine = Engine::open(Arc::new(SimFs::new(id)), clock, EngineConfig { shard_ids: vec![0, 1], retention_ms: None, ..EngineConfig::default() }).await.unwrap();
    node.set_engine(EngineSlot::Ready(engine));
    let dir = tempfile::tempdir().unwrap();
    let fs: Arc<dyn FileSystem> = Arc::new(RealFs::new(dir.path()));
    let raft_node = sextant_raft::Node { http_addr: format!("127.0.0.1:{}", 19_000 + id), grpc_addr: grpc_addr.clone() };
    let mut config = RaftNodeConfig::new(id, raft_node, "raft");
    config.raft.heartbeat_interval = 50;
    config.raft.election_timeout_min = 300;
    config.raft.election_timeout_max = 600;
    let for_services = node.clone();
    let raft = RaftNode::start_with_services(config, fs, listener, move |handle, router| add_services(handle, for_services, router)).await.unwrap();
    Member { id, grpc_addr, raft, node, _dir: dir }
}

/// A cluster of `size` voters, initialized at node 1; returns once a leader is known and
/// every member has applied the initial entries.
async fn cluster(size: NodeId, tokens: Option<&str>) -> BTreeMap<NodeId, Member> {
    let mut members = BTreeMap::new();
    for id in 1..=size {
        members.insert(id, start_member(id, tokens).await);
    }
    let voters = members.values().map(|m| (m.id, sextant_raft::Node { http_addr: format!("127.0.0.1:{}", 19_000 + m.id), grpc_addr: m.grpc_addr.clone() })).collect();
    members[&1].raft.initialize(voters).await.unwrap();
    for member in members.values() {
        member.raft.raft().wait(Some(Duration::from_secs(30))).metrics(|m| m.current_leader.is_some() && m.last_applied.is_some_and(|l| l.index >= 1), "leader elected and known").await.unwrap();
    }
    members
}

fn leader(members: &BTreeMap<NodeId, Member>) -> NodeId {
    members[&1].raft.raft().metrics().borrow().current_leader.unwrap()
}

async fn wait_applied(members: &BTreeMap<NodeId, Member>, index: u64) {
    for member in members.values() {
        member.raft.raft().wait(Some(Duration::from_secs(30))).applied_index_at_least(Some(index), "applied").await.unwrap();
    }
}

/// Runs `sextant admin ARGS… --addr ADDR` and returns stdout, or the one error line.
async fn admin(addr: &str, args: &[&str]) -> Result<String, String> {
    let mut argv = vec!["admin", "--addr", addr, "--timeout", "20s"];
    argv.extend_from_slice(args);
    let parsed = Wrapper::try_parse_from(argv).map_err(|e| e.to_string())?;
    run(&parsed.admin).await.map_err(|e| e.to_string())
}

#[derive(Debug)]
enum Expect<'a> {
    /// The whole output, exactly.
    Exact(&'a str),
    /// Every one of these appears in the output.
    Contains(Vec<&'a str>),
    /// The error line contains this, and is one line.
    Fails(&'a str),
}

/// The one checking helper: runs `args` at `addr` and compares.
async fn check(addr: &str, args: &[&str], expected: Expect<'_>) -> String {
    let got = admin(addr, args).await;
    match (&got, &expected) {
        (Ok(text), Expect::Exact(want)) => assert_eq!(text, want, "{args:?}"),
        (Ok(text), Expect::Contains(needles)) => {
            for needle in needles {
                assert!(text.contains(needle), "{args:?}: output lacks {needle:?}:\n{text}");
            }
        }
        (Err(line), Expect::Fails(needle)) => {
            assert!(line.contains(needle), "{args:?}: error {line:?} lacks {needle:?}");
            assert!(!line.contains('\n'), "{args:?}: error is not one line: {line:?}");
        }
        _ => panic!("{args:?}: got {got:?}, want {expected:?}"),
    }
    got.unwrap_or_else(|e| e)
}

fn write_file(dir: &tempfile::TempDir, name: &str, text: &str) -> String {
    let path = dir.path().join(name);
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_string()
}

const RULES: &str = "groups:\n- name: node\n  interval: 30s\n  limit: 100\n  rules:\n  - record: job:up:sum\n    expr: sum by (job) (up)\n  - alert: Down\n    expr: up == 0\n    for: 5m\n    keep_firing_for: 10m\n    labels: {severity: page}\n    annotations: {summary: down}\n- name: other\n  rules:\n  - record: x:y\n    expr: vector(1)\n";

// Goal: every verb on a one-node cluster, table and JSON, with the exact indexes a fresh
// cluster produces (0: the initial membership, 1: the leader's blank entry, then one entry
// per write, no-ops included).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_node_every_verb() {
    let members = cluster(1, None).await;
    let addr = members[&1].grpc_addr.clone();
    let files = tempfile::tempdir().unwrap();
    let rules = write_file(&files, "rules.yml", RULES);
    let bad_rules = write_file(&files, "bad.yml", "groups:\n- name: node\n  rules:\n  - record: a\n    expr: up\n  - alert: Broken\n    expr: sum(rate(x[5m])\n");
    let dash_v1 = write_file(&files, "d1.json", r#"{"uid":"abc","title":"Overview","panels":[]}"#);
    let dash_v2 = write_file(&files, "d2.json", r#"{"uid":"abc","title":"Overview v2","panels":[{"id":1}]}"#);
    let dash_no_uid = write_file(&files, "d3.json", r#"{"title":"x"}"#);
    let dash_array = write_file(&files, "d4.json", "[1,2]");
    let a = addr.as_str();

    check(a, &["shards"], Expect::Exact("no shard map yet\nanswered by node 1 at applied index 1 (linearizable)\n")).await;
    check(a, &["rules", "list"], Expect::Exact("GROUP  INTERVAL  RECORDING  ALERTING  VERSION\nanswered by node 1 at applied index 1 (linearizable)\n")).await;
    check(a, &["rules", "apply", "-f", &rules], Expect::Exact("applied 2 rule groups [\"node\", \"other\"] at log index 2\n")).await;
    check(a, &["rules", "apply", "-f", &bad_rules], Expect::Fails("rules apply at 127.0.0.1:")).await;
    check(a, &["rules", "apply", "-f", &bad_rules], Expect::Fails("invalid argument: invalid group \"node\" (groups[0]), rule 2 \"Broken\", expr: unclosed left parenthesis")).await;
    check(a, &["rules", "list"], Expect::Exact("GROUP  INTERVAL  RECORDING  ALERTING  VERSION\nnode   30s       1          1         2\nother  default   1          0         2\nanswered by node 1 at applied index 2 (linearizable)\n")).await;
    check(
        a,
        &["rules", "get", "node"],
        Expect::Exact("# version 2\ngroups:\n- name: \"node\"\n  interval: 30s\n  limit: 100\n  rules:\n  - record: \"job:up:sum\"\n    expr: \"sum by (job) (up)\"\n  - alert: \"Down\"\n    expr: \"up == 0\"\n    for: 5m\n    keep_firing_for: 10m\n    labels:\n      \"severity\": \"page\"\n    annotations:\n      \"summary\": \"down\"\nanswered by node 1 at applied index 2 (linearizable)\n"),
    )
    .await;
    let json = check(a, &["--output", "json", "rules", "get", "other", "--consistency", "local"], Expect::Contains(vec!["\"consistency\": \"local\""])).await;
    let value: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(value["group"]["rules"][0]["record"], "x:y");
    assert_eq!(value["read"]["applied_index"], 2);
    check(a, &["rules", "get", "missing"], Expect::Fails("not found: rule group \"missing\" does not exist")).await;
    check(a, &["rules", "delete", "other"], Expect::Exact("deleted rule group \"other\" at log index 3\n")).await;
    check(a, &["rules", "delete", "other"], Expect::Fails("rules delete: nothing changed: rule group \"other\" does not exist")).await;

    check(a, &["dashboards", "put", "-f", &dash_v1], Expect::Exact("saved dashboard \"abc\" (\"Overview\") as version 5 at log index 5\n")).await;
    check(a, &["dashboards", "put", "-f", &dash_v2], Expect::Exact("saved dashboard \"abc\" (\"Overview v2\") as version 6 at log index 6\n")).await;
    check(a, &["dashboards", "put", "-f", &dash_no_uid], Expect::Fails("the dashboard has no uid")).await;
    check(a, &["dashboards", "put", "-f", &dash_no_uid, "--uid", "given"], Expect::Exact("saved dashboard \"given\" (\"x\") as version 7 at log index 7\n")).await;
    check(a, &["dashboards", "put", "-f", &dash_v1, "--uid", "other"], Expect::Fails("uid \"other\" given, but the dashboard JSON says \"abc\"")).await;
    check(a, &["dashboards", "put", "-f", &dash_array], Expect::Fails("a Grafana dashboard is a JSON object")).await;
    check(a, &["dashboards", "history", "abc"], Expect::Contains(vec!["VERSION  TITLE        BYTES  WHO", "5        Overview     44     anonymous@127.0.0.1:", "6        Overview v2  55     anonymous@127.0.0.1:", "answered by node 1 at applied index 7 (linearizable)"])).await;
    check(a, &["dashboards", "get", "abc", "--version", "5"], Expect::Contains(vec!["# dashboard \"abc\" version 5 \"Overview\"", r#"{"uid":"abc","title":"Overview","panels":[]}"#])).await;
    check(a, &["dashboards", "get", "abc", "--version", "4"], Expect::Fails("dashboard \"abc\" has no version 4 (versions kept: [5, 6])")).await;
    let json = check(a, &["dashboards", "get", "abc", "--output", "json"], Expect::Contains(vec![])).await;
    let value: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(value["dashboard"]["version"], 6);
    assert_eq!(value["dashboard"]["dashboard"]["panels"][0]["id"], 1);
    assert_eq!(value["dashboard"]["at_ms"], NOW);
    check(a, &["dashboards", "list"], Expect::Contains(vec!["UID    VERSION  TITLE        BYTES", "abc    6        Overview v2  55", "given  7        x            13"])).await;
    check(a, &["dashboards", "delete", "given"], Expect::Exact("deleted dashboard \"given\" at log index 8\n")).await;

    check(a, &["limits", "get", "--tenant", "t"], Expect::Contains(vec!["tenant \"t\": not set in the cluster: the answering node's defaults", "blocked_labels                 -"])).await;
    check(a, &["labels", "block", "--tenant", "t", "pod"], Expect::Fails("labels block: nothing changed: tenant \"t\" does not exist")).await;
    check(a, &["limits", "set", "--tenant", "t", "--series-per-metric", "100", "--query-range", "30d"], Expect::Contains(vec!["set limits of tenant \"t\" at log index 10", "series_per_metric_max          100", "query_range_ms_max             2592000000"])).await;
    check(a, &["limits", "set", "--tenant", "t", "--ingest-rate", "5", "--query-timeout", "2m"], Expect::Contains(vec!["series_per_metric_max          100", "ingest_rate_samples_per_s_max  5", "query_timeout_ms               120000"])).await;
    check(a, &["limits", "set", "--tenant", "t", "--query-timeout", "soon"], Expect::Fails("--query-timeout \"soon\"")).await;
    check(a, &["limits", "set", "--tenant", "a/b"], Expect::Fails("invalid tenant id \"a/b\"")).await;
    check(a, &["labels", "block", "--tenant", "t", "pod"], Expect::Exact("blocked label \"pod\" for tenant \"t\" at log index 12\n")).await;
    let json = check(a, &["limits", "get", "--tenant", "t", "--output", "json"], Expect::Contains(vec![])).await;
    let value: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(value["limits"]["series_per_metric_max"], 100);
    assert_eq!(value["limits"]["ingest_rate_samples_per_s_max"], 5);
    assert_eq!(value["blocked_labels"], serde_json::json!(["pod"]));
    assert_eq!(value["version"], 12);
    check(a, &["labels", "unblock", "--tenant", "t", "pod"], Expect::Exact("unblocked label \"pod\" for tenant \"t\" at log index 13\n")).await;

    // Cardinality: this node's tracker, after a write of 3 series of `up` and 1 of `x`.
    let series = |name: &str, i: u32| TimeSeries {
        labels: vec![Label { name: "__name__".into(), value: name.into() }, Label { name: "i".into(), value: i.to_string() }],
        samples: vec![Sample { value: 1.0, timestamp: NOW }],
        exemplars: vec![],
        histograms: vec![],
    };
    let outcome = members[&1].node.ingest("t", WriteRequest { timeseries: vec![series("up", 1), series("up", 2), series("up", 3), series("x", 1)], metadata: vec![] }).await;
    assert_eq!(outcome.status, 204, "{outcome:?}");
    check(a, &["cardinality", "top"], Expect::Exact("TENANT  METRIC  ACTIVE_SERIES  PER_NODE\nt       up      3              1:3\nt       x       1              1:1\nanswered by 1 of 1 nodes (merged by node 1)\n")).await;
    check(a, &["cardinality", "top", "--limit", "1", "--tenant", "other"], Expect::Exact("TENANT  METRIC  ACTIVE_SERIES  PER_NODE\nanswered by 1 of 1 nodes (merged by node 1)\n")).await;

    check(a, &["node", "remove", "1"], Expect::Fails("refusing to remove node 1: it is the last voter")).await;
    check(a, &["node", "remove", "7"], Expect::Fails("node 7 is not a member")).await;
    check(a, &["snapshot"], Expect::Exact("snapshot on node 1 built: covers log index 13 (applied index 13)\n")).await;
    let status = check(a, &["cluster", "status"], Expect::Contains(vec!["leader: 1  term: 1  commit index: 13  last log index: 13", "ID  ROLE   STATE   GRPC", "answered by node 1 at applied index 13 (linearizable)"])).await;
    assert!(status.contains(&format!("1   voter  leader  {a}  127.0.0.1:19001  13       13       0    -         ok")), "no shard map, no DATA LAG: {status}");
    let json = check(a, &["cluster", "status", "--output", "json"], Expect::Contains(vec![])).await;
    let value: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(value["members"][0]["health"], "ok");
    assert_eq!(value["members"][0]["applied_index"], 13);
    assert_eq!(value["members"][0]["replication"]["primary_shards"], 0);
    assert_eq!(value["leader_id"], 1);

    // Usage errors are one line, before any call.
    check(a, &["rules", "apply", "-f", "/nonexistent/rules.yml"], Expect::Fails("rule file /nonexistent/rules.yml:")).await;
    check("127.0.0.1:1", &["shards"], Expect::Fails("cannot connect to 127.0.0.1:1")).await;

    for (_, member) in members {
        member.raft.shutdown().await.unwrap();
    }
}

// Goal: admin calls need an admin token when the node has tokens: none or unknown →
// unauthenticated, another role → permission denied; the audit names the token by tenant and
// hash, never the token itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_required() {
    let members = cluster(1, Some("adm-secret ops admin\nw1 t write\n")).await;
    let a = members[&1].grpc_addr.clone();
    let a = a.as_str();
    let files = tempfile::tempdir().unwrap();
    let token_file = write_file(&files, "token", "adm-secret\n");
    let dash = write_file(&files, "d.json", r#"{"uid":"u","title":"T"}"#);
    check(a, &["shards"], Expect::Fails("unauthenticated: missing bearer token")).await;
    check(a, &["--token", "nope", "shards"], Expect::Fails("unauthenticated: unknown bearer token")).await;
    check(a, &["--token", "w1", "shards"], Expect::Fails("permission denied: token has role write, this endpoint needs role admin")).await;
    check(a, &["--token", "adm-secret", "shards"], Expect::Contains(vec!["no shard map yet"])).await;
    check(a, &["--token-file", &token_file, "dashboards", "put", "-f", &dash], Expect::Contains(vec!["saved dashboard \"u\""])).await;
    let history = check(a, &["--token-file", &token_file, "dashboards", "history", "u"], Expect::Contains(vec!["admin:ops#"])).await;
    assert!(!history.contains("adm-secret"), "{history}");
    // The fan-out to members forwards the caller's token (here the node asks itself locally,
    // so status must still come back healthy).
    check(a, &["--token-file", &token_file, "cluster", "status"], Expect::Contains(vec!["ok"])).await;
    check(a, &["--token", "x", "--token-file", &token_file, "shards"], Expect::Fails("give --token or --token-file, not both")).await;
    for (_, member) in members {
        member.raft.shutdown().await.unwrap();
    }
}

// Goal: a three-node cluster: status shows three members and one leader from the leader's
// view; a follower answers local reads itself and linearizable reads through the CLI's retry
// at the leader; writes sent to a follower are forwarded; every node's applied index
// converges; membership changes sent to a follower are retried at the leader; cardinality
// asks every member.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_redirect_and_membership() {
    let members = cluster(3, Some("adm * admin\n")).await;
    let leader_id = leader(&members);
    let follower_id = (1..=3).find(|id| *id != leader_id).unwrap();
    let leader_addr = members[&leader_id].grpc_addr.clone();
    let follower = members[&follower_id].grpc_addr.clone();
    let f = follower.as_str();
    let files = tempfile::tempdir().unwrap();
    let rules = write_file(&files, "rules.yml", RULES);

    // A write at a follower is forwarded to the leader.
    check(f, &["--token", "adm", "rules", "apply", "-f", &rules], Expect::Exact("applied 2 rule groups [\"node\", \"other\"] at log index 2\n")).await;
    wait_applied(&members, 2).await;
    // Linearizable at a follower: answered by the leader after the CLI's retry.
    check(f, &["--token", "adm", "rules", "list"], Expect::Contains(vec![&format!("answered by node {leader_id} at applied index 2 (linearizable)")])).await;
    // Local at the follower: its own copy.
    check(f, &["--token", "adm", "rules", "list", "--consistency", "local"], Expect::Contains(vec!["node   30s", &format!("answered by node {follower_id} at applied index 2 (local)")])).await;

    let status = check(f, &["--token", "adm", "cluster", "status"], Expect::Contains(vec![&format!("leader: {leader_id}  term: "), "commit index: 2"])).await;
    assert_eq!(status.matches("voter").count(), 3, "{status}");
    assert_eq!(status.matches(" leader ").count(), 1, "{status}");
    assert_eq!(status.matches("  ok").count(), 3, "{status}");
    let json = check(f, &["--token", "adm", "cluster", "status", "--output", "json"], Expect::Contains(vec![])).await;
    let value: serde_json::Value = serde_json::from_str(&json).unwrap();
    for member in value["members"].as_array().unwrap() {
        assert_eq!(member["applied_index"], 2, "{member}");
        assert_eq!(member["lag_entries"], 0, "{member}");
    }
    // Status from the follower's own view: no replication view there.
    check(f, &["--token", "adm", "cluster", "status", "--consistency", "local"], Expect::Contains(vec![&format!("answered by node {follower_id} at applied index 2 (local)")])).await;

    // A fourth node joins through a follower (membership changes run on the leader).
    let mut members = members;
    let fourth = start_member(4, Some("adm * admin\n")).await;
    let fourth_addr = fourth.grpc_addr.clone();
    members.insert(4, fourth);
    check(f, &["--token", "adm", "node", "add", "4", "--grpc-addr", &fourth_addr, "--http-addr", "127.0.0.1:19004"], Expect::Contains(vec!["added node 4 at log index", "voters [1, 2, 3, 4], learners []"])).await;
    check(&leader_addr, &["--token", "adm", "node", "add", "4", "--grpc-addr", &fourth_addr, "--http-addr", "127.0.0.1:19004"], Expect::Fails("already exists: node 4 is already a voter")).await;
    check(&leader_addr, &["--token", "adm", "node", "add", "5", "--grpc-addr", "nowhere", "--http-addr", "127.0.0.1:19005"], Expect::Fails("grpc_addr \"nowhere\" is not HOST:PORT")).await;
    let status = check(&leader_addr, &["--token", "adm", "cluster", "status"], Expect::Contains(vec![])).await;
    assert_eq!(status.matches("voter").count(), 4, "{status}");
    let removed_at = check(f, &["--token", "adm", "node", "remove", "4"], Expect::Contains(vec!["removed node 4 at log index", "voters [1, 2, 3], learners []"])).await;
    let removed = members.remove(&4).unwrap();
    removed.raft.shutdown().await.unwrap();
    // A fan-out asks the members in the answering node's own applied membership, so wait
    // until the follower has applied the removal (the leader answered once it committed).
    let removed_at: u64 = removed_at.split("at log index ").nth(1).and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next()).and_then(|n| n.parse().ok()).expect("log index in the remove reply");
    wait_applied(&members, removed_at).await;

    // Cardinality asks every member (the token is forwarded) and merges.
    let series = TimeSeries { labels: vec![Label { name: "__name__".into(), value: "up".into() }], samples: vec![Sample { value: 1.0, timestamp: NOW }], exemplars: vec![], histograms: vec![] };
    for id in [1, 2] {
        let outcome = members[&id].node.ingest("t", WriteRequest { timeseries: vec![series.clone()], metadata: vec![] }).await;
        assert_eq!(outcome.status, 204);
    }
    check(f, &["--token", "adm", "cardinality", "top"], Expect::Exact("TENANT  METRIC  ACTIVE_SERIES  PER_NODE\nt       up      2              1:1,2:1\nanswered by 3 of 3 nodes (merged by node FOLLOWER)\n".replace("FOLLOWER", &follower_id.to_string()).as_str())).await;

    // Stop the follower: status from the leader shows it unreachable.
    let stopped = members.remove(&follower_id).unwrap();
    stopped.raft.shutdown().await.unwrap();
    check(&leader_addr, &["--token", "adm", "cluster", "status"], Expect::Contains(vec!["unreachable: cannot connect to"])).await;
    check(&leader_addr, &["--token", "adm", "cardinality", "top"], Expect::Contains(vec![&format!("node {follower_id} did not answer: cannot connect to"), "answered by 2 of 3 nodes"])).await;

    for (_, member) in members {
        member.raft.shutdown().await.unwrap();
    }
}
