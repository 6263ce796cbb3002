//! The metadata scenario: the raft group that holds the shard map, tenants and limits, rules
//! and dashboards, under seeded faults.
//!
//! Goal: no acknowledged metadata change is lost, every member ends with the same state, no
//! term has two leaders, and no member's versions go backwards — whatever the schedule does:
//! partitions between members (an isolated leader too), kill + power cut + restart of any
//! member (the leader too), pauses, proposer clock jumps, and a membership change in each
//! direction while the faults run.
//!
//! Method: four madsim machines each run the real `RaftNode` (its gRPC transport over the
//! simulated tonic, its log store and state machine on a `SimFs` created outside the machine,
//! so a kill keeps the disk and a power cut drops or tears what was not fsynced). Three start
//! as the voters; the fourth starts empty and the operator adds it once the leader has purged
//! its log behind a snapshot, so it can only catch up by a snapshot sent in 1 KiB chunks;
//! later the operator removes one of the first three and shuts it down. Clients propose
//! commands through any member (a follower forwards to the leader) by running the call on
//! that member's machine, as the node's admin service would, stamping `at_ms` from that
//! member's own clock. A monitor task on every incarnation follows its openraft metrics and
//! its applied state. After the faults, a quiet phase; then convergence, the oracles, every
//! member losing power at once (torn), restart, convergence and the oracles again.
//!
//! | machine | madsim name | address | what runs there |
//! |---|---|---|---|
//! | member *i* (0-based, raft id *i*+1) | `meta-i` | `10.0.5.(i+1):9481` | `RaftNode` on `SimFs` *i*, its monitor; members 0–2 are the initial voters, member 3 joins |
//! | supervisor | (the runtime's main task) | — | clients, operator, faults, oracles |
//!
//! Oracles (names as reported):
//! - `a-acked-durable`: every acknowledged write is in every final member's applied state: its
//!   log index is applied, and an applied (not no-op) write has its audit entry (index, who);
//! - `b-converged`: the final members reach one applied index and their states encode to the
//!   same bytes (the snapshot's data encoding);
//! - `c-log-matching`: no log index is ever applied with two different log ids (term and
//!   leader) on any members. (Not "one leader per term": openraft 0.9 without its
//!   `single-term-leader` feature identifies a leader by (term, node id), totally ordered, so a
//!   voter may move its vote from T-N3 to T-N4 within a term and two members may lead term T
//!   one after the other; log ids carry the leader's node id, so entries stay distinct. The
//!   BUGGIFY'd vote delays make that common: seed 195 of the first sweep showed it.);
//! - `d-monotonic`: on every member, across restarts, the applied index and every object's
//!   version (shard epochs and versions, dashboard versions, rule groups, tenants, retention)
//!   never go backwards, and no object disappears (the workload deletes nothing);
//! - `e-liveness`: every member starts, and a write proposed in the quiet phase is acknowledged;
//! - `f-linearizable-reads`: readers ask members (the leader mostly) for linearizable reads,
//!   as the admin service's default `--consistency linearizable` does, and the recorded history
//!   of acknowledged writes and answered reads is checked by `crate::linearizable` (no stale
//!   read, no read going back in time, one state per index). Planted bug `stale-admin-read`
//!   (reads served from the member's own copy) is what it catches.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use madsim::net::NetSim;
use madsim::runtime::{Handle, NodeHandle};
use madsim::time::TimeHandle;
use sextant_core::clock::Clock;
use sextant_core::determinism::DeterministicRng;
use sextant_raft::command::{Rule, RuleGroup, ShardAssignment, TenantLimits};
use sextant_raft::{Action, Command, MetadataState, Node, NodeId, Outcome, RaftNode, RaftNodeConfig, WriteError};
use sextant_storage::fs::sim::{CrashMode, FaultConfig, SimFs};
use sextant_storage::fs::{FileSystem, WritableFile};
use xxhash_rust::xxh64::Xxh64;

use crate::clock::SimClock;
use crate::config::{PlantedBug, SimConfig};
use crate::linearizable::{AckedWrite, ObservedRead};
use crate::report::{RunOptions, TimedViolation};
use crate::schedule::{CrashKind, Fault, FaultEvent, FaultKind, Schedule};

/// The raft gRPC port of every member.
pub const GRPC_PORT: u16 = 9481;
/// Members: three initial voters and one that joins during the run.
pub const MEMBERS: usize = 4;
/// The member the operator adds during the run.
const JOINER: usize = 3;
/// A snapshot every this many entries, with no log kept behind it (production: openraft's
/// default, 5,000): a member that falls behind, and the joiner, catch up by snapshot.
const SNAPSHOT_EVERY_ENTRIES: u64 = 5;
/// Snapshot chunk size (production 4 MiB): the joiner's snapshot crosses in many chunks.
const SNAPSHOT_CHUNK_BYTES: u64 = 1024;
/// Shards in the shard map the operator creates.
const SHARDS: u32 = 8;
/// How long after the quiet phase the final members may take to agree.
const CONVERGE_MS_MAX: u64 = 30_000;
/// How long the operator keeps trying one membership change.
const MEMBERSHIP_DEADLINE_MS: u64 = 20_000;
/// How long one membership call may take before the operator tries again.
const MEMBERSHIP_CALL_TIMEOUT_MS: u64 = 5_000;

fn now_ms() -> u64 {
    TimeHandle::current().elapsed().as_millis() as u64
}

async fn sleep_ms(ms: u64) {
    tokio::time::sleep(Duration::from_millis(ms.max(1))).await;
}

fn member_id(index: usize) -> NodeId {
    index as NodeId + 1
}

fn member_ip(index: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 0, 5, index as u8 + 1)
}

/// The addresses member `index` records in membership.
pub fn member_node(index: usize) -> Node {
    Node {
        http_addr: format!("{}:9480", member_ip(index)),
        grpc_addr: format!("{}:{GRPC_PORT}", member_ip(index)),
    }
}

/// The planted bug `raft-log-unsynced` (config.rs): a disk whose fsync of raft log segments
/// (`*.seg`) answers success and syncs nothing. Everything else passes through.
#[derive(Debug)]
struct UnsyncedLogFs {
    inner: SimFs,
}

#[derive(Debug)]
struct UnsyncedFile {
    inner: Box<dyn WritableFile>,
}

#[async_trait]
impl WritableFile for UnsyncedFile {
    async fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        self.inner.write_all(buf).await
    }
    async fn sync(&mut self) -> std::io::Result<()> {
        Ok(())
    }
    fn len(&self) -> u64 {
        self.inner.len()
    }
}

