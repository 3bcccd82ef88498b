//! The one error type shared by the core and every [`Fetcher`](crate::Fetcher).

use crate::{Sha256Digest, redact_url};
use std::time::Duration;

/// `input` cut to at most `max` bytes (on a character boundary) with `...`
/// appended when cut: for quoting untrusted text in error messages.
pub fn shorten(input: &str, max: usize) -> String {
    if input.len() <= max {
        return input.to_owned();
    }
    let mut end = max;
    while !input.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &input[..end])
}

/// A boxed error cause, kept as the `source` of an [`Error`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Everything that can go wrong while naming, resolving or fetching a module.
///
/// Messages keep the reference's wording where operators grep for it
/// (`unsupported Wasm module downloading URL scheme`, `wasm module download failed
/// after N attempts`, ...). URLs in messages are always redacted with
/// [`redact_url`](crate::redact_url): user-info and query strings never appear,
/// and neither does a pull secret.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A checksum that is not 64 lowercase hex characters (optionally `sha256:`-prefixed).
    #[error("invalid sha256 checksum {input:?}: {reason}")]
    InvalidChecksum {
        /// The input, shortened.
        input: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A URL scheme other than `http`, `https` or `oci`.
    #[error("unsupported Wasm module downloading URL scheme: {scheme}")]
    UnsupportedScheme {
        /// The scheme, as given.
        scheme: String,
    },
    /// A URL that cannot be parsed.
    #[error("fail to parse Wasm module fetch url: {url}: {reason}")]
    InvalidUrl {
        /// The URL, redacted.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A pull secret that is not a usable Docker `config.json`.
    #[error("invalid pull secret: {reason}")]
    InvalidPullSecret {
        /// What is wrong (never the secret's content).
        reason: String,
    },
    /// An option or configuration value that cannot be used.
    #[error("invalid configuration: {reason}")]
    InvalidConfig {
        /// What is wrong.
        reason: String,
    },
    /// The upstream answered with a non-success status.
    #[error("wasm module download request failed: status code {code}")]
    Status {
        /// The URL, redacted.
        url: String,
        /// The HTTP status code.
        code: u16,
    },
    /// Every attempt failed; `last` is the last attempt's error.
    #[error("wasm module download failed after {attempts} attempts, last error: {last}")]
    DownloadFailed {
        /// How many attempts were made.
        attempts: u32,
        /// The last attempt's error.
        #[source]
        last: Box<Error>,
    },
    /// The deadline passed.
    #[error("fetching {url} timed out after {elapsed:?}")]
    Timeout {
        /// The URL, redacted.
        url: String,
        /// The time allowed.
        elapsed: Duration,
    },
    /// Connecting, TLS, or reading the response failed.
    #[error("transport error fetching {url}: {reason}")]
    Transport {
        /// The URL, redacted.
        url: String,
        /// What failed.
        reason: String,
        /// The underlying error.
        #[source]
        source: Option<BoxError>,
    },
    /// The connection was refused by the SSRF guard or a redirect rule.
    #[error("refused to fetch {url}: {reason}")]
    Blocked {
        /// The URL, redacted.
        url: String,
        /// Why.
        reason: String,
    },
    /// The registry or server rejected our credentials, or asked for some we lack.
    #[error("unauthorized fetching {url}: {reason}")]
    Unauthorized {
        /// The URL, redacted.
        url: String,
        /// What the server said (never our credentials).
        reason: String,
    },
    /// The module, tag or manifest does not exist.
    #[error("not found: {url}")]
    NotFound {
        /// The URL, redacted.
        url: String,
    },
    /// The OCI manifest could not be fetched or parsed.
    #[error("could not fetch Wasm OCI image {url}: {reason}")]
    Manifest {
        /// The URL, redacted.
        url: String,
        /// What is wrong.
        reason: String,
        /// The underlying error.
        #[source]
        source: Option<BoxError>,
    },
    /// The manifest fits none of the accepted Wasm image layouts.
    #[error("{url} is not a Wasm image: {}", reasons.join("; "))]
    InvalidLayout {
        /// The URL, redacted.
        url: String,
        /// Why each layout was rejected.
        reasons: Vec<String>,
    },
    /// A blob's bytes do not match its descriptor digest.
    #[error("blob from {url} has digest {actual}, expected {expected}")]
    DigestMismatch {
        /// The URL, redacted.
        url: String,
        /// The digest the descriptor names.
        expected: String,
        /// The digest of the bytes received.
        actual: String,
    },
    /// The module's checksum differs from the one asked for.
    #[error("module downloaded from {url} has checksum {actual}, which does not match: {expected}")]
    ChecksumMismatch {
        /// The URL, redacted.
        url: String,
        /// The checksum of what was downloaded.
        actual: String,
        /// The checksum asked for.
        expected: String,
    },
    /// The body (or its decompressed content) exceeds the size limit.
    #[error("module from {url} exceeds the size limit of {limit} bytes")]
    TooLarge {
        /// The URL, redacted.
        url: String,
        /// The limit in bytes.
        limit: u64,
    },
    /// The bytes are not a Wasm binary (or the archive holds none).
    #[error("fetched Wasm binary from {url} is invalid: {reason}")]
    InvalidModule {
        /// The URL, redacted.
        url: String,
        /// What is wrong.
        reason: String,
    },
    /// The caller's sink refused a chunk (disk full, permissions, ...).
    #[error("writing the module from {url} failed")]
    Sink {
        /// The URL, redacted.
        url: String,
        /// The sink's error.
        #[source]
        source: std::io::Error,
    },
    /// A feature this fetcher does not offer.
    #[error("{what} is not supported by this fetcher")]
    Unsupported {
        /// What was asked for.
        what: String,
    },
    /// A third-party fetcher's own failure, with its error as the source
    /// (object_store's `Generic`). Make one with [`Error::backend`].
    #[error("{scheme} fetcher failed for {url}: {source}")]
    #[non_exhaustive]
    Backend {
        /// The scheme of the fetcher (`s3`, `file`, ...).
        scheme: String,
        /// The URL, redacted.
        url: String,
        /// How callers should treat it.
        kind: ErrorKind,
        /// The backend's error. Its `Display` is part of the message: it must
        /// not hold secrets.
        #[source]
        source: BoxError,
    },
}

/// Constructors, for fetchers outside this workspace: each takes the URL as
/// given and redacts it, so no credential reaches a message by accident, and
/// keeps working when a variant gains a field.
impl Error {
    /// A third-party backend's failure ([`Error::Backend`]).
    pub fn backend(
        scheme: impl Into<String>,
        url: &str,
        kind: ErrorKind,
        source: impl Into<BoxError>,
    ) -> Self {
        Self::Backend {
            scheme: scheme.into(),
            url: redact_url(url),
            kind,
            source: source.into(),
        }
    }

    /// [`Error::NotFound`].
    pub fn not_found(url: &str) -> Self {
        Self::NotFound {
            url: redact_url(url),
        }
    }

    /// [`Error::Unauthorized`]; `reason` must not hold the credentials.
    pub fn unauthorized(url: &str, reason: impl Into<String>) -> Self {
        Self::Unauthorized {
            url: redact_url(url),
            reason: reason.into(),
        }
    }

    /// [`Error::Timeout`].
    pub fn timeout(url: &str, elapsed: Duration) -> Self {
        Self::Timeout {
            url: redact_url(url),
            elapsed,
        }
    }

    /// [`Error::Transport`] (retryable).
    pub fn transport(url: &str, reason: impl Into<String>, source: Option<BoxError>) -> Self {
        Self::Transport {
            url: redact_url(url),
            reason: reason.into(),
            source,
        }
    }

    /// [`Error::Status`]: the upstream answered `code`.
    pub fn status(url: &str, code: u16) -> Self {
        Self::Status {
            url: redact_url(url),
            code,
        }
    }

    /// [`Error::InvalidUrl`].
    pub fn invalid_url(url: &str, reason: impl Into<String>) -> Self {
        Self::InvalidUrl {
            url: redact_url(url),
            reason: reason.into(),
        }
    }

    /// [`Error::UnsupportedScheme`].
    pub fn unsupported_scheme(scheme: impl Into<String>) -> Self {
        Self::UnsupportedScheme {
            scheme: scheme.into(),
        }
    }

    /// [`Error::InvalidModule`]: the bytes are not a usable Wasm binary.
    pub fn invalid_module(url: &str, reason: impl Into<String>) -> Self {
        Self::InvalidModule {
            url: redact_url(url),
            reason: reason.into(),
        }
    }

    /// [`Error::TooLarge`].
    pub fn too_large(url: &str, limit: u64) -> Self {
        Self::TooLarge {
            url: redact_url(url),
            limit,
        }
    }

    /// [`Error::ChecksumMismatch`].
    pub fn checksum_mismatch(url: &str, actual: &Sha256Digest, expected: &Sha256Digest) -> Self {
        Self::ChecksumMismatch {
            url: redact_url(url),
            actual: actual.to_hex(),
            expected: expected.to_hex(),
        }
    }

    /// [`Error::Sink`]: the caller's [`ModuleSink`](crate::ModuleSink) refused a chunk.
    pub fn sink(url: &str, source: std::io::Error) -> Self {
        Self::Sink {
            url: redact_url(url),
            source,
        }
    }

    /// [`Error::Unsupported`].
    pub fn unsupported(what: impl Into<String>) -> Self {
        Self::Unsupported { what: what.into() }
    }
}

/// A coarse classification of [`Error`] for callers that must branch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The caller's input (URL, checksum, secret, configuration) is wrong.
    InvalidInput,
    /// The upstream does not have it.
    NotFound,
    /// Credentials are missing or wrong.
    Unauthorized,
    /// The deadline passed.
    Timeout,
    /// Network or server trouble; possibly transient.
    Transport,
    /// Refused by policy (SSRF guard, redirect rule).
    Blocked,
    /// The manifest or its layout is unusable.
    Manifest,
    /// Bytes do not match a digest or checksum.
    Integrity,
    /// The module is not valid Wasm or exceeds the size limit.
    InvalidModule,
    /// Writing the module locally failed.
    Storage,
    /// Not offered by this fetcher.
    Unsupported,
}

