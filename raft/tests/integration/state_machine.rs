//! Goal: applying the metadata log is a pure, total function: versions are log indexes, epochs
//! rise exactly on primary changes, histories stay bounded, invalid commands apply as no-ops
//! with a reason, the same log gives the same snapshot bytes, and snapshots restore.
//! Method: data-driven tables over `MetadataState::apply` and `validate`, then the
//! `StateMachineStore` on SimFs for snapshots.

use std::collections::BTreeMap;
use std::io::Cursor;
use std::path::Path;
use std::sync::Arc;

use openraft::storage::RaftStateMachine;
use openraft::{CommittedLeaderId, EntryPayload, Membership, RaftSnapshotBuilder};
use sextant_raft::command::{Rule, RuleGroup, ShardAssignment, TenantLimits};
use sextant_raft::state::{AUDIT_ENTRIES_MAX, DASHBOARD_VERSIONS_MAX};
use sextant_raft::types::{Entry, LogId};
use sextant_raft::{validate, Action, Command, MetadataState, Node, Outcome, StateMachineStore};
use sextant_storage::fs::sim::SimFs;
use sextant_storage::fs::FileSystem;

fn command(action: Action) -> Command {
    Command {
        who: "alice".into(),
        at_ms: 1_700_000_000_000,
        action,
    }
}

fn entries(actions: Vec<Action>) -> Vec<Entry> {
    actions
        .into_iter()
        .enumerate()
        .map(|(i, action)| Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), i as u64 + 1),
            payload: EntryPayload::Normal(command(action)),
        })
        .collect()
}

fn apply_all(actions: Vec<Action>) -> (MetadataState, Vec<Outcome>) {
    let mut state = MetadataState::default();
    let outcomes = entries(actions)
        .iter()
        .map(|e| state.apply(e).outcome)
        .collect();
    (state, outcomes)
}

fn rule_group(name: &str, expr: &str) -> RuleGroup {
    RuleGroup {
        name: name.into(),
        interval: Some("1m".into()),
        limit: None,
        rules: vec![Rule {
            record: Some("job:up:sum".into()),
            expr: expr.into(),
            ..Rule::default()
        }],
    }
}

fn assign(primary: Option<u64>, secondary: Option<u64>) -> ShardAssignment {
    ShardAssignment { primary, secondary }
}

fn no_op(reason: &str) -> Outcome {
    Outcome::NoOp {
        reason: reason.into(),
    }
}

/// One case: the actions applied at indexes 1.., the outcomes expected, and a check of the state.
fn check(
    name: &str,
    actions: Vec<Action>,
    expected: Vec<Outcome>,
    state_check: impl Fn(&MetadataState),
) {
    let (state, outcomes) = apply_all(actions.clone());
    assert_eq!(outcomes, expected, "{name}: outcomes");
    state_check(&state);
    // Determinism: a second node applying the same entries reaches the same bytes.
    let (again, _) = apply_all(actions);
    assert_eq!(
        serde_json::to_vec(&state).unwrap(),
        serde_json::to_vec(&again).unwrap(),
        "{name}: deterministic"
    );
}

