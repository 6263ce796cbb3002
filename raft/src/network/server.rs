//! The `RaftService` gRPC service: decodes each request, hands it to the local `Raft` and
//! encodes what it answered (errors included, so the caller's openraft sees the remote's
//! error). Malformed requests are refused with `InvalidArgument` naming what was wrong.

use tonic::{Request, Response, Status};

use super::pb::raft_service_server::{RaftService, RaftServiceServer};
use super::{check_addressed, pb, proto_convert, TransportConfig};
use crate::command::Command;
use crate::types::{NodeId, Raft};

/// The tonic server type (the simulated code adds an interceptor parameter).
#[cfg(not(madsim))]
pub type RaftServer = RaftServiceServer<RaftGrpcService>;
#[cfg(madsim)]
pub type RaftServer = RaftServiceServer<RaftGrpcService, tonic::codegen::IdentityInterceptor>;

pub struct RaftGrpcService {
    raft: Raft,
    /// This member's id: calls addressed to another are refused (`check_addressed`).
    me: NodeId,
}

impl RaftGrpcService {
    pub fn new(raft: Raft, me: NodeId) -> RaftGrpcService {
        RaftGrpcService { raft, me }
    }

    /// The tonic service with the transport's message limits in both directions.
    pub fn into_server(self, config: &TransportConfig) -> RaftServer {
        let limit = config.message_bytes_max_usize();
        RaftServiceServer::new(self)
            .max_decoding_message_size(limit)
            .max_encoding_message_size(limit)
    }
}

fn invalid(error: proto_convert::ConvertError) -> Status {
    Status::invalid_argument(error.to_string())
}

#[tonic::async_trait]
impl RaftService for RaftGrpcService {
    async fn append_entries(
        &self,
        request: Request<pb::RaftRequest>,
    ) -> Result<Response<pb::RaftReply>, Status> {
        check_addressed(&request, self.me)?;
        let rpc = proto_convert::from_json("append_entries request", &request.into_inner().json)
            .map_err(invalid)?;
        let result = self.raft.append_entries(rpc).await;
        Ok(Response::new(proto_convert::reply(&result)))
    }

    async fn vote(
        &self,
        request: Request<pb::RaftRequest>,
    ) -> Result<Response<pb::RaftReply>, Status> {
        check_addressed(&request, self.me)?;
        let rpc = proto_convert::from_json("vote request", &request.into_inner().json)
            .map_err(invalid)?;
        let result = self.raft.vote(rpc).await;
        Ok(Response::new(proto_convert::reply(&result)))
    }

    async fn install_snapshot(
        &self,
        request: Request<pb::SnapshotChunk>,
    ) -> Result<Response<pb::RaftReply>, Status> {
        check_addressed(&request, self.me)?;
        let rpc = proto_convert::install_snapshot_request(request.into_inner()).map_err(invalid)?;
        let result = self.raft.install_snapshot(rpc).await;
        Ok(Response::new(proto_convert::reply(&result)))
    }

    async fn client_write(
        &self,
        request: Request<pb::RaftRequest>,
    ) -> Result<Response<pb::RaftReply>, Status> {
        check_addressed(&request, self.me)?;
        let command: Command =
            proto_convert::from_json("client_write command", &request.into_inner().json)
                .map_err(invalid)?;
        // The forwarding node validated it; validate again, since this is an open port.
        crate::command::validate(&command).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let result = self.raft.client_write(command).await;
        Ok(Response::new(proto_convert::reply(&result)))
    }
}
