//! The node's member of the metadata group: started by `sextant serve` on the node's data
//! directory (`<data-dir>/raft`, through the same `FileSystem` as storage) and its gRPC
//! listener, formed into a cluster, and followed so the node applies the cluster's limits.
//!
//! # Formation (docs/design/raft.md § serve)
//!
//! | flags | empty log | non-empty log |
//! |---|---|---|
//! | none | `initialize` with itself: a one-voter cluster | recover |
//! | `--initial-cluster` | `initialize` with the listed voters | recover |
//! | `--join` | wait for `sextant admin node add` | recover |
//!
//! openraft 0.9's `initialize` only acts on a pristine node (empty log, vote (0, 0)) and is
//! safe to call on every listed node at once *with the same membership*: the membership entry
//! sits at log id (0, 0, 0) on each, and the election picks one leader. So every node
//! bootstraps the identical membership — each member's gRPC address from the list and an
//! empty HTTP address (not known from the list) — and then registers its own addresses with
//! [`Action::RegisterNode`].
//!
//! # After start, four tasks
//!
//! The lease renewer and the leader's promotion loop (`failover.rs`), and:
//!
//! - the *limits follower* wakes on every change of openraft's metrics (a watch channel, no
//!   timer), and when the applied index moved rebuilds the [`LimitsView`] from the applied
//!   state and hands it to the node; it logs (warn, once) when this node's flags differ from
//!   the cluster's defaults;
//! - the *housekeeper* seeds a new cluster when this node is the leader and the applied state
//!   is not seeded ([`Action::SeedCluster`]: the shard map spread round-robin over the voters
//!   and the default limits from this node's flags; a second seed applies as a no-op), and
//!   registers this node's addresses once a leader is known. Failed writes are retried after
//!   [`RETRY_MS`] or the next metrics change, whichever comes first.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use sextant_raft::command::{round_robin_assignments, Action, Command, Outcome};
use sextant_raft::{RaftHandle, RaftNode, RaftNodeConfig};
use sextant_storage::fs::FileSystem;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::Formation;
use crate::node::{MetadataStatus, Node};
use crate::tenant_limits::{flag_defaults, LimitsView};

/// The raft log and state machine live here, relative to the node's data directory.
pub const RAFT_DIR: &str = "raft";
/// Wait before retrying a seed or registration write that failed.
pub const RETRY_MS: u64 = 500;

/// A running member of the metadata group and the tasks that follow it.
pub struct ClusterMember {
    raft: RaftNode,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}

impl ClusterMember {
    /// Starts the member on `fs` under [`RAFT_DIR`], serving gRPC on `grpc_listener`, with
    /// `advertise` recorded as this node's addresses; forms or recovers the cluster as the
    /// node's `ClusterConfig` says, and starts the follower and the housekeeper.
    pub async fn start(node: Arc<Node>, fs: Arc<dyn FileSystem>, grpc_listener: TcpListener, advertise: sextant_raft::Node) -> Result<ClusterMember, String> {
        let cluster = node.config().cluster.clone();
        let config = RaftNodeConfig::new(cluster.node_id, advertise.clone(), RAFT_DIR);
        let for_admin = node.clone();
        let raft = RaftNode::start_with_services(config, fs, grpc_listener, move |handle, router| {
            let router = crate::admin::add_services(handle, for_admin.clone(), router);
            let router = crate::failover::add_services(handle, for_admin.clone(), router);
            crate::route::add_services(for_admin, router)
        })
        .await
        .map_err(|e| format!("metadata raft member: {e}"))?;
        let formed = match &cluster.formation {
            Formation::Single => raft.initialize_if_pristine(BTreeMap::from([(cluster.node_id, advertise.clone())])).await,
            Formation::Initial(members) => {
                let members = members.iter().map(|(id, grpc_addr)| (*id, sextant_raft::Node { http_addr: String::new(), grpc_addr: grpc_addr.clone() })).collect();
                raft.initialize_if_pristine(members).await
            }
            Formation::Join => Ok(false),
        };
        match formed {
            Ok(true) => tracing::info!(node_id = cluster.node_id, formation = ?cluster.formation, "metadata group: bootstrapped a new cluster"),
            Ok(false) if cluster.formation == Formation::Join => {
                tracing::info!(node_id = cluster.node_id, "metadata group: joining — if this node is new, add it with `sextant admin node add`; otherwise it recovers its log")
            }
            Ok(false) => tracing::info!(node_id = cluster.node_id, "metadata group: recovering from the existing log"),
            Err(error) => {
                let _ = raft.shutdown().await;
                return Err(format!("metadata raft member: cannot bootstrap the cluster: {error}"));
            }
        }
        let (stop, stop_rx) = watch::channel(false);
        let handle: RaftHandle = (*raft).clone();
        // From now on this node acknowledges writes for its primary shards only under a lease.
        node.lease().require(node.config().lease.lease_renew_ms);
        let tasks = vec![
            tokio::spawn(crate::failover::renew_leases(handle.clone(), node.clone(), stop_rx.clone())),
            tokio::spawn(crate::failover::lead(handle.clone(), node.clone(), stop_rx.clone())),
            tokio::spawn(crate::failover::mark_merged(handle.clone(), node.clone(), stop_rx.clone())),
            tokio::spawn(follow_limits(handle.clone(), node.clone(), stop_rx.clone())),
            tokio::spawn(housekeep(handle, node, cluster.shard_count, stop_rx)),
        ];
        Ok(ClusterMember { raft, stop, tasks })
    }

    /// The member's handle (writes, reads, membership).
    pub fn handle(&self) -> &RaftHandle {
        &self.raft
    }

    /// Stops the tasks, then the gRPC server and openraft.
    pub async fn shutdown(self) -> Result<(), String> {
        let _ = self.stop.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
        self.raft.shutdown().await
    }
}

