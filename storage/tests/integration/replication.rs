//! Replication support at the engine's API (docs/design/storage.md § Replication support):
//! shard digests, WAL tails and replication floors, applying replicated records. Runs in both
//! builds on the simulated filesystem.

use std::sync::Arc;

use sextant_core::clock::ManualClock;
use sextant_core::labels::Labels;
use sextant_core::matcher::Matcher;
use sextant_core::sample::Sample;
use sextant_storage::engine::{
    ApplyError, Engine, EngineConfig, EngineError, RecordProblem, ShardDigest, TailError, TailRecord, WalTail, WriteSeries,
};
use sextant_storage::fs::sim::{CrashMode, FaultConfig, SimFs};
use sextant_storage::fs::FileSystem;
use sextant_storage::wal::record::{decode_payload, Payload};
use sextant_storage::wal::{RecordBody, WalConfig, WalRecord};

const NOW: i64 = 1_700_000_000_000;
const MINUTE: i64 = 60_000;
const ALL: (i64, i64) = (i64::MIN, i64::MAX);

fn config() -> EngineConfig {
    EngineConfig {
        shard_ids: vec![0, 1],
        wal: WalConfig { segment_bytes: 64 * 1024, ..WalConfig::default() },
        block_span_ms: 10 * MINUTE,
        retention_ms: None,
        ..EngineConfig::default()
    }
}

fn series(name: &str, instance: &str, samples: &[(i64, f64)]) -> WriteSeries {
    WriteSeries {
        labels: Labels::from_pairs(&[("__name__", name), ("instance", instance)]),
        samples: samples.iter().map(|(t, v)| Sample::new(*t, *v)).collect(),
    }
}

async fn open(fs: &SimFs, clock: &Arc<ManualClock>, config: EngineConfig) -> Engine {
    Engine::open(Arc::new(fs.clone()), clock.clone(), config).await.expect("engine opens")
}

async fn digest(engine: &Engine) -> ShardDigest {
    engine.shard_digest(0, ALL.0, ALL.1).await.expect("digest")
}

/// Ships everything the primary has for shard 0 to the secondary, in tails of `bytes_max`.
async fn sync(primary: &Engine, secondary: &Engine, bytes_max: usize) -> u64 {
    let mut applied = 0;
    loop {
        let after = secondary.replica_position(0).await.unwrap().unwrap_or(0);
        let tail = primary.wal_tail(0, after, bytes_max).await.expect("tail");
        if tail.records.is_empty() {
            return applied;
        }
        applied += secondary.apply_replicated(0, &tail).await.expect("apply").records;
    }
}

// ---------------------------------------------------------------------------------------------
// Digest

fn put_str(out: &mut Vec<u8>, s: &str) {
    assert!(s.len() < 128, "single-byte varint lengths only in this hand encoder");
    out.push(s.len() as u8);
    out.extend_from_slice(s.as_bytes());
}

// Goal: the digest's byte stream is exactly the documented one, and its hash is pinned.
// Method: a fixed small shard (two tenants, a -0.0 and a NaN payload, samples out of order,
// part in a block); the stream is built here by hand from the doc's definition and hashed with
// the reference xxh64; the engine's digest must equal it and the pinned constant.
#[tokio::test]
async fn digest_golden() {
    let fs = SimFs::new(1);
    let clock = Arc::new(ManualClock::new(NOW));
    let engine = open(&fs, &clock, config()).await;
    let nan = f64::from_bits(0x7ff8_0000_0000_0001);
    engine.import(0, "u", vec![series("z", "1", &[(2000, 3.0)])]).await.unwrap();
    engine.import(0, "t", vec![series("b", "1", &[(1500, nan)])]).await.unwrap();
    engine.import(0, "t", vec![series("a", "1", &[(2000, -0.0)])]).await.unwrap();
    engine.flush().await.unwrap();
    engine.import(0, "t", vec![series("a", "1", &[(1000, 1.5)])]).await.unwrap();

    let mut stream = Vec::new();
    let mut push_series = |tenant: &str, name: &str, samples: &[(i64, u64)]| {
        put_str(&mut stream, tenant);
        stream.push(2); // labels
        put_str(&mut stream, "__name__");
        put_str(&mut stream, name);
        put_str(&mut stream, "instance");
        put_str(&mut stream, "1");
        stream.push(samples.len() as u8);
        for (t, bits) in samples {
            stream.extend_from_slice(&t.to_le_bytes());
            stream.extend_from_slice(&bits.to_le_bytes());
        }
    };
    push_series("t", "a", &[(1000, 1.5f64.to_bits()), (2000, 0x8000_0000_0000_0000)]);
    push_series("t", "b", &[(1500, 0x7ff8_0000_0000_0001)]);
    push_series("u", "z", &[(2000, 3.0f64.to_bits())]);
    let by_hand = xxhash_rust::xxh64::xxh64(&stream, 0);
    let got = digest(&engine).await;
    assert_eq!(got, ShardDigest { series: 3, samples: 4, hash: by_hand });
    assert_eq!(got.hash, 0x735b_d037_af7e_cae4, "pinned digest of the golden shard: {:#018x}", got.hash);
    // The empty shard: xxh64 of no bytes.
    assert_eq!(engine.shard_digest(1, ALL.0, ALL.1).await.unwrap(), ShardDigest { series: 0, samples: 0, hash: 0xef46_db37_51d8_e999 });
}

/// The data set the layout tests write: 6 series, 40 samples each, spread over 2 hours.
fn data_set() -> Vec<(String, Vec<(i64, f64)>)> {
    (0..6)
        .map(|i| {
            let samples = (0..40).map(|j| (NOW - 2 * 60 * MINUTE + j * 3 * MINUTE + i, (i * 100 + j) as f64 * 0.5)).collect();
            (format!("i{i}"), samples)
        })
        .collect()
}

