//! The HTTP surface, driven in-process through the axum router (both builds): remote-write
//! status rules, validation, limits, tenants and auth, reports and self-monitoring.
//!
//! Method: one node on the simulated filesystem with a manual clock; requests go through
//! `tower::ServiceExt::oneshot`; stored data is read back through `Engine::select`. Every bad
//! input is checked for its status, its reason, and that nothing stored before changed.

use std::sync::Arc;

use axum::body::Body;
use axum::Router;
use http::{Request, StatusCode};
use sextant::config::{IngestLimits, ServeConfig};
use sextant::http::router;
use sextant::node::{EngineSlot, Node};
use sextant::remote_write::{encode_write_request, Label, MetricMetadata, MetricType, Sample, TimeSeries, WriteRequest};
use sextant_core::clock::ManualClock;
use sextant_core::matcher::{MatchOp, Matcher};
use sextant_core::sample::STALE_NAN_BITS;
use sextant_storage::engine::{Engine, EngineConfig};
use sextant_storage::fs::sim::SimFs;
use sextant_storage::wal::WalConfig;
use tower::ServiceExt;

const NOW: i64 = 1_700_000_000_000;

struct Harness {
    node: Arc<Node>,
    router: Router,
    engine: Engine,
    clock: Arc<ManualClock>,
}

async fn harness_with(limits: IngestLimits, tokens: Option<&str>, now: i64) -> Harness {
    let clock = Arc::new(ManualClock::new(now));
    let config = ServeConfig { limits, ..ServeConfig::default() };
    let tokens = tokens.map(|t| sextant::auth::Tokens::parse(t).unwrap());
    let node = Node::new(config, clock.clone(), tokens);
    let engine_config = EngineConfig { shard_ids: vec![0, 1, 2, 3], wal: WalConfig { segment_bytes: 1 << 20, ..WalConfig::default() }, retention_ms: None, ..EngineConfig::default() };
    let engine = Engine::open(Arc::new(SimFs::new(7)), clock.clone(), engine_config).await.expect("engine opens");
    node.set_engine(EngineSlot::Ready(engine.clone()));
    Harness { router: router(node.clone()), node, engine, clock }
}

async fn harness() -> Harness {
    harness_with(IngestLimits::default(), None, NOW).await
}

fn series(pairs: &[(&str, &str)], samples: &[(i64, f64)]) -> TimeSeries {
    TimeSeries {
        labels: pairs.iter().map(|(n, v)| Label { name: n.to_string(), value: v.to_string() }).collect(),
        samples: samples.iter().map(|(t, v)| Sample { timestamp: *t, value: *v }).collect(),
        exemplars: vec![],
        histograms: vec![],
    }
}

fn request(timeseries: Vec<TimeSeries>) -> WriteRequest {
    WriteRequest { timeseries, metadata: vec![] }
}

/// Standard remote-write 1.0 headers, as Prometheus 2.42 sends them.
fn standard_headers() -> Vec<(&'static str, String)> {
    vec![
        ("content-type", "application/x-protobuf".into()),
        ("content-encoding", "snappy".into()),
        ("x-prometheus-remote-write-version", "0.1.0".into()),
    ]
}

async fn send(router: &Router, method: &str, uri: &str, headers: &[(&str, String)], body: Vec<u8>) -> (StatusCode, String) {
    let mut builder = Request::builder().method(method).uri(uri);
    for (name, value) in headers {
        builder = builder.header(*name, value.as_str());
    }
    let response = router.clone().oneshot(builder.body(Body::from(body)).unwrap()).await.unwrap();
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 24).await.unwrap();
    (status, String::from_utf8_lossy(&bytes).into_owned())
}

async fn write(h: &Harness, request: &WriteRequest) -> (StatusCode, String) {
    send(&h.router, "POST", "/api/v1/write", &standard_headers(), encode_write_request(request)).await
}

/// Every stored sample of the tenant as (series, t, value bits).
async fn dump(engine: &Engine, tenant: &str) -> Vec<(String, i64, u64)> {
    let all = vec![Matcher::new(MatchOp::RegexMatch, "__name__", ".+").unwrap()];
    let mut out = Vec::new();
    for s in engine.select(tenant, &all, i64::MIN, i64::MAX).await.unwrap() {
        for sample in s.samples {
            out.push((s.labels.to_string(), sample.t, sample.v.to_bits()));
        }
    }
    out
}

