//! The metadata state and the pure function that applies log entries to it.
//!
//! **Apply never fails and never reads a clock.** A command that does not fit the state it
//! meets (deleting a missing rule group, a second shard-map creation) changes nothing and
//! answers [`Outcome::NoOp`] with the reason; the same entry gives the same reason on every
//! node. Times come from the command (`at_ms`, stamped by the proposer), versions from the log
//! index. Every map is a `BTreeMap` and every list is in log order, so the state serializes to
//! the same bytes on every node.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use openraft::EntryPayload;
use serde::{Deserialize, Serialize};

use crate::command::{
    Action, ClusterDefaults, Command, Outcome, Response, RuleGroup, ShardAssignment, TenantLimits,
};
use crate::types::{Entry, LogId, Node, NodeId, StoredMembership};

/// The audit trail keeps the last this many entries.
pub const AUDIT_ENTRIES_MAX: usize = 10_000;
/// Each dashboard keeps its last this many versions.
pub const DASHBOARD_VERSIONS_MAX: usize = 50;

/// One shard's replicas and epoch.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shard {
    pub primary: Option<NodeId>,
    pub secondary: Option<NodeId>,
    /// Increases by one on every change of primary; replicas use it to fence stale primaries.
    pub epoch: u64,
    /// The log index that last changed this shard.
    pub version: u64,
    /// Set by [`Action::PromoteShard`]: the new primary may lack samples the previous one
    /// acknowledged, until the merge-back completes ([`Action::MarkShardSynced`]). Absent from
    /// older snapshots and log entries (serde default) and not written while `None`, so a
    /// shard that was never promoted serializes to the same bytes as before the field existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub merge_pending: Option<MergePending>,
}

/// A promotion whose merge-back has not completed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MergePending {
    /// The epoch the promotion created; only a sync reported at this epoch clears it.
    pub epoch: u64,
    /// The previous primary, which may hold acknowledged samples the new primary lacks.
    pub from_node: NodeId,
}

/// The shard map: the shard count is fixed when it is created.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardMap {
    pub shards: BTreeMap<u32, Shard>,
    /// The log index that last changed any shard.
    pub version: u64,
}

impl ShardMap {
    pub fn shard_count(&self) -> u32 {
        self.shards.len() as u32
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tenant {
    pub limits: TenantLimits,
    pub blocked_labels: BTreeSet<String>,
    pub version: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionedRuleGroup {
    pub group: RuleGroup,
    pub version: u64,
}

/// One saved version of a dashboard.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DashboardVersion {
    /// The log index that saved it.
    pub version: u64,
    pub title: String,
    /// Grafana dashboard JSON, exactly as proposed (validated by the proposer).
    pub json: String,
    pub who: String,
    pub at_ms: i64,
}

/// A dashboard's history, oldest first, at most [`DASHBOARD_VERSIONS_MAX`] versions.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dashboard {
    pub versions: VecDeque<DashboardVersion>,
}

impl Dashboard {
    pub fn latest(&self) -> Option<&DashboardVersion> {
        self.versions.back()
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Retention {
    pub retention_ms: i64,
    pub version: u64,
}

/// The cluster's default tenant limits and the log index that seeded them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionedDefaults {
    pub defaults: ClusterDefaults,
    pub version: u64,
}

/// A node's own addresses, as it registered them ([`Action::RegisterNode`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisteredNode {
    pub node: Node,
    pub version: u64,
}

/// One audited change.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// The log index of the change.
    pub index: u64,
    pub who: String,
    /// `None` for changes raft makes itself (membership), which carry no proposer time.
    pub at_ms: Option<i64>,
    pub what: String,
}

/// Everything the metadata group agrees on.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetadataState {
    pub last_applied: Option<LogId>,
    /// Voters, learners and their addresses ([`crate::Node`]), as of the last membership entry.
    pub membership: StoredMembership,
    pub shard_map: Option<ShardMap>,
    pub tenants: BTreeMap<String, Tenant>,
    pub rule_groups: BTreeMap<String, VersionedRuleGroup>,
    pub dashboards: BTreeMap<String, Dashboard>,
    pub retention: BTreeMap<String, Retention>,
    /// Oldest first, at most [`AUDIT_ENTRIES_MAX`].
    pub audit: VecDeque<AuditEntry>,
    /// Set once, by [`Action::SeedCluster`]; `None` until the cluster is seeded. Absent from
    /// older snapshots (serde default) and not written while `None`, so a state without it
    /// serializes to the same bytes as before the field existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub defaults: Option<VersionedDefaults>,
    /// Each node's self-registered addresses (HTTP included, which `--initial-cluster` does
    /// not carry). Same compatibility rule as `defaults`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub nodes: BTreeMap<NodeId, RegisteredNode>,
}

