//! core's integration tests, one module per subject, in one test binary (faster to build than
//! four; nextest still runs every test in its own process).

mod chunk_proptest;
mod promql_conformance;
mod promql_engine;
mod promql_functions;
