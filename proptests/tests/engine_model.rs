//! Model-based property tests of the storage engine (`sextant_storage::engine::Engine`).
//!
//! The reference model is a `BTreeMap<(tenant, Labels), BTreeMap<t, value bits>>` plus the
//! time-acceptance rules (`AcceptanceConfig::judge`, fed the `ManualClock`'s time and the model
//! series' newest timestamp) and the duplicate rules (same t and bits: a duplicate success;
//! different bits: refused, first write wins). Random operation sequences — appends, imports,
//! clock moves, maintenance, flushes, deletions, crashes and clean restarts — go to both, and
//! every query answer must equal the model's bit for bit.
//!
//! Runs in both builds: `cargo test -p sextant-proptests` and, with
//! `RUSTFLAGS="--cfg madsim" CARGO_TARGET_DIR=target/madsim`, inside madsim's runtime.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;

use proptest::prelude::*;
use proptest::test_runner::{FileFailurePersistence, TestCaseError};
use sextant_core::clock::{Clock, ManualClock};
use sextant_core::labels::Labels;
use sextant_core::matcher::{matches_all, MatchOp, Matcher};
use sextant_core::sample::{Sample, STALE_NAN_BITS};
use sextant_core::series::{colliding_fingerprint, fingerprint};
use sextant_storage::acceptance::{AcceptanceConfig, TimeVerdict};
use sextant_storage::engine::{AppendReport, Engine, EngineConfig, WriteSeries};
use sextant_storage::fs::sim::{CrashMode, FaultConfig, SimFs};
use sextant_storage::fs::FileSystem;
use sextant_storage::wal::{FsyncPolicy, WalConfig};

// ---------------------------------------------------------------------------------------------
// Runtime
// ---------------------------------------------------------------------------------------------

/// Runs a future to completion on a fresh runtime: a current-thread tokio runtime normally, a
/// madsim runtime under `--cfg madsim`. A fresh runtime per case means no task outlives it.
fn block_on<F: Future>(future: F) -> F::Output {
    #[cfg(not(madsim))]
    {
        tokio::runtime::Builder::new_current_thread().enable_all().build().expect("build a current-thread runtime").block_on(future)
    }
    #[cfg(madsim)]
    {
        // madsim-tokio 0.2.30's `Builder::new_current_thread` and `Runtime::block_on` are
        // `unimplemented!` in the simulation, so a synchronous proptest body can enter the
        // simulated runtime only through madsim itself. Seed 0: a case replays exactly.
        madsim::runtime::Runtime::new().block_on(future)
    }
}

/// Proptest settings: `cases` unless PROPTEST_CASES overrides it.
fn config(cases: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(cases);
    ProptestConfig {
        cases,
        max_shrink_iters: 4096,
        // Integration tests have no lib.rs beside them, so name the file (relative to the
        // package root, cargo's working directory for tests).
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct("proptest-regressions/engine_model.txt"))),
        ..ProptestConfig::default()
    }
}

// ---------------------------------------------------------------------------------------------
// The series universe
// ---------------------------------------------------------------------------------------------

const TENANTS: [&str; 2] = ["alpha", "beta"];

/// Label sets; the same sets exist in both tenants (tenant isolation is part of identity).
/// Dotted names are valid under Prometheus 3.x rules.
const SERIES: [&[(&str, &str)]; 5] = [
    &[("__name__", "http.requests"), ("instance", "a")],
    &[("__name__", "http.requests"), ("instance", "b")],
    &[("__name__", "up"), ("instance", "a")],
    &[("__name__", "up"), ("instance", "b"), ("job", "node")],
    &[("__name__", "up"), ("instance", "c")],
];
const METRIC_NAMES: [&str; 2] = ["http.requests", "up"];

/// Two shards; every series lives in exactly one (the caller routes, as the node does).
const SHARDS: u32 = 2;

fn labels_of(series: usize) -> Labels {
    Labels::from_pairs(SERIES[series])
}

fn shard_of(series: usize) -> u32 {
    (series as u32) % SHARDS
}

const T0: i64 = 1_700_000_000_000;
const BLOCK_SPAN_MS: i64 = 60_000;

fn acceptance() -> AcceptanceConfig {
    AcceptanceConfig::default()
}

