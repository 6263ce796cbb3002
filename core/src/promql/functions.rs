//! PromQL functions over floats, after Prometheus 3.x's `promql/functions.go`.

use std::cmp::Ordering;

use super::ast::{At, Expr};
use super::eval::{
    asc_nan_last, desc_nan_last, exec_err, kahan_inc, set_label, Elem, Evaluator, Series, Val,
};
use super::{go_quote, QueryError};
use crate::labels::{Labels, METRIC_NAME_LABEL};
use crate::matcher::MatchOp;
use crate::sample::Sample;

const SUPPORTED: &[&str] = &[
    "abs", "absent", "absent_over_time", "acos", "acosh", "asin", "asinh", "atan", "atanh", "avg_over_time", "ceil",
    "changes", "clamp", "clamp_max", "clamp_min", "cos", "cosh", "count_over_time", "days_in_month", "day_of_month",
    "day_of_week", "day_of_year", "deg", "delta", "deriv", "exp", "first_over_time", "floor", "histogram_quantile",
    "histogram_fraction", "histogram_count", "histogram_sum", "histogram_avg", "histogram_stddev", "histogram_stdvar",
    "double_exponential_smoothing", "hour", "idelta", "increase", "irate", "label_replace", "label_join", "ln",
    "log10", "log2", "last_over_time", "mad_over_time", "max_over_time", "min_over_time", "ts_of_first_over_time",
    "ts_of_last_over_time", "ts_of_max_over_time", "ts_of_min_over_time", "minute", "info", "month", "pi",
    "predict_linear", "present_over_time", "quantile_over_time", "rad", "rate", "resets", "round", "scalar", "sgn",
    "sin", "sinh", "sort", "sort_desc", "sort_by_label", "sort_by_label_desc", "sqrt", "stddev_over_time",
    "stdvar_over_time", "sum_over_time", "tan", "tanh", "time", "timestamp", "vector", "year",
];

pub(crate) fn check_supported(name: &str) -> Result<(), QueryError> {
    if SUPPORTED.contains(&name) {
        Ok(())
    } else {
        Err(QueryError::Unsupported(format!("function {name}()")))
    }
}

/// Prometheus's `quantile`: linear interpolation between the closest ranks, NaN sorted first.
pub(crate) fn quantile(q: f64, mut values: Vec<f64>) -> f64 {
    if values.is_empty() || q.is_nan() {
        return f64::NAN;
    }
    if q < 0.0 {
        return f64::NEG_INFINITY;
    }
    if q > 1.0 {
        return f64::INFINITY;
    }
    values.sort_by(|a, b| match (a.is_nan(), b.is_nan()) {
        (true, true) => Ordering::Equal,
        (true, false) => Ordering::Less,
        (false, true) => Ordering::Greater,
        _ => a.partial_cmp(b).unwrap_or(Ordering::Equal),
    });
    let n = values.len() as f64;
    let rank = q * (n - 1.0);
    let lower = rank.floor().max(0.0);
    let upper = (lower + 1.0).min(n - 1.0);
    let weight = rank - rank.floor();
    values[lower as usize] * (1.0 - weight) + values[upper as usize] * weight
}

/// The selector-like modifiers of a range argument: (range, @, offset).
fn range_modifiers(arg: &Expr) -> Option<(i64, Option<At>, i64)> {
    match arg.unwrap_parens() {
        Expr::Matrix { selector, range_ms } => Some((*range_ms, selector.at, selector.offset_ms)),
        Expr::Subquery { range_ms, at, offset_ms, .. } => Some((*range_ms, *at, *offset_ms)),
        _ => None,
    }
}

/// Go's `math.Max`: +Inf wins over NaN, NaN wins over everything else, +0 over -0. (Rust's
/// `f64::max` ignores a NaN operand instead.)
fn go_max(x: f64, y: f64) -> f64 {
    if x == f64::INFINITY || y == f64::INFINITY {
        f64::INFINITY
    } else if x.is_nan() || y.is_nan() {
        f64::NAN
    } else if x == 0.0 && y == 0.0 {
        if x.is_sign_negative() { y } else { x }
    } else if x > y {
        x
    } else {
        y
    }
}

/// Go's `math.Min`: -Inf wins over NaN, NaN wins over everything else, -0 over +0.
fn go_min(x: f64, y: f64) -> f64 {
    if x == f64::NEG_INFINITY || y == f64::NEG_INFINITY {
        f64::NEG_INFINITY
    } else if x.is_nan() || y.is_nan() {
        f64::NAN
    } else if x == 0.0 && y == 0.0 {
        if x.is_sign_negative() { x } else { y }
    } else if x < y {
        x
    } else {
        y
    }
}

fn float_fn(vec: Vec<Elem>, f: impl Fn(f64) -> f64) -> Val {
    Val::Vector(vec.into_iter().map(|e| Elem { labels: e.labels, v: f(e.v), drop_name: true }).collect())
}

fn arg<'e>(args: &'e [Expr], i: usize, name: &str) -> Result<&'e Expr, QueryError> {
    args.get(i).ok_or_else(|| exec_err(format!("function {name}() is missing argument {}", i + 1)))
}

