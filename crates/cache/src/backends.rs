//! Our default fetchers, built from the cache's options.

use std::path::PathBuf;

#[cfg(feature = "http")]
use wasm_fetch_http::HttpFetcher;
#[cfg(feature = "oci")]
use wasm_fetch_oci::OciFetcher;

#[cfg(any(feature = "http", feature = "oci"))]
use crate::Error;

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

#[cfg(feature = "http")]
pub(crate) fn http(net: &NetOptions) -> Result<HttpFetcher, Error> {
    let mut b = HttpFetcher::builder().insecure_hosts(net.insecure.iter().cloned());
    for ca in &net.ca_files {
        b = b.ca_file(ca);
    }
    for pem in &net.ca_pems {
        b = b.ca_pem(pem.clone());
    }
    Ok(b.build()?)
}

#[cfg(feature = "oci")]
pub(crate) fn oci(net: &NetOptions) -> Result<OciFetcher, Error> {
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
    Ok(b.build()?)
}
