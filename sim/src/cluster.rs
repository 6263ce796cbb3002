//! The simulated cluster: real Sextant nodes on madsim, their disks and clocks, and the
//! client machines.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use madsim::runtime::{Handle, NodeHandle};
use sextant::config::{ClusterConfig, Formation, ServeConfig};
use sextant::node::{EngineSlot, Node};
use sextant::server::{NodeEnv, Running};
use sextant_raft::RaftHandle;
use sextant_storage::acceptance::AcceptanceConfig;
use sextant_storage::engine::{Engine, EngineConfig};
use sextant_storage::fs::sim::{CrashMode, FaultConfig, SimFs};
use sextant_storage::fs::FileSystem;
use sextant_storage::wal::{FsyncPolicy, WalConfig};
use tokio::net::TcpListener;

use crate::clock::SimClock;
use crate::config::{Scenario, SimConfig};
use crate::schedule::{CrashKind, Schedule};

/// The HTTP port of every node.
pub const HTTP_PORT: u16 = 9480;
/// The gRPC port of every node of the `replicated` scenario (raft, data, admin services).
pub const GRPC_PORT: u16 = 9481;
/// Connections one node serves at once.
const CONNECTIONS_MAX: usize = 64;

/// One Sextant node: the madsim machine, its disk and clock (both outlive the process), and
/// the live `Node` of the current incarnation (none while it is down or booting).
pub struct SimNode {
    pub index: usize,
    pub handle: NodeHandle,
    pub addr: SocketAddr,
    pub fs: SimFs,
    pub clock: Arc<SimClock>,
    pub live: Arc<Mutex<Option<Arc<Node>>>>,
    /// The current incarnation's metadata member (`replicated` scenario only).
    pub raft: Arc<Mutex<Option<RaftHandle>>>,
    /// The metadata member id the machine boots as (`replicated`): `index + 1` until its disk
    /// is wiped, then a new id it joins under (`--join`) while the old one counts as lost.
    pub member_id: Arc<Mutex<u64>>,
}

impl SimNode {
    /// The current incarnation, if it is up.
    pub fn node(&self) -> Option<Arc<Node>> {
        self.live.lock().expect("live lock").clone()
    }

    /// The current incarnation's metadata member, if it is up (`replicated` only).
    pub fn raft(&self) -> Option<RaftHandle> {
        self.raft.lock().expect("raft lock").clone()
    }

    /// The member id the machine boots (or runs) as.
    pub fn member_id(&self) -> u64 {
        *self.member_id.lock().expect("member id lock")
    }
}

/// The cluster: N independent Sextant nodes and the client machines.
///
/// | machine | madsim name | address | what runs there |
/// |---|---|---|---|
/// | node *i* (0-based) | `node-i` | `10.0.0.(i+1):9480` | `sextant::node::Node` + `sextant::http::router` served by `sextant::server::serve_http`, `Engine` on `SimFs` disk *i*, `SimClock` *i*, the maintenance loop |
/// | writer *w* | `writer-w` | `10.0.1.(w+1)` | remote-write client of node `w % N` |
/// | bomb | `bomb` | `10.0.2.1` | cardinality-bomb writer to node 0 |
/// | reader | `reader` | `10.0.3.1` | reads back every node over HTTP (`read_all`: `/api/v1/query`), runs the answer oracles |
/// | probe | `probe` | `10.0.4.1` | liveness probes (`/-/ready`, a write) |
/// | operator | `operator` | `10.0.5.1` | `sextant admin` over gRPC (`replicated`: replaces a member whose disk was wiped, sim/src/operator.rs) |
///
/// In the single-node scenarios each node is its own database and a client writes to one node.
/// In `replicated` each node is the whole `sextant serve` ([`sextant::server::Running`]): node
/// *i* is metadata member *i+1* with gRPC on `10.0.0.(i+1):9481` (raft, data, replication and
/// admin services), the three bootstrap the group with `--initial-cluster`, and the node a
/// writer sends to forwards each shard's series to its primary.
pub struct Cluster {
    pub handle: Handle,
    pub nodes: Vec<SimNode>,
    pub writers: Vec<NodeHandle>,
    pub bomb: NodeHandle,
    pub reader: NodeHandle,
    pub probe: NodeHandle,
    /// Only when the schedule wipes a disk: an extra machine shifts madsim's scheduling, and
    /// with it every pinned seed's run.
    pub operator: Option<NodeHandle>,
    pub config: SimConfig,
    /// Primary acknowledgements of the `replicated` nodes (oracle 8).
    pub acks: Arc<Mutex<AckLog>>,
}

