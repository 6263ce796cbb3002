//! Prometheus Remote-Write 1.0 wire types and the request decoder.
//!
//! The messages are written by hand from the public Remote-Write 1.0 specification
//! (`prometheus/prompb/remote.proto` and `types.proto`), with prost's derive macros, so no
//! protoc is needed. Only the fields Sextant reads are declared; prost skips unknown fields.
//! Native histograms (field 4 of `TimeSeries`) are kept as opaque bytes: they are counted and
//! refused with a reason until Sextant stores them.
//!
//! Decoding is bounded before anything large is allocated: the snappy block's declared length
//! is checked against the body limit, and a structural pre-scan of the protobuf estimates the
//! memory the decoded request would take (labels and samples expand several times when
//! decoded; 16 M empty labels fit in 32 MiB) and refuses a request over the decode budget.

use std::mem::size_of;

use prost::Message;

/// `prometheus.WriteRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct WriteRequest {
    #[prost(message, repeated, tag = "1")]
    pub timeseries: Vec<TimeSeries>,
    #[prost(message, repeated, tag = "3")]
    pub metadata: Vec<MetricMetadata>,
}

/// `prometheus.TimeSeries`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TimeSeries {
    #[prost(message, repeated, tag = "1")]
    pub labels: Vec<Label>,
    #[prost(message, repeated, tag = "2")]
    pub samples: Vec<Sample>,
    #[prost(message, repeated, tag = "3")]
    pub exemplars: Vec<Exemplar>,
    /// Native histograms, undecoded (`prometheus.Histogram` messages).
    #[prost(bytes = "vec", repeated, tag = "4")]
    pub histograms: Vec<Vec<u8>>,
}

/// `prometheus.Label`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Label {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub value: String,
}

/// `prometheus.Sample`: a float value and a millisecond timestamp.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Sample {
    #[prost(double, tag = "1")]
    pub value: f64,
    #[prost(int64, tag = "2")]
    pub timestamp: i64,
}

/// `prometheus.Exemplar`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Exemplar {
    #[prost(message, repeated, tag = "1")]
    pub labels: Vec<Label>,
    #[prost(double, tag = "2")]
    pub value: f64,
    #[prost(int64, tag = "3")]
    pub timestamp: i64,
}

/// `prometheus.MetricMetadata.MetricType`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum MetricType {
    Unknown = 0,
    Counter = 1,
    Gauge = 2,
    Histogram = 3,
    Gaugehistogram = 4,
    Summary = 5,
    Info = 6,
    Stateset = 7,
}

impl MetricType {
    /// The name Prometheus's `/api/v1/metadata` uses.
    pub fn as_prometheus_str(self) -> &'static str {
        match self {
            MetricType::Unknown => "unknown",
            MetricType::Counter => "counter",
            MetricType::Gauge => "gauge",
            MetricType::Histogram => "histogram",
            MetricType::Gaugehistogram => "gaugehistogram",
            MetricType::Summary => "summary",
            MetricType::Info => "info",
            MetricType::Stateset => "stateset",
        }
    }
}

/// `prometheus.MetricMetadata`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct MetricMetadata {
    #[prost(enumeration = "MetricType", tag = "1")]
    pub r#type: i32,
    #[prost(string, tag = "2")]
    pub metric_family_name: String,
    #[prost(string, tag = "4")]
    pub help: String,
    #[prost(string, tag = "5")]
    pub unit: String,
}

/// Why a body could not be decoded. Every variant is permanent (400 or 413).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    #[error("body is {bytes} bytes, more than the limit of {max} bytes")]
    CompressedTooLarge { bytes: usize, max: usize },
    #[error("snappy block declares {declared} decompressed bytes, more than the limit of {max} bytes")]
    DecompressedTooLarge { declared: usize, max: usize },
    #[error("body is not a valid snappy block: {reason}")]
    Snappy { reason: String },
    #[error("body is not a valid remote-write 1.0 WriteRequest: {reason}")]
    Protobuf { reason: String },
    #[error("decoding the request would take about {estimated} bytes of memory, more than the budget of {max} bytes (too many labels or samples for its size)")]
    DecodeBudget { estimated: usize, max: usize },
}

impl BodyError {
    /// 413 for size limits, 400 for malformed bodies.
    pub fn is_too_large(&self) -> bool {
        matches!(self, BodyError::CompressedTooLarge { .. } | BodyError::DecompressedTooLarge { .. } | BodyError::DecodeBudget { .. })
    }
}

/// The memory budget for decoding a body of at most `body_bytes_max` decompressed bytes.
pub fn decode_budget_bytes(body_bytes_max: usize) -> usize {
    body_bytes_max.saturating_mul(4)
}

