//! What a run is asked to do and what it reports; the text every run prints.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;

use crate::config::{PlantedBug, Scenario, SimConfig};
use crate::schedule::{FaultKind, Schedule};

/// The inputs of one run: everything a replay needs.
#[derive(Clone, Debug)]
pub struct RunOptions {
    pub seed: u64,
    pub scenario: Scenario,
    /// Fault kinds to draw from (`None`: the scenario's defaults).
    pub faults: Option<BTreeSet<FaultKind>>,
    /// A pinned schedule (replaces the one drawn from the seed).
    pub schedule: Option<Schedule>,
    /// Treat the known clock-skew gap as a failure.
    pub strict_gaps: bool,
    /// Print every trace event to stderr.
    pub verbose: bool,
    /// A bug planted on purpose, to test the oracles.
    pub planted_bug: Option<PlantedBug>,
    /// Size overrides (for load measurements): nodes, writers, series per writer.
    pub nodes: Option<usize>,
    pub writers: Option<usize>,
    pub series_per_writer: Option<usize>,
}

impl RunOptions {
    pub fn new(seed: u64, scenario: Scenario) -> RunOptions {
        RunOptions {
            seed,
            scenario,
            faults: None,
            schedule: None,
            strict_gaps: false,
            verbose: false,
            planted_bug: None,
            nodes: None,
            writers: None,
            series_per_writer: None,
        }
    }

    pub fn config(&self) -> SimConfig {
        let base = SimConfig::new(self.seed, self.scenario);
        SimConfig {
            planted_bug: self.planted_bug,
            nodes: self.nodes.unwrap_or(base.nodes),
            writers: self.writers.unwrap_or(base.writers),
            series_per_writer: self.series_per_writer.unwrap_or(base.series_per_writer),
            ..base
        }
        .with_limits_fitted()
    }

    pub fn fault_kinds(&self) -> BTreeSet<FaultKind> {
        self.faults.clone().unwrap_or_else(|| FaultKind::defaults(self.scenario))
    }

    /// The one command that replays this run with full tracing.
    pub fn replay_command(&self) -> String {
        format!(
            "RUSTFLAGS=\"--cfg madsim\" CARGO_TARGET_DIR=target/madsim cargo run --profile ci -p sextant-sim -- run {} --trace",
            self.cli_args().join(" ")
        )
    }

    /// The `sextant-sim run` arguments that give this run (a pinned schedule is not among
    /// them: it travels as a file).
    pub fn cli_args(&self) -> Vec<String> {
        let mut args = vec!["--seed".to_string(), self.seed.to_string(), "--scenario".to_string(), self.scenario.to_string()];
        if let Some(faults) = &self.faults {
            let list: Vec<&str> = faults.iter().map(|k| k.name()).collect();
            args.push("--faults".into());
            args.push(if list.is_empty() { "none".to_string() } else { list.join(",") });
        }
        if let Some(bug) = self.planted_bug {
            args.push("--plant".into());
            args.push(bug.to_string());
        }
        for (flag, value) in [("--nodes", self.nodes), ("--writers", self.writers), ("--series-per-writer", self.series_per_writer)] {
            if let Some(value) = value {
                args.push(flag.into());
                args.push(value.to_string());
            }
        }
        if self.strict_gaps {
            args.push("--strict".into());
        }
        args
    }
}

/// An oracle failure at a simulated time.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TimedViolation {
    pub at_ms: u64,
    pub oracle: String,
    pub evidence: String,
}

/// What a run came to.
#[derive(Clone, Debug)]
pub struct RunReport {
    pub options: RunOptions,
    pub config: SimConfig,
    pub schedule: Schedule,
    pub violations: Vec<TimedViolation>,
    /// Behaviour the design requires but the code does not do yet (see docs/design/simulation.md).
    pub known_gaps: Vec<String>,
    /// Faults that changed something, by what they changed.
    pub effective: BTreeMap<String, u64>,
    pub buggify_on: bool,
    /// BUGGIFY site → (reached, fired).
    pub buggify: BTreeMap<String, (u64, u64)>,
    /// A panic inside the simulation (a node bug, or a run that could not progress).
    pub panic: Option<String>,
    pub trace_hash: u64,
    pub sim_ms: u64,
    pub wall_ms: u64,
    /// Samples acknowledged (metadata scenario: metadata writes acknowledged).
    pub samples_acked: u64,
}

