//! The Prometheus HTTP query API (`/api/v1/query`, `query_range`, `series`, `labels`,
//! `label/<name>/values`, `metadata`, `status/buildinfo`, `rules`, `alerts`, `format_query`,
//! `query_exemplars`), with Prometheus's JSON shapes and error format. docs/design/http-api.md
//! lists every endpoint, parameter, limit and error.
//!
//! A query runs as: parse and check the parameters (400 `bad_data`) → wait for a slot in the
//! node's [`QueryScheduler`] by priority class (503 `unavailable` when shed) → plan → fetch each
//! selector from every shard of the cluster ([`crate::route::select`]: this node's
//! [`Engine::select_bounded`] for its shards, the other primaries by gRPC), which stops at the
//! query's series, samples and memory budget instead of loading everything first (422
//! `execution`; the budget spans the fan-out) and names unreadable shards in `warnings` → evaluate off the async
//! runtime's worker threads (`spawn_blocking`; inline under madsim), polling a deadline on the
//! node's `Clock` and a cancellation flag per step and per batch of series (503 `timeout`,
//! 499 `canceled`) → JSON.
//!
//! Responses are written by hand rather than through serde: Prometheus writes timestamps as
//! seconds with exactly the milliseconds after the point (`1.5` is `1.500`) and sample values as
//! strings in Go's `strconv.FormatFloat(v, 'f', -1, 64)` form, which a float serializer would
//! not reproduce.

// Helpers return the ready-made error `Response` on the cold path.
#![allow(clippy::result_large_err)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use sextant_core::clock::Clock;
use sextant_core::labels::Labels;
use sextant_core::matcher::{MatchOp, Matcher};
use sextant_core::promql::{self, Expr, FetchedData, FetchedSeries, Interrupt, MatrixSeries, QueryError, QueryLimits, Value, ValueKind, VectorSample};
use sextant_storage::engine::{Engine, SelectBudget, SelectError};

use crate::auth::Role;
use crate::node::Node;
use crate::query_scheduler::{Priority, Shed};

/// Largest form body a query request may carry (the query text and its parameters).
pub const QUERY_BODY_BYTES_MAX: usize = 1 << 20;
/// Prometheus's API refuses range queries with more than this many steps after the first.
pub const RANGE_POINTS_MAX: i64 = 11_000;
/// The header that sets a query's priority class (the `priority` parameter does too).
pub const PRIORITY_HEADER: &str = "x-sextant-query-priority";
/// The warning Prometheus adds when `limit` cut a result short.
pub const TRUNCATED_WARNING: &str = "results truncated due to limit";
/// The API level reported by `/api/v1/status/buildinfo`: Grafana reads `version` to decide
/// which Prometheus features to use, and Sextant serves the 3.x query API.
pub const PROMETHEUS_API_VERSION: &str = "3.0.0";

// ---------------------------------------------------------------------------------------------
// Errors and envelopes.

/// Prometheus's error classes (`errorType`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    BadData,
    Execution,
    Timeout,
    Canceled,
    Internal,
    Unavailable,
    NotFound,
}

impl ErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::BadData => "bad_data",
            ErrorKind::Execution => "execution",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Canceled => "canceled",
            ErrorKind::Internal => "internal",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::NotFound => "not_found",
        }
    }

    /// Prometheus's HTTP status for the class (499 is its "client closed connection").
    pub fn status(self) -> u16 {
        match self {
            ErrorKind::BadData => 400,
            ErrorKind::Execution => 422,
            ErrorKind::Timeout | ErrorKind::Unavailable => 503,
            ErrorKind::Canceled => 499,
            ErrorKind::Internal => 500,
            ErrorKind::NotFound => 404,
        }
    }
}

/// An API error: class and message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiError {
    pub kind: ErrorKind,
    pub message: String,
}

impl ApiError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        ApiError { kind, message: message.into() }
    }

    fn bad_param(name: &str, message: impl std::fmt::Display) -> Self {
        ApiError::new(ErrorKind::BadData, format!("invalid parameter {name:?}: {message}"))
    }

    pub fn into_response(self) -> Response {
        let body = format!("{{\"status\":\"error\",\"errorType\":{},\"error\":{}}}", json_string(self.kind.as_str()), json_string(&self.message));
        json_response(self.kind.status(), body)
    }
}

impl From<Shed> for ApiError {
    fn from(shed: Shed) -> Self {
        ApiError::new(ErrorKind::Unavailable, shed.to_string())
    }
}

fn query_error(error: QueryError) -> ApiError {
    match error {
        QueryError::Parse(message) => ApiError::bad_param("query", message),
        QueryError::Timeout(message) => ApiError::new(ErrorKind::Timeout, message),
        QueryError::Canceled(message) => ApiError::new(ErrorKind::Canceled, message),
        // Limits and evaluation failures are Prometheus's "execution" errors (422).
        other => ApiError::new(ErrorKind::Execution, other.to_string()),
    }
}

fn select_error(error: SelectError) -> ApiError {
    match error {
        SelectError::Engine(error) => ApiError::new(if error.is_retryable() { ErrorKind::Unavailable } else { ErrorKind::Internal }, format!("reading storage: {error}")),
        limit => ApiError::new(ErrorKind::Execution, limit.to_string()),
    }
}

fn json_response(status: u16, body: String) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, [(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], body).into_response()
}

