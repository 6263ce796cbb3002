//! Chunk codec throughput: encode and decode time per sample, and bytes per sample, for
//! perfectly regular data and for node_exporter-like data. Measures; asserts nothing.

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

/// node_exporter-like: 15 s scrapes with 0–3 ms jitter; half the series are counters stepping
/// by small random integers, half are gauges doing a random walk rounded to 2 decimals.
fn node_exporter_like() -> Vec<Vec<(i64, f64)>> {
    let mut rng = ChaCha8Rng::seed_from_u64(0x05e5_7a47);
    (0..CHUNKS_PER_SHAPE)
        .map(|series| {
            let mut value: f64 = if series % 2 == 0 { 0.0 } else { rng.random_range(0.0..100.0) };
            (0..CHUNK_SAMPLES_TARGET as i64)
                .map(|i| {
                    let t = T_START_MS + i * SCRAPE_INTERVAL_MS + rng.random_range(0..=3);
                    if series % 2 == 0 {
                        value += rng.random_range(0..20) as f64;
                    } else {
                        value = ((value + rng.random_range(-1.0..1.0)) * 100.0).round() / 100.0;
                    }
                    (t, value)
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
    bench_shape(c, "node_exporter_like", node_exporter_like());
}

criterion_group!(benches, chunk_benches);
criterion_main!(benches);
