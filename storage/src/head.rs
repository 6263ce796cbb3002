//! One shard's head: in-memory series with Gorilla chunks and an inverted index.
//!
//! Each series keeps its in-order samples in closed chunks plus one open chunk, and samples that
//! arrived out of order (older than the series' newest) in a small sorted buffer that is sealed
//! into its own chunks when full. Timestamps within a series are unique: the head refuses a
//! second sample at a timestamp it holds unless the value bits are equal (a duplicate, counted
//! and accepted). Reads merge the three sources, which never share a timestamp.
//!
//! The head knows nothing about time acceptance or the WAL: the engine judges samples and logs
//! them; the head only stores, answers and gives up ranges to blocks.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use sextant_core::chunk::{decode_all, encode_all, ChunkEncoder, ChunkError, CHUNK_SAMPLES_TARGET};
use sextant_core::labels::Labels;
use sextant_core::matcher::Matcher;
use sextant_core::sample::{Sample, TimestampMs};
use sextant_core::series::{Fingerprint, FingerprintFn, SeriesKey};

use crate::index::{Postings, SeriesRef};

/// Per-series cap on buffered out-of-order samples before they are sealed into a chunk.
pub const OOO_BUFFER_SAMPLES_MAX: usize = CHUNK_SAMPLES_TARGET;

/// Account bytes of one in-memory series besides its key and chunk bytes: its slot in the
/// head's series map, its entry in the fingerprint map with that entry's list (one allocation
/// of exactly one (ref, key) pair: a second series under one fingerprint is a rare collision),
/// and the open chunk's first buffer. See `crate::memory`.
const SERIES_OVERHEAD_BYTES: usize = crate::memory::btree_slot_bytes(8 + std::mem::size_of::<MemSeries>())
    + 2 * (8 + std::mem::size_of::<Vec<(SeriesRef, Arc<SeriesKey>)>>())
    + crate::memory::malloc_bytes(std::mem::size_of::<(SeriesRef, Arc<SeriesKey>)>())
    + crate::memory::malloc_bytes(CHUNK_FIRST_BUFFER_BYTES);
/// What a new open chunk's bit writer allocates (`ChunkEncoder::new`: header plus 64 bytes).
const CHUNK_FIRST_BUFFER_BYTES: usize = sextant_core::chunk::CHUNK_HEADER_BYTES + 64;

/// Heap bytes of a series key as the head holds it: the `Arc` around it, the tenant string, the
/// label vector, and each label's name and value strings.
pub fn key_heap_bytes(key: &SeriesKey) -> usize {
    use crate::memory::malloc_bytes;
    malloc_bytes(2 * std::mem::size_of::<usize>() + std::mem::size_of::<SeriesKey>())
        + malloc_bytes(key.tenant.capacity())
        + malloc_bytes(key.labels.len() * std::mem::size_of::<sextant_core::labels::Label>())
        + key.labels.iter().map(|l| malloc_bytes(l.name.capacity()) + malloc_bytes(l.value.capacity())).sum::<usize>()
}

#[derive(Debug, Clone)]
struct ClosedChunk {
    min_t: TimestampMs,
    max_t: TimestampMs,
    bytes: Box<[u8]>,
}

impl ClosedChunk {
    fn from_encoder(encoder: ChunkEncoder) -> Option<ClosedChunk> {
        let min_t = encoder.min_t()?;
        let max_t = encoder.max_t()?;
        Some(ClosedChunk { min_t, max_t, bytes: encoder.into_bytes().into_boxed_slice() })
    }
}

/// One series in the head.
#[derive(Debug)]
pub struct MemSeries {
    pub key: Arc<SeriesKey>,
    closed: Vec<ClosedChunk>,
    open: ChunkEncoder,
    /// Chunks sealed from the out-of-order buffer; they may overlap each other in time but never
    /// share a timestamp with any other sample of the series.
    ooo_chunks: Vec<ClosedChunk>,
    ooo_buffer: BTreeMap<TimestampMs, f64>,
    /// Newest timestamp ever appended in order, and its value (kept across head cuts so that
    /// time acceptance stays correct after the samples move to a block).
    newest: Option<(TimestampMs, f64)>,
    /// Newest timestamp of this series that was moved to a block: samples at or below it may
    /// collide with block data, so the engine checks the blocks for them.
    pub persisted_max_t: Option<TimestampMs>,
}

