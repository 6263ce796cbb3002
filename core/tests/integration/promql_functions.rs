//! Goal: every PromQL function family, and the time-boundary rules all of them rest on, give the
//! values Prometheus 3.x gives, on data small enough that each expected value is worked out by
//! hand in the row's `why`.
//!
//! Method: one fixed data set (below, times in seconds), queries run through the engine's two
//! phases (plan → fetch → evaluate), one row per case in a table, and one `check` helper per
//! query kind. Floats compare with a relative tolerance of 1e-12 (NaN equals NaN); vectors
//! compare as sets unless the row asks for an order.

use sextant_core::labels::Labels;
use sextant_core::matcher::matches_all;
use sextant_core::promql::{
    eval_instant, eval_range, parse, plan_instant, plan_range, FetchedData, FetchedSeries, QueryError, QueryLimits,
    SelectorFetch, SeriesSource, Value,
};
use sextant_core::sample::{stale_nan, Sample};

/// The data every case reads: (metric, labels, [(seconds, value)]).
type SeriesSpec = (&'static str, &'static [(&'static str, &'static str)], &'static [(f64, f64)]);

const NAN: f64 = f64::NAN;
/// Stands for a staleness marker in [`DATA`] (a real stale NaN is not a constant expression).
const STALE: f64 = f64::NEG_INFINITY;

const DATA: &[SeriesSpec] = &[
    // A counter that resets between 20 s and 30 s.
    ("reset_ctr", &[("job", "a")], &[(10.0, 10.0), (20.0, 20.0), (30.0, 5.0), (40.0, 15.0)]),
    // A counter that starts late, low: extrapolating to the window start would go below zero.
    ("zc", &[("job", "a")], &[(30.0, 2.0), (40.0, 12.0), (50.0, 22.0)]),
    // A counter growing exactly 1 per second, scraped every 10 s from 0 s.
    ("full", &[("job", "a")], &[(0.0, 0.0), (10.0, 10.0), (20.0, 20.0), (30.0, 30.0), (40.0, 40.0), (50.0, 50.0), (60.0, 60.0)]),
    ("single", &[("job", "a")], &[(50.0, 7.0)]),
    ("gauge", &[("job", "a")], &[(10.0, 5.0), (20.0, 2.0), (30.0, 8.0), (40.0, 1.0)]),
    ("flat", &[("job", "a")], &[(10.0, 1.0), (20.0, 1.0), (30.0, 2.0), (40.0, 2.0), (50.0, 1.0)]),
    // An exact line, slope 0.2 per second.
    ("lin", &[("job", "a")], &[(0.0, 1.0), (10.0, 3.0), (20.0, 5.0), (30.0, 7.0)]),
    // Not a line: least squares decides.
    ("lsq", &[("job", "a")], &[(0.0, 0.0), (10.0, 1.0), (20.0, 5.0)]),
    ("ot", &[("job", "a")], &[(10.0, 1.0), (20.0, 4.0), (30.0, 2.0), (40.0, 8.0), (50.0, 5.0)]),
    // Classic histogram, two instances: cumulative bucket counts at 10 s.
    ("hb_bucket", &[("instance", "i1"), ("le", "0.1")], &[(10.0, 10.0)]),
    ("hb_bucket", &[("instance", "i1"), ("le", "0.5")], &[(10.0, 30.0)]),
    ("hb_bucket", &[("instance", "i1"), ("le", "1")], &[(10.0, 40.0)]),
    ("hb_bucket", &[("instance", "i1"), ("le", "+Inf")], &[(10.0, 50.0)]),
    ("hb_bucket", &[("instance", "i2"), ("le", "1")], &[(10.0, 4.0)]),
    ("hb_bucket", &[("instance", "i2"), ("le", "+Inf")], &[(10.0, 4.0)]),
    // Not monotonic: the le="1" count dips below le="0.5".
    ("nonmono_bucket", &[("le", "0.1")], &[(10.0, 10.0)]),
    ("nonmono_bucket", &[("le", "0.5")], &[(10.0, 30.0)]),
    ("nonmono_bucket", &[("le", "1")], &[(10.0, 25.0)]),
    ("nonmono_bucket", &[("le", "+Inf")], &[(10.0, 50.0)]),
    // No +Inf bucket.
    ("noinf_bucket", &[("le", "0.1")], &[(10.0, 10.0)]),
    ("noinf_bucket", &[("le", "1")], &[(10.0, 20.0)]),
    // Bucket counters growing 1, 3 and 4 per second (scraped every 10 s from 0 s).
    ("rb_bucket", &[("le", "0.1")], &[(0.0, 0.0), (10.0, 10.0), (20.0, 20.0), (30.0, 30.0), (40.0, 40.0), (50.0, 50.0), (60.0, 60.0)]),
    ("rb_bucket", &[("le", "0.5")], &[(0.0, 0.0), (10.0, 30.0), (20.0, 60.0), (30.0, 90.0), (40.0, 120.0), (50.0, 150.0), (60.0, 180.0)]),
    ("rb_bucket", &[("le", "+Inf")], &[(0.0, 0.0), (10.0, 40.0), (20.0, 80.0), (30.0, 120.0), (40.0, 160.0), (50.0, 200.0), (60.0, 240.0)]),
    ("lj", &[("a", "x"), ("b", "y")], &[(10.0, 1.0)]),
    ("lj", &[("a", "z"), ("b", "y")], &[(10.0, 2.0)]),
    ("g", &[("i", "a")], &[(10.0, 3.0)]),
    ("g", &[("i", "b")], &[(10.0, 1.0)]),
    ("g", &[("i", "c")], &[(10.0, NAN)]),
    ("g", &[("i", "d")], &[(10.0, 2.0)]),
    ("nat", &[("v", "a10")], &[(10.0, 1.0)]),
    ("nat", &[("v", "a9")], &[(10.0, 2.0)]),
    ("nat", &[("v", "b1")], &[(10.0, 3.0)]),
    ("num", &[("x", "neg")], &[(10.0, -2.5)]),
    ("num", &[("x", "pos")], &[(10.0, 2.5)]),
    ("num", &[("x", "frac")], &[(10.0, 0.25)]),
    ("stale_m", &[("job", "a")], &[(0.0, 1.0), (10.0, STALE), (20.0, 2.0)]),
    ("lb", &[("job", "a")], &[(0.0, 1.0)]),
    // 2024-02-29T13:45:00Z and 2023-12-31T23:59:59Z as sample values.
    ("when", &[("d", "leap")], &[(10.0, 1_709_214_300.0)]),
    ("when", &[("d", "nye")], &[(10.0, 1_704_067_199.0)]),
];

struct Mem(Vec<FetchedSeries>);

impl SeriesSource for Mem {
    fn fetch(&self, sel: &SelectorFetch) -> Vec<FetchedSeries> {
        self.0
            .iter()
            .filter(|s| matches_all(&sel.matchers, &s.labels))
            .map(|s| FetchedSeries {
                labels: s.labels.clone(),
                samples: s.samples.iter().copied().filter(|x| x.t >= sel.min_t && x.t <= sel.max_t).collect(),
            })
            .collect()
    }
}

fn ms(seconds: f64) -> i64 {
    (seconds * 1000.0).round() as i64
}

fn data() -> Mem {
    let mut out: Vec<FetchedSeries> = Vec::new();
    for (name, labels, points) in DATA {
        let mut pairs = vec![("__name__", *name)];
        pairs.extend_from_slice(labels);
        let labels = Labels::from_pairs(&pairs);
        let samples: Vec<Sample> =
            points.iter().map(|&(t, v)| Sample::new(ms(t), if v == STALE { stale_nan() } else { v })).collect();
        out.push(FetchedSeries { labels, samples });
    }
    Mem(out)
}

fn same(a: f64, b: f64) -> bool {
    (a.is_nan() && b.is_nan()) || a == b || (a - b).abs() <= 1e-12 * a.abs().max(b.abs())
}

/// What an instant query must return.
enum Want {
    /// An instant vector, in any order: (labels in Prometheus notation, value).
    Vector(&'static [(&'static str, f64)]),
    /// An instant vector in exactly this order.
    Ordered(&'static [(&'static str, f64)]),
    Scalar(f64),
    /// An error whose message contains this text.
    Error(&'static str),
}

