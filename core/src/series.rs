//! Series identity: (tenant, sorted label set), with a stable 64-bit fingerprint.
//!
//! The fingerprint is xxHash64 (seed 0) over this byte string:
//!
//! ```text
//! tenant-bytes 0xFF ( name-bytes 0xFF value-bytes 0xFF )*   -- labels in sorted order
//! ```
//!
//! `0xFF` never occurs in valid UTF-8, so the encoding is unambiguous. xxHash64 is defined on
//! bytes with little-endian arithmetic, so the value is identical on every platform and build;
//! `fingerprint_golden` pins it. The fingerprint is only a hash: every map keyed by it resolves
//! collisions by comparing the full [`SeriesKey`] (tests force collisions with
//! [`colliding_fingerprint`]).

use serde::{Deserialize, Serialize};

use crate::labels::Labels;

/// A tenant's identifier. `default` when a request names none.
pub type TenantId = String;

/// The tenant used when a request names none.
pub const DEFAULT_TENANT: &str = "default";

/// A 64-bit series fingerprint (hash of tenant and labels).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Fingerprint(pub u64);

/// A function from series identity to fingerprint. Production uses [`fingerprint`]; tests use
/// [`colliding_fingerprint`] to prove that collisions are resolved by comparing labels.
pub type FingerprintFn = fn(&str, &Labels) -> Fingerprint;

const SEPARATOR: u8 = 0xFF;

/// The production fingerprint (see the module documentation for the exact definition).
pub fn fingerprint(tenant: &str, labels: &Labels) -> Fingerprint {
    with_identity_bytes(tenant, labels, |bytes| Fingerprint(xxhash_rust::xxh64::xxh64(bytes, 0)))
}

/// Calls `f` with the series' identity byte string (the module documentation's encoding), built
/// in a per-thread scratch buffer. Hashing it in one call is several times faster than feeding
/// a streaming hasher four small pieces per label, and the fingerprint is on every write's path
/// (profile in docs/benchmarks.md § 7). `f` must not call this function again.
pub fn with_identity_bytes<R>(tenant: &str, labels: &Labels, f: impl FnOnce(&[u8]) -> R) -> R {
    thread_local! {
        static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    SCRATCH.with(|scratch| {
        let mut bytes = scratch.borrow_mut();
        bytes.clear();
        bytes.extend_from_slice(tenant.as_bytes());
        bytes.push(SEPARATOR);
        for label in labels.iter() {
            bytes.extend_from_slice(label.name.as_bytes());
            bytes.push(SEPARATOR);
            bytes.extend_from_slice(label.value.as_bytes());
            bytes.push(SEPARATOR);
        }
        let result = f(&bytes);
        // A huge label set should not pin its buffer for the thread's life.
        if bytes.capacity() > SCRATCH_KEPT_BYTES_MAX {
            *bytes = Vec::new();
        }
        result
    })
}

/// Largest scratch buffer [`with_identity_bytes`] keeps between calls.
const SCRATCH_KEPT_BYTES_MAX: usize = 64 << 10;

/// A fingerprint function that maps every series to one of four values. Tests only.
pub fn colliding_fingerprint(tenant: &str, labels: &Labels) -> Fingerprint {
    Fingerprint(fingerprint(tenant, labels).0 % 4)
}

/// A series' full identity.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SeriesKey {
    pub tenant: TenantId,
    pub labels: Labels,
}

impl SeriesKey {
    pub fn new(tenant: impl Into<TenantId>, labels: Labels) -> Self {
        SeriesKey { tenant: tenant.into(), labels }
    }

    pub fn fingerprint(&self) -> Fingerprint {
        fingerprint(&self.tenant, &self.labels)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Goal: the fingerprint is a fixed function of its documented byte string, identical on
    // every platform. Method: hash the documented encoding by hand with the reference xxh64
    // one-shot function and compare, then pin the value so an accidental change is caught.
    #[test]
    fn fingerprint_golden() {
        let labels = Labels::from_pairs(&[("__name__", "up"), ("job", "node")]);
        let mut bytes = Vec::new();
        bytes.extend_from_slice(b"default\xff__name__\xffup\xffjob\xffnode\xff");
        let by_hand = xxhash_rust::xxh64::xxh64(&bytes, 0);
        assert_eq!(fingerprint("default", &labels).0, by_hand);
        with_identity_bytes("default", &labels, |built| assert_eq!(built, &bytes[..]));
        assert_eq!(by_hand, PINNED_UP_NODE_DEFAULT);
    }

    // Cross-checked with the Python `xxhash` package (an independent implementation of the same
    // spec); a change here would move every series to another shard.
    const PINNED_UP_NODE_DEFAULT: u64 = 12_456_643_643_707_905_601;

    // Goal: the tenant is part of identity; the same labels in two tenants differ.
    #[test]
    fn tenant_is_part_of_identity() {
        let labels = Labels::from_pairs(&[("__name__", "up")]);
        assert_ne!(fingerprint("a", &labels), fingerprint("b", &labels));
        assert_ne!(SeriesKey::new("a", labels.clone()), SeriesKey::new("b", labels));
    }
}