#[test]
fn apply_table() {
    check(
        "a rule file's groups go in together, at one version, beside the groups already there",
        vec![
            Action::PutRuleGroup {
                group: rule_group("kept", "up"),
            },
            Action::PutRuleGroups {
                groups: vec![rule_group("a", "sum(up)"), rule_group("b", "count(up)")],
            },
        ],
        vec![Outcome::Applied; 2],
        |state| {
            let versions: Vec<(&str, u64)> = state
                .rule_groups
                .iter()
                .map(|(name, g)| (name.as_str(), g.version))
                .collect();
            assert_eq!(versions, vec![("a", 2), ("b", 2), ("kept", 1)]);
            assert_eq!(state.rule_groups["b"].group.rules[0].expr, "count(up)");
            assert_eq!(
                state.audit.back().unwrap().what,
                "put 2 rule groups [\"a\", \"b\"]"
            );
        },
    );
    check(
        "versions are the index of the last change",
        vec![
            Action::PutRuleGroup {
                group: rule_group("g", "sum(up)"),
            },
            Action::SetRetention {
                tenant: "t".into(),
                retention_ms: 1_000,
            },
            Action::PutRuleGroup {
                group: rule_group("g", "sum(up) by (job)"),
            },
        ],
        vec![Outcome::Applied; 3],
        |state| {
            assert_eq!(state.rule_groups["g"].version, 3);
            assert_eq!(
                state.rule_groups["g"].group.rules[0].expr,
                "sum(up) by (job)"
            );
            assert_eq!(state.retention["t"].version, 2);
            assert_eq!(state.last_applied.map(|id| id.index), Some(3));
        },
    );
    check(
        "epoch rises exactly when the primary changes",
        vec![
            Action::CreateShardMap {
                shard_count: 16,
                assignments: BTreeMap::from([(0, assign(Some(1), None))]),
            },
            Action::AssignShard {
                shard: 0,
                assignment: assign(Some(1), Some(2)),
            },
            Action::AssignShard {
                shard: 0,
                assignment: assign(Some(2), Some(1)),
            },
            Action::AssignShard {
                shard: 0,
                assignment: assign(Some(2), Some(1)),
            },
            Action::AssignShard {
                shard: 16,
                assignment: assign(Some(2), None),
            },
            Action::CreateShardMap {
                shard_count: 8,
                assignments: BTreeMap::new(),
            },
        ],
        vec![
            Outcome::Applied,
            Outcome::Applied,
            Outcome::Applied,
            no_op("shard 0 already has this assignment"),
            no_op("shard 16 does not exist (the map has 16 shards)"),
            no_op("the shard map already exists; its shard count is fixed at creation"),
        ],
        |state| {
            let map = state.shard_map.as_ref().unwrap();
            assert_eq!(map.shard_count(), 16);
            assert_eq!(
                (map.shards[&0].primary, map.shards[&0].secondary),
                (Some(2), Some(1))
            );
            assert_eq!(
                map.shards[&0].epoch, 2,
                "1 at creation with a primary, +1 on the change to node 2"
            );
            assert_eq!(map.shards[&0].version, 3);
            assert_eq!(
                map.shards[&1].epoch, 0,
                "unassigned shards start at epoch 0"
            );
            assert_eq!(map.version, 3);
        },
    );
    check(
        "invalid commands apply as no-ops with a reason and leave no audit entry",
        vec![
            Action::DeleteRuleGroup {
                name: "missing".into(),
            },
            Action::DeleteDashboard { uid: "nope".into() },
            Action::DeleteTenant { tenant: "t".into() },
            Action::BlockLabel {
                tenant: "t".into(),
                label: "pod".into(),
            },
            Action::DeleteRetention { tenant: "t".into() },
            Action::AssignShard {
                shard: 0,
                assignment: assign(Some(1), None),
            },
        ],
        vec![
            no_op("rule group \"missing\" does not exist"),
            no_op("dashboard \"nope\" does not exist"),
            no_op("tenant \"t\" does not exist"),
            no_op("tenant \"t\" does not exist"),
            no_op("tenant \"t\" has no retention policy"),
            no_op("no shard map yet"),
        ],
        |state| {
            assert!(state.audit.is_empty());
            assert_eq!(
                state.last_applied.map(|id| id.index),
                Some(6),
                "no-ops still advance last_applied"
            );
        },
    );
    check(
        "tenants: limits, blocked labels, versions",
        vec![
            Action::PutTenantLimits {
                tenant: "t".into(),
                limits: TenantLimits {
                    series_per_metric_max: 10,
                    ..TenantLimits::default()
                },
            },
            Action::BlockLabel {
                tenant: "t".into(),
                label: "pod".into(),
            },
            Action::BlockLabel {
                tenant: "t".into(),
                label: "pod".into(),
            },
            Action::PutTenantLimits {
                tenant: "t".into(),
                limits: TenantLimits {
                    series_per_metric_max: 20,
                    ..TenantLimits::default()
                },
            },
            Action::UnblockLabel {
                tenant: "t".into(),
                label: "container".into(),
            },
        ],
        vec![
            Outcome::Applied,
            Outcome::Applied,
            no_op("label \"pod\" is already blocked for tenant \"t\""),
            Outcome::Applied,
            no_op("label \"container\" is not blocked for tenant \"t\""),
        ],
        |state| {
            let tenant = &state.tenants["t"];
            assert_eq!(tenant.limits.series_per_metric_max, 20);
            assert!(
                tenant.blocked_labels.contains("pod"),
                "replacing limits keeps blocked labels"
            );
            assert_eq!(tenant.version, 4);
            let audit: Vec<(u64, &str)> = state
                .audit
                .iter()
                .map(|a| (a.index, a.what.as_str()))
                .collect();
            assert_eq!(
                audit,
                vec![
                    (1, "set limits of tenant \"t\""),
                    (2, "block label \"pod\" for tenant \"t\""),
                    (4, "set limits of tenant \"t\"")
                ]
            );
            assert!(state
                .audit
                .iter()
                .all(|a| a.who == "alice" && a.at_ms == Some(1_700_000_000_000)));
        },
    );
}