fn run_instant(query: &str, t_ms: i64) -> Result<Value, QueryError> {
    let limits = QueryLimits::default();
    let expr = parse(query)?;
    let plan = plan_instant(&expr, t_ms, limits.lookback_ms);
    eval_instant(&expr, t_ms, &FetchedData::fetch_all(&plan, &data()), &limits)
}

/// Runs one instant case; returns a description of the mismatch, if any.
fn check(query: &str, t_seconds: f64, want: &Want) -> Result<(), String> {
    let got = run_instant(query, ms(t_seconds));
    let (expected, ordered) = match (want, &got) {
        (Want::Error(text), Err(e)) if e.to_string().contains(text) => return Ok(()),
        (Want::Error(text), _) => return Err(format!("want an error containing {text:?}, got {got:?}")),
        (_, Err(e)) => return Err(format!("unexpected error: {e}")),
        (Want::Scalar(x), Ok(Value::Scalar { v, .. })) if same(*x, *v) => return Ok(()),
        (Want::Scalar(x), _) => return Err(format!("want scalar {x}, got {got:?}")),
        (Want::Vector(e), _) => (*e, false),
        (Want::Ordered(e), _) => (*e, true),
    };
    let Ok(Value::Vector(vec)) = &got else { return Err(format!("want a vector, got {got:?}")) };
    let mut actual: Vec<(String, f64)> = vec.iter().map(|s| (s.labels.to_string(), s.v)).collect();
    let mut expected: Vec<(String, f64)> = expected.iter().map(|(l, v)| (l.to_string(), *v)).collect();
    if !ordered {
        actual.sort_by(|a, b| a.0.cmp(&b.0));
        expected.sort_by(|a, b| a.0.cmp(&b.0));
    }
    let equal = actual.len() == expected.len()
        && actual.iter().zip(&expected).all(|(a, e)| a.0 == e.0 && same(a.1, e.1));
    if equal {
        Ok(())
    } else {
        Err(format!("want {expected:?}, got {actual:?}"))
    }
}

/// Runs one range case: `expected` is (labels, [(seconds, value)]) per series, in any order.
fn check_range(query: &str, start: f64, end: f64, step: f64, expected: &[(&str, &[(f64, f64)])]) -> Result<(), String> {
    let limits = QueryLimits::default();
    let expr = parse(query).map_err(|e| e.to_string())?;
    let (start, end, step) = (ms(start), ms(end), ms(step));
    let plan = plan_range(&expr, start, end, step, limits.lookback_ms);
    let data = FetchedData::fetch_all(&plan, &data());
    let got = eval_range(&expr, start, end, step, &data, &limits).map_err(|e| format!("unexpected error: {e}"))?;
    let mut actual: Vec<(String, Vec<(i64, f64)>)> =
        got.iter().map(|s| (s.labels.to_string(), s.samples.iter().map(|p| (p.t, p.v)).collect())).collect();
    let mut want: Vec<(String, Vec<(i64, f64)>)> =
        expected.iter().map(|(l, p)| (l.to_string(), p.iter().map(|&(t, v)| (ms(t), v)).collect())).collect();
    actual.sort_by(|a, b| a.0.cmp(&b.0));
    want.sort_by(|a, b| a.0.cmp(&b.0));
    let equal = actual.len() == want.len()
        && actual.iter().zip(&want).all(|(a, w)| {
            a.0 == w.0 && a.1.len() == w.1.len() && a.1.iter().zip(&w.1).all(|(x, y)| x.0 == y.0 && same(x.1, y.1))
        });
    if equal {
        Ok(())
    } else {
        Err(format!("want {want:?}, got {actual:?}"))
    }
}