fn is_segment(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "seg")
}

#[async_trait]
impl FileSystem for UnsyncedLogFs {
    async fn create_dir_all(&self, path: &Path) -> std::io::Result<()> {
        self.inner.create_dir_all(path).await
    }
    async fn create(&self, path: &Path) -> std::io::Result<Box<dyn WritableFile>> {
        let file = self.inner.create(path).await?;
        Ok(if is_segment(path) { Box::new(UnsyncedFile { inner: file }) } else { file })
    }
    async fn open_append(&self, path: &Path) -> std::io::Result<Box<dyn WritableFile>> {
        let file = self.inner.open_append(path).await?;
        Ok(if is_segment(path) { Box::new(UnsyncedFile { inner: file }) } else { file })
    }
    async fn read(&self, path: &Path) -> std::io::Result<Vec<u8>> {
        self.inner.read(path).await
    }
    async fn read_at(&self, path: &Path, offset: u64, len: usize) -> std::io::Result<Vec<u8>> {
        self.inner.read_at(path, offset, len).await
    }
    async fn file_len(&self, path: &Path) -> std::io::Result<u64> {
        self.inner.file_len(path).await
    }
    async fn truncate(&self, path: &Path, len: u64) -> std::io::Result<()> {
        self.inner.truncate(path, len).await
    }
    async fn rename(&self, from: &Path, to: &Path) -> std::io::Result<()> {
        self.inner.rename(from, to).await
    }
    async fn remove_file(&self, path: &Path) -> std::io::Result<()> {
        self.inner.remove_file(path).await
    }
    async fn remove_dir_all(&self, path: &Path) -> std::io::Result<()> {
        self.inner.remove_dir_all(path).await
    }
    async fn read_dir(&self, path: &Path) -> std::io::Result<Vec<String>> {
        self.inner.read_dir(path).await
    }
    async fn exists(&self, path: &Path) -> std::io::Result<bool> {
        self.inner.exists(path).await
    }
    async fn is_dir(&self, path: &Path) -> std::io::Result<bool> {
        self.inner.is_dir(path).await
    }
    async fn sync_dir(&self, path: &Path) -> std::io::Result<()> {
        self.inner.sync_dir(path).await
    }
}

/// One client write and what became of it. The reasons are read through `Debug`, in the trace.
#[derive(Clone, Debug)]
#[allow(dead_code)]
enum WriteOutcome {
    Pending,
    /// Acknowledged: applied (or a no-op) at this log index.
    Acked { index: u64, applied: bool },
    /// Definitely not committed (no leader known, or the command was refused).
    Refused(String),
    /// May or may not have been committed (timeout, member killed, forward failed).
    Unknown(String),
}

#[derive(Clone, Debug)]
struct WriteRecord {
    command: Command,
    outcome: WriteOutcome,
    /// Simulated time at which the client learned the write was acknowledged.
    acked_at_ms: Option<u64>,
}

/// Per-member, the highest value of every watched version seen so far (oracle d).
type Watermarks = BTreeMap<String, u64>;

fn watermarks(state: &MetadataState) -> Watermarks {
    let mut marks = Watermarks::new();
    marks.insert("applied index".into(), state.last_applied.map(|id| id.index).unwrap_or(0));
    if let Some(map) = &state.shard_map {
        marks.insert("shard map version".into(), map.version);
        for (id, shard) in &map.shards {
            marks.insert(format!("shard {id} epoch"), shard.epoch);
            marks.insert(format!("shard {id} version"), shard.version);
        }
    }
    for (uid, dashboard) in &state.dashboards {
        marks.insert(format!("dashboard {uid} version"), dashboard.latest().map(|v| v.version).unwrap_or(0));
    }
    for (name, group) in &state.rule_groups {
        marks.insert(format!("rule group {name} version"), group.version);
    }
    for (name, tenant) in &state.tenants {
        marks.insert(format!("tenant {name} version"), tenant.version);
    }
    for (name, retention) in &state.retention {
        marks.insert(format!("retention {name} version"), retention.version);
    }
    marks
}

/// The state's encoding: the bytes a snapshot of it carries (`StateMachineStore` serializes
/// the state with serde_json).
pub(crate) fn encode_state(state: &MetadataState) -> Vec<u8> {
    serde_json::to_vec(state).expect("the metadata state serializes")
}

/// State shared by the tasks of one run (one thread; locks never held across an await).
struct Shared {
    config: SimConfig,
    trace: Mutex<Xxh64>,
    verbose: bool,
    violations: Mutex<Vec<TimedViolation>>,
    reported: Mutex<BTreeSet<String>>,
    effective: Mutex<BTreeMap<String, u64>>,
    stop: AtomicBool,
    quiet: AtomicBool,
    quiet_acks: Mutex<u64>,
    writes: Mutex<BTreeMap<String, WriteRecord>>,
    /// term → members seen leading it (for the trace and the count of elections).
    leaders: Mutex<BTreeMap<u64, BTreeSet<usize>>>,
    /// log index → the log id first seen applied there, and by which member (oracle c).
    applied_ids: Mutex<BTreeMap<u64, (sextant_raft::types::LogId, usize)>>,
    /// member → its watermarks (kept across its restarts).
    marks: Mutex<BTreeMap<usize, Watermarks>>,
    /// Members removed by the operator and shut down for good.
    decommissioned: Mutex<BTreeSet<usize>>,
    /// Members currently killed or paused by a fault.
    down: Mutex<BTreeSet<usize>>,
    paused: Mutex<BTreeSet<usize>>,
    /// Every read that returned a state (oracle f).
    reads: Mutex<Vec<ObservedRead>>,
}

impl Shared {
    fn event(&self, text: String) {
        let line = format!("{} {text}\n", now_ms());
        self.trace.lock().expect("trace").update(line.as_bytes());
        if self.verbose {
            eprint!("[sim] {line}");
        }
    }

    fn count(&self, what: &str, n: u64) {
        if n > 0 {
            *self.effective.lock().expect("effective").entry(what.to_string()).or_default() += n;
        }
    }

    fn violate(&self, oracle: &str, evidence: String) {
        self.event(format!("VIOLATION {oracle}: {evidence}"));
        self.violations.lock().expect("violations").push(TimedViolation {
            at_ms: now_ms(),
            oracle: oracle.to_string(),
            evidence,
        });
    }

    /// Like `violate`, once per `key` (a monitor sees the same fault many times).
    fn violate_once(&self, key: String, oracle: &str, evidence: String) {
        if self.reported.lock().expect("reported").insert(key) {
            self.violate(oracle, evidence);
        }
    }

