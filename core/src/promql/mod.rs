//! PromQL: parse, plan, evaluate — synchronously and in two phases.
//!
//! The engine never reads storage. A query runs as:
//!
//! 1. [`parse`] turns the text into an [`Expr`] (the `promql-parser` crate does the parsing; this
//!    module converts its tree into Sextant's own, with matchers as [`crate::matcher::Matcher`]
//!    and durations in milliseconds).
//! 2. [`plan_instant`] / [`plan_range`] list every selector with the exact inclusive time range
//!    `[min_t, max_t]` whose samples evaluation may read (offset, `@`, subqueries and lookback
//!    included), deduplicated by matcher set, as a [`QueryPlan`].
//! 3. The caller fetches the series for each [`SelectorFetch`] (local storage now, the cluster's
//!    fan-out later) and hands them back as [`FetchedData`].
//! 4. [`eval_instant`] / [`eval_range`] evaluate with Prometheus 3.x semantics for float samples.
//!
//! Architecture Invariant: no I/O, no clock, no hashing order reaching results; every failure is a
//! typed [`QueryError`], never a panic.

mod ast;
mod eval;
mod functions;
mod plan;

use std::collections::BTreeMap;

pub use ast::{AggOp, At, BinOp, Expr, Grouping, Matching, Selector, ValueKind};
pub use eval::{eval_instant, eval_instant_annotated, eval_instant_with, eval_range, eval_range_annotated, eval_range_with};
pub use plan::{plan_instant, plan_range};

use crate::labels::Labels;
use crate::matcher::Matcher;
use crate::sample::Sample;

/// Prometheus's default lookback delta (`--query.lookback-delta`): 5 minutes.
pub const LOOKBACK_DEFAULT_MS: i64 = 5 * 60 * 1000;
/// Step of a subquery written without one (`x[5m:]`); Prometheus uses the global evaluation
/// interval, 1 minute by default.
pub const SUBQUERY_STEP_DEFAULT_MS: i64 = 60 * 1000;

/// Why a query failed. Messages follow Prometheus's wording where Prometheus has one.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    /// The text is not valid PromQL (the parser's message is kept).
    #[error("{0}")]
    Parse(String),
    /// Valid PromQL that cannot be evaluated (Prometheus's "execution" errors).
    #[error("{0}")]
    Execution(String),
    /// Valid PromQL that Sextant does not evaluate (e.g. the `info` function).
    #[error("unsupported: {0}")]
    Unsupported(String),
    #[error("query processing would load too many samples into memory in query execution (limit samples_max={max})")]
    TooManySamples { max: usize },
    #[error("query would touch {count} series, more than the limit series_max={max}")]
    TooManySeries { count: usize, max: usize },
    #[error("exceeded maximum resolution of {max} points per timeseries (limit steps_max={max}); try decreasing the query resolution (?step=XX)")]
    TooManySteps { max: usize },
    #[error("query plan has {count} selectors, more than the limit selectors_max={max}")]
    TooManySelectors { count: usize, max: usize },
    /// The accounted memory estimate (8-byte timestamp + 8-byte value per sample held, plus
    /// label bytes per series) crossed the per-query budget.
    #[error("query would hold about {bytes} bytes of samples and labels in memory, more than the limit bytes_max={max}")]
    TooManyBytes { bytes: usize, max: usize },
    /// The caller's [`Interrupt`] reported that the query ran out of time (its message names
    /// the limit).
    #[error("{0}")]
    Timeout(String),
    /// The caller's [`Interrupt`] reported that nobody waits for the answer any more.
    #[error("{0}")]
    Canceled(String),
}

/// Bytes the memory estimate charges per sample held: an `i64` timestamp and an `f64` value.
pub const SAMPLE_BYTES: usize = 16;

/// A cooperative stop signal the evaluator polls once per step and once per batch of
/// [`INTERRUPT_SERIES_BATCH`] series. Core never reads a clock: the caller's implementation
/// does (a deadline on the node's `Clock`, a cancellation flag) and answers with the error to
/// stop with ([`QueryError::Timeout`] or [`QueryError::Canceled`]).
pub trait Interrupt {
    fn check(&self) -> Result<(), QueryError>;
}

/// Never interrupts.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoInterrupt;

impl Interrupt for NoInterrupt {
    fn check(&self) -> Result<(), QueryError> {
        Ok(())
    }
}

impl<F: Fn() -> Result<(), QueryError>> Interrupt for F {
    fn check(&self) -> Result<(), QueryError> {
        self()
    }
}

/// Series a selector walks between two polls of the [`Interrupt`].
pub const INTERRUPT_SERIES_BATCH: usize = 1024;

