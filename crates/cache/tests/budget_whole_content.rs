//! Byte-budget eviction frees whole contents (issue 14, item 5): an entry
//! whose file is still held by an entry in its grace period frees nothing, so
//! it is not evicted (nor its URL's checksum record dropped); the budget is
//! met by evicting a content no protected entry holds.

mod common;

use std::time::Duration;

use common::{builder, clock, req};
use wasm_cache::DEFAULT_GRACE;
use wasm_cache_testkit::http::{Route, ServerOptions, TestServer};
use wasm_cache_testkit::modules::{sample_module, sha256_hex};

#[tokio::test]
async fn eviction_skips_entries_whose_content_is_held_in_grace() {
    let x = sample_module(10_000, 71);
    let y = sample_module(10_000, 72);
    let server = TestServer::start(ServerOptions::plain());
    server.route("/a.wasm", Route::bytes(x.clone()));
    server.route("/b.wasm", Route::bytes(x.clone()));
    server.route("/c.wasm", Route::bytes(y.clone()));
    let (a, b, c_url) = (
        server.url("/a.wasm"),
        server.url("/b.wasm"),
        server.url("/c.wasm"),
    );
    let dir = tempfile::tempdir().unwrap();
    let c = clock();
    let cache = builder(dir.path(), &c)
        .max_bytes(Some(15_000))
        .build()
        .await
        .unwrap();
    // Old: a (content x) and c (content y); over budget, but both in grace.
    let px = cache.get(&req(&a, "1")).await.unwrap();
    let py = cache.get(&req(&c_url, "1")).await.unwrap();
    c.advance(DEFAULT_GRACE + Duration::from_secs(1));
    // Young: b, the same content x under another URL.
    assert_eq!(cache.get(&req(&b, "1")).await.unwrap(), px);
    let report = cache.purge().await.unwrap();

    let mut left: Vec<String> = cache.entries().iter().map(|e| e.key.name.clone()).collect();
    left.sort();
    let mut want = vec![a.clone(), b.clone()];
    want.sort();
    assert_eq!(
        left, want,
        "only c frees bytes; a's content is held by b (in grace): {report:?}"
    );
    assert!(px.exists());
    assert!(!py.exists(), "c's content is evicted");
    assert!(
        cache.checksum_record(&a).is_some(),
        "a was not evicted, its record stays"
    );
    assert!(cache.checksum_record(&c_url).is_none());
    // Bytes on disk: each content once, however many entries hold it.
    let contents: std::collections::BTreeMap<String, u64> = cache
        .entries()
        .iter()
        .map(|e| (e.content.to_hex(), e.size))
        .collect();
    let total: u64 = contents.values().sum();
    assert!(total <= 15_000, "{total} bytes over the budget");
    // a is still served without a request.
    assert_eq!(cache.get(&req(&a, "1")).await.unwrap(), px);
    assert_eq!(server.hits("/a.wasm"), 1);
    assert_eq!(
        std::fs::read(&px).map(|v| sha256_hex(&v)).unwrap(),
        sha256_hex(&x)
    );
}
