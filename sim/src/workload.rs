//! What the writers send: realistic series (counters with resets, gauges with the odd NaN and
//! stale marker, one classic histogram per writer) and a cardinality bomb. Pure generation,
//! the same in both builds; the madsim tasks that send it live in `run`.

use sextant::remote_write::{Label, Sample, TimeSeries, WriteRequest};
use sextant_core::determinism::DeterministicRng;

use crate::ledger::{series_key, WrittenSample};

/// Prometheus's stale marker (a NaN with this exact bit pattern).
pub const STALE_NAN_BITS: u64 = 0x7ff0_0000_0000_0002;
/// The metric of the cardinality bomb; every sample carries a new `session_id`.
pub const BOMB_METRIC: &str = "sim_bomb_requests_total";
/// Upper bounds of the classic histogram's buckets.
const BUCKETS_LE: [f64; 4] = [0.1, 0.5, 1.0, f64::INFINITY];

#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    Counter,
    Gauge,
    Bucket(usize),
    Sum,
    Count,
}

#[derive(Clone, Debug)]
struct SeriesGen {
    labels: Vec<(String, String)>,
    key: String,
    kind: Kind,
    value: f64,
}

/// One writer's series and their current values.
#[derive(Debug)]
pub struct SeriesSet {
    series: Vec<SeriesGen>,
    rng: DeterministicRng,
    /// Cumulative histogram state: per-bucket counts, sum, count.
    buckets: [f64; 4],
    sum: f64,
    count: f64,
}

fn make(name: &str, writer: usize, extra: &[(&str, String)], kind: Kind) -> SeriesGen {
    let mut labels = vec![
        ("__name__".to_string(), name.to_string()),
        ("job".to_string(), "sim".to_string()),
        ("writer".to_string(), format!("w{writer}")),
    ];
    labels.extend(extra.iter().map(|(n, v)| (n.to_string(), v.clone())));
    let key = series_key(labels.iter().map(|(n, v)| (n.as_str(), v.as_str())));
    SeriesGen { labels, key, kind, value: 0.0 }
}

impl SeriesSet {
    /// About `count` series for writer `writer`: six histogram series, the rest split between
    /// counters and gauges.
    pub fn new(writer: usize, count: usize, rng: DeterministicRng) -> SeriesSet {
        let mut series = Vec::new();
        for (i, le) in BUCKETS_LE.iter().enumerate() {
            let le = if le.is_infinite() { "+Inf".to_string() } else { le.to_string() };
            series.push(make("sim_request_duration_seconds_bucket", writer, &[("le", le)], Kind::Bucket(i)));
        }
        series.push(make("sim_request_duration_seconds_sum", writer, &[], Kind::Sum));
        series.push(make("sim_request_duration_seconds_count", writer, &[], Kind::Count));
        let rest = count.saturating_sub(series.len());
        for i in 0..rest {
            if i % 2 == 0 {
                series.push(make("sim_http_requests_total", writer, &[("path", format!("/p{i}"))], Kind::Counter));
            } else {
                series.push(make("sim_temperature_celsius", writer, &[("sensor", format!("s{i}"))], Kind::Gauge));
            }
        }
        SeriesSet {
            series,
            rng,
            buckets: [0.0; 4],
            sum: 0.0,
            count: 0.0,
        }
    }

    pub fn len(&self) -> usize {
        self.series.len()
    }

    pub fn is_empty(&self) -> bool {
        self.series.is_empty()
    }

