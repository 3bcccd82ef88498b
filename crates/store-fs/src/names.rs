//! File names in the store directory: final names, temporary names, and how
//! recovery tells them apart.

use std::sync::atomic::{AtomicU64, Ordering};

use ring::rand::SecureRandom;
use wasm_cache_core::Sha256Digest;

/// Prefix of every temporary file. A final name starts with a hex digit, so the
/// two can never be confused.
pub(crate) const TEMP_PREFIX: &str = ".tmp-";
/// Suffix of every temporary file. A final name ends with `.wasm`.
pub(crate) const TEMP_SUFFIX: &str = ".wasm.partial";
/// Suffix of a final module file.
pub(crate) const MODULE_SUFFIX: &str = ".wasm";

/// What a directory entry's name says it is.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum NameKind {
    /// `<64 lowercase hex>.wasm`.
    Module(Sha256Digest),
    /// Ends with `.wasm` but the stem is not a valid digest.
    BadModuleName(String),
    /// `.tmp-<anything>.wasm.partial`.
    Temp,
    /// Anything else (journals, READMEs, ...): not ours to judge.
    Other,
}

pub(crate) fn classify(name: &str) -> NameKind {
    if name.starts_with(TEMP_PREFIX) && name.ends_with(TEMP_SUFFIX) {
        return NameKind::Temp;
    }
    match name.strip_suffix(MODULE_SUFFIX) {
        // `parse` also accepts a `sha256:` prefix; a file name must be bare hex.
        Some(stem) if stem.len() == 64 => match Sha256Digest::parse(stem) {
            Ok(d) => NameKind::Module(d),
            Err(e) => NameKind::BadModuleName(e.to_string()),
        },
        Some(stem) => NameKind::BadModuleName(format!(
            "expected 64 lowercase hex characters before .wasm, got {}",
            stem.chars().count()
        )),
        None => NameKind::Other,
    }
}

/// A fresh temporary file name: `.tmp-<16 random hex>-<counter>.wasm.partial`.
pub(crate) fn temp_name() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut r = [0u8; 8];
    // If the system RNG fails, the counter and the pid still make names unique
    // within this process; `create_new` catches any collision.
    let random = match ring::rand::SystemRandom::new().fill(&mut r) {
        Ok(()) => u64::from_le_bytes(r),
        Err(_) => u64::from(std::process::id()),
    };
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{TEMP_PREFIX}{random:016x}-{n}{TEMP_SUFFIX}")
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn classifies_names() {
        assert!(matches!(
            classify(&format!("{HEX}.wasm")),
            NameKind::Module(_)
        ));
        assert!(matches!(
            classify(&format!("{}.wasm", HEX.to_uppercase())),
            NameKind::BadModuleName(r) if r.contains("upper-case")
        ));
        assert!(matches!(
            classify(&format!("sha256:{HEX}.wasm")),
            NameKind::BadModuleName(_)
        ));
        assert!(matches!(classify("x.wasm"), NameKind::BadModuleName(_)));
        assert_eq!(classify("index.journal"), NameKind::Other);
        assert_eq!(classify(&format!("{HEX}.wasm.partial")), NameKind::Other);
        let t = temp_name();
        assert_eq!(classify(&t), NameKind::Temp);
        assert_ne!(t, temp_name());
    }
}
