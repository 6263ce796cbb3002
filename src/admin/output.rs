//! What `sextant admin` prints: human tables, or JSON with stable field names (`--output json`).

use std::collections::BTreeMap;

use serde_json::{json, Value};

use super::convert::consistency_name;
use super::pb;

/// A plain-text table: a header row, columns padded to their widest cell, two spaces apart,
/// no trailing spaces.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| -> String {
        let mut out = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 < cells.len() {
                out.push_str(&format!("{cell:<width$}  ", width = widths[i]));
            } else {
                out.push_str(cell);
            }
        }
        out.trim_end().to_string()
    };
    let mut out = line(header.iter().map(|h| h.to_string()).collect());
    out.push('\n');
    for row in rows {
        out.push_str(&line(row.clone()));
        out.push('\n');
    }
    out
}

fn consistency_of(value: i32) -> &'static str {
    pb::Consistency::try_from(value).map(consistency_name).unwrap_or("unknown")
}

pub fn read_json(read: &Option<pb::ReadInfo>) -> Value {
    match read {
        Some(r) => json!({"node_id": r.node_id, "applied_index": r.applied_index, "consistency": consistency_of(r.consistency)}),
        None => Value::Null,
    }
}

/// The last line of every read: which node answered, at which applied index.
pub fn read_line(read: &Option<pb::ReadInfo>) -> String {
    match read {
        Some(r) => format!("answered by node {} at applied index {} ({})\n", r.node_id, r.applied_index, consistency_of(r.consistency)),
        None => String::new(),
    }
}

pub fn write_json(write: &Option<pb::WriteReply>) -> Value {
    match write {
        Some(w) => json!({"node_id": w.node_id, "index": w.index, "applied": w.applied, "reason": w.reason, "who": w.who, "at_ms": w.at_ms}),
        None => Value::Null,
    }
}

pub fn opt(value: Option<u64>) -> String {
    value.map(|v| v.to_string()).unwrap_or_else(|| "-".to_string())
}

pub fn cluster_status_table(reply: &pb::ClusterStatusReply) -> String {
    let mut out = format!("leader: {}  term: {}  commit index: {}  last log index: {}\n", opt(reply.leader_id), reply.term, reply.commit_index, reply.last_log_index);
    let rows: Vec<Vec<String>> = reply
        .members
        .iter()
        .map(|m| {
            vec![
                m.node_id.to_string(),
                m.role.clone(),
                if m.state.is_empty() { "-".to_string() } else { m.state.clone() },
                m.grpc_addr.clone(),
                m.http_addr.clone(),
                if m.reachable { m.applied_index.to_string() } else { "-".to_string() },
                opt(m.matched_index),
                opt(m.lag_entries),
                data_lag_cell(m),
                m.health.clone(),
            ]
        })
        .collect();
    out.push_str(&table(&["ID", "ROLE", "STATE", "GRPC", "HTTP", "APPLIED", "MATCHED", "LAG", "DATA LAG", "HEALTH"], &rows));
    out.push_str(&read_line(&reply.read));
    out
}

/// The DATA LAG cell: `N shards: Xms/Ysamples` over the shards the member is primary of
/// (largest lag, summed samples), with unprotected and unreplicated counts; `-` without shards,
/// `?` when its ReplicationStatus did not answer.
fn data_lag_cell(m: &pb::MemberStatus) -> String {
    let Some(r) = &m.replication else { return "?".to_string() };
    if r.primary_shards == 0 {
        return "-".to_string();
    }
    let mut cell = format!("{} shards: {}ms/{}samples", r.primary_shards, r.lag_ms_max, r.lag_samples);
    if r.unprotected > 0 {
        cell.push_str(&format!(", {} unprotected", r.unprotected));
    }
    if r.unreplicated > 0 {
        cell.push_str(&format!(", {} unreplicated", r.unreplicated));
    }
    cell
}

