//! The HTTP surface: an axum `Router` over a [`Node`].
//!
//! | route | what |
//! |---|---|
//! | `POST /api/v1/write` | Prometheus Remote-Write 1.0 receiver (role `write`) |
//! | `GET /api/v1/status/tsdb` | cardinality report of the caller's tenant (role `read`) |
//! | `/api/v1/query`, `query_range`, `series`, `labels`, `label/{name}/values`, `metadata`, `status/buildinfo`, `rules`, `alerts`, `format_query`, `query_exemplars` | the Prometheus query API (`query_api`; role `read`) |
//! | `GET /metrics` | the node's own metrics |
//! | `GET /-/healthy` | 200 while the process serves HTTP |
//! | `GET /-/ready` | 200 when writes are accepted; 503 while opening/replaying, after a poisoned WAL, while shutting down, while the metadata member is not running, and while most recent clients are ahead of this node's clock past `future_skew_ms_max` (clockcheck.rs) |
//!
//! Remote-write header rules: `Content-Type` must be `application/x-protobuf` (absent is
//! accepted; a `proto=` parameter other than `prometheus.WriteRequest`, i.e. Remote-Write
//! 2.0, answers 415 until 2.0 is implemented); `Content-Encoding` must be `snappy` (415
//! otherwise); `X-Prometheus-Remote-Write-Version` must be absent or `0.1.x` (415 otherwise).
//! A body over `--body-bytes-max`, compressed or as declared by its snappy preamble, answers
//! 413 before it is read or inflated.

// Helpers return the ready-made error `Response` (128 bytes) on the cold path; boxing it
// would only add an allocation there.
#![allow(clippy::result_large_err)]

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use axum::Router;

use crate::auth::{authorize, AuthError, Role};
use crate::node::Node;
use crate::query_api;
use crate::remote_write::{decode_write_request, BodyError};

/// Builds the router.
pub fn router(node: Arc<Node>) -> Router {
    Router::new()
        .route("/api/v1/write", post(write))
        .route("/api/v1/status/tsdb", get(status_tsdb))
        .route("/api/v1/query", get(query_api::query).post(query_api::query))
        .route("/api/v1/query_range", get(query_api::query_range).post(query_api::query_range))
        .route("/api/v1/series", get(query_api::series).post(query_api::series))
        .route("/api/v1/labels", get(query_api::labels).post(query_api::labels))
        .route("/api/v1/label/{name}/values", get(query_api::label_values))
        .route("/api/v1/metadata", get(query_api::metadata))
        .route("/api/v1/status/buildinfo", get(query_api::buildinfo))
        .route("/api/v1/rules", get(query_api::rules))
        .route("/api/v1/alerts", get(query_api::alerts))
        .route("/api/v1/format_query", get(query_api::format_query).post(query_api::format_query))
        .route("/api/v1/query_exemplars", get(query_api::query_exemplars).post(query_api::query_exemplars))
        .route("/api/v1/{*rest}", any(query_api::not_found))
        .route("/metrics", get(metrics))
        .route("/-/healthy", get(healthy))
        .route("/-/ready", get(ready))
        .with_state(node)
}