    /// Records that `member` leads `term` (several may, one after another: see oracle c).
    fn saw_leader(&self, member: usize, term: u64) {
        let new = self.leaders.lock().expect("leaders").entry(term).or_default().insert(member);
        if new {
            self.event(format!("meta-{member} leads term {term}"));
        }
    }

    /// Oracle c: the entry `member` applied last must have the log id every other member
    /// applied at that index.
    fn saw_applied(&self, member: usize, state: &MetadataState) {
        let Some(id) = state.last_applied else { return };
        let conflict = {
            let mut ids = self.applied_ids.lock().expect("applied ids");
            match ids.get(&id.index) {
                Some((first, first_member)) if *first != id => Some((*first, *first_member)),
                Some(_) => None,
                None => {
                    ids.insert(id.index, (id, member));
                    None
                }
            }
        };
        if let Some((first, first_member)) = conflict {
            self.violate_once(
                format!("index {}", id.index),
                "c-log-matching",
                format!("index {} applied as {first} on meta-{first_member} but as {id} on meta-{member}", id.index),
            );
        }
    }

    /// Oracle d: `member`'s applied state must not be behind anything it showed before.
    fn saw_state(&self, member: usize, state: &MetadataState) {
        let now = watermarks(state);
        let mut all = self.marks.lock().expect("marks");
        let before = all.entry(member).or_default();
        let mut regressions = Vec::new();
        for (what, seen) in before.iter() {
            match now.get(what) {
                Some(value) if value >= seen => {}
                Some(value) => regressions.push(format!("{what} went from {seen} to {value}")),
                None => regressions.push(format!("{what} ({seen}) disappeared")),
            }
        }
        for (what, value) in now {
            let entry = before.entry(what).or_default();
            *entry = (*entry).max(value);
        }
        drop(all);
        for regression in regressions {
            self.violate_once(
                format!("{member} {regression}"),
                "d-monotonic",
                format!("meta-{member}: {regression}"),
            );
        }
    }
}

/// One member: its machine, disk and clock (which outlive its processes) and the live
/// `RaftNode` of the current incarnation.
struct Member {
    index: usize,
    handle: NodeHandle,
    fs: SimFs,
    clock: Arc<SimClock>,
    live: Arc<Mutex<Option<Arc<RaftNode>>>>,
    start_error: Arc<Mutex<Option<String>>>,
}

impl Member {
    fn node(&self) -> Option<Arc<RaftNode>> {
        self.live.lock().expect("live").clone()
    }

    /// A handle that spawns on the member's *current* incarnation. The `NodeHandle` kept from
    /// `build()` spawns on the first incarnation forever: after a restart its tasks are
    /// dropped at once (madsim 0.2.34: the handle holds the `NodeInfo` it was built with, and
    /// `restart` replaces it). `Handle::get_node` reads the current one.
    fn spawner(&self) -> NodeHandle {
        Handle::current().get_node(self.handle.id()).expect("the member's machine exists")
    }
}

struct MetaCluster {
    handle: Handle,
    members: Vec<Member>,
}

/// The raft configuration every member runs (docs/design/simulation.md § metadata).
fn member_config(index: usize) -> RaftNodeConfig {
    let mut config = RaftNodeConfig::new(member_id(index), member_node(index), "raft").with_snapshot_every(SNAPSHOT_EVERY_ENTRIES);
    config.raft.heartbeat_interval = 50;
    config.raft.election_timeout_min = 300;
    config.raft.election_timeout_max = 600;
    config.transport.snapshot_chunk_bytes = SNAPSHOT_CHUNK_BYTES;
    config
}

/// One incarnation of member `index`: starts its `RaftNode` on the machine's disk, then
/// follows its metrics and applied state for oracles c and d until the machine dies.
async fn run_member(shared: Arc<Shared>, index: usize, disk: Arc<dyn FileSystem>, live: Arc<Mutex<Option<Arc<RaftNode>>>>, start_error: Arc<Mutex<Option<String>>>) {
    let listener = tokio::net::TcpListener::bind(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), GRPC_PORT)).await.expect("bind the raft port");
    let node = match RaftNode::start(member_config(index), disk, listener).await {
        Ok(node) => Arc::new(node),
        Err(error) => {
            shared.event(format!("meta-{index} failed to start: {error}"));
            *start_error.lock().expect("start error") = Some(error.to_string());
            return std::future::pending().await;
        }
    };
    *start_error.lock().expect("start error") = None;
    *live.lock().expect("live") = Some(node.clone());
    shared.event(format!("meta-{index} started"));
    let mut metrics = node.raft().metrics();
    let mut applied_seen = None;
    loop {
        let (term, leading, applied) = {
            let m = metrics.borrow();
            (m.current_term, m.state.is_leader(), m.last_applied.map(|id| id.index))
        };
        if leading {
            shared.saw_leader(index, term);
        }
        if applied != applied_seen || applied_seen.is_none() {
            applied_seen = applied;
            let state = node.local_read().state;
            shared.saw_applied(index, &state);
            shared.saw_state(index, &state);
        }
        if metrics.changed().await.is_err() {
            return std::future::pending().await;
        }
    }
}

impl MetaCluster {
    fn start(shared: &Arc<Shared>, schedule: &Schedule) -> MetaCluster {
        let handle = Handle::current();
        let config = &shared.config;
        let members = (0..MEMBERS)
            .map(|index| {
                let fs = SimFs::new(config.seed.wrapping_mul(1_000_003).wrapping_add(500 + index as u64));
                let clock = Arc::new(SimClock::new(schedule.node_skew_ms.get(index).copied().unwrap_or(0), schedule.node_drift_ppm.get(index).copied().unwrap_or(0)));
                let live = Arc::new(Mutex::new(None));
                let start_error = Arc::new(Mutex::new(None));
                let unsynced = config.planted_bug == Some(PlantedBug::RaftLogUnsynced);
                let node_handle = {
                    let (shared, fs, live, start_error) = (shared.clone(), fs.clone(), live.clone(), start_error.clone());
                    handle
                        .create_node()
                        .name(format!("meta-{index}"))
                        .ip(IpAddr::V4(member_ip(index)))
                        .init(move || {
                            let disk: Arc<dyn FileSystem> = if unsynced { Arc::new(UnsyncedLogFs { inner: fs.clone() }) } else { Arc::new(fs.clone()) };
                            run_member(shared.clone(), index, disk, live.clone(), start_error.clone())
                        })
                        .build()
                };
                Member {
                    index,
                    handle: node_handle,
                    fs,
                    clock,
                    live,
                    start_error,
                }
            })
            .collect();
        MetaCluster { handle, members }
    }

