#![cfg(madsim)]
//! Goal: the findings pinned in sim/regressions/ stay visible. Each file holds a seed, its
//! scenario and its serialized fault schedule (a seed alone stops reproducing once the RNG
//! stream shifts). Method: replay each with its schedule; every finding pinned here is fixed,
//! so each must replay with no known gap and pass with `--strict` (`check_fixed`). (A finding
//! pinned while still open would assert that its known gap is reported and that `--strict`
//! fails it with its oracle, until the fix turns it into `check_fixed`.)

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

// Fixed: a restarted node counts the series cut into blocks within the tracker's idle window,
// not only the head's (the bomb's one-sample series had been cut; the primary admitted another
// share after a restart).
#[test]
fn limits_forget_blocks_on_restart() {
    check_fixed("limits-forget-blocks-on-restart.json");
}

// Fixed: a failed shard write keeps its new series counted (they may be stored).
#[test]
fn limits_uncounted_after_failed_write() {
    check_fixed("limits-uncounted-after-failed-write.json");
}

// Fixed: a node whose clock is behind most of its recent clients past the bound reports
// itself not ready, naming its clock (clockcheck.rs).
#[test]
fn skew_unreported() {
    check_fixed("skew-unreported.json");
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