/// `{"status":"success","data":…}` with `warnings` and `infos` when there are any.
fn success(data: String, warnings: &[String], infos: &[String]) -> Response {
    let mut body = format!("{{\"status\":\"success\",\"data\":{data}");
    for (name, list) in [("warnings", warnings), ("infos", infos)] {
        if !list.is_empty() {
            body.push_str(&format!(",\"{name}\":["));
            body.push_str(&list.iter().map(|w| json_string(w)).collect::<Vec<_>>().join(","));
            body.push(']');
        }
    }
    body.push('}');
    json_response(200, body)
}

fn respond(result: Result<Response, ApiError>) -> Response {
    result.unwrap_or_else(ApiError::into_response)
}

// ---------------------------------------------------------------------------------------------
// JSON encoding, as Prometheus writes it.

pub fn json_string(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

/// Seconds with the milliseconds after the point, three digits, omitted when zero (Prometheus's
/// `jsonutil.MarshalTimestamp`): 1500 → `1.5` is written `1.500`, 2000 → `2`.
pub fn format_timestamp(t_ms: i64) -> String {
    let sign = if t_ms < 0 { "-" } else { "" };
    let abs = t_ms.unsigned_abs();
    let (seconds, millis) = (abs / 1000, abs % 1000);
    if millis == 0 {
        format!("{sign}{seconds}")
    } else {
        format!("{sign}{seconds}.{millis:03}")
    }
}

/// A sample value as Prometheus's API writes it (`util/jsonutil.MarshalFloat`): Go's
/// `strconv.FormatFloat(v, 'f', -1, 64)`, the shortest decimal that reads back to the same
/// float, except in exponent form (`'e'`: `2.01e-07`, `1e+21`) when `|v| < 1e-6` or
/// `|v| >= 1e21`; `NaN`, `+Inf`, `-Inf`. Rust's `Display` and `LowerExp` for `f64` give the
/// same shortest digits; Go's exponent carries a sign and at least two digits.
/// (ci/e2e-compare.py found the exponent form against Prometheus 2.42.)
pub fn format_value(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v == f64::INFINITY {
        "+Inf".into()
    } else if v == f64::NEG_INFINITY {
        "-Inf".into()
    } else if v != 0.0 && (v.abs() < 1e-6 || v.abs() >= 1e21) {
        let text = format!("{v:e}");
        let (mantissa, exponent) = text.split_once('e').expect("LowerExp writes an exponent");
        let (sign, digits) = match exponent.strip_prefix('-') {
            Some(digits) => ('-', digits),
            None => ('+', exponent),
        };
        format!("{mantissa}e{sign}{digits:0>2}")
    } else {
        format!("{v}")
    }
}

fn labels_json(labels: &Labels) -> String {
    let fields: Vec<String> = labels.iter().map(|l| format!("{}:{}", json_string(&l.name), json_string(&l.value))).collect();
    format!("{{{}}}", fields.join(","))
}

fn point_json(t_ms: i64, v: f64) -> String {
    format!("[{},\"{}\"]", format_timestamp(t_ms), format_value(v))
}

fn vector_json(vector: &[VectorSample]) -> String {
    let items: Vec<String> = vector.iter().map(|s| format!("{{\"metric\":{},\"value\":{}}}", labels_json(&s.labels), point_json(s.t, s.v))).collect();
    format!("[{}]", items.join(","))
}

fn matrix_json(matrix: &[MatrixSeries]) -> String {
    let items: Vec<String> = matrix
        .iter()
        .map(|s| {
            let points: Vec<String> = s.samples.iter().map(|p| point_json(p.t, p.v)).collect();
            format!("{{\"metric\":{},\"values\":[{}]}}", labels_json(&s.labels), points.join(","))
        })
        .collect();
    format!("[{}]", items.join(","))
}

fn value_json(value: &Value) -> String {
    let (kind, result) = match value {
        Value::Scalar { t, v } => ("scalar", point_json(*t, *v)),
        Value::String { t, v } => ("string", format!("[{},{}]", format_timestamp(*t), json_string(v))),
        Value::Vector(vector) => ("vector", vector_json(vector)),
        Value::Matrix(matrix) => ("matrix", matrix_json(matrix)),
    };
    format!("{{\"resultType\":\"{kind}\",\"result\":{result}}}")
}

// ---------------------------------------------------------------------------------------------
// Parameters.

/// The request's parameters: the URL query string, then (for a form POST) the body, in order,
/// as Go's `Request.ParseForm` merges them.
#[derive(Clone, Debug, Default)]
pub struct Params {
    pairs: Vec<(String, String)>,
}

impl Params {
    pub fn parse(query: Option<&str>, form_body: Option<&[u8]>) -> Params {
        let mut pairs = Vec::new();
        // A POST body's values come first in Go's merged form.
        if let Some(body) = form_body {
            pairs.extend(form_urlencoded::parse(body).map(|(k, v)| (k.into_owned(), v.into_owned())));
        }
        if let Some(query) = query {
            pairs.extend(form_urlencoded::parse(query.as_bytes()).map(|(k, v)| (k.into_owned(), v.into_owned())));
        }
        Params { pairs }
    }

    /// The first value of `name`, if given and not empty.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.pairs.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str()).filter(|v| !v.is_empty())
    }

    pub fn all(&self, name: &str) -> Vec<&str> {
        self.pairs.iter().filter(|(k, _)| k == name).map(|(_, v)| v.as_str()).collect()
    }
}

async fn read_params(method: &Method, headers: &HeaderMap, uri: &Uri, body: Body) -> Result<Params, ApiError> {
    let is_form = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(';').next().unwrap_or("").trim().eq_ignore_ascii_case("application/x-www-form-urlencoded"));
    let form_body = if *method == Method::POST && is_form {
        let bytes = axum::body::to_bytes(body, QUERY_BODY_BYTES_MAX)
            .await
            .map_err(|e| ApiError::new(ErrorKind::BadData, format!("error parsing form body of at most {QUERY_BODY_BYTES_MAX} bytes: {e}")))?;
        Some(bytes)
    } else {
        None
    };
    Ok(Params::parse(uri.query(), form_body.as_deref()))
}