fn string_arg(ev: &Evaluator, args: &[Expr], i: usize, name: &str, t: i64) -> Result<String, QueryError> {
    match ev.eval(arg(args, i, name)?, t)? {
        Val::Str(s) => Ok(s),
        _ => Err(exec_err(format!("function {name}() expects a string as argument {}", i + 1))),
    }
}

/// Civil date of a Unix day number (Howard Hinnant's algorithm): (year, month 1-12, day 1-31).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

fn date_part(name: &str, unix_seconds: i64) -> f64 {
    let days = unix_seconds.div_euclid(86_400);
    let secs = unix_seconds.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    match name {
        "year" => y as f64,
        "month" => m as f64,
        "day_of_month" => d as f64,
        "day_of_week" => (days + 4).rem_euclid(7) as f64,
        "day_of_year" => {
            const CUMULATIVE: [u32; 12] = [0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334];
            let leap = if m > 2 && is_leap(y) { 1 } else { 0 };
            (CUMULATIVE[(m - 1) as usize] + d + leap) as f64
        }
        "days_in_month" => match m {
            2 => {
                if is_leap(y) {
                    29.0
                } else {
                    28.0
                }
            }
            4 | 6 | 9 | 11 => 30.0,
            _ => 31.0,
        },
        "hour" => (secs / 3600) as f64,
        "minute" => ((secs % 3600) / 60) as f64,
        _ => f64::NAN,
    }
}

fn absent_labels(arg: &Expr) -> Labels {
    let selector = match arg.unwrap_parens() {
        Expr::Vector(s) => s,
        Expr::Matrix { selector, .. } => selector,
        _ => return Labels::empty(),
    };
    let mut labels = Labels::empty();
    let mut has: Vec<&str> = Vec::new();
    for m in &selector.matchers {
        if m.name == METRIC_NAME_LABEL {
            continue;
        }
        if m.op == MatchOp::Equal && !has.contains(&m.name.as_str()) {
            labels = set_label(&labels, &m.name, &m.value);
            has.push(&m.name);
        } else {
            labels = set_label(&labels, &m.name, "");
        }
    }
    labels
}

/// Prometheus's `extrapolatedRate` for floats.
fn extrapolated_rate(s: &[Sample], range_start: i64, range_end: i64, range_ms: i64, is_counter: bool, is_rate: bool) -> Option<f64> {
    if s.len() < 2 {
        return None;
    }
    let first = s[0];
    let last = s[s.len() - 1];
    let mut result = last.v - first.v;
    if is_counter {
        for w in s.windows(2) {
            if w[1].v < w[0].v {
                result += w[0].v;
            }
        }
    }
    let mut duration_to_start = (first.t - range_start) as f64 / 1000.0;
    let mut duration_to_end = (range_end - last.t) as f64 / 1000.0;
    let sampled_interval = (last.t - first.t) as f64 / 1000.0;
    let average_between = sampled_interval / (s.len() - 1) as f64;
    let threshold = average_between * 1.1;
    if duration_to_start >= threshold {
        duration_to_start = average_between / 2.0;
    }
    if is_counter && result > 0.0 && first.v >= 0.0 {
        let duration_to_zero = sampled_interval * (first.v / result);
        if duration_to_zero < duration_to_start {
            duration_to_start = duration_to_zero;
        }
    }
    if duration_to_end >= threshold {
        duration_to_end = average_between / 2.0;
    }
    let mut factor = (sampled_interval + duration_to_start + duration_to_end) / sampled_interval;
    if is_rate {
        factor /= range_ms as f64 / 1000.0;
    }
    Some(result * factor)
}

fn instant_value(s: &[Sample], is_rate: bool) -> Option<f64> {
    if s.len() < 2 {
        return None;
    }
    let a = s[s.len() - 2];
    let b = s[s.len() - 1];
    let interval = b.t - a.t;
    if interval == 0 {
        return None;
    }
    let mut result = if is_rate && b.v < a.v { b.v } else { b.v - a.v };
    if is_rate {
        result /= interval as f64 / 1000.0;
    }
    Some(result)
}

fn linear_regression(s: &[Sample], intercept_t: i64) -> (f64, f64) {
    let (mut n, mut sum_x, mut c_x, mut sum_y, mut c_y) = (0.0, 0.0, 0.0, 0.0, 0.0);
    let (mut sum_xy, mut c_xy, mut sum_x2, mut c_x2) = (0.0, 0.0, 0.0, 0.0);
    let init_y = s[0].v;
    let mut const_y = true;
    for (i, p) in s.iter().enumerate() {
        if const_y && i > 0 && p.v != init_y {
            const_y = false;
        }
        n += 1.0;
        let x = (p.t - intercept_t) as f64 / 1e3;
        (sum_x, c_x) = kahan_inc(x, sum_x, c_x);
        (sum_y, c_y) = kahan_inc(p.v, sum_y, c_y);
        (sum_xy, c_xy) = kahan_inc(x * p.v, sum_xy, c_xy);
        (sum_x2, c_x2) = kahan_inc(x * x, sum_x2, c_x2);
    }
    if const_y {
        if init_y.is_infinite() {
            return (f64::NAN, f64::NAN);
        }
        return (0.0, init_y);
    }
    sum_x += c_x;
    sum_y += c_y;
    sum_xy += c_xy;
    sum_x2 += c_x2;
    let cov_xy = sum_xy - sum_x * sum_y / n;
    let var_x = sum_x2 - sum_x * sum_x / n;
    let slope = cov_xy / var_x;
    let intercept = sum_y / n - slope * sum_x / n;
    (slope, intercept)
}

