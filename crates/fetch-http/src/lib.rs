//! # wasm-fetch-http
//!
//! A streaming HTTP(S) [](wasm_cache_core::Fetcher). Under construction (issue 4): this crate exposes nothing yet,
//! so nothing can mistake it for a working implementation.