impl MetadataState {
    /// True once [`Action::SeedCluster`] has applied.
    pub fn is_seeded(&self) -> bool {
        self.defaults.is_some()
    }

    /// The current voters, in id order.
    pub fn voter_ids(&self) -> Vec<NodeId> {
        self.membership.membership().voter_ids().collect()
    }
}

fn no_op(reason: impl Into<String>) -> Outcome {
    Outcome::NoOp {
        reason: reason.into(),
    }
}

impl MetadataState {
    /// Applies one entry. Entries must come in log order; an entry at or below `last_applied`
    /// is a programmer error in the caller (openraft never re-applies).
    pub fn apply(&mut self, entry: &Entry) -> Response {
        let index = entry.log_id.index;
        if let Some(last) = &self.last_applied {
            assert!(
                index > last.index,
                "apply out of order: entry {index} after {}",
                last.index
            );
        }
        self.last_applied = Some(entry.log_id);
        let outcome = match &entry.payload {
            EntryPayload::Blank => Outcome::Applied,
            EntryPayload::Membership(membership) => {
                self.membership = StoredMembership::new(Some(entry.log_id), membership.clone());
                let what = format!("membership: {membership}");
                self.audit(AuditEntry {
                    index,
                    who: "raft".to_string(),
                    at_ms: None,
                    what,
                });
                Outcome::Applied
            }
            EntryPayload::Normal(command) => {
                let outcome = self.apply_command(index, command);
                if outcome == Outcome::Applied {
                    let what = describe(&command.action);
                    self.audit(AuditEntry {
                        index,
                        who: command.who.clone(),
                        at_ms: Some(command.at_ms),
                        what,
                    });
                }
                outcome
            }
        };
        Response { index, outcome }
    }

    fn audit(&mut self, entry: AuditEntry) {
        self.audit.push_back(entry);
        while self.audit.len() > AUDIT_ENTRIES_MAX {
            self.audit.pop_front();
        }
    }

