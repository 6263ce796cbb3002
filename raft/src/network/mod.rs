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