    fn kill(&self, index: usize) {
        self.handle.kill(self.members[index].handle.id());
        self.members[index].live.lock().expect("live").take();
    }

    fn restart(&self, index: usize) {
        self.handle.restart(self.members[index].handle.id());
    }

    /// Cuts the power of member `index`'s disk; returns (bytes lost, bytes of garbage).
    fn power_cut(&self, index: usize, kind: CrashKind) -> (u64, u64) {
        let fs = &self.members[index].fs;
        let before = fs.stats();
        let crash_mode = match kind {
            CrashKind::Torn => CrashMode::Torn,
            CrashKind::DropUnsynced => CrashMode::DropUnsynced,
        };
        fs.set_faults(FaultConfig { crash_mode, ..fs.faults() });
        fs.crash();
        let after = fs.stats();
        (after.bytes_lost_on_crash - before.bytes_lost_on_crash, after.bytes_garbage_on_crash - before.bytes_garbage_on_crash)
    }

    /// Cuts (or heals) every link between member `index` and the other members, both ways.
    fn partition(&self, index: usize, cut: bool) {
        let net = NetSim::current();
        let a = self.members[index].handle.id();
        for other in self.members.iter().filter(|m| m.index != index) {
            crate::cluster::clog_both(&net, a, other.handle.id(), cut);
        }
    }

    /// The leader as the first live member that knows one reports it (member index).
    fn leader(&self) -> Option<usize> {
        self.members.iter().filter_map(|m| m.node()).find_map(|node| {
            let leader = node.raft().metrics().borrow().current_leader?;
            let index = (leader - 1) as usize;
            (index < self.members.len()).then_some(index)
        })
    }
}

/// Draws one command of the workload for write `id`. Names repeat across writes (so later
/// writes replace earlier ones and versions move), values are unique to the write.
fn draw_command(rng: &mut DeterministicRng, id: &str, sequence: u64, at_ms: i64) -> Command {
    let action = match rng.gen_range(0..5u32) {
        0 => Action::PutRuleGroup {
            group: RuleGroup {
                name: format!("group-{}", rng.gen_range(0..4u32)),
                interval: None,
                limit: None,
                rules: vec![Rule {
                    record: Some(format!("sim:write_{}", id.replace('-', "_"))),
                    expr: format!("sum(rate(sim_requests_total[{}m]))", 1 + sequence % 5),
                    ..Rule::default()
                }],
            },
        },
        1 => {
            let uid = format!("dash-{}", rng.gen_range(0..3u32));
            Action::PutDashboard {
                title: format!("written by {id}"),
                json: format!("{{\"uid\":\"{uid}\",\"title\":\"written by {id}\",\"panels\":[]}}"),
                uid,
            }
        }
        2 => Action::PutTenantLimits {
            tenant: format!("tenant-{}", rng.gen_range(0..3u32)),
            limits: TenantLimits {
                series_per_metric_max: 1_000 + sequence,
                series_per_tenant_max: 10_000 + sequence,
                ingest_rate_samples_per_s_max: 5_000,
                query_samples_max: 1_000_000,
                query_series_max: 10_000,
                query_range_ms_max: 86_400_000,
                query_timeout_ms: 30_000,
            },
        },
        3 => {
            let primary = rng.gen_range(1..=MEMBERS as NodeId);
            let secondary = primary % MEMBERS as NodeId + 1;
            Action::AssignShard {
                shard: rng.gen_range(0..SHARDS),
                assignment: ShardAssignment {
                    primary: Some(primary),
                    secondary: Some(secondary),
                },
            }
        }
        _ => Action::SetRetention {
            tenant: format!("tenant-{}", rng.gen_range(0..3u32)),
            retention_ms: 3_600_000 + sequence as i64,
        },
    };
    Command {
        who: id.to_string(),
        at_ms,
        action,
    }
}

/// Proposes `command` through member `target` (the call runs on its machine, as the node's
/// admin service would run it), within the client's timeout.
async fn propose(shared: &Shared, cluster: &MetaCluster, target: usize, command: Command) -> WriteOutcome {
    let Some(node) = cluster.members[target].node() else {
        return WriteOutcome::Refused(format!("meta-{target} is down"));
    };
    let task = cluster.members[target].spawner().spawn(async move { node.client_write(command).await });
    match tokio::time::timeout(Duration::from_millis(shared.config.request_timeout_ms), task).await {
        Err(_) => WriteOutcome::Unknown("timed out".into()),
        Ok(Err(error)) => WriteOutcome::Unknown(format!("the member died during the call: {error:?}")),
        Ok(Ok(Ok(response))) => WriteOutcome::Acked {
            index: response.index,
            applied: response.outcome == Outcome::Applied,
        },
        Ok(Ok(Err(WriteError::NotLeader { leader_id, .. }))) => WriteOutcome::Refused(format!("not the leader (leader {leader_id:?})")),
        Ok(Ok(Err(WriteError::Invalid(error)))) => WriteOutcome::Refused(format!("invalid: {error}")),
        Ok(Ok(Err(error))) => WriteOutcome::Unknown(error.to_string()),
    }
}

/// A client: proposes a command through a member drawn at random, then waits a little.
async fn client_loop(shared: Arc<Shared>, cluster: Arc<MetaCluster>, client: usize) {
    let mut rng = DeterministicRng::from_seed(shared.config.seed).fork(&format!("meta-client-{client}"));
    sleep_ms(rng.gen_range(100..=1_000)).await;
    let mut sequence = 0u64;
    while !shared.stop.load(Ordering::SeqCst) {
        let target = rng.gen_range(0..MEMBERS);
        let id = format!("c{client}-{sequence}");
        sequence += 1;
        if shared.decommissioned.lock().expect("decommissioned").contains(&target) {
            continue;
        }
        // The proposer stamps the audit time from its own clock (skewed, maybe stepped).
        let at_ms = cluster.members[target].clock.now_wall_ms();
        let command = draw_command(&mut rng, &id, sequence, at_ms);
        shared.writes.lock().expect("writes").insert(
            id.clone(),
            WriteRecord {
                command: command.clone(),
                outcome: WriteOutcome::Pending,
                acked_at_ms: None,
            },
        );
        let outcome = propose(&shared, &cluster, target, command).await;
        shared.event(format!("{id} via meta-{target}: {outcome:?}"));
        match &outcome {
            WriteOutcome::Acked { .. } if shared.quiet.load(Ordering::SeqCst) => *shared.quiet_acks.lock().expect("quiet") += 1,
            WriteOutcome::Unknown(_) => shared.count("client: writes with an unknown outcome (timeout, member died)", 1),
            WriteOutcome::Refused(reason) if reason.starts_with("invalid") => {
                shared.violate("workload", format!("{id} was refused as invalid (a harness bug): {reason}"));
            }
            _ => {}
        }
        let acked_at_ms = matches!(outcome, WriteOutcome::Acked { .. }).then(now_ms);
        {
            let mut writes = shared.writes.lock().expect("writes");
            let record = writes.get_mut(&id).expect("recorded");
            record.outcome = outcome;
            record.acked_at_ms = acked_at_ms;
        }
        sleep_ms(rng.gen_range(200..=1_200)).await;
    }
}

