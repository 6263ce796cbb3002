//! Goal: whatever the log store reported durable (a vote, a committed id, appended entries, a
//! truncation, a purge) survives crashes and disk damage, and recovery invents nothing: every
//! entry it yields is one that was appended, at its index.
//! Method: a table of cases on `SimFs` — case name → how the disk is damaged → what must
//! survive — after Prometheus's `TestWALRepair_ReadingError`. Each case writes through the
//! store's API, damages the disk (crash in DropUnsynced or Torn mode, flipped bytes, garbage,
//! failed fsyncs), reopens, and checks.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use openraft::{CommittedLeaderId, EntryPayload, LeaderId};
use sextant_raft::command::{Action, Command};
use sextant_raft::log_store::format::segment_name;
use sextant_raft::types::{Entry, LogId, Vote};
use sextant_raft::{LogStore, LogStoreConfig, LogStoreError};
use sextant_storage::fs::sim::{CrashMode, FaultConfig, SimFs};
use sextant_storage::fs::FileSystem;

fn log_id(term: u64, index: u64) -> LogId {
    LogId::new(CommittedLeaderId::new(term, 1), index)
}

/// Entry `index` of term `term`: a dashboard put whose JSON names both, so a mix-up shows.
fn entry(term: u64, index: u64) -> Entry {
    let command = Command {
        who: "test".into(),
        at_ms: index as i64,
        action: Action::PutDashboard {
            uid: format!("d{index}"),
            title: "t".into(),
            json: format!("{{\"term\":{term}}}"),
        },
    };
    Entry {
        log_id: log_id(term, index),
        payload: EntryPayload::Normal(command),
    }
}

fn vote(term: u64) -> Vote {
    Vote {
        leader_id: LeaderId { term, node_id: 2 },
        committed: false,
    }
}

/// Small segments (about 8 entries of ~57 bytes each) so cases cross segment boundaries.
fn config() -> LogStoreConfig {
    LogStoreConfig {
        segment_bytes_max: 500,
        entry_bytes_max: 300,
    }
}

async fn open(fs: &SimFs) -> Result<LogStore, LogStoreError> {
    LogStore::open(
        Arc::new(fs.clone()) as Arc<dyn FileSystem>,
        PathBuf::from("raft"),
        config(),
    )
    .await
}

fn segment_path(first: u64) -> PathBuf {
    Path::new("raft/log").join(segment_name(first))
}

/// The segments on disk, by first index.
async fn segments(fs: &SimFs) -> Vec<u64> {
    let names = fs.read_dir(Path::new("raft/log")).await.unwrap();
    names
        .iter()
        .filter_map(|n| sextant_raft::log_store::format::parse_segment_name(n))
        .collect()
}

/// How the disk is damaged after entries 1..=20 (term 1) were appended and acknowledged, vote
/// term 3 and committed 20 saved.
#[derive(Clone, Debug)]
enum Damage {
    /// Power cut: unsynced bytes lost.
    CrashDropUnsynced,
    /// Power cut with torn unsynced tails, with this SimFs seed.
    CrashTorn(u64),
    /// Appends 21..=25 with every fsync failing (EIO, never acknowledged), then a torn crash.
    FailedAppendThenCrash,
    /// Cuts this many bytes off the end of the last segment, whose last record is committed
    /// entry 20 (the disk lost acknowledged bytes).
    CutTail(u64),
    /// Appends entry 21 (never committed), then cuts this many bytes off it: the shape a torn
    /// write of an unsynced last record leaves.
    CutUncommittedTail(u64),
    /// Appends these bytes to the last segment.
    AppendGarbage(Vec<u8>),
    /// Flips a byte this far into the last segment (rot inside a record with records after it).
    FlipInLastSegment(usize),
    /// Flips a byte in the first segment (a sealed one).
    FlipInFirstSegment(usize),
    /// Flips a byte of the vote file.
    FlipVote,
    /// Removes the committed file's neighbour entries: cuts the log to 10 entries by hand
    /// (the disk lost acknowledged entries while the committed file says 20).
    LoseAcknowledgedTail,
    /// A leftover `vote.tmp` with garbage, as a crash during a vote save leaves.
    VoteTmpLeftover,
    /// An empty segment with a half-written header after the last one (a crash while rolling).
    HalfCreatedSegment,
    /// Truncate from 15 (committed lowered to 14 first), append 15..=17 of term 2, then a torn crash.
    TruncateThenAppend,
    /// Purge up to 12, then a torn crash.
    Purge,
    /// The vote save fails with EIO (the old vote stays or the new one lands; nothing else).
    FailedVoteSave,
}