/// The node configuration the simulation runs (see `SimConfig`'s table).
pub fn serve_config(config: &SimConfig, addr: SocketAddr) -> ServeConfig {
    let mut serve = ServeConfig {
        http_listen: addr,
        retention_ms: None,
        fsync: FsyncPolicy::Always,
        memory_bytes_max: config.memory_bytes_max,
        maintain_interval_ms: config.maintain_interval_ms,
        ..ServeConfig::default()
    };
    serve.acceptance = AcceptanceConfig {
        future_skew_ms_max: config.future_skew_ms_max,
        ..AcceptanceConfig::default()
    };
    serve.limits.series_per_metric_max = config.series_per_metric_max;
    serve.limits.series_per_tenant_max = config.series_per_tenant_max;
    if config.scenario == Scenario::Replicated {
        let grpc = |i: usize| SocketAddr::new(IpAddr::V4(node_ip(i)), GRPC_PORT);
        let index = (0..config.nodes).find(|&i| node_ip(i) == addr.ip()).expect("addr is a node's");
        serve.grpc_listen = grpc(index);
        serve.cluster = ClusterConfig {
            node_id: index as u64 + 1,
            advertise_grpc: Some(grpc(index).to_string()),
            advertise_http: Some(addr.to_string()),
            formation: Formation::Initial((0..config.nodes).map(|i| (i as u64 + 1, grpc(i).to_string())).collect()),
            shard_count: config.shards,
        };
    }
    if config.planted_bug == Some(crate::config::PlantedBug::AckBeforeFsync) {
        serve.fsync = FsyncPolicy::Interval { interval_ms: 10_000 };
    }
    serve
}

pub fn engine_config(config: &SimConfig, serve: &ServeConfig) -> EngineConfig {
    EngineConfig {
        shard_ids: (0..config.shards).collect(),
        wal: WalConfig {
            segment_bytes: config.wal_segment_bytes,
            fsync: serve.fsync,
            ..WalConfig::default()
        },
        acceptance: serve.acceptance,
        block_span_ms: config.block_span_ms,
        retention_ms: serve.retention_ms,
        memory_bytes_max: serve.memory_bytes_max,
        ..EngineConfig::default()
    }
}

/// One incarnation of a node, as `sextant serve` (`server::real::run`) assembles it, on the
/// simulated disk and clock. Runs until the machine is killed.
async fn run_node(serve: ServeConfig, engine_config: EngineConfig, fs: SimFs, clock: Arc<SimClock>, live: Arc<Mutex<Option<Arc<Node>>>>) {
    let node = Node::new(serve.clone(), clock.clone(), None);
    *live.lock().expect("live lock") = Some(node.clone());
    let listener = TcpListener::bind(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), serve.http_listen.port()))
        .await
        .expect("bind the node's HTTP port");
    // The sender lives as long as this task: the server stops only when the machine dies.
    let (_shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(sextant::server::serve_http(listener, sextant::http::router(node.clone()), shutdown_rx, CONNECTIONS_MAX));
    let disk: Arc<dyn FileSystem> = Arc::new(fs);
    match Engine::open(disk, clock, engine_config).await {
        Ok(engine) => node.set_engine_ready(engine).await,
        Err(error) => {
            tracing::error!(%error, "storage failed to open");
            node.set_engine(EngineSlot::Failed(error.to_string()));
        }
    }
    let interval = Duration::from_millis(serve.maintain_interval_ms.max(1) as u64);
    loop {
        tokio::time::sleep(interval).await;
        node.maintain().await;
    }
}

/// Every acknowledgement a node gave as a shard's primary (oracle 8), by (shard, epoch, node
/// id): (first, last) in simulated ns since the run started. Filled through the node's
/// [`sextant::node::AckObserver`] seam.
#[derive(Debug, Default)]
pub struct AckLog {
    pub spans: BTreeMap<(u32, u64, u64), (u64, u64)>,
    pub acks: u64,
    /// (shard, epoch) → when a node first applied a shard map with that epoch (simulated ns).
    pub epochs_applied: BTreeMap<(u32, u64), u64>,
}