/// What appending one sample did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadAppend {
    /// Stored.
    Appended,
    /// The same timestamp and value bits were already stored: a success that stores nothing.
    Duplicate,
    /// A different value is stored at this timestamp; the first write wins, this one is refused.
    Conflict { existing_bits: u64 },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeadError {
    #[error("head chunk of series {series} is corrupt: {source}")]
    Chunk { series: String, source: ChunkError },
}

impl MemSeries {
    fn new(key: Arc<SeriesKey>) -> Self {
        MemSeries {
            key,
            closed: Vec::new(),
            open: ChunkEncoder::new(),
            ooo_chunks: Vec::new(),
            ooo_buffer: BTreeMap::new(),
            newest: None,
            persisted_max_t: None,
        }
    }

    /// Newest in-order timestamp ever appended (`None` for a series that never had a sample).
    pub fn newest_t(&self) -> Option<TimestampMs> {
        self.newest.map(|(t, _)| t)
    }

    fn chunk_bytes(&self) -> usize {
        self.closed.iter().chain(&self.ooo_chunks).map(|c| c.bytes.len()).sum::<usize>()
            + self.open.bytes().len()
            + self.ooo_buffer.len() * 16
    }

    fn memory_bytes(&self) -> usize {
        SERIES_OVERHEAD_BYTES + key_heap_bytes(&self.key) + self.chunk_bytes()
    }

    fn is_empty(&self) -> bool {
        self.closed.is_empty() && self.open.num_samples() == 0 && self.ooo_chunks.is_empty() && self.ooo_buffer.is_empty()
    }

    fn corrupt(&self, source: ChunkError) -> HeadError {
        HeadError::Chunk { series: self.key.labels.to_string(), source }
    }

    /// Every sample of the series in `[min_t, max_t]`, sorted by time.
    pub fn samples(&self, min_t: TimestampMs, max_t: TimestampMs) -> Result<Vec<Sample>, HeadError> {
        let mut out = Vec::new();
        let overlapping = |min: TimestampMs, max: TimestampMs, bytes: &[u8], out: &mut Vec<Sample>| {
            if max < min_t || min > max_t {
                return Ok(());
            }
            for (t, v) in decode_all(bytes).map_err(|e| self.corrupt(e))? {
                if t >= min_t && t <= max_t {
                    out.push(Sample::new(t, v));
                }
            }
            Ok::<(), HeadError>(())
        };
        for chunk in self.closed.iter().chain(&self.ooo_chunks) {
            overlapping(chunk.min_t, chunk.max_t, &chunk.bytes, &mut out)?;
        }
        if let (Some(min), Some(max)) = (self.open.min_t(), self.open.max_t()) {
            overlapping(min, max, self.open.bytes(), &mut out)?;
        }
        out.extend(self.ooo_buffer.range(min_t..=max_t).map(|(t, v)| Sample::new(*t, *v)));
        // The in-order chunks come out sorted; out-of-order data interleaves, so sort when any
        // exists. Timestamps are unique within a series, so the sort needs no tie rule.
        if !self.ooo_chunks.is_empty() || !self.ooo_buffer.is_empty() {
            out.sort_by_key(|s| s.t);
        }
        debug_assert!(out.windows(2).all(|w| w[0].t < w[1].t), "head series timestamps unique");
        Ok(out)
    }

    /// The value stored at exactly `t`, if any.
    fn value_at(&self, t: TimestampMs) -> Result<Option<f64>, HeadError> {
        if let Some(v) = self.ooo_buffer.get(&t) {
            return Ok(Some(*v));
        }
        Ok(self.samples(t, t)?.first().map(|s| s.v))
    }

