//! What a caller asks for.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use wasm_cache_core::{PullPolicy, PullSecret, redact_url};
use wasm_cache_signature::TrustPolicy;

/// The default bound on one `get` that has to fetch: 60 seconds. The
/// `wasm-cache` command's `--timeout` defaults to it too (one default for both).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// One request for a module: the arguments of the reference's `Get`.
///
/// `Debug` redacts the URL and the pull secret.
#[derive(Clone)]
#[non_exhaustive]
pub struct GetRequest {
    /// `http://`, `https://` or `oci://registry/repo[:tag|@sha256:<hex>]`.
    pub url: String,
    /// The expected sha256 (bare hex or `sha256:`-prefixed): of the module for
    /// http(s), of the manifest for OCI. Empty or `None` means "not pinned".
    pub checksum: Option<String>,
    /// The name of the resource asking (e.g. `namespace/wasmplugin`).
    pub resource_name: String,
    /// Its version; drives the pull policy of unpinned URLs.
    pub resource_version: String,
    /// Bound on the whole fetch (connect, redirects, retries, body).
    pub timeout: Duration,
    /// Docker `config.json` bytes for the registry, if any.
    pub pull_secret: Option<PullSecret>,
    /// When to pull an unpinned URL again.
    pub pull_policy: PullPolicy,
    /// Keys the module must be signed by (overrides the builder's default);
    /// `None` uses [`CacheBuilder::trust_policy`](crate::CacheBuilder::trust_policy).
    pub trust: Option<Arc<TrustPolicy>>,
    /// For http(s) modules under a trust policy: where the detached
    /// signature is, instead of `<url>.sig`.
    pub signature_url: Option<String>,
}

impl GetRequest {
    /// A request for `url` with no checksum, no resource, the default timeout,
    /// no secret and the unspecified policy.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            checksum: None,
            resource_name: String::new(),
            resource_version: String::new(),
            timeout: DEFAULT_TIMEOUT,
            pull_secret: None,
            pull_policy: PullPolicy::Unspecified,
            trust: None,
            signature_url: None,
        }
    }

    /// Pins the checksum.
    #[must_use]
    pub fn checksum(mut self, checksum: impl Into<String>) -> Self {
        self.checksum = Some(checksum.into());
        self
    }

    /// The checksum the request pins, as given: trimmed, and `None` when
    /// absent or empty (an empty one pins nothing).
    pub(crate) fn given_checksum(&self) -> Option<&str> {
        match self.checksum.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(c) => Some(c),
        }
    }

    /// Sets the asking resource's name and version.
    #[must_use]
    pub fn resource(mut self, name: impl Into<String>, version: impl Into<String>) -> Self {
        self.resource_name = name.into();
        self.resource_version = version.into();
        self
    }

    /// Sets the timeout.
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Sets the pull secret.
    #[must_use]
    pub fn pull_secret(mut self, secret: PullSecret) -> Self {
        self.pull_secret = Some(secret);
        self
    }

    /// Sets the pull policy.
    #[must_use]
    pub fn pull_policy(mut self, policy: PullPolicy) -> Self {
        self.pull_policy = policy;
        self
    }

    /// Serves the module only if a signature by one of the policy's keys
    /// verifies its digest (OCI: cosign's `.sig` manifest for the manifest
    /// digest; http(s): a detached `cosign sign-blob` signature at `<url>.sig`
    /// over the module's sha256). Verification happens before anything is
    /// stored, and a digest once verified by a key of the policy is served
    /// again without a round trip.
    #[must_use]
    pub fn verify_with(mut self, policy: impl Into<Arc<TrustPolicy>>) -> Self {
        self.trust = Some(policy.into());
        self
    }

    /// Where an http(s) module's detached signature is, instead of `<url>.sig`.
    #[must_use]
    pub fn signature_url(mut self, url: impl Into<String>) -> Self {
        self.signature_url = Some(url.into());
        self
    }
}

impl fmt::Debug for GetRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GetRequest")
            .field("url", &redact_url(&self.url))
            .field("checksum", &self.checksum)
            .field("resource_name", &self.resource_name)
            .field("resource_version", &self.resource_version)
            .field("timeout", &self.timeout)
            .field("pull_secret", &self.pull_secret)
            .field("pull_policy", &self.pull_policy)
            .field("trust", &self.trust.as_ref().map(|p| p.fingerprints()))
            .field(
                "signature_url",
                &self.signature_url.as_deref().map(redact_url),
            )
            .finish()
    }
}
