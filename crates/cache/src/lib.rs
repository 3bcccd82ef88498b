//! # wasm-cache
//!
//! The composed module cache. Under construction (issue 6): this crate exposes nothing yet,
//! so nothing can mistake it for a working implementation.
