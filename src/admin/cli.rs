//! `sextant admin`: the operator's CLI over the admin gRPC service.
//!
//! [`run`] does one command and returns the text to print, or a [`CliError`] whose display is
//! the one line to print on stderr; `main` adds the exit code. A linearizable read or a
//! membership change sent to a follower answers NotLeader with the leader's address: [`run`]
//! retries once there, automatically.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Subcommand, ValueEnum};
use serde_json::{json, Value};
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use super::pb::admin_service_client::AdminServiceClient;
use super::{output, pb, LEADER_ADDR_METADATA};

/// Longest file the CLI reads (`-f`, `--token-file`): a rule file's limit plus room.
pub const INPUT_FILE_BYTES_MAX: u64 = 5 * 1024 * 1024;

/// Operate a cluster: status, membership, shard map, rules, dashboards, tenant limits,
/// cardinality, snapshots. Talks gRPC to one node (`--addr`); reads are linearizable unless
/// `--consistency local`; calls a follower cannot answer are retried once at the leader.
#[derive(Args, Debug, Clone)]
pub struct AdminArgs {
    /// host:port of a node's gRPC surface.
    #[arg(long, global = true, default_value = "127.0.0.1:9481")]
    pub addr: String,
    /// An admin token (prefer --token-file: command lines are visible to other users).
    #[arg(long, global = true)]
    pub token: Option<String>,
    /// A file holding the admin token (surrounding whitespace ignored).
    #[arg(long, global = true)]
    pub token_file: Option<PathBuf>,
    #[arg(long, global = true, value_enum, default_value = "table")]
    pub output: OutputFormat,
    #[arg(long, global = true, value_enum, default_value = "linearizable")]
    pub consistency: ConsistencyArg,
    /// How long to wait for each call (e.g. 10s, 2m).
    #[arg(long, global = true, default_value = "30s")]
    pub timeout: String,
    #[command(subcommand)]
    pub command: AdminCommand,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputFormat {
    Table,
    Json,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsistencyArg {
    Linearizable,
    Local,
}

#[derive(Subcommand, Debug, Clone)]
pub enum AdminCommand {
    /// The cluster as a whole.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Membership: add (learner, then voter) or remove a node.
    #[command(subcommand)]
    Node(NodeCommand),
    /// The shard map: each shard's primary, secondary, epoch, and replication state and lag
    /// (asked of each primary). With --verify: digests every shard on each replica and
    /// reports equal or MISMATCH (exit status 1 on any mismatch). Subcommands change it.
    #[command(args_conflicts_with_subcommands = true)]
    Shards {
        #[command(subcommand)]
        action: Option<ShardsCommand>,
        /// Compare the replicas' digests instead of listing the map.
        #[arg(long)]
        verify: bool,
        /// Start of the verified range (Unix seconds or RFC3339). [default: everything]
        #[arg(long, requires = "verify")]
        from: Option<String>,
        /// End of the verified range (Unix seconds or RFC3339). [default: everything]
        #[arg(long, requires = "verify")]
        to: Option<String>,
    },
    /// Alert and recording rules (Prometheus rule files).
    #[command(subcommand)]
    Rules(RulesCommand),
    /// Grafana dashboards, versioned.
    #[command(subcommand)]
    Dashboards(DashboardsCommand),
    /// Per-tenant limits.
    #[command(subcommand)]
    Limits(LimitsCommand),
    /// Label names refused at ingest, per tenant.
    #[command(subcommand)]
    Labels(LabelsCommand),
    /// Active series per metric across the nodes.
    #[command(subcommand)]
    Cardinality(CardinalityCommand),
    /// Make the addressed node snapshot its metadata state now.
    Snapshot,
    /// Plan moves that spread primaries and secondaries evenly over the voters (after `node
    /// add` or before `node remove`), and with --apply carry them out one step at a time:
    /// a new primary is made the secondary and caught up before it is promoted, and every step
    /// waits until the stream has synced (docs/design/replication.md § Rebalancing).
    Rebalance {
        /// Carry the plan out (without it: print the plan only).
        #[arg(long)]
        apply: bool,
        /// Longest wait for one step to complete (sync, merge-back).
        #[arg(long, default_value = "10m")]
        step_timeout: String,
        /// Plan as if this voter were gone: move every shard off it (before `node remove`,
        /// which would otherwise cut it off from the map while it still holds shards).
        #[arg(long)]
        drain: Vec<u64>,
    },
}

#[derive(Subcommand, Debug, Clone)]
pub enum ShardsCommand {
    /// Promote the shard's secondary to primary (epoch + 1; the old primary becomes the
    /// secondary and the shard is merge pending until the new primary has synced with it). The
    /// new primary acknowledges writes only once the old primary's lease has certainly ended.
    Promote {
        shard: u32,
        /// Promote only if the shard is still at this epoch. [default: its current epoch]
        #[arg(long)]
        expected_epoch: Option<u64>,
    },
    /// Name another secondary for the shard (a dead one's replacement); the primary's stream
    /// catches it up by a two-way sync. The previous secondary keeps its copy on disk.
    SetSecondary { shard: u32, node: u64 },
    /// Give up a promoted shard's merge-back because its previous primary is gone for good:
    /// clears merge pending (and the query warning). Samples only that node held are lost.
    /// Refused while that node is still the shard's secondary and a voter.
    AbandonMerge {
        shard: u32,
        /// Only if the shard is still at this epoch.
        #[arg(long)]
        expected_epoch: Option<u64>,
    },
}

#[derive(Subcommand, Debug, Clone)]
pub enum ClusterCommand {
    /// Members, leader, term, commit index, and each node's applied index, health and lag.
    Status,
}

#[derive(Subcommand, Debug, Clone)]
pub enum NodeCommand {
    Add {
        id: u64,
        #[arg(long)]
        grpc_addr: String,
        #[arg(long)]
        http_addr: String,
    },
    Remove { id: u64 },
}

#[derive(Subcommand, Debug, Clone)]
pub enum RulesCommand {
    /// Put every group of a Prometheus rule file, all or nothing.
    Apply {
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
    },
    List,
    Get { name: String },
    Delete { name: String },
}

#[derive(Subcommand, Debug, Clone)]
pub enum DashboardsCommand {
    /// Save a new version of a dashboard (uid and title from its JSON unless given).
    Put {
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
        #[arg(long)]
        uid: Option<String>,
        #[arg(long)]
        title: Option<String>,
    },
    Get {
        uid: String,
        #[arg(long)]
        version: Option<u64>,
    },
    List,
    History { uid: String },
    Delete { uid: String },
}

#[derive(Subcommand, Debug, Clone)]
pub enum LimitsCommand {
    Get {
        #[arg(long)]
        tenant: String,
    },
    /// Set limits; flags left out keep their current values.
    Set {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        series_per_metric: Option<u64>,
        #[arg(long)]
        series_per_tenant: Option<u64>,
        /// Samples per second.
        #[arg(long)]
        ingest_rate: Option<u64>,
        #[arg(long)]
        query_samples: Option<u64>,
        #[arg(long)]
        query_series: Option<u64>,
        /// A duration (e.g. 30d); 0 means no limit.
        #[arg(long)]
        query_range: Option<String>,
        /// A duration (e.g. 2m).
        #[arg(long)]
        query_timeout: Option<String>,
    },
}

#[derive(Subcommand, Debug, Clone)]
pub enum LabelsCommand {
    Block {
        #[arg(long)]
        tenant: String,
        label: String,
    },
    Unblock {
        #[arg(long)]
        tenant: String,
        label: String,
    },
}

#[derive(Subcommand, Debug, Clone)]
pub enum CardinalityCommand {
    Top {
        #[arg(long)]
        tenant: Option<String>,
        #[arg(long, default_value_t = 10)]
        limit: u32,
    },
}

/// Why a command failed: one line for stderr.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    Connect(String),
    /// The node answered with an error.
    #[error("{message}")]
    Call { code: tonic::Code, message: String },
    #[error("no answer from {addr} within {timeout_ms} ms")]
    Timeout { addr: String, timeout_ms: u64 },
    /// The command ran and found a problem (`shards --verify` mismatches): `output` goes to
    /// stdout, the message to stderr, and the exit status is non-zero.
    #[error("{message}")]
    Found { output: String, message: String },
}

/// The gRPC code as words (`invalid argument`), for messages.
fn code_words(code: tonic::Code) -> String {
    let debug = format!("{code:?}");
    let mut out = String::new();
    for (i, c) in debug.chars().enumerate() {
        if c.is_uppercase() && i > 0 {
            out.push(' ');
        }
        out.push(c.to_ascii_lowercase());
    }
    out
}

/// One line: newlines in a server message (PromQL parse errors have them) become spaces.
fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn read_file(what: &str, path: &Path) -> Result<String, CliError> {
    let fail = |e: std::io::Error| CliError::Usage(format!("{what} {}: {e}", path.display()));
    let bytes = std::fs::metadata(path).map_err(fail)?.len();
    if bytes > INPUT_FILE_BYTES_MAX {
        return Err(CliError::Usage(format!("{what} {}: {bytes} bytes, at most {INPUT_FILE_BYTES_MAX} read", path.display())));
    }
    std::fs::read_to_string(path).map_err(fail)
}

fn duration_ms(flag: &str, text: &str) -> Result<i64, CliError> {
    if text == "0" {
        return Ok(0);
    }
    crate::duration::parse_duration_ms(text).map_err(|e| CliError::Usage(format!("--{flag} {text:?}: {e}")))
}

/// The connection and credentials of one `sextant admin` invocation.
struct Session {
    addr: String,
    authorization: Option<String>,
    timeout: Duration,
}

impl Session {
    async fn client(&self, addr: &str) -> Result<AdminServiceClient<Channel>, CliError> {
        super::service::connect(addr, self.timeout).await.map_err(CliError::Connect)
    }

