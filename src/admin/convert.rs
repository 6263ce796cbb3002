//! Conversions between the metadata state's types (sextant-raft) and the admin protobuf.

use std::collections::BTreeMap;

use sextant_raft::command::{Rule, RuleGroup, TenantLimits};
use sextant_raft::state::{DashboardVersion, Shard, VersionedRuleGroup};

use super::pb;

fn pairs(map: &BTreeMap<String, String>) -> Vec<pb::Pair> {
    // BTreeMap order: sorted by name, the same on every node.
    map.iter()
        .map(|(name, value)| pb::Pair { name: name.clone(), value: value.clone() })
        .collect()
}

pub fn rule(rule: &Rule) -> pb::Rule {
    pb::Rule {
        record: rule.record.clone().unwrap_or_default(),
        alert: rule.alert.clone().unwrap_or_default(),
        expr: rule.expr.clone(),
        for_duration: rule.for_duration.clone().unwrap_or_default(),
        keep_firing_for: rule.keep_firing_for.clone().unwrap_or_default(),
        labels: pairs(&rule.labels),
        annotations: pairs(&rule.annotations),
    }
}

pub fn rule_group(group: &VersionedRuleGroup) -> pb::RuleGroup {
    let RuleGroup { name, interval, limit, rules } = &group.group;
    pb::RuleGroup {
        name: name.clone(),
        interval: interval.clone().unwrap_or_default(),
        limit: *limit,
        rules: rules.iter().map(rule).collect(),
        version: group.version,
    }
}

pub fn shard(id: u32, shard: &Shard) -> pb::ShardInfo {
    pb::ShardInfo {
        shard: id,
        primary: shard.primary,
        secondary: shard.secondary,
        epoch: shard.epoch,
        version: shard.version,
        lease_holder: None,
        lease_age_ms: 0,
        lease_known: false,
        merge_pending_epoch: shard.merge_pending.as_ref().map(|m| m.epoch),
        merge_from_node: shard.merge_pending.as_ref().map(|m| m.from_node),
    }
}

/// One dashboard version; `with_json` false leaves the JSON out (lists and history).
pub fn dashboard_version(uid: &str, version: &DashboardVersion, with_json: bool) -> pb::DashboardVersion {
    pb::DashboardVersion {
        uid: uid.to_string(),
        version: version.version,
        title: version.title.clone(),
        json: if with_json { version.json.clone() } else { String::new() },
        json_bytes: version.json.len() as u64,
        who: version.who.clone(),
        at_ms: version.at_ms,
    }
}

pub fn limits_to_pb(limits: &TenantLimits) -> pb::TenantLimits {
    pb::TenantLimits {
        series_per_metric_max: limits.series_per_metric_max,
        series_per_tenant_max: limits.series_per_tenant_max,
        ingest_rate_samples_per_s_max: limits.ingest_rate_samples_per_s_max,
        query_samples_max: limits.query_samples_max,
        query_series_max: limits.query_series_max,
        query_range_ms_max: limits.query_range_ms_max,
        query_timeout_ms: limits.query_timeout_ms,
    }
}

/// `current` with every field the request sets replaced.
pub fn limits_overlay(current: &TenantLimits, request: &pb::SetTenantLimitsRequest) -> TenantLimits {
    TenantLimits {
        series_per_metric_max: request.series_per_metric_max.unwrap_or(current.series_per_metric_max),
        series_per_tenant_max: request.series_per_tenant_max.unwrap_or(current.series_per_tenant_max),
        ingest_rate_samples_per_s_max: request.ingest_rate_samples_per_s_max.unwrap_or(current.ingest_rate_samples_per_s_max),
        query_samples_max: request.query_samples_max.unwrap_or(current.query_samples_max),
        query_series_max: request.query_series_max.unwrap_or(current.query_series_max),
        query_range_ms_max: request.query_range_ms_max.unwrap_or(current.query_range_ms_max),
        query_timeout_ms: request.query_timeout_ms.unwrap_or(current.query_timeout_ms),
    }
}

/// The limits a tenant the cluster does not know yet gets: this node's `serve` flags
/// (0 means no limit, as in the flags).
pub fn node_default_limits(config: &crate::config::ServeConfig) -> TenantLimits {
    TenantLimits {
        series_per_metric_max: config.limits.series_per_metric_max,
        series_per_tenant_max: config.limits.series_per_tenant_max,
        ingest_rate_samples_per_s_max: config.limits.ingest_rate_samples_per_s_max,
        query_samples_max: config.query.samples_max as u64,
        query_series_max: config.query.series_max as u64,
        query_range_ms_max: 0,
        query_timeout_ms: config.query.timeout_ms,
    }
}

pub fn consistency_name(consistency: pb::Consistency) -> &'static str {
    match consistency {
        pb::Consistency::Linearizable => "linearizable",
        pb::Consistency::Local => "local",
    }
}
