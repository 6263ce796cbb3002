//! The clients' HTTP: hyper's HTTP/1 client connection API over a simulated `TcpStream`
//! (no hyper-util client, executor or timer, which do not run inside madsim). One connection
//! per request: simple, and a request never inherits a connection broken by an earlier fault.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use sextant::remote_write::{encode_write_request, WriteRequest};
use tokio::net::TcpStream;

/// A request that got no answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientError {
    Timeout,
    Io(String),
}

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientError::Timeout => f.write_str("timeout"),
            ClientError::Io(reason) => f.write_str(reason),
        }
    }
}

async fn exchange(addr: SocketAddr, request: http::Request<Full<Bytes>>) -> Result<(u16, String), ClientError> {
    let io = |e: &dyn std::fmt::Display| ClientError::Io(e.to_string());
    let stream = TcpStream::connect(addr).await.map_err(|e| io(&e))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| io(&e))?;
    let driver = tokio::spawn(async move {
        let _ = connection.await;
    });
    let result = async {
        let response = sender.send_request(request).await.map_err(|e| io(&e))?;
        let status = response.status().as_u16();
        let body = response.into_body().collect().await.map_err(|e| io(&e))?.to_bytes();
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    }
    .await;
    drop(sender);
    driver.abort();
    result
}

/// Sends one request and waits at most `timeout_ms` for the whole answer.
pub async fn send(addr: SocketAddr, request: http::Request<Full<Bytes>>, timeout_ms: u64) -> Result<(u16, String), ClientError> {
    match tokio::time::timeout(Duration::from_millis(timeout_ms), exchange(addr, request)).await {
        Ok(result) => result,
        Err(_) => Err(ClientError::Timeout),
    }
}

/// A remote-write POST as Prometheus sends it.
pub fn remote_write(addr: SocketAddr, request: &WriteRequest) -> http::Request<Full<Bytes>> {
    let body = encode_write_request(request);
    http::Request::post(format!("http://{addr}/api/v1/write"))
        .header("host", addr.to_string())
        .header("content-type", "application/x-protobuf")
        .header("content-encoding", "snappy")
        .header("x-prometheus-remote-write-version", "0.1.0")
        .body(Full::new(Bytes::from(body)))
        .expect("a well-formed request")
}

/// A GET of `path`.
pub fn get(addr: SocketAddr, path: &str) -> http::Request<Full<Bytes>> {
    http::Request::get(format!("http://{addr}{path}"))
        .header("host", addr.to_string())
        .body(Full::new(Bytes::new()))
        .expect("a well-formed request")
}
