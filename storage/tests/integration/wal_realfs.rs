//! WAL on the real filesystem (normal build only: RealFs does not exist under madsim).
#![cfg(not(madsim))]

use std::path::PathBuf;
use std::sync::Arc;

use sextant_storage::fs::real::RealFs;
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