// Goal: a good request answers 204 and its samples read back exactly; NaN, ±Inf and
// Prometheus's staleness marker keep their bits.
#[tokio::test]
async fn good_request_and_special_values_round_trip() {
    let h = harness().await;
    let stale = f64::from_bits(STALE_NAN_BITS);
    let odd_nan = f64::from_bits(0x7ff8_0000_dead_beef);
    let req = request(vec![
        series(&[("__name__", "up"), ("job", "node")], &[(NOW - 2000, 1.0), (NOW - 1000, stale)]),
        // -0.0 is not here: proto3 encoders (prost, Prometheus's gogo) omit a double equal to
        // 0.0, so it travels as +0.0; the decoder keeps an explicit -0.0 (remote_write tests).
        series(&[("__name__", "x"), ("k", "v")], &[(NOW - 3000, f64::INFINITY), (NOW - 2000, f64::NEG_INFINITY), (NOW - 1000, odd_nan), (NOW, 0.5)]),
    ]);
    let (status, body) = write(&h, &req).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    let stored = dump(&h.engine, "default").await;
    let expected = vec![
        ("up{job=\"node\"}".to_string(), NOW - 2000, 1f64.to_bits()),
        ("up{job=\"node\"}".to_string(), NOW - 1000, STALE_NAN_BITS),
        ("x{k=\"v\"}".to_string(), NOW - 3000, f64::INFINITY.to_bits()),
        ("x{k=\"v\"}".to_string(), NOW - 2000, f64::NEG_INFINITY.to_bits()),
        ("x{k=\"v\"}".to_string(), NOW - 1000, 0x7ff8_0000_dead_beef),
        ("x{k=\"v\"}".to_string(), NOW, 0.5f64.to_bits()),
    ];
    assert_eq!(stored, expected);
    // The same request again is all duplicates: a success that changes nothing.
    let (status, _) = write(&h, &req).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(dump(&h.engine, "default").await, expected);
}

fn shared_dir() -> Option<std::path::PathBuf> {
    let candidates = [std::env::var("SEXTANT_SHARED").ok().map(std::path::PathBuf::from), Some(std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared"))];
    candidates.into_iter().flatten().find(|p| p.join("datasets").is_dir())
}

// Goal: a body captured from a real Prometheus 2.42 decodes, is accepted with its original
// headers, and every sample in it is stored. Method: decode the golden file, set the node's
// clock to its newest timestamp, post it, compare counts and the staleness markers' bits.
#[tokio::test]
async fn golden_prometheus_242_body() {
    let Some(dir) = shared_dir() else {
        assert_ne!(std::env::var("CI").as_deref(), Ok("true"), "shared datasets missing under CI");
        println!("SKIP golden_prometheus_242_body: ../shared/datasets not found (set SEXTANT_SHARED)");
        return;
    };
    let body = std::fs::read(dir.join("datasets/prometheus-2.42-remote-write-500-series.bin")).unwrap();
    let headers_json: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("datasets/prometheus-2.42-remote-write-500-series.headers.json")).unwrap()).unwrap();
    let decoded = sextant::remote_write::decode_write_request(&body, 32 << 20).unwrap();
    assert_eq!(decoded.timeseries.len(), 500);
    let samples: usize = decoded.timeseries.iter().map(|ts| ts.samples.len()).sum();
    let newest = decoded.timeseries.iter().flat_map(|ts| ts.samples.iter().map(|s| s.timestamp)).max().unwrap();
    let stale_markers = decoded.timeseries.iter().flat_map(|ts| ts.samples.iter()).filter(|s| s.value.to_bits() == STALE_NAN_BITS).count();

    let h = harness_with(IngestLimits::default(), None, newest).await;
    let mut headers = Vec::new();
    for pair in headers_json["headers"].as_array().unwrap() {
        let name = pair[0].as_str().unwrap().to_ascii_lowercase();
        if ["content-type", "content-encoding", "x-prometheus-remote-write-version", "user-agent"].contains(&name.as_str()) {
            headers.push((Box::leak(name.into_boxed_str()) as &str, pair[1].as_str().unwrap().to_string()));
        }
    }
    let (status, text) = send(&h.router, "POST", "/api/v1/write", &headers, body).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{text}");
    let stored = dump(&h.engine, "default").await;
    assert_eq!(stored.len(), samples);
    assert_eq!(stored.iter().filter(|(_, _, bits)| *bits == STALE_NAN_BITS).count(), stale_markers);
}