fn shard_map_1_2() -> Action {
    Action::CreateShardMap {
        shard_count: 4,
        assignments: BTreeMap::from([
            (0, assign(Some(1), Some(2))),
            (1, assign(Some(2), None)),
        ]),
    }
}

fn merge_pending(state: &MetadataState, shard: u32) -> Option<(u64, u64)> {
    let shard = &state.shard_map.as_ref().unwrap().shards[&shard];
    shard.merge_pending.as_ref().map(|m| (m.epoch, m.from_node))
}

fn placement(state: &MetadataState, shard: u32) -> (Option<u64>, Option<u64>, u64, u64) {
    let shard = &state.shard_map.as_ref().unwrap().shards[&shard];
    (shard.primary, shard.secondary, shard.epoch, shard.version)
}

// Goal: PromoteShard is a compare-and-set on the epoch that swaps the replicas, bumps the epoch
// and marks merge pending; MarkShardSynced clears it only at the promotion's epoch.
// Method: the apply table's check() over logs of promotions and syncs, right and stale epochs.
#[test]
fn promotion_table() {
    check(
        "promote at the right epoch swaps primary and secondary and marks merge pending",
        vec![
            shard_map_1_2(),
            Action::PromoteShard {
                shard: 0,
                expected_epoch: 1,
            },
        ],
        vec![Outcome::Applied; 2],
        |state| {
            assert_eq!(placement(state, 0), (Some(2), Some(1), 2, 2));
            assert_eq!(merge_pending(state, 0), Some((2, 1)));
            assert_eq!(placement(state, 1), (Some(2), None, 1, 1), "other shards untouched");
            assert_eq!(merge_pending(state, 1), None);
            assert_eq!(state.shard_map.as_ref().unwrap().version, 2);
            assert_eq!(
                state.audit.back().unwrap().what,
                "promote the secondary of shard 0 (epoch 1 → 2)"
            );
        },
    );
    check(
        "a stale promotion (epoch moved) and impossible ones are no-ops",
        vec![
            Action::PromoteShard {
                shard: 0,
                expected_epoch: 1,
            },
            shard_map_1_2(),
            Action::PromoteShard {
                shard: 0,
                expected_epoch: 1,
            },
            Action::PromoteShard {
                shard: 0,
                expected_epoch: 1,
            },
            Action::PromoteShard {
                shard: 1,
                expected_epoch: 1,
            },
            Action::PromoteShard {
                shard: 2,
                expected_epoch: 0,
            },
            Action::PromoteShard {
                shard: 9,
                expected_epoch: 1,
            },
        ],
        vec![
            no_op("no shard map yet"),
            Outcome::Applied,
            Outcome::Applied,
            no_op("shard 0 is at epoch 2, not 1; the promotion is stale"),
            no_op("shard 1 has no secondary to promote"),
            no_op("shard 2 has no primary to promote"),
            no_op("shard 9 does not exist (the map has 4 shards)"),
        ],
        |state| {
            assert_eq!(placement(state, 0), (Some(2), Some(1), 2, 3), "promoted once");
            assert_eq!(merge_pending(state, 0), Some((2, 1)));
        },
    );
    check(
        "mark synced at the promotion's epoch clears merge pending; stale or repeated marks are no-ops",
        vec![
            shard_map_1_2(),
            Action::PromoteShard {
                shard: 0,
                expected_epoch: 1,
            },
            Action::MarkShardSynced { shard: 0, epoch: 1 },
            Action::MarkShardSynced { shard: 1, epoch: 1 },
            Action::MarkShardSynced { shard: 0, epoch: 2 },
            Action::MarkShardSynced { shard: 0, epoch: 2 },
        ],
        vec![
            Outcome::Applied,
            Outcome::Applied,
            no_op("shard 0 is at epoch 2, the sync was at epoch 1"),
            no_op("shard 1 has no merge pending"),
            Outcome::Applied,
            no_op("shard 0 has no merge pending"),
        ],
        |state| {
            assert_eq!(merge_pending(state, 0), None);
            assert_eq!(placement(state, 0), (Some(2), Some(1), 2, 5), "the sync moves the version, not the epoch");
            assert_eq!(
                state.audit.back().unwrap().what,
                "shard 0: merge-back completed at epoch 2"
            );
        },
    );
    check(
        "abandoning the merge-back clears merge pending at its epoch, audited as abandoned; stale or repeated requests are no-ops",
        vec![
            shard_map_1_2(),
            Action::PromoteShard {
                shard: 0,
                expected_epoch: 1,
            },
            Action::AbandonMerge { shard: 0, epoch: 1 },
            Action::AbandonMerge { shard: 0, epoch: 2 },
            Action::AbandonMerge { shard: 0, epoch: 2 },
            Action::MarkShardSynced { shard: 0, epoch: 2 },
        ],
        vec![
            Outcome::Applied,
            Outcome::Applied,
            no_op("shard 0 is at epoch 2, the sync was at epoch 1"),
            Outcome::Applied,
            no_op("shard 0 has no merge pending"),
            no_op("shard 0 has no merge pending"),
        ],
        |state| {
            assert_eq!(merge_pending(state, 0), None);
            assert_eq!(placement(state, 0), (Some(2), Some(1), 2, 4), "the version moves, the epoch stays");
            assert!(state.audit.iter().any(|a| a.what == "shard 0: merge-back abandoned at epoch 2 (samples only the previous primary held are lost)"), "{:?}", state.audit);
        },
    );
    check(
        "a second promotion before the merge-back replaces what is pending; a sync of the first epoch does not clear it",
        vec![
            shard_map_1_2(),
            Action::PromoteShard {
                shard: 0,
                expected_epoch: 1,
            },
            Action::PromoteShard {
                shard: 0,
                expected_epoch: 2,
            },
            Action::MarkShardSynced { shard: 0, epoch: 2 },
        ],
        vec![
            Outcome::Applied,
            Outcome::Applied,
            Outcome::Applied,
            no_op("shard 0 is at epoch 3, the sync was at epoch 2"),
        ],
        |state| {
            assert_eq!(placement(state, 0), (Some(1), Some(2), 3, 3));
            assert_eq!(merge_pending(state, 0), Some((3, 2)));
        },
    );
    check(
        "an operator's assignment after a promotion keeps merge pending (the data is still unmerged)",
        vec![
            shard_map_1_2(),
            Action::PromoteShard {
                shard: 0,
                expected_epoch: 1,
            },
            Action::AssignShard {
                shard: 0,
                assignment: assign(Some(2), Some(3)),
            },
        ],
        vec![Outcome::Applied; 3],
        |state| {
            assert_eq!(placement(state, 0), (Some(2), Some(3), 2, 3));
            assert_eq!(merge_pending(state, 0), Some((2, 1)));
        },
    );
}

