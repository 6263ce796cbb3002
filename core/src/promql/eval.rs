//! Phase 3: evaluate an expression over fetched data, Prometheus 3.x semantics for floats.
//!
//! A range query is evaluated step by step as a sequence of instant evaluations whose results
//! are merged by label set; this matches Prometheus's results (its range evaluation is an
//! optimisation of the same definition). Metric names are removed late, as Prometheus 3.x does
//! with delayed name removal: an element carries `drop_name` and the name is dropped when the
//! result leaves the engine, where duplicate label sets become an error.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::rc::Rc;

use super::ast::{AggOp, At, BinOp, Card, Expr, Grouping, Matching, Selector, ValueKind};
use super::plan::subquery_first_step;
use super::{functions, go_fmt_g, go_quote, Annotations, FetchedData, Interrupt, MatrixSeries, NoInterrupt, QueryError, QueryLimits, Value, VectorSample, INTERRUPT_SERIES_BATCH, SAMPLE_BYTES};
use crate::labels::{Label, Labels, METRIC_NAME_LABEL};
use crate::matcher::matches_all;
use crate::sample::{is_stale_nan, Sample};

/// One element of an instant vector during evaluation.
#[derive(Clone, Debug)]
pub(crate) struct Elem {
    pub labels: Labels,
    pub v: f64,
    pub drop_name: bool,
}

/// One series of a range vector during evaluation.
#[derive(Clone, Debug)]
pub(crate) struct Series {
    pub labels: Labels,
    pub samples: Vec<Sample>,
    pub drop_name: bool,
}

#[derive(Clone, Debug)]
pub(crate) enum Val {
    Scalar(f64),
    Str(String),
    Vector(Vec<Elem>),
    Matrix(Vec<Series>),
}

pub(crate) fn exec_err(msg: impl Into<String>) -> QueryError {
    QueryError::Execution(msg.into())
}

/// Prometheus's notation for a label set: `{__name__="x", a="b"}`.
pub(crate) fn prom_labels(l: &Labels) -> String {
    let inner: Vec<String> = l.iter().map(|x| format!("{}={:?}", x.name, x.value)).collect();
    format!("{{{}}}", inner.join(", "))
}

/// Drops the metric name and, as Prometheus 3.x does, the other metadata labels
/// (`__type__`, `__unit__`) that describe it.
pub(crate) fn without_name(l: &Labels) -> Labels {
    filter_labels(l, |n| n != METRIC_NAME_LABEL && n != "__type__" && n != "__unit__")
}

pub(crate) fn filter_labels(l: &Labels, keep: impl Fn(&str) -> bool) -> Labels {
    Labels::from_sorted(l.iter().filter(|x| keep(&x.name)).cloned().collect())
}

/// Sets (or with an empty value, removes) one label.
pub(crate) fn set_label(l: &Labels, name: &str, value: &str) -> Labels {
    let mut v: Vec<Label> = l.iter().filter(|x| x.name != name).cloned().collect();
    if !value.is_empty() {
        v.push(Label::new(name, value));
        v.sort_by(|a, b| a.name.cmp(&b.name));
    }
    Labels::from_sorted(v)
}

pub(crate) struct Evaluator<'a> {
    pub data: &'a FetchedData,
    /// The query's start and end: what `@ start()` and `@ end()` resolve to.
    pub start: i64,
    pub end: i64,
    pub limits: QueryLimits,
    pub fetched_samples: usize,
    /// The memory estimate of the fetched data (samples and labels).
    pub fetched_bytes: usize,
    interrupt: &'a dyn Interrupt,
    /// The first error the interrupt answered with; sticky, so a selector that stopped early
    /// cannot be mistaken for a complete one.
    stopped: RefCell<Option<QueryError>>,
    /// Group tables of aggregations over a [`RangeCall`], by the address of the aggregation's
    /// input expression (the AST outlives the evaluator). Built on the first step, reused by
    /// every later one: grouping labels are computed once per series, not per step.
    group_tables: RefCell<HashMap<usize, Rc<GroupTable>>>,
    /// Warnings and infos the query raised (Prometheus's annotations).
    annotations: RefCell<Annotations>,
    /// The metric name `rate`/`increase` last checked for a counter suffix: series of one
    /// metric come in a row, so this skips the check (and any allocation) for nearly all.
    last_counter_name: RefCell<String>,
}

/// A range function that needs only its window over a plain matrix selector, `f(sel[r])`:
/// evaluated straight from the fetched samples, without building the range vector (the
/// per-step copies of every series' labels and window that dominated range queries).
pub(crate) struct RangeCall<'e> {
    func: &'e str,
    sel: &'e Selector,
    range_ms: i64,
}

pub(crate) fn range_call(e: &Expr) -> Option<RangeCall<'_>> {
    match e.unwrap_parens() {
        Expr::Call { func, args } if args.len() == 1 && functions::is_plain_range_fn(func) => match args[0].unwrap_parens() {
            Expr::Matrix { selector, range_ms } => Some(RangeCall { func, sel: selector, range_ms: *range_ms }),
            _ => None,
        },
        _ => None,
    }
}

/// The groups of an aggregation over a [`RangeCall`]: `group_of[i]` is the group of the
/// selector's `i`-th fetched series (`usize::MAX` if the matchers reject it), `labels[g]` the
/// labels of group `g`.
pub(crate) struct GroupTable {
    group_of: Vec<usize>,
    labels: Vec<Labels>,
}

impl<'a> Evaluator<'a> {
    fn new(data: &'a FetchedData, start: i64, end: i64, limits: QueryLimits, interrupt: &'a dyn Interrupt) -> Result<Self, QueryError> {
        let mut series = BTreeSet::new();
        let mut samples = 0usize;
        let mut bytes = 0usize;
        for s in data.all() {
            if series.insert(&s.labels) {
                bytes = bytes.saturating_add(s.labels.bytes());
            }
            samples = samples.saturating_add(s.samples.len());
        }
        if series.len() > limits.series_max {
            return Err(QueryError::TooManySeries { count: series.len(), max: limits.series_max });
        }
        if samples > limits.samples_max {
            return Err(QueryError::TooManySamples { max: limits.samples_max });
        }
        bytes = bytes.saturating_add(samples.saturating_mul(SAMPLE_BYTES));
        if bytes > limits.bytes_max {
            return Err(QueryError::TooManyBytes { bytes, max: limits.bytes_max });
        }
        let ev = Evaluator { data, start, end, limits, fetched_samples: samples, fetched_bytes: bytes, interrupt, stopped: RefCell::new(None), group_tables: RefCell::new(HashMap::new()), annotations: RefCell::new(Annotations::default()), last_counter_name: RefCell::new(String::new()) };
        ev.poll()?;
        Ok(ev)
    }

    pub(crate) fn warn(&self, message: String) {
        self.annotations.borrow_mut().warn(message);
    }

    pub(crate) fn info(&self, message: String) {
        self.annotations.borrow_mut().info(message);
    }

    /// Prometheus's "metric might not be a counter" info: `rate` and `increase` produced a
    /// value from a series whose name lacks a counter suffix.
    pub(crate) fn check_counter_name(&self, func: &str, labels: &Labels) {
        if func != "rate" && func != "increase" {
            return;
        }
        let name = labels.get(METRIC_NAME_LABEL);
        if name.is_empty() || *self.last_counter_name.borrow() == name {
            return;
        }
        if !["_total", "_sum", "_count", "_bucket"].iter().any(|suffix| name.ends_with(suffix)) {
            self.info(format!("PromQL info: metric might not be a counter, name does not end in _total/_sum/_count/_bucket: {}", go_quote(name)));
        }
        *self.last_counter_name.borrow_mut() = name.to_string();
    }

    /// Prometheus's warning for a quantile outside [0, 1].
    pub(crate) fn check_quantile(&self, q: f64) {
        if q.is_nan() || !(0.0..=1.0).contains(&q) {
            self.warn(format!("PromQL warning: quantile value should be between 0 and 1, got {}", go_fmt_g(q)));
        }
    }

