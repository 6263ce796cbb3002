//! Engine behaviour at its API: time acceptance, duplicates, durability across crashes, head
//! cuts, compaction, retention, deletion, memory budget and disk errors. Runs in both builds on
//! the simulated filesystem.

use std::path::Path;
use std::sync::Arc;

use sextant_core::clock::ManualClock;
use sextant_core::labels::Labels;
use sextant_core::matcher::{MatchOp, Matcher};
use sextant_core::sample::{stale_nan, Sample};
use sextant_core::series::colliding_fingerprint;
use sextant_storage::acceptance::TimeRefusal;
use sextant_storage::engine::{Engine, EngineConfig, EngineError, RefusalReason, WriteSeries};
use sextant_storage::fs::sim::{CrashMode, FaultConfig, SimFs};
use sextant_storage::fs::FileSystem;
use sextant_storage::wal::{WalConfig, WalError};

const NOW: i64 = 1_700_000_000_000;
const MINUTE: i64 = 60_000;

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

fn name_is(name: &str) -> Vec<Matcher> {
    vec![Matcher::equal("__name__", name)]
}

async fn open(fs: &SimFs, clock: &Arc<ManualClock>, config: EngineConfig) -> Engine {
    Engine::open(Arc::new(fs.clone()), clock.clone(), config).await.expect("engine opens")
}

/// Bits of every sample of `name` in tenant `t`, as (instance, t, bits).
async fn dump(engine: &Engine, tenant: &str, name: &str) -> Vec<(String, i64, u64)> {
    let mut out = Vec::new();
    for s in engine.select(tenant, &name_is(name), i64::MIN, i64::MAX).await.unwrap() {
        for sample in s.samples {
            out.push((s.labels.get("instance").to_string(), sample.t, sample.v.to_bits()));
        }
    }
    out
}

// Goal: every time-acceptance and duplicate rule gives its documented outcome through the
// engine. Method: a table of writes applied in order to one series, each with the expected
// counts or refusal; then the stored samples are compared with the expected survivors.
#[tokio::test]
async fn acceptance_and_duplicates_table() {
    let fs = SimFs::new(1);
    let clock = Arc::new(ManualClock::new(NOW));
    let engine = open(&fs, &clock, config()).await;
    type Expect = (u64, u64, Option<RefusalReason>);
    let cases: Vec<(&str, Vec<(i64, f64)>, Expect)> = vec![
        ("first sample", vec![(NOW, 1.0)], (1, 0, None)),
        ("exact duplicate is a success", vec![(NOW, 1.0)], (0, 1, None)),
        ("conflicting value refused", vec![(NOW, 2.0)], (0, 0, Some(RefusalReason::Conflict { t: NOW, existing_bits: 1f64.to_bits() }))),
        ("out of order within window", vec![(NOW - 5 * MINUTE, 0.5)], (1, 0, None)),
        ("out of order beyond window", vec![(NOW - 11 * MINUTE, 0.1)], (0, 0, Some(RefusalReason::Time(TimeRefusal::OutOfOrderTooOld { t: NOW - 11 * MINUTE, behind_ms: 11 * MINUTE, limit_ms: 10 * MINUTE })))),
        ("future within skew", vec![(NOW + 9 * MINUTE, 3.0)], (1, 0, None)),
        ("future past skew", vec![(NOW + 11 * MINUTE, 4.0)], (0, 0, Some(RefusalReason::Time(TimeRefusal::TooFarInFuture { t: NOW + 11 * MINUTE, ahead_ms: 11 * MINUTE, limit_ms: 10 * MINUTE })))),
        ("in-request conflict", vec![(NOW + 9 * MINUTE + 1, 5.0), (NOW + 9 * MINUTE + 1, 6.0)], (1, 0, Some(RefusalReason::ConflictInRequest { t: NOW + 9 * MINUTE + 1 }))),
        ("stale marker stored", vec![(NOW + 9 * MINUTE + 2, stale_nan())], (1, 0, None)),
    ];
    let mut expected: Vec<(i64, u64)> = Vec::new();
    for (name, samples, (accepted, duplicates, refusal)) in cases {
        let report = engine.append(0, "t", vec![series("m", "a", &samples)]).await.unwrap();
        assert_eq!(report.accepted, accepted, "{name}: accepted");
        assert_eq!(report.duplicates, duplicates, "{name}: duplicates");
        assert_eq!(report.refusals.first().map(|r| r.reason.clone()), refusal, "{name}: refusal");
        if accepted > 0 {
            expected.push((samples[0].0, samples[0].1.to_bits()));
        }
    }
    expected.sort();
    let got: Vec<(i64, u64)> = dump(&engine, "t", "m").await.into_iter().map(|(_, t, b)| (t, b)).collect();
    assert_eq!(got, expected);
    // A new series accepts a backlog up to 24 h old; older is refused.
    let report = engine.append(0, "t", vec![series("m", "b", &[(NOW - 23 * 60 * MINUTE, 1.0), (NOW - 25 * 60 * MINUTE, 1.0)])]).await.unwrap();
    assert_eq!(report.accepted, 1);
    assert!(matches!(report.refusals[0].reason, RefusalReason::Time(TimeRefusal::TooOld { .. })));
    // Import skips time judgement (a far-past sample is applied) but not duplicate rules.
    let report = engine.import(0, "t", vec![series("m", "c", &[(NOW - 1000 * 60 * MINUTE, 7.0)])]).await.unwrap();
    assert_eq!(report.accepted, 1);
    let report = engine.import(0, "t", vec![series("m", "c", &[(NOW - 1000 * 60 * MINUTE, 8.0)])]).await.unwrap();
    assert_eq!(report.refused_permanent, 1);
}

