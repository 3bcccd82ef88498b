//! The streaming unboxer (`wasm_cache_unbox::Unboxer`) on arbitrary
//! bodies cut into arbitrary chunks.
//!
//! Properties: nothing panics; the outcome does not depend on the chunking
//! (the same body pushed whole gives the same bytes or the same kind of
//! error); an accepted module starts with the Wasm header and respects the
//! size limit.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wasm_cache_unbox::{TarEntryRule, UnboxError, Unboxer};

const MAX: u64 = 256 * 1024;

fn run(body: &[u8], cuts: &[u8], rule: TarEntryRule) -> Result<Vec<u8>, String> {
    let mut u = Unboxer::new(Vec::new(), MAX, rule);
    let mut rest = body;
    let mut i = 0;
    while !rest.is_empty() {
        let n = if cuts.is_empty() {
            rest.len()
        } else {
            usize::from(cuts[i % cuts.len()]) + 1
        }
        .min(rest.len());
        i += 1;
        u.push(&rest[..n]).map_err(kind)?;
        rest = &rest[n..];
    }
    let (out, written) = u.finish().map_err(kind)?;
    assert_eq!(out.len() as u64, written);
    Ok(out)
}

fn kind(e: UnboxError) -> String {
    match e {
        UnboxError::TooLarge { .. } => "too large".into(),
        UnboxError::Invalid { .. } => "invalid".into(),
        other => format!("{other}"),
    }
}

fuzz_target!(|data: &[u8]| {
    // First byte: the rule and how many chunk sizes follow; then the sizes; then the body.
    let Some((&head, rest)) = data.split_first() else {
        return;
    };
    let rule = if head & 1 == 0 {
        TarEntryRule::PluginWasm
    } else {
        TarEntryRule::PluginWasmOrFirstWasm
    };
    let ncuts = usize::from(head >> 1).min(rest.len());
    let (cuts, body) = rest.split_at(ncuts);
    let chunked = run(body, cuts, rule);
    let whole = run(body, &[], rule);
    match (&chunked, &whole) {
        (Ok(a), Ok(b)) => assert!(a == b, "chunking changed the module"),
        (Err(a), Err(b)) => assert_eq!(a, b, "chunking changed the error"),
        _ => panic!("chunking changed the outcome: {chunked:?} vs {whole:?}"),
    }
    if let Ok(out) = chunked {
        assert!(out.len() as u64 <= MAX);
        assert!(out.starts_with(b"\0asm\x01\0\0\0"));
    }
});
