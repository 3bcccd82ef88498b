//! REFERENCE §8 cache and policy scenarios over real HTTP (a hyper server on
//! 127.0.0.1 started by each test), counting upstream requests.

mod common;

use std::time::Duration;

use common::{assert_module_at, builder, clock, module_files, req};
use wasm_cache::PullPolicy;
use wasm_cache_testkit::http::{Route, ServerOptions, TestServer};
use wasm_cache_testkit::modules::{gzip, sample_module, sha256_hex};

fn server_with(path: &str, module: &[u8]) -> TestServer {
    let s = TestServer::start(ServerOptions::plain());
    s.route(path, Route::bytes(module.to_vec()));
    s
}

#[tokio::test]
async fn cache_miss_then_cache_hit() {
    let module = sample_module(10_000, 1);
    let s = server_with("/m.wasm", &module);
    let dir = tempfile::tempdir().unwrap();
    let c = clock();
    let cache = builder(dir.path(), &c).build().await.unwrap();
    let url = s.url("/m.wasm");
    let p1 = cache.get(&req(&url, "1")).await.unwrap();
    assert_module_at(&p1, &module);
    assert_eq!(s.hits("/m.wasm"), 1);
    // Same resource version: a hit.
    let p2 = cache.get(&req(&url, "1")).await.unwrap();
    assert_eq!(p1, p2);
    assert_eq!(s.hits("/m.wasm"), 1);
    // Pinned with its checksum: a hit whatever the version.
    let p3 = cache
        .get(&req(&url, "7").checksum(sha256_hex(&module)))
        .await
        .unwrap();
    assert_eq!(p1, p3);
    assert_eq!(s.hits("/m.wasm"), 1);
    // http keeps "always" semantics under Unspecified: a new version pulls.
    cache.get(&req(&url, "2")).await.unwrap();
    assert_eq!(s.hits("/m.wasm"), 2);
    // IfNotPresent ignores the version.
    cache
        .get(&req(&url, "3").pull_policy(PullPolicy::IfNotPresent))
        .await
        .unwrap();
    assert_eq!(s.hits("/m.wasm"), 2);
    cache.shutdown().await.unwrap();
}

#[tokio::test]
async fn invalid_scheme_and_unparseable_url() {
    let dir = tempfile::tempdir().unwrap();
    let cache = builder(dir.path(), &clock()).build().await.unwrap();
    let e = cache
        .get(&req("ftp://127.0.0.1/m.wasm", "1"))
        .await
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "unsupported Wasm module downloading URL scheme: ftp"
    );
    let e = cache.get(&req("http://", "1")).await.unwrap_err();
    assert!(
        e.to_string()
            .starts_with("fail to parse Wasm module fetch url: http://"),
        "{e}"
    );
    let e = cache
        .get(&req("http://127.0.0.1/m.wasm", "1").checksum("not-hex"))
        .await
        .unwrap_err();
    assert!(
        e.to_string()
            .starts_with("invalid sha256 checksum \"not-hex\""),
        "{e}"
    );
}

#[tokio::test]
async fn download_failure_stores_nothing() {
    let s = TestServer::start(ServerOptions::plain());
    s.route("/missing.wasm", Route::Status(404));
    let dir = tempfile::tempdir().unwrap();
    let cache = builder(dir.path(), &clock()).build().await.unwrap();
    let e = cache
        .get(&req(&s.url("/missing.wasm"), "1"))
        .await
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("wasm module download request failed: status code 404"),
        "{e}"
    );
    assert_eq!(s.hits("/missing.wasm"), 1, "4xx is not retried");
    assert!(module_files(dir.path()).is_empty());
    assert!(cache.entries().is_empty());
}

#[tokio::test]
async fn wrong_checksum_is_an_error_and_keeps_nothing() {
    let module = sample_module(5_000, 2);
    let s = server_with("/m.wasm", &module);
    let dir = tempfile::tempdir().unwrap();
    let cache = builder(dir.path(), &clock()).build().await.unwrap();
    let url = s.url("/m.wasm");
    let wrong = sha256_hex(b"something else");
    let e = cache
        .get(&req(&url, "1").checksum(wrong.clone()))
        .await
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "module downloaded from {url} has checksum {}, which does not match: {wrong}",
            sha256_hex(&module)
        )
    );
    assert!(module_files(dir.path()).is_empty());
    assert!(
        std::fs::read_dir(dir.path()).unwrap().all(|e| !e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .contains("tmp"))
    );
    assert!(cache.checksum_record(&url).is_none());
}

#[tokio::test]
async fn different_url_same_checksum() {
    let module = sample_module(3_000, 3);
    let s = TestServer::start(ServerOptions::plain());
    s.route("/a.wasm", Route::bytes(module.clone()));
    s.route("/b.wasm", Route::bytes(gzip(&module)));
    let dir = tempfile::tempdir().unwrap();
    let cache = builder(dir.path(), &clock()).build().await.unwrap();
    let sum = sha256_hex(&module);
    let pa = cache
        .get(&req(&s.url("/a.wasm"), "1").checksum(sum.clone()))
        .await
        .unwrap();
    let pb = cache
        .get(&req(&s.url("/b.wasm"), "1").checksum(sum))
        .await
        .unwrap();
    // One file, two entries (module names differ), two downloads.
    assert_eq!(pa, pb);
    assert_module_at(&pa, &module);
    assert_eq!((s.hits("/a.wasm"), s.hits("/b.wasm")), (1, 1));
    assert_eq!(cache.entries().len(), 2);
    assert_eq!(module_files(dir.path()).len(), 1);
}