// Goal: acknowledged samples survive a crash that loses or tears every unsynced byte, across
// seeds; and the replayed engine keeps enforcing duplicates. Method: write in batches (each
// acknowledged), crash SimFs in Torn mode, reopen, compare bit for bit.
#[tokio::test]
async fn acked_samples_survive_crashes() {
    for seed in 0..8 {
        let fs = SimFs::new(seed);
        fs.set_faults(FaultConfig { crash_mode: CrashMode::Torn, ..FaultConfig::default() });
        let clock = Arc::new(ManualClock::new(NOW));
        let engine = open(&fs, &clock, config()).await;
        let mut expected = Vec::new();
        for batch in 0..20i64 {
            let t = NOW + batch * 1000;
            let v = f64::from_bits(0x7ff8_0000_0000_0000 | batch as u64); // NaN payloads
            engine.append((batch % 2) as u32, "t", vec![series("m", &format!("i{}", batch % 3), &[(t, v)])]).await.unwrap();
            expected.push((format!("i{}", batch % 3), t, v.to_bits()));
        }
        drop(engine);
        fs.crash();
        let engine = open(&fs, &clock, config()).await;
        let mut got = dump(&engine, "t", "m").await;
        got.sort();
        expected.sort();
        assert!(got == expected, "seed {seed}: {} samples back, {} acknowledged", got.len(), expected.len());
        let report = engine.append(0, "t", vec![series("m", "i0", &[(NOW, f64::from_bits(0x7ff8_0000_0000_0000))])]).await.unwrap();
        assert_eq!(report.duplicates, 1, "seed {seed}: duplicate after replay");
    }
}