fn engine_config(colliding: bool) -> EngineConfig {
    EngineConfig {
        shard_ids: (0..SHARDS).collect(),
        wal: WalConfig { segment_bytes: 64 * 1024, fsync: FsyncPolicy::Always, ..WalConfig::default() },
        acceptance: acceptance(),
        block_span_ms: BLOCK_SPAN_MS,
        // Retention would delete blocks of imported far-past samples behind the model's back.
        retention_ms: None,
        retention_bytes: None,
        fingerprint_fn: if colliding { colliding_fingerprint } else { fingerprint },
        ..EngineConfig::default()
    }
}

/// Value bit patterns that storage must give back exactly.
const SPECIAL_BITS: [u64; 14] = [
    0x0000_0000_0000_0000,   // +0.0
    0x8000_0000_0000_0000,   // -0.0
    0x3ff0_0000_0000_0000,   // 1.0
    0x3ff8_0000_0000_0000,   // 1.5
    0x7ff8_0000_0000_0000,   // canonical NaN
    0x7ff8_0000_0000_0001,   // NaN with payload
    0xfff8_0000_0000_0000,   // negative NaN
    STALE_NAN_BITS,          // Prometheus staleness marker
    0x7ff0_0000_0000_0000,   // +Inf
    0xfff0_0000_0000_0000,   // -Inf
    0x0000_0000_0000_0001,   // smallest subnormal
    0x7fef_ffff_ffff_ffff,   // f64::MAX
    0x0010_0000_0000_0000,   // f64::MIN_POSITIVE
    0x4059_0000_0000_0000,   // 100.0
];

// ---------------------------------------------------------------------------------------------
// Operations
// ---------------------------------------------------------------------------------------------

/// How a sample's timestamp is chosen, resolved against the model when the operation runs (so
/// shrinking keeps the intent: "a duplicate of an existing sample" stays one).
#[derive(Clone, Debug)]
enum TimeSpec {
    /// Newer than the series' newest by this many ms.
    InOrder(i64),
    /// `now + offset`.
    NearNow(i64),
    /// Older than the newest, within the out-of-order window (index into the window).
    OooWithin(i64),
    /// Older than the newest by more than the window.
    OooBeyond(i64),
    /// An existing sample of the series again, same bits.
    Duplicate(usize),
    /// An existing sample's timestamp with different bits.
    Conflict(usize),
    /// Past the future-skew limit by this many ms.
    FarFuture(i64),
    /// Past the sample-age limit by this many ms.
    FarPast(i64),
    /// i64 extremes and other odd absolute timestamps.
    Extreme(usize),
}

const EXTREME_TIMESTAMPS: [i64; 6] = [i64::MIN, i64::MIN + 1, -1, 0, i64::MAX - 1, i64::MAX];

#[derive(Clone, Debug)]
enum ValueSpec {
    Special(usize),
    Bits(u64),
    Small(i16),
}

impl ValueSpec {
    fn bits(&self) -> u64 {
        match self {
            ValueSpec::Special(i) => SPECIAL_BITS[i % SPECIAL_BITS.len()],
            ValueSpec::Bits(b) => *b,
            ValueSpec::Small(n) => (*n as f64).to_bits(),
        }
    }
}

#[derive(Clone, Debug)]
struct WriteSpec {
    series: usize,
    samples: Vec<(TimeSpec, ValueSpec)>,
}

#[derive(Clone, Debug)]
enum DeleteSelector {
    Metric(usize),
    InstanceRegex,
    All,
    MetricExceptInstanceA(usize),
}

#[derive(Clone, Debug)]
enum Op {
    Append { tenant: usize, writes: Vec<WriteSpec> },
    Import { tenant: usize, writes: Vec<WriteSpec> },
    Advance(i64),
    /// An NTP step backwards.
    StepBack(i64),
    Maintain,
    Flush,
    Delete { tenant: usize, selector: DeleteSelector, range: Option<(i64, i64)> },
    Crash,
    Restart,
}

fn time_spec(extremes: bool) -> BoxedStrategy<TimeSpec> {
    let w = acceptance().out_of_order_window_ms;
    let base = prop_oneof![
        6 => (1i64..=90_000).prop_map(TimeSpec::InOrder),
        3 => (-3_600_000i64..=700_000).prop_map(TimeSpec::NearNow),
        4 => (0..=w).prop_map(TimeSpec::OooWithin),
        2 => (1i64..=7_200_000).prop_map(TimeSpec::OooBeyond),
        3 => any::<usize>().prop_map(TimeSpec::Duplicate),
        3 => any::<usize>().prop_map(TimeSpec::Conflict),
        1 => (1i64..=10_000_000_000).prop_map(TimeSpec::FarFuture),
        1 => (1i64..=10_000_000_000).prop_map(TimeSpec::FarPast),
    ];
    if extremes {
        prop_oneof![20 => base, 1 => (0..EXTREME_TIMESTAMPS.len()).prop_map(TimeSpec::Extreme)].boxed()
    } else {
        base.boxed()
    }
}