#[derive(Clone, Copy, Debug)]
enum Layout {
    /// Appended in time order, no flush.
    InOrderHead,
    /// Imported newest first, one sample per write.
    ReverseImport,
    /// Imported in time order with a flush after each third of the samples.
    FlushedThirds,
    /// Imported in time order, cut by maintenance as time moves, then compacted.
    Maintained,
}

async fn write_layout(layout: Layout, data: &[(String, Vec<(i64, f64)>)], seed: u64) -> Engine {
    let fs = SimFs::new(seed);
    let clock = Arc::new(ManualClock::new(NOW));
    let engine = open(&fs, &clock, config()).await;
    match layout {
        Layout::InOrderHead => {
            let steps = data[0].1.len();
            for j in 0..steps {
                let writes = data.iter().map(|(inst, s)| series("m", inst, &s[j..j + 1])).collect();
                clock.set_wall_ms(data[0].1[j].0 + MINUTE);
                engine.append(0, "t", writes).await.unwrap();
            }
        }
        Layout::ReverseImport => {
            for (inst, samples) in data.iter().rev() {
                for s in samples.iter().rev() {
                    engine.import(0, "t", vec![series("m", inst, &[*s])]).await.unwrap();
                }
            }
        }
        Layout::FlushedThirds => {
            for third in 0..3 {
                let writes = data
                    .iter()
                    .map(|(inst, s)| {
                        let n = s.len();
                        series("m", inst, &s[third * n / 3..(third + 1) * n / 3])
                    })
                    .collect();
                engine.import(0, "t", writes).await.unwrap();
                engine.flush().await.unwrap();
            }
            // The last sample of each series (n is not a multiple of 3) stays in the head.
            let rest = data.iter().map(|(inst, s)| series("m", inst, &s[3 * (s.len() / 3)..])).collect();
            engine.import(0, "t", rest).await.unwrap();
        }
        Layout::Maintained => {
            for j in 0..data[0].1.len() {
                let writes = data.iter().map(|(inst, s)| series("m", inst, &s[j..j + 1])).collect();
                engine.import(0, "t", writes).await.unwrap();
                if j % 7 == 6 {
                    engine.maintain().await.unwrap();
                }
            }
            engine.flush().await.unwrap();
            engine.maintain().await.unwrap();
        }
    }
    engine
}

// Goal: replicas holding the same samples in different block layouts have equal digests, and
// any single difference changes it. Method: one data set written four ways (head only, reverse
// order by import, flushed in thirds, cut and compacted by maintenance) must give one digest;
// then variants with one value changed, one sample missing, one extra series, one sample
// deleted must each give another, and a digest over a range must count only the range.
#[tokio::test]
async fn digest_equal_across_layouts_and_sensitive_to_any_difference() {
    let data = data_set();
    let reference = digest(&write_layout(Layout::InOrderHead, &data, 10).await).await;
    assert_eq!((reference.series, reference.samples), (6, 240));
    for (i, layout) in [Layout::ReverseImport, Layout::FlushedThirds, Layout::Maintained].into_iter().enumerate() {
        let engine = write_layout(layout, &data, 11 + i as u64).await;
        assert_eq!(digest(&engine).await, reference, "{layout:?}");
        let status = engine.status().await;
        if !matches!(layout, Layout::ReverseImport) {
            assert!(status.blocks > 0, "{layout:?} put data in blocks");
        }
    }

    async fn check(name: &str, data: Vec<(String, Vec<(i64, f64)>)>, reference: ShardDigest, expect: (u64, u64)) {
        let engine = write_layout(Layout::FlushedThirds, &data, 20).await;
        let got = digest(&engine).await;
        assert_ne!(got.hash, reference.hash, "{name}");
        assert_eq!((got.series, got.samples), expect, "{name}");
    }
    let mut changed = data.clone();
    changed[3].1[17].1 += 1.0;
    check("one value changed", changed, reference, (6, 240)).await;
    let mut changed = data.clone();
    assert_eq!(data[0].1[0].1.to_bits(), 0);
    changed[0].1[0].1 = -0.0; // equal as floats, different bits
    check("one value's bits changed", changed, reference, (6, 240)).await;
    let mut missing = data.clone();
    missing[5].1.remove(20);
    check("one sample missing", missing, reference, (6, 239)).await;
    let mut extra = data.clone();
    extra.push(("i9".into(), vec![(NOW, 1.0)]));
    check("one extra series", extra, reference, (7, 241)).await;

    // A deletion through a tombstone (block) counts like a missing sample.
    let engine = write_layout(Layout::Maintained, &data, 21).await;
    let t = data[1].1[5].0;
    engine.delete("t", &[Matcher::equal("instance", "i1")], t, t).await.unwrap();
    let got = digest(&engine).await;
    assert_eq!((got.series, got.samples), (6, 239));
    let mut missing = data.clone();
    missing[1].1.remove(5);
    assert_eq!(got, digest(&write_layout(Layout::ReverseImport, &missing, 22).await).await, "tombstoned equals never written");

    // Ranges: each range's digest equals a digest over that range alone, across layouts.
    let a = write_layout(Layout::InOrderHead, &data, 23).await;
    let b = write_layout(Layout::Maintained, &data, 24).await;
    let ranges = [(NOW - 2 * 60 * MINUTE, NOW - 90 * MINUTE), (NOW - 90 * MINUTE + 1, NOW), (NOW + 1, NOW + 60 * MINUTE), ALL];
    let got_a = a.shard_digest_ranges(0, &ranges).await.unwrap();
    let got_b = b.shard_digest_ranges(0, &ranges).await.unwrap();
    assert_eq!(got_a, got_b);
    for (range, got) in ranges.iter().zip(&got_a) {
        assert_eq!(*got, a.shard_digest(0, range.0, range.1).await.unwrap());
    }
    assert_eq!(got_a[0].samples + got_a[1].samples, 240);
    assert_eq!(got_a[2], ShardDigest { series: 0, samples: 0, hash: 0xef46_db37_51d8_e999 });
    assert_eq!(got_a[3], reference);
    assert!(matches!(a.shard_digest(0, 5, 4).await, Err(EngineError::InvalidArgument { .. })));
    assert!(matches!(a.shard_digest_ranges(0, &[]).await, Err(EngineError::InvalidArgument { .. })));
    assert!(matches!(a.shard_digest(7, 0, 1).await, Err(EngineError::UnknownShard { shard: 7 })));
}

