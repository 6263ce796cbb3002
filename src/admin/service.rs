//! The `AdminService` gRPC service: authorizes each call, stamps writes with who and when (the
//! node's `Clock`, before proposing), reads the metadata state linearizably or locally, and
//! fans node-local questions (status, cardinality) out to every member.
//!
//! Node-to-node fan-out: when tokens are configured, the node asking the other members
//! forwards the caller's own `authorization` metadata (an admin token; every node of a cluster
//! shares the tokens file), so a member answers exactly the callers it would answer directly.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use sextant_raft::command::{Action, Command, DASHBOARD_JSON_BYTES_MAX};
use sextant_raft::rule_file::parse_rule_file;
use sextant_raft::{MembershipError, RaftHandle, ReadError, StateRead, WriteError};
use tonic::metadata::MetadataValue;
use tonic::transport::server::Router;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status};

use super::pb::admin_service_client::AdminServiceClient;
use super::pb::admin_service_server::{AdminService, AdminServiceServer};
use super::{convert, pb, LEADER_ADDR_METADATA, LEADER_ID_METADATA, MESSAGE_BYTES_MAX};
use crate::auth::{authorize, Role};
use crate::node::Node;

/// Default wait for one member's answer in a fan-out.
pub const MEMBER_TIMEOUT_MS_DEFAULT: u64 = 1_000;
/// Longest wait for one member's answer a caller may ask for.
pub const MEMBER_TIMEOUT_MS_MAX: u64 = 60_000;
/// How long a membership change may take (adding a learner waits for it to catch up).
pub const MEMBERSHIP_TIMEOUT_MS: u64 = 120_000;
/// Default and longest wait for a triggered snapshot.
pub const SNAPSHOT_WAIT_MS_DEFAULT: u64 = 10_000;
pub const SNAPSHOT_WAIT_MS_MAX: u64 = 600_000;
/// Rows of a cardinality report by default, and at most.
pub const CARDINALITY_ROWS_DEFAULT: u32 = 10;
pub const CARDINALITY_ROWS_MAX: u32 = 10_000;
/// (tenant, metric) pairs one node answers in LocalCardinality, most series first.
pub const LOCAL_CARDINALITY_ROWS_MAX: usize = 10_000;

/// Settings of the admin service.
#[derive(Clone, Debug)]
pub struct AdminConfig {
    pub member_timeout_ms: u64,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig { member_timeout_ms: MEMBER_TIMEOUT_MS_DEFAULT }
    }
}

/// Adds the admin service to the node's gRPC server (the one the raft transport runs on).
pub fn add_services(handle: &RaftHandle, node: Arc<Node>, router: Router) -> Router {
    router.add_service(AdminGrpcService::new(handle.clone(), node, AdminConfig::default()).into_server())
}

pub struct AdminGrpcService {
    handle: RaftHandle,
    node: Arc<Node>,
    config: AdminConfig,
}

/// Who is calling: the audit principal, and the credentials to forward in a fan-out.
struct Caller {
    who: String,
    authorization: Option<MetadataValue<tonic::metadata::Ascii>>,
}

fn not_leader(me: u64, leader_id: Option<u64>, leader_addr: Option<String>) -> Status {
    let leader = match (leader_id, &leader_addr) {
        (Some(id), Some(addr)) => format!("the leader is node {id} at {addr}"),
        (Some(id), None) => format!("the leader is node {id} (address unknown)"),
        _ => "no leader is known (an election may be in progress); retry shortly".to_string(),
    };
    let mut status = Status::failed_precondition(format!("node {me} is not the leader; {leader}"));
    if let Some(id) = leader_id {
        if let Ok(value) = id.to_string().parse() {
            status.metadata_mut().insert(LEADER_ID_METADATA, value);
        }
    }
    if let Some(addr) = leader_addr {
        if let Ok(value) = addr.parse() {
            status.metadata_mut().insert(LEADER_ADDR_METADATA, value);
        }
    }
    status
}

fn consistency(value: i32) -> Result<pb::Consistency, Status> {
    pb::Consistency::try_from(value).map_err(|_| Status::invalid_argument(format!("consistency {value} is neither 0 (linearizable) nor 1 (local)")))
}

fn member_timeout(requested_ms: u64, default_ms: u64) -> Duration {
    let ms = if requested_ms == 0 { default_ms } else { requested_ms.min(MEMBER_TIMEOUT_MS_MAX) };
    Duration::from_millis(ms)
}

/// "follower", "leader", … from openraft's server state, without naming openraft here.
fn state_name(state: impl std::fmt::Debug) -> String {
    format!("{state:?}").to_lowercase()
}

fn check_tenant(tenant: &str) -> Result<(), Status> {
    crate::auth::validate_tenant(tenant).map_err(|e| Status::invalid_argument(e.to_string()))
}

/// Opens an admin client to another member.
pub async fn connect(addr: &str, timeout: Duration) -> Result<AdminServiceClient<Channel>, String> {
    let endpoint = Endpoint::from_shared(format!("http://{addr}")).map_err(|e| format!("bad address {addr:?}: {e}"))?.connect_timeout(timeout);
    let channel = match tokio::time::timeout(timeout, endpoint.connect()).await {
        Ok(Ok(channel)) => channel,
        Ok(Err(error)) => return Err(format!("cannot connect to {addr}: {error}")),
        Err(_) => return Err(format!("cannot connect to {addr} within {} ms", timeout.as_millis())),
    };
    Ok(AdminServiceClient::new(channel).max_decoding_message_size(MESSAGE_BYTES_MAX).max_encoding_message_size(MESSAGE_BYTES_MAX))
}

