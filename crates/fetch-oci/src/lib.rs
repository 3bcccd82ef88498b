//! # wasm-fetch-oci
//!
//! An OCI registry [`Fetcher`](wasm_cache_core::Fetcher). Under construction (issue 5):
//! this crate exposes nothing yet, so nothing can mistake it for a working implementation.