// Goal: state written before merge_pending existed still loads, and a never-promoted shard
// serializes to the same bytes as before (snapshots and logs stay compatible both ways).
// Method: hand-written old JSON of a Shard and a whole state; decode, re-encode, compare.
#[test]
fn shard_json_without_merge_pending_is_compatible() {
    use sextant_raft::state::{MergePending, Shard};
    let old = r#"{"primary":1,"secondary":2,"epoch":3,"version":7}"#;
    let shard: Shard = serde_json::from_str(old).unwrap();
    assert_eq!(
        shard,
        Shard {
            primary: Some(1),
            secondary: Some(2),
            epoch: 3,
            version: 7,
            merge_pending: None
        }
    );
    assert_eq!(serde_json::to_string(&shard).unwrap(), old, "no new bytes while not pending");
    let pending = Shard {
        merge_pending: Some(MergePending {
            epoch: 3,
            from_node: 1,
        }),
        ..shard
    };
    let encoded = serde_json::to_string(&pending).unwrap();
    assert_eq!(
        encoded,
        r#"{"primary":1,"secondary":2,"epoch":3,"version":7,"merge_pending":{"epoch":3,"from_node":1}}"#
    );
    assert_eq!(serde_json::from_str::<Shard>(&encoded).unwrap(), pending);
    let (state, _) = apply_all(vec![shard_map_1_2()]);
    let bytes = serde_json::to_string(&state).unwrap();
    assert!(!bytes.contains("merge_pending"), "a state with nothing pending writes no new field");
    let back: MetadataState = serde_json::from_str(&bytes).unwrap();
    assert_eq!(back, state);
}