pub fn cluster_status_json(reply: &pb::ClusterStatusReply) -> Value {
    let members: Vec<Value> = reply
        .members
        .iter()
        .map(|m| {
            json!({
                "node_id": m.node_id, "role": m.role, "state": m.state, "grpc_addr": m.grpc_addr, "http_addr": m.http_addr,
                "leader": m.leader, "reachable": m.reachable, "applied_index": m.applied_index, "ready": m.ready,
                "health": m.health, "matched_index": m.matched_index, "lag_entries": m.lag_entries,
                "replication": m.replication.as_ref().map(|r| json!({
                    "primary_shards": r.primary_shards, "lag_ms_max": r.lag_ms_max, "lag_samples": r.lag_samples,
                    "lag_records": r.lag_records, "unprotected": r.unprotected, "unreplicated": r.unreplicated,
                })),
                "replication_error": m.replication_error,
            })
        })
        .collect();
    json!({"read": read_json(&reply.read), "leader_id": reply.leader_id, "term": reply.term, "commit_index": reply.commit_index, "last_log_index": reply.last_log_index, "members": members})
}

pub fn membership_text(verb: &str, id: u64, reply: &pb::MembershipReply) -> String {
    format!("{verb} node {id} at log index {}; voters {:?}, learners {:?}\n", reply.index, reply.voters, reply.learners)
}

pub fn membership_json(reply: &pb::MembershipReply) -> Value {
    json!({"node_id": reply.node_id, "index": reply.index, "voters": reply.voters, "learners": reply.learners})
}

pub fn shard_map_table(reply: &pb::ShardMapReply) -> String {
    if !reply.exists {
        return format!("no shard map yet\n{}", read_line(&reply.read));
    }
    let replication: BTreeMap<u32, &pb::ShardReplicationInfo> = reply.replication.iter().map(|r| (r.shard, r)).collect();
    let rows: Vec<Vec<String>> = reply
        .shards
        .iter()
        .map(|s| {
            let mut row = vec![s.shard.to_string(), opt(s.primary), opt(s.secondary), s.epoch.to_string(), s.version.to_string()];
            row.extend(replication_cells(replication.get(&s.shard).copied()));
            row.push(lease_cell(s));
            row.push(merge_cell(s));
            row
        })
        .collect();
    let mut out = format!("{} shards, version {}\n", reply.shards.len(), reply.version);
    out.push_str(&table(&["SHARD", "PRIMARY", "SECONDARY", "EPOCH", "VERSION", "REPLICATION", "LAG", "SYNCED", "LEASE", "MERGE"], &rows));
    if reply.shards.iter().any(|s| !s.lease_known) {
        out.push_str("LEASE is known to the metadata leader only; ask it (or read linearizably) to see lease holders\n");
    }
    out.push_str(&read_line(&reply.read));
    out
}

/// The LEASE cell: the grant table's holder and how long ago it renewed, `none` when no live
/// grant, `?` when the answering node is not the leader.
fn lease_cell(shard: &pb::ShardInfo) -> String {
    match (shard.lease_known, shard.lease_holder) {
        (false, _) => "?".to_string(),
        (true, None) => "none".to_string(),
        (true, Some(node)) => format!("{node} ({} ms ago)", shard.lease_age_ms),
    }
}

/// The MERGE cell: `pending from N (epoch E)` until the merge-back completes.
fn merge_cell(shard: &pb::ShardInfo) -> String {
    match (shard.merge_pending_epoch, shard.merge_from_node) {
        (Some(epoch), Some(node)) => format!("pending from {node} (epoch {epoch})"),
        _ => "-".to_string(),
    }
}

