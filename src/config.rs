//! `sextant serve` configuration: command-line flags, an optional TOML file, and the defaults.
//!
//! Precedence: a flag beats the file, the file beats the default. The file uses the flag names
//! with `_` for `-` (`data_dir = "/var/lib/sextant"`, `sample_age_max = "24h"`,
//! `blocked_label = ["session_id"]`); unknown keys are an error so a typo cannot silently
//! leave a default in place.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Args;
use serde::Deserialize;
use sextant_core::labels::{LabelLimits, NameValidation};
use sextant_storage::acceptance::AcceptanceConfig;
use sextant_storage::wal::FsyncPolicy;

use crate::duration::{parse_bytes, parse_duration_ms};

/// Flags of `sextant serve`. Every one is optional; the help text states its default.
#[derive(Args, Debug, Clone, Default)]
pub struct ServeArgs {
    /// TOML file with any of the settings below (keys are flag names with `_` for `-`).
    /// Flags given on the command line override the file.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Directory holding the WAL and the shards' blocks. Created if missing; locked while
    /// the server runs. [default: ./data]
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Address of the HTTP server: remote-write (/api/v1/write), the Prometheus query API
    /// (/api/v1/query, /api/v1/query_range, …), /api/v1/status/tsdb, /metrics, /-/healthy,
    /// /-/ready. [default: 127.0.0.1:9480]
    #[arg(long, value_name = "ADDR")]
    pub http_listen: Option<String>,
    /// Address of the gRPC server: the metadata group's raft transport (and the admin
    /// service `sextant admin` talks to). [default: 127.0.0.1:9481]
    #[arg(long, value_name = "ADDR")]
    pub grpc_listen: Option<String>,
    /// This node's id in the cluster (a positive integer, unique in the cluster, never
    /// reused). [default: 1]
    #[arg(long, value_name = "N")]
    pub node_id: Option<u64>,
    /// gRPC address other nodes use to reach this one, recorded in the cluster's membership
    /// (HOST:PORT). [default: this node's entry in --initial-cluster, else --grpc-listen]
    #[arg(long, value_name = "HOST:PORT")]
    pub advertise_grpc: Option<String>,
    /// HTTP address other nodes and clients use to reach this one, registered in the cluster
    /// metadata (HOST:PORT). [default: --http-listen]
    #[arg(long, value_name = "HOST:PORT")]
    pub advertise_http: Option<String>,
    /// Creates a new cluster of these voters on first start: `1=HOST:GRPC,2=HOST:GRPC,…`,
    /// the same list on every node, containing this node's --node-id. Ignored once the node
    /// has a raft log. Without it (and without --join) a node with an empty log forms a
    /// one-voter cluster of itself. [default: none]
    #[arg(long, value_name = "ID=HOST:PORT,…")]
    pub initial_cluster: Option<String>,
    /// Start with an empty raft log and wait to be added by `sextant admin node add`; never
    /// form a cluster alone. Not with --initial-cluster.
    #[arg(long)]
    pub join: bool,
    /// Shards of a new cluster's shard map (fixed for the cluster's life; only used when the
    /// cluster is created). [default: 16]
    #[arg(long, value_name = "N")]
    pub shard_count: Option<u32>,
    /// Delete blocks whose newest sample is older than this (e.g. 15d, 90d; 0 keeps
    /// everything). [default: 15d]
    #[arg(long, value_name = "DURATION")]
    pub retention: Option<String>,
    /// WAL fsync policy. `always`: a write is acknowledged only after its WAL record is
    /// fsynced (group commit). `interval`: acknowledged once written, fsynced every
    /// --fsync-interval; a power loss can lose up to one interval of acknowledged writes.
    /// [default: always]
    #[arg(long, value_name = "POLICY", value_parser = ["always", "interval"])]
    pub fsync: Option<String>,
    /// Period of the WAL fsync under `--fsync interval`. [default: 1s]
    #[arg(long, value_name = "DURATION")]
    pub fsync_interval: Option<String>,
    /// Oldest in-order sample accepted, relative to this node's clock (a sender's backlog
    /// after an outage). [default: 24h]
    #[arg(long, value_name = "DURATION")]
    pub sample_age_max: Option<String>,
    /// How far behind its series' newest sample an out-of-order sample is still accepted.
    /// [default: 10m]
    #[arg(long, value_name = "DURATION")]
    pub out_of_order_window: Option<String>,
    /// Samples further than this ahead of this node's clock are refused. [default: 10m]
    #[arg(long, value_name = "DURATION")]
    pub future_skew_max: Option<String>,
    /// Active series per metric name and tenant; new series beyond it are refused (existing
    /// series keep ingesting). [default: 100000]
    #[arg(long, value_name = "N")]
    pub series_per_metric_max: Option<u64>,
    /// Active series per tenant; new series beyond it are refused. [default: 1000000]
    #[arg(long, value_name = "N")]
    pub series_per_tenant_max: Option<u64>,
    /// Samples per second per tenant (token bucket with a burst of two seconds); requests
    /// over it answer 429. 0 disables the limit. [default: 1000000]
    #[arg(long, value_name = "N")]
    pub ingest_rate_max: Option<u64>,
    /// The node's memory budget for series, chunks and postings (e.g. 4GiB). New series are
    /// refused with 503 when it is reached. [default: 4GiB]
    #[arg(long, value_name = "SIZE")]
    pub memory_max: Option<String>,
    /// Bytes of forwarded writes (to other nodes' shard primaries) in flight per destination
    /// node (e.g. 64MiB). Series that would exceed it are refused with 429 (retryable) rather
    /// than buffered. [default: 64MiB]
    #[arg(long, value_name = "SIZE")]
    pub forward_inflight_max: Option<String>,
    /// Longest a shard's secondary may lag behind its primary (age of the oldest record it
    /// has not acknowledged) before the primary refuses the shard's writes with 429 (or, with
    /// --replication-lag-policy unprotected, accepts them and marks the shard unprotected).
    /// Bounds what the permanent loss of a primary can lose. [default: 5s]
    #[arg(long, value_name = "DURATION")]
    pub replication_lag_max: Option<String>,
    /// What a primary does past --replication-lag-max: `refuse` (429, retryable) or
    /// `unprotected` (accept; the shard is marked unprotected in status and metrics).
    /// [default: refuse]
    #[arg(long, value_name = "POLICY", value_parser = ["refuse", "unprotected"])]
    pub replication_lag_policy: Option<String>,
    /// Longest label value in bytes. [default: 4096]
    #[arg(long, value_name = "N")]
    pub label_value_bytes_max: Option<usize>,
    /// Most labels per series, __name__ included. [default: 64]
    #[arg(long, value_name = "N")]
    pub labels_per_series_max: Option<usize>,
    /// Largest remote-write body, compressed and decompressed (e.g. 32MiB). A larger body
    /// is refused before it is read or inflated. [default: 32MiB]
    #[arg(long, value_name = "SIZE")]
    pub body_bytes_max: Option<String>,
    /// File of bearer tokens, one `TOKEN TENANT ROLE` per line (ROLE is write, read or
    /// admin; TENANT `*` means any tenant; `#` starts a comment). When given, every write and
    /// read needs a token (401 without one, 403 for the wrong role or tenant). All nodes of a
    /// cluster share the file. Not to be confused with the admin CLI's --token-file.
    /// [default: none, no authentication]
    #[arg(long, value_name = "FILE")]
    pub tokens_file: Option<PathBuf>,
    /// Refuse samples of series carrying this label name (repeatable).
    #[arg(long, value_name = "NAME")]
    pub blocked_label: Vec<String>,
    /// Label and metric naming rules: `utf8` (Prometheus 3.x) or `legacy` (Prometheus 2.x
    /// character sets). [default: utf8]
    #[arg(long, value_name = "RULES", value_parser = ["utf8", "legacy"])]
    pub name_validation: Option<String>,
    /// Most tenants this node accepts writes for; a request for one more is refused with
    /// 400. [default: 10000]
    #[arg(long, value_name = "N")]
    pub tenants_max: Option<usize>,
    /// A metric is flagged as runaway when this many distinct new series of it are seen
    /// (estimated with a HyperLogLog, refused ones included) within --runaway-window.
    /// [default: 10000]
    #[arg(long, value_name = "N")]
    pub runaway_new_series_max: Option<u64>,
    /// Window of the runaway detector. [default: 10m]
    #[arg(long, value_name = "DURATION")]
    pub runaway_window: Option<String>,
    /// A series not written for this long stops counting against the series limits.
    /// [default: 3h, the head's span]
    #[arg(long, value_name = "DURATION")]
    pub series_idle_max: Option<String>,
    /// Period of the background maintenance pass (head cuts, compaction, retention, WAL
    /// checkpoints, limit bookkeeping). [default: 1m]
    #[arg(long, value_name = "DURATION")]
    pub maintain_interval: Option<String>,
    /// On a clean shutdown (SIGTERM, SIGINT), write the in-memory head to compressed blocks
    /// before closing, so the data directory is compact and the next start replays almost
    /// nothing. Takes seconds per million series; a kill during it loses nothing (the WAL still
    /// holds every acknowledged sample). `false` closes at once and replays the WAL on start.
    /// [default: true]
    #[arg(long, value_name = "BOOL")]
    pub flush_on_shutdown: Option<bool>,
    /// Longest a query may take, queueing included; the `timeout` parameter may only lower
    /// it. Past it the query fails with errorType "timeout". [default: 2m]
    #[arg(long, value_name = "DURATION")]
    pub query_timeout: Option<String>,
    /// Samples one query may load and hold (fetched, subquery points, range output).
    /// [default: 50000000]
    #[arg(long, value_name = "N")]
    pub query_samples_max: Option<usize>,
    /// Series one query may touch across its selectors. [default: 1000000]
    #[arg(long, value_name = "N")]
    pub query_series_max: Option<usize>,
    /// Accounted memory of one query: 16 bytes per sample held plus label bytes (e.g.
    /// 512MiB). [default: 1GiB]
    #[arg(long, value_name = "SIZE")]
    pub query_memory_max: Option<String>,
    /// Queries evaluated at once; more wait in the priority queue. [default: 16]
    #[arg(long, value_name = "N")]
    pub query_concurrency_max: Option<usize>,
    /// Of --query-concurrency-max, slots only alert-class queries may use, so rule
    /// evaluation never waits behind dashboards. Must be below --query-concurrency-max.
    /// [default: 2]
    #[arg(long, value_name = "N")]
    pub query_alert_reserved: Option<usize>,
    /// Queries waiting for a slot; when full, the lowest class is shed (503). [default: 128]
    #[arg(long, value_name = "N")]
    pub query_queue_max: Option<usize>,
    /// Longest a query waits for a slot before it is shed (503). [default: 10s]
    #[arg(long, value_name = "DURATION")]
    pub query_queue_wait_max: Option<String>,
    /// How often a cluster member renews its shard leases with the metadata leader; at most
    /// half of --lease-duration. [default: 1s]
    #[arg(long, value_name = "DURATION")]
    pub lease_renew_interval: Option<String>,
    /// How long a lease lasts, counted from the renewal request's send time: a primary that
    /// cannot renew stops acknowledging writes this long after its last renewal. [default: 4s]
    #[arg(long, value_name = "DURATION")]
    pub lease_duration: Option<String>,
    /// How long the metadata leader waits after a primary's last renewal before promoting the
    /// shard's secondary; must exceed --lease-duration by the clock-drift bound (10%) plus
    /// 500ms (checked at start). [default: 10s]
    #[arg(long, value_name = "DURATION")]
    pub promotion_timeout: Option<String>,
}