impl AdminGrpcService {
    pub fn new(handle: RaftHandle, node: Arc<Node>, config: AdminConfig) -> AdminGrpcService {
        AdminGrpcService { handle, node, config }
    }

    /// The tonic service, with message limits set both ways (tonic's 4 MiB default would refuse
    /// a large rule file).
    #[cfg(not(madsim))]
    pub fn into_server(self) -> AdminServiceServer<AdminGrpcService> {
        AdminServiceServer::new(self).max_decoding_message_size(MESSAGE_BYTES_MAX).max_encoding_message_size(MESSAGE_BYTES_MAX)
    }

    /// The tonic service (the simulated code adds an interceptor parameter).
    #[cfg(madsim)]
    pub fn into_server(self) -> AdminServiceServer<AdminGrpcService, tonic::codegen::IdentityInterceptor> {
        AdminServiceServer::new(self).max_decoding_message_size(MESSAGE_BYTES_MAX).max_encoding_message_size(MESSAGE_BYTES_MAX)
    }

    fn id(&self) -> u64 {
        self.handle.id()
    }

    /// Checks the caller's token (when the node has tokens) and names the caller for the audit
    /// trail. The token itself is never logged or stored: only its grant's tenant and a short
    /// hash that tells tokens apart.
    fn caller<T>(&self, request: &Request<T>) -> Result<Caller, Status> {
        let authorization = request.metadata().get("authorization").cloned();
        let Some(tokens) = self.node.tokens() else {
            let peer = request.remote_addr().map(|a| a.to_string()).unwrap_or_else(|| "unknown".to_string());
            return Ok(Caller { who: format!("anonymous@{peer}"), authorization: None });
        };
        let header = match &authorization {
            Some(value) => Some(value.to_str().map_err(|_| Status::unauthenticated("authorization metadata is not ASCII text"))?),
            None => None,
        };
        let tenant = authorize(Some(tokens), header, None, Role::Admin).map_err(|error| match error.status() {
            401 => Status::unauthenticated(format!("{error}; admin calls need an admin token (--token or --token-file)")),
            _ => Status::permission_denied(format!("{error}; admin calls need a token with role admin")),
        })?;
        let token = header.unwrap_or_default().trim_start_matches("Bearer ").trim_start_matches("bearer ").trim();
        let hash = xxhash_rust::xxh64::xxh64(token.as_bytes(), 0);
        Ok(Caller { who: format!("admin:{tenant}#{:08x}", hash >> 32), authorization })
    }

    /// Reads the state with the asked consistency; a linearizable read on a follower answers
    /// NotLeader with the leader's address.
    async fn read(&self, value: i32) -> Result<(StateRead, pb::ReadInfo), Status> {
        let consistency = consistency(value)?;
        let read = match consistency {
            pb::Consistency::Linearizable => self.handle.linearizable_read().await.map_err(|error| match error {
                ReadError::NotLeader { leader_id, leader_addr } => not_leader(self.id(), leader_id, leader_addr),
                ReadError::Raft(message) => Status::unavailable(format!("linearizable read on node {}: {message}", self.id())),
            })?,
            pb::Consistency::Local => self.handle.local_read(),
        };
        let info = pb::ReadInfo { node_id: self.id(), applied_index: read.applied_index, consistency: consistency as i32 };
        Ok((read, info))
    }

    /// Stamps `action` with the caller and this node's clock, and proposes it (forwarded to the
    /// leader from a follower).
    async fn write(&self, caller: &Caller, action: Action) -> Result<pb::WriteReply, Status> {
        let at_ms = self.node.clock().now_wall_ms();
        let command = Command { who: caller.who.clone(), at_ms, action };
        match self.handle.client_write(command).await {
            Ok(response) => {
                let (applied, reason) = match response.outcome {
                    sextant_raft::Outcome::Applied => (true, String::new()),
                    sextant_raft::Outcome::NoOp { reason } => (false, reason),
                };
                Ok(pb::WriteReply { node_id: self.id(), index: response.index, applied, reason, who: caller.who.clone(), at_ms })
            }
            Err(WriteError::Invalid(error)) => Err(Status::invalid_argument(error.to_string())),
            Err(WriteError::NotLeader { leader_id, leader_addr }) => Err(not_leader(self.id(), leader_id, leader_addr)),
            Err(WriteError::Forward(message)) => Err(Status::unavailable(format!("node {} could not forward the write to the leader: {message}", self.id()))),
            Err(WriteError::Raft(message)) => Err(Status::unavailable(format!("raft on node {}: {message}", self.id()))),
        }
    }

    fn membership_status(&self, error: MembershipError) -> Status {
        match error {
            MembershipError::NotLeader { leader_id, leader_addr } => not_leader(self.id(), leader_id, leader_addr),
            MembershipError::Raft(message) => Status::failed_precondition(format!("membership change refused by raft on node {}: {message}", self.id())),
        }
    }

    /// This node's own status (what NodeStatus answers).
    fn local_status(&self) -> pb::NodeStatusReply {
        let metrics = self.handle.raft().metrics().borrow().clone();
        let (ready, not_ready_reason) = match self.node.readiness() {
            Ok(()) => (true, String::new()),
            Err(reason) => (false, reason),
        };
        pb::NodeStatusReply {
            node_id: self.id(),
            state: state_name(metrics.state),
            term: metrics.current_term,
            applied_index: metrics.last_applied.map(|id| id.index).unwrap_or(0),
            last_log_index: metrics.last_log_index.unwrap_or(0),
            leader_id: metrics.current_leader,
            ready,
            not_ready_reason,
        }
    }

