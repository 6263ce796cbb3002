//! WAL on the real filesystem (normal build only: RealFs does not exist under madsim).
#![cfg(not(madsim))]

use std::path::PathBuf;
use std::sync::Arc;

use sextant_storage::fs::real::RealFs;
use sextant_storage::fs::sim::SimFs;
use sextant_storage::fs::FileSystem;
use sextant_storage::wal::{RecordBody, SampleEntry, Wal, WalConfig, WalRecord};

fn temp_root(name: &str) -> PathBuf {
    let root = std::env::temp_dir().join(format!("sextant-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).unwrap();
    root
}

fn samples(i: u64, count: u64) -> RecordBody {
    RecordBody::Samples((0..count).map(|k| SampleEntry { series_ref: k, t: (i * 15_000) as i64, v: (i + k) as f64 }).collect())
}

async fn replay_all(fs: Arc<dyn FileSystem>, config: WalConfig) -> (Vec<WalRecord>, Wal) {
    let mut replay = Wal::open(fs, PathBuf::from("wal"), config).await.unwrap();
    let mut out = Vec::new();
    while let Some(record) = replay.next().await {
        out.push(record.unwrap());
    }
    (out, replay.finish().await.unwrap())
}

// Goal: the WAL works on a real disk: append with group commit, checkpoint, a torn tail cut on
// reopen, sequences continue. Method: a temp dir, 2,000 records over small segments, a
// checkpoint that keeps the even sequence numbers, garbage appended to the last segment.
#[tokio::test]
async fn real_disk_smoke() {
    let root = temp_root("wal-smoke");
    let fs: Arc<dyn FileSystem> = Arc::new(RealFs::new(&root));
    let config = WalConfig { segment_bytes: 4 * 32 * 1024, ..WalConfig::default() };
    let (records, wal) = replay_all(fs.clone(), config.clone()).await;
    assert!(records.is_empty());
    let tickets: Vec<_> = (0..2000).map(|i| wal.submit((i % 4) as u32, samples(i, 8)).unwrap()).collect();
    for ticket in tickets {
        ticket.durable().await.unwrap();
    }
    assert!(wal.stats().fsyncs < 2000);
    let stats = wal.checkpoint(|r| (r.seq % 2 == 0).then_some(r)).await.unwrap();
    assert_eq!(stats.records_kept, 1000);
    wal.submit(0, samples(1, 1)).unwrap().durable().await.unwrap();
    wal.close().await.unwrap();
    // Garbage at the end of the last segment, as a torn write leaves it.
    let mut last = std::fs::read_dir(root.join("wal")).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).filter(|n| n.len() == 8).collect::<Vec<_>>();
    last.sort();
    let path = root.join("wal").join(last.last().unwrap());
    let mut bytes = std::fs::read(&path).unwrap();
    bytes.extend([1, 9, 9, 9, 9, 9, 9, 9, 9, 9]);
    std::fs::write(&path, bytes).unwrap();

    let mut replay = Wal::open(fs.clone(), PathBuf::from("wal"), config.clone()).await.unwrap();
    let mut got = Vec::new();
    while let Some(record) = replay.next().await {
        got.push(record.unwrap());
    }
    assert!(replay.report().truncated.is_some());
    let wal = replay.finish().await.unwrap();
    assert_eq!(got.len(), 1001);
    assert!(got[..1000].iter().all(|r| r.seq % 2 == 0));
    assert_eq!(wal.next_seq(0), 502);
    wal.close().await.unwrap();
    std::fs::remove_dir_all(&root).unwrap();
}

// Goal: measure replay speed on RealFs and SimFs (prints; no thresholds — a benchmark measures,
// a test asserts). Run: cargo test -p sextant-storage --test wal_realfs -- --ignored --nocapture
#[tokio::test]
#[ignore]
async fn measure_replay_speed() {
    let config = WalConfig::default();
    let records = 100_000u64;
    for (name, fs) in [
        ("RealFs", Arc::new(RealFs::new(temp_root("wal-speed"))) as Arc<dyn FileSystem>),
        ("SimFs", Arc::new(SimFs::new(1)) as Arc<dyn FileSystem>),
    ] {
        let (_, wal) = replay_all(fs.clone(), config.clone()).await;
        let started = std::time::Instant::now();
        for chunk in 0..(records / 1000) {
            let tickets: Vec<_> = (0..1000).map(|i| wal.submit((i % 8) as u32, samples(chunk * 1000 + i, 10)).unwrap()).collect();
            for ticket in tickets {
                ticket.durable().await.unwrap();
            }
        }
        let append_s = started.elapsed().as_secs_f64();
        let bytes = wal.stats().bytes_written;
        wal.close().await.unwrap();
        let started = std::time::Instant::now();
        let (got, wal) = replay_all(fs.clone(), config.clone()).await;
        let replay_s = started.elapsed().as_secs_f64();
        assert_eq!(got.len() as u64, records);
        println!(
            "{name}: {records} records of 10 samples, {:.1} MB: append {:.0} records/s; replay {:.0} records/s, {:.0} MB/s",
            bytes as f64 / 1e6,
            records as f64 / append_s,
            records as f64 / replay_s,
            bytes as f64 / 1e6 / replay_s
        );
        wal.close().await.unwrap();
    }
}
