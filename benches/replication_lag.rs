//! Replication lag in steady state (docs/benchmarks.md § 8; issue 6: "a benchmark figure, not
//! a test"). Two `sextant serve` nodes in this process on real tokio and loopback gRPC, 16
//! shards, RF=2, fsync `always`, data on the local disk. A writer remote-writes `SERIES`
//! series once per simulated scrape round, spread evenly over each second in batches of
//! `BATCH_SAMPLES` samples (Prometheus's `max_samples_per_send` order), through node 1's HTTP
//! router in process — so half the shards are forwarded to node 2 and every shard streams to
//! its secondary. Every `PROBE_MS` it reads both nodes' `ReplicationStatus` (what `/metrics`
//! and `admin shards` show): the largest lag in ms over all shards and the summed lag in
//! samples. Prints percentiles of both, the write latency and the achieved rate, and how long
//! the secondaries take to drain once writing stops.
//!
//! `cargo bench --profile ci --bench replication_lag` (full: 10,000 and 50,000 series, 60 s
//! each); `SEXTANT_BENCH_SMOKE=1` for a 5 s run with 1,000 series (CI: proves it runs; the
//! figures live in docs/benchmarks.md, never as assertions). Real network and disk: not built
//! for madsim.

#[cfg(madsim)]
fn main() {
    eprintln!("replication_lag: a real-network benchmark; run it without --cfg madsim");
}

#[cfg(not(madsim))]
fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("a tokio runtime");
    runtime.block_on(real::run());
}

#[cfg(not(madsim))]
mod real {
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use axum::body::Body;
    use http::Request;
    use sextant::config::{ServeArgs, ServeConfig};
    use sextant::node::Node;
    use sextant::remote_write::{encode_write_request, Label, Sample, TimeSeries, WriteRequest};
    use sextant::server::Server;
    use tokio::net::TcpListener;
    use tower::ServiceExt;

    const BATCH_SAMPLES: usize = 2_000;
    const PROBE_MS: u64 = 100;
    /// Longest wait for the secondaries to drain after the writer stops.
    const DRAIN_WAIT_MAX: Duration = Duration::from_secs(60);

    struct Case {
        series: usize,
        seconds: u64,
    }

    pub async fn run() {
        let smoke = std::env::var("SEXTANT_BENCH_SMOKE").is_ok_and(|v| v == "1");
        let cases = if smoke { vec![Case { series: 1_000, seconds: 5 }] } else { vec![Case { series: 10_000, seconds: 60 }, Case { series: 50_000, seconds: 60 }] };
        println!("| series (samples/s) | seconds | achieved samples/s | refused writes | write p50 / p99 ms | lag ms p50 / p99 / max | lag samples p50 / p99 / max | drain ms |");
        println!("|---|---|---|---|---|---|---|---|");
        for case in cases {
            one(&case).await;
        }
        println!("replication_lag: OK");
    }

