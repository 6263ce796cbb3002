//! openraft's network over tonic: one [`Connection`] per target node, connected lazily and
//! dropped on any transport error so the next call reconnects. Transport failures map to
//! openraft's `Unreachable` (cannot connect: openraft backs off) or `NetworkError` (the call
//! failed on an established connection); errors the remote `Raft` returned come back as
//! `RemoteError`.

use std::time::Duration;

use openraft::error::{
    InstallSnapshotError, NetworkError, PayloadTooLarge, RPCError, RaftError, RemoteError,
    Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use tonic::transport::{Channel, Endpoint};

use super::pb::raft_service_client::RaftServiceClient;
use super::{proto_convert, TransportConfig};
use crate::types::{Node, NodeId, TypeConfig};

/// A transport failure, before it is mapped to openraft's error kinds.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("cannot connect to node {target} at {addr}: {message}")]
    Connect {
        target: NodeId,
        addr: String,
        message: String,
    },
    #[error("call to node {target} at {addr} failed: {status}")]
    Call {
        target: NodeId,
        addr: String,
        status: tonic::Status,
    },
    #[error("node {target} at {addr}: {source}")]
    Decode {
        target: NodeId,
        addr: String,
        source: proto_convert::ConvertError,
    },
}

impl TransportError {
    /// Whether openraft should treat the peer as unreachable (and back off) rather than as a
    /// failed call.
    fn is_unreachable(&self) -> bool {
        match self {
            TransportError::Connect { .. } => true,
            TransportError::Call { status, .. } => status.code() == tonic::Code::Unavailable,
            TransportError::Decode { .. } => false,
        }
    }

    fn into_rpc_error<E: std::error::Error>(self) -> RPCError<NodeId, Node, E> {
        if self.is_unreachable() {
            RPCError::Unreachable(Unreachable::new(&self))
        } else {
            RPCError::Network(NetworkError::new(&self))
        }
    }
}

/// Opens a gRPC client to `addr` (`host:port`) with the transport's message limits.
pub async fn connect(
    config: &TransportConfig,
    target: NodeId,
    addr: &str,
) -> Result<RaftServiceClient<Channel>, TransportError> {
    let connect_error = |message: String| TransportError::Connect {
        target,
        addr: addr.to_string(),
        message,
    };
    let endpoint = Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| connect_error(format!("bad address: {e}")))?
        .connect_timeout(Duration::from_millis(config.connect_timeout_ms));
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| connect_error(e.to_string()))?;
    let limit = config.message_bytes_max_usize();
    Ok(RaftServiceClient::new(channel)
        .max_decoding_message_size(limit)
        .max_encoding_message_size(limit))
}

/// Makes a [`Connection`] per target; openraft asks for one per replication stream.
#[derive(Clone, Debug)]
pub struct NetworkFactory {
    config: TransportConfig,
}

impl NetworkFactory {
    pub fn new(config: TransportConfig) -> NetworkFactory {
        NetworkFactory { config }
    }
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = Connection;

    async fn new_client(&mut self, target: NodeId, node: &Node) -> Connection {
        Connection {
            config: self.config.clone(),
            target,
            addr: node.grpc_addr.clone(),
            client: None,
        }
    }
}

/// A lazily connected client to one target node.
pub struct Connection {
    config: TransportConfig,
    target: NodeId,
    addr: String,
    client: Option<RaftServiceClient<Channel>>,
}

impl Connection {
    /// BUGGIFY sites every outgoing RPC passes: a delayed request (`raft.rpc.delay`: late past
    /// openraft's timeouts, overtaken by newer terms) and a refused connection
    /// (`raft.rpc.unreachable`: openraft backs off and retries). Simulation only.
    async fn buggify_send(&self, rpc: &'static str) -> Result<(), TransportError> {
        if sextant_core::buggify!("raft.rpc.delay") {
            const DELAY_MS: u64 = 150;
            tokio::time::sleep(std::time::Duration::from_millis(DELAY_MS)).await;
        }
        if sextant_core::buggify!("raft.rpc.unreachable") {
            return Err(TransportError::Connect {
                target: self.target,
                addr: self.addr.clone(),
                message: format!("BUGGIFY raft.rpc.unreachable: {rpc} not sent"),
            });
        }
        Ok(())
    }