    /// Prometheus's warning when `limit_ratio`'s ratio is capped to [-1, 1].
    fn check_ratio(&self, op: AggOp, ratio: f64) {
        if op == AggOp::LimitRatio && !ratio.is_nan() && !(-1.0..=1.0).contains(&ratio) {
            let capped = ratio.clamp(-1.0, 1.0);
            self.warn(format!("PromQL warning: ratio value should be between -1 and 1, got {}, capping to {}", go_fmt_g(ratio), go_fmt_g(capped)));
        }
    }

    /// The annotations raised so far.
    pub(crate) fn take_annotations(&self) -> Annotations {
        std::mem::take(&mut *self.annotations.borrow_mut())
    }

    /// Asks the interrupt whether to go on; once it said stop, keeps saying so.
    pub fn poll(&self) -> Result<(), QueryError> {
        self.stopped()?;
        if let Err(error) = self.interrupt.check() {
            *self.stopped.borrow_mut() = Some(error.clone());
            return Err(error);
        }
        Ok(())
    }

    /// The interrupt's answer if it already said stop (no new check).
    fn stopped(&self) -> Result<(), QueryError> {
        match &*self.stopped.borrow() {
            Some(error) => Err(error.clone()),
            None => Ok(()),
        }
    }

    /// Checks the memory estimate of `extra` bytes held on top of the fetched data.
    fn check_bytes(&self, extra: usize) -> Result<(), QueryError> {
        let bytes = self.fetched_bytes.saturating_add(extra);
        if bytes > self.limits.bytes_max {
            return Err(QueryError::TooManyBytes { bytes, max: self.limits.bytes_max });
        }
        Ok(())
    }

    fn reference_time(&self, at: Option<At>, offset_ms: i64, t: i64) -> i64 {
        let base = match at {
            Some(At::Time(x)) => x,
            Some(At::Start) => self.start,
            Some(At::End) => self.end,
            None => t,
        };
        base.saturating_sub(offset_ms)
    }

    /// Instant vector selector: the newest sample in `(t - lookback, t]`, unless it is a
    /// staleness marker. Returns the element and the sample's own timestamp.
    pub fn select_instant(&self, sel: &Selector, t: i64) -> Vec<(Elem, i64)> {
        let rt = self.reference_time(sel.at, sel.offset_ms, t);
        let mut out = Vec::new();
        for (i, s) in self.data.series_for(&sel.matchers).iter().enumerate() {
            if i % INTERRUPT_SERIES_BATCH == INTERRUPT_SERIES_BATCH - 1 && self.poll().is_err() {
                break;
            }
            if !matches_all(&sel.matchers, &s.labels) {
                continue;
            }
            let idx = s.samples.partition_point(|x| x.t <= rt);
            if idx == 0 {
                continue;
            }
            let sample = s.samples[idx - 1];
            if sample.t <= rt.saturating_sub(self.limits.lookback_ms) || is_stale_nan(sample.v) {
                continue;
            }
            out.push((Elem { labels: s.labels.clone(), v: sample.v, drop_name: false }, sample.t));
        }
        out
    }

    /// Range vector selector: the samples in `(t - range, t]`, staleness markers removed.
    fn select_range(&self, sel: &Selector, range_ms: i64, t: i64) -> Vec<Series> {
        let rt = self.reference_time(sel.at, sel.offset_ms, t);
        let lo_t = rt.saturating_sub(range_ms);
        let mut out = Vec::new();
        for (i, s) in self.data.series_for(&sel.matchers).iter().enumerate() {
            if i % INTERRUPT_SERIES_BATCH == INTERRUPT_SERIES_BATCH - 1 && self.poll().is_err() {
                break;
            }
            if !matches_all(&sel.matchers, &s.labels) {
                continue;
            }
            let lo = s.samples.partition_point(|x| x.t <= lo_t);
            let hi = s.samples.partition_point(|x| x.t <= rt);
            let samples: Vec<Sample> = s.samples[lo..hi.max(lo)].iter().copied().filter(|x| !is_stale_nan(x.v)).collect();
            if samples.is_empty() {
                continue;
            }
            out.push(Series { labels: s.labels.clone(), samples, drop_name: false });
        }
        out
    }

    /// Calls `each(i, v)` with the value of `rc` at `t` for each fetched series `i` of its
    /// selector that has one, in series order: exactly what `select_range` followed by the
    /// function computes, without copying labels. `buf` holds a window that contained staleness
    /// markers.
    fn range_call_values(&self, rc: &RangeCall, t: i64, buf: &mut Vec<Sample>, mut each: impl FnMut(usize, f64)) -> Result<(), QueryError> {
        let rt = self.reference_time(rc.sel.at, rc.sel.offset_ms, t);
        let lo_t = rt.saturating_sub(rc.range_ms);
        // As `functions::matrix_fn` computes them.
        let range_end = match rc.sel.at {
            Some(At::Time(x)) => x,
            Some(At::Start) => self.start,
            Some(At::End) => self.end,
            None => t,
        } - rc.sel.offset_ms;
        let range_start = range_end - rc.range_ms;
        for (i, s) in self.data.series_for(&rc.sel.matchers).iter().enumerate() {
            if i % INTERRUPT_SERIES_BATCH == INTERRUPT_SERIES_BATCH - 1 && self.poll().is_err() {
                break;
            }
            if !matches_all(&rc.sel.matchers, &s.labels) {
                continue;
            }
            let lo = s.samples.partition_point(|x| x.t <= lo_t);
            let hi = s.samples.partition_point(|x| x.t <= rt);
            let mut window = &s.samples[lo..hi.max(lo)];
            if window.iter().any(|x| is_stale_nan(x.v)) {
                buf.clear();
                buf.extend(window.iter().copied().filter(|x| !is_stale_nan(x.v)));
                window = buf;
            }
            if window.is_empty() {
                continue;
            }
            if let Some(v) = functions::range_fn_value(rc.func, window, range_start, range_end, rc.range_ms, t, &[]) {
                self.check_counter_name(rc.func, &s.labels);
                each(i, v);
            }
        }
        self.stopped()
    }

    /// The group table of the aggregation whose input is `input` (a [`RangeCall`]).
    fn group_table(&self, input: &Expr, rc: &RangeCall, grouping: Option<&Grouping>) -> Rc<GroupTable> {
        let key = input as *const Expr as usize;
        if let Some(table) = self.group_tables.borrow().get(&key) {
            return Rc::clone(table);
        }
        let mut index: BTreeMap<Labels, usize> = BTreeMap::new();
        let mut table = GroupTable { group_of: Vec::new(), labels: Vec::new() };
        for s in self.data.series_for(&rc.sel.matchers) {
            if !matches_all(&rc.sel.matchers, &s.labels) {
                table.group_of.push(usize::MAX);
                continue;
            }
            let key = group_labels(&s.labels, grouping);
            let g = match index.get(&key) {
                Some(&g) => g,
                None => {
                    index.insert(key.clone(), table.labels.len());
                    table.labels.push(key);
                    table.labels.len() - 1
                }
            };
            table.group_of.push(g);
        }
        let table = Rc::new(table);
        self.group_tables.borrow_mut().insert(key, Rc::clone(&table));
        table
    }

    /// [`Self::aggregate`] for an input that is a [`RangeCall`]: values and group ids per series
    /// index; labels are cloned only for the elements the aggregation returns.
    fn aggregate_range_call(&self, op: AggOp, input: &Expr, rc: &RangeCall, param: Option<&Expr>, grouping: Option<&Grouping>, t: i64) -> Result<Val, QueryError> {
        let table = self.group_table(input, rc, grouping);
        // A range function's result drops the name unless the function keeps it (and then the
        // selector's series do not have it marked for dropping).
        let drop_name = !functions::range_fn_keeps_name(rc.func);
        let mut values: Vec<(usize, usize, f64)> = Vec::new();
        let mut buf = Vec::new();
        self.range_call_values(rc, t, &mut buf, |i, v| values.push((table.group_of[i], i, v)))?;
        let series = self.data.series_for(&rc.sel.matchers);
        match op {
            AggOp::Topk | AggOp::Bottomk | AggOp::Limitk | AggOp::LimitRatio => {
                let p = match param {
                    Some(p) => self.eval_scalar(p, t)?,
                    None => return Err(exec_err("aggregation needs a parameter")),
                };
                self.check_ratio(op, p);
                let items = values.into_iter().map(|(g, i, v)| (g, (i, v))).collect();
                let kept = aggregate_k_ids(op, p, items, table.labels.len(), |x| x.1, |ratio, x| ratio_sample(ratio, &series[x.0].labels))?;
                Ok(Val::Vector(kept.into_iter().map(|(i, v)| Elem { labels: series[i].labels.clone(), v, drop_name }).collect()))
            }
            _ => {
                let q = match (op, param) {
                    (AggOp::Quantile, Some(p)) => self.eval_scalar(p, t)?,
                    _ => 0.0,
                };
                if op == AggOp::Quantile {
                    self.check_quantile(q);
                }
                let items = values.into_iter().map(|(g, _, v)| (g, v, drop_name));
                let out = aggregate_ids(op, q, items, table.labels.len());
                Ok(Val::Vector(out.into_iter().map(|(g, v, drop_name)| Elem { labels: table.labels[g].clone(), v, drop_name }).collect()))
            }
        }
    }

