//! Serving HTTP and running `sextant serve`.
//!
//! The HTTP server is hyper's per-connection HTTP/1 API over `tokio::net::TcpListener`, which
//! works both on real tokio and inside madsim (no `axum::serve`, no hyper-util executor or
//! timer). Connections are bounded by a semaphore: past `connections_max` the accept loop
//! waits, so the listen backlog pushes back on senders instead of the node growing.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use sextant_raft::RaftHandle;
use sextant_core::clock::Clock;
use sextant_storage::engine::{Engine, EngineConfig};
use sextant_storage::fs::FileSystem;
use sextant_storage::wal::WalConfig;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinHandle;
use tower::ServiceExt;

use crate::auth::Tokens;
use crate::cluster::ClusterMember;
use crate::config::ServeConfig;
use crate::node::{EngineSlot, MetadataStatus, Node};

/// Open HTTP connections served at once by default.
pub const HTTP_CONNECTIONS_MAX: usize = 1024;

/// Resolves once `shutdown` is true (or its sender is gone). The watch guard is dropped
/// inside, so callers' futures stay `Send`.
pub(crate) async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

/// The TCP peer of an HTTP request, as a request extension (`axum::Extension<ClientAddr>`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientAddr(pub std::net::SocketAddr);

/// Serves `router` on `listener` until `shutdown` turns true, then stops accepting, asks open
/// connections to finish their current request, and returns once all have closed.
pub async fn serve_http(listener: TcpListener, router: Router, mut shutdown: watch::Receiver<bool>, connections_max: usize) {
    let connections_max = connections_max.max(1);
    let slots = Arc::new(Semaphore::new(connections_max));
    loop {
        if *shutdown.borrow() {
            break;
        }
        let permit = tokio::select! {
            biased; // fixed poll order, not tokio's random start (process-seeded: simulation.md § Determinism)
            permit = slots.clone().acquire_owned() => match permit { Ok(p) => p, Err(_) => break },
            _ = shutdown.changed() => continue,
        };
        let (stream, peer) = tokio::select! {
            biased; // fixed poll order, not tokio's random start (process-seeded: simulation.md § Determinism)
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "accept failed");
                    continue;
                }
            },
            _ = shutdown.changed() => continue,
        };
        // Nagle's algorithm holds a response's last segment until the client ACKs the previous
        // one, and the client delays that ACK (40 ms on Linux): every answer written in more than
        // one segment would wait for it.
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(%error, %peer, "cannot set TCP_NODELAY");
        }
        let router = router.clone();
        let mut connection_shutdown = shutdown.clone();
        tokio::spawn(async move {
            // Handlers may ask who sent a request (`ClientAddr`): the clock check counts
            // clients by address (clockcheck.rs).
            let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
                request.extensions_mut().insert(ClientAddr(peer));
                router.clone().oneshot(request)
            });
            let connection = http1::Builder::new().serve_connection(TokioIo::new(stream), service);
            tokio::pin!(connection);
            let result = tokio::select! {
                biased; // fixed poll order, not tokio's random start (process-seeded: simulation.md § Determinism)
                result = connection.as_mut() => result,
                _ = stopped(&mut connection_shutdown) => {
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(error) = result {
                tracing::debug!(%error, %peer, "HTTP connection ended with an error");
            }
            drop(permit);
        });
    }
    // Every connection holds a permit until it closes.
    let _all = slots.acquire_many(connections_max as u32).await;
}

/// What one incarnation of a node runs on, besides its configuration: its disk, its clock, its
/// listeners and its bearer tokens. `sextant serve` passes the real ones (`real::Server`); the
/// simulator passes a `SimFs`, a skewed `SimClock` and madsim listeners.
pub struct NodeEnv {
    pub fs: Arc<dyn FileSystem>,
    pub clock: Arc<dyn Clock>,
    pub tokens: Option<Tokens>,
    pub http_listener: TcpListener,
    pub grpc_listener: TcpListener,
    /// The addresses recorded in the metadata group for this node.
    pub advertise: sextant_raft::Node,
    /// Adjusts the storage engine's configuration after it is derived from the flags: the
    /// simulator's scaled sizes (short blocks, small WAL segments). `sextant serve` passes none.
    pub tune_engine: Option<Box<dyn FnOnce(&mut EngineConfig) + Send>>,
    /// The simulator's record of primary acknowledgements (oracle 8); `sextant serve` passes none.
    pub ack_observer: Option<crate::node::AckObserver>,
}

