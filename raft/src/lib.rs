//! sextant-raft: Sextant's consensus-managed metadata on openraft.
//!
//! - [`types`]: the one `declare_raft_types!` ([`TypeConfig`]), [`Node`] addresses;
//! - [`runtime`]: openraft's `AsyncRuntime` on madsim (only under `cfg(madsim)`);
//! - [`log_store`]: the durable raft log on storage's `FileSystem`;
//! - [`command`]: what the log carries and [`command::validate`] for proposers;
//! - [`state`]: the metadata state and the apply function that never fails;
//! - [`state_machine`]: openraft's state machine and snapshots over it.
//!
//! - [`network`]: the raft transport over tonic gRPC (client, server, protobuf conversions);
//! - [`node`]: [`RaftNode`], the bootstrap API the node binary calls.
//!
//! This crate is the only one that names openraft. The admin service and the CLI live in the
//! node (src/).

pub mod command;
pub mod rule_file;
pub mod log_store;
pub mod network;
pub mod node;
#[cfg(madsim)]
pub mod runtime;
pub mod state;
pub mod state_machine;
pub mod types;

pub use command::{
    round_robin_assignments, validate, Action, ClusterDefaults, Command, Outcome, Response, TenantLimits,
    ValidationError,
};
pub use log_store::{LogStore, LogStoreConfig, LogStoreError};
pub use network::TransportConfig;
pub use node::{MembershipError, RaftHandle, RaftNode, RaftNodeConfig, ReadError, StateRead, WriteError};
pub use state::MetadataState;
pub use state_machine::StateMachineStore;
pub use types::{Node, NodeId, TypeConfig};