fn value_spec() -> impl Strategy<Value = ValueSpec> {
    prop_oneof![
        3 => (0..SPECIAL_BITS.len()).prop_map(ValueSpec::Special),
        1 => any::<u64>().prop_map(ValueSpec::Bits),
        3 => any::<i16>().prop_map(ValueSpec::Small),
    ]
}

fn writes(extremes: bool) -> impl Strategy<Value = Vec<WriteSpec>> {
    let write = (0..SERIES.len(), prop::collection::vec((time_spec(extremes), value_spec()), 1..6))
        .prop_map(|(series, samples)| WriteSpec { series, samples });
    prop::collection::vec(write, 1..5)
}

fn op(extremes: bool) -> impl Strategy<Value = Op> {
    let range = prop::option::of((-3_600_000i64..=600_000, 0i64..=1_800_000));
    let selector = prop_oneof![
        (0..METRIC_NAMES.len()).prop_map(DeleteSelector::Metric),
        Just(DeleteSelector::InstanceRegex),
        Just(DeleteSelector::All),
        (0..METRIC_NAMES.len()).prop_map(DeleteSelector::MetricExceptInstanceA),
    ];
    prop_oneof![
        10 => (0..TENANTS.len(), writes(extremes)).prop_map(|(tenant, writes)| Op::Append { tenant, writes }),
        3 => (0..TENANTS.len(), writes(extremes)).prop_map(|(tenant, writes)| Op::Import { tenant, writes }),
        5 => (0i64..=240_000).prop_map(Op::Advance),
        1 => (1i64..=600_000).prop_map(Op::StepBack),
        3 => Just(Op::Maintain),
        1 => Just(Op::Flush),
        1 => (0..TENANTS.len(), selector, range).prop_map(|(tenant, selector, range)| Op::Delete { tenant, selector, range }),
        1 => Just(Op::Crash),
        1 => Just(Op::Restart),
    ]
}

// ---------------------------------------------------------------------------------------------
// The model
// ---------------------------------------------------------------------------------------------

// A series the head forgot (dropped by a cut) and recreated judges new samples against the
// blocks too, so samples landing on timestamps its blocks hold are generated freely: this found
// the engine acknowledging a conflicting value that a block then shadowed (fixed).

/// One series in the model.
///
/// `newest` is the newest timestamp ever accepted for the series, never forgotten. The engine's
/// own "newest" (`MemSeries::newest`) equals it as long as the series stays in the head, but a
/// head cut drops a series whose samples all moved to a block (forgetting its newest), and WAL
/// replay rebuilds newest from the samples the blocks do not hold. Rather than model head
/// residency, the model tracks whether the two can differ (`newest_exact`, false after any
/// maintain, flush, crash or restart; true again once a sample newer than `newest` is accepted,
/// which both sides then take as newest) and, while they can, generates no sample whose verdict
/// depends on the difference: a sample older than `newest - window` that the age and future
/// rules do not refuse anyway is moved to exactly `newest - window`, which either newest accepts.
#[derive(Clone, Debug, Default)]
struct SeriesModel {
    samples: BTreeMap<i64, u64>,
    newest: Option<i64>,
    newest_exact: bool,
}

#[derive(Debug, Default)]
struct Model {
    series: BTreeMap<(usize, usize), SeriesModel>,
}

/// What the model predicts for one write, in the report's terms.
#[derive(Debug, Default, PartialEq, Eq)]
struct Predicted {
    accepted: u64,
    duplicates: u64,
    refused_permanent: u64,
}

impl Model {
    fn series_mut(&mut self, tenant: usize, series: usize) -> &mut SeriesModel {
        self.series.entry((tenant, series)).or_insert_with(|| SeriesModel { newest_exact: true, ..SeriesModel::default() })
    }

    fn forget_newest_exactness(&mut self) {
        for s in self.series.values_mut() {
            s.newest_exact = false;
        }
    }

