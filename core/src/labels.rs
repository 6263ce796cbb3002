//! Label sets: sorted by name, names unique, validated by Prometheus 3.x rules.
//!
//! Rules (Prometheus 3.x, "UTF-8 names"): a label name is any non-empty valid UTF-8 string
//! (Rust's `String` guarantees validity; decoders reject invalid bytes before this point). Names
//! starting with `__` are reserved for Sextant and Prometheus, except `__name__`, which carries
//! the metric name. A label with an empty value is the same as an absent label and is dropped on
//! ingest (Prometheus semantics). The legacy mode additionally requires
//! `[a-zA-Z_][a-zA-Z0-9_]*` for label names and `[a-zA-Z_:][a-zA-Z0-9_:]*` for metric names.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The label that carries the metric name.
pub const METRIC_NAME_LABEL: &str = "__name__";

/// One label pair.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Label {
    pub name: String,
    pub value: String,
}

impl Label {
    pub fn new(name: impl Into<String>, value: impl Into<String>) -> Self {
        Label { name: name.into(), value: value.into() }
    }
}

/// A label set sorted by name with unique names. Construct it with [`Labels::from_sorted`],
/// [`Labels::from_unsorted`] or [`Labels::from_pairs`]; the invariant holds for every value.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Labels(Vec<Label>);

/// Which naming rules apply.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum NameValidation {
    /// Prometheus 3.x: any non-empty valid UTF-8 (OTel's dotted names work).
    #[default]
    Utf8,
    /// Prometheus 2.x legacy character sets.
    Legacy,
}

/// Limits on one label set. Units are last in every name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabelLimits {
    /// Labels per series, `__name__` included.
    pub label_count_max: usize,
    pub label_name_bytes_max: usize,
    pub label_value_bytes_max: usize,
    pub validation: NameValidation,
}

impl Default for LabelLimits {
    fn default() -> Self {
        // Generous enough for OTel resource attributes, small enough that one series cannot
        // take a meaningful share of memory.
        LabelLimits {
            label_count_max: 64,
            label_name_bytes_max: 1024,
            label_value_bytes_max: 4096,
            validation: NameValidation::Utf8,
        }
    }
}

/// Why a label set was refused. Every variant names what was wrong.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LabelError {
    #[error("series has no metric name (label __name__ missing or empty)")]
    MissingMetricName,
    #[error("empty label name")]
    EmptyName,
    #[error("label name {name:?} uses the reserved prefix \"__\"")]
    ReservedName { name: String },
    #[error("duplicate label name {name:?}")]
    DuplicateName { name: String },
    #[error("label name {name:?} is not a valid legacy Prometheus label name")]
    InvalidLegacyName { name: String },
    #[error("metric name {name:?} is not a valid legacy Prometheus metric name")]
    InvalidLegacyMetricName { name: String },
    #[error("series has {count} labels, more than the limit of {max}")]
    TooManyLabels { count: usize, max: usize },
    #[error("label name {name_prefix:?}… is {bytes} bytes, more than the limit of {max} bytes")]
    NameTooLong { name_prefix: String, bytes: usize, max: usize },
    #[error("value of label {name:?} is {bytes} bytes, more than the limit of {max} bytes")]
    ValueTooLong { name: String, bytes: usize, max: usize },
}

fn prefix_of(s: &str, chars_max: usize) -> String {
    s.chars().take(chars_max).collect()
}

fn is_legacy_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    match chars.next() {
        Some(c) if c.is_ascii_alphabetic() || c == '_' => {}
        _ => return false,
    }
    chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn is_legacy_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    match chars.next() {
        Some(c) if c.is_ascii_alphabetic() || c == '_' || c == ':' => {}
        _ => return false,
    }
    chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

impl Labels {
    /// The empty label set.
    pub fn empty() -> Self {
        Labels(Vec::new())
    }

    /// Builds from labels already sorted by name with unique names.
    /// Panics if they are not: callers with outside input use [`Labels::from_unsorted`].
    pub fn from_sorted(labels: Vec<Label>) -> Self {
        for pair in labels.windows(2) {
            assert!(pair[0].name < pair[1].name, "Labels::from_sorted: not sorted or not unique");
        }
        Labels(labels)
    }

    /// Sorts the labels and refuses duplicate names. Empty values are kept: dropping them is
    /// [`Labels::validate_for_ingest`]'s job, so that a caller can report what it dropped.
    pub fn from_unsorted(mut labels: Vec<Label>) -> Result<Self, LabelError> {
        labels.sort_by(|a, b| a.name.cmp(&b.name));
        for pair in labels.windows(2) {
            if pair[0].name == pair[1].name {
                return Err(LabelError::DuplicateName { name: pair[0].name.clone() });
            }
        }
        Ok(Labels(labels))
    }