    fn subquery(&self, expr: &Expr, range_ms: i64, step_ms: Option<i64>, offset_ms: i64, at: Option<At>, t: i64) -> Result<Vec<Series>, QueryError> {
        let end = self.reference_time(at, offset_ms, t);
        let step = step_ms.unwrap_or(self.limits.subquery_step_default_ms).max(1);
        let first = subquery_first_step(end.saturating_sub(range_ms), step);
        // Every step holds at least one point in Prometheus's accounting: refuse a subquery
        // whose step count alone exceeds the sample budget before evaluating any of it.
        let steps = if end >= first { ((end as i128 - first as i128) / step as i128) as u128 + 1 } else { 0 };
        if steps.saturating_add(self.fetched_samples as u128) > self.limits.samples_max as u128 {
            return Err(QueryError::TooManySamples { max: self.limits.samples_max });
        }
        let mut series: BTreeMap<Labels, Series> = BTreeMap::new();
        let mut points = 0usize;
        let mut s = first;
        while s <= end {
            self.poll()?;
            match self.eval(expr, s)? {
                Val::Scalar(v) => push_point(&mut series, Labels::empty(), false, s, v),
                Val::Vector(vec) => {
                    points += vec.len();
                    for e in vec {
                        push_point(&mut series, e.labels, e.drop_name, s, e.v);
                    }
                }
                _ => return Err(exec_err("subquery expression must be an instant vector or scalar")),
            }
            points += 1;
            if points.saturating_add(self.fetched_samples) > self.limits.samples_max {
                return Err(QueryError::TooManySamples { max: self.limits.samples_max });
            }
            self.check_bytes(points.saturating_mul(SAMPLE_BYTES))?;
            s = match s.checked_add(step) {
                Some(n) => n,
                None => break,
            };
        }
        Ok(series.into_values().collect())
    }

    pub fn eval_scalar(&self, e: &Expr, t: i64) -> Result<f64, QueryError> {
        match self.eval(e, t)? {
            Val::Scalar(v) => Ok(v),
            _ => Err(exec_err("expected a scalar")),
        }
    }

    pub fn eval_vector(&self, e: &Expr, t: i64) -> Result<Vec<Elem>, QueryError> {
        match self.eval(e, t)? {
            Val::Vector(v) => Ok(v),
            _ => Err(exec_err("expected an instant vector")),
        }
    }

    pub fn eval_matrix(&self, e: &Expr, t: i64) -> Result<Vec<Series>, QueryError> {
        match self.eval(e, t)? {
            Val::Matrix(m) => Ok(m),
            _ => Err(exec_err("expected a range vector")),
        }
    }

    pub fn eval(&self, e: &Expr, t: i64) -> Result<Val, QueryError> {
        match e {
            Expr::Number(v) => Ok(Val::Scalar(*v)),
            Expr::String(s) => Ok(Val::Str(s.clone())),
            Expr::Paren(inner) => self.eval(inner, t),
            Expr::Vector(sel) => {
                let vec = self.select_instant(sel, t).into_iter().map(|(e, _)| e).collect();
                self.stopped()?;
                Ok(Val::Vector(vec))
            }
            Expr::Matrix { selector, range_ms } => {
                let matrix = self.select_range(selector, *range_ms, t);
                self.stopped()?;
                Ok(Val::Matrix(matrix))
            }
            Expr::Subquery { expr, range_ms, step_ms, offset_ms, at } => {
                Ok(Val::Matrix(self.subquery(expr, *range_ms, *step_ms, *offset_ms, *at, t)?))
            }
            Expr::Neg(inner) => match self.eval(inner, t)? {
                Val::Scalar(v) => Ok(Val::Scalar(-v)),
                Val::Vector(vec) => Ok(Val::Vector(
                    vec.into_iter().map(|e| Elem { labels: e.labels, v: -e.v, drop_name: true }).collect(),
                )),
                _ => Err(exec_err("unary minus needs a scalar or an instant vector")),
            },
            Expr::Binary { op, lhs, rhs, matching, return_bool } => self.binary(*op, lhs, rhs, matching, *return_bool, t),
            Expr::Aggregate { op, expr, param, grouping } => self.aggregate(*op, expr, param.as_deref(), grouping.as_ref(), t),
            Expr::Call { func, args } => functions::call(self, func, args, t),
        }
    }

    fn binary(&self, op: BinOp, lhs: &Expr, rhs: &Expr, matching: &Matching, return_bool: bool, t: i64) -> Result<Val, QueryError> {
        let lk = lhs.kind();
        let rk = rhs.kind();
        if lk == ValueKind::Scalar && rk == ValueKind::Scalar {
            let l = self.eval_scalar(lhs, t)?;
            let r = self.eval_scalar(rhs, t)?;
            if op.is_comparison() {
                return Ok(Val::Scalar(if compare(op, l, r) { 1.0 } else { 0.0 }));
            }
            return Ok(Val::Scalar(arith(op, l, r)));
        }
        if op.is_set() {
            let l = self.eval_vector(lhs, t)?;
            let r = self.eval_vector(rhs, t)?;
            return Ok(Val::Vector(set_op(op, l, r, matching)));
        }
        if lk == ValueKind::Vector && rk == ValueKind::Vector {
            if matching.fill_lhs.is_some() || matching.fill_rhs.is_some() {
                return Err(QueryError::Unsupported("fill modifiers in vector matching".into()));
            }
            let l = self.eval_vector(lhs, t)?;
            let r = self.eval_vector(rhs, t)?;
            return vector_binop(op, l, r, matching, return_bool).map(Val::Vector);
        }
        // One side is a scalar.
        let (vec, scalar, swapped) = if lk == ValueKind::Vector {
            (self.eval_vector(lhs, t)?, self.eval_scalar(rhs, t)?, false)
        } else {
            (self.eval_vector(rhs, t)?, self.eval_scalar(lhs, t)?, true)
        };
        let mut out = Vec::with_capacity(vec.len());
        for e in vec {
            let (l, r) = if swapped { (scalar, e.v) } else { (e.v, scalar) };
            if op.is_comparison() {
                let keep = compare(op, l, r);
                if return_bool {
                    out.push(Elem { labels: e.labels, v: if keep { 1.0 } else { 0.0 }, drop_name: true });
                } else if keep {
                    out.push(Elem { labels: e.labels, v: e.v, drop_name: e.drop_name });
                }
            } else {
                out.push(Elem { labels: e.labels, v: arith(op, l, r), drop_name: true });
            }
        }
        Ok(Val::Vector(out))
    }

    fn aggregate(&self, op: AggOp, expr: &Expr, param: Option<&Expr>, grouping: Option<&Grouping>, t: i64) -> Result<Val, QueryError> {
        if op != AggOp::CountValues {
            if let Some(rc) = range_call(expr) {
                return self.aggregate_range_call(op, expr, &rc, param, grouping, t);
            }
        }
        let input = self.eval_vector(expr, t)?;
        match op {
            AggOp::Topk | AggOp::Bottomk | AggOp::Limitk | AggOp::LimitRatio => {
                let p = match param {
                    Some(p) => self.eval_scalar(p, t)?,
                    None => return Err(exec_err("aggregation needs a parameter")),
                };
                self.check_ratio(op, p);
                return aggregate_k(op, p, input, grouping).map(Val::Vector);
            }
            AggOp::CountValues => {
                let label = match param.map(|p| self.eval(p, t)).transpose()? {
                    Some(Val::Str(s)) => s,
                    _ => return Err(exec_err("count_values needs a string parameter")),
                };
                return count_values(&label, input, grouping).map(Val::Vector);
            }
            _ => {}
        }
        let q = match (op, param) {
            (AggOp::Quantile, Some(p)) => self.eval_scalar(p, t)?,
            _ => 0.0,
        };
        if op == AggOp::Quantile {
            self.check_quantile(q);
        }
        Ok(Val::Vector(aggregate_simple(op, q, input, grouping)))
    }
}