/// Limits one evaluation must stay within. Each exceeded limit is its own [`QueryError`] variant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueryLimits {
    /// Samples held at once: fetched samples plus points materialized by subqueries and range
    /// output (Prometheus's `--query.max-samples`, default 50 million).
    pub samples_max: usize,
    /// Series fetched across all selectors.
    pub series_max: usize,
    /// Steps of a range query (Prometheus's HTTP API refuses more than 11,000).
    pub steps_max: usize,
    /// Distinct selectors in one plan.
    pub selectors_max: usize,
    /// Accounted memory of one query: [`SAMPLE_BYTES`] per sample held (fetched, subquery
    /// points, range output) plus the label bytes of every fetched and output series.
    pub bytes_max: usize,
    /// Lookback delta for instant vector selectors.
    pub lookback_ms: i64,
    /// Step of subqueries without an explicit step.
    pub subquery_step_default_ms: i64,
}

impl Default for QueryLimits {
    fn default() -> Self {
        QueryLimits {
            samples_max: 50_000_000,
            series_max: 1_000_000,
            steps_max: 11_000,
            selectors_max: 1_000,
            bytes_max: 1 << 30,
            lookback_ms: LOOKBACK_DEFAULT_MS,
            subquery_step_default_ms: SUBQUERY_STEP_DEFAULT_MS,
        }
    }
}

/// One selector to fetch: series matching all `matchers`, samples with `min_t <= t <= max_t`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SelectorFetch {
    pub matchers: Vec<Matcher>,
    pub min_t: i64,
    pub max_t: i64,
}

/// Every fetch a query needs, one entry per distinct matcher set.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct QueryPlan {
    pub selectors: Vec<SelectorFetch>,
}

impl QueryPlan {
    /// Refuses a plan with more selectors than the limit, before anything is fetched.
    pub fn check_limits(&self, limits: &QueryLimits) -> Result<(), QueryError> {
        if self.selectors.len() > limits.selectors_max {
            return Err(QueryError::TooManySelectors { count: self.selectors.len(), max: limits.selectors_max });
        }
        Ok(())
    }
}

/// One series as the caller fetched it: samples sorted by time (staleness markers included).
#[derive(Clone, Debug, PartialEq)]
pub struct FetchedSeries {
    pub labels: Labels,
    pub samples: Vec<Sample>,
}

/// Anything that can answer a [`SelectorFetch`] synchronously (tests, a storage snapshot).
pub trait SeriesSource {
    fn fetch(&self, selector: &SelectorFetch) -> Vec<FetchedSeries>;
}

/// The fetched series for a plan, indexed by the plan's selectors.
#[derive(Clone, Debug, Default)]
pub struct FetchedData {
    by_key: BTreeMap<String, Vec<FetchedSeries>>,
}

impl FetchedData {
    /// Pairs each plan entry with its fetched series (`series[i]` answers `plan.selectors[i]`).
    /// Series are sorted by labels and their samples by time, so evaluation order is fixed.
    pub fn new(plan: &QueryPlan, series: Vec<Vec<FetchedSeries>>) -> Self {
        let mut by_key = BTreeMap::new();
        for (fetch, mut list) in plan.selectors.iter().zip(series) {
            list.sort_by(|a, b| a.labels.cmp(&b.labels));
            list.dedup_by(|a, b| a.labels == b.labels);
            for s in &mut list {
                if !s.samples.windows(2).all(|w| w[0].t < w[1].t) {
                    s.samples.sort_by_key(|x| x.t);
                    s.samples.dedup_by_key(|x| x.t);
                }
            }
            by_key.insert(matcher_key(&fetch.matchers), list);
        }
        FetchedData { by_key }
    }

    /// Runs every fetch of `plan` against `source`.
    pub fn fetch_all(plan: &QueryPlan, source: &dyn SeriesSource) -> Self {
        let series = plan.selectors.iter().map(|s| source.fetch(s)).collect();
        FetchedData::new(plan, series)
    }

    pub(crate) fn series_for(&self, matchers: &[Matcher]) -> &[FetchedSeries] {
        self.by_key.get(&matcher_key(matchers)).map(|v| v.as_slice()).unwrap_or(&[])
    }

    pub(crate) fn all(&self) -> impl Iterator<Item = &FetchedSeries> {
        self.by_key.values().flatten()
    }
}

/// Canonical identity of a matcher set (order-insensitive).
pub(crate) fn matcher_key(matchers: &[Matcher]) -> String {
    let mut parts: Vec<String> = matchers.iter().map(|m| format!("{}\u{1}{}\u{1}{}", m.name, m.op.symbol(), m.value)).collect();
    parts.sort();
    parts.dedup();
    parts.join("\u{2}")
}

/// One element of an instant vector result.
#[derive(Clone, Debug, PartialEq)]
pub struct VectorSample {
    pub labels: Labels,
    pub t: i64,
    pub v: f64,
}

/// One series of a matrix result.
#[derive(Clone, Debug, PartialEq)]
pub struct MatrixSeries {
    pub labels: Labels,
    pub samples: Vec<Sample>,
}

/// The result of an instant query.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Scalar { t: i64, v: f64 },
    String { t: i64, v: String },
    Vector(Vec<VectorSample>),
    Matrix(Vec<MatrixSeries>),
}

