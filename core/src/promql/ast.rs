//! Sextant's PromQL expression tree, converted from `promql-parser`'s so that the rest of the
//! engine works with milliseconds and [`crate::matcher::Matcher`].

use std::collections::BTreeMap;
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

fn convert_matcher(m: &promql_parser::label::Matcher, fixes: &StringFixes) -> Result<Matcher, QueryError> {
    let op = match &m.op {
        PMatchOp::Equal => MatchOp::Equal,
        PMatchOp::NotEqual => MatchOp::NotEqual,
        PMatchOp::Re(_) => MatchOp::RegexMatch,
        PMatchOp::NotRe(_) => MatchOp::RegexNoMatch,
    };
    Matcher::new(op, m.name.clone(), fixes.string(&m.value)).map_err(|e| QueryError::Parse(e.to_string()))
}

fn convert_selector(vs: &pp::VectorSelector, fixes: &StringFixes) -> Result<Selector, QueryError> {
    if !vs.matchers.or_matchers.is_empty() {
        return Err(QueryError::Unsupported("`or` inside a label matcher list".into()));
    }
    let mut matchers = Vec::new();
    if let Some(name) = &vs.name {
        matchers.push(Matcher::equal(METRIC_NAME_LABEL, name.clone()));
    }
    // Repeated matchers are kept: `absent(x{job="a",job="a"})` drops `job` from its output in
    // Prometheus because the label is matched twice. Matching is unaffected, and the planner
    // identifies a selector by its matcher set, repeats ignored.
    for m in &vs.matchers.matchers {
        let m = convert_matcher(m, fixes)?;
        if m.name == METRIC_NAME_LABEL && matchers.contains(&m) {
            continue;
        }
        matchers.push(m);
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

/// Go's `strconv.Unquote` of one PromQL string literal (quotes included), as bytes: `\x`
/// and octal escapes are single bytes, which may not form valid UTF-8. `None` when the literal
/// is malformed (the parser refuses those itself).
fn go_unquote(raw: &str) -> Option<Vec<u8>> {
    let quote = raw.chars().next()?;
    let inner = raw.get(1..raw.len().checked_sub(1)?)?;
    if quote == '`' {
        return Some(inner.as_bytes().to_vec());
    }
    let mut out = Vec::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            let mut buf = [0u8; 4];
            out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            continue;
        }
        let e = chars.next()?;
        let simple = match e {
            'a' => Some(0x07),
            'b' => Some(0x08),
            'f' => Some(0x0c),
            'n' => Some(b'\n'),
            'r' => Some(b'\r'),
            't' => Some(b'\t'),
            'v' => Some(0x0b),
            '\\' => Some(b'\\'),
            '"' | '\'' => Some(e as u8),
            _ => None,
        };
        if let Some(b) = simple {
            out.push(b);
            continue;
        }
        match e {
            'x' => {
                let hex: String = chars.by_ref().take(2).collect();
                out.push(u8::from_str_radix(&hex, 16).ok()?);
            }
            'u' | 'U' => {
                let n = if e == 'u' { 4 } else { 8 };
                let hex: String = chars.by_ref().take(n).collect();
                let c = char::from_u32(u32::from_str_radix(&hex, 16).ok()?)?;
                let mut buf = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
            '0'..='7' => {
                let rest: String = chars.by_ref().take(2).collect();
                out.push(u8::try_from(u32::from_str_radix(&format!("{e}{rest}"), 8).ok()?).ok()?);
            }
            _ => return None,
        }
    }
    Some(out)
}

/// The raw string literals of a query in source order (comments skipped).
fn raw_string_literals(query: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let bytes = query.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'#' => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
            }
            q @ (b'"' | b'\'' | b'`') => {
                let start = i;
                i += 1;
                while i < bytes.len() && bytes[i] != q {
                    if bytes[i] == b'\\' && q != b'`' {
                        i += 1;
                    }
                    i += 1;
                }
                if i < bytes.len() {
                    out.push(&query[start..=i]);
                }
                i += 1;
            }
            _ => i += 1,
        }
    }
    out
}

/// A string literal whose Go value (Prometheus's) is not valid UTF-8, shown with the escapes
/// it was written with.
#[derive(Clone, Debug)]
struct InvalidUtf8(String);

/// Corrections to `promql-parser`'s string values. The parser decodes `\xff` as the character
/// U+00FF, where Go (and so Prometheus) yields the byte 0xff: `"\xc3\xbf"` is `ÿ` in Prometheus
/// but `Ã¿` in the parser, and `"\xff"` alone is invalid UTF-8, which is never a valid label
/// name. The parser keeps no source positions for string literals, so corrections are keyed by
/// the parser's value; two literals with the same parser value but different Go values in one
/// query (`"ÿ"` and `"\xff"`) would share the first one's correction.
#[derive(Default)]
struct StringFixes {
    by_parser_value: BTreeMap<String, Result<String, InvalidUtf8>>,
}