    /// Resolves a timestamp spec against the series' state.
    fn resolve(&self, tenant: usize, series: usize, spec: &TimeSpec, value: &ValueSpec, now: i64, judged: bool) -> (i64, u64) {
        let acc = acceptance();
        let w = acc.out_of_order_window_ms;
        let empty = SeriesModel { newest_exact: true, ..SeriesModel::default() };
        let s = self.series.get(&(tenant, series)).unwrap_or(&empty);
        let bits = value.bits();
        let newest_or_now = s.newest.unwrap_or(now);
        // Existing samples this spec may pick: while newest is inexact, only those the window
        // admits whatever the engine's newest is.
        let pick = |i: usize| -> Option<(i64, u64)> {
            let candidates: Vec<(i64, u64)> = s
                .samples
                .iter()
                .filter(|(t, _)| !judged || s.newest_exact || s.newest.is_none_or(|n| **t >= n.saturating_sub(w)))
                .map(|(t, b)| (*t, *b))
                .collect();
            (!candidates.is_empty()).then(|| candidates[i % candidates.len()])
        };
        let (t, bits) = match spec {
            TimeSpec::InOrder(d) => (newest_or_now.saturating_add(*d), bits),
            TimeSpec::NearNow(off) => (now.saturating_add(*off), bits),
            TimeSpec::OooWithin(back) => (newest_or_now.saturating_sub(*back), bits),
            TimeSpec::OooBeyond(extra) => (newest_or_now.saturating_sub(w).saturating_sub(*extra), bits),
            TimeSpec::Duplicate(i) => pick(*i).unwrap_or((now, bits)),
            TimeSpec::Conflict(i) => match pick(*i) {
                // Flip the lowest mantissa bit: NaN stays NaN with another payload, 0 turns
                // subnormal; always different bits.
                Some((t, existing)) => (t, if existing == bits { existing ^ 1 } else { bits }),
                None => (now, bits),
            },
            TimeSpec::FarFuture(d) => (now.saturating_add(acc.future_skew_ms_max).saturating_add(*d), bits),
            TimeSpec::FarPast(d) => (now.saturating_sub(acc.sample_age_ms_max).saturating_sub(*d), bits),
            TimeSpec::Extreme(i) => (EXTREME_TIMESTAMPS[i % EXTREME_TIMESTAMPS.len()], bits),
        };
        let mut t = t;
        if judged && !s.newest_exact {
            if let Some(n) = s.newest {
                let floor = n.saturating_sub(w);
                let refused_by_clock = acc.judge(now, None, t).is_err();
                if t < floor && !refused_by_clock {
                    t = floor;
                }
            }
        }
        (t, bits)
    }

    /// Applies one sample to the model (`now` is `Some` for judged appends) and says what
    /// happened to it.
    fn apply(&mut self, tenant: usize, series: usize, t: i64, bits: u64, now: Option<i64>, predicted: &mut Predicted) {
        let s = self.series_mut(tenant, series);
        if let Some(now) = now {
            let verdict = acceptance().judge(now, s.newest, t);
            if verdict.is_err() {
                predicted.refused_permanent += 1;
                return;
            }
            debug_assert!(s.newest_exact || verdict == Ok(TimeVerdict::InOrder) || s.newest.is_some_and(|n| t >= n - acceptance().out_of_order_window_ms));
        }
        match s.samples.get(&t) {
            Some(existing) if *existing == bits => predicted.duplicates += 1,
            Some(_) => predicted.refused_permanent += 1,
            None => {
                s.samples.insert(t, bits);
                predicted.accepted += 1;
                if s.newest.is_none_or(|n| t > n) {
                    s.newest = Some(t);
                    s.newest_exact = true;
                }
            }
        }
    }

    /// The model's answer to `select`, in the engine's shape: series with samples in range,
    /// sorted by labels, samples sorted by time.
    fn select(&self, tenant: usize, matchers: &[Matcher], min_t: i64, max_t: i64) -> Vec<(Labels, Vec<(i64, u64)>)> {
        let mut out: BTreeMap<Labels, Vec<(i64, u64)>> = BTreeMap::new();
        for ((tn, series), s) in &self.series {
            if *tn != tenant {
                continue;
            }
            let labels = labels_of(*series);
            if !matches_all(matchers, &labels) {
                continue;
            }
            let samples: Vec<(i64, u64)> = s.samples.range(min_t..=max_t).map(|(t, b)| (*t, *b)).collect();
            if !samples.is_empty() {
                out.insert(labels, samples);
            }
        }
        out.into_iter().collect()
    }
}

// ---------------------------------------------------------------------------------------------
// Checking
// ---------------------------------------------------------------------------------------------

