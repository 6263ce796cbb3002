//! Leases and failover on a running cluster member (docs/design/replication.md § Leases,
//! epochs and promotion): the `Lease` gRPC service, and the two tasks `cluster.rs` starts.
//!
//! - [`renew_leases`] (every member): every `lease_renew_ms`, or at once when this node's view
//!   of the map gives it a shard, asks the metadata leader for a lease — over gRPC, or locally
//!   when this node leads (a one-voter cluster grants itself) — and keeps the answer in the
//!   node's [`crate::lease::LeaseHolder`], timed from the request's send.
//! - [`lead`] (every member, active only while it leads): restarts the grant table on every
//!   new term (so silence is counted from the election), and every `lease_renew_ms` proposes
//!   `PromoteShard` for shards whose primary has not renewed for `promotion_timeout_ms` while
//!   their secondary has.
//!
//! - [`mark_merged`] (every member): once this node, as a promoted shard's primary, finished
//!   the replication stream's two-way sync with the previous primary at the shard's epoch,
//!   proposes `MarkShardSynced` ([`propose_mark_synced`]), which clears merge pending.
//!
//! [`propose_promotion`] is a manual promotion through the same action as the leader's.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use sextant_raft::command::{Action, Command, Outcome};
use sextant_raft::state::MetadataState;
use sextant_raft::{RaftHandle, ReadError};
use tokio::sync::watch;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status};

use crate::lease::{Grant, Placement};
use crate::metrics::{OutcomeLabels, ShardLabels};
use crate::node::Node;

/// The generated protobuf and gRPC code (real or simulated by `cfg(madsim)`).
pub mod pb {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("sextant.lease.v1");
}

use pb::lease_client::LeaseClient;
use pb::lease_server::{Lease, LeaseServer};

/// Longest wait to connect to the leader for a renewal.
pub const CONNECT_TIMEOUT_MS: u64 = 1_000;

/// Each shard's placement in `state`'s map (empty without a map).
pub fn placements(state: &MetadataState) -> BTreeMap<u32, Placement> {
    match &state.shard_map {
        Some(map) => map.shards.iter().map(|(id, s)| (*id, Placement { primary: s.primary, secondary: s.secondary, epoch: s.epoch })).collect(),
        None => BTreeMap::new(),
    }
}

/// On the leader: grants `requester` its shards after confirming this node still leads.
async fn grant_here(handle: &RaftHandle, node: &Node, requester: u64) -> Result<pb::RenewReply, Status> {
    let me = handle.id();
    let config = node.config().lease;
    let (leader, term) = handle.leadership();
    if leader != Some(me) {
        return Err(not_leader(me, leader));
    }
    if node.lease_authority().lead_term(term, node.clock().now_monotonic_ns()) {
        tracing::info!(term, promotion_timeout_ms = config.promotion_timeout_ms, "metadata leader: lease table started; no promotion before a full promotion timeout");
    }
    // Read index: a deposed leader that has not noticed cannot grant.
    let applied_index = match tokio::time::timeout(Duration::from_millis(config.lease_renew_ms), handle.confirm_leader()).await {
        Ok(Ok(index)) => index,
        Ok(Err(ReadError::NotLeader { leader_id, .. })) => return Err(not_leader(me, leader_id)),
        Ok(Err(ReadError::Raft(message))) => return Err(Status::unavailable(format!("node {me} could not confirm its leadership: {message}"))),
        Err(_) => return Err(Status::unavailable(format!("node {me} could not confirm its leadership within {} ms", config.lease_renew_ms))),
    };
    let map = handle.read_local(placements);
    let now_ns = node.clock().now_monotonic_ns();
    let (granted, withheld) = node.lease_authority().grant(requester, &map, now_ns, &config);
    let silent_nodes = node.lease_authority().silent_nodes(&map, now_ns, &config);
    Ok(pb::RenewReply {
        leader: me,
        lease_ms: config.lease_ms,
        applied_index,
        granted: granted.into_iter().map(|(shard, epoch)| pb::ShardEpoch { shard, epoch }).collect(),
        withheld: withheld.into_iter().map(|(shard, reason)| pb::Withheld { shard, reason }).collect(),
        silent_nodes: silent_nodes.into_iter().collect(),
    })
}