impl AckLog {
    /// Oracle 8's evidence: pairs of (shard, epoch, node) spans of one shard that overlap in
    /// simulated time — two primaries acknowledging at once — or one epoch acknowledged by two
    /// nodes. Empty when there was no split brain.
    pub fn overlaps(&self) -> Vec<String> {
        let mut by_shard: BTreeMap<u32, Vec<(u64, u64, u64, u64)>> = BTreeMap::new();
        for (&(shard, epoch, node), &(first, last)) in &self.spans {
            by_shard.entry(shard).or_default().push((first, last, epoch, node));
        }
        let mut out = Vec::new();
        for (shard, mut spans) in by_shard {
            spans.sort();
            for (i, a) in spans.iter().enumerate() {
                for b in &spans[i + 1..] {
                    if b.0 > a.1 {
                        break;
                    }
                    if a.3 != b.3 || a.2 != b.2 {
                        out.push(format!(
                            "shard {shard}: node {} acknowledged at epoch {} from {:.3} s to {:.3} s while node {} acknowledged at epoch {} from {:.3} s to {:.3} s",
                            a.3, a.2, a.0 as f64 / 1e9, a.1 as f64 / 1e9, b.3, b.2, b.0 as f64 / 1e9, b.1 as f64 / 1e9
                        ));
                    }
                }
            }
            // A deposed primary: acknowledging at an epoch after a newer epoch of the shard was
            // applied anywhere. The leader promotes only after the old primary's lease has run
            // out by its own clock (with the drift margin), so a correct primary has stopped by
            // then — whether or not its successor has acknowledged anything yet.
            for &(_, last, epoch, node) in &spans {
                if let Some((&(_, newer), &applied)) = self.epochs_applied.range((shard, epoch + 1)..=(shard, u64::MAX)).next() {
                    if last > applied {
                        out.push(format!(
                            "shard {shard}: node {node} acknowledged at epoch {epoch} until {:.3} s, after epoch {newer} was applied at {:.3} s",
                            last as f64 / 1e9,
                            applied as f64 / 1e9
                        ));
                    }
                }
            }
            let mut nodes_of_epoch: BTreeMap<u64, BTreeSet<u64>> = BTreeMap::new();
            for &(_, _, epoch, node) in &spans {
                nodes_of_epoch.entry(epoch).or_default().insert(node);
            }
            for (epoch, nodes) in nodes_of_epoch.into_iter().filter(|(_, n)| n.len() > 1) {
                out.push(format!("shard {shard}: epoch {epoch} acknowledged by nodes {nodes:?}"));
            }
        }
        out
    }
}

/// The observer a node of `replicated` records its primary acknowledgements with.
fn ack_observer(log: Arc<Mutex<AckLog>>, node_id: u64) -> sextant::node::AckObserver {
    Arc::new(move |shard, epoch| {
        let now_ns = madsim::time::TimeHandle::current().elapsed().as_nanos() as u64;
        let mut log = log.lock().expect("ack log");
        log.acks += 1;
        let span = log.spans.entry((shard, epoch, node_id)).or_insert((now_ns, now_ns));
        span.1 = span.1.max(now_ns);
    })
}