fn m(op: MatchOp, name: &str, value: &str) -> Matcher {
    Matcher::new(op, name, value).expect("valid matcher")
}

/// The selectors every check runs, per tenant.
fn selectors() -> Vec<Vec<Matcher>> {
    let mut out = vec![
        vec![m(MatchOp::RegexMatch, "__name__", ".*")],
        vec![m(MatchOp::RegexMatch, "__name__", "http\\..*"), m(MatchOp::RegexMatch, "instance", "a|c")],
        vec![m(MatchOp::RegexMatch, "__name__", ".+"), m(MatchOp::NotEqual, "instance", "a")],
        vec![m(MatchOp::Equal, "job", "node")],
    ];
    for name in METRIC_NAMES {
        out.push(vec![m(MatchOp::Equal, "__name__", name)]);
    }
    out
}

fn engine_answer(series: Vec<sextant_storage::engine::SeriesSamples>) -> Vec<(Labels, Vec<(i64, u64)>)> {
    series.into_iter().map(|s| (s.labels, s.samples.iter().map(|x| (x.t, x.v.to_bits())).collect())).collect()
}

/// Every selector over the full range and two partial ranges must answer what the model does.
async fn check_queries(engine: &Engine, model: &Model, now: i64, context: &str) -> Result<(), TestCaseError> {
    let ranges = [(i64::MIN, i64::MAX), (now - 300_000, now), (now - 1_800_000, now - 600_000)];
    for tenant in 0..TENANTS.len() {
        for matchers in selectors() {
            for (min_t, max_t) in ranges {
                let got = engine_answer(engine.select(TENANTS[tenant], &matchers, min_t, max_t).await.expect("select"));
                let want = model.select(tenant, &matchers, min_t, max_t);
                if got != want {
                    return Err(TestCaseError::fail(format!(
                        "{context}: select tenant={} {matchers:?} [{min_t}, {max_t}] differs\n engine: {got:?}\n  model: {want:?}",
                        TENANTS[tenant]
                    )));
                }
            }
        }
    }
    Ok(())
}

fn report_counts(report: &AppendReport) -> Predicted {
    Predicted { accepted: report.accepted, duplicates: report.duplicates, refused_permanent: report.refused_permanent }
}

// ---------------------------------------------------------------------------------------------
// Property 1: engine against the model, fault-free disk, crashes included
// ---------------------------------------------------------------------------------------------

async fn open(fs: &SimFs, clock: &Arc<ManualClock>, colliding: bool) -> Engine {
    let fs: Arc<dyn FileSystem> = Arc::new(fs.clone());
    let clock: Arc<dyn Clock> = clock.clone();
    Engine::open(fs, clock, engine_config(colliding)).await.expect("open engine")
}

