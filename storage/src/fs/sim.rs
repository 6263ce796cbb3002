//! The simulated filesystem: in memory, deterministic, and faithful to what a crash can do.
//!
//! madsim's own filesystem treats `sync_all` as a no-op and cannot lose power, so crash tests
//! there prove nothing. `SimFs` keeps, for every file, the bytes written and how many of them an
//! fsync has made durable, and for every directory its entries and the entries a directory fsync
//! has made durable. [`SimFs::crash`] then does what a power cut does:
//!
//! - each file keeps its durable bytes plus, in [`CrashMode::Torn`], a random prefix of its
//!   unsynced tail, possibly followed by garbage (a torn sector);
//! - each directory reverts to its durable entries: files created, renamed or removed since the
//!   last `sync_dir` of that directory are gone, back where they were, or back from the dead;
//! - open handles die (every later call through them fails).
//!
//! # The model
//!
//! Files and directories are objects with an identity, as inodes are: a directory entry maps a
//! name to `Entry::File(inode)` or `Entry::Dir(dir)`, and a path is resolved by walking the
//! entries from the root. `rename`, `remove_file` and `remove_dir_all` change entries of the
//! parent directories only, never the objects they name, so:
//!
//! - a directory renamed A → B whose rename is reverted by a crash comes back under A with its
//!   contents (they belong to the directory, not to the path);
//! - a handle keeps writing to its inode whatever happens to the names (rename, removal,
//!   replacement by a rename onto its name), as on Linux;
//! - `remove_dir_all` only removes the directory's entry from its parent: if that removal is
//!   not durable, a crash brings the directory back whole, with its durable entries. (Linux
//!   unlinks the children one by one, and the journal may commit some of those unlinks before a
//!   crash; SimFs does not model that partial outcome, so callers must not rely on an
//!   undurable `remove_dir_all` being all-or-nothing — `block::delete_block` does not.)
//!
//! A crash reverts every directory reachable from the root through durable entries to its
//! durable entries, then drops every directory and file no longer reachable. Unsynced metadata
//! is always lost in this model (one legal outcome; on Linux it may also survive). A rename
//! across directories with only one of them synced can leave the object under both names after
//! a crash (or neither), which the `FileSystem` contract allows; for a directory that means two
//! names for one directory.
//!
//! `create` on an existing file truncates the same inode (O_TRUNC: handles already open on it
//! see the truncation). The truncation is modelled as immediate and durable — the old contents
//! are gone even if the power fails before any fsync — which is the harsh legal outcome for
//! code that overwrites a file in place instead of writing a temp file and renaming it.
//!
//! Space is charged, as `df` would, for files reachable from the root through current entries
//! and for files held open by a handle: removing a file frees its bytes at once, even though a
//! crash before the removal is durable brings them back.
//!
//! Faults are injected from a [`FaultConfig`] with a seeded RNG, so a run is reproducible:
//! fsync EIO (after which the unsynced pages are dropped: their bytes turn to zeros, so a
//! retried "successful" fsync makes garbage durable — the Linux fsyncgate behaviour that makes
//! retry-and-ignore wrong), ENOSPC past a capacity, corrupt reads (one flipped bit), slow I/O.
//! [`FaultStats`] counts the faults that changed something.
//!
//! Every map is a `BTreeMap`, so iteration order, and therefore the simulation, is deterministic.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::{eio_error, no_space_error, FileSystem, WritableFile};

/// What happens to unsynced file bytes on [`SimFs::crash`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CrashMode {
    /// Unsynced bytes are all lost.
    DropUnsynced,
    /// A random prefix of the unsynced bytes survives, sometimes followed by random garbage.
    Torn,
}

/// Fault probabilities and limits. All off by default.
#[derive(Clone, Debug, PartialEq)]
pub struct FaultConfig {
    /// Probability that a file `sync` fails with EIO.
    pub sync_eio_probability: f64,
    /// Probability that a `sync_dir` fails with EIO.
    pub sync_dir_eio_probability: f64,
    /// Total bytes the disk holds (file contents); writes past it fail with ENOSPC.
    pub capacity_bytes: Option<u64>,
    /// Probability that a read returns data with one bit flipped.
    pub read_corruption_probability: f64,
    /// Each operation sleeps a random 0..=this many milliseconds (simulated time under madsim).
    pub io_delay_ms_max: u64,
    pub crash_mode: CrashMode,
}

impl Default for FaultConfig {
    fn default() -> Self {
        FaultConfig {
            sync_eio_probability: 0.0,
            sync_dir_eio_probability: 0.0,
            capacity_bytes: None,
            read_corruption_probability: 0.0,
            io_delay_ms_max: 0,
            crash_mode: CrashMode::Torn,
        }
    }
}