/// One incarnation of a node of the `replicated` scenario: the whole `sextant serve`
/// ([`Running`]) on the simulated disk and clock, with the simulation's engine sizes. Runs
/// until the machine is killed.
// The machine's handles (live node, member, identity) are separate because the init closure
// clones each for every incarnation.
#[allow(clippy::too_many_arguments)]
async fn run_cluster_node(config: SimConfig, mut serve: ServeConfig, fs: SimFs, clock: Arc<SimClock>, live: Arc<Mutex<Option<Arc<Node>>>>, raft: Arc<Mutex<Option<RaftHandle>>>, acks: Arc<Mutex<AckLog>>, member_id: Arc<Mutex<u64>>) {
    // A machine whose disk was wiped comes back as a new member that waits to be added
    // (`sextant serve --node-id N --join`), at the same addresses.
    let id = *member_id.lock().expect("member id lock");
    if id != serve.cluster.node_id {
        serve.cluster.node_id = id;
        serve.cluster.formation = Formation::Join;
    }
    let any = |port: u16| SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port);
    let http_listener = TcpListener::bind(any(HTTP_PORT)).await.expect("bind the node's HTTP port");
    let grpc_listener = TcpListener::bind(any(GRPC_PORT)).await.expect("bind the node's gRPC port");
    let advertise = sextant_raft::Node {
        http_addr: serve.cluster.advertise_http.clone().expect("set by serve_config"),
        grpc_addr: serve.cluster.advertise_grpc.clone().expect("set by serve_config"),
    };
    let tuning = engine_config(&config, &serve);
    let env = NodeEnv {
        fs: Arc::new(fs),
        clock,
        tokens: None,
        http_listener,
        grpc_listener,
        advertise,
        tune_engine: Some(Box::new(move |engine: &mut EngineConfig| {
            engine.wal.segment_bytes = tuning.wal.segment_bytes;
            engine.block_span_ms = tuning.block_span_ms;
        })),
        ack_observer: Some(ack_observer(acks.clone(), serve.cluster.node_id)),
    };
    match Running::start(serve, env).await {
        Ok(running) => {
            *live.lock().expect("live lock") = Some(running.node().clone());
            *raft.lock().expect("raft lock") = Some(running.raft().clone());
            // Until the machine's kill drops this future (and everything it spawned): note when
            // each shard epoch is first applied here, for oracle 8.
            let mut tables = running.node().router().subscribe();
            loop {
                {
                    let table = tables.borrow_and_update().clone();
                    let now_ns = madsim::time::TimeHandle::current().elapsed().as_nanos() as u64;
                    let mut log = acks.lock().expect("ack log");
                    for (shard, route) in &table.shards {
                        log.epochs_applied.entry((*shard, route.epoch)).or_insert(now_ns);
                    }
                }
                if tables.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
        }
        Err(error) => tracing::error!(%error, "the node failed to start"),
    }
}

/// Node `index`'s address on the simulated network.
pub fn node_ip(index: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 0, 0, index as u8 + 1)
}

fn machine(handle: &Handle, name: String, ip: Ipv4Addr) -> NodeHandle {
    handle.create_node().name(name).ip(IpAddr::V4(ip)).build()
}

impl Cluster {
    /// Builds the machines of the table above and boots every node. Disks and clocks are
    /// created here, outside the nodes, and handed to each incarnation. Call inside the runtime.
    pub fn start(config: SimConfig, schedule: &Schedule) -> Cluster {
        let handle = Handle::current();
        let acks = Arc::new(Mutex::new(AckLog::default()));
        let mut nodes = Vec::new();
        for index in 0..config.nodes {
            let ip = node_ip(index);
            let addr = SocketAddr::new(IpAddr::V4(ip), HTTP_PORT);
            let fs = SimFs::new(config.seed.wrapping_mul(1_000_003).wrapping_add(index as u64));
            let clock = Arc::new(SimClock::new(schedule.node_skew_ms[index], schedule.node_drift_ppm[index]));
            let live = Arc::new(Mutex::new(None));
            let raft = Arc::new(Mutex::new(None));
            let member_id = Arc::new(Mutex::new(index as u64 + 1));
            let serve = serve_config(&config, addr);
            let engine = engine_config(&config, &serve);
            let builder = handle.create_node().name(format!("node-{index}")).ip(IpAddr::V4(ip));
            let node_handle = {
                let (fs, clock, live, raft) = (fs.clone(), clock.clone(), live.clone(), raft.clone());
                if config.scenario == Scenario::Replicated {
                    let (config, acks, member_id) = (config.clone(), acks.clone(), member_id.clone());
                    builder
                        .init(move || run_cluster_node(config.clone(), serve.clone(), fs.clone(), clock.clone(), live.clone(), raft.clone(), acks.clone(), member_id.clone()))
                        .build()
                } else {
                    builder.init(move || run_node(serve.clone(), engine.clone(), fs.clone(), clock.clone(), live.clone())).build()
                }
            };
            nodes.push(SimNode {
                index,
                handle: node_handle,
                addr,
                fs,
                clock,
                live,
                raft,
                member_id,
            });
        }
        let writers = (0..config.writers).map(|w| machine(&handle, format!("writer-{w}"), Ipv4Addr::new(10, 0, 1, w as u8 + 1))).collect();
        let bomb = machine(&handle, "bomb".into(), Ipv4Addr::new(10, 0, 2, 1));
        let reader = machine(&handle, "reader".into(), Ipv4Addr::new(10, 0, 3, 1));
        let probe = machine(&handle, "probe".into(), Ipv4Addr::new(10, 0, 4, 1));
        let wipes = schedule.events.iter().any(|e| matches!(e.fault, crate::schedule::Fault::Wipe { .. }));
        let operator = wipes.then(|| machine(&handle, "operator".into(), Ipv4Addr::new(10, 0, 5, 1)));
        Cluster {
            handle,
            nodes,
            writers,
            bomb,
            reader,
            probe,
            operator,
            config,
            acks,
        }
    }