async fn run_model(ops: Vec<Op>, colliding: bool, fs_seed: u64) -> Result<(), TestCaseError> {
    let fs = SimFs::new(fs_seed);
    fs.set_faults(FaultConfig { crash_mode: CrashMode::Torn, ..FaultConfig::default() });
    let clock = Arc::new(ManualClock::new(T0));
    let mut engine = Some(open(&fs, &clock, colliding).await);
    let mut model = Model::default();
    for (step, op) in ops.iter().enumerate() {
        let now = clock.now_wall_ms();
        let context = format!("step {step} ({op:?}) at now={now}");
        let e = engine.as_ref().expect("engine open");
        match op {
            Op::Append { tenant, writes } | Op::Import { tenant, writes } => {
                let judged = matches!(op, Op::Append { .. });
                let mut predicted = Predicted::default();
                let mut by_shard: BTreeMap<u32, Vec<WriteSeries>> = BTreeMap::new();
                // Resolve and apply in the engine's order: per shard, writes in request order,
                // samples in order. Each shard gets its own call, as the node routes them.
                //
                // A write may name one series several times (the engine must then use one ref).
                for shard in 0..SHARDS {
                    let merged: Vec<(usize, Vec<&(TimeSpec, ValueSpec)>)> = writes
                        .iter()
                        .filter(|w| shard_of(w.series) == shard)
                        .map(|w| (w.series, w.samples.iter().collect()))
                        .collect();
                    for (series, specs) in merged {
                        let mut samples = Vec::new();
                        for (time, value) in specs {
                            let (t, bits) = model.resolve(*tenant, series, time, value, now, judged);
                            model.apply(*tenant, series, t, bits, judged.then_some(now), &mut predicted);
                            samples.push(Sample::new(t, f64::from_bits(bits)));
                        }
                        by_shard.entry(shard).or_default().push(WriteSeries { labels: labels_of(series), samples });
                    }
                }
                let mut got = Predicted::default();
                for (shard, series) in by_shard {
                    let report = if judged {
                        e.append(shard, TENANTS[*tenant], series).await
                    } else {
                        e.import(shard, TENANTS[*tenant], series).await
                    }
                    .expect("write on a fault-free disk");
                    prop_assert_eq!(report.refused_retryable, 0, "{}: {:?}", context, report);
                    let counts = report_counts(&report);
                    got.accepted += counts.accepted;
                    got.duplicates += counts.duplicates;
                    got.refused_permanent += counts.refused_permanent;
                }
                prop_assert_eq!(got, predicted, "{}: report counts differ from the model's", context);
            }
            Op::Advance(ms) => clock.advance_ms(*ms as u64),
            Op::StepBack(ms) => clock.set_wall_ms(now - ms),
            Op::Maintain => {
                e.maintain().await.expect("maintain");
                model.forget_newest_exactness();
            }
            Op::Flush => {
                e.flush().await.expect("flush");
                model.forget_newest_exactness();
            }
            Op::Delete { tenant, selector, range } => {
                let matchers = match selector {
                    DeleteSelector::Metric(i) => vec![m(MatchOp::Equal, "__name__", METRIC_NAMES[*i])],
                    DeleteSelector::InstanceRegex => vec![m(MatchOp::RegexMatch, "instance", "a|b")],
                    DeleteSelector::All => vec![m(MatchOp::RegexMatch, "__name__", ".*")],
                    DeleteSelector::MetricExceptInstanceA(i) => {
                        vec![m(MatchOp::Equal, "__name__", METRIC_NAMES[*i]), m(MatchOp::NotEqual, "instance", "a")]
                    }
                };
                let (min_t, max_t) = match range {
                    Some((start, len)) => (now + start, now + start + len),
                    None => (i64::MIN, i64::MAX),
                };
                let removed_head = e.delete(TENANTS[*tenant], &matchers, min_t, max_t).await.expect("delete");
                let mut removed_model = 0u64;
                for ((tn, series), s) in model.series.iter_mut() {
                    if *tn == *tenant && matches_all(&matchers, &labels_of(*series)) {
                        let doomed: Vec<i64> = s.samples.range(min_t..=max_t).map(|(t, _)| *t).collect();
                        removed_model += doomed.len() as u64;
                        for t in doomed {
                            s.samples.remove(&t);
                        }
                    }
                }
                // The engine counts head samples only; blocks hold the rest.
                prop_assert!(removed_head <= removed_model, "{}: engine removed {} head samples, model {}", context, removed_head, removed_model);
            }
            Op::Crash => {
                // Power cut: no close, unsynced bytes torn. With fsync `always` every
                // acknowledged write survives.
                drop(engine.take());
                fs.crash();
                engine = Some(open(&fs, &clock, colliding).await);
                model.forget_newest_exactness();
                let status = engine.as_ref().expect("reopened").status().await;
                prop_assert_eq!(status.replay_samples_lost, 0, "{}: replay lost samples", context);
            }
            Op::Restart => {
                engine.take().expect("engine open").close().await.expect("close");
                engine = Some(open(&fs, &clock, colliding).await);
                model.forget_newest_exactness();
                let status = engine.as_ref().expect("reopened").status().await;
                prop_assert_eq!(status.replay_samples_lost, 0, "{}: replay lost samples", context);
            }
        }
        check_queries(engine.as_ref().expect("engine open"), &model, clock.now_wall_ms(), &context).await?;
    }
    // At the end, a crash and a final check: everything acknowledged is durable.
    drop(engine.take());
    fs.crash();
    let engine = open(&fs, &clock, colliding).await;
    check_queries(&engine, &model, clock.now_wall_ms(), "final crash and reopen").await?;
    engine.close().await.expect("close");
    Ok(())
}