fn avg_over(s: &[Sample]) -> f64 {
    let (mut sum, mut count) = (s[0].v, 1.0);
    let (mut mean, mut c) = (0.0, 0.0);
    let mut incremental = false;
    for p in &s[1..] {
        count += 1.0;
        if !incremental {
            let (ns, nc) = kahan_inc(p.v, sum, c);
            if !ns.is_infinite() {
                sum = ns;
                c = nc;
                continue;
            }
            incremental = true;
            mean = sum / (count - 1.0);
            c /= count - 1.0;
        }
        let q = (count - 1.0) / count;
        (mean, c) = kahan_inc(p.v / count, q * mean, q * c);
    }
    if incremental {
        mean + c
    } else {
        sum / count + c / count
    }
}

fn variance_over(s: &[Sample]) -> f64 {
    let (mut count, mut mean, mut c_mean, mut aux, mut c_aux) = (0.0, 0.0, 0.0, 0.0, 0.0);
    for p in s {
        count += 1.0;
        let delta = p.v - (mean + c_mean);
        (mean, c_mean) = kahan_inc(delta / count, mean, c_mean);
        (aux, c_aux) = kahan_inc(delta * (p.v - (mean + c_mean)), aux, c_aux);
    }
    (aux + c_aux) / count
}

fn compare_over(s: &[Sample], better: impl Fn(f64, f64) -> bool, timestamp: bool) -> f64 {
    let mut best = s[0].v;
    let mut best_t = s[0].t;
    for p in s {
        if better(p.v, best) {
            best = p.v;
            best_t = p.t;
        }
    }
    if timestamp {
        best_t as f64 / 1000.0
    } else {
        best
    }
}

/// Natural-order "less than" of facette/natsort, which Prometheus's `sort_by_label` uses.
fn natural_less(a: &str, b: &str) -> bool {
    fn chunks(s: &str) -> Vec<&str> {
        let mut out = Vec::new();
        let mut start = 0;
        let bytes = s.as_bytes();
        for i in 1..=bytes.len() {
            if i == bytes.len() || bytes[i].is_ascii_digit() != bytes[start].is_ascii_digit() {
                if start < i {
                    out.push(&s[start..i]);
                }
                start = i;
            }
        }
        out
    }
    let ca = chunks(a);
    let cb = chunks(b);
    for (i, x) in ca.iter().enumerate() {
        if i >= cb.len() {
            return false;
        }
        let y = cb[i];
        if let (Ok(xi), Ok(yi)) = (x.parse::<i64>(), y.parse::<i64>()) {
            if xi == yi {
                if i == ca.len() - 1 {
                    return true;
                } else if i == cb.len() - 1 {
                    return false;
                }
                continue;
            }
            return xi < yi;
        }
        if *x == y {
            if i == ca.len() - 1 {
                return true;
            } else if i == cb.len() - 1 {
                return false;
            }
            continue;
        }
        return *x < y;
    }
    false
}

/// Go's `strconv.ParseFloat` for the spellings that appear in `le` labels.
pub(crate) fn parse_go_float(s: &str) -> Option<f64> {
    let t = s.trim();
    match t.to_ascii_lowercase().as_str() {
        "+inf" | "inf" | "+infinity" | "infinity" => return Some(f64::INFINITY),
        "-inf" | "-infinity" => return Some(f64::NEG_INFINITY),
        "nan" => return Some(f64::NAN),
        _ => {}
    }
    let cleaned: String = t.chars().filter(|c| *c != '_').collect();
    if let Some(hex) = cleaned.strip_prefix("0x").or_else(|| cleaned.strip_prefix("0X")) {
        return i64::from_str_radix(hex, 16).ok().map(|v| v as f64);
    }
    cleaned.parse::<f64>().ok()
}

fn almost_equal(a: f64, b: f64, epsilon: f64) -> bool {
    const MIN_NORMAL: f64 = f64::MIN_POSITIVE;
    if a == b {
        return true;
    }
    let abs_sum = a.abs() + b.abs();
    let diff = (a - b).abs();
    if a == 0.0 || b == 0.0 || abs_sum < MIN_NORMAL {
        return diff < epsilon * MIN_NORMAL;
    }
    diff / abs_sum.min(f64::MAX) < epsilon
}

/// ` for metric name "NAME"`, or nothing without a name (Prometheus's `maybeAddMetricName`).
fn for_metric_name(name: &str) -> String {
    if name.is_empty() {
        String::new()
    } else {
        format!(" for metric name {}", go_quote(name))
    }
}

/// Prometheus's `BucketQuantile` over classic buckets `(upper bound, cumulative count)`.
/// Also answers whether the buckets had to be forced monotonic (a count lower than a smaller
/// bucket's, beyond float noise), which Prometheus reports as an info.
fn bucket_quantile(q: f64, buckets: Vec<(f64, f64)>) -> (f64, bool) {
    if q.is_nan() {
        return (f64::NAN, false);
    }
    if q < 0.0 {
        return (f64::NEG_INFINITY, false);
    }
    if q > 1.0 {
        return (f64::INFINITY, false);
    }
    let Some(mut buckets) = sorted_coalesced_buckets(buckets) else { return (f64::NAN, false) };
    // Force monotonicity, silently smoothing numerically insignificant differences.
    let mut forced = false;
    let mut prev = buckets[0].1;
    for b in buckets.iter_mut().skip(1) {
        let cur = b.1;
        if cur == prev {
            continue;
        }
        if almost_equal(prev, cur, 1e-12) {
            b.1 = prev;
            continue;
        }
        if cur < prev {
            b.1 = prev;
            forced = true;
            continue;
        }
        prev = cur;
    }
    (bucket_quantile_monotonic(q, &buckets), forced)
}

