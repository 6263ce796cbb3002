//! Fuzzes what a remote-write body meets before anything is stored: the snappy + size checks,
//! the allocation-free prescan and budget, the protobuf decode, then label building and
//! validation as the ingest path does it. The property is "returns, never panics, never
//! allocates past the budget" (libFuzzer's -rss_limit_mb catches the last).
//!
//! The first byte picks the layer: even → the input is the body as sent (snappy first); odd →
//! the rest is compressed here first, so the fuzzer spends its time in the protobuf layer.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sextant::remote_write::{decode_write_request, encode_write_request, prescan};
use sextant_core::labels::{Label, LabelLimits, Labels};

/// The server's default body limit (--remote-write-body-max is larger; smaller keeps runs fast).
const BODY_BYTES_MAX: usize = 1 << 20;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    let body = if mode % 2 == 0 {
        rest.to_vec()
    } else {
        let _ = prescan(rest);
        snap::raw::Encoder::new().compress_vec(rest).expect("snappy compresses small inputs")
    };
    let Ok(request) = decode_write_request(&body, BODY_BYTES_MAX) else { return };
    // What decodes re-encodes to a body that decodes to the same request (senders' retries
    // and the simulator rely on encode/decode agreeing).
    // (Compared as bytes: NaN sample values are not equal to themselves.)
    let encoded = encode_write_request(&request);
    let again = decode_write_request(&encoded, usize::MAX / 8).expect("a re-encoded request decodes");
    assert!(encode_write_request(&again) == encoded, "decode(encode(request)) differs from request");
    let limits = LabelLimits::default();
    for series in &request.timeseries {
        let labels = series.labels.iter().map(|l| Label::new(l.name.clone(), l.value.clone())).collect();
        if let Ok(labels) = Labels::from_unsorted(labels).and_then(|labels| labels.validate_for_ingest(&limits)) {
            // What validation lets through is what storage assumes: a metric name, names
            // strictly sorted (no duplicates), no empty values, within the limits.
            assert!(!labels.metric_name().is_empty());
            assert!(labels.as_slice().windows(2).all(|w| w[0].name < w[1].name));
            assert!(labels.iter().all(|l| !l.value.is_empty() && !l.name.is_empty()));
            assert!(labels.len() <= limits.label_count_max);
        }
    }
});
