//! `ModuleUrl::parse`, `redact_url` and `Sha256Digest::parse` on arbitrary strings.
//!
//! Properties: nothing panics; redaction is idempotent and never keeps
//! user-info; a parsed OCI reference round-trips through its `whole()` form.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wasm_cache_core::{ModuleUrl, OciReference, Sha256Digest, redact_url};

fuzz_target!(|data: &[u8]| {
    let Ok(input) = std::str::from_utf8(data) else {
        return;
    };
    let redacted = redact_url(input);
    assert_eq!(redact_url(&redacted), redacted, "redaction is not idempotent");
    if let Some((_, rest)) = redacted.split_once("://") {
        let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
        if let Some((userinfo, _)) = authority.rsplit_once('@') {
            assert_eq!(userinfo, "***", "user-info survived redaction: {redacted:?}");
        }
    }
    let _ = Sha256Digest::parse(input);
    if let Ok(url) = ModuleUrl::parse(input) {
        let _ = (url.module_name(), url.redacted(), url.is_latest(), url.pinned_digest());
        if let Some(r) = url.oci() {
            let again = OciReference::parse(&r.whole())
                .unwrap_or_else(|e| panic!("{:?} does not parse again: {e}", r.whole()));
            assert_eq!(&again, r, "an OCI reference does not round-trip");
        }
    }
});
