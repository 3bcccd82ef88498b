//! The crate's one error type.

use std::io;
use std::path::{Path, PathBuf};

use wasm_cache_core::Sha256Digest;

/// Everything that can go wrong in the store or the journal.
///
/// I/O failures name the operation and the path (`creating temporary file in
/// /var/cache/wasm: No space left on device (os error 28)`). The integrity
/// variants ([`DigestMismatch`](Self::DigestMismatch),
/// [`InvalidModule`](Self::InvalidModule), [`TooLarge`](Self::TooLarge)) carry no
/// URL because the store never sees one: the cache adds it with
/// [`StoreError::into_core_error`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// A file-system operation failed. `op` reads as a phrase that ends right
    /// before the path, e.g. `"renaming temporary file into"`.
    #[error("{op} {}: {source}", path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file or directory it was done to.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
    /// The module's sha256 differs from the one expected.
    #[error("module has checksum {actual}, which does not match: {expected}")]
    DigestMismatch {
        /// The checksum asked for.
        expected: Sha256Digest,
        /// The checksum of the bytes written.
        actual: Sha256Digest,
    },
    /// The bytes are not a Wasm binary (bad magic, other version, too short).
    #[error("invalid Wasm module: {reason}")]
    InvalidModule {
        /// What is wrong.
        reason: String,
    },
    /// More bytes than the ingest's size limit were written.
    #[error("module exceeds the size limit of {limit} bytes")]
    TooLarge {
        /// The limit in bytes.
        limit: u64,
    },
    /// The store has no file for this digest.
    #[error("module {digest} is not in the store (no file at {})", path.display())]
    NotFound {
        /// The digest asked for.
        digest: Sha256Digest,
        /// Where its file would be.
        path: PathBuf,
    },
    /// A journal record could not be encoded as JSON.
    #[error("encoding a record for journal {}: {source}", path.display())]
    Encode {
        /// The journal.
        path: PathBuf,
        /// The serializer's error.
        #[source]
        source: serde_json::Error,
    },
    /// A cross-process lock stayed held by someone else until the deadline.
    #[error("timed out after {waited:?} waiting for {what} (lock file {} is held by another process)", path.display())]
    LockTimeout {
        /// What the lock stands for.
        what: String,
        /// The lock file.
        path: PathBuf,
        /// How long it was waited for.
        waited: std::time::Duration,
    },
    /// The ingest was used after one of its writes had already failed.
    #[error("ingest into {} already failed: {reason}", path.display())]
    IngestFailed {
        /// The temporary file of the ingest.
        path: PathBuf,
        /// The first failure.
        reason: String,
    },
}

/// A coarse classification of [`StoreError`] for callers that must branch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum StoreErrorKind {
    /// The bytes do not match the expected digest.
    Integrity,
    /// The bytes are not a valid Wasm binary.
    InvalidModule,
    /// The module exceeds the size limit.
    TooLarge,
    /// No such module.
    NotFound,
    /// The disk (or quota) is full.
    NoSpace,
    /// Permission denied, read-only file system, or a path component that is not
    /// a directory: a configuration problem, not a transient one.
    Denied,
    /// Any other I/O failure.
    Io,
    /// A journal record could not be encoded.
    Encode,
    /// A lock stayed held by another process until the deadline.
    Busy,
}

impl StoreError {
    pub(crate) fn io(op: &'static str, path: impl AsRef<Path>, source: io::Error) -> Self {
        Self::Io {
            op,
            path: path.as_ref().to_path_buf(),
            source,
        }
    }

    /// The coarse kind of this error.
    pub fn kind(&self) -> StoreErrorKind {
        match self {
            Self::Io { source, .. } => io_kind(source),
            Self::DigestMismatch { .. } => StoreErrorKind::Integrity,
            Self::InvalidModule { .. } => StoreErrorKind::InvalidModule,
            Self::TooLarge { .. } => StoreErrorKind::TooLarge,
            Self::NotFound { .. } => StoreErrorKind::NotFound,
            Self::Encode { .. } => StoreErrorKind::Encode,
            Self::IngestFailed { .. } => StoreErrorKind::Io,
            Self::LockTimeout { .. } => StoreErrorKind::Busy,
        }
    }

    /// Whether the bytes were rejected (digest mismatch, not Wasm, too large)
    /// rather than the disk failing.
    pub fn is_integrity(&self) -> bool {
        matches!(
            self.kind(),
            StoreErrorKind::Integrity | StoreErrorKind::InvalidModule | StoreErrorKind::TooLarge
        )
    }

