//! What the metadata log carries: [`Command`]s in, [`Response`]s out, and the objects they
//! change, with [`validate`] for the proposer.
//!
//! The split is deliberate: everything that can fail — parsing PromQL, durations, dashboard
//! JSON, checking names and sizes, reading the clock for the audit time — happens in the
//! proposer, once, *before* the command enters the log. Applying a command never fails and
//! never reads a clock (see `state.rs`), so every node turns the same log into the same state.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::types::{Node, NodeId};

/// Names (tenants, rule groups, rules, dashboard uids, labels) are at most this long.
pub const NAME_BYTES_MAX: usize = 256;
/// A dashboard's JSON is at most this long.
pub const DASHBOARD_JSON_BYTES_MAX: usize = 1024 * 1024;
/// A rule group holds at most this many rules.
pub const RULES_PER_GROUP_MAX: usize = 1_000;
/// Rule groups put by one command (one rule file).
pub const RULE_GROUPS_PER_COMMAND_MAX: usize = 1_000;
/// A PromQL expression in a rule is at most this long.
pub const RULE_EXPR_BYTES_MAX: usize = 64 * 1024;
/// Labels or annotations on a rule, each.
pub const RULE_LABELS_MAX: usize = 64;
/// A label or annotation value is at most this long.
pub const LABEL_VALUE_BYTES_MAX: usize = 16 * 1024;
/// Blocked label names per tenant.
pub const BLOCKED_LABELS_MAX: usize = 1_000;
/// Shards in a shard map (the count is fixed at creation).
pub const SHARD_COUNT_MAX: u32 = 4_096;
/// The shard count a cluster is created with when nobody says otherwise.
pub const SHARD_COUNT_DEFAULT: u32 = 16;
/// The `who` of a command is at most this long.
pub const WHO_BYTES_MAX: usize = 256;
/// A command's JSON encoding (what the log record carries) is at most this long. Checked by
/// `validate` because escaping can double a dashboard's size, and an entry the log store
/// refuses (`entry_bytes_max`) would stop the node's raft instead of answering the proposer.
pub const COMMAND_BYTES_MAX: usize = 2 * 1024 * 1024 - 4096;
const _: () = assert!(COMMAND_BYTES_MAX <= crate::log_store::ENTRY_BYTES_MAX_DEFAULT);
const _: () = assert!(DASHBOARD_JSON_BYTES_MAX < COMMAND_BYTES_MAX);

/// One entry of the metadata log: an action, and who asked for it when. `who` and `at_ms` are
/// stamped by the proposer (its `Clock`), so the audit trail is the same on every node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Command {
    /// The principal (admin token name, `node-3`, `bootstrap`), for the audit trail.
    pub who: String,
    /// Wall-clock time at the proposer, milliseconds since the Unix epoch.
    pub at_ms: i64,
    pub action: Action,
}