// ---------------------------------------------------------------------------------------------
// WAL tail and floor

fn decode(record: &TailRecord) -> WalRecord {
    match decode_payload(&record.bytes).expect("decodes") {
        Payload::Record(r) => r,
        Payload::Meta(_) => panic!("meta shipped"),
    }
}

/// (t, bits) of every sample in the records' Samples bodies.
fn samples_of(records: &[TailRecord]) -> Vec<(i64, u64)> {
    let mut out = Vec::new();
    for r in records {
        if let RecordBody::Samples(entries) = decode(r).body {
            out.extend(entries.iter().map(|e| (e.t, e.v.to_bits())));
        }
    }
    out
}

// Goal: a tail returns exactly the records appended, in seq order, across segment rotation
// and a restart. Method: each append is paired with a tail read from the previous position,
// which must return that append's records (a Series record for a new series, then the Samples
// record) with its samples; enough appends to roll 64 KiB segments several times, the tails
// together scanning the log about once (each resumes where the previous stopped); then a
// clean restart, after which a tail from 0 returns every record again.
#[tokio::test]
async fn tail_pairs_with_appends_across_rotation_and_restart() {
    let fs = SimFs::new(30);
    let clock = Arc::new(ManualClock::new(NOW));
    let engine = open(&fs, &clock, config()).await;
    let mut position = 0u64;
    let mut all: Vec<(i64, u64)> = Vec::new();
    for step in 0..300i64 {
        let t = NOW + step * 1000;
        clock.set_wall_ms(t);
        let instance = format!("i{}", step % 7);
        // 20 samples per write: about 500 bytes per record, so 64 KiB segments roll often.
        let samples: Vec<(i64, f64)> = (0..20).map(|k| (t - 19 + k, (step * 20 + k) as f64)).collect();
        let report = engine.append(0, "t", vec![series("m", &instance, &samples)]).await.unwrap();
        assert_eq!(report.accepted, 20, "step {step}");
        // Shard 1 writes interleave in the log and never appear in shard 0's tail.
        engine.append(1, "t", vec![series("other", "x", &[(t, 1.0)])]).await.unwrap();
        let tail = engine.wal_tail(0, position, 1 << 20).await.unwrap();
        let kinds: Vec<&str> = tail
            .records
            .iter()
            .map(|r| match decode(r).body {
                RecordBody::Series(_) => "series",
                RecordBody::Samples(_) => "samples",
                RecordBody::Tombstone(_) => "tombstone",
            })
            .collect();
        let expected_kinds: &[&str] = if step < 7 { &["series", "samples"] } else { &["samples"] };
        assert_eq!(kinds, expected_kinds, "step {step}");
        let seqs: Vec<u64> = tail.records.iter().map(|r| r.seq).collect();
        assert_eq!(seqs, (position + 1..=position + kinds.len() as u64).collect::<Vec<_>>(), "step {step}");
        let got = samples_of(&tail.records);
        let wrote: Vec<(i64, u64)> = samples.iter().map(|(t, v)| (*t, v.to_bits())).collect();
        assert_eq!(got, wrote, "step {step}");
        // Series defined before this tail come with it: the tail is self-contained.
        assert_eq!(tail.series.is_empty(), step < 7, "step {step}");
        all.extend(got);
        position = tail.last_seq().unwrap();
        assert_eq!(tail.durable_next_seq, position + 1);
    }
    let stats = engine.wal_stats();
    assert!(stats.segments_created >= 3, "segments rolled: {}", stats.segments_created);
    // Each tail read on from where the previous one stopped: all 300 together scanned about
    // the log once (rereading it whole each time would be ~300 × 600 / 2 records).
    assert!(
        stats.tail_records_scanned <= 2 * stats.records_appended,
        "tails scanned {} records of a log of {}",
        stats.tail_records_scanned,
        stats.records_appended
    );
    // Nothing new: an empty tail.
    assert!(engine.wal_tail(0, position, 1 << 20).await.unwrap().records.is_empty());
    // A small budget returns a prefix (at least one record).
    let small = engine.wal_tail(0, 0, 1).await.unwrap();
    assert_eq!(small.records.len(), 1);
    engine.close().await.unwrap();
    let engine = open(&fs, &clock, config()).await;
    let mut got = Vec::new();
    let mut after = 0;
    loop {
        let tail = engine.wal_tail(0, after, 8 * 1024).await.unwrap();
        let Some(last) = tail.last_seq() else { break };
        assert_eq!(tail.records.first().unwrap().seq, after + 1);
        got.extend(samples_of(&tail.records));
        after = last;
    }
    assert_eq!(after, position);
    assert_eq!(got, all, "after restart the tail returns every record again");
}

