//! Routing a series to a shard.
//!
//! A series belongs to shard `fingerprint % shard_count`, where the fingerprint is
//! `sextant_core::series::fingerprint(tenant, labels)` (xxHash64 of tenant and sorted labels).
//! This is the single-node rule; the cluster's shard map (a later issue) keeps the same
//! function for the shard id and maps shard ids to nodes. Changing it moves every series.

use sextant_core::series::Fingerprint;

/// The shard of a series with `fingerprint`, among shards `0..shard_count`.
/// Panics if `shard_count` is zero (a configuration error caught at start-up).
pub fn shard_for(fingerprint: Fingerprint, shard_count: u32) -> u32 {
    assert!(shard_count > 0, "shard_for: shard_count must be positive");
    (fingerprint.0 % u64::from(shard_count)) as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    use sextant_core::labels::Labels;
    use sextant_core::series::fingerprint;

    // Goal: routing is the documented modulo of the pinned fingerprint, and stays in range.
    #[test]
    fn routing_is_fingerprint_modulo() {
        let labels = Labels::from_pairs(&[("__name__", "up"), ("job", "node")]);
        let fp = fingerprint("default", &labels);
        assert_eq!(fp.0, 12_456_643_643_707_905_601);
        assert_eq!(shard_for(fp, 16), (12_456_643_643_707_905_601u64 % 16) as u32);
        for n in 1..40 {
            assert!(shard_for(Fingerprint(u64::MAX), n) < n);
        }
    }
}