    fn append(&mut self, t: TimestampMs, v: f64) -> Result<HeadAppend, HeadError> {
        match self.newest {
            Some((newest_t, _)) if t <= newest_t => {
                if let Some(existing) = self.value_at(t)? {
                    return Ok(if existing.to_bits() == v.to_bits() {
                        HeadAppend::Duplicate
                    } else {
                        HeadAppend::Conflict { existing_bits: existing.to_bits() }
                    });
                }
                self.ooo_buffer.insert(t, v);
                if self.ooo_buffer.len() >= OOO_BUFFER_SAMPLES_MAX {
                    let samples: Vec<(i64, f64)> = std::mem::take(&mut self.ooo_buffer).into_iter().collect();
                    let bytes = encode_all(&samples).map_err(|e| self.corrupt(e))?;
                    let min_t = samples.first().expect("buffer was full").0;
                    let max_t = samples.last().expect("buffer was full").0;
                    self.ooo_chunks.push(ClosedChunk { min_t, max_t, bytes: bytes.into_boxed_slice() });
                }
                Ok(HeadAppend::Appended)
            }
            _ => {
                if self.open.num_samples() >= CHUNK_SAMPLES_TARGET {
                    let full = std::mem::take(&mut self.open);
                    if let Some(chunk) = ClosedChunk::from_encoder(full) {
                        self.closed.push(chunk);
                    }
                }
                self.open.append(t, v).map_err(|e| self.corrupt(e))?;
                self.newest = Some((t, v));
                Ok(HeadAppend::Appended)
            }
        }
    }

    /// Replaces the series' chunks with `samples` (sorted, unique timestamps), all in order.
    fn rebuild(&mut self, samples: Vec<Sample>) -> Result<(), HeadError> {
        self.closed.clear();
        self.ooo_chunks.clear();
        self.ooo_buffer.clear();
        self.open = ChunkEncoder::new();
        for sample in samples {
            if self.open.num_samples() >= CHUNK_SAMPLES_TARGET {
                if let Some(chunk) = ClosedChunk::from_encoder(std::mem::take(&mut self.open)) {
                    self.closed.push(chunk);
                }
            }
            self.open.append(sample.t, sample.v).map_err(|e| self.corrupt(e))?;
        }
        Ok(())
    }

    /// Removes the samples at the given timestamps (sorted; all stored: the engine copied them
    /// from this series earlier) and returns how many it removed; the rest is re-encoded, in
    /// order. Samples that arrived after the copy stay, even when older than the copied ones.
    fn take_copied(&mut self, copied: &[TimestampMs]) -> Result<usize, HeadError> {
        let Some(last_copied) = copied.last().copied() else { return Ok(0) };
        let all = self.samples(TimestampMs::MIN, TimestampMs::MAX)?;
        let total = all.len();
        let mut kept = Vec::with_capacity(total.saturating_sub(copied.len()));
        let mut next = copied.iter().peekable();
        for sample in all {
            // Both lists are sorted by time, so one pass matches them.
            while next.next_if(|t| **t < sample.t).is_some() {}
            if next.next_if(|t| **t == sample.t).is_none() {
                kept.push(sample);
            }
        }
        let taken = total - kept.len();
        // `newest` stays the acceptance reference even when nothing is kept.
        self.rebuild(kept)?;
        self.persisted_max_t = Some(self.persisted_max_t.map_or(last_copied, |p| p.max(last_copied)));
        Ok(taken)
    }

    /// Oldest and newest stored timestamps, from chunk headers and the buffer (no decoding).
    fn time_range(&self) -> Option<(TimestampMs, TimestampMs)> {
        let chunks = self.closed.iter().chain(&self.ooo_chunks).map(|c| (c.min_t, c.max_t));
        let open = self.open.min_t().zip(self.open.max_t());
        let buffer = self.ooo_buffer.first_key_value().map(|(t, _)| *t).zip(self.ooo_buffer.last_key_value().map(|(t, _)| *t));
        chunks.chain(open).chain(buffer).reduce(|(a0, a1), (b0, b1)| (a0.min(b0), a1.max(b1)))
    }

    /// Removes samples in `[min_t, max_t]` (a deletion). Returns how many were removed.
    fn delete_range(&mut self, min_t: TimestampMs, max_t: TimestampMs) -> Result<usize, HeadError> {
        let all = self.samples(TimestampMs::MIN, TimestampMs::MAX)?;
        let before = all.len();
        let kept: Vec<Sample> = all.into_iter().filter(|s| s.t < min_t || s.t > max_t).collect();
        let removed = before - kept.len();
        if removed == 0 {
            return Ok(0);
        }
        self.rebuild(kept)?;
        Ok(removed)
    }
}