/// Runs a table of instant cases and reports every mismatch at once.
fn run_table(cases: &[(&str, f64, Want, &str)]) {
    let failures: Vec<String> = cases
        .iter()
        .filter_map(|(query, t, want, why)| check(query, *t, want).err().map(|e| format!("{query} @ {t}s ({why}): {e}")))
        .collect();
    assert!(failures.is_empty(), "{} of {} cases failed:\n{}", failures.len(), cases.len(), failures.join("\n"));
}

// Goal: rate/irate/increase/delta/idelta with counter resets and Prometheus's extrapolation.
#[test]
fn rates_and_deltas() {
    run_table(&[
        // Window (0, 60] holds 10@10 20@20 5@30 15@40. Raw increase 15 - 10 = 5, plus 20 for the
        // reset = 25. Average spacing 10 s, threshold 11 s: the start gap (10 s) is extrapolated
        // in full, the end gap (20 s) only by half a spacing (5 s). The zero point (30 s·10/25 =
        // 12 s back) is further than 10 s, so no clamp: 25 · (30 + 10 + 5) / 30 = 37.5.
        ("increase(reset_ctr[1m])", 60.0, Want::Vector(&[("{job=\"a\"}", 37.5)]), "reset adds the pre-reset value; extrapolation"),
        ("rate(reset_ctr[1m])", 60.0, Want::Vector(&[("{job=\"a\"}", 0.625)]), "37.5 / 60 s"),
        // Window (0, 60] holds 2@30 12@40 22@50: raw 20 over 20 s. The start gap (30 s) is past the
        // threshold, so half a spacing (5 s) — but the counter reaches 0 only 20·2/20 = 2 s
        // before the first sample, so it is clamped to 2 s. End gap 10 s < 11 s: in full.
        // 20 · (20 + 2 + 10) / 20 = 32 (35 without the zero-point clamp).
        ("increase(zc[1m])", 60.0, Want::Vector(&[("{job=\"a\"}", 32.0)]), "zero-point clamp"),
        ("rate(zc[1m])", 60.0, Want::Vector(&[("{job=\"a\"}", 32.0 / 60.0)]), "32 / 60 s"),
        // Window (0, 60] holds 10@10 … 60@60: raw 50 over 50 s, start gap 10 s (the zero point is
        // also exactly 10 s back: no clamp), end gap 0: 50 · 60 / 50 = 60, i.e. 1 per second.
        ("increase(full[1m])", 60.0, Want::Vector(&[("{job=\"a\"}", 60.0)]), "a counter growing 1/s covers the window"),
        ("rate(full[1m])", 60.0, Want::Vector(&[("{job=\"a\"}", 1.0)]), "60 / 60 s"),
        ("rate(full[1m] offset 10s)", 70.0, Want::Vector(&[("{job=\"a\"}", 1.0)]), "offset moves the window back to (0, 60]"),
        ("increase(reset_ctr[1m] @ 60)", 500.0, Want::Vector(&[("{job=\"a\"}", 37.5)]), "@ pins the window to (0, 60]"),
        ("rate(single[1m])", 60.0, Want::Vector(&[]), "one sample: no rate"),
        // delta: no reset correction and no zero clamp. 1 - 5 = -4, window (0, 60], same gaps as
        // reset_ctr: -4 · (30 + 10 + 5) / 30 = -6.
        ("delta(gauge[1m])", 60.0, Want::Vector(&[("{job=\"a\"}", -6.0)]), "gauge difference, extrapolated"),
        ("idelta(gauge[1m])", 60.0, Want::Vector(&[("{job=\"a\"}", -7.0)]), "last two samples: 1 - 8"),
        ("irate(reset_ctr[1m])", 60.0, Want::Vector(&[("{job=\"a\"}", 1.0)]), "last two: (15 - 5) / 10 s"),
        // At 35 s the last two samples are 20@20 and 5@30: a reset, so the increase is the new
        // value itself.
        ("irate(reset_ctr[1m])", 35.0, Want::Vector(&[("{job=\"a\"}", 0.5)]), "reset between the last two: 5 / 10 s"),
        ("idelta(reset_ctr[1m])", 35.0, Want::Vector(&[("{job=\"a\"}", -15.0)]), "idelta never corrects resets"),
        ("irate(single[1m])", 60.0, Want::Vector(&[]), "one sample: no irate"),
    ]);
}

// Goal: deriv and predict_linear are least-squares fits; resets and changes count transitions.
#[test]
fn regression_resets_changes() {
    run_table(&[
        ("deriv(lin[1m])", 30.0, Want::Vector(&[("{job=\"a\"}", 0.2)]), "exact line 1, 3, 5, 7 every 10 s"),
        // The fit's value at t = 30 s is 7; 60 s later 7 + 0.2 · 60 = 19.
        ("predict_linear(lin[1m], 60)", 30.0, Want::Vector(&[("{job=\"a\"}", 19.0)]), "intercept at the eval time"),
        // Points (0, 0) (10, 1) (20, 5): x̄ = 10, ȳ = 2, Σ(x-x̄)(y-ȳ) = 20 + 0 + 30 = 50,
        // Σ(x-x̄)² = 200, slope 0.25.
        ("deriv(lsq[1m])", 20.0, Want::Vector(&[("{job=\"a\"}", 0.25)]), "least-squares slope"),
        // Fit at t = 20 s: ȳ + 0.25 · (20 - 10) = 4.5; plus 0.25 · 10 = 7.
        ("predict_linear(lsq[1m], 10)", 20.0, Want::Vector(&[("{job=\"a\"}", 7.0)]), "4.5 + 2.5"),
        ("deriv(single[1m])", 60.0, Want::Vector(&[]), "one sample: no slope"),
        ("resets(reset_ctr[1m])", 60.0, Want::Vector(&[("{job=\"a\"}", 1.0)]), "20 → 5 is the one decrease"),
        ("changes(reset_ctr[1m])", 60.0, Want::Vector(&[("{job=\"a\"}", 3.0)]), "10 → 20 → 5 → 15"),
        ("changes(flat[1m])", 60.0, Want::Vector(&[("{job=\"a\"}", 2.0)]), "1 1 2 2 1: two changes"),
        ("resets(flat[1m])", 60.0, Want::Vector(&[("{job=\"a\"}", 1.0)]), "2 → 1"),
        ("changes(single[1m])", 60.0, Want::Vector(&[("{job=\"a\"}", 0.0)]), "one sample: zero changes, not absent"),
    ]);
}