pub fn shard_map_json(reply: &pb::ShardMapReply) -> Value {
    let replication: BTreeMap<u32, &pb::ShardReplicationInfo> = reply.replication.iter().map(|r| (r.shard, r)).collect();
    let shards: Vec<Value> = reply
        .shards
        .iter()
        .map(|s| {
            let r = replication.get(&s.shard).map(|r| {
                json!({"state": r.state, "lag_ms": r.lag_ms, "lag_records": r.lag_records, "lag_samples": r.lag_samples, "lag_bytes": r.lag_bytes, "synced_epoch": r.synced_epoch, "unprotected": r.unprotected, "error": r.error})
            });
            let lease = if s.lease_known { json!({"holder": s.lease_holder, "age_ms": s.lease_holder.map(|_| s.lease_age_ms)}) } else { Value::Null };
            let merge_pending = match (s.merge_pending_epoch, s.merge_from_node) {
                (Some(epoch), Some(from_node)) => json!({"epoch": epoch, "from_node": from_node}),
                _ => Value::Null,
            };
            json!({"shard": s.shard, "primary": s.primary, "secondary": s.secondary, "epoch": s.epoch, "version": s.version, "replication": r, "lease": lease, "merge_pending": merge_pending})
        })
        .collect();
    json!({"read": read_json(&reply.read), "exists": reply.exists, "version": reply.version, "shards": shards})
}

/// The REPLICATION, LAG and SYNCED cells of a shard's row.
fn replication_cells(r: Option<&pb::ShardReplicationInfo>) -> [String; 3] {
    let Some(r) = r else { return ["-".into(), "-".into(), "-".into()] };
    let mut state = r.state.clone();
    if r.unprotected {
        state.push_str(",unprotected");
    }
    let lag = if r.state == "unreplicated" || r.state == "unknown" { "-".to_string() } else { format!("{}ms/{}samples/{}rec", r.lag_ms, r.lag_samples, r.lag_records) };
    [state, lag, opt(r.synced_epoch)]
}

/// `sextant admin shards --verify`: one row per shard, one line per replica.
pub fn verify_table(reply: &pb::VerifyShardsReply) -> String {
    let range = |t: i64| if t == i64::MIN || t == i64::MAX { "*".to_string() } else { t.to_string() };
    let mut rows = Vec::new();
    for s in &reply.shards {
        for (i, r) in s.replicas.iter().enumerate() {
            let verdict = if i > 0 { String::new() } else if s.equal { "equal".into() } else { "MISMATCH".into() };
            let (series, samples, hash) = if r.error.is_empty() { (r.series.to_string(), r.samples.to_string(), format!("{:016x}", r.hash)) } else { ("-".into(), "-".into(), format!("error: {}", r.error)) };
            rows.push(vec![if i == 0 { s.shard.to_string() } else { String::new() }, verdict, r.node.to_string(), series, samples, hash]);
        }
    }
    let mut out = format!("{} shards verified over [{}, {}] ms: {} mismatched\n", reply.shards.len(), range(reply.min_t), range(reply.max_t), reply.mismatched);
    out.push_str(&table(&["SHARD", "VERDICT", "NODE", "SERIES", "SAMPLES", "HASH"], &rows));
    out
}

pub fn verify_json(reply: &pb::VerifyShardsReply) -> Value {
    let shards: Vec<Value> = reply
        .shards
        .iter()
        .map(|s| {
            let replicas: Vec<Value> = s
                .replicas
                .iter()
                .map(|r| if r.error.is_empty() { json!({"node": r.node, "series": r.series, "samples": r.samples, "hash": format!("{:016x}", r.hash)}) } else { json!({"node": r.node, "error": r.error}) })
                .collect();
            json!({"shard": s.shard, "equal": s.equal, "replicas": replicas})
        })
        .collect();
    json!({"min_t": reply.min_t, "max_t": reply.max_t, "mismatched": reply.mismatched, "shards": shards})
}

/// A write's one-line summary.
pub fn write_text(what: &str, write: &Option<pb::WriteReply>) -> String {
    match write {
        Some(w) if w.applied => format!("{what} at log index {}\n", w.index),
        Some(w) => format!("{what}: nothing changed at log index {}: {}\n", w.index, w.reason),
        None => format!("{what}\n"),
    }
}

fn pairs_json(pairs: &[pb::Pair]) -> Value {
    Value::Object(pairs.iter().map(|p| (p.name.clone(), Value::String(p.value.clone()))).collect())
}