    /// Convenience for tests and literals: `Labels::from_pairs(&[("__name__", "up")])`.
    /// Panics on duplicate names.
    pub fn from_pairs(pairs: &[(&str, &str)]) -> Self {
        let labels = pairs.iter().map(|(n, v)| Label::new(*n, *v)).collect();
        Labels::from_unsorted(labels).expect("Labels::from_pairs: duplicate label name")
    }

    pub fn as_slice(&self) -> &[Label] {
        &self.0
    }

    pub fn into_vec(self) -> Vec<Label> {
        self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> std::slice::Iter<'_, Label> {
        self.0.iter()
    }

    /// The value of `name`, or `""` when absent (Prometheus treats both the same).
    pub fn get(&self, name: &str) -> &str {
        match self.0.binary_search_by(|l| l.name.as_str().cmp(name)) {
            Ok(i) => &self.0[i].value,
            Err(_) => "",
        }
    }

    /// The metric name, or `""`.
    pub fn metric_name(&self) -> &str {
        self.get(METRIC_NAME_LABEL)
    }

    /// Bytes of names and values (the memory account's measure of a label set).
    pub fn bytes(&self) -> usize {
        self.0.iter().map(|l| l.name.len() + l.value.len()).sum()
    }

    /// [`Labels::from_unsorted`] then [`Labels::validate_for_ingest`] in one step that hands the
    /// labels back with the error, so the ingest path can move a request's strings in (no
    /// copy) and still quote the refused series.
    pub fn for_ingest(mut labels: Vec<Label>, limits: &LabelLimits) -> Result<Labels, (LabelError, Vec<Label>)> {
        labels.sort_by(|a, b| a.name.cmp(&b.name));
        if let Some(pair) = labels.windows(2).find(|pair| pair[0].name == pair[1].name) {
            let error = LabelError::DuplicateName { name: pair[0].name.clone() };
            return Err((error, labels));
        }
        labels.retain(|l| !l.value.is_empty());
        let labels = Labels(labels);
        match labels.validate(limits) {
            Ok(()) => Ok(labels),
            Err(error) => Err((error, labels.0)),
        }
    }

    /// Applies ingest validation: drops empty-valued labels (Prometheus semantics), then checks
    /// the metric name, reserved names, legacy character sets and the limits.
    pub fn validate_for_ingest(self, limits: &LabelLimits) -> Result<Labels, LabelError> {
        let labels: Vec<Label> = self.0.into_iter().filter(|l| !l.value.is_empty()).collect();
        let labels = Labels(labels);
        labels.validate(limits)?;
        Ok(labels)
    }

    /// Checks a label set that has no empty values against the naming rules and limits.
    pub fn validate(&self, limits: &LabelLimits) -> Result<(), LabelError> {
        if self.metric_name().is_empty() {
            return Err(LabelError::MissingMetricName);
        }
        if self.0.len() > limits.label_count_max {
            return Err(LabelError::TooManyLabels { count: self.0.len(), max: limits.label_count_max });
        }
        for label in &self.0 {
            if label.name.is_empty() {
                return Err(LabelError::EmptyName);
            }
            if label.name.len() > limits.label_name_bytes_max {
                return Err(LabelError::NameTooLong {
                    name_prefix: prefix_of(&label.name, 64),
                    bytes: label.name.len(),
                    max: limits.label_name_bytes_max,
                });
            }
            if label.value.len() > limits.label_value_bytes_max {
                return Err(LabelError::ValueTooLong {
                    name: prefix_of(&label.name, 64),
                    bytes: label.value.len(),
                    max: limits.label_value_bytes_max,
                });
            }
            if label.name == METRIC_NAME_LABEL {
                if limits.validation == NameValidation::Legacy && !is_legacy_metric_name(&label.value) {
                    return Err(LabelError::InvalidLegacyMetricName { name: label.value.clone() });
                }
                continue;
            }
            if label.name.starts_with("__") {
                return Err(LabelError::ReservedName { name: prefix_of(&label.name, 64) });
            }
            if limits.validation == NameValidation::Legacy && !is_legacy_label_name(&label.name) {
                return Err(LabelError::InvalidLegacyName { name: prefix_of(&label.name, 64) });
            }
        }
        Ok(())
    }
}

impl fmt::Display for Labels {
    /// Prometheus's notation: `name{a="b", c="d"}`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{{", self.metric_name())?;
        let mut first = true;
        for label in self.0.iter().filter(|l| l.name != METRIC_NAME_LABEL) {
            if !first {
                write!(f, ", ")?;
            }
            first = false;
            write!(f, "{}={:?}", label.name, label.value)?;
        }
        write!(f, "}}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        Labels::from_unsorted(pairs.iter().map(|(n, v)| Label::new(*n, *v)).collect()).unwrap()
    }

