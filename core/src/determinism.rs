//! The determinism shim (to be written).