// Goal: the audit trail keeps exactly the last AUDIT_ENTRIES_MAX changes.
#[test]
fn audit_is_bounded() {
    let count = AUDIT_ENTRIES_MAX + 5;
    let actions = (0..count)
        .map(|i| Action::SetRetention {
            tenant: "t".into(),
            retention_ms: i as i64 + 1,
        })
        .collect();
    let (state, _) = apply_all(actions);
    assert_eq!(state.audit.len(), AUDIT_ENTRIES_MAX);
    assert_eq!(state.audit.front().unwrap().index, 6);
    assert_eq!(state.audit.back().unwrap().index, count as u64);
}

// Goal: each dashboard keeps its last DASHBOARD_VERSIONS_MAX versions, oldest first.
#[test]
fn dashboard_history_is_bounded() {
    let count = DASHBOARD_VERSIONS_MAX + 5;
    let mut actions: Vec<Action> = (0..count)
        .map(|i| Action::PutDashboard {
            uid: "d".into(),
            title: format!("v{i}"),
            json: format!("{{\"v\":{i}}}"),
        })
        .collect();
    actions.push(Action::PutDashboard {
        uid: "other".into(),
        title: "o".into(),
        json: "{}".into(),
    });
    let (state, _) = apply_all(actions);
    let versions = &state.dashboards["d"].versions;
    assert_eq!(versions.len(), DASHBOARD_VERSIONS_MAX);
    assert_eq!(versions.front().unwrap().version, 6);
    assert_eq!(versions.front().unwrap().title, "v5");
    assert_eq!(
        state.dashboards["d"].latest().unwrap().json,
        format!("{{\"v\":{}}}", count - 1)
    );
    assert_eq!(state.dashboards["other"].versions.len(), 1);
}

/// `validate` answers: Ok, or an error whose message starts with the given text.
fn check_validate(name: &str, action: Action, expected: Result<(), &str>) {
    let got = validate(&command(action)).map_err(|e| e.to_string());
    match (got, expected) {
        (Ok(()), Ok(())) => {}
        (Err(got), Err(want)) => assert!(
            got.starts_with(want),
            "{name}: {got:?} should start with {want:?}"
        ),
        (got, want) => panic!("{name}: got {got:?}, want {want:?}"),
    }
}

