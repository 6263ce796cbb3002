//! Simulated filesystem (being written).
