#![cfg(madsim)]
//! Goal: the harness catches each family of real bug (SIMULATION.md: "the harness is tested
//! too"). Method: plant one bug (`sextant-sim run --plant NAME`) and run CI's normal seeds from
//! seed 1 — the ingest rotation (seed N runs scenario N mod 6) for bugs of one node, the
//! `replicated` scenario for bugs of the cluster; the oracle that guards against the bug must
//! fail within 100 seeds, and each failing seed must pass without the bug (the oracle points at
//! the bug, not at noise). A seed may fail earlier on a consequence of the bug that another
//! oracle sees (listed per bug); that seed counts only if it passes without the bug, and the
//! search goes on. Any other oracle is a failure of the test.
//!
//! Each seed runs in a child process (`run_in_child`, as `ci/sim` sweeps do), so a seed here is
//! exactly its `sextant-sim run --seed N … --plant NAME` replay: run in this process after
//! other seeds, a replicated seed schedules differently (tokio's per-thread RNG is seeded from
//! a process-wide counter, docs/design/simulation.md § Determinism), and which seed catches a
//! bug would change with any unrelated change to the seeds before it.

use sextant_sim::config::{PlantedBug, Scenario};
use sextant_sim::report::RunOptions;
use sextant_sim::run::run_in_child;

/// Which seeds a planted bug runs on.
#[derive(Clone, Copy)]
enum Seeds {
    /// The ingest scenarios' rotation (`Scenario::for_seed`).
    IngestMix,
    /// The `replicated` scenario.
    Replicated,
}

impl Seeds {
    fn scenario(self, seed: u64) -> Scenario {
        match self {
            Seeds::IngestMix => Scenario::for_seed(seed),
            Seeds::Replicated => Scenario::Replicated,
        }
    }
}

const SEEDS_MAX: u64 = 100;

/// Runs seeds 1..=SEEDS_MAX with `bug` planted until one fails by an oracle in `catching`;
/// returns that seed. `consequences`: oracles that may fail a seed on the way.
fn caught_at(bug: PlantedBug, seeds: Seeds, catching: &[&str], consequences: &[&str]) -> u64 {
    let exe = std::path::Path::new(env!("CARGO_BIN_EXE_sextant-sim"));
    let mut failing = Vec::new();
    for seed in 1..=SEEDS_MAX {
        let options = RunOptions {
            planted_bug: Some(bug),
            ..RunOptions::new(seed, seeds.scenario(seed))
        };
        let report = run_in_child(exe, &options);
        assert!(report.panic.is_none(), "{bug} at seed {seed}: the run did not finish:\n{}", report.render());
        if report.passed() {
            continue;
        }
        let unrelated: Vec<&str> = report.violations.iter().map(|v| v.oracle.as_str()).filter(|o| !catching.contains(o) && !consequences.contains(o)).collect();
        assert!(unrelated.is_empty(), "{bug} at seed {seed} was caught by unrelated oracles {unrelated:?}:\n{}", report.render());
        let clean = run_in_child(exe, &RunOptions::new(seed, seeds.scenario(seed)));
        assert!(clean.passed(), "seed {seed} fails without {bug} too:\n{}", clean.render());
        failing.push(seed);
        if report.violations.iter().any(|v| catching.contains(&v.oracle.as_str())) {
            eprintln!("{bug} caught by {catching:?} at seed {seed} (failing seeds: {failing:?})");
            return seed;
        }
    }
    panic!("{bug} was not caught by {catching:?} in {SEEDS_MAX} seeds (seeds failed by its consequences only: {failing:?})");
}

// Acknowledge before fsync (the WAL's `interval` policy where `always` is promised): acked
// samples die with the power.
#[test]
fn ack_before_fsync_is_caught() {
    caught_at(PlantedBug::AckBeforeFsync, Seeds::IngestMix, &["1-acked-durability"], &[]);
}

// Skipped directory fsync after a block's rename: a power cut undoes the rename after the WAL
// was truncated past the block.
#[test]
fn block_dir_fsync_skipped_is_caught() {
    caught_at(PlantedBug::BlockDirFsyncSkipped, Seeds::IngestMix, &["1-acked-durability"], &["10-query"]);
}

