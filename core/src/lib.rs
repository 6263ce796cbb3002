//! sextant-core: the pure logic every other crate shares.
//!
//! Labels and series identity ([`labels`], [`series`]), samples ([`sample`]), the `Clock`
//! trait ([`clock`]), Prometheus durations ([`duration`]), the Gorilla chunk codec ([`chunk`]), the determinism shim
//! ([`determinism`]: seeded RNG and two-tier BUGGIFY), and deterministic node_exporter-shaped
//! data for benchmarks, the load generator and the simulator ([`testdata`]).
//!
//! Architecture Invariant: core does no I/O and never reads a clock or an unseeded source of
//! randomness; time arrives as an argument or through a [`clock::Clock`] handed in by the
//! caller. The only `madsim::` use is inside [`determinism`], under `#[cfg(madsim)]`.

pub mod chunk;
pub mod clock;
pub mod determinism;
pub mod duration;
pub mod labels;
pub mod matcher;
pub mod promql;
pub mod sample;
pub mod series;
pub mod testdata;
