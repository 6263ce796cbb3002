//! The simulated cluster: real Sextant nodes on madsim, their disks and clocks, and the
//! client machines.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use madsim::runtime::{Handle, NodeHandle};
use sextant::config::ServeConfig;
use sextant::node::{EngineSlot, Node};
use sextant_storage::acceptance::AcceptanceConfig;
use sextant_storage::engine::{Engine, EngineConfig};
use sextant_storage::fs::sim::{CrashMode, FaultConfig, SimFs};
use sextant_storage::fs::FileSystem;
use sextant_storage::wal::{FsyncPolicy, WalConfig};
use tokio::net::TcpListener;

use crate::clock::SimClock;
use crate::config::SimConfig;
use crate::schedule::{CrashKind, Schedule};

/// The HTTP port of every node.
pub const HTTP_PORT: u16 = 9480;
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
}

impl SimNode {
    /// The current incarnation, if it is up.
    pub fn node(&self) -> Option<Arc<Node>> {
        self.live.lock().expect("live lock").clone()
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
///
/// There is no raft and no replication yet: each node is its own database, and a client
/// writes to one node. When raft/ lands, raft nodes join this table (gRPC on port 9481) and
/// `start` builds the metadata group before the data nodes; replication adds peers per shard.
pub struct Cluster {
    pub handle: Handle,
    pub nodes: Vec<SimNode>,
    pub writers: Vec<NodeHandle>,
    pub bomb: NodeHandle,
    pub reader: NodeHandle,
    pub probe: NodeHandle,
    pub config: SimConfig,
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

fn machine(handle: &Handle, name: String, ip: Ipv4Addr) -> NodeHandle {
    handle.create_node().name(name).ip(IpAddr::V4(ip)).build()
}

impl Cluster {
    /// Builds the machines of the table above and boots every node. Disks and clocks are
    /// created here, outside the nodes, and handed to each incarnation. Call inside the runtime.
    pub fn start(config: SimConfig, schedule: &Schedule) -> Cluster {
        let handle = Handle::current();
        let mut nodes = Vec::new();
        for index in 0..config.nodes {
            let ip = Ipv4Addr::new(10, 0, 0, index as u8 + 1);
            let addr = SocketAddr::new(IpAddr::V4(ip), HTTP_PORT);
            let fs = SimFs::new(config.seed.wrapping_mul(1_000_003).wrapping_add(index as u64));
            let clock = Arc::new(SimClock::new(schedule.node_skew_ms[index], schedule.node_drift_ppm[index]));
            let live = Arc::new(Mutex::new(None));
            let serve = serve_config(&config, addr);
            let engine = engine_config(&config, &serve);
            let node_handle = {
                let (fs, clock, live) = (fs.clone(), clock.clone(), live.clone());
                handle
                    .create_node()
                    .name(format!("node-{index}"))
                    .ip(IpAddr::V4(ip))
                    .init(move || run_node(serve.clone(), engine.clone(), fs.clone(), clock.clone(), live.clone()))
                    .build()
            };
            nodes.push(SimNode {
                index,
                handle: node_handle,
                addr,
                fs,
                clock,
                live,
            });
        }
        let writers = (0..config.writers).map(|w| machine(&handle, format!("writer-{w}"), Ipv4Addr::new(10, 0, 1, w as u8 + 1))).collect();
        let bomb = machine(&handle, "bomb".into(), Ipv4Addr::new(10, 0, 2, 1));
        let reader = machine(&handle, "reader".into(), Ipv4Addr::new(10, 0, 3, 1));
        let probe = machine(&handle, "probe".into(), Ipv4Addr::new(10, 0, 4, 1));
        Cluster {
            handle,
            nodes,
            writers,
            bomb,
            reader,
            probe,
            config,
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
        let net = madsim::net::NetSim::current();
        let (a, b) = (self.writers[writer].id(), self.nodes[index].handle.id());
        if clogged {
            net.clog_link(a, b);
            net.clog_link(b, a);
        } else {
            net.unclog_link(a, b);
            net.unclog_link(b, a);
        }
    }
}
