//! The one openraft type configuration for Sextant's metadata group.

use std::fmt;
use std::io::Cursor;

use serde::{Deserialize, Serialize};

use crate::command::{Command, Response};

/// A node's id in the metadata group (and everywhere else in the cluster).
pub type NodeId = u64;

/// What the group knows about a node: where to reach it. Carried in membership entries, so
/// every node learns every other node's addresses through the log.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Node {
    /// `host:port` of the node's HTTP surface (remote-write, Prometheus API).
    pub http_addr: String,
    /// `host:port` of the node's gRPC surface (raft transport, admin, internal).
    pub grpc_addr: String,
}

impl fmt::Display for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "http={} grpc={}", self.http_addr, self.grpc_addr)
    }
}

#[cfg(not(madsim))]
openraft::declare_raft_types!(
    /// Sextant's metadata group: u64 node ids, [`Node`] addresses, [`Command`] in, [`Response`] out.
    pub TypeConfig:
        D = Command,
        R = Response,
        NodeId = NodeId,
        Node = Node,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

#[cfg(madsim)]
openraft::declare_raft_types!(
    /// Sextant's metadata group: u64 node ids, [`Node`] addresses, [`Command`] in, [`Response`] out.
    /// Under madsim the runtime is [`crate::runtime::MadsimRuntime`] (simulated time, seeded RNG).
    pub TypeConfig:
        D = Command,
        R = Response,
        NodeId = NodeId,
        Node = Node,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = crate::runtime::MadsimRuntime,
);

pub type Entry = openraft::Entry<TypeConfig>;
pub type LogId = openraft::LogId<NodeId>;
pub type Vote = openraft::Vote<NodeId>;
pub type StorageError = openraft::StorageError<NodeId>;
pub type StoredMembership = openraft::StoredMembership<NodeId, Node>;
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, Node>;
pub type Raft = openraft::Raft<TypeConfig>;