/// What a command changes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Action {
    /// Creates the shard map with `shard_count` shards, each assigned as given (shards not
    /// listed start unassigned). Applies once: a second creation is a no-op with a reason.
    CreateShardMap {
        shard_count: u32,
        assignments: BTreeMap<u32, ShardAssignment>,
    },
    /// Sets a shard's primary and secondary. The epoch increases iff the primary changes.
    AssignShard {
        shard: u32,
        assignment: ShardAssignment,
    },
    /// Creates or replaces a tenant's limits (blocked labels are kept).
    PutTenantLimits {
        tenant: String,
        limits: TenantLimits,
    },
    DeleteTenant {
        tenant: String,
    },
    BlockLabel {
        tenant: String,
        label: String,
    },
    UnblockLabel {
        tenant: String,
        label: String,
    },
    /// Creates or replaces a rule group (keyed by its name).
    PutRuleGroup {
        group: RuleGroup,
    },
    DeleteRuleGroup {
        name: String,
    },
    /// Saves a new version of a dashboard.
    PutDashboard {
        uid: String,
        title: String,
        json: String,
    },
    DeleteDashboard {
        uid: String,
    },
    SetRetention {
        tenant: String,
        retention_ms: i64,
    },
    DeleteRetention {
        tenant: String,
    },
    /// Creates or replaces several rule groups at once (a whole rule file): validated group by
    /// group, applied all together in one entry, so readers never see half a file.
    PutRuleGroups {
        groups: Vec<RuleGroup>,
    },
    /// Seeds a new cluster, once: creates the shard map (if none exists yet) and records the
    /// default tenant limits, both taken from the first leader's `serve` flags. Applied to a
    /// cluster that is already seeded (`defaults` present) it is a no-op, so every node of a
    /// new cluster may race to propose it.
    SeedCluster {
        shard_count: u32,
        assignments: BTreeMap<u32, ShardAssignment>,
        defaults: ClusterDefaults,
    },
    /// A node records (or updates) its own HTTP and gRPC addresses. `--initial-cluster` only
    /// names gRPC addresses, so every member registers itself after start; the same addresses
    /// again are a no-op. Only members (voters or learners) may register.
    RegisterNode {
        id: NodeId,
        node: Node,
    },
    /// Failover: makes the shard's secondary its primary and the old primary its secondary,
    /// bumps the epoch and marks the shard merge pending. A compare-and-set on the epoch: at
    /// any other epoch than `expected_epoch` (the proposer's view is stale) it is a no-op.
    /// Proposed by the Raft leader when a primary stops renewing its lease, or by an operator.
    PromoteShard {
        shard: u32,
        expected_epoch: u64,
    },
    /// The merge-back of a promoted shard completed at `epoch`: clears merge pending. A no-op
    /// when the shard has moved to another epoch since (the sync is stale) or nothing is pending.
    MarkShardSynced {
        shard: u32,
        epoch: u64,
    },
    /// An operator gives up the merge-back of a promoted shard at `epoch` (its previous
    /// primary is gone for good): clears merge pending like `MarkShardSynced`, and the audit
    /// says it was abandoned — samples only the previous primary held are lost. The same no-op
    /// rules as `MarkShardSynced`.
    AbandonMerge {
        shard: u32,
        epoch: u64,
    },
}

/// The limits a tenant without its own entry gets, and what a tenant entry's zero fields
/// fall back to. Seeded from the first leader's `serve` flags when the cluster is created.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterDefaults {
    /// Here 0 keeps the `serve` flag's meaning (`ingest_rate_samples_per_s_max` and
    /// `query_range_ms_max` 0: unlimited).
    pub limits: TenantLimits,
    /// Label names refused for every tenant (a tenant's own blocked labels add to these).
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub blocked_labels: BTreeSet<String>,
}

/// Spreads `shard_count` shards round-robin over `voters` (taken in the given order): shard
/// `i` has primary `voters[i % n]` and, with two or more voters, secondary
/// `voters[(i + 1) % n]`, so a secondary is never its shard's primary. No voters: no
/// assignments (the shards start unassigned).
pub fn round_robin_assignments(shard_count: u32, voters: &[NodeId]) -> BTreeMap<u32, ShardAssignment> {
    let n = voters.len();
    if n == 0 {
        return BTreeMap::new();
    }
    (0..shard_count)
        .map(|shard| {
            let i = shard as usize;
            let primary = voters[i % n];
            let secondary = (n >= 2).then(|| voters[(i + 1) % n]);
            (shard, ShardAssignment { primary: Some(primary), secondary })
        })
        .collect()
}

/// A shard's replicas. `None` means unassigned.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardAssignment {
    pub primary: Option<NodeId>,
    pub secondary: Option<NodeId>,
}

/// Per-tenant limits, applied live by every node's ingest and query paths. In a tenant's own
/// entry a field of 0 means "the cluster default" ([`ClusterDefaults`]), so an entry created
/// only to block a label inherits every limit.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantLimits {
    pub series_per_metric_max: u64,
    pub series_per_tenant_max: u64,
    pub ingest_rate_samples_per_s_max: u64,
    pub query_samples_max: u64,
    pub query_series_max: u64,
    pub query_range_ms_max: i64,
    pub query_timeout_ms: i64,
}

/// A Prometheus rule group (the shape of one entry of a rule file's `groups:`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleGroup {
    pub name: String,
    /// Evaluation interval as a Prometheus duration (`1m`); `None` means the global default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<String>,
    /// Prometheus's `limit`: at most this many series per evaluation of a rule (alerts for an
    /// alerting rule); `None` (or, as in Prometheus, a value <= 0) means no limit. Skipped when
    /// `None` so entries and snapshots written before the field existed keep their bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<i64>,
    pub rules: Vec<Rule>,
}