/// [`bucket_quantile`] after its checks: `buckets` sorted, coalesced, monotonic, ending in +Inf.
fn bucket_quantile_monotonic(q: f64, buckets: &[(f64, f64)]) -> f64 {
    if buckets.len() < 2 {
        return f64::NAN;
    }
    let observations = buckets[buckets.len() - 1].1;
    if observations == 0.0 {
        return f64::NAN;
    }
    let mut rank = q * observations;
    let n = buckets.len() - 1;
    let b = buckets[..n].partition_point(|x| x.1 < rank);
    if b == buckets.len() - 1 {
        return buckets[buckets.len() - 2].0;
    }
    if b == 0 && buckets[0].0 <= 0.0 {
        return buckets[0].0;
    }
    let bucket_end = buckets[b].0;
    let mut count = buckets[b].1;
    let mut bucket_start = 0.0;
    if b > 0 {
        bucket_start = buckets[b - 1].0;
        count -= buckets[b - 1].1;
        rank -= buckets[b - 1].1;
    }
    bucket_start + (bucket_end - bucket_start) * (rank / count)
}

/// Buckets sorted by upper bound with equal bounds summed, or `None` when there is no `+Inf`
/// bucket (Prometheus answers NaN then).
fn sorted_coalesced_buckets(mut buckets: Vec<(f64, f64)>) -> Option<Vec<(f64, f64)>> {
    buckets.sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap_or(Ordering::Equal));
    if buckets.last().is_none_or(|b| b.0 != f64::INFINITY) {
        return None;
    }
    let mut merged: Vec<(f64, f64)> = Vec::with_capacity(buckets.len());
    for b in buckets {
        match merged.last_mut() {
            Some(last) if last.0 == b.0 => last.1 += b.1,
            _ => merged.push(b),
        }
    }
    Some(merged)
}

/// The fraction of observations in `[lower, upper]` over classic buckets, interpolating
/// linearly inside a bucket; the lowest bucket starts at 0 when its upper bound is positive
/// (the same natural lower bound `BucketQuantile` assumes), else at -Inf.
fn bucket_fraction(lower: f64, upper: f64, buckets: Vec<(f64, f64)>) -> f64 {
    let Some(merged) = sorted_coalesced_buckets(buckets) else { return f64::NAN };
    let count = merged[merged.len() - 1].1;
    if count == 0.0 || lower.is_nan() || upper.is_nan() {
        return f64::NAN;
    }
    if lower >= upper {
        return 0.0;
    }
    let (mut rank, mut lower_rank, mut upper_rank) = (0.0, 0.0, 0.0);
    let (mut lower_set, mut upper_set) = (false, false);
    let mut previous = 0.0;
    for (i, &(bucket_upper, cumulative)) in merged.iter().enumerate() {
        let bucket_lower = if i == 0 {
            if bucket_upper > 0.0 {
                0.0
            } else {
                f64::NEG_INFINITY
            }
        } else {
            merged[i - 1].0
        };
        let bucket_count = cumulative - previous;
        previous = cumulative;
        if !lower_set && bucket_lower >= lower {
            lower_rank = rank;
            lower_set = true;
        }
        if !upper_set && bucket_lower >= upper {
            upper_rank = rank;
            upper_set = true;
        }
        if lower_set && upper_set {
            break;
        }
        // No interpolation inside a bucket of infinite width: its observations are taken to
        // lie at its finite end.
        let below = |v: f64| {
            if bucket_lower == f64::NEG_INFINITY {
                rank + bucket_count
            } else if bucket_upper == f64::INFINITY {
                rank
            } else {
                rank + bucket_count * (v - bucket_lower) / (bucket_upper - bucket_lower)
            }
        };
        if !lower_set && bucket_lower < lower && bucket_upper > lower {
            lower_rank = below(lower);
            lower_set = true;
        }
        if !upper_set && bucket_lower < upper && bucket_upper > upper {
            upper_rank = below(upper);
            upper_set = true;
        }
        if lower_set && upper_set {
            break;
        }
        rank += bucket_count;
    }
    if !lower_set || lower_rank > count {
        lower_rank = count;
    }
    if !upper_set || upper_rank > count {
        upper_rank = count;
    }
    (upper_rank - lower_rank) / count
}

/// Groups classic-histogram bucket series by their labels without `le`.
fn bucket_groups(ev: &Evaluator, vec: Vec<Elem>) -> Vec<(Labels, bool, Vec<(f64, f64)>)> {
    let mut index: std::collections::BTreeMap<Labels, usize> = std::collections::BTreeMap::new();
    let mut groups: Vec<(Labels, bool, Vec<(f64, f64)>)> = Vec::new();
    for e in vec {
        let le = e.labels.get("le");
        let Some(upper) = parse_go_float(le).filter(|_| !le.is_empty()) else {
            ev.warn(format!(
                "PromQL warning: bucket label \"le\" is missing or has a malformed value of {}{}",
                go_quote(le),
                for_metric_name(e.labels.get(METRIC_NAME_LABEL))
            ));
            continue;
        };
        let key = set_label(&e.labels, "le", "");
        let i = *index.entry(key.clone()).or_insert_with(|| {
            groups.push((key, false, Vec::new()));
            groups.len() - 1
        });
        groups[i].2.push((upper, e.v));
    }
    groups
}