const LABEL_NAMES: [&str; 65] = [
    "l0", "l1", "l2", "l3", "l4", "l5", "l6", "l7", "l8", "l9", "l10", "l11", "l12", "l13", "l14", "l15", "l16", "l17", "l18", "l19", "l20", "l21",
    "l22", "l23", "l24", "l25", "l26", "l27", "l28", "l29", "l30", "l31", "l32", "l33", "l34", "l35", "l36", "l37", "l38", "l39", "l40", "l41", "l42",
    "l43", "l44", "l45", "l46", "l47", "l48", "l49", "l50", "l51", "l52", "l53", "l54", "l55", "l56", "l57", "l58", "l59", "l60", "l61", "l62", "l63", "l64",
];

fn snappy(raw: &[u8]) -> Vec<u8> {
    snap::raw::Encoder::new().compress_vec(raw).unwrap()
}

// Goal: every bad input answers its 4xx with a reason, the server keeps serving, and nothing
// stored before changes. Method: a table of (name, headers, body, status, reason fragment);
// after each case the tenant's dump must equal the one taken before the table.
#[allow(clippy::type_complexity)]
#[tokio::test]
async fn bad_inputs_table() {
    let limits = IngestLimits { body_bytes_max: 16 << 20, ..IngestLimits::default() };
    let h = harness_with(limits, None, NOW).await;
    let (status, _) = write(&h, &request(vec![series(&[("__name__", "base")], &[(NOW - 5000, 5.0)])])).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let before = dump(&h.engine, "default").await;

    let good = encode_write_request(&request(vec![series(&[("__name__", "m")], &[(NOW, 1.0)])]));
    let hdr = standard_headers;
    let with = |name: &'static str, value: &str| {
        let mut headers: Vec<(&'static str, String)> = hdr().into_iter().filter(|(n, _)| *n != name).collect();
        headers.push((name, value.to_string()));
        headers
    };
    let without = |name: &'static str| hdr().into_iter().filter(|(n, _)| *n != name).collect::<Vec<_>>();
    let one = |ts: TimeSeries| encode_write_request(&request(vec![ts]));
    let huge_value = "v".repeat(5000);
    let many_labels: Vec<(String, String)> = (0..1_000_000).map(|i| (format!("l{i}"), "v".to_string())).collect();
    let many_labels_series = TimeSeries {
        labels: std::iter::once(Label { name: "__name__".into(), value: "wide".into() }).chain(many_labels.iter().map(|(n, v)| Label { name: n.clone(), value: v.clone() })).collect(),
        samples: vec![Sample { value: 1.0, timestamp: NOW }],
        exemplars: vec![],
        histograms: vec![],
    };
    let invalid_utf8_body = {
        let mut raw = prost::Message::encode_to_vec(&request(vec![series(&[("__name__", "bad"), ("k", "zz")], &[(NOW, 1.0)])]));
        let at = raw.windows(2).position(|w| w == b"zz").unwrap();
        raw[at] = 0xc3;
        raw[at + 1] = 0x28;
        snappy(&raw)
    };
    let mut bomb = vec![0x80, 0x80, 0x80, 0x80, 0x04];
    bomb.extend_from_slice(&[0; 64]);

    let cases: Vec<(&str, Vec<(&'static str, String)>, Vec<u8>, u16, &str)> = vec![
        ("truncated body", hdr(), good[..good.len() - 2].to_vec(), 400, "snappy"),
        ("garbage body", hdr(), b"\xff\xfe garbage that is not snappy".to_vec(), 400, "not a valid"),
        ("empty body", hdr(), vec![], 400, "snappy"),
        ("uncompressed protobuf", hdr(), prost::Message::encode_to_vec(&request(vec![series(&[("__name__", "m")], &[(NOW, 1.0)])])), 400, "snappy"),
        ("snappy bomb", hdr(), bomb, 413, "declares 1073741824"),
        ("body over the limit", hdr(), vec![0u8; (16 << 20) + 10], 413, "limit"),
        ("json content type", with("content-type", "application/json"), good.clone(), 415, "Content-Type"),
        ("remote-write 2.0", with("content-type", "application/x-protobuf;proto=io.prometheus.write.v2.Request"), good.clone(), 415, "remote-write 1.0"),
        ("version 2.0.0", with("x-prometheus-remote-write-version", "2.0.0"), good.clone(), 415, "0.1.0"),
        ("gzip encoding", with("content-encoding", "gzip"), good.clone(), 415, "snappy"),
        ("no encoding", without("content-encoding"), good.clone(), 415, "snappy"),
        ("invalid utf-8 value", hdr(), invalid_utf8_body, 400, "WriteRequest"),
        ("huge label value", hdr(), one(series(&[("__name__", "m"), ("k", &huge_value)], &[(NOW, 1.0)])), 400, "5000 bytes"),
        ("a million labels", hdr(), one(many_labels_series), 413, "budget"),
        ("65 labels", hdr(), one(series(&(0..65).map(|i| if i == 0 { ("__name__", "m") } else { (LABEL_NAMES[i], "v") }).collect::<Vec<_>>(), &[(NOW, 1.0)])), 400, "65 labels, more than the limit of 64"),
        ("empty label name", hdr(), one(series(&[("__name__", "m"), ("", "v")], &[(NOW, 1.0)])), 400, "empty label name"),
        ("duplicate label name", hdr(), one(series(&[("__name__", "m"), ("a", "1"), ("a", "2")], &[(NOW, 1.0)])), 400, "duplicate label name \"a\""),
        ("no metric name", hdr(), one(series(&[("job", "x")], &[(NOW, 1.0)])), 400, "no metric name"),
        ("reserved label name", hdr(), one(series(&[("__name__", "m"), ("__x", "1")], &[(NOW, 1.0)])), 400, "reserved"),
        ("far-future timestamp", hdr(), one(series(&[("__name__", "m")], &[(NOW + 2 * 3_600_000, 1.0)])), 400, "ahead of the node's clock"),
        ("negative timestamp", hdr(), one(series(&[("__name__", "m")], &[(-5, 1.0)])), 400, "older than the node's clock"),
        ("conflicting value", hdr(), one(series(&[("__name__", "base")], &[(NOW - 5000, 6.0)])), 400, "first write wins"),
        ("native histogram", hdr(), one(TimeSeries { histograms: vec![vec![0x08, 0x01]], ..series(&[("__name__", "h")], &[]) }), 400, "native histograms are not supported"),
        ("bad tenant", with("x-scope-orgid", "../etc"), good.clone(), 400, "invalid tenant"),
    ];
    for (name, headers, body, status, reason) in cases {
        let (got, text) = send(&h.router, "POST", "/api/v1/write", &headers, body).await;
        assert_eq!(got.as_u16(), status, "{name}: {text}");
        assert!(text.contains(reason), "{name}: {text:?} should contain {reason:?}");
        assert_eq!(dump(&h.engine, "default").await, before, "{name}: stored data changed");
    }
    // The server still serves, and an empty request is a success that stores nothing.
    let (status, _) = write(&h, &request(vec![])).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = send(&h.router, "GET", "/-/healthy", &[], vec![]).await;
    assert_eq!(status, StatusCode::OK);
}

// Goal: a request mixing good and bad series answers 400 with the count and reasons, and the
// good samples are stored; a skewed client's future sample never blocks current samples.
#[tokio::test]
async fn partial_refusal_stores_the_valid_samples() {
    let h = harness().await;
    let req = request(vec![
        series(&[("__name__", "ok"), ("i", "1")], &[(NOW - 1000, 1.0), (NOW, 2.0)]),
        series(&[("__name__", "ok"), ("i", "2")], &[(NOW + 2 * 3_600_000, 3.0)]),
        series(&[("__name__", "ok"), ("", "x")], &[(NOW, 4.0)]),
    ]);
    let (status, text) = write(&h, &req).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(text.starts_with("2 of 4 samples refused (2 stored or already present)"), "{text}");
    assert!(text.contains("empty label name") && text.contains("ahead of the node's clock"), "{text}");
    let (status, _) = write(&h, &request(vec![series(&[("__name__", "ok"), ("i", "3")], &[(NOW, 5.0)])])).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(dump(&h.engine, "default").await.len(), 3);
}

// Goal: the series limits refuse only new series, name the metric and the limit, and let
// existing series and other metrics keep ingesting; the runaway detector flags the bomb.
#[tokio::test]
async fn cardinality_limits() {
    let limits = IngestLimits { series_per_metric_max: 3, series_per_tenant_max: 5, runaway_new_series_max: 8, ..IngestLimits::default() };
    let h = harness_with(limits, None, NOW).await;
    let bomb = |from: usize, to: usize, t: i64| request((from..to).map(|i| series(&[("__name__", "bomb"), ("id", &i.to_string())], &[(t, 1.0)])).collect());
    let (status, _) = write(&h, &bomb(0, 3, NOW - 10_000)).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, text) = write(&h, &bomb(0, 20, NOW - 9_000)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(text.starts_with("17 of 20 samples refused"), "{text}");
    assert!(text.contains("metric \"bomb\" has reached its limit of 3 active series"), "{text}");
    // Existing series keep ingesting, other metrics too, up to the tenant limit.
    let (status, text) = write(&h, &request(vec![series(&[("__name__", "bomb"), ("id", "1")], &[(NOW - 8_000, 2.0)]), series(&[("__name__", "calm"), ("id", "1")], &[(NOW, 1.0)]), series(&[("__name__", "calm"), ("id", "2")], &[(NOW, 1.0)])])).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{text}");
    let (status, text) = write(&h, &request(vec![series(&[("__name__", "calm"), ("id", "3")], &[(NOW, 1.0)])])).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(text.contains("tenant \"default\" has reached its limit of 5 active series"), "{text}");
    // Other tenants are not affected.
    let mut headers = standard_headers();
    headers.push(("x-scope-orgid", "other".into()));
    let (status, _) = send(&h.router, "POST", "/api/v1/write", &headers, encode_write_request(&bomb(0, 3, NOW))).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(dump(&h.engine, "other").await.len(), 3);

    let runaway = h.node.runaway("default");
    assert_eq!(runaway.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(), vec!["bomb"]);
    let (status, report) = send(&h.router, "GET", "/api/v1/status/tsdb", &[], vec![]).await;
    assert_eq!(status, StatusCode::OK);
    let report: serde_json::Value = serde_json::from_str(&report).unwrap();
    assert_eq!(report["status"], "success");
    assert_eq!(report["data"]["headStats"]["numSeries"], 5);
    assert_eq!(report["data"]["seriesCountByMetricName"], serde_json::json!([{"name": "bomb", "value": 3}, {"name": "calm", "value": 2}]));
    assert_eq!(report["data"]["runawayMetrics"][0]["name"], "bomb");
    h.node.maintain().await;
    let (_, metrics) = send(&h.router, "GET", "/metrics", &[], vec![]).await;
    assert!(metrics.contains("sextant_runaway_metric{tenant=\"default\",metric=\"bomb\"} 1"), "{metrics}");
    assert!(metrics.contains("sextant_cardinality_refusals_total{tenant=\"default\",metric=\"bomb\"} 17"), "{metrics}");
    assert!(metrics.contains("sextant_remote_write_samples_refused_total{reason=\"series_per_metric_limit\"} 17"), "{metrics}");
}

// Goal: the per-tenant token bucket answers 429 with nothing stored, refills with the clock,
// and does not touch other tenants.
#[tokio::test]
async fn rate_limit_is_per_tenant_and_refills() {
    let limits = IngestLimits { ingest_rate_samples_per_s_max: 10, ..IngestLimits::default() };
    let h = harness_with(limits, None, NOW).await;
    let batch = |t0: i64| request(vec![series(&[("__name__", "r")], &(0..20).map(|i| (t0 + i, 1.0)).collect::<Vec<_>>())]);
    let (status, _) = write(&h, &batch(NOW - 1000)).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, text) = write(&h, &batch(NOW - 500)).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert!(text.contains("rate limit of 10 samples/s"), "{text}");
    assert_eq!(dump(&h.engine, "default").await.len(), 20);
    let mut headers = standard_headers();
    headers.push(("x-scope-orgid", "b".into()));
    let (status, _) = send(&h.router, "POST", "/api/v1/write", &headers, encode_write_request(&batch(NOW - 500))).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    h.clock.advance_ms(2_000);
    let (status, _) = write(&h, &batch(NOW - 500)).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
}