fn push_point(series: &mut BTreeMap<Labels, Series>, labels: Labels, drop_name: bool, t: i64, v: f64) {
    let entry = series.entry(labels.clone()).or_insert_with(|| Series { labels, samples: Vec::new(), drop_name: false });
    entry.drop_name |= drop_name;
    entry.samples.push(Sample::new(t, v));
}

pub(crate) fn arith(op: BinOp, l: f64, r: f64) -> f64 {
    match op {
        BinOp::Add => l + r,
        BinOp::Sub => l - r,
        BinOp::Mul => l * r,
        BinOp::Div => l / r,
        BinOp::Mod => l % r,
        BinOp::Pow => l.powf(r),
        BinOp::Atan2 => l.atan2(r),
        _ => f64::NAN,
    }
}

pub(crate) fn compare(op: BinOp, l: f64, r: f64) -> bool {
    match op {
        BinOp::Eq => l == r,
        BinOp::Ne => l != r,
        BinOp::Gt => l > r,
        BinOp::Lt => l < r,
        BinOp::Ge => l >= r,
        BinOp::Le => l <= r,
        _ => false,
    }
}

/// The label set two elements are matched on.
fn signature(l: &Labels, matching: &Matching) -> Labels {
    if matching.on {
        filter_labels(l, |n| matching.labels.iter().any(|m| m == n))
    } else {
        filter_labels(l, |n| n != METRIC_NAME_LABEL && !matching.labels.iter().any(|m| m == n))
    }
}

fn set_op(op: BinOp, lhs: Vec<Elem>, rhs: Vec<Elem>, matching: &Matching) -> Vec<Elem> {
    match op {
        BinOp::And => {
            if lhs.is_empty() || rhs.is_empty() {
                return Vec::new();
            }
            let sigs: BTreeSet<Labels> = rhs.iter().map(|e| signature(&e.labels, matching)).collect();
            lhs.into_iter().filter(|e| sigs.contains(&signature(&e.labels, matching))).collect()
        }
        BinOp::Or => {
            let sigs: BTreeSet<Labels> = lhs.iter().map(|e| signature(&e.labels, matching)).collect();
            let mut out = lhs;
            out.extend(rhs.into_iter().filter(|e| !sigs.contains(&signature(&e.labels, matching))));
            out
        }
        BinOp::Unless => {
            if rhs.is_empty() {
                return lhs;
            }
            let sigs: BTreeSet<Labels> = rhs.iter().map(|e| signature(&e.labels, matching)).collect();
            lhs.into_iter().filter(|e| !sigs.contains(&signature(&e.labels, matching))).collect()
        }
        _ => Vec::new(),
    }
}

fn vector_binop(op: BinOp, lhs: Vec<Elem>, rhs: Vec<Elem>, matching: &Matching, return_bool: bool) -> Result<Vec<Elem>, QueryError> {
    if lhs.is_empty() || rhs.is_empty() {
        return Ok(Vec::new());
    }
    let one_to_many = matches!(matching.card, Card::OneToMany(_));
    let include: &[String] = match &matching.card {
        Card::ManyToOne(l) | Card::OneToMany(l) => l,
        _ => &[],
    };
    let (many, one) = if one_to_many { (rhs, lhs) } else { (lhs, rhs) };
    let mut one_sigs: BTreeMap<Labels, usize> = BTreeMap::new();
    for (i, e) in one.iter().enumerate() {
        let sig = signature(&e.labels, matching);
        if let Some(&j) = one_sigs.get(&sig) {
            let side = if one_to_many { "left" } else { "right" };
            return Err(exec_err(format!(
                "found duplicate series for the match group {} on the {} hand-side of the operation: [{}, {}];many-to-many matching not allowed: matching labels must be unique on one side",
                prom_labels(&sig),
                side,
                prom_labels(&e.labels),
                prom_labels(&one[j].labels)
            )));
        }
        one_sigs.insert(sig, i);
    }
    let mut matched: BTreeMap<Labels, BTreeSet<Labels>> = BTreeMap::new();
    let mut out = Vec::new();
    for m in many {
        let sig = signature(&m.labels, matching);
        let Some(&j) = one_sigs.get(&sig) else { continue };
        let o = &one[j];
        let (l, r) = if one_to_many { (o.v, m.v) } else { (m.v, o.v) };
        let (value, keep) = if op.is_comparison() { (l, compare(op, l, r)) } else { (arith(op, l, r), true) };
        let labels = result_labels(&m.labels, &o.labels, op, matching, include);
        // Cardinality is checked before comparison filtering, as in Prometheus 3.x: a
        // one-to-one comparison with two matches fails even if only one would survive.
        let seen = matched.entry(sig).or_default();
        if matching.card == Card::OneToOne {
            if !seen.is_empty() {
                return Err(exec_err("multiple matches for labels: many-to-one matching must be explicit (group_left/group_right)"));
            }
            seen.insert(Labels::empty());
        } else if !seen.insert(labels.clone()) {
            return Err(exec_err("multiple matches for labels: grouping labels must ensure unique results"));
        }
        let value = if return_bool {
            if keep {
                1.0
            } else {
                0.0
            }
        } else if !keep {
            continue;
        } else {
            value
        };
        out.push(Elem { labels, v: value, drop_name: m.drop_name || return_bool });
    }
    Ok(out)
}

fn result_labels(many: &Labels, one: &Labels, op: BinOp, matching: &Matching, include: &[String]) -> Labels {
    let mut labels = if op.is_comparison() { many.clone() } else { without_name(many) };
    if matching.card == Card::OneToOne {
        labels = if matching.on {
            filter_labels(&labels, |n| matching.labels.iter().any(|m| m == n))
        } else {
            filter_labels(&labels, |n| !matching.labels.iter().any(|m| m == n))
        };
    }
    for name in include {
        labels = set_label(&labels, name, one.get(name));
    }
    labels
}

/// The labels that identify an element's group.
pub(crate) fn group_labels(l: &Labels, grouping: Option<&Grouping>) -> Labels {
    match grouping {
        None => Labels::empty(),
        Some(Grouping::By(names)) => filter_labels(l, |n| names.iter().any(|m| m == n)),
        Some(Grouping::Without(names)) => filter_labels(l, |n| n != METRIC_NAME_LABEL && !names.iter().any(|m| m == n)),
    }
}

/// Neumaier's improved Kahan summation step, as Prometheus's `kahansum.Inc`.
pub(crate) fn kahan_inc(inc: f64, sum: f64, c: f64) -> (f64, f64) {
    let t = sum + inc;
    let c = if t.is_infinite() {
        0.0
    } else if sum.abs() >= inc.abs() {
        c + ((sum - t) + inc)
    } else {
        c + ((inc - t) + sum)
    };
    (t, c)
}

struct Group {
    id: usize,
    drop_name: bool,
    value: f64,
    kahan_c: f64,
    mean: f64,
    count: f64,
    incremental_mean: bool,
    values: Vec<f64>,
}

/// Group ids of `input` by `grouping`, in order of first appearance, and each group's labels.
fn group_ids(input: &[Elem], grouping: Option<&Grouping>) -> (Vec<usize>, Vec<Labels>) {
    let mut index: BTreeMap<Labels, usize> = BTreeMap::new();
    let mut labels = Vec::new();
    let ids = input
        .iter()
        .map(|e| {
            let key = group_labels(&e.labels, grouping);
            match index.get(&key) {
                Some(&g) => g,
                None => {
                    index.insert(key.clone(), labels.len());
                    labels.push(key);
                    labels.len() - 1
                }
            }
        })
        .collect();
    (ids, labels)
}