// Goal: a secondary far behind catches up in small batches that each read a bounded window of
// the log, not the rest of the segment, and still receives every record once, in order, with
// every series it needs defined. Method: 1,500 writes to shard 0 interleaved with shard 1's in
// 1 MiB segments, no tail meanwhile; then tails of 4 KiB from position 0 until empty, each
// paired with the bytes the WAL says it read (at most the window plus what a widened read for
// one record adds, twice over for a batch whose shard records are sparse).
#[tokio::test]
async fn lagging_tail_reads_bounded_windows() {
    let fs = SimFs::new(31);
    let clock = Arc::new(ManualClock::new(NOW));
    let config = EngineConfig { wal: WalConfig { segment_bytes: 1024 * 1024, ..WalConfig::default() }, ..config() };
    let engine = open(&fs, &clock, config).await;
    let mut wrote: Vec<(i64, u64)> = Vec::new();
    for step in 0..1500i64 {
        let t = NOW + step * 1000;
        clock.set_wall_ms(t);
        let samples: Vec<(i64, f64)> = (0..20).map(|k| (t - 19 + k, (step * 20 + k) as f64)).collect();
        engine.append(0, "t", vec![series("m", &format!("i{}", step % 11), &samples)]).await.unwrap();
        engine.append(1, "t", vec![series("other", "x", &samples)]).await.unwrap();
        wrote.extend(samples.iter().map(|(t, v)| (*t, v.to_bits())));
    }
    assert!(engine.wal_stats().segments_created >= 2, "the log spans segments");
    let bytes_max = 4096;
    let read_max = 2 * (sextant_storage::wal::tail_window_bytes(bytes_max) as u64 + 32 * 1024);
    let (mut after, mut got, mut calls) = (0u64, Vec::new(), 0);
    loop {
        let before = engine.wal_stats().tail_bytes_read;
        let tail = engine.wal_tail(0, after, bytes_max).await.unwrap();
        let read = engine.wal_stats().tail_bytes_read - before;
        let Some(last) = tail.last_seq() else { break };
        calls += 1;
        assert!(read <= read_max, "call {calls} read {read} bytes for a {bytes_max}-byte batch (bound {read_max})");
        assert_eq!(tail.records.first().unwrap().seq, after + 1, "call {calls}");
        // Every ref the batch's samples use is defined in the batch or its preamble.
        let mut defined: std::collections::BTreeSet<u64> = std::collections::BTreeSet::new();
        if !tail.series.is_empty() {
            if let Ok(Payload::Record(WalRecord { body: RecordBody::Series(entries), .. })) = decode_payload(&tail.series) {
                defined.extend(entries.iter().map(|e| e.series_ref));
            }
        }
        for record in &tail.records {
            match decode(record).body {
                RecordBody::Series(entries) => defined.extend(entries.iter().map(|e| e.series_ref)),
                RecordBody::Samples(entries) => assert!(entries.iter().all(|e| defined.contains(&e.series_ref)), "call {calls}: undefined ref"),
                RecordBody::Tombstone(_) => {}
            }
        }
        got.extend(samples_of(&tail.records));
        after = last;
    }
    assert!(calls > 100, "small batches: {calls} calls");
    assert_eq!(got, wrote, "every sample once, in order");
    // One record longer than a whole window (10,000 samples, ~100 KiB): the read widens until
    // the record fits, and the tail returns it whole.
    let t0 = NOW + 1500 * 1000;
    clock.set_wall_ms(t0 + 10_000);
    let big: Vec<(i64, f64)> = (0..10_000).map(|k| (t0 + k, k as f64)).collect();
    engine.append(0, "t", vec![series("m", "big", &big)]).await.unwrap();
    let mut shipped = Vec::new();
    loop {
        let tail = engine.wal_tail(0, after, 1).await.unwrap();
        let Some(last) = tail.last_seq() else { break };
        shipped.extend(samples_of(&tail.records));
        after = last;
    }
    assert!(sextant_storage::wal::tail_window_bytes(1) < 10_000 * 8, "the record is longer than the window");
    assert_eq!(shipped, big.iter().map(|(t, v)| (*t, v.to_bits())).collect::<Vec<_>>());
}

// Goal: the age the lag bound uses — when the oldest record above the floor was logged, on
// the monotonic clock — follows the floor: the first record's time, then the next one's once
// the floor passes the first; none when nothing is above the floor, or for records logged
// before the floor was set. Method: one engine, a manual clock advanced between appends.
#[tokio::test]
async fn oldest_logged_time_follows_the_floor() {
    let clock = Arc::new(ManualClock::new(NOW));
    let fs = SimFs::new(44);
    let engine = open(&fs, &clock, config()).await;
    engine.append(0, "t", vec![series("m", "a", &[(NOW, 1.0)])]).await.unwrap();
    // Logged before any floor: not tracked.
    engine.set_replication_floor(0, Some(0)).unwrap();
    assert_eq!(engine.replication_oldest_logged_ns(0), None, "a record logged before the floor was set has no known time");
    let first_seq = engine.wal_next_seq(0).unwrap() - 1;
    engine.set_replication_floor(0, Some(first_seq)).unwrap();
    assert_eq!(engine.replication_oldest_logged_ns(0), None, "nothing above the floor");
    clock.advance_ms(1_000);
    engine.append(0, "t", vec![series("m", "a", &[(NOW + 1000, 2.0)])]).await.unwrap();
    let second_seq = engine.wal_next_seq(0).unwrap() - 1;
    clock.advance_ms(250);
    engine.append(0, "t", vec![series("m", "a", &[(NOW + 2000, 3.0)])]).await.unwrap();
    assert_eq!(engine.replication_oldest_logged_ns(0), Some(1_000_000_000));
    let status = engine.replication_status().await;
    assert_eq!((status.shards[&0].oldest_logged_ns, status.shards[&0].retained_samples), (Some(1_000_000_000), 2));
    engine.set_replication_floor(0, Some(second_seq)).unwrap();
    assert_eq!(engine.replication_oldest_logged_ns(0), Some(1_250_000_000));
    assert_eq!(engine.replication_status().await.shards[&0].retained_samples, 1);
    engine.set_replication_floor(0, Some(engine.wal_next_seq(0).unwrap() - 1)).unwrap();
    assert_eq!(engine.replication_oldest_logged_ns(0), None);
    engine.set_replication_floor(0, None).unwrap();
    assert_eq!(engine.replication_oldest_logged_ns(0), None, "no floor, no age");
}