/// One shard's head.
#[derive(Debug)]
pub struct Head {
    series: BTreeMap<SeriesRef, MemSeries>,
    /// Lookup only (never iterated): fingerprint → (ref, key) of the series with it, whose keys
    /// must still be compared. The key is the series' own `Arc`, kept here so the comparison on
    /// every write does not first walk the series map (profile: docs/benchmarks.md § 7).
    by_fingerprint: HashMap<Fingerprint, Vec<(SeriesRef, Arc<SeriesKey>)>>,
    postings: Postings,
    fingerprint_fn: FingerprintFn,
    ref_next: SeriesRef,
    min_t: Option<TimestampMs>,
    max_t: Option<TimestampMs>,
    memory_bytes: usize,
}

impl Head {
    pub fn new(fingerprint_fn: FingerprintFn) -> Self {
        Head {
            series: BTreeMap::new(),
            by_fingerprint: HashMap::new(),
            postings: Postings::new(),
            fingerprint_fn,
            ref_next: 1,
            min_t: None,
            max_t: None,
            memory_bytes: 0,
        }
    }

    pub fn series_count(&self) -> usize {
        self.series.len()
    }

    pub fn postings(&self) -> &Postings {
        &self.postings
    }

    /// Estimated bytes of series, chunks and postings.
    pub fn memory_bytes(&self) -> usize {
        self.memory_bytes + self.postings.memory_bytes()
    }

    /// Account bytes a new series with this key will take before its first sample's chunk
    /// bytes: the series itself and one posting ref per label plus its ref in the tenant's set
    /// (a label value new to the shard costs more, charged when it is created).
    pub fn series_cost_bytes(key: &SeriesKey) -> usize {
        SERIES_OVERHEAD_BYTES + key_heap_bytes(key) + crate::index::ALL_REF_BYTES + crate::index::POSTING_REF_BYTES * key.labels.len()
    }

    pub fn min_t(&self) -> Option<TimestampMs> {
        self.min_t
    }

    pub fn max_t(&self) -> Option<TimestampMs> {
        self.max_t
    }

    /// The ref of an existing series, comparing full keys on fingerprint collisions.
    pub fn lookup(&self, key: &SeriesKey) -> Option<SeriesRef> {
        let fingerprint = (self.fingerprint_fn)(&key.tenant, &key.labels);
        let refs = self.by_fingerprint.get(&fingerprint)?;
        refs.iter().find(|(_, k)| **k == *key).map(|(r, _)| *r)
    }

    pub fn get(&self, series_ref: SeriesRef) -> Option<&MemSeries> {
        self.series.get(&series_ref)
    }

    /// The next ref [`Head::create`] will assign.
    pub fn ref_next(&self) -> SeriesRef {
        self.ref_next
    }

    /// Creates a series with the next ref. The caller has checked it does not exist.
    pub fn create(&mut self, key: SeriesKey) -> SeriesRef {
        let series_ref = self.ref_next;
        self.insert_with_ref(series_ref, key);
        series_ref
    }

    /// Creates a series under a given ref (WAL replay). Refs are never reused.
    pub fn insert_with_ref(&mut self, series_ref: SeriesRef, key: SeriesKey) {
        assert!(!self.series.contains_key(&series_ref), "series ref {series_ref} reused");
        assert!(self.lookup(&key).is_none(), "series {} created twice", key.labels);
        let fingerprint = (self.fingerprint_fn)(&key.tenant, &key.labels);
        self.postings.add(&key.tenant, &key.labels, series_ref);
        let series = MemSeries::new(Arc::new(key));
        self.memory_bytes += series.memory_bytes();
        match self.by_fingerprint.entry(fingerprint) {
            std::collections::hash_map::Entry::Occupied(mut colliding) => colliding.get_mut().push((series_ref, series.key.clone())),
            // Exactly one slot: `push` on an empty Vec would allocate four.
            std::collections::hash_map::Entry::Vacant(slot) => {
                slot.insert(vec![(series_ref, series.key.clone())]);
            }
        }
        self.series.insert(series_ref, series);
        self.ref_next = self.ref_next.max(series_ref + 1);
    }