fn text(status: u16, message: impl Into<String>) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut message = message.into();
    if status == StatusCode::NO_CONTENT {
        return status.into_response();
    }
    if !message.ends_with('\n') {
        message.push('\n');
    }
    (status, [(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"))], message).into_response()
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Result<Option<&'a str>, Response> {
    match headers.get(name) {
        None => Ok(None),
        Some(value) => value.to_str().map(Some).map_err(|_| text(400, format!("header {name} is not visible ASCII"))),
    }
}

pub(crate) fn tenant_for(node: &Node, headers: &HeaderMap, needs: Role) -> Result<String, Response> {
    let authorization = header_str(headers, "authorization")?;
    let org_id = header_str(headers, "x-scope-orgid")?;
    authorize(node.tokens(), authorization, org_id, needs).map_err(|error: AuthError| {
        let mut response = text(error.status(), error.to_string());
        if error.status() == 401 {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    })
}

/// Checks the remote-write headers; Err is the response to send.
fn check_write_headers(headers: &HeaderMap) -> Result<(), Response> {
    if let Some(content_type) = header_str(headers, "content-type")? {
        let mut parts = content_type.split(';');
        let media = parts.next().unwrap_or("").trim().to_ascii_lowercase();
        if media != "application/x-protobuf" {
            return Err(text(415, format!("unsupported Content-Type {content_type:?}: remote-write 1.0 sends application/x-protobuf")));
        }
        for parameter in parts {
            let (key, value) = parameter.split_once('=').unwrap_or((parameter, ""));
            if key.trim().eq_ignore_ascii_case("proto") && value.trim().trim_matches('"') != "prometheus.WriteRequest" {
                return Err(text(415, format!("unsupported remote-write message {:?}: this node implements remote-write 1.0 (prometheus.WriteRequest) only; configure the sender for 1.0", value.trim())));
            }
        }
    }
    match header_str(headers, "content-encoding")? {
        Some(encoding) if encoding.trim().eq_ignore_ascii_case("snappy") => {}
        Some(encoding) => return Err(text(415, format!("unsupported Content-Encoding {encoding:?}: remote-write bodies are snappy block-compressed"))),
        None => return Err(text(415, "missing Content-Encoding: remote-write bodies are snappy block-compressed (Content-Encoding: snappy)")),
    }
    if let Some(version) = header_str(headers, "x-prometheus-remote-write-version")? {
        if !version.trim().starts_with("0.1.") {
            return Err(text(415, format!("unsupported X-Prometheus-Remote-Write-Version {version:?}: this node implements 0.1.0 (remote-write 1.0)")));
        }
    }
    Ok(())
}

async fn write(State(node): State<Arc<Node>>, client: Option<axum::Extension<crate::server::ClientAddr>>, headers: HeaderMap, body: Body) -> Response {
    let started_ns = node.clock().now_monotonic_ns();
    let client = client.map(|axum::Extension(crate::server::ClientAddr(addr))| addr.ip());
    let response = write_inner(&node, client, &headers, body).await;
    let elapsed_ns = node.clock().now_monotonic_ns().saturating_sub(started_ns);
    node.metrics.write_duration_seconds.observe(elapsed_ns as f64 / 1e9);
    node.metrics.request("write", response.status().as_u16());
    response
}

async fn write_inner(node: &Node, client: Option<std::net::IpAddr>, headers: &HeaderMap, body: Body) -> Response {
    let tenant = match tenant_for(node, headers, Role::Write) {
        Ok(tenant) => tenant,
        Err(response) => return response,
    };
    if let Err(response) = check_write_headers(headers) {
        return response;
    }
    let body_bytes_max = node.config().limits.body_bytes_max;
    if let Ok(Some(length)) = header_str(headers, "content-length") {
        if length.trim().parse::<u64>().is_ok_and(|n| n > body_bytes_max as u64) {
            node.metrics.refused("body_too_large", 0);
            return text(413, BodyError::CompressedTooLarge { bytes: length.trim().parse().unwrap_or(usize::MAX), max: body_bytes_max }.to_string());
        }
    }
    // One byte over the limit is enough to know the body is too large.
    let bytes = match axum::body::to_bytes(body, body_bytes_max.saturating_add(1)).await {
        Ok(bytes) => bytes,
        Err(error) => {
            return text(413, format!("could not read a body of at most {body_bytes_max} bytes: {error}"));
        }
    };
    let request = match decode_write_request(&bytes, body_bytes_max) {
        Ok(request) => request,
        Err(error) => {
            node.metrics.refused("malformed_body", 0);
            let status = if error.is_too_large() { 413 } else { 400 };
            return text(status, error.to_string());
        }
    };
    // Every decoded request tells the clock check how the client's clock compares with this
    // node's (clockcheck.rs), refused or not.
    let newest_t_ms = request.timeseries.iter().flat_map(|ts| ts.samples.iter().map(|s| s.timestamp)).max();
    if let (Some(client), Some(newest_t_ms)) = (client, newest_t_ms) {
        node.observe_client_clock(client, newest_t_ms);
    }
    // Forwarded writes carry the client's token to the shards' primaries (route.rs).
    let authorization = if node.tokens().is_some() { header_str(headers, "authorization").ok().flatten() } else { None };
    let outcome = node.ingest_as(&tenant, request, authorization).await;
    text(outcome.status, outcome.message)
}

#[derive(serde::Deserialize)]
struct TsdbQuery {
    limit: Option<usize>,
}

/// Entries per list when the caller gives no `limit`, and the most it may ask for.
const TSDB_LIMIT_DEFAULT: usize = 10;
const TSDB_LIMIT_MAX: usize = 10_000;

async fn status_tsdb(State(node): State<Arc<Node>>, headers: HeaderMap, Query(query): Query<TsdbQuery>) -> Response {
    let response = status_tsdb_inner(&node, &headers, query.limit).await;
    node.metrics.request("status_tsdb", response.status().as_u16());
    response
}

fn prometheus_error(status: u16, error_type: &str, message: &str) -> Response {
    let body = serde_json::json!({"status": "error", "errorType": error_type, "error": message});
    (StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR), axum::Json(body)).into_response()
}

async fn status_tsdb_inner(node: &Node, headers: &HeaderMap, limit: Option<usize>) -> Response {
    let tenant = match tenant_for(node, headers, Role::Read) {
        Ok(tenant) => tenant,
        Err(response) => return response,
    };
    let limit = limit.unwrap_or(TSDB_LIMIT_DEFAULT).clamp(1, TSDB_LIMIT_MAX);
    let engine = match node.engine() {
        Ok(engine) => engine,
        Err(reason) => return prometheus_error(503, "unavailable", &reason),
    };
    let report = engine.cardinality(&tenant).await;
    let by_metric: Vec<serde_json::Value> = report.series_per_metric.iter().take(limit).map(|(name, value)| serde_json::json!({"name": name, "value": value})).collect();
    let mut by_label = report.labels.clone();
    by_label.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    let value_counts: Vec<serde_json::Value> = by_label.iter().take(limit).map(|(name, values, _)| serde_json::json!({"name": name, "value": values})).collect();
    let label_pairs: u64 = report.labels.iter().map(|(_, values, _)| values).sum();
    let runaway = node.runaway(&tenant);
    let view = node.limits_view();
    let limits = view.for_tenant(&tenant);
    let body = serde_json::json!({
        "status": "success",
        "data": {
            "headStats": {"numSeries": report.head_series, "numLabelPairs": label_pairs},
            "seriesCountByMetricName": by_metric,
            "labelValueCountByLabelName": value_counts,
            // Needs per-value sizes and counts from storage (not in CardinalityReport yet).
            "memoryInBytesByLabelName": [],
            "seriesCountByLabelValuePair": [],
            "tenant": tenant,
            "activeSeries": node.active_series(&tenant, None),
            "limits": {
                "seriesPerMetricMax": limits.series_per_metric_max,
                "seriesPerTenantMax": limits.series_per_tenant_max,
                "ingestRateSamplesPerSecondMax": limits.ingest_rate_samples_per_s_max,
                "blockedLabels": limits.blocked_labels,
                // The metadata group's applied index these limits come from (0: the node's flags).
                "version": view.version,
            },
            "runawayMetrics": runaway,
        }
    });
    axum::Json(body).into_response()
}

async fn metrics(State(node): State<Arc<Node>>) -> Response {
    node.refresh_metrics().await;
    node.metrics.request("metrics", 200);
    let body = node.metrics.encode();
    (StatusCode::OK, [(header::CONTENT_TYPE, HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"))], body).into_response()
}

async fn healthy() -> Response {
    text(200, "Sextant is Healthy.")
}

async fn ready(State(node): State<Arc<Node>>) -> Response {
    match node.readiness() {
        Ok(()) => text(200, "Sextant is Ready."),
        Err(reason) => text(503, format!("Sextant is not ready: {reason}")),
    }
}