    async fn start(dirs: &[tempfile::TempDir]) -> Vec<Server> {
        let mut listeners = Vec::new();
        for _ in dirs {
            listeners.push((TcpListener::bind("127.0.0.1:0").await.unwrap(), TcpListener::bind("127.0.0.1:0").await.unwrap()));
        }
        let initial = listeners.iter().enumerate().map(|(i, (_, g))| format!("{}={}", i + 1, g.local_addr().unwrap())).collect::<Vec<_>>().join(",");
        let mut servers = Vec::new();
        for (i, (http, grpc)) in listeners.into_iter().enumerate() {
            let args = ServeArgs { data_dir: Some(dirs[i].path().to_path_buf()), node_id: Some(i as u64 + 1), initial_cluster: Some(initial.clone()), ..Default::default() };
            let config = ServeConfig::resolve(&args, None).expect("a valid configuration");
            servers.push(Server::start_with_listeners(config, http, grpc).await.expect("the server starts"));
        }
        // Ready: the map, every address, and a lease for each node's primary shards.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ready = servers.iter().all(|s| {
                let node = s.node();
                let table = node.router().table();
                let mine = table.my_primaries();
                table.grpc_addrs.len() == dirs.len() && node.readiness().is_ok() && !mine.is_empty() && node.lease().live_shards(node.clock().now_monotonic_ns()) == mine
            });
            if ready {
                return servers;
            }
            assert!(Instant::now() < deadline, "the cluster did not become ready within 60 s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn batch(first: usize, count: usize, t: i64) -> Vec<u8> {
        let timeseries = (first..first + count)
            .map(|i| TimeSeries {
                labels: vec![
                    Label { name: "__name__".into(), value: "bench_metric".into() },
                    Label { name: "instance".into(), value: format!("host-{:05}", i / 100) },
                    Label { name: "series".into(), value: format!("s{i:06}") },
                ],
                samples: vec![Sample { timestamp: t, value: (i as f64) + (t % 60_000) as f64 / 1000.0 }],
                exemplars: vec![],
                histograms: vec![],
            })
            .collect();
        encode_write_request(&WriteRequest { timeseries, metadata: vec![] })
    }

    async fn remote_write(node: &Arc<Node>, body: Vec<u8>) -> u16 {
        let request = Request::builder()
            .method("POST")
            .uri("/api/v1/write")
            .header("content-type", "application/x-protobuf")
            .header("content-encoding", "snappy")
            .body(Body::from(body))
            .unwrap();
        sextant::http::router(node.clone()).oneshot(request).await.unwrap().status().as_u16()
    }

    /// (largest lag in ms over every shard of every node, summed lag in samples).
    async fn probe(nodes: &[Arc<Node>]) -> (i64, u64) {
        let (mut ms, mut samples) = (0i64, 0u64);
        for node in nodes {
            for s in node.replication().status(node).await.shards {
                ms = ms.max(s.lag_ms);
                samples += s.lag_samples;
            }
        }
        (ms, samples)
    }

    fn pct<T: Copy + Ord + Default>(sorted: &[T], p: f64) -> T {
        if sorted.is_empty() {
            return T::default();
        }
        sorted[((sorted.len() - 1) as f64 * p).round() as usize]
    }

    async fn one(case: &Case) {
        let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().expect("a temporary directory")).collect();
        let servers = start(&dirs).await;
        let node = servers[0].node().clone();
        let batches_per_round = case.series.div_ceil(BATCH_SAMPLES);
        let gap = Duration::from_secs_f64(1.0 / batches_per_round as f64);
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let nodes: Vec<Arc<Node>> = servers.iter().map(|s| s.node().clone()).collect();
        let prober = {
            let mut stop = stop_rx.clone();
            let nodes = nodes.clone();
            tokio::spawn(async move {
                let mut out = Vec::new();
                loop {
                    out.push(probe(&nodes).await);
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(PROBE_MS)) => {}
                        _ = stop.changed() => break,
                    }
                }
                out
            })
        };
        let started = Instant::now();
        let base = node.clock().now_wall_ms() / 1000 * 1000;
        let (mut accepted, mut refused) = (0u64, 0u64);
        let mut latencies_us = Vec::new();
        let mut next = tokio::time::Instant::now();
        'rounds: for round in 0..case.seconds {
            let t = base + round as i64 * 1000;
            for b in 0..batches_per_round {
                if started.elapsed() > Duration::from_secs(case.seconds) {
                    break 'rounds;
                }
                let first = b * BATCH_SAMPLES;
                let count = BATCH_SAMPLES.min(case.series - first);
                let body = batch(first, count, t);
                let sent = Instant::now();
                match remote_write(&node, body).await {
                    204 => accepted += count as u64,
                    _ => refused += 1,
                }
                latencies_us.push(sent.elapsed().as_micros() as u64);
                next += gap;
                tokio::time::sleep_until(next).await;
            }
        }
        let elapsed = started.elapsed();
        stop_tx.send(true).unwrap();
        let mut probes = prober.await.unwrap();
        // Drain: until nothing is unacknowledged anywhere.
        let drain_started = Instant::now();
        while probe(&nodes).await.1 > 0 && drain_started.elapsed() < DRAIN_WAIT_MAX {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let drain_ms = drain_started.elapsed().as_millis();
        let drained = probe(&nodes).await.1 == 0;
        // The first second holds the streams' start; steady state is what follows.
        let skip = (1000 / PROBE_MS) as usize;
        if probes.len() > skip * 2 {
            probes.drain(..skip);
        }
        let mut lag_ms: Vec<i64> = probes.iter().map(|p| p.0).collect();
        let mut lag_samples: Vec<u64> = probes.iter().map(|p| p.1).collect();
        lag_ms.sort_unstable();
        lag_samples.sort_unstable();
        latencies_us.sort_unstable();
        let ms = |us: u64| format!("{:.1}", us as f64 / 1000.0);
        println!(
            "| {} | {} | {:.0} | {refused} | {} / {} | {} / {} / {} | {} / {} / {} | {}{} |",
            case.series,
            case.seconds,
            accepted as f64 / elapsed.as_secs_f64(),
            ms(pct(&latencies_us, 0.5)),
            ms(pct(&latencies_us, 0.99)),
            pct(&lag_ms, 0.5),
            pct(&lag_ms, 0.99),
            lag_ms.last().copied().unwrap_or(0),
            pct(&lag_samples, 0.5),
            pct(&lag_samples, 0.99),
            lag_samples.last().copied().unwrap_or(0),
            drain_ms,
            if drained { "" } else { " (not drained)" },
        );
        assert!(drained, "the secondaries did not acknowledge everything within {} s of the writer stopping", DRAIN_WAIT_MAX.as_secs());
        for server in servers {
            server.shutdown().await.expect("a clean shutdown");
        }
    }
}
