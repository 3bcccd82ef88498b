//! Issue 19: a repeated hit is answered from the URL's hot record (one map
//! lookup, no index lookup, no shared write). What the full path guaranteed
//! still holds: last use reaches the index, purge and the journal; a changed
//! checksum record, another resource version or another pinned checksum is
//! never answered with the old module.

mod common;

use std::time::Duration;

use common::{RES, assert_module_at, builder, clock, req};
use wasm_cache::{GetRequest, Sha256Digest};
use wasm_cache_testkit::http::{Route, ServerOptions, TestServer};
use wasm_cache_testkit::modules::{sample_module, sha256_hex};

const EXPIRY: Duration = Duration::from_secs(60);

/// Hot hits keep their entry from expiring and their last use is what
/// `entries`, a purge and (after a restart) the journal say.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn last_use_of_hot_hits_reaches_purge_entries_and_the_journal() {
    let server = TestServer::start(ServerOptions::plain());
    server.route("/m.wasm", Route::bytes(sample_module(5_000, 1)));
    let url = server.url("/m.wasm");
    let dir = tempfile::tempdir().unwrap();
    let clock = clock();
    let cache = builder(dir.path(), &clock)
        .expiry(EXPIRY)
        .build()
        .await
        .unwrap();
    let path = cache.get(&req(&url, "1")).await.unwrap();
    // The first hit takes the full path and fills the hot record; the
    // later ones are answered from it.
    assert_eq!(cache.get(&req(&url, "1")).await.unwrap(), path);
    let first = cache.entries()[0].last_use;
    for _ in 0..5 {
        clock.advance(Duration::from_secs(10));
        assert_eq!(cache.get(&req(&url, "1")).await.unwrap(), path);
    }
    let last = cache.entries()[0].last_use;
    assert_eq!(
        last.as_millis() - first.as_millis(),
        50_000,
        "entries() shows the last hot hit"
    );
    // 70 s after the first hit, 20 s after the last: not idle.
    clock.advance(Duration::from_secs(20));
    let report = cache.purge().await.unwrap();
    assert!(report.expired.is_empty(), "expired {:?}", report.expired);
    assert_eq!(cache.entries().len(), 1);
    // Many more hot hits, then a restart: the journal has the last one.
    for _ in 0..100 {
        clock.advance(Duration::from_millis(7));
        assert_eq!(cache.get(&req(&url, "1")).await.unwrap(), path);
    }
    let last = cache.entries()[0].last_use;
    cache.shutdown().await.unwrap();
    drop(cache);
    let cache = builder(dir.path(), &clock)
        .expiry(EXPIRY)
        .build()
        .await
        .unwrap();
    assert_eq!(cache.entries()[0].last_use, last);
    // And unused for longer than the expiry, it goes.
    clock.advance(EXPIRY + Duration::from_millis(1));
    let report = cache.purge().await.unwrap();
    assert_eq!(report.expired.len(), 1);
    assert_eq!(server.hits("/m.wasm"), 1);
}

/// A hot record answers only the request it was made for: another
/// resource version (under a policy that pulls again for it), another
/// pinned checksum, and a URL whose checksum record moved take the full path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hot_record_never_answers_what_changed() {
    let server = TestServer::start(ServerOptions::plain());
    let a = sample_module(5_000, 2);
    let b = sample_module(5_000, 3);
    server.route("/m.wasm", Route::bytes(a.clone()));
    let url = server.url("/m.wasm");
    let dir = tempfile::tempdir().unwrap();
    let clock = clock();
    let cache = builder(dir.path(), &clock).build().await.unwrap();
    let path_a = cache.get(&req(&url, "1")).await.unwrap();
    for _ in 0..3 {
        assert_eq!(cache.get(&req(&url, "1")).await.unwrap(), path_a);
    }
    assert_eq!(server.hits("/m.wasm"), 1);

    // The upstream moves on; version 2 of the resource pulls again (http,
    // no pull policy: a new resource version pulls).
    // (Setting the route starts its request count afresh.)
    server.route("/m.wasm", Route::bytes(b.clone()));
    let path_b = cache.get(&req(&url, "2")).await.unwrap();
    assert_module_at(&path_b, &b);
    assert_eq!(server.hits("/m.wasm"), 1);
    // The URL's record now says version 2 saw b: a request of version 1
    // pulls again, as it did before hot records (the record of version 1
    // is gone), and gets b, never a from the old hot record.
    let again = cache.get(&req(&url, "1")).await.unwrap();
    assert_module_at(&again, &b);
    assert_eq!(server.hits("/m.wasm"), 2);
    for _ in 0..3 {
        assert_eq!(cache.get(&req(&url, "1")).await.unwrap(), path_b);
    }
    assert_eq!(server.hits("/m.wasm"), 2);

    // Another resource asking for the same URL (its first request pulls:
    // no version recorded for it); then both alternate, each a hit.
    let other = |v: &str| {
        GetRequest::new(url.clone())
            .resource("ns/other", v)
            .timeout(Duration::from_secs(20))
    };
    assert_eq!(cache.get(&other("7")).await.unwrap(), path_b);
    assert_eq!(server.hits("/m.wasm"), 3);
    for _ in 0..5 {
        assert_eq!(cache.get(&req(&url, "1")).await.unwrap(), path_b);
        assert_eq!(cache.get(&other("7")).await.unwrap(), path_b);
    }
    assert_eq!(server.hits("/m.wasm"), 3);

    // Pinned requests: each checksum gets its own answer.
    let sum_a = sha256_hex(&a);
    let sum_b = sha256_hex(&b);
    for _ in 0..3 {
        let p = cache
            .get(&req(&url, "2").checksum(sum_a.clone()))
            .await
            .unwrap();
        assert_module_at(&p, &a);
        let p = cache
            .get(&req(&url, "2").checksum(sum_b.clone()))
            .await
            .unwrap();
        assert_module_at(&p, &b);
    }
    assert_eq!(server.hits("/m.wasm"), 3);
    // A pinned hit recorded its checksum for the URL like a download.
    let rec = cache.checksum_record(&url).unwrap();
    assert_eq!(rec.checksum, Sha256Digest::parse(&sum_b).unwrap());
    assert_eq!(
        rec.resource_versions.get(RES).map(String::as_str),
        Some("2")
    );
    cache.shutdown().await.unwrap();
}