impl StringFixes {
    fn from_query(query: &str) -> Self {
        let mut by_parser_value = BTreeMap::new();
        for raw in raw_string_literals(query) {
            let (Ok(parsed), Some(go)) = (promql_parser::util::unquote_string(raw), go_unquote(raw)) else {
                continue;
            };
            if parsed.as_bytes() == go.as_slice() {
                continue;
            }
            let fixed = String::from_utf8(go).map_err(|_| InvalidUtf8(raw[1..raw.len() - 1].to_string()));
            by_parser_value.entry(parsed).or_insert(fixed);
        }
        StringFixes { by_parser_value }
    }

    /// The Go value of a string the parser decoded as `parsed`.
    fn value(&self, parsed: &str) -> Result<String, InvalidUtf8> {
        match self.by_parser_value.get(parsed) {
            Some(fixed) => fixed.clone(),
            None => Ok(parsed.to_string()),
        }
    }

    /// A string-literal argument whose Go value is not valid UTF-8.
    fn invalid(&self, e: &pp::Expr) -> Option<String> {
        match e {
            pp::Expr::Paren(p) => self.invalid(&p.expr),
            pp::Expr::StringLiteral(s) => self.value(&s.val).err().map(|x| x.0),
            _ => None,
        }
    }
}

/// Converts `promql-parser`'s tree of `query` into Sextant's, with string literals given their
/// Go values (see [`StringFixes`]).
pub(crate) fn convert(query: &str, e: &pp::Expr) -> Result<Expr, QueryError> {
    StringFixes::from_query(query).convert(e)
}

impl StringFixes {
    /// Refuses a label name written as a string literal whose value is not valid UTF-8, as
    /// Prometheus's `model.LabelName.IsValid` does, with Prometheus's message for each place.
    fn check_label_name_args(&self, func: &str, args: &[Box<pp::Expr>]) -> Result<(), QueryError> {
        let invalid = |i: usize| args.get(i).and_then(|a| self.invalid(a));
        let err =
            |what: &str, v: String| Err(QueryError::Execution(format!("invalid {what} label name in {func}(): {v}")));
        match func {
            "label_replace" => match invalid(1) {
                Some(v) => err("destination", v),
                None => Ok(()),
            },
            "label_join" => {
                if let Some(v) = invalid(1) {
                    return err("destination", v);
                }
                match (3..args.len()).find_map(invalid) {
                    Some(v) => err("source", v),
                    None => Ok(()),
                }
            }
            _ => Ok(()),
        }
    }

    fn string(&self, parsed: &str) -> String {
        // An invalid value reaching a place that does not check names keeps the parser's
        // decoding: it cannot be represented in a Rust string.
        self.value(parsed).unwrap_or_else(|_| parsed.to_string())
    }

    fn convert(&self, e: &pp::Expr) -> Result<Expr, QueryError> {
        Ok(match e {
            pp::Expr::NumberLiteral(n) => Expr::Number(n.val),
            pp::Expr::StringLiteral(s) => Expr::String(self.string(&s.val)),
            pp::Expr::VectorSelector(vs) => Expr::Vector(convert_selector(vs, self)?),
            pp::Expr::MatrixSelector(ms) => {
                Expr::Matrix { selector: convert_selector(&ms.vs, self)?, range_ms: duration_ms(&ms.range) }
            }
            pp::Expr::Subquery(sq) => Expr::Subquery {
                expr: Box::new(self.convert(&sq.expr)?),
                range_ms: duration_ms(&sq.range),
                step_ms: sq.step.as_ref().map(duration_ms).filter(|s| *s > 0),
                offset_ms: offset_ms(&sq.offset),
                at: convert_at(&sq.at),
            },
            pp::Expr::Unary(u) => Expr::Neg(Box::new(self.convert(&u.expr)?)),
            pp::Expr::Paren(p) => Expr::Paren(Box::new(self.convert(&p.expr)?)),
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
                Expr::Binary {
                    op,
                    lhs: Box::new(self.convert(&b.lhs)?),
                    rhs: Box::new(self.convert(&b.rhs)?),
                    matching,
                    return_bool,
                }
            }
            pp::Expr::Aggregate(a) => Expr::Aggregate {
                op: {
                    let op = convert_aggop(&a.op.to_string())?;
                    if let Some(v) =
                        a.param.as_deref().and_then(|p| self.invalid(p)).filter(|_| op == AggOp::CountValues)
                    {
                        return Err(QueryError::Execution(format!("invalid label name \"{v}\"")));
                    }
                    op
                },
                expr: Box::new(self.convert(&a.expr)?),
                param: match &a.param {
                    Some(p) => Some(Box::new(self.convert(p)?)),
                    None => None,
                },
                grouping: a.modifier.as_ref().map(|m| match m {
                    pp::LabelModifier::Include(l) => Grouping::By(l.labels.clone()),
                    pp::LabelModifier::Exclude(l) => Grouping::Without(l.labels.clone()),
                }),
            },
            pp::Expr::Call(c) => {
                let func = c.func.name.to_string();
                self.check_label_name_args(&func, &c.args.args)?;
                let mut args: Vec<Expr> = c.args.args.iter().map(|a| self.convert(a)).collect::<Result<_, _>>()?;
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
}
