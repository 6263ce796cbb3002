//! Goal: the engine's API contract beyond the conformance suite — what the plan asks for, that
//! limits fail cleanly with errors naming them, and that hostile queries return errors rather
//! than panicking. Method: small in-memory series sets and one `check` helper per API.

use sextant_core::labels::Labels;
use sextant_core::matcher::matches_all;
use sextant_core::promql::{
    eval_instant, eval_range, parse, plan_instant, plan_range, FetchedData, FetchedSeries, QueryError, QueryLimits,
    SelectorFetch, SeriesSource, Value,
};
use sextant_core::sample::{stale_nan, Sample};

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

fn series(name: &str, job: &str, points: &[(i64, f64)]) -> FetchedSeries {
    FetchedSeries {
        labels: Labels::from_pairs(&[("__name__", name), ("job", job)]),
        samples: points.iter().map(|&(t, v)| Sample::new(t, v)).collect(),
    }
}

fn instant(source: &Mem, query: &str, t: i64, limits: &QueryLimits) -> Result<Value, QueryError> {
    let expr = parse(query)?;
    let plan = plan_instant(&expr, t, limits.lookback_ms);
    eval_instant(&expr, t, &FetchedData::fetch_all(&plan, source), limits)
}

fn values(v: Value) -> Vec<(String, f64)> {
    match v {
        Value::Vector(vec) => vec.into_iter().map(|s| (s.labels.to_string(), s.v)).collect(),
        Value::Scalar { v, .. } => vec![(String::new(), v)],
        other => panic!("unexpected {other:?}"),
    }
}

// Goal: the plan lists each selector once with the exact inclusive range evaluation reads:
// lookback and range windows are left-open, offset and @ move them, subqueries widen them.
#[test]
fn plan_ranges() {
    let cases: &[(&str, i64, &[(i64, i64)])] = &[
        ("up", 600_000, &[(300_001, 600_000)]),
        ("rate(up[1m])", 600_000, &[(540_001, 600_000)]),
        ("up offset 1m", 600_000, &[(240_001, 540_000)]),
        ("up @ 100", 600_000, &[(-199_999, 100_000)]),
        ("up + up offset 5m", 600_000, &[(1, 600_000)]),
        // Steps at 540 s and 600 s, each with its own lookback.
        ("max_over_time(up[2m:1m])", 600_000, &[(240_001, 600_000)]),
    ];
    for (query, t, expected) in cases {
        let plan = plan_instant(&parse(query).unwrap(), *t, 300_000);
        let got: Vec<(i64, i64)> = plan.selectors.iter().map(|s| (s.min_t, s.max_t)).collect();
        assert_eq!(&got, expected, "{query}");
    }
    let plan = plan_range(&parse("up").unwrap(), 0, 3_600_000, 60_000, 300_000);
    assert_eq!((plan.selectors[0].min_t, plan.selectors[0].max_t), (-299_999, 3_600_000));
}

// Goal: a staleness marker ends a series for lookback, and is never a result.
#[test]
fn staleness_ends_lookback() {
    let src = Mem(vec![series("m", "a", &[(0, 1.0), (10_000, stale_nan()), (20_000, 2.0)])]);
    let limits = QueryLimits::default();
    assert_eq!(values(instant(&src, "m", 5_000, &limits).unwrap()).len(), 1);
    assert!(values(instant(&src, "m", 15_000, &limits).unwrap()).is_empty());
    assert_eq!(values(instant(&src, "count_over_time(m[1m])", 30_000, &limits).unwrap()), vec![("{job=\"a\"}".to_string(), 2.0)]);
}

// Goal: counter resets and extrapolation in rate(): a reset adds the pre-reset value.
#[test]
fn rate_handles_counter_reset() {
    let src = Mem(vec![series("c", "a", &[(0, 0.0), (60_000, 60.0), (120_000, 10.0), (180_000, 70.0)])]);
    // The window (-60 s, 180 s] holds all four samples; the raw increase 70 - 0 + 60 = 130 is
    // extrapolated towards the start only as far as the counter's zero point, which is t = 0.
    let got = values(instant(&src, "increase(c[4m])", 180_000, &QueryLimits::default()).unwrap());
    assert_eq!(got.len(), 1);
    assert!((got[0].1 - 130.0).abs() < 1e-9, "{got:?}");
}

// Goal: each limit fails with its own error naming it, before the node does work it cannot
// afford.
#[test]
fn limits_are_typed_errors() {
    let points: Vec<(i64, f64)> = (0..100).map(|i| (i * 1000, i as f64)).collect();
    let src = Mem(vec![series("m", "a", &points), series("m", "b", &points)]);
    let tight = QueryLimits { samples_max: 50, ..QueryLimits::default() };
    let err = instant(&src, "sum_over_time(m[5m])", 100_000, &tight).unwrap_err();
    assert_eq!(err, QueryError::TooManySamples { max: 50 });
    assert!(err.to_string().contains("samples_max"));
    let few_series = QueryLimits { series_max: 1, ..QueryLimits::default() };
    let err = instant(&src, "m", 100_000, &few_series).unwrap_err();
    assert_eq!(err, QueryError::TooManySeries { count: 2, max: 1 });
    let expr = parse("m").unwrap();
    let plan = plan_range(&expr, 0, 1_000_000_000, 1, 300_000);
    let err = eval_range(&expr, 0, 1_000_000_000, 1, &FetchedData::fetch_all(&plan, &src), &QueryLimits::default()).unwrap_err();
    assert_eq!(err, QueryError::TooManySteps { max: 11_000 });
    let subquery = QueryLimits { samples_max: 1_000, ..QueryLimits::default() };
    let err = instant(&src, "max_over_time(m[1d:1s])", 100_000, &subquery).unwrap_err();
    assert_eq!(err, QueryError::TooManySamples { max: 1_000 });
}