/// A module removed by a purge is fetched again by the next get, even if
/// the URL was answered from its hot record just before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purged_module_is_not_answered_from_its_hot_record() {
    let server = TestServer::start(ServerOptions::plain());
    let m = sample_module(5_000, 4);
    server.route("/m.wasm", Route::bytes(m.clone()));
    let url = server.url("/m.wasm");
    let dir = tempfile::tempdir().unwrap();
    let clock = clock();
    let cache = builder(dir.path(), &clock)
        .expiry(EXPIRY)
        .build()
        .await
        .unwrap();
    let path = cache.get(&req(&url, "1")).await.unwrap();
    for _ in 0..3 {
        assert_eq!(cache.get(&req(&url, "1")).await.unwrap(), path);
    }
    clock.advance(EXPIRY + Duration::from_millis(1));
    let report = cache.purge().await.unwrap();
    assert_eq!(report.expired.len(), 1);
    assert!(!path.exists(), "the purge deleted the file");
    let again = cache.get(&req(&url, "1")).await.unwrap();
    assert_module_at(&again, &m);
    assert_eq!(server.hits("/m.wasm"), 2);
    cache.shutdown().await.unwrap();
}

/// The index alone changes (a pinned hit moves the URL's checksum record;
/// no file is written, so the directory watch sees nothing): a hot record
/// made under the old record is not used.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hot_record_is_not_used_once_the_urls_record_moved() {
    let server = TestServer::start(ServerOptions::plain());
    let a = sample_module(5_000, 5);
    let b = sample_module(5_000, 6);
    server.route("/m.wasm", Route::bytes(a.clone()));
    let url = server.url("/m.wasm");
    let dir = tempfile::tempdir().unwrap();
    let clock = clock();
    let cache = builder(dir.path(), &clock).build().await.unwrap();
    let path_a = cache.get(&req(&url, "1")).await.unwrap();
    server.route("/m.wasm", Route::bytes(b.clone()));
    let path_b = cache.get(&req(&url, "2")).await.unwrap();
    assert_module_at(&path_b, &b);
    // Version 3 pins a: the record says a for version 3; then version 3
    // unpinned hits a, from its hot record after the first time.
    let pinned_a = req(&url, "3").checksum(sha256_hex(&a));
    assert_eq!(cache.get(&pinned_a).await.unwrap(), path_a);
    for _ in 0..20 {
        assert_eq!(cache.get(&req(&url, "3")).await.unwrap(), path_a);
    }
    // Version 4 pins b: the record now says b for version 4 only, so an
    // unpinned request of version 3 pulls again (http without a pull
    // policy: a version the record does not hold pulls) and gets b.
    let pinned_b = req(&url, "4").checksum(sha256_hex(&b));
    assert_eq!(cache.get(&pinned_b).await.unwrap(), path_b);
    assert_eq!(server.hits("/m.wasm"), 1);
    assert_eq!(cache.get(&req(&url, "3")).await.unwrap(), path_b);
    assert_eq!(server.hits("/m.wasm"), 2, "pulled again");
    cache.shutdown().await.unwrap();
}
