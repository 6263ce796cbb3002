//! Many seeds at once: each in its own child process (`run::run_in_child`, so a seed in a
//! sweep runs exactly as its replay does) or, without an executable, on its own fresh thread
//! and runtime (`run::run`); as many at a time as there are cores, with a progress bar; then
//! the failures and the coverage.

use std::collections::BTreeMap;
use std::sync::Mutex;

use indicatif::{ProgressBar, ProgressStyle};

use crate::config::Scenario;
use crate::report::{RunOptions, RunReport};
use crate::run::{run, run_in_child};

/// What `sweep` prints at the end, and whether every seed passed.
pub struct SweepSummary {
    pub reports: Vec<RunReport>,
    pub text: String,
}

impl SweepSummary {
    pub fn failed(&self) -> usize {
        self.reports.iter().filter(|r| !r.passed()).count()
    }
}

/// Runs every seed of `seeds` (scenario `None`: each seed's scenario rotates through all), each
/// in a child process of `child_exe` (a `sextant-sim` binary) when given, else in process.
pub fn sweep(seeds: std::ops::RangeInclusive<u64>, scenario: Option<Scenario>, template: &RunOptions, jobs: usize, progress: bool, child_exe: Option<&std::path::Path>) -> SweepSummary {
    let all: Vec<u64> = seeds.collect();
    let bar = if progress { ProgressBar::new(all.len() as u64) } else { ProgressBar::hidden() };
    bar.set_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:40}] {pos}/{len} seeds, {msg}")
            .expect("a valid template")
            .progress_chars("=> "),
    );
    let queue = Mutex::new(all.clone().into_iter());
    let reports = Mutex::new(Vec::new());
    let failed = Mutex::new(0usize);
    std::thread::scope(|scope| {
        for _ in 0..jobs.max(1) {
            scope.spawn(|| loop {
                let Some(seed) = queue.lock().expect("queue").next() else { break };
                let mut options = template.clone();
                options.seed = seed;
                options.scenario = scenario.unwrap_or_else(|| Scenario::for_seed(seed));
                let report = match child_exe {
                    Some(exe) => run_in_child(exe, &options),
                    None => run(&options),
                };
                if !report.passed() {
                    let mut failed = failed.lock().expect("failed");
                    *failed += 1;
                    bar.println(format!("seed {seed} ({}) FAILED: {}", options.scenario, options.replay_command()));
                }
                bar.set_message(format!("{} failed", failed.lock().expect("failed")));
                bar.inc(1);
                reports.lock().expect("reports").push(report);
            });
        }
    });
    bar.finish();
    let mut reports = reports.into_inner().expect("reports");
    reports.sort_by_key(|r| r.options.seed);
    let mut text = String::new();
    let mut effective: BTreeMap<String, u64> = BTreeMap::new();
    let mut gaps: BTreeMap<String, u64> = BTreeMap::new();
    let mut buggify: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    let (mut sim_ms, mut wall_ms) = (0u64, 0u64);
    for report in &reports {
        for (what, n) in &report.effective {
            *effective.entry(what.clone()).or_default() += n;
        }
        for gap in &report.known_gaps {
            let kind = gap.split(':').next().unwrap_or(gap).to_string();
            *gaps.entry(kind).or_default() += 1;
        }
        for (site, (reached, fired)) in &report.buggify {
            let entry = buggify.entry(site.clone()).or_default();
            entry.0 += reached;
            entry.1 += fired;
        }
        sim_ms += report.sim_ms;
        wall_ms += report.wall_ms;
        if !report.passed() {
            text.push_str(&report.render());
            text.push('\n');
        }
    }
    for report in reports.iter().filter(|r| !r.passed()) {
        text.push_str(&format!("replay seed {}: {}\n", report.options.seed, report.options.replay_command()));
    }
    text.push_str("effective faults (summed over seeds):\n");
    for (what, n) in &effective {
        text.push_str(&format!("  {what}: {n}\n"));
    }
    if buggify.is_empty() {
        text.push_str("buggify: no site was reached (no BUGGIFY sites in the node code yet)\n");
    }
    for (site, (reached, fired)) in &buggify {
        text.push_str(&format!("  buggify {site}: reached {reached}, fired {fired}\n"));
    }
    for (gap, n) in &gaps {
        text.push_str(&format!("known gap {gap}: in {n} seeds\n"));
    }
    text.push_str(&format!(
        "simulated {:.0} s in {:.1} s of seed wall time ({:.0}x)\n",
        sim_ms as f64 / 1000.0,
        wall_ms as f64 / 1000.0,
        sim_ms as f64 / wall_ms.max(1) as f64
    ));
    let failed = reports.iter().filter(|r| !r.passed()).count();
    text.push_str(&format!("{} passed, {} failed\n", reports.len() - failed, failed));
    SweepSummary { reports, text }
}