impl Error {
    /// The coarse kind of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::InvalidChecksum { .. }
            | Self::UnsupportedScheme { .. }
            | Self::InvalidUrl { .. }
            | Self::InvalidPullSecret { .. }
            | Self::InvalidConfig { .. } => ErrorKind::InvalidInput,
            Self::Status { code: 404, .. } | Self::NotFound { .. } => ErrorKind::NotFound,
            Self::Status {
                code: 401 | 403, ..
            }
            | Self::Unauthorized { .. } => ErrorKind::Unauthorized,
            Self::Status { .. } | Self::Transport { .. } => ErrorKind::Transport,
            Self::DownloadFailed { last, .. } => last.kind(),
            Self::Timeout { .. } => ErrorKind::Timeout,
            Self::Blocked { .. } => ErrorKind::Blocked,
            Self::Manifest { .. } | Self::InvalidLayout { .. } => ErrorKind::Manifest,
            Self::DigestMismatch { .. } | Self::ChecksumMismatch { .. } => ErrorKind::Integrity,
            Self::TooLarge { .. } | Self::InvalidModule { .. } => ErrorKind::InvalidModule,
            Self::Sink { .. } => ErrorKind::Storage,
            Self::Unsupported { .. } => ErrorKind::Unsupported,
            Self::Backend { kind, .. } => *kind,
        }
    }

    /// Whether another attempt could succeed: transport failures and 5xx other
    /// than 501, 505 and 511 (the reference's rule). 4xx never retries.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Status { code, .. } => crate::retry::is_retryable_status(*code),
            Self::Transport { .. } => true,
            Self::Backend { kind, .. } => *kind == ErrorKind::Transport,
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::shorten;

    #[test]
    fn constructors_redact_and_backends_classify_their_errors() {
        use super::{Error, ErrorKind};
        let url = "s3://AKIA:SECRET@bucket/f.wasm?X-Amz-Signature=TOKEN";
        let e = Error::backend("s3", url, ErrorKind::NotFound, "no such key");
        assert_eq!(e.kind(), ErrorKind::NotFound);
        assert!(!e.is_retryable());
        let shown = format!("{e} {e:?}");
        assert!(
            !shown.contains("SECRET") && !shown.contains("TOKEN"),
            "{shown}"
        );
        assert_eq!(
            e.to_string(),
            "s3 fetcher failed for s3://***@bucket/f.wasm?***: no such key"
        );
        assert!(std::error::Error::source(&e).is_some());
        assert!(Error::backend("s3", url, ErrorKind::Transport, "reset").is_retryable());
        for e in [
            Error::not_found(url),
            Error::unauthorized(url, "denied"),
            Error::timeout(url, std::time::Duration::from_secs(1)),
            Error::transport(url, "reset", None),
            Error::status(url, 500),
            Error::invalid_url(url, "bad"),
            Error::invalid_module(url, "magic"),
            Error::too_large(url, 1),
        ] {
            let shown = format!("{e} {e:?}");
            assert!(
                !shown.contains("SECRET") && !shown.contains("TOKEN"),
                "{shown}"
            );
        }
    }

    #[test]
    fn shorten_cuts_on_character_boundaries() {
        assert_eq!(shorten("short", 80), "short");
        assert_eq!(
            shorten(&"x".repeat(100), 10),
            format!("{}...", "x".repeat(10))
        );
        // 'é' is two bytes: a cut inside it backs off to the boundary before.
        assert_eq!(shorten("aaaaaaaaaé", 10), "aaaaaaaaa...");
    }
}
