//! The Gorilla chunk codec (to be written).
