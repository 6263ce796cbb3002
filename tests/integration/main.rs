//! The node's integration tests, one module per subject, in one test binary: each test binary
//! re-instantiates the node's generic async code (tokio, axum, tonic), so one binary instead of
//! eleven cuts the build (and CI) by minutes. nextest still runs every test in its own process.

mod admin_cli;
mod cluster_data;
mod cluster_http;
mod cluster_replication;
mod decode_fuzz;
mod failover;
mod head_cuts;
mod http_ingest;
mod http_query;
mod http_server;
mod limits_restart;
mod replicate_rpc;
mod serve_cluster;
mod wait;