fn aggregate_simple(op: AggOp, q: f64, input: Vec<Elem>, grouping: Option<&Grouping>) -> Vec<Elem> {
    let (ids, labels) = group_ids(&input, grouping);
    let items = ids.into_iter().zip(input).map(|(g, e)| (g, e.v, e.drop_name));
    aggregate_ids(op, q, items, labels.len())
        .into_iter()
        .map(|(g, v, drop_name)| Elem { labels: labels[g].clone(), v, drop_name })
        .collect()
}

/// The simple aggregations over `(group id, value, drop_name)` items, ids below `group_count`;
/// returns `(group id, value, drop_name)` per group in order of first appearance.
fn aggregate_ids(op: AggOp, q: f64, input: impl IntoIterator<Item = (usize, f64, bool)>, group_count: usize) -> Vec<(usize, f64, bool)> {
    // Group id -> index into `groups` (usize::MAX: not seen yet).
    let mut slot = vec![usize::MAX; group_count];
    let mut groups: Vec<Group> = Vec::new();
    for (id, f, drop_name) in input {
        let gi = match slot[id] {
            i if i != usize::MAX => i,
            _ => {
                slot[id] = groups.len();
                let value = match op {
                    AggOp::Group => 1.0,
                    AggOp::Stddev | AggOp::Stdvar => {
                        if f.is_nan() || f.is_infinite() {
                            f64::NAN
                        } else {
                            0.0
                        }
                    }
                    _ => f,
                };
                groups.push(Group {
                    id,
                    drop_name,
                    value,
                    kahan_c: 0.0,
                    mean: f,
                    count: 1.0,
                    incremental_mean: false,
                    // Only quantile reads the values; the others need no allocation per group.
                    values: if op == AggOp::Quantile { vec![f] } else { Vec::new() },
                });
                continue;
            }
        };
        let g = &mut groups[gi];
        g.drop_name |= drop_name;
        match op {
            AggOp::Sum => {
                let (v, c) = kahan_inc(f, g.value, g.kahan_c);
                g.value = v;
                g.kahan_c = c;
            }
            AggOp::Avg => {
                g.count += 1.0;
                if !g.incremental_mean {
                    let (v, c) = kahan_inc(f, g.value, g.kahan_c);
                    if !v.is_infinite() {
                        g.value = v;
                        g.kahan_c = c;
                        continue;
                    }
                    g.incremental_mean = true;
                    g.mean = g.value / (g.count - 1.0);
                    g.kahan_c /= g.count - 1.0;
                }
                let qq = (g.count - 1.0) / g.count;
                let (m, c) = kahan_inc(f / g.count, qq * g.mean, qq * g.kahan_c);
                g.mean = m;
                g.kahan_c = c;
            }
            AggOp::Max => {
                if g.value < f || g.value.is_nan() {
                    g.value = f;
                }
            }
            AggOp::Min => {
                if g.value > f || g.value.is_nan() {
                    g.value = f;
                }
            }
            AggOp::Count => g.count += 1.0,
            AggOp::Stddev | AggOp::Stdvar => {
                g.count += 1.0;
                let delta = f - g.mean;
                g.mean += delta / g.count;
                g.value += delta * (f - g.mean);
            }
            AggOp::Quantile => g.values.push(f),
            _ => {}
        }
    }
    groups
        .into_iter()
        .map(|g| {
            let v = match op {
                AggOp::Avg => {
                    if g.incremental_mean {
                        g.mean + g.kahan_c
                    } else {
                        g.value / g.count + g.kahan_c / g.count
                    }
                }
                AggOp::Count => g.count,
                AggOp::Stdvar => g.value / g.count,
                AggOp::Stddev => (g.value / g.count).sqrt(),
                AggOp::Quantile => functions::quantile(q, g.values),
                AggOp::Sum => {
                    if g.value.is_infinite() {
                        g.value
                    } else {
                        g.value + g.kahan_c
                    }
                }
                _ => g.value,
            };
            (g.id, v, g.drop_name)
        })
        .collect()
}

/// Prometheus's `labels.Hash()`: xxhash64 of name, 0xff, value, 0xff for each label.
pub(crate) fn prom_labels_hash(l: &Labels) -> u64 {
    let mut bytes = Vec::with_capacity(l.bytes() + 2 * l.len());
    for x in l.iter() {
        bytes.extend_from_slice(x.name.as_bytes());
        bytes.push(0xff);
        bytes.extend_from_slice(x.value.as_bytes());
        bytes.push(0xff);
    }
    xxhash_rust::xxh64::xxh64(&bytes, 0)
}

fn ratio_sample(ratio: f64, l: &Labels) -> bool {
    let offset = prom_labels_hash(l) as f64 / u64::MAX as f64;
    (ratio >= 0.0 && offset < ratio) || (ratio < 0.0 && offset >= 1.0 + ratio)
}

fn aggregate_k(op: AggOp, param: f64, input: Vec<Elem>, grouping: Option<&Grouping>) -> Result<Vec<Elem>, QueryError> {
    let (ids, labels) = group_ids(&input, grouping);
    let items = ids.into_iter().zip(input).collect();
    aggregate_k_ids(op, param, items, labels.len(), |e| e.v, |ratio, e| ratio_sample(ratio, &e.labels))
}

/// topk, bottomk, limitk and limit_ratio over `(group id, element)` items, ids below
/// `group_count`; `value` reads an element's value, `in_ratio` decides limit_ratio's sample.
fn aggregate_k_ids<T>(
    op: AggOp,
    param: f64,
    input: Vec<(usize, T)>,
    group_count: usize,
    value: impl Fn(&T) -> f64,
    in_ratio: impl Fn(f64, &T) -> bool,
) -> Result<Vec<T>, QueryError> {
    let mut k = 0usize;
    let mut ratio = 0.0;
    if param.is_nan() {
        return Err(exec_err(if op == AggOp::LimitRatio { "Ratio value is NaN" } else { "Parameter value is NaN" }));
    }
    if op == AggOp::LimitRatio {
        ratio = param.clamp(-1.0, 1.0);
    } else {
        if param < i64::MIN as f64 || param > i64::MAX as f64 {
            return Err(exec_err(format!("Scalar value {} overflows int64", format_float(param))));
        }
        if param.is_nan() || param < 1.0 {
            return Ok(Vec::new());
        }
        k = (param as i64).min(input.len() as i64).max(0) as usize;
        if k == 0 {
            return Ok(Vec::new());
        }
    }
    // Group id -> index into `groups` (usize::MAX: not seen yet).
    let mut slot = vec![usize::MAX; group_count];
    let mut groups: Vec<Vec<T>> = Vec::new();
    for (id, e) in input {
        if slot[id] == usize::MAX {
            slot[id] = groups.len();
            groups.push(Vec::new());
        }
        let g = &mut groups[slot[id]];
        match op {
            AggOp::Topk | AggOp::Bottomk => {
                if g.len() < k {
                    g.push(e);
                    continue;
                }
                // The element that would be on top of Prometheus's heap: the smallest for topk
                // (NaN smallest of all), the largest for bottomk (NaN first as well).
                let worst = (0..g.len())
                    .reduce(|a, b| {
                        let (va, vb) = (value(&g[a]), value(&g[b]));
                        let b_worse = if op == AggOp::Topk {
                            !va.is_nan() && (vb.is_nan() || vb < va)
                        } else {
                            !va.is_nan() && (vb.is_nan() || vb > va)
                        };
                        if b_worse {
                            b
                        } else {
                            a
                        }
                    })
                    .unwrap_or(0);
                let (w, ev) = (value(&g[worst]), value(&e));
                let better = if op == AggOp::Topk {
                    w < ev || (w.is_nan() && !ev.is_nan())
                } else {
                    w > ev || (w.is_nan() && !ev.is_nan())
                };
                if better {
                    g[worst] = e;
                }
            }
            AggOp::Limitk => {
                if g.len() < k {
                    g.push(e);
                }
            }
            _ => {
                if in_ratio(ratio, &e) {
                    g.push(e);
                }
            }
        }
    }
    let mut out = Vec::new();
    for mut g in groups {
        match op {
            AggOp::Topk => g.sort_by(|a, b| desc_nan_last(value(a), value(b))),
            AggOp::Bottomk => g.sort_by(|a, b| asc_nan_last(value(a), value(b))),
            _ => {}
        }
        out.extend(g);
    }
    Ok(out)
}

