//! Oracle 5, WAL recovery: what the WAL replays after a power cut is a prefix of what was
//! appended, and holds everything that was fsynced.
//!
//! Method: when a node is killed, before its disk loses power, copy the WAL's current bytes
//! (everything written) and its durable bytes into fresh disks; after the power cut copy the
//! survivors. Replay each copy with the storage crate's own `Wal::open` (the node's replay) and
//! compare, per shard: every replayed record is byte-for-byte (Debug-equal, so NaN values
//! compare) the record appended with that (shard, seq); the highest replayed seq is at least
//! the highest fsynced one and at most the highest appended one. Copies are used so the
//! replay's repairs never touch the node's own disk.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sextant_storage::fs::sim::SimFs;
use sextant_storage::fs::FileSystem;
use sextant_storage::wal::{Wal, WalConfig, WalError};

/// (shard, seq) → the record's Debug text.
type Records = BTreeMap<(u32, u64), String>;

/// Every file under `wal/` with its current (not necessarily durable) bytes.
pub async fn current_wal_files(fs: &SimFs) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut pending = vec![PathBuf::from("wal")];
    while let Some(dir) = pending.pop() {
        let Ok(names) = fs.read_dir(&dir).await else { continue };
        for name in names {
            let path = dir.join(name);
            if fs.is_dir(&path).await.unwrap_or(false) {
                pending.push(path);
            } else if let Ok(bytes) = fs.read(&path).await {
                out.insert(path, bytes);
            }
        }
    }
    out
}

/// The durable files under `wal/`.
pub fn durable_wal_files(fs: &SimFs) -> BTreeMap<PathBuf, Vec<u8>> {
    fs.durable_snapshot().into_iter().filter(|(path, _)| path.starts_with("wal")).collect()
}

/// Replays a copy of `files` with the WAL's own replay.
pub async fn replay(files: &BTreeMap<PathBuf, Vec<u8>>, config: &WalConfig) -> Result<Records, String> {
    let disk = SimFs::new(0);
    let io = |e: std::io::Error| e.to_string();
    for (path, bytes) in files {
        let parent = path.parent().unwrap_or(Path::new(""));
        disk.create_dir_all(parent).await.map_err(io)?;
        let mut file = disk.create(path).await.map_err(io)?;
        file.write_all(bytes).await.map_err(io)?;
        file.sync().await.map_err(io)?;
    }
    let fs: Arc<dyn FileSystem> = Arc::new(disk);
    if !fs.exists(Path::new("wal")).await.map_err(io)? {
        return Ok(Records::new());
    }
    let mut replay = Wal::open(fs, PathBuf::from("wal"), config.clone()).await.map_err(|e| e.to_string())?;
    let mut records = Records::new();
    while let Some(item) = replay.next().await {
        match item {
            Ok(record) => {
                records.insert((record.shard, record.seq), format!("{:?}", record.body));
            }
            Err(WalError::Decode { .. }) => {}
            Err(error) => return Err(error.to_string()),
        }
    }
    Ok(records)
}

fn max_seq(records: &Records) -> BTreeMap<u32, u64> {
    let mut out = BTreeMap::new();
    for &(shard, seq) in records.keys() {
        let entry = out.entry(shard).or_insert(0);
        *entry = seq.max(*entry);
    }
    out
}

/// The oracle. `appended`: replay of everything written; `fsynced`: of the durable bytes
/// before the cut; `recovered`: of what survived it. Returns evidence of each violation.
pub fn check(node: usize, appended: &Records, fsynced: &Records, recovered: &Records) -> Vec<String> {
    let mut out = Vec::new();
    for (key, body) in recovered {
        if let Some(original) = appended.get(key) {
            if original != body {
                out.push(format!(
                    "node {node}: record (shard {}, seq {}) replays as {body:.120} but was appended as {original:.120}",
                    key.0, key.1
                ));
            }
        }
    }
    let (high_appended, high_fsynced, high_recovered) = (max_seq(appended), max_seq(fsynced), max_seq(recovered));
    for (shard, fsynced_seq) in &high_fsynced {
        let got = high_recovered.get(shard).copied().unwrap_or(0);
        if got < *fsynced_seq {
            out.push(format!(
                "node {node}: shard {shard} replays up to seq {got} after the power cut, but seq {fsynced_seq} had been fsynced"
            ));
        }
    }
    for (shard, recovered_seq) in &high_recovered {
        let appended_seq = high_appended.get(shard).copied().unwrap_or(0);
        if *recovered_seq > appended_seq {
            out.push(format!("node {node}: shard {shard} replays seq {recovered_seq}, beyond the last appended seq {appended_seq}"));
        }
    }
    out.truncate(5);
    out
}