fn not_leader(me: u64, leader: Option<u64>) -> Status {
    let leader = leader.map(|id| format!("node {id}")).unwrap_or_else(|| "unknown (an election may be in progress)".into());
    Status::failed_precondition(format!("node {me} is not the metadata leader; the leader is {leader}"))
}

/// The `Lease` gRPC service: answers renewals while this node leads.
pub struct LeaseGrpcService {
    handle: RaftHandle,
    node: Arc<Node>,
}

/// Adds the Lease service to the node's gRPC server.
pub fn add_services(handle: &RaftHandle, node: Arc<Node>, router: tonic::transport::server::Router) -> tonic::transport::server::Router {
    router.add_service(LeaseServer::new(LeaseGrpcService { handle: handle.clone(), node }))
}

#[tonic::async_trait]
impl Lease for LeaseGrpcService {
    async fn renew(&self, request: Request<pb::RenewRequest>) -> Result<Response<pb::RenewReply>, Status> {
        sextant_raft::network::check_addressed(&request, self.handle.id())?;
        let requester = request.into_inner().node;
        grant_here(&self.handle, &self.node, requester).await.map(Response::new)
    }
}

async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}

/// Renewal client state: one cached channel to the current leader.
struct Renewer {
    channel: Option<(String, Channel)>,
}

impl Renewer {
    async fn client(&mut self, addr: &str) -> Result<LeaseClient<Channel>, String> {
        if let Some((cached, channel)) = &self.channel {
            if cached == addr {
                return Ok(LeaseClient::new(channel.clone()));
            }
        }
        let timeout = Duration::from_millis(CONNECT_TIMEOUT_MS);
        let endpoint = Endpoint::from_shared(format!("http://{addr}")).map_err(|e| format!("bad address {addr:?}: {e}"))?.connect_timeout(timeout);
        let channel = match tokio::time::timeout(timeout, endpoint.connect()).await {
            Ok(Ok(channel)) => channel,
            Ok(Err(error)) => return Err(format!("cannot connect to {addr}: {error}")),
            Err(_) => return Err(format!("cannot connect to {addr} within {CONNECT_TIMEOUT_MS} ms")),
        };
        self.channel = Some((addr.to_string(), channel.clone()));
        Ok(LeaseClient::new(channel))
    }

    /// One renewal: asks the leader (or grants locally when this node leads). `sent_at_ns` is
    /// this node's monotonic clock before the request left.
    async fn renew(&mut self, handle: &RaftHandle, node: &Node, sent_at_ns: u64) -> Result<Grant, String> {
        let me = handle.id();
        let config = node.config().lease;
        let reply = match handle.leadership().0 {
            None => return Err("no metadata leader is known (an election may be in progress)".into()),
            Some(leader) if leader == me => grant_here(handle, node, me).await.map_err(|status| status.message().to_string())?,
            Some(leader) => {
                let addr = node.router().table().grpc_addrs.get(&leader).cloned().unwrap_or_default();
                if addr.is_empty() {
                    return Err(format!("the leader node {leader}'s gRPC address is not known yet"));
                }
                let mut client = self.client(&addr).await?;
                let call = client.renew(sextant_raft::network::addressed(pb::RenewRequest { node: me }, leader));
                match tokio::time::timeout(Duration::from_millis(config.lease_renew_ms), call).await {
                    Ok(Ok(reply)) => reply.into_inner(),
                    Ok(Err(status)) => {
                        if status.code() != tonic::Code::FailedPrecondition {
                            self.channel = None;
                        }
                        return Err(format!("node {leader} at {addr}: {}: {}", status.code(), status.message()));
                    }
                    Err(_) => {
                        self.channel = None;
                        return Err(format!("node {leader} at {addr} did not answer within {} ms", config.lease_renew_ms));
                    }
                }
            }
        };
        Ok(Grant {
            sent_at_ns,
            lease_ms: reply.lease_ms.min(config.lease_ms),
            leader: reply.leader,
            shards: reply.granted.into_iter().map(|g| (g.shard, g.epoch)).collect(),
            withheld: reply.withheld.into_iter().map(|w| (w.shard, w.reason)).collect(),
            silent_nodes: reply.silent_nodes.into_iter().collect(),
        })
    }
}

/// Sets the per-shard "this node holds the lease" gauge for every shard of the map.
fn publish_lease_gauges(node: &Node) {
    let live = node.lease().live_shards(node.clock().now_monotonic_ns());
    for shard in node.router().table().shards.keys() {
        node.metrics.lease_held.get_or_create(&ShardLabels { shard: shard.to_string() }).set(i64::from(live.contains_key(shard)));
    }
}

