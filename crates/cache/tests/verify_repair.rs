//! `Cache::verify(repair)` (issue 14, item 7): a corrupt module file is
//! removed together with its entries under the store's lock of its content, the next `get`
//! downloads it again, and gets running during a repair never lose a good
//! file to it.

mod common;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{assert_module_at, builder, clock, req};
use wasm_cache::Cache;
use wasm_cache_testkit::http::{Route, ServerOptions, TestServer};
use wasm_cache_testkit::modules::{sample_module, sha256_hex};

/// Overwrites the module file at `path` with bytes of the same length that do
/// not hash to its name (a bit flip on disk).
fn corrupt(path: &std::path::Path) {
    let mut bytes = std::fs::read(path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    let mut perms = std::fs::metadata(path).unwrap().permissions();
    #[allow(clippy::permissions_set_readonly_false)]
    perms.set_readonly(false);
    std::fs::set_permissions(path, perms).unwrap();
    std::fs::write(path, bytes).unwrap();
}

/// Every entry's file exists and holds what its name says.
fn assert_index_matches_store(cache: &Cache) {
    for e in cache.entries() {
        let path = cache.module_path(&e.content);
        let bytes = std::fs::read(&path)
            .unwrap_or_else(|err| panic!("entry {:?}: {}: {err}", e.key, path.display()));
        assert_eq!(sha256_hex(&bytes), e.content.to_hex(), "{}", path.display());
    }
}

#[tokio::test]
async fn repair_removes_a_corrupt_module_and_its_entries_then_get_downloads_again() {
    let module = sample_module(30_000, 41);
    let other = sample_module(30_000, 42);
    let server = TestServer::start(ServerOptions::plain());
    server.route("/m.wasm", Route::bytes(module.clone()));
    server.route("/o.wasm", Route::bytes(other.clone()));
    let dir = tempfile::tempdir().unwrap();
    let cache = builder(dir.path(), &clock()).build().await.unwrap();
    let url = server.url("/m.wasm");
    let p = cache.get(&req(&url, "1")).await.unwrap();
    // A second entry for the same content (pinned by checksum) and an
    // unrelated module that must survive the repair.
    let pinned = req(&url, "2").checksum(sha256_hex(&module));
    assert_eq!(cache.get(&pinned).await.unwrap(), p);
    let po = cache.get(&req(&server.url("/o.wasm"), "1")).await.unwrap();
    assert_eq!(server.hits("/m.wasm"), 1);

    // Verify without repair: reports, removes nothing.
    let clean = cache.verify(false).await.unwrap();
    assert!(clean.mismatched.is_empty(), "{clean:?}");
    corrupt(&p);
    let report = cache.verify(false).await.unwrap();
    assert_eq!(report.mismatched.len(), 1, "{report:?}");
    assert!(report.removed.is_empty());
    assert!(p.exists(), "verify(false) must not delete");

    let report = cache.verify(true).await.unwrap();
    let digest = sha256_hex(&module);
    assert_eq!(
        report
            .mismatched
            .iter()
            .map(|m| m.digest.to_hex())
            .collect::<Vec<_>>(),
        vec![digest.clone()]
    );
    assert_eq!(
        report
            .removed
            .iter()
            .map(|d| d.to_hex())
            .collect::<Vec<_>>(),
        vec![digest.clone()]
    );
    assert!(!p.exists(), "the corrupt file is removed");
    let left: Vec<String> = cache.entries().iter().map(|e| e.content.to_hex()).collect();
    assert_eq!(
        left,
        vec![sha256_hex(&other)],
        "the corrupt module's entries are gone"
    );
    assert_module_at(&po, &other);
    assert_index_matches_store(&cache);

    // The next get downloads it again.
    let again = cache.get(&req(&url, "1")).await.unwrap();
    assert_eq!(again, p);
    assert_module_at(&again, &module);
    assert_eq!(server.hits("/m.wasm"), 2);
    let report = cache.verify(true).await.unwrap();
    assert!(
        report.mismatched.is_empty() && report.removed.is_empty(),
        "{report:?}"
    );
    cache.shutdown().await.unwrap();
}

/// Rounds of: corrupt the module, then run a repair while several callers
/// get it (re-downloading it once the repair dropped it). A file a caller
/// read complete and correct after its `get` must never be deleted by the
/// repair, and the index never refers to a missing or corrupt file.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn gets_during_a_repair_never_lose_a_good_file() {
    const ROUNDS: usize = 20;
    const GETTERS: usize = 4;
    let module = Arc::new(sample_module(200_000, 43));
    let server = TestServer::start(ServerOptions::plain());
    server.route("/m.wasm", Route::bytes(module.to_vec()));
    let dir = tempfile::tempdir().unwrap();
    let cache = builder(dir.path(), &clock()).build().await.unwrap();
    let url = server.url("/m.wasm");
    let mut served_missing = 0;
    for round in 0..ROUNDS {
        let p = cache.get(&req(&url, "1")).await.unwrap();
        corrupt(&p);
        let barrier = Arc::new(tokio::sync::Barrier::new(GETTERS + 1));
        let repair = {
            let cache = cache.clone();
            let barrier = Arc::clone(&barrier);
            tokio::spawn(async move {
                barrier.wait().await;
                cache.verify(true).await.unwrap()
            })
        };
        let mut getters = Vec::new();
        for g in 0..GETTERS {
            let cache = cache.clone();
            let barrier = Arc::clone(&barrier);
            let url = url.clone();
            let module = Arc::clone(&module);
            getters.push(tokio::spawn(async move {
                barrier.wait().await;
                let mut good: BTreeSet<PathBuf> = BTreeSet::new();
                let mut missing = 0;
                // Keep asking until this caller has read the good module: a
                // hit may hand out the corrupt file until the repair drops it.
                let deadline = Instant::now() + Duration::from_secs(20);
                while Instant::now() < deadline {
                    let p = cache.get(&req(&url, "1")).await.unwrap();
                    match std::fs::read(&p) {
                        Ok(bytes) if bytes == *module => {
                            good.insert(p);
                            break;
                        }
                        Ok(_) => tokio::time::sleep(Duration::from_millis(1)).await,
                        Err(_) => missing += 1,
                    }
                }
                assert!(!good.is_empty(), "getter {g} never got the good module");
                (good, missing)
            }));
        }
        let report = repair.await.unwrap();
        let mut good = BTreeSet::new();
        for g in getters {
            let (seen, missing) = g.await.unwrap();
            good.extend(seen);
            served_missing += missing;
        }
        for p in &good {
            assert!(
                p.exists(),
                "round {round}: {} was read complete and correct after a get, then deleted by the repair ({report:?})",
                p.display()
            );
            assert_module_at(p, &module[..]);
        }
        assert_index_matches_store(&cache);
    }
    // A get may be handed the corrupt file just before the repair deletes it
    // (that file was bad anyway); say how often, for the record.
    eprintln!("paths found missing right after a get: {served_missing}");
    cache.shutdown().await.unwrap();
}

