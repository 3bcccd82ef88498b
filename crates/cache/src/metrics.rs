//! Metric names (Istio's) and the helpers that record them through the
//! [`metrics`] facade. Install any `metrics` recorder (Prometheus exporter,
//! OpenTelemetry bridge...) to collect them; without one they cost nothing.

/// Gauge: number of module entries in the cache.
pub const CACHE_ENTRIES: &str = "wasm_cache_entries";
/// Counter with label `hit` = `true` | `false`: lookups.
pub const LOOKUP_COUNT: &str = "wasm_cache_lookup_count";
/// Counter with labels `result` (see [`FetchResult`]) and `source`
/// (`upstream` | `mirror`, [`FetchSource`]): remote fetches. `source` says
/// which kind of host served a successful fetch; a failed fetch is counted
/// against the upstream, the last resort every attempt ends with.
pub const REMOTE_FETCH_COUNT: &str = "wasm_remote_fetch_count";

pub use wasm_cache_core::FetchSource;

/// The `result` label of [`REMOTE_FETCH_COUNT`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum FetchResult {
    /// Fetched and stored.
    Success,
    /// The download failed (transport, status, timeout).
    DownloadFailure,
    /// The OCI manifest could not be resolved or used.
    ManifestFailure,
    /// The module's checksum differs from the one asked for.
    ChecksumMismatched,
    /// Anything else: invalid module, too large, local storage.
    FetchFailure,
    /// A trust policy was in force and no signature by its keys verified.
    Signature,
}

impl FetchResult {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::DownloadFailure => "download_failure",
            Self::ManifestFailure => "manifest_failure",
            Self::ChecksumMismatched => "checksum_mismatched",
            Self::FetchFailure => "fetch_failure",
            Self::Signature => "signature",
        }
    }
}

/// The cache's metric handles, registered once with the recorder installed
/// when the cache is built, so recording on the hot path is an atomic add,
/// not a key lookup.
pub(crate) struct Meters {
    hit: metrics::Counter,
    miss: metrics::Counter,
    /// Per result, `[upstream, mirror]`.
    fetch: [[metrics::Counter; 2]; 6],
    entries: metrics::Gauge,
}

const RESULTS: [FetchResult; 6] = [
    FetchResult::Success,
    FetchResult::DownloadFailure,
    FetchResult::ManifestFailure,
    FetchResult::ChecksumMismatched,
    FetchResult::FetchFailure,
    FetchResult::Signature,
];

const SOURCES: [FetchSource; 2] = [FetchSource::Upstream, FetchSource::Mirror];

impl Meters {
    pub(crate) fn new() -> Self {
        Self {
            hit: metrics::counter!(LOOKUP_COUNT, "hit" => "true"),
            miss: metrics::counter!(LOOKUP_COUNT, "hit" => "false"),
            fetch: RESULTS.map(|r| {
                SOURCES.map(|s| {
                    metrics::counter!(REMOTE_FETCH_COUNT, "result" => r.as_str(), "source" => s.as_str())
                })
            }),
            entries: metrics::gauge!(CACHE_ENTRIES),
        }
    }

    pub(crate) fn lookup(&self, hit: bool) {
        if hit { &self.hit } else { &self.miss }.increment(1);
    }

    /// A fetch that failed or was refused: counted against the upstream.
    pub(crate) fn fetch(&self, result: FetchResult) {
        self.fetch_from(result, FetchSource::Upstream);
    }

    pub(crate) fn fetch_from(&self, result: FetchResult, source: FetchSource) {
        let i = RESULTS.iter().position(|r| *r == result).unwrap_or(0);
        let j = SOURCES.iter().position(|s| *s == source).unwrap_or(0);
        self.fetch[i][j].increment(1);
    }

    pub(crate) fn entries(&self, n: usize) {
        #[allow(clippy::cast_precision_loss)]
        // reason: a gauge is f64; entry counts are far below 2^52
        self.entries.set(n as f64);
    }
}
