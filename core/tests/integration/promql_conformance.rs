//! Goal: hold the PromQL engine to Prometheus's own conformance suite (the promqltest scripts in
//! `$SEXTANT_SHARED/peer-suites/promql/*.test`), with every eval pinned in
//! `core/tests/integration/promql_expectations.txt` so that results can only improve.
//!
//! Method: a small interpreter of the promqltest language loads series into an in-memory
//! `SeriesSource`, runs each `eval` through the engine's two phases (plan → fetch → evaluate),
//! and compares results as Prometheus's runner does: label sets exactly, floats with
//! `almost.Equal` at epsilon 1e-6 (NaN equals NaN), order only under `expect ordered`. Like
//! Prometheus, an instant eval whose result is a vector or scalar is also run as a range query
//! (t-1m … t+1m, step 1m) and the middle step must match too. `expect warn`/`info`/`no_warn`/
//! `no_info` lines (and `eval_warn`/`eval_info`) are checked against the engine's annotations
//! by promqltest's rules (see `check_annotations`), on the query itself (not the range query
//! around t).
//!
//! An eval is "unsupported" only when (a) `promql-parser` cannot parse the query (and no failure
//! was expected) or (b) native histograms are involved: `{{…}}` in the expected result, or a
//! selector's fetch window holding a `{{…}}` sample of a series it matches (or a sample of the
//! histogram series `load_with_nhcb` creates; its float bucket series are loaded and used).
//!
//! `SEXTANT_WRITE_CONFORMANCE=1` rewrites docs/promql-conformance.md and the expectations file
//! (refused while anything regressed).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use sextant_core::labels::{Label, Labels};
use sextant_core::matcher::matches_all;
use sextant_core::promql::{
    eval_instant_annotated, eval_range_annotated, parse, Annotations, NoInterrupt, plan_instant, plan_range, FetchedData, FetchedSeries, QueryError, QueryLimits, SelectorFetch,
    SeriesSource, Value,
};
use sextant_core::sample::{is_stale_nan, stale_nan, Sample};

const EPSILON: f64 = 1e-6;

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Status {
    Pass,
    Fail(String),
    Unsupported(String),
}