#[tokio::test]
async fn invalid_wasm_header() {
    let s = TestServer::start(ServerOptions::plain());
    s.route(
        "/elf",
        Route::bytes(b"\x7fELF\x02\x01\x01\0 not wasm at all".to_vec()),
    );
    let mut bad_version = sample_module(100, 4);
    bad_version[4] = 2;
    s.route("/v2.wasm", Route::bytes(bad_version));
    let dir = tempfile::tempdir().unwrap();
    let cache = builder(dir.path(), &clock()).build().await.unwrap();
    for path in ["/elf", "/v2.wasm"] {
        let url = s.url(path);
        let e = cache.get(&req(&url, "1")).await.unwrap_err();
        assert!(
            e.to_string()
                .starts_with(&format!("fetched Wasm binary from {url} is invalid")),
            "{path}: {e}"
        );
    }
    assert!(module_files(dir.path()).is_empty());
}

#[tokio::test]
async fn purge_on_expiry_counts_from_the_last_get() {
    let module = sample_module(2_000, 5);
    let s = server_with("/m.wasm", &module);
    let dir = tempfile::tempdir().unwrap();
    let c = clock();
    let cache = builder(dir.path(), &c)
        .expiry(Duration::from_secs(3600))
        .build()
        .await
        .unwrap();
    let url = s.url("/m.wasm");
    let p = cache.get(&req(&url, "1")).await.unwrap();
    c.advance(Duration::from_secs(3000));
    // A hit 50 minutes in restarts the expiry.
    assert_eq!(cache.get(&req(&url, "1")).await.unwrap(), p);
    c.advance(Duration::from_secs(3000));
    let r = cache.purge().await.unwrap();
    assert!(r.expired.is_empty(), "{r:?}");
    assert!(p.exists());
    c.advance(Duration::from_secs(601));
    let r = cache.purge().await.unwrap();
    assert_eq!(r.expired.len(), 1);
    assert_eq!(r.files_removed, 1);
    assert!(!p.exists());
    // The URL's checksum record went with it: the next get downloads again.
    assert!(cache.checksum_record(&url).is_none());
    assert_eq!(cache.get(&req(&url, "1")).await.unwrap(), p);
    assert_eq!(s.hits("/m.wasm"), 2);
}

#[tokio::test]
async fn boxed_modules_are_stored_unboxed() {
    let module = sample_module(50_000, 6);
    let s = TestServer::start(ServerOptions::plain());
    s.route("/m.wasm.gz", Route::bytes(gzip(&module)));
    let dir = tempfile::tempdir().unwrap();
    let cache = builder(dir.path(), &clock()).build().await.unwrap();
    let p = cache.get(&req(&s.url("/m.wasm.gz"), "1")).await.unwrap();
    assert_module_at(&p, &module);
}

#[tokio::test]
async fn a_failed_always_pull_does_not_record_the_new_version() {
    let module = sample_module(2_000, 7);
    let s = server_with("/m.wasm", &module);
    let dir = tempfile::tempdir().unwrap();
    let cache = builder(dir.path(), &clock()).build().await.unwrap();
    let url = s.url("/m.wasm");
    cache.get(&req(&url, "1")).await.unwrap();
    s.route("/m.wasm", Route::Status(403));
    let always = |v: &str| req(&url, v).pull_policy(PullPolicy::Always);
    cache.get(&always("2")).await.unwrap_err();
    assert_eq!(
        s.hits("/m.wasm"),
        1,
        "one request to the 403 route (a new route counts afresh)"
    );
    let rec = cache.checksum_record(&url).unwrap();
    assert_eq!(rec.resource_versions[common::RES], "1");
    // Version 2 is retried, not silently served from the old module.
    s.route("/m.wasm", Route::bytes(module.clone()));
    cache.get(&always("2")).await.unwrap();
    assert_eq!(s.hits("/m.wasm"), 1);
    assert_eq!(
        cache.checksum_record(&url).unwrap().resource_versions[common::RES],
        "2"
    );
}

#[tokio::test]
async fn without_default_fetchers_only_given_schemes_work() {
    let dir = tempfile::tempdir().unwrap();
    let cache = builder(dir.path(), &clock())
        .default_fetchers(false)
        .build()
        .await
        .unwrap();
    for url in ["http://127.0.0.1:9/m.wasm", "oci://127.0.0.1:9/a/b:v1"] {
        let e = cache.get(&req(url, "1")).await.unwrap_err();
        assert!(
            e.to_string()
                .starts_with("unsupported Wasm module downloading URL scheme"),
            "{e}"
        );
    }
}
