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
#[tokio::test]
async fn serves_http1_and_drains_on_shutdown() {
    let clock = Arc::new(ManualClock::new(NOW));
    let node = Node::new(ServeConfig::default(), clock.clone(), None);
    let engine = Engine::open(Arc::new(SimFs::new(3)), clock.clone(), EngineConfig { shard_ids: vec![0, 1], retention_ms: None, ..EngineConfig::default() }).await.unwrap();
    node.set_engine(EngineSlot::Ready(engine.clone()));
    let listener = TcpListener::bind("127.0.0.1:19480").await.unwrap();
    let address = listener.local_addr().unwrap();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let server = tokio::spawn(serve_http(listener, sextant::http::router(node.clone()), stop_rx, 4));

    let mut stream = TcpStream::connect(address).await.unwrap();
    write_all(&mut stream, b"GET /-/healthy HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(read_response(&mut stream).await, (200, "Sextant is Healthy.\n".to_string()));

    let body = encode_write_request(&WriteRequest {
        timeseries: vec![TimeSeries {
            labels: vec![Label { name: "__name__".into(), value: "up".into() }],
            samples: vec![Sample { value: 1.0, timestamp: NOW }],
            exemplars: vec![],
            histograms: vec![],
        }],
        metadata: vec![],
    });
    let head = format!("POST /api/v1/write HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf\r\nContent-Encoding: snappy\r\nX-Prometheus-Remote-Write-Version: 0.1.0\r\nContent-Length: {}\r\n\r\n", body.len());
    write_all(&mut stream, head.as_bytes()).await;
    write_all(&mut stream, &body).await;
    assert_eq!(read_response(&mut stream).await.0, 204);
    assert_eq!(engine.head_series_count("default", Some("up")).await, 1);

    stop_tx.send(true).unwrap();
    // The idle keep-alive connection is closed by the server, and the server returns.
    server.await.unwrap();
    let mut buf_bytes = [0u8; 16];
    let mut buf = ReadBuf::new(&mut buf_bytes);
    let closed = poll_fn(|cx| Pin::new(&mut stream).poll_read(cx, &mut buf)).await;
    assert!(closed.is_err() || buf.filled().is_empty(), "connection should be closed after shutdown");
}
