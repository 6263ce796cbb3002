//! The admin gRPC service (`proto/admin.proto`) and the `sextant admin` CLI.
//!
//! - [`service`]: [`service::AdminGrpcService`], served on the node's one gRPC port next to the
//!   raft transport; [`add_services`] is the one entry point the node's serve wiring calls;
//! - [`convert`]: the one place where the metadata state's types meet protobuf;
//! - [`cli`]: `sextant admin …` — argument parsing and [`cli::run`], which returns the text to
//!   print (or one error line), so tests check exact output without spawning processes;
//! - [`output`]: human tables and `--output json`.
//!
//! docs/design/admin.md describes every RPC, the auth rules and the CLI.

pub mod cli;
pub mod convert;
pub mod output;
pub mod rebalance;
pub mod service;

/// The generated protobuf and gRPC code. `tonic::include_proto!` picks the real or the
/// simulated code by `cfg(madsim)`.
pub mod pb {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("sextant.admin.v1");
}

pub use service::{add_services, AdminConfig, AdminGrpcService};

/// Metadata key of a NotLeader answer: the leader's node id, when known.
pub const LEADER_ID_METADATA: &str = "x-sextant-leader-id";
/// Metadata key of a NotLeader answer: the leader's gRPC address, when known.
pub const LEADER_ADDR_METADATA: &str = "x-sextant-leader-addr";
/// The largest admin message either way: a rule file (4 MiB) plus its framing.
pub const MESSAGE_BYTES_MAX: usize = 8 * 1024 * 1024;
const _: () = assert!(sextant_raft::rule_file::RULE_FILE_BYTES_MAX < MESSAGE_BYTES_MAX);
const _: () = assert!(sextant_raft::command::DASHBOARD_JSON_BYTES_MAX < MESSAGE_BYTES_MAX);
