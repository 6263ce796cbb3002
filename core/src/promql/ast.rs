//! Sextant's PromQL expression tree, converted from `promql-parser`'s so that the rest of the
//! engine works with milliseconds and [`crate::matcher::Matcher`].

use std::time::{Duration, UNIX_EPOCH};

use promql_parser::label::MatchOp as PMatchOp;
use promql_parser::parser as pp;

use super::QueryError;
use crate::labels::METRIC_NAME_LABEL;
use crate::matcher::{MatchOp, Matcher};

/// The `@` modifier.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum At {
    /// `@ <unix seconds>`, in milliseconds.
    Time(i64),
    /// `@ start()`: the range query's start (the instant query's time).
    Start,
    /// `@ end()`.
    End,
}

/// A vector selector with its modifiers.
#[derive(Clone, Debug, PartialEq)]
pub struct Selector {
    /// All matchers, the metric name included as a `__name__="…"` matcher.
    pub matchers: Vec<Matcher>,
    pub offset_ms: i64,
    pub at: Option<At>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BinOp {
    Add,
    Sub,
    Mul,
    Div,
    Mod,
    Pow,
    Atan2,
    Eq,
    Ne,
    Gt,
    Lt,
    Ge,
    Le,
    And,
    Or,
    Unless,
}

impl BinOp {
    pub fn is_comparison(self) -> bool {
        matches!(self, BinOp::Eq | BinOp::Ne | BinOp::Gt | BinOp::Lt | BinOp::Ge | BinOp::Le)
    }
    pub fn is_set(self) -> bool {
        matches!(self, BinOp::And | BinOp::Or | BinOp::Unless)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AggOp {
    Sum,
    Avg,
    Min,
    Max,
    Count,
    Group,
    Stddev,
    Stdvar,
    Topk,
    Bottomk,
    Quantile,
    CountValues,
    Limitk,
    LimitRatio,
}

/// `by (…)` / `without (…)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Grouping {
    By(Vec<String>),
    Without(Vec<String>),
}

/// Vector matching of a binary operation between two vectors.
#[derive(Clone, Debug, PartialEq)]
pub struct Matching {
    /// `on (…)` when true, `ignoring (…)` (or nothing) when false.
    pub on: bool,
    pub labels: Vec<String>,
    pub card: Card,
    /// `fill(…)`, `fill_left(…)`, `fill_right(…)`: values for a missing side.
    pub fill_lhs: Option<f64>,
    pub fill_rhs: Option<f64>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Card {
    OneToOne,
    /// `group_left (include…)`.
    ManyToOne(Vec<String>),
    /// `group_right (include…)`.
    OneToMany(Vec<String>),
    ManyToMany,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Expr {
    Number(f64),
    String(String),
    Vector(Selector),
    Matrix { selector: Selector, range_ms: i64 },
    Subquery { expr: Box<Expr>, range_ms: i64, step_ms: Option<i64>, offset_ms: i64, at: Option<At> },
    Neg(Box<Expr>),
    Paren(Box<Expr>),
    Binary { op: BinOp, lhs: Box<Expr>, rhs: Box<Expr>, matching: Matching, return_bool: bool },
    Aggregate { op: AggOp, expr: Box<Expr>, param: Option<Box<Expr>>, grouping: Option<Grouping> },
    Call { func: String, args: Vec<Expr> },
}

/// The PromQL type of an expression's value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ValueKind {
    Scalar,
    String,
    Vector,
    Matrix,
}

impl Expr {
    pub fn kind(&self) -> ValueKind {
        match self {
            Expr::Number(_) => ValueKind::Scalar,
            Expr::String(_) => ValueKind::String,
            Expr::Vector(_) => ValueKind::Vector,
            Expr::Matrix { .. } | Expr::Subquery { .. } => ValueKind::Matrix,
            Expr::Neg(e) | Expr::Paren(e) => e.kind(),
            Expr::Binary { lhs, rhs, .. } => {
                if lhs.kind() == ValueKind::Scalar && rhs.kind() == ValueKind::Scalar {
                    ValueKind::Scalar
                } else {
                    ValueKind::Vector
                }
            }
            Expr::Aggregate { .. } => ValueKind::Vector,
            Expr::Call { func, .. } => match func.as_str() {
                "time" | "scalar" | "pi" => ValueKind::Scalar,
                _ => ValueKind::Vector,
            },
        }
    }