    /// Advances every series and returns one sample per series at `t`.
    pub fn tick(&mut self, t: i64) -> Vec<(usize, WrittenSample)> {
        // A process restart resets every counter of the writer, histogram included.
        let reset = self.rng.gen_bool(0.01);
        if reset {
            self.buckets = [0.0; 4];
            self.sum = 0.0;
            self.count = 0.0;
        }
        let observations = self.rng.gen_range(0..5u32);
        for _ in 0..observations {
            let x: f64 = self.rng.gen_range(0.0..2.0);
            self.sum += x;
            self.count += 1.0;
            for (i, le) in BUCKETS_LE.iter().enumerate() {
                if x <= *le {
                    self.buckets[i] += 1.0;
                }
            }
        }
        let mut out = Vec::with_capacity(self.series.len());
        for index in 0..self.series.len() {
            let bits = {
                let rng = &mut self.rng;
                let s = &mut self.series[index];
                match s.kind {
                    Kind::Counter => {
                        s.value = if reset { 0.0 } else { s.value + f64::from(rng.gen_range(0..100u32)) };
                        s.value.to_bits()
                    }
                    Kind::Gauge => {
                        s.value += rng.gen_range(-1.0..1.0);
                        let roll: f64 = rng.gen_range(0.0..1.0);
                        if roll < 0.003 {
                            STALE_NAN_BITS
                        } else if roll < 0.006 {
                            f64::NAN.to_bits()
                        } else {
                            s.value.to_bits()
                        }
                    }
                    Kind::Bucket(i) => self.buckets[i].to_bits(),
                    Kind::Sum => self.sum.to_bits(),
                    Kind::Count => self.count.to_bits(),
                }
            };
            out.push((
                index,
                WrittenSample {
                    series: self.series[index].key.clone(),
                    t,
                    bits,
                },
            ));
        }
        out
    }

    /// The remote-write request carrying `samples` (indexes into this set).
    pub fn request(&self, samples: &[(usize, WrittenSample)]) -> WriteRequest {
        let mut timeseries: Vec<TimeSeries> = Vec::new();
        let mut last: Option<usize> = None;
        for (index, sample) in samples {
            if last != Some(*index) {
                let labels = self.series[*index].labels.iter().map(|(n, v)| Label { name: n.clone(), value: v.clone() }).collect();
                timeseries.push(TimeSeries {
                    labels,
                    samples: vec![],
                    exemplars: vec![],
                    histograms: vec![],
                });
                last = Some(*index);
            }
            let series = timeseries.last_mut().expect("pushed above");
            series.samples.push(Sample {
                value: f64::from_bits(sample.bits),
                timestamp: sample.t,
            });
        }
        WriteRequest { timeseries, metadata: vec![] }
    }
}

/// A cardinality bomb: every sample is a new series of [`BOMB_METRIC`].
pub fn bomb_request(writer: usize, first_session: u64, count: u64, t: i64) -> (WriteRequest, Vec<WrittenSample>) {
    let mut timeseries = Vec::new();
    let mut samples = Vec::new();
    for session in first_session..first_session + count {
        let labels = [("__name__", BOMB_METRIC.to_string()), ("writer", format!("w{writer}")), ("session_id", format!("{session:016x}"))];
        let key = series_key(labels.iter().map(|(n, v)| (*n, v.as_str())));
        let value = session as f64;
        samples.push(WrittenSample {
            series: key,
            t,
            bits: value.to_bits(),
        });
        timeseries.push(TimeSeries {
            labels: labels
                .iter()
                .map(|(n, v)| Label {
                    name: n.to_string(),
                    value: v.clone(),
                })
                .collect(),
            samples: vec![Sample { value, timestamp: t }],
            exemplars: vec![],
            histograms: vec![],
        });
    }
    (WriteRequest { timeseries, metadata: vec![] }, samples)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Goal: the generated series behave like their types: counters never decrease except on
    // a reset to 0, histogram buckets are cumulative, and the request carries what the ledger
    // records.
    #[test]
    fn series_behave_like_their_types() {
        let mut set = SeriesSet::new(0, 24, DeterministicRng::from_seed(7));
        assert_eq!(set.len(), 24);
        let mut previous: Vec<f64> = vec![0.0; set.len()];
        for tick in 0..500i64 {
            let samples = set.tick(tick * 1000);
            assert_eq!(samples.len(), set.len());
            let values: Vec<f64> = samples.iter().map(|(_, s)| f64::from_bits(s.bits)).collect();
            for (i, kind) in set.series.iter().map(|s| s.kind).enumerate() {
                if kind == Kind::Counter {
                    assert!(values[i] >= previous[i] || values[i] == 0.0, "counter {i} went {} → {}", previous[i], values[i]);
                }
            }
            for i in 1..4 {
                assert!(values[i] >= values[i - 1], "bucket {i} below bucket {}", i - 1);
            }
            assert_eq!(values[3], values[5], "+Inf bucket equals _count");
            let request = set.request(&samples);
            let sent: Vec<u64> = request.timeseries.iter().flat_map(|ts| ts.samples.iter().map(|s| s.value.to_bits())).collect();
            assert_eq!(sent, samples.iter().map(|(_, s)| s.bits).collect::<Vec<_>>());
            previous = values;
        }
    }
}
