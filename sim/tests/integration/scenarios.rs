#![cfg(madsim)]
//! Goal: every scenario passes its oracles on a few seeds, through the same runner
//! `sextant-sim run` and `ci/sim` use. Method: `run::run` per (scenario, seed); a failure
//! prints the run's report (seed, schedule, evidence, replay command).

use sextant_sim::config::Scenario;
use sextant_sim::report::RunOptions;
use sextant_sim::run::run;

fn check(scenario: Scenario, seeds: std::ops::RangeInclusive<u64>) {
    let mut effective_total = 0u64;
    for seed in seeds {
        let report = run(&RunOptions::new(seed, scenario));
        assert!(report.passed(), "{}", report.render());
        // A node skewed behind past the acceptance bound refuses every current sample.
        let healthy_nodes = report.schedule.node_skew_ms.iter().filter(|skew| **skew >= -report.config.future_skew_ms_max).count();
        if healthy_nodes > 0 {
            assert!(report.samples_acked > 500, "seed {seed}: only {} samples acked\n{}", report.samples_acked, report.render());
        }
        effective_total += report.effective.iter().filter(|(what, _)| !what.starts_with("node:")).map(|(_, n)| n).sum::<u64>();
    }
    if scenario != Scenario::Steady {
        assert!(effective_total > 0, "{scenario}: no fault was effective in any seed");
    }
}

#[test]
fn steady() {
    check(Scenario::Steady, 1..=2);
}

#[test]
fn crash() {
    check(Scenario::Crash, 1..=4);
}

#[test]
fn disk() {
    check(Scenario::Disk, 1..=4);
}

#[test]
fn skew() {
    check(Scenario::Skew, 1..=4);
}

#[test]
fn bomb() {
    check(Scenario::Bomb, 1..=3);
}

#[test]
fn mixed() {
    check(Scenario::Mixed, 1..=4);
}

#[test]
fn replicated() {
    check(Scenario::Replicated, 1..=3);
}
