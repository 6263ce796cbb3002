//! The metadata crate's integration tests, one module per subject, in one test binary: one
//! binary builds in a fraction of the time of eight (each re-instantiates openraft's and
//! tonic's generic code); nextest still runs every test in its own process.

mod cluster;
mod format_golden;
mod grpc_cluster;
mod log_store_crash;
mod rule_file;
mod sim_grpc_cluster;
mod state_machine;
mod storage_suite;
