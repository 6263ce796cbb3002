//! The simulator's integration tests, one module per subject, in one test binary (one binary
//! builds in a fraction of the time of five; nextest still runs every test in its own process).

mod determinism;
mod metadata;
mod planted;
mod regressions;
mod scenarios;