    // Goal: each naming rule and limit gives its own typed error. Method: one table of inputs
    // and expected outcomes under default (UTF-8) and legacy validation.
    #[test]
    fn validation_table() {
        let utf8 = LabelLimits::default();
        let legacy = LabelLimits { validation: NameValidation::Legacy, ..LabelLimits::default() };
        let long_value = "x".repeat(5000);
        let cases: Vec<(&str, Vec<(&str, &str)>, &LabelLimits, Result<(), LabelError>)> = vec![
            ("plain", vec![("__name__", "up"), ("job", "a")], &utf8, Ok(())),
            ("dotted otel names", vec![("__name__", "http.server.duration"), ("service.name", "x")], &utf8, Ok(())),
            ("dotted names refused in legacy", vec![("__name__", "up"), ("service.name", "x")], &legacy,
                Err(LabelError::InvalidLegacyName { name: "service.name".into() })),
            ("legacy metric name", vec![("__name__", "a.b")], &legacy,
                Err(LabelError::InvalidLegacyMetricName { name: "a.b".into() })),
            ("colon allowed in legacy metric name", vec![("__name__", "job:rate5m")], &legacy, Ok(())),
            ("no metric name", vec![("job", "a")], &utf8, Err(LabelError::MissingMetricName)),
            ("empty metric name dropped then missing", vec![("__name__", ""), ("job", "a")], &utf8,
                Err(LabelError::MissingMetricName)),
            ("empty name", vec![("__name__", "up"), ("", "a")], &utf8, Err(LabelError::EmptyName)),
            ("reserved", vec![("__name__", "up"), ("__tenant", "a")], &utf8,
                Err(LabelError::ReservedName { name: "__tenant".into() })),
            ("value too long", vec![("__name__", "up"), ("a", long_value.as_str())], &utf8,
                Err(LabelError::ValueTooLong { name: "a".into(), bytes: 5000, max: 4096 })),
            ("empty value dropped", vec![("__name__", "up"), ("a", "")], &utf8, Ok(())),
        ];
        for (name, pairs, limits, expected) in cases {
            let got = labels(&pairs).validate_for_ingest(limits).map(|_| ());
            assert_eq!(got, expected, "case {name}");
            // The one-step form agrees, and gives back the labels it refused.
            let raw: Vec<Label> = pairs.iter().rev().map(|(n, v)| Label::new(*n, *v)).collect();
            match (Labels::for_ingest(raw, limits), &expected) {
                (Ok(labels), Ok(())) => assert_eq!(Some(labels), Labels::from_unsorted(pairs.iter().filter(|(_, v)| !v.is_empty()).map(|(n, v)| Label::new(*n, *v)).collect()).ok(), "case {name}"),
                (Err((error, back)), Err(want)) => {
                    assert_eq!(&error, want, "case {name}");
                    assert!(back.iter().all(|l| pairs.iter().any(|(n, v)| l.name == *n && l.value == *v)), "case {name}: gives back its own labels: {back:?}");
                }
                (got, want) => panic!("case {name}: for_ingest {got:?}, validate_for_ingest {want:?}"),
            }
        }
        let duplicate = vec![Label::new("__name__", "up"), Label::new("a", "1"), Label::new("a", "2")];
        let (error, back) = Labels::for_ingest(duplicate, &utf8).unwrap_err();
        assert_eq!(error, LabelError::DuplicateName { name: "a".into() });
        assert_eq!(back.len(), 3, "the duplicate is given back whole for the refusal message");
    }

    // Goal: the count limit counts labels after empty values are dropped.
    #[test]
    fn too_many_labels() {
        let limits = LabelLimits { label_count_max: 3, ..LabelLimits::default() };
        let ok = labels(&[("__name__", "m"), ("a", "1"), ("b", "2"), ("c", "")]);
        assert!(ok.validate_for_ingest(&limits).is_ok());
        let bad = labels(&[("__name__", "m"), ("a", "1"), ("b", "2"), ("c", "3")]);
        assert_eq!(bad.validate_for_ingest(&limits), Err(LabelError::TooManyLabels { count: 4, max: 3 }));
    }

    // Goal: duplicate names are refused at construction, and sorting is by name.
    #[test]
    fn sorting_and_duplicates() {
        let l = labels(&[("b", "2"), ("__name__", "m"), ("a", "1")]);
        let names: Vec<&str> = l.iter().map(|l| l.name.as_str()).collect();
        assert_eq!(names, vec!["__name__", "a", "b"]);
        assert_eq!(l.get("a"), "1");
        assert_eq!(l.get("zz"), "");
        let dup = Labels::from_unsorted(vec![Label::new("a", "1"), Label::new("a", "2")]);
        assert_eq!(dup, Err(LabelError::DuplicateName { name: "a".into() }));
        assert_eq!(l.to_string(), r#"m{a="1", b="2"}"#);
    }
}