#[test]
fn validate_table() {
    let alert = |expr: &str, for_duration: Option<&str>| RuleGroup {
        name: "alerts".into(),
        interval: None,
        limit: None,
        rules: vec![Rule {
            alert: Some("HighLatency".into()),
            expr: expr.into(),
            for_duration: for_duration.map(String::from),
            labels: BTreeMap::from([("severity".into(), "page".into())]),
            ..Rule::default()
        }],
    };
    let cases: Vec<(&str, Action, Result<(), &str>)> = vec![
        (
            "good recording rule",
            Action::PutRuleGroup {
                group: rule_group("g", "sum(rate(x[5m]))"),
            },
            Ok(()),
        ),
        (
            "good alert",
            Action::PutRuleGroup {
                group: alert("up == 0", Some("5m")),
            },
            Ok(()),
        ),
        (
            "for 0s is allowed",
            Action::PutRuleGroup {
                group: alert("up == 0", Some("0s")),
            },
            Ok(()),
        ),
        (
            "bad promql",
            Action::PutRuleGroup {
                group: rule_group("g", "sum("),
            },
            Err("invalid group.rules[0].expr:"),
        ),
        (
            "bad for",
            Action::PutRuleGroup {
                group: alert("up", Some("5 minutes")),
            },
            Err("invalid group.rules[0].for: duration"),
        ),
        (
            "negative for",
            Action::PutRuleGroup {
                group: alert("up", Some("-1m")),
            },
            Err("invalid group.rules[0].for: duration"),
        ),
        (
            "units out of order",
            Action::PutRuleGroup {
                group: alert("up", Some("1m1h")),
            },
            Err("invalid group.rules[0].for: duration"),
        ),
        (
            "empty group name",
            Action::PutRuleGroup {
                group: rule_group("", "up"),
            },
            Err("invalid group.name: must not be empty"),
        ),
        (
            "zero interval",
            Action::PutRuleGroup {
                group: RuleGroup {
                    interval: Some("0s".into()),
                    ..rule_group("g", "up")
                },
            },
            Err("invalid group.interval: \"0s\" must be positive"),
        ),
        (
            "record and alert",
            Action::PutRuleGroup {
                group: RuleGroup {
                    name: "g".into(),
                    interval: None,
                    limit: None,
                    rules: vec![Rule {
                        record: Some("a".into()),
                        alert: Some("b".into()),
                        expr: "up".into(),
                        ..Rule::default()
                    }],
                },
            },
            Err("invalid group.rules[0]: has both"),
        ),
        (
            "rule groups together",
            Action::PutRuleGroups {
                groups: vec![rule_group("a", "up"), rule_group("b", "up")],
            },
            Ok(()),
        ),
        (
            "rule groups: none",
            Action::PutRuleGroups { groups: vec![] },
            Err("invalid groups: no rule groups to put"),
        ),
        (
            "rule groups: one bad group refuses all, naming it",
            Action::PutRuleGroups {
                groups: vec![rule_group("a", "up"), rule_group("b", "sum(")],
            },
            Err("invalid groups[1] (\"b\"): group.rules[0].expr:"),
        ),
        (
            "rule groups: duplicate names",
            Action::PutRuleGroups {
                groups: vec![rule_group("a", "up"), rule_group("a", "up")],
            },
            Err("invalid groups[1] (\"a\").name: a group of this name appears earlier"),
        ),
        (
            "long name",
            Action::DeleteRuleGroup {
                name: "x".repeat(300),
            },
            Err("invalid name: 300 bytes"),
        ),
        (
            "dashboard json",
            Action::PutDashboard {
                uid: "d".into(),
                title: "t".into(),
                json: "{\"panels\":[]}".into(),
            },
            Ok(()),
        ),
        (
            "dashboard bad json",
            Action::PutDashboard {
                uid: "d".into(),
                title: "t".into(),
                json: "{".into(),
            },
            Err("invalid json:"),
        ),
        (
            "dashboard not an object",
            Action::PutDashboard {
                uid: "d".into(),
                title: "t".into(),
                json: "[1]".into(),
            },
            Err("invalid json: a Grafana dashboard is a JSON object"),
        ),
        (
            "zero shards",
            Action::CreateShardMap {
                shard_count: 0,
                assignments: BTreeMap::new(),
            },
            Err("invalid shard_count"),
        ),
        (
            "assignment out of range",
            Action::CreateShardMap {
                shard_count: 4,
                assignments: BTreeMap::from([(4, assign(Some(1), None))]),
            },
            Err("invalid assignments[4]: only 4 shards"),
        ),
        (
            "primary equals secondary",
            Action::AssignShard {
                shard: 0,
                assignment: assign(Some(1), Some(1)),
            },
            Err("invalid assignment: primary and secondary must be different nodes"),
        ),
        (
            "promote at a real epoch",
            Action::PromoteShard {
                shard: 3,
                expected_epoch: 1,
            },
            Ok(()),
        ),
        (
            "promote at epoch 0 (a shard without primary)",
            Action::PromoteShard {
                shard: 3,
                expected_epoch: 0,
            },
            Err("invalid expected_epoch: 0 is not an epoch"),
        ),
        (
            "promote a shard past the largest map",
            Action::PromoteShard {
                shard: 4_096,
                expected_epoch: 1,
            },
            Err("invalid shard: 4096 is not below 4096"),
        ),
        (
            "mark synced at a real epoch",
            Action::MarkShardSynced { shard: 0, epoch: 2 },
            Ok(()),
        ),
        (
            "mark synced at epoch 0",
            Action::MarkShardSynced { shard: 0, epoch: 0 },
            Err("invalid epoch: 0 is not an epoch"),
        ),
        (
            "abandon a merge at epoch 0",
            Action::AbandonMerge { shard: 0, epoch: 0 },
            Err("invalid epoch: 0 is not an epoch"),
        ),
        (
            "abandon a merge past the largest map",
            Action::AbandonMerge { shard: 4_096, epoch: 2 },
            Err("invalid shard: 4096 is not below 4096"),
        ),
        (
            "negative retention",
            Action::SetRetention {
                tenant: "t".into(),
                retention_ms: -1,
            },
            Err("invalid retention_ms"),
        ),
        (
            "control character",
            Action::DeleteTenant {
                tenant: "a\nb".into(),
            },
            Err("invalid tenant:"),
        ),
    ];
    for (name, action, expected) in cases {
        check_validate(name, action, expected);
    }
    // Escaping doubles this dashboard (each `\\` becomes four bytes in the command's JSON):
    // under the dashboard limit, over the command limit, refused before it reaches the log.
    // 523,900 pairs: just under 1 MiB of dashboard, just over COMMAND_BYTES_MAX encoded.
    let escaped = format!("{{\"a\":\"{}\"}}", "\\\\".repeat(523_900));
    assert!(escaped.len() < sextant_raft::command::DASHBOARD_JSON_BYTES_MAX);
    check_validate(
        "escaping pushes a dashboard over the command limit",
        Action::PutDashboard {
            uid: "d".into(),
            title: "t".into(),
            json: escaped,
        },
        Err("invalid command: "),
    );
    let mut nobody = command(Action::DeleteTenant { tenant: "t".into() });
    nobody.who = String::new();
    assert_eq!(
        validate(&nobody).unwrap_err().to_string(),
        "invalid who: must not be empty"
    );
}