/// Faults that took effect (changed an outcome), for coverage reports.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FaultStats {
    pub syncs_failed: u64,
    pub sync_dirs_failed: u64,
    pub writes_refused_no_space: u64,
    pub reads_corrupted: u64,
    pub delays: u64,
    pub crashes: u64,
    pub bytes_lost_on_crash: u64,
    pub bytes_garbage_on_crash: u64,
    pub dir_entries_reverted_on_crash: u64,
}

/// A directory entry: the identity of the object a name points at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Entry {
    /// An inode id (key of `State::inodes`).
    File(u64),
    /// A directory id (key of `State::dirs`).
    Dir(u64),
}

/// The id of the root directory.
const ROOT: u64 = 0;

#[derive(Debug, Default)]
struct Inode {
    data: Vec<u8>,
    /// `data[..synced_len]` is durable. Files are append-only between truncations, so the
    /// durable bytes are always a prefix of `data`.
    synced_len: usize,
}

#[derive(Debug, Default, Clone)]
struct Dir {
    entries: BTreeMap<String, Entry>,
    durable: BTreeMap<String, Entry>,
}

#[derive(Debug)]
struct State {
    inodes: BTreeMap<u64, Inode>,
    inode_next: u64,
    /// Directories by id; the root is [`ROOT`]. Holds every directory that is reachable from
    /// the root through current or durable entries (and possibly some unreachable ones until
    /// the next garbage collection).
    dirs: BTreeMap<u64, Dir>,
    dir_next: u64,
    /// Open handles per inode in the current generation: an open file keeps its bytes charged
    /// and survives garbage collection even when no entry names it.
    open: BTreeMap<u64, usize>,
    /// Incremented by every crash; handles from an older generation are dead.
    generation: u64,
    faults: FaultConfig,
    stats: FaultStats,
    rng: ChaCha8Rng,
}

/// A deterministic in-memory filesystem with crash and fault injection. Cloning shares it: a
/// node's disk is created outside the node and handed to it at every (re)start.
#[derive(Debug, Clone)]
pub struct SimFs {
    state: Arc<Mutex<State>>,
}

/// The path's components (relative, without `.`), or InvalidInput.
fn components(path: &Path) -> io::Result<Vec<String>> {
    let mut out = Vec::new();
    for component in path.components() {
        match component {
            Component::Normal(part) => match part.to_str() {
                Some(part) => out.push(part.to_string()),
                None => {
                    return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("SimFs paths are UTF-8: {path:?}")))
                }
            },
            Component::CurDir => {}
            _ => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("SimFs paths are relative and never contain '..': {path:?}"),
                ))
            }
        }
    }
    Ok(out)
}

fn normalize(path: &Path) -> io::Result<PathBuf> {
    Ok(components(path)?.iter().collect())
}

/// The parent's path and the last component; InvalidInput for the root.
fn split(path: &Path) -> io::Result<(PathBuf, String)> {
    let mut parts = components(path)?;
    let Some(name) = parts.pop() else {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("no file name in {path:?}")));
    };
    Ok((parts.iter().collect(), name))
}

fn not_found(path: &Path) -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, format!("{path:?} not found"))
}

fn not_a_directory(path: &Path) -> io::Error {
    io::Error::new(io::ErrorKind::NotADirectory, format!("{path:?} is not a directory"))
}

fn is_a_directory(path: &Path) -> io::Error {
    io::Error::new(io::ErrorKind::IsADirectory, format!("{path:?} is a directory"))
}

impl State {
    /// Bytes of the files reachable from the root through current entries or held open.
    fn used_bytes(&self) -> u64 {
        let mut charged: BTreeSet<u64> = self.open.keys().copied().collect();
        let (_, files) = self.reachable(|dir| vec![&dir.entries]);
        charged.extend(files);
        charged.iter().filter_map(|id| self.inodes.get(id)).map(|i| i.data.len() as u64).sum()
    }

    /// Directories and files reachable from the root, following in each directory the entry
    /// maps that `maps` picks. Visits every directory once (a crash can give a directory two
    /// names, see the module documentation).
    fn reachable<'a>(&'a self, maps: impl Fn(&'a Dir) -> Vec<&'a BTreeMap<String, Entry>>) -> (BTreeSet<u64>, BTreeSet<u64>) {
        let mut dirs = BTreeSet::new();
        let mut files = BTreeSet::new();
        let mut pending = vec![ROOT];
        while let Some(id) = pending.pop() {
            if !dirs.insert(id) {
                continue;
            }
            let dir = self.dirs.get(&id).expect("an entry names a directory that exists");
            for map in maps(dir) {
                for entry in map.values() {
                    match *entry {
                        Entry::Dir(child) => pending.push(child),
                        Entry::File(inode) => {
                            files.insert(inode);
                        }
                    }
                }
            }
        }
        (dirs, files)
    }

