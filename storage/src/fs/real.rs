//! The real filesystem: std::fs on a blocking thread. Not compiled under madsim, where tests
//! and the simulator use [`super::sim::SimFs`].

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;

use super::{FileSystem, WritableFile};

/// The real filesystem rooted at a data directory.
#[derive(Debug, Clone)]
pub struct RealFs {
    root: Arc<PathBuf>,
}

impl RealFs {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        RealFs { root: Arc::new(root.into()) }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn full(&self, path: &Path) -> PathBuf {
        assert!(path.is_relative(), "RealFs paths are relative to the root: {path:?}");
        self.root.join(path)
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> io::Result<T> + Send + 'static) -> io::Result<T> {
    match tokio::task::spawn_blocking(f).await {
        Ok(result) => result,
        Err(join_error) => Err(io::Error::other(format!("filesystem task failed: {join_error}"))),
    }
}

#[derive(Debug)]
struct RealFile {
    file: Option<File>,
    len: u64,
}

#[async_trait]
impl WritableFile for RealFile {
    async fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        let mut file = self.file.take().expect("RealFile used after a panic");
        let data = buf.to_vec();
        let (file, result) = blocking(move || {
            let result = file.write_all(&data);
            Ok((file, result))
        })
        .await?;
        self.file = Some(file);
        result?;
        self.len += buf.len() as u64;
        Ok(())
    }

    async fn sync(&mut self) -> io::Result<()> {
        let file = self.file.take().expect("RealFile used after a panic");
        let (file, result) = blocking(move || {
            let result = file.sync_data();
            Ok((file, result))
        })
        .await?;
        self.file = Some(file);
        result
    }

    fn len(&self) -> u64 {
        self.len
    }
}

#[async_trait]
impl FileSystem for RealFs {
    async fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        let full = self.full(path);
        blocking(move || std::fs::create_dir_all(full)).await
    }

    async fn create(&self, path: &Path) -> io::Result<Box<dyn WritableFile>> {
        let full = self.full(path);
        let file = blocking(move || File::create(full)).await?;
        Ok(Box::new(RealFile { file: Some(file), len: 0 }))
    }

    async fn open_append(&self, path: &Path) -> io::Result<Box<dyn WritableFile>> {
        let full = self.full(path);
        let (file, len) = blocking(move || {
            let file = OpenOptions::new().append(true).open(full)?;
            let len = file.metadata()?.len();
            Ok((file, len))
        })
        .await?;
        Ok(Box::new(RealFile { file: Some(file), len }))
    }

    async fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        let full = self.full(path);
        blocking(move || std::fs::read(full)).await
    }

    async fn read_at(&self, path: &Path, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        let full = self.full(path);
        blocking(move || {
            let mut file = File::open(full)?;
            file.seek(SeekFrom::Start(offset))?;
            let mut buf = Vec::with_capacity(len);
            file.take(len as u64).read_to_end(&mut buf)?;
            Ok(buf)
        })
        .await
    }

    async fn file_len(&self, path: &Path) -> io::Result<u64> {
        let full = self.full(path);
        blocking(move || Ok(std::fs::metadata(full)?.len())).await
    }

    async fn truncate(&self, path: &Path, len: u64) -> io::Result<()> {
        let full = self.full(path);
        blocking(move || {
            let file = OpenOptions::new().write(true).open(full)?;
            file.set_len(len)?;
            file.sync_all()
        })
        .await
    }

    async fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let (from, to) = (self.full(from), self.full(to));
        blocking(move || std::fs::rename(from, to)).await
    }

    async fn remove_file(&self, path: &Path) -> io::Result<()> {
        let full = self.full(path);
        blocking(move || std::fs::remove_file(full)).await
    }

    async fn remove_dir_all(&self, path: &Path) -> io::Result<()> {
        let full = self.full(path);
        blocking(move || std::fs::remove_dir_all(full)).await
    }

    async fn read_dir(&self, path: &Path) -> io::Result<Vec<String>> {
        let full = self.full(path);
        blocking(move || {
            let mut names = Vec::new();
            for entry in std::fs::read_dir(full)? {
                let name = entry?.file_name();
                match name.into_string() {
                    Ok(name) => names.push(name),
                    // Sextant never creates such names; a foreign file is ignored, not fatal.
                    Err(_) => continue,
                }
            }
            names.sort();
            Ok(names)
        })
        .await
    }

    async fn exists(&self, path: &Path) -> io::Result<bool> {
        let full = self.full(path);
        blocking(move || full.try_exists()).await
    }

    async fn is_dir(&self, path: &Path) -> io::Result<bool> {
        let full = self.full(path);
        blocking(move || Ok(full.is_dir())).await
    }

    async fn sync_dir(&self, path: &Path) -> io::Result<()> {
        let full = self.full(path);
        blocking(move || File::open(full)?.sync_all()).await
    }
}