fn membership_entry(index: u64) -> Entry {
    let nodes = BTreeMap::from([
        (
            1,
            Node {
                http_addr: "127.0.0.1:9090".into(),
                grpc_addr: "127.0.0.1:9481".into(),
            },
        ),
        (
            2,
            Node {
                http_addr: "127.0.0.1:9091".into(),
                grpc_addr: "127.0.0.1:9482".into(),
            },
        ),
    ]);
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
        payload: EntryPayload::Membership(Membership::new(
            vec![nodes.keys().copied().collect()],
            nodes,
        )),
    }
}

/// A log mixing membership, blank and command entries.
fn mixed_log() -> Vec<Entry> {
    let mut log = vec![
        membership_entry(1),
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), 2),
            payload: EntryPayload::Blank,
        },
    ];
    for (i, mut entry) in entries(vec![
        Action::CreateShardMap {
            shard_count: 16,
            assignments: BTreeMap::from([(3, assign(Some(1), Some(2)))]),
        },
        Action::PutRuleGroup {
            group: rule_group("g", "sum(up)"),
        },
        Action::PutDashboard {
            uid: "d".into(),
            title: "t".into(),
            json: "{}".into(),
        },
        Action::DeleteRuleGroup {
            name: "missing".into(),
        },
    ])
    .into_iter()
    .enumerate()
    {
        entry.log_id.index = i as u64 + 3;
        log.push(entry);
    }
    log
}