/// One rule: exactly one of `record` and `alert` is set.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rule {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub record: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alert: Option<String>,
    pub expr: String,
    /// Alerting rules only: how long the condition must hold (`5m`).
    #[serde(default, rename = "for", skip_serializing_if = "Option::is_none")]
    pub for_duration: Option<String>,
    /// Alerting rules only: how long an alert keeps firing after its condition stops (`10m`).
    /// Skipped when `None`, like `limit`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_firing_for: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// What applying one log entry did. Identical on every node for the same entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    /// The log index of the entry.
    pub index: u64,
    pub outcome: Outcome,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// The state changed (or, for blank and membership entries, the entry was recorded).
    Applied,
    /// The command was valid when proposed but does not fit the state it met (deleting a
    /// missing rule group, creating the shard map twice): nothing changed.
    NoOp { reason: String },
}

/// Why a command may not be proposed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid {field}: {message}")]
pub struct ValidationError {
    /// Where in the command the problem is, e.g. `group.rules[2].expr`.
    pub field: String,
    pub message: String,
}

fn invalid(field: impl Into<String>, message: impl fmt::Display) -> ValidationError {
    ValidationError {
        field: field.into(),
        message: message.to_string(),
    }
}

fn check_name(field: &str, name: &str) -> Result<(), ValidationError> {
    if name.is_empty() {
        return Err(invalid(field, "must not be empty"));
    }
    if name.len() > NAME_BYTES_MAX {
        return Err(invalid(
            field,
            format!("{} bytes, at most {NAME_BYTES_MAX} allowed", name.len()),
        ));
    }
    if name.chars().any(char::is_control) {
        return Err(invalid(
            field,
            format!("{name:?} contains a control character"),
        ));
    }
    Ok(())
}

/// Parses a Prometheus duration (`0`, `30s`, `1h30m`, `1y`) into milliseconds with
/// `sextant_core::duration`, the parser the whole project shares; `field` says where it was.
pub fn parse_duration_ms(field: &str, text: &str) -> Result<i64, ValidationError> {
    sextant_core::duration::parse_duration_ms(text).map_err(|e| invalid(field, e))
}

fn check_labels(field: &str, labels: &BTreeMap<String, String>) -> Result<(), ValidationError> {
    if labels.len() > RULE_LABELS_MAX {
        return Err(invalid(
            field,
            format!(
                "{} entries, at most {RULE_LABELS_MAX} allowed",
                labels.len()
            ),
        ));
    }
    for (name, value) in labels {
        check_name(&format!("{field}.{name}"), name)?;
        if value.len() > LABEL_VALUE_BYTES_MAX {
            return Err(invalid(
                format!("{field}.{name}"),
                format!(
                    "value of {} bytes, at most {LABEL_VALUE_BYTES_MAX} allowed",
                    value.len()
                ),
            ));
        }
    }
    Ok(())
}

/// Checks a rule group the way `promtool check rules` does (see `rule_file`), with Prometheus
/// 3.x UTF-8 names, plus Sextant's size limits. Fields are reported as `group.rules[2].expr`.
pub fn check_rule_group(group: &RuleGroup) -> Result<(), ValidationError> {
    check_rule_group_with(group, sextant_core::labels::NameValidation::Utf8)
}