// Goal: each *_over_time function over the window (-10 s, 50 s] of ot = 1 4 2 8 5.
#[test]
fn over_time() {
    run_table(&[
        ("avg_over_time(ot[1m])", 50.0, Want::Vector(&[("{job=\"a\"}", 4.0)]), "20 / 5"),
        ("sum_over_time(ot[1m])", 50.0, Want::Vector(&[("{job=\"a\"}", 20.0)]), "1+4+2+8+5"),
        ("count_over_time(ot[1m])", 50.0, Want::Vector(&[("{job=\"a\"}", 5.0)]), "five samples"),
        ("min_over_time(ot[1m])", 50.0, Want::Vector(&[("{job=\"a\"}", 1.0)]), "smallest"),
        ("max_over_time(ot[1m])", 50.0, Want::Vector(&[("{job=\"a\"}", 8.0)]), "largest"),
        ("last_over_time(ot[1m])", 50.0, Want::Vector(&[("ot{job=\"a\"}", 5.0)]), "newest; keeps the metric name"),
        ("present_over_time(ot[1m])", 50.0, Want::Vector(&[("{job=\"a\"}", 1.0)]), "any sample → 1"),
        ("present_over_time(ot[1m])", 200.0, Want::Vector(&[]), "no sample in (140, 200] → nothing"),
        // Sorted 1 2 4 5 8: rank q·(n-1), linear between neighbours.
        ("quantile_over_time(0.5, ot[1m])", 50.0, Want::Vector(&[("{job=\"a\"}", 4.0)]), "rank 2 → 4"),
        ("quantile_over_time(0.25, ot[1m])", 50.0, Want::Vector(&[("{job=\"a\"}", 2.0)]), "rank 1 → 2"),
        ("quantile_over_time(0.9, ot[1m])", 50.0, Want::Vector(&[("{job=\"a\"}", 6.8)]), "rank 3.6 → 5 + 0.6·3"),
        ("quantile_over_time(2, ot[1m])", 50.0, Want::Vector(&[("{job=\"a\"}", f64::INFINITY)]), "q > 1 → +Inf"),
        ("quantile_over_time(-1, ot[1m])", 50.0, Want::Vector(&[("{job=\"a\"}", f64::NEG_INFINITY)]), "q < 0 → -Inf"),
        // Mean 4, squared deviations 9 0 4 16 1 = 30, population variance 30 / 5 = 6.
        ("stdvar_over_time(ot[1m])", 50.0, Want::Vector(&[("{job=\"a\"}", 6.0)]), "population variance"),
        ("stddev_over_time(ot[1m])", 50.0, Want::Vector(&[("{job=\"a\"}", 2.449_489_742_783_178)]), "√6"),
        // Median 4, absolute deviations 3 0 2 4 1 → median 2.
        ("mad_over_time(ot[1m])", 50.0, Want::Vector(&[("{job=\"a\"}", 2.0)]), "median absolute deviation"),
        ("sum_over_time(ot[30s])", 50.0, Want::Vector(&[("{job=\"a\"}", 15.0)]), "(20, 50] holds 2 8 5: 20 s excluded"),
    ]);
}

// Goal: histogram_quantile over classic buckets, including broken bucket sets.
#[test]
fn histogram_quantile_classic() {
    run_table(&[
        // i1 buckets 0.1:10 0.5:30 1:40 +Inf:50. q=0.5 → rank 25, in (0.1, 0.5] which holds
        // 20 observations, 15 of them below the rank: 0.1 + 0.4 · 15/20 = 0.4.
        // i2 has 4 observations all in (0, 1]: rank 2 → 0 + 1 · 2/4 = 0.5.
        (
            "histogram_quantile(0.5, hb_bucket)",
            10.0,
            Want::Vector(&[("{instance=\"i1\"}", 0.4), ("{instance=\"i2\"}", 0.5)]),
            "interpolation inside the bucket; le and the name dropped",
        ),
        ("histogram_quantile(0.05, hb_bucket{instance=\"i1\"})", 10.0, Want::Vector(&[("{instance=\"i1\"}", 0.025)]), "first bucket starts at 0: 0.1 · 2.5/10"),
        // Rank 45 is above every finite bucket (40): the answer is the highest finite bound.
        ("histogram_quantile(0.9, hb_bucket{instance=\"i1\"})", 10.0, Want::Vector(&[("{instance=\"i1\"}", 1.0)]), "rank in the +Inf bucket"),
        ("histogram_quantile(1.5, hb_bucket{instance=\"i1\"})", 10.0, Want::Vector(&[("{instance=\"i1\"}", f64::INFINITY)]), "q > 1 → +Inf"),
        ("histogram_quantile(-0.5, hb_bucket{instance=\"i1\"})", 10.0, Want::Vector(&[("{instance=\"i1\"}", f64::NEG_INFINITY)]), "q < 0 → -Inf"),
        ("histogram_quantile(NaN, hb_bucket{instance=\"i1\"})", 10.0, Want::Vector(&[("{instance=\"i1\"}", NAN)]), "q NaN → NaN"),
        // Counts 10 30 25 50 are forced monotonic to 10 30 30 50: q=0.6 → rank 30, reached at
        // the end of (0.1, 0.5]: 0.1 + 0.4 · 20/20 = 0.5.
        ("histogram_quantile(0.6, nonmono_bucket)", 10.0, Want::Vector(&[("{}", 0.5)]), "non-monotonic counts are flattened"),
        ("histogram_quantile(0.5, noinf_bucket)", 10.0, Want::Vector(&[("{}", NAN)]), "no +Inf bucket → NaN"),
        // Bucket rates 1, 3, 4 per second (each counter covers the window): rank 2 of 4 lies in
        // (0.1, 0.5] holding 2: 0.1 + 0.4 · 1/2 = 0.3.
        ("histogram_quantile(0.5, rate(rb_bucket[1m]))", 60.0, Want::Vector(&[("{}", 0.3)]), "quantile of bucket rates"),
        ("histogram_quantile(0.5, sum by (le) (rate(rb_bucket[1m])))", 60.0, Want::Vector(&[("{}", 0.3)]), "dashboard shape"),
    ]);
}