// Goal: head cuts, compaction, checkpoints and restarts keep every sample, and the WAL is
// truncated by checkpoints. Method: write 2 h of 15 s data for a few series with the clock
// following, run maintain() as we go, restart twice, compare with what was written.
#[tokio::test]
async fn cuts_compaction_and_restarts_keep_everything() {
    let fs = SimFs::new(7);
    let clock = Arc::new(ManualClock::new(NOW));
    let mut engine = open(&fs, &clock, config()).await;
    let mut expected = Vec::new();
    let mut blocks_cut = 0;
    let mut compacted = 0;
    for step in 0..480i64 {
        let t = NOW + step * 15_000;
        clock.set_wall_ms(t);
        let writes: Vec<WriteSeries> = (0..4).map(|i| series("m", &format!("i{i}"), &[(t, (step * 4 + i) as f64)])).collect();
        for i in 0..4 {
            expected.push((format!("i{i}"), t, ((step * 4 + i) as f64).to_bits()));
        }
        engine.append((step % 2) as u32, "t", writes).await.unwrap();
        if step % 40 == 39 {
            let report = engine.maintain().await.unwrap();
            blocks_cut += report.blocks_cut;
            compacted += report.blocks_compacted;
        }
        if step == 300 {
            engine.close().await.unwrap();
            engine = open(&fs, &clock, config()).await;
        }
    }
    assert!(blocks_cut >= 4, "cuts happened: {blocks_cut}");
    assert!(compacted >= 2, "compaction happened: {compacted}");
    expected.sort();
    let mut got = dump(&engine, "t", "m").await;
    got.sort();
    assert!(got == expected, "{} samples back, {} written", got.len(), expected.len());
    drop(engine);
    fs.crash();
    let engine = open(&fs, &clock, config()).await;
    let mut got = dump(&engine, "t", "m").await;
    got.sort();
    assert!(got == expected, "after crash: {} samples back, {} written", got.len(), expected.len());
    // Checkpoints removed the persisted data from the WAL: it is far smaller than the data.
    let wal_bytes: u64 = {
        let mut total = 0;
        let mut pending = vec![std::path::PathBuf::from("wal")];
        while let Some(dir) = pending.pop() {
            for name in fs.read_dir(&dir).await.unwrap() {
                let path = dir.join(&name);
                if fs.is_dir(&path).await.unwrap() {
                    pending.push(path);
                } else {
                    total += fs.file_len(&path).await.unwrap();
                }
            }
        }
        total
    };
    assert!(wal_bytes < 480 * 4 * 20, "WAL holds {wal_bytes} bytes after checkpoints");
    // Partial ranges cut across blocks and the head.
    let from = NOW + 100 * 15_000;
    let to = NOW + 400 * 15_000;
    let ranged: usize = engine.select("t", &name_is("m"), from, to).await.unwrap().iter().map(|s| s.samples.len()).sum();
    assert_eq!(ranged, 301 * 4);
}

// Goal: deletion removes exactly the matching samples from head and blocks, durably.
#[tokio::test]
async fn delete_is_exact_and_durable() {
    let fs = SimFs::new(3);
    let clock = Arc::new(ManualClock::new(NOW));
    let engine = open(&fs, &clock, config()).await;
    for step in 0..100i64 {
        let t = NOW + step * 15_000;
        clock.set_wall_ms(t);
        engine.append(0, "t", vec![series("m", "a", &[(t, 1.0)]), series("m", "b", &[(t, 2.0)])]).await.unwrap();
    }
    engine.flush().await.unwrap();
    for step in 100..120i64 {
        let t = NOW + step * 15_000;
        clock.set_wall_ms(t);
        engine.append(0, "t", vec![series("m", "a", &[(t, 1.0)])]).await.unwrap();
    }
    let matchers = vec![Matcher::equal("__name__", "m"), Matcher::new(MatchOp::RegexMatch, "instance", "a").unwrap()];
    engine.delete("t", &matchers, NOW + 50 * 15_000, NOW + 110 * 15_000).await.unwrap();
    let check = |got: Vec<(String, i64, u64)>| {
        let a = got.iter().filter(|(i, _, _)| i == "a").count();
        let b = got.iter().filter(|(i, _, _)| i == "b").count();
        assert_eq!(a, 50 + 9, "instance a keeps samples outside the range");
        assert_eq!(b, 100, "instance b untouched");
    };
    check(dump(&engine, "t", "m").await);
    drop(engine);
    fs.crash();
    let engine = open(&fs, &clock, config()).await;
    check(dump(&engine, "t", "m").await);
}

// Goal: with a fingerprint function that collides constantly, series stay distinct through
// writes, cuts and restarts.
#[tokio::test]
async fn fingerprint_collisions_resolved() {
    let fs = SimFs::new(4);
    let clock = Arc::new(ManualClock::new(NOW));
    let config = EngineConfig { fingerprint_fn: colliding_fingerprint, ..config() };
    let engine = open(&fs, &clock, config.clone()).await;
    let writes: Vec<WriteSeries> = (0..50).map(|i| series("m", &format!("i{i}"), &[(NOW, i as f64)])).collect();
    assert_eq!(engine.append(0, "t", writes).await.unwrap().series_created, 50);
    engine.append(0, "u", vec![series("m", "i0", &[(NOW, 99.0)])]).await.unwrap();
    drop(engine);
    fs.crash();
    let engine = open(&fs, &clock, config).await;
    let got = dump(&engine, "t", "m").await;
    assert_eq!(got.len(), 50);
    for (instance, _, bits) in got {
        let i: u64 = instance[1..].parse().unwrap();
        assert_eq!(f64::from_bits(bits), i as f64);
    }
    assert_eq!(dump(&engine, "u", "m").await, vec![("i0".to_string(), NOW, 99f64.to_bits())]);
}