/// Fills shard 0 with `steps` appends of 4 series and persists most of it to blocks.
async fn fill_and_flush(engine: &Engine, clock: &ManualClock, steps: i64) {
    for step in 0..steps {
        let t = NOW + step * 15_000;
        clock.set_wall_ms(t);
        let writes = (0..4).map(|i| series("m", &format!("i{i}"), &[(t, (step * 4 + i) as f64)])).collect();
        engine.append(0, "t", writes).await.unwrap();
    }
    engine.flush().await.unwrap();
}

// Goal: a replication floor keeps the records above it through a checkpoint that would
// otherwise drop them, and without a floor the tail says Truncated. Method: two engines write
// the same data and flush (cut + checkpoint); the one with floor 0 still tails everything from
// 0 (and a replica fed from it reaches the primary's digest), the other answers Truncated.
#[tokio::test]
async fn floor_keeps_records_across_checkpoint() {
    let clock = Arc::new(ManualClock::new(NOW));
    let fs = SimFs::new(40);
    // The writes span 50 minutes of the clock: the age bound is raised above that.
    let floored_config = EngineConfig { replication_retain_ms_max: 24 * 60 * MINUTE, ..config() };
    let floored = open(&fs, &clock, floored_config.clone()).await;
    floored.set_replication_floor(0, Some(0)).unwrap();
    fill_and_flush(&floored, &clock, 200).await;
    let fs2 = SimFs::new(41);
    let plain = open(&fs2, &clock, config()).await;
    fill_and_flush(&plain, &clock, 200).await;
    assert!(floored.status().await.blocks > 0 && plain.status().await.blocks > 0);
    let err = plain.wal_tail(0, 0, 1 << 20).await.unwrap_err();
    let TailError::Truncated { oldest_seq } = err else { panic!("{err:?}") };
    assert!(oldest_seq > 1, "{oldest_seq}");
    let tail = floored.wal_tail(0, 0, 1 << 30).await.unwrap();
    assert_eq!(samples_of(&tail.records).len(), 800, "every sample is still in the WAL");
    let status = floored.replication_status().await;
    assert_eq!((status.shards[&0].floor, status.floors_released), (Some(0), 0));
    assert!(status.shards[&0].retained_bytes > 0);
    // The lag in samples: every sample logged above the floor, then those above a raised one.
    assert_eq!(status.shards[&0].retained_samples, 800);
    // ... and when the oldest record above the floor was logged (the lag's age).
    let oldest = floored.replication_oldest_logged_ns(0).expect("every record above floor 0 is tracked");
    assert_eq!(status.shards[&0].oldest_logged_ns, Some(oldest));
    let mid = tail.records[tail.records.len() / 2].seq;
    floored.set_replication_floor(0, Some(mid)).unwrap();
    let above: Vec<TailRecord> = tail.records.iter().filter(|r| r.seq > mid).cloned().collect();
    assert!(!above.is_empty() && samples_of(&above).len() < 800);
    assert_eq!(floored.replication_status().await.shards[&0].retained_samples, samples_of(&above).len() as u64);
    assert!(floored.replication_oldest_logged_ns(0).expect("tracked") >= oldest);
    // Moved back: the records between were forgotten, so no age is claimed.
    floored.set_replication_floor(0, Some(0)).unwrap();
    assert_eq!(floored.replication_oldest_logged_ns(0), None);
    // The secondary catches up from the retained records alone.
    let fs3 = SimFs::new(42);
    let secondary = open(&fs3, &clock, config()).await;
    sync(&floored, &secondary, 16 * 1024).await;
    assert_eq!(digest(&secondary).await, digest(&floored).await);
    assert_eq!(digest(&floored).await.samples, 800);
    // Moving the floor up lets the next checkpoint drop what lies below it; tails from below
    // then answer Truncated and tails from the floor still work.
    let floor = tail.last_seq().unwrap();
    floored.set_replication_floor(0, Some(floor)).unwrap();
    assert_eq!(floored.replication_status().await.shards[&0].retained_samples, 0, "nothing above the last record");
    assert_eq!(floored.replication_oldest_logged_ns(0), None);
    floored.flush().await.unwrap();
    assert!(matches!(floored.wal_tail(0, 0, 1024).await, Err(TailError::Truncated { .. })));
    assert!(floored.wal_tail(0, floor, 1024).await.unwrap().records.is_empty());
    // Restarted, the primary still has the samples (in blocks) and replay does not double them.
    floored.close().await.unwrap();
    let reopened = open(&fs, &clock, floored_config).await;
    assert_eq!(digest(&reopened).await, digest(&secondary).await);
}