    /// The expression with parentheses removed.
    pub fn unwrap_parens(&self) -> &Expr {
        let mut e = self;
        while let Expr::Paren(inner) = e {
            e = inner;
        }
        e
    }
}

fn duration_ms(d: &Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn offset_ms(o: &Option<pp::Offset>) -> i64 {
    match o {
        None => 0,
        Some(pp::Offset::Pos(d)) => duration_ms(d),
        Some(pp::Offset::Neg(d)) => -duration_ms(d),
    }
}

fn convert_at(at: &Option<pp::AtModifier>) -> Option<At> {
    at.as_ref().map(|a| match a {
        pp::AtModifier::Start => At::Start,
        pp::AtModifier::End => At::End,
        pp::AtModifier::At(t) => At::Time(match t.duration_since(UNIX_EPOCH) {
            Ok(d) => duration_ms(&d),
            Err(e) => -duration_ms(&e.duration()),
        }),
    })
}

fn convert_matcher(m: &promql_parser::label::Matcher) -> Result<Matcher, QueryError> {
    let op = match &m.op {
        PMatchOp::Equal => MatchOp::Equal,
        PMatchOp::NotEqual => MatchOp::NotEqual,
        PMatchOp::Re(_) => MatchOp::RegexMatch,
        PMatchOp::NotRe(_) => MatchOp::RegexNoMatch,
    };
    Matcher::new(op, m.name.clone(), m.value.clone()).map_err(|e| QueryError::Parse(e.to_string()))
}

fn convert_selector(vs: &pp::VectorSelector) -> Result<Selector, QueryError> {
    if !vs.matchers.or_matchers.is_empty() {
        return Err(QueryError::Unsupported("`or` inside a label matcher list".into()));
    }
    let mut matchers = Vec::new();
    if let Some(name) = &vs.name {
        matchers.push(Matcher::equal(METRIC_NAME_LABEL, name.clone()));
    }
    for m in &vs.matchers.matchers {
        let m = convert_matcher(m)?;
        if !matchers.contains(&m) {
            matchers.push(m);
        }
    }
    Ok(Selector { matchers, offset_ms: offset_ms(&vs.offset), at: convert_at(&vs.at) })
}

fn convert_binop(op: &str) -> Result<BinOp, QueryError> {
    Ok(match op {
        "+" => BinOp::Add,
        "-" => BinOp::Sub,
        "*" => BinOp::Mul,
        "/" => BinOp::Div,
        "%" => BinOp::Mod,
        "^" => BinOp::Pow,
        "atan2" => BinOp::Atan2,
        "==" => BinOp::Eq,
        "!=" => BinOp::Ne,
        ">" => BinOp::Gt,
        "<" => BinOp::Lt,
        ">=" => BinOp::Ge,
        "<=" => BinOp::Le,
        "and" => BinOp::And,
        "or" => BinOp::Or,
        "unless" => BinOp::Unless,
        other => return Err(QueryError::Unsupported(format!("binary operator {other:?}"))),
    })
}

fn convert_aggop(op: &str) -> Result<AggOp, QueryError> {
    Ok(match op {
        "sum" => AggOp::Sum,
        "avg" => AggOp::Avg,
        "min" => AggOp::Min,
        "max" => AggOp::Max,
        "count" => AggOp::Count,
        "group" => AggOp::Group,
        "stddev" => AggOp::Stddev,
        "stdvar" => AggOp::Stdvar,
        "topk" => AggOp::Topk,
        "bottomk" => AggOp::Bottomk,
        "quantile" => AggOp::Quantile,
        "count_values" => AggOp::CountValues,
        "limitk" => AggOp::Limitk,
        "limit_ratio" => AggOp::LimitRatio,
        other => return Err(QueryError::Unsupported(format!("aggregation {other:?}"))),
    })
}

/// Converts `promql-parser`'s tree into Sextant's.
pub(crate) fn convert(e: &pp::Expr) -> Result<Expr, QueryError> {
    Ok(match e {
        pp::Expr::NumberLiteral(n) => Expr::Number(n.val),
        pp::Expr::StringLiteral(s) => Expr::String(s.val.clone()),
        pp::Expr::VectorSelector(vs) => Expr::Vector(convert_selector(vs)?),
        pp::Expr::MatrixSelector(ms) => {
            Expr::Matrix { selector: convert_selector(&ms.vs)?, range_ms: duration_ms(&ms.range) }
        }
        pp::Expr::Subquery(sq) => Expr::Subquery {
            expr: Box::new(convert(&sq.expr)?),
            range_ms: duration_ms(&sq.range),
            step_ms: sq.step.as_ref().map(duration_ms).filter(|s| *s > 0),
            offset_ms: offset_ms(&sq.offset),
            at: convert_at(&sq.at),
        },
        pp::Expr::Unary(u) => Expr::Neg(Box::new(convert(&u.expr)?)),
        pp::Expr::Paren(p) => Expr::Paren(Box::new(convert(&p.expr)?)),
        pp::Expr::Binary(b) => {
            let op = convert_binop(&b.op.to_string())?;
            let mut matching = Matching {
                on: false,
                labels: Vec::new(),
                card: if op.is_set() { Card::ManyToMany } else { Card::OneToOne },
                fill_lhs: None,
                fill_rhs: None,
            };
            let mut return_bool = false;
            if let Some(m) = &b.modifier {
                return_bool = m.return_bool;
                if let Some(lm) = &m.matching {
                    matching.on = lm.is_include();
                    matching.labels = lm.labels().labels.clone();
                }
                matching.card = match &m.card {
                    pp::VectorMatchCardinality::OneToOne => {
                        if op.is_set() {
                            Card::ManyToMany
                        } else {
                            Card::OneToOne
                        }
                    }
                    pp::VectorMatchCardinality::ManyToOne(l) => Card::ManyToOne(l.labels.clone()),
                    pp::VectorMatchCardinality::OneToMany(l) => Card::OneToMany(l.labels.clone()),
                    pp::VectorMatchCardinality::ManyToMany => Card::ManyToMany,
                };
                matching.fill_lhs = m.fill_values.lhs;
                matching.fill_rhs = m.fill_values.rhs;
            }
            Expr::Binary { op, lhs: Box::new(convert(&b.lhs)?), rhs: Box::new(convert(&b.rhs)?), matching, return_bool }
        }
        pp::Expr::Aggregate(a) => Expr::Aggregate {
            op: convert_aggop(&a.op.to_string())?,
            expr: Box::new(convert(&a.expr)?),
            param: match &a.param {
                Some(p) => Some(Box::new(convert(p)?)),
                None => None,
            },
            grouping: a.modifier.as_ref().map(|m| match m {
                pp::LabelModifier::Include(l) => Grouping::By(l.labels.clone()),
                pp::LabelModifier::Exclude(l) => Grouping::Without(l.labels.clone()),
            }),
        },
        pp::Expr::Call(c) => {
            let func = c.func.name.to_string();
            let mut args: Vec<Expr> = c.args.args.iter().map(|a| convert(a)).collect::<Result<_, _>>()?;
            if func == "info" {
                // The info series selector defaults to `target_info`, and selects `target_info`
                // unless it names a metric itself; made explicit here so the planner fetches it.
                if args.len() == 1 {
                    args.push(Expr::Vector(Selector { matchers: Vec::new(), offset_ms: 0, at: None }));
                }
                if let Some(Expr::Vector(sel)) = args.get_mut(1) {
                    if !sel.matchers.iter().any(|m| m.name == METRIC_NAME_LABEL) {
                        sel.matchers.push(Matcher::equal(METRIC_NAME_LABEL, "target_info"));
                    }
                }
            }
            Expr::Call { func, args }
        }
        pp::Expr::Extension(_) => return Err(QueryError::Unsupported("parser extension expression".into())),
    })
}