/// [`check_rule_group`] with a choice of name rules (`Legacy` is Prometheus 2.x's).
pub fn check_rule_group_with(
    group: &RuleGroup,
    names: sextant_core::labels::NameValidation,
) -> Result<(), ValidationError> {
    check_name("group.name", &group.name)?;
    if let Some(interval) = &group.interval {
        let ms = parse_duration_ms("group.interval", interval)?;
        if ms <= 0 {
            return Err(invalid(
                "group.interval",
                format!("{interval:?} must be positive"),
            ));
        }
    }
    if group.rules.len() > RULES_PER_GROUP_MAX {
        return Err(invalid(
            "group.rules",
            format!(
                "{} rules, at most {RULES_PER_GROUP_MAX} allowed",
                group.rules.len()
            ),
        ));
    }
    for (i, rule) in group.rules.iter().enumerate() {
        let field = format!("group.rules[{i}]");
        match (&rule.record, &rule.alert) {
            (Some(record), None) => {
                check_name(&format!("{field}.record"), record)?;
                if rule.for_duration.is_some() {
                    return Err(invalid(
                        format!("{field}.for"),
                        "only alerting rules take `for`",
                    ));
                }
                if rule.keep_firing_for.is_some() {
                    return Err(invalid(
                        format!("{field}.keep_firing_for"),
                        "only alerting rules take `keep_firing_for`",
                    ));
                }
            }
            (None, Some(alert)) => check_name(&format!("{field}.alert"), alert)?,
            (Some(_), Some(_)) => {
                return Err(invalid(
                    &field,
                    "has both `record` and `alert`; set exactly one",
                ))
            }
            (None, None) => {
                return Err(invalid(
                    &field,
                    "has neither `record` nor `alert`; set exactly one",
                ))
            }
        }
        if rule.expr.is_empty() {
            return Err(invalid(format!("{field}.expr"), "must not be empty"));
        }
        if rule.expr.len() > RULE_EXPR_BYTES_MAX {
            return Err(invalid(
                format!("{field}.expr"),
                format!(
                    "{} bytes, at most {RULE_EXPR_BYTES_MAX} allowed",
                    rule.expr.len()
                ),
            ));
        }
        sextant_core::promql::parse(&rule.expr).map_err(|e| invalid(format!("{field}.expr"), e))?;
        if let Some(for_duration) = &rule.for_duration {
            parse_duration_ms(&format!("{field}.for"), for_duration)?;
        }
        if let Some(keep_firing_for) = &rule.keep_firing_for {
            parse_duration_ms(&format!("{field}.keep_firing_for"), keep_firing_for)?;
        }
        check_labels(&format!("{field}.labels"), &rule.labels)?;
        check_labels(&format!("{field}.annotations"), &rule.annotations)?;
        crate::rule_file::check_rule_like_promtool(&field, rule, names)?;
    }
    Ok(())
}

fn check_limits(limits: &TenantLimits) -> Result<(), ValidationError> {
    if limits.query_range_ms_max < 0 {
        return Err(invalid("limits.query_range_ms_max", "must not be negative"));
    }
    if limits.query_timeout_ms < 0 {
        return Err(invalid("limits.query_timeout_ms", "must not be negative"));
    }
    Ok(())
}

fn check_shard(field: &str, assignment: &ShardAssignment) -> Result<(), ValidationError> {
    if assignment.primary.is_some() && assignment.primary == assignment.secondary {
        return Err(invalid(
            field,
            "primary and secondary must be different nodes",
        ));
    }
    if assignment.primary.is_none() && assignment.secondary.is_some() {
        return Err(invalid(field, "a secondary needs a primary"));
    }
    Ok(())
}

fn check_shard_id(shard: u32) -> Result<(), ValidationError> {
    if shard >= SHARD_COUNT_MAX {
        return Err(invalid(
            "shard",
            format!("{shard} is not below {SHARD_COUNT_MAX}"),
        ));
    }
    Ok(())
}

fn check_shard_map(
    shard_count: u32,
    assignments: &BTreeMap<u32, ShardAssignment>,
) -> Result<(), ValidationError> {
    if shard_count == 0 || shard_count > SHARD_COUNT_MAX {
        return Err(invalid(
            "shard_count",
            format!("{shard_count} is not in 1..={SHARD_COUNT_MAX}"),
        ));
    }
    for (shard, assignment) in assignments {
        if *shard >= shard_count {
            return Err(invalid(
                format!("assignments[{shard}]"),
                format!("only {shard_count} shards"),
            ));
        }
        check_shard(&format!("assignments[{shard}]"), assignment)?;
    }
    Ok(())
}