    /// Records that blocks may hold samples of this series up to `bound` (a series created in
    /// the head while blocks exist cannot know which of their samples are its own).
    pub fn note_block_bound(&mut self, series_ref: SeriesRef, bound: Option<TimestampMs>) {
        if let (Some(series), Some(bound)) = (self.series.get_mut(&series_ref), bound) {
            series.persisted_max_t = Some(series.persisted_max_t.map_or(bound, |p| p.max(bound)));
        }
    }

    /// Appends one sample to an existing series. Time acceptance is the caller's.
    pub fn append(&mut self, series_ref: SeriesRef, t: TimestampMs, v: f64) -> Result<HeadAppend, HeadError> {
        let series = self.series.get_mut(&series_ref).expect("append to an unknown series ref");
        // Only the chunk bytes change on an append; labels are counted once at creation.
        let before = series.chunk_bytes();
        let outcome = series.append(t, v)?;
        let after = series.chunk_bytes();
        self.memory_bytes = (self.memory_bytes + after).saturating_sub(before);
        if outcome == HeadAppend::Appended {
            self.min_t = Some(self.min_t.map_or(t, |m| m.min(t)));
            self.max_t = Some(self.max_t.map_or(t, |m| m.max(t)));
        }
        Ok(outcome)
    }

    /// Refs selected by the matchers, ascending.
    pub fn select(&self, tenant: &str, matchers: &[Matcher]) -> Vec<SeriesRef> {
        self.postings.select(tenant, matchers)
    }

    /// Removes, per series, the samples the engine copied into a block (`copied`: refs with
    /// their copied timestamps, sorted) and returns how many it removed. Series left with no
    /// samples and whose newest sample is older than `before_t` are dropped from the head
    /// entirely, except those in `keep`: the engine passes the series that writes in flight
    /// (judged, waiting for their WAL fsync) will append to.
    pub fn take_copied(
        &mut self,
        before_t: TimestampMs,
        copied: &[(SeriesRef, Vec<TimestampMs>)],
        keep: &std::collections::BTreeSet<SeriesRef>,
    ) -> Result<u64, HeadError> {
        let mut taken = 0u64;
        let mut emptied = Vec::new();
        for (series_ref, timestamps) in copied {
            // Only a cut removes series, and cuts do not overlap, so every copied series is here.
            let series = self.series.get_mut(series_ref).expect("a copied series is still in the head");
            taken += series.take_copied(timestamps)? as u64;
            if series.is_empty() && series.newest_t().is_none_or(|t| t < before_t) && !keep.contains(series_ref) {
                emptied.push(*series_ref);
            }
        }
        for series_ref in emptied {
            self.remove_series(series_ref);
        }
        self.recompute();
        Ok(taken)
    }

    fn remove_series(&mut self, series_ref: SeriesRef) {
        let Some(series) = self.series.remove(&series_ref) else { return };
        let fingerprint = (self.fingerprint_fn)(&series.key.tenant, &series.key.labels);
        if let Some(refs) = self.by_fingerprint.get_mut(&fingerprint) {
            refs.retain(|(r, _)| *r != series_ref);
            if refs.is_empty() {
                self.by_fingerprint.remove(&fingerprint);
            }
        }
        self.postings.remove(&series.key.tenant, &series.key.labels, series_ref);
    }

    /// Deletes samples of the selected series in `[min_t, max_t]`; returns samples removed.
    pub fn delete(&mut self, tenant: &str, matchers: &[Matcher], min_t: TimestampMs, max_t: TimestampMs) -> Result<usize, HeadError> {
        let mut removed = 0;
        for series_ref in self.select(tenant, matchers) {
            let series = self.series.get_mut(&series_ref).expect("selected refs exist");
            removed += series.delete_range(min_t, max_t)?;
        }
        self.recompute();
        Ok(removed)
    }