proptest! {
    #![proptest_config(config(64))]

    // Goal: under any sequence of appends (in order, out of order within and beyond the window,
    // duplicates, conflicts, far-future and far-past timestamps, odd value bits), imports,
    // clock moves, maintenance (block cuts, compaction, checkpoints, WAL segment rotation),
    // flushes, deletions, crashes with torn writes and clean restarts, the engine stores
    // exactly what the model does and reports what the model predicts.
    // Method: apply each operation to the engine and to a BTreeMap model with the acceptance
    // and duplicate rules; after every operation compare every query answer bit for bit, and
    // compare each write's accepted/duplicate/refused counts.
    #[test]
    fn engine_matches_model(ops in prop::collection::vec(op(false), 1..40), colliding in any::<bool>(), fs_seed in any::<u64>()) {
        block_on(run_model(ops, colliding, fs_seed))?;
    }

    // Goal: the same, with i64-extreme timestamps (i64::MIN, i64::MAX, 0, -1) in appends and
    // imports: imports skip time judgement, so such samples reach the head, blocks and cuts.
    // Method: as above; fewer cases, since most of the space is covered there.
    #[test]
    fn engine_matches_model_extreme_timestamps(ops in prop::collection::vec(op(true), 1..30), colliding in any::<bool>(), fs_seed in any::<u64>()) {
        block_on(run_model(ops, colliding, fs_seed))?;
    }
}

// ---------------------------------------------------------------------------------------------
// Property 2: crashes with disk faults — acknowledged writes survive, nothing is invented
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Debug)]
enum FaultOp {
    /// Import `samples` fresh samples into one series (fresh timestamps, fresh values).
    Write { tenant: usize, series: usize, samples: usize },
    /// Send the last write again, as a client retrying after an error would.
    Retry,
    Maintain,
    Flush,
    CrashAndReopen,
}

fn fault_op() -> impl Strategy<Value = FaultOp> {
    prop_oneof![
        10 => (0..TENANTS.len(), 0..SERIES.len(), 1usize..20).prop_map(|(tenant, series, samples)| FaultOp::Write { tenant, series, samples }),
        2 => Just(FaultOp::Retry),
        3 => Just(FaultOp::Maintain),
        1 => Just(FaultOp::Flush),
        2 => Just(FaultOp::CrashAndReopen),
    ]
}

/// Directory fsyncs fail too. This found two engine bugs, both fixed: replay reused a series ref
/// that an alias had hidden, sending a new series' samples to an old one (regression
/// `facdf5eeb…` in proptest-regressions/engine_model.txt), and a cut whose final directory fsync
/// failed reused its block seq forever after.
const FAULTS_SYNC_DIR_EIO: bool = true;

fn sync_dir_eio_probability() -> BoxedStrategy<f64> {
    if FAULTS_SYNC_DIR_EIO {
        prop_oneof![Just(0.0), 0.0..0.1f64].boxed()
    } else {
        Just(0.0).boxed()
    }
}

fn faults() -> impl Strategy<Value = FaultConfig> {
    (
        prop_oneof![Just(0.0), 0.0..0.2f64],
        sync_dir_eio_probability(),
        prop::option::of(64 * 1024u64..1024 * 1024),
    )
        .prop_map(|(sync_eio_probability, sync_dir_eio_probability, capacity_bytes)| FaultConfig {
            sync_eio_probability,
            sync_dir_eio_probability,
            capacity_bytes,
            crash_mode: CrashMode::Torn,
            ..FaultConfig::default()
        })
}

type Store = BTreeMap<(usize, usize), BTreeMap<i64, u64>>;

/// Acknowledged ⊆ stored ⊆ attempted, bit for bit, over every series.
async fn check_acked_and_no_phantoms(engine: &Engine, acked: &Store, attempted: &Store, context: &str) -> Result<(), TestCaseError> {
    for (tenant, tenant_name) in TENANTS.iter().enumerate() {
        let all = vec![m(MatchOp::RegexMatch, "__name__", ".*")];
        let got = engine_answer(engine.select(tenant_name, &all, i64::MIN, i64::MAX).await.expect("select under faults"));
        let got: BTreeMap<Labels, Vec<(i64, u64)>> = got.into_iter().collect();
        for series in 0..SERIES.len() {
            let labels = labels_of(series);
            let stored: BTreeMap<i64, u64> = got.get(&labels).map(|v| v.iter().copied().collect()).unwrap_or_default();
            let empty = BTreeMap::new();
            let acked = acked.get(&(tenant, series)).unwrap_or(&empty);
            let attempted = attempted.get(&(tenant, series)).unwrap_or(&empty);
            for (t, bits) in acked {
                prop_assert_eq!(stored.get(t), Some(bits), "{}: acknowledged sample {}/{} t={} lost or changed", context, tenant_name, labels, t);
            }
            for (t, bits) in &stored {
                prop_assert_eq!(attempted.get(t), Some(bits), "{}: phantom sample {}/{} t={} bits={:#x}", context, tenant_name, labels, t, bits);
            }
        }
    }
    Ok(())
}