// Goal: with a tokens file, 401 for a missing or unknown token, 403 for the wrong role or
// tenant, and nothing changes; the right token writes into its own tenant.
#[tokio::test]
async fn tokens_and_tenants() {
    let h = harness_with(IngestLimits::default(), Some("w-a team-a write\nr-a team-a read\n"), NOW).await;
    let body = encode_write_request(&request(vec![series(&[("__name__", "m")], &[(NOW, 1.0)])]));
    let with_auth = |token: Option<&str>, org: Option<&str>| {
        let mut headers = standard_headers();
        if let Some(token) = token {
            headers.push(("authorization", format!("Bearer {token}")));
        }
        if let Some(org) = org {
            headers.push(("x-scope-orgid", org.to_string()));
        }
        headers
    };
    let cases = [(None, None, 401), (Some("nope"), None, 401), (Some("r-a"), None, 403), (Some("w-a"), Some("team-b"), 403)];
    for (token, org, status) in cases {
        let (got, text) = send(&h.router, "POST", "/api/v1/write", &with_auth(token, org), body.clone()).await;
        assert_eq!(got.as_u16(), status, "{token:?} {org:?}: {text}");
    }
    assert!(dump(&h.engine, "team-a").await.is_empty());
    assert!(dump(&h.engine, "team-b").await.is_empty());
    let (status, _) = send(&h.router, "POST", "/api/v1/write", &with_auth(Some("w-a"), None), body.clone()).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(dump(&h.engine, "team-a").await.len(), 1);
    assert!(dump(&h.engine, "default").await.is_empty());
    // Reports need a read token of the tenant.
    let (status, _) = send(&h.router, "GET", "/api/v1/status/tsdb", &with_auth(Some("w-a"), None), vec![]).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, report) = send(&h.router, "GET", "/api/v1/status/tsdb", &with_auth(Some("r-a"), None), vec![]).await;
    assert_eq!(status, StatusCode::OK);
    assert!(report.contains("\"numSeries\":1"), "{report}");
}

