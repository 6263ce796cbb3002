//! The raft transport over tonic gRPC (docs/design/raft.md § Transport).
//!
//! - [`client`]: openraft's `RaftNetworkFactory` and `RaftNetwork` over tonic channels;
//! - [`server`]: the `RaftService` gRPC service, delegating to the local `Raft` handle;
//! - [`proto_convert`]: the one place where openraft's types meet protobuf.

pub mod client;
pub mod proto_convert;
pub mod server;

/// The generated protobuf and gRPC code (`proto/raft.proto`). `tonic::include_proto!` picks the
/// real or the simulated code by `cfg(madsim)`.
pub mod pb {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("sextant.raft.v1");
}

pub use client::{Connection, NetworkFactory};
pub use server::RaftGrpcService;

/// The gRPC metadata key every node-to-node call carries (raft, lease, data and replication
/// RPCs): the member id the caller means to reach. A node refuses a call meant for another id.
/// Why: the address of a member whose disk was lost comes back as a *new* member (`serve
/// --join` under a new id); answering the leader's replication for the old id with an empty
/// log would look like the old member losing committed entries (openraft panics on that
/// "log reversion"), and answering reads or replication for it would serve or store a shard as
/// a replica it is not. Found by the replicated simulation's `wipe` fault.
pub const TARGET_NODE_KEY: &str = "x-sextant-target-node";

/// `message` as a request addressed to member `target` ([`TARGET_NODE_KEY`]).
pub fn addressed<T>(message: T, target: crate::types::NodeId) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(TARGET_NODE_KEY, tonic::metadata::MetadataValue::from(target));
    request
}

/// Refuses a request not addressed to this node (`me`): FAILED_PRECONDITION naming both ids
/// when it was meant for another member, INVALID_ARGUMENT when it names none.
pub fn check_addressed<T>(request: &tonic::Request<T>, me: crate::types::NodeId) -> Result<(), tonic::Status> {
    let target = request.metadata().get(TARGET_NODE_KEY).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<crate::types::NodeId>().ok());
    match target {
        Some(target) if target == me => Ok(()),
        Some(target) => Err(tonic::Status::failed_precondition(format!(
            "this is node {me}, not node {target}: the address the caller has for node {target} now belongs to node {me} (was node {target} replaced after losing its disk?)"
        ))),
        None => Err(tonic::Status::invalid_argument(format!("the call names no target member ({TARGET_NODE_KEY} metadata with a node id); this is node {me}"))),
    }
}

/// Bytes kept free in every message for what surrounds a snapshot chunk (vote and meta JSON,
/// protobuf and gRPC framing).
pub const MESSAGE_OVERHEAD_BYTES: u64 = 64 * 1024;

/// Limits of the raft transport. tonic's default 4 MiB decoding limit is never used: both the
/// client and the server set theirs from `message_bytes_max`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TransportConfig {
    /// The largest gRPC message a node sends or accepts, both directions, client and server.
    pub message_bytes_max: u64,
    /// Snapshots go in chunks of at most this many data bytes (openraft's
    /// `snapshot_max_chunk_size`); must leave [`MESSAGE_OVERHEAD_BYTES`] under the message limit.
    pub snapshot_chunk_bytes: u64,
    /// How long a connection attempt may take before the peer counts as unreachable.
    pub connect_timeout_ms: u64,
}

impl Default for TransportConfig {
    fn default() -> Self {
        TransportConfig {
            message_bytes_max: 64 * 1024 * 1024,
            snapshot_chunk_bytes: 4 * 1024 * 1024,
            connect_timeout_ms: 1_000,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid transport config: {0}")]
pub struct TransportConfigError(pub String);

impl TransportConfig {
    /// Checks the limits fit together: a chunk and its overhead fit in one message.
    pub fn validate(&self) -> Result<(), TransportConfigError> {
        if self.message_bytes_max > u32::MAX as u64 {
            return Err(TransportConfigError(format!(
                "message_bytes_max {} exceeds gRPC's 4 GiB message length",
                self.message_bytes_max
            )));
        }
        if self.snapshot_chunk_bytes == 0 {
            return Err(TransportConfigError("snapshot_chunk_bytes is 0".into()));
        }
        if self.snapshot_chunk_bytes + MESSAGE_OVERHEAD_BYTES > self.message_bytes_max {
            return Err(TransportConfigError(format!(
                "snapshot_chunk_bytes {} plus {MESSAGE_OVERHEAD_BYTES} bytes of overhead exceeds message_bytes_max {}",
                self.snapshot_chunk_bytes, self.message_bytes_max
            )));
        }
        Ok(())
    }

    pub(crate) fn message_bytes_max_usize(&self) -> usize {
        usize::try_from(self.message_bytes_max).unwrap_or(usize::MAX)
    }
}
