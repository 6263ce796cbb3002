//! Prometheus rule files (`groups:` YAML, as `promtool check rules` reads them) into
//! [`RuleGroup`]s ready to propose.
//!
//! The file is parsed strictly: an unknown key is an error (promtool refuses them too), so a
//! typo such as `annotation:` cannot silently drop a rule's annotations. Every group is then
//! checked with the same validation the state machine's proposer uses, and group names must
//! be unique within the file. Errors name the group and rule they are about.

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;

use crate::command::{check_rule_group, Rule, RuleGroup, ValidationError};

/// Longest rule file accepted, in bytes.
pub const RULE_FILE_BYTES_MAX: usize = 4 << 20;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileDoc {
    #[serde(default)]
    groups: Vec<FileGroup>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileGroup {
    name: String,
    #[serde(default)]
    interval: Option<String>,
    /// Prometheus's per-group series limit; not supported yet, refused rather than dropped.
    #[serde(default)]
    limit: Option<serde_norway::Value>,
    #[serde(default)]
    rules: Vec<FileRule>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileRule {
    #[serde(default)]
    record: Option<String>,
    #[serde(default)]
    alert: Option<String>,
    expr: String,
    #[serde(default, rename = "for")]
    for_duration: Option<String>,
    /// Not supported yet, refused rather than dropped.
    #[serde(default)]
    keep_firing_for: Option<serde_norway::Value>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

fn invalid(field: impl Into<String>, message: impl std::fmt::Display) -> ValidationError {
    ValidationError {
        field: field.into(),
        message: message.to_string(),
    }
}

/// Parses and validates a whole rule file. All or nothing: one bad group refuses the file.
pub fn parse_rule_file(text: &str) -> Result<Vec<RuleGroup>, ValidationError> {
    if text.len() > RULE_FILE_BYTES_MAX {
        return Err(invalid(
            "file",
            format!("{} bytes, at most {RULE_FILE_BYTES_MAX} allowed", text.len()),
        ));
    }
    let doc: FileDoc = serde_norway::from_str(text).map_err(|e| invalid("file", e))?;
    let mut names = BTreeSet::new();
    let mut groups = Vec::with_capacity(doc.groups.len());
    for (g, file_group) in doc.groups.into_iter().enumerate() {
        let at = format!("groups[{g}] ({:?})", file_group.name);
        if file_group.limit.is_some() {
            return Err(invalid(format!("{at}.limit"), "group limits are not supported yet"));
        }
        if !names.insert(file_group.name.clone()) {
            return Err(invalid(
                format!("{at}.name"),
                "a group of this name appears earlier in the file",
            ));
        }
        let mut rules = Vec::with_capacity(file_group.rules.len());
        for (r, rule) in file_group.rules.into_iter().enumerate() {
            if rule.keep_firing_for.is_some() {
                return Err(invalid(
                    format!("{at}.rules[{r}].keep_firing_for"),
                    "keep_firing_for is not supported yet",
                ));
            }
            rules.push(Rule {
                record: rule.record,
                alert: rule.alert,
                expr: rule.expr,
                for_duration: rule.for_duration,
                labels: rule.labels,
                annotations: rule.annotations,
            });
        }
        let group = RuleGroup {
            name: file_group.name,
            interval: file_group.interval,
            rules,
        };
        // The proposer's checks report fields as `group.…`; say which group of the file.
        check_rule_group(&group).map_err(|e| invalid(format!("{at}: {}", e.field), e.message))?;
        groups.push(group);
    }
    Ok(groups)
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
        check("groups:\n- name: a\n  rules: []\n- name: a\n  rules: []\n", Err("appears earlier"));
        check("groups:\n- name: g\n  rules:\n  - record: r\n    expr: sum(\n", Err("groups[0] (\"g\"): group.rules[0].expr"));
        check("groups:\n- name: g\n  rules:\n  - alert: A\n    expr: up\n    annotation: {a: b}\n", Err("unknown field `annotation`"));
        check("groups:\n- name: g\n  limit: 10\n  rules: []\n", Err("not supported yet"));
        check("groups:\n- name: g\n  rules:\n  - expr: up\n", Err("neither `record` nor `alert`"));
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
    }
}