    /// The node a writer sends to.
    pub fn node_of_writer(&self, writer: usize) -> usize {
        writer % self.nodes.len()
    }

    /// Kills node `index`'s process (its disk keeps unsynced bytes until `power_cut`).
    pub fn kill(&self, index: usize) {
        self.handle.kill(self.nodes[index].handle.id());
        self.nodes[index].live.lock().expect("live lock").take();
        self.nodes[index].raft.lock().expect("raft lock").take();
    }

    /// Cuts node `index` off from every other node, both ways (or heals it); its clients still
    /// reach it. Raft, forwarding and replication traffic all cross these links. Healing leaves
    /// the links to nodes in `still_cut` (isolated by another partition) cut.
    pub fn partition(&self, index: usize, cut: bool, still_cut: &BTreeSet<usize>) {
        let net = madsim::net::NetSim::current();
        let me = self.nodes[index].handle.id();
        for other in self.nodes.iter().filter(|n| n.index != index && (cut || !still_cut.contains(&n.index))) {
            clog_both(&net, me, other.handle.id(), cut);
        }
    }

    /// Cuts the power of node `index`'s disk: unsynced bytes are dropped or torn; read
    /// corruption (transient) ends, other disk faults go on. Returns (bytes lost, bytes of
    /// garbage) it caused.
    pub fn power_cut(&self, index: usize, kind: CrashKind) -> (u64, u64) {
        let fs = &self.nodes[index].fs;
        let before = fs.stats();
        let crash_mode = match kind {
            CrashKind::Torn => CrashMode::Torn,
            CrashKind::DropUnsynced => CrashMode::DropUnsynced,
        };
        fs.set_faults(FaultConfig {
            crash_mode,
            read_corruption_probability: 0.0,
            ..fs.faults()
        });
        fs.crash();
        let after = fs.stats();
        (after.bytes_lost_on_crash - before.bytes_lost_on_crash, after.bytes_garbage_on_crash - before.bytes_garbage_on_crash)
    }

    /// Kills node `index` and replaces its disk with an empty one; its next incarnation
    /// (`restart`) joins as member `new_id`.
    pub fn wipe(&self, index: usize, new_id: u64) {
        self.kill(index);
        self.nodes[index].fs.wipe();
        *self.nodes[index].member_id.lock().expect("member id lock") = new_id;
    }

    /// The machine that runs (or ran) as metadata member `id`, if one still does.
    pub fn index_of_member(&self, id: u64) -> Option<usize> {
        self.nodes.iter().position(|n| n.member_id() == id)
    }

    /// Boots a new incarnation of node `index` on its disk and clock.
    pub fn restart(&self, index: usize) {
        self.handle.restart(self.nodes[index].handle.id());
    }

    pub fn pause(&self, index: usize) {
        self.handle.pause(self.nodes[index].handle.id());
    }

    pub fn resume(&self, index: usize) {
        self.handle.resume(self.nodes[index].handle.id());
    }

    /// Drops everything between writer `writer` and node `index`, both ways (or undoes it).
    pub fn clog(&self, writer: usize, index: usize, clogged: bool) {
        clog_both(&madsim::net::NetSim::current(), self.writers[writer].id(), self.nodes[index].handle.id(), clogged);
    }
}

/// Drops everything between machines `a` and `b`, both ways (or undoes it).
pub fn clog_both(net: &madsim::net::NetSim, a: madsim::task::NodeId, b: madsim::task::NodeId, clogged: bool) {
    if clogged {
        net.clog_link(a, b);
        net.clog_link(b, a);
    } else {
        net.unclog_link(a, b);
        net.unclog_link(b, a);
    }
}
