//! The head's memory account against what it really allocates.
//!
//! `--memory-max` only bounds the node's memory if `Head::memory_bytes` (and the cost the
//! engine charges for a new series before creating it, `Head::series_cost_bytes`) is close to
//! what the head allocates. This test binary counts every allocation with a global allocator
//! (live bytes as glibc's malloc lays them out: request + 8-byte header, rounded up to 16,
//! at least 32) and compares it with the account for node_exporter-shaped series — one sample
//! each, as in a cardinality bomb, where the labels and indexes are the whole cost.
//! Deterministic: allocation sizes depend only on the input. No timing.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use sextant_core::labels::{Label, Labels};
use sextant_core::series::{fingerprint, SeriesKey};
use sextant_core::testdata::{parse_exposition, NODE_EXPORTER_1_5_SCRAPE};
use sextant_storage::head::Head;

struct Counting;

static LIVE_BYTES: AtomicUsize = AtomicUsize::new(0);

/// What glibc's malloc uses for a request of `size` bytes on 64-bit Linux.
fn footprint(size: usize) -> usize {
    ((size + 8).div_ceil(16) * 16).max(32)
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE_BYTES.fetch_add(footprint(layout.size()), Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE_BYTES.fetch_sub(footprint(layout.size()), Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE_BYTES.fetch_sub(footprint(layout.size()), Ordering::Relaxed);
        LIVE_BYTES.fetch_add(footprint(new_size), Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// node_exporter's series for `hosts` hosts (each with its own `instance`).
fn bomb_keys(hosts: usize) -> Vec<SeriesKey> {
    let templates = parse_exposition(NODE_EXPORTER_1_5_SCRAPE).expect("the scrape parses");
    let mut keys = Vec::new();
    for host in 0..hosts {
        for template in &templates {
            let mut labels: Vec<Label> = template.labels.iter().filter(|l| l.name != "instance" && l.name != "job").cloned().collect();
            labels.push(Label::new("instance", format!("host-{host}:9100")));
            labels.push(Label::new("job", "node"));
            keys.push(SeriesKey::new("default", Labels::from_unsorted(labels).expect("valid labels")));
        }
    }
    keys
}

// Goal: for a cardinality bomb's series, the head's account is within 25% of the bytes it
// really holds, and the cost charged before creating each series adds up to the account.
// (Before this test the account was about a third of the real footprint, so a 128 MiB budget
// let the head grow to ~400 MiB.)
#[test]
fn head_memory_account_matches_allocations() {
    // The keys (label strings) are allocated by the request decoder and moved into the head,
    // so they count as the head's: measured here, before the head exists.
    let start = LIVE_BYTES.load(Ordering::Relaxed);
    let keys = bomb_keys(40);
    let keys_bytes = LIVE_BYTES.load(Ordering::Relaxed) - start;
    let charged: usize = keys.iter().map(Head::series_cost_bytes).sum();
    let mut head = Head::new(fingerprint);
    let before = LIVE_BYTES.load(Ordering::Relaxed) - keys_bytes;
    for (i, key) in keys.into_iter().enumerate() {
        let r = head.create(key);
        head.append(r, 1_700_000_000_000 + i as i64, 1.0).expect("append");
    }
    let allocated = LIVE_BYTES.load(Ordering::Relaxed) - before;
    let account = head.memory_bytes();
    let series = head.series_count();
    println!("{series} series: allocated {allocated} B ({} B/series, keys {} B/series), account {account} B ({} B/series), charged before creation {charged} B", allocated / series, keys_bytes / series, account / series);
    let ratio = account as f64 / allocated as f64;
    assert!((0.8..=1.25).contains(&ratio), "account / allocated = {ratio:.2} (allocated {allocated} B, account {account} B for {series} series)");
    let charged_ratio = charged as f64 / account as f64;
    assert!((0.8..=1.25).contains(&charged_ratio), "charged before creation / account = {charged_ratio:.2}");
}