fn matrix_fn(ev: &Evaluator, name: &str, args: &[Expr], t: i64) -> Result<Option<Val>, QueryError> {
    let is_range_fn = matches!(
        name,
        "rate" | "increase" | "delta" | "irate" | "idelta" | "deriv" | "predict_linear" | "resets" | "changes"
            | "avg_over_time" | "min_over_time" | "max_over_time" | "sum_over_time" | "count_over_time"
            | "quantile_over_time" | "stddev_over_time" | "stdvar_over_time" | "last_over_time"
            | "first_over_time" | "present_over_time" | "mad_over_time" | "ts_of_first_over_time"
            | "ts_of_last_over_time" | "ts_of_max_over_time" | "ts_of_min_over_time"
            | "double_exponential_smoothing" | "absent_over_time"
    );
    if !is_range_fn {
        return Ok(None);
    }
    let (m_index, scalar_args): (usize, Vec<usize>) = match name {
        "quantile_over_time" => (1, vec![0]),
        "predict_linear" => (0, vec![1]),
        "double_exponential_smoothing" => (0, vec![1, 2]),
        _ => (0, vec![]),
    };
    let m_arg = arg(args, m_index, name)?;
    let mut scalars = Vec::new();
    for i in scalar_args {
        scalars.push(ev.eval_scalar(arg(args, i, name)?, t)?);
    }
    let matrix = ev.eval_matrix(m_arg, t)?;
    if name == "absent_over_time" {
        if matrix.iter().any(|s| !s.samples.is_empty()) {
            return Ok(Some(Val::Vector(Vec::new())));
        }
        return Ok(Some(Val::Vector(vec![Elem { labels: absent_labels(m_arg), v: 1.0, drop_name: false }])));
    }
    if name == "double_exponential_smoothing" {
        let (sf, tf) = (scalars[0], scalars[1]);
        if sf <= 0.0 || sf >= 1.0 {
            return Err(exec_err(format!("invalid smoothing factor. Expected: 0 < sf < 1, got: {sf:.6}")));
        }
        if tf <= 0.0 || tf >= 1.0 {
            return Err(exec_err(format!("invalid trend factor. Expected: 0 < tf < 1, got: {tf:.6}")));
        }
    }
    let (range_ms, at, offset_ms) = range_modifiers(m_arg).unwrap_or((0, None, 0));
    let range_end = match at {
        Some(At::Time(x)) => x,
        Some(At::Start) => ev.start,
        Some(At::End) => ev.end,
        None => t,
    } - offset_ms;
    let range_start = range_end - range_ms;
    let mut out = Vec::with_capacity(matrix.len());
    for Series { labels, samples: s, drop_name } in matrix {
        if s.is_empty() {
            continue;
        }
        if name == "quantile_over_time" {
            ev.check_quantile(scalars[0]);
        }
        if let Some(v) = range_fn_value(name, &s, range_start, range_end, range_ms, t, &scalars) {
            ev.check_counter_name(name, &labels);
            out.push(Elem { labels, v, drop_name: if range_fn_keeps_name(name) { drop_name } else { true } });
        }
    }
    Ok(Some(Val::Vector(out)))
}

/// Whether range function `name` keeps the metric name of its input series.
pub(crate) fn range_fn_keeps_name(name: &str) -> bool {
    matches!(name, "last_over_time" | "first_over_time")
}

/// The range functions that [`range_fn_value`] computes from the window alone (no scalar
/// argument, nothing but the series' own samples): the ones the evaluator may compute for a
/// whole plain matrix selector at once (see eval.rs, `range_series`).
pub(crate) fn is_plain_range_fn(name: &str) -> bool {
    matches!(
        name,
        "rate" | "increase" | "delta" | "irate" | "idelta" | "deriv" | "resets" | "changes"
            | "avg_over_time" | "min_over_time" | "max_over_time" | "sum_over_time" | "count_over_time"
            | "stddev_over_time" | "stdvar_over_time" | "last_over_time" | "first_over_time"
            | "present_over_time" | "mad_over_time" | "ts_of_first_over_time" | "ts_of_last_over_time"
            | "ts_of_max_over_time" | "ts_of_min_over_time"
    )
}

