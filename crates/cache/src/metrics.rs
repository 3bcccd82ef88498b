//! Metric names (Istio's) and the helpers that record them through the
//! [`metrics`] facade. Install any `metrics` recorder (Prometheus exporter,
//! OpenTelemetry bridge...) to collect them; without one they cost nothing.

/// Gauge: number of module entries in the cache.
pub const CACHE_ENTRIES: &str = "wasm_cache_entries";
/// Counter with label `hit` = `true` | `false`: lookups.
pub const LOOKUP_COUNT: &str = "wasm_cache_lookup_count";
/// Counter with label `result`: remote fetches, see [`FetchResult`].
pub const REMOTE_FETCH_COUNT: &str = "wasm_remote_fetch_count";

/// The `result` label of [`REMOTE_FETCH_COUNT`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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
        }
    }
}

pub(crate) fn lookup(hit: bool) {
    metrics::counter!(LOOKUP_COUNT, "hit" => if hit { "true" } else { "false" }).increment(1);
}

pub(crate) fn fetch(result: FetchResult) {
    metrics::counter!(REMOTE_FETCH_COUNT, "result" => result.as_str()).increment(1);
}

pub(crate) fn entries(n: usize) {
    #[allow(clippy::cast_precision_loss)]
    // reason: a gauge is f64; entry counts are far below 2^52
    metrics::gauge!(CACHE_ENTRIES).set(n as f64);
}