/// Prometheus's `parseTime`: float Unix seconds (millisecond precision) or RFC3339.
pub fn parse_time_ms(text: &str) -> Result<i64, String> {
    let text = text.trim();
    if let Ok(seconds) = text.parse::<f64>() {
        // ±9.2e15 s is where milliseconds stop fitting an i64.
        if !seconds.is_finite() || seconds.abs() > 9.2e15 {
            return Err(format!("cannot parse {text:?} to a valid timestamp"));
        }
        let whole = seconds.trunc();
        let millis = ((seconds - whole) * 1000.0).round();
        return Ok(whole as i64 * 1000 + millis as i64);
    }
    parse_rfc3339_ms(text).ok_or_else(|| format!("cannot parse {text:?} to a valid timestamp"))
}

/// `YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)`, truncated to milliseconds.
fn parse_rfc3339_ms(text: &str) -> Option<i64> {
    let b = text.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || (b[10] != b'T' && b[10] != b't') || b[13] != b':' || b[16] != b':' {
        return None;
    }
    let num = |range: std::ops::Range<usize>| -> Option<i64> {
        let s = text.get(range)?;
        if !s.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        s.parse().ok()
    };
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month) || hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let mut rest = &text[19..];
    let mut millis = 0i64;
    if let Some(fraction) = rest.strip_prefix('.') {
        let digits = fraction.bytes().take_while(|c| c.is_ascii_digit()).count();
        if digits == 0 {
            return None;
        }
        let first3 = format!("{:0<3}", &fraction[..digits.min(3)]);
        millis = first3.parse().ok()?;
        rest = &fraction[digits..];
    }
    let offset_minutes = match rest {
        "Z" | "z" => 0,
        _ => {
            let ob = rest.as_bytes();
            if ob.len() != 6 || (ob[0] != b'+' && ob[0] != b'-') || ob[3] != b':' {
                return None;
            }
            let (oh, om) = (rest[1..3].parse::<i64>().ok()?, rest[4..6].parse::<i64>().ok()?);
            if oh > 23 || om > 59 {
                return None;
            }
            let minutes = oh * 60 + om;
            if ob[0] == b'-' {
                -minutes
            } else {
                minutes
            }
        }
    };
    let days = days_from_civil(year, month, day);
    let seconds = days * 86_400 + hour * 3_600 + minute * 60 + second - offset_minutes * 60;
    Some(seconds * 1000 + millis)
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        _ => 28,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Prometheus's `parseDuration`: float seconds or a Prometheus duration (`5m`, `1h30m`), in
/// milliseconds (sub-millisecond parts are dropped, as Prometheus's step is).
pub fn parse_duration_param_ms(text: &str) -> Result<i64, String> {
    let text = text.trim();
    if let Ok(seconds) = text.parse::<f64>() {
        if !seconds.is_finite() || (seconds * 1e9).abs() >= 9.2e18 {
            return Err(format!("cannot parse {text:?} to a valid duration. It overflows int64"));
        }
        return Ok((seconds * 1000.0) as i64);
    }
    crate::duration::parse_duration_ms(text).map_err(|_| format!("cannot parse {text:?} to a valid duration"))
}

fn time_param(params: &Params, name: &str, default_ms: i64) -> Result<i64, ApiError> {
    match params.get(name) {
        None => Ok(default_ms),
        Some(text) => parse_time_ms(text).map_err(|e| ApiError::bad_param(name, e)),
    }
}

/// Prometheus 3.x's `limit`: a non-negative integer, 0 meaning no limit.
fn limit_param(params: &Params) -> Result<usize, ApiError> {
    match params.get("limit") {
        None => Ok(0),
        Some(text) => match text.trim().parse::<i64>() {
            Ok(n) if n < 0 => Err(ApiError::bad_param("limit", "limit must be non-negative")),
            Ok(n) => Ok(usize::try_from(n).unwrap_or(usize::MAX)),
            Err(_) => Err(ApiError::bad_param("limit", format!("cannot parse {text:?} to a valid limit"))),
        },
    }
}

/// The priority class: `priority` parameter, else the header, else ad-hoc.
fn priority_of(params: &Params, headers: &HeaderMap) -> Result<Priority, ApiError> {
    if let Some(text) = params.get("priority") {
        return Priority::parse(text).map_err(|e| ApiError::bad_param("priority", e));
    }
    match headers.get(PRIORITY_HEADER) {
        None => Ok(Priority::Adhoc),
        Some(value) => {
            let text = value.to_str().map_err(|_| ApiError::new(ErrorKind::BadData, format!("header {PRIORITY_HEADER} is not visible ASCII")))?;
            Priority::parse(text).map_err(|e| ApiError::new(ErrorKind::BadData, format!("header {PRIORITY_HEADER}: {e}")))
        }
    }
}