/// The value of range function `name` over one series' window `s` (non-empty, staleness
/// markers removed) for the range `(range_start, range_end]` evaluated at `t`; `None` when the
/// function has no value for this window. `scalars` are the function's scalar arguments.
pub(crate) fn range_fn_value(name: &str, s: &[Sample], range_start: i64, range_end: i64, range_ms: i64, t: i64, scalars: &[f64]) -> Option<f64> {
    match name {
        "rate" => extrapolated_rate(s, range_start, range_end, range_ms, true, true),
        "increase" => extrapolated_rate(s, range_start, range_end, range_ms, true, false),
        "delta" => extrapolated_rate(s, range_start, range_end, range_ms, false, false),
        "irate" => instant_value(s, true),
        "idelta" => instant_value(s, false),
        "deriv" => (s.len() >= 2).then(|| linear_regression(s, s[0].t).0),
        "predict_linear" => (s.len() >= 2).then(|| {
            let (slope, intercept) = linear_regression(s, t);
            slope * scalars[0] + intercept
        }),
        "resets" => Some(s.windows(2).filter(|w| w[1].v < w[0].v).count() as f64),
        "changes" => Some(
            s.windows(2).filter(|w| w[1].v != w[0].v && !(w[1].v.is_nan() && w[0].v.is_nan())).count() as f64,
        ),
        "avg_over_time" => Some(avg_over(s)),
        "min_over_time" => Some(compare_over(s, |c, m| c < m || m.is_nan(), false)),
        "max_over_time" => Some(compare_over(s, |c, m| c > m || m.is_nan(), false)),
        "ts_of_min_over_time" => Some(compare_over(s, |c, m| c <= m || m.is_nan(), true)),
        "ts_of_max_over_time" => Some(compare_over(s, |c, m| c >= m || m.is_nan(), true)),
        "sum_over_time" => {
            let (mut sum, mut c) = (0.0, 0.0);
            for p in s {
                (sum, c) = kahan_inc(p.v, sum, c);
            }
            Some(if sum.is_infinite() { sum } else { sum + c })
        }
        "count_over_time" => Some(s.len() as f64),
        "quantile_over_time" => Some(quantile(scalars[0], s.iter().map(|p| p.v).collect())),
        "stddev_over_time" => Some(variance_over(s).sqrt()),
        "stdvar_over_time" => Some(variance_over(s)),
        "last_over_time" => Some(s[s.len() - 1].v),
        "first_over_time" => Some(s[0].v),
        "ts_of_first_over_time" => Some(s[0].t as f64 / 1000.0),
        "ts_of_last_over_time" => Some(s[s.len() - 1].t as f64 / 1000.0),
        "present_over_time" => Some(1.0),
        "mad_over_time" => {
            let median = quantile(0.5, s.iter().map(|p| p.v).collect());
            Some(quantile(0.5, s.iter().map(|p| (p.v - median).abs()).collect()))
        }
        "double_exponential_smoothing" => (s.len() >= 2).then(|| {
            let (sf, tf) = (scalars[0], scalars[1]);
            let (mut s0, mut s1) = (0.0, s[0].v);
            let mut b = s[1].v - s[0].v;
            for i in 1..s.len() {
                let x = sf * s[i].v;
                if i > 1 {
                    b = tf * (s1 - s0) + (1.0 - tf) * b;
                }
                let y = (1.0 - sf) * (s1 + b);
                s0 = s1;
                s1 = x + y;
            }
            s1
        }),
        _ => None,
    }
}

/// Labels that identify the target an info series describes.
const INFO_IDENTIFYING_LABELS: [&str; 2] = ["instance", "job"];

/// `info(v, selector)`: adds the data labels of the matching info series (same `instance` and
/// `job`; the newest sample wins among conflicting ones) to each element of `v`.
fn info(ev: &Evaluator, args: &[Expr], t: i64) -> Result<Val, QueryError> {
    let base = ev.eval_vector(arg(args, 0, "info")?, t)?;
    let Some(Expr::Vector(sel)) = args.get(1).map(|a| a.unwrap_parens()) else {
        return Err(exec_err("info() expects a vector selector as its second argument"));
    };
    let name_matchers: Vec<&crate::matcher::Matcher> = sel.matchers.iter().filter(|m| m.name == METRIC_NAME_LABEL).collect();
    let data_matchers: Vec<&crate::matcher::Matcher> = sel.matchers.iter().filter(|m| m.name != METRIC_NAME_LABEL).collect();
    // Newest info sample per (metric name, identifying labels).
    let mut newest: std::collections::BTreeMap<(String, Vec<String>), (i64, Labels)> = std::collections::BTreeMap::new();
    for (e, sample_t) in ev.select_instant(sel, t) {
        let key = (e.labels.metric_name().to_string(), INFO_IDENTIFYING_LABELS.iter().map(|n| e.labels.get(n).to_string()).collect());
        match newest.get(&key) {
            Some((old_t, _)) if *old_t >= sample_t => {}
            _ => {
                newest.insert(key, (sample_t, e.labels));
            }
        }
    }
    let mut out = Vec::with_capacity(base.len());
    for e in base {
        if !name_matchers.is_empty() && name_matchers.iter().all(|m| m.matches(&e.labels)) {
            out.push(e);
            continue;
        }
        let ids: Vec<String> = INFO_IDENTIFYING_LABELS.iter().map(|n| e.labels.get(n).to_string()).collect();
        let mut labels = e.labels.clone();
        let mut matched = false;
        for ((_, info_ids), (_, info_labels)) in &newest {
            if *info_ids != ids {
                continue;
            }
            matched = true;
            for l in info_labels.iter() {
                if l.name == METRIC_NAME_LABEL || INFO_IDENTIFYING_LABELS.contains(&l.name.as_str()) {
                    continue;
                }
                if !data_matchers.is_empty() && !data_matchers.iter().any(|m| m.name == l.name) {
                    continue;
                }
                if e.labels.get(&l.name).is_empty() && labels.get(&l.name).is_empty() {
                    labels = set_label(&labels, &l.name, &l.value);
                }
            }
        }
        if !matched && data_matchers.iter().any(|m| !m.matches_empty()) {
            continue;
        }
        out.push(Elem { labels, v: e.v, drop_name: e.drop_name });
    }
    Ok(Val::Vector(out))
}

