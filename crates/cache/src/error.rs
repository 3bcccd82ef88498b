//! The cache's error type.

use std::sync::Arc;

use wasm_cache_core::ErrorKind;
use wasm_store_fs::StoreError;

/// What can go wrong in [`Cache::get`](crate::Cache::get) and friends.
///
/// Cheap to clone: concurrent callers that share one download (single flight)
/// all receive the same error. Messages keep the reference's wording and never
/// contain secrets.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Naming, resolving, fetching or verifying the module failed.
    #[error(transparent)]
    Fetch(Arc<wasm_cache_core::Error>),
    /// The local store failed (disk full, permissions, ...).
    #[error(transparent)]
    Store(Arc<StoreError>),
    /// The cache was shut down.
    #[error("the wasm module cache is shut down")]
    ShutDown,
    /// A background task failed unexpectedly.
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    /// The coarse kind, for callers that must branch.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::Fetch(e) => e.kind(),
            // A wait for another process's download that ran out of time.
            Self::Store(e) if e.kind() == wasm_store_fs::StoreErrorKind::Busy => ErrorKind::Timeout,
            Self::Store(_) | Self::Internal(_) | Self::ShutDown => ErrorKind::Storage,
        }
    }

    /// The underlying fetch error, if that is what this is.
    pub fn as_fetch(&self) -> Option<&wasm_cache_core::Error> {
        match self {
            Self::Fetch(e) => Some(e),
            _ => None,
        }
    }
}

impl From<wasm_cache_core::Error> for Error {
    fn from(e: wasm_cache_core::Error) -> Self {
        Self::Fetch(Arc::new(e))
    }
}

impl From<StoreError> for Error {
    fn from(e: StoreError) -> Self {
        Self::Store(Arc::new(e))
    }
}