pub fn rule_group_json(group: &pb::RuleGroup) -> Value {
    let rules: Vec<Value> = group
        .rules
        .iter()
        .map(|r| json!({"record": r.record, "alert": r.alert, "expr": r.expr, "for": r.for_duration, "keep_firing_for": r.keep_firing_for, "labels": pairs_json(&r.labels), "annotations": pairs_json(&r.annotations)}))
        .collect();
    json!({"name": group.name, "interval": group.interval, "limit": group.limit, "version": group.version, "rules": rules})
}

pub fn rule_groups_table(reply: &pb::RuleGroupsReply) -> String {
    let rows: Vec<Vec<String>> = reply
        .groups
        .iter()
        .map(|g| {
            let alerts = g.rules.iter().filter(|r| !r.alert.is_empty()).count();
            vec![g.name.clone(), if g.interval.is_empty() { "default".to_string() } else { g.interval.clone() }, (g.rules.len() - alerts).to_string(), alerts.to_string(), g.version.to_string()]
        })
        .collect();
    let mut out = table(&["GROUP", "INTERVAL", "RECORDING", "ALERTING", "VERSION"], &rows);
    out.push_str(&read_line(&reply.read));
    out
}

/// One group as a Prometheus rule file would hold it (YAML), so it can be edited and applied.
pub fn rule_group_text(reply: &pb::RuleGroupsReply) -> String {
    let mut out = String::new();
    for group in &reply.groups {
        out.push_str(&format!("# version {}\ngroups:\n- name: {}\n", group.version, yaml_string(&group.name)));
        if !group.interval.is_empty() {
            out.push_str(&format!("  interval: {}\n", group.interval));
        }
        if let Some(limit) = group.limit {
            out.push_str(&format!("  limit: {limit}\n"));
        }
        out.push_str("  rules:\n");
        for rule in &group.rules {
            if !rule.record.is_empty() {
                out.push_str(&format!("  - record: {}\n", yaml_string(&rule.record)));
            } else {
                out.push_str(&format!("  - alert: {}\n", yaml_string(&rule.alert)));
            }
            out.push_str(&format!("    expr: {}\n", yaml_string(&rule.expr)));
            if !rule.for_duration.is_empty() {
                out.push_str(&format!("    for: {}\n", rule.for_duration));
            }
            if !rule.keep_firing_for.is_empty() {
                out.push_str(&format!("    keep_firing_for: {}\n", rule.keep_firing_for));
            }
            for (key, pairs) in [("labels", &rule.labels), ("annotations", &rule.annotations)] {
                if !pairs.is_empty() {
                    out.push_str(&format!("    {key}:\n"));
                    for pair in pairs {
                        out.push_str(&format!("      {}: {}\n", yaml_string(&pair.name), yaml_string(&pair.value)));
                    }
                }
            }
        }
    }
    out.push_str(&read_line(&reply.read));
    out
}

/// A YAML scalar: JSON's double-quoted string is valid YAML and escapes everything.
fn yaml_string(text: &str) -> String {
    Value::String(text.to_string()).to_string()
}

pub fn dashboard_version_json(d: &pb::DashboardVersion, with_json: bool) -> Value {
    let mut value = json!({"uid": d.uid, "version": d.version, "title": d.title, "json_bytes": d.json_bytes, "who": d.who, "at_ms": d.at_ms});
    if with_json {
        // The dashboard itself, parsed (it was validated as a JSON object when saved).
        value["dashboard"] = serde_json::from_str(&d.json).unwrap_or(Value::String(d.json.clone()));
    }
    value
}

pub fn dashboards_table(rows_in: &[pb::DashboardVersion], read: &Option<pb::ReadInfo>, uid_column: bool) -> String {
    let rows: Vec<Vec<String>> = rows_in
        .iter()
        .map(|d| {
            let mut row = Vec::new();
            if uid_column {
                row.push(d.uid.clone());
            }
            row.extend([d.version.to_string(), d.title.clone(), d.json_bytes.to_string(), d.who.clone(), d.at_ms.to_string()]);
            row
        })
        .collect();
    let mut header = Vec::new();
    if uid_column {
        header.push("UID");
    }
    header.extend(["VERSION", "TITLE", "BYTES", "WHO", "AT_MS"]);
    let mut out = table(&header, &rows);
    out.push_str(&read_line(read));
    out
}

