//! openraft's `RaftStateMachine` over [`MetadataState`], with snapshots on the `FileSystem`.
//!
//! The state lives in memory; it is rebuilt at start-up from the last snapshot file and then
//! by openraft re-applying the committed log after it. A snapshot is the state serialized as
//! JSON (deterministic: `BTreeMap`s and log-ordered lists only), framed with its metadata and a
//! crc32 in `<dir>/snapshot` (docs/design/raft.md § Snapshot file). It is written to
//! `snapshot.tmp`, fsynced, renamed and the directory fsynced before openraft hears about it.

use std::fmt;
use std::io::{self, Cursor};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{ErrorSubject, ErrorVerb, OptionalSend, RaftSnapshotBuilder, StorageIOError};
use sextant_storage::fs::{replace_durably, FileSystem};

use crate::command::Response;
use crate::state::MetadataState;
use crate::types::{Entry, LogId, SnapshotMeta, StorageError, StoredMembership, TypeConfig};

pub const SNAPSHOT_MAGIC: [u8; 4] = *b"SXRS";
pub const SNAPSHOT_VERSION: u8 = 1;
/// magic, version, 3 reserved, meta length u32, data length u64.
pub const SNAPSHOT_HEADER_BYTES: usize = 20;
/// A snapshot larger than this is refused (on install and on load), never allocated blindly.
pub const SNAPSHOT_BYTES_MAX: u64 = 1024 * 1024 * 1024;
const SNAPSHOT_FILE: &str = "snapshot";

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{what}: corrupt at byte {offset}: {message}")]
    Corrupt {
        what: String,
        offset: u64,
        message: String,
    },
}

fn io_error(path: &Path, source: io::Error) -> SnapshotError {
    SnapshotError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A snapshot: its metadata and the serialized state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredSnapshot {
    pub meta: SnapshotMeta,
    pub data: Vec<u8>,
}

/// The snapshot file's bytes:
/// `│ "SXRS" <4b> │ version <1b> │ zeros <3b> │ meta len u32 LE <4b> │ data len u64 LE <8b> │ meta JSON │ data │ crc32 <4b> │`.
pub fn encode_snapshot_file(snapshot: &StoredSnapshot) -> Vec<u8> {
    let meta = serde_json::to_vec(&snapshot.meta).expect("snapshot meta always serializes");
    let mut out = Vec::with_capacity(SNAPSHOT_HEADER_BYTES + meta.len() + snapshot.data.len() + 4);
    out.extend_from_slice(&SNAPSHOT_MAGIC);
    out.push(SNAPSHOT_VERSION);
    out.extend_from_slice(&[0, 0, 0]);
    out.extend_from_slice(&(meta.len() as u32).to_le_bytes());
    out.extend_from_slice(&(snapshot.data.len() as u64).to_le_bytes());
    out.extend_from_slice(&meta);
    out.extend_from_slice(&snapshot.data);
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

pub fn decode_snapshot_file(what: &str, bytes: &[u8]) -> Result<StoredSnapshot, SnapshotError> {
    let bad = |offset: usize, message: String| SnapshotError::Corrupt {
        what: what.to_string(),
        offset: offset as u64,
        message,
    };
    if bytes.len() < SNAPSHOT_HEADER_BYTES + 4 {
        return Err(bad(
            0,
            format!("{} bytes is shorter than the frame", bytes.len()),
        ));
    }
    if bytes[0..4] != SNAPSHOT_MAGIC {
        return Err(bad(0, "bad magic (expected \"SXRS\")".into()));
    }
    let meta_len = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes")) as u64;
    let data_len = u64::from_le_bytes(bytes[12..20].try_into().expect("8 bytes"));
    let total = (SNAPSHOT_HEADER_BYTES as u64)
        .checked_add(meta_len)
        .and_then(|n| n.checked_add(data_len))
        .and_then(|n| n.checked_add(4));
    if total != Some(bytes.len() as u64) {
        return Err(bad(
            8,
            format!(
                "file is {} bytes, header says meta {meta_len} + data {data_len}",
                bytes.len()
            ),
        ));
    }
    let crc_at = bytes.len() - 4;
    let crc = u32::from_le_bytes(bytes[crc_at..].try_into().expect("4 bytes"));
    if crc != crc32fast::hash(&bytes[..crc_at]) {
        return Err(bad(crc_at, "crc32 mismatch".into()));
    }
    if bytes[4] != SNAPSHOT_VERSION {
        return Err(bad(4, format!("unknown version {}", bytes[4])));
    }
    let meta_end = SNAPSHOT_HEADER_BYTES + meta_len as usize;
    let meta: SnapshotMeta = serde_json::from_slice(&bytes[SNAPSHOT_HEADER_BYTES..meta_end])
        .map_err(|e| bad(SNAPSHOT_HEADER_BYTES, format!("meta: {e}")))?;
    Ok(StoredSnapshot {
        meta,
        data: bytes[meta_end..crc_at].to_vec(),
    })
}

/// Parses snapshot data (the serialized state), checking it against the metadata.
pub fn decode_state(
    what: &str,
    meta: &SnapshotMeta,
    data: &[u8],
) -> Result<MetadataState, SnapshotError> {
    let bad = |message: String| SnapshotError::Corrupt {
        what: what.to_string(),
        offset: 0,
        message,
    };
    let state: MetadataState =
        serde_json::from_slice(data).map_err(|e| bad(format!("state: {e}")))?;
    if state.last_applied != meta.last_log_id {
        return Err(bad(format!(
            "state is at {:?} but the meta says {:?}",
            state.last_applied, meta.last_log_id
        )));
    }
    if state.membership != meta.last_membership {
        return Err(bad("state and meta disagree on membership".into()));
    }
    Ok(state)
}

/// The state shared by the state machine and its snapshot builders.
struct Shared {
    state: MetadataState,
    current: Option<StoredSnapshot>,
}

/// The metadata state machine of one node.
#[derive(Clone)]
pub struct StateMachineStore {
    fs: Arc<dyn FileSystem>,
    dir: PathBuf,
    shared: Arc<Mutex<Shared>>,
}

impl fmt::Debug for StateMachineStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StateMachineStore")
            .field("dir", &self.dir)
            .finish()
    }
}