// Goal: past either retention bound the floor is released, counted, and tails behind it answer
// Truncated. Method: one engine with a 4 KiB bound (bytes) and one with a 1-minute bound (age,
// on the manual clock); each is driven past its bound.
#[tokio::test]
async fn floor_released_past_bounds() {
    let clock = Arc::new(ManualClock::new(NOW));
    let fs = SimFs::new(50);
    let engine = open(&fs, &clock, EngineConfig { replication_retain_bytes_max: 4096, ..config() }).await;
    engine.set_replication_floor(0, Some(0)).unwrap();
    let mut step = 0;
    while engine.replication_status().await.floors_released == 0 {
        assert!(step < 1000, "bytes bound never hit");
        clock.set_wall_ms(NOW + step);
        engine.append(0, "t", vec![series("m", "a", &[(NOW + step, 1.0)])]).await.unwrap();
        step += 1;
    }
    // 36 payload bytes per one-sample record after the first: the bound is hit near 4 KiB.
    assert!((100..=130).contains(&step), "released after {step} appends");
    let status = engine.replication_status().await;
    assert_eq!(status.shards[&0].floor, None);
    let err = engine.wal_tail(0, 0, 1 << 20).await.unwrap_err();
    assert!(matches!(err, TailError::Truncated { oldest_seq } if oldest_seq > 1), "{err:?}");

    let fs = SimFs::new(51);
    let engine = open(&fs, &clock, EngineConfig { replication_retain_ms_max: MINUTE, ..config() }).await;
    clock.set_wall_ms(NOW);
    engine.append(0, "t", vec![series("m", "a", &[(NOW, 1.0)])]).await.unwrap();
    engine.set_replication_floor(0, Some(0)).unwrap();
    clock.set_wall_ms(NOW + MINUTE);
    assert_eq!(engine.wal_tail(0, 0, 1 << 20).await.unwrap().records.len(), 2, "within the age bound");
    clock.set_wall_ms(NOW + MINUTE + 1);
    assert!(matches!(engine.wal_tail(0, 0, 1 << 20).await, Err(TailError::Truncated { .. })));
    assert_eq!(engine.replication_status().await.floors_released, 1);
    // An acknowledging secondary keeps the floor alive indefinitely.
    let fs = SimFs::new(52);
    let engine = open(&fs, &clock, EngineConfig { replication_retain_ms_max: MINUTE, replication_retain_bytes_max: 4096, ..config() }).await;
    engine.set_replication_floor(0, Some(0)).unwrap();
    let mut floor = 0;
    for step in 0..500i64 {
        clock.set_wall_ms(NOW + step * 10_000);
        engine.append(0, "t", vec![series("m", "a", &[(NOW + step * 10_000, 1.0)])]).await.unwrap();
        let tail = engine.wal_tail(0, floor, 1 << 20).await.unwrap();
        if step % 3 == 2 {
            floor = tail.last_seq().unwrap();
            engine.set_replication_floor(0, Some(floor)).unwrap();
        }
    }
    assert_eq!(engine.replication_status().await.floors_released, 0);
}

// ---------------------------------------------------------------------------------------------
// Apply

// Goal: applying replicated records converges the secondary to the primary through crashes.
// Method: the primary ingests in-order and out-of-order samples and a deletion, with cuts and
// checkpoints, under a floor the secondary's position moves; the secondary applies tails and
// its disk loses power (SimFs crash, torn unsynced bytes) several times; after each restart it
// resumes from its persisted position. At the end the digests are equal.
#[tokio::test]
async fn apply_then_power_cut_then_resume_converges() {
    let clock = Arc::new(ManualClock::new(NOW));
    let pfs = SimFs::new(60);
    let primary = open(&pfs, &clock, config()).await;
    let sfs = SimFs::new(61);
    sfs.set_faults(FaultConfig { crash_mode: CrashMode::Torn, ..FaultConfig::default() });
    let mut secondary = Some(open(&sfs, &clock, config()).await);
    primary.set_replication_floor(0, Some(0)).unwrap();
    let mut crashes = 0;
    for step in 0..400i64 {
        let t = NOW + step * 15_000;
        clock.set_wall_ms(t);
        let mut writes = vec![series("m", &format!("i{}", step % 5), &[(t, step as f64)])];
        if step % 4 == 0 && step > 8 {
            // Out of order: that instance's newest sample is a minute later.
            writes.push(series("m", &format!("i{}", (step + 1) % 5), &[(t - 2 * MINUTE, -(step as f64))]));
        }
        primary.append(0, "t", writes).await.unwrap();
        if step == 150 {
            primary.delete("t", &[Matcher::equal("__name__", "m"), Matcher::equal("instance", "i2")], NOW, NOW + 100 * 15_000).await.unwrap();
        }
        if step % 60 == 59 {
            primary.maintain().await.unwrap();
        }
        if step % 9 == 0 {
            let s = secondary.as_ref().unwrap();
            sync(&primary, s, 2048).await;
            primary.set_replication_floor(0, s.replica_position(0).await.unwrap()).unwrap();
        }
        if step % 97 == 50 {
            // Power cut right after an apply: what is not fsynced is torn or lost.
            drop(secondary.take());
            sfs.crash();
            crashes += 1;
            secondary = Some(open(&sfs, &clock, config()).await);
        }
    }
    let s = secondary.take().unwrap();
    sync(&primary, &s, 2048).await;
    assert!(crashes >= 3);
    let want = digest(&primary).await;
    assert!(want.samples > 400, "{want:?}");
    assert_eq!(digest(&s).await, want);
    let position = s.replica_position(0).await.unwrap().expect("applied");
    assert_eq!(primary.wal_tail(0, position, 1).await.unwrap().durable_next_seq, position + 1, "caught up with the primary's last durable record");
    drop(s);
    sfs.crash();
    let s = open(&sfs, &clock, config()).await;
    assert_eq!(digest(&s).await, want, "after a final power cut");
}

/// A primary with a few records in shard 0, and its full tail from 0.
async fn primary_with_tail(seed: u64) -> (Engine, WalTail) {
    let fs = SimFs::new(seed);
    let clock = Arc::new(ManualClock::new(NOW));
    let primary = open(&fs, &clock, config()).await;
    primary.append(0, "t", vec![series("m", "a", &[(NOW - 3000, 1.0)]), series("m", "b", &[(NOW - 3000, 2.0)])]).await.unwrap();
    primary.append(0, "t", vec![series("m", "a", &[(NOW - 2000, 3.0)])]).await.unwrap();
    primary.append(0, "u", vec![series("m", "a", &[(NOW - 1000, 4.0)])]).await.unwrap();
    primary.append(0, "t", vec![series("m", "b", &[(NOW, 5.0)])]).await.unwrap();
    let tail = primary.wal_tail(0, 0, 1 << 20).await.unwrap();
    // Series(t a, t b), Samples, Samples, Series(u a), Samples, Samples.
    assert_eq!(tail.records.len(), 6);
    (primary, tail)
}

