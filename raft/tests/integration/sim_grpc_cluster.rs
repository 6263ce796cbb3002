#![cfg(madsim)]
//! Goal: the metadata group over the (simulated) gRPC transport survives what the simulator
//! can do to it: the leader partitioned away (`NetSim::clog_node`) and a new leader elected,
//! a write acknowledged during the partition kept, the old leader healed and caught up; a
//! node killed (`Handle::kill`) and restarted from its disk catching up.
//! Method: three madsim nodes with their own IPs, each running a `RaftNode` whose gRPC server
//! binds 0.0.0.0:9481 and whose disk is a `SimFs` created outside the node (so it survives
//! kill/restart). The test reaches a node's `RaftNode` through a registry filled by the node's
//! init closure and runs calls on that node (`NodeHandle::spawn`), so traffic leaves from its IP.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use madsim::net::NetSim;
use madsim::runtime::{Handle, NodeHandle};
use openraft::Config;
use sextant_raft::command::RuleGroup;
use sextant_raft::{Action, Command, Node, NodeId, Outcome, RaftNode, RaftNodeConfig, Response};
use sextant_storage::fs::sim::SimFs;
use sextant_storage::fs::FileSystem;

type Registry = Arc<Mutex<BTreeMap<NodeId, Arc<RaftNode>>>>;

fn node(id: NodeId) -> Node {
    Node {
        http_addr: format!("10.0.0.{id}:9090"),
        grpc_addr: format!("10.0.0.{id}:9481"),
    }
}

fn put_group(name: &str) -> Command {
    Command {
        who: "test".into(),
        at_ms: 1,
        action: Action::PutRuleGroup {
            group: RuleGroup {
                name: name.into(),
                interval: None,
                limit: None,
                rules: vec![],
            },
        },
    }
}

fn start_node(id: NodeId, registry: &Registry) -> NodeHandle {
    let disk = SimFs::new(id);
    let registry = registry.clone();
    Handle::current()
        .create_node()
        .name(format!("raft-{id}"))
        .ip(IpAddr::V4(Ipv4Addr::new(10, 0, 0, id as u8)))
        .init(move || {
            let disk = disk.clone();
            let registry = registry.clone();
            async move {
                let mut config = RaftNodeConfig::new(id, node(id), "raft");
                config.raft = Config {
                    heartbeat_interval: 50,
                    election_timeout_min: 300,
                    election_timeout_max: 600,
                    ..Config::default()
                };
                let listener = tokio::net::TcpListener::bind("0.0.0.0:9481").await.unwrap();
                let fs: Arc<dyn FileSystem> = Arc::new(disk);
                let raft_node = RaftNode::start(config, fs, listener).await.unwrap();
                registry.lock().unwrap().insert(id, Arc::new(raft_node));
                std::future::pending::<()>().await;
            }
        })
        .build()
}

async fn get(registry: &Registry, id: NodeId) -> Arc<RaftNode> {
    for _ in 0..1000 {
        if let Some(node) = registry.lock().unwrap().get(&id).cloned() {
            return node;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("node {id} did not start");
}

async fn on(handle: &NodeHandle, node: Arc<RaftNode>, command: Command) -> Response {
    handle
        .spawn(async move { node.client_write(command).await })
        .await
        .unwrap()
        .unwrap()
}

async fn leader_other_than(node: &RaftNode, not: Option<NodeId>) -> NodeId {
    node.raft()
        .wait(Some(Duration::from_secs(60)))
        .metrics(
            |m| m.current_leader.is_some() && m.current_leader != not,
            "a leader",
        )
        .await
        .unwrap()
        .current_leader
        .unwrap()
}

async fn applied(node: &RaftNode, index: u64) {
    node.raft()
        .wait(Some(Duration::from_secs(60)))
        .applied_index_at_least(Some(index), "applied")
        .await
        .unwrap();
}

#[madsim::test]
async fn partition_and_kill_over_grpc() {
    let registry: Registry = Default::default();
    let handles: BTreeMap<NodeId, NodeHandle> =
        (1..=3).map(|id| (id, start_node(id, &registry))).collect();
    let one = get(&registry, 1).await;
    for id in 2..=3 {
        get(&registry, id).await;
    }
    let members: BTreeMap<NodeId, Node> = (1..=3).map(|id| (id, node(id))).collect();
    let init = one.clone();
    handles[&1]
        .spawn(async move { init.initialize(members).await })
        .await
        .unwrap()
        .unwrap();

    let leader = leader_other_than(&one, None).await;
    let first = on(
        &handles[&leader],
        get(&registry, leader).await,
        put_group("first"),
    )
    .await;
    assert_eq!(first.outcome, Outcome::Applied);

    // Partition the leader: the other two elect a new leader and accept a write.
    let madsim_leader = handles[&leader].id();
    NetSim::current().clog_node(madsim_leader);
    let other = (1..=3).find(|id| *id != leader).unwrap();
    let new_leader = leader_other_than(&*get(&registry, other).await, Some(leader)).await;
    assert_ne!(new_leader, leader);
    let during = on(
        &handles[&new_leader],
        get(&registry, new_leader).await,
        put_group("during"),
    )
    .await;
    assert!(during.index > first.index);

    // Heal: the old leader steps down and catches up, keeping both writes.
    NetSim::current().unclog_node(madsim_leader);
    let old = get(&registry, leader).await;
    applied(&old, during.index).await;
    let state = old.local_read().state;
    assert_eq!(state.rule_groups["first"].version, first.index);
    assert_eq!(state.rule_groups["during"].version, during.index);

    // Kill a follower, write, restart it from its disk: it catches up.
    let current = leader_other_than(&*get(&registry, other).await, None).await;
    let victim = (1..=3).find(|id| *id != current).unwrap();
    registry.lock().unwrap().remove(&victim);
    Handle::current().kill(handles[&victim].id());
    let after = on(
        &handles[&current],
        get(&registry, current).await,
        put_group("after"),
    )
    .await;
    Handle::current().restart(handles[&victim].id());
    let restarted = get(&registry, victim).await;
    applied(&restarted, after.index).await;
    let read = restarted.local_read();
    assert!(read.applied_index >= after.index);
    assert_eq!(read.state.rule_groups["first"].version, first.index);
    assert_eq!(read.state.rule_groups["during"].version, during.index);
    assert_eq!(read.state.rule_groups["after"].version, after.index);

    // A linearizable read at the leader sees every acknowledged write.
    let leader_node = get(&registry, current).await;
    let read = handles[&current]
        .spawn(async move { leader_node.linearizable_read().await })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(read.state.rule_groups.len(), 3);
}
