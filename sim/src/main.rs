//! `sextant-sim`: the one runner. `run` replays one seed; `sweep` runs many (what `ci/sim`
//! calls). Only meaningful in the madsim build.

#[cfg(not(madsim))]
fn main() {
    eprintln!("sextant-sim needs the simulation build: RUSTFLAGS=\"--cfg madsim\" CARGO_TARGET_DIR=target/madsim cargo run --profile ci -p sextant-sim -- run --seed N --scenario S");
    std::process::exit(2);
}

#[cfg(madsim)]
fn main() {
    real::main()
}

#[cfg(madsim)]
mod real {
    use std::time::Instant;

    use clap::{Parser, Subcommand};
    use sextant_sim::config::Scenario;
    use sextant_sim::report::RunOptions;
    use sextant_sim::schedule::{FaultKind, Schedule};

    #[derive(Parser)]
    #[command(name = "sextant-sim", about = "Deterministic simulation of Sextant (madsim)")]
    struct Cli {
        #[command(subcommand)]
        command: Command,
    }

    #[derive(clap::Args, Clone)]
    struct Common {
        /// Fault kinds to draw from, comma-separated (crash, pause, eio, enospc, corrupt, slow,
        /// jump, clog; metadata: crash, pause, partition, jump; replicated: all of these and
        /// `wipe`, which is opt-in) or `none`. Default: the scenario's.
        #[arg(long, value_parser = FaultKind::parse_list)]
        faults: Option<std::collections::BTreeSet<FaultKind>>,
        /// Fail on known gaps too instead of reporting them (none at present: the last two,
        /// series limits that reset on restart and a skewed node that did not report it, are
        /// fixed).
        #[arg(long = "strict")]
        strict_gaps: bool,
        /// Plant a bug on purpose to test the oracles: ack-before-fsync,
        /// block-dir-fsync-skipped, series-limit-bypassed-on-restart, skew-unreported (ingest
        /// scenarios); raft-log-unsynced, stale-admin-read (metadata); ack-after-lease-lapsed,
        /// replication-acked-before-apply, replica-value-bit-flipped, partial-warning-dropped,
        /// series-limit-per-receiving-node (replicated); nondeterministic-iteration (any; caught
        /// by running the seed twice).
        #[arg(long)]
        plant: Option<sextant_sim::config::PlantedBug>,
        /// Sextant nodes (default 2; at most 200).
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..=200))]
        nodes: Option<u64>,
        /// Writer clients (default 3; at most 200).
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..=200))]
        writers: Option<u64>,
        /// Series per writer (default 24; at least the histogram's 6).
        #[arg(long, value_parser = clap::value_parser!(u64).range(6..=100_000))]
        series_per_writer: Option<u64>,
    }

    impl Common {
        fn apply(&self, options: &mut RunOptions) {
            options.faults = self.faults.clone();
            options.strict_gaps = self.strict_gaps;
            options.planted_bug = self.plant;
            options.nodes = self.nodes.map(|n| n as usize);
            options.writers = self.writers.map(|n| n as usize);
            options.series_per_writer = self.series_per_writer.map(|n| n as usize);
        }
    }

    #[derive(Subcommand)]
    enum Command {
        /// Runs one seed and prints its report (`seed = N` first, `trace_hash = …` last).
        Run {
            #[arg(long)]
            seed: u64,
            /// steady, crash, disk, skew, bomb, mixed, metadata or replicated. Default: the
            /// seed's rotation (the six single-node scenarios).
            #[arg(long)]
            scenario: Option<Scenario>,
            #[command(flatten)]
            common: Common,
            /// A pinned fault schedule (JSON, as printed by a run) instead of the seed's.
            #[arg(long, value_name = "FILE")]
            schedule: Option<std::path::PathBuf>,
            /// Print every trace event to stderr, and the node's logs.
            #[arg(long)]
            trace: bool,
        },
        /// Runs one seed twice in this process under madsim's determinism check (every random
        /// draw of the second run compared with the first's) and prints the trace hash, or the
        /// simulated time of the first draw that differed.
        Check {
            #[arg(long)]
            seed: u64,
            #[arg(long)]
            scenario: Option<Scenario>,
            #[command(flatten)]
            common: Common,
            /// Print both runs' trace events and node logs (RUST_LOG filters; default info) to
            /// stderr, to diff them up to the first differing draw.
            #[arg(long)]
            trace: bool,
        },
        /// Runs one seed and prints its outcome as one JSON line (what `sweep` runs in each
        /// child process).
        #[command(hide = true)]
        Outcome {
            #[arg(long)]
            seed: u64,
            #[arg(long)]
            scenario: Option<Scenario>,
            #[command(flatten)]
            common: Common,
        },
        /// Runs seeds A..B (inclusive) in parallel and prints failures and fault coverage.
        Sweep {
            /// A..B, inclusive.
            #[arg(long)]
            seeds: String,
            /// One scenario for every seed (e.g. metadata). Default: the rotation.
            #[arg(long)]
            scenario: Option<Scenario>,
            #[command(flatten)]
            common: Common,
            /// Seeds run at once. Default: the available cores.
            #[arg(long)]
            jobs: Option<usize>,
            /// Run every Nth seed twice, in two processes, and fail it unless both give one
            /// trace hash (oracle 13); 0: never.
            #[arg(long, default_value_t = sextant_sim::sweep::RECHECK_EVERY_DEFAULT)]
            recheck_every: u64,
        },
    }

    fn parse_range(text: &str) -> Result<std::ops::RangeInclusive<u64>, String> {
        let (a, b) = text.split_once("..").ok_or_else(|| format!("--seeds {text:?}: expected A..B"))?;
        let a: u64 = a.trim().parse().map_err(|e| format!("--seeds {text:?}: {e}"))?;
        let b: u64 = b.trim().trim_start_matches('=').parse().map_err(|e| format!("--seeds {text:?}: {e}"))?;
        if a > b {
            return Err(format!("--seeds {text:?}: {a} is after {b}"));
        }
        Ok(a..=b)
    }

    pub fn main() {
        let cli = Cli::parse();
        match cli.command {
            Command::Run {
                seed,
                scenario,
                common,
                schedule,
                trace,
            } => {
                println!("seed = {seed}");
                if trace {
                    let _ = tracing_subscriber::fmt()
                        .with_env_filter(tracing_subscriber::EnvFilter::new("info"))
                        .with_writer(std::io::stderr)
                        .try_init();
                }
                let mut options = RunOptions::new(seed, scenario.unwrap_or_else(|| Scenario::for_seed(seed)));
                common.apply(&mut options);
                options.verbose = trace;
                if let Some(path) = schedule {
                    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| fail(&format!("--schedule {path:?}: {e}")));
                    options.schedule = Some(Schedule::from_json(&text).unwrap_or_else(|e| fail(&format!("--schedule {path:?}: {e}"))));
                }
                let report = sextant_sim::run::run(&options);
                // `seed = N` is already printed first, even if the run dies.
                let text = report.render();
                print!("{}", text.split_once('\n').map(|(_, rest)| rest).unwrap_or(""));
                std::process::exit(if report.passed() { 0 } else { 1 });
            }
            Command::Check { seed, scenario, common, trace } => {
                if trace {
                    let _ = tracing_subscriber::fmt()
                        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")))
                        .with_writer(std::io::stderr)
                        .try_init();
                }
                let mut options = RunOptions::new(seed, scenario.unwrap_or_else(|| Scenario::for_seed(seed)));
                common.apply(&mut options);
                options.verbose = trace;
                match sextant_sim::run::check_determinism(&options) {
                    Ok(hash) => {
                        println!("seed {seed} ({}): deterministic, trace_hash = {hash:016x}", options.scenario);
                    }
                    Err(panic) => {
                        println!("seed {seed} ({}): NOT deterministic: {panic}", options.scenario);
                        std::process::exit(1);
                    }
                }
            }
            Command::Outcome { seed, scenario, common } => {
                let mut options = RunOptions::new(seed, scenario.unwrap_or_else(|| Scenario::for_seed(seed)));
                common.apply(&mut options);
                let report = sextant_sim::run::run(&options);
                let line = serde_json::to_string(&report.outcome()).unwrap_or_else(|e| fail(&format!("the outcome does not serialize: {e}")));
                println!("{line}");
            }
            Command::Sweep { seeds, scenario, common, jobs, recheck_every } => {
                let range = parse_range(&seeds).unwrap_or_else(|e| fail(&e));
                let jobs = jobs.unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1));
                let mut template = RunOptions::new(0, Scenario::Steady);
                common.apply(&mut template);
                let count = range.clone().count();
                let started = Instant::now();
                // Each seed in a child process of this binary: a sweep's seed runs exactly as
                // its replay does (docs/design/simulation.md § Determinism).
                let exe = std::env::current_exe().unwrap_or_else(|e| fail(&format!("cannot find this executable to run seeds in: {e}")));
                let summary = sextant_sim::sweep::sweep(range, scenario, &template, jobs, true, Some(&exe), recheck_every);
                print!("{}", summary.text);
                let minutes = started.elapsed().as_secs_f64() / 60.0;
                println!(
                    "{count} seeds in {:.1} s wall ({:.0} seeds/minute on {jobs} jobs)",
                    started.elapsed().as_secs_f64(),
                    count as f64 / minutes.max(1e-9)
                );
                std::process::exit(if summary.failed() == 0 { 0 } else { 1 });
            }
        }
    }

    fn fail(message: &str) -> ! {
        eprintln!("sextant-sim: {message}");
        std::process::exit(2);
    }
}