/// Decodes a snappy-compressed remote-write 1.0 body.
pub fn decode_write_request(body: &[u8], body_bytes_max: usize) -> Result<WriteRequest, BodyError> {
    if body.len() > body_bytes_max {
        return Err(BodyError::CompressedTooLarge { bytes: body.len(), max: body_bytes_max });
    }
    let declared = snap::raw::decompress_len(body).map_err(|e| BodyError::Snappy { reason: e.to_string() })?;
    if declared > body_bytes_max {
        return Err(BodyError::DecompressedTooLarge { declared, max: body_bytes_max });
    }
    let mut raw = vec![0u8; declared];
    let written = snap::raw::Decoder::new().decompress(body, &mut raw).map_err(|e| BodyError::Snappy { reason: e.to_string() })?;
    raw.truncate(written);
    let counts = prescan(&raw).map_err(|reason| BodyError::Protobuf { reason })?;
    let estimated = counts.decoded_bytes_estimate(raw.len());
    let max = decode_budget_bytes(body_bytes_max);
    if estimated > max {
        return Err(BodyError::DecodeBudget { estimated, max });
    }
    WriteRequest::decode(raw.as_slice()).map_err(|e| BodyError::Protobuf { reason: e.to_string() })
}

/// Encodes a request the way Prometheus sends it (protobuf, then a snappy block). Used by
/// tests, the simulator's writers and load generators.
pub fn encode_write_request(request: &WriteRequest) -> Vec<u8> {
    let raw = request.encode_to_vec();
    snap::raw::Encoder::new().compress_vec(&raw).expect("snappy compresses any input below 4 GiB")
}

/// Element counts found by the pre-scan.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct WireCounts {
    pub series: usize,
    pub labels: usize,
    pub samples: usize,
    pub exemplars: usize,
    pub metadata: usize,
}

impl WireCounts {
    /// Upper estimate of the decoded request's heap: element structs (vectors may double
    /// their capacity while growing) plus every string byte.
    fn decoded_bytes_estimate(&self, raw_bytes: usize) -> usize {
        let structs = self.series * size_of::<TimeSeries>()
            + self.labels * size_of::<Label>()
            + self.samples * size_of::<Sample>()
            + self.exemplars * size_of::<Exemplar>()
            + self.metadata * size_of::<MetricMetadata>();
        structs.saturating_mul(2).saturating_add(raw_bytes)
    }
}

fn read_varint(bytes: &[u8], at: &mut usize) -> Result<u64, String> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let Some(&byte) = bytes.get(*at) else { return Err(format!("truncated varint at byte {at}")) };
        *at += 1;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err(format!("varint longer than 10 bytes before byte {at}"))
}

/// Walks one message's fields, calling `on_len` for each length-delimited field with its
/// number and payload.
fn walk_fields(bytes: &[u8], mut on_len: impl FnMut(u64, &[u8]) -> Result<(), String>) -> Result<(), String> {
    let mut at = 0;
    while at < bytes.len() {
        let key = read_varint(bytes, &mut at)?;
        let field = key >> 3;
        match key & 7 {
            0 => {
                read_varint(bytes, &mut at)?;
            }
            1 => at = at.checked_add(8).filter(|end| *end <= bytes.len()).ok_or_else(|| format!("truncated fixed64 field {field}"))?,
            5 => at = at.checked_add(4).filter(|end| *end <= bytes.len()).ok_or_else(|| format!("truncated fixed32 field {field}"))?,
            2 => {
                let len = read_varint(bytes, &mut at)?;
                let end = usize::try_from(len).ok().and_then(|len| at.checked_add(len)).filter(|end| *end <= bytes.len());
                let Some(end) = end else { return Err(format!("field {field} declares {len} bytes past the end of its message")) };
                on_len(field, &bytes[at..end])?;
                at = end;
            }
            wire_type => return Err(format!("field {field} has unsupported wire type {wire_type}")),
        }
    }
    Ok(())
}

/// Counts series, labels, samples and exemplars without allocating.
pub fn prescan(raw: &[u8]) -> Result<WireCounts, String> {
    let mut counts = WireCounts::default();
    walk_fields(raw, |field, payload| {
        match field {
            1 => {
                counts.series += 1;
                walk_fields(payload, |inner, _| {
                    match inner {
                        1 => counts.labels += 1,
                        2 => counts.samples += 1,
                        3 => counts.exemplars += 1,
                        _ => {}
                    }
                    Ok(())
                })?;
            }
            3 => counts.metadata += 1,
            _ => {}
        }
        Ok(())
    })?;
    Ok(counts)
}

#[cfg(test)]
#[allow(clippy::type_complexity)] // case tables
mod tests {
    use super::*;

