//! What a hit records (issue 14, item 1) survives a restart: the journal gets
//! the hit's checksum record, so after reopening the directory (after a clean
//! shutdown, or after the process simply stopped) the next unpinned request
//! for that URL and resource version still makes no request.

mod common;

use common::{RES, assert_module_at, builder, clock, req};
use wasm_cache::Cache;
use wasm_cache_testkit::http::{Route, ServerOptions, TestServer};
use wasm_cache_testkit::modules::{sample_module, sha256_hex};

async fn hit_then_reopen(clean_shutdown: bool) {
    let module = sample_module(7_000, 51);
    let server = TestServer::start(ServerOptions::plain());
    server.route("/m.wasm", Route::bytes(module.clone()));
    let url = server.url("/m.wasm");
    let sum = sha256_hex(&module);
    let dir = tempfile::tempdir().unwrap();
    let c = clock();
    let p = {
        let cache = builder(dir.path(), &c).build().await.unwrap();
        let p = cache
            .get(&req(&url, "123456").checksum(sum.clone()))
            .await
            .unwrap();
        // The hit: pinned, another version. It records version "0".
        assert_eq!(
            cache
                .get(&req(&url, "0").checksum(sum.clone()))
                .await
                .unwrap(),
            p
        );
        assert_eq!(server.hits("/m.wasm"), 1);
        if clean_shutdown {
            cache.shutdown().await.unwrap();
        }
        p
    };
    let cache: Cache = builder(dir.path(), &c).build().await.unwrap();
    let rec = cache.checksum_record(&url).expect("the record survives");
    assert_eq!(rec.checksum.to_hex(), sum);
    assert_eq!(
        rec.resource_versions[RES], "0",
        "the hit's version was journaled"
    );
    let got = cache.get(&req(&url, "0")).await.unwrap();
    assert_eq!(got, p);
    assert_module_at(&got, &module);
    assert_eq!(
        server.hits("/m.wasm"),
        1,
        "after the restart, the unpinned request recorded by the hit makes no request"
    );
    cache.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_hit_record_survives_a_clean_restart() {
    hit_then_reopen(true).await;
}

#[tokio::test]
async fn a_hit_record_survives_a_stop_without_shutdown() {
    hit_then_reopen(false).await;
}

/// A hit needs no network, so an already expired deadline does not stop it
/// (Istio checks its cache before it starts the timer of a download).
#[tokio::test]
async fn a_hit_is_served_with_a_zero_timeout() {
    let module = sample_module(3_000, 52);
    let server = TestServer::start(ServerOptions::plain());
    server.route("/m.wasm", Route::bytes(module.clone()));
    let url = server.url("/m.wasm");
    let dir = tempfile::tempdir().unwrap();
    let cache = builder(dir.path(), &clock()).build().await.unwrap();
    let p = cache.get(&req(&url, "1")).await.unwrap();
    let zero = req(&url, "1").timeout(std::time::Duration::ZERO);
    assert_eq!(cache.get(&zero).await.unwrap(), p);
    let pinned = req(&url, "9")
        .checksum(sha256_hex(&module))
        .timeout(std::time::Duration::ZERO);
    assert_eq!(cache.get(&pinned).await.unwrap(), p);
    assert_eq!(server.hits("/m.wasm"), 1);
}
