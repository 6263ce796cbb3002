//! sextant-storage: the node's TSDB.
pub mod acceptance;
pub mod block;
pub mod clock;
pub mod engine;
pub mod fs;
pub mod head;
pub mod index;
pub mod memory;
pub mod varint;
pub mod wal;
