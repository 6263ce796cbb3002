//! How the memory account counts bytes.
//!
//! `--memory-max` refuses new series when the account reaches it, so the account must be what
//! the process really holds for them, not the payload bytes: a series of short labels costs
//! several times its label bytes in allocation headers, string and vector buffers, map slots
//! and index entries. Every structure the head keeps per series is charged through
//! [`malloc_bytes`] for each of its heap allocations, plus slot sizes of the maps that hold it.
//! `storage/tests/memory_account.rs` checks the account against a counting allocator for
//! node_exporter-shaped series (within 20%).

/// Heap bytes glibc's malloc takes for one allocation of `size` bytes on 64-bit Linux: the
/// request plus an 8-byte header, rounded up to 16, at least 32. Nothing for an empty request
/// (empty strings and vectors do not allocate).
pub const fn malloc_bytes(size: usize) -> usize {
    let chunk = (size + 8).div_ceil(16) * 16;
    if size == 0 {
        0
    } else if chunk < 32 {
        32
    } else {
        chunk
    }
}

/// The bytes one entry of `entry_bytes` takes in a B-tree map or set: B-tree nodes are between
/// half and completely full, about two thirds on average.
pub const fn btree_slot_bytes(entry_bytes: usize) -> usize {
    entry_bytes * 3 / 2
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malloc_bytes_table() {
        for (size, expected) in [(0, 0), (1, 32), (24, 32), (25, 48), (40, 48), (41, 64), (64, 80), (100, 112)] {
            assert_eq!(malloc_bytes(size), expected, "size {size}");
        }
    }
}
