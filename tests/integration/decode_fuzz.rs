//! Property-based fuzzing of the remote-write decoder (both builds): arbitrary bytes, and
//! valid bodies with bytes flipped, truncated or spliced, never panic and never decode past the
//! configured limits. A `cargo fuzz` target is not set up yet (it needs nightly); this runs in
//! every test run instead.

use proptest::prelude::*;
use sextant::remote_write::{decode_write_request, encode_write_request, Label, Sample, TimeSeries, WriteRequest};

fn valid_body(series: usize, labels: usize) -> Vec<u8> {
    let timeseries = (0..series)
        .map(|i| TimeSeries {
            labels: std::iter::once(Label { name: "__name__".into(), value: format!("m{i}") }).chain((0..labels).map(|j| Label { name: format!("l{j}"), value: format!("v{i}") })).collect(),
            samples: vec![Sample { value: i as f64, timestamp: 1_700_000_000_000 + i as i64 }],
            exemplars: vec![],
            histograms: vec![],
        })
        .collect();
    encode_write_request(&WriteRequest { timeseries, metadata: vec![] })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    // Goal: no input panics the decoder. Method: arbitrary byte strings.
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = decode_write_request(&bytes, 1 << 16);
    }

    // Goal: damaged real bodies never panic, and a decoded result respects the size limit.
    // Method: flip, truncate and overwrite bytes of valid bodies.
    #[test]
    fn damaged_bodies_never_panic(series in 1usize..20, labels in 0usize..6, flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8), cut in any::<usize>()) {
        let mut body = valid_body(series, labels);
        for (at, byte) in flips {
            let at = at % body.len();
            body[at] ^= byte;
        }
        let cut = cut % (body.len() + 1);
        let body = &body[..cut];
        if let Ok(request) = decode_write_request(body, 1 << 16) {
            let strings: usize = request.timeseries.iter().flat_map(|ts| ts.labels.iter()).map(|l| l.name.len() + l.value.len()).sum();
            prop_assert!(strings <= 1 << 16);
        }
    }
}
