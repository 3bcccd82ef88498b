//! # wasm-store-fs
//!
//! A crash-safe, content-addressed module store. Under construction (issue 3): this crate exposes nothing yet,
//! so nothing can mistake it for a working implementation.
