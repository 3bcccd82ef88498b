//! # wasm-cache-core
//!
//! The pure heart of wasm-cache: module keys, URL parsing, pull policy, the
//! checksum index, purge and recovery planning ([`plan`]: expiry, the byte
//! budget, orphans, reconciling a journal with the files on disk), and the
//! [`Fetcher`] trait that backends implement.
//!
//! Design choice: this crate does no I/O, reads no clock and needs no async
//! runtime. Time is a parameter ([`Timestamp`]), so every rule here is
//! deterministic and property-tested; the crates above it own files, sockets and
//! clocks.
//!
//! ```
//! use wasm_cache_core::{ModuleUrl, PullPolicy, Sha256Digest};
//!
//! let url = ModuleUrl::parse("oci://ghcr.io/org/filter:v1")?;
//! assert_eq!(url.module_name(), "oci://ghcr.io/org/filter");
//! // A tagged OCI URL with no policy may reuse a cached checksum...
//! assert!(PullPolicy::Unspecified.ignores_resource_version(&url));
//! // ...and checksums are validated before they can name a file.
//! let sum: Sha256Digest = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855".parse()?;
//! assert_eq!(sum.file_name().len(), 69);
//! assert!("../etc/passwd".parse::<Sha256Digest>().is_err());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod digest;
mod error;
mod fetcher;
pub mod index;
pub mod plan;
mod policy;
pub mod retry;
mod url;

pub use crate::digest::Sha256Digest;
pub use crate::error::{BoxError, Error, ErrorKind, shorten};
pub use crate::fetcher::{
    DEFAULT_MAX_MODULE_SIZE, FetchRequest, FetchSource, Fetched, Fetcher, IoSink, ModuleSink,
    PullSecret, SignatureLayer, Signatures, WASM_MAGIC, check_wasm_header,
};
pub use crate::index::{
    ChecksumRecord, EntryInfo, EntryRef, EntryRefs, Index, IndexEvent, Lookup, LookupRequest,
    MAX_SIGNATURES_PER_CHECKSUM, ModuleKey, Removed, SignatureRecord, Timestamp,
};
pub use crate::policy::PullPolicy;
pub use crate::url::{
    DOCKER_HUB_REGISTRY, ModuleUrl, OCI_PREFIX, OciReference, Scheme, redact_url, redacted_url,
};