// Goal: metadata-only requests (Prometheus sends them by default) answer 204 and are kept
// per tenant, latest wins.
#[tokio::test]
async fn metadata_only_request() {
    let h = harness().await;
    let meta = |help: &str| WriteRequest {
        timeseries: vec![],
        metadata: vec![MetricMetadata { r#type: MetricType::Counter as i32, metric_family_name: "http_requests_total".into(), help: help.into(), unit: String::new() }],
    };
    let (status, _) = write(&h, &meta("old")).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = write(&h, &meta("Requests.")).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let table = h.node.metadata("default");
    assert_eq!(table.len(), 1);
    assert_eq!(table["http_requests_total"].metric_type, "counter");
    assert_eq!(table["http_requests_total"].help, "Requests.");
    assert!(h.node.metadata("other").is_empty());
    assert!(dump(&h.engine, "default").await.is_empty());
}

// Goal: /-/ready is 503 while storage opens and after shutdown begins, 200 in between; writes
// answer 503 (retryable) while not ready; /metrics exposes the ingest counters.
#[tokio::test]
async fn readiness_and_metrics() {
    let h = harness().await;
    let (status, _) = send(&h.router, "GET", "/-/ready", &[], vec![]).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = write(&h, &request(vec![series(&[("__name__", "m")], &[(NOW, 1.0)])])).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, metrics) = send(&h.router, "GET", "/metrics", &[], vec![]).await;
    assert_eq!(status, StatusCode::OK);
    for needle in [
        "sextant_remote_write_samples_received_total 1",
        "sextant_remote_write_samples_stored_total 1",
        "sextant_http_requests_total{handler=\"write\",code=\"204\"} 1",
        "sextant_head_series 1",
        "sextant_ready 1",
        "sextant_remote_write_duration_seconds_count 1",
    ] {
        assert!(metrics.contains(needle), "missing {needle:?} in\n{metrics}");
    }
    let opening = Node::new(ServeConfig::default(), h.clock.clone(), None);
    let opening_router = router(opening.clone());
    let (status, text) = send(&opening_router, "GET", "/-/ready", &[], vec![]).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(text.contains("replaying the WAL"), "{text}");
    let (status, _) = send(&opening_router, "POST", "/api/v1/write", &standard_headers(), encode_write_request(&request(vec![series(&[("__name__", "m")], &[(NOW, 1.0)])]))).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    let engine = h.node.take_engine_for_close().unwrap();
    let (status, _) = send(&h.router, "GET", "/-/ready", &[], vec![]).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    engine.close().await.unwrap();
}

// Goal: a blocked label name refuses its series with a reason naming the label.
#[tokio::test]
async fn blocked_label() {
    let limits = IngestLimits { blocked_label_names: ["session_id".to_string()].into_iter().collect(), ..IngestLimits::default() };
    let h = harness_with(limits, None, NOW).await;
    let (status, text) = write(&h, &request(vec![series(&[("__name__", "m"), ("session_id", "abc")], &[(NOW, 1.0)]), series(&[("__name__", "m")], &[(NOW, 1.0)])])).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(text.contains("label name \"session_id\" is blocked"), "{text}");
    assert_eq!(dump(&h.engine, "default").await.len(), 1);
}

// Goal: series the storage memory budget refuses to create are refused as retryable (503),
// counted under `memory_budget` however many there are (past the engine's 16 detailed
// refusals), and not counted as active: they never use up the tenant's series limit, so the
// next new series is refused for memory again, not for a limit of phantom series.
#[tokio::test]
async fn memory_budget_refusals_are_counted_and_not_active() {
    let clock = Arc::new(ManualClock::new(NOW));
    let limits = IngestLimits { series_per_tenant_max: 30, ..IngestLimits::default() };
    let node = Node::new(ServeConfig { limits, ..ServeConfig::default() }, clock.clone(), None);
    let engine_config = EngineConfig { shard_ids: vec![0, 1, 2, 3], memory_bytes_max: 8_000, retention_ms: None, ..EngineConfig::default() };
    let engine = Engine::open(Arc::new(SimFs::new(11)), clock.clone(), engine_config).await.expect("engine opens");
    node.set_engine(EngineSlot::Ready(engine.clone()));
    let h = Harness { router: router(node.clone()), node, engine, clock };
    let bomb = |from: usize, to: usize| request((from..to).map(|i| series(&[("__name__", "bomb"), ("id", &i.to_string())], &[(NOW, 1.0)])).collect());

    let (status, text) = write(&h, &bomb(0, 25)).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{text}");
    assert!(text.contains("memory budget"), "{text}");
    let stored = dump(&h.engine, "default").await.len();
    assert!(stored > 0 && stored < 20, "the budget holds some series, well under the tenant limit: {stored}");
    let (_, metrics) = send(&h.router, "GET", "/metrics", &[], vec![]).await;
    assert!(metrics.contains(&format!("sextant_remote_write_samples_refused_total{{reason=\"memory_budget\"}} {}", 25 - stored)), "{metrics}");
    assert!(!metrics.contains("storage_other"), "{metrics}");
    let (_, report) = send(&h.router, "GET", "/api/v1/status/tsdb", &[], vec![]).await;
    let report: serde_json::Value = serde_json::from_str(&report).unwrap();
    assert_eq!(report["data"]["activeSeries"], stored, "{report}");

    // As many new series as the tenant limit leaves room for, counting only stored series:
    // refused for memory again (retryable), never for the tenant limit.
    let (status, text) = write(&h, &bomb(25, 25 + 30 - stored)).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{text}");
    assert!(!text.contains("reached its limit"), "{text}");
    // An existing series keeps ingesting.
    let existing = dump(&h.engine, "default").await[0].0.clone();
    let id = existing.split('"').nth(1).expect("bomb{id=\"N\"}").to_string();
    let (status, text) = write(&h, &request(vec![series(&[("__name__", "bomb"), ("id", &id)], &[(NOW + 1, 2.0)])])).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{text}");
    assert_eq!(dump(&h.engine, "default").await.len(), stored + 1);
}