    /// Drops directories and files that neither the current tree, nor a crash, nor an open
    /// handle can reach any more. Only memory: nothing observable changes.
    fn collect_garbage(&mut self) {
        let (dirs, mut files) = self.reachable(|dir| vec![&dir.entries, &dir.durable]);
        files.extend(self.open.keys().copied());
        self.dirs.retain(|id, _| dirs.contains(id));
        self.inodes.retain(|id, _| files.contains(id));
    }

    /// What `path` names, walking current entries from the root.
    fn lookup(&self, path: &Path) -> io::Result<Entry> {
        let mut current = Entry::Dir(ROOT);
        for name in components(path)? {
            let Entry::Dir(id) = current else { return Err(not_a_directory(path)) };
            let dir = self.dirs.get(&id).expect("an entry names a directory that exists");
            current = *dir.entries.get(&name).ok_or_else(|| not_found(path))?;
        }
        Ok(current)
    }

    fn dir_id(&self, path: &Path) -> io::Result<u64> {
        match self.lookup(path)? {
            Entry::Dir(id) => Ok(id),
            Entry::File(_) => Err(not_a_directory(path)),
        }
    }

    fn dir(&self, id: u64) -> &Dir {
        self.dirs.get(&id).expect("a resolved directory exists")
    }

    fn dir_mut(&mut self, id: u64) -> &mut Dir {
        self.dirs.get_mut(&id).expect("a resolved directory exists")
    }

    /// The id of `path`'s parent directory and `path`'s last component.
    fn parent(&self, path: &Path) -> io::Result<(u64, String)> {
        let (parent, name) = split(path)?;
        Ok((self.dir_id(&parent)?, name))
    }

    fn file_inode(&self, path: &Path) -> io::Result<u64> {
        match self.lookup(path)? {
            Entry::File(inode) => Ok(inode),
            Entry::Dir(_) => Err(is_a_directory(path)),
        }
    }

    fn new_dir(&mut self) -> u64 {
        let id = self.dir_next;
        self.dir_next += 1;
        self.dirs.insert(id, Dir::default());
        id
    }

    fn chance(&mut self, probability: f64) -> bool {
        probability > 0.0 && self.rng.random_bool(probability.min(1.0))
    }

    fn maybe_corrupt(&mut self, mut data: Vec<u8>) -> Vec<u8> {
        let probability = self.faults.read_corruption_probability;
        if !data.is_empty() && self.chance(probability) {
            let bit = self.rng.random_range(0..data.len() * 8);
            data[bit / 8] ^= 1 << (bit % 8);
            self.stats.reads_corrupted += 1;
        }
        data
    }

    fn crash(&mut self) {
        self.generation += 1;
        self.stats.crashes += 1;
        self.open.clear();
        // Directories first: starting from the root, revert each directory reachable through
        // durable entries to its durable entries. A directory whose own entry was not durable
        // is not visited and disappears with everything under it; a directory whose rename or
        // removal was not durable is found again under its old name, whole.
        let (reachable, _) = self.reachable(|dir| vec![&dir.durable]);
        for id in &reachable {
            let dir = self.dirs.get_mut(id).expect("reachable");
            let reverted = dir.entries.iter().filter(|(n, e)| dir.durable.get(*n) != Some(*e)).count()
                + dir.durable.iter().filter(|(n, _)| !dir.entries.contains_key(*n)).count();
            self.stats.dir_entries_reverted_on_crash += reverted as u64;
            dir.entries = dir.durable.clone();
        }
        // Everything unreachable now is gone for good.
        self.collect_garbage();
        // Files: keep the durable prefix and, when torn, some of the tail.
        let mode = self.faults.crash_mode;
        let ids: Vec<u64> = self.inodes.keys().copied().collect();
        for id in ids {
            let (synced_len, len) = {
                let inode = &self.inodes[&id];
                (inode.synced_len, inode.data.len())
            };
            let tail_len = len - synced_len;
            if tail_len == 0 {
                continue;
            }
            let mut keep = 0;
            let mut garbage = 0;
            if mode == CrashMode::Torn {
                keep = self.rng.random_range(0..=tail_len);
                if keep < tail_len && self.rng.random_bool(0.5) {
                    garbage = self.rng.random_range(1..=(tail_len - keep).min(64));
                }
            }
            let mut noise = vec![0u8; garbage];
            self.rng.fill_bytes(&mut noise);
            let inode = self.inodes.get_mut(&id).expect("inode listed above");
            inode.data.truncate(synced_len + keep);
            inode.data.extend_from_slice(&noise);
            inode.synced_len = inode.data.len();
            self.stats.bytes_lost_on_crash += (tail_len - keep) as u64;
            self.stats.bytes_garbage_on_crash += garbage as u64;
        }
    }
}