/// Shortest pause between two maintenance passes.
const MAINTAIN_GAP_MIN: Duration = Duration::from_secs(1);

/// The parts of a running node that `sextant serve` and the simulator share: HTTP, the metadata
/// group's member, the storage engine (opened in the background), the maintenance loop and the
/// replication streams. Started by [`Running::start`], stopped by [`Running::shutdown`].
pub struct Running {
    node: Arc<Node>,
    cluster: ClusterMember,
    shutdown_tx: watch::Sender<bool>,
    http: JoinHandle<()>,
    maintainer: JoinHandle<()>,
    /// RF=2 replication streams of this node's primary shards (replicate.rs).
    replicator: JoinHandle<()>,
    opener: JoinHandle<()>,
}

impl Running {
    /// Starts serving HTTP at once (`/-/ready` says what is still starting), then the metadata
    /// member (forming or recovering the cluster), then opens storage in the background.
    pub async fn start(config: ServeConfig, env: NodeEnv) -> Result<Running, String> {
        let NodeEnv { fs, clock, tokens, http_listener, grpc_listener, advertise, tune_engine, ack_observer } = env;
        let node = Node::new(config.clone(), clock.clone(), tokens);
        if let Some(observer) = ack_observer {
            node.set_ack_observer(observer);
        }
        node.set_metadata_status(MetadataStatus::Starting);
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let http = tokio::spawn(serve_http(http_listener, crate::http::router(node.clone()), shutdown_rx.clone(), HTTP_CONNECTIONS_MAX));

        let cluster = match ClusterMember::start(node.clone(), fs.clone(), grpc_listener, advertise).await {
            Ok(cluster) => cluster,
            Err(error) => {
                node.set_metadata_status(MetadataStatus::Failed(error.clone()));
                let _ = shutdown_tx.send(true);
                let _ = http.await;
                return Err(error);
            }
        };
        node.set_metadata_status(MetadataStatus::Started);

        // The engine holds every shard of the cluster's map: its count once the cluster is
        // seeded (fixed at creation), else this node's --shard-count (what a seed from this
        // node would create).
        let map_shards = cluster.handle().read_local(|state| state.shard_map.as_ref().map(|m| m.shard_count()));
        let shard_count = match map_shards {
            Some(n) if n != config.cluster.shard_count => {
                tracing::warn!(cluster = n, flag = config.cluster.shard_count, "--shard-count differs from the cluster's shard map; the map's count is used (it is fixed when the cluster is created)");
                n
            }
            Some(n) => n,
            None => config.cluster.shard_count,
        };
        let mut engine_config = EngineConfig {
            shard_ids: (0..shard_count).collect(),
            wal: WalConfig { fsync: config.fsync, ..WalConfig::default() },
            acceptance: config.acceptance,
            retention_ms: config.retention_ms,
            memory_bytes_max: config.memory_bytes_max,
            ..EngineConfig::default()
        };
        if let Some(tune) = tune_engine {
            tune(&mut engine_config);
        }
        let opener = {
            let node = node.clone();
            tokio::spawn(async move {
                tracing::info!("opening storage (loading blocks, replaying the WAL)");
                match Engine::open(fs, clock, engine_config).await {
                    Ok(engine) => {
                        let status = engine.status().await;
                        tracing::info!(head_series = status.head_series, blocks = status.blocks, replay_records = status.replay_records, "storage open; ready");
                        node.set_engine_ready(engine).await;
                    }
                    Err(error) => {
                        tracing::error!(%error, "storage failed to open");
                        node.set_engine(EngineSlot::Failed(error.to_string()));
                    }
                }
            })
        };
        let maintainer = {
            let node = node.clone();
            let mut stop = shutdown_rx.clone();
            let interval = Duration::from_millis(config.maintain_interval_ms.max(1) as u64);
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        biased; // fixed poll order, not tokio's random start (process-seeded: simulation.md § Determinism)
                        _ = tokio::time::sleep(interval) => {}
                        _ = node.cut_wanted() => {}
                        _ = stopped(&mut stop) => break,
                    }
                    node.maintain().await;
                    // A pass woken by writes is followed by a pause, so a cut that keeps
                    // failing (ENOSPC, EIO) retries at this pace instead of spinning.
                    tokio::select! {
                        biased;
                        _ = tokio::time::sleep(interval.min(MAINTAIN_GAP_MIN)) => {}
                        _ = stopped(&mut stop) => break,
                    }
                }
            })
        };
        let replicator = tokio::spawn(crate::replicate::run(node.clone(), shutdown_rx.clone()));
        Ok(Running { node, cluster, shutdown_tx, http, maintainer, replicator, opener })
    }

    pub fn node(&self) -> &Arc<Node> {
        &self.node
    }

    /// The metadata group's member.
    pub fn raft(&self) -> &RaftHandle {
        self.cluster.handle()
    }

    /// Stops taking requests and lets in-flight ones finish (each is acknowledged only once
    /// durable), closes the engine (which waits for queued WAL records), then stops the
    /// metadata group's member.
    pub async fn shutdown(self) -> Result<(), String> {
        let _ = self.shutdown_tx.send(true);
        let _ = self.http.await;
        let _ = self.maintainer.await;
        // The streams stop before the engine closes (they read its WAL).
        let _ = self.replicator.await;
        let _ = self.opener.await;
        let flush = self.node.config().flush_on_shutdown;
        let closed = match self.node.take_engine_for_close() {
            Some(engine) => {
                if flush {
                    // The head goes to compressed blocks and the WAL shrinks to its checkpoint,
                    // so the next start replays next to nothing. Nothing rides on it: killed
                    // midway, the WAL still holds every acknowledged sample.
                    match engine.flush().await {
                        Ok(report) => tracing::info!(samples = report.samples_persisted, blocks = report.blocks_cut, "head flushed to blocks"),
                        Err(error) => tracing::warn!(%error, "flushing the head on shutdown failed; the WAL keeps the data"),
                    }
                }
                engine.close().await.map_err(|e| format!("closing storage: {e}"))
            }
            None => Ok(()),
        };
        tracing::info!("storage closed");
        let stopped = self.cluster.shutdown().await.map_err(|e| format!("stopping the metadata raft member: {e}"));
        tracing::info!("metadata raft member stopped; bye");
        closed.and(stopped)
    }
}