    /// Every member (voters and learners) with its gRPC address, by id; this node included
    /// even before the cluster is initialized.
    fn members(&self) -> BTreeMap<u64, (String, String)> {
        let state = self.handle.local_read().state;
        let mut members: BTreeMap<u64, (String, String)> =
            state.membership.membership().nodes().map(|(id, node)| (*id, (node.grpc_addr.clone(), node.http_addr.clone()))).collect();
        members.entry(self.id()).or_insert_with(|| (String::new(), String::new()));
        members
    }

    /// Each shard's replication as its primary reports it (one ReplicationStatus per primary).
    async fn shard_replication(&self, shards: &[pb::ShardInfo]) -> Vec<pb::ShardReplicationInfo> {
        let primaries: std::collections::BTreeSet<u64> = shards.iter().filter_map(|s| s.primary).collect();
        let answers = futures_util::future::join_all(primaries.iter().map(|p| crate::replicate::primary_status(&self.node, *p))).await;
        let by_primary: BTreeMap<u64, Result<crate::route::pb::ReplicationStatusReply, String>> = primaries.into_iter().zip(answers).collect();
        shards
            .iter()
            .map(|s| {
                let unknown = |error: String| pb::ShardReplicationInfo { shard: s.shard, state: "unknown".into(), error, ..Default::default() };
                let Some(primary) = s.primary else { return unknown("the shard has no primary".into()) };
                match by_primary.get(&primary) {
                    Some(Ok(status)) => match status.shards.iter().find(|r| r.shard == s.shard) {
                        Some(r) => pb::ShardReplicationInfo {
                            shard: s.shard,
                            state: r.state.clone(),
                            lag_ms: r.lag_ms,
                            lag_records: r.lag_records,
                            lag_bytes: r.lag_bytes,
                            lag_samples: r.lag_samples,
                            synced_epoch: r.synced_epoch,
                            unprotected: r.unprotected,
                            error: r.last_error.clone(),
                            secondary: r.secondary,
                            epoch: r.epoch,
                        },
                        None => unknown(format!("node {primary} does not hold the shard as primary in its view (its map may be behind)")),
                    },
                    Some(Err(error)) => unknown(format!("node {primary}: {error}")),
                    None => unknown(format!("node {primary} was not asked")),
                }
            })
            .collect()
    }

    async fn ask_status(&self, caller: &Caller, addr: &str, timeout: Duration) -> Result<pb::NodeStatusReply, String> {
        let mut client = connect(addr, timeout).await?;
        let mut request = Request::new(pb::NodeStatusRequest {});
        if let Some(value) = &caller.authorization {
            request.metadata_mut().insert("authorization", value.clone());
        }
        match tokio::time::timeout(timeout, client.node_status(request)).await {
            Ok(Ok(reply)) => Ok(reply.into_inner()),
            Ok(Err(status)) => Err(format!("{}: {}", status.code(), status.message())),
            Err(_) => Err(format!("no answer within {} ms", timeout.as_millis())),
        }
    }

    async fn ask_cardinality(&self, caller: &Caller, addr: &str, tenant: &str, timeout: Duration) -> Result<pb::LocalCardinalityReply, String> {
        let mut client = connect(addr, timeout).await?;
        let mut request = Request::new(pb::CardinalityRequest { tenant: tenant.to_string(), limit: 0, member_timeout_ms: 0 });
        if let Some(value) = &caller.authorization {
            request.metadata_mut().insert("authorization", value.clone());
        }
        match tokio::time::timeout(timeout, client.local_cardinality(request)).await {
            Ok(Ok(reply)) => Ok(reply.into_inner()),
            Ok(Err(status)) => Err(format!("{}: {}", status.code(), status.message())),
            Err(_) => Err(format!("no answer within {} ms", timeout.as_millis())),
        }
    }

    fn local_cardinality(&self, tenant: &str) -> pb::LocalCardinalityReply {
        let mut rows = self.node.active_series_per_metric(if tenant.is_empty() { None } else { Some(tenant) });
        // Most series first; ties by tenant then metric, so every node answers in one order.
        rows.sort_by(|a, b| b.2.cmp(&a.2).then_with(|| a.0.cmp(&b.0)).then_with(|| a.1.cmp(&b.1)));
        let truncated = rows.len() > LOCAL_CARDINALITY_ROWS_MAX;
        rows.truncate(LOCAL_CARDINALITY_ROWS_MAX);
        pb::LocalCardinalityReply {
            node_id: self.id(),
            metrics: rows.into_iter().map(|(tenant, metric, active_series)| pb::MetricSeries { tenant, metric, active_series }).collect(),
            truncated,
        }
    }
}

