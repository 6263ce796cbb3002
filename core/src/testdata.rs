//! Deterministic node_exporter-shaped data for benchmarks, the load generator and the
//! simulator.
//!
//! The series come from a real node_exporter 1.5 scrape ([`NODE_EXPORTER_1_5_SCRAPE`], a copy
//! of `../shared/datasets/node-exporter-1.5-scrape.prom` compiled into the crate so that every
//! user sees the same 505 series) or from any exposition text given to [`parse_exposition`].
//! Each host gets a copy of every series with `instance="host-<n>:9100"` and `job="node"`.
//!
//! What the values do (storage issue, "Benchmarks"), decided per host with the seeded RNG:
//!
//! - counters: exactly [`COUNTER_RARE_FRACTION`] of a host's counters rarely move (one step
//!   with probability [`COUNTER_RARE_STEP_PROBABILITY`] per scrape); the others step every
//!   scrape by a random integer in `0..=`[`COUNTER_INTEGER_STEP_MAX`] when the scraped value
//!   is a whole number, else by a random amount in `0.00..=`[`COUNTER_DECIMAL_STEP_CENTS_MAX`]
//!   hundredths, so the value always has at most 2 decimals;
//! - gauges (everything not a counter: gauges, untyped, summary quantiles): exactly
//!   [`GAUGE_CONSTANT_FRACTION`] of a host's gauges are constant, the others random-walk by up
//!   to a thousandth of their starting magnitude (at least one unit: 1, or 0.01 for values
//!   with decimals), never below 0 when they started at or above 0;
//! - timestamps: host `h` scrapes at `start_ms + offset_h + k × interval_ms + jitter`, with a
//!   per-host offset in `0..interval_ms` and a jitter in `0..=jitter_ms_max` drawn per scrape
//!   (all series of one scrape share the timestamp, as in Prometheus).
//!
//! [`ValueShape::Constant`] with `jitter_ms_max = 0` gives perfectly regular data for
//! contrast: every value constant, every series exactly `interval_ms` apart.
//!
//! Values are kept as integers (units or hundredths) and divided on output, so a value "with
//! 2 decimals" is exactly the f64 a Prometheus scrape of that decimal text would give, and no
//! transcendental function (whose last bit may differ across platforms) is used. A generator
//! is a function of its config, its templates and its seed; each host draws from its own
//! stream, so a host's data does not depend on how many hosts there are after it.
//!
//! Pure code: no I/O, no clock. Time is the `start_ms` the caller passes.

use crate::determinism::DeterministicRng;
use crate::labels::{Label, LabelError, Labels, METRIC_NAME_LABEL};
use crate::sample::TimestampMs;

/// A real node_exporter 1.5 scrape (283 metric families, 505 series) of a Debian 12 VM.
pub const NODE_EXPORTER_1_5_SCRAPE: &str = include_str!("testdata/node-exporter-1.5-scrape.prom");

