//! Placeholder; see Cargo.toml description.