/// The same settings as read from a TOML file.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    data_dir: Option<PathBuf>,
    http_listen: Option<String>,
    grpc_listen: Option<String>,
    node_id: Option<u64>,
    advertise_grpc: Option<String>,
    advertise_http: Option<String>,
    initial_cluster: Option<String>,
    join: Option<bool>,
    shard_count: Option<u32>,
    retention: Option<String>,
    fsync: Option<String>,
    fsync_interval: Option<String>,
    sample_age_max: Option<String>,
    out_of_order_window: Option<String>,
    future_skew_max: Option<String>,
    series_per_metric_max: Option<u64>,
    series_per_tenant_max: Option<u64>,
    ingest_rate_max: Option<u64>,
    memory_max: Option<String>,
    forward_inflight_max: Option<String>,
    replication_lag_max: Option<String>,
    replication_lag_policy: Option<String>,
    label_value_bytes_max: Option<usize>,
    labels_per_series_max: Option<usize>,
    body_bytes_max: Option<String>,
    tokens_file: Option<PathBuf>,
    blocked_label: Option<Vec<String>>,
    name_validation: Option<String>,
    tenants_max: Option<usize>,
    runaway_new_series_max: Option<u64>,
    runaway_window: Option<String>,
    series_idle_max: Option<String>,
    maintain_interval: Option<String>,
    flush_on_shutdown: Option<bool>,
    query_timeout: Option<String>,
    query_samples_max: Option<usize>,
    query_series_max: Option<usize>,
    query_memory_max: Option<String>,
    query_concurrency_max: Option<usize>,
    query_alert_reserved: Option<usize>,
    query_queue_max: Option<usize>,
    query_queue_wait_max: Option<String>,
    lease_renew_interval: Option<String>,
    lease_duration: Option<String>,
    promotion_timeout: Option<String>,
}

