//! Many seeds at once: each in its own child process (`run::run_in_child`, so a seed in a
//! sweep runs exactly as its replay does) or, without an executable, on its own fresh thread
//! and runtime (`run::run`); as many at a time as there are cores, with a progress bar; then
//! the failures and the coverage.

use std::collections::BTreeMap;
use std::sync::Mutex;

use indicatif::{ProgressBar, ProgressStyle};

use crate::config::Scenario;
use crate::report::{RunOptions, RunReport, TimedViolation};
use crate::run::{run, run_in_child};

/// A sweep runs every `RECHECK_EVERY_DEFAULT`-th seed a second time, in another process, and
/// fails it unless both runs gave one trace hash (oracle 13: the same seed replays exactly).
/// One seed in 16 costs a sweep about 6% more time.
pub const RECHECK_EVERY_DEFAULT: u64 = 16;

/// Oracle 13 on a seed run twice in two processes: a violation unless both runs gave the same
/// trace hash (which covers the event trace, every node's final disk contents and its applied
/// metadata) and the same verdict.
pub fn determinism_violation(first: &RunReport, second: &RunReport) -> Option<TimedViolation> {
    if first.panic.is_some() || second.panic.is_some() {
        return None;
    }
    let verdicts = |r: &RunReport| r.violations.iter().map(|v| v.oracle.clone()).collect::<std::collections::BTreeSet<_>>();
    if first.trace_hash == second.trace_hash && verdicts(first) == verdicts(second) {
        return None;
    }
    Some(TimedViolation {
        at_ms: first.sim_ms,
        oracle: "13-determinism".into(),
        evidence: format!(
            "seed {} gave trace_hash {:016x} ({} acked, oracles failed {:?}) and {:016x} ({} acked, {:?}) in two processes",
            first.options.seed,
            first.trace_hash,
            first.samples_acked,
            verdicts(first),
            second.trace_hash,
            second.samples_acked,
            verdicts(second)
        ),
    })
}

/// Runs `options` in a child process of `exe` and, when `recheck`, once more in another, adding
/// oracle 13's verdict to the first report.
pub fn run_checked(exe: &std::path::Path, options: &RunOptions, recheck: bool) -> RunReport {
    let mut report = run_in_child(exe, options);
    if recheck {
        let again = run_in_child(exe, options);
        report.violations.extend(determinism_violation(&report, &again));
    }
    report
}

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
/// in a child process of `child_exe` (a `sextant-sim` binary) when given, else in process. With
/// a child executable and `recheck_every` > 0, every seed divisible by it runs twice
/// ([`run_checked`], oracle 13).
pub fn sweep(seeds: std::ops::RangeInclusive<u64>, scenario: Option<Scenario>, template: &RunOptions, jobs: usize, progress: bool, child_exe: Option<&std::path::Path>, recheck_every: u64) -> SweepSummary {
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
    let rechecked_failed = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..jobs.max(1) {
            scope.spawn(|| loop {
                let Some(seed) = queue.lock().expect("queue").next() else { break };
                let mut options = template.clone();
                options.seed = seed;
                options.scenario = scenario.unwrap_or_else(|| Scenario::for_seed(seed));
                let report = match child_exe {
                    Some(exe) => run_checked(exe, &options, recheck_every > 0 && seed % recheck_every == 0),
                    None => run(&options),
                };
                if report.violations.iter().any(|v| v.oracle == "13-determinism") {
                    rechecked_failed.lock().expect("rechecked").push(seed);
                }
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
    if child_exe.is_some() && recheck_every > 0 {
        let rechecked = reports.iter().filter(|r| r.options.seed % recheck_every == 0).count();
        let differed = rechecked_failed.into_inner().expect("rechecked");
        text.push_str(&format!("determinism: {rechecked} seeds run twice in two processes (every {recheck_every}th), {} gave two trace hashes {differed:?}\n", differed.len()));
    }
    let failed = reports.iter().filter(|r| !r.passed()).count();
    text.push_str(&format!("{} passed, {} failed\n", reports.len() - failed, failed));
    SweepSummary { reports, text }
}