/// Readers per run (oracle f).
const READERS: usize = 2;

/// A reader: asks a member (the one it believes leads, four times in five) for a linearizable
/// read on that member's machine, as the admin service would, and records what it answered.
async fn reader_loop(shared: Arc<Shared>, cluster: Arc<MetaCluster>, reader: usize) {
    let mut rng = DeterministicRng::from_seed(shared.config.seed).fork(&format!("meta-reader-{reader}"));
    let stale = shared.config.planted_bug == Some(PlantedBug::StaleAdminRead);
    sleep_ms(rng.gen_range(100..=1_000)).await;
    let mut sequence = 0u64;
    while !shared.stop.load(Ordering::SeqCst) {
        let target = match cluster.leader() {
            Some(leader) if rng.gen_bool(0.8) => leader,
            _ => rng.gen_range(0..MEMBERS),
        };
        let id = format!("r{reader}-{sequence}");
        sequence += 1;
        if let Some(node) = cluster.members[target].node() {
            let invoked_at_ms = now_ms();
            let task = cluster.members[target].spawner().spawn(async move {
                let read = if stale { Ok(node.local_read()) } else { node.linearizable_read().await };
                read.map(|read| {
                    let mut hasher = Xxh64::new(0);
                    hasher.update(&encode_state(&read.state));
                    (read.applied_index, hasher.digest())
                })
            });
            match tokio::time::timeout(Duration::from_millis(shared.config.request_timeout_ms), task).await {
                Ok(Ok(Ok((index, state_hash)))) => {
                    let completed_at_ms = now_ms();
                    shared.event(format!("{id} via meta-{target}: index {index} state {state_hash:016x}"));
                    shared.count("reader: linearizable reads answered", 1);
                    shared.reads.lock().expect("reads").push(ObservedRead { id, member: target, invoked_at_ms, completed_at_ms, index, state_hash });
                }
                Ok(Ok(Err(error))) => {
                    shared.event(format!("{id} via meta-{target}: {error}"));
                    shared.count("reader: reads refused (not the leader, raft error)", 1);
                }
                Ok(Err(_)) | Err(_) => shared.count("reader: reads with no answer (timeout, member died)", 1),
            }
        }
        sleep_ms(rng.gen_range(100..=700)).await;
    }
}

/// Oracle f over the whole run's history.
fn check_linearizable(shared: &Shared) {
    let writes: Vec<AckedWrite> = shared
        .writes
        .lock()
        .expect("writes")
        .iter()
        .filter_map(|(id, record)| match (&record.outcome, record.acked_at_ms) {
            (WriteOutcome::Acked { index, .. }, Some(acked_at_ms)) => Some(AckedWrite { id: id.clone(), index: *index, acked_at_ms }),
            _ => None,
        })
        .collect();
    let reads = shared.reads.lock().expect("reads").clone();
    if reads.is_empty() {
        shared.violate("f-linearizable-reads", "no read was answered during the whole run".into());
    }
    // A few lines of evidence are enough; the trace has the rest.
    for evidence in crate::linearizable::check(&writes, &reads).into_iter().take(5) {
        shared.violate("f-linearizable-reads", evidence);
    }
}

/// Runs `call` on the current leader's machine until it succeeds or the deadline passes.
async fn on_leader<F, Fut, T>(shared: &Shared, cluster: &MetaCluster, what: &str, call: F) -> Option<T>
where
    F: Fn(Arc<RaftNode>) -> Fut,
    Fut: std::future::Future<Output = Result<T, String>> + Send + 'static,
    T: Send + 'static,
{
    let deadline = now_ms() + MEMBERSHIP_DEADLINE_MS;
    while now_ms() < deadline {
        let leader = cluster.leader();
        if let Some(node) = leader.and_then(|index| cluster.members[index].node()) {
            let index = leader.expect("a leader");
            let task = cluster.members[index].spawner().spawn(call(node));
            match tokio::time::timeout(Duration::from_millis(MEMBERSHIP_CALL_TIMEOUT_MS), task).await {
                Ok(Ok(Ok(value))) => return Some(value),
                Ok(Ok(Err(error))) => shared.event(format!("operator: {what} at meta-{index}: {error}")),
                Ok(Err(error)) => shared.event(format!("operator: {what} at meta-{index}: the member died: {error:?}")),
                Err(_) => shared.event(format!("operator: {what} at meta-{index}: timed out")),
            }
        }
        sleep_ms(500).await;
    }
    shared.event(format!("operator: gave up on {what}"));
    None
}

/// The operator: creates the shard map, adds the joiner once the log is purged behind a
/// snapshot, later removes one of the first members and shuts it down.
async fn operator(shared: Arc<Shared>, cluster: Arc<MetaCluster>) {
    let mut rng = DeterministicRng::from_seed(shared.config.seed).fork("meta-operator");
    let assignments = (0..SHARDS)
        .map(|shard| {
            let primary = shard as NodeId % 3 + 1;
            (shard, ShardAssignment { primary: Some(primary), secondary: Some(primary % 3 + 1) })
        })
        .collect();
    let create = Command {
        who: "operator".into(),
        at_ms: cluster.members[0].clock.now_wall_ms(),
        action: Action::CreateShardMap { shard_count: SHARDS, assignments },
    };
    let created = on_leader(&shared, &cluster, "create the shard map", move |node| {
        let create = create.clone();
        async move { node.client_write(create).await.map_err(|e| e.to_string()) }
    })
    .await;
    shared.event(format!("operator: shard map created: {created:?}"));

    let join_at_ms = rng.gen_range(5_000..=shared.config.fault_phase_ms / 2);
    sleep_ms(join_at_ms.saturating_sub(now_ms())).await;
    let joined = on_leader(&shared, &cluster, "add meta-3", |node| async move {
        let purged = node.raft().metrics().borrow().purged;
        if purged.is_none() {
            return Err("the leader has not purged its log yet".to_string());
        }
        node.add_node(member_id(JOINER), member_node(JOINER)).await.map_err(|e| e.to_string())
    })
    .await;
    let Some(log_id) = joined else { return };
    shared.event(format!("operator: meta-3 is a voter at index {}", log_id.index));
    shared.count("membership: members added (by snapshot)", 1);
    if let Some(node) = cluster.members[JOINER].node() {
        let metrics = node.raft().metrics().borrow().clone();
        if metrics.snapshot.is_some() {
            let bytes = encode_state(&node.local_read().state).len() as u64;
            shared.count("membership: snapshot chunks sent to the joiner (at least)", bytes.div_ceil(SNAPSHOT_CHUNK_BYTES));
        }
    }

    sleep_ms(rng.gen_range(2_000..=8_000)).await;
    let victim = rng.gen_range(0..3usize);
    let removed = on_leader(&shared, &cluster, &format!("remove meta-{victim}"), move |node| async move {
        node.remove_node(member_id(victim)).await.map_err(|e| e.to_string())
    })
    .await;
    if let Some(log_id) = removed {
        shared.event(format!("operator: meta-{victim} removed at index {}; shutting it down", log_id.index));
        shared.decommissioned.lock().expect("decommissioned").insert(victim);
        cluster.kill(victim);
        shared.count("membership: members removed", 1);
    }
}