async fn open_sm(fs: &SimFs) -> StateMachineStore {
    StateMachineStore::open(Arc::new(fs.clone()) as Arc<dyn FileSystem>, "raft/sm")
        .await
        .unwrap()
}

// Goal: two nodes applying the same log build byte-identical snapshot files; a restart restores
// the snapshot; a follower installing it reaches the same state.
#[tokio::test]
async fn snapshots_are_deterministic_and_restore() {
    let (fs_a, fs_b) = (SimFs::new(1), SimFs::new(2));
    let (mut a, mut b) = (open_sm(&fs_a).await, open_sm(&fs_b).await);
    let responses = a.apply(mixed_log()).await.unwrap();
    b.apply(mixed_log()).await.unwrap();
    assert_eq!(responses.len(), 6);
    assert_eq!(
        responses[5].outcome,
        no_op("rule group \"missing\" does not exist")
    );
    let snapshot = a
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();
    b.get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();
    let path = Path::new("raft/sm/snapshot");
    let bytes_a = fs_a.read(path).await.unwrap();
    assert_eq!(
        bytes_a,
        fs_b.read(path).await.unwrap(),
        "same log, same snapshot bytes"
    );
    assert_eq!(snapshot.meta.last_log_id.map(|id| id.index), Some(6));
    assert_eq!(snapshot.meta.snapshot_id, "1-1-6");

    // Restart after a power cut: the snapshot file was made durable before build returned.
    let before = a.state();
    drop(a);
    fs_a.crash();
    let mut restored = open_sm(&fs_a).await;
    assert_eq!(restored.state(), before);
    let (applied, membership) = restored.applied_state().await.unwrap();
    assert_eq!(applied.map(|id| id.index), Some(6));
    assert_eq!(membership.membership().nodes().count(), 2);
    assert!(restored.get_current_snapshot().await.unwrap().is_some());

    // Install on a fresh follower.
    let fs_c = SimFs::new(3);
    let mut c = open_sm(&fs_c).await;
    c.install_snapshot(
        &snapshot.meta,
        Box::new(Cursor::new(snapshot.snapshot.into_inner())),
    )
    .await
    .unwrap();
    assert_eq!(c.state(), before);
    drop(c);
    fs_c.crash();
    assert_eq!(
        open_sm(&fs_c).await.state(),
        before,
        "an installed snapshot survives a power cut"
    );
}

// Goal: damaged snapshots are refused with a typed error, never half-loaded or panicking.
#[tokio::test]
async fn damaged_snapshots_are_refused() {
    let fs = SimFs::new(4);
    let mut sm = open_sm(&fs).await;
    sm.apply(mixed_log()).await.unwrap();
    let snapshot = sm
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();
    drop(sm);
    let path = Path::new("raft/sm/snapshot");
    let bytes = fs.read(path).await.unwrap();
    fs.corrupt(path, 30, &[bytes[30] ^ 1]).unwrap();
    let error = StateMachineStore::open(Arc::new(fs.clone()) as Arc<dyn FileSystem>, "raft/sm")
        .await
        .unwrap_err();
    assert!(error.to_string().contains("crc32 mismatch"), "{error}");

    let mut fresh = open_sm(&SimFs::new(5)).await;
    let garbage = Box::new(Cursor::new(b"{\"not\":\"a state\"}".to_vec()));
    let error = fresh
        .install_snapshot(&snapshot.meta, garbage)
        .await
        .unwrap_err();
    assert!(error.to_string().contains("received snapshot"), "{error}");
    assert_eq!(
        fresh.state(),
        MetadataState::default(),
        "a refused install changes nothing"
    );
}
