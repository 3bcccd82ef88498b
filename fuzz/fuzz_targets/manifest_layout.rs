//! Manifest and layout selection (`wasm_fetch_oci::layout::parse_manifest`)
//! on arbitrary bytes.
//!
//! Properties: nothing panics; a chosen layer has a size and a sha256 digest
//! (a digest becomes part of a request path); an error names a reason per
//! layout.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wasm_fetch_oci::layout::{Layout, LayoutError, Parsed, parse_manifest};

fuzz_target!(|data: &[u8]| {
    match parse_manifest(data) {
        Ok(Parsed::Image(choice)) => {
            assert_eq!(choice.digest.to_hex().len(), 64);
            assert!(!choice.media_type.is_empty());
        }
        Ok(Parsed::Index(entry)) => {
            assert_eq!(entry.digest.to_hex().len(), 64);
        }
        // `Parsed` is non_exhaustive: a new outcome must be given its own checks.
        Ok(other) => panic!("unknown layout outcome {other:?}"),
        Err(LayoutError::NoLayout(reasons)) => assert_eq!(reasons.len(), Layout::ALL.len()),
        Err(e) => assert!(!e.to_string().is_empty()),
    }
});