/// Applies one fault and undoes it when it ends.
async fn apply(shared: Arc<Shared>, cluster: Arc<MetaCluster>, event: FaultEvent) {
    let fault = event.fault.clone();
    let mut node = fault.node();
    if let Fault::CrashLeader { .. } = fault {
        node = cluster.leader().unwrap_or(node);
    }
    let skip = |why: &str| shared.event(format!("fault skipped ({why}): {fault:?}"));
    if shared.decommissioned.lock().expect("decommissioned").contains(&node) {
        return skip("member removed");
    }
    shared.event(format!("fault at meta-{node}: {fault:?}"));
    match fault.clone() {
        Fault::Crash { mode, down_ms, .. } | Fault::CrashLeader { mode, down_ms, .. } => {
            if shared.paused.lock().expect("paused").contains(&node) || !shared.down.lock().expect("down").insert(node) {
                return skip("member paused or down");
            }
            if matches!(fault, Fault::CrashLeader { .. }) && cluster.leader() == Some(node) {
                shared.count("crash: leaders crashed", 1);
            }
            cluster.kill(node);
            let (lost, garbage) = cluster.power_cut(node, mode);
            shared.count("crash: unsynced bytes lost", lost);
            shared.count("crash: garbage bytes after torn writes", garbage);
            shared.event(format!("meta-{node} crashed ({mode:?}): {lost} bytes lost, {garbage} garbage"));
            sleep_ms(down_ms).await;
            shared.down.lock().expect("down").remove(&node);
            if shared.decommissioned.lock().expect("decommissioned").contains(&node) {
                return;
            }
            cluster.restart(node);
            shared.count("crash: members restarted", 1);
            shared.event(format!("meta-{node} restarted"));
        }
        Fault::Pause { duration_ms, .. } => {
            if shared.down.lock().expect("down").contains(&node) || !shared.paused.lock().expect("paused").insert(node) {
                return skip("member down or paused");
            }
            cluster.handle.pause(cluster.members[node].handle.id());
            shared.count("pause: members paused", 1);
            sleep_ms(duration_ms).await;
            cluster.handle.resume(cluster.members[node].handle.id());
            shared.paused.lock().expect("paused").remove(&node);
            shared.event(format!("meta-{node} resumed"));
        }
        Fault::Partition { duration_ms, .. } => {
            let leading = cluster.leader() == Some(node);
            cluster.partition(node, true);
            shared.count(if leading { "partition: leader isolated" } else { "partition: follower isolated" }, 1);
            sleep_ms(duration_ms).await;
            cluster.partition(node, false);
            shared.event(format!("meta-{node} healed"));
        }
        Fault::ClockJump { delta_ms, .. } => {
            cluster.members[node].clock.jump(delta_ms);
            shared.count("jump: proposer clock steps applied", 1);
        }
        _ => skip(&format!("{} does not apply to the metadata group", fault.kind())),
    }
}

/// The members of the final membership (voters and learners), by the first live member's view.
fn final_members(cluster: &MetaCluster) -> Vec<usize> {
    let Some(node) = cluster.members.iter().filter_map(|m| m.node()).max_by_key(|n| n.local_read().applied_index) else {
        return Vec::new();
    };
    let state = node.local_read().state;
    let membership = state.membership.membership();
    let mut members: Vec<usize> = membership.voter_ids().chain(membership.learner_ids()).map(|id| (id - 1) as usize).filter(|i| *i < MEMBERS).collect();
    members.sort_unstable();
    members.dedup();
    members
}

/// Waits until every final member is up and all are at one applied index; returns their
/// states (member → encoded state), or what kept them apart.
async fn converge(shared: &Shared, cluster: &MetaCluster, phase: &str) -> Result<BTreeMap<usize, MetadataState>, String> {
    let deadline = now_ms() + CONVERGE_MS_MAX;
    let mut last = String::new();
    while now_ms() < deadline {
        let members = final_members(cluster);
        let states: BTreeMap<usize, Option<MetadataState>> = members.iter().map(|i| (*i, cluster.members[*i].node().map(|n| n.local_read().state))).collect();
        let indexes: BTreeMap<usize, Option<u64>> = states.iter().map(|(i, s)| (*i, s.as_ref().map(|s| s.last_applied.map(|id| id.index).unwrap_or(0)))).collect();
        let distinct: BTreeSet<Option<u64>> = indexes.values().copied().collect();
        if !members.is_empty() && distinct.len() == 1 && !distinct.contains(&None) {
            shared.event(format!("{phase}: members {members:?} converged at index {:?}", distinct.first()));
            return Ok(states.into_iter().map(|(i, s)| (i, s.expect("live"))).collect());
        }
        last = format!("members {members:?} applied indexes {indexes:?} (None: down)");
        sleep_ms(200).await;
    }
    Err(last)
}