    fn apply_command(&mut self, index: u64, command: &Command) -> Outcome {
        match &command.action {
            Action::CreateShardMap {
                shard_count,
                assignments,
            } => {
                if self.shard_map.is_some() {
                    return no_op(
                        "the shard map already exists; its shard count is fixed at creation",
                    );
                }
                match shard_map_of(index, *shard_count, assignments) {
                    Ok(map) => {
                        self.shard_map = Some(map);
                        Outcome::Applied
                    }
                    Err(reason) => no_op(reason),
                }
            }
            Action::SeedCluster {
                shard_count,
                assignments,
                defaults,
            } => {
                if self.defaults.is_some() {
                    return no_op("the cluster is already seeded");
                }
                // A shard map an operator created before the seed stays as it is.
                if self.shard_map.is_none() {
                    match shard_map_of(index, *shard_count, assignments) {
                        Ok(map) => self.shard_map = Some(map),
                        Err(reason) => return no_op(reason),
                    }
                }
                self.defaults = Some(VersionedDefaults {
                    defaults: defaults.clone(),
                    version: index,
                });
                Outcome::Applied
            }
            Action::RegisterNode { id, node } => {
                if self.membership.membership().get_node(id).is_none() {
                    return no_op(format!("node {id} is not a member"));
                }
                if self.nodes.get(id).is_some_and(|known| &known.node == node) {
                    return no_op(format!("node {id} already registered these addresses"));
                }
                self.nodes.insert(
                    *id,
                    RegisteredNode {
                        node: node.clone(),
                        version: index,
                    },
                );
                Outcome::Applied
            }
            Action::AssignShard { shard, assignment } => {
                let Some(map) = self.shard_map.as_mut() else {
                    return no_op("no shard map yet");
                };
                let count = map.shard_count();
                let Some(current) = map.shards.get_mut(shard) else {
                    return no_op(format!(
                        "shard {shard} does not exist (the map has {count} shards)"
                    ));
                };
                let ShardAssignment { primary, secondary } = assignment.clone();
                if current.primary == primary && current.secondary == secondary {
                    return no_op(format!("shard {shard} already has this assignment"));
                }
                if current.primary != primary {
                    current.epoch += 1;
                }
                current.primary = primary;
                current.secondary = secondary;
                current.version = index;
                map.version = index;
                Outcome::Applied
            }
            Action::PromoteShard {
                shard,
                expected_epoch,
            } => {
                let Some(map) = self.shard_map.as_mut() else {
                    return no_op("no shard map yet");
                };
                let count = map.shard_count();
                let Some(current) = map.shards.get_mut(shard) else {
                    return no_op(format!(
                        "shard {shard} does not exist (the map has {count} shards)"
                    ));
                };
                // Compare-and-set: a promotion decided on an older view of the shard (another
                // promotion or an assignment came first) must not apply.
                if current.epoch != *expected_epoch {
                    return no_op(format!(
                        "shard {shard} is at epoch {}, not {expected_epoch}; the promotion is stale",
                        current.epoch
                    ));
                }
                let (Some(old_primary), Some(new_primary)) = (current.primary, current.secondary)
                else {
                    return no_op(format!(
                        "shard {shard} has no {} to promote",
                        if current.primary.is_none() { "primary" } else { "secondary" }
                    ));
                };
                current.primary = Some(new_primary);
                current.secondary = Some(old_primary);
                current.epoch += 1;
                current.version = index;
                current.merge_pending = Some(MergePending {
                    epoch: current.epoch,
                    from_node: old_primary,
                });
                map.version = index;
                Outcome::Applied
            }
            Action::MarkShardSynced { shard, epoch } | Action::AbandonMerge { shard, epoch } => {
                let Some(map) = self.shard_map.as_mut() else {
                    return no_op("no shard map yet");
                };
                let count = map.shard_count();
                let Some(current) = map.shards.get_mut(shard) else {
                    return no_op(format!(
                        "shard {shard} does not exist (the map has {count} shards)"
                    ));
                };
                if current.merge_pending.is_none() {
                    return no_op(format!("shard {shard} has no merge pending"));
                }
                // A sync completed at another epoch says nothing about the current pair.
                if current.epoch != *epoch {
                    return no_op(format!(
                        "shard {shard} is at epoch {}, the sync was at epoch {epoch}",
                        current.epoch
                    ));
                }
                current.merge_pending = None;
                current.version = index;
                map.version = index;
                Outcome::Applied
            }
            Action::PutTenantLimits { tenant, limits } => {
                let entry = self.tenants.entry(tenant.clone()).or_default();
                entry.limits = limits.clone();
                entry.version = index;
                Outcome::Applied
            }
            Action::DeleteTenant { tenant } => match self.tenants.remove(tenant) {
                Some(_) => Outcome::Applied,
                None => no_op(format!("tenant {tenant:?} does not exist")),
            },
            Action::BlockLabel { tenant, label } => {
                let Some(entry) = self.tenants.get_mut(tenant) else {
                    return no_op(format!("tenant {tenant:?} does not exist"));
                };
                if entry.blocked_labels.len() >= crate::command::BLOCKED_LABELS_MAX {
                    return no_op(format!(
                        "tenant {tenant:?} already blocks {} labels, the most allowed",
                        crate::command::BLOCKED_LABELS_MAX
                    ));
                }
                if !entry.blocked_labels.insert(label.clone()) {
                    return no_op(format!(
                        "label {label:?} is already blocked for tenant {tenant:?}"
                    ));
                }
                entry.version = index;
                Outcome::Applied
            }
            Action::UnblockLabel { tenant, label } => {
                let Some(entry) = self.tenants.get_mut(tenant) else {
                    return no_op(format!("tenant {tenant:?} does not exist"));
                };
                if !entry.blocked_labels.remove(label) {
                    return no_op(format!(
                        "label {label:?} is not blocked for tenant {tenant:?}"
                    ));
                }
                entry.version = index;
                Outcome::Applied
            }
            Action::PutRuleGroup { group } => {
                self.rule_groups.insert(
                    group.name.clone(),
                    VersionedRuleGroup {
                        group: group.clone(),
                        version: index,
                    },
                );
                Outcome::Applied
            }
            Action::PutRuleGroups { groups } => {
                // validate() refused empty lists and duplicate names; whatever arrives is put
                // as a whole, in order, so a later duplicate would simply win.
                for group in groups {
                    self.rule_groups.insert(
                        group.name.clone(),
                        VersionedRuleGroup {
                            group: group.clone(),
                            version: index,
                        },
                    );
                }
                Outcome::Applied
            }
            Action::DeleteRuleGroup { name } => match self.rule_groups.remove(name) {
                Some(_) => Outcome::Applied,
                None => no_op(format!("rule group {name:?} does not exist")),
            },
            Action::PutDashboard { uid, title, json } => {
                let dashboard = self.dashboards.entry(uid.clone()).or_default();
                dashboard.versions.push_back(DashboardVersion {
                    version: index,
                    title: title.clone(),
                    json: json.clone(),
                    who: command.who.clone(),
                    at_ms: command.at_ms,
                });
                while dashboard.versions.len() > DASHBOARD_VERSIONS_MAX {
                    dashboard.versions.pop_front();
                }
                Outcome::Applied
            }
            Action::DeleteDashboard { uid } => match self.dashboards.remove(uid) {
                Some(_) => Outcome::Applied,
                None => no_op(format!("dashboard {uid:?} does not exist")),
            },
            Action::SetRetention {
                tenant,
                retention_ms,
            } => {
                self.retention.insert(
                    tenant.clone(),
                    Retention {
                        retention_ms: *retention_ms,
                        version: index,
                    },
                );
                Outcome::Applied
            }
            Action::DeleteRetention { tenant } => match self.retention.remove(tenant) {
                Some(_) => Outcome::Applied,
                None => no_op(format!("tenant {tenant:?} has no retention policy")),
            },
        }
    }
}

