//! # wasm-fetch-oci
//!
//! An OCI registry [`Fetcher`] for `oci://` URLs. It
//! speaks the distribution pull protocol itself, over
//! [`wasm_fetch_transport`] (the guarded hyper + rustls/ring transport every
//! fetcher shares); [`oci-client`](oci_client) is used for its data model only
//! (reference grammar, registry error envelope).
//!
//! What it does (REFERENCE.md §4, "OCI"):
//! - **resolve**: one `GET` of the manifest the reference names (its digest is
//!   computed from the bytes read, never taken on trust; a
//!   `Docker-Content-Digest` that disagrees is an error). For an image index it
//!   is the index's own digest, so `@sha256:` pins of multi-platform images
//!   work. The bytes are kept briefly, so the `fetch` that follows does not
//!   read them again: a cold pull of a tag is two requests (manifest, blob),
//!   three for an index.
//! - **fetch**: the manifest (by `req.digest` when given, checked against it),
//!   the index entry for a Wasm platform (`wasip1`, `wasip2`, `wasm`) or else
//!   linux/amd64, then the layer chosen by [`layout::parse_manifest`] (Docker
//!   image, OCI image, Istio/Solo artifact, CNCF artifact). Manifests are read
//!   up to [`MAX_MANIFEST_SIZE`], never more. The layer streams through a size
//!   check against its descriptor and through
//!   [`Unboxer`](wasm_cache_unbox::Unboxer) (gzip, tar) into the caller's
//!   sink: memory stays bounded whatever the module's size.
//! - **one hash pass**: a raw Wasm layer's digest is the module's digest, so
//!   when the sink offers to verify it
//!   ([`ModuleSink::verify_sha256`],
//!   as the cache's store does) the fetcher does not hash the bytes again; a
//!   tar+gzip layer is hashed here (compressed) and by the store (module).
//! - **auth**: anonymous first; on a 401, the Bearer token flow or Basic. The
//!   credentials are the request's pull secret (either Kubernetes format:
//!   `.dockerconfigjson` or legacy `.dockercfg`; parsed here, credential
//!   helpers it names never run), else the operator's docker config as docker
//!   resolves it: `credHelpers[registry]`, else `credsStore` (a
//!   `docker-credential-<name> get` helper, see [`MAX_HELPER_OUTPUT`]), else
//!   `auths`; else none. An `identitytoken` is exchanged at the Bearer realm
//!   (OAuth2 refresh-token grant), a `registrytoken` sent as the bearer. Tokens are kept per registry, repository and credentials (hashed)
//!   until they expire.
//! - **token realms**: must be https (http only for insecure-listed
//!   registries); the realm request goes through the transport's guard, at
//!   connection time, strict (no loopback or private addresses) unless the
//!   registry is insecure-listed or [`OciFetcherBuilder::allow_private_realms`]
//!   is set; its answer is read up to [`MAX_TOKEN_RESPONSE`].
//! - **insecure registries**: listed registries (`host:port`, `host`, `*`: the
//!   transport's one meaning) get unverified HTTPS, or plain HTTP when TLS
//!   cannot be set up; a registry that is not listed and answers HTTPS with
//!   plain HTTP fails at once: `server gave an HTTP response to an HTTPS
//!   request; list it with --insecure-registry`.
//! - **mirrors**: [`OciFetcherBuilder::mirror`] adds a [`Mirror`] (a
//!   pull-through cache) of a registry; a registry's mirrors are asked in
//!   order, the registry last, like containerd's `hosts.toml`, with the
//!   registry's repository path and `?ns=<registry>`. Mirrors are untrusted:
//!   whatever they serve is checked against its digest, and a mirror that
//!   fails (unreachable, 5xx, 404, 401, wrong bytes, more than half the time
//!   left) hands over to the next source within the deadline. A tag is taken
//!   from the first mirror that answers. [`Fetched::source`] says whether a
//!   mirror served the module.
//! - **deadline and retries**: every call runs under `req.deadline`;
//!   transient failures (transport errors, retryable 5xx) before any module
//!   byte reached the sink are retried with
//!   [`Backoff`], clamped to the deadline. TLS
//!   failures are not retried.
//!
//! Errors never carry secrets or registry request URLs: they name the module
//! URL, redacted. Registry error bodies are shortened.
//!
//! ```no_run
//! use std::time::{Duration, Instant};
//! use wasm_cache_core::{FetchRequest, Fetcher, ModuleUrl};
//! use wasm_fetch_oci::OciFetcher;
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let fetcher = OciFetcher::builder()
//!     .insecure_hosts(["127.0.0.1:5000"])
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
mod helper;
pub mod layout;
mod mirror;
mod realm;
mod verify;

pub use crate::fetcher::{MAX_MANIFEST_SIZE, MAX_TOKEN_RESPONSE, OciFetcher, OciFetcherBuilder};
pub use crate::helper::MAX_HELPER_OUTPUT;
pub use crate::mirror::Mirror;
/// The core types this crate's API uses, so that using the fetcher alone needs
/// no direct dependency on `wasm-cache-core`.
pub use wasm_cache_core::retry::Backoff;
pub use wasm_cache_core::{
    Error, ErrorKind, FetchRequest, FetchSource, Fetched, Fetcher, ModuleSink, ModuleUrl,
    OciReference, PullSecret, Sha256Digest,
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
/// bytes that are not a usable Docker `config.json` (or legacy `.dockercfg`).
#[doc(hidden)]
pub fn check_pull_secret(config: &[u8], registry: &str) -> Result<(), wasm_cache_core::Error> {
    auth::credentials_for(config, registry, auth::Source::PullSecret).map(|_| ())
}
