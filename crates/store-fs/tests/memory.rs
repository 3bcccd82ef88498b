//! Memory stays flat while a 256 MiB module is ingested and re-verified: the
//! peak resident set (`VmHWM`) grows by far less than the module's size.
//!
//! This is its own test binary so no other test shares the process's peak.

use std::fs;

use wasm_cache_core::{DEFAULT_MAX_MODULE_SIZE, ModuleSink, Sha256Digest};
use wasm_store_fs::FsStore;

/// Peak resident set size of this process, in KiB (Linux `/proc/self/status`).
fn peak_rss_kib() -> u64 {
    let status = fs::read_to_string("/proc/self/status").unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .expect("VmHWM in /proc/self/status");
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn ingesting_256_mib_keeps_memory_flat() {
    const CHUNK: usize = 64 * 1024;
    let size = usize::try_from(DEFAULT_MAX_MODULE_SIZE).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = FsStore::open(dir.path()).unwrap();

    let mut chunk = vec![0u8; CHUNK];
    let before = peak_rss_kib();
    let mut hasher = ring::digest::Context::new(&ring::digest::SHA256);
    let mut ing = store.ingest(None, DEFAULT_MAX_MODULE_SIZE).unwrap();
    for i in 0..size / CHUNK {
        // Different bytes in every chunk, generated in place.
        for (j, b) in chunk.iter_mut().enumerate() {
            *b = (i.wrapping_mul(31) ^ j.wrapping_mul(7)) as u8;
        }
        if i == 0 {
            chunk[..8].copy_from_slice(b"\0asm\x01\0\0\0");
        }
        hasher.update(&chunk);
        ing.write(&chunk).unwrap();
    }
    let committed = ing.commit().unwrap();
    let mut want = [0u8; 32];
    want.copy_from_slice(hasher.finish().as_ref());
    assert_eq!(committed.digest, Sha256Digest::from_bytes(want));
    assert_eq!(committed.size, DEFAULT_MAX_MODULE_SIZE);
    assert!(store.verify(&committed.digest).unwrap());
    let after = peak_rss_kib();
    let grown = after.saturating_sub(before);
    println!("peak RSS before {before} KiB, after {after} KiB (+{grown} KiB) for a 256 MiB module");
    assert!(
        grown < 16 * 1024,
        "peak RSS grew by {grown} KiB while ingesting 256 MiB"
    );
}
