//! Deterministic simulation of Sextant inside madsim: the real node code on simulated disks,
//! clocks and network, seeded workloads and fault schedules, and oracles that judge every run.
//! See docs/design/simulation.md for the fault model, the oracles and what is not covered yet.
//!
//! Code map: [`config`] (`SimConfig`, scenarios, scaled sizes), [`schedule`] (fault kinds
//! and the seeded, serializable fault schedule), [`workload`] (series the writers send and
//! the cardinality bomb), [`ledger`] (the client-side ledger and the answer oracles),
//! [`report`] (run options, the report and its text); under `cfg(madsim)` only: `clock`
//! (per-node `SimClock`), `client` (hyper HTTP/1 client), `cluster` (`Cluster::start`, the
//! map of machines), `operator` (`sextant admin` replacing a lost member), `run` (one seed: tasks, faults, oracles, trace hash) and `sweep` (many
//! seeds in parallel).
//!
//! Architecture Invariant: the simulation drives nodes only through what a real deployment
//! has — HTTP to the node, the node's disk (`SimFs`), its clock, its process (kill, pause,
//! restart) and the network; reads go through the node's Prometheus query API over HTTP. The
//! limits oracle (9) also reads head counts from the engine and the node's tracker, to report
//! them; it never reaches into the node's internals to make an oracle pass.

pub mod config;
pub mod linearizable;
pub mod ledger;
pub mod report;
pub mod schedule;
pub mod workload;

#[cfg(madsim)]
pub mod client;
#[cfg(madsim)]
pub mod clock;
#[cfg(madsim)]
pub mod cluster;
#[cfg(madsim)]
pub mod metadata;
#[cfg(madsim)]
pub mod operator;
#[cfg(madsim)]
pub mod run;
#[cfg(madsim)]
pub mod sweep;
#[cfg(madsim)]
pub mod walcheck;