#[tonic::async_trait]
impl AdminService for AdminGrpcService {
    async fn cluster_status(&self, request: Request<pb::ClusterStatusRequest>) -> Result<Response<pb::ClusterStatusReply>, Status> {
        let caller = self.caller(&request)?;
        let request = request.into_inner();
        let (read, info) = self.read(request.consistency).await?;
        let metrics = self.handle.raft().metrics().borrow().clone();
        let commit_index = self.handle.raft().with_raft_state(|state| state.committed.map(|id| id.index)).await.ok().flatten().unwrap_or(0);
        let last_log_index = metrics.last_log_index.unwrap_or(0);
        let timeout = member_timeout(request.member_timeout_ms, self.config.member_timeout_ms);
        let membership = read.state.membership.membership();
        let voters: BTreeSet<u64> = membership.voter_ids().collect();
        let mut nodes: BTreeMap<u64, (String, String)> = membership.nodes().map(|(id, node)| (*id, (node.grpc_addr.clone(), node.http_addr.clone()))).collect();
        nodes.entry(self.id()).or_insert_with(|| (String::new(), String::new()));
        let asks = nodes.iter().map(|(id, (grpc_addr, _))| {
            let caller = &caller;
            async move {
                if *id == self.id() {
                    Ok(self.local_status())
                } else {
                    self.ask_status(caller, grpc_addr, timeout).await
                }
            }
        });
        let data = nodes.keys().map(|id| async move {
            match tokio::time::timeout(timeout, crate::replicate::primary_status(&self.node, *id)).await {
                Ok(answer) => answer,
                Err(_) => Err(format!("no ReplicationStatus answer within {} ms", timeout.as_millis())),
            }
        });
        let (answers, data) = futures_util::future::join(futures_util::future::join_all(asks), futures_util::future::join_all(data)).await;
        let replication = metrics.replication.clone();
        let mut members = Vec::new();
        for (((id, (grpc_addr, http_addr)), answer), data) in nodes.iter().zip(answers).zip(data) {
            let matched_index = replication.as_ref().map(|r| if *id == self.id() { last_log_index } else { r.get(id).copied().flatten().map(|l| l.index).unwrap_or(0) });
            let mut member = pb::MemberStatus {
                node_id: *id,
                grpc_addr: grpc_addr.clone(),
                http_addr: http_addr.clone(),
                role: if voters.contains(id) { "voter" } else if membership.get_node(id).is_some() { "learner" } else { "not a member" }.to_string(),
                leader: metrics.current_leader == Some(*id),
                matched_index,
                lag_entries: matched_index.map(|m| last_log_index.saturating_sub(m)),
                ..pb::MemberStatus::default()
            };
            match answer {
                Ok(status) => {
                    member.reachable = true;
                    member.state = status.state;
                    member.applied_index = status.applied_index;
                    member.ready = status.ready;
                    member.health = if status.ready { "ok".to_string() } else { format!("not ready: {}", status.not_ready_reason) };
                }
                Err(error) => member.health = format!("unreachable: {error}"),
            }
            match data {
                Ok(status) => member.replication = Some(replication_summary(&status)),
                Err(error) => member.replication_error = error,
            }
            members.push(member);
        }
        // Voters first, then learners, each by id.
        members.sort_by_key(|m| (m.role != "voter", m.node_id));
        Ok(Response::new(pb::ClusterStatusReply { read: Some(info), leader_id: metrics.current_leader, term: metrics.current_term, commit_index, last_log_index, members }))
    }

    async fn node_status(&self, request: Request<pb::NodeStatusRequest>) -> Result<Response<pb::NodeStatusReply>, Status> {
        self.caller(&request)?;
        Ok(Response::new(self.local_status()))
    }