impl SimFs {
    /// An empty disk whose faults draw from `seed`.
    pub fn new(seed: u64) -> Self {
        let mut dirs = BTreeMap::new();
        dirs.insert(ROOT, Dir::default());
        SimFs {
            state: Arc::new(Mutex::new(State {
                inodes: BTreeMap::new(),
                inode_next: 1,
                dirs,
                dir_next: ROOT + 1,
                open: BTreeMap::new(),
                generation: 0,
                faults: FaultConfig::default(),
                stats: FaultStats::default(),
                rng: ChaCha8Rng::seed_from_u64(seed),
            })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock is a bug in SimFs itself; the state is still usable
        // for reporting, so recover the guard instead of cascading panics.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn set_faults(&self, faults: FaultConfig) {
        self.lock().faults = faults;
    }

    pub fn faults(&self) -> FaultConfig {
        self.lock().faults.clone()
    }

    pub fn stats(&self) -> FaultStats {
        self.lock().stats.clone()
    }

    /// Simulates a power cut (see the module documentation). The caller must drop the node that
    /// used this disk first; its open handles fail from now on.
    pub fn crash(&self) {
        self.lock().crash();
    }

    /// Replaces the disk with an empty one (a lost or reformatted disk): every file and
    /// directory is gone, durable or not, and open handles fail. Faults and statistics stay
    /// (they describe the slot, not the medium). The caller must drop the node first.
    pub fn wipe(&self) {
        let mut state = self.lock();
        state.generation += 1;
        state.open.clear();
        state.inodes.clear();
        state.dirs.clear();
        state.dirs.insert(ROOT, Dir::default());
    }

    /// Bytes of file contents currently stored: files reachable from the root, and files held
    /// open by a handle (see the module documentation).
    pub fn used_bytes(&self) -> u64 {
        self.lock().used_bytes()
    }

    /// Every file path with its durable contents, in path order: what would survive a crash
    /// with [`CrashMode::DropUnsynced`]. The simulator hashes it into the trace hash.
    pub fn durable_snapshot(&self) -> BTreeMap<PathBuf, Vec<u8>> {
        let state = self.lock();
        let mut out = BTreeMap::new();
        // A directory can have two durable names (see the module documentation) and, in
        // pathological cases, be its own durable ancestor: list each directory once.
        let mut seen = BTreeSet::new();
        let mut pending = vec![(PathBuf::new(), ROOT)];
        while let Some((path, id)) = pending.pop() {
            if !seen.insert(id) {
                continue;
            }
            for (name, entry) in &state.dir(id).durable {
                match *entry {
                    Entry::Dir(child) => pending.push((path.join(name), child)),
                    Entry::File(inode) => {
                        if let Some(inode) = state.inodes.get(&inode) {
                            out.insert(path.join(name), inode.data[..inode.synced_len].to_vec());
                        }
                    }
                }
            }
        }
        out
    }

    /// Test helper: overwrites `len` bytes at `offset` of a file, durably, as a disk that rots
    /// would. Used by corruption tests.
    pub fn corrupt(&self, path: &Path, offset: usize, bytes: &[u8]) -> io::Result<()> {
        let mut state = self.lock();
        let id = state.file_inode(path)?;
        let inode = state.inodes.get_mut(&id).expect("inode of a listed file");
        let end = offset + bytes.len();
        if end > inode.data.len() {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "corrupt past the end of the file"));
        }
        inode.data[offset..end].copy_from_slice(bytes);
        Ok(())
    }

    async fn delay(&self) {
        let delay_ms = {
            let mut state = self.lock();
            let max = state.faults.io_delay_ms_max;
            if max == 0 {
                return;
            }
            let ms = state.rng.random_range(0..=max);
            if ms > 0 {
                state.stats.delays += 1;
            }
            ms
        };
        if delay_ms > 0 {
            tokio::time::sleep(Duration::from_millis(delay_ms)).await;
        }
    }

    fn create_dir_all_locked(state: &mut State, path: &Path) -> io::Result<()> {
        let mut current = ROOT;
        let mut walked = PathBuf::new();
        for name in components(path)? {
            walked.push(&name);
            let existing = state.dir(current).entries.get(&name).copied();
            current = match existing {
                Some(Entry::Dir(id)) => id,
                Some(Entry::File(_)) => {
                    return Err(io::Error::new(io::ErrorKind::AlreadyExists, format!("{walked:?} is a file")))
                }
                None => {
                    let id = state.new_dir();
                    state.dir_mut(current).entries.insert(name, Entry::Dir(id));
                    id
                }
            };
        }
        Ok(())
    }

    /// A handle on `inode`, counted open until dropped.
    fn handle(&self, state: &mut State, inode: u64, path: PathBuf) -> Box<dyn WritableFile> {
        *state.open.entry(inode).or_insert(0) += 1;
        Box::new(SimFile { fs: self.clone(), inode, generation: state.generation, path })
    }
}