impl Status {
    fn word(&self) -> &'static str {
        match self {
            Status::Pass => "pass",
            Status::Fail(_) => "fail",
            Status::Unsupported(_) => "unsupported",
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Storage.

/// One loaded series: its float samples (staleness markers included) and the timestamps of its
/// native-histogram samples, which the engine does not evaluate.
#[derive(Default)]
struct StoredSeries {
    floats: Vec<Sample>,
    histogram_ts: Vec<i64>,
}

#[derive(Default)]
struct Store {
    series: BTreeMap<Labels, StoredSeries>,
}

impl SeriesSource for Store {
    fn fetch(&self, sel: &SelectorFetch) -> Vec<FetchedSeries> {
        self.series
            .iter()
            .filter(|(l, _)| matches_all(&sel.matchers, l))
            .map(|(l, stored)| FetchedSeries {
                labels: l.clone(),
                samples: stored.floats.iter().copied().filter(|s| s.t >= sel.min_t && s.t <= sel.max_t).collect(),
            })
            .filter(|s| !s.samples.is_empty())
            .collect()
    }
}

impl Store {
    /// Why an eval involves native histograms through its data: a selector's fetch window holds
    /// a native-histogram sample of a series it matches. Decided by the samples the query reads,
    /// not by series or file names, so a float eval over a series that has histogram samples
    /// elsewhere in time is still evaluated.
    fn histogram_samples_read(&self, fetches: &[SelectorFetch]) -> Option<String> {
        for f in fetches {
            for (l, stored) in &self.series {
                if !matches_all(&f.matchers, l) {
                    continue;
                }
                if let Some(t) = stored.histogram_ts.iter().find(|t| **t >= f.min_t && **t <= f.max_t) {
                    return Some(format!("query reads a native-histogram sample of {l} at {}s", *t as f64 / 1000.0));
                }
            }
        }
        None
    }
}

// ---------------------------------------------------------------------------------------------
// Parsing helpers.

fn parse_duration_ms(s: &str) -> Option<i64> {
    let s = s.trim();
    if s.is_empty() {
        return None;
    }
    if let Ok(n) = s.parse::<i64>() {
        return Some(n * 1000);
    }
    let mut total: i64 = 0;
    let bytes = s.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let start = i;
        while i < bytes.len() && bytes[i].is_ascii_digit() {
            i += 1;
        }
        let n: i64 = s[start..i].parse().ok()?;
        let ustart = i;
        while i < bytes.len() && bytes[i].is_ascii_alphabetic() {
            i += 1;
        }
        let unit = match &s[ustart..i] {
            "ms" => 1,
            "s" => 1000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            "w" => 7 * 86_400_000,
            "y" => 365 * 86_400_000,
            _ => return None,
        };
        total = total.checked_add(n.checked_mul(unit)?)?;
    }
    Some(total)
}

fn parse_number(s: &str) -> Option<f64> {
    let t = s.trim();
    let (neg, body) = match t.strip_prefix('-') {
        Some(b) => (true, b),
        None => (false, t.strip_prefix('+').unwrap_or(t)),
    };
    let v = match body.to_ascii_lowercase().as_str() {
        "inf" | "infinity" => f64::INFINITY,
        "nan" => f64::NAN,
        b => {
            if let Some(hex) = b.strip_prefix("0x") {
                i64::from_str_radix(hex, 16).ok()? as f64
            } else {
                if !b.starts_with(|c: char| c.is_ascii_digit() || c == '.') {
                    return None;
                }
                b.replace('_', "").parse::<f64>().ok()?
            }
        }
    };
    Some(if neg { -v } else { v })
}

/// Reads a Go/PromQL quoted string starting at `s[0]`; returns (value, bytes consumed).
fn read_quoted(s: &str) -> Option<(String, usize)> {
    let quote = s.chars().next()?;
    if quote != '"' && quote != '\'' && quote != '`' {
        return None;
    }
    let mut out = String::new();
    let mut chars = s.char_indices().skip(1);
    while let Some((i, c)) = chars.next() {
        if c == quote {
            return Some((out, i + 1));
        }
        if c == '\\' && quote != '`' {
            let (_, e) = chars.next()?;
            match e {
                'n' => out.push('\n'),
                't' => out.push('\t'),
                'r' => out.push('\r'),
                '\\' => out.push('\\'),
                '"' => out.push('"'),
                '\'' => out.push('\''),
                'x' => {
                    let h: String = (0..2).filter_map(|_| chars.next().map(|x| x.1)).collect();
                    let b = u8::from_str_radix(&h, 16).ok()?;
                    // Byte escapes produce raw bytes in Go; keep valid UTF-8 by lossy mapping.
                    out.push_str(&String::from_utf8_lossy(&[b]));
                }
                'u' => {
                    let h: String = (0..4).filter_map(|_| chars.next().map(|x| x.1)).collect();
                    out.push(char::from_u32(u32::from_str_radix(&h, 16).ok()?)?);
                }
                other => {
                    out.push('\\');
                    out.push(other);
                }
            }
        } else {
            out.push(c);
        }
    }
    None
}

/// Splits `metric{a="b"} values…` into labels and the rest.
fn parse_series_labels(line: &str) -> Result<(Labels, &str), String> {
    let s = line.trim_start();
    let mut labels: Vec<Label> = Vec::new();
    let mut i = 0;
    let bytes = s.as_bytes();
    while i < bytes.len() && !bytes[i].is_ascii_whitespace() && bytes[i] != b'{' {
        i += 1;
    }
    if i > 0 {
        labels.push(Label::new("__name__", &s[..i]));
    }
    if i < bytes.len() && bytes[i] == b'{' {
        i += 1;
        loop {
            while i < bytes.len() && (bytes[i].is_ascii_whitespace() || bytes[i] == b',') {
                i += 1;
            }
            if i >= bytes.len() {
                return Err(format!("unterminated label set in {line:?}"));
            }
            if bytes[i] == b'}' {
                i += 1;
                break;
            }
            let name;
            if bytes[i] == b'"' || bytes[i] == b'\'' {
                let (v, n) = read_quoted(&s[i..]).ok_or("bad quoted label name")?;
                i += n;
                name = v;
            } else {
                let start = i;
                while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_' || bytes[i] == b':' || bytes[i] == b'.') {
                    i += 1;
                }
                name = s[start..i].to_string();
            }
            while i < bytes.len() && bytes[i].is_ascii_whitespace() {
                i += 1;
            }
            if i < bytes.len() && bytes[i] == b'=' {
                i += 1;
                while i < bytes.len() && bytes[i].is_ascii_whitespace() {
                    i += 1;
                }
                let (v, n) = read_quoted(&s[i..]).ok_or_else(|| format!("bad label value in {line:?}"))?;
                i += n;
                labels.push(Label::new(name, v));
            } else {
                // A lone quoted string is the metric name.
                labels.push(Label::new("__name__", name));
            }
        }
    }
    let labels: Vec<Label> = labels.into_iter().filter(|l| !l.value.is_empty()).collect();
    let labels = Labels::from_unsorted(labels).map_err(|e| e.to_string())?;
    Ok((labels, &s[i..]))
}

#[derive(Clone, Copy, Debug)]
enum Point {
    Value(f64),
    Omitted,
    Histogram,
}