/// How a node with an empty raft log gets into a cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Formation {
    /// A one-voter cluster of itself (no cluster flags).
    Single,
    /// `--initial-cluster`: bootstrap these voters (id → gRPC address).
    Initial(BTreeMap<u64, String>),
    /// `--join`: wait to be added.
    Join,
}

/// The node's place in the metadata group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterConfig {
    pub node_id: u64,
    /// `None`: decided when the listener is bound (its address, or the `--initial-cluster`
    /// entry).
    pub advertise_grpc: Option<String>,
    pub advertise_http: Option<String>,
    pub formation: Formation,
    pub shard_count: u32,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig { node_id: 1, advertise_grpc: None, advertise_http: None, formation: Formation::Single, shard_count: sextant_raft::command::SHARD_COUNT_DEFAULT }
    }
}

/// Checks `HOST:PORT` (a host name or an IP, a numeric port).
fn host_port(setting: &str, text: &str) -> Result<String, String> {
    let bad = |why: &str| format!("--{setting} {text:?}: {why} (expected HOST:PORT, e.g. 10.0.0.1:9481)");
    let (host, port) = text.rsplit_once(':').ok_or_else(|| bad("no port"))?;
    if host.is_empty() {
        return Err(bad("no host"));
    }
    port.parse::<u16>().map_err(|_| bad("the port is not a number from 0 to 65535"))?;
    if text.len() > sextant_raft::command::NAME_BYTES_MAX || text.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(bad("too long or contains spaces or control characters"));
    }
    Ok(text.to_string())
}