/// Pretty-prints a query with `promql-parser`'s formatter (Prometheus's `/api/v1/format_query`).
pub fn format_query(query: &str) -> Result<String, QueryError> {
    let parsed = promql_parser::parser::parse(query).map_err(QueryError::Parse)?;
    Ok(parsed.prettify())
}

/// Parses PromQL text into Sextant's expression tree.
pub fn parse(query: &str) -> Result<Expr, QueryError> {
    let parsed = promql_parser::parser::parse(query).map_err(QueryError::Parse)?;
    ast::convert(query, &parsed)
}

/// Most annotations of each kind a query returns; the rest are counted in one last line, as
/// Prometheus's API does.
pub const ANNOTATIONS_PER_KIND_MAX: usize = 10;

/// The warnings and infos a query raised, as Prometheus 3 reports them (`PromQL warning: …`,
/// `PromQL info: …`). Deduplicated by text and kept in sorted order, so the answer does not
/// depend on evaluation order. Prometheus's API appends the position in the query, e.g.
/// `(1:10)`; Sextant does not (promql-parser does not keep positions).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Annotations {
    warnings: std::collections::BTreeSet<String>,
    infos: std::collections::BTreeSet<String>,
}

impl Annotations {
    pub fn warn(&mut self, message: String) {
        self.warnings.insert(message);
    }

    pub fn info(&mut self, message: String) {
        self.infos.insert(message);
    }

    pub fn warnings(&self) -> impl Iterator<Item = &str> {
        self.warnings.iter().map(String::as_str)
    }

    pub fn infos(&self) -> impl Iterator<Item = &str> {
        self.infos.iter().map(String::as_str)
    }

    pub fn is_empty(&self) -> bool {
        self.warnings.is_empty() && self.infos.is_empty()
    }

    /// The lists an API response carries: at most [`ANNOTATIONS_PER_KIND_MAX`] of each, then
    /// `N more warning annotations omitted` (or `info`).
    pub fn for_response(&self) -> (Vec<String>, Vec<String>) {
        fn capped(set: &std::collections::BTreeSet<String>, kind: &str) -> Vec<String> {
            let mut out: Vec<String> = set.iter().take(ANNOTATIONS_PER_KIND_MAX).cloned().collect();
            if set.len() > ANNOTATIONS_PER_KIND_MAX {
                out.push(format!("{} more {kind} annotations omitted", set.len() - ANNOTATIONS_PER_KIND_MAX));
            }
            out
        }
        (capped(&self.warnings, "warning"), capped(&self.infos, "info"))
    }
}

/// Go's `%q` of a string: double quotes, with `"`, `\\` and control characters escaped.
pub(crate) fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Go's `%g` of a float64 with the shortest digits that round-trip: exponent form (`1e+06`,
/// `1e-05`) when the decimal exponent is below -4 or at least 6, else plain decimal.
pub(crate) fn go_fmt_g(f: f64) -> String {
    if f.is_nan() {
        return "NaN".to_string();
    }
    if f.is_infinite() {
        return if f > 0.0 { "+Inf" } else { "-Inf" }.to_string();
    }
    if f == 0.0 {
        return if f.is_sign_negative() { "-0" } else { "0" }.to_string();
    }
    // Rust's `{:e}` gives the shortest round-tripping digits, as Go's shortest formatting does.
    let sci = format!("{f:e}");
    let (mantissa, exponent) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exponent: i32 = exponent.parse().unwrap_or(0);
    // strconv.FormatFloat(f, 'g', -1, 64) decides with precision 6 when printing shortest.
    if exponent < -4 || exponent >= 6 {
        let sign = if exponent < 0 { '-' } else { '+' };
        format!("{mantissa}e{sign}{:02}", exponent.abs())
    } else {
        format!("{f}")
    }
}

#[cfg(test)]
mod go_format_tests {
    use super::*;

    #[test]
    fn go_g_formatting() {
        // Expected strings from Go's fmt.Sprintf("%g", x).
        for (x, want) in [
            (1.1, "1.1"),
            (-1.1, "-1.1"),
            (1.0, "1"),
            (-1.0, "-1"),
            (f64::NAN, "NaN"),
            (f64::INFINITY, "+Inf"),
            (f64::NEG_INFINITY, "-Inf"),
            (0.0, "0"),
            (-0.1, "-0.1"),
            (1.01, "1.01"),
            (100000.0, "100000"),
            (1000000.0, "1e+06"),
            (1234567.0, "1.234567e+06"),
            (123456.7, "123456.7"),
            (0.0001, "0.0001"),
            (0.00001, "1e-05"),
            (1.5e-300, "1.5e-300"),
            (1e21, "1e+21"),
        ] {
            assert_eq!(go_fmt_g(x), want, "{x:?}");
        }
    }

    #[test]
    fn go_quoting() {
        for (s, want) in [("a", "\"a\""), ("", "\"\""), ("Hello World", "\"Hello World\""), ("a\"b\\c\n", "\"a\\\"b\\\\c\\n\"")] {
            assert_eq!(go_quote(s), want, "{s:?}");
        }
    }
}
