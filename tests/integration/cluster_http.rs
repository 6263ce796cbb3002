#![cfg(not(madsim))]
//! Helpers the in-process cluster tests share (cluster_data.rs, cluster_replication.rs, failover.rs; waiting is wait.rs): the series `m`
//! they write (instance `iNN`, a value derived from series and time), and HTTP through a
//! node's axum router in process, answers back as (status, body).

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Body;
use http::Request;
use sextant::node::Node;
use sextant::remote_write::{encode_write_request, Label, Sample, TimeSeries, WriteRequest};
use sextant_core::labels::Labels;
use tower::ServiceExt;

pub async fn http(node: &Arc<Node>, method: &str, uri: &str, content_type: &str, body: Vec<u8>) -> (u16, String) {
    let mut builder = Request::builder().method(method).uri(uri).header("content-type", content_type);
    if uri == "/api/v1/write" {
        builder = builder.header("content-encoding", "snappy");
    }
    let response = sextant::http::router(node.clone()).oneshot(builder.body(Body::from(body)).unwrap()).await.unwrap();
    let status = response.status().as_u16();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 26).await.unwrap();
    (status, String::from_utf8_lossy(&bytes).into_owned())
}

pub async fn remote_write(node: &Arc<Node>, request: &WriteRequest) -> (u16, String) {
    http(node, "POST", "/api/v1/write", "application/x-protobuf", encode_write_request(request)).await
}

/// `query_range` of `m` over `times` (one step apart): (instance → [(t, v)]) and warnings.
pub async fn query_range(node: &Arc<Node>, times: &[i64]) -> (BTreeMap<String, Vec<(i64, f64)>>, Vec<String>) {
    let (start, end) = (times[0], times[times.len() - 1]);
    let form = format!("query=m&start={}&end={}&step={}", start as f64 / 1000.0, end as f64 / 1000.0, (times[1] - times[0]) as f64 / 1000.0);
    let (status, body) = http(node, "POST", "/api/v1/query_range", "application/x-www-form-urlencoded", form.into_bytes()).await;
    assert_eq!(status, 200, "{body}");
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    let mut out = BTreeMap::new();
    for series in json["data"]["result"].as_array().unwrap() {
        let instance = series["metric"]["instance"].as_str().unwrap().to_string();
        let points = series["values"].as_array().unwrap().iter().map(|p| ((p[0].as_f64().unwrap() * 1000.0).round() as i64, p[1].as_str().unwrap().parse::<f64>().unwrap())).collect();
        out.insert(instance, points);
    }
    let warnings = json["warnings"].as_array().map(|w| w.iter().map(|x| x.as_str().unwrap().to_string()).collect()).unwrap_or_default();
    (out, warnings)
}

pub fn labels_of(i: usize) -> Labels {
    Labels::from_pairs(&[("__name__", "m"), ("instance", &format!("i{i:02}"))])
}

pub fn value(series: usize, t: i64) -> f64 {
    series as f64 * 1000.0 + (t % 100_000) as f64 / 1000.0
}

pub fn request(series: &[usize], times: &[i64]) -> WriteRequest {
    WriteRequest {
        timeseries: series
            .iter()
            .map(|i| TimeSeries {
                labels: labels_of(*i).iter().map(|l| Label { name: l.name.clone(), value: l.value.clone() }).collect(),
                samples: times.iter().map(|t| Sample { timestamp: *t, value: value(*i, *t) }).collect(),
                exemplars: vec![],
                histograms: vec![],
            })
            .collect(),
        metadata: vec![],
    }
}