pub(crate) fn desc_nan_last(a: f64, b: f64) -> std::cmp::Ordering {
    match (a.is_nan(), b.is_nan()) {
        (true, true) => std::cmp::Ordering::Equal,
        (true, false) => std::cmp::Ordering::Greater,
        (false, true) => std::cmp::Ordering::Less,
        _ => b.partial_cmp(&a).unwrap_or(std::cmp::Ordering::Equal),
    }
}

pub(crate) fn asc_nan_last(a: f64, b: f64) -> std::cmp::Ordering {
    match (a.is_nan(), b.is_nan()) {
        (true, true) => std::cmp::Ordering::Equal,
        (true, false) => std::cmp::Ordering::Greater,
        (false, true) => std::cmp::Ordering::Less,
        _ => a.partial_cmp(&b).unwrap_or(std::cmp::Ordering::Equal),
    }
}

/// Go's `strconv.FormatFloat(f, 'f', -1, 64)` for label values.
pub(crate) fn format_float(f: f64) -> String {
    if f.is_nan() {
        "NaN".into()
    } else if f == f64::INFINITY {
        "+Inf".into()
    } else if f == f64::NEG_INFINITY {
        "-Inf".into()
    } else {
        format!("{f}")
    }
}

fn count_values(label: &str, input: Vec<Elem>, grouping: Option<&Grouping>) -> Result<Vec<Elem>, QueryError> {
    if label.is_empty() {
        return Err(exec_err(format!("invalid label name {label:?}")));
    }
    let mut index: BTreeMap<Labels, usize> = BTreeMap::new();
    let mut out: Vec<Elem> = Vec::new();
    for e in input {
        let with_value = set_label(&e.labels, label, &format_float(e.v));
        let key = match grouping {
            Some(Grouping::By(names)) => {
                filter_labels(&with_value, |n| n == label || names.iter().any(|m| m == n))
            }
            Some(Grouping::Without(names)) => filter_labels(&with_value, |n| {
                n == label || (n != METRIC_NAME_LABEL && !names.iter().any(|m| m == n))
            }),
            None => filter_labels(&with_value, |n| n == label),
        };
        match index.get(&key) {
            Some(&i) => out[i].v += 1.0,
            None => {
                index.insert(key.clone(), out.len());
                out.push(Elem { labels: key, v: 1.0, drop_name: false });
            }
        }
    }
    Ok(out)
}

/// Drops names marked for dropping and refuses duplicate label sets.
fn finish_vector(vec: Vec<Elem>) -> Result<Vec<Elem>, QueryError> {
    let mut seen = BTreeSet::new();
    let mut out = Vec::with_capacity(vec.len());
    for mut e in vec {
        if e.drop_name {
            e.labels = without_name(&e.labels);
            e.drop_name = false;
        }
        if !seen.insert(e.labels.clone()) {
            return Err(exec_err("vector cannot contain metrics with the same labelset"));
        }
        out.push(e);
    }
    Ok(out)
}

fn check_expr(expr: &Expr) -> Result<(), QueryError> {
    match expr {
        Expr::Number(_) | Expr::String(_) | Expr::Vector(_) => Ok(()),
        Expr::Matrix { .. } => Ok(()),
        Expr::Subquery { expr, .. } | Expr::Neg(expr) | Expr::Paren(expr) => check_expr(expr),
        Expr::Binary { lhs, rhs, .. } => {
            check_expr(lhs)?;
            check_expr(rhs)
        }
        Expr::Aggregate { expr, param, .. } => {
            if let Some(p) = param {
                check_expr(p)?;
            }
            check_expr(expr)
        }
        Expr::Call { func, args } => {
            functions::check_supported(func)?;
            args.iter().try_for_each(check_expr)
        }
    }
}

/// Evaluates `expr` at `t_ms`.
pub fn eval_instant(expr: &Expr, t_ms: i64, data: &FetchedData, limits: &QueryLimits) -> Result<Value, QueryError> {
    eval_instant_with(expr, t_ms, data, limits, &NoInterrupt)
}

/// [`eval_instant`], polling `interrupt` per batch of series (and per subquery step).
pub fn eval_instant_with(expr: &Expr, t_ms: i64, data: &FetchedData, limits: &QueryLimits, interrupt: &dyn Interrupt) -> Result<Value, QueryError> {
    eval_instant_annotated(expr, t_ms, data, limits, interrupt).map(|(value, _)| value)
}

/// [`eval_instant_with`], also answering the warnings and infos the query raised.
pub fn eval_instant_annotated(expr: &Expr, t_ms: i64, data: &FetchedData, limits: &QueryLimits, interrupt: &dyn Interrupt) -> Result<(Value, Annotations), QueryError> {
    check_expr(expr)?;
    let ev = Evaluator::new(data, t_ms, t_ms, *limits, interrupt)?;
    let value = instant_value(&ev, expr, t_ms)?;
    Ok((value, ev.take_annotations()))
}

fn instant_value(ev: &Evaluator, expr: &Expr, t_ms: i64) -> Result<Value, QueryError> {
    Ok(match ev.eval(expr, t_ms)? {
        Val::Scalar(v) => Value::Scalar { t: t_ms, v },
        Val::Str(s) => Value::String { t: t_ms, v: s },
        Val::Vector(vec) => Value::Vector(
            finish_vector(vec)?.into_iter().map(|e| VectorSample { labels: e.labels, t: t_ms, v: e.v }).collect(),
        ),
        Val::Matrix(m) => {
            let mut seen = BTreeSet::new();
            let mut out = Vec::with_capacity(m.len());
            for s in m {
                let labels = if s.drop_name { without_name(&s.labels) } else { s.labels };
                if !seen.insert(labels.clone()) {
                    return Err(exec_err("vector cannot contain metrics with the same labelset"));
                }
                out.push(MatrixSeries { labels, samples: s.samples });
            }
            Value::Matrix(out)
        }
    })
}

/// Evaluates `expr` at every step `start_ms, start_ms + step_ms, …, ≤ end_ms`. Series come back
/// sorted by labels.
pub fn eval_range(expr: &Expr, start_ms: i64, end_ms: i64, step_ms: i64, data: &FetchedData, limits: &QueryLimits) -> Result<Vec<MatrixSeries>, QueryError> {
    eval_range_with(expr, start_ms, end_ms, step_ms, data, limits, &NoInterrupt)
}

/// [`eval_range`], polling `interrupt` once per step and per batch of series.
pub fn eval_range_with(
    expr: &Expr,
    start_ms: i64,
    end_ms: i64,
    step_ms: i64,
    data: &FetchedData,
    limits: &QueryLimits,
    interrupt: &dyn Interrupt,
) -> Result<Vec<MatrixSeries>, QueryError> {
    eval_range_annotated(expr, start_ms, end_ms, step_ms, data, limits, interrupt).map(|(series, _)| series)
}

