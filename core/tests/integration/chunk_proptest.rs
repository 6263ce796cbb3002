//! Property tests of the chunk codec against a reference model (a plain `Vec` of samples).
#![cfg(not(madsim))]

use proptest::prelude::*;
use sextant_core::chunk::{decode_all, encode_all, ChunkEncoder, ChunkIter, CHUNK_SAMPLES_TARGET};

/// A gap between consecutive timestamps, drawn so that deltas-of-deltas land in every bucket
/// (0, 4, 8, 17, 20 and 64 bits) and now and then span most of the `i64` range.
fn gap() -> impl Strategy<Value = u64> {
    prop_oneof![
        4 => Just(15_000u64),
        4 => 14_998u64..15_002,
        3 => 14_990u64..15_010,
        2 => 14_850u64..15_150,
        2 => 1u64..10_000,
        2 => 10_000u64..200_000,
        2 => 200_000u64..2_000_000,
        1 => 2_000_000u64..(1 << 40),
        1 => (1u64 << 40)..(1 << 62),
    ]
}

/// Values as arbitrary bit patterns, mixed with repeats and small changes so that every XOR
/// case (same, reuse window, new window) occurs.
fn value_bits() -> impl Strategy<Value = u64> {
    prop_oneof![
        3 => any::<u64>(),
        1 => Just(0x7ff0_0000_0000_0002u64),
        1 => Just(0u64),
        1 => Just(1.0f64.to_bits()),
        2 => (0u64..1000).prop_map(|n| (n as f64 * 0.25).to_bits()),
    ]
}

/// Strictly increasing samples: a start anywhere in `i64`, then gaps that stop at `i64::MAX`.
fn samples() -> impl Strategy<Value = Vec<(i64, u64)>> {
    let start = prop_oneof![any::<i64>(), Just(i64::MIN), -1_000_000i64..1_000_000];
    (
        start,
        prop::collection::vec((gap(), value_bits(), any::<bool>()), 0..2 * CHUNK_SAMPLES_TARGET),
    )
        .prop_map(|(start, steps)| {
            let mut samples = Vec::with_capacity(steps.len() + 1);
            let mut t = start;
            let mut v = 0u64;
            for (index, (gap, bits, repeat)) in steps.into_iter().enumerate() {
                if index > 0 {
                    match t.checked_add_unsigned(gap) {
                        Some(next) => t = next,
                        None => break,
                    }
                }
                if !repeat || index == 0 {
                    v = bits;
                }
                samples.push((t, v));
            }
            samples
        })
}

fn as_floats(samples: &[(i64, u64)]) -> Vec<(i64, f64)> {
    samples.iter().map(|&(t, bits)| (t, f64::from_bits(bits))).collect()
}

fn as_bits(samples: &[(i64, f64)]) -> Vec<(i64, u64)> {
    samples.iter().map(|&(t, v)| (t, v.to_bits())).collect()
}

/// Decodes `bytes` both ways; neither may panic, and they must agree on failure.
fn check_random_bytes(bytes: &[u8]) -> Result<(), TestCaseError> {
    let result = decode_all(bytes);
    if let Ok(mut iter) = ChunkIter::new(bytes) {
        let mut errors = 0;
        for item in iter.by_ref() {
            errors += item.is_err() as usize;
        }
        prop_assert!(errors <= 1);
        prop_assert!(iter.next().is_none());
        prop_assert_eq!(errors == 1, result.is_err());
    } else {
        prop_assert!(result.is_err());
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    // Goal: every strictly increasing timestamp sequence and every value bit pattern
    // round-trips exactly, and the encoder's bytes are decodable after every append.
    // Method: generated samples whose ΔΔs land in every bucket, compared bit for bit with the
    // model after encode_all and after each single append.
    #[test]
    fn round_trip(samples in samples()) {
        let bytes = encode_all(&as_floats(&samples)).unwrap();
        prop_assert_eq!(as_bits(&decode_all(&bytes).unwrap()), samples.clone());
        let mut encoder = ChunkEncoder::new();
        for (index, &(t, bits)) in samples.iter().enumerate() {
            encoder.append(t, f64::from_bits(bits)).unwrap();
            let prefix = decode_all(encoder.bytes()).unwrap();
            prop_assert_eq!(as_bits(&prefix), samples[..=index].to_vec());
        }
    }

    // Goal: seek agrees with a linear scan of the model, for single seeks and for ascending
    // sequences of seeks interleaved with `next`.
    // Method: targets at, just before and just after generated samples' timestamps; each
    // seek (and the `next` after it) compared with a scan of the model.
    #[test]
    fn seek_matches_linear_scan(
        samples in samples(),
        targets in prop::collection::vec(any::<prop::sample::Index>(), 1..8),
        offsets in prop::collection::vec(-2i64..3, 8),
    ) {
        prop_assume!(!samples.is_empty());
        let bytes = encode_all(&as_floats(&samples)).unwrap();
        // Targets near real timestamps (exact, just before, just after), in ascending order.
        let mut wanted: Vec<i64> = targets.iter().zip(&offsets)
            .map(|(index, &offset)| index.get(&samples).0.saturating_add(offset))
            .collect();
        wanted.sort();
        for &target in &wanted {
            let mut iter = ChunkIter::new(&bytes).unwrap();
            let expected = samples.iter().position(|s| s.0 >= target);
            let got = iter.seek(target).unwrap().map(|(t, v)| (t, v.to_bits()));
            prop_assert_eq!(got, expected.map(|i| samples[i]));
            // `next` continues after the sought sample.
            let next = iter.next().map(|item| item.map(|(t, v)| (t, v.to_bits())).unwrap());
            let expected_next = expected.and_then(|i| samples.get(i + 1).copied());
            prop_assert_eq!(next, expected_next);
        }
        // Ascending seeks on one iterator see what a scan sees.
        let mut iter = ChunkIter::new(&bytes).unwrap();
        for &target in &wanted {
            let expected = samples.iter().find(|s| s.0 >= target).copied();
            let got = iter.seek(target).unwrap().map(|(t, v)| (t, v.to_bits()));
            prop_assert_eq!(got, expected);
        }
    }

    // Goal: decoding arbitrary bytes never panics, and the iterator stops after an error.
    // Method: random bytes as they come, and behind a small count header so that decoding
    // gets past the first samples more often.
    #[test]
    fn random_bytes_never_panic(
        count in 0u16..64,
        body in prop::collection::vec(any::<u8>(), 0..400),
    ) {
        check_random_bytes(&body)?;
        check_random_bytes(&[&count.to_be_bytes()[..], &body].concat())?;
    }

    // Goal: damaging a valid chunk (a flipped bit, a truncation, a changed count) never panics,
    // and truncation is always an error.
    // Method: one random bit flip, one random cut and one random count header applied to a
    // generated chunk; every damaged copy is decoded.
    #[test]
    fn damaged_chunks_never_panic(
        samples in samples(),
        flip in any::<prop::sample::Index>(),
        cut in any::<prop::sample::Index>(),
        count in any::<u16>(),
    ) {
        let bytes = encode_all(&as_floats(&samples)).unwrap();
        let mut flipped = bytes.clone();
        let bit = flip.index(flipped.len() * 8);
        flipped[bit / 8] ^= 0x80 >> (bit % 8);
        let _ = decode_all(&flipped);
        let len = cut.index(bytes.len());
        prop_assert!(decode_all(&bytes[..len]).is_err());
        let mut recounted = bytes.clone();
        recounted[..2].copy_from_slice(&count.to_be_bytes());
        let _ = decode_all(&recounted);
    }
}
