//! The storage engine's integration tests, one module per subject, in one test binary (one
//! binary builds in a fraction of the time of ten; nextest still runs every test in its own
//! process). memory_account.rs stays its own binary: it installs a counting global allocator.

mod block_compaction;
mod block_corruption;
mod block_crash;
mod block_roundtrip;
mod cut_concurrency;
mod engine;
mod fs_sim;
mod replication;
mod wal_codec;
mod wal_realfs;
mod wal_recovery;