/// Parses `--initial-cluster 1=HOST:PORT,2=HOST:PORT`.
pub fn parse_initial_cluster(text: &str) -> Result<BTreeMap<u64, String>, String> {
    let mut members = BTreeMap::new();
    for item in text.split(',').map(str::trim) {
        let (id, addr) = item.split_once('=').ok_or_else(|| format!("--initial-cluster: {item:?} is not ID=HOST:PORT"))?;
        let id: u64 = id.trim().parse().map_err(|_| format!("--initial-cluster: node id {id:?} is not a positive integer"))?;
        if id == 0 {
            return Err("--initial-cluster: node id 0 is not allowed (ids start at 1)".into());
        }
        let addr = host_port("initial-cluster", addr.trim())?;
        if members.insert(id, addr).is_some() {
            return Err(format!("--initial-cluster: node id {id} is listed twice"));
        }
    }
    Ok(members)
}

/// Limits of the query path (`--query-*` flags; docs/design/http-api.md).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueryConfig {
    /// Longest a query may take from arrival (queueing included).
    pub timeout_ms: i64,
    pub samples_max: usize,
    pub series_max: usize,
    /// Accounted memory per query (16 bytes per sample plus label bytes).
    pub bytes_max: usize,
    pub concurrency_max: usize,
    /// Slots only alert-class queries may use.
    pub alert_reserved: usize,
    pub queue_max: usize,
    pub queue_wait_ms_max: i64,
}

impl Default for QueryConfig {
    fn default() -> Self {
        QueryConfig {
            timeout_ms: 2 * 60_000,
            samples_max: 50_000_000,
            series_max: 1_000_000,
            bytes_max: 1 << 30,
            concurrency_max: 16,
            alert_reserved: 2,
            queue_max: 128,
            queue_wait_ms_max: 10_000,
        }
    }
}

/// Limits of the ingest path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IngestLimits {
    pub series_per_metric_max: u64,
    pub series_per_tenant_max: u64,
    /// Samples/s per tenant; 0 = unlimited.
    pub ingest_rate_samples_per_s_max: u64,
    pub labels: LabelLimits,
    /// Largest body, compressed and decompressed.
    pub body_bytes_max: usize,
    pub blocked_label_names: BTreeSet<String>,
    pub tenants_max: usize,
    pub runaway_new_series_max: u64,
    pub runaway_window_ms: i64,
    pub series_idle_ms_max: i64,
}

impl Default for IngestLimits {
    fn default() -> Self {
        IngestLimits {
            series_per_metric_max: 100_000,
            series_per_tenant_max: 1_000_000,
            ingest_rate_samples_per_s_max: 1_000_000,
            labels: LabelLimits::default(),
            body_bytes_max: 32 << 20,
            blocked_label_names: BTreeSet::new(),
            tenants_max: 10_000,
            runaway_new_series_max: 10_000,
            runaway_window_ms: 10 * 60_000,
            series_idle_ms_max: 3 * 3_600_000,
        }
    }
}

/// The effective configuration of `sextant serve`.
#[derive(Clone, Debug)]
pub struct ServeConfig {
    pub data_dir: PathBuf,
    pub http_listen: SocketAddr,
    pub grpc_listen: SocketAddr,
    pub retention_ms: Option<i64>,
    pub fsync: FsyncPolicy,
    pub acceptance: AcceptanceConfig,
    pub memory_bytes_max: u64,
    /// Forwarded-write bytes in flight per destination node (`--forward-inflight-max`).
    pub forward_inflight_bytes_max: u64,
    /// `--replication-lag-max` in ms.
    pub replication_lag_ms_max: i64,
    /// `--replication-lag-policy`.
    pub replication_lag_policy: crate::replicate::LagPolicy,
    pub limits: IngestLimits,
    pub tokens_file: Option<PathBuf>,
    pub maintain_interval_ms: i64,
    /// `--flush-on-shutdown`: cut the whole head to blocks on a clean shutdown.
    pub flush_on_shutdown: bool,
    pub query: QueryConfig,
    pub cluster: ClusterConfig,
    /// Lease renewal, lease length and promotion timeout (`crate::lease`).
    pub lease: crate::lease::LeaseConfig,
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            data_dir: PathBuf::from("data"),
            http_listen: SocketAddr::from(([127, 0, 0, 1], 9480)),
            grpc_listen: SocketAddr::from(([127, 0, 0, 1], 9481)),
            retention_ms: Some(15 * 86_400_000),
            fsync: FsyncPolicy::Always,
            acceptance: AcceptanceConfig::default(),
            memory_bytes_max: 4 << 30,
            forward_inflight_bytes_max: 64 << 20,
            replication_lag_ms_max: 5_000,
            replication_lag_policy: crate::replicate::LagPolicy::Refuse,
            limits: IngestLimits::default(),
            tokens_file: None,
            maintain_interval_ms: 60_000,
            flush_on_shutdown: true,
            query: QueryConfig::default(),
            cluster: ClusterConfig::default(),
            lease: crate::lease::LeaseConfig::default(),
        }
    }
}

fn duration(setting: &str, text: &str) -> Result<i64, String> {
    parse_duration_ms(text).map_err(|e| format!("--{setting}: {e}"))
}

fn positive(setting: &str, ms: i64) -> Result<i64, String> {
    if ms <= 0 {
        return Err(format!("--{setting} must be positive"));
    }
    Ok(ms)
}

fn address(setting: &str, text: &str) -> Result<SocketAddr, String> {
    text.parse().map_err(|e| format!("--{setting} {text:?}: {e} (expected IP:PORT, e.g. 127.0.0.1:9480)"))
}

