//! sextant-storage: the node's TSDB.
pub mod clock;
pub mod fs;
pub mod block;