    async fn add_node(&self, request: Request<pb::AddNodeRequest>) -> Result<Response<pb::MembershipReply>, Status> {
        self.caller(&request)?;
        let request = request.into_inner();
        for (field, addr) in [("grpc_addr", &request.grpc_addr), ("http_addr", &request.http_addr)] {
            if addr.parse::<std::net::SocketAddr>().is_err() && !addr.rsplit_once(':').is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok()) {
                return Err(Status::invalid_argument(format!("{field} {addr:?} is not HOST:PORT")));
            }
        }
        if self.handle.local_read().state.membership.membership().voter_ids().any(|id| id == request.node_id) {
            return Err(Status::already_exists(format!("node {} is already a voter", request.node_id)));
        }
        let node = sextant_raft::Node { http_addr: request.http_addr, grpc_addr: request.grpc_addr };
        let log_id = match tokio::time::timeout(Duration::from_millis(MEMBERSHIP_TIMEOUT_MS), self.handle.add_node(request.node_id, node)).await {
            Ok(result) => result.map_err(|e| self.membership_status(e))?,
            Err(_) => {
                return Err(Status::deadline_exceeded(format!(
                    "node {} did not catch up within {MEMBERSHIP_TIMEOUT_MS} ms; it may remain a learner (check `cluster status`)",
                    request.node_id
                )))
            }
        };
        Ok(Response::new(self.membership_reply(log_id.index)))
    }

    async fn remove_node(&self, request: Request<pb::RemoveNodeRequest>) -> Result<Response<pb::MembershipReply>, Status> {
        self.caller(&request)?;
        let id = request.into_inner().node_id;
        let metrics = self.handle.raft().metrics().borrow().clone();
        let membership = metrics.membership_config.membership();
        let voters: BTreeSet<u64> = membership.voter_ids().collect();
        if membership.get_node(&id).is_none() {
            return Err(Status::not_found(format!("node {id} is not a member (voters: {voters:?})")));
        }
        if voters.len() == 1 && voters.contains(&id) {
            return Err(Status::failed_precondition(format!("refusing to remove node {id}: it is the last voter, and the cluster would have none")));
        }
        let log_id = match tokio::time::timeout(Duration::from_millis(MEMBERSHIP_TIMEOUT_MS), self.handle.remove_node(id)).await {
            Ok(result) => result.map_err(|e| self.membership_status(e))?,
            Err(_) => return Err(Status::deadline_exceeded(format!("removing node {id} did not commit within {MEMBERSHIP_TIMEOUT_MS} ms"))),
        };
        Ok(Response::new(self.membership_reply(log_id.index)))
    }

    async fn get_shard_map(&self, request: Request<pb::ReadRequest>) -> Result<Response<pb::ShardMapReply>, Status> {
        self.caller(&request)?;
        let (read, info) = self.read(request.into_inner().consistency).await?;
        let mut reply = match &read.state.shard_map {
            Some(map) => {
                // Lease holders are known to the leader only (its grant table).
                let now_ns = self.node.clock().now_monotonic_ns();
                let authority = self.node.lease_authority();
                let leading = authority.is_leading();
                let holders = authority.holders(now_ns, &self.node.config().lease);
                let shards = map
                    .shards
                    .iter()
                    .map(|(id, s)| {
                        let mut info = convert::shard(*id, s);
                        info.lease_known = leading;
                        if let Some(holder) = holders.get(id) {
                            info.lease_holder = Some(holder.node);
                            info.lease_age_ms = now_ns.saturating_sub(holder.granted_ns) / 1_000_000;
                        }
                        info
                    })
                    .collect();
                pb::ShardMapReply { read: Some(info), exists: true, version: map.version, shards, replication: vec![] }
            }
            None => pb::ShardMapReply { read: Some(info), exists: false, version: 0, shards: vec![], replication: vec![] },
        };
        reply.replication = self.shard_replication(&reply.shards).await;
        Ok(Response::new(reply))
    }

    async fn verify_shards(&self, request: Request<pb::VerifyShardsRequest>) -> Result<Response<pb::VerifyShardsReply>, Status> {
        self.caller(&request)?;
        let request = request.into_inner();
        let (min_t, max_t) = (request.min_t.unwrap_or(i64::MIN), request.max_t.unwrap_or(i64::MAX));
        if min_t > max_t {
            return Err(Status::invalid_argument(format!("--from {min_t} is after --to {max_t}")));
        }
        let map = self.handle.local_read().state.shard_map.clone();
        let Some(map) = map else { return Err(Status::failed_precondition("the cluster has no shard map yet")) };
        let node = &self.node;
        let checks = map.shards.iter().map(|(shard, s)| {
            let replicas: Vec<u64> = s.primary.into_iter().chain(s.secondary.filter(|x| Some(*x) != s.primary)).collect();
            async move {
                let digests = futures_util::future::join_all(replicas.iter().map(|r| crate::replicate::replica_digest(node, *r, *shard, min_t, max_t))).await;
                let first = digests.first().and_then(|d| d.digest.as_ref().ok().copied());
                let equal = !digests.is_empty() && digests.iter().all(|d| d.digest.as_ref().ok() == first.as_ref());
                let replicas = digests
                    .into_iter()
                    .map(|d| match d.digest {
                        Ok(x) => pb::ReplicaDigest { node: d.node, series: x.series, samples: x.samples, hash: x.hash, error: String::new() },
                        Err(error) => pb::ReplicaDigest { node: d.node, error, ..Default::default() },
                    })
                    .collect();
                pb::ShardVerify { shard: *shard, equal, replicas }
            }
        });
        let shards: Vec<pb::ShardVerify> = futures_util::future::join_all(checks).await;
        let mismatched = shards.iter().filter(|s| !s.equal).count() as u32;
        Ok(Response::new(pb::VerifyShardsReply { min_t, max_t, shards, mismatched }))
    }

    async fn apply_rules(&self, request: Request<pb::ApplyRulesRequest>) -> Result<Response<pb::ApplyRulesReply>, Status> {
        let caller = self.caller(&request)?;
        let groups = parse_rule_file(&request.into_inner().rule_file).map_err(|e| Status::invalid_argument(e.to_string()))?;
        if groups.is_empty() {
            return Err(Status::invalid_argument("the rule file holds no groups"));
        }
        let group_names = groups.iter().map(|g| g.name.clone()).collect();
        let write = self.write(&caller, Action::PutRuleGroups { groups }).await?;
        Ok(Response::new(pb::ApplyRulesReply { write: Some(write), group_names }))
    }

    async fn list_rule_groups(&self, request: Request<pb::ReadRequest>) -> Result<Response<pb::RuleGroupsReply>, Status> {
        self.caller(&request)?;
        let (read, info) = self.read(request.into_inner().consistency).await?;
        let groups = read.state.rule_groups.values().map(convert::rule_group).collect();
        Ok(Response::new(pb::RuleGroupsReply { read: Some(info), groups }))
    }

    async fn get_rule_group(&self, request: Request<pb::GetRuleGroupRequest>) -> Result<Response<pb::RuleGroupsReply>, Status> {
        self.caller(&request)?;
        let request = request.into_inner();
        let (read, info) = self.read(request.consistency).await?;
        let group = read.state.rule_groups.get(&request.name).ok_or_else(|| Status::not_found(format!("rule group {:?} does not exist (as of applied index {} on node {})", request.name, info.applied_index, info.node_id)))?;
        Ok(Response::new(pb::RuleGroupsReply { read: Some(info), groups: vec![convert::rule_group(group)] }))
    }

    async fn delete_rule_group(&self, request: Request<pb::DeleteRuleGroupRequest>) -> Result<Response<pb::WriteReply>, Status> {
        let caller = self.caller(&request)?;
        let name = request.into_inner().name;
        Ok(Response::new(self.write(&caller, Action::DeleteRuleGroup { name }).await?))
    }

    async fn put_dashboard(&self, request: Request<pb::PutDashboardRequest>) -> Result<Response<pb::PutDashboardReply>, Status> {
        let caller = self.caller(&request)?;
        let request = request.into_inner();
        if request.json.len() > DASHBOARD_JSON_BYTES_MAX {
            return Err(Status::invalid_argument(format!("dashboard JSON of {} bytes, at most {DASHBOARD_JSON_BYTES_MAX} allowed", request.json.len())));
        }
        let value: serde_json::Value = serde_json::from_str(&request.json).map_err(|e| Status::invalid_argument(format!("dashboard JSON: {e}")))?;
        let Some(object) = value.as_object() else {
            return Err(Status::invalid_argument("dashboard JSON: a Grafana dashboard is a JSON object"));
        };
        let from_json = |key: &str| -> Result<Option<String>, Status> {
            match object.get(key) {
                None | Some(serde_json::Value::Null) => Ok(None),
                Some(serde_json::Value::String(text)) => Ok(Some(text.clone())),
                Some(other) => Err(Status::invalid_argument(format!("dashboard JSON: `{key}` is {other}, expected a string"))),
            }
        };
        let pick = |key: &str, given: &str| -> Result<Option<String>, Status> {
            match (given.is_empty(), from_json(key)?) {
                (true, found) => Ok(found),
                (false, Some(found)) if found != given => Err(Status::invalid_argument(format!("{key} {given:?} given, but the dashboard JSON says {found:?}"))),
                (false, _) => Ok(Some(given.to_string())),
            }
        };
        let uid = pick("uid", &request.uid)?.ok_or_else(|| Status::invalid_argument("the dashboard has no uid: set `uid` in its JSON or pass one"))?;
        let title = pick("title", &request.title)?.unwrap_or_default();
        let write = self.write(&caller, Action::PutDashboard { uid: uid.clone(), title: title.clone(), json: request.json }).await?;
        Ok(Response::new(pb::PutDashboardReply { write: Some(write), uid, title }))
    }

    async fn get_dashboard(&self, request: Request<pb::GetDashboardRequest>) -> Result<Response<pb::DashboardReply>, Status> {
        self.caller(&request)?;
        let request = request.into_inner();
        let (read, info) = self.read(request.consistency).await?;
        let dashboard = read.state.dashboards.get(&request.uid).ok_or_else(|| Status::not_found(format!("dashboard {:?} does not exist (as of applied index {} on node {})", request.uid, info.applied_index, info.node_id)))?;
        let version = if request.version == 0 {
            dashboard.latest()
        } else {
            dashboard.versions.iter().find(|v| v.version == request.version)
        };
        let Some(version) = version else {
            let kept: Vec<u64> = dashboard.versions.iter().map(|v| v.version).collect();
            return Err(Status::not_found(format!("dashboard {:?} has no version {} (versions kept: {kept:?})", request.uid, request.version)));
        };
        Ok(Response::new(pb::DashboardReply { read: Some(info), dashboard: Some(convert::dashboard_version(&request.uid, version, true)) }))
    }

    async fn list_dashboards(&self, request: Request<pb::ReadRequest>) -> Result<Response<pb::DashboardListReply>, Status> {
        self.caller(&request)?;
        let (read, info) = self.read(request.into_inner().consistency).await?;
        let dashboards = read.state.dashboards.iter().filter_map(|(uid, d)| d.latest().map(|v| convert::dashboard_version(uid, v, false))).collect();
        Ok(Response::new(pb::DashboardListReply { read: Some(info), dashboards }))
    }

    async fn dashboard_history(&self, request: Request<pb::DashboardHistoryRequest>) -> Result<Response<pb::DashboardHistoryReply>, Status> {
        self.caller(&request)?;
        let request = request.into_inner();
        let (read, info) = self.read(request.consistency).await?;
        let dashboard = read.state.dashboards.get(&request.uid).ok_or_else(|| Status::not_found(format!("dashboard {:?} does not exist (as of applied index {} on node {})", request.uid, info.applied_index, info.node_id)))?;
        let versions = dashboard.versions.iter().map(|v| convert::dashboard_version(&request.uid, v, false)).collect();
        Ok(Response::new(pb::DashboardHistoryReply { read: Some(info), uid: request.uid, versions }))
    }

    async fn delete_dashboard(&self, request: Request<pb::DeleteDashboardRequest>) -> Result<Response<pb::WriteReply>, Status> {
        let caller = self.caller(&request)?;
        let uid = request.into_inner().uid;
        Ok(Response::new(self.write(&caller, Action::DeleteDashboard { uid }).await?))
    }

    async fn get_tenant_limits(&self, request: Request<pb::GetTenantLimitsRequest>) -> Result<Response<pb::TenantLimitsReply>, Status> {
        self.caller(&request)?;
        let request = request.into_inner();
        check_tenant(&request.tenant)?;
        let (read, info) = self.read(request.consistency).await?;
        let reply = match read.state.tenants.get(&request.tenant) {
            Some(tenant) => pb::TenantLimitsReply {
                read: Some(info),
                tenant: request.tenant,
                set_in_cluster: true,
                limits: Some(convert::limits_to_pb(&tenant.limits)),
                blocked_labels: tenant.blocked_labels.iter().cloned().collect(),
                version: tenant.version,
            },
            None => pb::TenantLimitsReply {
                read: Some(info),
                tenant: request.tenant,
                set_in_cluster: false,
                limits: Some(convert::limits_to_pb(&convert::node_default_limits(self.node.config()))),
                blocked_labels: vec![],
                version: 0,
            },
        };
        Ok(Response::new(reply))
    }

    async fn set_tenant_limits(&self, request: Request<pb::SetTenantLimitsRequest>) -> Result<Response<pb::SetTenantLimitsReply>, Status> {
        let caller = self.caller(&request)?;
        let request = request.into_inner();
        check_tenant(&request.tenant)?;
        // Unset fields keep the current values: read them linearizably (so only the leader
        // answers, and it sees every acknowledged change), then propose the whole record.
        let (read, _) = self.read(pb::Consistency::Linearizable as i32).await?;
        let current = match read.state.tenants.get(&request.tenant) {
            Some(tenant) => tenant.limits.clone(),
            None => convert::node_default_limits(self.node.config()),
        };
        let limits = convert::limits_overlay(&current, &request);
        let write = self.write(&caller, Action::PutTenantLimits { tenant: request.tenant, limits: limits.clone() }).await?;
        Ok(Response::new(pb::SetTenantLimitsReply { write: Some(write), limits: Some(convert::limits_to_pb(&limits)) }))
    }

    async fn promote_shard(&self, request: Request<pb::PromoteShardRequest>) -> Result<Response<pb::WriteReply>, Status> {
        let caller = self.caller(&request)?;
        let request = request.into_inner();
        let (read, _) = self.read(pb::Consistency::Linearizable as i32).await?;
        let current = shard_of(&read.state, request.shard)?;
        if current.secondary.is_none() {
            return Err(Status::failed_precondition(format!("shard {} has no secondary to promote", request.shard)));
        }
        // Promoting again replaces the pending merge; fine when the secondary is its source
        // (that node becomes primary with its own samples), not otherwise: the previous
        // primary's samples would no longer be merged nor warned about.
        if let Some(merge) = current.merge_pending.as_ref().filter(|m| current.secondary != Some(m.from_node)) {
            return Err(Status::failed_precondition(format!(
                "shard {}'s merge-back from node {} has not completed; promoting now would lose track of it — wait for it, or give it up with `shards abandon-merge {}` if node {} is gone for good",
                request.shard, merge.from_node, request.shard, merge.from_node
            )));
        }
        let expected_epoch = request.expected_epoch.unwrap_or(current.epoch);
        Ok(Response::new(self.write(&caller, Action::PromoteShard { shard: request.shard, expected_epoch }).await?))
    }

    async fn set_shard_secondary(&self, request: Request<pb::SetShardSecondaryRequest>) -> Result<Response<pb::WriteReply>, Status> {
        let caller = self.caller(&request)?;
        let request = request.into_inner();
        let (read, _) = self.read(pb::Consistency::Linearizable as i32).await?;
        let current = shard_of(&read.state, request.shard)?;
        if !read.state.nodes.contains_key(&request.secondary) {
            let known: Vec<u64> = read.state.nodes.keys().copied().collect();
            return Err(Status::invalid_argument(format!("node {} is not a registered node (registered: {known:?})", request.secondary)));
        }
        if current.primary == Some(request.secondary) {
            return Err(Status::invalid_argument(format!("node {} is shard {}'s primary; a secondary must be another node", request.secondary, request.shard)));
        }
        let assignment = sextant_raft::command::ShardAssignment { primary: current.primary, secondary: Some(request.secondary) };
        Ok(Response::new(self.write(&caller, Action::AssignShard { shard: request.shard, assignment }).await?))
    }

    async fn abandon_merge(&self, request: Request<pb::AbandonMergeRequest>) -> Result<Response<pb::WriteReply>, Status> {
        let caller = self.caller(&request)?;
        let request = request.into_inner();
        let (read, _) = self.read(pb::Consistency::Linearizable as i32).await?;
        let current = shard_of(&read.state, request.shard)?;
        let Some(merge) = current.merge_pending.clone() else {
            return Err(Status::failed_precondition(format!("shard {} has no merge pending", request.shard)));
        };
        let voter = read.state.membership.membership().voter_ids().any(|id| id == merge.from_node);
        if voter && current.secondary == Some(merge.from_node) {
            return Err(Status::failed_precondition(format!(
                "shard {}'s merge-back from node {} can still complete: that node is its secondary and a voter; name another secondary (`shards set-secondary`) or remove node {} first, then abandon",
                request.shard, merge.from_node, merge.from_node
            )));
        }
        let epoch = request.expected_epoch.unwrap_or(current.epoch);
        Ok(Response::new(self.write(&caller, Action::AbandonMerge { shard: request.shard, epoch }).await?))
    }

    async fn block_label(&self, request: Request<pb::LabelRequest>) -> Result<Response<pb::WriteReply>, Status> {
        let caller = self.caller(&request)?;
        let request = request.into_inner();
        check_tenant(&request.tenant)?;
        Ok(Response::new(self.write(&caller, Action::BlockLabel { tenant: request.tenant, label: request.label }).await?))
    }

    async fn unblock_label(&self, request: Request<pb::LabelRequest>) -> Result<Response<pb::WriteReply>, Status> {
        let caller = self.caller(&request)?;
        let request = request.into_inner();
        check_tenant(&request.tenant)?;
        Ok(Response::new(self.write(&caller, Action::UnblockLabel { tenant: request.tenant, label: request.label }).await?))
    }

    async fn cardinality_top(&self, request: Request<pb::CardinalityRequest>) -> Result<Response<pb::CardinalityReply>, Status> {
        let caller = self.caller(&request)?;
        let request = request.into_inner();
        if !request.tenant.is_empty() {
            check_tenant(&request.tenant)?;
        }
        let limit = match request.limit {
            0 => CARDINALITY_ROWS_DEFAULT,
            n if n > CARDINALITY_ROWS_MAX => return Err(Status::invalid_argument(format!("limit {n}: at most {CARDINALITY_ROWS_MAX} rows"))),
            n => n,
        };
        let timeout = member_timeout(request.member_timeout_ms, self.config.member_timeout_ms);
        let members = self.members();
        let asks = members.iter().map(|(id, (grpc_addr, _))| {
            let caller = &caller;
            let tenant = request.tenant.as_str();
            async move {
                if *id == self.id() {
                    Ok(self.local_cardinality(tenant))
                } else {
                    self.ask_cardinality(caller, grpc_addr, tenant, timeout).await
                }
            }
        });
        let answers = futures_util::future::join_all(asks).await;
        let mut merged: BTreeMap<(String, String), (u64, Vec<pb::NodeSeries>)> = BTreeMap::new();
        let mut nodes = Vec::new();
        for (id, answer) in members.keys().zip(answers) {
            match answer {
                Ok(reply) => {
                    for row in reply.metrics {
                        let entry = merged.entry((row.tenant, row.metric)).or_default();
                        entry.0 += row.active_series;
                        entry.1.push(pb::NodeSeries { node_id: *id, active_series: row.active_series });
                    }
                    nodes.push(pb::NodeAnswer { node_id: *id, reachable: true, error: String::new(), truncated: reply.truncated });
                }
                Err(error) => nodes.push(pb::NodeAnswer { node_id: *id, reachable: false, error, truncated: false }),
            }
        }
        let mut rows: Vec<pb::CardinalityRow> = merged.into_iter().map(|((tenant, metric), (active_series, per_node))| pb::CardinalityRow { tenant, metric, active_series, per_node }).collect();
        // Most series first; ties by tenant then metric (the BTreeMap order, kept by a stable sort).
        rows.sort_by(|a, b| b.active_series.cmp(&a.active_series));
        rows.truncate(limit as usize);
        Ok(Response::new(pb::CardinalityReply { node_id: self.id(), rows, nodes }))
    }

    async fn local_cardinality(&self, request: Request<pb::CardinalityRequest>) -> Result<Response<pb::LocalCardinalityReply>, Status> {
        self.caller(&request)?;
        let tenant = request.into_inner().tenant;
        if !tenant.is_empty() {
            check_tenant(&tenant)?;
        }
        Ok(Response::new(self.local_cardinality(&tenant)))
    }

    async fn trigger_snapshot(&self, request: Request<pb::TriggerSnapshotRequest>) -> Result<Response<pb::TriggerSnapshotReply>, Status> {
        self.caller(&request)?;
        let wait_ms = match request.into_inner().wait_ms {
            0 => SNAPSHOT_WAIT_MS_DEFAULT,
            ms => ms.min(SNAPSHOT_WAIT_MS_MAX),
        };
        let raft = self.handle.raft();
        let applied_index = raft.metrics().borrow().last_applied.map(|id| id.index).unwrap_or(0);
        raft.trigger().snapshot().await.map_err(|e| Status::unavailable(format!("raft on node {}: {e}", self.id())))?;
        let covered = |snapshot: Option<u64>| snapshot.unwrap_or(0) >= applied_index;
        let waited = raft.wait(Some(Duration::from_millis(wait_ms))).metrics(move |m| covered(m.snapshot.map(|s| s.index)), "snapshot covering the applied index").await;
        let snapshot_index = raft.metrics().borrow().snapshot.map(|s| s.index).unwrap_or(0);
        Ok(Response::new(pb::TriggerSnapshotReply { node_id: self.id(), snapshot_index, completed: waited.is_ok(), applied_index }))
    }
}

