//! [`RaftNode`]: what the node binary calls to run its member of the metadata group — open the
//! log store and state machine on a `FileSystem`, build openraft's `Raft`, serve the raft gRPC
//! service, form or grow the cluster, write commands (forwarded to the leader) and read the
//! state linearizably or locally.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;

use openraft::error::{ClientWriteError, ForwardToLeader, RaftError};
use openraft::raft::ClientWriteResponse;
use openraft::{ChangeMembers, Config};
use sextant_storage::fs::FileSystem;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tonic::transport::server::Router;

use crate::command::{validate, Command, Response, ValidationError};
use crate::log_store::{LogStore, LogStoreConfig, LogStoreError};
use crate::network::{client, proto_convert, NetworkFactory, RaftGrpcService, TransportConfig};
use crate::state::MetadataState;
use crate::state_machine::{SnapshotError, StateMachineStore};
use crate::types::{LogId, Node, NodeId, Raft, TypeConfig};

/// Everything [`RaftNode::start`] needs besides the disk and the listener.
#[derive(Clone, Debug)]
pub struct RaftNodeConfig {
    pub id: NodeId,
    /// This node's addresses, as recorded in membership when it joins.
    pub node: Node,
    /// Directory on the `FileSystem` for the log (`<dir>`) and the state machine (`<dir>/sm`).
    pub dir: PathBuf,
    pub log: LogStoreConfig,
    pub transport: TransportConfig,
    /// openraft's timing and snapshot policy; `snapshot_max_chunk_size` is overwritten from
    /// `transport.snapshot_chunk_bytes`.
    pub raft: Config,
}

impl RaftNodeConfig {
    pub fn new(id: NodeId, node: Node, dir: impl Into<PathBuf>) -> RaftNodeConfig {
        RaftNodeConfig {
            id,
            node,
            dir: dir.into(),
            log: LogStoreConfig::default(),
            transport: TransportConfig::default(),
            raft: Config {
                heartbeat_interval: 250,
                election_timeout_min: 1_000,
                election_timeout_max: 2_000,
                ..Config::default()
            },
        }
    }