/// Rebuilds the node's limits whenever the applied index moves (see the module docs).
async fn follow_limits(handle: RaftHandle, node: Arc<Node>, mut stop: watch::Receiver<bool>) {
    let mut metrics = handle.raft().metrics();
    let mut version: Option<u64> = None;
    let mut warned_flags = false;
    let mut warned_retention = false;
    loop {
        // openraft stops its core for good on a storage error; without this the node would
        // look ready while its metadata view froze (found by the replicated simulation with
        // disk faults: an EIO writing the vote left a node stuck at an old shard map).
        let fatal = metrics.borrow().running_state.as_ref().err().map(|fatal| fatal.to_string());
        if let Some(reason) = fatal {
            member_stopped(&node, reason);
            break;
        }
        let applied = handle.read_local(|state| state.last_applied.map(|id| id.index).unwrap_or(0));
        if version != Some(applied) {
            version = Some(applied);
            let (view, retention_policies) = handle.read_local(|state| (LimitsView::from_state(state, node.config()), state.retention.len()));
            let previous = node.limits_view();
            if !view.same_limits(&previous) {
                tracing::info!(applied_index = view.version, source = ?view.source, tenants = view.tenants.len(), "tenant limits in force changed");
            }
            if !warned_flags && !view.flag_differences.is_empty() {
                warned_flags = true;
                tracing::warn!(
                    applied_index = view.version,
                    differences = %view.flag_differences.join("; "),
                    "this node's limit flags differ from the cluster's defaults; using the cluster's values (the metadata group is the source of truth once the cluster is seeded)"
                );
            }
            if !warned_retention && retention_policies > 0 {
                warned_retention = true;
                tracing::warn!(policies = retention_policies, "per-tenant retention policies are recorded in the cluster but not enforced yet: the storage engine applies one retention (--retention) to all tenants");
            }
            node.set_limits_view(view);
            // The data path's view of the shard map and addresses moves with the same index.
            let me = handle.id();
            let before = node.router().table().my_primaries();
            node.router().set_table(handle.read_local(|state| crate::route::RouteTable::from_state(state, me)));
            if node.router().table().my_primaries() != before {
                // This node became primary of a shard (or at a new epoch): renew at once
                // rather than refuse its writes until the next renewal.
                node.lease().renew_now.notify_one();
            }
        }
        tokio::select! {
            biased; // fixed poll order, not tokio's random start (process-seeded: simulation.md § Determinism)
            changed = metrics.changed() => if changed.is_err() {
                // The core is gone while nobody asked it to stop.
                if !*stop.borrow() {
                    let reason = metrics.borrow().running_state.as_ref().err().map(|fatal| fatal.to_string());
                    member_stopped(&node, reason.unwrap_or_else(|| "its core ended without a fatal error".into()));
                }
                break
            },
            _ = stopped(&mut stop) => break,
        }
    }
}

/// Marks the node not ready for good: its metadata member stopped (`MetadataStatus::Stopped`).
fn member_stopped(node: &Node, reason: String) {
    tracing::error!(%reason, "the metadata raft member stopped; this node needs a restart");
    node.set_metadata_status(MetadataStatus::Stopped(reason));
}

/// Seeds a new cluster and registers this node's addresses (see the module docs).
async fn housekeep(handle: RaftHandle, node: Arc<Node>, shard_count: u32, mut stop: watch::Receiver<bool>) {
    let mut metrics = handle.raft().metrics();
    let me = handle.id();
    let who = format!("node-{me}");
    let mut seed_done = false;
    let mut registered: Option<sextant_raft::Node> = None;
    loop {
        let leader = metrics.borrow_and_update().current_leader;
        let (seeded, voters, known) = handle.read_local(|state| (state.is_seeded(), state.voter_ids(), state.nodes.get(&me).map(|r| r.node.clone())));
        let mut retry = false;
        let mut writes: Vec<(&str, Action)> = Vec::new();
        if !seed_done && !seeded && leader == Some(me) && !voters.is_empty() {
            let assignments = round_robin_assignments(shard_count, &voters);
            writes.push(("seed", Action::SeedCluster { shard_count, assignments, defaults: flag_defaults(node.config()) }));
        }
        let wanted = handle.node().clone();
        if leader.is_some() && known.as_ref() != Some(&wanted) && registered.as_ref() != Some(&wanted) {
            writes.push(("register", Action::RegisterNode { id: me, node: wanted.clone() }));
        }
        for (what, action) in writes {
            let command = Command { who: who.clone(), at_ms: node.clock().now_wall_ms(), action };
            let result = tokio::select! {
                biased; // fixed poll order, not tokio's random start (process-seeded: simulation.md § Determinism)
                result = handle.client_write(command) => result,
                _ = stopped(&mut stop) => return,
            };
            match result {
                Ok(response) => {
                    match &response.outcome {
                        Outcome::Applied => tracing::info!(index = response.index, what, "metadata group: {what} applied"),
                        Outcome::NoOp { reason } => tracing::debug!(index = response.index, what, reason, "metadata group: {what} was a no-op"),
                    }
                    if what == "seed" {
                        seed_done = true;
                    } else {
                        registered = Some(wanted.clone());
                    }
                }
                Err(error) => {
                    tracing::debug!(%error, what, "metadata group: {what} failed; retrying");
                    retry = true;
                }
            }
        }
        tokio::select! {
            biased; // fixed poll order, not tokio's random start (process-seeded: simulation.md § Determinism)
            changed = metrics.changed() => if changed.is_err() { break },
            _ = stopped(&mut stop) => break,
            _ = tokio::time::sleep(Duration::from_millis(RETRY_MS)), if retry => {}
        }
    }
}