    /// Whether the disk is full (`ENOSPC`, `EDQUOT`).
    pub fn is_no_space(&self) -> bool {
        self.kind() == StoreErrorKind::NoSpace
    }

    /// Maps this error into the cache's [`wasm_cache_core::Error`], adding the
    /// (already redacted) URL the module came from: a digest mismatch becomes
    /// `ChecksumMismatch`, an invalid module `InvalidModule`, too large
    /// `TooLarge`, and everything else `Sink` (kind `Storage`).
    pub fn into_core_error(self, redacted_url: &str) -> wasm_cache_core::Error {
        use wasm_cache_core::Error;
        let url = redacted_url.to_owned();
        match self {
            Self::DigestMismatch { expected, actual } => Error::ChecksumMismatch {
                url,
                actual: actual.to_hex(),
                expected: expected.to_hex(),
            },
            Self::InvalidModule { reason } => Error::InvalidModule { url, reason },
            Self::TooLarge { limit } => Error::TooLarge { url, limit },
            other => {
                let kind = match &other {
                    Self::Io { source, .. } => source.kind(),
                    Self::NotFound { .. } => io::ErrorKind::NotFound,
                    Self::LockTimeout { .. } => io::ErrorKind::TimedOut,
                    _ => io::ErrorKind::Other,
                };
                Error::Sink {
                    url,
                    source: io::Error::new(kind, other),
                }
            }
        }
    }

    /// The `StoreError` carried inside an [`io::Error`] returned by
    /// [`Ingest::write`](wasm_cache_core::ModuleSink::write), if any: lets a
    /// caller holding only a fetcher's `Error::Sink` find out that the store's
    /// size limit was hit.
    pub fn from_io(err: &io::Error) -> Option<&StoreError> {
        err.get_ref()?.downcast_ref::<StoreError>()
    }
}

fn io_kind(e: &io::Error) -> StoreErrorKind {
    match e.kind() {
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded => StoreErrorKind::NoSpace,
        io::ErrorKind::PermissionDenied
        | io::ErrorKind::ReadOnlyFilesystem
        | io::ErrorKind::NotADirectory => StoreErrorKind::Denied,
        io::ErrorKind::NotFound => StoreErrorKind::NotFound,
        _ => StoreErrorKind::Io,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_operation_and_path() {
        let e = StoreError::io(
            "creating temporary file in",
            "/x",
            io::Error::from_raw_os_error(28),
        );
        let msg = e.to_string();
        assert!(
            msg.starts_with("creating temporary file in /x: No space left on device"),
            "{msg}"
        );
        assert!(e.is_no_space());
        assert!(!e.is_integrity());
        let denied = StoreError::io("renaming", "/y", io::Error::from_raw_os_error(13));
        assert_eq!(denied.kind(), StoreErrorKind::Denied);
    }

    #[test]
    fn maps_into_core_errors() {
        use wasm_cache_core::ErrorKind;
        let a = Sha256Digest::from_bytes([1; 32]);
        let b = Sha256Digest::from_bytes([2; 32]);
        let e = StoreError::DigestMismatch {
            expected: a,
            actual: b,
        };
        assert!(e.is_integrity());
        let core = e.into_core_error("https://h/m.wasm");
        assert_eq!(core.kind(), ErrorKind::Integrity);
        assert_eq!(
            core.to_string(),
            format!(
                "module downloaded from https://h/m.wasm has checksum {b}, which does not match: {a}"
            )
        );
        let core = StoreError::TooLarge { limit: 5 }.into_core_error("u");
        assert_eq!(core.kind(), ErrorKind::InvalidModule);
        let core = StoreError::InvalidModule {
            reason: "bad magic".into(),
        }
        .into_core_error("u");
        assert_eq!(
            core.to_string(),
            "fetched Wasm binary from u is invalid: bad magic"
        );
        let core = StoreError::io("x", "/p", io::Error::from_raw_os_error(28)).into_core_error("u");
        assert_eq!(core.kind(), ErrorKind::Storage);
        let wasm_cache_core::Error::Sink { source, .. } = core else {
            panic!("expected a sink error")
        };
        assert_eq!(source.kind(), io::ErrorKind::StorageFull);
        assert!(StoreError::from_io(&source).is_some());
    }
}