/// A handle: it names an inode, not a path, so it keeps writing to the same file whatever
/// happens to the file's names.
#[derive(Debug)]
struct SimFile {
    fs: SimFs,
    inode: u64,
    generation: u64,
    /// The path it was opened by, for error messages only.
    path: PathBuf,
}

impl SimFile {
    fn check_alive(&self, state: &State) -> io::Result<()> {
        if state.generation != self.generation || !state.inodes.contains_key(&self.inode) {
            return Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                format!("handle for {:?} died in a simulated crash", self.path),
            ));
        }
        Ok(())
    }
}

impl Drop for SimFile {
    fn drop(&mut self) {
        let mut state = self.fs.lock();
        if state.generation != self.generation {
            return; // the crash already closed it
        }
        if let Some(count) = state.open.get_mut(&self.inode) {
            *count -= 1;
            if *count == 0 {
                state.open.remove(&self.inode);
            }
        }
    }
}

#[async_trait]
impl WritableFile for SimFile {
    async fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.fs.delay().await;
        let mut state = self.fs.lock();
        self.check_alive(&state)?;
        if let Some(capacity) = state.faults.capacity_bytes {
            if state.used_bytes() + buf.len() as u64 > capacity {
                state.stats.writes_refused_no_space += 1;
                return Err(no_space_error());
            }
        }
        state.inodes.get_mut(&self.inode).expect("checked alive").data.extend_from_slice(buf);
        Ok(())
    }
    async fn sync(&mut self) -> io::Result<()> {
        self.fs.delay().await;
        let mut state = self.fs.lock();
        self.check_alive(&state)?;
        let probability = state.faults.sync_eio_probability;
        if state.chance(probability) {
            state.stats.syncs_failed += 1;
            // The kernel drops the dirty pages and forgets they were dirty: the bytes are gone
            // and a later fsync will report success over them.
            let inode = state.inodes.get_mut(&self.inode).expect("checked alive");
            let synced_len = inode.synced_len;
            for byte in &mut inode.data[synced_len..] {
                *byte = 0;
            }
            return Err(eio_error());
        }
        let inode = state.inodes.get_mut(&self.inode).expect("checked alive");
        inode.synced_len = inode.data.len();
        Ok(())
    }

    fn len(&self) -> u64 {
        let state = self.fs.lock();
        state.inodes.get(&self.inode).map(|i| i.data.len() as u64).unwrap_or(0)
    }
}

