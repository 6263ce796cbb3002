//! The HTTP/1 accept loop (`server::serve_http`) over a real socket in the normal build and a
//! simulated one under madsim: requests are answered, and shutdown drains open connections.
//!
//! Method: serve the router on a listener, talk raw HTTP/1.1 over a `TcpStream` (no client
//! library, so the same code runs in both builds), then signal shutdown and join the server.

use std::future::poll_fn;
use std::pin::Pin;
use std::sync::Arc;

use sextant::config::ServeConfig;
use sextant::node::{EngineSlot, Node};
use sextant::remote_write::{encode_write_request, Label, Sample, TimeSeries, WriteRequest};
use sextant::server::serve_http;
use sextant_core::clock::ManualClock;
use sextant_storage::engine::{Engine, EngineConfig};
use sextant_storage::fs::sim::SimFs;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

const NOW: i64 = 1_700_000_000_000;

async fn write_all(stream: &mut TcpStream, mut bytes: &[u8]) {
    while !bytes.is_empty() {
        let n = poll_fn(|cx| Pin::new(&mut *stream).poll_write(cx, bytes)).await.unwrap();
        assert!(n > 0, "connection closed while writing");
        bytes = &bytes[n..];
    }
    // The simulated stream buffers writes until flushed.
    poll_fn(|cx| Pin::new(&mut *stream).poll_flush(cx)).await.unwrap();
}

/// Reads one response with a Content-Length (or none, for 204) and returns (status, body).
async fn read_response(stream: &mut TcpStream) -> (u16, String) {
    let mut data = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&data).into_owned();
        if let Some(end) = text.find("\r\n\r\n") {
            let head = &text[..end];
            let status: u16 = head.split(' ').nth(1).unwrap().parse().unwrap();
            let length = head.lines().find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse::<usize>().unwrap())).unwrap_or(0);
            if data.len() >= end + 4 + length {
                return (status, String::from_utf8_lossy(&data[end + 4..end + 4 + length]).into_owned());
            }
        }
        let mut buf = ReadBuf::new(&mut chunk);
        poll_fn(|cx| Pin::new(&mut *stream).poll_read(cx, &mut buf)).await.unwrap();
        assert!(!buf.filled().is_empty(), "connection closed before a full response: {:?}", String::from_utf8_lossy(&data));
        data.extend_from_slice(buf.filled());
    }
}

// Goal: the accept loop serves keep-alive requests (health, a remote-write) and returns after
// shutdown once the open connection is closed.
/// Sends one remote-write (one series, value 1 at `t`) on `stream`; returns (status, body).
async fn post_write(stream: &mut TcpStream, labels: Vec<Label>, t: i64) -> (u16, String) {
    let body = encode_write_request(&WriteRequest {
        timeseries: vec![TimeSeries { labels, samples: vec![Sample { value: 1.0, timestamp: t }], exemplars: vec![], histograms: vec![] }],
        metadata: vec![],
    });
    let head = format!("POST /api/v1/write HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf\r\nContent-Encoding: snappy\r\nX-Prometheus-Remote-Write-Version: 0.1.0\r\nContent-Length: {}\r\n\r\n", body.len());
    write_all(stream, head.as_bytes()).await;
    write_all(stream, &body).await;
    read_response(stream).await
}

/// A node with an open engine on a manual clock at `NOW`, served on `listen`.
struct Serving {
    engine: Engine,
    address: std::net::SocketAddr,
    stop_tx: tokio::sync::watch::Sender<bool>,
    server: tokio::task::JoinHandle<()>,
}

async fn serve(listen: &str) -> Serving {
    let clock = Arc::new(ManualClock::new(NOW));
    let node = Node::new(ServeConfig::default(), clock.clone(), None);
    let engine = Engine::open(Arc::new(SimFs::new(3)), clock.clone(), EngineConfig { shard_ids: vec![0, 1], retention_ms: None, ..EngineConfig::default() }).await.unwrap();
    node.set_engine(EngineSlot::Ready(engine.clone()));
    let listener = TcpListener::bind(listen).await.unwrap();
    let address = listener.local_addr().unwrap();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let server = tokio::spawn(serve_http(listener, sextant::http::router(node), stop_rx, 4));
    Serving { engine, address, stop_tx, server }
}

