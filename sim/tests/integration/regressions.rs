#![cfg(madsim)]
//! Goal: the findings pinned in sim/regressions/ stay visible. Each file holds a seed, its
//! scenario and its serialized fault schedule (a seed alone stops reproducing once the RNG
//! stream shifts). Method: replay each with its schedule; the known gap it documents must be
//! reported, and `--strict` must fail it with the named oracle. When the node is fixed, the
//! first assertion fails: turn the file into a passing regression with `check_fixed` (no gap
//! reported, and the run passes with `--strict`).

use sextant_sim::config::Scenario;
use sextant_sim::report::RunOptions;
use sextant_sim::run::run;
use sextant_sim::schedule::Schedule;

#[derive(serde::Deserialize)]
struct Pinned {
    seed: u64,
    scenario: Scenario,
    finding: String,
    schedule: Schedule,
}

fn load(file: &str) -> (Pinned, RunOptions) {
    let path = format!("{}/regressions/{file}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let pinned: Pinned = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"));
    let options = RunOptions {
        schedule: Some(pinned.schedule.clone()),
        ..RunOptions::new(pinned.seed, pinned.scenario)
    };
    (pinned, options)
}

/// A known gap: reported without `--strict`, a violation of `strict_oracle` with it.
fn check(file: &str, gap: &str, strict_oracle: &str) {
    let (pinned, options) = load(file);
    let report = run(&options);
    assert!(report.passed(), "{}", report.render());
    assert!(
        report.known_gaps.iter().any(|g| g.starts_with(gap)),
        "{file} ({}): gap {gap} no longer reported\n{}",
        pinned.finding,
        report.render()
    );
    let strict = run(&RunOptions { strict_gaps: true, ..options });
    assert!(
        strict.violations.iter().any(|v| v.oracle == strict_oracle),
        "{file}: --strict did not fail with {strict_oracle}\n{}",
        strict.render()
    );
}

/// A fixed finding: its schedule replays with no known gap and passes with `--strict`.
fn check_fixed(file: &str) {
    let (pinned, options) = load(file);
    let strict = run(&RunOptions { strict_gaps: true, ..options });
    assert!(strict.passed(), "{file} ({}): the fixed finding fails again\n{}", pinned.finding, strict.render());
    assert!(strict.known_gaps.is_empty(), "{file}: {:?}", strict.known_gaps);
}

// Fixed: the node seeds its series tracker from the head when the engine opens.
#[test]
fn limits_reset_on_restart() {
    check_fixed("limits-reset-on-restart.json");
}

#[test]
fn skew_unreported() {
    check("skew-unreported.json", "skew-unreported", "skew-reported");
}

// Fixed: a node healed from a partition answered shards promoted away from it from its stale
// copy without a warning; reads now warn unless the answering node holds a live primary lease.
#[test]
fn stale_primary_read() {
    check_fixed("stale-primary-read.json");
}

// Fixed: a node whose metadata raft member stopped on a storage error (EIO writing its vote)
// still reported ready, so it was never restarted and its shard map froze; /-/ready now says
// the member stopped and the operator restarts the node.
#[test]
fn raft_member_stopped() {
    check_fixed("raft-member-stopped.json");
}

// Seed 78 (replicated): a head cut dropped a series that a write waiting for its WAL fsync was
// about to append to; the node panicked on "append to an unknown series ref". The cut now keeps
// the series of in-flight writes.
#[test]
fn cut_drops_series_in_flight() {
    check_fixed("cut-drops-series-in-flight.json");
}
