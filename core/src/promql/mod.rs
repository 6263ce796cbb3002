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
pub use eval::{eval_instant, eval_instant_with, eval_range, eval_range_with};
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