/// One record of "verified" (issue 14): `verify` without `repair` that finds
/// a module's file corrupt (changed behind our back after this process
/// downloaded it) leaves the file, but the store now records it unverified,
/// so the next hit re-hashes it and downloads the module again instead of
/// handing out the corrupt file. (With the cache's own `unverified` set,
/// only recovered content was ever re-hashed: the hit served the bad file.)
#[tokio::test]
async fn a_module_verify_found_corrupt_is_never_served_by_a_hit() {
    let module = sample_module(30_000, 43);
    let server = TestServer::start(ServerOptions::plain());
    server.route("/m.wasm", Route::bytes(module.clone()));
    let dir = tempfile::tempdir().unwrap();
    let cache = builder(dir.path(), &clock()).build().await.unwrap();
    let url = server.url("/m.wasm");
    let p = cache.get(&req(&url, "1")).await.unwrap();
    corrupt(&p);
    let report = cache.verify(false).await.unwrap();
    assert_eq!(report.mismatched.len(), 1, "{report:?}");
    assert!(p.exists(), "verify(false) must not delete");

    let again = cache.get(&req(&url, "1")).await.unwrap();
    assert_eq!(again, p);
    assert_module_at(&again, &module);
    assert_eq!(server.hits("/m.wasm"), 2, "downloaded again");
    assert_index_matches_store(&cache);
    cache.shutdown().await.unwrap();
}