#[cfg(not(madsim))]
pub use real::{run, Server};

#[cfg(not(madsim))]
mod real {
    use std::net::SocketAddr;
    use std::sync::Arc;

    use sextant_raft::RaftHandle;
    use sextant_storage::clock::SystemClock;
    use sextant_storage::fs::real::RealFs;
    use sextant_storage::fs::FileSystem;
    use tokio::net::TcpListener;

    use super::{NodeEnv, Running};
    use crate::auth::Tokens;
    use crate::config::ServeConfig;
    use crate::node::Node;

    async fn wait_for_signal() {
        let mut terminate = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(signal) => signal,
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGTERM; only SIGINT stops the server");
                let _ = tokio::signal::ctrl_c().await;
                return;
            }
        };
        tokio::select! {
            biased; // fixed poll order, not tokio's random start (process-seeded: simulation.md § Determinism)
            _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received, shutting down"),
            _ = terminate.recv() => tracing::info!("SIGTERM received, shutting down"),
        }
    }

    /// Runs `sextant serve` until SIGTERM or SIGINT.
    pub async fn run(config: ServeConfig) -> Result<(), String> {
        let server = Server::start(config).await?;
        wait_for_signal().await;
        server.shutdown().await
    }

    /// A running `sextant serve`: [`Running`] on the real disk and clock, holding the data
    /// directory's lock. [`run`] is `start`, a signal, `shutdown`; tests call the parts.
    pub struct Server {
        running: Running,
        http_addr: SocketAddr,
        grpc_addr: SocketAddr,
        lock: std::fs::File,
    }

    impl Server {
        /// Binds `--http-listen` and `--grpc-listen` and starts.
        pub async fn start(config: ServeConfig) -> Result<Server, String> {
            let http = TcpListener::bind(config.http_listen).await.map_err(|e| format!("--http-listen {}: {e}", config.http_listen))?;
            let grpc = TcpListener::bind(config.grpc_listen).await.map_err(|e| format!("--grpc-listen {}: {e}", config.grpc_listen))?;
            Server::start_with_listeners(config, http, grpc).await
        }

        /// Starts on listeners the caller bound (tests bind port 0 and build
        /// `--initial-cluster` from the ports they got). Unset advertised addresses default to
        /// the listeners' addresses.
        pub async fn start_with_listeners(config: ServeConfig, http_listener: TcpListener, grpc_listener: TcpListener) -> Result<Server, String> {
            let tokens = match &config.tokens_file {
                Some(path) => {
                    let text = std::fs::read_to_string(path).map_err(|e| format!("--tokens-file {path:?}: {e}"))?;
                    let tokens = Tokens::parse(&text).map_err(|e| format!("--tokens-file {path:?}: {e}"))?;
                    tracing::info!(tokens = tokens.len(), "bearer-token authentication on");
                    Some(tokens)
                }
                None => None,
            };
            std::fs::create_dir_all(&config.data_dir).map_err(|e| format!("--data-dir {:?}: {e}", config.data_dir))?;
            // Two servers on one data directory would corrupt it: hold an exclusive lock.
            let lock_path = config.data_dir.join("LOCK");
            let lock = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&lock_path).map_err(|e| format!("{lock_path:?}: {e}"))?;
            lock.try_lock().map_err(|e| format!("data directory {:?} is in use by another process ({e})", config.data_dir))?;
            let http_addr = http_listener.local_addr().map_err(|e| format!("--http-listen: {e}"))?;
            let grpc_addr = grpc_listener.local_addr().map_err(|e| format!("--grpc-listen: {e}"))?;
            let advertise = sextant_raft::Node {
                http_addr: config.cluster.advertise_http.clone().unwrap_or_else(|| http_addr.to_string()),
                grpc_addr: config.cluster.advertise_grpc.clone().unwrap_or_else(|| grpc_addr.to_string()),
            };
            tracing::info!(node_id = config.cluster.node_id, http = %http_addr, grpc = %grpc_addr, advertise = %advertise, data_dir = ?config.data_dir, "sextant serve starting");
            let fs: Arc<dyn FileSystem> = Arc::new(RealFs::new(config.data_dir.clone()));
            let env = NodeEnv { fs, clock: Arc::new(SystemClock::new()), tokens, http_listener, grpc_listener, advertise, tune_engine: None, ack_observer: None };
            let running = Running::start(config, env).await?;
            Ok(Server { running, http_addr, grpc_addr, lock })
        }

        pub fn node(&self) -> &Arc<Node> {
            self.running.node()
        }

        /// The metadata group's member.
        pub fn raft(&self) -> &RaftHandle {
            self.running.raft()
        }

        pub fn http_addr(&self) -> SocketAddr {
            self.http_addr
        }

        pub fn grpc_addr(&self) -> SocketAddr {
            self.grpc_addr
        }

        /// [`Running::shutdown`], then the data directory's lock is released.
        pub async fn shutdown(self) -> Result<(), String> {
            let result = self.running.shutdown().await;
            drop(self.lock);
            result
        }
    }
}