pub(crate) fn call(ev: &Evaluator, name: &str, args: &[Expr], t: i64) -> Result<Val, QueryError> {
    if let Some(v) = matrix_fn(ev, name, args, t)? {
        return Ok(v);
    }
    let simple: Option<fn(f64) -> f64> = match name {
        "abs" => Some(f64::abs),
        "ceil" => Some(f64::ceil),
        "floor" => Some(f64::floor),
        "exp" => Some(f64::exp),
        "sqrt" => Some(f64::sqrt),
        "ln" => Some(f64::ln),
        "log2" => Some(f64::log2),
        "log10" => Some(f64::log10),
        "sin" => Some(f64::sin),
        "cos" => Some(f64::cos),
        "tan" => Some(f64::tan),
        "asin" => Some(f64::asin),
        "acos" => Some(f64::acos),
        "atan" => Some(f64::atan),
        "sinh" => Some(f64::sinh),
        "cosh" => Some(f64::cosh),
        "tanh" => Some(f64::tanh),
        "asinh" => Some(f64::asinh),
        "acosh" => Some(f64::acosh),
        "atanh" => Some(f64::atanh),
        "rad" => Some(|v| v * std::f64::consts::PI / 180.0),
        "deg" => Some(|v| v * 180.0 / std::f64::consts::PI),
        "sgn" => Some(|v| {
            if v < 0.0 {
                -1.0
            } else if v > 0.0 {
                1.0
            } else {
                v
            }
        }),
        _ => None,
    };
    if let Some(f) = simple {
        let vec = ev.eval_vector(arg(args, 0, name)?, t)?;
        return Ok(float_fn(vec, f));
    }
    match name {
        "time" => Ok(Val::Scalar(t as f64 / 1000.0)),
        "pi" => Ok(Val::Scalar(std::f64::consts::PI)),
        "vector" => Ok(Val::Vector(vec![Elem {
            labels: Labels::empty(),
            v: ev.eval_scalar(arg(args, 0, name)?, t)?,
            drop_name: false,
        }])),
        "scalar" => {
            let vec = ev.eval_vector(arg(args, 0, name)?, t)?;
            Ok(Val::Scalar(if vec.len() == 1 { vec[0].v } else { f64::NAN }))
        }
        "clamp" | "clamp_min" | "clamp_max" => {
            let vec = ev.eval_vector(arg(args, 0, name)?, t)?;
            let (lo, hi) = match name {
                "clamp" => (ev.eval_scalar(arg(args, 1, name)?, t)?, ev.eval_scalar(arg(args, 2, name)?, t)?),
                "clamp_min" => (ev.eval_scalar(arg(args, 1, name)?, t)?, f64::INFINITY),
                _ => (f64::NEG_INFINITY, ev.eval_scalar(arg(args, 1, name)?, t)?),
            };
            if hi < lo {
                return Ok(Val::Vector(Vec::new()));
            }
            Ok(float_fn(vec, |v| go_max(lo, go_min(hi, v))))
        }
        "round" => {
            let vec = ev.eval_vector(arg(args, 0, name)?, t)?;
            let to_nearest = match args.get(1) {
                Some(a) => ev.eval_scalar(a, t)?,
                None => 1.0,
            };
            let inverse = 1.0 / to_nearest;
            Ok(float_fn(vec, |v| (v * inverse + 0.5).floor() / inverse))
        }
        "timestamp" => {
            let a = arg(args, 0, name)?;
            if let Expr::Vector(sel) = a.unwrap_parens() {
                let out = ev
                    .select_instant(sel, t)
                    .into_iter()
                    .map(|(e, st)| Elem { labels: e.labels, v: st as f64 / 1000.0, drop_name: true })
                    .collect();
                return Ok(Val::Vector(out));
            }
            let vec = ev.eval_vector(a, t)?;
            Ok(float_fn(vec, |_| t as f64 / 1000.0))
        }
        "days_in_month" | "day_of_month" | "day_of_week" | "day_of_year" | "hour" | "minute" | "month" | "year" => {
            let f = |v: f64| {
                if v.is_nan() || v.is_infinite() || v.abs() > 9.2e15 {
                    return f64::NAN;
                }
                date_part(name, v.trunc() as i64)
            };
            match args.first() {
                None => Ok(Val::Vector(vec![Elem {
                    labels: Labels::empty(),
                    v: date_part(name, t.div_euclid(1000)),
                    drop_name: false,
                }])),
                Some(a) => {
                    let vec = ev.eval_vector(a, t)?;
                    Ok(float_fn(vec, f))
                }
            }
        }
        "absent" => {
            let a = arg(args, 0, name)?;
            let vec = ev.eval_vector(a, t)?;
            if !vec.is_empty() {
                return Ok(Val::Vector(Vec::new()));
            }
            Ok(Val::Vector(vec![Elem { labels: absent_labels(a), v: 1.0, drop_name: false }]))
        }
        "sort" | "sort_desc" => {
            let mut vec = ev.eval_vector(arg(args, 0, name)?, t)?;
            if name == "sort" {
                vec.sort_by(|a, b| asc_nan_last(a.v, b.v));
            } else {
                vec.sort_by(|a, b| desc_nan_last(a.v, b.v));
            }
            Ok(Val::Vector(vec))
        }
        "sort_by_label" | "sort_by_label_desc" => {
            let mut vec = ev.eval_vector(arg(args, 0, name)?, t)?;
            let mut names = Vec::new();
            for i in 1..args.len() {
                names.push(string_arg(ev, args, i, name, t)?);
            }
            vec.sort_by(|a, b| {
                for n in &names {
                    let (x, y) = (a.labels.get(n), b.labels.get(n));
                    if x == y {
                        continue;
                    }
                    return if natural_less(x, y) { Ordering::Less } else { Ordering::Greater };
                }
                a.labels.cmp(&b.labels)
            });
            if name == "sort_by_label_desc" {
                vec.reverse();
            }
            Ok(Val::Vector(vec))
        }
        "label_replace" => {
            let vec = ev.eval_vector(arg(args, 0, name)?, t)?;
            let dst = string_arg(ev, args, 1, name, t)?;
            let repl = string_arg(ev, args, 2, name, t)?;
            let src = string_arg(ev, args, 3, name, t)?;
            let pattern = string_arg(ev, args, 4, name, t)?;
            let regex = regex::RegexBuilder::new(&format!("^(?s:{pattern})$"))
                .size_limit(crate::matcher::REGEX_COMPILED_BYTES_MAX)
                .build()
                .map_err(|_| exec_err(format!("invalid regular expression in label_replace(): {pattern}")))?;
            if dst.is_empty() {
                return Err(exec_err(format!("invalid destination label name in label_replace(): {dst}")));
            }
            let mut out = Vec::with_capacity(vec.len());
            for e in vec {
                let src_value = e.labels.get(&src).to_string();
                match regex.captures(&src_value) {
                    Some(caps) => {
                        let mut value = String::new();
                        caps.expand(&repl, &mut value);
                        let drop_name = if dst == METRIC_NAME_LABEL { false } else { e.drop_name };
                        out.push(Elem { labels: set_label(&e.labels, &dst, &value), v: e.v, drop_name });
                    }
                    None => out.push(e),
                }
            }
            Ok(Val::Vector(out))
        }
        "label_join" => {
            let vec = ev.eval_vector(arg(args, 0, name)?, t)?;
            let dst = string_arg(ev, args, 1, name, t)?;
            let sep = string_arg(ev, args, 2, name, t)?;
            let mut srcs = Vec::new();
            for i in 3..args.len() {
                let s = string_arg(ev, args, i, name, t)?;
                if s.is_empty() {
                    return Err(exec_err(format!("invalid source label name in label_join(): {s}")));
                }
                srcs.push(s);
            }
            if dst.is_empty() {
                return Err(exec_err(format!("invalid destination label name in label_join(): {dst}")));
            }
            let out = vec
                .into_iter()
                .map(|e| {
                    let joined: Vec<&str> = srcs.iter().map(|s| e.labels.get(s)).collect();
                    let value = joined.join(&sep);
                    let drop_name = if dst == METRIC_NAME_LABEL { false } else { e.drop_name };
                    Elem { labels: set_label(&e.labels, &dst, &value), v: e.v, drop_name }
                })
                .collect();
            Ok(Val::Vector(out))
        }
        "histogram_quantile" => {
            let q = ev.eval_scalar(arg(args, 0, name)?, t)?;
            let vec = ev.eval_vector(arg(args, 1, name)?, t)?;
            ev.check_quantile(q);
            let out = bucket_groups(ev, vec)
                .into_iter()
                .map(|(labels, _, buckets)| {
                    let (v, forced_monotonic) = bucket_quantile(q, buckets);
                    if forced_monotonic {
                        ev.info(format!(
                            "PromQL info: input to histogram_quantile needed to be fixed for monotonicity (see https://prometheus.io/docs/prometheus/latest/querying/functions/#histogram_quantile){}",
                            for_metric_name(labels.get(METRIC_NAME_LABEL))
                        ));
                    }
                    Elem { labels, v, drop_name: true }
                })
                .collect();
            Ok(Val::Vector(out))
        }
        "info" => info(ev, args, t),
        "histogram_fraction" => {
            let lower = ev.eval_scalar(arg(args, 0, name)?, t)?;
            let upper = ev.eval_scalar(arg(args, 1, name)?, t)?;
            let vec = ev.eval_vector(arg(args, 2, name)?, t)?;
            let out = bucket_groups(ev, vec)
                .into_iter()
                .map(|(labels, _, buckets)| Elem { labels, v: bucket_fraction(lower, upper, buckets), drop_name: true })
                .collect();
            Ok(Val::Vector(out))
        }
        "histogram_count" | "histogram_sum" | "histogram_avg" | "histogram_stddev" | "histogram_stdvar" => {
            // These read native histograms only; float samples are ignored, so over float data
            // the result is empty.
            for a in args {
                ev.eval(a, t)?;
            }
            Ok(Val::Vector(Vec::new()))
        }
        _ => Err(QueryError::Unsupported(format!("function {name}()"))),
    }
}