/// Checks a command before it is proposed. A command that passes may still apply as a no-op
/// (the state may have changed meanwhile), but it never makes apply fail.
pub fn validate(command: &Command) -> Result<(), ValidationError> {
    if command.who.is_empty() {
        return Err(invalid("who", "must not be empty"));
    }
    if command.who.len() > WHO_BYTES_MAX {
        return Err(invalid(
            "who",
            format!(
                "{} bytes, at most {WHO_BYTES_MAX} allowed",
                command.who.len()
            ),
        ));
    }
    if command.at_ms < 0 {
        return Err(invalid(
            "at_ms",
            format!("{} is before 1970", command.at_ms),
        ));
    }
    match &command.action {
        Action::CreateShardMap {
            shard_count,
            assignments,
        } => check_shard_map(*shard_count, assignments)?,
        Action::SeedCluster {
            shard_count,
            assignments,
            defaults,
        } => {
            check_shard_map(*shard_count, assignments)?;
            check_limits(&defaults.limits)?;
            if defaults.blocked_labels.len() > BLOCKED_LABELS_MAX {
                return Err(invalid(
                    "defaults.blocked_labels",
                    format!(
                        "{} names, at most {BLOCKED_LABELS_MAX} allowed",
                        defaults.blocked_labels.len()
                    ),
                ));
            }
            for label in &defaults.blocked_labels {
                check_name("defaults.blocked_labels", label)?;
            }
        }
        Action::RegisterNode { id: _, node } => {
            check_name("node.grpc_addr", &node.grpc_addr)?;
            // The HTTP address may be unknown (empty) but not oversized.
            if !node.http_addr.is_empty() {
                check_name("node.http_addr", &node.http_addr)?;
            }
        }
        Action::AssignShard { shard, assignment } => {
            check_shard_id(*shard)?;
            check_shard("assignment", assignment)?;
        }
        Action::PromoteShard {
            shard,
            expected_epoch,
        } => {
            check_shard_id(*shard)?;
            // A shard without a primary has epoch 0 and nothing to promote; u64::MAX cannot
            // be bumped.
            if *expected_epoch == 0 || *expected_epoch == u64::MAX {
                return Err(invalid(
                    "expected_epoch",
                    format!("{expected_epoch} is not an epoch a promotable shard can have (1..u64::MAX)"),
                ));
            }
        }
        Action::MarkShardSynced { shard, epoch } | Action::AbandonMerge { shard, epoch } => {
            check_shard_id(*shard)?;
            if *epoch == 0 {
                return Err(invalid("epoch", "0 is not an epoch a promoted shard can have"));
            }
        }
        Action::PutTenantLimits { tenant, limits } => {
            check_name("tenant", tenant)?;
            check_limits(limits)?;
        }
        Action::DeleteTenant { tenant } | Action::DeleteRetention { tenant } => {
            check_name("tenant", tenant)?
        }
        Action::BlockLabel { tenant, label } | Action::UnblockLabel { tenant, label } => {
            check_name("tenant", tenant)?;
            check_name("label", label)?;
        }
        Action::PutRuleGroup { group } => check_rule_group(group)?,
        Action::DeleteRuleGroup { name } => check_name("name", name)?,
        Action::PutRuleGroups { groups } => {
            if groups.is_empty() {
                return Err(invalid("groups", "no rule groups to put"));
            }
            if groups.len() > RULE_GROUPS_PER_COMMAND_MAX {
                return Err(invalid(
                    "groups",
                    format!(
                        "{} groups, at most {RULE_GROUPS_PER_COMMAND_MAX} allowed in one command",
                        groups.len()
                    ),
                ));
            }
            let mut names = std::collections::BTreeSet::new();
            for (i, group) in groups.iter().enumerate() {
                check_rule_group(group)
                    .map_err(|e| invalid(format!("groups[{i}] ({:?}): {}", group.name, e.field), e.message))?;
                if !names.insert(group.name.as_str()) {
                    return Err(invalid(
                        format!("groups[{i}] ({:?}).name", group.name),
                        "a group of this name appears earlier in the command",
                    ));
                }
            }
        }
        Action::PutDashboard { uid, title, json } => {
            check_name("uid", uid)?;
            if title.len() > NAME_BYTES_MAX {
                return Err(invalid(
                    "title",
                    format!("{} bytes, at most {NAME_BYTES_MAX} allowed", title.len()),
                ));
            }
            if json.len() > DASHBOARD_JSON_BYTES_MAX {
                return Err(invalid(
                    "json",
                    format!(
                        "{} bytes, at most {DASHBOARD_JSON_BYTES_MAX} allowed",
                        json.len()
                    ),
                ));
            }
            let value: serde_json::Value =
                serde_json::from_str(json).map_err(|e| invalid("json", e))?;
            if !value.is_object() {
                return Err(invalid("json", "a Grafana dashboard is a JSON object"));
            }
        }
        Action::DeleteDashboard { uid } => check_name("uid", uid)?,
        Action::SetRetention {
            tenant,
            retention_ms,
        } => {
            check_name("tenant", tenant)?;
            if *retention_ms <= 0 {
                return Err(invalid(
                    "retention_ms",
                    format!("{retention_ms} must be positive"),
                ));
            }
        }
    }
    let encoded_bytes = serde_json::to_vec(command)
        .map_err(|e| invalid("command", e))?
        .len();
    if encoded_bytes > COMMAND_BYTES_MAX {
        return Err(invalid(
            "command",
            format!("{encoded_bytes} bytes encoded, at most {COMMAND_BYTES_MAX} allowed"),
        ));
    }
    Ok(())
}