    /// Builds a snapshot every `entries` applied entries and keeps no log behind it, so a
    /// member that falls behind (or a new one) can only catch up by snapshot install. For the
    /// simulator and tests, which must reach snapshot install within a short run; callers
    /// outside this crate set it here because only raft/ names openraft's types.
    pub fn with_snapshot_every(mut self, entries: u64) -> RaftNodeConfig {
        self.raft.snapshot_policy = openraft::SnapshotPolicy::LogsSinceLast(entries);
        self.raft.max_in_snapshot_log_to_keep = 0;
        self.raft.purge_batch_size = 1;
        self
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("raft config: {0}")]
    Config(String),
    #[error("raft log store: {0}")]
    LogStore(#[from] LogStoreError),
    #[error("raft state machine: {0}")]
    StateMachine(#[from] SnapshotError),
    #[error("raft listener: {0}")]
    Listener(std::io::Error),
    #[error("raft: {0}")]
    Raft(String),
}

/// Why a write was not applied.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    /// This node is not the leader and could not hand the write to it; retry at the leader.
    #[error("not the leader; leader is {}", describe_leader(*leader_id, leader_addr.as_deref()))]
    NotLeader {
        leader_id: Option<NodeId>,
        /// The leader's gRPC address, when known.
        leader_addr: Option<String>,
    },
    #[error("forwarding to the leader failed: {0}")]
    Forward(String),
    #[error("raft: {0}")]
    Raft(String),
}

fn describe_leader(id: Option<NodeId>, addr: Option<&str>) -> String {
    match (id, addr) {
        (Some(id), Some(addr)) => format!("node {id} at {addr}"),
        (Some(id), None) => format!("node {id} (address unknown)"),
        _ => "unknown (an election may be in progress)".to_string(),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MembershipError {
    #[error("not the leader; leader is {}", describe_leader(*leader_id, leader_addr.as_deref()))]
    NotLeader {
        leader_id: Option<NodeId>,
        leader_addr: Option<String>,
    },
    #[error("raft: {0}")]
    Raft(String),
}

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("not the leader; leader is {}", describe_leader(*leader_id, leader_addr.as_deref()))]
    NotLeader {
        leader_id: Option<NodeId>,
        leader_addr: Option<String>,
    },
    #[error("raft: {0}")]
    Raft(String),
}

fn leader_of(forward: &ForwardToLeader<NodeId, Node>) -> (Option<NodeId>, Option<String>) {
    (
        forward.leader_id,
        forward.leader_node.as_ref().map(|n| n.grpc_addr.clone()),
    )
}

fn membership_error(error: RaftError<NodeId, ClientWriteError<NodeId, Node>>) -> MembershipError {
    match error.forward_to_leader() {
        Some(forward) => {
            let (leader_id, leader_addr) = leader_of(forward);
            MembershipError::NotLeader {
                leader_id,
                leader_addr,
            }
        }
        None => MembershipError::Raft(error.to_string()),
    }
}

/// A state read and the log position it reflects.
#[derive(Clone, Debug)]
pub struct StateRead {
    pub state: MetadataState,
    /// The applied index of this node's copy when it was read (0: nothing applied).
    pub applied_index: u64,
}

/// What services need of a running member: cheap to clone, shares the member's `Raft` and
/// state machine. Everything but starting and stopping the member is here; [`RaftNode`]
/// derefs to it.
#[derive(Clone)]
pub struct RaftHandle {
    config: Arc<RaftNodeConfig>,
    raft: Raft,
    state_machine: StateMachineStore,
}

/// One running member of the metadata group: its [`RaftHandle`] and its gRPC server.
pub struct RaftNode {
    handle: RaftHandle,
    server_shutdown: Option<oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<()>>,
}

impl std::ops::Deref for RaftNode {
    type Target = RaftHandle;
    fn deref(&self) -> &RaftHandle {
        &self.handle
    }
}

impl RaftNode {
    /// Opens (or recovers) the log and state machine under `config.dir` on `fs`, builds `Raft`,
    /// and serves the raft gRPC service on `listener`. The node joins nothing by itself: call
    /// [`RaftNode::initialize`] on a new cluster, or have the leader [`RaftNode::add_node`] it.
    pub async fn start(
        config: RaftNodeConfig,
        fs: Arc<dyn FileSystem>,
        listener: TcpListener,
    ) -> Result<RaftNode, StartError> {
        RaftNode::start_with_services(config, fs, listener, |_handle, router| router).await
    }

    /// Like [`RaftNode::start`], and lets the caller add its own gRPC services (the node's
    /// admin service) to the same server, so a node has one gRPC port. `services` gets the
    /// member's [`RaftHandle`] to build services that need it.
    pub async fn start_with_services(
        config: RaftNodeConfig,
        fs: Arc<dyn FileSystem>,
        listener: TcpListener,
        services: impl FnOnce(&RaftHandle, Router) -> Router,
    ) -> Result<RaftNode, StartError> {
        config
            .transport
            .validate()
            .map_err(|e| StartError::Config(e.to_string()))?;
        // One entry must always fit in one append_entries message (the client halves batches
        // that do not fit, down to one entry).
        let entry_room_bytes = (config.log.entry_bytes_max as u64).saturating_mul(4);
        if entry_room_bytes + crate::network::MESSAGE_OVERHEAD_BYTES
            > config.transport.message_bytes_max
        {
            return Err(StartError::Config(format!(
                "message_bytes_max {} cannot carry one entry of entry_bytes_max {} (JSON may quadruple it)",
                config.transport.message_bytes_max, config.log.entry_bytes_max
            )));
        }
        let mut raft_config = config.raft.clone();
        raft_config.snapshot_max_chunk_size = config.transport.snapshot_chunk_bytes;
        let raft_config = raft_config
            .validate()
            .map_err(|e| StartError::Config(e.to_string()))?;
        let log = LogStore::open(fs.clone(), config.dir.clone(), config.log.clone()).await?;
        let state_machine = StateMachineStore::open(fs, config.dir.join("sm")).await?;
        let raft = Raft::new(
            config.id,
            Arc::new(raft_config),
            NetworkFactory::new(config.transport.clone()),
            log,
            state_machine.clone(),
        )
        .await
        .map_err(|e| StartError::Raft(e.to_string()))?;
        let server = RaftGrpcService::new(raft.clone(), config.id).into_server(&config.transport);
        let (shutdown_tx, shutdown_rx) = oneshot::channel::<()>();
        let signal = async move {
            let _ = shutdown_rx.await;
        };
        let id = config.id;
        let handle = RaftHandle {
            config: Arc::new(config),
            raft,
            state_machine,
        };
        let router = services(
            &handle,
            tonic::transport::Server::builder().add_service(server),
        );
        #[cfg(not(madsim))]
        let serve = {
            // `TcpIncoming::from` leaves Nagle on (only a server that binds its own address gets
            // tonic's TCP_NODELAY default): a reply written in two segments then waits for the
            // caller's delayed ACK, 40 ms on Linux, on every forwarded write and fanned-out query
            // (the peer benchmark's 3-node run showed that floor).
            let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
            router.serve_with_incoming_shutdown(incoming, signal)
        };
        // The simulated tonic serves on an address, not a listener: take the listener's
        // address and let the simulated server bind it.
        #[cfg(madsim)]
        let serve = {
            let addr = listener.local_addr().map_err(StartError::Listener)?;
            drop(listener);
            router.serve_with_shutdown(addr, signal)
        };
        let server = tokio::spawn(async move {
            if let Err(error) = serve.await {
                tracing::error!(node = id, %error, "raft gRPC server stopped");
            }
        });
        Ok(RaftNode {
            handle,
            server_shutdown: Some(shutdown_tx),
            server: Some(server),
        })
    }