    /// Recomputes min/max time and memory after a bulk change (from chunk headers: this runs
    /// under the shard's write lock).
    fn recompute(&mut self) {
        let mut min_t = None;
        let mut max_t = None;
        let mut memory_bytes = 0;
        for series in self.series.values() {
            memory_bytes += series.memory_bytes();
            if let Some((first, last)) = series.time_range() {
                min_t = Some(min_t.map_or(first, |m: i64| m.min(first)));
                max_t = Some(max_t.map_or(last, |m: i64| m.max(last)));
            }
        }
        self.min_t = min_t;
        self.max_t = max_t;
        self.memory_bytes = memory_bytes;
    }

    /// Every live series ref with its key, ascending (for checkpoints and reports).
    pub fn series_keys(&self) -> impl Iterator<Item = (SeriesRef, &Arc<SeriesKey>)> {
        self.series.iter().map(|(r, s)| (*r, &s.key))
    }

    /// Every series, ascending ref.
    pub fn series_iter(&self) -> impl Iterator<Item = (SeriesRef, &MemSeries)> {
        self.series.iter().map(|(r, s)| (*r, s))
    }

    pub fn contains_ref(&self, series_ref: SeriesRef) -> bool {
        self.series.contains_key(&series_ref)
    }

    /// Labels of a series (convenience for reads).
    pub fn labels(&self, series_ref: SeriesRef) -> Option<&Labels> {
        self.series.get(&series_ref).map(|s| &s.key.labels)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sextant_core::series::{colliding_fingerprint, fingerprint};

    fn key(tenant: &str, name: &str, instance: &str) -> SeriesKey {
        SeriesKey::new(tenant, Labels::from_pairs(&[("__name__", name), ("instance", instance)]))
    }

    // Goal: series identity survives forced fingerprint collisions: four fingerprints for many
    // series, and every lookup still finds exactly its own series.
    #[test]
    fn collisions_resolved_by_labels() {
        let mut head = Head::new(colliding_fingerprint);
        let keys: Vec<SeriesKey> = (0..40).map(|i| key(if i % 2 == 0 { "a" } else { "b" }, "m", &i.to_string())).collect();
        let refs: Vec<SeriesRef> = keys.iter().map(|k| head.create(k.clone())).collect();
        for (k, r) in keys.iter().zip(&refs) {
            assert_eq!(head.lookup(k), Some(*r));
            head.append(*r, 1000, *r as f64).unwrap();
        }
        for (k, r) in keys.iter().zip(&refs) {
            let s = head.get(head.lookup(k).unwrap()).unwrap();
            assert_eq!(s.samples(0, 2000).unwrap(), vec![Sample::new(1000, *r as f64)]);
        }
    }

    // Goal: in-order, out-of-order, duplicate and conflicting appends, and reads that merge
    // the sources. Method: compare with a BTreeMap model after each step.
    #[test]
    fn append_rules_against_model() {
        let mut head = Head::new(fingerprint);
        let r = head.create(key("t", "m", "x"));
        let mut model: BTreeMap<i64, u64> = BTreeMap::new();
        let steps: Vec<(i64, f64, HeadAppend)> = vec![
            (100, 1.0, HeadAppend::Appended),
            (200, 2.0, HeadAppend::Appended),
            (200, 2.0, HeadAppend::Duplicate),
            (200, 3.0, HeadAppend::Conflict { existing_bits: 2.0f64.to_bits() }),
            (150, 1.5, HeadAppend::Appended),
            (150, 1.5, HeadAppend::Duplicate),
            (150, f64::NAN, HeadAppend::Conflict { existing_bits: 1.5f64.to_bits() }),
            (300, -0.0, HeadAppend::Appended),
            (50, sextant_core::sample::stale_nan(), HeadAppend::Appended),
        ];
        for (t, v, expected) in steps {
            assert_eq!(head.append(r, t, v).unwrap(), expected, "t={t}");
            if expected == HeadAppend::Appended {
                model.insert(t, v.to_bits());
            }
            let got: Vec<(i64, u64)> = head.get(r).unwrap().samples(i64::MIN, i64::MAX).unwrap().iter().map(|s| (s.t, s.v.to_bits())).collect();
            let want: Vec<(i64, u64)> = model.iter().map(|(t, b)| (*t, *b)).collect();
            assert_eq!(got, want);
        }
        // Many out-of-order samples seal into chunks and still read back in order.
        for t in (400..400 + 3 * OOO_BUFFER_SAMPLES_MAX as i64).rev() {
            head.append(r, t + 10_000, t as f64).unwrap();
        }
        let all = head.get(r).unwrap().samples(i64::MIN, i64::MAX).unwrap();
        assert!(all.windows(2).all(|w| w[0].t < w[1].t));
        assert_eq!(all.len(), model.len() + 3 * OOO_BUFFER_SAMPLES_MAX);
    }

    /// Copies what a cut would: per series, the timestamps below `before_t`.
    fn copy_before(head: &Head, before_t: TimestampMs) -> Vec<(SeriesRef, Vec<TimestampMs>)> {
        head.series_iter()
            .map(|(r, s)| (r, s.samples(TimestampMs::MIN, before_t - 1).unwrap().iter().map(|x| x.t).collect::<Vec<_>>()))
            .filter(|(_, ts)| !ts.is_empty())
            .collect()
    }

    // Goal: take_copied gives up exactly the copied samples, keeps the rest, drops a series left
    // empty and old, and remembers the newest timestamp for later acceptance decisions.
    #[test]
    fn take_copied_splits_exactly() {
        let mut head = Head::new(fingerprint);
        let a = head.create(key("t", "m", "a"));
        let b = head.create(key("t", "m", "b"));
        for t in 0..500 {
            head.append(a, t * 10, t as f64).unwrap();
        }
        head.append(b, 5, 1.0).unwrap();
        let copied = copy_before(&head, 2000);
        assert_eq!(copied.iter().map(|(_, ts)| ts.len()).collect::<Vec<_>>(), vec![200, 1]);
        assert_eq!(head.take_copied(2000, &copied, &Default::default()).unwrap(), 201);
        assert!(head.get(b).is_none(), "series b is empty and old: dropped");
        let rest = head.get(a).unwrap().samples(i64::MIN, i64::MAX).unwrap();
        assert_eq!(rest.len(), 300);
        assert_eq!(rest[0].t, 2000);
        assert_eq!(head.get(a).unwrap().persisted_max_t, Some(1990));
        assert_eq!((head.min_t(), head.max_t()), (Some(2000), Some(4990)));
        assert_eq!(head.append(a, 4990, 1.0).unwrap(), HeadAppend::Conflict { existing_bits: 499f64.to_bits() });
    }

    // Goal: samples that arrive between the copy and the take stay in the head, even below the
    // cut time: out-of-order ones, in-order ones of a series that lags, and a new series' (a cut
    // writes its block outside the shard lock, so writes go on meanwhile). The head's time range
    // after the take covers exactly what it kept.
    #[test]
    fn take_copied_keeps_samples_written_after_the_copy() {
        let mut head = Head::new(fingerprint);
        let fast = head.create(key("t", "m", "fast"));
        let lagging = head.create(key("t", "m", "lagging"));
        for t in 0..300 {
            head.append(fast, t * 10, 1.0).unwrap();
        }
        head.append(lagging, 100, 1.0).unwrap();
        let copied = copy_before(&head, 2000);
        // Written while the block is being written.
        assert_eq!(head.append(fast, 15, 2.0).unwrap(), HeadAppend::Appended, "out of order, below the cut");
        assert_eq!(head.append(lagging, 500, 3.0).unwrap(), HeadAppend::Appended, "in order, below the cut");
        let late = head.create(key("t", "m", "late"));
        head.append(late, 700, 4.0).unwrap();
        assert_eq!(head.take_copied(2000, &copied, &Default::default()).unwrap(), 201);
        let read = |r: SeriesRef| head.get(r).unwrap().samples(i64::MIN, 1999).unwrap();
        assert_eq!(read(fast), vec![Sample::new(15, 2.0)]);
        assert_eq!(read(lagging), vec![Sample::new(500, 3.0)]);
        assert_eq!(read(late), vec![Sample::new(700, 4.0)]);
        assert_eq!(head.get(fast).unwrap().samples(2000, i64::MAX).unwrap().len(), 100);
        assert_eq!((head.min_t(), head.max_t()), (Some(15), Some(2990)));
        assert_eq!(head.get(lagging).unwrap().persisted_max_t, Some(100));
    }
}
