//! The Sextant node: HTTP surfaces, ingest, limits and the `sextant` binary's commands.
//!
//! Code map: [`bench_write`] (the `sextant bench-write` load generator), [`config`] (flags, TOML file, defaults), [`duration`] (duration and size
//! parsers), [`remote_write`] (Remote-Write 1.0 wire types and bounded decoding), [`auth`]
//! (tenants and bearer tokens), [`limits`] (token bucket, active-series tracker, runaway
//! detection), [`hll`] (HyperLogLog), [`shard`] (series → shard), [`node`] (engine lifecycle
//! and the ingest path), [`metrics`] (self-monitoring), [`http`] (the axum router),
//! [`query_api`] (the Prometheus query API), [`query_scheduler`] (query admission, priority
//! classes, shedding),
//! [`server`] (the HTTP/1 accept loop and `sextant serve`), [`admin`] (the admin gRPC service and
//! the `sextant admin` CLI), [`cluster`] (the node's member of the metadata group: formation,
//! seeding, following its limits), [`tenant_limits`] (the limits in force per tenant: cluster
//! values over this node's flags), [`route`] (the cluster data path: forwarding writes to shard
//! primaries, the internal `Data` gRPC service, query fan-out), [`replicate`] (RF=2 replication:
//! the per-shard WAL stream to the secondary, catch-up and merge-back sync, lag and its bound),
//! [`lease`] (shard leases, the leader's grant table and promotion decisions), [`failover`] (the
//! `Lease` gRPC service, lease renewal and the leader's promotion loop).
//!
//! Architecture Invariant: the node reads time only through its injected `Clock`
//! (`SystemClock` in production), never `SystemTime`/`Instant` directly; protobuf and HTTP
//! types stop at this crate's boundary — storage sees `Labels` and `Sample`s. Real-only
//! pieces (signals, the real filesystem, the process entry point) are behind
//! `#[cfg(not(madsim))]`; the router and the accept loop run in both builds.

pub mod admin;
pub mod auth;
pub mod bench_write;
pub mod clockcheck;
pub mod cluster;
pub mod config;
pub mod duration;
pub mod failover;
pub mod hll;
pub mod http;
pub mod lease;
pub mod limits;
pub mod metrics;
pub mod node;
pub mod query_api;
pub mod query_scheduler;
pub mod remote_write;
pub mod replicate;
pub mod route;
pub mod server;
pub mod shard;
pub mod tenant_limits;
