//! # wasm-cache-testkit
//!
//! Test support: a real registry and HTTP server on loopback. Under construction (issue 5): this crate exposes nothing yet,
//! so nothing can mistake it for a working implementation.