/// A new shard map, or why the request does not fit (validate() bounds these; apply re-checks
/// whatever it relies on, without failing).
fn shard_map_of(
    index: u64,
    shard_count: u32,
    assignments: &BTreeMap<u32, ShardAssignment>,
) -> Result<ShardMap, String> {
    if shard_count == 0 {
        return Err("shard count 0".to_string());
    }
    if let Some(shard) = assignments.keys().find(|shard| **shard >= shard_count) {
        return Err(format!("assignment for shard {shard} of {shard_count}"));
    }
    let shards = (0..shard_count)
        .map(|id| {
            let assignment = assignments.get(&id).cloned().unwrap_or_default();
            let epoch = u64::from(assignment.primary.is_some());
            let shard = Shard {
                primary: assignment.primary,
                secondary: assignment.secondary,
                epoch,
                version: index,
                merge_pending: None,
            };
            (id, shard)
        })
        .collect();
    Ok(ShardMap {
        shards,
        version: index,
    })
}

/// A one-line description of an action for the audit trail (no bulky payloads).
fn describe(action: &Action) -> String {
    match action {
        Action::CreateShardMap { shard_count, .. } => {
            format!("create shard map with {shard_count} shards")
        }
        Action::AssignShard { shard, assignment } => {
            format!(
                "assign shard {shard}: primary {:?}, secondary {:?}",
                assignment.primary, assignment.secondary
            )
        }
        Action::PromoteShard {
            shard,
            expected_epoch,
        } => format!("promote the secondary of shard {shard} (epoch {expected_epoch} → {})", expected_epoch + 1),
        Action::MarkShardSynced { shard, epoch } => {
            format!("shard {shard}: merge-back completed at epoch {epoch}")
        }
        Action::AbandonMerge { shard, epoch } => {
            format!("shard {shard}: merge-back abandoned at epoch {epoch} (samples only the previous primary held are lost)")
        }
        Action::PutTenantLimits { tenant, .. } => format!("set limits of tenant {tenant:?}"),
        Action::DeleteTenant { tenant } => format!("delete tenant {tenant:?}"),
        Action::BlockLabel { tenant, label } => {
            format!("block label {label:?} for tenant {tenant:?}")
        }
        Action::UnblockLabel { tenant, label } => {
            format!("unblock label {label:?} for tenant {tenant:?}")
        }
        Action::PutRuleGroup { group } => format!(
            "put rule group {:?} ({} rules)",
            group.name,
            group.rules.len()
        ),
        Action::DeleteRuleGroup { name } => format!("delete rule group {name:?}"),
        Action::PutRuleGroups { groups } => {
            let names: Vec<&str> = groups.iter().map(|g| g.name.as_str()).collect();
            format!("put {} rule groups {names:?}", groups.len())
        }
        Action::PutDashboard { uid, title, json } => {
            format!("put dashboard {uid:?} {title:?} ({} bytes)", json.len())
        }
        Action::DeleteDashboard { uid } => format!("delete dashboard {uid:?}"),
        Action::SetRetention {
            tenant,
            retention_ms,
        } => format!("set retention of tenant {tenant:?} to {retention_ms} ms"),
        Action::DeleteRetention { tenant } => format!("delete retention of tenant {tenant:?}"),
        Action::SeedCluster {
            shard_count,
            defaults,
            ..
        } => format!(
            "seed the cluster: {shard_count} shards, default limits {:?}, {} blocked labels",
            defaults.limits,
            defaults.blocked_labels.len()
        ),
        Action::RegisterNode { id, node } => format!("register node {id}: {node}"),
    }
}