async fn run_faults(ops: Vec<FaultOp>, faults: FaultConfig, colliding: bool, fs_seed: u64) -> Result<(), TestCaseError> {
    let fs = SimFs::new(fs_seed);
    let clock = Arc::new(ManualClock::new(T0));
    let mut engine = Some(open(&fs, &clock, colliding).await);
    fs.set_faults(faults.clone());
    let mut acked: Store = BTreeMap::new();
    let mut attempted: Store = BTreeMap::new();
    let mut last: Option<(usize, usize, Vec<Sample>)> = None;
    let mut counter: i64 = 0;
    for (step, op) in ops.iter().enumerate() {
        let context = format!("step {step} ({op:?})");
        let e = engine.as_ref().expect("engine open");
        let write = match op {
            FaultOp::Write { tenant, series, samples } => {
                let samples: Vec<Sample> = (0..*samples)
                    .map(|_| {
                        counter += 1;
                        // Fresh timestamps 1 s apart and a value no other sample has; spread
                        // over several block spans so maintenance cuts.
                        Sample::new(T0 + counter * 1_000, f64::from_bits(0x4000_0000_0000_0000 | counter as u64))
                    })
                    .collect();
                last = Some((*tenant, *series, samples.clone()));
                last.clone()
            }
            FaultOp::Retry => last.clone(),
            // Maintenance may fail under faults; what it must not do is lose or invent data.
            FaultOp::Maintain => {
                if let Err(error) = e.maintain().await {
                    eprintln!("{context}: maintain failed: {error}");
                }
                None
            }
            FaultOp::Flush => {
                if let Err(error) = e.flush().await {
                    eprintln!("{context}: flush failed: {error}");
                }
                None
            }
            FaultOp::CrashAndReopen => {
                drop(engine.take());
                fs.crash();
                // Open on a healthy disk: the property is about what survived, not about
                // opening under faults.
                fs.set_faults(FaultConfig { crash_mode: CrashMode::Torn, ..FaultConfig::default() });
                let reopened = open(&fs, &clock, colliding).await;
                check_acked_and_no_phantoms(&reopened, &acked, &attempted, &context).await?;
                engine = Some(reopened);
                fs.set_faults(faults.clone());
                None
            }
        };
        if let Some((tenant, series, samples)) = write {
            let attempted_series = attempted.entry((tenant, series)).or_default();
            for s in &samples {
                attempted_series.insert(s.t, s.v.to_bits());
            }
            let e = engine.as_ref().expect("engine open");
            let n = samples.len() as u64;
            match e.import(shard_of(series), TENANTS[tenant], vec![WriteSeries { labels: labels_of(series), samples: samples.clone() }]).await {
                Ok(report) => {
                    prop_assert_eq!(report.accepted + report.duplicates, n, "{}: {:?}", context, report);
                    let acked_series = acked.entry((tenant, series)).or_default();
                    for s in &samples {
                        acked_series.insert(s.t, s.v.to_bits());
                    }
                }
                Err(_) => {}
            }
        }
        // Live reads must work after a failed maintenance step too (a failed block deletion
        // once left the engine serving blocks that were gone).
        check_acked_and_no_phantoms(engine.as_ref().expect("engine open"), &acked, &attempted, &context).await?;
    }
    drop(engine.take());
    fs.crash();
    fs.set_faults(FaultConfig { crash_mode: CrashMode::Torn, ..FaultConfig::default() });
    let engine = open(&fs, &clock, colliding).await;
    check_acked_and_no_phantoms(&engine, &acked, &attempted, "final crash and reopen").await?;
    Ok(())
}

proptest! {
    #![proptest_config(config(48))]

    // Goal: with fsync EIO, directory-fsync EIO and a full disk, every write that returned Ok
    // is readable before and after a torn-write crash, and nothing readable was never written
    // ("no phantoms": every stored sample was in some attempted write, with identical bits).
    // Method: fresh, unique samples per write (so the model needs no acceptance rules), a set of
    // acknowledged and a set of attempted samples; check both inclusions after every operation
    // and after every crash and reopen (the reopen itself runs on a healthy disk).
    #[test]
    fn faults_keep_acknowledged_and_invent_nothing(ops in prop::collection::vec(fault_op(), 1..40), faults in faults(), colliding in any::<bool>(), fs_seed in any::<u64>()) {
        block_on(run_faults(ops, faults, colliding, fs_seed))?;
    }
}
