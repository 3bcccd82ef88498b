//! Our default fetchers, built from the cache's options.

use std::path::Path;

use wasm_fetch_http::HttpFetcher;
use wasm_fetch_oci::OciFetcher;

use crate::Error;

pub(crate) fn http(insecure: &[String], ca_file: Option<&Path>) -> Result<HttpFetcher, Error> {
    let mut b = HttpFetcher::builder().insecure_hosts(insecure.iter().cloned());
    if let Some(ca) = ca_file {
        b = b.ca_file(ca);
    }
    Ok(b.build()?)
}

pub(crate) fn oci(insecure: &[String], ca_file: Option<&Path>) -> Result<OciFetcher, Error> {
    let mut b = OciFetcher::builder().insecure_registries(insecure.iter().cloned());
    if let Some(ca) = ca_file {
        b = b.ca_file(ca);
    }
    Ok(b.build()?)
}
