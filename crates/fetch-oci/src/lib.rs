//! # wasm-fetch-oci
//!
//! An OCI registry [`Fetcher`](wasm_cache_core::Fetcher) for `oci://` URLs, on
//! [`oci-client`](oci_client) with rustls and the *ring* crypto provider.
//!
//! What it does (REFERENCE.md §4, "OCI"):
//! - **resolve**: one manifest request (`HEAD`, `GET` as fallback), never a layer.
//!   The digest is that of the manifest the reference names; for an image index
//!   it is the index's own digest, so `@sha256:` pins of multi-platform images work.
//! - **fetch**: the manifest (by `req.digest` when given, its bytes hashed and
//!   compared), the index entry for a Wasm platform (`wasip1`, `wasip2`, `wasm`)
//!   or else linux/amd64, then the layer chosen by [`layout::parse_manifest`]
//!   (Docker image, OCI image, Istio/Solo artifact, CNCF artifact). The layer
//!   streams through a sha256 + size check against its descriptor, then through
//!   [`Unboxer`](wasm_cache_core::unbox::Unboxer) (gzip, tar) into the caller's
//!   sink: memory stays bounded whatever the module's size.
//! - **auth**: the request's pull secret (Docker `config.json`, parsed here,
//!   credential helpers never run), else the default docker config, else anonymous.
//!   oci-client keeps credentials per client, so clients are cached per hash of
//!   (registry, credentials): a rotated secret gets a new client.
//! - **realm guard**: before oci-client talks to a registry, an anonymous
//!   `GET /v2/` reads its bearer realms and refuses non-http(s), host-less,
//!   link-local and metadata realms (loopback and private ones unless the registry
//!   is insecure-listed or [`OciFetcherBuilder::allow_private_realms`] is set).
//! - **insecure registries**: listed `host:port`s (or `*`) get unverified HTTPS or
//!   plain HTTP, through separate clients; everyone else verified HTTPS, with an
//!   optional extra CA bundle.
//! - **deadline and retries**: every call runs under `req.deadline`
//!   (`tokio::time::timeout_at`; oci-client has no overall timeout); transient
//!   failures (transport errors, retryable 5xx) before any module byte reached the
//!   sink are retried with [`Backoff`](wasm_cache_core::retry::Backoff), clamped
//!   to the deadline. TLS certificate failures are not retried.
//!
//! ## Design notes
//! - oci-client takes no rustls configuration, and reqwest (with
//!   `rustls-no-provider`) needs a process-default crypto provider: building an
//!   [`OciFetcher`] installs *ring*'s ([`install_crypto_provider`]) unless the
//!   application installed one first. aws-lc is never compiled in.
//! - Errors never carry secrets or oci-client's internal URLs: they name the
//!   module URL, redacted. Registry error bodies are shortened.
//! - Known limits: oci-client reads a manifest whole before we can check its
//!   size ([`MAX_MANIFEST_SIZE`] is enforced after; the deadline bounds the rest);
//!   the realm's host is resolved again by oci-client (DNS rebinding is not
//!   caught); `identitytoken` credentials and credential helpers are not supported.
//!
//! ```no_run
//! use std::time::{Duration, Instant};
//! use wasm_cache_core::{FetchRequest, Fetcher, ModuleUrl};
//! use wasm_fetch_oci::OciFetcher;
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let fetcher = OciFetcher::builder()
//!     .insecure_registries(["127.0.0.1:5000"])
//!     .build()?;
//! let url = ModuleUrl::parse("oci://127.0.0.1:5000/org/filter:v1")?;
//! let req = FetchRequest::new(url, Instant::now() + Duration::from_secs(30));
//! let digest = fetcher.resolve(&req).await?; // manifest only
//! let mut module = Vec::new();
//! let fetched = fetcher.fetch(&req.clone().with_digest(digest), &mut module).await?;
//! assert_eq!(fetched.digest, digest);
//! # Ok(())
//! # }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod auth;
mod errors;
mod fetcher;
pub mod layout;
mod realm;
mod verify;

pub use crate::fetcher::{
    MAX_MANIFEST_SIZE, OciFetcher, OciFetcherBuilder, install_crypto_provider,
};

/// Parses `config` as a pull secret for `registry` exactly as a fetch does,
/// and says only whether it is usable (the credentials themselves never leave
/// the crate).
///
/// Not part of the stable API: it exists for the cargo-fuzz targets in
/// `fuzz/`, which link this crate from outside and cannot reach the private
/// parser.
///
/// # Errors
/// What a fetch with this secret would fail with: `InvalidPullSecret` for
/// bytes that are not a usable Docker `config.json`, `Unsupported` for an
/// `identitytoken`-only entry.
#[doc(hidden)]
pub fn check_pull_secret(config: &[u8], registry: &str) -> Result<(), wasm_cache_core::Error> {
    auth::credentials_for(config, registry, auth::Source::PullSecret).map(|_| ())
}