/// What a run came to, apart from its inputs: what a seed run in a child process sends back
/// (as one JSON line) to the sweep that started it.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RunOutcome {
    pub violations: Vec<TimedViolation>,
    pub known_gaps: Vec<String>,
    pub effective: BTreeMap<String, u64>,
    pub buggify_on: bool,
    pub buggify: BTreeMap<String, (u64, u64)>,
    pub panic: Option<String>,
    pub trace_hash: u64,
    pub sim_ms: u64,
    pub wall_ms: u64,
    pub samples_acked: u64,
}

impl RunReport {
    /// The report of a run whose outcome came from elsewhere (a child process).
    pub fn from_outcome(options: RunOptions, config: SimConfig, schedule: Schedule, outcome: RunOutcome) -> RunReport {
        let RunOutcome { violations, known_gaps, effective, buggify_on, buggify, panic, trace_hash, sim_ms, wall_ms, samples_acked } = outcome;
        RunReport { options, config, schedule, violations, known_gaps, effective, buggify_on, buggify, panic, trace_hash, sim_ms, wall_ms, samples_acked }
    }

    pub fn outcome(&self) -> RunOutcome {
        RunOutcome {
            violations: self.violations.clone(),
            known_gaps: self.known_gaps.clone(),
            effective: self.effective.clone(),
            buggify_on: self.buggify_on,
            buggify: self.buggify.clone(),
            panic: self.panic.clone(),
            trace_hash: self.trace_hash,
            sim_ms: self.sim_ms,
            wall_ms: self.wall_ms,
            samples_acked: self.samples_acked,
        }
    }

    pub fn passed(&self) -> bool {
        self.violations.is_empty() && self.panic.is_none()
    }

    /// The run's output: `seed = N` first, `trace_hash = …` last.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let seed = self.options.seed;
        let _ = writeln!(out, "seed = {seed}");
        let _ = writeln!(out, "scenario = {}", self.options.scenario);
        let _ = writeln!(out, "schedule = {}", self.schedule.to_json());
        let _ = writeln!(
            out,
            "simulated = {:.1} s, wall = {:.2} s, {} acked = {}",
            self.sim_ms as f64 / 1000.0,
            self.wall_ms as f64 / 1000.0,
            if self.options.scenario == Scenario::Metadata { "metadata writes" } else { "samples" },
            self.samples_acked
        );
        let _ = writeln!(out, "buggify = {}", if self.buggify_on { "on" } else { "off" });
        for (site, (reached, fired)) in &self.buggify {
            let _ = writeln!(out, "  buggify {site}: reached {reached}, fired {fired}");
        }
        for (what, count) in &self.effective {
            let _ = writeln!(out, "  effective {what}: {count}");
        }
        for gap in &self.known_gaps {
            let _ = writeln!(out, "KNOWN GAP (seed {seed}): {gap}");
        }
        for v in &self.violations {
            let _ = writeln!(out, "FAILED oracle {} (seed {seed}, simulated {} ms): {}", v.oracle, v.at_ms, v.evidence);
        }
        if let Some(panic) = &self.panic {
            let _ = writeln!(out, "FAILED (seed {seed}): the simulation panicked: {panic}");
        }
        if !self.passed() {
            let _ = writeln!(out, "replay: {}", self.options.replay_command());
        }
        let _ = writeln!(out, "result = {}", if self.passed() { "passed" } else { "FAILED" });
        let _ = writeln!(out, "trace_hash = {:016x}", self.trace_hash);
        out
    }
}