pub fn limits_rows(limits: &pb::TenantLimits) -> Vec<(&'static str, String)> {
    vec![
        ("series_per_metric_max", limits.series_per_metric_max.to_string()),
        ("series_per_tenant_max", limits.series_per_tenant_max.to_string()),
        ("ingest_rate_samples_per_s_max", limits.ingest_rate_samples_per_s_max.to_string()),
        ("query_samples_max", limits.query_samples_max.to_string()),
        ("query_series_max", limits.query_series_max.to_string()),
        ("query_range_ms_max", limits.query_range_ms_max.to_string()),
        ("query_timeout_ms", limits.query_timeout_ms.to_string()),
    ]
}

pub fn limits_json(limits: &Option<pb::TenantLimits>) -> Value {
    match limits {
        Some(limits) => Value::Object(limits_rows(limits).into_iter().map(|(k, v)| (k.to_string(), Value::Number(v.parse::<i64>().map(Into::into).unwrap_or_else(|_| 0.into())))).collect()),
        None => Value::Null,
    }
}

pub fn tenant_limits_table(reply: &pb::TenantLimitsReply) -> String {
    let source = if reply.set_in_cluster { format!("set in the cluster, version {}", reply.version) } else { "not set in the cluster: the answering node's defaults".to_string() };
    let mut out = format!("tenant {:?}: {source}\n", reply.tenant);
    let mut rows: Vec<Vec<String>> = reply.limits.as_ref().map(limits_rows).unwrap_or_default().into_iter().map(|(k, v)| vec![k.to_string(), v]).collect();
    rows.push(vec!["blocked_labels".to_string(), if reply.blocked_labels.is_empty() { "-".to_string() } else { reply.blocked_labels.join(",") }]);
    out.push_str(&table(&["LIMIT", "VALUE"], &rows));
    out.push_str(&read_line(&reply.read));
    out
}

pub fn tenant_limits_json(reply: &pb::TenantLimitsReply) -> Value {
    json!({"read": read_json(&reply.read), "tenant": reply.tenant, "set_in_cluster": reply.set_in_cluster, "version": reply.version, "limits": limits_json(&reply.limits), "blocked_labels": reply.blocked_labels})
}

pub fn cardinality_table(reply: &pb::CardinalityReply) -> String {
    let rows: Vec<Vec<String>> = reply
        .rows
        .iter()
        .map(|r| {
            let per_node: Vec<String> = r.per_node.iter().map(|n| format!("{}:{}", n.node_id, n.active_series)).collect();
            vec![r.tenant.clone(), r.metric.clone(), r.active_series.to_string(), per_node.join(",")]
        })
        .collect();
    let mut out = table(&["TENANT", "METRIC", "ACTIVE_SERIES", "PER_NODE"], &rows);
    for node in &reply.nodes {
        if !node.reachable {
            out.push_str(&format!("node {} did not answer: {}\n", node.node_id, node.error));
        } else if node.truncated {
            out.push_str(&format!("node {} answered only its largest metrics\n", node.node_id));
        }
    }
    let answered = reply.nodes.iter().filter(|n| n.reachable).count();
    out.push_str(&format!("answered by {answered} of {} nodes (merged by node {})\n", reply.nodes.len(), reply.node_id));
    out
}

pub fn cardinality_json(reply: &pb::CardinalityReply) -> Value {
    let rows: Vec<Value> = reply
        .rows
        .iter()
        .map(|r| {
            let per_node: Vec<Value> = r.per_node.iter().map(|n| json!({"node_id": n.node_id, "active_series": n.active_series})).collect();
            json!({"tenant": r.tenant, "metric": r.metric, "active_series": r.active_series, "per_node": per_node})
        })
        .collect();
    let nodes: Vec<Value> = reply.nodes.iter().map(|n| json!({"node_id": n.node_id, "reachable": n.reachable, "error": n.error, "truncated": n.truncated})).collect();
    json!({"node_id": reply.node_id, "rows": rows, "nodes": nodes})
}