/// Parses `match[]` selectors (plain series selectors only, as Prometheus's
/// `parser.ParseMetricSelector`).
fn match_params(params: &Params) -> Result<Vec<Vec<Matcher>>, ApiError> {
    let mut out = Vec::new();
    for text in params.all("match[]") {
        let expr = promql::parse(text).map_err(|e| ApiError::bad_param("match[]", e))?;
        match expr {
            Expr::Vector(selector) if selector.offset_ms == 0 && selector.at.is_none() => out.push(selector.matchers),
            _ => return Err(ApiError::bad_param("match[]", format!("{text:?} is not a series selector (e.g. up{{job=\"node\"}})"))),
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Running a query.

/// What to evaluate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QueryKind {
    Instant { t_ms: i64 },
    Range { start_ms: i64, end_ms: i64, step_ms: i64 },
}

/// A parsed and checked query request.
#[derive(Clone, Debug)]
pub struct QueryRequest {
    pub text: String,
    pub kind: QueryKind,
    /// The effective timeout: the `timeout` parameter capped by the tenant's query timeout
    /// (the cluster default is seeded from `--query-timeout`).
    pub timeout_ms: i64,
    pub class: Priority,
    /// The client's `authorization` header when tokens are configured: the query fan-out
    /// passes it to the other nodes (route.rs).
    pub authorization: Option<String>,
}

/// The deadline and cancellation flag a query's evaluation polls. Reads the node's `Clock`;
/// core only calls it.
struct QueryDeadline {
    clock: Arc<dyn Clock>,
    deadline_ns: u64,
    timeout_ms: i64,
    canceled: Arc<AtomicBool>,
}

impl QueryDeadline {
    fn check_in(&self, phase: &str) -> Result<(), QueryError> {
        if self.canceled.load(Ordering::Relaxed) {
            return Err(QueryError::Canceled(format!("query canceled {phase}: the client went away")));
        }
        if self.clock.now_monotonic_ns() > self.deadline_ns {
            return Err(QueryError::Timeout(format!(
                "query timed out {phase} (limit timeout={}ms, from --query-timeout or the timeout parameter)",
                self.timeout_ms
            )));
        }
        Ok(())
    }
}

impl Interrupt for QueryDeadline {
    fn check(&self) -> Result<(), QueryError> {
        self.check_in("in expression evaluation")
    }
}

/// Sets the cancellation flag when the handler's future is dropped (the client went away) or
/// finishes, so an evaluation still running on the blocking pool stops at its next poll.
struct CancelOnDrop(Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// The query limits of one request of `tenant`: samples and series from the tenant's limits
/// (the metadata group's, applied live), memory from this node's flags.
fn query_limits(node: &Node, tenant: &str) -> QueryLimits {
    let config = &node.config().query;
    let tenant_limits = node.tenant_limits(tenant);
    QueryLimits {
        samples_max: tenant_limits.query_samples_max,
        series_max: tenant_limits.query_series_max,
        bytes_max: config.bytes_max,
        // The API has already refused more than RANGE_POINTS_MAX steps after the first.
        steps_max: RANGE_POINTS_MAX as usize + 1,
        ..QueryLimits::default()
    }
}

/// Runs CPU-bound evaluation away from the async runtime's worker threads, so a heavy query
/// cannot stall `/-/healthy`, remote-write or other queries. The simulator runs it inline.
#[cfg(not(madsim))]
async fn run_blocking<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(work).await.map_err(|e| ApiError::new(ErrorKind::Internal, format!("query evaluation task failed: {e}")))
}

#[cfg(madsim)]
async fn run_blocking<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> Result<T, ApiError> {
    Ok(work())
}

/// The result of a query: an instant value, or a range query's matrix.
#[derive(Clone, Debug, PartialEq)]
pub enum QueryOutput {
    Instant(Value),
    Range(Vec<MatrixSeries>),
}

/// Admits, fetches and evaluates one query for `tenant`. `arrival_ns` is when the request
/// arrived on the node's monotonic clock: the timeout counts from there, queueing included.
/// Also answers the query's warnings and infos (Prometheus's annotations).
pub async fn execute(node: &Arc<Node>, tenant: &str, request: &QueryRequest, arrival_ns: u64) -> Result<(QueryOutput, promql::Annotations), ApiError> {
    let expr = promql::parse(&request.text).map_err(query_error)?;
    if let QueryKind::Range { .. } = request.kind {
        let kind = match expr.kind() {
            ValueKind::Matrix => Some("range vector"),
            ValueKind::String => Some("string"),
            _ => None,
        };
        if let Some(kind) = kind {
            return Err(ApiError::new(ErrorKind::BadData, format!("invalid expression type {kind:?} for range query, must be Scalar or instant Vector")));
        }
    }
    let engine: Engine = node.engine().map_err(|reason| ApiError::new(ErrorKind::Unavailable, reason))?;
    let canceled = Arc::new(AtomicBool::new(false));
    let _cancel_on_drop = CancelOnDrop(canceled.clone());
    let deadline = QueryDeadline {
        clock: node.clock().clone(),
        deadline_ns: arrival_ns.saturating_add((request.timeout_ms.max(0) as u64).saturating_mul(1_000_000)),
        timeout_ms: request.timeout_ms,
        canceled: canceled.clone(),
    };
    let permit = node.query_scheduler().admit(request.class).await?;
    node.metrics.query_queue_wait_seconds.observe(permit.waited_ns as f64 / 1e9);
    deadline.check_in("while waiting for a query slot").map_err(query_error)?;

    let limits = query_limits(node, tenant);
    let plan = match request.kind {
        QueryKind::Instant { t_ms } => promql::plan_instant(&expr, t_ms, limits.lookback_ms),
        QueryKind::Range { start_ms, end_ms, step_ms } => promql::plan_range(&expr, start_ms, end_ms, step_ms, limits.lookback_ms),
    };
    plan.check_limits(&limits).map_err(query_error)?;
    let mut budget = SelectBudget::new(limits.series_max, limits.samples_max, limits.bytes_max);
    let mut fetched = Vec::with_capacity(plan.selectors.len());
    // The fetch phase reads every shard of the cluster (route.rs); shards nobody answered for
    // become warnings, never a silently short answer.
    let mut fetch_warnings: BTreeSet<String> = BTreeSet::new();
    for selector in &plan.selectors {
        deadline.check_in("while fetching series").map_err(query_error)?;
        let read = crate::route::ReadRequest {
            tenant,
            matchers: &selector.matchers,
            min_t: selector.min_t,
            max_t: selector.max_t,
            labels_only: false,
            authorization: request.authorization.as_deref(),
            timeout: fanout_timeout(request.timeout_ms),
        };
        let selected = crate::route::select(node, &engine, &read, &mut budget).await.map_err(select_error)?;
        fetch_warnings.extend(selected.warnings);
        fetched.push(selected.series.into_iter().map(|s| FetchedSeries { labels: s.labels, samples: s.samples }).collect::<Vec<_>>());
    }
    deadline.check_in("while fetching series").map_err(query_error)?;
    let data = FetchedData::new(&plan, fetched);
    let kind = request.kind;
    let output = run_blocking(move || match kind {
        QueryKind::Instant { t_ms } => {
            promql::eval_instant_annotated(&expr, t_ms, &data, &limits, &deadline).map(|(value, notes)| (QueryOutput::Instant(value), notes))
        }
        QueryKind::Range { start_ms, end_ms, step_ms } => promql::eval_range_annotated(&expr, start_ms, end_ms, step_ms, &data, &limits, &deadline)
            .map(|(matrix, notes)| (QueryOutput::Range(matrix), notes)),
    })
    .await?
    .map_err(query_error)?;
    drop(permit);
    let (output, mut annotations) = output;
    for warning in fetch_warnings {
        annotations.warn(warning);
    }
    Ok((output, annotations))
}

/// How long one node's answer in a query's fan-out may take: the query's timeout, capped.
fn fanout_timeout(timeout_ms: i64) -> std::time::Duration {
    std::time::Duration::from_millis((timeout_ms.max(1) as u64).min(crate::route::SELECT_TIMEOUT_MS_MAX))
}

fn timeout_param(node: &Node, tenant: &str, params: &Params) -> Result<i64, ApiError> {
    let max_ms = node.tenant_limits(tenant).query_timeout_ms;
    match params.get("timeout") {
        None => Ok(max_ms),
        Some(text) => {
            let ms = parse_duration_param_ms(text).map_err(|e| ApiError::bad_param("timeout", e))?;
            if ms <= 0 {
                return Err(ApiError::bad_param("timeout", format!("timeout must be positive, got {text:?}")));
            }
            Ok(ms.min(max_ms))
        }
    }
}

fn query_text(params: &Params) -> Result<String, ApiError> {
    params.get("query").map(str::to_string).ok_or_else(|| ApiError::bad_param("query", "missing: give a PromQL expression in query="))
}

/// Parses `/api/v1/query` parameters for `tenant` (whose limits cap the timeout).
pub fn instant_request(node: &Node, tenant: &str, params: &Params, headers: &HeaderMap) -> Result<QueryRequest, ApiError> {
    let text = query_text(params)?;
    let t_ms = time_param(params, "time", node.clock().now_wall_ms())?;
    let timeout_ms = timeout_param(node, tenant, params)?;
    Ok(QueryRequest { text, kind: QueryKind::Instant { t_ms }, timeout_ms, class: priority_of(params, headers)?, authorization: forwarded_authorization(node, headers) })
}

/// Parses `/api/v1/query_range` parameters with Prometheus's checks, in Prometheus's order.
/// `tenant`'s limits cap the timeout and the range (`end - start`).
pub fn range_request(node: &Node, tenant: &str, params: &Params, headers: &HeaderMap) -> Result<QueryRequest, ApiError> {
    let required = |name: &str| params.get(name).ok_or_else(|| ApiError::bad_param(name, "cannot parse \"\" to a valid timestamp"));
    let start_ms = parse_time_ms(required("start")?).map_err(|e| ApiError::bad_param("start", e))?;
    let end_ms = parse_time_ms(required("end")?).map_err(|e| ApiError::bad_param("end", e))?;
    if end_ms < start_ms {
        return Err(ApiError::bad_param("end", "end timestamp must not be before start time"));
    }
    let step_text = params.get("step").ok_or_else(|| ApiError::bad_param("step", "cannot parse \"\" to a valid duration"))?;
    let step_ms = parse_duration_param_ms(step_text).map_err(|e| ApiError::bad_param("step", e))?;
    if step_ms <= 0 {
        return Err(ApiError::bad_param("step", "zero or negative query resolution step widths are not accepted. Try a positive integer"));
    }
    // For safety, limit the number of returned points per timeseries (Prometheus's rule).
    if (end_ms as i128 - start_ms as i128) / step_ms as i128 > RANGE_POINTS_MAX as i128 {
        return Err(ApiError::new(ErrorKind::BadData, "exceeded maximum resolution of 11,000 points per timeseries. Try decreasing the query resolution (?step=XX)"));
    }
    let range_ms_max = node.tenant_limits(tenant).query_range_ms_max;
    if range_ms_max > 0 && end_ms as i128 - start_ms as i128 > range_ms_max as i128 {
        return Err(ApiError::new(
            ErrorKind::BadData,
            format!("the query range of {} ms (end - start) exceeds tenant {tenant:?}'s limit of {range_ms_max} ms (query_range_ms_max); query a shorter range", end_ms as i128 - start_ms as i128),
        ));
    }
    let timeout_ms = timeout_param(node, tenant, params)?;
    let text = query_text(params)?;
    Ok(QueryRequest { text, kind: QueryKind::Range { start_ms, end_ms, step_ms }, timeout_ms, class: priority_of(params, headers)?, authorization: forwarded_authorization(node, headers) })
}

/// The client's `authorization` header, kept for the fan-out when the node checks tokens.
fn forwarded_authorization(node: &Node, headers: &HeaderMap) -> Option<String> {
    node.tokens()?;
    headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).map(str::to_string)
}

// ---------------------------------------------------------------------------------------------
// Handlers.

fn tenant(node: &Node, headers: &HeaderMap) -> Result<String, Response> {
    crate::http::tenant_for(node, headers, Role::Read)
}

async fn query_handler(node: Arc<Node>, method: Method, headers: HeaderMap, uri: Uri, body: Body, range: bool) -> Response {
    let arrival_ns = node.clock().now_monotonic_ns();
    let handler = if range { "query_range" } else { "query" };
    let tenant = match tenant(&node, &headers) {
        Ok(tenant) => tenant,
        Err(response) => {
            node.metrics.request(handler, response.status().as_u16());
            return response;
        }
    };
    let mut class = Priority::Adhoc;
    let result: Result<(QueryOutput, promql::Annotations), ApiError> = async {
        let params = read_params(&method, &headers, &uri, body).await?;
        let request = if range { range_request(&node, &tenant, &params, &headers)? } else { instant_request(&node, &tenant, &params, &headers)? };
        class = request.class;
        execute(&node, &tenant, &request, arrival_ns).await
    }
    .await;
    let seconds = node.clock().now_monotonic_ns().saturating_sub(arrival_ns) as f64 / 1e9;
    let response = match result {
        Ok((output, annotations)) => {
            node.metrics.query_finished(class.as_str(), "success", seconds);
            let data = match output {
                QueryOutput::Instant(value) => value_json(&value),
                QueryOutput::Range(matrix) => format!("{{\"resultType\":\"matrix\",\"result\":{}}}", matrix_json(&matrix)),
            };
            let (warnings, infos) = annotations.for_response();
            success(data, &warnings, &infos)
        }
        Err(error) => {
            node.metrics.query_finished(class.as_str(), error.kind.as_str(), seconds);
            if error.kind != ErrorKind::BadData {
                tracing::debug!(tenant, error = %error.message, "query failed");
            }
            error.into_response()
        }
    };
    node.metrics.request(handler, response.status().as_u16());
    response
}

pub async fn query(State(node): State<Arc<Node>>, method: Method, headers: HeaderMap, uri: Uri, body: Body) -> Response {
    query_handler(node, method, headers, uri, body, false).await
}

pub async fn query_range(State(node): State<Arc<Node>>, method: Method, headers: HeaderMap, uri: Uri, body: Body) -> Response {
    query_handler(node, method, headers, uri, body, true).await
}

/// Series of `tenant` matching any of `match_sets` with samples in `[start, end]`, within the
/// node's query budget (the same one a query has: these endpoints read samples too).
/// Reads every shard of the cluster (route.rs); the warnings name shards nobody answered for.
async fn matching_series(node: &Node, tenant: &str, match_sets: &[Vec<Matcher>], start_ms: i64, end_ms: i64, authorization: Option<&str>) -> Result<(Vec<Labels>, Vec<String>), ApiError> {
    let engine = node.engine().map_err(|reason| ApiError::new(ErrorKind::Unavailable, reason))?;
    let limits = query_limits(node, tenant);
    let mut budget = SelectBudget::new(limits.series_max, limits.samples_max, limits.bytes_max);
    let timeout = fanout_timeout(node.tenant_limits(tenant).query_timeout_ms);
    let mut out = BTreeSet::new();
    let mut warnings = BTreeSet::new();
    for matchers in match_sets {
        let read = crate::route::ReadRequest { tenant, matchers, min_t: start_ms, max_t: end_ms, labels_only: true, authorization, timeout };
        let selected = crate::route::select(node, &engine, &read, &mut budget).await.map_err(select_error)?;
        out.extend(selected.series.into_iter().map(|s| s.labels));
        warnings.extend(selected.warnings);
    }
    Ok((out.into_iter().collect(), warnings.into_iter().collect()))
}

/// Every series: a metric name is required at ingest, so `__name__=~".+"` selects all.
fn all_series() -> Vec<Vec<Matcher>> {
    vec![vec![Matcher::new(MatchOp::RegexMatch, "__name__", ".+").expect("a valid regex")]]
}

/// `start`/`end` of the metadata endpoints: all time by default.
fn metadata_range(params: &Params) -> Result<(i64, i64), ApiError> {
    let start = time_param(params, "start", i64::MIN)?;
    let end = time_param(params, "end", i64::MAX)?;
    if end < start {
        return Err(ApiError::bad_param("end", "end timestamp must not be before start time"));
    }
    Ok((start, end))
}

fn truncate<T>(mut items: Vec<T>, limit: usize) -> (Vec<T>, Vec<String>) {
    if limit > 0 && items.len() > limit {
        items.truncate(limit);
        return (items, vec![TRUNCATED_WARNING.to_string()]);
    }
    (items, Vec::new())
}

async fn with_params<F, Fut>(node: Arc<Node>, handler: &str, method: Method, headers: HeaderMap, uri: Uri, body: Body, run: F) -> Response
where
    F: FnOnce(Arc<Node>, String, Params, Option<String>) -> Fut,
    Fut: std::future::Future<Output = Result<Response, ApiError>>,
{
    let response = match tenant(&node, &headers) {
        Err(response) => response,
        Ok(tenant) => respond(async {
            let params = read_params(&method, &headers, &uri, body).await?;
            let authorization = forwarded_authorization(&node, &headers);
            run(node.clone(), tenant, params, authorization).await
        }
        .await),
    };
    node.metrics.request(handler, response.status().as_u16());
    response
}

pub async fn series(State(node): State<Arc<Node>>, method: Method, headers: HeaderMap, uri: Uri, body: Body) -> Response {
    with_params(node, "series", method, headers, uri, body, |node, tenant, params, authorization| async move {
        let match_sets = match_params(&params)?;
        if match_sets.is_empty() {
            return Err(ApiError::new(ErrorKind::BadData, "no match[] parameter provided"));
        }
        let (start, end) = metadata_range(&params)?;
        let limit = limit_param(&params)?;
        let (series, mut warnings) = matching_series(&node, &tenant, &match_sets, start, end, authorization.as_deref()).await?;
        let (series, truncated) = truncate(series, limit);
        warnings.extend(truncated);
        let items: Vec<String> = series.iter().map(labels_json).collect();
        Ok(success(format!("[{}]", items.join(",")), &warnings, &[]))
    })
    .await
}

pub async fn labels(State(node): State<Arc<Node>>, method: Method, headers: HeaderMap, uri: Uri, body: Body) -> Response {
    with_params(node, "labels", method, headers, uri, body, |node, tenant, params, authorization| async move {
        let mut match_sets = match_params(&params)?;
        if match_sets.is_empty() {
            match_sets = all_series();
        }
        let (start, end) = metadata_range(&params)?;
        let limit = limit_param(&params)?;
        let (series, mut warnings) = matching_series(&node, &tenant, &match_sets, start, end, authorization.as_deref()).await?;
        let names: BTreeSet<String> = series.iter().flat_map(|l| l.iter().map(|x| x.name.clone()).collect::<Vec<_>>()).collect();
        let (names, truncated) = truncate(names.into_iter().collect(), limit);
        warnings.extend(truncated);
        let items: Vec<String> = names.iter().map(|n| json_string(n)).collect();
        Ok(success(format!("[{}]", items.join(",")), &warnings, &[]))
    })
    .await
}

pub async fn label_values(State(node): State<Arc<Node>>, Path(name): Path<String>, method: Method, headers: HeaderMap, uri: Uri, body: Body) -> Response {
    with_params(node, "label_values", method, headers, uri, body, |node, tenant, params, authorization| async move {
        if name.is_empty() {
            return Err(ApiError::bad_param("label", "the label name is empty"));
        }
        let mut match_sets = match_params(&params)?;
        if match_sets.is_empty() {
            match_sets = all_series();
        }
        let (start, end) = metadata_range(&params)?;
        let limit = limit_param(&params)?;
        let (series, mut warnings) = matching_series(&node, &tenant, &match_sets, start, end, authorization.as_deref()).await?;
        let values: BTreeSet<String> = series.iter().map(|l| l.get(&name).to_string()).filter(|v| !v.is_empty()).collect();
        let (values, truncated) = truncate(values.into_iter().collect(), limit);
        warnings.extend(truncated);
        let items: Vec<String> = values.iter().map(|v| json_string(v)).collect();
        Ok(success(format!("[{}]", items.join(",")), &warnings, &[]))
    })
    .await
}

/// Prometheus's metadata `limit`/`limit_per_metric`: negative or absent means no limit.
fn signed_limit(params: &Params, name: &str) -> Result<Option<usize>, ApiError> {
    match params.get(name) {
        None => Ok(None),
        Some(text) => match text.trim().parse::<i64>() {
            Ok(n) if n < 0 => Ok(None),
            Ok(n) => Ok(Some(usize::try_from(n).unwrap_or(usize::MAX))),
            Err(_) => Err(ApiError::bad_param(name, format!("cannot parse {text:?} to a valid number"))),
        },
    }
}

pub async fn metadata(State(node): State<Arc<Node>>, method: Method, headers: HeaderMap, uri: Uri, body: Body) -> Response {
    with_params(node, "metadata", method, headers, uri, body, |node, tenant, params, _authorization| async move {
        let limit = signed_limit(&params, "limit")?;
        let limit_per_metric = signed_limit(&params, "limit_per_metric")?;
        let metric = params.get("metric");
        let table = node.metadata(&tenant);
        let mut out: BTreeMap<&str, Vec<String>> = BTreeMap::new();
        for (name, entry) in &table {
            if metric.is_some_and(|m| m != name) {
                continue;
            }
            if limit.is_some_and(|l| out.len() >= l) {
                break;
            }
            // One entry per metric is kept (latest wins), so limit_per_metric only matters at 0.
            let entries = if limit_per_metric == Some(0) { Vec::new() } else { vec![serde_json::to_string(entry).unwrap_or_default()] };
            out.insert(name, entries);
        }
        let items: Vec<String> = out.iter().map(|(name, entries)| format!("{}:[{}]", json_string(name), entries.join(","))).collect();
        Ok(success(format!("{{{}}}", items.join(",")), &[], &[]))
    })
    .await
}

pub async fn buildinfo(State(node): State<Arc<Node>>) -> Response {
    node.metrics.request("buildinfo", 200);
    // Prometheus's field order; `application` is an extra field Grafana's flavour detection reads.
    let data = format!(
        "{{\"version\":{},\"revision\":{},\"branch\":\"\",\"buildUser\":\"\",\"buildDate\":\"\",\"goVersion\":\"\",\"application\":\"sextant\"}}",
        json_string(PROMETHEUS_API_VERSION),
        json_string(&format!("sextant {}", env!("CARGO_PKG_VERSION")))
    );
    success(data, &[], &[])
}

pub async fn rules(State(node): State<Arc<Node>>, headers: HeaderMap) -> Response {
    let response = match tenant(&node, &headers) {
        Err(response) => response,
        // No rule store yet (it arrives with the alerting issue): no groups.
        Ok(_) => success("{\"groups\":[]}".into(), &[], &[]),
    };
    node.metrics.request("rules", response.status().as_u16());
    response
}

pub async fn alerts(State(node): State<Arc<Node>>, headers: HeaderMap) -> Response {
    let response = match tenant(&node, &headers) {
        Err(response) => response,
        Ok(_) => success("{\"alerts\":[]}".into(), &[], &[]),
    };
    node.metrics.request("alerts", response.status().as_u16());
    response
}

pub async fn format_query(State(node): State<Arc<Node>>, method: Method, headers: HeaderMap, uri: Uri, body: Body) -> Response {
    with_params(node, "format_query", method, headers, uri, body, |_node, _tenant, params, _authorization| async move {
        let text = query_text(&params)?;
        let formatted = promql::format_query(&text).map_err(query_error)?;
        Ok(success(json_string(&formatted), &[], &[]))
    })
    .await
}

pub async fn query_exemplars(State(node): State<Arc<Node>>, method: Method, headers: HeaderMap, uri: Uri, body: Body) -> Response {
    with_params(node, "query_exemplars", method, headers, uri, body, |_node, _tenant, params, _authorization| async move {
        // Exemplars are not stored (remote-write counts them as ignored); the parameters are
        // still checked so a malformed request is told so.
        if let Some(text) = params.get("query") {
            promql::parse(text).map_err(query_error)?;
        }
        metadata_range(&params)?;
        Ok(success("[]".into(), &[], &[]))
    })
    .await
}

/// Unknown `/api/v1/...` paths: Prometheus's JSON error shape with 404.
pub async fn not_found(uri: Uri) -> Response {
    ApiError::new(ErrorKind::NotFound, format!("unknown API endpoint {}", uri.path())).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    // Goal: timestamps and values are written exactly as Prometheus writes them.
    #[test]
    fn formats_match_prometheus() {
        let cases: Vec<(i64, &str)> = vec![(0, "0"), (1_500, "1.500"), (1_050, "1.050"), (1_001, "1.001"), (-1_500, "-1.500"), (1_435_781_451_781, "1435781451.781"), (2_000, "2")];
        for (t, expected) in cases {
            assert_eq!(format_timestamp(t), expected, "t={t}");
        }
        let values: Vec<(f64, &str)> = vec![
            (1.0, "1"),
            (0.1, "0.1"),
            (-0.0, "-0"),
            (1e21, "1e+21"),
            (999999999999999900000.0, "999999999999999900000"),
            (1e-6, "0.000001"),
            (1e-7, "1e-07"),
            (-2.01e-7, "-2.01e-07"),
            (5e-324, "5e-324"),
            (1.5e300, "1.5e+300"),
            (123456789.125, "123456789.125"),
            (f64::NAN, "NaN"),
            (f64::INFINITY, "+Inf"),
            (f64::NEG_INFINITY, "-Inf"),
            
        ];
        for (v, expected) in values {
            assert_eq!(format_value(v), expected, "v={v}");
        }
        assert_eq!(format_value(f64::MAX), "1.7976931348623157e+308");
    }

    // Goal: time and duration parameters parse as Prometheus parses them, and bad ones say why.
    #[test]
    fn parses_times_and_durations() {
        let times: Vec<(&str, Result<i64, ()>)> = vec![
            ("1435781451.781", Ok(1_435_781_451_781)),
            ("1435781451", Ok(1_435_781_451_000)),
            ("0.0005", Ok(1)),
            ("-1.5", Ok(-1_500)),
            ("2015-07-01T20:10:51.781Z", Ok(1_435_781_451_781)),
            ("2015-07-01T22:10:51.781+02:00", Ok(1_435_781_451_781)),
            ("2015-07-01T20:10:51Z", Ok(1_435_781_451_000)),
            ("2016-02-29T00:00:00.123456789Z", Ok(1_456_704_000_123)),
            ("1970-01-01T00:00:00Z", Ok(0)),
            ("2015-02-29T00:00:00Z", Err(())),
            ("2015-07-01 20:10:51Z", Err(())),
            ("yesterday", Err(())),
            ("NaN", Err(())),
            ("1e300", Err(())),
        ];
        for (text, expected) in times {
            let got = parse_time_ms(text);
            match expected {
                Ok(ms) => assert_eq!(got, Ok(ms), "{text}"),
                Err(()) => assert!(got.as_ref().is_err_and(|e| e.contains("to a valid timestamp")), "{text}: {got:?}"),
            }
        }
        let durations: Vec<(&str, Result<i64, ()>)> = vec![("15", Ok(15_000)), ("0.5", Ok(500)), ("1m30s", Ok(90_000)), ("5m", Ok(300_000)), ("0", Ok(0)), ("-1", Ok(-1_000)), ("5 minutes", Err(()))];
        for (text, expected) in durations {
            let got = parse_duration_param_ms(text);
            match expected {
                Ok(ms) => assert_eq!(got, Ok(ms), "{text}"),
                Err(()) => assert!(got.is_err(), "{text}: {got:?}"),
            }
        }
    }
}