    /// Stops the gRPC server and openraft.
    pub async fn shutdown(mut self) -> Result<(), String> {
        if let Some(tx) = self.server_shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(server) = self.server.take() {
            let _ = server.await;
        }
        self.handle.raft.shutdown().await.map_err(|e| e.to_string())
    }
}

impl RaftHandle {
    pub fn id(&self) -> NodeId {
        self.config.id
    }

    /// openraft's handle, for metrics and waits.
    pub fn raft(&self) -> &Raft {
        &self.raft
    }

    /// Bootstraps a new cluster with `members` as voters (a single node: itself). Only on a
    /// node with an empty log; a node that is already part of a cluster refuses.
    pub async fn initialize(&self, members: BTreeMap<NodeId, Node>) -> Result<(), String> {
        self.raft
            .initialize(members)
            .await
            .map_err(|e| e.to_string())
    }

    /// Like [`RaftHandle::initialize`], but a node that already has a log or a vote (a
    /// restart) is not an error: answers whether this call bootstrapped the cluster. openraft
    /// 0.9 refuses `initialize` unless the log is empty and the vote is (0, 0), so calling this
    /// on every restart, or on every node listed in the same initial membership, is safe.
    pub async fn initialize_if_pristine(
        &self,
        members: BTreeMap<NodeId, Node>,
    ) -> Result<bool, String> {
        match self.raft.initialize(members).await {
            Ok(()) => Ok(true),
            Err(RaftError::APIError(openraft::error::InitializeError::NotAllowed(_))) => Ok(false),
            Err(error) => Err(error.to_string()),
        }
    }

    /// Bootstraps a one-voter cluster of this node.
    pub async fn initialize_single(&self) -> Result<(), String> {
        self.initialize(BTreeMap::from([(self.config.id, self.config.node.clone())]))
            .await
    }

    /// On the leader: adds `id` as a learner (waiting until it has caught up, by log or by
    /// snapshot), then makes it a voter.
    pub async fn add_node(&self, id: NodeId, node: Node) -> Result<LogId, MembershipError> {
        self.raft
            .add_learner(id, node, true)
            .await
            .map_err(membership_error)?;
        let response = self
            .raft
            .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false)
            .await
            .map_err(membership_error)?;
        Ok(response.log_id)
    }

    /// On the leader: removes `id` from the voters and learners.
    pub async fn remove_node(&self, id: NodeId) -> Result<LogId, MembershipError> {
        let response = self
            .raft
            .change_membership(ChangeMembers::RemoveVoters(BTreeSet::from([id])), false)
            .await
            .map_err(membership_error)?;
        Ok(response.log_id)
    }