#[tokio::test]
async fn serves_http1_and_drains_on_shutdown() {
    let Serving { engine, address, stop_tx, server } = serve("127.0.0.1:19480").await;

    let mut stream = TcpStream::connect(address).await.unwrap();
    write_all(&mut stream, b"GET /-/healthy HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(read_response(&mut stream).await, (200, "Sextant is Healthy.\n".to_string()));

    assert_eq!(post_write(&mut stream, vec![Label { name: "__name__".into(), value: "up".into() }], NOW).await.0, 204);
    assert_eq!(engine.head_series_count("default", Some("up")).await, 1);

    stop_tx.send(true).unwrap();
    // The idle keep-alive connection is closed by the server, and the server returns.
    server.await.unwrap();
    let mut buf_bytes = [0u8; 16];
    let mut buf = ReadBuf::new(&mut buf_bytes);
    let closed = poll_fn(|cx| Pin::new(&mut stream).poll_read(cx, &mut buf)).await;
    assert!(closed.is_err() || buf.filled().is_empty(), "connection should be closed after shutdown");
}

/// Sends one remote-write of `up` at `t` over a new connection from `source` (a loopback
/// address) and returns (status, body).
#[cfg(not(madsim))]
async fn write_from(address: std::net::SocketAddr, source: [u8; 4], t: i64) -> (u16, String) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(std::net::SocketAddr::from((source, 0))).unwrap();
    let mut stream = socket.connect(address).await.unwrap();
    let labels = vec![Label { name: "__name__".into(), value: "up".into() }, Label { name: "source".into(), value: format!("{source:?}") }];
    post_write(&mut stream, labels, t).await
}

#[cfg(not(madsim))]
async fn get(address: std::net::SocketAddr, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(address).await.unwrap();
    write_all(&mut stream, format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes()).await;
    read_response(&mut stream).await
}

// Goal: a node whose clock is behind most of its clients past future_skew_ms_max says so on
// /-/ready and in /metrics; one client ahead does not; current samples from the same clients
// clear it. Method: real sockets from distinct loopback addresses (the check counts clients
// by address), samples an hour ahead of the node's clock (refused 400), then current ones.
// Normal build only: the simulated network gives a machine one address (the simulator's skew
// scenario covers the check under madsim, oracle `skew-reported`).
#[cfg(not(madsim))]
#[tokio::test]
async fn a_clock_behind_its_clients_is_reported_not_ready() {
    let Serving { engine, address, stop_tx, server } = serve("127.0.0.1:0").await;
    let hour_ahead = NOW + 3_600_000;

    let (status, body) = write_from(address, [127, 0, 0, 1], hour_ahead).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("ahead of the node's clock"), "{body}");
    assert_eq!(get(address, "/-/ready").await.0, 200, "one client ahead is that client's problem");

    let (status, body) = write_from(address, [127, 0, 0, 2], hour_ahead).await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = get(address, "/-/ready").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("wall clock seems about 3600 s behind") && body.contains("2 of the 2 clients"), "{body}");
    let (_, metrics) = get(address, "/metrics").await;
    assert!(metrics.contains("sextant_clock_behind_suspected 1"), "{metrics}");
    assert!(metrics.contains("sextant_clock_behind_estimate_seconds 3600"), "{metrics}");

    // The clock is corrected (here: the clients send current samples): ready again, and the
    // samples are stored.
    for source in [[127, 0, 0, 1], [127, 0, 0, 2]] {
        let (status, body) = write_from(address, source, NOW).await;
        assert_eq!(status, 204, "{body}");
    }
    assert_eq!(get(address, "/-/ready").await.0, 200);
    let (_, metrics) = get(address, "/metrics").await;
    assert!(metrics.contains("sextant_clock_behind_suspected 0"), "{metrics}");
    assert_eq!(engine.head_series_count("default", Some("up")).await, 2);

    stop_tx.send(true).unwrap();
    server.await.unwrap();
}
