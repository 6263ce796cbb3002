//! The Prometheus query API through the axum router, in-process (both builds): every endpoint's
//! JSON shape and errors, the request shapes Grafana's stock Prometheus data source sends,
//! writes read back sample by sample, queries of death, the duration limit and priority classes.
//!
//! Method: one node on the simulated filesystem with a manual clock (a ticking one for the
//! duration limit); data goes in through the real remote-write handler; requests go through
//! `tower::ServiceExt::oneshot`. Each table row is `check(request, expected status, expected
//! JSON fragment)`; fragments are exact substrings of the body, most of them the whole body.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::Router;
use http::{Request, StatusCode};
use sextant::config::{QueryConfig, ServeConfig};
use sextant::http::router;
use sextant::node::{EngineSlot, Node};
use sextant::query_scheduler::Priority;
use sextant::remote_write::{encode_write_request, Label, MetricMetadata, MetricType, Sample, TimeSeries, WriteRequest};
use sextant_core::clock::{Clock, ManualClock};
use sextant_core::matcher::{MatchOp, Matcher};
use sextant_storage::engine::{Engine, EngineConfig, SelectBudget};
use sextant_storage::fs::sim::SimFs;
use sextant_storage::wal::WalConfig;
use tower::ServiceExt;

/// The node's wall clock: 2023-11-14T22:13:20Z.
const NOW: i64 = 1_700_000_000_000;
/// First written sample: five minutes before NOW; samples every 15 s up to NOW.
const BASE: i64 = NOW - 300_000;
const STEP_MS: i64 = 15_000;
const POINTS: i64 = 21;

struct Harness {
    node: Arc<Node>,
    router: Router,
}

async fn harness_with(query: QueryConfig, clock: Arc<dyn Clock>) -> Harness {
    let config = ServeConfig { query, ..ServeConfig::default() };
    let node = Node::new(config, clock.clone(), None);
    let engine_config = EngineConfig { shard_ids: vec![0, 1, 2, 3], wal: WalConfig { segment_bytes: 1 << 20, ..WalConfig::default() }, retention_ms: None, ..EngineConfig::default() };
    let engine = Engine::open(Arc::new(SimFs::new(11)), clock, engine_config).await.expect("engine opens");
    node.set_engine(EngineSlot::Ready(engine));
    Harness { router: router(node.clone()), node }
}

async fn harness(query: QueryConfig) -> Harness {
    harness_with(query, Arc::new(ManualClock::new(NOW))).await
}

fn series(pairs: &[(&str, &str)], samples: &[(i64, f64)]) -> TimeSeries {
    TimeSeries {
        labels: pairs.iter().map(|(n, v)| Label { name: n.to_string(), value: v.to_string() }).collect(),
        samples: samples.iter().map(|(t, v)| Sample { timestamp: *t, value: *v }).collect(),
        exemplars: vec![],
        histograms: vec![],
    }
}

/// One HTTP request.
struct Req {
    method: &'static str,
    uri: String,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
}

fn get(uri: &str) -> Req {
    Req { method: "GET", uri: uri.to_string(), headers: vec![], body: vec![] }
}

/// A form POST, as Grafana sends queries.
fn post_form(uri: &str, form: &str) -> Req {
    Req { method: "POST", uri: uri.to_string(), headers: vec![("content-type", "application/x-www-form-urlencoded".into())], body: form.as_bytes().to_vec() }
}

impl Req {
    fn header(mut self, name: &'static str, value: &str) -> Req {
        self.headers.push((name, value.to_string()));
        self
    }
}

async fn send(router: &Router, req: Req) -> (StatusCode, String) {
    let mut builder = Request::builder().method(req.method).uri(req.uri.as_str());
    for (name, value) in &req.headers {
        builder = builder.header(*name, value.as_str());
    }
    let response = router.clone().oneshot(builder.body(Body::from(req.body)).unwrap()).await.unwrap();
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 26).await.unwrap();
    (status, String::from_utf8_lossy(&bytes).into_owned())
}

/// The one assertion helper: status and a fragment of the body.
async fn check(h: &Harness, req: Req, status: u16, fragment: &str) {
    let uri = req.uri.clone();
    let (got_status, body) = send(&h.router, req).await;
    assert_eq!(got_status.as_u16(), status, "{uri}: body {body}");
    assert!(body.contains(fragment), "{uri}:\n  body     {body}\n  expected {fragment}");
    if status == 200 {
        assert!(body.starts_with("{\"status\":\"success\""), "{uri}: {body}");
    } else if body.starts_with('{') {
        assert!(body.starts_with("{\"status\":\"error\",\"errorType\":"), "{uri}: {body}");
    }
}