/// [`eval_range_with`], also answering the warnings and infos the query raised.
pub fn eval_range_annotated(
    expr: &Expr,
    start_ms: i64,
    end_ms: i64,
    step_ms: i64,
    data: &FetchedData,
    limits: &QueryLimits,
    interrupt: &dyn Interrupt,
) -> Result<(Vec<MatrixSeries>, Annotations), QueryError> {
    check_expr(expr)?;
    match expr.kind() {
        ValueKind::Scalar | ValueKind::Vector => {}
        ValueKind::Matrix => {
            return Err(exec_err("invalid expression type \"range vector\" for range query, must be Scalar or instant Vector"))
        }
        ValueKind::String => {
            return Err(exec_err("invalid expression type \"string\" for range query, must be Scalar or instant Vector"))
        }
    }
    if step_ms <= 0 {
        return Err(exec_err("zero or negative query resolution step widths are not accepted. Try a positive integer"));
    }
    if end_ms < start_ms {
        return Err(exec_err("end timestamp must not be before start time"));
    }
    let steps = ((end_ms - start_ms) / step_ms) as u128 + 1;
    if steps > limits.steps_max as u128 {
        return Err(QueryError::TooManySteps { max: limits.steps_max });
    }
    let ev = Evaluator::new(data, start_ms, end_ms, *limits, interrupt)?;
    if let Some(rc) = range_call(expr) {
        if let Some(out) = range_call_series(&ev, &rc, start_ms, end_ms, step_ms)? {
            return Ok((out, ev.take_annotations()));
        }
    }
    let mut series: BTreeMap<Labels, Vec<Sample>> = BTreeMap::new();
    let mut points = 0usize;
    let mut output_label_bytes = 0usize;
    let mut t = start_ms;
    while t <= end_ms {
        ev.poll()?;
        let vec = match ev.eval(expr, t)? {
            Val::Scalar(v) => vec![Elem { labels: Labels::empty(), v, drop_name: false }],
            Val::Vector(v) => v,
            _ => return Err(exec_err("range query step did not produce a scalar or an instant vector")),
        };
        for e in finish_vector(vec)? {
            if !series.contains_key(&e.labels) {
                output_label_bytes = output_label_bytes.saturating_add(e.labels.bytes());
            }
            let samples = series.entry(e.labels).or_default();
            if samples.last().is_some_and(|s| s.t == t) {
                return Err(exec_err("vector cannot contain metrics with the same labelset"));
            }
            samples.push(Sample::new(t, e.v));
            points += 1;
        }
        if points.saturating_add(ev.fetched_samples) > limits.samples_max {
            return Err(QueryError::TooManySamples { max: limits.samples_max });
        }
        ev.check_bytes(points.saturating_mul(SAMPLE_BYTES).saturating_add(output_label_bytes))?;
        t = match t.checked_add(step_ms) {
            Some(n) => n,
            None => break,
        };
    }
    let series = series.into_iter().map(|(labels, samples)| MatrixSeries { labels, samples }).collect();
    Ok((series, ev.take_annotations()))
}