// Goal: the memory budget refuses new series (retryable) while existing series keep ingesting.
#[tokio::test]
async fn memory_budget_refuses_new_series_only() {
    let fs = SimFs::new(5);
    let clock = Arc::new(ManualClock::new(NOW));
    let engine = open(&fs, &clock, EngineConfig { memory_bytes_max: 20_000, ..config() }).await;
    let mut created = 0;
    let mut refused = 0;
    let mut refused_series = Vec::new();
    for i in 0..200 {
        // Two samples per new series: a refused series is reported once, its samples both.
        let report = engine.append(0, "t", vec![series("m", &format!("i{i}"), &[(NOW, 1.0), (NOW + 1, 1.0)])]).await.unwrap();
        created += report.series_created;
        refused += report.refused_retryable;
        assert_eq!(report.refused_by_kind.get("memory_budget").copied().unwrap_or(0), report.refused_retryable, "{report:?}");
        assert_eq!(report.series_refused_memory.len() as u64 * 2, report.refused_retryable, "{report:?}");
        refused_series.extend(report.series_refused_memory);
    }
    assert!(created > 0 && refused > 0, "created {created}, refused {refused}");
    assert_eq!(created + refused_series.len() as u64, 200, "every series was either created or reported refused");
    // The refused series really are absent: a read finds exactly the created ones.
    let stored = engine.select("t", &name_is("m"), NOW - 1, NOW + 1).await.unwrap();
    assert_eq!(stored.len() as u64, created);
    for labels in &refused_series {
        assert!(stored.iter().all(|s| &s.labels != labels), "{labels} was reported refused but is stored");
    }
    let status = engine.status().await;
    assert!(status.memory_bytes <= status.memory_bytes_max, "{status:?}");
    let report = engine.append(0, "t", vec![series("m", "i0", &[(NOW + 2, 2.0)])]).await.unwrap();
    assert_eq!(report.accepted, 1, "an existing series still ingests");
}

// Goal: ENOSPC refuses writes with a retryable error, reads keep working, and writes succeed
// again once space returns; fsync EIO poisons the engine until restart.
#[tokio::test]
async fn disk_full_and_fsync_failure() {
    let fs = SimFs::new(6);
    let clock = Arc::new(ManualClock::new(NOW));
    let engine = open(&fs, &clock, config()).await;
    engine.append(0, "t", vec![series("m", "a", &[(NOW, 1.0)])]).await.unwrap();
    fs.set_faults(FaultConfig { capacity_bytes: Some(fs.used_bytes()), ..FaultConfig::default() });
    let error = engine.append(0, "t", vec![series("m", "a", &[(NOW + 1, 2.0)])]).await.unwrap_err();
    assert!(error.is_retryable(), "{error}");
    assert_eq!(dump(&engine, "t", "m").await.len(), 1, "reads work while the disk is full");
    fs.set_faults(FaultConfig::default());
    let report = engine.append(0, "t", vec![series("m", "a", &[(NOW + 1, 2.0)])]).await.unwrap();
    assert_eq!(report.accepted, 1, "the refused sample was not stored, so it is new now");

    fs.set_faults(FaultConfig { sync_eio_probability: 1.0, ..FaultConfig::default() });
    let error = engine.append(0, "t", vec![series("m", "a", &[(NOW + 2, 3.0)])]).await.unwrap_err();
    assert!(matches!(error, EngineError::Wal(WalError::Poisoned { .. })), "{error}");
    fs.set_faults(FaultConfig::default());
    let error = engine.append(0, "t", vec![series("m", "a", &[(NOW + 3, 4.0)])]).await.unwrap_err();
    assert!(matches!(error, EngineError::Wal(WalError::Poisoned { .. })), "poisoned until restart: {error}");
    assert!(engine.status().await.poisoned);
    assert_eq!(dump(&engine, "t", "m").await.len(), 2, "the failed sample is not visible");
    drop(engine);
    let engine = open(&fs, &clock, config()).await;
    let report = engine.append(0, "t", vec![series("m", "a", &[(NOW + 3, 4.0)])]).await.unwrap();
    assert_eq!(report.accepted, 1);
}