// Goal: label_replace and label_join, their results and their errors.
#[test]
fn label_functions() {
    run_table(&[
        (
            "label_replace(lj, \"c\", \"$1$1\", \"a\", \"(.)\")",
            10.0,
            Want::Vector(&[("lj{a=\"x\", b=\"y\", c=\"xx\"}", 1.0), ("lj{a=\"z\", b=\"y\", c=\"zz\"}", 2.0)]),
            "capture groups expand; the name stays",
        ),
        ("label_replace(lj, \"c\", \"v\", \"a\", \"q\")", 10.0, Want::Vector(&[("lj{a=\"x\", b=\"y\"}", 1.0), ("lj{a=\"z\", b=\"y\"}", 2.0)]), "regex must match the whole value; no match leaves the series"),
        ("label_replace(lj, \"a\", \"\", \"a\", \".*\")", 10.0, Want::Error("same labelset"), "emptying a leaves two identical label sets"),
        // Go's "\xc3\xbf" is the two UTF-8 bytes of ÿ (the parser alone would decode Ã¿).
        (r#"label_replace(lj{a="x"}, "c", "\xc3\xbf", "a", ".*")"#, 10.0, Want::Vector(&[("lj{a=\"x\", b=\"y\", c=\"ÿ\"}", 1.0)]), "string escapes are Go's bytes"),
        ("label_replace(lj, \"c\", \"$1\", \"a\", \"(.*\")", 10.0, Want::Error("invalid regular expression in label_replace(): (.*"), "bad regex"),
        ("label_replace(lj, \"\", \"v\", \"a\", \".*\")", 10.0, Want::Error("invalid destination label name in label_replace(): "), "empty destination"),
        (r#"label_replace(lj, "\xff", "", "a", "(.*)")"#, 10.0, Want::Error("invalid destination label name in label_replace()"), "destination not UTF-8"),
        (r#"label_replace(nothing, "\xff", "", "a", "(.*)")"#, 10.0, Want::Error("invalid destination label name"), "checked even with no input series"),
        (
            "label_join(lj, \"c\", \"-\", \"a\", \"b\")",
            10.0,
            Want::Vector(&[("lj{a=\"x\", b=\"y\", c=\"x-y\"}", 1.0), ("lj{a=\"z\", b=\"y\", c=\"z-y\"}", 2.0)]),
            "values joined in argument order",
        ),
        ("label_join(lj, \"c\", \"-\", \"missing\")", 10.0, Want::Vector(&[("lj{a=\"x\", b=\"y\"}", 1.0), ("lj{a=\"z\", b=\"y\"}", 2.0)]), "joining nothing sets an empty label: removed"),
        ("label_join(lj, \"\", \"-\", \"a\")", 10.0, Want::Error("invalid destination label name in label_join()"), "empty destination"),
        ("label_join(lj, \"c\", \"-\", \"\")", 10.0, Want::Error("invalid source label name in label_join()"), "empty source"),
        (r#"label_join(lj, "c", "-", "a", "\xff")"#, 10.0, Want::Error("invalid source label name in label_join()"), "source not UTF-8"),
        (r#"count_values("\xff", lj)"#, 10.0, Want::Error("invalid label name"), "count_values label not UTF-8"),
    ]);
}

// Goal: absent and absent_over_time infer their labels from equality matchers only.
#[test]
fn absent_functions() {
    run_table(&[
        ("absent(nothing{job=\"x\", instance=~\"i.*\"})", 10.0, Want::Vector(&[("{job=\"x\"}", 1.0)]), "= matchers become labels, regex ones do not"),
        ("absent(nothing{job=\"x\", job=\"y\"})", 10.0, Want::Vector(&[("{}", 1.0)]), "a label matched twice is dropped"),
        ("absent(nothing{job=\"x\", job=\"x\"})", 10.0, Want::Vector(&[("{}", 1.0)]), "even twice with the same value, as Prometheus"),
        ("absent(sum(nothing{job=\"x\"}))", 10.0, Want::Vector(&[("{}", 1.0)]), "not a selector: no labels"),
        ("absent(ot)", 50.0, Want::Vector(&[]), "present → empty"),
        ("absent(ot{job!=\"a\"})", 50.0, Want::Vector(&[("{}", 1.0)]), "!= is not an equality"),
        ("absent_over_time(ot{job=\"a\"}[1m])", 50.0, Want::Vector(&[]), "samples in the window"),
        ("absent_over_time(ot{job=\"a\"}[1m])", 200.0, Want::Vector(&[("{job=\"a\"}", 1.0)]), "no sample in (140, 200]"),
        ("absent_over_time(nothing{job=\"x\"}[1m])", 10.0, Want::Vector(&[("{job=\"x\"}", 1.0)]), "labels from the matchers"),
    ]);
}

// Goal: clamp*, the math and trigonometric functions, and round.
#[test]
fn clamp_and_math() {
    run_table(&[
        (
            "clamp(g, 1.5, 2.5)",
            10.0,
            Want::Vector(&[("{i=\"a\"}", 2.5), ("{i=\"b\"}", 1.5), ("{i=\"c\"}", NAN), ("{i=\"d\"}", 2.0)]),
            "bounded both ways; NaN stays NaN (Go's math.Max/Min)",
        ),
        ("clamp(g, 3, 1)", 10.0, Want::Vector(&[]), "min > max → empty"),
        ("clamp_min(g{i=\"c\"}, -Inf)", 10.0, Want::Vector(&[("{i=\"c\"}", NAN)]), "Go's Max(-Inf, NaN) is NaN"),
        ("clamp_min(g{i=\"c\"}, +Inf)", 10.0, Want::Vector(&[("{i=\"c\"}", f64::INFINITY)]), "but Max(+Inf, NaN) is +Inf"),
        ("clamp_max(g{i=\"c\"}, -Inf)", 10.0, Want::Vector(&[("{i=\"c\"}", f64::NEG_INFINITY)]), "and Min(-Inf, NaN) is -Inf"),
        ("clamp_min(g{i=~\"a|b\"}, 2)", 10.0, Want::Vector(&[("{i=\"a\"}", 3.0), ("{i=\"b\"}", 2.0)]), "lower bound only"),
        ("clamp_max(g{i=~\"a|b\"}, 2)", 10.0, Want::Vector(&[("{i=\"a\"}", 2.0), ("{i=\"b\"}", 1.0)]), "upper bound only"),
        ("abs(num)", 10.0, Want::Vector(&[("{x=\"neg\"}", 2.5), ("{x=\"pos\"}", 2.5), ("{x=\"frac\"}", 0.25)]), "name dropped"),
        ("ceil(num)", 10.0, Want::Vector(&[("{x=\"neg\"}", -2.0), ("{x=\"pos\"}", 3.0), ("{x=\"frac\"}", 1.0)]), "towards +Inf"),
        ("floor(num)", 10.0, Want::Vector(&[("{x=\"neg\"}", -3.0), ("{x=\"pos\"}", 2.0), ("{x=\"frac\"}", 0.0)]), "towards -Inf"),
        // Prometheus rounds half up: floor(v + 0.5).
        ("round(num)", 10.0, Want::Vector(&[("{x=\"neg\"}", -2.0), ("{x=\"pos\"}", 3.0), ("{x=\"frac\"}", 0.0)]), "half up, also for negatives"),
        ("round(num, 0.5)", 10.0, Want::Vector(&[("{x=\"neg\"}", -2.5), ("{x=\"pos\"}", 2.5), ("{x=\"frac\"}", 0.5)]), "to the nearest 0.5; 0.25 rounds up"),
        ("sgn(num)", 10.0, Want::Vector(&[("{x=\"neg\"}", -1.0), ("{x=\"pos\"}", 1.0), ("{x=\"frac\"}", 1.0)]), "sign"),
        ("sqrt(vector(16))", 0.0, Want::Vector(&[("{}", 4.0)]), "√16"),
        ("sqrt(vector(-1))", 0.0, Want::Vector(&[("{}", NAN)]), "√-1 is NaN"),
        ("exp(vector(1))", 0.0, Want::Vector(&[("{}", std::f64::consts::E)]), "e"),
        ("ln(vector(1))", 0.0, Want::Vector(&[("{}", 0.0)]), "ln 1"),
        ("ln(vector(0))", 0.0, Want::Vector(&[("{}", f64::NEG_INFINITY)]), "ln 0 = -Inf"),
        ("log2(vector(8))", 0.0, Want::Vector(&[("{}", 3.0)]), "2³"),
        ("log10(vector(1000))", 0.0, Want::Vector(&[("{}", 3.0)]), "10³"),
        ("sin(vector(pi() / 2))", 0.0, Want::Vector(&[("{}", 1.0)]), "sin π/2"),
        ("cos(vector(0))", 0.0, Want::Vector(&[("{}", 1.0)]), "cos 0"),
        ("tan(vector(0))", 0.0, Want::Vector(&[("{}", 0.0)]), "tan 0"),
        ("asin(vector(1))", 0.0, Want::Vector(&[("{}", std::f64::consts::FRAC_PI_2)]), "asin 1"),
        ("acos(vector(2))", 0.0, Want::Vector(&[("{}", NAN)]), "outside [-1, 1]"),
        ("atan(vector(1))", 0.0, Want::Vector(&[("{}", std::f64::consts::FRAC_PI_4)]), "atan 1"),
        ("sinh(vector(0))", 0.0, Want::Vector(&[("{}", 0.0)]), "sinh 0"),
        ("cosh(vector(0))", 0.0, Want::Vector(&[("{}", 1.0)]), "cosh 0"),
        ("tanh(vector(0))", 0.0, Want::Vector(&[("{}", 0.0)]), "tanh 0"),
        ("asinh(vector(0))", 0.0, Want::Vector(&[("{}", 0.0)]), "asinh 0"),
        ("acosh(vector(1))", 0.0, Want::Vector(&[("{}", 0.0)]), "acosh 1"),
        ("atanh(vector(1))", 0.0, Want::Vector(&[("{}", f64::INFINITY)]), "atanh 1 = +Inf"),
        ("deg(vector(pi()))", 0.0, Want::Vector(&[("{}", 180.0)]), "π rad = 180°"),
        ("rad(vector(180))", 0.0, Want::Vector(&[("{}", std::f64::consts::PI)]), "180° = π rad"),
        ("vector(1) atan2 vector(1)", 0.0, Want::Vector(&[("{}", std::f64::consts::FRAC_PI_4)]), "atan2 operator"),
    ]);
}

// Goal: time, timestamp, vector and scalar.
#[test]
fn time_and_conversions() {
    run_table(&[
        ("time()", 123.0, Want::Scalar(123.0), "evaluation time in seconds"),
        ("timestamp(ot)", 55.0, Want::Vector(&[("{job=\"a\"}", 50.0)]), "the sample's own time, not the eval time"),
        ("timestamp(ot offset 20s)", 55.0, Want::Vector(&[("{job=\"a\"}", 30.0)]), "offset: the older sample's time"),
        ("timestamp(ot @ 25)", 55.0, Want::Vector(&[("{job=\"a\"}", 20.0)]), "@: the sample at or before 25 s"),
        ("timestamp(abs(ot))", 55.0, Want::Vector(&[("{job=\"a\"}", 55.0)]), "not a selector: the eval time"),
        ("vector(3)", 10.0, Want::Vector(&[("{}", 3.0)]), "scalar to a one-element vector"),
        ("vector(time())", 42.0, Want::Vector(&[("{}", 42.0)]), "time as a vector"),
        ("scalar(ot)", 50.0, Want::Scalar(5.0), "one element → its value"),
        ("scalar(g)", 10.0, Want::Scalar(NAN), "four elements → NaN"),
        ("scalar(nothing)", 10.0, Want::Scalar(NAN), "none → NaN"),
    ]);
}

// Goal: sort, sort_desc and sort_by_label order results; NaN goes last either way.
#[test]
fn sorting() {
    run_table(&[
        (
            "sort(g)",
            10.0,
            Want::Ordered(&[("g{i=\"b\"}", 1.0), ("g{i=\"d\"}", 2.0), ("g{i=\"a\"}", 3.0), ("g{i=\"c\"}", NAN)]),
            "ascending, NaN last",
        ),
        (
            "sort_desc(g)",
            10.0,
            Want::Ordered(&[("g{i=\"a\"}", 3.0), ("g{i=\"d\"}", 2.0), ("g{i=\"b\"}", 1.0), ("g{i=\"c\"}", NAN)]),
            "descending, NaN last",
        ),
        (
            "sort_by_label(nat, \"v\")",
            10.0,
            Want::Ordered(&[("nat{v=\"a9\"}", 2.0), ("nat{v=\"a10\"}", 1.0), ("nat{v=\"b1\"}", 3.0)]),
            "natural order: a9 before a10",
        ),
        (
            "sort_by_label_desc(nat, \"v\")",
            10.0,
            Want::Ordered(&[("nat{v=\"b1\"}", 3.0), ("nat{v=\"a10\"}", 1.0), ("nat{v=\"a9\"}", 2.0)]),
            "natural order reversed",
        ),
    ]);
}

// Goal: the date functions, on sample values and (without arguments) on the evaluation time.
#[test]
fn date_functions() {
    run_table(&[
        // 1970-01-01 was a Thursday (0 = Sunday).
        ("day_of_week()", 0.0, Want::Vector(&[("{}", 4.0)]), "no argument: vector(time())"),
        ("hour()", 5.0 * 3600.0 + 59.0, Want::Vector(&[("{}", 5.0)]), "05:00:59"),
        ("minute()", 5.0 * 3600.0 + 59.0, Want::Vector(&[("{}", 0.0)]), "59 s is still minute 0"),
        ("year()", 0.0, Want::Vector(&[("{}", 1970.0)]), "epoch year"),
        ("days_in_month()", 40.0 * 86_400.0, Want::Vector(&[("{}", 28.0)]), "1970-02-10: February, not leap"),
        // 2024-02-29T13:45:00Z (leap day, a Thursday) and 2023-12-31T23:59:59Z (a Sunday).
        ("year(when)", 10.0, Want::Vector(&[("{d=\"leap\"}", 2024.0), ("{d=\"nye\"}", 2023.0)]), "name dropped"),
        ("month(when)", 10.0, Want::Vector(&[("{d=\"leap\"}", 2.0), ("{d=\"nye\"}", 12.0)]), "1-12"),
        ("day_of_month(when)", 10.0, Want::Vector(&[("{d=\"leap\"}", 29.0), ("{d=\"nye\"}", 31.0)]), "1-31"),
        ("day_of_year(when)", 10.0, Want::Vector(&[("{d=\"leap\"}", 60.0), ("{d=\"nye\"}", 365.0)]), "31 + 29; 2023 is not leap"),
        ("days_in_month(when)", 10.0, Want::Vector(&[("{d=\"leap\"}", 29.0), ("{d=\"nye\"}", 31.0)]), "leap February"),
        ("day_of_week(when)", 10.0, Want::Vector(&[("{d=\"leap\"}", 4.0), ("{d=\"nye\"}", 0.0)]), "Thursday, Sunday"),
        ("hour(when)", 10.0, Want::Vector(&[("{d=\"leap\"}", 13.0), ("{d=\"nye\"}", 23.0)]), "UTC hour"),
        ("minute(when)", 10.0, Want::Vector(&[("{d=\"leap\"}", 45.0), ("{d=\"nye\"}", 59.0)]), "UTC minute"),
        ("day_of_week(vector(NaN))", 10.0, Want::Vector(&[("{}", NAN)]), "NaN time → NaN"),
    ]);
}

// Goal: staleness markers end a series for instant selectors and are never samples.
#[test]
fn staleness_markers() {
    run_table(&[
        ("stale_m", 5.0, Want::Vector(&[("stale_m{job=\"a\"}", 1.0)]), "before the marker"),
        ("stale_m", 15.0, Want::Vector(&[]), "the newest sample is the marker: absent, despite 1@0 in lookback"),
        ("stale_m", 25.0, Want::Vector(&[("stale_m{job=\"a\"}", 2.0)]), "a new sample revives it"),
        ("last_over_time(stale_m[1m])", 15.0, Want::Vector(&[("stale_m{job=\"a\"}", 1.0)]), "range selectors drop markers"),
        ("count_over_time(stale_m[1m])", 30.0, Want::Vector(&[("{job=\"a\"}", 2.0)]), "the marker is not counted"),
        ("timestamp(stale_m)", 15.0, Want::Vector(&[]), "no timestamp of a stale series"),
    ]);
}

// Goal: the 5-minute lookback and range windows are left-open: a sample exactly at the lower
// bound is excluded (Prometheus 3.x).
#[test]
fn window_boundaries() {
    run_table(&[
        ("lb", 299.999, Want::Vector(&[("lb{job=\"a\"}", 1.0)]), "1 ms inside the 5 m lookback"),
        ("lb", 300.0, Want::Vector(&[]), "exactly 5 m old: excluded"),
        ("lb offset 1m", 359.999, Want::Vector(&[("lb{job=\"a\"}", 1.0)]), "lookback measured from t - offset"),
        ("lb offset 1m", 360.0, Want::Vector(&[]), "and left-open there too"),
        ("count_over_time(full[1m])", 60.0, Want::Vector(&[("{job=\"a\"}", 6.0)]), "(0, 60]: 0 s excluded, 60 s included"),
        ("count_over_time(full[1m])", 60.001, Want::Vector(&[("{job=\"a\"}", 6.0)]), "(0.001, 60.001]"),
        ("count_over_time(full[1m])", 59.999, Want::Vector(&[("{job=\"a\"}", 6.0)]), "(-0.001, 59.999]: 0 s in, 60 s out"),
        ("count_over_time(full[10s])", 20.0, Want::Vector(&[("{job=\"a\"}", 1.0)]), "(10, 20] holds only 20 s"),
    ]);
}

// Goal: subquery steps are aligned to absolute multiples of the step, inside a left-open range.
#[test]
fn subquery_alignment() {
    run_table(&[
        // (25, 55] holds the steps 30 40 50, not 25 35 45 55.
        ("count_over_time(ot[30s:10s])", 55.0, Want::Vector(&[("{job=\"a\"}", 3.0)]), "three aligned steps"),
        ("sum_over_time(ot[30s:10s])", 55.0, Want::Vector(&[("{job=\"a\"}", 15.0)]), "2@30 + 8@40 + 5@50"),
        ("count_over_time(ot[30s:10s])", 50.0, Want::Vector(&[("{job=\"a\"}", 3.0)]), "(20, 50]: 20 s excluded"),
        ("max_over_time(vector(time())[1m:20s])", 70.0, Want::Vector(&[("{}", 60.0)]), "last step is 60 s, not 70 s"),
        ("min_over_time(vector(time())[1m:20s])", 70.0, Want::Vector(&[("{}", 20.0)]), "first step after 10 s is 20 s"),
        ("max_over_time(vector(time())[1m:20s] offset 5s)", 70.0, Want::Vector(&[("{}", 60.0)]), "(5, 65]: steps 20 40 60"),
    ]);
}

// Goal: offset, @ and subqueries in range queries, step by step.
#[test]
fn range_queries_with_modifiers() {
    // (query, start s, end s, step s, expected series, why)
    type RangeCase<'a> = (&'a str, f64, f64, f64, &'a [(&'a str, &'a [(f64, f64)])], &'a str);
    let cases: &[RangeCase] = &[
        ("ot", 10.0, 50.0, 20.0, &[("ot{job=\"a\"}", &[(10.0, 1.0), (30.0, 2.0), (50.0, 5.0)])], "plain selector"),
        ("ot offset 10s", 20.0, 50.0, 10.0, &[("ot{job=\"a\"}", &[(20.0, 1.0), (30.0, 4.0), (40.0, 2.0), (50.0, 8.0)])], "each step reads 10 s earlier"),
        ("ot @ 30", 10.0, 50.0, 20.0, &[("ot{job=\"a\"}", &[(10.0, 2.0), (30.0, 2.0), (50.0, 2.0)])], "@ pins every step to 30 s"),
        ("ot @ end()", 10.0, 50.0, 20.0, &[("ot{job=\"a\"}", &[(10.0, 5.0), (30.0, 5.0), (50.0, 5.0)])], "@ end() is the range's end"),
        ("ot @ start()", 10.0, 50.0, 20.0, &[("ot{job=\"a\"}", &[(10.0, 1.0), (30.0, 1.0), (50.0, 1.0)])], "@ start() is the range's start"),
        ("ot @ 50 offset 20s", 10.0, 30.0, 20.0, &[("ot{job=\"a\"}", &[(10.0, 2.0), (30.0, 2.0)])], "@ then offset: 30 s"),
        ("rate(full[1m] @ 60)", 100.0, 200.0, 50.0, &[("{job=\"a\"}", &[(100.0, 1.0), (150.0, 1.0), (200.0, 1.0)])], "@ on a range selector"),
        ("stale_m", 0.0, 30.0, 10.0, &[("stale_m{job=\"a\"}", &[(0.0, 1.0), (20.0, 2.0), (30.0, 2.0)])], "the marker makes a gap at 10 s"),
        (
            "count_over_time(ot[30s:10s])",
            35.0,
            55.0,
            10.0,
            // At 35: steps 10 20 30 in (5, 35]; at 45: 20 30 40; at 55: 30 40 50.
            &[("{job=\"a\"}", &[(35.0, 3.0), (45.0, 3.0), (55.0, 3.0)])],
            "subquery steps align per outer step",
        ),
        (
            "max_over_time(vector(time())[20s:15s])",
            30.0,
            50.0,
            10.0,
            // (10, 30] → 15 30; (20, 40] → 30; (30, 50] → 45.
            &[("{}", &[(30.0, 30.0), (40.0, 30.0), (50.0, 45.0)])],
            "aligned steps, not the outer ones",
        ),
        ("lb", 290.0, 310.0, 10.0, &[("lb{job=\"a\"}", &[(290.0, 1.0)])], "lookback ends before 300 s"),
    ];
    let failures: Vec<String> = cases
        .iter()
        .filter_map(|(q, s, e, st, want, why)| check_range(q, *s, *e, *st, want).err().map(|m| format!("{q} ({why}): {m}")))
        .collect();
    assert!(failures.is_empty(), "{} of {} cases failed:\n{}", failures.len(), cases.len(), failures.join("\n"));
}