// Goal: applying is idempotent, and a different value at an existing timestamp is refused
// (first write wins) without stopping the batch. Method: apply a tail twice, then an
// overlapping suffix after moving the position back; the digest and the reports must show no
// change. Then a secondary that already holds another value at one of the timestamps applies
// the tail: that sample is a conflict, every other one is stored.
#[tokio::test]
async fn apply_is_idempotent_and_first_write_wins() {
    let (primary, tail) = primary_with_tail(70).await;
    let want = digest(&primary).await;
    let clock = Arc::new(ManualClock::new(NOW));
    let sfs = SimFs::new(71);
    let s = open(&sfs, &clock, config()).await;
    let first = s.apply_replicated(0, &tail).await.unwrap();
    assert_eq!((first.applied_through, first.records, first.samples_accepted, first.duplicates, first.conflicts), (Some(6), 6, 5, 0, 0));
    assert_eq!(digest(&s).await, want);
    let again = s.apply_replicated(0, &tail).await.unwrap();
    assert_eq!((again.applied_through, again.samples_accepted, again.duplicates, again.series_created), (Some(6), 0, 5, 0));
    assert_eq!(digest(&s).await, want);
    // Overlap: the position moved back to 3; records 4..=6 are applied again.
    s.set_replica_position(0, Some(3)).await.unwrap();
    let overlap = primary.wal_tail(0, 3, 1 << 20).await.unwrap();
    let report = s.apply_replicated(0, &overlap).await.unwrap();
    assert_eq!((report.applied_through, report.samples_accepted, report.duplicates), (Some(6), 0, 2));
    assert_eq!(digest(&s).await, want);
    // The position file: exact bytes.
    assert_eq!(sfs.read(std::path::Path::new("shards/0/replica-position.json")).await.unwrap(), br#"{"version":1,"applied_seq":6}"#);

    let cfs = SimFs::new(72);
    let c = open(&cfs, &clock, config()).await;
    c.import(0, "t", vec![series("m", "a", &[(NOW - 2000, 99.0)])]).await.unwrap();
    let report = c.apply_replicated(0, &tail).await.unwrap();
    assert_eq!((report.applied_through, report.samples_accepted, report.conflicts), (Some(6), 4, 1));
    let got = c.select("t", &[Matcher::equal("instance", "a")], NOW - 2000, NOW - 2000).await.unwrap();
    assert_eq!(got[0].samples[0].v, 99.0, "the value stored first stays");
    assert_ne!(digest(&c).await, want, "the conflict shows in the digest");
}

// Goal: bad input to apply gives a typed error, applies nothing of the bad record or after it,
// and keeps what came before. Method: a table of damaged tails (flipped byte, truncated
// payload, wrong shard, envelope/payload mismatch, gap, missing series definition, damaged
// preamble), each applied to a fresh secondary; check(error kind, applied_through, samples).
#[tokio::test]
async fn apply_refuses_bad_records() {
    let (_primary, tail) = primary_with_tail(80).await;
    let clock = Arc::new(ManualClock::new(NOW));
    type Damage = fn(&mut WalTail);
    let cases: Vec<(&str, Damage, &str, Option<u64>, u64)> = vec![
        ("flipped byte in record 3 (seq 4)", |t| *t.records[3].bytes.last_mut().unwrap() ^= 1, "checksum", Some(3), 3),
        ("truncated payload, checksum recomputed", |t| {
            let r = &mut t.records[2];
            r.bytes.pop();
            *r = TailRecord::new(r.shard, r.seq, r.bytes.clone());
        }, "decode", Some(2), 2),
        ("wrong shard", |t| t.records[1].shard = 1, "wrong shard", Some(1), 0),
        ("envelope seq differs from payload", |t| {
            t.records[5].seq = 6;
            let mut bytes = t.records[5].bytes.clone();
            bytes[4] = 9;
            t.records[5] = TailRecord::new(0, 6, bytes);
        }, "envelope", Some(5), 4),
        ("gap", |t| {
            t.records.remove(2);
        }, "gap", Some(2), 2),
        ("series definition missing", |t| {
            t.records.remove(0);
        }, "gap", None, 0),
        ("preamble damaged", |t| {
            t.series = vec![1, 2, 3];
        }, "preamble", None, 0),
    ];
    for (i, (name, damage, kind, applied, samples)) in cases.into_iter().enumerate() {
        let mut bad = tail.clone();
        damage(&mut bad);
        let fs = SimFs::new(90 + i as u64);
        let s = open(&fs, &clock, config()).await;
        let err = s.apply_replicated(0, &bad).await.unwrap_err();
        let (got_kind, got_applied) = match &err {
            ApplyError::BadRecord { problem: RecordProblem::Checksum { .. }, applied_through, .. } => ("checksum", *applied_through),
            ApplyError::BadRecord { problem: RecordProblem::Decode(_), applied_through, .. } => ("decode", *applied_through),
            ApplyError::BadRecord { problem: RecordProblem::WrongShard { .. }, applied_through, .. } => ("wrong shard", *applied_through),
            ApplyError::BadRecord { problem: RecordProblem::EnvelopeMismatch { .. }, applied_through, .. } => ("envelope", *applied_through),
            ApplyError::BadRecord { problem: RecordProblem::UnknownSeries { .. }, applied_through, .. } => ("unknown series", *applied_through),
            ApplyError::Gap { applied_through, .. } => ("gap", *applied_through),
            ApplyError::BadPreamble { .. } => ("preamble", None),
            other => panic!("{name}: unexpected {other}"),
        };
        assert_eq!((got_kind, got_applied), (kind, applied), "{name}: {err}");
        assert!(!err.to_string().is_empty());
        assert_eq!(s.replica_position(0).await.unwrap(), applied, "{name}: persisted position");
        assert_eq!(digest(&s).await.samples, samples, "{name}: samples applied before the bad record");
    }
    // A Samples record naming a ref nobody defined (tail from 1 with an empty preamble).
    let fs = SimFs::new(99);
    let s = open(&fs, &clock, config()).await;
    s.set_replica_position(0, Some(1)).await.unwrap();
    let mut no_defs = tail.clone();
    no_defs.records.remove(0);
    no_defs.series.clear();
    no_defs.series_crc32 = 0;
    let err = s.apply_replicated(0, &no_defs).await.unwrap_err();
    assert!(matches!(err, ApplyError::BadRecord { index: 0, seq: 2, problem: RecordProblem::UnknownSeries { series_ref: 1 }, applied_through: Some(1) }), "{err}");
}

// Goal: the position file records whose seq space the position is in (version 2), survives a
// restart, and applies keep the source; a version-1 file reads as no source. Golden bytes per
// storage.md § "Durable position". Method: set, apply, reopen, compare the file's bytes.
#[tokio::test]
async fn position_source_is_persisted_with_the_position() {
    use sextant_storage::engine::ReplicaSource;
    let (_primary, tail) = primary_with_tail(80).await;
    let clock = Arc::new(ManualClock::new(NOW));
    let sfs = SimFs::new(81);
    let s = open(&sfs, &clock, config()).await;
    assert_eq!(s.replica_source(0).await.unwrap(), None, "no file: no source");
    let source = ReplicaSource { primary: 3, epoch: 7 };
    s.set_replica_position_from(0, Some(0), Some(source)).await.unwrap();
    let path = std::path::Path::new("shards/0/replica-position.json");
    assert_eq!(sfs.read(path).await.unwrap(), br#"{"version":2,"applied_seq":0,"source":{"primary":3,"epoch":7}}"#);
    let report = s.apply_replicated(0, &tail).await.unwrap();
    assert_eq!(report.applied_through, Some(6));
    assert_eq!(sfs.read(path).await.unwrap(), br#"{"version":2,"applied_seq":6,"source":{"primary":3,"epoch":7}}"#, "an apply keeps the source");
    s.close().await.unwrap();
    let s = open(&sfs, &clock, config()).await;
    assert_eq!((s.replica_position(0).await.unwrap(), s.replica_source(0).await.unwrap()), (Some(6), Some(source)), "after a restart");
    s.set_replica_position_from(0, None, None).await.unwrap();
    assert_eq!(sfs.read(path).await.unwrap(), br#"{"version":1,"applied_seq":null}"#, "no source: version 1");
    assert_eq!(s.replica_source(0).await.unwrap(), None);
}

// Goal: shard_export pages cover every series of the shard (all tenants) once, in key order,
// with the merged samples in the range, and shard_time_bounds spans head and blocks; the
// per-series delete removes exactly the asked samples. Method: two tenants, one series flushed
// to a block, pages of one sample.
#[tokio::test]
async fn export_pages_cover_the_shard_and_bounds_span_it() {
    let clock = Arc::new(ManualClock::new(NOW));
    let fs = SimFs::new(90);
    let e = open(&fs, &clock, config()).await;
    assert_eq!(e.shard_time_bounds(0).await.unwrap(), None);
    e.import(0, "t1", vec![series("m", "a", &[(NOW - 30 * MINUTE, 1.0)])]).await.unwrap();
    e.flush().await.unwrap();
    e.import(0, "t1", vec![series("m", "a", &[(NOW - MINUTE, 2.0)]), series("m", "b", &[(NOW, 3.0)])]).await.unwrap();
    e.import(0, "t0", vec![series("m", "a", &[(NOW - 2 * MINUTE, 4.0)])]).await.unwrap();
    assert_eq!(e.shard_time_bounds(0).await.unwrap(), Some((NOW - 30 * MINUTE, NOW)));
    let mut after = None;
    let mut pages = Vec::new();
    loop {
        let page = e.shard_export(0, i64::MIN, i64::MAX, after.as_ref(), 1).await.unwrap();
        pages.push(page.series.iter().map(|(k, s)| (k.tenant.clone(), k.labels.get("instance").to_string(), s.iter().map(|x| x.v).collect::<Vec<_>>())).collect::<Vec<_>>());
        match page.next_after {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    let flat: Vec<_> = pages.concat();
    assert_eq!(flat, vec![("t0".into(), "a".into(), vec![4.0]), ("t1".into(), "a".into(), vec![1.0, 2.0]), ("t1".into(), "b".into(), vec![3.0])]);
    let ranged = e.shard_export(0, NOW - 5 * MINUTE, NOW - MINUTE, None, 100).await.unwrap();
    assert_eq!(ranged.series.len(), 2, "only series with samples in the range");
    assert!(matches!(e.shard_export(0, 5, 4, None, 1).await, Err(EngineError::InvalidArgument { .. })));
    let key = sextant_core::series::SeriesKey::new("t1".to_string(), Labels::from_pairs(&[("__name__", "m"), ("instance", "a")]));
    e.delete_series_in_shard(0, &key, NOW - MINUTE, NOW - MINUTE).await.unwrap();
    let left = e.shard_export(0, i64::MIN, i64::MAX, None, 100).await.unwrap();
    let a: Vec<f64> = left.series.iter().find(|(k, _)| *k == key).unwrap().1.iter().map(|s| s.v).collect();
    assert_eq!(a, vec![1.0], "only the deleted sample is gone");
    assert_eq!(left.series.len(), 3);
}
