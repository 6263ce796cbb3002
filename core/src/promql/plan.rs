//! Phase 1: list the selectors of a query with the exact time ranges evaluation will read.

use std::collections::BTreeMap;

use super::ast::{At, Expr, Selector};
use super::{matcher_key, QueryPlan, SelectorFetch};

struct Planner {
    /// The query's start and end (what `@ start()` and `@ end()` mean).
    start: i64,
    end: i64,
    lookback_ms: i64,
    subquery_step_default_ms: i64,
    index: BTreeMap<String, usize>,
    plan: QueryPlan,
}

impl Planner {
    /// The reference times a selector reads at, for evaluation times in `[lo, hi]`.
    fn reference(&self, at: Option<At>, offset_ms: i64, lo: i64, hi: i64) -> (i64, i64) {
        let (lo, hi) = match at {
            Some(At::Time(t)) => (t, t),
            Some(At::Start) => (self.start, self.start),
            Some(At::End) => (self.end, self.end),
            None => (lo, hi),
        };
        (lo.saturating_sub(offset_ms), hi.saturating_sub(offset_ms))
    }

    fn add(&mut self, selector: &Selector, min_t: i64, max_t: i64) {
        let key = matcher_key(&selector.matchers);
        match self.index.get(&key) {
            Some(&i) => {
                let fetch = &mut self.plan.selectors[i];
                fetch.min_t = fetch.min_t.min(min_t);
                fetch.max_t = fetch.max_t.max(max_t);
            }
            None => {
                self.index.insert(key, self.plan.selectors.len());
                self.plan.selectors.push(SelectorFetch { matchers: selector.matchers.clone(), min_t, max_t });
            }
        }
    }

    /// Walks `e` as evaluated at every time in `[lo, hi]`.
    fn walk(&mut self, e: &Expr, lo: i64, hi: i64) {
        match e {
            Expr::Number(_) | Expr::String(_) => {}
            Expr::Vector(sel) => {
                let (rlo, rhi) = self.reference(sel.at, sel.offset_ms, lo, hi);
                // Lookback is left-open: (t - lookback, t].
                self.add(sel, rlo.saturating_sub(self.lookback_ms).saturating_add(1), rhi);
            }
            Expr::Matrix { selector, range_ms } => {
                let (rlo, rhi) = self.reference(selector.at, selector.offset_ms, lo, hi);
                // Range selectors are left-open: (t - range, t].
                self.add(selector, rlo.saturating_sub(*range_ms).saturating_add(1), rhi);
            }
            Expr::Subquery { expr, range_ms, step_ms, offset_ms, at } => {
                let (rlo, rhi) = self.reference(*at, *offset_ms, lo, hi);
                let step = step_ms.unwrap_or(self.subquery_step_default_ms).max(1);
                let first = subquery_first_step(rlo.saturating_sub(*range_ms), step);
                self.walk(expr, first, rhi);
            }
            Expr::Neg(inner) | Expr::Paren(inner) => self.walk(inner, lo, hi),
            Expr::Binary { lhs, rhs, .. } => {
                self.walk(lhs, lo, hi);
                self.walk(rhs, lo, hi);
            }
            Expr::Aggregate { expr, param, .. } => {
                if let Some(p) = param {
                    self.walk(p, lo, hi);
                }
                self.walk(expr, lo, hi);
            }
            Expr::Call { args, .. } => {
                for a in args {
                    self.walk(a, lo, hi);
                }
            }
        }
    }
}

/// The first subquery step strictly after `range_start` that is a multiple of `step`
/// (Prometheus aligns subquery steps to absolute multiples of the step).
pub(crate) fn subquery_first_step(range_start: i64, step: i64) -> i64 {
    let mut first = step.saturating_mul(range_start / step);
    if first <= range_start {
        first = first.saturating_add(step);
    }
    first
}

fn plan(expr: &Expr, start: i64, end: i64, lookback_ms: i64, subquery_step_default_ms: i64) -> QueryPlan {
    let mut planner = Planner {
        start,
        end,
        lookback_ms,
        subquery_step_default_ms,
        index: BTreeMap::new(),
        plan: QueryPlan::default(),
    };
    planner.walk(expr, start, end);
    planner.plan
}

/// The fetches an instant query at `t_ms` needs.
pub fn plan_instant(expr: &Expr, t_ms: i64, lookback_ms: i64) -> QueryPlan {
    plan(expr, t_ms, t_ms, lookback_ms, super::SUBQUERY_STEP_DEFAULT_MS)
}

/// The fetches a range query over `[start_ms, end_ms]` needs (the step does not widen them:
/// every step lies inside the range).
pub fn plan_range(expr: &Expr, start_ms: i64, end_ms: i64, _step_ms: i64, lookback_ms: i64) -> QueryPlan {
    plan(expr, start_ms, end_ms.max(start_ms), lookback_ms, super::SUBQUERY_STEP_DEFAULT_MS)
}