/// What must hold after reopening.
#[derive(Clone, Debug)]
enum Expect {
    /// Exactly these entries (term, index), this vote term, this purged index.
    Log {
        entries: Vec<(u64, u64)>,
        vote_term: u64,
        purged: Option<u64>,
    },
    /// At least entries 1..=20 of term 1; any entries after them are ones that were appended.
    AtLeastAcknowledged,
    /// Open fails with a `Corrupt` error whose message contains this.
    Corrupt(&'static str),
    /// Entries 1..=20 survive; the vote is term 3 or term 4, nothing else.
    VoteOldOrNew,
}

fn term1(range: std::ops::RangeInclusive<u64>) -> Vec<(u64, u64)> {
    range.map(|i| (1, i)).collect()
}

async fn last_segment(fs: &SimFs) -> PathBuf {
    segment_path(*segments(fs).await.last().expect("a segment"))
}

async fn apply_damage(fs: &SimFs, store: LogStore, damage: &Damage) {
    let mut store = store;
    match damage {
        Damage::CrashDropUnsynced => {
            drop(store);
            fs.set_faults(FaultConfig {
                crash_mode: CrashMode::DropUnsynced,
                ..FaultConfig::default()
            });
            fs.crash();
        }
        Damage::CrashTorn(_) => {
            drop(store);
            fs.crash();
        }
        Damage::FailedAppendThenCrash => {
            fs.set_faults(FaultConfig {
                sync_eio_probability: 1.0,
                ..FaultConfig::default()
            });
            let result = store
                .append_entries((21..=25).map(|i| entry(1, i)).collect())
                .await;
            assert!(
                result.is_err(),
                "an append whose fsync fails is not acknowledged"
            );
            let again = store.append_entries(vec![entry(1, 26)]).await;
            assert!(
                matches!(again, Err(LogStoreError::Poisoned(_))),
                "a failed fsync poisons the store: {again:?}"
            );
            drop(store);
            fs.set_faults(FaultConfig::default());
            fs.crash();
        }
        Damage::CutTail(bytes) | Damage::CutUncommittedTail(bytes) => {
            if matches!(damage, Damage::CutUncommittedTail(_)) {
                store.append_entries(vec![entry(1, 21)]).await.unwrap();
            }
            drop(store);
            let path = last_segment(fs).await;
            let len = fs.file_len(&path).await.unwrap();
            fs.truncate(&path, len - bytes).await.unwrap();
        }
        Damage::AppendGarbage(garbage) => {
            drop(store);
            let path = last_segment(fs).await;
            let mut file = fs.open_append(&path).await.unwrap();
            file.write_all(garbage).await.unwrap();
            file.sync().await.unwrap();
        }
        Damage::FlipInLastSegment(offset) | Damage::FlipInFirstSegment(offset) => {
            drop(store);
            let path = match damage {
                Damage::FlipInLastSegment(_) => last_segment(fs).await,
                _ => segment_path(segments(fs).await[0]),
            };
            let bytes = fs.read(&path).await.unwrap();
            fs.corrupt(&path, *offset, &[bytes[*offset] ^ 0x40])
                .unwrap();
        }
        Damage::FlipVote => {
            drop(store);
            let bytes = fs.read(Path::new("raft/vote")).await.unwrap();
            fs.corrupt(Path::new("raft/vote"), 10, &[bytes[10] ^ 1])
                .unwrap();
        }
        Damage::LoseAcknowledgedTail => {
            // Entry 11's record starts where entries 1..=10 end: truncate there by hand.
            drop(store);
            let reopened = open(fs).await.unwrap();
            let segments_now = segments(fs).await;
            drop(reopened);
            let first = segments_now
                .iter()
                .copied()
                .filter(|first| *first <= 11)
                .max()
                .unwrap();
            for later in segments_now.iter().filter(|s| **s > first) {
                fs.remove_file(&segment_path(*later)).await.unwrap();
            }
            if first == 11 {
                fs.remove_file(&segment_path(first)).await.unwrap();
            } else {
                // Cut the whole segment after its header: it held only entries <= 10 up to 11.
                let bytes = fs.read(&segment_path(first)).await.unwrap();
                let _ = bytes;
                fs.truncate(&segment_path(first), 20).await.unwrap();
            }
        }
        Damage::VoteTmpLeftover => {
            drop(store);
            let mut file = fs.create(Path::new("raft/vote.tmp")).await.unwrap();
            file.write_all(b"half a vote").await.unwrap();
            file.sync().await.unwrap();
            fs.sync_dir(Path::new("raft")).await.unwrap();
        }
        Damage::HalfCreatedSegment => {
            drop(store);
            let mut file = fs.create(&segment_path(21)).await.unwrap();
            file.write_all(b"SXRL\x01").await.unwrap();
            file.sync().await.unwrap();
            fs.sync_dir(Path::new("raft/log")).await.unwrap();
        }
        Damage::TruncateThenAppend => {
            let error = store.truncate_from(20).await.unwrap_err();
            assert!(
                matches!(
                    error,
                    LogStoreError::TruncateCommitted {
                        index: 20,
                        committed: 20
                    }
                ),
                "{error:?}"
            );
            // Only uncommitted entries are ever truncated: pretend 15..=20 were never committed
            // (the committed id may go backwards only in this test).
            store
                .save_committed_durably(Some(log_id(1, 14)))
                .await
                .unwrap();
            store.truncate_from(15).await.unwrap();
            store
                .append_entries((15..=17).map(|i| entry(2, i)).collect())
                .await
                .unwrap();
            drop(store);
            fs.crash();
        }
        Damage::Purge => {
            store.purge_to(log_id(1, 12)).await.unwrap();
            drop(store);
            fs.crash();
        }
        Damage::FailedVoteSave => {
            fs.set_faults(FaultConfig {
                sync_eio_probability: 1.0,
                sync_dir_eio_probability: 1.0,
                ..FaultConfig::default()
            });
            assert!(store.save_vote_durably(&vote(4)).await.is_err());
            drop(store);
            fs.set_faults(FaultConfig::default());
            fs.crash();
        }
    }
}

async fn check(name: &str, damage: Damage, expect: Expect) {
    let seed = match damage {
        Damage::CrashTorn(seed) => seed,
        _ => 7,
    };
    let fs = SimFs::new(seed);
    let mut store = open(&fs).await.unwrap();
    // Appended in batches of 1, 3 and 16 so that batches and segment rolls interleave.
    store.append_entries(vec![entry(1, 1)]).await.unwrap();
    store
        .append_entries((2..=4).map(|i| entry(1, i)).collect())
        .await
        .unwrap();
    store
        .append_entries((5..=20).map(|i| entry(1, i)).collect())
        .await
        .unwrap();
    store.save_vote_durably(&vote(3)).await.unwrap();
    store
        .save_committed_durably(Some(log_id(1, 20)))
        .await
        .unwrap();
    let listed = segments(&fs).await;
    assert!(
        listed.len() >= 3,
        "{name}: the setup crosses segments: {listed:?}"
    );
    apply_damage(&fs, store, &damage).await;

    let reopened = open(&fs).await;
    match expect {
        Expect::Corrupt(needle) => match reopened {
            Err(LogStoreError::Corrupt { what, .. }) => {
                assert!(
                    what.contains(needle),
                    "{name}: corrupt error {what:?} should mention {needle:?}"
                )
            }
            other => panic!("{name}: expected a Corrupt error, got {other:?}"),
        },
        Expect::Log {
            entries,
            vote_term,
            purged,
        } => {
            let store = reopened.unwrap_or_else(|e| panic!("{name}: open failed: {e}"));
            let got: Vec<(u64, u64)> = store
                .entries(..)
                .iter()
                .map(|e| (e.log_id.leader_id.term, e.log_id.index))
                .collect();
            assert_eq!(got, entries, "{name}: entries");
            for e in store.entries(..) {
                assert_eq!(
                    e,
                    entry(e.log_id.leader_id.term, e.log_id.index),
                    "{name}: entry contents"
                );
            }
            assert_eq!(store.vote(), Some(vote(vote_term)), "{name}: vote");
            assert_eq!(store.purged().map(|id| id.index), purged, "{name}: purged");
        }
        Expect::AtLeastAcknowledged | Expect::VoteOldOrNew => {
            let store = reopened.unwrap_or_else(|e| panic!("{name}: open failed: {e}"));
            let got = store.entries(..);
            assert!(
                got.len() >= 20,
                "{name}: only {} entries survived",
                got.len()
            );
            for (position, e) in got.iter().enumerate() {
                assert_eq!(
                    e.log_id.index,
                    position as u64 + 1,
                    "{name}: indexes are dense from 1"
                );
                assert_eq!(
                    *e,
                    entry(1, e.log_id.index),
                    "{name}: entry {} is one that was appended",
                    e.log_id.index
                );
            }
            assert!(
                got.len() <= 25,
                "{name}: {} entries, more than were ever appended",
                got.len()
            );
            if matches!(expect, Expect::VoteOldOrNew) {
                let term = store.vote().map(|v| v.leader_id.term);
                assert!(
                    term == Some(3) || term == Some(4),
                    "{name}: vote term {term:?}"
                );
            } else {
                assert_eq!(store.vote(), Some(vote(3)), "{name}: vote");
            }
            assert_eq!(store.committed(), Some(log_id(1, 20)), "{name}: committed");
            // The store keeps working after recovery: the next append lands after the survivors.
            let mut store = store;
            let next = got.len() as u64 + 1;
            store.append_entries(vec![entry(1, next)]).await.unwrap();
            drop(store);
            fs.crash();
            let again = open(&fs).await.unwrap();
            assert_eq!(
                again.entries(next..).len(),
                1,
                "{name}: appending after recovery works and lasts"
            );
        }
    }
}

#[tokio::test]
async fn crash_and_damage_table() {
    let all = || Expect::Log {
        entries: term1(1..=20),
        vote_term: 3,
        purged: None,
    };
    let cases: Vec<(&str, Damage, Expect)> = vec![
        (
            "power cut, unsynced bytes dropped",
            Damage::CrashDropUnsynced,
            all(),
        ),
        ("power cut, torn (seed 1)", Damage::CrashTorn(1), all()),
        ("power cut, torn (seed 2)", Damage::CrashTorn(2), all()),
        (
            "failed fsync poisons; unacknowledged entries may or may not survive",
            Damage::FailedAppendThenCrash,
            Expect::AtLeastAcknowledged,
        ),
        (
            "torn last record (3 bytes cut)",
            Damage::CutUncommittedTail(3),
            all(),
        ),
        (
            "torn last record (header and 1 byte left)",
            Damage::CutUncommittedTail(100),
            all(),
        ),
        (
            "committed last record cut",
            Damage::CutTail(3),
            Expect::Corrupt("acknowledged entries are missing"),
        ),
        (
            "garbage after the last record",
            Damage::AppendGarbage(vec![0xde, 0xad, 0xbe, 0xef, 0x01]),
            all(),
        ),
        (
            "zeros after the last record",
            Damage::AppendGarbage(vec![0; 100]),
            all(),
        ),
        (
            "rot in a record of the last segment, records after it",
            Damage::FlipInLastSegment(30),
            Expect::Corrupt("intact record after it"),
        ),
        (
            "rot in a sealed segment",
            Damage::FlipInFirstSegment(40),
            Expect::Corrupt("intact records after it"),
        ),
        (
            "rot in the first segment's header",
            Damage::FlipInFirstSegment(9),
            Expect::Corrupt("header"),
        ),
        (
            "rot in the vote file",
            Damage::FlipVote,
            Expect::Corrupt("crc32"),
        ),
        (
            "acknowledged entries lost behind the committed id",
            Damage::LoseAcknowledgedTail,
            Expect::Corrupt("acknowledged entries are missing"),
        ),
        ("leftover vote.tmp", Damage::VoteTmpLeftover, all()),
        (
            "half-created segment after the last",
            Damage::HalfCreatedSegment,
            all(),
        ),
        (
            "truncate then append survive a crash",
            Damage::TruncateThenAppend,
            Expect::Log {
                entries: term1(1..=14)
                    .into_iter()
                    .chain((15..=17).map(|i| (2, i)))
                    .collect(),
                vote_term: 3,
                purged: None,
            },
        ),
        (
            "purge survives a crash",
            Damage::Purge,
            Expect::Log {
                entries: term1(13..=20),
                vote_term: 3,
                purged: Some(12),
            },
        ),
        (
            "failed vote save",
            Damage::FailedVoteSave,
            Expect::VoteOldOrNew,
        ),
    ];
    for (name, damage, expect) in cases {
        check(name, damage, expect).await;
    }
}

// Goal: under torn crashes at random points, every acknowledged entry and vote survives and
// nothing is invented. Method: 40 seeds; each appends batches, crashing (Torn) after a random
// number of them, reopening and continuing, three times per seed.
#[tokio::test]
async fn torn_crashes_keep_every_acknowledged_entry() {
    for seed in 0..40u64 {
        let fs = SimFs::new(seed);
        let mut acknowledged = 0u64;
        let mut vote_term = 0u64;
        for round in 0..3u64 {
            let mut store = open(&fs)
                .await
                .unwrap_or_else(|e| panic!("seed {seed} round {round}: {e}"));
            let entries = store.entries(..);
            assert!(
                entries.len() as u64 >= acknowledged,
                "seed {seed}: lost acknowledged entries"
            );
            for (position, e) in entries.iter().enumerate() {
                assert_eq!(
                    *e,
                    entry(1, position as u64 + 1),
                    "seed {seed}: invented or misplaced entry"
                );
            }
            if vote_term > 0 {
                assert_eq!(store.vote(), Some(vote(vote_term)), "seed {seed}: vote");
            }
            let mut next = entries.len() as u64 + 1;
            let batches = (seed + round) % 5 + 1;
            for batch in 0..batches {
                let count = (seed * 7 + batch * 3) % 6 + 1;
                store
                    .append_entries((next..next + count).map(|i| entry(1, i)).collect())
                    .await
                    .unwrap();
                next += count;
                acknowledged = next - 1;
            }
            vote_term += 1;
            store.save_vote_durably(&vote(vote_term)).await.unwrap();
            drop(store);
            fs.crash();
        }
    }
}

// Goal: an entry larger than entry_bytes_max is refused with a typed error and does not poison
// the store; an append that goes backwards is refused too.
#[tokio::test]
async fn refusals_are_typed_and_harmless() {
    let fs = SimFs::new(3);
    let mut store = open(&fs).await.unwrap();
    store.append_entries(vec![entry(1, 1)]).await.unwrap();
    let mut big = entry(1, 2);
    if let EntryPayload::Normal(command) = &mut big.payload {
        command.who = "x".repeat(400);
    }
    let error = store.append_entries(vec![big]).await.unwrap_err();
    assert!(
        matches!(error, LogStoreError::EntryTooLarge { index: 2, .. }),
        "{error:?}"
    );
    let error = store.append_entries(vec![entry(1, 1)]).await.unwrap_err();
    assert!(
        matches!(error, LogStoreError::NotContiguous { index: 1, last: 1 }),
        "{error:?}"
    );
    store.append_entries(vec![entry(1, 2)]).await.unwrap();
    assert_eq!(store.entries(..).len(), 2);
    let error = LogStore::open(
        Arc::new(fs.clone()),
        "other",
        LogStoreConfig {
            segment_bytes_max: 100,
            entry_bytes_max: 300,
        },
    )
    .await
    .unwrap_err();
    assert!(matches!(error, LogStoreError::Config(_)), "{error:?}");
}