/// A classic histogram (10 buckets, `_sum`, `_count`) added to every generated host by the
/// query benchmark and `sextant bench-write`, so the dashboard query set's
/// `histogram_quantile` has data. Values are per-bucket starting counts; the users make them
/// cumulative over `le` (see [`histogram_layout`]).
pub const HISTOGRAM_EXPOSITION: &str = "\
# TYPE http_request_duration_seconds histogram
http_request_duration_seconds_bucket{le=\"0.005\"} 120
http_request_duration_seconds_bucket{le=\"0.01\"} 340
http_request_duration_seconds_bucket{le=\"0.025\"} 910
http_request_duration_seconds_bucket{le=\"0.05\"} 1500
http_request_duration_seconds_bucket{le=\"0.1\"} 800
http_request_duration_seconds_bucket{le=\"0.25\"} 260
http_request_duration_seconds_bucket{le=\"0.5\"} 90
http_request_duration_seconds_bucket{le=\"1\"} 30
http_request_duration_seconds_bucket{le=\"2.5\"} 7
http_request_duration_seconds_bucket{le=\"+Inf\"} 2
http_request_duration_seconds_sum 812.25
http_request_duration_seconds_count 4059
";

/// Positions within `templates` of [`HISTOGRAM_EXPOSITION`]'s buckets in `le` order, and of its
/// `_count`. Panics if the histogram is not among the templates (a benchmark setup error).
pub fn histogram_layout(templates: &[SeriesTemplate]) -> (Vec<usize>, usize) {
    let mut buckets: Vec<(f64, usize)> = templates
        .iter()
        .enumerate()
        .filter(|(_, t)| t.labels.metric_name() == "http_request_duration_seconds_bucket")
        .map(|(i, t)| {
            let le = t.labels.get("le");
            (if le == "+Inf" { f64::INFINITY } else { le.parse().expect("the bundled le values are numbers") }, i)
        })
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    let count = templates
        .iter()
        .position(|t| t.labels.metric_name() == "http_request_duration_seconds_count")
        .expect("the templates hold the bundled histogram's _count");
    (buckets.into_iter().map(|(_, i)| i).collect(), count)
}

/// Share of a host's counters that rarely move.
pub const COUNTER_RARE_FRACTION: f64 = 0.5;
/// Chance per scrape that a rarely-moving counter steps (by one unit).
pub const COUNTER_RARE_STEP_PROBABILITY: f64 = 0.01;
/// Largest step of a whole-number counter per scrape.
pub const COUNTER_INTEGER_STEP_MAX: i64 = 10;
/// Largest step, in hundredths, of a counter with decimals per scrape.
pub const COUNTER_DECIMAL_STEP_CENTS_MAX: i64 = 200;
/// Share of a host's gauges that never change.
pub const GAUGE_CONSTANT_FRACTION: f64 = 0.6;
/// Default scrape jitter bound (inclusive).
pub const JITTER_MS_MAX_DEFAULT: i64 = 3;
/// Default scrape interval.
pub const SCRAPE_INTERVAL_MS_DEFAULT: i64 = 15_000;

/// Values beyond this magnitude (in units or hundredths) are kept constant: f64 holds
/// integers exactly only up to 2^53.
const UNITS_ABS_MAX: f64 = 9.0e15;

const _: () = assert!(COUNTER_RARE_FRACTION >= 0.0 && COUNTER_RARE_FRACTION <= 1.0);
const _: () = assert!(GAUGE_CONSTANT_FRACTION >= 0.0 && GAUGE_CONSTANT_FRACTION <= 1.0);
const _: () = assert!(COUNTER_INTEGER_STEP_MAX > 0 && COUNTER_DECIMAL_STEP_CENTS_MAX > 0);

/// How Prometheus would type a sample: counters only go up, everything else may move freely.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SampleKind {
    Counter,
    Gauge,
}

/// One series of the scrape, before per-host labels are added.
#[derive(Clone, Debug, PartialEq)]
pub struct SeriesTemplate {
    /// `__name__` and the exposed labels; empty-valued labels dropped (Prometheus semantics).
    pub labels: Labels,
    pub kind: SampleKind,
    /// The scraped value.
    pub value: f64,
}

/// A line of exposition text that does not parse.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("exposition text line {line}: {reason}")]
pub struct ExpositionError {
    /// 1-based.
    pub line: usize,
    pub reason: String,
}

/// Parses Prometheus text exposition (version 0.0.4): `# TYPE` lines give the kinds, sample
/// lines give the series. Timestamps on sample lines are ignored. `_sum`, `_count` and
/// `_bucket` of summaries and histograms are counters; quantiles, gauges and untyped series
/// are gauges.
pub fn parse_exposition(text: &str) -> Result<Vec<SeriesTemplate>, ExpositionError> {
    let mut family_types: Vec<(String, String)> = Vec::new();
    let mut templates = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let line_number = index + 1;
        let fail = |reason: String| ExpositionError { line: line_number, reason };
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix('#') {
            let mut words = rest.split_whitespace();
            if words.next() == Some("TYPE") {
                let (Some(family), Some(kind)) = (words.next(), words.next()) else {
                    return Err(fail("TYPE line needs a metric name and a type".into()));
                };
                family_types.push((family.to_string(), kind.to_string()));
            }
            continue;
        }
        let (name, mut labels, rest) = parse_series(line).map_err(fail)?;
        let value_text = rest.split_whitespace().next().ok_or_else(|| fail("sample has no value".into()))?;
        let value = parse_value(value_text).ok_or_else(|| fail(format!("value {value_text:?} is not a number")))?;
        let kind = sample_kind(&name, &family_types);
        labels.push(Label::new(METRIC_NAME_LABEL, name));
        labels.retain(|label| !label.value.is_empty());
        let labels = Labels::from_unsorted(labels).map_err(|e: LabelError| fail(e.to_string()))?;
        templates.push(SeriesTemplate { labels, kind, value });
    }
    Ok(templates)
}

/// `name{a="b",...}` → (name, labels, the rest of the line).
fn parse_series(line: &str) -> Result<(String, Vec<Label>, &str), String> {
    let name_end = line.find(|c: char| c == '{' || c.is_whitespace()).ok_or("sample has no value")?;
    let name = &line[..name_end];
    if name.is_empty() {
        return Err("sample has no metric name".into());
    }
    let mut labels = Vec::new();
    let mut rest = &line[name_end..];
    if let Some(after_brace) = rest.strip_prefix('{') {
        rest = after_brace;
        loop {
            rest = rest.trim_start();
            if let Some(after) = rest.strip_prefix('}') {
                rest = after;
                break;
            }
            let equals = rest.find('=').ok_or("label without '='")?;
            let label_name = rest[..equals].trim();
            if label_name.is_empty() {
                return Err("empty label name".into());
            }
            let after_equals = rest[equals + 1..].trim_start();
            let quoted = after_equals.strip_prefix('"').ok_or_else(|| format!("value of label {label_name:?} is not quoted"))?;
            let mut value = String::new();
            let mut chars = quoted.char_indices();
            let mut closing = None;
            while let Some((offset, c)) = chars.next() {
                match c {
                    '"' => {
                        closing = Some(offset);
                        break;
                    }
                    '\\' => match chars.next() {
                        Some((_, 'n')) => value.push('\n'),
                        Some((_, escaped)) => value.push(escaped),
                        None => return Err(format!("value of label {label_name:?} ends inside an escape")),
                    },
                    c => value.push(c),
                }
            }
            let closing = closing.ok_or_else(|| format!("value of label {label_name:?} is not closed"))?;
            labels.push(Label::new(label_name, value));
            rest = quoted[closing + 1..].trim_start();
            if let Some(after_comma) = rest.strip_prefix(',') {
                rest = after_comma;
            } else if !rest.starts_with('}') {
                return Err(format!("expected ',' or '}}' after label {label_name:?}"));
            }
        }
    }
    Ok((name.to_string(), labels, rest))
}

/// Go's float syntax as node_exporter writes it, including `+Inf`, `-Inf` and `NaN`.
fn parse_value(text: &str) -> Option<f64> {
    match text {
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        _ => text.parse().ok(),
    }
}

fn sample_kind(name: &str, family_types: &[(String, String)]) -> SampleKind {
    let type_of = |family: &str| family_types.iter().rev().find(|(f, _)| f == family).map(|(_, t)| t.as_str());
    if type_of(name) == Some("counter") {
        return SampleKind::Counter;
    }
    for suffix in ["_total", "_sum", "_count", "_bucket"] {
        let Some(family) = name.strip_suffix(suffix) else { continue };
        match type_of(family) {
            Some("counter") => return SampleKind::Counter,
            Some("summary" | "histogram") if suffix != "_total" => return SampleKind::Counter,
            _ => {}
        }
    }
    SampleKind::Gauge
}

/// What a generated series' value does over time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Behaviour {
    /// Steps by one unit with probability [`COUNTER_RARE_STEP_PROBABILITY`] per scrape.
    CounterRare,
    /// Steps by `0..=COUNTER_INTEGER_STEP_MAX` every scrape.
    CounterIntegerSteps,
    /// Steps by `0..=COUNTER_DECIMAL_STEP_CENTS_MAX` hundredths every scrape.
    CounterDecimalSteps,
    /// Never changes.
    Constant,
    /// Random walk (see the module documentation).
    RandomWalk,
}

/// Which value model to use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ValueShape {
    /// The mix described in the module documentation.
    NodeExporter,
    /// Every series keeps its scraped value.
    Constant,
}

/// What to generate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GeneratorConfig {
    pub hosts: usize,
    /// Earliest possible timestamp (host offsets and jitter are added).
    pub start_ms: TimestampMs,
    pub interval_ms: i64,
    /// Jitter per scrape is drawn from `0..=jitter_ms_max`; 0 makes timestamps exact.
    pub jitter_ms_max: i64,
    pub values: ValueShape,
}

impl GeneratorConfig {
    /// The reference shape: node_exporter values, 15 s scrapes, 0–3 ms jitter.
    pub fn node_exporter(hosts: usize, start_ms: TimestampMs) -> Self {
        GeneratorConfig {
            hosts,
            start_ms,
            interval_ms: SCRAPE_INTERVAL_MS_DEFAULT,
            jitter_ms_max: JITTER_MS_MAX_DEFAULT,
            values: ValueShape::NodeExporter,
        }
    }

    /// Perfectly regular data: constant values, timestamps exactly `interval_ms` apart.
    pub fn regular(hosts: usize, start_ms: TimestampMs) -> Self {
        GeneratorConfig { jitter_ms_max: 0, values: ValueShape::Constant, ..Self::node_exporter(hosts, start_ms) }
    }

    /// Scrapes per series needed to cover `duration_ms`.
    pub fn scrapes_for(&self, duration_ms: i64) -> u64 {
        assert!(duration_ms >= 0);
        (duration_ms / self.interval_ms) as u64
    }
}

/// One generated series.
#[derive(Clone, Debug, PartialEq)]
pub struct GeneratedSeries {
    pub host: usize,
    /// Template labels plus `instance` and `job`.
    pub labels: Labels,
    pub kind: SampleKind,
    pub behaviour: Behaviour,
}

/// One host's scrape: all its series at one timestamp.
#[derive(Clone, Debug, PartialEq)]
pub struct HostScrape {
    pub host: usize,
    pub t: TimestampMs,
    /// One value per series of the host, in the order of [`ScrapeGenerator::host_series`].
    pub values: Vec<f64>,
}

/// A value as an integer count of `1 / scale`, or a fixed f64 for values that cannot move
/// (non-finite or too large).
#[derive(Clone, Copy, Debug)]
struct ValueState {
    units: i64,
    scale: i64,
    /// Bound of a random-walk step, in units.
    walk_step_units_max: i64,
    fixed: Option<f64>,
}

impl ValueState {
    fn new(value: f64) -> Self {
        let whole = value.fract() == 0.0;
        let scale = if whole { 1 } else { 100 };
        let scaled = (value * scale as f64).round();
        if !value.is_finite() || scaled.abs() > UNITS_ABS_MAX {
            return ValueState { units: 0, scale: 1, walk_step_units_max: 0, fixed: Some(value) };
        }
        let units = scaled as i64;
        ValueState { units, scale, walk_step_units_max: (units.abs() / 1000).max(1), fixed: None }
    }

    fn value(&self) -> f64 {
        match self.fixed {
            Some(v) => v,
            // Correctly rounded division: the nearest f64 to the decimal, as a scrape gives.
            None => self.units as f64 / self.scale as f64,
        }
    }

    fn advance(&mut self, behaviour: Behaviour, start_units: i64, rng: &mut DeterministicRng) {
        if self.fixed.is_some() {
            return;
        }
        let step = match behaviour {
            Behaviour::Constant => 0,
            Behaviour::CounterRare => i64::from(rng.gen_bool(COUNTER_RARE_STEP_PROBABILITY)) * self.scale,
            Behaviour::CounterIntegerSteps => rng.gen_range(0..=COUNTER_INTEGER_STEP_MAX),
            Behaviour::CounterDecimalSteps => rng.gen_range(0..=COUNTER_DECIMAL_STEP_CENTS_MAX),
            Behaviour::RandomWalk => rng.gen_range(-self.walk_step_units_max..=self.walk_step_units_max),
        };
        let next = self.units.saturating_add(step);
        self.units = if start_units >= 0 && next < 0 { 0 } else { next };
        if (self.units as f64).abs() > UNITS_ABS_MAX {
            self.fixed = Some(self.value());
        }
    }
}

struct HostState {
    offset_ms: i64,
    rng: DeterministicRng,
}

/// Generates scrapes round by round: round `k` holds every host's `k`-th scrape.
pub struct ScrapeGenerator {
    config: GeneratorConfig,
    series: Vec<GeneratedSeries>,
    series_per_host: usize,
    start_units: Vec<i64>,
    values: Vec<ValueState>,
    hosts: Vec<HostState>,
    round: u64,
}

impl std::fmt::Debug for ScrapeGenerator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScrapeGenerator")
            .field("config", &self.config)
            .field("series", &self.series.len())
            .field("round", &self.round)
            .finish()
    }
}

impl ScrapeGenerator {
    /// A generator for `templates` on `config.hosts` hosts. Panics on a config that is a
    /// programmer error (no interval, negative jitter, jitter not below the interval).
    pub fn new(config: GeneratorConfig, templates: &[SeriesTemplate], seed: u64) -> Self {
        assert!(config.interval_ms > 0, "interval_ms must be positive");
        assert!(config.jitter_ms_max >= 0, "jitter_ms_max must not be negative");
        // Keeps every series' timestamps strictly increasing.
        assert!(config.jitter_ms_max < config.interval_ms, "jitter must stay below the interval");
        let mut root = DeterministicRng::from_seed(seed);
        let mut series = Vec::with_capacity(config.hosts * templates.len());
        let mut values = Vec::with_capacity(series.capacity());
        let mut hosts = Vec::with_capacity(config.hosts);
        for host in 0..config.hosts {
            let mut rng = root.fork(&format!("host-{host}"));
            let offset_ms = rng.gen_range(0..config.interval_ms);
            let behaviours = assign_behaviours(templates, config.values, &mut rng);
            let instance = format!("host-{host}:9100");
            for (template, behaviour) in templates.iter().zip(behaviours) {
                let mut labels = template.labels.clone().into_vec();
                labels.retain(|l| l.name != "instance" && l.name != "job");
                labels.push(Label::new("instance", instance.clone()));
                labels.push(Label::new("job", "node"));
                let labels = Labels::from_unsorted(labels).expect("instance and job were removed first");
                series.push(GeneratedSeries { host, labels, kind: template.kind, behaviour });
                values.push(ValueState::new(template.value));
            }
            hosts.push(HostState { offset_ms, rng });
        }
        let start_units = values.iter().map(|v| v.units).collect();
        ScrapeGenerator { config, series, series_per_host: templates.len(), start_units, values, hosts, round: 0 }
    }

    /// The bundled node_exporter scrape's series on `config.hosts` hosts.
    pub fn node_exporter(config: GeneratorConfig, seed: u64) -> Self {
        let templates = parse_exposition(NODE_EXPORTER_1_5_SCRAPE).expect("the bundled scrape parses");
        Self::new(config, &templates, seed)
    }

    pub fn config(&self) -> &GeneratorConfig {
        &self.config
    }

    /// Every series, host by host.
    pub fn series(&self) -> &[GeneratedSeries] {
        &self.series
    }

    pub fn series_per_host(&self) -> usize {
        self.series_per_host
    }

    /// The series of one host, in the order of [`HostScrape::values`].
    pub fn host_series(&self, host: usize) -> &[GeneratedSeries] {
        &self.series[host * self.series_per_host..(host + 1) * self.series_per_host]
    }

    /// The host's phase within the scrape interval.
    pub fn host_offset_ms(&self, host: usize) -> i64 {
        self.hosts[host].offset_ms
    }

    /// Rounds generated so far.
    pub fn rounds(&self) -> u64 {
        self.round
    }

    /// The next scrape of every host, in host order (not time order: hosts have offsets).
    pub fn next_round(&mut self) -> Vec<HostScrape> {
        let round = self.round;
        self.round += 1;
        let base_ms = self.config.start_ms + round as i64 * self.config.interval_ms;
        let mut scrapes = Vec::with_capacity(self.hosts.len());
        for (host, state) in self.hosts.iter_mut().enumerate() {
            let jitter_ms =
                if self.config.jitter_ms_max == 0 { 0 } else { state.rng.gen_range(0..=self.config.jitter_ms_max) };
            let range = host * self.series_per_host..(host + 1) * self.series_per_host;
            let mut values = Vec::with_capacity(self.series_per_host);
            for index in range {
                // The first scrape shows the template's value.
                if round > 0 {
                    let behaviour = self.series[index].behaviour;
                    self.values[index].advance(behaviour, self.start_units[index], &mut state.rng);
                }
                values.push(self.values[index].value());
            }
            scrapes.push(HostScrape { host, t: base_ms + state.offset_ms + jitter_ms, values });
        }
        scrapes
    }
}

/// Behaviours for one host's copy of the templates: exact fractions, positions shuffled.
fn assign_behaviours(templates: &[SeriesTemplate], shape: ValueShape, rng: &mut DeterministicRng) -> Vec<Behaviour> {
    let mut behaviours = vec![Behaviour::Constant; templates.len()];
    if shape == ValueShape::Constant {
        return behaviours;
    }
    for kind in [SampleKind::Counter, SampleKind::Gauge] {
        let mut members: Vec<usize> = (0..templates.len()).filter(|&i| templates[i].kind == kind).collect();
        shuffle(&mut members, rng);
        let (fraction, chosen, other) = match kind {
            SampleKind::Counter => (COUNTER_RARE_FRACTION, Behaviour::CounterRare, None),
            SampleKind::Gauge => (GAUGE_CONSTANT_FRACTION, Behaviour::Constant, Some(Behaviour::RandomWalk)),
        };
        let chosen_count = fraction_count(members.len(), fraction);
        for (position, &index) in members.iter().enumerate() {
            behaviours[index] = if position < chosen_count {
                chosen
            } else if let Some(other) = other {
                other
            } else if templates[index].value.fract() == 0.0 {
                Behaviour::CounterIntegerSteps
            } else {
                Behaviour::CounterDecimalSteps
            };
        }
    }
    behaviours
}

/// `round(count × fraction)`, the number of members that get the chosen behaviour.
pub fn fraction_count(count: usize, fraction: f64) -> usize {
    (count as f64 * fraction).round() as usize
}

/// Fisher–Yates with the seeded stream (written out so the order does not depend on `rand`'s
/// shuffle implementation).
fn shuffle<T>(items: &mut [T], rng: &mut DeterministicRng) {
    for i in (1..items.len()).rev() {
        let j = rng.gen_range(0..=i);
        items.swap(i, j);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const START_MS: TimestampMs = 1_700_000_000_000;

    fn rounds(generator: &mut ScrapeGenerator, count: usize) -> Vec<Vec<HostScrape>> {
        (0..count).map(|_| generator.next_round()).collect()
    }

    // Goal: the bundled scrape parses into the 505 series of the file, typed as the file says.
    #[test]
    fn bundled_scrape_parses() {
        let templates = parse_exposition(NODE_EXPORTER_1_5_SCRAPE).unwrap();
        assert_eq!(templates.len(), 505);
        let counters = templates.iter().filter(|t| t.kind == SampleKind::Counter).count();
        assert!(counters > 100, "{counters} counters");
        assert!(templates.len() - counters > 200);
        let find = |name: &str| templates.iter().find(|t| t.labels.metric_name() == name).unwrap();
        assert_eq!(find("node_context_switches_total").kind, SampleKind::Counter);
        assert_eq!(find("go_goroutines").kind, SampleKind::Gauge);
        assert_eq!(find("go_gc_duration_seconds_count").kind, SampleKind::Counter);
        assert_eq!(find("go_gc_duration_seconds").kind, SampleKind::Gauge);
        // Empty label values are dropped.
        let os = find("node_os_info");
        assert!(os.labels.iter().all(|l| !l.value.is_empty()));
        assert_eq!(os.labels.get("pretty_name"), "Debian GNU/Linux 12 (bookworm)");
    }

    // Goal: the parser reports malformed lines with their number instead of panicking.
    #[test]
    fn parse_errors_name_the_line() {
        let check = |text: &str, line: usize, reason: &str| {
            let error = parse_exposition(text).unwrap_err();
            assert_eq!(error.line, line, "{text:?}: {error}");
            assert!(error.reason.contains(reason), "{text:?}: {error}");
        };
        check("# TYPE a counter\na_total 1\nb{x=\"1\" 2\n", 3, "expected ','");
        check("a{x=1} 2", 1, "not quoted");
        check("a{x=\"1} 2", 1, "not closed");
        check("a 1\nb", 2, "no value");
        check("a zero", 1, "not a number");
        check("a{x=\"1\",x=\"2\"} 1", 1, "duplicate");
        let escaped = parse_exposition("a{x=\"q\\\"u\\\\o\\nte\",} +Inf 123").unwrap();
        assert_eq!(escaped[0].labels.get("x"), "q\"u\\o\nte");
        assert_eq!(escaped[0].value, f64::INFINITY);
    }

    // Goal: a generator is a function of its seed: same seed, same series and data; another
    // seed, other data.
    #[test]
    fn deterministic_per_seed() {
        let config = GeneratorConfig::node_exporter(3, START_MS);
        let mut a = ScrapeGenerator::node_exporter(config.clone(), 11);
        let mut b = ScrapeGenerator::node_exporter(config.clone(), 11);
        let mut c = ScrapeGenerator::node_exporter(config, 12);
        assert_eq!(a.series(), b.series());
        let data_a = rounds(&mut a, 50);
        assert_eq!(data_a, rounds(&mut b, 50));
        assert_ne!(data_a, rounds(&mut c, 50));
        // A host's data does not depend on the hosts after it.
        let mut one_host = ScrapeGenerator::node_exporter(GeneratorConfig::node_exporter(1, START_MS), 11);
        let first_host: Vec<HostScrape> = data_a.iter().map(|round| round[0].clone()).collect();
        assert_eq!(first_host, rounds(&mut one_host, 50).into_iter().map(|mut r| r.remove(0)).collect::<Vec<_>>());
    }

    // Goal: the shapes the issue specifies. Exactly 60% (rounded) of each host's gauges and
    // 50% of its counters are constant or rare; constant series never change and walking or
    // stepping series do; counters never go down; decimal counters keep 2 decimals.
    #[test]
    fn value_shapes() {
        let hosts = 4;
        let mut generator = ScrapeGenerator::node_exporter(GeneratorConfig::node_exporter(hosts, START_MS), 5);
        let data = rounds(&mut generator, 200);
        for host in 0..hosts {
            let series = generator.host_series(host);
            let gauges: Vec<_> = series.iter().filter(|s| s.kind == SampleKind::Gauge).collect();
            let counters: Vec<_> = series.iter().filter(|s| s.kind == SampleKind::Counter).collect();
            let constant = gauges.iter().filter(|s| s.behaviour == Behaviour::Constant).count();
            assert_eq!(constant, fraction_count(gauges.len(), GAUGE_CONSTANT_FRACTION));
            assert!(gauges.iter().all(|s| matches!(s.behaviour, Behaviour::Constant | Behaviour::RandomWalk)));
            let rare = counters.iter().filter(|s| s.behaviour == Behaviour::CounterRare).count();
            assert_eq!(rare, fraction_count(counters.len(), COUNTER_RARE_FRACTION));
            for (index, s) in series.iter().enumerate() {
                let values: Vec<f64> = data.iter().map(|round| round[host].values[index]).collect();
                let changes = values.windows(2).filter(|w| w[0].to_bits() != w[1].to_bits()).count();
                match s.behaviour {
                    Behaviour::Constant => assert_eq!(changes, 0, "{}", s.labels),
                    // Rare counters may or may not move in 200 scrapes; the others surely do.
                    Behaviour::CounterRare => assert!(changes < 20, "{}", s.labels),
                    // Non-finite or huge values (u64::MAX limits) cannot move.
                    _ if !values[0].is_finite() || values[0].abs() * 100.0 > UNITS_ABS_MAX => {}
                    _ => assert!(changes > 20, "{}: {changes} changes", s.labels),
                }
                if s.kind == SampleKind::Counter {
                    assert!(values.windows(2).all(|w| w[1] >= w[0] || w[0].is_nan()), "{}", s.labels);
                }
                if s.behaviour == Behaviour::CounterDecimalSteps {
                    assert!(values.iter().all(|v| (v * 100.0).round() / 100.0 == *v), "{}", s.labels);
                }
            }
        }
        // The mix is present on every host.
        let behaviours: Vec<Behaviour> = generator.series().iter().map(|s| s.behaviour).collect();
        for wanted in [Behaviour::CounterRare, Behaviour::CounterIntegerSteps, Behaviour::CounterDecimalSteps, Behaviour::RandomWalk] {
            assert!(behaviours.contains(&wanted), "{wanted:?}");
        }
    }

    // Goal: timestamps are 15 s apart plus the host's offset plus a jitter in 0..=3 ms, every
    // value of the range occurs, and each series' timestamps strictly increase.
    #[test]
    fn timestamps_jitter_and_order() {
        let hosts = 5;
        let config = GeneratorConfig::node_exporter(hosts, START_MS);
        let mut generator = ScrapeGenerator::node_exporter(config.clone(), 9);
        let data = rounds(&mut generator, 400);
        let mut jitter_seen = [false; JITTER_MS_MAX_DEFAULT as usize + 1];
        let offsets: Vec<i64> = (0..hosts).map(|h| generator.host_offset_ms(h)).collect();
        assert!(offsets.iter().all(|o| (0..config.interval_ms).contains(o)));
        assert!(offsets.windows(2).any(|w| w[0] != w[1]), "hosts have different phases");
        for host in 0..hosts {
            let mut previous = None;
            for (round, scrapes) in data.iter().enumerate() {
                let scrape = &scrapes[host];
                assert_eq!(scrape.host, host);
                assert_eq!(scrape.values.len(), generator.series_per_host());
                let jitter = scrape.t - (START_MS + offsets[host] + round as i64 * config.interval_ms);
                assert!((0..=JITTER_MS_MAX_DEFAULT).contains(&jitter), "jitter {jitter}");
                jitter_seen[jitter as usize] = true;
                if let Some(previous) = previous {
                    assert!(scrape.t > previous);
                }
                previous = Some(scrape.t);
            }
        }
        assert!(jitter_seen.iter().all(|&seen| seen), "{jitter_seen:?}");
    }

    // Goal: the regular shape is exactly periodic and constant.
    #[test]
    fn regular_shape_is_exact() {
        let config = GeneratorConfig::regular(2, START_MS);
        let mut generator = ScrapeGenerator::node_exporter(config.clone(), 3);
        let data = rounds(&mut generator, 100);
        assert!(generator.series().iter().all(|s| s.behaviour == Behaviour::Constant));
        for host in 0..2 {
            for pair in data.windows(2) {
                assert_eq!(pair[1][host].t - pair[0][host].t, config.interval_ms);
                assert!(pair[0][host].values.iter().zip(&pair[1][host].values).all(|(a, b)| a.to_bits() == b.to_bits()));
            }
        }
        // Every series is unique (instance tells hosts apart).
        let mut labels: Vec<&Labels> = generator.series().iter().map(|s| &s.labels).collect();
        labels.sort();
        labels.dedup();
        assert_eq!(labels.len(), 2 * 505);
    }
}