    /// Validates `command` and proposes it. On a follower the write is forwarded once to the
    /// leader over gRPC; if the leader is unknown or has changed meanwhile, the answer is
    /// [`WriteError::NotLeader`] with what this node knows of the leader.
    pub async fn client_write(&self, command: Command) -> Result<Response, WriteError> {
        validate(&command)?;
        let forward = match self.raft.client_write(command.clone()).await {
            Ok(response) => return Ok(response.data),
            Err(error) => match error.forward_to_leader() {
                Some(forward) => forward.clone(),
                None => return Err(WriteError::Raft(error.to_string())),
            },
        };
        let (leader_id, leader_addr) = leader_of(&forward);
        let (Some(target), Some(addr)) = (leader_id, leader_addr.clone()) else {
            return Err(WriteError::NotLeader {
                leader_id,
                leader_addr,
            });
        };
        if target == self.config.id {
            return Err(WriteError::NotLeader {
                leader_id,
                leader_addr,
            });
        }
        let mut client = client::connect(&self.config.transport, target, &addr)
            .await
            .map_err(|e| WriteError::Forward(e.to_string()))?;
        let reply = client
            .client_write(crate::network::addressed(proto_convert::request(&command), target))
            .await
            .map_err(|status| WriteError::Forward(format!("node {target} at {addr}: {status}")))?
            .into_inner();
        let answer: Result<
            ClientWriteResponse<TypeConfig>,
            RaftError<NodeId, ClientWriteError<NodeId, Node>>,
        > = proto_convert::from_reply("client_write reply", reply)
            .map_err(|e| WriteError::Forward(e.to_string()))?;
        match answer {
            Ok(response) => Ok(response.data),
            Err(error) => match error.forward_to_leader() {
                Some(forward) => {
                    let (leader_id, leader_addr) = leader_of(forward);
                    Err(WriteError::NotLeader {
                        leader_id,
                        leader_addr,
                    })
                }
                None => Err(WriteError::Raft(error.to_string())),
            },
        }
    }

    /// A linearizable read (openraft's read index): only on the leader, after confirming
    /// leadership with a quorum and waiting until this node has applied up to the read index.
    pub async fn linearizable_read(&self) -> Result<StateRead, ReadError> {
        if let Err(error) = self.raft.ensure_linearizable().await {
            return Err(match error.forward_to_leader() {
                Some(forward) => {
                    let (leader_id, leader_addr) = leader_of(forward);
                    ReadError::NotLeader {
                        leader_id,
                        leader_addr,
                    }
                }
                None => ReadError::Raft(error.to_string()),
            });
        }
        Ok(self.local_read())
    }

    /// Confirms that this node is still the leader (openraft's read index: a quorum
    /// acknowledged this leader's term after the call began) and waits until this node has
    /// applied up to the read index; answers the applied index then. A deposed leader that
    /// has not noticed yet gets [`ReadError::NotLeader`] instead. Cheaper than
    /// [`RaftHandle::linearizable_read`]: the state is not copied — read it with
    /// [`RaftHandle::read_local`] afterwards (it can only be newer).
    pub async fn confirm_leader(&self) -> Result<u64, ReadError> {
        if let Err(error) = self.raft.ensure_linearizable().await {
            return Err(match error.forward_to_leader() {
                Some(forward) => {
                    let (leader_id, leader_addr) = leader_of(forward);
                    ReadError::NotLeader {
                        leader_id,
                        leader_addr,
                    }
                }
                None => ReadError::Raft(error.to_string()),
            });
        }
        Ok(self.read_local(|state| state.last_applied.map(|id| id.index).unwrap_or(0)))
    }

    /// The leader this node currently knows of (openraft's metrics), if any, and the term.
    /// A leader that sees the term move while it still leads was re-elected: whatever it
    /// learnt in the earlier term may be stale (another leader may have led in between).
    pub fn leadership(&self) -> (Option<NodeId>, u64) {
        let metrics = self.raft.metrics();
        let metrics = metrics.borrow();
        (metrics.current_leader, metrics.current_term)
    }

    /// Projects this node's own applied copy without copying all of it; `read` gets the
    /// state, whose `last_applied` says which version it is.
    pub fn read_local<T>(&self, read: impl FnOnce(&MetadataState) -> T) -> T {
        self.state_machine.with_state(read)
    }

    /// This node's addresses as configured.
    pub fn node(&self) -> &Node {
        &self.config.node
    }

    /// This node's own applied copy, with the index it reflects (what the hot paths use).
    pub fn local_read(&self) -> StateRead {
        let state = self.state_machine.state();
        let applied_index = state.last_applied.map(|id| id.index).unwrap_or(0);
        StateRead {
            state,
            applied_index,
        }
    }
}
