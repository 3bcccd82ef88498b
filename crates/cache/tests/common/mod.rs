//! Shared helpers of the cache's integration tests.
#![allow(dead_code, unreachable_pub)] // reason: each test binary uses a different subset

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use wasm_cache::{Cache, CacheBuilder, GetRequest, ManualClock};
use wasm_cache_testkit::modules::sha256_hex;

pub const RES: &str = "ns/plugin";

/// A builder with the background purge off (tests purge explicitly) and a manual clock.
pub fn builder(dir: &Path, clock: &ManualClock) -> CacheBuilder {
    Cache::builder(dir)
        .background_purge(false)
        .clock(Arc::new(clock.clone()))
}

pub type Clock = ManualClock;

pub fn clock() -> ManualClock {
    ManualClock::new(SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000))
}

pub fn req(url: &str, version: &str) -> GetRequest {
    GetRequest::new(url)
        .resource(RES, version)
        .timeout(Duration::from_secs(20))
}

/// Asserts the file at `path` holds `module` and is named by its hash.
pub fn assert_module_at(path: &Path, module: &[u8]) {
    let got = std::fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    assert!(
        got == module,
        "{} holds {} bytes, expected {}",
        path.display(),
        got.len(),
        module.len()
    );
    assert_eq!(
        path.file_name().unwrap().to_str().unwrap(),
        format!("{}.wasm", sha256_hex(module))
    );
}

/// Files in the cache dir that look like modules (`*.wasm`).
pub fn module_files(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".wasm"))
        .collect();
    v.sort();
    v
}