/// Oracles a and b on the converged states.
fn check_states(shared: &Shared, states: &BTreeMap<usize, MetadataState>, phase: &str) {
    let encoded: BTreeMap<usize, Vec<u8>> = states.iter().map(|(i, s)| (*i, encode_state(s))).collect();
    let distinct: BTreeSet<&Vec<u8>> = encoded.values().collect();
    if distinct.len() > 1 {
        let sizes: Vec<String> = encoded.iter().map(|(i, b)| format!("meta-{i}: {} bytes, xxh64 {:016x}", b.len(), xxhash_rust::xxh64::xxh64(b, 0))).collect();
        shared.violate("b-converged", format!("{phase}: members at the same applied index hold different states: {}", sizes.join("; ")));
    }
    let writes = shared.writes.lock().expect("writes").clone();
    for (id, record) in &writes {
        let WriteOutcome::Acked { index, applied } = record.outcome else { continue };
        for (member, state) in states {
            let applied_index = state.last_applied.map(|l| l.index).unwrap_or(0);
            if applied_index < index {
                shared.violate("a-acked-durable", format!("{phase}: {id} was acked at index {index} but meta-{member} has applied only {applied_index}"));
                continue;
            }
            if applied && !state.audit.iter().any(|a| a.index == index && a.who == *id) {
                shared.violate(
                    "a-acked-durable",
                    format!("{phase}: {id} ({:?}) was acked as applied at index {index} but meta-{member}'s audit trail has no such entry", record.command.action),
                );
            }
        }
    }
}

/// What a metadata run returns to `run::run`.
pub struct MetaOutcome {
    pub violations: Vec<TimedViolation>,
    pub effective: BTreeMap<String, u64>,
    pub trace_hash: u64,
    pub writes_acked: u64,
}

/// One metadata run (inside the madsim runtime).
pub async fn simulate(options: RunOptions, config: SimConfig, schedule: Schedule) -> MetaOutcome {
    let shared = Arc::new(Shared::new(config.clone(), options.verbose));
    shared.event(format!("seed {} scenario {} schedule {}", config.seed, config.scenario, schedule.to_json()));
    simulate_with(shared, config, schedule).await
}

impl Shared {
    fn new(config: SimConfig, verbose: bool) -> Shared {
        Shared {
        config,
        trace: Mutex::new(Xxh64::new(0)),
        verbose,
        violations: Mutex::new(Vec::new()),
        reported: Mutex::new(BTreeSet::new()),
        effective: Mutex::new(BTreeMap::new()),
        stop: AtomicBool::new(false),
        quiet: AtomicBool::new(false),
        quiet_acks: Mutex::new(0),
        writes: Mutex::new(BTreeMap::new()),
        leaders: Mutex::new(BTreeMap::new()),
        applied_ids: Mutex::new(BTreeMap::new()),
        marks: Mutex::new(BTreeMap::new()),
        decommissioned: Mutex::new(BTreeSet::new()),
        down: Mutex::new(BTreeSet::new()),
        paused: Mutex::new(BTreeSet::new()),
        reads: Mutex::new(Vec::new()),
        }
    }
}

async fn simulate_with(shared: Arc<Shared>, config: SimConfig, schedule: Schedule) -> MetaOutcome {
    let cluster = Arc::new(MetaCluster::start(&shared, &schedule));
    // Wait for the members to serve, then bootstrap the first three as voters.
    let mut first = None;
    for _ in 0..1_000 {
        first = cluster.members[0].node();
        if first.is_some() && (1..MEMBERS).all(|i| cluster.members[i].node().is_some()) {
            break;
        }
        sleep_ms(10).await;
    }
    let first = first.expect("meta-0 started");
    let voters: BTreeMap<NodeId, Node> = (0..3).map(|i| (member_id(i), member_node(i))).collect();
    let init = cluster.members[0].handle.spawn(async move { first.initialize(voters).await });
    if let Ok(Err(error)) | Err(error) = init.await.map_err(|e| e.to_string()) {
        shared.violate("e-liveness", format!("initialising the cluster failed: {error}"));
    }

    let mut tasks = Vec::new();
    for client in 0..config.writers {
        tasks.push(tokio::spawn(client_loop(shared.clone(), cluster.clone(), client)));
    }
    for reader in 0..READERS {
        tasks.push(tokio::spawn(reader_loop(shared.clone(), cluster.clone(), reader)));
    }
    let operator_task = tokio::spawn(operator(shared.clone(), cluster.clone()));

    let mut faults = Vec::new();
    for event in schedule.events.clone() {
        sleep_ms(event.at_ms.saturating_sub(now_ms())).await;
        faults.push(tokio::spawn(apply(shared.clone(), cluster.clone(), event)));
    }
    for fault in faults {
        let _ = fault.await;
    }
    sleep_ms(config.fault_phase_ms.saturating_sub(now_ms())).await;
    let _ = operator_task.await;

    // Quiet phase: no faults; members that failed to start are a finding (no disk faults
    // are injected here, so nothing excuses it).
    shared.event("quiet phase".into());
    // BUGGIFY is fault injection too: off while liveness and convergence are judged.
    sextant_core::determinism::buggify_enable(false);
    shared.quiet.store(true, Ordering::SeqCst);
    sleep_ms(config.quiet_phase_ms).await;
    shared.stop.store(true, Ordering::SeqCst);
    for task in tasks {
        let _ = task.await;
    }
    if *shared.quiet_acks.lock().expect("quiet") == 0 {
        shared.violate("e-liveness", "no write proposed in the quiet phase was acknowledged".into());
    }
    check_linearizable(&shared);

    for phase in ["after the quiet phase", "after every member lost power at once"] {
        if phase.starts_with("after every") {
            // Everything acknowledged was fsynced on a majority: it survives every member
            // losing power at once (torn tails).
            for index in final_members(&cluster) {
                cluster.kill(index);
                let (lost, garbage) = cluster.power_cut(index, CrashKind::Torn);
                shared.event(format!("final power cut meta-{index}: {lost} bytes lost, {garbage} garbage"));
                cluster.restart(index);
            }
        }
        for member in &cluster.members {
            if let Some(error) = member.start_error.lock().expect("start error").clone() {
                if !shared.decommissioned.lock().expect("decommissioned").contains(&member.index) {
                    shared.violate("e-liveness", format!("{phase}: meta-{} cannot start: {error}", member.index));
                }
            }
        }
        match converge(&shared, &cluster, phase).await {
            Ok(states) => check_states(&shared, &states, phase),
            Err(evidence) => {
                // Say why, member by member, before giving up on this phase. A final member
                // that cannot start holds none of the acknowledged writes in an applied state.
                let mut why = evidence;
                let acked: Vec<u64> = shared.writes.lock().expect("writes").values().filter_map(|w| match w.outcome {
                    WriteOutcome::Acked { index, .. } => Some(index),
                    _ => None,
                }).collect();
                for member in &cluster.members {
                    if let Some(error) = member.start_error.lock().expect("start error").clone() {
                        why.push_str(&format!("; meta-{} cannot start: {error}", member.index));
                        if !acked.is_empty() && !shared.decommissioned.lock().expect("decommissioned").contains(&member.index) {
                            shared.violate(
                                "a-acked-durable",
                                format!("{phase}: meta-{} has none of the {} acknowledged writes (up to index {}) applied: it cannot start: {error}", member.index, acked.len(), acked.iter().max().copied().unwrap_or(0)),
                            );
                        }
                    }
                }
                shared.violate("b-converged", format!("{phase}: members did not converge within {CONVERGE_MS_MAX} ms: {why}"));
            }
        }
    }

    let terms = shared.leaders.lock().expect("leaders").len() as u64;
    shared.count("elections: terms with a leader", terms);
    let mut hasher = shared.trace.lock().expect("trace").clone();
    for member in &cluster.members {
        for (path, bytes) in member.fs.durable_snapshot() {
            hasher.update(path.to_string_lossy().as_bytes());
            hasher.update(&(bytes.len() as u64).to_le_bytes());
            hasher.update(&bytes);
        }
        if let Some(node) = member.node() {
            hasher.update(&encode_state(&node.local_read().state));
        }
    }
    let writes_acked = shared.writes.lock().expect("writes").values().filter(|w| matches!(w.outcome, WriteOutcome::Acked { .. })).count() as u64;
    shared.count("client: writes acked", writes_acked);
    let violations = shared.violations.lock().expect("violations").clone();
    let effective = shared.effective.lock().expect("effective").clone();
    MetaOutcome {
        violations,
        effective,
        trace_hash: hasher.digest(),
        writes_acked,
    }
}