/// A range query whose expression is a [`RangeCall`], evaluated series by series: the window
/// slides over each series with two indices, and each output series' labels are computed once.
/// Gives the step-by-step evaluation's answer; returns `None` when that evaluation would fail
/// (two series with the same labels once the name is dropped, or a limit crossed), so that the
/// caller re-runs it step by step for the exact error it reports at the exact step.
fn range_call_series(ev: &Evaluator, rc: &RangeCall, start_ms: i64, end_ms: i64, step_ms: i64) -> Result<Option<Vec<MatrixSeries>>, QueryError> {
    let keep_name = functions::range_fn_keeps_name(rc.func);
    let mut out: BTreeMap<Labels, Vec<Sample>> = BTreeMap::new();
    let mut points = 0usize;
    let mut output_label_bytes = 0usize;
    let mut buf: Vec<Sample> = Vec::new();
    for (i, s) in ev.data.series_for(&rc.sel.matchers).iter().enumerate() {
        if i % INTERRUPT_SERIES_BATCH == 0 {
            ev.poll()?;
        }
        if !matches_all(&rc.sel.matchers, &s.labels) {
            continue;
        }
        let mut samples: Vec<Sample> = Vec::new();
        let (mut lo, mut hi) = (0usize, 0usize);
        let mut t = start_ms;
        while t <= end_ms {
            let rt = ev.reference_time(rc.sel.at, rc.sel.offset_ms, t);
            let lo_t = rt.saturating_sub(rc.range_ms);
            // Both bounds only grow with t (the offset and @ are fixed), so they slide; the
            // same positions as select_range's partition points.
            while lo < s.samples.len() && s.samples[lo].t <= lo_t {
                lo += 1;
            }
            hi = hi.max(lo);
            while hi < s.samples.len() && s.samples[hi].t <= rt {
                hi += 1;
            }
            let mut window = &s.samples[lo..hi];
            if window.iter().any(|x| is_stale_nan(x.v)) {
                buf.clear();
                buf.extend(window.iter().copied().filter(|x| !is_stale_nan(x.v)));
                window = &buf;
            }
            if !window.is_empty() {
                // As `functions::matrix_fn` computes them.
                let range_end = match rc.sel.at {
                    Some(At::Time(x)) => x,
                    Some(At::Start) => ev.start,
                    Some(At::End) => ev.end,
                    None => t,
                } - rc.sel.offset_ms;
                let range_start = range_end - rc.range_ms;
                if let Some(v) = functions::range_fn_value(rc.func, window, range_start, range_end, rc.range_ms, t, &[]) {
                    samples.push(Sample::new(t, v));
                }
            }
            t = match t.checked_add(step_ms) {
                Some(n) => n,
                None => break,
            };
        }
        if samples.is_empty() {
            continue;
        }
        ev.check_counter_name(rc.func, &s.labels);
        let labels = if keep_name { s.labels.clone() } else { without_name(&s.labels) };
        if out.contains_key(&labels) {
            return Ok(None);
        }
        points = points.saturating_add(samples.len());
        output_label_bytes = output_label_bytes.saturating_add(labels.bytes());
        out.insert(labels, samples);
    }
    // Points and label bytes only grow step by step, so within the limits at the end means
    // within them at every step.
    if points.saturating_add(ev.fetched_samples) > ev.limits.samples_max
        || ev.check_bytes(points.saturating_mul(SAMPLE_BYTES).saturating_add(output_label_bytes)).is_err()
    {
        return Ok(None);
    }
    Ok(Some(out.into_iter().map(|(labels, samples)| MatrixSeries { labels, samples }).collect()))
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::super::{parse, plan_range, FetchedSeries, SAMPLE_BYTES};
    use super::*;

    fn data_for(query: &str, series: usize, samples: i64) -> (Expr, FetchedData) {
        let expr = parse(query).unwrap();
        let plan = plan_range(&expr, 0, 600_000, 1_000, 300_000);
        let fetched: Vec<FetchedSeries> = (0..series)
            .map(|i| FetchedSeries {
                labels: Labels::from_pairs(&[("__name__", "m"), ("i", &i.to_string())]),
                samples: (0..samples).map(|t| Sample::new(t * 1_000, t as f64)).collect(),
            })
            .collect();
        let data = FetchedData::new(&plan, vec![fetched]);
        (expr, data)
    }

    // Goal: the interrupt is polled once per step and per batch of series, and its error stops
    // evaluation. Method: an interrupt that says stop on its Nth poll; the error comes back and
    // no more polls happen after it.
    #[test]
    fn interrupt_stops_range_evaluation_with_its_error() {
        let (expr, data) = data_for("m", 3, 600);
        let polls = Cell::new(0usize);
        let stop_at = 5;
        let interrupt = || {
            polls.set(polls.get() + 1);
            if polls.get() >= stop_at {
                return Err(QueryError::Timeout("deadline passed (limit timeout_ms=1)".into()));
            }
            Ok(())
        };
        let err = eval_range_with(&expr, 0, 600_000, 1_000, &data, &QueryLimits::default(), &interrupt).unwrap_err();
        assert_eq!(err, QueryError::Timeout("deadline passed (limit timeout_ms=1)".into()));
        assert_eq!(polls.get(), stop_at);
        // Without an interrupt the same query completes: 601 steps, 3 series.
        let ok = eval_range(&expr, 0, 600_000, 1_000, &data, &QueryLimits::default()).unwrap();
        assert_eq!(ok.len(), 3);
    }

    // Goal: a selector over more series than one batch polls inside the selector, so a query
    // with one step but many series still stops. Method: stop on the second poll (the first is
    // Evaluator::new's); 3 batches of series.
    #[test]
    fn interrupt_polled_per_batch_of_series() {
        let (expr, data) = data_for("m", 3 * INTERRUPT_SERIES_BATCH, 1);
        let polls = Cell::new(0usize);
        let interrupt = || {
            polls.set(polls.get() + 1);
            if polls.get() >= 2 {
                return Err(QueryError::Canceled("client went away".into()));
            }
            Ok(())
        };
        let err = eval_instant_with(&expr, 0, &data, &QueryLimits::default(), &interrupt).unwrap_err();
        assert_eq!(err, QueryError::Canceled("client went away".into()));
        assert_eq!(polls.get(), 2);
    }

    // Goal: the memory estimate counts 16 bytes per sample plus label bytes, for fetched data and
    // for range output, and refuses with TooManyBytes naming the limit.
    #[test]
    fn bytes_max_counts_fetched_and_output() {
        let (expr, data) = data_for("m", 2, 10);
        let label_bytes = 2 * ("__name__".len() + 1 + 1 + 1);
        let fetched = 20 * SAMPLE_BYTES + label_bytes;
        let just_enough = QueryLimits { bytes_max: fetched, ..QueryLimits::default() };
        // Instant query: only the fetched data is held.
        assert!(eval_instant(&expr, 9_000, &data, &just_enough).is_ok());
        let too_small = QueryLimits { bytes_max: fetched - 1, ..QueryLimits::default() };
        let err = eval_instant(&expr, 9_000, &data, &too_small).unwrap_err();
        assert_eq!(err, QueryError::TooManyBytes { bytes: fetched, max: fetched - 1 });
        assert!(err.to_string().contains("bytes_max="), "{err}");
        // Range output adds its points: the first step's two points cross the same budget.
        let err = eval_range(&expr, 0, 9_000, 1_000, &data, &just_enough).unwrap_err();
        assert!(matches!(err, QueryError::TooManyBytes { max, .. } if max == fetched), "{err:?}");
    }

    /// Six counter-like series in three groups, scraped every ~10 s with jitter, resets, NaNs,
    /// staleness markers and a gap, from a seeded RNG.
    fn varied_series() -> Vec<FetchedSeries> {
        let mut rng = crate::determinism::DeterministicRng::from_seed(7);
        (0..6)
            .map(|i| {
                let mut samples = Vec::new();
                let mut v = 0.0;
                for k in 0..60i64 {
                    if i == 3 && (20..30).contains(&k) {
                        continue; // a gap longer than the ranges
                    }
                    let t = k * 10_000 + rng.gen_range(0..3_000i64);
                    v = if rng.gen_bool(0.05) { 0.0 } else { v + rng.gen_range(0..100i64) as f64 };
                    let value = match rng.gen_range(0..40u32) {
                        0 => crate::sample::stale_nan(),
                        1 => f64::NAN,
                        _ => v,
                    };
                    samples.push(Sample::new(t, value));
                }
                let group = ["a", "b", "c"][i % 3];
                FetchedSeries { labels: Labels::from_pairs(&[("__name__", "m"), ("g", group), ("i", &i.to_string())]), samples }
            })
            .collect()
    }

    fn range_with(query: &str, series: &[FetchedSeries], limits: &QueryLimits) -> Result<Vec<MatrixSeries>, QueryError> {
        let expr = parse(query).unwrap();
        let (start, end, step) = (25_000, 700_000, 7_000);
        let plan = plan_range(&expr, start, end, step, limits.lookback_ms);
        let data = FetchedData::new(&plan, vec![series.to_vec(); plan.selectors.len()]);
        eval_range(&expr, start, end, step, &data, limits)
    }

    /// The same range query evaluated the reference way: instant evaluations step by step,
    /// merged by label set.
    fn range_by_steps(query: &str, series: &[FetchedSeries]) -> Vec<MatrixSeries> {
        let expr = parse(query).unwrap();
        let (start, end, step) = (25_000, 700_000, 7_000);
        let plan = plan_range(&expr, start, end, step, QueryLimits::default().lookback_ms);
        let data = FetchedData::new(&plan, vec![series.to_vec(); plan.selectors.len()]);
        let mut out: BTreeMap<Labels, Vec<Sample>> = BTreeMap::new();
        let mut t = start;
        while t <= end {
            let evaluator = Evaluator::new(&data, start, end, QueryLimits::default(), &NoInterrupt).unwrap();
            let value = evaluator.eval(&expr, t).unwrap();
            let Val::Vector(vec) = value else { panic!("{query}: not a vector") };
            for e in finish_vector(vec).unwrap() {
                out.entry(e.labels).or_default().push(Sample::new(t, e.v));
            }
            t += step;
        }
        out.into_iter().map(|(labels, samples)| MatrixSeries { labels, samples }).collect()
    }

    fn same_bits(a: &[MatrixSeries], b: &[MatrixSeries]) -> bool {
        a.len() == b.len()
            && a.iter().zip(b).all(|(x, y)| {
                x.labels == y.labels
                    && x.samples.len() == y.samples.len()
                    && x.samples.iter().zip(&y.samples).all(|(p, q)| p.t == q.t && (p.v.to_bits() == q.v.to_bits() || (p.v.is_nan() && q.v.is_nan())))
            })
    }

    // Goal: the series-at-a-time evaluation of `f(sel[r])` and the group-table aggregation over
    // it give bit for bit the step-by-step answer. Method: each fast query against a reference
    // that cannot take the fast path — the top-level call evaluated as instants step by step
    // (that goes through the range vector), the aggregation over `f(...) * 1` (not a plain
    // range call; `* 1` changes no value and drops the name as the functions below do).
    #[test]
    fn range_call_paths_match_step_by_step() {
        let series = varied_series();
        let functions = [
            "rate", "increase", "delta", "irate", "idelta", "deriv", "resets", "changes", "avg_over_time", "min_over_time",
            "max_over_time", "sum_over_time", "count_over_time", "stddev_over_time", "stdvar_over_time", "last_over_time",
            "first_over_time", "present_over_time", "mad_over_time", "ts_of_first_over_time", "ts_of_last_over_time",
            "ts_of_max_over_time", "ts_of_min_over_time",
        ];
        let selectors = ["m[1m]", "m[45s] offset 20s", "m[30s] @ 300", "m[2m] @ end()", "m{g!=\"b\"}[1m]"];
        let mut checked = 0;
        // The fast queries do take the fast path; the references do not.
        assert!(range_call(&parse("rate(m[1m] offset 20s)").unwrap()).is_some());
        assert!(range_call(&parse("(rate(m[1m]) * 1)").unwrap()).is_none());
        let check = |fast: &str, reference: &str| {
            let got = range_with(fast, &series, &QueryLimits::default()).unwrap();
            let want = range_by_steps(reference, &series);
            assert!(!want.is_empty(), "{reference}: the reference is empty, the comparison would prove nothing");
            assert!(same_bits(&got, &want), "{fast}\n got: {got:?}\nwant: {want:?}");
        };
        for f in functions {
            for sel in selectors {
                check(&format!("{f}({sel})"), &format!("{f}({sel})"));
                checked += 1;
                if !functions::range_fn_keeps_name(f) {
                    for agg in ["sum", "avg", "min", "max", "count", "group", "stddev", "stdvar", "quantile(0.3,", "topk(2,", "bottomk(2,", "limitk(1,", "limit_ratio(-0.5,"] {
                        let (open, close) = if agg.ends_with(',') { (format!("{agg} "), ")") } else { (format!("{agg}("), ")") };
                        for by in ["", " by (g)", " without (i)"] {
                            let fast = format!("{open}{f}({sel}){close}{by}");
                            let reference = format!("{open}{f}({sel}) * 1{close}{by}");
                            check(&fast, &reference);
                            checked += 1;
                        }
                    }
                }
            }
        }
        assert!(checked > 1000, "{checked}");
    }

    // Goal: where the step-by-step evaluation fails, the fast path fails the same way: two
    // series equal once the name is dropped, and the sample limit crossed.
    #[test]
    fn range_call_path_keeps_step_by_step_errors() {
        let mut series = varied_series();
        let mut twin = series[0].clone();
        twin.labels = Labels::from_pairs(&[("__name__", "n"), ("g", "a"), ("i", "0")]);
        series.push(twin);
        let err = range_with("rate({__name__=~\"m|n\"}[1m])", &series, &QueryLimits::default()).unwrap_err();
        assert_eq!(err, exec_err("vector cannot contain metrics with the same labelset"));
        // Keeping the name there is no collision.
        assert_eq!(range_with("last_over_time({__name__=~\"m|n\"}[1m])", &series, &QueryLimits::default()).unwrap().len(), 7);
        let fetched: usize = series.iter().map(|s| s.samples.len()).sum();
        let tight = QueryLimits { samples_max: fetched + 10, ..QueryLimits::default() };
        let err = range_with("rate(m[1m])", &series, &tight).unwrap_err();
        assert_eq!(err, QueryError::TooManySamples { max: fetched + 10 });
    }
}
