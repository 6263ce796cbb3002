//! Rule files against `parse_rule_file`, and the same table against `promtool check rules`.
//!
//! Goal: Sextant accepts exactly the rule files Prometheus 2.42's promtool accepts, and refuses
//! the rest with an error naming the group and rule — except where the table says it differs
//! on purpose, and why.
//! Method: one table of files; `rule_files` checks each against `parse_rule_file` (accepted
//! with n groups, or refused with an error containing a needle); `promtool_agrees` writes each
//! to a temp file, runs `promtool check rules` on it and asserts that promtool's verdict
//! (exit code 0 = accepted) equals Sextant's — or, for a case marked `Differs`, is the
//! opposite, so a claimed difference is checked to be real. Without promtool the second test
//! skips with a reason, unless CI=true, where a missing promtool is a failure.

use sextant_core::labels::NameValidation;
use sextant_raft::rule_file::{parse_rule_file, parse_rule_file_with};

/// What Sextant does with a file.
#[derive(Clone, Copy, Debug)]
enum Expect {
    /// Accepted, with this many groups.
    Accept(usize),
    /// Refused with an error containing this text.
    Refuse(&'static str),
}

/// What promtool 2.42 does with it, relative to Sextant.
#[derive(Clone, Copy, Debug)]
enum Promtool {
    Agrees,
    /// Sextant decides the other way on purpose; the reason says why.
    Differs(&'static str),
}

use Expect::{Accept, Refuse};
use Promtool::{Agrees, Differs};

const UTF8_NAMES: &str = "Sextant takes Prometheus 3.x UTF-8 names (BRIEF: Names); 2.42 only legacy ones. parse_rule_file_with(.., Legacy) agrees with promtool";

fn rule(body: &str) -> String {
    format!("groups:\n- name: g\n  rules:\n  - {body}")
}

fn cases() -> Vec<(&'static str, String, Expect, Promtool)> {
    let long_name = "x".repeat(300);
    vec![
        // Good files.
        ("recording and alerting rules", "groups:\n- name: g\n  interval: 30s\n  rules:\n  - record: job:up:sum\n    expr: sum by (job) (up)\n  - alert: Down\n    expr: up == 0\n    for: 5m\n    keep_firing_for: 10m\n    labels: {severity: page}\n    annotations: {summary: \"{{ $labels.job }} down, value {{ $value | humanize }}\"}\n".into(), Accept(1), Agrees),
        ("empty file", "".into(), Accept(0), Agrees),
        ("comment only", "# no rules yet\n".into(), Accept(0), Agrees),
        ("empty groups", "groups: []\n".into(), Accept(0), Agrees),
        ("null groups", "groups:\n".into(), Accept(0), Agrees),
        ("group without rules", "groups:\n- name: a\n- name: b\n  rules:\n".into(), Accept(2), Agrees),
        ("group limit", "groups:\n- name: g\n  limit: 10\n  rules: []\n".into(), Accept(1), Agrees),
        ("negative limit means none", "groups:\n- name: g\n  limit: -1\n  rules: []\n".into(), Accept(1), Agrees),
        ("zero interval is the default", "groups:\n- name: g\n  interval: 0s\n  rules: []\n".into(), Accept(1), Agrees),
        ("for: 0s on a recording rule", rule("record: r\n    expr: up\n    for: 0s\n    keep_firing_for: 0\n"), Accept(1), Agrees),
        ("empty annotations on a recording rule", rule("record: r\n    expr: up\n    annotations: {}\n"), Accept(1), Agrees),
        ("integer expression", rule("alert: A\n    expr: 1\n"), Accept(1), Agrees),
        ("integer and null label values", rule("alert: A\n    expr: up\n    labels: {a: 1, b: }\n"), Accept(1), Agrees),
        ("alert names are free text", rule("alert: \"a.b c\"\n    expr: up\n"), Accept(1), Agrees),
        ("__ label names", rule("alert: A\n    expr: up\n    labels: {__x: y}\n    annotations: {__name__: z}\n"), Accept(1), Agrees),
        ("longest duration", rule("alert: A\n    expr: up\n    for: 292y\n"), Accept(1), Agrees),
        ("every duration unit", rule("alert: A\n    expr: up\n    for: 1y2w3d4h5m6s7ms\n"), Accept(1), Agrees),
        ("templates are not checked on recording rules", rule("record: r\n    expr: up\n    labels: {s: \"{{ $nosuch }}\"}\n"), Accept(1), Agrees),
        ("template control structures", rule("alert: A\n    expr: up\n    annotations:\n      d: '{{ range $i, $v := query \"up\" }}{{ if eq $i 0 }}{{ $v | value }}{{ else if true }}{{ break }}{{ end }}{{ end }}{{/* c */}}'\n"), Accept(1), Agrees),
        ("duplicate rules are only a lint warning", rule("record: r\n    expr: up\n  - record: r\n    expr: up\n"), Accept(1), Agrees),
        ("dotted record name", rule("record: a.b\n    expr: up\n"), Accept(1), Differs(UTF8_NAMES)),
        ("dashed label name", rule("alert: A\n    expr: up\n    labels: {a-b: x}\n"), Accept(1), Differs(UTF8_NAMES)),
        ("dashed annotation name", rule("alert: A\n    expr: up\n    annotations: {a-b: x}\n"), Accept(1), Differs(UTF8_NAMES)),
        // Bad files.
        ("not YAML", "groups: {\n".into(), Refuse("invalid file"), Agrees),
        ("top level is a list", "- name: g\n".into(), Refuse("invalid file"), Agrees),
        ("groups is a string", "groups: x\n".into(), Refuse("invalid file"), Agrees),
        ("unknown top-level key", "groups: []\nfoo: 1\n".into(), Refuse("unknown field `foo`"), Agrees),
        ("unknown rule key", rule("alert: A\n    expr: up\n    annotation: {a: b}\n"), Refuse("unknown field `annotation`"), Agrees),
        ("group labels are not in 2.42", "groups:\n- name: g\n  labels: {a: b}\n  rules: []\n".into(), Refuse("unknown field `labels`"), Agrees),
        ("query_offset is not in 2.42", "groups:\n- name: g\n  query_offset: 1m\n  rules: []\n".into(), Refuse("unknown field `query_offset`"), Agrees),
        ("key given twice", rule("alert: A\n    expr: up\n    expr: down\n"), Refuse("duplicate field `expr`"), Agrees),
        ("label given twice", rule("alert: A\n    expr: up\n    labels: {a: b, a: c}\n"), Refuse("given twice"), Agrees),
        ("label value is a list", rule("alert: A\n    expr: up\n    labels: {a: [1]}\n"), Refuse("invalid file"), Agrees),
        ("quoted limit", "groups:\n- name: g\n  limit: \"10\"\n  rules: []\n".into(), Refuse("invalid file"), Agrees),
        ("empty group name", "groups:\n- name: \"\"\n  rules: []\n".into(), Refuse("groups[0].name: a group needs a name"), Agrees),
        ("missing group name", "groups:\n- rules: []\n".into(), Refuse("a group needs a name"), Agrees),
        ("duplicate group", "groups:\n- name: a\n  rules: []\n- name: a\n  rules: []\n".into(), Refuse("group \"a\" (groups[1]): a group of this name appears earlier"), Agrees),
        ("missing expr", rule("alert: A\n"), Refuse("group \"g\" (groups[0]), rule 1 \"A\", expr: must be set"), Agrees),
        ("record and alert", rule("alert: A\n    record: r\n    expr: up\n"), Refuse("rule 1 \"A\": has both `record` and `alert`"), Agrees),
        ("neither record nor alert", rule("expr: up\n"), Refuse("rule 1 \"\": has neither"), Agrees),
        ("bad expression", rule("alert: A\n    expr: sum(\n"), Refuse("rule 1 \"A\", expr:"), Agrees),
        ("for on a recording rule", rule("record: r\n    expr: up\n    for: 1m\n"), Refuse("rule 1 \"r\", for: only alerting rules"), Agrees),
        ("keep_firing_for on a recording rule", rule("record: r\n    expr: up\n    keep_firing_for: 5m\n"), Refuse("rule 1 \"r\", keep_firing_for: only alerting rules"), Agrees),
        ("annotations on a recording rule", rule("record: r\n    expr: up\n    annotations: {a: b}\n"), Refuse("rule 1 \"r\", annotations: only alerting rules"), Agrees),
        ("braces in a record name", rule("record: \"a{b}\"\n    expr: up\n"), Refuse("rule 1 \"a{b}\", record: \"a{b}\" is not a valid metric name"), Agrees),
        ("__name__ label", rule("alert: A\n    expr: up\n    labels: {__name__: x}\n"), Refuse("rule 1 \"A\", labels: \"__name__\" is not a valid label name"), Agrees),
        ("bare number duration", rule("alert: A\n    expr: up\n    for: 10\n"), Refuse("rule 1 \"A\", for: duration \"10\""), Agrees),
        ("empty duration", rule("alert: A\n    expr: up\n    for: \"\"\n"), Refuse("empty duration"), Agrees),
        ("negative duration", rule("alert: A\n    expr: up\n    for: -1m\n"), Refuse("duration \"-1m\""), Agrees),
        ("units out of order", rule("alert: A\n    expr: up\n    keep_firing_for: 1m1h\n"), Refuse("largest to smallest"), Agrees),
        ("duration past 292 years", rule("alert: A\n    expr: up\n    for: 300y\n"), Refuse("out of range"), Agrees),
        ("bad interval", "groups:\n- name: g\n  interval: 1x\n  rules: []\n".into(), Refuse("group \"g\" (groups[0]), interval: duration \"1x\""), Agrees),
        ("unclosed template action", rule("alert: A\n    expr: up\n    annotations: {s: \"{{ $labels.job \"}\n"), Refuse("rule 1 \"A\", annotations.s: template: unclosed action"), Agrees),
        ("undefined template function", rule("alert: A\n    expr: up\n    labels: {s: \"{{ nosuch 1 }}\"}\n"), Refuse("labels.s: template: function \"nosuch\" not defined"), Agrees),
        ("undefined template variable", rule("alert: A\n    expr: up\n    annotations: {s: \"{{ $nosuch }}\"}\n"), Refuse("undefined variable \"$nosuch\""), Agrees),
        ("template {{end}} without a start", rule("alert: A\n    expr: up\n    labels: {s: \"{{ end }}\"}\n"), Refuse("unexpected {{end}}"), Agrees),
        ("template {{if}} without {{end}}", rule("alert: A\n    expr: up\n    labels: {s: \"{{ if true }}x\"}\n"), Refuse("unexpected EOF"), Agrees),
        ("template field with a dash", rule("alert: A\n    expr: up\n    labels: {s: \"{{ $labels.job-name }}\"}\n"), Refuse("bad character '-'"), Agrees),
        // Sextant's own limits and choices.
        ("second YAML document", "groups: []\n---\ngroups:\n- name: g\n".into(), Refuse("more than one YAML document"), Differs("promtool ignores every document after the first; Sextant refuses rather than silently drop rules")),
        ("group name over 256 bytes", format!("groups:\n- name: {long_name}\n  rules: []\n"), Refuse("300 bytes, at most 256 allowed"), Differs("Sextant's NAME_BYTES_MAX: names live in the replicated state and the audit trail")),
        ("control character in an alert name", rule("alert: \"A\\tB\"\n    expr: up\n"), Refuse("contains a control character"), Differs("Sextant refuses control characters in names; they break tables and logs")),
    ]
}

fn check(name: &str, text: &str, expected: Expect) {
    match (parse_rule_file(text), expected) {
        (Ok(groups), Accept(n)) => assert_eq!(groups.len(), n, "{name}"),
        (Err(error), Refuse(needle)) => {
            assert!(error.to_string().contains(needle), "{name}: error {error} lacks {needle:?}")
        }
        (got, want) => panic!("{name}: got {got:?}, want {want:?}"),
    }
}

#[test]
fn rule_files() {
    let cases = cases();
    assert!(cases.len() >= 25);
    for (name, text, expected, _) in &cases {
        check(name, text, *expected);
    }
    // The name differences are the naming scheme's: with legacy names Sextant refuses them too.
    for (name, text, _, promtool) in &cases {
        if let Differs(UTF8_NAMES) = promtool {
            let error = parse_rule_file_with(text, NameValidation::Legacy).unwrap_err();
            assert!(error.to_string().contains("is not a valid"), "{name}: {error}");
        }
    }
}

#[test]
fn promtool_agrees() {
    let ci = std::env::var("CI").is_ok_and(|v| v == "true");
    let version = std::process::Command::new("promtool").arg("--version").output();
    let version = match version {
        Ok(output) if output.status.success() => String::from_utf8_lossy(&output.stdout).into_owned()
            + &String::from_utf8_lossy(&output.stderr),
        other => {
            assert!(!ci, "CI=true and promtool cannot run ({other:?}); ci/test installs Debian's `prometheus`");
            eprintln!("SKIPPED promtool_agrees: promtool not found (apt-get install -y prometheus)");
            return;
        }
    };
    // The table's verdicts are Prometheus 2.42's; another version may differ on purpose.
    assert!(version.contains("version 2.42"), "expected promtool 2.42, got {version}");
    let dir = tempfile::tempdir().unwrap();
    let mut disagreements = Vec::new();
    for (i, (name, text, expected, promtool)) in cases().into_iter().enumerate() {
        let path = dir.path().join(format!("case{i}.yml"));
        std::fs::write(&path, &text).unwrap();
        let output = std::process::Command::new("promtool").arg("check").arg("rules").arg(&path).output().unwrap();
        let promtool_accepts = output.status.success();
        let sextant_accepts = matches!(expected, Accept(_));
        let should_agree = matches!(promtool, Agrees);
        if (promtool_accepts == sextant_accepts) != should_agree {
            disagreements.push(format!(
                "{name}: promtool {} (exit {:?}: {}), table says Sextant {} and {promtool:?}",
                if promtool_accepts { "accepts" } else { "refuses" },
                output.status.code(),
                String::from_utf8_lossy(&output.stdout).trim().replace('\n', " "),
                if sextant_accepts { "accepts" } else { "refuses" },
            ));
        }
    }
    assert!(disagreements.is_empty(), "{}", disagreements.join("\n"));
}
