//! The operator of the `replicated` scenario: replaces a member whose disk was lost for good,
//! through `sextant admin` (the admin gRPC API, JSON output) from its own machine, as a person
//! following docs/design/replication.md § Not yet ("Flow for a node lost for good") would:
//!
//! 1. `rebalance --drain LOST --apply` — no shard keeps the lost member as a replica;
//! 2. `shards abandon-merge S` for each shard whose merge-back only the lost member could
//!    complete;
//! 3. `node remove LOST`;
//! 4. `node add NEW` — the machine came back empty and waits under its new id (`--join`);
//! 5. `rebalance --apply` until the plan says nothing to move.
//!
//! Every step is decided from what `cluster status` and `shards` answer, so a step that failed
//! (a partition, a crash, a timed-out call that did apply) is simply looked at again; calls
//! rotate over the nodes' gRPC addresses.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use clap::Parser;
use serde_json::Value;

use crate::cluster::{node_ip, Cluster, GRPC_PORT, HTTP_PORT};

/// How long one admin call may take.
const CALL_TIMEOUT: &str = "5s";
/// How long `rebalance --apply` waits for one step (a sync, a promotion's lease fence).
const STEP_TIMEOUT: &str = "20s";
/// Pause after a failed call before looking again.
const RETRY_MS: u64 = 1_000;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    admin: sextant::admin::cli::AdminArgs,
}

/// One `sextant admin … --output json` call to `addr`.
pub async fn admin(addr: SocketAddr, command: &[String]) -> Result<Value, String> {
    let mut argv: Vec<String> = ["admin", "--addr", &addr.to_string(), "--output", "json", "--timeout", CALL_TIMEOUT].iter().map(|s| s.to_string()).collect();
    argv.extend(command.iter().cloned());
    let args = Cli::try_parse_from(&argv).map_err(|e| format!("{argv:?}: {e}"))?.admin;
    let text = sextant::admin::cli::run(&args).await.map_err(|e| e.to_string())?;
    serde_json::from_str(&text).map_err(|e| format!("{command:?} answered no JSON ({e}): {text}"))
}

/// The member the machine lost, and the one it came back as.
#[derive(Clone, Copy, Debug)]
pub struct Replacement {
    pub index: usize,
    pub lost_id: u64,
    pub new_id: u64,
}

/// What the operator does next, from the cluster's answers.
fn next_step(replacement: &Replacement, status: &Value, shards: &Value, plan: Option<&Value>) -> Option<Vec<String>> {
    let Replacement { index, lost_id, new_id } = *replacement;
    let members = status["members"].as_array().cloned().unwrap_or_default();
    let role = |id: u64| members.iter().find(|m| m["node_id"] == id).and_then(|m| m["role"].as_str().map(str::to_string));
    let entries = shards["shards"].as_array().cloned().unwrap_or_default();
    // The lost member goes first: while it counts as a voter, adding the new one makes four
    // voters of which one is dead, and any other fault then costs the quorum.
    let lost_is_voter = role(lost_id).as_deref() == Some("voter");
    if lost_is_voter && entries.iter().any(|s| s["primary"] == lost_id || s["secondary"] == lost_id) {
        return Some(vec!["rebalance".into(), "--drain".into(), lost_id.to_string(), "--apply".into(), "--step-timeout".into(), STEP_TIMEOUT.into()]);
    }
    if let Some(shard) = entries.iter().find(|s| s["merge_pending"]["from_node"] == lost_id) {
        return Some(vec!["shards".into(), "abandon-merge".into(), shard["shard"].to_string()]);
    }
    if role(lost_id).is_some_and(|r| r != "not a member") {
        return Some(vec!["node".into(), "remove".into(), lost_id.to_string()]);
    }
    if role(new_id).as_deref() != Some("voter") {
        let grpc = SocketAddr::new(IpAddr::V4(node_ip(index)), GRPC_PORT).to_string();
        let http = SocketAddr::new(IpAddr::V4(node_ip(index)), HTTP_PORT).to_string();
        return Some(vec!["node".into(), "add".into(), new_id.to_string(), "--grpc-addr".into(), grpc, "--http-addr".into(), http]);
    }
    match plan {
        Some(plan) if plan["moves"].as_array().is_some_and(|m| m.is_empty()) => None,
        _ => Some(vec!["rebalance".into(), "--apply".into(), "--step-timeout".into(), STEP_TIMEOUT.into()]),
    }
}

/// Replaces `replacement.lost_id` by `replacement.new_id`, retrying through faults until done
/// or `deadline_ms` (simulated ms since the run started). `log` hears every call and answer.
/// Returns the admin commands that changed something.
pub async fn replace_lost_member(cluster: Arc<Cluster>, replacement: Replacement, deadline_ms: u64, log: impl Fn(String)) -> Result<u64, String> {
    let now_ms = || madsim::time::TimeHandle::current().elapsed().as_millis() as u64;
    let nodes = cluster.nodes.len();
    let mut turn = 0usize;
    let mut changes = 0u64;
    let mut last_error = String::from("no call made");
    while now_ms() < deadline_ms {
        let addr = SocketAddr::new(IpAddr::V4(node_ip(turn % nodes)), GRPC_PORT);
        let step = async {
            let status = admin(addr, &["cluster".into(), "status".into()]).await?;
            let shards = admin(addr, &["shards".into()]).await?;
            let plan = match next_step(&replacement, &status, &shards, None) {
                Some(command) if command[0] == "rebalance" && !command.contains(&"--drain".to_string()) => Some(admin(addr, &["rebalance".into()]).await?),
                _ => None,
            };
            Ok::<_, String>(next_step(&replacement, &status, &shards, plan.as_ref()))
        };
        let outcome = match step.await {
            Ok(None) => return Ok(changes),
            Ok(Some(command)) => {
                let answer = admin(addr, &command).await;
                log(format!("operator -> {addr}: {} -> {}", command.join(" "), match &answer {
                    Ok(_) => "ok".to_string(),
                    Err(e) => format!("error: {e}"),
                }));
                answer.map(|_| changes += 1)
            }
            Err(error) => Err(error),
        };
        if let Err(error) = outcome {
            last_error = error;
            turn += 1;
            tokio::time::sleep(std::time::Duration::from_millis(RETRY_MS)).await;
        }
    }
    Err(format!("not done by {deadline_ms} ms; last error: {last_error}"))
}
