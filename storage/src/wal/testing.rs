//! Test support: a filesystem wrapper that kills the process (from the disk's point of view)
//! after a chosen number of operations.
//!
//! [`KillableFs`] forwards to a [`SimFs`]. After `ops_before_kill` operations, or when
//! [`KillableFs::kill`] is called, it calls [`SimFs::crash`] and fails every later operation,
//! including those of tasks that are still running: a dead process does no more I/O, so a WAL
//! writer task that outlives its test's "crash" cannot touch the disk the next incarnation opens.

use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;

use crate::fs::sim::SimFs;
use crate::fs::{FileSystem, WritableFile};

#[derive(Debug)]
struct Control {
    sim: SimFs,
    ops: AtomicU64,
    ops_before_kill: u64,
    dead: AtomicBool,
}

impl Control {
    /// Counts one operation; errors once dead. The operation that reaches the budget crashes
    /// the disk *before* it runs, so it never happens.
    fn step(&self) -> io::Result<()> {
        if self.dead.load(Ordering::SeqCst) {
            return Err(dead());
        }
        let done = self.ops.fetch_add(1, Ordering::SeqCst);
        if done >= self.ops_before_kill {
            self.kill();
            return Err(dead());
        }
        Ok(())
    }

    fn kill(&self) {
        if !self.dead.swap(true, Ordering::SeqCst) {
            self.sim.crash();
        }
    }
}

fn dead() -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, "process killed by KillableFs")
}

/// See the module documentation.
#[derive(Debug, Clone)]
pub struct KillableFs {
    control: Arc<Control>,
}

impl KillableFs {
    /// Crashes `sim` just before operation number `ops_before_kill` (0-based) would run.
    pub fn new(sim: SimFs, ops_before_kill: u64) -> Self {
        KillableFs { control: Arc::new(Control { sim, ops: AtomicU64::new(0), ops_before_kill, dead: AtomicBool::new(false) }) }
    }

    /// Never kills on its own.
    pub fn unlimited(sim: SimFs) -> Self {
        Self::new(sim, u64::MAX)
    }

    /// Crashes the disk now and fails every later operation.
    pub fn kill(&self) {
        self.control.kill();
    }

    pub fn is_dead(&self) -> bool {
        self.control.dead.load(Ordering::SeqCst)
    }

    /// Operations attempted so far.
    pub fn ops(&self) -> u64 {
        self.control.ops.load(Ordering::SeqCst)
    }
}

#[derive(Debug)]
struct KillableFile {
    control: Arc<Control>,
    file: Box<dyn WritableFile>,
}

#[async_trait]
impl WritableFile for KillableFile {
    async fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.control.step()?;
        self.file.write_all(buf).await
    }

    async fn sync(&mut self) -> io::Result<()> {
        self.control.step()?;
        self.file.sync().await
    }

    fn len(&self) -> u64 {
        self.file.len()
    }
}

#[async_trait]
impl FileSystem for KillableFs {
    async fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        self.control.step()?;
        self.control.sim.create_dir_all(path).await
    }

    async fn create(&self, path: &Path) -> io::Result<Box<dyn WritableFile>> {
        self.control.step()?;
        let file = self.control.sim.create(path).await?;
        Ok(Box::new(KillableFile { control: self.control.clone(), file }))
    }

    async fn open_append(&self, path: &Path) -> io::Result<Box<dyn WritableFile>> {
        self.control.step()?;
        let file = self.control.sim.open_append(path).await?;
        Ok(Box::new(KillableFile { control: self.control.clone(), file }))
    }

    async fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        self.control.step()?;
        self.control.sim.read(path).await
    }

    async fn read_at(&self, path: &Path, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        self.control.step()?;
        self.control.sim.read_at(path, offset, len).await
    }

    async fn file_len(&self, path: &Path) -> io::Result<u64> {
        self.control.step()?;
        self.control.sim.file_len(path).await
    }

    async fn truncate(&self, path: &Path, len: u64) -> io::Result<()> {
        self.control.step()?;
        self.control.sim.truncate(path, len).await
    }

    async fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.control.step()?;
        self.control.sim.rename(from, to).await
    }

    async fn remove_file(&self, path: &Path) -> io::Result<()> {
        self.control.step()?;
        self.control.sim.remove_file(path).await
    }

    async fn remove_dir_all(&self, path: &Path) -> io::Result<()> {
        self.control.step()?;
        self.control.sim.remove_dir_all(path).await
    }

    async fn read_dir(&self, path: &Path) -> io::Result<Vec<String>> {
        self.control.step()?;
        self.control.sim.read_dir(path).await
    }

    async fn exists(&self, path: &Path) -> io::Result<bool> {
        self.control.step()?;
        self.control.sim.exists(path).await
    }

    async fn is_dir(&self, path: &Path) -> io::Result<bool> {
        self.control.step()?;
        self.control.sim.is_dir(path).await
    }

    async fn sync_dir(&self, path: &Path) -> io::Result<()> {
        self.control.step()?;
        self.control.sim.sync_dir(path).await
    }
}