    fn request<T>(&self, message: T) -> Result<Request<T>, CliError> {
        let mut request = Request::new(message);
        if let Some(authorization) = &self.authorization {
            let value = authorization.parse().map_err(|_| CliError::Usage("the token holds characters that cannot travel in gRPC metadata".into()))?;
            request.metadata_mut().insert("authorization", value);
        }
        Ok(request)
    }

    /// Calls `call` at `--addr`; when that node answers NotLeader with the leader's address,
    /// calls once more there.
    async fn call<T, F, Fut>(&self, message: T, call: F) -> Result<T::Reply, CliError>
    where
        T: Clone + Named,
        F: Fn(AdminServiceClient<Channel>, Request<T>) -> Fut,
        Fut: Future<Output = Result<Response<T::Reply>, Status>>,
    {
        let mut addr = self.addr.clone();
        for attempt in 0..2 {
            let client = self.client(&addr).await?;
            let answer = tokio::time::timeout(self.timeout, call(client, self.request(message.clone())?)).await;
            let status = match answer {
                Ok(Ok(reply)) => return Ok(reply.into_inner()),
                Ok(Err(status)) => status,
                Err(_) => return Err(CliError::Timeout { addr, timeout_ms: self.timeout.as_millis() as u64 }),
            };
            let leader = status.metadata().get(LEADER_ADDR_METADATA).and_then(|v| v.to_str().ok()).map(str::to_string);
            match leader {
                Some(leader) if attempt == 0 && status.code() == tonic::Code::FailedPrecondition && leader != addr => addr = leader,
                _ => {
                    return Err(CliError::Call { code: status.code(), message: format!("{} at {addr}: {}: {}", T::NAME, code_words(status.code()), one_line(status.message())) });
                }
            }
        }
        unreachable!("the loop returns on its second attempt")
    }
}

/// A request type and its reply, named for error messages.
trait Named {
    type Reply;
    const NAME: &'static str;
}

macro_rules! named {
    ($($request:ty => $reply:ty, $name:literal;)*) => {
        $(impl Named for $request { type Reply = $reply; const NAME: &'static str = $name; })*
    };
}

named! {
    pb::ClusterStatusRequest => pb::ClusterStatusReply, "cluster status";
    pb::AddNodeRequest => pb::MembershipReply, "node add";
    pb::RemoveNodeRequest => pb::MembershipReply, "node remove";
    pb::ReadRequest => pb::ShardMapReply, "shards";
    pb::VerifyShardsRequest => pb::VerifyShardsReply, "shards --verify";
    pb::PromoteShardRequest => pb::WriteReply, "shards promote";
    pb::SetShardSecondaryRequest => pb::WriteReply, "shards set-secondary";
    pb::AbandonMergeRequest => pb::WriteReply, "shards abandon-merge";
    pb::ApplyRulesRequest => pb::ApplyRulesReply, "rules apply";
    pb::GetRuleGroupRequest => pb::RuleGroupsReply, "rules get";
    pb::DeleteRuleGroupRequest => pb::WriteReply, "rules delete";
    pb::PutDashboardRequest => pb::PutDashboardReply, "dashboards put";
    pb::GetDashboardRequest => pb::DashboardReply, "dashboards get";
    pb::DashboardHistoryRequest => pb::DashboardHistoryReply, "dashboards history";
    pb::DeleteDashboardRequest => pb::WriteReply, "dashboards delete";
    pb::GetTenantLimitsRequest => pb::TenantLimitsReply, "limits get";
    pb::SetTenantLimitsRequest => pb::SetTenantLimitsReply, "limits set";
    pb::LabelRequest => pb::WriteReply, "labels";
    pb::CardinalityRequest => pb::CardinalityReply, "cardinality top";
    pb::TriggerSnapshotRequest => pb::TriggerSnapshotReply, "snapshot";
}

/// `ReadRequest` serves three list calls with different replies: these wrap it.
#[derive(Clone)]
struct ListRules(pb::ReadRequest);
#[derive(Clone)]
struct ListDashboards(pb::ReadRequest);
named! {
    ListRules => pb::RuleGroupsReply, "rules list";
    ListDashboards => pb::DashboardListReply, "dashboards list";
}

fn render(format: OutputFormat, table: impl FnOnce() -> String, json: impl FnOnce() -> Value) -> String {
    match format {
        OutputFormat::Table => table(),
        OutputFormat::Json => {
            let mut text = serde_json::to_string_pretty(&json()).expect("serde_json::Value always serializes");
            text.push('\n');
            text
        }
    }
}

/// A write that changed nothing is an error for the operator (deleting what is not there,
/// blocking a label twice): they asked for a change and none happened.
fn require_applied(name: &str, write: &Option<pb::WriteReply>) -> Result<(), CliError> {
    match write {
        Some(w) if !w.applied => Err(CliError::Call { code: tonic::Code::FailedPrecondition, message: format!("{name}: nothing changed: {}", w.reason) }),
        _ => Ok(()),
    }
}

/// Runs one `sextant admin` command and returns what to print on stdout.
pub async fn run(args: &AdminArgs) -> Result<String, CliError> {
    let timeout_ms = crate::duration::parse_duration_ms(&args.timeout).map_err(|e| CliError::Usage(format!("--timeout {:?}: {e}", args.timeout)))?;
    if timeout_ms <= 0 {
        return Err(CliError::Usage(format!("--timeout {:?} must be positive", args.timeout)));
    }
    let token = match (&args.token, &args.token_file) {
        (Some(_), Some(_)) => return Err(CliError::Usage("give --token or --token-file, not both".into())),
        (Some(token), None) => Some(token.trim().to_string()),
        (None, Some(path)) => Some(read_file("--token-file", path)?.trim().to_string()),
        (None, None) => None,
    };
    if token.as_deref() == Some("") {
        return Err(CliError::Usage("the admin token is empty".into()));
    }
    let consistency = match args.consistency {
        ConsistencyArg::Linearizable => pb::Consistency::Linearizable,
        ConsistencyArg::Local => pb::Consistency::Local,
    } as i32;
    let session = Session { addr: args.addr.clone(), authorization: token.map(|t| format!("Bearer {t}")), timeout: Duration::from_millis(timeout_ms as u64) };
    let format = args.output;
    let read = pb::ReadRequest { consistency };
    match &args.command {
        AdminCommand::Cluster(ClusterCommand::Status) => {
            let reply = session.call(pb::ClusterStatusRequest { consistency, member_timeout_ms: 0 }, |mut c, r| async move { c.cluster_status(r).await }).await?;
            Ok(render(format, || output::cluster_status_table(&reply), || output::cluster_status_json(&reply)))
        }
        AdminCommand::Node(NodeCommand::Add { id, grpc_addr, http_addr }) => {
            let request = pb::AddNodeRequest { node_id: *id, grpc_addr: grpc_addr.clone(), http_addr: http_addr.clone() };
            let reply = session.call(request, |mut c, r| async move { c.add_node(r).await }).await?;
            Ok(render(format, || output::membership_text("added", *id, &reply), || output::membership_json(&reply)))
        }
        AdminCommand::Node(NodeCommand::Remove { id }) => {
            let reply = session.call(pb::RemoveNodeRequest { node_id: *id }, |mut c, r| async move { c.remove_node(r).await }).await?;
            Ok(render(format, || output::membership_text("removed", *id, &reply), || output::membership_json(&reply)))
        }
        AdminCommand::Shards { action: Some(ShardsCommand::Promote { shard, expected_epoch }), .. } => {
            let request = pb::PromoteShardRequest { shard: *shard, expected_epoch: *expected_epoch };
            let write = Some(session.call(request, |mut c, r| async move { c.promote_shard(r).await }).await?);
            require_applied("shards promote", &write)?;
            Ok(render(format, || output::write_text(&format!("promoted the secondary of shard {shard}"), &write), || json!({"write": output::write_json(&write)})))
        }
        AdminCommand::Shards { action: Some(ShardsCommand::AbandonMerge { shard, expected_epoch }), .. } => {
            let request = pb::AbandonMergeRequest { shard: *shard, expected_epoch: *expected_epoch };
            let write = Some(session.call(request, |mut c, r| async move { c.abandon_merge(r).await }).await?);
            require_applied("shards abandon-merge", &write)?;
            Ok(render(format, || output::write_text(&format!("shard {shard}: merge-back abandoned"), &write), || json!({"write": output::write_json(&write)})))
        }
        AdminCommand::Shards { action: Some(ShardsCommand::SetSecondary { shard, node }), .. } => {
            let request = pb::SetShardSecondaryRequest { shard: *shard, secondary: *node };
            let write = Some(session.call(request, |mut c, r| async move { c.set_shard_secondary(r).await }).await?);
            require_applied("shards set-secondary", &write)?;
            Ok(render(format, || output::write_text(&format!("shard {shard}'s secondary is now node {node}"), &write), || json!({"write": output::write_json(&write)})))
        }
        AdminCommand::Shards { verify: false, .. } => {
            let reply = session.call(read, |mut c, r| async move { c.get_shard_map(r).await }).await?;
            Ok(render(format, || output::shard_map_table(&reply), || output::shard_map_json(&reply)))
        }
        AdminCommand::Shards { verify: true, from, to, .. } => {
            let time = |flag: &str, text: &Option<String>| -> Result<Option<i64>, CliError> {
                text.as_ref().map(|t| crate::query_api::parse_time_ms(t).map_err(|e| CliError::Usage(format!("{flag} {t:?}: {e}")))).transpose()
            };
            let request = pb::VerifyShardsRequest { min_t: time("--from", from)?, max_t: time("--to", to)? };
            let reply = session.call(request, |mut c, r| async move { c.verify_shards(r).await }).await?;
            let text = render(format, || output::verify_table(&reply), || output::verify_json(&reply));
            if reply.mismatched > 0 {
                return Err(CliError::Found { output: text, message: format!("{} of {} shards have replicas whose digests differ (or did not answer)", reply.mismatched, reply.shards.len()) });
            }
            Ok(text)
        }
        AdminCommand::Rules(RulesCommand::Apply { file }) => {
            let rule_file = read_file("rule file", file)?;
            let reply = session.call(pb::ApplyRulesRequest { rule_file }, |mut c, r| async move { c.apply_rules(r).await }).await?;
            let what = format!("applied {} rule groups {:?}", reply.group_names.len(), reply.group_names);
            Ok(render(format, || output::write_text(&what, &reply.write), || json!({"write": output::write_json(&reply.write), "group_names": reply.group_names})))
        }
        AdminCommand::Rules(RulesCommand::List) => {
            let reply = session.call(ListRules(read), |mut c, r| async move { c.list_rule_groups(r.map(|l| l.0)).await }).await?;
            Ok(render(format, || output::rule_groups_table(&reply), || json!({"read": output::read_json(&reply.read), "groups": reply.groups.iter().map(output::rule_group_json).collect::<Vec<_>>()})))
        }
        AdminCommand::Rules(RulesCommand::Get { name }) => {
            let reply = session.call(pb::GetRuleGroupRequest { consistency, name: name.clone() }, |mut c, r| async move { c.get_rule_group(r).await }).await?;
            Ok(render(format, || output::rule_group_text(&reply), || json!({"read": output::read_json(&reply.read), "group": reply.groups.first().map(output::rule_group_json)})))
        }
        AdminCommand::Rules(RulesCommand::Delete { name }) => {
            let reply = session.call(pb::DeleteRuleGroupRequest { name: name.clone() }, |mut c, r| async move { c.delete_rule_group(r).await }).await?;
            let write = Some(reply);
            require_applied("rules delete", &write)?;
            Ok(render(format, || output::write_text(&format!("deleted rule group {name:?}"), &write), || json!({"write": output::write_json(&write)})))
        }
        AdminCommand::Dashboards(DashboardsCommand::Put { file, uid, title }) => {
            let json_text = read_file("dashboard file", file)?;
            let request = pb::PutDashboardRequest { json: json_text, uid: uid.clone().unwrap_or_default(), title: title.clone().unwrap_or_default() };
            let reply = session.call(request, |mut c, r| async move { c.put_dashboard(r).await }).await?;
            let version = reply.write.as_ref().map(|w| w.index).unwrap_or(0);
            let what = format!("saved dashboard {:?} ({:?}) as version {version}", reply.uid, reply.title);
            Ok(render(format, || output::write_text(&what, &reply.write), || json!({"write": output::write_json(&reply.write), "uid": reply.uid, "title": reply.title, "version": version})))
        }
        AdminCommand::Dashboards(DashboardsCommand::Get { uid, version }) => {
            let request = pb::GetDashboardRequest { consistency, uid: uid.clone(), version: version.unwrap_or(0) };
            let reply = session.call(request, |mut c, r| async move { c.get_dashboard(r).await }).await?;
            let dashboard = reply.dashboard.clone().unwrap_or_default();
            Ok(render(
                format,
                || format!("# dashboard {:?} version {} {:?}, saved by {} at {} ms\n{}\n{}", dashboard.uid, dashboard.version, dashboard.title, dashboard.who, dashboard.at_ms, dashboard.json, output::read_line(&reply.read)),
                || json!({"read": output::read_json(&reply.read), "dashboard": output::dashboard_version_json(&dashboard, true)}),
            ))
        }
        AdminCommand::Dashboards(DashboardsCommand::List) => {
            let reply = session.call(ListDashboards(read), |mut c, r| async move { c.list_dashboards(r.map(|l| l.0)).await }).await?;
            Ok(render(format, || output::dashboards_table(&reply.dashboards, &reply.read, true), || json!({"read": output::read_json(&reply.read), "dashboards": reply.dashboards.iter().map(|d| output::dashboard_version_json(d, false)).collect::<Vec<_>>()})))
        }
        AdminCommand::Dashboards(DashboardsCommand::History { uid }) => {
            let reply = session.call(pb::DashboardHistoryRequest { consistency, uid: uid.clone() }, |mut c, r| async move { c.dashboard_history(r).await }).await?;
            Ok(render(format, || output::dashboards_table(&reply.versions, &reply.read, false), || json!({"read": output::read_json(&reply.read), "uid": reply.uid, "versions": reply.versions.iter().map(|d| output::dashboard_version_json(d, false)).collect::<Vec<_>>()})))
        }
        AdminCommand::Dashboards(DashboardsCommand::Delete { uid }) => {
            let reply = session.call(pb::DeleteDashboardRequest { uid: uid.clone() }, |mut c, r| async move { c.delete_dashboard(r).await }).await?;
            let write = Some(reply);
            require_applied("dashboards delete", &write)?;
            Ok(render(format, || output::write_text(&format!("deleted dashboard {uid:?}"), &write), || json!({"write": output::write_json(&write)})))
        }
        AdminCommand::Limits(LimitsCommand::Get { tenant }) => {
            let reply = session.call(pb::GetTenantLimitsRequest { consistency, tenant: tenant.clone() }, |mut c, r| async move { c.get_tenant_limits(r).await }).await?;
            Ok(render(format, || output::tenant_limits_table(&reply), || output::tenant_limits_json(&reply)))
        }
        AdminCommand::Limits(LimitsCommand::Set { tenant, series_per_metric, series_per_tenant, ingest_rate, query_samples, query_series, query_range, query_timeout }) => {
            let request = pb::SetTenantLimitsRequest {
                tenant: tenant.clone(),
                series_per_metric_max: *series_per_metric,
                series_per_tenant_max: *series_per_tenant,
                ingest_rate_samples_per_s_max: *ingest_rate,
                query_samples_max: *query_samples,
                query_series_max: *query_series,
                query_range_ms_max: query_range.as_deref().map(|t| duration_ms("query-range", t)).transpose()?,
                query_timeout_ms: query_timeout.as_deref().map(|t| duration_ms("query-timeout", t)).transpose()?,
            };
            let reply = session.call(request, |mut c, r| async move { c.set_tenant_limits(r).await }).await?;
            Ok(render(
                format,
                || {
                    let mut out = output::write_text(&format!("set limits of tenant {tenant:?}"), &reply.write);
                    let rows: Vec<Vec<String>> = reply.limits.as_ref().map(output::limits_rows).unwrap_or_default().into_iter().map(|(k, v)| vec![k.to_string(), v]).collect();
                    out.push_str(&output::table(&["LIMIT", "VALUE"], &rows));
                    out
                },
                || json!({"write": output::write_json(&reply.write), "tenant": tenant, "limits": output::limits_json(&reply.limits)}),
            ))
        }
        AdminCommand::Labels(command) => {
            let (block, tenant, label) = match command {
                LabelsCommand::Block { tenant, label } => (true, tenant, label),
                LabelsCommand::Unblock { tenant, label } => (false, tenant, label),
            };
            let request = pb::LabelRequest { tenant: tenant.clone(), label: label.clone() };
            let reply = if block {
                session.call(request, |mut c, r| async move { c.block_label(r).await }).await?
            } else {
                session.call(request, |mut c, r| async move { c.unblock_label(r).await }).await?
            };
            let write = Some(reply);
            let verb = if block { "blocked" } else { "unblocked" };
            require_applied(if block { "labels block" } else { "labels unblock" }, &write)?;
            Ok(render(format, || output::write_text(&format!("{verb} label {label:?} for tenant {tenant:?}"), &write), || json!({"write": output::write_json(&write), "tenant": tenant, "label": label, "blocked": block})))
        }
        AdminCommand::Cardinality(CardinalityCommand::Top { tenant, limit }) => {
            let request = pb::CardinalityRequest { tenant: tenant.clone().unwrap_or_default(), limit: *limit, member_timeout_ms: 0 };
            let reply = session.call(request, |mut c, r| async move { c.cardinality_top(r).await }).await?;
            Ok(render(format, || output::cardinality_table(&reply), || output::cardinality_json(&reply)))
        }
        AdminCommand::Rebalance { apply, step_timeout, drain } => {
            let step_timeout_ms = crate::duration::parse_duration_ms(step_timeout).map_err(|e| CliError::Usage(format!("--step-timeout {step_timeout:?}: {e}")))?;
            if step_timeout_ms <= 0 {
                return Err(CliError::Usage(format!("--step-timeout {step_timeout:?} must be positive")));
            }
            rebalance(&session, format, *apply, drain, Duration::from_millis(step_timeout_ms as u64)).await
        }
        AdminCommand::Snapshot => {
            let reply = session.call(pb::TriggerSnapshotRequest { wait_ms: 0 }, |mut c, r| async move { c.trigger_snapshot(r).await }).await?;
            Ok(render(
                format,
                || {
                    let done = if reply.completed { "built" } else { "requested (not finished within the wait)" };
                    format!("snapshot on node {} {done}: covers log index {} (applied index {})\n", reply.node_id, reply.snapshot_index, reply.applied_index)
                },
                || json!({"node_id": reply.node_id, "snapshot_index": reply.snapshot_index, "completed": reply.completed, "applied_index": reply.applied_index}),
            ))
        }
    }
}

/// `admin rebalance`: plans from the voters and the shard map read linearizably, prints the
/// plan, and with `apply` carries out each move's steps in order, waiting for each.
async fn rebalance(session: &Session, format: OutputFormat, apply: bool, drain: &[u64], step_timeout: Duration) -> Result<String, CliError> {
    use super::rebalance::{plan_with, Step};
    let linearizable = pb::Consistency::Linearizable as i32;
    let status = session.call(pb::ClusterStatusRequest { consistency: linearizable, member_timeout_ms: 0 }, |mut c, r| async move { c.cluster_status(r).await }).await?;
    let all_voters: Vec<u64> = status.members.iter().filter(|m| m.role == "voter").map(|m| m.node_id).collect();
    if let Some(node) = drain.iter().find(|n| !all_voters.contains(n)) {
        return Err(CliError::Usage(format!("--drain {node}: not a voter (voters: {all_voters:?})")));
    }
    let voters: Vec<u64> = all_voters.into_iter().filter(|v| !drain.contains(v)).collect();
    if voters.len() < 2 {
        return Err(CliError::Call { code: tonic::Code::FailedPrecondition, message: format!("rebalance needs at least two voters (RF=2); the cluster has {voters:?}") });
    }
    let map = session.call(pb::ReadRequest { consistency: linearizable }, |mut c, r| async move { c.get_shard_map(r).await }).await?;
    if !map.exists {
        return Err(CliError::Call { code: tonic::Code::FailedPrecondition, message: "there is no shard map yet".into() });
    }
    let current: std::collections::BTreeMap<u32, super::rebalance::Replicas> = map.shards.iter().map(|s| (s.shard, (s.primary, s.secondary))).collect();
    // A shard with a merge-back pending keeps its primary: promoting it again would replace the
    // pending merge (and its query warning) before that node's samples are back.
    let pinned: std::collections::BTreeSet<u32> = map.shards.iter().filter(|s| s.merge_pending_epoch.is_some()).map(|s| s.shard).collect();
    // A primary the leader lists without a live lease (or a lease the answering node cannot
    // vouch for) may be dead: its shard is promoted to its secondary rather than moved.
    let unleased: std::collections::BTreeSet<u32> = map.shards.iter().filter(|s| !s.lease_known || s.lease_holder.is_none() || s.lease_holder != s.primary).map(|s| s.shard).collect();
    let moves = plan_with(&current, &voters, &pinned, &unleased);
    let plan_json = |done: usize| {
        json!({"voters": voters, "apply": apply, "moves_done": done, "pinned": pinned, "moves": moves.iter().map(|m| json!({"shard": m.shard, "from": [m.from.0, m.from.1], "to": [m.to.0, m.to.1], "steps": m.steps().iter().map(step_text).collect::<Vec<_>>()})).collect::<Vec<_>>()})
    };
    let plan_table = |done: usize| {
        let rows: Vec<Vec<String>> = moves.iter().map(|m| vec![m.shard.to_string(), format!("{}/{}", output::opt(m.from.0), output::opt(m.from.1)), format!("{}/{}", output::opt(m.to.0), output::opt(m.to.1)), m.steps().iter().map(step_text).collect::<Vec<_>>().join(", ")]).collect();
        let head = match (moves.is_empty(), apply) {
            (true, _) => format!("balanced over voters {voters:?}: nothing to move\n"),
            (false, false) => format!("{} moves over voters {voters:?} (a plan only: --apply carries it out)\n", moves.len()),
            (false, true) => format!("{done} of {} moves done over voters {voters:?}\n", moves.len()),
        };
        let pinned_note = if pinned.is_empty() {
            String::new()
        } else {
            format!("shards {pinned:?} keep their primary while their merge-back is pending (`shards abandon-merge` gives up one whose previous primary is gone)\n")
        };
        let head = head + &pinned_note;
        if rows.is_empty() { head } else { head + &output::table(&["SHARD", "FROM", "TO", "STEPS"], &rows) }
    };
    if !apply || moves.is_empty() {
        return Ok(render(format, || plan_table(0), || plan_json(0)));
    }
    let progress = indicatif::ProgressBar::new(moves.iter().map(|m| m.steps().len() as u64).sum());
    progress.set_style(indicatif::ProgressStyle::with_template("{elapsed_precise} {bar:40} {pos}/{len} steps {msg}").expect("a valid template"));
    for (done, m) in moves.iter().enumerate() {
        for step in m.steps() {
            progress.set_message(format!("shard {}: {}", m.shard, step_text(&step)));
            let write = match step {
                Step::SetSecondary(node) => session.call(pb::SetShardSecondaryRequest { shard: m.shard, secondary: node }, |mut c, r| async move { c.set_shard_secondary(r).await }).await,
                Step::Promote => session.call(pb::PromoteShardRequest { shard: m.shard, expected_epoch: None }, |mut c, r| async move { c.promote_shard(r).await }).await,
            };
            let stopped = |error: CliError| {
                progress.abandon();
                CliError::Found { output: render(format, || plan_table(done), || plan_json(done)), message: format!("rebalance stopped at shard {} ({}): {error}; the moves before it are done — run `sextant admin rebalance` again to plan the rest", m.shard, step_text(&step)) }
            };
            let write = Some(write.map_err(stopped)?);
            require_applied("rebalance", &write).map_err(stopped)?;
            wait_step(session, m.shard, step, step_timeout).await.map_err(stopped)?;
            progress.inc(1);
        }
    }
    progress.finish_and_clear();
    Ok(render(format, || plan_table(moves.len()), || plan_json(moves.len())))
}

fn step_text(step: &super::rebalance::Step) -> String {
    match step {
        super::rebalance::Step::SetSecondary(node) => format!("set secondary {node}"),
        super::rebalance::Step::Promote => "promote".to_string(),
    }
}

/// Waits until `step` of `shard` completed: after set-secondary, the primary streams to the new
/// secondary at the shard's epoch after a full sync; after promote, the merge-back completed
/// (merge pending clear) and the new primary streams to the old one, synced.
async fn wait_step(session: &Session, shard: u32, step: super::rebalance::Step, step_timeout: Duration) -> Result<(), CliError> {
    let local = pb::ReadRequest { consistency: pb::Consistency::Linearizable as i32 };
    let mut last = String::from("no answer yet");
    let wait = async {
        loop {
            if let Ok(map) = session.call(local.clone(), |mut c, r| async move { c.get_shard_map(r).await }).await {
                let info = map.shards.iter().find(|s| s.shard == shard);
                let replication = map.replication.iter().find(|r| r.shard == shard);
                if let (Some(info), Some(r)) = (info, replication) {
                    let wanted_secondary = match step {
                        super::rebalance::Step::SetSecondary(node) => Some(node),
                        super::rebalance::Step::Promote => info.secondary,
                    };
                    // A merge pending from another node than the wanted secondary cannot complete
                    // through this stream (its source is gone from the pair): not waited for.
                    let merging = info.merge_pending_epoch.is_some() && info.merge_from_node == wanted_secondary;
                    let done = info.secondary == wanted_secondary && !merging && r.secondary == wanted_secondary && r.epoch == info.epoch && r.state == "streaming" && r.synced_epoch == Some(info.epoch);
                    if done {
                        return;
                    }
                    last = format!("primary {}, secondary {}, epoch {}, stream {}{}{}", output::opt(info.primary), output::opt(info.secondary), info.epoch, r.state, if info.merge_pending_epoch.is_some() { ", merge pending" } else { "" }, if r.error.is_empty() { String::new() } else { format!(" ({})", r.error) });
                }
            }
            tokio::time::sleep(Duration::from_millis(REBALANCE_POLL_MS)).await;
        }
    };
    tokio::time::timeout(step_timeout, wait).await.map_err(|_| CliError::Call { code: tonic::Code::DeadlineExceeded, message: format!("shard {shard} did not complete the step within {} s; last seen: {last}", step_timeout.as_secs()) })
}

/// How often `rebalance` looks at the shard map while a step completes.
const REBALANCE_POLL_MS: u64 = 500;
