//! # wasm-cache
//!
//! A verified, content-addressed local cache of WebAssembly modules fetched
//! over HTTP(S) and from OCI registries: it turns
//! `oci://ghcr.io/org/filter:v1` into the path of a local file holding a
//! verified Wasm binary, on every config push, for months without a restart.
//!
//! [`Cache::get`] is the reference's `Get` (Istio's `pkg/wasm`): URL, optional
//! checksum, resource name and version, timeout, pull secret and pull policy
//! in, local path out, with the same lookup and pull-policy rules and error
//! wording. [`Cache::shutdown`] is its `Cleanup`. Beyond the reference:
//!
//! - **single flight**: concurrent gets of one missing module download it once;
//!   distinct modules download in parallel (no global lock);
//! - **streaming and crash safety**: modules are hashed while they are written
//!   to a temporary file and appear at `<dir>/<sha256>.wasm` only complete and
//!   verified (see `wasm-store-fs`);
//! - **restart**: the index (entries, per-URL checksum records, last use) is
//!   journaled in the directory and recovered, so a restart re-downloads
//!   nothing; recovered files are re-hashed once before they are first served;
//! - **no dangling paths**: a hit whose file vanished is a miss that fetches
//!   again; hits make no system call, a watch of the directory (inotify) tells
//!   the cache when a file is deleted or replaced behind its back (see
//!   [`CacheBuilder::watch_directory`]);
//! - **bounded size**: besides idle expiry (counted from the last `get`), an
//!   optional byte budget evicts least recently used modules, never one
//!   handed out within the grace period;
//! - a failed `Always` pull does not record the new resource version;
//! - [`Cache::get_detailed`] reports the module's hash, size, manifest digest
//!   and whether it was cached; [`Cache::resolve`] names the digest a URL
//!   points at now without storing anything.
//!
//! Design: this crate only composes. Rules live in `wasm-cache-core`, files in
//! `wasm-store-fs`, network in the fetchers (`wasm-fetch-http`,
//! `wasm-fetch-oci`), each replaceable per scheme with any
//! `Arc<dyn Fetcher>` ([`CacheBuilder::fetcher`]).
//!
//! ## Features
//! - `http` (default): our HTTP(S) fetcher, `wasm-fetch-http`, for `http` and
//!   `https` URLs;
//! - `oci` (default): our OCI fetcher, `wasm-fetch-oci`, for `oci` URLs.
//!
//! With `default-features = false` neither fetcher crate (nor hyper, rustls or
//! oci-client) is built; bring your own with [`CacheBuilder::fetcher`] and the
//! [`fetcher`] module. A URL whose scheme has no fetcher fails with
//! `unsupported Wasm module downloading URL scheme`.
//!
//! ## Observability
//! `tracing` events (URLs redacted, never secrets) and three metrics through the
//! [`metrics`](::metrics) facade, with Istio's names: [`metrics::CACHE_ENTRIES`]
//! (`wasm_cache_entries`, gauge), [`metrics::LOOKUP_COUNT`]
//! (`wasm_cache_lookup_count{hit}`) and [`metrics::REMOTE_FETCH_COUNT`]
//! (`wasm_remote_fetch_count{result,source}`, `source` being `upstream` or
//! `mirror`: which kind of host served it, see [`CacheBuilder::mirror`]).
//!
//! ## Example
//! A cache whose `https` fetcher is replaced by an in-memory one (any
//! `Arc<dyn Fetcher>` can be plugged in the same way):
//!
//! ```
//! use std::sync::Arc;
//! use wasm_cache::{Cache, GetRequest, Scheme};
//! use wasm_cache_conformance::MemoryFetcher;
//!
//! # tokio::runtime::Runtime::new()?.block_on(async {
//! let dir = tempfile::tempdir()?;
//! let upstream = Arc::new(MemoryFetcher::new());
//! upstream.insert("https://example.com/filter.wasm", b"\0asm\x01\0\0\0".to_vec(), None);
//! let cache = Cache::builder(dir.path())
//!     .fetcher(Scheme::Https, upstream.clone())
//!     .build()
//!     .await?;
//! let req = GetRequest::new("https://example.com/filter.wasm").resource("ns/plugin", "1");
//! let path = cache.get(&req).await?;
//! assert_eq!(std::fs::read(&path)?, b"\0asm\x01\0\0\0");
//! // Same resource version: served from the cache, no second download.
//! assert_eq!(cache.get(&req).await?, path);
//! assert_eq!(upstream.fetch_count(), 1);
//! cache.shutdown().await?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # })?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! The same over real HTTP, from a one-shot server on loopback that the
//! example starts (hidden lines; it needs nothing but the standard library):
//!
//! ```
//! use wasm_cache::{Cache, GetRequest};
//!
//! # use std::io::{Read as _, Write as _};
//! # let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
//! # let url = format!("http://{}/filter.wasm", listener.local_addr()?);
//! # std::thread::spawn(move || {
//! #     let (mut conn, _) = listener.accept().unwrap();
//! #     let mut request = [0u8; 4096];
//! #     let _ = conn.read(&mut request);
//! #     let body = b"\0asm\x01\0\0\0";
//! #     let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n", body.len());
//! #     conn.write_all(head.as_bytes()).and_then(|()| conn.write_all(body)).unwrap();
//! # });
//! # tokio::runtime::Runtime::new()?.block_on(async {
//! let dir = tempfile::tempdir()?;
//! let cache = Cache::builder(dir.path()).build().await?;
//! let path = cache.get(&GetRequest::new(url)).await?;
//! assert_eq!(std::fs::read(&path)?, b"\0asm\x01\0\0\0");
//! cache.shutdown().await?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # })?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#[doc = include_str!("../../../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct CrateReadmeDoctests;

mod backends;
mod builder;
mod cache;
mod clock;
mod error;
pub mod fetcher;
mod lazy;
pub mod metrics;
mod outcome;
mod request;

pub use crate::builder::{
    CacheBuilder, DEFAULT_EXPIRY, DEFAULT_GRACE, DEFAULT_PURGE_INTERVAL, NO_WATCH_ENV,
};
pub use crate::cache::{Cache, PurgeReport};
pub use crate::clock::{Clock, ManualClock, SystemClock};
pub use crate::error::Error;
pub use crate::outcome::{Outcome, Resolved};
pub use crate::request::{DEFAULT_TIMEOUT, GetRequest};
pub use wasm_cache_core::{
    ChecksumRecord, EntryInfo, EntryRef, EntryRefs, ErrorKind, Fetcher, ModuleKey, ModuleUrl,
    PullPolicy, PullSecret, Scheme, Sha256Digest,
};
pub use wasm_cache_signature::{KeyFingerprint, PublicKey, TrustPolicy};
#[cfg(feature = "http")]
pub use wasm_fetch_http::HttpFetcher;
#[cfg(feature = "oci")]
pub use wasm_fetch_oci::{Mirror, OciFetcher};
pub use wasm_store_fs::{FsStore, Mismatch, VerifyReport};
