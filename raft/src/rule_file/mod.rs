//! Prometheus rule files (`groups:` YAML) into [`RuleGroup`]s ready to propose, accepting what
//! `promtool check rules` of Prometheus 2.42 accepts and refusing what it refuses, with errors
//! that name the group and rule. docs/design/rules.md lists every check and every deliberate
//! difference; raft/tests/integration/rule_file.rs holds the table of cases and runs promtool on each.
//!
//! The file is read strictly, as promtool reads it (yaml.v3 with known fields only): an unknown
//! key or a key given twice is an error, so a typo such as `annotation:` cannot silently drop a
//! rule's annotations. YAML scalars are read as Go reads them into strings: `expr: 1` is the
//! expression `1`, a null label value is empty, a null `for` is no `for`. Then every rule is
//! checked like rulefmt 2.42 does (exactly one of `record`/`alert`, expression parses, no
//! `for`/`keep_firing_for`/annotations on recording rules, valid record, label and annotation
//! names, alert templates parse) and with Sextant's own size limits.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use sextant_core::labels::NameValidation;

use crate::command::{check_rule_group_with, parse_duration_ms, Rule, RuleGroup, ValidationError};

mod template;

pub use template::check_alert_template;

/// Longest rule file accepted, in bytes.
pub const RULE_FILE_BYTES_MAX: usize = 4 << 20;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileDoc {
    #[serde(default)]
    groups: Option<Vec<FileGroup>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileGroup {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    interval: Option<String>,
    /// A YAML integer, as Go's `int` takes it (`"10"` is refused).
    #[serde(default)]
    limit: Option<i64>,
    #[serde(default)]
    rules: Option<Vec<FileRule>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileRule {
    #[serde(default)]
    record: Option<String>,
    #[serde(default)]
    alert: Option<String>,
    #[serde(default)]
    expr: Option<String>,
    #[serde(default, rename = "for")]
    for_duration: Option<String>,
    #[serde(default)]
    keep_firing_for: Option<String>,
    #[serde(default)]
    labels: Option<StrictMap>,
    #[serde(default)]
    annotations: Option<StrictMap>,
}

/// A string → string mapping that refuses a key given twice (yaml.v3 does; serde's maps keep
/// the last) and reads a null value as empty (as Go does).
struct StrictMap(BTreeMap<String, String>);

impl<'de> Deserialize<'de> for StrictMap {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct MapVisitor;
        impl<'de> Visitor<'de> for MapVisitor {
            type Value = StrictMap;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a mapping of names to strings")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<StrictMap, A::Error> {
                let mut map = BTreeMap::new();
                while let Some((key, value)) = access.next_entry::<String, Option<String>>()? {
                    if map.contains_key(&key) {
                        return Err(de::Error::custom(format!(
                            "mapping key {key:?} given twice"
                        )));
                    }
                    map.insert(key, value.unwrap_or_default());
                }
                Ok(StrictMap(map))
            }
        }
        deserializer.deserialize_map(MapVisitor)
    }
}

fn invalid(field: impl Into<String>, message: impl fmt::Display) -> ValidationError {
    ValidationError {
        field: field.into(),
        message: message.to_string(),
    }
}

/// A duration field as Prometheus keeps it: `None` when absent, null or zero (Prometheus's
/// zero value means "not set", e.g. `for: 0s` is allowed on a recording rule).
fn nonzero_duration(field: &str, text: Option<String>) -> Result<Option<String>, ValidationError> {
    let Some(text) = text else { return Ok(None) };
    Ok((parse_duration_ms(field, &text)? != 0).then_some(text))
}

/// Parses and validates a whole rule file with Prometheus 3.x UTF-8 names (the project's
/// naming rules). All or nothing: one bad group refuses the file.
pub fn parse_rule_file(text: &str) -> Result<Vec<RuleGroup>, ValidationError> {
    parse_rule_file_with(text, NameValidation::Utf8)
}