#[async_trait]
impl FileSystem for SimFs {
    async fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        self.delay().await;
        let mut state = self.lock();
        Self::create_dir_all_locked(&mut state, path)
    }

    /// Creates the file, or truncates the existing one (same inode, immediately and durably:
    /// see the module documentation).
    async fn create(&self, path: &Path) -> io::Result<Box<dyn WritableFile>> {
        self.delay().await;
        let path = normalize(path)?;
        let mut state = self.lock();
        let (parent, name) = state.parent(&path)?;
        let inode = match state.dir(parent).entries.get(&name).copied() {
            Some(Entry::Dir(_)) => return Err(is_a_directory(&path)),
            Some(Entry::File(inode)) => {
                let node = state.inodes.get_mut(&inode).expect("entry points at an inode");
                node.data.clear();
                node.synced_len = 0;
                inode
            }
            None => {
                let inode = state.inode_next;
                state.inode_next += 1;
                state.inodes.insert(inode, Inode::default());
                state.dir_mut(parent).entries.insert(name, Entry::File(inode));
                inode
            }
        };
        Ok(self.handle(&mut state, inode, path))
    }

    async fn open_append(&self, path: &Path) -> io::Result<Box<dyn WritableFile>> {
        self.delay().await;
        let path = normalize(path)?;
        let mut state = self.lock();
        let inode = state.file_inode(&path)?;
        Ok(self.handle(&mut state, inode, path))
    }

    async fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        self.delay().await;
        let mut state = self.lock();
        let inode = state.file_inode(path)?;
        let data = state.inodes[&inode].data.clone();
        Ok(state.maybe_corrupt(data))
    }

    async fn read_at(&self, path: &Path, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        self.delay().await;
        let mut state = self.lock();
        let inode = state.file_inode(path)?;
        let data = &state.inodes[&inode].data;
        let start = usize::try_from(offset).unwrap_or(usize::MAX).min(data.len());
        let end = start.saturating_add(len).min(data.len());
        let slice = data[start..end].to_vec();
        Ok(state.maybe_corrupt(slice))
    }

    async fn file_len(&self, path: &Path) -> io::Result<u64> {
        let state = self.lock();
        let inode = state.file_inode(path)?;
        Ok(state.inodes[&inode].data.len() as u64)
    }

    async fn truncate(&self, path: &Path, len: u64) -> io::Result<()> {
        self.delay().await;
        let mut state = self.lock();
        let id = state.file_inode(path)?;
        let probability = state.faults.sync_eio_probability;
        if state.chance(probability) {
            state.stats.syncs_failed += 1;
            return Err(eio_error());
        }
        let inode = state.inodes.get_mut(&id).expect("entry points at an inode");
        let len = usize::try_from(len).unwrap_or(usize::MAX);
        if len < inode.data.len() {
            inode.data.truncate(len);
        } else {
            inode.data.resize(len, 0);
        }
        inode.synced_len = inode.data.len();
        Ok(())
    }

    /// Moves the entry (file or directory) as Linux's rename(2) does: a file replaces a file,
    /// a directory replaces an empty directory; a directory cannot move under itself. Only the
    /// two parents' entries change.
    async fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.delay().await;
        let from = normalize(from)?;
        let to = normalize(to)?;
        let mut state = self.lock();
        let entry = state.lookup(&from)?;
        let (from_parent, from_name) = state.parent(&from)?;
        let (to_parent, to_name) = state.parent(&to)?;
        if from == to {
            return Ok(());
        }
        if matches!(entry, Entry::Dir(_)) && to.starts_with(&from) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("cannot move {from:?} into itself ({to:?})"),
            ));
        }
        match (entry, state.dir(to_parent).entries.get(&to_name).copied()) {
            (_, None) | (Entry::File(_), Some(Entry::File(_))) => {}
            (Entry::Dir(_), Some(Entry::Dir(existing))) => {
                if !state.dir(existing).entries.is_empty() {
                    return Err(io::Error::new(io::ErrorKind::DirectoryNotEmpty, format!("{to:?} not empty")));
                }
            }
            (Entry::File(_), Some(Entry::Dir(_))) => return Err(is_a_directory(&to)),
            (Entry::Dir(_), Some(Entry::File(_))) => return Err(not_a_directory(&to)),
        }
        state.dir_mut(from_parent).entries.remove(&from_name);
        state.dir_mut(to_parent).entries.insert(to_name, entry);
        Ok(())
    }

    async fn remove_file(&self, path: &Path) -> io::Result<()> {
        self.delay().await;
        let path = normalize(path)?;
        let mut state = self.lock();
        state.file_inode(&path)?;
        let (parent, name) = state.parent(&path)?;
        state.dir_mut(parent).entries.remove(&name);
        Ok(())
    }

    /// Removes the directory's entry from its parent. The directory and its contents are left
    /// as they are: unreachable now, back whole if a crash reverts the removal, garbage
    /// otherwise (see the module documentation).
    async fn remove_dir_all(&self, path: &Path) -> io::Result<()> {
        self.delay().await;
        let path = normalize(path)?;
        let mut state = self.lock();
        state.dir_id(&path)?;
        let (parent, name) = state.parent(&path)?;
        state.dir_mut(parent).entries.remove(&name);
        Ok(())
    }

    async fn read_dir(&self, path: &Path) -> io::Result<Vec<String>> {
        self.delay().await;
        let state = self.lock();
        let id = state.dir_id(path)?;
        Ok(state.dir(id).entries.keys().cloned().collect())
    }

    async fn exists(&self, path: &Path) -> io::Result<bool> {
        let state = self.lock();
        match state.lookup(path) {
            Ok(_) => Ok(true),
            Err(error) if error.kind() == io::ErrorKind::InvalidInput => Err(error),
            Err(_) => Ok(false),
        }
    }

    async fn is_dir(&self, path: &Path) -> io::Result<bool> {
        let state = self.lock();
        match state.lookup(path) {
            Ok(entry) => Ok(matches!(entry, Entry::Dir(_))),
            Err(error) if error.kind() == io::ErrorKind::InvalidInput => Err(error),
            Err(_) => Ok(false),
        }
    }

    async fn sync_dir(&self, path: &Path) -> io::Result<()> {
        self.delay().await;
        let mut state = self.lock();
        let probability = state.faults.sync_dir_eio_probability;
        if state.chance(probability) {
            state.stats.sync_dirs_failed += 1;
            return Err(eio_error());
        }
        let id = state.dir_id(path)?;
        let dir = state.dir_mut(id);
        dir.durable = dir.entries.clone();
        // What this sync made unreachable for a crash too is garbage now.
        state.collect_garbage();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> PathBuf {
        PathBuf::from(s)
    }

    // Goal: fsynced bytes in a file whose directory entry is durable survive a crash; unsynced
    // bytes do not (DropUnsynced). Method: write, sync part, crash, read back.
    #[tokio::test]
    async fn crash_keeps_exactly_the_synced_prefix() {
        let fs = SimFs::new(1);
        fs.set_faults(FaultConfig { crash_mode: CrashMode::DropUnsynced, ..FaultConfig::default() });
        fs.create_dir_all(&p("wal")).await.unwrap();
        fs.sync_dir(&p("")).await.unwrap();
        let mut file = fs.create(&p("wal/1")).await.unwrap();
        fs.sync_dir(&p("wal")).await.unwrap();
        file.write_all(b"durable").await.unwrap();
        file.sync().await.unwrap();
        file.write_all(b"-lost").await.unwrap();
        assert_eq!(fs.read(&p("wal/1")).await.unwrap(), b"durable-lost");
        fs.crash();
        assert_eq!(fs.read(&p("wal/1")).await.unwrap(), b"durable");
        assert!(file.write_all(b"x").await.is_err(), "old handles die with the crash");
        assert_eq!(fs.stats().bytes_lost_on_crash, 5);
    }

    // Goal: a wiped disk is empty — durable files and directories are gone, old handles fail —
    // and usable again as a new disk.
    #[tokio::test]
    async fn wipe_leaves_an_empty_usable_disk() {
        let fs = SimFs::new(4);
        fs.create_dir_all(&p("raft")).await.unwrap();
        let mut file = fs.create(&p("raft/vote")).await.unwrap();
        file.write_all(b"term 7").await.unwrap();
        file.sync().await.unwrap();
        fs.sync_dir(&p("raft")).await.unwrap();
        fs.sync_dir(&p("")).await.unwrap();
        assert_eq!(fs.durable_snapshot().len(), 1);
        fs.wipe();
        assert!(!fs.exists(&p("raft")).await.unwrap());
        assert!(fs.durable_snapshot().is_empty());
        assert_eq!(fs.used_bytes(), 0);
        assert!(file.write_all(b"x").await.is_err(), "old handles die with the disk");
        fs.create_dir_all(&p("raft")).await.unwrap();
        let mut file = fs.create(&p("raft/vote")).await.unwrap();
        file.write_all(b"new").await.unwrap();
        assert_eq!(fs.read(&p("raft/vote")).await.unwrap(), b"new");
    }

    // Goal: a directory entry that was never made durable by sync_dir vanishes on crash, even
    // when the file's contents were fsynced; and a rename is undone unless both directories
    // were synced.
    #[tokio::test]
    async fn directory_entries_need_sync_dir() {
        let fs = SimFs::new(2);
        let mut file = fs.create(&p("a")).await.unwrap();
        file.write_all(b"x").await.unwrap();
        file.sync().await.unwrap();
        fs.crash();
        assert!(!fs.exists(&p("a")).await.unwrap(), "entry was never synced");

        let mut file = fs.create(&p("tmp")).await.unwrap();
        file.write_all(b"new").await.unwrap();
        file.sync().await.unwrap();
        fs.sync_dir(&p("")).await.unwrap();
        fs.rename(&p("tmp"), &p("final")).await.unwrap();
        fs.crash();
        assert!(fs.exists(&p("tmp")).await.unwrap());
        assert!(!fs.exists(&p("final")).await.unwrap());
        fs.rename(&p("tmp"), &p("final")).await.unwrap();
        fs.sync_dir(&p("")).await.unwrap();
        fs.crash();
        assert_eq!(fs.read(&p("final")).await.unwrap(), b"new");
        assert!(!fs.exists(&p("tmp")).await.unwrap());
    }

    // Goal: a removed file comes back after a crash unless the removal was made durable.
    #[tokio::test]
    async fn unsynced_removal_is_undone() {
        let fs = SimFs::new(3);
        let mut file = fs.create(&p("seg")).await.unwrap();
        file.write_all(b"abc").await.unwrap();
        file.sync().await.unwrap();
        fs.sync_dir(&p("")).await.unwrap();
        fs.remove_file(&p("seg")).await.unwrap();
        assert!(!fs.exists(&p("seg")).await.unwrap());
        fs.crash();
        assert_eq!(fs.read(&p("seg")).await.unwrap(), b"abc");
        fs.remove_file(&p("seg")).await.unwrap();
        fs.sync_dir(&p("")).await.unwrap();
        fs.crash();
        assert!(!fs.exists(&p("seg")).await.unwrap());
    }

    // Goal: a failed fsync drops the dirty pages, so a retried fsync "succeeds" over zeros —
    // the behaviour that makes retry-and-ignore lose data.
    #[tokio::test]
    async fn failed_sync_drops_dirty_pages() {
        let fs = SimFs::new(4);
        let mut file = fs.create(&p("wal")).await.unwrap();
        file.write_all(b"ok").await.unwrap();
        file.sync().await.unwrap();
        file.write_all(b"data").await.unwrap();
        fs.set_faults(FaultConfig { sync_eio_probability: 1.0, ..FaultConfig::default() });
        let error = file.sync().await.unwrap_err();
        assert!(super::super::is_io_error(&error));
        fs.set_faults(FaultConfig::default());
        file.sync().await.unwrap();
        assert_eq!(fs.read(&p("wal")).await.unwrap(), b"ok\0\0\0\0");
        assert_eq!(fs.stats().syncs_failed, 1);
    }

    // Goal: writes past the capacity fail with ENOSPC and change nothing; reads keep working.
    #[tokio::test]
    async fn enospc_past_capacity() {
        let fs = SimFs::new(5);
        fs.set_faults(FaultConfig { capacity_bytes: Some(4), ..FaultConfig::default() });
        let mut file = fs.create(&p("f")).await.unwrap();
        file.write_all(b"1234").await.unwrap();
        let error = file.write_all(b"5").await.unwrap_err();
        assert!(super::super::is_no_space(&error));
        assert_eq!(fs.read(&p("f")).await.unwrap(), b"1234");
        assert_eq!(fs.stats().writes_refused_no_space, 1);
    }

    // Goal: torn crashes are deterministic per seed and keep at least the synced prefix.
    async fn torn_run(seed: u64) -> Vec<u8> {
        let fs = SimFs::new(seed);
        let mut file = fs.create(&p("f")).await.unwrap();
        fs.sync_dir(&p("")).await.unwrap();
        file.write_all(&[7u8; 100]).await.unwrap();
        file.sync().await.unwrap();
        file.write_all(&[9u8; 100]).await.unwrap();
        fs.crash();
        fs.read(&p("f")).await.unwrap()
    }

    #[tokio::test]
    async fn torn_crash_is_deterministic_and_keeps_synced_prefix() {
        let mut outcomes = std::collections::BTreeSet::new();
        for seed in 0..20 {
            let a = torn_run(seed).await;
            assert_eq!(a, torn_run(seed).await, "seed {seed}");
            outcomes.insert(a.len());
            assert!(a.len() >= 100);
            assert!(a[..100].iter().all(|b| *b == 7));
        }
        assert!(outcomes.len() > 1, "different seeds tear differently");
    }

    // Goal: read_dir lists entries sorted, and directories created without a parent sync
    // vanish on crash together with their contents.
    #[tokio::test]
    async fn directory_trees() {
        let fs = SimFs::new(6);
        fs.create_dir_all(&p("shards/2/tmp")).await.unwrap();
        fs.create_dir_all(&p("shards/10")).await.unwrap();
        fs.create(&p("shards/2/b")).await.unwrap();
        fs.create(&p("shards/2/a")).await.unwrap();
        assert_eq!(fs.read_dir(&p("shards")).await.unwrap(), vec!["10", "2"]);
        assert_eq!(fs.read_dir(&p("shards/2")).await.unwrap(), vec!["a", "b", "tmp"]);
        fs.sync_dir(&p("")).await.unwrap();
        fs.crash();
        assert!(fs.exists(&p("shards")).await.unwrap());
        assert_eq!(fs.read_dir(&p("shards")).await.unwrap(), Vec::<String>::new());
        fs.remove_dir_all(&p("shards")).await.unwrap();
        assert!(!fs.exists(&p("shards")).await.unwrap());
    }

    // Goal: objects that neither the tree, a crash nor a handle can reach are dropped (memory
    // stays bounded in long simulations), and nothing a crash could bring back is. Method:
    // count the internal objects across removals, directory fsyncs, handle drops and a crash.
    #[tokio::test]
    async fn garbage_is_collected() {
        let fs = SimFs::new(7);
        let counts = |fs: &SimFs| {
            let state = fs.lock();
            (state.dirs.len(), state.inodes.len())
        };
        fs.create_dir_all(&p("d/s")).await.unwrap();
        fs.create(&p("d/s/f")).await.unwrap();
        let handle = fs.create(&p("g")).await.unwrap();
        for dir in ["", "d", "d/s"] {
            fs.sync_dir(&p(dir)).await.unwrap();
        }
        assert_eq!(counts(&fs), (3, 2));
        fs.remove_dir_all(&p("d")).await.unwrap();
        fs.remove_file(&p("g")).await.unwrap();
        fs.sync_dir(&p("d/..")).await.unwrap_err();
        fs.create_dir_all(&p("e")).await.unwrap();
        fs.sync_dir(&p("e")).await.unwrap();
        assert_eq!(counts(&fs), (4, 2), "the removals are not durable: a crash needs them");
        fs.sync_dir(&p("")).await.unwrap();
        assert_eq!(counts(&fs), (2, 1), "`g` is held open, `d` is gone for good");
        drop(handle);
        fs.sync_dir(&p("")).await.unwrap();
        assert_eq!(counts(&fs), (2, 0));
        fs.crash();
        assert_eq!(counts(&fs), (2, 0));
        fs.create_dir_all(&p("tmp/x")).await.unwrap();
        fs.create(&p("tmp/x/f")).await.unwrap();
        fs.crash();
        assert_eq!(counts(&fs), (2, 0), "never durable: dropped by the crash");
    }
}