// A cardinality limit bypassed on one path (the restart path: the tracker starts empty).
#[test]
fn series_limit_bypassed_on_restart_is_caught() {
    caught_at(PlantedBug::SeriesLimitBypassedOnRestart, Seeds::IngestMix, &["9-limits"], &[]);
}

// A cardinality limit counted per receiving node instead of per shard: the bomb, sent to each
// node in turn, stores a limit per node.
#[test]
fn series_limit_per_receiving_node_is_caught() {
    caught_at(PlantedBug::SeriesLimitPerReceivingNode, Seeds::Replicated, &["9-limits"], &[]);
}

// Split brain on data: a primary acknowledges after its lease lapsed. A stale primary's
// acknowledgements that do not overlap the new primary's show as acked samples missing from
// reads or wrong answers first.
#[test]
fn ack_after_lease_lapsed_is_caught() {
    caught_at(PlantedBug::AckAfterLeaseLapsed, Seeds::Replicated, &["8-no-split-brain"], &["1-acked-durability", "10-query"]);
}

// The secondary acknowledges a batch (and records its position durably) before applying it.
#[test]
fn replication_acked_before_apply_is_caught() {
    caught_at(PlantedBug::ReplicationAckedBeforeApply, Seeds::Replicated, &["6-replica-convergence"], &["1-acked-durability", "10-query"]);
}

// A flipped value bit on replica apply.
#[test]
fn replica_value_bit_flipped_is_caught() {
    caught_at(PlantedBug::ReplicaValueBitFlipped, Seeds::Replicated, &["6-replica-convergence", "3-no-phantoms"], &["1-acked-durability", "10-query"]);
}

// A partial answer without its warning.
#[test]
fn partial_warning_dropped_is_caught() {
    caught_at(PlantedBug::PartialWarningDropped, Seeds::Replicated, &["10-query", "1-acked-durability"], &[]);
}

// A nondeterministic iteration reaching disk (a write's new series logged in the order of a
// map keyed by heap addresses). Every other oracle passes; oracle 13 catches it where CI's
// sweep runs a seed twice in two processes (every RECHECK_EVERY_DEFAULT-th seed), so only those
// seeds of the ingest mix can catch it here too.
#[test]
fn nondeterministic_iteration_is_caught() {
    use sextant_sim::sweep::{run_checked, RECHECK_EVERY_DEFAULT};
    let exe = std::path::Path::new(env!("CARGO_BIN_EXE_sextant-sim"));
    let bug = PlantedBug::NondeterministicIteration;
    for seed in (1..=SEEDS_MAX).filter(|s| s % RECHECK_EVERY_DEFAULT == 0) {
        let options = RunOptions {
            planted_bug: Some(bug),
            ..RunOptions::new(seed, Seeds::IngestMix.scenario(seed))
        };
        let report = run_checked(exe, &options, true);
        assert!(report.panic.is_none(), "{bug} at seed {seed}: the run did not finish:\n{}", report.render());
        if report.passed() {
            continue;
        }
        let oracles: Vec<&str> = report.violations.iter().map(|v| v.oracle.as_str()).collect();
        assert!(oracles.iter().all(|o| *o == "13-determinism"), "{bug} at seed {seed} was caught by other oracles {oracles:?}:\n{}", report.render());
        let clean = run_checked(exe, &RunOptions::new(seed, Seeds::IngestMix.scenario(seed)), true);
        assert!(clean.passed(), "seed {seed} is not deterministic without {bug} either:\n{}", clean.render());
        eprintln!("{bug} caught by oracle 13 at seed {seed}");
        return;
    }
    panic!("{bug} was not caught by oracle 13 in {SEEDS_MAX} seeds");
}

// A skewed clock left unreported: the node ignores its clock check, so a node far behind its
// clients answers /-/ready 200 while refusing every current sample.
#[test]
fn skew_unreported_is_caught() {
    caught_at(PlantedBug::SkewUnreported, Seeds::IngestMix, &["skew-reported"], &[]);
}