/// [`parse_rule_file`] with a choice of name rules; `Legacy` is what promtool 2.42 applies.
pub fn parse_rule_file_with(
    text: &str,
    names: NameValidation,
) -> Result<Vec<RuleGroup>, ValidationError> {
    if text.len() > RULE_FILE_BYTES_MAX {
        return Err(invalid(
            "file",
            format!(
                "{} bytes, at most {RULE_FILE_BYTES_MAX} allowed",
                text.len()
            ),
        ));
    }
    // promtool reads only the first YAML document and ignores the rest; Sextant refuses a
    // second one rather than silently dropping the rules in it.
    let mut documents = serde_norway::Deserializer::from_str(text);
    let doc = match documents.next() {
        None => FileDoc { groups: None },
        Some(first) => FileDoc::deserialize(first).map_err(|e| invalid("file", e))?,
    };
    if documents.next().is_some() {
        return Err(invalid(
            "file",
            "holds more than one YAML document (`---`); Prometheus would ignore all but the first",
        ));
    }
    let file_groups = doc.groups.unwrap_or_default();
    let mut seen = BTreeSet::new();
    let mut groups = Vec::with_capacity(file_groups.len());
    for (g, file_group) in file_groups.into_iter().enumerate() {
        let name = file_group.name.unwrap_or_default();
        let at = format!("group {name:?} (groups[{g}])");
        if name.is_empty() {
            return Err(invalid(format!("groups[{g}].name"), "a group needs a name"));
        }
        if !seen.insert(name.clone()) {
            return Err(invalid(
                &at,
                "a group of this name appears earlier in the file",
            ));
        }
        let interval = nonzero_duration(&format!("{at}, interval"), file_group.interval)?;
        let mut rules = Vec::new();
        for (r, rule) in file_group.rules.unwrap_or_default().into_iter().enumerate() {
            let rule_at = format!(
                "{at}, rule {} {:?}",
                r + 1,
                rule.alert
                    .as_deref()
                    .or(rule.record.as_deref())
                    .unwrap_or("")
            );
            let expr = rule.expr.unwrap_or_default();
            if expr.is_empty() {
                return Err(invalid(format!("{rule_at}, expr"), "must be set"));
            }
            rules.push(Rule {
                // Go reads an empty `record:` or `alert:` as not set.
                record: rule.record.filter(|r| !r.is_empty()),
                alert: rule.alert.filter(|a| !a.is_empty()),
                expr,
                for_duration: nonzero_duration(&format!("{rule_at}, for"), rule.for_duration)?,
                keep_firing_for: nonzero_duration(
                    &format!("{rule_at}, keep_firing_for"),
                    rule.keep_firing_for,
                )?,
                labels: rule.labels.map(|m| m.0).unwrap_or_default(),
                annotations: rule.annotations.map(|m| m.0).unwrap_or_default(),
            });
        }
        let group = RuleGroup {
            name,
            interval,
            limit: file_group.limit.filter(|limit| *limit != 0),
            rules,
        };
        check_rule_group_with(&group, names)
            .map_err(|e| invalid(locate(&at, &group, &e.field), e.message))?;
        groups.push(group);
    }
    Ok(groups)
}

/// Turns the proposer's `group.rules[2].expr` into `group "g" (groups[0]), rule 3 "Name", expr`.
fn locate(at: &str, group: &RuleGroup, field: &str) -> String {
    let rest = field.strip_prefix("group").unwrap_or(field);
    if let Some(indexed) = rest.strip_prefix(".rules[") {
        if let Some((index, tail)) = indexed.split_once(']') {
            if let Ok(i) = index.parse::<usize>() {
                let name = group
                    .rules
                    .get(i)
                    .and_then(|r| r.alert.as_deref().or(r.record.as_deref()))
                    .unwrap_or("");
                let tail = tail.trim_start_matches('.');
                return match tail.is_empty() {
                    true => format!("{at}, rule {} {name:?}", i + 1),
                    false => format!("{at}, rule {} {name:?}, {tail}", i + 1),
                };
            }
        }
    }
    format!("{at}, {}", rest.trim_start_matches('.'))
}