/// The metadata scenario's fault schedule, drawn from the seed: per-member clock skew and
/// drift (the proposers' audit stamps), then crashes (half of them aimed at whoever leads),
/// pauses, partitions isolating one member, and proposer clock jumps, all within the fault
/// phase. Kinds this scenario cannot inject (disk faults, writer clogs) are not drawn.
pub fn draw_schedule(config: &SimConfig, kinds: &BTreeSet<FaultKind>) -> Schedule {
    let mut rng = DeterministicRng::from_seed(config.seed).fork("metadata-schedule");
    let node_skew_ms = (0..MEMBERS).map(|_| rng.gen_range(-config.clock_skew_ms_max..=config.clock_skew_ms_max)).collect();
    let node_drift_ppm = (0..MEMBERS).map(|_| rng.gen_range(-config.clock_drift_ppm_max..=config.clock_drift_ppm_max)).collect();
    let usable: Vec<FaultKind> = kinds.iter().copied().filter(|k| matches!(k, FaultKind::Crash | FaultKind::Pause | FaultKind::Partition | FaultKind::Jump)).collect();
    let mut events = Vec::new();
    if !usable.is_empty() {
        let count = rng.gen_range(2..=(8 * config.fault_phase_ms / 60_000).max(2));
        let start_max = config.fault_phase_ms * 4 / 5;
        for _ in 0..count {
            let at_ms = rng.gen_range(1_000..=start_max.max(1_001));
            let node = rng.gen_range(0..MEMBERS);
            let room_ms = config.fault_phase_ms - at_ms;
            let duration_ms = rng.gen_range(500..=room_ms.clamp(501, 10_000));
            let mode = if rng.gen_bool(0.5) { CrashKind::Torn } else { CrashKind::DropUnsynced };
            let down_ms = rng.gen_range(10..=room_ms.clamp(11, 5_000));
            let fault = match usable[rng.gen_range(0..usable.len())] {
                FaultKind::Crash if rng.gen_bool(0.5) => Fault::CrashLeader { node, mode, down_ms },
                FaultKind::Crash => Fault::Crash { node, mode, down_ms },
                FaultKind::Pause => Fault::Pause { node, duration_ms: duration_ms.min(5_000) },
                FaultKind::Partition => Fault::Partition { node, duration_ms },
                _ => Fault::ClockJump {
                    node,
                    delta_ms: rng.gen_range(-15 * 60_000..=15 * 60_000),
                },
            };
            events.push(FaultEvent { at_ms, fault });
        }
    }
    events.sort_by_key(|e| e.at_ms);
    Schedule {
        node_skew_ms,
        node_drift_ppm,
        events: crate::schedule::drop_clashing_faults(events),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sextant_raft::state::Retention;

    // Goal: oracles c and d can fail. Method: feed the recorders what a monitor would see —
    // one index applied under two log ids; a version that goes back, then an object that
    // vanishes — and check each is reported once, under its oracle, while legal sequences
    // (two leaders of one term, as openraft allows) are not.
    #[madsim::test]
    async fn log_matching_and_monotonic_oracles_fire() {
        let shared = Shared::new(SimConfig::new(1, crate::config::Scenario::Metadata), false);
        let oracles = |shared: &Shared| shared.violations.lock().unwrap().iter().map(|v| v.oracle.clone()).collect::<Vec<_>>();
        let applied = |term: u64, node: u64, index: u64| {
            let mut state = MetadataState::default();
            let json = format!(r#"{{"leader_id":{{"term":{term},"node_id":{node}}},"index":{index}}}"#);
            state.last_applied = Some(serde_json::from_str(&json).expect("a log id"));
            state
        };
        shared.saw_leader(0, 3);
        shared.saw_leader(1, 3);
        shared.saw_applied(0, &applied(3, 1, 5));
        shared.saw_applied(1, &applied(3, 1, 5));
        shared.saw_applied(1, &applied(3, 2, 6));
        shared.saw_applied(2, &applied(3, 2, 6));
        assert!(oracles(&shared).is_empty());
        shared.saw_applied(2, &applied(3, 1, 6));
        shared.saw_applied(0, &applied(4, 1, 6));
        assert_eq!(oracles(&shared), vec!["c-log-matching"]);

        let with_retention = |version: Option<u64>| {
            let mut state = MetadataState::default();
            if let Some(version) = version {
                state.retention.insert("tenant-0".into(), Retention { retention_ms: 1, version });
            }
            state
        };
        shared.saw_state(0, &with_retention(Some(10)));
        shared.saw_state(0, &with_retention(Some(12)));
        // Another member's lower version is not a regression of this one.
        shared.saw_state(1, &with_retention(Some(5)));
        assert_eq!(oracles(&shared).len(), 1);
        shared.saw_state(0, &with_retention(Some(11)));
        shared.saw_state(0, &with_retention(None));
        let all = oracles(&shared);
        assert_eq!(all, vec!["c-log-matching", "d-monotonic", "d-monotonic"], "{:?}", shared.violations.lock().unwrap());
    }
}
