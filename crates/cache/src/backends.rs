//! Our default fetchers, built from the cache's options.

use std::path::PathBuf;

#[cfg(feature = "http")]
use wasm_fetch_http::HttpFetcher;
#[cfg(feature = "oci")]
use wasm_fetch_oci::OciFetcher;

#[cfg(any(feature = "http", feature = "oci"))]
use std::sync::Arc;

#[cfg(any(feature = "http", feature = "oci"))]
use wasm_cache_core::Fetcher;

#[cfg(any(feature = "http", feature = "oci"))]
use crate::Error;
#[cfg(any(feature = "http", feature = "oci"))]
use crate::lazy::LazyFetcher;

/// The network options the cache builder passes to our default fetchers.
#[derive(Debug, Default)]
#[cfg_attr(
    not(any(feature = "http", feature = "oci")),
    allow(dead_code, reason = "no default fetcher to pass them to")
)]
pub(crate) struct NetOptions {
    pub(crate) insecure: Vec<String>,
    pub(crate) ca_files: Vec<PathBuf>,
    pub(crate) ca_pems: Vec<Vec<u8>>,
    /// Registry mirrors, in order: (registry, mirror).
    #[cfg(feature = "oci")]
    pub(crate) mirrors: Vec<(String, wasm_fetch_oci::Mirror)>,
}

/// Our HTTP(S) fetcher for these options, built on first use (a cache that
/// only hits never builds it); the options are checked now.
#[cfg(feature = "http")]
pub(crate) fn http(net: &NetOptions) -> Result<LazyFetcher, Error> {
    let mut b = HttpFetcher::builder().insecure_hosts(net.insecure.iter().cloned());
    for ca in &net.ca_files {
        b = b.ca_file(ca);
    }
    for pem in &net.ca_pems {
        b = b.ca_pem(pem.clone());
    }
    b.check()?;
    Ok(LazyFetcher::new("http", move || {
        Ok(Arc::new(b.clone().build()?) as Arc<dyn Fetcher>)
    }))
}

/// Our OCI fetcher for these options, built on first use; the options are
/// checked now.
#[cfg(feature = "oci")]
pub(crate) fn oci(net: &NetOptions) -> Result<LazyFetcher, Error> {
    let mut b = OciFetcher::builder().insecure_hosts(net.insecure.iter().cloned());
    for ca in &net.ca_files {
        b = b.ca_file(ca);
    }
    for pem in &net.ca_pems {
        b = b.ca_pem(pem.clone());
    }
    for (registry, mirror) in &net.mirrors {
        b = b.mirror(registry.clone(), mirror.clone());
    }
    b.check()?;
    Ok(LazyFetcher::new("oci", move || {
        Ok(Arc::new(b.clone().build()?) as Arc<dyn Fetcher>)
    }))
}