impl ServeConfig {
    /// Builds the effective configuration from the flags and the file's text, if any.
    pub fn resolve(args: &ServeArgs, file_text: Option<&str>) -> Result<ServeConfig, String> {
        let file: FileConfig = match file_text {
            Some(text) => toml::from_str(text).map_err(|e| format!("config file: {e}"))?,
            None => FileConfig::default(),
        };
        let mut config = ServeConfig::default();
        // `pick` prefers the flag, then the file.
        fn pick<T: Clone>(flag: &Option<T>, file: &Option<T>) -> Option<T> {
            flag.clone().or_else(|| file.clone())
        }
        if let Some(dir) = pick(&args.data_dir, &file.data_dir) {
            config.data_dir = dir;
        }
        if let Some(text) = pick(&args.http_listen, &file.http_listen) {
            config.http_listen = address("http-listen", &text)?;
        }
        if let Some(text) = pick(&args.grpc_listen, &file.grpc_listen) {
            config.grpc_listen = address("grpc-listen", &text)?;
        }
        let cluster = &mut config.cluster;
        if let Some(id) = pick(&args.node_id, &file.node_id) {
            if id == 0 {
                return Err("--node-id 0: node ids start at 1".into());
            }
            cluster.node_id = id;
        }
        if let Some(text) = pick(&args.advertise_grpc, &file.advertise_grpc) {
            cluster.advertise_grpc = Some(host_port("advertise-grpc", &text)?);
        }
        if let Some(text) = pick(&args.advertise_http, &file.advertise_http) {
            cluster.advertise_http = Some(host_port("advertise-http", &text)?);
        }
        if let Some(n) = pick(&args.shard_count, &file.shard_count) {
            let max = sextant_raft::command::SHARD_COUNT_MAX;
            if n == 0 || n > max {
                return Err(format!("--shard-count {n}: must be between 1 and {max}"));
            }
            cluster.shard_count = n;
        }
        let join = args.join || file.join.unwrap_or(false);
        match (pick(&args.initial_cluster, &file.initial_cluster), join) {
            (Some(_), true) => return Err("--join and --initial-cluster exclude each other: a joining node is added by `sextant admin node add`".into()),
            (Some(text), false) => {
                let members = parse_initial_cluster(&text)?;
                let Some(own) = members.get(&cluster.node_id) else {
                    return Err(format!("--initial-cluster does not list this node's --node-id {} (it lists {:?})", cluster.node_id, members.keys().collect::<Vec<_>>()));
                };
                // Every node must bootstrap the same membership (openraft: initializing with
                // different memberships is split brain), so this node's advertised gRPC
                // address is its entry in the list.
                match &cluster.advertise_grpc {
                    Some(advertised) if advertised != own => {
                        return Err(format!("--advertise-grpc {advertised:?} differs from this node's --initial-cluster entry {own:?}; they must be the same address"));
                    }
                    _ => cluster.advertise_grpc = Some(own.clone()),
                }
                cluster.formation = Formation::Initial(members);
            }
            (None, true) => cluster.formation = Formation::Join,
            (None, false) => cluster.formation = Formation::Single,
        }
        if let Some(text) = pick(&args.retention, &file.retention) {
            let ms = duration("retention", &text)?;
            config.retention_ms = if ms == 0 { None } else { Some(ms) };
        }
        let interval_ms = match pick(&args.fsync_interval, &file.fsync_interval) {
            Some(text) => positive("fsync-interval", duration("fsync-interval", &text)?)?,
            None => 1_000,
        };
        match pick(&args.fsync, &file.fsync).as_deref() {
            None | Some("always") => config.fsync = FsyncPolicy::Always,
            Some("interval") => config.fsync = FsyncPolicy::Interval { interval_ms: interval_ms as u64 },
            Some(other) => return Err(format!("--fsync {other:?}: expected always or interval")),
        }
        if let Some(text) = pick(&args.sample_age_max, &file.sample_age_max) {
            config.acceptance.sample_age_ms_max = duration("sample-age-max", &text)?;
        }
        if let Some(text) = pick(&args.out_of_order_window, &file.out_of_order_window) {
            config.acceptance.out_of_order_window_ms = duration("out-of-order-window", &text)?;
        }
        if let Some(text) = pick(&args.future_skew_max, &file.future_skew_max) {
            config.acceptance.future_skew_ms_max = duration("future-skew-max", &text)?;
        }
        let limits = &mut config.limits;
        if let Some(n) = pick(&args.series_per_metric_max, &file.series_per_metric_max) {
            limits.series_per_metric_max = n;
        }
        if let Some(n) = pick(&args.series_per_tenant_max, &file.series_per_tenant_max) {
            limits.series_per_tenant_max = n;
        }
        if let Some(n) = pick(&args.ingest_rate_max, &file.ingest_rate_max) {
            limits.ingest_rate_samples_per_s_max = n;
        }
        if let Some(text) = pick(&args.memory_max, &file.memory_max) {
            config.memory_bytes_max = parse_bytes(&text).map_err(|e| format!("--memory-max: {e}"))?;
        }
        if let Some(text) = pick(&args.forward_inflight_max, &file.forward_inflight_max) {
            let bytes = parse_bytes(&text).map_err(|e| format!("--forward-inflight-max: {e}"))?;
            if bytes == 0 {
                return Err("--forward-inflight-max 0: must be positive (a node with no room could forward nothing)".into());
            }
            config.forward_inflight_bytes_max = bytes;
        }
        if let Some(text) = pick(&args.replication_lag_max, &file.replication_lag_max) {
            let ms = duration("replication-lag-max", &text)?;
            if ms <= 0 {
                return Err(format!("--replication-lag-max {text:?}: must be positive (a zero bound would refuse every write of a replicated shard)"));
            }
            config.replication_lag_ms_max = ms;
        }
        if let Some(text) = pick(&args.replication_lag_policy, &file.replication_lag_policy) {
            config.replication_lag_policy = match text.as_str() {
                "refuse" => crate::replicate::LagPolicy::Refuse,
                "unprotected" => crate::replicate::LagPolicy::Unprotected,
                other => return Err(format!("--replication-lag-policy {other:?}: expected `refuse` or `unprotected`")),
            };
        }
        if let Some(n) = pick(&args.label_value_bytes_max, &file.label_value_bytes_max) {
            limits.labels.label_value_bytes_max = n;
        }
        if let Some(n) = pick(&args.labels_per_series_max, &file.labels_per_series_max) {
            if n == 0 {
                return Err("--labels-per-series-max must be at least 1 (__name__)".into());
            }
            limits.labels.label_count_max = n;
        }
        if let Some(text) = pick(&args.body_bytes_max, &file.body_bytes_max) {
            let bytes = parse_bytes(&text).map_err(|e| format!("--body-bytes-max: {e}"))?;
            // Four times this is the decode budget (see remote_write); keep it addressable.
            if bytes == 0 || bytes > (1 << 30) {
                return Err(format!("--body-bytes-max {text:?}: must be between 1 B and 1GiB"));
            }
            limits.body_bytes_max = bytes as usize;
        }
        config.tokens_file = pick(&args.tokens_file, &file.tokens_file);
        let mut blocked: BTreeSet<String> = file.blocked_label.clone().unwrap_or_default().into_iter().collect();
        blocked.extend(args.blocked_label.iter().cloned());
        limits.blocked_label_names = blocked;
        match pick(&args.name_validation, &file.name_validation).as_deref() {
            None | Some("utf8") => limits.labels.validation = NameValidation::Utf8,
            Some("legacy") => limits.labels.validation = NameValidation::Legacy,
            Some(other) => return Err(format!("--name-validation {other:?}: expected utf8 or legacy")),
        }
        if let Some(n) = pick(&args.tenants_max, &file.tenants_max) {
            limits.tenants_max = n;
        }
        if let Some(n) = pick(&args.runaway_new_series_max, &file.runaway_new_series_max) {
            limits.runaway_new_series_max = n;
        }
        if let Some(text) = pick(&args.runaway_window, &file.runaway_window) {
            limits.runaway_window_ms = positive("runaway-window", duration("runaway-window", &text)?)?;
        }
        if let Some(text) = pick(&args.series_idle_max, &file.series_idle_max) {
            limits.series_idle_ms_max = positive("series-idle-max", duration("series-idle-max", &text)?)?;
        }
        if let Some(text) = pick(&args.maintain_interval, &file.maintain_interval) {
            config.maintain_interval_ms = positive("maintain-interval", duration("maintain-interval", &text)?)?;
        }
        if let Some(flush) = pick(&args.flush_on_shutdown, &file.flush_on_shutdown) {
            config.flush_on_shutdown = flush;
        }
        let query = &mut config.query;
        if let Some(text) = pick(&args.query_timeout, &file.query_timeout) {
            query.timeout_ms = positive("query-timeout", duration("query-timeout", &text)?)?;
        }
        if let Some(n) = pick(&args.query_samples_max, &file.query_samples_max) {
            query.samples_max = n;
        }
        if let Some(n) = pick(&args.query_series_max, &file.query_series_max) {
            query.series_max = n;
        }
        if let Some(text) = pick(&args.query_memory_max, &file.query_memory_max) {
            let bytes = parse_bytes(&text).map_err(|e| format!("--query-memory-max: {e}"))?;
            query.bytes_max = usize::try_from(bytes).map_err(|_| format!("--query-memory-max {text:?}: too large"))?;
        }
        if let Some(n) = pick(&args.query_concurrency_max, &file.query_concurrency_max) {
            if n == 0 {
                return Err("--query-concurrency-max must be at least 1".into());
            }
            query.concurrency_max = n;
        }
        if let Some(n) = pick(&args.query_alert_reserved, &file.query_alert_reserved) {
            query.alert_reserved = n;
        }
        if query.alert_reserved >= query.concurrency_max {
            return Err(format!(
                "--query-alert-reserved {} must be below --query-concurrency-max {} (dashboards and ad-hoc queries need at least one slot)",
                query.alert_reserved, query.concurrency_max
            ));
        }
        if let Some(n) = pick(&args.query_queue_max, &file.query_queue_max) {
            query.queue_max = n;
        }
        if let Some(text) = pick(&args.query_queue_wait_max, &file.query_queue_wait_max) {
            query.queue_wait_ms_max = positive("query-queue-wait-max", duration("query-queue-wait-max", &text)?)?;
        }
        let lease = &mut config.lease;
        for (setting, flag, file_value, target) in [
            ("lease-renew-interval", &args.lease_renew_interval, &file.lease_renew_interval, &mut lease.lease_renew_ms),
            ("lease-duration", &args.lease_duration, &file.lease_duration, &mut lease.lease_ms),
            ("promotion-timeout", &args.promotion_timeout, &file.promotion_timeout, &mut lease.promotion_timeout_ms),
        ] {
            if let Some(text) = pick(flag, file_value) {
                *target = positive(setting, duration(setting, &text)?)? as u64;
            }
        }
        config.lease.validate()?;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Goal: defaults match the issue, the file overrides defaults, and flags override the file.
    #[test]
    fn precedence_flag_file_default() {
        let defaults = ServeConfig::resolve(&ServeArgs::default(), None).unwrap();
        assert_eq!(defaults.data_dir, PathBuf::from("data"));
        assert_eq!(defaults.http_listen.to_string(), "127.0.0.1:9480");
        assert_eq!(defaults.grpc_listen.to_string(), "127.0.0.1:9481");
        assert_eq!(defaults.acceptance, AcceptanceConfig::default());
        assert_eq!(defaults.limits.series_per_metric_max, 100_000);
        assert_eq!(defaults.limits.series_per_tenant_max, 1_000_000);
        assert_eq!(defaults.fsync, FsyncPolicy::Always);
        assert_eq!(defaults.query, QueryConfig::default());
        assert_eq!(defaults.query.samples_max, 50_000_000);

        let file = "data_dir = \"/srv/x\"\nsample_age_max = \"2h\"\nfsync = \"interval\"\nblocked_label = [\"a\"]\nmemory_max = \"1GiB\"\n";
        let from_file = ServeConfig::resolve(&ServeArgs::default(), Some(file)).unwrap();
        assert_eq!(from_file.data_dir, PathBuf::from("/srv/x"));
        assert_eq!(from_file.acceptance.sample_age_ms_max, 2 * 3_600_000);
        assert_eq!(from_file.fsync, FsyncPolicy::Interval { interval_ms: 1000 });
        assert_eq!(from_file.memory_bytes_max, 1 << 30);

        let args = ServeArgs { data_dir: Some("/flag".into()), sample_age_max: Some("30m".into()), blocked_label: vec!["b".into()], ..ServeArgs::default() };
        let both = ServeConfig::resolve(&args, Some(file)).unwrap();
        assert_eq!(both.data_dir, PathBuf::from("/flag"));
        assert_eq!(both.acceptance.sample_age_ms_max, 30 * 60_000);
        assert_eq!(both.limits.blocked_label_names.iter().cloned().collect::<Vec<_>>(), vec!["a".to_string(), "b".to_string()]);
    }

    // Goal: the cluster flags — defaults (node 1, a one-voter cluster, 16 shards), the
    // formations, the advertised gRPC address taken from the node's --initial-cluster entry,
    // and the same settings from the file.
    #[test]
    fn cluster_flags() {
        let check = |args: ServeArgs, file: Option<&str>, expected: ClusterConfig| {
            assert_eq!(ServeConfig::resolve(&args, file).unwrap().cluster, expected);
        };
        check(ServeArgs::default(), None, ClusterConfig::default());
        assert_eq!(ClusterConfig::default().shard_count, 16);
        let leases = ServeConfig::resolve(&ServeArgs { lease_renew_interval: Some("200ms".into()), lease_duration: Some("1s".into()), promotion_timeout: Some("2s".into()), ..Default::default() }, None).unwrap().lease;
        assert_eq!(leases, crate::lease::LeaseConfig { lease_renew_ms: 200, lease_ms: 1_000, promotion_timeout_ms: 2_000 });
        let members: BTreeMap<u64, String> = [(1, "h1:9481".to_string()), (2, "h2:9481".to_string()), (3, "10.0.0.3:7000".to_string())].into();
        check(
            ServeArgs { node_id: Some(2), initial_cluster: Some("1=h1:9481, 2=h2:9481,3=10.0.0.3:7000".into()), advertise_http: Some("h2:9480".into()), shard_count: Some(32), ..Default::default() },
            None,
            ClusterConfig { node_id: 2, advertise_grpc: Some("h2:9481".into()), advertise_http: Some("h2:9480".into()), formation: Formation::Initial(members.clone()), shard_count: 32 },
        );
        check(
            ServeArgs::default(),
            Some("node_id = 2\ninitial_cluster = \"1=h1:9481,2=h2:9481,3=10.0.0.3:7000\"\nshard_count = 32\nadvertise_http = \"h2:9480\"\n"),
            ClusterConfig { node_id: 2, advertise_grpc: Some("h2:9481".into()), advertise_http: Some("h2:9480".into()), formation: Formation::Initial(members), shard_count: 32 },
        );
        check(ServeArgs { node_id: Some(4), join: true, advertise_grpc: Some("h4:9481".into()), ..Default::default() }, None, ClusterConfig { node_id: 4, advertise_grpc: Some("h4:9481".into()), formation: Formation::Join, ..ClusterConfig::default() });
        check(ServeArgs::default(), Some("join = true\n"), ClusterConfig { formation: Formation::Join, ..ClusterConfig::default() });
    }

    // Goal: malformed settings are errors that name the setting, never panics or silent
    // defaults.
    // Goal: the replication lag bound and policy parse from flags and the file, with defaults.
    #[test]
    fn replication_lag_settings() {
        let check = |args: ServeArgs, file: Option<&str>, expected: (i64, crate::replicate::LagPolicy)| {
            let config = ServeConfig::resolve(&args, file).unwrap();
            assert_eq!((config.replication_lag_ms_max, config.replication_lag_policy), expected, "{args:?} {file:?}");
        };
        use crate::replicate::LagPolicy::{Refuse, Unprotected};
        check(ServeArgs::default(), None, (5_000, Refuse));
        check(ServeArgs { replication_lag_max: Some("250ms".into()), ..Default::default() }, None, (250, Refuse));
        check(ServeArgs::default(), Some("replication_lag_max = \"1m\"\nreplication_lag_policy = \"unprotected\""), (60_000, Unprotected));
        check(ServeArgs { replication_lag_policy: Some("refuse".into()), ..Default::default() }, Some("replication_lag_policy = \"unprotected\""), (5_000, Refuse));
    }

    #[test]
    fn errors_name_the_setting() {
        let cases: Vec<(ServeArgs, Option<&str>, &str)> = vec![
            (ServeArgs { retention: Some("15 days".into()), ..Default::default() }, None, "--retention"),
            (ServeArgs { http_listen: Some("localhost".into()), ..Default::default() }, None, "--http-listen"),
            (ServeArgs { body_bytes_max: Some("0".into()), ..Default::default() }, None, "--body-bytes-max"),
            (ServeArgs::default(), Some("data_dri = \"x\""), "config file"),
            (ServeArgs::default(), Some("fsync = \"sometimes\""), "--fsync"),
            (ServeArgs { query_concurrency_max: Some(2), query_alert_reserved: Some(2), ..Default::default() }, None, "--query-alert-reserved"),
            (ServeArgs { query_timeout: Some("0".into()), ..Default::default() }, None, "--query-timeout"),
            (ServeArgs::default(), Some("query_memory_max = \"lots\""), "--query-memory-max"),
            (ServeArgs { node_id: Some(0), ..Default::default() }, None, "--node-id 0"),
            (ServeArgs { shard_count: Some(0), ..Default::default() }, None, "--shard-count 0"),
            (ServeArgs { shard_count: Some(5000), ..Default::default() }, None, "--shard-count 5000"),
            (ServeArgs { lease_duration: Some("soon".into()), ..Default::default() }, None, "--lease-duration"),
            (ServeArgs { promotion_timeout: Some("0s".into()), ..Default::default() }, None, "--promotion-timeout must be positive"),
            (ServeArgs { lease_duration: Some("9s".into()), ..Default::default() }, None, "--promotion-timeout 10000 ms must exceed --lease-duration 9000 ms"),
            (ServeArgs::default(), Some("lease_renew_interval = \"3s\""), "--lease-renew-interval 3000 ms must be at most half"),
            (ServeArgs { advertise_http: Some("nohost".into()), ..Default::default() }, None, "--advertise-http \"nohost\": no port"),
            (ServeArgs { advertise_grpc: Some(":9481".into()), ..Default::default() }, None, "--advertise-grpc \":9481\": no host"),
            (ServeArgs { initial_cluster: Some("1=a:1,x=b:2".into()), ..Default::default() }, None, "node id \"x\" is not a positive integer"),
            (ServeArgs { initial_cluster: Some("1=a:1,1=b:2".into()), ..Default::default() }, None, "node id 1 is listed twice"),
            (ServeArgs { initial_cluster: Some("1=a:1,2b:2".into()), ..Default::default() }, None, "\"2b:2\" is not ID=HOST:PORT"),
            (ServeArgs { initial_cluster: Some("1=a:99999".into()), ..Default::default() }, None, "not a number from 0 to 65535"),
            (ServeArgs { node_id: Some(3), initial_cluster: Some("1=a:1,2=b:2".into()), ..Default::default() }, None, "does not list this node's --node-id 3"),
            (ServeArgs { initial_cluster: Some("1=a:1".into()), join: true, ..Default::default() }, None, "--join and --initial-cluster"),
            (ServeArgs { initial_cluster: Some("1=a:1".into()), advertise_grpc: Some("b:1".into()), ..Default::default() }, None, "differs from this node's --initial-cluster entry"),
            (ServeArgs { replication_lag_max: Some("0s".into()), ..Default::default() }, None, "--replication-lag-max \"0s\": must be positive"),
            (ServeArgs { replication_lag_max: Some("soon".into()), ..Default::default() }, None, "--replication-lag-max"),
            (ServeArgs::default(), Some("replication_lag_policy = \"maybe\""), "--replication-lag-policy \"maybe\""),
        ];
        for (args, file, needle) in cases {
            let error = ServeConfig::resolve(&args, file).unwrap_err();
            assert!(error.contains(needle), "{error:?} should mention {needle}");
        }
    }
}