fn storage_error(verb: ErrorVerb, error: SnapshotError) -> StorageError {
    StorageIOError::new(
        ErrorSubject::Snapshot(None),
        verb,
        openraft::AnyError::new(&error),
    )
    .into()
}

/// The snapshot id: a function of what it contains, so every node names the same state alike.
fn snapshot_id(last: Option<&LogId>) -> String {
    match last {
        Some(id) => format!(
            "{}-{}-{}",
            id.leader_id.term, id.leader_id.node_id, id.index
        ),
        None => "empty".to_string(),
    }
}

impl StateMachineStore {
    /// Opens the state machine in `dir`, restoring the last snapshot if there is one.
    pub async fn open(
        fs: Arc<dyn FileSystem>,
        dir: impl Into<PathBuf>,
    ) -> Result<StateMachineStore, SnapshotError> {
        let dir = dir.into();
        crate::log_store::create_dir_durably(fs.as_ref(), &dir)
            .await
            .map_err(|(path, e)| io_error(&path, e))?;
        let tmp = dir.join(format!("{SNAPSHOT_FILE}.tmp"));
        if fs.exists(&tmp).await.map_err(|e| io_error(&tmp, e))? {
            fs.remove_file(&tmp).await.map_err(|e| io_error(&tmp, e))?;
            fs.sync_dir(&dir).await.map_err(|e| io_error(&dir, e))?;
        }
        let path = dir.join(SNAPSHOT_FILE);
        let mut shared = Shared {
            state: MetadataState::default(),
            current: None,
        };
        if fs.exists(&path).await.map_err(|e| io_error(&path, e))? {
            let len = fs.file_len(&path).await.map_err(|e| io_error(&path, e))?;
            if len > SNAPSHOT_BYTES_MAX {
                return Err(SnapshotError::Corrupt {
                    what: path.display().to_string(),
                    offset: 0,
                    message: format!("{len} bytes, more than {SNAPSHOT_BYTES_MAX}"),
                });
            }
            let bytes = fs.read(&path).await.map_err(|e| io_error(&path, e))?;
            let what = path.display().to_string();
            let snapshot = decode_snapshot_file(&what, &bytes)?;
            shared.state = decode_state(&what, &snapshot.meta, &snapshot.data)?;
            shared.current = Some(snapshot);
        }
        Ok(StateMachineStore {
            fs,
            dir,
            shared: Arc::new(Mutex::new(shared)),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Shared> {
        self.shared
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A copy of the applied state (what `--consistency local` reads).
    pub fn state(&self) -> MetadataState {
        self.lock().state.clone()
    }

    /// Reads the applied state in place (the hot paths project what they need instead of
    /// copying dashboards and the audit trail).
    pub fn with_state<T>(&self, read: impl FnOnce(&MetadataState) -> T) -> T {
        read(&self.lock().state)
    }

    /// Writes a snapshot file durably: temp file, fsync, rename, directory fsync.
    async fn persist(&self, snapshot: &StoredSnapshot) -> Result<(), SnapshotError> {
        let tmp = self.dir.join(format!("{SNAPSHOT_FILE}.tmp"));
        let path = self.dir.join(SNAPSHOT_FILE);
        let bytes = encode_snapshot_file(snapshot);
        replace_durably(self.fs.as_ref(), &path, &tmp, &bytes)
            .await
            .map_err(|e| io_error(&e.path, e.source))
    }

    /// Serializes the current state into a snapshot (no I/O).
    pub fn snapshot_of_state(&self) -> StoredSnapshot {
        let shared = self.lock();
        let data = serde_json::to_vec(&shared.state).expect("the metadata state always serializes");
        let meta = SnapshotMeta {
            last_log_id: shared.state.last_applied,
            last_membership: shared.state.membership.clone(),
            snapshot_id: snapshot_id(shared.state.last_applied.as_ref()),
        };
        StoredSnapshot { meta, data }
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachineStore {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let snapshot = self.snapshot_of_state();
        // BUGGIFY: a slow snapshot — entries keep being applied after the state was captured,
        // so the snapshot persisted below is behind the applied state when it lands.
        if sextant_core::buggify!("raft.snapshot.slow_build") {
            const SLOW_SNAPSHOT_MS: u64 = 300;
            tokio::time::sleep(std::time::Duration::from_millis(SLOW_SNAPSHOT_MS)).await;
        }
        self.persist(&snapshot)
            .await
            .map_err(|e| storage_error(ErrorVerb::Write, e))?;
        self.lock().current = Some(snapshot.clone());
        Ok(Snapshot {
            meta: snapshot.meta,
            snapshot: Box::new(Cursor::new(snapshot.data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = StateMachineStore;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        let shared = self.lock();
        Ok((shared.state.last_applied, shared.state.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Response>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut shared = self.lock();
        Ok(entries
            .into_iter()
            .map(|entry| shared.state.apply(&entry))
            .collect())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let data = snapshot.into_inner();
        if data.len() as u64 > SNAPSHOT_BYTES_MAX {
            let error = SnapshotError::Corrupt {
                what: "received snapshot".into(),
                offset: 0,
                message: format!("{} bytes, more than {SNAPSHOT_BYTES_MAX}", data.len()),
            };
            return Err(storage_error(ErrorVerb::Read, error));
        }
        let state = decode_state("received snapshot", meta, &data)
            .map_err(|e| storage_error(ErrorVerb::Read, e))?;
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data,
        };
        // Durable before the state changes: a restart must come back at least this far.
        self.persist(&stored)
            .await
            .map_err(|e| storage_error(ErrorVerb::Write, e))?;
        let mut shared = self.lock();
        shared.state = state;
        shared.current = Some(stored);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        let shared = self.lock();
        Ok(shared.current.as_ref().map(|stored| Snapshot {
            meta: stored.meta.clone(),
            snapshot: Box::new(Cursor::new(stored.data.clone())),
        }))
    }
}