/// Renews this node's lease every `lease_renew_ms`, or at once when asked (see module docs).
pub async fn renew_leases(handle: RaftHandle, node: Arc<Node>, mut stop: watch::Receiver<bool>) {
    let renew = Duration::from_millis(node.config().lease.lease_renew_ms);
    let mut renewer = Renewer { channel: None };
    let mut failing = false;
    loop {
        let sent_at_ns = node.clock().now_monotonic_ns();
        let result = tokio::select! {
            biased; // fixed poll order, not tokio's random start (process-seeded: simulation.md § Determinism)
            result = renewer.renew(&handle, &node, sent_at_ns) => result,
            _ = stopped(&mut stop) => return,
        };
        match result {
            Ok(grant) => {
                node.metrics.lease_renewals.get_or_create(&OutcomeLabels { outcome: "ok".into() }).inc();
                if failing {
                    tracing::info!(leader = grant.leader, shards = grant.shards.len(), "lease renewed again");
                    failing = false;
                }
                for (shard, reason) in &grant.withheld {
                    tracing::debug!(shard, reason, "the metadata leader withheld this node's lease for a shard");
                }
                node.lease().accept(grant);
            }
            Err(reason) => {
                node.metrics.lease_renewals.get_or_create(&OutcomeLabels { outcome: "failed".into() }).inc();
                // Logged once per failing stretch: a partitioned node would otherwise log every second.
                if !failing {
                    tracing::warn!(%reason, "lease renewal failed; this node stops acknowledging writes for its shards when its lease ends");
                    failing = true;
                } else {
                    tracing::debug!(%reason, "lease renewal failed");
                }
            }
        }
        publish_lease_gauges(&node);
        // After a failure retry sooner (a new leader is usually found within an election),
        // still bounded to a few attempts per renewal interval.
        let pause = if failing { renew / 4 } else { renew };
        tokio::select! {
            biased; // fixed poll order, not tokio's random start (process-seeded: simulation.md § Determinism)
            _ = tokio::time::sleep(pause) => {}
            _ = node.lease().renew_now.notified() => {}
            _ = stopped(&mut stop) => return,
        }
    }
}

/// While this node leads: the grant table per term and promotions (see module docs).
pub async fn lead(handle: RaftHandle, node: Arc<Node>, mut stop: watch::Receiver<bool>) {
    let me = handle.id();
    let config = node.config().lease;
    let who = format!("node-{me}");
    let mut led_term: Option<u64> = None;
    loop {
        let (leader, term) = handle.leadership();
        let now_ns = node.clock().now_monotonic_ns();
        if leader == Some(me) {
            // A new term: another leader may have granted leases meanwhile, so everyone's
            // silence is counted from now and the holder table starts empty.
            let started = node.lease_authority().lead_term(term, now_ns);
            if started {
                tracing::info!(term, promotion_timeout_ms = config.promotion_timeout_ms, "metadata leader: lease table started; no promotion before a full promotion timeout");
            }
            if led_term != Some(term) {
                led_term = Some(term);
            } else {
                let map = handle.read_local(placements);
                let plan = node.lease_authority().promotions(&map, now_ns, &config);
                node.metrics.shards_both_replicas_silent.set(plan.both_silent as i64);
                for shard in &plan.both_silent_new {
                    let placement = map.get(shard).copied();
                    tracing::error!(shard, ?placement, "both replicas of the shard have stopped renewing their leases; nothing to promote to — its writes are refused until one returns");
                }
                for (shard, epoch) in plan.promote {
                    let placement = map.get(&shard).copied();
                    let command = Command { who: who.clone(), at_ms: node.clock().now_wall_ms(), action: Action::PromoteShard { shard, expected_epoch: epoch } };
                    let result = tokio::select! {
                        biased; // fixed poll order, not tokio's random start (process-seeded: simulation.md § Determinism)
                        result = handle.client_write(command) => result,
                        _ = stopped(&mut stop) => return,
                    };
                    match result {
                        Ok(response) => match response.outcome {
                            Outcome::Applied => {
                                node.metrics.promotions.inc();
                                tracing::warn!(shard, from_epoch = epoch, ?placement, index = response.index, "promoted the shard's secondary: its primary stopped renewing its lease");
                            }
                            Outcome::NoOp { reason } => tracing::info!(shard, reason, "promotion was a no-op"),
                        },
                        Err(error) => tracing::warn!(shard, %error, "promotion could not be proposed; retrying next tick"),
                    }
                }
            }
        } else if led_term.take().is_some() {
            node.lease_authority().step_down();
            node.metrics.shards_both_replicas_silent.set(0);
        }
        tokio::select! {
            biased; // fixed poll order, not tokio's random start (process-seeded: simulation.md § Determinism)
            _ = tokio::time::sleep(Duration::from_millis(config.lease_renew_ms)) => {}
            _ = stopped(&mut stop) => return,
        }
    }
}

