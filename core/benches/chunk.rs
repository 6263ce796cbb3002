//! Chunk codec throughput: encode and decode time per sample, and bytes per sample, for
//! perfectly regular constant data and for node_exporter-like values under four timestamp
//! shapes (regular, 0-3 ms jitter, 0-50 ms jitter, irregular gaps). Measures; asserts nothing.

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sextant_core::chunk::{decode_all, ChunkEncoder, ChunkIter, CHUNK_SAMPLES_TARGET};

const SCRAPE_INTERVAL_MS: i64 = 15_000;
const T_START_MS: i64 = 1_700_000_000_000;
/// Chunks per data shape: enough series that one benchmark iteration is not dominated by
/// loop overhead, with several kinds of series mixed.
const CHUNKS_PER_SHAPE: usize = 64;

/// Every series scraped exactly every 15 s with a constant value.
fn regular_constant() -> Vec<Vec<(i64, f64)>> {
    (0..CHUNKS_PER_SHAPE)
        .map(|series| {
            (0..CHUNK_SAMPLES_TARGET as i64)
                .map(|i| (T_START_MS + i * SCRAPE_INTERVAL_MS, series as f64))
                .collect()
        })
        .collect()
}

/// Constant values (as `regular_constant`) with 0-3 ms of scrape jitter: isolates what the
/// timestamps cost.
fn jitter_constant() -> Vec<Vec<(i64, f64)>> {
    let mut rng = ChaCha8Rng::seed_from_u64(0x7135_7a47);
    (0..CHUNKS_PER_SHAPE)
        .map(|series| {
            (0..CHUNK_SAMPLES_TARGET as i64)
                .map(|i| {
                    let t = T_START_MS + i * SCRAPE_INTERVAL_MS + rng.random_range(0..=3);
                    (t, series as f64)
                })
                .collect()
        })
        .collect()
}

/// How the timestamps of a shape are drawn.
#[derive(Clone, Copy)]
enum Timing {
    /// Exactly every 15 s.
    Regular,
    /// Every 15 s plus a uniform jitter of 0 to `n` ms (each sample independently).
    Jitter(i64),
    /// Random gaps, uniform in 1 ms ..= 60 s (event-like, push-style data).
    Irregular,
}

/// node_exporter-like values: half the series are counters stepping by small random integers,
/// half are gauges doing a random walk rounded to 2 decimals; timestamps as `timing` says.
/// The values depend only on the seed, so shapes differ in their timestamps alone.
fn node_exporter_values(timing: Timing) -> Vec<Vec<(i64, f64)>> {
    let mut rng = ChaCha8Rng::seed_from_u64(0x05e5_7a47);
    let mut time_rng = ChaCha8Rng::seed_from_u64(0x7135_7a47);
    (0..CHUNKS_PER_SHAPE)
        .map(|series| {
            let mut value: f64 = if series % 2 == 0 { 0.0 } else { rng.random_range(0.0..100.0) };
            let mut t = T_START_MS;
            (0..CHUNK_SAMPLES_TARGET as i64)
                .map(|i| {
                    let t_sample = match timing {
                        Timing::Regular => T_START_MS + i * SCRAPE_INTERVAL_MS,
                        Timing::Jitter(max_ms) => {
                            T_START_MS + i * SCRAPE_INTERVAL_MS + time_rng.random_range(0..=max_ms)
                        }
                        Timing::Irregular => {
                            t += time_rng.random_range(1..=60_000);
                            t
                        }
                    };
                    if series % 2 == 0 {
                        value += rng.random_range(0..20) as f64;
                    } else {
                        value = ((value + rng.random_range(-1.0..1.0)) * 100.0).round() / 100.0;
                    }
                    (t_sample, value)
                })
                .collect()
        })
        .collect()
}

fn encode(chunk: &[(i64, f64)]) -> Vec<u8> {
    let mut encoder = ChunkEncoder::new();
    for &(t, v) in chunk {
        encoder.append(t, v).unwrap();
    }
    encoder.into_bytes()
}

fn bench_shape(c: &mut Criterion, name: &str, chunks: Vec<Vec<(i64, f64)>>) {
    let samples_count: usize = chunks.iter().map(Vec::len).sum();
    let encoded: Vec<Vec<u8>> = chunks.iter().map(|chunk| encode(chunk)).collect();
    let bytes_total: usize = encoded.iter().map(Vec::len).sum();
    for (chunk, bytes) in chunks.iter().zip(&encoded) {
        let decoded = decode_all(bytes).unwrap();
        assert_eq!(decoded.len(), chunk.len());
    }
    println!(
        "{name}: {:.3} bytes/sample ({bytes_total} bytes, {samples_count} samples, \
         {CHUNKS_PER_SHAPE} chunks of {CHUNK_SAMPLES_TARGET})",
        bytes_total as f64 / samples_count as f64,
    );

    let mut group = c.benchmark_group(name);
    group.throughput(Throughput::Elements(samples_count as u64));
    group.bench_function("encode", |b| {
        b.iter(|| {
            for chunk in &chunks {
                black_box(encode(black_box(chunk)));
            }
        })
    });
    group.bench_function("decode", |b| {
        b.iter(|| {
            let mut checksum = 0u64;
            for bytes in &encoded {
                for item in ChunkIter::new(black_box(bytes)).unwrap() {
                    let (t, v) = item.unwrap();
                    checksum = checksum.wrapping_add(t as u64 ^ v.to_bits());
                }
            }
            black_box(checksum)
        })
    });
    group.finish();
}

fn chunk_benches(c: &mut Criterion) {
    bench_shape(c, "regular_constant", regular_constant());
    bench_shape(c, "jitter_constant", jitter_constant());
    bench_shape(c, "node_exporter_regular", node_exporter_values(Timing::Regular));
    // The shape real scrapes have: 0-3 ms of jitter (the `node_exporter_like` of earlier runs).
    bench_shape(c, "node_exporter_like", node_exporter_values(Timing::Jitter(3)));
    bench_shape(c, "node_exporter_jitter_50ms", node_exporter_values(Timing::Jitter(50)));
    bench_shape(c, "node_exporter_irregular", node_exporter_values(Timing::Irregular));
}

criterion_group!(benches, chunk_benches);
criterion_main!(benches);