// Goal: retention deletes blocks older than the retention period; data in range stays.
#[tokio::test]
async fn retention_by_age() {
    let fs = SimFs::new(8);
    let clock = Arc::new(ManualClock::new(NOW));
    let config = EngineConfig { retention_ms: Some(60 * MINUTE), ..config() };
    let engine = open(&fs, &clock, config).await;
    for step in 0..480i64 {
        let t = NOW + step * 15_000;
        clock.set_wall_ms(t);
        engine.append(0, "t", vec![series("m", "a", &[(t, 1.0)])]).await.unwrap();
        if step % 40 == 39 {
            engine.maintain().await.unwrap();
        }
    }
    let got = dump(&engine, "t", "m").await;
    let oldest = got.first().unwrap().1;
    assert!(oldest >= NOW + 480 * 15_000 - 60 * MINUTE - 30 * MINUTE, "old blocks deleted (oldest {})", oldest - NOW);
    assert!(got.len() >= 240, "the last hour is kept: {}", got.len());
    assert!(!fs.exists(Path::new("shards/0/blocks")).await.unwrap() || engine.status().await.blocks < 8);
}

// Goal: the label-only select (series/labels/label-values endpoints) answers exactly the
// series `select` returns, while reading chunk metadata instead of samples where it can.
// Method: series with samples in blocks and the head, a gap, and a tombstone that empties one
// series' range; ranges that fall inside, across and between chunks; both selects compared.
#[tokio::test]
async fn select_labels_matches_select() {
    use sextant_storage::engine::SelectBudget;
    let fs = SimFs::new(11);
    let clock = Arc::new(ManualClock::new(NOW));
    let engine = open(&fs, &clock, config()).await;
    for step in 0..200i64 {
        let t = NOW + step * 15_000;
        clock.set_wall_ms(t);
        let mut writes = vec![series("m", "steady", &[(t, 1.0)])];
        // "early" stops after step 50, "late" starts at 150: a gap between their samples.
        if step <= 50 {
            writes.push(series("m", "early", &[(t, 1.0)]));
        }
        if step >= 150 {
            writes.push(series("m", "late", &[(t, 1.0)]));
        }
        if step < 100 {
            writes.push(series("m", "deleted_middle", &[(t, 1.0)]));
        }
        engine.append(0, "t", writes).await.unwrap();
        if step % 40 == 39 {
            engine.maintain().await.unwrap();
        }
    }
    engine.delete("t", &[Matcher::equal("instance", "deleted_middle")], NOW + 20 * 15_000, NOW + 60 * 15_000).await.unwrap();
    let cases: &[(i64, i64)] = &[
        (i64::MIN, i64::MAX),
        (NOW, NOW),
        (NOW + 30 * 15_000, NOW + 40 * 15_000),  // inside the tombstone
        (NOW + 55 * 15_000, NOW + 140 * 15_000), // between early and late
        (NOW + 100 * 15_000, NOW + 100 * 15_000 + 1),
        (NOW + 199 * 15_000, i64::MAX),
        (NOW + 300 * 15_000, i64::MAX), // after everything
        (i64::MIN, NOW - 1),            // before everything
    ];
    for &(from, to) in cases {
        let expected: Vec<Labels> = engine.select("t", &name_is("m"), from, to).await.unwrap().into_iter().map(|s| s.labels).collect();
        let mut budget = SelectBudget::new(usize::MAX, usize::MAX, usize::MAX);
        let got = engine.select_labels("t", &name_is("m"), from, to, &mut budget).await.unwrap();
        assert_eq!(got, expected, "range {from}..={to}");
    }
    // The series budget still applies.
    let mut budget = SelectBudget::new(2, usize::MAX, usize::MAX);
    assert!(engine.select_labels("t", &name_is("m"), i64::MIN, i64::MAX, &mut budget).await.is_err());
}
