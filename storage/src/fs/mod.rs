//! The filesystem trait: the only way storage (and raft's log) touches the disk.
//!
//! Paths are relative to the filesystem's root (the node's data directory), use `/` as the
//! separator and never contain `..`. Durability follows POSIX as Linux implements it, and the
//! simulated filesystem ([`sim::SimFs`]) models exactly these rules so crash tests mean something:
//!
//! - bytes written to a file are durable only after [`WritableFile::sync`] returns `Ok`;
//! - a created, renamed or removed directory entry is durable only after [`FileSystem::sync_dir`]
//!   of the directory holding it returns `Ok` (for a rename: both directories);
//! - [`FileSystem::rename`] is atomic: after a crash the destination holds the old or the new file;
//! - a failed `sync` (EIO) leaves the file's durable contents unknown: callers must treat the file
//!   as poisoned and never retry the sync and carry on (see docs/design/storage.md).
//!
//! Errors are `std::io::Error`. ENOSPC and EIO carry their raw OS error codes so that callers
//! classify them with [`is_no_space`] and [`is_io_error`] in both the real and simulated builds.

use std::fmt::Debug;
use std::io;
use std::path::{Path, PathBuf};

use async_trait::async_trait;

#[cfg(not(madsim))]
pub mod real;
pub mod sim;

/// Linux's ENOSPC.
pub const ENOSPC: i32 = 28;
/// Linux's EIO.
pub const EIO: i32 = 5;

/// True when the error means the disk is full (retryable for writers; reads keep working).
pub fn is_no_space(error: &io::Error) -> bool {
    error.raw_os_error() == Some(ENOSPC) || error.kind() == io::ErrorKind::StorageFull
}

/// True when the error is EIO (for a sync: the WAL is poisoned).
pub fn is_io_error(error: &io::Error) -> bool {
    error.raw_os_error() == Some(EIO)
}

/// An error with Linux's ENOSPC code.
pub fn no_space_error() -> io::Error {
    io::Error::from_raw_os_error(ENOSPC)
}

/// An error with Linux's EIO code.
pub fn eio_error() -> io::Error {
    io::Error::from_raw_os_error(EIO)
}

/// A file open for appending.
#[async_trait]
pub trait WritableFile: Send + Sync + Debug {
    /// Appends `buf` at the end of the file. Not durable until [`WritableFile::sync`].
    async fn write_all(&mut self, buf: &[u8]) -> io::Result<()>;
    /// fsync: makes every byte written so far durable.
    async fn sync(&mut self) -> io::Result<()>;
    /// The file's length in bytes, including bytes written through this handle.
    fn len(&self) -> u64;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A filesystem rooted at a data directory.
#[async_trait]
pub trait FileSystem: Send + Sync + Debug + 'static {
    /// Creates a directory and any missing parents. Entries are durable after `sync_dir` of
    /// each parent.
    async fn create_dir_all(&self, path: &Path) -> io::Result<()>;
    /// Creates `path` (truncating it if it exists) and opens it for appending.
    async fn create(&self, path: &Path) -> io::Result<Box<dyn WritableFile>>;
    /// Opens an existing file for appending at its end.
    async fn open_append(&self, path: &Path) -> io::Result<Box<dyn WritableFile>>;
    /// Reads a whole file.
    async fn read(&self, path: &Path) -> io::Result<Vec<u8>>;
    /// Reads `len` bytes at `offset`; fewer only at the end of the file.
    async fn read_at(&self, path: &Path, offset: u64, len: usize) -> io::Result<Vec<u8>>;
    /// The length of a file in bytes.
    async fn file_len(&self, path: &Path) -> io::Result<u64>;
    /// Cuts a file to `len` bytes and fsyncs it (one call, so a torn-tail repair is durable
    /// when it returns).
    async fn truncate(&self, path: &Path, len: u64) -> io::Result<()>;
    /// Atomically renames a file or directory, replacing a destination file.
    async fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    async fn remove_file(&self, path: &Path) -> io::Result<()>;
    async fn remove_dir_all(&self, path: &Path) -> io::Result<()>;
    /// Names of the entries of a directory, sorted bytewise (deterministic everywhere).
    async fn read_dir(&self, path: &Path) -> io::Result<Vec<String>>;
    async fn exists(&self, path: &Path) -> io::Result<bool>;
    async fn is_dir(&self, path: &Path) -> io::Result<bool>;
    /// fsync of a directory: makes its entries (creates, renames, removes) durable.
    async fn sync_dir(&self, path: &Path) -> io::Result<()>;
}

