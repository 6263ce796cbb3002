//! Goal: the log store and state machine conform to openraft's storage API.
//! Method: run openraft's own `testing::Suite` (every API test it has in 0.9.25) against
//! [`LogStore`] + [`StateMachineStore`] on a fresh disk per test: `SimFs` in both builds, and
//! `RealFs` on a temp dir in the normal build. The suite checks API conformance, not crash
//! safety: `log_store_crash.rs` does that.
//!
//! The suite drives its own (real) tokio runtime per test, so these are plain `#[test]`s; the
//! store does no madsim calls (SimFs without delays), so that works in the madsim build too.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use openraft::testing::{StoreBuilder, Suite};
use sextant_raft::types::{StorageError, TypeConfig};
use sextant_raft::{LogStore, LogStoreConfig, StateMachineStore};
use sextant_storage::fs::sim::SimFs;
use sextant_storage::fs::FileSystem;

fn to_storage_error(error: impl std::error::Error + 'static) -> StorageError {
    openraft::StorageIOError::<u64>::write(openraft::AnyError::new(&error)).into()
}

async fn open_stores(
    fs: Arc<dyn FileSystem>,
    config: LogStoreConfig,
) -> Result<(LogStore, StateMachineStore), StorageError> {
    let log = LogStore::open(fs.clone(), PathBuf::from("raft"), config)
        .await
        .map_err(to_storage_error)?;
    let sm = StateMachineStore::open(fs, PathBuf::from("raft/sm"))
        .await
        .map_err(to_storage_error)?;
    Ok((log, sm))
}

/// A fresh SimFs per test, seeded by a counter so runs are reproducible.
struct SimBuilder {
    seed: AtomicU64,
    config: LogStoreConfig,
}

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, SimFs> for SimBuilder {
    async fn build(&self) -> Result<(SimFs, LogStore, StateMachineStore), StorageError> {
        let fs = SimFs::new(self.seed.fetch_add(1, Ordering::Relaxed));
        let (log, sm) = open_stores(Arc::new(fs.clone()), self.config.clone()).await?;
        Ok((fs, log, sm))
    }
}

#[test]
fn openraft_suite_on_simfs() {
    Suite::test_all(SimBuilder {
        seed: AtomicU64::new(1),
        config: LogStoreConfig::default(),
    })
    .unwrap();
}

// Goal: the same suite with segments so small that almost every entry rolls a segment, so
// truncate and purge cross segment boundaries.
#[test]
fn openraft_suite_on_simfs_with_tiny_segments() {
    let config = LogStoreConfig {
        segment_bytes_max: 600,
        entry_bytes_max: 200,
    };
    Suite::test_all(SimBuilder {
        seed: AtomicU64::new(100),
        config,
    })
    .unwrap();
}

#[cfg(not(madsim))]
mod real {
    use super::*;
    use sextant_storage::fs::real::RealFs;

    /// A fresh temp dir per test; the guard keeps it alive for the test's duration.
    struct RealBuilder;

    impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, tempfile::TempDir> for RealBuilder {
        async fn build(
            &self,
        ) -> Result<(tempfile::TempDir, LogStore, StateMachineStore), StorageError> {
            let dir = tempfile::tempdir().map_err(to_storage_error)?;
            let (log, sm) =
                open_stores(Arc::new(RealFs::new(dir.path())), LogStoreConfig::default()).await?;
            Ok((dir, log, sm))
        }
    }

    #[test]
    fn openraft_suite_on_realfs() {
        Suite::test_all(RealBuilder).unwrap();
    }
}