// Goal: hostile or malformed queries give errors, never panics.
#[test]
fn queries_of_death_fail_cleanly() {
    let src = Mem(vec![series("m", "a", &[(0, 1.0)]), series("m", "b", &[(0, 2.0)])]);
    let limits = QueryLimits::default();
    for query in [
        "m{",
        "sum(",
        "m + on(job) group_left m",
        "label_replace(m, \"x\", \"$1\", \"job\", \"(\")",
        "m * on() m",
        "topk(1e300, m)",
        "quantile(NaN, m)",
        "m[5m] @ 1e30",
        "max_over_time(m[1y:1ms])",
        "{__name__=~\".*\"}",
        "count_values(\"\", m)",
    ] {
        let result = std::panic::catch_unwind(|| instant(&src, query, 0, &limits));
        assert!(result.is_ok(), "{query} panicked");
    }
    assert!(matches!(instant(&src, "m{", 0, &limits), Err(QueryError::Parse(_))));
    let err = instant(&src, "m * on() m", 0, &limits).unwrap_err();
    assert!(err.to_string().contains("many-to-many matching not allowed"), "{err}");
}

// Goal: the annotations Prometheus 3 raises over float data come back with its exact texts,
// from the instant path and from both range-query paths (the per-step evaluation and the
// sliding-window fast path for `f(sel[r])`), and only when their condition holds.
#[test]
fn annotations() {
    use sextant_core::promql::{eval_instant_annotated, eval_range_annotated, NoInterrupt};
    let bucket = |le: &str, v: f64| FetchedSeries {
        labels: Labels::from_pairs(&[("__name__", "lat_bucket"), ("le", le)]),
        samples: vec![Sample::new(0, v), Sample::new(60_000, v)],
    };
    let source = Mem(vec![
        series("temperature", "a", &[(0, 1.0), (30_000, 2.0), (60_000, 3.0)]),
        series("requests_total", "a", &[(0, 1.0), (30_000, 2.0), (60_000, 3.0)]),
        bucket("1", 5.0),
        bucket("2", 3.0), // lower than the 1 bucket: forced monotonic
        bucket("+Inf", 9.0),
        FetchedSeries { labels: Labels::from_pairs(&[("__name__", "bad_bucket"), ("le", "x")]), samples: vec![Sample::new(60_000, 1.0)] },
    ]);
    let non_counter = "PromQL info: metric might not be a counter, name does not end in _total/_sum/_count/_bucket: \"temperature\"";
    // (query, warnings, infos)
    let cases: &[(&str, &[&str], &[&str])] = &[
        ("rate(temperature[1m])", &[], &[non_counter]),
        ("sum(rate(temperature[1m]))", &[], &[non_counter]),
        ("increase(temperature[1m])", &[], &[non_counter]),
        ("irate(temperature[1m])", &[], &[]),
        ("rate(requests_total[1m])", &[], &[]),
        ("rate(temperature[1s])", &[], &[]), // no value produced: no info
        ("quantile(1.5, temperature)", &["PromQL warning: quantile value should be between 0 and 1, got 1.5"], &[]),
        ("quantile(0.5, temperature)", &[], &[]),
        ("quantile_over_time(-1, temperature[1m])", &["PromQL warning: quantile value should be between 0 and 1, got -1"], &[]),
        ("quantile_over_time(NaN, nothing[1m])", &[], &[]), // no series: no warning, as in Prometheus
        ("histogram_quantile(NaN, nothing)", &["PromQL warning: quantile value should be between 0 and 1, got NaN"], &[]),
        (
            "histogram_quantile(0.5, lat_bucket)",
            &[],
            &["PromQL info: input to histogram_quantile needed to be fixed for monotonicity (see https://prometheus.io/docs/prometheus/latest/querying/functions/#histogram_quantile) for metric name \"lat_bucket\""],
        ),
        (
            "histogram_quantile(0.5, bad_bucket)",
            &["PromQL warning: bucket label \"le\" is missing or has a malformed value of \"x\" for metric name \"bad_bucket\""],
            &[],
        ),
        ("limit_ratio(1.1, temperature)", &["PromQL warning: ratio value should be between -1 and 1, got 1.1, capping to 1"], &[]),
        ("limit_ratio(-1e7, temperature)", &["PromQL warning: ratio value should be between -1 and 1, got -1e+07, capping to -1"], &[]),
        ("limit_ratio(0.5, temperature)", &[], &[]),
    ];
    let limits = QueryLimits::default();
    for (query, warnings, infos) in cases {
        let expr = parse(query).unwrap();
        let t = 60_000;
        let plan = plan_instant(&expr, t, limits.lookback_ms);
        let (_, got) = eval_instant_annotated(&expr, t, &FetchedData::fetch_all(&plan, &source), &limits, &NoInterrupt).unwrap();
        assert_eq!(got.warnings().collect::<Vec<_>>(), *warnings, "instant {query}");
        assert_eq!(got.infos().collect::<Vec<_>>(), *infos, "instant {query}");
        let plan = plan_range(&expr, 0, t, 30_000, limits.lookback_ms);
        let (_, got) = eval_range_annotated(&expr, 0, t, 30_000, &FetchedData::fetch_all(&plan, &source), &limits, &NoInterrupt).unwrap();
        assert_eq!(got.warnings().collect::<Vec<_>>(), *warnings, "range {query}");
        assert_eq!(got.infos().collect::<Vec<_>>(), *infos, "range {query}");
    }
}