/// Which step of [`replace_durably`] failed, on which path, and the I/O error.
#[derive(Debug, thiserror::Error)]
#[error("{step} {}: {source}", path.display())]
pub struct ReplaceError {
    /// `create`, `write`, `fsync`, `rename` or `fsync directory`.
    pub step: &'static str,
    /// The file or directory the failed step was about.
    pub path: PathBuf,
    pub source: io::Error,
}

/// Replaces `path` with `bytes` so that after a crash it holds either its old contents or all
/// of `bytes`, and once this returns `Ok` the new contents survive a crash: write `tmp`, fsync
/// it, rename it over `path`, fsync the directory holding `path` (without that last fsync the
/// rename itself may be lost). `tmp` must be in the same directory as `path`; a leftover `tmp`
/// from a crash is garbage the caller may remove on start-up.
///
/// A failed fsync leaves the durable state unknown; the caller decides whether that poisons it
/// (see the module documentation) — this helper never retries.
pub async fn replace_durably(fs: &dyn FileSystem, path: &Path, tmp: &Path, bytes: &[u8]) -> Result<(), ReplaceError> {
    let parent = path.parent().unwrap_or(Path::new(""));
    // A temp file elsewhere would make the rename cross directories, and the one directory
    // fsync below would not cover both entries.
    assert_eq!(tmp.parent().unwrap_or(Path::new("")), parent, "temp file must be beside {}", path.display());
    assert_ne!(tmp, path);
    let failed = |step, at: &Path| {
        let path = at.to_path_buf();
        move |source| ReplaceError { step, path, source }
    };
    let mut file = fs.create(tmp).await.map_err(failed("create", tmp))?;
    file.write_all(bytes).await.map_err(failed("write", tmp))?;
    file.sync().await.map_err(failed("fsync", tmp))?;
    drop(file);
    fs.rename(tmp, path).await.map_err(failed("rename", path))?;
    fs.sync_dir(parent).await.map_err(failed("fsync directory", parent))?;
    Ok(())
}

#[cfg(test)]
mod replace_tests {
    use super::sim::{FaultConfig, SimFs};
    use super::*;

    fn p(s: &str) -> &Path {
        Path::new(s)
    }

    // Goal: what replace_durably returned Ok for survives a crash, even a torn one; when a
    // step fails the old contents survive the crash and the error names the step and path.
    // Method: SimFs (torn crashes drop or mangle everything not fsynced), then fsync EIO
    // injected at the file and at the directory.
    #[tokio::test]
    async fn replace_is_atomic_and_durable() {
        let fs = SimFs::new(7);
        fs.create_dir_all(p("d")).await.unwrap();
        fs.sync_dir(p("")).await.unwrap();
        replace_durably(&fs, p("d/meta"), p("d/meta.tmp"), b"one").await.unwrap();
        fs.crash();
        assert_eq!(fs.read(p("d/meta")).await.unwrap(), b"one");
        replace_durably(&fs, p("d/meta"), p("d/meta.tmp"), b"two").await.unwrap();
        fs.crash();
        assert_eq!(fs.read(p("d/meta")).await.unwrap(), b"two");
        assert!(!fs.exists(p("d/meta.tmp")).await.unwrap());

        let cases = [
            ("fsync", "d/meta.tmp", FaultConfig { sync_eio_probability: 1.0, ..FaultConfig::default() }),
            ("fsync directory", "d", FaultConfig { sync_dir_eio_probability: 1.0, ..FaultConfig::default() }),
        ];
        for (step, path, faults) in cases {
            fs.set_faults(faults);
            let error = replace_durably(&fs, p("d/meta"), p("d/meta.tmp"), b"three").await.unwrap_err();
            assert_eq!(error.step, step);
            assert_eq!(error.path, p(path));
            assert!(is_io_error(&error.source), "{error}");
            fs.set_faults(FaultConfig::default());
            fs.crash();
            assert_eq!(fs.read(p("d/meta")).await.unwrap(), b"two", "after failed {step}");
        }
    }
}
