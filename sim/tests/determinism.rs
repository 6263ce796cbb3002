#![cfg(madsim)]
//! Goal: a run is a function of its inputs. Method: run seeds twice (each on a fresh thread
//! and runtime) and compare trace hashes; compare hashes across seeds; replay a run from its
//! serialized schedule.

use std::collections::BTreeMap;

use sextant_sim::config::Scenario;
use sextant_sim::report::RunOptions;
use sextant_sim::run::run;
use sextant_sim::schedule::Schedule;

#[test]
fn same_seed_same_trace_hash() {
    for (seed, scenario) in [(3, Scenario::Mixed), (8, Scenario::Crash), (11, Scenario::Disk)] {
        let first = run(&RunOptions::new(seed, scenario));
        let second = run(&RunOptions::new(seed, scenario));
        assert!(first.passed(), "{}", first.render());
        assert_eq!(first.trace_hash, second.trace_hash, "seed {seed} ({scenario}) gave two hashes");
        assert_eq!(first.samples_acked, second.samples_acked, "seed {seed}");
        assert_eq!(first.effective, second.effective, "seed {seed}");
    }
}

#[test]
fn different_seeds_different_trace_hashes() {
    let mut seen: BTreeMap<u64, u64> = BTreeMap::new();
    for seed in 1..=8 {
        let report = run(&RunOptions::new(seed, Scenario::Steady));
        if let Some(other) = seen.insert(report.trace_hash, seed) {
            panic!("seeds {other} and {seed} gave the same trace hash {:016x}", report.trace_hash);
        }
    }
}

#[test]
fn a_pinned_schedule_replays_the_run() {
    let options = RunOptions::new(5, Scenario::Mixed);
    let original = run(&options);
    let pinned = Schedule::from_json(&original.schedule.to_json()).expect("the printed schedule parses");
    let replay = run(&RunOptions { schedule: Some(pinned), ..options });
    assert_eq!(original.trace_hash, replay.trace_hash);
}