async fn remote_write(h: &Harness, request: &WriteRequest) {
    let req = Req {
        method: "POST",
        uri: "/api/v1/write".into(),
        headers: vec![("content-type", "application/x-protobuf".into()), ("content-encoding", "snappy".into()), ("x-prometheus-remote-write-version", "0.1.0".into())],
        body: encode_write_request(request),
    };
    let (status, body) = send(&h.router, req).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "remote-write: {body}");
}

fn points(f: impl Fn(i64) -> f64) -> Vec<(i64, f64)> {
    (0..POINTS).map(|i| (BASE + i * STEP_MS, f(i))).collect()
}

/// The standard data set: `up` for two instances, a counter, special values, metadata.
async fn standard_data(h: &Harness) {
    remote_write(
        h,
        &WriteRequest {
            timeseries: vec![
                series(&[("__name__", "up"), ("job", "node"), ("instance", "a")], &points(|_| 1.0)),
                series(&[("__name__", "up"), ("job", "node"), ("instance", "b")], &points(|i| if i < 10 { 1.0 } else { 0.0 })),
                series(&[("__name__", "http_requests_total"), ("job", "api"), ("code", "200")], &points(|i| (i * 10) as f64)),
            ],
            metadata: vec![
                MetricMetadata { r#type: MetricType::Counter as i32, metric_family_name: "http_requests_total".into(), help: "Requests served.".into(), unit: "".into() },
                MetricMetadata { r#type: MetricType::Gauge as i32, metric_family_name: "up".into(), help: "1 if the target is up.".into(), unit: "".into() },
            ],
        },
    )
    .await;
}

/// Seconds as the API takes them.
fn secs(t_ms: i64) -> String {
    if t_ms % 1000 == 0 {
        format!("{}", t_ms / 1000)
    } else {
        format!("{}.{:03}", t_ms / 1000, t_ms % 1000)
    }
}

fn enc(text: &str) -> String {
    form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

// Goal: /api/v1/query answers every result type in Prometheus's exact shape, GET and POST.
#[tokio::test]
async fn instant_query_shapes() {
    let h = harness(QueryConfig::default()).await;
    standard_data(&h).await;
    let t = secs(NOW);
    let cases: Vec<(Req, u16, String)> = vec![
        (
            get(&format!("/api/v1/query?query=up&time={t}")),
            200,
            format!("{{\"status\":\"success\",\"data\":{{\"resultType\":\"vector\",\"result\":[{{\"metric\":{{\"__name__\":\"up\",\"instance\":\"a\",\"job\":\"node\"}},\"value\":[{t},\"1\"]}},{{\"metric\":{{\"__name__\":\"up\",\"instance\":\"b\",\"job\":\"node\"}},\"value\":[{t},\"0\"]}}]}}}}"),
        ),
        // Grafana's data-source health check: a form POST of 1+1.
        (post_form("/api/v1/query", &format!("query={}&time={t}", enc("1+1"))), 200, format!("{{\"status\":\"success\",\"data\":{{\"resultType\":\"scalar\",\"result\":[{t},\"2\"]}}}}")),
        (get(&format!("/api/v1/query?query={}&time=1.5", enc("\"hello\""))), 200, "{\"status\":\"success\",\"data\":{\"resultType\":\"string\",\"result\":[1.500,\"hello\"]}}".into()),
        // A range vector from an instant query is a matrix of the raw samples.
        (
            get(&format!("/api/v1/query?query={}&time={t}", enc("http_requests_total[30s]"))),
            200,
            format!("{{\"resultType\":\"matrix\",\"result\":[{{\"metric\":{{\"__name__\":\"http_requests_total\",\"code\":\"200\",\"job\":\"api\"}},\"values\":[[{},\"190\"],[{t},\"200\"]]}}]}}", secs(NOW - 15_000)),
        ),
        // Missing time means now on the node's clock.
        (get("/api/v1/query?query=sum(up)"), 200, format!("\"result\":[{{\"metric\":{{}},\"value\":[{t},\"1\"]}}]")),
        // RFC3339 time; functions; the rate of a counter rising 10 per 15 s.
        (get(&format!("/api/v1/query?query={}&time=2023-11-14T22:13:20Z", enc("rate(http_requests_total[1m])"))), 200, format!("\"value\":[{t},\"0.6666666666666666\"]")),
        (get(&format!("/api/v1/query?query={}&time={t}", enc("1/0"))), 200, "\"result\":[1700000000,\"+Inf\"]".into()),
        (get(&format!("/api/v1/query?query={}&time={t}", enc("-1/0"))), 200, "\"result\":[1700000000,\"-Inf\"]".into()),
        (get(&format!("/api/v1/query?query={}&time={t}", enc("0/0"))), 200, "\"result\":[1700000000,\"NaN\"]".into()),
        (get(&format!("/api/v1/query?query={}&time=1700000000.123", enc("time()"))), 200, "\"result\":[1700000000.123,\"1700000000.123\"]".into()),
        (get("/api/v1/query?query=nonexistent"), 200, "{\"status\":\"success\",\"data\":{\"resultType\":\"vector\",\"result\":[]}}".into()),        // Annotations: rate over a gauge is an info, a quantile out of range a warning.
        (
            get(&format!("/api/v1/query?query={}&time={t}", enc("rate(up[1m])"))),
            200,
            "\"infos\":[\"PromQL info: metric might not be a counter, name does not end in _total/_sum/_count/_bucket: \\\"up\\\"\"]".into(),
        ),
        (
            get(&format!("/api/v1/query_range?query={}&start={t}&end={t}&step=15", enc("quantile(2, up)"))),
            200,
            "\"warnings\":[\"PromQL warning: quantile value should be between 0 and 1, got 2\"]".into(),
        ),
    ];
    for (req, status, fragment) in cases {
        check(&h, req, status, &fragment).await;
    }
}

// Goal: bad requests and failing queries answer Prometheus's error classes and statuses, with a
// message that says what was wrong.
#[tokio::test]
async fn query_errors() {
    let h = harness(QueryConfig::default()).await;
    standard_data(&h).await;
    let range = |params: &str| get(&format!("/api/v1/query_range?{params}"));
    let cases: Vec<(Req, u16, &str)> = vec![
        (get("/api/v1/query"), 400, "{\"status\":\"error\",\"errorType\":\"bad_data\",\"error\":\"invalid parameter \\\"query\\\": missing"),
        (get("/api/v1/query?query=up{"), 400, "\"errorType\":\"bad_data\",\"error\":\"invalid parameter \\\"query\\\": "),
        (get("/api/v1/query?query=up&time=yesterday"), 400, "\"error\":\"invalid parameter \\\"time\\\": cannot parse \\\"yesterday\\\" to a valid timestamp\""),
        (get("/api/v1/query?query=up&timeout=soon"), 400, "\"error\":\"invalid parameter \\\"timeout\\\": cannot parse \\\"soon\\\" to a valid duration\""),
        (get("/api/v1/query?query=up&priority=urgent"), 400, "\"error\":\"invalid parameter \\\"priority\\\": unknown query priority \\\"urgent\\\""),
        (get("/api/v1/query?query=up").header("x-sextant-query-priority", "vip"), 400, "\"errorType\":\"bad_data\",\"error\":\"header x-sextant-query-priority: unknown query priority"),
        (range("query=up&start=abc&end=2&step=1"), 400, "\"error\":\"invalid parameter \\\"start\\\": cannot parse \\\"abc\\\" to a valid timestamp\""),
        (range("query=up&start=10&end=5&step=1"), 400, "{\"status\":\"error\",\"errorType\":\"bad_data\",\"error\":\"invalid parameter \\\"end\\\": end timestamp must not be before start time\"}"),
        (range("query=up&start=1&end=5&step=0"), 400, "\"error\":\"invalid parameter \\\"step\\\": zero or negative query resolution step widths are not accepted. Try a positive integer\""),
        (range("query=up&start=1&end=5&step=-1"), 400, "zero or negative query resolution step widths are not accepted"),
        (range("query=up&start=0&end=11001&step=1"), 400, "{\"status\":\"error\",\"errorType\":\"bad_data\",\"error\":\"exceeded maximum resolution of 11,000 points per timeseries. Try decreasing the query resolution (?step=XX)\"}"),
        (range("query=up&start=0&end=1"), 400, "invalid parameter \\\"step\\\""),
        (range(&format!("query={}&start=1&end=5&step=1", enc("up[5m]"))), 400, "invalid expression type \\\"range vector\\\" for range query, must be Scalar or instant Vector"),
        // Valid PromQL that cannot be evaluated: Prometheus's "execution" class, 422.
        (get(&format!("/api/v1/query?query={}", enc("vector(1) * on() up"))), 422, "{\"status\":\"error\",\"errorType\":\"execution\",\"error\":\"found duplicate series for the match group {} on the right hand-side of the operation"),
    ];
    for (req, status, fragment) in cases {
        check(&h, req, status, fragment).await;
    }
    // Exactly 11,000 steps after the first is still allowed.
    check(&h, range("query=1&start=0&end=11000&step=1"), 200, "\"resultType\":\"matrix\"").await;
}

// Goal: what is written through remote-write reads back through query_range sample by sample,
// special values included. Method: write series with known values at 15 s intervals, query
// them back with step 15 s over exactly those timestamps (POST form, as Grafana sends it),
// parse the JSON independently and compare every timestamp and value bit for bit.
#[tokio::test]
async fn writes_read_back_through_query_range() {
    let h = harness(QueryConfig::default()).await;
    // -0.0 is not here: proto3 encoders omit a double equal to 0.0, so it travels as +0.0.
    let specials = [0.1, 2.5e-300, 1e21, 1e-7, f64::INFINITY, f64::NEG_INFINITY, f64::NAN, -123456.789, 0.0, 5e-324];
    let mut written: Vec<(String, Vec<(i64, f64)>)> = Vec::new();
    let mut timeseries = Vec::new();
    for k in 0..4 {
        let samples: Vec<(i64, f64)> = (0..POINTS).map(|i| (BASE + i * STEP_MS, if k == 0 { specials[i as usize % specials.len()] } else { (i * k) as f64 + 0.25 })).collect();
        let id = format!("s{k}");
        timeseries.push(series(&[("__name__", "roundtrip"), ("id", &id)], &samples));
        written.push((id, samples));
    }
    remote_write(&h, &WriteRequest { timeseries, metadata: vec![] }).await;

    let form = format!("query=roundtrip&start={}&end={}&step=15", secs(BASE), secs(NOW));
    let (status, body) = send(&h.router, post_form("/api/v1/query_range", &form)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["data"]["resultType"], "matrix");
    let result = json["data"]["result"].as_array().unwrap();
    assert_eq!(result.len(), written.len(), "{body}");
    for (series, (id, samples)) in result.iter().zip(&written) {
        assert_eq!(series["metric"]["__name__"], "roundtrip");
        assert_eq!(series["metric"]["id"], id.as_str());
        let values = series["values"].as_array().unwrap();
        assert_eq!(values.len(), samples.len(), "{id}");
        for (point, (t, v)) in values.iter().zip(samples) {
            let read_t = (point[0].as_f64().unwrap() * 1000.0).round() as i64;
            let text = point[1].as_str().unwrap();
            let read_v: f64 = match text {
                "+Inf" => f64::INFINITY,
                "-Inf" => f64::NEG_INFINITY,
                other => other.parse().unwrap(),
            };
            assert_eq!(read_t, *t, "{id}");
            if v.is_nan() {
                assert!(read_v.is_nan(), "{id} at {t}: {text}");
            } else {
                assert_eq!(read_v.to_bits(), v.to_bits(), "{id} at {t}: wrote {v}, read {text}");
            }
        }
    }
}

// Goal: the metadata endpoints answer the shapes Grafana's data source asks for, with
// Prometheus's limit and truncation warning.
#[tokio::test]
async fn grafana_metadata_requests() {
    let h = harness(QueryConfig::default()).await;
    standard_data(&h).await;
    let range = format!("start={}&end={}", secs(BASE), secs(NOW));
    let up_a = "{\"__name__\":\"up\",\"instance\":\"a\",\"job\":\"node\"}";
    let up_b = "{\"__name__\":\"up\",\"instance\":\"b\",\"job\":\"node\"}";
    let requests = "{\"__name__\":\"http_requests_total\",\"code\":\"200\",\"job\":\"api\"}";
    let cases: Vec<(Req, u16, String)> = vec![
        (get(&format!("/api/v1/labels?{range}")), 200, "{\"status\":\"success\",\"data\":[\"__name__\",\"code\",\"instance\",\"job\"]}".into()),
        (post_form("/api/v1/labels", &format!("{range}&match[]={}", enc("up"))), 200, "{\"status\":\"success\",\"data\":[\"__name__\",\"instance\",\"job\"]}".into()),
        (get(&format!("/api/v1/labels?{range}&limit=2")), 200, "{\"status\":\"success\",\"data\":[\"__name__\",\"code\"],\"warnings\":[\"results truncated due to limit\"]}".into()),
        (get(&format!("/api/v1/label/__name__/values?{range}")), 200, "{\"status\":\"success\",\"data\":[\"http_requests_total\",\"up\"]}".into()),
        (get(&format!("/api/v1/label/instance/values?{range}&match%5B%5D={}", enc("up{job=\"node\"}"))), 200, "{\"status\":\"success\",\"data\":[\"a\",\"b\"]}".into()),
        (get(&format!("/api/v1/label/__name__/values?{range}&limit=1")), 200, "{\"status\":\"success\",\"data\":[\"http_requests_total\"],\"warnings\":[\"results truncated due to limit\"]}".into()),
        (get("/api/v1/label/nothing_here/values"), 200, "{\"status\":\"success\",\"data\":[]}".into()),
        (get(&format!("/api/v1/series?{range}&match%5B%5D=up")), 200, format!("{{\"status\":\"success\",\"data\":[{up_a},{up_b}]}}")),
        (post_form("/api/v1/series", &format!("match[]=up&match[]=http_requests_total&{range}")), 200, format!("{{\"status\":\"success\",\"data\":[{requests},{up_a},{up_b}]}}")),
        (get("/api/v1/series?match%5B%5D=up&limit=1"), 200, format!("{{\"status\":\"success\",\"data\":[{up_a}],\"warnings\":[\"results truncated due to limit\"]}}")),
        // Outside the time range nothing matches.
        (get("/api/v1/series?match%5B%5D=up&start=0&end=1"), 200, "{\"status\":\"success\",\"data\":[]}".into()),
        (get("/api/v1/series"), 400, "{\"status\":\"error\",\"errorType\":\"bad_data\",\"error\":\"no match[] parameter provided\"}".into()),
        (get(&format!("/api/v1/series?match%5B%5D={}", enc("rate(up[5m])"))), 400, "invalid parameter \\\"match[]\\\"".into()),
        (get("/api/v1/labels?limit=-1"), 400, "\"error\":\"invalid parameter \\\"limit\\\": limit must be non-negative\"".into()),
        (get("/api/v1/labels?start=5&end=1"), 400, "end timestamp must not be before start time".into()),
        (
            get("/api/v1/metadata"),
            200,
            "{\"status\":\"success\",\"data\":{\"http_requests_total\":[{\"type\":\"counter\",\"help\":\"Requests served.\",\"unit\":\"\"}],\"up\":[{\"type\":\"gauge\",\"help\":\"1 if the target is up.\",\"unit\":\"\"}]}}".into(),
        ),
        (get("/api/v1/metadata?metric=up"), 200, "{\"status\":\"success\",\"data\":{\"up\":[{\"type\":\"gauge\",\"help\":\"1 if the target is up.\",\"unit\":\"\"}]}}".into()),
        (get("/api/v1/metadata?limit=1"), 200, "{\"status\":\"success\",\"data\":{\"http_requests_total\":[{\"type\":\"counter\"".into()),
        (get("/api/v1/metadata?limit=0"), 200, "{\"status\":\"success\",\"data\":{}}".into()),
        (get("/api/v1/metadata?limit_per_metric=0&metric=up"), 200, "{\"status\":\"success\",\"data\":{\"up\":[]}}".into()),
        (get("/api/v1/metadata?limit=many"), 400, "invalid parameter \\\"limit\\\"".into()),
        (
            get("/api/v1/status/buildinfo"),
            200,
            format!("{{\"status\":\"success\",\"data\":{{\"version\":\"3.0.0\",\"revision\":\"sextant {}\",\"branch\":\"\",\"buildUser\":\"\",\"buildDate\":\"\",\"goVersion\":\"\",\"application\":\"sextant\"}}}}", env!("CARGO_PKG_VERSION")),
        ),
        (get(&format!("/api/v1/query_exemplars?query=up&{range}")), 200, "{\"status\":\"success\",\"data\":[]}".into()),
        (get("/api/v1/query_exemplars?query=up{"), 400, "\"errorType\":\"bad_data\"".into()),
        (get("/api/v1/rules"), 200, "{\"status\":\"success\",\"data\":{\"groups\":[]}}".into()),
        (get("/api/v1/alerts"), 200, "{\"status\":\"success\",\"data\":{\"alerts\":[]}}".into()),
        (get(&format!("/api/v1/format_query?query={}", enc("sum(rate(x[5m]))by(job)"))), 200, "{\"status\":\"success\",\"data\":\"sum by (job) (rate(x[5m]))\"}".into()),
        (post_form("/api/v1/format_query", "query=up{"), 400, "\"errorType\":\"bad_data\"".into()),
        (get("/api/v1/no_such_thing"), 404, "{\"status\":\"error\",\"errorType\":\"not_found\",\"error\":\"unknown API endpoint /api/v1/no_such_thing\"}".into()),
    ];
    for (req, status, fragment) in cases {
        check(&h, req, status, &fragment).await;
    }
}

fn small_limits() -> QueryConfig {
    QueryConfig { series_max: 10, samples_max: 200, bytes_max: 1 << 20, concurrency_max: 2, alert_reserved: 1, ..QueryConfig::default() }
}

/// Writes `n` series of `POINTS` samples each.
async fn many_series(h: &Harness, n: usize) {
    let timeseries = (0..n).map(|i| series(&[("__name__", &format!("m{}", i % 7)), ("i", &i.to_string())], &points(|p| p as f64))).collect();
    remote_write(h, &WriteRequest { timeseries, metadata: vec![] }).await;
}

// Goal: queries of death fail cleanly with the limit named, while health checks and small
// queries keep answering and no query slot leaks. Method: 50 series against series_max=10,
// samples_max=200 and a memory budget; run the bad queries concurrently with /-/healthy and a
// small query; then check the slots are all free.
#[tokio::test]
async fn queries_of_death_fail_with_the_limit_named() {
    let h = harness(small_limits()).await;
    many_series(&h, 50).await;
    // One series with a sample every second for five minutes: 300 samples.
    let big: Vec<(i64, f64)> = (0..300).map(|i| (NOW - 299_000 + i * 1_000, i as f64)).collect();
    remote_write(&h, &WriteRequest { timeseries: vec![series(&[("__name__", "big")], &big)], metadata: vec![] }).await;
    let t = secs(NOW);
    let cases: Vec<(Req, u16, &str)> = vec![
        // A regex over all series is refused by the bounded select at the 11th series.
        (get(&format!("/api/v1/query?query={}&time={t}", enc("{__name__=~\".+\"}"))), 422, "{\"status\":\"error\",\"errorType\":\"execution\",\"error\":\"query would touch more than the limit of series_max=10 series\"}"),
        (get(&format!("/api/v1/query?query={}&time={t}", enc("count({i=~\".+\"})"))), 422, "series_max=10"),
        // A huge range: the samples budget, at fetch time (300 samples > 200) ...
        (get(&format!("/api/v1/query?query={}&time={t}", enc("sum_over_time(big[10y])"))), 422, "{\"status\":\"error\",\"errorType\":\"execution\",\"error\":\"query processing would load too many samples into memory in query execution (limit samples_max=200)\"}"),
        (get(&format!("/api/v1/query_range?query=big&start={}&end={t}&step=1", secs(NOW - 10_000_000))), 422, "(limit samples_max=200)"),
        // ... and a huge subquery range, refused before its 5 million steps are evaluated.
        (get(&format!("/api/v1/query?query={}&time={t}", enc("sum_over_time(m0{i=\"0\"}[10y:1m])"))), 422, "(limit samples_max=200)"),
        // The series endpoint has the same budget.
        (get(&format!("/api/v1/series?match%5B%5D={}&start={}&end={t}", enc("{__name__=~\".+\"}"), secs(NOW - 59_000))), 422, "series_max=10"),
    ];
    let healthy = send(&h.router, get("/-/healthy"));
    let small = send(&h.router, get(&format!("/api/v1/query?query={}&time={t}", enc("m0{i=\"0\"}"))));
    let bad = async {
        for (req, status, fragment) in cases {
            check(&h, req, status, fragment).await;
        }
    };
    let (healthy, small, ()) = tokio::join!(healthy, small, bad);
    assert_eq!(healthy.0, StatusCode::OK);
    assert_eq!(small.0, StatusCode::OK, "{}", small.1);
    assert!(small.1.contains("\"value\":[1700000000,\"20\"]"), "{}", small.1);
    assert_eq!(h.node.query_scheduler().running(), [0, 0, 0]);
    // And afterwards the node still answers.
    check(&h, get(&format!("/api/v1/query?query={}&time={t}", enc("count(m0{i=~\"0|7\"})"))), 200, "\"value\":[1700000000,\"2\"]").await;
    // The memory budget has its own error.
    let tight_memory = harness(QueryConfig { bytes_max: 2_000, ..QueryConfig::default() }).await;
    many_series(&tight_memory, 20).await;
    check(&tight_memory, get(&format!("/api/v1/query?query={}&time={t}", enc("{__name__=~\"m.*\"}"))), 422, "more than the limit bytes_max=2000\"}").await;
    // The outcomes are counted by class.
    let metrics = h.node.metrics.encode();
    assert!(metrics.contains("sextant_queries_total{class=\"adhoc\",outcome=\"execution\"} 5"), "{metrics}");
    assert!(metrics.contains("sextant_queries_total{class=\"adhoc\",outcome=\"success\"} 2"), "{metrics}");
}

/// A clock whose monotonic time advances 1 ms every time it is read: a query's own work makes
/// time pass, so a duration limit is reached deterministically.
#[derive(Debug)]
struct TickingClock {
    ticks: AtomicU64,
}

impl Clock for TickingClock {
    fn now_wall_ms(&self) -> i64 {
        NOW
    }
    fn now_monotonic_ns(&self) -> u64 {
        self.ticks.fetch_add(1, Ordering::SeqCst) * 1_000_000
    }
}

// Goal: the duration limit stops a long evaluation with errorType timeout (503), from the flag
// and from the timeout parameter, and a query within it still succeeds.
#[tokio::test]
async fn duration_limit_is_a_timeout() {
    let clock = Arc::new(TickingClock { ticks: AtomicU64::new(0) });
    let h = harness_with(QueryConfig { timeout_ms: 200, ..QueryConfig::default() }, clock).await;
    standard_data(&h).await;
    // 1,001 steps: the deadline is polled once per step, each poll is a millisecond.
    let long = format!("/api/v1/query_range?query=up&start={}&end={}&step=1", secs(NOW - 1_000_000), secs(NOW));
    check(&h, get(&long), 503, "{\"status\":\"error\",\"errorType\":\"timeout\",\"error\":\"query timed out in expression evaluation (limit timeout=200ms, from --query-timeout or the timeout parameter)\"}").await;
    check(&h, get(&format!("{long}&timeout=0.05")), 503, "(limit timeout=50ms,").await;
    // The parameter cannot raise the flag's limit.
    check(&h, get(&format!("{long}&timeout=1h")), 503, "(limit timeout=200ms,").await;
    check(&h, get(&format!("/api/v1/query?query=up&time={}", secs(NOW))), 200, "\"resultType\":\"vector\"").await;
    let metrics = h.node.metrics.encode();
    assert!(metrics.contains("sextant_queries_total{class=\"adhoc\",outcome=\"timeout\"} 3"), "{metrics}");
}

/// Waits until the scheduler's queue holds `expected` queries per class.
async fn until_queued(h: &Harness, expected: [usize; 3]) {
    while h.node.query_scheduler().queued() != expected {
        tokio::task::yield_now().await;
    }
}

// Goal: with one query slot, an alert query queued behind ad-hoc ones is served first.
// Method: hold the slot, queue two ad-hoc queries and then an alert query (header), release the
// slot and look at the scheduler at once: the alert query holds the slot, both ad-hoc queries
// still wait; then every query answers 200.
#[tokio::test]
async fn alert_query_overtakes_queued_adhoc_queries() {
    let h = harness(QueryConfig { concurrency_max: 1, alert_reserved: 0, ..QueryConfig::default() }).await;
    standard_data(&h).await;
    let held = h.node.query_scheduler().admit(Priority::Adhoc).await.unwrap();
    let query = format!("/api/v1/query?query=up&time={}", secs(NOW));
    let mut tasks = Vec::new();
    for (i, (name, value)) in [("priority", "adhoc"), ("priority", "adhoc"), ("header", "alert")].into_iter().enumerate() {
        let router = h.router.clone();
        let req = if name == "header" { get(&query).header("x-sextant-query-priority", value) } else { get(&format!("{query}&priority={value}")) };
        tasks.push(tokio::spawn(async move { send(&router, req).await }));
        let expected = [[1, 0, 0], [2, 0, 0], [2, 0, 1]][i];
        until_queued(&h, expected).await;
    }
    drop(held);
    assert_eq!(h.node.query_scheduler().running(), [0, 0, 1], "the alert query runs first");
    assert_eq!(h.node.query_scheduler().queued(), [2, 0, 0]);
    for task in tasks {
        let (status, body) = task.await.unwrap();
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    let metrics = h.node.metrics.encode();
    assert!(metrics.contains("sextant_queries_total{class=\"alert\",outcome=\"success\"} 1"), "{metrics}");
}

// Goal: a flood of ad-hoc queries is shed with a 503 naming the limit while alert queries keep
// succeeding on the reserved slot, and a dashboard query displaces a queued ad-hoc one.
// Method: two slots, one reserved for alerts, a queue of 3; hold the shared slot; send 8 ad-hoc
// queries, then an alert query and a dashboard query; release and count the answers.
#[tokio::test]
async fn adhoc_flood_is_shed_while_alerts_succeed() {
    let h = harness(QueryConfig { concurrency_max: 2, alert_reserved: 1, queue_max: 3, ..QueryConfig::default() }).await;
    standard_data(&h).await;
    let held = h.node.query_scheduler().admit(Priority::Adhoc).await.unwrap();
    let query = format!("/api/v1/query?query=up&time={}", secs(NOW));
    let answers = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let router = h.router.clone();
        let req = get(&query);
        let answers = answers.clone();
        tasks.push(tokio::spawn(async move {
            let answer = send(&router, req).await;
            answers.lock().unwrap().push(answer);
        }));
    }
    while answers.lock().unwrap().len() < 5 || h.node.query_scheduler().queued() != [3, 0, 0] {
        tokio::task::yield_now().await;
    }
    for (status, body) in answers.lock().unwrap().iter() {
        assert_eq!(*status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.starts_with("{\"status\":\"error\",\"errorType\":\"unavailable\",\"error\":\"query shed: the query queue is full (limit query_queue_max=3)"), "{body}");
    }
    // Alert queries use the reserved slot while the flood waits.
    for _ in 0..3 {
        check(&h, get(&query).header("x-sextant-query-priority", "alert"), 200, "\"resultType\":\"vector\"").await;
    }
    // A dashboard query takes the newest ad-hoc query's place in the full queue.
    let router = h.router.clone();
    let dashboard = tokio::spawn(async move { send(&router, get(&format!("/api/v1/query?query=up&priority=dashboard&time={}", secs(NOW)))).await });
    while answers.lock().unwrap().len() < 6 {
        tokio::task::yield_now().await;
    }
    let displaced = answers.lock().unwrap()[5].clone();
    assert_eq!(displaced.0, StatusCode::SERVICE_UNAVAILABLE);
    assert!(displaced.1.contains("a higher-priority query took its place in the full query queue (limit query_queue_max=3; adhoc queries are shed first)"), "{}", displaced.1);
    assert_eq!(h.node.query_scheduler().queued(), [2, 1, 0]);
    drop(held);
    assert_eq!(dashboard.await.unwrap().0, StatusCode::OK);
    for task in tasks {
        task.await.unwrap();
    }
    let answers = answers.lock().unwrap();
    assert_eq!(answers.iter().filter(|(s, _)| *s == StatusCode::OK).count(), 2);
    assert_eq!(answers.iter().filter(|(s, _)| *s == StatusCode::SERVICE_UNAVAILABLE).count(), 6);
    let metrics = h.node.metrics.encode();
    assert!(metrics.contains("sextant_queries_total{class=\"adhoc\",outcome=\"unavailable\"} 6"), "{metrics}");
    assert!(metrics.contains("sextant_queries_total{class=\"alert\",outcome=\"success\"} 3"), "{metrics}");
    assert!(metrics.contains("sextant_query_queue_depth 0"), "{metrics}");
}

// Goal: a regex over all series is refused before all of its samples are loaded: the bounded
// select stops at the first series or sample over the budget. Method: 50 series of 21 samples;
// select everything under each budget and look at what the budget was charged when it stopped.
#[tokio::test]
async fn bounded_select_stops_at_the_budget() {
    let h = harness(QueryConfig::default()).await;
    many_series(&h, 50).await;
    let engine = h.node.engine().unwrap();
    let all = vec![Matcher::new(MatchOp::RegexMatch, "__name__", ".+").unwrap()];
    // (series_max, samples_max, bytes_max) → (error fragment or none, series charged, samples charged)
    type Case = ((usize, usize, usize), Option<&'static str>, usize, usize);
    let cases: Vec<Case> = vec![
        ((usize::MAX, usize::MAX, usize::MAX), None, 50, 50 * 21),
        ((10, usize::MAX, usize::MAX), Some("series_max=10"), 11, 11 * 21),
        ((usize::MAX, 100, usize::MAX), Some("samples_max=100"), 5, 5 * 21),
        ((usize::MAX, usize::MAX, 3 * 21 * 16), Some("bytes_max=1008"), 3, 3 * 21),
    ];
    for ((series_max, samples_max, bytes_max), error, series, samples) in cases {
        let mut budget = SelectBudget::new(series_max, samples_max, bytes_max);
        let result = engine.select_bounded("default", &all, i64::MIN, i64::MAX, &mut budget).await;
        match error {
            None => assert_eq!(result.unwrap().len(), 50),
            Some(fragment) => {
                let message = result.unwrap_err().to_string();
                assert!(message.contains(fragment), "{message} should name {fragment}");
            }
        }
        assert_eq!((budget.series, budget.samples), (series, samples), "budget {series_max}/{samples_max}/{bytes_max}");
        // 16 bytes per sample plus each series' label bytes (12 or 13 here).
        assert!(budget.bytes >= samples * 16 + series * 12 && budget.bytes <= samples * 16 + series * 13, "bytes charged {}", budget.bytes);
    }
}