    async fn client(&mut self) -> Result<RaftServiceClient<Channel>, TransportError> {
        if let Some(client) = &self.client {
            return Ok(client.clone());
        }
        let client = connect(&self.config, self.target, &self.addr).await?;
        self.client = Some(client.clone());
        Ok(client)
    }

    /// Forgets the channel after a failure, so the next call connects afresh.
    fn failed(&mut self, status: tonic::Status) -> TransportError {
        self.client = None;
        TransportError::Call {
            target: self.target,
            addr: self.addr.clone(),
            status,
        }
    }

    fn decode_error(&self, source: proto_convert::ConvertError) -> TransportError {
        TransportError::Decode {
            target: self.target,
            addr: self.addr.clone(),
            source,
        }
    }
}

impl RaftNetwork<TypeConfig> for Connection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, Node, RaftError<NodeId>>> {
        let request = proto_convert::request(&rpc);
        // Too large for one message: ask openraft to send fewer entries at a time rather than
        // let the server refuse it. One entry always fits (entry_bytes_max is far below the
        // message limit, checked by `RaftNode::start`).
        if request.json.len() as u64 + super::MESSAGE_OVERHEAD_BYTES > self.config.message_bytes_max
            && rpc.entries.len() > 1
        {
            let hint = (rpc.entries.len() as u64 / 2).max(1);
            return Err(RPCError::PayloadTooLarge(
                PayloadTooLarge::new_entries_hint(hint),
            ));
        }
        self.buggify_send("append_entries").await.map_err(|e| e.into_rpc_error())?;
        let mut client = self.client().await.map_err(|e| e.into_rpc_error())?;
        let reply = match client.append_entries(super::addressed(request, self.target)).await {
            Ok(reply) => reply.into_inner(),
            Err(status) => return Err(self.failed(status).into_rpc_error()),
        };
        let answer = proto_convert::from_reply("append_entries reply", reply)
            .map_err(|e| self.decode_error(e).into_rpc_error())?;
        answer
            .map_err(|e: RaftError<NodeId>| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, Node, RaftError<NodeId, InstallSnapshotError>>,
    > {
        let chunk = proto_convert::snapshot_chunk(&rpc);
        // openraft cuts chunks of `snapshot_max_chunk_size`, which `RaftNode::start` sets from
        // `snapshot_chunk_bytes` (validated to fit a message). A larger chunk means openraft
        // was configured elsewhere: refuse it here rather than have the server refuse it.
        let chunk_bytes_max = self.config.message_bytes_max - super::MESSAGE_OVERHEAD_BYTES;
        if chunk.data.len() as u64 > chunk_bytes_max {
            let error = std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!(
                    "snapshot chunk of {} bytes exceeds the {chunk_bytes_max} bytes a message can carry; set snapshot_max_chunk_size from TransportConfig::snapshot_chunk_bytes",
                    chunk.data.len()
                ),
            );
            return Err(RPCError::Network(NetworkError::new(&error)));
        }
        self.buggify_send("install_snapshot").await.map_err(|e| e.into_rpc_error())?;
        let mut client = self.client().await.map_err(|e| e.into_rpc_error())?;
        let reply = match client.install_snapshot(super::addressed(chunk, self.target)).await {
            Ok(reply) => reply.into_inner(),
            Err(status) => return Err(self.failed(status).into_rpc_error()),
        };
        let answer = proto_convert::from_reply("install_snapshot reply", reply)
            .map_err(|e| self.decode_error(e).into_rpc_error())?;
        answer.map_err(|e: RaftError<NodeId, InstallSnapshotError>| {
            RPCError::RemoteError(RemoteError::new(self.target, e))
        })
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        _option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, Node, RaftError<NodeId>>> {
        self.buggify_send("vote").await.map_err(|e| e.into_rpc_error())?;
        let mut client = self.client().await.map_err(|e| e.into_rpc_error())?;
        let reply = match client.vote(super::addressed(proto_convert::request(&rpc), self.target)).await {
            Ok(reply) => reply.into_inner(),
            Err(status) => return Err(self.failed(status).into_rpc_error()),
        };
        let answer = proto_convert::from_reply("vote reply", reply)
            .map_err(|e| self.decode_error(e).into_rpc_error())?;
        answer
            .map_err(|e: RaftError<NodeId>| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}