/// Shards whose merge-back this node (`me`) completed: it is their primary, they are merge
/// pending at their current epoch, their secondary is the previous primary the merge comes from,
/// and the replication stream finished a two-way sync with it at exactly that epoch (`synced`).
pub fn merges_completed(state: &MetadataState, me: u64, synced: &BTreeMap<u32, u64>) -> Vec<(u32, u64)> {
    let Some(map) = &state.shard_map else { return Vec::new() };
    map.shards
        .iter()
        .filter(|(id, s)| {
            s.primary == Some(me)
                && s.merge_pending.as_ref().is_some_and(|m| s.secondary == Some(m.from_node))
                && synced.get(id) == Some(&s.epoch)
        })
        .map(|(id, s)| (*id, s.epoch))
        .collect()
}

/// Every member: proposes `MarkShardSynced` for each shard [`merges_completed`] lists, when the
/// replication stream reports a sync and every renewal interval until the applied map shows
/// the flag cleared (a proposal can fail across a leader change). A stale epoch applies as a
/// no-op, so a repeated proposal is harmless.
pub async fn mark_merged(handle: RaftHandle, node: Arc<Node>, mut stop: watch::Receiver<bool>) {
    let me = handle.id();
    let mut synced = node.replication().synced_epochs();
    let retry = Duration::from_millis(node.config().lease.lease_renew_ms);
    loop {
        let done = synced.borrow_and_update().clone();
        let ready = handle.read_local(|state| merges_completed(state, me, &done));
        for (shard, epoch) in ready {
            let result = tokio::select! {
                biased; // fixed poll order, not tokio's random start (process-seeded: simulation.md § Determinism)
                result = propose_mark_synced(&handle, &node, shard, epoch) => result,
                _ = stopped(&mut stop) => return,
            };
            match result {
                Ok(Outcome::Applied) => tracing::info!(shard, epoch, "merge-back complete: the shard is no longer merge pending"),
                Ok(Outcome::NoOp { reason }) => tracing::info!(shard, epoch, reason, "merge-back mark was a no-op"),
                Err(error) => tracing::warn!(shard, epoch, %error, "could not propose the end of the merge-back; retrying"),
            }
        }
        tokio::select! {
            biased; // fixed poll order, not tokio's random start (process-seeded: simulation.md § Determinism)
            _ = synced.changed() => {}
            _ = tokio::time::sleep(retry) => {}
            _ = stopped(&mut stop) => return,
        }
    }
}

/// Proposes `MarkShardSynced { shard, epoch }`: the merge-back of a promoted shard completed
/// at `epoch` (the replication stream's full sync). A stale epoch applies as a no-op.
pub async fn propose_mark_synced(handle: &RaftHandle, node: &Node, shard: u32, epoch: u64) -> Result<Outcome, String> {
    let command = Command { who: format!("node-{}", handle.id()), at_ms: node.clock().now_wall_ms(), action: Action::MarkShardSynced { shard, epoch } };
    handle.client_write(command).await.map(|response| response.outcome).map_err(|e| e.to_string())
}

/// Proposes a manual promotion of `shard`'s secondary at the epoch this node has applied.
pub async fn propose_promotion(handle: &RaftHandle, node: &Node, who: &str, shard: u32) -> Result<sextant_raft::Response, String> {
    let epoch = handle
        .read_local(|state| state.shard_map.as_ref().and_then(|map| map.shards.get(&shard)).map(|s| s.epoch))
        .ok_or_else(|| format!("shard {shard} is not in this node's applied shard map"))?;
    let command = Command { who: who.to_string(), at_ms: node.clock().now_wall_ms(), action: Action::PromoteShard { shard, expected_epoch: epoch } };
    handle.client_write(command).await.map_err(|e| e.to_string())
}