    fn request() -> WriteRequest {
        WriteRequest {
            timeseries: vec![TimeSeries {
                labels: vec![Label { name: "__name__".into(), value: "up".into() }],
                samples: vec![Sample { value: 1.0, timestamp: 1000 }, Sample { value: 0.0, timestamp: 2000 }],
                exemplars: vec![],
                histograms: vec![],
            }],
            metadata: vec![MetricMetadata { r#type: MetricType::Gauge as i32, metric_family_name: "up".into(), help: "h".into(), unit: String::new() }],
        }
    }

    // Goal: the hand-written messages match the spec's field numbers and wire types.
    // Method: bytes written by hand from remote.proto/types.proto, decoded and compared.
    #[test]
    fn golden_bytes_from_spec() {
        // WriteRequest{timeseries=[TimeSeries{labels=[Label{name="a",value="b"}],
        //   samples=[Sample{value=1.0 (double, field 1), timestamp=5 (int64, field 2)}]}]}
        let label = [0x0a, 0x01, b'a', 0x12, 0x01, b'b'];
        let sample = [0x09, 0, 0, 0, 0, 0, 0, 0xf0, 0x3f, 0x10, 0x05];
        let mut series = vec![0x0a, label.len() as u8];
        series.extend_from_slice(&label);
        series.extend_from_slice(&[0x12, sample.len() as u8]);
        series.extend_from_slice(&sample);
        let mut raw = vec![0x0a, series.len() as u8];
        raw.extend_from_slice(&series);
        let decoded = WriteRequest::decode(raw.as_slice()).unwrap();
        assert_eq!(decoded.timeseries[0].labels, vec![Label { name: "a".into(), value: "b".into() }]);
        assert_eq!(decoded.timeseries[0].samples, vec![Sample { value: 1.0, timestamp: 5 }]);
        assert_eq!(decoded.encode_to_vec(), raw);
        // An explicit -0.0 (which proto3 encoders would omit) decodes with its sign bit.
        let negative_zero = [0x0a, 0x0b, 0x12, 0x09, 0x09, 0, 0, 0, 0, 0, 0, 0, 0x80];
        let decoded = WriteRequest::decode(negative_zero.as_slice()).unwrap();
        assert_eq!(decoded.timeseries[0].samples[0].value.to_bits(), (-0.0f64).to_bits());
        assert_eq!(prescan(&raw).unwrap(), WireCounts { series: 1, labels: 1, samples: 1, ..WireCounts::default() });
    }

    // Goal: encode → decode is the identity, metadata included.
    #[test]
    fn round_trip() {
        let body = encode_write_request(&request());
        assert_eq!(decode_write_request(&body, 1 << 20).unwrap(), request());
    }

    // Goal: each bad body gives its typed error and nothing panics. Method: a table.
    #[test]
    fn bad_bodies() {
        let good = encode_write_request(&request());
        let raw = request().encode_to_vec();
        let mut bomb = Vec::new();
        // A snappy block whose preamble declares 1 GiB (uvarint 0x40000000), then nothing.
        bomb.extend_from_slice(&[0x80, 0x80, 0x80, 0x80, 0x04]);
        let invalid_utf8 = {
            let mut r = raw.clone();
            let at = r.windows(2).position(|w| w == b"up").unwrap();
            r[at] = 0xff;
            snap::raw::Encoder::new().compress_vec(&r).unwrap()
        };
        let cases: Vec<(&str, Vec<u8>, fn(&BodyError) -> bool)> = vec![
            ("empty body (no snappy preamble)", vec![], |e| matches!(e, BodyError::Snappy { .. })),
            ("truncated", good[..good.len() - 3].to_vec(), |e| matches!(e, BodyError::Snappy { .. })),
            ("garbage", b"hello world, not snappy".to_vec(), |e| matches!(e, BodyError::Snappy { .. } | BodyError::Protobuf { .. })),
            ("uncompressed protobuf", raw.clone(), |e| matches!(e, BodyError::Snappy { .. } | BodyError::Protobuf { .. } | BodyError::DecompressedTooLarge { .. })),
            ("bomb", bomb, |e| matches!(e, BodyError::DecompressedTooLarge { declared: 1_073_741_824, .. })),
            ("invalid utf-8", invalid_utf8, |e| matches!(e, BodyError::Protobuf { .. })),
            ("protobuf garbage", snap::raw::Encoder::new().compress_vec(&[0x0a, 0x7f, 0x01]).unwrap(), |e| matches!(e, BodyError::Protobuf { .. })),
        ];
        for (name, body, expected) in cases {
            let error = decode_write_request(&body, 1 << 20).expect_err(name);
            assert!(expected(&error), "{name}: {error}");
        }
        assert!(matches!(decode_write_request(&good, 4), Err(BodyError::CompressedTooLarge { .. })));
    }

    // Goal: millions of empty labels (cheap on the wire, expensive decoded) are refused by the
    // decode budget before prost allocates them.
    #[test]
    fn label_flood_hits_decode_budget() {
        let mut series = Vec::new();
        for _ in 0..200_000 {
            series.extend_from_slice(&[0x0a, 0x00]);
        }
        let mut raw = vec![0x0a];
        let mut len = series.len();
        while len >= 0x80 {
            raw.push((len as u8 & 0x7f) | 0x80);
            len >>= 7;
        }
        raw.push(len as u8);
        raw.extend_from_slice(&series);
        let body = snap::raw::Encoder::new().compress_vec(&raw).unwrap();
        let error = decode_write_request(&body, raw.len() + 16).unwrap_err();
        assert!(matches!(error, BodyError::DecodeBudget { .. }), "{error}");
    }
}