fn is_legacy_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn is_legacy_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// rulefmt's per-rule checks beyond shape and sizes (`field` is `group.rules[i]`): record
/// names are metric names (and, with UTF-8 names, free of `{}` as Prometheus 3 requires),
/// label names are label names other than `__name__`, annotation names are label names, and
/// an alerting rule's label and annotation values parse as templates.
pub(crate) fn check_rule_like_promtool(
    field: &str,
    rule: &Rule,
    names: NameValidation,
) -> Result<(), ValidationError> {
    let label_name_ok = |name: &str| match names {
        NameValidation::Legacy => is_legacy_label_name(name),
        NameValidation::Utf8 => !name.is_empty(),
    };
    if let Some(record) = &rule.record {
        let ok = match names {
            NameValidation::Legacy => is_legacy_metric_name(record),
            NameValidation::Utf8 => !record.contains(['{', '}']),
        };
        if !ok {
            return Err(invalid(
                format!("{field}.record"),
                format!("{record:?} is not a valid metric name"),
            ));
        }
        if !rule.annotations.is_empty() {
            return Err(invalid(
                format!("{field}.annotations"),
                "only alerting rules take annotations",
            ));
        }
    }
    for name in rule.labels.keys() {
        if !label_name_ok(name) || name == "__name__" {
            return Err(invalid(
                format!("{field}.labels"),
                format!("{name:?} is not a valid label name"),
            ));
        }
    }
    for name in rule.annotations.keys() {
        if !label_name_ok(name) {
            return Err(invalid(
                format!("{field}.annotations"),
                format!("{name:?} is not a valid annotation name"),
            ));
        }
    }
    if rule.alert.is_some() {
        for (kind, map) in [("labels", &rule.labels), ("annotations", &rule.annotations)] {
            for (name, value) in map {
                check_alert_template(value).map_err(|e| {
                    invalid(format!("{field}.{kind}.{name}"), format!("template: {e}"))
                })?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `Ok(n)`: parses into n groups; `Err(s)`: refused with an error containing s.
    fn check(text: &str, expected: Result<usize, &str>) {
        match (parse_rule_file(text), expected) {
            (Ok(groups), Ok(n)) => assert_eq!(groups.len(), n, "{text}"),
            (Err(error), Err(needle)) => assert!(
                error.to_string().contains(needle),
                "{text}: error {error} lacks {needle:?}"
            ),
            (got, want) => panic!("{text}: got {got:?}, want {want:?}"),
        }
    }

    #[test]
    fn rule_files() {
        let good = "groups:\n- name: g\n  interval: 30s\n  rules:\n  - record: job:up:sum\n    expr: sum by (job) (up)\n  - alert: Down\n    expr: up == 0\n    for: 5m\n    labels: {severity: page}\n    annotations: {summary: down}\n";
        check(good, Ok(1));
        check("", Ok(0));
        check("groups: []\n", Ok(0));
        check(
            "groups:\n- name: a\n  rules: []\n- name: a\n  rules: []\n",
            Err("appears earlier"),
        );
        check(
            "groups:\n- name: g\n  rules:\n  - record: r\n    expr: sum(\n",
            Err("invalid group \"g\" (groups[0]), rule 1 \"r\", expr:"),
        );
        check(
            "groups:\n- name: g\n  rules:\n  - alert: A\n    expr: up\n    annotation: {a: b}\n",
            Err("unknown field `annotation`"),
        );
        check("groups:\n- name: g\n  limit: 10\n  rules: []\n", Ok(1));
        check(
            "groups:\n- name: g\n  rules:\n  - expr: up\n",
            Err("neither `record` nor `alert`"),
        );
        check("groups: {", Err("invalid file"));
    }

    #[test]
    fn parsed_group_keeps_every_field() {
        let text = "groups:\n- name: g\n  interval: 1m\n  rules:\n  - alert: Down\n    expr: up == 0\n    for: 5m\n    labels: {severity: page}\n    annotations: {summary: \"{{ $labels.job }} down\"}\n";
        let groups = parse_rule_file(text).unwrap();
        let rule = &groups[0].rules[0];
        assert_eq!(groups[0].interval.as_deref(), Some("1m"));
        assert_eq!(rule.alert.as_deref(), Some("Down"));
        assert_eq!(rule.expr, "up == 0");
        assert_eq!(rule.for_duration.as_deref(), Some("5m"));
        assert_eq!(rule.labels["severity"], "page");
        assert_eq!(rule.annotations["summary"], "{{ $labels.job }} down");
        assert_eq!(rule.keep_firing_for, None);
        assert_eq!(groups[0].limit, None);
        // Zero durations and limits are Prometheus's "not set".
        let text = "groups:\n- name: g\n  interval: 0s\n  limit: 0\n  rules:\n  - record: r\n    expr: up\n    for: 0\n    keep_firing_for: 0s\n";
        let groups = parse_rule_file(text).unwrap();
        assert_eq!(
            groups[0],
            RuleGroup {
                name: "g".into(),
                rules: vec![Rule {
                    record: Some("r".into()),
                    expr: "up".into(),
                    ..Rule::default()
                }],
                ..RuleGroup::default()
            }
        );
        let text = "groups:\n- name: g\n  limit: -5\n  rules:\n  - alert: A\n    expr: up\n    keep_firing_for: 10m\n    labels: {n: 1, e: }\n";
        let groups = parse_rule_file(text).unwrap();
        assert_eq!(groups[0].limit, Some(-5));
        assert_eq!(groups[0].rules[0].keep_firing_for.as_deref(), Some("10m"));
        assert_eq!(
            groups[0].rules[0].labels,
            BTreeMap::from([
                ("e".to_string(), String::new()),
                ("n".to_string(), "1".to_string())
            ])
        );
    }
}