impl AdminGrpcService {
    fn membership_reply(&self, index: u64) -> pb::MembershipReply {
        let metrics = self.handle.raft().metrics().borrow().clone();
        let membership = metrics.membership_config.membership();
        pb::MembershipReply {
            node_id: self.id(),
            index,
            voters: membership.voter_ids().collect(),
            learners: membership.learner_ids().collect(),
        }
    }
}

/// `shard` in the applied shard map: NOT_FOUND without a map or when it has no such shard.
/// A member's data-path replication in one line of `cluster status`: over the shards it is
/// primary of, the largest lag in ms and the sums of the lags in samples and records.
fn replication_summary(status: &crate::route::pb::ReplicationStatusReply) -> pb::DataReplicationSummary {
    let mut summary = pb::DataReplicationSummary { primary_shards: status.shards.len() as u32, ..Default::default() };
    for s in &status.shards {
        summary.lag_ms_max = summary.lag_ms_max.max(s.lag_ms);
        summary.lag_samples += s.lag_samples;
        summary.lag_records += s.lag_records;
        summary.unprotected += u32::from(s.unprotected);
        summary.unreplicated += u32::from(s.state == "unreplicated");
    }
    summary
}

fn shard_of(state: &sextant_raft::state::MetadataState, shard: u32) -> Result<sextant_raft::state::Shard, Status> {
    let map = state.shard_map.as_ref().ok_or_else(|| Status::failed_precondition("there is no shard map yet"))?;
    map.shards.get(&shard).cloned().ok_or_else(|| Status::not_found(format!("shard {shard} does not exist (the map has {} shards)", map.shards.len())))
}