/// Expands series notation: `1 2+3x4 _ _x3 stale {{…}}`.
fn parse_values(s: &str) -> Result<Vec<Point>, String> {
    let mut tokens: Vec<String> = Vec::new();
    let mut cur = String::new();
    let mut depth = 0;
    let chars: Vec<char> = s.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '{' && chars.get(i + 1) == Some(&'{') {
            depth += 1;
            cur.push_str("{{");
            i += 2;
            continue;
        }
        if c == '}' && chars.get(i + 1) == Some(&'}') && depth > 0 {
            depth -= 1;
            cur.push_str("}}");
            i += 2;
            continue;
        }
        if c.is_whitespace() && depth == 0 {
            if !cur.is_empty() {
                tokens.push(std::mem::take(&mut cur));
            }
        } else {
            cur.push(c);
        }
        i += 1;
    }
    if !cur.is_empty() {
        tokens.push(cur);
    }
    let mut out = Vec::new();
    for tok in tokens {
        if tok.contains("{{") {
            let repeat = tok.rsplit_once("}}x").and_then(|(_, n)| n.parse::<usize>().ok());
            for _ in 0..=repeat.unwrap_or(0) {
                out.push(Point::Histogram);
            }
            continue;
        }
        if tok == "_" {
            out.push(Point::Omitted);
            continue;
        }
        if let Some(n) = tok.strip_prefix("_x") {
            let n: usize = n.parse().map_err(|_| format!("bad token {tok:?}"))?;
            out.extend(std::iter::repeat_n(Point::Omitted, n));
            continue;
        }
        if tok == "stale" {
            out.push(Point::Value(stale_nan()));
            continue;
        }
        // `0x59` is zero repeated, not hexadecimal: repetition wins, as in Prometheus's lexer.
        let is_repeat = tok.rsplit_once('x').is_some_and(|(h, n)| !h.is_empty() && !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
        if !is_repeat {
            if let Some(v) = parse_number(&tok) {
                out.push(Point::Value(v));
                continue;
            }
        }
        // a x n, a+b x n, a-b x n
        let (head, n) = tok.rsplit_once('x').ok_or_else(|| format!("bad token {tok:?}"))?;
        let n: u64 = n.parse().map_err(|_| format!("bad repeat in {tok:?}"))?;
        let (mut start, inc) = if let Some(v) = parse_number(head) {
            (v, 0.0)
        } else {
            let split = head[1..].find(['+', '-']).map(|p| p + 1).ok_or_else(|| format!("bad token {tok:?}"))?;
            let a = parse_number(&head[..split]).ok_or_else(|| format!("bad token {tok:?}"))?;
            let b = parse_number(&head[split..]).ok_or_else(|| format!("bad token {tok:?}"))?;
            (a, b)
        };
        for _ in 0..=n {
            out.push(Point::Value(start));
            start += inc;
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Commands.

#[derive(Debug, Default)]
struct Expected {
    /// (labels, points) in file order.
    series: Vec<(Labels, Vec<Point>)>,
    scalar: Option<f64>,
    string: Option<String>,
    has_histogram: bool,
}

#[derive(Debug)]
enum Kind {
    Instant { t: i64 },
    Range { start: i64, end: i64, step: i64 },
}

#[derive(Debug)]
struct Eval {
    line: usize,
    query: String,
    kind: Kind,
    fail: bool,
    fail_msg: Option<String>,
    fail_regex: Option<String>,
    ordered: bool,
    range_vector: Option<(i64, i64, i64)>,
    expected: Expected,
    /// `expect warn|info|no_warn|no_info [msg: …|regex: …]` lines.
    annotations: Vec<AnnotationExpect>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum AnnotationKind {
    Warn,
    Info,
}

/// One `expect` line about annotations: `present == false` is `no_warn`/`no_info`.
#[derive(Clone, Debug)]
struct AnnotationExpect {
    kind: AnnotationKind,
    present: bool,
    msg: Option<String>,
    regex: Option<regex::Regex>,
}

impl AnnotationExpect {
    fn matches(&self, text: &str) -> bool {
        match (&self.msg, &self.regex) {
            (Some(m), _) => m == text,
            (None, Some(r)) => r.is_match(text),
            (None, None) => true,
        }
    }
}

/// The promqltest rules: every `expect warn|info` line matches at least one annotation of
/// its kind; once a kind has such a line, every annotation of that kind matches one of them;
/// `no_warn`/`no_info` mean none of that kind.
fn check_annotations(e: &Eval, annotations: &Annotations) -> Result<(), String> {
    for kind in [AnnotationKind::Warn, AnnotationKind::Info] {
        let got: Vec<&str> = match kind {
            AnnotationKind::Warn => annotations.warnings().collect(),
            AnnotationKind::Info => annotations.infos().collect(),
        };
        let lines: Vec<&AnnotationExpect> = e.annotations.iter().filter(|a| a.kind == kind).collect();
        for line in &lines {
            if !line.present {
                if !got.is_empty() {
                    return Err(format!("expected no {kind:?} annotations, got {got:?}"));
                }
                continue;
            }
            if !got.iter().any(|g| line.matches(g)) {
                return Err(format!("expected a {kind:?} annotation matching {:?}, got {got:?}", line.msg.as_deref().or(line.regex.as_ref().map(|r| r.as_str()))));
            }
        }
        let positive: Vec<&&AnnotationExpect> = lines.iter().filter(|l| l.present).collect();
        if !positive.is_empty() {
            if let Some(extra) = got.iter().find(|g| !positive.iter().any(|l| l.matches(g))) {
                return Err(format!("unexpected {kind:?} annotation {extra:?}"));
            }
        }
    }
    Ok(())
}

enum Command {
    Load { interval: i64, nhcb: bool, lines: Vec<String> },
    Clear,
    Eval(Box<Eval>),
    Broken { line: usize, why: String },
}

fn parse_script(text: &str) -> Vec<Command> {
    let lines: Vec<String> = text
        .lines()
        .map(|l| {
            let t = l.trim();
            if t.starts_with('#') {
                String::new()
            } else {
                t.to_string()
            }
        })
        .collect();
    let mut cmds = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let line = &lines[i];
        let lineno = i + 1;
        if line.is_empty() {
            i += 1;
            continue;
        }
        let (word, rest) = line.split_once(char::is_whitespace).unwrap_or((line.as_str(), ""));
        // `clear` is one line; `load` and `eval` own the lines up to the next blank one.
        let mut block = Vec::new();
        let mut j = i + 1;
        while word != "clear" && j < lines.len() && !lines[j].is_empty() {
            block.push(lines[j].clone());
            j += 1;
        }
        i = j;
        match word {
            "clear" => cmds.push(Command::Clear),
            "load" | "load_with_nhcb" => match parse_duration_ms(rest) {
                Some(interval) => cmds.push(Command::Load { interval, nhcb: word == "load_with_nhcb", lines: block }),
                None => cmds.push(Command::Broken { line: lineno, why: format!("bad load interval {rest:?}") }),
            },
            w if w.starts_with("eval") => match parse_eval(w, rest.trim(), &block, lineno) {
                Ok(e) => cmds.push(Command::Eval(Box::new(e))),
                Err(why) => cmds.push(Command::Broken { line: lineno, why }),
            },
            _ => cmds.push(Command::Broken { line: lineno, why: format!("unknown command {word:?}") }),
        }
    }
    cmds
}

fn parse_eval(word: &str, rest: &str, block: &[String], line: usize) -> Result<Eval, String> {
    let mut e = Eval {
        line,
        query: String::new(),
        kind: Kind::Instant { t: 0 },
        fail: word == "eval_fail",
        fail_msg: None,
        fail_regex: None,
        ordered: word == "eval_ordered",
        range_vector: None,
        expected: Expected::default(),
        annotations: Vec::new(),
    };
    // The deprecated `eval_warn`/`eval_info` forms expect at least one annotation.
    match word {
        "eval_warn" => e.annotations.push(AnnotationExpect { kind: AnnotationKind::Warn, present: true, msg: None, regex: None }),
        "eval_info" => e.annotations.push(AnnotationExpect { kind: AnnotationKind::Info, present: true, msg: None, regex: None }),
        _ => {}
    }
    let words: Vec<&str> = rest.split_whitespace().collect();
    if words.first() == Some(&"instant") && words.get(1) == Some(&"at") {
        let t = parse_duration_ms(words.get(2).ok_or("missing time")?).ok_or("bad time")?;
        e.kind = Kind::Instant { t };
        e.query = words[3..].join(" ");
        // Keep the original spacing of the query.
        let idx = rest.find(words.get(2).copied().unwrap_or("")).unwrap_or(0) + words[2].len();
        e.query = rest[idx..].trim().to_string();
    } else if words.first() == Some(&"range") && words.get(1) == Some(&"from") && words.get(3) == Some(&"to") && words.get(5) == Some(&"step") {
        let start = parse_duration_ms(words[2]).ok_or("bad start")?;
        let end = parse_duration_ms(words[4]).ok_or("bad end")?;
        let step = parse_duration_ms(words[6]).ok_or("bad step")?;
        e.kind = Kind::Range { start, end, step };
        let mut idx = 0;
        for w in &words[..7] {
            idx = rest[idx..].find(w).map(|p| p + idx + w.len()).ok_or("bad eval line")?;
        }
        e.query = rest[idx..].trim().to_string();
    } else {
        return Err(format!("cannot parse eval line {rest:?}"));
    }
    for l in block {
        if let Some(x) = l.strip_prefix("expected_fail_message") {
            e.fail = true;
            e.fail_msg = Some(x.trim().to_string());
            continue;
        }
        if let Some(x) = l.strip_prefix("expected_fail_regexp") {
            e.fail = true;
            e.fail_regex = Some(x.trim().to_string());
            continue;
        }
        if let Some(x) = l.strip_prefix("expect ") {
            let x = x.trim();
            if let Some(f) = x.strip_prefix("fail") {
                e.fail = true;
                let f = f.trim();
                if let Some(m) = f.strip_prefix("msg:") {
                    e.fail_msg = Some(m.trim().to_string());
                } else if let Some(r) = f.strip_prefix("regex:") {
                    e.fail_regex = Some(r.trim().to_string());
                }
            } else if x == "ordered" {
                e.ordered = true;
            } else if let Some(r) = x.strip_prefix("range vector") {
                let w: Vec<&str> = r.split_whitespace().collect();
                if w.len() == 6 && w[0] == "from" && w[2] == "to" && w[4] == "step" {
                    e.range_vector = Some((
                        parse_duration_ms(w[1]).ok_or("bad range vector start")?,
                        parse_duration_ms(w[3]).ok_or("bad range vector end")?,
                        parse_duration_ms(w[5]).ok_or("bad range vector step")?,
                    ));
                } else {
                    return Err(format!("bad expect range vector line {l:?}"));
                }
            } else if let Some(s) = x.strip_prefix("string") {
                let s = s.trim();
                e.expected.string = Some(read_quoted(s).map(|x| x.0).ok_or("bad expected string")?);
            }
            let (kind, present, rest) = if let Some(r) = x.strip_prefix("no_warn") {
                (AnnotationKind::Warn, false, r)
            } else if let Some(r) = x.strip_prefix("no_info") {
                (AnnotationKind::Info, false, r)
            } else if let Some(r) = x.strip_prefix("warn") {
                (AnnotationKind::Warn, true, r)
            } else if let Some(r) = x.strip_prefix("info") {
                (AnnotationKind::Info, true, r)
            } else {
                continue;
            };
            let rest = rest.trim();
            let mut expect = AnnotationExpect { kind, present, msg: None, regex: None };
            if let Some(m) = rest.strip_prefix("msg:") {
                expect.msg = Some(m.trim().to_string());
            } else if let Some(r) = rest.strip_prefix("regex:") {
                expect.regex = Some(regex::Regex::new(r.trim()).map_err(|err| format!("bad annotation regex {r:?}: {err}"))?);
            }
            e.annotations.push(expect);
            continue;
        }
        if let Some(v) = parse_number(l) {
            e.expected.scalar = Some(v);
            continue;
        }
        if l.contains("{{") {
            e.expected.has_histogram = true;
        }
        let (labels, values) = parse_series_labels(l)?;
        let points = parse_values(values)?;
        e.expected.series.push((labels, points));
    }
    Ok(e)
}

// ---------------------------------------------------------------------------------------------
// Running.

fn almost_equal(a: f64, b: f64) -> bool {
    if a.is_nan() && b.is_nan() {
        return true;
    }
    if a == b {
        return true;
    }
    let min_normal = f64::MIN_POSITIVE;
    let abs_sum = a.abs() + b.abs();
    let diff = (a - b).abs();
    if a == 0.0 || b == 0.0 || abs_sum < min_normal {
        return diff < EPSILON * min_normal;
    }
    diff / abs_sum.min(f64::MAX) < EPSILON
}

fn load(store: &mut Store, interval: i64, nhcb: bool, lines: &[String]) -> Result<(), String> {
    for l in lines {
        let (labels, values) = parse_series_labels(l)?;
        let points = parse_values(values)?;
        let entry = store.series.entry(labels.clone()).or_default();
        for (i, p) in points.iter().enumerate() {
            let t = i as i64 * interval;
            match p {
                Point::Value(v) => {
                    entry.floats.retain(|s| s.t != t);
                    entry.histogram_ts.retain(|x| *x != t);
                    entry.floats.push(Sample::new(t, *v));
                }
                Point::Histogram => {
                    entry.floats.retain(|s| s.t != t);
                    entry.histogram_ts.retain(|x| *x != t);
                    entry.histogram_ts.push(t);
                }
                Point::Omitted => {}
            }
        }
        entry.floats.sort_by_key(|s| s.t);
        if nhcb {
            let name = labels.metric_name();
            if let Some(base) = name.strip_suffix("_bucket") {
                let hist: Vec<Label> = labels
                    .iter()
                    .filter(|l| l.name != "le")
                    .map(|l| if l.name == "__name__" { Label::new("__name__", base) } else { l.clone() })
                    .collect();
                // The converted series holds a histogram wherever a bucket series has a value.
                if let Ok(h) = Labels::from_unsorted(hist) {
                    let ts: Vec<i64> = points
                        .iter()
                        .enumerate()
                        .filter(|(_, p)| matches!(p, Point::Value(v) if !is_stale_nan(*v)))
                        .map(|(i, _)| i as i64 * interval)
                        .collect();
                    let target = &mut store.series.entry(h).or_default().histogram_ts;
                    target.extend(ts);
                    target.sort_unstable();
                    target.dedup();
                }
            }
        }
    }
    Ok(())
}

fn check_error(e: &Eval, msg: &str) -> Status {
    if let Some(m) = &e.fail_msg {
        if m != msg {
            return Status::Fail(format!("expected error {m:?}, got {msg:?}"));
        }
    }
    if let Some(r) = &e.fail_regex {
        match regex::Regex::new(r) {
            Ok(re) if re.is_match(msg) => {}
            _ => return Status::Fail(format!("expected error matching {r:?}, got {msg:?}")),
        }
    }
    Status::Pass
}

fn fmt_points(points: &[(i64, f64)]) -> String {
    let v: Vec<String> = points.iter().map(|(t, v)| format!("{v}@{t}")).collect();
    v.join(" ")
}

/// Compares actual series (labels → (t, v) points) with the expected ones.
fn compare_series(expected: &[(Labels, Vec<(i64, f64)>)], actual: &[(Labels, Vec<(i64, f64)>)], ordered: bool) -> Result<(), String> {
    let exp: BTreeMap<&Labels, (usize, &Vec<(i64, f64)>)> = expected.iter().enumerate().map(|(i, (l, p))| (l, (i, p))).collect();
    if exp.len() != expected.len() {
        return Err("duplicate series in expectation".into());
    }
    for (pos, (l, points)) in actual.iter().enumerate() {
        let Some((epos, epoints)) = exp.get(l) else {
            return Err(format!("unexpected metric {} in result, with values {}", prom(l), fmt_points(points)));
        };
        if ordered && *epos != pos {
            return Err(format!("expected metric {} at position {} but was at {}", prom(l), epos + 1, pos + 1));
        }
        if epoints.len() != points.len() {
            return Err(format!("expected {} points for {}, got {}: expected [{}], got [{}]", epoints.len(), prom(l), points.len(), fmt_points(epoints), fmt_points(points)));
        }
        for ((et, ev), (at, av)) in epoints.iter().zip(points) {
            if et != at || !almost_equal(*ev, *av) {
                return Err(format!("expected {} for {} but got {}", fmt_points(epoints), prom(l), fmt_points(points)));
            }
        }
    }
    if actual.len() != expected.len() {
        for (l, p) in expected {
            if !actual.iter().any(|(al, _)| al == l) {
                return Err(format!("expected metric {} with [{}] not found", prom(l), fmt_points(p)));
            }
        }
    }
    Ok(())
}

fn prom(l: &Labels) -> String {
    let inner: Vec<String> = l.iter().map(|x| format!("{}={:?}", x.name, x.value)).collect();
    format!("{{{}}}", inner.join(", "))
}

fn expected_points(points: &[Point], start: i64, step: i64) -> Vec<(i64, f64)> {
    points
        .iter()
        .enumerate()
        .filter_map(|(i, p)| match p {
            Point::Value(v) => Some((start + i as i64 * step, *v)),
            _ => None,
        })
        .collect()
}

/// The status of an eval whose query returned `err`. An engine `Unsupported` error is always a
/// failure: it is not one of the two causes that may make an eval unsupported, and an expected
/// failure must not pass merely because the engine lacks a feature.
fn error_status(e: &Eval, err: &QueryError) -> Status {
    if let QueryError::Unsupported(why) = err {
        return Status::Fail(format!("the engine does not evaluate it: {why}"));
    }
    if e.fail {
        check_error(e, &err.to_string())
    } else {
        Status::Fail(format!("unexpected error: {err}"))
    }
}

fn run_eval(store: &Store, e: &Eval) -> Status {
    let limits = QueryLimits::default();
    let expr = match parse(&e.query) {
        Ok(x) => x,
        Err(QueryError::Parse(msg)) => {
            if e.fail && check_error(e, &msg) == Status::Pass {
                return Status::Pass;
            }
            // The parser refused the query: syntax it does not know (duration expressions,
            // `anchored`/`smoothed`). An expected failure refused with another message than
            // Prometheus's is listed the same way, saying so.
            let note = if e.fail { " (an expected failure, but Prometheus's message differs)" } else { "" };
            return Status::Unsupported(format!("promql-parser cannot parse it{note}: {msg}"));
        }
        // Errors found while converting the parsed tree are the engine's own.
        Err(err) => return error_status(e, &err),
    };
    if e.expected.has_histogram {
        return Status::Unsupported("expected result contains native histograms".into());
    }
    let plan = match e.kind {
        Kind::Instant { t } => plan_instant(&expr, t, limits.lookback_ms),
        Kind::Range { start, end, step } => plan_range(&expr, start, end, step, limits.lookback_ms),
    };
    // An instant eval is also run as a range query around t (below): both read windows count.
    let mut read = plan.selectors.clone();
    if let Kind::Instant { t } = e.kind {
        read.extend(plan_range(&expr, t - 60_000, t + 60_000, 60_000, limits.lookback_ms).selectors);
    }
    if let Some(why) = store.histogram_samples_read(&read) {
        return Status::Unsupported(why);
    }
    let data = FetchedData::fetch_all(&plan, store);
    match e.kind {
        Kind::Instant { t } => {
            let result = eval_instant_annotated(&expr, t, &data, &limits, &NoInterrupt);
            let value = match result {
                Err(err) => return error_status(e, &err),
                Ok(_) if e.fail => return Status::Fail("expected an error, got a result".into()),
                Ok((v, annotations)) => {
                    if let Err(why) = check_annotations(e, &annotations) {
                        return Status::Fail(why);
                    }
                    v
                }
            };
            let first = compare_instant(e, &value, t);
            if first != Status::Pass || e.ordered {
                return first;
            }
            // Prometheus also runs the query as a range query around t and checks the middle step.
            if matches!(value, Value::Vector(_) | Value::Scalar { .. }) {
                let (start, end) = (t - 60_000, t + 60_000);
                let plan = plan_range(&expr, start, end, 60_000, limits.lookback_ms);
                let data = FetchedData::fetch_all(&plan, store);
                match eval_range_annotated(&expr, start, end, 60_000, &data, &limits, &NoInterrupt) {
                    Err(err) => return Status::Fail(format!("as a range query around t: unexpected error: {err}")),
                    Ok((m, _)) => {
                        let mut vec = Vec::new();
                        for s in m {
                            if let Some(p) = s.samples.iter().find(|p| p.t == t) {
                                vec.push(sextant_core::promql::VectorSample { labels: s.labels.clone(), t, v: p.v });
                            }
                        }
                        let as_value = match value {
                            Value::Scalar { .. } => match vec.first() {
                                Some(v) => Value::Scalar { t, v: v.v },
                                None => return Status::Fail("as a range query around t: no scalar value".into()),
                            },
                            _ => Value::Vector(vec),
                        };
                        if let Status::Fail(why) = compare_instant(e, &as_value, t) {
                            return Status::Fail(format!("as a range query around t: {why}"));
                        }
                    }
                }
            }
            Status::Pass
        }
        Kind::Range { start, end, step } => match eval_range_annotated(&expr, start, end, step, &data, &limits, &NoInterrupt) {
            Err(err) => error_status(e, &err),
            Ok(_) if e.fail => Status::Fail("expected an error, got a result".into()),
            Ok((m, annotations)) => {
                if let Err(why) = check_annotations(e, &annotations) {
                    return Status::Fail(why);
                }
                let actual: Vec<(Labels, Vec<(i64, f64)>)> =
                    m.into_iter().map(|s| (s.labels, s.samples.iter().map(|p| (p.t, p.v)).collect())).collect();
                let mut expected: Vec<(Labels, Vec<(i64, f64)>)> =
                    e.expected.series.iter().map(|(l, p)| (l.clone(), expected_points(p, start, step))).collect();
                if let Some(v) = e.expected.scalar {
                    expected.push((Labels::empty(), vec![(start, v)]));
                }
                match compare_series(&expected, &actual, false) {
                    Ok(()) => Status::Pass,
                    Err(why) => Status::Fail(why),
                }
            }
        },
    }
}

fn compare_instant(e: &Eval, value: &Value, t: i64) -> Status {
    let result = match value {
        Value::Scalar { v, .. } => match e.expected.scalar {
            Some(x) if almost_equal(x, *v) => Ok(()),
            Some(x) => Err(format!("expected scalar {x} but got {v}")),
            None => Err(format!("expected vector or matrix result, got scalar {v}")),
        },
        Value::String { v, .. } => match &e.expected.string {
            Some(x) if x == v => Ok(()),
            other => Err(format!("expected string {other:?}, got {v:?}")),
        },
        Value::Vector(vec) => {
            if e.expected.scalar.is_some() {
                Err("expected scalar, got vector".into())
            } else {
                let actual: Vec<(Labels, Vec<(i64, f64)>)> = vec.iter().map(|s| (s.labels.clone(), vec![(t, s.v)])).collect();
                let expected: Vec<(Labels, Vec<(i64, f64)>)> =
                    e.expected.series.iter().map(|(l, p)| (l.clone(), expected_points(p, t, 0).into_iter().take(1).collect())).collect();
                if e.expected.series.iter().any(|(_, p)| p.len() != 1) {
                    Err("expectation for an instant vector must have exactly one value per series".into())
                } else {
                    compare_series(&expected, &actual, e.ordered)
                }
            }
        }
        Value::Matrix(m) => {
            let actual: Vec<(Labels, Vec<(i64, f64)>)> =
                m.iter().map(|s| (s.labels.clone(), s.samples.iter().filter(|p| !is_stale_nan(p.v)).map(|p| (p.t, p.v)).collect())).collect();
            match e.range_vector {
                Some((start, _end, step)) => {
                    let expected: Vec<(Labels, Vec<(i64, f64)>)> =
                        e.expected.series.iter().map(|(l, p)| (l.clone(), expected_points(p, start, step))).collect();
                    compare_series(&expected, &actual, e.ordered)
                }
                None => Err("instant query returned a range vector but the eval has no `expect range vector`".into()),
            }
        }
    };
    match result {
        Ok(()) => Status::Pass,
        Err(why) => Status::Fail(why),
    }
}

fn run_file(text: &str) -> Vec<(usize, Status)> {
    let mut store = Store::default();
    let mut out = Vec::new();
    for cmd in parse_script(text) {
        match cmd {
            Command::Clear => store = Store::default(),
            Command::Load { interval, nhcb, lines } => {
                if let Err(why) = load(&mut store, interval, nhcb, &lines) {
                    eprintln!("load failed: {why}");
                }
            }
            Command::Eval(e) => {
                let status = run_eval(&store, &e);
                out.push((e.line, status));
            }
            Command::Broken { line, why } => out.push((line, Status::Fail(format!("runner cannot read this command: {why}")))),
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Expectations and report.

fn suite_dir() -> PathBuf {
    if let Ok(s) = std::env::var("SEXTANT_SHARED") {
        return PathBuf::from(s).join("peer-suites/promql");
    }
    // Default: `../shared` next to the workspace root; a git worktree may sit deeper, so the
    // nearest ancestor holding `shared/peer-suites/promql` is used.
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let default = manifest.join("../../shared/peer-suites/promql");
    for dir in manifest.ancestors() {
        let candidate = dir.join("shared/peer-suites/promql");
        if candidate.is_dir() {
            return candidate;
        }
    }
    default
}

fn read_expectations(path: &Path) -> BTreeMap<String, String> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_once(' ').map(|(k, v)| (k.to_string(), v.trim().to_string())))
        .collect()
}

fn one_line(s: &str) -> String {
    let s = s.replace('\n', " ").replace('|', "\\|");
    if s.chars().count() > 300 {
        format!("{}…", s.chars().take(300).collect::<String>())
    } else {
        s
    }
}

#[test]
fn promql_conformance() {
    let dir = suite_dir();
    if !dir.is_dir() {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("PromQL conformance suite not found at {} (set SEXTANT_SHARED)", dir.display());
        }
        eprintln!("skipping PromQL conformance: {} not found (set SEXTANT_SHARED)", dir.display());
        return;
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("read suite dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "test"))
        .collect();
    files.sort();
    let mut results: Vec<(String, usize, Status)> = Vec::new();
    for f in &files {
        let name = f.file_name().unwrap().to_string_lossy().to_string();
        let text = std::fs::read_to_string(f).expect("read test file");
        let outcome = std::panic::catch_unwind(|| run_file(&text));
        match outcome {
            Ok(list) => results.extend(list.into_iter().map(|(l, s)| (name.clone(), l, s))),
            Err(_) => results.push((name.clone(), 0, Status::Fail("the runner or engine panicked".into()))),
        }
    }
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let exp_path = manifest.join("tests/integration/promql_expectations.txt");
    let write = std::env::var("SEXTANT_WRITE_CONFORMANCE").as_deref() == Ok("1");
    let bootstrap = !exp_path.exists();
    assert!(write || !bootstrap, "{} is missing; create it with SEXTANT_WRITE_CONFORMANCE=1", exp_path.display());
    let expectations = read_expectations(&exp_path);
    let mut regressions = Vec::new();
    for (file, line, status) in &results {
        let key = format!("{file}:{line}");
        let now = status.word();
        let regressed = match expectations.get(&key).map(|s| s.as_str()) {
            Some("pass") => now != "pass",
            Some("fail") => now == "unsupported",
            Some(_) => false,
            None => now != "pass",
        };
        if regressed && !bootstrap {
            let why = match status {
                Status::Fail(w) | Status::Unsupported(w) => w.clone(),
                Status::Pass => String::new(),
            };
            regressions.push(format!("{key}: expected {}, now {now}: {why}", expectations.get(&key).map(|s| s.as_str()).unwrap_or("(new)")));
        }
    }
    // Report.
    let mut per_file: BTreeMap<&str, [usize; 3]> = BTreeMap::new();
    for (file, _, s) in &results {
        let c = per_file.entry(file).or_default();
        match s {
            Status::Pass => c[0] += 1,
            Status::Fail(_) => c[1] += 1,
            Status::Unsupported(_) => c[2] += 1,
        }
    }
    let totals = per_file.values().fold([0usize; 3], |a, c| [a[0] + c[0], a[1] + c[1], a[2] + c[2]]);
    let mut summary = String::new();
    for (f, c) in &per_file {
        let _ = writeln!(summary, "| {f} | {} | {} | {} |", c[0], c[1], c[2]);
    }
    let _ = writeln!(summary, "| **total** | **{}** | **{}** | **{}** |", totals[0], totals[1], totals[2]);
    eprintln!("PromQL conformance:\n| file | pass | fail | unsupported |\n|---|---|---|---|\n{summary}");
    if write {
        assert!(regressions.is_empty(), "refusing to rewrite expectations while evals regressed:\n{}", regressions.join("\n"));
        let mut doc = String::new();
        doc.push_str("# PromQL conformance\n\n");
        doc.push_str("Generated by `SEXTANT_WRITE_CONFORMANCE=1 cargo test -p sextant-core --test integration promql_conformance`; do not edit by hand.\n\n");
        doc.push_str("The suite is Prometheus's promqltest scripts (`../shared/peer-suites/promql/*.test`). Floats compare with ");
        doc.push_str("`almost.Equal` at epsilon 1e-6; instant evals are also checked as range queries (t-1m … t+1m) as Prometheus's runner does; ");
        doc.push_str("`expect warn`/`info`/`no_warn`/`no_info` lines are checked against the engine's annotations by promqltest's rules. \"Unsupported\" is only a query `promql-parser` cannot parse, ");
        doc.push_str("or an eval whose data or expected result involves native histograms: a `{{…}}` in the expected result, or a native-histogram ");
        doc.push_str("sample (loaded with `{{…}}` or created by `load_with_nhcb`) inside a window the query reads. ");
        doc.push_str("An engine that cannot evaluate a query is a failure, never \"unsupported\".\n\n");
        doc.push_str("| file | pass | fail | unsupported |\n|---|---|---|---|\n");
        doc.push_str(&summary);
        for (f, _) in &per_file {
            let listed: Vec<&(String, usize, Status)> = results.iter().filter(|(file, _, s)| file == f && *s != Status::Pass).collect();
            if listed.is_empty() {
                continue;
            }
            let _ = writeln!(doc, "\n## {f}\n");
            for (file, line, s) in listed {
                let (word, why) = match s {
                    Status::Fail(w) => ("fail", w),
                    Status::Unsupported(w) => ("unsupported", w),
                    Status::Pass => continue,
                };
                let _ = writeln!(doc, "- `{file}:{line}` {word}: {}", one_line(why));
            }
        }
        std::fs::write(manifest.join("../docs/promql-conformance.md"), doc).expect("write docs/promql-conformance.md");
        let mut exp = String::from("# file:line → pass | fail | unsupported. Regenerate with SEXTANT_WRITE_CONFORMANCE=1; may only improve.\n");
        for (file, line, s) in &results {
            let _ = writeln!(exp, "{file}:{line} {}", s.word());
        }
        std::fs::write(&exp_path, exp).expect("write expectations");
    }
    assert!(regressions.is_empty(), "{} PromQL conformance regressions:\n{}", regressions.len(), regressions.join("\n"));
}
